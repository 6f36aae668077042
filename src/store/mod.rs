//! Persistence: the domain's ports (`settings::SettingsStore`, `auth::ApiKeyStore`,
//! `directory::UserStore`, `tokens::TokenStore`, `notify::OutboxStore`, each defined next to
//! its records), implemented here by two backends, and [`Store`], all of them over one
//! backend for the wiring. This module imports the domain's records and ports and
//! `crate::ports` (errors, paging, [`Backend`]); no domain module imports it. The backends, each a folder of files with one concern each: `sled/`, the embedded default
//! (group-committed flushes, each ending with a real sync of sled's files), and `etcd/`,
//! shared by replicas (the `etcd` feature). Both write the keys of one shared layout
//! (`keyspace.rs`: every family of keys and the order of its parts, written once). Backends
//! keep domain records in one encoding (`encode`, `decode`: a format byte, then postcard;
//! see [`Record`] for how a layout changes); nothing backend-specific crosses the ports.
//!
//! A write answers only once it is durable — a caller that got `Ok` never loses it to a
//! crash of this process, nor of the machine (a power cut, a kernel panic) — unless its
//! port method says otherwise (a claim, a settled outcome: `OutboxStore::claim_message`,
//! `settle_message`).

use async_trait::async_trait;
use serde::{de::DeserializeOwned, Serialize};

use crate::auth::ApiKey;
use crate::notify::{Idempotency, OutboxMessage};
use crate::tokens::{RateWindow, Token};

mod batch;
#[cfg(feature = "etcd")]
pub mod etcd;
mod keyspace;
pub mod sled;

pub(crate) use keyspace::{state_name, time_from_key, time_key};

pub use crate::auth::ApiKeyStore;
pub use crate::directory::{MembershipTokens, UserStore};
pub use crate::notify::{batch_gone, BatchWriter, OutboxStore};
pub use crate::ports::{After, Backend, Changed, Result, StoreError};
pub use crate::settings::SettingsStore;
pub use crate::templates::TemplateStore;
pub use crate::tokens::TokenStore;

/// Every port's trait, for code that calls a backend's methods directly (tests, tools):
/// `use mailroom::store::prelude::*;`.
pub mod prelude {
    pub use super::{
        ApiKeyStore, Backend, MembershipTokens, OutboxStore, SettingsStore, Store, TemplateStore,
        TokenStore, UserStore,
    };
    pub use crate::snapshot::Snapshot;
}

/// Every port of the domain over one backend, export and import
/// ([`Snapshot`](crate::snapshot::Snapshot)), and the master key's check: what the wiring
/// (`server/`) opens, and hands each service the ports it needs of.
#[async_trait]
pub trait Store:
    Backend
    + SettingsStore
    + ApiKeyStore
    + UserStore
    + MembershipTokens
    + TokenStore
    + OutboxStore
    + TemplateStore
    + crate::snapshot::Snapshot
    + 'static
{
    /// A value sealed with the master key when the store was created: proof at start that
    /// the key opens this store's secrets.
    async fn key_check(&self) -> Result<Option<crate::crypto::Sealed>>;

    /// Replaces the key check (first start, key rotation). Durable.
    async fn set_key_check(&self, sealed: &crate::crypto::Sealed) -> Result<()>;
}

/// The first byte of a record in the compact encoding (postcard): the first layout of every
/// record. postcard is not self-describing: a change to a stored record's fields needs a new
/// format byte (see [`Record`]; the test `the_stored_layout_of_every_record_is_pinned` fails
/// on such a change).
const POSTCARD: u8 = 1;

/// A record kept in a store: the format byte its current layout is written with, and how
/// the layouts earlier *released* versions wrote are read. A record whose fields change
/// after a release takes a new [`Record::FORMAT`], freezes the layout it replaces as a
/// struct of its own (its fields as they were, never to change again) and reads it in
/// [`Record::earlier`]. Nothing is released yet (0.1.0): the layouts of development builds
/// are not read.
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
impl Record for crate::quota::Tally {}
impl Record for OutboxMessage {}
impl Record for Idempotency {}
impl Record for ApiKey {}
impl Record for crate::crypto::Sealed {}
/// Format 3: formats 1 and 2 (before `link_origins` and `sender_domains`, before `auth`)
/// were written by development builds only, and are not read.
impl Record for crate::settings::SmtpSettings {
    const FORMAT: u8 = 3;
}
/// Format 2: format 1 (before `locale`) was written by development builds only, and is not
/// read.
impl Record for crate::directory::User {
    const FORMAT: u8 = 2;
}
impl Record for crate::templates::TemplateOverride {}
impl Record for crate::templates::LocaleSettings {}
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

/// Decodes a stored record, in its current layout or an earlier one; `key` names it in the
/// error.
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
        return Err(corrupt(format!(
            "format {format} is not a layout this version reads (written by a newer one?)"
        )));
    }
    Err(corrupt("an empty record".to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::crypto::Sealed;
    use crate::directory::User;
    use crate::settings::SmtpSettings;
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

    /// postcard is not self-describing: a change to a stored type's fields (added, removed,
    /// reordered or retyped) leaves every record on disk unreadable (`Corrupt`). This pins
    /// the layout of every stored type, so that such a change fails here first.
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
        pinned::<ApiKey>(
            r#"{"id":"key_1","name":"soc","organisation":"acme","permissions":["manageUser","manageConfig"],"create_time":{"secs_since_epoch":1700000000,"nanos_since_epoch":5},"revoked":true,"secret_digest":"cdcd"}"#,
            "01056b65795f3103736f630461636d6502010280e2cfaa0605010463646364",
        );
        pinned::<User>(
            r#"{"login":"alice","name":"Alice","email":"alice@example.com","organisations":["acme","beta"],"locked":true,"locale":"fr","create_time":{"secs_since_epoch":1700000000,"nanos_since_epoch":5},"update_time":{"secs_since_epoch":1700003600,"nanos_since_epoch":0}}"#,
            "0205616c69636505416c69636511616c696365406578616d706c652e636f6d020461636d6504626574610102667280e2cfaa060590fecfaa0600",
        );
        pinned::<crate::templates::TemplateOverride>(
            r#"{"scope":"acme","kind":"Invitation","locale":"fr","source":{"subject":"s","text":"t","html":""},"version":7,"update_time":{"secs_since_epoch":1700000000,"nanos_since_epoch":5},"updated_by":"k"}"#,
            "010461636d650102667201730174000780e2cfaa0605016b",
        );
        pinned::<crate::templates::LocaleSettings>(
            r#"{"organisation":"acme","default_locale":"de-CH","version":7,"update_time":{"secs_since_epoch":1700000000,"nanos_since_epoch":5},"updated_by":"k"}"#,
            "010461636d650564652d43480780e2cfaa0605016b",
        );
        pinned::<Sealed>(r#""c2VhbGVk""#, "0108633256686247566b");
    }
}
