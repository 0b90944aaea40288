//! Message content, validated the same way by every object that stores text (ChatRoom,
//! Channel): trimmed like JavaScript's `String.prototype.trim`, never empty, at most N
//! characters (Unicode scalar values, not bytes). Each protocol maps the two errors to its own
//! wire answer (docs/protocol.md §6.3, §6.5).

/// Why content was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentError {
    /// Nothing left after trimming.
    Empty,
    /// More than the protocol's maximum characters after trimming.
    TooLong,
}

/// Trim like JavaScript's `String.prototype.trim` (Unicode White_Space plus the BOM), so a
/// browser's `value.trim()` and the server agree on what is empty.
pub fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
}

/// The trimmed content, if it is non-empty and at most `max_chars` characters.
pub fn check(content: &str, max_chars: usize) -> Result<&str, ContentError> {
    let content = trim(content);
    if content.is_empty() {
        return Err(ContentError::Empty);
    }
    // Count at most one past the limit: a 64 KiB frame is never walked twice.
    if content.chars().take(max_chars.saturating_add(1)).count() > max_chars {
        return Err(ContentError::TooLong);
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_like_javascript() {
        assert_eq!(trim(" \t\n\u{feff}\u{a0}\u{2003}hi there\u{3000}\r\n"), "hi there");
        assert_eq!(trim("\u{200b}x"), "\u{200b}x", "zero-width space is not White_Space in JS either");
    }

    #[test]
    fn empty_and_too_long() {
        assert_eq!(check("   ", 10), Err(ContentError::Empty));
        assert_eq!(check("\u{feff}", 10), Err(ContentError::Empty));
        assert_eq!(check(" abc ", 3), Ok("abc"));
        assert_eq!(check("abcd", 3), Err(ContentError::TooLong));
        // Characters, not bytes: four 4-byte emoji fit in a limit of 4.
        assert_eq!(check("😀😀😀😀", 4), Ok("😀😀😀😀"));
        assert_eq!(check("😀😀😀😀😀", 4), Err(ContentError::TooLong));
    }
}
