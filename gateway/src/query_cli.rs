//! `fieldgate query …`: the query service from a terminal, against a running gateway. Prints a
//! table by default, or JSON or CSV for scripts.
#![allow(clippy::print_stdout)]

use fieldgate_proto::v1::query_service_client::QueryServiceClient;
use fieldgate_proto::v1::{self, DevicesRequest, FleetRequest, LatestRequest, StatsRequest};
use fieldgate_proto::{Timestamp, wire};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The gateway's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051", global = true)]
    pub grpc: String,
    /// A file holding the bearer token, for gateways with `[grpc] token` (the environment
    /// variable FIELDGATE_TOKEN is used otherwise; a token is never given on the command line,
    /// where other users could read it).
    #[arg(long, global = true)]
    pub token_file: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    pub format: Format,
    /// Connect over TLS, trusting the gateway's certificate if it chains to this CA file (PEM).
    #[arg(long, global = true)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// This client's certificate and key (PEM), for gateways that require one.
    #[arg(long, global = true, requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    #[arg(long, global = true, requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// The name the gateway's certificate is for, when not the host of --grpc.
    #[arg(long, global = true)]
    pub tls_domain: Option<String>,
    /// How long to wait for each answer; the gateway gives up at this deadline too.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: QueryCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, clap::Subcommand)]
pub enum QueryCommand {
    /// Aggregates (count, min, max, mean, sum, first, last) per device, metric and window.
    Stats {
        /// A device to include (repeat for more); all when none is given.
        #[arg(long = "device")]
        devices: Vec<String>,
        /// A metric to include (repeat for more); all when none is given.
        #[arg(long = "metric")]
        metrics: Vec<String>,
        #[command(flatten)]
        span: Span,
        /// Bucket size, a multiple of a stored window (10s, 1m, 15m by default); one bucket
        /// over the whole span when left out.
        #[arg(long, value_parser = humantime::parse_duration)]
        window: Option<Duration>,
    },
    /// The latest value of each metric of each device.
    Latest {
        #[arg(long = "device")]
        devices: Vec<String>,
        #[arg(long = "metric")]
        metrics: Vec<String>,
    },
    /// Configured and discovered devices, their protocol, when they were heard and health.
    Devices,
    /// Rollups that will never arrive upstream (dropped at the outbox's disk cap): on a
    /// gateway those not delivered yet, on a collector those it received.
    Gaps {
        /// A gateway to include (repeat for more; a collector); all when none is given.
        #[arg(long = "gateway")]
        gateways: Vec<String>,
    },
    /// The devices with the largest (or smallest) value of a metric over a span.
    Top {
        /// The metric to rank by.
        #[arg(long)]
        metric: String,
        /// What of it: mean, min, max, sum, count, first or last.
        #[arg(long, default_value = "mean", value_parser = aggregate)]
        by: v1::Aggregate,
        /// How many devices.
        #[arg(long, short = 'n', default_value_t = 10)]
        n: u32,
        /// Smallest first.
        #[arg(long)]
        ascending: bool,
        #[command(flatten)]
        span: Span,
    },
    /// Per device: readings, rate, last seen and errors over a span.
    Summary {
        /// A device to include (repeat for more); all when none is given.
        #[arg(long = "device")]
        devices: Vec<String>,
        #[command(flatten)]
        span: Span,
    },
    /// The harvest fleet as the dispatcher sees it.
    Fleet,
}

/// A span of time: `--from`/`--to`, or `--last`.
#[derive(Debug, clap::Args)]
pub struct Span {
    /// Start, RFC 3339 (2026-11-24T06:00:00Z); or use --last.
    #[arg(long, conflicts_with = "last")]
    from: Option<String>,
    /// End (exclusive), RFC 3339; now when left out.
    #[arg(long, conflicts_with = "last")]
    to: Option<String>,
    /// The span up to now, e.g. 24h (its start is put on a boundary of --window, or of a
    /// minute).
    #[arg(long, value_parser = humantime::parse_duration)]
    last: Option<Duration>,
}

impl Span {
    fn range(&self, align: Duration) -> anyhow::Result<(Timestamp, Option<Timestamp>)> {
        match (self.last, &self.from) {
            (Some(span), _) => Ok((Timestamp::now().saturating_sub(span).floor_to(align), None)),
            (None, Some(f)) => Ok((time("from", f)?, self.to.as_deref().map(|t| time("to", t)).transpose()?)),
            (None, None) => anyhow::bail!("give --from (and --to), or --last"),
        }
    }
}

fn aggregate(s: &str) -> Result<v1::Aggregate, String> {
    v1::Aggregate::from_str_name(&format!("AGGREGATE_{}", s.to_uppercase()))
        .filter(|a| *a != v1::Aggregate::Unspecified)
        .ok_or_else(|| format!("`{s}` is not one of mean, min, max, sum, count, first, last"))
}

/// A source's and a health's short names.
fn source_name(v: i32) -> String {
    short(v1::Source::try_from(v).ok().map(|s| s.as_str_name()), "SOURCE_")
}

fn health_name(v: i32) -> String {
    short(v1::DeviceHealth::try_from(v).ok().map(|h| h.as_str_name()), "DEVICE_HEALTH_")
}

fn time(what: &str, s: &str) -> anyhow::Result<Timestamp> {
    Timestamp::parse_rfc3339(s)
        .map_err(|e| anyhow::anyhow!("--{what} `{s}`: {e} (write it like 2026-11-24T06:00:00Z)"))
}

/// An enum value's proto name without its prefix, lowercase (`DEVICE_HEALTH_OK` → `ok`).
fn short(name: Option<&str>, prefix: &str) -> String {
    name.map_or_else(|| "?".to_owned(), |n| n.strip_prefix(prefix).unwrap_or(n).to_lowercase())
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref().and_then(|t| wire::timestamp("ts", t).ok()).map_or_else(String::new, |t| t.to_string())
}

/// Run a query subcommand.
pub fn query(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--token-file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("FIELDGATE_TOKEN").ok(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let table = runtime.block_on(fetch(&args, token))?;
    print(&table, args.format);
    Ok(ExitCode::SUCCESS)
}

/// A result as a header and rows of text.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new<S: ToString>(header: &[S], rows: Vec<Vec<String>>) -> Self {
        Table { header: header.iter().map(ToString::to_string).collect(), rows }
    }
}

fn read(flag: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("--{flag} {}: {e}", path.display()))
}

async fn fetch(args: &QueryArgs, token: Option<String>) -> anyhow::Result<Table> {
    let tls = args.tls_ca_file.is_some() || args.tls_cert_file.is_some();
    let scheme = if tls { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", args.grpc))
        .map_err(|e| anyhow::anyhow!("--grpc {}: {e}", args.grpc))?
        .connect_timeout(args.timeout);
    if tls {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &args.tls_ca_file {
            config = config.ca_certificate(Certificate::from_pem(read("tls-ca-file", ca)?));
        }
        if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) {
            config =
                config.identity(Identity::from_pem(read("tls-cert-file", cert)?, read("tls-key-file", key)?));
        }
        if let Some(domain) = &args.tls_domain {
            config = config.domain_name(domain);
        }
        endpoint = endpoint.tls_config(config).map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the gateway's gRPC API at {}: {e} (is it running, with [grpc] on?)",
            args.grpc
        )
    })?;
    let timeout = args.timeout;
    let auth = move |mut r: tonic::Request<()>| {
        // Sent as `grpc-timeout`: the gateway stops working on the call when we stop waiting.
        r.set_timeout(timeout);
        if let Some(t) = &token {
            let value =
                format!("Bearer {t}").parse().map_err(|_| tonic::Status::invalid_argument("bad token"))?;
            r.metadata_mut().insert("authorization", value);
        }
        Ok(r)
    };
    let mut client = QueryServiceClient::with_interceptor(channel, auth);
    let status = |e: tonic::Status| anyhow::anyhow!("the gateway refused: {} ({:?})", e.message(), e.code());
    match &args.command {
        QueryCommand::Stats { devices, metrics, span, window } => {
            let (from, to) = span.range(window.unwrap_or(Duration::from_secs(60)))?;
            let mut request = StatsRequest {
                devices: devices.clone(),
                metrics: metrics.clone(),
                from: Some(from.into()),
                to: to.map(Into::into),
                window: window.map(wire::to_wire_duration),
                page_size: 0,
                page_token: String::new(),
            };
            let mut rows = Vec::new();
            loop {
                let page = client.stats(request.clone()).await.map_err(status)?.into_inner();
                rows.extend(page.rows.into_iter().map(|r| {
                    let n = |v: f64| format!("{v}");
                    vec![
                        r.device,
                        r.metric,
                        ts(&r.window_start),
                        ts(&r.window_end),
                        r.count.to_string(),
                        n(r.min),
                        n(r.max),
                        n(r.mean),
                        n(r.sum),
                        n(r.first),
                        n(r.last),
                    ]
                }));
                if page.next_page_token.is_empty() {
                    break;
                }
                request.page_token = page.next_page_token;
            }
            let header = vec![
                "device",
                "metric",
                "window_start",
                "window_end",
                "count",
                "min",
                "max",
                "mean",
                "sum",
                "first",
                "last",
            ];
            Ok(Table::new(&header, rows))
        }
        QueryCommand::Latest { devices, metrics } => {
            let request = LatestRequest { devices: devices.clone(), metrics: metrics.clone() };
            let values = client.latest(request).await.map_err(status)?.into_inner().values;
            let rows = values
                .into_iter()
                .map(|v| {
                    let quality =
                        short(v1::Quality::try_from(v.quality).ok().map(|q| q.as_str_name()), "QUALITY_");
                    vec![v.device, v.metric, ts(&v.ts), format!("{}", v.value), quality]
                })
                .collect();
            Ok(Table::new(&["device", "metric", "ts", "value", "quality"], rows))
        }
        QueryCommand::Devices => {
            let devices = client.devices(DevicesRequest {}).await.map_err(status)?.into_inner().devices;
            let rows = devices
                .into_iter()
                .map(|d| {
                    let (source, health) = (source_name(d.source), health_name(d.health));
                    vec![
                        d.id,
                        source,
                        if d.configured { "yes" } else { "no" }.to_owned(),
                        ts(&d.first_seen),
                        ts(&d.last_seen),
                        health,
                        d.readings.to_string(),
                        d.errors.to_string(),
                    ]
                })
                .collect();
            let header = vec![
                "device",
                "source",
                "configured",
                "first_seen",
                "last_seen",
                "health",
                "readings",
                "errors",
            ];
            Ok(Table::new(&header, rows))
        }
        QueryCommand::Gaps { gateways } => {
            let request = v1::GapsRequest { gateways: gateways.clone() };
            let gaps = client.gaps(request).await.map_err(status)?.into_inner().gaps;
            let rows = gaps
                .into_iter()
                .map(|g| {
                    vec![
                        g.gateway,
                        format!("{}-{}", g.first_seq, g.last_seq),
                        ts(&g.from),
                        ts(&g.to),
                        g.rows.to_string(),
                        g.reason,
                    ]
                })
                .collect();
            Ok(Table::new(&["gateway", "batches", "from", "to", "rows", "reason"], rows))
        }
        QueryCommand::Top { metric, by, n, ascending, span } => {
            let (from, to) = span.range(Duration::from_secs(60))?;
            let request = v1::TopRequest {
                metric: metric.clone(),
                aggregate: (*by).into(),
                from: Some(from.into()),
                to: to.map(Into::into),
                n: *n,
                ascending: *ascending,
                devices: Vec::new(),
            };
            let rows = client.top(request).await.map_err(status)?.into_inner().rows;
            let rows = rows
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    vec![
                        (i + 1).to_string(),
                        r.device,
                        format!("{}", r.value),
                        r.count.to_string(),
                        ts(&r.last_ts),
                    ]
                })
                .collect();
            let by = short(Some(by.as_str_name()), "AGGREGATE_");
            let header = ["rank".to_owned(), "device".into(), by, "count".into(), "last_ts".into()];
            Ok(Table::new(&header, rows))
        }
        QueryCommand::Summary { devices, span } => {
            let (from, to) = span.range(Duration::from_secs(60))?;
            let request = v1::SummaryRequest {
                from: Some(from.into()),
                to: to.map(Into::into),
                devices: devices.clone(),
            };
            let summary = client.summary(request).await.map_err(status)?.into_inner().devices;
            let rows = summary
                .into_iter()
                .map(|d| {
                    let (source, health) = (source_name(d.source), health_name(d.health));
                    vec![
                        d.device,
                        source,
                        d.readings.to_string(),
                        d.metrics.to_string(),
                        format!("{:.2}", d.readings_per_minute),
                        ts(&d.last_ts),
                        ts(&d.last_seen),
                        d.errors.to_string(),
                        health,
                    ]
                })
                .collect();
            let header = vec![
                "device",
                "source",
                "readings",
                "metrics",
                "per_minute",
                "last_reading",
                "last_seen",
                "errors",
                "health",
            ];
            Ok(Table::new(&header, rows))
        }
        QueryCommand::Fleet => {
            let fleet = client.fleet(FleetRequest {}).await.map_err(status)?.into_inner();
            let mut rows: Vec<Vec<String>> = fleet
                .machines
                .into_iter()
                .map(|m| {
                    vec![
                        m.device,
                        format!("{:.0}%", m.fill_fraction * 100.0),
                        m.state,
                        ts(&m.full_at),
                        ts(&m.last_seen),
                    ]
                })
                .collect();
            rows.extend(fleet.warnings.into_iter().map(|w| {
                vec![format!("warning: {w}"), String::new(), String::new(), String::new(), String::new()]
            }));
            Ok(Table::new(&["machine", "fill", "state", "full_at", "last_seen"], rows))
        }
    }
}

fn print(table: &Table, format: Format) {
    match format {
        Format::Table => {
            let widths: Vec<usize> = (0..table.header.len())
                .map(|c| {
                    table.rows.iter().map(|r| r[c].len()).chain([table.header[c].len()]).max().unwrap_or(0)
                })
                .collect();
            let line = |cells: Vec<&str>| {
                let padded: Vec<String> =
                    cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
                println!("{}", padded.join("  ").trim_end());
            };
            line(table.header.iter().map(String::as_str).collect());
            for r in &table.rows {
                line(r.iter().map(String::as_str).collect());
            }
        }
        Format::Json => {
            let rows: Vec<serde_json::Value> = table
                .rows
                .iter()
                .map(|r| {
                    let object = table.header.iter().zip(r).map(|(h, v)| {
                        // Numbers stay numbers for scripts.
                        let value = v
                            .parse::<f64>()
                            .ok()
                            .filter(|n| n.is_finite())
                            .map_or_else(|| serde_json::json!(v), |n| serde_json::json!(n));
                        (h.clone(), value)
                    });
                    serde_json::Value::Object(object.collect())
                })
                .collect();
            println!("{}", serde_json::Value::Array(rows));
        }
        Format::Csv => {
            let quote = |s: &str| {
                if s.contains([',', '"', '\n']) {
                    format!("\"{}\"", s.replace('"', "\"\""))
                } else {
                    s.to_owned()
                }
            };
            println!("{}", table.header.join(","));
            for r in &table.rows {
                println!("{}", r.iter().map(|c| quote(c)).collect::<Vec<_>>().join(","));
            }
        }
    }
}
