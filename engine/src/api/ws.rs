//! The WebSocket feed. A client subscribes with filters and `after`; it gets every
//! stored matching event after that seq, then live ones, with no gap and no duplicate.
//! Each connection reads the feed at its own pace, in batches of one write each (every
//! event is serialized once, when it is committed, for all connections); one that
//! falls out of the feed's memory is told `lagged` and caught up from the store,
//! without slowing the engine or anyone else.
//!
//! Client messages: `{"type":"subscribe","jobs":[..],"types":[..],"after":SEQ}`,
//! `{"type":"ping"}`. Server messages: events as stored (they carry `seq`), and
//! `{"type":"subscribed","after":SEQ,"head":SEQ}`, `{"type":"pong"}`,
//! `{"type":"lagged","next":SEQ}`, `{"type":"error","message":..}`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use poem::http::{StatusCode, header};
use poem::web::websocket::WebSocketConfig;
use poem::web::{Data, Path, Query};
use poem::{Request, Response, handler};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data as DataKind, OpCode};
use tokio_tungstenite::tungstenite::protocol::{self, Role};

use super::AppState;
use crate::store::feed::Behind;
use crate::store::{EventFilter, Follower, Published, Store};

/// Message types of the feed; custom events may not use them.
pub const RESERVED_TYPES: [&str; 6] =
    ["subscribe", "subscribed", "ping", "pong", "lagged", "error"];

const REPLAY_PAGE: usize = 1_000;

/// The socket settings of every WebSocket the engine serves. Clients only send small
/// control messages, so the read side is small: tungstenite zeroes its whole read
/// buffer before each read (128 KiB by default, per connection and per wake-up), and a
/// message over the limit closes that connection alone.
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
}

/// The same settings for the feed's own sockets.
fn feed_config() -> protocol::WebSocketConfig {
    protocol::WebSocketConfig::default()
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
    // The caller's tenant is read here: the upgraded connection runs in its own task.
    let conn = Connection::new(state.0, None);
    upgrade(req, conn)
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
        types: vec![],
    };
    let after = q.after.unwrap_or(0);
    let conn = Connection::new(&state, Some((filter, after)));
    upgrade(req, conn)
}

/// Accept a WebSocket handshake (RFC 6455 §4.2) and serve `conn` on the connection.
/// Done here rather than with poem's extractor so the feed writes frames itself: an
/// event's stored text goes to every connection as the same shared bytes.
fn upgrade(req: &Request, conn: Connection) -> poem::Result<Response> {
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY);
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(key) = key.filter(|_| {
        req.method() == poem::http::Method::GET
            && has(header::UPGRADE, "websocket")
            && has(header::CONNECTION, "upgrade")
            && version_ok
    }) else {
        return Err(poem::Error::from_string(
            "a WebSocket upgrade (GET, `Upgrade: websocket`, `Sec-WebSocket-Version: 13`) is expected here",
            StatusCode::BAD_REQUEST,
        ));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = req.take_upgrade().map_err(|e| {
        poem::Error::from_string(format!("cannot upgrade: {e}"), StatusCode::BAD_REQUEST)
    })?;
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            upgraded,
            Role::Server,
            Some(feed_config()),
        )
        .await;
        conn.serve(socket).await;
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .finish())
}

struct Connection {
    store: Store,
    tenant: String,
    /// Shared with `deliver`, which runs at every wake-up: a clone is a count.
    filter: Option<Arc<EventFilter>>,
    /// Where this connection is in the feed: the seq of the last event sent or passed.
    follower: Follower,
    /// Caught up once since subscribing: falling out of the feed's memory after that is
    /// reported as `lagged` (a replay of an old `after` is not).
    live: bool,
    batch: Vec<Arc<Published>>,
}

type Socket = tokio_tungstenite::WebSocketStream<poem::Upgraded>;
type Sink = futures_util::stream::SplitSink<Socket, Message>;

/// Events taken from the feed at a time; they go out in one write.
const BATCH: usize = 512;

/// After sending, a connection lets this much time pass before it looks at the feed
/// again, so a busy feed reaches each client in a few larger writes rather than one
/// per commit. It is also the most an event waits for that reason.
const WRITE_INTERVAL: Duration = Duration::from_millis(5);

impl Connection {
    fn new(state: &AppState, sub: Option<(EventFilter, u64)>) -> Self {
        let (filter, after) = match sub {
            Some((f, after)) => (Some(Arc::new(f)), after),
            None => (None, 0),
        };
        Connection {
            store: state.store.clone(),
            tenant: state.tenant(),
            filter,
            follower: state.store.feed().follow(after),
            live: false,
            batch: Vec::with_capacity(BATCH),
        }
    }

    async fn serve(mut self, socket: Socket) {
        let (mut sink, mut stream) = socket.split();
        if self.filter.is_some() {
            let after = self.follower.cursor();
            if self.subscribe(&mut sink, after).await.is_err() {
                return;
            }
        }
        let mut next_look = Instant::now();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(Ok(msg)) = msg else { return };
                    let text = match msg {
                        Message::Text(t) => t,
                        Message::Close(_) => return,
                        _ => continue,
                    };
                    if self.on_message(&text, &mut sink).await.is_err() {
                        return;
                    }
                }
                more = async {
                    tokio::time::sleep_until(next_look).await;
                    self.follower.ready().await
                }, if self.filter.is_some() => {
                    if !more {
                        return;
                    }
                    match self.deliver(&mut sink).await {
                        Ok(0) => {}
                        Ok(_) => next_look = Instant::now() + WRITE_INTERVAL,
                        Err(()) => return,
                    }
                }
            }
        }
    }

    async fn on_message(&mut self, text: &str, sink: &mut Sink) -> Result<(), ()> {
        match serde_json::from_str::<ClientMessage>(text) {
            Ok(ClientMessage::Ping) => send_json(sink, json!({"type": "pong"})).await,
            Ok(ClientMessage::Subscribe { jobs, types, after }) => {
                self.filter = Some(Arc::new(EventFilter {
                    tenant: Some(self.tenant.clone()),
                    jobs,
                    types,
                }));
                self.subscribe(sink, after).await.map(drop)
            }
            Err(e) => {
                send_json(
                    sink,
                    json!({"type": "error", "message": format!("unreadable message: {e}")}),
                )
                .await
            }
        }
    }

    /// Start after `after`: announce it, then send what is stored since. A cursor
    /// beyond the head (a seq from another store, or a guess) starts at the head: live
    /// events follow, none skipped.
    async fn subscribe(&mut self, sink: &mut Sink, after: u64) -> Result<usize, ()> {
        let head = self.store.last_seq().unwrap_or(0);
        let after = after.min(head);
        self.follower.set_cursor(after);
        self.live = false;
        send_json(
            sink,
            json!({"type": "subscribed", "after": after, "head": head}),
        )
        .await?;
        self.deliver(sink).await
    }

    /// Send every matching event after the cursor that has been committed, from the
    /// feed's memory, or from the store for what has left it; returns how many.
    async fn deliver(&mut self, sink: &mut Sink) -> Result<usize, ()> {
        let filter = self.filter.clone().expect("subscribed");
        let mut total = 0;
        loop {
            self.batch.clear();
            match self.follower.read(BATCH, &mut self.batch) {
                Ok(()) if self.batch.is_empty() => break,
                Ok(()) => {
                    let mut sent = 0;
                    for p in &self.batch {
                        if filter.matches_parts(&p.tenant, &p.kind, p.job_id.as_deref()) {
                            // The stored text, shared: no copy per connection.
                            let frame =
                                Frame::message(p.json.clone(), OpCode::Data(DataKind::Text), true);
                            sink.feed(Message::Frame(frame)).await.map_err(|_| ())?;
                            sent += 1;
                        }
                    }
                    if sent > 0 {
                        sink.flush().await.map_err(|_| ())?;
                    }
                    total += sent;
                }
                Err(Behind { start }) => {
                    if self.live {
                        let next = self.follower.cursor() + 1;
                        send_json(sink, json!({"type": "lagged", "next": next})).await?;
                    }
                    total += self.replay(sink, &filter, start).await?;
                }
            }
        }
        self.batch.clear();
        self.live = true;
        Ok(total)
    }

    /// Stored events after the cursor, at least up to `until`, as they are stored.
    async fn replay(
        &mut self,
        sink: &mut Sink,
        filter: &EventFilter,
        until: u64,
    ) -> Result<usize, ()> {
        let mut cursor = self.follower.cursor();
        let mut total = 0;
        while cursor < until {
            let Ok(page) = self.store.event_texts(cursor, filter, REPLAY_PAGE) else {
                let _ = send_json(
                    sink,
                    json!({"type": "error", "message": "the event log could not be read"}),
                )
                .await;
                return Err(());
            };
            let n = page.events.len();
            total += n;
            for text in page.events {
                sink.feed(Message::Text(text.into()))
                    .await
                    .map_err(|_| ())?;
            }
            if n > 0 {
                sink.flush().await.map_err(|_| ())?;
            }
            // Everything up to `until` was stored before it reached the feed.
            cursor = if page.end {
                page.last.max(until)
            } else {
                page.last
            };
        }
        self.follower.set_cursor(cursor);
        Ok(total)
    }
}

async fn send_json(sink: &mut Sink, v: serde_json::Value) -> Result<(), ()> {
    sink.send(Message::Text(v.to_string().into()))
        .await
        .map_err(|_| ())
}
