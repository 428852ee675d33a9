//! Record and replay: a field-sim harvest recorded by one gateway, replayed into a fresh one
//! as fast as it takes it, gives the same rollups.

use fieldgate_tests::{GatewayProcess, bin, rollup_stats, write_config};
use std::process::Command;

#[test]
fn a_recorded_harvest_replayed_into_a_fresh_gateway_gives_the_same_rollups() {
    let recorded = tempfile::tempdir().unwrap();
    // Windows close as soon as a device's readings pass their end, so what both gateways
    // have stored by the end is the same set of closed windows.
    let store = "[store]\nwindows = [\"10s\", \"1m\"]\nallowed_lateness = \"0s\"\n";
    let config = write_config(recorded.path(), &format!("{store}recordings = true\n"));
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let broker = gw.wait_broker();
    gw.wait_started();
    // Ten minutes of B1 at 20 times real time: combines, carts and trucks publish telemetry
    // over MQTT (no dispatcher here, so only the combines move).
    let out = Command::new(bin("field-sim"))
        .args(["run", "--scenario", "b1", "--speed", "20", "--duration", "10m"])
        .args(["--mqtt", &broker.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    gw.stop_cleanly();
    let original = rollup_stats(&recorded.path().join("data"), "10s");
    assert!(original.len() > 40, "the harvest was recorded: {} rows", original.len());

    let fresh = tempfile::tempdir().unwrap();
    let config = write_config(fresh.path(), store);
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let broker = gw.wait_broker();
    gw.wait_started();
    let recording = recorded.path().join("data").join("recordings");
    let out = Command::new(bin("field-sim"))
        .args(["replay", "--recording", recording.to_str().unwrap(), "--config", config.to_str().unwrap()])
        .args(["--mqtt", &broker.to_string(), "--as-fast-as-possible"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["unsent"], serde_json::json!({}), "{summary}");
    assert_eq!(summary["acknowledged"], summary["messages"], "{summary}");
    assert_eq!(summary["warnings"], serde_json::json!([]), "{summary}");
    gw.stop_cleanly();

    let replayed = rollup_stats(&fresh.path().join("data"), "10s");
    let recorded_readings: usize =
        fieldgate_tests::parquet_batches(&recording).iter().map(|b| b.num_rows()).sum();
    assert_eq!(summary["readings"].as_u64().unwrap() as usize, recorded_readings, "{summary}");
    assert_eq!(replayed.len(), original.len());
    for (a, b) in original.iter().zip(&replayed) {
        let exact = (&a.device, &a.metric, a.window_start, a.count, a.min, a.max, a.first, a.last);
        assert_eq!(exact, (&b.device, &b.metric, b.window_start, b.count, b.min, b.max, b.first, b.last));
        assert!((a.mean - b.mean).abs() <= 1e-9 * a.mean.abs().max(1.0), "{a:?} vs {b:?}");
    }
}
