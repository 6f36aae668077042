//! Secrets stay secret: every message of the contract and every domain type that holds a
//! password, a private key, a token, an API key or the master key prints it as `[redacted]`
//! under `Debug`; a `master.key` or `admin.key` open to group or others stops the start.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::SystemTime;

use mailroom::auth::{ApiKey, NewKey, Permission};
use mailroom::config::Args;
use mailroom::crypto::MasterKey;
use mailroom::proto::v1 as pb;
use mailroom::server::Mailroom;
use mailroom::settings::{AuthDraft, OAuth2Draft, SettingsDraft, TlsDraft};
use mailroom::tokens::{Issued, Purpose, Token, TokenState};
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value,
};
use support::TestServer;

/// Every secret in these tests contains it; no `Debug` output may.
const SECRET: &str = "s3cr3t-value";

/// Whether a field looks like it holds a secret, by its name. Wider on purpose than the
/// exact names build.rs redacts: a new field such as `refresh_token` or `webhook_secret`
/// fails this test until build.rs redacts it too (or it is listed as no secret here).
fn looks_secret(field: &FieldDescriptor) -> bool {
    const PARTS: &[&str] = &[
        "password",
        "secret",
        "token",
        "private_key",
        "key_pem",
        "credential",
    ];
    // Page cursors and the OAuth2 token endpoint, not secrets.
    const NOT_SECRET: &[&str] = &["page_token", "next_page_token", "token_url"];
    matches!(field.kind(), Kind::String | Kind::Bytes)
        && PARTS.iter().any(|part| field.name().contains(part))
        && !NOT_SECRET.contains(&field.name())
}

/// Formats the message of each generated type that carries a secret, from its encoding.
macro_rules! debug_of {
    ($($message:ident),* $(,)?) => {
        BTreeMap::from([$((
            concat!("mailroom.v1.", stringify!($message)),
            (|bytes: &[u8]| format!("{:?}", pb::$message::decode(bytes).unwrap()))
                as fn(&[u8]) -> String,
        )),*])
    };
}

/// Whether `message` holds a secret, in a field of its own or of a message it holds.
fn carries_secret(message: &MessageDescriptor, seen: &mut BTreeSet<String>) -> bool {
    if !seen.insert(message.full_name().to_string()) {
        return false;
    }
    message.fields().any(|field| match field.kind() {
        Kind::Message(inner) => carries_secret(&inner, &mut seen.clone()),
        _ => looks_secret(&field),
    })
}

/// A message filled for the test: every string set (secrets to [`SECRET`]), every message
/// of the contract filled in turn (`depth` levels down).
struct Filled {
    message: DynamicMessage,
    /// How many secrets it holds.
    secrets: usize,
    /// The values of its other strings, which `Debug` still prints.
    shown: Vec<String>,
}

fn fill(descriptor: &MessageDescriptor, depth: usize) -> Filled {
    let mut filled = Filled {
        message: DynamicMessage::new(descriptor.clone()),
        secrets: 0,
        shown: Vec::new(),
    };
    let mut oneofs = BTreeSet::new();
    for field in descriptor.fields() {
        // One member of a oneof: setting another would replace it.
        if let Some(oneof) = field.containing_oneof() {
            if !oneofs.insert(oneof.full_name().to_string()) {
                continue;
            }
        }
        let value = match field.kind() {
            _ if field.is_map() => continue,
            Kind::String | Kind::Bytes if looks_secret(&field) => {
                filled.secrets += 1;
                let secret = format!("{SECRET} of {}", field.full_name());
                match field.kind() {
                    Kind::Bytes => Value::Bytes(secret.into_bytes().into()),
                    _ => Value::String(secret),
                }
            }
            Kind::String => {
                let shown = format!("shown {}", field.full_name());
                filled.shown.push(shown.clone());
                Value::String(shown)
            }
            Kind::Message(inner) if depth > 0 && inner.package_name() == "mailroom.v1" => {
                let inner = fill(&inner, depth - 1);
                filled.secrets += inner.secrets;
                filled.shown.extend(inner.shown);
                Value::Message(inner.message)
            }
            _ => continue,
        };
        let value = if field.is_list() {
            Value::List(vec![value])
        } else {
            value
        };
        filled.message.set_field(&field, value);
    }
    filled
}

#[test]
fn every_message_with_a_secret_prints_it_redacted() {
    let _watchdog = crate::support::watchdog();
    // Every generated type that carries a secret; the test below checks that the list is
    // complete, so a new one is added here (and then checked).
    let debug_of = debug_of![
        AuthSettings,
        ConsumeTokenRequest,
        CreateApiKeyResponse,
        IssueTokenResponse,
        Oauth2Settings,
        SmtpSettings,
        TestSmtpSettingsRequest,
        TlsSettings,
        UpdateSmtpSettingsRequest,
        VerifyTokenRequest,
    ];
    let pool = DescriptorPool::decode(mailroom::proto::FILE_DESCRIPTOR_SET).unwrap();
    let carriers: Vec<MessageDescriptor> = pool
        .all_messages()
        .filter(|m| m.package_name() == "mailroom.v1")
        .filter(|m| carries_secret(m, &mut BTreeSet::new()))
        .collect();
    let names: BTreeSet<&str> = carriers.iter().map(|m| m.full_name()).collect();
    assert_eq!(
        names,
        debug_of.keys().copied().collect(),
        "the messages that carry a secret, and those this test formats"
    );
    for message in &carriers {
        let filled = fill(message, 3);
        assert!(filled.secrets > 0, "{}", message.full_name());
        let debug = debug_of[message.full_name()](&filled.message.encode_to_vec());
        assert!(!debug.contains(SECRET), "a secret printed: {debug}");
        assert_eq!(
            debug.matches("[redacted]").count(),
            filled.secrets,
            "each secret prints as [redacted]: {debug}"
        );
        for shown in &filled.shown {
            assert!(debug.contains(shown), "{shown:?} is still printed: {debug}");
        }
    }
}

#[test]
fn a_redacted_message_prints_its_other_fields_as_prost_does() {
    let _watchdog = crate::support::watchdog();
    let empty = format!("{:?}", pb::VerifyTokenRequest::default());
    assert_eq!(
        empty,
        r#"VerifyTokenRequest { token: "", purpose: Unspecified }"#
    );
    let request = pb::VerifyTokenRequest {
        token: SECRET.into(),
        purpose: pb::TokenPurpose::Invitation.into(),
    };
    assert_eq!(
        format!("{request:?}"),
        "VerifyTokenRequest { token: [redacted], purpose: Invitation }"
    );
    // A value this version does not know prints as its number, as prost's derive does.
    let unknown = pb::VerifyTokenRequest {
        purpose: 99,
        ..request
    };
    assert!(
        format!("{unknown:?}").contains("purpose: 99"),
        "{unknown:?}"
    );
}

#[test]
fn domain_types_print_their_secrets_redacted() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.key");
    let master_key = MasterKey::load_or_create(&key_file).unwrap();
    let master_hex = std::fs::read_to_string(&key_file).unwrap();
    let draft = SettingsDraft {
        password: SECRET.into(),
        tls: TlsDraft {
            client_key_pem: SECRET.into(),
            ..Default::default()
        },
        auth: AuthDraft {
            oauth2: OAuth2Draft {
                client_secret: SECRET.into(),
                private_key_pem: SECRET.into(),
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let now = SystemTime::now();
    let new_key = NewKey {
        key: ApiKey {
            id: "key_1".into(),
            name: "soc".into(),
            organisation: "admin".into(),
            permissions: vec![Permission::ManagePlatform],
            create_time: now,
            revoked: false,
            secret_digest: mailroom::crypto::digest(SECRET),
        },
        secret: SECRET.into(),
    };
    let issued = Issued {
        secret: SECRET.into(),
        token: Token {
            id: "tok_1".into(),
            digest: mailroom::crypto::digest(SECRET),
            purpose: Purpose::PasswordReset,
            login: "alice".into(),
            email: "alice@example.com".into(),
            organisation: "acme".into(),
            state: TokenState::Active,
            create_time: now,
            expire_time: now,
            consume_time: None,
            revoke_time: None,
            metadata: BTreeMap::new(),
            version: 0,
        },
        message_id: None,
    };
    for (debug, secrets, secret) in [
        (format!("{draft:?}"), 4, SECRET),
        (format!("{new_key:?}"), 1, SECRET),
        (format!("{issued:?}"), 1, SECRET),
        (format!("{master_key:?}"), 1, master_hex.trim()),
    ] {
        assert!(!debug.contains(secret), "a secret printed: {debug}");
        // secrecy's `SecretString` writes the mark in capitals.
        assert_eq!(
            debug.to_lowercase().matches("[redacted]").count(),
            secrets,
            "{debug}"
        );
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Why mailroom refuses to start with `args`.
async fn refusal(args: Args) -> String {
    match Mailroom::open(args).await {
        Ok(_) => panic!("mailroom started"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn a_master_key_open_to_others_stops_the_start() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let in_data_dir = dir.path().join("master.key");
    MasterKey::load_or_create(&in_data_dir).unwrap();
    set_mode(&in_data_dir, 0o644);
    let error = refusal(Args::with_data_dir(dir.path())).await;
    let fix = format!("chmod 600 {}", in_data_dir.display());
    assert!(error.contains(&fix), "{error}");
    set_mode(&in_data_dir, 0o600);
    TestServer::start_in(dir.path()).await.stop().await.unwrap();

    // The same for a key file named by --master-key-file, readable by its group.
    let elsewhere = tempfile::tempdir().unwrap();
    let named = elsewhere.path().join("mailroom.key");
    std::fs::copy(&in_data_dir, &named).unwrap();
    set_mode(&named, 0o640);
    let mut args = Args::with_data_dir(dir.path());
    args.master_key_file = Some(named.clone());
    let error = refusal(args.clone()).await;
    assert!(
        error.contains(&format!("chmod 600 {}", named.display())),
        "{error}"
    );
    set_mode(&named, 0o600);
    TestServer::start_with(args).await.stop().await.unwrap();
}

/// A store started once has its secrets sealed under its key: started without that key
/// file, it stops with what to do, and leaves no new key behind (it made one, then found it
/// opened nothing).
#[tokio::test]
async fn a_store_without_its_master_key_stops_the_start_and_makes_none() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    TestServer::start_in(dir.path()).await.stop().await.unwrap();
    let key = dir.path().join("master.key");
    let kept = dir.path().join("master.key.kept");
    std::fs::rename(&key, &kept).unwrap();
    let error = refusal(Args::with_data_dir(dir.path())).await;
    assert!(error.contains("--master-key-file"), "{error}");
    assert!(!key.exists(), "a new master key was left behind");
    std::fs::rename(&kept, &key).unwrap();
    TestServer::start_in(dir.path()).await.stop().await.unwrap();
}

#[tokio::test]
async fn an_admin_key_open_to_others_stops_the_start() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    TestServer::start_in(dir.path()).await.stop().await.unwrap();
    let admin_key = dir.path().join("admin.key");
    set_mode(&admin_key, 0o644);
    let error = refusal(Args::with_data_dir(dir.path())).await;
    let fix = format!("chmod 600 {}", admin_key.display());
    assert!(error.contains(&fix), "{error}");
    set_mode(&admin_key, 0o600);
    TestServer::start_in(dir.path()).await.stop().await.unwrap();
}
