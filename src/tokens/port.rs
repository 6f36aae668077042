//! The tokens' port: tokens and the rate windows of their issues, kept by `store::sled`
//! and `store::etcd`; and what a directory needs of them ([`MembershipTokens`]), written
//! once over any token store.

use std::time::SystemTime;

use async_trait::async_trait;

use super::{Purpose, Token};
use crate::directory::MembershipTokens;
use crate::ports::Result;

/// The tokens and their rate windows, in a store: issue (revoking earlier ones) and consume-once are
/// atomic; each answers once durable.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Inserts `token`, first revoking the login's tokens of its purpose and organisation
    /// that are active at `now` (another organisation's are not touched), in one atomic,
    /// durable write. How many it revoked.
    async fn issue_token(&self, token: &Token, now: SystemTime) -> Result<u32>;

    /// The token whose secret has this digest.
    async fn token_by_digest(&self, digest: &str) -> Result<Option<Token>>;

    /// Replaces a token if its stored version is still `expected_version` (durable).
    async fn swap_token(&self, expected_version: u64, token: &Token) -> Result<bool>;

    /// A login's tokens, oldest first.
    async fn tokens_of(&self, login: &str) -> Result<Vec<Token>>;

    /// Revokes a login's tokens active at `now` (of `purpose`, in `organisation`, when
    /// given) in one atomic, durable write. How many.
    async fn revoke_tokens(
        &self,
        login: &str,
        purpose: Option<Purpose>,
        organisation: Option<&str>,
        now: SystemTime,
    ) -> Result<u32>;

    /// Forgets up to `limit` tokens whose [`Token::purge_time`] is past at `now`. How many.
    async fn purge_tokens(&self, now: SystemTime, limit: usize) -> Result<u32>;

    /// Forgets the rate-limit windows with no issue since `before`. How many.
    async fn purge_rate_limits(&self, before: SystemTime) -> Result<usize>;

    /// Counts one issue for `key` at `now` unless `limit` happened within `window`; else
    /// how long until the next is allowed.
    async fn hit_rate_limit(
        &self,
        key: &str,
        now: SystemTime,
        window: std::time::Duration,
        limit: u32,
    ) -> Result<Option<std::time::Duration>>;
}

/// A membership's tokens end with it: any token store revokes them for the directory.
#[async_trait]
impl<S: TokenStore + ?Sized> MembershipTokens for S {
    async fn revoke_tokens_outside(
        &self,
        login: &str,
        kept: &[String],
        now: SystemTime,
    ) -> Result<u32> {
        let mut others: Vec<String> = self
            .tokens_of(login)
            .await?
            .into_iter()
            .map(|t| t.organisation)
            .filter(|o| !kept.contains(o))
            .collect();
        others.sort();
        others.dedup();
        let mut revoked = 0;
        for organisation in others {
            revoked += self
                .revoke_tokens(login, None, Some(&organisation), now)
                .await?;
        }
        Ok(revoked)
    }
}
