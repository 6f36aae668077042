//! The platform's SMTP settings (TheHive's SMTP tab and more): what they hold, their
//! defaults and rules, and how an update applies. Entry points: [`SettingsService::get`]
//! and [`SettingsService::update`].
//!
//! Secrets (the password, the client key) are sealed with the master key before they
//! reach the store and are never returned. A stored secret is reused only on terms at least
//! as strict as those it was given with (`update::weakened`): another host, port or username, a
//! lower `security`, or weaker TLS verification needs it again, so that a stolen admin key
//! can neither point the stored password at a server of its choosing nor have it travel
//! in clear or to an unverified server.
//!
//! The settings also bound what callers may send: token emails link only to `link_origins`
//! ([`SmtpSettings::check_link`]), notifications come only from `sender_domains`
//! ([`SmtpSettings::check_sender`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::clock::Clock;
use crate::crypto::{CryptoError, MasterKey, Sealed};
use crate::metrics::Metrics;
use crate::ports::StoreError;
use crate::validation::{self, Violations};
use identity::ClientIdentity;

mod auth;
mod fields;
pub(crate) mod guard;
pub mod identity;
pub(crate) mod oauth2;
mod port;
mod update;

pub use auth::{Auth, AuthDraft, Grant, Mechanism, OAuth2, OAuth2Draft, Provider};
pub use fields::{FromAddress, Host, LinkOrigin, Port, Security, SenderDomain};
pub use guard::{AddressGuard, Resolve, Resolver};
pub use port::SettingsStore;
use update::*;

/// Default bound on an SMTP exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Allowed SMTP timeouts.
pub const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(120));
/// Default lifetime of a password-reset token (TheHive shows 10 minutes).
pub const DEFAULT_RESET_PASSWORD: Duration = Duration::from_secs(10 * 60);
/// Allowed password-reset lifetimes: 1 minute to 7 days.
pub const RESET_PASSWORD_RANGE: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(7 * 86_400));
/// Default lifetime of an invitation token (TheHive: 24 hours).
pub const DEFAULT_INVITATION: Duration = Duration::from_secs(86_400);
/// Allowed invitation lifetimes: 15 minutes to 30 days.
pub const INVITATION_RANGE: (Duration, Duration) = (
    Duration::from_secs(15 * 60),
    Duration::from_secs(30 * 86_400),
);

/// Most entries in `link_origins` and in `sender_domains`.
pub const MAX_LIST: usize = 32;

const PASSWORD_PURPOSE: &str = "smtp.password";
const CLIENT_KEY_PURPOSE: &str = "smtp.tls.client_key";
const CLIENT_SECRET_PURPOSE: &str = "smtp.oauth2.client_secret";
const PRIVATE_KEY_PURPOSE: &str = "smtp.oauth2.private_key";

/// Saved SMTP settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SmtpSettings {
    /// The server.
    pub host: Host,
    /// Its port.
    pub port: Port,
    /// The default sender.
    pub from: FromAddress,
    /// Connection security.
    pub security: Security,
    /// SMTP AUTH user; empty for none.
    pub username: String,
    /// The sealed password, when one is stored.
    pub password: Option<Sealed>,
    /// TLS parameters.
    pub tls: Tls,
    /// The EHLO name; this host's name when empty.
    pub helo_name: String,
    /// Bound on an SMTP exchange.
    pub timeout: Duration,
    /// Password-reset token lifetime.
    pub reset_password_expiration: Duration,
    /// Invitation token lifetime.
    pub invitation_expiration: Duration,
    /// The origins token emails may link to; none: no token email is sent.
    #[serde(default)]
    pub link_origins: Vec<LinkOrigin>,
    /// The domains notifications may come from; none: the domain of `from`.
    #[serde(default)]
    pub sender_domains: Vec<SenderDomain>,
    /// How to log in: the AUTH mechanism, and the OAuth2 client of XOAUTH2.
    #[serde(default)]
    pub auth: Auth,
    /// Incremented by every update; the etag.
    pub revision: u64,
    /// When last updated.
    pub update_time: SystemTime,
    /// The name of the key that last updated them.
    pub updated_by: String,
}

/// TLS parameters of the SMTP connection.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tls {
    /// Extra trusted CAs (PEM).
    pub ca_certificates_pem: String,
    /// Accept any certificate.
    pub accept_invalid_certificates: bool,
    /// Name to verify instead of the host.
    pub server_name: String,
    /// Client certificate chain (PEM).
    pub client_certificate_pem: String,
    /// The sealed client key, when one is stored.
    pub client_key: Option<Sealed>,
}

impl SmtpSettings {
    /// The version clients send back to refuse a stale write.
    pub fn etag(&self) -> String {
        self.revision.to_string()
    }

    /// The stored password, opened.
    pub fn password(&self, key: &MasterKey) -> Result<Option<SecretString>, CryptoError> {
        self.password
            .as_ref()
            .map(|s| key.open(PASSWORD_PURPOSE, s))
            .transpose()
    }

    /// The stored client key (PEM), opened.
    pub fn client_key_pem(&self, key: &MasterKey) -> Result<Option<SecretString>, CryptoError> {
        self.tls
            .client_key
            .as_ref()
            .map(|s| key.open(CLIENT_KEY_PURPOSE, s))
            .transpose()
    }

    /// The stored OAuth2 client secret, opened.
    pub fn oauth2_client_secret(
        &self,
        key: &MasterKey,
    ) -> Result<Option<SecretString>, CryptoError> {
        self.auth
            .oauth2
            .as_ref()
            .and_then(|o| o.client_secret.as_ref())
            .map(|s| key.open(CLIENT_SECRET_PURPOSE, s))
            .transpose()
    }

    /// The stored OAuth2 private key (PEM), opened.
    pub fn oauth2_private_key(&self, key: &MasterKey) -> Result<Option<SecretString>, CryptoError> {
        self.auth
            .oauth2
            .as_ref()
            .and_then(|o| o.private_key.as_ref())
            .map(|s| key.open(PRIVATE_KEY_PURPOSE, s))
            .transpose()
    }

    /// Checks the link template of a token email (already an absolute http(s) URL): it
    /// must lead to one of `link_origins` (else a violation on `link_template`); with none
    /// configured, no token email is sent at all.
    pub fn check_link(&self, template: &str) -> Result<(), SettingsError> {
        if self.link_origins.is_empty() {
            return Err(Unset {
                field: "settings.link_origins",
                why: "token emails link only to the platform's own origins, and none is \
                      configured: set them with UpdateSmtpSettings \
                      (e.g. https://thehive.example.com)",
            }
            .into());
        }
        fields::link_within(&self.link_origins, template)
            .map_err(|why| SettingsError::Invalid(validation::violation("link_template", why)))
    }

    /// Checks the sender of a notification: an address at one of `sender_domains`, or at
    /// the domain of `from` when there are none.
    pub fn check_sender(&self, sender: &Mailbox) -> Result<(), String> {
        sender_within(&self.sender_domains, &self.from, sender)
    }
}

/// Whether `sender` is at one of `domains` (at the domain of `own` when there are none).
fn sender_within(
    domains: &[SenderDomain],
    own: &FromAddress,
    sender: &Mailbox,
) -> Result<(), String> {
    let domain = sender.email.domain();
    if domains.is_empty() {
        let own = own.mailbox();
        let own = own.email.domain();
        if !own.eq_ignore_ascii_case(domain) {
            return Err(format!(
                "must be an address at {own}, the domain of the SMTP settings' `from` \
                 (settings.sender_domains names the others allowed), not at {domain}"
            ));
        }
        return Ok(());
    }
    if domains.iter().any(|d| d.admits(domain)) {
        return Ok(());
    }
    let allowed: Vec<&str> = domains.iter().map(SenderDomain::as_str).collect();
    Err(format!(
        "must be an address at one of the SMTP settings' sender_domains ({}), not at {domain}",
        allowed.join(", ")
    ))
}

/// Settings as a caller sends them: raw values, checked by [`SettingsService::update`].
/// Empty strings and `None` durations mean "not given".
#[derive(Clone, Debug, Default)]
pub struct SettingsDraft {
    /// See [`SmtpSettings::host`].
    pub host: String,
    /// See [`SmtpSettings::port`].
    pub port: u32,
    /// See [`SmtpSettings::from`].
    pub from: String,
    /// `None` when the caller sent a value this version does not know.
    pub security: Option<Security>,
    /// See [`SmtpSettings::username`].
    pub username: String,
    /// The password in clear (input only).
    pub password: SecretString,
    /// TLS parameters.
    pub tls: TlsDraft,
    /// See [`SmtpSettings::helo_name`].
    pub helo_name: String,
    /// See [`SmtpSettings::timeout`].
    pub timeout: Option<Duration>,
    /// See [`SmtpSettings::reset_password_expiration`].
    pub reset_password_expiration: Option<Duration>,
    /// See [`SmtpSettings::invitation_expiration`].
    pub invitation_expiration: Option<Duration>,
    /// See [`SmtpSettings::link_origins`].
    pub link_origins: Vec<String>,
    /// See [`SmtpSettings::sender_domains`].
    pub sender_domains: Vec<String>,
    /// See [`SmtpSettings::auth`].
    pub auth: AuthDraft,
    /// The etag the caller last read; empty to skip the check.
    pub etag: String,
}

/// TLS parameters as a caller sends them.
#[derive(Clone, Debug, Default)]
pub struct TlsDraft {
    /// See [`Tls::ca_certificates_pem`].
    pub ca_certificates_pem: String,
    /// See [`Tls::accept_invalid_certificates`].
    pub accept_invalid_certificates: bool,
    /// See [`Tls::server_name`].
    pub server_name: String,
    /// See [`Tls::client_certificate_pem`].
    pub client_certificate_pem: String,
    /// The client key in clear (input only).
    pub client_key_pem: SecretString,
}

/// Errors of the settings service.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Bad fields.
    #[error("invalid settings: {0}")]
    Invalid(Violations),
    /// The caller's etag is not the stored one, or another update came first.
    #[error("the settings changed since etag {given:?} was read (now {current:?})")]
    Stale {
        /// The etag sent.
        given: String,
        /// The stored etag.
        current: String,
    },
    /// SMTP was never configured.
    #[error("SMTP is not configured: set it with UpdateSmtpSettings first")]
    NotConfigured,
    /// A setting the request needs is not set.
    #[error(transparent)]
    Unset(#[from] Unset),
    /// A stored secret cannot be opened with this master key.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A setting a request needs is not configured (`FAILED_PRECONDITION`).
#[derive(Debug, thiserror::Error)]
#[error("{field} is not configured: {why}")]
pub struct Unset {
    /// Which setting, as a path in `UpdateSmtpSettings` (`settings.link_origins`).
    pub field: &'static str,
    /// Why the request needs it, and how to set it.
    pub why: &'static str,
}

/// Reads and updates the SMTP settings. Every RPC and send reads them, so they are kept in
/// memory once read, and replaced when this process updates them.
#[derive(Clone)]
pub struct SettingsService {
    store: Arc<dyn SettingsStore>,
    master_key: Arc<MasterKey>,
    clock: Clock,
    cache: Arc<Cache<(), Option<Arc<SmtpSettings>>>>,
    guard: AddressGuard,
    tokens: Arc<oauth2::AccessTokens>,
}

impl SettingsService {
    /// A service over `store`, sealing secrets with `master_key`.
    pub fn new(store: Arc<dyn SettingsStore>, master_key: Arc<MasterKey>, clock: Clock) -> Self {
        Self {
            store,
            master_key,
            clock,
            cache: Arc::default(),
            guard: AddressGuard::default(),
            tokens: Arc::new(oauth2::AccessTokens::new(Metrics::new())),
        }
    }

    /// Counts the OAuth2 token fetches of XOAUTH2 logins in `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.tokens = Arc::new(oauth2::AccessTokens::new(metrics));
        self
    }

    /// The access tokens of XOAUTH2 logins, kept beside the guard: every connection made
    /// with these settings gets its token here.
    pub fn oauth2_tokens(&self) -> &oauth2::AccessTokens {
        &self.tokens
    }

    /// Refuses hosts that are or resolve to a loopback, private, link-local or other
    /// special-purpose address (`--smtp-deny-private-addresses`), at update, at test and
    /// before every connection: a stolen admin key then cannot aim mailroom (and the relay
    /// password) at the internal network.
    pub fn deny_private_addresses(mut self, deny: bool) -> Self {
        self.guard = AddressGuard::new(deny, self.guard.resolver().clone());
        self
    }

    /// Resolves SMTP hosts with `resolver` (the system's by default; tests give their own).
    pub fn resolver(mut self, resolver: Resolver) -> Self {
        self.guard = AddressGuard::new(self.guard.denies_private(), resolver);
        self
    }

    /// The guard every SMTP connection resolves its host through.
    pub fn address_guard(&self) -> &AddressGuard {
        &self.guard
    }

    /// With the guard on, checks where `settings.host` leads before anything connects (the
    /// connection checks again, on the addresses it then uses).
    async fn check_host(&self, settings: &SmtpSettings) -> Result<(), SettingsError> {
        if !self.guard.denies_private() {
            return Ok(());
        }
        let checked = tokio::time::timeout(
            settings.timeout,
            self.guard.resolve(&settings.host, settings.port),
        )
        .await
        .unwrap_or_else(|_| {
            Err(guard::GuardError::Unresolved {
                host: settings.host.as_str().to_string(),
                error: format!("no answer within {}", human(settings.timeout)),
            })
        });
        checked
            .map(drop)
            .map_err(|e| SettingsError::Invalid(validation::violation("settings.host", e.why())))
    }

    /// The master key that opens stored secrets.
    pub fn master_key(&self) -> &MasterKey {
        &self.master_key
    }

    /// The saved settings; `None` before the first update.
    pub async fn get(&self) -> Result<Option<Arc<SmtpSettings>>, SettingsError> {
        // Served from memory only while another replica's change would reach this one.
        let epoch = self.store.watch_epoch();
        if let Some(cached) = self.cache.get(&(), epoch) {
            return Ok(cached);
        }
        let generation = self.cache.generation();
        let stored = self.store.smtp_settings().await?.map(Arc::new);
        self.cache.keep((), stored.clone(), generation, epoch);
        Ok(stored)
    }

    /// Forgets the settings held in memory: another replica changed them.
    pub fn forget(&self) {
        self.cache.forget();
    }

    /// The settings a test uses: `draft` applied over the stored settings as a full update
    /// would apply it, but not saved (so a stored secret is used only on terms at least as
    /// strict as those it was given with); the stored settings when there is no draft.
    pub async fn candidate(
        &self,
        draft: Option<SettingsDraft>,
    ) -> Result<SmtpSettings, SettingsError> {
        let current = self.store.smtp_settings().await?;
        let candidate = match draft {
            None => current.ok_or(SettingsError::NotConfigured)?,
            Some(draft) => merge(
                current.as_ref(),
                draft,
                &[],
                &self.master_key,
                self.clock.now(),
                "(unsaved)",
            )
            .map_err(SettingsError::Invalid)?,
        };
        self.check_host(&candidate).await?;
        Ok(candidate)
    }

    /// Seals the stored secrets again with the master key's sealing key (after a
    /// rotation). Whether there were any.
    pub async fn reseal(&self) -> Result<bool, SettingsError> {
        let Some(current) = self.store.smtp_settings().await? else {
            return Ok(false);
        };
        let mut next = current.clone();
        let key = &self.master_key;
        next.password = current
            .password(key)?
            .map(|p| key.seal(PASSWORD_PURPOSE, p.expose_secret()));
        next.tls.client_key = current
            .client_key_pem(key)?
            .map(|k| key.seal(CLIENT_KEY_PURPOSE, k.expose_secret()));
        let client_secret = current.oauth2_client_secret(key)?;
        let private_key = current.oauth2_private_key(key)?;
        if let Some(oauth2) = next.auth.oauth2.as_mut() {
            oauth2.client_secret =
                client_secret.map(|s| key.seal(CLIENT_SECRET_PURPOSE, s.expose_secret()));
            oauth2.private_key =
                private_key.map(|k| key.seal(PRIVATE_KEY_PURPOSE, k.expose_secret()));
        }
        if !self
            .store
            .swap_smtp_settings(current.revision, &next)
            .await?
        {
            return Err(SettingsError::Stale {
                given: current.etag(),
                current: "(changed concurrently)".into(),
            });
        }
        let epoch = self.store.watch_epoch();
        self.cache.insert((), Some(Arc::new(next)), epoch);
        let oauth2 = current.auth.oauth2.as_ref();
        Ok(current.password.is_some()
            || current.tls.client_key.is_some()
            || oauth2.is_some_and(|o| o.client_secret.is_some() || o.private_key.is_some()))
    }

    /// The current time of the service's clock.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Applies `draft` to the fields `mask` names (all for an empty mask) and saves the
    /// result, recording `updated_by`.
    pub async fn update(
        &self,
        draft: SettingsDraft,
        mask: &[String],
        updated_by: &str,
    ) -> Result<SmtpSettings, SettingsError> {
        let current = self.store.smtp_settings().await?;
        let current_etag = current.as_ref().map(SmtpSettings::etag).unwrap_or_default();
        if !draft.etag.is_empty() && draft.etag != current_etag {
            return Err(SettingsError::Stale {
                given: draft.etag,
                current: current_etag,
            });
        }
        let expected = current.as_ref().map_or(0, |c| c.revision);
        let next = merge(
            current.as_ref(),
            draft,
            mask,
            &self.master_key,
            self.clock.now(),
            updated_by,
        )
        .map_err(SettingsError::Invalid)?;
        self.check_host(&next).await?;
        if self.store.swap_smtp_settings(expected, &next).await? {
            let epoch = self.store.watch_epoch();
            self.cache.insert((), Some(Arc::new(next.clone())), epoch);
            Ok(next)
        } else {
            self.cache.forget();
            Err(SettingsError::Stale {
                given: current_etag,
                current: "(changed concurrently)".into(),
            })
        }
    }
}

/// A duration for a human: `90s`, `15m`, `7d`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
