//! The harvest run live against a gateway: the world advances one virtual second per
//! `1 / speed` real seconds; every machine publishes its telemetry over MQTT to
//! `fieldgate/<device>` (a JSON object: `ts`, `lat`, `lon`, `fill_kg`, `mass_flow_kg_s`,
//! `state`; a cart's scale publishes `weight_kg`), with the scenario's loss rate; operators
//! subscribe to `fieldgate/+/command` and follow the gateway's `instruct` commands after their
//! reaction delay. Rates are published per real second, so the gateway (configured with
//! [`Scenario::coordination_config`] at the same speed) sees a consistent, faster world.

use super::scenario::Scenario;
use super::score::{self, Score};
use super::world::World;
use fieldgate::coordination::track::GeoOrigin;
use fieldgate::coordination::{Position, secs_between};
use fieldgate_proto::{Task, Timestamp};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::time::Duration;

/// What a live run did.
#[derive(Debug, Clone)]
pub struct LiveSummary {
    pub score: Score,
    /// Telemetry messages published (after losses).
    pub published: u64,
    /// Instructions received from the gateway, and of those for carts.
    pub instructions: u64,
    pub cart_instructions: u64,
    /// Commands that could not be read.
    pub unreadable: u64,
    pub virtual_s: f64,
}

/// An `instruct` command from the gateway: (device, task, target).
fn parse_command(payload: &[u8]) -> Option<(String, Task, Option<String>)> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    if v["action"] != "instruct" {
        return None;
    }
    let task = match v["task"].as_str()? {
        "serve" => Task::Serve,
        "unload_into" => Task::UnloadInto,
        "haul" => Task::Haul,
        "hold" => Task::Hold,
        _ => return None,
    };
    Some((v["device"].as_str()?.to_owned(), task, v["target"].as_str().map(str::to_owned)))
}

/// Run `scenario` against the broker at `broker` for at most `limit` virtual seconds.
pub async fn run(
    scenario: Scenario,
    broker: SocketAddr,
    speed: f64,
    seed: u64,
    limit_s: f64,
) -> std::io::Result<LiveSummary> {
    let origin = GeoOrigin { lat: scenario.field.origin.lat, lon: scenario.field.origin.lon };
    let mut options =
        MqttOptions::new(format!("field-sim-harvest-{seed}"), broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    // Room for a whole telemetry round of every machine.
    let (client, mut events) = AsyncClient::new(options, 256);
    client.subscribe("fieldgate/+/command", QoS::AtLeastOnce).await.map_err(std::io::Error::other)?;
    // Commands reach the world loop through a bounded channel; the operator reads them every
    // virtual second, so 256 is far more than arrive in between.
    let (commands, mut inbox) = tokio::sync::mpsc::channel::<Result<(String, Task, Option<String>), ()>>(256);
    let (connected_tx, connected) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::spawn(async move {
        let mut connected_tx = Some(connected_tx);
        let mut backoff = Duration::from_millis(100);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = connected_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if commands.send(parse_command(&p.payload).ok_or(())).await.is_err() {
                        return;
                    }
                }
                Ok(_) => backoff = Duration::from_millis(100),
                Err(e) => {
                    // rumqttc reconnects at once unless the caller waits (bytebeamio/rumqtt #703).
                    eprintln!("field-sim: MQTT connection to {broker}: {e}; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
    connected.await.map_err(|_| std::io::Error::other("the MQTT connection ended before subscribing"))?;

    let mut world = World::new(scenario.clone(), seed, false);
    let every = scenario.telemetry_interval.as_secs_f64().max(1.0) as u64;
    // The simulator's clock: one virtual second per tick.
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / speed));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut published, mut instructions, mut cart_instructions, mut unreadable) = (0u64, 0u64, 0u64, 0u64);
    let mut tick = 0u64;
    let started = Timestamp::now();
    while !world.finished() && world.t_s < limit_s {
        ticks.tick().await;
        while let Ok(command) = inbox.try_recv() {
            match command {
                Ok((device, task, target)) => {
                    instructions += 1;
                    if matches!(world.machine(&device), Some(super::world::Machine::Cart(_))) {
                        cart_instructions += 1;
                    }
                    world.instruct(&device, task, target.as_deref());
                }
                Err(()) => unreadable += 1,
            }
        }
        if tick.is_multiple_of(every) {
            let ts = Timestamp::now().as_nanos();
            for (device, values) in world.telemetry() {
                if world.lose() {
                    continue;
                }
                let mut body = serde_json::Map::new();
                body.insert("ts".into(), ts.into());
                let (mut x, mut y) = (None, None);
                for (metric, value) in values {
                    match metric {
                        "x_m" => x = Some(value),
                        "y_m" => y = Some(value),
                        // Per real second, as the gateway lives in real time.
                        "mass_flow_kg_s" => {
                            body.insert(metric.into(), (value * speed).into());
                        }
                        _ => {
                            body.insert(metric.into(), value.into());
                        }
                    }
                }
                if let (Some(x), Some(y)) = (x, y) {
                    let (lat, lon) = origin.to_geo(Position::new(x, y));
                    body.insert("lat".into(), lat.into());
                    body.insert("lon".into(), lon.into());
                }
                let payload = serde_json::Value::Object(body).to_string();
                client
                    .publish(format!("fieldgate/{device}"), QoS::AtLeastOnce, false, payload)
                    .await
                    .map_err(std::io::Error::other)?;
                published += 1;
            }
        }
        world.step();
        tick += 1;
    }
    let _ = client.disconnect().await;
    listener.abort();
    let mut score = score::measure(&world, cart_instructions as usize);
    score.bound_ratio = score::bound_ratio(&scenario, seed, score.tonnes_per_hour);
    eprintln!(
        "field-sim: {:.0} virtual s in {:.1} real s",
        world.t_s,
        secs_between(started, Timestamp::now())
    );
    Ok(LiveSummary { score, published, instructions, cart_instructions, unreadable, virtual_s: world.t_s })
}
