//! Starts the real server on 127.0.0.1:0 with a temporary data directory, and gives
//! generated clients that present an API key.

#![allow(dead_code)]

mod bounds;
pub mod contract;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod oauth2;
pub mod process;
pub mod proxy;
mod race;
pub mod smtp;

pub use bounds::{eventually, forget_child, watch_child, watchdog, within};
pub use race::race;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mailroom::clock::Clock;
use mailroom::config::Args;
use mailroom::proto::v1 as pb;
use mailroom::server::Mailroom;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// The manual clock test servers start with.
pub fn test_clock() -> Clock {
    Clock::manual(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
}

/// A port free right now on 127.0.0.1 (nothing listens on it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The bootstrap key's secret, read from `admin.key`.
    pub admin_key: String,
    pub data_dir: PathBuf,
    pub clock: Clock,
    /// Where `/metrics` is served, with `--metrics-listen`.
    pub metrics: Option<SocketAddr>,
    waker: std::sync::Arc<mailroom::notify::MailQueued>,
    sweeper: mailroom::server::Sweeper,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    _temp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server on a new temporary data directory, with a manual clock.
    pub async fn start() -> Self {
        let temp = tempfile::tempdir().expect("temporary directory");
        let mut server = Self::start_in(temp.path()).await;
        server._temp = Some(temp);
        server
    }

    /// A server on a new temporary data directory, with a manual clock and the arguments
    /// `tune` sets.
    pub async fn start_tuned(tune: impl FnOnce(&mut Args)) -> Self {
        let temp = tempfile::tempdir().expect("temporary directory");
        let mut args = Args::with_data_dir(temp.path());
        args.clock = test_clock();
        tune(&mut args);
        let mut server = Self::start_with(args).await;
        server._temp = Some(temp);
        server
    }

    /// A server on `data_dir` (kept after it stops).
    pub async fn start_in(data_dir: &Path) -> Self {
        let mut args = Args::with_data_dir(data_dir);
        args.clock = test_clock();
        Self::start_with(args).await
    }

    /// A server with these arguments (`listen` is ignored: 127.0.0.1:0).
    pub async fn start_with(args: Args) -> Self {
        let data_dir = args.data_dir.clone();
        let clock = args.clock.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let mailroom = Mailroom::open(args).await.expect("open mailroom");
        let waker = mailroom.delivery_waker();
        let metrics = mailroom.metrics_addr();
        let sweeper = mailroom.sweeper();
        // Empty for a replica that joined a store another one bootstrapped.
        let admin_key = std::fs::read_to_string(data_dir.join("admin.key"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(mailroom.serve(listener, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            admin_key,
            data_dir,
            clock,
            metrics,
            waker,
            sweeper,
            shutdown: Some(tx),
            handle: Some(handle),
            _temp: None,
        }
    }

    /// Shuts the server down and waits for it; what `run` returned.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            // Its drain is bounded by the shutdown grace (10 s).
            Some(handle) => within(Duration::from_secs(30), "the server stopping", handle)
                .await
                .expect("server task"),
            None => Ok(()),
        }
    }

    /// Signals shutdown without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Checks the server as a whole answers its health check `SERVING` (no key needed).
    pub async fn assert_serving(&self) {
        use tonic_health::pb::health_check_response::ServingStatus;
        let status = tonic_health::pb::health_client::HealthClient::new(self.channel())
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("a health answer")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving);
    }

    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy()
    }

    /// Moves the manual clock forward and wakes delivery to look at it.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.waker.announce();
    }

    /// Runs the sweeper now and waits until it has swept (tokens, idempotency keys,
    /// messages), so that what a test then reads is what that sweep left.
    pub async fn sweep(&self) {
        assert!(
            self.sweeper.sweep().await,
            "the server stopped before sweeping"
        );
    }

    pub fn tokens(&self, key: &str) -> TokenClient {
        pb::token_client::TokenClient::with_interceptor(self.channel(), Bearer::new(key))
    }

    pub fn notifier(&self, key: &str) -> NotifierClient {
        pb::notifier_client::NotifierClient::with_interceptor(self.channel(), Bearer::new(key))
    }

    pub fn templates(&self, key: &str) -> TemplatesClient {
        pb::templates_client::TemplatesClient::with_interceptor(self.channel(), Bearer::new(key))
    }

    pub fn directory(&self, key: &str) -> DirectoryClient {
        pb::directory_client::DirectoryClient::with_interceptor(self.channel(), Bearer::new(key))
    }

    /// Points the SMTP settings at a plain server on 127.0.0.1:`port` with the default
    /// timeout (10 s: under the frozen test clock a message that times out waits for the
    /// clock to move, so a short one would lose mail to one slow greeting on a busy
    /// machine); token emails may link to [`LINK_ORIGINS`].
    pub async fn configure_smtp(&self, port: u16) -> pb::SmtpSettings {
        self.save_smtp(pb::SmtpSettings {
            host: "127.0.0.1".into(),
            port: port.into(),
            from: "TheHive <thehive@example.com>".into(),
            link_origins: link_origins(),
            ..Default::default()
        })
        .await
    }

    /// Points the SMTP settings at a STARTTLS server on 127.0.0.1:`port` whose certificate
    /// `ca_pem` signed, authenticating as `relay` / `relay-password`
    /// (`SmtpServer::with_auth(&pki, "relay", "relay-password")`).
    pub async fn configure_secure_smtp(&self, port: u16, ca_pem: &str) -> pb::SmtpSettings {
        self.save_smtp(pb::SmtpSettings {
            host: "127.0.0.1".into(),
            port: port.into(),
            from: "thehive@example.com".into(),
            security: pb::ConnectionSecurity::Starttls.into(),
            username: "relay".into(),
            password: "relay-password".into(),
            tls: Some(pb::TlsSettings {
                ca_certificates_pem: ca_pem.into(),
                ..Default::default()
            }),
            link_origins: link_origins(),
            ..Default::default()
        })
        .await
    }

    /// Replaces the SMTP settings with `settings`.
    pub async fn save_smtp(&self, settings: pb::SmtpSettings) -> pb::SmtpSettings {
        self.smtp(&self.admin_key)
            .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
                settings: Some(settings),
                update_mask: None,
            })
            .await
            .expect("configure SMTP")
            .into_inner()
    }

    /// Adds a directory user.
    pub async fn add_user(&self, login: &str, name: &str, email: &str, organisations: &[&str]) {
        self.directory(&self.admin_key)
            .upsert_user(pb::UpsertUserRequest {
                user: Some(pb::User {
                    login: login.into(),
                    name: name.into(),
                    email: email.into(),
                    organisations: organisations.iter().map(|o| o.to_string()).collect(),
                    ..Default::default()
                }),
            })
            .await
            .expect("upsert user");
    }

    /// Sends `subject`/`body` to `to` for organisation acme with the admin key; the ids of
    /// the messages.
    pub async fn send_to(&self, to: &[&str], subject: &str, body: &str) -> Vec<String> {
        self.notifier(&self.admin_key)
            .send_to_addresses(pb::SendToAddressesRequest {
                organisation: "acme".into(),
                to: to.iter().map(|a| a.to_string()).collect(),
                subject: subject.into(),
                body: body.into(),
                ..Default::default()
            })
            .await
            .expect("send to addresses")
            .into_inner()
            .message_ids
    }

    /// Waits (10 s at most) until message `id` is in `state`; the message.
    pub async fn wait_for_state(&self, id: &str, state: pb::MessageState) -> pb::Message {
        self.wait_for_state_as(&self.admin_key, id, state).await
    }

    /// [`TestServer::wait_for_state`], asking with `key`.
    pub async fn wait_for_state_as(
        &self,
        key: &str,
        id: &str,
        state: pb::MessageState,
    ) -> pb::Message {
        let mut notifier = self.notifier(key);
        let what = format!("message {id} in {state:?}");
        eventually(Duration::from_secs(10), &what, async || {
            let message = notifier
                .get_message(pb::GetMessageRequest { id: id.into() })
                .await
                .expect("get message")
                .into_inner();
            if message.state() == state {
                Ok(message)
            } else {
                Err(message)
            }
        })
        .await
    }

    pub fn smtp(&self, key: &str) -> SmtpClient {
        pb::smtp_admin_client::SmtpAdminClient::with_interceptor(self.channel(), Bearer::new(key))
    }

    pub fn keys(&self, key: &str) -> KeysClient {
        pb::api_keys_client::ApiKeysClient::with_interceptor(self.channel(), Bearer::new(key))
    }

    /// Creates a key and returns its secret.
    pub async fn create_key(&self, organisation: &str, permissions: &[&str]) -> String {
        self.create_key_full(organisation, permissions).await.secret
    }

    /// Creates a key: the key and its secret.
    pub async fn create_key_full(
        &self,
        organisation: &str,
        permissions: &[&str],
    ) -> pb::CreateApiKeyResponse {
        self.keys(&self.admin_key)
            .create_api_key(pb::CreateApiKeyRequest {
                name: format!("{organisation}-{}", permissions.join("-")),
                organisation: organisation.into(),
                permissions: permissions.iter().map(|p| p.to_string()).collect(),
            })
            .await
            .expect("create key")
            .into_inner()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

pub type SmtpClient = pb::smtp_admin_client::SmtpAdminClient<InterceptedService<Channel, Bearer>>;
pub type TokenClient = pb::token_client::TokenClient<InterceptedService<Channel, Bearer>>;
pub type NotifierClient = pb::notifier_client::NotifierClient<InterceptedService<Channel, Bearer>>;
pub type DirectoryClient =
    pb::directory_client::DirectoryClient<InterceptedService<Channel, Bearer>>;
pub type TemplatesClient =
    pb::templates_client::TemplatesClient<InterceptedService<Channel, Bearer>>;
pub type KeysClient = pb::api_keys_client::ApiKeysClient<InterceptedService<Channel, Bearer>>;

/// The origins the helpers' SMTP settings let token emails link to.
pub const LINK_ORIGINS: [&str; 2] = ["https://thehive.example.com", "https://portal.example.com"];

/// [`LINK_ORIGINS`], as settings hold them.
pub fn link_origins() -> Vec<String> {
    LINK_ORIGINS.iter().map(|o| o.to_string()).collect()
}

/// An IssueToken request for `login` (address `<login>@example.com`) in organisation acme.
pub fn issue_request(login: &str, purpose: pb::TokenPurpose) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        purpose: purpose.into(),
        login: login.into(),
        email: format!("{login}@example.com"),
        organisation: "acme".into(),
        ..Default::default()
    }
}

/// Adds `authorization: Bearer <key>` (nothing for an empty key).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(key: &str) -> Self {
        Self((!key.is_empty()).then(|| format!("Bearer {key}").parse().expect("ascii key")))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The `BadRequest` fields named by an `INVALID_ARGUMENT` status.
pub fn violated_fields(status: &Status) -> Vec<String> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Every byte of every file under `dir`.
pub fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap());
        }
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Runs `scenario` on a server over sled, then over etcd with the `etcd` feature (when an
/// etcd binary is found).
pub async fn on_every_store<F: std::future::Future<Output = ()>>(
    scenario: impl Fn(TestServer) -> F,
) {
    scenario(TestServer::start().await).await;
    #[cfg(feature = "etcd")]
    {
        let Some(etcd) = etcd::Etcd::start().await else {
            return;
        };
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut args = mailroom::config::Args::with_data_dir(dir.path());
        args.store = mailroom::config::StoreKind::Etcd;
        args.etcd_endpoints = vec![etcd.endpoint.clone()];
        args.clock = test_clock();
        scenario(TestServer::start_with(args).await).await;
    }
}
