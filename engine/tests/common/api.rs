//! The REST API in-process through poem's TestClient, as one key.

use faena::api::{self, AppState};
use faena::auth::Role;
use poem::http::StatusCode;
use poem::test::TestClient;
use serde_json::Value;

pub struct Api {
    pub cli: TestClient<poem::endpoint::BoxEndpoint<'static, poem::Response>>,
}

impl Api {
    /// The API as an admin of the `default` tenant.
    pub fn new(state: AppState) -> Self {
        let (_, key) = state
            .auth
            .keys
            .create("default", Role::Admin, "tests", 0)
            .unwrap();
        Api::with_key(state, &key)
    }

    /// The API as the holder of `key` (empty: no key at all).
    pub fn with_key(state: AppState, key: &str) -> Self {
        let ep = poem::EndpointExt::boxed(poem::EndpointExt::map_to_response(api::app(state)));
        let cli = TestClient::new(ep);
        Api {
            cli: if key.is_empty() {
                cli
            } else {
                cli.default_header("authorization", format!("Bearer {key}"))
            },
        }
    }

    pub async fn send(
        &self,
        req: poem::test::TestRequestBuilder<
            '_,
            poem::endpoint::BoxEndpoint<'static, poem::Response>,
        >,
    ) -> (StatusCode, Value) {
        let resp = req.send().await;
        let status = resp.0.status();
        let text = resp.0.into_body().into_string().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.cli.get(path)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.cli.delete(path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.cli.post(path).body_json(&body)).await
    }
}

pub fn assert_error(resp: &(StatusCode, Value), status: StatusCode, code: &str, mentions: &str) {
    assert_eq!(resp.0, status, "{:?}", resp.1);
    assert_eq!(resp.1["error"], code, "{:?}", resp.1);
    let msg = resp.1["message"].as_str().unwrap();
    assert!(
        msg.contains(mentions),
        "message `{msg}` should mention `{mentions}`"
    );
}
