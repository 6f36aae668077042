//! Wiring: opens the store and the master key, creates the bootstrap key, and serves every
//! service with health and reflection until the shutdown future resolves.
//!
//! A store an import left unfinished (its mark) is refused at open. Shutdown: health goes
//! `NOT_SERVING` first (so balancers drain this replica), the listener stops accepting,
//! in-flight RPCs finish within `--shutdown-grace`, every background job (`jobs/`: delivery
//! among them) is drained within it, and the store is flushed.

mod jobs;
mod master_key;
mod portability;
mod process;
mod store;
#[cfg(feature = "tls")]
mod tls;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::Instrument;

use crate::api::api_keys::ApiKeysApi;
use crate::api::directory::DirectoryApi;
use crate::api::gate::{request_limit, GateLayer, OPEN_LIMIT};
use crate::api::notifier::NotifierApi;
use crate::api::smtp_admin::SmtpAdminApi;
use crate::api::templates::TemplatesApi;
use crate::api::token::TokenApi;
use crate::auth::Authenticator;
use crate::config::Args;
use crate::directory::DirectoryService;
use crate::mail::delivery::Delivery;
use crate::metrics::{Metrics, RpcLayer};
use crate::notify::{MailQueued, NotifyService, Quotas, RenderThreads};
use crate::proto::v1::{
    api_keys_server::ApiKeysServer, directory_server::DirectoryServer,
    notifier_server::NotifierServer, smtp_admin_server::SmtpAdminServer,
    templates_server::TemplatesServer, token_server::TokenServer,
};
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::settings::SettingsService;
use crate::store::Store;
use crate::templates::TemplateService;
use crate::tokens::TokenService;
use jobs::cache_invalidation::follow_changes;
use jobs::health::{monitor_store, set_health};
use jobs::recovery::recover_batches;
use jobs::sweeper::{sweep, Asks};
use jobs::Jobs;
use master_key::master_key_for;
use store::{create_private_dir, open_store};
#[cfg(feature = "tls")]
use tls::tls_config;

pub use jobs::sweeper::Sweeper;
pub use master_key::rotate_master_key;
pub use portability::{export, exported, import, imported, migrate, migrated};
pub use process::{init_tracing, shutdown_signal};

/// The services whose health is reported, besides the server as a whole (`""`).
pub const SERVICES: [&str; 6] = [
    <SmtpAdminServer<SmtpAdminApi> as NamedService>::NAME,
    <TokenServer<TokenApi> as NamedService>::NAME,
    <NotifierServer<NotifierApi> as NamedService>::NAME,
    <DirectoryServer<DirectoryApi> as NamedService>::NAME,
    <ApiKeysServer<ApiKeysApi> as NamedService>::NAME,
    <TemplatesServer<TemplatesApi> as NamedService>::NAME,
];

/// How often an idle HTTP/2 connection is pinged (and TCP's keepalive probes sent).
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a ping may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

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
    templates: TemplateService,
    wake: Arc<MailQueued>,
    sweep: Sweeper,
    sweeps: Asks,
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
        let store = open_store(&args).await?;
        // Before anything is written: a store an import is writing is not the server's yet.
        if let Some(mark) = store.import_mark().await? {
            return Err(crate::snapshot::interrupted(&mark).into());
        }
        let master_key = master_key_for(store.as_ref(), &args).await?;
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
        let directory = DirectoryService::new(store.clone(), store.clone(), args.clock.clone())
            .with_org_limit(args.org_user_changes_per_hour);
        let wake = Arc::new(MailQueued::new());
        // One pool of threads renders sends, built-in emails and previews.
        let threads = RenderThreads::new(args.send_threads, metrics.clone());
        let templates =
            TemplateService::new(store.clone(), args.clock.clone(), &args.platform_name)
                .with_render_threads(threads.clone());
        let notify = NotifyService::new(
            store.clone(),
            store.clone(),
            settings.clone(),
            args.clock.clone(),
            wake.clone(),
            metrics.clone(),
        )
        .with_render_threads(threads)
        .with_quotas(Quotas {
            pending_messages: args.org_pending_messages,
            messages_per_hour: args.org_messages_per_hour,
            bytes_per_day: args.org_bytes_per_day,
        })
        .with_email_sources(Arc::new(templates.clone()));
        let tokens = TokenService::new(
            store.clone(),
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
        let (sweep, sweeps) = Sweeper::new();
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
            templates,
            wake,
            sweep,
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
    pub fn delivery_waker(&self) -> Arc<MailQueued> {
        self.wake.clone()
    }

    /// Serves on `listener` until `shutdown` resolves, then drains and flushes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, &SERVICES, ServingStatus::Serving).await;
        let (mut jobs, mut failures) = Jobs::new();
        let stop = jobs.stopping();
        jobs.essential(
            "health monitor",
            monitor_store(self.store.clone(), health.clone(), &SERVICES, stop.clone())
                .instrument(tracing::info_span!("health_monitor")),
        );
        let delivery = Delivery::new(
            self.store.clone(),
            self.settings.clone(),
            self.args.clock.clone(),
            self.wake.clone(),
            usize::from(self.args.workers),
            self.metrics.clone(),
        )
        .claim_margin(self.args.claim_margin)
        .shared_store(!self.store.exclusive());
        jobs.essential(
            "delivery",
            delivery
                .run(stop.clone(), self.args.shutdown_grace)
                .instrument(tracing::info_span!("delivery")),
        );
        if let Some(listener) = self.metrics_listener {
            tracing::info!(addr = ?listener.local_addr().ok(), "serving Prometheus metrics at /metrics");
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
            let stopped = stop.clone();
            let served =
                crate::metrics::serve(listener, self.metrics.clone(), refresh, async move {
                    stopped.cancelled().await
                });
            jobs.auxiliary("metrics endpoint", async move {
                if let Err(e) = served.await {
                    tracing::warn!(error = %e, "the metrics endpoint stopped");
                }
            });
        }
        jobs.auxiliary(
            "cache invalidation",
            follow_changes(self.store.clone(), self.auth.clone(), self.settings.clone())
                .instrument(tracing::info_span!("cache_invalidation")),
        );
        if !self.store.exclusive() {
            jobs.essential(
                "batch recovery",
                recover_batches(self.notify.clone(), self.args.clock.clone(), stop.clone())
                    .instrument(tracing::info_span!("batch_recovery")),
            );
        }
        jobs.essential(
            "sweeper",
            sweep(
                self.tokens.clone(),
                self.notify.clone(),
                self.args.message_retention,
                self.sweeps,
                stop.clone(),
            )
            .instrument(tracing::info_span!("sweeper")),
        );

        let addr = listener.local_addr()?;
        let failure = Arc::new(std::sync::OnceLock::new());
        let failed_job = failure.clone();
        let (signal_health, signal_stop) = (health.clone(), stop.clone());
        let drained = async move {
            tokio::select! {
                () = shutdown => {}
                Some(job) = failures.recv() => {
                    let _ = failed_job.set(job);
                }
            }
            tracing::info!("shutting down: NOT_SERVING, draining in-flight RPCs");
            set_health(&signal_health, &SERVICES, ServingStatus::NotServing).await;
            signal_stop.cancel();
        };
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
        // A connection that stops answering is closed: a stream it holds holds memory.
        let builder = Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .tcp_keepalive(Some(KEEPALIVE));
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
            .add_service(health_service.max_decoding_message_size(OPEN_LIMIT))
            .add_service(reflection_v1.max_decoding_message_size(OPEN_LIMIT))
            .add_service(reflection_v1alpha.max_decoding_message_size(OPEN_LIMIT))
            .add_service(
                SmtpAdminServer::new(SmtpAdminApi::new(
                    self.settings.clone(),
                    self.templates.clone(),
                ))
                .max_decoding_message_size(request_limit("mailroom.v1.SmtpAdmin")),
            )
            .add_service(
                TokenServer::new(TokenApi::new(self.tokens.clone()))
                    .max_decoding_message_size(request_limit("mailroom.v1.Token")),
            )
            .add_service(
                NotifierServer::new(NotifierApi::new(self.notify.clone()))
                    .max_decoding_message_size(request_limit("mailroom.v1.Notifier")),
            )
            .add_service(
                DirectoryServer::new(DirectoryApi::new(self.directory.clone()))
                    .max_decoding_message_size(request_limit("mailroom.v1.Directory")),
            )
            .add_service(
                ApiKeysServer::new(ApiKeysApi::new(self.auth.clone()))
                    .max_decoding_message_size(request_limit("mailroom.v1.ApiKeys")),
            )
            .add_service(
                TemplatesServer::new(TemplatesApi::new(
                    self.templates.clone(),
                    self.notify.clone(),
                    self.settings.clone(),
                ))
                .max_decoding_message_size(request_limit("mailroom.v1.Templates")),
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
        let served = tokio::select! {
            served = &mut server => served,
            () = stop.cancelled() => {
                match tokio::time::timeout(self.args.shutdown_grace, &mut server).await {
                    Ok(served) => served,
                    Err(_) => {
                        tracing::warn!(grace = ?self.args.shutdown_grace, "in-flight RPCs still running after the grace period; stopping them");
                        Ok(())
                    }
                }
            }
        };
        // Every job ends before `serve` returns, so that their handles on the store are
        // gone and the data directory is free for the next process. Delivery lets its
        // senders finish within the grace, and is given that much again to return.
        let aborted = jobs.drain(self.args.shutdown_grace * 2).await;
        if !aborted.is_empty() {
            tracing::warn!(jobs = ?aborted, "jobs still running after the grace period were stopped");
        }
        self.store.flush().await.context("flushing the store")?;
        served.context("serving gRPC")?;
        if let Some(job) = failure.get() {
            anyhow::bail!("the {job} job stopped while serving; a restart resumes it");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Opens mailroom as `args` say and serves on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    args: Args,
) -> anyhow::Result<()> {
    Mailroom::open(args).await?.serve(listener, shutdown).await
}
