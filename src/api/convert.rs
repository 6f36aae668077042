//! Conversions between proto messages and domain values that several adapters share:
//! times, durations, paging.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::validation::{violation, Violations};

/// Default page size of list RPCs.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page size of list RPCs.
pub const MAX_PAGE_SIZE: usize = 1000;

/// A `Timestamp` for a time.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    t.into()
}

/// A `Timestamp` for a time that may be unset.
pub fn timestamp_opt(t: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    t.map(timestamp)
}

/// A proto `Duration` for a duration.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// A duration from a proto `Duration`; negative ones become zero (below every minimum,
/// so the field is reported as out of bounds).
pub fn duration_from(d: Option<prost_types::Duration>) -> Option<Duration> {
    d.map(|d| Duration::try_from(d).unwrap_or(Duration::ZERO))
}

/// A page request: how many, and after which key.
pub struct Page {
    /// At most this many.
    pub size: usize,
    /// Resume after this key.
    pub after: Option<String>,
}

impl Page {
    /// Reads `page_size` and `page_token`.
    pub fn parse(page_size: i32, page_token: &str) -> Result<Self, Violations> {
        let size = match page_size {
            n if n < 0 => return Err(violation("page_size", "must not be negative")),
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            let bytes = URL_SAFE_NO_PAD
                .decode(page_token)
                .map_err(|_| violation("page_token", "is not a token this service returned"))?;
            Some(
                String::from_utf8(bytes)
                    .map_err(|_| violation("page_token", "is not a token this service returned"))?,
            )
        };
        Ok(Self { size, after })
    }

    /// How many items to fetch: one more than the page, to learn whether more follow.
    pub fn fetch(&self) -> usize {
        self.size + 1
    }

    /// Cuts what was fetched to the page and makes its `next_page_token`: empty on the
    /// last page.
    pub fn finish<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> &str) -> (Vec<T>, String) {
        if items.len() <= self.size {
            return (items, String::new());
        }
        items.truncate(self.size);
        let token = items
            .last()
            .map(|i| URL_SAFE_NO_PAD.encode(key(i)))
            .unwrap_or_default();
        (items, token)
    }
}

mod settings {
    use super::{duration, duration_from, timestamp};
    use crate::proto::v1 as pb;
    use crate::settings::{
        Auth, AuthDraft, Mechanism, OAuth2Draft, Provider, Security, SettingsDraft, SmtpSettings,
        TlsDraft, DEFAULT_INVITATION, DEFAULT_RESET_PASSWORD, DEFAULT_TIMEOUT,
    };

    /// The proto enum for a security mode.
    pub fn security(s: Security) -> pb::ConnectionSecurity {
        match s {
            Security::None => pb::ConnectionSecurity::None,
            Security::StartTls => pb::ConnectionSecurity::Starttls,
            Security::StartTlsOpportunistic => pb::ConnectionSecurity::StarttlsOpportunistic,
            Security::Ssl => pb::ConnectionSecurity::Ssl,
        }
    }

    /// The security mode of a proto enum value; `None` for a value this version does not know.
    pub fn security_from(value: i32) -> Option<Security> {
        match pb::ConnectionSecurity::try_from(value).ok()? {
            pb::ConnectionSecurity::Unspecified | pb::ConnectionSecurity::None => {
                Some(Security::None)
            }
            pb::ConnectionSecurity::Starttls => Some(Security::StartTls),
            pb::ConnectionSecurity::StarttlsOpportunistic => Some(Security::StartTlsOpportunistic),
            pb::ConnectionSecurity::Ssl => Some(Security::Ssl),
        }
    }

    /// The mechanism of a proto enum value; `None` for a value this version does not know.
    pub fn mechanism_from(value: i32) -> Option<Mechanism> {
        match pb::AuthMechanism::try_from(value).ok()? {
            pb::AuthMechanism::Unspecified | pb::AuthMechanism::Auto => Some(Mechanism::Auto),
            pb::AuthMechanism::Plain => Some(Mechanism::Plain),
            pb::AuthMechanism::Login => Some(Mechanism::Login),
            pb::AuthMechanism::Xoauth2 => Some(Mechanism::Xoauth2),
        }
    }

    /// The proto enum for a mechanism.
    pub fn mechanism(m: Mechanism) -> pb::AuthMechanism {
        match m {
            Mechanism::Auto => pb::AuthMechanism::Auto,
            Mechanism::Plain => pb::AuthMechanism::Plain,
            Mechanism::Login => pb::AuthMechanism::Login,
            Mechanism::Xoauth2 => pb::AuthMechanism::Xoauth2,
        }
    }

    /// The provider of a proto enum value; `None` for a value this version does not know.
    pub fn provider_from(value: i32) -> Option<Provider> {
        match pb::Oauth2Provider::try_from(value).ok()? {
            pb::Oauth2Provider::Unspecified => Some(Provider::Custom),
            pb::Oauth2Provider::Microsoft365 => Some(Provider::Microsoft365),
            pb::Oauth2Provider::Google => Some(Provider::Google),
        }
    }

    /// The proto enum for a provider.
    pub fn provider(p: Provider) -> pb::Oauth2Provider {
        match p {
            Provider::Custom => pb::Oauth2Provider::Unspecified,
            Provider::Microsoft365 => pb::Oauth2Provider::Microsoft365,
            Provider::Google => pb::Oauth2Provider::Google,
        }
    }

    impl From<pb::AuthSettings> for AuthDraft {
        fn from(a: pb::AuthSettings) -> Self {
            let o = a.oauth2.unwrap_or_default();
            AuthDraft {
                mechanism: mechanism_from(a.mechanism),
                oauth2: OAuth2Draft {
                    provider: provider_from(o.provider),
                    tenant_id: o.tenant_id,
                    token_url: o.token_url,
                    client_id: o.client_id,
                    client_secret: o.client_secret.into(),
                    scope: o.scope,
                    private_key_pem: o.private_key_pem.into(),
                    subject: o.subject,
                },
            }
        }
    }

    /// The login settings as answered: secrets replaced by whether they are set.
    fn auth(a: &Auth) -> pb::AuthSettings {
        pb::AuthSettings {
            mechanism: mechanism(a.mechanism).into(),
            oauth2: a.oauth2.as_ref().map(|o| pb::Oauth2Settings {
                provider: provider(o.provider).into(),
                tenant_id: o.tenant_id.clone(),
                token_url: o.token_url.clone(),
                client_id: o.client_id.clone(),
                client_secret: String::new(),
                client_secret_set: o.client_secret.is_some(),
                scope: o.scope.clone(),
                private_key_pem: String::new(),
                private_key_set: o.private_key.is_some(),
                subject: o.subject.clone(),
            }),
        }
    }

    impl From<pb::SmtpSettings> for SettingsDraft {
        fn from(p: pb::SmtpSettings) -> Self {
            let tls = p.tls.unwrap_or_default();
            let expiration = p.token_expiration.unwrap_or_default();
            SettingsDraft {
                host: p.host,
                port: p.port,
                from: p.from,
                security: security_from(p.security),
                username: p.username,
                password: p.password.into(),
                tls: TlsDraft {
                    ca_certificates_pem: tls.ca_certificates_pem,
                    accept_invalid_certificates: tls.accept_invalid_certificates,
                    server_name: tls.server_name,
                    client_certificate_pem: tls.client_certificate_pem,
                    client_key_pem: tls.client_key_pem.into(),
                },
                helo_name: p.helo_name,
                timeout: duration_from(p.timeout),
                reset_password_expiration: duration_from(expiration.reset_password),
                invitation_expiration: duration_from(expiration.invitation),
                link_origins: p.link_origins,
                sender_domains: p.sender_domains,
                auth: p.auth.unwrap_or_default().into(),
                etag: p.etag,
            }
        }
    }

    /// The settings as answered: secrets replaced by whether they are set; the defaults
    /// with `configured = false` before the first update.
    pub fn settings(s: Option<&SmtpSettings>) -> pb::SmtpSettings {
        let Some(s) = s else {
            return pb::SmtpSettings {
                security: pb::ConnectionSecurity::None.into(),
                tls: Some(pb::TlsSettings::default()),
                timeout: Some(duration(DEFAULT_TIMEOUT)),
                token_expiration: Some(pb::TokenExpiration {
                    reset_password: Some(duration(DEFAULT_RESET_PASSWORD)),
                    invitation: Some(duration(DEFAULT_INVITATION)),
                }),
                auth: Some(auth(&Auth::default())),
                ..Default::default()
            };
        };
        pb::SmtpSettings {
            host: s.host.to_string(),
            port: s.port.into(),
            from: s.from.as_str().to_string(),
            security: security(s.security).into(),
            username: s.username.clone(),
            password: String::new(),
            password_set: s.password.is_some(),
            tls: Some(pb::TlsSettings {
                ca_certificates_pem: s.tls.ca_certificates_pem.clone(),
                accept_invalid_certificates: s.tls.accept_invalid_certificates,
                server_name: s.tls.server_name.clone(),
                client_certificate_pem: s.tls.client_certificate_pem.clone(),
                client_key_pem: String::new(),
                client_key_set: s.tls.client_key.is_some(),
            }),
            helo_name: s.helo_name.clone(),
            timeout: Some(duration(s.timeout)),
            token_expiration: Some(pb::TokenExpiration {
                reset_password: Some(duration(s.reset_password_expiration)),
                invitation: Some(duration(s.invitation_expiration)),
            }),
            etag: s.etag(),
            update_time: Some(timestamp(s.update_time)),
            updated_by: s.updated_by.clone(),
            configured: true,
            link_origins: s.link_origins.iter().map(|o| o.as_str().into()).collect(),
            sender_domains: s.sender_domains.iter().map(|d| d.as_str().into()).collect(),
            auth: Some(auth(&s.auth)),
        }
    }
}

mod probe {
    use super::duration;
    use crate::mail::probe::{Report, Stage, Step};
    use crate::proto::v1 as pb;

    impl From<Stage> for pb::TestStage {
        fn from(stage: Stage) -> Self {
            match stage {
                Stage::Token => pb::TestStage::Token,
                Stage::Connect => pb::TestStage::Connect,
                Stage::Tls => pb::TestStage::Tls,
                Stage::Ehlo => pb::TestStage::Ehlo,
                Stage::Auth => pb::TestStage::Auth,
                Stage::MailFrom => pb::TestStage::MailFrom,
                Stage::RcptTo => pb::TestStage::RcptTo,
                Stage::Data => pb::TestStage::Data,
            }
        }
    }

    impl From<Step> for pb::TestStep {
        fn from(step: Step) -> Self {
            pb::TestStep {
                stage: pb::TestStage::from(step.stage).into(),
                ok: step.ok,
                smtp_code: step.smtp_code.map_or(0, u32::from),
                detail: step.detail,
                elapsed: Some(duration(step.elapsed)),
            }
        }
    }

    impl From<Report> for pb::TestSmtpSettingsResponse {
        fn from(report: Report) -> Self {
            pb::TestSmtpSettingsResponse {
                success: report.success,
                steps: report.steps.into_iter().map(Into::into).collect(),
                message_id: report.message_id,
                summary: report.summary,
            }
        }
    }
}

mod notify {
    use prost_types::value::Kind;
    use serde_json::{Map, Number, Value};

    use super::{timestamp, timestamp_opt};
    use crate::directory::{User, UserDraft};
    use crate::notify::BodyFormat;
    use crate::notify::{MessageState, OutboxMessage};
    use crate::proto::v1 as pb;

    /// A `google.protobuf.Struct` as JSON, for the templates.
    pub fn json_object(s: Option<prost_types::Struct>) -> Map<String, Value> {
        s.map(|s| s.fields.into_iter().map(|(k, v)| (k, json(v))).collect())
            .unwrap_or_default()
    }

    fn json(v: prost_types::Value) -> Value {
        match v.kind {
            None | Some(Kind::NullValue(_)) => Value::Null,
            Some(Kind::BoolValue(b)) => Value::Bool(b),
            Some(Kind::NumberValue(n)) => {
                // Integers stay integers (epoch milliseconds, TLP levels, severities).
                if n.fract() == 0.0 && n.abs() < 9.0e15 {
                    Value::Number(Number::from(n as i64))
                } else {
                    Number::from_f64(n).map_or(Value::Null, Value::Number)
                }
            }
            Some(Kind::StringValue(s)) => Value::String(s),
            Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(json).collect()),
            Some(Kind::StructValue(s)) => Value::Object(json_object(Some(s))),
        }
    }

    /// The body format of a proto enum value; `None` for an unknown value.
    pub fn body_format(value: i32) -> Option<BodyFormat> {
        match pb::BodyFormat::try_from(value).ok()? {
            pb::BodyFormat::Unspecified | pb::BodyFormat::Text => Some(BodyFormat::Text),
            pb::BodyFormat::Html => Some(BodyFormat::Html),
        }
    }

    /// A state filter: `Ok(None)` for unspecified, `Err` for an unknown value.
    pub fn state_filter(value: i32) -> Result<Option<MessageState>, &'static str> {
        let state =
            pb::MessageState::try_from(value).map_err(|_| "is not a known MessageState value")?;
        Ok(Some(match state {
            pb::MessageState::Unspecified => return Ok(None),
            pb::MessageState::Queued => MessageState::Queued,
            pb::MessageState::Sending => MessageState::Sending,
            pb::MessageState::Sent => MessageState::Sent,
            pb::MessageState::Retrying => MessageState::Retrying,
            pb::MessageState::Dead => MessageState::Dead,
            pb::MessageState::Cancelled => MessageState::Cancelled,
        }))
    }

    impl From<MessageState> for pb::MessageState {
        fn from(s: MessageState) -> Self {
            match s {
                MessageState::Queued => pb::MessageState::Queued,
                MessageState::Sending => pb::MessageState::Sending,
                MessageState::Sent => pb::MessageState::Sent,
                MessageState::Retrying => pb::MessageState::Retrying,
                MessageState::Dead => pb::MessageState::Dead,
                MessageState::Cancelled => pb::MessageState::Cancelled,
            }
        }
    }

    impl From<OutboxMessage> for pb::Message {
        fn from(m: OutboxMessage) -> Self {
            let pending = matches!(m.state, MessageState::Queued | MessageState::Retrying);
            pb::Message {
                id: m.id,
                organisation: m.organisation,
                from: m.from,
                to: m.to,
                subject: m.subject,
                state: pb::MessageState::from(m.state).into(),
                attempts: m.attempts,
                last_error: m.last_error,
                last_smtp_code: m.last_smtp_code.into(),
                create_time: Some(timestamp(m.create_time)),
                next_attempt_time: pending.then(|| timestamp(m.next_attempt_time)),
                sent_time: timestamp_opt(m.sent_time),
                message_id_header: m.message_id_header,
            }
        }
    }

    impl From<pb::User> for UserDraft {
        fn from(u: pb::User) -> Self {
            UserDraft {
                login: u.login,
                name: u.name,
                email: u.email,
                organisations: u.organisations,
                locked: u.locked,
                locale: u.locale,
            }
        }
    }

    impl From<User> for pb::User {
        fn from(u: User) -> Self {
            pb::User {
                login: u.login,
                name: u.name,
                email: u.email,
                organisations: u.organisations,
                locked: u.locked,
                locale: u.locale,
                create_time: Some(timestamp(u.create_time)),
                update_time: Some(timestamp(u.update_time)),
            }
        }
    }
}

mod tokens {
    use super::{timestamp, timestamp_opt};
    use crate::notify::NoticeKind;
    use crate::proto::v1 as pb;
    use crate::tokens::{Purpose, Token, TokenState};

    /// The purpose of a proto enum value; `None` for unspecified or unknown.
    pub fn purpose(value: i32) -> Option<Purpose> {
        match pb::TokenPurpose::try_from(value).ok()? {
            pb::TokenPurpose::Unspecified => None,
            pb::TokenPurpose::PasswordReset => Some(Purpose::PasswordReset),
            pb::TokenPurpose::Invitation => Some(Purpose::Invitation),
        }
    }

    /// A purpose filter: `Ok(None)` for unspecified (every purpose), `Err` for unknown.
    pub fn purpose_filter(value: i32) -> Result<Option<Purpose>, &'static str> {
        match pb::TokenPurpose::try_from(value) {
            Ok(pb::TokenPurpose::Unspecified) => Ok(None),
            Ok(_) => Ok(purpose(value)),
            Err(_) => Err("is not a known TokenPurpose value"),
        }
    }

    /// The notice kind of a proto enum value; `None` for unspecified or unknown.
    pub fn notice_kind(value: i32) -> Option<NoticeKind> {
        match pb::AccountNoticeKind::try_from(value).ok()? {
            pb::AccountNoticeKind::Unspecified => None,
            pb::AccountNoticeKind::PasswordChanged => Some(NoticeKind::PasswordChanged),
            pb::AccountNoticeKind::PasswordReset => Some(NoticeKind::PasswordReset),
            pb::AccountNoticeKind::EmailChanged => Some(NoticeKind::EmailChanged),
        }
    }

    /// What is told of a token in `state` (its state now).
    pub fn token_info(t: Token, state: TokenState) -> pb::TokenInfo {
        let purpose = match t.purpose {
            Purpose::PasswordReset => pb::TokenPurpose::PasswordReset,
            Purpose::Invitation => pb::TokenPurpose::Invitation,
        };
        let state = match state {
            TokenState::Active => pb::TokenState::Active,
            TokenState::Consumed => pb::TokenState::Consumed,
            TokenState::Expired => pb::TokenState::Expired,
            TokenState::Revoked => pb::TokenState::Revoked,
        };
        pb::TokenInfo {
            id: t.id,
            purpose: purpose.into(),
            login: t.login,
            email: t.email,
            organisation: t.organisation,
            state: state.into(),
            create_time: Some(timestamp(t.create_time)),
            expire_time: Some(timestamp(t.expire_time)),
            consume_time: timestamp_opt(t.consume_time),
            metadata: t.metadata.into_iter().collect(),
        }
    }
}

mod keys {
    use super::timestamp;
    use crate::auth::ApiKey;
    use crate::proto::v1 as pb;

    impl From<ApiKey> for pb::ApiKey {
        fn from(k: ApiKey) -> Self {
            pb::ApiKey {
                id: k.id,
                name: k.name,
                organisation: k.organisation,
                permissions: k
                    .permissions
                    .iter()
                    .map(|p| p.as_str().to_string())
                    .collect(),
                create_time: Some(timestamp(k.create_time)),
                revoked: k.revoked,
            }
        }
    }
}

pub use notify::{body_format, json_object, state_filter};
pub use settings::settings;
pub use tokens::{notice_kind, purpose, purpose_filter, token_info};
