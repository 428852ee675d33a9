//! field-sim's simulated devices as a library, for the `field-sim` binary and for fieldgate's
//! end-to-end tests: LoRaWAN end devices and a Semtech UDP packet forwarder.

pub mod lora;
