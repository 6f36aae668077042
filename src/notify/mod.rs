//! Notifications: TheHive's EmailerToAddr ([`NotifyService::send_to_addresses`]) and
//! EmailerToUser ([`NotifyService::send_to_users`]), and the outbox they feed
//! (get, list, retry, cancel).
//!
//! A send renders its messages and hands them to the store as they come, in bounded parts
//! that stay invisible (`stage.rs`); a broken template or a bad header refuses the whole
//! request and forgets what was written, so nothing of it is queued. Otherwise the batch is
//! committed durably in one atomic write (with its idempotency key) and only then answered. Delivery workers
//! (`mail::delivery`) take it from there. Nothing a caller passes can add a header or a
//! recipient: every rendered header is refused if it holds CR or LF, and `from` and `to`
//! must each be one mailbox.

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::crypto::CryptoError;
use crate::directory::UserStore;
use crate::metrics::Metrics;
use crate::ports::StoreError;
use crate::settings::{SettingsError, SettingsService};
use crate::validation::Violations;
pub use template::BodyFormat;
use template::TemplateCache;

pub mod builtin;
pub(crate) mod email;
mod helpers;
mod maintenance;
pub(crate) mod message;
mod notices;
mod outbox;
mod port;
mod preview;
mod quota;
mod render;
pub(crate) mod sandbox;
mod send;
mod signal;
mod spend;
mod stage;
pub(crate) mod template;
mod text;
mod threads;

use crate::quota::OverQuota;
pub use builtin::{
    BuiltinOnly, Chosen, EmailKind, EmailSource, EmailSources, EmailValue, EmailValues,
    RenderedEmail,
};
pub use email::{OutgoingEmail, SealError, MAX_MESSAGE_BYTES};
pub use message::{Attempt, MessageState, OutboxMessage, StateError};
pub use notices::NoticeKind;
pub use port::{batch_gone, BatchWriter, OutboxStore};
pub use preview::NotificationPreview;
use quota::PendingCounts;
pub use quota::Quotas;
pub use render::MAX_HEADER_BYTES;
pub use signal::MailQueued;
pub use threads::RenderThreads;

/// The purpose a message's content is sealed for.
pub const CONTENT_PURPOSE: &str = "outbox.content";
/// Most recipients of one SendToAddresses.
pub const MAX_ADDRESSES: usize = 100;
/// Template source kept compiled, in bytes (the cache's bound; compiled templates take a
/// few times their source).
const KEPT_TEMPLATE_BYTES: u64 = 16 * 1024 * 1024;
/// How long an idempotency key is remembered.
pub const KEEP_IDEMPOTENCY: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);
/// Sends rendering and staging at once by default, each on a thread of its own: enough for
/// group commit to gather many writers, few enough that threads rendering a caller's
/// templates leave the runtime's workers their share of the cores. More wait their turn;
/// one organisation's sends take at most a quarter of them.
pub const SEND_THREADS: usize = 64;
/// Users read from the directory at a time by SendToUsers.
const USER_PAGE: usize = 1000;

/// A notification as a caller sends it.
#[derive(Clone, Debug, Default)]
pub struct Notification {
    /// The organisation sending.
    pub organisation: String,
    /// Sender template; the settings' `from` when empty.
    pub from: String,
    /// Subject template.
    pub subject: String,
    /// Body template.
    pub body: String,
    /// How the body is rendered.
    pub format: BodyFormat,
    /// Values for the templates (an object; `user` is set per recipient).
    pub context: Map<String, Value>,
    /// The same key again answers the first result and sends nothing.
    pub idempotency_key: String,
}

/// The answer to a send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// One id per message.
    pub message_ids: Vec<String>,
    /// How many recipients.
    pub recipients: u32,
    /// Whether an earlier request with the same key answered this.
    #[serde(skip)]
    pub duplicate: bool,
}

/// An idempotency key and what its first request queued.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Idempotency {
    /// The organisation that used it.
    pub organisation: String,
    /// The key.
    pub key: String,
    /// What was queued.
    pub queued: Queued,
    /// When.
    pub create_time: SystemTime,
}

/// Errors of the notifier.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Bad fields, templates or rendered headers.
    #[error("invalid notification: {0}")]
    Invalid(Violations),
    /// SMTP was never configured.
    #[error("SMTP is not configured: set it with UpdateSmtpSettings first")]
    NotConfigured,
    /// A setting the request needs is not set.
    #[error(transparent)]
    Unset(#[from] crate::settings::Unset),
    /// No directory user (with an address) for this login in the organisation.
    #[error("no user {0:?} with an email address in this organisation")]
    NoUser(String),
    /// The login is a user of another organisation.
    #[error(transparent)]
    NotInOrganisation(#[from] crate::directory::NotInOrganisation),
    /// The organisation's outbox quota would be passed.
    #[error(transparent)]
    OverQuota(OverQuota),
    /// No such message (for this caller).
    #[error("message {0:?} not found")]
    NotFound(String),
    /// The message's state refuses the change.
    #[error(transparent)]
    State(#[from] StateError),
    /// A sealed value cannot be opened.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<SettingsError> for NotifyError {
    fn from(e: SettingsError) -> Self {
        match e {
            SettingsError::Invalid(v) => NotifyError::Invalid(v),
            SettingsError::NotConfigured | SettingsError::Stale { .. } => {
                NotifyError::NotConfigured
            }
            SettingsError::Unset(e) => NotifyError::Unset(e),
            SettingsError::Crypto(e) => NotifyError::Crypto(e),
            SettingsError::Store(e) => NotifyError::Store(e),
        }
    }
}

/// Queues and manages notifications.
#[derive(Clone)]
pub struct NotifyService {
    outbox: Arc<dyn OutboxStore>,
    /// The recipients of EmailerToUser and of account notices.
    users: Arc<dyn UserStore>,
    /// Compiled request templates, bounded in bytes: any caller sends templates.
    templates: Arc<TemplateCache>,
    quotas: Quotas,
    pending: Arc<PendingCounts>,
    settings: SettingsService,
    clock: Clock,
    wake: Arc<MailQueued>,
    metrics: Metrics,
    /// Where sends and built-in emails render.
    threads: RenderThreads,
    /// The templates of the built-in emails (overrides, languages).
    email_sources: Arc<dyn EmailSources>,
}

impl NotifyService {
    /// The notifier over `outbox`, sending to the `users` of a directory, waking delivery
    /// through `wake` when it queues mail.
    pub fn new(
        outbox: Arc<dyn OutboxStore>,
        users: Arc<dyn UserStore>,
        settings: SettingsService,
        clock: Clock,
        wake: Arc<MailQueued>,
        metrics: Metrics,
    ) -> Self {
        Self {
            outbox,
            users,
            templates: Arc::new(TemplateCache::new(KEPT_TEMPLATE_BYTES)),
            quotas: Quotas::default(),
            pending: Arc::default(),
            settings,
            clock,
            wake,
            threads: RenderThreads::new(SEND_THREADS, metrics.clone()),
            metrics,
            email_sources: Arc::new(BuiltinOnly),
        }
    }

    /// The same notifier, rendering on `threads` (shared with the previews and the
    /// overrides' checks: [`crate::templates::TemplateService::with_render_threads`]).
    pub fn with_render_threads(mut self, threads: RenderThreads) -> Self {
        self.threads = threads;
        self
    }

    /// The same notifier, holding each organisation to `quotas`.
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = quotas;
        self
    }
}
