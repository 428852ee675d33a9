//! One stream of batches for all of the Modbus side.
//!
//! A poll gives one device's readings: twenty values, say. Handed to the store one poll at a
//! time, a site of a thousand devices polled every second would cost the pipeline a thousand
//! batches a second, each with its own channel message, WAL record and writer wake-up, to
//! carry values nobody waits for (a polled reading has no one to acknowledge to). The buses
//! instead hand their readings to a [`Batcher`], which submits whatever arrived within
//! [`WINDOW`] as one batch. Readings keep their own timestamps (the time of the answer), so
//! the rollups do not change; a reading reaches the store at most a window later.

use fieldgate_proto::{Reading, ReadingSink, Timestamp};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long readings are gathered before they are submitted together.
pub const WINDOW: Duration = Duration::from_millis(100);

/// A batch is submitted early once it holds this many readings.
pub const MAX_READINGS: usize = 8192;

/// The buses' side: hand over one poll's readings.
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Vec<Reading>>,
}

/// The batcher is gone: the pipeline closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the Modbus batcher stopped: the pipeline is closed")]
pub struct Closed;

impl Batcher {
    /// A batcher submitting into `sink`, and the task that does it (run it until it returns:
    /// once every [`Batcher`] clone is dropped, it submits what is left and ends).
    pub fn new(sink: ReadingSink) -> (Batcher, impl Future<Output = ()> + Send + 'static) {
        // Room for a round of polls of a large site; a bus waits when the store is behind.
        let (tx, rx) = mpsc::channel(1024);
        (Batcher { tx }, collect(rx, sink, WINDOW))
    }

    /// Queue one poll's readings, waiting while the batcher is behind.
    pub async fn add(&self, readings: Vec<Reading>) -> Result<(), Closed> {
        self.tx.send(readings).await.map_err(|_| Closed)
    }
}

async fn collect(mut rx: mpsc::Receiver<Vec<Reading>>, sink: ReadingSink, window: Duration) {
    while let Some(mut batch) = rx.recv().await {
        let deadline = Instant::now() + window;
        let mut open = true;
        while open && batch.len() < MAX_READINGS {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(more)) => batch.extend(more),
                Ok(None) => open = false,
                Err(_) => break,
            }
        }
        // Nobody waits for the ack (see the module docs); a closed pipeline ends the batcher,
        // and the buses then see `Closed` on their next poll.
        if sink.submit(batch, Timestamp::now()).await.is_err() {
            tracing::debug!("modbus batcher: the pipeline closed");
            return;
        }
        if !open {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldgate_proto::{DeviceId, Metric, Quality, Source};

    fn reading(device: &str, v: f64) -> Reading {
        Reading {
            device: DeviceId::new(device).unwrap(),
            metric: Metric::new("level").unwrap(),
            ts: Timestamp::from_nanos(1),
            value: v,
            quality: Quality::Good,
            source: Source::Modbus,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn polls_within_a_window_become_one_batch_and_the_rest_is_submitted_at_the_end() {
        let (sink, mut rx) = ReadingSink::channel(8);
        let (batcher, task) = Batcher::new(sink);
        let task = tokio::spawn(task);
        batcher.add(vec![reading("a", 1.0), reading("a", 2.0)]).await.unwrap();
        batcher.add(vec![reading("b", 3.0)]).await.unwrap();
        let first = rx.recv().await.unwrap();
        let values: Vec<f64> = first.readings.iter().map(|r| r.value).collect();
        assert_eq!(values, [1.0, 2.0, 3.0]);

        // After the window, a new poll starts a new batch; dropping the batcher flushes it.
        tokio::time::advance(WINDOW * 2).await;
        batcher.add(vec![reading("c", 4.0)]).await.unwrap();
        drop(batcher);
        let last = rx.recv().await.unwrap();
        assert_eq!(last.readings.len(), 1);
        assert_eq!(last.readings[0].value, 4.0);
        task.await.unwrap();
        assert!(rx.recv().await.is_none(), "the batcher ended and dropped its sink");
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_pipeline_stops_the_batcher_and_the_buses_hear_of_it() {
        let (sink, rx) = ReadingSink::channel(8);
        drop(rx);
        let (batcher, task) = Batcher::new(sink);
        batcher.add(vec![reading("a", 1.0)]).await.unwrap();
        task.await;
        assert_eq!(batcher.add(vec![reading("a", 2.0)]).await, Err(Closed));
    }
}
