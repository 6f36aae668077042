//! `mailroom.v1.ApiKeys`: callers' keys (permission managePlatform).

use secrecy::ExposeSecret;
use tonic::{Request, Response, Status};

use super::convert::Page;
use super::status::invalid;
use crate::auth::Authenticator;
use crate::proto::v1 as pb;
use crate::proto::v1::api_keys_server::ApiKeys;

/// The ApiKeys service.
pub struct ApiKeysApi {
    auth: Authenticator,
}

impl ApiKeysApi {
    /// The service over the keys `auth` checks.
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

#[tonic::async_trait]
impl ApiKeys for ApiKeysApi {
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let caller = super::caller(&request)?;
        let request = request.into_inner();
        caller.act_for(&request.organisation)?;
        let new = self
            .auth
            .create(&request.name, &request.organisation, &request.permissions)
            .await?;
        tracing::info!(new_key_id = %new.key.id, new_key_organisation = %new.key.organisation, "API key created");
        Ok(Response::new(pb::CreateApiKeyResponse {
            secret: new.secret.expose_secret().to_string(),
            key: Some(new.key.into()),
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        super::caller(&request)?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token).map_err(|v| invalid(&v))?;
        let keys = self.auth.list(page.after.as_deref(), page.fetch()).await?;
        let (keys, next_page_token) = page.finish(keys, |k| k.id.as_str());
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: keys.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = super::caller(&request)?;
        let key = self.auth.revoke(&caller, &request.into_inner().id).await?;
        tracing::info!(revoked_key_id = %key.id, "API key revoked");
        Ok(Response::new(key.into()))
    }
}
