//! What a hibernatable WebSocket must satisfy before the runtime is asked to accept it.
//!
//! workerd throws on more than 10 tags, a tag over 256 characters, or an attachment over
//! 2 KiB. The kit checks all of that *before* anything is registered, then serializes the
//! attachment onto the server socket and only then calls `acceptWebSocket` — so a failure at
//! any step leaves no accepted socket behind without its state (see `src/kit/mod.rs`).

/// workerd limits: at most 10 tags per socket, each at most 256 characters.
pub const MAX_TAGS: usize = 10;
pub const MAX_TAG_LEN: usize = 256;
/// Attachments are kept under the runtime's 2 KiB limit (checked on their JSON encoding).
pub const MAX_ATTACHMENT_BYTES: usize = 2048;

/// Why a socket cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    #[error("a socket takes at most {MAX_TAGS} tags, got {0}")]
    TooManyTags(usize),
    #[error("tags must be 1 to {MAX_TAG_LEN} characters")]
    BadTag,
    #[error("connection state is {0} bytes, over the {MAX_ATTACHMENT_BYTES}-byte limit")]
    AttachmentTooLarge(usize),
}

impl AcceptError {
    /// Bad tags are our bug (500); oversized connection state comes from the request (400).
    pub fn to_api(&self) -> crate::error::ApiError {
        match self {
            AcceptError::AttachmentTooLarge(_) => {
                crate::error::ApiError::bad_request("attachment_too_large", "connection metadata too large")
            }
            _ => crate::error::ApiError::internal(),
        }
    }
}

/// Check `tags` and the encoded attachment length against the runtime's limits.
pub fn check(tags: &[String], attachment_bytes: usize) -> Result<(), AcceptError> {
    if tags.len() > MAX_TAGS {
        return Err(AcceptError::TooManyTags(tags.len()));
    }
    if tags.iter().any(|t| t.is_empty() || t.chars().count() > MAX_TAG_LEN) {
        return Err(AcceptError::BadTag);
    }
    if attachment_bytes > MAX_ATTACHMENT_BYTES {
        return Err(AcceptError::AttachmentTooLarge(attachment_bytes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i}")).collect()
    }

    #[test]
    fn limits_are_inclusive() {
        assert_eq!(check(&tags(MAX_TAGS), MAX_ATTACHMENT_BYTES), Ok(()));
        assert_eq!(check(&["é".repeat(MAX_TAG_LEN)], 0), Ok(()));
        assert_eq!(check(&tags(MAX_TAGS + 1), 0), Err(AcceptError::TooManyTags(11)));
        assert_eq!(check(&["x".repeat(MAX_TAG_LEN + 1)], 0), Err(AcceptError::BadTag));
        assert_eq!(check(&[String::new()], 0), Err(AcceptError::BadTag));
        assert_eq!(check(&[], MAX_ATTACHMENT_BYTES + 1), Err(AcceptError::AttachmentTooLarge(2049)));
    }

    #[test]
    fn errors_map_to_status() {
        assert_eq!(AcceptError::AttachmentTooLarge(3000).to_api().status, 400);
        assert_eq!(AcceptError::BadTag.to_api().status, 500);
        assert_eq!(AcceptError::TooManyTags(11).to_api().status, 500);
    }
}
