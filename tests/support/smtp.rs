//! A real SMTP server in the test process: mailin's SMTP state machine (STARTTLS and AUTH
//! when asked) on a thread per connection, stopped when its test drops it; a tokio-rustls
//! terminator in front for implicit TLS, and a silent server that accepts connections and
//! never answers. Certificates come from a test CA made by rcgen; with `client_auth` the
//! server demands a client certificate of that CA (mTLS, rustls' `WebPkiClientVerifier`).
//!
//! Not mailin-embedded's `Server`, whose `serve()` never returns: its accept loop has no way
//! out and its pool of threads lives to the end of the test process. The loop here is the
//! same (mailin's `Session` fed line by line, rustls for STARTTLS) with a way to stop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mailin::{response, Action, AuthMechanism, Handler, Response, Session, SessionBuilder};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

/// What the server saw.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Every EHLO or HELO name.
    pub helo: Vec<String>,
    /// Every MAIL FROM.
    pub mail_from: Vec<String>,
    /// Every AUTH attempt: (user, password).
    pub auth: Vec<(String, String)>,
    /// Every accepted message.
    pub messages: Vec<Received>,
    /// The client certificate of every TLS session (DER), if the client presented one.
    pub client_certificates: Vec<Option<Vec<u8>>>,
}

/// A message the server accepted.
#[derive(Clone, Debug)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

impl Received {
    /// The value of the first header `name` (unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        unfolded.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }
}

impl Received {
    /// The decoded text of every text part (`text/plain` and `text/html`), joined.
    pub fn text(&self) -> String {
        fn walk(part: &mailparse::ParsedMail<'_>, out: &mut String) {
            if part.subparts.is_empty() {
                if part.ctype.mimetype.starts_with("text/") {
                    out.push_str(&part.get_body().unwrap());
                    out.push('\n');
                }
            } else {
                for sub in &part.subparts {
                    walk(sub, out);
                }
            }
        }
        let parsed = mailparse::parse_mail(self.data.as_bytes()).unwrap();
        let mut out = String::new();
        walk(&parsed, &mut out);
        out
    }
}

/// A test CA, a server certificate it signed for `localhost` and 127.0.0.1, and a client
/// certificate it signed for `mailroom.example.com` (ECDSA P-256 keys, PKCS#8, as rcgen
/// makes them).
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl Pki {
    pub fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mailroom test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params =
            CertificateParams::new(vec!["mailroom.example.com".to_string()]).unwrap();
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
        Self {
            ca_pem: ca.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }
}

/// How the test server behaves.
#[derive(Clone, Default)]
pub struct Options {
    /// Offer STARTTLS with these certificates.
    pub starttls: Option<Arc<Pki>>,
    /// With STARTTLS, demand a client certificate issued by the PKI's CA: a client without
    /// one (or with another) fails the handshake.
    pub client_auth: bool,
    /// Require AUTH (after STARTTLS) with this user and password.
    pub credentials: Option<(String, String)>,
    /// Serve on this port, bound earlier and refusing connections until now
    /// ([`held_listener`]), instead of a new one.
    pub listener: Option<HeldPort>,
}

/// A running test SMTP server; dropping it stops it (its listener and every connection).
pub struct SmtpServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    rejected: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    /// The connections open now (a clone of each socket), by number: shut down at the end.
    open: Arc<Mutex<HashMap<usize, TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Clone)]
struct Recorder {
    seen: Arc<Mutex<Seen>>,
    rejected: Arc<Mutex<Vec<String>>>,
    credentials: Option<(String, String)>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Recorder {
    fn check(&mut self, user: &str, password: &str) -> Response {
        self.seen
            .lock()
            .unwrap()
            .auth
            .push((user.to_string(), password.to_string()));
        match &self.credentials {
            Some((u, p)) if u == user && p == password => response::AUTH_OK,
            _ => response::INVALID_CREDENTIALS,
        }
    }
}

impl Handler for Recorder {
    fn helo(&mut self, _ip: std::net::IpAddr, domain: &str) -> Response {
        self.seen.lock().unwrap().helo.push(domain.to_string());
        response::OK
    }

    fn mail(&mut self, _ip: std::net::IpAddr, _domain: &str, from: &str) -> Response {
        self.seen.lock().unwrap().mail_from.push(from.to_string());
        self.from = from.to_string();
        self.to.clear();
        response::OK
    }

    fn rcpt(&mut self, to: &str) -> Response {
        if self.rejected.lock().unwrap().iter().any(|r| r == to) {
            return response::NO_MAILBOX;
        }
        self.to.push(to.to_string());
        response::OK
    }

    fn data_start(
        &mut self,
        _domain: &str,
        _from: &str,
        _is8bit: bool,
        _to: &[String],
    ) -> Response {
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let received = Received {
            from: self.from.clone(),
            to: self.to.clone(),
            data: String::from_utf8_lossy(&self.data).into_owned(),
        };
        self.seen.lock().unwrap().messages.push(received);
        response::OK
    }

    fn auth_plain(&mut self, _authz: &str, user: &str, password: &str) -> Response {
        self.check(user, password)
    }

    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.check(user, password)
    }
}

/// rustls needs one process-wide crypto provider: the tests use ring, as mailroom does.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl SmtpServer {
    /// Starts a server on 127.0.0.1:0 (or on `options.listener`), until dropped.
    pub fn start(options: Options) -> Self {
        install_crypto_provider();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let rejected = Arc::new(Mutex::new(vec!["rejected@example.com".to_string()]));
        let listener = match &options.listener {
            Some(held) => held.listen(),
            None => TcpListener::bind("127.0.0.1:0").unwrap(),
        };
        let addr = listener.local_addr().unwrap();
        let handler = Recorder {
            seen: seen.clone(),
            rejected: rejected.clone(),
            credentials: options.credentials.clone(),
            from: String::new(),
            to: Vec::new(),
            data: Vec::new(),
        };
        let mut sessions = SessionBuilder::new("mx.test");
        let tls = options
            .starttls
            .as_ref()
            .map(|pki| Arc::new(server_config(pki, options.client_auth)));
        if tls.is_some() {
            sessions.enable_start_tls();
        }
        if options.credentials.is_some() {
            sessions
                .enable_auth(AuthMechanism::Plain)
                .enable_auth(AuthMechanism::Login);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(HashMap::new()));
        let (stopping, connections) = (stop.clone(), open.clone());
        // A thread per connection: mailroom pools connections and keeps them open, and a
        // killed client's connections hold theirs until the socket closes.
        let acceptor = std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let accepted = stream.and_then(|s| s.try_clone().map(|clone| (s, clone)));
                let Ok((stream, clone)) = accepted else {
                    // Out of descriptors, say: the error would come back at once.
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                connections.lock().unwrap().insert(n, clone);
                let (sessions, tls, handler) = (sessions.clone(), tls.clone(), handler.clone());
                let connections = connections.clone();
                std::thread::spawn(move || {
                    let _ = converse(stream, &sessions, tls, handler);
                    connections.lock().unwrap().remove(&n);
                });
            }
        });
        Self {
            addr,
            seen,
            rejected,
            stop,
            open,
            acceptor: Some(acceptor),
        }
    }

    /// RCPT TO these addresses answers 550 (default: `rejected@example.com`).
    pub fn reject(&self, addresses: &[&str]) {
        *self.rejected.lock().unwrap() = addresses.iter().map(|a| a.to_string()).collect();
    }

    /// A server offering STARTTLS with `pki`'s certificate and requiring AUTH as `user`.
    pub fn with_auth(pki: &Arc<Pki>, user: &str, password: &str) -> Self {
        Self::start(Options {
            starttls: Some(pki.clone()),
            credentials: Some((user.into(), password.into())),
            ..Default::default()
        })
    }

    /// What the server saw so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }
}

/// Stops accepting (a connection of its own wakes the accept loop to see `stop`), then
/// shuts every open connection down, which ends its thread.
impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            if TcpStream::connect(self.addr).is_ok() {
                let _ = acceptor.join();
            }
        }
        for (_, stream) in self.open.lock().unwrap().drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// One SMTP conversation: mailin's session fed line by line, in TLS after STARTTLS.
fn converse(
    stream: TcpStream,
    sessions: &SessionBuilder,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Recorder,
) -> std::io::Result<()> {
    let seen = handler.seen.clone();
    let mut session = sessions.build(stream.peer_addr()?.ip(), handler);
    let mut plain = BufReader::new(stream);
    plain.get_mut().write_all(&session.greeting().buffer()?)?;
    if !exchange(&mut session, &mut plain)? {
        return Ok(());
    }
    let Some(config) = tls else {
        return Ok(());
    };
    let connection = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(connection, plain.into_inner());
    tls.conn.complete_io(&mut tls.sock)?;
    let presented = tls.conn.peer_certificates().map(|chain| chain[0].to_vec());
    seen.lock().unwrap().client_certificates.push(presented);
    let mut secure = BufReader::new(tls);
    session.tls_active();
    exchange(&mut session, &mut secure)?;
    Ok(())
}

/// Answers the client's lines until it leaves (false) or starts TLS (true).
fn exchange<S: Read + Write>(
    session: &mut Session<Recorder>,
    stream: &mut BufReader<S>,
) -> std::io::Result<bool> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if stream.read_until(b'\n', &mut line)? == 0 {
            return Ok(false);
        }
        let response = session.process(&line);
        if response.action != Action::NoReply {
            stream.get_mut().write_all(&response.buffer()?)?;
            stream.get_mut().flush()?;
        }
        match response.action {
            Action::Close => return Ok(false),
            Action::UpgradeTls => return Ok(true),
            Action::Reply | Action::NoReply => {}
        }
    }
}

/// A rustls server configuration with `pki`'s certificate, demanding a client certificate
/// of `pki`'s CA with `client_auth`.
fn server_config(pki: &Pki, client_auth: bool) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let chain = vec![CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder();
    let builder = if client_auth {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    builder.with_single_cert(chain, key).unwrap()
}

/// Implicit TLS (SMTPS) in front of a plain server: accepts TLS with `pki`'s certificate on
/// 127.0.0.1:0 and relays the plaintext to `backend`.
pub async fn tls_terminator(pki: &Pki, backend: SocketAddr) -> SocketAddr {
    terminator(pki, false, backend).await
}

/// A [`tls_terminator`] that demands a client certificate issued by `pki`'s CA: a client
/// without one (or with another) fails the handshake and never reaches `backend`.
pub async fn mtls_terminator(pki: &Pki, backend: SocketAddr) -> SocketAddr {
    terminator(pki, true, backend).await
}

async fn terminator(pki: &Pki, client_auth: bool, backend: SocketAddr) -> SocketAddr {
    install_crypto_provider();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(pki, client_auth)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// A port on 127.0.0.1 held for a server to come (`Options::listener`): an SMTP server that
/// is down, then comes back at the same address. Until then it refuses connections, as a
/// host with nothing listening does (bound and not listening: no other socket takes the
/// port meanwhile, and no connection waits in a backlog for a greeting).
pub fn held_listener() -> (u16, HeldPort) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (port, HeldPort(Arc::new(Mutex::new(Some(socket)))))
}

/// A port [`held_listener`] holds for [`SmtpServer::start`].
#[derive(Clone)]
pub struct HeldPort(Arc<Mutex<Option<tokio::net::TcpSocket>>>);

impl HeldPort {
    /// Starts listening on the held port (once): a blocking std listener, as the server's.
    fn listen(&self) -> TcpListener {
        let socket = self.0.lock().unwrap().take().expect("listener given once");
        // Within the test's runtime, which the tokio listener registers with until
        // `into_std` takes it back.
        let listener = socket.listen(1024).unwrap().into_std().unwrap();
        listener.set_nonblocking(false).unwrap();
        listener
    }
}

/// A server that accepts connections and never says a word.
pub async fn silent_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    addr
}

/// A server that takes messages like any SMTP server but never answers QUIT, nor closes:
/// what a client waits on when it says goodbye to a connection it no longer wants.
pub async fn mute_at_quit_server() -> SocketAddr {
    scripted_server(false, false, false).await.0
}

/// What a [`strict_server`] saw.
#[derive(Clone, Debug, Default)]
pub struct Reads {
    /// The commands (verbs) that came in each read from the socket, in order.
    pub groups: Vec<Vec<String>>,
    /// The content of every message accepted, its dots unstuffed.
    pub messages: Vec<String>,
    /// Every AUTH PLAIN received: (user, password), decoded.
    pub auth: Vec<(String, String)>,
    /// Connections accepted.
    pub connections: usize,
}

/// An SMTP server strict about pipelining, as Exim is: it offers PIPELINING only when
/// `pipelining`, and without it drops a client that sends a command before the reply to the
/// one before ("synchronization error"). RCPT TO `rejected@example.com` answers 550, and
/// DATA without an accepted recipient 554.
pub async fn strict_server(pipelining: bool) -> (SocketAddr, Arc<Mutex<Reads>>) {
    scripted_server(pipelining, true, false).await
}

/// A careless relay: it offers AUTH PLAIN on a plain connection and no STARTTLS, accepts any
/// credentials and records them ([`Reads::auth`]): what an eavesdropper on the way would
/// read. Otherwise a [`strict_server`] without PIPELINING.
pub async fn plain_auth_server() -> (SocketAddr, Arc<Mutex<Reads>>) {
    scripted_server(false, true, true).await
}

/// A [`strict_server`], which answers QUIT only if `answers_quit`, and offers and takes AUTH
/// PLAIN in clear if `auth`.
async fn scripted_server(
    pipelining: bool,
    answers_quit: bool,
    auth: bool,
) -> (SocketAddr, Arc<Mutex<Reads>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reads = Arc::new(Mutex::new(Reads::default()));
    let seen = reads.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let reads = seen.clone();
            reads.lock().unwrap().connections += 1;
            tokio::spawn(async move {
                let (mut pending, mut chunk) = (Vec::new(), vec![0u8; 1 << 16]);
                let (mut in_data, mut recipients, mut data) = (false, 0, String::new());
                let mut replies = String::from("220 strict.example.com ESMTP\r\n");
                loop {
                    if tcp.write_all(replies.as_bytes()).await.is_err() {
                        return;
                    }
                    replies.clear();
                    let mut commands = Vec::new();
                    while commands.is_empty() && replies.is_empty() {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&chunk[..n]),
                        }
                        while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
                            let line: Vec<u8> = pending.drain(..end + 2).collect();
                            let line = String::from_utf8_lossy(&line[..end]).into_owned();
                            if in_data {
                                if line == "." {
                                    in_data = false;
                                    let message = std::mem::take(&mut data);
                                    reads.lock().unwrap().messages.push(message);
                                    replies.push_str("250 2.0.0 queued\r\n");
                                } else {
                                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                                    data.push_str("\r\n");
                                }
                                continue;
                            }
                            let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                            if verb == "AUTH" {
                                reads.lock().unwrap().auth.push(plain_credentials(&line));
                            }
                            replies.push_str(match verb.as_str() {
                                "EHLO" if auth => "250-strict.example.com\r\n250 AUTH PLAIN\r\n",
                                "AUTH" if auth => "235 2.7.0 authenticated\r\n",
                                "EHLO" if pipelining => {
                                    "250-strict.example.com\r\n250 PIPELINING\r\n"
                                }
                                "EHLO" => "250 strict.example.com\r\n",
                                "MAIL" => {
                                    recipients = 0;
                                    "250 2.1.0 ok\r\n"
                                }
                                "RCPT" if line.contains("rejected@example.com") => {
                                    "550 5.1.1 no such user\r\n"
                                }
                                "RCPT" => {
                                    recipients += 1;
                                    "250 2.1.5 ok\r\n"
                                }
                                "DATA" if recipients == 0 => "554 5.5.1 no valid recipients\r\n",
                                "DATA" => {
                                    in_data = true;
                                    "354 go ahead\r\n"
                                }
                                "QUIT" if answers_quit => "221 bye\r\n",
                                "QUIT" => std::future::pending().await,
                                _ => "250 ok\r\n",
                            });
                            commands.push(verb);
                        }
                    }
                    if !pipelining && commands.len() > 1 {
                        let _ = tcp.write_all(b"554 5.5.0 synchronization error\r\n").await;
                        return;
                    }
                    if !commands.is_empty() {
                        reads.lock().unwrap().groups.push(commands);
                    }
                }
            });
        }
    });
    (addr, reads)
}

/// The (user, password) of an `AUTH PLAIN <base64>` line; empty when it holds none.
fn plain_credentials(line: &str) -> (String, String) {
    use base64::Engine;
    let encoded = line.split_whitespace().nth(2).unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_default();
    let mut parts = decoded.split(|&b| b == 0).skip(1);
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    (next(), next())
}

/// A port on which nothing listens, for the rest of the run: bound and never listening, so
/// that no other test's server can take it and answer.
pub fn refused_port() -> u16 {
    static HELD: Mutex<Vec<tokio::net::TcpSocket>> = Mutex::new(Vec::new());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    HELD.lock().unwrap().push(socket);
    port
}
