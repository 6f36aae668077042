//! Bodies are normalised at send time: a bare CR or a bare LF becomes CRLF before the dots
//! are stuffed, so that a body cannot end DATA early at a relay that takes `<CR>.<CR><LF>`
//! or `<LF>.<LF>` for its end (SMTP smuggling) and have what follows read as commands.
//! Checked against a real SMTP server that reads raw lines, with and without PIPELINING.

use crate::support;

use mailroom::config::Args;
use mailroom::proto::v1 as pb;
use support::smtp::strict_server;
use support::TestServer;

/// A body with bare CRs and LFs, and an end of data smuggled after each kind, followed by
/// the commands of a second message.
const BODY: &str = "one\rtwo\nthree\r.\r\nMAIL FROM:<evil@example.net>\r\n\
                    RCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\n.\nQUIT\r\nfour";

/// Whether every CR in `data` starts a CRLF and every LF ends one.
fn crlf_only(data: &str) -> bool {
    let bytes = data.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    })
}

async fn smuggling_attempt(pipelining: bool) {
    let (smtp, reads) = strict_server(pipelining).await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = Args::with_data_dir(dir.path());
    args.clock = support::test_clock();
    args.workers = 1;
    let server = TestServer::start_with(args).await;
    server.configure_smtp(smtp.port()).await;
    let ids = server
        .send_to(&["soc@example.com", "cert@example.com"], "s", BODY)
        .await;
    for id in &ids {
        server.wait_for_state(id, pb::MessageState::Sent).await;
    }

    let reads = reads.lock().unwrap().clone();
    assert_eq!(reads.messages.len(), 2, "{reads:?}");
    for message in &reads.messages {
        assert!(crlf_only(message), "a bare CR or LF arrived: {message:?}");
        // The whole body arrived as data, its lines CRLF, its lone dots unstuffed.
        assert!(
            message.contains(
                "one\r\ntwo\r\nthree\r\n.\r\nMAIL FROM:<evil@example.net>\r\n\
                 RCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n.\r\nQUIT\r\nfour\r\n"
            ),
            "{message:?}"
        );
    }
    // Nothing after an end of data was read as a command: one MAIL FROM per message.
    let verbs: Vec<&str> = reads.groups.iter().flatten().map(String::as_str).collect();
    let count = |verb: &str| verbs.iter().filter(|v| **v == verb).count();
    assert_eq!(count("MAIL"), 2, "{verbs:?}");
    assert_eq!(count("RCPT"), 2, "{verbs:?}");
    assert_eq!(count("DATA"), 2, "{verbs:?}");
    assert_eq!(count("QUIT"), 0, "{verbs:?}");
}

#[tokio::test]
async fn bare_cr_and_lf_arrive_as_crlf_and_smuggle_nothing_pipelined() {
    let _watchdog = crate::support::watchdog();
    smuggling_attempt(true).await;
}

#[tokio::test]
async fn bare_cr_and_lf_arrive_as_crlf_and_smuggle_nothing_in_lock_step() {
    let _watchdog = crate::support::watchdog();
    smuggling_attempt(false).await;
}
