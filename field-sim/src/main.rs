//! `field-sim`: simulated farm devices that speak the real protocols to a fieldgate gateway.
#![allow(clippy::print_stdout)]

mod demo;
mod lora_sim;
mod modbus;
mod sensors;

use clap::{Parser, Subcommand};
use fieldgate_adapters::modbus::Order;
use sensors::{Kind, Sensor};
use std::sync::Arc;

/// field-sim: simulated combines, carts, trucks, bins and sensors speaking MQTT, Modbus and
/// LoRaWAN to a fieldgate gateway, for tests, demos and scoring dispatch policies.
#[derive(Debug, Parser)]
#[command(name = "field-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// fieldgate at work in one command: a gateway (embedded MQTT broker, LoRaWAN network
    /// server, Modbus polling, the dispatcher) and the B1 harvest live against it over the real
    /// protocols, with a live view and a summary; the gateway then keeps running for queries
    /// until Ctrl-C.
    Demo {
        /// The demo's directory: the gateway's config, log and data. Cleared first if an
        /// earlier demo made it; any other non-empty directory is refused.
        #[arg(long, default_value = "fieldgate-demo")]
        dir: std::path::PathBuf,
        /// Harvest seconds per real second.
        #[arg(long, default_value_t = 60.0)]
        speed: f64,
        /// How long the harvest runs, in real time.
        #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The dispatch policy: dispatcher, nearest_idle or stop_and_call.
        #[arg(long, default_value = "dispatcher")]
        policy: String,
    },
    /// Serve simulated Modbus TCP sensors (grain bins, tanks, weather stations), one port each,
    /// with byte orders that vary by device. Prints one JSON line when every server listens
    /// (ids, addresses, orders, and the values at that moment), then serves until killed.
    Modbus {
        #[arg(long, default_value_t = 1)]
        bins: usize,
        #[arg(long, default_value_t = 1)]
        tanks: usize,
        #[arg(long, default_value_t = 1)]
        weather: usize,
        /// Address to listen on; each device gets its own port chosen by the OS.
        #[arg(long, default_value = "127.0.0.1")]
        listen: std::net::IpAddr,
        /// Virtual time per real second; 0 freezes the world (every read gives the same values).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write the gateway's `[[modbus.device]]` sections for these devices to this file.
        #[arg(long)]
        gateway_config: Option<std::path::PathBuf>,
        /// The poll interval written into that config.
        #[arg(long, default_value = "1s")]
        poll: String,
    },
    /// Simulated LoRaWAN soil probes (Cayenne LPP) that join a fieldgate gateway over the air
    /// through simulated packet forwarders and report every `--interval`. With
    /// `--gateway-config FILE`, write the gateway's `[[lorawan.device]]` sections and exit.
    Lora {
        /// The gateway's `[lorawan] listen` address.
        #[arg(long, default_value = "127.0.0.1:1700")]
        gateway: std::net::SocketAddr,
        #[arg(long, default_value_t = 5)]
        devices: usize,
        /// Simulated concentrators (every other frame is heard by two when there are two).
        #[arg(long, default_value_t = 2)]
        concentrators: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        gateway_config: Option<std::path::PathBuf>,
    },
    /// Score dispatch policies offline: run the harvest world with the gateway's coordination
    /// code in the loop, as fast as the CPU allows, over several seeds, and print the figures
    /// (mean ± standard deviation).
    Score {
        /// A built-in scenario (b1, cart-starved, long-haul) or a scenario file.
        #[arg(long, default_value = "b1")]
        scenario: String,
        /// stop_and_call, nearest_idle, dispatcher, or all.
        #[arg(long, default_value = "all")]
        policy: String,
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// The first seed; the run uses `seed..seed + seeds`.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print every instruction and every late unload (with what each machine was doing)
        /// to stderr: to see why a combine waited.
        #[arg(long)]
        trace: bool,
        /// Hybrid replay: the combines follow this recorded harvest (a gateway's recordings
        /// directory, a Parquet file or a CSV / JSON-lines export of their telemetry), and the
        /// carts and trucks are simulated under the policy, so a recorded day scores any
        /// policy. The scenario gives the carts, trucks and distances.
        #[arg(long)]
        recording: Option<std::path::PathBuf>,
        /// How much faster than real time the recording was made: 1 for a farm's day, N for
        /// one made by `field-sim run --speed N`.
        #[arg(long, default_value_t = 1.0, requires = "recording")]
        recorded_speed: f64,
    },
    /// Replay recorded readings into a gateway over the protocol they came by, with their
    /// original relative timing scaled by `--speed`, or as fast as the gateway takes them.
    /// Shows progress on stderr and prints a JSON summary: readings sent per device and
    /// protocol, and any it could not send, with the reason.
    Replay {
        /// A gateway's recordings directory (`DATA_DIR/recordings`), a Parquet file, or a
        /// CSV / JSON-lines export with ts, device, metric, value (docs/replay.md).
        #[arg(long)]
        recording: std::path::PathBuf,
        /// The config of the gateway replayed into: its MQTT mappings say how each device's
        /// readings travel.
        #[arg(long)]
        config: std::path::PathBuf,
        /// The gateway's MQTT broker (default: its `[mqtt.embedded] listen`).
        #[arg(long)]
        mqtt: Option<std::net::SocketAddr>,
        /// The gateway's LoRaWAN network server (default: its `[lorawan] listen`).
        #[arg(long)]
        lorawan: Option<std::net::SocketAddr>,
        /// Only readings at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only readings before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Only these devices (comma-separated).
        #[arg(long, value_delimiter = ',')]
        devices: Vec<String>,
        /// Recorded seconds per real second.
        #[arg(long, default_value_t = 1.0, conflicts_with = "as_fast_as_possible")]
        speed: f64,
        #[arg(long)]
        as_fast_as_possible: bool,
    },
    /// Run a harvest live against a gateway: machines publish telemetry over MQTT to its
    /// broker and follow the instructions it sends back; prints the score at the end. With
    /// `--gateway-config FILE`, write the gateway's `[coordination]` section for this run and
    /// exit.
    Run {
        #[arg(long, default_value = "b1")]
        scenario: String,
        /// The gateway's MQTT broker.
        #[arg(long, default_value = "127.0.0.1:1883")]
        mqtt: std::net::SocketAddr,
        /// The gateway's LoRaWAN network server (its `[lorawan] listen`): the carts' load
        /// cells send over LoRaWAN instead of MQTT. With `--gateway-config`, the address the
        /// written `[lorawan]` section listens on.
        #[arg(long)]
        lorawan: Option<std::net::SocketAddr>,
        /// Serve the farm's grain bin (filled by the trucks' deliveries) and a weather station
        /// over Modbus TCP, on this address and the next port. With `--gateway-config`, the
        /// addresses its `[[modbus.device]]` sections poll.
        #[arg(long)]
        modbus: Option<std::net::SocketAddr>,
        /// Virtual seconds per real second.
        #[arg(long, default_value_t = 10.0)]
        speed: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Stop after this much virtual time (default: the scenario's shift).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        #[arg(long)]
        gateway_config: Option<std::path::PathBuf>,
        /// The policy written into that config.
        #[arg(long, default_value = "dispatcher")]
        policy: String,
    },
}

fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    // A server and a connection per simulated device: more than the usual soft limit of 1024.
    if let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    match cli.command {
        Command::Replay {
            recording,
            config,
            mqtt,
            lorawan,
            from,
            to,
            devices,
            speed,
            as_fast_as_possible,
        } => replay(&recording, &config, mqtt, lorawan, from, to, &devices, speed, as_fast_as_possible),
        Command::Score { scenario, policy, seeds, seed, trace, recording, recorded_speed } => {
            score(&scenario, &policy, seeds, seed, trace, recording.as_deref().map(|r| (r, recorded_speed)))
        }
        Command::Run { scenario, mqtt, lorawan, modbus, speed, seed, duration, gateway_config, policy } => {
            let scenario =
                field_sim::harvest::scenario::Scenario::load(&scenario).map_err(std::io::Error::other)?;
            if !(speed.is_finite() && speed > 0.0) {
                return Err(std::io::Error::other(format!("--speed must be a positive number, got {speed}")));
            }
            if let Some(path) = gateway_config {
                let mut config = scenario.coordination_config(&policy, speed);
                if let Some(listen) = lorawan {
                    config.push_str(&field_sim::harvest::live::lorawan_config(&scenario, listen));
                }
                if let Some(addr) = modbus {
                    config.push_str(&modbus::gateway_config(&harvest_sensors(addr, seed), "1s"));
                }
                return std::fs::write(path, config);
            }
            let limit = duration.unwrap_or(scenario.shift).as_secs_f64();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let summary = runtime.block_on(async {
                let sensors = match modbus {
                    Some(addr) => harvest_sensors(addr, seed),
                    None => Vec::new(),
                };
                let clock = modbus::Clock::new(speed);
                for (device, addr) in &sensors {
                    let listener = tokio::net::TcpListener::bind(addr).await?;
                    tokio::spawn(modbus::serve(listener, device.clone(), clock));
                }
                let bin = sensors.first().map(|(d, _)| d.clone());
                // The bin starts the harvest empty and fills with the deliveries.
                let mut observe = |world: &field_sim::harvest::world::World| {
                    if let Some(bin) = &bin {
                        bin.fill_bin(world.delivered_kg);
                    }
                };
                field_sim::harvest::live::run(scenario, mqtt, lorawan, speed, seed, limit, &mut observe).await
            })?;
            print!("{}", field_sim::harvest::score::table("live run", std::slice::from_ref(&summary.score)));
            println!(
                "{}",
                serde_json::json!({
                    "virtual_s": summary.virtual_s,
                    "published": summary.published,
                    "instructions": summary.instructions,
                    "cart_instructions": summary.cart_instructions,
                    "unreadable": summary.unreadable,
                    "lora_uplinks": summary.lora_uplinks,
                    "lora_unacknowledged": summary.lora_unacknowledged,
                    "unloads": summary.score.lateness_s.len(),
                    "harvested_t": summary.score.harvested_t,
                    "delivered_t": summary.score.delivered_t,
                    "idle_fraction": summary.score.idle_fraction,
                })
            );
            Ok(())
        }
        Command::Demo { dir, speed, duration, seed, policy } => {
            if !(speed.is_finite() && speed > 0.0) {
                return Err(std::io::Error::other(format!("--speed must be a positive number, got {speed}")));
            }
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(demo::run(demo::Options { dir, speed, duration, seed, policy }))
        }
        Command::Modbus { bins, tanks, weather, listen, speed, seed, gateway_config, poll } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve_modbus(bins, tanks, weather, listen, speed, seed, gateway_config, &poll))
        }
        Command::Lora { gateway, devices, concentrators, interval, seed, gateway_config } => {
            if let Some(path) = gateway_config {
                return std::fs::write(path, lora_sim::gateway_config(devices, seed));
            }
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(lora_sim::run(gateway, devices, concentrators, interval, seed))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_modbus(
    bins: usize,
    tanks: usize,
    weather: usize,
    listen: std::net::IpAddr,
    speed: f64,
    seed: u64,
    config_out: Option<std::path::PathBuf>,
    poll: &str,
) -> std::io::Result<()> {
    let clock = modbus::Clock::new(speed);
    let kinds = std::iter::repeat_n(Kind::Bin, bins)
        .chain(std::iter::repeat_n(Kind::Tank, tanks))
        .chain(std::iter::repeat_n(Kind::Weather, weather));
    let mut devices = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, kind) in kinds.enumerate() {
        let id = format!("{}-{:04}", kind.name(), i + 1);
        let sensor = Sensor::new(id, kind, seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
        let device = Arc::new(modbus::Device::new(sensor, Order::ALL[i % Order::ALL.len()]));
        let listener = tokio::net::TcpListener::bind((listen, 0)).await?;
        let addr = listener.local_addr()?;
        tasks.spawn(modbus::serve(listener, device.clone(), clock));
        devices.push((device, addr));
    }
    if let Some(path) = config_out {
        std::fs::write(path, modbus::gateway_config(&devices, poll))?;
    }
    let t = clock.now();
    let list: Vec<serde_json::Value> = devices
        .iter()
        .map(|(d, addr)| {
            let values: serde_json::Map<String, serde_json::Value> = d
                .sensor
                .kind
                .metrics()
                .iter()
                .zip(d.sensor.values(t))
                .map(|(m, v)| ((*m).to_owned(), serde_json::json!(v)))
                .collect();
            serde_json::json!({"id": d.sensor.id, "addr": addr.to_string(), "order": d.order.as_str(), "values": values})
        })
        .collect();
    println!("{}", serde_json::json!({"ready": true, "devices": list}));
    while let Some(done) = tasks.join_next().await {
        done.map_err(std::io::Error::other)??;
    }
    Ok(())
}

fn score(
    scenario: &str,
    policy: &str,
    seeds: u64,
    first: u64,
    trace: bool,
    recording: Option<(&std::path::Path, f64)>,
) -> std::io::Result<()> {
    use field_sim::harvest::{scenario::Scenario, score};
    use fieldgate::coordination::PolicyKind;
    let scenario = Scenario::load(scenario).map_err(std::io::Error::other)?;
    let kinds: Vec<PolicyKind> = match policy {
        "all" => PolicyKind::ALL.to_vec(),
        name => vec![PolicyKind::parse(name).ok_or_else(|| {
            std::io::Error::other(format!(
                "`{name}` is not a policy: stop_and_call, nearest_idle, dispatcher, or all"
            ))
        })?],
    };
    println!("scenario {}: {}", scenario.name, scenario.description);
    let tracks = match recording {
        Some((path, recorded_speed)) => {
            if !(recorded_speed.is_finite() && recorded_speed > 0.0) {
                return Err(std::io::Error::other(format!(
                    "--recorded-speed must be positive, got {recorded_speed}"
                )));
            }
            let rows = field_sim::replay::input::read(path)?;
            let tracks = field_sim::harvest::track::tracks(&scenario, &rows, recorded_speed)
                .map_err(std::io::Error::other)?;
            println!(
                "hybrid replay of {}: {} combines follow their recorded day; carts and trucks are simulated",
                path.display(),
                tracks.len()
            );
            Some(std::sync::Arc::new(tracks))
        }
        None => None,
    };
    for kind in kinds {
        let started = std::time::Instant::now();
        let scores: Vec<score::Score> = (first..first + seeds)
            .map(|seed| {
                if trace {
                    eprintln!("{} seed {seed}:", kind.as_str());
                }
                let mut print = |line: String| {
                    if trace {
                        eprintln!("{line}");
                    }
                };
                match &tracks {
                    Some(tracks) => score::run_replayed(&scenario, kind, seed, tracks.clone(), &mut print),
                    None => score::run_traced(&scenario, kind, seed, &mut print),
                }
            })
            .collect();
        print!("{}", score::table(kind.as_str(), &scores));
        println!("  ({} simulated shifts in {:.1} s)", scores.len(), started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The harvest's farm sensors served over Modbus TCP: the grain bin at `addr` and the
/// weather station at the next port.
fn harvest_sensors(
    addr: std::net::SocketAddr,
    seed: u64,
) -> Vec<(Arc<modbus::Device>, std::net::SocketAddr)> {
    modbus::harvest_devices(seed)
        .into_iter()
        .enumerate()
        .map(|(i, d)| (d, std::net::SocketAddr::new(addr.ip(), addr.port() + i as u16)))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn replay(
    recording: &std::path::Path,
    config: &std::path::Path,
    mqtt: Option<std::net::SocketAddr>,
    lorawan: Option<std::net::SocketAddr>,
    from: Option<String>,
    to: Option<String>,
    devices: &[String],
    speed: f64,
    as_fast_as_possible: bool,
) -> std::io::Result<()> {
    use field_sim::replay::{self, Pace};
    use fieldgate_proto::Timestamp;
    let gateway = fieldgate::Config::load(config).map_err(|e| std::io::Error::other(e.to_string()))?;
    let broker = match (mqtt, gateway.mqtt.as_ref().map(|m| &m.broker)) {
        (Some(addr), _) => addr,
        (None, Some(fieldgate::config::MqttBroker::Embedded { listen, .. })) if listen.port() != 0 => *listen,
        _ => return Err(std::io::Error::other("give --mqtt: the config names no embedded broker address")),
    };
    let valid_speed = speed.is_finite() && speed > 0.0;
    if !as_fast_as_possible && !valid_speed {
        return Err(std::io::Error::other(format!("--speed must be a positive number, got {speed}")));
    }
    let time = |t: Option<String>, flag: &str| {
        t.map(|t| Timestamp::parse_rfc3339(&t).map_err(|e| std::io::Error::other(format!("{flag}: {e}"))))
            .transpose()
    };
    let (from, to) = (time(from, "--from")?, time(to, "--to")?);
    let mut rows = replay::input::read(recording)?;
    rows.retain(|r| {
        from.is_none_or(|f| r.ts >= f)
            && to.is_none_or(|t| r.ts < t)
            && (devices.is_empty() || devices.contains(&r.device))
    });
    let pace = if as_fast_as_possible { Pace::AsFastAsPossible } else { Pace::Speed(speed) };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // The network server: as the caller says, or where the config has it listen.
    let lorawan = gateway.lorawan.as_ref().and_then(|l| {
        let server = lorawan.or((l.listen.port() != 0).then_some(l.listen))?;
        Some((l, server))
    });
    let target =
        replay::Target { broker, mappings: replay::mappings(&gateway), buses: &gateway.modbus, lorawan };
    let summary = runtime.block_on(replay::replay(&rows, target, pace))?;
    println!("{}", serde_json::to_string(&summary).map_err(std::io::Error::other)?);
    Ok(())
}
