//! `mailroom.v1.Notifier`: Notification email and the outbox (permission manageConfig; account notices manageUser). Its RPCs check the caller and answer
//! `UNIMPLEMENTED` until their issue lands.

use tonic::{Request, Response, Status};

use super::pending::pending;
use crate::auth::{Authenticator, Permission};
use crate::proto::v1 as pb;
use crate::proto::v1::notifier_server::Notifier;

/// The Notifier service.
pub struct NotifierApi {
    auth: Authenticator,
}

impl NotifierApi {
    /// The service, checking callers with `auth`.
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

#[tonic::async_trait]
impl Notifier for NotifierApi {
    async fn send_to_addresses(
        &self,
        request: Request<pb::SendToAddressesRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageConfig,
            Some(&request.get_ref().organisation),
            "SendToAddresses",
        )
        .await)
    }

    async fn send_to_users(
        &self,
        request: Request<pb::SendToUsersRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageConfig,
            Some(&request.get_ref().organisation),
            "SendToUsers",
        )
        .await)
    }

    async fn send_account_notice(
        &self,
        request: Request<pb::SendAccountNoticeRequest>,
    ) -> Result<Response<pb::SendAccountNoticeResponse>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageUser,
            Some(&request.get_ref().organisation),
            "SendAccountNotice",
        )
        .await)
    }

    async fn get_message(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageConfig,
            None,
            "GetMessage",
        )
        .await)
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageConfig,
            Some(&request.get_ref().organisation),
            "ListMessages",
        )
        .await)
    }

    async fn retry_message(
        &self,
        request: Request<pb::RetryMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageConfig,
            None,
            "RetryMessage",
        )
        .await)
    }

    async fn cancel_message(
        &self,
        request: Request<pb::CancelMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageConfig,
            None,
            "CancelMessage",
        )
        .await)
    }
}
