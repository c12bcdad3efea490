//! The one place errors become HTTP statuses. Every error body is
//! `{"error": code, "message": human text}`. A failed session call answers 422
//! (`business`: the input's fault) or 502 (`portal`: the portal failed).

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object};

use crate::store::StoreError;

/// Every code an error body carries; clients switch on it, so the document lists
/// them all and no answer sends one outside the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, serde::Serialize, serde::Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request could not be read (malformed JSON, wrong types, bad parameters).
    BadRequest,
    /// No API key, or an unknown or revoked one.
    Unauthorized,
    /// The key's role or tenant does not allow this.
    Forbidden,
    NotFound,
    MethodNotAllowed,
    /// The record is not in a state that allows this.
    Conflict,
    /// The job's references are already taken (see `references`).
    ReferenceTaken,
    /// A worker's lease was taken over: its report is refused.
    StaleLease,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// Well-formed but invalid: the message names the field.
    Invalid,
    /// A session call refused by the portal for its input.
    Business,
    /// The portal behind a session call failed.
    Portal,
    /// Over the key's request rate: retry after `Retry-After` seconds.
    RateLimited,
    /// Over the feed's connection caps.
    TooManyConnections,
    Internal,
    Unavailable,
    /// The store's disk is full: reads go on, writes resume once space is freed.
    InsufficientStorage,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::ReferenceTaken => "reference_taken",
            ErrorCode::StaleLease => "stale_lease",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Business => "business",
            ErrorCode::Portal => "portal",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::InsufficientStorage => "insufficient_storage",
        }
    }
}

#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
#[oai(skip_serializing_if_is_none)]
pub struct ErrorBody {
    pub error: ErrorCode,
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

pub fn body(code: ErrorCode, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: code,
        message: message.into(),
        references: None,
    })
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest(body(ErrorCode::BadRequest, message))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::Invalid(body(ErrorCode::Invalid, message))
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError::PayloadTooLarge(body(ErrorCode::PayloadTooLarge, message))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::NotFound(body(ErrorCode::NotFound, message))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::Forbidden(body(ErrorCode::Forbidden, message))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::Internal(body(ErrorCode::Internal, message))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound(body(ErrorCode::NotFound, message)),
            StoreError::Conflict(_) => ApiError::Conflict(body(ErrorCode::Conflict, message)),
            StoreError::StaleLease { .. } => {
                ApiError::Conflict(body(ErrorCode::StaleLease, message))
            }
            StoreError::Invalid(_) => ApiError::Invalid(body(ErrorCode::Invalid, message)),
            StoreError::ReferencesTaken { references, .. } => {
                let mut b = body(ErrorCode::ReferenceTaken, message);
                b.0.references = Some(references);
                ApiError::Conflict(b)
            }
            StoreError::Closed => ApiError::Unavailable(body(ErrorCode::Unavailable, message)),
            StoreError::DiskFull { .. } => {
                ApiError::InsufficientStorage(body(ErrorCode::InsufficientStorage, message))
            }
            StoreError::Storage(_) => {
                tracing::error!(error = %message, "storage error answering a request");
                ApiError::Internal(body(ErrorCode::Internal, message))
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
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNPROCESSABLE_ENTITY => ErrorCode::Invalid,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    let message = match err.to_string() {
        m if m.is_empty() => status.canonical_reason().unwrap_or("error").to_owned(),
        m => m,
    };
    json_response(status, code, &message)
}

/// An error answer in the one shape every error has, for code outside the handlers
/// (the middleware).
pub fn json_response(
    status: poem::http::StatusCode,
    code: ErrorCode,
    message: &str,
) -> poem::Response {
    let body = serde_json::json!({"error": code.as_str(), "message": message});
    poem::Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(body.to_string())
}
