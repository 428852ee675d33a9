//! The `fieldgate` command line. Printing is this module's job, so it writes to stdout.
#![allow(clippy::print_stdout)]

use crate::config::Config;
use crate::telemetry::LogFormat;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// fieldgate: an edge gateway for farm and plant fleets. It collects readings over Modbus,
/// LoRaWAN and MQTT, keeps downsampled Parquet on local disk, and forwards aggregates upstream.
#[derive(Debug, Parser)]
#[command(name = "fieldgate", version, propagate_version = true)]
pub struct Cli {
    /// How to write log lines (to stderr); the level comes from RUST_LOG.
    #[arg(long, value_enum, default_value_t, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway with a config file until Ctrl-C or SIGTERM, then drain and flush.
    Run {
        /// The TOML config file (see examples/fieldgate.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file and list every problem in it; exits 0 when it is valid.
    CheckConfig {
        /// The TOML config file to check.
        file: PathBuf,
    },
    /// Print the version of this build.
    Version,
}

/// Run the chosen subcommand.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => run(config),
        Command::CheckConfig { file } => Ok(check_config(&file)),
        Command::Version => {
            println!("fieldgate {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            println!(
                "{} is valid: gateway `{}`, data in {}, HTTP on {}",
                file.display(),
                config.gateway.id,
                config.gateway.data_dir.display(),
                config.http.listen
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("error: {errors}");
            ExitCode::FAILURE
        }
    }
}

fn run(config_path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("error: {errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        // Installed before anything starts, so a signal during start-up is not lost.
        let signals = Signals::install()?;
        tokio::spawn(signals.watch(shutdown.clone()));
        crate::run(config, shutdown).await.map_err(anyhow::Error::from)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM: the first starts a clean shutdown, a second exits at once.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn watch(mut self, shutdown: CancellationToken) {
        let mut first = true;
        loop {
            let name = tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            };
            if first {
                tracing::info!(signal = name, "shutting down; send it again to exit without flushing");
                shutdown.cancel();
                first = false;
            } else {
                tracing::warn!(signal = name, "second signal: exiting without waiting for the flush");
                std::process::exit(130);
            }
        }
    }
}
