//! Cache invalidation: what this process keeps in memory (SMTP settings, API keys) is
//! forgotten when another replica changes it in the shared store.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::auth::Authenticator;
use crate::settings::SettingsService;
use crate::store::{Changed, Store};

/// Forgets what this process caches when another replica changes it, for as long as the
/// store reports changes (never, on a store of one process).
pub async fn follow_changes(store: Arc<dyn Store>, auth: Authenticator, settings: SettingsService) {
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
