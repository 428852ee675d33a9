//! `fieldgate`: parse arguments, set up logging, hand over to the library.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = fieldgate::cli::Cli::parse();
    fieldgate::telemetry::init(cli.log_format);
    match fieldgate::cli::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "fieldgate stopped with an error");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
