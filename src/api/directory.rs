//! `mailroom.v1.Directory`: The users notifications go to (permission manageUser). Its RPCs check the caller and answer
//! `UNIMPLEMENTED` until their issue lands.

use tonic::{Request, Response, Status};

use super::pending::pending;
use crate::auth::{Authenticator, Permission};
use crate::proto::v1 as pb;
use crate::proto::v1::directory_server::Directory;

/// The Directory service.
pub struct DirectoryApi {
    auth: Authenticator,
}

impl DirectoryApi {
    /// The service, checking callers with `auth`.
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

#[tonic::async_trait]
impl Directory for DirectoryApi {
    async fn upsert_user(
        &self,
        request: Request<pb::UpsertUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageUser,
            None,
            "UpsertUser",
        )
        .await)
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageUser,
            None,
            "GetUser",
        )
        .await)
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageUser,
            None,
            "DeleteUser",
        )
        .await)
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let metadata = request.metadata();
        Err(pending(
            &self.auth,
            metadata,
            Permission::ManageUser,
            Some(&request.get_ref().organisation),
            "ListUsers",
        )
        .await)
    }
}
