//! field-sim's simulated devices as a library, for the `field-sim` binary and for fieldgate's
//! end-to-end tests: LoRaWAN end devices and a Semtech UDP packet forwarder, and the harvest
//! world with its scenarios, scorer and live run, and the replay of recorded readings.

pub mod harvest;
pub mod lora;
pub mod replay;
