//! The WebSocket feed. A client subscribes with filters and `after`; it gets every
//! stored matching event after that seq, then live ones, with no gap and no duplicate.
//! Each connection follows the broadcast at its own pace: one that falls behind is told
//! `lagged` and caught up from the store, without slowing the engine or anyone else.
//!
//! Client messages: `{"type":"subscribe","jobs":[..],"types":[..],"after":SEQ}`,
//! `{"type":"ping"}`. Server messages: events as stored (they carry `seq`), and
//! `{"type":"subscribed","after":SEQ,"head":SEQ}`, `{"type":"pong"}`,
//! `{"type":"lagged","next":SEQ}`, `{"type":"error","message":..}`.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use poem::web::websocket::{Message, WebSocket, WebSocketStream};
use poem::web::{Data, Path, Query};
use poem::{IntoResponse, handler};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use crate::model::Event;
use crate::store::{EventFilter, Store};

/// Message types of the feed; custom events may not use them.
pub const RESERVED_TYPES: [&str; 6] =
    ["subscribe", "subscribed", "ping", "pong", "lagged", "error"];

const REPLAY_PAGE: usize = 1_000;

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
pub async fn feed(ws: WebSocket, state: Data<&AppState>) -> impl IntoResponse {
    // The caller's tenant is read here: the upgraded connection runs in its own task.
    let conn = Connection::new(state.0, None);
    ws.on_upgrade(move |socket| conn.serve(socket))
}

/// `/ws/jobs/{id}`: subscribed to one job from the start (or `?after=`).
#[handler]
pub async fn job_feed(
    ws: WebSocket,
    state: Data<&AppState>,
    Path(id): Path<String>,
    Query(q): Query<AfterQuery>,
) -> impl IntoResponse {
    let state = state.0.clone();
    let filter = EventFilter {
        tenant: Some(state.tenant()),
        jobs: vec![id],
        types: vec![],
    };
    let after = q.after.unwrap_or(0);
    let conn = Connection::new(&state, Some((filter, after)));
    ws.on_upgrade(move |socket| conn.serve(socket))
}

struct Connection {
    store: Store,
    tenant: String,
    /// The filter and the seq of the last event delivered or passed over.
    sub: Option<(EventFilter, u64)>,
}

type Sink = futures_util::stream::SplitSink<WebSocketStream, Message>;

impl Connection {
    fn new(state: &AppState, sub: Option<(EventFilter, u64)>) -> Self {
        Connection {
            store: state.store.clone(),
            tenant: state.tenant(),
            sub,
        }
    }

    async fn serve(mut self, socket: WebSocketStream) {
        // Subscribe to the live broadcast before reading the store, so nothing falls
        // between the replay and the live stream.
        let mut live = self.store.subscribe();
        let (mut sink, mut stream) = socket.split();
        if self.sub.is_some() && self.replay(&mut sink, true).await.is_err() {
            return;
        }
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
                event = live.recv(), if self.sub.is_some() => {
                    let ok = match event {
                        Ok(event) => self.on_live(event, &mut sink).await,
                        Err(RecvError::Lagged(_)) => self.on_lagged(&mut sink).await,
                        Err(RecvError::Closed) => return,
                    };
                    if ok.is_err() {
                        return;
                    }
                }
            }
        }
    }

    async fn on_message(&mut self, text: &str, sink: &mut Sink) -> Result<(), ()> {
        match serde_json::from_str::<ClientMessage>(text) {
            Ok(ClientMessage::Ping) => send_json(sink, json!({"type": "pong"})).await,
            Ok(ClientMessage::Subscribe { jobs, types, after }) => {
                let filter = EventFilter {
                    tenant: Some(self.tenant.clone()),
                    jobs,
                    types,
                };
                self.sub = Some((filter, after));
                self.replay(sink, true).await
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

    /// Send stored events after the cursor, up to the store's head. A cursor beyond the
    /// head (a seq from another store, or a guess) starts at the head: live events
    /// follow, none skipped.
    async fn replay(&mut self, sink: &mut Sink, announce: bool) -> Result<(), ()> {
        let head = self.store.last_seq().unwrap_or(0);
        let (filter, cursor) = self.sub.as_mut().expect("subscribed");
        *cursor = (*cursor).min(head);
        let (filter, mut cursor) = (filter.clone(), *cursor);
        if announce {
            send_json(
                sink,
                json!({"type": "subscribed", "after": cursor, "head": head}),
            )
            .await?;
        }
        loop {
            let Ok((events, last)) = self.store.events(cursor, &filter, REPLAY_PAGE) else {
                let _ = send_json(
                    sink,
                    json!({"type": "error", "message": "the event log could not be read"}),
                )
                .await;
                return Err(());
            };
            let n = events.len();
            for e in events {
                sink.feed(event_message(&e)).await.map_err(|_| ())?;
            }
            sink.flush().await.map_err(|_| ())?;
            cursor = last;
            if n < REPLAY_PAGE {
                break;
            }
        }
        self.sub.as_mut().expect("subscribed").1 = cursor;
        Ok(())
    }

    async fn on_live(&mut self, event: Arc<Event>, sink: &mut Sink) -> Result<(), ()> {
        let (filter, cursor) = self.sub.as_mut().expect("subscribed");
        if event.seq <= *cursor {
            return Ok(()); // already sent by the replay
        }
        if event.seq > *cursor + 1 {
            // Should not happen (the broadcast is in seq order); the store has them.
            return self.replay(sink, false).await;
        }
        *cursor = event.seq;
        if filter.matches(&event) {
            sink.send(event_message(&event)).await.map_err(|_| ())?;
        }
        Ok(())
    }

    async fn on_lagged(&mut self, sink: &mut Sink) -> Result<(), ()> {
        let next = self.sub.as_ref().expect("subscribed").1 + 1;
        send_json(sink, json!({"type": "lagged", "next": next})).await?;
        self.replay(sink, false).await
    }
}

fn event_message(e: &Event) -> Message {
    Message::Text(serde_json::to_string(e).expect("event serializes"))
}

async fn send_json(sink: &mut Sink, v: serde_json::Value) -> Result<(), ()> {
    sink.send(Message::Text(v.to_string()))
        .await
        .map_err(|_| ())
}
