//! The harvest world: a deterministic (seeded) discrete-time model, one step per virtual
//! second.
//!
//! The field is a rectangle north of the staging area (where trucks wait, at the origin, on
//! the road by the middle of the field's south edge). The combines work it together, side by
//! side in echelon as crews do: combine `i` of `n` takes passes `i`, `i + n`, `i + 2n`, ...,
//! each one header wide, across the field from west to east, turning on the headland at each
//! end. Its tank fills at yield × header × speed from a yield map with spatial variation.
//! Carts drive across the stubble and along the passes (east-west and north-south legs add
//! up), sync alongside a combine, and take its grain on the go, or stationary when it already
//! stopped full; they auger into trucks at the staging area.
//! Trucks leave when full or told to, haul to the bin, queue, unload and come back.
//!
//! Operators follow the instructions they receive ([`World::instruct`]) after a reaction delay;
//! without one, a machine keeps doing what it does (a truck driver leaves when full).

use super::scenario::{Scenario, cart_id, combine_id, scale_id, truck_id};
use super::track::Track;
use fieldgate::coordination::Position;
use fieldgate::coordination::track::{cart_state, combine_state, truck_state};
use fieldgate_proto::Task;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;

/// A cart this close to a combine can pull alongside.
const ALONGSIDE_M: f64 = 10.0;
/// A truck with less room than this leaves by itself.
const TRUCK_FULL_MARGIN_KG: f64 = 250.0;
/// Grain that may stay behind at the end of the day (the dispatcher leaves a few kilograms
/// in a tank or a cart rather than send a machine for them).
const LEFT_OVER_KG: f64 = 250.0;
/// Yield-map cells for the random part of the variation.
const CELL_M: f64 = 25.0;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Motion {
    Harvesting,
    Turning { left_s: f64 },
    WaitingFull,
    Done,
}

/// A combine harvesting its strip.
#[derive(Debug, Clone)]
pub struct CombineSim {
    pub pos: Position,
    pub fill_kg: f64,
    motion: Motion,
    /// The pass it is on, counted from the west edge, and how many the field has.
    pass: usize,
    passes: usize,
    /// +1 north, -1 south.
    dir: f64,
    /// When the tank became full this cycle.
    full_since: Option<f64>,
    /// The cart taking its grain, and whether the combine stopped for it.
    unloading: Option<(usize, bool)>,
    pub done_at: Option<f64>,
    /// Hybrid replay: where it is on its recorded track (seconds of track time).
    track_t: f64,
    /// Waiting full and unloading stationary.
    pub idle_s: f64,
    /// The last second's mass flow (the yield monitor).
    pub mass_flow_kg_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CartDoing {
    Idle,
    ToCombine(usize),
    Syncing(usize, f64),
    Receiving(usize),
    ToTruck(Option<usize>),
    Augering(usize),
}

/// A grain cart and its operator.
#[derive(Debug, Clone)]
pub struct CartSim {
    pub pos: Position,
    pub load_kg: f64,
    doing: CartDoing,
    pub distance_m: f64,
    pub busy_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TruckDoing {
    Staging,
    Hauling { until: f64 },
    AtBin { until: f64 },
    Returning { until: f64 },
}

/// A truck and its driver.
#[derive(Debug, Clone)]
pub struct TruckSim {
    pub load_kg: f64,
    doing: TruckDoing,
    pub busy_s: f64,
    /// Fill fraction at each departure.
    pub departures: Vec<f64>,
}

/// An instruction that reaches its operator at `at`.
#[derive(Debug, Clone)]
struct Pending {
    at: f64,
    machine: Machine,
    task: Task,
    target: Option<String>,
}

/// A machine of the world by role and index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    Combine(usize),
    Cart(usize),
    Truck(usize),
}

/// A cart starting to take a combine's grain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unload {
    pub t_s: f64,
    pub combine: usize,
    pub cart: usize,
    /// Seconds from the tank full to grain flowing; 0 when the cart was in time.
    pub late_s: f64,
}

/// One telemetry value: (device, metric, value).
pub type Sample = (String, &'static str, f64);

/// The simulated harvest.
#[derive(Debug, Clone)]
pub struct World {
    pub scenario: Scenario,
    /// Virtual seconds since the start.
    pub t_s: f64,
    pub combines: Vec<CombineSim>,
    pub carts: Vec<CartSim>,
    pub trucks: Vec<TruckSim>,
    pub harvested_kg: f64,
    pub delivered_kg: f64,
    /// Every unload that started, in order.
    pub unloads: Vec<Unload>,
    /// Tanks emptied where they fill (the no-wait bound).
    instant_receivers: bool,
    /// Hybrid replay: the combines follow these recorded tracks instead of the model.
    tracks: Option<std::sync::Arc<Vec<Track>>>,
    pending: VecDeque<Pending>,
    rng: SmallRng,
    /// Telemetry losses draw from their own stream, so the world's events do not depend on
    /// how often a policy listens.
    loss_rng: SmallRng,
    yield_seed: u64,
    phases: [f64; 2],
}

/// The middle of pass `pass`, metres east of the staging area.
fn pass_x(s: &Scenario, pass: usize) -> f64 {
    -s.field.width_m / 2.0
        + ((pass as f64 + 0.5) * s.combine.header_m).min(s.field.width_m - s.combine.header_m / 2.0)
}

/// splitmix64: a well-mixed hash of a cell for the yield map.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl World {
    /// A world at the start of the shift. With `instant_receivers`, tanks empty themselves when
    /// full (the bound no logistics can beat).
    pub fn new(scenario: Scenario, seed: u64, instant_receivers: bool) -> World {
        let mut rng = SmallRng::seed_from_u64(seed);
        let n = scenario.combine.count;
        let passes = (scenario.field.width_m / scenario.combine.header_m).ceil() as usize;
        let tank = scenario.tank_kg();
        let combines = (0..n)
            .map(|i| {
                CombineSim {
                    pos: Position::new(pass_x(&scenario, i), 0.0),
                    // Combines start the day with different amounts in their tanks.
                    fill_kg: tank * rng.random_range(0.0..0.6),
                    motion: Motion::Harvesting,
                    passes,
                    pass: i,
                    dir: 1.0,
                    full_since: None,
                    unloading: None,
                    done_at: None,
                    track_t: 0.0,
                    idle_s: 0.0,
                    mass_flow_kg_s: 0.0,
                }
            })
            .collect::<Vec<_>>();
        let carts = (0..scenario.cart.count)
            .map(|_| CartSim {
                pos: Position::default(),
                load_kg: 0.0,
                doing: CartDoing::Idle,
                distance_m: 0.0,
                busy_s: 0.0,
            })
            .collect();
        let trucks = (0..scenario.truck.count)
            .map(|_| TruckSim {
                load_kg: 0.0,
                doing: TruckDoing::Staging,
                busy_s: 0.0,
                departures: Vec::new(),
            })
            .collect();
        let harvested_kg = combines.iter().map(|c| c.fill_kg).sum();
        let phases =
            [rng.random_range(0.0..std::f64::consts::TAU), rng.random_range(0.0..std::f64::consts::TAU)];
        World {
            scenario,
            t_s: 0.0,
            combines,
            carts,
            trucks,
            harvested_kg,
            delivered_kg: 0.0,
            unloads: Vec::new(),
            instant_receivers,
            tracks: None,
            pending: VecDeque::new(),
            yield_seed: rng.random(),
            loss_rng: SmallRng::seed_from_u64(mix(seed ^ 0x5eed)),
            rng,
            phases,
        }
    }

    /// A world whose combines follow recorded `tracks` (one per combine, in order), starting
    /// where and with the tank their recording starts with; carts and trucks are simulated.
    pub fn with_tracks(
        scenario: Scenario,
        seed: u64,
        instant_receivers: bool,
        tracks: std::sync::Arc<Vec<Track>>,
    ) -> World {
        let mut world = World::new(scenario, seed, instant_receivers);
        world.harvested_kg = 0.0;
        for (c, track) in world.combines.iter_mut().zip(tracks.iter()) {
            c.fill_kg = track.start_fill_kg.clamp(0.0, world.scenario.tank_kg());
            c.pos = track.samples.first().map_or(c.pos, |s| s.pos);
            world.harvested_kg += c.fill_kg;
        }
        world.tracks = Some(tracks);
        world
    }

    /// Yield at a point, kg per m²: the mean, a smooth wave across the field, and cell noise.
    pub fn yield_kg_m2(&self, p: Position) -> f64 {
        let f = &self.scenario.field;
        let wave = (p.x_m / 400.0 * std::f64::consts::TAU + self.phases[0]).sin()
            * (p.y_m / 300.0 * std::f64::consts::TAU + self.phases[1]).sin();
        let (cx, cy) = ((p.x_m / CELL_M).floor() as i64 as u64, (p.y_m / CELL_M).floor() as i64 as u64);
        let cell = mix(self.yield_seed ^ mix(cx << 32 ^ cy));
        let noise = (cell >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        f.yield_t_ha * 0.1 * (1.0 + f.yield_variation * (0.6 * wave + 0.4 * noise)).max(0.0)
    }

    /// Whether the day is over: every strip harvested and every kilogram at the bin, or the
    /// shift ended.
    pub fn finished(&self) -> bool {
        self.t_s >= self.scenario.shift.as_secs_f64()
            || (self.combines.iter().all(|c| c.done_at.is_some())
                && self.harvested_kg - self.delivered_kg < LEFT_OVER_KG)
    }

    /// Grain anywhere: tanks, carts, trucks and the bin. Equals `harvested_kg`.
    pub fn grain_accounted_kg(&self) -> f64 {
        self.combines.iter().map(|c| c.fill_kg).sum::<f64>()
            + self.carts.iter().map(|c| c.load_kg).sum::<f64>()
            + self.trucks.iter().map(|t| t.load_kg).sum::<f64>()
            + self.delivered_kg
    }

    /// An instruction for the machine named `device`; it acts after the reaction delay.
    pub fn instruct(&mut self, device: &str, task: Task, target: Option<&str>) {
        let Some(machine) = self.machine(device) else { return };
        let at = self.t_s + self.scenario.reaction.as_secs_f64();
        self.pending.push_back(Pending { at, machine, task, target: target.map(str::to_owned) });
    }

    pub fn machine(&self, device: &str) -> Option<Machine> {
        let find = |n: usize, name: fn(usize) -> String| (1..=n).find(|i| name(*i) == device).map(|i| i - 1);
        find(self.combines.len(), combine_id)
            .map(Machine::Combine)
            .or_else(|| find(self.carts.len(), cart_id).map(Machine::Cart))
            .or_else(|| find(self.trucks.len(), truck_id).map(Machine::Truck))
    }

    /// What every machine would report now: position, load, state, and the combines' mass
    /// flow. Carts report their load through their scale device.
    pub fn telemetry(&self) -> Vec<(String, Vec<(&'static str, f64)>)> {
        let mut out = Vec::new();
        for (i, c) in self.combines.iter().enumerate() {
            let state = match (c.motion, c.unloading) {
                (Motion::Done, _) => combine_state::DONE,
                (_, Some((_, true))) => combine_state::UNLOADING_STATIONARY,
                (_, Some((_, false))) => combine_state::UNLOADING_ON_THE_GO,
                (Motion::WaitingFull, None) => combine_state::WAITING_FULL,
                (Motion::Turning { .. }, None) => combine_state::TURNING,
                (Motion::Harvesting, None) => combine_state::HARVESTING,
            };
            out.push((
                combine_id(i + 1),
                vec![
                    ("x_m", c.pos.x_m),
                    ("y_m", c.pos.y_m),
                    ("fill_kg", c.fill_kg),
                    ("mass_flow_kg_s", c.mass_flow_kg_s),
                    ("state", state),
                ],
            ));
        }
        for (i, c) in self.carts.iter().enumerate() {
            let state = match c.doing {
                CartDoing::Idle => cart_state::IDLE,
                CartDoing::ToCombine(_) => cart_state::TO_COMBINE,
                CartDoing::Syncing(..) => cart_state::SYNCING,
                CartDoing::Receiving(_) => cart_state::RECEIVING,
                CartDoing::ToTruck(_) => cart_state::TO_TRUCK,
                CartDoing::Augering(_) => cart_state::AUGERING,
            };
            out.push((cart_id(i + 1), vec![("x_m", c.pos.x_m), ("y_m", c.pos.y_m), ("state", state)]));
            out.push((scale_id(i + 1), vec![("weight_kg", c.load_kg)]));
        }
        for (i, t) in self.trucks.iter().enumerate() {
            let state = match t.doing {
                TruckDoing::Staging => truck_state::STAGING,
                TruckDoing::Hauling { .. } => truck_state::HAULING,
                TruckDoing::AtBin { .. } => truck_state::AT_BIN,
                TruckDoing::Returning { .. } => truck_state::RETURNING,
            };
            out.push((truck_id(i + 1), vec![("fill_kg", t.load_kg), ("state", state)]));
        }
        out
    }

    /// Advance one virtual second.
    pub fn step(&mut self) {
        const DT: f64 = 1.0;
        while self.pending.front().is_some_and(|p| p.at <= self.t_s) {
            if let Some(p) = self.pending.pop_front() {
                self.apply(p);
            }
        }
        for i in 0..self.combines.len() {
            self.step_combine(i, DT);
        }
        for i in 0..self.carts.len() {
            self.step_cart(i, DT);
        }
        for i in 0..self.trucks.len() {
            self.step_truck(i, DT);
        }
        self.t_s += DT;
    }

    fn apply(&mut self, p: Pending) {
        let target = p.target.as_deref().and_then(|t| self.machine(t));
        match p.machine {
            Machine::Cart(i) => {
                let cart = &mut self.carts[i];
                match (p.task, target) {
                    // Already at it: carry on.
                    (Task::Serve, Some(Machine::Combine(k))) if !matches!(cart.doing, CartDoing::Syncing(c, _) | CartDoing::Receiving(c) if c == k) =>
                    {
                        self.release(i);
                        self.carts[i].doing = CartDoing::ToCombine(k);
                    }
                    (Task::UnloadInto, t) => {
                        let truck = match t {
                            Some(Machine::Truck(j)) => Some(j),
                            _ => None,
                        };
                        if !matches!(cart.doing, CartDoing::Augering(_)) {
                            self.release(i);
                            self.carts[i].doing = CartDoing::ToTruck(truck);
                        }
                    }
                    (Task::Hold, _) => {
                        if matches!(cart.doing, CartDoing::ToCombine(_) | CartDoing::ToTruck(_)) {
                            cart.doing = CartDoing::Idle;
                        }
                    }
                    _ => {}
                }
            }
            Machine::Truck(j) => {
                if p.task == Task::Haul
                    && self.trucks[j].doing == TruckDoing::Staging
                    && self.trucks[j].load_kg > 0.0
                {
                    self.depart(j);
                }
            }
            Machine::Combine(_) => {}
        }
    }

    /// Cart `i` stops taking grain from whichever combine it was at.
    fn release(&mut self, i: usize) {
        if let CartDoing::Syncing(k, _) | CartDoing::Receiving(k) = self.carts[i].doing
            && self.combines[k].unloading.is_some_and(|(c, _)| c == i)
        {
            self.combines[k].unloading = None;
        }
    }

    fn step_combine(&mut self, i: usize, dt: f64) {
        let s = &self.scenario;
        let (tank, header, speed) = (s.tank_kg(), s.combine.header_m, s.combine.speed_kmh / 3.6);
        let (length, turn_s, stride) = (s.field.length_m, s.combine.turn_s, s.combine.count);
        let stationary = self.combines[i].unloading.is_some_and(|(_, stopped)| stopped);
        let c = &self.combines[i];
        let next_x = pass_x(&self.scenario, c.pass + stride);
        match c.motion {
            Motion::Done => {
                self.combines[i].mass_flow_kg_s = 0.0;
            }
            Motion::WaitingFull => {
                let c = &mut self.combines[i];
                c.mass_flow_kg_s = 0.0;
                c.idle_s += dt;
            }
            _ if stationary => {
                let c = &mut self.combines[i];
                c.mass_flow_kg_s = 0.0;
                c.idle_s += dt;
            }
            Motion::Turning { left_s } => {
                let c = &mut self.combines[i];
                c.mass_flow_kg_s = 0.0;
                c.motion = if left_s - dt <= 0.0 {
                    Motion::Harvesting
                } else {
                    Motion::Turning { left_s: left_s - dt }
                };
            }
            Motion::Harvesting => {
                let step_m = speed * dt;
                let recorded =
                    self.tracks.as_ref().map(|tracks| tracks.get(i).and_then(|t| t.at(c.track_t)).copied());
                let flow = match recorded {
                    Some(Some(sample)) => sample.mass_flow_kg_s,
                    Some(None) => {
                        // The recorded day of this combine is over.
                        let t_s = self.t_s;
                        let c = &mut self.combines[i];
                        c.mass_flow_kg_s = 0.0;
                        c.motion = Motion::Done;
                        c.done_at = Some(t_s);
                        return;
                    }
                    None => self.yield_kg_m2(c.pos) * header * step_m / dt,
                };
                if c.fill_kg + flow * dt > tank {
                    if self.instant_receivers {
                        let c = &mut self.combines[i];
                        self.delivered_kg += c.fill_kg;
                        c.fill_kg = 0.0;
                    } else {
                        // Top the tank up and stop.
                        let c = &mut self.combines[i];
                        self.harvested_kg += tank - c.fill_kg;
                        c.fill_kg = tank;
                        c.mass_flow_kg_s = 0.0;
                        c.motion = Motion::WaitingFull;
                        c.full_since.get_or_insert(self.t_s);
                        c.idle_s += dt;
                        return;
                    }
                }
                let t_s = self.t_s;
                let c = &mut self.combines[i];
                c.fill_kg += flow * dt;
                c.mass_flow_kg_s = flow;
                self.harvested_kg += flow * dt;
                if let Some(Some(sample)) = recorded {
                    c.pos = sample.pos;
                    c.track_t += dt;
                    return;
                }
                c.pos.y_m += c.dir * step_m;
                if c.pos.y_m >= length || c.pos.y_m <= 0.0 {
                    c.pos.y_m = c.pos.y_m.clamp(0.0, length);
                    c.pass += stride;
                    if c.pass >= c.passes {
                        c.motion = Motion::Done;
                        c.done_at = Some(t_s);
                    } else {
                        c.dir = -c.dir;
                        c.pos.x_m = next_x;
                        c.motion = Motion::Turning { left_s: turn_s };
                    }
                }
            }
        }
    }

    /// Move cart `i` toward `to`, across and then along the passes; true once alongside.
    ///
    /// A simplification: a crew working in echelon leaves stubble behind and beside it, which
    /// carts cross; the model lets them cross anywhere, at the city-block distance.
    fn drive(&mut self, i: usize, to: Position, dt: f64) -> bool {
        let s = &self.scenario;
        let cart = &mut self.carts[i];
        let speed = if cart.load_kg > 0.0 { s.cart.speed_loaded_kmh } else { s.cart.speed_empty_kmh } / 3.6;
        let mut budget = speed * dt;
        while budget > 0.0 {
            let from = cart.pos;
            // Across, then along the pass: the city-block path the dispatcher assumes too.
            let next = if (from.x_m - to.x_m).abs() < 1e-9 { to } else { Position::new(to.x_m, from.y_m) };
            let d = from.drive_m(next);
            if d <= budget {
                cart.pos = next;
                cart.distance_m += d;
                budget -= d;
                if next == to {
                    return true;
                }
            } else {
                let f = budget / d;
                cart.pos =
                    Position::new(from.x_m + (next.x_m - from.x_m) * f, from.y_m + (next.y_m - from.y_m) * f);
                cart.distance_m += budget;
                return cart.pos.drive_m(to) <= ALONGSIDE_M;
            }
        }
        cart.pos.drive_m(to) <= ALONGSIDE_M
    }

    fn staging_truck(&self, preferred: Option<usize>) -> Option<usize> {
        let room = |j: usize| {
            self.trucks[j].capacity_room(&self.scenario) > 1.0 && self.trucks[j].doing == TruckDoing::Staging
        };
        preferred.filter(|j| room(*j)).or_else(|| {
            (0..self.trucks.len())
                .filter(|j| room(*j))
                .max_by(|a, b| self.trucks[*a].load_kg.total_cmp(&self.trucks[*b].load_kg))
        })
    }

    fn step_cart(&mut self, i: usize, dt: f64) {
        let doing = self.carts[i].doing;
        if doing != CartDoing::Idle {
            self.carts[i].busy_s += dt;
        }
        let capacity = self.scenario.cart.capacity_t * 1000.0;
        match doing {
            CartDoing::Idle => {}
            CartDoing::ToCombine(k) => {
                let combine = &self.combines[k];
                if combine.motion == Motion::Done && combine.fill_kg <= 0.0 || combine.unloading.is_some() {
                    self.carts[i].doing = CartDoing::Idle;
                    return;
                }
                let target = combine.pos;
                if self.drive(i, target, dt) {
                    self.carts[i].doing = CartDoing::Syncing(k, self.scenario.cart.sync_s);
                    let stopped = matches!(self.combines[k].motion, Motion::WaitingFull | Motion::Done);
                    self.combines[k].unloading = Some((i, stopped));
                }
            }
            CartDoing::Syncing(k, left) => {
                self.carts[i].pos = self.combines[k].pos;
                if left - dt > 0.0 {
                    self.carts[i].doing = CartDoing::Syncing(k, left - dt);
                } else {
                    let late = self.combines[k].full_since.map_or(0.0, |f| self.t_s - f);
                    if self.combines[k].motion != Motion::Done {
                        self.unloads.push(Unload { t_s: self.t_s, combine: k, cart: i, late_s: late });
                    }
                    self.carts[i].doing = CartDoing::Receiving(k);
                }
            }
            CartDoing::Receiving(k) => {
                self.carts[i].pos = self.combines[k].pos;
                let rate = self.scenario.combine_unload_kg_s();
                let room = capacity - self.carts[i].load_kg;
                let flow = (rate * dt).min(self.combines[k].fill_kg).min(room).max(0.0);
                self.combines[k].fill_kg -= flow;
                self.carts[i].load_kg += flow;
                if self.combines[k].fill_kg <= 1e-6 || room - flow <= 1e-6 {
                    let c = &mut self.combines[k];
                    c.unloading = None;
                    c.full_since = None;
                    if c.motion == Motion::WaitingFull {
                        c.motion = Motion::Harvesting;
                    }
                    self.carts[i].doing = CartDoing::Idle;
                }
            }
            CartDoing::ToTruck(preferred) => {
                if self.drive(i, Position::default(), dt)
                    && let Some(j) = self.staging_truck(preferred)
                {
                    self.carts[i].doing = CartDoing::Augering(j);
                }
            }
            CartDoing::Augering(j) => {
                let rate = self.scenario.cart_auger_kg_s();
                let room = self.trucks[j].capacity_room(&self.scenario);
                let flow = (rate * dt).min(self.carts[i].load_kg).min(room).max(0.0);
                self.carts[i].load_kg -= flow;
                self.trucks[j].load_kg += flow;
                if self.carts[i].load_kg <= 1e-6 {
                    self.carts[i].load_kg = 0.0;
                    self.carts[i].doing = CartDoing::Idle;
                } else if room - flow <= 1e-6 || self.trucks[j].doing != TruckDoing::Staging {
                    self.carts[i].doing = CartDoing::ToTruck(None);
                }
            }
        }
    }

    fn depart(&mut self, j: usize) {
        let s = &self.scenario;
        let until = self.t_s + s.truck.haul_km / s.truck.speed_loaded_kmh * 3600.0;
        let truck = &mut self.trucks[j];
        truck.departures.push(truck.load_kg / (s.truck.capacity_t * 1000.0));
        truck.doing = TruckDoing::Hauling { until };
    }

    fn step_truck(&mut self, j: usize, dt: f64) {
        let s = &self.scenario;
        let t = self.t_s;
        let being_loaded = self.carts.iter().any(|c| c.doing == CartDoing::Augering(j));
        if self.trucks[j].doing != TruckDoing::Staging || being_loaded {
            self.trucks[j].busy_s += dt;
        }
        match self.trucks[j].doing {
            TruckDoing::Staging
                if self.trucks[j].capacity_room(s) <= TRUCK_FULL_MARGIN_KG && !being_loaded =>
            {
                self.depart(j);
            }
            TruckDoing::Hauling { until } if t >= until => {
                let queue_s = -(s.truck.queue_min * 60.0) * (1.0 - self.rng.random::<f64>()).ln();
                self.trucks[j].doing = TruckDoing::AtBin { until: t + queue_s + s.truck.unload_min * 60.0 };
            }
            TruckDoing::AtBin { until } if t >= until => {
                self.delivered_kg += self.trucks[j].load_kg;
                self.trucks[j].load_kg = 0.0;
                let back = t + s.truck.haul_km / s.truck.speed_empty_kmh * 3600.0;
                self.trucks[j].doing = TruckDoing::Returning { until: back };
            }
            TruckDoing::Returning { until } if t >= until => {
                self.trucks[j].doing = TruckDoing::Staging;
            }
            _ => {}
        }
    }

    /// One line per machine: what it does and carries, for traces.
    pub fn describe(&self) -> String {
        let mut out = Vec::new();
        for (i, c) in self.combines.iter().enumerate() {
            out.push(format!("{} {:?} {:.1} t", combine_id(i + 1), c.motion, c.fill_kg / 1000.0));
        }
        for (i, c) in self.carts.iter().enumerate() {
            out.push(format!("{} {:?} {:.1} t", cart_id(i + 1), c.doing, c.load_kg / 1000.0));
        }
        for (i, t) in self.trucks.iter().enumerate() {
            out.push(format!("{} {:?} {:.1} t", truck_id(i + 1), t.doing, t.load_kg / 1000.0));
        }
        out.join("; ")
    }

    /// Whether a telemetry message is lost (the scenario's loss rate, from the world's seed).
    pub fn lose(&mut self) -> bool {
        self.loss_rng.random::<f64>() < self.scenario.telemetry_loss
    }
}

impl TruckSim {
    fn capacity_room(&self, s: &Scenario) -> f64 {
        s.truck.capacity_t * 1000.0 - self.load_kg
    }
}
