//! A real etcd for the tests: started on free 127.0.0.1 ports with a temporary data
//! directory, stopped (and restartable on the same directory and ports) at will; in plain
//! text, or over TLS requiring a client certificate ([`Etcd::start_tls`]).
//!
//! Without an `etcd` binary on PATH the etcd tests are skipped, saying so, except under CI
//! (`CI` set), where a missing etcd fails them.
//!
//! etcd logs (warnings and errors) to `etcd.log` in its temporary directory; a test that
//! fails prints the end of it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mailroom::store::etcd::{EtcdSecurity, EtcdStore, EtcdTls, EtcdUser};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

pub struct Etcd {
    pub endpoint: String,
    peer: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The certificates of an etcd over TLS.
    pub pki: Option<EtcdPki>,
    /// Who [`Etcd::store`] (and so the wait for etcd to answer) authenticates as, once a
    /// test enabled auth.
    pub user: Option<EtcdUser>,
}

/// PEM files: a test CA, etcd's certificate for 127.0.0.1, and a client certificate (common
/// name [`EtcdPki::CLIENT_NAME`]) that the CA signed.
pub struct EtcdPki {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl EtcdPki {
    /// The client certificate's common name. With auth enabled, etcd takes it for the user
    /// of a request that carries no token: it names no etcd user, so that the certificate
    /// alone is no login.
    pub const CLIENT_NAME: &str = "mailroom client";

    /// Creates the CA and both certificates as files in `dir`.
    pub fn create(dir: &Path) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mailroom test etcd CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let issue = |name: &str, common_name: &str, sans: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            (
                write(&format!("{name}.crt"), cert.pem()),
                write(&format!("{name}.key"), key.serialize_pem()),
            )
        };
        let (server_cert, server_key) = issue("server", "etcd", vec!["127.0.0.1".into()]);
        let (client_cert, client_key) = issue("client", Self::CLIENT_NAME, Vec::new());
        Self {
            ca: write("ca.crt", ca.pem()),
            client_cert,
            client_key,
            server_cert,
            server_key,
        }
    }

    /// TLS that trusts the CA and shows the client certificate.
    pub fn tls(&self) -> EtcdTls {
        let read = |path: &Path| std::fs::read(path).unwrap();
        EtcdTls {
            ca_pem: Some(read(&self.ca)),
            identity: Some((read(&self.client_cert), read(&self.client_key).into())),
        }
    }
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
        Self::start_with(false).await
    }

    /// A running etcd served over TLS only, requiring a client certificate signed by its
    /// CA (`--client-cert-auth`); `None` as for [`Etcd::start`].
    pub async fn start_tls() -> Option<Self> {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Option<Self> {
        if which("etcd").is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "etcd is not on PATH, and CI must run the etcd tests (.ci/run installs etcd-server)"
            );
            eprintln!("etcd is not on PATH: skipping this etcd test (apt-get install etcd-server)");
            return None;
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let scheme = if tls { "https" } else { "http" };
        let mut etcd = Self {
            endpoint: String::new(),
            peer: String::new(),
            pki: tls.then(|| EtcdPki::create(dir.path())),
            dir,
            child: None,
            user: None,
        };
        // A port free when picked may be taken before etcd binds it (by any test binding
        // port 0 meanwhile): then again on others.
        for attempt in 1.. {
            etcd.endpoint = format!("{scheme}://127.0.0.1:{}", free_port());
            etcd.peer = format!("http://127.0.0.1:{}", free_port());
            match etcd.launch().await {
                Ok(()) => break,
                Err(exited)
                    if attempt < 5 && etcd.log_tail(5).contains("address already in use") =>
                {
                    eprintln!("{exited}; again on other ports");
                }
                Err(exited) => panic!("{exited}"),
            }
        }
        Some(etcd)
    }

    /// Starts etcd again on the same data and ports, and waits until it answers.
    pub async fn resume(&mut self) {
        if let Err(exited) = self.launch().await {
            panic!("{exited}");
        }
    }

    /// Starts etcd on its data and ports and waits until it answers; why not, if it exits
    /// first (a port taken meanwhile, say: the end of its log is printed as the test fails).
    async fn launch(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "etcd is already running");
        let mut command = Command::new("etcd");
        if let Some(pki) = &self.pki {
            command
                .arg("--cert-file")
                .arg(&pki.server_cert)
                .arg("--key-file")
                .arg(&pki.server_key)
                .arg("--trusted-ca-file")
                .arg(&pki.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.endpoint])
            .args(["--advertise-client-urls", &self.endpoint])
            .args(["--listen-peer-urls", &self.peer])
            .args(["--initial-advertise-peer-urls", &self.peer])
            .args(["--initial-cluster", &format!("test={}", self.peer)])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(self.log_file())
            .spawn()
            .expect("start etcd");
        super::watch_child(child.id());
        self.child = Some(child);
        let mut exited = None;
        super::eventually(Duration::from_secs(30), "etcd answering", async || {
            if let Ok(Some(status)) = self.child.as_mut().expect("started").try_wait() {
                exited = Some(status);
                return true;
            }
            self.store("/probe/").await.is_ok()
        })
        .await;
        match exited {
            None => Ok(()),
            Some(status) => {
                if let Some(child) = self.child.take() {
                    super::forget_child(child.id());
                }
                Err(format!("etcd exited ({status}) on {}", self.endpoint))
            }
        }
    }

    /// Kills etcd (its data stays for [`Etcd::resume`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::forget_child(child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Where etcd logs, kept across restarts.
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open etcd.log")
    }

    /// The last `lines` lines etcd logged.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A store on this etcd under `prefix` (over TLS with the client certificate, for an
    /// etcd over TLS; as [`Etcd::user`]).
    pub async fn store(&self, prefix: &str) -> mailroom::store::Result<EtcdStore> {
        let security = EtcdSecurity {
            tls: self.pki.as_ref().map(EtcdPki::tls),
            user: self.user.clone(),
        };
        EtcdStore::connect(
            std::slice::from_ref(&self.endpoint),
            prefix,
            Duration::from_secs(2),
            &security,
        )
        .await
    }
}

/// Stops etcd; if the test is failing, prints the end of etcd's log first (its directory
/// goes with it).
impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- the end of etcd's log ({}):\n{}\n---",
                self.endpoint,
                self.log_tail(40)
            );
        }
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}
