//! HTTP on both sides of the Worker → DO hop: identity headers, JSON bodies and responses,
//! and the one mapping from [`ApiError`] to the docs/protocol.md §5 error response.

use serde::Serialize;
use worker::url::form_urlencoded;
use worker::{Headers, Request, Response};

use edge_realtime_core::error::ApiError;
use edge_realtime_core::names::is_valid_name;

/// Largest HTTP body any route accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Identity headers the entry Worker sets after auth; DOs trust nothing else.
pub const USER_ID: &str = "X-User-Id";
pub const USER_NAME: &str = "X-User-Name";
/// `iat` of the token the request was authenticated with (seconds), for revocation checks.
pub const TOKEN_IAT: &str = "X-User-Token-Iat";
/// The object's own name (DOs do not otherwise know it).
pub const OBJECT_NAME: &str = "X-Object-Name";

/// Who is calling, as the entry Worker authenticated them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub user_name: String,
    pub token_iat: i64,
}

impl Identity {
    /// Read identity from the Worker's headers (400 if absent: the DO was not reached through the Worker).
    pub fn from_request(req: &Request) -> Result<Self, ApiError> {
        let headers = req.headers();
        let user_id = header(headers, USER_ID).filter(|u| is_valid_name(u)).ok_or_else(|| {
            ApiError::unauthorized("missing_identity", "request did not come through the authenticated entry Worker")
        })?;
        let user_name = header(headers, USER_NAME).map(|n| decode_header_text(&n)).unwrap_or_else(|| user_id.clone());
        let token_iat = header(headers, TOKEN_IAT).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Self { user_id, user_name, token_iat })
    }

    /// Write identity headers (header values must be Latin-1: the display name is percent-encoded).
    pub fn write(&self, headers: &Headers) -> worker::Result<()> {
        headers.set(USER_ID, &self.user_id)?;
        headers.set(USER_NAME, &encode_header_text(&self.user_name))?;
        headers.set(TOKEN_IAT, &self.token_iat.to_string())
    }
}

/// The object name the Worker addressed.
pub fn object_name(req: &Request) -> Option<String> {
    header(req.headers(), OBJECT_NAME).filter(|n| is_valid_name(n))
}

fn header(headers: &Headers, name: &str) -> Option<String> {
    headers.get(name).ok().flatten()
}

pub fn encode_header_text(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn decode_header_text(s: &str) -> String {
    form_urlencoded::parse(format!("v={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A JSON response with `status`.
pub fn json_response<T: Serialize>(status: u16, body: &T) -> worker::Result<Response> {
    let mut response = Response::from_json(body)?.with_status(status);
    response.headers_mut().set("Access-Control-Allow-Origin", "*")?;
    Ok(response)
}

/// The docs/protocol.md §5 error response (with `Retry-After` on 429).
pub fn error_response(err: &ApiError) -> worker::Result<Response> {
    let mut response = Response::ok(err.body())?.with_status(err.status);
    let headers = response.headers_mut();
    headers.set("Content-Type", "application/json")?;
    headers.set("Access-Control-Allow-Origin", "*")?;
    if let Some(secs) = err.retry_after_secs {
        headers.set("Retry-After", &secs.to_string())?;
    }
    if err.status == 426 {
        headers.set("Upgrade", "websocket")?;
    }
    if let Some(allow) = edge_realtime_core::route::allowed_method(err) {
        headers.set("Allow", allow)?;
    }
    Ok(response)
}

/// Turn a handler result into a response; internal errors were logged where they happened.
pub fn respond(result: Result<Response, ApiError>) -> worker::Result<Response> {
    match result {
        Ok(r) => Ok(r),
        Err(e) => error_response(&e),
    }
}

/// Read a JSON body: empty → `Null`; over 64 KiB → 413; not JSON → 400.
pub async fn read_json_body(req: &mut Request) -> Result<serde_json::Value, ApiError> {
    let bytes = req.bytes().await.map_err(|_| ApiError::bad_request("invalid_body", "could not read the body"))?;
    parse_json_body(&bytes)
}

/// Read a JSON body where "no body" and a body of `null` must differ: empty (or only
/// whitespace) → `None`; anything else as [`parse_json_body`] (so `null` is `Some(Null)`).
pub async fn read_optional_json_body(req: &mut Request) -> Result<Option<serde_json::Value>, ApiError> {
    let bytes = req.bytes().await.map_err(|_| ApiError::bad_request("invalid_body", "could not read the body"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parse_json_body(&bytes).map(Some)
}

pub fn parse_json_body(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::payload_too_large("body is larger than 64 KiB"));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(bytes).map_err(|_| ApiError::bad_request("invalid_json", "body is not valid JSON"))
}

/// A query parameter of the request URL.
pub fn query_param(req: &Request, name: &str) -> Option<String> {
    req.url().ok()?.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// A JSON response from an already serialized body (cores build exact wire JSON).
pub fn json_text_response(status: u16, body: String) -> Result<Response, ApiError> {
    let mut response = Response::ok(body).map_err(crate::kit::internal("response"))?.with_status(status);
    let headers = response.headers_mut();
    let _ = headers.set("Content-Type", "application/json");
    let _ = headers.set("Access-Control-Allow-Origin", "*");
    Ok(response)
}
