//! A running store's files (one test binary for the store, as each links arrow and parquet):
//! - the upstream outbox: the closed windows of the configured size arrive as sequenced
//!   batches with the flushes that wrote them, hold exactly the readings submitted, stay across
//!   a restart until acknowledged, and keep their numbers;
//! - compaction: a finished day's parts become one sorted file with exactly their rows, a part
//!   that arrives for that day later is merged at the next pass, and today is left alone.
#![allow(clippy::unwrap_used)]

use fieldgate_proto::v1::SeqRange;
use fieldgate_proto::v1::batch::Body;
use fieldgate_proto::{DeviceId, Metric, Quality, Reading, Source, Timestamp};
use fieldgate_store::outbox::decode_rollups;
use fieldgate_store::{OutboxConfig, Store, StoreConfig, StoreMetrics};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const S: i64 = 1_000_000_000;
/// 2026-03-01T00:00:00Z.
const T0: i64 = 1_772_323_200 * S;

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir);
    cfg.windows = vec![Duration::from_secs(10), Duration::from_secs(60)];
    cfg.allowed_lateness = Duration::ZERO;
    cfg.flush_rows = 30;
    cfg.outbox = Some(OutboxConfig {
        windows: vec![Duration::from_secs(60)],
        max_bytes: 1 << 30,
        batch_rows: 10_000,
        batch_bytes: 1 << 20,
    });
    cfg
}

async fn open(cfg: StoreConfig) -> Store {
    let mut registry = prometheus_client::registry::Registry::default();
    tokio::task::spawn_blocking(move || Store::open(cfg, StoreMetrics::register(&mut registry)))
        .await
        .unwrap()
        .unwrap()
}

/// (count, sum) per (device, metric, window start).
type Sums = BTreeMap<(String, String, i64), (u64, f64)>;

/// The sequence numbers of the batches the outbox may send, and their rows' sums.
fn sent(store: &Store) -> (Vec<u64>, Sums) {
    let outbox = store.outbox().unwrap();
    let outbox = outbox.lock().unwrap();
    let committed = *store.checkpointed().borrow();
    let mut seqs = Vec::new();
    let mut rows = BTreeMap::new();
    for entry in outbox.sendable(committed) {
        seqs.push(entry.seq);
        let Some(Body::Rollups(c)) = outbox.read(entry.seq).unwrap().body else { panic!("rollups") };
        assert_eq!(c.window_ns, 60 * S, "only the configured size goes upstream");
        for r in decode_rollups(&c).unwrap() {
            let old = rows.insert((r.device.to_string(), r.metric.to_string(), r.start), (r.count, r.sum));
            assert!(old.is_none(), "a window sent twice: {r:?}");
        }
    }
    (seqs, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_windows_wait_in_the_outbox_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(config(dir.path())).await;
    let sink = store.sink();
    let mut readings = Vec::new();
    // Two devices, one reading every 5 s for 7 minutes, and one at 7:00 that closes minute 6.
    for step in 0..=84i64 {
        for d in 0..2 {
            readings.push(Reading {
                device: DeviceId::new(&format!("silo-{d}")).unwrap(),
                metric: Metric::new("level_pct").unwrap(),
                ts: Timestamp::from_nanos(T0 + step * 5 * S),
                value: (step * 3 + d) as f64 % 17.0,
                quality: Quality::Good,
                source: Source::Modbus,
            });
        }
    }
    for chunk in readings.chunks(4) {
        sink.submit(chunk.to_vec(), Timestamp::now()).await.unwrap().await.unwrap();
    }
    drop(sink);
    // A clean close flushes every closed window (minute 7 stays open, in the checkpoint).
    tokio::task::spawn_blocking(move || store.close()).await.unwrap();
    let mut want = Sums::new();
    for r in readings.iter().filter(|r| r.ts.as_nanos() < T0 + 7 * 60 * S) {
        let start = r.ts.as_nanos() - r.ts.as_nanos().rem_euclid(60 * S);
        let e = want.entry((r.device.to_string(), r.metric.to_string(), start)).or_insert((0, 0.0));
        *e = (e.0 + 1, e.1 + r.value);
    }
    let store = open(config(dir.path())).await;
    let (seqs, rows) = sent(&store);
    assert_eq!(rows, want, "the outbox holds exactly the closed minutes");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "contiguous from 1");
    tokio::task::spawn_blocking(move || store.close()).await.unwrap();

    // After another restart the same batches wait, with the same numbers; acknowledged ones go.
    let store = open(config(dir.path())).await;
    let (again, _) = sent(&store);
    assert_eq!(again, seqs);
    let outbox = store.outbox().unwrap();
    let last = *again.last().unwrap();
    outbox.lock().unwrap().ack(&[SeqRange { first: 1, last }]).unwrap();
    assert_eq!(outbox.lock().unwrap().usage(), (0, 0));
    assert_eq!(outbox.lock().unwrap().acked_through(), last);
    drop(outbox);
    tokio::task::spawn_blocking(move || store.close()).await.unwrap();
}

/// A file's rows as (device, metric, time, value) in file order: time is `window_start` and
/// value `sum` for rollups, `ts` and `value` for recordings.
fn file_rows(path: &Path) -> Vec<(String, String, i64, f64)> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, TimestampNanosecondType};
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let rollup = path.to_string_lossy().contains("/rollups/");
    let (time, value) = if rollup { ("window_start", "sum") } else { ("ts", "value") };
    let mut out = Vec::new();
    for batch in reader {
        let b = batch.unwrap();
        let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let (device, metric) = (s("device"), s("metric"));
        let t = b.column_by_name(time).unwrap().as_primitive::<TimestampNanosecondType>().clone();
        let v = b.column_by_name(value).unwrap().as_primitive::<Float64Type>().clone();
        for i in 0..b.num_rows() {
            out.push((device.value(i).to_owned(), metric.value(i).to_owned(), t.value(i), v.value(i)));
        }
    }
    out
}

/// Per `date=` directory (relative to the data dir): its files and all their rows, sorted.
type Days = BTreeMap<String, (usize, Vec<(String, String, i64, f64)>)>;

fn days(data: &Path) -> Days {
    let mut out = Days::new();
    for f in fieldgate_store::layout::parquet_files(&data.join("rollups"))
        .into_iter()
        .chain(fieldgate_store::layout::parquet_files(&data.join("recordings")))
    {
        let day = f.parent().unwrap().strip_prefix(data).unwrap().to_string_lossy().into_owned();
        let e = out.entry(day).or_default();
        e.0 += 1;
        e.1.extend(file_rows(&f));
    }
    for (_, rows) in out.values_mut() {
        rows.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    out
}

fn reading(device: &str, metric: &str, ts: i64, value: f64) -> Reading {
    Reading {
        device: DeviceId::new(device).unwrap(),
        metric: Metric::new(metric).unwrap(),
        ts: Timestamp::from_nanos(ts),
        value,
        quality: Quality::Good,
        source: Source::Modbus,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_group_of_closed_windows_is_flushed_without_waiting_for_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.outbox = None;
    cfg.flush_interval = Duration::from_secs(3600);
    cfg.flush_rows = 1 << 20;
    cfg.row_group_rows = 100;
    let store = open(cfg).await;
    let mut checkpointed = store.checkpointed();
    let before = *checkpointed.borrow_and_update();
    let sink = store.sink();
    // 60 series, a reading every 10 s: the second closes 60 windows of 10 s, the third 60 more,
    // past the row group of 100.
    for step in 0..3i64 {
        let batch = (0..60).map(|d| reading(&format!("bin-{d}"), "level", T0 + step * 10 * S, 1.0)).collect();
        sink.submit(batch, Timestamp::now()).await.unwrap().await.unwrap();
    }
    // A guard, not a wait for time to pass: the flush comes at once, or the test fails.
    tokio::time::timeout(Duration::from_secs(60), checkpointed.wait_for(|&seq| seq > before))
        .await
        .expect("flushed long before the hour")
        .unwrap();
    let parts = fieldgate_store::layout::parts(&fieldgate_store::layout::rollup_dir(dir.path(), 10 * S));
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!(file_rows(&parts[0].0).len(), 120);
    drop(sink);
    tokio::task::spawn_blocking(move || store.close()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_days_are_compacted_into_one_sorted_file_each() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let mut cfg = config(data);
    cfg.outbox = None;
    cfg.recordings = fieldgate_store::Recordings::All;
    cfg.flush_rows = 25;
    // Small row groups, so the compacted file has several and their order is checked too.
    cfg.row_group_rows = 64;
    let store = open(cfg.clone()).await;
    let sink = store.sink();
    // Two past days and today: 3 devices x 2 metrics, a reading every 20 s for 15 minutes.
    let today = Timestamp::now().as_nanos().div_euclid(86_400 * S) * 86_400 * S;
    for day in [T0, T0 + 86_400 * S, today] {
        for step in 0..45i64 {
            let mut batch = Vec::new();
            for d in 0..3 {
                for m in ["level_pct", "temp_c"] {
                    batch.push(reading(
                        &format!("silo-{d}"),
                        m,
                        day + step * 20 * S,
                        (step * 7 + d) as f64 % 11.0,
                    ));
                }
            }
            sink.submit(batch, Timestamp::now()).await.unwrap().await.unwrap();
        }
    }
    drop(sink);
    tokio::task::spawn_blocking(move || store.close()).await.unwrap();
    let before = days(data);
    let day0 = "rollups/window=1m/date=2026-03-01";
    assert!(before[day0].0 > 5, "many parts before: {}", before[day0].0);

    let store = open(cfg.clone()).await;
    let report = tokio::task::block_in_place(|| store.compact_now()).unwrap();
    let after = days(data);
    // Two past days, each with 10 s and 1 min rollups and recordings.
    assert_eq!(report.partitions, 6, "{report:?}");
    let today_dir = format!("date={}", Timestamp::from_nanos(today).date_string());
    let past_parts: usize = before.iter().filter(|(k, _)| !k.ends_with(&today_dir)).map(|(_, v)| v.0).sum();
    assert_eq!(report.files_in, past_parts as u64);
    assert_eq!(after.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>());
    for (day, (files, rows)) in &after {
        let was = &before[day];
        assert_eq!(rows, &was.1, "{day}: the same rows");
        let is_today = day.ends_with(&today_dir);
        assert_eq!(
            *files,
            if is_today { was.0 } else { 1 },
            "{day}: one file for a past day, today untouched"
        );
        if !is_today {
            let file = fieldgate_store::layout::parquet_files(&data.join(day)).remove(0);
            let in_order = file_rows(&file);
            let mut sorted = in_order.clone();
            sorted.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
            assert_eq!(in_order, sorted, "{day}: sorted by device, metric and time");
        }
    }
    // The old parts wait aside for the next pass, so a reader that listed them can still open them.
    assert!(data.join("state/compact").exists());

    // A device whose clock is a day behind writes into a compacted day: one more part, merged
    // at the next pass.
    let sink = store.sink();
    let late: Vec<Reading> =
        (0..6).map(|i| reading("silo-late", "level_pct", T0 + i * 30 * S, i as f64)).collect();
    sink.submit(late, Timestamp::now()).await.unwrap().await.unwrap();
    drop(sink);
    tokio::task::spawn_blocking(move || store.close()).await.unwrap();
    let mut with_late = days(data);
    assert_eq!(with_late[day0].0, 2, "the compacted file and the late part");
    let store = open(cfg).await;
    assert!(!data.join("state/compact").exists(), "what was aside is gone after a restart");
    let report = tokio::task::block_in_place(|| store.compact_now()).unwrap();
    assert_eq!(report.partitions, 3, "the first day's 10 s, 1 min and recordings again: {report:?}");
    for (day, (files, _)) in with_late.iter_mut() {
        if day.ends_with("date=2026-03-01") {
            *files = 1;
        }
    }
    assert_eq!(days(data), with_late, "one file each again, with the late rows");
    tokio::task::spawn_blocking(move || store.close()).await.unwrap();
}
