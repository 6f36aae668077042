//! `TestSmtpSettings`: one real email sent stage by stage with lettre's connection-level
//! API, so that the report says where a server failed (TOKEN with XOAUTH2, CONNECT, TLS,
//! EHLO, AUTH, MAIL_FROM, RCPT_TO, DATA), with its reply code, instead of only "failed".
//! XOAUTH2's token is fetched anew for every test, never taken from delivery's cache. The whole exchange is
//! bounded by the settings' `timeout`, also against a server that accepts the connection and
//! then says nothing. With `STARTTLS` required and not offered, nothing but QUIT follows.

use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use lettre::address::Address;
use lettre::message::Mailbox;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};

pub use super::connection::Stage;
use super::connection::{self, client_id, crlf_line_ends, Failed, Login, Stages};
use crate::crypto::MasterKey;
use crate::notify::email::{compose, new_message_id};
use crate::notify::{EmailValue, EmailValues, RenderedEmail};
use crate::settings::oauth2::AccessTokens;
use crate::settings::{human, AddressGuard, Mechanism, Security, SmtpSettings};

/// The outcome of one stage.
#[derive(Clone, Debug)]
pub struct Step {
    /// Which stage.
    pub stage: Stage,
    /// Whether it succeeded.
    pub ok: bool,
    /// The server's reply code, when it replied.
    pub smtp_code: Option<u16>,
    /// What happened.
    pub detail: String,
    /// How long it took.
    pub elapsed: Duration,
}

/// The outcome of a test.
#[derive(Clone, Debug)]
pub struct Report {
    /// Whether the email was accepted.
    pub success: bool,
    /// One step per stage reached.
    pub steps: Vec<Step>,
    /// The test email's Message-ID, when it was accepted.
    pub message_id: String,
    /// One line for a human.
    pub summary: String,
}

/// Checks a test recipient.
pub fn recipient(value: &str) -> Result<Address, String> {
    if value.is_empty() {
        return Err("is required: the address that receives the test email".into());
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Address::from_str(value).map_err(|e| format!("is not an email address ({e})"))
}

/// The steps so far, and the stage under way (to blame it on a timeout).
struct Run {
    steps: Vec<Step>,
    stage: Stage,
    started: Instant,
}

impl Stages for Run {
    fn begin(&mut self, stage: Stage) {
        self.stage = stage;
        self.started = Instant::now();
    }

    fn pass(&mut self, smtp_code: Option<u16>, detail: String) {
        self.record(true, smtp_code, detail);
    }

    fn fail(&mut self, smtp_code: Option<u16>, detail: String) -> Failed {
        self.record(false, smtp_code, detail);
        Failed
    }
}

impl Run {
    fn record(&mut self, ok: bool, smtp_code: Option<u16>, detail: String) {
        self.steps.push(Step {
            stage: self.stage,
            ok,
            smtp_code,
            detail,
            elapsed: self.started.elapsed(),
        });
    }
}

/// Sends the test email `email` (rendered from [`test_values`]) to `to` with `settings`
/// (secrets opened with `key`, the host resolved and checked by `guard`) and reports every
/// stage. Never fails: a failing server,
/// or a host the guard refuses at CONNECT, is a report with `success = false`.
pub async fn run(
    settings: &SmtpSettings,
    key: &MasterKey,
    guard: &AddressGuard,
    tokens: &AccessTokens,
    to: &Address,
    email: &RenderedEmail,
    now: SystemTime,
) -> Report {
    let mut run = Run {
        steps: Vec::new(),
        stage: Stage::Connect,
        started: Instant::now(),
    };
    let timeout = settings.timeout;
    let login = Login::fresh(tokens, now);
    let outcome = tokio::time::timeout(
        timeout,
        exchange(&mut run, settings, key, guard, &login, (to, email), now),
    )
    .await;
    let message_id = match outcome {
        Ok(Ok(id)) => Some(id),
        Ok(Err(Failed)) => None,
        Err(_) if run.stage == Stage::Token => {
            run.fail(
                None,
                format!(
                    "the token endpoint did not answer within the {} timeout (check \
                     auth.oauth2.token_url, and that mailroom can reach it)",
                    human(timeout)
                ),
            );
            None
        }
        Err(_) => {
            run.fail(
                None,
                format!("no answer within the {} timeout", human(timeout)),
            );
            None
        }
    };
    let summary = match (&message_id, run.steps.last()) {
        (Some(_), _) => format!(
            "test email to {to} accepted by {}:{}",
            settings.host,
            settings.port.get()
        ),
        (None, Some(step)) => format!("failed at {}: {}", step.stage, step.detail),
        (None, None) => "failed before connecting".into(),
    };
    Report {
        success: message_id.is_some(),
        steps: run.steps,
        message_id: message_id.unwrap_or_default(),
        summary,
    }
}

async fn exchange(
    run: &mut Run,
    settings: &SmtpSettings,
    key: &MasterKey,
    guard: &AddressGuard,
    login: &Login<'_>,
    (to, email): (&Address, &RenderedEmail),
    now: SystemTime,
) -> Result<String, Failed> {
    let mut conn = connection::open(settings, key, guard, login, run)
        .await?
        .connection;

    let from = settings.from.mailbox();
    let message_id = new_message_id(from.email.domain());
    let email = compose(
        from.clone(),
        Mailbox::new(None, to.clone()),
        &email.subject,
        &email.text,
        email.html.as_deref(),
        &message_id,
        now,
    )
    .map_err(|e| run.fail(None, format!("building the test email: {e}")))?;

    run.begin(Stage::MailFrom);
    let response = conn
        .command(Mail::new(Some(from.email.clone()), vec![]))
        .await
        .map_err(|e| run.smtp_fail(e))?;
    run.reply(&response);

    run.begin(Stage::RcptTo);
    let response = conn
        .command(Rcpt::new(to.clone(), vec![]))
        .await
        .map_err(|e| run.smtp_fail(e))?;
    run.reply(&response);

    run.begin(Stage::Data);
    conn.command(Data).await.map_err(|e| run.smtp_fail(e))?;
    let response = conn
        .message(&crlf_line_ends(&email))
        .await
        .map_err(|e| run.smtp_fail(e))?;
    run.reply(&response);
    let _ = conn.quit().await;
    Ok(message_id)
}

/// The values of the test email (`EMAIL_KIND_SMTP_TEST`): what is tested, never a secret.
pub fn test_values(settings: &SmtpSettings, now: SystemTime) -> EmailValues {
    let security = match settings.security {
        Security::None => "none",
        Security::StartTls => "STARTTLS (required)",
        Security::StartTlsOpportunistic => "STARTTLS (opportunistic)",
        Security::Ssl => "SSL (implicit TLS)",
    };
    let username = match (&settings.auth.oauth2, settings.username.is_empty()) {
        (_, true) => String::new(),
        (Some(oauth2), false) if settings.auth.mechanism == Mechanism::Xoauth2 => format!(
            "{} (XOAUTH2: {} at {})",
            settings.username,
            oauth2.grant().name(),
            oauth2.token_url()
        ),
        (_, false) => format!("{} ({})", settings.username, settings.auth.mechanism.name()),
    };
    [
        ("time", EmailValue::Time(now)),
        ("host", settings.host.to_string().into()),
        ("port", settings.port.get().to_string().into()),
        ("security", security.into()),
        ("helo", client_id(settings).to_string().into()),
        ("username", username.into()),
        ("sender", settings.from.as_str().into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
