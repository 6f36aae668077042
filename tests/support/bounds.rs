//! Every wait in the suite has a bound, so that a bug fails the suite instead of hanging it:
//! [`watchdog`] bounds a whole test, [`eventually`] a wait for something to happen,
//! [`within`] one future (a notification, a stream's next item).

use std::fmt::Debug;
use std::future::Future;
use std::io::Write;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long one test may run: well over the slowest (a replica test gives its mail two
/// minutes to arrive), and the most a hung test holds up a run.
pub const TEST_LIMIT: Duration = Duration::from_secs(300);

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// Bounds the test that calls it, first thing (`let _watchdog = crate::support::watchdog();`):
/// if the test is still running after [`TEST_LIMIT`], the watchdog names it, kills the
/// processes the tests started, and ends the run with a failure, as `go test -timeout`
/// does. A hang can be anywhere (a blocked thread, a runtime that never wakes), so no
/// timeout inside the test can catch every one; this thread always can.
#[must_use = "the test is watched until the watchdog is dropped"]
pub fn watchdog() -> Watchdog {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let (done, finished) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(format!("watchdog of {test}"))
        .spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(TEST_LIMIT) {
                // Not eprintln!: this thread shares its test's captured output, which no
                // one prints once the run ends here.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n{test} is still running after {TEST_LIMIT:?}: stopping the run"
                );
                for mut child in CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                    let _ = child.kill();
                }
                std::process::exit(101);
            }
        })
        .expect("start a watchdog thread");
    Watchdog { _done: done }
}

/// Watches a test until dropped (at the end of the test, or as its panic unwinds).
pub struct Watchdog {
    _done: mpsc::Sender<()>,
}

/// What the tests started (etcd, the mailroom binary), by process id: the watchdog kills
/// them before it ends the run, since no `Drop` runs then.
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// A process a test started, for the watchdog to kill.
struct Child(u32);

impl Child {
    fn kill(&mut self) -> nix::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0).unwrap_or(i32::MAX));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)
    }
}

/// Records a child process for the watchdog, until [`forget_child`].
pub fn watch_child(id: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Child(id));
}

/// The child `id` was reaped: the watchdog must not kill what may be another process now.
pub fn forget_child(id: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|c| c.0 != id);
}

/// Waits until `check` reaches its goal (`true`, `Some`, `Ok`), looking every 20 ms, for
/// `limit` at most; then panics naming `what` and the last thing seen. What it reached
/// (the `Some` or `Ok` value).
pub async fn eventually<R: Reached>(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> R,
) -> R::Value {
    let deadline = Instant::now() + limit;
    loop {
        let last = match check().await.reached() {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}{last}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `future`'s output, if it comes within `limit`; a panic naming `what` otherwise.
pub async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// What an [`eventually`] check answers: reached (with a value), or not yet (with what it
/// saw, for the message if it never is).
pub trait Reached {
    type Value;
    /// The value reached, or what was seen instead (`": ..."`, or empty).
    fn reached(self) -> Result<Self::Value, String>;
}

impl Reached for bool {
    type Value = ();
    fn reached(self) -> Result<(), String> {
        self.then_some(()).ok_or_else(String::new)
    }
}

impl<T> Reached for Option<T> {
    type Value = T;
    fn reached(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

/// `Err` carries the last thing seen, shown if the goal is never reached.
impl<T, E: Debug> Reached for Result<T, E> {
    type Value = T;
    fn reached(self) -> Result<T, String> {
        self.map_err(|last| format!("; last seen: {last:?}"))
    }
}
