//! Field sensors of the simulated farm: grain bins, water tanks and weather stations. Each is
//! a deterministic function of its seed and the virtual time, so a run can be repeated and a
//! test can know every value.

use std::f64::consts::TAU;

/// What a sensor device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A grain bin: level, grain temperatures at three depths, moisture, headspace, CO2, fan.
    Bin,
    /// A water or fuel tank: level, flow, pressure, temperatures, pump state.
    Tank,
    /// A weather station: temperature, humidity, wind, rain, radiation, pressure.
    Weather,
}

/// Metrics per device, each an f32 in two holding registers: 20 registers a device.
pub(crate) const METRICS: usize = 10;

impl Kind {
    pub(crate) const fn metrics(self) -> [&'static str; METRICS] {
        match self {
            Kind::Bin => [
                "level_pct",
                "grain_temp_top_c",
                "grain_temp_mid_c",
                "grain_temp_bottom_c",
                "moisture_pct",
                "headspace_temp_c",
                "headspace_rh_pct",
                "co2_ppm",
                "fan_on",
                "tonnes",
            ],
            Kind::Tank => [
                "level_pct",
                "volume_l",
                "inflow_lpm",
                "outflow_lpm",
                "pressure_bar",
                "water_temp_c",
                "pump_on",
                "pump_hours",
                "conductivity_us",
                "battery_v",
            ],
            Kind::Weather => [
                "air_temp_c",
                "rh_pct",
                "wind_ms",
                "gust_ms",
                "wind_dir_deg",
                "rain_mm",
                "solar_wm2",
                "pressure_hpa",
                "leaf_wetness",
                "soil_temp_c",
            ],
        }
    }

    pub(crate) const fn name(self) -> &'static str {
        match self {
            Kind::Bin => "bin",
            Kind::Tank => "tank",
            Kind::Weather => "weather",
        }
    }
}

/// One simulated sensor device.
#[derive(Debug, Clone)]
pub(crate) struct Sensor {
    pub id: String,
    pub kind: Kind,
    seed: u64,
}

/// A number in [0, 1) from a seed and a salt (splitmix64), for per-device variation.
fn unit(seed: u64, salt: u64) -> f64 {
    let mut z = seed.wrapping_add(salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

impl Sensor {
    pub(crate) fn new(id: String, kind: Kind, seed: u64) -> Self {
        Sensor { id, kind, seed }
    }

    /// The metric values at virtual time `t` (seconds since the start of the run), rounded to
    /// what an f32 register carries.
    pub(crate) fn values(&self, t: f64) -> [f64; METRICS] {
        let r = |salt| unit(self.seed, salt);
        let day = (TAU * t / 86_400.0 + r(1) * TAU).sin();
        let v: [f64; METRICS] = match self.kind {
            Kind::Bin => {
                // Filling at harvest: 0.5 to 2 % an hour, emptied when full.
                let level = (r(2) * 80.0 + t / 3600.0 * (0.5 + 1.5 * r(3))) % 100.0;
                let grain = 14.0 + 4.0 * r(4);
                [
                    level,
                    grain + 2.0 * day,
                    grain + 0.8 * day,
                    grain + 0.2 * day,
                    13.5 + 2.0 * r(5) - level / 200.0,
                    18.0 + 8.0 * day,
                    55.0 - 20.0 * day,
                    420.0 + 300.0 * r(6) + 50.0 * day,
                    f64::from(u8::from(day > 0.3)),
                    level / 100.0 * (150.0 + 350.0 * r(7)),
                ]
            }
            Kind::Tank => {
                let level = 50.0 + 45.0 * (TAU * t / (4.0 * 3600.0) + r(2) * TAU).sin();
                let capacity = 10_000.0 + 20_000.0 * r(3);
                let pumping = level < 40.0;
                [
                    level,
                    level / 100.0 * capacity,
                    if pumping { 120.0 + 30.0 * r(4) } else { 0.0 },
                    20.0 + 15.0 * (1.0 + day),
                    2.0 + 0.5 * r(5) + 0.3 * day,
                    11.0 + 4.0 * day,
                    f64::from(u8::from(pumping)),
                    1000.0 * r(6) + t / 3600.0 * 0.3,
                    400.0 + 200.0 * r(7),
                    12.6 + 0.8 * day,
                ]
            }
            Kind::Weather => {
                let wind = 3.0 + 4.0 * r(2) + 2.0 * (TAU * t / 1800.0).sin().abs();
                [
                    12.0 + 6.0 * r(3) + 7.0 * day,
                    65.0 - 25.0 * day,
                    wind,
                    wind * 1.6,
                    (200.0 + 90.0 * r(4) + t / 60.0) % 360.0,
                    (t / 3600.0 * 0.2 * r(5)).floor() * 0.2,
                    (800.0 * day).max(0.0),
                    1013.0 + 10.0 * r(6) - 3.0 * day,
                    f64::from(u8::from(day < -0.6)),
                    9.0 + 3.0 * day,
                ]
            }
        };
        v.map(|x| f64::from(x as f32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_deterministic_per_seed_and_vary_between_devices() {
        let a = Sensor::new("bin-1".into(), Kind::Bin, 1);
        let b = Sensor::new("bin-2".into(), Kind::Bin, 2);
        assert_eq!(a.values(3600.0), a.values(3600.0));
        assert_ne!(a.values(0.0), b.values(0.0));
        assert!(a.values(0.0).iter().all(|v| v.is_finite()));
        let level = a.values(0.0)[0];
        assert!((0.0..100.0).contains(&level), "{level}");
        for kind in [Kind::Bin, Kind::Tank, Kind::Weather] {
            let s = Sensor::new("x".into(), kind, 7);
            for t in [0.0, 1.0, 86_400.0, 1e6] {
                assert!(s.values(t).iter().all(|v| v.is_finite()), "{kind:?} at {t}");
            }
        }
    }
}
