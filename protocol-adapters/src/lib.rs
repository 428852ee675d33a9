//! fieldgate's protocol adapters: where field data enters and commands leave.
//!
//! One module per protocol. Each adapter owns its connections and their lifecycle (timeouts,
//! backoff with jitter, reconnects), turns what devices send into
//! [`fieldgate_proto::Reading`]s handed to the store through a
//! [`fieldgate_proto::ReadingSink`], and turns [`fieldgate_proto::Command`]s into protocol
//! writes. Wire formats are decoded and encoded by pure functions over bytes, shared with
//! field-sim (which encodes what adapters decode).

pub mod backoff;
pub mod lorawan;
pub mod metrics;
pub mod modbus;
pub mod mqtt;

pub use metrics::{AdapterMetrics, LinkState};
