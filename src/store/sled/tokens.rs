//! Tokens: by digest (tree `tokens_by_digest`), each login's digests in a list
//! (`login_token_digests`), and the purge index by time (`token_purge_by_digest`); the
//! rate-limit windows of issues (`rate_limits`). Writes are plain, under the login's lock,
//! in an order a crash may cut anywhere.

use std::time::SystemTime;

use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, Transactional};

use super::keys::{purge_key, Sled};
use super::{aborted, unavailable, SledStore};
use crate::store::{decode, encode, keyspace, Result, StoreError, TokenStore};
use crate::tokens::{Purpose, RateWindow, Token};

#[async_trait]
impl TokenStore for SledStore {
    /// Plain writes under the login's lock, in an order a crash may cut anywhere: the
    /// purge entry first, the revocations, the login's list, and last the token, which
    /// makes it usable. A cut leaves nothing usable of a request that never answered: a
    /// purge entry, purged in its time, and a digest in the login's list, which readers
    /// skip and the login's next issue drops.
    async fn issue_token(&self, token: &Token, now: SystemTime) -> Result<u32> {
        let revoked = {
            let _login = self.lock(&token.login);
            self.token_purge
                .insert(purge_key(token), &[])
                .map_err(unavailable)?;
            let (mut digests, revoked) = self.revoke_where(&token.login, now, |t| {
                t.purpose == token.purpose && t.organisation == token.organisation
            })?;
            digests.push(token.digest.clone());
            self.login_tokens
                .insert(token.login.as_bytes(), encode(&digests))
                .map_err(unavailable)?;
            self.tokens
                .insert(token.digest.as_bytes(), encode(token))
                .map_err(unavailable)?;
            revoked
        };
        self.durable().await?;
        Ok(revoked)
    }

    async fn token_by_digest(&self, digest: &str) -> Result<Option<Token>> {
        self.token(digest)
    }

    /// A plain write under the login's lock (issue, revoke and purge take it around
    /// their transactions): a sled transaction would write and sync a log buffer of its
    /// own before the group commit's flush.
    async fn swap_token(&self, expected: u64, token: &Token) -> Result<bool> {
        {
            let _login = self.lock(&token.login);
            let Some(stored) = self.token(&token.digest)? else {
                return Ok(false);
            };
            if stored.version != expected {
                return Ok(false);
            }
            self.tokens
                .insert(token.digest.as_bytes(), encode(token))
                .map_err(unavailable)?;
        }
        self.durable().await?;
        Ok(true)
    }

    async fn tokens_of(&self, login: &str) -> Result<Vec<Token>> {
        let mut tokens = Vec::new();
        for digest in self.digests_of(login)? {
            if let Some(token) = self.token(&digest)? {
                tokens.push(token);
            }
        }
        Ok(tokens)
    }

    async fn revoke_tokens(
        &self,
        login: &str,
        purpose: Option<Purpose>,
        organisation: Option<&str>,
        now: SystemTime,
    ) -> Result<u32> {
        let (_, revoked) = {
            let _login = self.lock(login);
            self.revoke_where(login, now, |t| {
                purpose.is_none_or(|p| t.purpose == p)
                    && organisation.is_none_or(|o| t.organisation == o)
            })?
        };
        if revoked > 0 {
            self.durable().await?;
        }
        Ok(revoked)
    }

    async fn purge_tokens(&self, now: SystemTime, limit: usize) -> Result<u32> {
        let end = keyspace::token_purge(&Sled, now, "");
        let due: Vec<sled::IVec> = self
            .token_purge
            .range(..end.as_slice())
            .take(limit)
            .map(|entry| entry.map(|(k, _)| k).map_err(unavailable))
            .collect::<Result<_>>()?;
        let mut purged = 0;
        for key in due {
            let digest = String::from_utf8_lossy(&key[8..]).into_owned();
            let login = self.token(&digest)?.map(|t| t.login).unwrap_or_default();
            let _login = self.lock(&login);
            (&self.tokens, &self.login_tokens, &self.token_purge)
                .transaction(|(tokens, login_tokens, purge)| {
                    purge.remove(&key)?;
                    let Some(bytes) = tokens.remove(digest.as_bytes())? else {
                        return Ok(());
                    };
                    let token: Token =
                        decode(&digest, &bytes).map_err(ConflictableTransactionError::Abort)?;
                    if let Some(list) = login_tokens.get(token.login.as_bytes())? {
                        let mut digests: Vec<String> = decode(&token.login, &list)
                            .map_err(ConflictableTransactionError::Abort)?;
                        digests.retain(|d| *d != digest);
                        if digests.is_empty() {
                            login_tokens.remove(token.login.as_bytes())?;
                        } else {
                            login_tokens.insert(token.login.as_bytes(), encode(&digests))?;
                        }
                    }
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                })
                .map_err(aborted)?;
            purged += 1;
        }
        if purged > 0 {
            self.durable().await?;
        }
        Ok(purged)
    }

    async fn purge_rate_limits(&self, before: SystemTime) -> Result<usize> {
        let idle = |bytes: &[u8]| -> Result<bool> {
            let window: RateWindow = decode("rate_limit", bytes)?;
            Ok(window.hits.iter().all(|t| *t < before))
        };
        let mut count = 0;
        for entry in self.rate_limits.iter() {
            let (k, bytes) = entry.map_err(unavailable)?;
            if !idle(&bytes)? {
                continue;
            }
            // Checked again under the key's lock: a hit may have come meanwhile.
            let _key = self.lock(&String::from_utf8_lossy(&k));
            if let Some(bytes) = self.rate_limits.get(&k).map_err(unavailable)? {
                if idle(&bytes)? {
                    self.rate_limits.remove(&k).map_err(unavailable)?;
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    async fn hit_rate_limit(
        &self,
        key: &str,
        now: SystemTime,
        window: std::time::Duration,
        limit: u32,
    ) -> Result<Option<std::time::Duration>> {
        self.update_window(&self.rate_limits, key, |hits: &mut RateWindow| {
            hits.hit(now, window, limit)
        })
    }
}

impl SledStore {
    /// The token stored under `digest`.
    pub(super) fn token(&self, digest: &str) -> Result<Option<Token>> {
        self.tokens
            .get(digest.as_bytes())
            .map_err(unavailable)?
            .map(|bytes| decode(digest, &bytes))
            .transpose()
    }

    /// The digests in the login's list (some may be of tokens a crash left unwritten).
    pub(super) fn digests_of(&self, login: &str) -> Result<Vec<String>> {
        match self
            .login_tokens
            .get(login.as_bytes())
            .map_err(unavailable)?
        {
            Some(bytes) => decode(login, &bytes),
            None => Ok(Vec::new()),
        }
    }

    /// Revokes the login's tokens active at `now` that `matches`, with plain writes: the
    /// caller holds the login's lock. The digests of the login's tokens that exist, and
    /// how many it revoked.
    pub(super) fn revoke_where(
        &self,
        login: &str,
        now: SystemTime,
        matches: impl Fn(&Token) -> bool,
    ) -> Result<(Vec<String>, u32)> {
        let mut existing = Vec::new();
        let mut revoked = 0;
        for digest in self.digests_of(login)? {
            let Some(mut token) = self.token(&digest)? else {
                continue;
            };
            if matches(&token) && token.revoke(now) {
                self.tokens
                    .insert(digest.as_bytes(), encode(&token))
                    .map_err(unavailable)?;
                revoked += 1;
            }
            existing.push(digest);
        }
        Ok((existing, revoked))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::tokens::sample as token_sample;

    /// A crash cut an issue after the login's list and before the token: the digest in
    /// the list leads nowhere; readers skip it and the login's next issue drops it.
    #[tokio::test]
    async fn a_digest_a_crash_left_in_a_login_s_list_is_skipped_then_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        store
            .login_tokens
            .insert("bob", encode(&vec!["never-written"]))
            .unwrap();
        assert!(store.tokens_of("bob").await.unwrap().is_empty());
        store
            .issue_token(&token_sample("tok_b", "db", "bob", now), now)
            .await
            .unwrap();
        assert_eq!(store.digests_of("bob").unwrap(), ["db"]);
        store.close().await.unwrap();
    }
}
