//! How a request's messages reach the outbox as they are rendered: a few MiB at a time
//! ([`STAGE_BYTES`]), so that the memory a request holds stays bounded however many
//! messages it makes and however large each is, then queued in one atomic write at the end.
//!
//! Each part is counted against the organisation's quotas before it is written: a request
//! past a quota stops at the part that passes it, having rendered and written at most that
//! much, and what it staged counts (it was written) even though it is then forgotten.

use crate::validation::{self, Violations};

use super::{BatchWriter, Idempotency, NotifyError, NotifyService, OutboxMessage};

/// Most violations reported for one request (a bad template over 100,000 users is one
/// mistake, not 100,000).
const MAX_VIOLATIONS: usize = 20;

/// Bytes of sealed messages held before they are written to the store as staged.
pub const STAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes one request may queue in all (sealed), however many messages it makes.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024 * 1024;

/// The messages of one request, staged as they come.
pub struct Stager<'a> {
    notify: &'a NotifyService,
    organisation: &'a str,
    /// Whether the request's messages were counted before (it knew how many it makes).
    messages_counted: bool,
    batch: Box<dyn BatchWriter + 'a>,
    held: Vec<OutboxMessage>,
    held_bytes: usize,
    total_bytes: usize,
    ids: Vec<String>,
    violations: Violations,
}

impl<'a> Stager<'a> {
    /// An empty batch `batch` of `organisation`, in `notify`'s store and counted against
    /// its quotas.
    pub fn new(notify: &'a NotifyService, organisation: &'a str, batch: &str) -> Self {
        Self {
            notify,
            organisation,
            messages_counted: false,
            batch: notify.outbox.enqueue(batch),
            held: Vec::new(),
            held_bytes: 0,
            total_bytes: 0,
            ids: Vec::new(),
            violations: Violations::new(),
        }
    }

    /// The same stager, for a request whose messages were counted before it rendered
    /// them: only their bytes are counted as they are written.
    pub fn messages_counted(mut self) -> Self {
        self.messages_counted = true;
        self
    }

    /// Counts what is held against the quotas: done before it is written.
    async fn spend_held(&self) -> Result<(), NotifyError> {
        if !self.messages_counted {
            self.notify
                .spend_messages(self.organisation, self.held.len())
                .await?;
        }
        self.notify
            .spend_bytes(self.organisation, self.held_bytes)
            .await
    }

    /// The ids of the messages taken so far.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Takes a rendered message, or why one could not be rendered: once anything was
    /// refused, messages are no longer kept, but rendering may go on to report more.
    /// Whether to go on (false once [`MAX_VIOLATIONS`] were gathered).
    pub async fn take(
        &mut self,
        rendered: Result<OutboxMessage, Violations>,
    ) -> Result<bool, NotifyError> {
        match rendered {
            Ok(message) if self.violations.is_empty() => self.push(message, "body").await?,
            Ok(_) => {}
            Err(found) => self.violations.absorb(&found),
        }
        Ok(self.violations.iter().count() < MAX_VIOLATIONS)
    }

    /// Refuses the request with what [`Stager::take`] gathered, if anything.
    pub fn check(&self) -> Result<(), NotifyError> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(NotifyError::Invalid(self.violations.clone()))
        }
    }

    /// Adds a message; writes what is held to the store (still invisible) once it reaches
    /// [`STAGE_BYTES`].
    /// Refused (on `field`) past [`MAX_REQUEST_BYTES`] in all.
    pub async fn push(&mut self, message: OutboxMessage, field: &str) -> Result<(), NotifyError> {
        let size = message.content.as_ref().map_or(0, |c| c.stored_len());
        self.total_bytes += size;
        if self.total_bytes > MAX_REQUEST_BYTES {
            return Err(NotifyError::Invalid(validation::violation(
                field,
                format!("the request comes to more than {MAX_REQUEST_BYTES} bytes of messages"),
            )));
        }
        self.ids.push(message.id.clone());
        self.held.push(message);
        self.held_bytes += size;
        if self.held_bytes >= STAGE_BYTES {
            // Refused: the caller abandons what was staged before.
            self.spend_held().await?;
            self.batch.write(&self.held).await?;
            self.held.clear();
            self.held_bytes = 0;
        }
        Ok(())
    }

    /// Queues every message pushed, with `key` when given, in one atomic, durable write
    /// (one write of the store when nothing was written yet). The key's first use when it
    /// was used before: then nothing is queued.
    pub async fn commit(
        self,
        key: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>, NotifyError> {
        if let Err(e) = self.spend_held().await {
            self.abandon().await?;
            return Err(e);
        }
        Ok(self.batch.commit(&self.held, key).await?)
    }

    /// Forgets what was written (a request that failed halfway).
    pub async fn abandon(self) -> Result<(), NotifyError> {
        Ok(self.batch.abandon().await?)
    }
}
