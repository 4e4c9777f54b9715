//! The distribution server's certificate: loaded from the `--tls-secret`
//! Secret when it holds `tls.crt`, `tls.key` and `ca.crt` (cert-manager's
//! layout, or what an earlier start of the operator stored), otherwise a CA
//! and a serving certificate are generated with rcgen and stored there, so
//! a restart (or the other replica) serves under the same CA that the
//! webhook injected into sidecars.
//!
//! A generated identity keeps its CA key (`ca.key`) in the Secret too: when
//! the stored certificate does not cover every name the Services are
//! reached by (a chart upgrade added a Service), a new serving certificate
//! is issued under the same CA, so sidecars and the API server keep
//! trusting it. A certificate someone else issued is never replaced; a
//! missing name is logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
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
    /// The CA's key, when the operator generated the CA.
    ca_key_pem: Option<String>,
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
    // One Service named twice (both flags the same) gives its names once:
    // `dedup` alone only drops neighbours.
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// The generated CA: its subject and usages (the same whenever it signs).
fn ca_params() -> Result<CertificateParams, Error> {
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
    Ok(ca_params)
}

/// A serving certificate for `names` signed by `ca`: (cert PEM, key PEM).
fn serving(names: &[String], ca: &Issuer<'_, KeyPair>) -> Result<(String, String), Error> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "sluice-operator");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl ServingCert {
    /// A fresh CA and a certificate it signed for `names`.
    pub fn generate(names: &[String]) -> Result<Self, Error> {
        let ca = CertifiedIssuer::self_signed(ca_params()?, KeyPair::generate()?)?;
        let (cert_pem, key_pem) = serving(names, &ca)?;
        Ok(Self {
            ca_pem: ca.pem(),
            cert_pem,
            key_pem,
            ca_key_pem: Some(ca.key().serialize_pem()),
        })
    }

    /// The names of `names` the serving certificate is not valid for.
    pub fn missing_names(&self, names: &[String]) -> Result<Vec<String>, Error> {
        let der = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .next()
            .ok_or_else(|| Error::Tls("tls.crt holds no certificate".into()))?
            .map_err(|e| Error::Tls(format!("tls.crt: {e}")))?;
        let cert = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| Error::Tls(format!("tls.crt: {e}")))?;
        Ok(names
            .iter()
            .filter(|n| {
                rustls::pki_types::ServerName::try_from(n.as_str()).map_or(true, |sn| {
                    cert.verify_is_valid_for_subject_name(&sn).is_err()
                })
            })
            .cloned()
            .collect())
    }

    /// A new serving certificate for `names` under the same CA; `None`
    /// when the CA's key is not ours.
    pub fn reissue(&self, names: &[String]) -> Result<Option<Self>, Error> {
        let Some(ca_key) = &self.ca_key_pem else {
            return Ok(None);
        };
        let key = KeyPair::from_pem(ca_key)?;
        let ca = Issuer::new(ca_params()?, key);
        let (cert_pem, key_pem) = serving(names, &ca)?;
        Ok(Some(Self {
            cert_pem,
            key_pem,
            ..self.clone()
        }))
    }

    /// The identity a Secret holds, when it has all of it.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
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
            ca_key_pem: get("ca.key"),
        })
    }

    /// As Secret data (`tls.crt`, `tls.key`, `ca.crt`, and `ca.key` when ours).
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        [
            ("tls.crt", Some(&self.cert_pem)),
            ("tls.key", Some(&self.key_pem)),
            ("ca.crt", Some(&self.ca_pem)),
            ("ca.key", self.ca_key_pem.as_ref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), ByteString(v?.as_bytes().to_vec()))))
        .collect()
    }

    /// A stored identity that must also serve `names`: reissued under its
    /// CA when ours (and the Secret updated), else kept with a warning.
    async fn cover(
        self,
        api: &Api<Secret>,
        mut secret: Secret,
        names: &[String],
    ) -> Result<Self, Error> {
        let missing = self.missing_names(names)?;
        if missing.is_empty() {
            return Ok(self);
        }
        let name = secret.metadata.name.clone().unwrap_or_default();
        let Some(fresh) = self.reissue(names)? else {
            tracing::warn!(secret = %name, ?missing, "the serving certificate does not cover these names and its CA is not the operator's: reissue it (cert-manager: the Certificate's dnsNames)");
            return Ok(self);
        };
        secret.data = Some(fresh.to_data());
        secret.string_data = None;
        // The observed resourceVersion: of two replicas, one writes; the
        // other reads back what it wrote.
        match api.replace(&name, &PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %name, ?missing, "reissued the serving certificate under the same CA for new names");
                Ok(fresh)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let secret = api.get(&name).await?;
                Self::from_secret(&secret)
                    .ok_or_else(|| Error::Tls(format!("Secret {name} is incomplete")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Loads the identity from the Secret, or generates and stores it.
    /// Two replicas starting at once agree: the one whose create loses
    /// reads the winner's.
    pub async fn ensure(api: &Api<Secret>, name: &str, names: &[String]) -> Result<Self, Error> {
        if let Some(secret) = api.get_opt(name).await? {
            if let Some(found) = Self::from_secret(&secret) {
                return found.cover(api, secret, names).await;
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
    fn each_name_is_listed_once() {
        let one = subject_names(&["sluice-operator"], "ns");
        assert_eq!(
            subject_names(&["sluice-operator", "sluice-operator"], "ns"),
            one
        );
        assert_eq!(one.len(), 6);
    }

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
        assert_eq!(back.ca_key_pem, made.ca_key_pem);
        back.acceptor().expect("rustls accepts it");
        assert!(ServingCert::from_secret(&Secret::default()).is_none());
    }

    /// Verifies `cert` for `name` against `ca` as a TLS client would.
    fn trusted(cert: &ServingCert, name: &str) -> bool {
        let ca = CertificateDer::from_pem_slice(cert.ca_pem.as_bytes()).expect("ca");
        let anchor = webpki::anchor_from_trusted_cert(&ca).expect("anchor");
        let leaf = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("leaf");
        let ee = webpki::EndEntityCert::try_from(&leaf).expect("end entity");
        let now = rustls::pki_types::UnixTime::now();
        let anchors = [anchor];
        let chain = ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        );
        let server = rustls::pki_types::ServerName::try_from(name).expect("name");
        chain.is_ok() && ee.verify_is_valid_for_subject_name(&server).is_ok()
    }

    #[test]
    fn a_certificate_missing_a_name_is_reissued_under_the_same_ca() {
        let old = ServingCert::generate(&subject_names(&["sluice-operator"], "sluice-system"))
            .expect("generated");
        let names = subject_names(
            &["sluice-operator", "sluice-operator-webhook"],
            "sluice-system",
        );
        let missing = old.missing_names(&names).expect("parsed");
        assert!(missing.contains(&"sluice-operator-webhook.sluice-system.svc".to_owned()));
        assert!(!missing.contains(&"sluice-operator.sluice-system.svc".to_owned()));
        assert!(trusted(&old, "sluice-operator.sluice-system.svc"));
        assert!(!trusted(&old, "sluice-operator-webhook.sluice-system.svc"));

        let new = old.reissue(&names).expect("reissued").expect("our CA");
        assert_eq!(new.ca_pem, old.ca_pem, "clients keep the CA they have");
        assert!(new.missing_names(&names).expect("parsed").is_empty());
        assert!(trusted(&new, "sluice-operator-webhook.sluice-system.svc"));
        assert!(trusted(&new, "sluice-operator.sluice-system.svc"));
        new.acceptor().expect("rustls accepts it");

        // Someone else's CA (no key): nothing to reissue with.
        let foreign = ServingCert {
            ca_key_pem: None,
            ..old
        };
        assert!(foreign.reissue(&names).expect("no error").is_none());
    }
}
