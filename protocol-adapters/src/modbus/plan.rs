//! Read planning: the points of a device merged into as few requests as the protocol allows,
//! computed once at start.
//!
//! Points of one table, sorted by address, join the current request while the request stays
//! within the protocol's limit (125 registers, 2000 bits) and the hole before the point is at
//! most `max_gap` items; reading through a small hole costs less than another round trip,
//! especially on a serial line. A hole may hold addresses the device does not have, and such a
//! device answers the whole request with an exception: `max_gap = 0` avoids that.

use super::point::{Point, Table};

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub table: Table,
    /// First address read.
    pub address: u16,
    /// Registers or bits read.
    pub count: u16,
    /// Indexes of the points in this request, with their offset from `address`.
    pub points: Vec<(usize, u16)>,
}

/// Plan the requests that read every point. Each point must fit one request (the caller
/// validates widths and addresses).
pub fn plan(points: &[Point], max_gap: u16) -> Vec<Read> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].table, points[i].address));
    let mut reads: Vec<Read> = Vec::new();
    for i in order {
        let p = &points[i];
        let (start, end) = (u32::from(p.address), u32::from(p.address) + u32::from(p.width()));
        if let Some(r) = reads.last_mut() {
            let r_end = u32::from(r.address) + u32::from(r.count);
            let gap = start.saturating_sub(r_end);
            let merged = end.max(r_end) - u32::from(r.address);
            if r.table == p.table && gap <= u32::from(max_gap) && merged <= u32::from(p.table.max_per_read())
            {
                r.count = merged as u16;
                r.points.push((i, p.address - r.address));
                continue;
            }
        }
        reads.push(Read { table: p.table, address: p.address, count: p.width(), points: vec![(i, 0)] });
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::point::{DataType, Order};

    fn point(table: Table, address: u16, data_type: DataType) -> Point {
        Point {
            metric: fieldgate_proto::Metric::new(&format!("m{address}")).unwrap(),
            table,
            address,
            data_type,
            order: Order::Abcd,
            scale: 1.0,
            offset: 0.0,
            unit: None,
        }
    }

    #[test]
    fn neighbours_merge_holes_up_to_the_gap_and_tables_stay_apart() {
        use DataType::*;
        use Table::*;
        let points = vec![
            point(HoldingRegister, 10, F32), // 10..12
            point(HoldingRegister, 0, U16),  // 0..1
            point(HoldingRegister, 12, U16), // 12..13, adjacent
            point(HoldingRegister, 30, U16), // hole of 17 > gap 8: new request
            point(InputRegister, 1, U16),    // other table
            point(Coil, 5, Bool),
            point(Coil, 1999, Bool), // bits: hole of 1993 > gap
        ];
        let reads = plan(&points, 8);
        let shape: Vec<(Table, u16, u16)> = reads.iter().map(|r| (r.table, r.address, r.count)).collect();
        assert_eq!(
            shape,
            vec![
                (Coil, 5, 1),
                (Coil, 1999, 1),
                (InputRegister, 1, 1),
                (HoldingRegister, 0, 1),
                (HoldingRegister, 10, 3),
                (HoldingRegister, 30, 1),
            ]
        );
        // 0..1 and 10..12 leave a hole of 9 registers, more than the gap of 8.
        assert_eq!(reads[3], Read { table: HoldingRegister, address: 0, count: 1, points: vec![(1, 0)] });
        assert_eq!(
            reads[4],
            Read { table: HoldingRegister, address: 10, count: 3, points: vec![(0, 0), (2, 2)] }
        );
        assert_eq!(reads[5].address, 30);
        assert_eq!(plan(&points, 9).len(), 5, "with a gap of 9, 0..13 is one request");
    }

    #[test]
    fn a_request_never_exceeds_the_protocol_limit() {
        let points: Vec<Point> =
            (0..200).map(|i| point(Table::HoldingRegister, i * 2, DataType::F32)).collect();
        let reads = plan(&points, 0);
        assert!(reads.iter().all(|r| r.count <= 125));
        assert_eq!(reads.iter().map(|r| r.points.len()).sum::<usize>(), 200);
        assert_eq!(reads.len(), 4, "400 registers in requests of at most 124 (whole floats)");
        let coils: Vec<Point> = (0..4500).map(|i| point(Table::Coil, i, DataType::Bool)).collect();
        assert_eq!(plan(&coils, 0).iter().map(|r| r.count).collect::<Vec<_>>(), vec![2000, 2000, 500]);
    }
}
