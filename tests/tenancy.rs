//! Tenants are hostile to each other: a key of organisation acme, however it builds its
//! requests, never reads, changes, revokes, rate-limits or greets anything of organisation
//! beta, and every refusal leaves beta's users, tokens, messages and keys as they were. On
//! sled, and on etcd with the `etcd` feature (the revocation on issue is a store operation).
//! Which RPCs name an id, a login or an organisation comes from the contract's descriptor
//! ([`rows`] must cover them all); how each refuses is pinned in the table.

use std::future::Future;

use mailroom::proto::v1 as pb;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::support::{self, contract, on_every_store, TestServer};

const RESET: pb::TokenPurpose = pb::TokenPurpose::PasswordReset;

/// Refused for the organisation: PERMISSION_DENIED, with `reason` when given.
#[track_caller]
fn denied<T: std::fmt::Debug>(result: Result<T, Status>, reason: Option<&str>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    if let Some(reason) = reason {
        let info = status.get_details_error_info();
        assert_eq!(
            info.map(|i| i.reason).as_deref(),
            Some(reason),
            "{what}: {status:?}"
        );
    }
}

const NOT_MEMBER: Option<&str> = Some("LOGIN_NOT_IN_ORGANISATION");

/// [`on_every_store`], with a key of acme holding every permission planted in the store
/// (see [`contract::plant_key`]): `scenario` gets the server and that key's secret.
async fn on_every_store_with_acme_key<F: Future<Output = ()>>(
    scenario: impl Fn(TestServer, String) -> F,
) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (server, acme) = contract::start_with_planted_key(dir.path(), "acme").await;
    scenario(server, acme).await;
    #[cfg(feature = "etcd")]
    {
        let Some(etcd) = support::etcd::Etcd::start().await else {
            return;
        };
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut args = mailroom::config::Args::with_data_dir(dir.path());
        args.store = mailroom::config::StoreKind::Etcd;
        args.etcd_endpoints = vec![etcd.endpoint.clone()];
        args.clock = support::test_clock();
        let store = etcd
            .store(&args.etcd_prefix)
            .await
            .expect("connect to etcd");
        let server = TestServer::start_with(args).await;
        let acme = contract::plant_key(&store, "acme").await;
        scenario(server, acme).await;
    }
}

/// What organisation beta holds: its users, bob's tokens, its messages, its API keys, its
/// email templates and its locale settings.
#[derive(Debug, PartialEq)]
struct BetaState {
    users: Vec<pb::User>,
    tokens: Vec<pb::TokenInfo>,
    messages: Vec<pb::Message>,
    keys: Vec<pb::ApiKey>,
    templates: Vec<pb::EmailTemplate>,
    locale: pb::LocaleSettings,
}

async fn beta_state(server: &TestServer, beta: &str) -> BetaState {
    let users = server
        .directory(beta)
        .list_users(pb::ListUsersRequest::default())
        .await
        .expect("beta lists its users")
        .into_inner()
        .users;
    let tokens = server
        .tokens(beta)
        .list_tokens(pb::ListTokensRequest {
            login: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("beta lists bob's tokens")
        .into_inner()
        .tokens;
    let messages = server
        .notifier(beta)
        .list_messages(pb::ListMessagesRequest::default())
        .await
        .expect("beta lists its messages")
        .into_inner()
        .messages;
    let keys = server
        .keys(&server.admin_key)
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .expect("the admin lists the keys")
        .into_inner()
        .keys
        .into_iter()
        .filter(|k| k.organisation == "beta")
        .collect();
    let templates = server
        .templates(beta)
        .list_email_templates(pb::ListEmailTemplatesRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("beta lists its templates")
        .into_inner()
        .templates;
    let locale = server
        .templates(beta)
        .get_locale_settings(pb::GetLocaleSettingsRequest::default())
        .await
        .expect("beta reads its locale settings")
        .into_inner();
    BetaState {
        users,
        tokens,
        messages,
        keys,
        templates,
        locale,
    }
}

/// A request of acme's for beta's email template (password changed, in English).
fn beta_template() -> (String, i32, String) {
    (
        "beta".into(),
        pb::EmailKind::PasswordChanged.into(),
        "en".into(),
    )
}

/// How acme's key is answered when its request names something of beta's.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// NOT_FOUND: for acme, beta's resource does not exist.
    NotFound,
    /// PERMISSION_DENIED for the organisation acme tried to act for.
    OtherOrganisation,
    /// PERMISSION_DENIED: the login is a user of another organisation's Directory
    /// (`LOGIN_NOT_IN_ORGANISATION`).
    NotMember,
    /// PERMISSION_DENIED: a user acme does not manage alone.
    NotManaged,
    /// Served within acme's own (an idempotency key is per organisation): the answer names
    /// nothing of beta's.
    Apart,
}

/// What beta holds that acme's requests name.
struct Beta {
    token: String,
    message: String,
    key_id: String,
    idempotency_key: String,
}

/// A request of acme naming something of beta's in `field` of RPC `path`, and how it is
/// answered: pinned here for every field of every RPC of the contract that names an id, a
/// login or an organisation (checked against the descriptor).
struct Row {
    path: &'static str,
    field: &'static str,
    answer: Answer,
    request: fn(&Beta) -> Vec<u8>,
}

fn row(
    path: &'static str,
    field: &'static str,
    answer: Answer,
    request: fn(&Beta) -> Vec<u8>,
) -> Row {
    Row {
        path,
        field,
        answer,
        request,
    }
}

fn encoded(request: impl prost::Message) -> Vec<u8> {
    request.encode_to_vec()
}

fn rows() -> Vec<Row> {
    use Answer::*;
    vec![
        row("/mailroom.v1.Token/IssueToken", "login", NotMember, |_| {
            encoded(pb::IssueTokenRequest {
                purpose: RESET.into(),
                login: "bob".into(),
                email: "attacker@acme.example".into(),
                ..Default::default()
            })
        }),
        // Naming its own organisation changes nothing.
        row("/mailroom.v1.Token/IssueToken", "login", NotMember, |_| {
            encoded(pb::IssueTokenRequest {
                purpose: RESET.into(),
                login: "bob".into(),
                email: "attacker@acme.example".into(),
                organisation: "acme".into(),
                ..Default::default()
            })
        }),
        row(
            "/mailroom.v1.Token/IssueToken",
            "organisation",
            OtherOrganisation,
            |_| {
                encoded(pb::IssueTokenRequest {
                    purpose: RESET.into(),
                    login: "bob".into(),
                    organisation: "beta".into(),
                    ..Default::default()
                })
            },
        ),
        row("/mailroom.v1.Token/VerifyToken", "token", NotFound, |b| {
            encoded(pb::VerifyTokenRequest {
                token: b.token.clone(),
                purpose: RESET.into(),
            })
        }),
        row("/mailroom.v1.Token/ConsumeToken", "token", NotFound, |b| {
            encoded(pb::ConsumeTokenRequest {
                token: b.token.clone(),
                purpose: RESET.into(),
            })
        }),
        row(
            "/mailroom.v1.Token/RevokeTokens",
            "login",
            NotMember,
            |_| {
                encoded(pb::RevokeTokensRequest {
                    login: "bob".into(),
                    ..Default::default()
                })
            },
        ),
        row(
            "/mailroom.v1.Token/RevokeTokens",
            "organisation",
            OtherOrganisation,
            |_| {
                encoded(pb::RevokeTokensRequest {
                    login: "bob".into(),
                    organisation: "beta".into(),
                    ..Default::default()
                })
            },
        ),
        row("/mailroom.v1.Token/ListTokens", "login", NotMember, |_| {
            encoded(pb::ListTokensRequest {
                login: "bob".into(),
                ..Default::default()
            })
        }),
        row(
            "/mailroom.v1.Token/ListTokens",
            "organisation",
            OtherOrganisation,
            |_| {
                encoded(pb::ListTokensRequest {
                    login: "bob".into(),
                    organisation: "beta".into(),
                    ..Default::default()
                })
            },
        ),
        row(
            "/mailroom.v1.Notifier/SendToAddresses",
            "organisation",
            OtherOrganisation,
            |_| {
                encoded(pb::SendToAddressesRequest {
                    organisation: "beta".into(),
                    to: vec!["x@example.com".into()],
                    subject: "s".into(),
                    body: "b".into(),
                    ..Default::default()
                })
            },
        ),
        row(
            "/mailroom.v1.Notifier/SendToAddresses",
            "idempotency_key",
            Apart,
            |b| {
                encoded(pb::SendToAddressesRequest {
                    to: vec!["x@example.com".into()],
                    subject: "s".into(),
                    body: "b".into(),
                    idempotency_key: b.idempotency_key.clone(),
                    ..Default::default()
                })
            },
        ),
        row(
            "/mailroom.v1.Notifier/SendToUsers",
            "organisation",
            OtherOrganisation,
            |_| {
                encoded(pb::SendToUsersRequest {
                    organisation: "beta".into(),
                    subject: "s".into(),
                    body: "b".into(),
                    ..Default::default()
                })
            },
        ),
        row(
            "/mailroom.v1.Notifier/SendToUsers",
            "idempotency_key",
            Apart,
            |b| {
                encoded(pb::SendToUsersRequest {
                    subject: "s".into(),
                    body: "b".into(),
                    idempotency_key: b.idempotency_key.clone(),
                    ..Default::default()
                })
            },
        ),
        row(
            "/mailroom.v1.Notifier/SendAccountNotice",
            "login",
            NotMember,
            |_| {
                encoded(pb::SendAccountNoticeRequest {
                    kind: pb::AccountNoticeKind::PasswordReset.into(),
                    login: "bob".into(),
                    ..Default::default()
                })
            },
        ),
        row(
            "/mailroom.v1.Notifier/SendAccountNotice",
            "organisation",
            OtherOrganisation,
            |_| {
                encoded(pb::SendAccountNoticeRequest {
                    kind: pb::AccountNoticeKind::PasswordReset.into(),
                    login: "bob".into(),
                    organisation: "beta".into(),
                    ..Default::default()
                })
            },
        ),
        row("/mailroom.v1.Notifier/GetMessage", "id", NotFound, |b| {
            encoded(pb::GetMessageRequest {
                id: b.message.clone(),
            })
        }),
        row(
            "/mailroom.v1.Notifier/ListMessages",
            "organisation",
            OtherOrganisation,
            |_| {
                encoded(pb::ListMessagesRequest {
                    organisation: "beta".into(),
                    ..Default::default()
                })
            },
        ),
        row("/mailroom.v1.Notifier/RetryMessage", "id", NotFound, |b| {
            encoded(pb::RetryMessageRequest {
                id: b.message.clone(),
            })
        }),
        row("/mailroom.v1.Notifier/CancelMessage", "id", NotFound, |b| {
            encoded(pb::CancelMessageRequest {
                id: b.message.clone(),
            })
        }),
        row(
            "/mailroom.v1.Directory/UpsertUser",
            "user.login",
            NotManaged,
            |_| {
                encoded(pb::UpsertUserRequest {
                    user: Some(pb::User {
                        login: "bob".into(),
                        email: "attacker@acme.example".into(),
                        organisations: vec!["acme".into()],
                        ..Default::default()
                    }),
                })
            },
        ),
        row(
            "/mailroom.v1.Directory/UpsertUser",
            "user.organisations",
            NotManaged,
            |_| {
                encoded(pb::UpsertUserRequest {
                    user: Some(pb::User {
                        login: "mallory".into(),
                        email: "mallory@acme.example".into(),
                        organisations: vec!["beta".into()],
                        ..Default::default()
                    }),
                })
            },
        ),
        row("/mailroom.v1.Directory/GetUser", "login", NotFound, |_| {
            encoded(pb::GetUserRequest {
                login: "bob".into(),
            })
        }),
        row(
            "/mailroom.v1.Directory/DeleteUser",
            "login",
            NotFound,
            |_| {
                encoded(pb::DeleteUserRequest {
                    login: "bob".into(),
                })
            },
        ),
        row(
            "/mailroom.v1.Directory/ListUsers",
            "organisation",
            OtherOrganisation,
            |_| {
                encoded(pb::ListUsersRequest {
                    organisation: "beta".into(),
                    ..Default::default()
                })
            },
        ),
        row(
            "/mailroom.v1.ApiKeys/CreateApiKey",
            "organisation",
            OtherOrganisation,
            |_| {
                encoded(pb::CreateApiKeyRequest {
                    name: "k".into(),
                    organisation: "beta".into(),
                    permissions: vec!["manageUser".into()],
                })
            },
        ),
        row("/mailroom.v1.ApiKeys/RevokeApiKey", "id", NotFound, |b| {
            encoded(pb::RevokeApiKeyRequest {
                id: b.key_id.clone(),
            })
        }),
        row(
            "/mailroom.v1.Templates/ListEmailTemplates",
            "organisation",
            OtherOrganisation,
            |_| {
                encoded(pb::ListEmailTemplatesRequest {
                    organisation: "beta".into(),
                    ..Default::default()
                })
            },
        ),
        row(
            "/mailroom.v1.Templates/GetEmailTemplate",
            "organisation",
            OtherOrganisation,
            |_| {
                let (organisation, kind, locale) = beta_template();
                encoded(pb::GetEmailTemplateRequest {
                    organisation,
                    kind,
                    locale,
                    platform: false,
                })
            },
        ),
        row(
            "/mailroom.v1.Templates/UpdateEmailTemplate",
            "organisation",
            OtherOrganisation,
            |_| {
                let (organisation, kind, locale) = beta_template();
                encoded(pb::UpdateEmailTemplateRequest {
                    organisation,
                    kind,
                    locale,
                    subject: "Phish {{login}}".into(),
                    text_body: "Open https://attacker.example".into(),
                    ..Default::default()
                })
            },
        ),
        row(
            "/mailroom.v1.Templates/ResetEmailTemplate",
            "organisation",
            OtherOrganisation,
            |_| {
                let (organisation, kind, locale) = beta_template();
                encoded(pb::ResetEmailTemplateRequest {
                    organisation,
                    kind,
                    locale,
                    ..Default::default()
                })
            },
        ),
        row(
            "/mailroom.v1.Templates/PreviewEmail",
            "organisation",
            OtherOrganisation,
            |_| {
                let (organisation, kind, locale) = beta_template();
                encoded(pb::PreviewEmailRequest {
                    organisation,
                    kind,
                    locale,
                    ..Default::default()
                })
            },
        ),
        row(
            "/mailroom.v1.Templates/GetLocaleSettings",
            "organisation",
            OtherOrganisation,
            |_| {
                encoded(pb::GetLocaleSettingsRequest {
                    organisation: "beta".into(),
                })
            },
        ),
        row(
            "/mailroom.v1.Templates/UpdateLocaleSettings",
            "organisation",
            OtherOrganisation,
            |_| {
                encoded(pb::UpdateLocaleSettingsRequest {
                    organisation: "beta".into(),
                    default_locale: "es".into(),
                    ..Default::default()
                })
            },
        ),
    ]
}

/// Checks `answer` to acme's request of `row` (`what` says which).
#[track_caller]
fn check(row: &Row, answered: Result<Vec<u8>, Status>, beta: &Beta, what: &str) {
    let status = match (row.answer, answered) {
        (Answer::Apart, Ok(response)) => {
            for id in [&beta.message, &beta.key_id, &beta.token] {
                assert!(
                    !support::contains(&response, id),
                    "{what}: the answer names beta's {id}"
                );
            }
            return;
        }
        (answer, Ok(_)) => panic!("{what}: served, not {answer:?}"),
        (_, Err(status)) => status,
    };
    let code = status.code();
    let reason = status.get_details_error_info().map(|info| info.reason);
    let lacking = status.message().contains("lacks the");
    let ok = match row.answer {
        Answer::NotFound => code == Code::NotFound,
        Answer::OtherOrganisation => contract::refused_for_organisation(&status),
        Answer::NotMember => code == Code::PermissionDenied && reason.as_deref() == NOT_MEMBER,
        Answer::NotManaged => code == Code::PermissionDenied && !lacking,
        Answer::Apart => false,
    };
    assert!(ok, "{what}: expected {:?}, got {status:?}", row.answer);
}

/// Every RPC that names an id, a login or an organisation, derived from the contract's
/// descriptor: a key of acme naming beta's thing is refused as its row pins, and beta's
/// state is as it was after each. Run with a key of acme holding every permission (so that
/// no refusal comes from a missing permission), and with one the API made.
#[tokio::test]
async fn every_rpc_refuses_another_organisations_ids_logins_and_organisation() {
    let _watchdog = crate::support::watchdog();
    let table = rows();
    let naming: Vec<(String, String)> = contract::rpcs()
        .iter()
        .flat_map(|rpc| {
            rpc.naming_fields()
                .into_iter()
                .map(|field| (rpc.path.clone(), field))
        })
        .collect();
    let pinned: std::collections::BTreeSet<(String, String)> = table
        .iter()
        .map(|r| (r.path.to_string(), r.field.to_string()))
        .collect();
    contract::assert_table_covers("the cross-organisation table", pinned, naming);

    on_every_store_with_acme_key(|server, acme_all| async move {
        // Nothing listens there: beta's mail stays pending, which is all this needs.
        server.configure_smtp(support::free_port()).await;
        server
            .add_user("bob", "Bob Beta", "bob@beta.example", &["beta"])
            .await;
        server
            .add_user("alice", "Alice Acme", "alice@acme.example", &["acme"])
            .await;
        let acme_made = server
            .create_key("acme", &["manageUser", "manageConfig"])
            .await;
        let beta_key = server
            .create_key_full("beta", &["manageUser", "manageConfig"])
            .await;
        let beta_secret = beta_key.secret.clone();
        let token = server
            .tokens(&beta_secret)
            .issue_token(pb::IssueTokenRequest {
                purpose: RESET.into(),
                login: "bob".into(),
                ..Default::default()
            })
            .await
            .expect("beta issues bob's token")
            .into_inner()
            .token;
        let notice = server
            .notifier(&beta_secret)
            .send_account_notice(pb::SendAccountNoticeRequest {
                kind: pb::AccountNoticeKind::PasswordChanged.into(),
                login: "bob".into(),
                ..Default::default()
            })
            .await
            .expect("beta notifies bob")
            .into_inner()
            .message_ids;
        let idempotency_key = "beta-weekly-report".to_string();
        server
            .notifier(&beta_secret)
            .send_to_addresses(pb::SendToAddressesRequest {
                to: vec!["soc@beta.example".into()],
                subject: "s".into(),
                body: "b".into(),
                idempotency_key: idempotency_key.clone(),
                ..Default::default()
            })
            .await
            .expect("beta sends with an idempotency key");
        // beta's own template and default locale, which acme's requests must leave as
        // they are.
        let (_, kind, locale) = beta_template();
        server
            .templates(&beta_secret)
            .update_email_template(pb::UpdateEmailTemplateRequest {
                kind,
                locale,
                subject: "Beta: {{login}}".into(),
                text_body: "Your password was changed.".into(),
                ..Default::default()
            })
            .await
            .expect("beta overrides a template");
        server
            .templates(&beta_secret)
            .update_locale_settings(pb::UpdateLocaleSettingsRequest {
                default_locale: "de".into(),
                ..Default::default()
            })
            .await
            .expect("beta sets its default locale");
        let beta = Beta {
            token,
            message: notice[0].clone(),
            key_id: beta_key.key.unwrap().id,
            idempotency_key,
        };
        let before = beta_state(&server, &beta_secret).await;
        assert_eq!(before.users.len(), 1, "{before:?}");
        assert_eq!(before.messages.len(), 2, "{before:?}");
        assert_eq!(before.locale.default_locale, "de");
        assert_eq!(
            before
                .templates
                .iter()
                .filter(|t| t.origin() == pb::TemplateOrigin::Organisation)
                .count(),
            1
        );

        for row in rows() {
            let mut keys = vec![("acme's key with every permission", &acme_all)];
            if !row.path.starts_with("/mailroom.v1.ApiKeys/") {
                keys.push(("acme's key", &acme_made));
            }
            for (which, key) in keys {
                let what = format!("{} naming beta's {} ({which})", row.path, row.field);
                let answered = contract::call(&server, row.path, key, (row.request)(&beta)).await;
                check(&row, answered, &beta, &what);
                assert_eq!(
                    beta_state(&server, &beta_secret).await,
                    before,
                    "{what}: beta's state changed"
                );
            }
        }

        // The admin organisation's key, acting for acme, is under acme's rules.
        let steal = pb::IssueTokenRequest {
            purpose: RESET.into(),
            login: "bob".into(),
            email: "attacker@acme.example".into(),
            organisation: "acme".into(),
            ..Default::default()
        };
        denied(
            server.tokens(&server.admin_key).issue_token(steal).await,
            NOT_MEMBER,
            "an admin key acting for acme issues bob's token",
        );
        let verified = server
            .tokens(&beta_secret)
            .verify_token(pb::VerifyTokenRequest {
                token: beta.token.clone(),
                purpose: RESET.into(),
            })
            .await
            .expect("bob's token still works for beta")
            .into_inner();
        assert_eq!(verified.state(), pb::TokenState::Active);
        assert_eq!(verified.email, "bob@beta.example");
    })
    .await;
}

/// A login in no Directory (an invitation to a new user) may be named by any organisation,
/// and each organisation's tokens, revocations and allowance for it are its own.
#[tokio::test]
async fn a_new_users_tokens_are_kept_apart_by_organisation() {
    let _watchdog = crate::support::watchdog();
    on_every_store(|server| async move {
        let acme = server.create_key("acme", &["manageUser"]).await;
        let beta = server.create_key("beta", &["manageUser"]).await;
        let invite = |email: &str| pb::IssueTokenRequest {
            purpose: pb::TokenPurpose::Invitation.into(),
            login: "newbie".into(),
            email: email.into(),
            ..Default::default()
        };
        let beta_invitation = server
            .tokens(&beta)
            .issue_token(invite("newbie@beta.example"))
            .await
            .expect("beta invites newbie")
            .into_inner();
        assert_eq!(beta_invitation.info.as_ref().unwrap().organisation, "beta");
        // acme spends its whole allowance for the login (5 an hour by default) and more.
        let mut tokens = server.tokens(&acme);
        for _ in 0..5 {
            tokens
                .issue_token(invite("newbie@acme.example"))
                .await
                .expect("acme invites newbie");
        }
        let status = tokens
            .issue_token(invite("newbie@acme.example"))
            .await
            .expect_err("acme over its allowance");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let revoked = tokens
            .revoke_tokens(pb::RevokeTokensRequest {
                login: "newbie".into(),
                ..Default::default()
            })
            .await
            .expect("acme revokes its own")
            .into_inner()
            .revoked;
        assert_eq!(revoked, 1, "acme's one active invitation, not beta's");

        // beta's invitation survived acme's five issues and its revocation...
        let info = server
            .tokens(&beta)
            .verify_token(pb::VerifyTokenRequest {
                token: beta_invitation.token.clone(),
                purpose: pb::TokenPurpose::Invitation.into(),
            })
            .await
            .expect("beta's invitation still verifies")
            .into_inner();
        assert_eq!(info.state(), pb::TokenState::Active);
        // ...beta still has its own allowance...
        server
            .tokens(&beta)
            .issue_token(invite("newbie@beta.example"))
            .await
            .expect("beta's allowance is its own");
        // ...and beta lists only its own tokens.
        let listed = server
            .tokens(&beta)
            .list_tokens(pb::ListTokensRequest {
                login: "newbie".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tokens;
        assert_eq!(listed.len(), 2);
        assert!(
            listed.iter().all(|t| t.organisation == "beta"),
            "{listed:?}"
        );
        // The admin key naming no organisation sees both organisations' tokens.
        let all = all_tokens_of(&server, "newbie").await;
        assert_eq!(all.len(), 7, "five of acme's and two of beta's");
    })
    .await;
}

/// The name an email greets comes from the organisation's own Directory only.
#[tokio::test]
async fn a_token_for_a_user_of_two_organisations_is_issued_by_either() {
    let _watchdog = crate::support::watchdog();
    on_every_store(|server| async move {
        server
            .add_user("carol", "Carol", "carol@example.com", &["acme", "beta"])
            .await;
        for organisation in ["acme", "beta"] {
            let key = server.create_key(organisation, &["manageUser"]).await;
            let issued = server
                .tokens(&key)
                .issue_token(pb::IssueTokenRequest {
                    purpose: RESET.into(),
                    login: "carol".into(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("{organisation} issues carol's token: {e:?}"))
                .into_inner();
            let info = issued.info.unwrap();
            assert_eq!(info.organisation, organisation);
            assert_eq!(info.email, "carol@example.com");
        }
        // Each organisation's issue revoked only its own earlier token: both are active.
        let listed = all_tokens_of(&server, "carol").await;
        assert_eq!(listed.len(), 2);
        assert!(
            listed.iter().all(|t| t.state() == pb::TokenState::Active),
            "{listed:?}"
        );
    })
    .await;
}

/// A login is one login however it is spelt: a variant of another organisation's user is
/// that user (refused), and spaces or invisible characters are refused outright.
#[tokio::test]
async fn a_variant_spelling_of_another_organisations_login_is_that_login() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    server
        .add_user("bob@beta.example", "Bob", "", &["beta"])
        .await;
    let acme = server.create_key("acme", &["manageUser"]).await;
    let mut tokens = server.tokens(&acme);
    let steal = |login: &str| pb::IssueTokenRequest {
        purpose: RESET.into(),
        login: login.into(),
        email: "attacker@acme.example".into(),
        ..Default::default()
    };
    for variant in [
        "BOB@beta.example",
        "bob@BETA.example",
        "ｂｏｂ@beta.example",
    ] {
        denied(
            tokens.issue_token(steal(variant)).await,
            NOT_MEMBER,
            variant,
        );
    }
    for variant in [
        " bob@beta.example",
        "bob@beta.example ",
        "bob\u{200B}@beta.example",
    ] {
        let status = tokens.issue_token(steal(variant)).await.expect_err(variant);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{variant:?}: {status:?}"
        );
        assert_eq!(support::violated_fields(&status), ["login"], "{variant:?}");
    }
    // The Directory stores and finds the one form.
    let found = server
        .directory(&server.admin_key)
        .get_user(pb::GetUserRequest {
            login: "Bob@Beta.Example".into(),
        })
        .await
        .expect("found in any case")
        .into_inner();
    assert_eq!(found.login, "bob@beta.example");
}

/// A token never outlives the membership it was issued under: acme's invitation of a new
/// user stops working once beta's Directory holds that user, and is revoked.
#[tokio::test]
async fn a_token_ends_when_its_login_becomes_another_organisations_user() {
    let _watchdog = crate::support::watchdog();
    on_every_store(|server| async move {
        let acme = server.create_key("acme", &["manageUser"]).await;
        let invitation = server
            .tokens(&acme)
            .issue_token(pb::IssueTokenRequest {
                purpose: pb::TokenPurpose::Invitation.into(),
                login: "carol@beta.example".into(),
                email: "attacker@acme.example".into(),
                ..Default::default()
            })
            .await
            .expect("a login no Directory holds")
            .into_inner()
            .token;
        server
            .add_user("carol@beta.example", "Carol", "", &["beta"])
            .await;
        let consume = pb::ConsumeTokenRequest {
            token: invitation,
            purpose: pb::TokenPurpose::Invitation.into(),
        };
        let refused = server.tokens(&acme).consume_token(consume).await;
        let status = refused.expect_err("consumed after beta took carol");
        assert!(
            matches!(
                status.code(),
                Code::PermissionDenied | Code::FailedPrecondition
            ),
            "{status:?}"
        );
        let listed = all_tokens_of(&server, "carol@beta.example").await;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state(), pb::TokenState::Revoked, "{listed:?}");
    })
    .await;
}

/// Of a user several organisations share, none may send its reset elsewhere than its
/// Directory address, and none sees the others' names in GetUser.
#[tokio::test]
async fn a_shared_users_reset_goes_to_its_directory_address_only() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    server
        .add_user("erin@example.com", "Erin", "", &["acme", "beta"])
        .await;
    let acme = server.create_key("acme", &["manageUser"]).await;
    let mut tokens = server.tokens(&acme);
    let request = |email: &str| pb::IssueTokenRequest {
        purpose: RESET.into(),
        login: "erin@example.com".into(),
        email: email.into(),
        ..Default::default()
    };
    let status = tokens
        .issue_token(request("attacker@acme.example"))
        .await
        .expect_err("elsewhere");
    assert_eq!(support::violated_fields(&status), ["email"], "{status:?}");
    tokens
        .issue_token(request("erin@example.com"))
        .await
        .expect("at the Directory address");
    let seen = server
        .directory(&acme)
        .get_user(pb::GetUserRequest {
            login: "erin@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.organisations, ["acme"]);
}

/// Every organisation's tokens of `login`, as the admin key lists them.
async fn all_tokens_of(server: &TestServer, login: &str) -> Vec<pb::TokenInfo> {
    server
        .tokens(&server.admin_key)
        .list_tokens(pb::ListTokensRequest {
            login: login.into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("the admin key lists tokens")
        .into_inner()
        .tokens
}
