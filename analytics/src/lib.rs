//! fieldgate's read side: stats over the store's Parquet rollups.
//!
//! Questions come in from the gRPC query service and the CLI (device, metric, time range,
//! window); answers are computed with polars from the hive-partitioned rollup files the store
//! writes, merged with the rows the store holds in memory (closed since its last flush, or
//! still open), so they reach up to now.

pub mod stats;
pub mod summary;

pub use stats::{QueryError, Source, StatsAnswer, StatsQuery, StatsRow, source_window, stats};
pub use summary::{Aggregate, Answer, DeviceActivity, TopQuery, TopRow, activity, top};
