//! Spreadsheet import: a CSV file becomes the items of a job, one per row or one per
//! group of rows. Every problem is reported with its row and column, all at once, and a
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
    for (line, cells) in &table.rows {
        for col in spec.required.iter().chain(&spec.group_by) {
            let i = index(col).expect("checked");
            if cells[i].is_empty() {
                problems.push(problem(Some(*line), Some(&table.columns[i]), "is empty"));
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
                .zip(cells.iter().map(|c| Value::String(c.clone())))
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
}
