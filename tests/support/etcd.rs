//! A real etcd for the tests: started on free 127.0.0.1 ports with a temporary data
//! directory, stopped (and restartable on the same directory and ports) at will.
//!
//! Without an `etcd` binary on PATH the etcd tests are skipped, saying so, except under CI
//! (`CI` set), where a missing etcd fails them.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailroom::store::etcd::EtcdStore;

pub struct Etcd {
    pub endpoint: String,
    peer: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A port free right now on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Etcd {
    /// A running etcd; `None` (test skipped) when there is no etcd binary outside CI.
    pub async fn start() -> Option<Self> {
        if which("etcd").is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "etcd is not on PATH, and CI must run the etcd tests (.ci/run installs etcd-server)"
            );
            eprintln!("etcd is not on PATH: skipping this etcd test (apt-get install etcd-server)");
            return None;
        }
        let mut etcd = Self {
            endpoint: format!("http://127.0.0.1:{}", free_port()),
            peer: format!("http://127.0.0.1:{}", free_port()),
            dir: tempfile::tempdir().expect("temporary directory"),
            child: None,
        };
        etcd.resume().await;
        Some(etcd)
    }

    /// Starts etcd again on the same data and ports, and waits until it answers.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let child = Command::new("etcd")
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.endpoint])
            .args(["--advertise-client-urls", &self.endpoint])
            .args(["--listen-peer-urls", &self.peer])
            .args(["--initial-advertise-peer-urls", &self.peer])
            .args(["--initial-cluster", &format!("test={}", self.peer)])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.store("/probe/").await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not answer within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills etcd (its data stays for [`Etcd::resume`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A store on this etcd under `prefix`.
    pub async fn store(&self, prefix: &str) -> mailroom::store::Result<EtcdStore> {
        EtcdStore::connect(
            std::slice::from_ref(&self.endpoint),
            prefix,
            Duration::from_secs(2),
        )
        .await
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}
