//! A token as stored: its purpose, its owner, its life (active until it expires, is
//! consumed once, or is revoked), and the digest of its secret — never the secret.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// How long an ended token is kept, so that using it again answers why it cannot be used.
pub const KEEP_ENDED: Duration = Duration::from_secs(7 * 86_400);

/// What a token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Purpose {
    /// Resetting a password (`mrr_…`).
    PasswordReset,
    /// Accepting an invitation (`mri_…`).
    Invitation,
}

impl Purpose {
    /// Every purpose.
    pub const ALL: [Purpose; 2] = [Purpose::PasswordReset, Purpose::Invitation];

    /// The prefix of its secrets.
    pub fn prefix(self) -> &'static str {
        match self {
            Purpose::PasswordReset => "mrr_",
            Purpose::Invitation => "mri_",
        }
    }

    /// A short name for keys and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::PasswordReset => "password_reset",
            Purpose::Invitation => "invitation",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The life of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenState {
    /// Usable.
    Active,
    /// Used once.
    Consumed,
    /// Past its expiry.
    Expired,
    /// Revoked by a newer token or on request.
    Revoked,
}

/// A stored token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Identifier (`tok_…`), not secret.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub digest: String,
    /// What it is for.
    pub purpose: Purpose,
    /// Whose it is.
    pub login: String,
    /// Where its email went.
    pub email: String,
    /// The login's organisation.
    pub organisation: String,
    /// Consumed or revoked (expiry is read from the time).
    pub state: TokenState,
    /// When issued.
    pub create_time: SystemTime,
    /// When it expires.
    pub expire_time: SystemTime,
    /// When consumed.
    pub consume_time: Option<SystemTime>,
    /// When revoked.
    pub revoke_time: Option<SystemTime>,
    /// Caller-defined values.
    pub metadata: BTreeMap<String, String>,
    /// Incremented by every change (compare-and-swap).
    pub version: u64,
}

impl Token {
    /// Its state at `now`: an active token past its expiry is expired.
    pub fn state_at(&self, now: SystemTime) -> TokenState {
        match self.state {
            TokenState::Active if now >= self.expire_time => TokenState::Expired,
            state => state,
        }
    }

    /// Marks it revoked at `now`, if it is still active then. Whether it was.
    pub fn revoke(&mut self, now: SystemTime) -> bool {
        if self.state_at(now) != TokenState::Active {
            return false;
        }
        self.state = TokenState::Revoked;
        self.revoke_time = Some(now);
        self.version += 1;
        true
    }

    /// Marks it consumed at `now`, if it is still active then. Whether it was.
    pub fn consume(&mut self, now: SystemTime) -> bool {
        if self.state_at(now) != TokenState::Active {
            return false;
        }
        self.state = TokenState::Consumed;
        self.consume_time = Some(now);
        self.version += 1;
        true
    }

    /// When it may be forgotten: a week after it could last have been used.
    pub fn purge_time(&self) -> SystemTime {
        self.expire_time + KEEP_ENDED
    }
}

/// The recent issues of one login and purpose, for the issue rate limit.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RateWindow {
    /// When the recent issues happened, oldest first.
    pub hits: Vec<SystemTime>,
}

impl RateWindow {
    /// Counts an issue at `now` unless `limit` issues already happened within `window`;
    /// otherwise how long until one is allowed again.
    pub fn hit(&mut self, now: SystemTime, window: Duration, limit: u32) -> Result<(), Duration> {
        self.hits
            .retain(|t| now.duration_since(*t).map_or(true, |age| age < window));
        if self.hits.len() >= limit as usize {
            let oldest = self.hits[0];
            let free = oldest + window;
            return Err(free
                .duration_since(now)
                .unwrap_or_default()
                .max(Duration::from_secs(1)));
        }
        self.hits.push(now);
        Ok(())
    }
}

/// An active password-reset token of `login` for organisation acme, issued at `now` for
/// ten minutes, for unit tests.
#[cfg(test)]
pub(crate) fn sample(id: &str, digest: &str, login: &str, now: SystemTime) -> Token {
    Token {
        id: id.into(),
        digest: digest.into(),
        purpose: Purpose::PasswordReset,
        login: login.into(),
        email: format!("{login}@example.com"),
        organisation: "acme".into(),
        state: TokenState::Active,
        create_time: now,
        expire_time: now + std::time::Duration::from_secs(600),
        consume_time: None,
        revoke_time: None,
        metadata: BTreeMap::new(),
        version: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_window_allows_limit_per_window() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        let mut w = RateWindow::default();
        for i in 0..5 {
            assert!(w.hit(start + Duration::from_secs(i * 60), hour, 5).is_ok());
        }
        let wait = w
            .hit(start + Duration::from_secs(600), hour, 5)
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(3000));
        assert!(
            w.hit(start + hour, hour, 5).is_ok(),
            "the oldest left the window"
        );
    }

    #[test]
    fn tokens_end_once() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut t = sample("tok_1", "", "a", now);
        assert_eq!(
            t.state_at(now + Duration::from_secs(600)),
            TokenState::Expired
        );
        assert!(t.consume(now));
        assert!(!t.consume(now));
        assert!(!t.revoke(now));
        assert_eq!(
            t.state_at(now + Duration::from_secs(9999)),
            TokenState::Consumed
        );
    }
}
