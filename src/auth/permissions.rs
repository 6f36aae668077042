//! The permission every RPC needs, in one table: the gate refuses a key without it before
//! the request is read and leaves it on the request ([`Needed`]), where
//! [`super::Authenticator::authorize`] checks it again. docs/API.md's "Permissions" table (the design's) is
//! checked against this one by a test (`tests/auth.rs`).

use super::Permission;
use Permission::{ManageConfig, ManagePlatform, ManageUser};

/// `(service, method)` of the contract (`mailroom.v1`) and the permissions that let a key
/// call it: one of them (a Templates call then needs the one of its scope: an
/// organisation's templates manageConfig, the platform's managePlatform; checked by
/// `api::templates`).
pub const REQUIRED: &[(&str, &str, &[Permission])] = &[
    ("SmtpAdmin", "GetSmtpSettings", &[ManagePlatform]),
    ("SmtpAdmin", "UpdateSmtpSettings", &[ManagePlatform]),
    ("SmtpAdmin", "TestSmtpSettings", &[ManagePlatform]),
    ("Token", "IssueToken", &[ManageUser]),
    ("Token", "VerifyToken", &[ManageUser]),
    ("Token", "ConsumeToken", &[ManageUser]),
    ("Token", "RevokeTokens", &[ManageUser]),
    ("Token", "ListTokens", &[ManageUser]),
    ("Notifier", "SendToAddresses", &[ManageConfig]),
    ("Notifier", "SendToUsers", &[ManageConfig]),
    ("Notifier", "SendAccountNotice", &[ManageUser]),
    ("Notifier", "GetMessage", &[ManageConfig]),
    ("Notifier", "ListMessages", &[ManageConfig]),
    ("Notifier", "RetryMessage", &[ManageConfig]),
    ("Notifier", "CancelMessage", &[ManageConfig]),
    ("Directory", "UpsertUser", &[ManageUser]),
    ("Directory", "GetUser", &[ManageUser]),
    ("Directory", "DeleteUser", &[ManageUser]),
    ("Directory", "ListUsers", &[ManageUser]),
    ("ApiKeys", "CreateApiKey", &[ManagePlatform]),
    ("ApiKeys", "ListApiKeys", &[ManagePlatform]),
    ("ApiKeys", "RevokeApiKey", &[ManagePlatform]),
    (
        "Templates",
        "ListEmailTemplates",
        &[ManageConfig, ManagePlatform],
    ),
    (
        "Templates",
        "GetEmailTemplate",
        &[ManageConfig, ManagePlatform],
    ),
    (
        "Templates",
        "UpdateEmailTemplate",
        &[ManageConfig, ManagePlatform],
    ),
    (
        "Templates",
        "ResetEmailTemplate",
        &[ManageConfig, ManagePlatform],
    ),
    ("Templates", "PreviewEmail", &[ManageConfig, ManagePlatform]),
    ("Templates", "GetLocaleSettings", &[ManageConfig]),
    ("Templates", "UpdateLocaleSettings", &[ManageConfig]),
];

/// The permission a call's method needs, as the gate found it in [`REQUIRED`] by the call's
/// path: left on the request for [`super::Authenticator::authorize`].
#[derive(Clone, Copy, Debug)]
pub struct Needed(pub &'static [Permission]);

impl Needed {
    /// Whether a key holding `held` may call the method.
    pub fn met_by(&self, held: &[Permission]) -> bool {
        self.0.iter().any(|p| held.contains(p))
    }
}

impl std::fmt::Display for Needed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|p| p.as_str()).collect();
        f.write_str(&names.join(" or "))
    }
}

/// The package every service of [`REQUIRED`] is in.
const PACKAGE: &str = "mailroom.v1";

/// The permissions that let a key call the method, by service (`mailroom.v1.Token`) and
/// method (`IssueToken`); `None` for a method outside the contract.
pub fn required(service: &str, method: &str) -> Option<Needed> {
    let service = service.strip_prefix(PACKAGE)?.strip_prefix('.')?;
    REQUIRED
        .iter()
        .find(|(s, m, _)| *s == service && *m == method)
        .map(|(_, _, permissions)| Needed(permissions))
}

/// The permissions that let a key call the method of an HTTP/2 path
/// (`/mailroom.v1.Token/IssueToken`).
pub fn required_by_path(path: &str) -> Option<Needed> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    required(service, method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_is_found_by_service_and_by_path() {
        assert_eq!(
            required("mailroom.v1.Token", "IssueToken").map(|n| n.0),
            Some(&[ManageUser][..])
        );
        assert_eq!(
            required_by_path("/mailroom.v1.ApiKeys/RevokeApiKey").map(|n| n.0),
            Some(&[ManagePlatform][..])
        );
        for unknown in [
            "/mailroom.v1.Token/MintToken",
            "/other.v1.Token/IssueToken",
            "/mailroom.v1Token/IssueToken",
            "/mailroom.v1.Token",
            "",
        ] {
            assert!(required_by_path(unknown).is_none(), "{unknown}");
        }
    }
}
