//! The store's Prometheus metrics, registered under `fieldgate_store_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabels {
    pub window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Counters and gauges of the WAL, the windows, the files and recovery.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    pub readings: Family<OutcomeLabels, Counter>,
    pub late: Family<WindowLabels, Counter>,
    pub batches: Counter,
    pub wal_records: Counter,
    pub wal_bytes: Gauge,
    pub wal_segments: Gauge,
    pub fsync_seconds: Histogram,
    pub open_windows: Gauge,
    pub outbox_bytes: Gauge,
    pub outbox_batches: Gauge,
    pub outbox_oldest_seconds: Gauge,
    pub outbox_dropped_rows: Counter,
    pub series: Gauge,
    pub rows_written: Family<KindLabels, Counter>,
    pub files_written: Family<KindLabels, Counter>,
    pub flush_seconds: Histogram,
    pub checkpoints: Counter,
    pub write_errors: Family<ReasonLabels, Counter>,
    pub disk_bytes: Family<KindLabels, Gauge>,
    pub retention_deleted_files: Counter,
    pub compacted_partitions: Counter,
    pub compacted_files: Counter,
    pub compaction_failures: Counter,
    pub recovery_replayed_records: Gauge,
    pub recovery_torn_tail_bytes: Gauge,
    pub recovery_corrupt_regions: Gauge,
    pub recovery_damaged_checkpoints: Gauge,
    pub recovery_orphan_files: Gauge,
}

impl StoreMetrics {
    /// Set the outbox gauges from `outbox` (after a flush fills it, or acks empty it).
    pub fn set_outbox(&self, outbox: &crate::Outbox) {
        let (bytes, batches) = outbox.usage();
        self.outbox_bytes.set(bytes as i64);
        self.outbox_batches.set(batches as i64);
        let now = fieldgate_proto::Timestamp::now().as_nanos();
        let age = outbox.oldest_data_ns().map_or(0, |t| (now - t).max(0) / 1_000_000_000);
        self.outbox_oldest_seconds.set(age);
    }

    pub fn register(registry: &mut Registry) -> Self {
        let m = StoreMetrics {
            readings: Family::default(),
            late: Family::default(),
            batches: Counter::default(),
            wal_records: Counter::default(),
            wal_bytes: Gauge::default(),
            wal_segments: Gauge::default(),
            // 50 µs to ~1.6 s.
            fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            open_windows: Gauge::default(),
            outbox_bytes: Gauge::default(),
            outbox_batches: Gauge::default(),
            outbox_oldest_seconds: Gauge::default(),
            outbox_dropped_rows: Counter::default(),
            series: Gauge::default(),
            rows_written: Family::default(),
            files_written: Family::default(),
            flush_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            checkpoints: Counter::default(),
            write_errors: Family::default(),
            disk_bytes: Family::default(),
            retention_deleted_files: Counter::default(),
            compacted_partitions: Counter::default(),
            compacted_files: Counter::default(),
            compaction_failures: Counter::default(),
            recovery_replayed_records: Gauge::default(),
            recovery_torn_tail_bytes: Gauge::default(),
            recovery_corrupt_regions: Gauge::default(),
            recovery_damaged_checkpoints: Gauge::default(),
            recovery_orphan_files: Gauge::default(),
        };
        for outcome in ["aggregated", "duplicate", "not_finite", "bad_quality", "future_timestamp"] {
            let _ = m.readings.get_or_create(&OutcomeLabels { outcome });
        }
        for reason in ["no_space", "io"] {
            let _ = m.write_errors.get_or_create(&ReasonLabels { reason });
        }
        let r = registry.sub_registry_with_prefix("fieldgate_store");
        r.register(
            "readings",
            "Readings the store received, by what happened to them in the windows",
            m.readings.clone(),
        );
        r.register(
            "readings_late",
            "Readings too late for their window, by window size (kept in recordings)",
            m.late.clone(),
        );
        r.register("batches", "Batches appended to the WAL", m.batches.clone());
        r.register("wal_records", "Records appended to the WAL", m.wal_records.clone());
        r.register("wal_bytes", "Bytes in WAL segments on disk", m.wal_bytes.clone());
        r.register("wal_segments", "WAL segment files on disk", m.wal_segments.clone());
        r.register("wal_fsync_seconds", "Time to fsync one WAL group", m.fsync_seconds.clone());
        r.register("open_windows", "Windows open in memory", m.open_windows.clone());
        r.register("outbox_bytes", "Bytes of upstream batches not yet acknowledged", m.outbox_bytes.clone());
        r.register("outbox_batches", "Upstream batches not yet acknowledged", m.outbox_batches.clone());
        r.register(
            "outbox_oldest_seconds",
            "Age of the oldest rollup window waiting to go upstream (0: none)",
            m.outbox_oldest_seconds.clone(),
        );
        r.register(
            "outbox_dropped_rows",
            "Rollup rows dropped from the full upstream outbox and reported as gaps",
            m.outbox_dropped_rows.clone(),
        );
        r.register("series", "Distinct (device, metric) series seen", m.series.clone());
        r.register(
            "rows_written",
            "Parquet rows written, by kind (rollup, recording)",
            m.rows_written.clone(),
        );
        r.register("files_written", "Parquet files written, by kind", m.files_written.clone());
        r.register(
            "flush_seconds",
            "Time to write one flush's Parquet files and checkpoint",
            m.flush_seconds.clone(),
        );
        r.register("checkpoints", "Checkpoints committed", m.checkpoints.clone());
        r.register("write_errors", "Failed disk writes (retried), by reason", m.write_errors.clone());
        r.register("disk_bytes", "Bytes of Parquet on disk, by kind", m.disk_bytes.clone());
        r.register(
            "retention_deleted_files",
            "Files deleted by retention",
            m.retention_deleted_files.clone(),
        );
        r.register(
            "compacted_partitions",
            "Finished days whose part files were merged into one file (per window size or recordings)",
            m.compacted_partitions.clone(),
        );
        r.register("compacted_files", "Part files merged by compaction", m.compacted_files.clone());
        r.register(
            "compaction_failures",
            "Compaction passes that failed (the parts stay as they were; retried)",
            m.compaction_failures.clone(),
        );
        r.register(
            "recovery_replayed_records",
            "WAL records replayed at the last start",
            m.recovery_replayed_records.clone(),
        );
        r.register(
            "recovery_torn_tail_bytes",
            "Bytes of torn WAL tail cut at the last start",
            m.recovery_torn_tail_bytes.clone(),
        );
        r.register(
            "recovery_corrupt_regions",
            "Corrupt WAL regions skipped at the last start (data lost)",
            m.recovery_corrupt_regions.clone(),
        );
        r.register(
            "recovery_damaged_checkpoints",
            "Damaged checkpoints ignored at the last start",
            m.recovery_damaged_checkpoints.clone(),
        );
        r.register(
            "recovery_orphan_files",
            "Files of an uncommitted flush removed at the last start",
            m.recovery_orphan_files.clone(),
        );
        m
    }
}
