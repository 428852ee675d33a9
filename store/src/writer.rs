//! The two threads behind a [`crate::Store`]: the writer (WAL, acks, windows) and the flusher
//! (Parquet files, checkpoints, retention).
//!
//! Both do blocking I/O, so both are dedicated OS threads rather than tasks on the gateway's
//! runtime. The writer gathers every batch that queued while it was busy into one group, writes
//! it with one fsync, acknowledges the group, then folds it into the windows. The flusher takes
//! closed windows, recordings and a snapshot of the window state in one job, so Parquet encoding
//! never holds up acknowledgements. A write that fails (disk full, I/O error) is retried with
//! backoff; nothing is acknowledged until it succeeds, so producers wait, and nothing
//! acknowledged is lost.

use crate::codec::{self, Enc, Event};
use crate::config::StoreConfig;
use crate::metrics::{KindLabels, OutcomeLabels, ReasonLabels, StoreMetrics, WindowLabels};
use crate::snapshot::{Snapshot, SnapshotRequest};
use crate::store::StoreStatus;
use crate::wal::Wal;
use crate::window::{Outcome, Rollup, Windows};
use crate::{checkpoint, files, layout, retention};
use fieldgate_proto::{Durable, IngestError, Reading, Submission, Timestamp};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Submissions gathered into one WAL group at most (bounds the group's memory and latency).
const MAX_GROUP: usize = 4096;
/// How often the writer wakes up without input, to check idle windows and flush deadlines.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// How often retention runs.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// State shared by the store handle and its threads.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) metrics: StoreMetrics,
    /// Set when the store is closing: retry loops give up instead of waiting for space.
    pub(crate) stopping: AtomicBool,
    status: watch::Sender<StoreStatus>,
    /// The sequence number of the last committed checkpoint.
    pub(crate) checkpointed: watch::Sender<u64>,
    /// The writer's and the flusher's current problem, if any.
    problems: Mutex<[Option<(bool, String)>; 2]>,
    /// Keeps part files consistent while compaction swaps a day's directory.
    pub(crate) locks: crate::compact::FileLocks,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Part {
    Writer = 0,
    Flusher = 1,
}

impl Shared {
    pub(crate) fn new(
        metrics: StoreMetrics,
        status: watch::Sender<StoreStatus>,
        checkpointed: watch::Sender<u64>,
    ) -> Self {
        Shared {
            metrics,
            stopping: AtomicBool::new(false),
            status,
            checkpointed,
            problems: Mutex::new([None, None]),
            locks: crate::compact::FileLocks::default(),
        }
    }

    /// Record `part`'s problem (`None`: it works) and publish the resulting status.
    fn report(&self, part: Part, problem: Option<(bool, String)>) {
        let mut p = self.problems.lock().unwrap_or_else(PoisonError::into_inner);
        if p[part as usize] == problem {
            return;
        }
        p[part as usize] = problem;
        let status = match p.iter().flatten().next() {
            Some((true, detail)) => StoreStatus::DiskFull(detail.clone()),
            Some((false, detail)) => StoreStatus::Failed(detail.clone()),
            None => StoreStatus::Ok,
        };
        self.status.send_replace(status);
    }

    pub(crate) fn set_status(&self, status: StoreStatus) {
        self.status.send_replace(status);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

fn is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

/// Retry backoff: 100 ms doubling to 5 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(5))
}

/// Handle a failed write: count it, report it, log it (once per change), and say whether to
/// retry (false when the store is closing).
fn failed_write(shared: &Shared, part: Part, what: &str, e: &std::io::Error, attempt: u32) -> bool {
    let no_space = is_no_space(e);
    let reason = if no_space { "no_space" } else { "io" };
    shared.metrics.write_errors.get_or_create(&ReasonLabels { reason }).inc();
    let detail = if no_space {
        format!("{what}: no space left on the data disk; waiting for space (free some, or lower retention)")
    } else {
        format!("{what}: {e}; retrying")
    };
    if attempt == 0 {
        tracing::error!(error = %e, "{detail}");
    }
    shared.report(part, Some((no_space, detail)));
    !shared.stopping()
}

/// A flush: everything needed to write Parquet files and a checkpoint at `seq`.
#[derive(Debug)]
pub(crate) struct FlushJob {
    seq: u64,
    rollups: Vec<(i64, Vec<Rollup>)>,
    recordings: Vec<Reading>,
    /// The window state at `seq`, already in its temporary file.
    state: checkpoint::Staged,
}

/// A flush is committed: the WAL may be deleted through `deletable`.
#[derive(Debug)]
pub(crate) struct FlushDone {
    deletable: u64,
}

/// The writer thread's state.
#[derive(Debug)]
pub(crate) struct Writer {
    pub(crate) cfg: StoreConfig,
    pub(crate) wal: Wal,
    pub(crate) windows: Windows,
    pub(crate) recordings: Option<Vec<Reading>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) jobs: std::sync::mpsc::SyncSender<FlushJob>,
    pub(crate) done: mpsc::Receiver<FlushDone>,
    pub(crate) checkpoint_seq: u64,
    pub(crate) window_labels: Vec<String>,
    /// Checkpoints that could not be staged in a row (the disk is full, say).
    pub(crate) stage_failures: u32,
}

impl Writer {
    /// Run until every sender of `rx` is gone, then flush and checkpoint everything.
    pub(crate) fn run(self, rx: mpsc::Receiver<Submission>, snapshots: mpsc::Receiver<SnapshotRequest>) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => rt,
            Err(e) => {
                self.shared.set_status(StoreStatus::Failed(format!("cannot start the writer: {e}")));
                return;
            }
        };
        rt.block_on(self.run_async(rx, snapshots));
    }

    async fn run_async(
        mut self,
        mut rx: mpsc::Receiver<Submission>,
        mut snapshots: mpsc::Receiver<SnapshotRequest>,
    ) {
        let mut maintenance = tokio::time::interval(MAINTENANCE_INTERVAL);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut in_flight = false;
        let mut flush_at = tokio::time::Instant::now() + self.cfg.flush_interval;
        // Idle windows and gauges need a look over every series: at most once a maintenance
        // interval, not after every commit (with 20,000 series and a thousand small commits a
        // second, that look was most of the writer's time).
        let mut last_maintenance: Option<tokio::time::Instant> = None;
        loop {
            // Wake at the flush deadline too, so an idle store flushes on time.
            let flush_pending = !in_flight && self.has_news();
            // While a flush is in flight and rows pile up past twice the flush size, stop
            // taking input: producers wait rather than memory growing.
            let backlogged = in_flight && self.waiting_rows() >= 2 * self.cfg.flush_rows;
            tokio::select! {
                biased;
                done = self.done.recv(), if in_flight => match done {
                    Some(done) => {
                        in_flight = false;
                        self.flushed(&done);
                    }
                    None => break,
                },
                sub = rx.recv(), if !backlogged => match sub {
                    Some(first) => {
                        let group = self.gather(first, &mut rx).await;
                        self.commit_group(group);
                    }
                    None => break,
                },
                // Only between flushes: then the files up to `checkpoint_seq` are all written.
                Some(request) = snapshots.recv(), if !in_flight => self.snapshot(request),
                _ = maintenance.tick() => {}
                () = tokio::time::sleep_until(flush_at), if flush_pending => {}
            }
            let maintain = last_maintenance.is_none_or(|at| at.elapsed() >= MAINTENANCE_INTERVAL);
            if maintain {
                self.tick_if_due();
            }
            // A row group's worth of closed windows is flushed at once: they wait in memory
            // (112 bytes each), and a site of 20,000 series closes 140,000 a minute.
            let due = tokio::time::Instant::now() >= flush_at
                || self.waiting_rows() >= self.cfg.flush_rows
                || self.windows.closed_len() >= self.cfg.row_group_rows;
            if !in_flight && due && self.has_news() {
                in_flight = self.send_flush();
                // A checkpoint that could not be staged is tried again after the write backoff,
                // not a whole flush interval later.
                let wait = if self.stage_failures > 0 {
                    backoff(self.stage_failures)
                } else {
                    self.cfg.flush_interval
                };
                flush_at = tokio::time::Instant::now() + wait;
            }
            if maintain {
                self.update_gauges();
                last_maintenance = Some(tokio::time::Instant::now());
            }
        }
        // Shutdown: finish the flush in flight, then checkpoint everything.
        if in_flight {
            match self.done.recv().await {
                Some(done) => self.flushed(&done),
                None => return,
            }
        }
        if self.has_news()
            && self.send_flush()
            && let Some(done) = self.done.recv().await
        {
            self.flushed(&done);
        }
        self.update_gauges();
    }

    /// Everything queued behind `first`, up to [`MAX_GROUP`], waiting up to `commit_delay`
    /// for more.
    async fn gather(&self, first: Submission, rx: &mut mpsc::Receiver<Submission>) -> Vec<Submission> {
        let mut group = vec![first];
        let deadline = tokio::time::Instant::now() + self.cfg.commit_delay;
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(s) => group.push(s),
                Err(_) if self.cfg.commit_delay.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(s)) => group.push(s),
                    _ => break,
                },
            }
        }
        group
    }

    /// Answer a query with the rows no committed file holds.
    fn snapshot(&self, request: SnapshotRequest) {
        let Some(k) = self.windows.sizes().iter().position(|&s| s == request.window_ns) else { return };
        let rows = self.windows.unflushed(k, |d, m| request.wants(d, m));
        let _ = request.reply.send(Snapshot { rows, files_through: self.checkpoint_seq });
    }

    /// Rows waiting for the next flush.
    fn waiting_rows(&self) -> usize {
        self.windows.closed_len() + self.recordings.as_ref().map_or(0, Vec::len)
    }

    /// Whether anything happened since the last checkpoint.
    fn has_news(&self) -> bool {
        self.wal.next_seq() - 1 > self.checkpoint_seq
    }

    /// Append `payloads` durably, retrying failed writes; `None` if the store is closing.
    fn append(&mut self, payloads: &[Vec<u8>]) -> Option<u64> {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            match self.wal.commit(payloads) {
                Ok(first) => {
                    self.shared.metrics.fsync_seconds.observe(started.elapsed().as_secs_f64());
                    self.shared.metrics.wal_records.inc_by(payloads.len() as u64);
                    if attempt > 0 {
                        tracing::info!(attempts = attempt + 1, "WAL write succeeded again");
                        self.shared.report(Part::Writer, None);
                    }
                    return Some(first);
                }
                Err(e) => {
                    if !failed_write(&self.shared, Part::Writer, "writing the WAL", &e, attempt) {
                        return None;
                    }
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                }
            }
        }
    }

    /// Write a group durably, acknowledge it, then fold it into the windows.
    fn commit_group(&mut self, group: Vec<Submission>) {
        let mut payloads = Vec::new();
        let mut last_payload = Vec::with_capacity(group.len());
        for sub in &group {
            // An empty batch still gets a record: its ack must mean "durable" like any other.
            let chunks: Vec<&[Reading]> = if sub.readings.is_empty() {
                vec![&[][..]]
            } else {
                sub.readings.chunks(codec::MAX_EVENT_READINGS).collect()
            };
            for chunk in chunks {
                let mut enc = Enc::default();
                codec::encode_event(
                    &mut enc,
                    &Event::Batch { received: sub.received, readings: chunk.to_vec() },
                );
                payloads.push(enc.buf);
            }
            last_payload.push(payloads.len() - 1);
        }
        let Some(first) = self.append(&payloads) else {
            for sub in group {
                if let Some(ack) = sub.ack {
                    let _ = ack.send(Err(IngestError::Failed(
                        "the store closed before the batch was written".into(),
                    )));
                }
            }
            return;
        };
        self.shared.metrics.batches.inc_by(group.len() as u64);
        let mut outcome = Outcome { late: vec![0; self.windows.sizes().len()], ..Outcome::default() };
        for (sub, last) in group.into_iter().zip(last_payload) {
            if let Some(ack) = sub.ack {
                let _ = ack.send(Ok(Durable { seq: first + last as u64 }));
            }
            let o = self.windows.apply(sub.received, &sub.readings);
            add_outcome(&mut outcome, &o);
            if let Some(rec) = &mut self.recordings {
                let keep = &self.cfg.recordings;
                rec.extend(sub.readings.into_iter().filter(|r| keep.keeps(r)));
            }
        }
        self.count(&outcome);
    }

    fn count(&self, o: &Outcome) {
        let m = &self.shared.metrics;
        for (outcome, n) in [
            ("aggregated", o.aggregated),
            ("duplicate", o.duplicate),
            ("not_finite", o.not_finite),
            ("bad_quality", o.bad_quality),
            ("future_timestamp", o.future_timestamp),
        ] {
            if n > 0 {
                m.readings.get_or_create(&OutcomeLabels { outcome }).inc_by(n);
            }
        }
        for (k, &n) in o.late.iter().enumerate() {
            if n > 0 {
                m.late.get_or_create(&WindowLabels { window: self.window_labels[k].clone() }).inc_by(n);
            }
        }
    }

    /// Log a clock tick and close idle windows, when a tick would close something.
    fn tick_if_due(&mut self) {
        let now = Timestamp::now();
        if !self.windows.tick_due(now) {
            return;
        }
        let mut enc = Enc::default();
        codec::encode_event(&mut enc, &Event::Tick { now });
        if self.append(&[enc.buf]).is_some() {
            self.windows.tick(now);
        }
    }

    /// Stage the checkpoint and hand the flusher a job; false if that failed (the job's rows
    /// stay for the next try) or the flusher is gone.
    fn send_flush(&mut self) -> bool {
        let seq = self.wal.next_seq() - 1;
        let closed = self.windows.take_closed();
        let state_dir = self.cfg.data_dir.join(layout::STATE);
        let state = match checkpoint::stage(&state_dir, seq, |emit| self.windows.encode_to(emit)) {
            Ok(staged) => staged,
            Err(e) => {
                self.windows.put_back_closed(closed);
                failed_write(&self.shared, Part::Flusher, "writing a checkpoint", &e, self.stage_failures);
                self.stage_failures = self.stage_failures.saturating_add(1);
                return false;
            }
        };
        if self.stage_failures > 0 {
            self.stage_failures = 0;
            tracing::info!("checkpoint written again");
            self.shared.report(Part::Flusher, None);
        }
        let rollups: Vec<(i64, Vec<Rollup>)> = self.windows.sizes().iter().copied().zip(closed).collect();
        let recordings = self.recordings.as_mut().map(std::mem::take).unwrap_or_default();
        let job = FlushJob { seq, rollups, recordings, state };
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.checkpoint_seq = seq;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "the flusher is gone; nothing more can be checkpointed");
                self.shared.report(Part::Flusher, Some((false, "the flusher thread stopped".into())));
                false
            }
        }
    }

    fn flushed(&mut self, done: &FlushDone) {
        if let Err(e) = self.wal.delete_through(done.deletable) {
            tracing::warn!(error = %e, "deleting checkpointed WAL segments failed; will retry after the next checkpoint");
        }
    }

    fn update_gauges(&self) {
        let m = &self.shared.metrics;
        let (segments, bytes) = self.wal.usage();
        m.wal_segments.set(segments as i64);
        m.wal_bytes.set(bytes as i64);
        m.open_windows.set(self.windows.open_count() as i64);
        m.series.set(self.windows.series_count() as i64);
    }
}

fn add_outcome(total: &mut Outcome, o: &Outcome) {
    total.aggregated += o.aggregated;
    total.duplicate += o.duplicate;
    total.not_finite += o.not_finite;
    total.bad_quality += o.bad_quality;
    total.future_timestamp += o.future_timestamp;
    for (t, n) in total.late.iter_mut().zip(&o.late) {
        *t += n;
    }
}

/// The flusher thread: write each job's files and checkpoint, then report it done.
pub(crate) fn run_flusher(
    cfg: StoreConfig,
    shared: Arc<Shared>,
    jobs: std::sync::mpsc::Receiver<FlushJob>,
    done: mpsc::Sender<FlushDone>,
    windows: Vec<i64>,
    outbox: Option<crate::store::SharedOutbox>,
) {
    let mut last_retention: Option<Instant> = None;
    let outbox_windows: Vec<i64> = cfg
        .outbox
        .iter()
        .flat_map(|o| o.windows.iter().map(|w| i64::try_from(w.as_nanos()).unwrap_or(i64::MAX)))
        .collect();
    let outbox = outbox.map(|o| (o, outbox_windows));
    for mut job in jobs {
        let mut attempt = 0;
        let deletable = loop {
            let written = {
                let _writing = shared.locks.writers.lock().unwrap_or_else(PoisonError::into_inner);
                // A retry: what the failed attempt put in the outbox goes first (never offered:
                // the flush did not commit).
                let discarded = match (&outbox, attempt) {
                    (Some((o, _)), 1..) => {
                        o.lock().unwrap_or_else(PoisonError::into_inner).discard_uncommitted(job.seq)
                    }
                    _ => Ok(()),
                };
                discarded.and_then(|()| flush(&cfg, &shared.metrics, &mut job, outbox.as_ref()))
            };
            match written {
                Ok(deletable) => {
                    if attempt > 0 {
                        tracing::info!(attempts = attempt + 1, "flush succeeded again");
                    }
                    shared.report(Part::Flusher, None);
                    break Some(deletable);
                }
                Err(e) => {
                    if !failed_write(&shared, Part::Flusher, "writing Parquet and checkpoint", &e, attempt) {
                        tracing::warn!(
                            "store closing with a flush not written; its data stays in the WAL for the next start"
                        );
                        break None;
                    }
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                }
            }
        };
        let Some(deletable) = deletable else { break };
        shared.checkpointed.send_replace(job.seq);
        if done.blocking_send(FlushDone { deletable }).is_err() {
            break;
        }
        if last_retention.is_none_or(|t| t.elapsed() >= RETENTION_INTERVAL) {
            last_retention = Some(Instant::now());
            let _writing = shared.locks.writers.lock().unwrap_or_else(PoisonError::into_inner);
            match retention::enforce(&cfg.data_dir, &cfg.retention, &windows, Timestamp::now().as_nanos()) {
                Ok(pass) => {
                    shared.metrics.retention_deleted_files.inc_by(pass.deleted_files);
                    shared
                        .metrics
                        .disk_bytes
                        .get_or_create(&KindLabels { kind: "rollup" })
                        .set(pass.rollup_bytes as i64);
                    shared
                        .metrics
                        .disk_bytes
                        .get_or_create(&KindLabels { kind: "recording" })
                        .set(pass.recording_bytes as i64);
                }
                Err(e) => tracing::warn!(error = %e, "retention pass failed; will retry"),
            }
        }
    }
}

/// Write a job's Parquet files, then its checkpoint. Idempotent: a retry rewrites the same
/// file names.
fn flush(
    cfg: &StoreConfig,
    m: &StoreMetrics,
    job: &mut FlushJob,
    outbox: Option<&(crate::store::SharedOutbox, Vec<i64>)>,
) -> std::io::Result<u64> {
    let started = Instant::now();
    let mut written = [0u64; 2];
    for (window_ns, rows) in &mut job.rollups {
        if !rows.is_empty() {
            written[0] += files::write_rollups(&cfg.data_dir, *window_ns, rows, job.seq, cfg.row_group_rows)?
                .len() as u64;
        }
    }
    if !job.recordings.is_empty() {
        written[1] +=
            files::write_recordings(&cfg.data_dir, &mut job.recordings, job.seq, cfg.row_group_rows)?.len()
                as u64;
    }
    // The outbox's batches of this flush, before its checkpoint: if the checkpoint never
    // commits they are orphans, deleted at the next start and never sent.
    if let Some((outbox, windows)) = outbox {
        let wanted: Vec<(i64, &[Rollup])> = job
            .rollups
            .iter()
            .filter(|(w, _)| windows.contains(w))
            .map(|(w, rows)| (*w, rows.as_slice()))
            .collect();
        let mut outbox = outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        outbox.write(job.seq, &wanted)?;
    }
    let deletable = checkpoint::commit(&cfg.data_dir.join(layout::STATE), &job.state)?;
    if let Some((outbox, _)) = outbox {
        let mut outbox = outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The flush is committed: a failure here is logged, not retried as a flush.
        match outbox.enforce_cap(job.seq) {
            Ok(gaps) => {
                m.outbox_dropped_rows.inc_by(gaps.iter().map(|g| g.rows).sum());
            }
            Err(e) => {
                tracing::error!(error = %e, "enforcing the outbox cap failed; will retry at the next flush")
            }
        }
        m.set_outbox(&outbox);
    }
    let rows = [job.rollups.iter().map(|(_, r)| r.len() as u64).sum(), job.recordings.len() as u64];
    for (k, kind) in ["rollup", "recording"].into_iter().enumerate() {
        m.files_written.get_or_create(&KindLabels { kind }).inc_by(written[k]);
        m.rows_written.get_or_create(&KindLabels { kind }).inc_by(rows[k]);
    }
    m.checkpoints.inc();
    m.flush_seconds.observe(started.elapsed().as_secs_f64());
    Ok(deletable)
}
