//! `fieldgate modbus probe`: read a raw block from a live device and show every way to decode
//! it, side by side, so the right type, order and address are found in one look.
//!
//! The most common "byte order" problem is an address off by one (0- against 1-based
//! numbering), so each decoding is shown at the asked address and at its neighbours.

use super::bus::{Link, Transport};
use super::point::{DataType, Order, Table, raw_value};
use std::fmt::Write as _;
use std::time::Duration;

/// What to read.
#[derive(Debug, Clone)]
pub struct Probe {
    pub transport: Transport,
    pub unit: u8,
    pub table: Table,
    /// The 0-based address of interest.
    pub address: u16,
    pub timeout: Duration,
    /// The value the user expects to see, if known: matching decodings are marked.
    pub expect: Option<f64>,
}

/// Registers read around the address: one before, and up to 4 (a 64-bit value) plus one
/// after.
const BEFORE: u16 = 1;
const SPAN: u16 = 6;

/// Read the block around `probe.address` and render the table.
pub async fn run(probe: &Probe) -> Result<String, String> {
    let start = probe.address.saturating_sub(BEFORE);
    let count = SPAN.min(u16::try_from(65_536 - u32::from(start)).unwrap_or(SPAN));
    let mut link = Link::new(probe.transport.clone());
    link.connect(probe.timeout)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", probe.transport.describe()))?;
    let read = super::plan::Read { table: probe.table, address: start, count, points: Vec::new() };
    let data = link.request(probe.unit, super::bus::Op::Read(&read), probe.timeout).await.map_err(|f| {
        format!("unit {} of {}: {}", probe.unit, probe.transport.describe(), f.describe(probe.timeout))
    })?;
    let header = format!(
        "{} {}..{} of unit {} at {}",
        probe.table,
        start,
        u32::from(start) + u32::from(count) - 1,
        probe.unit,
        probe.transport.describe()
    );
    Ok(match data {
        super::bus::Data::Words(words) => render(&header, start, probe.address, &words, probe.expect),
        super::bus::Data::Written => return Err("the device answered the read as if it were a write".into()),
        super::bus::Data::Bits(bits) => {
            let mut out = format!("{header}\n");
            for (i, b) in bits.iter().enumerate() {
                let _ = writeln!(out, "  {:>5}  {}", u32::from(start) + i as u32, u8::from(*b));
            }
            out
        }
    })
}

/// Does `v` match the expected value? Within a millionth, which covers an f32's rounding of
/// a decimal written by a person (23.4 reads back as 23.399999618...).
fn matches(v: f64, expect: f64) -> bool {
    (v - expect).abs() <= 1e-6 * expect.abs().max(1.0)
}

/// The side-by-side table for `words` read from `start`, centred on `focus`.
pub fn render(header: &str, start: u16, focus: u16, words: &[u16], expect: Option<f64>) -> String {
    let mut out = format!("{header}\nraw:");
    for (i, w) in words.iter().enumerate() {
        let _ = write!(out, " {}=0x{w:04X}", u32::from(start) + i as u32);
    }
    out.push('\n');
    let columns: Vec<(String, Option<usize>, i32)> = [-1i32, 0, 1]
        .iter()
        .map(|d| {
            let at = i32::from(focus) + d;
            let label = match d {
                -1 => format!("at {at} (-1)"),
                0 => format!("at {at}"),
                _ => format!("at {at} (+1)"),
            };
            let index = usize::try_from(at - i32::from(start)).ok().filter(|&i| i < words.len());
            (label, index, at)
        })
        .collect();
    let _ = write!(out, "{:<12}", "type order");
    for (label, _, _) in &columns {
        let _ = write!(out, "{label:>26}");
    }
    out.push('\n');
    let mut found = Vec::new();
    for ty in DataType::NUMERIC {
        // One-register values have only two distinct orders: as sent, or bytes swapped.
        let orders: &[Order] = if ty.width() == 1 { &[Order::Abcd, Order::Badc] } else { &Order::ALL };
        for &order in orders {
            let _ = write!(out, "{:<12}", format!("{} {}", ty.name(), order.as_str()));
            for (_, index, at) in &columns {
                let cell = index
                    .and_then(|i| words.get(i..i + usize::from(ty.width())))
                    .and_then(|w| raw_value(ty, order, w).ok());
                let text = match cell {
                    Some(v) => {
                        let hit = expect.is_some_and(|e| matches(v, e));
                        if hit {
                            found.push(format!(
                                "type = \"{}\", order = \"{}\", address = {at} (0-based, with `table`)",
                                ty.name(),
                                order.as_str()
                            ));
                        }
                        format!("{}{}", fmt_value(v), if hit { " *" } else { "" })
                    }
                    None => "-".to_owned(),
                };
                let _ = write!(out, "{text:>26}");
            }
            out.push('\n');
        }
    }
    if let Some(e) = expect {
        if found.is_empty() {
            let _ = writeln!(out, "\nno decoding gives {e}: check the unit, table and scale");
        } else {
            let _ = writeln!(out, "\n{e} found as:");
            for f in found {
                let _ = writeln!(out, "  {f}");
            }
        }
    }
    out
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 1e7 || v.abs() < 1e-4 {
        format!("{v:.6e}")
    } else {
        format!("{v:.6}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_finds_a_swapped_float_one_register_off() {
        // 1234.5 as f32 in CDAB at addresses 13..14, read from 11.
        let words = [0x0000, 0x0000, 0x5000, 0x449A, 0x0000, 0x0000];
        let text = render("holding_register 11..16", 11, 12, &words, Some(1234.5));
        assert!(text.contains("raw: 11=0x0000 12=0x0000 13=0x5000 14=0x449A"), "{text}");
        assert!(text.contains("type = \"f32\", order = \"CDAB\", address = 13 (0-based"), "{text}");
        let row = text.lines().find(|l| l.starts_with("f32 CDAB")).unwrap();
        assert!(row.ends_with("1234.500000 *"), "{row}");
        let none = render("x", 0, 0, &[1, 2], Some(99.0));
        assert!(none.contains("no decoding gives 99"), "{none}");
    }
}
