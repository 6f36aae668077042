//! The TLS client certificate of the SMTP settings (`tls.client_certificate_pem` and
//! `tls.client_key_pem`), checked as rustls will use it: when the settings are saved or
//! tested, and again when a connection is built from them. A check that fails names the
//! field at fault.

use rustls::crypto::ring::default_provider;
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Which of the two fields a client certificate that cannot be used is wrong in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityField {
    /// `tls.client_certificate_pem`.
    Certificate,
    /// `tls.client_key_pem`.
    Key,
}

impl IdentityField {
    /// The field's path in the settings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Certificate => "tls.client_certificate_pem",
            Self::Key => "tls.client_key_pem",
        }
    }
}

/// A client certificate chain, decoded, and its private key: each certificate an X.509
/// certificate, the key one rustls signs with, and the first certificate's own.
pub struct ClientIdentity {
    /// The certificates, from the client's own to the one its CA issued last (DER).
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of `chain[0]`.
    pub key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    /// The identity of `certificate_pem` (one or more `CERTIFICATE` blocks, the client's
    /// own first) and `key_pem` (PKCS#8, PKCS#1 or SEC1); or the field at fault, and why.
    pub fn parse(certificate_pem: &str, key_pem: &str) -> Result<Self, (IdentityField, String)> {
        let chain = client_certificates(certificate_pem)
            .map_err(|why| (IdentityField::Certificate, why))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
            (
                IdentityField::Key,
                "is not a PEM private key (PKCS#8, PKCS#1 or SEC1)".to_string(),
            )
        })?;
        let signing = default_provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|_| {
                (
                    IdentityField::Key,
                    "is not a key TLS can sign with (RSA, ECDSA P-256 or P-384, Ed25519)"
                        .to_string(),
                )
            })?;
        match CertifiedKey::new(chain.clone(), signing).keys_match() {
            // A key whose public half rustls cannot tell: the server will judge.
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err((
                    IdentityField::Key,
                    "is not the private key of the first certificate of \
                     tls.client_certificate_pem"
                        .to_string(),
                ))
            }
            Err(e) => return Err((IdentityField::Certificate, e.to_string())),
        }
        Ok(Self { chain, key })
    }
}

/// The DER of each certificate of `pem`, each checked to be X.509.
fn client_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not valid PEM certificates ({e})"))?;
    if chain.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    for (n, certificate) in chain.iter().enumerate() {
        ParsedCertificate::try_from(certificate).map_err(|e| {
            let why = match e {
                rustls::Error::InvalidCertificate(e) => format!("{e:?}"),
                e => e.to_string(),
            };
            format!(
                "certificate {} of {} is not an X.509 certificate ({why})",
                n + 1,
                chain.len()
            )
        })?;
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::{ClientIdentity, IdentityField};

    fn issued() -> (String, String) {
        let made = rcgen::generate_simple_self_signed(vec!["mailroom.example.com".into()]).unwrap();
        (made.cert.pem(), made.key_pair.serialize_pem())
    }

    fn field(certificate: &str, key: &str) -> Option<IdentityField> {
        ClientIdentity::parse(certificate, key)
            .err()
            .map(|(f, _)| f)
    }

    #[test]
    fn a_certificate_and_its_own_key_make_an_identity() {
        let (certificate, key) = issued();
        let identity = ClientIdentity::parse(&certificate, &key).unwrap();
        assert_eq!(identity.chain.len(), 1);
        // The DER of the certificate, not its PEM text.
        assert_eq!(identity.chain[0].first(), Some(&0x30));
    }

    #[test]
    fn each_fault_names_its_field() {
        let (certificate, key) = issued();
        let (_, other_key) = issued();
        assert_eq!(field(&certificate, &other_key), Some(IdentityField::Key));
        assert_eq!(field(&certificate, "no key"), Some(IdentityField::Key));
        assert_eq!(
            field("no certificate", &key),
            Some(IdentityField::Certificate)
        );
        let not_x509 = "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";
        assert_eq!(field(not_x509, &key), Some(IdentityField::Certificate));
        let (_, why) = ClientIdentity::parse(not_x509, &key).err().unwrap();
        assert!(why.contains("certificate 1 of 1"), "{why}");
    }
}
