//! `field-sim`: simulated farm devices that speak the real protocols to a fieldgate gateway.

use clap::Parser;

/// field-sim: simulated combines, carts, trucks, bins and sensors speaking MQTT, Modbus and
/// LoRaWAN to a fieldgate gateway, for tests, demos and scoring dispatch policies.
#[derive(Debug, Parser)]
#[command(name = "field-sim", version)]
struct Cli {}

fn main() {
    Cli::parse();
}
