//! The one configuration struct: every flag has a `MAILROOM_*` environment twin (but
//! `--replace`, which empties a store, and is given on the command line alone), and the
//! doc comments below are `mailroom --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::clock::Clock;

/// Declares a struct of clap flags that starts with the flags saying where the state lives
/// (the store, its directory or etcd cluster, the master key) and the log format: the
/// server's [`Args`] and `rotate-master-key`'s [`RotateMasterKeyArgs`], which need the same
/// store with the same flags. One definition, not `global` flags: a global flag is offered
/// by every subcommand, and `catch-mail`, which has no store, showed them all in its help.
macro_rules! with_state_flags {
    ($(#[$meta:meta])* pub struct $name:ident { $($fields:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($fields)*

            /// Directory of the embedded store, the master key and the bootstrap key file.
            #[arg(
                long,
                env = "MAILROOM_DATA_DIR",
                default_value = "./data"
            )]
            pub data_dir: PathBuf,

            /// Which store holds the state.
            #[arg(long, env = "MAILROOM_STORE", value_enum, default_value_t = StoreKind::Sled)]
            pub store: StoreKind,

            /// The etcd cluster of `--store etcd`, comma-separated (`http://host:2379`).
            #[arg(
                long,
                env = "MAILROOM_ETCD_ENDPOINTS",
                value_delimiter = ',',
                default_value = "http://127.0.0.1:2379"
            )]
            pub etcd_endpoints: Vec<String>,

            /// Where in etcd this mailroom keeps its state: replicas of one deployment share it.
            #[arg(
                long,
                env = "MAILROOM_ETCD_PREFIX",
                default_value = "/mailroom/"
            )]
            pub etcd_prefix: String,

            /// The longest any one request to etcd may take before it fails.
            #[arg(long, env = "MAILROOM_ETCD_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
            pub etcd_timeout: Duration,

            /// PEM file of the CA that signed etcd's server certificate: etcd is then reached over
            /// TLS, trusting this CA alone. `https://` endpoints without it are checked against the
            /// public web roots.
            #[arg(long, env = "MAILROOM_ETCD_CA")]
            pub etcd_ca: Option<PathBuf>,

            /// PEM certificate chain shown to etcd over TLS (with --etcd-key), for an etcd that
            /// requires client certificates (`--client-cert-auth`).
            #[arg(long, env = "MAILROOM_ETCD_CERT", requires = "etcd_key")]
            pub etcd_cert: Option<PathBuf>,

            /// PEM private key of --etcd-cert.
            #[arg(long, env = "MAILROOM_ETCD_KEY", requires = "etcd_cert")]
            pub etcd_key: Option<PathBuf>,

            /// The etcd user to authenticate as, when etcd's auth is enabled (with
            /// --etcd-password-file).
            #[arg(
                long,
                env = "MAILROOM_ETCD_USER",
                requires = "etcd_password_file"
            )]
            pub etcd_user: Option<String>,

            /// File holding the password of --etcd-user (trailing line breaks are ignored). Like
            /// ssh with a private key, mailroom refuses a file that group or others may read;
            /// except that a file owned by root may be readable by its group, as Kubernetes mounts
            /// a Secret for a pod with an fsGroup.
            #[arg(
                long,
                env = "MAILROOM_ETCD_PASSWORD_FILE",
                requires = "etcd_user"
            )]
            pub etcd_password_file: Option<PathBuf>,

            /// File holding the 256-bit master key (64 hex digits) that encrypts stored secrets;
            /// `<data-dir>/master.key`, created on first start, when unset.
            #[arg(long, env = "MAILROOM_MASTER_KEY_FILE")]
            pub master_key_file: Option<PathBuf>,

            /// Log line format.
            #[arg(long, env = "MAILROOM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
            pub log_format: LogFormat,
        }
    };
}

with_state_flags! {
/// mailroom: the email control plane of a security-incident platform (SMTP settings,
/// password-reset and invitation tokens, notification email) over gRPC.
#[derive(Clone, Debug, Parser)]
// A subcommand takes its own flags, after its name (`mailroom rotate-master-key --data-dir
// ./data`): the server's given before it are refused, not silently ignored (which would
// rotate the key of the default directory).
#[command(name = "mailroom", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Args {
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to serve gRPC on.
    #[arg(long, env = "MAILROOM_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// How long a claim on a message outlives the longest send (four SMTP timeouts): the
    /// margin covers clock differences between replicas. A claim of a replica that died is
    /// taken over by another once it ran out.
    #[arg(long, env = "MAILROOM_CLAIM_MARGIN", default_value = "60s", value_parser = parse_duration)]
    pub claim_margin: Duration,

    /// How long a finished message (`SENT`, `DEAD`, `CANCELLED`) stays listable after it was
    /// queued (or requeued by RetryMessage); the hourly sweep then forgets it. `0` keeps
    /// finished messages forever.
    #[arg(long, env = "MAILROOM_MESSAGE_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub message_retention: Duration,

    /// Memory for the embedded store's page cache, in MiB.
    #[arg(long, env = "MAILROOM_CACHE_MB", default_value_t = 40)]
    pub cache_mb: u64,

    /// How long shutdown waits for in-flight RPCs before it stops them.
    #[arg(long, env = "MAILROOM_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How many messages are sent at once (and SMTP connections pooled).
    #[arg(long, env = "MAILROOM_WORKERS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,

    /// PEM certificate chain to serve gRPC over TLS (with --tls-key).
    #[arg(long, env = "MAILROOM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "MAILROOM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA whose client certificates are then required (mTLS), in addition to API keys.
    #[arg(long, env = "MAILROOM_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (off by default; keep it on loopback
    /// or a private network).
    #[arg(long, env = "MAILROOM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Refuse SMTP hosts that are or resolve to a loopback, private, link-local or other
    /// special-purpose address (IPv4 and IPv6): at update, at test, and before every
    /// connection, which goes only to an address checked.
    #[arg(long, env = "MAILROOM_SMTP_DENY_PRIVATE_ADDRESSES")]
    pub smtp_deny_private_addresses: bool,

    /// Most messages one organisation may have pending (queued, retrying or being sent).
    #[arg(long, env = "MAILROOM_ORG_PENDING_MESSAGES", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub org_pending_messages: u64,

    /// Most messages one organisation may queue within an hour.
    #[arg(long, env = "MAILROOM_ORG_MESSAGES_PER_HOUR", default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub org_messages_per_hour: u64,

    /// Most bytes (as stored, sealed) one organisation may queue within 24 hours: this
    /// bounds what it can hold in the outbox. On etcd, keep it times the number of
    /// organisations under etcd's space quota.
    #[arg(long, env = "MAILROOM_ORG_BYTES_PER_DAY", default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub org_bytes_per_day: u64,

    /// Bytes of request messages let in at once, all callers together (at least 16 MiB,
    /// four times the longest request), of which one organisation's calls hold at most a
    /// quarter: a call waits, unread, until both hold its message. A decoded request
    /// takes several times its size in memory.
    #[arg(long, env = "MAILROOM_REQUEST_BYTES_IN_FLIGHT", default_value_t = 32 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_bytes_in_flight: u64,

    /// How long a request's message may take to arrive once let in: the bytes it was let
    /// in for are held meanwhile.
    #[arg(long, env = "MAILROOM_REQUEST_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_read_timeout: Duration,

    /// Most tokens one organisation may be issued within an hour (counted by each replica).
    #[arg(long, env = "MAILROOM_ORG_TOKENS_PER_HOUR", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub org_tokens_per_hour: u64,

    /// Most users the keys of one organisation may create or replace within an hour
    /// (counted by each replica; admin keys are not held to it).
    #[arg(long, env = "MAILROOM_ORG_USER_CHANGES_PER_HOUR", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub org_user_changes_per_hour: u64,

    /// Sends (SendToAddresses, SendToUsers) rendering and staging at once, each on a thread
    /// of its own; one organisation's take at most a quarter of them.
    #[arg(long, env = "MAILROOM_SEND_THREADS", default_value_t = crate::notify::SEND_THREADS, value_parser = clap::builder::ValueParser::new(clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096)))]
    pub send_threads: usize,

    /// The platform's name in the built-in emails (their `platform` value: the layout's
    /// header and footer, the invitation).
    #[arg(long, env = "MAILROOM_PLATFORM_NAME", default_value = crate::notify::builtin::DEFAULT_PLATFORM_NAME, value_parser = platform_name)]
    pub platform_name: String,

    /// How many tokens one login may be issued per purpose and hour.
    #[arg(long, env = "MAILROOM_TOKEN_ISSUE_LIMIT", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub token_issue_limit: u32,

    /// The clock the domain asks (tests set a manual one).
    #[arg(skip)]
    pub clock: Clock,

    /// How SMTP hosts are resolved: the system resolver; tests give their own (one that
    /// changes its answer, as DNS rebinding does).
    #[arg(skip)]
    pub resolver: crate::settings::Resolver,
}
}

impl Args {
    /// The defaults, as `mailroom` with no flags and no `MAILROOM_*` environment would run
    /// (what tests and tools start from: a variable set where they run changes nothing).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut args = Self::defaults(&["mailroom"]);
        args.data_dir = data_dir.into();
        args
    }

    /// `argv` parsed with no `MAILROOM_*` variable read: every flag's environment twin
    /// (the subcommands' too) taken out first.
    fn defaults(argv: &[&str]) -> Self {
        let mut command = Self::command().mut_args(|arg| arg.env(None));
        let subcommands: Vec<String> = command
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        for name in subcommands {
            command = command.mut_subcommand(name, |s| s.mut_args(|arg| arg.env(None)));
        }
        let matches = command
            .try_get_matches_from(argv)
            .expect("the defaults parse");
        Self::from_arg_matches(&matches).expect("the defaults parse")
    }

    /// Where the master key lives.
    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }
}

/// What to do instead of serving: maintenance (mailroom stopped), or a tool.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Seal every stored secret under a new master key, then drop the old one (stop mailroom
    /// first: it needs the store to itself).
    RotateMasterKey(RotateMasterKeyArgs),
    /// Run a mail catcher for trying mailroom and for tests: an SMTP server on loopback that
    /// accepts every message, prints its envelope, headers and text part, and writes it to
    /// `--dir` as an `.eml` file. It is not a relay: nothing is delivered anywhere.
    CatchMail(CatchMailArgs),
    /// Write every record of the store to one file, secrets still sealed under the master
    /// key (a backup, or the first half of a move). The embedded store must be stopped; an
    /// etcd store is read as of one revision while its replicas run.
    Export(ExportArgs),
    /// Read a file `export` wrote into an empty store (or, with `--replace`, in place of
    /// what it holds), once the master key is shown to open the file's secrets.
    Import(ImportArgs),
    /// Move the embedded store in `--data-dir` to etcd in one step (export, then import):
    /// mailroom stopped, etcd's replicas not yet started.
    Migrate(MigrateArgs),
}

/// `mailroom export`: the store to read, and the file to write.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct ExportArgs {
    /// The file to write: a new one (an existing file is never replaced), in place only
    /// once complete (never left half-written).
    #[arg(long, env = "MAILROOM_EXPORT_OUT")]
    pub out: PathBuf,
    /// The store to read.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `mailroom import`: the file to read, and the store to write.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct ImportArgs {
    /// The file `mailroom export` wrote.
    #[arg(long, env = "MAILROOM_IMPORT_FROM")]
    pub from: PathBuf,
    /// Remove whatever the store holds before importing (else a store holding anything is
    /// refused). On the command line only: a variable left set must not empty a store.
    #[arg(long)]
    pub replace: bool,
    /// The store to write, and the master key that must open the file's secrets.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `mailroom migrate`: the embedded store in `--data-dir` to the etcd cluster the
/// `--etcd-*` flags name.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct MigrateArgs {
    /// The store to move to: `etcd`.
    #[arg(long, env = "MAILROOM_MIGRATE_TO_STORE", value_enum)]
    pub to_store: StoreKind,
    /// Remove whatever the etcd prefix holds first (else a prefix holding anything is
    /// refused). On the command line only, as `import --replace`.
    #[arg(long)]
    pub replace: bool,
    /// Where the sled store is (`--data-dir`), where etcd is (`--etcd-*`), and the master
    /// key (`--master-key-file`, else `<data-dir>/master.key`). `--store` must be `sled`.
    #[command(flatten)]
    pub store: StoreArgs,
}

with_state_flags! {
/// `mailroom rotate-master-key`: the store whose secrets are re-sealed, as the server's
/// flags of the same names find it.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct RotateMasterKeyArgs {}
}

/// The state flags alone (the store, the master key, the log format): what `export`,
/// `import` and `migrate` take besides their own, read as `rotate-master-key` reads them.
pub type StoreArgs = RotateMasterKeyArgs;

impl Args {
    /// The server's arguments with the store `rotate-master-key` names: what it opens.
    pub fn for_rotation(&self, rotate: &RotateMasterKeyArgs) -> Args {
        self.with_store(rotate)
    }

    /// The server's arguments with the store a maintenance command's flags name (the state
    /// flags of `rotate-master-key`, `export`, `import` and `migrate`).
    pub fn with_store(&self, rotate: &StoreArgs) -> Args {
        let RotateMasterKeyArgs {
            data_dir,
            store,
            etcd_endpoints,
            etcd_prefix,
            etcd_timeout,
            etcd_ca,
            etcd_cert,
            etcd_key,
            etcd_user,
            etcd_password_file,
            master_key_file,
            log_format,
        } = rotate.clone();
        Args {
            data_dir,
            store,
            etcd_endpoints,
            etcd_prefix,
            etcd_timeout,
            etcd_ca,
            etcd_cert,
            etcd_key,
            etcd_user,
            etcd_password_file,
            master_key_file,
            log_format,
            ..self.clone()
        }
    }
}

/// `mailroom catch-mail`: where it listens, where it writes, and the bounds that keep it from
/// being a way to fill the machine's memory or disk.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct CatchMailArgs {
    /// Address to accept SMTP on (`127.0.0.1:0` picks a free port, printed at start).
    #[arg(
        long,
        env = "MAILROOM_CATCH_MAIL_LISTEN",
        default_value = "127.0.0.1:2525"
    )]
    pub listen: SocketAddr,

    /// Directory the caught messages are written to, one `.eml` file each (created if
    /// missing).
    #[arg(long, env = "MAILROOM_CATCH_MAIL_DIR", default_value = "./caught")]
    pub dir: PathBuf,

    /// Listen on an address that is not loopback: anyone who reaches it can then write to
    /// `--dir` (within the bounds below).
    #[arg(long, env = "MAILROOM_CATCH_MAIL_ALLOW_REMOTE")]
    pub allow_remote: bool,

    /// Largest message accepted, in bytes; a larger one is refused with 552.
    #[arg(long, env = "MAILROOM_CATCH_MAIL_MAX_MESSAGE_BYTES", default_value_t = 10 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_message_bytes: u64,

    /// Most bytes written to `--dir` by this run; messages beyond are refused with 452.
    #[arg(long, env = "MAILROOM_CATCH_MAIL_MAX_STORED_BYTES", default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_stored_bytes: u64,

    /// Most SMTP connections open at once; others are answered 421 and closed.
    #[arg(long, env = "MAILROOM_CATCH_MAIL_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_connections: u32,

    /// How long a connection may stay silent (between two lines) before it is closed.
    #[arg(long, env = "MAILROOM_CATCH_MAIL_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How long one connection may last in all, however busy, before it is closed.
    #[arg(long, env = "MAILROOM_CATCH_MAIL_CONNECTION_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub connection_timeout: Duration,
}

impl CatchMailArgs {
    /// The defaults, as `mailroom catch-mail` with no flags (and no environment) would run,
    /// writing to `dir`.
    pub fn with_dir(dir: impl Into<PathBuf>) -> Self {
        match Args::defaults(&["mailroom", "catch-mail"]).command {
            Some(Command::CatchMail(mut args)) => {
                args.dir = dir.into();
                args
            }
            _ => unreachable!("`catch-mail` parses as the catch-mail command"),
        }
    }
}

/// Which store holds the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Embedded sled database in `--data-dir` (one process).
    Sled,
    /// etcd at `--etcd-endpoints`, shared by several replicas (the `etcd` cargo feature).
    Etcd,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses `250ms`, `10s`, `5m`, or a bare number of seconds.
/// A platform name: 1 to 100 characters, none a control character.
fn platform_name(s: &str) -> Result<String, String> {
    crate::validation::text(s, true, 100).map(|()| s.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 500ms, 10s, 2m, 1h or 30d"))?;
    let seconds = |per: u64| {
        n.checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        _ => Err(format!(
            "{s:?} is not a duration such as 500ms, 10s, 2m, 1h or 30d"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_from_milliseconds_to_days() {
        let parsed = |s| parse_duration(s).unwrap();
        assert_eq!(parsed("500ms"), Duration::from_millis(500));
        assert_eq!(parsed("10"), Duration::from_secs(10));
        assert_eq!(parsed("2m"), Duration::from_secs(120));
        assert_eq!(parsed("1h"), Duration::from_secs(3600));
        assert_eq!(parsed("30d"), Duration::from_secs(30 * 86_400));
        for bad in ["", "d", "1w", "-1s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("999999999999999999d")
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn the_defaults_ignore_the_environment() {
        // Checked in a child test process that has the variables, so that no other test
        // (nor any C code reading the environment meanwhile) sees them change.
        const CHILD: &str = "MAILROOM_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let args = Args::with_data_dir("/d");
            assert_eq!(args.listen, "127.0.0.1:50051".parse().unwrap());
            assert_eq!((args.workers, args.store), (4, StoreKind::Sled));
            assert_eq!(args.data_dir, PathBuf::from("/d"));
            assert_eq!(CatchMailArgs::with_dir("/c").max_connections, 16);
            return;
        }
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "config::tests::the_defaults_ignore_the_environment",
            ])
            .env(CHILD, "1")
            .env("MAILROOM_LISTEN", "0.0.0.0:1")
            .env("MAILROOM_WORKERS", "0")
            .env("MAILROOM_STORE", "etcd")
            .env("MAILROOM_CATCH_MAIL_MAX_CONNECTIONS", "0")
            .status()
            .unwrap();
        assert!(
            status.success(),
            "MAILROOM_* variables reached the defaults"
        );
    }
}
