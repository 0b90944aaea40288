//! Timestamps: the cores take `now` in milliseconds since the epoch and never read a clock.

use chrono::{DateTime, SecondsFormat};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// ISO-8601 / RFC 3339 with milliseconds, e.g. `2026-11-22T10:00:00.000Z` (what JS `toISOString` gives).
pub fn iso8601(ms: Millis) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_to_iso_string() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_763_800_000_123), "2025-11-22T08:26:40.123Z");
    }
}
