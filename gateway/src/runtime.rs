//! Wiring and supervision: [`start`] builds every component from a validated [`Config`],
//! spawns its tasks and returns a [`Running`] gateway; [`Running::wait`] supervises them.
//!
//! Supervision rules: a task that fails, panics or returns while the gateway should be running
//! takes the whole gateway down with an error naming it (a half-working gateway that looks
//! alive is worse than one that restarts under systemd). On shutdown every task gets the
//! cancellation, drains and flushes, and the gateway waits up to `gateway.shutdown_timeout`,
//! then names whatever is still pending.

use crate::commands::Dispatcher;
use crate::config::{Config, MqttBroker, MqttConfig};
use crate::health::{Health, Status};
use crate::live::LiveState;
use crate::metrics::GatewayMetrics;
use fieldgate_adapters::lorawan::adapter::{LorawanCommands, StateFile};
use fieldgate_adapters::lorawan::server::NetworkServer;
use fieldgate_adapters::lorawan::session::{DeviceConfig, DeviceState};
use fieldgate_adapters::modbus::DeviceHealth;
use fieldgate_adapters::mqtt::{Broker, MqttCommands};
use fieldgate_adapters::{AdapterMetrics, LinkState};
use fieldgate_proto::ReadingSink;
use fieldgate_store::{Store, StoreMetrics, StoreStatus};
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
    #[error("cannot open the store: {0}")]
    Store(#[from] fieldgate_store::StoreError),
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
    /// Where the gRPC API is served, when it is on.
    pub grpc_addr: Option<SocketAddr>,
    /// Where the LoRaWAN packet forwarders are served (UDP), when it is on.
    pub lorawan_addr: Option<SocketAddr>,
    /// Where the embedded MQTT broker listens, when it is the one in use.
    pub mqtt_addr: Option<SocketAddr>,
    /// Harvest coordination's latest plan, when `[coordination]` is on.
    pub fleet: Option<crate::coordination::FleetView>,
    health: Health,
    live: LiveState,
    sink: ReadingSink,
    checkpointed: tokio::sync::watch::Receiver<u64>,
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
    let metrics = GatewayMetrics::register(&mut registry);
    let store_metrics = StoreMetrics::register(&mut registry);
    let adapter_metrics = AdapterMetrics::register(&mut registry);
    let upstream_metrics = config.upstream.is_some().then(|| crate::upstream::UpstreamMetrics {
        store: Some(store_metrics.clone()),
        ..crate::upstream::UpstreamMetrics::register(&mut registry)
    });
    let registry = Arc::new(registry);

    // HTTP first, so /healthz can say "store starting" during a long WAL recovery. The
    // registry is filled in once the store has opened (it cleans temporary state files).
    let live = LiveState::default();
    let http_error =
        |source| RunError::Bind { what: "HTTP (metrics, health)", addr: config.http.listen, source };
    let listener = tokio::net::TcpListener::bind(config.http.listen).await.map_err(http_error)?;
    let http_addr = listener.local_addr().map_err(http_error)?;
    // Adapters submit here; the router forwards to the store. Sized like the store's queue:
    // one batch per message, poll or uplink.
    let (sink, submissions) = ReadingSink::channel(config.store.queue_batches);
    let mut running = Running {
        http_addr,
        grpc_addr: None,
        lorawan_addr: None,
        mqtt_addr: None,
        fleet: None,
        health: health.clone(),
        live: live.clone(),
        sink,
        // Replaced by the store's own once it has opened, below.
        checkpointed: tokio::sync::watch::channel(0).1,
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
        let live = live.clone();
        async move {
            crate::http::serve(listener, registry, health, live, stop).await.map_err(|e| e.to_string())
        }
    });
    health.set("http", Status::Up, format!("serving on {http_addr}"));

    health.set("store", Status::Starting, "recovering from the WAL");
    let store_config = config.store.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(store_config, store_metrics))
        .await
        .map_err(|e| RunError::TaskFailed { task: "store".into(), error: e.to_string() })??;
    let recovery = store.recovery();
    if recovery.wal.corrupt_regions + recovery.undecodable_records + recovery.damaged_checkpoints > 0 {
        tracing::error!(
            ?recovery,
            "the store found damaged data at start; see the counts (data in damaged regions is lost)"
        );
    }
    // Open means writing: say so before "gateway started", not when the watcher first runs.
    health.set("store", Status::Up, "writing");
    live.replace_with(load_registry(data_dir));
    running.checkpointed = store.checkpointed();
    running.spawn(
        "router",
        crate::router::run(
            submissions,
            store.sink(),
            live.clone(),
            data_dir.clone(),
            metrics.clone(),
            shutdown.clone(),
        ),
    );
    let store_reader = store.reader();
    let store_outbox = store.outbox();
    if let (Some(settings), Some(outbox), Some(metrics)) =
        (config.upstream.clone(), store.outbox(), upstream_metrics)
    {
        let outbox_id = crate::upstream::outbox_id(data_dir)
            .map_err(|source| RunError::DataDir { path: data_dir.clone(), source })?;
        let (link_tx, link) =
            tokio::sync::watch::channel(fieldgate_adapters::LinkState::Connecting("starting".into()));
        running.spawn("upstream-health", report_link("upstream", link, health.clone(), shutdown.clone()));
        let committed = store.checkpointed();
        let stop = shutdown.clone();
        running.spawn("upstream", async move {
            crate::upstream::run(settings, outbox_id, outbox, committed, metrics, link_tx, stop).await;
            Ok(())
        });
    }
    running.spawn("store", watch_store(store, health.clone(), shutdown.clone()));
    let mut mqtt_commands = None;
    if let Some(MqttConfig { broker, command_topic, command_timeout }) = config.mqtt.clone() {
        match broker {
            MqttBroker::External(settings) => {
                let (commands, requests) = MqttCommands::external(command_topic, command_timeout);
                mqtt_commands = Some(commands);
                let (state, link) = tokio::sync::watch::channel(LinkState::Connecting("starting".into()));
                running.spawn("mqtt-health", report_link("mqtt", link, health.clone(), shutdown.clone()));
                let (sink, metrics, stop) = (running.sink(), adapter_metrics.clone(), shutdown.clone());
                running.spawn("mqtt", async move {
                    fieldgate_adapters::mqtt::run(settings, sink, requests, metrics, state, stop)
                        .await
                        .map_err(|e| e.to_string())
                });
            }
            MqttBroker::Embedded { listen, broker } => {
                let bind_error = |source| RunError::Bind {
                    what: "the embedded MQTT broker (another broker on this port? set [mqtt.embedded] listen, \
                       or [mqtt.external] to use it)",
                    addr: listen,
                    source,
                };
                let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind_error)?;
                let addr = listener.local_addr().map_err(bind_error)?;
                let broker = Broker::new(broker, running.sink(), adapter_metrics.clone());
                mqtt_commands = Some(MqttCommands::embedded(broker.clone(), command_topic, command_timeout));
                let stop = shutdown.clone();
                running.spawn("mqtt", async move {
                    broker.serve(listener, stop).await.map_err(|e| e.to_string())
                });
                running.mqtt_addr = Some(addr);
                health.set("mqtt", Status::Up, format!("embedded broker listening on {addr}"));
                tracing::info!(%addr, "mqtt broker listening");
            }
        }
    }
    let mut modbus_writes = HashMap::new();
    if !config.modbus.is_empty() {
        let (board, devices) = tokio::sync::watch::channel(std::collections::BTreeMap::new());
        running.spawn("modbus-health", report_modbus(devices, health.clone(), shutdown.clone()));
        let (batcher, batching) = fieldgate_adapters::modbus::Batcher::new(running.sink());
        running.spawn("modbus-batcher", async move {
            batching.await;
            Ok(())
        });
        for bus in config.modbus.clone() {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            for d in &bus.devices {
                modbus_writes.insert(d.device.clone(), tx.clone());
            }
            let (batcher, metrics, board, stop) =
                (batcher.clone(), adapter_metrics.clone(), board.clone(), shutdown.clone());
            running.spawn(
                "modbus",
                fieldgate_adapters::modbus::bus::run(bus, batcher, rx, metrics, board, stop),
            );
        }
    }
    let mut lorawan_commands = None;
    if let Some(lora) = config.lorawan.clone() {
        let bind_error = |source| RunError::Bind {
            what: "LoRaWAN (the packet forwarders' UDP; another network server on this port? set [lorawan] listen)",
            addr: lora.listen,
            source,
        };
        let socket = tokio::net::UdpSocket::bind(lora.listen).await.map_err(bind_error)?;
        let addr = socket.local_addr().map_err(bind_error)?;
        running.lorawan_addr = Some(addr);
        match load_lorawan_state(data_dir, &lora.devices) {
            Ok(states) => {
                let devices = lora.devices.iter().map(|d| d.device.clone());
                let (commands, requests) = LorawanCommands::new(devices);
                lorawan_commands = Some(commands);
                let server = NetworkServer::new(lora.network, lora.devices, states);
                let (state, link) = tokio::sync::watch::channel(LinkState::Connecting("starting".into()));
                running
                    .spawn("lorawan-health", report_link("lorawan", link, health.clone(), shutdown.clone()));
                let file: Arc<dyn StateFile> = Arc::new(LorawanStateFile(data_dir.clone()));
                let (sink, metrics, stop) = (running.sink(), adapter_metrics.clone(), shutdown.clone());
                running.spawn("lorawan", async move {
                    fieldgate_adapters::lorawan::adapter::run(
                        server,
                        lora.adapter,
                        socket,
                        file,
                        sink,
                        requests,
                        metrics,
                        state,
                        stop,
                    )
                    .await
                });
                tracing::info!(%addr, "lorawan network server listening");
            }
            Err(why) => {
                tracing::error!(%why, "LoRaWAN is off");
                health.set("lorawan", Status::Down, why);
            }
        }
    }
    let mut configured = std::collections::BTreeMap::new();
    for bus in &config.modbus {
        configured.extend(bus.devices.iter().map(|d| (d.device.clone(), fieldgate_proto::Source::Modbus)));
    }
    if let Some(lora) = &config.lorawan {
        configured.extend(lora.devices.iter().map(|d| (d.device.clone(), fieldgate_proto::Source::Lorawan)));
    }
    let gaps = match store_outbox {
        Some(outbox) => crate::query::GapSource::Outbox { gateway: config.gateway.id.clone(), outbox },
        None => crate::query::GapSource::None,
    };
    let queries = crate::query::Queries {
        stats: fieldgate_analytics::Source::Store { data_dir: data_dir.clone(), reader: store_reader },
        live: Some(live.clone()),
        configured,
        gaps,
        fleet: config.coordination.as_ref().map(|_| crate::coordination::FleetView::default()),
    };
    let dispatcher =
        Arc::new(Dispatcher::new(live.clone(), mqtt_commands, modbus_writes, lorawan_commands, metrics));
    running.fleet = queries.fleet.clone();
    if let (Some(settings), Some(view)) = (config.coordination.clone(), queries.fleet.clone()) {
        let (live, commands, stop) = (live.clone(), dispatcher.clone(), shutdown.clone());
        running
            .spawn("coordination", crate::coordination::service::run(settings, live, commands, view, stop));
    }
    if let Some(grpc) = config.grpc.clone() {
        let bind_error = |source| RunError::Bind { what: "the gRPC API", addr: grpc.listen, source };
        let listener = tokio::net::TcpListener::bind(grpc.listen).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let security = match &grpc.tls {
            Some(t) if t.client_ca.is_some() => " over TLS, client certificates required",
            Some(_) => " over TLS",
            None => "",
        };
        let stop = running.servers_shutdown.clone();
        running.spawn_server("grpc", async move {
            crate::grpc::serve(listener, dispatcher, queries, grpc.token, grpc.tls, stop)
                .await
                .map_err(|e| e.to_string())
        });
        running.grpc_addr = Some(addr);
        health.set("grpc", Status::Up, format!("serving on {addr}{security}"));
    }
    health.set("gateway", Status::Up, format!("gateway `{}` running", config.gateway.id));
    let grpc_addr = running.grpc_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
    tracing::info!(
        gateway = %config.gateway.id,
        %http_addr,
        grpc_addr,
        data_dir = %data_dir.display(),
        "gateway started"
    );
    Ok(running)
}

/// The saved device registry. One that cannot be read is set aside (kept for inspection) and
/// the gateway starts with an empty registry: devices register again as they are heard.
fn load_registry(data_dir: &std::path::Path) -> LiveState {
    match LiveState::load(data_dir) {
        Ok(live) => {
            tracing::info!(devices = live.len(), "device registry loaded");
            live
        }
        Err(e) => {
            let aside = fieldgate_store::state::set_aside(data_dir, crate::live::FILE);
            tracing::error!(
                error = %e,
                set_aside = ?aside.as_ref().map(|p| p.display().to_string()),
                "the device registry is unreadable; starting with an empty one"
            );
            LiveState::default()
        }
    }
}

/// The state file of the LoRaWAN sessions under `DATA_DIR/state/`.
pub const LORAWAN_STATE: &str = "lorawan-sessions";

/// Saves the LoRaWAN sessions (keys inside: readable by the gateway's user only).
struct LorawanStateFile(PathBuf);

impl StateFile for LorawanStateFile {
    fn save(&self, bytes: &[u8]) -> std::io::Result<()> {
        fieldgate_store::state::replace_private(&self.0, LORAWAN_STATE, bytes)
    }
}

/// The saved LoRaWAN state for `devices`, or why it cannot be trusted. A damaged file is not
/// set aside automatically: starting afresh would forget every device's frame counters (an
/// ABP device's old frames could be replayed) and every OTAA session (devices must rejoin), so
/// that is the operator's decision.
fn load_lorawan_state(
    data_dir: &std::path::Path,
    devices: &[DeviceConfig],
) -> Result<Vec<DeviceState>, String> {
    let path = fieldgate_store::state::path(data_dir, LORAWAN_STATE);
    match fieldgate_store::state::read(data_dir, LORAWAN_STATE) {
        Ok(None) => Ok(Vec::new()),
        Ok(Some(bytes)) => fieldgate_adapters::lorawan::session::decode(&bytes, devices).map_err(|e| {
            format!(
                "the LoRaWAN sessions file {} is not trusted: {e}. LoRaWAN stays off until it is restored or \
                 moved aside (then OTAA devices must rejoin and ABP frame counters start over)",
                path.display()
            )
        }),
        Err(e) => Err(format!("cannot read the LoRaWAN sessions file {}: {e}", path.display())),
    }
}

/// Start the gateway and run it until `shutdown` fires or a task fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    start(config, shutdown).await?.wait().await
}

/// Report the store's status as health until shutdown, then close it (which waits for the
/// router to let go of it, commits what is queued and writes the final checkpoint). A store
/// whose writer stops while the gateway runs takes the gateway down.
async fn watch_store(store: Store, health: Health, shutdown: CancellationToken) -> TaskResult {
    let mut status = store.status();
    let report = |s: &StoreStatus| match s {
        StoreStatus::Ok => health.set("store", Status::Up, "writing"),
        StoreStatus::DiskFull(d) | StoreStatus::Failed(d) => health.set("store", Status::Down, d.clone()),
        StoreStatus::Stopped => health.set("store", Status::Down, "stopped"),
    };
    report(&status.borrow_and_update());
    let failed = loop {
        tokio::select! {
            () = shutdown.cancelled() => break false,
            changed = status.changed() => {
                let s = status.borrow_and_update().clone();
                report(&s);
                if changed.is_err() || s == StoreStatus::Stopped {
                    break true;
                }
            }
        }
    };
    tokio::task::spawn_blocking(move || store.close()).await.map_err(|e| e.to_string())?;
    if failed {
        return Err("the store's writer stopped".to_owned());
    }
    health.set("store", Status::Draining, "closed after the final checkpoint");
    Ok(())
}

/// Report the Modbus devices' health as one component until shutdown: up while every device
/// answers, degraded while some are backed off (named), down when none answers.
async fn report_modbus(
    mut devices: tokio::sync::watch::Receiver<
        std::collections::BTreeMap<fieldgate_proto::DeviceId, DeviceHealth>,
    >,
    health: Health,
    shutdown: CancellationToken,
) -> TaskResult {
    loop {
        let (status, detail) = {
            let all = devices.borrow_and_update();
            let failing: Vec<String> = all
                .iter()
                .filter_map(|(id, h)| match h {
                    DeviceHealth::BackedOff(why) => Some(format!("{id}: {why}")),
                    _ => None,
                })
                .collect();
            let starting = all.values().filter(|h| **h == DeviceHealth::Starting).count();
            if failing.is_empty() && starting > 0 {
                (Status::Starting, format!("{starting} of {} devices not polled yet", all.len()))
            } else if failing.is_empty() {
                (Status::Up, format!("{} devices answering", all.len()))
            } else if failing.len() == all.len() {
                (Status::Down, format!("no device answers: {}", first_few(&failing)))
            } else {
                (
                    Status::Degraded,
                    format!("{} of {} devices backed off: {}", failing.len(), all.len(), first_few(&failing)),
                )
            }
        };
        health.set("modbus", status, detail);
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            changed = devices.changed() => if changed.is_err() { return Ok(()) },
        }
    }
}

/// The first few items, and how many more: a site with hundreds of devices behind a dead
/// switch should not get a health report of hundreds of lines.
fn first_few(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    if items.len() > SHOWN {
        text.push_str(&format!("; and {} more (see the log)", items.len() - SHOWN));
    }
    text
}

/// Report an adapter's link state as its health until shutdown.
async fn report_link(
    component: &'static str,
    mut link: tokio::sync::watch::Receiver<LinkState>,
    health: Health,
    shutdown: CancellationToken,
) -> TaskResult {
    // Without its collector the gateway still collects and keeps everything: degraded, not down.
    let optional = component == "upstream";
    loop {
        match link.borrow_and_update().clone() {
            LinkState::Connecting(d) | LinkState::Down(d) if optional => {
                health.set(component, Status::Degraded, d)
            }
            LinkState::Connecting(d) => health.set(component, Status::Starting, d),
            LinkState::Up(d) => health.set(component, Status::Up, d),
            LinkState::Down(d) => health.set(component, Status::Down, d),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            changed = link.changed() => if changed.is_err() { return Ok(()) },
        }
    }
}

impl Running {
    /// A sink to submit readings into the pipeline, as the protocol adapters do (for embedding
    /// fieldgate and for tests).
    pub fn sink(&self) -> ReadingSink {
        self.sink.clone()
    }

    /// The WAL sequence number of the store's last committed checkpoint, as it changes.
    pub fn checkpointed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.checkpointed.clone()
    }

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

    /// The live state: the device registry and the latest values.
    pub fn live(&self) -> &LiveState {
        &self.live
    }

    /// The health table (for in-process callers such as tests).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Supervise until shutdown or failure, then drain.
    pub async fn wait(mut self) -> Result<(), RunError> {
        let mut failure = tokio::select! {
            // Shutdown first: a task that ends because of it is draining, not failing.
            biased;
            () = self.shutdown.cancelled() => None,
            Some(joined) = self.tasks.join_next_with_id() => {
                let (task, error) = match joined {
                    Ok((id, Ok(()))) if self.shutdown.is_cancelled() => {
                        self.names.remove(&id);
                        return self.drain(None).await;
                    }
                    Ok((id, Ok(()))) => (self.name(id), "stopped unexpectedly".to_owned()),
                    Ok((id, Err(e))) => (self.name(id), e),
                    Err(e) => (self.name(e.id()), if e.is_panic() { "panicked".to_owned() } else { e.to_string() }),
                };
                tracing::error!(%task, %error, "a task failed; stopping the gateway");
                self.shutdown.cancel();
                Some(RunError::TaskFailed { task, error })
            }
        };
        self.drain(failure.take()).await
    }

    /// Wait for every task to finish under the shutdown deadline; servers stop last.
    async fn drain(mut self, mut failure: Option<RunError>) -> Result<(), RunError> {
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
            store: fieldgate_store::StoreConfig::new(dir.join("data")),
            mqtt: None,
            grpc: None,
            modbus: Vec::new(),
            lorawan: None,
            upstream: None,
            coordination: None,
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

    #[tokio::test]
    async fn a_damaged_lorawan_sessions_file_is_reported_and_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"
[gateway]
id = "test"
data_dir = "data"
[http]
listen = "127.0.0.1:0"
[grpc]
enabled = false
[mqtt]
enabled = false
[lorawan]
listen = "127.0.0.1:0"
[[lorawan.device]]
id = "soil-1"
dev_eui = "0000000000000001"
app_key = "000102030405060708090a0b0c0d0e0f"
"#;
        let c = Config::parse(text, &dir.path().join("f.toml"), &|_| None).unwrap();
        let state = fieldgate_store::state::path(&c.gateway.data_dir, LORAWAN_STATE);
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        std::fs::write(&state, b"fieldgate-lorawan-state v1 crc32=00000000\n{}").unwrap();
        let shutdown = CancellationToken::new();
        let running = start(c, shutdown.clone()).await.unwrap();
        let health = running.health().snapshot();
        let lorawan = &health.components["lorawan"];
        assert_eq!(lorawan.status, Status::Down);
        assert!(
            lorawan.detail.contains("is not trusted: the file's checksum does not match"),
            "{}",
            lorawan.detail
        );
        assert_eq!(health.components["store"].status, Status::Up, "the rest of the gateway runs");
        assert!(state.exists(), "left for the operator, not overwritten");
        let waiter = tokio::spawn(running.wait());
        shutdown.cancel();
        waiter.await.unwrap().unwrap();
        assert_eq!(std::fs::read(&state).unwrap(), b"fieldgate-lorawan-state v1 crc32=00000000\n{}");
    }

    fn reading(device: &str, ts: fieldgate_proto::Timestamp, value: f64) -> fieldgate_proto::Reading {
        fieldgate_proto::Reading {
            device: fieldgate_proto::DeviceId::new(device).unwrap(),
            metric: fieldgate_proto::Metric::new("level_pct").unwrap(),
            ts,
            value,
            quality: fieldgate_proto::Quality::Good,
            source: fieldgate_proto::Source::Modbus,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readings_flow_through_the_router_into_parquet_and_survive_a_restart() {
        use fieldgate_proto::Timestamp;
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let shutdown = CancellationToken::new();
        let running = start(c.clone(), shutdown.clone()).await.unwrap();
        let sink = running.sink();
        let t0 = Timestamp::now().floor_to(Duration::from_secs(900));
        let at = |s: u64| t0.saturating_add(Duration::from_secs(s));
        let mut acks = Vec::new();
        for i in 0..30 {
            acks.push(sink.submit(vec![reading("bin-1", at(i), i as f64)], Timestamp::now()).await.unwrap());
        }
        for a in acks {
            a.await.unwrap();
        }
        assert_eq!(running.health().snapshot().components["store"].status, Status::Up);
        let waiter = tokio::spawn(running.wait());
        shutdown.cancel();
        waiter.await.unwrap().unwrap();
        assert!(sink.submit(vec![], Timestamp::now()).await.is_err(), "a stopped gateway refuses input");

        // A Modbus series does not wait for stragglers: [0,10) and [10,20) closed in the first
        // run, and went to a file at shutdown. Restart: [20,30), still open at shutdown, comes
        // back from the checkpoint, and a reading at 55 s closes it into a second file.
        let shutdown = CancellationToken::new();
        let running = start(c.clone(), shutdown.clone()).await.unwrap();
        running
            .sink()
            .submit(vec![reading("bin-1", at(55), 99.0)], Timestamp::now())
            .await
            .unwrap()
            .await
            .unwrap();
        let waiter = tokio::spawn(running.wait());
        shutdown.cancel();
        waiter.await.unwrap().unwrap();
        let parts = fieldgate_store::layout::parts(&fieldgate_store::layout::rollup_dir(
            &c.store.data_dir,
            10_000_000_000,
        ));
        assert_eq!(parts.len(), 2, "one file per run: {parts:?}");
    }
}
