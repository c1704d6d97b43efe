//! Turning raw requests into checked values, in the order API.md fixes:
//! 401 → 400 (malformed, missing idempotency key) → 422 (validation).
//! Handlers call these explicitly, one after another, so the order is
//! visible in the code rather than left to extractor polling.

use std::collections::HashMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::auth::token::Claims;
use crate::auth::{AuthService, Principal};
use crate::idempotency::IdempotencyKey;

/// Largest request body accepted (API.md).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The signed-in user; the admin token is not a user (401).
pub fn user(req: &HttpRequest, auth: &AuthService) -> Result<Claims, ApiError> {
    let token = bearer(req).ok_or_else(ApiError::unauthorized)?;
    match auth.authenticate(token)? {
        Principal::User(claims) => Ok(claims),
        Principal::Admin => Err(ApiError::unauthorized()),
    }
}

/// The operator: the configured admin token. A user token is 403; with no
/// admin token configured the admin API is disabled (403 for everyone
/// presenting a token).
pub fn admin(req: &HttpRequest, auth: &AuthService) -> Result<(), ApiError> {
    let token = bearer(req).ok_or_else(ApiError::unauthorized)?;
    match auth.authenticate(token)? {
        Principal::Admin => Ok(()),
        Principal::User(_) if !auth.admin_enabled() => {
            Err(ApiError::forbidden("the admin API is disabled"))
        }
        Principal::User(_) => Err(ApiError::forbidden("admin token required")),
    }
}

/// The `Idempotency-Key` header: required, 1–64 visible ASCII characters.
pub fn idempotency_key(req: &HttpRequest) -> Result<IdempotencyKey, ApiError> {
    let Some(raw) = req.headers().get("idempotency-key") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            "this endpoint needs an Idempotency-Key header",
        ));
    };
    raw.to_str()
        .ok()
        .and_then(IdempotencyKey::parse)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1-64 visible ASCII characters",
            )
        })
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
    )
}

/// Reads and parses a JSON body: 415 unless `application/json`, 413 past
/// 64 KiB, 400 when it is not JSON, 422 when it is JSON of the wrong shape.
pub async fn json<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<T, ApiError> {
    require_json(req)?;
    parse_json(&body(req, payload).await?)
}

/// 415 unless the body is declared `application/json`.
pub fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json",
        ))
    }
}

/// The raw body, at most 64 KiB (413 past it, declared or not).
pub async fn body(req: &HttpRequest, mut payload: web::Payload) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0).min(MAX_BODY_BYTES));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_request("could not read the request body"))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses a body read by [`body`]: 400 when it is not JSON, 422 when it is
/// JSON of the wrong shape.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // Two steps, so that "not JSON at all" (400) is told apart from "JSON
    // of the wrong shape" (422) whatever the position of the first fault.
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("malformed JSON: {error}")))?;
    serde_json::from_value(value)
        .map_err(|error| ApiError::invalid_input(format!("invalid request body: {error}")))
}

/// The `limit` query parameter: not an integer → 400, below 1 → 422, above
/// `max` → clamped, absent → `default`.
pub fn limit(req: &HttpRequest, default: i64, max: i64) -> Result<i64, ApiError> {
    query_int(req, "limit", default, 1, max)
}

/// The integer query parameter `name`: `default` when absent, at least
/// `min` (422 below it), capped at `max`; 400 when not an integer.
pub fn query_int(
    req: &HttpRequest,
    name: &str,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, ApiError> {
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map_err(|_| ApiError::bad_request("malformed query string"))?;
    let Some(raw) = query.get(name) else {
        return Ok(default);
    };
    let value: i64 = raw
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{name} must be an integer")))?;
    if value < min {
        return Err(ApiError::invalid_input(format!(
            "{name} must be at least {min}"
        )));
    }
    Ok(value.min(max))
}

/// An id from the path; anything but a positive integer names nothing.
pub fn path_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::not_found(format!("no such {what}")))
}
