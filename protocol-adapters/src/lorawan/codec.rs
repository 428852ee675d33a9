//! Payload codecs: what the bytes of a device's FRMPayload mean. Pure functions both ways, so
//! the gateway decodes with the same code field-sim encodes with, and a setpoint command is
//! encoded by the same definition its readings are decoded by.
//!
//! Two kinds, chosen per device profile:
//! - [`Codec::CayenneLpp`]: Cayenne Low Power Payload, a self-describing list of
//!   `channel | type | value` entries. A value becomes the metric `<type>_<channel>`
//!   (`temperature_3`); the three-axis types give `<type>_<axis>_<channel>`.
//! - [`Codec::Layout`]: fixed fields at byte offsets, declared in the config (type, byte order,
//!   scale, offset), for devices with their own binary format.

use fieldgate_proto::Metric;

/// Why a payload could not be decoded, or a value not encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("payload of {len} bytes ends inside {what} at byte {at}")]
    Truncated { what: String, at: usize, len: usize },
    #[error("Cayenne LPP type {kind} at byte {at} is not one this gateway knows")]
    UnknownLppType { kind: u8, at: usize },
    #[error("the frame came on port {got}; this device's layout is for port {expected}")]
    WrongPort { got: u8, expected: u8 },
    #[error("the payload is empty")]
    Empty,
    #[error("`{0}` is not a value this device's codec can encode")]
    NotEncodable(String),
    #[error("{value} does not fit {what}")]
    OutOfRange { value: f64, what: String },
}

impl CodecError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CodecError::Truncated { .. } => "payload_truncated",
            CodecError::UnknownLppType { .. } => "unknown_lpp_type",
            CodecError::WrongPort { .. } => "unexpected_port",
            CodecError::Empty => "empty_payload",
            CodecError::NotEncodable(_) | CodecError::OutOfRange { .. } => "not_encodable",
        }
    }
}

/// How a device profile's payloads are read and written.
#[derive(Debug, Clone, PartialEq)]
pub enum Codec {
    CayenneLpp,
    Layout(Layout),
}

/// A fixed binary layout: fields at offsets of the FRMPayload.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Uplinks on other ports are refused (a device's status frames, say); `None` takes any.
    pub port: Option<u8>,
    pub fields: Vec<Field>,
}

/// One field of a [`Layout`]: `value = raw * scale + offset`.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub metric: Metric,
    /// Where the field starts in the payload, in bytes.
    pub at: usize,
    pub ty: FieldType,
    pub big_endian: bool,
    pub scale: f64,
    pub offset: f64,
}

/// The binary type of a [`Field`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    U8,
    I8,
    U16,
    I16,
    U24,
    I24,
    U32,
    I32,
    F32,
}

impl FieldType {
    pub fn parse(name: &str) -> Option<FieldType> {
        Some(match name {
            "u8" => FieldType::U8,
            "i8" => FieldType::I8,
            "u16" => FieldType::U16,
            "i16" => FieldType::I16,
            "u24" => FieldType::U24,
            "i24" => FieldType::I24,
            "u32" => FieldType::U32,
            "i32" => FieldType::I32,
            "f32" => FieldType::F32,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            FieldType::U8 | FieldType::I8 => 1,
            FieldType::U16 | FieldType::I16 => 2,
            FieldType::U24 | FieldType::I24 => 3,
            FieldType::U32 | FieldType::I32 | FieldType::F32 => 4,
        }
    }

    fn signed(self) -> bool {
        matches!(self, FieldType::I8 | FieldType::I16 | FieldType::I24 | FieldType::I32)
    }
}

/// The Cayenne LPP types: id, name, bytes per axis, axes, resolution, signed.
const LPP: &[(u8, &str, usize, usize, f64, bool)] = &[
    (0, "digital_input", 1, 1, 1.0, false),
    (1, "digital_output", 1, 1, 1.0, false),
    (2, "analog_input", 2, 1, 0.01, true),
    (3, "analog_output", 2, 1, 0.01, true),
    (100, "generic", 4, 1, 1.0, false),
    (101, "illuminance", 2, 1, 1.0, false),
    (102, "presence", 1, 1, 1.0, false),
    (103, "temperature", 2, 1, 0.1, true),
    (104, "humidity", 1, 1, 0.5, false),
    (113, "accelerometer", 2, 3, 0.001, true),
    (115, "barometer", 2, 1, 0.1, false),
    (116, "voltage", 2, 1, 0.01, false),
    (117, "current", 2, 1, 0.001, false),
    (118, "frequency", 4, 1, 1.0, false),
    (120, "percentage", 1, 1, 1.0, false),
    (121, "altitude", 2, 1, 1.0, true),
    (125, "concentration", 2, 1, 1.0, false),
    (128, "power", 2, 1, 1.0, false),
    (130, "distance", 4, 1, 0.001, false),
    (131, "energy", 4, 1, 0.001, false),
    (132, "direction", 2, 1, 1.0, false),
    (134, "gyrometer", 2, 3, 0.01, true),
    (136, "gps", 3, 3, 0.0, true),
];

const AXES: [&str; 3] = ["x", "y", "z"];
const GPS: [(&str, f64); 3] = [("latitude", 0.0001), ("longitude", 0.0001), ("altitude", 0.01)];

fn lpp_type(kind: u8) -> Option<&'static (u8, &'static str, usize, usize, f64, bool)> {
    LPP.iter().find(|t| t.0 == kind)
}

fn read_int(bytes: &[u8], big_endian: bool, signed: bool) -> i64 {
    let mut v: u64 = 0;
    for i in 0..bytes.len() {
        let b = if big_endian { bytes[i] } else { bytes[bytes.len() - 1 - i] };
        v = (v << 8) | u64::from(b);
    }
    let bits = 8 * bytes.len() as u32;
    if signed && bits < 64 && v & (1 << (bits - 1)) != 0 { (v as i64) - (1i64 << bits) } else { v as i64 }
}

fn write_int(v: i64, size: usize, big_endian: bool, out: &mut Vec<u8>) {
    let le = v.to_le_bytes();
    if big_endian {
        out.extend(le[..size].iter().rev());
    } else {
        out.extend_from_slice(&le[..size]);
    }
}

/// The integer a scaled value is stored as, refused when it does not fit `size` bytes.
fn to_raw(value: f64, resolution: f64, size: usize, signed: bool, what: &str) -> Result<i64, CodecError> {
    let raw = (value / resolution).round();
    let bits = 8 * size as i32;
    let (lo, hi) = if signed {
        (-(2f64.powi(bits - 1)), 2f64.powi(bits - 1) - 1.0)
    } else {
        (0.0, 2f64.powi(bits) - 1.0)
    };
    if !raw.is_finite() || raw < lo || raw > hi {
        return Err(CodecError::OutOfRange { value, what: what.to_owned() });
    }
    Ok(raw as i64)
}

/// `raw * scale`, computed as `raw / (1 / scale)` when that divisor is a whole number, so a
/// tenth-degree 272 reads 27.2 and not 27.200000000000003.
fn scaled(raw: f64, scale: f64) -> f64 {
    let divisor = 1.0 / scale;
    if scale < 1.0 && (divisor - divisor.round()).abs() < 1e-9 { raw / divisor.round() } else { raw * scale }
}

fn metric(name: &str) -> Metric {
    Metric::new(name).expect("codec metric names use letters, digits and _")
}

impl Codec {
    /// The values of an uplink's FRMPayload that came on `port`.
    pub fn decode(&self, port: u8, payload: &[u8]) -> Result<Vec<(Metric, f64)>, CodecError> {
        match self {
            Codec::CayenneLpp => decode_lpp(payload),
            Codec::Layout(layout) => layout.decode(port, payload),
        }
    }

    /// The bytes that set `metric` to `value` on the device (a downlink for a `set` command).
    pub fn encode_setpoint(&self, metric: &Metric, value: f64) -> Result<Vec<u8>, CodecError> {
        match self {
            Codec::CayenneLpp => {
                let (kind, channel) = parse_lpp_metric(metric.as_str())
                    .ok_or_else(|| CodecError::NotEncodable(metric.to_string()))?;
                let mut out = Vec::new();
                encode_lpp(channel, kind, &[value], &mut out)?;
                Ok(out)
            }
            Codec::Layout(layout) => {
                let field = layout
                    .fields
                    .iter()
                    .find(|f| &f.metric == metric)
                    .ok_or_else(|| CodecError::NotEncodable(metric.to_string()))?;
                let mut out = Vec::new();
                field.encode(value, &mut out)?;
                Ok(out)
            }
        }
    }

    /// A whole uplink payload holding `values` (field-sim's devices send these).
    pub fn encode(&self, values: &[(Metric, f64)]) -> Result<Vec<u8>, CodecError> {
        match self {
            Codec::CayenneLpp => {
                let mut out = Vec::new();
                for (m, v) in values {
                    let (kind, channel) = parse_lpp_metric(m.as_str())
                        .ok_or_else(|| CodecError::NotEncodable(m.to_string()))?;
                    encode_lpp(channel, kind, &[*v], &mut out)?;
                }
                Ok(out)
            }
            Codec::Layout(layout) => {
                let len = layout.fields.iter().map(|f| f.at + f.ty.size()).max().unwrap_or(0);
                let mut out = vec![0u8; len];
                for (m, v) in values {
                    let field = layout
                        .fields
                        .iter()
                        .find(|f| &f.metric == m)
                        .ok_or_else(|| CodecError::NotEncodable(m.to_string()))?;
                    let mut bytes = Vec::with_capacity(4);
                    field.encode(*v, &mut bytes)?;
                    out[field.at..field.at + bytes.len()].copy_from_slice(&bytes);
                }
                Ok(out)
            }
        }
    }
}

impl Layout {
    fn decode(&self, port: u8, payload: &[u8]) -> Result<Vec<(Metric, f64)>, CodecError> {
        if let Some(expected) = self.port
            && expected != port
        {
            return Err(CodecError::WrongPort { got: port, expected });
        }
        self.fields
            .iter()
            .map(|f| {
                let end = f.at + f.ty.size();
                let bytes = payload.get(f.at..end).ok_or_else(|| CodecError::Truncated {
                    what: format!("field `{}`", f.metric),
                    at: f.at,
                    len: payload.len(),
                })?;
                let raw = match f.ty {
                    FieldType::F32 => {
                        let b = [bytes[0], bytes[1], bytes[2], bytes[3]];
                        f64::from(if f.big_endian { f32::from_be_bytes(b) } else { f32::from_le_bytes(b) })
                    }
                    ty => read_int(bytes, f.big_endian, ty.signed()) as f64,
                };
                Ok((f.metric.clone(), scaled(raw, f.scale) + f.offset))
            })
            .collect()
    }
}

impl Field {
    fn encode(&self, value: f64, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let raw = (value - self.offset) / self.scale;
        if self.ty == FieldType::F32 {
            let v = raw as f32;
            out.extend_from_slice(&if self.big_endian { v.to_be_bytes() } else { v.to_le_bytes() });
            return Ok(());
        }
        let what = format!("field `{}`", self.metric);
        let int = to_raw(raw, 1.0, self.ty.size(), self.ty.signed(), &what)?;
        write_int(int, self.ty.size(), self.big_endian, out);
        Ok(())
    }
}

fn decode_lpp(payload: &[u8]) -> Result<Vec<(Metric, f64)>, CodecError> {
    if payload.is_empty() {
        return Err(CodecError::Empty);
    }
    let mut values = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let truncated = |what: &str| CodecError::Truncated { what: what.to_owned(), at, len: payload.len() };
        let (channel, kind) = match payload.get(at..at + 2) {
            Some(h) => (h[0], h[1]),
            None => return Err(truncated("an LPP header")),
        };
        let &(_, name, size, axes, resolution, signed) =
            lpp_type(kind).ok_or(CodecError::UnknownLppType { kind, at: at + 1 })?;
        let body = payload.get(at + 2..at + 2 + size * axes).ok_or_else(|| truncated(name))?;
        for axis in 0..axes {
            let raw = read_int(&body[axis * size..(axis + 1) * size], true, signed) as f64;
            let (metric_name, value) = match (kind, axes) {
                (136, _) => (format!("gps_{}_{channel}", GPS[axis].0), scaled(raw, GPS[axis].1)),
                (_, 3) => (format!("{name}_{}_{channel}", AXES[axis]), scaled(raw, resolution)),
                _ => (format!("{name}_{channel}"), scaled(raw, resolution)),
            };
            values.push((metric(&metric_name), value));
        }
        at += 2 + size * axes;
    }
    Ok(values)
}

/// `temperature_3` as (103, 3); only single-valued types.
fn parse_lpp_metric(name: &str) -> Option<(u8, u8)> {
    let (kind, channel) = name.rsplit_once('_')?;
    let channel = channel.parse().ok()?;
    LPP.iter().find(|t| t.1 == kind && t.3 == 1).map(|t| (t.0, channel))
}

/// Append one LPP entry of type `kind` (single-valued types take one value).
pub fn encode_lpp(channel: u8, kind: u8, values: &[f64], out: &mut Vec<u8>) -> Result<(), CodecError> {
    let &(_, name, size, axes, resolution, signed) =
        lpp_type(kind).ok_or(CodecError::UnknownLppType { kind, at: 0 })?;
    if values.len() != axes {
        return Err(CodecError::NotEncodable(format!("{name} takes {axes} values")));
    }
    out.extend_from_slice(&[channel, kind]);
    for (axis, v) in values.iter().enumerate() {
        let res = if kind == 136 { GPS[axis].1 } else { resolution };
        let raw = to_raw(*v, res, size, signed, &format!("Cayenne LPP {name}"))?;
        write_int(raw, size, true, out);
    }
    Ok(())
}

/// The FPort of operator instructions (harvest coordination) to a machine's LoRaWAN terminal.
pub const INSTRUCTION_PORT: u8 = 12;

/// The byte of each task in an instruction downlink.
const TASKS: [(fieldgate_proto::Task, u8); 4] = [
    (fieldgate_proto::Task::Serve, 1),
    (fieldgate_proto::Task::UnloadInto, 2),
    (fieldgate_proto::Task::Haul, 3),
    (fieldgate_proto::Task::Hold, 4),
];

/// An instruction as a downlink payload of at most `max` bytes: the task's byte, then the
/// target device's name in ASCII (cut to fit: device names are short on a farm).
pub fn encode_instruction(task: fieldgate_proto::Task, target: Option<&str>, max: usize) -> Vec<u8> {
    let code = TASKS.iter().find(|(t, _)| *t == task).map_or(0, |(_, c)| *c);
    let mut out = vec![code];
    if let Some(target) = target {
        out.extend(target.bytes().take(max.saturating_sub(1)));
    }
    out
}

/// The instruction in a downlink payload: the task and the target's name, if any.
pub fn decode_instruction(payload: &[u8]) -> Result<(fieldgate_proto::Task, Option<String>), CodecError> {
    let (&code, name) = payload.split_first().ok_or(CodecError::Empty)?;
    let task = TASKS
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(t, _)| *t)
        .ok_or_else(|| CodecError::NotEncodable(format!("instruction task byte {code}")))?;
    let name = std::str::from_utf8(name)
        .map_err(|_| CodecError::NotEncodable("an instruction target that is not ASCII".to_owned()))?;
    Ok((task, (!name.is_empty()).then(|| name.to_owned())))
}

#[cfg(test)]
mod tests;
