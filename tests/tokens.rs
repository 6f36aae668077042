//! Password resets and invitations: issue, verify, consume exactly once, expiry, revocation,
//! lifetimes from the settings, the rate limit, the emails and their links, account notices,
//! the sweeper, and the secret never stored or shown twice.

use crate::support;

use std::time::Duration;

use mailroom::proto::v1 as pb;
use support::smtp::{Options, SmtpServer};
use support::{all_bytes, contains, issue_request, violated_fields, TestServer};
use tonic::Code;
use tonic_types::StatusExt;

const RESET: pb::TokenPurpose = pb::TokenPurpose::PasswordReset;
const INVITATION: pb::TokenPurpose = pb::TokenPurpose::Invitation;

async fn issue(
    server: &TestServer,
    login: &str,
    purpose: pb::TokenPurpose,
) -> pb::IssueTokenResponse {
    server
        .tokens(&server.admin_key)
        .issue_token(issue_request(login, purpose))
        .await
        .expect("issue")
        .into_inner()
}

async fn verify(
    server: &TestServer,
    token: &str,
    purpose: pb::TokenPurpose,
) -> Result<pb::TokenInfo, tonic::Status> {
    server
        .tokens(&server.admin_key)
        .verify_token(pb::VerifyTokenRequest {
            token: token.into(),
            purpose: purpose.into(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn consume(
    server: &TestServer,
    token: &str,
    purpose: pb::TokenPurpose,
) -> Result<pb::TokenInfo, tonic::Status> {
    server
        .tokens(&server.admin_key)
        .consume_token(pb::ConsumeTokenRequest {
            token: token.into(),
            purpose: purpose.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// The `ErrorInfo` reason of a FAILED_PRECONDITION.
fn reason(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    status.get_details_error_info().expect("ErrorInfo").reason
}

fn seconds(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().unwrap().seconds
}

#[tokio::test]
async fn issue_verify_consume_then_consumed() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let issued = issue(&server, "alice", RESET).await;
    assert!(
        issued.token.starts_with("mrr_") && issued.token.len() >= 4 + 43,
        "256 bits, URL-safe"
    );
    let info = issued.info.unwrap();
    assert_eq!(info.state(), pb::TokenState::Active);
    assert_eq!(info.email, "alice@example.com");
    for _ in 0..3 {
        let seen = verify(&server, &issued.token, RESET).await.unwrap();
        assert_eq!(
            seen.state(),
            pb::TokenState::Active,
            "verifying never consumes"
        );
    }
    let consumed = consume(&server, &issued.token, RESET).await.unwrap();
    assert_eq!(consumed.state(), pb::TokenState::Consumed);
    assert!(consumed.consume_time.is_some());
    assert_eq!(
        reason(&consume(&server, &issued.token, RESET).await.unwrap_err()),
        "TOKEN_CONSUMED"
    );
    assert_eq!(
        reason(&verify(&server, &issued.token, RESET).await.unwrap_err()),
        "TOKEN_CONSUMED"
    );
    let invitation = issue(&server, "bob", INVITATION).await;
    assert!(invitation.token.starts_with("mri_"));
}

/// Consumers of one token race, each on a thread and a connection of its own (as clients
/// of a production server do), token after token: a consume is won or lost in
/// microseconds, so one race could pass by luck without the store's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_consumers_one_winner() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut tokens = Vec::new();
    for n in 0..300 {
        tokens.push(issue(&server, &format!("user{n}"), RESET).await.token);
    }
    let clients: Vec<_> = (0..4).map(|_| server.tokens(&server.admin_key)).collect();
    let rounds = support::race(clients.len(), tokens.len(), move |round, n| {
        let mut client = clients[n].clone();
        let request = pb::ConsumeTokenRequest {
            token: tokens[round].clone(),
            purpose: RESET.into(),
        };
        async move { client.consume_token(request).await }
    })
    .await;
    for (round, results) in rounds.iter().enumerate() {
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "token {round}");
        for failure in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(reason(failure), "TOKEN_CONSUMED");
        }
    }
}

#[tokio::test]
async fn expired_revoked_and_wrong_purpose() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let issued = issue(&server, "alice", RESET).await;
    server.clock.advance(Duration::from_secs(600));
    assert_eq!(
        reason(&verify(&server, &issued.token, RESET).await.unwrap_err()),
        "TOKEN_EXPIRED"
    );
    assert_eq!(
        reason(&consume(&server, &issued.token, RESET).await.unwrap_err()),
        "TOKEN_EXPIRED"
    );

    let first = issue(&server, "bob", INVITATION).await;
    assert_eq!(
        verify(&server, &first.token, RESET)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "wrong purpose"
    );
    assert_eq!(
        verify(&server, "mri_unknown", INVITATION)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let second = issue(&server, "bob", INVITATION).await;
    assert_eq!(
        reason(&verify(&server, &first.token, INVITATION).await.unwrap_err()),
        "TOKEN_REVOKED"
    );
    assert!(verify(&server, &second.token, INVITATION).await.is_ok());
    let other_purpose = issue(&server, "bob", RESET).await;
    assert!(
        verify(&server, &second.token, INVITATION).await.is_ok(),
        "only the same purpose is revoked"
    );

    let revoked = server
        .tokens(&server.admin_key)
        .revoke_tokens(pb::RevokeTokensRequest {
            login: "bob".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked, 2);
    assert_eq!(
        reason(
            &consume(&server, &second.token, INVITATION)
                .await
                .unwrap_err()
        ),
        "TOKEN_REVOKED"
    );
    assert_eq!(
        reason(
            &consume(&server, &other_purpose.token, RESET)
                .await
                .unwrap_err()
        ),
        "TOKEN_REVOKED"
    );
    let status = verify(&server, "", pb::TokenPurpose::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["token", "purpose"]);
}

#[tokio::test]
async fn lifetimes_follow_the_settings() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let reset = issue(&server, "alice", RESET).await.info.unwrap();
    assert_eq!(
        seconds(&reset.expire_time) - seconds(&reset.create_time),
        600,
        "10 min by default"
    );
    let invitation = issue(&server, "bob", INVITATION).await.info.unwrap();
    assert_eq!(
        seconds(&invitation.expire_time) - seconds(&invitation.create_time),
        86_400
    );
    server
        .smtp(&server.admin_key)
        .update_smtp_settings(pb::UpdateSmtpSettingsRequest {
            settings: Some(pb::SmtpSettings {
                host: "smtp.example.com".into(),
                port: 25,
                from: "thehive@example.com".into(),
                token_expiration: Some(pb::TokenExpiration {
                    reset_password: Some(prost_types::Duration {
                        seconds: 900,
                        nanos: 0,
                    }),
                    invitation: Some(prost_types::Duration {
                        seconds: 3 * 86_400,
                        nanos: 0,
                    }),
                }),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    let reset = issue(&server, "carol", RESET).await.info.unwrap();
    assert_eq!(
        seconds(&reset.expire_time) - seconds(&reset.create_time),
        900
    );
    let invitation = issue(&server, "dave", INVITATION).await.info.unwrap();
    assert_eq!(
        seconds(&invitation.expire_time) - seconds(&invitation.create_time),
        3 * 86_400
    );
}

#[tokio::test]
async fn the_issue_rate_limit_answers_resource_exhausted_with_retry_info() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    for _ in 0..5 {
        issue(&server, "alice", RESET).await;
    }
    let status = server
        .tokens(&server.admin_key)
        .issue_token(issue_request("alice", RESET))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let delay = status
        .get_details_retry_info()
        .expect("RetryInfo")
        .retry_delay
        .unwrap();
    assert_eq!(
        delay,
        Duration::from_secs(3600),
        "the oldest of the five leaves the window in an hour"
    );
    issue(&server, "alice", INVITATION).await;
    issue(&server, "bob", RESET).await;
    server.clock.advance(Duration::from_secs(3600));
    issue(&server, "alice", RESET).await;
}

#[tokio::test]
async fn refused_issues_do_not_count_against_the_rate_limit() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut tokens = server.tokens(&server.admin_key);
    for _ in 0..6 {
        let mut no_address = issue_request("alice", RESET);
        no_address.email.clear();
        let status = tokens.issue_token(no_address).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        let mut no_settings = issue_request("alice", RESET);
        no_settings.send_email = true;
        no_settings.link_template = "https://soc.example.com/reset/{token}".into();
        let status = tokens.issue_token(no_settings).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    }
    for _ in 0..5 {
        issue(&server, "alice", RESET).await;
    }
    let status = tokens
        .issue_token(issue_request("alice", RESET))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "the sixth issue");
}

#[tokio::test]
async fn bad_issue_requests_name_their_fields() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut tokens = server.tokens(&server.admin_key);
    let mut request = issue_request("", pb::TokenPurpose::Unspecified);
    request.email = "nope".into();
    request.send_email = true;
    let status = tokens.issue_token(request).await.unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["purpose", "login", "email", "link_template"]
    );
    for bad in [
        "https://x.example.com/reset",
        "/reset/{token}",
        "ftp://x.example.com/{token}",
        "https//no-colon/{token}",
    ] {
        let mut request = issue_request("alice", RESET);
        request.send_email = true;
        request.link_template = bad.into();
        let status = tokens.issue_token(request).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["link_template"], "{bad}");
    }
    let mut no_address = issue_request("ghost", RESET);
    no_address.email.clear();
    let status = tokens.issue_token(no_address).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "no email and no directory user"
    );
    let mut needs_smtp = issue_request("alice", RESET);
    needs_smtp.send_email = true;
    needs_smtp.link_template = "https://thehive.example.com/reset/{token}".into();
    let status = tokens.issue_token(needs_smtp).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "emails need SMTP settings"
    );
}

/// The link in a received email, by its prefix.
fn link(text: &str, prefix: &str) -> String {
    let start = text
        .find(prefix)
        .unwrap_or_else(|| panic!("no link {prefix} in {text}"));
    text[start..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == '<')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn the_emails_carry_a_link_whose_token_consumes() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    server
        .add_user("alice", "Alice Martin", "alice@example.com", &["acme"])
        .await;
    let mut request = issue_request("alice", RESET);
    request.email.clear();
    request.send_email = true;
    request.link_template = "https://thehive.example.com/login/resetPassword/{token}".into();
    let reset = server
        .tokens(&server.admin_key)
        .issue_token(request)
        .await
        .unwrap()
        .into_inner();
    assert!(!reset.message_id.is_empty());
    server
        .wait_for_state(&reset.message_id, pb::MessageState::Sent)
        .await;

    let mut request = issue_request("bob", INVITATION);
    request.send_email = true;
    request.link_template = "https://portal.example.com/invite?t={token}&lang=en".into();
    let invitation = server
        .tokens(&server.admin_key)
        .issue_token(request)
        .await
        .unwrap()
        .into_inner();
    server
        .wait_for_state(&invitation.message_id, pb::MessageState::Sent)
        .await;

    let seen = smtp.seen().messages;
    let reset_mail = seen.iter().find(|m| m.to == ["alice@example.com"]).unwrap();
    assert_eq!(
        reset_mail.header("Subject").as_deref(),
        Some("Reset your password")
    );
    let text = reset_mail.text();
    assert!(text.contains("Hello Alice Martin"), "{text}");
    assert!(text.contains("valid for 10 minutes"), "{text}");
    assert!(reset_mail.data.contains("text/html"));
    let url = link(&text, "https://thehive.example.com/login/resetPassword/");
    let token = url.rsplit('/').next().unwrap();
    assert_eq!(token, reset.token);
    assert_eq!(consume(&server, token, RESET).await.unwrap().login, "alice");

    let invitation_mail = seen.iter().find(|m| m.to == ["bob@example.com"]).unwrap();
    assert_eq!(
        invitation_mail.header("Subject").as_deref(),
        Some("You are invited to join acme")
    );
    let text = invitation_mail.text();
    assert!(text.contains("expires in 1 day"), "{text}");
    let url = link(&text, "https://portal.example.com/invite?t=");
    let token = url
        .trim_start_matches("https://portal.example.com/invite?t=")
        .split('&')
        .next()
        .unwrap();
    assert_eq!(
        consume(&server, token, INVITATION).await.unwrap().login,
        "bob"
    );
}

#[tokio::test]
async fn account_notices_reach_the_user_and_both_addresses_on_an_email_change() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    server
        .add_user("alice", "Alice", "alice.new@example.com", &["acme"])
        .await;
    let mut notifier = server.notifier(&server.admin_key);
    let mut ids = Vec::new();
    for (kind, previous) in [
        (pb::AccountNoticeKind::PasswordChanged, ""),
        (pb::AccountNoticeKind::PasswordReset, ""),
        (pb::AccountNoticeKind::EmailChanged, "alice.old@example.com"),
    ] {
        let answer = notifier
            .send_account_notice(pb::SendAccountNoticeRequest {
                kind: kind.into(),
                login: "alice".into(),
                organisation: "acme".into(),
                previous_email: previous.into(),
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(answer.message_ids);
    }
    assert_eq!(ids.len(), 4);
    for id in &ids {
        server.wait_for_state(id, pb::MessageState::Sent).await;
    }
    let seen = smtp.seen().messages;
    // Several senders deliver at once: the order of arrival is not the order of queuing.
    let subjects = |to: &str| -> Vec<String> {
        let mut subjects: Vec<String> = seen
            .iter()
            .filter(|m| m.to == [to.to_string()])
            .map(|m| m.header("Subject").unwrap())
            .collect();
        subjects.sort();
        subjects
    };
    assert_eq!(
        subjects("alice.new@example.com"),
        [
            "Your email address was changed",
            "Your password was changed",
            "Your password was reset",
        ]
    );
    assert_eq!(
        subjects("alice.old@example.com"),
        ["Your email address was changed"]
    );
    let change = seen
        .iter()
        .find(|m| m.to == ["alice.old@example.com"])
        .unwrap()
        .text();
    assert!(
        change.contains("from alice.old@example.com to alice.new@example.com"),
        "{change}"
    );

    let status = notifier
        .send_account_notice(pb::SendAccountNoticeRequest {
            kind: pb::AccountNoticeKind::EmailChanged.into(),
            login: "alice".into(),
            organisation: "acme".into(),
            previous_email: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["previous_email"]);
    let status = notifier
        .send_account_notice(pb::SendAccountNoticeRequest {
            kind: pb::AccountNoticeKind::PasswordChanged.into(),
            login: "alice".into(),
            organisation: "other".into(),
            previous_email: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "alice is not a user of other"
    );
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "LOGIN_NOT_IN_ORGANISATION");
}

#[tokio::test]
async fn the_sweeper_purges_ended_tokens_after_a_week() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let consumed = issue(&server, "alice", RESET).await;
    consume(&server, &consumed.token, RESET).await.unwrap();
    let expired = issue(&server, "bob", RESET).await;
    let later = Duration::from_secs(600) + Duration::from_secs(7 * 86_400);
    server.clock.advance(later - Duration::from_secs(1));
    server.sweep().await;
    let young = issue(&server, "carol", INVITATION).await;
    // Still kept a week after: the answer says why.
    assert_eq!(
        reason(&verify(&server, &consumed.token, RESET).await.unwrap_err()),
        "TOKEN_CONSUMED"
    );
    server.clock.advance(Duration::from_secs(2));
    server.sweep().await;
    for token in [&consumed.token, &expired.token] {
        let status = verify(&server, token, RESET).await.expect_err("purged");
        assert_eq!(status.code(), Code::NotFound, "not purged: {status:?}");
    }
    assert!(
        verify(&server, &young.token, INVITATION).await.is_ok(),
        "live tokens stay"
    );
    let listed = server
        .tokens(&server.admin_key)
        .list_tokens(pb::ListTokensRequest {
            login: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tokens.is_empty());
}

#[tokio::test]
async fn the_secret_is_shown_once_and_never_stored() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let mut request = issue_request("alice", RESET);
    request.send_email = true;
    request.link_template = "https://thehive.example.com/reset/{token}".into();
    request.metadata = [("ip".to_string(), "192.0.2.1".to_string())].into();
    let issued = server
        .tokens(&server.admin_key)
        .issue_token(request)
        .await
        .unwrap()
        .into_inner();
    let parked = issue(&server, "bob", INVITATION).await;
    server
        .wait_for_state(&issued.message_id, pb::MessageState::Sent)
        .await;
    assert!(
        smtp.seen().messages[0].text().contains(&issued.token),
        "the email does carry it"
    );

    let verified = verify(&server, &issued.token, RESET).await.unwrap();
    let listed = server
        .tokens(&server.admin_key)
        .list_tokens(pb::ListTokensRequest {
            login: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1);
    assert_eq!(listed.tokens[0].metadata["ip"], "192.0.2.1");
    let consumed = consume(&server, &issued.token, RESET).await.unwrap();
    for answer in [
        format!("{verified:?}"),
        format!("{listed:?}"),
        format!("{consumed:?}"),
    ] {
        assert!(!answer.contains(&issued.token));
        assert!(!answer.contains(&issued.token[4..]));
    }
    let mut server = server;
    server.stop().await.unwrap();
    let bytes = all_bytes(&server.data_dir);
    assert!(contains(&bytes, "192.0.2.1"), "the token records are there");
    for token in [&issued.token, &parked.token] {
        assert!(!contains(&bytes, token), "a token in clear on disk");
        assert!(
            !contains(&bytes, &token[4..]),
            "a token's random part in clear on disk"
        );
    }
}

#[tokio::test]
async fn a_key_sees_only_its_organisation_s_tokens() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let other = server.create_key("other", &["manageUser"]).await;
    let issued = issue(&server, "alice", RESET).await;
    let mut tokens = server.tokens(&other);
    let status = tokens
        .verify_token(pb::VerifyTokenRequest {
            token: issued.token.clone(),
            purpose: RESET.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = tokens
        .consume_token(pb::ConsumeTokenRequest {
            token: issued.token.clone(),
            purpose: RESET.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let revoked = tokens
        .revoke_tokens(pb::RevokeTokensRequest {
            login: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked, 0);
    assert!(verify(&server, &issued.token, RESET).await.is_ok());
}

#[tokio::test]
async fn token_links_go_only_to_the_link_origins() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    // https://thehive.example.com and https://portal.example.com.
    let settings = server.configure_smtp(smtp.addr.port()).await;
    let mut tokens = server.tokens(&server.admin_key);
    let emailed = |login: &str, link: &str| {
        let mut request = issue_request(login, RESET);
        request.send_email = true;
        request.link_template = link.into();
        request
    };
    for (n, accepted) in [
        "https://thehive.example.com/login/resetPassword/{token}",
        "https://THEHIVE.example.com:443/reset?token={token}",
        "https://portal.example.com/#/invite/{token}",
    ]
    .into_iter()
    .enumerate()
    {
        let issued = tokens
            .issue_token(emailed(&format!("ok{n}"), accepted))
            .await
            .unwrap_or_else(|e| panic!("{accepted}: {e:?}"))
            .into_inner();
        server
            .wait_for_state(&issued.message_id, pb::MessageState::Sent)
            .await;
    }
    for (n, refused) in [
        "https://thehive.example.com.evil.org/reset/{token}",
        "https://thehive.example.com@evil.org/reset/{token}",
        "https://evil.org/https://thehive.example.com/{token}",
        "http://thehive.example.com/reset/{token}",
        "https://thehive.example.com:8443/reset/{token}",
        "https://{token}.thehive.example.com/reset",
        "https://evil.org/?next=https://thehive.example.com/{token}",
        // Text riding along below the genuine link, and what parsers read differently.
        "https://thehive.example.com/reset#{token}\n\nVerify at https://evil.org/",
        "https://thehive.example.com/reset/{token} Verify at https://evil.org/",
        "https://thehive.example.com/reset/{token}\tx",
        "https://thehive.example.com\\@evil.org/{token}",
        "https://thehive.example.com/r\u{e9}set/{token}",
    ]
    .into_iter()
    .enumerate()
    {
        let login = format!("refused{n}");
        let status = tokens
            .issue_token(emailed(&login, refused))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["link_template"], "{refused}");
        let listed = tokens
            .list_tokens(pb::ListTokensRequest {
                login,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(listed.tokens.is_empty(), "{refused}: nothing issued");
    }
    assert_eq!(smtp.seen().messages.len(), 3, "no email for a refused link");

    // With no link origins, no token email at all; tokens without one still issue.
    let mut none = settings;
    none.link_origins.clear();
    server.save_smtp(none).await;
    let status = tokens
        .issue_token(emailed(
            "alice",
            "https://thehive.example.com/reset/{token}",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("settings.link_origins"),
        "{status:?}"
    );
    let failure = status
        .get_details_precondition_failure()
        .expect("a PreconditionFailure");
    assert_eq!(failure.violations[0].subject, "settings.link_origins");
    issue(&server, "alice", RESET).await;
}
