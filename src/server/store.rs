//! Opening the store the flags name, and the data directory it lives in.

use std::sync::Arc;

use anyhow::Context;

use crate::config::{Args, StoreKind};
use crate::store::sled::SledStore;
use crate::store::Store;

/// The store `--store` names: sled in `--data-dir`, or etcd at `--etcd-endpoints`.
pub(super) async fn open_store(args: &Args) -> anyhow::Result<Arc<dyn Store>> {
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

/// Creates the data directory, readable by its owner only.
pub(super) fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
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
