//! A small typed client of the REST API, for the CLI.

use std::path::Path;

use serde_json::{Value, json};

use super::JobOptionArgs;
use crate::model::Job;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach faena at {url}: {source}")]
    Connect { url: String, source: reqwest::Error },
    /// The engine answered with an error body.
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    #[error("{0}")]
    Input(String),
    #[error("feed: {0}")]
    Feed(String),
}

/// The API refuses an explicit `null` where a field may only be left out; the CLI's
/// optional flags are `None` when not given, so their fields are left out. Only the
/// body's own fields: nulls inside items' inputs are the user's data.
pub fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}

pub struct Client {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the engine at `base`, sending `key` as its bearer token.
    pub fn new(base: &str, key: Option<String>) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(v) = key
            .as_deref()
            .and_then(|k| reqwest::header::HeaderValue::from_str(&format!("Bearer {k}")).ok())
        {
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        Client {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .expect("an HTTP client"),
            key,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    pub async fn create_key(
        &self,
        name: &str,
        role: &str,
        tenant: Option<&str>,
    ) -> Result<Value, CliError> {
        let body = json!({"name": name, "role": role, "tenant": tenant});
        self.send(
            self.http
                .post(format!("{}/api/v1/keys", self.base))
                .json(&without_nulls(body)),
        )
        .await
    }

    pub async fn keys(&self) -> Result<Value, CliError> {
        self.send(self.http.get(format!("{}/api/v1/keys", self.base)))
            .await
    }

    /// `GET {path}` (a path under the engine's address), as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, CliError> {
        self.call("GET", path, None).await
    }

    /// `POST {path}` with a JSON body, as JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.call("POST", path, Some(body.clone())).await
    }

    /// `DELETE {path}`, as JSON.
    pub async fn delete_json(&self, path: &str) -> Result<Value, CliError> {
        self.call("DELETE", path, None).await
    }

    /// A request to any route of the API, with an optional JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method name");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&without_nulls(body));
        }
        self.send(req).await
    }

    /// POST raw bytes (`application/octet-stream`), e.g. a plugin's component.
    pub async fn upload(&self, path: &str, bytes: Vec<u8>) -> Result<Value, CliError> {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes);
        self.send(req).await
    }

    pub async fn revoke_key(&self, id: &str) -> Result<(), CliError> {
        self.send(self.http.delete(format!("{}/api/v1/keys/{id}", self.base)))
            .await
            .map(drop)
    }

    async fn send_as<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, CliError> {
        serde_json::from_value(self.send(req).await?).map_err(|e| CliError::Api {
            status: 200,
            message: format!("unexpected answer from faena: {e}"),
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let resp = req.send().await.map_err(|source| CliError::Connect {
            url: self.base.clone(),
            source,
        })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(CliError::Api {
                status: status.as_u16(),
                message: body["message"]
                    .as_str()
                    .unwrap_or("request failed")
                    .to_owned(),
            })
        }
    }

    pub async fn submit(
        &self,
        plugin: &str,
        items: Vec<Value>,
        o: &JobOptionArgs,
    ) -> Result<Job, CliError> {
        let body = json!({
            "plugin": plugin,
            "operation": o.operation,
            "name": o.name,
            "start": !o.no_start,
            "options": options_json(o),
            "items": items,
        });
        let url = format!("{}/api/v1/jobs", self.base);
        self.send_as(self.http.post(url).json(&without_nulls(body)))
            .await
    }

    pub async fn import(
        &self,
        file: &Path,
        plugin: &str,
        group_by: Option<&str>,
        mapping: &serde_json::Map<String, serde_json::Value>,
        o: &JobOptionArgs,
    ) -> Result<Job, CliError> {
        let bytes =
            std::fs::read(file).map_err(|e| CliError::Input(format!("{}: {e}", file.display())))?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upload.csv".into());
        let mut form = reqwest::multipart::Form::new()
            .text("plugin", plugin.to_owned())
            .text("operation", o.operation.clone())
            .text("options", options_json(o).to_string())
            .text("start", (!o.no_start).to_string())
            .part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(name),
            );
        if let Some(g) = group_by {
            form = form.text("group_by", g.to_owned());
        }
        if let Some(n) = &o.name {
            form = form.text("name", n.clone());
        }
        if !mapping.is_empty() {
            form = form.text(
                "mapping",
                serde_json::Value::Object(mapping.clone()).to_string(),
            );
        }
        let url = format!("{}/api/v1/jobs/import", self.base);
        self.send_as(self.http.post(url).multipart(form)).await
    }

    pub async fn list(
        &self,
        status: Option<&str>,
        plugin: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Job>, CliError> {
        #[derive(serde::Deserialize)]
        struct Page {
            jobs: Vec<Job>,
        }
        let mut q = vec![("limit", limit.to_string())];
        if let Some(s) = status {
            q.push(("status", s.to_owned()));
        }
        if let Some(p) = plugin {
            q.push(("plugin", p.to_owned()));
        }
        let url = format!("{}/api/v1/jobs", self.base);
        let page: Page = self.send_as(self.http.get(url).query(&q)).await?;
        Ok(page.jobs)
    }

    pub async fn job(&self, id: &str) -> Result<Job, CliError> {
        self.send_as(self.http.get(format!("{}/api/v1/jobs/{id}", self.base)))
            .await
    }

    /// Delete a finished or cancelled job with its items.
    pub async fn delete(&self, id: &str) -> Result<Job, CliError> {
        self.send_as(self.http.delete(format!("{}/api/v1/jobs/{id}", self.base)))
            .await
    }

    pub async fn action(&self, id: &str, action: &str) -> Result<Job, CliError> {
        let url = format!("{}/api/v1/jobs/{id}/{action}", self.base);
        self.send_as(self.http.post(url)).await
    }
}

fn options_json(o: &JobOptionArgs) -> Value {
    let mut opts = serde_json::Map::new();
    if let Some(n) = o.max_attempts {
        opts.insert("max_attempts".into(), n.into());
    }
    if o.review {
        opts.insert("on_failure".into(), "review".into());
    }
    if let Some(p) = o.priority {
        opts.insert("priority".into(), p.into());
    }
    if let Some(c) = o.concurrency {
        opts.insert("concurrency".into(), c.into());
    }
    Value::Object(opts)
}

/// Items from a JSON file (an array of `{"input":…}` items or of bare inputs) or from
/// repeated `--input` values.
pub fn read_items(file: Option<&Path>, inputs: &[String]) -> Result<Vec<Value>, CliError> {
    let values: Vec<Value> = match file {
        Some(path) => {
            let text = if path == Path::new("-") {
                std::io::read_to_string(std::io::stdin())
                    .map_err(|e| CliError::Input(format!("stdin: {e}")))?
            } else {
                std::fs::read_to_string(path)
                    .map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?
            };
            match serde_json::from_str(&text) {
                Ok(Value::Array(a)) => a,
                Ok(_) => {
                    return Err(CliError::Input(format!(
                        "{}: expected a JSON array of items",
                        path.display()
                    )));
                }
                Err(e) => return Err(CliError::Input(format!("{}: {e}", path.display()))),
            }
        }
        None => inputs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::from_str(s)
                    .map_err(|e| CliError::Input(format!("--input #{}: {e}", i + 1)))
            })
            .collect::<Result<_, _>>()?,
    };
    if values.is_empty() {
        return Err(CliError::Input(
            "no items: give --items FILE or at least one --input".into(),
        ));
    }
    Ok(values
        .into_iter()
        .map(|v| match v {
            Value::Object(ref m) if m.contains_key("input") => v,
            other => json!({ "input": other }),
        })
        .collect())
}
