//! LoRaWAN: the gateway as the network server of a site's devices, behind concentrators that
//! run the Semtech UDP packet forwarder.
//!
//! - [`gwmp`] reads and writes the forwarder's datagrams;
//! - [`mac`] verifies, decrypts and builds data frames, [`join`] handles over-the-air joins;
//! - [`codec`] turns FRMPayloads into metrics (Cayenne LPP, declared byte layouts) and back;
//! - [`region`] knows the receive windows and channels of each region's class A downlinks.
//!
//! - [`session`] keeps sessions, counters and queues, and their saved form;
//! - [`server`] decides about each frame (sans I/O); [`adapter`] runs it behind a UDP socket.
//!
//! The codecs and frame builders are pure functions over bytes, shared with field-sim.

pub mod adapter;
pub mod codec;
pub mod gwmp;
pub mod join;
pub mod mac;
pub mod region;
pub mod server;
pub mod session;
