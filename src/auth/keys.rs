//! Managing API keys: the ApiKeys service's use cases (create, list, revoke) and the
//! bootstrap key written at first start.

use std::path::Path;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::{
    ApiKey, AuthError, Authenticator, Caller, Permission, ADMIN_ORGANISATION, BOOTSTRAP_KEY_FILE,
    BOOTSTRAP_KEY_NAME, SECRET_PREFIX,
};
use crate::crypto;
use crate::validation::{self, Violations};

/// A new key and its secret, shown once.
#[derive(Debug)]
pub struct NewKey {
    /// The key.
    pub key: ApiKey,
    /// The secret (`mrk_…`).
    pub secret: SecretString,
}

impl Authenticator {
    /// Creates a key for `organisation` with `permissions`.
    pub async fn create(
        &self,
        name: &str,
        organisation: &str,
        permissions: &[String],
    ) -> Result<NewKey, AuthError> {
        let mut v = Violations::new();
        v.check("name", validation::text(name, true, 100));
        v.check(
            "organisation",
            validation::text(organisation, true, super::ORGANISATION_MAX),
        );
        let mut granted = Vec::new();
        if permissions.is_empty() {
            v.add("permissions", "at least one permission is required");
        }
        for (i, p) in permissions.iter().enumerate() {
            if let Some(p) = v.check(&format!("permissions[{i}]"), Permission::from_str(p)) {
                if p == Permission::ManagePlatform && organisation != ADMIN_ORGANISATION {
                    v.add(
                        format!("permissions[{i}]"),
                        "managePlatform can only be granted to keys of the admin organisation",
                    );
                }
                granted.push(p);
            }
        }
        v.into_result(()).map_err(AuthError::Invalid)?;
        granted.sort();
        granted.dedup();
        let new = self.new_key(name, organisation, granted);
        self.store.insert_api_key(&new.key, false).await?;
        Ok(new)
    }

    fn new_key(&self, name: &str, organisation: &str, permissions: Vec<Permission>) -> NewKey {
        let secret = crypto::random_secret(SECRET_PREFIX);
        NewKey {
            key: ApiKey {
                id: crypto::random_id("key_"),
                name: name.to_string(),
                organisation: organisation.to_string(),
                permissions,
                create_time: self.clock.now(),
                revoked: false,
                secret_digest: crypto::digest(secret.expose_secret()),
            },
            secret,
        }
    }

    /// Keys in id order after `after`.
    pub async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<ApiKey>, AuthError> {
        Ok(self.store.list_api_keys(after, limit).await?)
    }

    /// Revokes key `id`; a caller cannot revoke the key it calls with, and one outside the
    /// admin organisation only its own organisation's keys (another's is not found).
    pub async fn revoke(&self, caller: &Caller, id: &str) -> Result<ApiKey, AuthError> {
        if id.is_empty() {
            return Err(AuthError::Invalid(validation::violation(
                "id",
                "is required",
            )));
        }
        if id == caller.key_id {
            return Err(AuthError::FailedPrecondition(
                "a key cannot revoke itself: revoke it with another managePlatform key",
            ));
        }
        let key = self
            .store
            .revoke_api_key(id, caller.scope())
            .await?
            .ok_or_else(|| AuthError::NotFound(id.to_string()))?;
        self.known.remove(&key.secret_digest);
        Ok(key)
    }

    /// On a store that never held a key, creates `bootstrap-admin` (admin organisation,
    /// every permission) and writes its secret to `<data_dir>/admin.key`, mode 0600.
    /// Returns the file's path when it did. An `admin.key` left open to group or others
    /// is refused.
    pub async fn bootstrap(&self, data_dir: &Path) -> anyhow::Result<Option<std::path::PathBuf>> {
        crypto::check_private_file(&data_dir.join(BOOTSTRAP_KEY_FILE))?;
        let new = self.new_key(
            BOOTSTRAP_KEY_NAME,
            ADMIN_ORGANISATION,
            Permission::ALL.to_vec(),
        );
        let path = data_dir.join(BOOTSTRAP_KEY_FILE);
        let staged = data_dir.join(format!("{BOOTSTRAP_KEY_FILE}.new"));
        let _ = std::fs::remove_file(&staged);
        // The secret reaches the disk before the key exists, so a crash in between never
        // leaves a key nobody can use.
        let line = Zeroizing::new(format!("{}\n", new.secret.expose_secret()));
        crypto::write_private_file(&staged, line.as_bytes())?;
        if self.store.insert_api_key(&new.key, true).await? {
            crypto::rename_durably(&staged, &path)?;
            Ok(Some(path))
        } else {
            std::fs::remove_file(&staged)?;
            Ok(None)
        }
    }
}
