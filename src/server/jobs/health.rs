//! The store's health monitor: the gRPC health service says `NOT_SERVING` while the store
//! does not answer, so that balancers send calls to another replica.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::store::Store;

/// How often the health monitor asks the store whether it answers.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Sets the status of the server as a whole (`""`) and of every service in `services`.
pub async fn set_health(health: &HealthReporter, services: &[&str], status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in services {
        health.set_service_status(*service, status).await;
    }
}

/// Reports `NOT_SERVING` while the store does not answer, `SERVING` again when it does,
/// until `stop` is cancelled.
pub async fn monitor_store(
    store: Arc<dyn Store>,
    health: HealthReporter,
    services: &'static [&'static str],
    stop: CancellationToken,
) {
    let mut healthy = true;
    loop {
        tokio::select! {
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
            () = stop.cancelled() => return,
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
        if ok != healthy && !stop.is_cancelled() {
            healthy = ok;
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_health(&health, services, status).await;
        }
    }
}
