//! Stats latency over one day of 1-minute rollups of 1,000 devices × 10 metrics (14.4 million
//! rows), next to DuckDB answering the same questions over the same files in the same run.
//!
//! The day is written by the real store, fed one reading per series per minute and flushing
//! every 10,000 closed rows, as a gateway flushing once a minute does: about 1,440 part files.
//! One more minute (the next day's first) is fed so that the whole day is in files, and both
//! sides read exactly the same rows; the answers' row counts and sums are compared.
//!
//! The questions are asked over the part files as flushed, then again after the store has
//! compacted the day into one sorted file (as it does an hour after a day ends); compaction's
//! time and the extra memory it took are printed between the two tables.
//!
//! Each question runs once to warm the page cache, then `FG_BENCH_RUNS` times (default 5);
//! the median and the fastest are printed. fieldgate's time is the whole query path: store
//! snapshot, choosing files, the polars scan and group-by, and the rows handed back. DuckDB's
//! is `execute` plus fetching the answer as NumPy columns.
//!
//! Run: `cargo bench -p fieldgate-analytics --bench stats` (`FG_BENCH_DEVICES` changes the
//! fleet, `FG_BENCH_FLUSH_ROWS` the rows per flush, so the number of files; the bench
//! pip-installs duckdb and numpy when they are missing).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark binary

use fieldgate_analytics::{StatsQuery, stats};
use fieldgate_proto::{DeviceId, Metric, Quality, Reading, Source, Timestamp};
use fieldgate_store::{Store, StoreConfig, StoreMetrics, layout};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIN: i64 = 60_000_000_000;
/// 2026-11-24T00:00:00Z.
const DAY: i64 = 1_763_942_400_000_000_000;
const METRICS: usize = 10;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn device(i: usize) -> String {
    format!("dev-{i:04}")
}

fn metric(m: usize) -> String {
    [
        "level_pct",
        "temp_c",
        "humidity_pct",
        "pressure_kpa",
        "flow_lpm",
        "rpm",
        "voltage_v",
        "current_a",
        "moisture_pct",
        "yield_kg",
    ][m]
        .to_owned()
}

/// Write the day through a real store; returns it still running, every row of the day in
/// files.
async fn fill(dir: &Path, devices: usize) -> Store {
    let mut cfg = StoreConfig::new(dir);
    cfg.windows = vec![Duration::from_secs(60)];
    cfg.allowed_lateness = Duration::ZERO;
    cfg.flush_rows = env("FG_BENCH_FLUSH_ROWS", devices * METRICS);
    // Rows left over when a flush was in flight go out with the next timed flush.
    cfg.flush_interval = Duration::from_secs(2);
    let mut registry = prometheus_client::registry::Registry::default();
    let store = tokio::task::spawn_blocking(move || Store::open(cfg, StoreMetrics::register(&mut registry)))
        .await
        .unwrap()
        .unwrap();
    let sink = store.sink();
    let ids: Vec<DeviceId> = (0..devices).map(|d| DeviceId::new(&device(d)).unwrap()).collect();
    let names: Vec<Metric> = (0..METRICS).map(|m| Metric::new(&metric(m)).unwrap()).collect();
    let started = Instant::now();
    for minute in 0..=1440i64 {
        let mut batch = Vec::with_capacity(devices * METRICS);
        for (d, id) in ids.iter().enumerate() {
            for (m, name) in names.iter().enumerate() {
                // A reading 17 s into its minute; values that wander per series.
                let x = (minute * 31 + d as i64 * 7 + m as i64 * 13) % 1000;
                batch.push(Reading {
                    device: id.clone(),
                    metric: name.clone(),
                    ts: Timestamp::from_nanos(DAY + minute * MIN + 17_000_000_000),
                    value: x as f64 * 0.1,
                    quality: Quality::Good,
                    source: Source::Modbus,
                });
            }
        }
        let received = Timestamp::from_nanos(DAY + minute * MIN + 18_000_000_000);
        sink.submit(batch, received).await.unwrap().await.unwrap();
    }
    // Wait for the day's last rows to reach files.
    let reader = store.reader();
    let end = DAY + 1440 * MIN;
    while reader.snapshot(MIN, None, None).await.unwrap().rows.iter().any(|r| r.start < end) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let files = std::fs::read_dir(layout::rollup_dir(dir, MIN))
        .unwrap()
        .flatten()
        .map(|d| layout::parts(&d.path()).len())
        .sum::<usize>();
    let bytes: u64 = walk(&layout::rollup_dir(dir, MIN)).iter().map(|p| p.metadata().unwrap().len()).sum();
    println!(
        "wrote {} readings through the store in {:.1} s: {files} part files, {:.0} MiB",
        1440 * devices * METRICS,
        started.elapsed().as_secs_f64(),
        bytes as f64 / (1 << 20) as f64
    );
    store
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else if e.path().extension().is_some_and(|x| x == "parquet") {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

struct Question {
    name: &'static str,
    query: StatsQuery,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(s: f64) -> String {
    format!("{:.0} ms", s * 1e3)
}

fn ensure_python_packages() {
    let have =
        Command::new("python3").args(["-c", "import duckdb, numpy"]).status().is_ok_and(|s| s.success());
    if !have {
        let args = [
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "duckdb==2.0.1",
            "numpy==2.4.6",
        ];
        let ok = Command::new("python3").args(args).status().is_ok_and(|s| s.success())
            || Command::new("python3")
                .args(args)
                .arg("--break-system-packages")
                .status()
                .is_ok_and(|s| s.success());
        assert!(ok, "pip could not install duckdb and numpy");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let devices = env("FG_BENCH_DEVICES", 1000);
    let runs = env("FG_BENCH_RUNS", 5);
    ensure_python_packages();
    let dir = tempfile::tempdir().unwrap();
    let store = fill(dir.path(), devices).await;
    let reader = store.reader();
    let (from, to) = (Timestamp::from_nanos(DAY), Some(Timestamp::from_nanos(DAY + 1440 * MIN)));
    let id = |d: usize| DeviceId::new(&device(d)).unwrap();
    let name = |m: usize| Metric::new(&metric(m)).unwrap();
    let hour = Some(Duration::from_secs(3600));
    let questions = [
        Question {
            name: "one device, all metrics, hourly",
            query: StatsQuery { devices: vec![id(42)], metrics: vec![], from, to, window: hour },
        },
        Question {
            name: "all devices, one metric, the day",
            query: StatsQuery { devices: vec![], metrics: vec![name(1)], from, to, window: None },
        },
        Question {
            name: "all devices, all metrics, hourly",
            query: StatsQuery { devices: vec![], metrics: vec![], from, to, window: hour },
        },
    ];

    let files = walk(&layout::rollup_dir(dir.path(), MIN)).len();
    let source =
        fieldgate_analytics::Source::Store { data_dir: dir.path().to_owned(), reader: reader.clone() };
    compare(dir.path(), &source, &questions, runs, devices, &format!("as flushed, {files} part files")).await;

    // Compaction, as the store does once a day has ended; then the same questions again.
    let rss_before = status_kib("VmRSS");
    // Reset the peak ("5": clear the high-water mark) so it shows compaction's own.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t = Instant::now();
    let report = tokio::task::block_in_place(|| store.compact_now()).unwrap();
    let done = format!(
        "{} part files, {:.0} MiB to {:.0} MiB in {:.1} s",
        report.files_in,
        report.bytes_in as f64 / (1 << 20) as f64,
        report.bytes_out as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64(),
    );
    let peak = status_kib("VmHWM");
    println!(
        "\ncompaction: {done}; process RSS {:.0} MiB before, peak {:.0} MiB during",
        rss_before as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    println!(
        "bench-result\tcompaction of that day, as the store does once a day is over\t{done}, {:.0} MiB more resident memory at most",
        peak.saturating_sub(rss_before) as f64 / 1024.0,
    );
    compare(dir.path(), &source, &questions, runs, devices, "compacted, one file").await;
    drop((reader, source));
    tokio::task::spawn_blocking(move || store.close()).await.unwrap();
}

/// A `kB` field of `/proc/self/status` (0 if absent).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok()
        })
        .unwrap_or(0)
}

/// Run the questions on both sides over the files as they are now, and print the table.
async fn compare(
    dir: &Path,
    source: &fieldgate_analytics::Source,
    questions: &[Question],
    runs: usize,
    devices: usize,
    layout_name: &str,
) {
    let (from, to) = (Timestamp::from_nanos(DAY), Some(Timestamp::from_nanos(DAY + 1440 * MIN)));
    // fieldgate: the query path the gRPC service runs.
    let mut ours = Vec::new();
    for q in questions {
        let mut times = Vec::new();
        let mut answer = None;
        for _ in 0..=runs {
            let t = Instant::now();
            let a = stats(source, &q.query).await.unwrap();
            times.push(t.elapsed().as_secs_f64());
            answer = Some(a);
        }
        let answer = answer.unwrap();
        let checksum: f64 = answer.rows.iter().map(|r| r.sum).sum();
        ours.push((answer.rows.len(), checksum, times[1..].to_vec()));
    }

    // DuckDB: the same questions over the same part files.
    let files: Vec<String> =
        walk(&layout::rollup_dir(dir, MIN)).iter().map(|p| p.display().to_string()).collect();
    let spec = serde_json::json!({
        "files": files,
        "runs": runs,
        "questions": questions.iter().map(|q| serde_json::json!({
            "devices": q.query.devices.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "metrics": q.query.metrics.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "from": from.as_nanos(),
            "to": to.unwrap().as_nanos(),
            "bucket": q.query.window.map_or(1440 * MIN, |w| w.as_nanos() as i64),
        })).collect::<Vec<_>>(),
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/duckdb_stats.py");
    let mut child =
        Command::new("python3").arg(&script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(spec.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the DuckDB script failed");
    let theirs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    println!(
        "\n{devices} devices x {METRICS} metrics, one day of 1 min rollups ({layout_name}); {runs} runs after a warm-up; polars {}, DuckDB {} ({} threads)\n",
        polars::VERSION,
        theirs["duckdb"].as_str().unwrap_or("?"),
        theirs["threads"]
    );
    println!(
        "{:<36} {:>8} {:>14} {:>14} {:>14} {:>14}",
        "question", "rows", "fieldgate p50", "DuckDB p50", "fieldgate min", "DuckDB min"
    );
    let mut figures = Vec::new();
    for (i, q) in questions.iter().enumerate() {
        let (rows, checksum, times) = &ours[i];
        let a = &theirs["answers"][i];
        let their_times: Vec<f64> =
            a["seconds"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
        let their_checksum = a["checksum"].as_f64().unwrap();
        let close = (checksum - their_checksum).abs() <= 1e-9 * checksum.abs();
        println!(
            "{:<36} {:>8} {:>14} {:>14} {:>14} {:>14}{}",
            q.name,
            rows,
            ms(median(times.clone())),
            ms(median(their_times.clone())),
            ms(times.iter().copied().fold(f64::INFINITY, f64::min)),
            ms(their_times.iter().copied().fold(f64::INFINITY, f64::min)),
            if *rows as u64 == a["rows"].as_u64().unwrap() && close { "" } else { "  (answers differ!)" }
        );
        figures.push(format!(
            "{}: {} (DuckDB {})",
            q.name,
            ms(median(times.clone())).trim(),
            ms(median(their_times)).trim()
        ));
    }
    // For the README's table (tests/run-benchmarks collects these lines).
    println!(
        "bench-result\tstats: one day of 1-minute rollups, {devices} devices × {METRICS} metrics ({layout_name}), fieldgate (polars) next to DuckDB {} over the same files, p50 of {runs}\t{}",
        theirs["duckdb"].as_str().unwrap_or("?"),
        figures.join("; ")
    );
}
