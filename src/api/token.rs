//! `mailroom.v1.Token`: Password resets and invitations (permission manageUser). Its RPCs check the caller and answer
//! `UNIMPLEMENTED` until their issue lands.

use tonic::{Request, Response, Status};

use super::pending::pending;
use crate::auth::{Authenticator, Permission};
use crate::proto::v1 as pb;
use crate::proto::v1::token_server::Token;

/// The Token service.
pub struct TokenApi {
    auth: Authenticator,
}

impl TokenApi {
    /// The service, checking callers with `auth`.
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

#[tonic::async_trait]
impl Token for TokenApi {
    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageUser,
            Some(&request.get_ref().organisation),
            "IssueToken",
        )
        .await)
    }

    async fn verify_token(
        &self,
        request: Request<pb::VerifyTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageUser,
            None,
            "VerifyToken",
        )
        .await)
    }

    async fn consume_token(
        &self,
        request: Request<pb::ConsumeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageUser,
            None,
            "ConsumeToken",
        )
        .await)
    }

    async fn revoke_tokens(
        &self,
        request: Request<pb::RevokeTokensRequest>,
    ) -> Result<Response<pb::RevokeTokensResponse>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageUser,
            None,
            "RevokeTokens",
        )
        .await)
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageUser,
            None,
            "ListTokens",
        )
        .await)
    }
}
