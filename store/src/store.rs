//! [`Store`]: opening (with recovery), the ingest sink, status, and closing.

use crate::codec::{self, Dec, Event};
use crate::config::StoreConfig;
use crate::metrics::StoreMetrics;
use crate::snapshot::StoreReader;
use crate::wal::{Wal, WalRecovery};
use crate::window::{WindowSettings, Windows};
use crate::writer::{Shared, Writer, run_flusher};
use crate::{checkpoint, layout};
use fieldgate_proto::{Reading, ReadingSink, Submission};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use tokio::sync::{mpsc, watch};

/// What the store is doing, for health reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreStatus {
    /// Accepting and writing.
    Ok,
    /// Writes fail for lack of space; producers wait; it resumes by itself when space returns.
    DiskFull(String),
    /// Writes fail for another reason; retried.
    Failed(String),
    /// Closed (or its writer thread ended).
    Stopped,
}

/// What [`Store::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The checkpoint recovery started from (`None`: a fresh store).
    pub checkpoint_seq: Option<u64>,
    /// WAL records after the checkpoint, replayed into the windows.
    pub replayed_records: u64,
    /// What reading the WAL found.
    pub wal: WalRecovery,
    /// What opening the upstream outbox found (`None`: no outbox configured).
    pub outbox: Option<crate::OutboxRecovery>,
    /// Checkpoints that failed their checks and were skipped.
    pub damaged_checkpoints: u64,
    /// WAL records whose CRC was right but whose content could not be decoded.
    pub undecodable_records: u64,
    /// Parquet parts of a flush that had not committed, removed (they are rewritten).
    pub orphan_files: u64,
    /// Open windows of window sizes no longer configured, dropped.
    pub dropped_windows: usize,
}

/// Why the store could not open.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the store's {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
}

/// The local store. Open it, hand [`Store::sink`] to the producers, and [`Store::close`] it
/// after they are gone.
#[derive(Debug)]
pub struct Store {
    reader: StoreReader,
    tx: Option<mpsc::Sender<Submission>>,
    status: watch::Receiver<StoreStatus>,
    checkpointed: watch::Receiver<u64>,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    flusher: Option<JoinHandle<()>>,
    compactor: Option<JoinHandle<()>>,
    compact: Option<std::sync::mpsc::Sender<crate::compact::Request>>,
    recovery: Recovery,
    outbox: Option<SharedOutbox>,
}

/// The outbox, shared by the flusher (which fills it) and the forwarder (which reads and
/// acknowledges it). Held only for file operations on a few batches at a time.
pub type SharedOutbox = Arc<std::sync::Mutex<crate::Outbox>>;

fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.into();
    move |source| StoreError::Io { what, path, source }
}

impl Store {
    /// Open the store in `cfg.data_dir`: load the newest checkpoint, remove files of any
    /// uncommitted flush, replay the WAL after the checkpoint, and start the writer and flusher
    /// threads. Blocking (it reads the WAL): call it from a blocking context.
    pub fn open(cfg: StoreConfig, metrics: StoreMetrics) -> Result<Store, StoreError> {
        let data = cfg.data_dir.clone();
        let state_dir = data.join(layout::STATE);
        for dir in [&data, &state_dir] {
            std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
        }
        let settings = WindowSettings {
            sizes: cfg.windows.clone(),
            allowed_lateness: cfg.allowed_lateness,
            idle_close: cfg.idle_close,
            max_clock_skew: cfg.max_clock_skew,
        };
        let mut recovery = Recovery::default();

        // The newest checkpoint that loads; a damaged one is set aside (kept for inspection).
        let (mut windows, checkpoint_seq) = loop {
            let (found, damaged) =
                checkpoint::load(&state_dir).map_err(io("cannot read checkpoints in", &state_dir))?;
            recovery.damaged_checkpoints += damaged;
            let Some((seq, bytes)) = found else { break (Windows::new(&settings), 0) };
            match Windows::decode(&settings, &mut Dec::new(&bytes)) {
                Ok((w, dropped)) => {
                    recovery.dropped_windows = dropped;
                    recovery.checkpoint_seq = Some(seq);
                    break (w, seq);
                }
                Err(e) => {
                    tracing::error!(seq, error = %e, "checkpoint does not decode; setting it aside");
                    recovery.damaged_checkpoints += 1;
                    let p = state_dir.join(format!("checkpoint-{seq:020}.ckpt"));
                    std::fs::rename(&p, p.with_extension("damaged")).map_err(io("cannot set aside", &p))?;
                }
            }
        };
        crate::compact::clear(&data).map_err(io("cannot clean up", state_dir.join(crate::compact::DIR)))?;
        recovery.orphan_files =
            checkpoint::remove_orphans(&data, checkpoint_seq).map_err(io("cannot clean up", &data))?;
        let outbox = match &cfg.outbox {
            Some(o) => {
                let (mut outbox, found) = crate::Outbox::open(&data, o.max_bytes, checkpoint_seq)
                    .map_err(io("cannot open the outbox", data.join(crate::outbox::DIR)))?;
                outbox.set_batch_limits(o.batch_rows, o.batch_bytes);
                recovery.outbox = Some(found);
                Some(Arc::new(std::sync::Mutex::new(outbox)))
            }
            None => None,
        };

        let mut recordings = cfg.recordings.is_on().then(Vec::<Reading>::new);
        let wal_dir = data.join(layout::WAL);
        let (wal, wal_report) =
            Wal::open(&wal_dir, checkpoint_seq, cfg.segment_bytes, |seq, payload| match codec::decode_event(
                payload,
            ) {
                Ok(Event::Batch { received, readings }) => {
                    windows.apply(received, &readings);
                    if let Some(r) = &mut recordings {
                        r.extend(readings.into_iter().filter(|x| cfg.recordings.keeps(x)));
                    }
                    recovery.replayed_records += 1;
                }
                Ok(Event::Tick { now }) => {
                    windows.tick(now);
                    recovery.replayed_records += 1;
                }
                Err(e) => {
                    tracing::error!(seq, error = %e, "WAL record does not decode; skipped");
                    recovery.undecodable_records += 1;
                }
            })
            .map_err(io("cannot open the WAL in", &wal_dir))?;
        recovery.wal = wal_report;
        metrics.recovery_replayed_records.set(recovery.replayed_records as i64);
        metrics.recovery_torn_tail_bytes.set(recovery.wal.torn_tail_bytes as i64);
        metrics
            .recovery_corrupt_regions
            .set((recovery.wal.corrupt_regions + recovery.undecodable_records) as i64);
        metrics.recovery_damaged_checkpoints.set(recovery.damaged_checkpoints as i64);
        metrics.recovery_orphan_files.set(recovery.orphan_files as i64);
        tracing::info!(?recovery, "store opened");

        let (status_tx, status) = watch::channel(StoreStatus::Ok);
        let (checkpointed_tx, checkpointed) = watch::channel(checkpoint_seq);
        let shared = Arc::new(Shared::new(metrics, status_tx, checkpointed_tx));
        // One job in flight plus one queued: the writer never waits on a healthy flusher.
        let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel(1);
        let (done_tx, done_rx) = mpsc::channel(1);
        let (tx, rx) = mpsc::channel(cfg.queue_batches.max(1));
        // Queries wait here while a flush is in flight; a few at once is plenty on a gateway.
        let (snapshots_tx, snapshots) = mpsc::channel(16);
        let sizes = windows.sizes().to_vec();
        let reader =
            StoreReader { tx: snapshots_tx, sizes: sizes.clone(), files: Arc::clone(&shared.locks.readers) };
        let writer = Writer {
            window_labels: sizes.iter().map(|&w| layout::window_label(w)).collect(),
            cfg: cfg.clone(),
            wal,
            windows,
            recordings,
            shared: Arc::clone(&shared),
            jobs: jobs_tx,
            done: done_rx,
            checkpoint_seq,
            stage_failures: 0,
        };
        let row_group_rows = cfg.row_group_rows;
        let flusher = {
            let shared = Arc::clone(&shared);
            let outbox = outbox.clone();
            std::thread::Builder::new()
                .name("fieldgate-flush".into())
                .spawn(move || run_flusher(cfg, shared, jobs_rx, done_tx, sizes, outbox))
                .map_err(|e| StoreError::Thread("flush", e))?
        };
        let (compact_tx, compact_rx) = std::sync::mpsc::channel();
        let compactor = {
            let (shared, data, rows) = (Arc::clone(&shared), data.clone(), row_group_rows);
            std::thread::Builder::new()
                .name("fieldgate-compact".into())
                .spawn(move || crate::compact::run(data, rows, shared, compact_rx))
                .map_err(|e| StoreError::Thread("compaction", e))?
        };
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("fieldgate-wal".into())
                .spawn(move || {
                    // Set on any exit, a panic included: the gateway's supervisor watches it.
                    struct Stopped(Arc<Shared>);
                    impl Drop for Stopped {
                        fn drop(&mut self) {
                            self.0.set_status(StoreStatus::Stopped);
                        }
                    }
                    let _stopped = Stopped(shared);
                    writer.run(rx, snapshots);
                })
                .map_err(|e| StoreError::Thread("WAL", e))?
        };
        Ok(Store {
            reader,
            tx: Some(tx),
            status,
            checkpointed,
            shared,
            writer: Some(writer),
            flusher: Some(flusher),
            compactor: Some(compactor),
            compact: Some(compact_tx),
            recovery,
            outbox,
        })
    }

    /// A sink for producers: `submit` waits while the store's queue is full and returns an
    /// `Ack` that resolves once the batch is durable.
    pub fn sink(&self) -> ReadingSink {
        // `tx` is only taken by `close`, which consumes the store.
        ReadingSink::from_sender(self.tx.clone().expect("store is open"))
    }

    /// A handle for queries: the rows not in committed files yet (see [`StoreReader`]).
    pub fn reader(&self) -> StoreReader {
        self.reader.clone()
    }

    /// The store's status, updated as it changes.
    pub fn status(&self) -> watch::Receiver<StoreStatus> {
        self.status.clone()
    }

    /// The WAL sequence number of the last committed checkpoint: every batch acknowledged with
    /// a `Durable { seq }` up to it is in Parquet files or the checkpointed window state, and
    /// the WAL before it can go.
    pub fn checkpointed(&self) -> watch::Receiver<u64> {
        self.checkpointed.clone()
    }

    /// The upstream outbox, when configured. Send only [`crate::Outbox::sendable`] batches up
    /// to [`Store::checkpointed`].
    pub fn outbox(&self) -> Option<SharedOutbox> {
        self.outbox.clone()
    }

    /// Compact every finished day with more than one part file now, without waiting for the
    /// day to go quiet (see [`crate::compact`]; the store also does it by itself every few
    /// minutes). Blocking.
    pub fn compact_now(&self) -> std::io::Result<crate::CompactionReport> {
        let (reply, answer) = std::sync::mpsc::channel();
        let closed = || std::io::Error::other("the store is closing");
        let tx = self.compact.as_ref().ok_or_else(closed)?;
        tx.send(crate::compact::Request::Now(reply)).map_err(|_| closed())?;
        answer.recv().map_err(|_| closed())?
    }

    /// What recovery found when the store opened.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Stop: once every sink is dropped, the writer commits what is queued, the flusher writes
    /// the closed windows and a final checkpoint, and the threads end. Blocking. If the disk is
    /// full, pending writes are given up (unacknowledged batches fail; acknowledged data stays
    /// in the WAL for the next start).
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            // Give failing writes a chance while the queue drains, then make them give up.
            self.shared.stopping.store(
                matches!(*self.status.borrow(), StoreStatus::DiskFull(_) | StoreStatus::Failed(_)),
                Ordering::Release,
            );
            if w.join().is_err() {
                tracing::error!("the store's WAL thread panicked");
            }
        }
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(f) = self.flusher.take()
            && f.join().is_err()
        {
            tracing::error!("the store's flush thread panicked");
        }
        drop(self.compact.take());
        if let Some(c) = self.compactor.take()
            && c.join().is_err()
        {
            tracing::error!("the store's compaction thread panicked");
        }
        self.shared.set_status(StoreStatus::Stopped);
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}
