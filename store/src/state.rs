//! Small state files under `DATA_DIR/state/` (the device registry, LoRaWAN sessions, the
//! upstream cursor): each is replaced whole and atomically, so a reader, or the next start
//! after a power cut, sees either the old content or the new, never a mix.

use crate::layout;
use crate::wal::sync_dir;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where the state file `name` lives.
pub fn path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join(layout::STATE).join(name)
}

/// Replace the state file `name` with `bytes` (see [`write_atomic`]).
pub fn replace(data_dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_atomic(&data_dir.join(layout::STATE), name, &[bytes], false)
}

/// Like [`replace`], for a file holding keys: readable by the gateway's user only (0600).
pub fn replace_private(data_dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_atomic(&data_dir.join(layout::STATE), name, &[bytes], true)
}

/// Write `parts` as the file `dir/name` crash-safely: a temporary `name.tmp` written and
/// fsync'd, renamed over the old file, and the directory fsync'd.
pub fn write_atomic(dir: &Path, name: &str, parts: &[&[u8]], private: bool) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)?;
    for part in parts {
        file.write_all(part)?;
    }
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// The content of the state file `name`, or `None` if it was never written.
pub fn read(data_dir: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path(data_dir, name)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Move an unreadable state file aside as `<name>.bad`, keeping it for inspection, so the
/// next write starts afresh. Returns the new path.
pub fn set_aside(data_dir: &Path, name: &str) -> io::Result<PathBuf> {
    let bad = path(data_dir, &format!("{name}.bad"));
    std::fs::rename(path(data_dir, name), &bad)?;
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_then_read_round_trips_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), "devices.json").unwrap(), None);
        replace(dir.path(), "devices.json", b"one").unwrap();
        replace(dir.path(), "devices.json", b"two").unwrap();
        assert_eq!(read(dir.path(), "devices.json").unwrap().as_deref(), Some(&b"two"[..]));
        let names: Vec<_> = std::fs::read_dir(dir.path().join(layout::STATE))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["devices.json".to_owned()]);
        let bad = set_aside(dir.path(), "devices.json").unwrap();
        assert!(bad.ends_with("state/devices.json.bad"));
        assert_eq!(read(dir.path(), "devices.json").unwrap(), None);
    }
}
