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
use fieldgate_store::{FilesGuard, SnapshotError, StoreReader, layout};
use polars::prelude::*;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where stored rollups are read from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A gateway's own store: its part files, plus the rows it has not written yet (closed
    /// since the last flush, or still open), so answers reach up to now.
    Store { data_dir: PathBuf, reader: StoreReader },
    /// A collector's files, every gateway's (`rollups/gateway=<id>/window=<size>/date=<day>/`).
    /// Device ids are taken as unique across the fleet: rows of one device id from two
    /// gateways are merged (counts, sums, minimums and maximums exactly; first and last from
    /// the gateway whose files sort later).
    Fleet {
        data_dir: PathBuf,
        /// The collector's locks, held while the files are read (compaction waits for them).
        locks: Option<std::sync::Arc<fieldgate_store::FileLocks>>,
    },
}

impl Source {
    /// The window sizes stored, in ns, finest first. A collector's are those of any gateway's
    /// `window=` directories, looked up each time (gateways add them as they forward).
    pub fn sizes(&self) -> Vec<i64> {
        match self {
            Source::Store { reader, .. } => reader.sizes().to_vec(),
            Source::Fleet { data_dir, .. } => {
                let mut sizes = std::collections::BTreeSet::new();
                for g in std::fs::read_dir(data_dir.join(layout::ROLLUPS)).into_iter().flatten().flatten() {
                    for w in std::fs::read_dir(g.path()).into_iter().flatten().flatten() {
                        let name = w.file_name().to_string_lossy().into_owned();
                        if let Some(ns) = name.strip_prefix("window=").and_then(layout::parse_window_label) {
                            sizes.insert(ns);
                        }
                    }
                }
                sizes.into_iter().collect()
            }
        }
    }
}

/// A stats question.
#[derive(Debug, Clone)]
pub struct StatsQuery {
    /// Devices to include; empty means all.
    pub devices: Vec<DeviceId>,
    /// Metrics to include; empty means all.
    pub metrics: Vec<Metric>,
    pub from: Timestamp,
    /// `None`: up to now.
    pub to: Option<Timestamp>,
    /// Bucket size of the answer; `None` means one bucket spanning `[from, to)`.
    pub window: Option<Duration>,
}

impl StatsQuery {
    /// The end of the range, with an open end taken as `now`.
    pub fn end(&self, now: Timestamp) -> Timestamp {
        self.to.unwrap_or(now)
    }

    /// The question with its end fixed at `now` if open, so that every step of answering it
    /// sees the same range.
    pub(crate) fn fixed(&self, now: Timestamp) -> StatsQuery {
        StatsQuery { to: Some(self.end(now)), ..self.clone() }
    }

    fn to_fixed(&self) -> Timestamp {
        self.to.expect("fixed before use")
    }
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
/// size and that `from` is aligned to. `to` must be aligned too unless it is open or not in
/// the past (a window straddling a past `to` would bring in readings after it; nothing is
/// stored after now).
pub fn source_window(sizes: &[i64], q: &StatsQuery, now: Timestamp) -> Result<(i64, i64), QueryError> {
    let from = q.from.as_nanos();
    let to = q.end(now).as_nanos();
    if from >= to {
        return Err(QueryError::Invalid(format!("`from` ({}) must be before `to` ({})", q.from, q.end(now))));
    }
    let bucket = match q.window {
        Some(w) => i64::try_from(w.as_nanos()).unwrap_or(i64::MAX),
        None => to - from,
    };
    if bucket <= 0 {
        return Err(QueryError::Invalid("the window must be longer than zero".into()));
    }
    let open_ended = q.to.is_none_or(|t| t >= now);
    let stored = sizes.iter().map(|&s| label(s)).collect::<Vec<_>>().join(", ");
    let divides = |w: i64| q.window.is_none() || bucket % w == 0;
    let fits = |w: i64| divides(w) && from.rem_euclid(w) == 0 && (open_ended || to.rem_euclid(w) == 0);
    if let Some(w) = sizes.iter().copied().filter(|&w| fits(w)).max() {
        return Ok((w, bucket));
    }
    if !sizes.iter().any(|&w| divides(w)) {
        return Err(QueryError::Invalid(format!(
            "a window of {} is not a multiple of a stored window ({stored})",
            label(bucket)
        )));
    }
    if !sizes.iter().any(|&w| divides(w) && from.rem_euclid(w) == 0) {
        return Err(QueryError::Invalid(format!(
            "`from` ({}) is not on a boundary of a stored window that fits ({stored}); start it on one",
            q.from
        )));
    }
    Err(QueryError::Invalid(format!(
        "`to` ({}) is in the past and not on a boundary of a stored window that fits ({stored}); end it on one",
        q.end(now)
    )))
}

/// The stored rows a question needs: the part files of one window size and the rows the store
/// has not written yet, taken together so that nothing is missed or counted twice.
pub(crate) struct Inputs {
    pub(crate) files: Vec<PathBuf>,
    pub(crate) unwritten: Vec<Rollup>,
    /// Keeps compaction from replacing `files` until the inputs are dropped, after reading.
    pub(crate) _held: Option<FilesGuard>,
}

pub(crate) async fn inputs(source: &Source, window_ns: i64, q: &StatsQuery) -> Result<Inputs, QueryError> {
    let (data_dir, reader) = match source {
        Source::Store { data_dir, reader } => (data_dir, reader),
        Source::Fleet { data_dir, locks } => {
            let held = match locks {
                Some(l) => Some(l.hold_readers().await),
                None => None,
            };
            let files = fleet_files(data_dir, window_ns, q.from, q.to_fixed());
            return Ok(Inputs { files, unwritten: Vec::new(), _held: held });
        }
    };
    fn set<T: Clone + Eq + std::hash::Hash>(v: &[T]) -> Option<HashSet<T>> {
        (!v.is_empty()).then(|| v.iter().cloned().collect())
    }
    let (devices, metrics) = (set(&q.devices), set(&q.metrics));
    let held = reader.hold_files().await;
    let snapshot = reader.snapshot(window_ns, devices, metrics).await.map_err(|e| match e {
        SnapshotError::Stopped => QueryError::Unavailable,
        SnapshotError::UnknownWindow(w) => QueryError::Invalid(format!("no stored window of {w}")),
    })?;
    let files = files(data_dir, window_ns, q.from, q.to_fixed(), snapshot.files_through);
    let mut unwritten = snapshot.rows;
    unwritten.sort_by(|a, b| (&a.device, &a.metric, a.start).cmp(&(&b.device, &b.metric, b.start)));
    Ok(Inputs { files, unwritten, _held: Some(held) })
}

/// Run CPU work (Parquet decoding, group-bys) off the runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, QueryError> + Send + 'static,
) -> Result<T, QueryError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| QueryError::Failed(e.to_string()))?
}

/// Answer `q` from `source`.
pub async fn stats(source: &Source, q: &StatsQuery) -> Result<StatsAnswer, QueryError> {
    let now = Timestamp::now();
    let (window_ns, bucket) = source_window(&source.sizes(), q, now)?;
    let q = q.fixed(now);
    let inputs = inputs(source, window_ns, &q).await?;
    blocking(move || compute(&inputs, &q, bucket, window_ns)).await
}

/// The part files of `window_ns` for the days `[from, to)` touches, from flushes up to
/// `through`.
fn files(data_dir: &Path, window_ns: i64, from: Timestamp, to: Timestamp, through: u64) -> Vec<PathBuf> {
    let dir = layout::rollup_dir(data_dir, window_ns);
    let (first_day, last_day) = (from.date_string(), Timestamp::from_nanos(to.as_nanos() - 1).date_string());
    let Ok(days) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut parts = Vec::new();
    for day in days.flatten() {
        let name = day.file_name().to_string_lossy().into_owned();
        let Some(date) = name.strip_prefix("date=") else { continue };
        if date < first_day.as_str() || date > last_day.as_str() {
            continue;
        }
        let date = date.to_owned();
        parts.extend(
            layout::parts(&day.path())
                .into_iter()
                .filter(|(_, _, seq)| *seq <= through)
                .map(|(p, _, seq)| (date.clone(), seq, p)),
        );
    }
    // By day, then by flush: the time order of each series' rows (see `frame`).
    parts.sort();
    parts.into_iter().map(|(_, _, p)| p).collect()
}

/// A collector's files of `window_ns` for the days `[from, to)` touches, every gateway's, in
/// the order that keeps each series' rows in time order: by day, gateway, then name (outbox
/// and sequence number).
fn fleet_files(data_dir: &Path, window_ns: i64, from: Timestamp, to: Timestamp) -> Vec<PathBuf> {
    let (first_day, last_day) = (from.date_string(), Timestamp::from_nanos(to.as_nanos() - 1).date_string());
    let window = format!("window={}", layout::window_label(window_ns));
    let mut found = Vec::new();
    for g in std::fs::read_dir(data_dir.join(layout::ROLLUPS)).into_iter().flatten().flatten() {
        let gateway = g.file_name().to_string_lossy().into_owned();
        for day in std::fs::read_dir(g.path().join(&window)).into_iter().flatten().flatten() {
            let name = day.file_name().to_string_lossy().into_owned();
            let Some(date) = name.strip_prefix("date=") else { continue };
            if date < first_day.as_str() || date > last_day.as_str() {
                continue;
            }
            for f in std::fs::read_dir(day.path()).into_iter().flatten().flatten() {
                let file = f.file_name().to_string_lossy().into_owned();
                if file.ends_with(".parquet") {
                    found.push((date.to_owned(), gateway.clone(), file, f.path()));
                }
            }
        }
    }
    found.sort();
    found.into_iter().map(|(.., p)| p).collect()
}

/// The rollup files' schema as read: names as strings, whether a file has them as plain
/// strings (since the store wrote them so) or as Arrow dictionaries (older files, read as
/// categoricals and cast).
fn file_schema() -> SchemaRef {
    let ts = DataType::Datetime(TimeUnit::Nanoseconds, Some(TimeZone::UTC));
    let mut schema = Schema::default();
    for (name, dtype) in [
        ("device", DataType::String),
        ("metric", DataType::String),
        ("window_start", ts.clone()),
        ("window_end", ts.clone()),
        ("count", DataType::UInt64),
        ("min", DataType::Float64),
        ("max", DataType::Float64),
        ("mean", DataType::Float64),
        ("sum", DataType::Float64),
        ("first", DataType::Float64),
        ("last", DataType::Float64),
        ("first_ts", ts.clone()),
        ("last_ts", ts),
    ] {
        schema.with_column(name.into(), dtype);
    }
    std::sync::Arc::new(schema)
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

/// Collect with polars' streaming engine: it reads the part files in parallel, in pieces,
/// instead of loading every row before grouping (measured: as fast for one device, up to 1.5
/// times faster for the whole fleet over a day of files; see the stats bench).
pub(crate) fn collect(lf: LazyFrame) -> PolarsResult<DataFrame> {
    // One plan, one frame (several come only from collecting several plans at once).
    Ok(lf.collect_with_engine(Engine::Streaming)?.unwrap_single())
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

/// The rows of `inputs` with a window start in `[from, to)`, for the question's devices and
/// metrics, in the columns both kinds of input share.
///
/// Rows come in time order per series (files by flush, then the unwritten rows by window
/// start): a series' windows close in order, and a flush writes every row closed before it,
/// so a later flush or an unwritten row never holds an earlier window of the same series.
/// Group-bys keep that order within a group, so the first and last values of a bucket are
/// those of its first and last row, with no sort.
pub(crate) fn frame(inputs: &Inputs, q: &StatsQuery) -> PolarsResult<LazyFrame> {
    let (from, to) = (q.from.as_nanos(), q.to_fixed().as_nanos());
    let devices: Vec<String> = q.devices.iter().map(ToString::to_string).collect();
    let metrics: Vec<String> = q.metrics.iter().map(ToString::to_string).collect();
    // The same filter on each input, before anything else, so that the Parquet reader can
    // decode the filtered columns first and the others only for matching rows.
    let keep = |start: Expr| {
        let mut keep = start.clone().gt_eq(lit(from)).and(start.lt(lit(to)));
        for filter in [one_of("device", &devices), one_of("metric", &metrics)].into_iter().flatten() {
            keep = keep.and(filter);
        }
        keep
    };
    let mut parts = Vec::new();
    if !inputs.files.is_empty() {
        let paths: Vec<PlRefPath> =
            inputs.files.iter().map(|p| PlRefPath::new(p.to_string_lossy().as_ref())).collect();
        // The files are chosen above (by window size, day and flush): no hive columns, and
        // the paths are files, not patterns to expand.
        let options = ParquetOptions {
            schema: Some(file_schema()),
            parallel: ParallelStrategy::Auto,
            low_memory: false,
            use_statistics: true,
        };
        let mut cast = CastColumnsPolicy::ERROR_ON_MISMATCH;
        cast.categorical_to_string = true;
        let unified = UnifiedScanArgs {
            hive_options: HiveOptions::new_disabled(),
            glob: false,
            cast_columns_policy: cast,
            // A collector's files carry a `gateway` column too.
            extra_columns_policy: ExtraColumnsPolicy::Ignore,
            ..UnifiedScanArgs::default()
        };
        let sources = ScanSources::Paths(paths.into_iter().collect());
        let scanned = LazyFrame::from(DslBuilder::scan_parquet(sources, options, unified)?.build())
            .filter(keep(col("window_start").cast(DataType::Int64)))
            .with_column(col("window_start").alias("start"));
        parts.push(common(scanned));
    }
    parts.push(unwritten(&inputs.unwritten)?.filter(keep(col("start"))));
    concat(parts, UnionArgs::default())
}

/// `c` of the first or last row of a group, which is that of the earliest or latest
/// timestamp: rows come in time order per series (see `frame`).
pub(crate) fn edge(c: &str, first: bool) -> Expr {
    if first { col(c).first() } else { col(c).last() }
}

/// Rows merged into one: counts and sums add, the minimum of minimums, the maximum of
/// maximums, the first and last values of the first and last rows.
pub(crate) fn merged() -> Vec<Expr> {
    vec![
        col("count").sum().alias("count"),
        col("min").min().alias("min"),
        col("max").max().alias("max"),
        col("sum").sum().alias("sum"),
        edge("first", true).alias("first"),
        edge("last", false).alias("last"),
        col("first_ts").min().alias("first_ts"),
        col("last_ts").max().alias("last_ts"),
    ]
}

fn compute(inputs: &Inputs, q: &StatsQuery, bucket: i64, window_ns: i64) -> Result<StatsAnswer, QueryError> {
    let from = q.from.as_nanos();
    let all = frame(inputs, q)?;
    let grouped = all
        .with_column(((col("start") - lit(from)) / lit(bucket) * lit(bucket) + lit(from)).alias("bucket"))
        .group_by([col("device"), col("metric"), col("bucket")])
        .agg(merged())
        .sort(["device", "metric", "bucket"], SortMultipleOptions::default());
    let df = collect(grouped)?;
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
