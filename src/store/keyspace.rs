//! The keyspace both backends share, written once: every family of keys (a record by
//! its id, or an index), what it maps, and the order of a key's parts, one function per
//! key. A backend supplies only an [`Encoding`]: where a family's keys begin (sled: a tree,
//! and in it a prefix byte or none; etcd: a path under `--etcd-prefix`) and how a time is
//! written (sled: [`time_key`], eight bytes; etcd: its sixteen hex digits, which sort the
//! same). Parts are separated by `\0`; a time is followed by what it orders, with nothing
//! between. So the sled key `t acme\0queued\0msg_1` (in tree `outbox`) and the etcd key
//! `<prefix>outbox/t/acme\0queued\0msg_1` are the same entry of the same index.
//!
//! What each backend keeps to itself (sled's content parts and replacement intents, etcd's
//! staging records and idempotency ids kept apart, and the two token layouts: by digest on
//! sled, by id with a digest index on etcd) is named at the end, in [`sled_only`] and
//! [`etcd_only`], so that every prefix of both stores is in this file.
//!
//! Stored data depends on every byte here: the test at the end pins one key of each family
//! in both encodings. A change of layout needs a migration, not an edit.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::notify::{MessageState, OutboxMessage};

/// A family of keys and where each backend keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Family {
    /// etcd: the path its keys start with, under the store's prefix.
    pub etcd: &'static str,
    /// sled: the tree it lives in.
    pub tree: &'static str,
    /// sled: the byte its keys start with in [`Family::tree`], when the tree holds others.
    pub byte: Option<u8>,
}

/// `<name>` → a record of the store itself: [`SMTP_SETTINGS`], [`BOOTSTRAPPED`],
/// [`KEY_CHECK`], [`IMPORTING`].
pub(crate) const META: Family = Family {
    etcd: "meta/",
    tree: "meta",
    byte: None,
};
/// In [`META`]: the SMTP settings.
pub(crate) const SMTP_SETTINGS: &str = "smtp_settings";
/// In [`META`]: set once the store held an API key (the bootstrap key is created once).
pub(crate) const BOOTSTRAPPED: &str = "bootstrapped";
/// In [`META`]: a value sealed with the master key, proof that the key opens the store.
pub(crate) const KEY_CHECK: &str = "key_check";
/// In [`META`]: the digest of the file an import is writing, until it has written it
/// all (`mailroom import`); the server refuses a store so marked.
pub(crate) const IMPORTING: &str = "importing";

/// `<id>` → API key.
pub(crate) const API_KEYS: Family = Family {
    etcd: "keys/",
    tree: "api_keys",
    byte: None,
};
/// `<secret digest>` → the id of its API key.
pub(crate) const API_KEY_DIGESTS: Family = Family {
    etcd: "key_digests/",
    tree: "api_key_digests",
    byte: None,
};
/// `<login>` → user.
pub(crate) const USERS: Family = Family {
    etcd: "users/",
    tree: "users",
    byte: None,
};
/// `<organisation>\0<login>` → (): users by organisation.
pub(crate) const MEMBERS: Family = Family {
    etcd: "members/",
    tree: "user_organisations",
    byte: Some(0),
};

// The outbox is one sled tree, so that a whole batch is one atomic `apply_batch`.
/// `<id>` → message.
pub(crate) const MESSAGES: Family = outbox("outbox/m/", b'm');
/// `<due time><id>` → (): pending messages by due time.
pub(crate) const DUE: Family = outbox("outbox/q/", b'q');
/// `<organisation>\0<id>` → (): messages by organisation.
pub(crate) const BY_ORGANISATION: Family = outbox("outbox/o/", b'o');
/// `<organisation>\0<state>\0<id>` → (): messages by organisation and state.
pub(crate) const BY_STATE: Family = outbox("outbox/t/", b't');
/// `<organisation>\0<key>` → idempotency record: an idempotency key's first use.
pub(crate) const IDEMPOTENCY: Family = outbox("outbox/i/", b'i');
/// `<batch>` → (sled: nothing; etcd: when it was staged): a batch committed but not yet
/// wholly queued.
pub(crate) const COMMITTED: Family = outbox("outbox/c/", b'c');

/// `<login>` → the login's tokens, in a list (sled: their digests; etcd: their ids).
pub(crate) const LOGIN_TOKENS: Family = Family {
    etcd: "login_tokens/",
    tree: "login_token_digests",
    byte: None,
};
/// `<purge time><token>` → (): tokens by the time they are purged (sled: by digest;
/// etcd: by id).
pub(crate) const TOKEN_PURGE: Family = Family {
    etcd: "token_purge/",
    tree: "token_purge_by_digest",
    byte: None,
};
/// `<key>` → rate window: the issues of tokens under a rate-limit key.
pub(crate) const RATE_LIMITS: Family = Family {
    etcd: "rate_limits/",
    tree: "rate_limits",
    byte: None,
};
/// `<key>` → tally: the quota counted under a key.
pub(crate) const QUOTA_TALLIES: Family = Family {
    etcd: "quota_tallies/",
    tree: "quota_tallies",
    byte: None,
};

/// `<scope>\0<kind>\0<locale>` → an override of a built-in email
/// (`templates::TemplateOverride`); the scope is its organisation, empty for the
/// platform's (an organisation's name is never empty).
pub(crate) const EMAIL_TEMPLATES: Family = Family {
    etcd: "templates/",
    tree: "templates",
    byte: Some(b't'),
};
/// `<organisation>` → its locale settings (`templates::LocaleSettings`).
pub(crate) const LOCALE_SETTINGS: Family = Family {
    etcd: "locale_settings/",
    tree: "templates",
    byte: Some(b'l'),
};

const fn outbox(etcd: &'static str, byte: u8) -> Family {
    Family {
        etcd,
        tree: "outbox",
        byte: Some(byte),
    }
}

/// How a backend writes keys.
pub(crate) trait Encoding {
    /// A key.
    type Key;
    /// The start of every key of `family`.
    fn begin(&self, family: Family) -> Self::Key;
    /// Appends text.
    fn push(key: &mut Self::Key, text: &str);
    /// Appends a time, sortable.
    fn push_time(key: &mut Self::Key, time: SystemTime);
}

/// A key of `family` of `parts`, separated by `\0`. With an empty last part, the prefix
/// of the keys that continue the others.
pub(crate) fn key<E: Encoding>(e: &E, family: Family, parts: &[&str]) -> E::Key {
    let mut k = e.begin(family);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            E::push(&mut k, "\0");
        }
        E::push(&mut k, part);
    }
    k
}

/// A key of `family` of `time` then `what`.
fn timed<E: Encoding>(e: &E, family: Family, time: SystemTime, what: &str) -> E::Key {
    let mut k = e.begin(family);
    E::push_time(&mut k, time);
    E::push(&mut k, what);
    k
}

/// A record of the store itself ([`META`]).
#[cfg_attr(not(feature = "etcd"), allow(dead_code))] // sled keys these trees by the text alone
pub(crate) fn meta<E: Encoding>(e: &E, name: &str) -> E::Key {
    key(e, META, &[name])
}

/// An API key by id.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))] // sled keys these trees by the text alone
pub(crate) fn api_key<E: Encoding>(e: &E, id: &str) -> E::Key {
    key(e, API_KEYS, &[id])
}

/// The id of the API key whose secret has `digest`.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))] // sled keys these trees by the text alone
pub(crate) fn api_key_digest<E: Encoding>(e: &E, digest: &str) -> E::Key {
    key(e, API_KEY_DIGESTS, &[digest])
}

/// A user.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))] // sled keys these trees by the text alone
pub(crate) fn user<E: Encoding>(e: &E, login: &str) -> E::Key {
    key(e, USERS, &[login])
}

/// `login`'s membership of `organisation`; with `login` empty, the prefix of the
/// organisation's members.
pub(crate) fn member<E: Encoding>(e: &E, organisation: &str, login: &str) -> E::Key {
    key(e, MEMBERS, &[organisation, login])
}

/// A message.
pub(crate) fn message<E: Encoding>(e: &E, id: &str) -> E::Key {
    key(e, MESSAGES, &[id])
}

/// A message's entry in the due index, while it is pending.
pub(crate) fn due<E: Encoding>(e: &E, message: &OutboxMessage) -> Option<E::Key> {
    message.due_at().map(|due| timed(e, DUE, due, &message.id))
}

/// The prefix of the due index's entries at `time` (exclusive bound of a walk up to it).
pub(crate) fn due_at<E: Encoding>(e: &E, time: SystemTime) -> E::Key {
    timed(e, DUE, time, "")
}

/// A message's entry in the index by organisation; with `id` empty, the prefix of the
/// organisation's.
pub(crate) fn by_organisation<E: Encoding>(e: &E, organisation: &str, id: &str) -> E::Key {
    key(e, BY_ORGANISATION, &[organisation, id])
}

/// A message's entry in the index by organisation and state; with `id` empty, the
/// prefix of those in `state`.
pub(crate) fn by_state<E: Encoding>(
    e: &E,
    organisation: &str,
    state: MessageState,
    id: &str,
) -> E::Key {
    key(e, BY_STATE, &[organisation, state_name(state), id])
}

/// The index entries that queue a message: by organisation, by state, by due time.
pub(crate) fn index_keys<E: Encoding>(e: &E, message: &OutboxMessage) -> Vec<E::Key> {
    let mut keys = vec![
        by_organisation(e, &message.organisation, &message.id),
        by_state(e, &message.organisation, message.state, &message.id),
    ];
    keys.extend(due(e, message));
    keys
}

/// The first use of idempotency key `key` in `organisation`.
pub(crate) fn idempotency<E: Encoding>(e: &E, organisation: &str, key_: &str) -> E::Key {
    key(e, IDEMPOTENCY, &[organisation, key_])
}

/// The marker of a batch committed but not yet wholly queued.
pub(crate) fn committed<E: Encoding>(e: &E, batch: &str) -> E::Key {
    key(e, COMMITTED, &[batch])
}

/// A login's list of tokens.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))] // sled keys these trees by the text alone
pub(crate) fn login_tokens<E: Encoding>(e: &E, login: &str) -> E::Key {
    key(e, LOGIN_TOKENS, &[login])
}

/// A token's entry in the purge index: its purge time, then `token` (sled: its digest;
/// etcd: its id). With `token` empty, the bound of a walk up to `time`.
pub(crate) fn token_purge<E: Encoding>(e: &E, time: SystemTime, token: &str) -> E::Key {
    timed(e, TOKEN_PURGE, time, token)
}

/// The rate window of a rate-limit key.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))] // sled keys these trees by the text alone
pub(crate) fn rate_limit<E: Encoding>(e: &E, k: &str) -> E::Key {
    key(e, RATE_LIMITS, &[k])
}

/// The tally of a quota key.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))] // sled keys these trees by the text alone
pub(crate) fn quota_tally<E: Encoding>(e: &E, k: &str) -> E::Key {
    key(e, QUOTA_TALLIES, &[k])
}

/// The override of `kind` in `locale` for `scope`; with `locale` empty, the prefix of the
/// scope's overrides of `kind`; with `kind` empty too, of all the scope's overrides.
pub(crate) fn email_template<E: Encoding>(e: &E, scope: &str, kind: &str, locale: &str) -> E::Key {
    if kind.is_empty() {
        key(e, EMAIL_TEMPLATES, &[scope, ""])
    } else {
        key(e, EMAIL_TEMPLATES, &[scope, kind, locale])
    }
}

/// An organisation's locale settings.
pub(crate) fn locale_settings<E: Encoding>(e: &E, organisation: &str) -> E::Key {
    key(e, LOCALE_SETTINGS, &[organisation])
}

/// A message state's name in index keys.
pub(crate) fn state_name(state: MessageState) -> &'static str {
    match state {
        MessageState::Queued => "queued",
        MessageState::Sending => "sending",
        MessageState::Sent => "sent",
        MessageState::Retrying => "retrying",
        MessageState::Dead => "dead",
        MessageState::Cancelled => "cancelled",
    }
}

/// Microseconds since the epoch, big-endian: time as a sortable key.
pub(crate) fn time_key(t: SystemTime) -> [u8; 8] {
    let micros = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
    u64::try_from(micros).unwrap_or(u64::MAX).to_be_bytes()
}

/// The time of a [`time_key`].
pub(crate) fn time_from_key(key: [u8; 8]) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_micros(u64::from_be_bytes(key))
}

/// Keys only the sled store has: the bytes they start with in the `outbox` tree, and its
/// own token tree.
pub(crate) mod sled_only {
    /// `s<batch>\0<id>` → the index keys that queue a staged message.
    pub(crate) const STAGED: u8 = b's';
    /// `w<id>\0<n>` → (): a message whose record is being replaced; a crash leaves it, and
    /// the next start puts the message's index entries in step with its record.
    pub(crate) const REPLACING: u8 = b'w';
    /// `b<id>\0<n>` → the `n`th part (`u32`, big-endian) of a message's sealed content,
    /// when it is larger than one part.
    pub(crate) const CONTENT: u8 = b'b';
    /// Tree: `<digest>` → token.
    pub(crate) const TOKENS_BY_DIGEST: &str = "tokens_by_digest";
}

/// Keys only the etcd store has, under its prefix.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) mod etcd_only {
    /// `outbox/s/<batch>` → when it was staged: a batch staged and not yet committed.
    pub(crate) const STAGING: &str = "outbox/s/";
    /// `outbox/b/<batch>/<id>` → the index keys that will queue a staged message.
    pub(crate) const BATCH: &str = "outbox/b/";
    /// `outbox/ii/<batch>/<n>` → part of the message ids of an idempotency record that
    /// names its batch in their place.
    pub(crate) const IDS_APART: &str = "outbox/ii/";
    /// `tokens/<id>` → token.
    pub(crate) const TOKENS: &str = "tokens/";
    /// `token_digests/<digest>` → the id of its token.
    pub(crate) const TOKEN_DIGESTS: &str = "token_digests/";
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Writes keys as the sled store does (no tree: the tests compare bytes).
    struct Sled;

    impl Encoding for Sled {
        type Key = Vec<u8>;
        fn begin(&self, family: Family) -> Vec<u8> {
            family.byte.into_iter().collect()
        }
        fn push(key: &mut Vec<u8>, text: &str) {
            key.extend_from_slice(text.as_bytes());
        }
        fn push_time(key: &mut Vec<u8>, time: SystemTime) {
            key.extend_from_slice(&time_key(time));
        }
    }

    /// Writes keys as the etcd store does, under `p/`.
    struct Etcd;

    impl Encoding for Etcd {
        type Key = String;
        fn begin(&self, family: Family) -> String {
            format!("p/{}", family.etcd)
        }
        fn push(key: &mut String, text: &str) {
            key.push_str(text);
        }
        fn push_time(key: &mut String, time: SystemTime) {
            key.push_str(&hex::encode(time_key(time)));
        }
    }

    /// The keys as the stores wrote them before the layout was shared: existing data
    /// directories and etcd prefixes must still open.
    #[test]
    fn every_family_keeps_the_keys_already_stored() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let hex = "00060a24181e4000";
        assert_eq!(hex::encode(time_key(t)), hex);
        let both = |sled: Vec<u8>, etcd: String, want_sled: &[u8], want_etcd: &str| {
            assert_eq!(sled, want_sled, "{}", String::from_utf8_lossy(&sled));
            assert_eq!(etcd, want_etcd);
        };
        both(
            meta(&Sled, KEY_CHECK),
            meta(&Etcd, KEY_CHECK),
            b"key_check",
            "p/meta/key_check",
        );
        both(
            api_key(&Sled, "k1"),
            api_key(&Etcd, "k1"),
            b"k1",
            "p/keys/k1",
        );
        both(
            api_key_digest(&Sled, "cd"),
            api_key_digest(&Etcd, "cd"),
            b"cd",
            "p/key_digests/cd",
        );
        both(user(&Sled, "al"), user(&Etcd, "al"), b"al", "p/users/al");
        both(
            member(&Sled, "acme", "al"),
            member(&Etcd, "acme", "al"),
            b"\0acme\0al",
            "p/members/acme\0al",
        );
        both(
            email_template(&Sled, "acme", "invitation", "fr"),
            email_template(&Etcd, "acme", "invitation", "fr"),
            b"tacme\0invitation\0fr",
            "p/templates/acme\0invitation\0fr",
        );
        both(
            email_template(&Sled, "", "", ""),
            email_template(&Etcd, "", "", ""),
            b"t\0",
            "p/templates/\0",
        );
        both(
            locale_settings(&Sled, "acme"),
            locale_settings(&Etcd, "acme"),
            b"lacme",
            "p/locale_settings/acme",
        );
        both(
            message(&Sled, "m1"),
            message(&Etcd, "m1"),
            b"mm1",
            "p/outbox/m/m1",
        );
        both(
            by_state(&Sled, "acme", MessageState::Queued, "m1"),
            by_state(&Etcd, "acme", MessageState::Queued, "m1"),
            b"tacme\0queued\0m1",
            "p/outbox/t/acme\0queued\0m1",
        );
        both(
            by_state(&Sled, "acme", MessageState::Sending, ""),
            by_state(&Etcd, "acme", MessageState::Sending, ""),
            b"tacme\0sending\0",
            "p/outbox/t/acme\0sending\0",
        );
        both(
            by_organisation(&Sled, "acme", "m1"),
            by_organisation(&Etcd, "acme", "m1"),
            b"oacme\0m1",
            "p/outbox/o/acme\0m1",
        );
        both(
            idempotency(&Sled, "acme", "k"),
            idempotency(&Etcd, "acme", "k"),
            b"iacme\0k",
            "p/outbox/i/acme\0k",
        );
        both(
            committed(&Sled, "b1"),
            committed(&Etcd, "b1"),
            b"cb1",
            "p/outbox/c/b1",
        );
        let mut due_sled = b"q".to_vec();
        due_sled.extend_from_slice(&time_key(t));
        due_sled.extend_from_slice(b"m1");
        both(
            timed(&Sled, DUE, t, "m1"),
            timed(&Etcd, DUE, t, "m1"),
            &due_sled,
            &format!("p/outbox/q/{hex}m1"),
        );
        let mut purge = time_key(t).to_vec();
        purge.extend_from_slice(b"d1");
        both(
            token_purge(&Sled, t, "d1"),
            token_purge(&Etcd, t, "d1"),
            &purge,
            &format!("p/token_purge/{hex}d1"),
        );
        both(
            login_tokens(&Sled, "al"),
            login_tokens(&Etcd, "al"),
            b"al",
            "p/login_tokens/al",
        );
        both(
            rate_limit(&Sled, "r"),
            rate_limit(&Etcd, "r"),
            b"r",
            "p/rate_limits/r",
        );
        both(
            quota_tally(&Sled, "q"),
            quota_tally(&Etcd, "q"),
            b"q",
            "p/quota_tallies/q",
        );
    }

    /// No family's keys can be taken for another's: the outbox tree's bytes differ, and no
    /// etcd path starts another.
    #[test]
    fn families_do_not_overlap() {
        let shared = [
            META,
            API_KEYS,
            API_KEY_DIGESTS,
            USERS,
            MEMBERS,
            MESSAGES,
            DUE,
            BY_ORGANISATION,
            BY_STATE,
            IDEMPOTENCY,
            COMMITTED,
            LOGIN_TOKENS,
            TOKEN_PURGE,
            RATE_LIMITS,
            QUOTA_TALLIES,
        ];
        let mut bytes: Vec<u8> = shared
            .iter()
            .filter(|f| f.tree == "outbox")
            .filter_map(|f| f.byte)
            .collect();
        bytes.extend([sled_only::STAGED, sled_only::REPLACING, sled_only::CONTENT]);
        let distinct: std::collections::BTreeSet<_> = bytes.iter().collect();
        assert_eq!(distinct.len(), bytes.len(), "{bytes:?}");
        let mut paths: Vec<&str> = shared.iter().map(|f| f.etcd).collect();
        paths.extend([
            etcd_only::STAGING,
            etcd_only::BATCH,
            etcd_only::IDS_APART,
            etcd_only::TOKENS,
            etcd_only::TOKEN_DIGESTS,
        ]);
        for a in &paths {
            for b in &paths {
                assert!(a == b || !b.starts_with(a), "{a} starts {b}");
            }
        }
        let mut trees: Vec<&str> = shared
            .iter()
            .filter(|f| f.byte.is_none() || f.tree != "outbox")
            .map(|f| f.tree)
            .collect();
        trees.push(sled_only::TOKENS_BY_DIGEST);
        let distinct: std::collections::BTreeSet<_> = trees.iter().collect();
        assert_eq!(distinct.len(), trees.len(), "{trees:?}");
    }
}
