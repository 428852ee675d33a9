//! Hybrid replay: combines driven by a recorded day (where they went and what their yield
//! monitors measured), carts and trucks simulated under the policy being scored. So a
//! recorded harvest scores any policy.
//!
//! A combine follows its recording on a clock of its own that only runs while it can harvest:
//! when its simulated tank is full and no cart came, it waits, and the rest of its recorded
//! day comes later. Recorded stretches where the original combine stood still for its
//! logistics (waiting full, unloading stationary) are skipped, since the simulated carts decide
//! those now.

use super::scenario::{Scenario, combine_id};
use crate::replay::input::Row;
use fieldgate::coordination::Position;
use fieldgate::coordination::track::{GeoOrigin, combine_state};
use std::collections::BTreeMap;

/// One recorded moment of a combine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the recording's first moment.
    pub t_s: f64,
    pub pos: Position,
    pub mass_flow_kg_s: f64,
}

/// A combine's recorded day: the moments it was working (harvesting, turning, unloading on
/// the go), and its tank at the start.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Track {
    pub samples: Vec<Sample>,
    pub start_fill_kg: f64,
    /// Track time at which the day is over: the last sample holds for one more report
    /// interval.
    pub end_s: f64,
}

impl Track {
    /// The sample in force at track time `t_s` (the last one at or before it), and whether the
    /// track is over.
    pub fn at(&self, t_s: f64) -> Option<&Sample> {
        if self.samples.is_empty() || t_s >= self.end_s {
            return None;
        }
        let i = self.samples.partition_point(|s| s.t_s <= t_s);
        self.samples.get(i.saturating_sub(1))
    }
}

/// The tracks of the scenario's combines (`combine-1` ...) from recorded readings.
/// `recorded_speed`: how much faster than real time the recording was made (1 for a farm's
/// day; N for a `field-sim run --speed N`), so its times are stretched back N times.
pub fn tracks(scenario: &Scenario, rows: &[Row], recorded_speed: f64) -> Result<Vec<Track>, String> {
    let origin = GeoOrigin { lat: scenario.field.origin.lat, lon: scenario.field.origin.lon };
    let start = rows.iter().map(|r| r.ts).min().ok_or("the recording is empty")?;
    let mut out = Vec::new();
    for i in 1..=scenario.combine.count {
        let id = combine_id(i);
        // The readings of each recorded moment, by time.
        let mut moments: BTreeMap<i64, BTreeMap<&str, f64>> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.device == id) {
            moments.entry(r.ts.as_nanos()).or_default().insert(r.metric.as_str(), r.value);
        }
        let mut track = Track::default();
        let mut skipped_s = 0.0;
        let mut last_t: Option<(f64, bool)> = None;
        for (ts, m) in &moments {
            let t = (ts - start.as_nanos()) as f64 / 1e9 * recorded_speed;
            if track.samples.is_empty()
                && let Some(fill) = m.get("fill_kg")
            {
                track.start_fill_kg = *fill;
            }
            let pos = match (m.get("x_m"), m.get("y_m"), m.get("lat"), m.get("lon")) {
                (Some(x), Some(y), ..) => Position::new(*x, *y),
                (_, _, Some(lat), Some(lon)) => origin.to_local(*lat, *lon),
                _ => continue,
            };
            let state = m.get("state").copied().unwrap_or(combine_state::HARVESTING);
            let working =
                [combine_state::HARVESTING, combine_state::TURNING, combine_state::UNLOADING_ON_THE_GO]
                    .contains(&state);
            // Time the original combine lost to its logistics (from a report saying it stood
            // still to the next report) is not part of the track.
            if let Some((prev, false)) = last_t {
                skipped_s += t - prev;
            }
            last_t = Some((t, working));
            if !working {
                continue;
            }
            let flow = m.get("mass_flow_kg_s").copied().unwrap_or(0.0);
            track.samples.push(Sample { t_s: t - skipped_s, pos, mass_flow_kg_s: flow.max(0.0) });
        }
        let n = track.samples.len();
        if n == 0 {
            return Err(format!("the recording has no working position of {id}"));
        }
        let interval = if n > 1 { track.samples[n - 1].t_s - track.samples[n - 2].t_s } else { 1.0 };
        track.end_s = track.samples[n - 1].t_s + interval;
        out.push(track);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldgate_proto::Timestamp;

    fn row(t: i64, device: &str, metric: &str, value: f64) -> Row {
        Row {
            ts: Timestamp::from_nanos(t * 1_000_000_000),
            device: device.into(),
            metric: metric.into(),
            value,
            source: "mqtt".into(),
        }
    }

    #[test]
    fn time_lost_waiting_is_cut_out_of_the_track() {
        let mut scenario = Scenario::load("b1").expect("b1");
        scenario.combine.count = 1;
        let mut rows = Vec::new();
        // Harvesting at 0 and 5 s, waiting full at 10 and 15, harvesting again at 20.
        for (t, state, flow) in
            [(0, 1.0, 9.0), (5, 1.0, 10.0), (10, 4.0, 0.0), (15, 4.0, 0.0), (20, 1.0, 11.0)]
        {
            rows.push(row(t, "combine-1", "x_m", t as f64));
            rows.push(row(t, "combine-1", "y_m", 0.0));
            rows.push(row(t, "combine-1", "state", state));
            rows.push(row(t, "combine-1", "mass_flow_kg_s", flow));
            rows.push(row(t, "combine-1", "fill_kg", 500.0 + t as f64));
        }
        rows.push(row(0, "cart-1", "x_m", 3.0));
        let tracks = tracks(&scenario, &rows, 1.0).expect("tracks");
        let t = &tracks[0];
        assert_eq!(t.start_fill_kg, 500.0);
        let times: Vec<f64> = t.samples.iter().map(|s| s.t_s).collect();
        assert_eq!(times, vec![0.0, 5.0, 10.0], "the 10 s of waiting are gone");
        assert_eq!(t.at(12.0).map(|s| s.mass_flow_kg_s), Some(11.0));
        assert_eq!(t.at(7.0).map(|s| s.pos.x_m), Some(5.0));
        assert_eq!(t.at(15.5), None, "over one interval after the last report");
        // Recorded at ten times real time: the same day, ten times longer.
        let slow = super::tracks(&scenario, &rows, 10.0).expect("tracks");
        assert_eq!(slow[0].samples.iter().map(|s| s.t_s).collect::<Vec<_>>(), vec![0.0, 50.0, 100.0]);
    }
}
