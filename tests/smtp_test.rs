//! TestSmtpSettings against a real SMTP server in the test process: success with each
//! connection security, each failure at its stage with the server's code, the timeout, and
//! the rules on unsaved settings and the stored password.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::proto::v1 as pb;
use support::smtp::{
    mtls_terminator, refused_port, silent_server, tls_terminator, Options, Pki, SmtpServer,
};
use support::{violated_fields, TestServer};

const PASSWORD: &str = "smtp-test-password-1234";
const RECIPIENT: &str = "soc@example.com";

fn settings(port: u16, security: pb::ConnectionSecurity) -> pb::SmtpSettings {
    pb::SmtpSettings {
        host: "127.0.0.1".into(),
        port: port.into(),
        from: "TheHive <thehive@example.com>".into(),
        security: security.into(),
        timeout: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn with_ca(mut s: pb::SmtpSettings, pki: &Pki) -> pb::SmtpSettings {
    s.tls = Some(pb::TlsSettings {
        ca_certificates_pem: pki.ca_pem.clone(),
        ..Default::default()
    });
    s
}

fn with_auth(mut s: pb::SmtpSettings, password: &str) -> pb::SmtpSettings {
    s.username = "relay".into();
    s.password = password.into();
    s
}

async fn test(
    server: &TestServer,
    settings: Option<pb::SmtpSettings>,
    to: &str,
) -> pb::TestSmtpSettingsResponse {
    server
        .smtp(&server.admin_key)
        .test_smtp_settings(pb::TestSmtpSettingsRequest {
            settings,
            recipient: to.into(),
            ..Default::default()
        })
        .await
        .expect("the test RPC itself succeeds")
        .into_inner()
}

fn stages(report: &pb::TestSmtpSettingsResponse) -> Vec<(pb::TestStage, bool)> {
    report.steps.iter().map(|s| (s.stage(), s.ok)).collect()
}

/// The last step: where the test ended.
fn last(report: &pb::TestSmtpSettingsResponse) -> &pb::TestStep {
    report.steps.last().expect("at least one step")
}

fn assert_delivered(smtp: &SmtpServer, report: &pb::TestSmtpSettingsResponse) {
    assert!(report.success, "{report:#?}");
    assert!(report.steps.iter().all(|s| s.ok), "{report:#?}");
    let seen = smtp.seen();
    assert_eq!(seen.messages.len(), 1);
    let message = &seen.messages[0];
    assert_eq!(message.from, "thehive@example.com");
    assert_eq!(message.to, [RECIPIENT]);
    assert_eq!(
        message.header("Subject").as_deref(),
        Some("mailroom SMTP test")
    );
    assert_eq!(
        message.header("From").as_deref(),
        Some("TheHive <thehive@example.com>")
    );
    assert_eq!(message.header("To").as_deref(), Some(RECIPIENT));
    assert_eq!(
        message.header("Message-ID").as_deref(),
        Some(report.message_id.as_str())
    );
    assert!(
        message.data.contains("127.0.0.1:"),
        "the body states the server"
    );
    assert!(
        !message.data.contains(PASSWORD),
        "the password is never in the email"
    );
    assert_eq!(last(report).stage(), pb::TestStage::Data);
    assert_eq!(last(report).smtp_code, 250);
}

#[tokio::test]
async fn plain_smtp_without_auth() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    let report = test(
        &server,
        Some(settings(smtp.addr.port(), pb::ConnectionSecurity::None)),
        RECIPIENT,
    )
    .await;
    assert_delivered(&smtp, &report);
    use pb::TestStage::*;
    assert_eq!(
        stages(&report),
        [
            (Connect, true),
            (Tls, true),
            (Ehlo, true),
            (Auth, true),
            (MailFrom, true),
            (RcptTo, true),
            (Data, true)
        ]
    );
    let data = &smtp.seen().messages[0].data;
    assert!(data.contains("Security:   none"), "{data}");
}

#[tokio::test]
async fn starttls_with_and_without_auth() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let pki = Arc::new(Pki::new());
    let smtp = SmtpServer::with_auth(&pki, "relay", PASSWORD);
    let given = with_auth(
        with_ca(
            settings(smtp.addr.port(), pb::ConnectionSecurity::Starttls),
            &pki,
        ),
        PASSWORD,
    );
    let report = test(&server, Some(given), RECIPIENT).await;
    assert_delivered(&smtp, &report);
    let auth = report
        .steps
        .iter()
        .find(|s| s.stage() == pb::TestStage::Auth)
        .unwrap();
    assert_eq!(auth.smtp_code, 235);
    assert_eq!(
        smtp.seen().auth,
        [("relay".to_string(), PASSWORD.to_string())]
    );

    let open = SmtpServer::start(Options {
        starttls: Some(pki.clone()),
        credentials: None,
        ..Default::default()
    });
    let given = with_ca(
        settings(open.addr.port(), pb::ConnectionSecurity::Starttls),
        &pki,
    );
    let report = test(&server, Some(given), RECIPIENT).await;
    assert_delivered(&open, &report);
    assert!(report
        .steps
        .iter()
        .any(|s| s.stage() == pb::TestStage::Tls && s.smtp_code == 220));
}

#[tokio::test]
async fn implicit_tls_with_a_custom_ca() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let pki = Pki::new();
    let smtp = SmtpServer::start(Options::default());
    let smtps = tls_terminator(&pki, smtp.addr).await;
    let report = test(
        &server,
        Some(with_ca(
            settings(smtps.port(), pb::ConnectionSecurity::Ssl),
            &pki,
        )),
        RECIPIENT,
    )
    .await;
    assert_delivered(&smtp, &report);
    assert_eq!(
        report.steps[1].stage(),
        pb::TestStage::Tls,
        "TLS comes before EHLO"
    );
    assert!(
        report.steps[1].detail.contains("127.0.0.1"),
        "{:?}",
        report.steps[1]
    );
}

/// `s` with the client certificate `pki`'s CA issued, and its key.
fn with_client_certificate(mut s: pb::SmtpSettings, pki: &Pki) -> pb::SmtpSettings {
    let tls = s.tls.get_or_insert_with(Default::default);
    tls.client_certificate_pem = pki.client_cert_pem.clone();
    tls.client_key_pem = pki.client_key_pem.clone();
    s
}

/// The DER of the certificate `pem`.
fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Saves `settings`, then sends a message through them: its state once sent.
async fn deliver(server: &TestServer, mut settings: pb::SmtpSettings) -> pb::Message {
    settings.link_origins = support::link_origins();
    server.save_smtp(settings).await;
    let sent = server
        .send_to(&[RECIPIENT], "Over mTLS", "Case 42 was opened.")
        .await;
    server
        .wait_for_state(&sent[0], pb::MessageState::Sent)
        .await
}

/// A relay that demands a client certificate of its CA over STARTTLS (mTLS): without one
/// the TLS stage fails and nothing is sent; with `tls.client_certificate_pem` and
/// `tls.client_key_pem` (rcgen's ECDSA P-256 key, PKCS#8) the staged test and a queued
/// message both get through, and the relay saw that certificate.
#[tokio::test]
async fn starttls_presents_the_client_certificate_to_a_relay_that_demands_one() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let pki = Arc::new(Pki::new());
    let relay = SmtpServer::start(Options {
        starttls: Some(pki.clone()),
        client_auth: true,
        ..Default::default()
    });
    let without = with_ca(
        settings(relay.addr.port(), pb::ConnectionSecurity::Starttls),
        &pki,
    );
    let report = test(&server, Some(without.clone()), RECIPIENT).await;
    assert!(!report.success, "{report:#?}");
    assert_eq!(
        (last(&report).stage(), last(&report).ok),
        (pb::TestStage::Tls, false),
        "{report:#?}"
    );
    assert!(relay.seen().mail_from.is_empty());

    let given = with_client_certificate(without, &pki);
    let report = test(&server, Some(given.clone()), RECIPIENT).await;
    assert_delivered(&relay, &report);
    let presented = der(&pki.client_cert_pem);
    assert_eq!(
        relay.seen().client_certificates.last(),
        Some(&Some(presented.clone()))
    );

    let message = deliver(&server, given).await;
    assert!(message.last_error.is_empty(), "{message:?}");
    let seen = relay.seen();
    assert_eq!(seen.messages.len(), 2);
    assert_eq!(
        seen.messages[1].header("Subject").as_deref(),
        Some("Over mTLS")
    );
    assert_eq!(seen.client_certificates.last(), Some(&Some(presented)));
}

/// [`starttls_presents_the_client_certificate_to_a_relay_that_demands_one`] over implicit
/// TLS: a terminator that demands the certificate before the relay behind it hears a word.
#[tokio::test]
async fn implicit_tls_presents_the_client_certificate_to_a_relay_that_demands_one() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let pki = Pki::new();
    let relay = SmtpServer::start(Options::default());
    let smtps = mtls_terminator(&pki, relay.addr).await;
    let without = with_ca(settings(smtps.port(), pb::ConnectionSecurity::Ssl), &pki);
    let report = test(&server, Some(without.clone()), RECIPIENT).await;
    assert!(!report.success, "{report:#?}");
    assert!(relay.seen().helo.is_empty(), "the relay heard nothing");

    let given = with_client_certificate(without, &pki);
    let report = test(&server, Some(given.clone()), RECIPIENT).await;
    assert_delivered(&relay, &report);

    let message = deliver(&server, given).await;
    assert!(message.last_error.is_empty(), "{message:?}");
    assert_eq!(relay.seen().messages.len(), 2);
}

#[tokio::test]
async fn connection_refused_fails_at_connect() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let report = test(
        &server,
        Some(settings(refused_port(), pb::ConnectionSecurity::None)),
        RECIPIENT,
    )
    .await;
    assert!(!report.success);
    assert_eq!(stages(&report), [(pb::TestStage::Connect, false)]);
    assert!(report.summary.contains("CONNECT"), "{}", report.summary);
}

#[tokio::test]
async fn a_silent_server_fails_within_the_timeout() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let silent = silent_server().await;
    let mut given = settings(silent.port(), pb::ConnectionSecurity::None);
    given.timeout = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    let started = Instant::now();
    let report = test(&server, Some(given), RECIPIENT).await;
    // Which bound ended it is the step's detail, below; the wall clock only checks that
    // the answer came soon after: about 1.02 s here, given a margin for a busy machine and
    // still half the 10 s default (which a bound ignoring the settings would wait).
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "{elapsed:?}: not bounded by the 1 s timeout"
    );
    assert!(!report.success);
    let step = last(&report);
    assert_eq!(step.stage(), pb::TestStage::Ehlo, "{report:#?}");
    assert!(!step.ok);
    assert!(
        step.detail.contains("no answer within the 1s timeout"),
        "{step:?}"
    );
}

#[tokio::test]
async fn required_starttls_not_offered_sends_nothing_in_clear() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    let given = with_auth(
        settings(smtp.addr.port(), pb::ConnectionSecurity::Starttls),
        PASSWORD,
    );
    let report = test(&server, Some(given), RECIPIENT).await;
    assert!(!report.success);
    let step = last(&report);
    assert_eq!(
        (step.stage(), step.ok),
        (pb::TestStage::Tls, false),
        "{report:#?}"
    );
    let seen = smtp.seen();
    assert!(
        seen.mail_from.is_empty(),
        "no MAIL FROM after a refused STARTTLS"
    );
    assert!(seen.auth.is_empty(), "no credentials in clear");
}

#[tokio::test]
async fn opportunistic_starttls_continues_in_clear_when_not_offered() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    let report = test(
        &server,
        Some(settings(
            smtp.addr.port(),
            pb::ConnectionSecurity::StarttlsOpportunistic,
        )),
        RECIPIENT,
    )
    .await;
    assert_delivered(&smtp, &report);
}

#[tokio::test]
async fn an_untrusted_certificate_fails_at_tls() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let pki = Arc::new(Pki::new());
    let smtp = SmtpServer::start(Options {
        starttls: Some(pki.clone()),
        credentials: None,
        ..Default::default()
    });
    let report = test(
        &server,
        Some(settings(smtp.addr.port(), pb::ConnectionSecurity::Starttls)),
        RECIPIENT,
    )
    .await;
    assert!(!report.success);
    let step = last(&report);
    assert_eq!(
        (step.stage(), step.ok),
        (pb::TestStage::Tls, false),
        "{report:#?}"
    );
    assert!(smtp.seen().mail_from.is_empty());

    let backend = SmtpServer::start(Options::default());
    let smtps = tls_terminator(&pki, backend.addr).await;
    let report = test(
        &server,
        Some(settings(smtps.port(), pb::ConnectionSecurity::Ssl)),
        RECIPIENT,
    )
    .await;
    let step = last(&report);
    assert_eq!(
        (step.stage(), step.ok),
        (pb::TestStage::Tls, false),
        "{report:#?}"
    );
    assert!(step.detail.contains("certificate"), "{step:?}");

    // Explicitly accepting invalid certificates gets through.
    let mut lax = settings(smtps.port(), pb::ConnectionSecurity::Ssl);
    lax.tls = Some(pb::TlsSettings {
        accept_invalid_certificates: true,
        ..Default::default()
    });
    assert!(test(&server, Some(lax), RECIPIENT).await.success);
}

#[tokio::test]
async fn a_wrong_password_fails_at_auth_with_535() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let pki = Arc::new(Pki::new());
    let smtp = SmtpServer::with_auth(&pki, "relay", PASSWORD);
    let given = with_auth(
        with_ca(
            settings(smtp.addr.port(), pb::ConnectionSecurity::Starttls),
            &pki,
        ),
        "wrong",
    );
    let report = test(&server, Some(given), RECIPIENT).await;
    assert!(!report.success);
    let step = last(&report);
    assert_eq!(
        (step.stage(), step.ok, step.smtp_code),
        (pb::TestStage::Auth, false, 535),
        "{report:#?}"
    );
    assert!(smtp.seen().mail_from.is_empty());
}

#[tokio::test]
async fn a_rejected_recipient_fails_at_rcpt_to_with_the_code() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    let report = test(
        &server,
        Some(settings(smtp.addr.port(), pb::ConnectionSecurity::None)),
        "rejected@example.com",
    )
    .await;
    assert!(!report.success);
    let step = last(&report);
    assert_eq!(
        (step.stage(), step.ok, step.smtp_code),
        (pb::TestStage::RcptTo, false, 550),
        "{report:#?}"
    );
    assert!(smtp.seen().messages.is_empty());
}

#[tokio::test]
async fn unsaved_settings_are_tested_and_the_stored_ones_unchanged() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut admin = server.smtp(&server.admin_key);
    let stored = admin
        .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
            settings: Some(settings(refused_port(), pb::ConnectionSecurity::None)),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    // The stored settings fail; the edited ones, not saved, succeed.
    assert!(!test(&server, None, RECIPIENT).await.success);
    let smtp = SmtpServer::start(Options::default());
    let report = test(
        &server,
        Some(settings(smtp.addr.port(), pb::ConnectionSecurity::None)),
        RECIPIENT,
    )
    .await;
    assert_delivered(&smtp, &report);
    let after = admin
        .get_smtp_settings(pb::GetSmtpSettingsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, stored, "testing saves nothing");
}

#[tokio::test]
async fn the_stored_password_never_goes_to_a_changed_server() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let pki = Arc::new(Pki::new());
    let trusted = SmtpServer::with_auth(&pki, "relay", PASSWORD);
    let stored = with_auth(
        with_ca(
            settings(trusted.addr.port(), pb::ConnectionSecurity::Starttls),
            &pki,
        ),
        PASSWORD,
    );
    server
        .smtp(&server.admin_key)
        .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
            settings: Some(stored.clone()),
            update_mask: None,
        })
        .await
        .unwrap();
    // The stored settings, with their stored password, work.
    assert!(test(&server, None, RECIPIENT).await.success);
    // Same server without resending the password: the stored one is used.
    let mut same = stored.clone();
    same.password.clear();
    assert!(test(&server, Some(same), RECIPIENT).await.success);

    let attacker = SmtpServer::with_auth(&pki, "relay", "anything");
    let mut moved = stored.clone();
    moved.port = attacker.addr.port().into();
    moved.password.clear();
    let status = server
        .smtp(&server.admin_key)
        .test_smtp_settings(pb::TestSmtpSettingsRequest {
            settings: Some(moved),
            recipient: RECIPIENT.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["settings.password"]);
    assert!(
        attacker.seen().auth.is_empty(),
        "the changed server received no password"
    );
    assert!(attacker.seen().mail_from.is_empty());
}

#[tokio::test]
async fn bad_requests_name_their_field() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut admin = server.smtp(&server.admin_key);
    let status = admin
        .test_smtp_settings(pb::TestSmtpSettingsRequest {
            settings: Some(settings(25, pb::ConnectionSecurity::None)),
            recipient: "not an address".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["recipient"]);
    let mut bad = settings(25, pb::ConnectionSecurity::None);
    bad.host = "smtp://x".into();
    let status = admin
        .test_smtp_settings(pb::TestSmtpSettingsRequest {
            settings: Some(bad),
            recipient: RECIPIENT.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["settings.host"]);
    let status = admin
        .test_smtp_settings(pb::TestSmtpSettingsRequest {
            settings: None,
            recipient: RECIPIENT.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::FailedPrecondition,
        "nothing stored to test"
    );
}

/// Every AUTH the careless relay got.
fn auths(reads: &std::sync::Mutex<support::smtp::Reads>) -> Vec<(String, String)> {
    reads.lock().unwrap().auth.clone()
}

#[tokio::test]
async fn a_weakened_copy_of_the_stored_settings_never_gets_the_stored_password() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let (relay, reads) = support::smtp::plain_auth_server().await;
    let (other, other_reads) = support::smtp::plain_auth_server().await;
    let pki = Pki::new();
    let mut stored = with_auth(
        with_ca(
            settings(relay.port(), pb::ConnectionSecurity::Starttls),
            &pki,
        ),
        PASSWORD,
    );
    stored.tls.as_mut().unwrap().server_name = "localhost".into();
    server
        .smtp(&server.admin_key)
        .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
            settings: Some(stored.clone()),
            update_mask: None,
        })
        .await
        .unwrap();
    type Weaken = Box<dyn Fn(&mut pb::SmtpSettings)>;
    let cases: Vec<(&str, Weaken)> = vec![
        (
            "security lowered from STARTTLS to NONE",
            Box::new(|s| s.security = pb::ConnectionSecurity::None.into()),
        ),
        (
            "security lowered from STARTTLS to STARTTLS_OPPORTUNISTIC",
            Box::new(|s| s.security = pb::ConnectionSecurity::StarttlsOpportunistic.into()),
        ),
        (
            "tls.accept_invalid_certificates turned on",
            Box::new(|s| s.tls.as_mut().unwrap().accept_invalid_certificates = true),
        ),
        (
            "tls.ca_certificates_pem changed",
            Box::new(|s| s.tls.as_mut().unwrap().ca_certificates_pem = Pki::new().ca_pem),
        ),
        (
            "tls.server_name changed",
            Box::new(|s| s.tls.as_mut().unwrap().server_name = "127.0.0.1".into()),
        ),
        ("host changed", Box::new(|s| s.host = "localhost".into())),
        (
            "port changed",
            Box::new(move |s| s.port = other.port().into()),
        ),
        (
            "username changed",
            Box::new(|s| s.username = "someone-else".into()),
        ),
    ];
    let mut admin = server.smtp(&server.admin_key);
    for (why, weaken) in &cases {
        let mut candidate = stored.clone();
        weaken(&mut candidate);
        candidate.password.clear();
        let status = admin
            .test_smtp_settings(pb::TestSmtpSettingsRequest {
                settings: Some(candidate.clone()),
                recipient: RECIPIENT.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["settings.password"], "{why}");
        assert!(status.message().contains(why), "{why}: {status:?}");

        // With the password given again, the test runs, with that password.
        candidate.password = "given-with-the-change".into();
        admin
            .test_smtp_settings(pb::TestSmtpSettingsRequest {
                settings: Some(candidate),
                recipient: RECIPIENT.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{why}, password given: {e:?}"));
    }
    for (user, password) in auths(&reads).into_iter().chain(auths(&other_reads)) {
        assert_ne!(password, PASSWORD, "the stored password went to {user}");
    }
    // The relay does take credentials in clear: with security NONE and the password given
    // with it, it got them.
    assert_eq!(
        auths(&reads),
        [("relay".to_string(), "given-with-the-change".to_string())]
    );
}

#[tokio::test]
async fn opportunistic_starttls_not_offered_sends_no_credentials() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let (relay, reads) = support::smtp::plain_auth_server().await;
    let stored = with_auth(
        settings(relay.port(), pb::ConnectionSecurity::StarttlsOpportunistic),
        PASSWORD,
    );
    server
        .smtp(&server.admin_key)
        .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
            settings: Some(stored.clone()),
            update_mask: None,
        })
        .await
        .unwrap();
    for given in [None, Some(stored.clone())] {
        let report = test(&server, given, RECIPIENT).await;
        assert!(!report.success, "{report:#?}");
        let step = last(&report);
        assert_eq!(
            (step.stage(), step.ok),
            (pb::TestStage::Auth, false),
            "{report:#?}"
        );
        assert!(
            step.detail.contains("not encrypted") && step.detail.contains("STARTTLS"),
            "{}",
            step.detail
        );
    }
    let seen = reads.lock().unwrap().clone();
    assert!(
        seen.auth.is_empty(),
        "credentials in clear: {:?}",
        seen.auth
    );
    assert!(
        !seen.groups.iter().flatten().any(|verb| verb == "MAIL"),
        "nothing sent after the refused AUTH: {:?}",
        seen.groups
    );

    // Security NONE, with the password given with it, is the one way to AUTH in clear.
    let mut plain = stored;
    plain.security = pb::ConnectionSecurity::None.into();
    let report = test(&server, Some(plain), RECIPIENT).await;
    assert!(report.success, "{report:#?}");
    assert_eq!(auths(&reads), [("relay".to_string(), PASSWORD.to_string())]);
}
