//! The write-ahead log: segment files of CRC-checked records, appended in groups with one
//! fsync per group.
//!
//! Record layout (little-endian): `magic u32 | len u32 | crc32 u32 | seq u64 | payload[len]`,
//! the CRC covering `seq` and the payload. Sequence numbers increase by one per record across
//! segments; a segment is named after its first record's sequence number.
//!
//! Recovery reads every segment. A record that fails its checks is never trusted: if a valid
//! record follows it (found by scanning for the magic word), the bad bytes are skipped and
//! reported as a corrupt region; if nothing valid follows, it is a torn tail (a write cut by a
//! crash) and the file is truncated there. Either way the store starts.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const MAGIC: u32 = 0x4C57_4746; // "FGWL"
const HEADER: usize = 20;
/// Larger lengths are corruption, not records: a batch event is at most a few MiB.
const MAX_RECORD: usize = 256 << 20;

/// What recovery found in the WAL.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WalRecovery {
    /// Valid records read (all of them, including those before the checkpoint).
    pub records: u64,
    /// Bytes cut from the end of the last segment (a write torn by a crash).
    pub torn_tail_bytes: u64,
    /// Regions of invalid bytes skipped, with valid records after them: data was lost there.
    pub corrupt_regions: u64,
    /// Bytes in those regions.
    pub corrupt_bytes: u64,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
}

/// An open WAL, positioned for appending.
#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    segments: Vec<Segment>,
    active: File,
    active_len: u64,
    next_seq: u64,
    segment_bytes: u64,
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

/// fsync a directory, so a file created, renamed or removed in it survives power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn crc(seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The record starting at `pos`, if it is whole and valid: (seq, payload range, end).
fn record_at(buf: &[u8], pos: usize) -> Option<(u64, std::ops::Range<usize>, usize)> {
    if buf.len() - pos < HEADER || le_u32(buf, pos) != MAGIC {
        return None;
    }
    let len = le_u32(buf, pos + 4) as usize;
    if len > MAX_RECORD || buf.len() - pos - HEADER < len {
        return None;
    }
    let mut seq_bytes = [0; 8];
    seq_bytes.copy_from_slice(&buf[pos + 12..pos + 20]);
    let seq = u64::from_le_bytes(seq_bytes);
    let payload = pos + HEADER..pos + HEADER + len;
    (crc(seq, &buf[payload.clone()]) == le_u32(buf, pos + 8)).then_some((seq, payload, pos + HEADER + len))
}

/// The next position after `pos` where a valid record starts.
fn resync(buf: &[u8], pos: usize) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    let mut at = pos + 1;
    while at + HEADER <= buf.len() {
        let found = buf[at..].windows(4).position(|w| w == magic)?;
        at += found;
        if record_at(buf, at).is_some() {
            return Some(at);
        }
        at += 1;
    }
    None
}

impl Wal {
    /// Open (creating if needed) the WAL in `dir`, calling `visit(seq, payload)` for every
    /// valid record with `seq > after`, in order. Cuts a torn tail, skips corrupt regions.
    pub(crate) fn open(
        dir: &Path,
        after: u64,
        segment_bytes: u64,
        mut visit: impl FnMut(u64, &[u8]),
    ) -> io::Result<(Wal, WalRecovery)> {
        std::fs::create_dir_all(dir)?;
        let mut segments: Vec<Segment> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let first_seq = name.strip_suffix(".wal")?.parse().ok()?;
                Some(Segment { first_seq, path: e.path() })
            })
            .collect();
        segments.sort_by_key(|s| s.first_seq);

        let mut report = WalRecovery::default();
        let mut last_seq = after;
        let count = segments.len();
        let mut active_len = 0;
        for (i, segment) in segments.iter().enumerate() {
            let buf = std::fs::read(&segment.path)?;
            let mut pos = 0;
            let mut good_end = 0;
            while pos < buf.len() {
                match record_at(&buf, pos) {
                    Some((seq, payload, end)) => {
                        report.records += 1;
                        if seq > last_seq {
                            visit(seq, &buf[payload]);
                            last_seq = seq;
                        }
                        pos = end;
                        good_end = end;
                    }
                    None => match resync(&buf, pos) {
                        Some(next) => {
                            tracing::error!(segment = %segment.path.display(), offset = pos, bytes = next - pos, "corrupt WAL region skipped; readings in it are lost");
                            report.corrupt_regions += 1;
                            report.corrupt_bytes += (next - pos) as u64;
                            pos = next;
                        }
                        None => break,
                    },
                }
            }
            if good_end < buf.len() {
                let cut = (buf.len() - good_end) as u64;
                if i + 1 == count {
                    tracing::warn!(segment = %segment.path.display(), bytes = cut, "truncating a torn WAL tail (a write cut short by a crash)");
                    report.torn_tail_bytes += cut;
                } else {
                    tracing::error!(segment = %segment.path.display(), bytes = cut, "corrupt end of an older WAL segment; readings in it are lost");
                    report.corrupt_regions += 1;
                    report.corrupt_bytes += cut;
                }
                let f = OpenOptions::new().write(true).open(&segment.path)?;
                f.set_len(good_end as u64)?;
                f.sync_all()?;
            }
            if i + 1 == count {
                active_len = good_end as u64;
            }
        }

        let next_seq = last_seq + 1;
        let (active, active_len) = match segments.last() {
            Some(s) if active_len < segment_bytes => {
                (OpenOptions::new().append(true).open(&s.path)?, active_len)
            }
            _ => {
                let path = segment_path(dir, next_seq);
                let f = OpenOptions::new().create(true).append(true).open(&path)?;
                sync_dir(dir)?;
                segments.push(Segment { first_seq: next_seq, path });
                (f, 0)
            }
        };
        Ok((Wal { dir: dir.to_owned(), segments, active, active_len, next_seq, segment_bytes }, report))
    }

    /// The sequence number the next record gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Append records and fsync them: once this returns `Ok`, they survive power loss.
    /// Returns the first record's sequence number. On error nothing was appended: a partial
    /// write, or a write whose fsync failed, is cut off again, so a retry neither duplicates
    /// records nor trusts pages the kernel may have dropped after a failed fsync.
    pub(crate) fn commit(&mut self, payloads: &[Vec<u8>]) -> io::Result<u64> {
        if self.active_len >= self.segment_bytes {
            self.rotate()?;
        }
        let first = self.next_seq;
        let size: usize = payloads.iter().map(|p| HEADER + p.len()).sum();
        let mut buf = Vec::with_capacity(size);
        for (i, p) in payloads.iter().enumerate() {
            let seq = first + i as u64;
            buf.extend_from_slice(&MAGIC.to_le_bytes());
            buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc(seq, p).to_le_bytes());
            buf.extend_from_slice(&seq.to_le_bytes());
            buf.extend_from_slice(p);
        }
        if let Err(e) = self.active.write_all(&buf).and_then(|()| self.active.sync_data()) {
            // Shrinking a file works on a full disk.
            let _ = self.active.set_len(self.active_len);
            return Err(e);
        }
        self.active_len += buf.len() as u64;
        self.next_seq += payloads.len() as u64;
        Ok(first)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.active.sync_data()?;
        let path = segment_path(&self.dir, self.next_seq);
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment { first_seq: self.next_seq, path });
        self.active = f;
        self.active_len = 0;
        Ok(())
    }

    /// Delete the segments whose every record has `seq <= through` (they are in a checkpoint).
    /// The active segment is never deleted.
    pub(crate) fn delete_through(&mut self, through: u64) -> io::Result<()> {
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[1].first_seq <= through + 1 {
            let s = self.segments.remove(0);
            std::fs::remove_file(&s.path)?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Segment files and bytes on disk.
    pub(crate) fn usage(&self) -> (usize, u64) {
        let bytes =
            self.segments.iter().filter_map(|s| std::fs::metadata(&s.path).ok()).map(|m| m.len()).sum();
        (self.segments.len(), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(dir: &Path, after: u64) -> (Vec<(u64, Vec<u8>)>, WalRecovery, Wal) {
        let mut seen = Vec::new();
        let (wal, report) = Wal::open(dir, after, 1 << 20, |seq, p| seen.push((seq, p.to_vec()))).unwrap();
        (seen, report, wal)
    }

    fn payloads(range: std::ops::Range<u8>) -> Vec<Vec<u8>> {
        range.map(|i| vec![i; 10 + usize::from(i)]).collect()
    }

    #[test]
    fn appended_records_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, mut wal) = read_all(dir.path(), 0);
        assert_eq!(wal.commit(&payloads(0..3)).unwrap(), 1);
        assert_eq!(wal.commit(&payloads(3..5)).unwrap(), 4);
        drop(wal);
        let (seen, report, wal) = read_all(dir.path(), 0);
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(seen[4].1, vec![4; 14]);
        assert_eq!(report, WalRecovery { records: 5, ..Default::default() });
        assert_eq!(wal.next_seq(), 6);
        let (seen, _, _) = read_all(dir.path(), 3);
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![4, 5],
            "only records after the checkpoint"
        );
    }

    #[test]
    fn a_torn_tail_is_truncated_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, mut wal) = read_all(dir.path(), 0);
        wal.commit(&payloads(0..4)).unwrap();
        drop(wal);
        let path = segment_path(dir.path(), 1);
        let full = std::fs::metadata(&path).unwrap().len();
        // Cut the last record in half, as a crash during write would.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full - 7).unwrap();
        let (seen, report, mut wal) = read_all(dir.path(), 0);
        assert_eq!(seen.len(), 3);
        assert_eq!(report.torn_tail_bytes, (HEADER + 13 - 7) as u64);
        assert_eq!(report.corrupt_regions, 0);
        assert_eq!(wal.commit(&payloads(9..10)).unwrap(), 4, "the torn record's seq is reused");
        drop(wal);
        let (seen, report, _) = read_all(dir.path(), 0);
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(seen[3].1, vec![9; 19]);
        assert_eq!(report.torn_tail_bytes, 0);
    }

    #[test]
    fn a_corrupt_record_in_the_middle_is_skipped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, mut wal) = read_all(dir.path(), 0);
        wal.commit(&payloads(0..5)).unwrap();
        drop(wal);
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip a payload byte of the second record (offset: first record, then its header).
        let second = HEADER + 10;
        bytes[second + HEADER + 3] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (seen, report, wal) = read_all(dir.path(), 0);
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 3, 4, 5]);
        assert_eq!(report.corrupt_regions, 1);
        assert_eq!(report.corrupt_bytes, (HEADER + 11) as u64);
        assert_eq!(report.torn_tail_bytes, 0);
        assert_eq!(wal.next_seq(), 6);
    }

    #[test]
    fn garbage_lengths_and_zeroed_pages_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, mut wal) = read_all(dir.path(), 0);
        wal.commit(&payloads(0..3)).unwrap();
        drop(wal);
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 10 + 4..HEADER + 10 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 4096]);
        std::fs::write(&path, &bytes).unwrap();
        let (seen, report, _) = read_all(dir.path(), 0);
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(report.corrupt_regions, 1);
        assert_eq!(report.torn_tail_bytes, 4096);
    }

    #[test]
    fn segments_rotate_and_are_deleted_only_when_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0, 100, |_, _| {}).unwrap();
        for i in 0..10 {
            wal.commit(&[vec![i; 60]]).unwrap();
        }
        let (segments, _) = wal.usage();
        assert_eq!(segments, 5, "a segment is closed once it reaches 100 bytes: two 80-byte records each");
        wal.delete_through(3).unwrap();
        assert_eq!(wal.usage().0, 4, "only the segment of 1..=2 is wholly checkpointed");
        wal.delete_through(4).unwrap();
        assert_eq!(wal.usage().0, 3, "segments holding 1..=4 are gone");
        drop(wal);
        let mut seen = Vec::new();
        let (wal, _) = Wal::open(dir.path(), 4, 100, |seq, _| seen.push(seq)).unwrap();
        assert_eq!(seen, vec![5, 6, 7, 8, 9, 10]);
        assert_eq!(wal.next_seq(), 11);
    }
}
