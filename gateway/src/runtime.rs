//! Wiring and supervision: [`start`] builds every component from a validated [`Config`],
//! spawns its tasks and returns a [`Running`] gateway; [`Running::wait`] supervises them.
//!
//! Supervision rules: a task that fails, panics or returns while the gateway should be running
//! takes the whole gateway down with an error naming it (a half-working gateway that looks
//! alive is worse than one that restarts under systemd). On shutdown every task gets the
//! cancellation, drains and flushes, and the gateway waits up to `gateway.shutdown_timeout`,
//! then names whatever is still pending.

use crate::config::Config;
use crate::health::{Health, Status};
use crate::metrics::GatewayMetrics;
use prometheus_client::registry::Registry;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot listen for {what} on {addr}: {source} (is another gateway running, or the address wrong?)"
    )]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("task `{task}` failed: {error}")]
    TaskFailed { task: String, error: String },
    #[error("shutdown did not finish within {timeout:?}; still pending: {}", pending.join(", "))]
    ShutdownTimeout { timeout: Duration, pending: Vec<String> },
}

type TaskResult = Result<(), String>;

/// A started gateway: its bound addresses and its supervised tasks.
#[derive(Debug)]
pub struct Running {
    /// Where `/metrics` and `/healthz` are served (useful when the config asked for port 0).
    pub http_addr: SocketAddr,
    health: Health,
    tasks: JoinSet<TaskResult>,
    names: HashMap<Id, &'static str>,
    /// Tasks that serve (HTTP, gRPC): they stop last, once everything else has drained, so
    /// health and metrics stay visible during a shutdown.
    servers: HashSet<Id>,
    servers_shutdown: CancellationToken,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
}

/// Build and start every component. Returns once everything is listening.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, RunError> {
    let data_dir = &config.gateway.data_dir;
    std::fs::create_dir_all(data_dir)
        .map_err(|source| RunError::DataDir { path: data_dir.clone(), source })?;

    let health = Health::default();
    let mut registry = Registry::default();
    let _metrics = GatewayMetrics::register(&mut registry);
    let registry = Arc::new(registry);

    let listener = tokio::net::TcpListener::bind(config.http.listen).await.map_err(|source| {
        RunError::Bind { what: "HTTP (metrics, health)", addr: config.http.listen, source }
    })?;
    let http_addr = listener.local_addr().map_err(|source| RunError::Bind {
        what: "HTTP (metrics, health)",
        addr: config.http.listen,
        source,
    })?;

    let mut running = Running {
        http_addr,
        health: health.clone(),
        tasks: JoinSet::new(),
        names: HashMap::new(),
        servers: HashSet::new(),
        servers_shutdown: CancellationToken::new(),
        shutdown: shutdown.clone(),
        shutdown_timeout: config.gateway.shutdown_timeout,
    };
    let stop = running.servers_shutdown.clone();
    running.spawn_server("http", {
        let health = health.clone();
        async move { crate::http::serve(listener, registry, health, stop).await.map_err(|e| e.to_string()) }
    });
    health.set("http", Status::Up, format!("serving on {http_addr}"));
    health.set("gateway", Status::Up, format!("gateway `{}` running", config.gateway.id));
    tracing::info!(gateway = %config.gateway.id, %http_addr, data_dir = %data_dir.display(), "gateway started");
    Ok(running)
}

/// Start the gateway and run it until `shutdown` fires or a task fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    start(config, shutdown).await?.wait().await
}

impl Running {
    fn spawn(&mut self, name: &'static str, task: impl Future<Output = TaskResult> + Send + 'static) -> Id {
        let id = self.tasks.spawn(task).id();
        self.names.insert(id, name);
        id
    }

    fn spawn_server(&mut self, name: &'static str, task: impl Future<Output = TaskResult> + Send + 'static) {
        let id = self.spawn(name, task);
        self.servers.insert(id);
    }

    fn name(&self, id: Id) -> String {
        self.names.get(&id).map_or_else(|| format!("task {id}"), |n| (*n).to_owned())
    }

    /// The health table (for in-process callers such as tests).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Supervise until shutdown or failure, then drain.
    pub async fn wait(mut self) -> Result<(), RunError> {
        let mut failure = tokio::select! {
            () = self.shutdown.cancelled() => None,
            Some(joined) = self.tasks.join_next_with_id() => {
                let (task, error) = match joined {
                    Ok((id, Ok(()))) => (self.name(id), "stopped unexpectedly".to_owned()),
                    Ok((id, Err(e))) => (self.name(id), e),
                    Err(e) => (self.name(e.id()), if e.is_panic() { "panicked".to_owned() } else { e.to_string() }),
                };
                tracing::error!(%task, %error, "a task failed; stopping the gateway");
                self.shutdown.cancel();
                Some(RunError::TaskFailed { task, error })
            }
        };
        self.health.set("gateway", Status::Draining, "shutting down");
        tracing::info!("draining and flushing");
        let deadline = tokio::time::sleep(self.shutdown_timeout);
        tokio::pin!(deadline);
        while !self.tasks.is_empty() {
            if self.names.keys().all(|id| self.servers.contains(id)) {
                self.servers_shutdown.cancel();
            }
            tokio::select! {
                () = &mut deadline => {
                    // Servers wait for the others by design; name the tasks they wait for.
                    let mut pending: Vec<String> = self
                        .names
                        .iter()
                        .filter(|(id, _)| !self.servers.contains(id))
                        .map(|(_, n)| (*n).to_owned())
                        .collect();
                    if pending.is_empty() {
                        pending = self.names.values().map(|n| (*n).to_owned()).collect();
                    }
                    pending.sort();
                    self.tasks.abort_all();
                    tracing::error!(?pending, "shutdown deadline passed");
                    return Err(failure.unwrap_or(RunError::ShutdownTimeout { timeout: self.shutdown_timeout, pending }));
                }
                joined = self.tasks.join_next_with_id() => {
                    match joined {
                        Some(Ok((id, result))) => {
                            let name = self.names.remove(&id).unwrap_or("task");
                            if let Err(error) = result {
                                tracing::error!(task = name, %error, "task failed while shutting down");
                                failure.get_or_insert(RunError::TaskFailed { task: name.to_owned(), error });
                            }
                        }
                        Some(Err(e)) => {
                            let name = self.names.remove(&e.id()).unwrap_or("task");
                            failure.get_or_insert(RunError::TaskFailed { task: name.to_owned(), error: e.to_string() });
                        }
                        None => break,
                    }
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => {
                tracing::info!("gateway stopped cleanly");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GatewayConfig, HttpConfig};

    fn config(dir: &std::path::Path) -> Config {
        Config {
            gateway: GatewayConfig {
                id: "test".into(),
                data_dir: dir.join("data"),
                shutdown_timeout: Duration::from_secs(5),
            },
            http: HttpConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)) },
        }
    }

    #[tokio::test]
    async fn a_failing_task_takes_the_gateway_down_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut running = start(config(dir.path()), CancellationToken::new()).await.unwrap();
        running.spawn("modbus", async { Err("serial port /dev/ttyUSB0 vanished".to_owned()) });
        let err = running.wait().await.unwrap_err();
        assert_eq!(err.to_string(), "task `modbus` failed: serial port /dev/ttyUSB0 vanished");
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported_not_swallowed() {
        let dir = tempfile::tempdir().unwrap();
        let mut running = start(config(dir.path()), CancellationToken::new()).await.unwrap();
        running.spawn("router", async { panic!("bug") });
        let err = running.wait().await.unwrap_err();
        assert_eq!(err.to_string(), "task `router` failed: panicked");
    }

    // Paused clock: the deadline passes in virtual time, as soon as every task is idle.
    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_shutdown_is_named_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.gateway.shutdown_timeout = Duration::from_secs(30);
        let shutdown = CancellationToken::new();
        let mut running = start(c, shutdown.clone()).await.unwrap();
        running.spawn("stuck", std::future::pending());
        shutdown.cancel();
        match running.wait().await {
            Err(RunError::ShutdownTimeout { pending, .. }) => assert_eq!(pending, vec!["stuck".to_owned()]),
            other => panic!("expected a shutdown timeout, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_port_in_use_is_a_clear_start_error() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = config(dir.path());
        c.http.listen = taken.local_addr().unwrap();
        let err = start(c, CancellationToken::new()).await.unwrap_err();
        assert!(
            err.to_string().starts_with("cannot listen for HTTP (metrics, health) on 127.0.0.1:"),
            "{err}"
        );
    }
}
