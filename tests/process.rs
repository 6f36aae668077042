//! The built binary as operators run it: JSON logs without secrets, SIGTERM exits 0, a
//! restart on the same data directory keeps settings and keys, and SIGKILL loses nothing
//! acknowledged (mail, issued and consumed tokens).

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mailroom::proto::v1 as pb;
use support::process::Process;
use support::smtp::{Options, SmtpServer};
use support::Bearer;

const PASSWORD: &str = "process-test-password-7781";

#[tokio::test]
async fn sigterm_exits_cleanly_and_a_restart_keeps_everything() {
    let _watchdog = crate::support::watchdog();
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
    let issued = log
        .lines()
        .find(|line| line.contains("token issued"))
        .unwrap_or_else(|| panic!("the token RPCs are logged: {log}"));
    assert!(
        issued.contains("\"organisation\":\"acme\""),
        "the span names the organisation an admin key acts for: {issued}"
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

/// SIGKILL with mail both sent and unsent: a third of it was delivered before the kill,
/// the rest was acknowledged and still waiting on a relay that did not answer (a gate that
/// holds connections silent until after the kill). The restart delivers every
/// acknowledged message, each at most twice.
#[tokio::test]
async fn acknowledged_mail_survives_sigkill_with_at_most_one_duplicate() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(Options::default());
    let (gate, open) = gated_relay(smtp.addr).await;
    let first = Process::start(dir.path(), &[]);
    let admin = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
    let admin = admin.trim();
    let channel = first.channel().await;
    first.configure_smtp(admin, smtp.addr.port(), 2).await;
    let recipients: Vec<String> = (0..60).map(|i| format!("user{i}@example.com")).collect();
    let mut notifier =
        pb::notifier_client::NotifierClient::with_interceptor(channel, Bearer::new(admin));
    let mut ids = Vec::new();
    for (n, chunk) in recipients.chunks(20).enumerate() {
        if n == 1 {
            // The first 20 are delivered; what follows waits on a relay that does not
            // answer (well within its 10 s timeout when the kill comes).
            wait_until_sent(&mut notifier, &ids).await;
            first.configure_smtp(admin, gate.port(), 10).await;
        }
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
    let at_kill = smtp.seen().messages.len();
    assert!(
        at_kill < recipients.len(),
        "mail was unsent at the kill: {at_kill} of {} delivered",
        recipients.len()
    );
    open.store(true, Ordering::SeqCst);

    let second = Process::start(dir.path(), &[]);
    let mut notifier = pb::notifier_client::NotifierClient::with_interceptor(
        second.channel().await,
        Bearer::new(admin),
    );
    wait_until_sent(&mut notifier, &ids).await;
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

/// A relay in front of `to`: until `open` is set it accepts connections and never answers
/// (a client waits for a greeting, its message unsent); then it forwards new ones to `to`.
async fn gated_relay(to: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicBool::new(false));
    let opened = open.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut client, _)) = listener.accept().await {
            if !opened.load(Ordering::SeqCst) {
                held.push(client);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (addr, open)
}

/// Waits (20 s at most) until every message of `ids` is sent, each still there.
async fn wait_until_sent(
    notifier: &mut pb::notifier_client::NotifierClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
    >,
    ids: &[String],
) {
    support::eventually(Duration::from_secs(20), "every message sent", async || {
        for id in ids {
            let message = notifier
                .get_message(pb::GetMessageRequest { id: id.clone() })
                .await
                .expect("every acknowledged message is still there")
                .into_inner();
            if message.state() != pb::MessageState::Sent {
                return Err(message);
            }
        }
        Ok(())
    })
    .await;
}

/// SIGKILL in the middle of a burst of issues and consumptions: every token whose issue was
/// acknowledged verifies after the restart, and every consumption acknowledged stays.
#[tokio::test]
async fn acknowledged_token_writes_survive_sigkill() {
    let _watchdog = crate::support::watchdog();
    use std::sync::Mutex;
    let dir = tempfile::tempdir().unwrap();
    let first = Process::start(dir.path(), &[]);
    let admin = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
    let admin = admin.trim().to_string();
    let channel = first.channel().await;
    let issued = Arc::new(Mutex::new(Vec::<String>::new()));
    // Consumptions asked for, and those acknowledged.
    let asked = Arc::new(Mutex::new(Vec::<String>::new()));
    let consumed = Arc::new(Mutex::new(Vec::<String>::new()));
    let enough = Arc::new(tokio::sync::Notify::new());
    let clients: Vec<_> = (0..8)
        .map(|n| {
            let mut tokens = pb::token_client::TokenClient::with_interceptor(
                channel.clone(),
                Bearer::new(&admin),
            );
            let (issued, asked, consumed, enough) = (
                issued.clone(),
                asked.clone(),
                consumed.clone(),
                enough.clone(),
            );
            tokio::spawn(async move {
                for i in 0.. {
                    let login = format!("crash{n}-{i}");
                    let request = support::issue_request(&login, pb::TokenPurpose::PasswordReset);
                    let Ok(answer) = tokens.issue_token(request).await else {
                        return;
                    };
                    let token = answer.into_inner().token;
                    let count = {
                        let mut issued = issued.lock().unwrap();
                        issued.push(token.clone());
                        issued.len()
                    };
                    if count == 200 {
                        enough.notify_one();
                    }
                    if i % 2 == 1 {
                        continue;
                    }
                    asked.lock().unwrap().push(token.clone());
                    let consume = pb::ConsumeTokenRequest {
                        token: token.clone(),
                        purpose: pb::TokenPurpose::PasswordReset.into(),
                    };
                    if tokens.consume_token(consume).await.is_err() {
                        return;
                    }
                    consumed.lock().unwrap().push(token);
                }
            })
        })
        .collect();
    support::within(Duration::from_secs(60), "enough load", enough.notified()).await;
    first.kill();
    for client in clients {
        client.await.unwrap();
    }

    let second = Process::start(dir.path(), &[]);
    let mut tokens = pb::token_client::TokenClient::with_interceptor(
        second.channel().await,
        Bearer::new(&admin),
    );
    let (issued, asked, consumed) = (
        issued.lock().unwrap().clone(),
        asked.lock().unwrap().clone(),
        consumed.lock().unwrap().clone(),
    );
    assert!(issued.len() >= 200);
    let mut checked = 0;
    for token in &issued {
        let verified = tokens
            .verify_token(pb::VerifyTokenRequest {
                token: token.clone(),
                purpose: pb::TokenPurpose::PasswordReset.into(),
            })
            .await;
        if consumed.contains(token) {
            let status = verified.expect_err("a consumed token stays consumed");
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
            checked += 1;
        } else if !asked.contains(token) {
            verified.expect("an acknowledged issue survives");
            checked += 1;
        }
    }
    assert!(checked >= issued.len() - 8, "{checked} of {}", issued.len());
    drop(tokens);
    let (status, log) = second.terminate().await;
    assert!(status.success(), "{log}");
}

/// A retry with an idempotency key answers the first call's ids only once they are durable:
/// pairs of calls with one key race, the process is killed mid-burst, and every id that
/// either call of a pair acknowledged is still there after the restart.
#[tokio::test]
async fn an_acknowledged_replay_survives_sigkill() {
    let _watchdog = crate::support::watchdog();
    use std::sync::Mutex;
    let dir = tempfile::tempdir().unwrap();
    let first = Process::start(dir.path(), &[]);
    let admin = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
    let admin = admin.trim().to_string();
    // Nothing listens there: the messages stay pending, which is all this needs.
    first.configure_smtp(&admin, support::free_port(), 1).await;
    let channel = first.channel().await;
    let (acknowledged, replays) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0)));
    let enough = Arc::new(tokio::sync::Notify::new());
    let clients: Vec<_> = (0..8)
        .map(|n| {
            let notifier = pb::notifier_client::NotifierClient::with_interceptor(
                channel.clone(),
                Bearer::new(&admin),
            );
            let (acknowledged, replays, enough) =
                (acknowledged.clone(), replays.clone(), enough.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let request = pb::SendToAddressesRequest {
                        organisation: "acme".into(),
                        to: vec![format!("r{n}-{i}@example.com")],
                        subject: "s".into(),
                        body: "b".into(),
                        idempotency_key: format!("k{n}-{i}"),
                        ..Default::default()
                    };
                    let (mut a, mut b) = (notifier.clone(), notifier.clone());
                    let (one, two) = tokio::join!(
                        a.send_to_addresses(request.clone()),
                        b.send_to_addresses(request)
                    );
                    let answers: Vec<_> = [one, two].into_iter().flatten().collect();
                    if answers.is_empty() {
                        return;
                    }
                    let mut replayed = replays.lock().unwrap();
                    for answer in answers {
                        let answer = answer.into_inner();
                        *replayed += usize::from(answer.duplicate);
                        acknowledged.lock().unwrap().extend(answer.message_ids);
                    }
                    if *replayed >= 100 {
                        enough.notify_one();
                    }
                }
            })
        })
        .collect();
    support::within(Duration::from_secs(60), "enough load", enough.notified()).await;
    first.kill();
    for client in clients {
        client.await.unwrap();
    }

    let second = Process::start(dir.path(), &[]);
    let mut notifier = pb::notifier_client::NotifierClient::with_interceptor(
        second.channel().await,
        Bearer::new(&admin),
    );
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 200,
        "{} acknowledged",
        acknowledged.len()
    );
    for id in &acknowledged {
        notifier
            .get_message(pb::GetMessageRequest { id: id.clone() })
            .await
            .unwrap_or_else(|e| panic!("acknowledged message {id} lost: {e:?}"));
    }
    drop(notifier);
    let (status, log) = second.terminate().await;
    assert!(status.success(), "{log}");
}

/// A relay in front of `to` that holds every connection silent (a client waits for the
/// greeting) until `open` is notified, then forwards each, held ones included.
async fn holding_relay(to: SocketAddr) -> (SocketAddr, Arc<tokio::sync::watch::Sender<bool>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (open, opened) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut opened = opened.clone();
            tokio::spawn(async move {
                if opened.wait_for(|o| *o).await.is_err() {
                    return;
                }
                if let Ok(mut server) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (addr, Arc::new(open))
}

/// A message being sent (its connection open, the server's greeting not yet come) when
/// SIGTERM arrives: if the relay answers within the grace period, the send finishes
/// before the exit and the message is SENT after a restart (never sent again); if it does
/// not, the process exits after the grace period with the message unsent, and the next
/// start sends it — once either way.
#[tokio::test]
async fn shutdown_with_a_send_in_flight_finishes_it_or_leaves_it_for_the_next_start() {
    let _watchdog = crate::support::watchdog();
    for relay_answers_in_grace in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let smtp = SmtpServer::start(Options::default());
        let (relay, open) = holding_relay(smtp.addr).await;
        let grace = if relay_answers_in_grace { "5s" } else { "1s" };
        let mut first = Process::start(dir.path(), &["--shutdown-grace", grace]);
        let admin = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
        let admin = admin.trim().to_string();
        first.configure_smtp(&admin, relay.port(), 10).await;
        let mut notifier = pb::notifier_client::NotifierClient::with_interceptor(
            first.channel().await,
            Bearer::new(&admin),
        );
        let id = notifier
            .send_to_addresses(pb::SendToAddressesRequest {
                organisation: "acme".into(),
                to: vec!["soc@example.com".into()],
                subject: "in flight".into(),
                body: "body".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .message_ids
            .remove(0);
        support::eventually(Duration::from_secs(10), "the send in flight", async || {
            let message = notifier
                .get_message(pb::GetMessageRequest { id: id.clone() })
                .await
                .unwrap()
                .into_inner();
            (message.state() == pb::MessageState::Sending).then_some(())
        })
        .await;
        drop(notifier);
        let case = if relay_answers_in_grace {
            "the relay answers within the grace period"
        } else {
            "the relay answers after the exit"
        };
        first.begin_shutdown();
        if relay_answers_in_grace {
            // A slow relay: it answers well within the grace period, but long after a
            // shutdown that did not wait for the send would have exited.
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(first.running(), "{case}: shutdown waits for the send");
            open.send_replace(true);
        }
        let stopped = first.terminate().await;
        let (status, log) = stopped;
        assert!(status.success(), "{case}: {status:?}\n{log}");
        let received = smtp.seen().messages.len();
        if relay_answers_in_grace {
            assert_eq!(received, 1, "{case}: sent before the exit\n{log}");
        } else {
            assert_eq!(received, 0, "{case}: nothing sent yet");
            open.send_replace(true);
        }

        let second = Process::start(dir.path(), &[]);
        let mut notifier = pb::notifier_client::NotifierClient::with_interceptor(
            second.channel().await,
            Bearer::new(&admin),
        );
        if relay_answers_in_grace {
            let message = notifier
                .get_message(pb::GetMessageRequest { id: id.clone() })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                message.state(),
                pb::MessageState::Sent,
                "{case}: its outcome was kept"
            );
        } else {
            wait_until_sent(&mut notifier, std::slice::from_ref(&id)).await;
        }
        drop(notifier);
        let (status, log) = second.terminate().await;
        assert!(status.success(), "{case}: {log}");
        assert_eq!(smtp.seen().messages.len(), 1, "{case}: sent once");
    }
}
