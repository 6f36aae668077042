//! The built `mailroom` binary, run as operators run it, with its JSON log lines.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mailroom::proto::v1 as pb;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::transport::Endpoint;

use super::Bearer;

/// A running `mailroom` binary and its log lines.
pub struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    pub addr: String,
    /// SIGTERM was sent ([`Process::begin_shutdown`]).
    terminated: bool,
}

impl Process {
    /// Starts the binary on `data_dir` with `extra` arguments, logging JSON at trace level,
    /// with no `MAILROOM_*` variable from the test's environment.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = hermetic(&mut Command::new(env!("CARGO_BIN_EXE_mailroom")))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "trace")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the mailroom binary");
        super::watch_child(child.id());
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = Self {
            child,
            lines,
            log: Vec::new(),
            addr: String::new(),
            terminated: false,
        };
        process.addr = process
            .wait_for_log(|event| {
                (event["message"] == "serving gRPC")
                    .then(|| event["addr"].as_str().unwrap().to_string())
            })
            .expect("the binary logs its address");
        process
    }

    /// Reads log lines until `pick` returns something (10 s at most).
    pub fn wait_for_log<T>(&mut self, pick: impl Fn(&serde_json::Value) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let event: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            self.log.push(line);
            if let Some(found) = pick(&event) {
                return Some(found);
            }
        }
        None
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Points the SMTP settings at a plain server on 127.0.0.1:`port` with a timeout of
    /// `timeout_secs`, as `admin`.
    pub async fn configure_smtp(&self, admin: &str, port: u16, timeout_secs: i64) {
        pb::smtp_admin_client::SmtpAdminClient::with_interceptor(
            self.channel().await,
            Bearer::new(admin),
        )
        .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
            settings: Some(pb::SmtpSettings {
                host: "127.0.0.1".into(),
                port: port.into(),
                from: "alerts@example.com".into(),
                timeout: Some(prost_types::Duration {
                    seconds: timeout_secs,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .expect("update the SMTP settings");
    }

    /// Kills the process with SIGKILL: no shutdown, no flush.
    pub fn kill(mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL).unwrap();
        super::forget_child(self.child.id());
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits (10 s at most) until the process says it is shutting down.
    pub fn begin_shutdown(&mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        self.terminated = true;
        self.wait_for_log(|event| {
            (event["message"] == "shutting down: NOT_SERVING, draining in-flight RPCs")
                .then_some(())
        })
        .expect("the binary logs that it is shutting down");
    }

    /// Whether the process has not exited yet.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM (unless [`Process::begin_shutdown`] did); the exit status and every
    /// log line. Async, so that this test's own
    /// client connections answer the server's GOAWAY while it drains.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        if !self.terminated {
            kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        }
        // Forgotten before it is reaped: its process id may then be another's.
        super::forget_child(self.child.id());
        let child = &mut self.child;
        let status = super::eventually(Duration::from_secs(10), "exit after SIGTERM", async || {
            child.try_wait().unwrap()
        })
        .await;
        self.log.extend(self.lines.try_iter());
        (status, self.log.join("\n"))
    }
}

/// `command` without the `MAILROOM_*` variables of the test's environment: a variable set
/// where the tests run must not change what they start.
pub fn hermetic(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MAILROOM_") {
            command.env_remove(name);
        }
    }
    command
}

/// A test that fails before it stops its process kills it, rather than leaving it running
/// after the test binary exits.
impl Drop for Process {
    fn drop(&mut self) {
        super::forget_child(self.child.id());
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
