//! Stats answers against a reference computed here from the raw readings, with the store
//! holding some windows in files, some closed but unwritten, and some still open.
#![allow(clippy::unwrap_used)]

use fieldgate_analytics::{
    Aggregate, DeviceActivity, QueryError, StatsQuery, StatsRow, TopQuery, TopRow, activity, stats, top,
};
use fieldgate_proto::{DeviceId, Metric, Quality, Reading, Source, Timestamp};
use fieldgate_store::{Store, StoreConfig, StoreMetrics};
use std::collections::BTreeMap;
use std::time::Duration;

const S: i64 = 1_000_000_000;
/// 2026-03-01T00:00:00Z.
const T0: i64 = 1_772_323_200 * S;

fn readings() -> Vec<Reading> {
    let mut out = Vec::new();
    // Three devices, two metrics, one reading every 3 s for 6 min 20 s; values that differ
    // per series and are not monotonic (first/last and min/max mean something).
    for step in 0..127i64 {
        for d in 0..3 {
            for (m, metric) in ["level_pct", "temp_c"].iter().enumerate() {
                let x = step * 3;
                let value = ((x * 7 + d * 13 + m as i64 * 5) % 23) as f64 * 0.5 - (d as f64);
                out.push(Reading {
                    device: DeviceId::new(&format!("bin-{d}")).unwrap(),
                    metric: Metric::new(metric).unwrap(),
                    ts: Timestamp::from_nanos(T0 + x * S + d * 100_000_000),
                    value,
                    quality: Quality::Good,
                    source: Source::Modbus,
                });
            }
        }
    }
    out
}

/// The answer computed from raw readings: rows of source window `w` whose start is in
/// `[from, to)`, merged into buckets of `bucket` starting at `from`.
fn reference(all: &[Reading], q: &StatsQuery, w: i64, bucket: i64) -> Vec<StatsRow> {
    let (from, to) = (q.from.as_nanos(), q.to.unwrap().as_nanos());
    let mut groups: BTreeMap<(String, String, i64), Vec<&Reading>> = BTreeMap::new();
    for r in all {
        let ts = r.ts.as_nanos();
        let start = ts - ts.rem_euclid(w);
        let wanted = |names: &[String], n: &str| names.is_empty() || names.iter().any(|x| x == n);
        let devices: Vec<String> = q.devices.iter().map(ToString::to_string).collect();
        let metrics: Vec<String> = q.metrics.iter().map(ToString::to_string).collect();
        if start < from
            || start >= to
            || !wanted(&devices, r.device.as_str())
            || !wanted(&metrics, r.metric.as_str())
        {
            continue;
        }
        let b = from + (start - from) / bucket * bucket;
        groups.entry((r.device.to_string(), r.metric.to_string(), b)).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((device, metric, b), rs)| {
            let sum: f64 = rs.iter().map(|r| r.value).sum();
            let first = rs.iter().min_by_key(|r| r.ts).unwrap();
            let last = rs.iter().max_by_key(|r| r.ts).unwrap();
            StatsRow {
                device,
                metric,
                window_start: Timestamp::from_nanos(b),
                window_end: Timestamp::from_nanos(b + bucket),
                count: rs.len() as u64,
                min: rs.iter().map(|r| r.value).fold(f64::INFINITY, f64::min),
                max: rs.iter().map(|r| r.value).fold(f64::NEG_INFINITY, f64::max),
                mean: sum / rs.len() as f64,
                sum,
                first: first.value,
                last: last.value,
                first_ts: first.ts,
                last_ts: last.ts,
            }
        })
        .collect()
}

fn close(got: &[StatsRow], want: &[StatsRow], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: rows\n got {got:#?}\nwant {want:#?}");
    for (g, w) in got.iter().zip(want) {
        let same = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(1.0);
        assert!(
            g.device == w.device
                && g.metric == w.metric
                && g.window_start == w.window_start
                && g.window_end == w.window_end
                && g.count == w.count
                && g.first_ts == w.first_ts
                && g.last_ts == w.last_ts
                && [
                    (g.min, w.min),
                    (g.max, w.max),
                    (g.sum, w.sum),
                    (g.mean, w.mean),
                    (g.first, w.first),
                    (g.last, w.last)
                ]
                .iter()
                .all(|(a, b)| same(*a, *b)),
            "{what}:\n got {g:?}\nwant {w:?}"
        );
    }
}

fn at(s: i64) -> Timestamp {
    Timestamp::from_nanos(T0 + s * S)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_merge_files_unwritten_and_open_windows_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path());
    cfg.windows = vec![Duration::from_secs(10), Duration::from_secs(60)];
    cfg.allowed_lateness = Duration::ZERO;
    // Flush as soon as a few rows wait, so some windows are in files, some are not.
    cfg.flush_rows = 40;
    let mut registry = prometheus_client::registry::Registry::default();
    let store = tokio::task::spawn_blocking(move || Store::open(cfg, StoreMetrics::register(&mut registry)))
        .await
        .unwrap()
        .unwrap();
    let all = readings();
    let sink = store.sink();
    for chunk in all.chunks(6) {
        sink.submit(chunk.to_vec(), Timestamp::now()).await.unwrap().await.unwrap();
    }
    let reader = store.reader();
    let source =
        fieldgate_analytics::Source::Store { data_dir: dir.path().to_owned(), reader: reader.clone() };
    let files = fieldgate_store::layout::parts(&fieldgate_store::layout::rollup_dir(dir.path(), 10 * S));
    assert!(!files.is_empty(), "some windows are in files already");

    let bin = |d: &str| DeviceId::new(d).unwrap();
    let cases: Vec<(&str, StatsQuery, i64, i64)> = vec![
        (
            "10 s buckets, all",
            StatsQuery {
                devices: vec![],
                metrics: vec![],
                from: at(0),
                to: Some(at(400)),
                window: Some(Duration::from_secs(10)),
            },
            10,
            10,
        ),
        (
            "1 min from 1 min",
            StatsQuery {
                devices: vec![],
                metrics: vec![],
                from: at(60),
                to: Some(at(420)),
                window: Some(Duration::from_secs(60)),
            },
            60,
            60,
        ),
        (
            "1 min ending off the minute: from 10 s, so nothing after `to` comes in",
            StatsQuery {
                devices: vec![],
                metrics: vec![],
                from: at(60),
                to: Some(at(370)),
                window: Some(Duration::from_secs(60)),
            },
            10,
            60,
        ),
        (
            "2 min from 1 min",
            StatsQuery {
                devices: vec![bin("bin-1")],
                metrics: vec![],
                from: at(0),
                to: Some(at(480)),
                window: Some(Duration::from_secs(120)),
            },
            60,
            120,
        ),
        (
            "30 s from 10 s, off the minute",
            StatsQuery {
                devices: vec![bin("bin-2"), bin("bin-0")],
                metrics: vec![Metric::new("temp_c").unwrap()],
                from: at(20),
                to: Some(at(350)),
                window: Some(Duration::from_secs(30)),
            },
            10,
            30,
        ),
        (
            "one bucket",
            StatsQuery {
                devices: vec![],
                metrics: vec![Metric::new("level_pct").unwrap()],
                from: at(0),
                to: Some(at(360)),
                window: None,
            },
            60,
            360,
        ),
    ];
    // The same answers from the flushes' parts and, once the day is compacted, from one file
    // per window size (the day, 2026-03-01, is long over).
    for layout in ["parts", "compacted"] {
        if layout == "compacted" {
            let report = tokio::task::block_in_place(|| store.compact_now()).unwrap();
            assert_eq!(report.partitions, 2, "10 s and 1 min: {report:?}");
            let files =
                fieldgate_store::layout::parts(&fieldgate_store::layout::rollup_dir(dir.path(), 10 * S));
            assert_eq!(files.len(), 1);
        }
        for (what, q, w, b) in cases.clone() {
            let answer = stats(&source, &q).await.unwrap();
            assert_eq!(
                answer.source_window,
                Duration::from_secs(w as u64),
                "{what}: the coarsest stored window that fits"
            );
            close(&answer.rows, &reference(&all, &q, w * S, b * S), &format!("{what} ({layout})"));
        }
    }
    // The open windows are in: the last reading (at 378.2 s) is counted.
    let q = StatsQuery {
        devices: vec![bin("bin-2")],
        metrics: vec![],
        from: at(370),
        to: Some(at(380)),
        window: None,
    };
    let last = stats(&source, &q).await.unwrap();
    assert!(last.rows.iter().all(|r| r.count > 0) && !last.rows.is_empty(), "{last:?}");

    // A range reaching now needs no boundary at its end: nothing is stored after now.
    let open = StatsQuery { devices: vec![], metrics: vec![], from: at(0), to: None, window: None };
    let answer = stats(&source, &open).await.unwrap();
    assert_eq!(answer.rows.iter().map(|r| r.count).sum::<u64>(), all.len() as u64);

    let base = StatsQuery { devices: vec![], metrics: vec![], from: at(0), to: Some(at(60)), window: None };
    let refusals = [
        StatsQuery { window: Some(Duration::from_secs(7)), ..base.clone() },
        StatsQuery { from: at(60), to: Some(at(0)), ..base.clone() },
        StatsQuery { from: at(5), ..base.clone() },
        StatsQuery { to: Some(at(65)), ..base.clone() },
    ];
    let mut messages = Vec::new();
    for q in refusals {
        match stats(&source, &q).await {
            Err(QueryError::Invalid(m)) => messages.push(m),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(messages[0], "a window of 7s is not a multiple of a stored window (10s, 1m)");
    assert!(messages[1].starts_with("`from` (2026-03-01T00:01:00"), "{}", messages[1]);
    assert!(messages[2].contains("is not on a boundary of a stored window"), "{}", messages[2]);
    assert!(messages[3].starts_with("`to` (2026-03-01T00:01:05"), "{}", messages[3]);

    // Top N and per-device activity, against the raw readings.
    for (aggregate, ascending, range) in [
        (Aggregate::Mean, false, (0, 360)),
        (Aggregate::Max, true, (60, 300)),
        (Aggregate::Last, false, (0, 380)),
    ] {
        let q = TopQuery {
            metric: Metric::new("temp_c").unwrap(),
            devices: vec![],
            from: at(range.0),
            to: Some(at(range.1)),
            aggregate,
            n: 2,
            ascending,
        };
        let got = top(&source, &q).await.unwrap().rows;
        assert_eq!(got, top_reference(&all, &q), "{q:?}");
    }
    let got = activity(&source, &[], at(60), Some(at(300))).await.unwrap().rows;
    assert_eq!(got, activity_reference(&all, at(60), at(300)));
    let one = activity(&source, &[bin("bin-1")], at(0), Some(at(360))).await.unwrap().rows;
    assert_eq!(
        one,
        activity_reference(&all, at(0), at(360))
            .into_iter()
            .filter(|a| a.device == "bin-1")
            .collect::<Vec<_>>()
    );
    drop(sink);
    tokio::task::spawn_blocking(move || store.close()).await.unwrap();
}

fn in_range(r: &Reading, from: Timestamp, to: Timestamp) -> bool {
    // Rows are kept by window start; with aligned bounds that is the reading's own time.
    r.ts >= from && r.ts < to
}

fn top_reference(all: &[Reading], q: &TopQuery) -> Vec<TopRow> {
    let mut by_device: BTreeMap<&str, Vec<&Reading>> = BTreeMap::new();
    for r in all.iter().filter(|r| r.metric == q.metric && in_range(r, q.from, q.to.unwrap())) {
        by_device.entry(r.device.as_str()).or_default().push(r);
    }
    let mut rows: Vec<TopRow> = by_device
        .into_iter()
        .map(|(device, rs)| {
            let values = rs.iter().map(|r| r.value);
            let value = match q.aggregate {
                Aggregate::Mean => values.sum::<f64>() / rs.len() as f64,
                Aggregate::Max => values.fold(f64::NEG_INFINITY, f64::max),
                Aggregate::Min => values.fold(f64::INFINITY, f64::min),
                Aggregate::Sum => values.sum(),
                Aggregate::Count => rs.len() as f64,
                Aggregate::First => rs.iter().min_by_key(|r| r.ts).unwrap().value,
                Aggregate::Last => rs.iter().max_by_key(|r| r.ts).unwrap().value,
            };
            let last_ts = rs.iter().map(|r| r.ts).max().unwrap();
            TopRow { device: device.to_owned(), value, count: rs.len() as u64, last_ts }
        })
        .collect();
    rows.sort_by(|a, b| {
        let order = a.value.total_cmp(&b.value);
        (if q.ascending { order } else { order.reverse() }).then_with(|| a.device.cmp(&b.device))
    });
    rows.truncate(q.n);
    rows
}

fn activity_reference(all: &[Reading], from: Timestamp, to: Timestamp) -> Vec<DeviceActivity> {
    let mut by_device: BTreeMap<&str, Vec<&Reading>> = BTreeMap::new();
    for r in all.iter().filter(|r| in_range(r, from, to)) {
        by_device.entry(r.device.as_str()).or_default().push(r);
    }
    let minutes = (to.as_nanos() - from.as_nanos()) as f64 / 60e9;
    by_device
        .into_iter()
        .map(|(device, rs)| DeviceActivity {
            device: device.to_owned(),
            readings: rs.len() as u64,
            metrics: rs.iter().map(|r| r.metric.as_str()).collect::<std::collections::BTreeSet<_>>().len()
                as u32,
            per_minute: rs.len() as f64 / minutes,
            first_ts: rs.iter().map(|r| r.ts).min().unwrap(),
            last_ts: rs.iter().map(|r| r.ts).max().unwrap(),
        })
        .collect()
}

/// A rollup file as the store wrote them before names became plain strings: device and
/// metric as Arrow dictionaries.
fn write_old_format(path: &std::path::Path, device: &str, starts: &[i64], window: i64) {
    use arrow_array::types::Int32Type;
    use arrow_array::{
        ArrayRef, Float64Array, TimestampNanosecondArray, UInt64Array, builder::StringDictionaryBuilder,
    };
    use arrow_schema::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;
    let ts = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let schema = Arc::new(Schema::new(vec![
        Field::new("device", dict.clone(), false),
        Field::new("metric", dict, false),
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts.clone(), false),
        Field::new("count", DataType::UInt64, false),
        Field::new("min", DataType::Float64, false),
        Field::new("max", DataType::Float64, false),
        Field::new("mean", DataType::Float64, false),
        Field::new("sum", DataType::Float64, false),
        Field::new("first", DataType::Float64, false),
        Field::new("last", DataType::Float64, false),
        Field::new("first_ts", ts.clone(), false),
        Field::new("last_ts", ts, false),
    ]));
    let names = |v: &str| -> ArrayRef {
        let mut b = StringDictionaryBuilder::<Int32Type>::new();
        starts.iter().for_each(|_| b.append_value(v));
        Arc::new(b.finish())
    };
    let times = |offset: i64| -> ArrayRef {
        Arc::new(
            TimestampNanosecondArray::from(starts.iter().map(|s| s + offset).collect::<Vec<_>>())
                .with_timezone("UTC"),
        )
    };
    let f = |v: f64| -> ArrayRef { Arc::new(Float64Array::from(vec![v; starts.len()])) };
    let batch = arrow_array::RecordBatch::try_new(
        schema.clone(),
        vec![
            names(device),
            names("level_pct"),
            times(0),
            times(window),
            Arc::new(UInt64Array::from(vec![2u64; starts.len()])),
            f(1.0),
            f(3.0),
            f(2.0),
            f(4.0),
            f(1.0),
            f(3.0),
            times(1),
            times(window - 1),
        ],
    )
    .unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_from_before_names_became_plain_strings_are_read_with_the_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path());
    cfg.windows = vec![Duration::from_secs(60)];
    cfg.allowed_lateness = Duration::ZERO;
    cfg.flush_rows = 1;
    let mut registry = prometheus_client::registry::Registry::default();
    let store = tokio::task::spawn_blocking(move || Store::open(cfg, StoreMetrics::register(&mut registry)))
        .await
        .unwrap()
        .unwrap();
    // An old file: two minutes of `old-1`, as a flush before this store's first.
    let day = fieldgate_store::layout::rollup_dir(dir.path(), 60 * S).join("date=2026-03-01");
    write_old_format(
        &day.join(fieldgate_store::layout::part_name(T0, 0)),
        "old-1",
        &[T0, T0 + 60 * S],
        60 * S,
    );
    // New rows of `new-1`, closed and flushed.
    let sink = store.sink();
    let new: Vec<Reading> = (0..3)
        .map(|m| Reading {
            device: DeviceId::new("new-1").unwrap(),
            metric: Metric::new("level_pct").unwrap(),
            ts: Timestamp::from_nanos(T0 + m * 60 * S + 5 * S),
            value: 10.0,
            quality: Quality::Good,
            source: Source::Modbus,
        })
        .collect();
    sink.submit(new, Timestamp::now()).await.unwrap().await.unwrap();
    let reader = store.reader();
    let source = fieldgate_analytics::Source::Store { data_dir: dir.path().to_owned(), reader };
    let q = StatsQuery { devices: vec![], metrics: vec![], from: at(0), to: Some(at(120)), window: None };
    let rows = stats(&source, &q).await.unwrap().rows;
    let got: Vec<(&str, u64, f64)> = rows.iter().map(|r| (r.device.as_str(), r.count, r.sum)).collect();
    assert_eq!(got, vec![("new-1", 2, 20.0), ("old-1", 4, 8.0)]);
    drop(sink);
    tokio::task::spawn_blocking(move || store.close()).await.unwrap();
}
