//! Where the store keeps things under the data directory, readable without fieldgate:
//!
//! ```text
//! wal/00000000000000000042.wal                                 write-ahead log segments
//! rollups/window=1m/date=2026-11-24/part-<first_ts>-<seq>.parquet
//! recordings/date=2026-11-24/part-<first_ts>-<seq>.parquet     raw readings, when enabled
//! state/checkpoint-<seq>.ckpt                                   window state at a checkpoint
//! state/devices.json, ...                                       small state files, see [`crate::state`]
//! ```
//! `window=` and `date=` are hive-style partitions, so DuckDB (`hive_partitioning = true`),
//! polars and pyarrow see them as columns. `first_ts` is the earliest window start (or reading
//! time) in the file, `seq` the checkpoint that committed it; a compacted file (a finished
//! day's parts merged, see `compact`) takes the newest `seq` it holds. `state/compact/` holds
//! directories being built or waiting for deletion, never live data.

use std::path::{Path, PathBuf};

pub const WAL: &str = "wal";
pub const ROLLUPS: &str = "rollups";
pub const RECORDINGS: &str = "recordings";
pub const STATE: &str = "state";

const UNITS: [(&str, i64); 5] = [
    ("d", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
];

/// The label of a window size in paths: the largest unit that divides it (`10s`, `1m`, `15m`,
/// `1h`, `1d`, `500ms`).
pub fn window_label(window_ns: i64) -> String {
    for (unit, n) in UNITS {
        if window_ns % n == 0 {
            return format!("{}{unit}", window_ns / n);
        }
    }
    format!("{window_ns}ns")
}

/// A window size from its label, the inverse of [`window_label`].
pub fn parse_window_label(label: &str) -> Option<i64> {
    if let Some(n) = label.strip_suffix("ns") {
        return n.parse().ok();
    }
    // "ms" before "s" and "m": the longest suffix that matches.
    let (unit, n) =
        ["ms", "d", "h", "m", "s"].into_iter().find_map(|u| label.strip_suffix(u).map(|n| (u, n)))?;
    let per = UNITS.iter().find(|(name, _)| *name == unit)?.1;
    n.parse::<i64>().ok()?.checked_mul(per)
}

/// `rollups/window=<label>` under `data_dir`.
pub fn rollup_dir(data_dir: &Path, window_ns: i64) -> PathBuf {
    data_dir.join(ROLLUPS).join(format!("window={}", window_label(window_ns)))
}

/// The name of a Parquet part.
pub fn part_name(first_ts: i64, seq: u64) -> String {
    format!("part-{first_ts}-{seq:020}.parquet")
}

/// `(first_ts, seq)` of a part's file name.
pub fn parse_part_name(name: &str) -> Option<(i64, u64)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let (ts, seq) = rest.rsplit_once('-')?;
    Some((ts.parse().ok()?, seq.parse().ok()?))
}

/// Every Parquet part under `dir` (recursively), with its file name parsed.
pub fn parts(dir: &Path) -> Vec<(PathBuf, i64, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some((ts, seq)) = e.file_name().to_str().and_then(parse_part_name) {
                out.push((path, ts, seq));
            }
        }
    }
    out.sort();
    out
}

/// The `date=` partitions directly under `dir`, with their day numbers (days since the epoch).
pub fn date_dirs(dir: &Path) -> Vec<(i64, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((parse_date(name.strip_prefix("date=")?)?, e.path()))
        })
        .collect()
}

/// Every Parquet file under `dir`, recursively, sorted (whatever its name: parts, compacted
/// days, a collector's batches).
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            out.extend(parquet_files(&p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_labels_round_trip() {
        let s = 1_000_000_000;
        for (ns, label) in [
            (10 * s, "10s"),
            (60 * s, "1m"),
            (900 * s, "15m"),
            (3600 * s, "1h"),
            (86_400 * s, "1d"),
            (s / 2, "500ms"),
            (90 * s, "90s"),
            (1, "1ns"),
        ] {
            assert_eq!(window_label(ns), label);
            assert_eq!(parse_window_label(label), Some(ns), "{label}");
        }
        assert_eq!(parse_window_label("fortnight"), None);
    }

    #[test]
    fn part_names_sort_and_parse() {
        let name = part_name(1_795_509_000_000_000_000, 42);
        assert_eq!(name, "part-1795509000000000000-00000000000000000042.parquet");
        assert_eq!(parse_part_name(&name), Some((1_795_509_000_000_000_000, 42)));
        assert_eq!(parse_part_name(&part_name(-5, 1)), Some((-5, 1)));
        assert_eq!(parse_part_name("part-x.parquet.tmp"), None);
    }
}

/// Days since the epoch of a `YYYY-MM-DD` date (the inverse of `Timestamp::date_string`).
pub fn parse_date(s: &str) -> Option<i64> {
    let t = fieldgate_proto::Timestamp::parse_rfc3339(&format!("{s}T00:00:00Z")).ok()?;
    Some(t.as_nanos().div_euclid(86_400_000_000_000))
}

#[cfg(test)]
mod date_tests {
    use super::*;
    use fieldgate_proto::Timestamp;

    #[test]
    fn dates_parse_back_to_days() {
        for days in [-1_i64, 0, 1, 20_416, 20_781, 106_000] {
            let s = Timestamp::from_nanos(days * 86_400_000_000_000).date_string();
            assert_eq!(parse_date(&s), Some(days), "{s}");
        }
        assert_eq!(parse_date("2026-13-01"), None);
        assert_eq!(parse_date("yesterday"), None);
    }
}
