//! The upstream outbox filled by a running store: the closed windows of the configured size
//! arrive as sequenced batches with the flushes that wrote them, hold exactly the readings
//! submitted, stay across a restart until acknowledged, and keep their numbers.
#![allow(clippy::unwrap_used)]

use fieldgate_proto::v1::SeqRange;
use fieldgate_proto::v1::batch::Body;
use fieldgate_proto::{DeviceId, Metric, Quality, Reading, Source, Timestamp};
use fieldgate_store::outbox::decode_rollups;
use fieldgate_store::{OutboxConfig, Store, StoreConfig, StoreMetrics};
use std::collections::BTreeMap;
use std::time::Duration;

const S: i64 = 1_000_000_000;
/// 2026-03-01T00:00:00Z.
const T0: i64 = 1_772_323_200 * S;

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir);
    cfg.windows = vec![Duration::from_secs(10), Duration::from_secs(60)];
    cfg.allowed_lateness = Duration::ZERO;
    cfg.flush_rows = 30;
    cfg.outbox = Some(OutboxConfig { windows: vec![Duration::from_secs(60)], max_bytes: 1 << 30 });
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
