//! The first sheet of an XLSX workbook as a stream of rows. Cells are read one at a
//! time from the sheet's XML and one row is held at a time, so a crafted workbook
//! naming a far-away cell (XFD1048576) costs nothing, and a long sheet costs no more
//! memory than a short one (the shared-strings table, read whole by the parser, aside).

use std::io::{Read, Seek};

use calamine::{Data, Reader};

use super::{
    Flow, ImportLimits, LimitExceeded, MAX_XLSX_COLUMNS, Problem, Sink, header_problems, problem,
};

/// A cell as text: whole numbers without a decimal point (Excel stores 3 as 3.0).
fn cell_text(cell: &Data) -> Result<String, String> {
    Ok(match cell {
        Data::Empty => String::new(),
        Data::String(s) => s.trim().to_owned(),
        Data::Int(i) => i.to_string(),
        Data::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", *f as i64),
        Data::Float(f) => f.to_string(),
        Data::Bool(b) => b.to_string(),
        Data::DateTime(d) => d.to_string(),
        Data::DateTimeIso(s) | Data::DurationIso(s) => s.clone(),
        Data::Error(e) => return Err(format!("the cell holds a spreadsheet error ({e})")),
    })
}

/// The header once read: where it starts and its names.
struct Header {
    /// Index of its first named column; the sheet's data starts there.
    origin: u32,
    columns: Vec<String>,
    ok: bool,
}

struct Rows<'a> {
    sink: &'a mut dyn Sink,
    limits: &'a ImportLimits,
    header: Option<Header>,
    rows: u64,
    problems: bool,
}

impl Rows<'_> {
    fn problem(&mut self, p: Problem) -> Flow {
        self.problems = true;
        self.sink.problem(p)
    }

    /// One row's non-empty cells (column, value), in any order.
    fn row(&mut self, r: u32, cells: Vec<(u32, Data)>) -> Result<Flow, LimitExceeded> {
        let line = r as usize + 1;
        let Some(header) = &self.header else {
            let origin = cells.iter().map(|(c, _)| *c).min().unwrap_or(0);
            let end = cells.iter().map(|(c, _)| *c).max().unwrap_or(0);
            let mut columns = vec![String::new(); (end - origin + 1) as usize];
            for (c, v) in &cells {
                columns[(c - origin) as usize] = cell_text(v).unwrap_or_default();
            }
            // Trailing unnamed columns with nothing in them are formatting, not data.
            let width = columns
                .iter()
                .rposition(|c| !c.is_empty())
                .map_or(0, |i| i + 1);
            columns.truncate(width);
            if columns.is_empty() {
                self.problem(problem(
                    None,
                    None,
                    "the file is empty: a header row is needed",
                ));
                return Ok(Flow::Stop);
            }
            let ok = !header_problems(&columns, line, self.sink);
            self.problems |= !ok;
            let flow = if ok {
                self.sink.columns(&columns)
            } else {
                Flow::Continue
            };
            self.header = Some(Header {
                origin,
                columns,
                ok,
            });
            return Ok(flow);
        };
        let (origin, width, ok) = (header.origin, header.columns.len(), header.ok);
        let mut values = vec![String::new(); width];
        let mut bad = Vec::new();
        for (c, v) in &cells {
            let text = cell_text(v);
            if *c < origin || (*c - origin) as usize >= width {
                if !matches!(text.as_deref(), Ok("")) {
                    bad.push(problem(
                        Some(line),
                        None,
                        format!(
                            "has a value in column {} where the header has no name",
                            i64::from(*c) - i64::from(origin) + 1
                        ),
                    ));
                }
                continue;
            }
            let j = (*c - origin) as usize;
            match text {
                Ok(t) => values[j] = t,
                Err(m) => bad.push(problem(Some(line), Some(&header.columns[j]), m)),
            }
        }
        if values.iter().all(String::is_empty) && bad.is_empty() {
            return Ok(Flow::Continue);
        }
        self.rows += 1;
        if self.rows > self.limits.max_rows {
            return Err(LimitExceeded {
                what: "rows",
                limit: self.limits.max_rows,
            });
        }
        for p in bad.iter().cloned() {
            if self.problem(p) == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
        Ok(if ok && bad.is_empty() {
            self.sink.row(line, values)
        } else {
            Flow::Continue
        })
    }
}

/// Read the first sheet of the workbook in `input`, row by row, into `sink`. A panic
/// inside the XLSX parser (the fuzz test found an arithmetic overflow on cell
/// references that are too long) is a refusal too.
pub(super) fn read(
    input: impl Read + Seek,
    limits: &ImportLimits,
    sink: &mut dyn Sink,
) -> Result<(), LimitExceeded> {
    let mut rows = Rows {
        sink,
        limits,
        header: None,
        rows: 0,
        problems: false,
    };
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_cells(input, limits, &mut rows)
    }));
    match parsed {
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Flow::Stop)) => return Ok(()),
        Ok(Ok(Flow::Continue)) => {}
        Err(_) => {
            rows.problem(problem(
                None,
                None,
                "not a readable XLSX workbook (its sheet is malformed)",
            ));
            return Ok(());
        }
    }
    if rows.header.is_none() {
        rows.problem(problem(
            None,
            None,
            "the file is empty: a header row is needed",
        ));
    } else if rows.rows == 0 && !rows.problems {
        rows.problem(problem(None, None, "the file has a header but no rows"));
    }
    Ok(())
}

fn read_cells(
    input: impl Read + Seek,
    limits: &ImportLimits,
    rows: &mut Rows<'_>,
) -> Result<Flow, LimitExceeded> {
    let mut book: calamine::Xlsx<_> = match calamine::open_workbook_from_rs(input) {
        Ok(b) => b,
        Err(e) => {
            rows.problem(problem(
                None,
                None,
                format!("not a readable XLSX workbook ({e})"),
            ));
            return Ok(Flow::Stop);
        }
    };
    let Some(name) = book.sheet_names().first().cloned() else {
        rows.problem(problem(None, None, "the workbook has no sheet"));
        return Ok(Flow::Stop);
    };
    let unreadable = |e: calamine::XlsxError| {
        problem(None, None, format!("the first sheet cannot be read ({e})"))
    };
    let mut reader = match book.worksheet_cells_reader(&name) {
        Ok(r) => r,
        Err(e) => {
            rows.problem(unreadable(e));
            return Ok(Flow::Stop);
        }
    };
    let mut current: Option<(u32, Vec<(u32, Data)>)> = None;
    let mut cells = 0u64;
    loop {
        let cell = match reader.next_cell() {
            Ok(Some(cell)) => cell,
            Ok(None) => break,
            Err(e) => {
                rows.problem(unreadable(e));
                return Ok(Flow::Stop);
            }
        };
        let (r, c) = cell.get_position();
        if c >= MAX_XLSX_COLUMNS {
            rows.problem(problem(
                None,
                None,
                format!(
                    "the first sheet has a cell in column {}: at most {MAX_XLSX_COLUMNS} columns are read",
                    u64::from(c) + 1
                ),
            ));
            return Ok(Flow::Stop);
        }
        cells += 1;
        if cells > limits.max_cells {
            return Err(LimitExceeded {
                what: "cells",
                limit: limits.max_cells,
            });
        }
        let value = Data::from(cell.get_value().clone());
        if matches!(value, Data::Empty) {
            continue;
        }
        match &mut current {
            Some((row, held)) if *row == r => held.push((c, value)),
            Some((row, _)) if *row > r => {
                rows.problem(problem(
                    Some(r as usize + 1),
                    None,
                    format!(
                        "comes after row {} in the sheet: rows must be in order",
                        *row + 1
                    ),
                ));
                return Ok(Flow::Stop);
            }
            _ => {
                if let Some((row, held)) = current.replace((r, vec![(c, value)]))
                    && rows.row(row, held)? == Flow::Stop
                {
                    return Ok(Flow::Stop);
                }
            }
        }
    }
    match current {
        Some((row, held)) => rows.row(row, held),
        None => Ok(Flow::Continue),
    }
}
