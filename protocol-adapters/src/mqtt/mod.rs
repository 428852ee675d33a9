//! MQTT: turning what devices publish into readings.
//!
//! [`topic`] matches topics against mapping patterns (`fleet/{device}/telemetry`) and
//! [`payload`] decodes payloads (JSON objects, plain numbers, booleans) into readings, with a
//! bounded reason for every rejection. Both are pure functions over strings and bytes: the
//! adapter decodes with them, field-sim encodes the same shapes, and both are tested without a
//! broker.

pub mod broker;
pub mod client;
pub mod command;
pub mod payload;
pub mod tls;
pub mod topic;

pub use broker::{Broker, BrokerSettings, Sent};
pub use client::{MqttError, MqttSettings, Protocol, run};
pub use command::{CommandRequests, CommandTopic, MqttCommands, TemplateError};
pub use payload::{Field, Mapping, PayloadFormat, Rejection, TimestampUnit, decode};
pub use tls::{TlsError, TlsFiles, client_config as tls_client_config};
pub use topic::{Captures, PatternError, TopicPattern};
