//! The watch on the settings and the API keys: another replica's change reaches
//! [`crate::ports::Backend::changes`] as it happens, and [`crate::ports::Backend::watch_epoch`] says whether it would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, WatchOptions};
use tokio::sync::broadcast;

use crate::store::keyspace::{self};
use crate::store::Changed;

/// Follows changes to the settings and the API keys into `changes`. After a broken watch,
/// reports both as changed once it watches again (changes in between were missed).
/// `epoch` is 0 until etcd confirmed both watches, and from then a number no earlier
/// watch had: what was cached under another epoch may have missed a change.
pub(super) async fn watch_cached(
    mut client: Client,
    prefix: String,
    changes: broadcast::Sender<Changed>,
    epoch: Arc<AtomicU64>,
) {
    let settings = format!("{prefix}{}{}", keyspace::META.etcd, keyspace::SMTP_SETTINGS);
    let keys = format!("{prefix}{}", keyspace::API_KEYS.etcd);
    let mut resumed = false;
    let mut watches: u64 = 0;
    loop {
        epoch.store(0, Ordering::Release);
        let watched = async {
            let mut stream = client.watch(settings.as_str(), None).await?;
            stream
                .watch(keys.as_str(), Some(WatchOptions::new().with_prefix()))
                .await?;
            Ok::<_, etcd_client::Error>(stream)
        }
        .await;
        let mut stream = match watched {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch etcd; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if resumed {
            let _ = changes.send(Changed::SmtpSettings);
            let _ = changes.send(Changed::ApiKeys);
        }
        resumed = true;
        // The stream opens before etcd creates the watches: until both are confirmed, a
        // change could still be missed.
        let mut created = 0;
        loop {
            match stream.message().await {
                Ok(Some(response)) => {
                    // etcd refuses a watch (an expired auth token, a compacted revision)
                    // with a response both created and canceled: the watch is then gone.
                    if response.canceled() {
                        tracing::warn!(reason = %response.cancel_reason(), "etcd cancelled the watch; watching again");
                        break;
                    }
                    if response.created() {
                        created += 1;
                        if created == 2 {
                            watches += 1;
                            epoch.store(watches, Ordering::Release);
                        }
                    }
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let change = if kv.key().starts_with(keys.as_bytes()) {
                            Changed::ApiKeys
                        } else {
                            Changed::SmtpSettings
                        };
                        let _ = changes.send(change);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "the etcd watch broke; watching again");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
