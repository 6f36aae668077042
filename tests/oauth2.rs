//! The OAuth2 relay login (XOAUTH2) against real servers in the test process: a token
//! endpoint over HTTPS serving both grants, and an SMTP server that verifies XOAUTH2 after
//! STARTTLS (tests/support/oauth2.rs). Both grants log in; the endpoint's refusals and
//! silence fail at TOKEN naming the field to fix; a token is refreshed before it expires and
//! once more when the server refuses it; concurrent sends share one fetch; XOAUTH2 never goes
//! over a plain connection; the settings' secrets follow the password's reuse rule; and no
//! secret, assertion or token reaches a response, a log line or the store.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::clock::Clock;
use mailroom::config::Args;
use mailroom::proto::v1 as pb;
use pb::TestStage::{Auth, Token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::support::oauth2::{
    Client, SmtpOptions, TokenEndpoint, XoauthSmtp, OTHER_KEY_PEM, PRIVATE_KEY_PEM,
};
use crate::support::smtp::{refused_port, silent_server, Pki};
use crate::support::{eventually, link_origins, test_clock, violated_fields, TestServer};

/// The mailbox mailroom logs in as.
const USER: &str = "soc@example.com";
/// The application's client secret.
const CLIENT_SECRET: &str = "client-s3cr3t-7f1c9e";
const CLIENT_ID: &str = "6f1d2b7e-0a3c-4d5e-8f90-123456789abc";
const SERVICE_ACCOUNT: &str = "mailroom@thehive-mail.iam.gserviceaccount.com";
const MICROSOFT_SCOPE: &str = "https://outlook.office365.com/.default";
const GOOGLE_SCOPE: &str = "https://mail.google.com/";

/// The application a Microsoft 365 tenant registered (client-credentials grant).
fn application() -> Client {
    Client {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        scope: MICROSOFT_SCOPE.into(),
        subject: String::new(),
        expires_in: 3600,
    }
}

/// A Google service account with domain-wide delegation (JWT-bearer grant).
fn service_account() -> Client {
    Client {
        client_id: SERVICE_ACCOUNT.into(),
        client_secret: String::new(),
        scope: GOOGLE_SCOPE.into(),
        subject: USER.into(),
        expires_in: 3600,
    }
}

/// The OAuth2 block of a Microsoft 365 tenant, its token URL pointed at the test endpoint.
fn microsoft(url: &str) -> pb::Oauth2Settings {
    pb::Oauth2Settings {
        provider: pb::Oauth2Provider::Microsoft365.into(),
        tenant_id: "contoso.onmicrosoft.com".into(),
        token_url: url.into(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        ..Default::default()
    }
}

/// The OAuth2 block of a Google service account, its key pasted from the JSON key file
/// (line ends escaped), its token URL pointed at the test endpoint.
fn google(url: &str) -> pb::Oauth2Settings {
    pb::Oauth2Settings {
        provider: pb::Oauth2Provider::Google.into(),
        token_url: url.into(),
        client_id: SERVICE_ACCOUNT.into(),
        private_key_pem: PRIVATE_KEY_PEM.replace('\n', "\\n"),
        ..Default::default()
    }
}

/// A test server, a token endpoint and an XOAUTH2 SMTP server sharing one test CA.
struct Relay {
    server: TestServer,
    pki: Arc<Pki>,
    endpoint: TokenEndpoint,
    smtp: XoauthSmtp,
}

impl Relay {
    async fn start(client: Client, options: SmtpOptions) -> Self {
        Self::start_on(TestServer::start().await, client, options).await
    }

    async fn start_on(server: TestServer, client: Client, options: SmtpOptions) -> Self {
        let pki = Arc::new(Pki::new());
        let endpoint = TokenEndpoint::start(&pki, client, server.clock.clone()).await;
        let smtp = XoauthSmtp::start(&pki, &endpoint, options).await;
        Self {
            server,
            pki,
            endpoint,
            smtp,
        }
    }

    /// XOAUTH2 settings toward the SMTP server with `oauth2`, over STARTTLS.
    fn settings(&self, oauth2: pb::Oauth2Settings) -> pb::SmtpSettings {
        xoauth2_settings(self.smtp.addr, &self.pki.ca_pem, oauth2)
    }

    async fn test(&self, settings: Option<pb::SmtpSettings>) -> pb::TestSmtpSettingsResponse {
        self.server
            .smtp(&self.server.admin_key)
            .test_smtp_settings(pb::TestSmtpSettingsRequest {
                settings,
                recipient: "check@example.com".into(),
                ..Default::default()
            })
            .await
            .expect("TestSmtpSettings")
            .into_inner()
    }
}

fn xoauth2_settings(
    smtp: SocketAddr,
    ca_pem: &str,
    oauth2: pb::Oauth2Settings,
) -> pb::SmtpSettings {
    pb::SmtpSettings {
        host: "127.0.0.1".into(),
        port: smtp.port().into(),
        from: format!("TheHive <{USER}>"),
        security: pb::ConnectionSecurity::Starttls.into(),
        username: USER.into(),
        tls: Some(pb::TlsSettings {
            ca_certificates_pem: ca_pem.into(),
            ..Default::default()
        }),
        link_origins: link_origins(),
        auth: Some(pb::AuthSettings {
            mechanism: pb::AuthMechanism::Xoauth2.into(),
            oauth2: Some(oauth2),
        }),
        ..Default::default()
    }
}

fn stages(report: &pb::TestSmtpSettingsResponse) -> Vec<pb::TestStage> {
    report.steps.iter().map(|s| s.stage()).collect()
}

/// The step of `stage`, the last one of it.
fn step(report: &pb::TestSmtpSettingsResponse, stage: pb::TestStage) -> &pb::TestStep {
    report
        .steps
        .iter()
        .rev()
        .find(|s| s.stage() == stage)
        .unwrap_or_else(|| panic!("no {stage:?} step: {report:#?}"))
}

#[tokio::test]
async fn the_client_credentials_grant_logs_in_with_xoauth2() {
    let _watchdog = crate::support::watchdog();
    let relay = Relay::start(application(), SmtpOptions::for_user(USER)).await;
    let saved = relay
        .server
        .save_smtp(relay.settings(microsoft(&relay.endpoint.url)))
        .await;
    let auth = saved.auth.expect("auth");
    assert_eq!(auth.mechanism(), pb::AuthMechanism::Xoauth2);
    let oauth2 = auth.oauth2.expect("oauth2");
    assert!(
        oauth2.client_secret_set && !oauth2.private_key_set,
        "{oauth2:?}"
    );
    assert_eq!(oauth2.client_secret, "", "input only");
    assert_eq!(oauth2.tenant_id, "contoso.onmicrosoft.com");

    let report = relay.test(None).await;
    assert!(report.success, "{report:#?}");
    assert_eq!(stages(&report)[0], Token, "TOKEN comes before CONNECT");
    let token = step(&report, Token);
    assert!(token.ok);
    for expected in [
        "client-credentials grant",
        relay.endpoint.url.as_str(),
        CLIENT_ID,
        "valid 1h",
    ] {
        assert!(
            token.detail.contains(expected),
            "{expected}: {}",
            token.detail
        );
    }
    let issued = relay.endpoint.issued();
    assert_eq!(issued.len(), 1);
    assert!(
        !format!("{report:?}").contains(&issued[0]),
        "the token is never reported"
    );
    assert!(step(&report, Auth).ok);
    assert_eq!(step(&report, Auth).smtp_code, 235);
    let seen = relay.smtp.seen();
    assert_eq!(
        seen.auth,
        [("XOAUTH2".to_string(), USER.to_string(), issued[0].clone())]
    );

    // Delivery logs in the same way, with a token of its own (a test's is never cached).
    let ids = relay
        .server
        .send_to(&["alice@example.com"], "Case #42", "A new alert.")
        .await;
    let sent = relay
        .server
        .wait_for_state(&ids[0], pb::MessageState::Sent)
        .await;
    assert_eq!(sent.attempts, 1);
    assert_eq!(relay.endpoint.requests(), 2);
    assert_eq!(relay.smtp.seen().messages.len(), 2);
}

#[tokio::test]
async fn the_jwt_bearer_grant_logs_in_with_a_service_account_key() {
    let _watchdog = crate::support::watchdog();
    let relay = Relay::start(service_account(), SmtpOptions::for_user(USER)).await;
    let saved = relay
        .server
        .save_smtp(relay.settings(google(&relay.endpoint.url)))
        .await;
    let oauth2 = saved.auth.unwrap().oauth2.unwrap();
    assert!(
        oauth2.private_key_set && !oauth2.client_secret_set,
        "{oauth2:?}"
    );
    assert_eq!(oauth2.private_key_pem, "", "input only");

    // The endpoint checks the assertion's signature, issuer, audience (its own URL),
    // subject (the username, Google's default), scope (Google's) and expiry.
    let report = relay.test(None).await;
    assert!(report.success, "{report:#?}");
    let token = step(&report, Token);
    assert!(
        token.detail.contains("JWT-bearer grant"),
        "{}",
        token.detail
    );
    assert_eq!(relay.smtp.seen().accepted, 1);

    // An assertion signed with another key: refused by the endpoint, at TOKEN.
    let other = pb::Oauth2Settings {
        private_key_pem: OTHER_KEY_PEM.into(),
        ..google(&relay.endpoint.url)
    };
    let report = relay.test(Some(relay.settings(other))).await;
    assert!(!report.success);
    assert_eq!(stages(&report), [Token], "{report:#?}");
    let token = step(&report, Token);
    assert!(!token.ok);
    for expected in ["invalid_grant", "auth.oauth2.private_key_pem"] {
        assert!(
            token.detail.contains(expected),
            "{expected}: {}",
            token.detail
        );
    }
    // An assertion for another mailbox: refused too.
    let someone_else = pb::Oauth2Settings {
        subject: "ceo@example.com".into(),
        ..google(&relay.endpoint.url)
    };
    let report = relay.test(Some(relay.settings(someone_else))).await;
    assert_eq!(stages(&report), [Token], "{report:#?}");
    assert_eq!(
        relay.smtp.seen().connections,
        1,
        "TOKEN failures connect nowhere"
    );
}

#[tokio::test]
async fn a_wrong_client_secret_fails_at_token_naming_the_field() {
    let _watchdog = crate::support::watchdog();
    let relay = Relay::start(application(), SmtpOptions::for_user(USER)).await;
    let wrong = pb::Oauth2Settings {
        client_secret: "not-the-secret-3e9d".into(),
        ..microsoft(&relay.endpoint.url)
    };
    let report = relay.test(Some(relay.settings(wrong))).await;
    assert!(!report.success);
    assert_eq!(stages(&report), [Token], "{report:#?}");
    let token = step(&report, Token);
    assert!(!token.ok);
    for expected in [
        "invalid_client",
        "auth.oauth2.client_secret",
        "AADSTS7000215",
    ] {
        assert!(
            token.detail.contains(expected),
            "{expected}: {}",
            token.detail
        );
    }
    assert!(report.summary.contains("TOKEN"), "{}", report.summary);
    assert!(!format!("{report:?}").contains("not-the-secret"));
    assert_eq!(
        relay.smtp.seen().connections,
        0,
        "nothing sent to the SMTP server"
    );

    // A scope the endpoint does not grant names the scope.
    let scope = pb::Oauth2Settings {
        scope: "https://graph.microsoft.com/.default".into(),
        ..microsoft(&relay.endpoint.url)
    };
    let report = relay.test(Some(relay.settings(scope))).await;
    let token = step(&report, Token);
    assert!(
        token.detail.contains("auth.oauth2.scope"),
        "{}",
        token.detail
    );
}

#[tokio::test]
async fn a_token_is_refreshed_before_it_expires_and_when_the_server_refuses_it() {
    let _watchdog = crate::support::watchdog();
    let options = SmtpOptions {
        one_message_per_connection: true,
        ..SmtpOptions::for_user(USER)
    };
    let relay = Relay::start(application(), options).await;
    relay
        .server
        .save_smtp(relay.settings(microsoft(&relay.endpoint.url)))
        .await;
    let send = async |subject: &str| {
        let ids = relay
            .server
            .send_to(&["alice@example.com"], subject, "body")
            .await;
        relay
            .server
            .wait_for_state(&ids[0], pb::MessageState::Sent)
            .await
    };
    send("first").await;
    assert_eq!(relay.endpoint.requests(), 1);
    // Within the token's life, on a new connection: the same token.
    send("second").await;
    assert_eq!(relay.endpoint.requests(), 1);

    // 56 minutes on, the hour-long token is refreshed before it is used again.
    relay.server.advance(Duration::from_secs(56 * 60));
    send("third").await;
    assert_eq!(relay.endpoint.requests(), 2);
    let tokens: Vec<String> = relay.smtp.seen().auth.into_iter().map(|a| a.2).collect();
    assert_eq!(tokens[0], tokens[1]);
    assert_ne!(tokens[1], tokens[2]);
    assert_eq!(tokens[2], relay.endpoint.issued()[1]);

    // The provider revokes it early: the server's 535 makes mailroom fetch another and log
    // in again, within the same attempt.
    relay.endpoint.revoke_all();
    let sent = send("fourth").await;
    assert_eq!(sent.attempts, 1, "{sent:?}");
    assert_eq!(relay.endpoint.requests(), 3);
    let seen = relay.smtp.seen();
    let last: Vec<&str> = seen.auth[3..].iter().map(|a| a.2.as_str()).collect();
    assert_eq!(
        last,
        [tokens[2].as_str(), relay.endpoint.issued()[2].as_str()]
    );
    assert_eq!(seen.messages.len(), 4);
}

#[tokio::test]
async fn a_token_endpoint_down_or_silent_fails_at_token_within_the_timeout() {
    let _watchdog = crate::support::watchdog();
    let relay = Relay::start(application(), SmtpOptions::for_user(USER)).await;
    let silent = silent_server().await;
    for (url, expected) in [
        (
            format!("https://127.0.0.1:{}/token", refused_port()),
            "cannot be reached",
        ),
        (format!("https://{silent}/token"), "did not answer"),
    ] {
        let settings = pb::SmtpSettings {
            timeout: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            ..relay.settings(microsoft(&url))
        };
        let started = Instant::now();
        let report = relay.test(Some(settings)).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(6), "{url}: {took:?}");
        assert!(!report.success);
        assert_eq!(stages(&report), [Token], "{report:#?}");
        let token = step(&report, Token);
        assert!(
            token.detail.contains(expected),
            "{expected}: {}",
            token.detail
        );
        assert!(
            token.detail.contains("auth.oauth2.token_url"),
            "{}",
            token.detail
        );
    }
    assert_eq!(relay.smtp.seen().connections, 0);
}

#[tokio::test]
async fn xoauth2_never_goes_over_a_plain_connection() {
    let _watchdog = crate::support::watchdog();
    let no_starttls = SmtpOptions {
        starttls: false,
        ..SmtpOptions::for_user(USER)
    };
    let relay = Relay::start(application(), no_starttls).await;
    let admin = relay.server.smtp(&relay.server.admin_key);

    // Security NONE cannot be saved with XOAUTH2.
    let plain = pb::SmtpSettings {
        security: pb::ConnectionSecurity::None.into(),
        ..relay.settings(microsoft(&relay.endpoint.url))
    };
    let status = admin
        .clone()
        .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
            settings: Some(plain),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert!(
        violated_fields(&status).contains(&"settings.auth.mechanism".to_string()),
        "{status:?}"
    );

    // Opportunistic STARTTLS to a server that does not offer it: the token stays here.
    let opportunistic = pb::SmtpSettings {
        security: pb::ConnectionSecurity::StarttlsOpportunistic.into(),
        ..relay.settings(microsoft(&relay.endpoint.url))
    };
    let report = relay.test(Some(opportunistic)).await;
    assert!(!report.success);
    let auth = step(&report, Auth);
    assert!(!auth.ok);
    assert!(auth.detail.contains("not sent"), "{}", auth.detail);
    assert!(relay.smtp.seen().auth.is_empty(), "no AUTH sent in clear");

    // A server that does not advertise XOAUTH2 is not sent it.
    let unadvertised = Relay::start(
        application(),
        SmtpOptions {
            advertise_xoauth2: false,
            ..SmtpOptions::for_user(USER)
        },
    )
    .await;
    let report = unadvertised
        .test(Some(
            unadvertised.settings(microsoft(&unadvertised.endpoint.url)),
        ))
        .await;
    let auth = step(&report, Auth);
    assert!(!auth.ok);
    assert!(
        auth.detail.contains("does not offer AUTH XOAUTH2"),
        "{}",
        auth.detail
    );
    assert!(unadvertised.smtp.seen().auth.is_empty());
}

/// The Prometheus samples of `/metrics`, by name with labels.
async fn scrape(addr: SocketAddr) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sends_share_one_token_fetch() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let mut args = Args::with_data_dir(dir.path());
    args.clock = test_clock();
    args.workers = 8;
    args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let options = SmtpOptions {
        one_message_per_connection: true,
        ..SmtpOptions::for_user(USER)
    };
    let relay = Relay::start_on(TestServer::start_with(args).await, application(), options).await;
    relay
        .server
        .save_smtp(relay.settings(microsoft(&relay.endpoint.url)))
        .await;
    let to: Vec<String> = (0..24).map(|n| format!("analyst{n}@example.com")).collect();
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let ids = relay
        .server
        .send_to(&to, "Case #7", "Eight senders at once.")
        .await;
    for id in &ids {
        relay
            .server
            .wait_for_state(id, pb::MessageState::Sent)
            .await;
    }
    let seen = relay.smtp.seen();
    assert_eq!(seen.messages.len(), 24);
    assert!(
        seen.accepted >= 24,
        "a login per message: {}",
        seen.accepted
    );
    assert_eq!(
        relay.endpoint.requests(),
        1,
        "one fetch for every connection"
    );
    let metrics = scrape(relay.server.metrics.unwrap()).await;
    assert!(
        metrics.contains(r#"mailroom_oauth2_token_fetches_total{outcome="issued"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn providers_refusals_come_with_a_hint_and_plain_can_be_forced() {
    let _watchdog = crate::support::watchdog();
    let refusing = SmtpOptions {
        refuse_auth: Some(
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled \
             for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information."
                .into(),
        ),
        ..SmtpOptions::for_user(USER)
    };
    let relay = Relay::start(application(), refusing).await;
    let report = relay
        .test(Some(relay.settings(microsoft(&relay.endpoint.url))))
        .await;
    let auth = step(&report, Auth);
    assert!(!auth.ok);
    assert_eq!(auth.smtp_code, 535);
    assert!(auth.detail.contains("Set-CASMailbox"), "{}", auth.detail);

    // A relay that takes PLAIN without advertising it: AUTO finds no mechanism, PLAIN works.
    let quiet = Relay::start(
        application(),
        SmtpOptions {
            advertise_xoauth2: false,
            unadvertised_plain: Some(("relay".into(), "relay-password".into())),
            ..SmtpOptions::for_user(USER)
        },
    )
    .await;
    let password = |mechanism: pb::AuthMechanism| pb::SmtpSettings {
        host: "127.0.0.1".into(),
        port: quiet.smtp.addr.port().into(),
        from: format!("TheHive <{USER}>"),
        security: pb::ConnectionSecurity::Starttls.into(),
        username: "relay".into(),
        password: "relay-password".into(),
        tls: Some(pb::TlsSettings {
            ca_certificates_pem: quiet.pki.ca_pem.clone(),
            ..Default::default()
        }),
        auth: Some(pb::AuthSettings {
            mechanism: mechanism.into(),
            oauth2: None,
        }),
        ..Default::default()
    };
    let report = quiet.test(Some(password(pb::AuthMechanism::Auto))).await;
    assert!(!step(&report, Auth).ok, "{report:#?}");
    let report = quiet.test(Some(password(pb::AuthMechanism::Plain))).await;
    assert!(report.success, "{report:#?}");
    assert_eq!(quiet.smtp.seen().auth[0].0, "PLAIN");
}

#[tokio::test]
async fn the_client_secret_and_private_key_are_reused_only_on_the_same_terms() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let pki = Pki::new();
    let url = "https://login.example.com/contoso/oauth2/v2.0/token";
    let addr: SocketAddr = "127.0.0.1:587".parse().unwrap();
    let mut admin = server.smtp(&server.admin_key);
    let update = |settings: pb::SmtpSettings, mask: &[&str]| pb::UpdateSmtpSettingsRequest {
        settings: Some(settings),
        update_mask: (!mask.is_empty()).then(|| prost_types::FieldMask {
            paths: mask.iter().map(|p| p.to_string()).collect(),
        }),
    };
    server
        .save_smtp(xoauth2_settings(addr, &pki.ca_pem, microsoft(url)))
        .await;
    let with = |change: pb::Oauth2Settings| xoauth2_settings(addr, &pki.ca_pem, change);
    let blank = pb::Oauth2Settings::default();

    // The secret goes where it went before, or is given again.
    for (settings, mask) in [
        (
            with(pb::Oauth2Settings {
                token_url: "https://evil.example.net/token".into(),
                ..blank.clone()
            }),
            &["auth.oauth2.token_url"][..],
        ),
        (
            // The preset's URL, of another tenant.
            with(pb::Oauth2Settings {
                tenant_id: "fabrikam.onmicrosoft.com".into(),
                ..blank.clone()
            }),
            &["auth.oauth2.tenant_id", "auth.oauth2.token_url"],
        ),
        (
            with(pb::Oauth2Settings {
                client_id: "another-app".into(),
                ..blank.clone()
            }),
            &["auth.oauth2.client_id"],
        ),
        (
            with(pb::Oauth2Settings {
                provider: pb::Oauth2Provider::Unspecified.into(),
                ..blank.clone()
            }),
            &["auth.oauth2.provider"],
        ),
        (
            pb::SmtpSettings {
                host: "smtp.evil.example.net".into(),
                ..with(blank.clone())
            },
            &["host"],
        ),
        (
            pb::SmtpSettings {
                username: "ceo@example.com".into(),
                ..with(blank.clone())
            },
            &["username"],
        ),
        (
            pb::SmtpSettings {
                tls: Some(pb::TlsSettings {
                    accept_invalid_certificates: true,
                    ..Default::default()
                }),
                ..with(blank.clone())
            },
            &["tls.accept_invalid_certificates"],
        ),
    ] {
        let status = admin
            .update_smtp_settings(update(settings, mask))
            .await
            .unwrap_err();
        assert_eq!(
            violated_fields(&status),
            ["settings.auth.oauth2.client_secret"],
            "{mask:?}: {status:?}"
        );
    }
    // The scope changes what is asked, not where the secret goes.
    let scoped = admin
        .update_smtp_settings(update(
            with(pb::Oauth2Settings {
                scope: "https://outlook.office.com/.default".into(),
                ..blank.clone()
            }),
            &["auth.oauth2.scope"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(scoped.auth.unwrap().oauth2.unwrap().client_secret_set);
    // Given again, it moves.
    let moved = admin
        .update_smtp_settings(update(
            with(pb::Oauth2Settings {
                token_url: "https://login.example.org/token".into(),
                client_secret: "a-new-secret".into(),
                ..blank.clone()
            }),
            &["auth.oauth2.token_url", "auth.oauth2.client_secret"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(moved.auth.unwrap().oauth2.unwrap().client_secret_set);

    // The private key: the subject it acts for is part of its terms.
    server
        .save_smtp(xoauth2_settings(addr, &pki.ca_pem, google(url)))
        .await;
    let status = admin
        .update_smtp_settings(update(
            with(pb::Oauth2Settings {
                subject: "ceo@example.com".into(),
                ..blank.clone()
            }),
            &["auth.oauth2.subject"],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["settings.auth.oauth2.private_key_pem"]
    );

    // Another mechanism forgets the OAuth2 client and its secrets.
    let plain = admin
        .update_smtp_settings(update(
            pb::SmtpSettings {
                auth: Some(pb::AuthSettings {
                    mechanism: pb::AuthMechanism::Login.into(),
                    oauth2: None,
                }),
                password: "a-password".into(),
                ..with(blank.clone())
            },
            &["auth.mechanism", "password"],
        ))
        .await
        .unwrap()
        .into_inner();
    let auth = plain.auth.unwrap();
    assert_eq!(auth.mechanism(), pb::AuthMechanism::Login);
    assert!(auth.oauth2.is_none());
    assert!(plain.password_set);
}

#[tokio::test]
async fn xoauth2_settings_are_checked_field_by_field() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let pki = Pki::new();
    let url = "https://login.example.com/token";
    let addr: SocketAddr = "127.0.0.1:587".parse().unwrap();
    let mut admin = server.smtp(&server.admin_key);
    let with = |oauth2: pb::Oauth2Settings| xoauth2_settings(addr, &pki.ca_pem, oauth2);
    for (settings, field) in [
        (
            pb::SmtpSettings {
                password: "a-password".into(),
                ..with(microsoft(url))
            },
            "settings.password",
        ),
        (
            pb::SmtpSettings {
                username: String::new(),
                ..with(microsoft(url))
            },
            "settings.username",
        ),
        (
            with(pb::Oauth2Settings {
                private_key_pem: String::new(),
                client_secret: "a-secret".into(),
                ..google(url)
            }),
            "settings.auth.oauth2.private_key_pem",
        ),
        (
            with(pb::Oauth2Settings {
                private_key_pem: PRIVATE_KEY_PEM.into(),
                ..microsoft(url)
            }),
            "settings.auth.oauth2.private_key_pem",
        ),
        (
            with(pb::Oauth2Settings {
                private_key_pem:
                    "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n".into(),
                ..google(url)
            }),
            "settings.auth.oauth2.private_key_pem",
        ),
        (
            with(pb::Oauth2Settings {
                token_url: String::new(),
                tenant_id: String::new(),
                ..microsoft(url)
            }),
            "settings.auth.oauth2.tenant_id",
        ),
        (
            with(pb::Oauth2Settings {
                tenant_id: "contoso/../evil".into(),
                ..microsoft(url)
            }),
            "settings.auth.oauth2.tenant_id",
        ),
        (
            with(pb::Oauth2Settings {
                token_url: "http://login.example.com/token".into(),
                ..microsoft(url)
            }),
            "settings.auth.oauth2.token_url",
        ),
        (
            with(pb::Oauth2Settings {
                client_secret: String::new(),
                ..microsoft(url)
            }),
            "settings.auth.oauth2.client_secret",
        ),
        (
            with(pb::Oauth2Settings {
                client_id: String::new(),
                ..microsoft(url)
            }),
            "settings.auth.oauth2.client_id",
        ),
    ] {
        let status = admin
            .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
                settings: Some(settings),
                update_mask: None,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            violated_fields(&status).contains(&field.to_string()),
            "{field}: {status:?}"
        );
    }
    // Microsoft's certificate credentials are not supported, with the preset or with its
    // token endpoint given by hand: the private key is refused, saying so.
    let microsoft_by_hand = pb::Oauth2Settings {
        provider: pb::Oauth2Provider::Unspecified.into(),
        tenant_id: String::new(),
        token_url: "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
            .into(),
        ..microsoft(url)
    };
    for oauth2 in [microsoft(url), microsoft_by_hand] {
        let status = admin
            .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
                settings: Some(with(pb::Oauth2Settings {
                    client_secret: String::new(),
                    private_key_pem: PRIVATE_KEY_PEM.into(),
                    ..oauth2
                })),
                update_mask: None,
            })
            .await
            .unwrap_err();
        assert!(
            violated_fields(&status).contains(&"settings.auth.oauth2.private_key_pem".to_string()),
            "{status:?}"
        );
        assert!(
            format!("{status:?}").contains("certificate credentials")
                && format!("{status:?}").contains("are not supported"),
            "{status:?}"
        );
    }
    // A client secret without XOAUTH2 is a mistake, not silently dropped.
    let status = admin
        .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
            settings: Some(pb::SmtpSettings {
                auth: Some(pb::AuthSettings {
                    mechanism: pb::AuthMechanism::Auto.into(),
                    oauth2: Some(microsoft(url)),
                }),
                ..with(microsoft(url))
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["settings.auth.oauth2.client_secret"]
    );
}

/// Every file under `dir`, as bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

#[tokio::test]
async fn no_secret_assertion_or_token_reaches_a_response_the_log_or_the_store() {
    let _watchdog = crate::support::watchdog();
    use crate::support::process::Process;
    use crate::support::Bearer;

    let dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(Pki::new());
    // The binary runs on the system clock.
    let microsoft_endpoint = TokenEndpoint::start(&pki, application(), Clock::default()).await;
    let google_endpoint = TokenEndpoint::start(&pki, service_account(), Clock::default()).await;
    let microsoft_smtp =
        XoauthSmtp::start(&pki, &microsoft_endpoint, SmtpOptions::for_user(USER)).await;
    let google_smtp = XoauthSmtp::start(&pki, &google_endpoint, SmtpOptions::for_user(USER)).await;
    let process = Process::start(dir.path(), &[]);
    let admin_key = std::fs::read_to_string(dir.path().join("admin.key"))
        .unwrap()
        .trim()
        .to_string();
    let channel = process.channel().await;
    let mut admin = pb::smtp_admin_client::SmtpAdminClient::with_interceptor(
        channel.clone(),
        Bearer::new(&admin_key),
    );
    let mut responses = Vec::new();
    for settings in [
        xoauth2_settings(google_smtp.addr, &pki.ca_pem, google(&google_endpoint.url)),
        xoauth2_settings(
            microsoft_smtp.addr,
            &pki.ca_pem,
            microsoft(&microsoft_endpoint.url),
        ),
    ] {
        let saved = admin
            .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
                settings: Some(settings),
                update_mask: None,
            })
            .await
            .unwrap()
            .into_inner();
        responses.push(format!("{saved:?}"));
        let report = admin
            .test_smtp_settings(pb::TestSmtpSettingsRequest {
                settings: None,
                recipient: "check@example.com".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(report.success, "{report:#?}");
        responses.push(format!("{report:?}"));
        let got = admin
            .get_smtp_settings(pb::GetSmtpSettingsRequest {})
            .await
            .unwrap()
            .into_inner();
        responses.push(format!("{got:?}"));
    }
    let mut notifier =
        pb::notifier_client::NotifierClient::with_interceptor(channel, Bearer::new(&admin_key));
    let queued = notifier
        .send_to_addresses(pb::SendToAddressesRequest {
            organisation: "acme".into(),
            to: vec!["alice@example.com".into()],
            subject: "Case #9".into(),
            body: "body".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = queued.message_ids[0].clone();
    eventually(Duration::from_secs(10), "the message sent", async || {
        let message = notifier
            .get_message(pb::GetMessageRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner();
        if message.state() == pb::MessageState::Sent {
            Ok(())
        } else {
            Err(message)
        }
    })
    .await;
    let (status, log) = process.terminate().await;
    assert!(status.success());

    // What must stay secret: the client secret, the private key (any line of it), every
    // assertion and every access token.
    let mut secrets: Vec<String> = vec![CLIENT_SECRET.to_string()];
    secrets.extend(
        PRIVATE_KEY_PEM
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(String::from),
    );
    let assertions: Vec<String> = google_endpoint
        .ledger
        .bodies
        .lock()
        .unwrap()
        .iter()
        .flat_map(|body| {
            url::form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .filter(|(k, _)| k == "assertion")
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!assertions.is_empty());
    secrets.extend(assertions);
    secrets.extend(google_endpoint.issued());
    secrets.extend(microsoft_endpoint.issued());
    assert_eq!(microsoft_endpoint.issued().len(), 2, "test, then delivery");
    let store = files(dir.path());
    assert!(!store.is_empty());
    for secret in &secrets {
        for response in &responses {
            assert!(
                !response.contains(secret.as_str()),
                "a secret answered: {response}"
            );
        }
        assert!(!log.contains(secret.as_str()), "a secret logged: {secret}");
        for (file, bytes) in &store {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret stored in {file}"
            );
        }
    }
    assert!(
        log.contains("OAuth2 access token fetched"),
        "the fetches are logged"
    );
}

/// Secrets on the failure paths, through the built binary logging everything (trace, JSON):
/// a wrong SMTP password refused at AUTH, by TestSmtpSettings and by a delivery; a TLS
/// client key that is not its certificate's, in a refused test; an OAuth2 client secret the
/// token endpoint refuses. None of them reaches a log line.
#[tokio::test]
async fn no_secret_reaches_the_log_on_a_failure_path() {
    let _watchdog = crate::support::watchdog();
    use crate::support::process::Process;
    use crate::support::smtp::SmtpServer;
    use crate::support::Bearer;
    const WRONG_PASSWORD: &str = "wr0ng-relay-password-5512";
    const WRONG_SECRET: &str = "wr0ng-client-s3cr3t-9d41";

    let dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(Pki::new());
    let smtp = SmtpServer::with_auth(&pki, "relay", "relay-password");
    let endpoint = TokenEndpoint::start(&pki, application(), Clock::default()).await;
    // A client certificate and a private key that is not its own.
    let certified = rcgen::KeyPair::generate().unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["mailroom.example.com".into()])
        .unwrap()
        .self_signed(&certified)
        .unwrap()
        .pem();
    let client_key = rcgen::KeyPair::generate().unwrap().serialize_pem();

    let process = Process::start(dir.path(), &[]);
    let admin = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
    let channel = process.channel().await;
    let mut admin_smtp = pb::smtp_admin_client::SmtpAdminClient::with_interceptor(
        channel.clone(),
        Bearer::new(admin.trim()),
    );
    let wrong_password = pb::SmtpSettings {
        host: "127.0.0.1".into(),
        port: smtp.addr.port().into(),
        from: "thehive@example.com".into(),
        security: pb::ConnectionSecurity::Starttls.into(),
        username: "relay".into(),
        password: WRONG_PASSWORD.into(),
        tls: Some(pb::TlsSettings {
            ca_certificates_pem: pki.ca_pem.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let with_client_key = pb::SmtpSettings {
        tls: Some(pb::TlsSettings {
            ca_certificates_pem: pki.ca_pem.clone(),
            client_certificate_pem: certificate,
            client_key_pem: client_key.clone(),
            ..Default::default()
        }),
        ..wrong_password.clone()
    };
    let wrong_secret = xoauth2_settings(
        smtp.addr,
        &pki.ca_pem,
        pb::Oauth2Settings {
            client_secret: WRONG_SECRET.into(),
            ..microsoft(&endpoint.url)
        },
    );
    // A client key not the certificate's is refused before any connection, naming it.
    let refused = admin_smtp
        .test_smtp_settings(pb::TestSmtpSettingsRequest {
            settings: Some(with_client_key),
            recipient: "soc@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        crate::support::violated_fields(&refused),
        ["settings.tls.client_key_pem"],
        "{refused:?}"
    );
    for (what, settings) in [
        ("a wrong password", wrong_password.clone()),
        ("a refused client secret", wrong_secret),
    ] {
        let report = admin_smtp
            .test_smtp_settings(pb::TestSmtpSettingsRequest {
                settings: Some(settings),
                recipient: "soc@example.com".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!report.success, "{what}: {report:#?}");
    }
    // Delivery with the wrong password saved: refused at AUTH, to be retried.
    admin_smtp
        .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
            settings: Some(wrong_password),
            update_mask: None,
        })
        .await
        .unwrap();
    let mut notifier =
        pb::notifier_client::NotifierClient::with_interceptor(channel, Bearer::new(admin.trim()));
    let id = notifier
        .send_to_addresses(pb::SendToAddressesRequest {
            organisation: "acme".into(),
            to: vec!["alice@example.com".into()],
            subject: "refused".into(),
            body: "body".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message_ids
        .remove(0);
    eventually(
        Duration::from_secs(10),
        "the delivery refused",
        async || {
            let message = notifier
                .get_message(pb::GetMessageRequest { id: id.clone() })
                .await
                .unwrap()
                .into_inner();
            (message.state() == pb::MessageState::Retrying).then_some(())
        },
    )
    .await;
    drop(notifier);
    drop(admin_smtp);
    let (status, log) = process.terminate().await;
    assert!(status.success(), "{log}");

    assert!(
        log.contains("TestSmtpSettings") && log.contains("failed, will retry"),
        "the failures are logged: {log}"
    );
    let mut secrets = vec![WRONG_PASSWORD.to_string(), WRONG_SECRET.to_string()];
    secrets.extend(
        client_key
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(String::from),
    );
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "a secret logged: {secret}");
    }
}
