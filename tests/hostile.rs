//! Hostile templates: any `manageConfig` key writes them, so each class that could crash
//! the process, fill its memory or hold a worker is refused as `INVALID_ARGUMENT` naming
//! its field, and the server goes on serving and delivering for everyone.

use mailroom::proto::v1 as pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::support::smtp::{Options, SmtpServer};
use crate::support::{violated_fields, TestServer};

/// A context with `list`: `n` numbers.
fn with_list(n: usize) -> Option<prost_types::Struct> {
    let number = |i: usize| prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(i as f64)),
    };
    let list = prost_types::Value {
        kind: Some(prost_types::value::Kind::ListValue(
            prost_types::ListValue {
                values: (0..n).map(number).collect(),
            },
        )),
    };
    Some(prost_types::Struct {
        fields: [("list".to_string(), list)].into_iter().collect(),
    })
}

#[tokio::test]
async fn hostile_templates_are_refused_and_the_server_goes_on() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let deep = format!("{}x{}", "{{#if list}}".repeat(20), "{{/if}}".repeat(20));
    let deep_subexpression = format!("{{{{eq 1 {}1{}}}}}", "(eq 1 ".repeat(20), ")".repeat(20));
    let cases: Vec<(&str, String, Option<prost_types::Struct>, &str)> = vec![
        ("a partial", "{{> body}}".into(), None, "partials"),
        (
            "a self-recursive inline partial",
            r#"{{#*inline "p"}}{{> p}}{{/inline}}{{> p}}"#.into(),
            None,
            "not allowed",
        ),
        (
            "mutually recursive partials",
            r#"{{#*inline "a"}}{{> b}}{{/inline}}{{#*inline "b"}}{{> a}}{{/inline}}{{> a}}"#.into(),
            None,
            "not allowed",
        ),
        (
            "a partial block",
            "{{#> layout}}x{{/layout}}".into(),
            None,
            "partials",
        ),
        ("deep nesting", deep, None, "nest at most"),
        (
            "deep subexpressions",
            deep_subexpression,
            None,
            "nest at most",
        ),
        (
            "the log helper",
            "{{log list}}".into(),
            with_list(3),
            "not available",
        ),
        (
            "the lookup helper",
            "{{lookup list 0}}".into(),
            with_list(3),
            "not available",
        ),
        (
            "too many expressions",
            "{{a}}".repeat(1001),
            None,
            "at most 1000",
        ),
        (
            "an output bomb",
            format!(
                "{{{{#each list}}}}{{{{#each ../list}}}}{}{{{{/each}}}}{{{{/each}}}}",
                "x".repeat(200)
            ),
            with_list(100),
            "more than 1048576 bytes",
        ),
        (
            "loops that write nothing",
            "{{#each list}}{{#each ../list}}{{#each ../../list}}{{/each}}{{/each}}{{/each}}".into(),
            with_list(1000),
            "too much work",
        ),
        (
            "an oversized source",
            "x".repeat(1024 * 1024 + 1),
            None,
            "a template has at most",
        ),
    ];
    let mut notifier = server.notifier(&server.admin_key);
    for (what, body, context, why) in cases {
        let request = pb::SendToAddressesRequest {
            organisation: "acme".into(),
            to: vec!["soc@example.com".into()],
            subject: "hostile".into(),
            body,
            context,
            ..Default::default()
        };
        let status = notifier.send_to_addresses(request).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert_eq!(violated_fields(&status), ["body"], "{what}: {status:?}");
        assert!(status.message().contains(why), "{what}: {status:?}");
    }

    // Still serving, and still delivering.
    server.assert_serving().await;
    let ids = server
        .send_to(
            &["soc@example.com"],
            "after",
            "{{#each list}}{{this}},{{/each}}",
        )
        .await;
    server.wait_for_state(&ids[0], pb::MessageState::Sent).await;
    assert_eq!(smtp.seen().messages.len(), 1);
}

/// What a template may do still works: `each` over lists and objects with `@index`,
/// `@key`, `@first`, `@last`, block parameters, `../` and `{{else}}`.
#[tokio::test]
async fn each_keeps_what_handlebars_offers() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let body =
        "{{#each list}}{{@index}}={{this}}{{#if @first}}F{{/if}}{{#if @last}}L{{/if}};{{/each}}\
                {{#each list as |n i|}}[{{i}}:{{n}}]{{/each}}\
                {{#each obj}}{{@key}}:{{this}}/{{../title}};{{/each}}\
                {{#each empty}}x{{else}}none{{/each}}";
    let mut context = with_list(3).unwrap();
    let text = |s: &str| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.into())),
    };
    context.fields.insert("title".into(), text("T"));
    context.fields.insert(
        "obj".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
                fields: [("a".to_string(), text("1")), ("b".to_string(), text("2"))]
                    .into_iter()
                    .collect(),
            })),
        },
    );
    context.fields.insert(
        "empty".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::ListValue(Default::default())),
        },
    );
    let queued = server
        .notifier(&server.admin_key)
        .send_to_addresses(pb::SendToAddressesRequest {
            organisation: "acme".into(),
            to: vec!["soc@example.com".into()],
            subject: "each".into(),
            body: body.into(),
            context: Some(context),
            ..Default::default()
        })
        .await
        .expect("send")
        .into_inner();
    server
        .wait_for_state(&queued.message_ids[0], pb::MessageState::Sent)
        .await;
    let seen = smtp.seen();
    let message = mailparse::parse_mail(seen.messages[0].data.as_bytes()).unwrap();
    let text = message.get_body().unwrap();
    assert_eq!(
        text.trim_end(),
        "0=0F;1=1;2=2L;[0:0][1:1][2:2]a:1/T;b:2/T;none",
        "{text:?}"
    );
}

/// Sends one message to `to` for `organisation` with `key`.
async fn send_as(
    server: &TestServer,
    key: &str,
    organisation: &str,
    to: &[&str],
    body: &str,
) -> Result<pb::SendResponse, tonic::Status> {
    server
        .notifier(key)
        .send_to_addresses(pb::SendToAddressesRequest {
            organisation: organisation.into(),
            to: to.iter().map(|t| t.to_string()).collect(),
            subject: "quota".into(),
            body: body.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// The quota `status` names, and when to retry.
#[track_caller]
fn over_quota(status: &tonic::Status) -> (String, std::time::Duration) {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "QUOTA_EXCEEDED");
    let retry = status.get_details_retry_info().expect("RetryInfo");
    (
        info.metadata["quota"].clone(),
        retry.retry_delay.expect("a delay"),
    )
}

/// One organisation reaching each of its quotas is refused, naming the quota; another
/// organisation still sends.
#[tokio::test]
async fn an_organisation_over_its_quota_leaves_the_others_sending() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start_tuned(|args| {
        args.org_pending_messages = 3;
        args.org_messages_per_hour = 4;
        args.org_bytes_per_day = 64 * 1024;
    })
    .await;
    // Nothing listens there: messages stay pending.
    server.configure_smtp(crate::support::free_port()).await;
    let acme = server.create_key("acme", &["manageConfig"]).await;
    let beta = server.create_key("beta", &["manageConfig"]).await;

    send_as(&server, &acme, "", &["a@example.com", "b@example.com"], "x")
        .await
        .expect("two pending of three");
    let status = send_as(&server, &acme, "", &["c@example.com", "d@example.com"], "x")
        .await
        .expect_err("four pending");
    assert_eq!(over_quota(&status).0, "pending_messages");
    let listed = server
        .notifier(&acme)
        .list_messages(pb::ListMessagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(listed.len(), 2, "the refused request queued nothing");

    // beta is untouched by acme's quota; its own bytes quota stops a large request.
    send_as(&server, &beta, "", &["a@example.com"], "x")
        .await
        .expect("beta sends");
    let status = send_as(
        &server,
        &beta,
        "",
        &["a@example.com"],
        &"x".repeat(100 * 1024),
    )
    .await
    .expect_err("over beta's bytes");
    let (quota, retry) = over_quota(&status);
    assert_eq!(quota, "bytes_per_day");
    assert!(retry >= std::time::Duration::from_secs(3600), "{retry:?}");

    // Cancelled messages are no longer pending, but still count for the hour.
    for m in &listed {
        server
            .notifier(&acme)
            .cancel_message(pb::CancelMessageRequest { id: m.id.clone() })
            .await
            .unwrap();
    }
    send_as(&server, &acme, "", &["e@example.com", "f@example.com"], "x")
        .await
        .expect("pending again: two of three");
    let status = send_as(&server, &acme, "", &["g@example.com"], "x")
        .await
        .expect_err("five within the hour");
    assert_eq!(over_quota(&status).0, "messages_per_hour");
    server.advance(std::time::Duration::from_secs(3601));
    send_as(&server, &acme, "", &["g@example.com"], "x")
        .await
        .expect("a new hour: three pending of three");
    let status = send_as(&server, &acme, "", &["h@example.com"], "x")
        .await
        .expect_err("four pending");
    assert_eq!(over_quota(&status).0, "pending_messages");
}

/// The text part of an HTML body is laid out by html2text only for a body of at most 5,000
/// tags: html5ever's time grows with the square of the depth (a body of 1 MiB of `<div>`
/// took minutes), and html2text's table layout holds every cell (a row of 165,000 cells
/// rendered from 200 bytes of template took 455 MB). A larger body gets its tags taken out
/// instead, however it hides its depth (`<div/>` opens a `div` all the same).
#[tokio::test]
async fn an_html_body_of_too_many_elements_is_sent_with_its_tags_taken_out() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let send = |body: String, context: Option<prost_types::Struct>| pb::SendToAddressesRequest {
        organisation: "acme".into(),
        to: vec!["soc@example.com".into()],
        subject: "deep".into(),
        body,
        context,
        format: pb::BodyFormat::Html.into(),
        ..Default::default()
    };
    let mut notifier = server.notifier(&server.admin_key);
    // Laid out by html2text, this body takes minutes.
    let queued = crate::support::within(
        std::time::Duration::from_secs(60),
        "a body of 100,000 levels answered",
        notifier.send_to_addresses(send(format!("{}deep text", "<div/>".repeat(100_000)), None)),
    )
    .await
    .expect("100,000 levels")
    .into_inner();
    let sent = server
        .wait_for_state(&queued.message_ids[0], pb::MessageState::Sent)
        .await;
    assert_eq!(sent.state(), pb::MessageState::Sent);
    let seen = smtp.seen();
    let message = mailparse::parse_mail(seen.messages[0].data.as_bytes()).unwrap();
    let text = message.subparts[0].get_body().unwrap();
    assert_eq!(text.trim(), "deep text", "the text part, tags taken out");

    let table = "<table><tr>{{#each a}}{{#each @root.a}}{{#each @root.a}}<td/>x<td/>x<td/>x\
                 {{/each}}{{/each}}{{/each}}</tr></table>";
    let answer = notifier
        .send_to_addresses(send(
            table.into(),
            with_list(38).map(|mut c| {
                let list = c.fields.remove("list").unwrap();
                c.fields.insert("a".into(), list);
                c
            }),
        ))
        .await;
    match answer {
        Ok(_) => {}
        Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{status:?}"),
    }
    server.assert_serving().await;
}

/// A send for `organisation` whose body renders until its time runs out (2 s): each step
/// compares two values of 1 MiB, and the step budget outlasts the time.
fn slow_send(organisation: &str) -> pb::SendToAddressesRequest {
    let mut context = with_list(1000).unwrap();
    context.fields.insert(
        "big".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("b".repeat(1 << 20))),
        },
    );
    pb::SendToAddressesRequest {
        organisation: organisation.into(),
        to: vec!["soc@example.com".into()],
        subject: "slow".into(),
        body: "{{#each list}}{{#each ../list}}{{#if (eq ../../big ../../big)}}{{/if}}\
               {{/each}}{{/each}}"
            .into(),
        context: Some(context),
        ..Default::default()
    }
}

/// A template that renders until its time runs out (2 s) does not hold the runtime: on a
/// runtime of one worker, shared by the server and this client, health checks go on
/// being answered while it renders (before sends rendered on a thread of their own, none
/// was: the one worker was rendering).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_slow_render_leaves_the_runtime_serving() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let mut notifier = server.notifier(&server.admin_key);
    let slow = tokio::spawn(async move { notifier.send_to_addresses(slow_send("acme")).await });
    let mut health = HealthClient::new(server.channel());
    let mut answered = 0;
    while !slow.is_finished() {
        let serving = health
            .check(HealthCheckRequest::default())
            .await
            .expect("health")
            .into_inner();
        assert_eq!(serving.status(), ServingStatus::Serving);
        answered += 1;
    }
    let status = slow.await.unwrap().expect_err("out of time");
    assert!(status.message().contains("too much work"), "{status:?}");
    // Answers before the rendering started are a handful; during it, thousands.
    assert!(
        answered >= 100,
        "{answered} health checks answered while the template rendered"
    );
}

/// Tokens issued and users changed are held to hourly quotas per organisation (each
/// replica counting its own): one organisation past them is refused, naming the quota,
/// while another goes on; admin keys change users unheld; a new hour lets it in again.
#[tokio::test]
async fn tokens_and_user_changes_have_hourly_quotas_per_organisation() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start_tuned(|args| {
        args.org_tokens_per_hour = 2;
        args.org_user_changes_per_hour = 2;
    })
    .await;
    let acme = server.create_key("acme", &["manageUser"]).await;
    let beta = server.create_key("beta", &["manageUser"]).await;
    let issue = |key: &str, organisation: &str, login: &str| {
        let mut tokens = server.tokens(key);
        let mut request = crate::support::issue_request(login, pb::TokenPurpose::Invitation);
        request.organisation = organisation.into();
        async move { tokens.issue_token(request).await }
    };
    issue(&acme, "acme", "new1").await.expect("first");
    issue(&acme, "acme", "new2").await.expect("second");
    let status = issue(&acme, "acme", "new3").await.expect_err("third");
    assert_eq!(over_quota(&status).0, "tokens_per_hour");
    issue(&beta, "beta", "new3").await.expect("beta's own");

    let upsert = |key: &str, organisation: &str, login: &str| {
        let mut directory = server.directory(key);
        let user = pb::User {
            login: login.into(),
            email: format!("{login}@example.com"),
            organisations: vec![organisation.into()],
            ..Default::default()
        };
        async move {
            directory
                .upsert_user(pb::UpsertUserRequest { user: Some(user) })
                .await
        }
    };
    upsert(&acme, "acme", "u1").await.expect("first");
    upsert(&acme, "acme", "u1")
        .await
        .expect("second, the same user");
    let status = upsert(&acme, "acme", "u2").await.expect_err("third");
    assert_eq!(over_quota(&status).0, "user_changes_per_hour");
    let listed = server
        .directory(&acme)
        .list_users(pb::ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(listed.len(), 1, "the refused change wrote nothing");
    upsert(&beta, "beta", "u2").await.expect("beta's own");
    upsert(&server.admin_key, "acme", "u3")
        .await
        .expect("admin keys are not held");

    server.advance(std::time::Duration::from_secs(3601));
    issue(&acme, "acme", "new3").await.expect("a new hour");
    upsert(&acme, "acme", "u4").await.expect("a new hour");
}

/// A retried message is queued again, and counts against the quotas as a new one.
#[tokio::test]
async fn a_retry_counts_against_the_quotas() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start_tuned(|args| {
        args.org_messages_per_hour = 1;
    })
    .await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let acme = server.create_key("acme", &["manageConfig"]).await;
    let sent = send_as(&server, &acme, "", &["rejected@example.com"], "x")
        .await
        .expect("the hour's one message");
    let id = &sent.message_ids[0];
    server
        .wait_for_state_as(&acme, id, pb::MessageState::Dead)
        .await;
    let status = server
        .notifier(&acme)
        .retry_message(pb::RetryMessageRequest { id: id.clone() })
        .await
        .expect_err("a second message within the hour");
    assert_eq!(over_quota(&status).0, "messages_per_hour");
    let message = server
        .notifier(&acme)
        .get_message(pb::GetMessageRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(message.state(), pb::MessageState::Dead, "left as it was");
    server.advance(std::time::Duration::from_secs(3601));
    server
        .notifier(&acme)
        .retry_message(pb::RetryMessageRequest { id: id.clone() })
        .await
        .expect("a new hour");
}

/// An organisation past its hourly quota is refused before its templates render: the slow
/// template below answers "too much work" after 2 s when rendered, and
/// `RESOURCE_EXHAUSTED` at once here.
#[tokio::test]
async fn a_send_past_the_hourly_quota_is_refused_before_it_renders() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start_tuned(|args| {
        args.org_messages_per_hour = 1;
    })
    .await;
    server.configure_smtp(crate::support::free_port()).await;
    let acme = server.create_key("acme", &["manageConfig"]).await;
    send_as(&server, &acme, "", &["a@example.com"], "x")
        .await
        .expect("the hour's one message");
    let status = server
        .notifier(&acme)
        .send_to_addresses(slow_send(""))
        .await
        .expect_err("past the hour's quota");
    assert_eq!(over_quota(&status).0, "messages_per_hour");
}

/// One organisation's slow sends take at most a quarter of the send threads: with two
/// threads (one an organisation), beta's send is answered while acme's two slow ones still
/// render (when acme could take both, beta's waited for one of them to end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_organisations_slow_sends_leave_the_others_a_thread() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start_tuned(|args| {
        args.send_threads = 2;
        args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    server.configure_smtp(crate::support::free_port()).await;
    let acme = server.create_key("acme", &["manageConfig"]).await;
    let beta = server.create_key("beta", &["manageConfig"]).await;
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let mut notifier = server.notifier(&acme);
        slow.spawn(async move { notifier.send_to_addresses(slow_send("")).await });
    }
    // Both of acme's calls are in (each rendering, or waiting for a thread) before beta's.
    crate::support::eventually(
        std::time::Duration::from_secs(30),
        "acme's sends in",
        async || {
            let metrics = crate::metrics::scrape(&server).await;
            let sends = |state: &str| metrics[&format!("mailroom_sends{{state=\"{state}\"}}")];
            sends("running") + sends("waiting") == 2.0
        },
    )
    .await;
    let beta_sent = tokio::select! {
        biased;
        done = slow.join_next() => panic!("acme's send ended first: {done:?}"),
        sent = send_as(&server, &beta, "", &["b@example.com"], "x") => sent,
    };
    beta_sent.expect("beta sends");
    while let Some(done) = slow.join_next().await {
        let status = done.unwrap().expect_err("too much work");
        assert!(status.message().contains("too much work"), "{status:?}");
    }
}
