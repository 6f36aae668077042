//! Where an SMTP connection may go: the host is resolved once, with a [`Resolver`] (the
//! system's in production, a test's own in tests), and with `--smtp-deny-private-addresses`
//! every address it resolves to is checked against the special-purpose ranges of IPv4 and
//! IPv6 ([`special`]). The answer is a [`Checked`] set of addresses, which only
//! [`AddressGuard::resolve`] makes: a connection goes to one of those, never to the name
//! resolved again, so that a name that resolves to a public address when checked and to an
//! internal one a moment later (DNS rebinding) cannot lead inside.
//!
//! The guard runs when settings are updated, when they are tested, and before every
//! connection (tests and delivery), so that settings stored before the flag was turned on
//! are refused as well.
//!
//! The ranges are a list here, each with its RFC, read from IANA's IPv4 and IPv6
//! Special-Purpose Address Registries; [`ipnet`] holds and matches them. No crate on
//! crates.io covers them whole: `ip_rfc` (one release, 2020) and `ip_network`'s `is_global`
//! (last release 2021) count `::ffff:127.0.0.1` and global-scope multicast as global, and
//! none looks inside NAT64 or 6to4 addresses; the standard library's `is_global` is not
//! stable. The list errs on the side of refusing: a block the registry marks as not
//! globally reachable is refused whole, even where it carves out a reachable piece
//! (`192.0.0.9`, `2001:1::1`…) that no SMTP relay lives at.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use ipnet::IpNet;

use super::{Host, Port};

/// Resolves a host name to socket addresses.
#[async_trait]
pub trait Resolve: Send + Sync {
    /// Every address of `host` (a DNS name, never an IP literal), with `port`.
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// A shared resolver: a test keeps one handle to see what was asked.
#[async_trait]
impl<R: Resolve + ?Sized> Resolve for Arc<R> {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        (**self).resolve(host, port).await
    }
}

/// The system's resolver (`getaddrinfo`, through tokio).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

#[async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// The resolver the guard asks: the system's by default; tests give their own
/// (`Args::resolver`). Cheap to clone.
#[derive(Clone)]
pub struct Resolver(Arc<dyn Resolve>);

impl Resolver {
    /// A resolver asking `resolve`.
    pub fn new(resolve: impl Resolve + 'static) -> Self {
        Self(Arc::new(resolve))
    }

    /// Every address of `host`: an IP literal is its own address, a name is asked of the
    /// resolver.
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        match host.parse::<IpAddr>() {
            Ok(ip) => Ok(vec![SocketAddr::new(ip, port)]),
            Err(_) => self.0.resolve(host, port).await,
        }
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new(SystemResolver)
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

/// Resolves SMTP hosts and, with `--smtp-deny-private-addresses`, refuses those that are or
/// resolve to a special-purpose address.
#[derive(Clone, Debug, Default)]
pub struct AddressGuard {
    deny_private: bool,
    resolver: Resolver,
}

impl AddressGuard {
    /// A guard resolving with `resolver`, refusing special-purpose addresses if
    /// `deny_private`.
    pub fn new(deny_private: bool, resolver: Resolver) -> Self {
        Self {
            deny_private,
            resolver,
        }
    }

    /// Whether special-purpose addresses are refused.
    pub fn denies_private(&self) -> bool {
        self.deny_private
    }

    /// The resolver asked.
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// Resolves `host` once and checks every address it resolves to: the addresses a
    /// connection may go to, or why there are none.
    pub async fn resolve(&self, host: &Host, port: Port) -> Result<Checked, GuardError> {
        let name = host.as_str();
        let addresses =
            self.resolver
                .resolve(name, port.get())
                .await
                .map_err(|e| GuardError::Unresolved {
                    host: name.to_string(),
                    error: e.to_string(),
                })?;
        if addresses.is_empty() {
            return Err(GuardError::NoAddress {
                host: name.to_string(),
            });
        }
        if self.deny_private {
            // One special address refuses the name: a name that mixes public and internal
            // addresses is one an attacker may be steering.
            for address in &addresses {
                if let Some(range) = special(address.ip()) {
                    return Err(GuardError::Refused {
                        host: name.to_string(),
                        address: address.ip(),
                        range,
                    });
                }
            }
        }
        Ok(Checked(addresses))
    }
}

/// Addresses the guard resolved and let through: the only addresses an SMTP connection
/// goes to.
#[derive(Clone, Debug)]
pub struct Checked(Vec<SocketAddr>);

impl Checked {
    /// The addresses, in the resolver's order.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.0
    }
}

/// Why a host cannot be connected to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The name could not be resolved.
    #[error("cannot resolve {host}: {error}")]
    Unresolved {
        /// The host.
        host: String,
        /// The resolver's error.
        error: String,
    },
    /// The name resolved to nothing.
    #[error("{host} resolves to no address")]
    NoAddress {
        /// The host.
        host: String,
    },
    /// `--smtp-deny-private-addresses` refuses an address of the host.
    #[error("{host} {}", refused_why(host, address, range))]
    Refused {
        /// The host.
        host: String,
        /// The address refused.
        address: IpAddr,
        /// What it is.
        range: String,
    },
}

impl GuardError {
    /// What is wrong with the settings' `host`, for a violation on that field.
    pub fn why(&self) -> String {
        match self {
            Self::Unresolved { error, .. } => {
                format!("cannot be resolved ({error}) to check it is not a private address")
            }
            Self::NoAddress { .. } => "resolves to no address".into(),
            Self::Refused {
                host,
                address,
                range,
            } => refused_why(host, address, range),
        }
    }

    /// Whether the flag refused the host (a configuration problem no retry fixes), rather
    /// than the resolver failing.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }
}

fn refused_why(host: &str, address: &IpAddr, range: &str) -> String {
    if host == address.to_string() {
        format!("is {range}, which --smtp-deny-private-addresses refuses")
    } else {
        format!("resolves to {address}, {range}, which --smtp-deny-private-addresses refuses")
    }
}

/// The ranges that are not a public unicast host: IANA's IPv4 and IPv6 Special-Purpose
/// Address Registries (RFC 6890) less the blocks they mark globally reachable, plus
/// multicast and site-local. The first match names the address (more specific first). The
/// IPv6 forms that carry an IPv4 address a network translates to (mapped, NAT64, 6to4) are
/// judged by that address ([`embedded_v4`]).
const RANGES: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\" (RFC 791, RFC 1122 3.2.1.3)"),
    ("10.0.0.0/8", "a private address (RFC 1918)"),
    (
        "100.64.0.0/10",
        "a shared (carrier-grade NAT) address (RFC 6598)",
    ),
    ("127.0.0.0/8", "a loopback address (RFC 1122 3.2.1.3)"),
    ("169.254.0.0/16", "a link-local address (RFC 3927)"),
    ("172.16.0.0/12", "a private address (RFC 1918)"),
    ("192.0.0.0/24", "an IETF protocol assignment (RFC 6890 2.1)"),
    ("192.0.2.0/24", "a documentation address (RFC 5737)"),
    ("192.88.99.0/24", "a 6to4 relay anycast address (RFC 7526)"),
    ("192.168.0.0/16", "a private address (RFC 1918)"),
    ("198.18.0.0/15", "a benchmarking address (RFC 2544)"),
    ("198.51.100.0/24", "a documentation address (RFC 5737)"),
    ("203.0.113.0/24", "a documentation address (RFC 5737)"),
    ("224.0.0.0/4", "a multicast address (RFC 5771)"),
    (
        "255.255.255.255/32",
        "the limited broadcast address (RFC 919, RFC 8190)",
    ),
    ("240.0.0.0/4", "a reserved address (RFC 1112 4)"),
    ("::/128", "the unspecified address (RFC 4291 2.5.2)"),
    ("::1/128", "the loopback address (RFC 4291 2.5.3)"),
    (
        "::/96",
        "an IPv4-compatible address (deprecated, RFC 4291 2.5.5.1)",
    ),
    (
        "64:ff9b:1::/48",
        "a local-use IPv4/IPv6 translation address (RFC 8215)",
    ),
    ("100::/64", "a discard-only address (RFC 6666)"),
    ("100:0:0:1::/64", "a dummy IPv6 prefix address (RFC 9780)"),
    (
        "2001::/23",
        "an IETF protocol assignment, Teredo included (RFC 2928, RFC 4380)",
    ),
    ("2001:db8::/32", "a documentation address (RFC 3849)"),
    ("3fff::/20", "a documentation address (RFC 9637)"),
    ("5f00::/16", "a segment routing (SRv6) SID (RFC 9602)"),
    ("fc00::/7", "a unique-local address (RFC 4193)"),
    ("fe80::/10", "a link-local address (RFC 4291 2.5.6)"),
    ("fec0::/10", "a site-local address (deprecated, RFC 3879)"),
    ("ff00::/8", "a multicast address (RFC 4291 2.7)"),
];

/// [`RANGES`], parsed (a unit test checks every one parses).
static PARSED: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    RANGES
        .iter()
        .filter_map(|(net, what)| Some((net.parse().ok()?, *what)))
        .collect()
});

/// What `ip` is when it is not a public unicast address (loopback, private, link-local,
/// documentation, multicast…, or an IPv6 form of such an IPv4 address); `None` for a public
/// one.
pub fn special(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(_) => range(ip),
        IpAddr::V6(v6) => {
            if let Some((form, inner)) = embedded_v4(v6) {
                if let Some(what) = special(IpAddr::V4(inner)) {
                    return Some(format!("{form} of {inner}, {what}"));
                }
                // A mapped address is the IPv4 host itself; NAT64 and 6to4 reach it
                // through a translator.
                return None;
            }
            range(ip)
        }
    }
}

fn range(ip: IpAddr) -> Option<String> {
    PARSED
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, what)| what.to_string())
}

/// The IPv4 address that an IPv6 address stands for, and the form: IPv4-mapped
/// (`::ffff:0:0/96`, RFC 4291 2.5.5.2: a dual-stack socket connects to the IPv4 host),
/// IPv4-translated (`::ffff:0:0:0/96`, RFC 2765: SIIT translates it to the IPv4 host),
/// NAT64 (`64:ff9b::/96`, RFC 6052) and 6to4 (`2002::/16`, RFC 3056).
fn embedded_v4(ip: Ipv6Addr) -> Option<(&'static str, Ipv4Addr)> {
    let [first, second, ..] = ip.segments();
    let o = ip.octets();
    if let Some(inner) = ip.to_ipv4_mapped() {
        Some(("an IPv4-mapped address (RFC 4291 2.5.5.2)", inner))
    } else if ip.segments()[..6] == [0, 0, 0, 0, 0xffff, 0] {
        Some((
            "an IPv4-translated address (RFC 2765)",
            Ipv4Addr::new(o[12], o[13], o[14], o[15]),
        ))
    } else if (first, second) == (0x64, 0xff9b) && ip.segments()[2..6] == [0; 4] {
        Some((
            "a NAT64 address (RFC 6052)",
            Ipv4Addr::new(o[12], o[13], o[14], o[15]),
        ))
    } else if first == 0x2002 {
        Some((
            "a 6to4 address (RFC 3056)",
            Ipv4Addr::new(o[2], o[3], o[4], o[5]),
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_range_parses() {
        for (net, _) in RANGES {
            assert!(net.parse::<IpNet>().is_ok(), "{net}");
        }
        assert_eq!(PARSED.len(), RANGES.len());
    }

    #[test]
    fn special_purpose_addresses_are_refused() {
        for refused in [
            // IPv4
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.9",
            "192.0.0.170",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            // IPv6
            "::",
            "::1",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:127.0.0.1",
            "::ffff:0:7f00:1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::8.8.8.8",
            "100::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
        ] {
            assert!(special(ip(refused)).is_some(), "{refused} must be refused");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "192.0.3.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.254",
            "2a00:1450:4001::1b",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(special(ip(public)), None, "{public} is public");
        }
    }

    #[test]
    fn the_refusal_names_the_form_and_the_address_inside() {
        assert_eq!(
            special(ip("2002:7f00:1::")).unwrap(),
            "a 6to4 address (RFC 3056) of 127.0.0.1, a loopback address (RFC 1122 3.2.1.3)"
        );
        assert_eq!(
            special(ip("64:ff9b::a9fe:a9fe")).unwrap(),
            "a NAT64 address (RFC 6052) of 169.254.169.254, a link-local address (RFC 3927)"
        );
    }

    /// Answers `first`, then `after` for every later question; counts them.
    struct Rebinding {
        first: IpAddr,
        after: IpAddr,
        asked: AtomicUsize,
    }

    #[async_trait]
    impl Resolve for Rebinding {
        async fn resolve(&self, _host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            let ip = match self.asked.fetch_add(1, Ordering::SeqCst) {
                0 => self.first,
                _ => self.after,
            };
            Ok(vec![SocketAddr::new(ip, port)])
        }
    }

    #[tokio::test]
    async fn each_resolution_is_checked_and_its_addresses_are_what_is_returned() {
        let rebinding = Arc::new(Rebinding {
            first: ip("2a00:1450:4001::1b"),
            after: ip("127.0.0.1"),
            asked: AtomicUsize::new(0),
        });
        let guard = AddressGuard::new(true, Resolver::new(rebinding.clone()));
        let host = Host::try_from("relay.example.com".to_string()).unwrap();
        let port = Port::try_from(25).unwrap();

        let checked = guard.resolve(&host, port).await.unwrap();
        assert_eq!(
            checked.addresses(),
            [SocketAddr::new(ip("2a00:1450:4001::1b"), 25)],
            "the addresses checked are the addresses given to connect to"
        );
        assert_eq!(rebinding.asked.load(Ordering::SeqCst), 1, "resolved once");

        let refused = guard.resolve(&host, port).await.unwrap_err();
        assert!(refused.is_refusal());
        assert_eq!(
            refused.to_string(),
            "relay.example.com resolves to 127.0.0.1, a loopback address (RFC 1122 3.2.1.3), \
             which --smtp-deny-private-addresses refuses"
        );
        assert_eq!(rebinding.asked.load(Ordering::SeqCst), 2);

        // Without the flag the same answer goes through (resolved all the same).
        let open = AddressGuard::new(false, Resolver::new(rebinding.clone()));
        assert!(open.resolve(&host, port).await.is_ok());
    }

    #[tokio::test]
    async fn an_ip_literal_is_not_asked_of_the_resolver() {
        struct Never;
        #[async_trait]
        impl Resolve for Never {
            async fn resolve(&self, host: &str, _port: u16) -> io::Result<Vec<SocketAddr>> {
                panic!("{host} asked of the resolver")
            }
        }
        let guard = AddressGuard::new(true, Resolver::new(Never));
        let port = Port::try_from(25).unwrap();
        let literal = Host::try_from("::ffff:127.0.0.1".to_string()).unwrap();
        let refused = guard.resolve(&literal, port).await.unwrap_err();
        assert_eq!(
            refused.why(),
            "is an IPv4-mapped address (RFC 4291 2.5.5.2) of 127.0.0.1, a loopback address \
             (RFC 1122 3.2.1.3), which --smtp-deny-private-addresses refuses"
        );
        let public = Host::try_from("8.8.8.8".to_string()).unwrap();
        assert!(guard.resolve(&public, port).await.is_ok());
    }
}
