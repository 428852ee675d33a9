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

/// The plan as the `Fleet` call answers it.
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
                    tracker.observe(id, metric.as_str(), latest.ts, latest.value);
                }
            }
        }
        let now = Timestamp::now();
        let fleet = tracker.fleet(now);
        let plan = policy.plan(&fleet, now);
        view.set(to_proto(&fleet, &plan, now));
        let mut sends = tokio::task::JoinSet::new();
        for a in changed(&mut told, &plan) {
            sent += 1;
            let command = Command {
                id: CommandId::new(format!("dispatch-{epoch}-{sent}")),
                device: a.device.clone(),
                created: now,
                action: Action::Instruct(Instruction {
                    task: a.task,
                    target: a.target,
                    due: a.due,
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
