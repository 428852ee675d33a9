//! The upstream outbox: closed rollup windows waiting to be forwarded to a collector, each
//! batch numbered by a sequence number that only grows, and deleted only once the collector
//! has acknowledged it.
//!
//! - **Written with the flush.** The flusher writes a flush's outbox batches after its Parquet
//!   files and before its checkpoint, named by the flush (`<seq>-<flush>.batch`). A batch of a
//!   flush whose checkpoint never committed is an orphan: recovery deletes it, as it deletes
//!   that flush's Parquet files, and the replayed WAL makes the same rows again. Only batches
//!   of committed flushes are offered for sending ([`Outbox::sendable`]), so an orphan has
//!   never left the gateway and its sequence number may be given again.
//! - **Sequence numbers** are contiguous, so the collector can tell a batch it has not seen
//!   from one that does not exist. The next one is one past the highest batch on disk or the
//!   acknowledged cursor (`state/upstream-cursor`), whichever is higher.
//! - **Acknowledgement** moves the cursor (written first) and then deletes the batches.
//! - **Disk cap.** Past `max_bytes` the oldest batches are dropped, and a *gap* batch saying
//!   which sequence numbers and which span of data time were dropped takes the next number, so
//!   the fleet knows exactly what is missing. The gap is written before the batches are
//!   deleted; batches a gap covers that survive a crash are deleted at the next start.
//!
//! A batch file: `FGOB`, a header (crc32 of the payload, payload length, rows, window size,
//! first and last window start), then the payload, a `fieldgate.v1.Batch` as the forwarder
//! sends it.

use crate::codec::Malformed;
use crate::window::Rollup;
use fieldgate_proto::v1::{Batch, Gap, RollupColumns, SeqRange, batch::Body};
use fieldgate_proto::{DeviceId, Metric};
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The outbox directory under `DATA_DIR`.
pub const DIR: &str = "outbox";
/// The state file holding the acknowledged cursor.
pub const CURSOR: &str = "upstream-cursor";
const MAGIC: &[u8; 4] = b"FGOB";
/// Rows per batch unless configured otherwise ([`OutboxConfig::batch_rows`]).
pub const DEFAULT_BATCH_ROWS: usize = 10_000;
/// Bytes per batch (before compression) unless configured otherwise: well under gRPC's usual
/// 4 MiB message limit.
pub const DEFAULT_BATCH_BYTES: u64 = 1 << 20;
const HEADER: usize = 4 + 4 + 4 + 8 + 8 + 8 + 8;

/// Which rollups go upstream, and how much disk the outbox may use.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Window sizes whose closed windows are forwarded (each must be one the store keeps).
    pub windows: Vec<Duration>,
    pub max_bytes: u64,
    /// A flush's rows of one window size go into batches of at most this many rows (each
    /// batch is one gRPC message, about 57 bytes a row before compression) ...
    pub batch_rows: usize,
    /// ... and at most this many bytes (long names make rows larger).
    pub batch_bytes: u64,
}

/// What the outbox knows of one batch without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// The flush (WAL sequence of its checkpoint) that wrote it.
    pub flush: u64,
    pub bytes: u64,
    pub rows: u64,
    /// The window size of its rows; 0 for a gap.
    pub window_ns: i64,
    /// The first and last window start of its rows (of the dropped rows, for a gap).
    pub from_ns: i64,
    pub to_ns: i64,
}

/// What opening the outbox found and cleaned up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxRecovery {
    pub batches: usize,
    /// Batches of a flush that never committed, deleted.
    pub orphans: usize,
    /// Batches a gap already declared dropped, deleted.
    pub covered: usize,
    /// Unreadable files, set aside as `.bad`.
    pub damaged: usize,
}

/// The outbox's index; its files are the truth, the index is rebuilt from them at start.
#[derive(Debug)]
pub struct Outbox {
    data_dir: PathBuf,
    dir: PathBuf,
    max_bytes: u64,
    batch_rows: usize,
    batch_bytes: u64,
    entries: BTreeMap<u64, Entry>,
    /// Batches the collector holds that are still on disk because a lower one is not
    /// acknowledged yet (see [`Outbox::ack`]).
    acked: std::collections::BTreeSet<u64>,
    acked_through: u64,
    next_seq: u64,
    bytes: u64,
}

fn file_name(seq: u64, flush: u64) -> String {
    format!("{seq:020}-{flush:020}.batch")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let (seq, flush) = name.strip_suffix(".batch")?.split_once('-')?;
    Some((seq.parse().ok()?, flush.parse().ok()?))
}

/// Rollup rows of one window size as columns: names by dictionary index, window starts as
/// deltas, first and last timestamps as offsets into their window.
pub fn encode_rollups(window_ns: i64, rows: &[Rollup]) -> RollupColumns {
    let mut devices: HashMap<&str, u32> = HashMap::new();
    let mut metrics: HashMap<&str, u32> = HashMap::new();
    let mut c = RollupColumns { window_ns, ..RollupColumns::default() };
    let mut previous = 0i64;
    for r in rows {
        let next = devices.len() as u32;
        let d = *devices.entry(r.device.as_str()).or_insert_with(|| {
            c.devices.push(r.device.to_string());
            next
        });
        let next = metrics.len() as u32;
        let m = *metrics.entry(r.metric.as_str()).or_insert_with(|| {
            c.metrics.push(r.metric.to_string());
            next
        });
        c.device_idx.push(d);
        c.metric_idx.push(m);
        c.window_start_delta_ns.push(r.start - previous);
        previous = r.start;
        c.count.push(r.count);
        c.min.push(r.min);
        c.max.push(r.max);
        c.sum.push(r.sum);
        c.first.push(r.first);
        c.last.push(r.last);
        c.first_offset_ns.push(r.first_ts - r.start);
        c.last_offset_ns.push(r.last_ts - r.start);
    }
    c
}

/// The rows of `c`, or what is wrong with it.
pub fn decode_rollups(c: &RollupColumns) -> Result<Vec<Rollup>, Malformed> {
    let n = c.device_idx.len();
    let lengths = [
        c.metric_idx.len(),
        c.window_start_delta_ns.len(),
        c.count.len(),
        c.min.len(),
        c.max.len(),
        c.sum.len(),
        c.first.len(),
        c.last.len(),
        c.first_offset_ns.len(),
        c.last_offset_ns.len(),
    ];
    if lengths.iter().any(|&l| l != n) {
        return Err(Malformed(format!("columns of different lengths: {n} and {lengths:?}")));
    }
    let devices = c
        .devices
        .iter()
        .map(|d| DeviceId::new(d).map_err(|e| Malformed(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let metrics = c
        .metrics
        .iter()
        .map(|m| Metric::new(m).map_err(|e| Malformed(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut start = 0i64;
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let name = |all: &[DeviceId], k: u32| all.get(k as usize).cloned();
        let device =
            name(&devices, c.device_idx[i]).ok_or_else(|| Malformed(format!("row {i}: no device")))?;
        let metric = metrics
            .get(c.metric_idx[i] as usize)
            .cloned()
            .ok_or_else(|| Malformed(format!("row {i}: no metric")))?;
        start = start.wrapping_add(c.window_start_delta_ns[i]);
        rows.push(Rollup {
            device,
            metric,
            window_ns: c.window_ns,
            start,
            count: c.count[i],
            min: c.min[i],
            max: c.max[i],
            sum: c.sum[i],
            first: c.first[i],
            last: c.last[i],
            first_ts: start.wrapping_add(c.first_offset_ns[i]),
            last_ts: start.wrapping_add(c.last_offset_ns[i]),
        });
    }
    Ok(rows)
}

fn encode_file(entry: &Entry, batch: &Batch) -> Vec<u8> {
    let payload = batch.encode_to_vec();
    let mut buf = Vec::with_capacity(HEADER + payload.len());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&entry.rows.to_le_bytes());
    buf.extend_from_slice(&entry.window_ns.to_le_bytes());
    buf.extend_from_slice(&entry.from_ns.to_le_bytes());
    buf.extend_from_slice(&entry.to_ns.to_le_bytes());
    buf.extend_from_slice(&payload);
    buf
}

/// The header fields of a batch file, checked against its payload.
fn check_file(buf: &[u8]) -> Result<(u64, i64, i64, i64, &[u8]), Malformed> {
    if buf.len() < HEADER || &buf[..4] != MAGIC {
        return Err(Malformed("not an outbox batch".into()));
    }
    let u32_at = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
    let (crc, len) = (u32_at(4), u32_at(8) as usize);
    let payload = &buf[HEADER..];
    if payload.len() != len || crc32fast::hash(payload) != crc {
        return Err(Malformed(format!("payload of {} bytes does not match its header", payload.len())));
    }
    Ok((u64_at(12), u64_at(20) as i64, u64_at(28) as i64, u64_at(36) as i64, payload))
}

impl Outbox {
    /// Open the outbox of `data_dir`: index its batches, delete those of flushes after
    /// `checkpoint` (never committed, never sent) and those a gap covers.
    pub fn open(data_dir: &Path, max_bytes: u64, checkpoint: u64) -> io::Result<(Outbox, OutboxRecovery)> {
        let dir = data_dir.join(DIR);
        std::fs::create_dir_all(&dir)?;
        let acked_through = match crate::state::read(data_dir, CURSOR)? {
            Some(b) => String::from_utf8_lossy(&b).trim().parse().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{CURSOR} is not a sequence number"))
            })?,
            None => 0,
        };
        let mut recovery = OutboxRecovery::default();
        let mut entries = BTreeMap::new();
        let mut gaps = Vec::new();
        let mut damaged: Vec<(u64, u64, String)> = Vec::new();
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((seq, flush)) = parse_name(&name) else { continue };
            if flush > checkpoint || seq <= acked_through {
                // An orphan of an uncommitted flush, or acknowledged but not yet deleted.
                std::fs::remove_file(e.path())?;
                recovery.orphans += usize::from(flush > checkpoint);
                continue;
            }
            let buf = std::fs::read(e.path())?;
            match check_file(&buf) {
                Ok((rows, window_ns, from_ns, to_ns, payload)) => {
                    if window_ns == 0
                        && let Ok(Batch { body: Some(Body::Gap(g)), .. }) = Batch::decode(payload)
                        && let Some(r) = g.dropped
                    {
                        gaps.push((r.first, r.last));
                    }
                    let bytes = buf.len() as u64;
                    entries.insert(seq, Entry { seq, flush, bytes, rows, window_ns, from_ns, to_ns });
                }
                Err(why) => {
                    tracing::error!(file = %e.path().display(), error = %why, "outbox batch unreadable; set aside");
                    std::fs::rename(e.path(), e.path().with_extension("bad"))?;
                    recovery.damaged += 1;
                    damaged.push((seq, flush, why.0));
                }
            }
        }
        for (first, last) in gaps {
            let covered: Vec<u64> = entries.range(first..=last).map(|(s, _)| *s).collect();
            for seq in covered {
                let entry = entries.remove(&seq).expect("listed");
                std::fs::remove_file(dir.join(file_name(seq, entry.flush)))?;
                recovery.covered += 1;
            }
        }
        crate::wal::sync_dir(&dir)?;
        recovery.batches = entries.len();
        // A damaged batch's number was given out (and maybe sent): never given again.
        let highest_damaged = damaged.iter().map(|d| d.0).max().unwrap_or(0);
        let next_seq =
            entries.keys().next_back().copied().unwrap_or(0).max(acked_through).max(highest_damaged) + 1;
        let bytes = entries.values().map(|e| e.bytes).sum();
        let mut outbox = Outbox {
            data_dir: data_dir.to_owned(),
            dir,
            max_bytes,
            batch_rows: DEFAULT_BATCH_ROWS,
            batch_bytes: DEFAULT_BATCH_BYTES,
            entries,
            acked: std::collections::BTreeSet::new(),
            acked_through,
            next_seq,
            bytes,
        };
        // What the set-aside batches held is unknown now; the collector is told which numbers.
        for (seq, flush, why) in damaged {
            outbox.record_damaged(seq, flush, (0, 0, 0), &why)?;
        }
        Ok((outbox, recovery))
    }

    /// A batch that cannot be read back any more (its checksum fails): set it aside as
    /// `.bad`, and send a gap in its place so the collector knows which rows will not come.
    /// Returns the gap's entry.
    pub fn set_aside_damaged(&mut self, seq: u64, why: &str) -> io::Result<Entry> {
        let entry = self
            .entries
            .remove(&seq)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no batch {seq}")))?;
        self.acked.remove(&seq);
        self.bytes -= entry.bytes;
        let path = self.dir.join(file_name(seq, entry.flush));
        std::fs::rename(&path, path.with_extension("bad"))?;
        tracing::error!(seq, error = why, "outbox batch damaged on disk; set aside, a gap sent in its place");
        self.record_damaged(seq, entry.flush, (entry.rows, entry.from_ns, entry.to_ns), why)
    }

    /// Write the gap that stands for damaged batch `seq` (`rows`, first and last window start,
    /// when known).
    fn record_damaged(
        &mut self,
        seq: u64,
        flush: u64,
        (rows, from_ns, to_ns): (u64, i64, i64),
        why: &str,
    ) -> io::Result<Entry> {
        let gap = Gap {
            dropped: Some(SeqRange { first: seq, last: seq }),
            from_ns,
            to_ns,
            rows,
            reason: format!("batch {seq} was damaged on the gateway's disk ({why}) and set aside"),
        };
        let new_seq = self.next_seq;
        let batch = Batch { seq: new_seq, body: Some(Body::Gap(gap)) };
        let mut entry = Entry { seq: new_seq, flush, bytes: 0, rows, window_ns: 0, from_ns, to_ns };
        self.put(&mut entry, &batch)?;
        Ok(entry)
    }

    /// Write the batches of flush `flush`: each window size's rows in batches of at most
    /// `batch_rows` rows and `batch_bytes` bytes (a batch over the bytes is halved until it
    /// fits or holds one row). Returns their entries.
    pub fn write(&mut self, flush: u64, rollups: &[(i64, &[Rollup])]) -> io::Result<Vec<Entry>> {
        let mut written = Vec::new();
        let per_batch = self.batch_rows;
        for (window_ns, rows) in rollups {
            for chunk in rows.chunks(per_batch) {
                // Pieces still to write, in order (the stack's top is the next one).
                let mut pending = vec![chunk];
                while let Some(rows) = pending.pop() {
                    let columns = encode_rollups(*window_ns, rows);
                    if columns.encoded_len() as u64 > self.batch_bytes && rows.len() > 1 {
                        let (a, b) = rows.split_at(rows.len() / 2);
                        pending.extend([b, a]);
                        continue;
                    }
                    let seq = self.next_seq;
                    let batch = Batch { seq, body: Some(Body::Rollups(columns)) };
                    let (from_ns, to_ns) =
                        rows.iter().fold((i64::MAX, i64::MIN), |(a, b), r| (a.min(r.start), b.max(r.start)));
                    let mut entry = Entry {
                        seq,
                        flush,
                        bytes: 0,
                        rows: rows.len() as u64,
                        window_ns: *window_ns,
                        from_ns,
                        to_ns,
                    };
                    self.put(&mut entry, &batch)?;
                    written.push(entry);
                }
            }
        }
        Ok(written)
    }

    /// Forget what a failed attempt at flush `flush` wrote, before it is tried again: that
    /// flush never committed, so its batches were never offered and their numbers are given
    /// again. Only for a flush known not to have committed.
    pub fn discard_uncommitted(&mut self, flush: u64) -> io::Result<()> {
        let earlier: Vec<u64> = self.entries.values().filter(|e| e.flush == flush).map(|e| e.seq).collect();
        for seq in earlier {
            self.forget(seq)?;
            self.next_seq = self.next_seq.min(seq);
        }
        Ok(())
    }

    fn put(&mut self, entry: &mut Entry, batch: &Batch) -> io::Result<()> {
        let buf = encode_file(entry, batch);
        entry.bytes = buf.len() as u64;
        crate::state::write_atomic(&self.dir, &file_name(entry.seq, entry.flush), &[&buf], false)?;
        self.bytes += entry.bytes;
        self.next_seq = self.next_seq.max(entry.seq + 1);
        self.entries.insert(entry.seq, entry.clone());
        Ok(())
    }

    fn forget(&mut self, seq: u64) -> io::Result<()> {
        if let Some(e) = self.entries.remove(&seq) {
            self.bytes -= e.bytes;
            match std::fs::remove_file(self.dir.join(file_name(seq, e.flush))) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        Ok(())
    }

    /// Past the cap, drop the oldest batches and record them as a gap (written by flush
    /// `flush`, committed already). Returns the gap's entry, if one was needed.
    pub fn enforce_cap(&mut self, flush: u64) -> io::Result<Vec<Entry>> {
        let mut gaps = Vec::new();
        while self.bytes > self.max_bytes {
            match self.drop_oldest_run(flush)? {
                Some(gap) => gaps.push(gap),
                None => break,
            }
        }
        Ok(gaps)
    }

    /// Drop the oldest run of consecutive data batches that brings the outbox under its cap
    /// (or up to the next gap), and record it as a gap.
    fn drop_oldest_run(&mut self, flush: u64) -> io::Result<Option<Entry>> {
        // Room for the gap batch itself (a few dozen bytes) is kept. Earlier gaps are never
        // dropped (their record of what is missing must reach the collector; they are tiny),
        // and a run stops at one, so its range names exactly the numbers dropped.
        let mut dropped: Vec<Entry> = Vec::new();
        let mut left = self.bytes;
        for e in self.entries.values().skip_while(|e| e.window_ns == 0 || self.acked.contains(&e.seq)) {
            // A gap, or a batch the collector holds, ends the run: its range must not span them.
            if left + 256 <= self.max_bytes || e.window_ns == 0 || self.acked.contains(&e.seq) {
                break;
            }
            left -= e.bytes;
            dropped.push(e.clone());
        }
        let (Some(first), Some(last)) = (dropped.first(), dropped.last()) else { return Ok(None) };
        let from_ns = dropped.iter().map(|e| e.from_ns).min().unwrap_or(first.from_ns);
        let to_ns = dropped.iter().map(|e| e.to_ns).max().unwrap_or(last.to_ns);
        let rows: u64 = dropped.iter().map(|e| e.rows).sum();
        let seq = self.next_seq;
        let gap = Gap {
            dropped: Some(SeqRange { first: first.seq, last: last.seq }),
            from_ns,
            to_ns,
            rows,
            reason: format!(
                "the outbox reached its cap of {} bytes while the collector was unreachable",
                self.max_bytes
            ),
        };
        let batch = Batch { seq, body: Some(Body::Gap(gap)) };
        let mut entry = Entry { seq, flush, bytes: 0, rows, window_ns: 0, from_ns, to_ns };
        // The gap first: a crash before the deletions leaves batches it covers, deleted at
        // the next start; never dropped batches without their gap.
        self.put(&mut entry, &batch)?;
        for e in &dropped {
            self.forget(e.seq)?;
        }
        crate::wal::sync_dir(&self.dir)?;
        tracing::warn!(
            first = first.seq,
            last = last.seq,
            rows,
            cap = self.max_bytes,
            "upstream outbox full: oldest batches dropped and recorded as a gap"
        );
        Ok(Some(entry))
    }

    /// Batches that may be sent: those of flushes up to `committed` that the collector does
    /// not hold yet, in sequence order.
    pub fn sendable(&self, committed: u64) -> Vec<Entry> {
        self.entries
            .values()
            .filter(|e| e.flush <= committed && !self.acked.contains(&e.seq))
            .cloned()
            .collect()
    }

    /// Split each flush's rows of one window size into batches of at most `rows` rows and
    /// `bytes` bytes.
    pub fn set_batch_limits(&mut self, rows: usize, bytes: u64) {
        self.batch_rows = rows.max(1);
        self.batch_bytes = bytes.max(1);
    }

    /// The batch `seq` as the forwarder sends it.
    pub fn read(&self, seq: u64) -> io::Result<Batch> {
        let entry = self
            .entries
            .get(&seq)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no batch {seq}")))?;
        let buf = std::fs::read(self.dir.join(file_name(seq, entry.flush)))?;
        let invalid =
            |e: String| io::Error::new(io::ErrorKind::InvalidData, format!("outbox batch {seq}: {e}"));
        let (.., payload) = check_file(&buf).map_err(|e| invalid(e.0))?;
        Batch::decode(payload).map_err(|e| invalid(e.to_string()))
    }

    /// The collector holds `ranges`. Batches are deleted only as a prefix: up to the lowest
    /// one not acknowledged, with the cursor moved over them first. One acknowledged beyond it
    /// (after an outage the newest coarse batches go first) stays on disk, marked, until the
    /// batches below it are acknowledged too.
    ///
    /// That keeps the highest number ever given out on disk or in the cursor, which is where
    /// [`Outbox::open`] continues numbering from. Deleting out of order once let a restarted
    /// gateway give a number the collector already held to new rows, which it then took for
    /// a duplicate and dropped (found by the gateway SIGKILL test).
    pub fn ack(&mut self, ranges: &[SeqRange]) -> io::Result<()> {
        // A range backwards (first after last) names nothing; `range` would panic on it.
        for r in ranges.iter().filter(|r| r.first <= r.last) {
            let held: Vec<u64> = self.entries.range(r.first..=r.last).map(|(s, _)| *s).collect();
            self.acked.extend(held);
        }
        let prefix: Vec<u64> = self.entries.keys().take_while(|s| self.acked.contains(s)).copied().collect();
        let Some(&through) = prefix.last() else { return Ok(()) };
        if through > self.acked_through {
            crate::state::replace(&self.data_dir, CURSOR, through.to_string().as_bytes())?;
            self.acked_through = through;
        }
        for seq in prefix {
            self.acked.remove(&seq);
            self.forget(seq)?;
        }
        Ok(())
    }

    pub fn acked_through(&self) -> u64 {
        self.acked_through
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The oldest window start of rows still waiting (not counting gaps), ns.
    pub fn oldest_data_ns(&self) -> Option<i64> {
        let waiting = self.entries.values().filter(|e| e.window_ns != 0 && !self.acked.contains(&e.seq));
        waiting.map(|e| e.from_ns).min()
    }

    /// Bytes on disk, and batches the collector does not hold yet.
    pub fn usage(&self) -> (u64, usize) {
        (self.bytes, self.entries.len() - self.acked.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, window_ns: i64, t0: i64) -> Vec<Rollup> {
        (0..n)
            .map(|i| Rollup {
                device: DeviceId::new(&format!("bin-{}", i % 7)).unwrap(),
                metric: Metric::new(if i % 2 == 0 { "level_pct" } else { "temp_c" }).unwrap(),
                window_ns,
                start: t0 + (i / 14) as i64 * window_ns,
                count: 1 + i as u64,
                min: i as f64 - 0.5,
                max: i as f64 + 0.5,
                sum: i as f64 * 3.0,
                first: -(i as f64),
                last: i as f64 * 0.25,
                first_ts: t0 + (i / 14) as i64 * window_ns + 1_000,
                last_ts: t0 + (i / 14) as i64 * window_ns + window_ns - 1,
            })
            .collect()
    }

    #[test]
    fn rollups_round_trip_through_columns() {
        let original = rows(100, 60_000_000_000, 1_764_000_000_000_000_000);
        let columns = encode_rollups(60_000_000_000, &original);
        assert_eq!((columns.devices.len(), columns.metrics.len()), (7, 2));
        assert_eq!(decode_rollups(&columns).unwrap(), original);
        let mut short = columns;
        short.count.pop();
        assert!(decode_rollups(&short).is_err());
    }

    #[test]
    fn batches_survive_restarts_and_leave_only_when_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let w = 60_000_000_000;
        let (mut outbox, _) = Outbox::open(dir.path(), 1 << 30, 0).unwrap();
        let a = rows(30, w, 0);
        let b = rows(10, 10_000_000_000, 0);
        let written = outbox.write(5, &[(w, &a), (10_000_000_000, &b), (900_000_000_000, &[])]).unwrap();
        assert_eq!(written.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        outbox.write(9, &[(w, &a)]).unwrap();
        // Flush 9 never committed: an orphan, gone at the next start; its number is given again.
        let (mut outbox, recovery) = Outbox::open(dir.path(), 1 << 30, 5).unwrap();
        assert_eq!((recovery.batches, recovery.orphans), (2, 1));
        assert_eq!(outbox.sendable(5).len(), 2);
        let Some(Body::Rollups(c)) = outbox.read(1).unwrap().body else { panic!("rollups") };
        assert_eq!(decode_rollups(&c).unwrap(), a);
        assert_eq!(outbox.write(7, &[(w, &a)]).unwrap()[0].seq, 3);
        // Acknowledging 1 and 3 deletes 1; 3 stays on disk (it holds the highest number given
        // out) but waits no more; the cursor stops below 2.
        outbox.ack(&[SeqRange { first: 1, last: 1 }, SeqRange { first: 3, last: 3 }]).unwrap();
        assert_eq!((outbox.acked_through(), outbox.usage().1), (1, 1));
        assert_eq!(outbox.sendable(9).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
        let (reopened, _) = Outbox::open(dir.path(), 1 << 30, 7).unwrap();
        assert_eq!(reopened.next_seq(), 4, "a restart here gives no number twice");
        outbox.ack(&[SeqRange { first: 3, last: 2 }]).unwrap();
        assert_eq!(outbox.usage().1, 1, "a backwards range acknowledges nothing");
        outbox.ack(&[SeqRange { first: 2, last: 2 }]).unwrap();
        assert_eq!((outbox.acked_through(), outbox.usage()), (3, (0, 0)));
        // Numbers keep growing after everything was acknowledged and the gateway restarted.
        let (mut outbox, _) = Outbox::open(dir.path(), 1 << 30, 7).unwrap();
        assert_eq!(outbox.write(8, &[(w, &b)]).unwrap()[0].seq, 4);
    }

    #[test]
    fn batches_keep_to_their_rows_and_bytes_and_a_failed_flush_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let w = 60_000_000_000;
        let (mut outbox, _) = Outbox::open(dir.path(), 1 << 30, 0).unwrap();
        outbox.set_batch_limits(100, 2_000);
        let all = rows(250, w, 0);
        let written = outbox.write(3, &[(w, &all)]).unwrap();
        assert!(written.len() > 3, "100 rows are over 2,000 bytes: halved ({} batches)", written.len());
        let mut back = Vec::new();
        for e in &written {
            assert!(e.rows <= 100);
            let Some(Body::Rollups(c)) = outbox.read(e.seq).unwrap().body else { panic!("rollups") };
            assert!(c.encoded_len() <= 2_000 || e.rows == 1, "batch {} is {} bytes", e.seq, c.encoded_len());
            back.extend(decode_rollups(&c).unwrap());
        }
        assert_eq!(back, all, "every row once, in order");
        // That flush failed after all: its batches go, and the retry gets the same numbers.
        outbox.discard_uncommitted(3).unwrap();
        assert_eq!(outbox.usage(), (0, 0));
        assert_eq!(outbox.write(3, &[(w, &all[..10])]).unwrap()[0].seq, 1);
    }

    #[test]
    fn a_damaged_batch_is_set_aside_and_a_gap_sent_in_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let w = 60_000_000_000;
        let (mut outbox, _) = Outbox::open(dir.path(), 1 << 30, 0).unwrap();
        for flush in 1..=3 {
            outbox.write(flush, &[(w, &rows(20, w, flush as i64 * w))]).unwrap();
        }
        let corrupt = |seq: u64, flush: u64| {
            let path = dir.path().join(DIR).join(file_name(seq, flush));
            let mut buf = std::fs::read(&path).unwrap();
            let last = buf.len() - 1;
            buf[last] ^= 0xff;
            std::fs::write(&path, buf).unwrap();
        };
        // Damaged while running: the forwarder's read fails its checksum.
        corrupt(2, 2);
        let err = outbox.read(2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let gap = outbox.set_aside_damaged(2, &err.to_string()).unwrap();
        assert_eq!((gap.seq, gap.rows, gap.window_ns), (4, 20, 0));
        let Some(Body::Gap(g)) = outbox.read(4).unwrap().body else { panic!("a gap") };
        assert_eq!(g.dropped, Some(SeqRange { first: 2, last: 2 }));
        assert!(g.reason.contains("damaged"), "{}", g.reason);
        assert_eq!(outbox.sendable(9).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 3, 4]);
        assert!(dir.path().join(DIR).join(file_name(2, 2)).with_extension("bad").exists());
        // Damaged while the gateway was down: found at start, and its number is not given again.
        corrupt(3, 3);
        let (outbox, recovery) = Outbox::open(dir.path(), 1 << 30, 9).unwrap();
        assert_eq!(recovery.damaged, 1);
        let seqs: Vec<u64> = outbox.sendable(9).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 4, 5], "batch 3 replaced by gap 5");
        let Some(Body::Gap(g)) = outbox.read(5).unwrap().body else { panic!("a gap") };
        assert_eq!(g.dropped, Some(SeqRange { first: 3, last: 3 }));
        assert_eq!(outbox.next_seq(), 6);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_batches_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let w = 60_000_000_000;
        let (mut outbox, _) = Outbox::open(dir.path(), 1 << 30, 0).unwrap();
        for flush in 1..=4u64 {
            outbox.write(flush, &[(w, &rows(50, w, flush as i64 * 10 * w))]).unwrap();
        }
        let one = outbox.usage().0 / 4;
        outbox.max_bytes = one * 2 + 300;
        let gap = outbox.enforce_cap(4).unwrap().pop().expect("over the cap");
        assert_eq!((gap.seq, gap.rows, gap.from_ns), (5, 100, 10 * w));
        let Some(Body::Gap(g)) = outbox.read(5).unwrap().body else { panic!("a gap") };
        assert_eq!(g.dropped, Some(SeqRange { first: 1, last: 2 }));
        assert_eq!(outbox.sendable(4).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(outbox.usage().0 <= outbox.max_bytes);
        assert_eq!(outbox.oldest_data_ns(), Some(30 * w), "the oldest rows left, not the gap's");

        // A crash between writing a gap and deleting what it covers: cleaned up at start.
        let covered = dir.path().join(DIR).join(file_name(3, 3));
        let keep = std::fs::read(&covered).unwrap();
        let gap = Batch {
            seq: 6,
            body: Some(Body::Gap(Gap { dropped: Some(SeqRange { first: 3, last: 3 }), ..Gap::default() })),
        };
        let entry = Entry { seq: 6, flush: 4, bytes: 0, rows: 50, window_ns: 0, from_ns: 0, to_ns: 0 };
        std::fs::write(dir.path().join(DIR).join(file_name(6, 4)), encode_file(&entry, &gap)).unwrap();
        assert!(!keep.is_empty());
        let (outbox, recovery) = Outbox::open(dir.path(), 1 << 30, 4).unwrap();
        assert_eq!(recovery.covered, 1);
        assert!(!covered.exists());
        assert_eq!(outbox.sendable(4).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5, 6]);
    }
}
