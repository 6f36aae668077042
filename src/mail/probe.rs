//! `TestSmtpSettings`: one real email sent stage by stage with lettre's connection-level
//! API, so that the report says where a server failed (CONNECT, TLS, EHLO, AUTH, MAIL_FROM,
//! RCPT_TO, DATA), with its reply code, instead of only "failed". The whole exchange is
//! bounded by the settings' `timeout`, also against a server that accepts the connection and
//! then says nothing. With `STARTTLS` required and not offered, nothing but QUIT follows.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use lettre::address::Address;
use lettre::message::{header::ContentType, Mailbox, Message};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::tls::TlsPolicy;
use super::transport::client_id;
use super::{new_message_id, rfc3339};
use crate::crypto::MasterKey;
use crate::settings::{human, Security, SmtpSettings};

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

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

/// The outcome of one stage.
#[derive(Clone, Debug)]
pub struct Step {
    /// Which stage.
    pub stage: Stage,
    /// Whether it succeeded.
    pub ok: bool,
    /// The server's reply code, when it replied.
    pub smtp_code: Option<u16>,
    /// What happened.
    pub detail: String,
    /// How long it took.
    pub elapsed: Duration,
}

/// The outcome of a test.
#[derive(Clone, Debug)]
pub struct Report {
    /// Whether the email was accepted.
    pub success: bool,
    /// One step per stage reached.
    pub steps: Vec<Step>,
    /// The test email's Message-ID, when it was accepted.
    pub message_id: String,
    /// One line for a human.
    pub summary: String,
}

/// Checks a test recipient.
pub fn recipient(value: &str) -> Result<Address, String> {
    if value.is_empty() {
        return Err("is required: the address that receives the test email".into());
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Address::from_str(value).map_err(|e| format!("is not an email address ({e})"))
}

/// The steps so far, and the stage under way (to blame it on a timeout).
struct Run {
    steps: Vec<Step>,
    stage: Stage,
    started: Instant,
}

/// A stage failed; its step is recorded.
struct Failed;

impl Run {
    fn begin(&mut self, stage: Stage) {
        self.stage = stage;
        self.started = Instant::now();
    }

    fn record(&mut self, ok: bool, smtp_code: Option<u16>, detail: String) {
        self.steps.push(Step {
            stage: self.stage,
            ok,
            smtp_code,
            detail,
            elapsed: self.started.elapsed(),
        });
    }

    fn pass(&mut self, smtp_code: Option<u16>, detail: impl Into<String>) {
        self.record(true, smtp_code, detail.into());
    }

    fn skip(&mut self, stage: Stage, detail: &str) {
        self.begin(stage);
        self.record(true, None, detail.into());
    }

    fn fail(&mut self, smtp_code: Option<u16>, detail: impl Into<String>) -> Failed {
        self.record(false, smtp_code, detail.into());
        Failed
    }

    fn smtp_fail(&mut self, e: lettre::transport::smtp::Error) -> Failed {
        let code = e.status().map(u16::from);
        self.fail(code, e.to_string())
    }

    fn reply(&mut self, response: &Response) {
        let text: Vec<&str> = response.message().collect();
        self.pass(Some(u16::from(response.code())), text.join(" "));
    }
}

/// Sends one test email to `to` with `settings` (secrets opened with `key`) and reports
/// every stage. Never fails: a failing server is a report with `success = false`.
pub async fn run(
    settings: &SmtpSettings,
    key: &MasterKey,
    to: &Address,
    now: SystemTime,
) -> Report {
    let mut run = Run {
        steps: Vec::new(),
        stage: Stage::Connect,
        started: Instant::now(),
    };
    let timeout = settings.timeout;
    let outcome = tokio::time::timeout(timeout, exchange(&mut run, settings, key, to, now)).await;
    let message_id = match outcome {
        Ok(Ok(id)) => Some(id),
        Ok(Err(Failed)) => None,
        Err(_) => {
            run.fail(
                None,
                format!("no answer within the {} timeout", human(timeout)),
            );
            None
        }
    };
    let summary = match (&message_id, run.steps.last()) {
        (Some(_), _) => format!(
            "test email to {to} accepted by {}:{}",
            settings.host,
            settings.port.get()
        ),
        (None, Some(step)) => format!("failed at {}: {}", step.stage, step.detail),
        (None, None) => "failed before connecting".into(),
    };
    Report {
        success: message_id.is_some(),
        steps: run.steps,
        message_id: message_id.unwrap_or_default(),
        summary,
    }
}

async fn exchange(
    run: &mut Run,
    settings: &SmtpSettings,
    key: &MasterKey,
    to: &Address,
    now: SystemTime,
) -> Result<String, Failed> {
    let policy = match settings.security {
        Security::None => None,
        _ => Some(TlsPolicy::new(settings, key).map_err(|e| run.fail(None, e.to_string()))?),
    };
    run.begin(Stage::Connect);
    let tcp = connect(settings).await.map_err(|e| run.fail(None, e))?;
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
        run.skip(Stage::Tls, "not used: connection security NONE");
    }

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
                 was sent (no credentials, no message)",
            );
            conn.abort().await;
            return Err(failed);
        } else {
            run.pass(
                None,
                "STARTTLS not offered: continuing without TLS (opportunistic)",
            );
        }
    }

    run.begin(Stage::Auth);
    if settings.username.is_empty() {
        run.pass(None, "skipped: no username");
    } else {
        let password = settings
            .password(key)
            .map_err(|e| run.fail(None, e.to_string()))?
            .unwrap_or_default();
        let credentials = Credentials::new(settings.username.clone(), password.to_string());
        let response = conn
            .auth(&[Mechanism::Plain, Mechanism::Login], &credentials)
            .await
            .map_err(|e| run.smtp_fail(e))?;
        run.reply(&response);
    }

    let from = settings.from.mailbox();
    let message_id = new_message_id(from.email.domain());
    let email = test_email(settings, from.clone(), to, &message_id, now)
        .map_err(|e| run.fail(None, format!("building the test email: {e}")))?;

    run.begin(Stage::MailFrom);
    let response = conn
        .command(Mail::new(Some(from.email.clone()), vec![]))
        .await
        .map_err(|e| run.smtp_fail(e))?;
    run.reply(&response);

    run.begin(Stage::RcptTo);
    let response = conn
        .command(Rcpt::new(to.clone(), vec![]))
        .await
        .map_err(|e| run.smtp_fail(e))?;
    run.reply(&response);

    run.begin(Stage::Data);
    conn.command(Data).await.map_err(|e| run.smtp_fail(e))?;
    let response = conn
        .message(&email.formatted())
        .await
        .map_err(|e| run.smtp_fail(e))?;
    run.reply(&response);
    let _ = conn.quit().await;
    Ok(message_id)
}

/// What was verified of the server's certificate, for the report.
fn verified(settings: &SmtpSettings, policy: &TlsPolicy) -> String {
    if settings.tls.accept_invalid_certificates {
        "nobody (accept_invalid_certificates is set)".into()
    } else {
        policy.server_name().to_string()
    }
}

async fn connect(settings: &SmtpSettings) -> Result<TcpStream, String> {
    let target = (settings.host.as_str(), settings.port.get());
    let addresses = tokio::net::lookup_host(target)
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", settings.host))?;
    let mut last = format!("{} resolves to no address", settings.host);
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
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

fn test_email(
    settings: &SmtpSettings,
    from: Mailbox,
    to: &Address,
    message_id: &str,
    now: SystemTime,
) -> Result<Message, lettre::error::Error> {
    let security = match settings.security {
        Security::None => "none",
        Security::StartTls => "STARTTLS (required)",
        Security::StartTlsOpportunistic => "STARTTLS (opportunistic)",
        Security::Ssl => "SSL (implicit TLS)",
    };
    let helo = client_id(settings).to_string();
    let username = if settings.username.is_empty() {
        "none (no authentication)".to_string()
    } else {
        format!("{} (authenticated)", settings.username)
    };
    let body = format!(
        "mailroom SMTP test: success\n\n\
         This email was sent by mailroom to test the platform's SMTP settings. The server\n\
         accepted it for delivery, so these settings work.\n\n\
         Time:       {}\n\
         Server:     {}:{}\n\
         Security:   {security}\n\
         HELO name:  {helo}\n\
         Username:   {username}\n\
         Sender:     {}\n",
        rfc3339(now),
        settings.host,
        settings.port.get(),
        settings.from.as_str(),
    );
    Message::builder()
        .from(from)
        .to(Mailbox::new(None, to.clone()))
        .subject("mailroom SMTP test")
        .message_id(Some(message_id.to_string()))
        .date(now)
        .header(ContentType::TEXT_PLAIN)
        .body(body)
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
