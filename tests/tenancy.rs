//! Tenants are hostile to each other: a key of organisation acme, however it builds its
//! requests, never reads, changes, revokes, rate-limits or greets anything of organisation
//! beta, and every refusal leaves beta's tokens, users and messages as they were. On sled,
//! and on etcd with the `etcd` feature (the revocation on issue is a store operation).

use std::future::Future;

use mailroom::proto::v1 as pb;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::support::{self, TestServer};

const RESET: pb::TokenPurpose = pb::TokenPurpose::PasswordReset;

/// Runs `scenario` on a server over sled, then over etcd with the `etcd` feature.
async fn on_every_store<F: Future<Output = ()>>(scenario: impl Fn(TestServer) -> F) {
    scenario(TestServer::start().await).await;
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
        scenario(TestServer::start_with(args).await).await;
    }
}

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

#[track_caller]
fn not_found<T: std::fmt::Debug>(result: Result<T, Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::NotFound, "{what}: {status:?}");
}

const NOT_MEMBER: Option<&str> = Some("LOGIN_NOT_IN_ORGANISATION");

/// What organisation beta holds: bob's tokens, bob, and beta's messages.
async fn beta_state(
    server: &TestServer,
    beta: &str,
) -> (Vec<pb::TokenInfo>, pb::User, Vec<pb::Message>) {
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
    let user = server
        .directory(beta)
        .get_user(pb::GetUserRequest {
            login: "bob".into(),
        })
        .await
        .expect("beta reads bob")
        .into_inner();
    let messages = server
        .notifier(beta)
        .list_messages(pb::ListMessagesRequest {
            organisation: "beta".into(),
            ..Default::default()
        })
        .await
        .expect("beta lists its messages")
        .into_inner()
        .messages;
    (tokens, user, messages)
}

#[tokio::test]
async fn another_organisations_user_is_out_of_reach_of_every_rpc() {
    on_every_store(|server| async move {
        // Nothing listens there: beta's notice stays pending, which is all this needs.
        server.configure_smtp(support::free_port()).await;
        server
            .add_user("bob", "Bob Beta", "bob@beta.example", &["beta"])
            .await;
        let acme = server
            .create_key("acme", &["manageUser", "manageConfig"])
            .await;
        let beta = server
            .create_key("beta", &["manageUser", "manageConfig"])
            .await;
        let bob_token = server
            .tokens(&beta)
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
            .notifier(&beta)
            .send_account_notice(pb::SendAccountNoticeRequest {
                kind: pb::AccountNoticeKind::PasswordChanged.into(),
                login: "bob".into(),
                ..Default::default()
            })
            .await
            .expect("beta notifies bob")
            .into_inner()
            .message_ids;
        let before = beta_state(&server, &beta).await;

        let (mut tokens, mut notifier, mut directory) = (
            server.tokens(&acme),
            server.notifier(&acme),
            server.directory(&acme),
        );
        // The attack the issue reports: bob's reset token, sent to acme's own address.
        for organisation in ["", "acme"] {
            let steal = pb::IssueTokenRequest {
                purpose: RESET.into(),
                login: "bob".into(),
                email: "attacker@acme.example".into(),
                organisation: organisation.into(),
                ..Default::default()
            };
            denied(
                tokens.issue_token(steal).await,
                NOT_MEMBER,
                "acme issues bob's token",
            );
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
        let for_beta = pb::IssueTokenRequest {
            purpose: RESET.into(),
            login: "bob".into(),
            organisation: "beta".into(),
            ..Default::default()
        };
        denied(
            tokens.issue_token(for_beta).await,
            None,
            "acme acts for beta",
        );
        let revoke = pb::RevokeTokensRequest {
            login: "bob".into(),
            ..Default::default()
        };
        denied(
            tokens.revoke_tokens(revoke).await,
            NOT_MEMBER,
            "acme revokes bob's tokens",
        );
        let list = pb::ListTokensRequest {
            login: "bob".into(),
            ..Default::default()
        };
        denied(
            tokens.list_tokens(list).await,
            NOT_MEMBER,
            "acme lists bob's tokens",
        );
        let named = pb::ListTokensRequest {
            login: "bob".into(),
            organisation: "beta".into(),
            ..Default::default()
        };
        denied(tokens.list_tokens(named).await, None, "acme names beta");
        let verify = pb::VerifyTokenRequest {
            token: bob_token.clone(),
            purpose: RESET.into(),
        };
        not_found(
            tokens.verify_token(verify).await,
            "acme verifies bob's token",
        );
        let consume = pb::ConsumeTokenRequest {
            token: bob_token.clone(),
            purpose: RESET.into(),
        };
        not_found(
            tokens.consume_token(consume).await,
            "acme consumes bob's token",
        );
        let notice_request = pb::SendAccountNoticeRequest {
            kind: pb::AccountNoticeKind::PasswordReset.into(),
            login: "bob".into(),
            ..Default::default()
        };
        denied(
            notifier.send_account_notice(notice_request).await,
            NOT_MEMBER,
            "acme notifies bob",
        );
        let to_beta = pb::SendToUsersRequest {
            organisation: "beta".into(),
            subject: "s".into(),
            body: "b".into(),
            ..Default::default()
        };
        denied(
            notifier.send_to_users(to_beta).await,
            None,
            "acme mails beta's users",
        );
        let as_beta = pb::SendToAddressesRequest {
            organisation: "beta".into(),
            to: vec!["x@example.com".into()],
            subject: "s".into(),
            body: "b".into(),
            ..Default::default()
        };
        denied(
            notifier.send_to_addresses(as_beta).await,
            None,
            "acme mails as beta",
        );
        let listing = pb::ListMessagesRequest {
            organisation: "beta".into(),
            ..Default::default()
        };
        denied(
            notifier.list_messages(listing).await,
            None,
            "acme lists beta's mail",
        );
        for id in &notice {
            let get = pb::GetMessageRequest { id: id.clone() };
            not_found(notifier.get_message(get).await, "acme reads beta's message");
            let cancel = pb::CancelMessageRequest { id: id.clone() };
            not_found(
                notifier.cancel_message(cancel).await,
                "acme cancels beta's message",
            );
            let retry = pb::RetryMessageRequest { id: id.clone() };
            not_found(
                notifier.retry_message(retry).await,
                "acme retries beta's message",
            );
        }
        let get = pb::GetUserRequest {
            login: "bob".into(),
        };
        not_found(directory.get_user(get).await, "acme reads bob");
        let delete = pb::DeleteUserRequest {
            login: "bob".into(),
        };
        not_found(directory.delete_user(delete).await, "acme deletes bob");
        let take = pb::UpsertUserRequest {
            user: Some(pb::User {
                login: "bob".into(),
                email: "attacker@acme.example".into(),
                organisations: vec!["acme".into()],
                ..Default::default()
            }),
        };
        denied(
            directory.upsert_user(take).await,
            None,
            "acme takes bob over",
        );
        let users = pb::ListUsersRequest {
            organisation: "beta".into(),
            ..Default::default()
        };
        denied(
            directory.list_users(users).await,
            None,
            "acme lists beta's users",
        );

        assert_eq!(
            beta_state(&server, &beta).await,
            before,
            "beta's tokens, user and messages changed"
        );
        let verified = server
            .tokens(&beta)
            .verify_token(pb::VerifyTokenRequest {
                token: bob_token,
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
        let all = server
            .tokens(&server.admin_key)
            .list_tokens(pb::ListTokensRequest {
                login: "newbie".into(),
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tokens;
        assert_eq!(all.len(), 7, "five of acme's and two of beta's");
    })
    .await;
}

/// The name an email greets comes from the organisation's own Directory only.
#[tokio::test]
async fn a_token_for_a_user_of_two_organisations_is_issued_by_either() {
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
        let listed = server
            .tokens(&server.admin_key)
            .list_tokens(pb::ListTokensRequest {
                login: "carol".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tokens;
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
        let listed = server
            .tokens(&server.admin_key)
            .list_tokens(pb::ListTokensRequest {
                login: "carol@beta.example".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tokens;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state(), pb::TokenState::Revoked, "{listed:?}");
    })
    .await;
}

/// Of a user several organisations share, none may send its reset elsewhere than its
/// Directory address, and none sees the others' names in GetUser.
#[tokio::test]
async fn a_shared_users_reset_goes_to_its_directory_address_only() {
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
