//! fieldgate's read side: stats over the store's Parquet rollups.
//!
//! Questions come in from the gRPC query service and the CLI (device, metric, time range,
//! window); answers are computed from the hive-partitioned rollup files the store writes,
//! merged with the windows still open in memory, so they reach up to now.
