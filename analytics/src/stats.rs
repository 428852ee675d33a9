//! Stats: aggregates per device, metric and bucket over `[from, to)`, from the stored rollups
//! of one window size re-bucketed with polars, merged with the rows the store has not written
//! yet (closed since the last flush, or still open), so answers reach up to now.
//!
//! Merging is exact because every stored row is itself an aggregate: counts and sums add, the
//! minimum is the minimum of minimums (likewise maximum), the mean is the sum over the count
//! (so weighted by count), and first and last are those of the earliest and latest row by
//! their timestamps.

use fieldgate_proto::{DeviceId, Metric, Timestamp};
use fieldgate_store::window::Rollup;
use fieldgate_store::{SnapshotError, StoreReader, layout};
use polars::prelude::*;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A stats question.
#[derive(Debug, Clone)]
pub struct StatsQuery {
    /// Devices to include; empty means all.
    pub devices: Vec<DeviceId>,
    /// Metrics to include; empty means all.
    pub metrics: Vec<Metric>,
    pub from: Timestamp,
    pub to: Timestamp,
    /// Bucket size of the answer; `None` means one bucket spanning `[from, to)`.
    pub window: Option<Duration>,
}

/// One bucket of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsRow {
    pub device: String,
    pub metric: String,
    pub window_start: Timestamp,
    pub window_end: Timestamp,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub sum: f64,
    pub first: f64,
    pub last: f64,
    pub first_ts: Timestamp,
    pub last_ts: Timestamp,
}

/// The answer: rows sorted by device, metric and bucket, and the stored window they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsAnswer {
    pub rows: Vec<StatsRow>,
    pub source_window: Duration,
}

/// Why a question has no answer. Each maps to a gRPC status in the gateway.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The question itself is wrong (INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// The store is not running (UNAVAILABLE).
    #[error("the store is not running")]
    Unavailable,
    /// Reading or computing failed (INTERNAL).
    #[error("the query failed: {0}")]
    Failed(String),
}

impl From<PolarsError> for QueryError {
    fn from(e: PolarsError) -> Self {
        QueryError::Failed(e.to_string())
    }
}

fn label(ns: i64) -> String {
    layout::window_label(ns)
}

/// The coarsest stored window the question can be answered from: one that divides the bucket
/// size and that `from` (and `to`, for a single bucket) is aligned to.
pub fn source_window(sizes: &[i64], q: &StatsQuery) -> Result<(i64, i64), QueryError> {
    let from = q.from.as_nanos();
    let to = q.to.as_nanos();
    if from >= to {
        return Err(QueryError::Invalid(format!("`from` ({}) must be before `to` ({})", q.from, q.to)));
    }
    let bucket = match q.window {
        Some(w) => i64::try_from(w.as_nanos()).unwrap_or(i64::MAX),
        None => to - from,
    };
    if bucket <= 0 {
        return Err(QueryError::Invalid("the window must be longer than zero".into()));
    }
    let stored = sizes.iter().map(|&s| label(s)).collect::<Vec<_>>().join(", ");
    let fits = |w: i64| bucket % w == 0 && from.rem_euclid(w) == 0;
    match sizes.iter().copied().filter(|&w| fits(w)).max() {
        Some(w) => Ok((w, bucket)),
        None if q.window.is_some() && sizes.iter().all(|&w| bucket % w != 0) => Err(QueryError::Invalid(
            format!("a window of {} is not a multiple of a stored window ({stored})", label(bucket)),
        )),
        None => Err(QueryError::Invalid(format!(
            "`from` ({}) is not on a boundary of a stored window that fits ({stored}); start it on one",
            q.from
        ))),
    }
}

/// Answer `q` from the files under `data_dir` and the store's unwritten rows.
pub async fn stats(data_dir: &Path, reader: &StoreReader, q: &StatsQuery) -> Result<StatsAnswer, QueryError> {
    let (window_ns, bucket) = source_window(reader.sizes(), q)?;
    let set = |v: &[DeviceId]| (!v.is_empty()).then(|| v.iter().cloned().collect::<HashSet<_>>());
    let devices = set(&q.devices);
    let metrics = (!q.metrics.is_empty()).then(|| q.metrics.iter().cloned().collect::<HashSet<_>>());
    let snapshot = reader.snapshot(window_ns, devices, metrics).await.map_err(|e| match e {
        SnapshotError::Stopped => QueryError::Unavailable,
        SnapshotError::UnknownWindow(w) => QueryError::Invalid(format!("no stored window of {w}")),
    })?;
    let files = files(data_dir, window_ns, q.from, q.to, snapshot.files_through);
    let (q, dir) = (q.clone(), data_dir.to_owned());
    // Parquet decoding and the group-by are CPU work: off the runtime.
    tokio::task::spawn_blocking(move || compute(&files, &snapshot.rows, &q, bucket, window_ns))
        .await
        .map_err(|e| QueryError::Failed(format!("{e} (data in {})", dir.display())))?
}

/// The part files of `window_ns` for the days `[from, to)` touches, from flushes up to
/// `through`.
fn files(data_dir: &Path, window_ns: i64, from: Timestamp, to: Timestamp, through: u64) -> Vec<PathBuf> {
    let dir = layout::rollup_dir(data_dir, window_ns);
    let (first_day, last_day) = (from.date_string(), Timestamp::from_nanos(to.as_nanos() - 1).date_string());
    let Ok(days) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut paths = Vec::new();
    for day in days.flatten() {
        let name = day.file_name().to_string_lossy().into_owned();
        let Some(date) = name.strip_prefix("date=") else { continue };
        if date < first_day.as_str() || date > last_day.as_str() {
            continue;
        }
        paths.extend(
            layout::parts(&day.path()).into_iter().filter(|(_, _, seq)| *seq <= through).map(|(p, _, _)| p),
        );
    }
    paths.sort();
    paths
}

/// Columns common to stored and unwritten rows.
fn common(lf: LazyFrame) -> LazyFrame {
    lf.select([
        col("device").cast(DataType::String),
        col("metric").cast(DataType::String),
        col("start").cast(DataType::Int64),
        col("count").cast(DataType::UInt64),
        col("min"),
        col("max"),
        col("sum"),
        col("first"),
        col("last"),
        col("first_ts").cast(DataType::Int64),
        col("last_ts").cast(DataType::Int64),
    ])
}

fn unwritten(rows: &[Rollup]) -> PolarsResult<LazyFrame> {
    let s = |name: &str, v: Vec<String>| Column::new(name.into(), v);
    let f = |name: &str, get: fn(&Rollup) -> f64| {
        Column::new(name.into(), rows.iter().map(get).collect::<Vec<f64>>())
    };
    let i = |name: &str, get: fn(&Rollup) -> i64| {
        Column::new(name.into(), rows.iter().map(get).collect::<Vec<i64>>())
    };
    let df = DataFrame::new(
        rows.len(),
        vec![
            s("device", rows.iter().map(|r| r.device.to_string()).collect()),
            s("metric", rows.iter().map(|r| r.metric.to_string()).collect()),
            i("start", |r| r.start),
            Column::new("count".into(), rows.iter().map(|r| r.count).collect::<Vec<u64>>()),
            f("min", |r| r.min),
            f("max", |r| r.max),
            f("sum", |r| r.sum),
            f("first", |r| r.first),
            f("last", |r| r.last),
            i("first_ts", |r| r.first_ts),
            i("last_ts", |r| r.last_ts),
        ],
    )?;
    Ok(common(df.lazy()))
}

/// `name` is one of `values` (an OR of equalities: the lists are short).
fn one_of(name: &str, values: &[String]) -> Option<Expr> {
    values.iter().map(|v| col(name).eq(lit(v.clone()))).reduce(|a, b| a.or(b))
}

fn compute(
    files: &[PathBuf],
    unwritten_rows: &[Rollup],
    q: &StatsQuery,
    bucket: i64,
    window_ns: i64,
) -> Result<StatsAnswer, QueryError> {
    let (from, to) = (q.from.as_nanos(), q.to.as_nanos());
    let mut parts = vec![unwritten(unwritten_rows)?];
    if !files.is_empty() {
        let paths: Vec<PlRefPath> =
            files.iter().map(|p| PlRefPath::new(p.to_string_lossy().as_ref())).collect();
        // The files are chosen above (by window size, day and flush): no hive columns needed.
        let args =
            ScanArgsParquet { hive_options: HiveOptions::new_disabled(), ..ScanArgsParquet::default() };
        let scanned = LazyFrame::scan_parquet_files(paths.into_iter().collect(), args)?
            .with_column(col("window_start").alias("start"));
        parts.push(common(scanned));
    }
    let mut all = concat(parts, UnionArgs::default())?
        .filter(col("start").gt_eq(lit(from)).and(col("start").lt(lit(to))));
    let devices: Vec<String> = q.devices.iter().map(ToString::to_string).collect();
    let metrics: Vec<String> = q.metrics.iter().map(ToString::to_string).collect();
    for filter in [one_of("device", &devices), one_of("metric", &metrics)].into_iter().flatten() {
        all = all.filter(filter);
    }
    let by_ts = |c: &str, ts: &str| col(c).sort_by([col(ts)], SortMultipleOptions::default());
    let df = all
        .with_column(((col("start") - lit(from)) / lit(bucket) * lit(bucket) + lit(from)).alias("bucket"))
        .group_by([col("device"), col("metric"), col("bucket")])
        .agg([
            col("count").sum().alias("count"),
            col("min").min().alias("min"),
            col("max").max().alias("max"),
            col("sum").sum().alias("sum"),
            by_ts("first", "first_ts").first().alias("first"),
            by_ts("last", "last_ts").last().alias("last"),
            col("first_ts").min().alias("first_ts"),
            col("last_ts").max().alias("last_ts"),
        ])
        .sort(["device", "metric", "bucket"], SortMultipleOptions::default())
        .collect()?;
    Ok(StatsAnswer { rows: rows(&df, bucket)?, source_window: Duration::from_nanos(window_ns as u64) })
}

fn rows(df: &DataFrame, bucket: i64) -> PolarsResult<Vec<StatsRow>> {
    let (device, metric) = (df.column("device")?.str()?, df.column("metric")?.str()?);
    let start = df.column("bucket")?.i64()?;
    let count = df.column("count")?.u64()?;
    let f = |name: &str| -> PolarsResult<Vec<f64>> {
        let ca = df.column(name)?.f64()?;
        Ok((0..ca.len()).map(|i| ca.get(i).unwrap_or(f64::NAN)).collect())
    };
    let (min, max, sum, first, last) = (f("min")?, f("max")?, f("sum")?, f("first")?, f("last")?);
    let (first_ts, last_ts) = (df.column("first_ts")?.i64()?, df.column("last_ts")?.i64()?);
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let n = count.get(i).unwrap_or(0);
        let ts = |v: Option<i64>| Timestamp::from_nanos(v.unwrap_or(0));
        let start = start.get(i).unwrap_or(0);
        out.push(StatsRow {
            device: device.get(i).unwrap_or_default().to_owned(),
            metric: metric.get(i).unwrap_or_default().to_owned(),
            window_start: Timestamp::from_nanos(start),
            window_end: Timestamp::from_nanos(start.saturating_add(bucket)),
            count: n,
            min: min[i],
            max: max[i],
            mean: if n == 0 { f64::NAN } else { sum[i] / n as f64 },
            sum: sum[i],
            first: first[i],
            last: last[i],
            first_ts: ts(first_ts.get(i)),
            last_ts: ts(last_ts.get(i)),
        });
    }
    Ok(out)
}
