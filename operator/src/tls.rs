//! The distribution server's certificate: loaded from the `--tls-secret`
//! Secret when it holds `tls.crt`, `tls.key` and `ca.crt` (cert-manager's
//! layout, or what an earlier start of the operator stored), otherwise a CA
//! and a serving certificate are generated with rcgen and stored there, so
//! a restart (or the other replica) serves under the same CA that the
//! webhook injected into sidecars.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// PEM material of the serving identity.
#[derive(Clone)]
pub struct ServingCert {
    pub ca_pem: String,
    pub cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert").finish_non_exhaustive()
    }
}

/// DNS names (and loopback) the Services `services` in `namespace` are
/// reached by.
pub fn subject_names(services: &[&str], namespace: &str) -> Vec<String> {
    let mut names: Vec<String> = services
        .iter()
        .flat_map(|service| {
            [
                (*service).to_owned(),
                format!("{service}.{namespace}"),
                format!("{service}.{namespace}.svc"),
                format!("{service}.{namespace}.svc.cluster.local"),
            ]
        })
        .collect();
    names.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
    names.dedup();
    names
}

impl ServingCert {
    /// A fresh CA and a certificate it signed for `names`.
    pub fn generate(names: &[String]) -> Result<Self, Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sluice-operator-ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "sluice-operator");
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        Ok(Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let get = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .filter(|s| !s.trim().is_empty())
        };
        Some(Self {
            cert_pem: get("tls.crt")?,
            key_pem: get("tls.key")?,
            ca_pem: get("ca.crt")?,
        })
    }

    fn to_data(&self) -> BTreeMap<String, ByteString> {
        [
            ("tls.crt", &self.cert_pem),
            ("tls.key", &self.key_pem),
            ("ca.crt", &self.ca_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect()
    }

    /// Loads the identity from the Secret, or generates and stores it.
    /// Two replicas starting at once agree: the one whose create loses
    /// reads the winner's.
    pub async fn ensure(api: &Api<Secret>, name: &str, names: &[String]) -> Result<Self, Error> {
        if let Some(secret) = api.get_opt(name).await? {
            if let Some(found) = Self::from_secret(&secret) {
                return Ok(found);
            }
            return Err(Error::Tls(format!(
                "Secret {name} exists but lacks tls.crt, tls.key or ca.crt"
            )));
        }
        let made = Self::generate(names)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "sluice-operator".to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(made.to_data()),
            ..Secret::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(made),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let secret = api.get(name).await?;
                Self::from_secret(&secret)
                    .ok_or_else(|| Error::Tls(format!("Secret {name} is incomplete")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A rustls acceptor serving this certificate over HTTP/1.1.
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, Error> {
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(format!("tls.crt: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| Error::Tls(format!("tls.key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_round_trips_through_secret_data() {
        let made = ServingCert::generate(&subject_names(
            &["sluice-operator", "sluice-operator-webhook"],
            "sluice-system",
        ))
        .expect("generated");
        let secret = Secret {
            data: Some(made.to_data()),
            ..Secret::default()
        };
        let back = ServingCert::from_secret(&secret).expect("complete");
        assert_eq!(back.ca_pem, made.ca_pem);
        back.acceptor().expect("rustls accepts it");
        assert!(ServingCert::from_secret(&Secret::default()).is_none());
    }
}
