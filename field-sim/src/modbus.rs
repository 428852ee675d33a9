//! Simulated Modbus TCP devices: each sensor is a server on its own port, its metrics f32 values
//! in holding registers 0..20 (two registers each, in the device's byte order), and a writable
//! f32 setpoint at 20..22. Byte orders vary by device, as on a real farm.
//!
//! Values are encoded with the gateway's own codec (`fieldgate_adapters::modbus`), the encode
//! side of the same code the gateway decodes with; the independent check of that codec is
//! the pymodbus test suite.

use crate::sensors::{Kind, METRICS, Sensor};
use fieldgate_adapters::modbus::{DataType, Order, encode_raw};
use std::future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::TcpListener;
use tokio_modbus::prelude::{ExceptionCode, Request, Response};
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};

/// The writable setpoint's first register.
pub(crate) const SETPOINT: u16 = (METRICS * 2) as u16;
/// Registers a device has.
pub(crate) const REGISTERS: u16 = SETPOINT + 2;

/// The virtual clock: seconds since the start, running `speed` times real time (0 freezes it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    start: std::time::Instant,
    speed: f64,
}

impl Clock {
    pub(crate) fn new(speed: f64) -> Self {
        Clock { start: std::time::Instant::now(), speed }
    }

    pub(crate) fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * self.speed
    }
}

/// A sensor behind a Modbus TCP server.
#[derive(Debug)]
pub(crate) struct Device {
    pub sensor: Sensor,
    pub order: Order,
    setpoint: Mutex<[u16; 2]>,
    /// Values set from outside (a grain bin filled by the simulated harvest) in place of the
    /// sensor's own.
    set: Mutex<[Option<f64>; METRICS]>,
}

impl Device {
    pub(crate) fn new(sensor: Sensor, order: Order) -> Self {
        Device { sensor, order, setpoint: Mutex::new([0, 0]), set: Mutex::new([None; METRICS]) }
    }

    /// A grain bin holding what the trucks delivered: `tonnes`, and `level_pct` of the 500 t
    /// it holds when full.
    pub(crate) fn fill_bin(&self, delivered_kg: f64) {
        let tonnes = delivered_kg / 1000.0;
        self.set("tonnes", tonnes);
        self.set("level_pct", tonnes / 500.0 * 100.0);
    }

    /// Serve `value` for the metric named `metric` from now on.
    pub(crate) fn set(&self, metric: &str, value: f64) {
        if let Some(i) = self.sensor.kind.metrics().iter().position(|m| *m == metric) {
            self.set.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(value);
        }
    }

    /// All registers at virtual time `t`.
    pub(crate) fn registers(&self, t: f64) -> Vec<u16> {
        let mut regs = Vec::with_capacity(usize::from(REGISTERS));
        let set = *self.set.lock().unwrap_or_else(PoisonError::into_inner);
        for (v, over) in self.sensor.values(t).into_iter().zip(set) {
            let v = over.unwrap_or(v);
            regs.extend(encode_raw(DataType::F32, self.order, v).expect("sensor values fit an f32"));
        }
        regs.extend(*self.setpoint.lock().unwrap_or_else(PoisonError::into_inner));
        regs
    }

    /// The setpoint as the device holds it.
    #[cfg(test)]
    pub(crate) fn setpoint(&self) -> f64 {
        let words = *self.setpoint.lock().unwrap_or_else(PoisonError::into_inner);
        fieldgate_adapters::modbus::raw_value(DataType::F32, self.order, &words).unwrap_or(f64::NAN)
    }
}

struct Service {
    device: Arc<Device>,
    clock: Clock,
}

impl tokio_modbus::server::Service for Service {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        future::ready(self.answer(req))
    }
}

impl Service {
    fn answer(&self, req: Request<'static>) -> Result<Response, ExceptionCode> {
        match req {
            Request::ReadHoldingRegisters(addr, count) => {
                let end = usize::from(addr) + usize::from(count);
                if count == 0 || end > usize::from(REGISTERS) {
                    return Err(ExceptionCode::IllegalDataAddress);
                }
                let regs = self.device.registers(self.clock.now());
                Ok(Response::ReadHoldingRegisters(regs[usize::from(addr)..end].to_vec()))
            }
            Request::WriteMultipleRegisters(addr, words) if addr == SETPOINT && words.len() == 2 => {
                *self.device.setpoint.lock().unwrap_or_else(PoisonError::into_inner) = [words[0], words[1]];
                Ok(Response::WriteMultipleRegisters(addr, 2))
            }
            Request::WriteMultipleRegisters(..) | Request::WriteSingleRegister(..) => {
                Err(ExceptionCode::IllegalDataAddress)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

/// Serve `device` on `listener` until the process ends.
pub(crate) async fn serve(listener: TcpListener, device: Arc<Device>, clock: Clock) -> std::io::Result<()> {
    let server = Server::new(listener);
    let new_service = move |_addr: SocketAddr| Ok(Some(Service { device: device.clone(), clock }));
    let on_connected = |stream, addr| {
        let service = new_service.clone();
        async move { accept_tcp_connection(stream, addr, service) }
    };
    server.serve(&on_connected, |_e| {}).await
}

/// The harvest's farm sensors: the grain bin the trucks fill (first) and a weather station,
/// in different byte orders.
pub(crate) fn harvest_devices(seed: u64) -> Vec<Arc<Device>> {
    [(Kind::Bin, Order::Abcd), (Kind::Weather, Order::Cdab)]
        .into_iter()
        .enumerate()
        .map(|(i, (kind, order))| {
            let sensor = Sensor::new(format!("{}-0001", kind.name()), kind, seed.wrapping_add(i as u64));
            Arc::new(Device::new(sensor, order))
        })
        .collect()
}

/// The gateway config for `devices` served at `addrs`, polled every `poll`.
pub(crate) fn gateway_config(devices: &[(Arc<Device>, SocketAddr)], poll: &str) -> String {
    let mut out = String::from("# Generated by field-sim: the simulated Modbus sensors.\n");
    for (d, addr) in devices {
        out.push_str(&format!(
            "\n[[modbus.device]]\nid = \"{}\"\ntcp = \"{addr}\"\npoll = \"{poll}\"\n",
            d.sensor.id
        ));
        for (i, metric) in d.sensor.kind.metrics().iter().enumerate() {
            out.push_str(&format!(
                "\n[[modbus.device.point]]\nmetric = \"{metric}\"\ntable = \"holding_register\"\naddress = {}\ntype = \"f32\"\norder = \"{}\"\n",
                i * 2,
                d.order.as_str()
            ));
        }
        out.push_str(&format!(
            "\n[[modbus.device.point]]\nmetric = \"setpoint\"\ntable = \"holding_register\"\naddress = {SETPOINT}\ntype = \"f32\"\norder = \"{}\"\n",
            d.order.as_str()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::Kind;

    #[test]
    fn registers_carry_the_values_in_the_device_order_and_the_setpoint_is_writable() {
        let d = Device::new(Sensor::new("bin-1".into(), Kind::Bin, 3), Order::Cdab);
        let regs = d.registers(10.0);
        assert_eq!(regs.len(), usize::from(REGISTERS));
        let level = fieldgate_adapters::modbus::raw_value(DataType::F32, Order::Cdab, &regs[0..2]).unwrap();
        assert_eq!(level, d.sensor.values(10.0)[0]);
        let service = Service { device: Arc::new(d), clock: Clock::new(0.0) };
        let words = encode_raw(DataType::F32, Order::Cdab, 21.5).unwrap();
        assert!(service.answer(Request::WriteMultipleRegisters(SETPOINT, words.clone().into())).is_ok());
        assert_eq!(service.device.setpoint(), 21.5);
        assert_eq!(
            service.answer(Request::ReadHoldingRegisters(21, 2)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(service.answer(Request::ReadCoils(0, 1)), Err(ExceptionCode::IllegalFunction));
    }
}
