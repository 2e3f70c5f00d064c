//! Request extractors whose failures answer with the contract's error body:
//! the caller's principal, a JSON body, query parameters.

use super::error::ApiError;
use super::oauth;
use crate::auth::{AuthError, Principal, UNKNOWN_TOKEN};
use crate::service::Service;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// The authenticated caller: 401 without a valid bearer token (with the
/// challenge MCP clients discover issuers by), 403 for a valid token that
/// maps to no policy, 503 when its issuer's keys cannot be read.
pub struct Caller(pub Arc<Principal>);

/// Why a request has no caller, as the contract's error body.
pub struct Refused {
    error: ApiError,
    challenge: Option<HeaderValue>,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut response = self.error.into_response();
        if let Some(c) = self.challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        response
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let text = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl FromRequestParts<Arc<Service>> for Caller {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, service: &Arc<Service>) -> Result<Self, Refused> {
        let Some(token) = bearer(&parts.headers) else {
            return Err(Refused {
                error: ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", UNKNOWN_TOKEN),
                challenge: Some(oauth::challenge(service, &parts.headers, None)),
            });
        };
        match service.authenticate(token).await {
            Ok(p) => Ok(Caller(p)),
            Err(AuthError::Invalid(reason)) => {
                let message =
                    if reason == UNKNOWN_TOKEN { reason.clone() } else { format!("invalid bearer token: {reason}") };
                Err(Refused {
                    error: ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message),
                    challenge: Some(oauth::challenge(service, &parts.headers, Some(&reason))),
                })
            }
            Err(AuthError::Forbidden { code, message }) => {
                Err(Refused { error: ApiError::new(StatusCode::FORBIDDEN, code, message), challenge: None })
            }
            Err(AuthError::Unavailable) => Err(Refused {
                error: ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "identity_provider_unavailable",
                    "the token's issuer keys cannot be read now; try again",
                ),
                challenge: None,
            }),
        }
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
