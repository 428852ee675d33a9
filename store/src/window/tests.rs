use super::*;
use fieldgate_proto::Source;
use proptest::prelude::*;

const S: i64 = 1_000_000_000;

fn settings() -> WindowSettings {
    WindowSettings {
        sizes: vec![Duration::from_secs(10), Duration::from_secs(60)],
        allowed_lateness: Duration::from_secs(5),
        idle_close: Duration::from_secs(120),
        max_clock_skew: Duration::from_secs(300),
    }
}

fn r(device: &str, metric: &str, ts_s: f64, value: f64) -> Reading {
    Reading {
        device: DeviceId::new(device).unwrap(),
        metric: Metric::new(metric).unwrap(),
        ts: Timestamp::from_nanos((ts_s * 1e9) as i64),
        value,
        quality: Quality::Good,
        source: Source::Mqtt,
    }
}

fn at(s: i64) -> Timestamp {
    Timestamp::from_nanos(s * S)
}

#[test]
fn windows_aggregate_and_close_on_the_series_watermark() {
    let mut w = Windows::new(&settings());
    let out = w.apply(
        at(100),
        &[r("bin-1", "level", 1.0, 5.0), r("bin-1", "level", 3.0, 1.0), r("bin-1", "level", 2.0, 9.0)],
    );
    assert_eq!(out.aggregated, 3);
    assert_eq!(w.closed_len(), 0);
    // 14.9 s: [0, 10) ends at 10, +5 s lateness = 15: still open.
    w.apply(at(100), &[r("bin-1", "level", 14.9, 2.0)]);
    assert_eq!(w.closed_len(), 0);
    w.apply(at(100), &[r("bin-1", "level", 15.0, 4.0)]);
    let closed = w.take_closed();
    assert_eq!(closed[0].len(), 1);
    assert!(closed[1].is_empty());
    let row = &closed[0][0];
    assert_eq!((row.start, row.window_ns, row.count), (0, 10 * S, 3));
    assert_eq!((row.min, row.max, row.sum), (1.0, 9.0, 15.0));
    assert_eq!((row.first, row.first_ts), (5.0, S), "first by timestamp");
    assert_eq!((row.last, row.last_ts), (1.0, 3 * S), "last by timestamp, not by arrival");
    assert_eq!(row.mean(), 5.0);
    let open = w.open_rollups();
    assert_eq!(open.len(), 2, "[10,20) of 10 s and [0,60) of 1 min");
    assert_eq!(open.iter().find(|o| o.window_ns == 60 * S).unwrap().count, 5);
}

#[test]
fn late_readings_are_counted_per_window_size() {
    let mut w = Windows::new(&settings());
    w.apply(at(0), &[r("a", "m", 1.0, 1.0), r("a", "m", 20.0, 1.0)]);
    // [0,10) closed (20 >= 10 + 5). A reading at 2 s is late for 10 s, so for 1 min too:
    // every size aggregates the same readings.
    let out = w.apply(at(0), &[r("a", "m", 2.0, 1.0)]);
    assert_eq!(out.late, vec![1, 1]);
    assert_eq!(out.aggregated, 0);
    // Within lateness: [10,20) ends at 20; watermark 20 < 25, so 12 s is still accepted.
    let out = w.apply(at(0), &[r("a", "m", 12.0, 1.0)]);
    assert_eq!(out.late, vec![0, 0]);
    // A reading for a window never opened, already past its lateness, is late too.
    w.apply(at(0), &[r("a", "m", 100.0, 1.0)]);
    let out = w.apply(at(0), &[r("a", "m", 31.0, 1.0)]);
    assert_eq!(out.late, vec![1, 1]);
    assert_eq!(out.aggregated, 0);
}

#[test]
fn series_that_come_in_order_do_not_wait_for_stragglers() {
    let mut w = Windows::new(&settings());
    let modbus =
        |ts_s: f64, value: f64| Reading { source: Source::Modbus, ..r("bin-1", "level", ts_s, value) };
    w.apply(at(0), &[modbus(1.0, 1.0), modbus(9.0, 2.0), r("tank-1", "level", 1.0, 1.0)]);
    // The first Modbus reading past 10 s closes [0, 10) at once; the MQTT series, with the
    // same timestamps, waits its 5 s of lateness.
    w.apply(at(0), &[modbus(10.0, 3.0), r("tank-1", "level", 10.0, 1.0)]);
    let closed = w.take_closed();
    assert_eq!(closed[0].len(), 1);
    assert_eq!((closed[0][0].device.as_str(), closed[0][0].count), ("bin-1", 2));
    assert_eq!(w.open_count(), 5, "bin-1: [10, 20) and [0, 60); tank-1: [0, 10), [10, 20) and [0, 60)");
    // Anything older than the newest is late for a Modbus series, and counted.
    let out = w.apply(at(0), &[modbus(9.5, 4.0)]);
    assert_eq!(out.late, vec![1, 1]);
}

#[test]
fn a_skewed_clock_delays_only_its_own_series() {
    let mut w = Windows::new(&settings());
    // "fast" runs 30 min ahead; "ok" keeps its windows regardless.
    w.apply(at(2000), &[r("fast", "t", 1800.0, 1.0), r("ok", "t", 1.0, 1.0)]);
    let out = w.apply(at(2000), &[r("ok", "t", 2.0, 1.0)]);
    assert_eq!(out.late, vec![0, 0]);
    assert_eq!(out.aggregated, 1);
}

#[test]
fn unusable_values_are_counted_not_averaged() {
    let mut w = Windows::new(&settings());
    let mut bad = r("a", "m", 1.0, 7.0);
    bad.quality = Quality::Bad;
    let out = w.apply(
        at(0),
        &[
            r("a", "m", 1.0, f64::NAN),
            r("a", "m", 2.0, f64::INFINITY),
            r("a", "m", 3.0, f64::NEG_INFINITY),
            bad,
            r("a", "m", 301.0, 1.0), // beyond the 300 s allowed clock skew
            r("a", "m", 4.0, 2.0),
        ],
    );
    assert_eq!(
        out,
        Outcome {
            aggregated: 1,
            not_finite: 3,
            bad_quality: 1,
            future_timestamp: 1,
            late: vec![0, 0],
            duplicate: 0
        }
    );
    let open = w.open_rollups();
    assert!(open.iter().all(|o| o.count == 1 && o.sum == 2.0), "{open:?}");
}

#[test]
fn a_redelivered_reading_is_counted_once() {
    let mut w = Windows::new(&settings());
    let batch = [r("c1", "fill", 1.0, 1.0), r("c1", "fill", 2.0, 2.0)];
    w.apply(at(0), &batch);
    let out = w.apply(at(0), &batch);
    assert_eq!((out.aggregated, out.duplicate), (0, 2));
    // Same timestamp on another metric or device is a different reading.
    let out = w.apply(at(0), &[r("c1", "speed", 1.0, 1.0), r("c2", "fill", 1.0, 1.0)]);
    assert_eq!(out.aggregated, 2);
    assert!(
        w.open_rollups()
            .iter()
            .filter(|o| o.metric.as_str() == "fill" && o.device.as_str() == "c1")
            .all(|o| o.count == 2)
    );
}

#[test]
fn idle_series_are_closed_by_ticks() {
    let mut w = Windows::new(&settings());
    w.apply(at(1000), &[r("quiet", "t", 1.0, 1.0)]);
    w.apply(at(1100), &[r("busy", "t", 1.0, 1.0)]);
    assert!(!w.tick_due(at(1119)));
    assert!(w.tick_due(at(1120)));
    w.tick(at(1120));
    let closed = w.take_closed();
    assert_eq!(closed[0].len() + closed[1].len(), 2);
    assert!(closed.iter().flatten().all(|c| c.device.as_str() == "quiet"));
    // A reading into a window closed by idleness is late.
    let out = w.apply(at(1121), &[r("quiet", "t", 2.0, 1.0)]);
    assert_eq!(out.late, vec![1, 1]);
    assert!(!w.tick_due(at(1121)));
}

fn arb_readings() -> impl Strategy<Value = Vec<(u8, u8, i64, i32, i64)>> {
    // (device, metric, ts in 100 ms steps, value, arrival in s)
    proptest::collection::vec((0u8..3, 0u8..2, 0i64..2000, -50i32..50, 0i64..400), 1..200)
}

fn to_batches(raw: &[(u8, u8, i64, i32, i64)]) -> Vec<(Timestamp, Vec<Reading>)> {
    raw.chunks(7)
        .map(|c| {
            let arrival = c.iter().map(|x| x.4).max().unwrap_or(0);
            let readings = c
                .iter()
                .map(|&(d, m, ts, v, _)| {
                    r(&format!("d{d}"), &format!("m{m}"), ts as f64 / 10.0, f64::from(v))
                })
                .collect();
            (at(arrival), readings)
        })
        .collect()
}

proptest! {
    /// Snapshot at any point, restore, continue: the same rows come out as without the
    /// snapshot. This is what makes recovery from a checkpoint plus WAL replay exact.
    #[test]
    fn snapshot_then_continue_equals_straight_through(raw in arb_readings(), cut in 0usize..40, tick_at in 0i64..600) {
        let batches = to_batches(&raw);
        let cut = cut.min(batches.len());
        let run = |w: &mut Windows, batches: &[(Timestamp, Vec<Reading>)]| {
            for (arrival, readings) in batches {
                w.apply(*arrival, readings);
            }
            w.tick(at(tick_at));
        };
        let mut straight = Windows::new(&settings());
        for (arrival, readings) in &batches[..cut] {
            straight.apply(*arrival, readings);
        }
        let mut enc = Enc::default();
        straight.encode(&mut enc);
        let (mut restored, dropped) = Windows::decode(&settings(), &mut Dec::new(&enc.buf)).unwrap();
        prop_assert_eq!(dropped, 0);
        run(&mut straight, &batches[cut..]);
        run(&mut restored, &batches[cut..]);
        prop_assert_eq!(straight.take_closed(), restored.take_closed());
        prop_assert_eq!(straight.open_rollups(), restored.open_rollups());
    }

    /// A broker redelivers everything after the last acknowledged batch, however much that
    /// is: the rows are the same as if each batch had arrived once.
    #[test]
    fn redelivery_of_any_in_flight_tail_is_counted_once(raw in arb_readings(), acked in 0usize..40, delivered in 0usize..40) {
        let batches = to_batches(&raw);
        let delivered = delivered.min(batches.len());
        let acked = acked.min(delivered);
        let mut once = Windows::new(&settings());
        for (arrival, readings) in &batches {
            once.apply(*arrival, readings);
        }
        let mut twice = Windows::new(&settings());
        for (arrival, readings) in batches[..delivered].iter().chain(&batches[acked..]) {
            twice.apply(*arrival, readings);
        }
        prop_assert_eq!(once.take_closed(), twice.take_closed());
        prop_assert_eq!(once.open_rollups(), twice.open_rollups());
    }

    /// Every window size aggregates the same readings: a reading late for the finest size is
    /// late for all of them.
    #[test]
    fn all_sizes_aggregate_the_same_readings(raw in arb_readings()) {
        let mut w = Windows::new(&settings());
        let mut aggregated = 0;
        for (arrival, readings) in to_batches(&raw) {
            aggregated += w.apply(arrival, &readings).aggregated;
        }
        let closed = w.take_closed();
        let open = w.open_rollups();
        for (k, size) in [10 * S, 60 * S].into_iter().enumerate() {
            let total: u64 = closed[k].iter().map(|r| r.count).sum::<u64>()
                + open.iter().filter(|o| o.window_ns == size).map(|o| o.count).sum::<u64>();
            prop_assert_eq!(total, aggregated);
        }
    }

    /// Every accepted reading is in exactly one window of each size it was not late for.
    #[test]
    fn counts_are_conserved(raw in arb_readings()) {
        let mut w = Windows::new(&settings());
        let mut accepted_per_size = [0u64; 2];
        for (arrival, readings) in to_batches(&raw) {
            let out = w.apply(arrival, &readings);
            let considered = readings.len() as u64 - out.duplicate - out.not_finite - out.bad_quality - out.future_timestamp;
            for (accepted, late) in accepted_per_size.iter_mut().zip(&out.late) {
                *accepted += considered - late;
            }
        }
        let closed = w.take_closed();
        let open = w.open_rollups();
        for (k, size) in [10 * S, 60 * S].into_iter().enumerate() {
            let total: u64 = closed[k].iter().map(|r| r.count).sum::<u64>()
                + open.iter().filter(|o| o.window_ns == size).map(|o| o.count).sum::<u64>();
            prop_assert_eq!(total, accepted_per_size[k]);
        }
    }
}

#[test]
fn a_changed_window_config_keeps_the_common_sizes() {
    let mut w = Windows::new(&settings());
    w.apply(at(0), &[r("a", "m", 1.0, 1.0), r("a", "m", 30.0, 1.0)]);
    let mut enc = Enc::default();
    w.encode(&mut enc);
    let mut changed = settings();
    changed.sizes = vec![Duration::from_secs(60), Duration::from_secs(3600)];
    let (restored, dropped) = Windows::decode(&changed, &mut Dec::new(&enc.buf)).unwrap();
    assert_eq!(dropped, 2, "the open [30,40) window and the closed [0,10) row of the dropped 10 s size");
    let open = restored.open_rollups();
    assert_eq!(open.len(), 1);
    assert_eq!((open[0].window_ns, open[0].count), (60 * S, 2));
}

#[test]
fn modbus_readings_are_not_remembered_for_duplicate_detection() {
    let mut w = Windows::new(&settings());
    let mut modbus = r("pump-1", "rpm", 1.0, 5.0);
    modbus.source = Source::Modbus;
    let out = w.apply(at(2), &[modbus.clone(), modbus]);
    assert_eq!((out.aggregated, out.duplicate), (2, 0), "a poll's readings are never redeliveries");
    let mqtt = r("cart-1", "fill", 1.0, 5.0);
    let out = w.apply(at(2), &[mqtt.clone(), mqtt]);
    assert_eq!((out.aggregated, out.duplicate), (1, 1));
}

#[test]
fn rows_put_back_after_a_failed_flush_come_out_first_at_the_next() {
    let mut w = Windows::new(&settings());
    w.apply(at(100), &[r("bin-1", "level", 1.0, 1.0), r("bin-1", "level", 16.0, 2.0)]);
    let taken = w.take_closed();
    assert_eq!(taken[0].iter().map(|row| row.start).collect::<Vec<_>>(), vec![0]);
    // The checkpoint could not be written: the rows go back, and more close meanwhile.
    w.put_back_closed(taken);
    w.apply(at(100), &[r("bin-1", "level", 26.0, 3.0)]);
    let closed = w.take_closed();
    assert_eq!(closed[0].iter().map(|row| row.start).collect::<Vec<_>>(), vec![0, 10 * S]);
    assert_eq!(w.closed_len(), 0);
}
