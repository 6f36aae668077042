//! Export and import ([`Snapshot`]): every read of an export at one revision, taken when it
//! starts, so that the replicas keep running and the file is one moment's; records written
//! back with plain puts in chunked transactions, tokens one at a time (each joins its
//! login's list).

use std::collections::HashSet;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
};

use super::idempotency::{apart, IDS_INLINE};
use super::keys::prefix_end;
use super::kv::*;
use super::{unavailable, EtcdStore};
use crate::notify::Idempotency;
use crate::ports::StoreError;
use crate::snapshot::{ImportLock, Keyed, Portable, Sink, Snapshot};
use crate::store::keyspace::{self, etcd_only, Encoding, Family};
use crate::store::{decode, encode, Result};
use crate::tokens::Token;

/// Entries read at once; message records (up to 1.5 MiB each) fewer at a time.
const PAGE: i64 = 64;
const MESSAGE_PAGE: i64 = 16;
/// How long an import's hold on a prefix outlives its process (its lease, kept alive while
/// it runs).
const IMPORT_HOLD_SECONDS: i64 = 6;

impl EtcdStore {
    fn import_mark_key(&self) -> String {
        keyspace::meta(self, keyspace::IMPORTING)
    }

    /// The key an import holds while it writes, under the mark's name: neither removed by
    /// [`Snapshot::remove_all`] nor a record.
    fn import_lock_key(&self) -> String {
        format!("{}/held", self.import_mark_key())
    }

    /// The store's current revision.
    async fn revision(&self) -> Result<i64> {
        let options = GetOptions::new().with_keys_only().with_limit(1);
        let response = self
            .kv
            .clone()
            .get(self.key(""), Some(options))
            .await
            .map_err(unavailable)?;
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    /// Up to `limit` entries under `prefix` after the key `after` (exclusive), at `revision`.
    async fn page_at(
        &self,
        prefix: &str,
        after: Option<&[u8]>,
        limit: i64,
        revision: i64,
    ) -> Result<Vec<KeyValue>> {
        let start = match after {
            Some(after) => [after, b"\0"].concat(),
            None => prefix.as_bytes().to_vec(),
        };
        let options = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_limit(limit)
            .with_revision(revision);
        let mut response = self
            .kv
            .clone()
            .get(start, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(response.take_kvs())
    }

    /// Every entry under `prefix` at `revision`, a page at a time, handed to `each` with
    /// its key after the prefix.
    async fn walk_at(
        &self,
        prefix: &str,
        revision: i64,
        limit: i64,
        mut each: impl FnMut(String, &KeyValue) -> Result<()>,
    ) -> Result<()> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .page_at(prefix, after.as_deref(), limit, revision)
                .await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.key().to_vec());
            for kv in &page {
                let name = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                each(name, kv)?;
            }
        }
    }

    async fn one_at(&self, key: &str, revision: i64) -> Result<Option<KeyValue>> {
        let options = GetOptions::new().with_revision(revision);
        let mut response = self
            .kv
            .clone()
            .get(key, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(response.take_kvs().into_iter().next())
    }

    /// The ids of the messages of batches staged and not committed at `revision`: requests
    /// still running or abandoned, never acknowledged.
    async fn uncommitted_at(&self, revision: i64) -> Result<HashSet<String>> {
        let mut batches = Vec::new();
        self.walk_at(&self.key(etcd_only::STAGING), revision, PAGE, |batch, _| {
            batches.push(batch);
            Ok(())
        })
        .await?;
        let mut ids = HashSet::new();
        for batch in batches {
            self.walk_at(&self.batch_prefix(&batch), revision, PAGE, |id, _| {
                ids.insert(id);
                Ok(())
            })
            .await?;
        }
        Ok(ids)
    }

    /// `record` with its ids, read at `revision` when stored apart.
    async fn with_ids_at(&self, mut record: Idempotency, revision: i64) -> Result<Idempotency> {
        let Some(batch) = apart(&record) else {
            return Ok(record);
        };
        let mut ids = Vec::new();
        self.walk_at(&self.ids_prefix(&batch), revision, PAGE, |part, kv| {
            ids.extend(decode::<Vec<String>>(&part, kv.value())?);
            Ok(())
        })
        .await?;
        record.queued.message_ids = ids;
        Ok(record)
    }

    /// Every record of `family` at `revision`, decoded, with its key after the prefix.
    async fn family_at<T: crate::store::Record + serde::de::DeserializeOwned>(
        &self,
        family: Family,
        revision: i64,
        mut each: impl FnMut(String, T) -> Result<()>,
    ) -> Result<()> {
        self.walk_at(&self.begin(family), revision, PAGE, |name, kv| {
            let record = decode(&name, kv.value())?;
            each(name, record)
        })
        .await
    }

    /// A token, joined to its login's list of ids (once), with its digest and purge entries.
    async fn restore_token(&self, token: &Token) -> Result<()> {
        let list = self.login_tokens_key(&token.login);
        let mut ids = self
            .read::<Vec<String>>(&list)
            .await?
            .map(|(ids, _)| ids)
            .unwrap_or_default();
        let mut ops = self.token_puts(token);
        if !ids.contains(&token.id) {
            ids.push(token.id.clone());
            ops.push(put(list, encode(&ids)));
        }
        self.txn(Txn::new().and_then(ops)).await?;
        Ok(())
    }
}

#[async_trait]
impl Snapshot for EtcdStore {
    async fn export(&self, sink: &mut Sink<'_>) -> Result<()> {
        let at = self.revision().await?;
        let meta = |name| keyspace::meta(self, name);
        if let Some(kv) = self.one_at(&meta(keyspace::KEY_CHECK), at).await? {
            sink(Portable::KeyCheck(decode("key_check", kv.value())?))?;
        }
        if let Some(kv) = self.one_at(&meta(keyspace::SMTP_SETTINGS), at).await? {
            sink(Portable::Settings(Box::new(decode(
                "smtp_settings",
                kv.value(),
            )?)))?;
        }
        self.family_at(keyspace::API_KEYS, at, |_, key| sink(Portable::ApiKey(key)))
            .await?;
        self.family_at(keyspace::USERS, at, |_, user| sink(Portable::User(user)))
            .await?;
        self.family_at(keyspace::EMAIL_TEMPLATES, at, |_, o| {
            sink(Portable::EmailTemplate(o))
        })
        .await?;
        self.family_at(keyspace::LOCALE_SETTINGS, at, |_, settings| {
            sink(Portable::LocaleSettings(settings))
        })
        .await?;
        // Tokens through each login's list, in the order they were issued.
        let mut after: Option<Vec<u8>> = None;
        let lists = self.begin(keyspace::LOGIN_TOKENS);
        loop {
            let page = self.page_at(&lists, after.as_deref(), PAGE, at).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key().to_vec());
            for kv in &page {
                let ids: Vec<String> = decode("login_tokens", kv.value())?;
                for id in ids {
                    if let Some(kv) = self.one_at(&self.token_key(&id), at).await? {
                        let token: Token = decode(&id, kv.value())?;
                        sink(Portable::Token(token))?;
                    }
                }
            }
        }
        self.family_at(keyspace::RATE_LIMITS, at, |key, value| {
            sink(Portable::RateWindow(Keyed { key, value }))
        })
        .await?;
        self.family_at(keyspace::QUOTA_TALLIES, at, |key, value| {
            sink(Portable::QuotaTally(Keyed { key, value }))
        })
        .await?;
        let mut records = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let keys = self.begin(keyspace::IDEMPOTENCY);
        loop {
            let page = self.page_at(&keys, after.as_deref(), PAGE, at).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key().to_vec());
            for kv in &page {
                records.push(decode::<Idempotency>("idempotency", kv.value())?);
            }
            for record in records.drain(..) {
                sink(Portable::Idempotency(self.with_ids_at(record, at).await?))?;
            }
        }
        let uncommitted = self.uncommitted_at(at).await?;
        self.walk_at(
            &self.begin(keyspace::MESSAGES),
            at,
            MESSAGE_PAGE,
            |id, kv| {
                if uncommitted.contains(&id) {
                    return Ok(());
                }
                sink(Portable::Message(decode(&id, kv.value())?))
            },
        )
        .await
    }

    async fn holds_records(&self) -> Result<bool> {
        let mark = self.import_mark_key();
        let options = GetOptions::new()
            .with_range(prefix_end(&self.prefix))
            .with_keys_only()
            .with_limit(3);
        let response = self
            .kv
            .clone()
            .get(self.prefix.as_str(), Some(options))
            .await
            .map_err(unavailable)?;
        Ok(response
            .kvs()
            .iter()
            .any(|kv| !kv.key().starts_with(mark.as_bytes())))
    }

    async fn remove_all(&self) -> Result<()> {
        // All but the mark and the import's hold (keys under the mark's name).
        let mark = self.import_mark_key();
        let txn = Txn::new().and_then([
            TxnOp::delete(
                self.prefix.as_str(),
                Some(DeleteOptions::new().with_range(mark.as_str())),
            ),
            TxnOp::delete(
                prefix_end(&mark),
                Some(DeleteOptions::new().with_range(prefix_end(&self.prefix))),
            ),
        ]);
        self.txn(txn).await?;
        Ok(())
    }

    async fn restore(&self, records: &[Portable]) -> Result<()> {
        let mut ops = Vec::new();
        let mut bootstrapped = false;
        let mut add = |key: String, value: Vec<u8>| {
            let size = key.len() + value.len();
            ops.push((put(key, value), size));
        };
        for record in records {
            match record {
                Portable::KeyCheck(check) => {
                    add(keyspace::meta(self, keyspace::KEY_CHECK), encode(check));
                }
                Portable::Settings(settings) => {
                    add(
                        keyspace::meta(self, keyspace::SMTP_SETTINGS),
                        encode(settings.as_ref()),
                    );
                }
                Portable::ApiKey(key) => {
                    bootstrapped = true;
                    add(keyspace::api_key(self, &key.id), encode(key));
                    add(
                        keyspace::api_key_digest(self, &key.secret_digest),
                        key.id.clone().into_bytes(),
                    );
                }
                Portable::User(user) => {
                    for organisation in &user.organisations {
                        add(self.member_key(organisation, &user.login), Vec::new());
                    }
                    add(keyspace::user(self, &user.login), encode(user));
                }
                Portable::Token(token) => self.restore_token(token).await?,
                Portable::EmailTemplate(o) => add(
                    keyspace::email_template(self, &o.scope, o.kind.name(), &o.locale),
                    encode(o),
                ),
                Portable::LocaleSettings(settings) => add(
                    keyspace::locale_settings(self, &settings.organisation),
                    encode(settings),
                ),
                Portable::RateWindow(window) => {
                    add(
                        keyspace::rate_limit(self, &window.key),
                        encode(&window.value),
                    );
                }
                Portable::QuotaTally(tally) => {
                    add(
                        keyspace::quota_tally(self, &tally.key),
                        encode(&tally.value),
                    );
                }
                Portable::Idempotency(record) => {
                    let stored = if record.queued.message_ids.len() > IDS_INLINE {
                        // Apart under a name of its own: the same on a rerun.
                        let batch = format!(
                            "import-{}",
                            crate::crypto::digest(&format!(
                                "{}\0{}",
                                record.organisation, record.key
                            ))
                        );
                        self.ids_apart(&batch, record).await?
                    } else {
                        record.clone()
                    };
                    add(
                        self.idempotency_key(&record.organisation, &record.key),
                        encode(&stored),
                    );
                }
                Portable::Message(message) => {
                    for index in self.index_keys(message) {
                        add(index, Vec::new());
                    }
                    add(self.message_key(&message.id), encode(message));
                }
            }
        }
        if bootstrapped {
            add(keyspace::meta(self, keyspace::BOOTSTRAPPED), b"1".to_vec());
        }
        self.write_chunked(ops).await
    }

    /// A key under a lease of [`IMPORT_HOLD_SECONDS`], created only if absent and kept
    /// alive while the import runs: a second import waits as long as a stopped import's
    /// hold takes to lapse (a rerun after a crash), then is refused while it exists.
    async fn lock_import(&self) -> Result<ImportLock> {
        let key = self.import_lock_key();
        let mut leases = self.leases.clone();
        let waited_at_most = std::time::Instant::now()
            + std::time::Duration::from_secs(IMPORT_HOLD_SECONDS as u64 + 2);
        let mut said = false;
        let lease = loop {
            // A lease a try: one granted before a wait would lapse during it.
            let lease = leases
                .grant(IMPORT_HOLD_SECONDS, None)
                .await
                .map_err(unavailable)?
                .id();
            let take = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    Vec::new(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            if self.txn(take).await?.succeeded() {
                break lease;
            }
            let _ = leases.revoke(lease).await;
            if std::time::Instant::now() > waited_at_most {
                return Err(StoreError::Unavailable(
                    "another import is writing into this etcd prefix: run this one once it \
                     has ended"
                        .into(),
                ));
            }
            if !said {
                tracing::info!(
                    "another import holds this etcd prefix: waiting for it to end, or for \
                     the hold of a stopped one to lapse"
                );
                said = true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        };
        let (mut keeper, mut answers) = leases.keep_alive(lease).await.map_err(unavailable)?;
        let keeping = tokio::spawn(async move {
            let every = std::time::Duration::from_secs(IMPORT_HOLD_SECONDS as u64 / 3);
            loop {
                tokio::time::sleep(every).await;
                if keeper.keep_alive().await.is_err() {
                    return;
                }
                match answers.message().await {
                    Ok(Some(answer)) if answer.ttl() > 0 => {}
                    _ => return,
                }
            }
        });
        Ok(ImportLock::held(keeping, async move {
            let _ = leases.revoke(lease).await;
        }))
    }

    async fn import_mark(&self) -> Result<Option<String>> {
        Ok(self
            .get(&self.import_mark_key())
            .await?
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    async fn set_import_mark(&self, mark: Option<&str>) -> Result<()> {
        let key = self.import_mark_key();
        match mark {
            Some(mark) => self.put(&key, mark.as_bytes().to_vec()).await,
            None => {
                self.txn(Txn::new().and_then([TxnOp::delete(key, None)]))
                    .await?;
                Ok(())
            }
        }
    }
}
