//! Notifications: TheHive's EmailerToAddr ([`NotifyService::send_to_addresses`]) and
//! EmailerToUser ([`NotifyService::send_to_users`]), and the outbox they feed
//! (get, list, retry, cancel).
//!
//! A send renders every message first, so that a broken template or a bad header refuses
//! the whole request before anything is queued; then the batch is written durably in one
//! atomic write (with its idempotency key) and only then answered. Delivery workers
//! (`mail::delivery`) take it from there. Nothing a caller passes can add a header or a
//! recipient: every rendered header is refused if it holds CR or LF, and `from` and `to`
//! must each be one mailbox.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lettre::message::Mailbox;
use lettre::Address;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{Notify, Semaphore};

use crate::clock::Clock;
use crate::crypto::{self, CryptoError, MasterKey};
use crate::directory::User;
use crate::mail::template::{html_to_text, BodyFormat, Data, TemplateCache, Templates};
use crate::mail::{compose, new_message_id};
use crate::metrics::Metrics;
use crate::settings::{SettingsError, SettingsService, SmtpSettings};
use crate::store::{Store, StoreError};
use crate::validation::{self, Violations};

pub mod message;
mod notices;
mod quota;
mod stage;

use stage::Stager;

pub use message::{Attempt, MessageState, OutboxMessage, StateError};
pub use notices::NoticeKind;
use quota::PendingCounts;
pub use quota::{OverQuota, Quotas, Tally};

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
/// Organisations whose shares are kept before the idle ones are forgotten.
const KEPT_SHARES: usize = 10_000;
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

/// What a notification's message holds besides its recipient, rendered.
struct Parts {
    from: Mailbox,
    subject: String,
    text: String,
    html: Option<String>,
}

/// Queues and manages notifications.
#[derive(Clone)]
pub struct NotifyService {
    store: Arc<dyn Store>,
    /// Compiled request templates, bounded in bytes: any caller sends templates.
    templates: Arc<TemplateCache>,
    quotas: Quotas,
    pending: Arc<PendingCounts>,
    settings: SettingsService,
    clock: Clock,
    wake: Arc<Notify>,
    metrics: Metrics,
    /// Sends running at once, each on a thread ([`NotifyService::on_send_thread`]).
    send_threads: Arc<Semaphore>,
    /// Each organisation's share of them, and its size.
    send_shares: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>>,
    send_share: usize,
}

impl NotifyService {
    /// The notifier over `store`, waking delivery through `wake` when it queues mail.
    pub fn new(
        store: Arc<dyn Store>,
        settings: SettingsService,
        clock: Clock,
        wake: Arc<Notify>,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            templates: Arc::new(TemplateCache::new(KEPT_TEMPLATE_BYTES)),
            quotas: Quotas::default(),
            pending: Arc::default(),
            settings,
            clock,
            wake,
            metrics,
            send_threads: Arc::new(Semaphore::new(SEND_THREADS)),
            send_shares: Arc::default(),
            send_share: SEND_THREADS / 4,
        }
    }

    /// The same notifier, running at most `threads` sends at once (see
    /// [`NotifyService::on_send_thread`]), one organisation's at most a quarter of them.
    pub fn with_send_threads(mut self, threads: usize) -> Self {
        self.send_threads = Arc::new(Semaphore::new(threads.max(1)));
        self.send_share = (threads / 4).max(1);
        self
    }

    /// The same notifier, holding each organisation to `quotas`.
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = quotas;
        self
    }

    /// Counts `count` messages of `bytes` in all against `organisation`'s quotas, or says
    /// which one they would pass. The pending count and the two tallies are separate
    /// steps: requests racing near a limit may pass it by what they queue at once.
    async fn spend_quota(
        &self,
        organisation: &str,
        count: usize,
        bytes: usize,
    ) -> Result<(), NotifyError> {
        self.spend_messages(organisation, count).await?;
        self.spend_bytes(organisation, bytes).await
    }

    /// Counts `count` messages against `organisation`'s pending and hourly quotas.
    async fn spend_messages(&self, organisation: &str, count: usize) -> Result<(), NotifyError> {
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        self.check_pending(organisation, count).await?;
        let limit = self.quotas.messages_per_hour;
        self.spend_tally(organisation, "messages_per_hour", quota::HOUR, count, limit)
            .await?;
        self.pending.add(organisation, count);
        Ok(())
    }

    /// Counts `bytes` (sealed) against `organisation`'s daily quota.
    async fn spend_bytes(&self, organisation: &str, bytes: usize) -> Result<(), NotifyError> {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let limit = self.quotas.bytes_per_day;
        self.spend_tally(organisation, "bytes_per_day", quota::DAY, bytes, limit)
            .await
    }

    async fn spend_tally(
        &self,
        organisation: &str,
        quota: &'static str,
        window: Duration,
        amount: u64,
        limit: u64,
    ) -> Result<(), NotifyError> {
        let key = format!("{quota}/{organisation}");
        let now = self.clock.now();
        match self.store.tally(&key, now, window, amount, limit).await? {
            Some(retry_after) => Err(NotifyError::OverQuota(OverQuota {
                quota,
                limit,
                retry_after,
            })),
            None => Ok(()),
        }
    }

    /// Refused when `count` more messages of `organisation` would pass its pending quota:
    /// checked again before rendering, so that an organisation at its quota spends no
    /// rendering on requests that cannot be queued.
    async fn check_pending(&self, organisation: &str, count: u64) -> Result<(), NotifyError> {
        let pending = match self.pending.fresh(organisation) {
            Some(pending) => pending,
            None => {
                let at = std::time::Instant::now();
                let pending = self
                    .store
                    .pending_of(organisation, self.quotas.pending_messages.saturating_add(1))
                    .await?;
                self.pending.keep(organisation, at, pending);
                pending
            }
        };
        self.quotas
            .check_pending(pending, count)
            .map_err(NotifyError::OverQuota)
    }

    /// EmailerToAddr: one message per address of `to` (1 to 100 templates).
    pub async fn send_to_addresses(
        &self,
        n: Notification,
        to: Vec<String>,
    ) -> Result<Queued, NotifyError> {
        let (this, organisation) = (self.clone(), n.organisation.clone());
        self.on_send_thread(&organisation, async move {
            this.queue_to_addresses(n, to).await
        })
        .await
    }

    /// EmailerToUser: one message per unlocked user of the organisation that has an
    /// address, with `user` set to that user in the templates.
    pub async fn send_to_users(&self, n: Notification) -> Result<Queued, NotifyError> {
        let (this, organisation) = (self.clone(), n.organisation.clone());
        self.on_send_thread(&organisation, async move { this.queue_to_users(n).await })
            .await
    }

    /// Runs a send of `organisation` on a thread of its own (tokio's blocking pool), at
    /// most [`SEND_THREADS`] at once (`--send-threads`) and a quarter of them of one
    /// organisation: rendering is synchronous and a caller's template may render for
    /// seconds, which on one of the runtime's few workers would stall every other request,
    /// delivery and the health service meanwhile; and one organisation's slow sends must
    /// leave the others threads to run on. The send's store calls still go through the
    /// runtime's drivers. Once started, a send runs to its end even if its caller goes
    /// away, as a staged batch is then queued or forgotten whole.
    async fn on_send_thread<T: Send + 'static>(
        &self,
        organisation: &str,
        send: impl Future<Output = Result<T, NotifyError>> + Send + 'static,
    ) -> Result<T, NotifyError> {
        let share = {
            let mut shares = self.send_shares.lock().unwrap_or_else(|e| e.into_inner());
            if shares.len() >= KEPT_SHARES && !shares.contains_key(organisation) {
                // Idle ones only: a share in use is held by its sends too.
                shares.retain(|_, s| s.available_permits() < self.send_share);
            }
            shares
                .entry(organisation.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.send_share)))
                .clone()
        };
        let closed = |_| NotifyError::Store(StoreError::Unavailable("shutting down".into()));
        let waiting = Counted::new(&self.metrics, "waiting");
        let own = share.acquire_owned().await.map_err(closed)?;
        let slot = self
            .send_threads
            .clone()
            .acquire_owned()
            .await
            .map_err(closed)?;
        drop(waiting);
        let running = Counted::new(&self.metrics, "running");
        let runtime = tokio::runtime::Handle::current();
        let sent = tokio::task::spawn_blocking(move || {
            let _slots = (own, slot, running);
            runtime.block_on(send)
        })
        .await;
        match sent {
            Ok(result) => result,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Err(NotifyError::Store(StoreError::Unavailable(
                    "the send was cancelled: shutting down".into(),
                ))),
            },
        }
    }

    async fn queue_to_addresses(
        &self,
        mut n: Notification,
        to: Vec<String>,
    ) -> Result<Queued, NotifyError> {
        let mut v = check_notification(&n);
        if to.is_empty() || to.len() > MAX_ADDRESSES {
            v.add(
                "to",
                format!(
                    "must hold 1 to {MAX_ADDRESSES} recipients, not {}",
                    to.len()
                ),
            );
        }
        v.into_result(()).map_err(NotifyError::Invalid)?;
        if let Some(queued) = self.seen(&n).await? {
            return Ok(queued);
        }
        self.check_pending(&n.organisation, 1).await?;
        let settings = self.configured().await?;
        let fields: Vec<(String, &str)> = to
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("to[{i}]"), t.as_str()))
            .collect();
        let templates = self.compile(&n, &fields)?;
        // One message per recipient: counted before anything is rendered.
        self.spend_messages(&n.organisation, to.len()).await?;
        // Every recipient sees the same data: all but `to` renders once.
        let data = Data::new(std::mem::take(&mut n.context));
        let mut stager =
            Stager::new(self, &n.organisation, crypto::random_id("batch_")).messages_counted();
        let staged = async {
            let parts = self.render_parts(&n, &settings, &templates, &data);
            let parts = match parts {
                Ok(parts) => Some(parts),
                Err(found) => {
                    stager.take(Err(found)).await?;
                    None
                }
            };
            for (field, _) in &fields {
                let to = templates
                    .render(field, &data)
                    .and_then(|to| mailbox(&to).map_err(|why| validation::violation(field, why)));
                let message = match (&parts, to) {
                    (Some(parts), Ok(to)) => self.build(&n, parts, to),
                    (_, Err(found)) => Err(found),
                    (None, Ok(_)) => continue,
                };
                if !stager.take(message).await? {
                    break;
                }
            }
            stager.check()
        }
        .await;
        self.finish(&n, stager, staged).await
    }

    async fn queue_to_users(&self, mut n: Notification) -> Result<Queued, NotifyError> {
        check_notification(&n)
            .into_result(())
            .map_err(NotifyError::Invalid)?;
        if let Some(queued) = self.seen(&n).await? {
            return Ok(queued);
        }
        self.check_pending(&n.organisation, 1).await?;
        let settings = self.configured().await?;
        let templates = self.compile(&n, &[])?;
        // Users are read a page at a time and each message staged as it is rendered, so
        // that memory stays bounded however large the organisation; all are queued at once
        // at the end.
        let mut stager = Stager::new(self, &n.organisation, crypto::random_id("batch_"));
        // The context is made once; only `user` changes from one recipient to the next.
        let mut data = Data::new(std::mem::take(&mut n.context));
        let staged = async {
            let mut after: Option<String> = None;
            'pages: loop {
                let users = self
                    .store
                    .list_users(&n.organisation, after.as_deref(), USER_PAGE)
                    .await?;
                let Some(last) = users.last() else { break };
                after = Some(last.login.clone());
                let full = users.len() == USER_PAGE;
                for user in users.iter().filter(|u| !u.locked) {
                    let Some(address) = user.address() else {
                        continue;
                    };
                    data.set("user", user_value(user, &address));
                    let message = self
                        .render_parts(&n, &settings, &templates, &data)
                        .and_then(|parts| {
                            let name = (!user.name.is_empty() && !has_line_break(&user.name))
                                .then(|| user.name.clone());
                            self.build(&n, &parts, Mailbox::new(name, address))
                        });
                    if !stager.take(message).await? {
                        break 'pages;
                    }
                }
                if !full {
                    break;
                }
            }
            stager.check()
        }
        .await;
        self.finish(&n, stager, staged).await
    }

    /// TheHive's account-change email to a directory user of `organisation`; an email
    /// change is told to `previous_email` too. The ids of the queued messages.
    pub async fn send_account_notice(
        &self,
        kind: Option<NoticeKind>,
        login: &str,
        organisation: &str,
        previous_email: &str,
    ) -> Result<Vec<String>, NotifyError> {
        let mut v = Violations::new();
        if kind.is_none() {
            v.add(
                "kind",
                "is required: PASSWORD_CHANGED, PASSWORD_RESET or EMAIL_CHANGED",
            );
        }
        let login = v
            .check("login", crate::directory::canonical_login(login))
            .unwrap_or_default();
        let login = login.as_str();
        let previous = match (kind, previous_email.is_empty()) {
            (Some(NoticeKind::EmailChanged), true) => {
                v.add("previous_email", "is required for EMAIL_CHANGED");
                None
            }
            (_, true) => None,
            (_, false) => v.check(
                "previous_email",
                Address::from_str(previous_email)
                    .map_err(|e| format!("is not an email address ({e})")),
            ),
        };
        v.into_result(()).map_err(NotifyError::Invalid)?;
        let kind = kind.expect("checked above");
        let found = self.store.user(login).await?;
        let user = crate::directory::member_of(found, login, organisation)?
            .ok_or_else(|| NotifyError::NoUser(login.to_string()))?;
        let address = user
            .address()
            .ok_or_else(|| NotifyError::NoUser(login.to_string()))?;
        let settings = self.configured().await?;
        let now = self.clock.now();
        let data = serde_json::json!({
            "name": if user.name.is_empty() { &user.login } else { &user.name },
            "login": user.login,
            "time": crate::mail::rfc3339(now),
            "previous": previous_email,
            "current": address.to_string(),
        });
        let rendered = kind.email().render(&data).map_err(NotifyError::Invalid)?;
        let mut recipients = vec![address];
        if kind == NoticeKind::EmailChanged {
            recipients.extend(previous.filter(|p| !recipients.contains(p)));
        }
        let mut messages = Vec::new();
        for to in recipients {
            let outgoing = OutgoingEmail {
                organisation,
                from: settings.from.mailbox(),
                to: Mailbox::new(None, to),
                subject: &rendered.subject,
                text: &rendered.text,
                html: Some(&rendered.html),
            };
            messages.push(
                outgoing
                    .seal(self.settings.master_key(), now)
                    .map_err(|e| {
                        NotifyError::Invalid(validation::violation("login", e.to_string()))
                    })?,
            );
        }
        let ids = messages.iter().map(|m| m.id.clone()).collect();
        self.enqueue_built(messages).await?;
        Ok(ids)
    }

    /// Queues messages built elsewhere (account notices), durably, within the quotas.
    pub async fn enqueue_built(&self, messages: Vec<OutboxMessage>) -> Result<(), NotifyError> {
        self.charge(&messages).await?;
        self.queue_charged(messages).await
    }

    /// Counts messages built elsewhere against their organisation's quotas: first, so that
    /// a token email over quota is refused before its token is written.
    pub async fn charge(&self, messages: &[OutboxMessage]) -> Result<(), NotifyError> {
        if let Some(first) = messages.first() {
            let bytes = messages
                .iter()
                .map(|m| m.content.as_ref().map_or(0, |c| c.stored_len()))
                .sum();
            self.spend_quota(&first.organisation, messages.len(), bytes)
                .await?;
        }
        Ok(())
    }

    /// Queues messages [`NotifyService::charge`] counted, durably.
    pub async fn queue_charged(&self, messages: Vec<OutboxMessage>) -> Result<(), NotifyError> {
        let batch = crypto::random_id("batch_");
        self.store.queue_messages(&batch, &messages, None).await?;
        self.metrics.messages("queued", messages.len());
        self.wake.notify_one();
        Ok(())
    }

    /// Renders what a notification's message holds besides its recipient: sender, subject
    /// and body over `data`, or every violation.
    fn render_parts(
        &self,
        n: &Notification,
        settings: &SmtpSettings,
        templates: &Templates,
        data: &Data,
    ) -> Result<Parts, Violations> {
        let mut v = Violations::new();
        let from = if n.from.is_empty() {
            Some(settings.from.mailbox())
        } else {
            templates
                .render("from", data)
                .map_err(|e| merge(&mut v, e))
                .ok()
                .and_then(|from| {
                    let from = mailbox(&from).and_then(|m| settings.check_sender(&m).map(|()| m));
                    v.check("from", from)
                })
        };
        let subject = templates
            .render("subject", data)
            .map_err(|e| merge(&mut v, e))
            .ok()
            .and_then(|s| v.check("subject", header_value(s)));
        let body = templates
            .render("body", data)
            .map_err(|e| merge(&mut v, e))
            .ok();
        let (Some(from), Some(subject), Some(body)) = (from, subject, body) else {
            return Err(v);
        };
        let (text, html) = match n.format {
            BodyFormat::Text => (body, None),
            BodyFormat::Html => {
                // Part of the request's render time (once per recipient in SendToUsers).
                let started = std::time::Instant::now();
                let text = html_to_text(&body);
                data.spend(started.elapsed());
                (text, Some(body))
            }
        };
        Ok(Parts {
            from,
            subject,
            text,
            html,
        })
    }

    /// Builds and seals the message of `parts` to `to`.
    fn build(
        &self,
        n: &Notification,
        parts: &Parts,
        to: Mailbox,
    ) -> Result<OutboxMessage, Violations> {
        let built = OutgoingEmail {
            organisation: &n.organisation,
            from: parts.from.clone(),
            to,
            subject: &parts.subject,
            text: &parts.text,
            html: parts.html.as_deref(),
        };
        built
            .seal(self.settings.master_key(), self.clock.now())
            .map_err(|e| validation::violation("body", format!("cannot build the message: {e}")))
    }

    /// Compiles a notification's templates (and `recipients`, `to[i]` fields), through
    /// this service's cache.
    fn compile(
        &self,
        n: &Notification,
        recipients: &[(String, &str)],
    ) -> Result<Arc<Templates>, NotifyError> {
        let mut fields: Vec<(&str, &str)> = vec![("subject", &n.subject), ("body", &n.body)];
        if !n.from.is_empty() {
            fields.push(("from", &n.from));
        }
        fields.extend(recipients.iter().map(|(f, t)| (f.as_str(), *t)));
        self.templates
            .compile(&fields, n.format)
            .map_err(NotifyError::Invalid)
    }

    /// The first use of the notification's key, once durable.
    async fn seen(&self, n: &Notification) -> Result<Option<Queued>, NotifyError> {
        if n.idempotency_key.is_empty() {
            return Ok(None);
        }
        let Some(first) = self
            .store
            .idempotency(&n.organisation, &n.idempotency_key)
            .await?
        else {
            return Ok(None);
        };
        self.replay(first).await.map(Some)
    }

    /// Answers a key's first use again. The first call may still be waiting for its write
    /// to reach the disk (a group commit in flight): a retry that answered before it would
    /// hand out ids that a crash could still lose, so it waits for the same durability.
    async fn replay(&self, first: Idempotency) -> Result<Queued, NotifyError> {
        self.store.flush().await?;
        Ok(Queued {
            duplicate: true,
            ..first.queued
        })
    }

    async fn configured(&self) -> Result<Arc<SmtpSettings>, NotifyError> {
        self.settings.get().await?.ok_or(NotifyError::NotConfigured)
    }

    /// Ends a request whose messages went to `stager`: queues them with the notification's
    /// idempotency key when `staged` went well (or answers the key's first use), else
    /// forgets what was staged and answers why.
    async fn finish(
        &self,
        n: &Notification,
        stager: Stager<'_>,
        staged: Result<(), NotifyError>,
    ) -> Result<Queued, NotifyError> {
        if let Err(e) = staged {
            stager.abandon().await?;
            return Err(e);
        }
        let now = self.clock.now();
        let key = |queued: Queued| Idempotency {
            organisation: n.organisation.clone(),
            key: n.idempotency_key.clone(),
            queued,
            create_time: now,
        };
        let ids = stager.ids().to_vec();
        let queued = Queued {
            recipients: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            message_ids: ids,
            duplicate: false,
        };
        let key = (!n.idempotency_key.is_empty()).then(|| key(queued.clone()));
        let first = stager.commit(key.as_ref()).await?;
        if let Some(first) = first {
            return self.replay(first).await;
        }
        self.metrics.messages("queued", queued.message_ids.len());
        self.wake.notify_one();
        Ok(queued)
    }

    /// Forgets idempotency keys first used more than a week ago. How many.
    pub async fn purge_idempotency(&self) -> Result<usize, NotifyError> {
        let now = self.clock.now();
        let before = now.checked_sub(KEEP_IDEMPOTENCY).unwrap_or(now);
        Ok(self.store.purge_idempotency(before).await?)
    }

    /// Forgets the finished messages (`SENT`, `DEAD`, `CANCELLED`) queued, or last requeued,
    /// more than `retention` ago; a zero `retention` keeps them. How many.
    pub async fn purge_messages(&self, retention: Duration) -> Result<usize, NotifyError> {
        let now = self.clock.now();
        let Some(before) = now.checked_sub(retention).filter(|_| !retention.is_zero()) else {
            return Ok(0);
        };
        let (mut after, mut purged) = (None, 0);
        loop {
            let page = self.next_page(&mut after).await?;
            if page.is_empty() {
                return Ok(purged);
            }
            for message in &page {
                // Ids follow the queuing time: the rest of the outbox is younger.
                if message.create_time >= before {
                    return Ok(purged);
                }
                if message.due_at().is_none()
                    && message.window_start < before
                    && self
                        .store
                        .remove_message(message.version, &message.id)
                        .await?
                {
                    purged += 1;
                }
            }
        }
    }

    /// The next page of the whole outbox, in id order, after `after`, which moves to its
    /// last message; empty at the end.
    async fn next_page(
        &self,
        after: &mut Option<String>,
    ) -> Result<Vec<OutboxMessage>, NotifyError> {
        let page = self.store.all_messages(after.as_deref(), 500).await?;
        if let Some(last) = page.last() {
            *after = Some(last.id.clone());
        }
        Ok(page)
    }

    /// Settles the batches of requests that stopped halfway, staged or committed before
    /// `before` (see [`Store::recover_batches`]). How many batches.
    pub async fn recover_batches(&self, before: SystemTime) -> Result<usize, NotifyError> {
        Ok(self.store.recover_batches(before).await?)
    }

    /// One message; `scope` limits it to an organisation (`None`: any).
    pub async fn get(&self, id: &str, scope: Option<&str>) -> Result<OutboxMessage, NotifyError> {
        self.store
            .message(id)
            .await?
            .filter(|m| scope.is_none_or(|org| m.organisation == org))
            .ok_or_else(|| NotifyError::NotFound(id.to_string()))
    }

    /// Messages of `organisation` in id (creation) order after `after`, in `state` when
    /// given, at most `limit`.
    pub async fn list(
        &self,
        organisation: &str,
        state: Option<MessageState>,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, NotifyError> {
        Ok(self
            .store
            .list_messages(organisation, state, after.as_deref(), limit)
            .await?)
    }

    /// Makes every claimed message due now: for a store only this process can open, the
    /// claims found at start belong to a process that died. Returns how many. The store
    /// finds them by its indexes: start reads none of the backlog's bodies.
    pub async fn release_claims(&self) -> Result<usize, NotifyError> {
        Ok(self.store.release_claims(self.clock.now()).await?)
    }

    /// Seals every message's content again with the master key's sealing key (after a
    /// rotation). How many. Each page re-sealed is made durable and logged before the next:
    /// a rotation of a large outbox shows its progress, and one interrupted (killed, or the
    /// store failing) keeps what it did; the keyring still opens the rest, and running it
    /// again finishes it.
    pub async fn reseal(&self) -> Result<usize, NotifyError> {
        let key = self.settings.master_key();
        let (mut after, mut count) = (None, 0);
        loop {
            let page = self.next_page(&mut after).await?;
            if page.is_empty() {
                break;
            }
            // A page holds no contents: each is read with its message, one at a time.
            for listed in page {
                let Some(message) = self.store.message(&listed.id).await? else {
                    continue;
                };
                let Some(sealed) = &message.content else {
                    continue;
                };
                let content = key.open_bytes(CONTENT_PURPOSE, sealed)?;
                let mut next = message.clone();
                next.content = Some(key.seal_bytes(CONTENT_PURPOSE, &content));
                next.version += 1;
                if self
                    .store
                    .swap_message(message.version, &next, false)
                    .await?
                {
                    count += 1;
                }
            }
            self.store.flush().await?;
            tracing::info!(resealed = count, "message contents re-sealed so far");
        }
        Ok(count)
    }

    /// Requeues a DEAD message.
    pub async fn retry(&self, id: &str, scope: Option<&str>) -> Result<OutboxMessage, NotifyError> {
        let now = self.clock.now();
        // A retried message is queued again: it counts against the quotas as a new one
        // (once it is known to be DEAD, so that a refused retry spends nothing).
        let current = self.get(id, scope).await?;
        current.clone().requeue(now)?;
        let bytes = current.content.as_ref().map_or(0, |c| c.stored_len());
        self.spend_quota(&current.organisation, 1, bytes).await?;
        let message = self.change(id, scope, |m| m.requeue(now)).await?;
        self.pending.forget(&message.organisation);
        self.metrics.messages("queued", 1);
        self.wake.notify_one();
        Ok(message)
    }

    /// Cancels a pending message.
    pub async fn cancel(
        &self,
        id: &str,
        scope: Option<&str>,
    ) -> Result<OutboxMessage, NotifyError> {
        let message = self.change(id, scope, OutboxMessage::cancel).await?;
        self.pending.forget(&message.organisation);
        self.metrics.messages("cancelled", 1);
        Ok(message)
    }

    async fn change(
        &self,
        id: &str,
        scope: Option<&str>,
        apply: impl Fn(&mut OutboxMessage) -> Result<(), StateError>,
    ) -> Result<OutboxMessage, NotifyError> {
        loop {
            let current = self.get(id, scope).await?;
            let mut next = current.clone();
            apply(&mut next)?;
            next.version += 1;
            if self
                .store
                .swap_message(current.version, &next, true)
                .await?
            {
                return Ok(next);
            }
        }
    }
}

/// A send counted in the `sends` gauge under a state until dropped.
struct Counted {
    metrics: Metrics,
    state: &'static str,
}

impl Counted {
    fn new(metrics: &Metrics, state: &'static str) -> Self {
        metrics.sends(state, 1);
        Self {
            metrics: metrics.clone(),
            state,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.metrics.sends(self.state, -1);
    }
}

/// A rendered email, ready to seal into the outbox.
pub struct OutgoingEmail<'a> {
    /// The organisation sending it.
    pub organisation: &'a str,
    /// Sender.
    pub from: Mailbox,
    /// Recipient.
    pub to: Mailbox,
    /// Subject.
    pub subject: &'a str,
    /// Text body.
    pub text: &'a str,
    /// HTML body, when there is one.
    pub html: Option<&'a str>,
}

/// The largest message, as sent, that is queued: a notification, not a file transfer.
/// Sealed, it stays within one etcd request (1.5 MiB).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Why an email could not be made into an outbox message.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// lettre refused to build it.
    #[error(transparent)]
    Build(#[from] lettre::error::Error),
    /// It came out too large.
    #[error("the message comes to {0} bytes; at most {MAX_MESSAGE_BYTES} are queued")]
    TooLarge(usize),
}

impl OutgoingEmail<'_> {
    /// The outbox message: a fresh id and Message-ID, the content sealed.
    pub fn seal(&self, key: &MasterKey, now: SystemTime) -> Result<OutboxMessage, SealError> {
        let message_id = new_message_id(self.from.email.domain());
        let content = compose(
            self.from.clone(),
            self.to.clone(),
            self.subject,
            self.text,
            self.html,
            &message_id,
            now,
        )?;
        if content.len() > MAX_MESSAGE_BYTES {
            return Err(SealError::TooLarge(content.len()));
        }
        Ok(OutboxMessage {
            id: crypto::time_ordered_id("msg_", now),
            organisation: self.organisation.to_string(),
            from: self.from.to_string(),
            envelope_from: self.from.email.to_string(),
            to: self.to.email.to_string(),
            subject: self.subject.to_string(),
            content: Some(key.seal_bytes(CONTENT_PURPOSE, &content)),
            message_id_header: message_id,
            state: MessageState::Queued,
            attempts: 0,
            last_error: String::new(),
            last_smtp_code: 0,
            create_time: now,
            window_start: now,
            next_attempt_time: now,
            sent_time: None,
            lease: None,
            version: 0,
        })
    }
}

fn check_notification(n: &Notification) -> Violations {
    let mut v = Violations::new();
    v.check("organisation", validation::text(&n.organisation, true, 100));
    if n.subject.is_empty() {
        v.add("subject", "is required");
    }
    if n.body.is_empty() {
        v.add("body", "is required");
    }
    v.check(
        "idempotency_key",
        validation::text(&n.idempotency_key, false, 200),
    );
    v
}

fn merge(into: &mut Violations, found: Violations) {
    into.absorb(&found);
}

fn has_line_break(s: &str) -> bool {
    s.contains(['\r', '\n'])
}

/// The longest rendered header value (sender, recipient, subject), in bytes: the longest
/// line RFC 5322 allows (§2.1.1). Each is kept in the clear beside the sealed message and
/// answered by ListMessages, a thousand at a time.
pub const MAX_HEADER_BYTES: usize = 998;

/// A rendered header value: refused when it holds CR or LF (header injection), or is
/// longer than [`MAX_HEADER_BYTES`].
fn header_value(value: String) -> Result<String, String> {
    if value.len() > MAX_HEADER_BYTES {
        return Err(format!(
            "rendered to {} bytes; a header value holds at most {MAX_HEADER_BYTES}",
            value.len()
        ));
    }
    if has_line_break(&value) {
        return Err("rendered to a value with CR or LF, which would start a new header".into());
    }
    if value.chars().any(char::is_control) {
        return Err("rendered to a value with control characters".into());
    }
    Ok(value)
}

/// A rendered sender or recipient: exactly one mailbox, no line breaks.
fn mailbox(value: &str) -> Result<Mailbox, String> {
    let value = header_value(value.trim().to_string())?;
    if value.is_empty() {
        return Err("rendered to an empty address".into());
    }
    Mailbox::from_str(&value)
        .map_err(|e| format!("rendered to {value:?}, which is not one mailbox ({e})"))
}

fn user_value(user: &User, address: &Address) -> Value {
    serde_json::json!({
        "login": user.login,
        "name": user.name,
        "email": address.to_string(),
        "organisations": user.organisations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_headers_are_at_most_one_line_long() {
        let longest = "s".repeat(MAX_HEADER_BYTES);
        assert_eq!(header_value(longest.clone()), Ok(longest.clone()));
        let why = header_value(longest + "s").expect_err("too long");
        assert!(why.contains("at most 998"), "{why}");
        let address = format!("{}@example.com", "a".repeat(MAX_HEADER_BYTES));
        assert!(mailbox(&address)
            .expect_err("too long")
            .contains("at most 998"));
    }
}
