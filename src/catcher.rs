//! `mailroom catch-mail`: a mail catcher for trying mailroom and for tests, as Supabase's
//! local stack ships Inbucket/Mailpit. An SMTP server that accepts every message, prints
//! its envelope, headers and text part as it arrives, and writes it to a folder as an
//! `.eml` file. It is not a relay: nothing is delivered anywhere.
//!
//! Entry point: [`run`]`(listener, shutdown, args, out)`, as the server's own `run`; [`serve`]
//! binds `--listen` first (loopback only, unless `--allow-remote`) and prints to stdout.
//!
//! The SMTP dialogue is `mailin`'s state machine (the protocol core of `mailin-embedded`,
//! which the tests use as their SMTP server), driven here by a small tokio loop. Not
//! `mailin-embedded` itself: its server reads each line with an unbounded `read_until` (one
//! line without a newline fills the memory), queues every accepted connection without limit
//! behind its thread pool, gives a connection five minutes per read but no limit in all, and
//! `serve()` never returns (no shutdown). Here every input is bounded: the length of a line,
//! a message's size, its recipients, the connections open at once, their silence and their
//! whole life, and the bytes written to disk by one run. `mailparse` reads the caught
//! message for its headers and text part.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use mailin::{Action, Handler, Response, SessionBuilder};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::CatchMailArgs;

/// Longest line accepted, CRLF included. RFC 5321 §4.5.3.1.6 allows 1,000 in the content
/// and 512 for a command; the margin is for senders that fold long headers late.
const MAX_LINE: u64 = 8 * 1024;

/// Recipients of one message (RFC 5321 §4.5.3.1.8: a server must accept at least 100).
const MAX_RECIPIENTS: usize = 100;

/// The most of a text part printed; the `.eml` file has all of it.
const MAX_PRINTED_TEXT: usize = 64 * 1024;

/// The most header lines printed of a message, and the most bytes of each (RFC 5322's
/// longest line): a message of ten thousand headers, or one header folded over megabytes,
/// does not flood the terminal; the `.eml` file has all of them.
const MAX_PRINTED_HEADERS: usize = 100;
const MAX_PRINTED_HEADER: usize = 998;

/// Where the printed lines go: stdout for the command, a pipe in tests.
pub type Output = Box<dyn AsyncWrite + Send + Unpin>;

/// Binds `--listen` (refusing an address that is not loopback without `--allow-remote`),
/// then runs the catcher until `shutdown`, printing to stdout.
pub async fn serve(args: CatchMailArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() && !args.allow_remote {
        bail!(
            "--listen {} is not a loopback address: anyone reaching it could write to {} \
             (add --allow-remote if that is what you want)",
            args.listen,
            args.dir.display()
        );
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    run(listener, shutdown, args, Box::new(tokio::io::stdout())).await
}

/// Accepts SMTP on `listener` until `shutdown`, writing each message to `args.dir` and a
/// description of it to `out`. The first line printed names the address and the folder.
pub async fn run(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    args: CatchMailArgs,
    out: Output,
) -> anyhow::Result<()> {
    tokio::fs::create_dir_all(&args.dir)
        .await
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let addr = listener.local_addr()?;
    let catcher = Arc::new(Catcher {
        out: tokio::sync::Mutex::new(out),
        stored: AtomicU64::new(0),
        caught: AtomicU64::new(0),
        args,
    });
    catcher
        .print(format!(
            "mailroom catch-mail: accepting SMTP on {addr}, writing each message to {}/ \
             (not a relay: nothing is delivered)\n",
            catcher.args.dir.display()
        ))
        .await;
    let slots = Arc::new(Semaphore::new(catcher.args.max_connections as usize));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: let some connections end.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Never waits: a client that does not read gets no answer, not a task.
            let _ = stream.try_write(b"421 4.7.0 too many connections, try again later\r\n");
            continue;
        };
        let catcher = catcher.clone();
        let span = tracing::info_span!("smtp", %peer);
        connections.spawn(
            async move {
                catcher.connection(stream, peer).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
    // A catcher keeps nothing in flight worth waiting for: a message is written to its
    // file whole (renamed into place) or not at all.
    connections.shutdown().await;
    catcher.out.lock().await.flush().await?;
    Ok(())
}

struct Catcher {
    args: CatchMailArgs,
    out: tokio::sync::Mutex<Output>,
    /// Bytes written to `--dir` by this run (`--max-stored-bytes`).
    stored: AtomicU64,
    /// Messages caught by this run: numbers them.
    caught: AtomicU64,
}

impl Catcher {
    /// One connection, closed after `--connection-timeout` whatever it does.
    async fn connection(&self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let (reader, mut writer) = stream.into_split();
        let life = self.args.connection_timeout;
        match tokio::time::timeout(life, self.dialogue(reader, &mut writer, peer)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "connection ended"),
            Err(_) => {
                let bye = format!("421 4.4.2 connection open longer than {life:?}, closing\r\n");
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), writer.write_all(bye.as_bytes()))
                        .await;
            }
        }
    }

    /// The SMTP dialogue: lines in, `mailin`'s answers out, each message filed before its 250.
    async fn dialogue(
        &self,
        reader: impl AsyncRead + Unpin,
        writer: &mut (impl AsyncWrite + Unpin),
        peer: SocketAddr,
    ) -> std::io::Result<()> {
        let finished = Arc::new(Mutex::new(None));
        let collector = Collector {
            max_bytes: self.args.max_message_bytes,
            max_stored: self.args.max_stored_bytes,
            stored: &self.stored,
            recipients: 0,
            message: None,
            finished: finished.clone(),
        };
        let mut session = SessionBuilder::new("mailroom-catch-mail").build(peer.ip(), collector);
        let idle = self.args.idle_timeout;
        let mut reader = BufReader::new(reader);
        let mut line = Vec::with_capacity(256);
        send(writer, &session.greeting(), idle).await?;
        loop {
            line.clear();
            let mut limited = (&mut reader).take(MAX_LINE);
            let n = match tokio::time::timeout(idle, limited.read_until(b'\n', &mut line)).await {
                Ok(n) => n?,
                Err(_) => {
                    let bye = format!("421 4.4.2 nothing received for {idle:?}, closing\r\n");
                    return write_with_timeout(writer, bye.as_bytes(), idle).await;
                }
            };
            if n == 0 || !line.ends_with(b"\n") {
                if n as u64 == MAX_LINE {
                    let bye = format!("500 5.5.2 line longer than {MAX_LINE} bytes, closing\r\n");
                    return write_with_timeout(writer, bye.as_bytes(), idle).await;
                }
                return Ok(()); // the client hung up
            }
            let mut response = session.process(&line);
            let ended = finished.lock().map(|mut m| m.take()).unwrap_or(None);
            match ended {
                None => {}
                Some(Ended::Refused(refusal)) => response = refusal,
                Some(Ended::Caught(message)) if !self.reserve(message.data.len() as u64) => {
                    response = Response::custom(
                        452,
                        format!(
                            "4.3.1 --max-stored-bytes: this message of {} bytes would pass the \
                             {} bytes this run may write",
                            message.data.len(),
                            self.args.max_stored_bytes
                        ),
                    );
                }
                Some(Ended::Caught(message)) => {
                    let bytes = message.data.len() as u64;
                    if let Err(e) = self.file(message, peer).await {
                        tracing::warn!(error = %e, "cannot write a caught message");
                        self.stored.fetch_sub(bytes, Ordering::Relaxed);
                        response =
                            Response::custom(451, format!("4.3.0 cannot write the message: {e}"));
                    }
                }
            }
            if response.action == Action::NoReply {
                continue;
            }
            send(writer, &response, idle).await?;
            if response.action != Action::Reply {
                return Ok(()); // QUIT, or a closing error
            }
        }
    }

    /// Counts `bytes` against `--max-stored-bytes` before they are written, unless they would
    /// pass it: checked and added in one step, so that messages ending at once on several
    /// connections cannot pass it together either.
    fn reserve(&self, bytes: u64) -> bool {
        let max = self.args.max_stored_bytes;
        self.stored
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |stored| {
                stored.checked_add(bytes).filter(|&total| total <= max)
            })
            .is_ok()
    }

    /// Writes the message to its `.eml` file (whole, renamed into place), then prints it.
    /// Its bytes were counted by [`Catcher::reserve`].
    async fn file(&self, message: Caught, peer: SocketAddr) -> anyhow::Result<()> {
        let number = self.caught.fetch_add(1, Ordering::Relaxed) + 1;
        let dir = self.args.dir.clone();
        let data = Arc::new(message.data);
        let written = data.clone();
        let path = tokio::task::spawn_blocking(move || write_eml(&dir, number, &written)).await??;
        tracing::debug!(number, path = %path.display(), bytes = data.len(), "caught a message");
        let text = describe(number, peer, &message.from, &message.to, &data, &path);
        self.print(text).await;
        Ok(())
    }

    /// Prints one block at a time: blocks of messages caught together never interleave.
    async fn print(&self, text: String) {
        let mut out = self.out.lock().await;
        let _ = out.write_all(text.as_bytes()).await;
        let _ = out.flush().await;
    }
}

async fn send(
    writer: &mut (impl AsyncWrite + Unpin),
    response: &Response,
    limit: Duration,
) -> std::io::Result<()> {
    write_with_timeout(writer, &response.buffer()?, limit).await
}

/// A write bounded in time: a client that does not read cannot hold the connection.
async fn write_with_timeout(
    writer: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    match tokio::time::timeout(limit, writer.write_all(bytes)).await {
        Ok(written) => written,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// A message as received: the envelope and the content (dots unstuffed by `mailin`).
struct Caught {
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

/// How a message's final dot is answered: filed (then 250), or refused.
enum Ended {
    Caught(Caught),
    Refused(Response),
}

/// `mailin`'s handler for one connection: accepts everything within the bounds, and tells
/// the dialogue how a message ended through `finished` (the session owns the handler).
/// `data_end` itself always answers OK: mailin 0.6.5 leaves a session whose final dot was
/// refused in its DATA state, reading the next commands as content; the dialogue puts the
/// refusal in the place of that OK.
struct Collector<'a> {
    max_bytes: u64,
    max_stored: u64,
    stored: &'a AtomicU64,
    /// Recipients of the message being addressed (`mailin` keeps them; the count is ours).
    recipients: usize,
    /// The message being received, and whether it outgrew `max_bytes` (its content is then
    /// dropped, the rest read and counted, and the answer at the final dot is 552).
    message: Option<(Caught, bool)>,
    finished: Arc<Mutex<Option<Ended>>>,
}

impl Collector<'_> {
    fn disk_full(&self) -> bool {
        self.stored.load(Ordering::Relaxed) >= self.max_stored
    }
}

impl Handler for Collector<'_> {
    fn mail(&mut self, _ip: IpAddr, _domain: &str, _from: &str) -> Response {
        self.message = None;
        self.recipients = 0;
        if self.disk_full() {
            return Response::custom(
                452,
                "4.3.1 --max-stored-bytes reached: no more messages".into(),
            );
        }
        mailin::response::OK
    }

    fn rcpt(&mut self, _to: &str) -> Response {
        if self.recipients >= MAX_RECIPIENTS {
            return Response::custom(452, format!("4.5.3 more than {MAX_RECIPIENTS} recipients"));
        }
        self.recipients += 1;
        mailin::response::OK
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        if self.disk_full() {
            return Response::custom(
                452,
                "4.3.1 --max-stored-bytes reached: no more messages".into(),
            );
        }
        let caught = Caught {
            from: from.to_string(),
            to: to.to_vec(),
            data: Vec::new(),
        };
        self.message = Some((caught, false));
        mailin::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some((caught, too_big)) = &mut self.message {
            if *too_big || (caught.data.len() + buf.len()) as u64 > self.max_bytes {
                *too_big = true;
                caught.data = Vec::new();
            } else {
                caught.data.extend_from_slice(buf);
            }
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let ended = match self.message.take() {
            Some((_, true)) => Ended::Refused(Response::custom(
                552,
                format!(
                    "5.3.4 message larger than {} bytes (--max-message-bytes)",
                    self.max_bytes
                ),
            )),
            Some((caught, false)) => Ended::Caught(caught),
            None => Ended::Refused(mailin::response::INTERNAL_ERROR),
        };
        if let Ok(mut finished) = self.finished.lock() {
            *finished = Some(ended);
        }
        mailin::response::OK
    }
}

/// Writes `data` to `<dir>/<UTC time>-<number>.eml`: to a temporary file first, then renamed
/// without replacing anything, so that a reader of the folder sees whole messages only.
fn write_eml(dir: &Path, number: u64, data: &[u8]) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let mut file = tempfile::Builder::new()
        .prefix(".catching-")
        .tempfile_in(dir)?;
    file.write_all(data)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let mut attempt = 0;
    loop {
        let name = match attempt {
            0 => format!("{stamp}-{number}.eml"),
            n => format!("{stamp}-{number}-{n}.eml"),
        };
        match file.persist_noclobber(dir.join(&name)) {
            Ok(_) => return Ok(dir.join(name)),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                file = e.file;
                attempt += 1;
            }
            Err(e) => return Err(e.error),
        }
    }
}

/// What is printed of a message: a title line, the envelope, the headers, and the text part.
fn describe(
    number: u64,
    peer: SocketAddr,
    from: &str,
    to: &[String],
    data: &[u8],
    path: &Path,
) -> String {
    let mut text = format!(
        "\n=== message {number} from {peer}, {} bytes, written to {}\n",
        data.len(),
        path.display()
    );
    text += &format!("MAIL FROM: <{}>\n", printable(from));
    for rcpt in to {
        text += &format!("RCPT TO: <{}>\n", printable(rcpt));
    }
    text += "---\n";
    match mailparse::parse_mail(data) {
        Ok(mail) => {
            for header in mail.headers.iter().take(MAX_PRINTED_HEADERS) {
                let line = format!("{}: {}", header.get_key(), header.get_value());
                let shown = truncate(&line, MAX_PRINTED_HEADER);
                text += &printable(shown);
                if shown.len() < line.len() {
                    text += &format!(" [... {} more bytes]", line.len() - shown.len());
                }
                text.push('\n');
            }
            if mail.headers.len() > MAX_PRINTED_HEADERS {
                text += &format!(
                    "[... {} more header lines in the file]\n",
                    mail.headers.len() - MAX_PRINTED_HEADERS
                );
            }
            text += "---\n";
            match text_part(&mail) {
                Some(body) => {
                    let body = body.replace("\r\n", "\n");
                    let shown = truncate(&body, MAX_PRINTED_TEXT);
                    text += &printable_text(shown);
                    if shown.len() < body.len() {
                        text += &format!(
                            "\n[... {} more bytes in the file]",
                            body.len() - shown.len()
                        );
                    }
                    if !text.ends_with('\n') {
                        text.push('\n');
                    }
                }
                None => text += &format!("(no text/plain part; {})\n", mail.ctype.mimetype),
            }
        }
        Err(e) => text += &format!("(not a MIME message: {})\n", printable(&e.to_string())),
    }
    text
}

/// The first `text/plain` part that is not an attachment, decoded.
fn text_part(mail: &mailparse::ParsedMail) -> Option<String> {
    if mail.subparts.is_empty() {
        let attachment =
            mail.get_content_disposition().disposition == mailparse::DispositionType::Attachment;
        return (mail.ctype.mimetype.eq_ignore_ascii_case("text/plain") && !attachment)
            .then(|| mail.get_body().ok())
            .flatten();
    }
    mail.subparts.iter().find_map(text_part)
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A header or an address as it may reach a terminal: a control character (an escape
/// sequence that would recolour or rewrite the screen, a CR that would overwrite the line,
/// C1's single-byte CSI) or a Unicode bidirectional control (which reorders what follows it
/// on the line, so that a sender could make text read as something else: "Trojan Source",
/// CVE-2021-42574) is shown escaped, `\u{202e}`.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| match c.is_control() || is_bidi_control(c) {
            true => c.escape_default().collect::<Vec<_>>(),
            false => vec![c],
        })
        .collect()
}

/// Unicode's bidirectional formatting characters (UAX #9 §2: the embeddings and overrides
/// U+202A–U+202E, the isolates U+2066–U+2069, and the marks ALM, LRM and RLM), and the line
/// and paragraph separators, which some terminals break lines on.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            | '\u{2028}' | '\u{2029}'
    )
}

/// A text part likewise, keeping its line breaks and tabs.
fn printable_text(text: &str) -> String {
    text.split('\n')
        .map(|line| {
            line.split('\t')
                .map(printable)
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALTERNATIVE: &str = "From: a@example.com\r\nTo: b@example.com\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\
        MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
        --b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
        Hello =C3=A9\r\nbye\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>Hello</p>\r\n--b--\r\n";

    #[test]
    fn the_text_part_of_a_multipart_message_is_printed_decoded() {
        let peer: SocketAddr = "127.0.0.1:1234".parse().unwrap();
        let to = vec!["b@example.com".to_string()];
        let shown = describe(
            7,
            peer,
            "a@example.com",
            &to,
            ALTERNATIVE.as_bytes(),
            Path::new("x.eml"),
        );
        assert!(
            shown.contains("=== message 7 from 127.0.0.1:1234"),
            "{shown}"
        );
        assert!(
            shown.contains("MAIL FROM: <a@example.com>\nRCPT TO: <b@example.com>\n"),
            "{shown}"
        );
        assert!(shown.contains("Subject: café\n"), "{shown}");
        assert!(shown.contains("Hello é\nbye\n"), "{shown}");
        assert!(!shown.contains("<p>"), "{shown}");
    }

    #[test]
    fn control_characters_reach_the_terminal_escaped() {
        let mail = "Subject: a\x1b[2Jb\r\n\r\nline\x1b]0;title\x07\r\n\tnext\r\n";
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let shown = describe(1, peer, "x\ry", &[], mail.as_bytes(), Path::new("x.eml"));
        assert!(
            !shown.contains('\x1b') && !shown.contains('\x07') && !shown.contains('\r'),
            "{shown:?}"
        );
        assert!(shown.contains("Subject: a\\u{1b}[2Jb"), "{shown}");
        assert!(shown.contains("\n\tnext"), "{shown}");
    }

    #[test]
    fn bidi_controls_reach_the_terminal_escaped() {
        // "Trojan Source": U+202E reverses what follows on the line, U+2066 isolates it.
        let mail =
            "Subject: invoice \u{202e}fdp.exe\u{202c}\r\nX-Note: a\u{2066}b\u{2069}\u{200f}\r\n\
                    Content-Type: text/plain; charset=utf-8\r\n\r\n\
                    pay \u{202d}now\u{2067}x\u{2068}\u{061c}\u{2028}\r\n";
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let to = vec!["b\u{202e}@example.com".to_string()];
        let shown = describe(
            1,
            peer,
            "a\u{202a}",
            &to,
            mail.as_bytes(),
            Path::new("x.eml"),
        );
        let bidi = |c: char| {
            matches!(
                c,
                '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
            ) || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)
        };
        assert!(!shown.chars().any(bidi), "{shown:?}");
        assert!(
            shown.contains("Subject: invoice \\u{202e}fdp.exe\\u{202c}\n"),
            "{shown}"
        );
        assert!(
            shown.contains("X-Note: a\\u{2066}b\\u{2069}\\u{200f}\n"),
            "{shown}"
        );
        assert!(shown.contains("MAIL FROM: <a\\u{202a}>"), "{shown}");
        assert!(
            shown.contains("RCPT TO: <b\\u{202e}@example.com>"),
            "{shown}"
        );
        assert!(
            shown.contains("pay \\u{202d}now\\u{2067}x\\u{2068}\\u{61c}\\u{2028}\n"),
            "{shown}"
        );
        // Letters of right-to-left scripts are text, not controls: shown as they are.
        assert_eq!(printable("שלום"), "שלום");
    }

    #[test]
    fn header_lines_printed_are_capped_in_number_and_length() {
        let mut mail = String::new();
        for i in 0..150 {
            mail += &format!("X-Flood-{i}: {i}\r\n");
        }
        mail += &format!(
            "X-Folded: {}\r\n",
            "word ".repeat(1000).replace(' ', "\r\n ")
        );
        mail += "\r\nbody\r\n";
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let shown = describe(1, peer, "", &[], mail.as_bytes(), Path::new("x.eml"));
        let (headers, body) = shown
            .split_once("\n---\n")
            .unwrap()
            .1
            .split_once("\n---\n")
            .unwrap();
        let lines: Vec<&str> = headers.lines().collect();
        assert_eq!(lines.len(), MAX_PRINTED_HEADERS + 1, "{headers}");
        assert_eq!(lines[MAX_PRINTED_HEADERS - 1], "X-Flood-99: 99");
        assert_eq!(
            lines[MAX_PRINTED_HEADERS],
            "[... 51 more header lines in the file]"
        );
        assert_eq!(body, "body\n");

        let long = format!("Subject: {}\r\n\r\n", "a".repeat(5000));
        let shown = describe(1, peer, "", &[], long.as_bytes(), Path::new("x.eml"));
        let subject = shown.lines().find(|l| l.starts_with("Subject:")).unwrap();
        assert!(subject.len() < MAX_PRINTED_HEADER + 40, "{subject}");
        assert!(subject.ends_with(" [... 4011 more bytes]"), "{subject}");
    }

    #[test]
    fn a_message_without_a_text_part_says_so() {
        let mail = "Content-Type: text/html\r\n\r\n<p>hi</p>\r\n";
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let shown = describe(1, peer, "", &[], mail.as_bytes(), Path::new("x.eml"));
        assert!(shown.contains("(no text/plain part; text/html)"), "{shown}");
    }

    #[test]
    fn a_long_text_is_cut_on_a_character() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
