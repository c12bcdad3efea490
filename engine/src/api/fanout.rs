//! Fan-out of the feed to WebSocket connections. Connections with the same
//! subscription (tenant, jobs, types) share a [`Channel`]: one pump reads the store's
//! feed, at most once per tick, and appends each channel's matching events, framed as
//! WebSocket text messages, in one chunk of bytes. A connection then writes the chunks
//! after its cursor as they are: an event is filtered and framed once per channel, not
//! once per connection, and a connection that keeps up makes one write per tick.
//!
//! A write and the wake-up before it cost the same for ten events as for one. While a
//! batch pours events out (the engine is busy then), the tick grows with the
//! connections it wakes ([`tick_for`]): from [`TICK`] with a few of them to
//! [`MAX_TICK`] with thousands, which keeps the feed's share of the CPU small. A feed
//! carrying tens of events a second stays at [`TICK`], and after a quiet spell the
//! first event goes out at once.
//!
//! Once a connection that agreed on permessage-deflate joins a channel, each chunk is
//! also kept compressed, as one run of a [`wsproto::Deflater`] (each event referring
//! to those before it in the chunk: a few times smaller than the events alone). Such a
//! connection is sent a chunk compressed when it reads it from its start, and the
//! rest of a chunk it joined in the middle as it is.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::wsproto;
use crate::store::feed::Behind;
use crate::store::{EventFilter, Feed, Published};

/// The pump looks at the feed at most this often: a busy feed reaches each client in
/// one write per tick. After a quiet spell the first event goes out at once.
pub const TICK: Duration = Duration::from_millis(5);

/// The longest tick, reached with [`MAX_TICK`] / [`TICK_PER_CONNECTION`] connections
/// woken at a time: no event waits longer for the pump.
pub const MAX_TICK: Duration = Duration::from_millis(200);

/// How much the tick grows for each connection a tick wakes: about ten times what
/// waking one and writing to it cost on this kind of machine (8–15 µs over loopback
/// TCP, measured with perf), so that fan-out stays near a tenth of a core however many
/// clients there are. 1,000 connections following a busy job get a write every 100 ms
/// (a progress bar moving ten times a second); a hundred, every 10 ms.
const TICK_PER_CONNECTION: Duration = Duration::from_micros(100);

/// The feed rate (events a second) from which the tick grows fully with the
/// connections; below it, in proportion. A batch of no-op items makes about 20,000.
const BUSY_RATE: f64 = 1_000.0;

/// The tick after one that woke `connections` while the feed carried `rate` events a
/// second.
pub fn tick_for(connections: usize, rate: f64) -> Duration {
    // (0 events over no time at all is no load.)
    let load = if rate.is_nan() {
        0.0
    } else {
        (rate / BUSY_RATE).clamp(0.0, 1.0)
    };
    TICK_PER_CONNECTION
        .mul_f64(connections as f64 * load)
        .clamp(TICK, MAX_TICK)
}

/// Framed events a channel keeps for connections that are behind; one further behind
/// reads the store.
const CHANNEL_BYTES: usize = 16 << 20;

/// Events read from the feed at a time.
const PUMP_BATCH: usize = 1_024;

/// The channels of one store's feed.
pub struct Fanout {
    feed: Arc<Feed>,
    /// The newest stored event at or before a seq that matches a filter, for a new
    /// channel's first `prev` (see [`Fanout::with_seed`]).
    seed: Option<Seed>,
    channels: Mutex<Registry>,
    /// A channel was made: it may start before what the pump has read.
    new_channel: Notify,
}

#[derive(Default)]
struct Registry {
    by_filter: HashMap<Arc<EventFilter>, Weak<Channel>>,
    /// The pump, on the runtime of the connection that started it; started again if
    /// that runtime went away (an API server stopped, another serving the same state).
    pump: Option<tokio::task::JoinHandle<()>>,
}

/// The events of one subscription, framed, newest last.
pub struct Channel {
    filter: Arc<EventFilter>,
    ring: RwLock<Ring>,
    /// The seq up to which the feed was read when frames were last added.
    head: watch::Sender<u64>,
    closed: AtomicBool,
    /// A connection that takes compressed frames has joined.
    deflate: AtomicBool,
}

struct Ring {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    /// Every matching event after this seq is in `chunks`.
    start: u64,
    /// The feed has been read up to this seq.
    scanned: u64,
    /// The seq of the newest event that matched, once known: the next one's `prev`.
    last_match: Option<u64>,
}

/// The frames of the matching events of one pump tick.
struct Chunk {
    /// The seq of each event and where its frame starts in `frames`.
    index: Vec<(u64, usize)>,
    frames: Bytes,
    /// The same events as one run of compressed frames, when the channel has a
    /// connection that takes them.
    deflated: Option<Bytes>,
}

impl Chunk {
    fn size(&self) -> usize {
        self.frames.len() + self.deflated.as_ref().map_or(0, Bytes::len)
    }

    fn last(&self) -> u64 {
        self.index.last().map_or(0, |&(seq, _)| seq)
    }

    /// The frames of the events after `cursor`.
    fn after(&self, cursor: u64) -> Bytes {
        let i = self.index.partition_point(|&(seq, _)| seq <= cursor);
        match self.index.get(i) {
            Some(&(_, offset)) => self.frames.slice(offset..),
            None => Bytes::new(),
        }
    }
}

/// What a connection reads from its channel: chunks to write as they are, and where
/// it is then.
pub struct ChannelRead {
    pub frames: Vec<Bytes>,
    /// How many events `frames` hold.
    pub events: usize,
    /// The seq of the last of them.
    pub last_event: Option<u64>,
    pub cursor: u64,
}

/// See [`Fanout::with_seed`].
pub type Seed = Box<dyn Fn(&EventFilter, u64) -> Option<u64> + Send + Sync>;

impl Fanout {
    #[cfg(test)]
    pub fn new(feed: Arc<Feed>) -> Arc<Fanout> {
        Self::with_seed(feed, None)
    }

    /// A fan-out whose new channels ask `seed` for the last event that matched their
    /// filter before they started (the store's [`crate::store::Store::last_match`]):
    /// without it, a channel's first event goes without `prev`.
    pub fn with_seed(feed: Arc<Feed>, seed: Option<Seed>) -> Arc<Fanout> {
        Arc::new(Fanout {
            seed,
            feed,
            channels: Mutex::new(Registry::default()),
            new_channel: Notify::new(),
        })
    }

    /// The channel of `filter`, shared with every connection subscribed alike. The
    /// first one starts the pump on the calling runtime, and so does the first after
    /// that runtime went away.
    pub fn channel(self: &Arc<Self>, filter: EventFilter) -> Arc<Channel> {
        let filter = Arc::new(filter);
        let existing = |reg: &Registry| reg.by_filter.get(&filter).and_then(Weak::upgrade);
        if let Some(ch) = existing(&self.channels.lock().expect("fanout lock")) {
            return ch;
        }
        // The seed reads the store: outside the lock, so that neither the pump nor
        // other subscribers wait for it. The channel starts where the seed looked.
        let at = self.feed.head();
        let last_match = self.seed.as_ref().and_then(|seed| seed(&filter, at));
        let mut reg = self.channels.lock().expect("fanout lock");
        if let Some(ch) = existing(&reg) {
            return ch;
        }
        let ch = Arc::new(Channel {
            filter: filter.clone(),
            ring: RwLock::new(Ring {
                chunks: VecDeque::new(),
                bytes: 0,
                start: at,
                scanned: at,
                last_match,
            }),
            head: watch::Sender::new(at),
            closed: AtomicBool::new(self.feed.is_closed()),
            deflate: AtomicBool::new(false),
        });
        reg.by_filter.retain(|_, w| w.strong_count() > 0);
        reg.by_filter.insert(filter, Arc::downgrade(&ch));
        if reg.pump.as_ref().is_none_or(|p| p.is_finished()) && !self.feed.is_closed() {
            reg.pump = Some(tokio::spawn(self.clone().pump()));
        }
        self.new_channel.notify_one();
        ch
    }

    /// Read the feed once per tick at most and append to every live channel.
    async fn pump(self: Arc<Self>) {
        let mut follower = self.feed.follow(self.feed.head());
        let mut last_tick: Option<Instant> = None;
        let mut tick = TICK;
        let mut batch = Vec::with_capacity(PUMP_BATCH);
        let mut deflater = wsproto::Deflater::default();
        loop {
            tokio::select! {
                more = follower.ready() => if !more { break },
                () = self.new_channel.notified() => {}
            }
            if let Some(t) = last_tick {
                tokio::time::sleep_until(t + tick).await;
            }
            let now = Instant::now();
            let since = last_tick.map_or(Duration::MAX, |t| now - t);
            last_tick = Some(now);
            let mut read = 0;
            let channels: Vec<Arc<Channel>> = {
                let reg = self.channels.lock().expect("fanout lock");
                reg.by_filter.values().filter_map(Weak::upgrade).collect()
            };
            // A channel made since the last tick may start before the pump's cursor.
            let mut builders: Vec<ChunkBuilder> = channels.iter().map(ChunkBuilder::new).collect();
            let from = builders
                .iter()
                .map(|b| b.scanned)
                .fold(follower.cursor(), u64::min);
            follower.set_cursor(from);
            loop {
                batch.clear();
                match follower.read(PUMP_BATCH, &mut batch) {
                    Ok(()) if batch.is_empty() => break,
                    Ok(()) => {
                        read += batch.len();
                        for b in &mut builders {
                            b.add(&batch);
                        }
                    }
                    Err(Behind { start }) => {
                        // Not read for a whole feed's memory: everything before `start`
                        // must come from the store, for every channel.
                        for b in &mut builders {
                            b.gap(start);
                        }
                        follower.set_cursor(start);
                    }
                }
            }
            let read_to = follower.cursor();
            let mut woken = 0;
            for (b, ch) in builders.into_iter().zip(&channels) {
                if !b.index.is_empty() {
                    // Its connections; `channels` holds the other reference.
                    woken += Arc::strong_count(ch) - 1;
                }
                ch.append(b, read_to, &mut deflater);
            }
            tick = tick_for(woken, read as f64 / since.as_secs_f64());
        }
        let reg = self.channels.lock().expect("fanout lock");
        for ch in reg.by_filter.values().filter_map(Weak::upgrade) {
            ch.close();
        }
    }
}

/// An event's JSON text with `"prev":N` added as its last field (the text as it is
/// when `prev` is not known). The stored text is an object, so it ends with `}`.
pub fn with_prev<'a>(json: &'a [u8], prev: Option<u64>, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    match (prev, json.split_last()) {
        (Some(prev), Some((b'}', body))) if body.len() > 1 => {
            use std::io::Write;
            scratch.clear();
            scratch.extend_from_slice(body);
            let _ = write!(scratch, ",\"prev\":{prev}}}");
            scratch
        }
        _ => json,
    }
}

/// One channel's part of a tick.
struct ChunkBuilder {
    filter: Arc<EventFilter>,
    scanned: u64,
    /// The seq of the last matching event, once known.
    prev: Option<u64>,
    /// An event's text with its `prev`, before it is framed.
    scratch: Vec<u8>,
    gap: Option<u64>,
    index: Vec<(u64, usize)>,
    frames: BytesMut,
}

impl ChunkBuilder {
    fn new(ch: &Arc<Channel>) -> Self {
        let ring = ch.ring.read().expect("channel lock");
        ChunkBuilder {
            filter: ch.filter.clone(),
            scanned: ring.scanned,
            prev: ring.last_match,
            scratch: Vec::new(),
            gap: None,
            index: Vec::new(),
            frames: BytesMut::new(),
        }
    }

    fn add(&mut self, events: &[Arc<Published>]) {
        for p in events {
            if p.seq > self.scanned
                && self.filter.matches_parts(
                    &p.tenant,
                    &p.kind,
                    p.job_id.as_deref(),
                    p.topic.as_deref(),
                )
            {
                self.index.push((p.seq, self.frames.len()));
                let text = with_prev(&p.json, self.prev, &mut self.scratch);
                wsproto::put_text_frame(&mut self.frames, text);
                self.prev = Some(p.seq);
            }
        }
    }

    fn gap(&mut self, start: u64) {
        if start > self.scanned {
            self.gap = Some(start);
            self.scanned = start;
            // What matched in the part not read is not known here.
            self.prev = None;
            self.index.clear();
            self.frames.clear();
        }
    }
}

impl Channel {
    /// Add a tick's frames, and their compressed run if wanted; the feed was read up
    /// to `read_to`.
    fn append(&self, b: ChunkBuilder, read_to: u64, deflater: &mut wsproto::Deflater) {
        let deflated = (!b.index.is_empty() && self.deflate.load(Ordering::Relaxed)).then(|| {
            deflater.reset();
            let mut out = BytesMut::with_capacity(b.frames.len() / 2);
            for (i, &(_, start)) in b.index.iter().enumerate() {
                let end = b.index.get(i + 1).map_or(b.frames.len(), |&(_, e)| e);
                let payload = start + wsproto::header_len(b.frames[start + 1]);
                deflater.put_text_frame(&mut out, &b.frames[payload..end]);
            }
            out.freeze()
        });
        let mut ring = self.ring.write().expect("channel lock");
        if let Some(start) = b.gap {
            ring.chunks.clear();
            ring.bytes = 0;
            ring.start = start;
        }
        if read_to > ring.scanned {
            ring.scanned = read_to;
        }
        ring.last_match = b.prev;
        if b.index.is_empty() {
            return;
        }
        let chunk = Chunk {
            index: b.index,
            frames: b.frames.freeze(),
            deflated,
        };
        ring.bytes += chunk.size();
        ring.chunks.push_back(chunk);
        while ring.bytes > CHANNEL_BYTES && ring.chunks.len() > 1 {
            let gone = ring.chunks.pop_front().expect("not empty");
            ring.bytes -= gone.size();
            ring.start = gone.last();
        }
        let scanned = ring.scanned;
        drop(ring);
        self.head.send_replace(scanned);
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.head.send_modify(|_| {});
    }

    pub fn filter(&self) -> &Arc<EventFilter> {
        &self.filter
    }

    /// Keep the chunks from the next tick on compressed too.
    pub fn want_deflated(&self) {
        self.deflate.store(true, Ordering::Relaxed);
    }

    /// A receiver of this channel's progress, for [`Channel::ready`].
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Resolves when the channel has frames after `cursor`; `false` once the feed has
    /// ended. Cancel-safe.
    pub async fn ready(&self, rx: &mut watch::Receiver<u64>, cursor: u64) -> bool {
        loop {
            if *rx.borrow_and_update() > cursor {
                return true;
            }
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    }

    /// The frames after `cursor`, at most about `max_bytes` of them (at least one
    /// chunk); `Err` when some of them are no longer kept. With `deflated`, a chunk
    /// read from its start is its compressed run where there is one.
    pub fn read(
        &self,
        cursor: u64,
        max_bytes: usize,
        deflated: bool,
    ) -> Result<ChannelRead, Behind> {
        let ring = self.ring.read().expect("channel lock");
        if cursor < ring.start {
            return Err(Behind { start: ring.start });
        }
        let from = ring.chunks.partition_point(|c| c.last() <= cursor);
        let mut out = ChannelRead {
            frames: Vec::new(),
            events: 0,
            last_event: None,
            cursor: cursor.max(ring.scanned),
        };
        let mut bytes = 0;
        let mut taken = cursor;
        for chunk in ring.chunks.range(from..) {
            if bytes >= max_bytes {
                // The rest on the next read: the cursor stops at what was taken.
                out.cursor = taken;
                break;
            }
            let first = chunk.index.partition_point(|&(seq, _)| seq <= cursor);
            let frames = match &chunk.deflated {
                Some(run) if deflated && first == 0 => run.clone(),
                _ => chunk.after(cursor),
            };
            out.events += chunk.index.len() - first;
            if first < chunk.index.len() {
                out.last_event = Some(chunk.last());
            }
            bytes += frames.len();
            out.frames.push(frames);
            taken = chunk.last();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Event;
    use crate::store::FeedLimits;

    fn event(seq: u64, job: &str, kind: &str) -> Published {
        Published::new(&Event {
            seq,
            ts: 0,
            tenant: "t".into(),
            kind: kind.into(),
            job_id: Some(job.into()),
            item_id: None,
            session_id: None,
            topic: None,
            data: serde_json::json!({}),
        })
    }

    fn filter(jobs: &[&str]) -> EventFilter {
        EventFilter {
            tenant: Some("t".into()),
            jobs: jobs.iter().map(|j| j.to_string()).collect(),
            ..Default::default()
        }
    }

    /// The seqs of the frames in `read`, parsed back as a client would.
    fn seqs(read: &ChannelRead) -> Vec<u64> {
        let bytes: Vec<u8> = read.frames.concat();
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            assert_eq!(bytes[at], 0x81, "a final text frame");
            let (len, header) = match bytes[at + 1] {
                126 => (
                    u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                    4,
                ),
                n => (n as usize, 2),
            };
            let json = &bytes[at + header..at + header + len];
            let v: serde_json::Value = serde_json::from_slice(json).unwrap();
            out.push(v["seq"].as_u64().unwrap());
            at += header + len;
        }
        assert_eq!(out.len(), read.events);
        out
    }

    #[tokio::test]
    async fn a_subscription_is_filtered_and_framed_once_for_all_its_connections() {
        let feed = Arc::new(Feed::new(0, FeedLimits::default()));
        let fanout = Fanout::new(feed.clone());
        let a = fanout.channel(filter(&["a"]));
        let same = fanout.channel(filter(&["a"]));
        let b = fanout.channel(filter(&["b"]));
        assert!(Arc::ptr_eq(&a, &same));
        assert!(!Arc::ptr_eq(&a, &b));

        let mut rx = a.watch();
        feed.publish(vec![
            event(1, "a", "x"),
            event(2, "b", "x"),
            event(3, "a", "y"),
        ]);
        assert!(a.ready(&mut rx, 0).await);
        let read = a.read(0, usize::MAX, false).unwrap();
        assert_eq!(seqs(&read), [1, 3]);
        assert_eq!(read.cursor, 3);
        // From inside the chunk, and past everything.
        assert_eq!(seqs(&a.read(1, usize::MAX, false).unwrap()), [3]);
        assert!(a.read(3, usize::MAX, false).unwrap().frames.is_empty());

        // The next tick's frames come as their own chunk; a byte budget stops at a chunk.
        feed.publish(vec![event(4, "b", "x"), event(5, "a", "x")]);
        assert!(a.ready(&mut rx, 3).await);
        let first = a.read(0, 1, false).unwrap();
        assert_eq!((seqs(&first), first.cursor), (vec![1, 3], 3));
        assert_eq!(seqs(&a.read(first.cursor, usize::MAX, false).unwrap()), [5]);
        let mut rx_b = b.watch();
        assert!(b.ready(&mut rx_b, 0).await);
        assert_eq!(seqs(&b.read(0, usize::MAX, false).unwrap()), [2, 4]);
    }

    #[tokio::test]
    async fn a_channel_made_later_starts_at_the_feed_and_the_end_of_the_feed_ends_it() {
        let feed = Arc::new(Feed::new(10, FeedLimits::default()));
        let fanout = Fanout::new(feed.clone());
        let early = fanout.channel(filter(&[]));
        feed.publish(vec![event(11, "a", "x")]);
        let late = fanout.channel(filter(&["a"]));
        // What the feed published before the channel existed comes from the store.
        assert_eq!(
            late.read(10, usize::MAX, false).err(),
            Some(Behind { start: 11 })
        );
        feed.publish(vec![event(12, "a", "x")]);
        let mut rx = late.watch();
        assert!(late.ready(&mut rx, 11).await);
        assert_eq!(seqs(&late.read(11, usize::MAX, false).unwrap()), [12]);
        let mut rx = early.watch();
        assert!(early.ready(&mut rx, 11).await);
        assert_eq!(seqs(&early.read(10, usize::MAX, false).unwrap()), [11, 12]);

        feed.close();
        assert!(!late.ready(&mut late.watch(), 12).await);
    }

    /// The seqs of the frames in `read` as a browser that agreed on permessage-deflate
    /// sees them: compressed ones through its one inflater, the others as they are.
    /// Also how many came compressed.
    fn seqs_inflated(read: &ChannelRead, client: &mut flate2::Decompress) -> (Vec<u64>, usize) {
        use wsproto::tests::{inflate_with_context, server_frames};
        let frames = server_frames(&read.frames.concat());
        let compressed = frames.iter().filter(|(c, _)| *c).count();
        let seqs = frames
            .into_iter()
            .map(|(c, body)| {
                let json = if c {
                    inflate_with_context(client, &body)
                } else {
                    body
                };
                let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
                v["seq"].as_u64().unwrap()
            })
            .collect::<Vec<_>>();
        assert_eq!(seqs.len(), read.events);
        (seqs, compressed)
    }

    #[tokio::test]
    async fn a_chunk_read_from_its_start_goes_compressed_and_one_joined_midway_goes_plain() {
        let feed = Arc::new(Feed::new(0, FeedLimits::default()));
        let fanout = Fanout::new(feed.clone());
        let ch = fanout.channel(filter(&["a"]));
        let mut rx = ch.watch();
        // Before any connection wants compression, chunks are kept plain only.
        feed.publish(vec![event(1, "a", "x")]);
        assert!(ch.ready(&mut rx, 0).await);
        ch.want_deflated();
        feed.publish((2..=30).map(|s| event(s, "a", "item_progress")).collect());
        assert!(ch.ready(&mut rx, 1).await);
        feed.publish((31..=40).map(|s| event(s, "a", "item_progress")).collect());
        assert!(ch.ready(&mut rx, 30).await);

        // From the start: the first chunk plain, the others compressed and smaller.
        let mut browser = flate2::Decompress::new(false);
        let all = ch.read(0, usize::MAX, true).unwrap();
        let (seqs, compressed) = seqs_inflated(&all, &mut browser);
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
        assert_eq!(compressed, 39);
        let plain = ch.read(0, usize::MAX, false).unwrap();
        let size = |r: &ChannelRead| r.frames.iter().map(Bytes::len).sum::<usize>();
        assert!(
            size(&all) * 2 < size(&plain),
            "{} vs {}",
            size(&all),
            size(&plain)
        );

        // Joined inside the second chunk: its rest plain, the third compressed.
        let mut late = flate2::Decompress::new(false);
        let (seqs, compressed) = seqs_inflated(&ch.read(15, usize::MAX, true).unwrap(), &mut late);
        assert_eq!(seqs, (16..=40).collect::<Vec<_>>());
        assert_eq!(compressed, 10);
        // One that does not take compression gets every frame plain.
        let (seqs, compressed) = seqs_inflated(&plain, &mut flate2::Decompress::new(false));
        assert_eq!((seqs.len(), compressed), (40, 0));
    }

    #[test]
    fn the_tick_grows_with_the_connections_a_busy_feed_wakes() {
        let busy = 20_000.0;
        assert_eq!(tick_for(0, busy), TICK);
        assert_eq!(tick_for(50, busy), TICK);
        assert_eq!(tick_for(100, busy), Duration::from_millis(10));
        assert_eq!(tick_for(1_000, busy), Duration::from_millis(100));
        assert_eq!(tick_for(5_000, busy), MAX_TICK);
        assert_eq!(tick_for(usize::MAX, busy), MAX_TICK);
        // A light feed keeps its latency, and one after a quiet spell goes out at once.
        assert_eq!(tick_for(1_000, 50.0), TICK);
        assert_eq!(tick_for(1_000, 500.0), Duration::from_millis(50));
        assert_eq!(tick_for(1_000, 1.0 / f64::MAX), TICK);
        assert_eq!(tick_for(1_000, 0.0), TICK);
        assert_eq!(tick_for(1_000, f64::NAN), TICK);
        assert_eq!(tick_for(1_000, f64::INFINITY), Duration::from_millis(100));
    }

    #[test]
    fn a_pump_whose_runtime_went_away_is_started_again() {
        let feed = Arc::new(Feed::new(0, FeedLimits::default()));
        let fanout = Fanout::new(feed.clone());
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let kept = first.block_on(async { fanout.channel(filter(&["a"])) });
        drop(first);
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        second.block_on(async {
            let other = fanout.channel(filter(&["b"]));
            feed.publish(vec![event(1, "a", "x"), event(2, "b", "x")]);
            let (mut rx_a, mut rx_b) = (kept.watch(), other.watch());
            let wait = Duration::from_secs(10);
            let woke = tokio::time::timeout(wait, kept.ready(&mut rx_a, 0)).await;
            assert_eq!(woke, Ok(true), "the old channel is fed by the new pump");
            let woke = tokio::time::timeout(wait, other.ready(&mut rx_b, 0)).await;
            assert_eq!(woke, Ok(true));
            assert_eq!(seqs(&kept.read(0, usize::MAX, false).unwrap()), [1]);
            assert_eq!(seqs(&other.read(0, usize::MAX, false).unwrap()), [2]);
        });
    }
}
