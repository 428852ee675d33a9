//! [`Health`]: what each component says about itself, served at `/healthz`.
//!
//! Components (the HTTP server, each adapter's connection, the store) report a [`Status`]
//! with a one-line detail whenever it changes. `/healthz` answers 200 while every component is
//! up or degraded, and 503 as soon as one is starting, down or draining, with the whole table
//! as JSON so a person sees which one and why.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The state of one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not ready yet (connecting, recovering the WAL).
    Starting,
    /// Working.
    Up,
    /// Working with a handicap (e.g. one Modbus device backed off); data still flows.
    Degraded,
    /// Not working (broker unreachable, disk full); the detail says why.
    Down,
    /// Shutting down: finishing what it holds.
    Draining,
}

impl Status {
    fn is_healthy(self) -> bool {
        matches!(self, Status::Up | Status::Degraded)
    }
}

/// One component's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub status: Status,
    pub detail: String,
}

/// The health table, shared by every component (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<String, Report>>>,
}

/// A snapshot of the health table, as served.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub healthy: bool,
    pub components: BTreeMap<String, Report>,
}

impl Health {
    /// Record a component's status; logs transitions.
    pub fn set(&self, component: &str, status: Status, detail: impl Into<String>) {
        let detail = detail.into();
        let mut table = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = table.get(component).is_none_or(|r| r.status != status);
        if changed {
            match status {
                Status::Down => tracing::warn!(component, ?status, %detail, "component health changed"),
                _ => tracing::info!(component, ?status, %detail, "component health changed"),
            }
        }
        table.insert(component.to_owned(), Report { status, detail });
    }

    /// The current table, and whether the gateway as a whole is healthy.
    pub fn snapshot(&self) -> Snapshot {
        let components = self.inner.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Snapshot {
            healthy: !components.is_empty() && components.values().all(|r| r.status.is_healthy()),
            components,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_unhealthy_component_makes_the_gateway_unhealthy() {
        let h = Health::default();
        assert!(!h.snapshot().healthy, "nothing reported yet is not healthy");
        h.set("http", Status::Up, "listening");
        h.set("mqtt", Status::Degraded, "reconnecting");
        assert!(h.snapshot().healthy);
        h.set("store", Status::Down, "no space left on device");
        let s = h.snapshot();
        assert!(!s.healthy);
        assert_eq!(s.components["store"].detail, "no space left on device");
        h.set("store", Status::Up, "writing");
        assert!(h.snapshot().healthy);
    }
}
