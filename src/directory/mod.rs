//! The Directory: the platform's users, the recipients of EmailerToUser and of account
//! notices. Locked users get no notifications; a user without an email address is reached
//! at its login when the login is an address (TheHive 5.7).

use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use lettre::Address;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::ports::{After, Result as StoreResult, StoreError};
use crate::quota::Hourly;
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
    /// The user's locale, a BCP 47 tag in canonical case (`fr`, `fr-CA`); empty for the
    /// organisation's default. Chooses the language of the built-in emails.
    #[serde(default)]
    pub locale: String,
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

    /// The user as a caller limited to `scope` sees it: of its organisations, only that one.
    pub fn seen_by(mut self, scope: Option<&str>) -> Self {
        if let Some(org) = scope {
            self.organisations.retain(|o| o == org);
        }
        self
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
    /// See [`User::locale`].
    pub locale: String,
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
    /// The organisation changed more users this hour than its quota.
    #[error(transparent)]
    OverQuota(#[from] crate::quota::OverQuota),
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

/// A login in the one form it is stored and compared in: NFKC, lower case. Refused with
/// whitespace or an invisible character anywhere, so that `BOB@x`, ` bob@x` or `bob@x`
/// with a zero-width space are never a login other than `bob@x` that the Directory would
/// not know (and that another organisation could then claim): the platform compares logins
/// case-insensitively.
pub fn canonical_login(login: &str) -> Result<String, String> {
    use unicode_normalization::UnicodeNormalization;
    validation::text(login, true, 256)?;
    if login.chars().any(|c| c.is_whitespace() || invisible(c)) {
        return Err("must not contain spaces or invisible characters".into());
    }
    Ok(login.nfkc().flat_map(char::to_lowercase).collect())
}

/// Unicode's default-ignorable format characters: they print as nothing.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}'
        | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}'
        | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// The users of the store (`store::sled`, `store::etcd`). Each method is atomic and each
/// write durable.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates or replaces a user (and its organisation memberships).
    async fn put_user(&self, user: &User) -> StoreResult<()>;

    /// One user.
    async fn user(&self, login: &str) -> StoreResult<Option<User>>;

    /// Removes a user; the user as it was, `None` when unknown.
    async fn delete_user(&self, login: &str) -> StoreResult<Option<User>>;

    /// Users of an organisation in login order, after `after`, at most `limit`.
    async fn list_users(
        &self,
        organisation: &str,
        after: After<'_>,
        limit: usize,
    ) -> StoreResult<Vec<User>>;
}

/// What ends with a membership: the tokens issued under it. Any `tokens::TokenStore` is
/// one (the directory does not know tokens; tokens know the directory).
#[async_trait]
pub trait MembershipTokens: Send + Sync {
    /// Revokes the tokens of `login` active at `now` issued for organisations not in
    /// `kept`, each organisation's in one atomic, durable write. How many.
    async fn revoke_tokens_outside(
        &self,
        login: &str,
        kept: &[String],
        now: SystemTime,
    ) -> StoreResult<u32>;
}

/// Most organisations one user belongs to.
pub const MAX_ORGANISATIONS: usize = 100;

/// Reads and changes users.
#[derive(Clone)]
pub struct DirectoryService {
    store: Arc<dyn UserStore>,
    /// The tokens of the memberships that end.
    tokens: Arc<dyn MembershipTokens>,
    clock: Clock,
    /// Users created or replaced per organisation and hour, by keys of that organisation.
    changes: Arc<Hourly>,
}

impl DirectoryService {
    /// The directory of the users in `store`, revoking in `tokens` what a membership that
    /// ends leaves.
    pub fn new(store: Arc<dyn UserStore>, tokens: Arc<dyn MembershipTokens>, clock: Clock) -> Self {
        Self {
            store,
            tokens,
            clock,
            changes: Arc::new(Hourly::new("user_changes_per_hour", u64::MAX)),
        }
    }

    /// The same directory, letting the keys of one organisation create or replace at most
    /// `limit` users an hour (counted in this process: see [`Hourly`]); admin keys, the
    /// platform's own, are not held to it.
    pub fn with_org_limit(mut self, limit: u64) -> Self {
        self.changes = Arc::new(Hourly::new("user_changes_per_hour", limit));
        self
    }

    /// Checks a draft: one violation per bad field (prefixed `user.`).
    pub fn check(draft: &UserDraft) -> Result<(), Violations> {
        let mut v = Violations::new();
        v.check("user.login", canonical_login(&draft.login));
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
        v.check("user.locale", crate::locale::tag(&draft.locale));
        if draft.organisations.is_empty() {
            v.add(
                "user.organisations",
                "at least one organisation is required",
            );
        }
        if draft.organisations.len() > MAX_ORGANISATIONS {
            // Each is an index entry written with the user and read with it: 4 MiB of names
            // made half a million of them, and took the process past 5 GiB.
            v.add(
                "user.organisations",
                format!("at most {MAX_ORGANISATIONS} organisations"),
            );
            return Err(v);
        }
        for (i, o) in draft.organisations.iter().enumerate() {
            v.check(
                &format!("user.organisations[{i}]"),
                validation::text(o, true, crate::auth::ORGANISATION_MAX),
            );
        }
        v.into_result(())
    }

    /// Creates or replaces a user. A caller limited to organisation `scope` manages only
    /// users of that organisation alone. The login's tokens of organisations it no longer
    /// belongs to are revoked.
    pub async fn upsert(
        &self,
        mut draft: UserDraft,
        scope: Option<&str>,
    ) -> Result<User, DirectoryError> {
        Self::check(&draft).map_err(DirectoryError::Invalid)?;
        draft.login = canonical_login(&draft.login)
            .map_err(|why| DirectoryError::Invalid(validation::violation("user.login", why)))?;
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
            self.changes.spend(org, now)?;
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
            locale: crate::locale::tag(&draft.locale).unwrap_or_default(),
        };
        self.store.put_user(&user).await?;
        self.revoke_outside(&user.login, &user.organisations)
            .await?;
        Ok(user)
    }

    /// Revokes the active tokens of `login` issued for organisations not in `kept`: a
    /// token never outlives the membership it was issued under.
    async fn revoke_outside(&self, login: &str, kept: &[String]) -> Result<(), DirectoryError> {
        self.tokens
            .revoke_tokens_outside(login, kept, self.clock.now())
            .await?;
        Ok(())
    }

    /// One user; a caller limited to `scope` sees only its organisation's users, and of
    /// their organisations only its own.
    pub async fn get(&self, login: &str, scope: Option<&str>) -> Result<User, DirectoryError> {
        let login = canonical_login(login).map_err(|_| DirectoryError::NotFound(login.into()))?;
        self.store
            .user(&login)
            .await?
            .filter(|u| scope.is_none_or(|org| u.belongs_to(org)))
            .map(|u| u.seen_by(scope))
            .ok_or(DirectoryError::NotFound(login))
    }

    /// Removes a user; the user as it was. A caller limited to `scope` removes only users
    /// of its organisation alone.
    pub async fn delete(&self, login: &str, scope: Option<&str>) -> Result<User, DirectoryError> {
        let login = &canonical_login(login).map_err(|_| DirectoryError::NotFound(login.into()))?;
        let user = self
            .store
            .user(login)
            .await?
            .filter(|u| scope.is_none_or(|org| u.belongs_to(org)))
            .ok_or_else(|| DirectoryError::NotFound(login.clone()))?;
        if let Some(org) = scope {
            if !managed_by(&user, org) {
                return Err(DirectoryError::Forbidden(format!(
                    "user {login:?} also belongs to other organisations than {org:?}"
                )));
            }
        }
        let deleted = self
            .store
            .delete_user(login)
            .await?
            .ok_or_else(|| DirectoryError::NotFound(login.to_string()))?;
        self.revoke_outside(login, &[]).await?;
        Ok(deleted)
    }

    /// Users of `organisation` in login order, after `after`, as a caller limited to
    /// `scope` sees them.
    pub async fn list(
        &self,
        organisation: &str,
        scope: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, DirectoryError> {
        let users = self.store.list_users(organisation, after, limit).await?;
        Ok(users.into_iter().map(|u| u.seen_by(scope)).collect())
    }
}

/// Whether `user` belongs to `organisation` alone.
fn managed_by(user: &User, organisation: &str) -> bool {
    user.organisations.iter().all(|o| o == organisation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_belongs_to_at_most_max_organisations() {
        let draft = |count: usize| UserDraft {
            login: "alice".into(),
            name: String::new(),
            email: String::new(),
            organisations: (0..count).map(|i| format!("org{i}")).collect(),
            locked: false,
            locale: String::new(),
        };
        assert!(DirectoryService::check(&draft(MAX_ORGANISATIONS)).is_ok());
        let refused = DirectoryService::check(&draft(500_000)).expect_err("too many");
        let fields: Vec<_> = refused.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["user.organisations"]);
    }
}
