//! The gate every call to a mailroom service passes before its request is read, so that
//! what a caller makes the server hold is bounded before any of it is decoded:
//!
//! - **a key first**: a call without the secret of a live API key is answered
//!   `UNAUTHENTICATED` unread, and a key without the method's permission
//!   ([`crate::auth::permissions`]) `PERMISSION_DENIED` unread (the service then checks the
//!   key again, and its organisation). Health and reflection need none: their messages are small
//!   ([`OPEN_LIMIT`]), and share a budget of their own ([`OPEN_BUDGET`]), with the same
//!   time to arrive.
//! - **a size per service** ([`request_limit`]): what the largest valid request of the
//!   service can need, 4 MiB for the two that take templates or certificates, far less
//!   for the others; a longer message is refused `OUT_OF_RANGE` from its length prefix.
//! - **a budget of request bytes in flight**, shared by every call, of which one
//!   organisation's calls hold at most a quarter: a message is let through once both hold
//!   its length (from gRPC's length prefix, in units of [`UNIT`]), and gives it back when
//!   its answer is ready. A decoded request takes a multiple of its size (a context of
//!   4 MiB decodes to two million values): without a budget, a few hundred concurrent
//!   calls of 4 MiB held gigabytes. Waiting calls queue in order (tokio's semaphore is
//!   fair), and their bytes wait in HTTP/2's flow control.
//! - **one message a call**: every mailroom RPC is unary, and tonic reads (and holds) any
//!   further message of a body before it answers; a second message is refused
//!   `INVALID_ARGUMENT`, unread.
//! - **a time to send the message**: its length prefix within `--request-read-timeout` of
//!   the call's arrival, and the rest within as much again once let in (a caller that
//!   declares 4 MiB and sends none of it would hold that much of the budget for as long
//!   as it liked; one that never finishes the prefix would hold a stream).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tonic::body::Body;
use tonic::Status;

use crate::auth::{permissions, AuthError, Authenticated, Authenticator};
use crate::metrics::Metrics;
use crate::quota::Shares;

/// The unit the budget counts in.
pub const UNIT: usize = 16 * 1024;

/// The services behind the gate's key check: the contract's, by path prefix.
const GATED: &str = "/mailroom.v1.";
/// The longest message of a call without a key (a health check, a reflection request: a
/// few hundred bytes).
pub const OPEN_LIMIT: usize = 64 * 1024;
/// The bytes of messages of calls without a key let in at once.
const OPEN_BUDGET: usize = 4 * 1024 * 1024;

/// The longest request message each service accepts, in bytes. Notifier templates and
/// contexts, and SMTP settings with their CA certificates, take up to gRPC's usual 4 MiB;
/// a token request holds at most 32 metadata entries of 64 + 1,024 characters (139 KiB in
/// UTF-8's longest characters), a user at most 100 organisations of 100 characters, an
/// email template override at most two bodies of 256 KiB.
pub fn request_limit(service: &str) -> usize {
    match service {
        "mailroom.v1.Notifier" | "mailroom.v1.SmtpAdmin" => 4 * 1024 * 1024,
        "mailroom.v1.Token" => 256 * 1024,
        // An override's three templates (1 KiB + 2 × 256 KiB) or a preview's values.
        "mailroom.v1.Templates" => 1024 * 1024,
        _ => 64 * 1024,
    }
}

/// The longest request, in units.
fn most_units() -> usize {
    request_limit("mailroom.v1.Notifier").div_ceil(UNIT)
}

/// The layer putting [`Gate`] in front of the services.
#[derive(Clone)]
pub struct GateLayer {
    auth: Authenticator,
    /// The whole budget.
    budget: Arc<Semaphore>,
    /// Each organisation's share of it, made on its first call.
    shares: Arc<Shares>,
    /// Units in a share.
    share: usize,
    /// The budget of calls without a key (health, reflection).
    open: Arc<Semaphore>,
    /// How long a message let in may take to arrive.
    read_time: Duration,
    metrics: Metrics,
}

impl GateLayer {
    /// A gate checking keys with `auth`, letting `bytes` of requests in at once (at least
    /// four of the longest request), each message within `read_time` of being let in.
    pub fn new(auth: Authenticator, bytes: usize, read_time: Duration, metrics: Metrics) -> Self {
        let units = bytes.div_ceil(UNIT).max(4 * most_units());
        Self {
            auth,
            budget: Arc::new(Semaphore::new(units)),
            shares: Arc::new(Shares::new(units / 4)),
            share: units / 4,
            open: Arc::new(Semaphore::new(OPEN_BUDGET.div_ceil(UNIT))),
            read_time,
            metrics,
        }
    }
}

impl<S> tower_layer::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gate {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`GateLayer`].
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    layer: GateLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, R> tower_service::Service<http::Request<Body>> for Gate<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<R>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The service that was polled ready serves this call; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let mut request = request;
            let path = request.uri().path().to_string();
            let unary = path.starts_with(GATED);
            let (limit, budgets) = if unary {
                let key = match bearer(request.headers()) {
                    Ok(secret) => layer.auth.authenticate(secret).await,
                    Err(e) => Err(e),
                };
                let key = match key {
                    Ok(key) => key,
                    Err(e) => return Ok(Status::from(e).into_http()),
                };
                // Refused unread too: a key without the method's permission.
                if let Some(needed) = permissions::required_by_path(&path) {
                    if !needed.met_by(&key.permissions) {
                        let denied = AuthError::PermissionDenied(format!(
                            "this key lacks the {needed} permission"
                        ));
                        return Ok(Status::from(denied).into_http());
                    }
                    request.extensions_mut().insert(needed);
                }
                let organisation = key.organisation.clone();
                request.extensions_mut().insert(Authenticated(key));
                let service = path[1..].split('/').next().unwrap_or_default();
                let budgets = vec![
                    PollSemaphore::new(layer.shares.of(&organisation)),
                    PollSemaphore::new(layer.budget.clone()),
                ];
                (request_limit(service), budgets)
            } else {
                // Health and reflection: no key, small messages, a budget of their own.
                (OPEN_LIMIT, vec![PollSemaphore::new(layer.open.clone())])
            };
            let held = Arc::new(Mutex::new(Held {
                permits: Vec::new(),
                bytes: 0,
                metrics: layer.metrics.clone(),
            }));
            let (parts, body) = request.into_parts();
            let body = Body::new(Metered {
                inner: body,
                budgets,
                limit,
                unary,
                most: layer.share,
                prefix: Vec::with_capacity(PREFIX),
                expected: None,
                seen: 0,
                waiting: None,
                held: held.clone(),
                read_time: layer.read_time,
                deadline: Some(Box::pin(tokio::time::sleep(layer.read_time))),
            });
            let answer = inner.call(http::Request::from_parts(parts, body)).await;
            // The request is decoded and served: its bytes go back to the budget.
            held.lock().unwrap_or_else(|e| e.into_inner()).release();
            answer
        })
    }
}

/// The API key's secret in a call's `authorization: Bearer <key>` header.
fn bearer(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get("authorization")
        .ok_or(AuthError::Unauthenticated(
            "missing `authorization: Bearer <API key>` metadata",
        ))?
        .to_str()
        .map_err(|_| AuthError::Unauthenticated("malformed authorization metadata"))?;
    let (scheme, secret) = value.split_once(' ').ok_or(AuthError::Unauthenticated(
        "authorization must be `Bearer <API key>`",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") || secret.trim().is_empty() {
        return Err(AuthError::Unauthenticated(
            "authorization must be `Bearer <API key>`",
        ));
    }
    Ok(secret.trim())
}

/// What a call let in holds of the budgets, given back when it is answered (or dropped).
struct Held {
    permits: Vec<OwnedSemaphorePermit>,
    /// What the permits stand for, as counted in the metrics.
    bytes: i64,
    metrics: Metrics,
}

impl Held {
    fn release(&mut self) {
        self.permits.clear();
        self.metrics.requests_admitted(-self.bytes);
        self.bytes = 0;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

/// gRPC's message prefix: a compression flag and the length, big-endian.
const PREFIX: usize = 5;

/// A request body that waits for the budgets to hold its message's length before it hands
/// the message on, then gives the message [`GateLayer::read_time`] to arrive.
struct Metered {
    inner: Body,
    /// The organisation's share, then the whole budget, taken in that order (the open
    /// budget alone, for calls without a key).
    budgets: Vec<PollSemaphore>,
    /// The service's longest message: a longer one is refused unread.
    limit: usize,
    /// The most units one message takes (a share).
    most: usize,
    /// The prefix bytes seen so far (the first frames may be shorter than it).
    prefix: Vec<u8>,
    /// Whether the call is unary (every mailroom RPC): one message, and the read time until
    /// the body ends. Otherwise (health's watch, reflection) the first message is metered.
    unary: bool,
    /// The bytes of the first message, prefix included, once the prefix is whole.
    expected: Option<usize>,
    /// The data bytes seen so far.
    seen: usize,
    /// A frame held back until the budgets have room, and the units it waits for.
    waiting: Option<(Frame<Bytes>, u32)>,
    /// The units taken, given back when the call is answered.
    held: Arc<Mutex<Held>>,
    read_time: Duration,
    /// When the prefix, or the message once let in, must have arrived (none while the call
    /// waits for the budgets: that wait is the server's, not the caller's).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Metered {
    /// Units for a message of `length` bytes.
    fn units_for(&self, length: usize) -> u32 {
        let units = length.div_ceil(UNIT).clamp(1, self.most);
        u32::try_from(units).unwrap_or(u32::MAX)
    }

    /// Takes `units` of each budget not yet taken, in order.
    fn poll_admit(&mut self, cx: &mut Context<'_>, units: u32) -> Poll<()> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(budget) = self.budgets.get_mut(held.permits.len()) {
            match budget.poll_acquire_many(cx, units) {
                Poll::Ready(Some(permit)) => held.permits.push(permit),
                // Never closed.
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
        held.bytes = i64::from(units) * UNIT as i64;
        held.metrics.requests_admitted(held.bytes);
        Poll::Ready(())
    }
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some((frame, units)) = self.waiting.take() {
            if self.poll_admit(cx, units).is_pending() {
                self.waiting = Some((frame, units));
                return Poll::Pending;
            }
            self.deadline = Some(Box::pin(tokio::time::sleep(self.read_time)));
            return Poll::Ready(Some(Ok(frame)));
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {
                let late = self
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if late {
                    return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                        "the request message did not arrive within {:?}",
                        self.read_time
                    )))));
                }
                return Poll::Pending;
            }
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        self.seen = self.seen.saturating_add(data.len());
        match self.expected {
            Some(expected) if self.unary && self.seen > expected => {
                return Poll::Ready(Some(Err(Status::invalid_argument(
                    "a call carries one request message: every mailroom RPC is unary",
                ))));
            }
            // A stream (reflection): its first message arrived; the service's own limit
            // bounds the next ones.
            Some(expected) if !self.unary && self.seen >= expected => {
                self.deadline = None;
                return Poll::Ready(Some(Ok(frame)));
            }
            _ => {}
        }
        if self.prefix.len() < PREFIX {
            let missing = PREFIX - self.prefix.len();
            let seen = &data.chunk()[..missing.min(data.len())];
            self.prefix.extend_from_slice(seen);
            if self.prefix.len() == PREFIX {
                let length = [
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ];
                let length = usize::try_from(u32::from_be_bytes(length)).unwrap_or(usize::MAX);
                if length > self.limit {
                    return Poll::Ready(Some(Err(Status::out_of_range(format!(
                        "the request message is too large: {length} bytes, of at most {}",
                        self.limit
                    )))));
                }
                let expected = length.saturating_add(PREFIX);
                self.expected = Some(expected);
                if self.unary && self.seen > expected {
                    return Poll::Ready(Some(Err(Status::invalid_argument(
                        "a call carries one request message: every mailroom RPC is unary",
                    ))));
                }
                let units = self.units_for(length);
                self.deadline = None;
                self.waiting = Some((frame, units));
                return self.poll_frame(cx);
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
