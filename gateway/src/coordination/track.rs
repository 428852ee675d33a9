//! From telemetry to fleet state. Machines report, over any protocol, readings with these
//! metric names (the contract between a machine and the dispatcher, in docs/config.md):
//!
//! | metric | machines | meaning |
//! |---|---|---|
//! | `x_m`, `y_m` | all | position in metres east and north of the staging area, or |
//! | `lat`, `lon` | all | position in degrees, with `[coordination] origin` set |
//! | `fill_kg` | all | grain on board (tank, cart, truck) |
//! | `mass_flow_kg_s` | combines | the yield monitor's mass flow while harvesting |
//! | `state` | all | what it is doing, a code from [`combine_state`], [`cart_state`], [`truck_state`] |
//!
//! A cart's load may come from another device, its scale (a LoRaWAN load cell), named in its
//! [`MachineSpec::load_from`].

use super::{
    Cart, CartActivity, Combine, CombineActivity, FleetState, Position, Truck, TruckActivity, secs_between,
};
use fieldgate_proto::{DeviceId, Timestamp};
use std::collections::HashMap;
use std::time::Duration;

/// What a machine is in the harvest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Combine,
    Cart,
    Truck,
}

/// A machine of the fleet, from config: its role and what it can carry and how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineSpec {
    pub device: DeviceId,
    pub role: Role,
    pub capacity_kg: f64,
    /// A combine's unloading auger, or a cart's auger into a truck.
    pub unload_kg_s: f64,
    /// A cart's in-field speeds.
    pub speed_empty_kmh: f64,
    pub speed_loaded_kmh: f64,
    /// Where the load comes from when not from the machine's own `fill_kg`: a scale device
    /// and its metric.
    pub load_from: Option<(DeviceId, String)>,
}

/// Codes of a combine's `state` metric.
pub mod combine_state {
    pub const IDLE: f64 = 0.0;
    pub const HARVESTING: f64 = 1.0;
    pub const TURNING: f64 = 2.0;
    pub const UNLOADING_ON_THE_GO: f64 = 3.0;
    pub const WAITING_FULL: f64 = 4.0;
    pub const UNLOADING_STATIONARY: f64 = 5.0;
    pub const DONE: f64 = 6.0;
}

/// Codes of a cart's `state` metric.
pub mod cart_state {
    pub const IDLE: f64 = 0.0;
    pub const TO_COMBINE: f64 = 1.0;
    pub const SYNCING: f64 = 2.0;
    pub const RECEIVING: f64 = 3.0;
    pub const TO_TRUCK: f64 = 4.0;
    pub const AUGERING: f64 = 5.0;
}

/// Codes of a truck's `state` metric.
pub mod truck_state {
    pub const STAGING: f64 = 0.0;
    pub const HAULING: f64 = 1.0;
    pub const AT_BIN: f64 = 2.0;
    pub const RETURNING: f64 = 3.0;
}

fn combine_activity(code: f64) -> CombineActivity {
    use combine_state::*;
    match code {
        c if c == HARVESTING => CombineActivity::Harvesting,
        c if c == TURNING => CombineActivity::Turning,
        c if c == UNLOADING_ON_THE_GO => CombineActivity::UnloadingOnTheGo,
        c if c == WAITING_FULL => CombineActivity::WaitingFull,
        c if c == UNLOADING_STATIONARY => CombineActivity::UnloadingStationary,
        c if c == DONE => CombineActivity::Done,
        _ => CombineActivity::Idle,
    }
}

fn cart_activity(code: f64) -> CartActivity {
    use cart_state::*;
    match code {
        c if c == TO_COMBINE => CartActivity::ToCombine,
        c if c == SYNCING => CartActivity::Syncing,
        c if c == RECEIVING => CartActivity::Receiving,
        c if c == TO_TRUCK => CartActivity::ToTruck,
        c if c == AUGERING => CartActivity::Augering,
        _ => CartActivity::Idle,
    }
}

/// Degrees to the local frame: an equirectangular projection around `origin`, exact to
/// centimetres over a farm's few kilometres.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoOrigin {
    pub lat: f64,
    pub lon: f64,
}

const EARTH_RADIUS_M: f64 = 6_371_000.0;

impl GeoOrigin {
    pub fn to_local(self, lat: f64, lon: f64) -> Position {
        let k = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
        Position::new((lon - self.lon) * k * self.lat.to_radians().cos(), (lat - self.lat) * k)
    }

    pub fn to_geo(self, p: Position) -> (f64, f64) {
        let k = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
        (self.lat + p.y_m / k, self.lon + p.x_m / (k * self.lat.to_radians().cos()))
    }
}

/// Weight of a new mass-flow sample in the smoothed fill rate (about the last five reports).
const FLOW_SMOOTHING: f64 = 0.3;

#[derive(Debug, Default, Clone)]
struct Seen {
    values: HashMap<&'static str, (Timestamp, f64)>,
    fill_rate_kg_s: Option<f64>,
    last: Option<Timestamp>,
    /// The last two position fixes, for the velocity.
    fixes: [Option<(Timestamp, Position)>; 2],
}

/// Fixes further apart than this give no velocity (the machine may have turned meanwhile).
const VELOCITY_SPAN_S: f64 = 30.0;

impl Seen {
    fn position(&self, origin: Option<GeoOrigin>) -> Option<(Timestamp, Position)> {
        let value = |m: &str| self.values.get(m).copied();
        match (value("x_m"), value("y_m"), value("lat"), value("lon"), origin) {
            (Some((tx, x)), Some((ty, y)), ..) if tx == ty => Some((tx, Position::new(x, y))),
            (_, _, Some((ta, lat)), Some((to, lon)), Some(origin)) if ta == to => {
                Some((ta, origin.to_local(lat, lon)))
            }
            _ => None,
        }
    }

    fn velocity(&self) -> Position {
        match self.fixes {
            [Some((t0, p0)), Some((t1, p1))] => {
                let dt = secs_between(t0, t1);
                if dt > 0.0 && dt <= VELOCITY_SPAN_S {
                    Position::new((p1.x_m - p0.x_m) / dt, (p1.y_m - p0.y_m) / dt)
                } else {
                    Position::default()
                }
            }
            _ => Position::default(),
        }
    }
}

/// The metrics the tracker keeps; others are ignored.
const METRICS: [&str; 7] = ["x_m", "y_m", "lat", "lon", "fill_kg", "mass_flow_kg_s", "state"];

/// Folds telemetry into the latest state of each machine.
#[derive(Debug, Clone)]
pub struct Tracker {
    specs: Vec<MachineSpec>,
    origin: Option<GeoOrigin>,
    stale_after: Duration,
    sync_s: f64,
    seen: HashMap<DeviceId, Seen>,
    /// Scale device to (machine, metric).
    scales: HashMap<DeviceId, (DeviceId, String)>,
}

impl Tracker {
    /// `stale_after`: a machine silent for longer is left out of plans. `sync_s`: how long a
    /// cart needs alongside a combine before grain flows.
    pub fn new(
        specs: Vec<MachineSpec>,
        origin: Option<GeoOrigin>,
        stale_after: Duration,
        sync_s: f64,
    ) -> Self {
        let scales = specs
            .iter()
            .filter_map(|s| s.load_from.clone().map(|(dev, metric)| (dev, (s.device.clone(), metric))))
            .collect();
        Tracker { specs, origin, stale_after, sync_s, seen: HashMap::new(), scales }
    }

    /// Take one reading. Older readings than the one held for a metric are ignored, so a
    /// replayed or late message does not move a machine back.
    pub fn observe(&mut self, device: &DeviceId, metric: &str, ts: Timestamp, value: f64) {
        if !value.is_finite() {
            return;
        }
        if let Some((machine, load_metric)) = self.scales.get(device) {
            if metric == load_metric {
                let machine = machine.clone();
                self.put(&machine, "fill_kg", ts, value);
            }
            return;
        }
        if !self.specs.iter().any(|s| &s.device == device) {
            return;
        }
        let Some(&name) = METRICS.iter().find(|m| **m == metric) else { return };
        // A machine with a scale takes its load from the scale only.
        if name == "fill_kg" && self.specs.iter().any(|s| &s.device == device && s.load_from.is_some()) {
            return;
        }
        self.put(device, name, ts, value);
    }

    fn put(&mut self, device: &DeviceId, name: &'static str, ts: Timestamp, value: f64) {
        let seen = self.seen.entry(device.clone()).or_default();
        if seen.values.get(name).is_some_and(|(held, _)| *held >= ts) {
            return;
        }
        seen.values.insert(name, (ts, value));
        if name == "mass_flow_kg_s" && value > 0.0 {
            seen.fill_rate_kg_s = Some(match seen.fill_rate_kg_s {
                Some(rate) => rate + FLOW_SMOOTHING * (value - rate),
                None => value,
            });
        }
        if seen.last.is_none_or(|last| ts > last) {
            seen.last = Some(ts);
        }
        if matches!(name, "x_m" | "y_m" | "lat" | "lon")
            && let Some(fix) = seen.position(self.origin)
            && seen.fixes[1].is_none_or(|(t, _)| fix.0 > t)
        {
            seen.fixes = [seen.fixes[1], Some(fix)];
        }
    }

    /// The fleet as of `now`: machines heard within the stale limit, and the others named.
    pub fn fleet(&self, now: Timestamp) -> FleetState {
        let mut fleet = FleetState { sync_s: self.sync_s, ..FleetState::default() };
        for spec in &self.specs {
            let seen = self.seen.get(&spec.device);
            let last = seen.and_then(|s| s.last);
            let fresh = last.is_some_and(|t| secs_between(t, now) <= self.stale_after.as_secs_f64());
            let (Some(seen), Some(last), true) = (seen, last, fresh) else {
                fleet.silent.push((spec.device.clone(), last));
                continue;
            };
            let value = |m: &str| seen.values.get(m).map(|(_, v)| *v);
            let pos = seen.fixes[1].map(|(_, p)| p);
            let fill = value("fill_kg").unwrap_or(0.0).max(0.0);
            let state = value("state").unwrap_or(0.0);
            match spec.role {
                Role::Combine => fleet.combines.push(Combine {
                    id: spec.device.clone(),
                    pos: pos.unwrap_or_default(),
                    fill_kg: fill,
                    capacity_kg: spec.capacity_kg,
                    velocity: seen.velocity(),
                    fill_rate_kg_s: seen.fill_rate_kg_s.unwrap_or(0.0),
                    unload_kg_s: spec.unload_kg_s,
                    activity: combine_activity(state),
                    seen: last,
                }),
                Role::Cart => fleet.carts.push(Cart {
                    id: spec.device.clone(),
                    pos: pos.unwrap_or_default(),
                    load_kg: fill,
                    capacity_kg: spec.capacity_kg,
                    speed_empty_m_s: spec.speed_empty_kmh / 3.6,
                    speed_loaded_m_s: spec.speed_loaded_kmh / 3.6,
                    auger_kg_s: spec.unload_kg_s,
                    activity: cart_activity(state),
                    seen: last,
                }),
                Role::Truck => fleet.trucks.push(Truck {
                    id: spec.device.clone(),
                    load_kg: fill,
                    capacity_kg: spec.capacity_kg,
                    activity: if state == truck_state::STAGING {
                        TruckActivity::Staging
                    } else {
                        TruckActivity::Away
                    },
                    seen: last,
                }),
            }
        }
        fleet
    }
}
