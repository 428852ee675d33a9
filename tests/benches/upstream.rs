//! Upstream forwarding throughput: a backlog of 1-minute rollups in the outbox (as a day
//! offline leaves it) drained by the forwarder into a real collector process over loopback,
//! through a relay that counts the bytes on the wire.
//!
//! Prints rollup rows per second from the first byte to the last acknowledgement, and bytes
//! on the wire per row (gateway to collector, TLS off, gzip as configured), next to the
//! outbox's own bytes per row before compression.
//!
//! Run: `cargo build --release --bins && cargo bench -p fieldgate-tests --bench upstream`
//! (`FG_BENCH_DEVICES` and `FG_BENCH_MINUTES` size the backlog; `FG_BENCH_GZIP=0` turns
//! compression off).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark binary

use fieldgate::upstream::{UpstreamMetrics, UpstreamSettings};
use fieldgate_proto::{DeviceId, Metric};
use fieldgate_store::Outbox;
use fieldgate_store::window::Rollup;
use fieldgate_tests::{GatewayProcess, bench_result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MIN: i64 = 60_000_000_000;
/// 2026-11-24T00:00:00Z.
const DAY: i64 = 1_763_942_400_000_000_000;
const METRICS: usize = 10;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A small deterministic generator (xorshift), so runs are comparable.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// One minute of rollups for the fleet: six readings a window at a sensor's 0.1 resolution,
/// each series a random walk with noise on every reading, and reading times that jitter by
/// milliseconds, as a field's do. `levels` carries each series' level from minute to minute.
fn minute(
    devices: &[DeviceId],
    metrics: &[Metric],
    m: i64,
    levels: &mut [f64],
    rng: &mut u64,
) -> Vec<Rollup> {
    let mut rows = Vec::with_capacity(devices.len() * metrics.len());
    for (d, device) in devices.iter().enumerate() {
        for (k, metric) in metrics.iter().enumerate() {
            let level = &mut levels[d * metrics.len() + k];
            let mut values = [0.0; 6];
            for v in &mut values {
                *level += (next(rng) % 11) as f64 * 0.1 - 0.5;
                let noise = (next(rng) % 5) as f64 * 0.1 - 0.2;
                *v = ((*level + noise) * 10.0).round() / 10.0;
            }
            let start = DAY + m * MIN;
            let jitter = |rng: &mut u64| (next(rng) % 2_000) as i64 * 1_000_000;
            rows.push(Rollup {
                device: device.clone(),
                metric: metric.clone(),
                window_ns: MIN,
                start,
                count: 6,
                min: values.iter().copied().fold(f64::INFINITY, f64::min),
                max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                sum: values.iter().sum(),
                first: values[0],
                last: values[5],
                first_ts: start + 3_000_000_000 + jitter(rng),
                last_ts: start + 53_000_000_000 + jitter(rng),
            });
        }
    }
    rows
}

/// A TCP relay from `listen` to `to`, counting the bytes that go towards `to`.
async fn relay(listener: tokio::net::TcpListener, to: SocketAddr, up: Arc<AtomicU64>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else { return };
        let up = Arc::clone(&up);
        tokio::spawn(async move {
            let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else { return };
            let (mut ri, mut wi) = inbound.split();
            let (mut ro, mut wo) = outbound.split();
            let forward = async {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let n = match ri.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    up.fetch_add(n as u64, Ordering::Relaxed);
                    if wo.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut wo).await;
            };
            let back = tokio::io::copy(&mut ro, &mut wi);
            let _ = tokio::join!(forward, back);
        });
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (n_devices, minutes) = (env("FG_BENCH_DEVICES", 1000), env("FG_BENCH_MINUTES", 120) as i64);
    let gzip = env("FG_BENCH_GZIP", 1) != 0;
    let dir = tempfile::tempdir().unwrap();
    let gw = dir.path().join("gateway");
    let devices: Vec<DeviceId> =
        (0..n_devices).map(|d| DeviceId::new(&format!("combine-{d:04}")).unwrap()).collect();
    let metrics: Vec<Metric> = [
        "tank_pct",
        "yield_t_ha",
        "moisture_pct",
        "speed_kmh",
        "fuel_l",
        "rotor_rpm",
        "engine_c",
        "loss_pct",
        "header_m",
        "grain_t",
    ]
    .iter()
    .take(METRICS)
    .map(|m| Metric::new(m).unwrap())
    .collect();

    // The backlog: one flush a minute, written as the store writes it (all committed).
    let (mut outbox, _) = Outbox::open(&gw, 64 << 30, 0).unwrap();
    let mut rows = 0u64;
    let (mut levels, mut rng) = (vec![50.0; n_devices * METRICS], 0x9e37_79b9_7f4a_7c15_u64);
    for m in 0..minutes {
        let r = minute(&devices, &metrics, m, &mut levels, &mut rng);
        rows += r.len() as u64;
        outbox.write(m as u64 + 1, &[(MIN, &r)]).unwrap();
    }
    let (disk, batches) = outbox.usage();
    println!(
        "backlog: {rows} rows of 1 min rollups ({n_devices} devices x {METRICS} metrics x {minutes} min) in {batches} batches, {:.1} bytes/row in the outbox",
        disk as f64 / rows as f64
    );

    let collector_port = fieldgate_tests::free_port();
    let collector_addr: SocketAddr = format!("127.0.0.1:{collector_port}").parse().unwrap();
    let collector_dir = dir.path().join("collector");
    let mut collector = GatewayProcess::spawn(&[
        "collector",
        "--listen",
        &collector_addr.to_string(),
        "--data-dir",
        collector_dir.to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
    ]);
    collector.wait_for("collector listening");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = listener.local_addr().unwrap();
    let wire = Arc::new(AtomicU64::new(0));
    tokio::spawn(relay(listener, collector_addr, Arc::clone(&wire)));

    let settings = UpstreamSettings {
        endpoint: format!("http://{relay_addr}"),
        gateway_id: "bench-gw".into(),
        token: None,
        tls: None,
        max_in_flight: 8,
        max_rate: 0,
        compression: gzip,
        keepalive: Duration::from_secs(20),
        keepalive_timeout: Duration::from_secs(10),
        ack_timeout: Duration::from_secs(60),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_secs(1),
    };
    let outbox = Arc::new(std::sync::Mutex::new(outbox));
    let (_committed_tx, committed) = tokio::sync::watch::channel(minutes as u64);
    let (link, _link_rx) =
        tokio::sync::watch::channel(fieldgate_adapters::LinkState::Connecting(String::new()));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let metrics_ = UpstreamMetrics::default();
    let started = Instant::now();
    let forwarder = tokio::spawn(fieldgate::upstream::run(
        settings,
        "bench".into(),
        Arc::clone(&outbox),
        committed,
        metrics_.clone(),
        link,
        shutdown.clone(),
    ));
    // The outbox empties as acknowledgements arrive; its count is the event waited for.
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while outbox.lock().unwrap().usage().1 > 0 {
        tick.tick().await;
        assert!(started.elapsed() < Duration::from_secs(1800), "the backlog did not drain");
    }
    let elapsed = started.elapsed().as_secs_f64();
    shutdown.cancel();
    forwarder.await.unwrap();
    let wire = wire.load(Ordering::Relaxed);
    println!(
        "forwarded {rows} rows in {elapsed:.2} s: {:.0} rows/s; {:.1} bytes/row on the wire ({}), {:.1} MiB in all; {} reconnects",
        rows as f64 / elapsed,
        wire as f64 / rows as f64,
        if gzip { "gzip" } else { "no compression" },
        wire as f64 / (1 << 20) as f64,
        metrics_.connects.get().saturating_sub(1),
    );
    bench_result(
        &format!(
            "upstream: a backlog of {rows} rows of 1-minute rollups drained by the forwarder into a `fieldgate collector` over loopback ({})",
            if gzip { "gzip" } else { "no compression" }
        ),
        &format!(
            "{:.0} rows/s (target 100,000), {:.1} bytes/row on the wire (target 20)",
            rows as f64 / elapsed,
            wire as f64 / rows as f64
        ),
    );
    collector.stop_cleanly();
}
