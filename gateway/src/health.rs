//! [`Health`]: what each component says about itself, served at `/healthz`.
//!
//! Components (the HTTP server, each adapter's connection, the store) report a [`Status`]
//! with a one-line detail whenever it changes. `/healthz` answers 200 while every component is
//! up or degraded, and 503 as soon as one is starting, down or draining, with the whole table
//! as JSON so a person sees which one and why.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

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
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<watch::Sender<BTreeMap<String, Report>>>,
}

impl Default for Health {
    fn default() -> Self {
        Health { inner: Arc::new(watch::Sender::new(BTreeMap::new())) }
    }
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
        let report = Report { status, detail: detail.into() };
        self.inner.send_if_modified(|table| {
            if table.get(component) == Some(&report) {
                return false;
            }
            if table.get(component).is_none_or(|r| r.status != status) {
                let detail = &report.detail;
                match status {
                    Status::Down => tracing::warn!(component, ?status, %detail, "component health changed"),
                    _ => tracing::info!(component, ?status, %detail, "component health changed"),
                }
            }
            table.insert(component.to_owned(), report);
            true
        });
    }

    /// The current table, and whether the gateway as a whole is healthy.
    pub fn snapshot(&self) -> Snapshot {
        let components = self.inner.borrow().clone();
        Snapshot {
            healthy: !components.is_empty() && components.values().all(|r| r.status.is_healthy()),
            components,
        }
    }

    /// Wait until `component` reports a status for which `f` holds (for embedding and tests).
    pub async fn wait_for(&self, component: &str, f: impl Fn(Status) -> bool) -> Report {
        let mut rx = self.inner.subscribe();
        let found = rx.wait_for(|t| t.get(component).is_some_and(|r| f(r.status))).await;
        // The sender lives as long as `self`, so the wait cannot fail.
        found.map(|t| t[component].clone()).unwrap_or(Report { status: Status::Down, detail: String::new() })
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
