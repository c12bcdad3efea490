//! The importer's own tests: reading, shaping, and the problems it names.

use std::collections::BTreeMap;

use super::*;
use crate::model::NewItem;

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
fn a_sheet_too_wide_or_too_sparse_is_refused_without_laying_it_out() {
    let book = |cells: &[(u32, u16)]| {
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet();
        for (r, c) in cells {
            sheet.write_string(*r, *c, format!("c{c}")).unwrap();
        }
        book.save_to_buffer().unwrap()
    };
    // Two cells a million rows and 900 columns apart: 900 million cells if laid out;
    // read as a stream, the far one is just a value outside the header.
    let far = read_xlsx(&book(&[(0, 0), (1_048_575, 900)])).unwrap_err();
    assert!(
        far.to_string()
            .contains("row 1048576: has a value in column 901 where the header has no name"),
        "{far}"
    );
    let wide = read_xlsx(&book(&[(0, 0), (1, 16_383)])).unwrap_err();
    assert!(wide.to_string().contains("column 16384"), "{wide}");
    // Within the limits the same kind of file reads.
    let fine = read_xlsx(&book(&[(0, 0), (0, 1), (3, 1)])).unwrap();
    assert_eq!(fine.rows.len(), 1);
}

/// Reads `file` as an upload would be, with `limits`, into items.
fn stream(
    name: &str,
    file: &[u8],
    spec: &ImportSpec,
    limits: ImportLimits,
) -> Result<Vec<NewItem>, ImportFailed> {
    let mut items = Vec::new();
    let mut out = |batch: Vec<NewItem>| {
        assert!(batch.len() <= shape::BATCH);
        items.extend(batch);
        Flow::Continue
    };
    let accept = |_: &NewItem| -> Result<(), String> { Ok(()) };
    let mut shaper = shape::Shaper::new(spec, &accept, &mut out);
    let read = match Format::detect(name, file)? {
        Format::Csv => delimited::read(file, &limits, &mut shaper),
        Format::Xlsx => sheet::read(std::io::Cursor::new(file), &limits, &mut shaper),
    };
    read?;
    shaper.finish()?;
    Ok(items)
}

#[test]
fn limits_on_rows_and_cells_stop_the_read() {
    let csv: String = std::iter::once("code,qty\n".to_owned())
        .chain((0..2_500).map(|i| format!("C{i},1\n")))
        .collect();
    let spec = ImportSpec::default();
    let items = stream("a.csv", csv.as_bytes(), &spec, ImportLimits::default()).unwrap();
    assert_eq!(items.len(), 2_500, "every row, in batches");
    assert_eq!(items[2_499].input["code"], "C2499");
    let rows = ImportLimits {
        max_rows: 1_000,
        ..ImportLimits::default()
    };
    let err = stream("a.csv", csv.as_bytes(), &spec, rows).unwrap_err();
    assert!(
        matches!(&err, ImportFailed::TooLarge(l) if l.what == "rows" && l.limit == 1_000),
        "{err}"
    );
    assert!(err.to_string().contains("`[import] max_rows`"), "{err}");
    let cells = ImportLimits {
        max_cells: 100,
        ..ImportLimits::default()
    };
    let file = xlsx(&[&["code", "qty"], &["A", "1"]]);
    assert_eq!(stream("a.xlsx", &file, &spec, cells).unwrap().len(), 1);
    let many: Vec<Vec<String>> = (0..60).map(|i| vec![format!("C{i}"), "1".into()]).collect();
    let mut rows: Vec<Vec<&str>> = vec![vec!["code", "qty"]];
    rows.extend(many.iter().map(|r| r.iter().map(String::as_str).collect()));
    let rows: Vec<&[&str]> = rows.iter().map(Vec::as_slice).collect();
    let err = stream("a.xlsx", &xlsx(&rows), &spec, cells).unwrap_err();
    assert!(
        matches!(&err, ImportFailed::TooLarge(l) if l.what == "cells"),
        "{err}"
    );
}

#[test]
fn grouped_rows_far_apart_make_one_item_and_every_check_runs() {
    let mut csv = String::from("consultora_code,product_code,quantity\n");
    for i in 0..3_000 {
        csv.push_str(&format!("C{},P{i},{}\n", i % 3, i % 7 + 1));
    }
    let items = stream(
        "g.csv",
        csv.as_bytes(),
        &gsp_spec(),
        ImportLimits::default(),
    )
    .unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[1].reference.as_deref(), Some("C1"));
    assert_eq!(items[1].input["rows"].as_array().unwrap().len(), 1_000);
    assert_eq!(items[1].input["rows"][999]["product_code"], "P2998");
    assert_eq!(items[1].input["rows"][0]["quantity"], 2);
    // A problem on the last row refuses the file, however many rows came before.
    csv.push_str("C1,P9,0\n");
    let err = stream(
        "g.csv",
        csv.as_bytes(),
        &gsp_spec(),
        ImportLimits::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("row 3002, column `quantity`: `0` is not a whole number above zero"),
        "{err}"
    );
    // The check every item passes names the row it came from.
    let spec = ImportSpec::default();
    let refuse = |item: &NewItem| match item.input["code"].as_str() {
        Some("B") => Err("input.code: `B` is not allowed".to_owned()),
        _ => Ok(()),
    };
    let mut out = |_: Vec<NewItem>| Flow::Continue;
    let mut shaper = shape::Shaper::new(&spec, &refuse, &mut out);
    delimited::read(&b"code\nA\nB\n"[..], &ImportLimits::default(), &mut shaper).unwrap();
    let err = shaper.finish().unwrap_err().to_string();
    assert!(
        err.contains("row 3: input.code: `B` is not allowed"),
        "{err}"
    );
}

#[test]
fn csv_line_ends_split_across_reads_count_once() {
    // Large enough that CRLF pairs fall across the reader's buffer boundaries.
    let mut csv = String::from("code,qty\r\n");
    for i in 0..20_000 {
        csv.push_str(&format!("C{i},{}\r\n", i + 1));
    }
    let table = read_csv(csv.as_bytes()).unwrap();
    assert_eq!(table.rows.len(), 20_000);
    assert!(
        table
            .rows
            .iter()
            .enumerate()
            .all(|(i, (line, _))| *line == i + 2)
    );
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
