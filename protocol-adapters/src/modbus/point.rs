//! Modbus points: where a value lives (table and address), how its registers encode it (type
//! and byte/word order), and how raw becomes engineering units (scale, offset).
//!
//! Decoding and encoding are pure functions over register words, one path both ways, so a
//! write uses exactly the byte order its reads use (a frequent bug of other gateways).
//!
//! Byte and word order: a value of N registers is first laid out as its big-endian bytes
//! `A B C D` (`A` most significant). The order names where those bytes sit in the registers,
//! reading register by register, high byte first: `ABCD` is plain big-endian (the Modbus
//! convention), `DCBA` little-endian, `CDAB` big-endian bytes in swapped words (many PLCs),
//! `BADC` swapped bytes in big-endian words. For 64-bit values the same four names apply to
//! eight bytes `A..H`: `ABCD` is `ABCDEFGH`, `DCBA` is `HGFEDCBA`, `CDAB` reverses the word
//! order (`GHEFCDAB`), `BADC` swaps the bytes of each word (`BADCFEHG`).

use std::fmt;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Read-write bits (FC1 read, FC5/FC15 write).
    Coil,
    /// Read-only bits (FC2).
    DiscreteInput,
    /// Read-only registers (FC4).
    InputRegister,
    /// Read-write registers (FC3 read, FC6/FC16 write).
    HoldingRegister,
}

impl Table {
    pub const fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    pub const fn is_writable(self) -> bool {
        matches!(self, Table::Coil | Table::HoldingRegister)
    }

    /// The most items one read request may ask for (Modbus application protocol 1.1b3).
    pub const fn max_per_read(self) -> u16 {
        if self.is_bits() { 2000 } else { 125 }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete_input",
            Table::InputRegister => "input_register",
            Table::HoldingRegister => "holding_register",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the registers of a point encode its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// A coil or discrete input, 0 or 1. Also a register read as zero / non-zero.
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// One bit (0 = least significant) of a 16-bit register.
    Bit(u8),
    /// ASCII text in N registers (two characters each, high byte first, after the byte
    /// order is applied per register) holding a number, e.g. `"23.5"`; padding NULs and spaces
    /// are ignored.
    String(u16),
}

impl DataType {
    /// Registers (or bits, for bit tables) the type occupies.
    pub const fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 | DataType::Bit(_) => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String(n) => n,
        }
    }

    /// Every numeric register type (for the probe's side-by-side table).
    pub const NUMERIC: [DataType; 8] = [
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::F32,
        DataType::U64,
        DataType::I64,
        DataType::F64,
    ];

    pub fn name(self) -> String {
        match self {
            DataType::Bool => "bool".into(),
            DataType::U16 => "u16".into(),
            DataType::I16 => "i16".into(),
            DataType::U32 => "u32".into(),
            DataType::I32 => "i32".into(),
            DataType::U64 => "u64".into(),
            DataType::I64 => "i64".into(),
            DataType::F32 => "f32".into(),
            DataType::F64 => "f64".into(),
            DataType::Bit(b) => format!("bit {b}"),
            DataType::String(n) => format!("string({n})"),
        }
    }
}

/// Byte and word order (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Order {
    #[default]
    Abcd,
    Badc,
    Cdab,
    Dcba,
}

impl Order {
    pub const ALL: [Order; 4] = [Order::Abcd, Order::Badc, Order::Cdab, Order::Dcba];

    pub fn parse(s: &str) -> Option<Order> {
        match s.to_ascii_uppercase().as_str() {
            "ABCD" | "ABCDEFGH" => Some(Order::Abcd),
            "BADC" | "BADCFEHG" => Some(Order::Badc),
            "CDAB" | "GHEFCDAB" => Some(Order::Cdab),
            "DCBA" | "HGFEDCBA" => Some(Order::Dcba),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Order::Abcd => "ABCD",
            Order::Badc => "BADC",
            Order::Cdab => "CDAB",
            Order::Dcba => "DCBA",
        }
    }

    /// The registers holding big-endian `bytes` (an even number) in this order.
    pub(crate) fn to_words(self, bytes: &[u8]) -> Vec<u16> {
        let mut b = bytes.to_vec();
        match self {
            Order::Abcd => {}
            Order::Dcba => b.reverse(),
            Order::Cdab => {
                // Reverse the words, keep the bytes within each.
                let words: Vec<[u8; 2]> = b.chunks_exact(2).rev().map(|c| [c[0], c[1]]).collect();
                b = words.concat();
            }
            Order::Badc => b.chunks_exact_mut(2).for_each(|c| c.swap(0, 1)),
        }
        b.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect()
    }

    /// The big-endian bytes encoded by `words` in this order (the inverse of `to_words`; each
    /// order is its own inverse).
    pub(crate) fn to_bytes(self, words: &[u16]) -> Vec<u8> {
        let raw: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        let back = self.to_words(&raw);
        back.iter().flat_map(|w| w.to_be_bytes()).collect()
    }
}

/// One value of a device: a metric read from (and for writable tables, written to) registers.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub metric: fieldgate_proto::Metric,
    pub table: Table,
    /// 0-based protocol address.
    pub address: u16,
    pub data_type: DataType,
    pub order: Order,
    /// value = raw * scale + offset.
    pub scale: f64,
    pub offset: f64,
    /// Engineering unit, for people (docs, probe); not stored with readings.
    pub unit: Option<String>,
}

/// Why raw registers do not give a value, or a value cannot be written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("expected {expected} registers, got {got}")]
    Length { expected: usize, got: usize },
    #[error("the text {0:?} is not a number")]
    NotANumber(String),
    #[error("{value} is outside what a {ty} can hold after scale and offset")]
    OutOfRange { value: f64, ty: String },
    #[error("a {0} point cannot be written")]
    ReadOnly(String),
}

/// Parse a register address: 0-based (`0`..`65535`), or the 1-based Modicon notation in which
/// the first digit names the table (`40001` is holding register 0, `30001` input register 0,
/// `10001` discrete input 0, `00001`/`1` coil 0; six-digit `400001` forms too). Returns the
/// table the notation implies, if any.
pub fn parse_address(text: &str) -> Result<(Option<Table>, u16), String> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` is not an address: use 0-based numbers like 12, or 40013"));
    }
    if t.len() == 5 || t.len() == 6 {
        let table = match t.as_bytes()[0] {
            b'0' => Some(Table::Coil),
            b'1' => Some(Table::DiscreteInput),
            b'3' => Some(Table::InputRegister),
            b'4' => Some(Table::HoldingRegister),
            _ => None,
        };
        if let Some(table) = table {
            let n: u32 = t[1..].parse().map_err(|_| format!("`{text}` is not an address"))?;
            if n == 0 || n > 65_536 {
                return Err(format!("`{text}`: the 1-based notation starts at {}1", &t[..1]));
            }
            return Ok((Some(table), (n - 1) as u16));
        }
    }
    let n: u32 = t.parse().map_err(|_| format!("`{text}` is not an address"))?;
    u16::try_from(n).map(|a| (None, a)).map_err(|_| format!("`{text}` is beyond the last address, 65535"))
}

impl Point {
    /// Registers or bits this point reads.
    pub fn width(&self) -> u16 {
        if self.table.is_bits() { 1 } else { self.data_type.width() }
    }

    /// The value of this point from its raw registers (exactly `width()` of them), scaled.
    pub fn decode_registers(&self, words: &[u16]) -> Result<f64, CodecError> {
        Ok(raw_value(self.data_type, self.order, words)? * self.scale + self.offset)
    }

    /// The value of a bit point (coil or discrete input).
    pub fn decode_bit(&self, bit: bool) -> f64 {
        f64::from(u8::from(bit)) * self.scale + self.offset
    }

    /// The registers that make a register point read `value` (the inverse of
    /// [`Point::decode_registers`]).
    pub fn encode_registers(&self, value: f64) -> Result<Vec<u16>, CodecError> {
        if !self.table.is_writable() || self.table.is_bits() {
            return Err(CodecError::ReadOnly(self.table.to_string()));
        }
        let raw = (value - self.offset) / self.scale;
        encode_raw(self.data_type, self.order, raw)
    }
}

/// Decode raw registers (unscaled).
pub fn raw_value(ty: DataType, order: Order, words: &[u16]) -> Result<f64, CodecError> {
    let width = usize::from(ty.width());
    if words.len() != width {
        return Err(CodecError::Length { expected: width, got: words.len() });
    }
    if let DataType::String(_) = ty {
        let bytes = order_string(order, words);
        let text: String = bytes.iter().map(|&b| b as char).collect();
        let trimmed = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        return trimmed.parse::<f64>().map_err(|_| CodecError::NotANumber(trimmed.to_owned()));
    }
    let b = order.to_bytes(words);
    Ok(match ty {
        DataType::Bool => f64::from(u8::from(words[0] != 0)),
        DataType::Bit(n) => f64::from((words[0] >> n) & 1),
        DataType::U16 => f64::from(u16::from_be_bytes([b[0], b[1]])),
        DataType::I16 => f64::from(i16::from_be_bytes([b[0], b[1]])),
        DataType::U32 => f64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        DataType::I32 => f64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        DataType::F32 => f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        DataType::U64 => u64::from_be_bytes(b[..8].try_into().expect("8 bytes")) as f64,
        DataType::I64 => i64::from_be_bytes(b[..8].try_into().expect("8 bytes")) as f64,
        DataType::F64 => f64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
        DataType::String(_) => unreachable!("handled above"),
    })
}

/// Strings: the order applies within each register (`BADC`/`DCBA` swap its two bytes); the
/// text runs register by register.
fn order_string(order: Order, words: &[u16]) -> Vec<u8> {
    words
        .iter()
        .flat_map(|w| {
            let [hi, lo] = w.to_be_bytes();
            match order {
                Order::Abcd | Order::Cdab => [hi, lo],
                Order::Badc | Order::Dcba => [lo, hi],
            }
        })
        .collect()
}

/// Encode a raw (unscaled) value; integers are rounded to the nearest and must fit.
pub fn encode_raw(ty: DataType, order: Order, raw: f64) -> Result<Vec<u16>, CodecError> {
    let out_of_range = || CodecError::OutOfRange { value: raw, ty: ty.name() };
    let int = |min: f64, max: f64| -> Result<f64, CodecError> {
        let r = raw.round();
        if r.is_finite() && r >= min && r <= max { Ok(r) } else { Err(out_of_range()) }
    };
    let bytes: Vec<u8> = match ty {
        DataType::Bool => return Ok(vec![u16::from(raw != 0.0)]),
        DataType::Bit(_) => return Err(CodecError::ReadOnly("bit-of-register".into())),
        DataType::String(n) => {
            let text = format!("{raw}");
            if text.len() > usize::from(n) * 2 {
                return Err(out_of_range());
            }
            let mut b = text.into_bytes();
            b.resize(usize::from(n) * 2, 0);
            let words: Vec<u16> = b.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            // Apply the per-register order as decoding reads it.
            return Ok(words
                .into_iter()
                .map(|w| match order {
                    Order::Abcd | Order::Cdab => w,
                    Order::Badc | Order::Dcba => w.swap_bytes(),
                })
                .collect());
        }
        DataType::U16 => (int(0.0, 65_535.0)? as u16).to_be_bytes().to_vec(),
        DataType::I16 => (int(-32_768.0, 32_767.0)? as i16).to_be_bytes().to_vec(),
        DataType::U32 => (int(0.0, 4_294_967_295.0)? as u32).to_be_bytes().to_vec(),
        DataType::I32 => (int(-2_147_483_648.0, 2_147_483_647.0)? as i32).to_be_bytes().to_vec(),
        DataType::F32 => {
            if !raw.is_finite() || raw.abs() > f64::from(f32::MAX) {
                return Err(out_of_range());
            }
            (raw as f32).to_be_bytes().to_vec()
        }
        // 2^64 and 2^63 are the first values that do not fit.
        DataType::U64 => (int(0.0, 18_446_744_073_709_549_568.0)? as u64).to_be_bytes().to_vec(),
        DataType::I64 => {
            (int(-9_223_372_036_854_775_808.0, 9_223_372_036_854_774_784.0)? as i64).to_be_bytes().to_vec()
        }
        DataType::F64 => {
            if !raw.is_finite() {
                return Err(out_of_range());
            }
            raw.to_be_bytes().to_vec()
        }
    };
    Ok(order.to_words(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_four_orders_place_the_bytes_of_a_known_float() {
        // 123.456f32 is 0x42F6E979: A=42 B=F6 C=E9 D=79.
        let cases = [
            (Order::Abcd, [0x42F6, 0xE979]),
            (Order::Badc, [0xF642, 0x79E9]),
            (Order::Cdab, [0xE979, 0x42F6]),
            (Order::Dcba, [0x79E9, 0xF642]),
        ];
        for (order, words) in cases {
            assert_eq!(encode_raw(DataType::F32, order, f64::from(123.456f32)).unwrap(), words, "{order:?}");
            assert_eq!(raw_value(DataType::F32, order, &words).unwrap(), f64::from(123.456f32), "{order:?}");
        }
        // 64-bit: 0x0102030405060700 (exact in an f64).
        let v = 0x0102_0304_0506_0700_u64 as f64;
        let cases64 = [
            (Order::Abcd, [0x0102, 0x0304, 0x0506, 0x0700]),
            (Order::Dcba, [0x0007, 0x0605, 0x0403, 0x0201]),
            (Order::Cdab, [0x0700, 0x0506, 0x0304, 0x0102]),
            (Order::Badc, [0x0201, 0x0403, 0x0605, 0x0007]),
        ];
        for (order, words) in cases64 {
            assert_eq!(encode_raw(DataType::U64, order, v).unwrap(), words, "{order:?}");
            assert_eq!(raw_value(DataType::U64, order, &words).unwrap(), v, "{order:?}");
        }
    }

    #[test]
    fn addresses_take_both_notations() {
        assert_eq!(parse_address("0"), Ok((None, 0)));
        assert_eq!(parse_address("40001"), Ok((Some(Table::HoldingRegister), 0)));
        assert_eq!(parse_address("30013"), Ok((Some(Table::InputRegister), 12)));
        assert_eq!(parse_address("10001"), Ok((Some(Table::DiscreteInput), 0)));
        assert_eq!(parse_address("00005"), Ok((Some(Table::Coil), 4)));
        assert_eq!(parse_address("465536"), Ok((Some(Table::HoldingRegister), 65_535)));
        assert_eq!(parse_address("1234"), Ok((None, 1234)));
        assert!(parse_address("40000").unwrap_err().contains("starts at 41"));
        assert!(parse_address("70000").unwrap_err().contains("beyond the last address"));
        assert!(parse_address("4x1").is_err());
    }

    #[test]
    fn strings_bits_and_scaling() {
        // "23.5" in two registers, then NUL padding.
        let words = [u16::from_be_bytes(*b"23"), u16::from_be_bytes(*b".5"), 0];
        assert_eq!(raw_value(DataType::String(3), Order::Abcd, &words), Ok(23.5));
        let swapped: Vec<u16> = words.iter().map(|w| w.swap_bytes()).collect();
        assert_eq!(raw_value(DataType::String(3), Order::Badc, &swapped), Ok(23.5));
        assert_eq!(encode_raw(DataType::String(3), Order::Abcd, 23.5).unwrap(), words);
        assert!(matches!(
            raw_value(DataType::String(1), Order::Abcd, &[u16::from_be_bytes(*b"ok")]),
            Err(CodecError::NotANumber(_))
        ));
        assert_eq!(raw_value(DataType::Bit(3), Order::Abcd, &[0b1000]), Ok(1.0));
        assert_eq!(raw_value(DataType::Bit(2), Order::Abcd, &[0b1000]), Ok(0.0));
        let p = Point {
            metric: fieldgate_proto::Metric::new("temp_c").unwrap(),
            table: Table::HoldingRegister,
            address: 0,
            data_type: DataType::I16,
            order: Order::Abcd,
            scale: 0.1,
            offset: -40.0,
            unit: Some("°C".into()),
        };
        assert_eq!(p.decode_registers(&[652]).unwrap(), 652.0 * 0.1 - 40.0);
        assert_eq!(p.encode_registers(25.2).unwrap(), vec![652]);
        assert!(matches!(p.encode_registers(4000.0), Err(CodecError::OutOfRange { .. })));
        assert_eq!(
            raw_value(DataType::U16, Order::Abcd, &[1, 2]),
            Err(CodecError::Length { expected: 1, got: 2 })
        );
    }

    fn order() -> impl Strategy<Value = Order> {
        prop::sample::select(Order::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn every_type_round_trips_in_every_order(order in order(), bits in any::<u64>()) {
            let cases: [(DataType, f64); 7] = [
                (DataType::U16, f64::from(bits as u16)),
                (DataType::I16, f64::from(bits as i16)),
                (DataType::U32, f64::from(bits as u32)),
                (DataType::I32, f64::from(bits as i32)),
                (DataType::F32, f64::from(f32::from_bits(bits as u32))),
                (DataType::I64, (bits as i64 >> 12) as f64),
                (DataType::F64, f64::from_bits(bits)),
            ];
            for (ty, v) in cases {
                if !v.is_finite() {
                    continue;
                }
                let words = encode_raw(ty, order, v).unwrap();
                prop_assert_eq!(words.len(), usize::from(ty.width()));
                prop_assert_eq!(raw_value(ty, order, &words).unwrap(), v, "{:?} {:?}", ty, order);
            }
        }

        #[test]
        fn decoding_any_registers_never_panics(words in prop::collection::vec(any::<u16>(), 0..6), order in order()) {
            for ty in DataType::NUMERIC.into_iter().chain([DataType::Bool, DataType::Bit(15), DataType::String(2)]) {
                let _ = raw_value(ty, order, &words);
            }
        }
    }
}
