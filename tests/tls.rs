//! Transport security: gRPC over TLS, and mTLS that refuses a client without a certificate;
//! and the private-address guard on the SMTP settings.

use crate::support;

use std::path::Path;

use mailroom::config::Args;
use mailroom::proto::v1 as pb;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use support::smtp::install_crypto_provider;
use support::{violated_fields, Bearer, TestServer};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A CA, a server certificate for localhost, and a client certificate, as PEM files.
pub(crate) struct Certificates {
    pub(crate) ca: String,
    pub(crate) client_cert: String,
    pub(crate) client_key: String,
}

/// Writes `server.crt`, `server.key` (for `localhost`) and `ca.crt` into `dir`.
pub(crate) fn certificates(dir: &Path) -> Certificates {
    certificates_of(dir, "mailroom test CA")
}

/// [`certificates`] of a CA named `ca_name`.
fn certificates_of(dir: &Path, ca_name: &str) -> Certificates {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issue = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = issue(vec!["localhost".into()]);
    let (client_cert, client_key) = issue(vec!["cortex.example.com".into()]);
    std::fs::write(dir.join("server.crt"), &server_cert).unwrap();
    std::fs::write(dir.join("server.key"), &server_key).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    Certificates {
        ca: ca.pem(),
        client_cert,
        client_key,
    }
}

/// A server over TLS (requiring a client certificate with `mtls`), its certificates, and a
/// client configuration that trusts its CA.
struct TlsServer {
    server: TestServer,
    certs: Certificates,
    tls: ClientTlsConfig,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn tls_server(mtls: bool) -> TlsServer {
    install_crypto_provider();
    let (files, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let certs = certificates(files.path());
    let mut args = Args::with_data_dir(data.path());
    args.tls_cert = Some(files.path().join("server.crt"));
    args.tls_key = Some(files.path().join("server.key"));
    if mtls {
        args.tls_client_ca = Some(files.path().join("ca.crt"));
    }
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&certs.ca))
        .domain_name("localhost");
    TlsServer {
        server: TestServer::start_with(args).await,
        certs,
        tls,
        _dirs: (files, data),
    }
}

async fn connect(server: &TestServer, tls: ClientTlsConfig) -> Result<Channel, String> {
    Endpoint::from_shared(format!("https://localhost:{}", server.addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

async fn health(channel: Channel) -> Result<i32, String> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn grpc_over_tls() {
    let _watchdog = crate::support::watchdog();
    let TlsServer { server, tls, .. } = tls_server(false).await;
    let channel = connect(&server, tls).await.unwrap();
    assert_eq!(health(channel.clone()).await, Ok(1), "SERVING over TLS");
    let settings = pb::smtp_admin_client::SmtpAdminClient::with_interceptor(
        channel,
        Bearer::new(&server.admin_key),
    )
    .get_smtp_settings(pb::GetSmtpSettingsRequest {})
    .await;
    assert!(settings.is_ok(), "API keys still apply: {settings:?}");
    // Refused by the TLS server once connected, not for want of a listener.
    let plaintext = health(server.channel())
        .await
        .expect_err("no plaintext gRPC on a TLS port");
    assert!(
        plaintext.contains("transport error") && !plaintext.contains("ConnectError"),
        "{plaintext}"
    );
}

/// The TLS alert a refused handshake ended with, as the client read it (`received fatal
/// alert: <name>`): a failure of another kind (nothing listening, a name mismatch, a
/// plaintext server) is not the refusal a test expects.
fn alert(error: &str) -> Option<&str> {
    let after = error.split("received fatal alert: ").nth(1)?;
    after.split(|c: char| !c.is_ascii_alphanumeric()).next()
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate() {
    let _watchdog = crate::support::watchdog();
    let TlsServer {
        server, certs, tls, ..
    } = tls_server(true).await;
    let without = async { health(connect(&server, tls.clone()).await?).await };
    let error = without.await.expect_err("a client without a certificate");
    assert_eq!(alert(&error), Some("CertificateRequired"), "{error}");
    let with_identity = tls.identity(Identity::from_pem(&certs.client_cert, &certs.client_key));
    let channel = connect(&server, with_identity).await.unwrap();
    assert_eq!(health(channel).await, Ok(1));
}

/// A client certificate the server's client CA did not sign is refused: one of an
/// unrelated CA (`unknown_ca`), and one of an impostor CA that took the trusted CA's name
/// (`decrypt_error`: the signature does not verify, RFC 8446 §6.2).
#[tokio::test]
async fn mtls_refuses_a_certificate_of_another_ca() {
    let _watchdog = crate::support::watchdog();
    let TlsServer {
        server, certs, tls, ..
    } = tls_server(true).await;
    let files = tempfile::tempdir().unwrap();
    for (ca, expected) in [
        ("another CA", "UnknownCA"),
        ("mailroom test CA", "DecryptError"),
    ] {
        let foreign = certificates_of(files.path(), ca);
        let identity = Identity::from_pem(&foreign.client_cert, &foreign.client_key);
        let client = tls.clone().identity(identity);
        let with_foreign = async { health(connect(&server, client).await?).await };
        let error = with_foreign.await.expect_err(ca);
        assert_eq!(alert(&error), Some(expected), "{ca}: {error}");
    }
    let own = tls.identity(Identity::from_pem(&certs.client_cert, &certs.client_key));
    let channel = connect(&server, own).await.unwrap();
    assert_eq!(
        health(channel).await,
        Ok(1),
        "the server's own CA still passes"
    );
}

#[tokio::test]
async fn the_private_address_guard_refuses_before_connecting() {
    let _watchdog = crate::support::watchdog();
    let data = tempfile::tempdir().unwrap();
    let mut args = Args::with_data_dir(data.path());
    args.smtp_deny_private_addresses = true;
    let server = TestServer::start_with(args).await;
    let mut smtp = server.smtp(&server.admin_key);
    let smtp_server = support::smtp::SmtpServer::start(Default::default());
    for host in ["127.0.0.1", "10.20.30.40", "localhost"] {
        let settings = pb::SmtpSettings {
            host: host.into(),
            port: smtp_server.addr.port().into(),
            from: "thehive@example.com".into(),
            ..Default::default()
        };
        let status = smtp
            .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
                settings: Some(settings.clone()),
                update_mask: None,
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["settings.host"], "{host}");
        let status = smtp
            .test_smtp_settings(pb::TestSmtpSettingsRequest {
                settings: Some(settings),
                recipient: "soc@example.com".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["settings.host"], "{host}");
    }
    assert!(
        smtp_server.seen().helo.is_empty(),
        "nothing connected to the refused hosts"
    );
    // Saving only resolves and checks: nothing connects to it. (192.0.2.25, a documentation
    // address, is refused too: tests/guard.rs and the guard's unit tests cover the ranges.)
    let public = pb::SmtpSettings {
        host: "2a00:1450:4001:80b::201b".into(),
        port: 25,
        from: "thehive@example.com".into(),
        ..Default::default()
    };
    let saved = smtp
        .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
            settings: Some(public),
            update_mask: None,
        })
        .await;
    assert!(saved.is_ok(), "a public address passes: {saved:?}");
}
