//! The WebSocket feed. A client subscribes with filters and `after`; it gets every
//! stored matching event after that seq, then live ones, with no gap and no duplicate.
//! Connections with the same subscription share a channel of the [`super::fanout`],
//! where each event is filtered and framed once; each connection writes the channel's
//! frames at its own pace. One that falls out of the channel's memory is told `lagged`
//! and caught up from the store, without slowing the engine or anyone else.
//! A client that offers permessage-deflate (browsers do) gets the channel's events
//! compressed, once per channel (see [`super::fanout`]); replies and catching up from
//! the store go uncompressed.
//!
//! A connection holds a slot of [`super::feed_limits`] while it is open; past a cap
//! the upgrade is answered 429. It keeps no copy of what it sends while a channel
//! holds it: a client that stops reading pins at most the chunks of its last read (or
//! one replay page) until its socket has taken nothing for the stall timeout, and is
//! then closed.
//!
//! Client messages: `{"type":"subscribe","jobs":[..],"types":[..],"after":SEQ}`,
//! `{"type":"ping"}`. Server messages: events as stored (they carry `seq`), and
//! `{"type":"subscribed","after":SEQ,"head":SEQ}`, `{"type":"pong"}`,
//! `{"type":"lagged","next":SEQ}`, `{"type":"error","message":..}`.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use poem::http::{StatusCode, header};
use poem::web::websocket::WebSocketConfig;
use poem::web::{Data, Path, Query};
use poem::{Request, Response, handler};
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::AppState;
use super::error::ErrorCode;
use super::fanout::{Channel, Fanout};
use super::feed_limits::FeedSlot;
use super::wsproto::{self, Incoming, ReadError};
use crate::store::feed::Behind;
use crate::store::{EventFilter, Store};

/// Message types of the feed; custom events may not use them.
pub const RESERVED_TYPES: [&str; 6] =
    ["subscribe", "subscribed", "ping", "pong", "lagged", "error"];

/// Stored events read, framed and written at a time when catching up: what a client
/// that stops reading during a replay holds for the stall timeout.
const REPLAY_PAGE: usize = 256;

/// The socket settings of the other WebSockets the engine serves (a session's
/// screencast). Clients only send small control messages, so the read side is small:
/// tungstenite zeroes its whole read buffer before each read (128 KiB by default, per
/// connection and per wake-up), and a message over the limit closes that connection
/// alone.
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
}

const READ_BUFFER: usize = 4 * 1024;

/// The largest message a client may send (a subscription naming a few thousand jobs).
pub const MAX_CLIENT_MESSAGE: usize = 256 * 1024;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Subscribe {
        #[serde(default)]
        jobs: Vec<String>,
        #[serde(default)]
        types: Vec<String>,
        #[serde(default)]
        topics: Vec<String>,
        #[serde(default)]
        after: u64,
    },
    Ping,
}

#[derive(Debug, Deserialize)]
pub struct AfterQuery {
    after: Option<u64>,
}

#[handler]
pub async fn feed(req: &Request, state: Data<&AppState>) -> poem::Result<Response> {
    // The caller is read here: the upgraded connection runs in its own task.
    upgrade(req, state.0, None)
}

/// `/ws/jobs/{id}`: subscribed to one job from the start (or `?after=`).
#[handler]
pub async fn job_feed(
    req: &Request,
    state: Data<&AppState>,
    Path(id): Path<String>,
    Query(q): Query<AfterQuery>,
) -> poem::Result<Response> {
    let state = state.0.clone();
    let filter = EventFilter {
        tenant: Some(state.tenant()),
        jobs: vec![id],
        ..Default::default()
    };
    let after = q.after.unwrap_or(0);
    upgrade(req, &state, Some((filter, after)))
}

/// Accept a WebSocket handshake (RFC 6455 §4.2), within the caller's and the engine's
/// caps on connections, and serve the feed on the connection. Done here rather than
/// with poem's extractor so the feed writes frames itself: an event's stored text goes
/// to every connection as the same shared bytes.
/// The `Sec-WebSocket-Key` of a valid WebSocket handshake request.
fn handshake_key(req: &Request) -> Option<&header::HeaderValue> {
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    req.headers().get(header::SEC_WEBSOCKET_KEY).filter(|_| {
        req.method() == poem::http::Method::GET
            && has(header::UPGRADE, "websocket")
            && has(header::CONNECTION, "upgrade")
            && version_ok
    })
}

/// For a WebSocket handshake on a feed route refused for its key (401, 403), the
/// answer a browser can tell from a network failure: the handshake completes and the
/// connection closes at once with code 4401 or 4403 and `reason` (cut to what a close
/// frame holds). A refused handshake would show the page only 1006. `None` for any
/// other request or status: over a rate or a cap the handshake is refused with 429,
/// as completing it would take what the limit protects.
pub fn refuse_feed(req: &Request, status: StatusCode, reason: &str) -> Option<Response> {
    let code: u16 = match status {
        StatusCode::UNAUTHORIZED => 4401,
        StatusCode::FORBIDDEN => 4403,
        _ => return None,
    };
    if !req.uri().path().starts_with("/ws") {
        return None;
    }
    let key = handshake_key(req)?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = req.take_upgrade().ok()?;
    let mut payload = code.to_be_bytes().to_vec();
    // A control frame carries at most 125 bytes: the code and up to 123 of the reason,
    // cut at a character boundary.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (_, mut wr) = tokio::io::split(upgraded);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            wr.write_all(&wsproto::close_frame_with(&payload)).await?;
            wr.shutdown().await
        })
        .await;
    });
    Some(
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .finish(),
    )
}

fn upgrade(
    req: &Request,
    state: &AppState,
    sub: Option<(EventFilter, u64)>,
) -> poem::Result<Response> {
    let Some(key) = handshake_key(req) else {
        return Err(poem::Error::from_string(
            "a WebSocket upgrade (GET, `Upgrade: websocket`, `Sec-WebSocket-Version: 13`) is expected here",
            StatusCode::BAD_REQUEST,
        ));
    };
    let key_id = crate::auth::caller().map(|c| c.key_id).unwrap_or_default();
    let slot = match state.feed_slots.take(&key_id) {
        Ok(slot) => slot,
        Err(refused) => {
            // Before the handshake: completing it would take the very resources the
            // caps protect.
            return Ok(super::error::json_response(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyConnections,
                &refused.to_string(),
            ));
        }
    };
    let mut conn = Connection::new(state, slot, key_id);
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let deflate = wsproto::deflate_answer(
        req.headers()
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    conn.deflate = deflate.is_some();
    let on_upgrade = req.take_upgrade().map_err(|e| {
        poem::Error::from_string(format!("cannot upgrade: {e}"), StatusCode::BAD_REQUEST)
    })?;
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        conn.serve(upgraded, sub).await;
    });
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    Ok(match deflate {
        Some(answer) => response.header(header::SEC_WEBSOCKET_EXTENSIONS, answer),
        None => response,
    }
    .finish())
}

struct Connection {
    store: Store,
    fanout: Arc<Fanout>,
    tenant: String,
    /// The channel of the subscription and a receiver of its progress.
    channel: Option<(Arc<Channel>, watch::Receiver<u64>)>,
    /// The seq of the last event sent or passed over.
    cursor: u64,
    /// The seq of the last event sent (the subscription's `after` before the first):
    /// the `prev` of the next one.
    last_sent: u64,
    /// Caught up once since subscribing: falling out of the channel's memory after
    /// that is reported as `lagged` (a replay of an old `after` is not).
    live: bool,
    /// permessage-deflate was agreed on.
    deflate: bool,
    /// How long a write may make no progress.
    stall: Duration,
    /// This connection's place under the caps, given back when it ends.
    _slot: FeedSlot,
    /// Its key and the keys' rate limiter: a subscription costs a request, as a new
    /// one may read the store.
    key_id: String,
    limiter: Arc<crate::auth::Limiter>,
}

/// Framed events written at a time when catching up.
const MAX_WRITE: usize = 256 * 1024;

impl Connection {
    fn new(state: &AppState, slot: FeedSlot, key_id: String) -> Self {
        Connection {
            store: state.store.clone(),
            fanout: state.fanout.clone(),
            tenant: state.tenant(),
            channel: None,
            cursor: 0,
            last_sent: 0,
            live: false,
            deflate: false,
            stall: state.feed_slots.limits().stall_timeout,
            _slot: slot,
            key_id,
            limiter: state.auth.limiter.clone(),
        }
    }

    async fn serve(mut self, io: poem::Upgraded, sub: Option<(EventFilter, u64)>) {
        let (rd, wr) = tokio::io::split(io);
        let mut wr = Writer {
            io: wr,
            stall: self.stall,
        };
        let mut reader = wsproto::Reader::new(rd, MAX_CLIENT_MESSAGE);
        if self.deflate {
            reader = reader.with_deflate();
        }
        if let Some((filter, after)) = sub
            && self.subscribe(&mut wr, filter, after).await.is_err()
        {
            return;
        }
        loop {
            let cursor = self.cursor;
            tokio::select! {
                msg = reader.next() => {
                    let reply = match msg {
                        Ok(Incoming::Text(text)) => self.on_message(&text, &mut wr).await,
                        Ok(Incoming::Ping(payload)) => wr.write(&wsproto::pong_frame(&payload)).await,
                        Ok(Incoming::Binary | Incoming::Pong) => Ok(()),
                        Ok(Incoming::Close(code)) => {
                            let _ = wr.write(&wsproto::close_frame(code)).await;
                            return;
                        }
                        Err(ReadError::Protocol(e)) => {
                            tracing::debug!(reason = e.reason, "feed client broke the protocol");
                            let _ = wr.write(&wsproto::close_frame(Some(e.code))).await;
                            return;
                        }
                        Err(ReadError::Io) => return,
                    };
                    if reply.is_err() {
                        return;
                    }
                }
                more = async {
                    let (ch, rx) = self.channel.as_mut().expect("subscribed");
                    ch.ready(rx, cursor).await
                }, if self.channel.is_some() => {
                    if !more || self.deliver(&mut wr).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    async fn on_message(&mut self, text: &str, wr: &mut Writer) -> Result<(), ()> {
        match serde_json::from_str::<ClientMessage>(text) {
            Ok(ClientMessage::Ping) => wr.send_json(json!({"type": "pong"})).await,
            Ok(ClientMessage::Subscribe { .. }) if self.limiter.take(&self.key_id).is_err() => {
                wr.send_json(json!({"type": "error", "message": format!(
                    "key `{}` is over its rate of requests: subscribe again in a moment",
                    self.key_id
                )}))
                .await
            }
            Ok(ClientMessage::Subscribe {
                mut jobs,
                mut types,
                mut topics,
                after,
            }) => {
                // One channel for every subscription to the same jobs, types and topics.
                for list in [&mut jobs, &mut types, &mut topics] {
                    list.sort_unstable();
                    list.dedup();
                }
                let filter = EventFilter {
                    tenant: Some(self.tenant.clone()),
                    jobs,
                    types,
                    topics,
                };
                self.subscribe(wr, filter, after).await
            }
            Err(e) => {
                wr.send_json(
                    json!({"type": "error", "message": format!("unreadable message: {e}")}),
                )
                .await
            }
        }
    }

    /// Start after `after`: announce it, then send what is stored since. A cursor
    /// beyond the head (a seq from another store, or a guess) starts at the head: live
    /// events follow, none skipped.
    async fn subscribe(
        &mut self,
        wr: &mut Writer,
        filter: EventFilter,
        after: u64,
    ) -> Result<(), ()> {
        let head = self.store.last_seq().unwrap_or(0);
        let after = after.min(head);
        let channel = self.fanout.channel(filter);
        if self.deflate {
            channel.want_deflated();
        }
        let rx = channel.watch();
        self.channel = Some((channel, rx));
        self.cursor = after;
        self.last_sent = after;
        self.live = false;
        wr.send_json(json!({"type": "subscribed", "after": after, "head": head}))
            .await?;
        self.deliver(wr).await
    }

    /// Send every matching event after the cursor that the channel has, or the store
    /// for what has left it.
    async fn deliver(&mut self, wr: &mut Writer) -> Result<(), ()> {
        let channel = self.channel.as_ref().expect("subscribed").0.clone();
        loop {
            match channel.read(self.cursor, MAX_WRITE, self.deflate) {
                Ok(read) => {
                    self.cursor = read.cursor;
                    if let Some(last) = read.last_event {
                        self.last_sent = last;
                    }
                    if read.frames.is_empty() {
                        break;
                    }
                    // Frames built once for the whole channel, written as they are: a
                    // chunk is let go once written, and none is copied.
                    for frames in read.frames {
                        wr.write(&frames).await?;
                    }
                }
                Err(Behind { start }) => {
                    if self.live {
                        let next = self.cursor + 1;
                        wr.send_json(json!({"type": "lagged", "next": next}))
                            .await?;
                    }
                    self.replay(wr, channel.filter(), start).await?;
                }
            }
        }
        self.live = true;
        Ok(())
    }

    /// Stored events after the cursor, at least up to `until`, as they are stored.
    async fn replay(
        &mut self,
        wr: &mut Writer,
        filter: &EventFilter,
        until: u64,
    ) -> Result<(), ()> {
        let mut cursor = self.cursor;
        while cursor < until {
            let Ok(page) = self.store.event_texts(cursor, filter, REPLAY_PAGE) else {
                let _ = wr
                    .send_json(
                        json!({"type": "error", "message": "the event log could not be read"}),
                    )
                    .await;
                return Err(());
            };
            if !page.events.is_empty() {
                let mut frames = BytesMut::new();
                let mut scratch = Vec::new();
                for (seq, text) in page.events {
                    let text = super::fanout::with_prev(
                        text.as_bytes(),
                        Some(self.last_sent),
                        &mut scratch,
                    );
                    wsproto::put_text_frame(&mut frames, text);
                    self.last_sent = seq;
                }
                wr.write(&frames).await?;
            }
            // Everything up to `until` was stored before it reached the feed.
            cursor = if page.end {
                page.last.max(until)
            } else {
                page.last
            };
        }
        self.cursor = cursor;
        Ok(())
    }
}

/// The sending half of a connection.
struct Writer {
    io: tokio::io::WriteHalf<poem::Upgraded>,
    /// A write the socket takes no byte of for this long ends the connection.
    stall: Duration,
}

impl Writer {
    /// Write all of `bytes`. A client that reads slowly is waited for as long as its
    /// socket takes something within the stall timeout; one that stopped reading is
    /// let go (nothing more can reach it: its socket is full, maybe mid-frame).
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let mut at = 0;
        while at < bytes.len() {
            match tokio::time::timeout(self.stall, self.io.write(&bytes[at..])).await {
                Ok(Ok(n)) if n > 0 => at += n,
                Ok(_) => return Err(()),
                Err(_) => {
                    tracing::debug!(
                        stall = ?self.stall,
                        "a feed client stopped reading; closing its connection"
                    );
                    return Err(());
                }
            }
        }
        Ok(())
    }

    async fn send_json(&mut self, v: serde_json::Value) -> Result<(), ()> {
        self.write(&wsproto::text_frame(v.to_string().as_bytes()))
            .await
    }
}
