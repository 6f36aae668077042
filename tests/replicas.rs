//! Several mailroom replicas on one real etcd: settings and keys changed through one are
//! used by the other, a token is consumed once across them, every message is delivered
//! once, a killed replica's claims are taken over, and an etcd outage is survived.
#![cfg(feature = "etcd")]

use crate::support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use futures_util::future::join_all;
use mailroom::config::{Args, StoreKind};
use mailroom::notify::MessageState;
use mailroom::proto::v1 as pb;
use mailroom::store::prelude::*;
use support::etcd::Etcd;
use support::process::Process;
use support::proxy::{Mode, Proxy};
use support::smtp::{Options, SmtpServer};
use support::{eventually, Bearer, TestServer};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const PREFIX: &str = "/mailroom/";
/// Claims outlive the longest send by this much (the default is a minute).
const CLAIM_MARGIN: &str = "2s";

/// A replica on `etcd`, sealing with the key file in `shared`, with its own data directory.
async fn replica(etcd: &Etcd, shared: &Path, data_dir: &Path) -> TestServer {
    replica_at(&etcd.endpoint, shared, data_dir).await
}

/// [`replica`], reaching etcd at `endpoint` (a proxy in front of it).
async fn replica_at(endpoint: &str, shared: &Path, data_dir: &Path) -> TestServer {
    let mut args = Args::with_data_dir(data_dir);
    args.store = StoreKind::Etcd;
    args.etcd_endpoints = vec![endpoint.to_string()];
    args.etcd_prefix = PREFIX.into();
    args.etcd_timeout = Duration::from_secs(2);
    args.master_key_file = Some(shared.join("master.key"));
    args.claim_margin = Duration::from_secs(2);
    TestServer::start_with(args).await
}

fn send_request(to: &[String], subject: &str) -> pb::SendToAddressesRequest {
    pb::SendToAddressesRequest {
        organisation: "acme".into(),
        to: to.to_vec(),
        subject: subject.into(),
        body: "body".into(),
        ..Default::default()
    }
}

fn recipients(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|n| format!("{prefix}{n}@example.com"))
        .collect()
}

/// How many copies of each message `smtp` received, by recipient.
fn copies(smtp: &SmtpServer) -> HashMap<String, usize> {
    let mut copies = HashMap::new();
    for message in smtp.seen().messages {
        for to in message.to {
            *copies.entry(to).or_default() += 1;
        }
    }
    copies
}

/// Waits (two minutes at most) until `smtp` received a message for every one of
/// `recipients`, then checks that each received exactly one.
async fn each_received_once(smtp: &SmtpServer, recipients: &[String]) {
    let what = format!("{} recipients reached", recipients.len());
    eventually(Duration::from_secs(120), &what, async || {
        copies(smtp).len() == recipients.len()
    })
    .await;
    let copies = copies(smtp);
    for recipient in recipients {
        assert_eq!(copies.get(recipient), Some(&1), "{recipient}");
    }
}

#[tokio::test]
async fn changes_through_one_replica_are_used_by_the_other() {
    let _watchdog = crate::support::watchdog();
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let shared = tempfile::tempdir().unwrap();
    let a = replica(&etcd, shared.path(), dirs[0].path()).await;
    let b = replica(&etcd, shared.path(), dirs[1].path()).await;
    assert!(!a.admin_key.is_empty(), "the first replica bootstraps");
    assert!(
        b.admin_key.is_empty(),
        "the second finds the key and creates none"
    );
    let admin = a.admin_key.clone();
    let keys = b
        .keys(&admin)
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .expect("B knows A's bootstrap key")
        .into_inner();
    assert_eq!(keys.keys.len(), 1, "one bootstrap key: {keys:?}");

    let first = SmtpServer::start(Options::default());
    let second = SmtpServer::start(Options::default());
    a.configure_smtp(first.addr.port()).await;
    b.notifier(&admin)
        .send_to_addresses(send_request(&["one@example.com".into()], "before"))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "first message at the first server",
        async || first.seen().messages.len() == 1,
    )
    .await;

    // B has the settings cached now; A moves them to the second server.
    a.configure_smtp(second.addr.port()).await;
    let port = u32::from(second.addr.port());
    let mut b_smtp = b.smtp(&admin);
    eventually(Duration::from_secs(5), "B sees A's settings", async || {
        let settings = b_smtp
            .get_smtp_settings(pb::GetSmtpSettingsRequest {})
            .await
            .unwrap()
            .into_inner();
        settings.port == port
    })
    .await;
    b.notifier(&admin)
        .send_to_addresses(send_request(&["two@example.com".into()], "after"))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "B's next send at the second server",
        async || second.seen().messages.len() == 1,
    )
    .await;
    assert_eq!(
        first.seen().messages.len(),
        1,
        "nothing more at the old server"
    );

    // A key B has cached, revoked through A, is refused by B.
    let created = a.create_key_full("admin", &["managePlatform"]).await;
    let mut as_key = b.smtp(&created.secret);
    as_key
        .get_smtp_settings(pb::GetSmtpSettingsRequest {})
        .await
        .expect("the new key works on B");
    a.keys(&admin)
        .revoke_api_key(pb::RevokeApiKeyRequest {
            id: created.key.unwrap().id,
        })
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "B refuses the revoked key",
        async || {
            let answer = as_key
                .get_smtp_settings(pb::GetSmtpSettingsRequest {})
                .await;
            answer.is_err_and(|status| status.code() == Code::Unauthenticated)
        },
    )
    .await;
}

#[tokio::test]
async fn a_token_is_consumed_once_across_replicas() {
    let _watchdog = crate::support::watchdog();
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let shared = tempfile::tempdir().unwrap();
    let a = replica(&etcd, shared.path(), dirs[0].path()).await;
    let b = replica(&etcd, shared.path(), dirs[1].path()).await;
    let admin = a.admin_key.clone();
    let token = a
        .tokens(&admin)
        .issue_token(support::issue_request(
            "alice",
            pb::TokenPurpose::PasswordReset,
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let consumers = (0..100).map(|n| {
        let mut client = if n % 2 == 0 {
            a.tokens(&admin)
        } else {
            b.tokens(&admin)
        };
        let token = token.clone();
        async move {
            client
                .consume_token(pb::ConsumeTokenRequest {
                    token,
                    purpose: pb::TokenPurpose::PasswordReset.into(),
                })
                .await
        }
    });
    let answers = join_all(consumers).await;
    let successes = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(
        successes, 1,
        "exactly one of 100 consumers across two replicas"
    );
    for refused in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    }
}

#[tokio::test]
async fn a_thousand_messages_through_two_replicas_are_each_delivered_once() {
    let _watchdog = crate::support::watchdog();
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let shared = tempfile::tempdir().unwrap();
    let a = replica(&etcd, shared.path(), dirs[0].path()).await;
    let b = replica(&etcd, shared.path(), dirs[1].path()).await;
    let admin = a.admin_key.clone();
    let smtp = SmtpServer::start(Options::default());
    a.configure_smtp(smtp.addr.port()).await;

    let everyone = recipients("r", 1000);
    let sends = everyone.chunks(50).enumerate().map(|(n, chunk)| {
        let mut notifier = if n % 2 == 0 {
            a.notifier(&admin)
        } else {
            b.notifier(&admin)
        };
        let request = send_request(chunk, "burst");
        async move { notifier.send_to_addresses(request).await.unwrap() }
    });
    join_all(sends).await;
    each_received_once(&smtp, &everyone).await;
}

#[tokio::test]
async fn a_killed_replicas_claims_are_delivered_by_the_other() {
    let _watchdog = crate::support::watchdog();
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let shared = tempfile::tempdir().unwrap();
    let key_file = shared.path().join("master.key");
    let a_dir = tempfile::tempdir().unwrap();
    let a = Process::start(
        a_dir.path(),
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            &etcd.endpoint,
            "--master-key-file",
            key_file.to_str().unwrap(),
            "--claim-margin",
            CLAIM_MARGIN,
        ],
    );
    let admin = std::fs::read_to_string(a_dir.path().join("admin.key")).unwrap();
    let admin = admin.trim().to_string();
    // A first sends to a server that accepts and never answers, so that its senders are
    // surely holding claims when it is killed.
    let silent = support::smtp::silent_server().await;
    a.configure_smtp(&admin, silent.port(), 1).await;
    let everyone = recipients("k", 1000);
    let mut notifier = pb::notifier_client::NotifierClient::with_interceptor(
        a.channel().await,
        Bearer::new(&admin),
    );
    for chunk in everyone.chunks(100) {
        notifier
            .send_to_addresses(send_request(chunk, "kill test"))
            .await
            .expect("acknowledged");
    }
    let view = etcd.store(PREFIX).await.unwrap();
    let sending = async || {
        view.list_messages("acme", Some(MessageState::Sending), None, 1000)
            .await
            .unwrap()
    };
    eventually(Duration::from_secs(30), "A claiming", async || {
        !sending().await.is_empty()
    })
    .await;
    // The settings now name the real server (for B), and A dies within the 1 s its
    // senders wait for a greeting.
    let smtp = SmtpServer::start(Options::default());
    a.configure_smtp(&admin, smtp.addr.port(), 1).await;
    drop(notifier);
    a.kill();
    let claimed = sending().await;
    assert!(!claimed.is_empty(), "A held claims when it was killed");

    let b_dir = tempfile::tempdir().unwrap();
    let b = replica(&etcd, shared.path(), b_dir.path()).await;
    eventually(
        Duration::from_secs(60),
        "B delivers everything",
        async || copies(&smtp).len() == everyone.len(),
    )
    .await;
    for message in &claimed {
        let sent = b
            .wait_for_state_as(&admin, &message.id, pb::MessageState::Sent)
            .await;
        assert!(sent.attempts >= 2, "sent by B after A's claim: {sent:?}");
    }
    let copies = copies(&smtp);
    for recipient in &everyone {
        let n = copies[recipient];
        assert!((1..=2).contains(&n), "{recipient} received {n} copies");
    }
}

#[tokio::test]
async fn an_etcd_outage_turns_health_off_and_back_and_loses_nothing() {
    let _watchdog = crate::support::watchdog();
    let Some(mut etcd) = Etcd::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let server = replica(&etcd, shared.path(), dir.path()).await;
    let admin = server.admin_key.clone();
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    // Stopped while these are being delivered: some claimed, some not yet.
    let before = recipients("o", 200);
    for chunk in before.chunks(100) {
        server
            .notifier(&admin)
            .send_to_addresses(send_request(chunk, "before the outage"))
            .await
            .expect("acknowledged");
    }
    etcd.stop();
    let mut health = HealthClient::new(server.channel());
    let status = async |health: &mut HealthClient<tonic::transport::Channel>| {
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status()
    };
    eventually(
        Duration::from_secs(15),
        "NOT_SERVING without etcd",
        async || status(&mut health).await == ServingStatus::NotServing,
    )
    .await;
    let refused = server
        .notifier(&admin)
        .send_to_addresses(send_request(&["during@example.com".into()], "during"))
        .await
        .expect_err("nothing is acknowledged without etcd");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    etcd.resume().await;
    eventually(Duration::from_secs(15), "SERVING again", async || {
        status(&mut health).await == ServingStatus::Serving
    })
    .await;
    let after = recipients("p", 5);
    server
        .notifier(&admin)
        .send_to_addresses(send_request(&after, "after the outage"))
        .await
        .expect("acknowledged again");
    eventually(
        Duration::from_secs(60),
        "every acknowledged message",
        async || copies(&smtp).len() == before.len() + after.len(),
    )
    .await;
    assert!(!copies(&smtp).contains_key("during@example.com"));
}

#[tokio::test]
async fn send_to_users_beyond_one_etcd_transaction_reaches_each_user_once() {
    let _watchdog = crate::support::watchdog();
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let shared = tempfile::tempdir().unwrap();
    let a = replica(&etcd, shared.path(), dirs[0].path()).await;
    let b = replica(&etcd, shared.path(), dirs[1].path()).await;
    let admin = a.admin_key.clone();
    // 1,200 users: staged in pages of 1,000, committed by marker, queued in chunks.
    let everyone = recipients("u", 1200);
    let upserts = everyone.chunks(100).map(|chunk| {
        let mut directory = a.directory(&admin);
        async move {
            for email in chunk {
                directory
                    .upsert_user(pb::UpsertUserRequest {
                        user: Some(pb::User {
                            login: email.clone(),
                            name: email.clone(),
                            organisations: vec!["acme".into()],
                            ..Default::default()
                        }),
                    })
                    .await
                    .unwrap();
            }
        }
    });
    join_all(upserts).await;
    let smtp = SmtpServer::start(Options::default());
    a.configure_smtp(smtp.addr.port()).await;
    let request = pb::SendToUsersRequest {
        organisation: "acme".into(),
        subject: "Hello {{user.name}}".into(),
        body: "Case opened.".into(),
        idempotency_key: "all-users".into(),
        ..Default::default()
    };
    let answer = b
        .notifier(&admin)
        .send_to_users(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.recipients, 1200);
    let again = a
        .notifier(&admin)
        .send_to_users(request)
        .await
        .unwrap()
        .into_inner();
    assert!(
        again.duplicate,
        "the key's first use, through the other replica"
    );
    assert_eq!(again.message_ids, answer.message_ids);
    each_received_once(&smtp, &everyone).await;
    // 1,200 ids are stored apart from the key's record, under the first request's batch;
    // the second request's copy went with its batch.
    let apart = keys_under(&etcd, "outbox/ii/").await;
    let batches: std::collections::BTreeSet<&[u8]> = apart
        .iter()
        .map(|key| key.rsplitn(2, |b| *b == b'/').nth(1).unwrap())
        .collect();
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(apart.len(), 2, "1,200 ids in parts of 1,000");
    // They go with the key when it is purged.
    let store = etcd.store(PREFIX).await.unwrap();
    let week_on = std::time::SystemTime::now() + Duration::from_secs(8 * 86_400);
    assert_eq!(store.purge_idempotency(week_on).await.unwrap(), 1);
    assert!(
        keys_under(&etcd, "outbox/ii/").await.is_empty(),
        "parts left after the purge"
    );
}

/// The keys under `path` of the store's prefix in `etcd`.
async fn keys_under(etcd: &Etcd, path: &str) -> Vec<Vec<u8>> {
    let mut client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_keys_only();
    let found = client
        .get(format!("{PREFIX}{path}"), Some(options))
        .await
        .unwrap();
    found.kvs().iter().map(|kv| kv.key().to_vec()).collect()
}

#[tokio::test]
async fn no_secret_reaches_etcd_in_plain_text() {
    let _watchdog = crate::support::watchdog();
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let server = replica(&etcd, shared.path(), dir.path()).await;
    let admin = server.admin_key.clone();
    let password = "etcd-smtp-password-4411";
    let body = "confidential incident body 7731";
    server
        .smtp(&admin)
        .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
            settings: Some(pb::SmtpSettings {
                host: "127.0.0.1".into(),
                port: support::smtp::refused_port().into(),
                from: "alerts@example.com".into(),
                username: "alerts".into(),
                password: password.into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    let created = server.create_key_full("acme", &["manageUser"]).await;
    let token = server
        .tokens(&admin)
        .issue_token(support::issue_request(
            "carol",
            pb::TokenPurpose::Invitation,
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    server
        .notifier(&admin)
        .send_to_addresses(pb::SendToAddressesRequest {
            organisation: "acme".into(),
            to: vec!["soc@example.com".into()],
            subject: "Case".into(),
            body: body.into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let mut client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    let everything = client
        .get(PREFIX, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut bytes = Vec::new();
    for kv in everything.kvs() {
        bytes.extend_from_slice(kv.key());
        bytes.extend_from_slice(kv.value());
    }
    assert!(everything.kvs().len() > 10, "the store holds the records");
    assert!(
        support::contains(&bytes, "carol@example.com"),
        "the search sees plain values"
    );
    for secret in [
        password,
        admin.as_str(),
        created.secret.as_str(),
        token.as_str(),
        body,
    ] {
        assert!(
            !support::contains(&bytes, secret),
            "{secret:?} is stored in plain text"
        );
    }
}

/// Requests with one idempotency key race through two replicas at once, on real threads
/// (two clients to each, 50 keys): each key queues one batch, and every answer, from
/// either replica, carries that batch's ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_through_two_replicas_at_once_queues_once() {
    let _watchdog = crate::support::watchdog();
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let shared = tempfile::tempdir().unwrap();
    let a = replica(&etcd, shared.path(), dirs[0].path()).await;
    let b = replica(&etcd, shared.path(), dirs[1].path()).await;
    let admin = a.admin_key.clone();
    // Nothing is sent: what counts is what was queued.
    a.configure_smtp(support::smtp::refused_port()).await;
    let to = recipients("idem", 5);
    let clients: Vec<_> = (0..4)
        .map(|n| if n % 2 == 0 { &a } else { &b }.notifier(&admin))
        .collect();
    let rounds = support::race(clients.len(), 50, move |round, n| {
        let mut client = clients[n].clone();
        let request = pb::SendToAddressesRequest {
            idempotency_key: format!("alert-{round}"),
            ..send_request(&to, "once")
        };
        async move {
            client
                .send_to_addresses(request)
                .await
                .unwrap()
                .into_inner()
        }
    })
    .await;
    let mut queued = 0;
    for (round, answers) in rounds.iter().enumerate() {
        let firsts = answers.iter().filter(|a| !a.duplicate).count();
        assert_eq!(firsts, 1, "key {round} used once: {answers:?}");
        assert!(
            answers
                .iter()
                .all(|a| a.message_ids == answers[0].message_ids),
            "key {round}: every answer the first one's ids: {answers:?}"
        );
        queued += answers[0].message_ids.len();
    }
    let store = etcd.store(PREFIX).await.expect("connect to etcd");
    assert_eq!(
        store.pending_messages().await.unwrap(),
        queued,
        "only the first batch of each key is queued"
    );
}

/// A key revoked through one replica while the other's watch on etcd is broken (its
/// connection cut by a proxy, new ones held): the other never accepts the key — while cut
/// it cannot vouch for any key (`UNAVAILABLE`), and once it reaches etcd again it refuses
/// this one (`UNAUTHENTICATED`), though it had it in memory from before the break.
#[tokio::test]
async fn a_key_revoked_while_a_replicas_watch_is_broken_is_never_accepted_by_it() {
    let _watchdog = crate::support::watchdog();
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let shared = tempfile::tempdir().unwrap();
    let a = replica(&etcd, shared.path(), dirs[0].path()).await;
    let etcd_addr = etcd.endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy = Proxy::start(etcd_addr, Mode::Open).await;
    let b = replica_at(
        &format!("http://{}", proxy.addr),
        shared.path(),
        dirs[1].path(),
    )
    .await;
    let created = a.create_key_full("acme", &["manageConfig"]).await;
    // GetMessage with no id: a key B accepts gets INVALID_ARGUMENT without B asking etcd
    // anything more; a key it refuses, UNAUTHENTICATED; one it cannot check, UNAVAILABLE.
    let mut as_key = b.notifier(&created.secret);
    let mut ask = async || {
        as_key
            .get_message(pb::GetMessageRequest { id: String::new() })
            .await
            .expect_err("no message has an empty id")
            .code()
    };
    for _ in 0..2 {
        assert_eq!(ask().await, Code::InvalidArgument, "B accepts the live key");
    }

    proxy.cut();
    eventually(
        Duration::from_secs(15),
        "B no longer vouching for keys, its watch broken",
        async || {
            let code = ask().await;
            assert!(
                matches!(code, Code::InvalidArgument | Code::Unavailable),
                "{code:?}"
            );
            code == Code::Unavailable
        },
    )
    .await;
    a.keys(&a.admin_key)
        .revoke_api_key(pb::RevokeApiKeyRequest {
            id: created.key.unwrap().id,
        })
        .await
        .expect("revoked through A");
    for _ in 0..3 {
        let code = ask().await;
        assert!(
            matches!(code, Code::Unavailable | Code::Unauthenticated),
            "B accepted a key revoked while its watch was broken: {code:?}"
        );
    }

    proxy.open();
    eventually(
        Duration::from_secs(30),
        "B refusing the revoked key once it reaches etcd again",
        async || {
            let code = ask().await;
            assert!(
                matches!(code, Code::Unavailable | Code::Unauthenticated),
                "B accepted a key revoked while its watch was broken: {code:?}"
            );
            code == Code::Unauthenticated
        },
    )
    .await;
    assert_eq!(ask().await, Code::Unauthenticated, "and keeps refusing it");
}
