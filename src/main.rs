//! The `mailroom` binary: parses [`Args`] and runs the server.

use std::process::ExitCode;

use clap::Parser;
use mailroom::config::{Args, Command};

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

/// Allocations above 128 KiB (pages of a large batch, store buffers) get their own
/// mappings, returned to the system when freed. glibc otherwise raises that threshold as
/// large blocks are freed and keeps them in its heaps: `SendToUsers` to 100,000 users
/// peaked at 200 MiB instead of 150 (docs/PERFORMANCE.md). Before any thread starts.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a glibc tunable; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

async fn serve() -> ExitCode {
    let args = Args::parse();
    mailroom::server::init_tracing(args.log_format);
    if args.command == Some(Command::RotateMasterKey) {
        return match mailroom::server::rotate_master_key(&args).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "master key rotation failed");
                ExitCode::FAILURE
            }
        };
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
