//! Master-key rotation: `mailroom rotate-master-key` keeps every secret readable under a new
//! key, and a wrong key stops the start with a clear error.

use crate::support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mailroom::config::Args;
use mailroom::proto::v1 as pb;
use mailroom::server::Mailroom;
use support::proxy::{Mode, Proxy};
use support::smtp::{Pki, SmtpServer};
use support::TestServer;

#[tokio::test]
async fn rotation_keeps_every_secret_readable_and_a_wrong_key_fails_clearly() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(Pki::new());
    let smtp = SmtpServer::with_auth(&pki, "relay", "relay-password");
    let mut server = TestServer::start_in(dir.path()).await;
    server
        .configure_secure_smtp(smtp.addr.port(), &pki.ca_pem)
        .await;
    let dead = server
        .send_to(&["rejected@example.com"], "kept", "sealed body")
        .await
        .remove(0);
    server.wait_for_state(&dead, pb::MessageState::Dead).await;
    // A delivered message has no body left to seal again: rotation passes it by.
    let delivered = server
        .send_to(
            &["soc@example.com"],
            "delivered",
            "delivered before the rotation",
        )
        .await
        .remove(0);
    server
        .wait_for_state(&delivered, pb::MessageState::Sent)
        .await;
    server.stop().await.unwrap();

    let key_file = dir.path().join("master.key");
    let old_key = std::fs::read_to_string(&key_file).unwrap();
    let status = support::process::hermetic(&mut Command::new(env!("CARGO_BIN_EXE_mailroom")))
        .args(["rotate-master-key", "--data-dir"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let new_key = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(
        new_key.lines().count(),
        1,
        "the old key is dropped once everything is re-sealed"
    );

    let mut server = TestServer::start_in(dir.path()).await;
    let report = server
        .smtp(&server.admin_key)
        .test_smtp_settings(pb::TestSmtpSettingsRequest {
            settings: None,
            recipient: "soc@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        report.success,
        "the stored password still opens: {report:#?}"
    );
    smtp.reject(&[]);
    server
        .notifier(&server.admin_key)
        .retry_message(pb::RetryMessageRequest { id: dead.clone() })
        .await
        .unwrap();
    server.wait_for_state(&dead, pb::MessageState::Sent).await;
    assert!(smtp
        .seen()
        .messages
        .iter()
        .any(|m| m.text().contains("sealed body")));
    server.stop().await.unwrap();

    // The old key no longer opens anything: starting with it fails, clearly.
    std::fs::write(&key_file, &old_key).unwrap();
    let error = Mailroom::open(Args::with_data_dir(dir.path()))
        .await
        .err()
        .expect("refused");
    let message = format!("{error:#}");
    assert!(
        message.contains("does not open this store's secrets"),
        "{message}"
    );
    std::fs::write(&key_file, "not a key\n").unwrap();
    let error = Mailroom::open(Args::with_data_dir(dir.path()))
        .await
        .err()
        .expect("refused");
    assert!(format!("{error:#}").contains("64 hex digits"), "{error:#}");
}

/// How many messages the interrupted rotation has to re-seal: four pages of 500.
const BACKLOG: usize = 2000;

/// Runs `rotate-master-key` on `dir` and kills it (SIGKILL) as soon as it reports a first
/// page of message contents re-sealed and made durable; how many it had re-sealed.
fn rotate_and_kill_midway(dir: &Path) -> u64 {
    let mut child = support::process::hermetic(&mut Command::new(env!("CARGO_BIN_EXE_mailroom")))
        .args(["rotate-master-key", "--log-format", "json", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rotate-master-key");
    support::watch_child(child.id());
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let resealed = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no progress from the rotation: {log:#?}"));
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        log.push(line);
        if let Some(n) = event["resealed"].as_u64().filter(|n| *n > 0) {
            break n;
        }
    };
    child.kill().expect("SIGKILL the rotation");
    let status = child.wait().unwrap();
    support::forget_child(child.id());
    assert!(!status.success(), "killed, not finished: {log:#?}");
    resealed
}

/// `TestSmtpSettings` on the stored settings succeeds: the stored password opens.
async fn stored_password_opens(server: &TestServer) {
    let report = server
        .smtp(&server.admin_key)
        .test_smtp_settings(pb::TestSmtpSettingsRequest {
            settings: None,
            recipient: "soc@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(report.success, "the stored password opens: {report:#?}");
}

/// A rotation killed (SIGKILL) after re-sealing part of a large outbox: the next start
/// opens every secret (the SMTP password, API keys, every queued message's content) with
/// the keyring it left, and running the rotation again completes it.
#[tokio::test]
async fn a_rotation_killed_midway_leaves_every_secret_readable_and_completes_when_run_again() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(Pki::new());
    let smtp = SmtpServer::with_auth(&pki, "relay", "relay-password");
    // Nothing is delivered before the rotations: the relay closes every connection.
    let relay = Proxy::start(smtp.addr, Mode::Refuse).await;
    let mut server = TestServer::start_in(dir.path()).await;
    server
        .configure_secure_smtp(relay.port(), &pki.ca_pem)
        .await;
    let key = server.create_key("acme", &["manageConfig"]).await;
    let mut ids = Vec::new();
    for n in 0..BACKLOG / 100 {
        let to: Vec<String> = (0..100).map(|i| format!("r{n}-{i}@example.com")).collect();
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        ids.extend(server.send_to(&to, "kept", "sealed body").await);
    }
    server.stop().await.unwrap();
    let key_file = dir.path().join("master.key");
    let old_key = std::fs::read_to_string(&key_file).unwrap();

    let resealed = rotate_and_kill_midway(dir.path());
    assert!(
        resealed < BACKLOG as u64,
        "killed midway: {resealed} of {BACKLOG} re-sealed"
    );
    let keyring = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(
        keyring.lines().count(),
        2,
        "the killed rotation left the new key and the old one"
    );

    let mut server = TestServer::start_in(dir.path()).await;
    relay.open();
    stored_password_opens(&server).await;
    let message = server
        .notifier(&key)
        .get_message(pb::GetMessageRequest { id: ids[0].clone() })
        .await
        .expect("the API key still works")
        .into_inner();
    assert_eq!(message.subject, "kept");
    server.stop().await.unwrap();

    // Run again: it opens every content (half under each key) and completes.
    let status = support::process::hermetic(&mut Command::new(env!("CARGO_BIN_EXE_mailroom")))
        .args(["rotate-master-key", "--data-dir"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "the second rotation completes");
    let new_key = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(new_key.lines().count(), 1, "the old keys are dropped");
    for earlier in keyring.lines().chain(old_key.lines()) {
        assert!(!new_key.contains(earlier), "an earlier key is kept");
    }

    // Under the new key alone: the password, the API key, and every message's content.
    let server = TestServer::start_in(dir.path()).await;
    stored_password_opens(&server).await;
    server
        .notifier(&key)
        .get_message(pb::GetMessageRequest { id: ids[0].clone() })
        .await
        .expect("the API key still works");
    // Those due now (queued while the relay was refused) are delivered first: moving the
    // clock an hour while one is being sent would end its claim and send it twice.
    support::eventually(
        Duration::from_secs(180),
        "nothing queued or being sent",
        async || {
            let mut idle = true;
            for state in [pb::MessageState::Queued, pb::MessageState::Sending] {
                let listed = server
                    .notifier(&key)
                    .list_messages(pb::ListMessagesRequest {
                        organisation: "acme".into(),
                        state: state.into(),
                        page_size: 1,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                idle &= listed.messages.is_empty();
            }
            idle
        },
    )
    .await;
    // Messages refused by the relay before are due again.
    server.advance(Duration::from_secs(3600));
    let what = format!("{BACKLOG} messages delivered");
    support::eventually(Duration::from_secs(180), &what, async || {
        smtp.seen().messages.len() >= BACKLOG + 2
    })
    .await;
    let seen = smtp.seen().messages;
    let bodies = seen
        .iter()
        .filter(|m| m.text().contains("sealed body"))
        .count();
    assert_eq!(bodies, BACKLOG, "each message once, with its content");
}
