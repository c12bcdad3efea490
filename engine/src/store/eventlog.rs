//! How events lie in the tree: a group's events in blocks, one key per block.
//!
//! Every transition of an item appends events, and one sled key per event was most of
//! the keys a group wrote; a block holds a run of consecutive events (up to
//! [`BLOCK_EVENTS`] or [`BLOCK_BYTES`]), compressed, under the key of its first seq.
//! Events of one group are alike (the same few types, the same job), so a block takes
//! a fraction of their text's size on disk.
//!
//! A value that starts with `{` is one event's JSON (format 2 stored events so); a
//! block starts with [`BLOCK`]. Readers take both, so a data directory of single events
//! is read as it is and never rewritten.
//!
//! Block: `BLOCK`, the number of events (u32 BE), the uncompressed size (u32 BE), then
//! zstd of the events' texts, each preceded by its length (u32 BE). Its events' seqs
//! are the key's seq and the ones after it.

use super::error::{Result, StoreError};
use super::keys;

/// The first byte of a block (never the first byte of a JSON object).
const BLOCK: u8 = 0x01;
const HEADER: usize = 9;

/// At most this many events per block, so a reader that wants one event of a large
/// group decompresses a small block, not the whole group.
pub const BLOCK_EVENTS: usize = 256;
/// And at most this many bytes of their text (one larger event has a block of its own).
pub const BLOCK_BYTES: usize = 64 * 1024;

/// zstd's fastest level that still compresses: the writer runs it on every group.
const LEVEL: i32 = 1;

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Events as the writer has them: seq and JSON text, in seq order.
pub fn blocks<'a>(
    events: impl IntoIterator<Item = (u64, &'a [u8])>,
) -> Vec<(sled::IVec, sled::IVec)> {
    let mut out = Vec::new();
    let mut run: Vec<&[u8]> = Vec::new();
    let mut first = 0u64;
    let mut bytes = 0usize;
    for (seq, text) in events {
        let consecutive = first + run.len() as u64 == seq;
        if !run.is_empty()
            && (!consecutive || run.len() == BLOCK_EVENTS || bytes + text.len() > BLOCK_BYTES)
        {
            out.push(block(first, &run));
            run.clear();
            bytes = 0;
        }
        if run.is_empty() {
            first = seq;
        }
        bytes += text.len();
        run.push(text);
    }
    if !run.is_empty() {
        out.push(block(first, &run));
    }
    out
}

fn block(first: u64, texts: &[&[u8]]) -> (sled::IVec, sled::IVec) {
    let mut raw = Vec::with_capacity(texts.iter().map(|t| t.len() + 4).sum());
    for t in texts {
        raw.extend_from_slice(&(t.len() as u32).to_be_bytes());
        raw.extend_from_slice(t);
    }
    let packed = COMPRESSOR.with_borrow_mut(|c| {
        // A context is allocated once per thread and reused: making one per block was
        // a measurable part of each group's commit.
        let c = match c {
            Some(c) => c,
            None => c.insert(zstd::bulk::Compressor::new(LEVEL).expect("a zstd context")),
        };
        c.compress(&raw)
            .expect("zstd compresses a buffer in memory")
    });
    let mut value = Vec::with_capacity(HEADER + packed.len());
    value.push(BLOCK);
    value.extend_from_slice(&(texts.len() as u32).to_be_bytes());
    value.extend_from_slice(&(raw.len() as u32).to_be_bytes());
    value.extend_from_slice(&packed);
    (keys::event_key(first).to_vec().into(), value.into())
}

/// How many events a stored value holds, from its header alone.
fn count(key: &[u8], value: &[u8]) -> Result<u64> {
    if value.first() != Some(&BLOCK) {
        return Ok(1);
    }
    let n = value
        .get(1..5)
        .ok_or_else(|| corrupt(key, "short header"))?;
    match u32::from_be_bytes(n.try_into().expect("4 bytes")) {
        0 => Err(corrupt(key, "no events")),
        n => Ok(n as u64),
    }
}

/// The events of one stored value: seq and JSON text, in order.
pub fn decode(key: &[u8], value: &[u8]) -> Result<Vec<(u64, Vec<u8>)>> {
    let first = keys::event_seq(key).ok_or_else(|| corrupt(key, "bad key"))?;
    if value.first() != Some(&BLOCK) {
        return Ok(vec![(first, value.to_vec())]);
    }
    let n = count(key, value)? as usize;
    let header = value
        .get(..HEADER)
        .ok_or_else(|| corrupt(key, "short header"))?;
    let size = u32::from_be_bytes(header[5..9].try_into().expect("4 bytes")) as usize;
    let raw =
        zstd::bulk::decompress(&value[HEADER..], size).map_err(|e| corrupt(key, &e.to_string()))?;
    // Every event takes at least its 4-byte length: a damaged count cannot ask for more.
    let mut out = Vec::with_capacity(n.min(raw.len() / 4));
    let mut rest = &raw[..];
    for i in 0..n as u64 {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt(key, "truncated"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let text = tail.get(..len).ok_or_else(|| corrupt(key, "truncated"))?;
        out.push((first + i, text.to_vec()));
        rest = &tail[len..];
    }
    if !rest.is_empty() {
        return Err(corrupt(key, "bytes after the last event"));
    }
    Ok(out)
}

fn corrupt(key: &[u8], why: &str) -> StoreError {
    let seq = keys::event_seq(key).unwrap_or_default();
    StoreError::Storage(format!("corrupt event block at seq {seq}: {why}"))
}

/// Stored events from seq `first` on, oldest first.
pub fn after(
    tree: &sled::Tree,
    first: u64,
) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>)>> + '_> {
    // The block holding `first` may start before it: the scan starts at the last value
    // stored at or before `first`, one range over the tree, and drops what is older.
    let start = match tree
        .range(vec![keys::EVENT]..=keys::event_key(first).to_vec())
        .next_back()
    {
        Some(Ok((k, _))) => k.to_vec(),
        None => keys::event_key(first).to_vec(),
        Some(Err(e)) => return Box::new(std::iter::once(Err(e.into()))),
    };
    Box::new(
        tree.range(start..vec![keys::EVENT + 1])
            .flat_map(move |kv| values(kv, |seq| seq >= first, false)),
    )
}

/// Stored events up to seq `at`, newest first.
pub fn before(tree: &sled::Tree, at: u64) -> impl Iterator<Item = Result<(u64, Vec<u8>)>> {
    let end = keys::event_key(at.saturating_add(1)).to_vec();
    tree.range(vec![keys::EVENT]..end)
        .rev()
        .flat_map(move |kv| values(kv, |seq| seq <= at, true))
}

/// One stored value's events that `keep` wants, as an iterator of results.
fn values(
    kv: sled::Result<(sled::IVec, sled::IVec)>,
    keep: impl Fn(u64) -> bool,
    newest_first: bool,
) -> Vec<Result<(u64, Vec<u8>)>> {
    let decoded = kv
        .map_err(StoreError::from)
        .and_then(|(k, v)| decode(&k, &v));
    match decoded {
        Ok(mut events) => {
            events.retain(|(seq, _)| keep(*seq));
            if newest_first {
                events.reverse();
            }
            events.into_iter().map(Ok).collect()
        }
        Err(e) => vec![Err(e)],
    }
}

/// The newest stored event's seq (0 when there is none).
pub fn last_seq(tree: &sled::Tree) -> Result<u64> {
    Ok(
        match tree
            .range(vec![keys::EVENT]..vec![keys::EVENT + 1])
            .next_back()
            .transpose()?
        {
            Some((k, v)) => {
                let first = keys::event_seq(&k).ok_or_else(|| corrupt(&k, "bad key"))?;
                first + count(&k, &v)? - 1
            }
            None => 0,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(seq: u64) -> Vec<u8> {
        format!(r#"{{"seq":{seq},"type":"item.progress","data":{{"done":{seq}}}}}"#).into_bytes()
    }

    fn tree() -> sled::Tree {
        sled::Config::new()
            .temporary(true)
            .open()
            .unwrap()
            .open_tree("t")
            .unwrap()
    }

    fn seqs(it: impl Iterator<Item = Result<(u64, Vec<u8>)>>) -> Vec<u64> {
        it.map(|r| {
            let (seq, t) = r.unwrap();
            assert_eq!(t, text(seq), "event {seq} reads back as written");
            seq
        })
        .collect()
    }

    #[test]
    fn blocks_split_on_size_count_and_gaps_and_read_back_from_anywhere() {
        let tree = tree();
        // Format 2 single events first, then blocks: 3..=600 and, after a gap, 700..=701.
        for seq in 1..=2 {
            tree.insert(keys::event_key(seq), text(seq)).unwrap();
        }
        let texts: Vec<(u64, Vec<u8>)> = (3..=600).chain(700..=701).map(|s| (s, text(s))).collect();
        let written = blocks(texts.iter().map(|(s, t)| (*s, t.as_slice())));
        // 598 events in runs of 256, then the gap starts a new block.
        assert_eq!(written.len(), 4);
        let raw: usize = texts.iter().map(|(_, t)| t.len()).sum();
        let stored: usize = written.iter().map(|(_, v)| v.len()).sum();
        assert!(
            stored * 3 < raw,
            "blocks are compressed: {stored} of {raw} bytes"
        );
        for (k, v) in written {
            tree.insert(k, v).unwrap();
        }
        let all: Vec<u64> = (1..=600).chain(700..=701).collect();
        assert_eq!(seqs(after(&tree, 0)), all);
        assert_eq!(seqs(after(&tree, 1)), all);
        // Starting inside a block, at its first event, at a single event, past a gap.
        assert_eq!(seqs(after(&tree, 300)), all[299..]);
        assert_eq!(seqs(after(&tree, 259)), all[258..]);
        assert_eq!(seqs(after(&tree, 2)), all[1..]);
        assert_eq!(seqs(after(&tree, 650)), vec![700, 701]);
        assert_eq!(seqs(after(&tree, 702)), Vec::<u64>::new());
        let mut back = all.clone();
        back.reverse();
        assert_eq!(seqs(before(&tree, u64::MAX)), back);
        assert_eq!(seqs(before(&tree, 300).take(3)), vec![300, 299, 298]);
        assert_eq!(seqs(before(&tree, 650).take(1)), vec![600]);
        assert_eq!(seqs(before(&tree, 2)), vec![2, 1]);
        assert_eq!(last_seq(&tree).unwrap(), 701);
    }

    #[test]
    fn a_large_event_gets_a_block_of_its_own_and_an_empty_log_ends_at_zero() {
        let tree = tree();
        assert_eq!(last_seq(&tree).unwrap(), 0);
        assert_eq!(seqs(after(&tree, 1)), Vec::<u64>::new());
        let big = format!(r#"{{"seq":2,"data":"{}"}}"#, "x".repeat(BLOCK_BYTES));
        let written = blocks([(1, &text(1)[..]), (2, big.as_bytes()), (3, &text(3)[..])]);
        assert_eq!(written.len(), 3);
        for (k, v) in written {
            tree.insert(k, v).unwrap();
        }
        let read: Vec<(u64, Vec<u8>)> = after(&tree, 1).map(Result::unwrap).collect();
        assert_eq!(read[1], (2, big.into_bytes()));
        assert_eq!(last_seq(&tree).unwrap(), 3);
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_panic() {
        let tree = tree();
        let (k, v) = blocks([(1, &text(1)[..]), (2, &text(2)[..])]).remove(0);
        tree.insert(k.clone(), &v[..v.len() - 3]).unwrap();
        assert!(after(&tree, 1).next().unwrap().is_err());
        // A reader starting inside the damaged block is told, not moved past it.
        assert!(after(&tree, 2).next().unwrap().is_err());
        // A count far beyond what the block holds.
        let mut wrong = v.to_vec();
        wrong[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        tree.insert(k.clone(), wrong).unwrap();
        assert!(after(&tree, 1).next().unwrap().is_err());
        let mut short = v.to_vec();
        short[1..5].copy_from_slice(&1u32.to_be_bytes());
        tree.insert(k.clone(), short).unwrap();
        assert!(after(&tree, 1).next().unwrap().is_err());
        tree.insert(k, &v[..4]).unwrap();
        assert!(last_seq(&tree).is_err());
    }
}
