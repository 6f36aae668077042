//! `mailroom export`, `import` and `migrate`, run as operators run them (the built
//! binary): every record kind moves, field by field, on each backend and across them; what
//! moved keeps working (a token consumes once, an API key authenticates, a queued message
//! is delivered once, to a real SMTP server, an idempotency key answers its first use); a
//! wrong master key and a store holding records are refused before anything is written; an
//! import killed midway and run again ends as one clean run; the file holds no secret in
//! clear.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mailroom::config::{Args, StoreKind};
use mailroom::proto::v1 as pb;
use support::process::hermetic;
use support::smtp::{held_listener, HeldPort, Options, Pki, SmtpServer};
use support::{eventually, issue_request, test_clock, TestServer};
use tonic::Code;

/// Where a store is: a data directory (the master key and `admin.key` in it), and the
/// etcd cluster and prefix when it is on etcd.
#[derive(Clone)]
struct Place {
    data_dir: PathBuf,
    etcd: Option<(String, String)>,
}

impl Place {
    fn sled(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            etcd: None,
        }
    }

    #[cfg(feature = "etcd")]
    fn etcd(data_dir: &Path, endpoint: &str, prefix: &str) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            etcd: Some((endpoint.to_string(), prefix.to_string())),
        }
    }

    /// The flags that name this store.
    fn flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--data-dir".to_string(),
            self.data_dir.display().to_string(),
        ];
        if let Some((endpoint, prefix)) = &self.etcd {
            flags.extend([
                "--store".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                endpoint.clone(),
                "--etcd-prefix".into(),
                prefix.clone(),
            ]);
        }
        flags
    }

    fn args(&self) -> Args {
        let mut args = Args::with_data_dir(&self.data_dir);
        args.clock = test_clock();
        if let Some((endpoint, prefix)) = &self.etcd {
            args.store = StoreKind::Etcd;
            args.etcd_endpoints = vec![endpoint.clone()];
            args.etcd_prefix = prefix.clone();
            args.etcd_timeout = Duration::from_secs(2);
        }
        args
    }

    async fn start(&self) -> TestServer {
        TestServer::start_with(self.args()).await
    }
}

/// Runs the binary with `args` (no `MAILROOM_*` variable of the test's environment).
async fn mailroom(args: &[String]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mailroom"));
    hermetic(&mut command).args(args);
    let output = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .output();
    support::within(Duration::from_secs(120), "the mailroom command", output)
        .await
        .expect("run the mailroom binary")
}

/// Runs `mailroom <command> <args>`, which must succeed; its standard output.
async fn succeed(command: &str, args: Vec<String>) -> String {
    let output = mailroom(&[vec![command.to_string()], args].concat()).await;
    assert!(
        output.status.success(),
        "mailroom {command} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs `mailroom <command> <args>`, which must fail; its standard error.
async fn fail(command: &str, args: Vec<String>) -> String {
    let output = mailroom(&[vec![command.to_string()], args].concat()).await;
    assert!(
        !output.status.success(),
        "mailroom {command} succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr).unwrap()
}

fn export_args(from: &Place, out: &Path) -> Vec<String> {
    [
        vec!["--out".into(), out.display().to_string()],
        from.flags(),
    ]
    .concat()
}

fn import_args(to: &Place, file: &Path) -> Vec<String> {
    [
        vec!["--from".into(), file.display().to_string()],
        to.flags(),
    ]
    .concat()
}

/// `mailroom migrate`'s arguments: the embedded store of `from` into the etcd of `to`.
fn migrate_args(from: &Place, to: &Place) -> Vec<String> {
    let (endpoint, prefix) = to.etcd.clone().expect("migrate goes to etcd");
    [
        from.flags(),
        vec![
            "--to-store".into(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            endpoint,
            "--etcd-prefix".into(),
            prefix,
        ],
    ]
    .concat()
}

/// Gives `to` the master key and bootstrap key file of `from`, as an operator copies them.
fn copy_keys(from: &Place, to: &Place) {
    if from.data_dir == to.data_dir {
        return;
    }
    std::fs::create_dir_all(&to.data_dir).unwrap();
    for file in ["master.key", "admin.key"] {
        std::fs::copy(from.data_dir.join(file), to.data_dir.join(file)).unwrap();
    }
}

/// What a store holds, as the API shows it.
#[derive(Debug, PartialEq)]
struct Shown {
    settings: pb::SmtpSettings,
    keys: Vec<pb::ApiKey>,
    users: Vec<pb::User>,
    tokens: Vec<pb::TokenInfo>,
    messages: Vec<pb::Message>,
    /// acme's override of the password-changed email in French, and the platform's.
    templates: Vec<pb::EmailTemplate>,
    locale: pb::LocaleSettings,
}

async fn shown(server: &TestServer) -> Shown {
    let admin = &server.admin_key;
    let settings = server
        .smtp(admin)
        .get_smtp_settings(pb::GetSmtpSettingsRequest {})
        .await
        .unwrap()
        .into_inner();
    let keys = server
        .keys(admin)
        .list_api_keys(pb::ListApiKeysRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    let users = server
        .directory(admin)
        .list_users(pb::ListUsersRequest {
            organisation: "acme".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .users;
    let mut tokens = Vec::new();
    for login in ["alice", "bob"] {
        tokens.extend(
            server
                .tokens(admin)
                .list_tokens(pb::ListTokensRequest {
                    login: login.into(),
                    organisation: "acme".into(),
                    page_size: 100,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .tokens,
        );
    }
    let messages = server
        .notifier(admin)
        .list_messages(pb::ListMessagesRequest {
            organisation: "acme".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    let mut templates = Vec::new();
    for (organisation, platform) in [("acme", false), ("", true)] {
        templates.push(
            server
                .templates(admin)
                .get_email_template(pb::GetEmailTemplateRequest {
                    organisation: organisation.into(),
                    platform,
                    kind: pb::EmailKind::PasswordChanged.into(),
                    locale: "fr".into(),
                })
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let locale = server
        .templates(admin)
        .get_locale_settings(pb::GetLocaleSettingsRequest {
            organisation: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    Shown {
        settings,
        keys,
        users,
        tokens,
        messages,
        templates,
        locale,
    }
}

const PASSWORD: &str = "relay-password";
const IDEMPOTENCY_KEY: &str = "case-42-opened";

/// What [`populate`] made that must keep working after a move.
struct Made {
    /// An active reset token of alice.
    token: String,
    /// The secret of an acme key.
    key: String,
    /// The queued message, `RETRYING` (its relay refused the connection).
    message: String,
    /// A line of the client key of the SMTP settings.
    client_key_line: String,
    /// The relay's port in the SMTP settings: refusing connections until a relay serves it.
    relay: HeldPort,
    /// Secrets that must never be in an export in clear.
    secrets: Vec<String>,
}

/// Gives the store of `server` a record of every kind: SMTP settings with a password and
/// a client certificate and key (of `pki`'s CA), API keys, users, tokens (active and
/// consumed) and their rate windows, a message sent, and another queued with an idempotency
/// key (and the quota tallies they counted), left `RETRYING` since its relay refuses
/// connections (until [`Made::relay`] serves), and the key check.
async fn populate(server: &TestServer, pki: &Arc<Pki>) -> Made {
    let earlier = SmtpServer::with_auth(pki, "relay", PASSWORD);
    server
        .configure_secure_smtp(earlier.addr.port(), &pki.ca_pem)
        .await;
    let sent = server
        .send_to(&["soc@example.com"], "Sent before the move", "body")
        .await;
    server
        .wait_for_state(&sent[0], pb::MessageState::Sent)
        .await;
    drop(earlier);
    let client_key = pki.client_key_pem.clone();
    let (port, relay) = held_listener();
    server
        .save_smtp(smtp_settings(port, pki, &pki.client_cert_pem, &client_key))
        .await;
    server
        .add_user("alice", "Alice", "alice@example.com", &["acme"])
        .await;
    server
        .add_user("bob", "Bob", "bob@example.com", &["acme", "beta"])
        .await;
    let key = server
        .create_key("acme", &["manageConfig", "manageUser"])
        .await;
    let mut tokens = server.tokens(&server.admin_key);
    let issue = |login: &str, purpose| issue_request(login, purpose);
    let invitation = tokens
        .issue_token(issue("bob", pb::TokenPurpose::Invitation))
        .await
        .unwrap()
        .into_inner()
        .token;
    tokens
        .consume_token(pb::ConsumeTokenRequest {
            token: invitation.clone(),
            purpose: pb::TokenPurpose::Invitation.into(),
        })
        .await
        .unwrap();
    let token = tokens
        .issue_token(issue("alice", pb::TokenPurpose::PasswordReset))
        .await
        .unwrap()
        .into_inner()
        .token;
    let sent = server
        .notifier(&server.admin_key)
        .send_to_addresses(pb::SendToAddressesRequest {
            organisation: "acme".into(),
            to: vec!["soc@example.com".into()],
            subject: "Moved once".into(),
            body: "Case 42 was opened.".into(),
            idempotency_key: IDEMPOTENCY_KEY.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let message = sent.message_ids[0].clone();
    // An override of a built-in email for acme and one for the platform, and acme's
    // default locale.
    for (organisation, platform, subject) in
        [("acme", false, "acme: {{login}}"), ("", true, "{{login}}")]
    {
        server
            .templates(&server.admin_key)
            .update_email_template(pb::UpdateEmailTemplateRequest {
                organisation: organisation.into(),
                platform,
                kind: pb::EmailKind::PasswordChanged.into(),
                locale: "fr".into(),
                subject: subject.into(),
                text_body: "Mot de passe changé : {{login}}.\n".into(),
                html_body: "<p>Mot de passe changé : <b>{{login}}</b></p>".into(),
                etag: String::new(),
            })
            .await
            .expect("an override");
    }
    server
        .templates(&server.admin_key)
        .update_locale_settings(pb::UpdateLocaleSettingsRequest {
            organisation: "acme".into(),
            default_locale: "fr".into(),
            etag: String::new(),
        })
        .await
        .expect("acme's default locale");
    server
        .wait_for_state(&message, pb::MessageState::Retrying)
        .await;
    let client_key_line = client_key.lines().nth(1).unwrap().to_string();
    Made {
        secrets: vec![
            PASSWORD.into(),
            client_key_line.clone(),
            token.clone(),
            invitation,
            key.clone(),
            server.admin_key.clone(),
        ],
        token,
        key,
        message,
        client_key_line,
        relay,
    }
}

/// SMTP settings for a relay on 127.0.0.1:`port` (STARTTLS with `pki`'s CA, AUTH with
/// [`PASSWORD`], a client certificate).
fn smtp_settings(port: u16, pki: &Pki, certificate: &str, key: &str) -> pb::SmtpSettings {
    pb::SmtpSettings {
        host: "127.0.0.1".into(),
        port: port.into(),
        from: "thehive@example.com".into(),
        security: pb::ConnectionSecurity::Starttls.into(),
        username: "relay".into(),
        password: PASSWORD.into(),
        tls: Some(pb::TlsSettings {
            ca_certificates_pem: pki.ca_pem.clone(),
            client_certificate_pem: certificate.into(),
            client_key_pem: key.into(),
            ..Default::default()
        }),
        link_origins: support::link_origins(),
        ..Default::default()
    }
}

/// The records of an export file, each as JSON, and its header's counts.
fn records(file: &Path) -> (serde_json::Value, Vec<serde_json::Value>) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let records = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    (header["counts"].clone(), records)
}

/// How a round trip moves the store.
#[derive(Clone, Copy, PartialEq)]
enum Move {
    /// `export`, then `import`.
    File,
    /// `migrate` (sled to etcd).
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    Migrate,
}

/// Fills the store at `from`, moves it to `to`, and checks that every record arrived as
/// it was and keeps working there.
async fn round_trip(from: Place, to: Place, how: Move) {
    let pki = Arc::new(Pki::new());
    let mut source = from.start().await;
    let made = populate(&source, &pki).await;
    let before = shown(&source).await;
    let file = from.data_dir.join("export.jsonl");
    if from.etcd.is_none() {
        source.stop().await.unwrap();
    }
    // An etcd store is exported while its replica runs.
    succeed("export", export_args(&from, &file)).await;
    source.stop().await.unwrap();
    let (counts, exported) = records(&file);
    for (kind, count) in [
        ("key_check", 1),
        ("settings", 1),
        ("api_key", 2),
        ("user", 2),
        ("email_template", 2),
        ("locale_settings", 1),
        ("token", 2),
        ("idempotency", 1),
        ("message", 2),
    ] {
        assert_eq!(counts[kind], count, "{kind} in {counts}");
    }
    assert!(counts["rate_window"].as_u64().unwrap() >= 2, "{counts}");
    assert!(counts["quota_tally"].as_u64().unwrap() >= 1, "{counts}");

    // Secrets sealed, keys and tokens as digests: none in clear.
    let bytes = std::fs::read(&file).unwrap();
    for secret in &made.secrets {
        assert!(
            !support::contains(&bytes, secret),
            "the export holds a secret in clear"
        );
    }
    assert!(!support::contains(&bytes, &made.client_key_line));

    copy_keys(&from, &to);
    match how {
        Move::File => {
            succeed("import", import_args(&to, &file)).await;
        }
        Move::Migrate => {
            let printed = succeed("migrate", migrate_args(&from, &to)).await;
            for (kind, count) in [("api_key", 2), ("user", 2), ("token", 2), ("message", 2)] {
                assert!(
                    printed
                        .lines()
                        .any(|line| line.split_whitespace().eq([kind, &count.to_string()])),
                    "{kind} {count} in {printed}"
                );
            }
            assert!(printed.contains("same master key"), "{printed}");
            assert!(!from.data_dir.join("migration.jsonl").exists());
        }
    }

    // Field by field: what the target exports is what the source exported, and the API
    // shows the same.
    let again = to.data_dir.join("again.jsonl");
    succeed("export", export_args(&to, &again)).await;
    let (counts_again, exported_again) = records(&again);
    assert_eq!(counts_again, counts);
    assert_eq!(exported_again.len(), exported.len());
    for (a, b) in exported.iter().zip(&exported_again) {
        assert_eq!(a, b);
    }
    let target = to.start().await;
    assert_eq!(shown(&target).await, before);

    // The API key authenticates; the reset link works once.
    target
        .notifier(&made.key)
        .get_message(pb::GetMessageRequest {
            id: made.message.clone(),
        })
        .await
        .expect("the acme key authenticates after the move");
    let mut tokens = target.tokens(&made.key);
    let consume = || pb::ConsumeTokenRequest {
        token: made.token.clone(),
        purpose: pb::TokenPurpose::PasswordReset.into(),
    };
    let consumed = tokens.consume_token(consume()).await.unwrap().into_inner();
    assert_eq!(consumed.state(), pb::TokenState::Consumed);
    let again = tokens.consume_token(consume()).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // The idempotency key answers its first use, sending nothing.
    let duplicate = target
        .notifier(&target.admin_key)
        .send_to_addresses(pb::SendToAddressesRequest {
            organisation: "acme".into(),
            to: vec!["soc@example.com".into()],
            subject: "Moved once".into(),
            body: "Case 42 was opened.".into(),
            idempotency_key: IDEMPOTENCY_KEY.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(duplicate.duplicate);
    assert_eq!(duplicate.message_ids, std::slice::from_ref(&made.message));

    // The queued message is delivered once, once its relay answers, with the settings as
    // they moved: the password, and the client certificate and key the relay demands. The
    // one sent before the move is not sent again.
    let relay = SmtpServer::start(Options {
        starttls: Some(pki.clone()),
        credentials: Some(("relay".into(), PASSWORD.into())),
        client_auth: true,
        listener: Some(made.relay.clone()),
    });
    target.advance(Duration::from_secs(3600));
    let delivered = target
        .wait_for_state(&made.message, pb::MessageState::Sent)
        .await;
    assert_eq!(delivered.attempts, 2, "one refused attempt before the move");
    eventually(
        Duration::from_secs(5),
        "the relay got the message",
        async || !relay.seen().messages.is_empty(),
    )
    .await;
    let subjects: Vec<_> = relay
        .seen()
        .messages
        .iter()
        .filter_map(|m| m.header("Subject"))
        .collect();
    assert_eq!(subjects, ["Moved once"]);
    let presented = {
        use rustls::pki_types::pem::PemObject;
        let pem = pki.client_cert_pem.as_bytes();
        rustls::pki_types::CertificateDer::from_pem_slice(pem).unwrap()
    };
    let sessions = relay.seen().client_certificates;
    assert!(
        !sessions.is_empty()
            && sessions
                .iter()
                .all(|c| c.as_deref() == Some(&presented[..])),
        "every TLS session with the relay presented the client certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_to_file_to_sled_moves_every_record() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    round_trip(
        Place::sled(&dir.path().join("from")),
        Place::sled(&dir.path().join("to")),
        Move::File,
    )
    .await;
}

#[cfg(feature = "etcd")]
mod on_etcd {
    use super::*;
    use support::etcd::Etcd;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_to_file_to_etcd_moves_every_record() {
        let _watchdog = crate::support::watchdog();
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        round_trip(
            Place::etcd(&dir.path().join("from"), &etcd.endpoint, "/first/"),
            Place::etcd(&dir.path().join("to"), &etcd.endpoint, "/second/"),
            Move::File,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sled_to_file_to_etcd_moves_every_record() {
        let _watchdog = crate::support::watchdog();
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        round_trip(
            Place::sled(&dir.path().join("from")),
            Place::etcd(&dir.path().join("to"), &etcd.endpoint, "/mailroom/"),
            Move::File,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_to_file_to_sled_moves_every_record() {
        let _watchdog = crate::support::watchdog();
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        round_trip(
            Place::etcd(&dir.path().join("from"), &etcd.endpoint, "/mailroom/"),
            Place::sled(&dir.path().join("to")),
            Move::File,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_import_into_etcd_killed_midway_then_run_again_ends_as_one_clean_run() {
        let _watchdog = crate::support::watchdog();
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        killed_midway(
            dir.path(),
            Place::etcd(&dir.path().join("clean"), &etcd.endpoint, "/clean/"),
            Place::etcd(&dir.path().join("cut"), &etcd.endpoint, "/cut/"),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrate_moves_the_embedded_store_to_etcd_in_one_step() {
        let _watchdog = crate::support::watchdog();
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        round_trip(
            Place::sled(&dir.path().join("from")),
            Place::etcd(&dir.path().join("from"), &etcd.endpoint, "/mailroom/"),
            Move::Migrate,
        )
        .await;
    }

    /// A refused migrate leaves no copy of the store behind, and a refused import lets the
    /// prefix go at once (the next import found it held, and waited for the hold to lapse).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_migrate_or_import_into_etcd_leaves_nothing_behind() {
        let _watchdog = crate::support::watchdog();
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let (from, file) = exported(dir.path()).await;
        let to = Place::etcd(&dir.path().join("from"), &etcd.endpoint, "/refused/");
        succeed("import", import_args(&to, &file)).await;
        let error = fail("migrate", migrate_args(&from, &to)).await;
        assert!(error.contains("already holds records"), "{error}");
        assert!(
            !from.data_dir.join("migration.jsonl").exists(),
            "a copy of the whole store was left in the data directory"
        );
        let again = mailroom(
            &[
                vec!["import".into()],
                import_args(&to, &file),
                vec!["--replace".into()],
            ]
            .concat(),
        )
        .await;
        let said = String::from_utf8_lossy(&again.stderr);
        assert!(again.status.success(), "{said}");
        assert!(!said.contains("another import holds"), "{said}");
    }
}

/// A store with a few records, stopped, and its export.
async fn exported(dir: &Path) -> (Place, PathBuf) {
    let from = Place::sled(&dir.join("from"));
    let mut source = from.start().await;
    populate(&source, &Arc::new(Pki::new())).await;
    source.stop().await.unwrap();
    let file = dir.join("export.jsonl");
    succeed("export", export_args(&from, &file)).await;
    (from, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_of_an_embedded_store_in_use_is_refused_clearly() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sled(dir.path());
    let _running = place.start().await;
    let file = dir.path().join("export.jsonl");
    let error = fail("export", export_args(&place, &file)).await;
    assert!(error.contains("stop it first"), "{error}");
    assert!(!file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_with_another_master_key_is_refused_before_writing() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let (_, file) = exported(dir.path()).await;
    let to = Place::sled(&dir.path().join("to"));
    std::fs::create_dir_all(&to.data_dir).unwrap();
    mailroom::crypto::MasterKey::load_or_create(&to.data_dir.join("master.key")).unwrap();
    let error = fail("import", import_args(&to, &file)).await;
    assert!(error.contains("does not open"), "{error}");
    assert!(error.contains("Nothing was written"), "{error}");
    assert!(!to.data_dir.join("sled").exists(), "the store was opened");

    // No key at all: refused too, and none is made.
    std::fs::remove_file(to.data_dir.join("master.key")).unwrap();
    let error = fail("import", import_args(&to, &file)).await;
    assert!(error.contains("no master key"), "{error}");
    assert!(!to.data_dir.join("master.key").exists());
    assert!(!to.data_dir.join("sled").exists());
}

/// Whoever can write a backup but holds no master key cannot make it import an API key of
/// their own: the header's seal vouches for the records as exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_changed_afterwards_is_refused_before_writing() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let (from, file) = exported(dir.path()).await;
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut header: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    let key_line = lines
        .iter()
        .position(|l| l.contains("\"kind\":\"api_key\""))
        .unwrap();
    let mut forged: serde_json::Value = serde_json::from_str(&lines[key_line]).unwrap();
    forged["record"]["id"] = "key_forged".into();
    forged["record"]["organisation"] = "admin".into();
    forged["record"]["secret_digest"] = mailroom::crypto::digest("mrk_forged").into();
    lines.insert(key_line + 1, forged.to_string());
    let keys = header["counts"]["api_key"].as_u64().unwrap();
    header["counts"]["api_key"] = (keys + 1).into();
    lines[0] = header.to_string();
    let changed = dir.path().join("changed.jsonl");
    std::fs::write(&changed, lines.join("\n") + "\n").unwrap();

    let to = Place::sled(&dir.path().join("to"));
    copy_keys(&from, &to);
    let error = fail("import", import_args(&to, &changed)).await;
    assert!(error.contains("changed after it was exported"), "{error}");
    assert!(error.contains("Nothing was written"), "{error}");
    assert!(!to.data_dir.join("sled").exists(), "the store was opened");
    // The file as exported imports.
    succeed("import", import_args(&to, &file)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_into_a_store_holding_records_is_refused_unless_replacing() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let (from, file) = exported(dir.path()).await;
    let to = Place::sled(&dir.path().join("to"));
    copy_keys(&from, &to);
    // A server started there once: it made a bootstrap key of its own.
    std::fs::remove_file(to.data_dir.join("admin.key")).unwrap();
    let mut there = to.start().await;
    let own_admin = there.admin_key.clone();
    there.stop().await.unwrap();
    let error = fail("import", import_args(&to, &file)).await;
    assert!(error.contains("already holds records"), "{error}");
    let mut there = to.start().await;
    let keys = there
        .keys(&own_admin)
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .expect("the store is as it was")
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1);
    there.stop().await.unwrap();

    succeed(
        "import",
        [import_args(&to, &file), vec!["--replace".into()]].concat(),
    )
    .await;
    std::fs::copy(
        from.data_dir.join("admin.key"),
        to.data_dir.join("admin.key"),
    )
    .unwrap();
    let there = to.start().await;
    assert_eq!(shown(&there).await.keys.len(), 2);
    let refused = there
        .keys(&own_admin)
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "replaced");
}

/// `file` with `extra` more copies of its first user record, each another login.
fn with_many_users(file: &Path, extra: u64, master_key: &Path) -> PathBuf {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines();
    let mut header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let records: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let user = records
        .iter()
        .find(|r| r["kind"] == "user")
        .unwrap()
        .clone();
    let users = header["counts"]["user"].as_u64().unwrap();
    header["counts"]["user"] = (users + extra).into();
    use std::io::Write;
    let mut lines = Vec::new();
    for record in &records {
        writeln!(lines, "{record}").unwrap();
        if record == &user {
            for n in 0..extra {
                let mut copy = user.clone();
                copy["record"]["login"] = format!("user{n:06}@example.com").into();
                writeln!(lines, "{copy}").unwrap();
            }
        }
    }
    // Sealed again over the records, as an export under that key would.
    use sha2::Digest;
    let key = mailroom::crypto::MasterKey::load_or_create(master_key).unwrap();
    let digest = hex::encode(sha2::Sha256::digest(&lines));
    header["integrity"] =
        serde_json::to_value(key.seal(mailroom::snapshot::file::INTEGRITY_PURPOSE, &digest))
            .unwrap();
    let big = file.with_file_name("big.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
    writeln!(out, "{header}").unwrap();
    out.write_all(&lines).unwrap();
    out.into_inner().unwrap().sync_all().unwrap();
    big
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_midway_then_run_again_ends_as_one_clean_run() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    killed_midway(
        dir.path(),
        Place::sled(&dir.path().join("clean")),
        Place::sled(&dir.path().join("cut")),
    )
    .await;
}

/// Imports a large file into `clean`, and into `cut` killed (SIGKILL) once it wrote its
/// first records, then again: both stores must end the same.
async fn killed_midway(dir: &Path, clean: Place, cut: Place) {
    let (from, small) = exported(dir).await;
    let file = with_many_users(&small, 20_000, &from.data_dir.join("master.key"));

    copy_keys(&from, &clean);
    succeed("import", import_args(&clean, &file)).await;

    copy_keys(&from, &cut);
    let mut command = Command::new(env!("CARGO_BIN_EXE_mailroom"));
    hermetic(&mut command)
        .arg("import")
        .args(import_args(&cut, &file))
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    support::watch_child(child.id());
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    use std::io::BufRead;
    let mut lines = stderr.lines();
    let started = lines.any(|line| line.unwrap().contains("records imported so far"));
    assert!(started, "the import reported no progress");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    support::forget_child(child.id());
    child.wait().unwrap();

    // Marked: the server refuses the store an import left halfway.
    let refused = eventually(Duration::from_secs(10), "the store let go", async || {
        match mailroom::server::Mailroom::open(cut.args()).await {
            Err(e) if format!("{e:#}").contains("lock") => Err(format!("{e:#}")),
            Err(e) => Ok(format!("{e:#}")),
            Ok(_) => Ok("opened".into()),
        }
    })
    .await;
    assert!(refused.contains("did not finish"), "{refused}");
    // So does an export: a backup of a half-imported store would look whole.
    let (once, twice) = (dir.join("once.jsonl"), dir.join("twice.jsonl"));
    let refused = fail("export", export_args(&cut, &twice)).await;
    assert!(refused.contains("did not finish"), "{refused}");
    assert!(!twice.exists(), "nothing written");

    succeed("import", import_args(&cut, &file)).await;
    succeed("export", export_args(&clean, &once)).await;
    succeed("export", export_args(&cut, &twice)).await;
    // An export never replaces a file (`--out` naming master.key would lose the key).
    let before = std::fs::read(&once).unwrap();
    let refused = fail("export", export_args(&clean, &once)).await;
    assert!(refused.contains("already exists"), "{refused}");
    assert!(
        std::fs::read(&once).unwrap() == before,
        "the file is as it was"
    );
    let (counts_once, once) = records(&once);
    let (counts_twice, twice) = records(&twice);
    assert_eq!(counts_once["user"], 20_002);
    assert_eq!(counts_twice, counts_once);
    assert!(once == twice, "the store differs from one clean run's");
    cut.start().await.assert_serving().await;
}
