//! How mailroom logs in to the SMTP server: the SASL mechanism (`AUTO`, today's negotiated
//! PLAIN or LOGIN; either forced, for relays that advertise mechanisms they do not accept;
//! or `XOAUTH2`), and with `XOAUTH2` the OAuth2 client that gets the access token it sends
//! (Microsoft 365 and Google no longer accept a password from new tenants).
//!
//! The OAuth2 block keeps what the operator gave; a provider preset fills what was left
//! empty, at use ([`OAuth2::token_url`], [`OAuth2::scope`]), so that changing the tenant
//! changes the token URL too. Its two secrets, the client secret (the client-credentials
//! grant, RFC 6749 §4.4) and the private key (the JWT-bearer grant, RFC 7523), are sealed
//! like the password and reused only on terms at least as strict (see `super::merge`).

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::crypto::Sealed;

/// Microsoft's token endpoint, `{tenant}` replaced by the tenant id.
pub const MICROSOFT_TOKEN_URL: &str =
    "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token";
/// The scope of SMTP with a Microsoft 365 application (client credentials).
pub const MICROSOFT_SCOPE: &str = "https://outlook.office365.com/.default";
/// Google's token endpoint.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The scope Gmail's SMTP needs.
pub const GOOGLE_SCOPE: &str = "https://mail.google.com/";

/// The SASL mechanism of SMTP AUTH.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mechanism {
    /// PLAIN, else LOGIN, whichever the server advertises (with a username and password).
    #[default]
    Auto,
    /// PLAIN, even when the server does not advertise it.
    Plain,
    /// LOGIN, even when the server does not advertise it.
    Login,
    /// An OAuth2 access token (RFC 7628's predecessor, as Microsoft and Google speak it):
    /// only over TLS, only when the server advertises it.
    Xoauth2,
}

impl Mechanism {
    /// The name a caller knows it by (without the `AUTH_MECHANISM_` prefix).
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Auto => "AUTO",
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::Xoauth2 => "XOAUTH2",
        }
    }
}

/// A provider whose token endpoint and scope are known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Provider {
    /// None: the token URL (and the scope, if the endpoint needs one) are given.
    #[default]
    Custom,
    /// Microsoft 365 (Exchange Online): the tenant's token endpoint, the Outlook scope, the
    /// client-credentials grant.
    Microsoft365,
    /// Google Workspace: Google's token endpoint, the Gmail scope, the JWT-bearer grant of a
    /// service account with domain-wide delegation.
    Google,
}

impl Provider {
    /// The name a caller knows it by (without the `OAUTH2_PROVIDER_` prefix).
    pub fn name(self) -> &'static str {
        match self {
            Provider::Custom => "UNSPECIFIED",
            Provider::Microsoft365 => "MICROSOFT_365",
            Provider::Google => "GOOGLE",
        }
    }
}

/// How the access token is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// RFC 6749 §4.4, authenticated with the client secret.
    ClientCredentials,
    /// RFC 7523 §2.1, an assertion signed with the private key.
    JwtBearer,
}

impl Grant {
    /// How an operator reads it.
    pub fn name(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client-credentials grant",
            Grant::JwtBearer => "JWT-bearer grant",
        }
    }
}

/// The login settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Auth {
    /// The SASL mechanism.
    pub mechanism: Mechanism,
    /// With [`Mechanism::Xoauth2`] only: where the access token comes from.
    pub oauth2: Option<OAuth2>,
}

/// The OAuth2 client of an XOAUTH2 login, as given (empty: the provider's default).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OAuth2 {
    /// The preset.
    pub provider: Provider,
    /// The Microsoft Entra tenant (a GUID or a domain), for [`Provider::Microsoft365`].
    pub tenant_id: String,
    /// The token endpoint; the provider's when empty.
    pub token_url: String,
    /// The client id (Microsoft: the application id; Google: the service account's
    /// `client_email`, the assertion's issuer).
    pub client_id: String,
    /// The sealed client secret (client-credentials grant).
    pub client_secret: Option<Sealed>,
    /// The scope; the provider's when empty.
    pub scope: String,
    /// The sealed private key, PEM (JWT-bearer grant).
    pub private_key: Option<Sealed>,
    /// The mailbox the assertion acts for (`sub`); with Google, the username when empty.
    pub subject: String,
}

impl OAuth2 {
    /// The token endpoint: the given one, else the provider's.
    pub fn token_url(&self) -> String {
        effective_token_url(self.provider, &self.tenant_id, &self.token_url)
    }

    /// The scope: the given one, else the provider's.
    pub fn scope(&self) -> String {
        effective_scope(self.provider, &self.scope)
    }

    /// The grant: JWT-bearer with a private key, else client credentials.
    pub fn grant(&self) -> Grant {
        if self.private_key.is_some() {
            Grant::JwtBearer
        } else {
            Grant::ClientCredentials
        }
    }

    /// The assertion's subject: the given one; with Google, else the username.
    pub fn subject<'a>(&'a self, username: &'a str) -> &'a str {
        effective_subject(self.provider, &self.subject, username)
    }
}

pub(super) fn effective_token_url(provider: Provider, tenant: &str, given: &str) -> String {
    match provider {
        _ if !given.is_empty() => given.to_string(),
        Provider::Microsoft365 if !tenant.is_empty() => {
            MICROSOFT_TOKEN_URL.replace("{tenant}", tenant)
        }
        Provider::Google => GOOGLE_TOKEN_URL.to_string(),
        _ => String::new(),
    }
}

pub(super) fn effective_scope(provider: Provider, given: &str) -> String {
    match provider {
        _ if !given.is_empty() => given.to_string(),
        Provider::Microsoft365 => MICROSOFT_SCOPE.to_string(),
        Provider::Google => GOOGLE_SCOPE.to_string(),
        Provider::Custom => String::new(),
    }
}

pub(super) fn effective_subject<'a>(
    provider: Provider,
    given: &'a str,
    username: &'a str,
) -> &'a str {
    if given.is_empty() && provider == Provider::Google {
        username
    } else {
        given
    }
}

/// Login settings as a caller sends them.
#[derive(Clone, Debug)]
pub struct AuthDraft {
    /// `None` when the caller sent a value this version does not know.
    pub mechanism: Option<Mechanism>,
    /// The OAuth2 client.
    pub oauth2: OAuth2Draft,
}

impl Default for AuthDraft {
    fn default() -> Self {
        Self {
            mechanism: Some(Mechanism::Auto),
            oauth2: OAuth2Draft::default(),
        }
    }
}

/// The OAuth2 client as a caller sends it; secrets in clear (input only).
#[derive(Clone, Debug)]
pub struct OAuth2Draft {
    /// `None` when the caller sent a value this version does not know.
    pub provider: Option<Provider>,
    /// See [`OAuth2::tenant_id`].
    pub tenant_id: String,
    /// See [`OAuth2::token_url`].
    pub token_url: String,
    /// See [`OAuth2::client_id`].
    pub client_id: String,
    /// The client secret in clear.
    pub client_secret: SecretString,
    /// See [`OAuth2::scope`].
    pub scope: String,
    /// The private key (PEM) in clear.
    pub private_key_pem: SecretString,
    /// See [`OAuth2::subject`].
    pub subject: String,
}

impl Default for OAuth2Draft {
    fn default() -> Self {
        Self {
            provider: Some(Provider::Custom),
            tenant_id: String::new(),
            token_url: String::new(),
            client_id: String::new(),
            client_secret: SecretString::default(),
            scope: String::new(),
            private_key_pem: SecretString::default(),
            subject: String::new(),
        }
    }
}

/// Checks a token endpoint: an absolute `https` URL without user name, password or fragment.
pub fn token_url(value: &str) -> Result<(), String> {
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    let url = url::Url::parse(value).map_err(|e| format!("is not an absolute URL ({e})"))?;
    if url.scheme() != "https" || url.host_str().is_none_or(str::is_empty) {
        return Err("must be an https URL: the client secret or assertion travels to it".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain a user name or password".into());
    }
    if url.fragment().is_some() {
        return Err("must not contain a fragment".into());
    }
    Ok(())
}

/// Whether `token_url` is Microsoft Entra's token endpoint (`login.microsoftonline.com`,
/// whatever the tenant), where only the client secret works with mailroom.
pub fn is_microsoft_endpoint(token_url: &str) -> bool {
    url::Url::parse(token_url).is_ok_and(|url| {
        url.host_str()
            .is_some_and(|host| host.eq_ignore_ascii_case("login.microsoftonline.com"))
    })
}

/// Checks a Microsoft Entra tenant id: a GUID or a domain (`contoso.onmicrosoft.com`), the
/// one path segment of the token URL it goes into.
pub fn tenant_id(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 253 {
        return Err(
            "must be a tenant id: a GUID or a domain such as contoso.onmicrosoft.com".into(),
        );
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(
            "must be a tenant id: a GUID or a domain (letters, digits, '-' and '.')".into(),
        );
    }
    Ok(())
}

/// Checks a private key for the JWT-bearer grant: an RSA key (PKCS#8, as in a Google service
/// account's JSON key, or PKCS#1) that signs RS256, tried on a sample assertion.
pub fn private_key_pem(pem: &str) -> Result<(), String> {
    const WHY: &str = "is not an RSA private key that signs RS256 (PEM: `-----BEGIN PRIVATE \
                       KEY-----` as in a Google service account's JSON key, or `-----BEGIN RSA \
                       PRIVATE KEY-----`)";
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| WHY)?;
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    jsonwebtoken::encode(&header, &serde_json::json!({"check": true}), &key)
        .map(drop)
        .map_err(|_| WHY.to_string())
}

/// A PEM key pasted from a JSON file (`"-----BEGIN PRIVATE KEY-----\n…"`) with its line
/// ends still escaped as `\n`: the key with real line ends.
pub fn unescape_pem(pem: &str) -> Option<String> {
    (!pem.contains('\n') && pem.contains("\\n")).then(|| pem.replace("\\n", "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_fill_what_was_left_empty() {
        assert_eq!(
            effective_token_url(Provider::Microsoft365, "contoso.onmicrosoft.com", ""),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(effective_token_url(Provider::Microsoft365, "", ""), "");
        assert_eq!(
            effective_token_url(Provider::Google, "", ""),
            GOOGLE_TOKEN_URL
        );
        assert_eq!(
            effective_token_url(Provider::Google, "", "https://idp.example.com/t"),
            "https://idp.example.com/t"
        );
        assert_eq!(effective_scope(Provider::Microsoft365, ""), MICROSOFT_SCOPE);
        assert_eq!(effective_scope(Provider::Google, ""), GOOGLE_SCOPE);
        assert_eq!(effective_scope(Provider::Custom, ""), "");
        assert_eq!(
            effective_subject(Provider::Google, "", "soc@x.com"),
            "soc@x.com"
        );
        assert_eq!(effective_subject(Provider::Custom, "", "soc@x.com"), "");
    }

    #[test]
    fn token_urls_and_tenants() {
        assert!(token_url("https://login.example.com/t/oauth2/token?x=1").is_ok());
        for bad in [
            "http://login.example.com/token",
            "login.example.com/token",
            "https://user:pw@login.example.com/token",
            "https://login.example.com/token#x",
            "https://login.example.com/a b",
        ] {
            assert!(token_url(bad).is_err(), "{bad}");
        }
        assert!(tenant_id("0b6f7a4e-1111-2222-3333-444455556666").is_ok());
        assert!(tenant_id("contoso.onmicrosoft.com").is_ok());
        for bad in ["", "a/b", "evil.com/x?", "a b"] {
            assert!(tenant_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn escaped_pem_line_ends_are_restored() {
        assert_eq!(
            unescape_pem("-----BEGIN PRIVATE KEY-----\\nAAA\\n-----END PRIVATE KEY-----\\n")
                .as_deref(),
            Some("-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----\n")
        );
        assert_eq!(unescape_pem("-----BEGIN\nX"), None);
        assert!(
            private_key_pem("-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
        let key = include_str!("../../tests/fixtures/oauth2-service-account.key.pem");
        assert!(private_key_pem(key).is_ok());
        let escaped = key.replace('\n', "\\n");
        assert!(private_key_pem(&unescape_pem(&escaped).unwrap()).is_ok());
    }
}
