//! Rows into items: the column mapping, the checks of each row (required, whole
//! numbers), the grouping, and the one place every item passes before it is handed on
//! ([`Shaper::emit`]). Items leave in batches as soon as they are made; grouped rows
//! wait, as compact JSON text, until the file has been read, since a group's rows may
//! be anywhere in it.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{Flow, ImportError, ImportSpec, Problem, Sink, problem};
use crate::model::NewItem;

/// Items handed on together.
pub(super) const BATCH: usize = crate::store::STAGE_CHUNK;

/// Past this many problems the rest of the file is not looked at.
const MAX_PROBLEMS: usize = 1_000;

/// A check every item must pass before it is stored; its message names what is wrong
/// with the item's input.
pub type Check<'a> = dyn Fn(&NewItem) -> Result<(), String> + 'a;

/// Column positions, known once the header is read.
struct Layout {
    /// The file's own names, for problems.
    columns: Vec<String>,
    /// The names in the item input (after the mapping).
    names: Vec<String>,
    required: Vec<usize>,
    integer: Vec<usize>,
    group: Option<usize>,
    reference: Option<usize>,
}

/// One group's rows so far.
struct Group {
    key: String,
    first_line: usize,
    /// Its row objects as JSON, comma separated.
    rows: Vec<u8>,
}

pub(super) struct Shaper<'a> {
    spec: &'a ImportSpec,
    check: &'a Check<'a>,
    out: &'a mut dyn FnMut(Vec<NewItem>) -> Flow,
    layout: Option<Layout>,
    problems: Vec<Problem>,
    batch: Vec<NewItem>,
    groups: Vec<Group>,
    group_of: HashMap<String, usize>,
    items: u64,
    /// The receiver stopped taking items.
    closed: bool,
}

impl<'a> Shaper<'a> {
    pub fn new(
        spec: &'a ImportSpec,
        check: &'a Check<'a>,
        out: &'a mut dyn FnMut(Vec<NewItem>) -> Flow,
    ) -> Self {
        Shaper {
            spec,
            check,
            out,
            layout: None,
            problems: Vec::new(),
            batch: Vec::new(),
            groups: Vec::new(),
            group_of: HashMap::new(),
            items: 0,
            closed: false,
        }
    }

    fn flow(&self) -> Flow {
        if self.problems.len() >= MAX_PROBLEMS || self.closed {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    /// Every item goes through here, with the row it came from (a group's first).
    fn emit(&mut self, line: usize, item: NewItem) {
        if let Err(message) = (self.check)(&item) {
            self.problem(problem(Some(line), None, message));
            return;
        }
        if !self.problems.is_empty() {
            return;
        }
        self.batch.push(item);
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() || self.closed {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.items += batch.len() as u64;
        if (self.out)(batch) == Flow::Stop {
            self.closed = true;
        }
    }

    /// The rest of the grouped items, then the last batch. Answers how many items were
    /// handed on, or every problem found.
    pub fn finish(mut self) -> Result<u64, ImportError> {
        if self.problems.is_empty()
            && let Some(layout) = &self.layout
            && let Some(g) = layout.group
        {
            let name = layout.names[g].clone();
            for group in std::mem::take(&mut self.groups) {
                let mut rows = Vec::with_capacity(group.rows.len() + 2);
                rows.push(b'[');
                rows.extend_from_slice(&group.rows);
                rows.push(b']');
                let rows: Value = serde_json::from_slice(&rows).expect("rows written as JSON");
                let mut input = Map::new();
                input.insert(name.clone(), Value::String(group.key.clone()));
                input.insert("rows".into(), rows);
                let item = NewItem {
                    input: Value::Object(input),
                    reference: Some(group.key),
                };
                self.emit(group.first_line, item);
                if self.flow() == Flow::Stop {
                    break;
                }
            }
        }
        if self.problems.is_empty() {
            self.flush();
        }
        if self.problems.is_empty() {
            Ok(self.items)
        } else {
            Err(ImportError(self.problems))
        }
    }
}

impl Sink for Shaper<'_> {
    fn columns(&mut self, columns: &[String]) -> Flow {
        let spec = self.spec;
        for source in spec.mapping.keys() {
            if !columns.contains(source) {
                self.problems.push(problem(
                    None,
                    Some(source),
                    "is named in the mapping but not in the file",
                ));
            }
        }
        let names: Vec<String> = columns
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
                self.problems.push(problem(
                    None,
                    Some(col),
                    format!("is missing (the file has: {})", columns.join(", ")),
                ));
            }
        }
        if !self.problems.is_empty() {
            return Flow::Stop;
        }
        self.layout = Some(Layout {
            required: spec
                .required
                .iter()
                .chain(&spec.group_by)
                .filter_map(|c| index(c))
                .collect(),
            integer: spec
                .positive_integer
                .iter()
                .filter_map(|c| index(c))
                .collect(),
            group: spec.group_by.as_deref().and_then(index),
            reference: spec
                .reference
                .as_ref()
                .or(spec.group_by.as_ref())
                .and_then(|c| index(c)),
            columns: columns.to_vec(),
            names,
        });
        Flow::Continue
    }

    fn row(&mut self, line: usize, cells: Vec<String>) -> Flow {
        let Some(layout) = &self.layout else {
            return Flow::Stop;
        };
        let mut found = Vec::new();
        for &i in &layout.required {
            if cells[i].is_empty() {
                found.push(problem(Some(line), Some(&layout.columns[i]), "is empty"));
            }
        }
        for &i in &layout.integer {
            let v = &cells[i];
            if !v.is_empty() && !v.parse::<u64>().is_ok_and(|n| n > 0) {
                found.push(problem(
                    Some(line),
                    Some(&layout.columns[i]),
                    format!("`{v}` is not a whole number above zero"),
                ));
            }
        }
        if !found.is_empty() {
            for p in found {
                self.problem(p);
            }
            return self.flow();
        }
        if !self.problems.is_empty() {
            // The file is refused already: only its problems matter now.
            return self.flow();
        }
        let reference = layout.reference.map(|i| cells[i].clone());
        let group = layout.group.map(|g| cells[g].clone());
        let object = Value::Object(
            layout
                .names
                .iter()
                .cloned()
                .zip(
                    cells
                        .into_iter()
                        .enumerate()
                        .map(|(i, c)| match c.parse::<u64>() {
                            Ok(n) if layout.integer.contains(&i) => Value::from(n),
                            _ => Value::String(c),
                        }),
                )
                .collect::<Map<_, _>>(),
        );
        match group {
            None => self.emit(
                line,
                NewItem {
                    input: object,
                    reference,
                },
            ),
            Some(key) => {
                // Groups in order of first appearance.
                let next = self.groups.len();
                let at = *self.group_of.entry(key.clone()).or_insert(next);
                if at == next {
                    self.groups.push(Group {
                        key,
                        first_line: line,
                        rows: Vec::new(),
                    });
                }
                let rows = &mut self.groups[at].rows;
                if !rows.is_empty() {
                    rows.push(b',');
                }
                serde_json::to_writer(rows, &object).expect("JSON to memory");
            }
        }
        self.flow()
    }

    fn problem(&mut self, p: Problem) -> Flow {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
            if self.problems.len() == MAX_PROBLEMS {
                self.problems.push(problem(
                    None,
                    None,
                    format!("the file was not read past its first {MAX_PROBLEMS} problems"),
                ));
            }
        }
        self.flow()
    }
}
