//! Wiring: opens the store and the master key, creates the bootstrap key, and serves every
//! service with health and reflection until the shutdown future resolves.
//!
//! Shutdown: health goes `NOT_SERVING` first (so balancers drain this replica), the
//! listener stops accepting, in-flight RPCs finish within `--shutdown-grace`, and the store
//! is flushed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::Instrument;

use crate::api::api_keys::ApiKeysApi;
use crate::api::directory::DirectoryApi;
use crate::api::gate::{request_limit, GateLayer};
use crate::api::notifier::NotifierApi;
use crate::api::smtp_admin::SmtpAdminApi;
use crate::api::token::TokenApi;
use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::config::{Args, LogFormat, StoreKind};
use crate::crypto::MasterKey;
use crate::directory::DirectoryService;
use crate::mail::delivery::Delivery;
use crate::metrics::{Metrics, RpcLayer};
use crate::notify::{NotifyService, Quotas};
use crate::proto::v1::{
    api_keys_server::ApiKeysServer, directory_server::DirectoryServer,
    notifier_server::NotifierServer, smtp_admin_server::SmtpAdminServer, token_server::TokenServer,
};
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::settings::SettingsService;
use crate::store::sled::SledStore;
use crate::store::{Changed, Store};
use crate::tokens::TokenService;

/// The services whose health is reported, besides the server as a whole (`""`).
pub const SERVICES: [&str; 5] = [
    <SmtpAdminServer<SmtpAdminApi> as NamedService>::NAME,
    <TokenServer<TokenApi> as NamedService>::NAME,
    <NotifierServer<NotifierApi> as NamedService>::NAME,
    <DirectoryServer<DirectoryApi> as NamedService>::NAME,
    <ApiKeysServer<ApiKeysApi> as NamedService>::NAME,
];

/// How often the health monitor asks the store whether it answers.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// An opened mailroom: store, keys and services, ready to serve.
pub struct Mailroom {
    args: Args,
    #[cfg(feature = "tls")]
    tls: Option<tonic::transport::ServerTlsConfig>,
    store: Arc<dyn Store>,
    auth: Authenticator,
    settings: SettingsService,
    directory: DirectoryService,
    notify: NotifyService,
    tokens: TokenService,
    wake: Arc<Notify>,
    sweep: Sweeper,
    sweeps: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    metrics: Metrics,
    metrics_listener: Option<TcpListener>,
}

impl Mailroom {
    /// Opens the data directory, the master key and the store, and creates the bootstrap
    /// key on a store that never had one.
    pub async fn open(args: Args) -> anyhow::Result<Self> {
        create_private_dir(&args.data_dir)?;
        #[cfg(feature = "tls")]
        let tls = tls_config(&args)?;
        #[cfg(not(feature = "tls"))]
        if args.tls_cert.is_some() {
            anyhow::bail!(
                "this mailroom was built without the `tls` feature: --tls-cert is unavailable"
            );
        }
        let master_key = MasterKey::load_or_create(&args.master_key_path())?;
        let store = open_store(&args).await?;
        check_master_key(store.as_ref(), &master_key, &args).await?;
        let auth = Authenticator::new(store.clone(), args.clock.clone());
        if let Some(file) = auth.bootstrap(&args.data_dir).await? {
            tracing::info!(
                file = %file.display(),
                "created API key `bootstrap-admin` (admin organisation, every permission); its secret is in this file"
            );
        }
        let metrics = Metrics::new();
        let settings =
            SettingsService::new(store.clone(), Arc::new(master_key), args.clock.clone())
                .deny_private_addresses(args.smtp_deny_private_addresses)
                .resolver(args.resolver.clone())
                .metrics(metrics.clone());
        let directory = DirectoryService::new(store.clone(), args.clock.clone())
            .with_org_limit(args.org_user_changes_per_hour);
        let wake = Arc::new(Notify::new());
        let notify = NotifyService::new(
            store.clone(),
            settings.clone(),
            args.clock.clone(),
            wake.clone(),
            metrics.clone(),
        )
        .with_quotas(Quotas {
            pending_messages: args.org_pending_messages,
            messages_per_hour: args.org_messages_per_hour,
            bytes_per_day: args.org_bytes_per_day,
        });
        let tokens = TokenService::new(
            store.clone(),
            settings.clone(),
            notify.clone(),
            args.clock.clone(),
            args.token_issue_limit,
            metrics.clone(),
        )
        .with_org_limit(args.org_tokens_per_hour);
        let metrics_listener = match args.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding --metrics-listen {addr}"))?,
            ),
            None => None,
        };
        if store.exclusive() {
            let settled = notify.recover_batches(args.clock.now()).await?;
            if settled > 0 {
                tracing::info!(
                    settled,
                    "batches a crash left halfway settled: uncommitted ones dropped, committed ones queued"
                );
            }
            let released = notify.release_claims().await?;
            if released > 0 {
                tracing::info!(released, "messages claimed before a crash are due again");
            }
        }
        let (sweep, sweeps) = mpsc::unbounded_channel();
        Ok(Self {
            args,
            #[cfg(feature = "tls")]
            tls,
            store,
            auth,
            settings,
            directory,
            notify,
            tokens,
            wake,
            sweep: Sweeper(sweep),
            sweeps,
            metrics,
            metrics_listener,
        })
    }

    /// Where `/metrics` is served, with `--metrics-listen`.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Runs the sweeper now (it runs hourly) and tells when it has: tests that move a
    /// manual clock past a purge time use it.
    pub fn sweeper(&self) -> Sweeper {
        self.sweep.clone()
    }

    /// Wakes the delivery workers (as queuing mail does): tests that move a manual clock
    /// past a retry time use it to say "look again".
    pub fn delivery_waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Serves on `listener` until `shutdown` resolves, then drains and flushes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::Serving).await;
        let (stopping, stop_watch) = watch::channel(false);
        let (failed, mut failures) = mpsc::unbounded_channel();
        let monitor = tokio::spawn(essential(
            "health monitor",
            monitor_store(self.store.clone(), health.clone(), stop_watch.clone())
                .instrument(tracing::info_span!("health_monitor")),
            stop_watch.clone(),
            failed.clone(),
        ));
        // google.rpc's error details too: grpcurl then prints an error's ErrorInfo,
        // BadRequest or RetryInfo as JSON instead of "not recognized" and base64.
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let delivery = Delivery::new(
            self.store.clone(),
            self.settings.clone(),
            self.args.clock.clone(),
            self.wake.clone(),
            usize::from(self.args.workers),
            self.metrics.clone(),
        )
        .claim_margin(self.args.claim_margin);
        let delivery = tokio::spawn(essential(
            "delivery",
            delivery
                .run(stop_watch.clone(), self.args.shutdown_grace)
                .instrument(tracing::info_span!("delivery")),
            stop_watch.clone(),
            failed.clone(),
        ));
        let metrics_server = self.metrics_listener.map(|listener| {
            let addr = listener.local_addr().ok();
            tracing::info!(addr = ?addr, "serving Prometheus metrics at /metrics");
            let (store, clock, metrics) = (
                self.store.clone(),
                self.args.clock.clone(),
                self.metrics.clone(),
            );
            let refresh = move || {
                let (store, clock, metrics) = (store.clone(), clock.clone(), metrics.clone());
                async move {
                    if let (Ok(depth), Ok(next)) =
                        (store.pending_messages().await, store.next_due().await)
                    {
                        metrics.outbox(depth, next, clock.now());
                    }
                }
            };
            let mut stop = stop_watch.clone();
            let shutdown = async move { stopped(&mut stop).await };
            tokio::spawn(crate::metrics::serve(
                listener,
                self.metrics.clone(),
                refresh,
                shutdown,
            ))
        });
        let followers = tokio::spawn(
            follow_changes(self.store.clone(), self.auth.clone(), self.settings.clone())
                .instrument(tracing::info_span!("cache_invalidation")),
        );
        let recovery = (!self.store.exclusive()).then(|| {
            tokio::spawn(essential(
                "batch recovery",
                recover_batches(
                    self.notify.clone(),
                    self.args.clock.clone(),
                    stop_watch.clone(),
                )
                .instrument(tracing::info_span!("batch_recovery")),
                stop_watch.clone(),
                failed.clone(),
            ))
        });
        let sweeper = tokio::spawn(essential(
            "sweeper",
            sweep(
                self.tokens.clone(),
                self.notify.clone(),
                self.args.message_retention,
                self.sweeps,
                stop_watch.clone(),
            )
            .instrument(tracing::info_span!("sweeper")),
            stop_watch.clone(),
            failed,
        ));
        let addr = listener.local_addr()?;
        let signal_health = health.clone();
        let failure = Arc::new(std::sync::OnceLock::new());
        let failed_task = failure.clone();
        let drained = async move {
            tokio::select! {
                () = shutdown => {}
                Some(task) = failures.recv() => {
                    let _ = failed_task.set(task);
                }
            }
            tracing::info!("shutting down: NOT_SERVING, draining in-flight RPCs");
            set_health(&signal_health, ServingStatus::NotServing).await;
            let _ = stopping.send(true);
        };
        let builder = Server::builder();
        #[cfg(feature = "tls")]
        let builder = match self.tls.clone() {
            Some(tls) => builder.tls_config(tls).context("configuring TLS")?,
            None => builder,
        };
        let server = builder
            .layer(RpcLayer(self.metrics.clone()))
            .layer(GateLayer::new(
                self.auth.clone(),
                usize::try_from(self.args.request_bytes_in_flight).unwrap_or(usize::MAX),
                self.args.request_read_timeout,
                self.metrics.clone(),
            ))
            .trace_fn(|request| {
                tracing::info_span!(
                    "rpc",
                    method = %request.uri().path(),
                    key_id = tracing::field::Empty,
                    organisation = tracing::field::Empty,
                )
            })
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                SmtpAdminServer::new(SmtpAdminApi::new(self.auth.clone(), self.settings.clone()))
                    .max_decoding_message_size(request_limit("mailroom.v1.SmtpAdmin")),
            )
            .add_service(
                TokenServer::new(TokenApi::new(self.auth.clone(), self.tokens.clone()))
                    .max_decoding_message_size(request_limit("mailroom.v1.Token")),
            )
            .add_service(
                NotifierServer::new(NotifierApi::new(self.auth.clone(), self.notify.clone()))
                    .max_decoding_message_size(request_limit("mailroom.v1.Notifier")),
            )
            .add_service(
                DirectoryServer::new(DirectoryApi::new(self.auth.clone(), self.directory.clone()))
                    .max_decoding_message_size(request_limit("mailroom.v1.Directory")),
            )
            .add_service(
                ApiKeysServer::new(ApiKeysApi::new(self.auth.clone()))
                    .max_decoding_message_size(request_limit("mailroom.v1.ApiKeys")),
            )
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                drained,
            );
        tracing::info!(
            %addr,
            store = ?self.args.store,
            data_dir = %self.args.data_dir.display(),
            tls = self.args.tls_cert.is_some(),
            mtls = self.args.tls_client_ca.is_some(),
            "serving gRPC"
        );

        tokio::pin!(server);
        let mut stop = stop_watch;
        let served = tokio::select! {
            served = &mut server => served,
            () = stopped(&mut stop) => {
                match tokio::time::timeout(self.args.shutdown_grace, &mut server).await {
                    Ok(served) => served,
                    Err(_) => {
                        tracing::warn!(grace = ?self.args.shutdown_grace, "in-flight RPCs still running after the grace period; stopping them");
                        Ok(())
                    }
                }
            }
        };
        // Background tasks end before `serve` returns, so that their handles on the store
        // are gone and the data directory is free for the next process.
        monitor.abort();
        sweeper.abort();
        followers.abort();
        let _ = monitor.await;
        let _ = sweeper.await;
        let _ = followers.await;
        if let Some(recovery) = recovery {
            recovery.abort();
            let _ = recovery.await;
        }
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
            let _ = metrics_server.await;
        }
        if tokio::time::timeout(self.args.shutdown_grace, delivery)
            .await
            .is_err()
        {
            tracing::warn!("delivery did not stop within the grace period");
        }
        self.store.flush().await.context("flushing the store")?;
        served.context("serving gRPC")?;
        if let Some(task) = failure.get() {
            anyhow::bail!("the {task} task stopped while serving; a restart resumes it");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The TLS configuration `--tls-cert`, `--tls-key` and `--tls-client-ca` ask for.
#[cfg(feature = "tls")]
fn tls_config(args: &Args) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &args.tls_client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
}

async fn open_store(args: &Args) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match args.store {
        StoreKind::Sled => Arc::new(
            SledStore::open(&args.data_dir, args.cache_mb * 1024 * 1024).with_context(|| {
                format!(
                    "opening the store in {} (one mailroom per data directory: is another running?)",
                    args.data_dir.display()
                )
            })?,
        ),
        #[cfg(feature = "etcd")]
        StoreKind::Etcd => {
            let security = crate::etcd_access::security(args)?;
            Arc::new(
                crate::store::etcd::EtcdStore::connect(
                    &args.etcd_endpoints,
                    &args.etcd_prefix,
                    args.etcd_timeout,
                    &security,
                )
                .await
                .with_context(|| {
                    // A refused handshake reads "connection closed": say what was tried.
                    format!(
                        "connecting to etcd at {} (--etcd-endpoints) {}",
                        args.etcd_endpoints.join(","),
                        crate::etcd_access::describe(&security)
                    )
                })?,
            )
        }
        #[cfg(not(feature = "etcd"))]
        StoreKind::Etcd => anyhow::bail!(
            "this mailroom was built without the `etcd` feature: --store etcd is unavailable \
             (cargo build --release --features etcd)"
        ),
    })
}

const KEY_CHECK_PURPOSE: &str = "mailroom.key_check";

/// Proves that `key` opens this store's secrets (sealing the proof on a new store): a
/// wrong or lost key stops the start with a clear error instead of failing later.
async fn check_master_key(store: &dyn Store, key: &MasterKey, args: &Args) -> anyhow::Result<()> {
    match store.key_check().await? {
        Some(sealed) => {
            if key.open(KEY_CHECK_PURPOSE, &sealed).is_err() {
                anyhow::bail!(
                    "the master key in {} does not open this store's secrets: it is not the key \
                     they were sealed with. Start with the right key file (--master-key-file)",
                    args.master_key_path().display()
                );
            }
        }
        None => {
            store
                .set_key_check(&key.seal(KEY_CHECK_PURPOSE, "mailroom"))
                .await?
        }
    }
    Ok(())
}

/// `mailroom rotate-master-key`: a new sealing key, every stored secret (SMTP password,
/// client key, message contents) sealed again with it, then the old keys dropped. mailroom
/// must be stopped (the store is opened exclusively). Returns how many values it re-sealed.
pub async fn rotate_master_key(args: &Args) -> anyhow::Result<usize> {
    let path = args.master_key_path();
    let store = open_store(args).await?;
    let old = MasterKey::load_or_create(&path)?;
    check_master_key(store.as_ref(), &old, args).await?;
    // The old keys stay in the file until every value is re-sealed: a crash midway leaves
    // a keyring that still opens everything.
    let keyring = Arc::new(old.rotated(&path)?);
    let settings = SettingsService::new(store.clone(), keyring.clone(), args.clock.clone());
    let notify = NotifyService::new(
        store.clone(),
        settings.clone(),
        args.clock.clone(),
        Arc::new(Notify::new()),
        Metrics::new(),
    );
    let mut resealed = usize::from(settings.reseal().await?);
    resealed += notify.reseal().await?;
    store
        .set_key_check(&keyring.seal(KEY_CHECK_PURPOSE, "mailroom"))
        .await?;
    store.flush().await?;
    keyring.retire_old_keys(&path)?;
    tracing::info!(file = %path.display(), resealed, "master key rotated");
    Ok(resealed)
}

/// Opens mailroom as `args` say and serves on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    args: Args,
) -> anyhow::Result<()> {
    Mailroom::open(args).await?.serve(listener, shutdown).await
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Installs the global log subscriber (`RUST_LOG` filters; `info` by default).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in SERVICES {
        health.set_service_status(service, status).await;
    }
}

/// Reports `NOT_SERVING` while the store does not answer, `SERVING` again when it does.
async fn monitor_store(
    store: Arc<dyn Store>,
    health: HealthReporter,
    mut stopping: watch::Receiver<bool>,
) {
    let mut healthy = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            () = stopped(&mut stopping) => return,
        }
        let ok = match tokio::time::timeout(HEALTH_INTERVAL, store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "store does not answer");
                false
            }
            Err(_) => {
                tracing::warn!("store ping timed out");
                false
            }
        };
        let stopped = *stopping.borrow();
        if ok != healthy && !stopped {
            healthy = ok;
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_health(&health, status).await;
        }
    }
}

/// How often the sweeper runs.
const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// Asks the sweeper for a sweep now, besides its hourly ones.
#[derive(Clone)]
pub struct Sweeper(mpsc::UnboundedSender<oneshot::Sender<()>>);

impl Sweeper {
    /// Runs a sweep and waits until it has ended: one that began after this was called,
    /// so that it saw everything done before. `false` when the server has stopped.
    pub async fn sweep(&self) -> bool {
        let (done, ended) = oneshot::channel();
        self.0.send(done).is_ok() && ended.await.is_ok()
    }
}

/// Hourly, or when asked (`asks`): purges tokens ended more than a week ago, idle
/// rate-limit windows, idempotency keys older than a week, and finished messages older
/// than `message_retention`; then answers every ask that came before the sweep began.
async fn sweep(
    tokens: TokenService,
    notify: NotifyService,
    message_retention: Duration,
    mut asks: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut asked = Vec::new();
    loop {
        // Asks that came in meanwhile are answered by this sweep: it begins after them.
        while let Ok(ask) = asks.try_recv() {
            asked.push(ask);
        }
        match tokens.purge().await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "ended tokens purged"),
            Err(e) => tracing::warn!(error = %e, "token sweep failed"),
        }
        match notify.purge_idempotency().await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "old idempotency keys purged"),
            Err(e) => tracing::warn!(error = %e, "idempotency sweep failed"),
        }
        match notify.purge_messages(message_retention).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "finished messages past their retention purged"),
            Err(e) => tracing::warn!(error = %e, "message sweep failed"),
        }
        for ask in asked.drain(..) {
            let _ = ask.send(());
        }
        tokio::select! {
            () = tokio::time::sleep(SWEEP_INTERVAL) => {}
            Some(ask) = asks.recv() => asked.push(ask),
            () = stopped(&mut stopping) => return,
        }
    }
}

/// Forgets what this process caches when another replica changes it.
async fn follow_changes(store: Arc<dyn Store>, auth: Authenticator, settings: SettingsService) {
    let Some(mut changes) = store.changes() else {
        return;
    };
    loop {
        match changes.recv().await {
            Ok(Changed::SmtpSettings) => settings.forget(),
            Ok(Changed::ApiKeys) => auth.forget(),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                settings.forget();
                auth.forget();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// How often a replica on a shared store looks for batches another one left halfway.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(60);
/// How long a batch may stay staged, or committed but not fully queued, before another
/// replica takes it as abandoned: far beyond the time any request takes.
const ABANDONED_AFTER: Duration = Duration::from_secs(300);

/// On a shared store: drops batches whose writer died before committing them and
/// finishes queuing those it committed, every minute.
async fn recover_batches(notify: NotifyService, clock: Clock, mut stopping: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(RECOVERY_INTERVAL) => {}
            () = stopped(&mut stopping) => return,
        }
        match notify.recover_batches(clock.now() - ABANDONED_AFTER).await {
            Ok(0) => {}
            Ok(batches) => {
                tracing::info!(batches, "batches left halfway by another replica settled")
            }
            Err(e) => tracing::warn!(error = %e, "batch recovery failed"),
        }
    }
}

/// Runs a background task the service cannot do without (delivery, the sweeps, the store's
/// health monitor, batch recovery on a shared store). If it ends while the server is not
/// stopping, by a panic or a return, it reports its name on `failed`: the server then
/// stops with an error, so that its supervisor (systemd, Kubernetes) starts it again
/// instead of it answering RPCs with, say, mail no longer delivered.
async fn essential(
    name: &'static str,
    task: impl Future<Output = ()>,
    stopping: watch::Receiver<bool>,
    failed: mpsc::UnboundedSender<&'static str>,
) {
    use futures_util::FutureExt;
    let panicked = std::panic::AssertUnwindSafe(task)
        .catch_unwind()
        .await
        .is_err();
    // A dropped sender: the server itself is gone.
    let server_stopping = *stopping.borrow() || stopping.has_changed().is_err();
    if !server_stopping {
        tracing::error!(
            task = name,
            panicked,
            "a background task ended while serving; stopping"
        );
        let _ = failed.send(name);
    }
}

/// Resolves once shutdown has begun.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_essential_task_that_ends_while_serving_is_reported() {
        let (stop, stopping) = watch::channel(false);
        let (failed, mut failures) = mpsc::unbounded_channel();
        let bug = async { panic!("a bug met by the dispatcher") };
        essential("delivery", bug, stopping.clone(), failed.clone()).await;
        assert_eq!(failures.try_recv().ok(), Some("delivery"));
        essential("sweeper", async {}, stopping.clone(), failed.clone()).await;
        assert_eq!(
            failures.try_recv().ok(),
            Some("sweeper"),
            "a return counts too"
        );
        stop.send(true).unwrap();
        essential("delivery", async {}, stopping, failed.clone()).await;
        let (gone, stopping) = watch::channel(false);
        drop(gone);
        essential("sweeper", async {}, stopping, failed).await;
        assert!(
            failures.try_recv().is_err(),
            "ending once the server stops, or is gone, is the normal end"
        );
    }
}
