//! fieldgate's end-to-end tests: one binary (each test binary links everything, so there is
//! one), one module per capability.
#![allow(clippy::unwrap_used)]

mod demo;
mod harvest;
mod lorawan;
mod modbus;
mod mqtt;
mod package;
mod query;
mod replay;
mod spine;
mod store;
mod upstream;
