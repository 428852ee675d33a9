//! [`StoreConfig`]: the store's settings, validated by the gateway's config loader.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the store needs to run. Built by the gateway from the `[store]` section; the
/// gateway has already checked every range, so the store does not re-validate.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data directory (`wal/`, `rollups/`, `recordings/`, `state/` live under it).
    pub data_dir: PathBuf,
    /// Tumbling window sizes to aggregate into, e.g. 10 s, 1 min, 15 min.
    pub windows: Vec<Duration>,
    /// How long after a window's end (in the series' own event time) readings are still
    /// accepted into it before it closes.
    pub allowed_lateness: Duration,
    /// A series that receives nothing for this long (wall clock) has its open windows closed,
    /// so the last windows of a device that went quiet still reach the files.
    pub idle_close: Duration,
    /// Readings stamped further than this ahead of the gateway's clock are not aggregated
    /// (a device with a wrong clock must not close everyone's windows); they are recorded.
    pub max_clock_skew: Duration,
    /// How long the WAL writer waits to gather more batches into one fsync. Zero: fsync each
    /// group as soon as it is written (acks come fastest; throughput comes from grouping
    /// whatever queued during the previous fsync).
    pub commit_delay: Duration,
    /// A WAL segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Closed windows (and recordings) are written to Parquet, and a checkpoint taken, at
    /// least this often.
    pub flush_interval: Duration,
    /// A checkpoint is also taken when this many rows (rollups plus recordings) wait.
    pub flush_rows: usize,
    /// Rows per Parquet row group: arrow-rs buffers a whole row group in memory. Also the
    /// most closed windows kept waiting for a flush: that many start one.
    pub row_group_rows: usize,
    /// Which raw readings are also kept in `recordings/`.
    pub recordings: Recordings,
    /// Batches waiting to be written; producers wait when it is full.
    pub queue_batches: usize,
    pub retention: Retention,
    /// Closed windows of these sizes also go to the upstream outbox (`None`: no upstream).
    pub outbox: Option<crate::OutboxConfig>,
}

/// How long files are kept, and how much disk they may use.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    /// Per window size: rollup files whose data is older than this are deleted.
    pub rollups: Vec<(Duration, Duration)>,
    /// Recordings older than this are deleted.
    pub recordings: Option<Duration>,
    /// Rollups and recordings together may use at most this many bytes; the oldest days go first.
    pub max_bytes: Option<u64>,
}

impl StoreConfig {
    /// Defaults for a data directory; the gateway's config loader starts from the same values.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            windows: vec![Duration::from_secs(10), Duration::from_secs(60), Duration::from_secs(900)],
            allowed_lateness: Duration::from_secs(30),
            idle_close: Duration::from_secs(300),
            max_clock_skew: Duration::from_secs(300),
            commit_delay: Duration::ZERO,
            segment_bytes: 64 << 20,
            flush_interval: Duration::from_secs(60),
            flush_rows: 1 << 20,
            row_group_rows: 64 * 1024,
            recordings: Recordings::Off,
            queue_batches: 1024,
            retention: Retention::default(),
            outbox: None,
        }
    }
}

/// Which raw readings the store keeps in `recordings/` (for replay, audits, model training).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Recordings {
    #[default]
    Off,
    All,
    /// Readings that came by one of `sources`, or from one of `devices`.
    Only {
        sources: Vec<fieldgate_proto::Source>,
        devices: Vec<fieldgate_proto::DeviceId>,
    },
}

impl Recordings {
    pub fn is_on(&self) -> bool {
        *self != Recordings::Off
    }

    /// Whether `reading` is kept.
    pub fn keeps(&self, reading: &fieldgate_proto::Reading) -> bool {
        match self {
            Recordings::Off => false,
            Recordings::All => true,
            Recordings::Only { sources, devices } => {
                sources.contains(&reading.source) || devices.contains(&reading.device)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Recordings;
    use fieldgate_proto::{DeviceId, Metric, Quality, Reading, Source, Timestamp};

    fn reading(device: &str, source: Source) -> Reading {
        Reading {
            device: DeviceId::new(device).expect("id"),
            metric: Metric::new("level_pct").expect("metric"),
            ts: Timestamp::from_nanos(1),
            value: 1.0,
            quality: Quality::Good,
            source,
        }
    }

    #[test]
    fn recordings_keep_the_listed_protocols_and_devices() {
        let only = Recordings::Only {
            sources: vec![Source::Mqtt],
            devices: vec![DeviceId::new("bin-3").expect("id")],
        };
        assert!(only.keeps(&reading("combine-1", Source::Mqtt)));
        assert!(only.keeps(&reading("bin-3", Source::Modbus)));
        assert!(!only.keeps(&reading("bin-4", Source::Modbus)));
        assert!(!only.keeps(&reading("probe-1", Source::Lorawan)));
        assert!(Recordings::All.keeps(&reading("probe-1", Source::Lorawan)));
        assert!(!Recordings::Off.keeps(&reading("probe-1", Source::Lorawan)) && !Recordings::Off.is_on());
    }
}
