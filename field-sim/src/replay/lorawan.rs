//! LoRaWAN devices for a replay: each recorded device of the target gateway's config becomes
//! a simulated end device (OTAA devices join with their AppKey, ABP devices use their session
//! keys) behind one simulated packet forwarder, and sends each recorded set of values as an
//! uplink encoded by its profile, with fresh frame counters.
//!
//! The link metrics the gateway adds to every uplink (`lora_rssi_dbm`, `lora_snr_db`,
//! `lora_receivers`) are not payload: they are not sent, and the new gateway measures its own.
//! Each uplink is sent as a GPS concentrator reports it, heard at its recorded time, which the
//! gateway stores (`[lorawan] concentrator_time`): the replayed windows are the recorded ones.

use crate::lora::{Device, Forwarder};
use fieldgate::config::LorawanConfig;
use fieldgate_adapters::lorawan::codec::Codec;
use fieldgate_adapters::lorawan::gwmp::Eui64;
use fieldgate_adapters::lorawan::session::Activation;
use fieldgate_proto::{Metric, Timestamp};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// How long a JoinAccept or PUSH_ACK is waited for.
const ANSWER: Duration = Duration::from_secs(10);

/// Whether a recorded metric is one the gateway adds from the radio, not the device's.
pub fn is_link_metric(metric: &str) -> bool {
    metric.starts_with("lora_")
}

/// Why the target gateway would store replayed uplinks at their arrival time rather than
/// their recorded time (`oldest` is the first uplink's), if it would.
pub fn time_warning(oldest: Timestamp, now: Timestamp, config: &LorawanConfig) -> Option<String> {
    let Some(max_age) = config.adapter.concentrator_time_max_age else {
        return Some(
            "the gateway config has `[lorawan] concentrator_time = false`: replayed uplinks are stored at the \
             time they arrive, not when they were recorded"
                .to_owned(),
        );
    };
    let age = now.duration_since(oldest);
    (age > max_age).then(|| {
        format!(
            "the recording's LoRaWAN uplinks are up to {} old, more than the gateway's `[lorawan] \
             concentrator_time_max_age` ({}): it stores those at the time they arrive; raise it to keep \
             the recorded times",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(max_age),
        )
    })
}

/// The replayed LoRaWAN devices, joined, behind one forwarder.
#[derive(Debug)]
pub struct Devices {
    forwarder: Forwarder,
    devices: HashMap<String, Device>,
}

impl Devices {
    pub fn contains(&self, device: &str) -> bool {
        self.devices.contains_key(device)
    }

    /// Bring up the devices of `config` that `wanted` names, through a forwarder sending to
    /// `server`; `None` when there are none.
    pub async fn join(
        config: &LorawanConfig,
        server: SocketAddr,
        wanted: &dyn Fn(&str) -> bool,
    ) -> std::io::Result<Option<Devices>> {
        let mine: Vec<_> = config.devices.iter().filter(|d| wanted(d.device.as_str())).collect();
        if mine.is_empty() {
            return Ok(None);
        }
        // A concentrator the network server lets in.
        let eui = config
            .adapter
            .gateways
            .as_ref()
            .and_then(|g| g.iter().min_by_key(|e| e.0).copied())
            .unwrap_or(Eui64([0xaa, 0x55, 0x5a, 0, 0, 0, 0x5e, 0x91]));
        let mut forwarder = Forwarder::connect(eui, server).await?;
        forwarder.pull(ANSWER).await?;
        let mut devices = HashMap::new();
        for (i, d) in mine.into_iter().enumerate() {
            let codec: Codec = (*d.codec).clone();
            let mut device = match &d.activation {
                Activation::Abp { dev_addr, keys } => {
                    Device::abp(d.device.as_str(), d.dev_eui, *dev_addr, keys.clone(), codec)
                }
                Activation::Otaa { join_eui, app_key } => {
                    // A fresh DevNonce per run: the network server refuses one it has seen.
                    let nonce = ((Timestamp::now().as_nanos() >> 16) as u16).wrapping_add(i as u16 * 977);
                    let mut device = Device::otaa(d.device.as_str(), d.dev_eui, *app_key, codec, nonce);
                    if let Some(join_eui) = join_eui {
                        device.join_eui = *join_eui;
                    }
                    forwarder
                        .join(&mut device, 3, ANSWER)
                        .await
                        .map_err(|e| std::io::Error::new(e.kind(), format!("{e} at {server}")))?;
                    device
                }
            };
            device.fcnt_up = 0;
            devices.insert(d.device.to_string(), device);
        }
        Ok(Some(Devices { forwarder, devices }))
    }

    /// Send `values` as one uplink of `device`, heard (by the concentrator's GPS clock) at
    /// `at`; false when its codec cannot carry them.
    pub async fn send(
        &mut self,
        device: &str,
        values: &[(Metric, f64)],
        at: Timestamp,
    ) -> std::io::Result<bool> {
        let Some(d) = self.devices.get_mut(device) else { return Ok(false) };
        let port = match &d.codec {
            Codec::Layout(layout) => layout.port.unwrap_or(1),
            Codec::CayenneLpp => 1,
        };
        if d.codec.encode(values).is_err() {
            return Ok(false);
        }
        let frame = d.uplink(values, port, false);
        // Downlinks (MAC answers, queued setpoints) are dropped: a replay acts on none.
        self.forwarder.push_unwaited(&frame, -90, 5.0, Some(at), ANSWER).await?;
        Ok(true)
    }

    /// Wait for the acknowledgements still due; returns how many never came.
    pub async fn finish(mut self) -> u64 {
        self.forwarder.unacknowledged(ANSWER).await
    }
}
