//! LoRaWAN: the gateway as the network server of a site's devices, behind concentrators that
//! run the Semtech UDP packet forwarder.
//!
//! [`gwmp`] reads and writes the forwarder's datagrams; [`mac`] verifies and decrypts data
//! uplinks. Joins, persistent sessions, downlinks and the UDP adapter build on them (issue 7,
//! in progress).

pub mod gwmp;
pub mod mac;
