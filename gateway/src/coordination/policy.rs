//! Policies: who serves which combine, when a cart unloads, when a truck leaves.
//!
//! Three policies share one set of rules for carts and trucks and differ in how carts are sent
//! to combines (FIELD-NOTES "Harvest logistics"):
//! - [`StopAndCall`] (P0): a combine calls when its tank is full and stops; the nearest idle
//!   cart comes.
//! - [`NearestIdleAt`] (P1, common practice): a combine calls at 80 % full; calls are served
//!   first come, first served, by the nearest idle cart.
//! - [`Dispatcher`] (P5): predicts each combine's full time from its smoothed mass flow and,
//!   every plan, solves the assignment of carts to the most urgent combines over predicted need
//!   times and travel times, sequencing each cart's jobs and its trips to the trucks; a cart
//!   leaves just in time to be alongside before the tank is full, and the plan only changes
//!   when the new one is clearly better (hysteresis), so operators are not sent back and forth.
//!
//! Shared rules: a cart that cannot take a further tank unloads into the fullest truck at the
//! staging area that has room; a truck leaves when full, or once nothing more will come.

use super::{
    Assignment, Cart, CartActivity, Combine, CombineActivity, FleetState, Plan, Position, Truck,
    TruckActivity, add_secs, secs_between,
};
use fieldgate_proto::{DeviceId, Task, Timestamp};
use std::collections::{BTreeMap, HashMap};

/// A policy: the fleet and the time in, the plan out. Implementations keep what they decided
/// before (for hysteresis and first-come order) but read no clock and do no I/O.
pub trait Policy: Send + std::fmt::Debug {
    fn name(&self) -> &'static str;
    fn plan(&mut self, fleet: &FleetState, now: Timestamp) -> Plan;
}

/// The policies by name, for config and the scorer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    StopAndCall,
    NearestIdle,
    Dispatcher,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 3] =
        [PolicyKind::StopAndCall, PolicyKind::NearestIdle, PolicyKind::Dispatcher];

    pub const fn as_str(self) -> &'static str {
        match self {
            PolicyKind::StopAndCall => "stop_and_call",
            PolicyKind::NearestIdle => "nearest_idle",
            PolicyKind::Dispatcher => "dispatcher",
        }
    }

    pub fn parse(name: &str) -> Option<PolicyKind> {
        PolicyKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub fn build(self) -> Box<dyn Policy> {
        match self {
            PolicyKind::StopAndCall => Box::new(StopAndCall::default()),
            PolicyKind::NearestIdle => Box::new(NearestIdleAt::new(0.8)),
            PolicyKind::Dispatcher => Box::new(Dispatcher::default()),
        }
    }
}

/// How long an instruction binds a cart that has not yet been seen acting on it: the
/// operator's reaction plus a telemetry interval or two.
const GRACE_S: f64 = 30.0;
/// A truck this close to its capacity leaves.
const TRUCK_FULL_MARGIN_KG: f64 = 250.0;
/// Less grain than this is an empty tank or cart (scales read a little off zero).
const EMPTY_KG: f64 = 50.0;
/// A cart unloads when it has less room than this share of the largest tank.
const ROOM_FOR_TANK: f64 = 0.9;

/// What a policy remembers of its own instructions, and of the trucks' round trips.
#[derive(Debug, Default, Clone)]
struct Memory {
    /// The job of each cart and when it was given.
    jobs: HashMap<DeviceId, (Task, Option<DeviceId>, Timestamp)>,
    /// When each truck away from the staging area was first seen away.
    trucks_left: HashMap<DeviceId, Timestamp>,
    /// Smoothed round trip of a truck (staging area, bin, back), once one was seen.
    trip_s: Option<f64>,
}

/// A truck's round trip before one has been seen: 5 km each way, 6 min unloading, a queue.
const DEFAULT_TRIP_S: f64 = 1500.0;

impl Memory {
    /// Forget jobs the carts finished or dropped: a cart back to idle after the grace period
    /// has done (or abandoned) what it was told. Learn the trucks' round trips.
    fn settle(&mut self, fleet: &FleetState, now: Timestamp) {
        for truck in &fleet.trucks {
            match truck.activity {
                TruckActivity::Away => {
                    self.trucks_left.entry(truck.id.clone()).or_insert(now);
                }
                TruckActivity::Staging => {
                    if let Some(left) = self.trucks_left.remove(&truck.id) {
                        let trip = secs_between(left, now);
                        self.trip_s = Some(self.trip_s.map_or(trip, |t| t + 0.3 * (trip - t)));
                    }
                }
            }
        }
        self.jobs.retain(|cart, (task, _, since)| {
            let Some(c) = fleet.carts.iter().find(|c| &c.id == cart) else { return false };
            let acting = match task {
                Task::Serve => {
                    matches!(
                        c.activity,
                        CartActivity::ToCombine | CartActivity::Syncing | CartActivity::Receiving
                    )
                }
                Task::UnloadInto => matches!(c.activity, CartActivity::ToTruck | CartActivity::Augering),
                Task::Haul | Task::Hold => false,
            };
            acting || secs_between(*since, now) < GRACE_S
        });
    }

    /// Seconds until a truck with room is at the staging area: now when one is, else when the
    /// first one away is expected back.
    fn truck_ready_s(&self, fleet: &FleetState, now: Timestamp) -> f64 {
        if truck_for(fleet).is_some() {
            return 0.0;
        }
        let trip = self.trip_s.unwrap_or(DEFAULT_TRIP_S);
        fleet
            .trucks
            .iter()
            .filter_map(|t| self.trucks_left.get(&t.id))
            .map(|left| (trip - secs_between(*left, now)).max(0.0))
            .fold(f64::INFINITY, f64::min)
            .min(2.0 * trip)
    }

    fn serving(&self, combine: &DeviceId) -> Option<&DeviceId> {
        self.jobs
            .iter()
            .find(|(_, (task, target, _))| *task == Task::Serve && target.as_ref() == Some(combine))
            .map(|(c, _)| c)
    }

    fn busy(&self, cart: &DeviceId) -> bool {
        self.jobs.get(cart).is_some_and(|(task, ..)| matches!(task, Task::Serve | Task::UnloadInto))
    }

    fn give(&mut self, cart: &DeviceId, task: Task, target: Option<DeviceId>, now: Timestamp) {
        let keep = self.jobs.get(cart).is_some_and(|(t, tg, _)| *t == task && *tg == target);
        if !keep {
            self.jobs.insert(cart.clone(), (task, target, now));
        }
    }
}

fn largest_tank(fleet: &FleetState) -> f64 {
    fleet.combines.iter().map(|c| c.capacity_kg).fold(0.0, f64::max)
}

fn must_unload(cart: &Cart, fleet: &FleetState) -> bool {
    cart.load_kg > 0.0 && cart.capacity_kg - cart.load_kg < ROOM_FOR_TANK * largest_tank(fleet)
}

/// The truck a cart should unload into: the fullest one at the staging area with room.
fn truck_for(fleet: &FleetState) -> Option<&Truck> {
    fleet
        .trucks
        .iter()
        .filter(|t| t.activity == TruckActivity::Staging && t.capacity_kg - t.load_kg > TRUCK_FULL_MARGIN_KG)
        .max_by(|a, b| a.load_kg.total_cmp(&b.load_kg).then_with(|| b.id.cmp(&a.id)))
}

fn unload_assignment(cart: &Cart, fleet: &FleetState, now: Timestamp) -> Assignment {
    let eta = add_secs(now, cart.drive_s(cart.pos.drive_m(Position::default())));
    match truck_for(fleet) {
        Some(truck) => Assignment {
            device: cart.id.clone(),
            task: Task::UnloadInto,
            target: Some(truck.id.clone()),
            eta: Some(eta),
            due: None,
            note: format!("unload {:.1} t into {}", cart.load_kg / 1000.0, truck.id),
        },
        None => Assignment {
            device: cart.id.clone(),
            task: Task::UnloadInto,
            target: None,
            eta: Some(eta),
            due: None,
            note: format!("take {:.1} t to the staging area and wait for a truck", cart.load_kg / 1000.0),
        },
    }
}

fn serve_assignment(cart: &Cart, combine: &Combine, now: Timestamp, eta: Timestamp) -> Assignment {
    let due = combine.full_at(now);
    let note = match due {
        Some(due) if due <= now => format!("{} is full", combine.id),
        Some(due) => format!("{} full in {:.0} min", combine.id, secs_between(now, due) / 60.0),
        None => format!("empty {}", combine.id),
    };
    Assignment {
        device: cart.id.clone(),
        task: Task::Serve,
        target: Some(combine.id.clone()),
        eta: Some(eta),
        due,
        note,
    }
}

/// The shared truck rules: leave when full, or when the harvest is over and no cart brings
/// more; otherwise wait.
fn truck_assignments(fleet: &FleetState, plan: &mut Plan) {
    let harvest_over = !fleet.combines.is_empty()
        && fleet.combines.iter().all(|c| c.activity == CombineActivity::Done && c.fill_kg <= EMPTY_KG)
        && fleet.carts.iter().all(|c| c.load_kg <= EMPTY_KG);
    for truck in fleet.trucks.iter().filter(|t| t.activity == TruckActivity::Staging) {
        let full = truck.capacity_kg - truck.load_kg <= TRUCK_FULL_MARGIN_KG;
        let (task, note) = if full || (harvest_over && truck.load_kg > 0.0) {
            (Task::Haul, format!("leave for the bin with {:.1} t", truck.load_kg / 1000.0))
        } else {
            (Task::Hold, "wait at the staging area for carts".to_owned())
        };
        plan.assignments.push(Assignment {
            device: truck.id.clone(),
            task,
            target: None,
            eta: None,
            due: None,
            note,
        });
    }
}

/// Warnings every policy gives: silent machines, and a fleet too small for the harvest rate.
fn fleet_warnings(fleet: &FleetState, memory: &Memory, now: Timestamp, plan: &mut Plan) {
    for (device, last) in &fleet.silent {
        plan.warnings.push(match last {
            Some(t) => format!("{device} silent for {:.0} s: left out of the plan", secs_between(*t, now)),
            None => format!("no telemetry from {device} yet: left out of the plan"),
        });
    }
    let harvest_kg_s: f64 = fleet
        .combines
        .iter()
        .filter(|c| !matches!(c.activity, CombineActivity::Done | CombineActivity::Idle))
        .map(|c| c.fill_rate_kg_s)
        .sum();
    if harvest_kg_s <= 0.0 {
        return;
    }
    if fleet.carts.is_empty() {
        plan.warnings.push("no cart reports: nobody can empty the combines".to_owned());
        return;
    }
    if let Some(trip) = memory.trip_s {
        let trucks_kg_s: f64 = fleet.trucks.iter().map(|t| t.capacity_kg).sum::<f64>() / trip.max(1.0);
        if harvest_kg_s > 0.95 * trucks_kg_s {
            plan.warnings.push(format!(
                "trucks cannot keep up: {} trucks move about {:.0} t/h (a round trip takes {:.0} min), \
                 the combines harvest {:.0} t/h; carts will wait for trucks whatever the dispatch",
                fleet.trucks.len(),
                trucks_kg_s * 3.6,
                trip / 60.0,
                harvest_kg_s * 3.6
            ));
        }
    }
    let carts_kg_s: f64 = fleet.carts.iter().map(|cart| cart_throughput_kg_s(cart, fleet)).sum();
    if harvest_kg_s > 0.95 * carts_kg_s {
        plan.warnings.push(format!(
            "carts cannot keep up: {} carts move about {:.0} t/h, the combines harvest {:.0} t/h; \
             combines will wait whatever the dispatch",
            fleet.carts.len(),
            carts_kg_s * 3.6,
            harvest_kg_s * 3.6
        ));
    }
}

/// What one cart can move per second: a round trip to the combines' average distance, a
/// full cart's worth of tanks taken on the go, and the auger into a truck.
fn cart_throughput_kg_s(cart: &Cart, fleet: &FleetState) -> f64 {
    let n = fleet.combines.len().max(1) as f64;
    let distance = fleet.combines.iter().map(|c| c.pos.drive_m(Position::default())).sum::<f64>() / n;
    let tank = largest_tank(fleet).max(1.0);
    // Topped up when the next tank would not fit whole, a cart leaves nearly full.
    let tanks = (cart.capacity_kg / tank).max(1.0);
    let unload_kg_s = fleet.combines.iter().map(|c| c.unload_kg_s).sum::<f64>() / n;
    // From one combine to the next: their mean distance from each other.
    let pairs = fleet.combines.len() * fleet.combines.len().saturating_sub(1);
    let between = if pairs == 0 {
        0.0
    } else {
        fleet
            .combines
            .iter()
            .flat_map(|a| fleet.combines.iter().map(move |b| a.pos.drive_m(b.pos)))
            .sum::<f64>()
            / pairs as f64
    };
    let cycle = distance / cart.speed_empty_m_s.max(0.1)
        + distance / cart.speed_loaded_m_s.max(0.1)
        + tanks * (fleet.sync_s + tank / unload_kg_s.max(1.0))
        + (tanks - 1.0) * between / cart.speed_loaded_m_s.max(0.1)
        + tanks * tank / cart.auger_kg_s.max(1.0);
    tanks * tank / cycle.max(1.0)
}

/// The first-come, first-served policies (P0 and P1): a combine calls at `call_at` of its
/// tank, and the calls are served in order by the nearest idle cart with room.
#[derive(Debug, Clone)]
pub struct NearestIdleAt {
    call_at: f64,
    name: &'static str,
    memory: Memory,
    /// Open calls and when each was first seen.
    calls: BTreeMap<DeviceId, Timestamp>,
}

impl NearestIdleAt {
    /// Call at `call_at` (0..1) of the tank.
    pub fn new(call_at: f64) -> Self {
        NearestIdleAt { call_at, name: "nearest_idle", memory: Memory::default(), calls: BTreeMap::new() }
    }

    fn plan_calls(&mut self, fleet: &FleetState, now: Timestamp) -> Plan {
        self.memory.settle(fleet, now);
        let mut plan = Plan::default();
        for combine in &fleet.combines {
            let calling = combine.activity != CombineActivity::Done
                && combine.fill_kg >= self.call_at * combine.capacity_kg
                && !combine.being_unloaded()
                || combine.activity == CombineActivity::Done && combine.fill_kg > EMPTY_KG;
            if calling && self.memory.serving(&combine.id).is_none() {
                self.calls.entry(combine.id.clone()).or_insert(now);
            } else {
                self.calls.remove(&combine.id);
            }
        }
        // Ongoing jobs stay as they are.
        for cart in &fleet.carts {
            if let Some((task, target, _)) = self.memory.jobs.get(&cart.id) {
                let assignment =
                    match (task, target.as_ref().and_then(|t| fleet.combines.iter().find(|c| &c.id == t))) {
                        (Task::Serve, Some(combine)) => {
                            let eta = add_secs(now, combine.intercept_s(cart.pos, cart.drive_s(1.0).recip()));
                            serve_assignment(cart, combine, now, eta)
                        }
                        _ => unload_assignment(cart, fleet, now),
                    };
                plan.assignments.push(assignment);
            }
        }
        // Carts with no room go to the trucks.
        for cart in &fleet.carts {
            if !self.memory.busy(&cart.id) && cart.activity == CartActivity::Idle && must_unload(cart, fleet)
            {
                let a = unload_assignment(cart, fleet, now);
                self.memory.give(&cart.id, a.task, a.target.clone(), now);
                plan.assignments.push(a);
            }
        }
        let mut calls: Vec<(Timestamp, DeviceId)> = self.calls.iter().map(|(c, t)| (*t, c.clone())).collect();
        calls.sort();
        for (_, combine_id) in calls {
            let Some(combine) = fleet.combines.iter().find(|c| c.id == combine_id) else { continue };
            let nearest = fleet
                .carts
                .iter()
                .filter(|c| {
                    !self.memory.busy(&c.id) && c.activity == CartActivity::Idle && !must_unload(c, fleet)
                })
                .min_by(|a, b| a.pos.drive_m(combine.pos).total_cmp(&b.pos.drive_m(combine.pos)));
            let Some(cart) = nearest else { break };
            let eta = add_secs(now, combine.intercept_s(cart.pos, cart.drive_s(1.0).recip()));
            let a = serve_assignment(cart, combine, now, eta);
            self.memory.give(&cart.id, Task::Serve, Some(combine.id.clone()), now);
            self.calls.remove(&combine.id);
            plan.assignments.push(a);
        }
        truck_assignments(fleet, &mut plan);
        fleet_warnings(fleet, &self.memory, now, &mut plan);
        plan
    }
}

impl Policy for NearestIdleAt {
    fn name(&self) -> &'static str {
        self.name
    }

    fn plan(&mut self, fleet: &FleetState, now: Timestamp) -> Plan {
        self.plan_calls(fleet, now)
    }
}

/// P0: call when full. The same machinery as [`NearestIdleAt`] with the call at 100 %.
#[derive(Debug, Clone)]
pub struct StopAndCall(NearestIdleAt);

impl Default for StopAndCall {
    fn default() -> Self {
        StopAndCall(NearestIdleAt { name: "stop_and_call", ..NearestIdleAt::new(0.995) })
    }
}

impl Policy for StopAndCall {
    fn name(&self) -> &'static str {
        self.0.name
    }

    fn plan(&mut self, fleet: &FleetState, now: Timestamp) -> Plan {
        self.0.plan_calls(fleet, now)
    }
}

/// How early before a tank is full the dispatcher wants the cart's grain flowing.
pub const LEAD_S: f64 = 180.0;
/// Keep the previous plan unless the new one saves more than this (in cost units: squared
/// seconds of lateness plus seconds driven).
const HYSTERESIS: f64 = 600.0;
/// ... and by more than this share of the previous plan's cost: when combines are already
/// late, costs are large and shift with every report, and a cart sent back and forth never
/// arrives.
const HYSTERESIS_SHARE: f64 = 0.75;
/// At most this many jobs are planned ahead (the most urgent combines).
const HORIZON_JOBS: usize = 6;
/// At most this many assignments of jobs to carts are tried per plan.
const MAX_COMBINATIONS: usize = 20_000;
/// A cart without room for a tank still tops a combine up when it has this share of a tank.
const TOP_UP_SHARE: f64 = 0.25;
/// Weight of lateness (squared seconds) against driving (seconds) in the cost.
const LATENESS_WEIGHT: f64 = 4.0;

/// P5: rolling-horizon assignment with hysteresis.
#[derive(Debug, Clone, Default)]
pub struct Dispatcher {
    memory: Memory,
    /// Each free cart's next combine in the last plan, told or not yet (hysteresis).
    next: HashMap<DeviceId, DeviceId>,
}

/// Where and when a cart is next free, and with what load.
#[derive(Debug, Clone, Copy)]
struct Free {
    at_s: f64,
    pos: Position,
    load_kg: f64,
}

/// One cart's planned jobs, evaluated.
#[derive(Debug, Clone, Default)]
struct Route {
    cost: f64,
    /// The first job: (combine index, unload first, departure s, arrival s).
    first: Option<(usize, bool, f64, f64)>,
}

/// A job: a combine to empty, with when it must start.
#[derive(Debug, Clone, Copy)]
struct Job {
    combine: usize,
    /// Seconds from now until grain must flow.
    need_s: f64,
    /// Seconds from now until the tank is full (the lateness reference).
    full_s: f64,
}

impl Dispatcher {
    fn free(&self, cart: &Cart, fleet: &FleetState) -> Free {
        let staging = Position::default();
        let job = self.memory.jobs.get(&cart.id);
        match (cart.activity, job) {
            (CartActivity::Receiving | CartActivity::Syncing, Some((Task::Serve, Some(target), _))) => {
                match fleet.combines.iter().find(|c| &c.id == target) {
                    Some(c) => {
                        let sync = if cart.activity == CartActivity::Syncing { fleet.sync_s } else { 0.0 };
                        let take = c.fill_kg.min(cart.capacity_kg - cart.load_kg).max(0.0);
                        let t = sync + take / c.unload_kg_s.max(1.0);
                        Free { at_s: t, pos: c.pos, load_kg: cart.load_kg + take + c.fill_rate_kg_s * t }
                    }
                    None => Free { at_s: 0.0, pos: cart.pos, load_kg: cart.load_kg },
                }
            }
            (CartActivity::ToTruck | CartActivity::Augering, _) | (_, Some((Task::UnloadInto, _, _))) => {
                let t = cart.drive_s(cart.pos.drive_m(staging)) + cart.load_kg / cart.auger_kg_s.max(1.0);
                Free { at_s: t, pos: staging, load_kg: 0.0 }
            }
            _ => Free { at_s: 0.0, pos: cart.pos, load_kg: cart.load_kg },
        }
    }

    /// Cost of `cart` doing `jobs` in order from `free`; a truck is at the staging area in
    /// `truck_ready_s` at the earliest.
    fn route(cart: &Cart, free: Free, jobs: &[Job], fleet: &FleetState, truck_ready_s: f64) -> Route {
        let staging = Position::default();
        let mut route = Route::default();
        let (mut t, mut pos, mut load) = (free.at_s, free.pos, free.load_kg);
        for (n, job) in jobs.iter().enumerate() {
            let combine = &fleet.combines[job.combine];
            // Relative to now: the combine is where it will be when the cart arrives.
            let drive = |from: Position, load: f64, leave: f64| {
                let speed = if load > 0.0 { cart.speed_loaded_m_s } else { cart.speed_empty_m_s };
                let mut d = from.drive_m(combine.pos_in(leave)) / speed.max(0.1);
                for _ in 0..6 {
                    d = from.drive_m(combine.pos_in(leave + d)) / speed.max(0.1);
                }
                d
            };
            // Go straight, or unload first: forced when the cart has no room for the tank,
            // chosen when it costs this job nothing.
            let direct = t + drive(pos, load, t);
            let at_trucks = (t + cart.drive_s(pos.drive_m(staging))).max(truck_ready_s);
            let via_truck_leave = at_trucks + load / cart.auger_kg_s.max(1.0);
            let via_truck = via_truck_leave + drive(staging, 0.0, via_truck_leave);
            let expected_take =
                (combine.fill_kg + combine.fill_rate_kg_s * job.need_s).min(combine.capacity_kg);
            let no_room =
                cart.capacity_kg - load < ROOM_FOR_TANK * expected_take.max(combine.capacity_kg * 0.5);
            let start_via = (via_truck + fleet.sync_s).max(job.need_s);
            // Without room for the tank and with the trucks far off, the cart empties what
            // it can of the tank now: the combine gets time, the cart unloads after.
            let room = cart.capacity_kg - load;
            let top_up = no_room
                && room >= TOP_UP_SHARE * combine.capacity_kg
                && start_via > job.need_s + 1e-9
                && direct + fleet.sync_s < start_via;
            let start_direct =
                if top_up { direct + fleet.sync_s } else { (direct + fleet.sync_s).max(job.need_s) };
            let unload_first = load > 0.0 && !top_up && (no_room || start_via <= job.need_s + 1e-9);
            let (arrive, start, travelled) = if unload_first {
                (via_truck, start_via, via_truck - t)
            } else {
                (direct, start_direct, direct - t)
            };
            let late = (start - job.full_s).max(0.0);
            let depart = start - fleet.sync_s - (arrive - if unload_first { via_truck_leave } else { t });
            if n == 0 {
                route.first = Some((job.combine, unload_first, depart, arrive));
            }
            route.cost += LATENESS_WEIGHT * late * late + travelled;
            if unload_first {
                load = 0.0;
            }
            let take = (combine.fill_kg + combine.fill_rate_kg_s * start)
                .min(combine.capacity_kg)
                .min(cart.capacity_kg - load);
            let unload_s = take / combine.unload_kg_s.max(1.0);
            t = start + unload_s;
            load += take;
            pos = combine.pos;
        }
        route
    }

    /// The best assignment of `jobs` to carts: (cost, per-cart route), trying every way of
    /// giving the jobs to carts (each cart doing its jobs in need order) within the limit.
    fn solve(
        carts: &[&Cart],
        frees: &[Free],
        jobs: &[Job],
        fleet: &FleetState,
        keep: &[Option<usize>],
        truck_ready_s: f64,
    ) -> Option<(f64, Vec<Route>)> {
        let (n_carts, n_jobs) = (carts.len(), jobs.len());
        if n_carts == 0 {
            return None;
        }
        let mut best: Option<(f64, Vec<Route>)> = None;
        let mut choice = vec![0usize; n_jobs];
        let mut tried = 0usize;
        loop {
            // Jobs are in need order, so each cart's share is too.
            let mut routes = Vec::with_capacity(n_carts);
            let mut cost = 0.0;
            let mut ok = true;
            for (i, cart) in carts.iter().enumerate() {
                let mine: Vec<Job> =
                    jobs.iter().zip(&choice).filter(|(_, c)| **c == i).map(|(j, _)| *j).collect();
                let route = Self::route(cart, frees[i], &mine, fleet, truck_ready_s);
                if let Some(k) = keep[i] {
                    ok &= route.first.is_some_and(|(c, ..)| c == k);
                }
                cost += route.cost;
                routes.push(route);
            }
            if ok && best.as_ref().is_none_or(|(b, _)| cost < *b) {
                best = Some((cost, routes));
            }
            tried += 1;
            // Next combination (odometer).
            let mut i = 0;
            loop {
                if i == n_jobs {
                    return best;
                }
                choice[i] += 1;
                if choice[i] < n_carts {
                    break;
                }
                choice[i] = 0;
                i += 1;
            }
            if tried >= MAX_COMBINATIONS {
                return best;
            }
        }
    }
}

impl Policy for Dispatcher {
    fn name(&self) -> &'static str {
        "dispatcher"
    }

    fn plan(&mut self, fleet: &FleetState, now: Timestamp) -> Plan {
        self.memory.settle(fleet, now);
        let mut plan = Plan::default();
        // Carts taking grain or augering finish that first. A cart on its way to the trucks
        // carries on while a truck waits there, or when it has no room left; otherwise it is
        // free again rather than waiting at the staging area while combines fill.
        let truck_waiting = truck_for(fleet).is_some();
        let committed = |cart: &Cart, memory: &Memory| {
            let unloading = cart.activity == CartActivity::ToTruck
                || memory.jobs.get(&cart.id).is_some_and(|(task, ..)| *task == Task::UnloadInto);
            matches!(cart.activity, CartActivity::Syncing | CartActivity::Receiving | CartActivity::Augering)
                || unloading && (truck_waiting || must_unload(cart, fleet))
        };
        for cart in &fleet.carts {
            if !committed(cart, &self.memory)
                && self.memory.jobs.get(&cart.id).is_some_and(|(t, ..)| *t == Task::UnloadInto)
            {
                self.memory.jobs.remove(&cart.id);
            }
        }
        let mut served = Vec::new();
        for cart in &fleet.carts {
            if !committed(cart, &self.memory) {
                continue;
            }
            match self.memory.jobs.get(&cart.id) {
                Some((Task::Serve, Some(target), _)) => {
                    if let Some(c) = fleet.combines.iter().find(|c| &c.id == target) {
                        served.push(c.id.clone());
                        plan.assignments.push(serve_assignment(cart, c, now, now));
                    }
                }
                Some((Task::UnloadInto, ..)) | None
                    if matches!(cart.activity, CartActivity::ToTruck | CartActivity::Augering)
                        || self.memory.jobs.contains_key(&cart.id) =>
                {
                    plan.assignments.push(unload_assignment(cart, fleet, now));
                }
                _ => {}
            }
        }
        // Jobs: every combine still harvesting, by predicted need; a finished combine with grain
        // left is emptied when convenient.
        let mut jobs: Vec<Job> = fleet
            .combines
            .iter()
            .enumerate()
            .filter(|(_, c)| !served.contains(&c.id) && !c.being_unloaded())
            .filter_map(|(i, c)| {
                if c.activity == CombineActivity::Done {
                    // Whenever a cart can: nothing waits on it, but the grain must go.
                    return (c.fill_kg > EMPTY_KG).then_some(Job {
                        combine: i,
                        need_s: 0.0,
                        full_s: f64::INFINITY,
                    });
                }
                let full_s = secs_between(now, c.full_at(now)?);
                Some(Job { combine: i, need_s: (full_s - LEAD_S).max(0.0), full_s })
            })
            .collect();
        jobs.sort_by(|a, b| a.need_s.total_cmp(&b.need_s));
        jobs.truncate(HORIZON_JOBS);
        let carts: Vec<&Cart> = fleet.carts.iter().filter(|c| !committed(c, &self.memory)).collect();
        let frees: Vec<Free> = carts.iter().map(|c| self.free(c, fleet)).collect();
        let none = vec![None; carts.len()];
        let previous: Vec<Option<usize>> = carts
            .iter()
            .map(|c| {
                let target = match self.memory.jobs.get(&c.id) {
                    Some((Task::Serve, Some(target), _)) => Some(target),
                    _ => self.next.get(&c.id),
                }?;
                jobs.iter().find(|j| &fleet.combines[j.combine].id == target).map(|j| j.combine)
            })
            .collect();
        let truck_ready_s = self.memory.truck_ready_s(fleet, now);
        let best = Self::solve(&carts, &frees, &jobs, fleet, &none, truck_ready_s);
        let kept = if previous.iter().any(Option::is_some) {
            Self::solve(&carts, &frees, &jobs, fleet, &previous, truck_ready_s)
        } else {
            None
        };
        let chosen = match (best, kept) {
            (Some(best), Some(kept))
                if kept.0 <= best.0 + HYSTERESIS || best.0 >= HYSTERESIS_SHARE * kept.0 =>
            {
                Some(kept)
            }
            (best, _) => best,
        };
        for (i, cart) in carts.iter().enumerate() {
            let route = chosen.as_ref().map(|(_, routes)| &routes[i]);
            let Some((combine, unload_first, depart, arrive)) = route.and_then(|r| r.first) else {
                // Nothing to do: a cart with no room (or idle with grain) empties itself.
                if cart.load_kg > EMPTY_KG && (must_unload(cart, fleet) || jobs.is_empty()) {
                    let a = unload_assignment(cart, fleet, now);
                    self.memory.give(&cart.id, a.task, a.target.clone(), now);
                    plan.assignments.push(a);
                } else {
                    self.memory.jobs.remove(&cart.id);
                }
                continue;
            };
            let target = &fleet.combines[combine];
            self.next.insert(cart.id.clone(), target.id.clone());
            if unload_first && truck_for(fleet).is_some() {
                let a = unload_assignment(cart, fleet, now);
                self.memory.give(&cart.id, a.task, a.target.clone(), now);
                plan.assignments.push(a);
            } else if depart <= 5.0
                || self
                    .memory
                    .jobs
                    .get(&cart.id)
                    .is_some_and(|(t, tg, _)| *t == Task::Serve && tg.as_ref() == Some(&target.id))
            {
                let a = serve_assignment(cart, target, now, add_secs(now, arrive));
                self.memory.give(&cart.id, Task::Serve, Some(target.id.clone()), now);
                plan.assignments.push(a);
            } else {
                // Not yet: the cart waits where it is and leaves at `depart`. Only a moving
                // cart is told to stop.
                self.memory.jobs.remove(&cart.id);
                let moving = matches!(cart.activity, CartActivity::ToCombine | CartActivity::ToTruck);
                let list = if moving { &mut plan.assignments } else { &mut plan.upcoming };
                list.push(Assignment {
                    device: cart.id.clone(),
                    task: Task::Hold,
                    target: Some(target.id.clone()),
                    eta: Some(add_secs(now, arrive)),
                    due: target.full_at(now),
                    note: format!("next: {} in {:.0} min", target.id, depart / 60.0),
                });
            }
        }
        truck_assignments(fleet, &mut plan);
        fleet_warnings(fleet, &self.memory, now, &mut plan);
        plan
    }
}

/// The assignments that differ from what each machine was last told (task or target), and
/// remember them: what is sent down as commands, and what "instructions per cart-hour" counts.
/// A `hold` names the next combine only for information: a new name alone is not a new
/// instruction (the `Fleet` call shows it), so waiting operators are not pinged.
pub fn changed(last: &mut HashMap<DeviceId, (Task, Option<DeviceId>)>, plan: &Plan) -> Vec<Assignment> {
    let mut out = Vec::new();
    for a in &plan.assignments {
        let now = (a.task, if a.task == Task::Hold { None } else { a.target.clone() });
        if last.get(&a.device) != Some(&now) {
            last.insert(a.device.clone(), now);
            out.push(a.clone());
        }
    }
    out
}
