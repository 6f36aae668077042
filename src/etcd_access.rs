//! How the etcd store reaches etcd: reads and checks what `--etcd-ca`, `--etcd-cert` /
//! `--etcd-key` and `--etcd-user` / `--etcd-password-file` name, before connecting, so that
//! a missing file, a key without its certificate or a password file others can read stops
//! the start with an error naming the flag. Entry point: [`security`]; [`describe`] says
//! what was tried when etcd refuses.

use std::path::Path;

use anyhow::{bail, Context};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::config::Args;
use crate::store::etcd::{EtcdSecurity, EtcdTls, EtcdUser};

/// The TLS and user `args` ask for. TLS is used when an endpoint is `https://` or a CA or
/// client certificate is given; every endpoint must then be `https://` (or name no scheme).
pub fn security(args: &Args) -> anyhow::Result<EtcdSecurity> {
    let https = args
        .etcd_endpoints
        .iter()
        .any(|e| e.starts_with("https://"));
    let tls = if https || args.etcd_ca.is_some() || args.etcd_cert.is_some() {
        // etcd-client refuses TLS options with an http:// endpoint, and silently dropping
        // TLS for one endpoint of several would defeat it.
        if let Some(plain) = args
            .etcd_endpoints
            .iter()
            .find(|e| e.starts_with("http://"))
        {
            bail!(
                "--etcd-endpoints {plain} is plain text, but TLS to etcd is asked for \
                 (--etcd-ca, --etcd-cert or an https:// endpoint): name every endpoint https://"
            );
        }
        Some(EtcdTls {
            ca_pem: args
                .etcd_ca
                .as_deref()
                .map(|ca| certificates(ca, "--etcd-ca"))
                .transpose()?,
            identity: match (&args.etcd_cert, &args.etcd_key) {
                (Some(cert), Some(key)) => {
                    Some((certificates(cert, "--etcd-cert")?, private_key(key)?))
                }
                (None, None) => None,
                (Some(_), None) => bail!("--etcd-cert needs its private key: --etcd-key"),
                (None, Some(_)) => bail!("--etcd-key needs its certificate: --etcd-cert"),
            },
        })
    } else {
        None
    };
    let user = match (&args.etcd_user, &args.etcd_password_file) {
        (Some(name), Some(file)) => Some(EtcdUser {
            name: name.clone(),
            password: password(file)?,
        }),
        (None, None) => None,
        (Some(_), None) => bail!("--etcd-user needs --etcd-password-file"),
        (None, Some(_)) => bail!("--etcd-password-file needs --etcd-user"),
    };
    if user.is_some() && tls.is_none() {
        tracing::warn!(
            "the etcd password crosses the network in plain text: reach etcd over TLS \
             (--etcd-ca, https:// endpoints)"
        );
    }
    Ok(EtcdSecurity { tls, user })
}

/// How a connection with `security` is made, for an error that says what etcd refused.
pub fn describe(security: &EtcdSecurity) -> String {
    let tls = match &security.tls {
        None => "in plain text".to_string(),
        Some(tls) => format!(
            "over TLS trusting {}, {}",
            if tls.ca_pem.is_some() {
                "--etcd-ca"
            } else {
                "the public web roots"
            },
            if tls.identity.is_some() {
                "with the client certificate of --etcd-cert"
            } else {
                "without a client certificate (--etcd-cert)"
            }
        ),
    };
    match &security.user {
        Some(user) => format!("{tls}, as etcd user {}", user.name),
        None => format!("{tls}, without an etcd user (--etcd-user)"),
    }
}

/// The PEM file at `path` (named by `flag`), once it is seen to hold certificates only.
fn certificates(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {flag} {}", path.display()))?;
    let parsed = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{flag} {} is not a PEM file", path.display()))?;
    if parsed.is_empty() {
        bail!("{flag} {} holds no PEM certificate", path.display());
    }
    Ok(pem)
}

/// The PEM private key at `path` (`--etcd-key`), once it is seen to hold one.
fn private_key(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let pem = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("reading --etcd-key {}", path.display()))?,
    );
    PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("--etcd-key {} holds no PEM private key", path.display()))?;
    Ok(pem)
}

/// The password in `path` (`--etcd-password-file`), without trailing line breaks; refused
/// when others than its owner could read or replace the file (as the master key is), or
/// when it is empty.
fn password(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let flag = "--etcd-password-file";
    crate::crypto::check_private_file(path).with_context(|| format!("checking {flag}"))?;
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading {flag} {} (UTF-8 text)", path.display()))?,
    );
    let password = text.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("{flag} {} is empty", path.display());
    }
    Ok(Zeroizing::new(password.to_string()))
}
