//! Prometheus metrics: RPCs by method and code with latency, messages by the state they
//! reach, delivery attempts by outcome and SMTP code class with send latency, the outbox's
//! depth and oldest due message, tokens issued, consumed and rejected (by reason),
//! rate-limit rejections, OAuth2 token fetches (XOAUTH2) by outcome, and the request bytes
//! let in by the gate. Always counted;
//! served at `/metrics` only with `--metrics-listen`.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// The metrics of one mailroom. Cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    rpcs: IntCounterVec,
    rpc_seconds: HistogramVec,
    messages: IntCounterVec,
    attempts: IntCounterVec,
    send_seconds: HistogramVec,
    outbox_depth: IntGauge,
    oldest_due_seconds: Gauge,
    relay_paused: IntGauge,
    tokens: IntCounterVec,
    rate_limited: IntCounter,
    oauth2_fetches: IntCounterVec,
    request_bytes_admitted: IntGauge,
    sends: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `metric`, registered in `registry`.
fn registered<M>(registry: &Registry, metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

impl Metrics {
    /// A fresh set of metrics in its own registry.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("mailroom".into()), None).expect("a valid prefix");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            registered(
                &registry,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels),
            )
        };
        let rpcs = counter(
            "rpcs_total",
            "RPCs answered, by method and gRPC code.",
            &["method", "code"],
        );
        let rpc_seconds = histogram(
            "rpc_duration_seconds",
            "RPC latency, by method.",
            &["method"],
            prometheus::exponential_buckets(0.0001, 2.5, 12).expect("valid buckets"),
        );
        let messages = counter(
            "messages_total",
            "Messages reaching each state.",
            &["state"],
        );
        let attempts = counter(
            "delivery_attempts_total",
            "Delivery attempts, by outcome and SMTP reply class (2xx, 4xx, 5xx, none).",
            &["outcome", "smtp_class"],
        );
        let send_seconds = histogram(
            "send_duration_seconds",
            "Time to hand one message to the SMTP server, by outcome.",
            &["outcome"],
            prometheus::exponential_buckets(0.001, 2.5, 12).expect("valid buckets"),
        );
        let outbox_depth = registered(
            &registry,
            IntGauge::new(
                "outbox_depth",
                "Messages waiting for delivery (queued, retrying or being sent).",
            ),
        );
        let oldest_due_seconds = registered(
            &registry,
            Gauge::new(
                "outbox_oldest_due_age_seconds",
                "How long the most overdue message has been due.",
            ),
        );
        let relay_paused = registered(
            &registry,
            IntGauge::new(
                "relay_paused",
                "1 from a failed SMTP connection until one succeeds (delivery pauses), else 0.",
            ),
        );
        let tokens = counter(
            "tokens_total",
            "Token events: issued, consumed, or rejected with a reason.",
            &["event", "purpose", "reason"],
        );
        let rate_limited = registered(
            &registry,
            IntCounter::new(
                "token_rate_limited_total",
                "Token issues refused by the rate limit.",
            ),
        );
        let oauth2_fetches = counter(
            "oauth2_token_fetches_total",
            "OAuth2 access tokens fetched for XOAUTH2 logins, by outcome (issued, refused, \
             unreachable, invalid_answer).",
            &["outcome"],
        );
        let request_bytes_admitted = registered(
            &registry,
            IntGauge::new(
                "request_bytes_admitted",
                "Bytes of request messages let in and not yet answered (each rounded up to 16 KiB), \
                 of --request-bytes-in-flight.",
            ),
        );
        let sends = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "sends",
                    "SendToAddresses and SendToUsers calls rendering on a thread (running) or \
                     waiting for one (waiting; see --send-threads).",
                ),
                &["state"],
            ),
        );
        for state in ["waiting", "running"] {
            sends.with_label_values(&[state]).set(0);
        }
        Self(Arc::new(Inner {
            registry,
            rpcs,
            rpc_seconds,
            messages,
            attempts,
            send_seconds,
            outbox_depth,
            oldest_due_seconds,
            relay_paused,
            tokens,
            rate_limited,
            oauth2_fetches,
            request_bytes_admitted,
            sends,
        }))
    }

    /// An RPC answered.
    pub fn rpc(&self, method: &str, code: &str, took: Duration) {
        self.0.rpcs.with_label_values(&[method, code]).inc();
        self.0
            .rpc_seconds
            .with_label_values(&[method])
            .observe(took.as_secs_f64());
    }

    /// `count` messages reached `state` (lowercase: queued, sent, retrying, dead, cancelled).
    pub fn messages(&self, state: &str, count: usize) {
        self.0
            .messages
            .with_label_values(&[state])
            .inc_by(count as u64);
    }

    /// A delivery attempt ended.
    pub fn attempt(&self, outcome: &str, smtp_code: Option<u16>, took: Duration) {
        let class = match smtp_code {
            Some(code) => format!("{}xx", code / 100),
            None if outcome == "sent" => "2xx".into(),
            None => "none".into(),
        };
        self.0.attempts.with_label_values(&[outcome, &class]).inc();
        self.0
            .send_seconds
            .with_label_values(&[outcome])
            .observe(took.as_secs_f64());
    }

    /// A token event (`issued`, `consumed`, `rejected` with a reason).
    pub fn token(&self, event: &str, purpose: &str, reason: &str) {
        self.0
            .tokens
            .with_label_values(&[event, purpose, reason])
            .inc();
    }

    /// A token issue refused by the rate limit.
    pub fn rate_limited(&self) {
        self.0.rate_limited.inc();
    }

    /// An OAuth2 token fetch ended: `issued`, `refused`, `unreachable` or `invalid_answer`.
    pub fn token_fetch(&self, outcome: &str) {
        self.0.oauth2_fetches.with_label_values(&[outcome]).inc();
    }

    /// The outbox as it is now: how many pending, and when the earliest was due.
    pub fn outbox(&self, depth: usize, earliest_due: Option<SystemTime>, now: SystemTime) {
        self.0
            .outbox_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        let age = earliest_due
            .and_then(|due| now.duration_since(due).ok())
            .unwrap_or_default();
        self.0.oldest_due_seconds.set(age.as_secs_f64());
    }

    /// Whether the SMTP server could not be reached (delivery pauses) or was reached again.
    pub fn relay_paused(&self, paused: bool) {
        self.0.relay_paused.set(i64::from(paused));
    }

    /// `bytes` more of request messages let in (fewer when negative).
    pub fn requests_admitted(&self, bytes: i64) {
        self.0.request_bytes_admitted.add(bytes);
    }

    /// A send began (`1`) or ended (`-1`) waiting for a thread or running on one (`state`:
    /// `waiting`, `running`).
    pub fn sends(&self, state: &str, change: i64) {
        self.0.sends.with_label_values(&[state]).add(change);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.0.registry.gather(), &mut out)
            .expect("encoding into memory cannot fail");
        String::from_utf8(out).expect("Prometheus text is UTF-8")
    }
}

/// A tower layer that counts and times every gRPC request.
#[derive(Clone)]
pub struct RpcLayer(pub Metrics);

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service of [`RpcLayer`].
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            // Errors of unary RPCs come as trailers-only responses: the status is in the
            // headers. An answer without one there carries OK in its trailers.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or("Ok".to_string(), |c| format!("{:?}", tonic::Code::from(c)));
            metrics.rpc(method, &code, started.elapsed());
            Ok(response)
        })
    }
}

/// The `method` label of a request path: one of the served methods, or `unknown`. Any
/// caller, with no key, can send any path: each raw path a label of its own would grow the
/// metrics (and the memory holding them) without end.
fn method_label(path: &str) -> &'static str {
    static KNOWN: OnceLock<HashSet<&'static str>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        [
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]
        .into_iter()
        .flat_map(served_methods)
        // Built once per process, a few dozen paths: labels must be 'static.
        .map(|path| &*Box::leak(path.into_boxed_str()))
        .collect()
    });
    known.get(path).copied().unwrap_or("unknown")
}

/// The paths (`/package.Service/Method`) of every method an encoded descriptor set declares.
fn served_methods(encoded: &[u8]) -> Vec<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(encoded).expect("built-in descriptors decode");
    let mut paths = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                paths.push(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    paths
}

/// Serves `/metrics` on `listener` until `shutdown` resolves; `refresh` runs before each
/// scrape (to read the outbox's depth).
pub async fn serve<F, Fut>(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    refresh: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, refresh) = (metrics.clone(), refresh.clone());
            async move {
                refresh().await;
                (
                    [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
