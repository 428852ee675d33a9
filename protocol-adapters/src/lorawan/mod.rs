//! LoRaWAN: the gateway as the network server of a site's devices, behind concentrators that
//! run the Semtech UDP packet forwarder.
//!
//! - [`gwmp`] reads and writes the forwarder's datagrams;
//! - [`mac`] verifies, decrypts and builds data frames, [`join`] handles over-the-air joins;
//! - [`codec`] turns FRMPayloads into metrics (Cayenne LPP, declared byte layouts) and back;
//! - [`region`] knows the receive windows and channels of each region's class A downlinks.
//!
//! All of them are pure functions over bytes, shared with field-sim's devices.

pub mod codec;
pub mod gwmp;
pub mod join;
pub mod mac;
pub mod region;
pub mod server;
pub mod session;
