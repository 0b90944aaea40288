//! Errors every layer shares: the HTTP error body of docs/protocol.md §5 and the WebSocket close codes.
//!
//! Client errors carry a stable snake_case `code` and a human message that is echoed back;
//! internal errors are logged by the adapter and masked as `internal_error`.

use std::fmt;

/// An error answered over HTTP as `{"error":{"code","message"}}` with `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429 only).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after_secs: None }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(401, code, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "method_not_allowed", message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(409, code, message)
    }
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(413, "payload_too_large", message)
    }
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(422, code, message)
    }
    pub fn upgrade_required() -> Self {
        Self::new(426, "upgrade_required", "this route only accepts WebSocket upgrades (Upgrade: websocket)")
    }
    pub fn too_many_requests(message: impl Into<String>, retry_after_ms: i64) -> Self {
        let secs = u64::try_from(retry_after_ms.max(0)).unwrap_or(0).div_ceil(1000).max(1);
        Self { retry_after_secs: Some(secs), ..Self::new(429, "rate_limited", message) }
    }
    pub fn internal() -> Self {
        Self::new(500, "internal_error", "internal error")
    }
    /// 503 `unavailable`: a sharded object could not reach its primary (docs/sharding.md); try again.
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "unavailable", message)
    }

    /// The JSON body of docs/protocol.md §5.
    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// WebSocket close codes of docs/protocol.md §5.
pub mod close {
    /// The frame is not valid JSON, has wrong field types, or is binary.
    pub const INVALID_DATA: u16 = 1007;
    /// Unknown message type or repeated rate-limit violation.
    pub const POLICY: u16 = 1008;
    /// The frame is over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Something broke on our side.
    pub const INTERNAL: u16 = 1011;
    /// Logged out / token revoked: the client must not reconnect with the same token.
    pub const LOGGED_OUT: u16 = 4001;
    /// Forbidden.
    pub const FORBIDDEN: u16 = 4003;
}

/// workerd throws on close reasons over 123 bytes: clip at a char boundary.
pub fn clip_reason(reason: &str) -> String {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason.to_owned();
    }
    let mut end = MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.get(..end).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_spec_shape() {
        let e = ApiError::bad_request("invalid_name", "bad");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v, serde_json::json!({"error":{"code":"invalid_name","message":"bad"}}));
        assert_eq!(e.status, 400);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(ApiError::too_many_requests("x", 1).retry_after_secs, Some(1));
        assert_eq!(ApiError::too_many_requests("x", 1001).retry_after_secs, Some(2));
        assert_eq!(ApiError::too_many_requests("x", -5).retry_after_secs, Some(1));
    }

    #[test]
    fn clip_reason_keeps_char_boundaries() {
        let s = "é".repeat(100); // 200 bytes
        let clipped = clip_reason(&s);
        assert!(clipped.len() <= 123);
        assert_eq!(clipped.len(), 122);
        assert_eq!(clip_reason("short"), "short");
    }
}
