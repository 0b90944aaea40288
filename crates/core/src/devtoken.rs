//! One-click dev sign-in (docs/protocol.md §3 "dev tokens"): with `DEV_TOKENS=1` the entry
//! Worker answers `POST /__dev/token {"userId","name"?,"admin"?}` with `{"token"}`, signed
//! like `make token` ([`crate::auth::mint`] with `AUTH_SECRET`). Without the var the route does
//! not exist (the same 404 as any unknown path). Never enable it in production: anyone could
//! mint a token for any user, admin included.

use serde_json::Value;

use crate::auth::Claims;
use crate::error::ApiError;
use crate::names::is_valid_name;

/// The route's path (matched before the routing table, only when enabled).
pub const PATH: &str = "/__dev/token";
/// Lifetime of a dev token: 12 hours.
pub const TTL_SECS: i64 = 12 * 3600;
/// Longest display name accepted (characters).
pub const MAX_NAME_CHARS: usize = 64;

/// Whether the `DEV_TOKENS` var turns the route on: exactly `1` or `true` (anything else,
/// including absence, leaves it off).
pub fn enabled(var: Option<&str>) -> bool {
    matches!(var.map(str::trim), Some("1" | "true"))
}

/// The claims a request body asks for, issued at `now_secs`.
pub fn claims_from_body(body: &Value, now_secs: i64) -> Result<Claims, ApiError> {
    let Value::Object(map) = body else {
        return Err(ApiError::bad_request("invalid_body", "body must be a JSON object {\"userId\",\"name\"?,\"admin\"?}"));
    };
    let user = match map.get("userId") {
        Some(Value::String(u)) if is_valid_name(u) => u.clone(),
        Some(Value::String(_)) => {
            return Err(ApiError::bad_request("invalid_user_id", "userId must match [A-Za-z0-9_.-]{1,64}"))
        }
        _ => return Err(ApiError::bad_request("invalid_user_id", "userId (a string) is required")),
    };
    let name = match map.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if n.trim().is_empty() => None,
        Some(Value::String(n)) if n.chars().count() <= MAX_NAME_CHARS && !n.chars().any(char::is_control) => {
            Some(n.trim().to_owned())
        }
        Some(_) => {
            return Err(ApiError::bad_request("invalid_name", "name must be a string of at most 64 characters without control characters"))
        }
    };
    let admin = match map.get("admin") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("invalid_admin", "admin must be true or false")),
    };
    Ok(Claims {
        sub: user,
        iat: now_secs,
        exp: now_secs.saturating_add(TTL_SECS),
        name,
        roles: if admin { vec!["admin".to_owned()] } else { Vec::new() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{mint, verify};
    use serde_json::json;

    const NOW: i64 = 1_767_225_600;

    #[test]
    fn only_1_or_true_enables() {
        assert!(enabled(Some("1")));
        assert!(enabled(Some("true")));
        assert!(enabled(Some(" 1 ")));
        for off in [None, Some(""), Some("0"), Some("false"), Some("yes"), Some("11")] {
            assert!(!enabled(off), "{off:?}");
        }
    }

    #[test]
    fn a_minted_dev_token_verifies_with_the_same_secret() {
        let claims = claims_from_body(&json!({"userId":"alice","name":" Alice A. ","admin":true}), NOW).expect("claims");
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.name.as_deref(), Some("Alice A."));
        assert!(claims.is_admin());
        assert_eq!(claims.exp - claims.iat, TTL_SECS);
        let token = mint(&claims, b"s3cret").expect("mint");
        let back = verify(&token, b"s3cret", NOW + 10).expect("verify");
        assert_eq!(back, claims);
        assert!(verify(&token, b"other", NOW + 10).is_err(), "another secret refuses it");
    }

    #[test]
    fn defaults_no_name_and_no_admin() {
        for body in [json!({"userId":"bob"}), json!({"userId":"bob","name":null,"admin":null}), json!({"userId":"bob","name":"  ","admin":false})] {
            let c = claims_from_body(&body, NOW).expect("claims");
            assert_eq!((c.sub.as_str(), c.name, c.roles.len()), ("bob", None, 0), "{body}");
        }
    }

    #[test]
    fn bad_bodies_are_clear_400s() {
        let cases = [
            (json!(null), "invalid_body"),
            (json!([]), "invalid_body"),
            (json!("alice"), "invalid_body"),
            (json!({}), "invalid_user_id"),
            (json!({"userId":null}), "invalid_user_id"),
            (json!({"userId":7}), "invalid_user_id"),
            (json!({"userId":""}), "invalid_user_id"),
            (json!({"userId":"a b"}), "invalid_user_id"),
            (json!({"userId":"x".repeat(65)}), "invalid_user_id"),
            (json!({"userId":"a","name":5}), "invalid_name"),
            (json!({"userId":"a","name":"n".repeat(65)}), "invalid_name"),
            (json!({"userId":"a","name":"line\nbreak"}), "invalid_name"),
            (json!({"userId":"a","admin":"yes"}), "invalid_admin"),
            (json!({"userId":"a","admin":1}), "invalid_admin"),
        ];
        for (body, code) in cases {
            match claims_from_body(&body, NOW) {
                Err(e) => {
                    assert_eq!(e.status, 400, "{body}");
                    assert_eq!(e.code, code, "{body}");
                }
                Ok(c) => panic!("{body} accepted as {c:?}"),
            }
        }
    }
}
