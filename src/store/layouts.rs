//! The stored layouts of records whose fields changed, and how each earlier layout is read
//! after an upgrade. postcard is not self-describing: a record's fields cannot change under
//! the same format byte. So a change gives the record a new [`Record::FORMAT`], freezes the
//! layout it replaces here as a struct of its own (its fields as they were, never to change
//! again), and converts that struct into the current record in [`Record::earlier`].
//!
//! The SMTP settings, format by format:
//! - 1 ([`super::POSTCARD`]): the first compact layout ([`SmtpSettings1`]);
//! - 2: adds `link_origins` and `sender_domains` (empty when read from format 1).
//!
//! The next change (OAuth2, say) takes format 3: copy the current `SmtpSettings` fields here
//! as `SmtpSettings2`, read format 2 into it in `earlier`, and give both legacy structs a
//! conversion into the current settings with the new fields at their defaults.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::{Record, POSTCARD};
use crate::crypto::Sealed;
use crate::settings::{Host, Port, Security, Sender, SmtpSettings, Tls};

impl Record for SmtpSettings {
    const FORMAT: u8 = 2;

    fn earlier(format: u8, compact: &[u8]) -> Option<postcard::Result<Self>> {
        match format {
            POSTCARD => Some(postcard::from_bytes::<SmtpSettings1>(compact).map(Self::from)),
            _ => None,
        }
    }
}

/// The SMTP settings as format 1 stored them: before `link_origins` and `sender_domains`.
#[derive(Deserialize)]
pub(super) struct SmtpSettings1 {
    host: Host,
    port: Port,
    from: Sender,
    security: Security,
    username: String,
    password: Option<Sealed>,
    tls: Tls1,
    helo_name: String,
    timeout: Duration,
    reset_password_expiration: Duration,
    invitation_expiration: Duration,
    revision: u64,
    update_time: SystemTime,
    updated_by: String,
}

/// The TLS parameters as format 1 of the SMTP settings stored them.
#[derive(Deserialize)]
struct Tls1 {
    ca_certificates_pem: String,
    accept_invalid_certificates: bool,
    server_name: String,
    client_certificate_pem: String,
    client_key: Option<Sealed>,
}

impl From<SmtpSettings1> for SmtpSettings {
    fn from(s: SmtpSettings1) -> Self {
        SmtpSettings {
            host: s.host,
            port: s.port,
            from: s.from,
            security: s.security,
            username: s.username,
            password: s.password,
            tls: Tls {
                ca_certificates_pem: s.tls.ca_certificates_pem,
                accept_invalid_certificates: s.tls.accept_invalid_certificates,
                server_name: s.tls.server_name,
                client_certificate_pem: s.tls.client_certificate_pem,
                client_key: s.tls.client_key,
            },
            helo_name: s.helo_name,
            timeout: s.timeout,
            reset_password_expiration: s.reset_password_expiration,
            invitation_expiration: s.invitation_expiration,
            link_origins: Vec::new(),
            sender_domains: Vec::new(),
            revision: s.revision,
            update_time: s.update_time,
            updated_by: s.updated_by,
        }
    }
}
