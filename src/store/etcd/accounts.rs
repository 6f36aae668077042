//! API keys (`keys/<id>`, `key_digests/<digest>` → id, `meta/bootstrapped`) and users
//! (`users/<login>`, `members/<organisation>\0<login>`).

use async_trait::async_trait;
use etcd_client::{Txn, TxnOp};

use super::kv::*;
use super::{contention, EtcdStore, CAS_ATTEMPTS};
use crate::auth::ApiKey;
use crate::auth::ApiKeyStore;
use crate::directory::User;
use crate::directory::UserStore;
use crate::store::keyspace::Encoding;
use crate::store::{decode, encode, After, Result};

#[async_trait]
impl ApiKeyStore for EtcdStore {
    async fn insert_api_key(&self, key: &ApiKey, only_if_first: bool) -> Result<bool> {
        let bootstrapped = crate::store::keyspace::meta(self, crate::store::keyspace::BOOTSTRAPPED);
        let compares = if only_if_first {
            vec![unchanged(&bootstrapped, None)]
        } else {
            Vec::new()
        };
        let txn = Txn::new().when(compares).and_then([
            put(bootstrapped, b"1".to_vec()),
            put(crate::store::keyspace::api_key(self, &key.id), encode(key)),
            put(
                crate::store::keyspace::api_key_digest(self, &key.secret_digest),
                key.id.clone().into_bytes(),
            ),
        ]);
        Ok(self.txn(txn).await?.succeeded())
    }

    async fn api_key_by_digest(&self, digest: &str) -> Result<Option<ApiKey>> {
        let Some(id) = self
            .get(&crate::store::keyspace::api_key_digest(self, digest))
            .await?
        else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(id.value()).into_owned();
        Ok(self
            .read(&crate::store::keyspace::api_key(self, &id))
            .await?
            .map(|(k, _)| k))
    }

    async fn list_api_keys(&self, after: After<'_>, limit: usize) -> Result<Vec<ApiKey>> {
        self.range(&self.begin(crate::store::keyspace::API_KEYS), after, limit)
            .await?
            .iter()
            .map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value()))
            .collect()
    }

    async fn revoke_api_key(&self, id: &str, organisation: Option<&str>) -> Result<Option<ApiKey>> {
        let key = crate::store::keyspace::api_key(self, id);
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut api_key, rev)) = self.read::<ApiKey>(&key).await? else {
                return Ok(None);
            };
            // A key's organisation never changes: checked once read.
            if organisation.is_some_and(|o| o != api_key.organisation) {
                return Ok(None);
            }
            api_key.revoked = true;
            let txn = Txn::new()
                .when([unchanged(&key, Some(rev))])
                .and_then([put(key.as_str(), encode(&api_key))]);
            if self.txn(txn).await?.succeeded() {
                return Ok(Some(api_key));
            }
        }
        Err(contention("the API key"))
    }
}

#[async_trait]
impl UserStore for EtcdStore {
    async fn put_user(&self, user: &User) -> Result<()> {
        let key = crate::store::keyspace::user(self, &user.login);
        for _ in 0..CAS_ATTEMPTS {
            let old = self.read::<User>(&key).await?;
            // One operation per key: etcd refuses a transaction that names a key twice.
            let before: &[String] = old.as_ref().map_or(&[], |(u, _)| &u.organisations);
            let mut ops: Vec<TxnOp> = before
                .iter()
                .filter(|o| !user.organisations.contains(o))
                .map(|o| TxnOp::delete(self.member_key(o, &user.login), None))
                .collect();
            for organisation in &user.organisations {
                ops.push(put(self.member_key(organisation, &user.login), Vec::new()));
            }
            ops.push(put(key.as_str(), encode(user)));
            let txn = Txn::new()
                .when([unchanged(&key, old.map(|(_, rev)| rev))])
                .and_then(ops);
            if self.txn(txn).await?.succeeded() {
                return Ok(());
            }
        }
        Err(contention("the user"))
    }

    async fn user(&self, login: &str) -> Result<Option<User>> {
        Ok(self
            .read(&crate::store::keyspace::user(self, login))
            .await?
            .map(|(u, _)| u))
    }

    async fn delete_user(&self, login: &str) -> Result<Option<User>> {
        let key = crate::store::keyspace::user(self, login);
        for _ in 0..CAS_ATTEMPTS {
            let Some((old, rev)) = self.read::<User>(&key).await? else {
                return Ok(None);
            };
            let mut ops: Vec<TxnOp> = old
                .organisations
                .iter()
                .map(|organisation| TxnOp::delete(self.member_key(organisation, login), None))
                .collect();
            ops.push(TxnOp::delete(key.as_str(), None));
            let txn = Txn::new().when([unchanged(&key, Some(rev))]).and_then(ops);
            if self.txn(txn).await?.succeeded() {
                return Ok(Some(old));
            }
        }
        Err(contention("the user"))
    }

    async fn list_users(
        &self,
        organisation: &str,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<User>> {
        let prefix = self.member_key(organisation, "");
        let members = self.range(&prefix, after, limit).await?;
        let users = self
            .records_of(&members, prefix.len(), |login| {
                crate::store::keyspace::user(self, login)
            })
            .await?;
        Ok(users.into_iter().map(|(u, _)| u).collect())
    }
}
