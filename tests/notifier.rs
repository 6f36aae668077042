//! EmailerToAddr and EmailerToUser end to end: rendered templates reach a real SMTP server
//! through the outbox; idempotency; header injection; retries while SMTP is down; a 5xx
//! that kills one message, and RetryMessage; cancel; the outbox's status RPCs.

use crate::support;

use std::time::Duration;

use mailroom::proto::v1 as pb;
use prost_types::value::Kind;
use support::smtp::{held_listener, Options, SmtpServer};
use support::{all_bytes, contains, violated_fields, TestServer};
use tonic::Code;

fn context(pairs: &[(&str, prost_types::Value)]) -> Option<prost_types::Struct> {
    Some(prost_types::Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    })
}

fn string(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn number(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn object(pairs: &[(&str, prost_types::Value)]) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::StructValue(context(pairs).unwrap())),
    }
}

fn case() -> Option<prost_types::Struct> {
    context(&[(
        "case",
        object(&[
            ("number", number(42.0)),
            ("title", string("Phishing <campaign> & more")),
            ("severity", number(3.0)),
            ("tlp", number(2.0)),
            ("pap", number(1.0)),
            ("createdAt", number(1_764_057_600_000.0)),
            ("owner", string("analyst@example.com")),
        ]),
    )])
}

fn to_addresses(to: &[&str], subject: &str, body: &str) -> pb::SendToAddressesRequest {
    pb::SendToAddressesRequest {
        organisation: "acme".into(),
        to: to.iter().map(|t| t.to_string()).collect(),
        subject: subject.into(),
        body: body.into(),
        context: case(),
        ..Default::default()
    }
}

async fn send(server: &TestServer, request: pb::SendToAddressesRequest) -> pb::SendResponse {
    server
        .notifier(&server.admin_key)
        .send_to_addresses(request)
        .await
        .expect("send")
        .into_inner()
}

async fn send_err(server: &TestServer, request: pb::SendToAddressesRequest) -> tonic::Status {
    server
        .notifier(&server.admin_key)
        .send_to_addresses(request)
        .await
        .expect_err("refused")
}

#[tokio::test]
async fn a_message_to_two_addresses_arrives_rendered() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let body = "Case #{{case.number}}: {{case.title}}\n\
                TLP:{{tlpLabel case.tlp}} PAP:{{papLabel case.pap}} \
                severity {{severityLabel case.severity}}\n\
                opened {{dateFormat case.createdAt \"EEEE dd MMMM yyyy HH:mm\"}} / \
                {{dateFormat case.createdAt \"EEEE dd MMMM yyyy\" \"fr\"}}\n\
                {{#if (eq case.severity 3)}}high priority{{/if}}";
    let answer = send(
        &server,
        to_addresses(
            &["{{case.owner}}", "soc@example.com"],
            "[{{severityLabel case.severity}}] Case #{{case.number}}",
            body,
        ),
    )
    .await;
    assert_eq!(answer.recipients, 2);
    assert!(!answer.duplicate);
    for id in &answer.message_ids {
        let sent = server.wait_for_state(id, pb::MessageState::Sent).await;
        assert_eq!(sent.attempts, 1);
        assert!(sent.sent_time.is_some());
    }
    let mut received = smtp.seen().messages;
    received.sort_by(|a, b| a.to.cmp(&b.to));
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].to, ["analyst@example.com"]);
    assert_eq!(received[1].to, ["soc@example.com"]);
    for message in &received {
        assert_eq!(
            message.header("Subject").as_deref(),
            Some("[HIGH] Case #42")
        );
        let text = &message.data;
        assert!(
            text.contains("Case #42: Phishing <campaign> & more"),
            "text is not escaped: {text}"
        );
        assert!(text.contains("TLP:AMBER PAP:GREEN severity HIGH"), "{text}");
        assert!(
            text.contains("opened Tuesday 25 November 2025 08:00 / mardi 25 novembre 2025"),
            "{text}"
        );
        assert!(text.contains("high priority"), "{text}");
    }
    let first = server
        .notifier(&server.admin_key)
        .get_message(pb::GetMessageRequest {
            id: answer.message_ids[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let delivered = received.iter().find(|m| m.to[0] == first.to).unwrap();
    assert_eq!(
        delivered.header("Message-ID").as_deref(),
        Some(first.message_id_header.as_str())
    );
}

#[tokio::test]
async fn html_bodies_escape_values_and_carry_a_text_part() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let mut request = to_addresses(
        &["soc@example.com"],
        "Case {{case.number}}",
        "<h1>{{case.title}}</h1>",
    );
    request.format = pb::BodyFormat::Html.into();
    let answer = send(&server, request).await;
    server
        .wait_for_state(&answer.message_ids[0], pb::MessageState::Sent)
        .await;
    let data = &smtp.seen().messages[0].data;
    assert!(data.contains("multipart/alternative"), "{data}");
    assert!(
        data.contains("text/plain") && data.contains("text/html"),
        "{data}"
    );
    let (text, html) = data
        .split_once("Content-Type: text/html")
        .expect("an HTML part");
    assert!(
        html.contains("<h1>Phishing &lt;campaign&gt; &amp; more</h1>"),
        "escaped in HTML: {html}"
    );
    assert!(
        text.contains("Phishing <campaign> & more"),
        "the text part reads as text: {text}"
    );
}

#[tokio::test]
async fn a_broken_template_names_its_field() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    server.configure_smtp(1).await;
    let status = send_err(
        &server,
        to_addresses(&["soc@example.com"], "{{#if case}}unclosed", "ok"),
    )
    .await;
    assert_eq!(violated_fields(&status), ["subject"]);
    assert!(status.message().contains("line 1"), "{status:?}");
    let status = send_err(
        &server,
        to_addresses(&["a@example.com", "{{bad"], "s", "ok"),
    )
    .await;
    assert_eq!(violated_fields(&status), ["to[1]"]);
    let status = send_err(
        &server,
        to_addresses(&["a@example.com"], "s", "{{dateFormat case.title}}"),
    )
    .await;
    assert_eq!(violated_fields(&status), ["body"]);
    let status = send_err(&server, to_addresses(&[], "", "")).await;
    let mut fields = violated_fields(&status);
    fields.sort();
    assert_eq!(fields, ["body", "subject", "to"]);
}

#[tokio::test]
async fn sending_without_smtp_settings_is_a_failed_precondition() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let status = send_err(&server, to_addresses(&["soc@example.com"], "s", "b")).await;
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn header_injection_never_reaches_the_server() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let evil = "x\r\nBcc: evil@example.org";
    let attempts: Vec<(&str, pb::SendToAddressesRequest)> = vec![
        ("subject", {
            let mut r = to_addresses(&["soc@example.com"], "{{title}}", "b");
            r.context = context(&[("title", string(evil))]);
            r
        }),
        (
            "subject",
            to_addresses(&["soc@example.com"], "a\r\nBcc: evil@example.org", "b"),
        ),
        ("from", {
            let mut r = to_addresses(&["soc@example.com"], "s", "b");
            r.from = "{{sender}}".into();
            r.context = context(&[("sender", string("me@example.com\r\nBcc: evil@example.org"))]);
            r
        }),
        ("to[0]", {
            let mut r = to_addresses(&["{{who}}"], "s", "b");
            r.context = context(&[("who", string("soc@example.com\nBcc: evil@example.org"))]);
            r
        }),
        (
            "to[0]",
            to_addresses(&["soc@example.com, evil@example.org"], "s", "b"),
        ),
        (
            "to[0]",
            to_addresses(&["soc@example.com\r\nevil@example.org"], "s", "b"),
        ),
    ];
    for (field, request) in attempts {
        let status = send_err(&server, request).await;
        assert_eq!(violated_fields(&status), [field], "{status:?}");
    }
    // Header-like text without a line break is only text.
    let answer = send(
        &server,
        to_addresses(&["soc@example.com"], "Bcc: evil@example.org", "b"),
    )
    .await;
    server
        .wait_for_state(&answer.message_ids[0], pb::MessageState::Sent)
        .await;
    let seen = smtp.seen();
    assert_eq!(seen.messages.len(), 1);
    assert_eq!(seen.messages[0].to, ["soc@example.com"]);
    let head = seen.messages[0]
        .data
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_string();
    assert!(
        !head
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
        "{head}"
    );
}

#[tokio::test]
async fn send_to_users_reaches_the_unlocked_users_of_the_organisation() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let mut directory = server.directory(&server.admin_key);
    for (login, name, email, organisations, locked) in [
        ("alice", "Alice", "alice@example.com", vec!["acme"], false),
        ("bob", "Bob", "bob@example.com", vec!["acme"], true),
        ("carol", "Carol", "carol@example.com", vec!["other"], false),
        ("dave@example.com", "Dave", "", vec!["acme", "other"], false),
        ("erin", "Erin", "", vec!["acme"], false),
    ] {
        directory
            .upsert_user(pb::UpsertUserRequest {
                user: Some(pb::User {
                    login: login.into(),
                    name: name.into(),
                    email: email.into(),
                    organisations: organisations.into_iter().map(String::from).collect(),
                    locked,
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    let answer = server
        .notifier(&server.admin_key)
        .send_to_users(pb::SendToUsersRequest {
            organisation: "acme".into(),
            subject: "Hello {{user.name}}".into(),
            body: "Dear {{user.name}} ({{user.login}}), case {{case.number}} was opened.".into(),
            context: case(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.recipients, 2,
        "alice and dave: bob is locked, carol elsewhere, erin has no address"
    );
    for id in &answer.message_ids {
        server.wait_for_state(id, pb::MessageState::Sent).await;
    }
    let mut received = smtp.seen().messages;
    received.sort_by(|a, b| a.to.cmp(&b.to));
    assert_eq!(received[0].to, ["alice@example.com"]);
    assert_eq!(
        received[0].header("Subject").as_deref(),
        Some("Hello Alice")
    );
    assert!(received[0]
        .data
        .contains("Dear Alice (alice), case 42 was opened."));
    assert_eq!(received[1].to, ["dave@example.com"]);
    assert!(received[1].data.contains("Dear Dave (dave@example.com)"));
}

#[tokio::test]
async fn the_same_idempotency_key_sends_once() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let mut request = to_addresses(&["soc@example.com"], "s", "b");
    request.idempotency_key = "alert-7-notification".into();
    let first = send(&server, request.clone()).await;
    let second = send(&server, request.clone()).await;
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.message_ids, second.message_ids);
    assert_eq!(first.recipients, second.recipients);
    server
        .wait_for_state(&first.message_ids[0], pb::MessageState::Sent)
        .await;
    let listed = server
        .notifier(&server.admin_key)
        .list_messages(pb::ListMessagesRequest {
            organisation: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.messages.len(), 1);
    assert_eq!(smtp.seen().messages.len(), 1);
    // Another organisation's identical key is its own.
    request.organisation = "other".into();
    assert!(!send(&server, request).await.duplicate);
}

/// Requests with one idempotency key race, each on a thread and a connection of its own (as
/// clients of a production server do), key after key: one queues its messages, every
/// other answers their ids as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_requests_with_one_idempotency_key_queue_once() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    // Nothing is sent: what counts is what was queued.
    server.configure_smtp(support::smtp::refused_port()).await;
    let to: Vec<String> = (0..10).map(|n| format!("soc{n}@example.com")).collect();
    let clients: Vec<_> = (0..4).map(|_| server.notifier(&server.admin_key)).collect();
    let rounds = support::race(clients.len(), 200, move |round, n| {
        let mut client = clients[n].clone();
        let request = pb::SendToAddressesRequest {
            organisation: "acme".into(),
            to: to.clone(),
            subject: "s".into(),
            body: "b".into(),
            idempotency_key: format!("alert-{round}"),
            ..Default::default()
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
        assert_eq!(firsts, 1, "key {round} used once");
        assert!(
            answers
                .iter()
                .all(|a| a.message_ids == answers[0].message_ids),
            "key {round}: every answer the first one's ids"
        );
        queued += answers[0].message_ids.len();
    }
    assert_eq!(all_messages(&server, "acme").await.len(), queued);
}

/// Every message of `organisation`, page after page.
async fn all_messages(server: &TestServer, organisation: &str) -> Vec<pb::Message> {
    let mut notifier = server.notifier(&server.admin_key);
    let (mut messages, mut token) = (Vec::new(), String::new());
    loop {
        let page = notifier
            .list_messages(pb::ListMessagesRequest {
                organisation: organisation.into(),
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        messages.extend(page.messages);
        if page.next_page_token.is_empty() {
            return messages;
        }
        token = page.next_page_token;
    }
}

/// When the settings change, the sender leaves its connection to the old server: one that
/// never answers QUIT must neither hold up the next message to the new server nor fail
/// it (the send's bound running out) and pause delivery.
#[tokio::test]
async fn a_server_mute_at_quit_holds_up_nothing() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(one_sender(dir.path())).await;
    let mute = support::smtp::mute_at_quit_server().await;
    server.configure_smtp(mute.port()).await;
    let first = send(&server, to_addresses(&["soc@example.com"], "first", "b")).await;
    server
        .wait_for_state(&first.message_ids[0], pb::MessageState::Sent)
        .await;
    let smtp = SmtpServer::start(Options::default());
    // A long timeout: a QUIT to the old server waited on (bounded by it) would outlast
    // wait_for_state's 10 s.
    server
        .save_smtp(pb::SmtpSettings {
            host: "127.0.0.1".into(),
            port: smtp.addr.port().into(),
            from: "thehive@example.com".into(),
            timeout: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await;
    let second = send(&server, to_addresses(&["soc@example.com"], "second", "b")).await;
    let sent = server
        .wait_for_state(&second.message_ids[0], pb::MessageState::Sent)
        .await;
    assert_eq!(sent.attempts, 1, "{sent:?}");
    assert_eq!(smtp.seen().messages.len(), 1);
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_on_its_body() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let body = |kib: usize| "a notification line of text\n".repeat(kib * 1024 / 28);
    let refused = send_err(
        &server,
        to_addresses(&["a@example.com"], "big", &body(1100)),
    )
    .await;
    assert_eq!(violated_fields(&refused), ["body"]);
    assert!(refused.message().contains("at most 1048576"), "{refused:?}");
    let queued = send(&server, to_addresses(&["a@example.com"], "big", &body(900))).await;
    server
        .wait_for_state(&queued.message_ids[0], pb::MessageState::Sent)
        .await;
}

/// A server on `dir` with one sender, whose SMTP server is a
/// [`support::smtp::strict_server`], and what that server saw.
async fn with_a_strict_server(
    dir: &std::path::Path,
    pipelining: bool,
) -> (
    TestServer,
    std::sync::Arc<std::sync::Mutex<support::smtp::Reads>>,
) {
    let server = TestServer::start_with(one_sender(dir)).await;
    let (smtp, reads) = support::smtp::strict_server(pipelining).await;
    server.configure_smtp(smtp.port()).await;
    (server, reads)
}

/// Sends a message to `to` and waits for it to reach `state`.
async fn send_one(server: &TestServer, to: &str, state: pb::MessageState) -> pb::Message {
    let queued = send(server, to_addresses(&[to], "s", "b")).await;
    server.wait_for_state(&queued.message_ids[0], state).await
}

/// A server's arguments with one sender, on `dir`.
fn one_sender(dir: &std::path::Path) -> mailroom::config::Args {
    let mut args = mailroom::config::Args::with_data_dir(dir);
    args.workers = 1;
    args
}

#[tokio::test]
async fn a_server_that_offers_pipelining_gets_a_message_s_commands_in_one_write() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let (server, reads) = with_a_strict_server(dir.path(), true).await;
    // A line of the body that starts with a dot, which only the final one may.
    let queued = send(
        &server,
        to_addresses(&["a@example.com"], "s", "first\n.dotted\n."),
    )
    .await;
    let sent = server
        .wait_for_state(&queued.message_ids[0], pb::MessageState::Sent)
        .await;
    assert_eq!(sent.attempts, 1);
    // Over the same connection: a refused recipient is told apart from the other replies
    // read with it.
    let dead = send_one(&server, "rejected@example.com", pb::MessageState::Dead).await;
    assert_eq!(dead.last_smtp_code, 550, "{dead:?}");
    // The connection after that refusal is a fresh one, and in step.
    send_one(&server, "b@example.com", pb::MessageState::Sent).await;
    let reads = reads.lock().unwrap().clone();
    assert_eq!(reads.messages.len(), 2);
    assert!(
        reads.messages[0].contains("first\r\n.dotted\r\n.\r\n"),
        "{}",
        reads.messages[0]
    );
    let grouped = reads
        .groups
        .iter()
        .filter(|g| g.as_slice() == ["MAIL", "RCPT", "DATA"])
        .count();
    assert_eq!(grouped, 3, "{:?}", reads.groups);
}

#[tokio::test]
async fn a_server_without_pipelining_gets_one_command_at_a_time() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let (server, reads) = with_a_strict_server(dir.path(), false).await;
    // The strict server would drop a client talking ahead of its replies.
    let sent = send_one(&server, "a@example.com", pb::MessageState::Sent).await;
    assert_eq!(sent.attempts, 1);
    let reads = reads.lock().unwrap().clone();
    assert_eq!(reads.messages.len(), 1);
    assert!(
        reads.groups.iter().all(|g| g.len() == 1),
        "{:?}",
        reads.groups
    );
    assert!(reads.groups.iter().any(|g| g == &["DATA"]));
}

#[tokio::test]
async fn messages_wait_out_an_smtp_outage_and_none_is_lost() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let (port, listener) = held_listener();
    server.configure_smtp(port).await;
    let first = send(&server, to_addresses(&["a@example.com"], "s", "b")).await;
    let first = &first.message_ids[0];
    let waiting = server
        .wait_for_state(first, pb::MessageState::Retrying)
        .await;
    assert_eq!(waiting.attempts, 1);
    assert!(!waiting.last_error.is_empty());
    let next = waiting.next_attempt_time.unwrap();
    let created = waiting.create_time.unwrap();
    let delay = next.seconds - created.seconds;
    assert!(
        (15..=30).contains(&delay),
        "first retry after 30 s with jitter, got {delay} s"
    );

    // The server could not be reached: delivery pauses, and mail queued meanwhile waits
    // untouched instead of failing attempts of its own. (The test clock stands still, so
    // the pause lasts until it is advanced.)
    let later = send(
        &server,
        to_addresses(&["b@example.com", "c@example.com"], "s", "b"),
    )
    .await;
    for id in &later.message_ids {
        let message = server.wait_for_state(id, pb::MessageState::Queued).await;
        assert_eq!(message.state(), pb::MessageState::Queued);
        assert_eq!(message.attempts, 0);
    }

    let smtp = SmtpServer::start(Options {
        listener: Some(listener),
        ..Default::default()
    });
    server.advance(Duration::from_secs(31));
    let sent = server.wait_for_state(first, pb::MessageState::Sent).await;
    assert_eq!(sent.attempts, 2);
    for id in &later.message_ids {
        let sent = server.wait_for_state(id, pb::MessageState::Sent).await;
        assert_eq!(sent.attempts, 1, "never tried during the outage");
    }
    let mut to: Vec<String> = smtp
        .seen()
        .messages
        .into_iter()
        .flat_map(|m| m.to)
        .collect();
    to.sort();
    assert_eq!(to, ["a@example.com", "b@example.com", "c@example.com"]);
}

#[tokio::test]
async fn a_5xx_kills_only_its_message_and_retry_message_delivers_it() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let answer = send(
        &server,
        to_addresses(&["rejected@example.com", "ok@example.com"], "s", "b"),
    )
    .await;
    let dead = server
        .wait_for_state(&answer.message_ids[0], pb::MessageState::Dead)
        .await;
    assert_eq!(dead.last_smtp_code, 550);
    assert_eq!(dead.attempts, 1, "a 5xx is not retried");
    server
        .wait_for_state(&answer.message_ids[1], pb::MessageState::Sent)
        .await;

    let mut notifier = server.notifier(&server.admin_key);
    let status = notifier
        .retry_message(pb::RetryMessageRequest {
            id: answer.message_ids[1].clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "only DEAD messages are retried"
    );
    smtp.reject(&[]);
    let requeued = notifier
        .retry_message(pb::RetryMessageRequest {
            id: dead.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(requeued.state(), pb::MessageState::Queued);
    server
        .wait_for_state(&dead.id, pb::MessageState::Sent)
        .await;
    assert!(smtp
        .seen()
        .messages
        .iter()
        .any(|m| m.to == ["rejected@example.com"]));
}

#[tokio::test]
async fn a_cancelled_message_is_never_sent() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let (port, listener) = held_listener();
    server.configure_smtp(port).await;
    let answer = send(&server, to_addresses(&["soc@example.com"], "s", "b")).await;
    let id = answer.message_ids[0].clone();
    server.wait_for_state(&id, pb::MessageState::Retrying).await;
    let mut notifier = server.notifier(&server.admin_key);
    let cancelled = notifier
        .cancel_message(pb::CancelMessageRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state(), pb::MessageState::Cancelled);
    let again = notifier
        .cancel_message(pb::CancelMessageRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    // The server comes back and time passes: a later message goes, the cancelled one not.
    let smtp = SmtpServer::start(Options {
        listener: Some(listener),
        ..Default::default()
    });
    server.advance(Duration::from_secs(3600));
    let later = send(&server, to_addresses(&["later@example.com"], "s", "b")).await;
    server
        .wait_for_state(&later.message_ids[0], pb::MessageState::Sent)
        .await;
    let seen = smtp.seen();
    assert_eq!(seen.messages.len(), 1);
    assert_eq!(seen.messages[0].to, ["later@example.com"]);
    assert_eq!(
        server
            .wait_for_state(&id, pb::MessageState::Cancelled)
            .await
            .attempts,
        1
    );
}

#[tokio::test]
async fn messages_list_by_organisation_and_state_in_pages() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let answer = send(
        &server,
        to_addresses(
            &[
                "a@example.com",
                "b@example.com",
                "c@example.com",
                "rejected@example.com",
            ],
            "s",
            "b",
        ),
    )
    .await;
    server
        .wait_for_state(&answer.message_ids[3], pb::MessageState::Dead)
        .await;
    for id in &answer.message_ids[..3] {
        server.wait_for_state(id, pb::MessageState::Sent).await;
    }
    let mut notifier = server.notifier(&server.admin_key);
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = notifier
            .list_messages(pb::ListMessagesRequest {
                organisation: "acme".into(),
                state: pb::MessageState::Sent.into(),
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.messages.into_iter().map(|m| m.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids, answer.message_ids[..3]);
    let dead = notifier
        .list_messages(pb::ListMessagesRequest {
            organisation: "acme".into(),
            state: pb::MessageState::Dead.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dead.messages.len(), 1);
    let other = notifier
        .list_messages(pb::ListMessagesRequest {
            organisation: "other".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(other.messages.is_empty());
}

#[tokio::test]
async fn a_key_sees_only_its_organisation_s_messages() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let acme = server.create_key("acme", &["manageConfig"]).await;
    let other = server.create_key("other", &["manageConfig"]).await;
    let answer = server
        .notifier(&acme)
        .send_to_addresses(to_addresses(&["soc@example.com"], "s", "b"))
        .await
        .unwrap()
        .into_inner();
    let id = answer.message_ids[0].clone();
    let own = server
        .notifier(&acme)
        .get_message(pb::GetMessageRequest { id: id.clone() })
        .await;
    assert_eq!(own.unwrap().into_inner().organisation, "acme");
    let foreign = server
        .notifier(&other)
        .get_message(pb::GetMessageRequest { id: id.clone() })
        .await;
    assert_eq!(foreign.unwrap_err().code(), Code::NotFound);
    let cancel = server
        .notifier(&other)
        .cancel_message(pb::CancelMessageRequest { id })
        .await;
    assert_eq!(cancel.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn queued_bodies_are_encrypted_at_rest() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    server.configure_smtp(support::smtp::refused_port()).await;
    send(
        &server,
        to_addresses(&["soc@example.com"], "subject-in-clear", "BODY-SECRET-4711"),
    )
    .await;
    let mut server = server;
    server.stop().await.unwrap();
    let bytes = all_bytes(&server.data_dir);
    assert!(
        contains(&bytes, "subject-in-clear"),
        "the outbox record is there"
    );
    assert!(!contains(&bytes, "BODY-SECRET-4711"), "the body is sealed");
}

#[tokio::test]
async fn delivery_uses_starttls_and_auth_and_follows_a_settings_change() {
    let _watchdog = crate::support::watchdog();
    use std::sync::Arc;
    use support::smtp::Pki;
    let server = TestServer::start().await;
    let pki = Arc::new(Pki::new());
    let secure = SmtpServer::with_auth(&pki, "relay", "relay-password");
    server
        .configure_secure_smtp(secure.addr.port(), &pki.ca_pem)
        .await;
    let first = send(
        &server,
        to_addresses(&["a@example.com", "b@example.com"], "s", "b"),
    )
    .await;
    for id in &first.message_ids {
        server.wait_for_state(id, pb::MessageState::Sent).await;
    }
    assert_eq!(secure.seen().messages.len(), 2);
    assert!(secure.seen().auth.iter().all(|(user, _)| user == "relay"));

    // The senders reconnect to the new relay once the settings change.
    let plain = SmtpServer::start(Options::default());
    server.configure_smtp(plain.addr.port()).await;
    let second = send(&server, to_addresses(&["c@example.com"], "s", "b")).await;
    server
        .wait_for_state(&second.message_ids[0], pb::MessageState::Sent)
        .await;
    assert_eq!(plain.seen().messages.len(), 1);
    assert_eq!(secure.seen().messages.len(), 2);
}

#[tokio::test]
async fn a_batch_never_queued_is_dropped_at_start() {
    let _watchdog = crate::support::watchdog();
    use mailroom::crypto::MasterKey;
    use mailroom::notify::OutgoingEmail;
    use mailroom::store::prelude::*;
    use mailroom::store::sled::SledStore;

    let dir = tempfile::tempdir().unwrap();
    let staged = {
        let key = MasterKey::load_or_create(&dir.path().join("master.key")).unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let message = OutgoingEmail {
            organisation: "acme",
            from: "thehive@example.com".parse().unwrap(),
            to: "soc@example.com".parse().unwrap(),
            subject: "half written",
            text: "a request that died before it answered",
            html: None,
        }
        .seal(&key, std::time::SystemTime::now())
        .unwrap();
        // Written as part of a batch whose request died before committing it.
        let mut writer = store.enqueue("batch_dead");
        writer.write(std::slice::from_ref(&message)).await.unwrap();
        drop(writer);
        store.flush().await.unwrap();
        assert!(
            store.message(&message.id).await.unwrap().is_some(),
            "written, not queued"
        );
        store.close().await.unwrap();
        message.id
    };
    let server = TestServer::start_in(dir.path()).await;
    let status = server
        .notifier(&server.admin_key)
        .get_message(pb::GetMessageRequest { id: staged })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

/// Finished messages are kept 30 days (`--message-retention`) after they were queued:
/// one sent now and one sent 20 days later; 30 days after the first, the sweep forgets
/// the first and keeps the second.
#[tokio::test]
async fn finished_messages_are_forgotten_after_the_retention() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let old = send(&server, to_addresses(&["soc@example.com"], "old", "b")).await;
    let old = old.message_ids[0].clone();
    server.wait_for_state(&old, pb::MessageState::Sent).await;
    server.clock.advance(Duration::from_secs(20 * 86_400));
    let young = send(&server, to_addresses(&["soc@example.com"], "young", "b")).await;
    let young = young.message_ids[0].clone();
    server.wait_for_state(&young, pb::MessageState::Sent).await;
    server.clock.advance(Duration::from_secs(10 * 86_400 + 1));
    server.sweep().await;
    let mut notifier = server.notifier(&server.admin_key);
    let found = notifier
        .get_message(pb::GetMessageRequest { id: old.clone() })
        .await;
    assert_eq!(
        found.map(|_| ()).map_err(|s| s.code()),
        Err(Code::NotFound),
        "forgotten by the sweep"
    );
    let listed: Vec<String> = notifier
        .list_messages(pb::ListMessagesRequest {
            organisation: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(
        listed,
        [young],
        "the younger one stays, and only it is listed"
    );
}

#[tokio::test]
async fn idempotency_keys_are_forgotten_after_a_week() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    server.configure_smtp(support::smtp::refused_port()).await;
    let mut request = to_addresses(&["soc@example.com"], "s", "b");
    request.idempotency_key = "weekly-report".into();
    let first = send(&server, request.clone()).await;
    server.clock.advance(Duration::from_secs(6 * 86_400));
    server.sweep().await;
    assert!(
        send(&server, request.clone()).await.duplicate,
        "kept for a week"
    );
    server.clock.advance(Duration::from_secs(86_400 + 1));
    server.sweep().await;
    let again = send(&server, request.clone()).await;
    assert!(!again.duplicate, "forgotten by the sweep");
    assert_ne!(again.message_ids, first.message_ids);
}

#[tokio::test]
async fn senders_come_only_from_the_sender_domains() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    // From `TheHive <thehive@example.com>`, no sender domains: example.com alone.
    server.configure_smtp(smtp.addr.port()).await;
    let from = |from: &str| {
        let mut r = to_addresses(&["soc@example.com"], "s", "b");
        r.from = from.into();
        r
    };
    let accepted = send(&server, from("SOC <alerts@EXAMPLE.com>")).await;
    let sent = server
        .wait_for_state(&accepted.message_ids[0], pb::MessageState::Sent)
        .await;
    assert_eq!(sent.from, "SOC <alerts@EXAMPLE.com>");
    send(&server, from("{{case.owner}}")).await;
    for refused in [
        "alerts@evil.org",
        "alerts@mail.example.com",
        "alerts@example.com.evil.org",
        "alerts@notexample.com",
        "Example.com <alerts@evil.org>",
    ] {
        let status = send_err(&server, from(refused)).await;
        assert_eq!(violated_fields(&status), ["from"], "{refused}: {status:?}");
    }
    let mut templated = from("{{sender}}");
    templated.context = context(&[("sender", string("ceo@evil.org"))]);
    let status = send_err(&server, templated).await;
    assert_eq!(violated_fields(&status), ["from"]);

    // Named sender domains replace the default, exactly.
    let mut settings = server.configure_smtp(smtp.addr.port()).await;
    settings.sender_domains = vec!["example.com".into(), "alerts.example.org".into()];
    server.save_smtp(settings).await;
    send(&server, from("noc@Alerts.Example.org")).await;
    send(&server, from("soc@example.com")).await;
    for refused in ["noc@example.org", "noc@sub.alerts.example.org"] {
        let status = send_err(&server, from(refused)).await;
        assert_eq!(violated_fields(&status), ["from"], "{refused}: {status:?}");
    }

    // SendToUsers too.
    server
        .add_user("alice", "Alice", "alice@example.com", &["acme"])
        .await;
    let mut notifier = server.notifier(&server.admin_key);
    let to_users = |from: &str| pb::SendToUsersRequest {
        organisation: "acme".into(),
        from: from.into(),
        subject: "s".into(),
        body: "b".into(),
        ..Default::default()
    };
    let status = notifier
        .send_to_users(to_users("ceo@evil.org"))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["from"]);
    notifier
        .send_to_users(to_users("noc@alerts.example.org"))
        .await
        .unwrap();
}

#[tokio::test]
async fn opportunistic_starttls_not_offered_never_authenticates_a_delivery() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let (relay, reads) = support::smtp::plain_auth_server().await;
    server
        .save_smtp(pb::SmtpSettings {
            host: "127.0.0.1".into(),
            port: relay.port().into(),
            from: "thehive@example.com".into(),
            security: pb::ConnectionSecurity::StarttlsOpportunistic.into(),
            username: "relay".into(),
            password: "stored-relay-password".into(),
            timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await;
    let ids = server.send_to(&["soc@example.com"], "s", "b").await;
    let failed = server
        .wait_for_state(&ids[0], pb::MessageState::Retrying)
        .await;
    assert!(
        failed.last_error.starts_with("AUTH: ") && failed.last_error.contains("not encrypted"),
        "{failed:?}"
    );
    let seen = reads.lock().unwrap().clone();
    assert!(
        seen.auth.is_empty(),
        "credentials in clear: {:?}",
        seen.auth
    );
    assert!(seen.messages.is_empty());
}
