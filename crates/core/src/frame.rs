//! Decoding client frames (docs/protocol.md §5): size, JSON, known `type`, field types — in that order.
//!
//! Every DO protocol is a `#[serde(tag = "type")]` enum; [`decode`] maps each failure to the
//! close code docs/protocol.md §5 names, so no DO decides those codes itself.

use serde::de::DeserializeOwned;

use crate::error::{clip_reason, close};

/// Largest accepted text frame (64 KiB).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// What the adapter does with a frame that cannot be handled: close the socket with a code,
/// or answer in-band `{"type":"error"}` and keep it open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    Close { code: u16, reason: String },
    InBand { code: &'static str, message: String },
}

impl Reject {
    pub fn close(code: u16, reason: impl AsRef<str>) -> Self {
        Reject::Close { code, reason: clip_reason(reason.as_ref()) }
    }
    pub fn in_band(code: &'static str, message: impl Into<String>) -> Self {
        Reject::InBand { code, message: message.into() }
    }
    /// The in-band error frame, `{"type":"error","code","message"}`.
    pub fn error_frame(code: &str, message: &str) -> String {
        serde_json::json!({"type": "error", "code": code, "message": message}).to_string()
    }
}

/// Decode a text frame into the protocol enum `T`, whose `type` must be one of `known_types`.
///
/// The frame path: a JSON object whose `type` is a known string decodes straight from the text
/// (a probe that skips every other field, then the typed parse), with no `serde_json::Value`
/// tree in between. Anything else — and any frame the typed parse refuses — goes the reference
/// way ([`decode_reference`]), so every answer, error reasons included, is exactly its answer
/// (a property test compares the two on arbitrary frames).
pub fn decode<T: DeserializeOwned>(text: &str, known_types: &[&str]) -> Result<T, Reject> {
    // Only an object: serde would also read a struct or a tagged enum from a JSON array.
    if text.len() <= MAX_FRAME_BYTES && text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        if let Ok(TypeProbe { kind: Some(kind) }) = serde_json::from_str::<TypeProbe<'_>>(text) {
            if known_types.contains(&kind.as_ref()) {
                if let Ok(frame) = serde_json::from_str::<T>(text) {
                    return Ok(frame);
                }
            }
        }
    }
    decode_reference(text, known_types)
}

/// The `type` field of a frame, every other field skipped unread.
#[derive(serde::Deserialize)]
struct TypeProbe<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

/// [`decode`] the reference way: the whole frame as a `serde_json::Value`, each step of
/// docs/protocol.md §5 checked on it in order, then the typed conversion.
#[doc(hidden)]
pub fn decode_reference<T: DeserializeOwned>(text: &str, known_types: &[&str]) -> Result<T, Reject> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(Reject::close(close::TOO_BIG, "frame larger than 64 KiB"));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| Reject::close(close::INVALID_DATA, "frame is not valid JSON"))?;
    let Some(obj) = value.as_object() else {
        return Err(Reject::close(close::INVALID_DATA, "frame must be a JSON object"));
    };
    let kind = match obj.get("type") {
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(_) => return Err(Reject::close(close::INVALID_DATA, "\"type\" must be a string")),
        None => return Err(Reject::close(close::INVALID_DATA, "frame has no \"type\"")),
    };
    let Some(kind) = known_types.iter().copied().find(|k| *k == kind) else {
        return Err(Reject::close(close::POLICY, format!("unknown message type {kind:?}")));
    };
    // `kind` now borrows `known_types`, so the value can be consumed without a copy.
    serde_json::from_value(value).map_err(|e| Reject::close(close::INVALID_DATA, format!("bad {kind} frame: {e}")))
}

/// For an optional frame field, `#[serde(default, deserialize_with = "crate::frame::present")]`:
/// absent → `None` (the default), but a present field must have the field's type — `null`
/// is a wrong type (1007), never "absent". Plain `Option<T>` would read `null` as absent.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Binary frames are not part of any protocol.
pub fn binary_rejected() -> Reject {
    Reject::close(close::INVALID_DATA, "binary frames are not accepted")
}

/// Validate an optional client message id: 1..=128 characters.
pub fn check_client_id(id: Option<&str>) -> Result<(), Reject> {
    match id {
        Some(id) if id.is_empty() || id.chars().count() > 128 => {
            Err(Reject::in_band("invalid_id", "id must be 1 to 128 characters"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_path_refuses_what_the_reference_refuses() {
        #[derive(Debug, serde::Deserialize, PartialEq)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum F {
            Ping,
            Message { content: String },
        }
        let known = ["ping", "message"];
        for text in [
            r#"["ping"]"#,
            r#"["message","hi"]"#,
            r#" {"type":"ping"}"#,
            r#"{"type":"ping","type":"message"}"#,
            r#"{"type":null}"#,
            r#"{"type":"message","content":"a","content":"b"}"#,
            r#"{"type":"message"}"#,
            r#"{"type":"nope"}"#,
            r#"{"type":"m\u0065ssage","content":"x"}"#,
            "{\"type\":\"ping\"} trailing",
        ] {
            assert_eq!(format!("{:?}", decode::<F>(text, &known)), format!("{:?}", decode_reference::<F>(text, &known)), "{text}");
        }
        assert!(decode::<F>(r#"["ping"]"#, &known).is_err(), "an array is not a frame");
    }
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Msg {
        Hello { n: i64 },
        Bye,
        Tagged {
            #[serde(default, deserialize_with = "present")]
            id: Option<String>,
        },
    }
    const KNOWN: &[&str] = &["hello", "bye", "tagged"];

    fn code(r: Result<Msg, Reject>) -> u16 {
        match r {
            Err(Reject::Close { code, .. }) => code,
            other => panic!("expected close, got {other:?}"),
        }
    }

    #[test]
    fn decodes_known_types() {
        assert_eq!(decode::<Msg>(r#"{"type":"hello","n":3}"#, KNOWN), Ok(Msg::Hello { n: 3 }));
        assert_eq!(decode::<Msg>(r#"{"type":"bye","extra":1}"#, KNOWN), Ok(Msg::Bye));
    }

    #[test]
    fn maps_each_failure_to_its_close_code() {
        assert_eq!(code(decode(&"x".repeat(MAX_FRAME_BYTES + 1), KNOWN)), close::TOO_BIG);
        assert_eq!(code(decode("not json", KNOWN)), close::INVALID_DATA);
        assert_eq!(code(decode("[1,2]", KNOWN)), close::INVALID_DATA);
        assert_eq!(code(decode(r#"{"n":1}"#, KNOWN)), close::INVALID_DATA);
        assert_eq!(code(decode(r#"{"type":5}"#, KNOWN)), close::INVALID_DATA);
        assert_eq!(code(decode(r#"{"type":"nope"}"#, KNOWN)), close::POLICY);
        assert_eq!(code(decode(r#"{"type":"hello","n":"3"}"#, KNOWN)), close::INVALID_DATA);
        assert_eq!(code(decode(r#"{"type":"hello"}"#, KNOWN)), close::INVALID_DATA);
    }

    #[test]
    fn optional_fields_are_absent_or_typed_never_null() {
        assert_eq!(decode::<Msg>(r#"{"type":"tagged"}"#, KNOWN), Ok(Msg::Tagged { id: None }));
        assert_eq!(decode::<Msg>(r#"{"type":"tagged","id":"a"}"#, KNOWN), Ok(Msg::Tagged { id: Some("a".into()) }));
        assert_eq!(code(decode(r#"{"type":"tagged","id":null}"#, KNOWN)), close::INVALID_DATA);
        assert_eq!(code(decode(r#"{"type":"tagged","id":5}"#, KNOWN)), close::INVALID_DATA);
    }

    #[test]
    fn reasons_are_clipped() {
        let long_type = format!(r#"{{"type":"{}"}}"#, "é".repeat(500));
        match decode::<Msg>(&long_type, KNOWN) {
            Err(Reject::Close { reason, .. }) => assert!(reason.len() <= 123),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn client_ids() {
        assert!(check_client_id(None).is_ok());
        assert!(check_client_id(Some("abc")).is_ok());
        assert!(check_client_id(Some("")).is_err());
        assert!(check_client_id(Some(&"x".repeat(129))).is_err());
    }
}
