//! The router: the one place every batch of readings passes between the adapters and the store.
//!
//! It counts readings per protocol, folds each batch into the live state (registering devices
//! heard for the first time) and forwards the batch, with its acknowledgement channel, to the
//! store. It also saves the device registry when it changed. Shutdown: when the gateway stops,
//! the router closes its input (adapters that still submit get `Closed`), forwards what is
//! already queued, saves the registry and ends, which lets the store finish.

use crate::live::{self, LiveState};
use crate::metrics::{GatewayMetrics, QueueLabels, SourceLabels};
use fieldgate_proto::ingest::SubmissionReceiver;
use fieldgate_proto::{ReadingSink, Source};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Forward batches from `rx` to `store` until shutdown, then drain.
pub async fn run(
    mut rx: SubmissionReceiver,
    store: ReadingSink,
    live: LiveState,
    data_dir: PathBuf,
    metrics: GatewayMetrics,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let received: Vec<_> = Source::ALL
        .iter()
        .map(|s| metrics.readings_received.get_or_create(&SourceLabels { source: s.as_str() }).clone())
        .collect();
    let router_depth = metrics.queue_depth.get_or_create(&QueueLabels { queue: "router" }).clone();
    let store_depth = metrics.queue_depth.get_or_create(&QueueLabels { queue: "store" }).clone();
    metrics.queue_capacity.get_or_create(&QueueLabels { queue: "router" }).set(rx.max_capacity() as i64);
    metrics.queue_capacity.get_or_create(&QueueLabels { queue: "store" }).set(store.max_capacity() as i64);
    metrics.devices.set(live.len() as i64);
    let mut save = tokio::time::interval(live::SAVE_EVERY);
    save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    loop {
        let submission = tokio::select! {
            s = rx.recv() => s,
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                rx.close();
                continue;
            }
            _ = save.tick() => {
                save_registry(&live, &data_dir).await;
                continue;
            }
        };
        let Some(submission) = submission else { break };
        // Live state first: a reading counted as received is visible there.
        for (device, source) in live.observe(&submission.readings, submission.received) {
            tracing::info!(%device, %source, "new device registered");
            metrics.devices_registered.get_or_create(&SourceLabels { source: source.as_str() }).inc();
            metrics.devices.set(live.len() as i64);
        }
        for r in &submission.readings {
            let i = Source::ALL.iter().position(|s| *s == r.source).unwrap_or(0);
            received[i].inc();
        }
        if store.forward(submission).await.is_err() {
            save_registry(&live, &data_dir).await;
            return Err("the store stopped accepting readings".to_owned());
        }
        router_depth.set(rx.len() as i64);
        store_depth.set((store.max_capacity() - store.free_capacity()) as i64);
    }
    save_registry(&live, &data_dir).await;
    Ok(())
}

/// Save the registry if it changed. A failure is logged and retried at the next save: the
/// registry is rebuilt from the next readings, and no reading depends on it.
async fn save_registry(live: &LiveState, data_dir: &std::path::Path) {
    let Some(bytes) = live.take_changes() else { return };
    let dir = data_dir.to_owned();
    let saved =
        tokio::task::spawn_blocking(move || fieldgate_store::state::replace(&dir, live::FILE, &bytes)).await;
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot save the device registry; will retry");
            live.mark_changed();
        }
        Err(e) => tracing::warn!(error = %e, "saving the device registry panicked"),
    }
}
