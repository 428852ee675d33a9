//! `field-sim lora`: soil probes on LoRaWAN, joining over the air through simulated
//! concentrators and reporting on an interval, as a farm's would.

use field_sim::lora::{Device, Forwarder};
use fieldgate_adapters::lorawan::codec::Codec;
use fieldgate_adapters::lorawan::gwmp::Eui64;
use fieldgate_proto::Metric;
use std::f64::consts::TAU;
use std::net::SocketAddr;
use std::time::Duration;

/// How long a JoinAccept or PUSH_ACK is waited for before the device tries again.
const ANSWER: Duration = Duration::from_secs(10);

fn dev_eui(i: usize) -> Eui64 {
    Eui64((0x00f1_e1d5_0000_0000u64 + i as u64).to_be_bytes())
}

/// A device's AppKey, derived from the seed (a simulation, not a secret).
fn app_key(seed: u64, i: usize) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&seed.to_be_bytes());
    k[8..].copy_from_slice(&(i as u64 ^ 0x5eed_0000_0000_0000).to_be_bytes());
    k
}

/// The gateway's `[lorawan]` device sections for `devices` probes.
pub(crate) fn gateway_config(devices: usize, seed: u64) -> String {
    let mut out = String::new();
    for i in 0..devices {
        let key: String = app_key(seed, i).iter().map(|b| format!("{b:02x}")).collect();
        out.push_str(&format!(
            "\n[[lorawan.device]]\nid = \"soil-{:04}\"\ndev_eui = \"{}\"\napp_key = \"{key}\"\n",
            i + 1,
            dev_eui(i)
        ));
    }
    out
}

/// A probe's readings at `t` seconds: soil temperature, air humidity, soil moisture (Cayenne
/// LPP channels 1 to 3), slow daily cycles that differ per device.
fn readings(i: usize, t: f64) -> Vec<(Metric, f64)> {
    let phase = i as f64 * 0.37;
    let day = (t / 86_400.0 * TAU + phase).sin();
    let m = |name: &str| Metric::new(name).expect("a valid name");
    vec![
        (m("temperature_1"), ((14.0 + 6.0 * day) * 10.0).round() / 10.0),
        (m("humidity_2"), ((70.0 - 15.0 * day) * 2.0).round() / 2.0),
        (m("analog_input_3"), ((28.0 + 4.0 * (t / 3600.0 + phase).cos()) * 100.0).round() / 100.0),
    ]
}

/// Join every probe, then send each one's readings every `interval`, through `concentrators`
/// forwarders (each probe heard by the first and, every other frame, the second too). Runs
/// until killed; prints one JSON line when every probe has joined and one per downlink.
#[allow(clippy::print_stdout)]
pub(crate) async fn run(
    gateway: SocketAddr,
    devices: usize,
    concentrators: usize,
    interval: Duration,
    seed: u64,
) -> std::io::Result<()> {
    let mut forwarders = Vec::new();
    for c in 0..concentrators.max(1) {
        let mut f = Forwarder::connect(Eui64([0xaa, 0x55, 0x5a, 0, 0, 0, 0, c as u8 + 1]), gateway).await?;
        f.pull(ANSWER).await?;
        forwarders.push(f);
    }
    let mut probes: Vec<Device> = (0..devices)
        .map(|i| {
            let nonce = (seed as u16).wrapping_mul(7919).wrapping_add(i as u16 * 101);
            Device::otaa(
                &format!("soil-{:04}", i + 1),
                dev_eui(i),
                app_key(seed, i),
                Codec::CayenneLpp,
                nonce,
            )
        })
        .collect();
    for probe in &mut probes {
        loop {
            let request = probe.join_request();
            let (token, _) = forwarders[0].push(&request, -90, 4.0).await?;
            match forwarders[0].pull_resp(ANSWER).await {
                Ok(accept) if probe.join_accept(&accept.data).is_ok() => {
                    forwarders[0].push_ack(token, ANSWER).await?;
                    break;
                }
                _ => tokio::time::sleep(interval).await,
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({"ready": true, "joined": probes.len(), "gateway": gateway.to_string()})
    );
    let start = std::time::Instant::now();
    let mut tick = tokio::time::interval(interval);
    for round in 0u64.. {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64();
        for (i, probe) in probes.iter_mut().enumerate() {
            let frame = probe.uplink(&readings(i, t), 1, round % 10 == 9);
            let heard_by = if forwarders.len() > 1 && round % 2 == 1 { 2 } else { 1 };
            for (f, fw) in forwarders.iter_mut().take(heard_by).enumerate() {
                let (token, _) = fw.push(&frame, -85 - 10 * f as i32, 6.0 - 4.0 * f as f64).await?;
                if fw.push_ack(token, ANSWER).await.is_err() {
                    eprintln!("field-sim: no PUSH_ACK from the gateway for {}", probe.id);
                }
            }
            for fw in &mut forwarders {
                while fw.has_pull_resp() {
                    let down = fw.pull_resp(ANSWER).await?;
                    if let Ok(d) = probe.downlink(&down.data) {
                        let payload: String = d.payload.iter().map(|b| format!("{b:02x}")).collect();
                        println!(
                            "{}",
                            serde_json::json!({"downlink": probe.id, "ack": d.ack, "port": d.f_port, "payload": payload})
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
