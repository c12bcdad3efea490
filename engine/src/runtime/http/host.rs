//! `faena:plugin/http` for a running item.

use std::time::Duration;

use tracing::warn;

use super::{HttpCtx, MAX_REDIRECTS, MAX_RESPONSE};
use crate::runtime::bindings::PluginError;
use crate::runtime::bindings::faena::plugin::http::{Host, Request, Response, SendOptions};
use crate::runtime::bindings::faena::plugin::types::Cookie;
use crate::runtime::state::ItemState;

type Res<T> = wasmtime::Result<Result<T, PluginError>>;

impl HttpCtx {
    fn check_url(&self, url: &reqwest::Url) -> Result<(), PluginError> {
        if self.grants.allows_url(url) {
            return Ok(());
        }
        warn!(plugin = %self.plugin, url = %url, "denied: host not granted");
        Err(PluginError::denied(format!(
            "plugin `{}` may not reach {}:{} (not in its http_hosts)",
            self.plugin,
            url.host_str().unwrap_or("?"),
            url.port_or_known_default().unwrap_or(0)
        )))
    }

    /// One request, no redirect followed; cookies from the jar go out and the ones
    /// the answer sets come back into it.
    async fn hop(
        &mut self,
        method: reqwest::Method,
        url: &reqwest::Url,
        headers: &[(String, String)],
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, PluginError> {
        self.check_url(url)?;
        let mut req = self.client.request(method, url.clone());
        let mut own_cookie = false;
        for (k, v) in headers {
            // The Host header is the URL's, never the guest's.
            if k.eq_ignore_ascii_case("host") {
                continue;
            }
            own_cookie |= k.eq_ignore_ascii_case("cookie");
            req = req.header(k, v);
        }
        // A Cookie header the guest sets itself wins over the jar.
        if !own_cookie {
            let jar: Vec<String> = self
                .jar
                .get_request_values(url)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !jar.is_empty() {
                req = req.header(reqwest::header::COOKIE, jar.join("; "));
            }
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| PluginError::app(format!("HTTP request failed: {e}")))?;
        for v in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            if let Ok(v) = v.to_str() {
                let _ = self.jar.parse(v, url);
            }
        }
        Ok(resp)
    }

    async fn send(&mut self, request: Request, follow: bool) -> Result<Response, PluginError> {
        let mut url = reqwest::Url::parse(&request.url)
            .map_err(|e| PluginError::business(format!("bad URL `{}`: {e}", request.url)))?;
        let mut method =
            reqwest::Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
                .map_err(|_| PluginError::business(format!("bad method `{}`", request.method)))?;
        // One deadline for the request and the redirects it follows.
        let deadline = request
            .timeout_ms
            .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms.into()));
        let mut headers = request.headers;
        let mut body = request.body;
        let mut hops = 0;
        let resp = loop {
            let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(PluginError::app(format!(
                    "HTTP request to {} timed out while following its redirects",
                    request.url
                )));
            }
            // A hop to a host outside the grants is refused in `hop`, as a first one is.
            let resp = self
                .hop(method.clone(), &url, &headers, body.clone(), left)
                .await?;
            let status = resp.status();
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok());
            let (true, true, Some(next)) = (follow, status.is_redirection(), location) else {
                break resp;
            };
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(PluginError::app(format!(
                    "HTTP request to {} was redirected more than {MAX_REDIRECTS} times",
                    request.url
                )));
            }
            // 307 and 308 repeat the request; the others turn it into a GET.
            if !matches!(status.as_u16(), 307 | 308) {
                method = reqwest::Method::GET;
                body = None;
                headers.retain(|(k, _)| {
                    !k.eq_ignore_ascii_case("content-type")
                        && !k.eq_ignore_ascii_case("content-length")
                });
            }
            if next.origin() != url.origin() {
                // Credentials meant for one host are not handed to another.
                headers.retain(|(k, _)| {
                    !k.eq_ignore_ascii_case("authorization") && !k.eq_ignore_ascii_case("cookie")
                });
            }
            url = next;
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
            return Err(PluginError::app("HTTP response body is larger than 16 MiB"));
        }
        let body = match resp.bytes().await {
            Ok(b) if b.len() <= MAX_RESPONSE => b.to_vec(),
            Ok(_) => return Err(PluginError::app("HTTP response body is larger than 16 MiB")),
            Err(e) => {
                return Err(PluginError::app(format!(
                    "reading the HTTP response failed: {e}"
                )));
            }
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

impl Host for ItemState {
    async fn send(&mut self, request: Request) -> Res<Response> {
        self.host.check_lease()?;
        Ok(self.http.send(request, true).await)
    }

    async fn send_with(&mut self, request: Request, options: SendOptions) -> Res<Response> {
        self.host.check_lease()?;
        Ok(self.http.send(request, options.follow_redirects).await)
    }

    async fn cookies(&mut self) -> wasmtime::Result<Vec<Cookie>> {
        Ok(self
            .http
            .jar
            .iter_unexpired()
            .map(|c| Cookie {
                name: c.name().to_owned(),
                value: c.value().to_owned(),
                // A cookie for a domain and its subdomains, written as browsers do.
                domain: match &c.domain {
                    cookie_store::CookieDomain::Suffix(d) => format!(".{d}"),
                    other => String::from(other),
                },
                path: String::from(&c.path),
                expires: c.expires_datetime().map(|t| t.unix_timestamp()),
                http_only: c.http_only().unwrap_or(false),
                secure: c.secure().unwrap_or(false),
            })
            .collect())
    }
}
