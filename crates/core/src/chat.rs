//! ChatRoom core (docs/protocol.md §6.3): validation, per-connection rate limiting, sequencing, join/leave,
//! history pages and the pruning decision. No I/O: the adapter passes `now` and server ids in.
//!
//! What the adapter keeps:
//! - a [`ChatConn`] per socket as its attachment (identity + rate-limit window, survives hibernation);
//! - a [`ChatLog`] (`latest_seq`, `pruned_through`) in a meta row, so seqs are never reused even
//!   after every old row is pruned;
//! - one row per [`ChatMessage`], e.g.
//!   `messages(seq INTEGER PRIMARY KEY, id TEXT, client_id TEXT, kind TEXT, user_id TEXT,
//!   user_name TEXT, content TEXT, timestamp INTEGER)` with a unique index on
//!   `(user_id, client_id)`; selecting those columns deserializes straight into [`ChatMessage`].
//!
//! Per event:
//! - connect: [`ChatConn::new`] → replay per [`ChatLog::replay`] → [`ChatLog::join`] (store +
//!   broadcast if `Some`) → broadcast [`user_count_frame`].
//! - message: [`on_message`] → on [`Inbound::Post`] look up `(user_id, client_id)`: found → send
//!   [`duplicate_frame`] to the sender only; else [`ChatLog::post`], store, broadcast
//!   [`message_frame`], [`ChatLog::schedule_prune`]. Write the attachment back (it may have changed).
//!   A binary frame is `Inbound::from(frame::binary_rejected())` (close 1007).
//! - close/error: [`ChatLog::leave`] (store + broadcast if `Some`) → broadcast [`user_count_frame`].
//! - alarm: timer [`PRUNE_TIMER`] due → [`ChatLog::prune`] → `DELETE … WHERE seq <= cutoff`.
//!
//! Decisions docs/protocol.md leaves open (see the items for details): the count is *distinct users*, and
//! join/leave messages mark a user's first/last socket; characters are Unicode scalar values;
//! the third over-limit message in a row closes with 1008; a repeated client id gets the original
//! `message` frame back, to the sender only.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{close, ApiError};
use crate::frame::{self, Reject};
use crate::names::is_valid_name;
use crate::query::{parse_limit, parse_seq};
use crate::replay::{self, Replay};
use crate::content::ContentError;
use crate::schedule::Schedule;
use crate::time::{iso8601, Millis};
use crate::MAX_SAFE_INTEGER;

/// Longest message content, in characters (Unicode scalar values) after trimming.
pub const MAX_CONTENT_CHARS: usize = 2000;
/// Longest display name kept; longer names are clipped so the attachment stays small.
pub const MAX_USER_NAME_CHARS: usize = 64;
/// Over-limit messages in a row (no accepted message between) that close the socket with 1008.
pub const MAX_RATE_VIOLATIONS: u32 = 3;
/// Pruning runs from the alarm at most this often, never per message (docs/protocol.md §6.3). The default
/// of [`ChatConfig::prune_interval_ms`]; var `CHAT_PRUNE_INTERVAL_MS` lowers it only so the
/// e2e suite can watch a prune happen without waiting a minute.
pub const PRUNE_INTERVAL_MS: Millis = 60_000;
crate::ops! {
    /// ChatRoom's operations (`/api/chat[/:room]`, `/api/chat[/:room]/messages`).
    pub enum ChatOp {
        Socket = "ws" (websocket),
        Messages = "messages",
    }
}

/// The ChatRoom object's tables (the kit adds `_schedule`).
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS room (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL, \
     latest_seq INTEGER NOT NULL, pruned_through INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, client_id TEXT, kind TEXT NOT NULL, \
     user_id TEXT NOT NULL, user_name TEXT NOT NULL, content TEXT NOT NULL, timestamp INTEGER NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS messages_client ON messages (user_id, client_id) WHERE client_id IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS members (user_id TEXT PRIMARY KEY, user_name TEXT NOT NULL)",
];

/// Written with a user's "joined" (their first socket), deleted with their "left" (their last):
/// who the room last announced as present, so a wake can announce the users whose sockets a
/// crash or deploy dropped without close events ([`ChatLog::reconcile`]).
pub const MEMBER_JOINED: &str = "INSERT OR REPLACE INTO members (user_id, user_name) VALUES (?, ?)";
pub const MEMBER_LEFT: &str = "DELETE FROM members WHERE user_id = ?";

/// The [`Schedule`] timer that prunes history.
pub const PRUNE_TIMER: &str = "prune";
/// History page size when `limit` is absent, and its maximum (larger values are clamped).
pub const HISTORY_DEFAULT_LIMIT: u32 = 50;
pub const HISTORY_MAX_LIMIT: u32 = 100;
/// The `type`s a client may send. A `ping` that isn't byte-exact `{"type":"ping"}` misses the
/// runtime's auto-response and reaches us; it is answered the same way.
pub const CLIENT_TYPES: [&str; 2] = ["message", "ping"];

/// Room settings from Worker vars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatConfig {
    /// Messages each connection may send per window.
    pub rate_limit_messages: u32,
    pub rate_limit_window_ms: Millis,
    /// History rows kept; older ones are pruned.
    pub max_messages: i64,
    /// Least time between two prunes (the prune alarm is armed this far ahead).
    pub prune_interval_ms: Millis,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self { rate_limit_messages: 20, rate_limit_window_ms: 5_000, max_messages: 1_000, prune_interval_ms: PRUNE_INTERVAL_MS }
    }
}

impl ChatConfig {
    /// Read `CHAT_RATE_LIMIT_MESSAGES`, `CHAT_RATE_LIMIT_WINDOW_MS`, `CHAT_MAX_MESSAGES` and
    /// `CHAT_PRUNE_INTERVAL_MS`.
    /// Each must be a positive integer (surrounding spaces allowed; at most 2^53−1, or u32 for
    /// the message count); anything else — absent, zero, negative, fractional, garbage — falls
    /// back to that field's default, so a typo in config can't disable the limits.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        let d = Self::default();
        let positive = |name: &str| -> Option<i64> {
            get(name)?.trim().parse::<i64>().ok().filter(|n| (1..=MAX_SAFE_INTEGER).contains(n))
        };
        Self {
            rate_limit_messages: positive("CHAT_RATE_LIMIT_MESSAGES")
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(d.rate_limit_messages),
            rate_limit_window_ms: positive("CHAT_RATE_LIMIT_WINDOW_MS").unwrap_or(d.rate_limit_window_ms),
            max_messages: positive("CHAT_MAX_MESSAGES").unwrap_or(d.max_messages),
            prune_interval_ms: positive("CHAT_PRUNE_INTERVAL_MS").unwrap_or(d.prune_interval_ms),
        }
    }
}

/// Per-socket state, kept as the socket's attachment so it survives hibernation.
/// Bounded: a valid user id (≤ 64 ASCII) and a name clipped to 64 chars keep it far under 2 KiB.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatConn {
    pub user_id: String,
    pub user_name: String,
    /// Start of the current rate-limit window (meaningful only while `window_count > 0`).
    pub window_start: Millis,
    /// Messages accepted in the current window.
    pub window_count: u32,
    /// Over-limit messages since the last accepted one.
    pub violations: u32,
}

impl ChatConn {
    /// Identity from the headers the entry Worker set after auth (`X-User-Id`, `X-User-Name`).
    /// A blank name falls back to the user id; a long one is clipped. A missing or malformed
    /// id means the request did not come through the Worker: 401, before accepting the socket.
    pub fn new(user_id: Option<&str>, user_name: Option<&str>) -> Result<Self, ApiError> {
        let user_id = user_id
            .filter(|id| is_valid_name(id))
            .ok_or_else(|| ApiError::unauthorized("unauthenticated", "missing or invalid user identity"))?;
        let name = user_name.map(crate::content::trim).filter(|n| !n.is_empty()).unwrap_or(user_id);
        Ok(Self {
            user_id: user_id.to_owned(),
            user_name: name.chars().take(MAX_USER_NAME_CHARS).collect(),
            window_start: 0,
            window_count: 0,
            violations: 0,
        })
    }

    /// Count one message against the window: `Ok` if it may be posted, else how long to wait
    /// (`Err(Some(ms))`) or that the client keeps going and must be closed (`Err(None)`).
    /// Fixed window per connection, starting at the first message after the previous one ended.
    fn admit(&mut self, cfg: &ChatConfig, now: Millis) -> Result<(), Option<Millis>> {
        let elapsed = now.saturating_sub(self.window_start);
        // A clock that went backwards starts a fresh window rather than locking the client out.
        if self.window_count == 0 || elapsed >= cfg.rate_limit_window_ms || elapsed < 0 {
            self.window_start = now;
            self.window_count = 0;
        }
        if self.window_count < cfg.rate_limit_messages {
            self.window_count += 1;
            self.violations = 0;
            return Ok(());
        }
        self.violations = self.violations.saturating_add(1);
        if self.violations >= MAX_RATE_VIOLATIONS {
            return Err(None);
        }
        let retry = self.window_start.saturating_add(cfg.rate_limit_window_ms).saturating_sub(now);
        Err(Some(retry.clamp(1, MAX_SAFE_INTEGER)))
    }
}

/// A frame from a chat client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Message {
        content: String,
        /// Absent → the server picks one; `null` or a non-string → 1007.
        #[serde(default, deserialize_with = "crate::frame::present")]
        id: Option<String>,
    },
    Ping,
}

/// A validated, rate-admitted message for the adapter to dedup, sequence, store and broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    /// Trimmed, 1..=2000 chars.
    pub content: String,
    /// The client's id, scoped to the sender: look up `(user_id, client_id)` before storing.
    pub client_id: Option<String>,
}

/// What to do with one text frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Send this frame to the sender only; the socket stays open (pong, in-band errors,
    /// `rate_limited`).
    Reply(String),
    /// Close the socket with `code` and `reason` (already clipped to 123 bytes).
    Close { code: u16, reason: String },
    /// Store and broadcast (after the duplicate check).
    Post(Post),
}

impl From<Reject> for Inbound {
    fn from(r: Reject) -> Self {
        match r {
            Reject::Close { code, reason } => Inbound::Close { code, reason },
            Reject::InBand { code, message } => Inbound::Reply(Reject::error_frame(code, &message)),
        }
    }
}

/// Handle one text frame from `conn`'s socket at `now`.
///
/// Order: frame checks (64 KiB → 1009, JSON/types → 1007, unknown type → 1008), content over
/// 2000 chars → 1009, empty content → in-band `invalid_content`, bad id → in-band `invalid_id`,
/// then the rate limit. Only a frame that passes every check counts against the window, so
/// `conn` changes only on [`Inbound::Post`] or a rate-limit answer.
pub fn on_message(conn: &mut ChatConn, cfg: &ChatConfig, text: &str, now: Millis) -> Inbound {
    let (content, client_id) = match frame::decode::<ClientFrame>(text, &CLIENT_TYPES) {
        Err(reject) => return reject.into(),
        Ok(ClientFrame::Ping) => return Inbound::Reply(pong_frame()),
        Ok(ClientFrame::Message { content, id }) => (content, id),
    };
    let content = match crate::content::check(&content, MAX_CONTENT_CHARS) {
        Ok(content) => content,
        Err(ContentError::TooLong) => return Reject::close(close::TOO_BIG, "message content over 2000 characters").into(),
        Err(ContentError::Empty) => return Reject::in_band("invalid_content", "content must not be empty").into(),
    };
    if let Err(reject) = frame::check_client_id(client_id.as_deref()) {
        return reject.into();
    }
    match conn.admit(cfg, now) {
        Ok(()) => Inbound::Post(Post { content: content.to_owned(), client_id }),
        Err(Some(retry_after_ms)) => Inbound::Reply(rate_limited_frame(cfg, retry_after_ms)),
        Err(None) => Reject::close(close::POLICY, "rate limit exceeded repeatedly").into(),
    }
}

/// `{"type":"pong"}`
pub fn pong_frame() -> String {
    serde_json::json!({"type": "pong"}).to_string()
}

/// `{"type":"error","code":"rate_limited","message":…,"retryAfterMs":n}`
pub fn rate_limited_frame(cfg: &ChatConfig, retry_after_ms: Millis) -> String {
    serde_json::json!({
        "type": "error",
        "code": "rate_limited",
        "message": format!(
            "too many messages: at most {} per {} ms",
            cfg.rate_limit_messages, cfg.rate_limit_window_ms
        ),
        "retryAfterMs": retry_after_ms,
    })
    .to_string()
}

/// `{"type":"userCount","count":n}`, broadcast after every socket join and leave.
/// `n` is the number of distinct users connected (a user with three tabs counts once).
pub fn user_count_frame(distinct_users: usize) -> String {
    serde_json::json!({"type": "userCount", "count": distinct_users}).to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    User,
    System,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::User => "user",
            MessageKind::System => "system",
        }
    }
}

/// One persisted chat message. Field names match the storage columns, so a row selected with
/// these columns deserializes into it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChatMessage {
    pub seq: i64,
    /// The client's id if it sent one, else the server id the adapter passed in.
    pub id: String,
    /// The client's id again, for the `(user_id, client_id)` duplicate lookup; `None` for
    /// server-id messages, so they never collide with a client's ids.
    #[serde(default)]
    pub client_id: Option<String>,
    pub kind: MessageKind,
    pub user_id: String,
    pub user_name: String,
    pub content: String,
    pub timestamp: Millis,
}

/// The wire object of a message, borrowed (no `serde_json::Value` on the broadcast path). The
/// fields are in the sorted order a `serde_json` map writes them, so the bytes are exactly what
/// the frames always were.
#[derive(Serialize)]
struct WireMessage<'a> {
    content: &'a str,
    id: &'a str,
    kind: &'a str,
    seq: i64,
    timestamp: String,
    #[serde(rename = "userId")]
    user_id: &'a str,
    #[serde(rename = "userName")]
    user_name: &'a str,
}

impl ChatMessage {
    /// The wire object `{"id","seq","kind","userId","userName","content","timestamp"}` (history
    /// entries are exactly this; live frames wrap it).
    fn wire(&self) -> WireMessage<'_> {
        WireMessage {
            content: &self.content,
            id: &self.id,
            kind: self.kind.as_str(),
            seq: self.seq,
            timestamp: iso8601(self.timestamp),
            user_id: &self.user_id,
            user_name: &self.user_name,
        }
    }

    /// [`Self::wire`] as a JSON value (tests compare against it).
    pub fn to_wire(&self) -> Value {
        serde_json::to_value(self.wire()).unwrap_or(Value::Null)
    }
}

/// `{"type":"message","message":{…}}`: the broadcast of a new message and each replayed one.
pub fn message_frame(message: &ChatMessage) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        message: WireMessage<'a>,
        #[serde(rename = "type")]
        kind: &'static str,
    }
    serde_json::to_string(&Frame { message: message.wire(), kind: "message" }).unwrap_or_default()
}

/// The answer to a client id this user already used in this room: the original message's
/// `message` frame, unchanged (same id, seq and timestamp), sent to the sender only. A client
/// that retries after a lost echo thus sees exactly the echo it missed; nothing is stored.
pub fn duplicate_frame(original: &ChatMessage) -> String {
    message_frame(original)
}

/// The room's sequence state, kept in storage (a meta row) next to the messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChatLog {
    /// Highest seq ever assigned (0 before the first message). Never decreases, even when
    /// pruning empties the table, so seqs are never reused.
    pub latest_seq: i64,
    /// Highest seq deleted by pruning (0 if none).
    pub pruned_through: i64,
}

impl ChatLog {
    /// Saturates at 2^53−1 (≈285 years at a million messages a second) so it stays JS-safe.
    fn next_seq(&mut self) -> i64 {
        self.latest_seq = self.latest_seq.saturating_add(1).min(MAX_SAFE_INTEGER);
        self.latest_seq
    }

    /// Sequence a new (non-duplicate) user message. Store the returned row and the new
    /// `latest_seq` in the same turn, then broadcast [`message_frame`].
    pub fn post(&mut self, conn: &ChatConn, post: Post, server_id: String, now: Millis) -> ChatMessage {
        ChatMessage {
            seq: self.next_seq(),
            id: post.client_id.clone().unwrap_or(server_id),
            client_id: post.client_id,
            kind: MessageKind::User,
            user_id: conn.user_id.clone(),
            user_name: conn.user_name.clone(),
            content: post.content,
            timestamp: now,
        }
    }

    /// The `"<name> joined"` system message, only for the user's first socket (a second tab
    /// is not a new arrival). `other_sockets_of_user` excludes the socket just accepted.
    pub fn join(&mut self, conn: &ChatConn, other_sockets_of_user: usize, server_id: String, now: Millis) -> Option<ChatMessage> {
        (other_sockets_of_user == 0).then(|| self.system(conn, "joined", server_id, now))
    }

    /// The `"<name> left"` system message, only when the user's last socket goes.
    /// `other_sockets_of_user` excludes the socket closing (the runtime may still list it).
    pub fn leave(&mut self, conn: &ChatConn, other_sockets_of_user: usize, server_id: String, now: Millis) -> Option<ChatMessage> {
        (other_sockets_of_user == 0).then(|| self.system(conn, "left", server_id, now))
    }

    fn system(&mut self, conn: &ChatConn, verb: &str, server_id: String, now: Millis) -> ChatMessage {
        ChatMessage {
            seq: self.next_seq(),
            id: server_id,
            client_id: None,
            kind: MessageKind::System,
            user_id: conn.user_id.clone(),
            user_name: conn.user_name.clone(),
            content: format!("{} {verb}", conn.user_name),
            timestamp: now,
        }
    }

    /// On wake: `"<name> left"` for every announced member (`(user id, name)`, as
    /// [`MEMBER_JOINED`] stored them, one row per user) with no live socket, in the order given.
    /// Presence never lies: a crash or a deploy drops sockets without close events, and the
    /// room says so once.
    pub fn reconcile(
        &mut self,
        members: &[(String, String)],
        live: &std::collections::BTreeSet<String>,
        mut server_id: impl FnMut() -> String,
        now: Millis,
    ) -> Vec<ChatMessage> {
        members
            .iter()
            .filter(|(id, _)| !live.contains(id))
            .map(|(user_id, user_name)| {
                let conn = ChatConn { user_id: user_id.clone(), user_name: user_name.clone(), window_start: 0, window_count: 0, violations: 0 };
                self.system(&conn, "left", server_id(), now)
            })
            .collect()
    }

    /// What a socket connecting with `?since=` gets before live traffic (docs/protocol.md §6).
    pub fn replay(&self, since: Option<i64>) -> Replay {
        replay::plan(since, self.latest_seq, self.pruned_through)
    }

    /// After storing a message: make sure a prune is pending if history is over the limit.
    /// Never moves a pending prune later, and a prune is only armed after the previous one ran,
    /// so prunes are at least `cfg.prune_interval_ms` apart. Sync the alarm afterwards.
    pub fn schedule_prune(&self, cfg: &ChatConfig, schedule: &mut Schedule, now: Millis) {
        if replay::prune_through(self.latest_seq, self.pruned_through, cfg.max_messages).is_some() {
            schedule.set_if_later_absent(PRUNE_TIMER, now.saturating_add(cfg.prune_interval_ms));
        }
    }

    /// When [`PRUNE_TIMER`] fires: the seq through which to delete (`DELETE FROM messages
    /// WHERE seq <= ?`), with `pruned_through` advanced to it; store both in the same turn.
    pub fn prune(&mut self, cfg: &ChatConfig) -> Option<i64> {
        let cutoff = replay::prune_through(self.latest_seq, self.pruned_through, cfg.max_messages)?;
        self.pruned_through = cutoff;
        Some(cutoff)
    }
}

/// `GET …/messages?limit=&before=`, parsed. Fetch with
/// `SELECT … WHERE seq < ?before ORDER BY seq DESC LIMIT ?fetch_limit`, then [`history_body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Exclusive upper bound on `seq` (2^53−1 when absent: newer than any seq).
    pub before: i64,
    /// Page size the client gets.
    pub limit: u32,
    /// Rows to fetch: one more than `limit`, to know whether another page exists.
    pub fetch_limit: u32,
}

impl HistoryQuery {
    /// `limit` defaults to 50 and is clamped to 100; 0, negatives and garbage are 400, as is
    /// a `before` that is not a non-negative integer.
    pub fn parse(limit: Option<&str>, before: Option<&str>) -> Result<Self, ApiError> {
        let limit = parse_limit(limit, HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT)?;
        let before = parse_seq("before", before)?.unwrap_or(MAX_SAFE_INTEGER);
        Ok(Self { before, limit, fetch_limit: limit.saturating_add(1) })
    }
}

/// `{"messages":[…],"nextBefore":n|null}`, newest first. `rows` are the up-to-`limit + 1` rows
/// fetched newest first; `nextBefore` is the oldest seq shown when more exist.
pub fn history_body(rows: Vec<ChatMessage>, limit: u32) -> String {
    let page = replay::page(rows, limit, |m| m.seq);
    #[derive(Serialize)]
    struct Body<'a> {
        messages: Vec<WireMessage<'a>>,
        #[serde(rename = "nextBefore")]
        next_before: Option<i64>,
    }
    let body = Body { messages: page.items.iter().map(ChatMessage::wire).collect(), next_before: page.next };
    serde_json::to_string(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The frames as they were built before the typed wire struct (a `serde_json` map).
    fn old_wire(m: &ChatMessage) -> Value {
        json!({
            "id": m.id, "seq": m.seq, "kind": m.kind.as_str(), "userId": m.user_id,
            "userName": m.user_name, "content": m.content, "timestamp": iso8601(m.timestamp),
        })
    }

    #[test]
    fn typed_frames_are_byte_for_byte_the_map_frames() {
        let contents = ["hi", "quote \" and \\ backslash", "tab\tnew\nline \u{1}", "héllo 👋🏽 \u{2028}", "</script>"];
        for (i, content) in contents.iter().enumerate() {
            let m = ChatMessage {
                seq: i as i64 + 1,
                id: format!("id-{i}"),
                client_id: None,
                kind: if i % 2 == 0 { MessageKind::User } else { MessageKind::System },
                user_id: "ü-ser".into(),
                user_name: "Zoë \"Z\"".into(),
                content: (*content).into(),
                timestamp: T0 + i as i64,
            };
            assert_eq!(message_frame(&m), json!({"type": "message", "message": old_wire(&m)}).to_string());
            assert_eq!(m.to_wire(), old_wire(&m));
            let rows = vec![m.clone(), m.clone()];
            let old = json!({"messages": [old_wire(&m)], "nextBefore": m.seq}).to_string();
            assert_eq!(history_body(rows, 1), old);
        }
    }

    const T0: Millis = 1_763_800_000_000;

    fn cfg() -> ChatConfig {
        ChatConfig::default()
    }

    fn alice() -> ChatConn {
        ChatConn::new(Some("alice"), Some("Alice")).unwrap()
    }

    fn msg(content: &str) -> String {
        json!({"type": "message", "content": content}).to_string()
    }

    fn post(content: &str, client_id: Option<&str>) -> Inbound {
        Inbound::Post(Post { content: content.into(), client_id: client_id.map(Into::into) })
    }

    fn json_of(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    /// The JSON of a `Reply`, or the close code of a `Close`.
    fn reply(i: &Inbound) -> Value {
        match i {
            Inbound::Reply(f) => json_of(f),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn close_code(i: &Inbound) -> u16 {
        match i {
            Inbound::Close { code, .. } => *code,
            other => panic!("expected a close, got {other:?}"),
        }
    }

    // --- config ---

    #[test]
    fn config_defaults_and_vars() {
        assert_eq!(ChatConfig::from_vars(|_| None), ChatConfig::default());
        assert_eq!(
            ChatConfig::default(),
            ChatConfig { rate_limit_messages: 20, rate_limit_window_ms: 5_000, max_messages: 1_000, prune_interval_ms: 60_000 }
        );
        let c = ChatConfig::from_vars(|k| {
            match k {
                "CHAT_RATE_LIMIT_MESSAGES" => Some(" 3 "),
                "CHAT_RATE_LIMIT_WINDOW_MS" => Some("1000"),
                "CHAT_MAX_MESSAGES" => Some("10"),
                "CHAT_PRUNE_INTERVAL_MS" => Some("2000"),
                _ => None,
            }
            .map(String::from)
        });
        assert_eq!(
            c,
            ChatConfig { rate_limit_messages: 3, rate_limit_window_ms: 1_000, max_messages: 10, prune_interval_ms: 2_000 }
        );
    }

    #[test]
    fn bad_config_values_fall_back_per_field() {
        for bad in ["0", "-1", "1.5", "abc", "", "9007199254740992", "99999999999999999999"] {
            let c = ChatConfig::from_vars(|_| Some(bad.to_owned()));
            assert_eq!(c, ChatConfig::default(), "{bad:?}");
        }
        // over u32 for the count only
        let c = ChatConfig::from_vars(|_| Some("4294967296".to_owned()));
        assert_eq!(c.rate_limit_messages, 20);
        assert_eq!(c.rate_limit_window_ms, 4_294_967_296);
        // one bad field does not spoil the others
        let c = ChatConfig::from_vars(|k| Some(if k == "CHAT_MAX_MESSAGES" { "x" } else { "7" }.to_owned()));
        assert_eq!(
            c,
            ChatConfig { rate_limit_messages: 7, rate_limit_window_ms: 7, max_messages: 1_000, prune_interval_ms: 7 }
        );
    }

    // --- connection / attachment ---

    #[test]
    fn conn_identity() {
        let c = alice();
        assert_eq!((c.user_id.as_str(), c.user_name.as_str()), ("alice", "Alice"));
        assert_eq!(ChatConn::new(Some("bob"), None).unwrap().user_name, "bob");
        assert_eq!(ChatConn::new(Some("bob"), Some("  \t ")).unwrap().user_name, "bob");
        assert_eq!(ChatConn::new(Some("bob"), Some("  Bob B ")).unwrap().user_name, "Bob B");
        let long = "é".repeat(100);
        assert_eq!(ChatConn::new(Some("bob"), Some(&long)).unwrap().user_name.chars().count(), 64);
        for bad in [None, Some(""), Some("a b"), Some(&*"x".repeat(65))] {
            assert_eq!(ChatConn::new(bad, Some("X")).map_err(|e| e.status), Err(401), "{bad:?}");
        }
    }

    #[test]
    fn attachment_round_trips_and_stays_small() {
        // worst case: longest id, 64-char name of characters JSON escapes as \uXXXX, big counters
        let name: String = "\u{1}".repeat(64);
        let mut c = ChatConn::new(Some(&"x".repeat(64)), Some(&format!("a{name}"))).unwrap();
        c.window_start = MAX_SAFE_INTEGER;
        c.window_count = u32::MAX;
        c.violations = u32::MAX;
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.len() < 1024, "{} bytes", s.len());
        assert_eq!(serde_json::from_str::<ChatConn>(&s).unwrap(), c);
        // and the usual shape
        let s = serde_json::to_string(&alice()).unwrap();
        assert_eq!(
            json_of(&s),
            json!({"userId": "alice", "userName": "Alice", "windowStart": 0, "windowCount": 0, "violations": 0})
        );
    }

    // --- validation ---

    #[test]
    fn accepts_and_trims() {
        let mut c = alice();
        assert_eq!(on_message(&mut c, &cfg(), &msg("  hi there \n"), T0), post("hi there", None));
        let with_id = json!({"type": "message", "content": "x", "id": "c-1"}).to_string();
        assert_eq!(on_message(&mut c, &cfg(), &with_id, T0), post("x", Some("c-1")));
        // BOM and non-breaking spaces are trimmed like JS trim()
        assert_eq!(on_message(&mut c, &cfg(), &msg("\u{feff}\u{a0}z\u{3000}"), T0), post("z", None));
        assert_eq!(c.window_count, 3);
    }

    #[test]
    fn every_bad_frame_is_rejected_without_touching_the_window() {
        let long_id = json!({"type": "message", "content": "x", "id": "i".repeat(129)}).to_string();
        let cases: [(&str, Option<u16>); 15] = [
            ("not json", Some(1007)),
            ("[1]", Some(1007)),
            (r#"{"content":"hi"}"#, Some(1007)),
            (r#"{"type":5}"#, Some(1007)),
            (r#"{"type":"message"}"#, Some(1007)),
            (r#"{"type":"message","content":5}"#, Some(1007)),
            (r#"{"type":"message","content":null}"#, Some(1007)),
            (r#"{"type":"message","content":"x","id":5}"#, Some(1007)),
            // A present id is never "absent": null is a wrong type, not a server-picked id.
            (r#"{"type":"message","content":"x","id":null}"#, Some(1007)),
            (r#"{"type":"typing"}"#, Some(1008)),
            (r#"{"type":"MESSAGE","content":"x"}"#, Some(1008)),
            (r#"{"type":"message","content":""}"#, None),
            (r#"{"type":"message","content":" \n\t "}"#, None),
            (r#"{"type":"message","content":"x","id":""}"#, None),
            (&long_id, None),
        ];
        let mut c = alice();
        // one accepted message first, so "unchanged" means more than "still default"
        assert!(matches!(on_message(&mut c, &cfg(), &msg("first"), T0), Inbound::Post(_)));
        let before = c.clone();
        for (text, want) in cases {
            let got = on_message(&mut c, &cfg(), text, T0 + 1);
            match want {
                Some(code) => assert_eq!(close_code(&got), code, "{text}"),
                None => assert_eq!(reply(&got)["type"], "error", "{text}"),
            }
            assert_eq!(c, before, "{text}");
        }
    }

    #[test]
    fn in_band_errors_are_exact() {
        let mut c = alice();
        assert_eq!(
            reply(&on_message(&mut c, &cfg(), &msg("   "), T0)),
            json!({"type": "error", "code": "invalid_content", "message": "content must not be empty"})
        );
        let bad_id = json!({"type": "message", "content": "x", "id": ""}).to_string();
        assert_eq!(
            reply(&on_message(&mut c, &cfg(), &bad_id, T0)),
            json!({"type": "error", "code": "invalid_id", "message": "id must be 1 to 128 characters"})
        );
        assert_eq!(c, alice());
    }

    #[test]
    fn oversize_frames_close_1009() {
        let mut c = alice();
        let huge = msg(&"x".repeat(frame::MAX_FRAME_BYTES));
        assert_eq!(close_code(&on_message(&mut c, &cfg(), &huge, T0)), 1009);
        assert_eq!(c, alice());
    }

    #[test]
    fn content_limit_is_2000_chars_after_trim() {
        let mut c = alice();
        let exact = "x".repeat(2000);
        assert_eq!(on_message(&mut c, &cfg(), &msg(&exact), T0), post(&exact, None));
        let padded = format!("   {exact}   ");
        assert_eq!(on_message(&mut c, &cfg(), &msg(&padded), T0), post(&exact, None));
        let count = c.window_count;
        let over = on_message(&mut c, &cfg(), &msg(&"x".repeat(2001)), T0);
        assert_eq!(
            over,
            Inbound::Close { code: 1009, reason: "message content over 2000 characters".into() }
        );
        assert_eq!(c.window_count, count);
    }

    #[test]
    fn content_limit_counts_characters_not_bytes() {
        let mut c = alice();
        let wide = "é".repeat(2000); // 4000 bytes
        assert_eq!(on_message(&mut c, &cfg(), &msg(&wide), T0), post(&wide, None));
        let emoji = "😀".repeat(2000); // 8000 bytes, 4000 UTF-16 units
        assert_eq!(on_message(&mut c, &cfg(), &msg(&emoji), T0), post(&emoji, None));
        assert_eq!(close_code(&on_message(&mut c, &cfg(), &msg(&"é".repeat(2001)), T0)), 1009);
    }

    #[test]
    fn stray_pings_get_pong_and_cost_nothing() {
        let mut c = alice();
        for ping in [r#"{"type":"ping"}"#, r#"{ "type" : "ping" }"#, "\n{\"type\":\"ping\",\"t\":1}"] {
            assert_eq!(on_message(&mut c, &cfg(), ping, T0), Inbound::Reply(r#"{"type":"pong"}"#.into()));
        }
        assert_eq!(c, alice());
    }

    // --- rate limit ---

    /// Send `n` valid messages at `now`, returning how many were posted.
    fn send(c: &mut ChatConn, cfg: &ChatConfig, n: usize, now: Millis) -> usize {
        (0..n).filter(|_| matches!(on_message(c, cfg, &msg("m"), now), Inbound::Post(_))).count()
    }

    #[test]
    fn twenty_per_five_seconds_then_rate_limited() {
        let mut c = alice();
        assert_eq!(send(&mut c, &cfg(), 20, T0), 20);
        let r = on_message(&mut c, &cfg(), &msg("21st"), T0 + 1_000);
        assert_eq!(
            reply(&r),
            json!({"type": "error", "code": "rate_limited",
                   "message": "too many messages: at most 20 per 5000 ms", "retryAfterMs": 4_000})
        );
        assert_eq!((c.window_count, c.violations), (20, 1));
    }

    #[test]
    fn spread_messages_still_count_in_one_window() {
        let mut c = alice();
        for i in 0..20 {
            assert!(matches!(on_message(&mut c, &cfg(), &msg("m"), T0 + i * 200), Inbound::Post(_)));
        }
        // 1 ms before the window ends: still limited, wait 1 ms
        assert_eq!(reply(&on_message(&mut c, &cfg(), &msg("m"), T0 + 4_999))["retryAfterMs"], 1);
        // exactly at the window end: a fresh window
        assert_eq!(on_message(&mut c, &cfg(), &msg("m"), T0 + 5_000), post("m", None));
        assert_eq!((c.window_start, c.window_count, c.violations), (T0 + 5_000, 1, 0));
    }

    #[test]
    fn window_starts_at_the_first_message_after_a_pause() {
        let mut c = alice();
        assert_eq!(send(&mut c, &cfg(), 1, T0), 1);
        // long idle: the next window starts at the next message, not on a T0 grid
        assert_eq!(send(&mut c, &cfg(), 20, T0 + 60_003), 20);
        assert_eq!(c.window_start, T0 + 60_003);
        assert_eq!(reply(&on_message(&mut c, &cfg(), &msg("m"), T0 + 60_004))["retryAfterMs"], 4_999);
    }

    #[test]
    fn third_violation_in_a_row_closes_1008() {
        let mut c = alice();
        assert_eq!(send(&mut c, &cfg(), 20, T0), 20);
        assert_eq!(reply(&on_message(&mut c, &cfg(), &msg("m"), T0 + 10))["code"], "rate_limited");
        assert_eq!(reply(&on_message(&mut c, &cfg(), &msg("m"), T0 + 20))["retryAfterMs"], 4_980);
        assert_eq!(
            on_message(&mut c, &cfg(), &msg("m"), T0 + 30),
            Inbound::Close { code: 1008, reason: "rate limit exceeded repeatedly".into() }
        );
    }

    #[test]
    fn an_accepted_message_forgives_violations() {
        let mut c = alice();
        assert_eq!(send(&mut c, &cfg(), 22, T0), 20);
        assert_eq!(c.violations, 2);
        // next window: accepted, so the slate is clean; two more violations don't close
        assert_eq!(send(&mut c, &cfg(), 22, T0 + 5_000), 20);
        assert_eq!(c.violations, 2);
        // invalid frames in between neither count nor forgive
        assert!(matches!(on_message(&mut c, &cfg(), &msg(""), T0 + 5_001), Inbound::Reply(_)));
        assert_eq!(c.violations, 2);
        assert_eq!(close_code(&on_message(&mut c, &cfg(), &msg("m"), T0 + 5_002)), 1008);
    }

    #[test]
    fn configured_limits_apply() {
        let cfg = ChatConfig { rate_limit_messages: 2, rate_limit_window_ms: 100, max_messages: 5, ..ChatConfig::default() };
        let mut c = alice();
        assert_eq!(send(&mut c, &cfg, 2, 0), 2);
        let r = reply(&on_message(&mut c, &cfg, &msg("m"), 30));
        assert_eq!((r["retryAfterMs"].clone(), r["message"].clone()), (json!(70), json!("too many messages: at most 2 per 100 ms")));
        assert_eq!(send(&mut c, &cfg, 2, 100), 2);
    }

    #[test]
    fn clock_going_backwards_starts_a_fresh_window() {
        let mut c = alice();
        assert_eq!(send(&mut c, &cfg(), 20, T0), 20);
        assert_eq!(send(&mut c, &cfg(), 1, T0 - 1), 1);
        assert_eq!(c.window_start, T0 - 1);
    }

    #[test]
    fn rate_state_survives_hibernation() {
        let mut c = alice();
        assert_eq!(send(&mut c, &cfg(), 20, T0), 20);
        let mut woken: ChatConn = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(reply(&on_message(&mut woken, &cfg(), &msg("m"), T0 + 1))["code"], "rate_limited");
    }

    // --- messages, join/leave, dedup ---

    #[test]
    fn posts_get_the_next_seq_and_the_right_id() {
        let mut log = ChatLog { latest_seq: 41, pruned_through: 0 };
        let c = alice();
        let m = log.post(&c, Post { content: "hi".into(), client_id: Some("c-1".into()) }, "srv-1".into(), 2_000);
        assert_eq!((m.seq, m.id.as_str(), m.client_id.as_deref()), (42, "c-1", Some("c-1")));
        let m = log.post(&c, Post { content: "yo".into(), client_id: None }, "srv-2".into(), 3_000);
        assert_eq!((m.seq, m.id.as_str(), m.client_id.as_deref()), (43, "srv-2", None));
        assert_eq!(log.latest_seq, 43);
        assert_eq!(
            json_of(&message_frame(&m)),
            json!({"type": "message", "message": {
                "id": "srv-2", "seq": 43, "kind": "user", "userId": "alice", "userName": "Alice",
                "content": "yo", "timestamp": "1970-01-01T00:00:03.000Z"}})
        );
    }

    #[test]
    fn duplicate_answer_is_the_original_frame() {
        let mut log = ChatLog::default();
        let m = log.post(&alice(), Post { content: "hi".into(), client_id: Some("c-1".into()) }, "s".into(), T0);
        assert_eq!(duplicate_frame(&m), message_frame(&m));
        assert_eq!(json_of(&duplicate_frame(&m))["message"]["seq"], 1);
        assert_eq!(json_of(&duplicate_frame(&m))["message"]["timestamp"], "2025-11-22T08:26:40.000Z");
    }

    #[test]
    fn a_wake_announces_each_member_without_a_socket_once() {
        let mut log = ChatLog { latest_seq: 7, pruned_through: 0 };
        let members = vec![
            ("alice".to_owned(), "Alice A.".to_owned()),
            ("bob".to_owned(), "bob".to_owned()),
            ("carol".to_owned(), "Carol".to_owned()),
        ];
        let live: std::collections::BTreeSet<String> = ["bob".to_owned()].into();
        let mut n = 0;
        let left = log.reconcile(&members, &live, || { n += 1; format!("s{n}") }, T0);
        let seen: Vec<(i64, &str, &str, &str)> =
            left.iter().map(|m| (m.seq, m.user_id.as_str(), m.content.as_str(), m.id.as_str())).collect();
        assert_eq!(seen, vec![(8, "alice", "Alice A. left", "s1"), (9, "carol", "Carol left", "s2")]);
        assert!(left.iter().all(|m| m.kind == MessageKind::System && m.timestamp == T0 && m.client_id.is_none()));
        assert_eq!(log.latest_seq, 9);
        // Everyone live (a plain hibernation): nothing to say, no seq used.
        let all: std::collections::BTreeSet<String> = members.iter().map(|(id, _)| id.clone()).collect();
        assert!(log.reconcile(&members, &all, || "x".into(), T0).is_empty());
        assert!(log.reconcile(&[], &live, || "x".into(), T0).is_empty());
        assert_eq!(log.latest_seq, 9);
    }

    #[test]
    fn join_and_leave_only_for_a_users_first_and_last_socket() {
        let mut log = ChatLog::default();
        let c = alice();
        let joined = log.join(&c, 0, "s1".into(), T0).unwrap();
        assert_eq!(
            json_of(&message_frame(&joined)),
            json!({"type": "message", "message": {
                "id": "s1", "seq": 1, "kind": "system", "userId": "alice", "userName": "Alice",
                "content": "Alice joined", "timestamp": "2025-11-22T08:26:40.000Z"}})
        );
        assert_eq!(log.join(&c, 1, "s2".into(), T0), None);
        assert_eq!(log.leave(&c, 1, "s3".into(), T0), None);
        assert_eq!(log.latest_seq, 1); // no seq burnt on silent joins/leaves
        let left = log.leave(&c, 0, "s4".into(), T0 + 1).unwrap();
        assert_eq!((left.seq, left.content.as_str(), left.kind, left.client_id), (2, "Alice left", MessageKind::System, None));
    }

    #[test]
    fn system_message_uses_the_clipped_display_name() {
        let c = ChatConn::new(Some("bob"), Some(&"B".repeat(80))).unwrap();
        let m = ChatLog::default().join(&c, 0, "s".into(), 0).unwrap();
        assert_eq!(m.content, format!("{} joined", "B".repeat(64)));
    }

    #[test]
    fn user_count_frame_shape() {
        assert_eq!(json_of(&user_count_frame(3)), json!({"type": "userCount", "count": 3}));
    }

    #[test]
    fn seq_saturates_at_the_js_safe_limit() {
        let mut log = ChatLog { latest_seq: MAX_SAFE_INTEGER - 1, pruned_through: 0 };
        assert_eq!(log.join(&alice(), 0, "s".into(), 0).unwrap().seq, MAX_SAFE_INTEGER);
        assert_eq!(log.latest_seq, MAX_SAFE_INTEGER);
    }

    #[test]
    fn rows_deserialize_from_storage_columns() {
        let row = json!({"seq": 7, "id": "c", "client_id": "c", "kind": "user", "user_id": "alice",
                         "user_name": "Alice", "content": "hi", "timestamp": 5});
        let m: ChatMessage = serde_json::from_value(row).unwrap();
        assert_eq!((m.seq, m.kind, m.client_id.as_deref()), (7, MessageKind::User, Some("c")));
        let row = json!({"seq": 8, "id": "s", "client_id": null, "kind": "system", "user_id": "a",
                         "user_name": "A", "content": "A joined", "timestamp": 5});
        assert_eq!(serde_json::from_value::<ChatMessage>(row).unwrap().kind, MessageKind::System);
        let bad = json!({"seq": 8, "id": "s", "kind": "robot", "user_id": "a", "user_name": "A",
                         "content": "x", "timestamp": 5});
        assert!(serde_json::from_value::<ChatMessage>(bad).is_err());
    }

    // --- replay, pruning ---

    #[test]
    fn replay_follows_the_log() {
        let log = ChatLog { latest_seq: 1_500, pruned_through: 500 };
        assert_eq!(log.replay(None), Replay::Nothing);
        assert_eq!(log.replay(Some(700)), Replay::After(700));
        assert_eq!(log.replay(Some(499)), Replay::Resync { latest_seq: 1_500 });
    }

    #[test]
    fn prune_is_scheduled_only_when_over_the_limit_and_never_postponed() {
        let cfg = ChatConfig { max_messages: 3, ..ChatConfig::default() };
        let mut sched = Schedule::default();
        let mut log = ChatLog { latest_seq: 3, pruned_through: 0 };
        log.schedule_prune(&cfg, &mut sched, T0);
        assert_eq!(sched.get(PRUNE_TIMER), None);
        log.latest_seq = 4;
        log.schedule_prune(&cfg, &mut sched, T0);
        assert_eq!(sched.get(PRUNE_TIMER), Some(T0 + PRUNE_INTERVAL_MS));
        log.latest_seq = 5;
        log.schedule_prune(&cfg, &mut sched, T0 + 30_000);
        assert_eq!(sched.next_deadline(), Some(T0 + 60_000));
        // alarm fires: prune once, keeping the newest 3
        assert_eq!(sched.take_due(T0 + 60_000), vec![PRUNE_TIMER.to_string()]);
        assert_eq!(log.prune(&cfg), Some(2));
        assert_eq!(log, ChatLog { latest_seq: 5, pruned_through: 2 });
        assert_eq!(log.prune(&cfg), None);
        // nothing pending until history grows past the limit again
        log.schedule_prune(&cfg, &mut sched, T0 + 60_001);
        assert_eq!(sched.next_deadline(), None);
        log.latest_seq = 6;
        log.schedule_prune(&cfg, &mut sched, T0 + 60_001);
        assert_eq!(sched.next_deadline(), Some(T0 + 120_001));
    }

    #[test]
    fn prune_interval_is_configurable() {
        let cfg = ChatConfig { max_messages: 2, prune_interval_ms: 2_000, ..ChatConfig::default() };
        let mut sched = Schedule::default();
        let log = ChatLog { latest_seq: 3, pruned_through: 0 };
        log.schedule_prune(&cfg, &mut sched, T0);
        assert_eq!(sched.next_deadline(), Some(T0 + 2_000));
    }

    // --- history ---

    fn row(seq: i64) -> ChatMessage {
        ChatMessage {
            seq,
            id: format!("m{seq}"),
            client_id: None,
            kind: MessageKind::User,
            user_id: "alice".into(),
            user_name: "Alice".into(),
            content: format!("#{seq}"),
            timestamp: seq * 1_000,
        }
    }

    #[test]
    fn history_query_parsing() {
        assert_eq!(
            HistoryQuery::parse(None, None),
            Ok(HistoryQuery { before: MAX_SAFE_INTEGER, limit: 50, fetch_limit: 51 })
        );
        assert_eq!(
            HistoryQuery::parse(Some("500"), Some("42")),
            Ok(HistoryQuery { before: 42, limit: 100, fetch_limit: 101 })
        );
        for (limit, before) in [(Some("0"), None), (Some("x"), None), (None, Some("-1")), (None, Some("a"))] {
            assert_eq!(HistoryQuery::parse(limit, before).map_err(|e| e.status), Err(400), "{limit:?} {before:?}");
        }
    }

    #[test]
    fn history_pages_newest_first() {
        let body = history_body(vec![row(5), row(4), row(3)], 2);
        assert_eq!(
            json_of(&body),
            json!({"messages": [
                {"id": "m5", "seq": 5, "kind": "user", "userId": "alice", "userName": "Alice",
                 "content": "#5", "timestamp": "1970-01-01T00:00:05.000Z"},
                {"id": "m4", "seq": 4, "kind": "user", "userId": "alice", "userName": "Alice",
                 "content": "#4", "timestamp": "1970-01-01T00:00:04.000Z"}],
                "nextBefore": 4})
        );
        let last = json_of(&history_body(vec![row(2), row(1)], 2));
        assert_eq!(last["nextBefore"], Value::Null);
        assert_eq!(last["messages"].as_array().unwrap().len(), 2);
        assert_eq!(json_of(&history_body(vec![], 50)), json!({"messages": [], "nextBefore": null}));
    }
}
