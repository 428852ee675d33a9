//! The gateway's configuration: one TOML file, read only here.
//!
//! Loading happens in two steps. [`diagnostics::deserialize_all`] turns the text into the raw
//! serde structs of [`raw`], collecting every syntax error, unknown key (with a suggestion) and
//! badly typed value; `validate` then checks meaning (ranges, addresses, names) and builds the
//! runtime types below. Every problem names the file, line, column and key, and all of them
//! are reported at once, so a farmer fixes the file in one go.

mod diagnostics;
mod lorawan;
mod raw;
mod secret;
mod units;

pub use diagnostics::{ConfigErrors, Location, Problem};
pub use lorawan::LorawanConfig;
pub use secret::{Secret, SecretSpec};
pub use units::{ByteSize, HumanDuration};

use fieldgate_adapters::modbus::{
    BusSettings, ClockUnit, DataType, DeviceClock, DeviceSettings, Order, Parity, Point, SerialSettings,
    Table, Transport,
};
use fieldgate_adapters::mqtt::{
    BrokerSettings, CommandTopic, Field, Mapping, MqttSettings, PayloadFormat, Protocol, TimestampUnit,
    TlsFiles, TopicPattern,
};
use fieldgate_proto::{DeviceId, Metric};
use fieldgate_store::{Retention, StoreConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub http: HttpConfig,
    /// The store's settings (its `data_dir` is the gateway's).
    pub store: StoreConfig,
    /// How MQTT devices reach the gateway; `None` when `[mqtt] enabled = false`.
    pub mqtt: Option<MqttConfig>,
    /// The gRPC API; `None` when `[grpc] enabled = false`.
    pub grpc: Option<GrpcConfig>,
    /// Modbus buses, each with its devices (devices sharing a connection share a bus).
    pub modbus: Vec<BusSettings>,
    /// The LoRaWAN network server; `None` without a `[lorawan]` section.
    pub lorawan: Option<LorawanConfig>,
    /// Forwarding to a collector; `None` without an `[upstream]` section.
    pub upstream: Option<crate::upstream::UpstreamSettings>,
    /// Harvest coordination; `None` without a `[coordination]` section.
    pub coordination: Option<crate::coordination::CoordinationSettings>,
}

/// MQTT: the broker, and where commands go.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub broker: MqttBroker,
    pub command_topic: CommandTopic,
    pub command_timeout: Duration,
}

/// The embedded broker, or a client of an external one.
#[derive(Debug, Clone)]
pub enum MqttBroker {
    Embedded { listen: SocketAddr, broker: BrokerSettings },
    External(MqttSettings),
}

/// The gRPC server.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    pub listen: SocketAddr,
    /// The bearer token calls must carry, if any.
    pub token: Option<Secret>,
    /// TLS, if `[grpc.tls]` is given.
    pub tls: Option<GrpcTls>,
}

/// The PEM material of `[grpc.tls]`, read and checked when the config is loaded.
#[derive(Clone)]
pub struct GrpcTls {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// With it, clients must present a certificate that chains to it.
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for GrpcTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTls")
            .field("cert", &format!("{} bytes", self.cert.len()))
            .field("key", &"<private key>")
            .field("client_ca", &self.client_ca.as_ref().map(|c| format!("{} bytes", c.len())))
            .finish()
    }
}

/// Mappings used when the config gives none: `fieldgate/<device>` carries a JSON object (its
/// numbers are metrics, an optional `ts` is the timestamp) and `fieldgate/<device>/<metric>` a
/// plain number.
pub const DEFAULT_MAPPINGS: &str = r#"
[[mqtt.mapping]]
topic = "fieldgate/{device}"
timestamp = "ts"
timestamp_required = false

[[mqtt.mapping]]
topic = "fieldgate/{device}/{metric}"
format = "number"
"#;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This gateway's name (same rules as a device id).
    pub id: String,
    /// Absolute, or relative to the working directory when the config came from a string.
    pub data_dir: PathBuf,
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

impl Config {
    /// Load and validate a config file, reading secrets from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let src = diagnostics::read(path)?;
        Config::parse(&src, path, &|var| std::env::var(var).ok())
    }

    /// Validate config text. `file` names it in errors and anchors relative paths; `env` looks
    /// up environment variables for secrets.
    pub fn parse(
        src: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let (raw, mut problems, mut index) = diagnostics::deserialize_all::<raw::RawConfig>(src);
        let base = file.parent().unwrap_or(Path::new(""));
        let mut v = Validator { problems: Vec::new() };
        let config = raw.map(|raw| v.config(raw, base, env));
        if !v.problems.is_empty() && index.is_none() {
            index = diagnostics::index(src);
        }
        problems.extend(
            v.problems
                .into_iter()
                .map(|(path, message)| diagnostics::locate(src, index.as_ref(), path, message)),
        );
        // Top to bottom, the order a person fixes a file in.
        problems.sort_by_key(|p| p.location.map(|l| (l.line, l.column)));
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigErrors { file: file.to_owned(), problems }),
        }
    }
}

/// Collects semantic problems as (path, message); the caller locates them in the file.
struct Validator {
    problems: Vec<(String, String)>,
}

impl Validator {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push((path.to_owned(), message.into()));
    }

    fn config(&mut self, raw: raw::RawConfig, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> Config {
        let gateway = self.gateway(raw.gateway, base);
        let mut store = self.store(raw.store, &gateway.data_dir);
        let upstream = raw.upstream.map(|u| self.upstream(u, &gateway.id, &mut store, base, env));
        let mqtt = self.mqtt(raw.mqtt, &gateway.id, base, env);
        let grpc = self.grpc(raw.grpc, env, base);
        let modbus = self.modbus(raw.modbus);
        let lorawan = self.lorawan(raw.lorawan, env);
        let coordination = raw.coordination.map(|c| self.coordination(c));
        Config {
            gateway,
            http: HttpConfig { listen: self.address("http.listen", &raw.http.listen) },
            store,
            mqtt,
            grpc,
            modbus,
            lorawan,
            upstream,
            coordination,
        }
    }

    /// `[coordination]`: the policy and the fleet.
    fn coordination(&mut self, raw: raw::RawCoordination) -> crate::coordination::CoordinationSettings {
        use crate::coordination::{MachineSpec, PolicyKind, Role};
        // Sub-second plans are for simulated harvests run faster than real time.
        const S: Duration = Duration::from_millis(100);
        let policy = PolicyKind::parse(&raw.policy).unwrap_or_else(|| {
            let names: Vec<&str> = PolicyKind::ALL.iter().map(|k| k.as_str()).collect();
            self.problem(
                "coordination.policy",
                format!("`{}` is not one of {}", raw.policy, names.join(", ")),
            );
            PolicyKind::Dispatcher
        });
        let interval = self.duration("coordination.interval", raw.interval, S, Duration::from_secs(300));
        let stale_after =
            self.duration("coordination.stale_after", raw.stale_after, S, Duration::from_secs(3600));
        let sync = self.duration("coordination.sync", raw.sync, Duration::ZERO, Duration::from_secs(600));
        if !(raw.time_scale.is_finite() && (0.001..=1000.0).contains(&raw.time_scale)) {
            self.problem(
                "coordination.time_scale",
                format!("must be from 0.001 to 1000, got {}", raw.time_scale),
            );
        }
        let time_scale = raw.time_scale.clamp(0.001, 1000.0);
        let origin = raw.origin.map(|o| {
            if !(-90.0..=90.0).contains(&o.lat) || !(-180.0..=180.0).contains(&o.lon) {
                self.problem(
                    "coordination.origin",
                    format!("({}, {}) is not a latitude and longitude", o.lat, o.lon),
                );
            }
            crate::coordination::track::GeoOrigin { lat: o.lat, lon: o.lon }
        });
        let mut machines = Vec::new();
        for (i, m) in raw.machine.into_iter().enumerate() {
            let path = format!("coordination.machine[{i}]");
            let Some(device) = self.device_id(&format!("{path}.device"), &m.device) else { continue };
            if machines.iter().any(|s: &MachineSpec| s.device == device) {
                self.problem(&format!("{path}.device"), format!("`{device}` is listed twice"));
            }
            let role = match m.role.as_str() {
                "combine" => Role::Combine,
                "cart" => Role::Cart,
                "truck" => Role::Truck,
                other => {
                    self.problem(
                        &format!("{path}.role"),
                        format!("`{other}` is not one of combine, cart, truck"),
                    );
                    continue;
                }
            };
            let mut positive = |key: &str, v: f64| {
                if !(v.is_finite() && v > 0.0) {
                    self.problem(&format!("{path}.{key}"), format!("must be a positive number, got {v}"));
                }
                v
            };
            let capacity_kg = positive("capacity_kg", m.capacity_kg);
            // Defaults from FIELD-NOTES: a combine empties ~134 L/s of wheat, a cart augers
            // 12 t/min and drives 15/10 km/h empty/loaded.
            let unload_kg_s = positive(
                "unload_kg_s",
                m.unload_kg_s.unwrap_or(if role == Role::Combine { 103.0 } else { 200.0 }),
            );
            let speed_empty_kmh = positive("speed_empty_kmh", m.speed_empty_kmh.unwrap_or(15.0));
            let speed_loaded_kmh = positive("speed_loaded_kmh", m.speed_loaded_kmh.unwrap_or(10.0));
            let load_from = m.load_from.and_then(|l| {
                let d = self.device_id(&format!("{path}.load_from.device"), &l.device)?;
                Some((d, l.metric))
            });
            machines.push(MachineSpec {
                device,
                role,
                capacity_kg,
                unload_kg_s,
                speed_empty_kmh,
                speed_loaded_kmh,
                load_from,
            });
        }
        if machines.is_empty() {
            self.problem("coordination", "lists no machines: add [[coordination.machine]] sections");
        }
        crate::coordination::CoordinationSettings {
            policy,
            interval,
            stale_after,
            sync,
            origin,
            time_scale,
            machines,
        }
    }

    /// `[upstream]`: the forwarder's settings, and the store's outbox they imply.
    fn upstream(
        &mut self,
        raw: raw::RawUpstream,
        gateway_id: &str,
        store: &mut StoreConfig,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> crate::upstream::UpstreamSettings {
        const S: Duration = Duration::from_secs(1);
        const HOUR: Duration = Duration::from_secs(3600);
        let https = raw.endpoint.starts_with("https://");
        if !https && !raw.endpoint.starts_with("http://") {
            self.problem(
                "upstream.endpoint",
                format!("`{}` is not like \"http://host:50052\" or \"https://host:50052\"", raw.endpoint),
            );
        } else if tonic::transport::Endpoint::from_shared(raw.endpoint.clone()).is_err() {
            self.problem("upstream.endpoint", format!("`{}` is not a valid URL", raw.endpoint));
        }
        let mut windows = Vec::new();
        for (i, w) in raw.windows.iter().enumerate() {
            if store.windows.contains(&w.0) {
                windows.push(w.0);
            } else {
                self.problem(&format!("upstream.windows[{i}]"), format!("{w} is not one of store.windows"));
            }
        }
        if raw.windows.is_empty() {
            // All but the finest: the fleet view needs minutes, not the 10 s detail.
            windows = store.windows.iter().copied().skip(usize::from(store.windows.len() > 1)).collect();
        }
        if raw.max_disk.0 < 64 << 10 {
            self.problem("upstream.max_disk", format!("must be at least 64KiB, got {}", raw.max_disk));
        }
        store.outbox = Some(fieldgate_store::OutboxConfig {
            windows,
            max_bytes: raw.max_disk.0,
            batch_rows: self.count("upstream.batch_rows", raw.batch_rows, 1, 1_000_000),
            batch_bytes: {
                if !(4 << 10..=16 << 20).contains(&raw.batch_bytes.0) {
                    self.problem(
                        "upstream.batch_bytes",
                        format!("must be between 4KiB and 16MiB, got {}", raw.batch_bytes),
                    );
                }
                raw.batch_bytes.0
            },
        });
        let token = raw.token.and_then(|t| self.token("upstream.token", t, env)).filter(|t| {
            // It travels in an HTTP header: caught here, not at every connection attempt.
            let printable = t.expose().bytes().all(|b| b.is_ascii_graphic());
            if !printable {
                self.problem("upstream.token", "the token must be printable ASCII without spaces");
            }
            printable
        });
        let tls = raw.tls.and_then(|t| {
            let ca = self.read_file("upstream.tls.ca_file", base, &t.ca_file)?;
            let identity = match (&t.cert_file, &t.key_file) {
                (Some(c), Some(k)) => Some((
                    self.read_file("upstream.tls.cert_file", base, c)?,
                    self.read_file("upstream.tls.key_file", base, k)?,
                )),
                (None, None) => None,
                _ => {
                    self.problem("upstream.tls", "give both `cert_file` and `key_file`, or neither");
                    None
                }
            };
            Some(crate::upstream::UpstreamTls { ca, identity, domain: t.domain })
        });
        if https && tls.is_none() {
            self.problem(
                "upstream.endpoint",
                "an https endpoint needs [upstream.tls] with the collector's `ca_file`",
            );
        }
        if !https && tls.is_some() {
            self.problem("upstream.tls", "TLS needs an https:// endpoint");
        }
        let reconnect_min =
            self.duration("upstream.reconnect_min", raw.reconnect_min, Duration::from_millis(10), HOUR);
        crate::upstream::UpstreamSettings {
            endpoint: raw.endpoint,
            gateway_id: gateway_id.to_owned(),
            token,
            tls,
            max_in_flight: self.count("upstream.max_in_flight", raw.max_in_flight, 1, 1024),
            max_rate: raw.max_rate.0,
            compression: raw.compression,
            keepalive: self.duration("upstream.keepalive", raw.keepalive, S, HOUR),
            keepalive_timeout: self.duration("upstream.keepalive_timeout", raw.keepalive_timeout, S, HOUR),
            ack_timeout: self.duration("upstream.ack_timeout", raw.ack_timeout, S, HOUR),
            reconnect_min,
            reconnect_max: self.duration(
                "upstream.reconnect_max",
                raw.reconnect_max,
                reconnect_min,
                24 * HOUR,
            ),
        }
    }

    fn modbus(&mut self, raw: raw::RawModbus) -> Vec<BusSettings> {
        const MS: Duration = Duration::from_millis(1);
        let reconnect_min =
            self.duration("modbus.reconnect_min", raw.reconnect_min, 10 * MS, Duration::from_secs(600));
        let reconnect_max = self.duration(
            "modbus.reconnect_max",
            raw.reconnect_max,
            reconnect_min,
            Duration::from_secs(3600),
        );
        let breaker_max =
            self.duration("modbus.backoff_max", raw.backoff_max, 10 * MS, Duration::from_secs(86_400));
        let mut buses: Vec<BusSettings> = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for (i, d) in raw.devices.into_iter().enumerate() {
            let path = format!("modbus.device[{i}]");
            let Some((transport, device)) = self.modbus_device(&path, d, raw.max_gap) else { continue };
            if !ids.insert(device.device.clone()) {
                self.problem(
                    &format!("{path}.id"),
                    format!("`{}` is already a Modbus device", device.device),
                );
                continue;
            }
            let same_line = |t: &Transport| match (t, &transport) {
                (Transport::Rtu(a), Transport::Rtu(b)) => a.path == b.path,
                (a, b) => a == b,
            };
            match buses.iter_mut().find(|b| same_line(&b.transport)) {
                Some(bus) if bus.transport != transport => self.problem(
                    &format!("{path}.serial"),
                    "another device on this serial line has different line settings (baud, parity, bits)",
                ),
                Some(bus) => {
                    if bus.devices.iter().any(|o| o.unit == device.unit) {
                        self.problem(
                            &format!("{path}.unit"),
                            format!("unit {} is already used on this bus", device.unit),
                        );
                    }
                    bus.devices.push(device);
                }
                None => buses.push(BusSettings {
                    transport,
                    devices: vec![device],
                    reconnect_min,
                    reconnect_max,
                    breaker_max,
                }),
            }
        }
        buses
    }

    fn modbus_device(
        &mut self,
        path: &str,
        raw: raw::RawModbusDevice,
        max_gap: u16,
    ) -> Option<(Transport, DeviceSettings)> {
        const MS: Duration = Duration::from_millis(1);
        let device = match DeviceId::new(&raw.id) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(&format!("{path}.id"), e.to_string());
                None
            }
        };
        let transport = match (&raw.tcp, &raw.rtu_over_tcp, &raw.serial) {
            (Some(a), None, None) => Some(Transport::Tcp(a.clone())),
            (None, Some(a), None) => Some(Transport::RtuOverTcp(a.clone())),
            (None, None, Some(p)) => {
                let parity = match raw.parity.as_str() {
                    "none" => Parity::None,
                    "even" => Parity::Even,
                    "odd" => Parity::Odd,
                    other => {
                        self.problem(
                            &format!("{path}.parity"),
                            format!("`{other}`: use \"none\", \"even\" or \"odd\""),
                        );
                        Parity::Even
                    }
                };
                if !(1200..=921_600).contains(&raw.baud) {
                    self.problem(
                        &format!("{path}.baud"),
                        format!("{} is not a serial speed (1200 to 921600)", raw.baud),
                    );
                }
                if !matches!(raw.data_bits, 7 | 8) {
                    self.problem(
                        &format!("{path}.data_bits"),
                        "Modbus RTU uses 8 data bits (7 on some old devices)",
                    );
                }
                if !matches!(raw.stop_bits, 1 | 2) {
                    self.problem(&format!("{path}.stop_bits"), "use 1 or 2");
                }
                Some(Transport::Rtu(SerialSettings {
                    path: p.clone(),
                    baud: raw.baud,
                    parity,
                    data_bits: raw.data_bits,
                    stop_bits: raw.stop_bits,
                }))
            }
            _ => {
                self.problem(
                    path,
                    "give exactly one of `tcp`, `rtu_over_tcp` (\"host:port\") or `serial` (a device path)",
                );
                None
            }
        };
        for (key, addr) in [("tcp", &raw.tcp), ("rtu_over_tcp", &raw.rtu_over_tcp)] {
            if let Some(a) = addr
                && a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none()
            {
                self.problem(
                    &format!("{path}.{key}"),
                    format!("`{a}` is not \"host:port\" (Modbus TCP is usually port 502)"),
                );
            }
        }
        let max_unit = if matches!(transport, Some(Transport::Tcp(_))) { 255 } else { 247 };
        if raw.unit == 0 || raw.unit > max_unit {
            self.problem(
                &format!("{path}.unit"),
                format!("use 1 to {max_unit} (0 is broadcast, which nobody answers)"),
            );
        }
        let poll = self.duration(&format!("{path}.poll"), raw.poll, 10 * MS, Duration::from_secs(86_400));
        let timeout =
            self.duration(&format!("{path}.timeout"), raw.timeout, 10 * MS, Duration::from_secs(60));
        if raw.retries > 10 {
            self.problem(&format!("{path}.retries"), "at most 10");
        }
        if raw.points.is_empty() {
            self.problem(path, "a device needs at least one `[[modbus.device.point]]`");
        }
        let mut points: Vec<Point> = Vec::new();
        for (j, p) in raw.points.into_iter().enumerate() {
            let ppath = format!("{path}.point[{j}]");
            if let Some(point) = self.modbus_point(&ppath, p) {
                if points.iter().any(|o| o.metric == point.metric) {
                    self.problem(
                        &format!("{ppath}.metric"),
                        format!("`{}` is already a point of this device", point.metric),
                    );
                }
                points.push(point);
            }
        }
        let clock = raw.timestamp.and_then(|c| self.modbus_clock(&format!("{path}.timestamp"), c));
        let settings = DeviceSettings {
            device: device?,
            unit: raw.unit,
            poll,
            timeout,
            retries: raw.retries,
            points,
            max_gap: raw.max_gap.unwrap_or(max_gap),
            clock,
        };
        Some((transport?, settings))
    }

    /// A device's clock: a register point with a type and unit of its own.
    fn modbus_clock(&mut self, path: &str, raw: raw::RawClock) -> Option<DeviceClock> {
        let unit = ClockUnit::parse(&raw.unit);
        if unit.is_none() {
            self.problem(
                &format!("{path}.unit"),
                format!("`{}`: use \"s\", \"ms\", \"us\" or \"ns\" since the Unix epoch", raw.unit),
            );
        }
        if !matches!(raw.data_type.as_str(), "u32" | "i32" | "u64" | "i64") {
            self.problem(
                &format!("{path}.type"),
                format!("`{}`: a clock is an integer count: use u32, i32, u64 or i64", raw.data_type),
            );
            return None;
        }
        let max_age = self.duration(
            &format!("{path}.max_age"),
            raw.max_age,
            Duration::from_secs(1),
            Duration::from_secs(10 * 365 * 86_400),
        );
        let point = self.modbus_point(
            path,
            raw::RawPoint {
                metric: "device_time".to_owned(),
                table: raw.table,
                address: raw.address,
                data_type: Some(raw.data_type),
                order: raw.order,
                bit: None,
                registers: None,
                scale: 1.0,
                offset: 0.0,
                unit: None,
            },
        )?;
        if point.table.is_bits() {
            self.problem(&format!("{path}.table"), "a clock lives in input or holding registers");
            return None;
        }
        Some(DeviceClock { point, unit: unit?, max_age })
    }

    fn modbus_point(&mut self, path: &str, raw: raw::RawPoint) -> Option<Point> {
        let metric =
            Metric::new(&raw.metric).map_err(|e| self.problem(&format!("{path}.metric"), e.to_string())).ok();
        let table = match raw.table.as_deref() {
            None => None,
            Some("coil") => Some(Table::Coil),
            Some("discrete_input") => Some(Table::DiscreteInput),
            Some("input_register") => Some(Table::InputRegister),
            Some("holding_register") => Some(Table::HoldingRegister),
            Some(other) => {
                self.problem(
                    &format!("{path}.table"),
                    format!("`{other}`: use coil, discrete_input, input_register or holding_register"),
                );
                return None;
            }
        };
        let text = match &raw.address {
            raw::RawAddress::Number(n) => n.to_string(),
            raw::RawAddress::Text(t) => t.clone(),
        };
        let (table, address) = match table {
            // With the table given, the address is 0-based as the protocol numbers it.
            Some(t) => match text.parse::<u16>() {
                Ok(a) => (t, a),
                Err(_) => {
                    self.problem(
                        &format!("{path}.address"),
                        format!("`{text}`: with `table` set the address is 0-based (0 to 65535); leave `table` out to write it 1-based like 40001"),
                    );
                    return None;
                }
            },
            None => match fieldgate_adapters::modbus::parse_address(&text) {
                Ok((Some(t), a)) => (t, a),
                Ok((None, _)) => {
                    self.problem(
                        &format!("{path}.address"),
                        format!("`{text}` does not say its table: give `table`, or write it 1-based like 40001 (holding) or 30001 (input)"),
                    );
                    return None;
                }
                Err(e) => {
                    self.problem(&format!("{path}.address"), e);
                    return None;
                }
            },
        };
        let name = raw
            .data_type
            .clone()
            .unwrap_or_else(|| if table.is_bits() { "bool".into() } else { "u16".into() });
        let data_type = match name.as_str() {
            "bool" => DataType::Bool,
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            "bit" => match raw.bit {
                Some(b) if b < 16 => DataType::Bit(b),
                _ => {
                    self.problem(
                        &format!("{path}.bit"),
                        "a `bit` point needs `bit = 0..15` (0 = least significant)",
                    );
                    return None;
                }
            },
            "string" => match raw.registers {
                Some(n) if (1..=125).contains(&n) => DataType::String(n),
                _ => {
                    self.problem(&format!("{path}.registers"), "a `string` point needs `registers = 1..125`");
                    return None;
                }
            },
            other => {
                self.problem(
                    &format!("{path}.type"),
                    format!("`{other}`: use bool, u16, i16, u32, i32, u64, i64, f32, f64, bit or string"),
                );
                return None;
            }
        };
        if table.is_bits() && data_type != DataType::Bool {
            self.problem(&format!("{path}.type"), format!("a {table} holds one bit: use type = \"bool\""));
            return None;
        }
        let Some(order) = Order::parse(&raw.order) else {
            self.problem(&format!("{path}.order"), format!("`{}`: use ABCD, BADC, CDAB or DCBA", raw.order));
            return None;
        };
        if !raw.scale.is_finite() || raw.scale == 0.0 || !raw.offset.is_finite() {
            self.problem(&format!("{path}.scale"), "scale must be a non-zero number and offset a number");
            return None;
        }
        let width = if table.is_bits() { 1 } else { data_type.width() };
        if u32::from(address) + u32::from(width) > 65_536 {
            self.problem(
                &format!("{path}.address"),
                format!("{width} registers from {address} run past 65535"),
            );
            return None;
        }
        Some(Point {
            metric: metric?,
            table,
            address,
            data_type,
            order,
            scale: raw.scale,
            offset: raw.offset,
            unit: raw.unit,
        })
    }

    fn grpc(
        &mut self,
        raw: raw::RawGrpc,
        env: &dyn Fn(&str) -> Option<String>,
        base: &Path,
    ) -> Option<GrpcConfig> {
        let listen = self.address("grpc.listen", &raw.listen);
        let token = raw.token.and_then(|t| self.token("grpc.token", t, env));
        if raw.enabled && token.is_none() && !listen.ip().is_loopback() {
            self.problem(
                "grpc.listen",
                "the gRPC API sends commands to machines: beyond loopback it needs a `token` in [grpc]",
            );
        }
        let tls = raw.tls.and_then(|t| self.grpc_tls(t, base));
        raw.enabled.then_some(GrpcConfig { listen, token, tls })
    }

    /// The bytes of the file at `path` (relative to the config file), or a problem at `key`
    /// saying why it cannot be read.
    fn read_file(&mut self, key: &str, base: &Path, path: &Path) -> Option<Vec<u8>> {
        let path = base.join(path);
        std::fs::read(&path)
            .map_err(|e| self.problem(key, format!("cannot read {}: {e}", path.display())))
            .ok()
    }

    /// Read the PEM files of `[grpc.tls]` and check that they make a working server
    /// configuration, naming the key of whatever is wrong.
    fn grpc_tls(&mut self, raw: raw::RawGrpcTls, base: &Path) -> Option<GrpcTls> {
        let cert = self.read_file("grpc.tls.cert_file", base, &raw.cert_file);
        let key = self.read_file("grpc.tls.key_file", base, &raw.key_file);
        let client_ca = match &raw.client_ca_file {
            Some(p) => Some(self.read_file("grpc.tls.client_ca_file", base, p)?),
            None => None,
        };
        let tls = GrpcTls { cert: cert?, key: key?, client_ca };
        match server_tls_check(&tls) {
            Ok(()) => Some(tls),
            Err((key, why)) => {
                self.problem(&format!("grpc.tls.{key}"), why);
                None
            }
        }
    }

    fn gateway(&mut self, raw: raw::RawGateway, base: &Path) -> GatewayConfig {
        if let Err(e) = DeviceId::new(&raw.id) {
            let detail = e.to_string().replacen("device id", "gateway id", 1);
            self.problem("gateway.id", detail);
        }
        if raw.data_dir.as_os_str().is_empty() {
            self.problem("gateway.data_dir", "must not be empty");
        }
        GatewayConfig {
            id: raw.id,
            data_dir: base.join(raw.data_dir),
            shutdown_timeout: self.duration(
                "gateway.shutdown_timeout",
                raw.shutdown_timeout,
                Duration::from_secs(1),
                Duration::from_secs(600),
            ),
        }
    }

    /// A bearer token: resolved from where the file says, and not empty.
    fn token(&mut self, key: &str, spec: SecretSpec, env: &dyn Fn(&str) -> Option<String>) -> Option<Secret> {
        match spec.resolve(env) {
            Ok(secret) if secret.expose().is_empty() => {
                self.problem(key, "the token is empty");
                None
            }
            Ok(secret) => Some(secret),
            Err(e) => {
                self.problem(key, e);
                None
            }
        }
    }

    fn address(&mut self, path: &str, s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| {
            self.problem(path, format!("`{s}` is not an address like \"127.0.0.1:9464\" or \"[::1]:9464\""));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn store(&mut self, raw: raw::RawStore, data_dir: &Path) -> StoreConfig {
        const MS: Duration = Duration::from_millis(1);
        const S: Duration = Duration::from_secs(1);
        const DAY: Duration = Duration::from_secs(86_400);
        let mut windows = Vec::new();
        if raw.windows.is_empty() {
            self.problem("store.windows", "give at least one window size, e.g. [\"1m\"]");
        }
        for (i, w) in raw.windows.iter().enumerate() {
            let path = format!("store.windows[{i}]");
            let w = self.duration(&path, *w, 100 * MS, DAY);
            if windows.contains(&w) {
                self.problem(&path, format!("{} is listed twice", HumanDuration(w)));
            }
            windows.push(w);
        }
        windows.sort();
        windows.dedup();
        let mut retention = Retention::default();
        for (label, age) in &raw.retention.rollups {
            let path = format!("store.retention.rollups.{label}");
            match HumanDuration::parse(label) {
                Ok(w) if windows.contains(&w.0) => {
                    retention.rollups.push((w.0, self.duration(&path, *age, S, 3650 * DAY)))
                }
                Ok(_) => self.problem(&path, format!("`{label}` is not one of store.windows")),
                Err(e) => self.problem(&path, e),
            }
        }
        retention.recordings =
            raw.retention.recordings.map(|a| self.duration("store.retention.recordings", a, S, 3650 * DAY));
        retention.max_bytes = raw.retention.max_disk.map(|b| {
            if b.0 < 64 << 20 {
                self.problem("store.retention.max_disk", format!("must be at least 64MiB, got {b}"));
            }
            b.0
        });
        StoreConfig {
            data_dir: data_dir.to_owned(),
            windows,
            allowed_lateness: self.duration(
                "store.allowed_lateness",
                raw.allowed_lateness,
                Duration::ZERO,
                DAY,
            ),
            idle_close: self.duration("store.idle_close", raw.idle_close, S, 7 * DAY),
            max_clock_skew: self.duration("store.max_clock_skew", raw.max_clock_skew, S, DAY),
            commit_delay: self.duration("store.commit_delay", raw.commit_delay, Duration::ZERO, S),
            segment_bytes: {
                let b = raw.wal_segment_size;
                if !(1 << 20..=1 << 30).contains(&b.0) {
                    self.problem("store.wal_segment_size", format!("must be between 1MiB and 1GiB, got {b}"));
                }
                b.0
            },
            flush_interval: self.duration(
                "store.flush_interval",
                raw.flush_interval,
                S,
                Duration::from_secs(3600),
            ),
            flush_rows: self.count("store.flush_rows", raw.flush_rows, 1000, 100_000_000),
            row_group_rows: self.count("store.row_group_rows", raw.row_group_rows, 1000, 10_000_000),
            recordings: self.recordings(raw.recordings),
            queue_batches: self.count("store.queue", raw.queue, 1, 1_000_000),
            retention,
            // Set with the upstream forwarder's `[upstream]` section, which comes with it.
            outbox: None,
        }
    }

    fn mqtt(
        &mut self,
        raw: raw::RawMqtt,
        gateway_id: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<MqttConfig> {
        let max_payload = raw.max_payload.0;
        if !(16..=256 << 20).contains(&max_payload) {
            self.problem(
                "mqtt.max_payload",
                format!("must be between 16B and 256MiB, got {}", raw.max_payload),
            );
        }
        let mappings = if raw.mappings.is_empty() {
            default_mappings()
        } else {
            raw.mappings
                .into_iter()
                .enumerate()
                .filter_map(|(i, m)| self.mapping(&format!("mqtt.mapping[{i}]"), m, max_payload as usize))
                .collect()
        };
        let command_topic = CommandTopic::parse(&raw.command_topic).unwrap_or_else(|e| {
            self.problem("mqtt.command_topic", e.to_string());
            CommandTopic::parse(CommandTopic::DEFAULT).expect("the default is valid")
        });
        let command_timeout = self.duration(
            "mqtt.command_timeout",
            raw.command_timeout,
            Duration::from_millis(100),
            Duration::from_secs(600),
        );
        // Room for the payload plus the topic and the packet header.
        let max_packet = max_payload as usize + 64 * 1024;
        let mut secret = |path: &str, spec: Option<SecretSpec>, username: &Option<String>| {
            let password = spec.and_then(|p| match p.resolve(env) {
                Ok(secret) => Some(secret.expose().to_owned()),
                Err(e) => {
                    self.problem(path, e);
                    None
                }
            });
            if password.is_some() && username.is_none() {
                self.problem(path, "a password needs a `username`");
            }
            password
        };
        let broker = match (raw.embedded, raw.external) {
            (Some(_), Some(_)) => {
                self.problem(
                    "mqtt.external",
                    "use either [mqtt.embedded] or [mqtt.external], not both: devices connect to one broker",
                );
                return None;
            }
            (None, Some(mut ext)) => {
                let password = secret("mqtt.external.password", ext.password.take(), &ext.username);
                MqttBroker::External(self.external(ext, password, gateway_id, base, max_packet, mappings))
            }
            (embedded, None) => {
                let e = embedded.unwrap_or_default();
                let password = secret("mqtt.embedded.password", e.password, &e.username);
                MqttBroker::Embedded {
                    listen: self.address("mqtt.embedded.listen", &e.listen),
                    broker: BrokerSettings {
                        username: e.username,
                        password,
                        max_packet,
                        max_inflight: self.count("mqtt.embedded.max_inflight", e.max_inflight, 1, 65_535)
                            as u16,
                        max_queued: self.count("mqtt.embedded.max_queued", e.max_queued, 1, 1_000_000),
                        mappings,
                    },
                }
            }
        };
        raw.enabled.then_some(MqttConfig { broker, command_topic, command_timeout })
    }

    fn external(
        &mut self,
        raw: raw::RawExternal,
        password: Option<String>,
        gateway_id: &str,
        base: &Path,
        max_packet: usize,
        mappings: Vec<Mapping>,
    ) -> MqttSettings {
        const S: Duration = Duration::from_secs(1);
        if raw.host.is_empty() {
            self.problem("mqtt.external.host", "give the broker's host name or address");
        }
        let client_id = raw.client_id.unwrap_or_else(|| format!("fieldgate-{gateway_id}"));
        if client_id.is_empty() || client_id.len() > 128 || !client_id.chars().all(|c| c.is_ascii_graphic()) {
            self.problem("mqtt.external.client_id", "use 1 to 128 printable ASCII characters without spaces");
        }
        // rumqttc panics on a keep-alive under one second: refuse it here.
        let keep_alive =
            self.duration("mqtt.external.keep_alive", raw.keep_alive, S, Duration::from_secs(3600));
        let reconnect_min = self.duration(
            "mqtt.external.reconnect_min",
            raw.reconnect_min,
            Duration::from_millis(10),
            Duration::from_secs(600),
        );
        let reconnect_max = self.duration(
            "mqtt.external.reconnect_max",
            raw.reconnect_max,
            reconnect_min,
            Duration::from_secs(3600),
        );
        let protocol = match raw.protocol_version.as_str() {
            "3.1.1" => Protocol::V311,
            "5" | "5.0" => Protocol::V5,
            other => {
                self.problem(
                    "mqtt.external.protocol_version",
                    format!("`{other}` is not a version fieldgate speaks: use \"3.1.1\" or \"5\""),
                );
                Protocol::V311
            }
        };
        let port = raw.port.unwrap_or(if raw.tls.is_some() { 8883 } else { 1883 });
        let tls = raw.tls.and_then(|t| self.tls(t, base));
        MqttSettings {
            host: raw.host,
            port,
            protocol,
            tls,
            client_id,
            username: raw.username,
            password,
            keep_alive,
            reconnect_min,
            reconnect_max,
            max_packet,
            mappings,
        }
    }

    /// Read the PEM files of `[mqtt.external.tls]` and build the TLS configuration, naming
    /// the key of whatever is missing or unreadable.
    fn tls(&mut self, raw: raw::RawTls, base: &Path) -> Option<std::sync::Arc<rustls::ClientConfig>> {
        let mut read = |key: &str, path: &Option<PathBuf>| -> Option<Vec<u8>> {
            self.read_file(&format!("mqtt.external.tls.{key}"), base, path.as_ref()?)
        };
        let ca = read("ca_file", &raw.ca_file);
        let cert = read("cert_file", &raw.cert_file);
        let key = read("key_file", &raw.key_file);
        if (raw.ca_file.is_some() && ca.is_none())
            || (raw.cert_file.is_some() && cert.is_none())
            || (raw.key_file.is_some() && key.is_none())
        {
            return None;
        }
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                self.problem("mqtt.external.tls.cert_file", "a client certificate needs its `key_file`");
                return None;
            }
            (None, Some(_)) => {
                self.problem("mqtt.external.tls.key_file", "a client key needs its `cert_file`");
                return None;
            }
        };
        let has_client = client.is_some();
        match fieldgate_adapters::mqtt::tls_client_config(&TlsFiles { ca, client }) {
            Ok(config) => Some(config),
            Err(e) => {
                use fieldgate_adapters::mqtt::TlsError as E;
                let key = match &e {
                    E::NoCa | E::BadCa(_) | E::NativeRoots(_) if raw.ca_file.is_some() || !has_client => {
                        "ca_file"
                    }
                    E::BadKey(_) => "key_file",
                    _ => "cert_file",
                };
                self.problem(&format!("mqtt.external.tls.{key}"), e.to_string());
                None
            }
        }
    }

    fn mapping(&mut self, path: &str, raw: raw::RawMapping, max_payload: usize) -> Option<Mapping> {
        let topic = match TopicPattern::parse(&raw.topic) {
            Ok(t) => t,
            Err(e) => {
                self.problem(&format!("{path}.topic"), e.to_string());
                return None;
            }
        };
        let device = raw.device.as_deref().and_then(|d| match DeviceId::new(d) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(&format!("{path}.device"), e.to_string());
                None
            }
        });
        if !topic.has_device() && raw.device.is_none() {
            self.problem(
                &format!("{path}.topic"),
                format!("`{topic}` has no {{device}} level; add one or give `device = \"...\"`"),
            );
        }
        let metric = raw.metric.as_deref().and_then(|m| match Metric::new(m) {
            Ok(m) => Some(m),
            Err(e) => {
                self.problem(&format!("{path}.metric"), e.to_string());
                None
            }
        });
        let format = match raw.format {
            raw::RawFormat::Json => PayloadFormat::Json,
            raw::RawFormat::Number => PayloadFormat::Number,
            raw::RawFormat::Bool => PayloadFormat::Bool,
        };
        let pointer = |p: &str| if p.starts_with('/') { p.to_owned() } else { format!("/{p}") };
        let mut fields = Vec::new();
        for (name, at) in &raw.fields {
            match Metric::new(name) {
                Ok(metric) => fields.push(Field { metric, pointer: pointer(at) }),
                Err(e) => self.problem(&format!("{path}.fields.{name}"), e.to_string()),
            }
        }
        if format != PayloadFormat::Json {
            for (key, set) in [("fields", !raw.fields.is_empty()), ("timestamp", raw.timestamp.is_some())] {
                if set {
                    self.problem(
                        &format!("{path}.{key}"),
                        "only JSON payloads have fields; remove it or use format = \"json\"",
                    );
                }
            }
        }
        let timestamp_unit = match raw.timestamp_unit {
            raw::RawTimestampUnit::Auto => TimestampUnit::Auto,
            raw::RawTimestampUnit::Rfc3339 => TimestampUnit::Rfc3339,
            raw::RawTimestampUnit::S => TimestampUnit::Seconds,
            raw::RawTimestampUnit::Ms => TimestampUnit::Millis,
            raw::RawTimestampUnit::Us => TimestampUnit::Micros,
            raw::RawTimestampUnit::Ns => TimestampUnit::Nanos,
        };
        Some(Mapping {
            topic,
            format,
            device,
            metric,
            fields,
            timestamp: raw.timestamp.as_deref().map(pointer),
            timestamp_required: raw.timestamp_required,
            timestamp_unit,
            max_payload,
        })
    }

    /// `[store] recordings`: all, none, or protocols and devices by name.
    fn recordings(&mut self, raw: raw::RawRecordings) -> fieldgate_store::Recordings {
        use fieldgate_store::Recordings;
        match raw {
            raw::RawRecordings::Flag(true) => Recordings::All,
            raw::RawRecordings::Flag(false) => Recordings::Off,
            raw::RawRecordings::Only(names) => {
                let (mut sources, mut devices) = (Vec::new(), Vec::new());
                for (i, name) in names.iter().enumerate() {
                    match fieldgate_proto::Source::ALL.into_iter().find(|s| s.as_str() == name) {
                        Some(source) => sources.push(source),
                        None => {
                            if let Some(d) = self.device_id(&format!("store.recordings[{i}]"), name) {
                                devices.push(d);
                            }
                        }
                    }
                }
                if names.is_empty() { Recordings::Off } else { Recordings::Only { sources, devices } }
            }
        }
    }

    fn device_id(&mut self, path: &str, name: &str) -> Option<DeviceId> {
        DeviceId::new(name).map_err(|e| self.problem(path, e.to_string())).ok()
    }

    fn count(&mut self, path: &str, v: usize, min: usize, max: usize) -> usize {
        if !(min..=max).contains(&v) {
            self.problem(path, format!("must be between {min} and {max}, got {v}"));
        }
        v.clamp(min, max)
    }

    fn duration(&mut self, path: &str, d: HumanDuration, min: Duration, max: Duration) -> Duration {
        if d.0 < min {
            self.problem(path, format!("must be at least {}, got {d}", HumanDuration(min)));
        } else if d.0 > max {
            self.problem(path, format!("must be at most {}, got {d}", HumanDuration(max)));
        }
        d.0.clamp(min, max)
    }
}

/// The [`DEFAULT_MAPPINGS`], validated like any config.
fn default_mappings() -> Vec<Mapping> {
    let (raw, problems, _) =
        diagnostics::deserialize_all::<raw::RawConfig>(&format!("[gateway]\nid = \"x\"\n{DEFAULT_MAPPINGS}"));
    assert!(problems.is_empty(), "the default mappings are valid: {problems:?}");
    let mut v = Validator { problems: Vec::new() };
    let raw = raw.expect("parsed");
    let mappings: Vec<Mapping> = raw
        .mqtt
        .mappings
        .into_iter()
        .filter_map(|m| v.mapping("default", m, raw.mqtt.max_payload.0 as usize))
        .collect();
    assert!(v.problems.is_empty(), "the default mappings are valid: {:?}", v.problems);
    mappings
}

#[cfg(test)]
mod tests;

/// Build a rustls server configuration from `tls` as the gRPC server will: the key of the
/// file at fault and why, if it cannot be.
fn server_tls_check(tls: &GrpcTls) -> Result<(), (&'static str, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |pem: &[u8]| CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>();
    let chain = certs(&tls.cert).map_err(|e| ("cert_file", e.to_string()))?;
    if chain.is_empty() {
        return Err(("cert_file", "no PEM certificate found".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(&tls.key)
        .map_err(|e| ("key_file", format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cert_file", e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = certs(pem).map_err(|e| ("client_ca_file", e.to_string()))?;
            if cas.is_empty() {
                return Err(("client_ca_file", "no PEM certificate found".to_owned()));
            }
            for ca in cas {
                roots.add(ca).map_err(|e| ("client_ca_file", e.to_string()))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| ("client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(chain, key)
        .map(|_| ())
        .map_err(|e| ("key_file", format!("the certificate and key do not work together: {e}")))
}
