//! Harvest coordination: which grain cart serves which combine, when a cart unloads into
//! which truck, and when a truck leaves for the bin, decided at the edge so that a combine
//! never stops with a full tank.
//!
//! The logic is pure ("sans I/O"): a [`Tracker`] folds the machines' telemetry (the readings
//! the adapters deliver, in the metric names of [`track`]) into a [`FleetState`], and a
//! [`Policy`] turns that state and `now` into a [`Plan`]: assignments with ETAs, predictions,
//! and warnings for a person. The gateway runs it on a timer and sends the assignments down as
//! commands ([`service`]); field-sim runs the very same code offline to score policies.
//!
//! Positions are metres east (`x_m`) and north (`y_m`) of the staging area, where trucks wait.

pub mod policy;
pub mod service;
pub mod track;

#[cfg(test)]
mod tests;

use fieldgate_proto::{DeviceId, Task, Timestamp};
use std::time::Duration;

pub use policy::{Dispatcher, NearestIdleAt, Policy, PolicyKind, StopAndCall};
pub use service::{CoordinationSettings, FleetView};
pub use track::{MachineSpec, Role, Tracker};

/// A point in the local frame: metres east and north of the staging area.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Position {
    pub x_m: f64,
    pub y_m: f64,
}

impl Position {
    pub const fn new(x_m: f64, y_m: f64) -> Self {
        Position { x_m, y_m }
    }

    /// The distance a machine drives between two points in a field: along the headland and
    /// then up a harvested pass, so east-west and north-south legs add up (the city-block
    /// distance). Straight lines would cross standing crop.
    pub fn drive_m(self, to: Position) -> f64 {
        (self.x_m - to.x_m).abs() + (self.y_m - to.y_m).abs()
    }
}

/// How far ahead a combine's motion is extrapolated.
pub const PREDICT_AHEAD_S: f64 = 300.0;

/// What a combine reports it is doing (telemetry metric `state`, codes in [`track`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CombineActivity {
    Idle,
    Harvesting,
    Turning,
    /// Harvesting while a cart takes its grain alongside.
    UnloadingOnTheGo,
    /// Stopped with a full tank.
    WaitingFull,
    /// Stopped while a cart takes its grain.
    UnloadingStationary,
    /// Its part of the field is finished.
    Done,
}

/// What a grain cart reports it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CartActivity {
    Idle,
    /// Driving to a combine.
    ToCombine,
    /// Alongside a combine, matching its speed.
    Syncing,
    /// Taking a combine's grain.
    Receiving,
    /// Driving to the trucks.
    ToTruck,
    /// Unloading into a truck.
    Augering,
}

/// What a truck reports it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TruckActivity {
    /// At the staging area, taking grain from carts.
    Staging,
    /// On the road to the bin, at the bin, or on the way back.
    Away,
}

/// A combine as the dispatcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Combine {
    pub id: DeviceId,
    pub pos: Position,
    /// Metres per second east and north, from its last two position reports.
    pub velocity: Position,
    pub fill_kg: f64,
    pub capacity_kg: f64,
    /// Smoothed fill rate while harvesting (the yield monitor's mass flow).
    pub fill_rate_kg_s: f64,
    /// How fast its auger empties the tank.
    pub unload_kg_s: f64,
    pub activity: CombineActivity,
    /// When its telemetry last arrived.
    pub seen: Timestamp,
}

impl Combine {
    /// When the tank is predicted full: now when it is, never when it is not filling.
    pub fn full_at(&self, now: Timestamp) -> Option<Timestamp> {
        match self.activity {
            CombineActivity::WaitingFull => Some(now),
            CombineActivity::Done | CombineActivity::Idle => None,
            _ if self.fill_kg >= self.capacity_kg => Some(now),
            _ if self.fill_rate_kg_s <= 0.0 => None,
            _ => Some(add_secs(now, (self.capacity_kg - self.fill_kg) / self.fill_rate_kg_s)),
        }
    }

    /// Where it will be in `secs` at its current velocity (at most [`PREDICT_AHEAD_S`] ahead:
    /// it turns at the end of the pass).
    pub fn pos_in(&self, secs: f64) -> Position {
        let t = secs.clamp(0.0, PREDICT_AHEAD_S);
        Position::new(self.pos.x_m + self.velocity.x_m * t, self.pos.y_m + self.velocity.y_m * t)
    }

    /// Seconds for a machine at `from` driving at `speed_m_s` to meet it, aiming where it
    /// will be rather than where it is.
    pub fn intercept_s(&self, from: Position, speed_m_s: f64) -> f64 {
        let speed = speed_m_s.max(0.1);
        let mut t = from.drive_m(self.pos) / speed;
        for _ in 0..8 {
            t = from.drive_m(self.pos_in(t)) / speed;
        }
        t
    }

    /// Whether a cart is taking its grain now.
    pub fn being_unloaded(&self) -> bool {
        matches!(self.activity, CombineActivity::UnloadingOnTheGo | CombineActivity::UnloadingStationary)
    }
}

/// A grain cart as the dispatcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cart {
    pub id: DeviceId,
    pub pos: Position,
    pub load_kg: f64,
    pub capacity_kg: f64,
    pub speed_empty_m_s: f64,
    pub speed_loaded_m_s: f64,
    /// Auger rate into a truck.
    pub auger_kg_s: f64,
    pub activity: CartActivity,
    pub seen: Timestamp,
}

impl Cart {
    /// Seconds to drive `metres`, at the loaded speed once it carries anything (a partly full
    /// cart is driven carefully too).
    pub fn drive_s(&self, metres: f64) -> f64 {
        let speed = if self.load_kg > 0.0 { self.speed_loaded_m_s } else { self.speed_empty_m_s };
        metres / speed.max(0.1)
    }
}

/// A truck as the dispatcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Truck {
    pub id: DeviceId,
    pub load_kg: f64,
    pub capacity_kg: f64,
    pub activity: TruckActivity,
    pub seen: Timestamp,
}

/// Everything a policy decides from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FleetState {
    pub combines: Vec<Combine>,
    pub carts: Vec<Cart>,
    pub trucks: Vec<Truck>,
    /// Machines whose telemetry is older than the stale limit, or never came: left out of the
    /// plan, and named in its warnings.
    pub silent: Vec<(DeviceId, Option<Timestamp>)>,
    /// Seconds a cart needs alongside a combine before grain flows.
    pub sync_s: f64,
}

/// One instruction for a machine, with when it is expected to get there.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub device: DeviceId,
    pub task: Task,
    pub target: Option<DeviceId>,
    /// When the machine is expected at its target.
    pub eta: Option<Timestamp>,
    /// When the dispatcher needs it there (a combine's predicted full time).
    pub due: Option<Timestamp>,
    pub note: String,
}

/// A policy's answer for one instant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// One per cart and truck that should act; a machine without one keeps doing what it does.
    pub assignments: Vec<Assignment>,
    /// Planned next jobs of carts that wait where they are (`hold`, with the next combine):
    /// shown in the `Fleet` call, not sent, since a waiting operator has nothing to do yet.
    pub upcoming: Vec<Assignment>,
    /// Things a person should know (a fleet too small, a silent machine).
    pub warnings: Vec<String>,
}

/// `t` plus `secs` (clamped at zero and at the end of time).
pub fn add_secs(t: Timestamp, secs: f64) -> Timestamp {
    t.saturating_add(Duration::from_secs_f64(secs.clamp(0.0, 1.0e9)))
}

/// `t` plus `secs`, which may be negative.
pub fn add_secs_signed(t: Timestamp, secs: f64) -> Timestamp {
    if secs >= 0.0 {
        add_secs(t, secs)
    } else {
        t.saturating_sub(Duration::from_secs_f64((-secs).min(1.0e9)))
    }
}

/// Seconds from `earlier` to `later` (negative when `later` is before).
pub fn secs_between(earlier: Timestamp, later: Timestamp) -> f64 {
    (later.as_nanos() - earlier.as_nanos()) as f64 / 1e9
}
