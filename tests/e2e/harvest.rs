//! Harvest coordination closed loop: field-sim's B1 harvest, live against a real gateway
//! process running the dispatcher (machines over MQTT, the carts' load cells over LoRaWAN
//! through a simulated packet forwarder); the carts must receive its instructions and act on
//! them (without instructions a simulated cart never moves, so every unload is one it was
//! told to do).

use fieldgate_tests::{GatewayProcess, bin, query_cli, write_config};
use std::process::Command;

#[test]
fn carts_follow_the_gateways_dispatch_over_mqtt() {
    let dir = tempfile::tempdir().unwrap();
    let speed = "40";
    let coordination = dir.path().join("coordination.toml");
    let status = Command::new(bin("field-sim"))
        .args(["run", "--scenario", "b1", "--speed", speed, "--lorawan", "127.0.0.1:0", "--gateway-config"])
        .arg(&coordination)
        .status()
        .unwrap();
    assert!(status.success());
    let coordination = std::fs::read_to_string(&coordination).unwrap();
    assert!(coordination.contains("role = \"cart\""), "{coordination}");
    let config = write_config(dir.path(), &coordination);
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let broker = gw.wait_broker();
    let lorawan = gw.wait_for("lorawan network server listening")["addr"].as_str().unwrap().to_owned();
    gw.wait_started();
    let grpc = gw.grpc_addr();

    // Twenty virtual minutes: long enough for every combine to need a cart at least once.
    let out = Command::new(bin("field-sim"))
        .args([
            "run",
            "--scenario",
            "b1",
            "--speed",
            speed,
            "--seed",
            "3",
            "--duration",
            "20m",
            "--lorawan",
            &lorawan,
        ])
        .arg("--mqtt")
        .arg(broker.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
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
    gw.stop_cleanly();
}
