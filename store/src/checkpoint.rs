//! Checkpoints: the window state at a WAL sequence number, written after the Parquet files of
//! the same flush are durable.
//!
//! File layout: `magic u32 | crc32 u32 | seq u64 | state...`, the CRC covering seq and state.
//! A checkpoint is written in two steps: the writer thread *stages* it, streaming the state
//! into a temporary file as it encodes it (a site's window state runs to megabytes, and a copy
//! of it in memory would double that at every flush); the flusher *commits* it once the
//! Parquet files of the flush are durable: fsync, rename, directory fsync. The two newest checkpoints are kept and the
//! WAL is deleted only up to the older one, so a damaged newest checkpoint is reported and the
//! previous one used, losing nothing: the WAL still holds everything after it.

use crate::layout;
use crate::wal::sync_dir;
use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: u32 = 0x4B43_4746; // "FGCK"
/// Checkpoints kept on disk.
pub(crate) const KEEP: usize = 2;

fn path(state_dir: &Path, seq: u64) -> PathBuf {
    state_dir.join(format!("checkpoint-{seq:020}.ckpt"))
}

fn list(state_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(state_dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let seq = name.strip_prefix("checkpoint-")?.strip_suffix(".ckpt")?.parse().ok()?;
            Some((seq, e.path()))
        })
        .collect();
    found.sort();
    found
}

fn checksum(seq: u64, state: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(state);
    h.finalize()
}

/// A checkpoint written under its temporary name, not yet durable nor visible to recovery
/// (which removes such leftovers).
#[derive(Debug)]
pub(crate) struct Staged {
    seq: u64,
    tmp: PathBuf,
    file: File,
}

/// Write the checkpoint for `seq` to a temporary file: `encode` hands the state over in pieces
/// through the function it is given.
pub(crate) fn stage(
    state_dir: &Path,
    seq: u64,
    encode: impl FnOnce(&mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()>,
) -> io::Result<Staged> {
    std::fs::create_dir_all(state_dir)?;
    let tmp = path(state_dir, seq).with_extension("ckpt.tmp");
    let written = (|| {
        let mut out = BufWriter::with_capacity(64 * 1024, File::create(&tmp)?);
        out.write_all(&MAGIC.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?; // the CRC, filled in below
        out.write_all(&seq.to_le_bytes())?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&seq.to_le_bytes());
        encode(&mut |piece: &[u8]| {
            crc.update(piece);
            out.write_all(piece)
        })?;
        let mut file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.seek(SeekFrom::Start(4))?;
        file.write_all(&crc.finalize().to_le_bytes())?;
        Ok(file)
    })();
    match written {
        Ok(file) => Ok(Staged { seq, tmp, file }),
        Err(e) => {
            // A half-written file (the disk filled up, say) is no use to anyone.
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Make a staged checkpoint durable and current, then remove all but the newest [`KEEP`].
/// Returns the sequence number up to which the WAL may now be deleted (the oldest checkpoint
/// kept). May be called again after a failure.
pub(crate) fn commit(state_dir: &Path, staged: &Staged) -> io::Result<u64> {
    staged.file.sync_all()?;
    let target = path(state_dir, staged.seq);
    match std::fs::rename(&staged.tmp, &target) {
        // A retry after the rename went through and a later step failed.
        Err(e) if e.kind() == io::ErrorKind::NotFound && target.exists() => {}
        other => other?,
    }
    sync_dir(state_dir)?;
    let all = list(state_dir);
    let excess = all.len().saturating_sub(KEEP);
    for (_, old) in &all[..excess] {
        std::fs::remove_file(old)?;
    }
    if excess > 0 {
        sync_dir(state_dir)?;
    }
    Ok(all[excess..].first().map_or(staged.seq, |(s, _)| *s))
}

/// Write the checkpoint for `seq` in one go (stage and commit).
#[cfg(test)]
pub(crate) fn write(state_dir: &Path, seq: u64, state: &[u8]) -> io::Result<u64> {
    let staged = stage(state_dir, seq, |emit| emit(state))?;
    commit(state_dir, &staged)
}

/// A checkpoint read back: its sequence number and the window state.
pub(crate) type Loaded = Option<(u64, Vec<u8>)>;

/// The newest valid checkpoint, if any, and how many newer ones were damaged.
pub(crate) fn load(state_dir: &Path) -> io::Result<(Loaded, u64)> {
    let mut damaged = 0;
    for (seq, p) in list(state_dir).into_iter().rev() {
        let bytes = std::fs::read(&p)?;
        let valid = bytes.len() >= 16
            && bytes[..4] == MAGIC.to_le_bytes()
            && bytes[8..16] == seq.to_le_bytes()
            && bytes[4..8] == checksum(seq, &bytes[16..]).to_le_bytes();
        if valid {
            return Ok((Some((seq, bytes[16..].to_vec())), damaged));
        }
        tracing::error!(file = %p.display(), "damaged checkpoint ignored; recovering from an older one and the WAL");
        damaged += 1;
    }
    Ok((None, damaged))
}

/// Remove what a flush after checkpoint `seq` left behind: Parquet parts it wrote (they will be
/// written again from the WAL) and temporary files. Returns how many files were removed.
pub(crate) fn remove_orphans(data_dir: &Path, seq: u64) -> io::Result<u64> {
    let mut removed = 0;
    for root in [layout::ROLLUPS, layout::RECORDINGS, layout::STATE] {
        let mut stack = vec![data_dir.join(root)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            let mut changed = false;
            for e in entries.filter_map(Result::ok) {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                let orphan =
                    name.ends_with(".tmp") || layout::parse_part_name(&name).is_some_and(|(_, s)| s > seq);
                if orphan {
                    std::fs::remove_file(&p)?;
                    removed += 1;
                    changed = true;
                }
            }
            if changed {
                sync_dir(&dir)?;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_valid_checkpoint_wins_and_two_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), (None, 0));
        assert_eq!(write(dir.path(), 5, b"five").unwrap(), 5);
        assert_eq!(write(dir.path(), 9, b"nine").unwrap(), 5, "WAL deletable up to the older kept one");
        assert_eq!(write(dir.path(), 12, b"twelve").unwrap(), 9);
        assert_eq!(list(dir.path()).iter().map(|c| c.0).collect::<Vec<_>>(), vec![9, 12]);
        assert_eq!(load(dir.path()).unwrap(), (Some((12, b"twelve".to_vec())), 0));

        // Damage the newest: the previous one is used and the damage reported.
        let p = path(dir.path(), 12);
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(load(dir.path()).unwrap(), (Some((9, b"nine".to_vec())), 1));
    }

    #[test]
    fn a_checkpoint_that_cannot_be_staged_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 5, b"five").unwrap();
        let failed = stage(dir.path(), 9, |emit| {
            emit(b"the first piece")?;
            Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"))
        });
        assert_eq!(failed.unwrap_err().kind(), io::ErrorKind::StorageFull);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![format!("checkpoint-{:020}.ckpt", 5)]);
        assert_eq!(load(dir.path()).unwrap(), (Some((5, b"five".to_vec())), 0));
    }

    #[test]
    fn orphans_after_the_checkpoint_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("rollups/window=1m/date=2026-11-24");
        std::fs::create_dir_all(&day).unwrap();
        for (ts, seq) in [(0, 4), (10, 7), (20, 8)] {
            std::fs::write(day.join(layout::part_name(ts, seq)), b"x").unwrap();
        }
        std::fs::write(day.join("part-1-2.parquet.tmp"), b"x").unwrap();
        assert_eq!(remove_orphans(dir.path(), 7).unwrap(), 2);
        let left: Vec<u64> = layout::parts(dir.path()).into_iter().map(|p| p.2).collect();
        assert_eq!(left, vec![4, 7]);
    }
}
