//! fieldgate's local store: the promise that what was acknowledged is never lost.
//!
//! Batches of readings flow in from the adapters through a bounded channel ([`Store::sink`]).
//! The writer thread appends each group of batches to a CRC-checked write-ahead log ([`wal`]),
//! fsyncs once, then acknowledges every batch in the group; only then do adapters acknowledge
//! their protocol. The same thread folds the readings into tumbling windows ([`window`]), a pure
//! state machine. Closed windows (and, optionally, every raw reading) are written by the
//! flusher thread as plain Parquet ([`files`], layout in [`layout`]) that polars, DuckDB or
//! pandas read without fieldgate; each flush ends with a checkpoint ([`checkpoint`]) of the
//! window state, after which the WAL before it is deleted.
//!
//! After a crash, [`Store::open`] loads the last checkpoint, removes files written after it, and
//! replays the WAL from there. Since every input of the window state machine is in the WAL
//! (batches with their arrival time, and clock ticks), replay reproduces exactly the windows
//! that were lost: no acknowledged reading is lost, none is counted twice.

mod checkpoint;
mod codec;
pub mod compact;
mod config;
pub mod files;
pub mod layout;
mod metrics;
pub mod outbox;
mod retention;
mod snapshot;
pub mod state;
mod store;
pub mod wal;
pub mod window;
mod writer;

pub use codec::Malformed;
pub use compact::{CompactionReport, FileLocks};
pub use config::{Recordings, Retention, StoreConfig};
pub use metrics::StoreMetrics;
pub use outbox::{Outbox, OutboxConfig, OutboxRecovery};
pub use snapshot::{FilesGuard, Snapshot, SnapshotError, StoreReader};
pub use store::{Recovery, SharedOutbox, Store, StoreError, StoreStatus};
pub use wal::WalRecovery;
pub use window::{Outcome, Rollup};
