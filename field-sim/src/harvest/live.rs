//! The harvest run live against a gateway: the world advances one virtual second per
//! `1 / speed` real seconds; every machine publishes its telemetry over MQTT to
//! `fieldgate/<device>` (a JSON object: `ts`, `lat`, `lon`, `fill_kg`, `mass_flow_kg_s`,
//! `state`; a cart's scale publishes `weight_kg`), with the scenario's loss rate; operators
//! subscribe to `fieldgate/+/command` and follow the gateway's `instruct` commands after their
//! reaction delay. Timestamps are real (the time of sending) and rates per harvest second; the
//! gateway, configured with [`Scenario::coordination_config`] at the same speed, runs its
//! dispatcher on a clock `speed` times faster than real time (`[coordination] time_scale`).
//!
//! With a LoRaWAN address, the carts' load cells are LoRaWAN devices instead: they join the
//! gateway's network server over the air through a simulated packet forwarder, and send
//! `weight_kg` in a 3-byte layout on port 2 ([`lorawan_config`] is the gateway's side).

use super::scenario::Scenario;
use super::score::{self, Score};
use super::world::World;
use crate::lora::{Device, Forwarder};
use fieldgate::coordination::track::GeoOrigin;
use fieldgate::coordination::{Position, secs_between};
use fieldgate_adapters::lorawan::codec::{Codec, Field, FieldType, Layout};
use fieldgate_adapters::lorawan::gwmp::Eui64;
use fieldgate_proto::{Metric, Task, Timestamp};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::time::Duration;

/// The load cells' uplink port and their layout: `weight_kg`, unsigned 24-bit big-endian.
const SCALE_PORT: u8 = 2;
/// How long a JoinAccept or PUSH_ACK is waited for.
const LORA_ANSWER: Duration = Duration::from_secs(10);

fn scale_eui(cart: usize) -> Eui64 {
    Eui64((0x00ca_57ca_1e00_0000u64 + cart as u64).to_be_bytes())
}

/// A load cell's AppKey, derived from the cart's number (a simulation, not a secret).
fn scale_key(cart: usize) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&0xca57_5ca1_e000_0000u64.to_be_bytes());
    k[8..].copy_from_slice(&(cart as u64).to_be_bytes());
    k
}

fn scale_codec() -> Codec {
    Codec::Layout(Layout {
        port: Some(SCALE_PORT),
        fields: vec![Field {
            metric: Metric::new("weight_kg").expect("a valid metric"),
            at: 0,
            ty: FieldType::U24,
            big_endian: true,
            scale: 1.0,
            offset: 0.0,
        }],
    })
}

/// The gateway's `[lorawan]` section for the carts' load cells, listening on `listen`.
pub fn lorawan_config(scenario: &Scenario, listen: SocketAddr) -> String {
    let mut out = format!(
        "\n[lorawan]\nlisten = \"{listen}\"\n\n[[lorawan.profile]]\nname = \"cart-scale\"\ncodec = \"layout\"\nport = {SCALE_PORT}\n\n[[lorawan.profile.field]]\nmetric = \"weight_kg\"\nbyte = 0\ntype = \"u24\"\n"
    );
    for i in 1..=scenario.cart.count {
        let key: String = scale_key(i).iter().map(|b| format!("{b:02x}")).collect();
        out.push_str(&format!(
            "\n[[lorawan.device]]\nid = \"{}\"\ndev_eui = \"{}\"\napp_key = \"{key}\"\nprofile = \"cart-scale\"\n",
            super::scenario::scale_id(i),
            scale_eui(i)
        ));
    }
    out
}

/// The carts' load cells on LoRaWAN, joined, behind one packet forwarder.
struct Scales {
    forwarder: Forwarder,
    devices: Vec<Device>,
}

impl Scales {
    async fn join(gateway: SocketAddr, carts: usize) -> std::io::Result<Scales> {
        let mut forwarder =
            Forwarder::connect(Eui64([0xaa, 0x55, 0x5a, 0, 0, 0, 0xca, 0x57]), gateway).await?;
        forwarder.pull(LORA_ANSWER).await?;
        let mut devices = Vec::new();
        for i in 1..=carts {
            // A fresh DevNonce per run: the network server refuses one it has seen.
            let nonce = ((Timestamp::now().as_nanos() >> 16) as u16).wrapping_add(i as u16 * 4099);
            let mut device =
                Device::otaa(&super::scenario::scale_id(i), scale_eui(i), scale_key(i), scale_codec(), nonce);
            forwarder
                .join(&mut device, 4, LORA_ANSWER)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("{e} at {gateway}")))?;
            devices.push(device);
        }
        Ok(Scales { forwarder, devices })
    }

    async fn send(&mut self, cart: usize, weight_kg: f64) -> std::io::Result<()> {
        let metric = Metric::new("weight_kg").expect("a valid metric");
        let frame = self.devices[cart].uplink(
            &[(metric, weight_kg.round().clamp(0.0, 16_777_215.0))],
            SCALE_PORT,
            false,
        );
        // The world keeps its schedule: the PUSH_ACK (after the gateway's dedup window) is
        // not waited for; downlinks are dropped, a load cell acts on none.
        self.forwarder.push_unwaited(&frame, -85, 6.0, None, LORA_ANSWER).await
    }

    /// Wait for the acknowledgements still due; returns how many never came.
    async fn finish(mut self) -> u64 {
        self.forwarder.unacknowledged(LORA_ANSWER).await
    }
}

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
    /// Load-cell uplinks sent over LoRaWAN, and of those not acknowledged.
    pub lora_uplinks: u64,
    pub lora_unacknowledged: u64,
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

/// Run `scenario` against the broker at `broker` (and the load cells against the LoRaWAN
/// network server at `lorawan`, when given) for at most `limit_s` virtual seconds, calling
/// `observe` after every virtual second (field-sim's Modbus grain bin follows the deliveries).
pub async fn run(
    scenario: Scenario,
    broker: SocketAddr,
    lorawan: Option<SocketAddr>,
    speed: f64,
    seed: u64,
    limit_s: f64,
    observe: &mut (dyn FnMut(&World) + Send),
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
    // Aborted when the run ends or is dropped (the demo drops it at Ctrl-C).
    let listener = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
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
    }));
    connected.await.map_err(|_| std::io::Error::other("the MQTT connection ended before subscribing"))?;

    let mut scales = match lorawan {
        Some(addr) => Some(Scales::join(addr, scenario.cart.count).await?),
        None => None,
    };
    let mut lora_uplinks = 0u64;
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
                if let (Some(scales), Some(cart)) = (scales.as_mut(), scale_index(&world, &device)) {
                    let weight = values.iter().find(|(m, _)| *m == "weight_kg").map_or(0.0, |(_, v)| *v);
                    scales.send(cart, weight).await?;
                    lora_uplinks += 1;
                    continue;
                }
                let mut body = serde_json::Map::new();
                body.insert("ts".into(), ts.into());
                let (mut x, mut y) = (None, None);
                for (metric, value) in values {
                    match metric {
                        "x_m" => x = Some(value),
                        "y_m" => y = Some(value),
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
        observe(&world);
        tick += 1;
    }
    let _ = client.disconnect().await;
    drop(listener);
    let mut score = score::measure(&world, cart_instructions as usize);
    score.bound_ratio = score::bound_ratio(&scenario, seed, score.tonnes_per_hour);
    eprintln!(
        "field-sim: {:.0} virtual s in {:.1} real s",
        world.t_s,
        secs_between(started, Timestamp::now())
    );
    Ok(LiveSummary {
        score,
        published,
        instructions,
        cart_instructions,
        unreadable,
        lora_uplinks,
        lora_unacknowledged: match scales {
            Some(scales) => scales.finish().await,
            None => 0,
        },
        virtual_s: world.t_s,
    })
}

/// The cart whose load cell `device` is.
fn scale_index(world: &World, device: &str) -> Option<usize> {
    (1..=world.carts.len()).find(|i| super::scenario::scale_id(*i) == device).map(|i| i - 1)
}
