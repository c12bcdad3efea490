//! `faena:plugin/http` for a running item.

use std::time::Duration;

use tracing::warn;

use crate::runtime::bindings::PluginError;
use crate::runtime::bindings::faena::plugin::http::{Host, Request, Response};
use crate::runtime::state::ItemState;

use super::MAX_RESPONSE;

impl Host for ItemState {
    async fn send(&mut self, request: Request) -> wasmtime::Result<Result<Response, PluginError>> {
        self.host.check_lease()?;
        let ctx = &self.http;
        let url = match reqwest::Url::parse(&request.url) {
            Ok(u) => u,
            Err(e) => {
                return Ok(Err(PluginError::business(format!(
                    "bad URL `{}`: {e}",
                    request.url
                ))));
            }
        };
        if !ctx.grants.allows_url(&url) {
            warn!(plugin = %ctx.plugin, url = %url, "denied: host not granted");
            return Ok(Err(PluginError::denied(format!(
                "plugin `{}` may not reach {}:{} (not in its http_hosts)",
                ctx.plugin,
                url.host_str().unwrap_or("?"),
                url.port_or_known_default().unwrap_or(0)
            ))));
        }
        let method =
            match reqwest::Method::from_bytes(request.method.to_ascii_uppercase().as_bytes()) {
                Ok(m) => m,
                Err(_) => {
                    return Ok(Err(PluginError::business(format!(
                        "bad method `{}`",
                        request.method
                    ))));
                }
            };
        let mut req = ctx.client.request(method, url);
        for (k, v) in &request.headers {
            // The Host header is the URL's, never the guest's.
            if k.eq_ignore_ascii_case("host") {
                continue;
            }
            req = req.header(k, v);
        }
        if let Some(body) = request.body {
            req = req.body(body);
        }
        if let Some(ms) = request.timeout_ms {
            req = req.timeout(Duration::from_millis(ms.into()));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Ok(Err(PluginError::app(format!("HTTP request failed: {e}")))),
        };
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        if resp
            .content_length()
            .is_some_and(|n| n as usize > MAX_RESPONSE)
        {
            return Ok(Err(PluginError::app(
                "HTTP response body is larger than 16 MiB",
            )));
        }
        let body = match resp.bytes().await {
            Ok(b) if b.len() <= MAX_RESPONSE => b.to_vec(),
            Ok(_) => {
                return Ok(Err(PluginError::app(
                    "HTTP response body is larger than 16 MiB",
                )));
            }
            Err(e) => {
                return Ok(Err(PluginError::app(format!(
                    "reading the HTTP response failed: {e}"
                ))));
            }
        };
        Ok(Ok(Response {
            status,
            headers,
            body,
        }))
    }
}
