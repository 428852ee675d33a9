//! Modbus devices for a replay: a Modbus TCP server at each address the target gateway polls,
//! whose registers and bits take each recorded value when its time comes, encoded by the
//! device's point definitions in the gateway config (the same encoding code the gateway
//! decodes with, writes included).
//!
//! Modbus itself carries no timestamps: the gateway stores what it reads at its poll times. A
//! replay at the recorded speed gives the recorded values at the gateway's poll rate; faster,
//! the gateway sees fewer of them. A device whose config gives it a clock
//! (`[modbus.device.timestamp]`) is replayed exactly instead, in **lockstep**: each recorded
//! sample (the readings of one instant) is served with its time in the clock register until
//! the gateway has read every address of the device, and only then the next one, so the
//! gateway stores every sample once, at its recorded time, at the pace of its polls.

use super::input::Row;
use fieldgate_adapters::modbus::{BusSettings, DataType, DeviceClock, Point, Table, Transport, encode_raw};
use fieldgate_proto::Timestamp;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_modbus::prelude::{ExceptionCode, Request, Response};
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};

/// One device's readings of one instant.
#[derive(Debug)]
struct Sample {
    ts: Timestamp,
    values: Vec<(String, f64)>,
}

/// A device replayed in lockstep with the gateway's polls.
#[derive(Debug)]
struct Lockstep {
    device: String,
    points: Vec<Point>,
    clock: DeviceClock,
    /// Every address the gateway reads: each point's first and the clock's.
    addresses: Vec<(Table, u16)>,
    /// The addresses of the sample being served not read yet; empty when it has been read
    /// (or before the first).
    unread: HashSet<(Table, u16)>,
    /// Readings in the sample being served.
    serving: u64,
    /// Samples waiting for the gateway to read the one before.
    waiting: VecDeque<Sample>,
}

/// What one server holds. Unit ids sharing an address share the tables.
#[derive(Debug, Default)]
struct Tables {
    cells: Cells,
    lockstep: Vec<Lockstep>,
}

/// The registers and bits a server answers with; unset ones read as zero.
#[derive(Debug, Default)]
struct Cells {
    registers: HashMap<(bool, u16), u16>,
    bits: HashMap<(bool, u16), bool>,
}

/// Whether recorded `value` can be served through `point` (see [`Cells::put`]).
fn fits(point: &Point, value: f64) -> bool {
    point.table.is_bits()
        || matches!(point.data_type, DataType::Bit(_))
        || encode_raw(point.data_type, point.order, (value - point.offset) / point.scale).is_ok()
}

impl Cells {
    /// Put `value` into the tables as `point` encodes it; false when it does not fit.
    fn put(&mut self, point: &Point, value: f64) -> bool {
        match point.table {
            Table::Coil | Table::DiscreteInput => {
                self.bits.insert((point.table == Table::Coil, point.address), value != 0.0);
                true
            }
            Table::InputRegister | Table::HoldingRegister => {
                let holding = point.table == Table::HoldingRegister;
                if let DataType::Bit(bit) = point.data_type {
                    let word = self.registers.entry((holding, point.address)).or_default();
                    let mask = 1u16 << bit;
                    *word = if value != 0.0 { *word | mask } else { *word & !mask };
                    return true;
                }
                // Input registers too (the gateway's write path refuses them): the same raw
                // encoding, value = raw × scale + offset undone.
                match encode_raw(point.data_type, point.order, (value - point.offset) / point.scale) {
                    Ok(words) => {
                        self.words(holding, point.address, words);
                        true
                    }
                    Err(_) => false,
                }
            }
        }
    }

    fn words(&mut self, holding: bool, address: u16, words: Vec<u16>) {
        for (i, w) in words.into_iter().enumerate() {
            self.registers.insert((holding, address.wrapping_add(i as u16)), w);
        }
    }
}

impl Tables {
    /// Serve the next sample of every lockstep device whose current one has been read;
    /// whether any moved on. Samples were checked to fit when loaded ([`samples`]).
    fn advance(&mut self) -> bool {
        let mut moved = false;
        for l in self.lockstep.iter_mut().filter(|l| l.unread.is_empty()) {
            let Some(sample) = l.waiting.pop_front() else { continue };
            for (metric, value) in &sample.values {
                if let Some(point) = l.points.iter().find(|p| p.metric.as_str() == metric) {
                    self.cells.put(point, *value);
                }
            }
            if let Ok(words) = l.clock.encode(sample.ts) {
                let clock = &l.clock.point;
                self.cells.words(clock.table == Table::HoldingRegister, clock.address, words);
            }
            l.unread = l.addresses.iter().copied().collect();
            l.serving = sample.values.len() as u64;
            moved = true;
        }
        moved
    }

    /// The gateway read `count` items of `table` from `address`.
    fn read(&mut self, table: Table, address: u16, count: u16) -> bool {
        let end = u32::from(address) + u32::from(count);
        for l in &mut self.lockstep {
            l.unread.retain(|&(t, a)| t != table || !(u32::from(address)..end).contains(&u32::from(a)));
        }
        self.advance()
    }
}

/// A replayed device: its points, its clock, and its server's tables.
#[derive(Debug)]
struct Served {
    points: Vec<Point>,
    clock: Option<DeviceClock>,
    tables: Arc<Mutex<Tables>>,
    /// For a lockstep device: the readings of its samples.
    loaded: u64,
}

/// The replayed Modbus devices: each device's points and the tables they live in.
#[derive(Debug, Default)]
pub struct Devices {
    by_device: HashMap<String, Served>,
    /// How long the last values are held after the replay so the gateway reads them: two
    /// of the slowest device's poll cycles (poll interval and timeout), and a second.
    pub hold: Duration,
    /// Told whenever a lockstep device moves on to its next sample.
    progress: Arc<Notify>,
    /// Recorded readings of lockstep devices that cannot be served (no such point, a value
    /// that does not fit it, or a time the device's clock cannot hold), per device.
    pub unfit: HashMap<String, u64>,
}

impl Devices {
    pub fn contains(&self, device: &str) -> bool {
        self.by_device.contains_key(device)
    }

    /// Whether `device` has a clock, and so is replayed in lockstep.
    pub fn clocked(&self, device: &str) -> bool {
        self.by_device.get(device).is_some_and(|s| s.clock.is_some())
    }

    /// Put recorded `value` of `metric` into a device without a clock, at once. False when
    /// the device has no such point or the value does not fit it.
    pub fn set(&self, device: &str, metric: &str, value: f64) -> bool {
        let Some(served) = self.by_device.get(device) else { return false };
        let Some(point) = served.points.iter().find(|p| p.metric.as_str() == metric) else { return false };
        served.tables.lock().unwrap_or_else(PoisonError::into_inner).cells.put(point, value)
    }

    /// Wait until the gateway has read every sample of the lockstep devices, or has read
    /// nothing for `patience`. The readings read, and those never read, per device.
    pub async fn finish(&self, patience: Duration) -> (HashMap<String, u64>, HashMap<String, u64>) {
        let pending = || {
            let mut left: HashMap<String, u64> = HashMap::new();
            for (device, served) in self.by_device.iter().filter(|(_, s)| s.clock.is_some()) {
                let tables = served.tables.lock().unwrap_or_else(PoisonError::into_inner);
                for l in tables.lockstep.iter().filter(|l| &l.device == device) {
                    let unread = if l.unread.is_empty() { 0 } else { l.serving };
                    let n = l.waiting.iter().map(|s| s.values.len() as u64).sum::<u64>() + unread;
                    if n > 0 {
                        left.insert(device.clone(), n);
                    }
                }
            }
            left
        };
        loop {
            let moved = self.progress.notified();
            if pending().is_empty() || tokio::time::timeout(patience, moved).await.is_err() {
                break;
            }
        }
        let left = pending();
        let read = self
            .by_device
            .iter()
            .filter(|(_, s)| s.clock.is_some())
            .map(|(d, s)| (d.clone(), s.loaded - left.get(d).copied().unwrap_or(0)))
            .collect();
        (read, left)
    }
}

/// A lockstep device's recorded readings as samples (one per instant, in time order); the
/// readings that cannot be served are counted in `unfit`.
fn samples(points: &[Point], clock: &DeviceClock, rows: &[&Row], unfit: &mut u64) -> VecDeque<Sample> {
    let mut out: VecDeque<Sample> = VecDeque::new();
    for row in rows {
        let servable =
            points.iter().find(|p| p.metric.as_str() == row.metric).is_some_and(|p| fits(p, row.value))
                && clock.encode(row.ts).is_ok();
        if !servable {
            *unfit += 1;
            continue;
        }
        match out.back_mut() {
            Some(sample) if sample.ts == row.ts => sample.values.push((row.metric.clone(), row.value)),
            _ => out.push_back(Sample { ts: row.ts, values: vec![(row.metric.clone(), row.value)] }),
        }
    }
    out
}

/// Start a server for every Modbus TCP address of `buses` with a device recorded in `rows`
/// (Modbus rows, in time order). The samples of devices with a clock are loaded before their
/// server starts, so the gateway's first read already finds the first one.
pub async fn serve(buses: &[BusSettings], rows: &[&Row]) -> std::io::Result<Devices> {
    let mut devices = Devices::default();
    let mut by_device: HashMap<&str, Vec<&Row>> = HashMap::new();
    for row in rows {
        by_device.entry(row.device.as_str()).or_default().push(row);
    }
    for bus in buses {
        let Transport::Tcp(addr) = &bus.transport else { continue };
        let mine: Vec<_> = bus.devices.iter().filter(|d| by_device.contains_key(d.device.as_str())).collect();
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
            let mut loaded = 0;
            if let Some(clock) = &d.clock {
                let mut unfit = 0;
                let waiting = samples(&d.points, clock, &by_device[d.device.as_str()], &mut unfit);
                if unfit > 0 {
                    devices.unfit.insert(d.device.to_string(), unfit);
                }
                loaded = waiting.iter().map(|s| s.values.len() as u64).sum();
                let addresses = d
                    .points
                    .iter()
                    .map(|p| (p.table, p.address))
                    .chain([(clock.point.table, clock.point.address)])
                    .collect();
                tables.lock().unwrap_or_else(PoisonError::into_inner).lockstep.push(Lockstep {
                    device: d.device.to_string(),
                    points: d.points.clone(),
                    clock: clock.clone(),
                    addresses,
                    unread: HashSet::new(),
                    serving: 0,
                    waiting,
                });
            }
            devices.by_device.insert(
                d.device.to_string(),
                Served { points: d.points.clone(), clock: d.clock.clone(), tables: tables.clone(), loaded },
            );
        }
        tables.lock().unwrap_or_else(PoisonError::into_inner).advance();
        let progress = devices.progress.clone();
        tokio::spawn(async move {
            let server = Server::new(listener);
            let new_service = move |_addr: SocketAddr| {
                Ok(Some(Service { tables: tables.clone(), progress: progress.clone() }))
            };
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
    progress: Arc<Notify>,
}

impl tokio_modbus::server::Service for Service {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let words = |holding: bool, addr: u16, count: u16| -> Vec<u16> {
            (0..count)
                .map(|i| tables.cells.registers.get(&(holding, addr.wrapping_add(i))).copied().unwrap_or(0))
                .collect()
        };
        let bits = |coil: bool, addr: u16, count: u16| -> Vec<bool> {
            (0..count)
                .map(|i| tables.cells.bits.get(&(coil, addr.wrapping_add(i))).copied().unwrap_or(false))
                .collect()
        };
        let (answer, read) = match req {
            Request::ReadHoldingRegisters(a, n) => {
                (Ok(Response::ReadHoldingRegisters(words(true, a, n))), Some((Table::HoldingRegister, a, n)))
            }
            Request::ReadInputRegisters(a, n) => {
                (Ok(Response::ReadInputRegisters(words(false, a, n))), Some((Table::InputRegister, a, n)))
            }
            Request::ReadCoils(a, n) => {
                (Ok(Response::ReadCoils(bits(true, a, n))), Some((Table::Coil, a, n)))
            }
            Request::ReadDiscreteInputs(a, n) => {
                (Ok(Response::ReadDiscreteInputs(bits(false, a, n))), Some((Table::DiscreteInput, a, n)))
            }
            // A replayed device reports what was recorded: writes are refused.
            _ => (Err(ExceptionCode::IllegalFunction), None),
        };
        // The answer holds the sample as it was; the next sample is served after it.
        if let Some((table, a, n)) = read
            && tables.read(table, a, n)
        {
            self.progress.notify_waiters();
        }
        future::ready(answer)
    }
}
