//! The newtypes of the SMTP settings: each constructor is the only place its rule lives.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use lettre::message::Mailbox;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// An SMTP server's address: a DNS name or an IP literal, without scheme, port or spaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Host(String);

impl Host {
    /// The name or address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Host {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        if value.is_empty() {
            return Err("is required".into());
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces or control characters".into());
        }
        if value.contains("://") {
            return Err("must be a host name or IP address, without a scheme".into());
        }
        let bare = value
            .strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .unwrap_or(&value);
        if let Ok(ip) = IpAddr::from_str(bare) {
            return Ok(Self(ip.to_string()));
        }
        if value.contains(':') {
            return Err("must not contain a port: set `port` instead".into());
        }
        dns_name(&value)?;
        Ok(Self(value.to_ascii_lowercase()))
    }
}

impl From<Host> for String {
    fn from(host: Host) -> String {
        host.0
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a DNS name: dot-separated labels of letters, digits, `-` and `_`.
fn dns_name(value: &str) -> Result<(), String> {
    if value.len() > 253 {
        return Err("must be at most 253 characters".into());
    }
    let name = value.strip_suffix('.').unwrap_or(value);
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("must be a DNS name: labels of 1 to 63 characters between dots".into());
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("must be a DNS name or IP address: letters, digits, '-', '.'".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("must be a DNS name: a label cannot start or end with '-'".into());
        }
    }
    Ok(())
}

/// A TCP port, 1 to 65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Port(u16);

impl Port {
    /// The port number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u32> for Port {
    type Error = String;

    fn try_from(value: u32) -> Result<Self, String> {
        match u16::try_from(value) {
            Ok(port) if port > 0 => Ok(Self(port)),
            _ if value == 0 => Err("is required (1 to 65535)".into()),
            _ => Err(format!("must be between 1 and 65535, not {value}")),
        }
    }
}

impl From<Port> for u32 {
    fn from(port: Port) -> u32 {
        u32::from(port.0)
    }
}

/// The `From` of emails: `addr` or `Name <addr>`, as lettre parses it. (A delivery worker
/// is a `Sender` in `mail::delivery`; this is an address.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FromAddress(String);

impl FromAddress {
    /// The sender as parsed by lettre.
    pub fn mailbox(&self) -> Mailbox {
        Mailbox::from_str(&self.0).expect("a FromAddress is a valid mailbox by construction")
    }

    /// The sender as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FromAddress {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        if value.is_empty() {
            return Err("is required: `addr` or `Name <addr>`".into());
        }
        if value.chars().any(char::is_control) {
            return Err("must not contain control characters (CR, LF, ...)".into());
        }
        if value.chars().count() > 320 {
            return Err("must be at most 320 characters".into());
        }
        Mailbox::from_str(&value).map_err(|e| format!("must be `addr` or `Name <addr>` ({e})"))?;
        Ok(Self(value))
    }
}

impl From<FromAddress> for String {
    fn from(sender: FromAddress) -> String {
        sender.0
    }
}

/// How the connection to the SMTP server is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Security {
    /// Plain SMTP.
    #[default]
    None,
    /// STARTTLS, required.
    StartTls,
    /// STARTTLS when offered.
    StartTlsOpportunistic,
    /// Implicit TLS.
    Ssl,
}

impl Security {
    /// How well a secret is protected on the way: NONE < STARTTLS_OPPORTUNISTIC < STARTTLS
    /// and SSL (both always encrypted).
    pub fn strength(self) -> u8 {
        match self {
            Security::None => 0,
            Security::StartTlsOpportunistic => 1,
            Security::StartTls | Security::Ssl => 2,
        }
    }

    /// The name a caller knows it by (without the `CONNECTION_SECURITY_` prefix).
    pub fn name(self) -> &'static str {
        match self {
            Security::None => "NONE",
            Security::StartTls => "STARTTLS",
            Security::StartTlsOpportunistic => "STARTTLS_OPPORTUNISTIC",
            Security::Ssl => "SSL",
        }
    }
}

/// An origin token emails may link to: `http` or `https`, a host and an optional port,
/// nothing else. Kept as the `url` crate serialises an origin (`https://thehive.example.com`,
/// host in lower case and punycode, default port left out), which is how links compare.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LinkOrigin(String);

impl LinkOrigin {
    /// The origin, normalised.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `url` leads to this origin. Origins compare whole (scheme, host, port):
    /// `https://thehive.example.com.evil.org` and `https://thehive.example.com@evil.org`
    /// are other hosts.
    fn admits(&self, url: &url::Url) -> bool {
        url.origin().ascii_serialization() == self.0
    }
}

impl TryFrom<String> for LinkOrigin {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        const EXAMPLE: &str = "such as https://thehive.example.com";
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces or control characters".into());
        }
        let url = url::Url::parse(&value)
            .map_err(|e| format!("is not an http(s) origin {EXAMPLE} ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(format!("must be an http or https origin {EXAMPLE}"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain a user name or password".into());
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "must be an origin only (scheme, host, optional port), without path, query \
                 or fragment, {EXAMPLE}"
            ));
        }
        if let Some(url::Host::Domain(name)) = url.host() {
            // An origin is matched whole: `*.example.com` would be kept as written and match
            // nothing, as would a host with a final dot, which links do not carry.
            let label =
                |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !name.split('.').all(label) {
                return Err(format!(
                    "must name one host (letters, digits, hyphens; no pattern such as *, no \
                     final dot): origins are matched whole, {EXAMPLE}"
                ));
            }
        }
        Ok(Self(url.origin().ascii_serialization()))
    }
}

impl From<LinkOrigin> for String {
    fn from(origin: LinkOrigin) -> String {
        origin.0
    }
}

/// Checks that every link `template` makes (with `{token}` replaced by a secret) leads to one
/// of `origins`. The origin is taken with `{token}` standing for two different values: a
/// `{token}` in the host would let the secret choose where the link goes.
pub fn link_within(origins: &[LinkOrigin], template: &str) -> Result<(), String> {
    for stand_in in ["TOKEN", "0"] {
        let url = url::Url::parse(&template.replace("{token}", stand_in))
            .map_err(|e| format!("is not an absolute URL ({e})"))?;
        if !origins.iter().any(|o| o.admits(&url)) {
            let allowed: Vec<&str> = origins.iter().map(LinkOrigin::as_str).collect();
            return Err(format!(
                "must link to one of the SMTP settings' link_origins ({}), not to {}",
                allowed.join(", "),
                url.origin().ascii_serialization()
            ));
        }
    }
    Ok(())
}

/// A domain notifications may be sent from: a DNS name, kept in lower case without a
/// final dot. An address is at it only when its domain is exactly this one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SenderDomain(String);

impl SenderDomain {
    /// The domain.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `domain` (an address's) is this one, ignoring case and a final dot.
    pub fn admits(&self, domain: &str) -> bool {
        domain
            .strip_suffix('.')
            .unwrap_or(domain)
            .eq_ignore_ascii_case(&self.0)
    }
}

impl TryFrom<String> for SenderDomain {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        if value.is_empty() {
            return Err("must not be empty: a domain such as example.com".into());
        }
        if value.contains('@') {
            return Err("must be a domain such as example.com, not an address".into());
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces or control characters".into());
        }
        dns_name(&value)?;
        let domain = value.strip_suffix('.').unwrap_or(&value);
        Ok(Self(domain.to_ascii_lowercase()))
    }
}

impl From<SenderDomain> for String {
    fn from(domain: SenderDomain) -> String {
        domain.0
    }
}

/// Checks PEM text holding one or more certificates.
pub fn certificates_pem(pem: &str) -> Result<(), String> {
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        cert.map_err(|e| format!("is not valid PEM certificates ({e})"))?;
        count += 1;
    }
    if count == 0 {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(())
}

/// Checks PEM text holding a private key.
pub fn private_key_pem(pem: &str) -> Result<(), String> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map(drop)
        .map_err(|_| "is not a PEM private key (PKCS#8, PKCS#1 or SEC1)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "smtp.example.com",
            "localhost",
            "10.0.0.1",
            "::1",
            "[::1]",
            "MX1.Example.org.",
        ] {
            assert!(Host::try_from(ok.to_string()).is_ok(), "{ok}");
        }
        for bad in [
            "", "smtp://x", "x:25", "a b", "a\r\nb", "-x.com", "a..b", "a/b",
        ] {
            assert!(Host::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn link_origins_compare_whole() {
        let origin = |s: &str| LinkOrigin::try_from(s.to_string());
        assert_eq!(
            origin("https://TheHive.example.com/").unwrap().as_str(),
            "https://thehive.example.com"
        );
        assert_eq!(
            origin("https://thehive.example.com:443").unwrap().as_str(),
            "https://thehive.example.com"
        );
        assert_eq!(
            origin("http://10.0.0.1:9000").unwrap().as_str(),
            "http://10.0.0.1:9000"
        );
        for bad in [
            "",
            "thehive.example.com",
            "ftp://thehive.example.com",
            "https://thehive.example.com/login",
            "https://thehive.example.com/?a=b",
            "https://thehive.example.com/#x",
            "https://user@thehive.example.com",
            "https://thehive .example.com",
            "https://*.example.com",
            "HTTPS://TheHive.Example.COM.",
        ] {
            assert!(origin(bad).is_err(), "{bad}");
        }
        assert_eq!(
            origin("https://bücher.example").unwrap().as_str(),
            "https://xn--bcher-kva.example",
            "a name in Unicode is kept as links compare it, in punycode"
        );
        let origins = [origin("https://thehive.example.com").unwrap()];
        for ok in [
            "https://thehive.example.com/reset/{token}",
            "https://THEHIVE.example.com:443/r?t={token}",
            "https://thehive.example.com/#/{token}",
        ] {
            assert!(link_within(&origins, ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://thehive.example.com.evil.org/{token}",
            "https://thehive.example.com@evil.org/{token}",
            "https://evil.org/thehive.example.com/{token}",
            "http://thehive.example.com/{token}",
            "https://thehive.example.com:8443/{token}",
            "https://{token}.thehive.example.com/",
            "https://thehive.example.com{token}/",
        ] {
            assert!(link_within(&origins, bad).is_err(), "{bad}");
        }
        let token_host = [origin("https://token.example.com").unwrap()];
        assert!(
            link_within(&token_host, "https://{token}.example.com/").is_err(),
            "a secret in the host chooses the host"
        );
    }

    #[test]
    fn sender_domains_are_exact() {
        let domain = SenderDomain::try_from("Example.COM.".to_string()).unwrap();
        assert_eq!(domain.as_str(), "example.com");
        assert!(domain.admits("EXAMPLE.com"));
        assert!(!domain.admits("mail.example.com"));
        assert!(!domain.admits("evilexample.com"));
        for bad in ["", "soc@example.com", "exa mple.com", "-x.com", "a..b"] {
            assert!(SenderDomain::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn security_strength_orders_the_modes() {
        assert!(Security::None.strength() < Security::StartTlsOpportunistic.strength());
        assert!(Security::StartTlsOpportunistic.strength() < Security::StartTls.strength());
        assert_eq!(Security::StartTls.strength(), Security::Ssl.strength());
    }

    #[test]
    fn ports_and_senders() {
        assert!(Port::try_from(0).is_err());
        assert!(Port::try_from(70000).is_err());
        assert_eq!(Port::try_from(587).unwrap().get(), 587);
        assert!(FromAddress::try_from("Mail Room <mr@example.com>".to_string()).is_ok());
        assert!(FromAddress::try_from("no-at-sign".to_string()).is_err());
        assert!(FromAddress::try_from("a@b.c\r\nBcc: x@y.z".to_string()).is_err());
    }
}
