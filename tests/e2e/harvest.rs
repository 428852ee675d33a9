//! Harvest coordination closed loop: field-sim's B1 harvest, live against a real gateway
//! process running the dispatcher (machines over MQTT, the carts' load cells over LoRaWAN
//! through a simulated packet forwarder, the grain bin and a weather station over Modbus TCP);
//! the carts must receive its instructions and act on them (without instructions a simulated cart never moves, so every unload is one it was
//! told to do).

use fieldgate_tests::{GatewayProcess, bin, free_port, query_cli, write_config};
use std::process::Command;

#[test]
fn carts_follow_the_gateways_dispatch_over_mqtt() {
    let dir = tempfile::tempdir().unwrap();
    let speed = "60";
    // field-sim serves the bin and the weather station on two neighbouring ports.
    let modbus = loop {
        let port = free_port();
        if std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            break format!("127.0.0.1:{port}");
        }
    };
    let coordination = dir.path().join("coordination.toml");
    let status = Command::new(bin("field-sim"))
        .args(["run", "--scenario", "b1", "--speed", speed, "--lorawan", "127.0.0.1:0", "--modbus", &modbus])
        .arg("--gateway-config")
        .arg(&coordination)
        .status()
        .unwrap();
    assert!(status.success());
    let coordination = std::fs::read_to_string(&coordination).unwrap();
    assert!(coordination.contains("role = \"cart\""), "{coordination}");
    // Recordings on: the day is scored again below under another policy (hybrid replay).
    let config = write_config(dir.path(), &format!("[store]\nrecordings = true\n\n{coordination}"));
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let broker = gw.wait_broker();
    let lorawan = gw.wait_for("lorawan network server listening")["addr"].as_str().unwrap().to_owned();
    gw.wait_started();
    let grpc = gw.grpc_addr();

    // 45 virtual minutes: every combine needs a cart, and the first truck reaches the bin.
    let out = Command::new(bin("field-sim"))
        .args(["run", "--scenario", "b1", "--speed", speed, "--seed", "3", "--duration", "45m"])
        .args(["--lorawan", &lorawan, "--modbus", &modbus])
        .arg("--mqtt")
        .arg(broker.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    eprintln!("live harvest: {summary}");
    assert!(summary["cart_instructions"].as_u64().unwrap() >= 2, "{summary}");
    assert_eq!(summary["unreadable"], 0, "{summary}");
    // The load cells joined and every uplink was acknowledged; the dispatcher read their
    // weights (cart loads come from nowhere else).
    assert!(summary["lora_uplinks"].as_u64().unwrap() >= 100, "{summary}");
    assert_eq!(summary["lora_unacknowledged"], 0, "{summary}");
    // Carts only move when told: these unloads were the dispatcher's.
    assert!(summary["unloads"].as_u64().unwrap() >= 2, "{summary}\n{stdout}");
    assert!(summary["harvested_t"].as_f64().unwrap() > 20.0, "{summary}");

    // The plan is visible to people: the Fleet call lists the machines and the assignments.
    let (ok, fleet, err) = query_cli(grpc, None, &["fleet"]);
    assert!(ok, "{err}");
    for machine in ["combine-1", "combine-4", "cart-1", "cart-2", "truck-3"] {
        assert!(fleet.contains(machine), "{machine} missing:\n{fleet}");
    }
    let (ok, latest, err) = query_cli(grpc, None, &["latest", "--device", "cart-1-scale"]);
    assert!(ok && latest.contains("weight_kg"), "{err}\n{latest}");
    // The gateway polled the bin while the trucks filled it, and the weather station.
    let (ok, latest, err) = query_cli(grpc, None, &["latest", "--device", "bin-0001", "--format", "json"]);
    assert!(ok, "{err}");
    let latest: serde_json::Value = serde_json::from_str(&latest).unwrap();
    let tonnes = latest
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"] == "tonnes")
        .map(|r| r["value"].as_f64().unwrap());
    let delivered = summary["delivered_t"].as_f64().unwrap();
    assert!(delivered >= 20.0, "a truck reached the bin: {summary}");
    assert!(
        tonnes.is_some_and(|t| t > 0.0 && t <= delivered + 1e-6),
        "bin {tonnes:?} of {delivered} t: {latest}"
    );
    let (ok, weather, err) = query_cli(grpc, None, &["latest", "--device", "weather-0001"]);
    assert!(ok && weather.contains("wind_ms"), "{err}\n{weather}");
    gw.stop_cleanly();

    // The recorded day under the common practice: the combines follow their recorded tracks,
    // the carts and trucks are simulated under nearest_idle.
    let recording = dir.path().join("data").join("recordings");
    let out = Command::new(bin("field-sim"))
        .args([
            "score",
            "--scenario",
            "b1",
            "--policy",
            "nearest_idle",
            "--seeds",
            "2",
            "--recorded-speed",
            speed,
        ])
        .arg("--recording")
        .arg(&recording)
        .output()
        .unwrap();
    let scored = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{scored}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        scored.contains("hybrid replay of") && scored.contains("4 combines follow their recorded day"),
        "{scored}"
    );
    assert!(scored.contains("nearest_idle (2 seeds)"), "{scored}");
    let harvested: f64 = scored
        .lines()
        .find(|l| l.trim_start().starts_with("harvested"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no harvested line: {scored}"));
    // The same fields cut: what the recorded combines harvested, give or take the grain
    // still on the way when the recording ended.
    let live = summary["harvested_t"].as_f64().unwrap();
    assert!((harvested - live).abs() < 0.25 * live, "hybrid {harvested} t, live {live} t\n{scored}");
}
