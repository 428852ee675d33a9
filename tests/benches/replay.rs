//! Replay throughput: readings/s that `field-sim replay --as-fast-as-possible` pushes into a
//! gateway over MQTT (its embedded broker, each message acknowledged once durable).
//!
//! The recording: 1,000 devices × 10 metrics, one reading each every second for 60 s
//! (600,000 readings in 60,000 messages), as a JSON-lines export.
//!
//! Run: `cargo build --release --bins && cargo bench -p fieldgate-tests --bench replay`
//! (`FG_BENCH_SECONDS` sets the recorded span).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark binary

use fieldgate_tests::{GatewayProcess, bench_result, bin, rss_mib, write_config};
use std::io::Write;
use std::process::Command;

const DEVICES: usize = 1_000;
const METRICS: usize = 10;
/// 2026-08-01T00:00:00Z in nanoseconds.
const BASE_NS: i64 = 1_785_542_400_000_000_000;

fn main() {
    let seconds: usize = std::env::var("FG_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("recording.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&recording).unwrap());
    for s in 0..seconds {
        for d in 0..DEVICES {
            for m in 0..METRICS {
                let value = ((d * 31 + m * 7 + s) % 1000) as f64 / 10.0;
                let ts = BASE_NS + s as i64 * 1_000_000_000;
                writeln!(out, r#"{{"ts":{ts},"device":"dev-{d:04}","metric":"m{m}","value":{value}}}"#)
                    .unwrap();
            }
        }
    }
    out.flush().unwrap();
    drop(out);
    let readings = seconds * DEVICES * METRICS;

    let config = write_config(dir.path(), "");
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let broker = gw.wait_broker();
    gw.wait_started();
    let output = Command::new(bin("field-sim"))
        .args(["replay", "--recording", recording.to_str().unwrap(), "--config", config.to_str().unwrap()])
        .args(["--mqtt", &broker.to_string(), "--as-fast-as-possible"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).lines().last().unwrap()).unwrap();
    let rss = rss_mib(gw.pid(), "VmHWM:");
    gw.stop_cleanly();
    assert_eq!(summary["readings"].as_u64().unwrap() as usize, readings, "{summary}");
    assert_eq!(summary["acknowledged"], summary["messages"], "{summary}");
    println!(
        "replay: {readings} readings in {} messages, {:.2} s: {:.0} readings/s ({:.0} messages/s) into the gateway over MQTT, acknowledged after its WAL; gateway peak RSS {rss:.1} MiB",
        summary["messages"],
        summary["seconds"].as_f64().unwrap(),
        summary["readings_per_s"].as_f64().unwrap(),
        summary["messages"].as_f64().unwrap() / summary["seconds"].as_f64().unwrap(),
    );
    bench_result(
        &format!(
            "replay: a JSON-lines recording of {readings} readings replayed `--as-fast-as-possible` into the embedded broker, one reading set per message, each acknowledged after the WAL"
        ),
        &format!(
            "{:.0} readings/s ({:.0} messages/s; target 100,000 readings/s), gateway peak RSS {rss:.1} MiB",
            summary["readings_per_s"].as_f64().unwrap(),
            summary["messages"].as_f64().unwrap() / summary["seconds"].as_f64().unwrap(),
        ),
    );
}
