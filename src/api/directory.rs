//! `mailroom.v1.Directory`: the users notifications go to (permission manageUser).

use tonic::{Request, Response, Status};

use super::convert::Page;
use super::status::invalid;
use crate::directory::{canonical_login, DirectoryService};
use crate::proto::v1 as pb;
use crate::proto::v1::directory_server::Directory;
use crate::validation::violation;

/// The Directory service.
pub struct DirectoryApi {
    directory: DirectoryService,
}

impl DirectoryApi {
    /// The service over `directory`.
    pub fn new(directory: DirectoryService) -> Self {
        Self { directory }
    }
}

fn login(login: &str) -> Result<&str, Status> {
    canonical_login(login).map_err(|why| invalid(&violation("login", why)))?;
    Ok(login)
}

#[tonic::async_trait]
impl Directory for DirectoryApi {
    async fn upsert_user(
        &self,
        request: Request<pb::UpsertUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = super::caller(&request)?;
        let user = request
            .into_inner()
            .user
            .ok_or_else(|| invalid(&violation("user", "is required")))?;
        let user = self.directory.upsert(user.into(), caller.scope()).await?;
        Ok(Response::new(user.into()))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = super::caller(&request)?;
        let user = self
            .directory
            .get(login(&request.get_ref().login)?, caller.scope())
            .await?;
        Ok(Response::new(user.into()))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let caller = super::caller(&request)?;
        self.directory
            .delete(login(&request.get_ref().login)?, caller.scope())
            .await?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = super::caller(&request)?;
        let request = request.into_inner();
        let organisation = caller.act_for(&request.organisation)?;
        let page = Page::parse(request.page_size, &request.page_token).map_err(|v| invalid(&v))?;
        let users = self
            .directory
            .list(
                organisation,
                caller.scope(),
                page.after.as_deref(),
                page.fetch(),
            )
            .await?;
        let (users, next_page_token) = page.finish(users, |u| u.login.as_str());
        Ok(Response::new(pb::ListUsersResponse {
            users: users.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }
}
