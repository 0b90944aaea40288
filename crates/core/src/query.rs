//! Query-string parameters shared by history routes (docs/protocol.md §5: clamp over max, 400 on 0/garbage).

use crate::error::ApiError;

/// Parse `limit`: absent → `default`, over `max` → `max`, 0 / negative / not a number → 400.
pub fn parse_limit(raw: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => {
            let digits = s.trim();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.bytes().all(|b| b == b'0') {
                return Err(ApiError::bad_request("invalid_limit", "limit must be a positive integer"));
            }
            // A positive integer too long for u64 is still just "over the maximum": clamped.
            Ok(digits.parse::<u64>().map_or(max, |n| u32::try_from(n.min(u64::from(max))).unwrap_or(max)))
        }
    }
}

/// Parse a sequence cursor such as `before`, `after` or `since`: absent → None, else a non-negative integer.
pub fn parse_seq(name: &'static str, raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    match raw {
        None => Ok(None),
        Some(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0 && *n <= crate::MAX_SAFE_INTEGER)
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("invalid_cursor", format!("{name} must be a non-negative integer"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(parse_limit(None, 50, 100), Ok(50));
        assert_eq!(parse_limit(Some("7"), 50, 100), Ok(7));
        assert_eq!(parse_limit(Some("100000"), 50, 100), Ok(100));
        // Over the maximum is clamped, however many digits (docs/protocol.md §5).
        assert_eq!(parse_limit(Some("99999999999999999999999"), 50, 100), Ok(100));
        assert_eq!(parse_limit(Some(" 0100 "), 50, 1000), Ok(100));
        for bad in ["0", "000", "-1", "+5", "abc", "", " ", "1.5", "1e3", "00000000000000000000000"] {
            assert_eq!(parse_limit(Some(bad), 50, 100).map_err(|e| e.status), Err(400), "{bad}");
        }
    }

    #[test]
    fn cursors() {
        assert_eq!(parse_seq("before", None), Ok(None));
        assert_eq!(parse_seq("before", Some("0")), Ok(Some(0)));
        assert_eq!(parse_seq("before", Some("12")), Ok(Some(12)));
        // Present but empty (`?since=`) is an error, never "absent".
        for bad in ["-1", "x", "1e3", "", " ", "null", "9007199254740992"] {
            assert!(parse_seq("before", Some(bad)).is_err(), "{bad}");
        }
    }
}
