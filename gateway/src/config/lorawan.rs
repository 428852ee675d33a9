//! `[lorawan]`: the network server for the site's LoRaWAN devices, its device profiles
//! (payload codecs) and devices.

use super::secret::SecretSpec;
use super::units::HumanDuration;
use super::{Validator, raw::yes};
use fieldgate_adapters::lorawan::adapter::AdapterSettings;
use fieldgate_adapters::lorawan::codec::{Codec, Field, FieldType, Layout};
use fieldgate_adapters::lorawan::gwmp::Eui64;
use fieldgate_adapters::lorawan::mac::SessionKeys;
use fieldgate_adapters::lorawan::region::Region;
use fieldgate_adapters::lorawan::server::NetworkSettings;
use fieldgate_adapters::lorawan::session::{Activation, DeviceConfig, unhex};
use fieldgate_proto::{DeviceId, Metric};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The validated `[lorawan]` section.
#[derive(Debug, Clone)]
pub struct LorawanConfig {
    pub listen: SocketAddr,
    pub network: NetworkSettings,
    pub adapter: AdapterSettings,
    pub devices: Vec<DeviceConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLorawan {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_region")]
    region: String,
    #[serde(default = "default_net_id")]
    net_id: String,
    /// Concentrator EUIs allowed in; required beyond loopback.
    gateways: Option<Vec<String>>,
    #[serde(default = "default_dedup")]
    dedup_window: HumanDuration,
    #[serde(default = "default_lead")]
    downlink_lead: HumanDuration,
    #[serde(default = "yes")]
    concentrator_time: bool,
    #[serde(default = "default_concentrator_age")]
    concentrator_time_max_age: HumanDuration,
    #[serde(default, rename = "profile")]
    profiles: Vec<RawProfile>,
    #[serde(default, rename = "device")]
    devices: Vec<RawDevice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    codec: String,
    port: Option<u8>,
    #[serde(default = "default_command_port")]
    command_port: u8,
    #[serde(default, rename = "field")]
    fields: Vec<RawField>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    metric: String,
    /// Position in the payload, in bytes from 0.
    byte: usize,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default = "default_order")]
    order: String,
    #[serde(default = "one")]
    scale: f64,
    #[serde(default)]
    offset: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    id: String,
    dev_eui: String,
    profile: Option<String>,
    join_eui: Option<String>,
    app_key: Option<SecretSpec>,
    dev_addr: Option<String>,
    nwk_s_key: Option<SecretSpec>,
    app_s_key: Option<SecretSpec>,
}

fn default_listen() -> String {
    "127.0.0.1:1700".to_owned()
}
fn default_region() -> String {
    "EU868".to_owned()
}
fn default_net_id() -> String {
    "000000".to_owned()
}
fn default_dedup() -> HumanDuration {
    HumanDuration(Duration::from_millis(200))
}
fn default_lead() -> HumanDuration {
    HumanDuration(Duration::from_millis(100))
}
fn default_concentrator_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
fn default_command_port() -> u8 {
    10
}
fn default_order() -> String {
    "big".to_owned()
}
fn one() -> f64 {
    1.0
}

/// The built-in profile a device without `profile` gets.
const CAYENNE: &str = "cayenne_lpp";

fn eui(s: &str) -> Option<Eui64> {
    unhex(s).and_then(|b| b.try_into().ok()).map(Eui64)
}

impl Validator {
    pub(crate) fn lorawan(
        &mut self,
        raw: Option<RawLorawan>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<LorawanConfig> {
        let raw = raw?;
        let listen = self.address("lorawan.listen", &raw.listen);
        let region = Region::parse(&raw.region).unwrap_or_else(|| {
            self.problem("lorawan.region", format!("`{}`: use \"EU868\" or \"US915\"", raw.region));
            Region::Eu868
        });
        let net_id = match unhex(&raw.net_id) {
            Some(b) if b.len() == 3 => u32::from_be_bytes([0, b[0], b[1], b[2]]),
            _ => {
                self.problem("lorawan.net_id", format!("`{}` is not a NetID of 6 hex digits", raw.net_id));
                0
            }
        };
        let gateways = raw.gateways.map(|list| {
            list.iter()
                .enumerate()
                .filter_map(|(i, g)| {
                    eui(g).or_else(|| {
                        self.problem(
                            &format!("lorawan.gateways[{i}]"),
                            format!("`{g}` is not an EUI of 16 hex digits"),
                        );
                        None
                    })
                })
                .collect::<HashSet<_>>()
        });
        if gateways.is_none() && !listen.ip().is_loopback() {
            self.problem(
                "lorawan.listen",
                "the packet forwarder protocol has no authentication: beyond loopback, list the concentrators \
                 allowed in with `gateways = [\"<EUI>\", ...]`",
            );
        }
        let dedup_window = self.duration(
            "lorawan.dedup_window",
            raw.dedup_window,
            Duration::ZERO,
            Duration::from_millis(800),
        );
        let downlink_lead = self.duration(
            "lorawan.downlink_lead",
            raw.downlink_lead,
            Duration::ZERO,
            Duration::from_millis(900),
        );
        let max_age = self.duration(
            "lorawan.concentrator_time_max_age",
            raw.concentrator_time_max_age,
            Duration::from_secs(1),
            Duration::from_secs(10 * 365 * 86_400),
        );
        let concentrator_time_max_age = raw.concentrator_time.then_some(max_age);
        let mut profiles: HashMap<String, (Arc<fieldgate_adapters::lorawan::codec::Codec>, u8)> =
            HashMap::new();
        profiles.insert(CAYENNE.to_owned(), (Arc::new(Codec::CayenneLpp), default_command_port()));
        for (i, p) in raw.profiles.into_iter().enumerate() {
            let path = format!("lorawan.profile[{i}]");
            if profiles.contains_key(&p.name) {
                self.problem(&format!("{path}.name"), format!("`{}` is already a profile", p.name));
                continue;
            }
            for (key, port) in [("port", p.port), ("command_port", Some(p.command_port))] {
                if port.is_some_and(|n| !(1..=223).contains(&n)) {
                    self.problem(&format!("{path}.{key}"), "application ports are 1 to 223");
                }
            }
            let name = p.name.clone();
            if let Some(codec) = self.profile(&path, p.codec.as_str(), p.port, p.fields) {
                profiles.insert(name, (Arc::new(codec), p.command_port));
            }
        }
        let mut devices = Vec::new();
        let (mut ids, mut euis) = (HashSet::new(), HashSet::new());
        for (i, d) in raw.devices.into_iter().enumerate() {
            let path = format!("lorawan.device[{i}]");
            if let Some(device) = self.lora_device(&path, d, &profiles, env) {
                if !ids.insert(device.device.clone()) {
                    self.problem(
                        &format!("{path}.id"),
                        format!("`{}` is already a LoRaWAN device", device.device),
                    );
                } else if !euis.insert(device.dev_eui) {
                    self.problem(
                        &format!("{path}.dev_eui"),
                        format!("{} is already a device's DevEUI", device.dev_eui),
                    );
                } else {
                    devices.push(device);
                }
            }
        }
        raw.enabled.then_some(LorawanConfig {
            listen,
            network: NetworkSettings { region, net_id },
            adapter: AdapterSettings { gateways, dedup_window, downlink_lead, concentrator_time_max_age },
            devices,
        })
    }

    fn profile(&mut self, path: &str, codec: &str, port: Option<u8>, raw: Vec<RawField>) -> Option<Codec> {
        match codec {
            CAYENNE => {
                if !raw.is_empty() {
                    self.problem(
                        path,
                        "a cayenne_lpp profile describes itself: remove its `[[lorawan.profile.field]]`s",
                    );
                }
                Some(Codec::CayenneLpp)
            }
            "layout" => {
                if raw.is_empty() {
                    self.problem(path, "a layout profile needs at least one `[[lorawan.profile.field]]`");
                }
                let mut fields: Vec<Field> = Vec::new();
                for (j, f) in raw.into_iter().enumerate() {
                    let fpath = format!("{path}.field[{j}]");
                    let metric = Metric::new(&f.metric)
                        .map_err(|e| self.problem(&format!("{fpath}.metric"), e.to_string()))
                        .ok();
                    let ty = FieldType::parse(&f.ty);
                    if ty.is_none() {
                        self.problem(
                            &format!("{fpath}.type"),
                            format!("`{}`: use u8, i8, u16, i16, u24, i24, u32, i32 or f32", f.ty),
                        );
                    }
                    let big_endian = match f.order.as_str() {
                        "big" => true,
                        "little" => false,
                        other => {
                            self.problem(
                                &format!("{fpath}.order"),
                                format!("`{other}`: use \"big\" or \"little\""),
                            );
                            true
                        }
                    };
                    if !f.scale.is_finite() || f.scale == 0.0 || !f.offset.is_finite() {
                        self.problem(
                            &format!("{fpath}.scale"),
                            "scale must be a non-zero number and offset a number",
                        );
                    }
                    if let Some(ty) = ty
                        && f.byte + ty.size() > 222
                    {
                        self.problem(&format!("{fpath}.byte"), "a LoRaWAN payload has at most 222 bytes");
                    }
                    if let (Some(metric), Some(ty)) = (metric, ty) {
                        if fields.iter().any(|o| o.metric == metric) {
                            self.problem(
                                &format!("{fpath}.metric"),
                                format!("`{metric}` is already a field"),
                            );
                        }
                        fields.push(Field {
                            metric,
                            at: f.byte,
                            ty,
                            big_endian,
                            scale: f.scale,
                            offset: f.offset,
                        });
                    }
                }
                Some(Codec::Layout(Layout { port, fields }))
            }
            other => {
                self.problem(
                    &format!("{path}.codec"),
                    format!("`{other}`: use \"cayenne_lpp\" or \"layout\""),
                );
                None
            }
        }
    }

    fn lora_key(
        &mut self,
        path: &str,
        spec: Option<SecretSpec>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<[u8; 16]> {
        let secret = spec?.resolve(env).map_err(|e| self.problem(path, e)).ok()?;
        let key = unhex(secret.expose()).and_then(|b| <[u8; 16]>::try_from(b).ok());
        if key.is_none() {
            self.problem(path, "a key is 32 hex digits (16 bytes)");
        }
        key
    }

    fn lora_device(
        &mut self,
        path: &str,
        raw: RawDevice,
        profiles: &HashMap<String, (Arc<Codec>, u8)>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<DeviceConfig> {
        let device =
            DeviceId::new(&raw.id).map_err(|e| self.problem(&format!("{path}.id"), e.to_string())).ok();
        let dev_eui = eui(&raw.dev_eui);
        if dev_eui.is_none() {
            self.problem(
                &format!("{path}.dev_eui"),
                format!("`{}` is not an EUI of 16 hex digits", raw.dev_eui),
            );
        }
        let profile_name = raw.profile.as_deref().unwrap_or(CAYENNE);
        let profile = profiles.get(profile_name).cloned();
        if profile.is_none() {
            let mut known: Vec<&str> = profiles.keys().map(String::as_str).collect();
            known.sort_unstable();
            self.problem(
                &format!("{path}.profile"),
                format!("no profile `{profile_name}` (there are: {})", known.join(", ")),
            );
        }
        let otaa = raw.app_key.is_some();
        let abp = raw.dev_addr.is_some() || raw.nwk_s_key.is_some() || raw.app_s_key.is_some();
        let activation = match (otaa, abp) {
            (true, false) => {
                let join_eui = raw.join_eui.as_deref().and_then(|j| {
                    eui(j).or_else(|| {
                        self.problem(
                            &format!("{path}.join_eui"),
                            format!("`{j}` is not an EUI of 16 hex digits"),
                        );
                        None
                    })
                });
                let app_key = self.lora_key(&format!("{path}.app_key"), raw.app_key, env);
                app_key.map(|app_key| Activation::Otaa { join_eui, app_key })
            }
            (false, true) => {
                let dev_addr = raw.dev_addr.as_deref().and_then(|a| match unhex(a) {
                    Some(b) if b.len() == 4 => Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
                    _ => {
                        self.problem(
                            &format!("{path}.dev_addr"),
                            format!("`{a}` is not a DevAddr of 8 hex digits"),
                        );
                        None
                    }
                });
                if raw.dev_addr.is_none() {
                    self.problem(path, "an ABP device needs `dev_addr`, `nwk_s_key` and `app_s_key`");
                }
                let nwk = self.lora_key(&format!("{path}.nwk_s_key"), raw.nwk_s_key, env);
                let app = self.lora_key(&format!("{path}.app_s_key"), raw.app_s_key, env);
                match (dev_addr, nwk, app) {
                    (Some(dev_addr), Some(nwk_s_key), Some(app_s_key)) => {
                        Some(Activation::Abp { dev_addr, keys: SessionKeys { nwk_s_key, app_s_key } })
                    }
                    _ => None,
                }
            }
            _ => {
                self.problem(
                    path,
                    "give `app_key` (OTAA), or `dev_addr`, `nwk_s_key` and `app_s_key` (ABP), not both",
                );
                None
            }
        };
        let (codec, command_port) = profile?;
        Some(DeviceConfig {
            device: device?,
            dev_eui: dev_eui?,
            activation: activation?,
            codec,
            command_port,
        })
    }
}
