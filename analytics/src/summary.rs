//! Questions about the fleet rather than one series: which devices stand out on a metric
//! (top N), and how each device has been reporting over a range (readings, rate, the span it
//! was heard in). Both come from the same stored rollups as [`crate::stats`], merged the same
//! way, so they agree with it to the reading.

use crate::stats::{QueryError, Source, StatsQuery, blocking, collect, frame, inputs, merged, source_window};
use fieldgate_proto::{DeviceId, Metric, Timestamp};
use polars::prelude::*;
use std::time::Duration;

/// What a device is ranked by, over the whole range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Mean,
    Min,
    Max,
    Sum,
    Count,
    First,
    Last,
}

impl Aggregate {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::Mean => "mean",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Sum => "sum",
            Aggregate::Count => "count",
            Aggregate::First => "first",
            Aggregate::Last => "last",
        }
    }
}

/// Rank devices by one aggregate of one metric over `[from, to)`.
#[derive(Debug, Clone)]
pub struct TopQuery {
    pub metric: Metric,
    /// Devices to rank among; empty means all.
    pub devices: Vec<DeviceId>,
    pub from: Timestamp,
    /// `None`: up to now.
    pub to: Option<Timestamp>,
    pub aggregate: Aggregate,
    /// How many to return (at least one).
    pub n: usize,
    /// Smallest first instead of largest first.
    pub ascending: bool,
}

/// One ranked device.
#[derive(Debug, Clone, PartialEq)]
pub struct TopRow {
    pub device: String,
    /// The aggregate it was ranked by.
    pub value: f64,
    /// Readings of the metric in the range.
    pub count: u64,
    pub last_ts: Timestamp,
}

/// How one device reported over a range.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceActivity {
    pub device: String,
    /// Readings of all its metrics in the range.
    pub readings: u64,
    /// Distinct metrics among them.
    pub metrics: u32,
    /// Readings per minute over the part of the range that has passed.
    pub per_minute: f64,
    /// Its first and last reading in the range.
    pub first_ts: Timestamp,
    pub last_ts: Timestamp,
}

/// The rows and the stored window they were computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer<T> {
    pub rows: Vec<T>,
    pub source_window: Duration,
}

fn range(devices: &[DeviceId], metrics: Vec<Metric>, from: Timestamp, to: Option<Timestamp>) -> StatsQuery {
    StatsQuery { devices: devices.to_vec(), metrics, from, to, window: None }
}

/// The `n` devices with the largest (or smallest) aggregate of a metric. Ties are broken by
/// device name, so the answer is the same every time.
pub async fn top(source: &Source, q: &TopQuery) -> Result<Answer<TopRow>, QueryError> {
    if q.n == 0 {
        return Err(QueryError::Invalid("`n` must be at least 1".into()));
    }
    let now = Timestamp::now();
    let range = range(&q.devices, vec![q.metric.clone()], q.from, q.to);
    let (window_ns, _) = source_window(&source.sizes(), &range, now)?;
    let range = range.fixed(now);
    let inputs = inputs(source, window_ns, &range).await?;
    let q = q.clone();
    let rows = blocking(move || {
        let value = match q.aggregate {
            Aggregate::Mean => col("sum") / col("count").cast(DataType::Float64),
            Aggregate::Min => col("min"),
            Aggregate::Max => col("max"),
            Aggregate::Sum => col("sum"),
            Aggregate::Count => col("count").cast(DataType::Float64),
            Aggregate::First => col("first"),
            Aggregate::Last => col("last"),
        };
        let ranked = frame(&inputs, &range)?
            .group_by([col("device")])
            .agg(merged())
            .with_column(value.alias("value"))
            .sort_by_exprs(
                [col("value"), col("device")],
                SortMultipleOptions::default()
                    .with_order_descending_multi([!q.ascending, false])
                    .with_nulls_last(true),
            )
            .limit(q.n as IdxSize);
        let df = collect(ranked)?;
        let (device, value) = (df.column("device")?.str()?, df.column("value")?.f64()?);
        let (count, last_ts) = (df.column("count")?.u64()?, df.column("last_ts")?.i64()?);
        Ok((0..df.height())
            .map(|i| TopRow {
                device: device.get(i).unwrap_or_default().to_owned(),
                value: value.get(i).unwrap_or(f64::NAN),
                count: count.get(i).unwrap_or(0),
                last_ts: Timestamp::from_nanos(last_ts.get(i).unwrap_or(0)),
            })
            .collect())
    })
    .await?;
    Ok(Answer { rows, source_window: Duration::from_nanos(window_ns as u64) })
}

/// Per device (of `devices`, or all): readings, metrics, rate and span over `[from, to)`.
/// Devices with no reading in the range are not in the answer; the caller knows which devices
/// exist.
pub async fn activity(
    source: &Source,
    devices: &[DeviceId],
    from: Timestamp,
    to: Option<Timestamp>,
) -> Result<Answer<DeviceActivity>, QueryError> {
    let range = range(devices, Vec::new(), from, to);
    let now = Timestamp::now();
    let (window_ns, _) = source_window(&source.sizes(), &range, now)?;
    let range = range.fixed(now);
    let inputs = inputs(source, window_ns, &range).await?;
    // The rate is over the part of the range that has passed: a range ending tomorrow does
    // not halve today's rate.
    let minutes = (range.end(now).min(now).as_nanos() - from.as_nanos()).max(1) as f64 / 60e9;
    let rows = blocking(move || {
        let per_device = frame(&inputs, &range)?
            .group_by([col("device")])
            .agg([
                col("count").sum().alias("readings"),
                col("metric").n_unique().cast(DataType::UInt32).alias("metrics"),
                col("first_ts").min().alias("first_ts"),
                col("last_ts").max().alias("last_ts"),
            ])
            .sort(["device"], SortMultipleOptions::default());
        let df = collect(per_device)?;
        let (device, readings) = (df.column("device")?.str()?, df.column("readings")?.u64()?);
        let metrics = df.column("metrics")?.u32()?;
        let (first_ts, last_ts) = (df.column("first_ts")?.i64()?, df.column("last_ts")?.i64()?);
        Ok((0..df.height())
            .map(|i| {
                let n = readings.get(i).unwrap_or(0);
                DeviceActivity {
                    device: device.get(i).unwrap_or_default().to_owned(),
                    readings: n,
                    metrics: metrics.get(i).unwrap_or(0),
                    per_minute: n as f64 / minutes,
                    first_ts: Timestamp::from_nanos(first_ts.get(i).unwrap_or(0)),
                    last_ts: Timestamp::from_nanos(last_ts.get(i).unwrap_or(0)),
                }
            })
            .collect())
    })
    .await?;
    Ok(Answer { rows, source_window: Duration::from_nanos(window_ns as u64) })
}
