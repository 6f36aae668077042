//! `mailroom catch-mail`: the built binary catches what a real mailroom sends (printed and
//! filed), and the catcher's bounds hold against a client that does not play by the rules.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom::config::CatchMailArgs;
use mailroom::proto::v1 as pb;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::support::process::hermetic;
use crate::support::{eventually, issue_request, TestServer};

/// `mailroom catch-mail` run as the README runs it, with its stdout read line by line.
struct CatchMail {
    child: Child,
    lines: mpsc::Receiver<String>,
    printed: String,
    port: u16,
}

impl CatchMail {
    fn start(dir: &Path) -> Self {
        let mut child = hermetic(&mut Command::new(env!("CARGO_BIN_EXE_mailroom")))
            .args(["catch-mail", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mailroom catch-mail");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut catcher = Self {
            child,
            lines,
            printed: String::new(),
            port: 0,
        };
        let first = catcher.wait_for("accepting SMTP on");
        let addr: SocketAddr = first
            .split_whitespace()
            .find_map(|word| word.trim_end_matches(',').parse().ok())
            .unwrap_or_else(|| panic!("no address in {first:?}"));
        catcher.port = addr.port();
        catcher
    }

    /// Reads printed lines until one contains `text` (10 s at most); that line.
    fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.printed += &line;
            self.printed.push('\n');
            if line.contains(text) {
                return line;
            }
        }
        panic!(
            "the catcher never printed {text:?}; it printed:\n{}",
            self.printed
        );
    }
}

impl Drop for CatchMail {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catcher_prints_and_files_what_mailroom_sends() {
    let _watchdog = crate::support::watchdog();
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("caught");
    let mut catcher = CatchMail::start(&dir);
    let server = TestServer::start().await;
    server.configure_smtp(catcher.port).await;

    // A password reset, and a notification in HTML (which mailroom gives a text part).
    let mut request = issue_request("alice", pb::TokenPurpose::PasswordReset);
    request.send_email = true;
    request.link_template = "https://thehive.example.com/reset/{token}".into();
    let issued = server
        .tokens(&server.admin_key)
        .issue_token(request)
        .await
        .expect("issue a token")
        .into_inner();
    let sent = server
        .notifier(&server.admin_key)
        .send_to_addresses(pb::SendToAddressesRequest {
            organisation: "acme".into(),
            to: vec!["soc@example.com".into()],
            subject: "Case #{{n}} opened".into(),
            body: "<p>Case <b>#{{n}}</b> needs you</p>".into(),
            format: pb::BodyFormat::Html.into(),
            context: Some(prost_types::Struct {
                fields: [(
                    "n".to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::NumberValue(42.0)),
                    },
                )]
                .into(),
            }),
            ..Default::default()
        })
        .await
        .expect("send to addresses")
        .into_inner();
    for id in [&issued.message_id, &sent.message_ids[0]] {
        server.wait_for_state(id, pb::MessageState::Sent).await;
    }

    // Printed: the envelope, the headers (decoded) and the text part, for each message.
    catcher.wait_for("RCPT TO: <alice@example.com>");
    catcher.wait_for(&format!(
        "https://thehive.example.com/reset/{}",
        issued.token
    ));
    catcher.wait_for("RCPT TO: <soc@example.com>");
    catcher.wait_for("Case #42 needs you");
    let printed = catcher.printed.clone();
    for expected in [
        "MAIL FROM: <thehive@example.com>",
        "Subject: Reset your password",
        "Subject: Case #42 opened",
        "From: TheHive <thehive@example.com>",
    ] {
        assert!(
            printed.contains(expected),
            "{expected:?} not in:\n{printed}"
        );
    }
    assert!(
        !printed.contains("<b>"),
        "the HTML part was printed:\n{printed}"
    );

    // Filed: one whole .eml per message, nothing half-written beside them.
    let files = eml_files(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let contents: Vec<String> = files
        .iter()
        .map(|f| {
            assert_eq!(f.extension().unwrap(), "eml", "{f:?}");
            std::fs::read_to_string(f).unwrap()
        })
        .collect();
    assert!(contents
        .iter()
        .any(|c| c.contains("Subject: Reset your password")));
    assert!(contents
        .iter()
        .any(|c| c.contains("Subject: Case #42 opened")));
    for (file, content) in files.iter().zip(&contents) {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(printed.contains(name), "{name} not printed");
        assert!(content.contains("Message-ID: "), "{content}");
    }

    // SIGTERM ends it cleanly.
    kill(Pid::from_raw(catcher.child.id() as i32), Signal::SIGTERM).unwrap();
    let child = &mut catcher.child;
    let status = eventually(Duration::from_secs(10), "exit after SIGTERM", async || {
        child.try_wait().unwrap()
    })
    .await;
    assert!(status.success(), "{status}");
}

/// A catcher run in this process with `limits` applied to its defaults: its address and
/// what it printed so far.
struct InProcess {
    addr: SocketAddr,
    dir: PathBuf,
    printed: Arc<Mutex<String>>,
    _stop: oneshot::Sender<()>,
    _temp: tempfile::TempDir,
}

impl InProcess {
    async fn start(limits: impl FnOnce(&mut CatchMailArgs)) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("caught");
        let mut args = CatchMailArgs::with_dir(&dir);
        limits(&mut args);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (out, mut printed_end) = tokio::io::duplex(1 << 16);
        let printed = Arc::new(Mutex::new(String::new()));
        let sink = printed.clone();
        tokio::spawn(async move {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = printed_end.read(&mut buf).await {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(mailroom::catcher::run(
            listener,
            async move {
                let _ = stopped.await;
            },
            args,
            Box::new(out),
        ));
        Self {
            addr,
            dir,
            printed,
            _stop: stop,
            _temp: temp,
        }
    }

    async fn connect(&self) -> Client {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (read, write) = stream.into_split();
        let mut client = Client {
            read: AsyncBufReader::new(read),
            write,
        };
        assert_eq!(client.reply().await.0, 220);
        client
    }
}

/// An SMTP client that sends what it is told, bounds or not.
struct Client {
    read: AsyncBufReader<tokio::net::tcp::OwnedReadHalf>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    /// The next reply: its code and text (0 when the connection closed without one).
    async fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let read =
                tokio::time::timeout(Duration::from_secs(10), self.read.read_line(&mut line))
                    .await
                    .expect("a reply within 10 s");
            if read.unwrap_or(0) == 0 {
                return (0, text);
            }
            text += &line;
            if line.as_bytes().get(3) != Some(&b'-') {
                return (line[..3].parse().unwrap(), text);
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.unwrap();
    }

    /// Sends one command line; the reply's code.
    async fn command(&mut self, line: &str) -> u16 {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await.0
    }

    /// MAIL FROM, RCPT TO and DATA for `content` (already dot-stuffed); the final reply.
    async fn message(&mut self, content: &str) -> (u16, String) {
        assert_eq!(self.command("MAIL FROM:<a@example.com>").await, 250);
        assert_eq!(self.command("RCPT TO:<b@example.com>").await, 250);
        assert_eq!(self.command("DATA").await, 354);
        self.send(content.as_bytes()).await;
        self.send(b".\r\n").await;
        self.reply().await
    }
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_and_the_session_goes_on() {
    let _watchdog = crate::support::watchdog();
    let catcher = InProcess::start(|a| a.max_message_bytes = 1000).await;
    let mut client = catcher.connect().await;
    assert_eq!(client.command("EHLO client.example").await, 250);
    let big = "x".repeat(100) + "\r\n";
    let (code, text) = client.message(&big.repeat(20)).await;
    assert_eq!(code, 552, "{text}");
    // The session is back out of DATA: the next message is taken.
    let (code, text) = client.message("Subject: small\r\n\r\n..dot\r\n").await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(client.command("QUIT").await, 221);
    let files = eml_files(&catcher.dir);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        std::fs::read_to_string(&files[0]).unwrap(),
        "Subject: small\r\n\r\n.dot\r\n"
    );
    let printed = catcher.printed.lock().unwrap().clone();
    assert!(printed.contains("Subject: small\n---\n.dot\n"), "{printed}");
}

#[tokio::test]
async fn connections_beyond_the_limit_are_answered_421() {
    let _watchdog = crate::support::watchdog();
    let catcher = InProcess::start(|a| a.max_connections = 2).await;
    let _first = catcher.connect().await;
    let _second = catcher.connect().await;
    let stream = TcpStream::connect(catcher.addr).await.unwrap();
    let mut third = AsyncBufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), third.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert!(line.starts_with("421 "), "{line}");
    drop(_first);
    // Its slot comes back once the catcher sees it closed.
    eventually(Duration::from_secs(10), "the slot back", async || {
        let stream = TcpStream::connect(catcher.addr).await.unwrap();
        let mut reader = AsyncBufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line.starts_with("220 ") {
            Ok(())
        } else {
            Err(line)
        }
    })
    .await;
}

#[tokio::test]
async fn a_silent_or_endless_connection_is_closed() {
    let _watchdog = crate::support::watchdog();
    let catcher = InProcess::start(|a| {
        a.idle_timeout = Duration::from_millis(200);
        a.connection_timeout = Duration::from_secs(1);
    })
    .await;
    // Silent: closed after the idle timeout.
    let mut silent = catcher.connect().await;
    let (code, text) = silent.reply().await;
    assert_eq!(code, 421, "{text}");
    assert_eq!(silent.reply().await.0, 0, "closed");

    // Busy but endless (a NOOP every 100 ms): closed after the connection timeout. Its own
    // catcher, idle for far longer than a busy machine can delay a NOOP: the idle timeout
    // above once closed it first.
    let patient = InProcess::start(|a| {
        a.idle_timeout = Duration::from_secs(30);
        a.connection_timeout = Duration::from_secs(1);
    })
    .await;
    let mut busy = patient.connect().await;
    let started = Instant::now();
    loop {
        busy.send(b"NOOP\r\n").await;
        let (code, text) = busy.reply().await;
        if code != 250 {
            assert_eq!(code, 421, "{text}");
            assert!(text.contains("connection open longer than 1s"), "{text}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A line without an end: refused once it passes the longest line, not held in memory.
    let mut endless = catcher.connect().await;
    endless.send(&[b'x'; 9000]).await;
    let (code, text) = endless.reply().await;
    assert_eq!(code, 500, "{text}");
}

#[tokio::test]
async fn recipients_and_the_disk_are_bounded() {
    let _watchdog = crate::support::watchdog();
    let first = "Subject: fills the disk\r\n\r\n"; // 27 bytes
    let second = "Subject: would pass it\r\n\r\nxxxxx\r\n"; // 33: 60 in all
    let third = "Subject: fits\r\n\r\nxxxxxx\r\n"; // 25: 52 in all, then nothing fits
    const MAX: u64 = 52;
    let catcher = InProcess::start(|a| a.max_stored_bytes = MAX).await;
    let mut client = catcher.connect().await;
    assert_eq!(client.command("HELO client.example").await, 250);
    assert_eq!(client.command("MAIL FROM:<a@example.com>").await, 250);
    for i in 0..100 {
        assert_eq!(
            client.command(&format!("RCPT TO:<r{i}@example.com>")).await,
            250
        );
    }
    assert_eq!(client.command("RCPT TO:<r100@example.com>").await, 452);
    assert_eq!(client.command("RSET").await, 250);
    let (code, text) = client.message(first).await;
    assert_eq!(code, 250, "{text}");
    // Checked before it is written: a message that would pass the bound is refused whole,
    // and one that fits in what is left is still taken.
    let (code, text) = client.message(second).await;
    assert_eq!(code, 452, "{text}");
    assert!(text.contains("--max-stored-bytes"), "{text}");
    let (code, text) = client.message(third).await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(client.command("MAIL FROM:<a@example.com>").await, 452);
    let files = eml_files(&catcher.dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let written: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(
        written, MAX,
        "exactly up to --max-stored-bytes, never beyond"
    );
}

/// Messages ending at once on many connections cannot pass `--max-stored-bytes` together:
/// each is counted before it is written.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_messages_do_not_pass_the_disk_bound() {
    let _watchdog = crate::support::watchdog();
    let message = "Subject: racing\r\n\r\n".to_string() + &"x".repeat(79) + "\r\n"; // 100 bytes
    let catcher = InProcess::start(|a| a.max_stored_bytes = 350).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut client = catcher.connect().await;
        assert_eq!(client.command("HELO client.example").await, 250);
        assert_eq!(client.command("MAIL FROM:<a@example.com>").await, 250);
        assert_eq!(client.command("RCPT TO:<b@example.com>").await, 250);
        assert_eq!(client.command("DATA").await, 354);
        client.send(message.as_bytes()).await;
        clients.push(client);
    }
    // Every final dot at once.
    let mut endings = tokio::task::JoinSet::new();
    for mut client in clients {
        endings.spawn(async move {
            client.send(b".\r\n").await;
            client.reply().await.0
        });
    }
    let codes: Vec<u16> = endings.join_all().await;
    assert_eq!(codes.iter().filter(|&&c| c == 250).count(), 3, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 452).count(), 5, "{codes:?}");
    let written: u64 = eml_files(&catcher.dir)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(written, 300);
}

#[tokio::test]
async fn the_catcher_listens_on_loopback_unless_told_otherwise() {
    let _watchdog = crate::support::watchdog();
    let mut args = CatchMailArgs::with_dir(tempfile::tempdir().unwrap().path());
    args.listen = "0.0.0.0:0".parse().unwrap();
    let refused = mailroom::catcher::serve(args, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("--allow-remote"),
        "{refused:#}"
    );
}

/// The flags a `--help` text offers (`--name`), in order.
fn offered_flags(help: &str) -> Vec<String> {
    help.lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .chain(
            help.lines()
                .filter_map(|l| l.trim_start().strip_prefix("-h, --")),
        )
        .map(|rest| rest.split([' ', '<', ',']).next().unwrap().to_string())
        .collect()
}

fn help_of(args: &[&str]) -> String {
    let output = hermetic(&mut Command::new(env!("CARGO_BIN_EXE_mailroom")))
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// `mailroom catch-mail --help` shows the catcher's flags and nothing of the server's (no
/// store, etcd, TLS or log flags: the catcher has none of them), and the server's flags are
/// refused before a subcommand rather than ignored; `rotate-master-key` has the store's.
#[test]
fn catch_mail_help_shows_only_its_own_flags() {
    let _watchdog = crate::support::watchdog();
    let help = help_of(&["catch-mail", "--help"]);
    assert_eq!(
        offered_flags(&help),
        [
            "listen",
            "dir",
            "allow-remote",
            "max-message-bytes",
            "max-stored-bytes",
            "max-connections",
            "idle-timeout",
            "connection-timeout",
            "help"
        ],
        "{help}"
    );
    let server = offered_flags(&help_of(&["--help"]));
    for flag in [
        "data-dir",
        "store",
        "etcd-endpoints",
        "log-format",
        "workers",
    ] {
        assert!(server.contains(&flag.to_string()), "{flag}: {server:?}");
    }
    let rotate = offered_flags(&help_of(&["rotate-master-key", "--help"]));
    for flag in [
        "data-dir",
        "store",
        "etcd-endpoints",
        "master-key-file",
        "log-format",
    ] {
        assert!(rotate.contains(&flag.to_string()), "{flag}: {rotate:?}");
    }
    assert!(!rotate.contains(&"listen".to_string()), "{rotate:?}");

    let refused = hermetic(&mut Command::new(env!("CARGO_BIN_EXE_mailroom")))
        .args(["--data-dir", "/nonexistent", "catch-mail", "--help"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("cannot be used with"),
        "{refused:?}"
    );
}
