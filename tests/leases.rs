//! A claim is a lease: a sender whose claim ran out while it waited for the SMTP server
//! (another sender, here or on another replica, may hold the message now) sends nothing.

use crate::support;

use std::time::Duration;

use mailroom::config::Args;
use mailroom::proto::v1 as pb;
use support::proxy::{Mode, Proxy};
use support::smtp::{Options, SmtpServer};
use support::TestServer;

/// One sender waits for the greeting of a relay that holds it while the claim's lease runs
/// out; a second sender claims the message again and waits too. When the relay answers
/// both, the message is sent once: the first sender, whose claim is gone, sends nothing.
#[tokio::test]
async fn a_claim_that_runs_out_while_waiting_for_the_greeting_sends_nothing() {
    let _watchdog = crate::support::watchdog();
    let dir = tempfile::tempdir().unwrap();
    let mut args = Args::with_data_dir(dir.path());
    args.clock = support::test_clock();
    args.workers = 2;
    args.claim_margin = Duration::from_secs(60);
    let mut server = TestServer::start_with(args).await;
    let smtp = SmtpServer::start(Options::default());
    let relay = Proxy::start(smtp.addr, Mode::Hold).await;
    // The default timeout, 10 s: a claim lasts four of them (the longest send) plus the
    // margin, 100 s.
    server.configure_smtp(relay.port()).await;
    let id = server
        .send_to(&["soc@example.com"], "once", "one copy only")
        .await
        .remove(0);
    relay.wait_for_accepted(1).await;
    let first = server.wait_for_state(&id, pb::MessageState::Sending).await;
    assert_eq!(first.attempts, 1, "{first:?}");

    // The lease runs out while the first sender waits: the message is claimed again, by
    // the other sender, which connects and waits too.
    server.advance(Duration::from_secs(101));
    relay.wait_for_accepted(2).await;
    let second = server.wait_for_state(&id, pb::MessageState::Sending).await;
    assert_eq!(second.attempts, 2, "claimed again: {second:?}");

    relay.open();
    server.wait_for_state(&id, pb::MessageState::Sent).await;
    // Stopping waits for every send in flight: the first sender has decided too.
    server.stop().await.unwrap();
    let received = smtp.seen().messages;
    assert_eq!(received.len(), 1, "sent once: {received:#?}");
    assert!(received[0].text().contains("one copy only"));
}
