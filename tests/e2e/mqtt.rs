//! MQTT against a real mosquitto: messages published by an independent client reach the
//! rollups exactly, bad input is counted per reason while the gateway keeps going, and the
//! gateway resumes by itself after the broker restarts or after it was killed itself.

use fieldgate_tests::{
    GatewayProcess, Mosquitto, metric, mqtt_publish, rollup_rows, wait_metric, write_config,
};
use nix::sys::signal::Signal;
use std::path::Path;

/// 2026-01-01T00:00:00Z in milliseconds.
const BASE_MS: i64 = 1_767_225_600_000;

fn config(dir: &Path, broker: &Mosquitto) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"
[store]
windows = ["1m"]
allowed_lateness = "2s"

[mqtt]
host = "127.0.0.1"
port = {}
reconnect_min = "50ms"
reconnect_max = "500ms"

[[mqtt.mapping]]
topic = "fleet/{{device}}/telemetry"
timestamp = "ts"

[[mqtt.mapping]]
topic = "sensors/{{device}}/{{metric}}"
format = "number"
"#,
            broker.port
        ),
    )
}

/// Message `i` of device `dev-{i % 5}`: one reading, one second after the previous one of
/// its device, value `i`.
fn message(i: u64) -> (String, String) {
    let device = i % 5;
    let ts = BASE_MS + (i / 5) as i64 * 1000;
    (format!("fleet/dev-{device}/telemetry"), format!(r#"{{"ts": {ts}, "fill_kg": {i}}}"#))
}

/// Publish messages `range` in order.
fn publish(broker: &Mosquitto, range: std::ops::Range<u64>) {
    mqtt_publish(broker.port, &range.map(message).collect::<Vec<_>>());
}

/// One message per device a day later, closing every window before it.
fn publish_closers(broker: &Mosquitto) {
    for device in 0..5 {
        let line = format!(r#"{{"ts": {}, "fill_kg": 0}}"#, BASE_MS + 86_400_000);
        broker.publish_lines(&format!("fleet/dev-{device}/telemetry"), &[line]);
    }
}

/// Messages `0..n` are each counted exactly once in the 1-minute rollups.
fn assert_rollups_hold(data: &Path, n: u64) {
    let rows = rollup_rows(data, "1m");
    for device in 0..5 {
        let name = format!("dev-{device}");
        let (count, sum) = rows
            .iter()
            .filter(|r| r.0 == name && r.1 == "fill_kg")
            .fold((0, 0.0), |(c, s), r| (c + r.3, s + r.4));
        let expected: Vec<u64> = (0..n).filter(|i| i % 5 == device).collect();
        assert_eq!((count, sum), (expected.len() as u64, expected.iter().sum::<u64>() as f64), "{name}");
    }
}

const RECEIVED: &str = "fieldgate_readings_received_total{source=\"mqtt\"}";

#[test]
fn every_published_message_reaches_the_rollups_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut gw = GatewayProcess::spawn(&["run", "--config", config(dir.path(), &broker).to_str().unwrap()]);
    let addr = gw.wait_started();
    gw.wait_for("mqtt subscribed");
    const N: u64 = 2000;
    publish(&broker, 0..N);
    publish_closers(&broker);
    wait_metric(addr, RECEIVED, (N + 5) as f64);
    assert_eq!(metric(addr, "fieldgate_mqtt_connected"), Some(1.0));
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit().code(), Some(0), "{}", gw.log());
    assert_rollups_hold(&dir.path().join("data"), N);
}

#[test]
fn bad_input_is_counted_per_reason_and_nothing_else_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut gw = GatewayProcess::spawn(&["run", "--config", config(dir.path(), &broker).to_str().unwrap()]);
    let addr = gw.wait_started();
    gw.wait_for("mqtt subscribed");
    let bad: Vec<(&str, &str, &str)> = vec![
        ("fleet/dev-1/telemetry", "{not json", "not_json_object"),
        ("fleet/dev-1/telemetry", r#"{"ts": 1767225600000, "state": "idle"}"#, "no_numeric_fields"),
        ("fleet/dev-1/telemetry", r#"{"fill_kg": 3}"#, "bad_timestamp"),
        ("fleet/dev-1/telemetry", r#"{"ts": "yesterday", "fill_kg": 3}"#, "bad_timestamp"),
        ("sensors/probe-1/moisture", "wet", "not_numeric"),
        ("sensors/probe 1/moisture", "3", "bad_device"),
    ];
    for (topic, payload, _) in &bad {
        broker.publish_lines(topic, &[(*payload).to_owned()]);
    }
    // A good message after the bad ones still arrives.
    broker.publish_lines("sensors/probe-1/moisture", &["31.5".to_owned()]);
    wait_metric(addr, RECEIVED, 1.0);
    for reason in ["not_json_object", "no_numeric_fields", "bad_timestamp", "not_numeric", "bad_device"] {
        let expected = bad.iter().filter(|b| b.2 == reason).count() as f64;
        let label = format!("fieldgate_inputs_rejected_total{{source=\"mqtt\",reason=\"{reason}\"}}");
        assert_eq!(wait_metric(addr, &label, expected), expected, "{reason}");
    }
    let (status, _, health) = fieldgate_tests::http_get(addr, "/healthz");
    assert_eq!(status, 200, "{health}");
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit().code(), Some(0), "{}", gw.log());
}

#[test]
fn the_gateway_resumes_by_itself_after_the_broker_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(dir.path());
    let mut gw = GatewayProcess::spawn(&["run", "--config", config(dir.path(), &broker).to_str().unwrap()]);
    let addr = gw.wait_started();
    gw.wait_for("mqtt subscribed");
    publish(&broker, 0..500);
    wait_metric(addr, RECEIVED, 500.0);

    // The broker crashes and comes back without its sessions (persistence is off).
    broker.restart();
    gw.wait_for("mqtt disconnected; will reconnect with backoff");
    gw.wait_for("mqtt subscribed");
    publish(&broker, 500..1000);
    publish_closers(&broker);
    wait_metric(addr, RECEIVED, 1005.0);
    assert!(metric(addr, "fieldgate_mqtt_reconnects_total").unwrap() >= 1.0);
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit().code(), Some(0), "{}", gw.log());
    assert_rollups_hold(&dir.path().join("data"), 1000);
}

#[test]
fn a_gateway_killed_mid_stream_loses_nothing_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let config = config(dir.path(), &broker);
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let addr = gw.wait_started();
    gw.wait_for("mqtt subscribed");
    const N: u64 = 20_000;
    let port = broker.port;
    let publisher = std::thread::spawn(move || mqtt_publish(port, &(0..N).map(message).collect::<Vec<_>>()));

    // Killed while the publisher keeps sending: the broker holds what the gateway did not ack.
    wait_metric(addr, RECEIVED, 1000.0);
    gw.signal(Signal::SIGKILL);
    gw.wait_exit();
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let addr = gw.wait_started();
    publisher.join().unwrap();
    publish_closers(&broker);
    // The broker delivers in order, so once this last, undecodable message was seen, every
    // message before it reached the gateway; SIGTERM then makes them durable before exiting.
    broker.publish_lines("fleet/dev-0/telemetry", &["end".to_owned()]);
    wait_metric(addr, "fieldgate_inputs_rejected_total{source=\"mqtt\",reason=\"not_json_object\"}", 1.0);
    let duplicates = metric(addr, "fieldgate_store_readings_total{outcome=\"duplicate\"}");
    eprintln!("redelivered and recognised after the kill: {duplicates:?}");
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit().code(), Some(0), "{}", gw.log());
    assert_rollups_hold(&dir.path().join("data"), N);
}
