//! Persistence: the [`Store`] trait, one atomic operation per need of the domain, and its
//! backends, each a folder of files with one concern each: `sled/`, the embedded default
//! (group-committed flushes, each ending with a real sync of sled's files), and `etcd/`,
//! shared by replicas (the `etcd` feature). Both write the keys of one shared layout
//! (`keyspace.rs`: every family of keys and the order of its parts, written once). Backends
//! keep domain records in one encoding (`encode`, `decode`: a format byte, then postcard;
//! JSON from earlier versions), each record's earlier layouts still read (`layouts.rs`);
//! nothing backend-specific crosses this trait.
//!
//! Every write answers only once it is durable: a caller that got `Ok` never loses it to a
//! crash of this process, nor of the machine (a power cut, a kernel panic).

use std::time::SystemTime;

use async_trait::async_trait;
use serde::{de::DeserializeOwned, Serialize};

use crate::auth::ApiKey;
use crate::directory::User;
use crate::notify::{Idempotency, OutboxMessage};
use crate::settings::SmtpSettings;
use crate::tokens::{Purpose, RateWindow, Token};

#[cfg(feature = "etcd")]
pub mod etcd;
mod keyspace;
mod layouts;
pub mod sled;

pub(crate) use keyspace::{state_name, time_from_key, time_key};

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed or cannot be reached; the operation may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored record cannot be read back.
    #[error("stored record {key} is corrupt: {reason}")]
    Corrupt {
        /// Which record.
        key: String,
        /// Why.
        reason: String,
    },
}

/// A cached part of the store that another process changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// The SMTP settings.
    SmtpSettings,
    /// An API key (created or revoked).
    ApiKeys,
}

/// Result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where paging resumes: the last key returned, exclusive.
pub type After<'a> = Option<&'a str>;

/// The persistence the domain needs. Each method is atomic.
#[async_trait]
pub trait Store: TokenStore + Send + Sync + 'static {
    /// Whether only this process can use the store (sled locks its directory): then claims
    /// found at start belong to a dead process.
    fn exclusive(&self) -> bool;

    /// Changes made by other processes to what this one caches (settings, API keys);
    /// `None` when no other process can write to the store.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Changed>>;

    /// Whether what this process caches of the store (API keys) can be served now: `None`
    /// while changes by other processes might not reach [`Store::changes`] (etcd's watch not
    /// yet established, or broken); otherwise a number that differs from any earlier one
    /// whenever changes may have been missed in between, so that nothing cached before is
    /// served. A store no other process writes is always `Some(0)`.
    fn watch_epoch(&self) -> Option<u64> {
        Some(0)
    }

    /// Answers when the store is reachable (health).
    async fn ping(&self) -> Result<()>;

    /// Makes every earlier write durable (shutdown).
    async fn flush(&self) -> Result<()>;

    /// A value sealed with the master key when the store was created: proof at start that
    /// the key opens this store's secrets.
    async fn key_check(&self) -> Result<Option<crate::crypto::Sealed>>;

    /// Replaces the key check (first start, key rotation). Durable.
    async fn set_key_check(&self, sealed: &crate::crypto::Sealed) -> Result<()>;

    /// The SMTP settings, when ever saved.
    async fn smtp_settings(&self) -> Result<Option<SmtpSettings>>;

    /// Replaces the SMTP settings if their stored revision is still `expected_revision`
    /// (0: never saved). `Ok(false)` when another write came first.
    async fn swap_smtp_settings(
        &self,
        expected_revision: u64,
        settings: &SmtpSettings,
    ) -> Result<bool>;

    /// Adds an API key. With `only_if_first`, adds it only to a store that never held a key
    /// (the bootstrap key: several replicas may race to create it) and says whether it did.
    async fn insert_api_key(&self, key: &ApiKey, only_if_first: bool) -> Result<bool>;

    /// The key whose secret has this SHA-256 digest (hex).
    async fn api_key_by_digest(&self, digest: &str) -> Result<Option<ApiKey>>;

    /// Keys in id order, after `after`, at most `limit`.
    async fn list_api_keys(&self, after: After<'_>, limit: usize) -> Result<Vec<ApiKey>>;

    /// Marks a key revoked if it belongs to `organisation` (any, for `None`); the key as it
    /// now is, `None` when unknown or another organisation's.
    async fn revoke_api_key(&self, id: &str, organisation: Option<&str>) -> Result<Option<ApiKey>>;

    /// Creates or replaces a user (and its organisation memberships).
    async fn put_user(&self, user: &User) -> Result<()>;

    /// One user.
    async fn user(&self, login: &str) -> Result<Option<User>>;

    /// Removes a user; the user as it was, `None` when unknown.
    async fn delete_user(&self, login: &str) -> Result<Option<User>>;

    /// Users of an organisation in login order, after `after`, at most `limit`.
    async fn list_users(
        &self,
        organisation: &str,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<User>>;

    /// Writes `messages` as part of batch `batch`, not yet queued: invisible to delivery and
    /// to listing until [`Store::commit_batch`]. A large batch is staged in chunks (bounded
    /// memory) and still queued in one atomic write.
    async fn stage_messages(&self, batch: &str, messages: &[OutboxMessage]) -> Result<()>;

    /// Queues every message staged in `batch`, with `key` when given, in one atomic,
    /// durable write. When `key` was used before, discards the batch instead and returns the
    /// key's first use. A batch with nothing staged any more (dropped as abandoned while its
    /// request was still running) is [`batch_gone`]: nothing may be acknowledged for it.
    async fn commit_batch(
        &self,
        batch: &str,
        key: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>>;

    /// Queues `messages` (few enough to hold in memory) as batch `batch`, with `key` when
    /// given: [`Store::stage_messages`] then [`Store::commit_batch`], in one write where
    /// the backend can.
    async fn queue_messages(
        &self,
        batch: &str,
        messages: &[OutboxMessage],
        key: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>> {
        stage_and_commit(self, batch, messages, key).await
    }

    /// Forgets the messages staged in `batch` (a request that failed halfway).
    async fn discard_batch(&self, batch: &str) -> Result<()>;

    /// Settles the batches whose writer stopped halfway: forgets those staged before
    /// `before` and never committed, and finishes queuing committed ones (a store that
    /// queues a large batch in several writes after its atomic commit). On a store only
    /// this process can open, called at start with the current time: every staged batch
    /// then belongs to a dead process. How many batches.
    async fn recover_batches(&self, before: SystemTime) -> Result<usize>;

    /// On an [`exclusive`](Store::exclusive) store, at start: makes every claim stored by
    /// the process that died due at `now`, reading no record but the claimed ones (start
    /// must not read the backlog's bodies). How many. A shared store's claims come back
    /// when their leases run out: by default, none is released.
    async fn release_claims(&self, _now: SystemTime) -> Result<usize> {
        Ok(0)
    }

    /// Forgets idempotency keys first used before `before`. How many.
    async fn purge_idempotency(&self, before: SystemTime) -> Result<usize>;

    /// Forgets a message and its index entries if its stored version is still `expected`.
    /// `Ok(false)` when it changed or is gone.
    async fn remove_message(&self, expected: u64, id: &str) -> Result<bool>;

    /// The first use of an idempotency key.
    async fn idempotency(&self, organisation: &str, key: &str) -> Result<Option<Idempotency>>;

    /// One message.
    async fn message(&self, id: &str) -> Result<Option<OutboxMessage>>;

    /// Replaces a message if its stored version is still `expected_version`, keeping the
    /// due index in step with [`OutboxMessage::due_at`]. `Ok(false)` when it changed.
    /// With `durable`, answers once the write is on disk. An [`exclusive`](Store::exclusive)
    /// store may hold a claim (a swap to `SENDING` from a pending state, not `durable`) in
    /// memory only: every reader of the store sees it, and a crash forgets it, which leaves
    /// the message due again at once.
    async fn swap_message(
        &self,
        expected_version: u64,
        message: &OutboxMessage,
        durable: bool,
    ) -> Result<bool>;

    /// Messages due at `now` (pending, or with an expired lease), earliest first.
    async fn due_messages(&self, now: SystemTime, limit: usize) -> Result<Vec<OutboxMessage>>;

    /// When the earliest pending message is due.
    async fn next_due(&self) -> Result<Option<SystemTime>>;

    /// Every message in id order after `after`, at most `limit`, without their content
    /// (as [`Store::list_messages`]): the sweep walks the whole outbox, from start on, and
    /// key rotation reads each content with [`Store::message`].
    async fn all_messages(&self, after: After<'_>, limit: usize) -> Result<Vec<OutboxMessage>>;

    /// How many messages of `organisation` are pending (queued, retrying or claimed),
    /// counting no further than `at_most` (the quota: a count bounded in time).
    async fn pending_of(&self, organisation: &str, at_most: u64) -> Result<u64>;

    /// Adds `amount` to the tally `key` at `now` unless its total over `window` would pass
    /// `limit` (see [`crate::notify::Tally`]); else how long until it would fit.
    async fn tally(
        &self,
        key: &str,
        now: SystemTime,
        window: std::time::Duration,
        amount: u64,
        limit: u64,
    ) -> Result<Option<std::time::Duration>>;

    /// How many messages are pending (queued, retrying or claimed).
    async fn pending_messages(&self) -> Result<usize>;

    /// Messages of an organisation (in `state`, when given) in id order, after `after`, at
    /// most `limit`, **without their content** (`content` is `None`): a listing never
    /// needs a body, and a page of a thousand messages near the size limit held with their
    /// bodies came to 1.4 GB. sled keeps contents apart from records and reads none; etcd
    /// drops each as its record is decoded. [`Store::message`] and
    /// [`Store::due_messages`] read messages with their content: a listed message is never
    /// the base of a [`Store::swap_message`].
    async fn list_messages(
        &self,
        organisation: &str,
        state: Option<crate::notify::MessageState>,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>>;
}

/// The token operations of a [`Store`]: issue (revoking earlier ones) and consume-once are
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

/// What [`Store::commit_batch`] answers for a batch whose staged messages are gone: the
/// request failed (`UNAVAILABLE`, retried with a new batch), never an acknowledgement.
pub fn batch_gone(batch: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "batch {batch} was dropped before it was committed (staged too long ago)"
    ))
}

/// [`Store::stage_messages`] then [`Store::commit_batch`]: how any store queues a batch
/// too large for one write.
pub(crate) async fn stage_and_commit<S: Store + ?Sized>(
    store: &S,
    batch: &str,
    messages: &[OutboxMessage],
    key: Option<&Idempotency>,
) -> Result<Option<Idempotency>> {
    store.stage_messages(batch, messages).await?;
    store.commit_batch(batch, key).await
}

/// The first byte of a record in the compact encoding (postcard): the first layout of every
/// record. Records written before it are JSON, whose first byte is never a control
/// character, and are still read. postcard is not self-describing: a change to a stored
/// record's fields needs a new format byte (see [`Record`]; the test
/// `the_stored_layout_of_every_record_is_pinned` fails on such a change).
const POSTCARD: u8 = 1;

/// A record kept in a store: the format byte its current layout is written with, and how
/// the layouts earlier versions wrote are read (`layouts.rs`, where a record whose fields
/// changed keeps them). A record that never changed keeps the defaults.
pub(crate) trait Record: Serialize {
    /// The format byte this version writes the record with.
    const FORMAT: u8 = POSTCARD;

    /// The record an earlier version stored under format byte `format`, from the bytes
    /// after it; `None` when `format` is not one of this record's earlier layouts.
    fn earlier(format: u8, compact: &[u8]) -> Option<postcard::Result<Self>>
    where
        Self: Sized,
    {
        let _ = (format, compact);
        None
    }
}

impl Record for Token {}
impl Record for RateWindow {}
impl Record for crate::notify::Tally {}
impl Record for OutboxMessage {}
impl Record for Idempotency {}
impl Record for ApiKey {}
impl Record for User {}
impl Record for crate::crypto::Sealed {}
/// Lists of strings: ids, digests, index keys.
impl<S: AsRef<str> + Serialize> Record for [S] {}
impl<S: AsRef<str> + Serialize> Record for Vec<S> {}
impl<T: Record + ?Sized> Record for &T {
    const FORMAT: u8 = T::FORMAT;
}

/// Encodes a record for storage: its format byte, then postcard. Against JSON it halves
/// the stored size of a token and cuts ConsumeToken's and SendToAddresses' server CPU by
/// a fifth (docs/PERFORMANCE.md, fix 15).
pub(crate) fn encode<T: Record + ?Sized>(record: &T) -> Vec<u8> {
    postcard::to_extend(record, vec![T::FORMAT]).expect("domain records serialize")
}

/// Decodes a stored record, in its current layout, an earlier one, or JSON; `key` names it
/// in the error.
pub(crate) fn decode<T: Record + DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key.to_string(),
        reason,
    };
    if let Some((&format, compact)) = bytes.split_first() {
        let read = if format == T::FORMAT {
            Some(postcard::from_bytes(compact))
        } else {
            T::earlier(format, compact)
        };
        if let Some(read) = read {
            return read.map_err(|e| corrupt(e.to_string()));
        }
        if format.is_ascii_control() && !format.is_ascii_whitespace() {
            return Err(corrupt(format!(
                "format {format} is not a layout this version reads (written by a newer one?)"
            )));
        }
    }
    serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::crypto::Sealed;
    use crate::tokens::sample;

    fn token(now: SystemTime) -> Token {
        sample("tok_1", &"ab".repeat(32), "alice@example.com", now)
    }

    #[test]
    fn records_round_trip_in_the_compact_encoding() {
        let token = token(UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
        let bytes = encode(&token);
        assert_eq!(bytes[0], POSTCARD);
        assert_eq!(decode::<Token>("t", &bytes).unwrap(), token);
        let json = serde_json::to_vec(&token).unwrap();
        assert!(
            bytes.len() * 2 < json.len(),
            "{} bytes compact against {} in JSON",
            bytes.len(),
            json.len()
        );
    }

    #[test]
    fn records_an_earlier_version_wrote_in_json_are_read() {
        let token = token(UNIX_EPOCH);
        let json = serde_json::to_vec(&token).unwrap();
        assert_eq!(decode::<Token>("t", &json).unwrap(), token);
        let digests: Vec<String> = decode("alice", br#"["d1","d2"]"#).unwrap();
        assert_eq!(digests, ["d1", "d2"]);
    }

    #[test]
    fn a_damaged_record_is_corrupt_under_its_key() {
        let mut bytes = encode(&token(UNIX_EPOCH));
        bytes.truncate(bytes.len() / 2);
        match decode::<Token>("tokens/abc", &bytes) {
            Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, "tokens/abc"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(matches!(
            decode::<Token>("tokens/abc", b"{not json"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// Checks that `json`, read as a `T`, is stored as `hex` (and that `hex` reads back).
    fn pinned<T: Record + DeserializeOwned>(json: &str, hex: &str) {
        let record: T = serde_json::from_str(json).unwrap();
        let bytes = encode(&record);
        assert_eq!(
            hex::encode(&bytes),
            hex,
            "the stored layout of {} changed: records already stored would no longer \
             decode; give the new layout a format byte of its own and keep reading this one",
            std::any::type_name::<T>()
        );
        let read: T = decode("pinned", &bytes).unwrap();
        assert_eq!(encode(&read), bytes);
    }

    /// Checks that `hex`, stored by an earlier version, reads as `json` (read as a `T`, its
    /// fields missing there at their defaults) and is written back in `T`'s current layout.
    fn earlier<T: Record + DeserializeOwned>(json: &str, hex: &str) {
        let expected: T = serde_json::from_str(json).unwrap();
        let stored = hex::decode(hex).unwrap();
        assert_ne!(stored[0], T::FORMAT, "an earlier layout");
        let read: T = decode("pinned", &stored).unwrap_or_else(|e| {
            panic!(
                "a {} stored by an earlier version no longer reads: {e}",
                std::any::type_name::<T>()
            )
        });
        assert_eq!(encode(&read), encode(&expected));
        assert_eq!(encode(&read)[0], T::FORMAT);
    }

    /// postcard is not self-describing: a change to a stored type's fields (added, removed,
    /// reordered or retyped) leaves every record on disk unreadable (`Corrupt`). This pins
    /// the layout of every stored type, so that such a change fails here first, and checks
    /// that every earlier layout still reads (see `layouts.rs`).
    #[test]
    fn the_stored_layout_of_every_record_is_pinned() {
        pinned::<Token>(
            r#"{"id":"tok_1","digest":"abab","purpose":"Invitation","login":"alice","email":"alice@example.com","organisation":"acme","state":"Consumed","create_time":{"secs_since_epoch":1700000000,"nanos_since_epoch":5},"expire_time":{"secs_since_epoch":1700003600,"nanos_since_epoch":0},"consume_time":{"secs_since_epoch":1700003600,"nanos_since_epoch":0},"revoke_time":null,"metadata":{"case":"42"},"version":3}"#,
            "0105746f6b5f3104616261620105616c69636511616c696365406578616d706c652e636f6d0461636d650180e2cfaa060590fecfaa06000190fecfaa06000001046361736502343203",
        );
        pinned::<Vec<String>>(r#"["d1","d2"]"#, "0102026431026432");
        pinned::<RateWindow>(
            r#"{"hits":[{"secs_since_epoch":1700000000,"nanos_since_epoch":5},{"secs_since_epoch":1700003600,"nanos_since_epoch":0}]}"#,
            "010280e2cfaa060590fecfaa0600",
        );
        pinned::<OutboxMessage>(
            r#"{"id":"msg_1","organisation":"acme","from":"SOC <soc@example.com>","envelope_from":"soc@example.com","to":"b@example.com","subject":"s","content":"c2VhbGVk","message_id_header":"<1@example.com>","state":"Retrying","attempts":2,"last_error":"421 busy","last_smtp_code":421,"create_time":{"secs_since_epoch":1700000000,"nanos_since_epoch":5},"window_start":{"secs_since_epoch":1700000000,"nanos_since_epoch":5},"next_attempt_time":{"secs_since_epoch":1700003600,"nanos_since_epoch":0},"sent_time":{"secs_since_epoch":1700003600,"nanos_since_epoch":0},"lease":{"owner":"w1","until":{"secs_since_epoch":1700003600,"nanos_since_epoch":0}},"version":7}"#,
            "01056d73675f310461636d6515534f43203c736f63406578616d706c652e636f6d3e0f736f63406578616d706c652e636f6d0d62406578616d706c652e636f6d01730108633256686247566b0f3c31406578616d706c652e636f6d3e0302083432312062757379a50380e2cfaa060580e2cfaa060590fecfaa06000190fecfaa06000102773190fecfaa060007",
        );
        pinned::<Idempotency>(
            r#"{"organisation":"acme","key":"k1","queued":{"message_ids":["msg_1","msg_2"],"recipients":2},"create_time":{"secs_since_epoch":1700000000,"nanos_since_epoch":5}}"#,
            "010461636d65026b3102056d73675f31056d73675f320280e2cfaa0605",
        );
        pinned::<SmtpSettings>(
            r#"{"host":"smtp.example.com","port":587,"from":"SOC <soc@example.com>","security":"StartTls","username":"soc","password":"c2VhbGVk","tls":{"ca_certificates_pem":"pem","accept_invalid_certificates":true,"server_name":"mx.example.com","client_certificate_pem":"cert","client_key":"a2V5"},"helo_name":"mailroom","timeout":{"secs":30,"nanos":0},"reset_password_expiration":{"secs":600,"nanos":0},"invitation_expiration":{"secs":86400,"nanos":0},"link_origins":["https://thehive.example.com"],"sender_domains":["example.com"],"auth":{"mechanism":"Xoauth2","oauth2":{"provider":"Microsoft365","tenant_id":"contoso.onmicrosoft.com","token_url":"","client_id":"app-1","client_secret":"c2VjcmV0","scope":"","private_key":null,"subject":"soc@example.com"}},"revision":4,"update_time":{"secs_since_epoch":1700000000,"nanos_since_epoch":5},"updated_by":"key_1"}"#,
            "0310736d74702e6578616d706c652e636f6dcb0415534f43203c736f63406578616d706c652e636f6d3e0103736f630108633256686247566b0370656d010e6d782e6578616d706c652e636f6d0463657274010461325635086d61696c726f6f6d1e00d8040080a30500011b68747470733a2f2f746865686976652e6578616d706c652e636f6d010b6578616d706c652e636f6d03010117636f6e746f736f2e6f6e6d6963726f736f66742e636f6d00056170702d3101086332566a636d563000000f736f63406578616d706c652e636f6d0480e2cfaa0605056b65795f31",
        );
        // Format 2, as the version before auth stored it.
        earlier::<SmtpSettings>(
            r#"{"host":"smtp.example.com","port":587,"from":"SOC <soc@example.com>","security":"StartTls","username":"soc","password":"c2VhbGVk","tls":{"ca_certificates_pem":"pem","accept_invalid_certificates":true,"server_name":"mx.example.com","client_certificate_pem":"cert","client_key":"a2V5"},"helo_name":"mailroom","timeout":{"secs":30,"nanos":0},"reset_password_expiration":{"secs":600,"nanos":0},"invitation_expiration":{"secs":86400,"nanos":0},"link_origins":["https://thehive.example.com"],"sender_domains":["example.com"],"revision":4,"update_time":{"secs_since_epoch":1700000000,"nanos_since_epoch":5},"updated_by":"key_1"}"#,
            "0210736d74702e6578616d706c652e636f6dcb0415534f43203c736f63406578616d706c652e636f6d3e0103736f630108633256686247566b0370656d010e6d782e6578616d706c652e636f6d0463657274010461325635086d61696c726f6f6d1e00d8040080a30500011b68747470733a2f2f746865686976652e6578616d706c652e636f6d010b6578616d706c652e636f6d0480e2cfaa0605056b65795f31",
        );
        // Format 1, as the version before link_origins and sender_domains stored it.
        earlier::<SmtpSettings>(
            r#"{"host":"smtp.example.com","port":587,"from":"SOC <soc@example.com>","security":"StartTls","username":"soc","password":"c2VhbGVk","tls":{"ca_certificates_pem":"pem","accept_invalid_certificates":true,"server_name":"mx.example.com","client_certificate_pem":"cert","client_key":"a2V5"},"helo_name":"mailroom","timeout":{"secs":30,"nanos":0},"reset_password_expiration":{"secs":600,"nanos":0},"invitation_expiration":{"secs":86400,"nanos":0},"revision":4,"update_time":{"secs_since_epoch":1700000000,"nanos_since_epoch":5},"updated_by":"key_1"}"#,
            "0110736d74702e6578616d706c652e636f6dcb0415534f43203c736f63406578616d706c652e636f6d3e0103736f630108633256686247566b0370656d010e6d782e6578616d706c652e636f6d0463657274010461325635086d61696c726f6f6d1e00d8040080a305000480e2cfaa0605056b65795f31",
        );
        pinned::<ApiKey>(
            r#"{"id":"key_1","name":"soc","organisation":"acme","permissions":["manageUser","manageConfig"],"create_time":{"secs_since_epoch":1700000000,"nanos_since_epoch":5},"revoked":true,"secret_digest":"cdcd"}"#,
            "01056b65795f3103736f630461636d6502010280e2cfaa0605010463646364",
        );
        pinned::<User>(
            r#"{"login":"alice","name":"Alice","email":"alice@example.com","organisations":["acme","beta"],"locked":true,"create_time":{"secs_since_epoch":1700000000,"nanos_since_epoch":5},"update_time":{"secs_since_epoch":1700003600,"nanos_since_epoch":0}}"#,
            "0105616c69636505416c69636511616c696365406578616d706c652e636f6d020461636d6504626574610180e2cfaa060590fecfaa0600",
        );
        pinned::<Sealed>(r#""c2VhbGVk""#, "0108633256686247566b");
    }
}
