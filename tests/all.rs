//! The integration suite, one test binary: each module below is one area, talking to a
//! real server over gRPC (and a real SMTP server, and etcd with the `etcd` feature).
//! One binary rather than one per file: each test binary links the whole service
//! (~55 MB unoptimised), and thirteen of them helped run a CI machine out of disk.

mod support;

mod architecture;
mod auth;
mod catcher;
mod directory;
mod etcd_security;
mod gate;
mod guard;
mod hostile;
mod leases;
mod line_ends;
mod metrics;
mod notifier;
mod oauth2;
mod portability;
mod process;
mod readme;
mod replicas;
mod rotation;
mod secrets;
mod server;
mod smtp_settings;
mod smtp_test;
mod store;
mod templates;
mod tenancy;
mod tls;
mod tokens;

/// Every test is bounded: its first statement starts its [`support::watchdog`], which ends
/// the run, naming the test, if it hangs.
#[test]
fn every_test_starts_its_watchdog() {
    let _watchdog = crate::support::watchdog();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut unwatched = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension() != Some("rs".as_ref()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            let line = line.trim();
            if line != "#[test]" && !line.starts_with("#[tokio::test") {
                continue;
            }
            // The line after the one that opens the function's body.
            let first = lines[n..]
                .iter()
                .position(|l| l.trim_end().ends_with('{'))
                .and_then(|open| lines.get(n + open + 1));
            if !first.is_some_and(|l| l.contains("support::watchdog()")) {
                unwatched.push(format!("{}:{}", path.display(), n + 1));
            }
        }
    }
    assert!(
        unwatched.is_empty(),
        "tests not starting with `let _watchdog = crate::support::watchdog();`: {unwatched:#?}"
    );
}
