//! fieldgate, the program: an edge gateway for agricultural and industrial fleets.
//!
//! This crate reads the config file ([`config`]), wires the protocol adapters, the store and
//! the servers into one tokio runtime ([`runtime`]), and owns the command line ([`cli`]),
//! logging ([`telemetry`]), metrics ([`metrics`]) and health ([`health`]) served over HTTP
//! ([`http`]). Readings flow from the adapters through bounded channels into the store;
//! commands flow back down the same adapters. `main.rs` only parses arguments and calls
//! [`cli::dispatch`]; tests call [`run`] or [`start`] in-process with their own shutdown token.

pub mod cli;
pub mod collector;
pub mod commands;
pub mod config;
pub mod coordination;
pub mod deadline;
pub mod grpc;
pub mod health;
pub mod http;
pub mod live;
pub mod metrics;
pub mod query;
pub mod query_cli;
pub mod router;
pub mod runtime;
pub mod telemetry;
pub mod upstream;

pub use config::Config;
pub use runtime::{RunError, Running, run, start};
