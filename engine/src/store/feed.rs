//! The live feed: the newest committed events, kept in memory in seq order, each
//! serialized once (by the transaction that wrote it) for every subscriber.
//!
//! Subscribers pull: each keeps a cursor (the last seq it has passed) and reads what is
//! after it in batches, at its own pace, waking when the head moves. A subscriber whose
//! cursor has fallen out of memory is told so and reads the store instead; nobody
//! waits for anybody, and the writer never waits for a subscriber.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::model::{Event, ItemStatus, kind};

/// An event as committed: its JSON as stored and as the feed sends it, and the fields
/// subscribers filter on. The rest of the record stays in the text, so the feed can
/// keep many events in little memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    pub tenant: Box<str>,
    pub kind: Box<str>,
    pub job_id: Option<Box<str>>,
    pub topic: Option<Box<str>>,
    /// For an item's status change, the item and its move, typed: the dispatcher stops
    /// runs on this without reading the text again.
    pub moved: Option<Moved>,
    /// UTF-8 JSON, shared by every connection that sends it.
    pub json: bytes::Bytes,
}

/// An item's status change as the dispatcher needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub item: Box<str>,
    pub from: ItemStatus,
    pub to: ItemStatus,
}

impl Moved {
    fn of(event: &Event) -> Option<Moved> {
        if event.kind != kind::ITEM_STATUS_CHANGED {
            return None;
        }
        let status = |field: &str| event.data.get(field)?.as_str()?.parse().ok();
        Some(Moved {
            item: event.item_id.as_deref()?.into(),
            from: status("from")?,
            to: status("to")?,
        })
    }
}

impl Published {
    pub fn new(event: &Event) -> Published {
        Published {
            seq: event.seq,
            tenant: event.tenant.as_str().into(),
            kind: event.kind.as_str().into(),
            job_id: event.job_id.as_deref().map(Into::into),
            topic: event.topic.as_deref().map(Into::into),
            moved: Moved::of(event),
            json: serde_json::to_vec(event).expect("event serializes").into(),
        }
    }

    /// The whole record, read back from its text.
    pub fn event(&self) -> Event {
        serde_json::from_slice(&self.json).expect("the feed holds events it serialized")
    }
}

/// How many of the newest events stay in memory, by count and by JSON bytes, whichever
/// limit comes first.
#[derive(Debug, Clone, Copy)]
pub struct FeedLimits {
    pub events: usize,
    pub bytes: usize,
}

impl Default for FeedLimits {
    /// About 20 s of events of a batch running 3,000 items/s, in about 40 MB at most.
    fn default() -> Self {
        FeedLimits {
            events: 65_536,
            bytes: 24 << 20,
        }
    }
}

pub struct Feed {
    ring: RwLock<Ring>,
    head: watch::Sender<u64>,
    closed: AtomicBool,
    limits: FeedLimits,
}

struct Ring {
    events: VecDeque<Arc<Published>>,
    bytes: usize,
    /// Every event after this seq is in `events` (the seq of the last one dropped, or
    /// the store's head when the feed began).
    start: u64,
}

/// The events right after a cursor are no longer in memory: everything after `start`
/// is, and the rest must come from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    pub start: u64,
}

impl Feed {
    /// A feed whose events follow `head`, the store's newest seq when it opened.
    pub fn new(head: u64, limits: FeedLimits) -> Feed {
        Feed {
            ring: RwLock::new(Ring {
                events: VecDeque::new(),
                bytes: 0,
                start: head,
            }),
            head: watch::Sender::new(head),
            closed: AtomicBool::new(false),
            limits,
        }
    }

    /// Append committed events (in seq order) and wake the subscribers once.
    pub fn publish(&self, events: Vec<Published>) {
        let Some(last) = events.last().map(|p| p.seq) else {
            return;
        };
        {
            let mut ring = self.ring.write().expect("feed lock");
            for p in events {
                ring.bytes += p.json.len();
                ring.events.push_back(Arc::new(p));
            }
            while ring.events.len() > self.limits.events.max(1)
                || (ring.bytes > self.limits.bytes && ring.events.len() > 1)
            {
                let gone = ring.events.pop_front().expect("not empty");
                ring.bytes -= gone.json.len();
                ring.start = gone.seq;
            }
        }
        self.head.send_replace(last);
    }

    /// No more events: followers waiting for one are told the feed ended.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.head.send_modify(|_| {});
    }

    /// Whether the store has closed: no event will follow.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The newest published seq.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// Up to `max` events after `cursor` into `out`, oldest first.
    pub fn read_after(
        &self,
        cursor: u64,
        max: usize,
        out: &mut Vec<Arc<Published>>,
    ) -> Result<(), Behind> {
        let ring = self.ring.read().expect("feed lock");
        if cursor < ring.start {
            return Err(Behind { start: ring.start });
        }
        let from = ring.events.partition_point(|p| p.seq <= cursor);
        out.extend(ring.events.range(from..).take(max).cloned());
        Ok(())
    }

    /// A subscriber starting after `cursor`.
    pub fn follow(self: &Arc<Self>, cursor: u64) -> Follower {
        Follower {
            feed: self.clone(),
            head: self.head.subscribe(),
            cursor,
            buf: VecDeque::new(),
        }
    }

    /// How many events and JSON bytes are in memory.
    pub fn retained(&self) -> (usize, usize) {
        let ring = self.ring.read().expect("feed lock");
        (ring.events.len(), ring.bytes)
    }
}

/// One subscriber's position in the feed.
pub struct Follower {
    feed: Arc<Feed>,
    head: watch::Receiver<u64>,
    cursor: u64,
    buf: VecDeque<Arc<Published>>,
}

/// The feed's events after the follower's cursor are gone from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    /// The first seq not delivered.
    pub from: u64,
    /// The first seq delivered next.
    pub to: u64,
}

impl Follower {
    /// The seq of the last event read or passed over.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Continue after `cursor` (e.g. after reading the store up to it).
    pub fn set_cursor(&mut self, cursor: u64) {
        self.cursor = cursor;
        self.buf.clear();
    }

    /// Up to `max` events after the cursor into `out`, without waiting; the cursor
    /// moves past them.
    pub fn read(&mut self, max: usize, out: &mut Vec<Arc<Published>>) -> Result<(), Behind> {
        let before = out.len();
        self.feed.read_after(self.cursor, max, out)?;
        if let Some(last) = out[before..].last() {
            self.cursor = last.seq;
        }
        Ok(())
    }

    /// Resolves when there are events after the cursor; `false` when the feed has
    /// ended (the store closed). Cancel-safe.
    pub async fn ready(&mut self) -> bool {
        loop {
            if *self.head.borrow_and_update() > self.cursor {
                return true;
            }
            if self.feed.is_closed() {
                return false;
            }
            if self.head.changed().await.is_err() {
                return false;
            }
        }
    }

    /// The next event, waiting for it. Events that left memory before this follower
    /// read them are reported once as `Err(Missed)` and skipped. `None` once the
    /// store has closed.
    pub async fn recv(&mut self) -> Option<Result<Arc<Published>, Missed>> {
        loop {
            if let Some(p) = self.buf.pop_front() {
                return Some(Ok(p));
            }
            if !self.ready().await {
                return None;
            }
            let mut out = Vec::new();
            match self.read(256, &mut out) {
                Ok(()) => self.buf.extend(out),
                Err(Behind { start }) => {
                    let missed = Missed {
                        from: self.cursor + 1,
                        to: start + 1,
                    };
                    self.cursor = start;
                    return Some(Err(missed));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, pad: usize) -> Published {
        let event = Event {
            seq,
            ts: 0,
            tenant: "t".into(),
            kind: "k".into(),
            job_id: None,
            item_id: None,
            session_id: None,
            topic: None,
            data: serde_json::json!({"pad": "x".repeat(pad)}),
        };
        Published::new(&event)
    }

    fn seqs(v: &[Arc<Published>]) -> Vec<u64> {
        v.iter().map(|p| p.seq).collect()
    }

    #[test]
    fn reads_after_a_cursor_in_batches() {
        let feed = Feed::new(10, FeedLimits::default());
        feed.publish((11..=15).map(|s| event(s, 0)).collect());
        let mut out = Vec::new();
        feed.read_after(10, 3, &mut out).unwrap();
        assert_eq!(seqs(&out), [11, 12, 13]);
        out.clear();
        feed.read_after(13, 100, &mut out).unwrap();
        assert_eq!(seqs(&out), [14, 15]);
        out.clear();
        feed.read_after(15, 100, &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(feed.head(), 15);
        // Before the feed began: those are in the store.
        assert_eq!(feed.read_after(9, 1, &mut out), Err(Behind { start: 10 }));
    }

    #[test]
    fn keeps_the_newest_within_both_limits() {
        let feed = Feed::new(
            0,
            FeedLimits {
                events: 4,
                bytes: 100_000,
            },
        );
        feed.publish((1..=10).map(|s| event(s, 0)).collect());
        assert_eq!(feed.retained().0, 4);
        let mut out = Vec::new();
        assert_eq!(feed.read_after(5, 10, &mut out), Err(Behind { start: 6 }));
        feed.read_after(6, 10, &mut out).unwrap();
        assert_eq!(seqs(&out), [7, 8, 9, 10]);

        let feed = Feed::new(
            0,
            FeedLimits {
                events: 1_000,
                bytes: 2_500,
            },
        );
        feed.publish((1..=10).map(|s| event(s, 1_000)).collect());
        let (n, bytes) = feed.retained();
        assert!(n == 2 && bytes <= 2_500, "{n} events, {bytes} bytes");
        // One event larger than the byte limit is still kept: it is the newest.
        feed.publish(vec![event(11, 10_000)]);
        assert_eq!(feed.retained().0, 1);
    }

    #[tokio::test]
    async fn a_follower_waits_reads_and_is_told_what_it_missed() {
        let feed = Arc::new(Feed::new(
            0,
            FeedLimits {
                events: 3,
                bytes: 1 << 20,
            },
        ));
        let mut f = feed.follow(0);
        let waiter = tokio::spawn(async move {
            let first = f.recv().await.unwrap().unwrap();
            (f, first.seq)
        });
        tokio::task::yield_now().await;
        feed.publish(vec![event(1, 0)]);
        let (mut f, first) = waiter.await.unwrap();
        assert_eq!(first, 1);
        feed.publish((2..=9).map(|s| event(s, 0)).collect());
        assert_eq!(
            f.recv().await.unwrap().err(),
            Some(Missed { from: 2, to: 7 })
        );
        let rest: Vec<u64> = [
            f.recv().await.unwrap(),
            f.recv().await.unwrap(),
            f.recv().await.unwrap(),
        ]
        .into_iter()
        .map(|r| r.unwrap().seq)
        .collect();
        assert_eq!(rest, [7, 8, 9]);
        feed.close();
        assert!(f.recv().await.is_none(), "the feed ended");
    }
}
