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
        let status = match &e {
            ServiceError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ServiceError::Unauthorized => StatusCode::UNAUTHORIZED,
            ServiceError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ServiceError::NotFound { .. } => StatusCode::NOT_FOUND,
            ServiceError::Gone { .. } => StatusCode::GONE,
            ServiceError::Conflict { .. } => StatusCode::CONFLICT,
            ServiceError::StaleVersion { .. } => StatusCode::PRECONDITION_FAILED,
            ServiceError::Busy => StatusCode::TOO_MANY_REQUESTS,
            ServiceError::Unavailable(detail) => {
                tracing::error!("storage unavailable: {detail}");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}
