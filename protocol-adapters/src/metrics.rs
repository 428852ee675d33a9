//! The adapters' metrics and link states.
//!
//! `fieldgate_inputs_rejected_total{source, reason}` counts every input an adapter could not
//! turn into readings, with a bounded reason; logs of rejections are rate-limited per reason,
//! so a misconfigured device publishing garbage ten times a second does not flood the journal.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The state of an adapter's link (broker connection, serial line, UDP socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Connecting(String),
    Up(String),
    Down(String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InputLabels {
    pub source: &'static str,
    pub reason: &'static str,
}

/// A bounded outcome or code label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

/// When each (source, reason) was last logged, and how many were not logged since.
type LogState = HashMap<(&'static str, &'static str), (Instant, u64)>;

/// At most one log line per reason in this interval; the rest are counted and summarised.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Metrics shared by the adapters (cheap to clone).
#[derive(Debug, Clone)]
pub struct AdapterMetrics {
    pub inputs_rejected: Family<InputLabels, Counter>,
    pub mqtt_messages: Counter,
    pub mqtt_connected: Gauge,
    pub mqtt_reconnects: Counter,
    pub mqtt_unacked: Gauge,
    pub mqtt_clients: Gauge,
    pub mqtt_dropped: Counter,
    /// Modbus requests by outcome: ok, exception, timeout, error.
    pub modbus_requests: Family<OutcomeLabels, Counter>,
    /// Modbus exception responses by code.
    pub modbus_exceptions: Family<CodeLabels, Counter>,
    /// Values read from Modbus devices (good and bad quality).
    pub modbus_points: Counter,
    /// Modbus devices backed off right now.
    pub modbus_backed_off: Gauge,
    /// Modbus connections that failed to open.
    pub modbus_connect_failures: Counter,
    /// Modbus writes by outcome: ok, failed.
    pub modbus_writes: Family<OutcomeLabels, Counter>,
    /// LoRaWAN data uplinks accepted (after deduplication).
    pub lorawan_uplinks: Counter,
    /// LoRaWAN joins accepted.
    pub lorawan_joins: Counter,
    /// Extra receptions of a frame by other concentrators, merged into one.
    pub lorawan_duplicates: Counter,
    /// LoRaWAN downlinks by outcome: rx1, rx2 (scheduled), too_late, no_path, and the
    /// concentrators' TX_ACK errors.
    pub lorawan_downlinks: Family<OutcomeLabels, Counter>,
    /// Concentrators that have opened a downlink path (PULL_DATA).
    pub lorawan_gateways: Gauge,
    /// Frames whose concentrator time of reception was not believed (stored at arrival time).
    pub lorawan_concentrator_time_ignored: Counter,
    logged: Arc<Mutex<LogState>>,
}

impl AdapterMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = AdapterMetrics {
            inputs_rejected: Family::default(),
            mqtt_messages: Counter::default(),
            mqtt_connected: Gauge::default(),
            mqtt_reconnects: Counter::default(),
            mqtt_unacked: Gauge::default(),
            mqtt_clients: Gauge::default(),
            mqtt_dropped: Counter::default(),
            modbus_requests: Family::default(),
            modbus_exceptions: Family::default(),
            modbus_points: Counter::default(),
            modbus_backed_off: Gauge::default(),
            modbus_connect_failures: Counter::default(),
            modbus_writes: Family::default(),
            lorawan_uplinks: Counter::default(),
            lorawan_joins: Counter::default(),
            lorawan_duplicates: Counter::default(),
            lorawan_downlinks: Family::default(),
            lorawan_gateways: Gauge::default(),
            lorawan_concentrator_time_ignored: Counter::default(),
            logged: Arc::default(),
        };
        for outcome in ["ok", "exception", "timeout", "error"] {
            let _ = m.modbus_requests.get_or_create(&OutcomeLabels { outcome });
        }
        let r = registry.sub_registry_with_prefix("fieldgate");
        r.register(
            "inputs_rejected",
            "Inputs an adapter could not turn into readings, by protocol and reason",
            m.inputs_rejected.clone(),
        );
        r.register("mqtt_messages", "MQTT messages received", m.mqtt_messages.clone());
        r.register("mqtt_clients", "Clients connected to the embedded MQTT broker", m.mqtt_clients.clone());
        r.register(
            "mqtt_dropped",
            "Messages the embedded broker dropped for a subscriber with no room left (max_queued)",
            m.mqtt_dropped.clone(),
        );
        r.register("mqtt_connected", "1 while connected to the MQTT broker", m.mqtt_connected.clone());
        r.register(
            "mqtt_reconnects",
            "MQTT connections lost (each followed by a reconnect with backoff)",
            m.mqtt_reconnects.clone(),
        );
        r.register(
            "mqtt_unacked",
            "MQTT messages received and not yet acknowledged (waiting for the store)",
            m.mqtt_unacked.clone(),
        );
        r.register("modbus_requests", "Modbus requests by outcome", m.modbus_requests.clone());
        r.register("modbus_exceptions", "Modbus exception responses by code", m.modbus_exceptions.clone());
        r.register("modbus_points", "Values read from Modbus devices", m.modbus_points.clone());
        r.register(
            "modbus_backed_off",
            "Modbus devices backed off after failing",
            m.modbus_backed_off.clone(),
        );
        r.register(
            "modbus_connect_failures",
            "Modbus connections that failed to open",
            m.modbus_connect_failures.clone(),
        );
        r.register("modbus_writes", "Modbus writes (commands) by outcome", m.modbus_writes.clone());
        r.register("lorawan_uplinks", "LoRaWAN data uplinks accepted", m.lorawan_uplinks.clone());
        r.register("lorawan_joins", "LoRaWAN over-the-air joins accepted", m.lorawan_joins.clone());
        r.register(
            "lorawan_duplicates",
            "Receptions of a LoRaWAN frame by further concentrators, merged into one",
            m.lorawan_duplicates.clone(),
        );
        r.register("lorawan_downlinks", "LoRaWAN downlinks by outcome", m.lorawan_downlinks.clone());
        r.register(
            "lorawan_gateways",
            "Concentrators with an open downlink path (PULL_DATA heard)",
            m.lorawan_gateways.clone(),
        );
        r.register(
            "lorawan_concentrator_time_ignored",
            "LoRaWAN frames whose concentrator time of reception was unreadable or implausible, \
             stored at their arrival time instead",
            m.lorawan_concentrator_time_ignored.clone(),
        );
        m
    }

    pub fn modbus_request(&self, outcome: &'static str) {
        self.modbus_requests.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn modbus_exception(&self, code: &'static str) {
        self.modbus_exceptions.get_or_create(&CodeLabels { code }).inc();
    }

    pub fn lorawan_downlink(&self, outcome: &'static str) {
        self.lorawan_downlinks.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn modbus_write(&self, outcome: &'static str) {
        self.modbus_writes.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Count a rejected input and log it, at most once per `LOG_INTERVAL` per (source,
    /// reason); the log line says how many were not logged since the last one.
    pub fn rejected(
        &self,
        source: &'static str,
        reason: &'static str,
        place: &str,
        why: &dyn std::fmt::Display,
    ) {
        self.inputs_rejected.get_or_create(&InputLabels { source, reason }).inc();
        if let Some(suppressed) = self.may_log(source, reason) {
            tracing::warn!(source, reason, place, suppressed, "input rejected: {why}");
        }
    }

    /// Whether a line about (source, reason) may be logged now (at most one per
    /// `LOG_INTERVAL`), and if so how many were held back since the last one.
    pub fn may_log(&self, source: &'static str, reason: &'static str) -> Option<u64> {
        let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match logged.get_mut(&(source, reason)) {
            Some((last, suppressed)) if now.duration_since(*last) < LOG_INTERVAL => {
                *suppressed += 1;
                None
            }
            entry => {
                let suppressed = entry.map_or(0, |e| std::mem::take(&mut e.1));
                logged.insert((source, reason), (now, 0));
                Some(suppressed)
            }
        }
    }
}
