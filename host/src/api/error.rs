//! The contract's error body, `{"error": {"code", "message"}}`, for every
//! non-2xx answer. 5xx answers never carry internal detail.

use crate::service::ServiceError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let message = e.to_string();
        match e {
            ServiceError::BadRequest { code, .. } => ApiError::new(StatusCode::BAD_REQUEST, code, message),
            ServiceError::Unauthorized => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message),
            ServiceError::Forbidden { code, .. } => ApiError::new(StatusCode::FORBIDDEN, code, message),
            ServiceError::NotFound { code, .. } => ApiError::new(StatusCode::NOT_FOUND, code, message),
            ServiceError::Gone { code, .. } => ApiError::new(StatusCode::GONE, code, message),
            ServiceError::Conflict { code, .. } => ApiError::new(StatusCode::CONFLICT, code, message),
            ServiceError::StaleVersion { .. } => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "stale_version", message)
            }
            ServiceError::Busy => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_calls", message),
            ServiceError::Unavailable(detail) => {
                tracing::error!("storage unavailable: {detail}");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", message)
            }
        }
    }
}
