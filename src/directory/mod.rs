//! The Directory: the platform's users, the recipients of EmailerToUser and of account
//! notices. Locked users get no notifications; a user without an email address is reached
//! at its login when the login is an address (TheHive 5.7).

use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use lettre::Address;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::store::{Store, StoreError};
use crate::validation::{self, Violations};

/// A user of the platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Unique login.
    pub login: String,
    /// Display name.
    pub name: String,
    /// Where notifications go; empty to use the login.
    pub email: String,
    /// Organisations the user belongs to.
    pub organisations: Vec<String>,
    /// Locked users get no notifications.
    pub locked: bool,
    /// When created.
    pub create_time: SystemTime,
    /// When last changed.
    pub update_time: SystemTime,
}

impl User {
    /// Where this user's email goes: the email, else the login when it is an address.
    pub fn address(&self) -> Option<Address> {
        let candidate = if self.email.is_empty() {
            &self.login
        } else {
            &self.email
        };
        Address::from_str(candidate).ok()
    }

    /// Whether the user belongs to `organisation`.
    pub fn belongs_to(&self, organisation: &str) -> bool {
        self.organisations.iter().any(|o| o == organisation)
    }
}

/// A user as a caller sends it.
#[derive(Clone, Debug, Default)]
pub struct UserDraft {
    /// See [`User::login`].
    pub login: String,
    /// See [`User::name`].
    pub name: String,
    /// See [`User::email`].
    pub email: String,
    /// See [`User::organisations`].
    pub organisations: Vec<String>,
    /// See [`User::locked`].
    pub locked: bool,
}

/// Errors of the directory.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// Bad fields.
    #[error("invalid user: {0}")]
    Invalid(Violations),
    /// No such user (for this caller).
    #[error("user {0:?} not found")]
    NotFound(String),
    /// The caller's organisation may not manage this user.
    #[error("{0}")]
    Forbidden(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A login that another organisation's Directory holds and the organisation acted for
/// does not: refused whatever else the request says (an address given with it included),
/// so that no key reaches, greets, rate-limits or revokes another organisation's users.
#[derive(Debug, thiserror::Error)]
#[error("login {login:?} is not a user of organisation {organisation:?}")]
pub struct NotInOrganisation {
    /// The login named.
    pub login: String,
    /// The organisation acted for.
    pub organisation: String,
}

/// The rule every request that names a login follows: `found` (the Directory's user of
/// that login, if any) must belong to `organisation`. A login in no Directory (an
/// invitation to a new user) passes as `None`.
pub fn member_of(
    found: Option<User>,
    login: &str,
    organisation: &str,
) -> Result<Option<User>, NotInOrganisation> {
    match found {
        Some(user) if !user.belongs_to(organisation) => Err(NotInOrganisation {
            login: login.to_string(),
            organisation: organisation.to_string(),
        }),
        found => Ok(found),
    }
}

/// Checks a login: 1 to 256 characters, no control characters.
pub fn check_login(login: &str) -> Result<(), String> {
    validation::text(login, true, 256)
}

/// Reads and changes users.
#[derive(Clone)]
pub struct DirectoryService {
    store: Arc<dyn Store>,
    clock: Clock,
}

impl DirectoryService {
    /// The directory in `store`.
    pub fn new(store: Arc<dyn Store>, clock: Clock) -> Self {
        Self { store, clock }
    }

    /// Checks a draft: one violation per bad field (prefixed `user.`).
    pub fn check(draft: &UserDraft) -> Result<(), Violations> {
        let mut v = Violations::new();
        v.check("user.login", check_login(&draft.login));
        v.check("user.name", validation::text(&draft.name, false, 256));
        if !draft.email.is_empty() {
            v.check(
                "user.email",
                validation::text(&draft.email, false, 320).and_then(|()| {
                    Address::from_str(&draft.email)
                        .map(drop)
                        .map_err(|e| format!("is not an email address ({e})"))
                }),
            );
        }
        if draft.organisations.is_empty() {
            v.add(
                "user.organisations",
                "at least one organisation is required",
            );
        }
        for (i, o) in draft.organisations.iter().enumerate() {
            v.check(
                &format!("user.organisations[{i}]"),
                validation::text(o, true, 100),
            );
        }
        v.into_result(())
    }

    /// Creates or replaces a user. A caller limited to organisation `scope` manages only
    /// users of that organisation alone.
    pub async fn upsert(
        &self,
        draft: UserDraft,
        scope: Option<&str>,
    ) -> Result<User, DirectoryError> {
        Self::check(&draft).map_err(DirectoryError::Invalid)?;
        let now = self.clock.now();
        let existing = self.store.user(&draft.login).await?;
        if let Some(org) = scope {
            let outside = draft.organisations.iter().any(|o| o != org)
                || existing.as_ref().is_some_and(|u| !managed_by(u, org));
            if outside {
                return Err(DirectoryError::Forbidden(format!(
                    "a key of organisation {org:?} manages only users of that organisation alone"
                )));
            }
        }
        let mut organisations = draft.organisations;
        organisations.sort();
        organisations.dedup();
        let user = User {
            create_time: existing.map_or(now, |u| u.create_time),
            update_time: now,
            login: draft.login,
            name: draft.name,
            email: draft.email,
            organisations,
            locked: draft.locked,
        };
        self.store.put_user(&user).await?;
        Ok(user)
    }

    /// One user; a caller limited to `scope` sees only its organisation's users.
    pub async fn get(&self, login: &str, scope: Option<&str>) -> Result<User, DirectoryError> {
        self.store
            .user(login)
            .await?
            .filter(|u| scope.is_none_or(|org| u.belongs_to(org)))
            .ok_or_else(|| DirectoryError::NotFound(login.to_string()))
    }

    /// Removes a user; the user as it was. A caller limited to `scope` removes only users
    /// of its organisation alone.
    pub async fn delete(&self, login: &str, scope: Option<&str>) -> Result<User, DirectoryError> {
        let user = self.get(login, scope).await?;
        if let Some(org) = scope {
            if !managed_by(&user, org) {
                return Err(DirectoryError::Forbidden(format!(
                    "user {login:?} also belongs to other organisations than {org:?}"
                )));
            }
        }
        self.store
            .delete_user(login)
            .await?
            .ok_or_else(|| DirectoryError::NotFound(login.to_string()))
    }

    /// Users of `organisation` in login order, after `after`.
    pub async fn list(
        &self,
        organisation: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, DirectoryError> {
        Ok(self.store.list_users(organisation, after, limit).await?)
    }
}

/// Whether `user` belongs to `organisation` alone.
fn managed_by(user: &User, organisation: &str) -> bool {
    user.organisations.iter().all(|o| o == organisation)
}
