//! GetSmtpSettings and UpdateSmtpSettings over gRPC: round trip, defaults, every
//! validation rule, update masks, etags, the password rule, and secrets at rest.

use crate::support;

use mailroom::proto::v1 as pb;
use prost_types::FieldMask;
use support::{all_bytes, contains, violated_fields, TestServer};
use tonic::Code;

const PASSWORD: &str = "correct-horse-battery-staple-42";

fn valid() -> pb::SmtpSettings {
    pb::SmtpSettings {
        host: "smtp.example.com".into(),
        port: 587,
        from: "TheHive <thehive@example.com>".into(),
        security: pb::ConnectionSecurity::Starttls.into(),
        username: "relay-user".into(),
        password: PASSWORD.into(),
        ..Default::default()
    }
}

fn update(settings: pb::SmtpSettings, mask: &[&str]) -> pb::UpdateSmtpSettingsRequest {
    pb::UpdateSmtpSettingsRequest {
        settings: Some(settings),
        update_mask: (!mask.is_empty()).then(|| FieldMask {
            paths: mask.iter().map(|p| p.to_string()).collect(),
        }),
    }
}

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

#[tokio::test]
async fn unconfigured_settings_show_the_defaults() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let got = server
        .smtp(&server.admin_key)
        .get_smtp_settings(pb::GetSmtpSettingsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!got.configured);
    assert_eq!(got.security(), pb::ConnectionSecurity::None);
    assert_eq!(got.timeout, secs(10));
    let exp = got.token_expiration.unwrap();
    assert_eq!(exp.reset_password, secs(600));
    assert_eq!(exp.invitation, secs(86_400));
    assert!(got.etag.is_empty());
}

#[tokio::test]
async fn settings_round_trip_without_the_password() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut smtp = server.smtp(&server.admin_key);
    let mut settings = valid();
    settings.helo_name = "mailroom.example.com".into();
    settings.timeout = secs(30);
    settings.token_expiration = Some(pb::TokenExpiration {
        reset_password: secs(900),
        invitation: secs(2 * 86_400),
    });
    settings.tls = Some(pb::TlsSettings {
        server_name: "relay.example.com".into(),
        ..Default::default()
    });
    let saved = smtp
        .update_smtp_settings(update(settings, &[]))
        .await
        .unwrap()
        .into_inner();
    let got = smtp
        .get_smtp_settings(pb::GetSmtpSettingsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(saved, got);
    assert!(got.configured);
    assert_eq!(got.host, "smtp.example.com");
    assert_eq!(got.port, 587);
    assert_eq!(got.from, "TheHive <thehive@example.com>");
    assert_eq!(got.security(), pb::ConnectionSecurity::Starttls);
    assert_eq!(got.username, "relay-user");
    assert!(got.password.is_empty());
    assert!(got.password_set);
    assert_eq!(got.helo_name, "mailroom.example.com");
    assert_eq!(got.timeout, secs(30));
    assert_eq!(got.token_expiration.unwrap().invitation, secs(172_800));
    assert_eq!(got.tls.unwrap().server_name, "relay.example.com");
    assert_eq!(got.updated_by, "bootstrap-admin");
    assert!(got.update_time.is_some());
    assert!(!got.etag.is_empty());
}

#[tokio::test]
async fn every_rule_rejects_its_bad_value_naming_the_field() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut smtp = server.smtp(&server.admin_key);
    type Spoil = Box<dyn Fn(&mut pb::SmtpSettings)>;
    let cases: Vec<(&str, Spoil)> = vec![
        ("settings.port", Box::new(|s| s.port = 0)),
        ("settings.port", Box::new(|s| s.port = 70_000)),
        ("settings.host", Box::new(|s| s.host = String::new())),
        (
            "settings.host",
            Box::new(|s| s.host = "smtp://smtp.example.com".into()),
        ),
        (
            "settings.host",
            Box::new(|s| s.host = "smtp.example.com:25".into()),
        ),
        (
            "settings.host",
            Box::new(|s| s.host = "smtp example.com".into()),
        ),
        (
            "settings.host",
            Box::new(|s| s.host = "smtp.example.com\r\nX: y".into()),
        ),
        ("settings.from", Box::new(|s| s.from = "no-at-sign".into())),
        ("settings.from", Box::new(|s| s.from = String::new())),
        (
            "settings.from",
            Box::new(|s| s.from = "a@example.com\r\nBcc: evil@example.org".into()),
        ),
        (
            "settings.username",
            Box::new(|s| s.username = "user\nname".into()),
        ),
        ("settings.security", Box::new(|s| s.security = 42)),
        ("settings.timeout", Box::new(|s| s.timeout = secs(0))),
        ("settings.timeout", Box::new(|s| s.timeout = secs(121))),
        ("settings.timeout", Box::new(|s| s.timeout = secs(-5))),
        (
            "settings.token_expiration.reset_password",
            Box::new(|s| {
                s.token_expiration = Some(pb::TokenExpiration {
                    reset_password: secs(59),
                    invitation: None,
                })
            }),
        ),
        (
            "settings.token_expiration.reset_password",
            Box::new(|s| {
                s.token_expiration = Some(pb::TokenExpiration {
                    reset_password: secs(7 * 86_400 + 1),
                    invitation: None,
                })
            }),
        ),
        (
            "settings.token_expiration.invitation",
            Box::new(|s| {
                s.token_expiration = Some(pb::TokenExpiration {
                    reset_password: None,
                    invitation: secs(14 * 60),
                })
            }),
        ),
        (
            "settings.token_expiration.invitation",
            Box::new(|s| {
                s.token_expiration = Some(pb::TokenExpiration {
                    reset_password: None,
                    invitation: secs(31 * 86_400),
                })
            }),
        ),
        (
            "settings.helo_name",
            Box::new(|s| s.helo_name = "bad name".into()),
        ),
        (
            "settings.tls.ca_certificates_pem",
            Box::new(|s| {
                s.tls = Some(pb::TlsSettings {
                    ca_certificates_pem: "not a certificate".into(),
                    ..Default::default()
                })
            }),
        ),
        (
            "settings.tls.client_key_pem",
            Box::new(|s| {
                s.tls = Some(pb::TlsSettings {
                    client_certificate_pem: rcgen::generate_simple_self_signed(vec!["c".into()])
                        .unwrap()
                        .cert
                        .pem(),
                    ..Default::default()
                })
            }),
        ),
        (
            "settings.username",
            Box::new(|s| s.username = String::new()),
        ),
    ];
    for (field, spoil) in cases {
        let mut settings = valid();
        spoil(&mut settings);
        let status = smtp
            .update_smtp_settings(update(settings.clone(), &[]))
            .await
            .expect_err(field);
        assert_eq!(
            violated_fields(&status),
            vec![field.to_string()],
            "{settings:?}: {status:?}"
        );
    }
    let got = smtp
        .get_smtp_settings(pb::GetSmtpSettingsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!got.configured, "nothing invalid was saved");
}

#[tokio::test]
async fn several_bad_fields_are_each_reported() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let status = server
        .smtp(&server.admin_key)
        .update_smtp_settings(update(
            pb::SmtpSettings {
                host: "a b".into(),
                port: 0,
                from: "nobody".into(),
                ..Default::default()
            },
            &[],
        ))
        .await
        .unwrap_err();
    let mut fields = violated_fields(&status);
    fields.sort();
    assert_eq!(fields, ["settings.from", "settings.host", "settings.port"]);
    let missing = server
        .smtp(&server.admin_key)
        .update_smtp_settings(pb::UpdateSmtpSettingsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&missing), ["settings"]);
}

#[tokio::test]
async fn update_mask_changes_only_the_named_fields() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut smtp = server.smtp(&server.admin_key);
    smtp.update_smtp_settings(update(valid(), &[]))
        .await
        .unwrap();
    let changed = smtp
        .update_smtp_settings(update(
            pb::SmtpSettings {
                from: "alerts@example.com".into(),
                timeout: secs(5),
                ..Default::default()
            },
            &["from", "timeout"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.from, "alerts@example.com");
    assert_eq!(changed.timeout, secs(5));
    assert_eq!(changed.host, "smtp.example.com");
    assert_eq!(changed.port, 587);
    assert!(changed.password_set, "the password is kept");

    let status = smtp
        .update_smtp_settings(update(pb::SmtpSettings::default(), &["hots", "etag"]))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["update_mask", "update_mask"]);

    let cleared = smtp
        .update_smtp_settings(update(pb::SmtpSettings::default(), &["password"]))
        .await
        .unwrap()
        .into_inner();
    assert!(!cleared.password_set, "naming an empty password clears it");
}

#[tokio::test]
async fn a_stale_etag_is_aborted() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut smtp = server.smtp(&server.admin_key);
    let first = smtp
        .update_smtp_settings(update(valid(), &[]))
        .await
        .unwrap()
        .into_inner();
    let mut next = valid();
    next.etag = first.etag.clone();
    next.port = 2525;
    let second = smtp
        .update_smtp_settings(update(next.clone(), &[]))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(first.etag, second.etag);
    next.port = 25;
    let status = smtp
        .update_smtp_settings(update(next, &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    let now = smtp
        .get_smtp_settings(pb::GetSmtpSettingsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.port, 2525);
}

#[tokio::test]
async fn moving_the_stored_password_needs_it_again() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut smtp = server.smtp(&server.admin_key);
    smtp.update_smtp_settings(update(valid(), &[]))
        .await
        .unwrap();
    for (field, change) in [
        (
            "host",
            pb::SmtpSettings {
                host: "evil.example.org".into(),
                ..Default::default()
            },
        ),
        (
            "port",
            pb::SmtpSettings {
                port: 2525,
                ..Default::default()
            },
        ),
        (
            "username",
            pb::SmtpSettings {
                username: "other".into(),
                ..Default::default()
            },
        ),
    ] {
        let status = smtp
            .update_smtp_settings(update(change.clone(), &[field]))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["settings.password"], "{field}");
        let mut full = valid();
        full.password.clear();
        match field {
            "host" => full.host = change.host,
            "port" => full.port = change.port,
            _ => full.username = change.username,
        }
        let status = smtp
            .update_smtp_settings(update(full, &[]))
            .await
            .unwrap_err();
        assert_eq!(
            violated_fields(&status),
            ["settings.password"],
            "full {field}"
        );
    }
    // Unchanged host, port and username keep the stored password without resending it.
    let mut same = valid();
    same.password.clear();
    same.from = "other@example.com".into();
    let kept = smtp
        .update_smtp_settings(update(same, &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(kept.password_set);
    // With the password again, the host may move.
    let moved = smtp
        .update_smtp_settings(update(
            pb::SmtpSettings {
                host: "relay2.example.com".into(),
                password: "new-password".into(),
                ..Default::default()
            },
            &["host", "password"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.host, "relay2.example.com");
}

#[tokio::test]
async fn secrets_never_leave_and_are_encrypted_at_rest() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut smtp = server.smtp(&server.admin_key);
    let client = rcgen::generate_simple_self_signed(vec!["mailroom.example.com".into()]).unwrap();
    let key_pem = client.key_pair.serialize_pem();
    let key_body: String = key_pem.lines().nth(1).unwrap().to_string();
    let mut settings = valid();
    settings.security = pb::ConnectionSecurity::Ssl.into();
    settings.tls = Some(pb::TlsSettings {
        client_certificate_pem: client.cert.pem(),
        client_key_pem: key_pem.clone(),
        ..Default::default()
    });
    let saved = smtp
        .update_smtp_settings(update(settings, &[]))
        .await
        .unwrap()
        .into_inner();
    let got = smtp
        .get_smtp_settings(pb::GetSmtpSettingsRequest {})
        .await
        .unwrap()
        .into_inner();
    for answer in [&saved, &got] {
        let text = format!("{answer:?}");
        assert!(!text.contains(PASSWORD));
        assert!(!text.contains(&key_body));
        assert!(answer.password_set);
        assert!(answer.tls.as_ref().unwrap().client_key_set);
    }
    let mut server = server;
    server.stop().await.unwrap();
    let bytes = all_bytes(&server.data_dir);
    assert!(
        contains(&bytes, "relay-user"),
        "the search does see the store's data"
    );
    assert!(!contains(&bytes, PASSWORD), "password in clear on disk");
    assert!(!contains(&bytes, &key_body), "client key in clear on disk");
}

#[tokio::test]
async fn settings_survive_a_restart() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let mut first = TestServer::start_in(dir.path()).await;
    let mut settings = valid();
    settings.link_origins = vec!["https://thehive.example.com".into()];
    settings.sender_domains = vec!["example.com".into(), "example.org".into()];
    let saved = first
        .smtp(&first.admin_key)
        .update_smtp_settings(update(settings, &[]))
        .await
        .unwrap()
        .into_inner();
    let key = first.create_key("acme", &["manageUser"]).await;
    first.stop().await.unwrap();

    let second = TestServer::start_in(dir.path()).await;
    assert_eq!(
        second.admin_key, first.admin_key,
        "the bootstrap key is not recreated"
    );
    let got = second
        .smtp(&second.admin_key)
        .get_smtp_settings(pb::GetSmtpSettingsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, saved);
    let listed = second
        .keys(&second.admin_key)
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys.len(), 2);
    let status = second
        .smtp(&key)
        .get_smtp_settings(pb::GetSmtpSettingsRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "the key is still known: {status:?}"
    );
}

/// A client certificate and key that TLS cannot use together are refused when saved, naming
/// the field at fault: a key that is not the certificate's (given with it, or stored and
/// kept while the certificate changes), a certificate that is PEM but not X.509.
#[tokio::test]
async fn a_client_certificate_tls_cannot_use_is_refused_naming_its_field() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut smtp = server.smtp(&server.admin_key);
    let client = rcgen::generate_simple_self_signed(vec!["mailroom.example.com".into()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["mailroom.example.com".into()]).unwrap();
    let with_pair = |certificate: String, key: String| {
        let mut settings = valid();
        settings.tls = Some(pb::TlsSettings {
            client_certificate_pem: certificate,
            client_key_pem: key,
            ..Default::default()
        });
        settings
    };
    let not_x509 = "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";
    let cases = [
        (
            with_pair(client.cert.pem(), other.key_pair.serialize_pem()),
            "settings.tls.client_key_pem",
            "is not the private key of the first certificate",
        ),
        (
            with_pair(not_x509.into(), client.key_pair.serialize_pem()),
            "settings.tls.client_certificate_pem",
            "certificate 1 of 1 is not an X.509 certificate",
        ),
        (
            with_pair(
                format!("{}{not_x509}", client.cert.pem()),
                client.key_pair.serialize_pem(),
            ),
            "settings.tls.client_certificate_pem",
            "certificate 2 of 2 is not an X.509 certificate",
        ),
    ];
    for (settings, field, why) in cases {
        let status = smtp
            .update_smtp_settings(update(settings, &[]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(violated_fields(&status), [field], "{status:?}");
        assert!(description(&status, field).contains(why), "{status:?}");
    }

    // Stored with its own key; the certificate alone replaced by another's: the stored key
    // is not the new certificate's.
    let saved = smtp
        .update_smtp_settings(update(
            with_pair(client.cert.pem(), client.key_pair.serialize_pem()),
            &[],
        ))
        .await
        .unwrap()
        .into_inner();
    let mut change = valid();
    change.tls = Some(pb::TlsSettings {
        client_certificate_pem: other.cert.pem(),
        ..Default::default()
    });
    let status = smtp
        .update_smtp_settings(update(change, &["tls.client_certificate_pem"]))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["settings.tls.client_key_pem"],
        "{status:?}"
    );
    let unchanged = smtp
        .get_smtp_settings(pb::GetSmtpSettingsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged, saved, "nothing saved");
}

/// The `BadRequest` description of `field` in an `INVALID_ARGUMENT` status.
fn description(status: &tonic::Status, field: &str) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.into_iter().find(|v| v.field == field))
        .map(|v| v.description)
        .unwrap_or_else(|| panic!("no violation on {field}: {status:?}"))
}

#[tokio::test]
async fn link_origins_and_sender_domains_round_trip_normalised() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut smtp = server.smtp(&server.admin_key);
    let mut settings = valid();
    settings.link_origins = vec![
        "https://TheHive.example.com/".into(),
        "http://10.0.0.1:9000".into(),
        "https://thehive.example.com:443".into(),
    ];
    settings.sender_domains = vec!["Example.COM".into(), "alerts.example.org.".into()];
    let saved = smtp
        .update_smtp_settings(update(settings, &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        saved.link_origins,
        ["https://thehive.example.com", "http://10.0.0.1:9000"],
        "origins as compared: lower case, default port left out, duplicates dropped"
    );
    assert_eq!(saved.sender_domains, ["example.com", "alerts.example.org"]);

    // The mask names each list on its own; an empty list named clears it.
    let changed = smtp
        .update_smtp_settings(update(
            pb::SmtpSettings {
                link_origins: vec!["https://portal.example.com".into()],
                ..Default::default()
            },
            &["link_origins"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.link_origins, ["https://portal.example.com"]);
    assert_eq!(
        changed.sender_domains,
        ["example.com", "alerts.example.org"]
    );
    let cleared = smtp
        .update_smtp_settings(update(pb::SmtpSettings::default(), &["sender_domains"]))
        .await
        .unwrap()
        .into_inner();
    assert!(cleared.sender_domains.is_empty());
    assert_eq!(cleared.link_origins, ["https://portal.example.com"]);
}

#[tokio::test]
async fn bad_link_origins_and_sender_domains_name_their_entry() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut smtp = server.smtp(&server.admin_key);
    type Spoil = Box<dyn Fn(&mut pb::SmtpSettings)>;
    let cases: Vec<(&str, Spoil)> = vec![
        (
            "settings.link_origins[1]",
            Box::new(|s| {
                s.link_origins = vec![
                    "https://thehive.example.com".into(),
                    "https://thehive.example.com/login".into(),
                ]
            }),
        ),
        (
            "settings.link_origins[0]",
            Box::new(|s| s.link_origins = vec!["thehive.example.com".into()]),
        ),
        (
            "settings.link_origins[0]",
            Box::new(|s| s.link_origins = vec!["ftp://thehive.example.com".into()]),
        ),
        (
            "settings.link_origins[0]",
            Box::new(|s| s.link_origins = vec!["https://thehive.example.com/?next=x".into()]),
        ),
        (
            "settings.link_origins[0]",
            Box::new(|s| s.link_origins = vec!["https://admin@thehive.example.com".into()]),
        ),
        (
            "settings.link_origins",
            Box::new(|s| {
                s.link_origins = (0..33)
                    .map(|i| format!("https://h{i}.example.com"))
                    .collect()
            }),
        ),
        (
            "settings.sender_domains[0]",
            Box::new(|s| s.sender_domains = vec!["soc@example.com".into()]),
        ),
        (
            "settings.sender_domains[1]",
            Box::new(|s| s.sender_domains = vec!["example.com".into(), "bad domain".into()]),
        ),
        (
            "settings.sender_domains[0]",
            Box::new(|s| s.sender_domains = vec![String::new()]),
        ),
        // The settings' own sender must be at one of the sender domains.
        (
            "settings.from",
            Box::new(|s| s.sender_domains = vec!["example.org".into()]),
        ),
        (
            "settings.from",
            Box::new(|s| s.sender_domains = vec!["mail.example.com".into()]),
        ),
    ];
    for (field, spoil) in cases {
        let mut settings = valid();
        spoil(&mut settings);
        let status = smtp
            .update_smtp_settings(update(settings.clone(), &[]))
            .await
            .expect_err(field);
        assert_eq!(
            violated_fields(&status),
            [field],
            "{settings:?}: {status:?}"
        );
    }
}

/// What each change that weakens where or how a stored secret travels does to the stored
/// settings, with the words the refusal gives for it.
fn weakenings(other_ca: &str) -> Vec<(&'static str, &'static str, pb::SmtpSettings)> {
    let tls = |t: pb::TlsSettings| Some(t);
    vec![
        (
            "security",
            "security lowered from STARTTLS to NONE",
            pb::SmtpSettings {
                security: pb::ConnectionSecurity::None.into(),
                ..Default::default()
            },
        ),
        (
            "security",
            "security lowered from STARTTLS to STARTTLS_OPPORTUNISTIC",
            pb::SmtpSettings {
                security: pb::ConnectionSecurity::StarttlsOpportunistic.into(),
                ..Default::default()
            },
        ),
        (
            "tls.accept_invalid_certificates",
            "tls.accept_invalid_certificates turned on",
            pb::SmtpSettings {
                tls: tls(pb::TlsSettings {
                    accept_invalid_certificates: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "tls.ca_certificates_pem",
            "tls.ca_certificates_pem changed",
            pb::SmtpSettings {
                tls: tls(pb::TlsSettings {
                    ca_certificates_pem: other_ca.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "tls.server_name",
            "tls.server_name changed",
            pb::SmtpSettings {
                tls: tls(pb::TlsSettings {
                    server_name: "mx.evil.example.org".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "host",
            "host changed",
            pb::SmtpSettings {
                host: "evil.example.org".into(),
                ..Default::default()
            },
        ),
        (
            "port",
            "port changed",
            pb::SmtpSettings {
                port: 2525,
                ..Default::default()
            },
        ),
        (
            "username",
            "username changed",
            pb::SmtpSettings {
                username: "other".into(),
                ..Default::default()
            },
        ),
    ]
}

#[tokio::test]
async fn every_weakening_of_the_stored_secrets_needs_them_again() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut smtp = server.smtp(&server.admin_key);
    let ca = rcgen::generate_simple_self_signed(vec!["ca.example.com".into()]).unwrap();
    let other_ca = rcgen::generate_simple_self_signed(vec!["evil.example.org".into()]).unwrap();
    let client = rcgen::generate_simple_self_signed(vec!["mailroom.example.com".into()]).unwrap();
    let mut stored = valid();
    stored.tls = Some(pb::TlsSettings {
        ca_certificates_pem: ca.cert.pem(),
        server_name: "relay.example.com".into(),
        client_certificate_pem: client.cert.pem(),
        client_key_pem: client.key_pair.serialize_pem(),
        ..Default::default()
    });
    for (field, why, change) in weakenings(&other_ca.cert.pem()) {
        let before = smtp
            .update_smtp_settings(update(stored.clone(), &[]))
            .await
            .unwrap()
            .into_inner();
        // Named in the mask, and as a full replace without the secrets.
        let status = smtp
            .update_smtp_settings(update(change.clone(), &[field]))
            .await
            .unwrap_err();
        let mut expected = vec!["settings.password"];
        if field != "username" {
            // The client key does not travel with the username.
            expected.push("settings.tls.client_key_pem");
        }
        let mut fields = violated_fields(&status);
        fields.sort();
        assert_eq!(fields, expected, "{field}: {status:?}");
        assert!(
            description(&status, "settings.password").contains(why),
            "{field}: {status:?}"
        );
        let mut full = stored.clone();
        full.password.clear();
        full.tls.as_mut().unwrap().client_key_pem.clear();
        let full = apply(full, change.clone(), field);
        let status = smtp
            .update_smtp_settings(update(full, &[]))
            .await
            .unwrap_err();
        let mut fields = violated_fields(&status);
        fields.sort();
        assert_eq!(fields, expected, "full {field}: {status:?}");
        let unchanged = smtp
            .get_smtp_settings(pb::GetSmtpSettingsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(unchanged, before, "{field}: nothing saved");

        // With the secrets again, the same change is accepted.
        let mut given = change.clone();
        given.password = "given-again".into();
        let mut tls = given.tls.take().unwrap_or_default();
        tls.client_key_pem = client.key_pair.serialize_pem();
        given.tls = Some(tls);
        smtp.update_smtp_settings(update(given, &[field, "password", "tls.client_key_pem"]))
            .await
            .unwrap_or_else(|e| panic!("{field} with the secrets again: {e:?}"));
    }
}

/// `change`'s value of `field` set in `settings`.
fn apply(
    mut settings: pb::SmtpSettings,
    change: pb::SmtpSettings,
    field: &str,
) -> pb::SmtpSettings {
    let tls = settings.tls.get_or_insert_with(Default::default);
    let new_tls = change.tls.clone().unwrap_or_default();
    match field {
        "security" => settings.security = change.security,
        "tls.accept_invalid_certificates" => {
            tls.accept_invalid_certificates = new_tls.accept_invalid_certificates
        }
        "tls.ca_certificates_pem" => tls.ca_certificates_pem = new_tls.ca_certificates_pem,
        "tls.server_name" => tls.server_name = new_tls.server_name,
        "host" => settings.host = change.host,
        "port" => settings.port = change.port,
        "username" => settings.username = change.username,
        other => panic!("no such weakening: {other}"),
    }
    settings
}

#[tokio::test]
async fn changes_as_strict_or_stricter_keep_the_stored_password() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut smtp = server.smtp(&server.admin_key);
    let mut stored = valid();
    stored.security = pb::ConnectionSecurity::StarttlsOpportunistic.into();
    stored.tls = Some(pb::TlsSettings {
        accept_invalid_certificates: true,
        ..Default::default()
    });
    smtp.update_smtp_settings(update(stored, &[]))
        .await
        .unwrap();
    for (field, change) in [
        (
            "security",
            pb::SmtpSettings {
                security: pb::ConnectionSecurity::Starttls.into(),
                ..Default::default()
            },
        ),
        (
            "security",
            pb::SmtpSettings {
                security: pb::ConnectionSecurity::Ssl.into(),
                ..Default::default()
            },
        ),
        (
            "tls.accept_invalid_certificates",
            pb::SmtpSettings::default(),
        ),
        (
            "from",
            pb::SmtpSettings {
                from: "alerts@example.com".into(),
                ..Default::default()
            },
        ),
    ] {
        let kept = smtp
            .update_smtp_settings(update(change, &[field]))
            .await
            .unwrap_or_else(|e| panic!("{field}: {e:?}"))
            .into_inner();
        assert!(kept.password_set, "{field}");
    }
}
