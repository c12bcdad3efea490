//! Redaction of secret values from what a plugin reports (logs, steps, progress,
//! results, errors, text artifacts). A plugin may pass a secret on transformed, so each
//! secret is matched in its common shapes: any letter case, with its separators dropped
//! or changed (`AB12-CD34` as `ab12cd34` or `ab12 cd34`), in base64 (standard or URL-safe,
//! alone or inside a longer encoded string such as HTTP Basic credentials), hex,
//! percent-encoded and JSON-escaped. The matchers are built once per secret value
//! ([`Revealed::new`]) and shared by every run that reveals it; a text is scanned once
//! per matcher. What this cannot catch is listed in docs/security.md.

use std::ops::Range;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// What replaces a secret.
pub const MASK: &str = "***";

/// Secrets shorter than this (in letters and digits) are matched as written and in any
/// case only: a short run of letters found across separators would mask ordinary text.
const MIN_FOLDED: usize = 8;
/// Secrets shorter than this (in bytes) get no base64 matcher: the encoded core of a
/// short value is a few characters that occur by chance in unrelated base64.
const MIN_BASE64: usize = 6;

/// A secret value handed to a plugin, with its matchers.
pub struct Revealed {
    value: String,
    /// The value and its hex, percent-encoded and JSON-escaped forms, in any ASCII case.
    plain: AhoCorasick,
    /// The characters of its base64 forms that do not depend on what surrounds it.
    base64: Option<AhoCorasick>,
    /// Its letters and digits, lowercased, found in text folded the same way.
    folded: Option<AhoCorasick>,
}

impl std::fmt::Debug for Revealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Revealed(***)")
    }
}

fn matcher<I, P>(patterns: I, ascii_case_insensitive: bool) -> AhoCorasick
where
    I: IntoIterator<Item = P>,
    P: AsRef<[u8]>,
{
    AhoCorasickBuilder::new()
        .match_kind(MatchKind::LeftmostLongest)
        .ascii_case_insensitive(ascii_case_insensitive)
        .build(patterns)
        .expect("a handful of patterns of at most a few KiB each")
}

/// Letters and digits of `text` lowercased, with where in `text` the character each
/// byte of the folded text came from starts.
fn fold(text: &str) -> (String, Vec<usize>) {
    let mut folded = String::with_capacity(text.len());
    let mut origin = Vec::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        if c.is_ascii() {
            if c.is_ascii_alphanumeric() {
                folded.push(c.to_ascii_lowercase());
                origin.push(i);
            }
        } else if c.is_alphanumeric() {
            for lower in c.to_lowercase() {
                folded.push(lower);
                origin.extend(std::iter::repeat_n(i, lower.len_utf8()));
            }
        }
    }
    (folded, origin)
}

/// The byte range in `text` of a match at `m` in its folded form.
fn unfold(text: &str, origin: &[usize], m: Range<usize>) -> Range<usize> {
    let last = origin[m.end - 1];
    let width = text[last..].chars().next().map_or(1, char::len_utf8);
    origin[m.start]..last + width
}

/// The part of `value`'s base64 encoding that is the same wherever it sits in a longer
/// encoded message: for each of the three alignments, the characters whose six bits all
/// come from `value`.
fn base64_cores(value: &[u8]) -> Vec<String> {
    let mut cores = Vec::new();
    for lead in 0..3usize {
        let mut bytes = vec![0u8; lead];
        bytes.extend_from_slice(value);
        let first = (lead * 8).div_ceil(6);
        let end = bytes.len() * 8 / 6;
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(&bytes);
            if let Some(core) = encoded.get(first..end) {
                cores.push(core.to_owned());
            }
        }
    }
    cores.sort();
    cores.dedup();
    cores
}

fn percent_encoded(value: &str, space: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push_str(space),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Revealed {
    pub fn new(value: String) -> Revealed {
        let mut plain = vec![
            value.clone(),
            percent_encoded(&value, "%20"),
            percent_encoded(&value, "+"),
            value.bytes().map(|b| format!("{b:02x}")).collect(),
        ];
        let json = serde_json::to_string(&value).expect("a string serializes");
        plain.push(json[1..json.len() - 1].to_owned());
        plain.sort();
        plain.dedup();
        let base64 =
            (value.len() >= MIN_BASE64).then(|| matcher(base64_cores(value.as_bytes()), false));
        let (folded_value, _) = fold(&value);
        let folded =
            (folded_value.chars().count() >= MIN_FOLDED).then(|| matcher([folded_value], false));
        Revealed {
            plain: matcher(&plain, true),
            base64,
            folded,
            value,
        }
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

/// The secrets one run has revealed; redacts them all from a text.
#[derive(Default, Clone)]
pub struct Redactor {
    secrets: Vec<Arc<Revealed>>,
}

impl Redactor {
    pub fn add(&mut self, secret: Arc<Revealed>) {
        if !self.secrets.iter().any(|s| Arc::ptr_eq(s, &secret)) {
            self.secrets.push(secret);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every match of every secret replaced by [`MASK`].
    pub fn redact(&self, text: &str) -> String {
        if self.secrets.is_empty() {
            return text.to_owned();
        }
        let mut hits: Vec<Range<usize>> = Vec::new();
        for s in &self.secrets {
            hits.extend(s.plain.find_iter(text).map(|m| m.range()));
            if let Some(b) = &s.base64 {
                hits.extend(b.find_iter(text).map(|m| m.range()));
            }
        }
        if self.secrets.iter().any(|s| s.folded.is_some()) {
            let (folded, origin) = fold(text);
            for f in self.secrets.iter().filter_map(|s| s.folded.as_ref()) {
                hits.extend(
                    f.find_iter(&folded)
                        .map(|m| unfold(text, &origin, m.range())),
                );
            }
        }
        if hits.is_empty() {
            return text.to_owned();
        }
        hits.sort_by_key(|r| r.start);
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for r in hits {
            if r.end <= at {
                continue;
            }
            if r.start >= at {
                out.push_str(&text[at..r.start]);
                out.push_str(MASK);
            }
            at = r.end;
        }
        out.push_str(&text[at..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    fn redactor(values: &[&str]) -> Redactor {
        let mut r = Redactor::default();
        for v in values {
            r.add(Arc::new(Revealed::new((*v).to_owned())));
        }
        r
    }

    #[test]
    fn the_common_transformations_of_a_secret_are_masked() {
        let secret = "Tok3n-4f2a_99bc/Zq";
        let r = redactor(&[secret]);
        let shapes = [
            secret.to_owned(),
            secret.to_uppercase(),
            secret.to_lowercase(),
            secret.replace(['-', '_', '/'], ""),
            secret.replace(['-', '_', '/'], " "),
            secret.replace(['-', '_', '/'], "."),
            "T-o-k-3-n-4-f-2-a-9-9-b-c-Z-q".to_owned(),
            STANDARD.encode(secret),
            URL_SAFE.encode(secret),
            STANDARD.encode(format!("user:{secret}")),
            STANDARD.encode(format!("ab:{secret}")),
            STANDARD.encode(format!("a:{secret}:b")),
            secret.bytes().map(|b| format!("{b:02x}")).collect(),
            secret.bytes().map(|b| format!("{b:02X}")).collect(),
            percent_encoded(secret, "+"),
            serde_json::to_string(secret).unwrap(),
        ];
        for shape in shapes {
            let text = format!("before {shape} after");
            let out = r.redact(&text);
            assert!(out.contains(MASK), "{shape:?} was not masked: {out:?}");
            assert!(
                out.starts_with("before ") && out.ends_with(" after"),
                "{out:?}"
            );
            assert!(
                !out.to_lowercase().contains("4f2a"),
                "{shape:?} left {out:?}"
            );
            assert!(!out.contains(&shape), "{shape:?} left {out:?}");
        }
    }

    #[test]
    fn secrets_with_quotes_and_spaces_are_masked_escaped() {
        let secret = "pa ss\"w0rd\\!";
        let r = redactor(&[secret]);
        let json = serde_json::json!({ "password": secret }).to_string();
        assert_eq!(r.redact(&json), r#"{"password":"***"}"#);
        assert_eq!(r.redact("p=pa+ss%22w0rd%5C%21&x=1"), "p=***&x=1");
        assert_eq!(r.redact("p=pa%20ss%22w0rd%5c%21"), "p=***");
    }

    #[test]
    fn unicode_case_is_folded_for_long_secrets() {
        let r = redactor(&["Contraseña-Ñandú-2024"]);
        assert_eq!(r.redact("pw CONTRASEÑAÑANDÚ2024 ok"), "pw *** ok");
    }

    #[test]
    fn short_secrets_are_masked_as_written_in_any_case_only() {
        let r = redactor(&["a1b2"]);
        assert_eq!(r.redact("pin A1B2 and a1b2"), "pin *** and ***");
        // Across separators a four-character secret would mask ordinary words.
        assert_eq!(r.redact("a-1 b-2"), "a-1 b-2");
    }

    #[test]
    fn text_without_secrets_is_unchanged_and_overlaps_merge() {
        let r = redactor(&["correct-horse-battery", "horse-battery-staple"]);
        assert_eq!(r.redact("nothing here"), "nothing here");
        assert_eq!(
            r.redact("x correct-horse-battery-staple y"),
            "x *** y",
            "overlapping matches become one mask"
        );
        assert_eq!(Redactor::default().redact("as is"), "as is");
    }

    #[test]
    fn redaction_cost_on_a_log_line_and_a_result() {
        // Printed, not asserted: `cargo test -p faena --lib redaction_cost -- --nocapture`.
        let r = redactor(&["Tok3n-4f2a_99bc/Zq", "another-Secret-value-1"]);
        let line = "navigated to https://portal.example/orders?page=3 and filled the form";
        let result = serde_json::json!({"rows": (0..2000).map(|i| format!("order {i}: ok")).collect::<Vec<_>>()}).to_string();
        for (what, text, n) in [
            ("log line", line.to_owned(), 20_000),
            ("result", result, 50),
        ] {
            let start = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(r.redact(std::hint::black_box(&text)));
            }
            let per = start.elapsed() / n;
            eprintln!(
                "redact {what} of {} bytes, two secrets: {per:?}",
                text.len()
            );
        }
        let start = std::time::Instant::now();
        let built = Revealed::new("Tok3n-4f2a_99bc/Zq".to_owned());
        eprintln!("building one secret's matchers: {:?}", start.elapsed());
        assert_eq!(built.value(), "Tok3n-4f2a_99bc/Zq");
    }
}
