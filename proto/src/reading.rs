//! [`Reading`]: one value of one metric of one device at one instant.

use crate::{DeviceId, Metric, Timestamp};
use std::fmt;

/// How much a value can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// Read from the device without any sign of trouble.
    #[default]
    Good,
    /// Read, but flagged as doubtful by the device or the path.
    Uncertain,
    /// Not a usable value: the device answered with an error.
    Bad,
}

/// The protocol a reading came in by and a command goes out by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Mqtt,
    Modbus,
    Lorawan,
}

impl Source {
    /// Every source, in a stable order (for metrics labels and reports).
    pub const ALL: [Source; 3] = [Source::Mqtt, Source::Modbus, Source::Lorawan];

    /// Whether the protocol may deliver the same reading twice (an MQTT broker redelivers
    /// unacknowledged messages after a crash), so the store must recognise repeats. Modbus
    /// readings are made once per poll, and LoRaWAN frames are accepted once by their counter.
    pub const fn may_redeliver(self) -> bool {
        matches!(self, Source::Mqtt)
    }

    /// Whether each series of the protocol reaches the store in timestamp order, so its
    /// windows need not wait for stragglers. Modbus readings are made by the gateway, one poll
    /// of a device after the other, each stamped once (by the gateway's clock or the
    /// device's). MQTT messages of one device may be reordered (QoS 1 redelivery, several
    /// publishers), and LoRaWAN frames may arrive late (a forwarder that buffered them).
    pub const fn in_order(self) -> bool {
        matches!(self, Source::Modbus)
    }

    /// The lowercase name used in config, metrics labels and Parquet.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Mqtt => "mqtt",
            Source::Modbus => "modbus",
            Source::Lorawan => "lorawan",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Quality {
    /// The lowercase name used in Parquet recordings and output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Uncertain => "uncertain",
            Quality::Bad => "bad",
        }
    }
}

/// One value of one metric of one device at one instant, as an adapter hands it over.
///
/// A reading is identified by `(device, metric, ts)`: a redelivered message with the same
/// timestamp is the same reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device: DeviceId,
    pub metric: Metric,
    pub ts: Timestamp,
    pub value: f64,
    pub quality: Quality,
    pub source: Source,
}
