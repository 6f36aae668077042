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

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lettre::message::Mailbox;
use lettre::Address;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::crypto::{self, CryptoError, MasterKey};
use crate::directory::User;
use crate::mail::template::{html_to_text, BodyFormat, Templates};
use crate::mail::{compose, new_message_id};
use crate::metrics::Metrics;
use crate::settings::{SettingsError, SettingsService, SmtpSettings};
use crate::store::{Store, StoreError};
use crate::validation::{self, Violations};

pub mod message;
mod notices;

pub use message::{Attempt, MessageState, OutboxMessage, StateError};
pub use notices::NoticeKind;

/// The purpose a message's content is sealed for.
pub const CONTENT_PURPOSE: &str = "outbox.content";
/// Most recipients of one SendToAddresses.
pub const MAX_ADDRESSES: usize = 100;
/// Most violations reported for one request (a bad template over 100,000 users is one
/// mistake, not 100,000).
const MAX_VIOLATIONS: usize = 20;
/// How long an idempotency key is remembered.
pub const KEEP_IDEMPOTENCY: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);
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

/// One message ready to render: its recipient, and the data its templates see.
pub struct Draft {
    /// A rendered address, or the template field (`to[3]`) that renders it.
    pub to: Recipient,
    /// The template data.
    pub data: Value,
}

/// Who a message goes to.
pub enum Recipient {
    /// A known address (a directory user).
    Address(Address, String),
    /// A template field rendering to one mailbox.
    Template(String),
}

/// Queues and manages notifications.
#[derive(Clone)]
pub struct NotifyService {
    store: Arc<dyn Store>,
    settings: SettingsService,
    clock: Clock,
    wake: Arc<Notify>,
    metrics: Metrics,
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
            settings,
            clock,
            wake,
            metrics,
        }
    }

    /// EmailerToAddr: one message per address of `to` (1 to 100 templates).
    pub async fn send_to_addresses(
        &self,
        n: Notification,
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
        let settings = self.configured().await?;
        let fields: Vec<(String, &str)> = to
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("to[{i}]"), t.as_str()))
            .collect();
        let templates = compile(&n, &fields)?;
        let data = Value::Object(n.context.clone());
        let drafts = fields.into_iter().map(|(field, _)| Draft {
            to: Recipient::Template(field),
            data: data.clone(),
        });
        let messages = self.render_all(&n, &settings, &templates, drafts)?;
        self.enqueue(&n, messages).await
    }

    /// EmailerToUser: one message per unlocked user of the organisation that has an
    /// address, with `user` set to that user in the templates.
    pub async fn send_to_users(&self, n: Notification) -> Result<Queued, NotifyError> {
        check_notification(&n)
            .into_result(())
            .map_err(NotifyError::Invalid)?;
        if let Some(queued) = self.seen(&n).await? {
            return Ok(queued);
        }
        let settings = self.configured().await?;
        let templates = compile(&n, &[])?;
        // Rendered a page of users at a time and staged as it goes, so that memory stays
        // bounded however large the organisation; queued all at once at the end.
        let batch = crypto::random_id("batch_");
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        let staged: Result<(), NotifyError> = async {
            loop {
                let users = self
                    .store
                    .list_users(&n.organisation, after.as_deref(), USER_PAGE)
                    .await?;
                let Some(last) = users.last() else { break };
                after = Some(last.login.clone());
                let full = users.len() == USER_PAGE;
                let drafts = users.iter().filter(|u| !u.locked).filter_map(|u| {
                    let address = u.address()?;
                    let mut data = n.context.clone();
                    data.insert("user".into(), user_value(u, &address));
                    Some(Draft {
                        to: Recipient::Address(address, u.name.clone()),
                        data: Value::Object(data),
                    })
                });
                let messages = self.render_all(&n, &settings, &templates, drafts)?;
                self.store.stage_messages(&batch, &messages).await?;
                ids.extend(messages.into_iter().map(|m| m.id));
                if !full {
                    break;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = staged {
            self.store.discard_batch(&batch).await?;
            return Err(e);
        }
        self.commit(&n, &batch, ids, None).await
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
        v.check("login", crate::directory::check_login(login));
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

    /// Queues messages built elsewhere (the token emails and account notices), durably.
    pub async fn enqueue_built(&self, messages: Vec<OutboxMessage>) -> Result<(), NotifyError> {
        let batch = crypto::random_id("batch_");
        self.store.queue_messages(&batch, &messages, None).await?;
        self.metrics.messages("queued", messages.len());
        self.wake.notify_one();
        Ok(())
    }

    /// Renders the drafts into messages, or every violation (up to a bound).
    fn render_all(
        &self,
        n: &Notification,
        settings: &SmtpSettings,
        templates: &Templates,
        drafts: impl Iterator<Item = Draft>,
    ) -> Result<Vec<OutboxMessage>, NotifyError> {
        let mut v = Violations::new();
        let mut messages = Vec::new();
        for draft in drafts {
            match self.render(n, settings, templates, &draft) {
                Ok(message) => messages.push(message),
                Err(found) => {
                    for violation in found.iter() {
                        v.add(violation.field.clone(), violation.description.clone());
                    }
                    if v.iter().count() >= MAX_VIOLATIONS {
                        break;
                    }
                }
            }
        }
        v.into_result(messages).map_err(NotifyError::Invalid)
    }

    fn render(
        &self,
        n: &Notification,
        settings: &SmtpSettings,
        templates: &Templates,
        draft: &Draft,
    ) -> Result<OutboxMessage, Violations> {
        let data = &draft.data;
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
        let to = match &draft.to {
            Recipient::Address(address, name) => {
                let name = (!name.is_empty() && !has_line_break(name)).then(|| name.clone());
                Some(Mailbox::new(name, address.clone()))
            }
            Recipient::Template(field) => templates
                .render(field, data)
                .map_err(|e| merge(&mut v, e))
                .ok()
                .and_then(|to| v.check(field, mailbox(&to))),
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
        let (Some(from), Some(to), Some(subject), Some(body)) = (from, to, subject, body) else {
            return Err(v);
        };
        let (text, html) = match n.format {
            BodyFormat::Text => (body, None),
            BodyFormat::Html => (html_to_text(&body), Some(body)),
        };
        let built = OutgoingEmail {
            organisation: &n.organisation,
            from,
            to,
            subject: &subject,
            text: &text,
            html: html.as_deref(),
        };
        built
            .seal(self.settings.master_key(), self.clock.now())
            .map_err(|e| validation::violation("body", format!("cannot build the message: {e}")))
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

    /// Queues `messages` with the notification's idempotency key.
    async fn enqueue(
        &self,
        n: &Notification,
        messages: Vec<OutboxMessage>,
    ) -> Result<Queued, NotifyError> {
        let batch = crypto::random_id("batch_");
        let ids = messages.iter().map(|m| m.id.clone()).collect();
        self.commit(n, &batch, ids, Some(&messages)).await
    }

    /// Queues the messages `ids`, given (`messages`) or staged as `batch`, with the
    /// notification's idempotency key.
    async fn commit(
        &self,
        n: &Notification,
        batch: &str,
        ids: Vec<String>,
        messages: Option<&[OutboxMessage]>,
    ) -> Result<Queued, NotifyError> {
        let queued = Queued {
            recipients: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            message_ids: ids,
            duplicate: false,
        };
        let key = (!n.idempotency_key.is_empty()).then(|| Idempotency {
            organisation: n.organisation.clone(),
            key: n.idempotency_key.clone(),
            queued: queued.clone(),
            create_time: self.clock.now(),
        });
        let first = match messages {
            Some(messages) => {
                self.store
                    .queue_messages(batch, messages, key.as_ref())
                    .await?
            }
            None => self.store.commit_batch(batch, key.as_ref()).await?,
        };
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
    /// claims found at start belong to a process that died. Returns how many.
    pub async fn release_claims(&self) -> Result<usize, NotifyError> {
        let now = self.clock.now();
        let far = now + std::time::Duration::from_secs(100 * 365 * 86_400);
        let claimed: Vec<OutboxMessage> = self
            .store
            .due_messages(far, usize::MAX)
            .await?
            .into_iter()
            .filter(|m| m.state == MessageState::Sending)
            .collect();
        let mut released = 0;
        for message in claimed {
            let mut next = message.clone();
            next.release(now);
            next.version += 1;
            if self
                .store
                .swap_message(message.version, &next, false)
                .await?
            {
                released += 1;
            }
        }
        Ok(released)
    }

    /// Seals every message's content again with the master key's sealing key (after a
    /// rotation). How many.
    pub async fn reseal(&self) -> Result<usize, NotifyError> {
        let key = self.settings.master_key();
        let (mut after, mut count) = (None, 0);
        loop {
            let page = self.next_page(&mut after).await?;
            if page.is_empty() {
                break;
            }
            for message in page {
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
        }
        self.store.flush().await?;
        Ok(count)
    }

    /// Requeues a DEAD message.
    pub async fn retry(&self, id: &str, scope: Option<&str>) -> Result<OutboxMessage, NotifyError> {
        let now = self.clock.now();
        let message = self.change(id, scope, |m| m.requeue(now)).await?;
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

fn compile(n: &Notification, recipients: &[(String, &str)]) -> Result<Arc<Templates>, NotifyError> {
    let mut fields: Vec<(&str, &str)> = vec![("subject", &n.subject), ("body", &n.body)];
    if !n.from.is_empty() {
        fields.push(("from", &n.from));
    }
    fields.extend(recipients.iter().map(|(f, t)| (f.as_str(), *t)));
    Templates::compile(&fields, n.format).map_err(NotifyError::Invalid)
}

fn merge(into: &mut Violations, found: Violations) {
    for v in found.iter() {
        into.add(v.field.clone(), v.description.clone());
    }
}

fn has_line_break(s: &str) -> bool {
    s.contains(['\r', '\n'])
}

/// A rendered header value: refused when it holds CR or LF (header injection).
fn header_value(value: String) -> Result<String, String> {
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
