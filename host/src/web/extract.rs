//! Request extractors whose failures answer with the contract's error body:
//! the caller's principal, a JSON body, query parameters.

use super::error::ApiError;
use crate::auth::Principal;
use crate::service::Service;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// The authenticated caller (401 without a valid bearer token).
pub struct Caller(pub Arc<Principal>);

impl FromRequestParts<Arc<Service>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, service: &Arc<Service>) -> Result<Self, ApiError> {
        let unauthorized =
            || ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or invalid bearer token");
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(unauthorized)?;
        let text = value.to_str().map_err(|_| unauthorized())?;
        let (scheme, token) = text.split_once(' ').ok_or_else(unauthorized)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(unauthorized());
        }
        service.authenticate(token.trim()).map(Caller).ok_or_else(unauthorized)
    }
}

/// A JSON body: 415 when not JSON, 413 over the size limit, 400 malformed.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Body(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON with Content-Type: application/json",
            )),
            Err(JsonRejection::BytesRejection(r)) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is over the size limit (max_request_kb)",
            )),
            Err(JsonRejection::JsonDataError(e)) => {
                Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.body_text()))
            }
            Err(JsonRejection::JsonSyntaxError(e)) => {
                Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.body_text()))
            }
            Err(other) => Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", other.body_text())),
        }
    }
}

/// Query parameters: 400 with the reason when malformed.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e: QueryRejection| ApiError::bad_request(e.body_text()))
    }
}

/// Path parameters: a malformed one (bad percent-encoding) answers 404 with
/// the contract's body, like an unknown id.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource"))
    }
}
