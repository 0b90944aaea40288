//! Token verification (docs/protocol.md §3): arbitrary strings never panic and never verify;
//! a minted token round-trips; another secret, expiry or any tampering refuses it.

use proptest::prelude::*;
use proptest::sample::Index;

use edge_realtime_core::auth::{self, AuthError, Claims, TokenSource};

/// Secrets as deployed (`AUTH_SECRET` is a string): no NUL, so two different secrets are two
/// different HMAC keys (HMAC zero-pads short keys, so `k` and `k\0` would be the same key).
fn secret() -> impl Strategy<Value = Vec<u8>> {
    "[^\u{0}]{1,80}".prop_map(String::into_bytes)
}

fn claims() -> impl Strategy<Value = Claims> {
    (
        "[A-Za-z0-9_.-]{1,64}",
        0i64..4_000_000_000,
        1i64..1_000_000,
        proptest::option::of(".{0,64}"),
        prop::collection::vec(prop_oneof![Just("admin".to_owned()), ".{0,10}"], 0..3),
    )
        .prop_map(|(sub, iat, ttl, name, roles)| Claims { sub, iat, exp: iat + ttl, name, roles })
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn arbitrary_tokens_never_verify(token in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,50}",
        "eyJhbGciOiJIUzI1NiJ9\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,50}",
    ], secret in secret(), now in any::<i64>()) {
        let got = auth::verify(&token, &secret, now);
        prop_assert!(got.is_err(), "a random string verified: {:?}", got);
        if let Err(e) = got {
            prop_assert!(["missing_token", "invalid_token", "token_expired"].contains(&e.code()));
        }
    }

    #[test]
    fn minted_tokens_round_trip(c in claims(), secret in secret(), before_exp in 1i64..1_000_000) {
        let token = auth::mint(&c, &secret).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(auth::looks_like_jwt(&token));
        let now = (c.exp - before_exp).max(i64::MIN + 1);
        prop_assert_eq!(auth::verify(&token, &secret, now), Ok(c.clone()));
        // Expired from `exp` on (exp <= now).
        prop_assert_eq!(auth::verify(&token, &secret, c.exp), Err(AuthError::Expired));
        prop_assert_eq!(auth::verify(&token, &secret, c.exp.saturating_add(before_exp)), Err(AuthError::Expired));
        // Every route to the token finds it whole.
        let (header, pair) = (format!("Bearer {token}"), format!("bearer, {token}"));
        prop_assert_eq!(auth::extract_token(Some(&header), None, None), Some((token.as_str(), TokenSource::Header)));
        prop_assert_eq!(auth::extract_token(None, Some(&pair), None), Some((token.as_str(), TokenSource::Subprotocol)));
        prop_assert_eq!(auth::extract_token(None, Some(&token), None), Some((token.as_str(), TokenSource::LoneSubprotocol)));
        prop_assert_eq!(auth::selected_subprotocol(Some(&token)), Some(token.as_str()));
    }

    #[test]
    fn another_secret_never_verifies(c in claims(), a in secret(), b in secret()) {
        prop_assume!(a != b);
        let token = auth::mint(&c, &a).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(auth::verify(&token, &b, c.iat), Err(AuthError::Signature));
    }

    /// Changing any one byte of a valid token (to another base64url character) refuses it.
    #[test]
    fn tampered_tokens_never_verify(c in claims(), secret in secret(), at in any::<Index>(), with in any::<Index>()) {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
        let token = auth::mint(&c, &secret).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut bytes = token.clone().into_bytes();
        let i = at.index(bytes.len());
        let replacement = *with.get(ALPHABET);
        prop_assume!(bytes.get(i) != Some(&replacement));
        if let Some(b) = bytes.get_mut(i) {
            *b = replacement;
        }
        let tampered = String::from_utf8(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let got = auth::verify(&tampered, &secret, c.iat);
        prop_assert!(got.is_err(), "tampered token verified: {}", tampered);
    }

    #[test]
    fn token_extraction_never_panics_and_returns_a_part_of_the_input(
        authz in proptest::option::of(prop_oneof![any::<String>(), ".{0,20}".prop_map(|t| format!("Bearer {t}")), Just("bearer".to_owned())]),
        proto in proptest::option::of(prop_oneof![any::<String>(), "[a-z., ]{0,30}"]),
        q in proptest::option::of(any::<String>()),
    ) {
        if let Some((token, source)) = auth::extract_token(authz.as_deref(), proto.as_deref(), q.as_deref()) {
            let from = match source {
                TokenSource::Header => authz.as_deref(),
                TokenSource::Subprotocol | TokenSource::LoneSubprotocol => proto.as_deref(),
                TokenSource::Query => q.as_deref(),
            };
            prop_assert!(from.is_some_and(|s| s.contains(token)));
        }
        if let Some(selected) = auth::selected_subprotocol(proto.as_deref()) {
            prop_assert!(selected == "bearer" || auth::looks_like_jwt(selected));
        }
    }
}
