//! The gate in front of the services (`api::gate`): a call without a key, or with a
//! message longer than its service takes, is answered before its message is read; calls
//! with a key share a budget of request bytes, one organisation at most a quarter of it,
//! and a message let in must arrive in time.
//!
//! The calls here are made by hand, as HTTP/2 requests whose body sends gRPC's length
//! prefix and some bytes and then nothing more: a server that read the message before
//! answering would never answer them.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use mailroom::proto::v1 as pb;
use tonic::body::Body;
use tower::ServiceExt;

use crate::support::{self, TestServer};

/// A request body that declares a message of `length` bytes, sends `sent` of them, and then
/// nothing, never ending.
struct Stalled {
    first: Option<Bytes>,
}

impl Stalled {
    fn new(length: u32, sent: usize) -> Self {
        let mut first = prefix(length);
        first.extend(std::iter::repeat_n(0u8, sent));
        Self::raw(first)
    }

    /// Sends `bytes`, then nothing.
    fn raw(bytes: Vec<u8>) -> Self {
        Self {
            first: Some(bytes.into()),
        }
    }
}

/// A request body that sends `bytes` (perhaps none) in one frame, then ends.
struct Once(Option<Bytes>);

impl http_body::Body for Once {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
}

/// gRPC's prefix of an uncompressed message of `length` bytes.
fn prefix(length: u32) -> Vec<u8> {
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&length.to_be_bytes());
    prefix
}

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.first.take() {
            Some(first) => Poll::Ready(Some(Ok(Frame::data(first)))),
            None => Poll::Pending,
        }
    }
}

/// Calls `path` with `key` (none when empty) and a body that never ends; the answer's gRPC
/// code (from the headers of a trailers-only answer, else from the trailers) and message.
async fn call_stalled(
    server: &TestServer,
    path: &str,
    key: &str,
    body: impl http_body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + 'static,
) -> (i32, String) {
    let mut request = http::Request::post(format!("http://{}{path}", server.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if !key.is_empty() {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let request = request.body(Body::new(body)).unwrap();
    let response = server.channel().oneshot(request).await.expect("an answer");
    let code = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().parse::<i32>().unwrap())
    };
    let message = |headers: &http::HeaderMap| {
        headers
            .get("grpc-message")
            .map(|v| percent_decode(v.to_str().unwrap()))
            .unwrap_or_default()
    };
    if let Some(c) = code(response.headers()) {
        return (c, message(response.headers()));
    }
    let trailers = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("a body")
        .trailers()
        .cloned()
        .expect("trailers");
    (code(&trailers).expect("grpc-status"), message(&trailers))
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Without a key, a call of 4 MiB is refused once its headers are in: the message is never
/// waited for.
#[tokio::test]
async fn a_call_without_a_key_is_refused_unread() {
    let _watchdog = support::watchdog();
    let server = TestServer::start().await;
    let path = "/mailroom.v1.Notifier/SendToAddresses";
    for key in ["", "mrk_not_a_key"] {
        let (code, message) = support::within(
            Duration::from_secs(10),
            "an answer without the message",
            call_stalled(&server, path, key, Stalled::new(4 << 20, 1024)),
        )
        .await;
        assert_eq!(
            tonic::Code::from(code),
            tonic::Code::Unauthenticated,
            "{message}"
        );
    }
    // Health stays open.
    server.assert_serving().await;
}

/// A key without the method's permission is refused as soon as the headers are in too: a
/// notification of 4 MiB with a manageUser key is never waited for.
#[tokio::test]
async fn a_key_without_the_permission_is_refused_unread() {
    let _watchdog = support::watchdog();
    let server = TestServer::start().await;
    let key = server.create_key("acme", &["manageUser"]).await;
    let (code, message) = support::within(
        Duration::from_secs(10),
        "an answer without the message",
        call_stalled(
            &server,
            "/mailroom.v1.Notifier/SendToAddresses",
            &key,
            Stalled::new(4 << 20, 1024),
        ),
    )
    .await;
    assert_eq!(
        tonic::Code::from(code),
        tonic::Code::PermissionDenied,
        "{message}"
    );
    assert!(message.contains("manageConfig"), "{message}");
}

/// A message longer than its service takes is refused from its length prefix, with a key:
/// a token request of 1 MiB (the Token service takes 256 KiB), a user of 100 KiB.
#[tokio::test]
async fn a_message_past_its_service_limit_is_refused_unread() {
    let _watchdog = support::watchdog();
    let server = TestServer::start().await;
    for (path, length) in [
        ("/mailroom.v1.Token/IssueToken", 1 << 20),
        ("/mailroom.v1.Directory/UpsertUser", 100 << 10),
        ("/mailroom.v1.ApiKeys/CreateApiKey", 100 << 10),
    ] {
        let (code, message) = support::within(
            Duration::from_secs(10),
            "an answer without the message",
            call_stalled(&server, path, &server.admin_key, Stalled::new(length, 16)),
        )
        .await;
        assert_eq!(
            tonic::Code::from(code),
            tonic::Code::OutOfRange,
            "{path}: {message}"
        );
        assert!(message.contains("too large"), "{path}: {message}");
    }
}

/// `mailroom_request_bytes_admitted`, read from the metrics.
async fn admitted(server: &TestServer) -> f64 {
    crate::metrics::scrape(server).await["mailroom_request_bytes_admitted"]
}

/// A call that declares 4 MiB and sends none of it holds its organisation's whole share
/// (a quarter of a 16 MiB budget): the organisation's next call waits, another
/// organisation's does not; once the read time runs out the stalled call is refused
/// `DEADLINE_EXCEEDED`, and what it held goes back.
#[tokio::test]
async fn a_stalled_message_holds_its_organisation_only_and_not_for_long() {
    let _watchdog = support::watchdog();
    let server = TestServer::start_tuned(|args| {
        args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        args.request_bytes_in_flight = 16 << 20;
        args.request_read_timeout = Duration::from_secs(3);
    })
    .await;
    let smtp = support::smtp::SmtpServer::start(support::smtp::Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let acme = server.create_key("acme", &["manageConfig"]).await;
    let beta = server.create_key("beta", &["manageConfig"]).await;
    assert_eq!(admitted(&server).await, 0.0);

    let stalled = {
        let (server, acme) = (&server, acme.clone());
        async move {
            call_stalled(
                server,
                "/mailroom.v1.Notifier/SendToAddresses",
                &acme,
                Stalled::new(4 << 20, 0),
            )
            .await
        }
    };
    let send = |key: String| {
        let mut notifier = server.notifier(&key);
        async move {
            notifier
                .send_to_addresses(pb::SendToAddressesRequest {
                    to: vec!["soc@example.com".into()],
                    subject: "gate".into(),
                    body: "x".into(),
                    ..Default::default()
                })
                .await
        }
    };
    tokio::pin!(stalled);
    // The stalled call is let in: its 4 MiB are counted.
    support::eventually(
        Duration::from_secs(10),
        "the stalled call let in",
        async || {
            tokio::select! {
                biased;
                answer = &mut stalled => panic!("answered early: {answer:?}"),
                bytes = admitted(&server) => bytes == f64::from(4u32 << 20),
            }
        },
    )
    .await;
    let acme_send = send(acme.clone());
    tokio::pin!(acme_send);
    // beta is let in and answered while acme's next call waits behind the stalled one.
    let beta_sent = tokio::select! {
        biased;
        answer = &mut stalled => panic!("answered early: {answer:?}"),
        answer = &mut acme_send => panic!("acme's share is held, yet: {answer:?}"),
        sent = send(beta) => sent,
    };
    beta_sent.expect("beta sends");
    let (code, message) = (&mut stalled).await;
    assert_eq!(
        tonic::Code::from(code),
        tonic::Code::DeadlineExceeded,
        "{message}"
    );
    assert!(message.contains("did not arrive within 3s"), "{message}");
    acme_send.await.expect("acme's share given back");
    support::eventually(
        Duration::from_secs(10),
        "every byte given back",
        async || admitted(&server).await == 0.0,
    )
    .await;
}

/// A call may carry one message: tonic would decode (and hold) every further message of a
/// body, unmetered, before answering. A second one, however short the first, is refused
/// unread; so is a prefix that never completes, once the read time has passed.
#[tokio::test]
async fn a_second_message_or_an_unfinished_prefix_is_refused() {
    let _watchdog = support::watchdog();
    let server = TestServer::start_tuned(|args| {
        args.request_read_timeout = Duration::from_secs(1);
    })
    .await;
    let path = "/mailroom.v1.Notifier/SendToAddresses";
    let mut two = prefix(0);
    two.extend(prefix(4 << 20));
    two.extend(std::iter::repeat_n(0u8, 1024));
    let (code, message) = support::within(
        Duration::from_secs(10),
        "an answer without the second message",
        call_stalled(&server, path, &server.admin_key, Stalled::raw(two)),
    )
    .await;
    assert_eq!(
        tonic::Code::from(code),
        tonic::Code::InvalidArgument,
        "{message}"
    );
    assert!(message.contains("one request message"), "{message}");

    let (code, message) = support::within(
        Duration::from_secs(10),
        "an answer to a prefix never finished",
        call_stalled(
            &server,
            path,
            &server.admin_key,
            Stalled::raw(vec![0, 0, 0]),
        ),
    )
    .await;
    assert_eq!(
        tonic::Code::from(code),
        tonic::Code::DeadlineExceeded,
        "{message}"
    );
}

/// Health and reflection need no key, and are held to the gate all the same: a message of at
/// most 64 KiB, its prefix within the read time. An empty frame that ends the body is a
/// call without a message (it once met an index out of range in the gate), not a panic.
#[tokio::test]
async fn calls_without_a_key_are_bounded_too() {
    let _watchdog = support::watchdog();
    let server = TestServer::start_tuned(|args| {
        args.request_read_timeout = Duration::from_secs(1);
    })
    .await;
    let health = "/grpc.health.v1.Health/Check";
    let (code, message) = support::within(
        Duration::from_secs(10),
        "a large health check refused",
        call_stalled(&server, health, "", Stalled::new(1 << 20, 1024)),
    )
    .await;
    assert_eq!(
        tonic::Code::from(code),
        tonic::Code::OutOfRange,
        "{message}"
    );
    let (code, message) = support::within(
        Duration::from_secs(10),
        "an unfinished health check refused",
        call_stalled(&server, health, "", Stalled::raw(vec![0, 0])),
    )
    .await;
    assert_eq!(
        tonic::Code::from(code),
        tonic::Code::DeadlineExceeded,
        "{message}"
    );
    for path in [health, "/mailroom.v1.Token/VerifyToken"] {
        let (code, message) = support::within(
            Duration::from_secs(10),
            "an empty body answered",
            call_stalled(&server, path, &server.admin_key, Once(Some(Bytes::new()))),
        )
        .await;
        assert_ne!(
            tonic::Code::from(code),
            tonic::Code::Ok,
            "{path}: {message}"
        );
        assert_ne!(
            tonic::Code::from(code),
            tonic::Code::Unknown,
            "{path}: {message}"
        );
    }
    server.assert_serving().await;
}
