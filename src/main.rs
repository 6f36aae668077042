//! The `mailroom` binary: parses [`Args`] and runs the server.

use std::process::ExitCode;

use clap::Parser;
use mailroom::config::{Args, Command};

#[tokio::main]
async fn main() -> ExitCode {
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
