//! Record and replay: a field-sim harvest recorded by one gateway, replayed into a fresh one
//! as fast as it takes it, gives the same rollups.

use fieldgate_tests::{GatewayProcess, bin, rollup_stats, write_config};
use std::process::Command;

/// Start a gateway with `config` and replay `recording` into it with `pace` (and into its
/// LoRaWAN network server, when `lorawan`); the gateway (still running) and the replay's
/// summary.
fn replay_into(
    config: &std::path::Path,
    recording: &std::path::Path,
    pace: &str,
    lorawan: bool,
) -> (GatewayProcess, serde_json::Value) {
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let broker = gw.wait_broker();
    let mut args = vec!["--mqtt".to_owned(), broker.to_string(), pace.to_owned()];
    if lorawan {
        let server = gw.wait_for("lorawan network server listening")["addr"].as_str().unwrap().to_owned();
        args.extend(["--lorawan".to_owned(), server]);
    }
    gw.wait_started();
    let out = Command::new(bin("field-sim"))
        .args(["replay", "--recording", recording.to_str().unwrap(), "--config", config.to_str().unwrap()])
        .args(&args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    (gw, serde_json::from_str(stdout.lines().last().unwrap()).unwrap())
}

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
    let recording = recorded.path().join("data").join("recordings");
    let (mut gw, summary) = replay_into(&config, &recording, "--as-fast-as-possible", false);
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

/// field-sim's Modbus sensors, changing quickly: the ready line, and the gateway's device
/// sections for them.
fn modbus_sensors(dir: &std::path::Path) -> (std::process::Child, String) {
    use std::io::BufRead;
    let config = dir.join("sensors.toml");
    let mut child = Command::new(bin("field-sim"))
        .args([
            "modbus",
            "--bins",
            "1",
            "--tanks",
            "0",
            "--weather",
            "1",
            "--speed",
            "600",
            "--poll",
            "200ms",
        ])
        .arg("--gateway-config")
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("\"ready\":true"), "{line}");
    (child, std::fs::read_to_string(config).unwrap())
}

#[test]
fn recorded_modbus_values_are_served_again_and_polled_by_a_fresh_gateway() {
    let recorded = tempfile::tempdir().unwrap();
    let (mut sensors, devices) = modbus_sensors(recorded.path());
    // Only Modbus readings are recorded (the list form of `recordings`).
    let store = "[store]\nwindows = [\"1s\", \"1m\"]\nallowed_lateness = \"0s\"\n";
    let config = write_config(recorded.path(), &format!("{store}recordings = [\"modbus\"]\n\n{devices}"));
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let http = gw.wait_started();
    // 2 devices × 10 points, at least 10 polls each.
    fieldgate_tests::wait_metric(http, "fieldgate_modbus_points_total", 200.0);
    gw.stop_cleanly();
    sensors.kill().unwrap();
    sensors.wait().unwrap();
    let original = fieldgate_tests::recording_rows(&recorded.path().join("data"));
    assert!(original.len() >= 150, "{} readings recorded", original.len());

    // The fresh gateway polls the same devices at addresses field-sim replay will serve.
    let fresh = tempfile::tempdir().unwrap();
    let moved = |devices: &str| {
        let mut moved = devices.to_owned();
        for line in devices.lines().filter(|l| l.trim_start().starts_with("tcp = ")) {
            moved = moved.replace(line, &format!("tcp = \"127.0.0.1:{}\"", fieldgate_tests::free_port()));
        }
        moved
    };
    let config = write_config(fresh.path(), &format!("[store]\nrecordings = true\n\n{}", moved(&devices)));
    let recording = recorded.path().join("data").join("recordings");
    let (mut gw, summary) = replay_into(&config, &recording, "--speed=1", false);
    assert_eq!(summary["unsent"], serde_json::json!({}), "{summary}");
    assert_eq!(summary["readings"].as_u64().unwrap() as usize, original.len(), "{summary}");
    gw.stop_cleanly();

    // Every value the fresh gateway read is one that was recorded, and each metric's last
    // recorded value reached it (the replay holds the last values for a poll).
    let replayed = fieldgate_tests::recording_rows(&fresh.path().join("data"));
    assert!(!replayed.is_empty());
    for (device, metric, _, value) in &replayed {
        assert!(
            original.iter().any(|(d, m, _, v)| d == device && m == metric && v == value),
            "{device} {metric} = {value} was never recorded"
        );
    }
    let last = |rows: &[(String, String, i64, f64)], device: &str, metric: &str| {
        rows.iter().rev().find(|(d, m, ..)| d == device && m == metric).map(|r| r.3)
    };
    for (device, metric, ..) in &original {
        assert_eq!(last(&replayed, device, metric), last(&original, device, metric), "{device} {metric}");
    }

    // Given a clock (`[modbus.device.timestamp]`, here at an address the devices leave
    // free), the replay goes in lockstep with the gateway's polls: each recorded sample is
    // served with its time until the gateway has read it all. Polled ten times faster than
    // it was recorded, the fresh gateway stores the same readings at the same times, and so
    // the same windows.
    let clock = "\n[modbus.device.timestamp]\ntable = \"input_register\"\naddress = 9000\ntype = \"u64\"\n\
                 unit = \"ns\"\norder = \"CDAB\"\n";
    let clocked: String = devices
        .replace("poll = \"200ms\"", "poll = \"20ms\"")
        .split("[[modbus.device]]")
        .enumerate()
        .map(|(i, chunk)| if i == 0 { chunk.to_owned() } else { format!("[[modbus.device]]{chunk}{clock}") })
        .collect();
    assert_eq!(clocked.matches("[modbus.device.timestamp]").count(), 2, "{clocked}");
    let exact = tempfile::tempdir().unwrap();
    let config = write_config(exact.path(), &format!("{store}recordings = true\n\n{}", moved(&clocked)));
    let (mut gw, summary) = replay_into(&config, &recording, "--as-fast-as-possible", false);
    assert_eq!(summary["unsent"], serde_json::json!({}), "{summary}");
    assert_eq!(summary["warnings"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["readings"].as_u64().unwrap() as usize, original.len(), "{summary}");
    // The gateway read every sample; the last ones reach its store within a batch window
    // (polled readings not yet handed over when it stops are not stored: nobody was told).
    let received = "fieldgate_readings_received_total{source=\"modbus\"}";
    fieldgate_tests::wait_metric(gw.http_addr(), received, original.len() as f64);
    gw.stop_cleanly();
    let sorted = |mut rows: Vec<(String, String, i64, f64)>| {
        rows.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
        rows
    };
    let data = exact.path().join("data");
    assert_eq!(sorted(fieldgate_tests::recording_rows(&data)), sorted(original));
    let (before, after) = (rollup_stats(&recorded.path().join("data"), "1s"), rollup_stats(&data, "1s"));
    assert!(before.len() >= 20, "{} windows", before.len());
    assert_eq!(after.len(), before.len());
    for (a, b) in before.iter().zip(&after) {
        let exact = (&a.device, &a.metric, a.window_start, a.count, a.min, a.max, a.first, a.last);
        assert_eq!(exact, (&b.device, &b.metric, b.window_start, b.count, b.min, b.max, b.first, b.last));
        assert!((a.mean - b.mean).abs() <= 1e-9 * a.mean.abs().max(1.0), "{a:?} vs {b:?}");
    }
}

#[test]
fn recorded_lorawan_uplinks_replayed_by_simulated_devices_give_the_same_rollups() {
    use std::io::BufRead;
    let recorded = tempfile::tempdir().unwrap();
    // field-sim's soil probes (OTAA, Cayenne LPP): their gateway sections first.
    let probes = recorded.path().join("probes.toml");
    let status = Command::new(bin("field-sim"))
        .args(["lora", "--devices", "2", "--gateway-config"])
        .arg(&probes)
        .status()
        .unwrap();
    assert!(status.success());
    let probes = std::fs::read_to_string(&probes).unwrap();
    let lorawan = format!("[lorawan]\nlisten = \"127.0.0.1:0\"\ndedup_window = \"0s\"\n{probes}");
    // One-second windows: a few seconds of uplinks every 200 ms close several. No lateness
    // allowed: replayed as fast as possible, a burst of frames must still reach the store in
    // order.
    let store = "[store]\nwindows = [\"1s\", \"1m\"]\nallowed_lateness = \"0s\"\n";
    let config = write_config(recorded.path(), &format!("{store}recordings = [\"lorawan\"]\n\n{lorawan}"));
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let server = gw.wait_for("lorawan network server listening")["addr"].as_str().unwrap().to_owned();
    let http = gw.wait_started();
    let mut sim = Command::new(bin("field-sim"))
        .args(["lora", "--devices", "2", "--concentrators", "1", "--interval", "200ms", "--gateway", &server])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kept open while it runs: it prints a line per downlink, and a closed pipe would stop it.
    let mut out = std::io::BufReader::new(sim.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("\"joined\":2"), "{line}");
    fieldgate_tests::wait_metric(http, "fieldgate_lorawan_uplinks_total", 60.0);
    sim.kill().unwrap();
    sim.wait().unwrap();
    drop(out);
    gw.stop_cleanly();
    let original = fieldgate_tests::recording_rows(&recorded.path().join("data"));
    // The devices' own readings; the link figures (RSSI, SNR, receivers) are the new gateway's.
    let payload = |mut rows: Vec<(String, String, i64, f64)>| {
        rows.retain(|r| !r.1.starts_with("lora_"));
        rows.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
        rows
    };
    let rollups = |data: &std::path::Path| {
        let mut r = rollup_stats(data, "1s");
        r.retain(|s| !s.metric.starts_with("lora_"));
        r
    };
    let original_rollups = rollups(&recorded.path().join("data"));
    let sent = payload(original);
    assert!(sent.len() >= 60, "{} payload readings recorded", sent.len());
    assert!(original_rollups.len() >= 4, "{original_rollups:?}");

    // A fresh gateway with the same devices; the replay joins them anew, and its forwarder
    // reports each uplink as heard at its recorded time (GPS time).
    let fresh = tempfile::tempdir().unwrap();
    let config = write_config(fresh.path(), &format!("{store}recordings = true\n\n{lorawan}"));
    let recording = recorded.path().join("data").join("recordings");
    let (mut gw, summary) = replay_into(&config, &recording, "--as-fast-as-possible", true);
    assert_eq!(summary["unsent"], serde_json::json!({}), "{summary}");
    assert_eq!(summary["lorawan_unacknowledged"], 0, "{summary}");
    assert_eq!(summary["warnings"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["readings"].as_u64().unwrap() as usize, sent.len(), "{summary}");
    gw.stop_cleanly();
    // The same readings at the same times, and so the same windows.
    assert_eq!(payload(fieldgate_tests::recording_rows(&fresh.path().join("data"))), sent);
    let replayed = rollups(&fresh.path().join("data"));
    assert_eq!(replayed.len(), original_rollups.len());
    for (a, b) in original_rollups.iter().zip(&replayed) {
        let exact = (&a.device, &a.metric, a.window_start, a.count, a.min, a.max, a.first, a.last);
        assert_eq!(exact, (&b.device, &b.metric, b.window_start, b.count, b.min, b.max, b.first, b.last));
        assert!((a.mean - b.mean).abs() <= 1e-9 * a.mean.abs().max(1.0), "{a:?} vs {b:?}");
    }
}
