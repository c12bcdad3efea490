//! Spreadsheet import: a CSV or XLSX file becomes the items of a job, one per row or
//! one per group of rows. Every problem is reported with its row and column, and a file
//! with any problem creates nothing.
//!
//! Files are read as a stream, row by row ([`delimited`] for CSV, [`sheet`] for XLSX),
//! into a [`shape::Shaper`] that checks each row and turns rows into items; the items
//! go to the store in chunks under a "being created" marker ([`job`]), so memory stays
//! flat however long the file is, other writers interleave, and the job appears whole
//! or not at all.

mod delimited;
mod job;
mod shape;
mod sheet;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

pub use job::{ItemCheck, Request, Upload, create_job};

use crate::model::NewItem;
use crate::store::StoreError;

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

/// The problems that make a file unusable, all of them.
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

/// Why an import created no job.
#[derive(Debug, thiserror::Error)]
pub enum ImportFailed {
    /// The file has problems (named by row and column): 422.
    #[error(transparent)]
    Invalid(#[from] ImportError),
    /// The file is past one of the configured [`ImportLimits`]: 413.
    #[error(transparent)]
    TooLarge(#[from] LimitExceeded),
    /// The store refused or failed the write.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How much one import may hold, from `[import]` in the configuration. Memory does not
/// grow with rows (they go to the store in chunks), except for rows grouped into
/// items, which are held, compactly, until the file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportLimits {
    /// Largest upload, in bytes, refused with 413 while it is still arriving.
    pub max_bytes: u64,
    /// Most data rows (blank ones are not counted).
    pub max_rows: u64,
    /// Most cells read, empty ones included: an XLSX file compresses well, so its
    /// bytes alone do not bound the work.
    pub max_cells: u64,
}

impl Default for ImportLimits {
    fn default() -> Self {
        ImportLimits {
            max_bytes: 64 << 20,
            max_rows: crate::store::MAX_ITEMS_PER_JOB as u64,
            max_cells: 20_000_000,
        }
    }
}

impl ImportLimits {
    /// No limit at all: for files already in memory ([`read`]).
    pub const NONE: ImportLimits = ImportLimits {
        max_bytes: u64::MAX,
        max_rows: u64::MAX,
        max_cells: u64::MAX,
    };
}

/// A file past one of the [`ImportLimits`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the file has more than {limit} {what} (the `[import] max_{what}` setting)")]
pub struct LimitExceeded {
    /// `rows`, `cells` or `bytes`.
    pub what: &'static str,
    pub limit: u64,
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

/// Whether a reader should go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Where a reader puts what it reads. A reader calls `columns` once with a header that
/// has no problem of its own, then `row` for each non-blank row that has none, and
/// `problem` for everything wrong; it reports "no rows" itself.
trait Sink {
    fn columns(&mut self, columns: &[String]) -> Flow;
    fn row(&mut self, line: usize, cells: Vec<String>) -> Flow;
    fn problem(&mut self, problem: Problem) -> Flow;
}

/// Header names must be there and distinct; reported against `row`.
fn header_problems(columns: &[String], row: usize, sink: &mut dyn Sink) -> bool {
    let mut seen = BTreeSet::new();
    let mut bad = false;
    for (i, c) in columns.iter().enumerate() {
        if c.is_empty() {
            sink.problem(problem(
                Some(row),
                None,
                format!("column {} has no name", i + 1),
            ));
            bad = true;
        } else if !seen.insert(c.as_str()) {
            sink.problem(problem(Some(row), Some(c), "appears twice in the header"));
            bad = true;
        }
    }
    bad
}

/// Collects a whole file (for [`read`]).
#[derive(Default)]
struct Collect {
    table: Table,
    problems: Vec<Problem>,
}

impl Sink for Collect {
    fn columns(&mut self, columns: &[String]) -> Flow {
        self.table.columns = columns.to_vec();
        Flow::Continue
    }
    fn row(&mut self, line: usize, cells: Vec<String>) -> Flow {
        self.table.rows.push((line, cells));
        Flow::Continue
    }
    fn problem(&mut self, problem: Problem) -> Flow {
        self.problems.push(problem);
        Flow::Continue
    }
}

fn collect(
    read: impl FnOnce(&mut Collect) -> Result<(), LimitExceeded>,
) -> Result<Table, ImportError> {
    let mut sink = Collect::default();
    if let Err(e) = read(&mut sink) {
        sink.problems.push(problem(None, None, e.to_string()));
    }
    if sink.problems.is_empty() {
        Ok(sink.table)
    } else {
        Err(ImportError(sink.problems))
    }
}

/// Read a whole CSV or XLSX file held in memory.
pub fn read(file_name: &str, bytes: &[u8]) -> Result<Table, ImportError> {
    match Format::detect(file_name, bytes)? {
        Format::Csv => read_csv(bytes),
        Format::Xlsx => read_xlsx(bytes),
    }
}

/// Read a CSV file (comma or semicolon separated, UTF-8, optional BOM).
pub fn read_csv(bytes: &[u8]) -> Result<Table, ImportError> {
    collect(|sink| delimited::read(bytes, &ImportLimits::NONE, sink))
}

/// Most columns a sheet may span (Excel's own limit is 16,384).
pub const MAX_XLSX_COLUMNS: u32 = 1_000;

/// Read the first sheet of an XLSX workbook; its first non-blank row is the header.
pub fn read_xlsx(bytes: &[u8]) -> Result<Table, ImportError> {
    collect(|sink| sheet::read(std::io::Cursor::new(bytes), &ImportLimits::NONE, sink))
}

/// Turn a table into items following `spec`.
pub fn to_items(table: &Table, spec: &ImportSpec) -> Result<Vec<NewItem>, ImportError> {
    let mut items = Vec::new();
    let accept = |_: &NewItem| -> Result<(), String> { Ok(()) };
    let mut out = |batch: Vec<NewItem>| {
        items.extend(batch);
        Flow::Continue
    };
    let mut shaper = shape::Shaper::new(spec, &accept, &mut out);
    if shaper.columns(&table.columns) == Flow::Continue {
        for (line, cells) in &table.rows {
            if shaper.row(*line, cells.clone()) == Flow::Stop {
                break;
            }
        }
    }
    shaper.finish()?;
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
