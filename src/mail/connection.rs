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
//! The login follows `auth.mechanism`: `AUTO` lets lettre pick PLAIN or LOGIN among those
//! the server advertises; `PLAIN` or `LOGIN` is sent whether advertised or not (relays that
//! misadvertise); `XOAUTH2` first gets an access token ([`crate::settings::oauth2`], the `TOKEN`
//! stage, before CONNECT), then sends it only over an encrypted connection and only to a
//! server that advertises XOAUTH2; a cached token the server refuses with `535` is replaced
//! once and the login retried on the same connection. Providers' well-known refusals
//! (Microsoft's `5.7.139`, `5.7.3`; Google's `5.7.8`) come with a [`hint`].
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
use std::time::SystemTime;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::commands::{Auth, Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::tls::TlsPolicy;
use crate::crypto::MasterKey;
use crate::settings::oauth2::{AccessToken, AccessTokenError, AccessTokens};
use crate::settings::{AddressGuard, Mechanism as AuthMechanism, Security, SmtpSettings};

/// The stages of an SMTP exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The OAuth2 access token (XOAUTH2), before connecting.
    Token,
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
            Stage::Token => "TOKEN",
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
    login: &Login<'_>,
    run: &mut impl Stages,
) -> Result<Smtp, Failed> {
    let policy = match settings.security {
        Security::None => None,
        _ => Some(TlsPolicy::new(settings, key).map_err(|e| run.fail(None, e.to_string()))?),
    };
    // With XOAUTH2, the token first: an endpoint that refuses the client is the
    // problem to report, whatever the SMTP server would say.
    let token = if settings.auth.mechanism == AuthMechanism::Xoauth2 {
        run.begin(Stage::Token);
        let token = login
            .token
            .get(settings, key, guard)
            .await
            .map_err(|e| run.fail(None, e.to_string()))?;
        let from = if token.fresh { "" } else { "cached: " };
        run.pass(None, format!("{from}{}", token.detail));
        Some(token)
    } else {
        None
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
    let xoauth2 = settings.auth.mechanism == AuthMechanism::Xoauth2;
    if settings.username.is_empty() {
        run.pass(None, "skipped: no username".into());
    } else if xoauth2 && !encrypted {
        let failed = run.fail(
            None,
            "not sent: XOAUTH2 sends a bearer token only over an encrypted connection, and \
             the server did not offer STARTTLS: use a server that offers it, or security \
             STARTTLS or SSL"
                .into(),
        );
        conn.abort().await;
        return Err(failed);
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
    } else if let Some(used) = &token {
        let tokens = &login.token;
        if !conn
            .server_info()
            .supports_auth_mechanism(Mechanism::Xoauth2)
        {
            let failed = run.fail(
                None,
                format!(
                    "the server does not offer AUTH XOAUTH2 ({}): nothing was sent; check \
                     host and port (Microsoft 365: smtp.office365.com:587, Google: \
                     smtp.gmail.com:587), or choose another auth.mechanism",
                    conn.server_info()
                ),
            );
            conn.abort().await;
            return Err(failed);
        }
        let user = &settings.username;
        let response = match auth_xoauth2(&mut conn, user, used).await {
            Ok(response) => response,
            // A token taken from the cache may have been revoked, or have expired early:
            // one more, fetched now, and one more try.
            Err(e) if !used.fresh && e.code == Some(535) => {
                tracing::info!(smtp = %e, "the SMTP server refused the cached OAuth2 token; fetching another");
                let fresh = tokens
                    .refresh(settings, key, guard, used)
                    .await
                    .map_err(|t| run.fail(e.code, format!("{e}; fetching another token: {t}")))?;
                auth_xoauth2(&mut conn, user, &fresh)
                    .await
                    .map_err(|e| run.fail(e.code, e.to_string()))?
            }
            Err(e) => return Err(run.fail(e.code, e.to_string())),
        };
        run.reply(&response);
    } else {
        let password = settings
            .password(key)
            .map_err(|e| run.fail(None, e.to_string()))?
            .unwrap_or_default();
        let credentials = Credentials::new(
            settings.username.clone(),
            password.expose_secret().to_string(),
        );
        let mechanism = settings.auth.mechanism;
        let response = match mechanism {
            AuthMechanism::Plain => forced(&mut conn, Mechanism::Plain, &credentials).await,
            AuthMechanism::Login => forced(&mut conn, Mechanism::Login, &credentials).await,
            _ => {
                conn.auth(&[Mechanism::Plain, Mechanism::Login], &credentials)
                    .await
            }
        };
        let response = response.map_err(|e| {
            let code = e.status().map(u16::from);
            let detail = e.to_string();
            let detail = match hint(&detail, mechanism) {
                Some(hint) => format!("{detail}. {hint}"),
                None => detail,
            };
            run.fail(code, detail)
        })?;
        run.reply(&response);
    }

    Ok(Smtp {
        connection: conn,
        pipelining,
    })
}

/// How a connection logs in beyond the settings: where an XOAUTH2 login's token comes from.
pub struct Login<'a> {
    token: TokenSource<'a>,
}

impl<'a> Login<'a> {
    /// AccessTokens from the process's cache (delivery), at `now`.
    pub fn cached(tokens: &'a AccessTokens, now: SystemTime) -> Self {
        Self {
            token: TokenSource {
                tokens,
                now,
                cached: true,
            },
        }
    }

    /// A token fetched for this connection alone (`TestSmtpSettings`), at `now`.
    pub fn fresh(tokens: &'a AccessTokens, now: SystemTime) -> Self {
        Self {
            token: TokenSource {
                tokens,
                now,
                cached: false,
            },
        }
    }
}

/// Where an XOAUTH2 login gets its access token.
struct TokenSource<'a> {
    tokens: &'a AccessTokens,
    now: SystemTime,
    cached: bool,
}

impl TokenSource<'_> {
    async fn get(
        &self,
        settings: &SmtpSettings,
        key: &MasterKey,
        guard: &AddressGuard,
    ) -> Result<AccessToken, AccessTokenError> {
        if self.cached {
            self.tokens.get(settings, key, guard, self.now).await
        } else {
            self.tokens.fetch(settings, key, guard, self.now).await
        }
    }

    async fn refresh(
        &self,
        settings: &SmtpSettings,
        key: &MasterKey,
        guard: &AddressGuard,
        used: &AccessToken,
    ) -> Result<AccessToken, AccessTokenError> {
        self.tokens
            .refresh(settings, key, guard, self.now, used)
            .await
    }
}

/// An AUTH that failed: the server's code, and what it said (with a hint for an operator
/// where the refusal is a provider's well-known one).
#[derive(Debug)]
struct AuthFailed {
    code: Option<u16>,
    detail: String,
}

impl std::fmt::Display for AuthFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// `AUTH XOAUTH2` with `token` for `user`. A server that refuses the token may first send
/// its reasons as a `334` challenge (Google, Microsoft: base64 JSON), which the client
/// answers with an empty line before the final `535` (RFC 7628, 3.2.3); lettre's own AUTH
/// loop cannot, so the exchange is spoken here.
async fn auth_xoauth2(
    conn: &mut AsyncSmtpConnection,
    user: &str,
    token: &AccessToken,
) -> Result<Response, AuthFailed> {
    use base64::Engine as _;
    let failed = |e: lettre::transport::smtp::Error, reasons: Option<String>| {
        let mut detail = e.to_string();
        if let Some(reasons) = reasons {
            detail.push_str(&format!(" (the server's reasons: {reasons})"));
        }
        if let Some(hint) = hint(&detail, AuthMechanism::Xoauth2) {
            detail.push_str(&format!(". {hint}"));
        }
        AuthFailed {
            code: e.status().map(u16::from),
            detail,
        }
    };
    let initial = token.xoauth2(user);
    let response = conn
        .command(format!("AUTH XOAUTH2 {}\r\n", initial.expose_secret()))
        .await
        .map_err(|e| failed(e, None))?;
    if !response.has_code(334) {
        return Ok(response);
    }
    let reasons: String = response.message().collect::<Vec<_>>().join("");
    let reasons = base64::engine::general_purpose::STANDARD
        .decode(reasons.trim())
        .ok()
        .and_then(|json| String::from_utf8(json).ok())
        .map(|json| json.chars().filter(|c| !c.is_control()).take(300).collect());
    match conn.command("\r\n").await {
        Err(e) => Err(failed(e, reasons)),
        Ok(response) if response.is_positive() && !response.has_code(334) => Ok(response),
        Ok(response) => Err(AuthFailed {
            code: Some(u16::from(response.code())),
            detail: format!(
                "the server answered the XOAUTH2 refusal with {} instead of ending it",
                u16::from(response.code())
            ),
        }),
    }
}

/// AUTH with `mechanism` whether or not the server advertises it: for relays that take a
/// mechanism they do not list (or list one they do not take). Challenges are answered as
/// lettre's own AUTH does, ten at most.
async fn forced(
    conn: &mut AsyncSmtpConnection,
    mechanism: Mechanism,
    credentials: &Credentials,
) -> Result<Response, lettre::transport::smtp::Error> {
    let mut response = conn
        .command(Auth::new(mechanism, credentials.clone(), None)?)
        .await?;
    for _ in 0..10 {
        if !response.has_code(334) {
            break;
        }
        response = conn
            .command(Auth::new_from_response(
                mechanism,
                credentials.clone(),
                &response,
            )?)
            .await?;
    }
    Ok(response)
}

/// What an operator can do about a provider's well-known refusal of a login (`detail`,
/// the server's reply), if it is one.
pub fn hint(detail: &str, mechanism: AuthMechanism) -> Option<&'static str> {
    let oauth = mechanism == AuthMechanism::Xoauth2;
    let has = |needle: &str| {
        detail
            .to_ascii_lowercase()
            .contains(&needle.to_ascii_lowercase())
    };
    // In the providers' own words, so that another relay's 5.7.3 or 5.7.8 gets no hint
    // about a provider it is not.
    let microsoft_refused = has("5.7.3") && has("Authentication unsuccessful");
    let google_refused =
        has("5.7.8") && (has("Username and Password not accepted") || has("BadCredentials"));
    Some(if has("basic authentication is disabled") {
        "Hint: Microsoft 365 no longer accepts a password for SMTP: log in with OAuth2 \
         (auth.mechanism XOAUTH2, auth.oauth2.provider MICROSOFT_365; see the README)"
    } else if has("SmtpClientAuthentication is disabled") || has("5.7.139") {
        "Hint: Microsoft 365 has SMTP AUTH turned off for the tenant or this mailbox: turn \
         on Authenticated SMTP for the mailbox `username` (Exchange admin center > mailbox > \
         Email apps, or Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled \
         $false; for the tenant, Set-TransportConfig -SmtpClientAuthenticationDisabled $false)"
    } else if oauth && microsoft_refused {
        "Hint: Microsoft 365 refused the token for this mailbox: register the application's \
         service principal in Exchange Online (New-ServicePrincipal -AppId <client_id> \
         -ObjectId <enterprise application object id>), give it the mailbox `username` \
         (Add-MailboxPermission -Identity <mailbox> -User <service principal> -AccessRights \
         FullAccess), and check that the application has SMTP.SendAsApp with admin consent"
    } else if microsoft_refused {
        "Hint: Microsoft 365 refused the username or password; if they are right, SMTP AUTH \
         may be off for the mailbox, or basic authentication retired: use auth.mechanism \
         XOAUTH2"
    } else if oauth && (google_refused || has("\"status\":\"400\"")) {
        "Hint: Google refused the token for this mailbox: check that `username` (and \
         auth.oauth2.subject) is a user of the Workspace domain, and that the service \
         account has domain-wide delegation of https://mail.google.com/ (Admin console > \
         Security > API controls) for its client id"
    } else if oauth && has("\"status\":\"401\"") {
        "Hint: the server found the token invalid or expired: check auth.oauth2.scope and \
         that the token is meant for this mail service"
    } else if has("5.7.9") || has("Application-specific password required") {
        "Hint: Google wants an app password here (a password of 16 letters made in the \
         account's security settings), or OAuth2: auth.mechanism XOAUTH2, provider GOOGLE"
    } else if google_refused {
        "Hint: Google refused the username or password: use an app password, or OAuth2 \
         (auth.mechanism XOAUTH2, provider GOOGLE)"
    } else {
        return None;
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
    use super::{crlf_line_ends, data_block, hint, AuthMechanism};

    #[test]
    fn providers_refusals_get_a_hint_others_none() {
        let xoauth2 = AuthMechanism::Xoauth2;
        let microsoft = "permanent error (535): 5.7.3 Authentication unsuccessful";
        assert!(hint(microsoft, xoauth2)
            .unwrap()
            .contains("New-ServicePrincipal"));
        assert!(hint(microsoft, AuthMechanism::Auto)
            .unwrap()
            .contains("XOAUTH2"));
        let disabled = "permanent error (535): 5.7.139 Authentication unsuccessful, \
                        SmtpClientAuthentication is disabled for the Tenant.";
        assert!(hint(disabled, AuthMechanism::Plain)
            .unwrap()
            .contains("Set-CASMailbox"));
        let basic = "permanent error (535): 5.7.139 Authentication unsuccessful, basic \
                     authentication is disabled.";
        assert!(hint(basic, AuthMechanism::Login)
            .unwrap()
            .contains("auth.mechanism XOAUTH2"));
        let google = "permanent error (535): 5.7.8 Username and Password not accepted. \
                      BadCredentials";
        assert!(hint(google, xoauth2)
            .unwrap()
            .contains("domain-wide delegation"));
        assert!(hint(google, AuthMechanism::Auto)
            .unwrap()
            .contains("app password"));
        // Another relay's codes in its own words: no provider's hint.
        for other in [
            "permanent error (535): 5.7.3 Must issue a STARTTLS command first",
            "permanent error (535): 5.7.8 Error: authentication failed",
            "permanent error (535): Invalid credentials",
        ] {
            assert_eq!(hint(other, AuthMechanism::Auto), None, "{other}");
        }
    }

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
