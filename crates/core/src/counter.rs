//! Counter core (docs/protocol.md §6.2): given the counter's state, an operation and `now`, the new state,
//! the event to broadcast and the history row to store. The adapter runs it inside one
//! synchronous SQLite turn, so concurrent mutations are serialized and never lost.

use serde::Serialize;
use serde_json::Value;

use crate::effects::{Effects, To};
use crate::error::ApiError;
use crate::frame::Reject;
use crate::time::{iso8601, Millis};
use crate::MAX_SAFE_INTEGER;

crate::ops! {
    /// Counter's operations (`/ws/counter/:name`, `/api/counter/:name[/<op>]`).
    pub enum CounterApi {
        Socket = "ws" (websocket),
        Get = "get",
        History = "history",
        Increment = "increment",
        Decrement = "decrement",
        Set = "set",
        Reset = "reset",
    }
}

impl CounterApi {
    /// The mutation an HTTP op performs (`None`: a read).
    pub fn mutation(self) -> Option<OpKind> {
        match self {
            Self::Increment => Some(OpKind::Increment),
            Self::Decrement => Some(OpKind::Decrement),
            Self::Set => Some(OpKind::SetValue),
            Self::Reset => Some(OpKind::Reset),
            Self::Socket | Self::Get | Self::History => None,
        }
    }
}

/// The Counter object's tables (the kit adds `_schedule`).
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL, value INTEGER NOT NULL, \
     created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, operation_count INTEGER NOT NULL, seq INTEGER NOT NULL, \
     pruned_through INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS operations (seq INTEGER PRIMARY KEY, type TEXT NOT NULL, amount INTEGER, value INTEGER NOT NULL, \
     previous_value INTEGER NOT NULL, timestamp INTEGER NOT NULL, user_id TEXT NOT NULL, client_id TEXT)",
    "CREATE UNIQUE INDEX IF NOT EXISTS operations_client ON operations (user_id, client_id) WHERE client_id IS NOT NULL",
];
/// The history-pruning timer (set at most once a minute, only when there is something to prune).
pub const PRUNE_TIMER: &str = "prune";
pub const PRUNE_INTERVAL_MS: Millis = 60_000;
/// `COUNTER_MAX_HISTORY` when unset or invalid.
pub const DEFAULT_MAX_HISTORY: i64 = 10_000;

/// `COUNTER_MAX_HISTORY`: a positive integer, else the default.
pub fn parse_max_history(raw: Option<&str>) -> i64 {
    raw.and_then(|v| v.parse::<i64>().ok()).filter(|n| *n > 0).unwrap_or(DEFAULT_MAX_HISTORY)
}

/// The socket tag of an event type: a socket opened with `?ops=` carries one per type it wants.
pub fn op_tag(kind: OpKind) -> String {
    format!("op:{}", kind.as_str())
}

/// A counter created on first use: its row.
pub fn create(name: &str, now: Millis) -> (CounterState, Effects) {
    let fresh = CounterState::new(name, now);
    let effects = Effects::none().store(
        "INSERT INTO counter (id, name, value, created_at, updated_at, operation_count, seq, pruned_through) VALUES (1, ?, 0, ?, ?, 0, 0, 0)",
        vec![name.into(), fresh.created_at.into(), fresh.updated_at.into()],
    );
    (fresh, effects)
}

/// Apply `op` by `user_id` (with the client's dedup id) at `now`: the next state, the event
/// frame (exact JSON, built once) and its seq, and the effects — the state row and the history
/// row in one store, then the event to every socket subscribed to its type.
pub fn mutate(
    current: &CounterState,
    op: CounterOp,
    user_id: &str,
    client_id: Option<&str>,
    now: Millis,
) -> Result<(CounterState, String, i64, Effects), CounterError> {
    let (next, operation) = current.apply(op, now.max(current.updated_at))?;
    let event = next.event(&operation).to_string();
    let effects = Effects::none()
        .store(
            "UPDATE counter SET value = ?, updated_at = ?, operation_count = ?, seq = ? WHERE id = 1",
            vec![next.value.into(), next.updated_at.into(), next.operation_count.into(), next.seq.into()],
        )
        .store(
            "INSERT INTO operations (seq, type, amount, value, previous_value, timestamp, user_id, client_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                operation.seq.into(),
                operation.kind.as_str().into(),
                operation.amount.into(),
                operation.value.into(),
                operation.previous_value.into(),
                operation.timestamp.into(),
                user_id.into(),
                client_id.into(),
            ],
        )
        .send(To::Tag(op_tag(operation.kind)), event.clone());
    Ok((next, event, operation.seq, effects))
}

/// The prune step of the `prune` timer: delete history through `cutoff`.
pub fn prune(cutoff: i64) -> Effects {
    Effects::none()
        .store("DELETE FROM operations WHERE seq <= ?", vec![cutoff.into()])
        .store("UPDATE counter SET pruned_through = ? WHERE id = 1", vec![cutoff.into()])
}

/// The persisted state of one counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterState {
    pub name: String,
    pub value: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub operation_count: i64,
    /// Sequence of the last operation (0 before the first).
    pub seq: i64,
}

impl CounterState {
    pub fn new(name: &str, now: Millis) -> Self {
        Self { name: name.to_owned(), value: 0, created_at: now, updated_at: now, operation_count: 0, seq: 0 }
    }

    pub fn metadata(&self) -> Metadata {
        Metadata {
            name: self.name.clone(),
            value: self.value,
            created_at: iso8601(self.created_at),
            updated_at: iso8601(self.updated_at),
            operation_count: self.operation_count,
        }
    }

    /// `GET /api/counter/:name`
    pub fn view(&self) -> Value {
        serde_json::json!({"value": self.value, "metadata": self.metadata()})
    }

    /// The `snapshot` frame sent on connect.
    pub fn snapshot_frame(&self) -> String {
        serde_json::json!({"type": "snapshot", "value": self.value, "metadata": self.metadata(), "seq": self.seq})
            .to_string()
    }

    /// Apply `op` at `now`: the next state and the operation record, or why not (state unchanged).
    pub fn apply(&self, op: CounterOp, now: Millis) -> Result<(CounterState, Operation), CounterError> {
        let value = match op {
            CounterOp::Increment(n) => self.value.checked_add(n),
            CounterOp::Decrement(n) => self.value.checked_sub(n),
            CounterOp::SetValue(v) => Some(v),
            CounterOp::Reset => Some(0),
        }
        .filter(|v| (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(v))
        .ok_or(CounterError::Overflow)?;
        let next = CounterState {
            value,
            updated_at: now,
            operation_count: self.operation_count + 1,
            seq: self.seq + 1,
            ..self.clone()
        };
        let operation = Operation {
            seq: next.seq,
            kind: op.kind(),
            amount: op.amount(),
            value,
            previous_value: self.value,
            timestamp: now,
        };
        Ok((next, operation))
    }

    /// The event broadcast for `op`, with the metadata as of that operation.
    pub fn event(&self, op: &Operation) -> Value {
        serde_json::json!({
            "type": op.kind.as_str(),
            "value": op.value,
            "previousValue": op.previous_value,
            "metadata": Metadata {
                name: self.name.clone(),
                value: op.value,
                created_at: iso8601(self.created_at),
                updated_at: iso8601(op.timestamp),
                operation_count: op.seq,
            },
            "timestamp": iso8601(op.timestamp),
            "seq": op.seq,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    pub value: i64,
    pub created_at: String,
    pub updated_at: String,
    pub operation_count: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Increment,
    Decrement,
    SetValue,
    Reset,
}

impl OpKind {
    pub const ALL: [OpKind; 4] = [OpKind::Increment, OpKind::Decrement, OpKind::SetValue, OpKind::Reset];

    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Increment => "increment",
            OpKind::Decrement => "decrement",
            OpKind::SetValue => "setValue",
            OpKind::Reset => "reset",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterOp {
    Increment(i64),
    Decrement(i64),
    SetValue(i64),
    Reset,
}

impl CounterOp {
    pub fn kind(self) -> OpKind {
        match self {
            CounterOp::Increment(_) => OpKind::Increment,
            CounterOp::Decrement(_) => OpKind::Decrement,
            CounterOp::SetValue(_) => OpKind::SetValue,
            CounterOp::Reset => OpKind::Reset,
        }
    }
    fn amount(self) -> Option<i64> {
        match self {
            CounterOp::Increment(n) | CounterOp::Decrement(n) => Some(n),
            _ => None,
        }
    }
}

/// One row of the operation history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub seq: i64,
    pub kind: OpKind,
    pub amount: Option<i64>,
    pub value: i64,
    pub previous_value: i64,
    pub timestamp: Millis,
}

impl Operation {
    /// The history entry `{seq,type,amount?,value,previousValue,timestamp}`.
    pub fn history_entry(&self) -> Value {
        let mut v = serde_json::json!({
            "seq": self.seq,
            "type": self.kind.as_str(),
            "value": self.value,
            "previousValue": self.previous_value,
            "timestamp": iso8601(self.timestamp),
        });
        if let (Some(amount), Some(obj)) = (self.amount, v.as_object_mut()) {
            obj.insert("amount".into(), amount.into());
        }
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    #[error("the result would leave the safe integer range ±(2^53-1)")]
    Overflow,
    #[error("{0} must be an integer within ±(2^53-1)")]
    NotAnInteger(&'static str),
    #[error("{0} must be a number")]
    WrongType(&'static str),
    /// A number field sent as `null` — what `JSON.stringify` makes of `NaN` and `Infinity`: an
    /// invalid number (HTTP 422, in-band on a socket), never the default.
    #[error("{0} is null (NaN or Infinity?): send an integer, or leave the field out for the default")]
    Null(&'static str),
    #[error("body must be a JSON object")]
    BadBody,
    /// Storage failed (logged by the adapter); the client sees a masked internal error.
    #[error("internal error")]
    Storage,
}

impl CounterError {
    pub fn code(&self) -> &'static str {
        match self {
            CounterError::Overflow => "overflow",
            CounterError::NotAnInteger(_) | CounterError::Null(_) => "invalid_amount",
            CounterError::WrongType(_) | CounterError::BadBody => "invalid_body",
            CounterError::Storage => "internal_error",
        }
    }
    /// HTTP: wrong types are 400, well-formed but invalid values 422.
    pub fn to_api(&self) -> ApiError {
        match self {
            CounterError::WrongType(_) | CounterError::BadBody => {
                ApiError::bad_request(self.code(), self.to_string())
            }
            CounterError::Storage => ApiError::internal(),
            _ => ApiError::unprocessable(self.code(), self.to_string()),
        }
    }
    /// WebSocket: wrong types close 1007, invalid values answer in-band.
    pub fn to_reject(&self) -> Reject {
        match self {
            CounterError::WrongType(_) | CounterError::BadBody => {
                Reject::close(crate::error::close::INVALID_DATA, self.to_string())
            }
            CounterError::Storage => Reject::close(crate::error::close::INTERNAL, "internal error"),
            _ => Reject::in_band(self.code(), self.to_string()),
        }
    }
}

/// Read an integer field: absent → `default`; `null` → Null (present is never the default);
/// a non-number → WrongType; a fraction or out of range → NotAnInteger.
fn integer_field(obj: &serde_json::Map<String, Value>, field: &'static str, default: Option<i64>) -> Result<i64, CounterError> {
    match obj.get(field) {
        None => default.ok_or(CounterError::WrongType(field)),
        Some(Value::Null) => Err(CounterError::Null(field)),
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|v| (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(v))
            .ok_or(CounterError::NotAnInteger(field)),
        Some(_) => Err(CounterError::WrongType(field)),
    }
}

/// Parse an operation of `kind` from a JSON object (HTTP body or WS frame). An empty HTTP body
/// is passed as `None` (every field absent); a body that is JSON `null` is not an object.
pub fn parse_op(kind: OpKind, body: Option<&Value>) -> Result<CounterOp, CounterError> {
    let empty = serde_json::Map::new();
    let obj = match body {
        None => &empty,
        Some(Value::Object(o)) => o,
        Some(_) => return Err(CounterError::BadBody),
    };
    Ok(match kind {
        OpKind::Increment => CounterOp::Increment(integer_field(obj, "amount", Some(1))?),
        OpKind::Decrement => CounterOp::Decrement(integer_field(obj, "amount", Some(1))?),
        // `value`; a frame that names the new value `amount`, like the other mutations, is
        // read the same way (`value` wins when both are there).
        OpKind::SetValue if !obj.contains_key("value") && obj.contains_key("amount") => {
            CounterOp::SetValue(integer_field(obj, "amount", None)?)
        }
        OpKind::SetValue => CounterOp::SetValue(integer_field(obj, "value", None)?),
        OpKind::Reset => CounterOp::Reset,
    })
}

/// Parse `?ops=increment,reset` into the set of event types a socket receives. Absent → every
/// type; present but naming none (`?ops=`, what a client sends for an empty list) → 400, never
/// "every type".
pub fn parse_ops_filter(raw: Option<&str>) -> Result<Vec<OpKind>, ApiError> {
    let Some(raw) = raw else {
        return Ok(OpKind::ALL.to_vec());
    };
    if raw.split(',').all(|p| p.trim().is_empty()) {
        return Err(ApiError::bad_request("invalid_ops", "ops is empty: list at least one of increment, decrement, setValue, reset, or leave it out for all"));
    }
    let mut kinds = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let kind = OpKind::parse(part).ok_or_else(|| {
            ApiError::bad_request("invalid_ops", "ops must list increment, decrement, setValue or reset")
        })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

/// A WebSocket mutation frame's `type`.
pub const WS_TYPES: [&str; 4] = ["increment", "decrement", "setValue", "reset"];
/// What a Counter socket may send: the mutations, and a `ping` that is not byte-exact (it
/// misses the runtime's auto-response and reaches the object, which answers it the same way).
pub const CLIENT_TYPES: [&str; 5] = ["increment", "decrement", "setValue", "reset", "ping"];

/// A Counter socket's frame, decoded ([`ws_frame`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFrame {
    /// Answer `{"type":"pong"}`; nothing changes.
    Ping,
    Mutation { op: CounterOp, client_id: Option<String> },
}

/// Decode a Counter socket frame (docs/protocol.md §5 codes, then the op and its client id).
pub fn ws_frame(text: &str) -> Result<WsFrame, Reject> {
    let frame: Value = crate::frame::decode(text, &CLIENT_TYPES)?;
    let kind = frame.get("type").and_then(Value::as_str);
    if kind == Some("ping") {
        return Ok(WsFrame::Ping);
    }
    let kind = kind.and_then(OpKind::parse).ok_or_else(|| Reject::close(crate::error::close::POLICY, "unknown message type"))?;
    let client_id = client_id(&frame)?;
    let op = parse_op(kind, Some(&frame)).map_err(|e| e.to_reject())?;
    Ok(WsFrame::Mutation { op, client_id })
}

/// `{"type":"pong"}`
pub const PONG_FRAME: &str = r#"{"type":"pong"}"#;

/// The `ack` frame for a WebSocket mutation.
pub fn ack_frame(id: Option<&str>, seq: i64) -> String {
    serde_json::json!({"type": "ack", "id": id, "seq": seq}).to_string()
}

/// The client id of a WS mutation frame: absent, or a string (else 1007; `null` too).
pub fn client_id(frame: &Value) -> Result<Option<String>, Reject> {
    match frame.get("id") {
        None => Ok(None),
        Some(Value::String(s)) => {
            crate::frame::check_client_id(Some(s))?;
            Ok(Some(s.clone()))
        }
        Some(_) => Err(Reject::close(crate::error::close::INVALID_DATA, "id must be a string")),
    }
}

/// The client id of an HTTP mutation body: absent → none; a string of 1..=128 characters;
/// `null` or another type → 400 (docs/protocol.md §5 wrong type); an empty or longer string → 422.
pub fn http_client_id(body: &Value) -> Result<Option<String>, ApiError> {
    match body.get("id") {
        None => Ok(None),
        Some(Value::String(s)) => match crate::frame::check_client_id(Some(s)) {
            Ok(()) => Ok(Some(s.clone())),
            Err(_) => Err(ApiError::unprocessable("invalid_id", "id must be 1 to 128 characters")),
        },
        Some(Value::Null) => Err(ApiError::bad_request("invalid_id", "id is null: send a string, or leave it out")),
        Some(_) => Err(ApiError::bad_request("invalid_id", "id must be a string of 1 to 128 characters")),
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state() -> CounterState {
        CounterState::new("c", 1_000)
    }

    #[test]
    fn increments_and_sequences() {
        let s = state();
        let (s1, op1) = s.apply(CounterOp::Increment(5), 2_000).unwrap();
        assert_eq!((s1.value, s1.seq, s1.operation_count, s1.updated_at), (5, 1, 1, 2_000));
        assert_eq!((op1.previous_value, op1.value, op1.amount), (0, 5, Some(5)));
        let (s2, op2) = s1.apply(CounterOp::Decrement(7), 3_000).unwrap();
        assert_eq!((s2.value, op2.seq), (-2, 2));
        let (s3, op3) = s2.apply(CounterOp::SetValue(40), 4_000).unwrap();
        assert_eq!((s3.value, op3.amount), (40, None));
        let (s4, _) = s3.apply(CounterOp::Reset, 5_000).unwrap();
        assert_eq!((s4.value, s4.seq), (0, 4));
    }

    #[test]
    fn overflow_is_rejected_and_state_unchanged() {
        let s = CounterState { value: MAX_SAFE_INTEGER, ..state() };
        assert_eq!(s.apply(CounterOp::Increment(1), 1), Err(CounterError::Overflow));
        let s = CounterState { value: -MAX_SAFE_INTEGER, ..state() };
        assert_eq!(s.apply(CounterOp::Decrement(1), 1), Err(CounterError::Overflow));
        let s = CounterState { value: i64::MAX - 1, ..state() };
        assert_eq!(s.apply(CounterOp::Increment(5), 1), Err(CounterError::Overflow));
        assert!(state().apply(CounterOp::Increment(MAX_SAFE_INTEGER), 1).is_ok());
    }

    /// `i64::MIN.abs()` overflows (a panic in debug, `i64::MIN` itself in release, which then
    /// passed the range check): the range is checked without `abs`.
    #[test]
    fn i64_min_is_outside_the_safe_range() {
        assert_eq!(parse_op(OpKind::Increment, Some(&json!({"amount": i64::MIN}))), Err(CounterError::NotAnInteger("amount")));
        assert_eq!(parse_op(OpKind::SetValue, Some(&json!({"value": i64::MIN}))), Err(CounterError::NotAnInteger("value")));
        assert_eq!(state().apply(CounterOp::Increment(i64::MIN), 1), Err(CounterError::Overflow));
        assert_eq!(state().apply(CounterOp::SetValue(i64::MIN), 1), Err(CounterError::Overflow));
    }

    #[test]
    fn parse_amounts() {
        assert_eq!(parse_op(OpKind::Increment, Some(&json!({}))), Ok(CounterOp::Increment(1)));
        assert_eq!(parse_op(OpKind::Increment, None), Ok(CounterOp::Increment(1)));
        // A body that is JSON `null` is present and not an object: not "no body".
        assert_eq!(parse_op(OpKind::Increment, Some(&Value::Null)), Err(CounterError::BadBody));
        assert_eq!(parse_op(OpKind::Decrement, Some(&json!({"amount": 3}))), Ok(CounterOp::Decrement(3)));
        assert_eq!(parse_op(OpKind::Increment, Some(&json!({"amount": 1.5}))), Err(CounterError::NotAnInteger("amount")));
        assert_eq!(parse_op(OpKind::Increment, Some(&json!({"amount": 9007199254740992_i64}))), Err(CounterError::NotAnInteger("amount")));
        assert_eq!(parse_op(OpKind::Increment, Some(&json!({"amount": "3"}))), Err(CounterError::WrongType("amount")));
        assert_eq!(parse_op(OpKind::SetValue, Some(&json!({}))), Err(CounterError::WrongType("value")));
        assert_eq!(parse_op(OpKind::SetValue, Some(&json!({"value": -4}))), Ok(CounterOp::SetValue(-4)));
        assert_eq!(parse_op(OpKind::SetValue, Some(&json!({"amount": 7}))), Ok(CounterOp::SetValue(7)));
        assert_eq!(parse_op(OpKind::SetValue, Some(&json!({"value": 3, "amount": 7}))), Ok(CounterOp::SetValue(3)));
        assert_eq!(parse_op(OpKind::SetValue, Some(&json!({"amount": null}))), Err(CounterError::Null("amount")));
        assert_eq!(parse_op(OpKind::SetValue, Some(&json!({"amount": "7"}))), Err(CounterError::WrongType("amount")));
        assert_eq!(parse_op(OpKind::Reset, Some(&json!({"anything": 1}))), Ok(CounterOp::Reset));
        assert_eq!(parse_op(OpKind::Reset, Some(&json!([1]))), Err(CounterError::BadBody));
    }

    #[test]
    fn present_fields_are_never_the_default() {
        // `JSON.stringify({amount: NaN})` sends `{"amount":null}`: an error, not +1.
        for kind in [OpKind::Increment, OpKind::Decrement] {
            assert_eq!(parse_op(kind, Some(&json!({"amount": null}))), Err(CounterError::Null("amount")));
            assert_eq!(parse_op(kind, Some(&json!({"amount": true}))), Err(CounterError::WrongType("amount")));
            assert_eq!(parse_op(kind, Some(&json!({"amount": "2"}))), Err(CounterError::WrongType("amount")));
            assert_eq!(parse_op(kind, Some(&json!({"amount": [1]}))), Err(CounterError::WrongType("amount")));
            assert_eq!(parse_op(kind, Some(&json!({"amount": 1.5}))), Err(CounterError::NotAnInteger("amount")));
            assert_eq!(parse_op(kind, Some(&json!({"amount": 1.0}))), Err(CounterError::NotAnInteger("amount")));
            assert_eq!(parse_op(kind, Some(&json!({"amount": -9007199254740992_i64}))), Err(CounterError::NotAnInteger("amount")));
            assert_eq!(parse_op(kind, Some(&json!({"amount": 18446744073709551615_u64}))), Err(CounterError::NotAnInteger("amount")));
        }
        assert_eq!(parse_op(OpKind::SetValue, Some(&json!({"value": null}))), Err(CounterError::Null("value")));
        assert_eq!(parse_op(OpKind::SetValue, Some(&json!({"value": false}))), Err(CounterError::WrongType("value")));
        assert_eq!(parse_op(OpKind::Increment, Some(&json!({"amount": MAX_SAFE_INTEGER}))), Ok(CounterOp::Increment(MAX_SAFE_INTEGER)));
        // null is an invalid number (NaN, Infinity): HTTP 422, in-band on the socket.
        let null = CounterError::Null("amount");
        assert_eq!((null.to_api().status, null.to_api().code), (422, "invalid_amount"));
        assert!(matches!(null.to_reject(), Reject::InBand { code: "invalid_amount", .. }));
        assert!(null.to_string().contains("null"));
        // Non-integers are "valid JSON, invalid value": 422 / in-band.
        assert_eq!(CounterError::NotAnInteger("amount").to_api().status, 422);
        assert!(matches!(CounterError::NotAnInteger("amount").to_reject(), Reject::InBand { code: "invalid_amount", .. }));
    }

    #[test]
    fn error_mapping() {
        assert_eq!(CounterError::Overflow.to_api().status, 422);
        assert_eq!(CounterError::NotAnInteger("amount").to_api().status, 422);
        assert_eq!(CounterError::WrongType("amount").to_api().status, 400);
        assert!(matches!(CounterError::Overflow.to_reject(), Reject::InBand { .. }));
        assert!(matches!(CounterError::WrongType("x").to_reject(), Reject::Close { code: 1007, .. }));
    }

    #[test]
    fn event_shape() {
        let (s1, op) = state().apply(CounterOp::Increment(2), 2_000).unwrap();
        let ev = s1.event(&op);
        assert_eq!(
            ev,
            json!({
                "type": "increment", "value": 2, "previousValue": 0,
                "metadata": {"name": "c", "value": 2, "createdAt": "1970-01-01T00:00:01.000Z",
                             "updatedAt": "1970-01-01T00:00:02.000Z", "operationCount": 1},
                "timestamp": "1970-01-01T00:00:02.000Z", "seq": 1
            })
        );
        assert_eq!(op.history_entry()["amount"], json!(2));
        let (_, set) = s1.apply(CounterOp::SetValue(9), 3_000).unwrap();
        assert!(set.history_entry().get("amount").is_none());
    }

    #[test]
    fn ops_filter() {
        assert_eq!(parse_ops_filter(None).unwrap().len(), 4);
        assert_eq!(parse_ops_filter(Some("increment,reset,increment")).unwrap(), vec![OpKind::Increment, OpKind::Reset]);
        assert_eq!(parse_ops_filter(Some("bogus")).map_err(|e| e.status), Err(400));
        // Present but empty is not "all": an empty client list must not subscribe to everything.
        for empty in ["", " ", ",", " , "] {
            assert_eq!(parse_ops_filter(Some(empty)).map_err(|e| (e.status, e.code)), Err((400, "invalid_ops")), "{empty:?}");
        }
        assert_eq!(parse_ops_filter(Some("reset,,")).unwrap(), vec![OpKind::Reset]);
    }

    #[test]
    fn client_ids() {
        assert_eq!(client_id(&json!({"id": "a"})), Ok(Some("a".into())));
        assert_eq!(client_id(&json!({})), Ok(None));
        assert!(matches!(client_id(&json!({"id": null})), Err(Reject::Close { code: 1007, .. })));
        assert!(matches!(client_id(&json!({"id": 5})), Err(Reject::Close { code: 1007, .. })));
        assert!(matches!(client_id(&json!({"id": ""})), Err(Reject::InBand { .. })));
    }

    #[test]
    fn http_client_ids() {
        assert_eq!(http_client_id(&json!({"id": "a"})), Ok(Some("a".into())));
        assert_eq!(http_client_id(&json!({})), Ok(None));
        assert_eq!(http_client_id(&Value::Null), Ok(None));
        let status = |v: Value| http_client_id(&v).map_err(|e| (e.status, e.code));
        assert_eq!(status(json!({"id": null})), Err((400, "invalid_id")));
        assert_eq!(status(json!({"id": 5})), Err((400, "invalid_id")));
        assert_eq!(status(json!({"id": ""})), Err((422, "invalid_id")));
        assert_eq!(status(json!({"id": "x".repeat(129)})), Err((422, "invalid_id")));
    }

    #[test]
    fn mutate_stores_then_broadcasts_to_the_type_tag() {
        let state = CounterState::new("c", 1_000);
        let (next, event, seq, effects) = mutate(&state, CounterOp::Increment(2), "u1", Some("x"), 500).unwrap();
        assert_eq!((next.value, seq, next.updated_at), (2, 1, 1_000));
        assert_eq!(effects.store.len(), 2);
        assert_eq!(effects.frames_to(&To::Tag("op:increment".into())), vec![event.as_str()]);
        assert!(mutate(&next, CounterOp::SetValue(crate::MAX_SAFE_INTEGER), "u1", None, 2_000)
            .and_then(|(n, ..)| mutate(&n, CounterOp::Increment(1), "u1", None, 3_000))
            .is_err());
        assert_eq!(CounterApi::Set.mutation(), Some(OpKind::SetValue));
        assert_eq!(parse_max_history(Some("0")), DEFAULT_MAX_HISTORY);
        assert_eq!(parse_max_history(Some("5")), 5);
    }

    #[test]
    fn a_ping_that_missed_the_auto_response_is_answered_not_refused() {
        for ping in [r#"{"type": "ping"}"#, r#"{ "type":"ping" }"#, r#"{"type":"ping","t":1}"#] {
            assert_eq!(ws_frame(ping), Ok(WsFrame::Ping), "{ping}");
        }
        assert_eq!(
            ws_frame(r#"{"type": "increment", "id": "a"}"#),
            Ok(WsFrame::Mutation { op: CounterOp::Increment(1), client_id: Some("a".into()) })
        );
        let unknown = ws_frame(r#"{"type":"pong"}"#);
        assert!(matches!(unknown, Err(Reject::Close { code: crate::error::close::POLICY, .. })), "{unknown:?}");
    }
}
