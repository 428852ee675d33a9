//! Retention: deleting whole date partitions of rollups and recordings by age (per window
//! size) and by total size (oldest days first).
//!
//! Only Parquet under `rollups/` and `recordings/` is ever deleted here. The WAL is deleted by
//! checkpoints, never by retention, so no acknowledged reading that is not yet in a committed
//! file can be lost to a disk cap; the upstream outbox keeps its own copies with its own cap.

use crate::config::Retention;
use crate::layout;
use crate::wal::sync_dir;
use std::path::{Path, PathBuf};

const DAY_NS: i64 = 86_400_000_000_000;

/// A `date=` partition directory with its day number and size.
#[derive(Debug)]
struct Partition {
    day: i64,
    /// Recordings go before rollups of the same day when space is short.
    rank: u8,
    path: PathBuf,
    bytes: u64,
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .sum()
}

fn partitions(dir: &Path, rank: u8) -> Vec<Partition> {
    let days = layout::date_dirs(dir).into_iter();
    days.map(|(day, path)| Partition { day, rank, bytes: dir_bytes(&path), path }).collect()
}

/// What a retention pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Pass {
    pub(crate) deleted_files: u64,
    pub(crate) rollup_bytes: u64,
    pub(crate) recording_bytes: u64,
}

fn remove(p: &Partition, pass: &mut Pass) -> std::io::Result<()> {
    let files = std::fs::read_dir(&p.path)?.count() as u64;
    std::fs::remove_dir_all(&p.path)?;
    if let Some(parent) = p.path.parent() {
        sync_dir(parent)?;
    }
    tracing::info!(partition = %p.path.display(), bytes = p.bytes, "retention deleted a partition");
    pass.deleted_files += files;
    Ok(())
}

/// Apply `retention` at wall-clock `now_ns` to the files of the given window sizes.
pub(crate) fn enforce(
    data_dir: &Path,
    retention: &Retention,
    windows: &[i64],
    now_ns: i64,
) -> std::io::Result<Pass> {
    let mut pass = Pass::default();
    let today = now_ns.div_euclid(DAY_NS);
    let mut all = Vec::new();
    for &w in windows {
        let max_age = retention
            .rollups
            .iter()
            .find(|(size, _)| i64::try_from(size.as_nanos()).ok() == Some(w))
            .map(|r| r.1);
        for p in partitions(&layout::rollup_dir(data_dir, w), 1) {
            // A day's partition goes once its last instant is older than the age limit.
            let expired = max_age.is_some_and(|age| (p.day + 1) * DAY_NS <= now_ns - age.as_nanos() as i64);
            if expired { remove(&p, &mut pass)? } else { all.push(p) }
        }
    }
    for p in partitions(&data_dir.join(layout::RECORDINGS), 0) {
        let expired =
            retention.recordings.is_some_and(|age| (p.day + 1) * DAY_NS <= now_ns - age.as_nanos() as i64);
        if expired { remove(&p, &mut pass)? } else { all.push(p) }
    }
    if let Some(max) = retention.max_bytes {
        all.sort_by_key(|p| (p.day, p.rank));
        let mut total: u64 = all.iter().map(|p| p.bytes).sum();
        let mut kept = Vec::new();
        for p in all {
            // Today's data is never deleted for space: it is what the farm is working with.
            if total > max && p.day < today {
                total -= p.bytes;
                remove(&p, &mut pass)?;
            } else {
                kept.push(p);
            }
        }
        all = kept;
    }
    for p in &all {
        if p.rank == 0 { pass.recording_bytes += p.bytes } else { pass.rollup_bytes += p.bytes }
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn make(dir: &Path, rel: &str, bytes: usize) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, vec![0u8; bytes]).unwrap();
    }

    #[test]
    fn old_partitions_go_by_age_then_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let minute = 60_000_000_000;
        let ten_s = 10_000_000_000;
        for day in ["2026-11-20", "2026-11-22", "2026-11-24"] {
            make(d, &format!("rollups/window=1m/date={day}/part-1-1.parquet"), 100);
            make(d, &format!("rollups/window=10s/date={day}/part-1-1.parquet"), 300);
            make(d, &format!("recordings/date={day}/part-1-1.parquet"), 1000);
        }
        let now = (layout::parse_date("2026-11-24").unwrap() * DAY_NS) + DAY_NS / 2;
        let retention = Retention {
            rollups: vec![(Duration::from_secs(10), Duration::from_secs(3 * 86_400))],
            recordings: Some(Duration::from_secs(86_400)),
            max_bytes: None,
        };
        let pass = enforce(d, &retention, &[ten_s, minute], now).unwrap();
        // 10 s rollups of 11-20 (ended 11-21 00:00, more than 3 days ago); recordings of 11-20 and 11-22.
        assert_eq!(pass.deleted_files, 3);
        assert!(!d.join("rollups/window=10s/date=2026-11-20").exists());
        assert!(d.join("rollups/window=10s/date=2026-11-22").exists());
        assert!(d.join("rollups/window=1m/date=2026-11-20").exists(), "no age limit for 1m");
        assert!(!d.join("recordings/date=2026-11-22").exists());
        assert_eq!(pass.rollup_bytes, 100 * 3 + 300 * 2);
        assert_eq!(pass.recording_bytes, 1000);

        // A cap of 800 bytes: oldest days go first, never today.
        let capped = Retention { max_bytes: Some(800), ..Retention::default() };
        let pass = enforce(d, &capped, &[ten_s, minute], now).unwrap();
        assert_eq!(pass.deleted_files, 3, "1m of 11-20, both rollups of 11-22");
        assert_eq!(
            pass.rollup_bytes + pass.recording_bytes,
            1400,
            "today's 1,400 bytes stay although over the cap"
        );
    }
}
