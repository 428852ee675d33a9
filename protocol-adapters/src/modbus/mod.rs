//! Modbus: polling devices over TCP, RTU on a serial line, and RTU over TCP, and writing to
//! them.
//!
//! [`point`] decodes and encodes register values (types, byte and word orders, scaling) as pure
//! functions, one path for reads and writes; [`plan`] merges a device's points into as few
//! requests as the protocol allows.

pub mod batch;
pub mod bus;
pub mod clock;
mod mbap;
pub mod plan;
pub mod point;
pub mod probe;

pub use batch::Batcher;
pub use bus::{
    BusSettings, DeviceHealth, DeviceSettings, HealthBoard, Parity, SerialSettings, Transport, WriteRequest,
};
pub use clock::{ClockUnit, DeviceClock};
pub use plan::{Read, plan};
pub use point::{CodecError, DataType, Order, Point, Table, encode_raw, parse_address, raw_value};
