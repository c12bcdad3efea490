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
//! Client messages: `{"type":"subscribe","jobs":[..],"types":[..],"after":SEQ}`,
//! `{"type":"ping"}`. Server messages: events as stored (they carry `seq`), and
//! `{"type":"subscribed","after":SEQ,"head":SEQ}`, `{"type":"pong"}`,
//! `{"type":"lagged","next":SEQ}`, `{"type":"error","message":..}`.

use std::sync::Arc;

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
use super::fanout::{Channel, Fanout};
use super::wsproto::{self, Incoming, ReadError};
use crate::store::feed::Behind;
use crate::store::{EventFilter, Store};

/// Message types of the feed; custom events may not use them.
pub const RESERVED_TYPES: [&str; 6] =
    ["subscribe", "subscribed", "ping", "pong", "lagged", "error"];

const REPLAY_PAGE: usize = 1_000;

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
    let conn = Connection::new(state.0);
    upgrade(req, conn, None)
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
    let conn = Connection::new(&state);
    upgrade(req, conn, Some((filter, after)))
}

/// Accept a WebSocket handshake (RFC 6455 §4.2) and serve `conn` on the connection.
/// Done here rather than with poem's extractor so the feed writes frames itself: an
/// event's stored text goes to every connection as the same shared bytes.
fn upgrade(
    req: &Request,
    mut conn: Connection,
    sub: Option<(EventFilter, u64)>,
) -> poem::Result<Response> {
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
    /// Caught up once since subscribing: falling out of the channel's memory after
    /// that is reported as `lagged` (a replay of an old `after` is not).
    live: bool,
    /// permessage-deflate was agreed on.
    deflate: bool,
}

type Writer = tokio::io::WriteHalf<poem::Upgraded>;

/// Framed events written at a time when catching up.
const MAX_WRITE: usize = 256 * 1024;

impl Connection {
    fn new(state: &AppState) -> Self {
        Connection {
            store: state.store.clone(),
            fanout: state.fanout.clone(),
            tenant: state.tenant(),
            channel: None,
            cursor: 0,
            live: false,
            deflate: false,
        }
    }

    async fn serve(mut self, io: poem::Upgraded, sub: Option<(EventFilter, u64)>) {
        let (rd, mut wr) = tokio::io::split(io);
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
                        Ok(Incoming::Ping(payload)) => write(&mut wr, &wsproto::pong_frame(&payload)).await,
                        Ok(Incoming::Binary | Incoming::Pong) => Ok(()),
                        Ok(Incoming::Close(code)) => {
                            let _ = write(&mut wr, &wsproto::close_frame(code)).await;
                            return;
                        }
                        Err(ReadError::Protocol(e)) => {
                            tracing::debug!(reason = e.reason, "feed client broke the protocol");
                            let _ = write(&mut wr, &wsproto::close_frame(Some(e.code))).await;
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
            Ok(ClientMessage::Ping) => send_json(wr, json!({"type": "pong"})).await,
            Ok(ClientMessage::Subscribe {
                mut jobs,
                mut types,
                after,
            }) => {
                // One channel for every subscription to the same set of jobs and types.
                jobs.sort_unstable();
                jobs.dedup();
                types.sort_unstable();
                types.dedup();
                let filter = EventFilter {
                    tenant: Some(self.tenant.clone()),
                    jobs,
                    types,
                };
                self.subscribe(wr, filter, after).await
            }
            Err(e) => {
                send_json(
                    wr,
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
        self.live = false;
        send_json(
            wr,
            json!({"type": "subscribed", "after": after, "head": head}),
        )
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
                    match read.frames.as_slice() {
                        [] => break,
                        // Frames built once for the whole channel, written as they are.
                        [one] => write(wr, one).await?,
                        many => write(wr, &many.concat()).await?,
                    }
                }
                Err(Behind { start }) => {
                    if self.live {
                        let next = self.cursor + 1;
                        send_json(wr, json!({"type": "lagged", "next": next})).await?;
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
                let _ = send_json(
                    wr,
                    json!({"type": "error", "message": "the event log could not be read"}),
                )
                .await;
                return Err(());
            };
            if !page.events.is_empty() {
                let mut frames = BytesMut::new();
                for text in &page.events {
                    wsproto::put_text_frame(&mut frames, text.as_bytes());
                }
                write(wr, &frames).await?;
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

async fn write(wr: &mut Writer, bytes: &[u8]) -> Result<(), ()> {
    wr.write_all(bytes).await.map_err(|_| ())
}

async fn send_json(wr: &mut Writer, v: serde_json::Value) -> Result<(), ()> {
    write(wr, &wsproto::text_frame(v.to_string().as_bytes())).await
}
