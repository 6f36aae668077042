//! `mailroom.v1.Notifier`: notification email and the outbox (permission manageConfig;
//! account notices manageUser).

use tonic::{Request, Response, Status};

use super::convert::{self, Page};
use super::status::invalid;
use crate::notify::BodyFormat;
use crate::notify::{Notification, NotifyService, Queued};
use crate::proto::v1 as pb;
use crate::proto::v1::notifier_server::Notifier;
use crate::validation::{violation, Violations};

/// The Notifier service.
pub struct NotifierApi {
    notify: NotifyService,
}

impl NotifierApi {
    /// The service over `notify`.
    pub fn new(notify: NotifyService) -> Self {
        Self { notify }
    }
}

fn format(value: i32) -> Result<BodyFormat, Status> {
    convert::body_format(value)
        .ok_or_else(|| invalid(&violation("format", "is not a known BodyFormat value")))
}

/// What both notifiers' requests share, as they come.
struct Shared {
    from: String,
    subject: String,
    body: String,
    format: i32,
    context: Option<prost_types::Struct>,
    idempotency_key: String,
}

fn notification(organisation: String, shared: Shared) -> Result<Notification, Status> {
    Ok(Notification {
        organisation,
        from: shared.from,
        subject: shared.subject,
        body: shared.body,
        format: format(shared.format)?,
        context: convert::json_object(shared.context),
        idempotency_key: shared.idempotency_key,
    })
}

fn message_id(id: &str) -> Result<&str, Status> {
    if id.is_empty() {
        return Err(invalid(&violation("id", "is required")));
    }
    Ok(id)
}

impl From<Queued> for pb::SendResponse {
    fn from(q: Queued) -> Self {
        pb::SendResponse {
            message_ids: q.message_ids,
            recipients: q.recipients,
            duplicate: q.duplicate,
        }
    }
}

#[tonic::async_trait]
impl Notifier for NotifierApi {
    async fn send_to_addresses(
        &self,
        request: Request<pb::SendToAddressesRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let caller = super::caller(&request)?;
        let r = request.into_inner();
        let organisation = caller.act_for(&r.organisation)?.to_string();
        let shared = Shared {
            from: r.from,
            subject: r.subject,
            body: r.body,
            format: r.format,
            context: r.context,
            idempotency_key: r.idempotency_key,
        };
        let notification = notification(organisation, shared)?;
        let queued = self.notify.send_to_addresses(notification, r.to).await?;
        tracing::info!(
            recipients = queued.recipients,
            duplicate = queued.duplicate,
            "queued to addresses"
        );
        Ok(Response::new(queued.into()))
    }

    async fn send_to_users(
        &self,
        request: Request<pb::SendToUsersRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let caller = super::caller(&request)?;
        let r = request.into_inner();
        let organisation = caller.act_for(&r.organisation)?.to_string();
        let shared = Shared {
            from: r.from,
            subject: r.subject,
            body: r.body,
            format: r.format,
            context: r.context,
            idempotency_key: r.idempotency_key,
        };
        let queued = self
            .notify
            .send_to_users(notification(organisation, shared)?)
            .await?;
        tracing::info!(
            recipients = queued.recipients,
            duplicate = queued.duplicate,
            "queued to users"
        );
        Ok(Response::new(queued.into()))
    }

    async fn send_account_notice(
        &self,
        request: Request<pb::SendAccountNoticeRequest>,
    ) -> Result<Response<pb::SendAccountNoticeResponse>, Status> {
        let caller = super::caller(&request)?;
        let r = request.into_inner();
        let organisation = caller.act_for(&r.organisation)?;
        let message_ids = self
            .notify
            .send_account_notice(
                convert::notice_kind(r.kind),
                &r.login,
                organisation,
                &r.previous_email,
            )
            .await?;
        tracing::info!(messages = message_ids.len(), "account notice queued");
        Ok(Response::new(pb::SendAccountNoticeResponse { message_ids }))
    }

    async fn get_message(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = super::caller(&request)?;
        let message = self
            .notify
            .get(message_id(&request.get_ref().id)?, caller.scope())
            .await?;
        Ok(Response::new(message.into()))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let caller = super::caller(&request)?;
        let r = request.into_inner();
        let organisation = caller.act_for(&r.organisation)?;
        let mut v = Violations::new();
        let page = v.check(
            "page",
            Page::parse(r.page_size, &r.page_token).map_err(|e| e.to_string()),
        );
        let state = v.check("state", convert::state_filter(r.state));
        let (Some(page), Some(state)) = (page, state) else {
            return Err(invalid(&v));
        };
        let messages = self
            .notify
            .list(organisation, state, page.after.clone(), page.fetch())
            .await?;
        let (messages, next_page_token) = page.finish(messages, |m| m.id.as_str());
        Ok(Response::new(pb::ListMessagesResponse {
            messages: messages.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn retry_message(
        &self,
        request: Request<pb::RetryMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = super::caller(&request)?;
        let message = self
            .notify
            .retry(message_id(&request.get_ref().id)?, caller.scope())
            .await?;
        tracing::info!(message = %message.id, "message requeued");
        Ok(Response::new(message.into()))
    }

    async fn cancel_message(
        &self,
        request: Request<pb::CancelMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = super::caller(&request)?;
        let message = self
            .notify
            .cancel(message_id(&request.get_ref().id)?, caller.scope())
            .await?;
        tracing::info!(message = %message.id, "message cancelled");
        Ok(Response::new(message.into()))
    }
}
