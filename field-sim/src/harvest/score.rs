//! Scoring a dispatch policy: run the world with the gateway's own coordination code in the
//! loop (telemetry through the [`Tracker`], plans from the [`Policy`], instructions back to
//! the operators), and measure what FIELD-NOTES asks of a policy.

use super::scenario::{Scenario, cart_id, combine_id, scale_id, truck_id};
use super::track::Track;
use super::world::World;
use fieldgate::coordination::policy::changed;
use fieldgate::coordination::track::GeoOrigin;
use fieldgate::coordination::{MachineSpec, Policy, PolicyKind, Role, Tracker};
use fieldgate_proto::{DeviceId, Timestamp};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The virtual start of every scored shift (a fixed instant keeps runs repeatable).
pub const START: Timestamp = Timestamp::from_nanos(1_785_000_000_000_000_000);

/// One run's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Score {
    /// (waiting full + stationary unloading) / working span, over all combines.
    pub idle_fraction: f64,
    pub tonnes_per_hour: f64,
    /// t/h over the same world's t/h with unlimited instant receivers.
    pub bound_ratio: f64,
    pub p95_lateness_s: f64,
    pub cart_km_per_t: f64,
    pub cart_utilisation: f64,
    pub truck_utilisation: f64,
    pub truck_fill_at_departure: f64,
    pub instructions_per_cart_hour: f64,
    pub harvested_t: f64,
    pub delivered_t: f64,
    /// Hours until the last combine finished (or the shift ended).
    pub harvest_h: f64,
    /// The plan's warnings, each once.
    pub warnings: Vec<String>,
    /// Every unload's lateness, for figures over several runs.
    pub lateness_s: Vec<f64>,
}

/// The fleet of a scenario as the gateway's config would describe it.
pub fn machine_specs(s: &Scenario) -> Vec<MachineSpec> {
    let id = |name: String| DeviceId::new(&name).expect("scenario ids are valid device ids");
    let mut specs = Vec::new();
    let base = |device, role, capacity_kg, unload_kg_s| MachineSpec {
        device,
        role,
        capacity_kg,
        unload_kg_s,
        speed_empty_kmh: s.cart.speed_empty_kmh,
        speed_loaded_kmh: s.cart.speed_loaded_kmh,
        load_from: None,
    };
    for i in 1..=s.combine.count {
        specs.push(base(id(combine_id(i)), Role::Combine, s.tank_kg(), s.combine_unload_kg_s()));
    }
    for i in 1..=s.cart.count {
        specs.push(MachineSpec {
            load_from: Some((id(scale_id(i)), "weight_kg".to_owned())),
            ..base(id(cart_id(i)), Role::Cart, s.cart.capacity_t * 1000.0, s.cart_auger_kg_s())
        });
    }
    for i in 1..=s.truck.count {
        specs.push(base(id(truck_id(i)), Role::Truck, s.truck.capacity_t * 1000.0, 0.0));
    }
    specs
}

/// A tracker for the scenario's fleet, as the gateway builds one.
pub fn tracker(s: &Scenario) -> Tracker {
    Tracker::new(
        machine_specs(s),
        Some(GeoOrigin { lat: s.field.origin.lat, lon: s.field.origin.lon }),
        Duration::from_secs(60),
        s.cart.sync_s,
    )
}

/// The instant `t_s` virtual seconds into the shift.
pub fn at(t_s: f64) -> Timestamp {
    START.saturating_add(Duration::from_secs_f64(t_s))
}

/// Run `policy` over one seeded day, offline, as fast as the CPU allows.
pub fn run(scenario: &Scenario, kind: PolicyKind, seed: u64) -> Score {
    run_traced(scenario, kind, seed, &mut |_| {})
}

/// [`run`], calling `trace` with a line for every instruction sent and every late unload.
pub fn run_traced(scenario: &Scenario, kind: PolicyKind, seed: u64, trace: &mut dyn FnMut(String)) -> Score {
    run_world(scenario, kind, seed, None, trace)
}

/// [`run_traced`] with the combines following recorded `tracks` (hybrid replay): a recorded
/// day scored under any policy.
pub fn run_replayed(
    scenario: &Scenario,
    kind: PolicyKind,
    seed: u64,
    tracks: Arc<Vec<Track>>,
    trace: &mut dyn FnMut(String),
) -> Score {
    run_world(scenario, kind, seed, Some(tracks), trace)
}

fn new_world(scenario: &Scenario, seed: u64, instant: bool, tracks: Option<&Arc<Vec<Track>>>) -> World {
    match tracks {
        Some(tracks) => World::with_tracks(scenario.clone(), seed, instant, tracks.clone()),
        None => World::new(scenario.clone(), seed, instant),
    }
}

fn run_world(
    scenario: &Scenario,
    kind: PolicyKind,
    seed: u64,
    tracks: Option<Arc<Vec<Track>>>,
    trace: &mut dyn FnMut(String),
) -> Score {
    let mut world = new_world(scenario, seed, false, tracks.as_ref());
    let mut policy: Box<dyn Policy> = kind.build();
    let mut tracker = tracker(scenario);
    let mut told = HashMap::new();
    let mut instructions = 0usize;
    let mut warnings: std::collections::BTreeMap<String, (String, usize)> = Default::default();
    let mut plans = 0usize;
    let every = scenario.telemetry_interval.as_secs_f64().max(1.0) as u64;
    let mut tick = 0u64;
    while !world.finished() {
        if tick.is_multiple_of(every) {
            let now = at(world.t_s);
            for (device, values) in world.telemetry() {
                if world.lose() {
                    continue;
                }
                let device = DeviceId::new(&device).expect("valid id");
                for (metric, value) in values {
                    tracker.observe(&device, metric, now, value);
                }
            }
            let plan = policy.plan(&tracker.fleet(now), now);
            plans += 1;
            for w in plan.warnings.iter() {
                // Warnings carry numbers; keep the first of each kind, and count the plans.
                let kind = w.split(':').next().unwrap_or(w).to_owned();
                warnings.entry(kind).or_insert_with(|| (w.clone(), 0)).1 += 1;
            }
            for a in changed(&mut told, &plan) {
                trace(format!(
                    "{:>6.0} s  {} {} {} ({})",
                    world.t_s,
                    a.device,
                    a.task.as_str(),
                    a.target.as_ref().map_or("-", |t| t.as_str()),
                    a.note
                ));
                if world
                    .machine(a.device.as_str())
                    .is_some_and(|m| matches!(m, super::world::Machine::Cart(_)))
                {
                    instructions += 1;
                }
                world.instruct(a.device.as_str(), a.task, a.target.as_ref().map(|t| t.as_str()));
            }
        }
        let unloads = world.unloads.len();
        world.step();
        tick += 1;
        for u in &world.unloads[unloads..] {
            if u.late_s > 0.0 {
                trace(format!(
                    "{:>6.0} s  LATE {} s: {} emptied by {}; {}",
                    u.t_s,
                    u.late_s,
                    combine_id(u.combine + 1),
                    cart_id(u.cart + 1),
                    world.describe()
                ));
            }
        }
    }
    let mut score = measure(&world, instructions);
    let bound = bound_rate(&mut new_world(scenario, seed, true, tracks.as_ref()));
    score.bound_ratio = if bound > 0.0 { score.tonnes_per_hour / bound } else { 0.0 };
    score.warnings = warnings
        .into_values()
        .map(|(w, n)| format!("{w} (in {:.0} % of plans)", 100.0 * n as f64 / plans.max(1) as f64))
        .collect();
    score
}

/// `tonnes_per_hour` over the t/h of the same day with unlimited instant receivers.
pub fn bound_ratio(scenario: &Scenario, seed: u64, tonnes_per_hour: f64) -> f64 {
    let bound = bound_rate(&mut World::new(scenario.clone(), seed, true));
    if bound > 0.0 { tonnes_per_hour / bound } else { 0.0 }
}

/// t/h of the same day when every tank empties itself where it fills.
fn bound_rate(world: &mut World) -> f64 {
    while !world.combines.iter().all(|c| c.done_at.is_some()) && !world.finished() {
        world.step();
    }
    measure(world, 0).tonnes_per_hour
}

/// The figures of a finished (or stopped) world; `instructions`: those sent to carts.
pub fn measure(world: &World, instructions: usize) -> Score {
    let end = world.t_s;
    let spans: Vec<f64> = world.combines.iter().map(|c| c.done_at.unwrap_or(end)).collect();
    let harvest_s = spans.iter().copied().fold(0.0, f64::max).max(1.0);
    let idle: f64 = world.combines.iter().map(|c| c.idle_s).sum();
    let mut lateness: Vec<f64> = world.unloads.iter().map(|u| u.late_s).collect();
    lateness.sort_by(f64::total_cmp);
    let p95 = percentile(&lateness, 0.95);
    let carts = world.carts.len() as f64;
    let trucks = world.trucks.len() as f64;
    let departures: Vec<f64> = world.trucks.iter().flat_map(|t| t.departures.iter().copied()).collect();
    let harvested_t = world.harvested_kg / 1000.0;
    Score {
        idle_fraction: idle / spans.iter().sum::<f64>().max(1.0),
        tonnes_per_hour: harvested_t / (harvest_s / 3600.0),
        bound_ratio: 0.0,
        p95_lateness_s: p95,
        cart_km_per_t: world.carts.iter().map(|c| c.distance_m).sum::<f64>() / 1000.0 / harvested_t.max(1e-9),
        cart_utilisation: world.carts.iter().map(|c| c.busy_s).sum::<f64>() / (carts * end.max(1.0)),
        truck_utilisation: world.trucks.iter().map(|t| t.busy_s).sum::<f64>() / (trucks * end.max(1.0)),
        truck_fill_at_departure: if departures.is_empty() {
            0.0
        } else {
            departures.iter().sum::<f64>() / departures.len() as f64
        },
        instructions_per_cart_hour: instructions as f64 / (carts * end.max(1.0) / 3600.0),
        harvested_t,
        delivered_t: world.delivered_kg / 1000.0,
        harvest_h: harvest_s / 3600.0,
        warnings: Vec::new(),
        lateness_s: lateness,
    }
}

/// The `q` quantile of sorted `values` (nearest rank); 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() { 0.0 } else { sorted[((sorted.len() - 1) as f64 * q).round() as usize] }
}

/// Mean and standard deviation.
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The scores of several seeds as a table, one row per figure: mean ± standard deviation.
pub fn table(title: &str, scores: &[Score]) -> String {
    type Row = (&'static str, fn(&Score) -> f64, &'static str);
    let rows: [Row; 11] = [
        ("combine logistics idle", |s| s.idle_fraction * 100.0, "%"),
        ("tonnes/h", |s| s.tonnes_per_hour, "t/h"),
        ("ratio to the no-wait bound", |s| s.bound_ratio * 100.0, "%"),
        ("p95 unload lateness", |s| s.p95_lateness_s, "s"),
        ("cart km per tonne", |s| s.cart_km_per_t, "km/t"),
        ("cart utilisation", |s| s.cart_utilisation * 100.0, "%"),
        ("truck utilisation", |s| s.truck_utilisation * 100.0, "%"),
        ("truck fill at departure", |s| s.truck_fill_at_departure * 100.0, "%"),
        ("instructions per cart-hour", |s| s.instructions_per_cart_hour, ""),
        ("harvested", |s| s.harvested_t, "t"),
        ("harvest time", |s| s.harvest_h, "h"),
    ];
    let mut out = format!("{title} ({} seeds)\n", scores.len());
    for (name, f, unit) in rows {
        let values: Vec<f64> = scores.iter().map(f).collect();
        let (mean, sd) = mean_sd(&values);
        out.push_str(&format!("  {name:<28} {mean:>9.2} ± {sd:<7.2} {unit}\n"));
    }
    let mut all: Vec<f64> = scores.iter().flat_map(|s| s.lateness_s.iter().copied()).collect();
    all.sort_by(f64::total_cmp);
    out.push_str(&format!(
        "  {:<28} {:>9.2}           s (all {} unloads of all seeds together)\n",
        "p95 unload lateness, pooled",
        percentile(&all, 0.95),
        all.len()
    ));
    // The first seed's warnings, as an example of what the gateway tells its user.
    for w in scores.first().map(|s| s.warnings.as_slice()).unwrap_or_default() {
        out.push_str(&format!("  warning (first seed): {w}\n"));
    }
    out
}
