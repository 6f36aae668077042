//! The master key and the store: the check that the key opens the store's secrets at
//! start, and `mailroom rotate-master-key`.

use std::sync::Arc;

use super::store::open_store;
use crate::config::Args;
use crate::crypto::{MasterKey, KEY_CHECK_PURPOSE};
use crate::metrics::Metrics;
use crate::notify::{MailQueued, NotifyService};
use crate::settings::SettingsService;
use crate::store::Store;

/// The master key of `store`, proved to open its secrets: the key file, made now only for a
/// store that never sealed anything. For a store that did, a new key would open none of its
/// secrets and be left behind as a stray key file: the start stops before making one.
pub(super) async fn master_key_for(store: &dyn Store, args: &Args) -> anyhow::Result<MasterKey> {
    let path = args.master_key_path();
    if !path.exists() && store.key_check().await?.is_some() {
        anyhow::bail!(
            "no master key at {}, and this store's secrets are sealed under one: copy the key \
             file the store was started with here, or name it with --master-key-file (a new \
             key would open none of them)",
            path.display()
        );
    }
    let key = MasterKey::load_or_create(&path)?;
    check_master_key(store, &key, args).await?;
    Ok(key)
}

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
    let old = master_key_for(store.as_ref(), args).await?;
    // The old keys stay in the file until every value is re-sealed: a crash midway leaves
    // a keyring that still opens everything.
    let keyring = Arc::new(old.rotated(&path)?);
    let settings = SettingsService::new(store.clone(), keyring.clone(), args.clock.clone());
    let notify = NotifyService::new(
        store.clone(),
        store.clone(),
        settings.clone(),
        args.clock.clone(),
        Arc::new(MailQueued::new()),
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
