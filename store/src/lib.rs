//! fieldgate's local store: the promise that what was acknowledged is never lost.
//!
//! Batches of readings flow in from the adapters; each batch is appended to a CRC-checked,
//! fsync'd write-ahead log before it is acknowledged, then folded into per-window rollups
//! (min, max, mean, sum, first, last, count) that are written as plain Parquet files, readable
//! by polars, DuckDB or pandas without fieldgate. Closed windows also feed the upstream outbox.
