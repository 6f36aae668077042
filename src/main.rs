//! The `mailroom` binary: parses [`Args`] and runs the server (or a subcommand).

use std::process::ExitCode;

use clap::Parser;
use mailroom::config::{Args, Command};
use mailroom::server::{exported, imported, migrated};

/// mimalloc: under many requests in flight, glibc's malloc spent a quarter of the CPU of
/// `IssueToken` in its arena locks; mimalloc's per-thread heaps raised durable-RPC
/// throughput by a third (docs/PERFORMANCE.md). Built without transparent huge pages
/// (feature `no_thp`), which had idle RSS at 52 MiB instead of 12.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tune_allocator();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(serve()),
        Err(e) => {
            eprintln!("mailroom: cannot start the Tokio runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Freed pages go back to the system at once: mimalloc keeps them for a second by
/// default, and `SendToUsers` to 100,000 users then peaked at 232 MiB instead of 181.
/// Before any thread starts (`mi_option_set` is not thread-safe).
fn tune_allocator() {
    // SAFETY: sets one option of the allocator while no other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) }
}

/// `mi_option_purge_delay` in the header of the mimalloc v3 that libmimalloc-sys 0.1.49
/// builds; the crate exports no constant for it (a test checks it against its default).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

async fn serve() -> ExitCode {
    let args = Args::parse();
    match &args.command {
        Some(Command::RotateMasterKey(rotate)) => {
            let args = args.for_rotation(rotate);
            mailroom::server::init_tracing(args.log_format);
            return match mailroom::server::rotate_master_key(&args).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "master key rotation failed");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::CatchMail(catch)) => {
            mailroom::server::init_tracing(args.log_format);
            let shutdown = mailroom::server::shutdown_signal();
            return match mailroom::catcher::serve(catch.clone(), shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "mail catcher stopped on an error");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Export(export)) => {
            let args = args.with_store(&export.store);
            mailroom::server::init_tracing(args.log_format);
            return finish(
                "export",
                mailroom::server::export(&args, &export.out)
                    .await
                    .map(|header| println!("{}", exported(&export.out, &header))),
            );
        }
        Some(Command::Import(import)) => {
            let args = args.with_store(&import.store);
            mailroom::server::init_tracing(args.log_format);
            return finish(
                "import",
                mailroom::server::import(&args, &import.from, import.replace)
                    .await
                    .map(|header| println!("{}", imported(&import.from, &header))),
            );
        }
        Some(Command::Migrate(migrate)) => {
            let args = args.with_store(&migrate.store);
            mailroom::server::init_tracing(args.log_format);
            return finish(
                "migrate",
                mailroom::server::migrate(&args, migrate.to_store, migrate.replace)
                    .await
                    .map(|counts| println!("{}", migrated(&args, &counts))),
            );
        }
        None => mailroom::server::init_tracing(args.log_format),
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(listen = %args.listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    match mailroom::run(listener, mailroom::server::shutdown_signal(), args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "mailroom stopped on an error");
            ExitCode::FAILURE
        }
    }
}

/// The exit of a maintenance command, its error logged.
fn finish(command: &str, outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), command, "failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PURGE_DELAY;

    /// The option number is the purge delay's: its default is mimalloc's 1000 ms. Another
    /// mimalloc build may number its options otherwise.
    #[test]
    fn purge_delay_names_mimalloc_s_purge_delay() {
        // SAFETY: reads one option.
        let delay = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        assert_eq!(delay, 1000);
    }
}
