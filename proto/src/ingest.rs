//! The hand-over of readings from the adapters to the store, and its acknowledgement.
//!
//! An adapter submits a batch (one MQTT message, one Modbus poll, one LoRa uplink) through a
//! [`ReadingSink`]. `submit` waits while the pipeline is full, so a slow disk slows the field
//! instead of growing memory. It returns an [`Ack`] that resolves once the batch is durable
//! (its WAL record fsync'd): only then does the adapter acknowledge its protocol (MQTT PUBACK,
//! LoRa PUSH_ACK). Dropping the `Ack` is allowed (Modbus polls have no one to tell).

use crate::{Reading, Timestamp};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};

/// A batch of readings on its way to the store.
#[derive(Debug)]
pub struct Submission {
    pub readings: Vec<Reading>,
    /// When the gateway received the batch (wall clock, read by the adapter).
    pub received: Timestamp,
    /// Where the store confirms durability; `None` when nobody waits.
    pub ack: Option<oneshot::Sender<Result<Durable, IngestError>>>,
}

/// Proof that a batch is durable: it survives kill -9 and power loss from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    /// The WAL sequence number of the batch's record.
    pub seq: u64,
}

/// Why a batch was not made durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("the store is shutting down")]
    Closed,
    #[error("the store failed: {0}")]
    Failed(String),
}

/// The sending side of the pipeline that adapters hold (cheap to clone).
#[derive(Debug, Clone)]
pub struct ReadingSink {
    tx: mpsc::Sender<Submission>,
}

/// The receiving side, held by the router.
pub type SubmissionReceiver = mpsc::Receiver<Submission>;

impl ReadingSink {
    /// A sink and its receiver, with room for `capacity` batches in flight.
    pub fn channel(capacity: usize) -> (ReadingSink, SubmissionReceiver) {
        let (tx, rx) = mpsc::channel(capacity);
        (ReadingSink { tx }, rx)
    }

    /// Wrap an existing sender (the router forwards into the store's channel this way).
    pub fn from_sender(tx: mpsc::Sender<Submission>) -> Self {
        ReadingSink { tx }
    }

    /// Hand over a batch, waiting while the pipeline is full. The returned [`Ack`] resolves
    /// once the batch is durable.
    pub async fn submit(&self, readings: Vec<Reading>, received: Timestamp) -> Result<Ack, IngestError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Submission { readings, received, ack: Some(tx) })
            .await
            .map_err(|_| IngestError::Closed)?;
        Ok(Ack(rx))
    }

    /// Pass on a submission as it is, ack and all (the router forwards to the store this way).
    pub async fn forward(&self, submission: Submission) -> Result<(), IngestError> {
        self.tx.send(submission).await.map_err(|_| IngestError::Closed)
    }

    /// Batches that can be submitted before `submit` waits.
    pub fn free_capacity(&self) -> usize {
        self.tx.capacity()
    }

    /// Batches the pipeline holds at most.
    pub fn max_capacity(&self) -> usize {
        self.tx.max_capacity()
    }
}

/// Resolves when a submitted batch is durable.
#[derive(Debug)]
pub struct Ack(oneshot::Receiver<Result<Durable, IngestError>>);

impl Future for Ack {
    type Output = Result<Durable, IngestError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(IngestError::Closed)))
    }
}
