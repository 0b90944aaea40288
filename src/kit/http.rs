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
    RequestUrl::of(req).query_pairs().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// A request to another object (`https://do.internal/<op>`): method, headers, optional body.
/// Built on `web_sys` directly — workers-rs's `Request::new_with_init` also converts the `cf`
/// options (serde, float formatting: ~12 KB of WASM) that an internal call never sets.
pub fn internal_request(url: &str, method: &worker::Method, headers: &Headers, body: Option<&[u8]>) -> worker::Result<Request> {
    let init = worker::web_sys::RequestInit::new();
    init.set_method(method.as_ref());
    init.set_headers(headers.as_ref());
    if let Some(bytes) = body {
        init.set_body(&worker::js_sys::Uint8Array::from(bytes).into());
    }
    worker::web_sys::Request::new_with_str_and_init(url, &init)
        .map(Request::from)
        .map_err(|e| worker::Error::JsError(e.as_string().unwrap_or_else(|| "invalid internal request".to_owned())))
}

/// The path and query of a request, split from the runtime's own `request.url` — already parsed
/// and serialized by workerd's WHATWG URL parser, so splitting it gives exactly what a second
/// parse (workers-rs's `Request::url`, the `url` crate) would: the path as serialized
/// (percent-encoded, from the first `/` after the host), the query after the first `?`, no
/// fragment. Not parsing it again keeps the `url` crate and its IDNA tables out of the WASM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestUrl {
    pub path: String,
    /// `None` without a `?`; `Some("")` for a bare `?` (as `url::Url::query`).
    pub query: Option<String>,
}

impl RequestUrl {
    pub fn of(req: &Request) -> Self {
        Self::parse(&req.inner().url())
    }

    /// Split a serialized absolute URL (`scheme://authority/path?query#fragment`).
    pub fn parse(url: &str) -> Self {
        let url = url.split_once('#').map_or(url, |(before, _)| before);
        let (before_query, query) = match url.split_once('?') {
            Some((before, query)) => (before, Some(query.to_owned())),
            None => (url, None),
        };
        let after_scheme = before_query.split_once("://").map_or(before_query, |(_, rest)| rest);
        let path = after_scheme.find('/').map_or_else(|| "/".to_owned(), |at| after_scheme.get(at..).unwrap_or("/").to_owned());
        Self { path, query }
    }

    /// The query's `application/x-www-form-urlencoded` pairs, decoded (`+` is a space, invalid
    /// UTF-8 replaced) — `url::Url::query_pairs`'s own decoder, the `form_urlencoded` crate.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_deref().unwrap_or("").as_bytes()).into_owned().collect()
    }
}

/// A JSON response from an already serialized body (cores build exact wire JSON).
pub fn json_text_response(status: u16, body: String) -> Result<Response, ApiError> {
    let mut response = Response::ok(body).map_err(crate::kit::internal("response"))?.with_status(status);
    let headers = response.headers_mut();
    let _ = headers.set("Content-Type", "application/json");
    let _ = headers.set("Access-Control-Allow-Origin", "*");
    Ok(response)
}

#[cfg(test)]
mod request_url_tests {
    use super::RequestUrl;

    /// Against the `url` crate on serialized URLs (what workerd hands the Worker): the same path,
    /// query and decoded pairs, for paths and queries with every character class that matters.
    #[test]
    fn splits_exactly_as_the_url_crate_parses() {
        let paths = ["", "/", "/api/chat", "/api/chat/room%20one/messages", "//double//slash", "/a/../b/./c", "/ü/✓", "/%zz", "/semi;colon", "/at@sign", "/a%2Fb"];
        let queries = [None, Some(""), Some("a=1"), Some("a=1&b=2&a=3"), Some("q=a+b%20c"), Some("x=%ff%fe"), Some("k"), Some("=v"), Some("a=?b=c"), Some("&&a=&=&"), Some("t=ü✓"), Some("p=%2B+")];
        let fragments = [None, Some(""), Some("frag?x=1")];
        let mut checked = 0;
        for host in ["https://do.internal", "http://127.0.0.1:8787", "https://user:pw@example.com"] {
            for path in paths {
                for query in queries {
                    for fragment in fragments {
                        let mut raw = format!("{host}{path}");
                        if let Some(q) = query {
                            raw.push('?');
                            raw.push_str(q);
                        }
                        if let Some(f) = fragment {
                            raw.push('#');
                            raw.push_str(f);
                        }
                        let Ok(oracle) = url::Url::parse(&raw) else { continue };
                        let got = RequestUrl::parse(oracle.as_str());
                        assert_eq!(got.path, oracle.path(), "{raw}");
                        assert_eq!(got.query.as_deref(), oracle.query(), "{raw}");
                        let pairs: Vec<(String, String)> = oracle.query_pairs().into_owned().collect();
                        assert_eq!(got.query_pairs(), pairs, "{raw}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1000, "only {checked} URLs checked");
    }

    #[test]
    fn a_url_without_a_path_is_the_root() {
        assert_eq!(RequestUrl::parse("https://do.internal"), RequestUrl { path: "/".into(), query: None });
        assert_eq!(RequestUrl::parse("https://do.internal?x=1").query.as_deref(), Some("x=1"));
    }
}
