//! HTTPS for mocks: a throwaway CA and a leaf certificate for `localhost`
//! and `127.0.0.1`, made fresh for each mock, so tests can exercise the
//! egress client's TLS path and its extra-CA option (the CA is handed out as
//! PEM). ALPN offers `h2` and `http/1.1`.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use super::MockError;

/// What a TLS mock serves with, and the CA a client must trust.
pub(crate) struct TlsMaterial {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub acceptor: TlsAcceptor,
}

fn tls_err(e: impl std::fmt::Display) -> MockError {
    MockError::Tls(e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn generate() -> Result<TlsMaterial, MockError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Sluice mock provider CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(tls_err)?)
        .map_err(tls_err)?;

    let leaf_key = KeyPair::generate().map_err(tls_err)?;
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(tls_err)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "sluice mock provider");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(tls_err)?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .map_err(tls_err)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    })
}

/// A client configuration trusting only `ca` (a mock's CA), with ALPN for
/// `protocols` (e.g. `[b"h2"]` or `[b"http/1.1"]`).
pub fn client_config(
    ca: &CertificateDer<'static>,
    protocols: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, MockError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(tls_err)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
