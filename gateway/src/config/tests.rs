use super::*;
use fieldgate_adapters::lorawan::codec::Codec;
use fieldgate_adapters::lorawan::session::Activation;

fn no_env(_: &str) -> Option<String> {
    None
}

fn errors(src: &str) -> ConfigErrors {
    match Config::parse(src, Path::new("/etc/fieldgate/fieldgate.toml"), &no_env) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e,
    }
}

/// (line, column, text) of each problem.
fn located(src: &str) -> Vec<(usize, usize, String)> {
    errors(src)
        .problems
        .into_iter()
        .map(|p| {
            let l = p.location.expect("every problem here has a location");
            let text = if p.path.is_empty() { p.message } else { format!("{}: {}", p.path, p.message) };
            (l.line, l.column, text)
        })
        .collect()
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(
        "[gateway]\nid = \"farm-north\"\n",
        Path::new("/etc/fieldgate/fieldgate.toml"),
        &no_env,
    )
    .unwrap();
    assert_eq!(c.gateway.id, "farm-north");
    assert_eq!(c.gateway.data_dir, Path::new("/etc/fieldgate/data"), "relative to the config file");
    assert_eq!(c.gateway.shutdown_timeout, Duration::from_secs(15));
    assert_eq!(c.http.listen, "127.0.0.1:9464".parse().unwrap());
}

#[test]
fn unknown_key_names_line_column_and_suggests() {
    let src = "[gateway]\nid = \"farm\"\ndata_dri = \"/var/lib/fieldgate\"\n";
    assert_eq!(
        located(src),
        vec![(3, 1, "unknown key `data_dri` in gateway (did you mean `data_dir`?)".to_owned())]
    );
}

#[test]
fn unknown_section_and_unrelated_keys() {
    let src = "[gatway]\nid = \"farm\"\n";
    let problems = located(src);
    assert_eq!(
        problems[0],
        (1, 2, "unknown key `gatway` at the top level (did you mean `gateway`?)".to_owned())
    );

    let src = "[gateway]\nid = \"farm\"\ncolour = \"green\"\n";
    let (_, _, text) = &located(src)[0];
    assert!(text.contains("valid keys here: `id`, `data_dir`, `shutdown_timeout`"), "{text}");
}

#[test]
fn wrong_type_names_the_key() {
    let src = "[gateway]\nid = \"farm\"\n\n[http]\nlisten = 9464\n";
    assert_eq!(
        located(src),
        vec![(5, 10, "http.listen: invalid type: integer `9464`, expected a string".to_owned())]
    );
}

#[test]
fn bad_duration_says_how_to_write_one() {
    let src = "[gateway]\nid = \"farm\"\nshutdown_timeout = \"ten seconds\"\n";
    let problems = located(src);
    assert_eq!(problems.len(), 1);
    let (line, col, text) = &problems[0];
    assert_eq!((*line, *col), (3, 20));
    assert!(text.starts_with("gateway.shutdown_timeout: `ten seconds` is not a duration"), "{text}");
    assert!(text.contains("write it like \"500ms\""), "{text}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let src = r#"
[gateway]
id = "farm north"
data_dri = "x"
shutdown_timeout = "1ms"

[http]
listen = "localhost"
lisen = "127.0.0.1:1"
"#;
    let problems = located(src);
    let texts: Vec<&str> = problems.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(problems.len(), 5, "{texts:#?}");
    // Top to bottom, whether serde or the semantic checks found them.
    let lines: Vec<usize> = problems.iter().map(|p| p.0).collect();
    assert_eq!(lines, vec![3, 4, 5, 8, 9], "{texts:#?}");
    assert!(
        texts[0].starts_with("gateway.id: gateway id `farm north` has the character ' '"),
        "{}",
        texts[0]
    );
    assert!(texts[1].contains("unknown key `data_dri` in gateway (did you mean `data_dir`?)"));
    assert!(texts[2].starts_with("gateway.shutdown_timeout: must be at least 1s, got 1ms"), "{}", texts[2]);
    assert!(texts[3].starts_with("http.listen: `localhost` is not an address"), "{}", texts[3]);
    assert!(texts[4].contains("unknown key `lisen` in http (did you mean `listen`?)"));
}

#[test]
fn unknown_keys_inside_inline_tables_are_found_too() {
    let src = "gateway = { id = \"farm\", shutdown_timeot = \"5s\", data_dri = \"d\" }\n";
    let problems = located(src);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert_eq!(
        problems[0],
        (1, 26, "unknown key `shutdown_timeot` in gateway (did you mean `shutdown_timeout`?)".to_owned())
    );
    assert_eq!(
        problems[1],
        (1, 50, "unknown key `data_dri` in gateway (did you mean `data_dir`?)".to_owned())
    );
}

#[test]
fn missing_required_key_is_reported() {
    let problems = located("[gateway]\ndata_dir = \"/d\"\n");
    assert_eq!(problems, vec![(1, 1, "gateway: required key `id` is missing".to_owned())]);
    let problems = errors("").problems;
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].message, "required key `gateway` is missing");
}

#[test]
fn syntax_errors_are_located() {
    let problems = located("[gateway]\nid = \"farm\nx = 1\n");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].0, 2);
    assert!(problems[0].2.starts_with("not valid TOML"), "{}", problems[0].2);
}

#[test]
fn the_report_reads_like_a_compiler_error() {
    let err = errors("[gateway]\nid = \"farm\"\ndata_dri = \"x\"\nshutdown_timeout = \"0s\"\n");
    assert_eq!(
        err.to_string(),
        "/etc/fieldgate/fieldgate.toml has 2 problems\n  \
         --> /etc/fieldgate/fieldgate.toml:3:1  unknown key `data_dri` in gateway (did you mean `data_dir`?)\n  \
         --> /etc/fieldgate/fieldgate.toml:4:20  gateway.shutdown_timeout: must be at least 1s, got 0s"
    );
}

#[test]
fn the_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fieldgate.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.gateway.id, "example-farm");
}

#[test]
fn store_settings_parse_and_are_checked() {
    let src = r#"
[gateway]
id = "farm"

[store]
windows = ["1m", "10s"]
allowed_lateness = "1m"
recordings = true
wal_segment_size = "16MiB"

[store.retention]
rollups = { "10s" = "7d", "1m" = "365d" }
recordings = "30d"
max_disk = "20GiB"
"#;
    let c = Config::parse(src, Path::new("/etc/fieldgate/fieldgate.toml"), &no_env).unwrap();
    assert_eq!(c.store.windows, vec![Duration::from_secs(10), Duration::from_secs(60)], "sorted");
    assert_eq!(c.store.allowed_lateness, Duration::from_secs(60));
    assert_eq!(c.store.recordings, fieldgate_store::Recordings::All);
    assert_eq!(c.store.segment_bytes, 16 << 20);
    assert_eq!(c.store.data_dir, Path::new("/etc/fieldgate/data"));
    assert_eq!(
        c.store.retention.rollups,
        vec![
            (Duration::from_secs(10), Duration::from_secs(7 * 86_400)),
            (Duration::from_secs(60), Duration::from_secs(365 * 86_400))
        ]
    );
    assert_eq!(c.store.retention.max_bytes, Some(20 << 30));

    let bad = r#"
[gateway]
id = "farm"

[store]
windows = ["1m", "10ms", "1m"]
wal_segment_size = "1KiB"
flush_rows = 5

[store.retention]
rollups = { "5m" = "7d" }
"#;
    let problems = located(bad);
    let texts: Vec<&str> = problems.iter().map(|p| p.2.as_str()).collect();
    assert_eq!(
        texts,
        vec![
            "store.windows[1]: must be at least 100ms, got 10ms",
            "store.windows[2]: 1m is listed twice",
            "store.wal_segment_size: must be between 1MiB and 1GiB, got 1KiB",
            "store.flush_rows: must be between 1000 and 100000000, got 5",
            "store.retention.rollups.5m: `5m` is not one of store.windows",
        ]
    );
    assert_eq!(problems[0].0, 6);
}

#[test]
fn mqtt_settings_parse_with_secrets_from_the_environment() {
    let src = r#"
[gateway]
id = "farm"

[mqtt.external]
host = "broker.local"
username = "gw"
password = { env = "FG_MQTT_PASSWORD" }

[[mqtt.mapping]]
topic = "fleet/{device}/telemetry"
timestamp = "ts"

[[mqtt.mapping]]
topic = "sensors/{device}/{metric}"
format = "number"
"#;
    let env = |k: &str| (k == "FG_MQTT_PASSWORD").then(|| "hunter2".to_owned());
    let c = Config::parse(src, Path::new("/etc/fieldgate/fieldgate.toml"), &env).unwrap();
    let Some(MqttBroker::External(m)) = c.mqtt.clone().map(|m| m.broker) else {
        panic!("external: {:?}", c.mqtt)
    };
    assert_eq!((m.host.as_str(), m.port, m.client_id.as_str()), ("broker.local", 1883, "fieldgate-farm"));
    assert_eq!(m.password.as_deref(), Some("hunter2"));
    assert!(!format!("{m:?}").contains("hunter2"), "Debug must not show the password");
    assert_eq!(m.mappings.len(), 2);
    assert_eq!(m.mappings[0].timestamp.as_deref(), Some("/ts"), "a plain field name becomes a JSON pointer");

    let problems = errors(src).problems;
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].path, "mqtt.external.password");
    assert!(problems[0].message.contains("`FG_MQTT_PASSWORD` is not set"), "{problems:?}");
}

#[test]
fn mqtt_mistakes_are_explained() {
    let src = r#"
[gateway]
id = "farm"

[mqtt.external]
host = "broker.local"
keep_alive = "500ms"

[[mqtt.mapping]]
topic = "fleet/+/telemetry"

[[mqtt.mapping]]
topic = "a/#/b"

[[mqtt.mapping]]
topic = "s/{device}"
format = "number"
fields = { level = "/l" }

[[mqtt.mapping]]
topic = "x/{device}"
format = "xml"
"#;
    let texts: Vec<String> = located(src).into_iter().map(|p| format!("{}: {}", p.0, p.2)).collect();
    assert_eq!(
        texts,
        vec![
            "7: mqtt.external.keep_alive: must be at least 1s, got 500ms",
            "10: mqtt.mapping[0].topic: `fleet/+/telemetry` has no {device} level; add one or give `device = \"...\"`",
            "13: mqtt.mapping[1].topic: `#` must be the last level of `a/#/b`",
            "18: mqtt.mapping[2].fields: only JSON payloads have fields; remove it or use format = \"json\"",
            "22: mqtt.mapping[3].format: unknown variant `xml`, expected one of `json`, `number`, `bool`",
        ]
    );
}

#[test]
fn without_an_mqtt_section_the_embedded_broker_runs_with_the_default_mappings() {
    let c = Config::parse("[gateway]\nid = \"farm\"\n", Path::new("f.toml"), &|_| None).unwrap();
    let Some(MqttBroker::Embedded { listen, broker }) = c.mqtt.clone().map(|m| m.broker) else {
        panic!("embedded: {:?}", c.mqtt)
    };
    assert_eq!(listen, "127.0.0.1:1883".parse().unwrap());
    assert_eq!((broker.max_inflight, broker.max_queued, broker.username), (32, 1000, None));
    let topics: Vec<String> = broker.mappings.iter().map(|m| m.topic.to_string()).collect();
    assert_eq!(topics, ["fieldgate/{device}", "fieldgate/{device}/{metric}"]);
    assert!(!broker.mappings[0].timestamp_required);

    let off =
        Config::parse("[gateway]\nid = \"farm\"\n[mqtt]\nenabled = false\n", Path::new("f.toml"), &|_| None);
    assert!(off.unwrap().mqtt.is_none());
}

#[test]
fn embedded_and_external_brokers_exclude_each_other() {
    let src = r#"
[gateway]
id = "farm"

[mqtt.embedded]
listen = "0.0.0.0:1883"
password = "secret"

[mqtt.external]
host = "broker.local"
"#;
    let texts: Vec<String> = located(src).into_iter().map(|p| format!("{}: {}", p.0, p.2)).collect();
    assert_eq!(
        texts,
        vec![
            "9: mqtt.external: use either [mqtt.embedded] or [mqtt.external], not both: devices connect to one broker"
        ]
    );
}

#[test]
fn commands_and_the_grpc_api_are_checked() {
    let src = r#"
[gateway]
id = "farm"

[grpc]
listen = "0.0.0.0:50051"

[mqtt]
command_topic = "farm/commands/#"
command_timeout = "0s"
"#;
    let texts: Vec<String> = located(src).into_iter().map(|p| format!("{}: {}", p.0, p.2)).collect();
    assert_eq!(
        texts,
        vec![
            "6: grpc.listen: the gRPC API sends commands to machines: beyond loopback it needs a `token` in [grpc]",
            "9: mqtt.command_topic: the command topic `farm/commands/#` cannot contain the wildcards `+` or `#`",
            "10: mqtt.command_timeout: must be at least 100ms, got 0s",
        ]
    );
    let env = |k: &str| (k == "FG_TOKEN").then(|| "t0ken".to_owned());
    let src =
        "[gateway]\nid = \"farm\"\n[grpc]\nlisten = \"0.0.0.0:50051\"\ntoken = { env = \"FG_TOKEN\" }\n";
    let c = Config::parse(src, Path::new("f.toml"), &env).unwrap();
    let grpc = c.grpc.unwrap();
    assert_eq!(grpc.token.unwrap().expose(), "t0ken");
    let mqtt = c.mqtt.unwrap();
    assert_eq!(
        (mqtt.command_topic.as_str(), mqtt.command_timeout),
        ("fieldgate/{device}/command", Duration::from_secs(10))
    );
}

#[test]
fn tls_and_protocol_mistakes_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
    let src = r#"
[gateway]
id = "farm"

[mqtt.external]
host = "broker.local"
protocol_version = "3.1"

[mqtt.external.tls]
ca_file = "ca.pem"
"#;
    let file = dir.path().join("fieldgate.toml");
    let texts: Vec<String> = match Config::parse(src, &file, &no_env) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e
            .problems
            .into_iter()
            .map(|p| format!("{}: {}: {}", p.location.unwrap().line, p.path, p.message))
            .collect(),
    };
    assert_eq!(
        texts,
        vec![
            "7: mqtt.external.protocol_version: `3.1` is not a version fieldgate speaks: use \"3.1.1\" or \"5\"",
            "10: mqtt.external.tls.ca_file: no PEM certificate found in the CA file",
        ]
    );

    let src = "[gateway]\nid = \"farm\"\n[mqtt.external]\nhost = \"b\"\n[mqtt.external.tls]\ncert_file = \"missing.pem\"\n";
    let err = Config::parse(src, &file, &no_env).unwrap_err();
    let text = format!("{}: {}", err.problems[0].path, err.problems[0].message);
    assert!(text.starts_with("mqtt.external.tls.cert_file: cannot read "), "{text}");
    assert!(text.contains("missing.pem"), "{text}");
}

#[test]
fn grpc_tls_material_is_checked_when_the_config_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["gw.farm".to_owned()]).unwrap().self_signed(&key).unwrap();
    let other_key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("gw.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("gw.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("other.key"), other_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("clients.pem"), "not a certificate").unwrap();
    let file = dir.path().join("fieldgate.toml");
    let problems = |tls: &str| -> Vec<String> {
        let src = format!("[gateway]\nid = \"farm\"\n\n[grpc.tls]\n{tls}");
        match Config::parse(&src, &file, &no_env) {
            Ok(c) => panic!("expected errors, got {c:?}"),
            Err(e) => e
                .problems
                .into_iter()
                .map(|p| format!("{}: {}: {}", p.location.map_or(0, |l| l.line), p.path, p.message))
                .collect(),
        }
    };
    let good = "cert_file = \"gw.pem\"\nkey_file = \"gw.key\"\n";
    let parsed =
        Config::parse(&format!("[gateway]\nid = \"farm\"\n[grpc.tls]\n{good}"), &file, &no_env).unwrap();
    assert!(parsed.grpc.unwrap().tls.is_some_and(|t| t.client_ca.is_none()));
    assert_eq!(
        problems("cert_file = \"gw.pem\"\nkey_file = \"other.key\"\n"),
        vec!["6: grpc.tls.key_file: the certificate and key do not work together: keys may not be consistent: KeyMismatch".to_owned()]
    );
    assert_eq!(
        problems(&format!("{good}client_ca_file = \"clients.pem\"\n")),
        vec!["7: grpc.tls.client_ca_file: no PEM certificate found".to_owned()]
    );
    let missing = problems("cert_file = \"nope.pem\"\nkey_file = \"gw.key\"\n");
    assert!(
        missing[0].starts_with("5: grpc.tls.cert_file: cannot read ") && missing[0].contains("nope.pem"),
        "{missing:?}"
    );
}

#[test]
fn modbus_devices_parse_and_their_mistakes_are_explained() {
    let src = r#"
[gateway]
id = "farm"

[[modbus.device]]
id = "tank-1"
tcp = "10.0.0.5:502"
poll = "250ms"

[[modbus.device.point]]
metric = "level"
address = 40013
type = "f32"
order = "cdab"

[[modbus.device.point]]
metric = "pump"
table = "coil"
address = 4

[[modbus.device]]
id = "bin-7"
serial = "/dev/ttyUSB0"
unit = 7

[[modbus.device.point]]
metric = "level"
address = 30001
scale = 0.1
"#;
    let c = Config::parse(src, Path::new("f.toml"), &no_env).unwrap();
    assert_eq!(c.modbus.len(), 2, "two buses");
    let tank = &c.modbus[0].devices[0];
    assert_eq!((tank.unit, tank.poll), (1, Duration::from_millis(250)));
    assert_eq!((tank.points[0].table, tank.points[0].address), (Table::HoldingRegister, 12));
    assert_eq!((tank.points[0].data_type, tank.points[0].order), (DataType::F32, Order::Cdab));
    assert_eq!((tank.points[1].table, tank.points[1].data_type), (Table::Coil, DataType::Bool));
    assert!(
        matches!(&c.modbus[1].transport, Transport::Rtu(s) if s.baud == 9600 && s.parity == Parity::Even)
    );

    let src = r#"
[gateway]
id = "farm"

[[modbus.device]]
id = "tank-1"
tcp = "10.0.0.5"
rtu_over_tcp = "10.0.0.6:4001"

[[modbus.device]]
id = "tank-2"
tcp = "10.0.0.5:502"
unit = 0

[[modbus.device.point]]
metric = "level"
address = 12

[[modbus.device.point]]
metric = "level"
table = "holding_register"
address = 400013

[[modbus.device.point]]
metric = "alarm"
table = "coil"
address = 1
type = "u16"

[[modbus.device.point]]
metric = "t"
table = "holding_register"
address = 0
type = "f16"
"#;
    let texts: Vec<String> = located(src).into_iter().map(|p| format!("{}: {}", p.0, p.2)).collect();
    assert_eq!(
        texts,
        vec![
            "5: modbus.device[0]: give exactly one of `tcp`, `rtu_over_tcp` (\"host:port\") or `serial` (a device path)",
            "5: modbus.device[0]: a device needs at least one `[[modbus.device.point]]`",
            "7: modbus.device[0].tcp: `10.0.0.5` is not \"host:port\" (Modbus TCP is usually port 502)",
            "13: modbus.device[1].unit: use 1 to 255 (0 is broadcast, which nobody answers)",
            "17: modbus.device[1].point[0].address: `12` does not say its table: give `table`, or write it 1-based like 40001 (holding) or 30001 (input)",
            "22: modbus.device[1].point[1].address: `400013`: with `table` set the address is 0-based (0 to 65535); leave `table` out to write it 1-based like 40001",
            "28: modbus.device[1].point[2].type: a coil holds one bit: use type = \"bool\"",
            "34: modbus.device[1].point[3].type: `f16`: use bool, u16, i16, u32, i32, u64, i64, f32, f64, bit or string",
        ]
    );
}

#[test]
fn lorawan_profiles_and_devices_parse_with_keys_from_the_environment() {
    let src = r#"
[gateway]
id = "farm"

[lorawan]
region = "us915"
net_id = "000013"

[[lorawan.profile]]
name = "soil"
codec = "layout"
port = 2
command_port = 20
[[lorawan.profile.field]]
metric = "moisture_pct"
byte = 0
type = "u16"
scale = 0.1
[[lorawan.profile.field]]
metric = "soil_temp_c"
byte = 2
type = "i16"
order = "little"
scale = 0.01

[[lorawan.device]]
id = "soil-1"
dev_eui = "0004A30B001C0530"
profile = "soil"
app_key = { env = "SOIL_1_KEY" }

[[lorawan.device]]
id = "gauge-2"
dev_eui = "00-04-a3-0b-00-1c-05-31"
dev_addr = "26011f3a"
nwk_s_key = "7dfec149fda46090635d4c003e12106f"
app_s_key = "e194266e4cb8a4d44215aed95f6f9843"
"#;
    let env = |v: &str| (v == "SOIL_1_KEY").then(|| "2b7e151628aed2a6abf7158809cf4f3c".to_owned());
    let c = Config::parse(src, Path::new("f.toml"), &env).unwrap();
    let lora = c.lorawan.unwrap();
    assert_eq!(lora.listen, "127.0.0.1:1700".parse().unwrap());
    assert_eq!((lora.network.region.as_str(), lora.network.net_id), ("US915", 0x13));
    assert_eq!(lora.adapter.dedup_window, Duration::from_millis(200));
    let [soil, gauge] = &lora.devices[..] else { panic!("two devices: {:?}", lora.devices) };
    assert_eq!(
        (soil.device.as_str(), soil.dev_eui.to_string(), soil.command_port),
        ("soil-1", "0004a30b001c0530".into(), 20)
    );
    assert!(matches!(soil.activation, Activation::Otaa { join_eui: None, app_key } if app_key[0] == 0x2b));
    assert!(matches!(&*soil.codec, Codec::Layout(l) if l.port == Some(2) && l.fields.len() == 2));
    assert!(matches!(gauge.activation, Activation::Abp { dev_addr: 0x2601_1f3a, .. }));
    assert_eq!(*gauge.codec, Codec::CayenneLpp, "the default profile");
    assert!(!format!("{lora:?}").contains("7dfec149"), "keys never print");
}

#[test]
fn lorawan_mistakes_are_explained() {
    let src = r#"
[gateway]
id = "farm"

[lorawan]
listen = "0.0.0.0:1700"
region = "AS923"

[[lorawan.profile]]
name = "p"
codec = "layout"
[[lorawan.profile.field]]
metric = "level"
byte = 0
type = "u12"

[[lorawan.device]]
id = "a"
dev_eui = "0102"
profile = "nope"
app_key = "00"

[[lorawan.device]]
id = "b"
dev_eui = "0000000000000002"
app_key = "000102030405060708090a0b0c0d0e0f"
dev_addr = "26011f3a"
"#;
    let texts: Vec<String> = located(src).into_iter().map(|p| format!("{}: {}", p.0, p.2)).collect();
    assert_eq!(
        texts,
        vec![
            "6: lorawan.listen: the packet forwarder protocol has no authentication: beyond loopback, list the concentrators allowed in with `gateways = [\"<EUI>\", ...]`",
            "7: lorawan.region: `AS923`: use \"EU868\" or \"US915\"",
            "15: lorawan.profile[0].field[0].type: `u12`: use u8, i8, u16, i16, u24, i24, u32, i32 or f32",
            "19: lorawan.device[0].dev_eui: `0102` is not an EUI of 16 hex digits",
            "20: lorawan.device[0].profile: no profile `nope` (there are: cayenne_lpp, p)",
            "21: lorawan.device[0].app_key: a key is 32 hex digits (16 bytes)",
            "23: lorawan.device[1]: give `app_key` (OTAA), or `dev_addr`, `nwk_s_key` and `app_s_key` (ABP), not both",
        ]
    );
}

#[test]
fn upstream_turns_the_outbox_on_and_its_mistakes_are_located() {
    let file = std::path::Path::new("/etc/fieldgate/fieldgate.toml");
    let ok = "[gateway]\nid = \"farm\"\n\n[upstream]\nendpoint = \"http://collector:50052\"\n";
    let config = Config::parse(ok, file, &no_env).unwrap();
    let outbox = config.store.outbox.expect("[upstream] keeps an outbox");
    // All of the default store windows but the finest.
    assert_eq!(outbox.windows, vec![Duration::from_secs(60), Duration::from_secs(900)]);
    let up = config.upstream.unwrap();
    assert_eq!((up.gateway_id.as_str(), up.max_in_flight, up.compression), ("farm", 8, true));
    assert!(Config::parse("[gateway]\nid = \"farm\"\n", file, &no_env).unwrap().store.outbox.is_none());

    let src = "[gateway]\nid = \"farm\"\n\n[upstream]\nendpoint = \"collector:50052\"\nwindows = [\"1m\", \"5m\"]\ntoken = \"two words\"\nbatch_size = 10\n";
    let texts: Vec<String> = located(src).iter().map(|(l, _, t)| format!("{l}: {t}")).collect();
    assert_eq!(texts.len(), 4, "every problem at once: {texts:#?}");
    assert!(texts[3].starts_with("8: unknown key `batch_size`"), "{texts:#?}");
    assert_eq!(
        texts[..3],
        [
            "5: upstream.endpoint: `collector:50052` is not like \"http://host:50052\" or \"https://host:50052\"".to_owned(),
            "6: upstream.windows[1]: 5m is not one of store.windows".to_owned(),
            "7: upstream.token: the token must be printable ASCII without spaces".to_owned(),
        ]
    );
    let texts: Vec<String> =
        located("[gateway]\nid = \"farm\"\n\n[upstream]\nendpoint = \"https://collector:50052\"\n")
            .iter()
            .map(|(l, _, t)| format!("{l}: {t}"))
            .collect();
    assert_eq!(
        texts,
        vec![
            "5: upstream.endpoint: an https endpoint needs [upstream.tls] with the collector's `ca_file`"
                .to_owned()
        ]
    );
}

#[test]
fn coordination_reads_its_fleet_and_its_mistakes_are_located() {
    let file = std::path::Path::new("/etc/fieldgate/fieldgate.toml");
    let ok = "[gateway]\nid = \"farm\"\n\n[coordination]\n\n[[coordination.machine]]\ndevice = \"combine-1\"\nrole = \"combine\"\ncapacity_kg = 10857\n\n[[coordination.machine]]\ndevice = \"cart-1\"\nrole = \"cart\"\ncapacity_kg = 30000\nload_from = { device = \"cart-1-scale\", metric = \"weight_kg\" }\n";
    let c = Config::parse(ok, file, &no_env).unwrap().coordination.expect("configured");
    assert_eq!(c.policy, crate::coordination::PolicyKind::Dispatcher);
    assert_eq!((c.interval, c.sync), (Duration::from_secs(5), Duration::from_secs(20)));
    assert_eq!(c.machines.len(), 2);
    assert_eq!(c.machines[0].unload_kg_s, 103.0, "a combine's default auger");
    assert_eq!(
        c.machines[1].load_from.as_ref().map(|(d, m)| (d.as_str(), m.as_str())),
        Some(("cart-1-scale", "weight_kg"))
    );

    let src = "[gateway]\nid = \"farm\"\n\n[coordination]\npolicy = \"fastest\"\n\n[[coordination.machine]]\ndevice = \"combine-1\"\nrole = \"harvester\"\ncapacity_kg = 10857\n\n[[coordination.machine]]\ndevice = \"cart-1\"\nrole = \"cart\"\ncapacity_kg = -1\nspeed = 15\n";
    let texts: Vec<String> = located(src).iter().map(|(l, _, t)| format!("{l}: {t}")).collect();
    assert_eq!(texts.len(), 4, "every problem at once: {texts:#?}");
    assert_eq!(
        texts[0],
        "5: coordination.policy: `fastest` is not one of stop_and_call, nearest_idle, dispatcher"
    );
    assert_eq!(texts[1], "9: coordination.machine[0].role: `harvester` is not one of combine, cart, truck");
    assert!(
        texts[2].starts_with("15: coordination.machine[1].capacity_kg: must be a positive number"),
        "{texts:#?}"
    );
    assert!(texts[3].starts_with("16: unknown key `speed`"), "{texts:#?}");
}

#[test]
fn recordings_can_be_chosen_by_protocol_and_device() {
    let file = std::path::Path::new("/etc/fieldgate/fieldgate.toml");
    let src = "[gateway]\nid = \"farm\"\n\n[store]\nrecordings = [\"mqtt\", \"bin-3\"]\n";
    let c = Config::parse(src, file, &no_env).unwrap();
    let fieldgate_store::Recordings::Only { sources, devices } = &c.store.recordings else {
        panic!("{:?}", c.store.recordings)
    };
    assert_eq!(sources, &vec![fieldgate_proto::Source::Mqtt]);
    assert_eq!(devices.iter().map(|d| d.as_str()).collect::<Vec<_>>(), vec!["bin-3"]);
    let bad = "[gateway]\nid = \"farm\"\n\n[store]\nrecordings = [\"mqtt\", \"bin 3\"]\n";
    let texts: Vec<String> = located(bad).iter().map(|(l, _, t)| format!("{l}: {t}")).collect();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0].starts_with("5: store.recordings[1]:"), "{texts:?}");
}

/// What the loader makes of a bogus key `zz_probe` in the table at `path`: the keys the table
/// accepts (serde lists them in its unknown-field error), or `None` when `path` is not a table
/// of its own (a plain value, or a map of any keys).
fn accepted_keys(path: &[(&str, bool)]) -> Option<Vec<String>> {
    let mut src = String::new();
    let mut prefix = Vec::new();
    for (i, (name, array)) in path.iter().enumerate() {
        prefix.push(*name);
        let dotted = prefix.join(".");
        if *array {
            src.push_str(&format!("[[{dotted}]]\n"));
        } else if i + 1 == path.len() {
            src.push_str(&format!("[{dotted}]\n"));
        }
    }
    src.push_str("zz_probe = 1\n");
    let message = match toml::from_str::<raw::RawConfig>(&src) {
        Ok(_) => return None,
        Err(e) => e.message().to_owned(),
    };
    let listed = message.strip_prefix("unknown field `zz_probe`, expected ")?;
    Some(listed.split('`').skip(1).step_by(2).map(str::to_owned).collect())
}

/// A table the loader accepts: its heading (`[a.b]`, `[[a.b]]` for arrays of tables), its
/// plain keys, and its keys that take a table of their own (with that table's heading).
struct LoaderTable {
    heading: String,
    plain: Vec<String>,
    tables: Vec<(String, String)>,
}

/// Every table the loader accepts, found by probing from the top.
fn loader_tables() -> Vec<LoaderTable> {
    let mut out = Vec::new();
    let mut queue: Vec<Vec<(&'static str, bool)>> = vec![Vec::new()];
    while let Some(path) = queue.pop() {
        let keys = if path.is_empty() {
            // The top level: its keys are the sections.
            let message =
                toml::from_str::<raw::RawConfig>("zz_probe = 1\n").unwrap_err().message().to_owned();
            message.split('`').skip(3).step_by(2).map(str::to_owned).collect()
        } else {
            accepted_keys(&path).expect("a table")
        };
        let heading = |path: &[(&str, bool)]| {
            let name = path.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(".");
            if path.last().is_some_and(|(_, a)| *a) { format!("[[{name}]]") } else { format!("[{name}]") }
        };
        let mut table = LoaderTable { heading: heading(&path), plain: Vec::new(), tables: Vec::new() };
        for key in keys {
            let key: &'static str = Box::leak(key.into_boxed_str());
            let sub = [false, true].into_iter().find_map(|array| {
                let mut sub = path.clone();
                sub.push((key, array));
                accepted_keys(&sub).map(|_| sub)
            });
            match sub {
                Some(sub) => {
                    table.tables.push((key.to_owned(), heading(&sub)));
                    queue.push(sub);
                }
                None => table.plain.push(key.to_owned()),
            }
        }
        out.push(table);
    }
    out
}

/// The tables docs/config.md documents: each heading like ``### `[[modbus.device]]` `` and the
/// keys in the first column of its table.
fn documented_tables() -> Vec<(String, Vec<String>)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md")).unwrap();
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in doc.lines() {
        if line.starts_with('#') {
            let heading = line.split('`').nth(1).filter(|h| h.starts_with('['));
            if let Some(h) = heading {
                out.push((h.to_owned(), Vec::new()));
            } else if !line.starts_with("# ") {
                // A heading of prose (e.g. "The collector"): its table documents no section.
                out.push((String::new(), Vec::new()));
            }
        } else if let (Some(cell), Some((_, keys))) =
            (line.strip_prefix("| ").and_then(|l| l.split(" |").next()), out.last_mut())
            && cell.starts_with('`')
        {
            keys.extend(cell.split('`').skip(1).step_by(2).map(str::to_owned));
        }
    }
    out.retain(|(h, _)| !h.is_empty());
    for (_, keys) in &mut out {
        keys.sort();
    }
    out.sort();
    out
}

#[test]
fn the_config_reference_documents_every_key_the_loader_accepts_and_no_other() {
    let loader = loader_tables();
    let documented: std::collections::BTreeMap<String, Vec<String>> =
        documented_tables().into_iter().collect();
    let by_heading: std::collections::BTreeMap<&str, &LoaderTable> =
        loader.iter().map(|t| (t.heading.as_str(), t)).collect();
    let stale: Vec<_> = documented.keys().filter(|h| !by_heading.contains_key(h.as_str())).collect();
    assert!(stale.is_empty(), "docs/config.md documents sections the loader does not accept: {stale:?}");
    assert!(documented.len() >= 20, "{documented:?}");
    // Every section (the top level's tables) has a heading; a deeper table has one, or is a
    // value of its parent's (a secret's `{ file = ... }`, an origin's `{ lat, lon }`) and
    // documented as the parent's key.
    let top = by_heading["[]"];
    for (_, heading) in &top.tables {
        assert!(documented.contains_key(heading), "docs/config.md has no section for {heading}");
    }
    for (heading, doc_keys) in &documented {
        let table = by_heading[heading.as_str()];
        let mut keys: Vec<String> = table.plain.clone();
        keys.extend(table.tables.iter().filter(|(_, h)| !documented.contains_key(h)).map(|(k, _)| k.clone()));
        keys.sort();
        let stale: Vec<_> = doc_keys.iter().filter(|k| !keys.contains(k)).collect();
        let missing: Vec<_> = keys.iter().filter(|k| !doc_keys.contains(k)).collect();
        assert!(
            stale.is_empty() && missing.is_empty(),
            "{heading}: documented but not accepted {stale:?}; accepted but not documented {missing:?}"
        );
    }
}
