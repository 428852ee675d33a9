//! LoRaWAN: the gateway as the network server of a site's devices, behind concentrators that
//! run the Semtech UDP packet forwarder.
//!
//! [`gwmp`] reads and writes the forwarder's datagrams. The MAC layer (frame verification and
//! decryption with the `lorawan` crate, sessions and frame counters, joins, downlinks) and the
//! UDP adapter build on it (issue 7, in progress).

pub mod gwmp;
