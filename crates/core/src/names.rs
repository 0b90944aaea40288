//! Name validation (docs/protocol.md §4): object names, user, device and game ids.

/// Longest accepted name.
pub const MAX_NAME_LEN: usize = 64;

/// `^[A-Za-z0-9_.-]{1,64}$`
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_spec_alphabet() {
        assert!(is_valid_name("a"));
        assert!(is_valid_name("Room_1.b-2"));
        assert!(is_valid_name(&"x".repeat(64)));
    }

    #[test]
    fn rejects_everything_else() {
        for bad in ["", "a b", "a/b", "ä", "a%20", "<script>", "a\0b"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        assert!(!is_valid_name(&"x".repeat(65)));
    }
}
