//! Master-key rotation: `mailroom rotate-master-key` keeps every secret readable under a new
//! key, and a wrong key stops the start with a clear error.

use crate::support;

use std::process::Command;
use std::sync::Arc;

use mailroom::config::Args;
use mailroom::proto::v1 as pb;
use mailroom::server::Mailroom;
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
