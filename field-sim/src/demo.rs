//! `field-sim demo`: fieldgate at work in one command. A gateway (in this process, with its
//! embedded MQTT broker, its LoRaWAN network server and a data dir of its own) and the B1
//! harvest, live over the real protocols at an accelerated speed: combines, carts and trucks
//! over MQTT, the carts' load cells over LoRaWAN through a simulated packet forwarder, the grain
//! bin and a weather station over Modbus TCP, and the gateway's dispatcher sending the carts
//! their instructions. A live view shows the harvest, the readings per protocol, the plan and
//! the combines' idle time; the summary says where the Parquet files are and how to query
//! them. The gateway keeps running for those queries until Ctrl-C, which stops everything
//! cleanly at any point.

use crate::modbus::{self, Clock};
use field_sim::harvest::scenario::Scenario;
use field_sim::harvest::score;
use field_sim::harvest::world::World;
use fieldgate_proto::Timestamp;
use std::collections::HashMap;
use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A file in a demo's directory, so a later demo may clear it and nothing else.
const MARKER: &str = ".fieldgate-demo";

/// What the demo was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) dir: PathBuf,
    /// Harvest seconds per real second.
    pub speed: f64,
    /// How long the harvest runs, in real time.
    pub duration: Duration,
    pub seed: u64,
    pub policy: String,
}

/// The harvest as the live view shows it, updated by the world's observer.
#[derive(Debug, Default, Clone)]
struct Harvest {
    t_s: f64,
    harvested_t: f64,
    delivered_t: f64,
    idle_fraction: f64,
}

/// The gateway's counters of interest, from its `/metrics`.
#[derive(Debug, Default, Clone)]
struct Counters {
    received: HashMap<String, f64>,
    stored: f64,
}

/// Run the demo to its summary, then keep the gateway up for queries until Ctrl-C.
pub(crate) async fn run(mut opts: Options) -> io::Result<()> {
    prepare(&opts.dir)?;
    // Absolute, so the paths and the DuckDB line in the summary work from anywhere.
    opts.dir = std::fs::canonicalize(&opts.dir)?;
    let scenario = Scenario::load("b1").map_err(io::Error::other)?;
    let log = std::fs::File::create(opts.dir.join("gateway.log"))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(Mutex::new(log))
        .try_init();

    // The farm's Modbus sensors, each on a loopback port of its own.
    let clock = Clock::new(opts.speed);
    let mut sensors = Vec::new();
    for device in modbus::harvest_devices(opts.seed) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(modbus::serve(listener, device.clone(), clock));
        sensors.push((device, addr));
    }
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let text = format!(
        "# Written by `field-sim demo`: the gateway of the demo, on loopback ports of its own.\n\
         [gateway]\nid = \"demo\"\ndata_dir = \"data\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n\
         [grpc]\nlisten = \"127.0.0.1:0\"\n\n[mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n\n\
         [store]\nwindows = [\"10s\", \"1m\", \"1h\"]\nallowed_lateness = \"2s\"\nflush_interval = \"5s\"\nrecordings = true\n\n{}\n{}\n{}",
        scenario.coordination_config(&opts.policy, opts.speed),
        field_sim::harvest::live::lorawan_config(&scenario, any),
        modbus::gateway_config(&sensors, "1s"),
    );
    let config_path = opts.dir.join("fieldgate.toml");
    std::fs::write(&config_path, text)?;
    let config = fieldgate::Config::load(&config_path).map_err(|e| io::Error::other(e.to_string()))?;
    let data_dir = config.gateway.data_dir.clone();

    let shutdown = CancellationToken::new();
    let running =
        fieldgate::start(config, shutdown.clone()).await.map_err(|e| io::Error::other(e.to_string()))?;
    let broker =
        running.mqtt_addr.ok_or_else(|| io::Error::other("the demo gateway has no embedded broker"))?;
    let (lorawan, grpc, http, fleet) =
        (running.lorawan_addr, running.grpc_addr, running.http_addr, running.fleet.clone());
    let gateway = tokio::spawn(running.wait());

    let harvest = Arc::new(Mutex::new(Harvest::default()));
    let started = Instant::now();
    let view = tokio::spawn(show(opts.clone(), http, fleet, harvest.clone(), started));
    let bin = sensors[0].0.clone();
    let mut last_measured = f64::NEG_INFINITY;
    let mut observe = |world: &World| {
        bin.fill_bin(world.delivered_kg);
        if world.t_s - last_measured >= 30.0 {
            last_measured = world.t_s;
            let s = score::measure(world, 0);
            *harvest.lock().unwrap_or_else(PoisonError::into_inner) = Harvest {
                t_s: world.t_s,
                harvested_t: s.harvested_t,
                delivered_t: s.delivered_t,
                idle_fraction: s.idle_fraction,
            };
        }
    };
    let limit_s = opts.duration.as_secs_f64() * opts.speed;
    let live = field_sim::harvest::live::run(
        scenario,
        broker,
        lorawan,
        opts.speed,
        opts.seed,
        limit_s,
        &mut observe,
    );
    let finished = tokio::select! {
        done = live => Some(done),
        _ = tokio::signal::ctrl_c() => None,
    };
    view.abort();
    let _ = view.await;
    let interrupted = finished.is_none();
    let summary = match finished {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            shutdown.cancel();
            let _ = gateway.await;
            return Err(io::Error::other(format!("the simulated harvest stopped: {e}")));
        }
        None => None,
    };
    let counters = scrape(http).await.unwrap_or_default();
    let state = harvest.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let mut out = io::stdout().lock();
    writeln!(out)?;
    match &summary {
        Some(s) => writeln!(
            out,
            "Harvest: {} of B1 in {:.0} s (at {}x): {:.1} t harvested, {:.1} t delivered to the bin, \
             combines idle {:.1} % of their time (full, waiting for a cart).",
            hours(s.virtual_s),
            started.elapsed().as_secs_f64(),
            opts.speed,
            s.score.harvested_t,
            s.score.delivered_t,
            s.score.idle_fraction * 100.0
        )?,
        None => writeln!(
            out,
            "Stopped after {} of harvest: {:.1} t harvested, combines idle {:.1} %.",
            hours(state.t_s),
            state.harvested_t,
            state.idle_fraction * 100.0
        )?,
    }
    writeln!(
        out,
        "Readings: {:.0} received and written ahead to disk (MQTT {:.0}, LoRaWAN {:.0}, Modbus {:.0}).",
        counters.received.values().sum::<f64>(),
        counters.received.get("mqtt").unwrap_or(&0.0),
        counters.received.get("lorawan").unwrap_or(&0.0),
        counters.received.get("modbus").unwrap_or(&0.0),
    )?;
    let rollups = data_dir.join("rollups");
    writeln!(
        out,
        "Parquet files: {} (per window size and day), raw readings in {}.",
        rollups.display(),
        data_dir.join("recordings").display()
    )?;
    writeln!(
        out,
        "The gateway's config is {}, its log {}.",
        config_path.display(),
        opts.dir.join("gateway.log").display()
    )?;
    if !interrupted {
        if let Some(grpc) = grpc {
            writeln!(out, "\nAsk the gateway (in another terminal, while this one runs):")?;
            writeln!(
                out,
                "  cargo run --release -p fieldgate -- query stats --grpc {grpc} --last 1h --window 1m --metric fill_kg"
            )?;
            writeln!(out, "  cargo run --release -p fieldgate -- query summary --grpc {grpc} --last 1h")?;
        }
        writeln!(out, "Read the files with DuckDB (no gateway needed):")?;
        writeln!(out, "  {}", duckdb_line(&rollups))?;
        writeln!(out, "\nThe gateway keeps running for these queries; Ctrl-C stops it.")?;
        out.flush()?;
        drop(out);
        tokio::signal::ctrl_c().await?;
    }
    shutdown.cancel();
    let stopped = gateway.await.map_err(io::Error::other)?;
    match stopped {
        Ok(()) => {
            println!("Stopped cleanly: every reading is on disk in {}.", data_dir.display());
            Ok(())
        }
        Err(e) => Err(io::Error::other(format!("the gateway stopped with an error: {e}"))),
    }
}

/// A DuckDB command over the 10-second rollups (written within seconds of closing, so there
/// are some after the shortest demo): per device and metric, the readings, the range and
/// the mean.
pub(crate) fn duckdb_line(rollups: &Path) -> String {
    format!(
        "duckdb -c \"select device, metric, sum(count) as readings, round(min(min), 2) as min, \
         round(max(max), 2) as max, round(sum(mean * count) / sum(count), 2) as mean \
         from read_parquet('{}/window=10s/*/*.parquet') group by all order by all\"",
        rollups.display()
    )
}

/// Make `dir` the demo's: created, or cleared if an earlier demo made it.
fn prepare(dir: &Path) -> io::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            return Err(io::Error::other(format!(
                "{} exists and is not an earlier demo's directory: give another with --dir",
                dir.display()
            )));
        }
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(MARKER), "made by `field-sim demo`, which clears it at its next run\n")
}

/// `h:mm` of harvest time.
fn hours(s: f64) -> String {
    let m = (s / 60.0).round() as u64;
    format!("{}:{:02} h", m / 60, m % 60)
}

/// The live view: redrawn every second on a terminal, a line every 10 s otherwise.
async fn show(
    opts: Options,
    http: SocketAddr,
    fleet: Option<fieldgate::coordination::FleetView>,
    harvest: Arc<Mutex<Harvest>>,
    started: Instant,
) {
    let terminal = io::stdout().is_terminal();
    let period = if terminal { Duration::from_secs(1) } else { Duration::from_secs(10) };
    let mut ticks = tokio::time::interval(period);
    let mut before: Option<(Instant, Counters)> = None;
    let mut drawn = 0;
    println!(
        "fieldgate demo: the B1 harvest (4 combines, 2 carts, 3 trucks) at {}x real time for {}, \
         data in {}. Ctrl-C stops it.",
        opts.speed,
        humantime::format_duration(opts.duration),
        opts.dir.display()
    );
    loop {
        ticks.tick().await;
        let Ok(now) = scrape(http).await else { continue };
        let at = Instant::now();
        let rates: Vec<(&str, f64)> = ["mqtt", "lorawan", "modbus"]
            .into_iter()
            .map(|p| {
                let rate = before.as_ref().map_or(0.0, |(t, c)| {
                    let dt = at.duration_since(*t).as_secs_f64().max(1e-3);
                    (now.received.get(p).unwrap_or(&0.0) - c.received.get(p).unwrap_or(&0.0)) / dt
                });
                (p, rate)
            })
            .collect();
        before = Some((at, now.clone()));
        let h = harvest.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let limit = opts.duration.as_secs_f64() * opts.speed;
        let done = (started.elapsed().as_secs_f64() / opts.duration.as_secs_f64()).min(1.0);
        let bar: String = (0..30).map(|i| if (i as f64) < done * 30.0 { '#' } else { '.' }).collect();
        let mut lines = vec![
            format!(
                "harvest   [{bar}] {} of {}: {:.1} t harvested, {:.1} t in the bin",
                hours(h.t_s),
                hours(limit),
                h.harvested_t,
                h.delivered_t
            ),
            format!(
                "readings  {}   ({:.0} stored)",
                rates.iter().map(|(p, r)| format!("{p} {r:.0}/s")).collect::<Vec<_>>().join("   "),
                now.stored
            ),
            format!(
                "combines  idle {:.1} % of their time so far (full, no cart yet)",
                h.idle_fraction * 100.0
            ),
        ];
        lines.extend(plan(fleet.as_ref(), opts.speed));
        if terminal {
            let mut out = io::stdout().lock();
            if drawn > 0 {
                // Up to the first line drawn last time, and clear below.
                let _ = write!(out, "\x1b[{drawn}F\x1b[J");
            }
            for l in &lines {
                let _ = writeln!(out, "{l}");
            }
            let _ = out.flush();
            drawn = lines.len();
        } else {
            println!("{}", lines[..3].join(" | "));
        }
    }
}

/// The dispatcher's current assignments, one line each, times in harvest minutes.
fn plan(fleet: Option<&fieldgate::coordination::FleetView>, speed: f64) -> Vec<String> {
    let Some(f) = fleet.and_then(|f| f.get()) else {
        return vec!["plan      (waiting for the first plan)".into()];
    };
    let now = Timestamp::now();
    let mut lines: Vec<String> = f
        .assignments
        .iter()
        .map(|a| {
            let (task, target) = a.instruction.as_ref().map_or(("?".to_owned(), String::new()), |i| {
                let task = fieldgate_proto::v1::Task::try_from(i.task).map_or_else(
                    |_| "?".to_owned(),
                    |t| t.as_str_name().trim_start_matches("TASK_").to_ascii_lowercase(),
                );
                (task, i.target.clone())
            });
            let eta = a.eta.as_ref().map_or(String::new(), |e| {
                let at = Timestamp::from_nanos(e.seconds * 1_000_000_000 + i64::from(e.nanos));
                let min = at.duration_since(now).as_secs_f64() * speed / 60.0;
                if min >= 0.5 { format!(", there in {min:.0} min") } else { String::new() }
            });
            format!("plan      {:<8} {task} {target}{eta}", a.device)
        })
        .collect();
    lines.extend(f.warnings.iter().map(|w| format!("warning   {w}")));
    if lines.is_empty() {
        lines.push("plan      nothing to do yet".into());
    }
    lines
}

/// The gateway's readings counters, from its `/metrics` on loopback.
async fn scrape(http: SocketAddr) -> io::Result<Counters> {
    let mut stream = tokio::net::TcpStream::connect(http).await?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    let mut c = Counters::default();
    for line in body.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        if let Some(rest) = name.strip_prefix("fieldgate_readings_received_total{source=\"") {
            c.received.insert(rest.trim_end_matches("\"}").to_owned(), value);
        } else if name == "fieldgate_store_readings_total{outcome=\"aggregated\"}" {
            c.stored = value;
        }
    }
    Ok(c)
}
