//! MQTT throughput: messages/s from external QoS 1 publishers through a broker into the
//! store, and the gateway's peak memory.
//!
//! Three runs on the same machine, same messages (JSON with a timestamp, 20 devices):
//! 1. mosquitto to a bare subscriber that does nothing but acknowledge: what the broker can
//!    deliver, the ceiling for 2;
//! 2. mosquitto to the gateway (`[mqtt.external]`), which acknowledges each message once durable;
//! 3. the gateway's embedded broker, where the publishers' PUBACKs themselves wait for the WAL.
//!
//! Run: `cargo build --release -p fieldgate && cargo bench -p fieldgate-tests --bench mqtt`
//! (`FG_BENCH_MESSAGES` sets the count per run; mosquitto must be installed, as `.ci/run` does).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark binary

use fieldgate_tests::{GatewayProcess, Mosquitto, bench_result, rss_mib, wait_metric, write_config};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::time::{Duration, Instant};

const PUBLISHERS: usize = 4;
const DEVICES: usize = 20;
/// 2026-01-01T00:00:00Z in milliseconds.
const BASE_MS: u64 = 1_767_225_600_000;

fn messages(n: usize, publisher: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let device = publisher * (DEVICES / PUBLISHERS) + i % (DEVICES / PUBLISHERS);
            let ts = BASE_MS + (i / (DEVICES / PUBLISHERS)) as u64 * 100;
            (
                format!("fleet/dev-{device}/telemetry"),
                format!(r#"{{"ts": {ts}, "fill_kg": {i}}}"#).into_bytes(),
            )
        })
        .collect()
}

/// Publish `n` messages from each of [`PUBLISHERS`] clients at QoS 1 (100 in flight each) and
/// return once every one was acknowledged.
async fn publish(port: u16, n: usize) {
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let mut opts = MqttOptions::new(format!("bench-pub-{p}"), "127.0.0.1", port);
        opts.set_inflight(100).set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let batch = messages(n, p);
        tasks.push(tokio::spawn(async move {
            let sender = tokio::spawn(async move {
                for (topic, payload) in batch {
                    client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
                }
                client
            });
            let mut acked = 0;
            while acked < n {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("publisher {p}: {e}"),
                }
            }
            drop(sender.await.unwrap());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A subscriber that only acknowledges; returns when it has `n` messages.
async fn bare_subscriber(port: u16, n: usize, ready: tokio::sync::oneshot::Sender<()>) {
    let mut opts = MqttOptions::new("bench-bare", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    client.subscribe("fleet/+/telemetry", QoS::AtLeastOnce).await.unwrap();
    let mut ready = Some(ready);
    let mut got = 0;
    while got < n {
        match eventloop.poll().await.unwrap() {
            Event::Incoming(Packet::SubAck(_)) => {
                ready.take().map(|r| r.send(()));
            }
            Event::Incoming(Packet::Publish(_)) => got += 1,
            _ => {}
        }
    }
}

fn gateway_config(dir: &std::path::Path, mqtt: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!("{mqtt}\n[[mqtt.mapping]]\ntopic = \"fleet/{{device}}/telemetry\"\ntimestamp = \"ts\"\n"),
    )
}

/// Wait until the gateway has received `n` MQTT readings (the tests' metric wait, which polls
/// `/metrics` with a deadline).
async fn received(addr: std::net::SocketAddr, n: usize) {
    let prefix = "fieldgate_readings_received_total{source=\"mqtt\"}";
    tokio::task::spawn_blocking(move || wait_metric(addr, prefix, n as f64)).await.unwrap();
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let per_publisher: usize =
        std::env::var("FG_BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let total = per_publisher * PUBLISHERS;
    println!("{PUBLISHERS} QoS 1 publishers x {per_publisher} messages = {total} per run, {DEVICES} devices");

    // 1. mosquitto to a subscriber that does nothing.
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let sub = tokio::spawn(bare_subscriber(broker.port, total, ready_tx));
    ready.await.unwrap();
    let t0 = Instant::now();
    publish(broker.port, per_publisher).await;
    sub.await.unwrap();
    let bare = rate(total, t0.elapsed());
    println!("mosquitto -> bare subscriber:        {bare:>9.0} msg/s");
    drop(broker);

    // 2. mosquitto to the gateway.
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let section = format!("[mqtt.external]\nhost = \"127.0.0.1\"\nport = {}\n", broker.port);
    let config = gateway_config(dir.path(), &section);
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let addr = gw.wait_started();
    gw.wait_for("mqtt subscribed");
    let t0 = Instant::now();
    publish(broker.port, per_publisher).await;
    received(addr, total).await;
    let through = rate(total, t0.elapsed());
    let rss_external = rss_mib(gw.pid(), "VmHWM:");
    println!(
        "mosquitto -> fieldgate -> store:     {through:>9.0} msg/s ({:.0} % of bare), peak RSS {rss_external:.1} MiB",
        100.0 * through / bare
    );
    drop(gw);
    drop(broker);

    // 3. the embedded broker: acknowledged to the publishers once durable.
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config(dir.path(), "[mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n");
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    gw.wait_started();
    let port = gw.wait_broker().port();
    let t0 = Instant::now();
    publish(port, per_publisher).await;
    let embedded = rate(total, t0.elapsed());
    let rss_embedded = rss_mib(gw.pid(), "VmHWM:");
    println!("embedded broker -> store (durable):  {embedded:>9.0} msg/s, peak RSS {rss_embedded:.1} MiB");
    let run = format!("{PUBLISHERS} QoS 1 publishers, {total} JSON messages, {DEVICES} devices");
    bench_result(
        &format!("MQTT: {run}, mosquitto to a subscriber that only acknowledges (the ceiling)"),
        &format!("{bare:.0} msg/s"),
    );
    bench_result(
        &format!(
            "MQTT: {run}, mosquitto to fieldgate (`[mqtt.external]`, PUBACK after the WAL) into the store"
        ),
        &format!(
            "{through:.0} msg/s ({:.0} % of the ceiling in the same run), peak RSS {rss_external:.1} MiB",
            100.0 * through / bare
        ),
    );
    bench_result(
        &format!("MQTT: {run}, through the embedded broker, each PUBACK after the WAL"),
        &format!("{embedded:.0} msg/s, peak RSS {rss_embedded:.1} MiB"),
    );
}
