//! Password-reset and invitation tokens: issue, verify (never consumes: mail scanners
//! follow links), consume (exactly once, however many callers race), revoke, list, and the
//! sweeper that forgets tokens a week after they could last be used.
//!
//! Secrets are 256 random bits, URL-safe, prefixed `mrr_` (reset) or `mri_` (invitation),
//! returned once by [`TokenService::issue`] and stored only as SHA-256. Issue and consume
//! answer only once their write is durable.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::Address;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::crypto;
use crate::directory::UserStore;
use crate::directory::{canonical_login, member_of, NotInOrganisation, User};
use crate::metrics::Metrics;
use crate::notify::{
    EmailKind, EmailValue, EmailValues, NotifyError, NotifyService, OutgoingEmail,
};
use crate::ports::StoreError;
use crate::quota::Hourly;
use crate::settings::{
    human, SettingsError, SettingsService, DEFAULT_INVITATION, DEFAULT_RESET_PASSWORD,
};
use crate::validation::{self, Violations};

mod model;
mod port;

#[cfg(test)]
pub(crate) use model::sample;
pub use model::{Purpose, RateWindow, Token, TokenState, KEEP_ENDED};
pub use port::TokenStore;

/// The window of the issue rate limit.
pub const RATE_WINDOW: Duration = Duration::from_secs(3600);
/// Most metadata entries on a token.
const MAX_METADATA: usize = 32;

/// An issue request.
#[derive(Clone, Debug, Default)]
pub struct IssueRequest {
    /// `None` when unspecified or unknown.
    pub purpose: Option<Purpose>,
    /// Whose token.
    pub login: String,
    /// Where the email goes; the directory's address when empty.
    pub email: String,
    /// The login's organisation.
    pub organisation: String,
    /// Queue the built-in email.
    pub send_email: bool,
    /// Absolute http(s) URL containing `{token}`.
    pub link_template: String,
    /// Caller-defined values.
    pub metadata: BTreeMap<String, String>,
    /// The email's locale for a login the Directory does not hold (BCP 47; may be empty).
    pub locale: String,
}

/// A new token.
#[derive(Debug)]
pub struct Issued {
    /// The secret: only here, once.
    pub secret: SecretString,
    /// What is stored.
    pub token: Token,
    /// The queued email's message id.
    pub message_id: Option<String>,
}

/// Errors of the token service.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Bad fields.
    #[error("invalid request: {0}")]
    Invalid(Violations),
    /// Unknown token, or another purpose (or organisation).
    #[error("no such token")]
    NotFound,
    /// The token expired.
    #[error("the token expired")]
    Expired,
    /// The token was used.
    #[error("the token was already used")]
    Consumed,
    /// The token was revoked.
    #[error("the token was revoked")]
    Revoked,
    /// The login is a user of another organisation.
    #[error(transparent)]
    NotInOrganisation(#[from] NotInOrganisation),
    /// No address for the login.
    #[error("no email address for login {0:?}: give `email`, or add the user to the directory")]
    NoAddress(String),
    /// Too many issues for this login and purpose.
    #[error("too many tokens issued for this login; retry in {}", human(*.0))]
    RateLimited(Duration),
    /// The organisation was issued more tokens this hour than its quota.
    #[error(transparent)]
    OverQuota(#[from] crate::quota::OverQuota),
    /// The email could not be queued.
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<SettingsError> for TokenError {
    fn from(e: SettingsError) -> Self {
        TokenError::Notify(e.into())
    }
}

/// Issues and redeems tokens.
#[derive(Clone)]
pub struct TokenService {
    store: Arc<dyn TokenStore>,
    /// The users tokens are issued to.
    users: Arc<dyn UserStore>,
    settings: SettingsService,
    notify: NotifyService,
    clock: Clock,
    issue_limit: u32,
    /// Tokens issued per organisation and hour.
    org_issues: Arc<Hourly>,
    metrics: Metrics,
}

impl TokenService {
    /// Tokens in `store`, at most `issue_limit` issues per login and purpose an hour.
    pub fn new(
        store: Arc<dyn TokenStore>,
        users: Arc<dyn UserStore>,
        settings: SettingsService,
        notify: NotifyService,
        clock: Clock,
        issue_limit: u32,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            users,
            settings,
            notify,
            clock,
            issue_limit,
            org_issues: Arc::new(Hourly::new("tokens_per_hour", u64::MAX)),
            metrics,
        }
    }

    /// The same service, issuing each organisation at most `limit` tokens an hour (counted
    /// in this process: see [`Hourly`]): tokens are kept a week, and new logins (invitations)
    /// have no per-login allowance spent yet.
    pub fn with_org_limit(mut self, limit: u64) -> Self {
        self.org_issues = Arc::new(Hourly::new("tokens_per_hour", limit));
        self
    }

    /// Issues a token (revoking the login's earlier active ones of its purpose) and, with
    /// `send_email`, queues its email. `organisation` is the one acted for.
    pub async fn issue(&self, mut request: IssueRequest) -> Result<Issued, TokenError> {
        let (purpose, login, link) = check_issue(&request).map_err(TokenError::Invalid)?;
        request.login = login;
        let now = self.clock.now();
        let (address, name, locale) = self.address(&request).await?;
        let settings = self.settings.get().await?;
        if request.send_email && settings.is_none() {
            return Err(NotifyError::NotConfigured.into());
        }
        if let (Some(settings), Some(link)) = (&settings, &link) {
            settings.check_link(link)?;
        }
        let lifetime = match (&settings, purpose) {
            (Some(s), Purpose::PasswordReset) => s.reset_password_expiration,
            (Some(s), Purpose::Invitation) => s.invitation_expiration,
            (None, Purpose::PasswordReset) => DEFAULT_RESET_PASSWORD,
            (None, Purpose::Invitation) => DEFAULT_INVITATION,
        };
        // Counted once the request can succeed: a request refused for its address or for
        // missing settings issues nothing and uses none of the login's allowance.
        // Per organisation and login: no organisation spends another's allowance.
        let limit_key = format!(
            "{}\0{}\0{}",
            purpose.as_str(),
            request.organisation,
            request.login
        );
        if let Some(wait) = self
            .store
            .hit_rate_limit(&limit_key, now, RATE_WINDOW, self.issue_limit)
            .await?
        {
            self.metrics.rate_limited();
            return Err(TokenError::RateLimited(wait));
        }
        self.org_issues.spend(&request.organisation, now)?;
        let secret = crypto::random_secret(purpose.prefix());
        let token = Token {
            id: crypto::time_ordered_id("tok_", now),
            digest: crypto::digest(secret.expose_secret()),
            purpose,
            login: request.login.clone(),
            email: address.to_string(),
            organisation: request.organisation.clone(),
            state: TokenState::Active,
            create_time: now,
            expire_time: now + lifetime,
            consume_time: None,
            revoke_time: None,
            metadata: request.metadata.clone(),
            version: 0,
        };
        let email = match (&settings, link) {
            (Some(settings), Some(link)) => {
                let link = Zeroizing::new(link.replace("{token}", secret.expose_secret()));
                let kind = match purpose {
                    Purpose::PasswordReset => EmailKind::PasswordReset,
                    Purpose::Invitation => EmailKind::Invitation,
                };
                let values: EmailValues = [
                    (
                        "name",
                        EmailValue::from(
                            if name.is_empty() {
                                &request.login
                            } else {
                                &name
                            }
                            .as_str(),
                        ),
                    ),
                    ("login", request.login.as_str().into()),
                    ("organisation", request.organisation.as_str().into()),
                    ("link", link.as_str().into()),
                    ("validity", EmailValue::Length(lifetime)),
                    ("expires", EmailValue::Time(token.expire_time)),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                let rendered = self
                    .notify
                    .render_email(&request.organisation, kind, &locale, &values)
                    .await?;
                let outgoing = OutgoingEmail {
                    organisation: &request.organisation,
                    from: settings.from.mailbox(),
                    to: Mailbox::new((!name.is_empty()).then(|| name.clone()), address.clone()),
                    subject: &rendered.subject,
                    text: &rendered.text,
                    html: rendered.html.as_deref(),
                };
                Some(
                    outgoing
                        .seal(self.settings.master_key(), now)
                        .map_err(|e| {
                            TokenError::Invalid(validation::violation("email", e.to_string()))
                        })?,
                )
            }
            _ => None,
        };
        // Within the organisation's quotas before anything is written: a refused request
        // revokes and issues nothing.
        let email: Vec<_> = email.into_iter().collect();
        self.notify.charge(&email).await?;
        // The token is durable before its email is queued: an email never carries a
        // token that a crash could lose.
        let revoked = self.store.issue_token(&token, now).await?;
        let message_id = email.first().map(|m| m.id.clone());
        if !email.is_empty() {
            self.notify.queue_charged(email).await?;
        }
        tracing::info!(token = %token.id, purpose = %purpose, revoked, emailed = message_id.is_some(), "token issued");
        self.metrics.token("issued", purpose.as_str(), "");
        Ok(Issued {
            secret,
            token,
            message_id,
        })
    }

    /// Where the token's email goes, and the name it greets: the request's address, else
    /// the Directory's. A login of another organisation's Directory is refused, whatever
    /// the request's address.
    async fn address(
        &self,
        request: &IssueRequest,
    ) -> Result<(Address, String, String), TokenError> {
        let user = self.member(&request.login, &request.organisation).await?;
        let name = user.as_ref().map(|u| u.name.clone()).unwrap_or_default();
        // The Directory user's own locale, else the one the request gives.
        let locale = user
            .as_ref()
            .map(|u| u.locale.clone())
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| request.locale.clone());
        if !request.email.is_empty() {
            let address = Address::from_str(&request.email).map_err(|e| {
                TokenError::Invalid(validation::violation(
                    "email",
                    format!("is not an email address ({e})"),
                ))
            })?;
            // A user other organisations share gets its token at its Directory address
            // only: no one of them may send another's user's reset elsewhere (as none of
            // them may change that address).
            if let Some(user) = user.as_ref().filter(|u| u.organisations.len() > 1) {
                let at_directory = user
                    .address()
                    .is_some_and(|a| str::eq_ignore_ascii_case(a.as_ref(), address.as_ref()));
                if !at_directory {
                    return Err(TokenError::Invalid(validation::violation(
                        "email",
                        "must be the user's Directory address: the user belongs to other \
                         organisations too",
                    )));
                }
            }
            return Ok((address, name, locale));
        }
        match user.as_ref().and_then(|u| u.address()) {
            Some(address) => Ok((address, name, locale)),
            None => Err(TokenError::NoAddress(request.login.clone())),
        }
    }

    /// The Directory's user `login` when it belongs to `organisation`, `None` when no
    /// Directory holds it; refused when another organisation's does.
    async fn member(&self, login: &str, organisation: &str) -> Result<Option<User>, TokenError> {
        Ok(member_of(
            self.users.user(login).await?,
            login,
            organisation,
        )?)
    }

    /// What is known of a token; never consumes it.
    pub async fn verify(
        &self,
        secret: &str,
        purpose: Option<Purpose>,
        scope: Option<&str>,
    ) -> Result<Token, TokenError> {
        let found = self.find(secret, purpose, scope).await;
        self.counted(
            found.and_then(|t| usable(&t, self.clock.now()).map(|()| t)),
            purpose,
        )
    }

    /// Counts a rejection by its reason.
    fn counted(
        &self,
        result: Result<Token, TokenError>,
        purpose: Option<Purpose>,
    ) -> Result<Token, TokenError> {
        if let Err(e) = &result {
            let reason = match e {
                TokenError::NotFound => "not_found",
                TokenError::Expired => "expired",
                TokenError::Consumed => "consumed",
                TokenError::Revoked => "revoked",
                TokenError::Invalid(_) => "invalid",
                _ => return result,
            };
            let purpose = purpose.map_or("", Purpose::as_str);
            self.metrics.token("rejected", purpose, reason);
        }
        result
    }

    /// Consumes a token: exactly one caller succeeds, durably.
    pub async fn consume(
        &self,
        secret: &str,
        purpose: Option<Purpose>,
        scope: Option<&str>,
    ) -> Result<Token, TokenError> {
        loop {
            let now = self.clock.now();
            let found = self.find(secret, purpose, scope).await;
            let token = self.counted(found.and_then(|t| usable(&t, now).map(|()| t)), purpose)?;
            let mut consumed = token.clone();
            consumed.consume(now);
            if self.store.swap_token(token.version, &consumed).await? {
                tracing::info!(token = %consumed.id, purpose = %consumed.purpose, "token consumed");
                self.metrics
                    .token("consumed", consumed.purpose.as_str(), "");
                return Ok(consumed);
            }
        }
    }

    async fn find(
        &self,
        secret: &str,
        purpose: Option<Purpose>,
        scope: Option<&str>,
    ) -> Result<Token, TokenError> {
        let mut v = Violations::new();
        if secret.is_empty() {
            v.add("token", "is required");
        }
        let Some(purpose) = purpose else {
            v.add(
                "purpose",
                "is required: TOKEN_PURPOSE_PASSWORD_RESET or TOKEN_PURPOSE_INVITATION",
            );
            return Err(TokenError::Invalid(v));
        };
        v.into_result(()).map_err(TokenError::Invalid)?;
        if !secret.starts_with(purpose.prefix()) {
            return Err(TokenError::NotFound);
        }
        let token = self
            .store
            .token_by_digest(&crypto::digest(secret))
            .await?
            .filter(|t| t.purpose == purpose)
            .filter(|t| scope.is_none_or(|org| t.organisation == org))
            .ok_or(TokenError::NotFound)?;
        // A token never outlives the membership it was issued under: a login that has
        // since become (only) another organisation's user is refused.
        self.member(&token.login, &token.organisation).await?;
        Ok(token)
    }

    /// Revokes a login's active tokens (of `purpose` when given) in `organisation` (every
    /// organisation's when `None`: an admin key naming none). How many.
    pub async fn revoke(
        &self,
        login: &str,
        purpose: Option<Purpose>,
        organisation: Option<&str>,
    ) -> Result<u32, TokenError> {
        let login = &self.check_named(login, organisation).await?;
        let revoked = self
            .store
            .revoke_tokens(login, purpose, organisation, self.clock.now())
            .await?;
        tracing::info!(revoked, "tokens revoked");
        Ok(revoked)
    }

    /// A login's tokens (of `purpose` when given) in `organisation` (every organisation's
    /// when `None`) in id order after `after`.
    pub async fn list(
        &self,
        login: &str,
        purpose: Option<Purpose>,
        organisation: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Token>, TokenError> {
        let login = &self.check_named(login, organisation).await?;
        let mut tokens: Vec<Token> = self
            .store
            .tokens_of(login)
            .await?
            .into_iter()
            .filter(|t| purpose.is_none_or(|p| t.purpose == p))
            .filter(|t| organisation.is_none_or(|org| t.organisation == org))
            .filter(|t| after.is_none_or(|a| t.id.as_str() > a))
            .collect();
        tokens.sort_by(|a, b| a.id.cmp(&b.id));
        tokens.truncate(limit);
        Ok(tokens)
    }

    /// A login a request names, in canonical form, once checked not to be another
    /// organisation's user.
    async fn check_named(
        &self,
        login: &str,
        organisation: Option<&str>,
    ) -> Result<String, TokenError> {
        let login = canonical_login(login)
            .map_err(|why| TokenError::Invalid(validation::violation("login", why)))?;
        if let Some(organisation) = organisation {
            self.member(&login, organisation).await?;
        }
        Ok(login)
    }

    /// The state a token is in now.
    pub fn state(&self, token: &Token) -> TokenState {
        token.state_at(self.clock.now())
    }

    /// Forgets the tokens ended more than a week ago, and the rate-limit windows no issue
    /// fell in for an hour. How many tokens.
    pub async fn purge(&self) -> Result<u32, TokenError> {
        let now = self.clock.now();
        let mut total = 0;
        loop {
            let purged = self.store.purge_tokens(now, 1000).await?;
            total += purged;
            if purged < 1000 {
                break;
            }
        }
        let idle = now.checked_sub(RATE_WINDOW).unwrap_or(now);
        self.store.purge_rate_limits(idle).await?;
        Ok(total)
    }
}

/// Whether a token can be used at `now`, else why not.
fn usable(token: &Token, now: std::time::SystemTime) -> Result<(), TokenError> {
    match token.state_at(now) {
        TokenState::Active => Ok(()),
        TokenState::Expired => Err(TokenError::Expired),
        TokenState::Consumed => Err(TokenError::Consumed),
        TokenState::Revoked => Err(TokenError::Revoked),
    }
}

/// Checks an issue request: its purpose, and its link when an email is asked for.
/// Checks an issue request: its purpose, its login (in canonical form), and its link when
/// an email is asked for.
fn check_issue(r: &IssueRequest) -> Result<(Purpose, String, Option<String>), Violations> {
    let mut v = Violations::new();
    if r.purpose.is_none() {
        v.add(
            "purpose",
            "is required: TOKEN_PURPOSE_PASSWORD_RESET or TOKEN_PURPOSE_INVITATION",
        );
    }
    let login = v.check("login", canonical_login(&r.login));
    v.check(
        "organisation",
        validation::text(&r.organisation, true, crate::auth::ORGANISATION_MAX),
    );
    if !r.email.is_empty() {
        v.check(
            "email",
            Address::from_str(&r.email).map_err(|e| format!("is not an email address ({e})")),
        );
    }
    v.check("locale", crate::locale::tag(&r.locale));
    let link = if r.send_email {
        v.check("link_template", link_template(&r.link_template))
    } else {
        None
    };
    if r.metadata.len() > MAX_METADATA {
        v.add("metadata", format!("at most {MAX_METADATA} entries"));
    }
    for (key, value) in &r.metadata {
        v.check(
            &format!("metadata[{key}]"),
            validation::text(key, true, 64).and_then(|()| validation::text(value, false, 1024)),
        );
    }
    let purpose = r.purpose;
    v.into_result(())?;
    Ok((
        purpose.expect("checked above"),
        login.expect("checked above"),
        link,
    ))
}

/// Stands for the token while a link template is parsed: of the token's alphabet.
const TOKEN_STAND_IN: &str = "mailroom-token-stand-in";

/// Checks a link template (an absolute http(s) URL containing `{token}`) and returns it as
/// a URL parser reads it: that is what the email carries and what the origin check sees,
/// so that no text rides along below the genuine link and no mail client reads another
/// host than the check did. Spaces, control characters, non-ASCII and characters a
/// parser rewrites (`\` reads as `/`) are refused rather than rewritten.
fn link_template(template: &str) -> Result<String, String> {
    if template.is_empty() {
        return Err(
            "is required with send_email: an absolute http(s) URL containing {token}".into(),
        );
    }
    if !template.contains("{token}") {
        return Err("must contain {token}, where the token goes".into());
    }
    if let Some(c) = template
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '\\' | '"' | '<' | '>' | '`' | '^' | '|'))
    {
        return Err(format!(
            "must be a URL as it is sent, without {c:?}: spaces, control, non-ASCII and \
             unsafe characters are refused (percent-encode them)"
        ));
    }
    if template.contains(TOKEN_STAND_IN) {
        return Err(format!("must not contain {TOKEN_STAND_IN:?}"));
    }
    let url = url::Url::parse(&template.replace("{token}", TOKEN_STAND_IN))
        .map_err(|e| format!("is not an absolute URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err("must be an http or https URL with a host".into());
    }
    let read = url.as_str().replace(TOKEN_STAND_IN, "{token}");
    if !read.contains("{token}") {
        return Err("must hold {token} where a URL parser keeps it".into());
    }
    Ok(read)
}
