//! The built binary as operators run it: JSON logs without secrets, SIGTERM exits 0, and a
//! restart on the same data directory keeps settings and keys.

use crate::support;

use std::time::{Duration, Instant};

use mailroom::proto::v1 as pb;
use support::process::Process;
use support::smtp::{Options, SmtpServer};
use support::Bearer;

const PASSWORD: &str = "process-test-password-7781";

#[tokio::test]
async fn sigterm_exits_cleanly_and_a_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let first = Process::start(dir.path(), &[]);
    let admin = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
    let admin = admin.trim();
    let channel = first.channel().await;
    let mut smtp = pb::smtp_admin_client::SmtpAdminClient::with_interceptor(
        channel.clone(),
        Bearer::new(admin),
    );
    let saved = smtp
        .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
            settings: Some(pb::SmtpSettings {
                host: "smtp.example.com".into(),
                port: 465,
                from: "alerts@example.com".into(),
                security: pb::ConnectionSecurity::Ssl.into(),
                username: "alerts".into(),
                password: PASSWORD.into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut tokens =
        pb::token_client::TokenClient::with_interceptor(channel.clone(), Bearer::new(admin));
    let token = tokens
        .issue_token(support::issue_request(
            "alice",
            pb::TokenPurpose::PasswordReset,
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    tokens
        .consume_token(pb::ConsumeTokenRequest {
            token: token.clone(),
            purpose: pb::TokenPurpose::PasswordReset.into(),
        })
        .await
        .unwrap();
    drop(tokens);
    let created = pb::api_keys_client::ApiKeysClient::with_interceptor(channel, Bearer::new(admin))
        .create_api_key(pb::CreateApiKeyRequest {
            name: "cortex".into(),
            organisation: "acme".into(),
            permissions: vec!["manageConfig".into()],
        })
        .await
        .unwrap()
        .into_inner();

    let (status, log) = first.terminate().await;
    assert!(status.success(), "exit status {status:?}\n{log}");
    assert!(
        log.contains("SMTP settings updated"),
        "the log is captured: {log}"
    );
    assert!(
        log.contains("\"key_id\""),
        "RPC spans carry the key id: {log}"
    );
    assert!(
        log.contains("token consumed"),
        "the token RPCs are logged: {log}"
    );
    for secret in [
        PASSWORD,
        admin,
        created.secret.as_str(),
        token.as_str(),
        &token[4..],
    ] {
        assert!(!log.contains(secret), "a secret reached the log");
    }

    let second = Process::start(dir.path(), &[]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("admin.key"))
            .unwrap()
            .trim(),
        admin
    );
    let channel = second.channel().await;
    let got = pb::smtp_admin_client::SmtpAdminClient::with_interceptor(
        channel.clone(),
        Bearer::new(admin),
    )
    .get_smtp_settings(pb::GetSmtpSettingsRequest {})
    .await
    .unwrap()
    .into_inner();
    assert_eq!(got, saved);
    let denied = pb::smtp_admin_client::SmtpAdminClient::with_interceptor(
        channel,
        Bearer::new(&created.secret),
    )
    .get_smtp_settings(pb::GetSmtpSettingsRequest {})
    .await
    .unwrap_err();
    assert_eq!(
        denied.code(),
        tonic::Code::PermissionDenied,
        "the created key is still known"
    );
    let (status, log) = second.terminate().await;
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn acknowledged_mail_survives_sigkill_with_at_most_one_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(Options::default());
    let first = Process::start(dir.path(), &[]);
    let admin = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
    let admin = admin.trim();
    let channel = first.channel().await;
    first.configure_smtp(admin, smtp.addr.port(), 2).await;
    let recipients: Vec<String> = (0..60).map(|i| format!("user{i}@example.com")).collect();
    let mut notifier =
        pb::notifier_client::NotifierClient::with_interceptor(channel, Bearer::new(admin));
    let mut ids = Vec::new();
    for chunk in recipients.chunks(20) {
        let answer = notifier
            .send_to_addresses(pb::SendToAddressesRequest {
                organisation: "acme".into(),
                to: chunk.to_vec(),
                subject: "crash test".into(),
                body: "body".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(answer.message_ids);
    }
    drop(notifier);
    first.kill();

    let second = Process::start(dir.path(), &[]);
    let mut notifier = pb::notifier_client::NotifierClient::with_interceptor(
        second.channel().await,
        Bearer::new(admin),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in &ids {
        loop {
            let message = notifier
                .get_message(pb::GetMessageRequest { id: id.clone() })
                .await
                .expect("every acknowledged message is still there")
                .into_inner();
            if message.state() == pb::MessageState::Sent {
                break;
            }
            assert!(Instant::now() < deadline, "{message:?} never sent");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let seen = smtp.seen();
    for recipient in &recipients {
        let copies = seen
            .messages
            .iter()
            .filter(|m| m.to == [recipient.clone()])
            .count();
        assert!(
            (1..=2).contains(&copies),
            "{recipient} received {copies} copies"
        );
    }
    drop(notifier);
    let (status, log) = second.terminate().await;
    assert!(status.success(), "{log}");
}
