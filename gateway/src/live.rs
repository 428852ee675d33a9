//! Live state: every device the gateway has heard from (the device registry) and the latest
//! value of each of its metrics.
//!
//! The router is the only writer: it folds each batch in as it passes to the store. A device
//! heard for the first time is registered with its source and first-seen time, which survive
//! restarts: the registry is saved to `DATA_DIR/state/devices.json` (atomically replaced) when
//! it changed, at most every [`SAVE_EVERY`], and once more at shutdown. Readers (`/devices`,
//! the query service, coordination) take short read locks and copy out what they need.

use fieldgate_proto::{DeviceId, Metric, NameMap, Quality, Reading, Source, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The state file holding the registry.
pub const FILE: &str = "devices.json";

/// How often the router saves a changed registry.
pub const SAVE_EVERY: Duration = Duration::from_secs(10);

/// The latest value of one metric of one device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latest {
    pub ts: Timestamp,
    pub value: f64,
    pub quality: Quality,
}

/// What the gateway knows of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// The protocol its readings last came in by.
    pub source: Source,
    /// When the gateway first received a reading of it (wall clock of the gateway).
    pub first_seen: Timestamp,
    /// When the gateway last received a reading of it.
    pub last_seen: Timestamp,
    /// Readings received since it was registered.
    pub readings: u64,
    /// Of those, readings of bad quality (a Modbus exception, an undecodable value).
    pub bad: u64,
    /// The reading with the newest timestamp, per metric (unordered: it is looked up for
    /// every reading; sort when presenting it).
    pub latest: NameMap<Metric, Latest>,
}

/// The shared live state (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct LiveState {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    devices: BTreeMap<DeviceId, Device>,
    /// Changed since the last save.
    dirty: bool,
}

/// Why the saved registry could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a device registry: {source}")]
    Format {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl LiveState {
    /// Fold in a batch received at `received`. Returns the devices registered by it.
    pub fn observe(&self, readings: &[Reading], received: Timestamp) -> Vec<(DeviceId, Source)> {
        let mut new = Vec::new();
        if readings.is_empty() {
            return new;
        }
        let mut inner = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.dirty = true;
        // A batch is usually one device's (a poll, a message): look each device up once per
        // run of its readings.
        for run in readings.chunk_by(|a, b| a.device == b.device) {
            let first = &run[0];
            let device = inner.devices.entry(first.device.clone()).or_insert_with(|| {
                new.push((first.device.clone(), first.source));
                Device {
                    source: first.source,
                    first_seen: received,
                    last_seen: received,
                    readings: 0,
                    bad: 0,
                    latest: NameMap::default(),
                }
            });
            device.source = first.source;
            device.last_seen = device.last_seen.max(received);
            device.readings += run.len() as u64;
            device.bad += run.iter().filter(|r| r.quality == Quality::Bad).count() as u64;
            for r in run {
                let latest = Latest { ts: r.ts, value: r.value, quality: r.quality };
                match device.latest.get_mut(&r.metric) {
                    // A late or redelivered reading does not replace a newer one.
                    Some(l) if r.ts >= l.ts => *l = latest,
                    Some(_) => {}
                    None => {
                        device.latest.insert(r.metric.clone(), latest);
                    }
                }
            }
        }
        new
    }

    /// One device, if known.
    pub fn device(&self, id: &DeviceId) -> Option<Device> {
        self.read().devices.get(id).cloned()
    }

    /// Every known device, by id.
    pub fn devices(&self) -> Vec<(DeviceId, Device)> {
        self.read().devices.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// How many devices are known.
    pub fn len(&self) -> usize {
        self.read().devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The registry as saved, if it changed since the last call (which clears the change).
    pub fn take_changes(&self) -> Option<Vec<u8>> {
        let mut inner = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !inner.dirty {
            return None;
        }
        inner.dirty = false;
        let saved = Saved {
            version: 1,
            devices: inner.devices.iter().map(|(id, d)| SavedDevice::from_device(id, d)).collect(),
        };
        Some(serde_json::to_vec(&saved).expect("the registry serializes"))
    }

    /// Take over the devices of `other` (a loaded registry), dropping this one's.
    pub fn replace_with(&self, other: LiveState) {
        let devices = std::mem::take(
            &mut other.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner).devices,
        );
        let mut inner = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.devices = devices;
        inner.dirty = false;
    }

    /// Mark the registry as changed, so the next save writes it (after a failed save).
    pub fn mark_changed(&self) {
        self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner).dirty = true;
    }

    /// Load the registry saved in `data_dir`. No file is an empty registry. A file that cannot
    /// be read as a registry is an error; the caller decides to set it aside.
    pub fn load(data_dir: &Path) -> Result<LiveState, LoadError> {
        let path = fieldgate_store::state::path(data_dir, FILE).display().to_string();
        let bytes = fieldgate_store::state::read(data_dir, FILE)
            .map_err(|source| LoadError::Io { path: path.clone(), source })?;
        let Some(bytes) = bytes else { return Ok(LiveState::default()) };
        let saved: Saved =
            serde_json::from_slice(&bytes).map_err(|source| LoadError::Format { path, source })?;
        let devices = saved.devices.into_iter().map(SavedDevice::into_device).collect();
        Ok(LiveState { inner: Arc::new(RwLock::new(Inner { devices, dirty: false })) })
    }
}

/// The registry file: versioned JSON, timestamps as integer nanoseconds (exact).
#[derive(Serialize, Deserialize)]
struct Saved {
    version: u32,
    devices: Vec<SavedDevice>,
}

#[derive(Serialize, Deserialize)]
struct SavedDevice {
    device: DeviceId,
    source: Source,
    first_seen_ns: i64,
    last_seen_ns: i64,
    readings: u64,
    #[serde(default)]
    bad: u64,
    latest: Vec<SavedLatest>,
}

#[derive(Serialize, Deserialize)]
struct SavedLatest {
    metric: Metric,
    ts_ns: i64,
    value: f64,
    quality: Quality,
}

impl SavedDevice {
    fn from_device(id: &DeviceId, d: &Device) -> Self {
        let mut latest: Vec<SavedLatest> = d
            .latest
            .iter()
            .map(|(m, l)| SavedLatest {
                metric: m.clone(),
                ts_ns: l.ts.as_nanos(),
                value: l.value,
                quality: l.quality,
            })
            .collect();
        // Sorted, so that the file reads the same for the same registry.
        latest.sort_by(|a, b| a.metric.cmp(&b.metric));
        SavedDevice {
            device: id.clone(),
            source: d.source,
            first_seen_ns: d.first_seen.as_nanos(),
            last_seen_ns: d.last_seen.as_nanos(),
            readings: d.readings,
            bad: d.bad,
            latest,
        }
    }

    fn into_device(self) -> (DeviceId, Device) {
        let device = Device {
            source: self.source,
            first_seen: Timestamp::from_nanos(self.first_seen_ns),
            last_seen: Timestamp::from_nanos(self.last_seen_ns),
            readings: self.readings,
            bad: self.bad,
            latest: self
                .latest
                .into_iter()
                .map(|l| {
                    let latest =
                        Latest { ts: Timestamp::from_nanos(l.ts_ns), value: l.value, quality: l.quality };
                    (l.metric, latest)
                })
                .collect(),
        };
        (self.device, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(device: &str, metric: &str, ts: i64, value: f64) -> Reading {
        Reading {
            device: DeviceId::new(device).unwrap(),
            metric: Metric::new(metric).unwrap(),
            ts: Timestamp::from_nanos(ts),
            value,
            quality: Quality::Good,
            source: Source::Mqtt,
        }
    }

    #[test]
    fn first_sight_registers_and_later_sights_move_last_seen_and_latest() {
        let live = LiveState::default();
        let new = live.observe(&[reading("bin-1", "level", 10, 1.0)], Timestamp::from_nanos(100));
        assert_eq!(new, vec![(DeviceId::new("bin-1").unwrap(), Source::Mqtt)]);
        let again = live.observe(
            &[reading("bin-1", "level", 30, 3.0), reading("bin-1", "level", 20, 2.0)],
            Timestamp::from_nanos(200),
        );
        assert!(again.is_empty(), "a known device is not registered twice");
        let d = live.device(&DeviceId::new("bin-1").unwrap()).unwrap();
        assert_eq!((d.first_seen.as_nanos(), d.last_seen.as_nanos(), d.readings), (100, 200, 3));
        let level = d.latest[&Metric::new("level").unwrap()];
        assert_eq!((level.ts.as_nanos(), level.value), (30, 3.0), "an older reading does not win");
    }

    #[test]
    fn the_registry_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let live = LiveState::default();
        assert_eq!(LiveState::load(dir.path()).unwrap().len(), 0, "no file, no devices");
        live.observe(
            &[reading("bin-1", "level", 10, 1.5), reading("cart-2", "fill", 11, 0.25)],
            Timestamp::from_nanos(7),
        );
        let bytes = live.take_changes().unwrap();
        assert_eq!(live.take_changes(), None, "nothing changed since");
        fieldgate_store::state::replace(dir.path(), FILE, &bytes).unwrap();
        let loaded = LiveState::load(dir.path()).unwrap();
        assert_eq!(loaded.devices(), live.devices());

        std::fs::write(fieldgate_store::state::path(dir.path(), FILE), b"{\"version\":1,").unwrap();
        let err = LiveState::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("devices.json is not a device registry"), "{err}");
    }
}
