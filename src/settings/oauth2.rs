//! The access token of an XOAUTH2 login: fetched from the settings' OAuth2 token endpoint
//! with the client-credentials grant (RFC 6749 §4.4, the client secret) or the JWT-bearer
//! grant (RFC 7523, an RS256 assertion signed with the private key), over HTTPS with the
//! settings' CA certificates and timeout, and kept in [`AccessTokens`].
//!
//! [`AccessTokens`] holds one token per settings revision and hands it to every connection until
//! it is close to expiring (a quarter of its life, at most 5 minutes, before), then fetches
//! the next one; connections that need a token at once wait for one fetch and share it (a
//! failure too: waiting senders do not each try a dead endpoint in turn). A token the SMTP
//! server refuses (`535`) may have been revoked early: [`AccessTokens::refresh`] fetches another
//! once, and a connection retries with it ([`crate::mail::connection`]). `TestSmtpSettings`
//! fetches a fresh token every time ([`AccessTokens::fetch`]): it tests unsaved settings too.
//!
//! The endpoint's host goes through the settings' private-address guard like the SMTP
//! host, and the request goes only to the addresses it checked. The endpoint's
//! certificate is always verified (`accept_invalid_certificates` is for test relays, not
//! for where the client secret goes); no redirect is followed, no proxy used.
//!
//! The endpoint's refusals become messages naming the field to fix (`invalid_client` →
//! `auth.oauth2.client_secret`, `invalid_scope` → `auth.oauth2.scope`, …). No secret,
//! assertion or token is ever part of an error, a log line or a metric label.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::crypto::MasterKey;
use crate::metrics::Metrics;
use crate::settings::{human, AddressGuard, Grant, Host, OAuth2, Port, SmtpSettings};

/// The longest answer of a token endpoint read.
const MAX_ANSWER: usize = 64 * 1024;
/// How long a JWT-bearer assertion is valid: Google's most.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);
/// A token is refreshed this long before it expires, at most (a quarter of its life for
/// shorter ones).
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// The life of a token whose endpoint did not say (`expires_in` is only recommended).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest life a token is kept for, whatever its endpoint says.
const MAX_LIFETIME: Duration = Duration::from_secs(86_400);

/// An access token. Its secret prints as `[REDACTED]`.
#[derive(Clone, Debug)]
pub struct AccessToken {
    secret: SecretString,
    /// When the endpoint said it expires.
    pub expires_at: SystemTime,
    /// Which fetch of this process it came from (to tell whether it was replaced).
    serial: u64,
    /// What the fetch was, for a report: endpoint, grant, lifetime.
    pub detail: String,
    /// Whether it was fetched for this need (not taken from the cache).
    pub fresh: bool,
}

impl AccessToken {
    /// The SASL XOAUTH2 initial response for `user`, base64: `user=…^Aauth=Bearer …^A^A`.
    pub fn xoauth2(&self, user: &str) -> SecretString {
        use base64::Engine as _;
        let raw = format!(
            "user={user}\x01auth=Bearer {}\x01\x01",
            self.secret.expose_secret()
        );
        base64::engine::general_purpose::STANDARD
            .encode(raw.as_bytes())
            .into()
    }
}

/// Why no token could be had: a message naming the field to fix, never a secret.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct AccessTokenError(pub String);

/// The tokens of this process's XOAUTH2 logins: one per settings revision, shared.
pub struct AccessTokens {
    slot: tokio::sync::Mutex<Slot>,
    serial: std::sync::atomic::AtomicU64,
    metrics: Metrics,
}

#[derive(Default)]
enum Slot {
    #[default]
    Empty,
    Token {
        revision: u64,
        token: AccessToken,
        refresh_at: SystemTime,
    },
    /// The last fetch failed: those that waited for it get its error.
    Failed {
        revision: u64,
        at: Instant,
        error: AccessTokenError,
    },
}

impl AccessTokens {
    /// No token yet; fetches counted in `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            slot: tokio::sync::Mutex::new(Slot::Empty),
            serial: std::sync::atomic::AtomicU64::new(0),
            metrics,
        }
    }

    /// The token for `settings` at `now`: the cached one while it is fresh, else one
    /// fetched (once for every connection asking meanwhile).
    pub async fn get(
        &self,
        settings: &SmtpSettings,
        key: &MasterKey,
        guard: &AddressGuard,
        now: SystemTime,
    ) -> Result<AccessToken, AccessTokenError> {
        self.get_unless(settings, key, guard, now, None).await
    }

    /// After the SMTP server refused `used`: another token, fetched unless another
    /// connection already replaced `used`.
    pub async fn refresh(
        &self,
        settings: &SmtpSettings,
        key: &MasterKey,
        guard: &AddressGuard,
        now: SystemTime,
        used: &AccessToken,
    ) -> Result<AccessToken, AccessTokenError> {
        self.get_unless(settings, key, guard, now, Some(used.serial))
            .await
    }

    async fn get_unless(
        &self,
        settings: &SmtpSettings,
        key: &MasterKey,
        guard: &AddressGuard,
        now: SystemTime,
        refused: Option<u64>,
    ) -> Result<AccessToken, AccessTokenError> {
        let asked = Instant::now();
        let mut slot = self.slot.lock().await;
        match &*slot {
            Slot::Token {
                revision,
                token,
                refresh_at,
            } if *revision == settings.revision
                && now < *refresh_at
                && Some(token.serial) != refused =>
            {
                let mut token = token.clone();
                token.fresh = false;
                return Ok(token);
            }
            Slot::Failed {
                revision,
                at,
                error,
            } if *revision == settings.revision && *at >= asked => return Err(error.clone()),
            _ => {}
        }
        match self.fetch(settings, key, guard, now).await {
            Ok(token) => {
                let life = token.expires_at.duration_since(now).unwrap_or_default();
                *slot = Slot::Token {
                    revision: settings.revision,
                    token: token.clone(),
                    refresh_at: now + life.saturating_sub(REFRESH_MARGIN.min(life / 4)),
                };
                Ok(token)
            }
            Err(error) => {
                *slot = Slot::Failed {
                    revision: settings.revision,
                    at: Instant::now(),
                    error: error.clone(),
                };
                Err(error)
            }
        }
    }

    /// A new token for `settings`, not cached (`TestSmtpSettings`), within the settings'
    /// timeout.
    pub async fn fetch(
        &self,
        settings: &SmtpSettings,
        key: &MasterKey,
        guard: &AddressGuard,
        now: SystemTime,
    ) -> Result<AccessToken, AccessTokenError> {
        let Some(oauth2) = settings.auth.oauth2.as_ref() else {
            return Err(AccessTokenError(
                "auth.oauth2 is not set: XOAUTH2 needs an OAuth2 client".into(),
            ));
        };
        let endpoint = oauth2.token_url();
        let fetched = tokio::time::timeout(
            settings.timeout,
            request(settings, oauth2, &endpoint, key, guard, now),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Failure::Unreachable(format!(
                "the token endpoint {endpoint} did not answer within the {} timeout \
                 (check auth.oauth2.token_url, and that mailroom can reach it)",
                human(settings.timeout)
            )))
        });
        let (outcome, result) = match fetched {
            Ok((secret, lifetime)) => {
                let serial = self
                    .serial
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let expires_at = now + lifetime;
                let detail = format!(
                    "{} at {endpoint} for client {}: a token valid {} (until {}; not shown)",
                    oauth2.grant().name(),
                    oauth2.client_id,
                    human(lifetime),
                    crate::clock::rfc3339(expires_at),
                );
                let token = AccessToken {
                    secret,
                    expires_at,
                    serial,
                    detail,
                    fresh: true,
                };
                ("issued", Ok(token))
            }
            Err(Failure::Refused(why)) => ("refused", Err(AccessTokenError(why))),
            Err(Failure::Unreachable(why)) => ("unreachable", Err(AccessTokenError(why))),
            Err(Failure::Invalid(why)) => ("invalid_answer", Err(AccessTokenError(why))),
        };
        self.metrics.token_fetch(outcome);
        match &result {
            Ok(token) => tracing::info!(
                grant = oauth2.grant().name(),
                endpoint = %endpoint,
                expires = %crate::clock::rfc3339(token.expires_at),
                "OAuth2 access token fetched"
            ),
            Err(e) => tracing::warn!(endpoint = %endpoint, error = %e, "OAuth2 token fetch failed"),
        }
        result
    }
}

/// How a fetch failed.
enum Failure {
    /// The endpoint answered with an OAuth2 error.
    Refused(String),
    /// It could not be reached, or did not answer.
    Unreachable(String),
    /// It answered something else than a token.
    Invalid(String),
}

/// A token endpoint's success answer (RFC 6749 §5.1).
#[derive(Deserialize)]
struct Issued {
    access_token: String,
    #[serde(default)]
    token_type: String,
    expires_in: Option<serde_json::Value>,
}

/// A token endpoint's error answer (RFC 6749 §5.2).
#[derive(Deserialize)]
struct Refusal {
    error: String,
    #[serde(default)]
    error_description: String,
}

async fn request(
    settings: &SmtpSettings,
    oauth2: &OAuth2,
    endpoint: &str,
    key: &MasterKey,
    guard: &AddressGuard,
    now: SystemTime,
) -> Result<(SecretString, Duration), Failure> {
    let url = url::Url::parse(endpoint)
        .map_err(|e| Failure::Invalid(format!("auth.oauth2.token_url {endpoint:?}: {e}")))?;
    let client = client(settings, &url, guard).await?;
    let opened = |e: crate::crypto::CryptoError| Failure::Invalid(e.to_string());
    let scope = oauth2.scope();
    let mut form: Vec<(&str, String)> = Vec::new();
    // Kept apart so that it is wiped when dropped.
    let secret: SecretString = match oauth2.grant() {
        Grant::ClientCredentials => {
            let secret = settings
                .oauth2_client_secret(key)
                .map_err(opened)?
                .ok_or_else(|| Failure::Invalid("auth.oauth2.client_secret is not set".into()))?;
            form.push(("grant_type", "client_credentials".into()));
            form.push(("client_id", oauth2.client_id.clone()));
            secret
        }
        Grant::JwtBearer => {
            let pem = settings
                .oauth2_private_key(key)
                .map_err(opened)?
                .ok_or_else(|| Failure::Invalid("auth.oauth2.private_key_pem is not set".into()))?;
            let subject = oauth2.subject(&settings.username);
            form.push((
                "grant_type",
                "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
            ));
            assertion(&pem, &oauth2.client_id, subject, &scope, endpoint, now)?
        }
    };
    if !scope.is_empty() {
        form.push(("scope", scope));
    }
    let secret_name = match oauth2.grant() {
        Grant::ClientCredentials => "client_secret",
        Grant::JwtBearer => "assertion",
    };
    let body = {
        let mut body = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in &form {
            body.append_pair(name, value);
        }
        body.append_pair(secret_name, secret.expose_secret());
        zeroize::Zeroizing::new(body.finish())
    };
    let response = client
        .post(url)
        .header(http::header::ACCEPT, "application/json")
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body.as_str().to_owned())
        .send()
        .await
        .map_err(|e| Failure::Unreachable(unreachable(endpoint, &e)))?;
    let status = response.status();
    let text = read_capped(response)
        .await
        .map_err(|e| Failure::Unreachable(unreachable(endpoint, &e)))?;
    if status.is_success() {
        let issued: Issued = serde_json::from_slice(&text).map_err(|_| {
            Failure::Invalid(format!(
                "{endpoint} answered HTTP {status} without an OAuth2 token (is \
                 auth.oauth2.token_url a token endpoint?)"
            ))
        })?;
        if !issued.token_type.eq_ignore_ascii_case("bearer") {
            return Err(Failure::Invalid(format!(
                "{endpoint} issued a token of type {:?}, not a bearer token",
                clean(&issued.token_type)
            )));
        }
        if issued.access_token.is_empty()
            || issued
                .access_token
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Failure::Invalid(format!(
                "{endpoint} issued an empty or malformed access token"
            )));
        }
        let lifetime = issued
            .expires_in
            .as_ref()
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            // Clamped: an endpoint's 2^64 - 1 would overflow the expiry's arithmetic.
            .map_or(DEFAULT_LIFETIME, |secs| {
                Duration::from_secs(secs.min(MAX_LIFETIME.as_secs()))
            });
        return Ok((issued.access_token.into(), lifetime));
    }
    match serde_json::from_slice::<Refusal>(&text) {
        Ok(refusal) => Err(Failure::Refused(refused(
            oauth2, endpoint, status, &refusal,
        ))),
        Err(_) if status.is_server_error() => Err(Failure::Unreachable(format!(
            "the token endpoint {endpoint} failed (HTTP {status}); retry later"
        ))),
        Err(_) => Err(Failure::Invalid(format!(
            "{endpoint} answered HTTP {status}, not an OAuth2 answer: check \
             auth.oauth2.token_url"
        ))),
    }
}

/// An HTTPS client for the endpoint: its host checked by the guard and pinned to the
/// addresses checked, its certificate verified against the web PKI and the settings' CAs.
async fn client(
    settings: &SmtpSettings,
    url: &url::Url,
    guard: &AddressGuard,
) -> Result<reqwest::Client, Failure> {
    let name = url.host_str().unwrap_or_default();
    let host = Host::try_from(name.to_string())
        .map_err(|why| Failure::Invalid(format!("auth.oauth2.token_url host {why}")))?;
    let port = url
        .port_or_known_default()
        .and_then(|p| Port::try_from(u32::from(p)).ok())
        .ok_or_else(|| Failure::Invalid("auth.oauth2.token_url has no port".into()))?;
    let checked = guard.resolve(&host, port).await.map_err(|e| {
        let why = format!("the token endpoint's host {}", e.why());
        if e.is_refusal() {
            Failure::Invalid(why)
        } else {
            Failure::Unreachable(why)
        }
    })?;
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls(settings)?)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout);
    if url
        .host()
        .is_some_and(|h| matches!(h, url::Host::Domain(_)))
    {
        builder = builder.resolve_to_addrs(name, checked.addresses());
    }
    builder
        .build()
        .map_err(|e| Failure::Invalid(format!("HTTPS client: {e}")))
}

/// TLS toward the token endpoint: ring, the web PKI roots and the settings' CAs, HTTP/1.1.
fn tls(settings: &SmtpSettings) -> Result<rustls::ClientConfig, Failure> {
    use rustls::pki_types::pem::PemObject;
    let invalid = |e: &dyn std::fmt::Display| Failure::Invalid(format!("TLS setup: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(
        settings.tls.ca_certificates_pem.as_bytes(),
    ) {
        let cert = cert.map_err(|e| invalid(&e))?;
        roots.add(cert).map_err(|e| invalid(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The JWT-bearer assertion (RFC 7523 §3): issued by the client, for `subject`, to the
/// token endpoint, valid an hour, signed RS256 with `pem`.
fn assertion(
    pem: &SecretString,
    client_id: &str,
    subject: &str,
    scope: &str,
    endpoint: &str,
    now: SystemTime,
) -> Result<SecretString, Failure> {
    let key =
        jsonwebtoken::EncodingKey::from_rsa_pem(pem.expose_secret().as_bytes()).map_err(|_| {
            Failure::Invalid("auth.oauth2.private_key_pem is not an RSA private key".into())
        })?;
    let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut claims = serde_json::json!({
        "iss": client_id,
        "aud": endpoint,
        "iat": iat,
        "exp": iat + ASSERTION_LIFETIME.as_secs(),
    });
    if !subject.is_empty() {
        claims["sub"] = subject.into();
    }
    if !scope.is_empty() {
        claims["scope"] = scope.into();
    }
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    jsonwebtoken::encode(&header, &claims, &key)
        .map(SecretString::from)
        .map_err(|_| {
            Failure::Invalid(
                "auth.oauth2.private_key_pem cannot sign an RS256 assertion (not an RSA key?)"
                    .into(),
            )
        })
}

/// Reads at most [`MAX_ANSWER`] bytes of an answer.
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_ANSWER - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_ANSWER {
            break;
        }
    }
    Ok(body)
}

/// Why the endpoint could not be reached, with the cause (not the URL again).
fn unreachable(endpoint: &str, e: &reqwest::Error) -> String {
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    let what = if e.is_timeout() {
        "did not answer in time".to_string()
    } else if e.is_connect() {
        format!("cannot be reached ({cause})")
    } else {
        format!("failed ({cause})")
    };
    format!(
        "the token endpoint {endpoint} {what}: check auth.oauth2.token_url, and that \
         mailroom can reach it"
    )
}

/// An endpoint's OAuth2 error as a message naming the field to fix.
fn refused(oauth2: &OAuth2, endpoint: &str, status: reqwest::StatusCode, r: &Refusal) -> String {
    let jwt = oauth2.grant() == Grant::JwtBearer;
    let description = clean(&r.error_description);
    let hint = match r.error.as_str() {
        "invalid_client" if jwt => {
            "check auth.oauth2.client_id (the service account's client_email, the \
             assertion's issuer)"
                .to_string()
        }
        "invalid_client" => "check auth.oauth2.client_secret (wrong or expired: create a new \
             one and give it again) and auth.oauth2.client_id"
            .to_string(),
        "invalid_scope" => format!("check auth.oauth2.scope ({:?} was asked)", oauth2.scope()),
        "invalid_grant" if jwt => {
            "the assertion was refused: check auth.oauth2.private_key_pem (the service \
             account's current key), auth.oauth2.subject (a user of the domain) and that the \
             clock of this host is right"
                .to_string()
        }
        "invalid_grant" => "check auth.oauth2.client_secret and auth.oauth2.client_id".to_string(),
        "unauthorized_client" if jwt => {
            "this client may not act for auth.oauth2.subject with this scope: with Google, \
             grant the service account domain-wide delegation of auth.oauth2.scope \
             (check auth.oauth2.client_id and auth.oauth2.scope)"
                .to_string()
        }
        "unauthorized_client" => {
            "this client may not use the client-credentials grant: check auth.oauth2.client_id \
             (with Microsoft 365, the application's id, with the Office 365 Exchange Online \
             application permission SMTP.SendAsApp and admin consent)"
                .to_string()
        }
        "unsupported_grant_type" => format!(
            "the endpoint does not support the {}: check auth.oauth2.token_url",
            oauth2.grant().name()
        ),
        _ if description.contains("AADSTS90002") || description.contains("AADSTS900023") => {
            "check auth.oauth2.tenant_id (the tenant is unknown to Microsoft)".to_string()
        }
        _ if description.contains("AADSTS700016") => {
            "check auth.oauth2.client_id (no such application in the tenant)".to_string()
        }
        _ => "check auth.oauth2.token_url, client_id and the client's secret or key".to_string(),
    };
    let description = if description.is_empty() {
        String::new()
    } else {
        format!(" ({description})")
    };
    format!(
        "the token endpoint {endpoint} refused the {}: HTTP {status}, {}{description}; {hint}",
        oauth2.grant().name(),
        clean(&r.error),
    )
}

/// Text an endpoint sent, fit for a report: one line, no control characters, 300
/// characters at most.
fn clean(text: &str) -> String {
    // An endpoint may echo the request (measured: `client_secret=…` in its description):
    // nothing from the first secret parameter on reaches an answer or a log.
    let lower = text.to_ascii_lowercase();
    let cut = ["secret=", "assertion=", "password=", "private_key"]
        .iter()
        .filter_map(|word| lower.find(word))
        .min()
        .unwrap_or(text.len());
    let mut line: String = text[..cut]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if cut < text.len() {
        line.push_str(" [withheld: it may quote a secret]");
    }
    line.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_echoing_the_request_never_reaches_an_answer() {
        let echoed = clean("bad request: grant_type=x&client_secret=S3CRET-value");
        assert!(!echoed.contains("S3CRET"), "{echoed}");
        assert!(echoed.starts_with("bad request"), "{echoed}");
    }

    /// What the JWT-bearer grant's assertion carries (RFC 7523 §3, as Google reads it): RS256,
    /// issuer the client id, subject the mailbox, audience the token URL, the scope, an hour
    /// of life. It is not Microsoft's certificate credential (a `client_assertion` whose
    /// header names the certificate, `x5t#S256`, with `jti` and `sub` = the client id):
    /// mailroom does not make one, and the settings refuse a private key for Microsoft.
    #[test]
    fn the_jwt_bearer_assertion_is_google_s_not_a_microsoft_client_assertion() {
        use base64::Engine as _;
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/oauth2-service-account.key.pem"
        ))
        .unwrap();
        let endpoint = "https://oauth2.googleapis.com/token";
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let jwt = assertion(
            &pem.into(),
            "mailroom@project.iam.gserviceaccount.com",
            "soc@example.com",
            "https://mail.google.com/",
            endpoint,
            now,
        )
        .unwrap_or_else(|_| panic!("the fixture key signs"));
        let parts: Vec<&str> = jwt.expose_secret().split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |part: &str| -> serde_json::Value {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        };
        let header = decode(parts[0]);
        assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT"}));
        let claims = decode(parts[1]);
        assert_eq!(
            claims,
            serde_json::json!({
                "iss": "mailroom@project.iam.gserviceaccount.com",
                "sub": "soc@example.com",
                "aud": endpoint,
                "scope": "https://mail.google.com/",
                "iat": 1_800_000_000u64,
                "exp": 1_800_003_600u64,
            })
        );
    }

    fn oauth2(grant: Grant) -> OAuth2 {
        OAuth2 {
            provider: crate::settings::Provider::Custom,
            tenant_id: String::new(),
            token_url: "https://idp.example.com/token".into(),
            client_id: "app".into(),
            client_secret: None,
            scope: "smtp".into(),
            private_key: (grant == Grant::JwtBearer)
                .then(|| serde_json::from_str("\"c2VhbGVk\"").unwrap()),
            subject: String::new(),
        }
    }

    fn refusal(error: &str, description: &str) -> Refusal {
        Refusal {
            error: error.into(),
            error_description: description.into(),
        }
    }

    #[test]
    fn refusals_name_the_field_to_fix() {
        let status = reqwest::StatusCode::UNAUTHORIZED;
        let secret = oauth2(Grant::ClientCredentials);
        let jwt = oauth2(Grant::JwtBearer);
        let message =
            |o: &OAuth2, e: &str, d: &str| refused(o, "https://t", status, &refusal(e, d));
        assert!(message(&secret, "invalid_client", "").contains("auth.oauth2.client_secret"));
        assert!(message(&jwt, "invalid_client", "").contains("auth.oauth2.client_id"));
        assert!(message(&secret, "invalid_scope", "").contains("auth.oauth2.scope"));
        assert!(message(&jwt, "invalid_grant", "").contains("auth.oauth2.private_key_pem"));
        assert!(message(
            &secret,
            "invalid_request",
            "AADSTS90002: Tenant 'x' not found"
        )
        .contains("auth.oauth2.tenant_id"));
        let noisy = message(&secret, "invalid_client", "bad\r\nsecret\u{7}");
        assert!(noisy.contains("(bad  secret)"), "{noisy}");
    }

    #[test]
    fn the_xoauth2_response_is_the_sasl_string() {
        use base64::Engine as _;
        let token = AccessToken {
            secret: "ya29.token".into(),
            expires_at: UNIX_EPOCH,
            serial: 0,
            detail: String::new(),
            fresh: true,
        };
        let encoded = token.xoauth2("soc@example.com");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded.expose_secret())
            .unwrap();
        assert_eq!(
            raw,
            b"user=soc@example.com\x01auth=Bearer ya29.token\x01\x01"
        );
        assert!(!format!("{token:?}").contains("ya29"));
    }
}
