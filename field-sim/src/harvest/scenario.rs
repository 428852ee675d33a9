//! Scenario files (`field-sim/scenarios/*.toml`): the field, the fleet and the shift.

use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// A harvest to simulate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(with = "humantime_serde_lite")]
    pub shift: Duration,
    #[serde(with = "humantime_serde_lite")]
    pub telemetry_interval: Duration,
    /// Fraction of telemetry messages lost.
    pub telemetry_loss: f64,
    /// How long an operator takes to act on an instruction.
    #[serde(with = "humantime_serde_lite")]
    pub reaction: Duration,
    pub field: Field,
    pub combine: CombineSpec,
    pub cart: CartSpec,
    pub truck: TruckSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    pub width_m: f64,
    pub length_m: f64,
    pub yield_t_ha: f64,
    pub yield_variation: f64,
    pub density_t_m3: f64,
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CombineSpec {
    pub count: usize,
    pub tank_m3: f64,
    pub unload_l_s: f64,
    pub header_m: f64,
    pub speed_kmh: f64,
    pub turn_s: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartSpec {
    pub count: usize,
    pub capacity_t: f64,
    pub speed_empty_kmh: f64,
    pub speed_loaded_kmh: f64,
    pub auger_t_min: f64,
    pub sync_s: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruckSpec {
    pub count: usize,
    pub capacity_t: f64,
    pub haul_km: f64,
    pub speed_loaded_kmh: f64,
    pub speed_empty_kmh: f64,
    pub unload_min: f64,
    pub queue_min: f64,
}

/// The scenarios shipped with field-sim, by name: `field-sim score --scenario b1` works from
/// any directory.
pub const BUILT_IN: [(&str, &str); 3] = [
    ("b1", include_str!("../../scenarios/b1.toml")),
    ("cart-starved", include_str!("../../scenarios/cart-starved.toml")),
    ("long-haul", include_str!("../../scenarios/long-haul.toml")),
];

impl Scenario {
    /// A built-in scenario by name, or a scenario file.
    pub fn load(name_or_path: &str) -> Result<Scenario, String> {
        let text = match BUILT_IN.iter().find(|(n, _)| n.eq_ignore_ascii_case(name_or_path)) {
            Some((_, text)) => (*text).to_owned(),
            None => std::fs::read_to_string(Path::new(name_or_path)).map_err(|e| {
                let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
                format!("{name_or_path}: {e} (built-in scenarios: {})", names.join(", "))
            })?,
        };
        let scenario: Scenario = toml::from_str(&text).map_err(|e| format!("{name_or_path}: {e}"))?;
        scenario.check().map_err(|e| format!("{name_or_path}: {e}"))?;
        Ok(scenario)
    }

    fn check(&self) -> Result<(), String> {
        let positive = [
            ("field.width_m", self.field.width_m),
            ("field.length_m", self.field.length_m),
            ("field.yield_t_ha", self.field.yield_t_ha),
            ("field.density_t_m3", self.field.density_t_m3),
            ("combine.tank_m3", self.combine.tank_m3),
            ("combine.unload_l_s", self.combine.unload_l_s),
            ("combine.header_m", self.combine.header_m),
            ("combine.speed_kmh", self.combine.speed_kmh),
            ("cart.capacity_t", self.cart.capacity_t),
            ("cart.speed_empty_kmh", self.cart.speed_empty_kmh),
            ("cart.speed_loaded_kmh", self.cart.speed_loaded_kmh),
            ("cart.auger_t_min", self.cart.auger_t_min),
            ("truck.capacity_t", self.truck.capacity_t),
            ("truck.haul_km", self.truck.haul_km),
            ("truck.speed_loaded_kmh", self.truck.speed_loaded_kmh),
            ("truck.speed_empty_kmh", self.truck.speed_empty_kmh),
        ];
        if let Some((key, v)) = positive.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return Err(format!("{key} must be a positive number, got {v}"));
        }
        if self.combine.count == 0 || self.cart.count == 0 || self.truck.count == 0 {
            return Err("a harvest needs at least one combine, one cart and one truck".into());
        }
        if !(0.0..1.0).contains(&self.telemetry_loss) || !(0.0..1.0).contains(&self.field.yield_variation) {
            return Err("telemetry_loss and field.yield_variation are fractions from 0 to 1".into());
        }
        if self.telemetry_interval.is_zero() {
            return Err("telemetry_interval must be more than 0s".into());
        }
        Ok(())
    }

    pub fn tank_kg(&self) -> f64 {
        self.combine.tank_m3 * self.field.density_t_m3 * 1000.0
    }

    pub fn combine_unload_kg_s(&self) -> f64 {
        self.combine.unload_l_s / 1000.0 * self.field.density_t_m3 * 1000.0
    }

    pub fn cart_auger_kg_s(&self) -> f64 {
        self.cart.auger_t_min * 1000.0 / 60.0
    }

    /// The gateway's `[coordination]` section and its `[[coordination.machine]]`s for this
    /// fleet, for a live run at `speed` times real time: the gateway plans as often in
    /// harvest time as telemetry comes, and its `time_scale` makes each real second `speed`
    /// seconds of harvest, so the machines' rates and the dispatcher's durations keep their
    /// units.
    pub fn coordination_config(&self, policy: &str, speed: f64) -> String {
        let interval_ms = (self.telemetry_interval.as_secs_f64() / speed * 1000.0).round().max(100.0);
        let mut out = format!(
            "[coordination]\npolicy = \"{policy}\"\ninterval = \"{interval_ms}ms\"\ntime_scale = {speed}\nsync = \"{}s\"\norigin = {{ lat = {}, lon = {} }}\n",
            self.cart.sync_s, self.field.origin.lat, self.field.origin.lon
        );
        for i in 1..=self.combine.count {
            out.push_str(&format!(
                "\n[[coordination.machine]]\ndevice = \"{}\"\nrole = \"combine\"\ncapacity_kg = {:.0}\nunload_kg_s = {:.1}\n",
                combine_id(i),
                self.tank_kg(),
                self.combine_unload_kg_s()
            ));
        }
        for i in 1..=self.cart.count {
            out.push_str(&format!(
                "\n[[coordination.machine]]\ndevice = \"{}\"\nrole = \"cart\"\ncapacity_kg = {:.0}\nunload_kg_s = {:.1}\nspeed_empty_kmh = {}\nspeed_loaded_kmh = {}\nload_from = {{ device = \"{}\", metric = \"weight_kg\" }}\n",
                cart_id(i),
                self.cart.capacity_t * 1000.0,
                self.cart_auger_kg_s(),
                self.cart.speed_empty_kmh,
                self.cart.speed_loaded_kmh,
                scale_id(i)
            ));
        }
        for i in 1..=self.truck.count {
            out.push_str(&format!(
                "\n[[coordination.machine]]\ndevice = \"{}\"\nrole = \"truck\"\ncapacity_kg = {:.0}\n",
                truck_id(i),
                self.truck.capacity_t * 1000.0
            ));
        }
        out
    }
}

pub fn combine_id(i: usize) -> String {
    format!("combine-{i}")
}
pub fn cart_id(i: usize) -> String {
    format!("cart-{i}")
}
/// The LoRaWAN load cell of cart `i`.
pub fn scale_id(i: usize) -> String {
    format!("cart-{i}-scale")
}
pub fn truck_id(i: usize) -> String {
    format!("truck-{i}")
}

/// Durations in scenario files in human units ("8h", "5s"), through humantime.
mod humantime_serde_lite {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}
