//! Real servers of an OAuth2 relay login, in the test process: a token endpoint over HTTPS
//! (axum on tokio-rustls, with the test CA's certificate) that serves the client-credentials
//! grant (checking the client id and secret) and the JWT-bearer grant (checking the
//! assertion's RS256 signature, issuer, audience, subject, scope and expiry against the test
//! server's clock); and an SMTP server that advertises AUTH XOAUTH2 after STARTTLS and
//! takes only the tokens that endpoint issued, for the mailbox they were asked for.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use base64::Engine as _;
use mailroom::clock::Clock;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::smtp::{install_crypto_provider, Pki};

/// The test service account's private key (see tests/fixtures/README.md).
pub const PRIVATE_KEY_PEM: &str = include_str!("../fixtures/oauth2-service-account.key.pem");
/// Its public key, which the endpoint verifies assertions with.
pub const PUBLIC_KEY_PEM: &str = include_str!("../fixtures/oauth2-service-account.pub.pem");
/// Another RSA key: its assertions are refused.
pub const OTHER_KEY_PEM: &str = include_str!("../fixtures/oauth2-other.key.pem");

/// Who the endpoint issues tokens to.
#[derive(Clone, Debug)]
pub struct Client {
    pub client_id: String,
    /// The client-credentials grant's secret.
    pub client_secret: String,
    /// The scope it must ask for.
    pub scope: String,
    /// With the JWT-bearer grant, the subject the assertion must name.
    pub subject: String,
    /// How long issued tokens live (seconds).
    pub expires_in: u64,
}

/// What the endpoint saw and issued, shared with the SMTP server.
#[derive(Default)]
pub struct Ledger {
    /// Token requests answered (issued or refused).
    pub requests: AtomicUsize,
    /// Tokens issued, in order.
    pub issued: Mutex<Vec<String>>,
    /// Tokens the SMTP server takes now (issued and not revoked).
    pub valid: Mutex<HashSet<String>>,
    /// Every request body, to search for secrets that should not be elsewhere.
    pub bodies: Mutex<Vec<String>>,
}

struct Endpoint {
    client: Client,
    clock: Clock,
    url: String,
    ledger: Arc<Ledger>,
}

/// A running token endpoint; dropping it stops it.
pub struct TokenEndpoint {
    /// `https://127.0.0.1:<port>/token`.
    pub url: String,
    pub ledger: Arc<Ledger>,
    task: JoinHandle<()>,
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenEndpoint {
    /// Serves `client` over HTTPS with `pki`'s certificate; expiry judged by `clock`.
    pub async fn start(pki: &Pki, client: Client, clock: Clock) -> Self {
        install_crypto_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/token", listener.local_addr().unwrap());
        let ledger = Arc::new(Ledger::default());
        let state = Arc::new(Endpoint {
            client,
            clock,
            url: url.clone(),
            ledger: ledger.clone(),
        });
        let app = axum::Router::new()
            .route("/token", post(token))
            .with_state(state);
        let tls = TlsListener {
            tcp: listener,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server_config(pki))),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(tls, app).await;
        });
        Self { url, ledger, task }
    }

    /// How many token requests it answered.
    pub fn requests(&self) -> usize {
        self.ledger.requests.load(Ordering::SeqCst)
    }

    /// The tokens it issued.
    pub fn issued(&self) -> Vec<String> {
        self.ledger.issued.lock().unwrap().clone()
    }

    /// Makes every token issued so far invalid at the SMTP server (revoked, or expired
    /// early), as a provider may.
    pub fn revoke_all(&self) {
        self.ledger.valid.lock().unwrap().clear();
    }
}

/// An OAuth2 error answer (RFC 6749, 5.2).
fn refuse(status: StatusCode, error: &str, description: &str) -> (StatusCode, String) {
    let body = serde_json::json!({"error": error, "error_description": description});
    (status, body.to_string())
}

async fn token(State(endpoint): State<Arc<Endpoint>>, body: String) -> (StatusCode, String) {
    let ledger = &endpoint.ledger;
    ledger.requests.fetch_add(1, Ordering::SeqCst);
    ledger.bodies.lock().unwrap().push(body.clone());
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let client = &endpoint.client;
    let subject = match field("grant_type") {
        "client_credentials" => {
            if field("client_id") != client.client_id
                || field("client_secret") != client.client_secret
            {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "AADSTS7000215: Invalid client secret provided.",
                );
            }
            if field("scope") != client.scope {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "The provided scope is not valid.",
                );
            }
            None
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            match check_assertion(&endpoint, field("assertion")) {
                Ok(subject) => Some(subject),
                Err(why) => return refuse(StatusCode::BAD_REQUEST, "invalid_grant", &why),
            }
        }
        other => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant {other:?}"),
            )
        }
    };
    let n = ledger.issued.lock().unwrap().len();
    let token = format!(
        "ya29.test-token-{n}-{}-{}",
        subject.unwrap_or_default().replace('@', "."),
        rand_suffix()
    );
    ledger.issued.lock().unwrap().push(token.clone());
    ledger.valid.lock().unwrap().insert(token.clone());
    let body = serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": client.expires_in,
    });
    (StatusCode::OK, body.to_string())
}

fn rand_suffix() -> String {
    mailroom::crypto::random_id("")
}

/// Checks a JWT-bearer assertion (RFC 7523, 3): signed RS256 by the service account's key,
/// issued by the client, for this endpoint, with the scope and subject expected, not
/// expired and valid an hour at most. Its subject.
fn check_assertion(endpoint: &Endpoint, assertion: &str) -> Result<String, String> {
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: String,
        sub: Option<String>,
        scope: Option<String>,
        iat: u64,
        exp: u64,
    }
    let key = DecodingKey::from_rsa_pem(PUBLIC_KEY_PEM.as_bytes()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[&endpoint.url]);
    validation.set_required_spec_claims(&["exp", "aud", "iss"]);
    // Expiry is judged by the test server's clock, below.
    validation.validate_exp = false;
    let claims = decode::<Claims>(assertion, &key, &validation)
        .map_err(|e| format!("Invalid JWT: {e}"))?
        .claims;
    let now = endpoint
        .clock
        .now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if claims.exp <= now || claims.iat > now + 60 || claims.exp - claims.iat > 3600 {
        return Err(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a \
                    reasonable timeframe."
                .into(),
        );
    }
    let client = &endpoint.client;
    if claims.iss != client.client_id {
        return Err("Invalid issuer".into());
    }
    if claims.scope.as_deref() != Some(client.scope.as_str()) {
        return Err("Invalid scope".into());
    }
    let subject = claims.sub.unwrap_or_default();
    if subject != client.subject {
        return Err("Invalid subject".into());
    }
    Ok(subject)
}

/// TLS in front of axum: each accepted connection's handshake, before it is served.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A rustls server configuration with `pki`'s certificate.
fn server_config(pki: &Pki) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = vec![CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap()
}

/// How the XOAUTH2 SMTP server behaves.
#[derive(Clone)]
pub struct SmtpOptions {
    /// Offer STARTTLS (with the endpoint's PKI).
    pub starttls: bool,
    /// Advertise AUTH XOAUTH2.
    pub advertise_xoauth2: bool,
    /// The mailbox tokens are taken for.
    pub user: String,
    /// Close the connection after each message: every message needs a new login.
    pub one_message_per_connection: bool,
    /// Answer every AUTH with this line instead (a provider's refusal).
    pub refuse_auth: Option<String>,
    /// Take `AUTH PLAIN` with this user and password, without advertising it.
    pub unadvertised_plain: Option<(String, String)>,
}

impl SmtpOptions {
    /// STARTTLS, XOAUTH2 advertised, tokens taken for `user`.
    pub fn for_user(user: &str) -> Self {
        Self {
            starttls: true,
            advertise_xoauth2: true,
            user: user.into(),
            one_message_per_connection: false,
            refuse_auth: None,
            unadvertised_plain: None,
        }
    }
}

/// What the XOAUTH2 SMTP server saw.
#[derive(Clone, Debug, Default)]
pub struct Logins {
    /// Connections accepted.
    pub connections: usize,
    /// Every AUTH: (mechanism, user, token or password).
    pub auth: Vec<(String, String, String)>,
    /// Logins that succeeded.
    pub accepted: usize,
    /// Messages accepted: their recipients.
    pub messages: Vec<String>,
}

/// An SMTP server that logs clients in with XOAUTH2; dropping it stops it.
pub struct XoauthSmtp {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Logins>>,
    task: JoinHandle<()>,
}

impl Drop for XoauthSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Smtp {
    options: SmtpOptions,
    ledger: Arc<Ledger>,
    tls: tokio_rustls::TlsAcceptor,
    seen: Arc<Mutex<Logins>>,
}

impl XoauthSmtp {
    /// Serves on 127.0.0.1:0, taking the tokens `endpoint` issued.
    pub async fn start(pki: &Pki, endpoint: &TokenEndpoint, options: SmtpOptions) -> Self {
        install_crypto_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Logins::default()));
        let smtp = Arc::new(Smtp {
            options,
            ledger: endpoint.ledger.clone(),
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(server_config(pki))),
            seen: seen.clone(),
        });
        let task = tokio::spawn(async move {
            let mut sessions = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                smtp.seen.lock().unwrap().connections += 1;
                sessions.spawn(session(smtp.clone(), tcp));
            }
        });
        Self { addr, seen, task }
    }

    /// What it saw so far.
    pub fn seen(&self) -> Logins {
        self.seen.lock().unwrap().clone()
    }
}

/// Why a dialogue ended.
enum Ended {
    Quit,
    StartTls,
}

async fn session(smtp: Arc<Smtp>, tcp: TcpStream) {
    let mut plain = BufReader::new(tcp);
    if plain
        .get_mut()
        .write_all(b"220 mx.test ESMTP ready\r\n")
        .await
        .is_err()
    {
        return;
    }
    if let Some(Ended::StartTls) = dialogue(&smtp, &mut plain, false).await {
        let Ok(tls) = smtp.tls.accept(plain.into_inner()).await else {
            return;
        };
        let mut secure = BufReader::new(tls);
        dialogue(&smtp, &mut secure, true).await;
    }
}

/// The client's commands, answered until it quits, starts TLS, or the line drops (`None`).
async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
    smtp: &Smtp,
    stream: &mut BufReader<S>,
    tls: bool,
) -> Option<Ended> {
    let options = &smtp.options;
    let mut authenticated = false;
    let mut recipients = Vec::new();
    loop {
        let line = read_line(stream).await?;
        let upper = line.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            let mut lines = vec!["mx.test".to_string()];
            if options.starttls && !tls {
                lines.push("STARTTLS".into());
            }
            if options.advertise_xoauth2 {
                lines.push("AUTH XOAUTH2".into());
            }
            lines.push("8BITMIME".into());
            let last = lines.len() - 1;
            lines
                .iter()
                .enumerate()
                .map(|(i, l)| format!("250{}{l}\r\n", if i == last { ' ' } else { '-' }))
                .collect()
        } else if upper == "STARTTLS" && options.starttls && !tls {
            write(stream, "220 2.0.0 go ahead\r\n").await?;
            return Some(Ended::StartTls);
        } else if upper.starts_with("AUTH ") {
            if let Some(refusal) = &options.refuse_auth {
                format!("{refusal}\r\n")
            } else {
                let (reply, ok) = auth(smtp, stream, &line).await?;
                authenticated |= ok;
                reply
            }
        } else if upper.starts_with("MAIL FROM:") {
            if authenticated {
                recipients.clear();
                "250 2.1.0 OK\r\n".into()
            } else {
                "530 5.7.57 Client not authenticated to send mail\r\n".into()
            }
        } else if upper.starts_with("RCPT TO:") {
            recipients.push(line[8..].trim().to_string());
            "250 2.1.5 OK\r\n".into()
        } else if upper == "DATA" {
            write(stream, "354 go ahead\r\n").await?;
            loop {
                if read_line(stream).await? == "." {
                    break;
                }
            }
            smtp.seen
                .lock()
                .unwrap()
                .messages
                .append(&mut recipients.clone());
            write(stream, "250 2.0.0 OK queued\r\n").await?;
            if options.one_message_per_connection {
                return Some(Ended::Quit);
            }
            continue;
        } else if upper == "QUIT" {
            write(stream, "221 2.0.0 bye\r\n").await?;
            return Some(Ended::Quit);
        } else if upper == "RSET" || upper == "NOOP" {
            "250 2.0.0 OK\r\n".into()
        } else {
            "502 5.5.2 command not recognised\r\n".into()
        };
        write(stream, &reply).await?;
    }
}

/// One AUTH exchange: the reply to end it, and whether the client is now logged in.
async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
    smtp: &Smtp,
    stream: &mut BufReader<S>,
    line: &str,
) -> Option<(String, bool)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let decode = |b64: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .unwrap_or_default()
    };
    let record = |mechanism: &str, user: &str, secret: &str| {
        smtp.seen
            .lock()
            .unwrap()
            .auth
            .push((mechanism.into(), user.into(), secret.into()));
    };
    let ok = || {
        smtp.seen.lock().unwrap().accepted += 1;
        Some(("235 2.7.0 Authentication successful\r\n".to_string(), true))
    };
    match words.get(1).map(|m| m.to_ascii_uppercase()).as_deref() {
        Some("XOAUTH2") if smtp.options.advertise_xoauth2 => {
            // user=<user>^Aauth=Bearer <token>^A^A
            let raw = decode(words.get(2).copied().unwrap_or_default());
            let mut parts = raw.split('\x01');
            let user = parts.next().unwrap_or_default().strip_prefix("user=");
            let token = parts
                .next()
                .unwrap_or_default()
                .strip_prefix("auth=Bearer ");
            let well_formed = raw.ends_with("\x01\x01") && user.is_some() && token.is_some();
            let (user, token) = (user.unwrap_or_default(), token.unwrap_or_default());
            record("XOAUTH2", user, token);
            let valid = smtp.ledger.valid.lock().unwrap().contains(token);
            if well_formed && valid && user == smtp.options.user {
                return ok();
            }
            // As Google and Microsoft do: the reasons in a challenge, then 535 once the
            // client answers it with an empty line.
            let reasons = base64::engine::general_purpose::STANDARD.encode(
                r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#,
            );
            write(stream, &format!("334 {reasons}\r\n")).await?;
            let _ = read_line(stream).await?;
            Some(("535 5.7.3 Authentication unsuccessful\r\n".into(), false))
        }
        Some("PLAIN") => {
            let raw = decode(words.get(2).copied().unwrap_or_default());
            let parts: Vec<&str> = raw.split('\0').collect();
            let (user, password) = (
                parts.get(1).copied().unwrap_or_default(),
                parts.get(2).copied().unwrap_or_default(),
            );
            record("PLAIN", user, password);
            match &smtp.options.unadvertised_plain {
                Some((u, p)) if u == user && p == password => ok(),
                _ => Some((
                    "535 5.7.8 Username and Password not accepted\r\n".into(),
                    false,
                )),
            }
        }
        _ => Some(("504 5.5.4 mechanism not supported\r\n".into(), false)),
    }
}

async fn read_line<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut BufReader<S>) -> Option<String> {
    let mut line = String::new();
    match stream.read_line(&mut line).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_string()),
    }
}

async fn write<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    text: &str,
) -> Option<()> {
    stream.get_mut().write_all(text.as_bytes()).await.ok()?;
    stream.get_mut().flush().await.ok()
}
