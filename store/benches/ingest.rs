//! Store throughput: readings/s through WAL (fsync'd group commit) + windows + Parquet, and
//! bytes on disk per reading.
//!
//! `cargo bench -p fieldgate-store --bench ingest` (release build). Defaults: 1,000 series
//! (100 devices x 10 metrics) at 1 Hz for 6 simulated hours = 21.6 M readings, windows of
//! 10 s, 1 min and 15 min. Override with FG_BENCH_SERIES, FG_BENCH_SECONDS, FG_BENCH_RECORDINGS=1.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use fieldgate_proto::{Ack, DeviceId, Metric, Quality, Reading, Source, Timestamp};
use fieldgate_store::{Store, StoreConfig, StoreMetrics, layout};
use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Sum of the `count` column and number of rows over every rollup file under `dir`.
fn counted(dir: &Path) -> (u64, u64) {
    use arrow_array::cast::AsArray;
    let (mut sum, mut rows) = (0, 0);
    for (path, _, _) in layout::parts(dir) {
        let file = std::fs::File::open(path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let c = b.column_by_name("count").unwrap().as_primitive::<arrow_array::types::UInt64Type>();
            sum += c.values().iter().sum::<u64>();
            rows += b.num_rows() as u64;
        }
    }
    (sum, rows)
}

fn dir_bytes(dir: &Path) -> u64 {
    layout::parts(dir).iter().map(|(p, _, _)| std::fs::metadata(p).map_or(0, |m| m.len())).sum()
}

/// CPU seconds (user + system) of this process's thread named `name`, from /proc.
fn thread_cpu(name: &str) -> f64 {
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().filter_map(Result::ok) {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<u64> = after.split_whitespace().skip(11).take(2).map(|x| x.parse().unwrap()).collect();
            total += (f[0] + f[1]) as f64 / 100.0;
        }
    }
    total
}

fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = after.split_whitespace().skip(11).take(2).map(|x| x.parse().unwrap()).collect();
    (f[0] + f[1]) as f64 / 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let series = env("FG_BENCH_SERIES", 1000);
    let seconds = env("FG_BENCH_SECONDS", 6 * 3600);
    let recordings = env("FG_BENCH_RECORDINGS", 0) == 1;
    let metrics_per_device = 10.min(series);
    let devices: Vec<DeviceId> =
        (0..series / metrics_per_device).map(|d| DeviceId::new(&format!("device-{d:04}")).unwrap()).collect();
    let metrics: Vec<Metric> =
        (0..metrics_per_device).map(|m| Metric::new(&format!("metric_{m}")).unwrap()).collect();
    let base = Timestamp::parse_rfc3339("2026-11-01T00:00:00Z").unwrap().as_nanos();

    let dir = tempfile::tempdir_in(
        std::env::var("FG_BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
    )
    .unwrap();
    let mut cfg = StoreConfig::new(dir.path());
    cfg.windows = vec![Duration::from_secs(10), Duration::from_secs(60), Duration::from_secs(900)];
    cfg.flush_interval = Duration::from_secs(10);
    cfg.recordings =
        if recordings { fieldgate_store::Recordings::All } else { fieldgate_store::Recordings::Off };
    let mut registry = prometheus_client::registry::Registry::default();
    let store = Store::open(cfg, StoreMetrics::register(&mut registry)).unwrap();
    let sink = store.sink();

    let total = series * seconds;
    println!(
        "store ingest: {series} series at 1 Hz for {seconds} s = {total} readings; windows 10s, 1m, 15m; recordings {recordings}"
    );
    let cpu0 = process_cpu();
    let started = Instant::now();
    let mut in_flight: VecDeque<Ack> = VecDeque::new();
    for s in 0..seconds {
        let ts = Timestamp::from_nanos(base + s as i64 * 1_000_000_000);
        let mut batch = Vec::with_capacity(series as usize);
        for d in &devices {
            for (mi, m) in metrics.iter().enumerate() {
                batch.push(Reading {
                    device: d.clone(),
                    metric: m.clone(),
                    ts,
                    // A slow wave plus a per-series offset: realistic, not constant.
                    value: 20.0 + mi as f64 + ((s as f64) / 600.0).sin() * 5.0,
                    quality: Quality::Good,
                    // MQTT: its readings go through duplicate detection, the costlier path.
                    source: Source::Mqtt,
                });
            }
        }
        in_flight.push_back(sink.submit(batch, Timestamp::now()).await.unwrap());
        // Up to 64 batches in flight, as many adapters submitting at once would be.
        while in_flight.len() > 64 {
            in_flight.pop_front().unwrap().await.unwrap();
        }
    }
    for a in in_flight {
        a.await.unwrap();
    }
    let acked = started.elapsed();
    drop(sink);
    let wal_cpu = thread_cpu("fieldgate-wal");
    tokio::task::spawn_blocking(move || store.close()).await.unwrap();
    let elapsed = started.elapsed();
    let cpu = process_cpu() - cpu0;

    let per = |b: u64| b as f64 / total as f64;
    let m1 = dir_bytes(&layout::rollup_dir(dir.path(), 60_000_000_000));
    let s10 = dir_bytes(&layout::rollup_dir(dir.path(), 10_000_000_000));
    let m15 = dir_bytes(&layout::rollup_dir(dir.path(), 900_000_000_000));
    let rec = dir_bytes(&dir.path().join(layout::RECORDINGS));
    println!(
        "  all acknowledged (durable) after   {:.2} s: {:.0} readings/s",
        acked.as_secs_f64(),
        total as f64 / acked.as_secs_f64()
    );
    println!(
        "  closed and flushed after           {:.2} s: {:.0} readings/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  WAL writer thread CPU              {wal_cpu:.2} s: {:.0} readings per CPU-second",
        total as f64 / wal_cpu.max(0.001)
    );
    println!(
        "  process CPU                        {cpu:.2} s ({:.2} cores busy on average)",
        cpu / elapsed.as_secs_f64()
    );
    // A window is closed once the newest reading (at `seconds - 1`) passes its end plus the
    // 30 s allowed lateness; the rest stay open in the checkpoint. The files must hold exactly
    // the readings of the closed windows.
    for (label, w) in [("10s", 10u64), ("1m", 60), ("15m", 900)] {
        let (sum, rows) = counted(&layout::rollup_dir(dir.path(), w as i64 * 1_000_000_000));
        let closed_until = (seconds - 1).saturating_sub(30) / w * w;
        let expected = series * closed_until;
        println!(
            "  {label} files: {rows} rows holding {sum} readings (expected {expected}, the rest in open windows)"
        );
        assert_eq!(sum, expected, "{label} rollups lost or duplicated readings");
    }
    println!(
        "  bytes on disk per reading: 1m rollups {:.3}, 10s {:.3}, 15m {:.3}, recordings {:.3}",
        per(m1),
        per(s10),
        per(m15),
        per(rec)
    );
    // For the README's table (tests/run-benchmarks collects these lines).
    println!(
        "bench-result\tstore: {series} series at 1 Hz for {seconds} s through the WAL (fsync'd group commit), windows 10s/1m/15m and Parquet{}\t{:.0} readings/s acknowledged, {:.0} readings per CPU-second on the WAL writer thread; bytes on disk per reading: {:.3} in 1-minute rollups{}",
        if recordings { ", raw recordings on" } else { "" },
        total as f64 / acked.as_secs_f64(),
        total as f64 / wal_cpu.max(0.001),
        per(m1),
        if recordings { format!(", {:.3} in recordings", per(rec)) } else { String::new() },
    );
}
