//! PreviewEmail for a notification: its templates rendered as SendToAddresses renders
//! them for one recipient (the same compilation, sandbox, checks and text part), on a send
//! thread as a send is. Nothing is queued, counted against a quota or sent.

use std::time::SystemTime;

use lettre::message::Mailbox;

use super::render::{check_notification, mailbox};
use super::template::Data;
use super::{Notification, NotifyError, NotifyService};
use crate::validation;

/// A notification rendered for one recipient.
#[derive(Clone, Debug)]
pub struct NotificationPreview {
    /// Sender.
    pub from: Mailbox,
    /// Recipient.
    pub to: Mailbox,
    /// Subject.
    pub subject: String,
    /// Text part.
    pub text: String,
    /// HTML part, with the HTML format.
    pub html: Option<String>,
    /// When it was rendered (the message's date).
    pub now: SystemTime,
}

impl NotifyService {
    /// `n` rendered for the recipient `to` (a template, as one of SendToAddresses' `to`).
    pub async fn preview(
        &self,
        n: Notification,
        to: &str,
    ) -> Result<NotificationPreview, NotifyError> {
        let mut v = check_notification(&n);
        if to.is_empty() {
            v.add(
                "to",
                "is required with notification: a recipient (a template)",
            );
        }
        v.into_result(()).map_err(NotifyError::Invalid)?;
        let settings = self.configured().await?;
        let (this, organisation, to) = (self.clone(), n.organisation.clone(), to.to_string());
        self.on_send_thread(&organisation, async move {
            let fields = [("to".to_string(), to.as_str())];
            let templates = this.compile(&n, &fields)?;
            let data = Data::new(n.context.clone());
            let parts = this
                .render_parts(&n, &settings, &templates, &data)
                .map_err(NotifyError::Invalid)?;
            let to = templates
                .render("to", &data)
                .and_then(|to| mailbox(&to).map_err(|why| validation::violation("to", why)))
                .map_err(NotifyError::Invalid)?;
            Ok(NotificationPreview {
                from: parts.from,
                to,
                subject: parts.subject,
                text: parts.text,
                html: parts.html,
                now: this.clock.now(),
            })
        })
        .await
    }
}
