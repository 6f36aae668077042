//! Callers: API keys, the three permissions, organisation scoping, and the check every
//! RPC starts with ([`Authenticator::authorize`]); managing keys (the ApiKeys service's use
//! cases and the bootstrap key) is in [`keys`].
//!
//! A caller sends `authorization: Bearer <secret>`. Secrets are `mrk_` and 256 random
//! bits, shown once, and stored only as SHA-256. A key belongs to one organisation; keys
//! of the `admin` organisation may act for any organisation, the others only for their own,
//! and only `admin` keys may hold `managePlatform`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::Span;

use crate::cache::Cache;
use crate::clock::Clock;
use crate::crypto;
use crate::ports::{After, Backend, Result as StoreResult, StoreError};
use crate::validation::Violations;

mod keys;
pub mod permissions;

pub use keys::NewKey;

/// The organisation whose keys may act for every organisation.
pub const ADMIN_ORGANISATION: &str = "admin";
/// The longest organisation name, in characters.
pub const ORGANISATION_MAX: usize = 100;
/// The name of the key created on first start.
pub const BOOTSTRAP_KEY_NAME: &str = "bootstrap-admin";
/// The file, in the data directory, that receives the bootstrap key's secret.
pub const BOOTSTRAP_KEY_FILE: &str = "admin.key";
const SECRET_PREFIX: &str = "mrk_";

/// What a key may do, by TheHive's permission names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    /// SMTP settings and API keys.
    #[serde(rename = "managePlatform")]
    ManagePlatform,
    /// Tokens, account notices, the directory.
    #[serde(rename = "manageUser")]
    ManageUser,
    /// Notifications and the outbox.
    #[serde(rename = "manageConfig")]
    ManageConfig,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 3] = [
        Permission::ManagePlatform,
        Permission::ManageUser,
        Permission::ManageConfig,
    ];

    /// TheHive's name of it.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ManagePlatform => "managePlatform",
            Permission::ManageUser => "manageUser",
            Permission::ManageConfig => "manageConfig",
        }
    }
}

impl FromStr for Permission {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown permission {s:?}: managePlatform, manageUser or manageConfig")
            })
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Records the caller on the RPC's span, both fields in one call: the JSON log format
/// re-encodes a span's fields on every record (a profile of `VerifyToken` showed two
/// separate records at 6.7 % of the server's time).
fn record_caller(span: &Span, key_id: &str, organisation: &str) {
    let Some(metadata) = span.metadata() else {
        return;
    };
    let fields = metadata.fields();
    if let (Some(key), Some(org)) = (fields.field("key_id"), fields.field("organisation")) {
        span.record_all(&fields.value_set(&[
            (&key, Some(&key_id as &dyn tracing::Value)),
            (&org, Some(&organisation as &dyn tracing::Value)),
        ]));
    }
}

/// An API key as stored: everything but the secret, which is kept as its digest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiKey {
    /// Identifier (`key_…`), not secret.
    pub id: String,
    /// A name for humans.
    pub name: String,
    /// The organisation it acts for.
    pub organisation: String,
    /// What it may do.
    pub permissions: Vec<Permission>,
    /// When it was created.
    pub create_time: SystemTime,
    /// Whether it was revoked.
    pub revoked: bool,
    /// SHA-256 of the secret, hex.
    pub secret_digest: String,
}

/// Errors of authentication and authorisation.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No bearer key, or one that is unknown or revoked.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The key lacks a permission, or acts for another organisation.
    #[error("{0}")]
    PermissionDenied(String),
    /// Bad input to a key operation.
    #[error("invalid request: {0}")]
    Invalid(Violations),
    /// No such key.
    #[error("API key {0:?} not found")]
    NotFound(String),
    /// The operation would lock the caller out.
    #[error("{0}")]
    FailedPrecondition(&'static str),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who is calling: the key that authenticated the request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The key's id.
    pub key_id: String,
    /// The key's name.
    pub key_name: String,
    /// The key's organisation.
    pub organisation: String,
}

impl Caller {
    /// Whether the key belongs to the admin organisation.
    pub fn is_admin(&self) -> bool {
        self.organisation == ADMIN_ORGANISATION
    }

    /// The organisation this caller is limited to: `None` for admin keys, which see all.
    pub fn scope(&self) -> Option<&str> {
        (!self.is_admin()).then_some(self.organisation.as_str())
    }

    /// The organisation a request that may span organisations acts for: the one named
    /// (see [`Caller::act_for`]), else the key's own, except that an admin key naming none
    /// acts for every organisation (`None`).
    pub fn act_for_named<'a>(
        &'a self,
        organisation: &'a str,
    ) -> Result<Option<&'a str>, AuthError> {
        if organisation.is_empty() && self.is_admin() {
            return Ok(None);
        }
        self.act_for(organisation).map(Some)
    }

    /// The organisation a request acts for: the one named, which the key must be allowed
    /// to act for, or the key's own when none is named.
    pub fn act_for<'a>(&'a self, organisation: &'a str) -> Result<&'a str, AuthError> {
        let target = if organisation.is_empty() {
            self.organisation.as_str()
        } else {
            organisation
        };
        if target != self.organisation && !self.is_admin() {
            return Err(AuthError::PermissionDenied(format!(
                "this key belongs to organisation {:?} and cannot act for {target:?}",
                self.organisation
            )));
        }
        if target != self.organisation {
            // Only an admin key gets here: the name is checked as a key's organisation is
            // when created (a NUL in it would make a store key that reads as another's).
            crate::validation::text(target, true, ORGANISATION_MAX)
                .map_err(|e| AuthError::Invalid(crate::validation::violation("organisation", e)))?;
            // The key's own organisation is on the span already (`authorize`); the JSON log
            // format re-encodes every field of a span at each record.
            Span::current().record("organisation", target);
        }
        Ok(target)
    }
}

/// The API keys of the store (`store::sled`, `store::etcd`). Each method is atomic and
/// each write durable. Keys are cached in memory, so the port extends [`Backend`] for its
/// watch epoch: a key another replica revoked is never served from the cache.
#[async_trait]
pub trait ApiKeyStore: Backend {
    /// Adds an API key. With `only_if_first`, adds it only to a store that never held a key
    /// (the bootstrap key: several replicas may race to create it) and says whether it did.
    async fn insert_api_key(&self, key: &ApiKey, only_if_first: bool) -> StoreResult<bool>;

    /// The key whose secret has this SHA-256 digest (hex).
    async fn api_key_by_digest(&self, digest: &str) -> StoreResult<Option<ApiKey>>;

    /// Keys in id order, after `after`, at most `limit`.
    async fn list_api_keys(&self, after: After<'_>, limit: usize) -> StoreResult<Vec<ApiKey>>;

    /// Marks a key revoked if it belongs to `organisation` (any, for `None`); the key as it
    /// now is, `None` when unknown or another organisation's.
    async fn revoke_api_key(
        &self,
        id: &str,
        organisation: Option<&str>,
    ) -> StoreResult<Option<ApiKey>>;
}

/// The key the gate found on a request (`api::gate`), carried in its extensions so that the
/// key is looked up once per call.
#[derive(Clone)]
pub struct Authenticated(pub Arc<ApiKey>);

/// Checks callers' keys and manages keys. Keys that authenticated are kept in memory by
/// digest (every RPC checks one); revoking a key through this process forgets it at once.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn ApiKeyStore>,
    clock: Clock,
    /// Keys by digest, served only in the watch epoch they were read in.
    known: Arc<Cache<String, Arc<ApiKey>>>,
}

impl Authenticator {
    /// An authenticator over the keys in `store`.
    pub fn new(store: Arc<dyn ApiKeyStore>, clock: Clock) -> Self {
        Self {
            store,
            clock,
            known: Arc::default(),
        }
    }

    /// The live key whose secret has `digest`. A key is served from memory only while the
    /// store can tell this process of its revocation by another (the same watch epoch).
    async fn key(&self, digest: &str) -> Result<Option<Arc<ApiKey>>, AuthError> {
        let epoch = self.store.watch_epoch();
        if let Some(key) = self.known.get(digest, epoch) {
            return Ok(Some(key));
        }
        let generation = self.known.generation();
        let Some(key) = self
            .store
            .api_key_by_digest(digest)
            .await?
            .filter(|k| !k.revoked)
        else {
            return Ok(None);
        };
        let key = Arc::new(key);
        self.known
            .keep(digest.to_string(), key.clone(), generation, epoch);
        Ok(Some(key))
    }

    /// The live key whose secret a caller presented: the check made before a request's
    /// message is read (`api::gate`, which reads the secret from the `authorization`
    /// header), so that no caller without a key gets a request of megabytes decoded.
    pub async fn authenticate(&self, secret: &str) -> Result<Arc<ApiKey>, AuthError> {
        self.key(&crypto::digest(secret))
            .await?
            .ok_or(AuthError::Unauthenticated("unknown or revoked API key"))
    }

    /// Forgets the keys held in memory: another replica changed them.
    pub fn forget(&self) {
        self.known.forget();
    }
}

/// The caller of a request: its key (found by the gate, [`Authenticated`]), which must
/// hold the permission its method needs ([`permissions::REQUIRED`], found by the gate from
/// the call's path, [`permissions::Needed`]). Fails closed: a request without either did
/// not pass the gate. Records the key id and its organisation on the RPC's span.
/// [`require`] then checks a permission a call needs by what it asks (a Templates call's
/// scope).
pub fn authorize(
    key: Option<&Authenticated>,
    needed: Option<&permissions::Needed>,
) -> Result<Caller, AuthError> {
    let Some(Authenticated(key)) = key else {
        return Err(AuthError::Unauthenticated(
            "missing `authorization: Bearer <API key>` metadata",
        ));
    };
    record_caller(&Span::current(), &key.id, &key.organisation);
    let Some(needed) = needed else {
        return Err(AuthError::PermissionDenied(
            "no permission is defined for this method".into(),
        ));
    };
    if !needed.met_by(&key.permissions) {
        return Err(AuthError::PermissionDenied(format!(
            "this key lacks the {needed} permission"
        )));
    }
    Ok(Caller {
        key_id: key.id.clone(),
        key_name: key.name.clone(),
        organisation: key.organisation.clone(),
    })
}

/// Whether the key of an authorized call also holds `permission`: for a call whose needs
/// depend on what it asks.
pub fn require(key: Option<&Authenticated>, permission: Permission) -> Result<(), AuthError> {
    match key {
        Some(Authenticated(key)) if key.permissions.contains(&permission) => Ok(()),
        _ => Err(AuthError::PermissionDenied(format!(
            "this key lacks the {permission} permission"
        ))),
    }
}
