//! [`Command`]: something the gateway asks a field device (or its operator) to do.

use crate::{DeviceId, Metric, Timestamp};
use std::fmt;

/// Identifies a command, chosen by its sender; a repeated id is not executed twice.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(String);

impl CommandId {
    /// Wrap a sender-chosen id. Ids are opaque; only emptiness is refused (by the wire layer).
    pub fn new(id: impl Into<String>) -> Self {
        CommandId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandId({:?})", self.0)
    }
}

/// A command travelling down to one device through the adapter of the device's protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: CommandId,
    pub device: DeviceId,
    pub created: Timestamp,
    pub action: Action,
}

/// What the command does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Set a metric of the device: a Modbus register or coil, an MQTT or LoRa setpoint. The
    /// adapter encodes `value` with the same point definition it decodes readings with.
    Set { metric: Metric, value: f64 },
    /// Show an instruction to the machine's operator (from the harvest dispatcher).
    Instruct(Instruction),
}

/// An instruction for a machine's operator.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    pub task: Task,
    /// The device the task is about (the combine to serve, the truck to unload into).
    pub target: Option<DeviceId>,
    /// When the dispatcher needs the task done.
    pub due: Option<Timestamp>,
    /// One line for the operator.
    pub note: String,
}

/// What a dispatcher asks a cart or truck to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Drive to the target combine and take its grain.
    Serve,
    /// Unload into the target (a truck or a bin).
    UnloadInto,
    /// Leave for the bin or elevator and unload there.
    Haul,
    /// Wait at the staging area.
    Hold,
}

impl Task {
    pub const fn as_str(self) -> &'static str {
        match self {
            Task::Serve => "serve",
            Task::UnloadInto => "unload_into",
            Task::Haul => "haul",
            Task::Hold => "hold",
        }
    }
}

/// How far a command got when it was handed to its adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Confirmed by the protocol (MQTT PUBACK, Modbus write response).
    Delivered,
    /// Held in the device's queue; it goes out at the next chance the protocol gives.
    Queued,
    /// A command with this id was already accepted; nothing was sent again.
    Duplicate,
}

/// The outcome of a command that was accepted, with a line for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub delivery: Delivery,
    pub detail: String,
}

/// Why a command was not delivered. Each maps to a gRPC status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The gateway has never heard of the device and has no configuration for it.
    #[error("unknown device: {0}")]
    UnknownDevice(String),
    /// The device's protocol cannot carry this command.
    #[error("{0}")]
    Unsupported(String),
    /// The way to the device is down now (broker disconnected, nobody subscribed); retry later.
    #[error("{0}")]
    Unreachable(String),
    /// The broker or device answered with a refusal (an MQTT 5 PUBACK reason, a Modbus
    /// exception).
    #[error("{0}")]
    Refused(String),
    /// Sent, but not confirmed in time; it may still arrive.
    #[error("{0}")]
    Timeout(String),
}
