//! The pooled lettre transport built from the settings: the one way mail leaves mailroom.

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::Tls;
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, Tokio1Executor};

use super::tls::TlsPolicy;
use super::MailError;
use crate::crypto::MasterKey;
use crate::settings::{Security, SmtpSettings};

/// The SMTP transport lettre sends through.
pub type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// The name sent in EHLO: the settings' `helo_name`, else this host's name.
pub fn client_id(settings: &SmtpSettings) -> ClientId {
    if settings.helo_name.is_empty() {
        ClientId::default()
    } else {
        ClientId::Domain(settings.helo_name.clone())
    }
}

/// A pooled transport (at most `pool_size` connections) that does what `settings` say:
/// `STARTTLS` is required (never a silent downgrade), `STARTTLS_OPPORTUNISTIC` is used
/// when offered, `SSL` is TLS from the first byte; AUTH when a username is set.
pub fn build(
    settings: &SmtpSettings,
    key: &MasterKey,
    pool_size: u32,
) -> Result<Transport, MailError> {
    let tls = match settings.security {
        Security::None => Tls::None,
        Security::StartTls => Tls::Required(TlsPolicy::new(settings, key)?.lettre()?),
        Security::StartTlsOpportunistic => {
            Tls::Opportunistic(TlsPolicy::new(settings, key)?.lettre()?)
        }
        Security::Ssl => Tls::Wrapper(TlsPolicy::new(settings, key)?.lettre()?),
    };
    let mut builder =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.as_str())
            .port(settings.port.get())
            .tls(tls)
            .hello_name(client_id(settings))
            .timeout(Some(settings.timeout))
            .pool_config(PoolConfig::new().max_size(pool_size));
    if !settings.username.is_empty() {
        let password = settings.password(key)?.unwrap_or_default();
        builder = builder
            .credentials(Credentials::new(
                settings.username.clone(),
                password.to_string(),
            ))
            .authentication(vec![Mechanism::Plain, Mechanism::Login]);
    }
    Ok(builder.build())
}
