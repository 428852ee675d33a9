//! Modbus devices for a replay: a Modbus TCP server at each address the target gateway polls,
//! whose registers and bits take each recorded value when its time comes, encoded by the
//! device's point definitions in the gateway config (the same encoding code the gateway
//! decodes with, writes included).
//!
//! Modbus carries no timestamps: the gateway stores what it reads at its poll times. A replay
//! at the recorded speed gives the recorded values at the gateway's poll rate; faster, the
//! gateway sees fewer of them.

use fieldgate_adapters::modbus::{BusSettings, DataType, Point, Table, Transport, encode_raw};
use std::collections::HashMap;
use std::future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_modbus::prelude::{ExceptionCode, Request, Response};
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};

/// What one server holds. Unit ids sharing an address share the map.
#[derive(Debug, Default)]
struct Tables {
    registers: HashMap<(bool, u16), u16>,
    bits: HashMap<(bool, u16), bool>,
}

/// The replayed Modbus devices: each device's points and the tables they live in.
#[derive(Debug, Default)]
pub struct Devices {
    by_device: HashMap<String, (Vec<Point>, Arc<Mutex<Tables>>)>,
    /// How long the last values are held after the replay so the gateway reads them: two
    /// of the slowest device's poll cycles (poll interval and timeout), and a second.
    pub hold: Duration,
}

impl Devices {
    pub fn contains(&self, device: &str) -> bool {
        self.by_device.contains_key(device)
    }

    /// Put `value` of `metric` into the device's tables; false when the device has no such
    /// point or the value does not fit it.
    pub fn set(&self, device: &str, metric: &str, value: f64) -> bool {
        let Some((points, tables)) = self.by_device.get(device) else { return false };
        let Some(point) = points.iter().find(|p| p.metric.as_str() == metric) else { return false };
        let mut tables = tables.lock().unwrap_or_else(PoisonError::into_inner);
        match point.table {
            Table::Coil | Table::DiscreteInput => {
                tables.bits.insert((point.table == Table::Coil, point.address), value != 0.0);
                true
            }
            Table::InputRegister | Table::HoldingRegister => {
                let holding = point.table == Table::HoldingRegister;
                if let DataType::Bit(bit) = point.data_type {
                    let word = tables.registers.entry((holding, point.address)).or_default();
                    let mask = 1u16 << bit;
                    *word = if value != 0.0 { *word | mask } else { *word & !mask };
                    return true;
                }
                // Input registers too (the gateway's write path refuses them): the same raw
                // encoding, value = raw × scale + offset undone.
                match encode_raw(point.data_type, point.order, (value - point.offset) / point.scale) {
                    Ok(words) => {
                        for (i, w) in words.into_iter().enumerate() {
                            tables.registers.insert((holding, point.address.wrapping_add(i as u16)), w);
                        }
                        true
                    }
                    Err(_) => false,
                }
            }
        }
    }
}

/// Start a server for every Modbus TCP address of `buses` with a device in `wanted`.
pub async fn serve(buses: &[BusSettings], wanted: &dyn Fn(&str) -> bool) -> std::io::Result<Devices> {
    let mut devices = Devices::default();
    for bus in buses {
        let Transport::Tcp(addr) = &bus.transport else { continue };
        let mine: Vec<_> = bus.devices.iter().filter(|d| wanted(d.device.as_str())).collect();
        if mine.is_empty() {
            continue;
        }
        let addr: SocketAddr = addr.parse().map_err(|e| {
            std::io::Error::other(format!(
                "the gateway polls {addr}: not an address field-sim can listen on ({e})"
            ))
        })?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::other(format!("cannot listen on {addr} for {}: {e}", mine[0].device))
        })?;
        let tables = Arc::new(Mutex::new(Tables::default()));
        for d in mine {
            devices.hold = devices.hold.max(2 * (d.poll + d.timeout) + Duration::from_secs(1));
            devices.by_device.insert(d.device.to_string(), (d.points.clone(), tables.clone()));
        }
        tokio::spawn(async move {
            let server = Server::new(listener);
            let new_service = move |_addr: SocketAddr| Ok(Some(Service { tables: tables.clone() }));
            let on_connected = |stream, addr| {
                let service = new_service.clone();
                async move { accept_tcp_connection(stream, addr, service) }
            };
            let _ = server.serve(&on_connected, |_e| {}).await;
        });
    }
    Ok(devices)
}

struct Service {
    tables: Arc<Mutex<Tables>>,
}

impl tokio_modbus::server::Service for Service {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        let tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let words = |holding: bool, addr: u16, count: u16| -> Vec<u16> {
            (0..count)
                .map(|i| tables.registers.get(&(holding, addr.wrapping_add(i))).copied().unwrap_or(0))
                .collect()
        };
        let bits = |coil: bool, addr: u16, count: u16| -> Vec<bool> {
            (0..count)
                .map(|i| tables.bits.get(&(coil, addr.wrapping_add(i))).copied().unwrap_or(false))
                .collect()
        };
        future::ready(match req {
            Request::ReadHoldingRegisters(a, n) => Ok(Response::ReadHoldingRegisters(words(true, a, n))),
            Request::ReadInputRegisters(a, n) => Ok(Response::ReadInputRegisters(words(false, a, n))),
            Request::ReadCoils(a, n) => Ok(Response::ReadCoils(bits(true, a, n))),
            Request::ReadDiscreteInputs(a, n) => Ok(Response::ReadDiscreteInputs(bits(false, a, n))),
            // A replayed device reports what was recorded: writes are refused.
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}
