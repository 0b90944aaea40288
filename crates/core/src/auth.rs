//! HS256 JWT verification and minting (docs/protocol.md §3), and where a request carries its token.
//!
//! Hand-rolled over `hmac`/`sha2` because the usual JWT crates pull in `ring` or `getrandom`,
//! which do not build for `wasm32-unknown-unknown` without extra glue; the format is small.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::Sha256;

use crate::names::is_valid_name;

type HmacSha256 = Hmac<Sha256>;

/// Longest token we look at; anything longer is rejected before any decoding.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The claims edge-realtime reads. Times are seconds since the epoch, as JWT has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(deserialize_with = "numeric_date")]
    pub exp: i64,
    #[serde(deserialize_with = "numeric_date")]
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "roles_from_string_or_list", skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

impl Claims {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
    /// The name shown to others: the `name` claim, else the user id.
    pub fn display_name(&self) -> &str {
        match self.name.as_deref() {
            Some(n) if !n.trim().is_empty() => n,
            _ => &self.sub,
        }
    }
}

/// A JWT NumericDate (RFC 7519 §2): seconds since the epoch, which may have a fraction
/// (`Date.now() / 1000`, Python's `time.time()`); kept as whole seconds, rounded down.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let secs = f64::deserialize(d)?;
    if !secs.is_finite() || secs.abs() > crate::MAX_SAFE_INTEGER as f64 {
        return Err(serde::de::Error::custom("not a NumericDate"));
    }
    Ok(secs.floor() as i64)
}

fn roles_from_string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Roles {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Roles>::deserialize(d)? {
        None => Vec::new(),
        Some(Roles::One(r)) => vec![r],
        Some(Roles::Many(r)) => r,
    })
}

/// Why a token was refused. All of them answer 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token: send Authorization: Bearer <jwt>, Sec-WebSocket-Protocol: bearer, <jwt> (or the jwt alone), or ?token=")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("unsupported token algorithm (only HS256)")]
    Algorithm,
    #[error("bad token signature")]
    Signature,
    #[error("invalid token claims: {0}")]
    Claims(&'static str),
    #[error("token expired")]
    Expired,
    #[error("token revoked by logout_all")]
    Revoked,
}

impl AuthError {
    /// Stable wire code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Expired => "token_expired",
            AuthError::Revoked => "token_revoked",
            _ => "invalid_token",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Verify `token` against `secret` at `now_secs`; returns its claims.
pub fn verify(token: &str, secret: &[u8], now_secs: i64) -> Result<Claims, AuthError> {
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let header: Header = decode_json(header_b64)?;
    if header.alg != "HS256" {
        return Err(AuthError::Algorithm);
    }
    let signature = URL_SAFE_NO_PAD.decode(sig_b64).map_err(|_| AuthError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| AuthError::Signature)?;
    mac.update(header_b64.as_bytes());
    mac.update(b".");
    mac.update(payload_b64.as_bytes());
    mac.verify_slice(&signature).map_err(|_| AuthError::Signature)?;

    let claims: Claims = decode_json(payload_b64)?;
    if !is_valid_name(&claims.sub) {
        return Err(AuthError::Claims("sub must match ^[A-Za-z0-9_.-]{1,64}$"));
    }
    if claims.name.as_ref().is_some_and(|n| n.chars().count() > 64) {
        return Err(AuthError::Claims("name is longer than 64 characters"));
    }
    if claims.exp <= now_secs {
        return Err(AuthError::Expired);
    }
    Ok(claims)
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

/// Sign `claims` with `secret` (dev tokens, tests, benchmarks).
pub fn mint(claims: &Claims, secret: &[u8]) -> Result<String, AuthError> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload_json = serde_json::to_vec(claims).map_err(|_| AuthError::Malformed)?;
    let payload = URL_SAFE_NO_PAD.encode(payload_json);
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| AuthError::Signature)?;
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    Ok(format!("{header}.{payload}.{sig}"))
}

/// Where the token came from. Both subprotocol forms oblige the 101 to select a protocol the
/// client offered (see [`selected_subprotocol`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    /// `Sec-WebSocket-Protocol: bearer, <jwt>`: the 101 selects `bearer`.
    Subprotocol,
    /// `Sec-WebSocket-Protocol: <jwt>` alone (`new WebSocket(url, [jwt])`, design note 004): the
    /// 101 selects the token itself.
    LoneSubprotocol,
    Query,
}

/// Whether `s` has the shape of a compact JWS: three non-empty base64url segments. Only the
/// shape — [`verify`] decides whether it is a token we accept.
pub fn looks_like_jwt(s: &str) -> bool {
    let segment = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let mut parts = s.split('.');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(a), Some(b), Some(c), None) if segment(a) && segment(b) && segment(c)
    ) && s.len() <= MAX_TOKEN_LEN
}

/// The token carried in `Sec-WebSocket-Protocol`, and which form: the pair `bearer, <jwt>`, or
/// a lone JWT-shaped protocol (the only one offered).
fn protocol_token(protocols: &str) -> Option<(&str, TokenSource)> {
    let mut items = protocols.split(',').map(str::trim);
    while let Some(item) = items.next() {
        if item.eq_ignore_ascii_case("bearer") {
            if let Some(token) = items.next().filter(|t| !t.is_empty()) {
                return Some((token, TokenSource::Subprotocol));
            }
        }
    }
    let mut offered = protocols.split(',').map(str::trim).filter(|p| !p.is_empty());
    match (offered.next(), offered.next()) {
        (Some(only), None) if looks_like_jwt(only) => Some((only, TokenSource::LoneSubprotocol)),
        _ => None,
    }
}

/// Find the token: `Authorization: Bearer`, then `Sec-WebSocket-Protocol` (`bearer, <jwt>`, or
/// a lone JWT), then `?token=`.
pub fn extract_token<'a>(
    authorization: Option<&'a str>,
    websocket_protocol: Option<&'a str>,
    query_token: Option<&'a str>,
) -> Option<(&'a str, TokenSource)> {
    if let Some(auth) = authorization {
        let auth = auth.trim();
        if let Some(rest) = auth.get(..7).filter(|p| p.eq_ignore_ascii_case("bearer ")).and(auth.get(7..)) {
            return Some((rest.trim(), TokenSource::Header));
        }
    }
    if let Some(found) = websocket_protocol.and_then(protocol_token) {
        return Some(found);
    }
    query_token.filter(|t| !t.is_empty()).map(|t| (t, TokenSource::Query))
}

/// The `Sec-WebSocket-Protocol` a 101 answers with, given what the client offered: `bearer` for
/// the `bearer, <jwt>` pair, the token itself for a lone JWT, else none. A browser drops a
/// connection whose selected protocol it did not offer, and one that offered protocols but got
/// none selected.
pub fn selected_subprotocol(offered: Option<&str>) -> Option<&str> {
    match protocol_token(offered?)? {
        (_, TokenSource::Subprotocol) => Some("bearer"),
        (token, TokenSource::LoneSubprotocol) => Some(token),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn claims(sub: &str, iat: i64, exp: i64) -> Claims {
        Claims { sub: sub.into(), iat, exp, name: Some("Alice".into()), roles: vec![] }
    }

    #[test]
    fn round_trip() {
        let c = claims("alice", 100, 200);
        let t = mint(&c, SECRET).unwrap();
        assert_eq!(verify(&t, SECRET, 150).unwrap(), c);
    }

    #[test]
    fn expired_at_exactly_exp() {
        let t = mint(&claims("alice", 100, 200), SECRET).unwrap();
        assert_eq!(verify(&t, SECRET, 200), Err(AuthError::Expired));
        assert_eq!(verify(&t, SECRET, 199).map(|c| c.sub), Ok("alice".into()));
    }

    #[test]
    fn wrong_secret_or_tampered_payload() {
        let t = mint(&claims("alice", 100, 200), SECRET).unwrap();
        assert_eq!(verify(&t, b"other", 150), Err(AuthError::Signature));
        let forged = mint(&claims("mallory", 100, 200), b"other").unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let forged_parts: Vec<&str> = forged.split('.').collect();
        let spliced = format!("{}.{}.{}", parts[0], forged_parts[1], parts[2]);
        assert_eq!(verify(&spliced, SECRET, 150), Err(AuthError::Signature));
    }

    #[test]
    fn malformed_tokens() {
        for bad in ["a", "a.b", "a.b.c.d", "!!.!!.!!", "....", &"x".repeat(5000)] {
            assert!(matches!(verify(bad, SECRET, 0), Err(AuthError::Malformed)), "{bad}");
        }
        assert_eq!(verify("", SECRET, 0), Err(AuthError::Missing));
    }

    #[test]
    fn alg_none_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"a","iat":1,"exp":9999999999}"#);
        assert_eq!(verify(&format!("{header}.{payload}."), SECRET, 0), Err(AuthError::Algorithm));
    }

    #[test]
    fn missing_required_claims() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
        for payload in [r#"{"sub":"a","exp":9999999999}"#, r#"{"iat":1,"exp":9999999999}"#, r#"{"sub":"a","iat":1}"#] {
            let p = URL_SAFE_NO_PAD.encode(payload);
            let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
            mac.update(format!("{header}.{p}").as_bytes());
            let s = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
            assert_eq!(verify(&format!("{header}.{p}.{s}"), SECRET, 0), Err(AuthError::Malformed), "{payload}");
        }
    }

    #[test]
    fn times_are_numeric_dates_fractions_included() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let signed = |payload: &str| {
            let p = URL_SAFE_NO_PAD.encode(payload);
            let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
            mac.update(format!("{header}.{p}").as_bytes());
            format!("{header}.{p}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
        };
        // `Date.now() / 1000`: rounded down to whole seconds.
        let c = verify(&signed(r#"{"sub":"a","iat":1700000000.987,"exp":1700003600.5}"#), SECRET, 1_700_000_100).unwrap();
        assert_eq!((c.iat, c.exp), (1_700_000_000, 1_700_003_600));
        assert_eq!(verify(&signed(r#"{"sub":"a","iat":1,"exp":200.9}"#), SECRET, 200), Err(AuthError::Expired));
        for bad in [r#""1""#, "null", "true", "1e300", "[1]"] {
            let payload = format!(r#"{{"sub":"a","iat":{bad},"exp":9999999999}}"#);
            assert_eq!(verify(&signed(&payload), SECRET, 0), Err(AuthError::Malformed), "{payload}");
        }
    }

    #[test]
    fn sub_must_be_a_valid_name() {
        let t = mint(&claims("a b", 1, 200), SECRET).unwrap();
        assert!(matches!(verify(&t, SECRET, 10), Err(AuthError::Claims(_))));
    }

    #[test]
    fn roles_accept_string_or_list() {
        let c: Claims = serde_json::from_str(r#"{"sub":"a","iat":1,"exp":2,"roles":"admin"}"#).unwrap();
        assert!(c.is_admin());
        let c: Claims = serde_json::from_str(r#"{"sub":"a","iat":1,"exp":2,"roles":["x","admin"]}"#).unwrap();
        assert!(c.is_admin());
        let c: Claims = serde_json::from_str(r#"{"sub":"a","iat":1,"exp":2}"#).unwrap();
        assert!(!c.is_admin());
        assert_eq!(c.display_name(), "a");
    }

    #[test]
    fn token_sources_in_order() {
        assert_eq!(extract_token(Some("Bearer abc"), None, Some("q")), Some(("abc", TokenSource::Header)));
        assert_eq!(extract_token(Some("bearer abc"), None, None), Some(("abc", TokenSource::Header)));
        assert_eq!(extract_token(None, Some("bearer, xyz"), Some("q")), Some(("xyz", TokenSource::Subprotocol)));
        assert_eq!(extract_token(None, Some("chat, bearer,xyz"), None), Some(("xyz", TokenSource::Subprotocol)));
        assert_eq!(extract_token(None, Some("bearer"), Some("q")), Some(("q", TokenSource::Query)));
        assert_eq!(extract_token(Some("Basic x"), None, None), None);
        assert_eq!(extract_token(None, None, Some("")), None);
    }

    #[test]
    fn a_lone_jwt_subprotocol_is_the_token_and_is_selected() {
        let t = mint(&claims("alice", 100, 200), SECRET).unwrap();
        assert_eq!(extract_token(None, Some(&t), Some("q")), Some((t.as_str(), TokenSource::LoneSubprotocol)));
        assert_eq!(extract_token(None, Some(&format!(" {t} ")), None), Some((t.as_str(), TokenSource::LoneSubprotocol)));
        assert_eq!(selected_subprotocol(Some(&t)), Some(t.as_str()));
        assert_eq!(verify(extract_token(None, Some(&t), None).unwrap().0, SECRET, 150).map(|c| c.sub), Ok("alice".into()));
        // The bearer pair still selects `bearer`.
        assert_eq!(selected_subprotocol(Some(&format!("bearer, {t}"))), Some("bearer"));
        // Not the only one offered, or not JWT-shaped: not a token, nothing selected.
        for offered in [format!("chat, {t}"), format!("{t}, chat"), "chat".into(), "a.b".into(), "a.b.c.d".into(),
                        "a..c".into(), "a.b.c=".into(), "a b.c.d".into(), "".into(), " , ".into()] {
            assert_eq!(extract_token(None, Some(&offered), None), None, "{offered}");
            assert_eq!(selected_subprotocol(Some(&offered)), None, "{offered}");
        }
        assert_eq!(extract_token(None, Some("chat"), Some("q")), Some(("q", TokenSource::Query)));
        assert_eq!(selected_subprotocol(None), None);
        assert!(looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt(&format!("{}.b.c", "a".repeat(MAX_TOKEN_LEN))));
    }
}
