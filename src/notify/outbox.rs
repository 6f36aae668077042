//! Administering the outbox: a message, a page of them, a retry, a cancellation.

use super::{MessageState, NotifyError, NotifyService, OutboxMessage, StateError};

impl NotifyService {
    /// One message; `scope` limits it to an organisation (`None`: any).
    pub async fn get(&self, id: &str, scope: Option<&str>) -> Result<OutboxMessage, NotifyError> {
        self.outbox
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
            .outbox
            .list_messages(organisation, state, after.as_deref(), limit)
            .await?)
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
        self.wake.announce();
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

    pub(super) async fn change(
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
            if self.outbox.replace_message(current.version, &next).await? {
                return Ok(next);
            }
        }
    }
}
