//! The private-address guard (`--smtp-deny-private-addresses`) at connect time: a name
//! that resolves to a public address when the settings are saved and to loopback later
//! (DNS rebinding) leads to no connection, in delivery nor in TestSmtpSettings; settings
//! stored before the flag was turned on are refused at delivery, the message DEAD.
//!
//! The names are answered by a test resolver given to the server (`Args::resolver`); the
//! SMTP server is a real one on loopback, which counts the connections it accepts.

use crate::support;

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use mailroom::config::Args;
use mailroom::proto::v1 as pb;
use mailroom::settings::{Resolve, Resolver};
use support::smtp::strict_server;
use support::TestServer;

/// A public address. The resolver answers it only to checks that never connect (saving
/// and the check before a test): nothing here sends it a packet.
const PUBLIC: &str = "2a00:1450:4001:80b::201b";
const LOOPBACK: &str = "127.0.0.1";
const NAME: &str = "relay.example.com";
const FLAG: &str = "--smtp-deny-private-addresses";

/// A resolver that answers from a script, one answer per question, the last one repeated;
/// and counts the questions.
#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Vec<IpAddr>>>,
    asked: Mutex<Vec<String>>,
}

impl Script {
    /// The next questions get these answers, in order.
    fn answer(&self, answers: &[&[&str]]) {
        *self.answers.lock().unwrap() = answers
            .iter()
            .map(|ips| ips.iter().map(|ip| ip.parse().unwrap()).collect())
            .collect();
    }

    fn asked(&self) -> usize {
        self.asked.lock().unwrap().len()
    }
}

#[async_trait::async_trait]
impl Resolve for Script {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        self.asked.lock().unwrap().push(host.to_string());
        let mut answers = self.answers.lock().unwrap();
        let ips = if answers.len() > 1 {
            answers.pop_front().unwrap()
        } else {
            answers.front().cloned().unwrap_or_default()
        };
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }
}

fn args(dir: &Path, deny_private: bool, script: &Arc<Script>) -> Args {
    let mut args = Args::with_data_dir(dir);
    args.clock = support::test_clock();
    args.workers = 1;
    args.smtp_deny_private_addresses = deny_private;
    args.resolver = Resolver::new(script.clone());
    args
}

fn settings(host: &str, port: u16) -> pb::SmtpSettings {
    pb::SmtpSettings {
        host: host.into(),
        port: port.into(),
        from: "thehive@example.com".into(),
        timeout: Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_name_that_rebinds_to_loopback_leads_to_no_connection() {
    let _watchdog = crate::support::watchdog();
    let script = Arc::new(Script::default());

    // Without the flag, the name leads to the loopback server through the test resolver:
    // what the guard must stop below is a real route.
    let (open_smtp, open_reads) = strict_server(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut open = TestServer::start_with(args(dir.path(), false, &script)).await;
    script.answer(&[&[LOOPBACK]]);
    open.save_smtp(settings(NAME, open_smtp.port())).await;
    let id = &open.send_to(&["soc@example.com"], "s", "b").await[0];
    open.wait_for_state(id, pb::MessageState::Sent).await;
    assert_eq!(open_reads.lock().unwrap().messages.len(), 1);
    open.stop().await.unwrap();

    // With the flag: public when the settings are saved, loopback after.
    let (smtp, reads) = strict_server(true).await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(args(dir.path(), true, &script)).await;
    script.answer(&[&[PUBLIC], &[LOOPBACK]]);
    let asked = script.asked();
    server.save_smtp(settings(NAME, smtp.port())).await;
    assert_eq!(script.asked(), asked + 1, "checked at update");

    let id = &server.send_to(&["soc@example.com"], "s", "b").await[0];
    let dead = server.wait_for_state(id, pb::MessageState::Dead).await;
    assert_eq!(dead.attempts, 1, "{dead:?}");
    assert_eq!(dead.last_smtp_code, 0, "{dead:?}");
    for part in [NAME, LOOPBACK, FLAG, "loopback"] {
        assert!(
            dead.last_error.contains(part),
            "{part}: {}",
            dead.last_error
        );
    }
    assert_eq!(
        script.asked(),
        asked + 2,
        "delivery resolved once, and used that answer"
    );

    // One answer mixing a public and a loopback address is refused whole.
    script.answer(&[&[PUBLIC, LOOPBACK]]);
    let id = &server.send_to(&["soc@example.com"], "s", "b").await[0];
    let dead = server.wait_for_state(id, pb::MessageState::Dead).await;
    assert!(dead.last_error.contains(LOOPBACK), "{}", dead.last_error);

    // TestSmtpSettings: public for the check before it, loopback when it connects.
    script.answer(&[&[PUBLIC], &[LOOPBACK]]);
    let report = server
        .smtp(&server.admin_key)
        .test_smtp_settings(pb::TestSmtpSettingsRequest {
            settings: None,
            recipient: "soc@example.com".into(),
            ..Default::default()
        })
        .await
        .expect("a refusal at CONNECT is a report, not an error")
        .into_inner();
    assert!(!report.success, "{report:?}");
    let connect = report.steps.last().unwrap();
    assert_eq!(connect.stage(), pb::TestStage::Connect, "{report:?}");
    assert!(!connect.ok);
    assert!(
        connect.detail.contains(LOOPBACK) && connect.detail.contains(FLAG),
        "{}",
        connect.detail
    );

    assert_eq!(
        reads.lock().unwrap().connections,
        0,
        "nothing connected to the loopback server"
    );
}

#[tokio::test]
async fn settings_stored_before_the_flag_are_refused_at_delivery() {
    let _watchdog = crate::support::watchdog();
    let (smtp, reads) = strict_server(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut before = TestServer::start_in(dir.path()).await;
    before.configure_smtp(smtp.port()).await;
    before.stop().await.unwrap();

    let mut args = Args::with_data_dir(dir.path());
    args.clock = support::test_clock();
    args.smtp_deny_private_addresses = true;
    let server = TestServer::start_with(args).await;
    let ids = server
        .send_to(&["soc@example.com", "cert@example.com"], "s", "b")
        .await;
    for id in &ids {
        let dead = server.wait_for_state(id, pb::MessageState::Dead).await;
        assert_eq!(dead.attempts, 1, "{dead:?}");
        assert_eq!(
            dead.last_error,
            "CONNECT: not connected: 127.0.0.1 is a loopback address (RFC 1122 3.2.1.3), \
             which --smtp-deny-private-addresses refuses; nothing was sent (change the \
             settings' host, then retry)"
        );
    }
    assert_eq!(
        reads.lock().unwrap().connections,
        0,
        "the SMTP server received no connection"
    );
}
