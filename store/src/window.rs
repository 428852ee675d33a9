//! Downsampling into tumbling windows: a pure state machine (no clock, no I/O).
//!
//! Inputs are the WAL's events, in WAL order: batches of readings with the wall-clock time the
//! gateway received them, and ticks carrying the wall clock. Output is closed [`Rollup`] rows.
//! Because every input comes from the WAL, replaying the WAL from a checkpoint reproduces
//! exactly the same windows and closings: that is what makes recovery exact.
//!
//! Decisions, per series (one device's metric):
//! - **Event time, per series.** A window closes when the series' own newest timestamp passes
//!   the window's end plus the allowed lateness. A device whose clock is off by ten minutes
//!   only delays its own windows; it never makes another device's readings late.
//! - **No waiting for what comes in order.** Sources whose series arrive in timestamp order
//!   ([`fieldgate_proto::Source::in_order`]: Modbus) get no allowed lateness: a window closes
//!   at the first reading past its end. Waiting would keep four 10 s windows open per series
//!   under the default 30 s, and a Modbus site has tens of thousands of series. A reading
//!   older than its series' newest (a device clock set back) is then late, and counted.
//! - **Late** readings (their window already closed) are counted per window size and not
//!   aggregated; they still reach the recordings. Never silently dropped.
//! - **Idle close.** A series that receives nothing for `idle_close` (by arrival time) has its
//!   open windows closed, so a device that went quiet still gets its last windows written.
//! - **One lateness rule for all sizes.** A reading is late for every size once its window of
//!   the finest size has closed, so every window size aggregates the same readings (sixty 1 min
//!   rows add up to their 1 h row) and duplicate detection needs to cover only the finest size.
//! - **Duplicates.** A reading is identified by (device, metric, timestamp). Every timestamp in
//!   a series' open windows of the finest size is remembered, so a reading the broker redelivers
//!   after a crash, however many were in flight, is either recognised (its window is open) or
//!   late (its window closed, so it was counted then): never counted twice. The cost is 8 bytes
//!   per reading of the open finest windows (a 1 Hz series with 1 min windows: about 1 KB).
//!   Only sources that redeliver ([`Source::may_redeliver`]: MQTT) are checked. Modbus
//!   readings are made by the gateway itself, one per point per poll; a LoRaWAN frame is
//!   accepted once by its frame counter, which the network server keeps across restarts. So
//!   there is nothing to recognise, and the kilobyte per series is saved for the thousands of
//!   series a large Modbus or LoRaWAN site has.
//! - NaN and infinite values, bad-quality readings and timestamps beyond `max_clock_skew` ahead
//!   of arrival are not aggregated, and each is counted.

use crate::codec::{Dec, Enc, Malformed};
use fieldgate_proto::{DeviceId, Metric, NameMap, Quality, Reading, Timestamp};
use std::collections::VecDeque;
use std::time::Duration;

/// One closed (or, for queries, still open) window of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    pub device: DeviceId,
    pub metric: Metric,
    /// Window size in ns.
    pub window_ns: i64,
    pub start: i64,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub first: f64,
    pub last: f64,
    pub first_ts: i64,
    pub last_ts: i64,
}

impl Rollup {
    pub fn end(&self) -> i64 {
        self.start + self.window_ns
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// Why readings were not aggregated, counted per batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Readings that went into windows (at least one window size).
    pub aggregated: u64,
    pub duplicate: u64,
    pub not_finite: u64,
    pub bad_quality: u64,
    pub future_timestamp: u64,
    /// Late readings per window size (same order as the configured sizes).
    pub late: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Agg {
    start: i64,
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
    first: f64,
    last: f64,
    first_ts: i64,
    last_ts: i64,
}

impl Agg {
    fn new(start: i64, ts: i64, v: f64) -> Self {
        Agg { start, count: 1, min: v, max: v, sum: v, first: v, last: v, first_ts: ts, last_ts: ts }
    }

    fn add(&mut self, ts: i64, v: f64) {
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        // First and last by timestamp; on a tie the earlier arrival stays first and the later
        // arrival becomes last.
        if ts < self.first_ts {
            self.first_ts = ts;
            self.first = v;
        }
        if ts >= self.last_ts {
            self.last_ts = ts;
            self.last = v;
        }
    }
}

#[derive(Debug, Clone)]
struct PerSize {
    /// Windows ending at or before this are closed: readings for them are late.
    closed_until: i64,
    /// Open windows, oldest first (usually one, two around a boundary).
    open: Vec<Agg>,
}

#[derive(Debug, Clone)]
struct Series {
    device: DeviceId,
    metric: Metric,
    max_ts: i64,
    last_arrival: i64,
    /// Timestamps in the open windows of the finest size, ascending.
    seen: VecDeque<i64>,
    sizes: Vec<PerSize>,
}

impl Series {
    fn new(device: DeviceId, metric: Metric, n_sizes: usize) -> Self {
        Series {
            device,
            metric,
            max_ts: i64::MIN,
            last_arrival: i64::MIN,
            seen: VecDeque::new(),
            sizes: vec![PerSize { closed_until: i64::MIN, open: Vec::new() }; n_sizes],
        }
    }

    /// Remember `ts`; false if it was already remembered (a duplicate).
    fn remember(&mut self, ts: i64) -> bool {
        // Readings of a series mostly arrive in order, so this is usually a push at the back.
        if self.seen.back().is_none_or(|&last| last < ts) {
            self.seen.push_back(ts);
            return true;
        }
        match self.seen.binary_search(&ts) {
            Ok(_) => false,
            Err(at) => {
                self.seen.insert(at, ts);
                true
            }
        }
    }

    /// Forget timestamps before `until` (their finest windows closed).
    fn forget_before(&mut self, until: i64) {
        let n = self.seen.partition_point(|&t| t < until);
        self.seen.drain(..n);
    }

    fn has_open(&self) -> bool {
        self.sizes.iter().any(|s| !s.open.is_empty())
    }
}

/// Settings of the state machine (from the store config).
#[derive(Debug, Clone)]
pub struct WindowSettings {
    pub sizes: Vec<Duration>,
    pub allowed_lateness: Duration,
    pub idle_close: Duration,
    pub max_clock_skew: Duration,
}

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// All open windows of all series, and the closed rows not yet taken.
#[derive(Debug)]
pub struct Windows {
    sizes: Vec<i64>,
    /// Index of the finest size, which decides lateness and duplicates for all sizes.
    finest: usize,
    lateness: i64,
    idle: i64,
    skew: i64,
    index: NameMap<DeviceId, NameMap<Metric, usize>>,
    series: Vec<Series>,
    closed: Vec<Vec<Rollup>>,
}

impl Windows {
    pub fn new(settings: &WindowSettings) -> Self {
        let sizes: Vec<i64> = settings.sizes.iter().map(|d| ns(*d)).collect();
        let finest = (0..sizes.len()).min_by_key(|&k| sizes[k]).unwrap_or(0);
        Windows {
            closed: vec![Vec::new(); sizes.len()],
            finest,
            sizes,
            lateness: ns(settings.allowed_lateness),
            idle: ns(settings.idle_close),
            skew: ns(settings.max_clock_skew),
            index: NameMap::default(),
            series: Vec::new(),
        }
    }

    /// Window sizes in ns, in configured order.
    pub fn sizes(&self) -> &[i64] {
        &self.sizes
    }

    fn series_index(&mut self, device: &DeviceId, metric: &Metric) -> usize {
        if let Some(&i) = self.index.get(device).and_then(|m| m.get(metric)) {
            return i;
        }
        let i = self.series.len();
        self.series.push(Series::new(device.clone(), metric.clone(), self.sizes.len()));
        self.index.entry(device.clone()).or_default().insert(metric.clone(), i);
        i
    }

    /// Fold a batch received at `received` into the windows.
    pub fn apply(&mut self, received: Timestamp, readings: &[Reading]) -> Outcome {
        let mut out = Outcome { late: vec![0; self.sizes.len()], ..Outcome::default() };
        let received = received.as_nanos();
        for r in readings {
            if r.quality == Quality::Bad {
                out.bad_quality += 1;
                continue;
            }
            if !r.value.is_finite() {
                out.not_finite += 1;
                continue;
            }
            let ts = r.ts.as_nanos();
            if ts > received.saturating_add(self.skew) {
                out.future_timestamp += 1;
                continue;
            }
            let i = self.series_index(&r.device, &r.metric);
            let lateness = if r.source.in_order() { 0 } else { self.lateness };
            let Windows { sizes, series, closed, finest, .. } = self;
            let s = &mut series[i];
            s.last_arrival = s.last_arrival.max(received);
            let late = |k: usize, s: &Series| {
                let end = (ts - ts.rem_euclid(sizes[k])).saturating_add(sizes[k]);
                end.saturating_add(lateness) <= s.max_ts || end <= s.sizes[k].closed_until
            };
            if sizes.is_empty() {
                continue;
            }
            if late(*finest, s) {
                out.late.iter_mut().for_each(|l| *l += 1);
                continue;
            }
            if r.source.may_redeliver() && !s.remember(ts) {
                out.duplicate += 1;
                continue;
            }
            // Close what this reading closes before opening its windows: a series that comes in
            // order then holds one open window per size, and its vectors never grow past one.
            if ts > s.max_ts {
                s.max_ts = ts;
                close(s, sizes, *finest, closed, |end, max_ts| end.saturating_add(lateness) <= max_ts);
            }
            let mut aggregated = false;
            for (k, &size) in sizes.iter().enumerate() {
                let start = ts - ts.rem_euclid(size);
                if late(k, s) {
                    out.late[k] += 1;
                    continue;
                }
                let per = &mut s.sizes[k];
                aggregated = true;
                match per.open.binary_search_by_key(&start, |a| a.start) {
                    Ok(j) => per.open[j].add(ts, r.value),
                    Err(j) => {
                        // Grow one window at a time: a series has one to a few open windows
                        // per size, and the default growth to four would triple that memory
                        // across thousands of series.
                        per.open.reserve_exact(1);
                        per.open.insert(j, Agg::new(start, ts, r.value));
                    }
                }
            }
            out.aggregated += u64::from(aggregated);
        }
        out
    }

    /// The wall clock moved to `now`: close the windows of series idle since `now - idle_close`.
    pub fn tick(&mut self, now: Timestamp) {
        let cutoff = now.as_nanos().saturating_sub(self.idle);
        for i in 0..self.series.len() {
            if self.series[i].last_arrival <= cutoff && self.series[i].has_open() {
                close(&mut self.series[i], &self.sizes, self.finest, &mut self.closed, |_, _| true);
            }
        }
    }

    /// Whether a tick at `now` would close anything (so the writer logs ticks only then).
    pub fn tick_due(&self, now: Timestamp) -> bool {
        let cutoff = now.as_nanos().saturating_sub(self.idle);
        self.series.iter().any(|s| s.last_arrival <= cutoff && s.has_open())
    }

    /// Return rows taken by [`Windows::take_closed`] that could not be written, ahead of any
    /// closed since.
    pub(crate) fn put_back_closed(&mut self, taken: Vec<Vec<Rollup>>) {
        for (mine, rows) in self.closed.iter_mut().zip(taken) {
            let newer = std::mem::replace(mine, rows);
            mine.extend(newer);
        }
    }

    /// Take the closed rows of each window size (same order as the sizes).
    pub fn take_closed(&mut self) -> Vec<Vec<Rollup>> {
        self.closed.iter_mut().map(std::mem::take).collect()
    }

    /// Closed rows waiting to be taken.
    pub fn closed_len(&self) -> usize {
        self.closed.iter().map(Vec::len).sum()
    }

    /// Windows open right now, as rows (for queries that must reach up to now).
    pub fn open_rollups(&self) -> Vec<Rollup> {
        let mut rows = Vec::new();
        for s in &self.series {
            for (k, per) in s.sizes.iter().enumerate() {
                rows.extend(per.open.iter().map(|a| rollup(&s.device, &s.metric, self.sizes[k], a)));
            }
        }
        rows
    }

    /// The closed rows waiting to be taken and the open windows, as rows, of the size at
    /// `size_index`, for the series `wanted` selects.
    pub(crate) fn unflushed(
        &self,
        size_index: usize,
        wanted: impl Fn(&DeviceId, &Metric) -> bool,
    ) -> Vec<Rollup> {
        let size = self.sizes[size_index];
        let mut rows: Vec<Rollup> =
            self.closed[size_index].iter().filter(|r| wanted(&r.device, &r.metric)).cloned().collect();
        for s in self.series.iter().filter(|s| wanted(&s.device, &s.metric)) {
            rows.extend(s.sizes[size_index].open.iter().map(|a| rollup(&s.device, &s.metric, size, a)));
        }
        rows
    }

    /// Number of open windows across all series and sizes.
    pub fn open_count(&self) -> usize {
        self.series.iter().flat_map(|s| &s.sizes).map(|p| p.open.len()).sum()
    }

    /// Number of series (device, metric pairs) seen.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }
}

/// Close the windows of series `s` for which `due(end, max_ts)` holds, into `closed`.
fn close(
    s: &mut Series,
    sizes: &[i64],
    finest: usize,
    closed: &mut [Vec<Rollup>],
    due: impl Fn(i64, i64) -> bool,
) {
    for (k, per) in s.sizes.iter_mut().enumerate() {
        let size = sizes[k];
        let n = per.open.iter().take_while(|a| due(a.start.saturating_add(size), s.max_ts)).count();
        for a in per.open.drain(..n) {
            per.closed_until = per.closed_until.max(a.start.saturating_add(size));
            closed[k].push(rollup(&s.device, &s.metric, size, &a));
        }
    }
    if let Some(per) = s.sizes.get(finest) {
        let until = per.open.first().map_or(per.closed_until, |a| a.start);
        s.forget_before(until);
    }
}

fn rollup(device: &DeviceId, metric: &Metric, size: i64, a: &Agg) -> Rollup {
    Rollup {
        device: device.clone(),
        metric: metric.clone(),
        window_ns: size,
        start: a.start,
        count: a.count,
        min: a.min,
        max: a.max,
        sum: a.sum,
        first: a.first,
        last: a.last,
        first_ts: a.first_ts,
        last_ts: a.last_ts,
    }
}

impl Windows {
    /// Encode the whole state (open windows, per-series watermarks, recent timestamps and the
    /// closed rows not yet taken) for a checkpoint, handing it to `emit` in pieces of about
    /// 64 KiB, so the state is never copied whole into memory.
    pub(crate) fn encode_to(
        &self,
        emit: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        const PIECE: usize = 64 * 1024;
        let mut enc = Enc::default();
        let mut spill = |enc: &mut Enc, at_least: usize| {
            if enc.buf.len() >= at_least {
                emit(&enc.buf)?;
                enc.buf.clear();
            }
            Ok::<(), std::io::Error>(())
        };
        enc.u32(self.sizes.len() as u32);
        for &s in &self.sizes {
            enc.i64(s);
        }
        enc.u64(self.series.len() as u64);
        for s in &self.series {
            enc.name(s.device.as_str());
            enc.name(s.metric.as_str());
            enc.i64(s.max_ts);
            enc.i64(s.last_arrival);
            enc.u64(s.seen.len() as u64);
            for &ts in &s.seen {
                enc.i64(ts);
            }
            for per in &s.sizes {
                enc.i64(per.closed_until);
                enc.u32(per.open.len() as u32);
                for a in &per.open {
                    encode_agg(&mut enc, a);
                }
            }
            spill(&mut enc, PIECE)?;
        }
        for closed in &self.closed {
            enc.u64(closed.len() as u64);
            for r in closed {
                enc.name(r.device.as_str());
                enc.name(r.metric.as_str());
                encode_agg(
                    &mut enc,
                    &Agg {
                        start: r.start,
                        count: r.count,
                        min: r.min,
                        max: r.max,
                        sum: r.sum,
                        first: r.first,
                        last: r.last,
                        first_ts: r.first_ts,
                        last_ts: r.last_ts,
                    },
                );
                spill(&mut enc, PIECE)?;
            }
        }
        spill(&mut enc, 1)
    }

    /// The whole state in memory (see [`Windows::encode_to`]).
    #[cfg(test)]
    pub(crate) fn encode(&self, enc: &mut Enc) {
        self.encode_to(&mut |piece| {
            enc.buf.extend_from_slice(piece);
            Ok(())
        })
        .expect("encoding into memory cannot fail");
    }

    /// Restore a state encoded by [`Windows::encode`] under (possibly changed) settings. Window
    /// sizes that are no longer configured are dropped; new ones start empty.
    pub(crate) fn decode(
        settings: &WindowSettings,
        dec: &mut Dec<'_>,
    ) -> Result<(Windows, usize), Malformed> {
        let mut w = Windows::new(settings);
        let n_sizes = dec.u32()? as usize;
        let old_sizes: Vec<i64> = (0..n_sizes).map(|_| dec.i64()).collect::<Result<_, _>>()?;
        let map: Vec<Option<usize>> = old_sizes.iter().map(|s| w.sizes.iter().position(|n| n == s)).collect();
        let mut dropped = 0;
        let n_series = dec.u64()?;
        for _ in 0..n_series {
            let device = dec.device()?;
            let metric = dec.metric()?;
            let i = w.series_index(&device, &metric);
            let s = &mut w.series[i];
            s.max_ts = dec.i64()?;
            s.last_arrival = dec.i64()?;
            let n_seen = dec.u64()?;
            for _ in 0..n_seen {
                let ts = dec.i64()?;
                s.remember(ts);
            }
            for target in &map {
                let closed_until = dec.i64()?;
                let n_open = dec.u32()?;
                let mut open = Vec::with_capacity(n_open.min(1024) as usize);
                for _ in 0..n_open {
                    open.push(decode_agg(dec)?);
                }
                match target {
                    Some(k) => s.sizes[*k] = PerSize { closed_until, open },
                    None => dropped += open.len(),
                }
            }
        }
        for (old, target) in map.iter().enumerate() {
            let n = dec.u64()?;
            for _ in 0..n {
                let device = dec.device()?;
                let metric = dec.metric()?;
                let a = decode_agg(dec)?;
                match target {
                    Some(k) => w.closed[*k].push(rollup(&device, &metric, old_sizes[old], &a)),
                    None => dropped += 1,
                }
            }
        }
        Ok((w, dropped))
    }
}

fn encode_agg(enc: &mut Enc, a: &Agg) {
    enc.i64(a.start);
    enc.u64(a.count);
    enc.f64(a.min);
    enc.f64(a.max);
    enc.f64(a.sum);
    enc.f64(a.first);
    enc.f64(a.last);
    enc.i64(a.first_ts);
    enc.i64(a.last_ts);
}

fn decode_agg(dec: &mut Dec<'_>) -> Result<Agg, Malformed> {
    Ok(Agg {
        start: dec.i64()?,
        count: dec.u64()?,
        min: dec.f64()?,
        max: dec.f64()?,
        sum: dec.f64()?,
        first: dec.f64()?,
        last: dec.f64()?,
        first_ts: dec.i64()?,
        last_ts: dec.i64()?,
    })
}

#[cfg(test)]
mod tests;
