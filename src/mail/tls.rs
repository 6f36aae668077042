//! TLS toward the SMTP server, from the settings: the web PKI roots plus the settings' CA
//! certificates, the name to verify, the client certificate, and the explicit opt-out of
//! verification. One policy, in the two forms the code needs: lettre's `TlsParameters`
//! (STARTTLS, which lettre starts) and a rustls `ClientConfig` (implicit TLS, whose stream
//! the connection opens itself). The client certificate is checked when the policy is made
//! ([`ClientIdentity`]): a certificate or key that cannot be used fails the TLS stage naming
//! its field.

use std::sync::Arc;

use lettre::transport::smtp::client::{Certificate, Identity, TlsParameters};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use secrecy::{ExposeSecret, SecretString};

use super::MailError;
use crate::crypto::MasterKey;
use crate::settings::identity::ClientIdentity;
use crate::settings::SmtpSettings;

/// How to secure a connection to the SMTP server.
pub struct TlsPolicy {
    server_name: String,
    ca_certificates: Vec<CertificateDer<'static>>,
    accept_invalid_certificates: bool,
    client: Option<Client>,
}

/// The client certificate, checked when the policy is made.
struct Client {
    identity: ClientIdentity,
    /// The key as given, for lettre, which takes it as PEM.
    key_pem: SecretString,
}

impl TlsPolicy {
    /// The policy of `settings`, opening the client key with `key`.
    pub fn new(settings: &SmtpSettings, key: &MasterKey) -> Result<Self, MailError> {
        let ca_certificates =
            CertificateDer::pem_slice_iter(settings.tls.ca_certificates_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| MailError::Tls(format!("CA certificates: {e}")))?;
        let certificate_pem = &settings.tls.client_certificate_pem;
        let client = match settings.client_key_pem(key)? {
            Some(key_pem) if !certificate_pem.is_empty() => {
                let identity = ClientIdentity::parse(certificate_pem, key_pem.expose_secret())
                    .map_err(|(field, why)| MailError::Tls(format!("{}: {why}", field.name())))?;
                Some(Client { identity, key_pem })
            }
            _ => None,
        };
        let server_name = if settings.tls.server_name.is_empty() {
            settings.host.to_string()
        } else {
            settings.tls.server_name.clone()
        };
        Ok(Self {
            server_name,
            ca_certificates,
            accept_invalid_certificates: settings.tls.accept_invalid_certificates,
            client,
        })
    }

    /// The name the server's certificate must hold.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The policy for lettre.
    pub fn lettre(&self) -> Result<TlsParameters, MailError> {
        let mut builder = TlsParameters::builder(self.server_name.clone())
            .dangerous_accept_invalid_certs(self.accept_invalid_certificates);
        for ca in &self.ca_certificates {
            let cert = Certificate::from_der(ca.to_vec()).map_err(tls_error)?;
            builder = builder.add_root_certificate(cert);
        }
        if let Some(client) = &self.client {
            // With the rustls backend, lettre's `Identity::from_pem` does not decode its
            // first argument: it presents those bytes as the DER of the one certificate it
            // sends. Given the PEM text, rustls refused it as `invalid peer certificate:
            // BadEncoding` (its own client certificate, not the server's) before any
            // handshake. So the DER of the client's own certificate: lettre presents that
            // one only, no intermediates (implicit TLS, through `rustls`, sends the chain).
            let identity = Identity::from_pem(
                client.identity.chain[0].as_ref(),
                client.key_pem.expose_secret().as_bytes(),
            )
            .map_err(|e| MailError::Tls(format!("tls.client_key_pem: {e}")))?;
            builder = builder.identify_with(identity);
        }
        builder.build_rustls().map_err(tls_error)
    }

    /// The policy for rustls, and the server name to verify.
    pub fn rustls(&self) -> Result<(Arc<ClientConfig>, ServerName<'static>), MailError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?;
        let builder = if self.accept_invalid_certificates {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        } else {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            for ca in &self.ca_certificates {
                roots.add(ca.clone()).map_err(tls_error)?;
            }
            builder.with_root_certificates(roots)
        };
        let config = match &self.client {
            Some(client) => builder
                .with_client_auth_cert(
                    client.identity.chain.clone(),
                    client.identity.key.clone_key(),
                )
                .map_err(|e| {
                    MailError::Tls(format!(
                        "tls.client_certificate_pem and tls.client_key_pem: {e}"
                    ))
                })?,
            None => builder.with_no_client_auth(),
        };
        let name = ServerName::try_from(self.server_name.clone())
            .map_err(|e| MailError::Tls(format!("server name {:?}: {e}", self.server_name)))?;
        Ok((Arc::new(config), name))
    }
}

fn tls_error(e: impl std::fmt::Display) -> MailError {
    MailError::Tls(e.to_string())
}

/// `accept_invalid_certificates`: any certificate passes, but handshake signatures are
/// still checked (the connection is encrypted, just not authenticated).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
