//! etcd in production: mailroom serves on an etcd reached over TLS with a client
//! certificate (etcd's `--client-cert-auth`) and auth enabled, as an etcd user whose role
//! reads and writes mailroom's prefix only. Without the client certificate, without the
//! password or with a wrong one, the start fails soon with an error saying why; a loose
//! password file or half a key pair stops it before etcd is asked.
#![cfg(feature = "etcd")]

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, Permission, TlsOptions};
use mailroom::config::{Args, StoreKind};
use mailroom::proto::v1 as pb;
use mailroom::server::Mailroom;
use mailroom::store::etcd::EtcdUser;
use support::etcd::{Etcd, EtcdPki};
use support::TestServer;

const PREFIX: &str = "/mailroom/";
const USER: &str = "mailroom";
const PASSWORD: &str = "etcd-password-7719";
const ROOT_PASSWORD: &str = "etcd-root-password-5120";
/// How long a refused start may take: a few of the 2 s `--etcd-timeout` at most.
const REFUSED_WITHIN: Duration = Duration::from_secs(20);

/// An etcd over TLS requiring client certificates, with auth enabled: user `root`, and
/// user [`USER`] whose role reads and writes under [`PREFIX`] only.
async fn secured_etcd() -> Option<Etcd> {
    let mut etcd = Etcd::start_tls().await?;
    let mut client = client(&etcd, None).await;
    client.user_add("root", ROOT_PASSWORD, None).await.unwrap();
    client.user_grant_role("root", "root").await.unwrap();
    client.role_add(USER).await.unwrap();
    client
        .role_grant_permission(USER, Permission::read_write(PREFIX).with_prefix())
        .await
        .unwrap();
    client.user_add(USER, PASSWORD, None).await.unwrap();
    client.user_grant_role(USER, USER).await.unwrap();
    client.auth_enable().await.expect("auth enable");
    etcd.user = Some(EtcdUser {
        name: "root".into(),
        password: ROOT_PASSWORD.to_string().into(),
    });
    Some(etcd)
}

/// An etcd client over TLS with the client certificate, as `user` (name, password).
async fn client(etcd: &Etcd, user: Option<(&str, &str)>) -> Client {
    let pki = etcd.pki.as_ref().unwrap();
    let read = |path: &Path| std::fs::read(path).unwrap();
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read(&pki.ca)))
        .identity(Identity::from_pem(
            read(&pki.client_cert),
            read(&pki.client_key),
        ));
    let mut options = ConnectOptions::new().with_tls(tls);
    if let Some((name, password)) = user {
        options = options.with_user(name, password);
    }
    Client::connect([etcd.endpoint.as_str()], Some(options))
        .await
        .expect("connect to etcd over TLS")
}

/// A private (0600) password file in `dir` holding `password` and a newline, as `echo`
/// writes it.
fn password_file(dir: &Path, password: &str) -> PathBuf {
    let path = dir.join("etcd-password");
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Arguments for a mailroom in `dir` on `etcd` with every `--etcd-*` flag of this change.
fn args(etcd: &Etcd, dir: &Path) -> Args {
    let pki = etcd.pki.as_ref().unwrap();
    let mut args = Args::with_data_dir(dir.join("data"));
    args.store = StoreKind::Etcd;
    args.etcd_endpoints = vec![etcd.endpoint.clone()];
    args.etcd_prefix = PREFIX.into();
    args.etcd_timeout = Duration::from_secs(2);
    args.etcd_ca = Some(pki.ca.clone());
    args.etcd_cert = Some(pki.client_cert.clone());
    args.etcd_key = Some(pki.client_key.clone());
    args.etcd_user = Some(USER.into());
    args.etcd_password_file = Some(password_file(dir, PASSWORD));
    args
}

/// The error that stopped a start with `args`, as main logs it; it must come soon.
async fn refused(args: Args) -> String {
    match tokio::time::timeout(REFUSED_WITHIN, Mailroom::open(args)).await {
        Ok(Ok(_)) => panic!("mailroom started"),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => panic!("the start neither failed nor succeeded within {REFUSED_WITHIN:?}"),
    }
}

#[tokio::test]
async fn etcd_over_tls_as_a_user_serves() {
    let _watchdog = crate::support::watchdog();
    let Some(etcd) = secured_etcd().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(args(&etcd, dir.path())).await;
    server
        .add_user("alice", "Alice", "alice@example.com", &["acme"])
        .await;
    let alice = server
        .directory(&server.admin_key)
        .get_user(pb::GetUserRequest {
            login: "alice".into(),
        })
        .await
        .expect("read back through etcd")
        .into_inner();
    assert_eq!(alice.email, "alice@example.com");
}

/// etcd forgets a token: idle for `--auth-token-ttl` (5 minutes), or after a snapshot
/// restored on restart, or here when the user's password is set (to the same one).
/// mailroom authenticates again rather than failing every request until it restarts.
#[tokio::test]
async fn etcd_forgetting_mailroom_s_token_does_not_lock_it_out() {
    let _watchdog = crate::support::watchdog();
    let Some(etcd) = secured_etcd().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(args(&etcd, dir.path())).await;
    server
        .add_user("bob", "Bob", "bob@example.com", &["acme"])
        .await;
    client(&etcd, Some(("root", ROOT_PASSWORD)))
        .await
        .user_change_password(USER, PASSWORD)
        .await
        .expect("set mailroom's password, dropping its tokens");
    let bob = server
        .directory(&server.admin_key)
        .get_user(pb::GetUserRequest {
            login: "bob".into(),
        })
        .await
        .expect("served with a new token")
        .into_inner();
    assert_eq!(bob.email, "bob@example.com");
}

#[tokio::test]
async fn etcd_refuses_a_mailroom_without_its_client_certificate() {
    let _watchdog = crate::support::watchdog();
    let Some(etcd) = secured_etcd().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(&etcd, dir.path());
    args.etcd_cert = None;
    args.etcd_key = None;
    let error = refused(args).await;
    assert!(
        error.contains("without a client certificate (--etcd-cert)"),
        "{error}"
    );
}

#[tokio::test]
async fn etcd_refuses_a_mailroom_without_the_password() {
    let _watchdog = crate::support::watchdog();
    let Some(etcd) = secured_etcd().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(&etcd, dir.path());
    args.etcd_user = None;
    args.etcd_password_file = None;
    let error = refused(args).await;
    assert!(
        error.contains("without an etcd user (--etcd-user)") && error.contains("permission denied"),
        "{error}"
    );
}

#[tokio::test]
async fn etcd_refuses_a_wrong_password_and_the_error_does_not_show_it() {
    let _watchdog = crate::support::watchdog();
    let Some(etcd) = secured_etcd().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(&etcd, dir.path());
    let wrong = "not-the-etcd-password-3301";
    args.etcd_password_file = Some(password_file(dir.path(), wrong));
    let error = refused(args).await;
    assert!(
        error.contains("as etcd user mailroom") && error.contains("authentication failed"),
        "{error}"
    );
    assert!(!error.contains(wrong), "{error}");
}

/// What stops a start before etcd is asked: none of these needs an etcd.
#[tokio::test]
async fn etcd_flags_that_cannot_work_stop_the_start_naming_the_flag() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = EtcdPki::create(pki_dir.path());
    let mut base = Args::with_data_dir(dir.path().join("data"));
    base.store = StoreKind::Etcd;
    // Nothing listens there: an error below comes before connecting.
    base.etcd_endpoints = vec![format!(
        "https://127.0.0.1:{}",
        support::smtp::refused_port()
    )];
    base.etcd_ca = Some(pki.ca.clone());

    let mut loose = base.clone();
    let file = password_file(dir.path(), PASSWORD);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    loose.etcd_user = Some(USER.into());
    loose.etcd_password_file = Some(file);
    let error = refused(loose).await;
    assert!(
        error.contains("--etcd-password-file") && error.contains("0644"),
        "{error}"
    );

    let mut empty = base.clone();
    let file = password_file(dir.path(), "");
    empty.etcd_user = Some(USER.into());
    empty.etcd_password_file = Some(file);
    let error = refused(empty).await;
    assert!(error.contains("is empty"), "{error}");

    let mut half_pair = base.clone();
    half_pair.etcd_cert = Some(pki.client_cert.clone());
    let error = refused(half_pair).await;
    assert!(error.contains("--etcd-key"), "{error}");

    let mut not_a_certificate = base.clone();
    not_a_certificate.etcd_ca = Some(pki.client_key.clone());
    let error = refused(not_a_certificate).await;
    assert!(error.contains("--etcd-ca"), "{error}");

    let mut plain = base.clone();
    plain.etcd_endpoints = vec!["http://127.0.0.1:2379".into()];
    let error = refused(plain).await;
    assert!(error.contains("plain text"), "{error}");

    // The same pairs through the command line (and so the environment twins).
    for (flag, needs) in [
        ("--etcd-cert", "--etcd-key"),
        ("--etcd-key", "--etcd-cert"),
        ("--etcd-user", "--etcd-password-file"),
        ("--etcd-password-file", "--etcd-user"),
    ] {
        let error = <Args as clap::Parser>::try_parse_from(["mailroom", flag, "x"])
            .expect_err(flag)
            .to_string();
        assert!(error.contains(needs), "{flag}: {error}");
    }
}
