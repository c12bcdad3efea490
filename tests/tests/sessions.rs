//! Sessions with the sunat flow: the real plugin in a long-lived instance and its own
//! headless-Chromium context, against the local tax-mailbox simulator.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Engine;
use faena::config::PluginConfig;
use faena::sessions::{SessionError, SessionState, Sessions, SessionsConfig};
use faena_tests::portals::{self, Portals, sunat};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const ACCOUNT: &str = "20123456789/FAENA01";

async fn setup(idle: Duration) -> (Engine, Portals) {
    let portals = portals::serve(0).await.unwrap();
    let e = common::start_with(
        BTreeMap::from([(
            "sunat".to_owned(),
            PluginConfig {
                browser: Some(true),
                secrets: Some(vec!["sunat_password".into()]),
                settings: Some(BTreeMap::from([(
                    "portal_url".to_owned(),
                    portals.url.clone(),
                )])),
                ..Default::default()
            },
        )]),
        true,
        2,
        idle,
    )
    .await;
    e.load(faena::runtime::builtin_component("sunat").unwrap())
        .await;
    e.secret("sunat_password", sunat::PASSWORD);
    (e, portals)
}

fn login_input() -> Value {
    json!({"plugin": "sunat", "account": ACCOUNT, "input": {"ruc": sunat::RUC, "user": sunat::USER}})
}

fn logins(p: &Portals) -> u32 {
    p.submissions("sunat")
        .get(&format!("login:{}", sunat::USER))
        .copied()
        .unwrap_or(0)
}

/// A feed client for session events, from the start of the log.
async fn follow_sessions(e: &common::Engine) -> common::Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(e.ws_url("/ws"))
        .await
        .unwrap();
    let sub = json!({"type": "subscribe", "jobs": [], "types": ["session_opened", "session_closed"], "after": 0});
    ws.send(Message::Text(sub.to_string().into()))
        .await
        .unwrap();
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_logs_in_once_and_serves_list_and_download_calls() {
    let (e, p) = setup(Duration::from_secs(3600)).await;
    let mut feed = follow_sessions(&e).await;

    // Two opens of one account at once: one login, one session.
    let (a, b) = tokio::join!(
        e.post("/api/v1/sessions", login_input()),
        e.post("/api/v1/sessions", login_input())
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 201], "{a:?} {b:?}");
    assert_eq!(a.1["id"], b.1["id"]);
    let id = a.1["id"].as_str().unwrap().to_owned();
    assert_eq!(a.1["state"], "open");
    assert_eq!(a.1["login"]["logged_in"], true);
    assert_eq!(logins(&p), 1);
    // Opening again later also returns it.
    let (status, again) = e.post("/api/v1/sessions", login_input()).await;
    assert_eq!((status, &again["id"]), (200, &json!(id)));
    assert_eq!(logins(&p), 1, "nobody logged in twice");

    let call = |op: &'static str, input: Value| {
        let (e, id) = (&e, id.clone());
        async move {
            e.post(
                &format!("/api/v1/sessions/{id}/invoke"),
                json!({"operation": op, "input": input}),
            )
            .await
        }
    };
    let (status, first) = call("list_inbox", json!({"page": 1})).await;
    assert_eq!(status, 200, "{first}");
    let messages = first["result"]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 10);
    assert_eq!(messages[0]["id"], 1);
    assert_eq!(messages[0]["subject"], sunat::message(1).unwrap().0);
    assert_eq!(first["result"]["pages"], 3);
    let (_, last) = call("list_inbox", json!({"page": 3})).await;
    assert_eq!(last["result"]["messages"].as_array().unwrap().len(), 5);
    assert_eq!(logins(&p), 1, "the calls ran in the logged-in session");

    // Downloads become artifacts of the session, fetched through the API.
    for (message, magic, content_type) in [
        (4, &b"%PDF-"[..], "application/pdf"),
        (3, &b"PK\x03\x04"[..], "application/zip"),
    ] {
        let (status, got) = call("download", json!({"message_id": message})).await;
        assert_eq!(status, 200, "{got}");
        let artifact = got["result"]["artifact_id"].as_str().unwrap();
        assert_eq!(got["artifacts"][0]["id"], artifact);
        assert_eq!(got["artifacts"][0]["session_id"], json!(id));
        let resp = e
            .http
            .get(format!("{}/api/v1/artifacts/{artifact}", e.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-type"], content_type);
        let bytes = resp.bytes().await.unwrap();
        assert!(bytes.starts_with(magic));
        assert_eq!(&bytes[..], &sunat::attachment(message).unwrap().2[..]);
    }
    let listed = e.get(&format!("/api/v1/sessions/{id}/artifacts")).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);

    // The portal's session expires: the plugin signs in again by itself.
    p.sunat.portal.sessions.lock().unwrap().clear();
    let (status, relogged) = call("list_inbox", json!({"page": 2})).await;
    assert_eq!(status, 200, "{relogged}");
    assert_eq!(relogged["result"]["relogins"], 1);
    assert_eq!(relogged["result"]["messages"][0]["id"], 11);
    assert_eq!(logins(&p), 2);

    // A business error of a call leaves the session open.
    let (status, missing) = call("download", json!({"message_id": 99})).await;
    assert_eq!(status, 422, "{missing}");
    assert_eq!(missing["error"], "business");
    let (status, unknown) = call("delete_everything", json!({})).await;
    assert_eq!(status, 422, "{unknown}");

    let s = e.get(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(s["state"], "open");
    assert_eq!(
        s["calls"], 7,
        "login + 6 calls that reached the plugin: {s}"
    );
    assert!(s["last_activity"].as_i64().unwrap() >= s["opened_at"].as_i64().unwrap());
    assert_eq!(s["operations"], json!(["login", "list_inbox", "download"]));

    // Live view: a PNG now, and JPEG frames over the WebSocket.
    let png = e
        .http
        .get(format!("{}/api/v1/sessions/{id}/screenshot", e.url))
        .send()
        .await
        .unwrap();
    assert_eq!(png.headers()["content-type"], "image/png");
    assert!(png.bytes().await.unwrap().starts_with(b"\x89PNG"));
    let (mut cast, _) =
        tokio_tungstenite::connect_async(e.ws_url(&format!("/ws/sessions/{id}/screencast")))
            .await
            .unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Message::Binary(b) = cast.next().await.unwrap().unwrap() {
                return b;
            }
        }
    })
    .await
    .expect("a screencast frame");
    assert!(frame.starts_with(&[0xFF, 0xD8]), "a JPEG frame");
    drop(cast);

    // Another tenant's key does not see the session, its calls, its live view or its
    // files: 404, as if they did not exist.
    let acme = common::client(&e.new_key("acme", faena::auth::Role::Admin));
    let downloaded = listed[0]["id"].as_str().unwrap().to_owned();
    for (method, path) in [
        ("GET", format!("/api/v1/sessions/{id}")),
        ("POST", format!("/api/v1/sessions/{id}/invoke")),
        ("GET", format!("/api/v1/sessions/{id}/screenshot")),
        ("GET", format!("/api/v1/sessions/{id}/artifacts")),
        ("GET", format!("/api/v1/artifacts/{downloaded}")),
        ("DELETE", format!("/api/v1/sessions/{id}")),
    ] {
        let url = format!("{}{path}", e.url);
        let req = match method {
            "GET" => acme.get(url),
            "DELETE" => acme.delete(url),
            _ => acme
                .post(url)
                .json(&json!({"operation": "list_inbox", "input": {"page": 1}})),
        };
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 404, "{method} {path}");
    }
    let theirs: Value = acme
        .get(format!("{}/api/v1/sessions", e.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["sessions"], json!([]), "{theirs}");
    let cast = tokio_tungstenite::connect_async(format!(
        "{}/ws/sessions/{id}/screencast?token={}",
        e.url.replacen("http://", "ws://", 1),
        e.new_key("acme", faena::auth::Role::Viewer)
    ))
    .await;
    assert!(cast.is_err(), "another tenant's screencast");
    assert_eq!(
        e.get(&format!("/api/v1/sessions/{id}")).await["state"],
        "open",
        "still open for its own tenant"
    );

    // Closed: calls are refused, and opening again logs in anew.
    let (status, closed) = e.delete(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!((status, closed["state"].as_str()), (200, Some("closed")));
    assert_eq!(closed["close_reason"], "closed");
    let (status, _) = call("list_inbox", json!({})).await;
    assert_eq!(status, 409);
    let (status, fresh) = e.post("/api/v1/sessions", login_input()).await;
    assert_eq!(status, 201);
    assert_ne!(fresh["id"], json!(id));
    assert_eq!(logins(&p), 3);

    // A refused password fails the open with the portal's message.
    let (status, refused) = e
        .post(
            "/api/v1/sessions",
            json!({"plugin": "sunat", "account": "other", "input": {"ruc": sunat::RUC, "user": "NOBODY"}}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("login-refused"),
        "{refused}"
    );
    let all = e.get("/api/v1/sessions").await;
    let states: Vec<&str> = all["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["failed", "open", "closed"], "{all}");
    let open = e.get("/api/v1/sessions?open=true").await;
    assert_eq!(open["sessions"].as_array().unwrap().len(), 1);

    // The feed told the story, each event naming its session.
    let events = common::events_until(&mut feed, 10, |ev| {
        ev["type"] == "session_closed" && ev["data"]["reason"] == "login_failed"
    })
    .await;
    let story: Vec<(String, String)> = events
        .iter()
        .map(|ev| {
            (
                ev["type"].as_str().unwrap().to_owned(),
                ev["data"]["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        story,
        [
            ("session_opened".to_owned(), String::new()),
            ("session_closed".to_owned(), "closed".to_owned()),
            ("session_opened".to_owned(), String::new()),
            ("session_closed".to_owned(), "login_failed".to_owned()),
        ]
    );
    assert_eq!(events[0]["session_id"], json!(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_close_and_a_restart_marks_open_ones_lost() {
    let (e, _p) = setup(Duration::from_secs(1)).await;
    let (status, s) = e.post("/api/v1/sessions", login_input()).await;
    assert_eq!(status, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let closed = loop {
        let s = e.get(&format!("/api/v1/sessions/{id}")).await;
        if s["state"] != "open" {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "not closed: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(closed["state"], "closed");
    assert_eq!(closed["close_reason"], "idle");

    // Calls keep a session alive past the idle timeout.
    let (_, s) = e.post("/api/v1/sessions", login_input()).await;
    let kept = s["id"].as_str().unwrap().to_owned();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, r) = e
            .post(
                &format!("/api/v1/sessions/{kept}/invoke"),
                json!({"operation": "list_inbox", "input": {}}),
            )
            .await;
        assert_eq!(status, 200, "{r}");
    }

    // The engine restarts with the session open: it is lost, and the feed says so.
    let restarted = Sessions::start(
        e.store.clone(),
        e.runtime.clone(),
        SessionsConfig {
            idle_timeout: Duration::from_secs(3600),
        },
    )
    .await
    .unwrap();
    let s = restarted.get("default", &kept).unwrap();
    assert_eq!(s.state, SessionState::Lost);
    assert_eq!(s.close_reason.as_deref(), Some("lost"));
    let (lost, _) = e
        .store
        .events(
            0,
            &faena::store::EventFilter {
                tenant: Some("default".into()),
                types: vec!["session_closed".into()],
                ..Default::default()
            },
            100,
        )
        .unwrap();
    let last = lost.last().unwrap();
    assert_eq!(last.session_id.as_deref(), Some(kept.as_str()));
    assert_eq!(last.data["reason"], "lost");
    assert!(matches!(
        restarted
            .invoke("default", &kept, "list_inbox", json!({}))
            .await,
        Err(SessionError::Conflict(_))
    ));
}
