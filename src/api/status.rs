//! The one place errors become gRPC statuses, each code chosen on purpose: a client's
//! mistake is never `INTERNAL`, and internal details never reach a client.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::auth::AuthError;
use crate::directory::{DirectoryError, NotInOrganisation};
use crate::notify::NotifyError;
use crate::ports::StoreError;
use crate::quota::OverQuota;
use crate::settings::{SettingsError, Unset};
use crate::tokens::TokenError;
use crate::validation::Violations;

/// The `ErrorInfo` domain of mailroom's errors.
pub const ERROR_DOMAIN: &str = "mailroom";

/// `INVALID_ARGUMENT` with one `BadRequest` field violation per bad field: the first
/// [`crate::validation::MAX_KEPT`], the message counting the rest.
pub fn invalid(violations: &Violations) -> Status {
    let details: Vec<FieldViolation> = violations
        .iter()
        .map(|v| FieldViolation::new(v.field.clone(), v.description.clone()))
        .collect();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {violations}"),
        ErrorDetails::with_bad_request(details),
    )
}

impl From<NotInOrganisation> for Status {
    fn from(e: NotInOrganisation) -> Self {
        let info = ErrorDetails::with_error_info(
            "LOGIN_NOT_IN_ORGANISATION",
            ERROR_DOMAIN,
            HashMap::new(),
        );
        Status::with_error_details(Code::PermissionDenied, e.to_string(), info)
    }
}

impl From<Unset> for Status {
    fn from(e: Unset) -> Self {
        let failure = tonic_types::PreconditionViolation::new("SETTINGS", e.field, e.why);
        Status::with_error_details(
            Code::FailedPrecondition,
            e.to_string(),
            ErrorDetails::with_precondition_failure(vec![failure]),
        )
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        match e {
            StoreError::Unavailable(_) => Status::unavailable("the store is unavailable; retry"),
            StoreError::Corrupt { .. } => Status::internal("a stored record cannot be read"),
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated(why) => Status::unauthenticated(why),
            AuthError::PermissionDenied(why) => Status::permission_denied(why),
            AuthError::Invalid(v) => invalid(&v),
            AuthError::NotFound(_) => Status::not_found(e.to_string()),
            AuthError::FailedPrecondition(why) => Status::failed_precondition(why),
            AuthError::Store(e) => e.into(),
        }
    }
}

impl From<SettingsError> for Status {
    fn from(e: SettingsError) -> Self {
        match e {
            SettingsError::Invalid(v) => invalid(&v),
            SettingsError::Stale { .. } => Status::aborted(format!(
                "{e}: read the settings again and retry with their etag"
            )),
            SettingsError::NotConfigured => Status::failed_precondition(e.to_string()),
            SettingsError::Unset(e) => e.into(),
            SettingsError::Crypto(e) => {
                tracing::error!(error = %e, "stored SMTP secret unreadable");
                Status::failed_precondition(
                    "a stored SMTP secret cannot be decrypted with this master key: \
                     set the password again, or start with the right master key",
                )
            }
            SettingsError::Store(e) => e.into(),
        }
    }
}

impl From<DirectoryError> for Status {
    fn from(e: DirectoryError) -> Self {
        match e {
            DirectoryError::Invalid(v) => invalid(&v),
            DirectoryError::NotFound(_) => Status::not_found(e.to_string()),
            DirectoryError::Forbidden(why) => Status::permission_denied(why),
            DirectoryError::OverQuota(over) => over.into(),
            DirectoryError::Store(e) => e.into(),
        }
    }
}

impl From<OverQuota> for Status {
    fn from(over: OverQuota) -> Self {
        let metadata = HashMap::from([
            ("quota".to_string(), over.quota.to_string()),
            ("limit".to_string(), over.limit.to_string()),
        ]);
        let mut details = ErrorDetails::with_retry_info(Some(over.retry_after));
        details.set_error_info("QUOTA_EXCEEDED", ERROR_DOMAIN, metadata);
        Status::with_error_details(Code::ResourceExhausted, over.to_string(), details)
    }
}

impl From<NotifyError> for Status {
    fn from(e: NotifyError) -> Self {
        match e {
            NotifyError::Invalid(v) => invalid(&v),
            NotifyError::NotConfigured => Status::failed_precondition(e.to_string()),
            NotifyError::Unset(e) => e.into(),
            NotifyError::NotFound(_) => Status::not_found(e.to_string()),
            NotifyError::NoUser(_) => Status::failed_precondition(e.to_string()),
            NotifyError::NotInOrganisation(e) => e.into(),
            NotifyError::OverQuota(over) => over.into(),
            NotifyError::State(_) => Status::failed_precondition(e.to_string()),
            NotifyError::Crypto(e) => {
                tracing::error!(error = %e, "sealed value unreadable");
                Status::failed_precondition(
                    "a stored secret cannot be decrypted with this master key",
                )
            }
            NotifyError::Store(e) => e.into(),
        }
    }
}

impl From<TokenError> for Status {
    fn from(e: TokenError) -> Self {
        let message = e.to_string();
        let ended = |reason: &str| {
            let info = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
            Status::with_error_details(Code::FailedPrecondition, message.clone(), info)
        };
        match e {
            TokenError::Invalid(v) => invalid(&v),
            TokenError::NotFound => Status::not_found(message),
            TokenError::Expired => ended("TOKEN_EXPIRED"),
            TokenError::Consumed => ended("TOKEN_CONSUMED"),
            TokenError::Revoked => ended("TOKEN_REVOKED"),
            TokenError::NotInOrganisation(e) => e.into(),
            TokenError::NoAddress(_) => Status::failed_precondition(message),
            TokenError::RateLimited(wait) => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(wait)),
            ),
            TokenError::OverQuota(over) => over.into(),
            TokenError::Notify(e) => e.into(),
            TokenError::Store(e) => e.into(),
        }
    }
}

impl From<crate::templates::TemplateError> for Status {
    fn from(e: crate::templates::TemplateError) -> Self {
        use crate::templates::TemplateError;
        match e {
            TemplateError::Invalid(v) => invalid(&v),
            TemplateError::Stale(_) => Status::aborted(e.to_string()),
            TemplateError::Store(e) => e.into(),
        }
    }
}
