//! The store's behaviour, one suite run unchanged against every backend: sled always,
//! etcd with the `etcd` feature (a real etcd started for each test, see support/etcd.rs).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::race;
use mailroom::auth::{ApiKey, Permission};
use mailroom::crypto::MasterKey;
use mailroom::directory::User;
use mailroom::notify::{EmailKind, EmailSource};
use mailroom::notify::{Idempotency, MessageState, OutboxMessage, Queued};
use mailroom::settings::SmtpSettings;
use mailroom::store::prelude::*;
use mailroom::store::sled::SledStore;
use mailroom::store::StoreError;
use mailroom::templates::{LocaleSettings, TemplateOverride};
use mailroom::tokens::{Purpose, Token, TokenState};
use secrecy::ExposeSecret;

const NOW: Duration = Duration::from_secs(1_800_000_000);

fn now() -> SystemTime {
    UNIX_EPOCH + NOW
}

/// Declares each case once per backend: `<case>_on_sled` and `<case>_on_etcd`, on a
/// runtime with several worker threads, as in production: the races below run truly at
/// once (see [`race`]).
macro_rules! store_suite {
    ($($case:ident),* $(,)?) => {
        mod on_sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let _watchdog = crate::support::watchdog();
                    let dir = tempfile::tempdir().expect("temporary directory");
                    let store = super::SledStore::open(dir.path(), 16 << 20).expect("open sled");
                    super::$case(std::sync::Arc::new(store)).await;
                }
            )*
        }
        #[cfg(feature = "etcd")]
        mod on_etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let _watchdog = crate::support::watchdog();
                    let Some(etcd) = crate::support::etcd::Etcd::start().await else {
                        return;
                    };
                    let store = etcd.store("/suite/").await.expect("connect to etcd");
                    super::$case(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}

store_suite!(
    settings_swap_only_from_the_revision_read,
    the_bootstrap_key_is_created_once,
    api_keys_list_in_pages_and_revoke,
    users_are_listed_by_organisation,
    a_batch_is_invisible_until_committed,
    a_large_batch_commits_whole,
    an_idempotency_key_keeps_its_first_batch,
    a_large_batch_s_idempotency_key_keeps_every_id,
    sweeps_walk_more_than_one_page,
    messages_queued_in_one_write_keep_their_idempotency_key,
    abandoned_staged_batches_are_dropped,
    a_batch_staged_since_the_cutoff_is_kept,
    a_dropped_batch_is_never_acknowledged,
    a_message_swap_moves_its_indexes,
    listed_messages_come_without_their_content,
    messages_near_the_size_limit_are_listed_and_claimed,
    a_message_is_claimed_once_under_concurrency,
    a_removed_message_leaves_no_index_entry,
    issuing_a_token_revokes_the_earlier_one_of_its_purpose,
    a_token_is_consumed_once_under_concurrency,
    an_idempotency_key_is_used_once_under_concurrency,
    ended_tokens_are_purged,
    the_rate_limit_counts_a_window,
    quota_counts_are_per_organisation,
    the_key_check_is_kept,
    an_export_holds_what_was_acknowledged_whole_and_restores_as_it_was,
    email_templates_swap_only_from_the_version_read,
);

fn settings(revision: u64, host: &str) -> SmtpSettings {
    serde_json::from_value(serde_json::json!({
        "host": host,
        "port": 25,
        "from": "noreply@example.com",
        "security": "None",
        "username": "",
        "password": null,
        "tls": {
            "ca_certificates_pem": "",
            "accept_invalid_certificates": false,
            "server_name": "",
            "client_certificate_pem": "",
            "client_key": null,
        },
        "helo_name": "",
        "timeout": {"secs": 10, "nanos": 0},
        "reset_password_expiration": {"secs": 600, "nanos": 0},
        "invitation_expiration": {"secs": 86400, "nanos": 0},
        "revision": revision,
        "update_time": {"secs_since_epoch": NOW.as_secs(), "nanos_since_epoch": 0},
        "updated_by": "test",
    }))
    .expect("settings from JSON")
}

fn api_key(id: &str) -> ApiKey {
    ApiKey {
        id: id.into(),
        name: id.into(),
        organisation: "admin".into(),
        permissions: vec![Permission::ManagePlatform],
        create_time: now(),
        revoked: false,
        secret_digest: format!("digest-of-{id}"),
    }
}

fn user(login: &str, organisations: &[&str]) -> User {
    User {
        login: login.into(),
        name: login.into(),
        email: format!("{login}@example.com"),
        organisations: organisations.iter().map(|o| o.to_string()).collect(),
        locked: false,
        locale: String::new(),
        create_time: now(),
        update_time: now(),
    }
}

fn master_key() -> MasterKey {
    let dir = tempfile::tempdir().expect("temporary directory");
    MasterKey::load_or_create(&dir.path().join("master.key")).expect("a new master key")
}

fn messages(batch: &str, count: usize, organisation: &str) -> Vec<OutboxMessage> {
    let key = master_key();
    (0..count)
        .map(|n| message(&key, &format!("{batch}-{n:06}"), organisation))
        .collect()
}

fn message(key: &MasterKey, id: &str, organisation: &str) -> OutboxMessage {
    OutboxMessage {
        id: id.into(),
        organisation: organisation.into(),
        from: "noreply@example.com".into(),
        envelope_from: "noreply@example.com".into(),
        to: "someone@example.com".into(),
        subject: "subject".into(),
        content: Some(key.seal("content", "body")),
        message_id_header: format!("<{id}@example.com>"),
        state: MessageState::Queued,
        attempts: 0,
        last_error: String::new(),
        last_smtp_code: 0,
        create_time: now(),
        window_start: now(),
        next_attempt_time: now(),
        sent_time: None,
        lease: None,
        version: 1,
    }
}

fn idempotency(key: &str, ids: &[OutboxMessage]) -> Idempotency {
    Idempotency {
        organisation: "acme".into(),
        key: key.into(),
        queued: Queued {
            message_ids: ids.iter().map(|m| m.id.clone()).collect(),
            recipients: u32::try_from(ids.len()).unwrap(),
            duplicate: false,
        },
        create_time: now(),
    }
}

fn token(id: &str, login: &str, purpose: Purpose) -> Token {
    Token {
        id: id.into(),
        digest: format!("digest-of-{id}"),
        purpose,
        login: login.into(),
        email: format!("{login}@example.com"),
        organisation: "acme".into(),
        state: TokenState::Active,
        create_time: now(),
        expire_time: now() + Duration::from_secs(600),
        consume_time: None,
        revoke_time: None,
        metadata: BTreeMap::new(),
        version: 1,
    }
}

fn ids(messages: &[OutboxMessage]) -> Vec<String> {
    messages.iter().map(|m| m.id.clone()).collect()
}

async fn settings_swap_only_from_the_revision_read(store: Arc<dyn Store>) {
    assert!(store.smtp_settings().await.unwrap().is_none());
    assert!(store
        .swap_smtp_settings(0, &settings(1, "a.example.com"))
        .await
        .unwrap());
    assert!(
        !store
            .swap_smtp_settings(0, &settings(1, "b.example.com"))
            .await
            .unwrap(),
        "a second first write loses"
    );
    assert!(store
        .swap_smtp_settings(1, &settings(2, "c.example.com"))
        .await
        .unwrap());
    let stored = store.smtp_settings().await.unwrap().unwrap();
    assert_eq!(
        (stored.revision, stored.host.as_str()),
        (2, "c.example.com")
    );

    let racing = store.clone();
    let won = race(10, 1, move |_, n| {
        let store = racing.clone();
        async move {
            store
                .swap_smtp_settings(2, &settings(3, &format!("r{n}.example.com")))
                .await
                .unwrap()
        }
    })
    .await
    .into_iter()
    .flatten()
    .filter(|w| *w)
    .count();
    assert_eq!(
        won, 1,
        "exactly one of ten concurrent swaps from revision 2"
    );
}

async fn the_bootstrap_key_is_created_once(store: Arc<dyn Store>) {
    let racing = store.clone();
    let created = race(5, 1, move |_, n| {
        let store = racing.clone();
        async move {
            store
                .insert_api_key(&api_key(&format!("boot{n}")), true)
                .await
                .unwrap()
        }
    })
    .await
    .into_iter()
    .flatten()
    .filter(|c| *c)
    .count();
    assert_eq!(created, 1, "one bootstrap key among racing starts");
    assert!(!store.insert_api_key(&api_key("late"), true).await.unwrap());
    assert!(store
        .insert_api_key(&api_key("normal"), false)
        .await
        .unwrap());
    assert_eq!(store.list_api_keys(None, 100).await.unwrap().len(), 2);
}

async fn api_keys_list_in_pages_and_revoke(store: Arc<dyn Store>) {
    for n in 0..5 {
        store
            .insert_api_key(&api_key(&format!("key{n}")), false)
            .await
            .unwrap();
    }
    let first = store.list_api_keys(None, 2).await.unwrap();
    let rest = store.list_api_keys(Some(&first[1].id), 10).await.unwrap();
    let all: Vec<String> = first.iter().chain(&rest).map(|k| k.id.clone()).collect();
    assert_eq!(all, ["key0", "key1", "key2", "key3", "key4"]);

    let found = store
        .api_key_by_digest("digest-of-key3")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, "key3");
    assert!(store
        .api_key_by_digest("digest-of-nobody")
        .await
        .unwrap()
        .is_none());
    // Within an organisation's scope, another organisation's key is not there.
    assert!(store
        .revoke_api_key("key3", Some("acme"))
        .await
        .unwrap()
        .is_none());
    assert!(
        !store
            .api_key_by_digest("digest-of-key3")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    let revoked = store
        .revoke_api_key("key3", Some("admin"))
        .await
        .unwrap()
        .unwrap();
    assert!(revoked.revoked);
    assert!(
        store
            .api_key_by_digest("digest-of-key3")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert!(store
        .revoke_api_key("nobody", None)
        .await
        .unwrap()
        .is_none());
    assert!(
        store.revoke_api_key("key4", None).await.unwrap().is_some(),
        "unscoped, any organisation's"
    );
}

async fn users_are_listed_by_organisation(store: Arc<dyn Store>) {
    for n in 0..5 {
        store
            .put_user(&user(&format!("u{n}"), &["acme", "other"]))
            .await
            .unwrap();
    }
    store.put_user(&user("solo", &["other"])).await.unwrap();
    let page = store.list_users("acme", None, 3).await.unwrap();
    let next = store.list_users("acme", Some("u2"), 10).await.unwrap();
    let logins = |users: &[User]| users.iter().map(|u| u.login.clone()).collect::<Vec<_>>();
    assert_eq!(logins(&page), ["u0", "u1", "u2"]);
    assert_eq!(logins(&next), ["u3", "u4"]);

    store.put_user(&user("u1", &["other"])).await.unwrap();
    assert_eq!(
        logins(&store.list_users("acme", None, 10).await.unwrap()),
        ["u0", "u2", "u3", "u4"],
        "moving a user out of an organisation removes its membership"
    );
    let removed = store.delete_user("u0").await.unwrap().unwrap();
    assert_eq!(removed.login, "u0");
    assert!(store.user("u0").await.unwrap().is_none());
    assert!(store.delete_user("u0").await.unwrap().is_none());
    assert_eq!(store.list_users("other", None, 10).await.unwrap().len(), 5);
}

async fn a_batch_is_invisible_until_committed(store: Arc<dyn Store>) {
    let batch = messages("b1", 10, "acme");
    let mut b1 = store.enqueue("b1");
    b1.write(&batch).await.unwrap();
    assert!(store.due_messages(now(), 100).await.unwrap().is_empty());
    assert!(store
        .list_messages("acme", None, None, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.pending_messages().await.unwrap(), 0);
    assert!(store.next_due().await.unwrap().is_none());

    assert!(b1.commit(&[], None).await.unwrap().is_none());
    assert_eq!(
        ids(&store.due_messages(now(), 100).await.unwrap()),
        ids(&batch)
    );
    assert_eq!(store.pending_messages().await.unwrap(), 10);
    assert_eq!(store.next_due().await.unwrap(), Some(now()));
    let listed = store.list_messages("acme", None, None, 4).await.unwrap();
    let after = store
        .list_messages("acme", Some(MessageState::Queued), Some(&listed[3].id), 100)
        .await
        .unwrap();
    assert_eq!(listed.len() + after.len(), 10);
    assert!(store
        .list_messages("other", None, None, 100)
        .await
        .unwrap()
        .is_empty());
}

async fn a_large_batch_commits_whole(store: Arc<dyn Store>) {
    // Beyond what one etcd transaction may hold: committed by marker, queued in chunks.
    let batch = messages("big", 1000, "acme");
    let mut big = store.enqueue("big");
    for page in batch.chunks(300) {
        big.write(page).await.unwrap();
    }
    assert_eq!(store.pending_messages().await.unwrap(), 0);
    let key = idempotency("big-key", &batch);
    assert!(big.commit(&[], Some(&key)).await.unwrap().is_none());
    assert_eq!(store.pending_messages().await.unwrap(), 1000);
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_messages("acme", Some(MessageState::Queued), after.as_deref(), 256)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        listed.extend(page);
    }
    assert_eq!(
        ids(&listed),
        ids(&batch),
        "every message listed once, in id order"
    );
    assert_eq!(
        store.recover_batches(now() + NOW).await.unwrap(),
        0,
        "nothing left halfway"
    );
}

async fn an_idempotency_key_keeps_its_first_batch(store: Arc<dyn Store>) {
    let first = messages("first", 3, "acme");
    let mut writer = store.enqueue("first");
    writer.write(&first).await.unwrap();
    assert!(writer
        .commit(&[], Some(&idempotency("k", &first)))
        .await
        .unwrap()
        .is_none());
    let second = messages("second", 3, "acme");
    let mut writer = store.enqueue("second");
    writer.write(&second).await.unwrap();
    let kept = writer
        .commit(&[], Some(&idempotency("k", &second)))
        .await
        .unwrap()
        .expect("the key's first use");
    assert_eq!(kept.queued.message_ids, ids(&first));
    assert_eq!(store.pending_messages().await.unwrap(), 3);
    assert_eq!(
        ids(&store.all_messages(None, 100).await.unwrap()),
        ids(&first),
        "the second batch's messages are gone"
    );
    assert_eq!(
        store
            .idempotency("acme", "k")
            .await
            .unwrap()
            .unwrap()
            .queued
            .message_ids,
        ids(&first)
    );
    assert_eq!(store.purge_idempotency(now()).await.unwrap(), 0);
    assert_eq!(store.purge_idempotency(now() + NOW).await.unwrap(), 1);
    assert!(store.idempotency("acme", "k").await.unwrap().is_none());
}

async fn a_large_batch_s_idempotency_key_keeps_every_id(store: Arc<dyn Store>) {
    // More ids than one etcd record holds itself (100,000 are 3.3 MB, over etcd's request
    // limit): stored apart, and read back whole for the key's later uses.
    let queue = |name: &'static str| {
        let store = store.clone();
        async move {
            let batch = messages(name, 1500, "acme");
            let mut writer = store.enqueue(name);
            for page in batch.chunks(500) {
                writer.write(page).await.unwrap();
            }
            let first = writer
                .commit(&[], Some(&idempotency("many", &batch)))
                .await
                .unwrap();
            (batch, first)
        }
    };
    let (first, none) = queue("ids-1").await;
    assert!(none.is_none());
    let (_, kept) = queue("ids-2").await;
    let kept = kept.expect("the key's first use");
    assert_eq!(kept.queued.message_ids, ids(&first));
    let stored = store.idempotency("acme", "many").await.unwrap().unwrap();
    assert_eq!(stored.queued.message_ids, ids(&first));
    assert_eq!(stored.queued.recipients, 1500);
    assert_eq!(store.purge_idempotency(now() + NOW).await.unwrap(), 1);
    assert!(store.idempotency("acme", "many").await.unwrap().is_none());
}

async fn sweeps_walk_more_than_one_page(store: Arc<dyn Store>) {
    // More idempotency keys and rate-limit windows than an etcd sweep reads at once.
    for n in 0..100 {
        let batch = format!("page-{n:03}");
        let queued = messages(&batch, 1, "acme");
        let key = idempotency(&format!("key-{n:03}"), &queued);
        assert!(store
            .enqueue(&batch)
            .commit(&queued, Some(&key))
            .await
            .unwrap()
            .is_none());
        let window = store
            .hit_rate_limit(&format!("login-{n:03}"), now(), Duration::from_secs(60), 5)
            .await
            .unwrap();
        assert!(window.is_none());
    }
    assert_eq!(store.purge_idempotency(now() + NOW).await.unwrap(), 100);
    assert_eq!(store.purge_rate_limits(now() + NOW).await.unwrap(), 100);
}

async fn messages_queued_in_one_write_keep_their_idempotency_key(store: Arc<dyn Store>) {
    let first = messages("q1", 2, "acme");
    let key = idempotency("once", &first);
    assert!(store
        .enqueue("q1")
        .commit(&first, Some(&key))
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        ids(&store.due_messages(now(), 10).await.unwrap()),
        ids(&first)
    );
    let again = messages("q2", 2, "acme");
    let kept = store
        .enqueue("q2")
        .commit(&again, Some(&idempotency("once", &again)))
        .await
        .unwrap()
        .expect("the key's first use");
    assert_eq!(kept.queued.message_ids, ids(&first));
    assert_eq!(
        ids(&store.all_messages(None, 100).await.unwrap()),
        ids(&first),
        "nothing of the second request is stored"
    );
    let plain = messages("q3", 3, "other");
    assert!(store
        .enqueue("q3")
        .commit(&plain, None)
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.pending_messages().await.unwrap(), 5);
    assert_eq!(
        ids(&store
            .list_messages("other", Some(MessageState::Queued), None, 10)
            .await
            .unwrap()),
        ids(&plain)
    );
}

async fn abandoned_staged_batches_are_dropped(store: Arc<dyn Store>) {
    let gone = messages("gone", 50, "acme");
    let mut gone_writer = store.enqueue("gone");
    gone_writer.write(&gone).await.unwrap();
    let dropped = messages("dropped", 5, "acme");
    let mut dropped_writer = store.enqueue("dropped");
    dropped_writer.write(&dropped).await.unwrap();
    dropped_writer.abandon().await.unwrap();
    assert_eq!(store.all_messages(None, 1000).await.unwrap().len(), 50);
    assert_eq!(store.recover_batches(now() + NOW).await.unwrap(), 1);
    assert!(store.all_messages(None, 1000).await.unwrap().is_empty());
    // A writer that comes back after its batch was dropped queues nothing, and is told so.
    let late = gone_writer.commit(&[], None).await;
    assert!(matches!(late, Err(StoreError::Unavailable(_))), "{late:?}");
    assert_eq!(store.pending_messages().await.unwrap(), 0);
    assert!(store
        .list_messages("acme", None, None, 100)
        .await
        .unwrap()
        .is_empty());
}

/// Recovery takes only batches staged before its cutoff: one a live request is still
/// writing (its first message made at the cutoff) stays, and commits whole.
async fn a_batch_staged_since_the_cutoff_is_kept(store: Arc<dyn Store>) {
    let live = messages("live", 40, "acme");
    let mut writer = store.enqueue("live");
    writer.write(&live[..20]).await.unwrap();
    assert_eq!(store.recover_batches(now()).await.unwrap(), 0);
    writer.write(&live[20..]).await.unwrap();
    assert!(writer.commit(&[], None).await.unwrap().is_none());
    assert_eq!(store.pending_messages().await.unwrap(), 40);
    assert_eq!(
        store.recover_batches(now() + NOW).await.unwrap(),
        0,
        "a committed batch is not left for recovery"
    );
    assert_eq!(store.pending_messages().await.unwrap(), 40);
}

/// A request slower than the stale-staging sweep comes back to a batch that is gone: the
/// commit fails (the RPC answers UNAVAILABLE and is retried), never acknowledges, and
/// records no idempotency key that would answer the retry with ids that do not exist.
async fn a_dropped_batch_is_never_acknowledged(store: Arc<dyn Store>) {
    for (batch, size) in [("slow", 3), ("slow-and-large", 1000)] {
        let staged = messages(batch, size, "acme");
        let key = idempotency(batch, &staged);
        for key in [Some(&key), None] {
            let mut writer = store.enqueue(batch);
            for page in staged.chunks(300) {
                writer.write(page).await.unwrap();
            }
            assert_eq!(store.recover_batches(now() + NOW).await.unwrap(), 1);
            let late = writer.commit(&[], key).await;
            assert!(
                matches!(late, Err(StoreError::Unavailable(_))),
                "{batch}: {late:?}"
            );
        }
        assert!(
            store.idempotency("acme", batch).await.unwrap().is_none(),
            "{batch}: the key names nothing queued"
        );
        assert_eq!(store.pending_messages().await.unwrap(), 0, "{batch}");
        assert!(store.all_messages(None, 10).await.unwrap().is_empty());
        // The retry, a new batch under the same key, queues.
        let retry = format!("{batch}-retry");
        let again = messages(&retry, 2, "acme");
        let mut writer = store.enqueue(&retry);
        writer.write(&again).await.unwrap();
        let first = writer
            .commit(&[], Some(&idempotency(batch, &again)))
            .await
            .unwrap();
        assert!(first.is_none(), "{batch}: {first:?}");
        assert_eq!(store.pending_messages().await.unwrap(), 2, "{batch}");
        for message in &again {
            assert!(store.remove_message(1, &message.id).await.unwrap());
        }
    }
}

async fn a_message_swap_moves_its_indexes(store: Arc<dyn Store>) {
    let batch = messages("swap", 2, "acme");
    let mut writer = store.enqueue("swap");
    writer.write(&batch).await.unwrap();
    writer.commit(&[], None).await.unwrap();
    let mut claimed = batch[0].clone();
    claimed.claim("me", now(), Duration::from_secs(60));
    claimed.version = 2;
    assert!(
        !store.claim_message(7, &claimed).await.unwrap(),
        "stale version"
    );
    let (racing, claim) = (store.clone(), claimed.clone());
    let won = race(10, 1, move |_, _| {
        let (store, claimed) = (racing.clone(), claim.clone());
        async move { store.claim_message(1, &claimed).await.unwrap() }
    })
    .await
    .into_iter()
    .flatten()
    .filter(|w| *w)
    .count();
    assert_eq!(won, 1, "one of ten concurrent claims");
    let claimed_now = store.message(&batch[0].id).await.unwrap().unwrap();
    assert_eq!(
        (claimed_now.state, claimed_now.version),
        (MessageState::Sending, 2)
    );
    for (state, listed) in [
        (MessageState::Sending, &batch[0].id),
        (MessageState::Queued, &batch[1].id),
    ] {
        assert_eq!(
            ids(&store
                .list_messages("acme", Some(state), None, 10)
                .await
                .unwrap()),
            std::slice::from_ref(listed),
            "listed under {state:?} while claimed"
        );
    }
    assert!(
        !store.replace_message(1, &claimed).await.unwrap(),
        "swapped once"
    );
    assert_eq!(
        ids(&store.due_messages(now(), 10).await.unwrap()),
        [batch[1].id.clone()]
    );
    let after_lease = store
        .due_messages(now() + Duration::from_secs(61), 10)
        .await
        .unwrap();
    assert_eq!(after_lease.len(), 2, "a lease that ran out is due again");

    let mut sent = claimed.clone();
    sent.state = MessageState::Sent;
    sent.lease = None;
    sent.sent_time = Some(now());
    sent.version = 3;
    assert!(store.replace_message(2, &sent).await.unwrap());
    assert_eq!(store.pending_messages().await.unwrap(), 1);
    let listed = |state| {
        let store = store.clone();
        async move {
            ids(&store
                .list_messages("acme", Some(state), None, 10)
                .await
                .unwrap())
        }
    };
    assert_eq!(listed(MessageState::Sent).await, [batch[0].id.clone()]);
    assert_eq!(listed(MessageState::Queued).await, [batch[1].id.clone()]);
    assert!(listed(MessageState::Sending).await.is_empty());
    assert_eq!(
        store.message(&batch[0].id).await.unwrap().unwrap().state,
        MessageState::Sent
    );
}

async fn a_removed_message_leaves_no_index_entry(store: Arc<dyn Store>) {
    let batch = messages("remove", 2, "acme");
    let mut writer = store.enqueue("remove");
    writer.write(&batch).await.unwrap();
    writer.commit(&[], None).await.unwrap();
    let mut sent = batch[0].clone();
    sent.state = MessageState::Sent;
    sent.sent_time = Some(now());
    sent.version = 2;
    assert!(store.replace_message(1, &sent).await.unwrap());
    assert!(
        !store.remove_message(1, &sent.id).await.unwrap(),
        "stale version"
    );
    assert!(store.remove_message(2, &sent.id).await.unwrap());
    assert!(!store.remove_message(2, &sent.id).await.unwrap(), "gone");
    assert!(store.message(&sent.id).await.unwrap().is_none());
    for state in [None, Some(MessageState::Sent)] {
        assert!(
            !ids(&store.list_messages("acme", state, None, 10).await.unwrap()).contains(&sent.id),
            "listed under {state:?}"
        );
    }
    assert_eq!(
        ids(&store.all_messages(None, 10).await.unwrap()),
        [batch[1].id.clone()]
    );
    assert_eq!(
        ids(&store
            .list_messages("acme", Some(MessageState::Queued), None, 10)
            .await
            .unwrap()),
        [batch[1].id.clone()],
        "the other message stays"
    );
}

async fn issuing_a_token_revokes_the_earlier_one_of_its_purpose(store: Arc<dyn Store>) {
    let reset = token("t1", "alice", Purpose::PasswordReset);
    let invite = token("t2", "alice", Purpose::Invitation);
    assert_eq!(store.issue_token(&reset, now()).await.unwrap(), 0);
    assert_eq!(store.issue_token(&invite, now()).await.unwrap(), 0);
    let again = token("t3", "alice", Purpose::PasswordReset);
    assert_eq!(store.issue_token(&again, now()).await.unwrap(), 1);
    let states: Vec<(String, TokenState)> = store
        .tokens_of("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.id.clone(), t.state_at(now())))
        .collect();
    assert_eq!(
        states,
        [
            ("t1".to_string(), TokenState::Revoked),
            ("t2".to_string(), TokenState::Active),
            ("t3".to_string(), TokenState::Active)
        ]
    );
    assert_eq!(
        store
            .revoke_tokens("alice", None, Some("elsewhere"), now())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .revoke_tokens("alice", None, None, now())
            .await
            .unwrap(),
        2
    );
    assert!(store.tokens_of("bob").await.unwrap().is_empty());
}

/// Sixteen consumers race for each of 100 tokens. The racers and rounds of the races below
/// are what made each fail in (almost) every run with the store's lock or compare-and-swap
/// taken out, on two cores busy with other work: a lock-free store loses a race only when
/// two threads run at once through a window a few microseconds wide.
async fn a_token_is_consumed_once_under_concurrency(store: Arc<dyn Store>) {
    let (rounds, racers) = (100, 16);
    let mut tokens = Vec::new();
    for round in 0..rounds {
        let id = format!("once-{round}");
        let login = format!("carol{round}");
        store
            .issue_token(&token(&id, &login, Purpose::Invitation), now())
            .await
            .unwrap();
        let digest = format!("digest-of-{id}");
        tokens.push(store.token_by_digest(&digest).await.unwrap().unwrap());
    }
    let (racing, stored) = (store.clone(), tokens.clone());
    let outcomes = race(racers, rounds, move |round, _| {
        let (store, token) = (racing.clone(), stored[round].clone());
        async move {
            let mut consumed = token.clone();
            consumed.state = TokenState::Consumed;
            consumed.consume_time = Some(now());
            consumed.version += 1;
            store.swap_token(token.version, &consumed).await.unwrap()
        }
    })
    .await;
    for (round, wins) in outcomes.iter().enumerate() {
        let wins = wins.iter().filter(|w| **w).count();
        assert_eq!(
            wins, 1,
            "round {round}: one of {racers} concurrent consumers"
        );
        let after = store
            .token_by_digest(&tokens[round].digest)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.state, TokenState::Consumed);
    }
}

/// Sixteen workers race to claim each of 300 messages.
async fn a_message_is_claimed_once_under_concurrency(store: Arc<dyn Store>) {
    let (rounds, racers) = (300, 16);
    let batch = messages("claim", rounds, "acme");
    store.enqueue("claim").commit(&batch, None).await.unwrap();
    let (racing, queued) = (store.clone(), batch.clone());
    let outcomes = race(racers, rounds, move |round, n| {
        let (store, message) = (racing.clone(), queued[round].clone());
        async move {
            let mut claimed = message.clone();
            claimed.claim(&format!("worker{n}"), now(), Duration::from_secs(60));
            claimed.version += 1;
            store
                .claim_message(message.version, &claimed)
                .await
                .unwrap()
        }
    })
    .await;
    for (message, wins) in batch.iter().zip(&outcomes) {
        let wins = wins.iter().filter(|w| **w).count();
        assert_eq!(wins, 1, "{}: claimed {wins} times", message.id);
        let held = store.message(&message.id).await.unwrap().unwrap();
        assert_eq!(held.state, MessageState::Sending);
    }
}

/// Eight requests race with each of 50 idempotency keys, half queuing in one write and
/// half committing a staged batch: one queues its messages, every other answers with that
/// one's ids.
async fn an_idempotency_key_is_used_once_under_concurrency(store: Arc<dyn Store>) {
    let (rounds, racers) = (50, 8);
    // Each racer's batch, by round; a racer of odd number commits its batch staged.
    let batches: Vec<Vec<(String, Vec<OutboxMessage>)>> = (0..rounds)
        .map(|round| {
            (0..racers)
                .map(|n| {
                    let name = format!("r{round}-{n}");
                    let batch = messages(&name, 2, "acme");
                    (name, batch)
                })
                .collect()
        })
        .collect();
    let (racing, staged) = (store.clone(), batches.clone());
    let outcomes = race(racers, rounds, move |round, n| {
        let store = racing.clone();
        let (name, batch) = staged[round][n].clone();
        async move {
            let key = idempotency(&format!("key-{round}"), &batch);
            let mut writer = store.enqueue(&name);
            let first = if n % 2 == 0 {
                writer.commit(&batch, Some(&key)).await
            } else {
                writer.write(&batch).await.unwrap();
                writer.commit(&[], Some(&key)).await
            };
            (ids(&batch), first.unwrap())
        }
    })
    .await;
    for (round, answers) in outcomes.iter().enumerate() {
        let winners: Vec<&Vec<String>> = answers
            .iter()
            .filter(|(_, first)| first.is_none())
            .map(|(ids, _)| ids)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: the key used once");
        for (_, first) in answers {
            if let Some(first) = first {
                assert_eq!(&first.queued.message_ids, winners[0], "round {round}");
            }
        }
    }
    assert_eq!(
        store.pending_messages().await.unwrap(),
        rounds * 2,
        "only the winners' messages are queued"
    );
}

async fn ended_tokens_are_purged(store: Arc<dyn Store>) {
    let old = token("old", "dave", Purpose::PasswordReset);
    store.issue_token(&old, now()).await.unwrap();
    store
        .issue_token(&token("other", "dave", Purpose::Invitation), now())
        .await
        .unwrap();
    assert_eq!(
        store.purge_tokens(now(), 100).await.unwrap(),
        0,
        "nothing ended a week ago"
    );
    assert_eq!(
        store
            .purge_tokens(old.purge_time() + Duration::from_secs(1), 100)
            .await
            .unwrap(),
        2
    );
    assert!(store
        .token_by_digest("digest-of-old")
        .await
        .unwrap()
        .is_none());
    assert!(store.tokens_of("dave").await.unwrap().is_empty());
}

async fn quota_counts_are_per_organisation(store: Arc<dyn Store>) {
    let acme = messages("a", 5, "acme");
    store.enqueue("a").commit(&acme, None).await.unwrap();
    store
        .enqueue("b")
        .commit(&messages("b", 2, "beta"), None)
        .await
        .unwrap();
    assert_eq!(store.pending_of("acme", 100).await.unwrap(), 5);
    assert_eq!(store.pending_of("beta", 100).await.unwrap(), 2);
    assert_eq!(store.pending_of("gamma", 100).await.unwrap(), 0);
    // A message that ends is no longer pending.
    let mut sent = acme[0].clone();
    sent.state = MessageState::Sent;
    sent.version += 1;
    assert!(store.replace_message(1, &sent).await.unwrap());
    assert_eq!(store.pending_of("acme", 100).await.unwrap(), 4);
    // Tallies: concurrent adds never pass the limit, and each key is its own.
    let hour = Duration::from_secs(3600);
    let racing = store.clone();
    let allowed = race(10, 1, move |_, _| {
        let store = racing.clone();
        async move { store.tally("acme", now(), hour, 3, 10).await.unwrap() }
    })
    .await
    .into_iter()
    .flatten()
    .filter(Option::is_none)
    .count();
    assert_eq!(allowed, 3, "three adds of 3 fit under 10");
    assert_eq!(
        store.tally("beta", now(), hour, 10, 10).await.unwrap(),
        None
    );
    assert!(store
        .tally("beta", now(), hour, 1, 10)
        .await
        .unwrap()
        .is_some());
}

async fn the_rate_limit_counts_a_window(store: Arc<dyn Store>) {
    let hour = Duration::from_secs(3600);
    for n in 0..3 {
        let at = now() + Duration::from_secs(n);
        assert_eq!(store.hit_rate_limit("k", at, hour, 3).await.unwrap(), None);
    }
    let wait = store
        .hit_rate_limit("k", now() + Duration::from_secs(10), hour, 3)
        .await
        .unwrap()
        .expect("the fourth within the hour waits");
    assert_eq!(wait, hour - Duration::from_secs(10));
    let racing = store.clone();
    let allowed = race(10, 1, move |_, _| {
        let store = racing.clone();
        async move { store.hit_rate_limit("race", now(), hour, 4).await.unwrap() }
    })
    .await
    .into_iter()
    .flatten()
    .filter(Option::is_none)
    .count();
    assert_eq!(allowed, 4, "concurrent hits never pass the limit");
    assert_eq!(store.purge_rate_limits(now()).await.unwrap(), 0);
    assert_eq!(store.purge_rate_limits(now() + hour).await.unwrap(), 2);
    assert_eq!(
        store
            .hit_rate_limit("k", now() + hour, hour, 3)
            .await
            .unwrap(),
        None,
        "a purged window starts again"
    );
}

async fn the_key_check_is_kept(store: Arc<dyn Store>) {
    assert!(store.key_check().await.unwrap().is_none());
    let key = master_key();
    let sealed = key.seal("check", "mailroom");
    store.set_key_check(&sealed).await.unwrap();
    let stored = store.key_check().await.unwrap().unwrap();
    assert_eq!(
        key.open("check", &stored).unwrap().expose_secret(),
        "mailroom"
    );
    store.ping().await.unwrap();
    store.flush().await.unwrap();
    let other = master_key();
    assert!(
        other.open("check", &stored).is_err(),
        "another key does not open it"
    );
}

/// ListMessages answers no content: a page of a thousand messages near the size limit,
/// read with their sealed bodies, came to 1.4 GB. GetMessage and delivery still read it.
async fn listed_messages_come_without_their_content(store: Arc<dyn Store>) {
    let batch = messages("bare", 3, "acme");
    let mut writer = store.enqueue("bare");
    writer.write(&batch).await.unwrap();
    writer.commit(&[], None).await.unwrap();
    let mut claimed = batch[0].clone();
    claimed.claim("me", now(), Duration::from_secs(60));
    claimed.version = 2;
    assert!(store.claim_message(1, &claimed).await.unwrap());
    for state in [
        None,
        Some(MessageState::Queued),
        Some(MessageState::Sending),
    ] {
        let listed = store.list_messages("acme", state, None, 10).await.unwrap();
        assert!(!listed.is_empty(), "{state:?}");
        assert!(
            listed.iter().all(|m| m.content.is_none()),
            "listed under {state:?} with content"
        );
    }
    for message in &batch {
        let read = store.message(&message.id).await.unwrap().unwrap();
        assert!(
            read.content.is_some(),
            "{} read without content",
            message.id
        );
    }
    let due = store.due_messages(now(), 10).await.unwrap();
    assert!(!due.is_empty() && due.iter().all(|m| m.content.is_some()));
}

/// Forty messages near the size limit (1 MiB as sent, 1.3 MB sealed): a page of them is
/// listed, and delivery's claim of sixteen is read, though together they pass what one
/// etcd response carried by default (4 MiB).
async fn messages_near_the_size_limit_are_listed_and_claimed(store: Arc<dyn Store>) {
    let key = master_key();
    let body = "x".repeat(1024 * 1024);
    let batch: Vec<OutboxMessage> = (0..40)
        .map(|n| OutboxMessage {
            content: Some(key.seal("content", &body)),
            ..message(&key, &format!("large-{n:03}"), "acme")
        })
        .collect();
    let mut writer = store.enqueue("large");
    for chunk in batch.chunks(4) {
        writer.write(chunk).await.unwrap();
    }
    writer.commit(&[], None).await.unwrap();
    let listed = store.list_messages("acme", None, None, 1000).await.unwrap();
    assert_eq!(ids(&listed), ids(&batch));
    let due = store.due_messages(now(), 16).await.unwrap();
    assert_eq!(due.len(), 16);
    assert!(due.iter().all(|m| m.content.is_some()));
}

/// The etcd store's own recovery paths: a batch too large for one transaction is committed
/// by a marker and then queued chunk by chunk; a writer that fails between the two leaves
/// the marker and part of the batch queued, and `recover_batches` finishes the job. The
/// failure is real: the store's etcd user may not write the index entries of the batch's
/// last messages (an etcd role with a gap), so the store's own chunked writes stop after
/// the first group of chunks, as a crash there would leave them; the gap is then closed.
#[cfg(feature = "etcd")]
mod etcd_recovery {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::support::etcd::Etcd;
    use etcd_client::{Client, ConnectOptions, GetOptions, Permission};
    use mailroom::store::etcd::{EtcdStore, EtcdUser};

    const PREFIX: &str = "/recovery/";
    const USER: &str = "mailroom";
    const PASSWORD: &str = "recovery-password-3321";
    const ROOT_PASSWORD: &str = "recovery-root-password-8812";
    /// Messages per batch: more than one transaction holds.
    const BATCH: usize = 200;
    /// The first message whose index entries the store may not write while fenced: the
    /// store queues 120 entries (four chunks of 30) before it reads the next group, so the
    /// first group is wholly queued and the second wholly refused, whatever the order in
    /// which etcd answers the chunks of a group.
    const FENCED_FROM: usize = 120;

    /// The first key after every key that starts with `prefix`.
    fn prefix_end(prefix: &str) -> Vec<u8> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        end
    }

    /// An etcd with auth on where [`USER`] reads everything under [`PREFIX`] and writes all
    /// of it but the organisation index entries of messages [`FENCED_FROM`].. of each of
    /// `batches`; and a client as root.
    async fn fenced_etcd(batches: &[String]) -> Option<(Etcd, Client)> {
        let mut etcd = Etcd::start().await?;
        let mut root = Client::connect([etcd.endpoint.as_str()], None)
            .await
            .unwrap();
        root.user_add("root", ROOT_PASSWORD, None).await.unwrap();
        root.user_grant_role("root", "root").await.unwrap();
        root.role_add(USER).await.unwrap();
        root.role_grant_permission(USER, Permission::read(PREFIX).with_prefix())
            .await
            .unwrap();
        let mut gaps: Vec<(String, String)> = batches
            .iter()
            .map(|b| {
                let key = |n: usize| format!("{PREFIX}outbox/o/acme\0{b}-{n:06}");
                (key(FENCED_FROM), key(BATCH))
            })
            .collect();
        gaps.sort();
        let mut from = PREFIX.as_bytes().to_vec();
        for (start, end) in gaps {
            root.role_grant_permission(
                USER,
                Permission::read_write(from.clone()).with_range_end(start),
            )
            .await
            .unwrap();
            from = end.into_bytes();
        }
        root.role_grant_permission(
            USER,
            Permission::read_write(from).with_range_end(prefix_end(PREFIX)),
        )
        .await
        .unwrap();
        root.user_add(USER, PASSWORD, None).await.unwrap();
        root.user_grant_role(USER, USER).await.unwrap();
        root.auth_enable().await.unwrap();
        etcd.user = Some(EtcdUser {
            name: USER.into(),
            password: PASSWORD.to_string().into(),
        });
        let root = Client::connect(
            [etcd.endpoint.as_str()],
            Some(ConnectOptions::new().with_user("root", ROOT_PASSWORD)),
        )
        .await
        .unwrap();
        Some((etcd, root))
    }

    /// Lets [`USER`] write everything under [`PREFIX`].
    async fn lift_fence(root: &mut Client) {
        root.role_grant_permission(USER, Permission::read_write(PREFIX).with_prefix())
            .await
            .unwrap();
    }

    /// How many keys start with `PREFIX` + `path`.
    async fn count(root: &mut Client, path: &str) -> i64 {
        let prefix = format!("{PREFIX}{path}");
        let options = GetOptions::new()
            .with_range(prefix_end(&prefix))
            .with_count_only();
        root.get(prefix, Some(options)).await.unwrap().count()
    }

    /// Stages `batch` (created at `created`) and commits it; the commit fails partway
    /// through queuing, leaving its marker.
    async fn commit_partly(store: &EtcdStore, batch: &str, created: SystemTime) -> Vec<String> {
        let mut staged = messages(batch, BATCH, "acme");
        for message in &mut staged {
            message.create_time = created;
        }
        let mut writer = store.enqueue(batch);
        writer.write(&staged).await.unwrap();
        let failed = writer.commit(&[], None).await;
        assert!(
            matches!(failed, Err(StoreError::Unavailable(_))),
            "{batch}: the fence stops the queuing: {failed:?}"
        );
        ids(&staged)
    }

    /// Claims `message` as a delivery worker does: `SENDING`, with a lease.
    async fn claim(store: &dyn Store, message: &OutboxMessage, owner: &str) -> bool {
        let mut claimed = message.clone();
        claimed.claim(owner, now(), Duration::from_secs(60));
        claimed.version += 1;
        store
            .claim_message(message.version, &claimed)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_committed_batch_partly_queued_is_finished_once() {
        let _watchdog = crate::support::watchdog();
        let Some((etcd, mut root)) = fenced_etcd(&["big".into()]).await else {
            return;
        };
        let store = etcd.store(PREFIX).await.expect("connect to etcd");
        let all = commit_partly(&store, "big", now()).await;
        assert_eq!(count(&mut root, "outbox/c/").await, 1, "the commit marker");
        assert_eq!(
            store.pending_messages().await.unwrap(),
            FENCED_FROM,
            "the first group queued, the rest not"
        );
        // One of those already queued is delivered before the recovery: it must not come
        // back.
        let first = store.message(&all[7]).await.unwrap().unwrap();
        assert!(claim(&store, &first, "worker").await);
        let mut sent = store.message(&all[7]).await.unwrap().unwrap();
        sent.finish(mailroom::notify::Attempt::Sent, now(), 0.5);
        sent.version += 1;
        assert!(store
            .replace_message(sent.version - 1, &sent)
            .await
            .unwrap());

        lift_fence(&mut root).await;
        // Any replica recovers it: another connection here.
        let other = etcd.store(PREFIX).await.expect("connect to etcd");
        assert_eq!(other.recover_batches(now() + NOW).await.unwrap(), 1);
        let mut due = ids(&store.due_messages(now(), 2 * BATCH).await.unwrap());
        due.sort();
        let mut expected = all.clone();
        expected.remove(7);
        assert_eq!(due, expected, "every other message due, each once");
        assert_eq!(store.pending_messages().await.unwrap(), BATCH - 1);
        assert_eq!(
            store.message(&all[7]).await.unwrap().unwrap().state,
            MessageState::Sent
        );
        assert_eq!(
            count(&mut root, "outbox/t/").await,
            BATCH as i64,
            "one state entry each"
        );
        assert_eq!(count(&mut root, "outbox/o/").await, BATCH as i64);
        assert_eq!(
            count(&mut root, "outbox/b/").await,
            0,
            "nothing left staged"
        );
        assert_eq!(count(&mut root, "outbox/c/").await, 0, "the marker gone");
        assert_eq!(other.recover_batches(now() + NOW).await.unwrap(), 0);
    }

    /// Two replicas recover the same batches at once (real threads) while a third claims
    /// the messages as they become due: every message is queued exactly once — one state
    /// entry and one due entry each, none put back for a message that moved on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn replicas_recovering_one_batch_at_once_queue_each_message_once() {
        let _watchdog = crate::support::watchdog();
        let rounds = 8;
        let names: Vec<String> = (0..rounds).map(|r| format!("race{r}")).collect();
        let Some((etcd, mut root)) = fenced_etcd(&names).await else {
            return;
        };
        let writer = etcd.store(PREFIX).await.expect("connect to etcd");
        // Batch r began at second r: recovering up to then recovers no later batch.
        let began = |r: usize| now() + Duration::from_secs(r as u64);
        for (r, name) in names.iter().enumerate() {
            commit_partly(&writer, name, began(r)).await;
        }
        lift_fence(&mut root).await;
        let mut replicas = Vec::new();
        for _ in 0..3 {
            replicas.push(Arc::new(etcd.store(PREFIX).await.expect("connect to etcd")));
        }
        let finished: Arc<Vec<AtomicUsize>> =
            Arc::new((0..rounds).map(|_| AtomicUsize::new(0)).collect());
        let outcomes = race(3, rounds, move |round, n| {
            let (store, finished) = (replicas[n].clone(), finished.clone());
            async move {
                if n < 2 {
                    let recovered = store
                        .recover_batches(began(round) + Duration::from_millis(500))
                        .await;
                    finished[round].fetch_add(1, Ordering::SeqCst);
                    return recovered.map(|_| 0);
                }
                // The claimer: claims what is due until both recoveries ended and nothing
                // is due any more.
                let mut claimed = 0;
                loop {
                    let done = finished[round].load(Ordering::SeqCst) == 2;
                    let due = store.due_messages(now(), 64).await?;
                    if done && due.is_empty() {
                        return Ok(claimed);
                    }
                    for message in due {
                        claimed += usize::from(claim(store.as_ref(), &message, "claimer").await);
                    }
                }
            }
        })
        .await;
        let mut claimed = 0;
        for (round, answers) in outcomes.into_iter().enumerate() {
            for answer in answers {
                claimed += answer.unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
        }
        let total = rounds * BATCH;
        assert_eq!(claimed, total, "every message claimed once");
        assert_eq!(
            count(&mut root, "outbox/t/").await,
            total as i64,
            "one state entry each"
        );
        assert_eq!(
            count(&mut root, "outbox/q/").await,
            total as i64,
            "one due entry each"
        );
        assert_eq!(count(&mut root, "outbox/o/").await, total as i64);
        assert_eq!(
            count(&mut root, "outbox/b/").await,
            0,
            "nothing left staged"
        );
        assert_eq!(count(&mut root, "outbox/c/").await, 0, "every marker gone");
        let sending = writer
            .list_messages("acme", Some(MessageState::Sending), None, total + 1)
            .await
            .unwrap();
        assert_eq!(sending.len(), total);
    }
}

/// Every record of `store`, as an export reads them.
async fn export(store: &dyn Store) -> Vec<mailroom::snapshot::Portable> {
    let mut records = Vec::new();
    store
        .export(&mut |record| {
            records.push(record);
            Ok(())
        })
        .await
        .unwrap();
    records
}

/// Export and import on the backend's own layouts: a batch too large for one etcd
/// transaction and its idempotency key (ids kept apart on etcd), a content of many parts
/// (apart from its record on sled); a batch staged and never committed is left out.
async fn an_export_holds_what_was_acknowledged_whole_and_restores_as_it_was(store: Arc<dyn Store>) {
    let key = master_key();
    store.set_import_mark(Some("digest")).await.unwrap();
    assert!(
        !store.holds_records().await.unwrap(),
        "the mark is no record"
    );
    let committed = messages("kept", 1500, "acme");
    let mut writer = store.enqueue("kept");
    for page in committed.chunks(500) {
        writer.write(page).await.unwrap();
    }
    writer
        .commit(&[], Some(&idempotency("many", &committed)))
        .await
        .unwrap();
    let mut large = message(&key, "large", "acme");
    large.content = Some(key.seal("content", &"x".repeat(20_000)));
    store
        .enqueue("one")
        .commit(std::slice::from_ref(&large), None)
        .await
        .unwrap();
    let mut open = store.enqueue("open");
    open.write(&messages("open", 3, "acme")).await.unwrap();
    assert!(store.holds_records().await.unwrap());

    let exported = export(store.as_ref()).await;
    let mut exported_ids = Vec::new();
    for record in &exported {
        match record {
            mailroom::snapshot::Portable::Message(m) => {
                if m.id == "large" {
                    assert_eq!(m.content, large.content, "the content whole");
                }
                exported_ids.push(m.id.clone());
            }
            mailroom::snapshot::Portable::Idempotency(i) => {
                assert_eq!(i.queued.message_ids, ids(&committed));
            }
            _ => {}
        }
    }
    assert_eq!(exported_ids.len(), 1501, "acknowledged messages only");
    assert!(!exported_ids.iter().any(|id| id.starts_with("open-")));

    store.remove_all().await.unwrap();
    assert!(!store.holds_records().await.unwrap());
    assert_eq!(
        store.import_mark().await.unwrap().as_deref(),
        Some("digest")
    );
    for chunk in exported.chunks(100) {
        store.restore(chunk).await.unwrap();
    }
    // Twice: the rerun of an import after a crash.
    store.restore(&exported[..10]).await.unwrap();
    store.set_import_mark(None).await.unwrap();
    assert_eq!(store.import_mark().await.unwrap(), None);
    let json = |records: &[mailroom::snapshot::Portable]| {
        records
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect::<Vec<_>>()
    };
    assert!(json(&export(store.as_ref()).await) == json(&exported));
    let kept = store.idempotency("acme", "many").await.unwrap().unwrap();
    assert_eq!(kept.queued.message_ids, ids(&committed));
    let read = store.message("large").await.unwrap().unwrap();
    assert_eq!(read.content, large.content);
    assert_eq!(store.pending_messages().await.unwrap(), 1501);
}

fn email_override(scope: &str, locale: &str, version: u64, subject: &str) -> TemplateOverride {
    TemplateOverride {
        scope: scope.into(),
        kind: EmailKind::Invitation,
        locale: locale.into(),
        source: EmailSource {
            subject: subject.into(),
            text: "t".into(),
            html: String::new(),
        },
        version,
        update_time: now(),
        updated_by: "k".into(),
    }
}

/// Overrides and locale settings: written only over the version read, kept apart by scope
/// (the platform's is the empty scope), listed per scope, removed.
async fn email_templates_swap_only_from_the_version_read(store: Arc<dyn Store>) {
    let kind = EmailKind::Invitation;
    assert!(store
        .email_override("acme", kind, "fr")
        .await
        .unwrap()
        .is_none());
    let first = email_override("acme", "fr", 5, "one");
    assert!(store
        .swap_email_override("acme", kind, "fr", 0, Some(&first))
        .await
        .unwrap());
    assert!(
        !store
            .swap_email_override("acme", kind, "fr", 0, Some(&first))
            .await
            .unwrap(),
        "not over a version it did not read"
    );
    let second = email_override("acme", "fr", 9, "two");
    assert!(store
        .swap_email_override("acme", kind, "fr", 5, Some(&second))
        .await
        .unwrap());
    let platform = email_override("", "fr", 3, "platform");
    assert!(store
        .swap_email_override("", kind, "fr", 0, Some(&platform))
        .await
        .unwrap());
    let other = email_override("acmex", "de", 4, "acmex");
    assert!(store
        .swap_email_override("acmex", kind, "de", 0, Some(&other))
        .await
        .unwrap());
    assert_eq!(
        store.email_override("acme", kind, "fr").await.unwrap(),
        Some(second.clone())
    );
    let mut reset = email_override("acme", "fr", 2, "another kind");
    reset.kind = EmailKind::PasswordReset;
    assert!(store
        .swap_email_override("acme", EmailKind::PasswordReset, "fr", 0, Some(&reset))
        .await
        .unwrap());
    let found = store.email_customisation("acme", kind).await.unwrap();
    assert_eq!(
        (found.locale, found.own, found.platform),
        (None, vec![second.clone()], vec![platform.clone()]),
        "the kind's alone, of acme (not acmex) and of the platform"
    );
    assert_eq!(
        store.email_overrides("acme").await.unwrap(),
        [second, reset]
    );
    assert_eq!(
        store.email_overrides("").await.unwrap(),
        std::slice::from_ref(&platform)
    );
    assert!(!store
        .swap_email_override("acme", kind, "fr", 5, None)
        .await
        .unwrap());
    assert!(store
        .swap_email_override("acme", kind, "fr", 9, None)
        .await
        .unwrap());
    assert_eq!(store.email_overrides("acme").await.unwrap().len(), 1);
    assert_eq!(store.email_overrides("").await.unwrap(), [platform]);

    let settings = LocaleSettings {
        organisation: "acme".into(),
        default_locale: "de".into(),
        version: 2,
        update_time: now(),
        updated_by: "k".into(),
    };
    assert!(store.locale_settings("acme").await.unwrap().is_none());
    assert!(store.swap_locale_settings(0, &settings).await.unwrap());
    assert!(!store.swap_locale_settings(0, &settings).await.unwrap());
    assert_eq!(
        store.locale_settings("acme").await.unwrap(),
        Some(settings.clone())
    );
    assert!(store.locale_settings("beta").await.unwrap().is_none());
    let found = store.email_customisation("acme", kind).await.unwrap();
    assert_eq!(found.locale, Some(settings));
    assert!(found.own.is_empty());
}

/// One import at a time on an etcd prefix: two imports run at once (a hostile review) each
/// wrote into the other's store and cleared the mark at its end, leaving a store that was
/// neither file, served as if whole. The first holds the prefix (a leased key that
/// removing the store's records leaves in place); a second is refused until it is let go.
#[cfg(feature = "etcd")]
mod etcd_import_lock {
    use super::*;
    use crate::support::etcd::Etcd;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_import_holds_its_etcd_prefix_alone() {
        let _watchdog = crate::support::watchdog();
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let first = etcd.store("/import-lock/").await.expect("connect to etcd");
        let second = etcd.store("/import-lock/").await.expect("connect to etcd");
        let held = first
            .lock_import()
            .await
            .expect("the first import holds it");
        first.set_import_mark(Some("first")).await.unwrap();
        first.remove_all().await.unwrap();
        assert!(
            !first.holds_records().await.unwrap(),
            "the mark and the hold are no records"
        );
        let refused = second
            .lock_import()
            .await
            .err()
            .expect("a second is refused");
        assert!(
            matches!(&refused, StoreError::Unavailable(why) if why.contains("another import")),
            "{refused:?}"
        );
        held.release().await;
        second
            .lock_import()
            .await
            .expect("once the first lets go, another may import")
            .release()
            .await;
    }
}
