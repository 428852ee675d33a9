//! The router: the one place every batch of readings passes between the adapters and the store.
//!
//! It counts readings per protocol and forwards each batch, with its acknowledgement channel,
//! to the store. Later fan-outs (live state, coordination) hang off this loop. Shutdown: when the
//! gateway stops, the router closes its input (adapters that still submit get `Closed`),
//! forwards what is already queued, and ends, which lets the store finish.

use crate::metrics::{GatewayMetrics, QueueLabels, SourceLabels};
use fieldgate_proto::ingest::SubmissionReceiver;
use fieldgate_proto::{ReadingSink, Source};
use tokio_util::sync::CancellationToken;

/// Forward batches from `rx` to `store` until shutdown, then drain.
pub async fn run(
    mut rx: SubmissionReceiver,
    store: ReadingSink,
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
    let mut closing = false;
    loop {
        let submission = tokio::select! {
            s = rx.recv() => s,
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                rx.close();
                continue;
            }
        };
        let Some(submission) = submission else { break };
        for r in &submission.readings {
            let i = Source::ALL.iter().position(|s| *s == r.source).unwrap_or(0);
            received[i].inc();
        }
        if store.forward(submission).await.is_err() {
            return Err("the store stopped accepting readings".to_owned());
        }
        router_depth.set(rx.len() as i64);
        store_depth.set((store.max_capacity() - store.free_capacity()) as i64);
    }
    Ok(())
}
