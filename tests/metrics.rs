//! `/metrics`: Prometheus text whose counters move when messages are sent and tokens are
//! consumed.

use crate::support;

use std::collections::HashMap;

use mailroom::config::Args;
use mailroom::proto::v1 as pb;
use support::smtp::{Options, SmtpServer};
use support::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Scrapes `/metrics`: every sample by its name and labels, as Prometheus text requires.
pub async fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let addr = server.metrics.expect("--metrics-listen is set");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let mut samples = HashMap::new();
    for line in body.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            assert!(
                comment.starts_with(" HELP ") || comment.starts_with(" TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && name.starts_with("mailroom_"),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in {line:?}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(series.to_string(), value);
    }
    samples
}

/// The value of `series`, which must be there: a metric renamed or gone fails the test
/// rather than reading as 0.
#[track_caller]
fn get(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or_else(|| {
        let mut names: Vec<&String> = samples.keys().collect();
        names.sort();
        panic!("no series {series} in /metrics; there are {names:#?}")
    })
}

/// The value of a labelled counter that may not have been counted yet: a counter's series
/// appears with its first count (Prometheus' client does so), so absent is 0 here, and
/// only here (the scrape before).
fn counted(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// A server with `/metrics` on a free port and a manual clock, in `dir`.
async fn metered_server(dir: &std::path::Path) -> TestServer {
    let mut args = Args::with_data_dir(dir);
    args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    args.clock = mailroom::clock::Clock::manual(std::time::SystemTime::now());
    TestServer::start_with(args).await
}

#[tokio::test]
async fn counters_move_with_messages_and_tokens() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let server = metered_server(dir.path()).await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let before = scrape(&server).await;
    assert_eq!(get(&before, "mailroom_outbox_depth"), 0.0);

    let sent = server
        .send_to(&["a@example.com", "rejected@example.com"], "s", "b")
        .await;
    server
        .wait_for_state(&sent[0], pb::MessageState::Sent)
        .await;
    server
        .wait_for_state(&sent[1], pb::MessageState::Dead)
        .await;
    let mut tokens = server.tokens(&server.admin_key);
    let token = tokens
        .issue_token(support::issue_request(
            "alice",
            pb::TokenPurpose::PasswordReset,
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let consume = pb::ConsumeTokenRequest {
        token,
        purpose: pb::TokenPurpose::PasswordReset.into(),
    };
    tokens.consume_token(consume.clone()).await.unwrap();
    tokens.consume_token(consume).await.unwrap_err();

    // A message's state is visible a moment before its outcome is counted (the count
    // follows the durable write): scrape until both outcomes are in.
    let outcomes = "both outcomes counted";
    let after = support::eventually(std::time::Duration::from_secs(10), outcomes, async || {
        let after = scrape(&server).await;
        let settled = [
            r#"mailroom_messages_total{state="sent"}"#,
            r#"mailroom_messages_total{state="dead"}"#,
        ]
        .iter()
        .all(|s| counted(&after, s) > counted(&before, s));
        settled.then_some(after)
    })
    .await;
    let moved = |series: &str| get(&after, series) - counted(&before, series);
    assert_eq!(moved(r#"mailroom_messages_total{state="queued"}"#), 2.0);
    assert_eq!(moved(r#"mailroom_messages_total{state="sent"}"#), 1.0);
    assert_eq!(moved(r#"mailroom_messages_total{state="dead"}"#), 1.0);
    assert_eq!(
        moved(r#"mailroom_delivery_attempts_total{outcome="sent",smtp_class="2xx"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"mailroom_delivery_attempts_total{outcome="permanent_failure",smtp_class="5xx"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"mailroom_send_duration_seconds_count{outcome="sent"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"mailroom_tokens_total{event="issued",purpose="password_reset",reason=""}"#),
        1.0
    );
    assert_eq!(
        moved(r#"mailroom_tokens_total{event="consumed",purpose="password_reset",reason=""}"#),
        1.0
    );
    assert_eq!(
        moved(
            r#"mailroom_tokens_total{event="rejected",purpose="password_reset",reason="consumed"}"#
        ),
        1.0
    );
    assert_eq!(
        moved(r#"mailroom_rpcs_total{code="Ok",method="/mailroom.v1.Token/ConsumeToken"}"#),
        1.0
    );
    assert_eq!(
        moved(
            r#"mailroom_rpcs_total{code="FailedPrecondition",method="/mailroom.v1.Token/ConsumeToken"}"#
        ),
        1.0
    );
    assert_eq!(
        moved(r#"mailroom_rpc_duration_seconds_count{method="/mailroom.v1.Token/ConsumeToken"}"#),
        2.0
    );
    assert_eq!(get(&after, "mailroom_outbox_depth"), 0.0);
}

#[tokio::test]
async fn relay_paused_shows_an_smtp_server_that_cannot_be_reached() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let server = metered_server(dir.path()).await;
    server.configure_smtp(support::smtp::refused_port()).await;
    assert_eq!(get(&scrape(&server).await, "mailroom_relay_paused"), 0.0);

    let sent = server.send_to(&["a@example.com"], "s", "b").await;
    let id = &sent[0];
    server.wait_for_state(id, pb::MessageState::Retrying).await;
    assert_eq!(get(&scrape(&server).await, "mailroom_relay_paused"), 1.0);

    // New settings end the pause: the test clock stands still, yet mail queued now goes
    // out. The retry, once due, reaches the server too.
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let after = server.send_to(&["b@example.com"], "s", "b").await;
    server
        .wait_for_state(&after[0], pb::MessageState::Sent)
        .await;
    assert_eq!(get(&scrape(&server).await, "mailroom_relay_paused"), 0.0);
    server.advance(std::time::Duration::from_secs(31));
    server.wait_for_state(id, pb::MessageState::Sent).await;
    assert_eq!(get(&scrape(&server).await, "mailroom_relay_paused"), 0.0);
}

/// Any caller, with no key, can send any path: the `method` label holds only the served
/// methods and `unknown`, so made-up paths add no series.
#[tokio::test]
async fn made_up_methods_add_no_series() {
    let _watchdog = crate::support::watchdog();
    use tonic::codegen::http::uri::PathAndQuery;
    let dir = tempfile::tempdir().unwrap();
    let server = metered_server(dir.path()).await;
    let check = pb::VerifyTokenRequest::default();
    let _ = server.tokens("").verify_token(check).await;
    let mut grpc = tonic::client::Grpc::new(server.channel());
    for i in 0..50 {
        grpc.ready().await.expect("channel ready");
        let path = PathAndQuery::try_from(format!("/made.up.Service{i}/Method{i}")).unwrap();
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let status = grpc
            .unary(tonic::Request::new(()), path, codec)
            .await
            .expect_err("no such method");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }
    let samples = scrape(&server).await;
    let methods: std::collections::BTreeSet<&str> = samples
        .keys()
        .filter(|series| series.starts_with("mailroom_rpcs_total{"))
        .filter_map(|series| series.split("method=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        methods.into_iter().collect::<Vec<_>>(),
        ["/mailroom.v1.Token/VerifyToken", "unknown"]
    );
    assert_eq!(
        samples[r#"mailroom_rpcs_total{code="Unimplemented",method="unknown"}"#],
        50.0
    );
}
