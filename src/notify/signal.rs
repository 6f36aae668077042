//! The signal from the outbox to delivery: mail is due now (a request queued some, an
//! operator retried a message), so an idle dispatcher looks at once instead of at its next
//! due time.

/// Mail queued: announced by the notifier, awaited by delivery's dispatcher. An
/// announcement with no dispatcher waiting is kept for the next one to wait.
#[derive(Debug, Default)]
pub struct MailQueued(tokio::sync::Notify);

impl MailQueued {
    /// A signal nobody announced yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Says mail is due now.
    pub fn announce(&self) {
        self.0.notify_one();
    }

    /// Until mail is announced.
    pub async fn announced(&self) {
        self.0.notified().await;
    }
}
