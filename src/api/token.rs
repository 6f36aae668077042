//! `mailroom.v1.Token`: password-reset and invitation tokens (permission manageUser).

use secrecy::ExposeSecret;
use tonic::{Request, Response, Status};

use super::convert::{self, Page};
use super::status::invalid;
use crate::proto::v1 as pb;
use crate::proto::v1::token_server::Token;
use crate::tokens::{IssueRequest, TokenService};
use crate::validation::violation;

/// The Token service.
pub struct TokenApi {
    tokens: TokenService,
}

impl TokenApi {
    /// The service over `tokens`.
    pub fn new(tokens: TokenService) -> Self {
        Self { tokens }
    }

    fn info(&self, token: crate::tokens::Token) -> pb::TokenInfo {
        let state = self.tokens.state(&token);
        convert::token_info(token, state)
    }
}

fn purpose_filter(value: i32) -> Result<Option<crate::tokens::Purpose>, Status> {
    convert::purpose_filter(value).map_err(|why| invalid(&violation("purpose", why)))
}

#[tonic::async_trait]
impl Token for TokenApi {
    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let caller = super::caller(&request)?;
        let r = request.into_inner();
        let organisation = caller.act_for(&r.organisation)?.to_string();
        let issued = self
            .tokens
            .issue(IssueRequest {
                purpose: convert::purpose(r.purpose),
                login: r.login,
                email: r.email,
                organisation,
                send_email: r.send_email,
                link_template: r.link_template,
                metadata: r.metadata.into_iter().collect(),
                locale: r.locale,
            })
            .await?;
        Ok(Response::new(pb::IssueTokenResponse {
            token: issued.secret.expose_secret().to_string(),
            message_id: issued.message_id.unwrap_or_default(),
            info: Some(self.info(issued.token)),
        }))
    }

    async fn verify_token(
        &self,
        request: Request<pb::VerifyTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let caller = super::caller(&request)?;
        let r = request.get_ref();
        let token = self
            .tokens
            .verify(&r.token, convert::purpose(r.purpose), caller.scope())
            .await?;
        Ok(Response::new(self.info(token)))
    }

    async fn consume_token(
        &self,
        request: Request<pb::ConsumeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let caller = super::caller(&request)?;
        let r = request.get_ref();
        let token = self
            .tokens
            .consume(&r.token, convert::purpose(r.purpose), caller.scope())
            .await?;
        Ok(Response::new(self.info(token)))
    }

    async fn revoke_tokens(
        &self,
        request: Request<pb::RevokeTokensRequest>,
    ) -> Result<Response<pb::RevokeTokensResponse>, Status> {
        let caller = super::caller(&request)?;
        let r = request.get_ref();
        let revoked = self
            .tokens
            .revoke(
                &r.login,
                purpose_filter(r.purpose)?,
                caller.act_for_named(&r.organisation)?,
            )
            .await?;
        Ok(Response::new(pb::RevokeTokensResponse { revoked }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = super::caller(&request)?;
        let r = request.into_inner();
        let purpose = purpose_filter(r.purpose)?;
        let page = Page::parse(r.page_size, &r.page_token).map_err(|v| invalid(&v))?;
        let tokens = self
            .tokens
            .list(
                &r.login,
                purpose,
                caller.act_for_named(&r.organisation)?,
                page.after.as_deref(),
                page.fetch(),
            )
            .await?;
        let (tokens, next_page_token) = page.finish(tokens, |t| t.id.as_str());
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.into_iter().map(|t| self.info(t)).collect(),
            next_page_token,
        }))
    }
}
