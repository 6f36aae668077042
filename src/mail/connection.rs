//! An SMTP connection from the settings, opened stage by stage — CONNECT, TLS, EHLO,
//! AUTH — with lettre's connection-level API over a TCP stream mailroom opens itself, with
//! `TCP_NODELAY` (lettre writes a message and its final dot apart, which Nagle's algorithm
//! and delayed ACKs would hold back 40 ms per message). The staged test reports every
//! stage; delivery keeps the connection for the next messages.
//!
//! CONNECT resolves the host once through the settings' [`AddressGuard`] (which, with
//! `--smtp-deny-private-addresses`, refuses special-purpose addresses) and connects only to
//! an address it checked; TLS still verifies the certificate for the host's name.
//!
//! `STARTTLS` is required when the settings say so: if the server does not offer it, the
//! connection ends there, before any credentials or message. Credentials go over an
//! unencrypted connection only with security `NONE` (whose password was given with `NONE`:
//! lowering `security` needs the password again); with `STARTTLS_OPPORTUNISTIC` and no
//! STARTTLS offered, the AUTH stage fails without sending them.
//!
//! A message goes out with its `MAIL FROM`, `RCPT TO` and `DATA` in one write when the
//! server offers PIPELINING (RFC 2920), as Postfix's client does: two round trips instead of
//! four. lettre speaks lock-step only, so [`Smtp::send`] groups lettre's own commands, and
//! writes the content with its final dot in one piece. Either way the content's bare CRs and
//! LFs become CRLF before its dots are stuffed ([`crlf_line_ends`]).

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::tls::TlsPolicy;
use crate::crypto::MasterKey;
use crate::settings::{AddressGuard, Security, SmtpSettings};

/// The stages of an SMTP exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// TCP connection.
    Connect,
    /// TLS handshake.
    Tls,
    /// Greeting and EHLO.
    Ehlo,
    /// SMTP AUTH.
    Auth,
    /// MAIL FROM.
    MailFrom,
    /// RCPT TO.
    RcptTo,
    /// DATA and the message.
    Data,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Connect => "CONNECT",
            Stage::Tls => "TLS",
            Stage::Ehlo => "EHLO",
            Stage::Auth => "AUTH",
            Stage::MailFrom => "MAIL_FROM",
            Stage::RcptTo => "RCPT_TO",
            Stage::Data => "DATA",
        })
    }
}

/// A stage failed; the observer has its details.
#[derive(Debug)]
pub struct Failed;

/// Watches the stages of an exchange: the staged test reports them all, delivery keeps the
/// failure.
pub trait Stages {
    /// A stage starts.
    fn begin(&mut self, stage: Stage);
    /// The stage succeeded.
    fn pass(&mut self, smtp_code: Option<u16>, detail: String);
    /// The stage failed.
    fn fail(&mut self, smtp_code: Option<u16>, detail: String) -> Failed;

    /// The stage succeeded with this reply.
    fn reply(&mut self, response: &Response) {
        let text: Vec<&str> = response.message().collect();
        self.pass(Some(u16::from(response.code())), text.join(" "));
    }

    /// The stage was refused before anything was sent: a problem of the settings that no
    /// retry fixes (the private-address guard). A failure unless the observer cares.
    fn refuse(&mut self, detail: String) -> Failed {
        self.fail(None, detail)
    }

    /// The stage failed with this lettre error (and the server's code, if it replied).
    fn smtp_fail(&mut self, e: lettre::transport::smtp::Error) -> Failed {
        let code = e.status().map(u16::from);
        self.fail(code, e.to_string())
    }
}

/// The name sent in EHLO: the settings' `helo_name`, else this host's name.
pub fn client_id(settings: &SmtpSettings) -> ClientId {
    if settings.helo_name.is_empty() {
        ClientId::default()
    } else {
        ClientId::Domain(settings.helo_name.clone())
    }
}

/// An open connection, ready for messages.
pub struct Smtp {
    /// lettre's connection.
    pub connection: AsyncSmtpConnection,
    /// Whether the server offers PIPELINING, which lettre does not keep track of.
    pub pipelining: bool,
}

impl Smtp {
    /// Sends one message. With PIPELINING, `MAIL FROM`, every `RCPT TO` and `DATA` go in
    /// one write and every reply is read, the first refusal being the outcome, then the
    /// content in another; else (and for a message that needs SMTPUTF8 or 8BITMIME, which
    /// lettre's exchange negotiates) lettre's lock-step exchange. After an error the
    /// connection is not to be reused.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        email: &[u8],
    ) -> Result<Response, lettre::transport::smtp::Error> {
        // At send time, so that messages queued before this rule are covered too.
        let email = crlf_line_ends(email);
        let ascii = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .all(|address| AsRef::<str>::as_ref(address).is_ascii());
        if !self.pipelining || !ascii || !email.is_ascii() {
            return self.connection.send(envelope, &email).await;
        }
        let mut group = Mail::new(envelope.from().cloned(), vec![]).to_string();
        for to in envelope.to() {
            group.push_str(&Rcpt::new(to.clone(), vec![]).to_string());
        }
        group.push_str(&Data.to_string());
        let mut outcome = self.connection.command(group).await.map(drop);
        // The replies to every RCPT TO, then to DATA; a connection that failed has no more.
        for _ in 0..=envelope.to().len() {
            if outcome.as_ref().is_err_and(|e| e.status().is_none()) {
                break;
            }
            let reply = self.connection.read_response().await.map(drop);
            outcome = outcome.and(reply);
        }
        outcome?;
        // ASCII, checked above.
        let email = String::from_utf8_lossy(&email);
        self.connection.command(data_block(&email)).await
    }
}

/// `email` with every bare CR and every bare LF made a CRLF, the only line end of SMTP
/// (RFC 5321, 2.3.8), before the dots are stuffed. A bare one would let a body end DATA
/// early at a relay that takes `<LF>.<LF>` or `<CR>.<CR><LF>` for the end of the data, and
/// what follows be read as its commands (SMTP smuggling): the dot after a bare line end is
/// not one that stuffing sees at the start of a line. Borrowed when there is none.
pub fn crlf_line_ends(email: &[u8]) -> Cow<'_, [u8]> {
    let bare = |i: usize| match email[i] {
        b'\r' => email.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || email[i - 1] != b'\r',
        _ => false,
    };
    let Some(first) = (0..email.len()).find(|&i| bare(i)) else {
        return Cow::Borrowed(email);
    };
    let mut out = Vec::with_capacity(email.len() + 64);
    out.extend_from_slice(&email[..first]);
    let mut rest = email[first..].iter().peekable();
    while let Some(&byte) = rest.next() {
        match byte {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                rest.next_if_eq(&&b'\n');
            }
            // A CR took the LF after it: this one is bare.
            b'\n' => out.extend_from_slice(b"\r\n"),
            other => out.push(other),
        }
    }
    Cow::Owned(out)
}

/// The content of DATA in one piece: a dot doubled at the start of every line that starts
/// with one (RFC 5321, 4.5.2), then the final dot. lettre's `message` writes the content and
/// the final dot apart: one more write and segment per message. Lines end with CRLF only
/// ([`crlf_line_ends`]).
fn data_block(email: &str) -> String {
    let mut block = String::with_capacity(email.len() + 8);
    if email.starts_with('.') {
        block.push('.');
    }
    for (n, piece) in email.split("\r\n.").enumerate() {
        if n > 0 {
            block.push_str("\r\n..");
        }
        block.push_str(piece);
    }
    block.push_str("\r\n.\r\n");
    block
}

/// Opens a connection as `settings` say — CONNECT, TLS, EHLO, AUTH — telling `run` about
/// each stage. The host is resolved once, through `guard`, and the connection goes to one
/// of the addresses it checked; TLS still verifies the certificate for the host's name.
pub async fn open(
    settings: &SmtpSettings,
    key: &MasterKey,
    guard: &AddressGuard,
    run: &mut impl Stages,
) -> Result<Smtp, Failed> {
    let policy = match settings.security {
        Security::None => None,
        _ => Some(TlsPolicy::new(settings, key).map_err(|e| run.fail(None, e.to_string()))?),
    };
    run.begin(Stage::Connect);
    let checked = match guard.resolve(&settings.host, settings.port).await {
        Ok(checked) => checked,
        Err(e) if e.is_refusal() => {
            return Err(run.refuse(format!(
                "not connected: {e}; nothing was sent (change the settings' host, then retry)"
            )))
        }
        Err(e) => return Err(run.fail(None, e.to_string())),
    };
    let tcp = connect(checked.addresses())
        .await
        .map_err(|e| run.fail(None, e))?;
    run.pass(None, format!("connected to {}", peer(&tcp)));

    let stream: Box<dyn AsyncTokioStream> = match (&settings.security, &policy) {
        (Security::Ssl, Some(policy)) => {
            run.begin(Stage::Tls);
            let (config, name) = policy.rustls().map_err(|e| run.fail(None, e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    run.fail(
                        None,
                        format!("TLS handshake with {} failed: {e}", policy.server_name()),
                    )
                })?;
            let (_, session) = tls.get_ref();
            let detail = format!(
                "implicit TLS ({:?}, {:?}), certificate verified for {}",
                session
                    .protocol_version()
                    .unwrap_or(rustls::ProtocolVersion::Unknown(0)),
                session
                    .negotiated_cipher_suite()
                    .map(|s| s.suite())
                    .unwrap_or(rustls::CipherSuite::Unknown(0)),
                verified(settings, policy),
            );
            run.pass(None, detail);
            Box::new(TlsStream(tls))
        }
        _ => Box::new(tcp),
    };
    if settings.security == Security::None {
        run.begin(Stage::Tls);
        run.pass(None, "not used: connection security NONE".into());
    }
    let mut encrypted = settings.security == Security::Ssl;

    let hello = client_id(settings);
    run.begin(Stage::Ehlo);
    let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &hello)
        .await
        .map_err(|e| run.smtp_fail(e))?;
    run.pass(
        Some(250),
        format!("EHLO {hello} answered by {}", conn.server_info()),
    );

    if let (Security::StartTls | Security::StartTlsOpportunistic, Some(policy)) =
        (&settings.security, &policy)
    {
        run.begin(Stage::Tls);
        if conn.can_starttls() {
            let params = policy.lettre().map_err(|e| run.fail(None, e.to_string()))?;
            conn.starttls(params, &hello)
                .await
                .map_err(|e| run.smtp_fail(e))?;
            encrypted = true;
            run.pass(
                Some(220),
                format!(
                    "STARTTLS, certificate verified for {}",
                    verified(settings, policy)
                ),
            );
        } else if settings.security == Security::StartTls {
            let failed = run.fail(
                None,
                "the server does not offer STARTTLS, which the settings require: nothing more \
                 was sent (no credentials, no message)"
                    .into(),
            );
            conn.abort().await;
            return Err(failed);
        } else {
            run.pass(
                None,
                "STARTTLS not offered: continuing without TLS (opportunistic)".into(),
            );
        }
    }

    let pipelining = offers_pipelining(&mut conn, &hello).await;

    run.begin(Stage::Auth);
    if settings.username.is_empty() {
        run.pass(None, "skipped: no username".into());
    } else if !encrypted && settings.security != Security::None {
        let failed = run.fail(
            None,
            format!(
                "not sent: the connection is not encrypted (the server did not offer \
                 STARTTLS), and credentials go in clear only with connection security NONE, \
                 not {}: use a server that offers STARTTLS, or set security NONE and give the \
                 password again",
                settings.security.name()
            ),
        );
        conn.abort().await;
        return Err(failed);
    } else {
        let password = settings
            .password(key)
            .map_err(|e| run.fail(None, e.to_string()))?
            .unwrap_or_default();
        let credentials = Credentials::new(
            settings.username.clone(),
            password.expose_secret().to_string(),
        );
        let response = conn
            .auth(&[Mechanism::Plain, Mechanism::Login], &credentials)
            .await
            .map_err(|e| run.smtp_fail(e))?;
        run.reply(&response);
    }

    Ok(Smtp {
        connection: conn,
        pipelining,
    })
}

/// Asks the server for its extensions again, for the one lettre does not keep: PIPELINING.
/// A client may repeat EHLO outside a transaction (RFC 5321, 4.1.4); this one goes after
/// TLS, whose EHLO lettre made, and before AUTH. A server that refuses it is not pipelined to.
async fn offers_pipelining(conn: &mut AsyncSmtpConnection, hello: &ClientId) -> bool {
    match conn.command(Ehlo::new(hello.clone())).await {
        Ok(response) => response.message().any(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|keyword| keyword.eq_ignore_ascii_case("PIPELINING"))
        }),
        Err(_) => false,
    }
}

/// What was verified of the server's certificate, for the report.
fn verified(settings: &SmtpSettings, policy: &TlsPolicy) -> String {
    if settings.tls.accept_invalid_certificates {
        "nobody (accept_invalid_certificates is set)".into()
    } else {
        policy.server_name().to_string()
    }
}

/// Connects to the first of `addresses` that answers: addresses the guard checked, never
/// the name resolved again.
async fn connect(addresses: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last = "no address to connect to".to_string();
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                stream
                    .set_nodelay(true)
                    .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
                return Ok(stream);
            }
            Err(e) => last = format!("cannot connect to {address}: {e}"),
        }
    }
    Err(last)
}

fn peer(tcp: &TcpStream) -> String {
    tcp.peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "the server".into())
}

/// A rustls client stream that lettre can speak SMTP over.
#[derive(Debug)]
struct TlsStream(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncTokioStream for TlsStream {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::{crlf_line_ends, data_block};

    fn crlf(email: &str) -> String {
        String::from_utf8(crlf_line_ends(email.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn bare_cr_and_bare_lf_become_crlf() {
        assert_eq!(crlf("a\rb\nc\r\nd"), "a\r\nb\r\nc\r\nd");
        assert_eq!(crlf("\n\r"), "\r\n\r\n");
        assert_eq!(crlf("\r\r\n\n\n\r"), "\r\n\r\n\r\n\r\n\r\n");
        assert_eq!(crlf("\n\r\n"), "\r\n\r\n");
        assert_eq!(crlf("é\nü"), "é\r\nü", "bytes of UTF-8 untouched");
        assert!(matches!(
            crlf_line_ends(b"a\r\nb\r\n"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert!(matches!(crlf_line_ends(b""), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn a_smuggled_end_of_data_is_stuffed_after_normalising() {
        let body = "hi\r.\r\nMAIL FROM:<x@evil.example>\n.\nRCPT TO:<y@evil.example>\r\n";
        let block = data_block(&crlf(body));
        assert_eq!(
            block,
            "hi\r\n..\r\nMAIL FROM:<x@evil.example>\r\n..\r\nRCPT TO:<y@evil.example>\r\n\r\n.\r\n"
        );
        // The only end of data is the last line, and no line end is bare.
        assert_eq!(block.matches("\r\n.\r\n").count(), 1);
        assert!(block.ends_with("\r\n.\r\n"));
        assert_eq!(block.matches('\r').count(), block.matches("\r\n").count());
        assert_eq!(block.matches('\n').count(), block.matches("\r\n").count());
    }

    #[test]
    fn a_line_starting_with_a_dot_gets_another_and_the_block_ends_with_one() {
        assert_eq!(
            data_block(".a\r\nb.\r\n.\r\n..c"),
            "..a\r\nb.\r\n..\r\n...c\r\n.\r\n"
        );
        assert_eq!(data_block("plain"), "plain\r\n.\r\n");
    }
}
