//! The config file as written: serde structs that mirror the TOML, with defaults next to
//! their fields. `validate` turns them into the runtime types of [`super`].

use super::secret::SecretSpec;
use super::units::{ByteSize, HumanDuration};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) gateway: RawGateway,
    #[serde(default)]
    pub(crate) http: RawHttp,
    #[serde(default)]
    pub(crate) store: RawStore,
    #[serde(default)]
    pub(crate) mqtt: RawMqtt,
    #[serde(default)]
    pub(crate) grpc: RawGrpc,
    #[serde(default)]
    pub(crate) modbus: RawModbus,
    pub(crate) lorawan: Option<super::lorawan::RawLorawan>,
    pub(crate) upstream: Option<RawUpstream>,
    pub(crate) coordination: Option<RawCoordination>,
}

/// `[coordination]`: harvest coordination of combines, grain carts and trucks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCoordination {
    #[serde(default = "default_policy")]
    pub(crate) policy: String,
    #[serde(default = "default_plan_interval")]
    pub(crate) interval: HumanDuration,
    #[serde(default = "default_stale_after")]
    pub(crate) stale_after: HumanDuration,
    #[serde(default = "default_sync")]
    pub(crate) sync: HumanDuration,
    /// The staging area in degrees, for machines that report `lat`/`lon`.
    pub(crate) origin: Option<RawGeo>,
    /// Harvest seconds per real second, for simulated harvests run faster than real time.
    #[serde(default = "one")]
    pub(crate) time_scale: f64,
    #[serde(default)]
    pub(crate) machine: Vec<RawMachine>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGeo {
    pub(crate) lat: f64,
    pub(crate) lon: f64,
}

/// `[[coordination.machine]]`: one combine, cart or truck.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMachine {
    pub(crate) device: String,
    pub(crate) role: String,
    pub(crate) capacity_kg: f64,
    pub(crate) unload_kg_s: Option<f64>,
    pub(crate) speed_empty_kmh: Option<f64>,
    pub(crate) speed_loaded_kmh: Option<f64>,
    pub(crate) load_from: Option<RawLoadFrom>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLoadFrom {
    pub(crate) device: String,
    pub(crate) metric: String,
}

fn default_policy() -> String {
    "dispatcher".to_owned()
}
fn default_plan_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_stale_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_sync() -> HumanDuration {
    HumanDuration(Duration::from_secs(20))
}

/// `[upstream]`: forward closed rollup windows to a collector.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    /// `http://host:port` or `https://host:port`.
    pub(crate) endpoint: String,
    pub(crate) token: Option<SecretSpec>,
    /// Window sizes to forward (each one of store.windows); default: all but the finest.
    #[serde(default)]
    pub(crate) windows: Vec<HumanDuration>,
    /// Disk the outbox may use before its oldest batches are dropped (and reported as a gap).
    #[serde(default = "default_upstream_max_disk")]
    pub(crate) max_disk: ByteSize,
    #[serde(default = "default_batch_rows")]
    pub(crate) batch_rows: usize,
    #[serde(default = "default_batch_bytes")]
    pub(crate) batch_bytes: ByteSize,
    #[serde(default = "default_in_flight")]
    pub(crate) max_in_flight: usize,
    /// Bytes a second at most; 0: no cap.
    #[serde(default = "default_zero_size")]
    pub(crate) max_rate: ByteSize,
    #[serde(default = "yes")]
    pub(crate) compression: bool,
    #[serde(default = "default_keepalive")]
    pub(crate) keepalive: HumanDuration,
    #[serde(default = "default_keepalive_timeout")]
    pub(crate) keepalive_timeout: HumanDuration,
    #[serde(default = "default_ack_timeout")]
    pub(crate) ack_timeout: HumanDuration,
    #[serde(default = "default_upstream_reconnect_min")]
    pub(crate) reconnect_min: HumanDuration,
    #[serde(default = "default_upstream_reconnect_max")]
    pub(crate) reconnect_max: HumanDuration,
    pub(crate) tls: Option<RawUpstreamTls>,
}

/// `[upstream.tls]`: PEM files, relative to the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub(crate) ca_file: PathBuf,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) domain: Option<String>,
}

fn default_upstream_max_disk() -> ByteSize {
    ByteSize(1 << 30)
}
fn default_batch_rows() -> usize {
    fieldgate_store::outbox::DEFAULT_BATCH_ROWS
}
fn default_batch_bytes() -> ByteSize {
    ByteSize(fieldgate_store::outbox::DEFAULT_BATCH_BYTES)
}
fn default_in_flight() -> usize {
    8
}
fn default_zero_size() -> ByteSize {
    ByteSize(0)
}
fn default_keepalive() -> HumanDuration {
    HumanDuration(Duration::from_secs(20))
}
fn default_keepalive_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_ack_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_upstream_reconnect_min() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_upstream_reconnect_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

/// `[modbus]`: devices polled over Modbus TCP, RTU, or RTU over TCP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawModbus {
    /// Largest hole (registers or bits) read through to merge two requests (per device too).
    pub(crate) max_gap: u16,
    pub(crate) reconnect_min: HumanDuration,
    pub(crate) reconnect_max: HumanDuration,
    /// The longest a failing device is left alone before it is tried again.
    pub(crate) backoff_max: HumanDuration,
    #[serde(rename = "device")]
    pub(crate) devices: Vec<RawModbusDevice>,
}

impl Default for RawModbus {
    fn default() -> Self {
        RawModbus {
            max_gap: 8,
            reconnect_min: HumanDuration(Duration::from_millis(500)),
            reconnect_max: d(30),
            backoff_max: d(60),
            devices: Vec::new(),
        }
    }
}

/// `[[modbus.device]]`: one unit on a bus. Exactly one of `tcp`, `rtu_over_tcp`, `serial`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModbusDevice {
    pub(crate) id: String,
    pub(crate) tcp: Option<String>,
    pub(crate) rtu_over_tcp: Option<String>,
    pub(crate) serial: Option<String>,
    #[serde(default = "default_baud")]
    pub(crate) baud: u32,
    #[serde(default = "default_parity")]
    pub(crate) parity: String,
    #[serde(default = "default_data_bits")]
    pub(crate) data_bits: u8,
    #[serde(default = "default_stop_bits")]
    pub(crate) stop_bits: u8,
    #[serde(default = "default_unit")]
    pub(crate) unit: u8,
    #[serde(default = "default_poll")]
    pub(crate) poll: HumanDuration,
    #[serde(default = "default_modbus_timeout")]
    pub(crate) timeout: HumanDuration,
    #[serde(default = "default_retries")]
    pub(crate) retries: u32,
    pub(crate) max_gap: Option<u16>,
    #[serde(default, rename = "point")]
    pub(crate) points: Vec<RawPoint>,
    /// `[modbus.device.timestamp]`: the device's own clock.
    pub(crate) timestamp: Option<RawClock>,
}

/// `[modbus.device.timestamp]`: a register holding the time the device took its values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClock {
    pub(crate) table: Option<String>,
    pub(crate) address: RawAddress,
    #[serde(rename = "type", default = "default_clock_type")]
    pub(crate) data_type: String,
    #[serde(default = "default_order")]
    pub(crate) order: String,
    #[serde(default = "default_clock_unit")]
    pub(crate) unit: String,
    #[serde(default = "default_clock_age")]
    pub(crate) max_age: HumanDuration,
}

fn default_clock_type() -> String {
    "u32".to_owned()
}
fn default_clock_unit() -> String {
    "s".to_owned()
}
fn default_clock_age() -> HumanDuration {
    d(3600)
}

fn default_baud() -> u32 {
    9600
}
fn default_parity() -> String {
    "even".to_owned()
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_unit() -> u8 {
    1
}
fn default_poll() -> HumanDuration {
    d(1)
}
fn default_modbus_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
}
fn default_retries() -> u32 {
    1
}

/// `[[modbus.device.point]]`: one value of a device.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPoint {
    pub(crate) metric: String,
    /// `coil`, `discrete_input`, `input_register`, `holding_register`; may be left out when the
    /// address is written 1-based (`40001`).
    pub(crate) table: Option<String>,
    pub(crate) address: RawAddress,
    /// Default: `bool` for coils and discrete inputs, `u16` for registers.
    #[serde(rename = "type")]
    pub(crate) data_type: Option<String>,
    #[serde(default = "default_order")]
    pub(crate) order: String,
    /// For `type = "bit"`: which bit, 0 = least significant.
    pub(crate) bit: Option<u8>,
    /// For `type = "string"`: how many registers.
    pub(crate) registers: Option<u16>,
    #[serde(default = "one")]
    pub(crate) scale: f64,
    #[serde(default)]
    pub(crate) offset: f64,
    pub(crate) unit: Option<String>,
}

/// An address, as a number or a string (`"40001"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawAddress {
    Number(u64),
    Text(String),
}

fn default_order() -> String {
    "ABCD".to_owned()
}
fn one() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    /// Names this gateway upstream and in logs.
    pub(crate) id: String,
    /// Where the WAL, Parquet files and state live; relative paths start at the config file.
    #[serde(default = "default_data_dir")]
    pub(crate) data_dir: PathBuf,
    /// How long a shutdown may take to drain and flush before the gateway gives up waiting.
    #[serde(default = "default_shutdown_timeout")]
    pub(crate) shutdown_timeout: HumanDuration,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    /// Address of the HTTP server for `/metrics` and `/healthz`.
    #[serde(default = "default_http_listen")]
    pub(crate) listen: String,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp { listen: default_http_listen() }
    }
}

/// 9464 is the port the OpenTelemetry Prometheus exporter uses; loopback by default, since
/// metrics tell a lot about a farm.
fn default_http_listen() -> String {
    "127.0.0.1:9464".to_owned()
}

/// `[grpc]`: the gRPC API (commands now; queries with issue 8).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGrpc {
    #[serde(default = "yes")]
    pub(crate) enabled: bool,
    #[serde(default = "default_grpc_listen")]
    pub(crate) listen: String,
    /// A bearer token every call must carry (`authorization: Bearer <token>`).
    pub(crate) token: Option<SecretSpec>,
    /// TLS for the API; the table's presence turns it on.
    pub(crate) tls: Option<RawGrpcTls>,
}

impl Default for RawGrpc {
    fn default() -> Self {
        RawGrpc { enabled: true, listen: default_grpc_listen(), token: None, tls: None }
    }
}

/// `[grpc.tls]`: PEM files, relative to the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGrpcTls {
    /// The gateway's certificate chain and its private key.
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
    /// CA certificate(s) client certificates must chain to; with it, every client needs one
    /// (mutual TLS).
    pub(crate) client_ca_file: Option<PathBuf>,
}

/// 50051 is the port gRPC examples use everywhere; loopback by default, since the API can move
/// machines.
fn default_grpc_listen() -> String {
    "127.0.0.1:50051".to_owned()
}

/// `[store]`: the WAL, the windows and the Parquet files. Defaults suit a farm gateway with up
/// to a few thousand series on an industrial PC's SSD.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStore {
    /// Tumbling window sizes that rollups are kept at.
    pub(crate) windows: Vec<HumanDuration>,
    pub(crate) allowed_lateness: HumanDuration,
    pub(crate) idle_close: HumanDuration,
    pub(crate) max_clock_skew: HumanDuration,
    pub(crate) commit_delay: HumanDuration,
    pub(crate) wal_segment_size: ByteSize,
    pub(crate) flush_interval: HumanDuration,
    pub(crate) flush_rows: usize,
    pub(crate) row_group_rows: usize,
    pub(crate) recordings: RawRecordings,
    pub(crate) queue: usize,
    pub(crate) retention: RawRetention,
}

/// `[store] recordings`: `true`, `false`, or the protocols and devices to record.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawRecordings {
    Flag(bool),
    Only(Vec<String>),
}

fn d(secs: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(secs))
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            windows: vec![d(10), d(60), d(900)],
            allowed_lateness: d(30),
            idle_close: d(300),
            max_clock_skew: d(300),
            commit_delay: HumanDuration(Duration::ZERO),
            wal_segment_size: ByteSize(64 << 20),
            flush_interval: d(60),
            flush_rows: 1 << 20,
            row_group_rows: 64 * 1024,
            recordings: RawRecordings::Flag(false),
            queue: 1024,
            retention: RawRetention::default(),
        }
    }
}

/// `[store.retention]`: how long files are kept and how much disk they may use.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRetention {
    /// Per window size label (as in `windows`), how long its rollups are kept.
    pub(crate) rollups: BTreeMap<String, HumanDuration>,
    pub(crate) recordings: Option<HumanDuration>,
    pub(crate) max_disk: Option<ByteSize>,
}

/// `[mqtt]`: how MQTT devices reach the gateway. Without the section, the embedded broker
/// runs on 127.0.0.1:1883 with the default mappings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMqtt {
    /// `false` turns MQTT off.
    #[serde(default = "yes")]
    pub(crate) enabled: bool,
    #[serde(default = "default_max_payload")]
    pub(crate) max_payload: ByteSize,
    /// Devices connect to the gateway itself (the default).
    pub(crate) embedded: Option<RawEmbedded>,
    /// The gateway subscribes at a broker the site already runs.
    pub(crate) external: Option<RawExternal>,
    #[serde(default, rename = "mapping")]
    pub(crate) mappings: Vec<RawMapping>,
    /// Where commands for MQTT devices are published; `{device}` is replaced by the device id.
    #[serde(default = "default_command_topic")]
    pub(crate) command_topic: String,
    /// How long a command waits for its PUBACK before the call reports a timeout.
    #[serde(default = "default_command_timeout")]
    pub(crate) command_timeout: HumanDuration,
}

fn default_command_topic() -> String {
    fieldgate_adapters::mqtt::CommandTopic::DEFAULT.to_owned()
}

fn default_command_timeout() -> HumanDuration {
    d(10)
}

impl Default for RawMqtt {
    fn default() -> Self {
        RawMqtt {
            enabled: true,
            max_payload: default_max_payload(),
            embedded: None,
            external: None,
            mappings: Vec::new(),
            command_topic: default_command_topic(),
            command_timeout: default_command_timeout(),
        }
    }
}

pub(crate) fn yes() -> bool {
    true
}

/// `[mqtt.embedded]`: the broker inside the gateway.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEmbedded {
    #[serde(default = "default_broker_listen")]
    pub(crate) listen: String,
    /// Credentials every client must present (both, or neither).
    pub(crate) username: Option<String>,
    pub(crate) password: Option<SecretSpec>,
    #[serde(default = "default_max_inflight")]
    pub(crate) max_inflight: usize,
    #[serde(default = "default_max_queued")]
    pub(crate) max_queued: usize,
}

impl Default for RawEmbedded {
    fn default() -> Self {
        RawEmbedded {
            listen: default_broker_listen(),
            username: None,
            password: None,
            max_inflight: default_max_inflight(),
            max_queued: default_max_queued(),
        }
    }
}

fn default_broker_listen() -> String {
    "127.0.0.1:1883".to_owned()
}

fn default_max_inflight() -> usize {
    32
}

fn default_max_queued() -> usize {
    1000
}

/// `[mqtt.external]`: the gateway's client of a broker (mosquitto, EMQX, ...).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExternal {
    pub(crate) host: String,
    /// Default 1883, or 8883 with TLS.
    pub(crate) port: Option<u16>,
    /// `"3.1.1"` or `"5"`.
    #[serde(default = "default_protocol_version")]
    pub(crate) protocol_version: String,
    /// TLS to the broker; the table's presence turns it on.
    pub(crate) tls: Option<RawTls>,
    /// The session's identity on the broker; must stay the same across restarts for the broker
    /// to keep unacknowledged messages. Default: `fieldgate-<gateway id>`.
    pub(crate) client_id: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<SecretSpec>,
    #[serde(default = "default_keep_alive")]
    pub(crate) keep_alive: HumanDuration,
    #[serde(default = "default_reconnect_min")]
    pub(crate) reconnect_min: HumanDuration,
    #[serde(default = "default_reconnect_max")]
    pub(crate) reconnect_max: HumanDuration,
}

fn default_protocol_version() -> String {
    "3.1.1".to_owned()
}

/// `[mqtt.external.tls]`: PEM files, relative to the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    /// CA certificate(s) for the broker; default: the system's roots.
    pub(crate) ca_file: Option<PathBuf>,
    /// The gateway's certificate chain and key, for brokers that require client certificates.
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
}

fn default_keep_alive() -> HumanDuration {
    d(30)
}

fn default_reconnect_min() -> HumanDuration {
    d(1)
}

fn default_reconnect_max() -> HumanDuration {
    d(60)
}

fn default_max_payload() -> ByteSize {
    ByteSize(64 << 10)
}

/// `[[mqtt.mapping]]`: which topics carry readings and how to read them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMapping {
    pub(crate) topic: String,
    #[serde(default)]
    pub(crate) format: RawFormat,
    pub(crate) device: Option<String>,
    pub(crate) metric: Option<String>,
    #[serde(default)]
    pub(crate) fields: BTreeMap<String, String>,
    pub(crate) timestamp: Option<String>,
    /// Whether a payload without the timestamp field is refused (otherwise it carries the
    /// time of receipt).
    #[serde(default = "yes")]
    pub(crate) timestamp_required: bool,
    #[serde(default)]
    pub(crate) timestamp_unit: RawTimestampUnit,
}

#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawFormat {
    #[default]
    Json,
    Number,
    Bool,
}

#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawTimestampUnit {
    #[default]
    Auto,
    Rfc3339,
    S,
    Ms,
    Us,
    Ns,
}
