//! API keys (tree `api_keys` by id, `api_key_digests` from secret digest to id, and the
//! `bootstrapped` flag in `meta`) and users (tree `users` by login, `user_organisations`
//! by organisation then login).

use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, Transactional};

use super::keys::{scan_after, Sled};
use super::{aborted, unavailable, SledStore};
use crate::auth::ApiKey;
use crate::auth::ApiKeyStore;
use crate::directory::User;
use crate::directory::UserStore;
use crate::store::keyspace;
use crate::store::{decode, encode, After, Result, StoreError};

pub(super) const BOOTSTRAPPED_KEY: &[u8] = keyspace::BOOTSTRAPPED.as_bytes();

#[async_trait]
impl ApiKeyStore for SledStore {
    async fn insert_api_key(&self, key: &ApiKey, only_if_first: bool) -> Result<bool> {
        let value = encode(key);
        let inserted = (&self.meta, &self.keys, &self.key_digests)
            .transaction(|(meta, keys, digests)| {
                if only_if_first && meta.get(BOOTSTRAPPED_KEY)?.is_some() {
                    return Ok(false);
                }
                meta.insert(BOOTSTRAPPED_KEY, b"1".as_slice())?;
                keys.insert(key.id.as_bytes(), value.as_slice())?;
                digests.insert(key.secret_digest.as_bytes(), key.id.as_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            })
            .map_err(aborted)?;
        if inserted {
            self.durable().await?;
        }
        Ok(inserted)
    }

    async fn api_key_by_digest(&self, digest: &str) -> Result<Option<ApiKey>> {
        let Some(id) = self.key_digests.get(digest).map_err(unavailable)? else {
            return Ok(None);
        };
        self.keys
            .get(&id)
            .map_err(unavailable)?
            .map(|bytes| decode(&String::from_utf8_lossy(&id), &bytes))
            .transpose()
    }

    async fn list_api_keys(&self, after: After<'_>, limit: usize) -> Result<Vec<ApiKey>> {
        let range = match after {
            Some(after) => self.keys.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.keys.iter(),
        };
        range
            .take(limit)
            .map(|entry| {
                let (id, bytes) = entry.map_err(unavailable)?;
                decode(&String::from_utf8_lossy(&id), &bytes)
            })
            .collect()
    }

    async fn revoke_api_key(&self, id: &str, organisation: Option<&str>) -> Result<Option<ApiKey>> {
        let revoked = self
            .keys
            .transaction(|keys| {
                let Some(bytes) = keys.get(id)? else {
                    return Ok(None);
                };
                let mut key: ApiKey =
                    decode(id, &bytes).map_err(ConflictableTransactionError::Abort)?;
                if organisation.is_some_and(|o| o != key.organisation) {
                    return Ok(None);
                }
                key.revoked = true;
                keys.insert(id.as_bytes(), encode(&key))?;
                Ok(Some(key))
            })
            .map_err(aborted)?;
        if revoked.is_some() {
            self.durable().await?;
        }
        Ok(revoked)
    }
}

#[async_trait]
impl UserStore for SledStore {
    async fn put_user(&self, user: &User) -> Result<()> {
        let value = encode(user);
        (&self.users, &self.user_organisations)
            .transaction(|(users, memberships)| {
                if let Some(old) = users.get(user.login.as_bytes())? {
                    let old: User =
                        decode(&user.login, &old).map_err(ConflictableTransactionError::Abort)?;
                    for organisation in &old.organisations {
                        memberships.remove(keyspace::member(&Sled, organisation, &user.login))?;
                    }
                }
                for organisation in &user.organisations {
                    memberships.insert(keyspace::member(&Sled, organisation, &user.login), &[])?;
                }
                users.insert(user.login.as_bytes(), value.as_slice())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(aborted)?;
        self.durable().await
    }

    async fn user(&self, login: &str) -> Result<Option<User>> {
        self.users
            .get(login.as_bytes())
            .map_err(unavailable)?
            .map(|bytes| decode(login, &bytes))
            .transpose()
    }

    async fn delete_user(&self, login: &str) -> Result<Option<User>> {
        let removed = (&self.users, &self.user_organisations)
            .transaction(|(users, memberships)| {
                let Some(old) = users.remove(login.as_bytes())? else {
                    return Ok(None);
                };
                let old: User = decode(login, &old).map_err(ConflictableTransactionError::Abort)?;
                for organisation in &old.organisations {
                    memberships.remove(keyspace::member(&Sled, organisation, login))?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(Some(old))
            })
            .map_err(aborted)?;
        if removed.is_some() {
            self.durable().await?;
        }
        Ok(removed)
    }

    async fn list_users(
        &self,
        organisation: &str,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<User>> {
        let prefix = keyspace::member(&Sled, organisation, "");
        let mut users = Vec::new();
        for entry in scan_after(&self.user_organisations, prefix.clone(), after).take(limit) {
            let (k, _) = entry.map_err(unavailable)?;
            let login = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Some(user) = self.user(&login).await? {
                users.push(user);
            }
        }
        Ok(users)
    }
}
