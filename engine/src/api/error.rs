//! The one place errors become HTTP statuses. Every error body is
//! `{"error": code, "message": human text}`. A failed session call answers 422
//! (`business`: the input's fault) or 502 (`portal`: the portal failed).

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

use crate::store::StoreError;

#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
#[oai(skip_serializing_if_is_none)]
pub struct ErrorBody {
    /// A stable code: `bad_request`, `not_found`, `conflict`, `reference_taken`,
    /// `stale_lease`, `invalid`, `payload_too_large`, `unavailable`,
    /// `insufficient_storage`, `internal`.
    pub error: String,
    pub message: String,
    /// With `reference_taken`: the references already taken (the first 100).
    pub references: Option<Vec<String>>,
}

#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The request could not be read (malformed JSON, wrong types, bad parameters).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The key's role does not allow this.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The record is not in a state that allows this (illegal transition, stale lease).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// Well-formed but invalid: the message names the field.
    #[oai(status = 422)]
    Invalid(Json<ErrorBody>),
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// The portal behind a session call failed (down, timed out, changed).
    #[oai(status = 502)]
    BadGateway(Json<ErrorBody>),
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
    /// The store's disk is full: reads go on, writes resume once space is freed.
    #[oai(status = 507)]
    InsufficientStorage(Json<ErrorBody>),
}

pub fn body(code: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: code.to_owned(),
        message: message.into(),
        references: None,
    })
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest(body("bad_request", message))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::Invalid(body("invalid", message))
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError::PayloadTooLarge(body("payload_too_large", message))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::NotFound(body("not_found", message))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::Forbidden(body("forbidden", message))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::Internal(body("internal", message))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound(body("not_found", message)),
            StoreError::Conflict(_) => ApiError::Conflict(body("conflict", message)),
            StoreError::StaleLease { .. } => ApiError::Conflict(body("stale_lease", message)),
            StoreError::Invalid(_) => ApiError::Invalid(body("invalid", message)),
            StoreError::ReferencesTaken { references, .. } => {
                let mut b = body("reference_taken", message);
                b.0.references = Some(references);
                ApiError::Conflict(b)
            }
            StoreError::Closed => ApiError::Unavailable(body("unavailable", message)),
            StoreError::DiskFull { .. } => {
                ApiError::InsufficientStorage(body("insufficient_storage", message))
            }
            StoreError::Storage(_) => {
                tracing::error!(error = %message, "storage error answering a request");
                ApiError::Internal(body("internal", message))
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Turn poem's own errors (unparseable body, missing parameter, unknown route, body
/// too large) into the same JSON shape.
pub async fn json_errors(err: poem::Error) -> poem::Response {
    use poem::http::StatusCode;
    // Our own `ApiError`s already carry their JSON body.
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = match err.to_string() {
        m if m.is_empty() => status.canonical_reason().unwrap_or("error").to_owned(),
        m => m,
    };
    json_response(status, code, &message)
}

/// An error answer in the one shape every error has, for code outside the handlers
/// (the middleware).
pub fn json_response(status: poem::http::StatusCode, code: &str, message: &str) -> poem::Response {
    let body = serde_json::json!({"error": code, "message": message});
    poem::Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(body.to_string())
}
