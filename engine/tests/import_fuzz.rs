//! A fuzz target for the spreadsheet importer, run by the suite: seeded mutations of
//! real CSV and XLSX files (bytes flipped, cut, repeated, spliced with the tokens that
//! break parsers: quotes, delimiters, line ends, NUL, a BOM, huge and negative
//! numbers) go through `import::check_invariants`, which panics when the importer
//! panics or breaks a promise. Reproduce a failure with its seed and case number;
//! search further with `FAENA_FUZZ_SEED=… FAENA_FUZZ_CASES=… cargo test --test import_fuzz`.

use std::panic::AssertUnwindSafe;

use faena::import;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CASES: usize = 20_000;
const SEED: u64 = 0x0fae_0a00;

const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\"\"",
    b",",
    b";",
    b"\n",
    b"\r\n",
    b"\r",
    b"\0",
    b"\xEF\xBB\xBF",
    b"\xFF\xFE",
    b"-1",
    b"0",
    b"99999999999999999999999",
    b"1e308",
    b"NaN",
    b"3.5",
    b" ",
    b"consultora_code",
    b"quantity",
    b"P001",
    b"=1+1",
    b"\xC3\xB1",
    b"\xE2\x80\xAE",
    b"PK\x03\x04",
];

fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let mut files = vec![
        (
            "orders.csv",
            b"consultora_code,product_code,quantity\nC001,P001,2\nC001,P002,1\nC002,P003,5\n"
                .to_vec(),
        ),
        (
            "orders.csv",
            "\u{feff}consultora_code;product_code;quantity;note\r\nC001;P001;2;\"con; punto y coma\"\r\nC003;P004;1;\"comillas \"\"dobles\"\"\"\r\n"
                .as_bytes()
                .to_vec(),
        ),
        (
            "orders.txt",
            b"order_number,supplier_ruc,amount\nOC-1,20100070970,100.50\nOC-2,20100070970,7\n"
                .to_vec(),
        ),
    ];
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    for (c, h) in ["consultora_code", "product_code", "quantity"]
        .iter()
        .enumerate()
    {
        sheet.write_string(0, c as u16, *h).unwrap();
    }
    for r in 1..6u32 {
        sheet.write_string(r, 0, format!("C{:03}", r % 3)).unwrap();
        sheet.write_string(r, 1, format!("P{r:03}")).unwrap();
        sheet.write_number(r, 2, f64::from(r)).unwrap();
    }
    files.push(("orders.xlsx", book.save_to_buffer().unwrap()));
    files
}

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = if b.is_empty() {
            0
        } else {
            rng.random_range(0..b.len())
        };
        match rng.random_range(0..6) {
            0 if !b.is_empty() => b[at] ^= 1 << rng.random_range(0..8),
            1 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                b.splice(at..at, t.iter().copied());
            }
            2 if !b.is_empty() => {
                let end = (at + rng.random_range(1..16)).min(b.len());
                b.drain(at..end);
            }
            3 if !b.is_empty() => {
                let end = (at + rng.random_range(1..64)).min(b.len());
                let piece = b[at..end].to_vec();
                for _ in 0..rng.random_range(1..50) {
                    b.splice(at..at, piece.iter().copied());
                }
            }
            4 => b.truncate(at),
            _ => {
                let n = rng.random_range(1..8);
                let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                b.splice(at..at, junk);
            }
        }
    }
    b
}

#[test]
fn the_importer_keeps_its_promises_on_mangled_files() {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let seed = env("FAENA_FUZZ_SEED").unwrap_or(SEED);
    let cases = env("FAENA_FUZZ_CASES").map_or(CASES, |n| n as usize);
    let corpus = corpus();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut accepted, mut refused) = (0usize, 0usize);
    for case in 0..cases {
        let (name, original) = &corpus[case % corpus.len()];
        let bytes = mutate(&mut rng, original);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            import::check_invariants(name, &bytes, "consultora_code", "quantity");
            import::read(name, &bytes).is_ok()
        }));
        match outcome {
            Ok(true) => accepted += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!(
                "case {case} (seed {seed}, {name}) broke the importer; input: {:?}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
    println!(
        "import fuzz (seed {seed}): {cases} mangled files, {accepted} read, {refused} refused with a named problem"
    );
    assert!(accepted > cases / 20, "the mutations are not all fatal");
    assert!(refused > cases / 20, "the mutations break files");
}
