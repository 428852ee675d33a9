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
    /// Modbus tools.
    Modbus {
        #[command(subcommand)]
        command: ModbusCommand,
    },
    /// Ask a running gateway (or a collector): stats, latest values, devices, gaps, the harvest fleet.
    Query(crate::query_cli::QueryArgs),
    /// Run a collector: the upstream end that gateways forward their rollups to.
    Collector(CollectorArgs),
}

#[derive(Debug, clap::Args)]
pub struct CollectorArgs {
    /// Where gateways connect, e.g. 0.0.0.0:50052 (port 0 picks a free one; it is logged).
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub listen: std::net::SocketAddr,
    /// Where the fleet's data lands (rollups/, gaps/, ledger/).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Where `/metrics` and `/healthz` are served (port 0 picks a free one; it is logged).
    #[arg(long, default_value = "127.0.0.1:9465")]
    pub http_listen: std::net::SocketAddr,
    /// A file of `<gateway-id> <token>` lines; with it, each gateway must present its token.
    /// Required beyond loopback.
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
    /// A file holding the token QueryService callers must present (`authorization: Bearer`).
    /// Required beyond loopback.
    #[arg(long)]
    pub query_token_file: Option<PathBuf>,
    /// TLS: the collector's certificate chain and key (PEM).
    #[arg(long, requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long, requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// With TLS: require gateways to present a certificate chaining to this CA.
    #[arg(long, requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ModbusCommand {
    /// Read registers around an address of a live device and print every decoding side by side
    /// (each type in each byte/word order, at the address and at ±1), marking those that give
    /// the expected value.
    Probe(ProbeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Modbus TCP device, "host:port".
    #[arg(long, group = "transport")]
    pub tcp: Option<String>,
    /// RTU through a serial server, "host:port".
    #[arg(long, group = "transport")]
    pub rtu_over_tcp: Option<String>,
    /// RTU on a serial line, e.g. /dev/ttyUSB0.
    #[arg(long, group = "transport")]
    pub serial: Option<String>,
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// none, even or odd.
    #[arg(long, default_value = "even")]
    pub parity: String,
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    /// coil, discrete_input, input_register or holding_register; without it, write the address
    /// 1-based like 40013.
    #[arg(long)]
    pub table: Option<String>,
    /// The address: 0-based with --table, or 1-based with its table digit (40013).
    #[arg(long)]
    pub address: String,
    /// The value the device should show now (e.g. from its display).
    #[arg(long)]
    pub expect: Option<f64>,
    /// How long to wait for the answer.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
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
        Command::Modbus { command: ModbusCommand::Probe(args) } => probe(args),
        Command::Query(args) => crate::query_cli::query(args),
        Command::Collector(args) => collector(args),
    }
}

fn probe(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    use fieldgate_adapters::modbus::{Parity, SerialSettings, Table, Transport, parse_address, probe};
    let transport = match (args.tcp, args.rtu_over_tcp, args.serial) {
        (Some(a), None, None) => Transport::Tcp(a),
        (None, Some(a), None) => Transport::RtuOverTcp(a),
        (None, None, Some(path)) => {
            let parity = match args.parity.as_str() {
                "none" => Parity::None,
                "even" => Parity::Even,
                "odd" => Parity::Odd,
                other => anyhow::bail!("--parity {other}: use none, even or odd"),
            };
            Transport::Rtu(SerialSettings { path, baud: args.baud, parity, data_bits: 8, stop_bits: 1 })
        }
        _ => anyhow::bail!("give one of --tcp, --rtu-over-tcp or --serial"),
    };
    let (table, address) = match args.table.as_deref() {
        Some(t) => {
            let table = match t {
                "coil" => Table::Coil,
                "discrete_input" => Table::DiscreteInput,
                "input_register" => Table::InputRegister,
                "holding_register" => Table::HoldingRegister,
                other => anyhow::bail!(
                    "--table {other}: use coil, discrete_input, input_register or holding_register"
                ),
            };
            let address: u16 = args.address.parse().map_err(|_| {
                anyhow::anyhow!(
                    "--address {}: with --table the address is 0-based (0 to 65535)",
                    args.address
                )
            })?;
            (table, address)
        }
        None => match parse_address(&args.address).map_err(anyhow::Error::msg)? {
            (Some(t), a) => (t, a),
            (None, _) => {
                anyhow::bail!("--address {}: give --table, or write it 1-based like 40013", args.address)
            }
        },
    };
    let probe = probe::Probe {
        transport,
        unit: args.unit,
        table,
        address,
        timeout: args.timeout,
        expect: args.expect,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match runtime.block_on(probe::run(&probe)) {
        Ok(table) => {
            print!("{table}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
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
    raise_open_files_limit();
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

fn collector(args: CollectorArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let tokens = match &args.tokens_file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(
                crate::collector::parse_tokens(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            )
        }
        None => None,
    };
    let query_token = match &args.query_token_file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let token = text.trim().to_owned();
            anyhow::ensure!(!token.is_empty(), "{}: the token is empty", path.display());
            Some(token.into_bytes())
        }
        None => None,
    };
    if !args.listen.ip().is_loopback() {
        anyhow::ensure!(
            tokens.is_some() && query_token.is_some(),
            "--listen {}: beyond loopback each gateway needs a token and queries need one: give --tokens-file and --query-token-file",
            args.listen
        );
    }
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(c), Some(k)) => Some(crate::config::GrpcTls {
            cert: read(c)?,
            key: read(k)?,
            client_ca: args.tls_client_ca_file.as_ref().map(read).transpose()?,
        }),
        _ => None,
    };
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = Signals::install()?;
        tokio::spawn(signals.watch(shutdown.clone()));
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let http = tokio::net::TcpListener::bind(args.http_listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.http_listen))?;
        let sink = std::sync::Arc::new(crate::collector::ParquetSink::new(&args.data_dir));
        crate::collector::serve(listener, http, sink, tokens, query_token, tls, &args.data_dir, shutdown)
            .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Raise the soft limit of open files to the hard one: every Modbus TCP device, MQTT client
/// and gRPC caller holds a socket, and the usual soft limit of 1024 is below what a large site
/// needs (systemd's `LimitNOFILE` sets the hard one).
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "cannot raise the open files limit");
    }
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
