//! Tokens (`tokens/<id>`, `token_digests/<digest>` → id, each login's ids in
//! `login_tokens/<login>`, the purge index `token_purge/<time><id>`) and the
//! [`TokenStore`]: issue and revoke are one transaction guarded by the login's list.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use etcd_client::{Txn, TxnOp};

use super::kv::*;
use super::{contention, EtcdStore, CAS_ATTEMPTS};
use crate::store::keyspace::{self, Encoding};
use crate::store::{decode, encode, Result, TokenStore};
use crate::tokens::{Purpose, RateWindow, Token};

impl EtcdStore {
    /// The writes that store `token`: its record, its digest's entry and its purge entry
    /// (its login's list of ids apart: the caller joins it).
    pub(super) fn token_puts(&self, token: &Token) -> Vec<TxnOp> {
        vec![
            put(self.token_key(&token.id), encode(token)),
            put(
                self.token_digest_key(&token.digest),
                token.id.clone().into_bytes(),
            ),
            put(
                keyspace::token_purge(self, token.purge_time(), &token.id),
                Vec::new(),
            ),
        ]
    }

    /// The login's token ids and tokens, with the revisions read.
    pub(super) async fn login_tokens(
        &self,
        login: &str,
    ) -> Result<(Vec<String>, Option<i64>, Vec<(Token, i64)>)> {
        let key = self.login_tokens_key(login);
        let (ids, rev) = match self.read::<Vec<String>>(&key).await? {
            Some((ids, rev)) => (ids, Some(rev)),
            None => (Vec::new(), None),
        };
        let keys: Vec<String> = ids.iter().map(|id| self.token_key(id)).collect();
        let mut tokens = Vec::with_capacity(ids.len());
        for (key, kv) in keys.iter().zip(self.get_many(&keys).await?) {
            if let Some(kv) = kv {
                tokens.push((decode(key, kv.value())?, kv.mod_revision()));
            }
        }
        Ok((ids, rev, tokens))
    }

    /// Revokes, in one transaction with `extra`, the login's tokens active at `now` that
    /// `matches`; retried while they change. How many it revoked.
    pub(super) async fn revoke_where(
        &self,
        login: &str,
        now: SystemTime,
        matches: impl Fn(&Token) -> bool,
        extra: impl Fn(Vec<String>) -> Vec<TxnOp>,
    ) -> Result<u32> {
        let list = self.login_tokens_key(login);
        for _ in 0..CAS_ATTEMPTS {
            let (ids, list_rev, tokens) = self.login_tokens(login).await?;
            let mut compares = vec![unchanged(&list, list_rev)];
            let mut ops = extra(ids);
            let mut revoked = 0;
            for (mut token, rev) in tokens {
                if matches(&token) && token.revoke(now) {
                    let key = self.token_key(&token.id);
                    compares.push(unchanged(&key, Some(rev)));
                    ops.push(put(key, encode(&token)));
                    revoked += 1;
                }
            }
            if ops.is_empty() {
                return Ok(0);
            }
            if self
                .txn(Txn::new().when(compares).and_then(ops))
                .await?
                .succeeded()
            {
                return Ok(revoked);
            }
        }
        Err(contention("the login's tokens"))
    }
}

#[async_trait]
impl TokenStore for EtcdStore {
    async fn issue_token(&self, token: &Token, now: SystemTime) -> Result<u32> {
        let list = self.login_tokens_key(&token.login);
        self.revoke_where(
            &token.login,
            now,
            |t| t.purpose == token.purpose && t.organisation == token.organisation,
            |mut ids| {
                ids.push(token.id.clone());
                let mut ops = self.token_puts(token);
                ops.push(put(list.as_str(), encode(&ids)));
                ops
            },
        )
        .await
    }

    async fn token_by_digest(&self, digest: &str) -> Result<Option<Token>> {
        let Some(id) = self.get(&self.token_digest_key(digest)).await? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(id.value()).into_owned();
        Ok(self.read(&self.token_key(&id)).await?.map(|(t, _)| t))
    }

    async fn swap_token(&self, expected: u64, token: &Token) -> Result<bool> {
        let key = self.token_key(&token.id);
        for _ in 0..CAS_ATTEMPTS {
            let Some((stored, rev)) = self.read::<Token>(&key).await? else {
                return Ok(false);
            };
            if stored.version != expected {
                return Ok(false);
            }
            let txn = Txn::new()
                .when([unchanged(&key, Some(rev))])
                .and_then([put(key.as_str(), encode(token))]);
            if self.txn(txn).await?.succeeded() {
                return Ok(true);
            }
        }
        Err(contention("the token"))
    }

    async fn tokens_of(&self, login: &str) -> Result<Vec<Token>> {
        let (_, _, tokens) = self.login_tokens(login).await?;
        Ok(tokens.into_iter().map(|(t, _)| t).collect())
    }

    async fn revoke_tokens(
        &self,
        login: &str,
        purpose: Option<Purpose>,
        organisation: Option<&str>,
        now: SystemTime,
    ) -> Result<u32> {
        self.revoke_where(
            login,
            now,
            |t| {
                purpose.is_none_or(|p| t.purpose == p)
                    && organisation.is_none_or(|o| t.organisation == o)
            },
            |_| Vec::new(),
        )
        .await
    }

    async fn purge_tokens(&self, now: SystemTime, limit: usize) -> Result<u32> {
        let prefix = self.begin(keyspace::TOKEN_PURGE);
        let end = keyspace::token_purge(self, now, "");
        let due = self.range_to(&prefix, end.into_bytes(), limit).await?;
        let mut purged = 0;
        for entry in due {
            let id = String::from_utf8_lossy(&entry.key()[prefix.len() + 16..]).into_owned();
            let token_key = self.token_key(&id);
            let mut compares = vec![unchanged(&token_key, None)];
            let mut ops = vec![TxnOp::delete(entry.key(), None)];
            if let Some((token, rev)) = self.read::<Token>(&token_key).await? {
                let list = self.login_tokens_key(&token.login);
                let (mut ids, list_rev) = match self.read::<Vec<String>>(&list).await? {
                    Some((ids, rev)) => (ids, Some(rev)),
                    None => (Vec::new(), None),
                };
                ids.retain(|i| *i != id);
                compares = vec![unchanged(&token_key, Some(rev)), unchanged(&list, list_rev)];
                ops.push(TxnOp::delete(token_key.as_str(), None));
                ops.push(TxnOp::delete(self.token_digest_key(&token.digest), None));
                ops.push(if ids.is_empty() {
                    TxnOp::delete(list.as_str(), None)
                } else {
                    put(list.as_str(), encode(&ids))
                });
            }
            // A token that changed meanwhile is left for the next sweep.
            if self
                .txn(Txn::new().when(compares).and_then(ops))
                .await?
                .succeeded()
            {
                purged += 1;
            }
        }
        Ok(purged)
    }

    async fn purge_rate_limits(&self, before: SystemTime) -> Result<usize> {
        self.sweep(&self.begin(keyspace::RATE_LIMITS), |kv| {
            let window: RateWindow = decode("rate_limit", kv.value())?;
            Ok(if window.hits.iter().all(|t| *t < before) {
                Verdict::Stale { with_prefix: None }
            } else {
                Verdict::Keep
            })
        })
        .await
    }

    async fn hit_rate_limit(
        &self,
        key: &str,
        now: SystemTime,
        window: Duration,
        limit: u32,
    ) -> Result<Option<Duration>> {
        let key = keyspace::rate_limit(self, key);
        self.update_window(&key, |hits: &mut RateWindow| hits.hit(now, window, limit))
            .await
    }
}
