//! The sends: EmailerToAddr ([`NotifyService::send_to_addresses`]) and EmailerToUser
//! ([`NotifyService::send_to_users`]), each on a thread of its own, rendered and staged as
//! a stream and queued at the end with its idempotency key; and the queuing of messages
//! built elsewhere (token emails, account notices).

use std::future::Future;
use std::sync::Arc;

use lettre::message::Mailbox;
use tokio::sync::OwnedSemaphorePermit;

use super::render::{check_notification, has_line_break, mailbox, user_value};
use super::stage::Stager;
use super::template::Data;
use super::{
    Idempotency, Notification, NotifyError, NotifyService, OutboxMessage, Queued, MAX_ADDRESSES,
    USER_PAGE,
};
use crate::crypto;
use crate::settings::SmtpSettings;
use crate::validation;

impl NotifyService {
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

    /// Runs a send of `organisation` on a render thread ([`RenderThreads::run`](super::RenderThreads::run)).
    pub(super) async fn on_send_thread<T: Send + 'static>(
        &self,
        organisation: &str,
        send: impl Future<Output = Result<T, NotifyError>> + Send + 'static,
    ) -> Result<T, NotifyError> {
        self.threads.run(organisation, send).await?
    }

    pub(super) async fn queue_to_addresses(
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
        let turn = self.render_turn(&n.organisation).await?;
        let templates = self.compile(&n, &fields)?;
        drop(turn);
        // One message per recipient: counted before anything is rendered.
        self.spend_messages(&n.organisation, to.len()).await?;
        // Every recipient sees the same data: all but `to` renders once.
        let data = Data::new(std::mem::take(&mut n.context));
        let mut stager =
            Stager::new(self, &n.organisation, &crypto::random_id("batch_")).messages_counted();
        let staged = async {
            let turn = self.render_turn(&n.organisation).await?;
            let parts = self.render_parts(&n, &settings, &templates, &data);
            drop(turn);
            let parts = match parts {
                Ok(parts) => Some(parts),
                Err(found) => {
                    stager.take(Err(found)).await?;
                    None
                }
            };
            for (field, _) in &fields {
                let turn = self.render_turn(&n.organisation).await?;
                let to = templates
                    .render(field, &data)
                    .and_then(|to| mailbox(&to).map_err(|why| validation::violation(field, why)));
                let message = match (&parts, to) {
                    (Some(parts), Ok(to)) => self.build(&n, parts, to),
                    (_, Err(found)) => Err(found),
                    (None, Ok(_)) => continue,
                };
                drop(turn);
                if !stager.take(message).await? {
                    break;
                }
            }
            stager.check()
        }
        .await;
        self.finish(&n, stager, staged).await
    }

    pub(super) async fn queue_to_users(&self, mut n: Notification) -> Result<Queued, NotifyError> {
        check_notification(&n)
            .into_result(())
            .map_err(NotifyError::Invalid)?;
        if let Some(queued) = self.seen(&n).await? {
            return Ok(queued);
        }
        self.check_pending(&n.organisation, 1).await?;
        let settings = self.configured().await?;
        let turn = self.render_turn(&n.organisation).await?;
        let templates = self.compile(&n, &[])?;
        drop(turn);
        // Users are read a page at a time and each message staged as it is rendered, so
        // that memory stays bounded however large the organisation; all are queued at once
        // at the end.
        let mut stager = Stager::new(self, &n.organisation, &crypto::random_id("batch_"));
        // The context is made once; only `user` changes from one recipient to the next.
        let mut data = Data::new(std::mem::take(&mut n.context));
        let staged = async {
            let mut after: Option<String> = None;
            'pages: loop {
                let users = self
                    .users
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
                    let turn = self.render_turn(&n.organisation).await?;
                    let message = self
                        .render_parts(&n, &settings, &templates, &data)
                        .and_then(|parts| {
                            let name = (!user.name.is_empty() && !has_line_break(&user.name))
                                .then(|| user.name.clone());
                            self.build(&n, &parts, Mailbox::new(name, address))
                        });
                    drop(turn);
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

    /// A turn of `organisation` to render ([`RenderThreads::turn`](super::RenderThreads::turn)): taken for each
    /// message's rendering and sealing, not while it is written.
    async fn render_turn(&self, organisation: &str) -> Result<OwnedSemaphorePermit, NotifyError> {
        Ok(self.threads.turn(organisation).await?)
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
        self.outbox.enqueue(&batch).commit(&messages, None).await?;
        self.metrics.messages("queued", messages.len());
        self.wake.announce();
        Ok(())
    }

    /// The first use of the notification's key, once durable.
    pub(super) async fn seen(&self, n: &Notification) -> Result<Option<Queued>, NotifyError> {
        if n.idempotency_key.is_empty() {
            return Ok(None);
        }
        let Some(first) = self
            .outbox
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
    pub(super) async fn replay(&self, first: Idempotency) -> Result<Queued, NotifyError> {
        self.outbox.flush().await?;
        Ok(Queued {
            duplicate: true,
            ..first.queued
        })
    }

    pub(super) async fn configured(&self) -> Result<Arc<SmtpSettings>, NotifyError> {
        self.settings.get().await?.ok_or(NotifyError::NotConfigured)
    }

    /// Ends a request whose messages went to `stager`: queues them with the notification's
    /// idempotency key when `staged` went well (or answers the key's first use), else
    /// forgets what was staged and answers why.
    pub(super) async fn finish(
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
        self.wake.announce();
        Ok(queued)
    }
}
