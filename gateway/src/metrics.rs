//! Prometheus metrics: one [`Registry`] built at start-up, each component registering its own
//! families into it, then frozen and served by [`crate::http`] at `/metrics`.
//!
//! Labels are bounded on purpose: a protocol, a reason, a queue name, never a device id or a
//! value, so the number of series stays fixed however many devices a farm adds.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// Labels naming a protocol.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

/// Labels naming an internal queue.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: &'static str,
}

/// Labels of a command's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub source: &'static str,
    /// `delivered`, `queued`, `duplicate` or `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The gateway's own metrics; adapters and the store add theirs to the same registry.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    /// Readings handed over by the adapters, per protocol.
    pub readings_received: Family<SourceLabels, Counter>,
    /// Items waiting in each bounded internal queue.
    pub queue_depth: Family<QueueLabels, Gauge>,
    /// Capacity of each bounded internal queue.
    pub queue_capacity: Family<QueueLabels, Gauge>,
    /// Devices in the registry.
    pub devices: Gauge,
    /// Devices registered on first sight, per protocol.
    pub devices_registered: Family<SourceLabels, Counter>,
    /// Commands by protocol and outcome.
    pub commands: Family<CommandLabels, Counter>,
}

impl GatewayMetrics {
    /// Create the gateway's metrics and register them, with process metrics, under `fieldgate_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = GatewayMetrics {
            readings_received: Family::default(),
            queue_depth: Family::default(),
            queue_capacity: Family::default(),
            devices: Gauge::default(),
            devices_registered: Family::default(),
            commands: Family::default(),
        };
        // Every protocol shows up from the start, at zero, so rates and alerts work at once.
        for s in fieldgate_proto::Source::ALL {
            let _ = m.readings_received.get_or_create(&SourceLabels { source: s.as_str() });
            let _ = m.devices_registered.get_or_create(&SourceLabels { source: s.as_str() });
        }
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        let r = registry.sub_registry_with_prefix("fieldgate");
        r.register("build_info", "Build of the running gateway (always 1)", build);
        r.register(
            "readings_received",
            "Readings handed over by the protocol adapters",
            m.readings_received.clone(),
        );
        r.register("queue_depth", "Items waiting in a bounded internal queue", m.queue_depth.clone());
        r.register("queue_capacity", "Capacity of a bounded internal queue", m.queue_capacity.clone());
        r.register("devices", "Devices in the registry (heard from at least once)", m.devices.clone());
        r.register(
            "devices_registered",
            "Devices registered when first heard from",
            m.devices_registered.clone(),
        );
        r.register("commands", "Commands to devices, by protocol and outcome", m.commands.clone());
        registry.register_collector(Box::new(ProcessCollector::new()));
        m
    }
}

/// `process_*` metrics from /proc, read at scrape time (no polling task).
#[derive(Debug)]
struct ProcessCollector {
    start_time_seconds: f64,
}

impl ProcessCollector {
    fn new() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        ProcessCollector { start_time_seconds: now }
    }
}

/// Resident memory in bytes and CPU seconds (user + system), from /proc/self.
fn read_proc() -> Option<(u64, f64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // Linux reports both in clock ticks of 1/100 s (USER_HZ) on every architecture we ship.
    const PAGE_SIZE: u64 = 4096;
    const USER_HZ: f64 = 100.0;
    Some((resident_pages * PAGE_SIZE, (utime + stime) as f64 / USER_HZ))
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let start = ConstGauge::<f64>::new(self.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?)?;
        if let Some((rss, cpu)) = read_proc() {
            let g = ConstGauge::<i64>::new(i64::try_from(rss).unwrap_or(i64::MAX));
            g.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?)?;
            let c = ConstCounter::<f64>::new(cpu);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}
