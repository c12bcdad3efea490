//! CSV as a stream of rows: comma or semicolon separated (whichever the header uses
//! more), UTF-8 with an optional BOM, any line ends. One record is held at a time.

use std::io::{BufRead, BufReader, Read};

use super::{Flow, ImportLimits, LimitExceeded, Sink, header_problems, problem};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One line end for all: the csv reader counts a record's line at its first byte, and
/// after a `\r` it has not yet seen the `\n`, so files from Windows (CRLF) or old Macs
/// (CR) would name every row one line too early (the fuzz test found it).
struct UnixLines<R> {
    inner: R,
    /// The last byte handed out was a `\r` turned into `\n`: a `\n` right after it
    /// belongs to the same line end.
    after_cr: bool,
}

impl<R: BufRead> Read for UnixLines<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() || out.is_empty() {
                return Ok(0);
            }
            let (mut used, mut written) = (0, 0);
            while used < buf.len() && written < out.len() {
                let b = buf[used];
                used += 1;
                if std::mem::take(&mut self.after_cr) && b == b'\n' {
                    continue;
                }
                if b == b'\r' {
                    self.after_cr = true;
                    out[written] = b'\n';
                } else {
                    out[written] = b;
                }
                written += 1;
            }
            self.inner.consume(used);
            if written > 0 {
                return Ok(written);
            }
        }
    }
}

/// Read CSV from `input`, row by row, into `sink`.
pub(super) fn read(
    input: impl Read,
    limits: &ImportLimits,
    sink: &mut dyn Sink,
) -> Result<(), LimitExceeded> {
    let mut input = BufReader::with_capacity(
        64 * 1024,
        UnixLines {
            inner: BufReader::new(input),
            after_cr: false,
        },
    );
    let unreadable =
        |e: std::io::Error| problem(None, None, format!("the file cannot be read ({e})"));
    let delimiter = match input.fill_buf() {
        Err(e) => {
            sink.problem(unreadable(e));
            return Ok(());
        }
        Ok(buf) => {
            let bom = buf.starts_with(BOM);
            let text = if bom { &buf[BOM.len()..] } else { buf };
            let first = text.split(|b| *b == b'\n').next().unwrap_or(&[]);
            let count = |d: u8| first.iter().filter(|b| **b == d).count();
            let delimiter = if count(b';') > count(b',') {
                b';'
            } else {
                b','
            };
            if bom {
                input.consume(BOM.len());
            }
            delimiter
        }
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(false)
        .from_reader(input);
    let not_utf8 = |row: Option<usize>| problem(row, None, "the file is not UTF-8 text");
    let columns: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(|c| c.trim().to_owned()).collect(),
        Err(e) => {
            sink.problem(match e.kind() {
                csv::ErrorKind::Utf8 { .. } => not_utf8(Some(1)),
                _ => problem(Some(1), None, format!("unreadable header: {e}")),
            });
            return Ok(());
        }
    };
    if columns.iter().all(|c| c.is_empty()) {
        sink.problem(problem(
            None,
            None,
            "the file is empty: a header row is needed",
        ));
        return Ok(());
    }
    let header_ok = !header_problems(&columns, 1, sink);
    if header_ok && sink.columns(&columns) == Flow::Stop {
        return Ok(());
    }
    let mut problems = !header_ok;
    let mut cells = columns.len() as u64;
    let mut rows = 0u64;
    let mut record = csv::StringRecord::new();
    loop {
        let flow = match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                cells += record.len() as u64;
                if cells > limits.max_cells {
                    return Err(LimitExceeded {
                        what: "cells",
                        limit: limits.max_cells,
                    });
                }
                if record.iter().all(|v| v.trim().is_empty()) {
                    continue;
                }
                rows += 1;
                if rows > limits.max_rows {
                    return Err(LimitExceeded {
                        what: "rows",
                        limit: limits.max_rows,
                    });
                }
                if !header_ok {
                    continue;
                }
                let line = record.position().map_or(0, |p| p.line() as usize);
                sink.row(line, record.iter().map(|v| v.trim().to_owned()).collect())
            }
            Err(e) => {
                problems = true;
                let line = e.position().map(|p| p.line() as usize);
                let p = match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => problem(
                        line,
                        None,
                        format!("has {len} cells where the header has {expected_len}"),
                    ),
                    csv::ErrorKind::Utf8 { .. } => not_utf8(line),
                    csv::ErrorKind::Io(_) => {
                        sink.problem(problem(
                            line,
                            None,
                            format!("the file cannot be read ({e})"),
                        ));
                        return Ok(());
                    }
                    _ => problem(line, None, e.to_string()),
                };
                sink.problem(p)
            }
        };
        if flow == Flow::Stop {
            return Ok(());
        }
    }
    if rows == 0 && !problems {
        sink.problem(problem(None, None, "the file has a header but no rows"));
    }
    Ok(())
}
