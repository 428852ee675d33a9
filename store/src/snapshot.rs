//! Reading the store while it writes: what the Parquet files do not hold yet.
//!
//! A query needs every window of a size: the files hold those of committed flushes; the writer
//! thread holds the rows closed since (waiting for the next flush) and the windows still open.
//! [`StoreReader::snapshot`] asks the writer for the latter two at a moment when no flush is in
//! flight, together with the sequence number of the last flush, so that the files up to it
//! and the snapshot make up each window exactly once (a file written after the snapshot is
//! skipped by the reader: its rows are in the snapshot).

use crate::window::Rollup;
use fieldgate_proto::{DeviceId, Metric};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{OwnedRwLockReadGuard, RwLock, mpsc, oneshot};

/// What a query asks the writer for.
#[derive(Debug)]
pub(crate) struct SnapshotRequest {
    pub(crate) window_ns: i64,
    pub(crate) devices: Option<HashSet<DeviceId>>,
    pub(crate) metrics: Option<HashSet<Metric>>,
    pub(crate) reply: oneshot::Sender<Snapshot>,
}

impl SnapshotRequest {
    pub(crate) fn wants(&self, device: &DeviceId, metric: &Metric) -> bool {
        self.devices.as_ref().is_none_or(|d| d.contains(device))
            && self.metrics.as_ref().is_none_or(|m| m.contains(metric))
    }
}

/// The rows of one window size that no committed file holds.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Closed windows waiting for the next flush, then windows still open (partial).
    pub rows: Vec<Rollup>,
    /// Files of flushes with a sequence number up to this one are complete; later ones must
    /// not be read with this snapshot.
    pub files_through: u64,
}

/// Why a snapshot could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("the store is not running")]
    Stopped,
    #[error("{0} is not a window size this store keeps")]
    UnknownWindow(String),
}

/// A handle for readers (cheap to clone).
#[derive(Debug, Clone)]
pub struct StoreReader {
    pub(crate) tx: mpsc::Sender<SnapshotRequest>,
    pub(crate) sizes: Vec<i64>,
    pub(crate) files: Arc<RwLock<()>>,
}

/// While held, no compaction swaps part files: see [`StoreReader::hold_files`].
#[derive(Debug)]
pub struct FilesGuard(#[allow(dead_code)] OwnedRwLockReadGuard<()>);

impl FilesGuard {
    pub(crate) fn new(guard: OwnedRwLockReadGuard<()>) -> Self {
        FilesGuard(guard)
    }
}

impl StoreReader {
    /// The window sizes the store keeps, in ns, finest first.
    pub fn sizes(&self) -> &[i64] {
        &self.sizes
    }

    /// Hold the part files still: take this before [`StoreReader::snapshot`] and keep it until
    /// the files listed are read. Compaction waits for it before it replaces a day's parts, so
    /// the files and the snapshot stay one consistent picture.
    pub async fn hold_files(&self) -> FilesGuard {
        FilesGuard(Arc::clone(&self.files).read_owned().await)
    }

    /// The rows of `window_ns` windows not in committed files yet, for `devices` and `metrics`
    /// (`None`: all). Waits for a flush in flight to commit first.
    pub async fn snapshot(
        &self,
        window_ns: i64,
        devices: Option<HashSet<DeviceId>>,
        metrics: Option<HashSet<Metric>>,
    ) -> Result<Snapshot, SnapshotError> {
        if !self.sizes.contains(&window_ns) {
            return Err(SnapshotError::UnknownWindow(crate::layout::window_label(window_ns)));
        }
        let (reply, answer) = oneshot::channel();
        let request = SnapshotRequest { window_ns, devices, metrics, reply };
        self.tx.send(request).await.map_err(|_| SnapshotError::Stopped)?;
        answer.await.map_err(|_| SnapshotError::Stopped)
    }
}
