//! A bus: one connection (a TCP socket, a serial line, or a serial server reached over TCP)
//! and the devices behind it, polled one request at a time.
//!
//! Scheduling: the bus polls whichever device is due next; a device's requests (its read plan)
//! run back to back, then the next device's. A serial line carries one request at a time by
//! nature, and the bus keeps the 3.5-character silence the baud rate needs between frames.
//! Each device has its own circuit breaker: a device whose poll fails entirely (every request
//! timed out, failed, or answered an exception) is backed off with jittered exponential delays
//! up to `breaker_max`, then tried again, while the others keep their poll rate. A silent
//! unit therefore costs the line one timeout per backoff period, not one per poll.
//!
//! Every request is wrapped in the device's timeout (tokio-modbus has none of its own). After
//! a timeout the connection is dropped and opened again before the next request: a late answer
//! would otherwise be taken for the answer to the next request (slowtec/tokio-modbus #324).
//! Connecting, too, backs off with jitter.
//!
//! An exception response is an answer: each point of the request becomes a bad-quality reading
//! (recorded, not aggregated) and the code is counted. Writes (commands) go through the same
//! queue as polls, between two polls, with the same encoding as reads.

use super::batch::Batcher;
use super::clock::DeviceClock;
use super::mbap::TcpClient;
use super::plan::{Read, plan};
use super::point::{Point, Table};
use crate::backoff::Backoff;
use crate::metrics::AdapterMetrics;
use fieldgate_proto::{CommandError, DeviceId, Quality, Reading, Source, Timestamp};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tokio_util::sync::CancellationToken;

/// How the bus reaches its devices.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// Modbus TCP (MBAP framing) to `host:port`.
    Tcp(String),
    /// RTU frames through a serial server reached over TCP (`host:port`).
    RtuOverTcp(String),
    /// RTU on a serial line.
    Rtu(SerialSettings),
}

/// A serial line's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialSettings {
    pub path: String,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl Transport {
    /// How the bus is named in logs and health.
    pub fn describe(&self) -> String {
        match self {
            Transport::Tcp(a) => format!("tcp://{a}"),
            Transport::RtuOverTcp(a) => format!("rtu-over-tcp://{a}"),
            Transport::Rtu(s) => format!("{} at {} baud", s.path, s.baud),
        }
    }

    /// The silence a serial line needs between frames: 3.5 characters of 11 bits, or 1.75 ms
    /// above 19,200 baud (Modbus over serial line 1.02, 2.5.1.1). None for TCP.
    pub fn frame_gap(&self) -> Duration {
        match self {
            Transport::Rtu(s) if s.baud > 19_200 => Duration::from_micros(1750),
            Transport::Rtu(s) => Duration::from_micros(3_500_000 * 11 / u64::from(s.baud.max(1))),
            _ => Duration::ZERO,
        }
    }
}

/// One device on a bus.
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    pub device: DeviceId,
    pub unit: u8,
    pub poll: Duration,
    pub timeout: Duration,
    /// Further attempts of a request that timed out or failed (not of one answered with an
    /// exception).
    pub retries: u32,
    pub points: Vec<Point>,
    /// Largest hole to read through when merging requests.
    pub max_gap: u16,
    /// The device's own clock, if it has one: its readings then carry the device's time.
    pub clock: Option<DeviceClock>,
}

/// A bus and its devices.
#[derive(Debug, Clone)]
pub struct BusSettings {
    pub transport: Transport,
    pub devices: Vec<DeviceSettings>,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// The longest a failing device is backed off.
    pub breaker_max: Duration,
}

/// A device's health as the bus sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceHealth {
    /// Not polled yet.
    Starting,
    Ok,
    /// Backed off after a failed poll; the text says why.
    BackedOff(String),
}

/// The health of every device of every bus, shared (each bus updates its own entries).
pub type HealthBoard = watch::Sender<BTreeMap<DeviceId, DeviceHealth>>;

/// A write for the bus: one point of one device, and where to report the outcome.
#[derive(Debug)]
pub struct WriteRequest {
    pub device: DeviceId,
    pub metric: fieldgate_proto::Metric,
    pub value: f64,
    pub done: oneshot::Sender<Result<String, CommandError>>,
}

/// What failed in a request.
#[derive(Debug)]
pub(crate) enum Failure {
    Exception(ExceptionCode),
    Timeout,
    /// Transport or protocol error (the text says which).
    Error(String),
}

impl Failure {
    pub(crate) fn describe(&self, timeout: Duration) -> String {
        match self {
            Failure::Exception(code) => format!("exception {}", exception_name(*code)),
            Failure::Timeout => format!("no answer within {timeout:?}"),
            Failure::Error(e) => e.clone(),
        }
    }
}

/// The metrics label of an exception code.
pub fn exception_name(code: ExceptionCode) -> &'static str {
    match code {
        ExceptionCode::IllegalFunction => "illegal_function",
        ExceptionCode::IllegalDataAddress => "illegal_data_address",
        ExceptionCode::IllegalDataValue => "illegal_data_value",
        ExceptionCode::ServerDeviceFailure => "server_device_failure",
        ExceptionCode::Acknowledge => "acknowledge",
        ExceptionCode::ServerDeviceBusy => "server_device_busy",
        ExceptionCode::MemoryParityError => "memory_parity_error",
        ExceptionCode::GatewayPathUnavailable => "gateway_path_unavailable",
        ExceptionCode::GatewayTargetDevice => "gateway_target_device",
        _ => "other",
    }
}

struct Device {
    s: DeviceSettings,
    /// The requests of a poll: every point, and the clock (planned as the point after the
    /// last).
    reads: Vec<Read>,
    /// The clock's time at the last poll that read it.
    last_clock: Option<Timestamp>,
    due: Instant,
    breaker: Backoff,
    backed_off: bool,
}

/// One request of a bus.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op<'a> {
    Read(&'a Read),
    /// FC5.
    WriteCoil(u16, bool),
    /// FC6 for one register, FC16 for more.
    WriteRegisters(u16, &'a [u16]),
}

impl Op<'_> {
    fn request(&self) -> Request<'_> {
        match *self {
            Op::Read(read) => {
                let (a, n) = (read.address, read.count);
                match read.table {
                    Table::Coil => Request::ReadCoils(a, n),
                    Table::DiscreteInput => Request::ReadDiscreteInputs(a, n),
                    Table::InputRegister => Request::ReadInputRegisters(a, n),
                    Table::HoldingRegister => Request::ReadHoldingRegisters(a, n),
                }
            }
            Op::WriteCoil(a, on) => Request::WriteSingleCoil(a, on),
            Op::WriteRegisters(a, [word]) => Request::WriteSingleRegister(a, *word),
            Op::WriteRegisters(a, words) => Request::WriteMultipleRegisters(a, Cow::Borrowed(words)),
        }
    }

    /// What `response` (of this request's function) gave: an answer with fewer values than
    /// asked for, or a write echoed back with other values, is an error, never a short read.
    fn data(&self, response: Response) -> Result<Data, String> {
        match (*self, response) {
            (Op::Read(read), Response::ReadCoils(mut bits) | Response::ReadDiscreteInputs(mut bits)) => {
                // Bits come packed eight to a byte: the last byte's spare bits are padding.
                if bits.len() < usize::from(read.count) {
                    return Err(format!("answered {} bits of the {} asked for", bits.len(), read.count));
                }
                bits.truncate(usize::from(read.count));
                Ok(Data::Bits(bits))
            }
            (Op::Read(read), Response::ReadInputRegisters(words) | Response::ReadHoldingRegisters(words)) => {
                if words.len() != usize::from(read.count) {
                    return Err(format!(
                        "answered {} registers of the {} asked for",
                        words.len(),
                        read.count
                    ));
                }
                Ok(Data::Words(words))
            }
            (Op::WriteCoil(a, on), Response::WriteSingleCoil(echo_a, echo_on))
                if (a, on) == (echo_a, echo_on) =>
            {
                Ok(Data::Written)
            }
            (Op::WriteRegisters(a, [word]), Response::WriteSingleRegister(echo_a, echo_word))
                if (a, *word) == (echo_a, echo_word) =>
            {
                Ok(Data::Written)
            }
            (Op::WriteRegisters(a, words), Response::WriteMultipleRegisters(echo_a, echo_n))
                if (a, words.len()) == (echo_a, usize::from(echo_n)) =>
            {
                Ok(Data::Written)
            }
            (_, other) => Err(format!("the answer does not match the request: {other:?}")),
        }
    }
}

/// What a request gave: values by the table kind, or a confirmed write.
pub(crate) enum Data {
    Bits(Vec<bool>),
    Words(Vec<u16>),
    Written,
}

/// Poll the bus's devices until `shutdown`, and carry out writes from `writes`.
pub async fn run(
    settings: BusSettings,
    batcher: Batcher,
    mut writes: mpsc::Receiver<WriteRequest>,
    metrics: AdapterMetrics,
    health: HealthBoard,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let name = settings.transport.describe();
    let now = Instant::now();
    let breaker_max = settings.breaker_max;
    let mut devices: Vec<Device> = settings
        .devices
        .into_iter()
        .map(|d| Device {
            reads: plan(
                &d.points.iter().chain(d.clock.as_ref().map(|c| &c.point)).cloned().collect::<Vec<_>>(),
                d.max_gap,
            ),
            last_clock: None,
            due: now,
            breaker: Backoff::new(d.poll.max(Duration::from_millis(100)), breaker_max),
            backed_off: false,
            s: d,
        })
        .collect();
    for d in &devices {
        tracing::info!(
            bus = %name,
            device = %d.s.device,
            unit = d.s.unit,
            points = d.s.points.len(),
            requests = d.reads.len(),
            "modbus device planned"
        );
    }
    health.send_modify(|h| {
        for d in &devices {
            h.insert(d.s.device.clone(), DeviceHealth::Starting);
        }
    });
    let mut link = Link::new(settings.transport.clone());
    let mut reconnect = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let mut reconnect_at = now;
    // Whether the connection is known to be down (so its return is worth a log line; the
    // routine reopening after a timeout is not).
    let mut announced = false;
    loop {
        let next = devices.iter().enumerate().min_by_key(|(_, d)| d.due).map(|(i, d)| (i, d.due));
        let Some((i, due)) = next else {
            // A bus without devices only serves writes (none can match) until shutdown.
            shutdown.cancelled().await;
            return Ok(());
        };
        let due = due.max(reconnect_at);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(w) = writes.recv() => {
                // A request in flight is abandoned at shutdown, however long its timeout: the
                // caller is told the bus stopped (its `done` is dropped).
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    outcome = write(&mut link, &devices, &w, &metrics) => { let _ = w.done.send(outcome); }
                }
            }
            () = tokio::time::sleep_until(due) => {
                if link.ctx.is_none() {
                    match link.connect(devices[i].s.timeout).await {
                        Ok(()) => {
                            reconnect.reset();
                            if !announced {
                                tracing::info!(bus = %name, "modbus connected");
                                announced = true;
                            }
                        }
                        Err(e) => {
                            metrics.modbus_connect_failures.inc();
                            announced = false;
                            let delay = reconnect.next_delay();
                            reconnect_at = Instant::now() + delay;
                            let why = format!("cannot connect to {name}: {e}");
                            tracing::warn!(bus = %name, error = %e, retry_in = ?delay, "modbus connect failed");
                            health.send_modify(|h| {
                                for d in &devices {
                                    h.insert(d.s.device.clone(), DeviceHealth::BackedOff(why.clone()));
                                }
                            });
                            continue;
                        }
                    }
                }
                let polled = tokio::select! {
                    biased;
                    // The readings of an unfinished poll were never acknowledged to anyone.
                    () = shutdown.cancelled() => break,
                    polled = poll_device(&mut link, &mut devices[i], &batcher, &metrics, &health, &name) => polled,
                };
                if let Err(e) = polled {
                    // The pipeline closes its input once the gateway stops: not a failure then.
                    if shutdown.is_cancelled() {
                        break;
                    }
                    return Err(e);
                }
            }
        }
    }
    if let Some(mut ctx) = link.ctx.take() {
        let _ = ctx.disconnect().await;
    }
    Ok(())
}

/// An open connection: Modbus TCP with the gateway's own lean framing ([`super::mbap`]), RTU
/// through tokio-modbus's client.
enum Conn {
    Tcp(TcpClient),
    Rtu(Context),
}

impl Conn {
    async fn call(&mut self, unit: u8, request: Request<'_>) -> tokio_modbus::Result<Response> {
        match self {
            Conn::Tcp(c) => c.call(unit, &request).await,
            Conn::Rtu(ctx) => {
                ctx.set_slave(Slave(unit));
                ctx.call(request).await
            }
        }
    }

    async fn disconnect(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Tcp(c) => c.disconnect().await,
            Conn::Rtu(ctx) => ctx.disconnect().await,
        }
    }
}

/// The connection of a bus, opened on demand and dropped after a timeout or an error.
pub(crate) struct Link {
    transport: Transport,
    ctx: Option<Conn>,
    /// When the last frame ended (for the serial silence).
    last_frame: Option<Instant>,
    gap: Duration,
}

impl Link {
    pub(crate) fn new(transport: Transport) -> Self {
        let gap = transport.frame_gap();
        Link { transport, ctx: None, last_frame: None, gap }
    }

    pub(crate) async fn connect(&mut self, timeout: Duration) -> std::io::Result<()> {
        let slave = Slave(0);
        let ctx = match &self.transport {
            Transport::Tcp(addr) | Transport::RtuOverTcp(addr) => {
                let stream = tokio::time::timeout(
                    timeout.max(Duration::from_secs(1)),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
                let _ = stream.set_nodelay(true);
                match self.transport {
                    Transport::Tcp(_) => Conn::Tcp(TcpClient::new(stream)),
                    _ => Conn::Rtu(tokio_modbus::client::rtu::attach_slave(stream, slave)),
                }
            }
            Transport::Rtu(s) => {
                let port = open_serial(s)?;
                Conn::Rtu(tokio_modbus::client::rtu::attach_slave(port, slave))
            }
        };
        self.ctx = Some(ctx);
        Ok(())
    }

    /// Run one request with `timeout`, keeping the line's silence before it.
    pub(crate) async fn request(&mut self, unit: u8, op: Op<'_>, timeout: Duration) -> Result<Data, Failure> {
        if let Some(last) = self.last_frame {
            tokio::time::sleep_until(last + self.gap).await;
        }
        let Some(conn) = self.ctx.as_mut() else { return Err(Failure::Error("not connected".into())) };
        let outcome = tokio::time::timeout(timeout, conn.call(unit, op.request())).await;
        self.last_frame = Some(Instant::now());
        match outcome {
            Ok(Ok(Ok(response))) => op.data(response).map_err(Failure::Error),
            Ok(Ok(Err(code))) => Err(Failure::Exception(code)),
            Ok(Err(e)) => {
                self.ctx = None;
                Err(Failure::Error(e.to_string()))
            }
            Err(_) => {
                // A late answer must not be read as the next one's: start afresh.
                self.ctx = None;
                Err(Failure::Timeout)
            }
        }
    }
}

fn open_serial(s: &SerialSettings) -> std::io::Result<tokio_serial::SerialStream> {
    use tokio_serial::SerialPortBuilderExt;
    let parity = match s.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let data_bits = match s.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let stop_bits = if s.stop_bits == 2 { tokio_serial::StopBits::Two } else { tokio_serial::StopBits::One };
    tokio_serial::new(&s.path, s.baud)
        .parity(parity)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .open_native_async()
        .map_err(std::io::Error::other)
}

/// Poll every request of one device, hand the readings to the store, and schedule its next
/// poll (or back it off).
async fn poll_device(
    link: &mut Link,
    d: &mut Device,
    batcher: &Batcher,
    metrics: &AdapterMetrics,
    health: &HealthBoard,
    bus: &str,
) -> Result<(), String> {
    let started = d.due;
    let mut readings = Vec::new();
    let mut answered = 0usize;
    let mut last_failure = None;
    // One time for the whole poll (its first answer): the readings of a poll are one sample
    // of the device, and line up by time when pivoted.
    let mut answered_at = None;
    let mut device_time = None;
    for read in &d.reads {
        let mut attempt = 0;
        let result = loop {
            if link.ctx.is_none() && link.connect(d.s.timeout).await.is_err() {
                break Err(Failure::Error(format!("cannot connect to {bus}")));
            }
            match link.request(d.s.unit, Op::Read(read), d.s.timeout).await {
                Err(Failure::Timeout | Failure::Error(_)) if attempt < d.s.retries => attempt += 1,
                other => break other,
            }
        };
        let ts = *answered_at.get_or_insert_with(Timestamp::now);
        match result {
            Ok(data) => {
                metrics.modbus_request("ok");
                answered += 1;
                for &(p, offset) in &read.points {
                    let Some(point) = d.s.points.get(p) else {
                        // The clock, planned after the points.
                        device_time = d.s.clock.as_ref().map(|c| read_clock(c, &data, offset));
                        continue;
                    };
                    let value = match &data {
                        Data::Bits(bits) => bits.get(usize::from(offset)).map(|b| Ok(point.decode_bit(*b))),
                        Data::Words(words) => {
                            let at = usize::from(offset);
                            words.get(at..at + usize::from(point.width())).map(|w| point.decode_registers(w))
                        }
                        Data::Written => None,
                    };
                    readings.push(match value {
                        Some(Ok(v)) => reading(&d.s.device, point, ts, v, Quality::Good),
                        // A string that is not a number, or a short answer: the device said
                        // something, but not a value. Recorded as bad, counted and logged.
                        other => {
                            let why = match other {
                                Some(Err(e)) => e.to_string(),
                                _ => format!("the answer is too short for {}", point.metric),
                            };
                            let place = format!("{} {}", d.s.device, point.metric);
                            metrics.rejected("modbus", "undecodable", &place, &why);
                            reading(&d.s.device, point, ts, f64::NAN, Quality::Bad)
                        }
                    });
                }
            }
            Err(f) => {
                match &f {
                    Failure::Exception(code) => {
                        metrics.modbus_request("exception");
                        metrics.modbus_exception(exception_name(*code));
                        readings.extend(read.points.iter().filter_map(|&(p, _)| {
                            let point = d.s.points.get(p)?;
                            Some(reading(&d.s.device, point, ts, f64::NAN, Quality::Bad))
                        }));
                    }
                    Failure::Timeout => metrics.modbus_request("timeout"),
                    Failure::Error(_) => metrics.modbus_request("error"),
                }
                last_failure = Some(f);
            }
        }
    }
    metrics.modbus_points.inc_by(readings.len() as u64);
    if let Some(clock) = &d.s.clock
        && let Some(read) = device_time
    {
        let now = answered_at.unwrap_or_else(Timestamp::now);
        let believed =
            read.and_then(|t| t.ok_or_else(|| "the device's clock reads zero (never set)".to_owned()));
        match believed.and_then(|t| clock.check(t, now)) {
            Ok(t) if d.last_clock == Some(t) => readings.clear(),
            Ok(t) => {
                d.last_clock = Some(t);
                readings.iter_mut().for_each(|r| r.ts = t);
            }
            Err(why) => {
                let why = format!("{why}; the poll is stored at the gateway's time");
                metrics.rejected("modbus", "device_time", d.s.device.as_str(), &why);
            }
        }
    }
    if !readings.is_empty() {
        batcher.add(readings).await.map_err(|e| e.to_string())?;
    }
    let now = Instant::now();
    let all_failed = answered == 0 && !d.reads.is_empty();
    if all_failed {
        let why = last_failure.map_or_else(String::new, |f| f.describe(d.s.timeout));
        let delay = d.breaker.next_delay();
        d.due = now + delay;
        if !d.backed_off {
            metrics.modbus_backed_off.inc();
            d.backed_off = true;
        }
        tracing::warn!(bus, device = %d.s.device, unit = d.s.unit, reason = %why, retry_in = ?delay, "modbus device backed off");
        let detail = format!("{why}; next try in {delay:.1?}");
        health.send_modify(|h| {
            h.insert(d.s.device.clone(), DeviceHealth::BackedOff(detail));
        });
        return Ok(());
    }
    if d.backed_off {
        metrics.modbus_backed_off.dec();
        d.backed_off = false;
        tracing::info!(bus, device = %d.s.device, "modbus device answers again");
    }
    d.breaker.reset();
    health.send_if_modified(|h| h.insert(d.s.device.clone(), DeviceHealth::Ok) != Some(DeviceHealth::Ok));
    // Keep the phase. A poll that took longer than the interval (a slow line) is followed by
    // the next one at once, without a burst to catch up the missed ones.
    d.due = (started + d.s.poll).max(now);
    Ok(())
}

/// The time in a device's clock registers at `offset` of an answer.
fn read_clock(clock: &DeviceClock, data: &Data, offset: u16) -> Result<Option<Timestamp>, String> {
    let at = usize::from(offset);
    match data {
        Data::Words(words) => match words.get(at..at + usize::from(clock.point.width())) {
            Some(w) => clock.decode(w).map_err(|e| e.to_string()),
            None => Err("the answer is too short for the clock".to_owned()),
        },
        _ => Err("the clock's request gave no registers".to_owned()),
    }
}

fn reading(device: &DeviceId, p: &Point, ts: Timestamp, value: f64, quality: Quality) -> Reading {
    Reading { device: device.clone(), metric: p.metric.clone(), ts, value, quality, source: Source::Modbus }
}

/// Carry out a write: FC5 for a coil, FC6 for a one-register value, FC16 for wider ones.
async fn write(
    link: &mut Link,
    devices: &[Device],
    w: &WriteRequest,
    metrics: &AdapterMetrics,
) -> Result<String, CommandError> {
    let d = devices
        .iter()
        .find(|d| d.s.device == w.device)
        .ok_or_else(|| CommandError::UnknownDevice(format!("`{}` is not on this Modbus bus", w.device)))?;
    let point = d.s.points.iter().find(|p| p.metric == w.metric).ok_or_else(|| {
        CommandError::Unsupported(format!("`{}` has no Modbus point named `{}`", w.device, w.metric))
    })?;
    if !point.table.is_writable() {
        return Err(CommandError::Unsupported(format!(
            "`{}` of `{}` is a {}, which Modbus cannot write",
            w.metric, w.device, point.table
        )));
    }
    let words = if point.table.is_bits() {
        None
    } else {
        Some(
            point
                .encode_registers(w.value)
                .map_err(|e| CommandError::Unsupported(format!("{}: {e}", w.metric)))?,
        )
    };
    if link.ctx.is_none() {
        link.connect(d.s.timeout).await.map_err(|e| {
            CommandError::Unreachable(format!("cannot connect to {}: {e}", link.transport.describe()))
        })?;
    }
    let op = match &words {
        None => Op::WriteCoil(point.address, w.value != 0.0),
        Some(words) => Op::WriteRegisters(point.address, words),
    };
    let result = match link.request(d.s.unit, op, d.s.timeout).await {
        Ok(_) => Ok(format!(
            "wrote {} to {} {} (unit {}) of {}",
            w.value, point.table, point.address, d.s.unit, w.device
        )),
        Err(Failure::Exception(code)) => Err(CommandError::Refused(format!(
            "{} answered the write with exception {}",
            w.device,
            exception_name(code)
        ))),
        Err(Failure::Error(e)) => Err(CommandError::Unreachable(format!("writing to {}: {e}", w.device))),
        Err(Failure::Timeout) => Err(CommandError::Timeout(format!(
            "{} did not answer the write within {:?}; it may or may not have taken effect",
            w.device, d.s.timeout
        ))),
    };
    metrics.modbus_write(if result.is_ok() { "ok" } else { "failed" });
    result
}
