//! How mailroom reaches etcd beyond its endpoints: TLS (etcd's CA, a client certificate)
//! and an etcd user.

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use zeroize::Zeroizing;

/// How mailroom reaches etcd beyond its endpoints. The default, plain text and no user, is
/// etcd's own default: fit for an etcd that only this host can reach.
#[derive(Clone, Default)]
pub struct EtcdSecurity {
    /// Speak TLS to every endpoint.
    pub tls: Option<EtcdTls>,
    /// Authenticate as this user (etcd's `auth enable`).
    pub user: Option<EtcdUser>,
}

/// TLS to etcd.
#[derive(Clone, Default)]
pub struct EtcdTls {
    /// PEM certificates of the CA that signed etcd's; `None`: the public web roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate chain and private key shown to etcd (its `--client-cert-auth`).
    pub identity: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
}

/// An etcd user and its password.
#[derive(Clone)]
pub struct EtcdUser {
    /// The user's name.
    pub name: String,
    /// Its password.
    pub password: Zeroizing<String>,
}

impl EtcdSecurity {
    /// `options` with this TLS and user.
    pub(super) fn apply(&self, mut options: ConnectOptions) -> ConnectOptions {
        if let Some(tls) = &self.tls {
            let config = match &tls.ca_pem {
                Some(ca) => TlsOptions::new().ca_certificate(Certificate::from_pem(ca)),
                None => {
                    TlsOptions::new().trust_anchors(webpki_roots::TLS_SERVER_ROOTS.iter().cloned())
                }
            };
            options = options.with_tls(match &tls.identity {
                Some((cert, key)) => config.identity(Identity::from_pem(cert, key.as_slice())),
                None => config,
            });
        }
        if let Some(user) = &self.user {
            // etcd forgets a token after 5 idle minutes (its --auth-token-ttl), when the
            // user's password is set, and across a restart from a snapshot: without a new
            // one on refusal, every request would fail until mailroom restarts.
            options = options
                .with_user(user.name.as_str(), user.password.as_str())
                .with_auto_token_refresh(true);
        }
        options
    }
}
