//! The stored layouts of records whose fields changed, and how each earlier layout is read
//! after an upgrade. postcard is not self-describing: a record's fields cannot change under
//! the same format byte. So a change gives the record a new [`Record::FORMAT`], freezes the
//! layout it replaces here as a struct of its own (its fields as they were, never to change
//! again), and converts that struct into the current record in [`Record::earlier`].
//!
//! The SMTP settings, format by format:
//! - 1 ([`super::POSTCARD`]): the first compact layout ([`SmtpSettings1`]);
//! - 2: adds `link_origins` and `sender_domains` (empty when read from format 1)
//!   ([`SmtpSettings2`]);
//! - 3: adds `auth`, the AUTH mechanism and the OAuth2 client of XOAUTH2 (`AUTO` and none
//!   when read from formats 1 and 2).
//!
//! The next change takes format 4: copy the current `SmtpSettings` fields here as
//! `SmtpSettings3`, read format 3 into it in `earlier`, and give each legacy struct a
//! conversion into the current settings with the new fields at their defaults.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::{Record, POSTCARD};
use crate::crypto::Sealed;
use crate::settings::{
    Auth, FromAddress, Host, LinkOrigin, Port, Security, SenderDomain, SmtpSettings, Tls,
};

impl Record for SmtpSettings {
    const FORMAT: u8 = 3;

    fn earlier(format: u8, compact: &[u8]) -> Option<postcard::Result<Self>> {
        match format {
            POSTCARD => Some(postcard::from_bytes::<SmtpSettings1>(compact).map(Self::from)),
            2 => Some(postcard::from_bytes::<SmtpSettings2>(compact).map(Self::from)),
            _ => None,
        }
    }
}

/// The SMTP settings as format 2 stored them: before `auth`.
#[derive(Deserialize)]
pub(super) struct SmtpSettings2 {
    host: Host,
    port: Port,
    from: FromAddress,
    security: Security,
    username: String,
    password: Option<Sealed>,
    tls: Tls1,
    helo_name: String,
    timeout: Duration,
    reset_password_expiration: Duration,
    invitation_expiration: Duration,
    link_origins: Vec<LinkOrigin>,
    sender_domains: Vec<SenderDomain>,
    revision: u64,
    update_time: SystemTime,
    updated_by: String,
}

impl From<SmtpSettings2> for SmtpSettings {
    fn from(s: SmtpSettings2) -> Self {
        SmtpSettings {
            host: s.host,
            port: s.port,
            from: s.from,
            security: s.security,
            username: s.username,
            password: s.password,
            tls: s.tls.into(),
            helo_name: s.helo_name,
            timeout: s.timeout,
            reset_password_expiration: s.reset_password_expiration,
            invitation_expiration: s.invitation_expiration,
            link_origins: s.link_origins,
            sender_domains: s.sender_domains,
            auth: Auth::default(),
            revision: s.revision,
            update_time: s.update_time,
            updated_by: s.updated_by,
        }
    }
}

/// The SMTP settings as format 1 stored them: before `link_origins` and `sender_domains`.
#[derive(Deserialize)]
pub(super) struct SmtpSettings1 {
    host: Host,
    port: Port,
    from: FromAddress,
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

/// The TLS parameters as formats 1 to 3 of the SMTP settings store them.
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
            tls: s.tls.into(),
            helo_name: s.helo_name,
            timeout: s.timeout,
            reset_password_expiration: s.reset_password_expiration,
            invitation_expiration: s.invitation_expiration,
            link_origins: Vec::new(),
            sender_domains: Vec::new(),
            auth: Auth::default(),
            revision: s.revision,
            update_time: s.update_time,
            updated_by: s.updated_by,
        }
    }
}

impl From<Tls1> for Tls {
    fn from(t: Tls1) -> Self {
        Tls {
            ca_certificates_pem: t.ca_certificates_pem,
            accept_invalid_certificates: t.accept_invalid_certificates,
            server_name: t.server_name,
            client_certificate_pem: t.client_certificate_pem,
            client_key: t.client_key,
        }
    }
}

/// Users, format by format:
/// - 1 ([`super::POSTCARD`]): the first compact layout ([`User1`]);
/// - 2: adds `locale` (empty when read from format 1).
impl Record for crate::directory::User {
    const FORMAT: u8 = 2;

    fn earlier(format: u8, compact: &[u8]) -> Option<postcard::Result<Self>> {
        match format {
            POSTCARD => Some(postcard::from_bytes::<User1>(compact).map(Self::from)),
            _ => None,
        }
    }
}

/// A user as format 1 stored it: before `locale`.
#[derive(Deserialize)]
pub(super) struct User1 {
    login: String,
    name: String,
    email: String,
    organisations: Vec<String>,
    locked: bool,
    create_time: SystemTime,
    update_time: SystemTime,
}

impl From<User1> for crate::directory::User {
    fn from(u: User1) -> Self {
        Self {
            login: u.login,
            name: u.name,
            email: u.email,
            organisations: u.organisations,
            locked: u.locked,
            locale: String::new(),
            create_time: u.create_time,
            update_time: u.update_time,
        }
    }
}
