//! The small shared validators: close reasons, content, client ids, names, timestamps and the
//! socket-accept limits never panic and agree with their one-line specifications.

use proptest::prelude::*;

use edge_realtime_core::{accept, content, error, frame, names, time};

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn close_reasons_are_clipped_at_a_char_boundary(reason in prop_oneof![any::<String>(), "[é😀x]{100,140}"]) {
        let clipped = error::clip_reason(&reason);
        prop_assert!(clipped.len() <= 123);
        prop_assert!(reason.starts_with(&clipped));
        if reason.len() <= 123 {
            prop_assert_eq!(&clipped, &reason);
        } else {
            // The longest prefix that fits: one more character would not.
            let next = reason[clipped.len()..].chars().next().map_or(0, char::len_utf8);
            prop_assert!(clipped.len() + next > 123);
        }
    }

    #[test]
    fn content_is_trimmed_and_counted_in_characters(s in prop_oneof![any::<String>(), "[ \u{a0}\u{feff}\u{3000}a-z]{0,30}"], max in 0usize..40) {
        let trimmed = content::trim(&s);
        let blank = |c: char| c.is_whitespace() || c == '\u{feff}';
        prop_assert!(trimmed.chars().next().is_none_or(|c| !blank(c)), "{:?}", trimmed);
        prop_assert!(trimmed.chars().last().is_none_or(|c| !blank(c)), "{:?}", trimmed);
        match content::check(&s, max) {
            Ok(c) => {
                prop_assert_eq!(c, trimmed);
                prop_assert!(!c.is_empty() && c.chars().count() <= max);
            }
            Err(content::ContentError::Empty) => prop_assert!(trimmed.is_empty()),
            Err(content::ContentError::TooLong) => prop_assert!(trimmed.chars().count() > max),
        }
    }

    #[test]
    fn client_ids_are_one_to_128_characters(id in prop_oneof![any::<String>(), "[é😀x]{120,135}"]) {
        let n = id.chars().count();
        prop_assert_eq!(frame::check_client_id(Some(&id)).is_ok(), (1..=128).contains(&n));
    }

    #[test]
    fn names_match_the_spec_pattern(s in prop_oneof![any::<String>(), "[A-Za-z0-9_.\\- /]{0,70}"]) {
        let spec = !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        prop_assert_eq!(names::is_valid_name(&s), spec);
    }

    #[test]
    fn timestamps_never_panic_and_round_trip(ms in prop_oneof![any::<i64>(), -62_000_000_000_000i64..250_000_000_000_000]) {
        let iso = time::iso8601(ms);
        prop_assert!(iso.ends_with('Z'));
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&iso) {
            if (0..=253_402_300_799_999).contains(&ms) {
                prop_assert_eq!(t.timestamp_millis(), ms);
            }
        }
    }

    #[test]
    fn retry_after_is_never_shorter_than_the_wait(ms in any::<i64>()) {
        let e = error::ApiError::too_many_requests("x", ms);
        let secs = e.retry_after_secs.unwrap_or(0);
        prop_assert!(secs >= 1);
        prop_assert!(i128::from(secs) * 1000 >= i128::from(ms));
    }

    #[test]
    fn accept_limits(tags in prop::collection::vec(".{0,260}", 0..12), bytes in 0usize..4096) {
        let ok = tags.len() <= accept::MAX_TAGS
            && tags.iter().all(|t| !t.is_empty() && t.chars().count() <= accept::MAX_TAG_LEN)
            && bytes <= accept::MAX_ATTACHMENT_BYTES;
        prop_assert_eq!(accept::check(&tags, bytes).is_ok(), ok);
    }
}
