//! Shared strategies: arbitrary JSON, arbitrary text, "near-valid" frames, and the frame oracle.

use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{Map, Value};

use edge_realtime_core::frame::{Reject, MAX_FRAME_BYTES};

/// Every `type` any protocol knows, plus near misses (case, spacing).
pub const TYPES: &[&str] = &[
    "ping", "message", "typing", "presence_update", "join_game", "leave_game", "update_presence", "sync_state",
    "logout_all", "join", "leave", "move", "increment", "decrement", "setValue", "reset", "Ping", "PING", " ping",
    "set_value", "error", "",
];

/// Field names the protocols read (so random objects often hit a real field).
pub const FIELDS: &[&str] = &[
    "type", "content", "id", "isTyping", "channelId", "status", "presence", "gameId", "move", "amount", "value",
    "key", "limit", "window", "capacity", "refillRate", "tokens", "leakRate", "rate", "period", "burst", "userId",
    "name", "admin",
];

/// Strings that matter to the validators: boundaries of names (64), ids (128), chat content
/// (2000), channel content (4000), whitespace-only, the BOM, statuses and presences.
pub fn string() -> BoxedStrategy<String> {
    let special = select(vec![
        "", " ", "\t\n", "\u{feff}", "\u{a0}x\u{3000}", "online", "away", "busy", "offline", "Online", "alice", "bob",
        "a.b-c_1", "a b", "ä", "null", "1", "-1", "1e3", "0", "9007199254740991", "9007199254740992",
    ])
    .prop_map(str::to_owned);
    let sized = (select(vec![1usize, 63, 64, 65, 127, 128, 129, 1999, 2000, 2001, 3999, 4000, 4001]), select(vec!["x", "é", "😀", " "]))
        .prop_map(|(n, c)| c.repeat(n));
    prop_oneof![
        4 => any::<String>(),
        3 => special,
        2 => "[A-Za-z0-9_.-]{1,70}",
        1 => sized,
    ]
    .boxed()
}

/// Numbers around every boundary the cores check (±2^53, i64/u64 limits, fractions).
pub fn number() -> BoxedStrategy<Value> {
    const MAX_SAFE: i64 = edge_realtime_core::MAX_SAFE_INTEGER;
    prop_oneof![
        3 => (-5i64..=5).prop_map(Value::from),
        2 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => select(vec![MAX_SAFE, MAX_SAFE - 1, -MAX_SAFE, i64::MAX, i64::MIN, 1_000_000_000, 1_000_000_001]).prop_map(Value::from),
        1 => Just(Value::from(u64::MAX)),
        1 => Just(Value::from(9_007_199_254_740_992_i64)),
        2 => any::<f64>().prop_map(Value::from), // NaN and infinities become null
        1 => select(vec![0.5, 1.0, -1.0, 1.5, 1e-7, 1e300, 0.000001]).prop_map(Value::from),
    ]
    .boxed()
}

fn key() -> BoxedStrategy<String> {
    prop_oneof![3 => select(FIELDS.to_vec()).prop_map(str::to_owned), 1 => any::<String>()].boxed()
}

/// Any JSON value, nested up to 4 deep.
pub fn json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => number(),
        3 => string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A JSON object with a `type` (from [`TYPES`] or arbitrary) and random fields.
pub fn typed_object() -> BoxedStrategy<Value> {
    let kind = prop_oneof![4 => select(TYPES.to_vec()).prop_map(Value::from), 1 => json()];
    (kind, prop::collection::vec((key(), json()), 0..5))
        .prop_map(|(kind, fields)| {
            let mut obj: Map<String, Value> = fields.into_iter().collect();
            obj.insert("type".into(), kind);
            Value::Object(obj)
        })
        .boxed()
}

/// A valid frame with one change: a field replaced by arbitrary JSON, removed, added, or its
/// `type` replaced by another type name.
pub fn near_valid(valid: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    (valid, 0..4u8, any::<Index>(), key(), json(), select(TYPES.to_vec()))
        .prop_map(|(frame, how, which, new_key, junk, kind)| {
            let Value::Object(mut obj) = frame else { return frame };
            let keys: Vec<String> = obj.keys().cloned().collect();
            let field = if keys.is_empty() { None } else { Some(which.get(&keys).clone()) };
            match (how, field) {
                (0, Some(f)) => {
                    obj.insert(f, junk);
                }
                (1, Some(f)) => {
                    obj.remove(&f);
                }
                (2, _) => {
                    obj.insert(new_key, junk);
                }
                _ => {
                    obj.insert("type".into(), Value::from(kind));
                }
            }
            Value::Object(obj)
        })
        .boxed()
}

/// Text frames for a protocol whose valid frames `valid` generates: arbitrary strings, lossy
/// UTF-8 of arbitrary bytes, arbitrary JSON, typed objects, near-valid and valid frames, valid
/// frames cut short, and frames padded to just under or over 64 KiB.
pub fn frame_text(valid: BoxedStrategy<Value>) -> BoxedStrategy<String> {
    let cut = (valid.clone(), any::<Index>()).prop_map(|(v, at)| {
        let s = v.to_string();
        let mut end = at.index(s.len() + 1);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.get(..end).unwrap_or_default().to_owned()
    });
    let padded = (valid.clone(), -2i64..=2).prop_map(|(v, delta)| {
        let base = v.to_string();
        // `{"pad":"…",` + the rest of the frame: the total lands at MAX_FRAME_BYTES + delta.
        let overhead = base.len() + r#""pad":"","#.len();
        let n = usize::try_from((MAX_FRAME_BYTES as i64 - overhead as i64 + delta).max(0)).unwrap_or(0);
        format!("{{\"pad\":\"{}\",{}", "x".repeat(n), base.strip_prefix('{').unwrap_or(&base))
    });
    prop_oneof![
        2 => any::<String>(),
        2 => prop::collection::vec(any::<u8>(), 0..80).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        2 => json().prop_map(|v| v.to_string()),
        3 => typed_object().prop_map(|v| v.to_string()),
        6 => near_valid(valid.clone()).prop_map(|v| v.to_string()),
        3 => valid.prop_map(|v| v.to_string()),
        1 => cut,
        1 => padded,
    ]
    .boxed()
}

/// What `frame::decode` must answer for steps 1–4 of docs/protocol.md §5 (size, JSON, object,
/// `type` string, known type): `Some(close code)`, or `None` when the frame reaches the field
/// checks (step 5: Ok, or 1007).
pub fn pre_decode(text: &str, known: &[&str]) -> Option<u16> {
    if text.len() > MAX_FRAME_BYTES {
        return Some(1009);
    }
    let Ok(value) = serde_json::from_str::<Value>(text) else { return Some(1007) };
    let Some(obj) = value.as_object() else { return Some(1007) };
    match obj.get("type") {
        Some(Value::String(t)) if known.contains(&t.as_str()) => None,
        Some(Value::String(_)) => Some(1008),
        _ => Some(1007),
    }
}

/// A rejection is one of `closes` / `in_band` codes, with a reason workerd accepts.
pub fn check_reject(r: &Reject, closes: &[u16], in_band: &[&str]) -> Result<(), TestCaseError> {
    match r {
        Reject::Close { code, reason } => {
            prop_assert!(closes.contains(code), "close code {} not in {:?} ({})", code, closes, reason);
            prop_assert!(reason.len() <= 123, "close reason over 123 bytes");
        }
        Reject::InBand { code, .. } => prop_assert!(in_band.contains(code), "in-band code {} not in {:?}", code, in_band),
    }
    Ok(())
}

/// An in-band `{"type":"error","code"}` frame with one of `codes`.
pub fn check_error_frame(frame: &str, codes: &[&str]) -> Result<(), TestCaseError> {
    let v: Value = serde_json::from_str(frame).map_err(|e| TestCaseError::fail(format!("not JSON: {e}: {frame}")))?;
    prop_assert_eq!(v.get("type").and_then(Value::as_str), Some("error"), "{}", frame);
    let code = v.get("code").and_then(Value::as_str).unwrap_or_default();
    prop_assert!(codes.contains(&code), "error code {:?} not in {:?}", code, codes);
    prop_assert!(v.get("message").is_some_and(Value::is_string));
    Ok(())
}

/// The close code of a rejection, if it closes.
pub fn close_code(r: &Reject) -> Option<u16> {
    match r {
        Reject::Close { code, .. } => Some(*code),
        Reject::InBand { .. } => None,
    }
}

/// A non-decreasing virtual clock: start plus cumulative gaps (often 0, sometimes large).
pub fn clock(steps: usize, max_gap: i64) -> BoxedStrategy<Vec<i64>> {
    let gap = prop_oneof![3 => Just(0i64), 4 => 0..=max_gap, 1 => 0..=max_gap * 10];
    (0i64..1_000_000, prop::collection::vec(gap, steps))
        .prop_map(|(start, gaps)| {
            let t0 = 1_763_800_000_000 + start;
            gaps.iter()
                .scan(t0, |t, g| {
                    *t += g;
                    Some(*t)
                })
                .collect()
        })
        .boxed()
}
