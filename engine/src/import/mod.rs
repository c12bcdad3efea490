//! Spreadsheet import: a CSV or XLSX file becomes the items of a job, one per row or
//! one per group of rows. Every problem is reported with its row and column, all at once, and a
//! file with any problem creates nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::model::NewItem;

/// At most this many problems are listed; the rest are counted.
const MAX_LISTED: usize = 50;

/// A problem found in the file. `row` is the line number a spreadsheet shows (the
/// header is row 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub row: Option<usize>,
    pub column: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.row, &self.column) {
            (Some(r), Some(c)) => write!(f, "row {r}, column `{c}`: {}", self.message),
            (Some(r), None) => write!(f, "row {r}: {}", self.message),
            (None, Some(c)) => write!(f, "column `{c}`: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", summary(.0))]
pub struct ImportError(pub Vec<Problem>);

fn summary(problems: &[Problem]) -> String {
    let listed: Vec<String> = problems
        .iter()
        .take(MAX_LISTED)
        .map(|p| p.to_string())
        .collect();
    let more = problems.len().saturating_sub(MAX_LISTED);
    let head = if problems.len() == 1 {
        "the file has a problem".to_owned()
    } else {
        format!("the file has {} problems", problems.len())
    };
    let tail = if more > 0 {
        format!("; and {more} more")
    } else {
        String::new()
    };
    format!("{head}: {}{tail}", listed.join("; "))
}

fn problem(row: Option<usize>, column: Option<&str>, message: impl Into<String>) -> Problem {
    Problem {
        row,
        column: column.map(str::to_owned),
        message: message.into(),
    }
}

/// A parsed sheet: column names and rows (with their spreadsheet row numbers).
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<(usize, Vec<String>)>,
}

/// How rows become items.
#[derive(Debug, Clone, Default)]
pub struct ImportSpec {
    /// Rows with the same value here become one item: `{COLUMN: value, "rows": [...]}`.
    pub group_by: Option<String>,
    /// Rename columns: file column → field name in the item input.
    pub mapping: BTreeMap<String, String>,
    /// Columns (after renaming) that must be present and non-empty in every row.
    pub required: Vec<String>,
    /// The column whose value becomes the item's reference (default: `group_by`).
    pub reference: Option<String>,
    /// Columns (after renaming) holding a whole number above zero, e.g. a quantity;
    /// they become JSON numbers.
    pub positive_integer: Vec<String>,
}

/// The import defaults an operation declares in its input schema under
/// `x-faena-import`, e.g. `{"group_by": "consultora_code", "required": [..],
/// "positive_integer": ["quantity"]}`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct ImportDefaults {
    pub group_by: Option<String>,
    pub reference: Option<String>,
    pub required: Vec<String>,
    pub positive_integer: Vec<String>,
}

impl ImportDefaults {
    /// Read them from an operation's input schema; a schema without any gives none.
    pub fn from_schema(schema: &Value) -> ImportDefaults {
        schema
            .get("x-faena-import")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }
}

/// The spreadsheet formats read, by the file's name and its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Xlsx,
}

impl Format {
    /// `.xlsx`/`.xlsm` (or a zip without a telling name) is XLSX; `.csv` or text is CSV.
    pub fn detect(file_name: &str, bytes: &[u8]) -> Result<Format, ImportError> {
        let lower = file_name.to_ascii_lowercase();
        let zip = bytes.starts_with(b"PK\x03\x04");
        if lower.ends_with(".xlsx") || lower.ends_with(".xlsm") {
            return Ok(Format::Xlsx);
        }
        if lower.ends_with(".csv") || lower.ends_with(".txt") {
            return Ok(Format::Csv);
        }
        if lower.ends_with(".xls") || lower.ends_with(".ods") {
            return Err(ImportError(vec![problem(
                None,
                None,
                format!("`{file_name}`: only .csv and .xlsx files are read; save it as .xlsx"),
            )]));
        }
        Ok(if zip { Format::Xlsx } else { Format::Csv })
    }
}

/// Read a CSV or XLSX file.
pub fn read(file_name: &str, bytes: &[u8]) -> Result<Table, ImportError> {
    match Format::detect(file_name, bytes)? {
        Format::Csv => read_csv(bytes),
        Format::Xlsx => read_xlsx(bytes),
    }
}

/// A cell as text: whole numbers without a decimal point (Excel stores 3 as 3.0).
fn cell_text(cell: &calamine::Data) -> Result<String, String> {
    use calamine::Data;
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

/// Most columns a sheet may span (Excel's own limit is 16,384).
pub const MAX_XLSX_COLUMNS: u32 = 1_000;
/// Most cells the sheet's bounding box may hold: the reader lays them out densely, so
/// a file naming two far-apart cells must not get to allocate the space between.
pub const MAX_XLSX_CELLS: u64 = 5_000_000;

/// The first sheet's cells, streamed with limits before anything dense is allocated:
/// a small crafted workbook can otherwise name a cell at XFD1048576 and make the reader
/// lay out 17 billion cells. A panic inside the XLSX parser (the fuzz test found an
/// arithmetic overflow on cell references that are too long) is a refusal too.
fn xlsx_range(bytes: &[u8]) -> Result<calamine::Range<calamine::Data>, String> {
    use calamine::Reader;
    let parse = || -> Result<calamine::Range<calamine::Data>, String> {
        let mut book: calamine::Xlsx<_> =
            calamine::open_workbook_from_rs(std::io::Cursor::new(bytes))
                .map_err(|e| format!("not a readable XLSX workbook ({e})"))?;
        let name = book
            .sheet_names()
            .first()
            .cloned()
            .ok_or("the workbook has no sheet")?;
        let mut reader = book
            .worksheet_cells_reader(&name)
            .map_err(|e| format!("the first sheet cannot be read ({e})"))?;
        let mut cells = Vec::new();
        let (mut rows, mut cols) = ((u32::MAX, 0u32), (u32::MAX, 0u32));
        while let Some(cell) = reader
            .next_cell()
            .map_err(|e| format!("the first sheet cannot be read ({e})"))?
        {
            let (r, c) = cell.get_position();
            if c >= MAX_XLSX_COLUMNS {
                return Err(format!(
                    "the first sheet has a cell in column {}: at most {MAX_XLSX_COLUMNS} columns are read",
                    u64::from(c) + 1
                ));
            }
            let value = calamine::Data::from(cell.get_value().clone());
            if matches!(value, calamine::Data::Empty) {
                continue;
            }
            rows = (rows.0.min(r), rows.1.max(r));
            cols = (cols.0.min(c), cols.1.max(c));
            let area = u64::from(rows.1 - rows.0 + 1) * u64::from(cols.1 - cols.0 + 1);
            if area > MAX_XLSX_CELLS {
                return Err(format!(
                    "the first sheet spans more than {MAX_XLSX_CELLS} cells (rows {} to {}); \
                     split it into smaller files",
                    u64::from(rows.0) + 1,
                    u64::from(rows.1) + 1
                ));
            }
            cells.push(calamine::Cell::new((r, c), value));
        }
        Ok(calamine::Range::from_sparse(cells))
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse))
        .unwrap_or_else(|_| Err("not a readable XLSX workbook (its sheet is malformed)".into()))
}

/// Read the first sheet of an XLSX workbook; its first row is the header.
pub fn read_xlsx(bytes: &[u8]) -> Result<Table, ImportError> {
    let fail = |m: String| ImportError(vec![problem(None, None, m)]);
    let range = xlsx_range(bytes).map_err(fail)?;
    let Some((first_row, _)) = range.start() else {
        return Err(fail("the file is empty: a header row is needed".into()));
    };
    let mut rows_iter = range.rows();
    let header = rows_iter.next().unwrap_or(&[]);
    let mut problems = Vec::new();
    let header_row = first_row as usize + 1;
    let columns: Vec<String> = header
        .iter()
        .map(|c| cell_text(c).unwrap_or_default())
        .collect();
    // Trailing unnamed columns with nothing in them are formatting, not data.
    let width = columns
        .iter()
        .rposition(|c| !c.is_empty())
        .map_or(0, |i| i + 1);
    let columns: Vec<String> = columns.into_iter().take(width).collect();
    if columns.is_empty() {
        return Err(fail("the file is empty: a header row is needed".into()));
    }
    let mut seen = BTreeSet::new();
    for (i, c) in columns.iter().enumerate() {
        if c.is_empty() {
            problems.push(problem(
                Some(header_row),
                None,
                format!("column {} has no name", i + 1),
            ));
        } else if !seen.insert(c.clone()) {
            problems.push(problem(
                Some(header_row),
                Some(c),
                "appears twice in the header",
            ));
        }
    }
    let mut rows = Vec::new();
    for (i, cells) in rows_iter.enumerate() {
        let line = header_row + 1 + i;
        let mut values = Vec::with_capacity(width);
        for (j, cell) in cells.iter().enumerate() {
            let text = cell_text(cell);
            if j >= width {
                if !matches!(text.as_deref(), Ok("")) {
                    problems.push(problem(
                        Some(line),
                        None,
                        format!(
                            "has a value in column {} where the header has no name",
                            j + 1
                        ),
                    ));
                }
                continue;
            }
            match text {
                Ok(t) => values.push(t),
                Err(m) => {
                    problems.push(problem(Some(line), Some(&columns[j]), m));
                    values.push(String::new());
                }
            }
        }
        values.resize(width, String::new());
        if values.iter().all(String::is_empty) {
            continue;
        }
        rows.push((line, values));
    }
    if rows.is_empty() && problems.is_empty() {
        problems.push(problem(None, None, "the file has a header but no rows"));
    }
    if problems.is_empty() {
        Ok(Table { columns, rows })
    } else {
        Err(ImportError(problems))
    }
}

/// Read a CSV file (comma or semicolon separated, UTF-8, optional BOM).
pub fn read_csv(bytes: &[u8]) -> Result<Table, ImportError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ImportError(vec![problem(
            None,
            None,
            format!("the file is not UTF-8 text ({e})"),
        )])
    })?;
    // One line end for all: the csv reader counts a record's line at its first byte, and
    // after a `\r` it has not yet seen the `\n`, so files from Windows (CRLF) or old
    // Macs (CR) would name every row one line too early (the fuzz test found it).
    let text: std::borrow::Cow<'_, str> = if text.contains('\r') {
        text.replace("\r\n", "\n").replace('\r', "\n").into()
    } else {
        text.into()
    };
    let text = text.as_ref();
    let first = text.lines().next().unwrap_or("");
    let delimiter = if first.matches(';').count() > first.matches(',').count() {
        b';'
    } else {
        b','
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let mut problems = Vec::new();
    let columns: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(|c| c.trim().to_owned()).collect(),
        Err(e) => {
            return Err(ImportError(vec![problem(
                Some(1),
                None,
                format!("unreadable header: {e}"),
            )]));
        }
    };
    if columns.iter().all(|c| c.is_empty()) {
        return Err(ImportError(vec![problem(
            None,
            None,
            "the file is empty: a header row is needed",
        )]));
    }
    let mut seen = BTreeSet::new();
    for (i, c) in columns.iter().enumerate() {
        if c.is_empty() {
            problems.push(problem(
                Some(1),
                None,
                format!("column {} has no name", i + 1),
            ));
        } else if !seen.insert(c.clone()) {
            problems.push(problem(Some(1), Some(c), "appears twice in the header"));
        }
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        match record {
            Ok(r) => {
                let line = r.position().map(|p| p.line() as usize).unwrap_or(0);
                if r.iter().all(|v| v.trim().is_empty()) {
                    continue;
                }
                rows.push((line, r.iter().map(|v| v.trim().to_owned()).collect()));
            }
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize);
                let message = match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => {
                        format!("has {len} cells where the header has {expected_len}")
                    }
                    _ => e.to_string(),
                };
                problems.push(problem(line, None, message));
            }
        }
    }
    if rows.is_empty() && problems.is_empty() {
        problems.push(problem(None, None, "the file has a header but no rows"));
    }
    if problems.is_empty() {
        Ok(Table { columns, rows })
    } else {
        Err(ImportError(problems))
    }
}

/// Turn a table into items following `spec`.
pub fn to_items(table: &Table, spec: &ImportSpec) -> Result<Vec<NewItem>, ImportError> {
    let mut problems = Vec::new();
    for source in spec.mapping.keys() {
        if !table.columns.contains(source) {
            problems.push(problem(
                None,
                Some(source),
                "is named in the mapping but not in the file",
            ));
        }
    }
    let names: Vec<String> = table
        .columns
        .iter()
        .map(|c| spec.mapping.get(c).cloned().unwrap_or_else(|| c.clone()))
        .collect();
    let index = |name: &str| names.iter().position(|n| n == name);
    for col in spec
        .required
        .iter()
        .chain(&spec.group_by)
        .chain(&spec.reference)
        .chain(&spec.positive_integer)
    {
        if index(col).is_none() {
            problems.push(problem(
                None,
                Some(col),
                format!("is missing (the file has: {})", table.columns.join(", ")),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(ImportError(problems));
    }
    let integer_cols: Vec<usize> = spec
        .positive_integer
        .iter()
        .filter_map(|c| index(c))
        .collect();
    for (line, cells) in &table.rows {
        for col in spec.required.iter().chain(&spec.group_by) {
            let i = index(col).expect("checked");
            if cells[i].is_empty() {
                problems.push(problem(Some(*line), Some(&table.columns[i]), "is empty"));
            }
        }
        for &i in &integer_cols {
            let v = &cells[i];
            if !v.is_empty() && !v.parse::<u64>().is_ok_and(|n| n > 0) {
                problems.push(problem(
                    Some(*line),
                    Some(&table.columns[i]),
                    format!("`{v}` is not a whole number above zero"),
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(ImportError(problems));
    }
    let object = |cells: &[String]| -> Value {
        Value::Object(
            names
                .iter()
                .cloned()
                .zip(
                    cells
                        .iter()
                        .enumerate()
                        .map(|(i, c)| match c.parse::<u64>() {
                            Ok(n) if integer_cols.contains(&i) => Value::from(n),
                            _ => Value::String(c.clone()),
                        }),
                )
                .collect::<Map<_, _>>(),
        )
    };
    let reference_col = spec
        .reference
        .as_ref()
        .or(spec.group_by.as_ref())
        .and_then(|c| index(c));
    let items = match &spec.group_by {
        None => table
            .rows
            .iter()
            .map(|(_, cells)| NewItem {
                input: object(cells),
                reference: reference_col.map(|i| cells[i].clone()),
            })
            .collect(),
        Some(group) => {
            let g = index(group).expect("checked");
            // Groups in order of first appearance.
            let mut order: Vec<String> = Vec::new();
            let mut groups: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for (_, cells) in &table.rows {
                let key = cells[g].clone();
                let rows = groups.entry(key.clone()).or_insert_with(|| {
                    order.push(key.clone());
                    Vec::new()
                });
                rows.push(object(cells));
            }
            order
                .into_iter()
                .map(|key| {
                    let rows = groups.remove(&key).expect("grouped");
                    let mut input = Map::new();
                    input.insert(group.clone(), Value::String(key.clone()));
                    input.insert("rows".into(), Value::Array(rows));
                    NewItem {
                        input: Value::Object(input),
                        reference: Some(key),
                    }
                })
                .collect()
        }
    };
    Ok(items)
}

/// What the importer promises for any bytes at all, checked by the fuzz test
/// (`engine/tests/import_fuzz.rs`): it returns rather than panics; a refusal names at
/// least one problem, each with a message; an accepted file is a table with distinct,
/// named columns and at least one row, every row as wide as the header and numbered
/// after it in order; and turning that table into items (grouped by `group_by`, with
/// `positive_integer` columns) either gives items that hold every row once or names its
/// problems. Panics when a promise is broken.
pub fn check_invariants(file_name: &str, bytes: &[u8], group_by: &str, positive_integer: &str) {
    let refused = |e: &ImportError| {
        assert!(!e.0.is_empty(), "a refusal names a problem");
        assert!(
            e.0.iter().all(|p| !p.message.trim().is_empty()),
            "every problem has a message: {e:?}"
        );
        assert!(!e.to_string().is_empty());
    };
    let table = match read(file_name, bytes) {
        Ok(t) => t,
        Err(e) => return refused(&e),
    };
    assert!(!table.columns.is_empty(), "a table has columns");
    let names: BTreeSet<&String> = table.columns.iter().collect();
    assert_eq!(
        names.len(),
        table.columns.len(),
        "distinct columns: {table:?}"
    );
    assert!(table.columns.iter().all(|c| !c.is_empty()), "named columns");
    assert!(!table.rows.is_empty(), "a table has rows");
    let mut last = 1;
    for (line, cells) in &table.rows {
        assert_eq!(
            cells.len(),
            table.columns.len(),
            "row {line} as wide as the header"
        );
        assert!(*line > last, "rows numbered after the header, in order");
        last = *line;
    }
    let spec = ImportSpec {
        group_by: table
            .columns
            .iter()
            .any(|c| c == group_by)
            .then(|| group_by.to_owned()),
        positive_integer: table
            .columns
            .iter()
            .filter(|c| *c == positive_integer)
            .cloned()
            .collect(),
        ..ImportSpec::default()
    };
    match to_items(&table, &spec) {
        Err(e) => refused(&e),
        Ok(items) => {
            assert!(!items.is_empty() && items.len() <= table.rows.len());
            if spec.group_by.is_some() {
                let rows: usize = items
                    .iter()
                    .map(|i| i.input["rows"].as_array().map_or(0, Vec::len))
                    .sum();
                assert_eq!(rows, table.rows.len(), "every row in one item");
            } else {
                assert_eq!(items.len(), table.rows.len(), "one item per row");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_grouped_into_items_in_file_order() {
        let csv = "\u{feff}consultora_code;consultora_name;product_code;quantity\nC2;Ana;P1;3\nC1;Bea;P9;1\nC2;Ana;P2;5\n";
        let table = read_csv(csv.as_bytes()).unwrap();
        let spec = ImportSpec {
            group_by: Some("consultora_code".into()),
            required: vec!["product_code".into(), "quantity".into()],
            ..Default::default()
        };
        let items = to_items(&table, &spec).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].reference.as_deref(), Some("C2"));
        assert_eq!(items[0].input["rows"][1]["product_code"], "P2");
        assert_eq!(items[1].input["rows"][0]["consultora_name"], "Bea");
    }

    #[test]
    fn every_problem_is_named_by_row_and_column() {
        let csv = "code,qty\nA,1\n,2\nB\nC,\n";
        let err = read_csv(csv.as_bytes()).unwrap_err().to_string();
        assert!(
            err.contains("row 4: has 1 cells where the header has 2"),
            "{err}"
        );
        let table = read_csv(b"code,qty\nA,1\n,2\nC,\n").unwrap();
        let spec = ImportSpec {
            group_by: Some("code".into()),
            required: vec!["qty".into()],
            ..Default::default()
        };
        let err = to_items(&table, &spec).unwrap_err();
        assert_eq!(
            err.0.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            [
                "row 3, column `code`: is empty",
                "row 4, column `qty`: is empty"
            ]
        );
        let err = to_items(
            &table,
            &ImportSpec {
                group_by: Some("nope".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("column `nope`: is missing (the file has: code, qty)"),
            "{err}"
        );
    }

    #[test]
    fn rows_are_named_the_same_whatever_the_line_ends() {
        for end in ["\n", "\r\n", "\r"] {
            let csv = ["code,qty", "A,1", "\"a\nb\",3", "B", "C,2"].join(end) + end;
            let err = read_csv(csv.as_bytes()).unwrap_err().to_string();
            assert!(
                err.contains("row 5: has 1 cells where the header has 2"),
                "{end:?}: {err}"
            );
            let table = read_csv(["code,qty", "A,1", "C,2"].join(end).as_bytes()).unwrap();
            let lines: Vec<usize> = table.rows.iter().map(|(l, _)| *l).collect();
            assert_eq!(lines, [2, 3], "{end:?}");
        }
    }

    #[test]
    fn mapping_renames_and_bad_files_are_refused() {
        let table = read_csv(b"Codigo,Cantidad\nX,4\n").unwrap();
        let spec = ImportSpec {
            mapping: BTreeMap::from([("Codigo".into(), "product_code".into())]),
            reference: Some("product_code".into()),
            ..Default::default()
        };
        let items = to_items(&table, &spec).unwrap();
        assert_eq!(items[0].input["product_code"], "X");
        assert_eq!(items[0].reference.as_deref(), Some("X"));
        assert!(read_csv(b"").unwrap_err().to_string().contains("empty"));
        assert!(
            read_csv(b"a,b\n")
                .unwrap_err()
                .to_string()
                .contains("no rows")
        );
        assert!(
            read_csv(b"a,a\n1,2\n")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(
            read_csv(&[0xff, 0xfe, 0x00])
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
    }

    fn xlsx(rows: &[&[&str]]) -> Vec<u8> {
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet();
        for (r, row) in rows.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                // Numbers go in as numbers, the way a spreadsheet stores them.
                match v.parse::<f64>() {
                    Ok(n) => sheet.write_number(r as u32, c as u16, n).map(|_| ()),
                    Err(_) if v.is_empty() => Ok(()),
                    Err(_) => sheet.write_string(r as u32, c as u16, *v).map(|_| ()),
                }
                .unwrap();
            }
        }
        book.save_to_buffer().unwrap()
    }

    #[test]
    fn a_sheet_too_wide_or_too_sparse_is_refused_before_it_is_laid_out() {
        let book = |cells: &[(u32, u16)]| {
            let mut book = rust_xlsxwriter::Workbook::new();
            let sheet = book.add_worksheet();
            for (r, c) in cells {
                sheet.write_string(*r, *c, format!("c{c}")).unwrap();
            }
            book.save_to_buffer().unwrap()
        };
        // Two cells a million rows and 900 columns apart: 900 million cells if laid out.
        let far = read_xlsx(&book(&[(0, 0), (1_048_575, 900)])).unwrap_err();
        assert!(
            far.to_string().contains("spans more than 5000000 cells"),
            "{far}"
        );
        let wide = read_xlsx(&book(&[(0, 0), (1, 16_383)])).unwrap_err();
        assert!(wide.to_string().contains("column 16384"), "{wide}");
        // Within the limits the same kind of file reads.
        let fine = read_xlsx(&book(&[(0, 0), (0, 1), (3, 1)])).unwrap();
        assert_eq!(fine.rows.len(), 1);
    }

    fn gsp_spec() -> ImportSpec {
        let d = ImportDefaults::from_schema(&serde_json::json!({
            "type": "object",
            "x-faena-import": {
                "group_by": "consultora_code",
                "required": ["product_code", "quantity"],
                "positive_integer": ["quantity"]
            }
        }));
        ImportSpec {
            group_by: d.group_by,
            required: d.required,
            positive_integer: d.positive_integer,
            reference: d.reference,
            ..Default::default()
        }
    }

    #[test]
    fn xlsx_rows_group_with_numbers_as_numbers() {
        let file = xlsx(&[
            &[
                "consultora_code",
                "consultora_name",
                "product_code",
                "quantity",
            ],
            &["C00002", "Ana", "P001", "3"],
            &["C00001", "Bea", "P009", "1"],
            &["", "", "", ""],
            &["C00002", "Ana", "P002", "12"],
        ]);
        assert_eq!(Format::detect("orders.xlsx", &file).unwrap(), Format::Xlsx);
        assert_eq!(Format::detect("upload", &file).unwrap(), Format::Xlsx);
        let table = read("orders.xlsx", &file).unwrap();
        assert_eq!(
            table.rows[2].0, 5,
            "spreadsheet row numbers, blank rows skipped"
        );
        let items = to_items(&table, &gsp_spec()).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].reference.as_deref(), Some("C00002"));
        assert_eq!(items[0].input["rows"][1]["quantity"], 12);
        assert_eq!(items[0].input["rows"][0]["product_code"], "P001");
        assert_eq!(items[1].input["rows"][0]["consultora_name"], "Bea");
    }

    #[test]
    fn xlsx_problems_are_named_by_row_and_column() {
        let file = xlsx(&[
            &["consultora_code", "product_code", "quantity"],
            &["C00001", "P001", "2"],
            &["C00001", "P002", "two"],
            &["", "P003", "1"],
            &["C00003", "P004", "0"],
            &["C00003", "P005", "1.5"],
        ]);
        let table = read("orders.xlsx", &file).unwrap();
        let err = to_items(&table, &gsp_spec()).unwrap_err();
        assert_eq!(
            err.0.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            [
                "row 3, column `quantity`: `two` is not a whole number above zero",
                "row 4, column `consultora_code`: is empty",
                "row 5, column `quantity`: `0` is not a whole number above zero",
                "row 6, column `quantity`: `1.5` is not a whole number above zero",
            ]
        );
        let missing = read("x.xlsx", &xlsx(&[&["code", "qty"], &["A", "1"]])).unwrap();
        let err = to_items(&missing, &gsp_spec()).unwrap_err().to_string();
        assert!(
            err.contains("column `consultora_code`: is missing"),
            "{err}"
        );
        assert!(
            read("broken.xlsx", b"PK\x03\x04 not really a zip")
                .unwrap_err()
                .to_string()
                .contains("not a readable XLSX workbook")
        );
        assert!(
            read("old.xls", b"")
                .unwrap_err()
                .to_string()
                .contains("only .csv and .xlsx")
        );
        assert!(
            read("empty.xlsx", &xlsx(&[]))
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
