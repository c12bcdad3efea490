//! Cross-origin requests from the browser origins the configuration lists (none by
//! default): a frontend on another origin can call the API with its key. A preflight is
//! answered before authentication (it carries no key); a request from any other origin,
//! the dashboard's own included, passes through untouched, and the browser's
//! same-origin rule applies as before.

use poem::http::{HeaderValue, Method, header};
use poem::middleware::Cors;
use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};

/// The origins allowed, each `scheme://host[:port]`.
#[derive(Debug, Clone, Default)]
pub struct CorsOrigins(Vec<String>);

impl CorsOrigins {
    /// Check each origin is one a browser sends (`https://app.example.com`, no path).
    pub fn new(origins: Vec<String>) -> Result<Self, String> {
        for o in &origins {
            let url = reqwest::Url::parse(o).map_err(|e| format!("`{o}` is not an origin: {e}"))?;
            let origin = url.origin().ascii_serialization();
            if !matches!(url.scheme(), "http" | "https") || origin != o.trim_end_matches('/') {
                return Err(format!(
                    "`{o}` is not an origin: give scheme, host and port only, as `{origin}`"
                ));
            }
        }
        Ok(CorsOrigins(
            origins
                .into_iter()
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect(),
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        origin
            .to_str()
            .is_ok_and(|o| self.0.iter().any(|a| a.eq_ignore_ascii_case(o)))
    }
}

impl<E: Endpoint> Middleware<E> for CorsOrigins {
    type Output = CorsEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        let cors = Cors::new()
            .allow_origins(self.0.iter().map(String::as_str))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                header::HeaderName::from_static("idempotency-replayed"),
            ])
            .max_age(600);
        let inner = std::sync::Arc::new(ep);
        CorsEndpoint {
            origins: self.clone(),
            cors: cors.transform(Shared(inner.clone())),
            inner,
        }
    }
}

/// An endpoint shared by the CORS path and the plain one.
pub struct Shared<E>(std::sync::Arc<E>);

impl<E: Endpoint> Endpoint for Shared<E> {
    type Output = E::Output;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        self.0.call(req).await
    }
}

pub struct CorsEndpoint<E: Endpoint> {
    origins: CorsOrigins,
    cors: <Cors as Middleware<Shared<E>>>::Output,
    inner: std::sync::Arc<E>,
}

impl<E: Endpoint> Endpoint for CorsEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        let listed = req
            .headers()
            .get(header::ORIGIN)
            .is_some_and(|o| self.origins.allows(o));
        if listed {
            self.cors.call(req).await
        } else {
            self.inner.call(req).await.map(IntoResponse::into_response)
        }
    }
}
