//! What a replay reads: a gateway's recordings (`DATA_DIR/recordings/`, Parquet), or an
//! export from another logger as CSV or JSON lines with `ts`, `device`, `metric`, `value`
//! (and optionally `source`: `mqtt`, `modbus` or `lorawan`; `mqtt` when absent).
//!
//! `ts` is RFC 3339 (`2026-08-01T06:00:00Z`) or a number since the epoch in seconds,
//! milliseconds, microseconds or nanoseconds, told apart by size as the gateway's MQTT
//! mappings do.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, TimestampNanosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use fieldgate_proto::Timestamp;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};

/// One reading to replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub ts: Timestamp,
    pub device: String,
    pub metric: String,
    pub value: f64,
    /// The protocol it came by: `mqtt`, `modbus` or `lorawan`.
    pub source: String,
}

fn bad(path: &Path, line: usize, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}:{line}: {why}", path.display()))
}

/// Read `path`: a directory of recordings (searched for `.parquet` files), one Parquet file,
/// or a `.csv` / `.jsonl` export. Rows come back sorted by time.
pub fn read(path: &Path) -> io::Result<Vec<Row>> {
    let mut rows = Vec::new();
    if path.is_dir() {
        let mut files = Vec::new();
        collect_parquet(path, &mut files)?;
        files.sort();
        if files.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no .parquet files under {}", path.display()),
            ));
        }
        for f in files {
            read_parquet(&f, &mut rows)?;
        }
    } else {
        match path.extension().and_then(|e| e.to_str()) {
            Some("parquet") => read_parquet(path, &mut rows)?,
            Some("csv") => read_csv(path, &mut rows)?,
            Some("jsonl" | "json" | "ndjson") => read_jsonl(path, &mut rows)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: give a recordings directory, a .parquet, .csv or .jsonl file",
                        path.display()
                    ),
                ));
            }
        }
    }
    // By time, then device, so one device's readings of one instant are together (one
    // message); stable, so they keep the order they were stored in.
    rows.sort_by(|a, b| (a.ts, &a.device).cmp(&(b.ts, &b.device)));
    Ok(rows)
}

fn collect_parquet(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_parquet(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    Ok(())
}

/// Strings of a column written plain or dictionary-encoded.
fn strings(column: &ArrayRef, name: &str, path: &Path) -> io::Result<Vec<String>> {
    if let Some(a) = column.as_string_opt::<i32>() {
        return Ok((0..a.len()).map(|i| a.value(i).to_owned()).collect());
    }
    if let Some(d) = column.as_dictionary_opt::<Int32Type>()
        && let Some(values) = d.values().as_string_opt::<i32>()
    {
        return Ok(d.keys().iter().map(|k| k.map_or("", |k| values.value(k as usize)).to_owned()).collect());
    }
    Err(bad(path, 0, format!("column `{name}` is not text ({})", column.data_type())))
}

fn read_parquet(path: &Path, rows: &mut Vec<Row>) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| bad(path, 0, e))?;
    for batch in reader {
        let batch: RecordBatch = batch.map_err(|e| bad(path, 0, e))?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| bad(path, 0, format!("no `{name}` column: not a recording")))
        };
        let ts = column("ts")?;
        let ts = ts
            .as_primitive_opt::<TimestampNanosecondType>()
            .ok_or_else(|| bad(path, 0, "column `ts` is not a nanosecond timestamp"))?
            .clone();
        let value = column("value")?;
        let value = value
            .as_primitive_opt::<arrow_array::types::Float64Type>()
            .ok_or_else(|| bad(path, 0, "column `value` is not a float"))?
            .clone();
        let (device, metric, source) = (
            strings(&column("device")?, "device", path)?,
            strings(&column("metric")?, "metric", path)?,
            strings(&column("source")?, "source", path)?,
        );
        for i in 0..batch.num_rows() {
            rows.push(Row {
                ts: Timestamp::from_nanos(ts.value(i)),
                device: device[i].clone(),
                metric: metric[i].clone(),
                value: value.value(i),
                source: source[i].clone(),
            });
        }
    }
    Ok(())
}

/// A time as an RFC 3339 string or a number since the epoch (unit told apart by size).
fn parse_ts(text: &str) -> Result<Timestamp, String> {
    let text = text.trim();
    if let Ok(n) = text.parse::<f64>() {
        let abs = n.abs();
        let nanos = if abs < 1e11 {
            n * 1e9
        } else if abs < 1e14 {
            n * 1e6
        } else if abs < 1e17 {
            n * 1e3
        } else {
            n
        };
        return Ok(Timestamp::from_nanos(nanos.round() as i64));
    }
    Timestamp::parse_rfc3339(text).map_err(|e| e.to_string())
}

fn row(ts: &str, device: &str, metric: &str, value: &str, source: Option<&str>) -> Result<Row, String> {
    let value: f64 = value.trim().parse().map_err(|_| format!("`{value}` is not a number"))?;
    if device.trim().is_empty() || metric.trim().is_empty() {
        return Err("device and metric must not be empty".to_owned());
    }
    let source = source.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("mqtt");
    if !matches!(source, "mqtt" | "modbus" | "lorawan") {
        return Err(format!("source `{source}` is not mqtt, modbus or lorawan"));
    }
    Ok(Row {
        ts: parse_ts(ts)?,
        device: device.trim().to_owned(),
        metric: metric.trim().to_owned(),
        value,
        source: source.to_owned(),
    })
}

/// CSV with a header naming `ts`, `device`, `metric`, `value` (any order) and optionally
/// `source`; fields are plain (no quoted commas: logger exports of numbers).
fn read_csv(path: &Path, rows: &mut Vec<Row>) -> io::Result<()> {
    let file = io::BufReader::new(std::fs::File::open(path)?);
    let mut lines = file.lines();
    let header = lines.next().ok_or_else(|| bad(path, 1, "the file is empty"))??;
    let names: Vec<String> =
        header.split(',').map(|h| h.trim().trim_matches('"').to_ascii_lowercase()).collect();
    let at = |name: &str| names.iter().position(|n| n == name);
    let (Some(ts), Some(device), Some(metric), Some(value)) =
        (at("ts"), at("device"), at("metric"), at("value"))
    else {
        return Err(bad(
            path,
            1,
            format!("the header must name ts, device, metric and value; it has {}", names.join(", ")),
        ));
    };
    let source = at("source");
    for (n, line) in lines.enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(|c| c.trim().trim_matches('"')).collect();
        let cell = |i: usize| cells.get(i).copied().unwrap_or("");
        rows.push(
            row(cell(ts), cell(device), cell(metric), cell(value), source.map(cell))
                .map_err(|e| bad(path, n + 2, e))?,
        );
    }
    Ok(())
}

/// JSON lines: one object per line with `ts`, `device`, `metric`, `value` and optionally
/// `source`.
fn read_jsonl(path: &Path, rows: &mut Vec<Row>) -> io::Result<()> {
    let file = io::BufReader::new(std::fs::File::open(path)?);
    for (n, line) in file.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| bad(path, n + 1, e))?;
        let text = |k: &str| match &v[k] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(x) => Some(x.to_string()),
            _ => None,
        };
        let get = |k: &str| text(k).ok_or_else(|| bad(path, n + 1, format!("no `{k}`")));
        rows.push(
            row(&get("ts")?, &get("device")?, &get("metric")?, &get("value")?, text("source").as_deref())
                .map_err(|e| bad(path, n + 1, e))?,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_json_lines_read_alike_and_mistakes_name_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let csv = dir.path().join("logger.csv");
        std::fs::write(
            &csv,
            "device,ts,metric,value\nbin-1,2026-08-01T06:00:01Z,level_pct,41.5\nbin-1,1785564000,level_pct,40\n",
        )
        .expect("write");
        let jsonl = dir.path().join("logger.jsonl");
        std::fs::write(
            &jsonl,
            "{\"ts\": \"2026-08-01T06:00:01Z\", \"device\": \"bin-1\", \"metric\": \"level_pct\", \"value\": 41.5}\n\
             {\"ts\": 1785564000000, \"device\": \"bin-1\", \"metric\": \"level_pct\", \"value\": 40, \"source\": \"mqtt\"}\n",
        )
        .expect("write");
        let a = read(&csv).expect("csv");
        assert_eq!(a, read(&jsonl).expect("jsonl"));
        assert_eq!(a.len(), 2);
        assert_eq!(
            a[0].ts,
            Timestamp::from_secs(1_785_564_000).expect("ts"),
            "sorted by time, seconds understood"
        );
        assert_eq!((a[1].value, a[1].source.as_str()), (41.5, "mqtt"));

        std::fs::write(&csv, "ts,device,metric,value\n1785564000,bin-1,level_pct,high\n").expect("write");
        let e = read(&csv).expect_err("not a number").to_string();
        assert!(e.ends_with("logger.csv:2: `high` is not a number"), "{e}");
        std::fs::write(&csv, "time,device,value\n").expect("write");
        let e = read(&csv).expect_err("header").to_string();
        assert!(e.contains(":1: the header must name ts, device, metric and value"), "{e}");
    }
}
