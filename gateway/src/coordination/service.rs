//! The gateway's coordination task: every `interval` it folds the machines' latest readings
//! from the live state into the [`Tracker`], asks the policy for a plan, sends the
//! assignments that changed down as `instruct` commands (through the same command dispatcher
//! as the gRPC `CommandService`: MQTT for machines, a LoRa downlink for LoRa devices), and
//! publishes the plan for the `Fleet` call and `fieldgate query fleet`.
//!
//! A command that fails (the machine is not subscribed, the broker is away) is logged,
//! counted in `fieldgate_commands_total{outcome}` by the dispatcher, and sent again at the next
//! plan: what the machine was last told is only remembered once it was accepted.

use super::policy::changed;
use super::track::GeoOrigin;
use super::{FleetState, MachineSpec, Plan, PolicyKind, Tracker};
use crate::commands::Dispatcher as Commands;
use crate::live::LiveState;
use fieldgate_proto::v1;
use fieldgate_proto::{Action, Command, CommandId, DeviceId, Instruction, Task, Timestamp};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `[coordination]`, validated.
#[derive(Debug, Clone)]
pub struct CoordinationSettings {
    pub policy: PolicyKind,
    /// How often the plan is made.
    pub interval: Duration,
    /// A machine silent for longer is left out of the plan.
    pub stale_after: Duration,
    /// How long a cart needs alongside a combine before grain flows.
    pub sync: Duration,
    /// The staging area, when machines report `lat`/`lon`.
    pub origin: Option<GeoOrigin>,
    /// Harvest seconds per real second: 1 on a farm; N for a simulated harvest run N times
    /// faster than real time (`field-sim run --speed N`), so the dispatcher's own durations
    /// (its lead time, the operators' grace, the trucks' round trips) keep their meaning.
    pub time_scale: f64,
    pub machines: Vec<MachineSpec>,
}

/// The latest plan, for the query service.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    inner: Arc<RwLock<Option<v1::FleetResponse>>>,
}

impl FleetView {
    /// The latest plan; `None` before the first.
    pub fn get(&self) -> Option<v1::FleetResponse> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set(&self, fleet: v1::FleetResponse) {
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = Some(fleet);
    }
}

/// Real time to the dispatcher's time and back: the identity unless `time_scale` is not 1.
#[derive(Debug, Clone, Copy)]
struct Clock {
    epoch: Timestamp,
    scale: f64,
}

impl Clock {
    fn to_plan(self, t: Timestamp) -> Timestamp {
        if self.scale == 1.0 {
            return t;
        }
        super::add_secs_signed(self.epoch, super::secs_between(self.epoch, t) * self.scale)
    }

    fn to_real(self, t: Timestamp) -> Timestamp {
        if self.scale == 1.0 {
            return t;
        }
        super::add_secs_signed(self.epoch, super::secs_between(self.epoch, t) / self.scale)
    }
}

/// The plan as the `Fleet` call answers it (times as the dispatcher sees them).
pub fn to_proto(fleet: &FleetState, plan: &Plan, now: Timestamp) -> v1::FleetResponse {
    let mut machines = Vec::new();
    let machine =
        |id: &DeviceId, role: v1::Role, load_kg: f64, capacity_kg: f64, state: String, seen: Timestamp| {
            v1::Machine {
                device: id.to_string(),
                role: role as i32,
                fill_fraction: load_kg / capacity_kg.max(1.0),
                capacity_kg,
                state,
                full_at: None,
                last_seen: Some(seen.into()),
            }
        };
    for c in &fleet.combines {
        let state = snake(&format!("{:?}", c.activity));
        let full_at = c.full_at(now).map(Into::into);
        machines.push(v1::Machine {
            full_at,
            ..machine(&c.id, v1::Role::Combine, c.fill_kg, c.capacity_kg, state, c.seen)
        });
    }
    for c in &fleet.carts {
        let state = snake(&format!("{:?}", c.activity));
        machines.push(machine(&c.id, v1::Role::Cart, c.load_kg, c.capacity_kg, state, c.seen));
    }
    for t in &fleet.trucks {
        let state = snake(&format!("{:?}", t.activity));
        machines.push(machine(&t.id, v1::Role::Truck, t.load_kg, t.capacity_kg, state, t.seen));
    }
    let assignments = plan
        .assignments
        .iter()
        .chain(&plan.upcoming)
        .map(|a| v1::Assignment {
            device: a.device.to_string(),
            instruction: Some(v1::Instruction {
                task: v1::Task::from(a.task) as i32,
                target: a.target.as_ref().map(ToString::to_string).unwrap_or_default(),
                due_ns: a.due.map_or(0, Timestamp::as_nanos),
                note: a.note.clone(),
            }),
            eta: a.eta.map(Into::into),
        })
        .collect();
    v1::FleetResponse { as_of: Some(now.into()), machines, assignments, warnings: plan.warnings.clone() }
}

/// `UnloadingOnTheGo` as `unloading_on_the_go`.
fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

/// The times of a plan made on a scaled clock, back to real time.
fn real_times(fleet: &mut v1::FleetResponse, clock: Clock) {
    let real = |t: &mut Option<prost_types::Timestamp>| {
        if let Some(ts) = t.take() {
            let plan = Timestamp::from_nanos(ts.seconds * 1_000_000_000 + i64::from(ts.nanos));
            *t = Some(clock.to_real(plan).into());
        }
    };
    real(&mut fleet.as_of);
    for m in &mut fleet.machines {
        real(&mut m.full_at);
        real(&mut m.last_seen);
    }
    for a in &mut fleet.assignments {
        real(&mut a.eta);
        if let Some(i) = &mut a.instruction
            && i.due_ns != 0
        {
            i.due_ns = clock.to_real(Timestamp::from_nanos(i.due_ns)).as_nanos();
        }
    }
}

/// Run coordination until `shutdown`.
pub async fn run(
    settings: CoordinationSettings,
    live: LiveState,
    commands: Arc<Commands>,
    view: FleetView,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let mut tracker = Tracker::new(
        settings.machines.clone(),
        settings.origin,
        settings.stale_after,
        settings.sync.as_secs_f64(),
    );
    let mut policy = settings.policy.build();
    let mut told: HashMap<DeviceId, (Task, Option<DeviceId>)> = HashMap::new();
    // Ids unique across restarts: the start time, then a counter.
    let epoch = Timestamp::now().as_nanos();
    let clock = Clock { epoch: Timestamp::from_nanos(epoch), scale: settings.time_scale };
    let mut sent = 0u64;
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut devices: Vec<DeviceId> = settings.machines.iter().map(|m| m.device.clone()).collect();
    devices.extend(settings.machines.iter().filter_map(|m| m.load_from.as_ref().map(|(d, _)| d.clone())));
    tracing::info!(
        policy = policy.name(),
        machines = settings.machines.len(),
        "harvest coordination started"
    );
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        for id in &devices {
            if let Some(device) = live.device(id) {
                for (metric, latest) in &device.latest {
                    tracker.observe(id, metric.as_str(), clock.to_plan(latest.ts), latest.value);
                }
            }
        }
        let now = clock.to_plan(Timestamp::now());
        let fleet = tracker.fleet(now);
        let plan = policy.plan(&fleet, now);
        let mut fleet_view = to_proto(&fleet, &plan, now);
        if clock.scale != 1.0 {
            real_times(&mut fleet_view, clock);
        }
        view.set(fleet_view);
        let mut sends = tokio::task::JoinSet::new();
        for a in changed(&mut told, &plan) {
            sent += 1;
            let command = Command {
                id: CommandId::new(format!("dispatch-{epoch}-{sent}")),
                device: a.device.clone(),
                created: clock.to_real(now),
                action: Action::Instruct(Instruction {
                    task: a.task,
                    target: a.target,
                    due: a.due.map(|d| clock.to_real(d)),
                    note: a.note,
                }),
            };
            let commands = commands.clone();
            sends.spawn(async move { (command.device.clone(), commands.send(command).await) });
        }
        while let Some(done) = sends.join_next().await {
            let Ok((device, result)) = done else { continue };
            if let Err(e) = result {
                tracing::warn!(%device, error = %e, "instruction not delivered; sent again at the next plan");
                told.remove(&device);
            }
        }
    }
}
