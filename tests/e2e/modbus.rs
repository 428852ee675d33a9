//! Modbus against pymodbus, an independent server: values of every type in every byte and
//! word order reach the rollups exactly, requests are coalesced, exceptions become bad
//! readings and back a device off while its neighbours go on, the gateway reconnects after the
//! server restarts, writes land, and on an RTU line a silent unit does not stall the other.

use fieldgate_proto::v1;
use fieldgate_tests::{
    GatewayProcess, ModbusServer, SerialPair, metric, rollup_rows, send_command, wait_health, wait_metric,
    write_config,
};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;

/// One point: how the server holds it and how the gateway is told to read it.
struct P {
    metric: &'static str,
    table: &'static str,
    address: u16,
    /// The type the server encodes `raw` as.
    server_type: &'static str,
    /// The gateway's `type` (differs for `bit`).
    gateway_type: &'static str,
    order: &'static str,
    raw: f64,
    /// Extra TOML for the gateway (scale, bit, registers, ...).
    extra: &'static str,
    /// What the gateway must report.
    expected: f64,
    registers: u16,
}

fn p(
    metric: &'static str,
    table: &'static str,
    address: u16,
    ty: &'static str,
    order: &'static str,
    raw: f64,
) -> P {
    P {
        metric,
        table,
        address,
        server_type: ty,
        gateway_type: ty,
        order,
        raw,
        extra: "",
        expected: raw,
        registers: 0,
    }
}

/// Every register type in every order, plus scaling, bits, strings, coils and inputs. Values
/// are exact in binary floating point, so sums of them are exact too.
fn points() -> Vec<P> {
    let mut v = Vec::new();
    let orders = ["ABCD", "BADC", "CDAB", "DCBA"];
    let names: [[&str; 6]; 4] = [
        ["u32_abcd", "i32_abcd", "f32_abcd", "u64_abcd", "i64_abcd", "f64_abcd"],
        ["u32_badc", "i32_badc", "f32_badc", "u64_badc", "i64_badc", "f64_badc"],
        ["u32_cdab", "i32_cdab", "f32_cdab", "u64_cdab", "i64_cdab", "f64_cdab"],
        ["u32_dcba", "i32_dcba", "f32_dcba", "u64_dcba", "i64_dcba", "f64_dcba"],
    ];
    for (k, order) in orders.into_iter().enumerate() {
        // Six values in 18 registers, then a hole of 8 (read through: max_gap is 8).
        let base = k as u16 * 26;
        let n = names[k];
        v.push(p(n[0], "holding_register", base, "u32", order, 3_000_000_123.0));
        v.push(p(n[1], "holding_register", base + 2, "i32", order, -123_456_789.0));
        v.push(p(n[2], "holding_register", base + 4, "f32", order, 1234.5));
        v.push(p(n[3], "holding_register", base + 6, "u64", order, 1_234_567_890_123.0));
        v.push(p(n[4], "holding_register", base + 10, "i64", order, -9_876_543_210.0));
        v.push(p(n[5], "holding_register", base + 14, "f64", order, -0.125));
    }
    v.push(p("u16_plain", "holding_register", 104, "u16", "ABCD", 65_000.0));
    v.push(P {
        extra: "scale = 0.5\n",
        expected: -617.0,
        ..p("i16_half", "holding_register", 105, "i16", "ABCD", -1234.0)
    });
    v.push(P {
        gateway_type: "bit",
        extra: "bit = 3\n",
        expected: 1.0,
        ..p("bit_3", "holding_register", 106, "u16", "ABCD", 10.0)
    });
    v.push(P {
        registers: 3,
        extra: "registers = 3\n",
        ..p("text_abcd", "holding_register", 107, "string", "ABCD", 23.5)
    });
    v.push(P {
        registers: 2,
        extra: "registers = 2\n",
        ..p("text_badc", "holding_register", 110, "string", "BADC", -7.0)
    });
    v.push(P {
        extra: "offset = -40.0\n",
        expected: 260.0,
        ..p("inlet_c", "input_register", 0, "u16", "ABCD", 300.0)
    });
    // 19 registers after the previous one: beyond the gap, a second request.
    v.push(p("flow_dcba", "input_register", 20, "i32", "DCBA", -5.0));
    v.push(p("pump_on", "coil", 0, "bool", "ABCD", 1.0));
    v.push(p("valve_open", "coil", 5, "bool", "ABCD", 0.0));
    v.push(p("door_closed", "discrete_input", 3, "bool", "ABCD", 1.0));
    v
}

fn server_spec(points: &[P]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = points
        .iter()
        .map(|p| {
            let raw = if p.server_type == "string" { json!(p.raw.to_string()) } else { json!(p.raw) };
            json!({"table": p.table, "address": p.address, "type": p.server_type, "order": p.order,
                   "raw": raw, "registers": p.registers})
        })
        .collect();
    json!({"units": {"1": list}})
}

fn gateway_points(points: &[P]) -> String {
    let mut toml = String::new();
    for p in points {
        // Two points use the 1-based notation, which names the table itself.
        let (table, address) = match p.metric {
            "u16_plain" => (String::new(), "\"40105\"".to_owned()),
            "inlet_c" => (String::new(), "30001".to_owned()),
            _ => (format!("table = \"{}\"\n", p.table), p.address.to_string()),
        };
        let ty = if p.table == "coil" || p.table == "discrete_input" {
            String::new()
        } else {
            format!("type = \"{}\"\n", p.gateway_type)
        };
        toml.push_str(&format!(
            "\n[[modbus.device.point]]\nmetric = \"{}\"\n{table}address = {address}\n{ty}order = \"{}\"\n{}",
            p.metric, p.order, p.extra
        ));
    }
    toml
}

fn config(dir: &Path, devices: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "\n[store]\nwindows = [\"1s\"]\nallowed_lateness = \"0s\"\n\n[modbus]\nmax_gap = 8\n{devices}"
        ),
    )
}

#[test]
fn every_type_and_order_from_pymodbus_reaches_the_rollups_exactly_in_few_requests() {
    let dir = tempfile::tempdir().unwrap();
    let points = points();
    let mut server = ModbusServer::tcp(dir.path(), &server_spec(&points));
    let device = format!(
        "\n[[modbus.device]]\nid = \"plc-1\"\ntcp = \"127.0.0.1:{}\"\nunit = 1\npoll = \"100ms\"\n{}",
        server.port,
        gateway_points(&points)
    );
    let mut gw = GatewayProcess::spawn(&["run", "--config", config(dir.path(), &device).to_str().unwrap()]);
    let addr = gw.wait_started();
    // Some 25 polls: at least two one-second windows closed for every point.
    wait_metric(addr, "fieldgate_modbus_points_total", (points.len() * 25) as f64);
    assert_eq!(metric(addr, "fieldgate_store_readings_total{outcome=\"bad_quality\"}"), Some(0.0));
    gw.stop_cleanly();

    let rows = rollup_rows(&dir.path().join("data"), "1s");
    for p in &points {
        let mine: Vec<_> = rows.iter().filter(|r| r.0 == "plc-1" && r.1 == p.metric).collect();
        assert!(!mine.is_empty(), "no rollup of {}", p.metric);
        for r in mine {
            assert_eq!(r.4, r.3 as f64 * p.expected, "{}: {} readings summing to {}", p.metric, r.3, r.4);
        }
    }
    // 34 points, five requests a poll: one of 112 holding registers (holes of up to 8 read
    // through), two of input registers (a hole of 19), one of coils, one of discrete inputs.
    let requests: BTreeSet<String> =
        server.poll_lines().iter().filter(|l| l.starts_with("req ")).map(|l| l.to_owned()).collect();
    let expected: BTreeSet<String> =
        ["req 1 3 0 112", "req 1 4 0 1", "req 1 4 20 2", "req 1 1 0 6", "req 1 2 3 1"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    assert_eq!(requests, expected);
}

/// A holding f32 in CDAB order, a u16, a coil and an input register on unit 1; unit 2 is asked
/// for an address it does not have.
fn two_units(port: u16) -> String {
    format!(
        r#"
[[modbus.device]]
id = "tank-1"
tcp = "127.0.0.1:{port}"
unit = 1
poll = "100ms"
timeout = "300ms"

[[modbus.device.point]]
metric = "setpoint"
table = "holding_register"
address = 0
type = "f32"
order = "CDAB"

[[modbus.device.point]]
metric = "level"
table = "holding_register"
address = 2

[[modbus.device.point]]
metric = "display"
table = "holding_register"
address = 4
type = "string"
registers = 2

[[modbus.device.point]]
metric = "heater"
table = "coil"
address = 0

[[modbus.device.point]]
metric = "inlet"
table = "input_register"
address = 0

[[modbus.device]]
id = "pump-2"
tcp = "127.0.0.1:{port}"
unit = 2
poll = "100ms"

[[modbus.device.point]]
metric = "rpm"
table = "holding_register"
address = 50
"#
    )
}

fn set(id: &str, device: &str, metric: &str, value: f64) -> v1::Command {
    v1::Command {
        id: id.into(),
        device: device.into(),
        created_ns: 0,
        action: Some(v1::command::Action::Set(v1::SetValue { metric: metric.into(), value })),
    }
}

/// The latest value of `metric` of `device` in `/devices`, once it equals `want`.
fn wait_latest(addr: std::net::SocketAddr, device: &str, metric: &str, want: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, _, body) = fieldgate_tests::http_get(addr, "/devices");
        let all: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        let value = all.iter().find(|d| d["device"] == device).map(|d| d["latest"][metric]["value"].clone());
        if value == Some(json!(want)) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{device}/{metric} never read {want}: {value:?}");
        std::thread::park_timeout(std::time::Duration::from_millis(20));
    }
}

#[test]
fn exceptions_back_off_only_their_device_writes_land_and_a_restarted_server_is_found_again() {
    let dir = tempfile::tempdir().unwrap();
    let spec = json!({"units": {
        "1": [{"table": "holding_register", "address": 0, "type": "f32", "order": "CDAB", "raw": 20.5},
              {"table": "holding_register", "address": 2, "type": "u16", "raw": 7},
              {"table": "holding_register", "address": 4, "type": "string", "registers": 2, "raw": "ok"},
              {"table": "coil", "address": 0, "type": "bool", "raw": 0},
              {"table": "input_register", "address": 0, "type": "u16", "raw": 3}],
        "2": [{"table": "holding_register", "address": 0, "type": "u16", "raw": 1}]}});
    let mut server = ModbusServer::tcp(dir.path(), &spec);
    let config = config(dir.path(), &two_units(server.port));
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let addr = gw.wait_started();
    let grpc = gw.grpc_addr();

    // pump-2 answers with an exception: bad readings, counted by code, and backed off alone.
    wait_metric(addr, "fieldgate_modbus_exceptions_total{code=\"illegal_data_address\"}", 1.0);
    wait_metric(addr, "fieldgate_store_readings_total{outcome=\"bad_quality\"}", 1.0);
    let health = wait_health(addr, "modbus", "degraded");
    let detail = health["components"]["modbus"]["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("pump-2: exception illegal_data_address"), "{detail}");
    assert!(!detail.contains("tank-1"), "{detail}");
    wait_latest(addr, "tank-1", "setpoint", 20.5);
    // A text register that holds no number: recorded as bad, counted, the rest goes on.
    wait_metric(addr, "fieldgate_inputs_rejected_total{source=\"modbus\",reason=\"undecodable\"}", 1.0);

    // Writes go through the same byte order as reads, and read back through the next poll.
    let sent = send_command(grpc, None, set("w-1", "tank-1", "setpoint", -3.75)).unwrap();
    assert_eq!(sent.status(), v1::DeliveryStatus::Delivered, "{sent:?}");
    assert_eq!(server.wait_line("write "), "write 1 16 0 0 49264", "FC16, CDAB: the low word first");
    wait_latest(addr, "tank-1", "setpoint", -3.75);
    send_command(grpc, None, set("w-2", "tank-1", "level", 1200.0)).unwrap();
    assert_eq!(server.wait_line("write "), "write 1 6 2 1200");
    send_command(grpc, None, set("w-3", "tank-1", "heater", 1.0)).unwrap();
    assert!(server.wait_line("write ").starts_with("write 1 5 0 1"));
    wait_latest(addr, "tank-1", "heater", 1.0);
    wait_latest(addr, "tank-1", "level", 1200.0);
    let read_only = send_command(grpc, None, set("w-4", "tank-1", "inlet", 1.0)).unwrap_err();
    assert_eq!(read_only.code(), tonic::Code::FailedPrecondition, "{read_only:?}");
    let refused = send_command(grpc, None, set("w-5", "tank-1", "level", 70_000.0)).unwrap_err();
    assert!(refused.message().contains("outside what a u16 can hold"), "{refused:?}");

    // The server goes away: every device backs off, the gateway keeps trying, and finds the
    // server again when it is back.
    server.stop();
    wait_health(addr, "modbus", "down");
    server.restart();
    let before = metric(addr, "fieldgate_modbus_requests_total{outcome=\"ok\"}").unwrap();
    wait_metric(addr, "fieldgate_modbus_requests_total{outcome=\"ok\"}", before + 5.0);
    wait_health(addr, "modbus", "degraded");
    gw.stop_cleanly();
}

#[test]
fn a_device_clock_stamps_each_sample_once_and_an_implausible_one_is_not_believed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = json!({"units": {"1": [
        {"table": "holding_register", "address": 0, "type": "u32", "raw": 0},
        {"table": "holding_register", "address": 2, "type": "u16", "raw": 7}]}});
    let server = ModbusServer::tcp(dir.path(), &spec);
    let device = format!(
        r#"
[store]
recordings = true

[[modbus.device]]
id = "logger-1"
tcp = "127.0.0.1:{}"
poll = "50ms"

[modbus.device.timestamp]
address = 40001
type = "u32"
unit = "s"

[[modbus.device.point]]
metric = "level"
address = 40003

# The clock's registers as a point too, so a command can set the clock.
[[modbus.device.point]]
metric = "clock_s"
address = 40001
type = "u32"
"#,
        server.port
    );
    let config = write_config(dir.path(), &device);
    let mut gw = GatewayProcess::spawn(&["run", "--config", config.to_str().unwrap()]);
    let addr = gw.wait_started();
    let grpc = gw.grpc_addr();
    let not_believed = "fieldgate_inputs_rejected_total{source=\"modbus\",reason=\"device_time\"}";
    let ok = "fieldgate_modbus_requests_total{outcome=\"ok\"}";

    // A clock never set (zero) is not believed: the polls are stored at the gateway's time.
    wait_metric(addr, not_believed, 1.0);
    // Ten minutes ago: believed. Every poll after the write reads the same time, so the
    // sample is stored once, at that time.
    let sample_s = fieldgate_proto::Timestamp::now().as_nanos() / 1_000_000_000 - 600;
    let sent = send_command(grpc, None, set("c-1", "logger-1", "clock_s", sample_s as f64)).unwrap();
    assert_eq!(sent.status(), v1::DeliveryStatus::Delivered, "{sent:?}");
    let before = metric(addr, ok).unwrap();
    wait_metric(addr, ok, before + 10.0);
    let rejected = metric(addr, not_believed).unwrap();
    // An hour ahead of the gateway: not believed.
    send_command(grpc, None, set("c-2", "logger-1", "clock_s", (sample_s + 4200) as f64)).unwrap();
    wait_metric(addr, not_believed, rejected + 1.0);
    // Those readings reached the store (and so the recordings), at the gateway's time.
    wait_latest(addr, "logger-1", "clock_s", (sample_s + 4200) as f64);
    gw.stop_cleanly();

    let rows = fieldgate_tests::recording_rows(&dir.path().join("data"));
    let at_sample: Vec<_> = rows.iter().filter(|r| r.2 == sample_s * 1_000_000_000).collect();
    let mut sample: Vec<_> = at_sample.iter().map(|r| (r.1.as_str(), r.3)).collect();
    sample.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(sample, vec![("clock_s", sample_s as f64), ("level", 7.0)], "one sample, stored once");
    let future = rows.iter().filter(|r| r.1 == "clock_s" && r.3 == (sample_s + 4200) as f64);
    assert!(future.clone().count() >= 1);
    assert!(future.clone().all(|r| r.2 < (sample_s + 4200) * 1_000_000_000), "stored at the gateway's time");
}

#[test]
fn on_an_rtu_line_a_silent_unit_does_not_stall_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let line = SerialPair::open(dir.path());
    let spec =
        json!({"units": {"1": [{"table": "holding_register", "address": 0, "type": "u16", "raw": 5}]}});
    let mut server = ModbusServer::serial(dir.path(), &line.device, 19_200, &spec);
    let devices = format!(
        r#"
[[modbus.device]]
id = "bin-1"
serial = "{path}"
baud = 19200
parity = "none"
unit = 1
poll = "100ms"
timeout = "200ms"

[[modbus.device.point]]
metric = "level"
table = "holding_register"
address = 0

[[modbus.device]]
id = "bin-2"
serial = "{path}"
baud = 19200
parity = "none"
unit = 2
poll = "100ms"
timeout = "200ms"
retries = 0

[[modbus.device.point]]
metric = "level"
table = "holding_register"
address = 0
"#,
        path = line.gateway.display()
    );
    let mut gw = GatewayProcess::spawn(&["run", "--config", config(dir.path(), &devices).to_str().unwrap()]);
    let addr = gw.wait_started();
    let asked = |server: &mut ModbusServer, unit: u8| {
        server.poll_lines().iter().filter(|l| l.starts_with(&format!("req {unit} "))).count()
    };
    while asked(&mut server, 1) < 40 {
        server.wait_line("req 1 ");
    }
    // Without backoff the line would alternate: one request to bin-1, one 200 ms timeout on
    // bin-2. With it, bin-2 is asked ever more rarely while bin-1 keeps being asked.
    let (one, two) = (asked(&mut server, 1), asked(&mut server, 2));
    assert!(one >= 2 * two, "bin-1 asked {one} times, silent bin-2 {two} times");
    assert!(two >= 2, "bin-2 is retried after its backoff: {two}");
    assert!(metric(addr, "fieldgate_modbus_requests_total{outcome=\"timeout\"}").unwrap() >= 1.0);
    let health = wait_health(addr, "modbus", "degraded");
    assert!(
        health["components"]["modbus"]["detail"].as_str().unwrap().contains("bin-2: no answer within 200ms"),
        "{health}"
    );
    wait_latest(addr, "bin-1", "level", 5.0);
    gw.stop_cleanly();
}

#[test]
fn the_probe_finds_type_order_and_address_of_a_value() {
    let dir = tempfile::tempdir().unwrap();
    // 1234.5 as a CDAB float at 0-based 13, which a manual would call 40014.
    let spec = json!({"units": {"1": [
        {"table": "holding_register", "address": 10, "type": "u16", "raw": 0},
        {"table": "holding_register", "address": 13, "type": "f32", "order": "CDAB", "raw": 1234.5},
        {"table": "holding_register", "address": 20, "type": "u16", "raw": 0}]}});
    let server = ModbusServer::tcp(dir.path(), &spec);
    let out = std::process::Command::new(fieldgate_tests::bin("fieldgate"))
        .args(["modbus", "probe", "--tcp", &format!("127.0.0.1:{}", server.port)])
        .args(["--address", "40013", "--expect", "1234.5"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("1234.5 found as:\n  type = \"f32\", order = \"CDAB\", address = 13 (0-based"),
        "{text}"
    );
    // A unit that does not exist: a clear error and exit 1, not a hang.
    let out = std::process::Command::new(fieldgate_tests::bin("fieldgate"))
        .args(["modbus", "probe", "--tcp", &format!("127.0.0.1:{}", server.port), "--unit", "9"])
        .args(["--address", "40013", "--timeout", "300ms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unit 9 of tcp://127.0.0.1:") && err.contains("no answer within 300ms"), "{err}");
}

/// field-sim's Modbus sensors: the ready line's devices (id, addr, order, values).
fn start_field_sim(dir: &Path, extra: &[&str]) -> (std::process::Child, serde_json::Value, String) {
    use std::io::BufRead;
    let config = dir.join("sim-devices.toml");
    let mut child = std::process::Command::new(fieldgate_tests::bin("field-sim"))
        .args(["modbus", "--gateway-config", config.to_str().unwrap(), "--poll", "100ms"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    (child, ready, std::fs::read_to_string(config).unwrap())
}

#[test]
fn field_sim_sensors_in_four_byte_orders_reach_the_rollups_exactly_and_take_setpoints() {
    let dir = tempfile::tempdir().unwrap();
    // A frozen world: every read gives the values field-sim announced.
    let (mut sim, ready, devices) =
        start_field_sim(dir.path(), &["--bins", "2", "--tanks", "1", "--weather", "1", "--speed", "0"]);
    let orders: BTreeSet<&str> =
        ready["devices"].as_array().unwrap().iter().map(|d| d["order"].as_str().unwrap()).collect();
    assert_eq!(orders.len(), 4, "every order is used: {orders:?}");
    let mut gw = GatewayProcess::spawn(&["run", "--config", config(dir.path(), &devices).to_str().unwrap()]);
    let addr = gw.wait_started();
    let grpc = gw.grpc_addr();
    // 4 devices of 11 points; some 25 polls each.
    wait_metric(addr, "fieldgate_modbus_points_total", (4 * 11 * 25) as f64);
    let sent = send_command(grpc, None, set("sp-1", "tank-0003", "setpoint", 21.5)).unwrap();
    assert_eq!(sent.status(), v1::DeliveryStatus::Delivered, "{sent:?}");
    wait_latest(addr, "tank-0003", "setpoint", 21.5);
    gw.stop_cleanly();
    let _ = sim.kill();
    let _ = sim.wait();

    let rows = rollup_rows(&dir.path().join("data"), "1s");
    for d in ready["devices"].as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        for (metric, value) in d["values"].as_object().unwrap() {
            let value = value.as_f64().unwrap();
            let mine: Vec<_> = rows.iter().filter(|r| r.0 == id && r.1 == *metric).collect();
            assert!(!mine.is_empty(), "no rollup of {id}/{metric}");
            for r in mine {
                // The store sums in f64; only the last bits may differ from count × value.
                let expected = r.3 as f64 * value;
                assert!(
                    (r.4 - expected).abs() <= 1e-12 * expected.abs(),
                    "{id}/{metric} ({}): {} readings summing to {}, not {expected}",
                    d["order"],
                    r.3,
                    r.4
                );
            }
        }
    }
}

#[test]
fn a_serial_server_reached_over_tcp_speaks_rtu_frames() {
    let dir = tempfile::tempdir().unwrap();
    let spec = json!({"units": {"3": [{"table": "input_register", "address": 7, "type": "i32", "order": "CDAB", "raw": -70000}]}});
    let server = ModbusServer::rtu_over_tcp(dir.path(), &spec);
    let device = format!(
        "\n[[modbus.device]]\nid = \"meter-3\"\nrtu_over_tcp = \"127.0.0.1:{}\"\nunit = 3\npoll = \"100ms\"\n\n[[modbus.device.point]]\nmetric = \"flow\"\naddress = 30008\ntype = \"i32\"\norder = \"CDAB\"\n",
        server.port
    );
    let mut gw = GatewayProcess::spawn(&["run", "--config", config(dir.path(), &device).to_str().unwrap()]);
    let addr = gw.wait_started();
    wait_latest(addr, "meter-3", "flow", -70000.0);
    gw.stop_cleanly();
}
