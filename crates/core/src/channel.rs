//! Channel core (docs/protocol.md §6.5): gapless sequenced messages, typing with alarm-driven expiry,
//! participants, `?since=` recovery and pruning.
//!
//! The core owns the small state the adapter persists between wakes — `latest_seq`,
//! `pruned_through`, the typing table and the timer [`Schedule`] — and never touches the
//! message table: the adapter deduplicates, inserts, pages and deletes rows as told.
//!
//! Posting a message (WebSocket or HTTP) is two steps so a sequence number is only consumed
//! once its row is stored:
//! 1. [`Channel::on_message`] / [`parse_post_body`] validate into a [`Post`].
//! 2. If the post has a client id already stored for this user, answer with the original
//!    sequence ([`ack_frame`] / [`post_response`]) and stop. Else [`Channel::prepare`] gives the
//!    row (`latest_seq + 1`); insert it and store `latest_seq` in one transaction; then
//!    [`Channel::commit`] advances the core and returns the broadcast.
//!
//! Participants are not stored: they are the distinct users of the open sockets, which the
//! adapter reads from socket tags and passes in (always *excluding* the socket being
//! accepted or closed), so the answer is right whether or not the object just woke up.
//! A join or leave tells the other sockets with the full `participants` list while the room
//! has at most [`PARTICIPANTS_LIST_MAX`] participants, and with a `participant_joined` /
//! `participant_left` delta (`userId`, `count`) above it ([`participants_change`]): a full list
//! to every socket on every join is O(n²) frames and O(n³) bytes to fill a large room.
//!
//! Wire decisions (docs/protocol.md leaves them open):
//! - message `timestamp` is ISO-8601 with milliseconds; `id` is the client id or `null`.
//! - a WebSocket post is acknowledged to its sender with `{"type":"ack","id","sequence"}`;
//!   the `message` broadcast also reaches the sender. A repeated id gets only the ack.
//! - content is trimmed and stored trimmed; at most [`MAX_CONTENT_CHARS`] characters.
//! - history entries are the broadcast frame without `type`.
//! - `typing {isTyping:true}` always broadcasts (a refresh tells late joiners who is typing);
//!   `isTyping:false`, expiry and leaving broadcast only when the set changed.
//! - reactions ([`crate::reactions`]): `react` is checked here (emoji, then sequence), the
//!   adapter reads the message's tallies, [`Channel::react`] returns the effects (store, then
//!   `reaction` to everyone; an unchanged toggle answers only its sender). History entries and
//!   replayed messages carry `"reactions":{emoji: count}` (`{}` when none); a live new message
//!   has none yet and carries no such field.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{close, ApiError};
use crate::frame::{check_client_id, decode, Reject, MAX_FRAME_BYTES};
use crate::effects::{Effects, To};
use crate::query::{parse_limit, parse_seq};
use crate::reactions::{self, Current, React, ReactionCounts, ReactionError};
use crate::replay::{self, Replay};
use crate::schedule::Schedule;
use crate::time::{iso8601, Millis};
use crate::MAX_SAFE_INTEGER;

/// Longest message, in characters after trimming (Unicode scalar values, not bytes).
pub const MAX_CONTENT_CHARS: usize = 4_000;
/// A typing flag lasts this long after its last refresh.
pub const TYPING_TTL_MS: Millis = 3_000;
/// Pruning runs at most this often (`CHANNEL_PRUNE_INTERVAL_MS` may change it).
pub const PRUNE_INTERVAL_MS: Millis = 60_000;
/// `CHANNEL_MAX_MESSAGES` when unset or invalid.
pub const DEFAULT_MAX_MESSAGES: i64 = 10_000;
/// Participants (distinct users) up to which a join or leave sends every other socket the full
/// `participants` list; above it they get a `participant_joined` / `participant_left` delta
/// ([`participants_change`]). The joining socket always gets the full list.
pub const PARTICIPANTS_LIST_MAX: usize = 100;
pub const HISTORY_DEFAULT_LIMIT: u32 = 50;
pub const HISTORY_MAX_LIMIT: u32 = 100;
/// Timer names in the [`Schedule`].
pub const TYPING_TIMER: &str = "typing";
pub const PRUNE_TIMER: &str = "prune";

crate::ops! {
    /// Channel's operations (`/ws/channel/:id`, `/api/channel/:id/{message,messages}`).
    pub enum ChannelOp {
        Socket = "ws" (websocket),
        Message = "message",
        Messages = "messages",
        // Internal, sharded channels only (docs/sharding.md; no route reaches them).
        /// Primary: a post from a shard's socket.
        ShardPost = "shard-post",
        /// Primary: a typing change from a shard's socket.
        ShardTyping = "shard-typing",
        /// Primary: a reaction toggle from a shard's socket (answers the sender's own frames).
        ShardReact = "shard-react",
        /// Primary: a socket is joining a shard (answers participants, latest, replay).
        ShardJoin = "shard-join",
        /// Primary: a user's last socket left a shard.
        ShardLeave = "shard-leave",
        /// Primary: stored messages in a range (a shard's gap fetch).
        Range = "range",
        /// Shard: frames for every socket (sequenced ones in order).
        Deliver = "deliver",
    }
}

/// The Channel object's tables (the kit adds `_schedule`).
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS channel (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL, \
     latest_seq INTEGER NOT NULL DEFAULT 0, pruned_through INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS messages (sequence INTEGER PRIMARY KEY, user_id TEXT NOT NULL, content TEXT NOT NULL, \
     timestamp INTEGER NOT NULL, client_id TEXT)",
    "CREATE UNIQUE INDEX IF NOT EXISTS messages_client ON messages (user_id, client_id) WHERE client_id IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS typing (user_id TEXT PRIMARY KEY, expires_at INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS reactions (sequence INTEGER NOT NULL, emoji TEXT NOT NULL, user_id TEXT NOT NULL, \
     PRIMARY KEY (sequence, emoji, user_id)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS reaction_counts (sequence INTEGER NOT NULL, emoji TEXT NOT NULL, count INTEGER NOT NULL, \
     PRIMARY KEY (sequence, emoji)) WITHOUT ROWID",
    crate::shard::SCHEMA[0],
    crate::shard::SCHEMA[1],
    crate::shard::SCHEMA[2],
];

/// The sequence of a `message` frame this core built (what a shard orders by); `None` for
/// every other frame (typing, participants, anything added later).
pub fn sequence_of(frame: &str) -> Option<i64> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        r#type: &'a str,
        sequence: Option<i64>,
    }
    if !frame.starts_with(r#"{"type":"message","#) {
        return None;
    }
    serde_json::from_str::<Probe<'_>>(frame).ok().filter(|p| p.r#type == "message").and_then(|p| p.sequence)
}
/// Create the channel row on first use (its name lets every wake log it).
pub const REMEMBER_NAME: &str = "INSERT OR IGNORE INTO channel (id, name) VALUES (1, ?)";

/// The `type`s a client may send (`ping` is normally answered by the runtime's auto-response;
/// a differently spaced ping reaches the object and is answered here).
pub const CLIENT_TYPES: [&str; 4] = ["message", "typing", "react", "ping"];

/// Per-socket attachment. Identity comes from the Worker's `X-User-Id` / `X-User-Name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelConn {
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
}

/// `CHANNEL_MAX_MESSAGES`: a positive integer, else the default.
pub fn parse_max_messages(raw: Option<&str>) -> i64 {
    raw.and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|n| (1..=MAX_SAFE_INTEGER).contains(n))
        .unwrap_or(DEFAULT_MAX_MESSAGES)
}

/// How much history a channel keeps and how often it may prune (vars `CHANNEL_MAX_MESSAGES`,
/// `CHANNEL_PRUNE_INTERVAL_MS`; invalid values fall back to the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_messages: i64,
    pub prune_interval_ms: Millis,
}

impl Default for Retention {
    fn default() -> Self {
        Self { max_messages: DEFAULT_MAX_MESSAGES, prune_interval_ms: PRUNE_INTERVAL_MS }
    }
}

impl Retention {
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        let prune_interval_ms = get("CHANNEL_PRUNE_INTERVAL_MS")
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| (1..=MAX_SAFE_INTEGER).contains(n))
            .unwrap_or(PRUNE_INTERVAL_MS);
        Self { max_messages: parse_max_messages(get("CHANNEL_MAX_MESSAGES").as_deref()), prune_interval_ms }
    }
}

/// A validated message waiting for its sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    /// Trimmed, 1..=[`MAX_CONTENT_CHARS`] characters.
    pub content: String,
    /// The client's id (1..=128 characters), the dedup key together with the user id.
    pub client_id: Option<String>,
}

/// One stored message (row `sequence, user_id, content, timestamp, client_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelMessage {
    pub sequence: i64,
    pub user_id: String,
    pub content: String,
    pub timestamp: Millis,
    pub client_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageWire<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    r#type: Option<&'static str>,
    sequence: i64,
    user_id: &'a str,
    content: &'a str,
    timestamp: String,
    id: Option<&'a str>,
    /// History and replay only (`{}` when none); a live new message has no such field.
    #[serde(skip_serializing_if = "Option::is_none")]
    reactions: Option<&'a BTreeMap<String, i64>>,
}

/// The reactions of a message without any.
static NO_REACTIONS: BTreeMap<String, i64> = BTreeMap::new();

impl ChannelMessage {
    fn wire<'a>(&'a self, r#type: Option<&'static str>, reactions: Option<&'a ReactionCounts>) -> MessageWire<'a> {
        MessageWire {
            r#type,
            sequence: self.sequence,
            user_id: &self.user_id,
            content: &self.content,
            timestamp: iso8601(self.timestamp),
            id: self.client_id.as_deref(),
            reactions: reactions.map(|all| all.get(&self.sequence).unwrap_or(&NO_REACTIONS)),
        }
    }

    /// The live broadcast frame `{"type":"message","sequence","userId","content","timestamp","id"}`.
    pub fn frame(&self) -> String {
        to_json(&self.wire(Some("message"), None))
    }

    /// The `?since=` replay frame: [`Self::frame`] plus `"reactions":{emoji: count}` from
    /// `counts` (`{}` if it has none for this message).
    pub fn replay_frame(&self, counts: &ReactionCounts) -> String {
        to_json(&self.wire(Some("message"), Some(counts)))
    }
}

/// `{"type":"ack","id","sequence"}` for the sender of a WebSocket post (also for a repeat).
pub fn ack_frame(client_id: Option<&str>, sequence: i64) -> String {
    #[derive(Serialize)]
    struct Ack<'a> {
        r#type: &'static str,
        id: Option<&'a str>,
        sequence: i64,
    }
    to_json(&Ack { r#type: "ack", id: client_id, sequence })
}

/// `POST /api/channel/:id/message` answer, `{"success":true,"sequence":n}` (also for a repeat).
pub fn post_response(sequence: i64) -> String {
    #[derive(Serialize)]
    struct Answer {
        success: bool,
        sequence: i64,
    }
    to_json(&Answer { success: true, sequence })
}

/// What the OTHER sockets hear when `user_id` became a participant (`joined`) or stopped being
/// one; `after`: the participants once the change is applied (with `user_id` if joined,
/// without it if not). At most [`PARTICIPANTS_LIST_MAX`] → the full `participants` list, above
/// → `{"type":"participant_joined"|"participant_left","userId","count"}` (`count` = `after.len()`).
pub fn participants_change<'a>(user_id: &str, joined: bool, after: impl ExactSizeIterator<Item = &'a str>) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Delta<'a> {
        r#type: &'static str,
        user_id: &'a str,
        count: usize,
    }
    let count = after.len();
    if count <= PARTICIPANTS_LIST_MAX {
        return users_frame("participants", after);
    }
    let r#type = if joined { "participant_joined" } else { "participant_left" };
    to_json(&Delta { r#type, user_id, count })
}

fn users_frame<'a>(r#type: &'static str, users: impl IntoIterator<Item = &'a str>) -> String {
    #[derive(Serialize)]
    struct UsersFrame<'a> {
        r#type: &'static str,
        users: Vec<&'a str>,
    }
    to_json(&UsersFrame { r#type, users: users.into_iter().collect() })
}

/// Why a post was refused. Wrong shapes are 400 / close 1007; bad values 422 / in-band error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("body must be a JSON object")]
    BadBody,
    #[error("body larger than 64 KiB")]
    BodyTooLarge,
    #[error("{0} must be a string")]
    WrongType(&'static str),
    #[error("content must not be empty")]
    EmptyContent,
    #[error("content must be at most 4000 characters")]
    ContentTooLong,
    #[error("id must be 1 to 128 characters")]
    InvalidId,
    #[error("the channel has no sequence numbers left")]
    SequenceExhausted,
}

impl ChannelError {
    pub fn code(&self) -> &'static str {
        match self {
            ChannelError::BadBody | ChannelError::WrongType(_) => "invalid_body",
            ChannelError::BodyTooLarge => "payload_too_large",
            ChannelError::EmptyContent => "empty_content",
            ChannelError::ContentTooLong => "content_too_long",
            ChannelError::InvalidId => "invalid_id",
            ChannelError::SequenceExhausted => "internal_error",
        }
    }
    pub fn to_api(&self) -> ApiError {
        match self {
            ChannelError::BadBody | ChannelError::WrongType(_) => ApiError::bad_request(self.code(), self.to_string()),
            ChannelError::BodyTooLarge => ApiError::payload_too_large(self.to_string()),
            ChannelError::EmptyContent | ChannelError::ContentTooLong | ChannelError::InvalidId => {
                ApiError::unprocessable(self.code(), self.to_string())
            }
            ChannelError::SequenceExhausted => ApiError::internal(),
        }
    }
    pub fn to_reject(&self) -> Reject {
        match self {
            ChannelError::BadBody | ChannelError::WrongType(_) => Reject::close(close::INVALID_DATA, self.to_string()),
            ChannelError::BodyTooLarge => Reject::close(close::TOO_BIG, self.to_string()),
            ChannelError::EmptyContent | ChannelError::ContentTooLong | ChannelError::InvalidId => {
                Reject::in_band(self.code(), self.to_string())
            }
            ChannelError::SequenceExhausted => Reject::close(close::INTERNAL, "internal error"),
        }
    }
}

/// Validate content and id (the types are already right).
fn validate(content: &str, client_id: Option<String>) -> Result<Post, ChannelError> {
    let content = crate::content::check(content, MAX_CONTENT_CHARS).map_err(|e| match e {
        crate::content::ContentError::Empty => ChannelError::EmptyContent,
        crate::content::ContentError::TooLong => ChannelError::ContentTooLong,
    })?;
    check_client_id(client_id.as_deref()).map_err(|_| ChannelError::InvalidId)?;
    Ok(Post { content: content.to_owned(), client_id })
}

/// Parse the `POST /api/channel/:id/message` body `{"content":string,"id"?:string}`.
pub fn parse_post_body(body: &str) -> Result<Post, ChannelError> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(ChannelError::BodyTooLarge);
    }
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(body) else {
        return Err(ChannelError::BadBody);
    };
    let Some(Value::String(content)) = obj.get("content") else {
        return Err(ChannelError::WrongType("content"));
    };
    let client_id = match obj.get("id") {
        None => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return Err(ChannelError::WrongType("id")),
    };
    validate(content, client_id)
}

/// `GET /api/channel/:id/messages?after=&limit=`: fetch rows with `sequence > after` in
/// ascending order, `LIMIT fetch_limit()`, and answer [`history_body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    pub after: i64,
    pub limit: u32,
}

impl HistoryQuery {
    pub fn parse(after: Option<&str>, limit: Option<&str>) -> Result<Self, ApiError> {
        Ok(Self {
            after: parse_seq("after", after)?.unwrap_or(0),
            limit: parse_limit(limit, HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT)?,
        })
    }
    /// One more row than the page, so we know whether a next page exists.
    pub fn fetch_limit(&self) -> u32 {
        self.limit.saturating_add(1)
    }
}

/// `{"messages":[{sequence,userId,content,timestamp,id,reactions}],"nextAfter":n|null}` from
/// rows fetched as [`HistoryQuery`] says, with the tallies of those rows ([`history_range`]).
pub fn history_body(rows: Vec<ChannelMessage>, counts: &ReactionCounts, limit: u32) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct History<'a> {
        messages: Vec<MessageWire<'a>>,
        next_after: Option<i64>,
    }
    let page = replay::page(rows, limit, |m| m.sequence);
    to_json(&History { messages: page.items.iter().map(|m| m.wire(None, Some(counts))).collect(), next_after: page.next })
}

/// The `(after, through]` sequence range whose tallies [`history_body`] needs for these rows
/// (bind it to [`reactions::SELECT_RANGE`]); `None` for no rows.
pub fn history_range(rows: &[ChannelMessage]) -> Option<(i64, i64)> {
    let first = rows.iter().map(|m| m.sequence).min()?;
    let last = rows.iter().map(|m| m.sequence).max()?;
    Some((first.saturating_sub(1), last))
}

/// What a WebSocket frame asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Dedup, sequence, persist and broadcast this (see the module docs).
    Post(Post),
    /// A reaction toggle on a known message: read its [`Current`] tallies, then [`Channel::react`].
    React(React),
    /// Nothing to persist but the effects.
    Done(Outcome),
}

/// What the adapter does after one event. Persist first (`typing_changed` → the typing table,
/// `timers_changed` → the schedule and the alarm at [`Channel::poll_timeout`],
/// `prune_through` → delete rows with `sequence <= n` and store `pruned_through`), then send
/// `to_self` to the originating socket, `to_all` to every socket and `to_others` to every
/// socket but the originating one, in that order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub to_self: Vec<String>,
    pub to_all: Vec<String>,
    pub to_others: Vec<String>,
    pub typing_changed: bool,
    pub timers_changed: bool,
    pub prune_through: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Message {
        content: String,
        /// Absent → no client id; `null` or a non-string → 1007.
        #[serde(default, deserialize_with = "crate::frame::present")]
        id: Option<String>,
    },
    Typing {
        #[serde(rename = "isTyping")]
        is_typing: bool,
    },
    React {
        sequence: i64,
        emoji: String,
        on: bool,
    },
    Ping,
}

/// The persisted state of one channel (besides its message rows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Channel {
    latest_seq: i64,
    pruned_through: i64,
    /// user id → when their typing flag expires.
    typing: BTreeMap<String, Millis>,
    timers: Schedule,
}

impl Channel {
    /// Rebuild from storage (the constructor runs on every wake).
    pub fn restore(latest_seq: i64, pruned_through: i64, typing: BTreeMap<String, Millis>, timers: Schedule) -> Self {
        Self { latest_seq, pruned_through, typing, timers }
    }

    pub fn latest_seq(&self) -> i64 {
        self.latest_seq
    }
    pub fn pruned_through(&self) -> i64 {
        self.pruned_through
    }
    /// The typing table to persist: user id → expiry.
    pub fn typing(&self) -> &BTreeMap<String, Millis> {
        &self.typing
    }
    /// The timer table to persist.
    pub fn timers(&self) -> &Schedule {
        &self.timers
    }
    /// When the DO alarm should fire (None: delete it).
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.timers.next_deadline()
    }

    /// `?since=` on connect (parse it with [`crate::query::parse_seq`]): replay rows after `n`,
    /// or send [`replay::resync_frame`], after the participants frame and before live traffic.
    pub fn replay_plan(&self, since: Option<i64>) -> Replay {
        replay::plan(since, self.latest_seq, self.pruned_through)
    }

    /// A socket of `user_id` was accepted. `other_users`: distinct users of the channel's
    /// OTHER sockets. The new socket gets the full `participants`; if the set grew the others
    /// hear it ([`participants_change`]: the list, or a `participant_joined` delta above
    /// [`PARTICIPANTS_LIST_MAX`]).
    pub fn on_connect(&self, user_id: &str, other_users: &BTreeSet<String>) -> Outcome {
        let mut users: BTreeSet<&str> = other_users.iter().map(String::as_str).collect();
        let joined = users.insert(user_id);
        let to_others = if joined { vec![participants_change(user_id, true, users.iter().copied())] } else { Vec::new() };
        Outcome { to_others, to_self: vec![users_frame("participants", users)], ..Outcome::default() }
    }

    /// A text frame from `user_id`. On `Err` nothing changed.
    pub fn on_message(&mut self, user_id: &str, text: &str, now: Millis) -> Result<Handled, Reject> {
        match decode::<ClientFrame>(text, &CLIENT_TYPES)? {
            ClientFrame::Message { content, id } => validate(&content, id).map(Handled::Post).map_err(|e| e.to_reject()),
            ClientFrame::Typing { is_typing: true } => Ok(Handled::Done(self.start_typing(user_id, now))),
            ClientFrame::Typing { is_typing: false } => Ok(Handled::Done(self.stop_typing(user_id, now))),
            ClientFrame::React { sequence, emoji, on } => {
                let react = React::new(sequence, emoji, on).map_err(|e| e.to_reject())?;
                self.check_sequence(sequence).map_err(|e| e.to_reject())?;
                Ok(Handled::React(react))
            }
            ClientFrame::Ping => {
                Ok(Handled::Done(Outcome { to_self: vec![r#"{"type":"pong"}"#.to_owned()], ..Outcome::default() }))
            }
        }
    }

    /// A stored message: `pruned_through < sequence <= latest_seq` (sequences are gapless and
    /// pruning deletes a prefix, so no lookup is needed).
    pub fn check_sequence(&self, sequence: i64) -> Result<(), ReactionError> {
        if sequence > self.pruned_through && sequence <= self.latest_seq && sequence >= 1 {
            Ok(())
        } else {
            Err(ReactionError::UnknownSequence)
        }
    }

    /// Toggle `user_id`'s `react` against `current` (what storage holds for that message and
    /// user, read in this same turn): store the reactor row and the new tally, then
    /// `{"type":"reaction",…,"count"}` to everyone; an unchanged state only answers the sender.
    /// On `Err` (unknown or pruned sequence, a 21st emoji) nothing changes.
    pub fn react(&self, user_id: &str, react: &React, current: &Current) -> Result<Effects, Reject> {
        self.check_sequence(react.sequence).map_err(|e| e.to_reject())?;
        reactions::decide(user_id, react, current).map(|r| r.effects()).map_err(|e| e.to_reject())
    }

    /// The row for a new post: the next sequence, `now`. Does not change the core.
    pub fn prepare(&self, user_id: &str, post: Post, now: Millis) -> Result<ChannelMessage, ChannelError> {
        let sequence = self
            .latest_seq
            .checked_add(1)
            .filter(|s| *s <= MAX_SAFE_INTEGER)
            .ok_or(ChannelError::SequenceExhausted)?;
        Ok(ChannelMessage {
            sequence,
            user_id: user_id.to_owned(),
            content: post.content,
            timestamp: now,
            client_id: post.client_id,
        })
    }

    /// `message` was stored: advance, arm pruning if the channel is over `max_messages`, and
    /// broadcast it to everyone (sender included; a WS sender also gets [`ack_frame`]).
    pub fn commit(&mut self, message: &ChannelMessage, now: Millis, retention: Retention) -> Outcome {
        self.latest_seq = self.latest_seq.max(message.sequence);
        let mut timers_changed = false;
        let over = replay::prune_through(self.latest_seq, self.pruned_through, retention.max_messages).is_some();
        if over && self.timers.get(PRUNE_TIMER).is_none() {
            // Arming from "now" (not re-arming after each run) keeps prunes ≥ the interval apart.
            self.timers.set(PRUNE_TIMER, now.saturating_add(retention.prune_interval_ms));
            timers_changed = true;
        }
        Outcome { to_all: vec![message.frame()], timers_changed, ..Outcome::default() }
    }

    /// A socket of `user_id` closed or errored. `remaining_users`: distinct users of the
    /// sockets still open, NOT counting the closing one. Only a user's last close changes
    /// participants (the others hear [`participants_change`]) and clears their typing flag.
    pub fn on_close(&mut self, user_id: &str, remaining_users: &BTreeSet<String>, now: Millis) -> Outcome {
        if remaining_users.contains(user_id) {
            return Outcome::default();
        }
        let mut outcome = self.stop_typing(user_id, now);
        // The closing socket is the origin: everything goes to the others.
        let typing = std::mem::take(&mut outcome.to_all);
        outcome.to_others.push(participants_change(user_id, false, remaining_users.iter().map(String::as_str)));
        outcome.to_others.extend(typing);
        outcome
    }

    /// Reconcile with the sockets that really exist (run on every wake): typing flags of users
    /// without an open socket in `live_users` (left over from a crash or a lost close) are
    /// dropped, and everyone left gets the new `typing` list. Participants are derived from
    /// the open sockets, so they need no repair.
    pub fn reconcile(&mut self, live_users: &BTreeSet<String>, now: Millis) -> Outcome {
        let ghosts = crate::schedule::liveness::ghosts(self.typing.keys().map(String::as_str), live_users);
        if ghosts.is_empty() {
            return Outcome::default();
        }
        for user in &ghosts {
            self.typing.remove(user);
        }
        self.expire_typing(now);
        Outcome {
            to_all: vec![self.typing_frame()],
            typing_changed: true,
            timers_changed: self.sync_typing_timer(),
            ..Outcome::default()
        }
    }

    /// A post's effects once `message` is prepared: its row and the new latest sequence in one
    /// store, then [`Self::commit`]'s (the broadcast, pruning armed).
    pub fn post_effects(&mut self, message: &ChannelMessage, now: Millis, retention: Retention) -> Effects {
        let stored = Effects::none()
            .store(
                "INSERT INTO messages (sequence, user_id, content, timestamp, client_id) VALUES (?, ?, ?, ?, ?)",
                vec![
                    message.sequence.into(),
                    message.user_id.as_str().into(),
                    message.content.as_str().into(),
                    message.timestamp.into(),
                    message.client_id.as_deref().into(),
                ],
            )
            .store("UPDATE channel SET latest_seq = ? WHERE id = 1", vec![message.sequence.into()]);
        let outcome = self.commit(message, now, retention);
        stored.and(self.effects(outcome))
    }

    /// An [`Outcome`] as the kit's effects: pruning and the typing table stored, then
    /// `to_self`, `to_all`, `to_others`, then the typing / prune timers as they now stand.
    pub fn effects(&self, outcome: Outcome) -> Effects {
        let mut e = Effects::none();
        if let Some(cutoff) = outcome.prune_through {
            e = e
                .store("DELETE FROM messages WHERE sequence <= ?", vec![cutoff.into()])
                .store(reactions::PRUNE_REACTORS, vec![cutoff.into()])
                .store(reactions::PRUNE_COUNTS, vec![cutoff.into()])
                .store("UPDATE channel SET pruned_through = ? WHERE id = 1", vec![cutoff.into()]);
        }
        if outcome.typing_changed {
            e = e.store("DELETE FROM typing", vec![]);
            for (user_id, expires_at) in &self.typing {
                e = e.store("INSERT INTO typing (user_id, expires_at) VALUES (?, ?)", vec![user_id.as_str().into(), (*expires_at).into()]);
            }
        }
        for (to, frames) in [(To::This, outcome.to_self), (To::All, outcome.to_all), (To::Others, outcome.to_others)] {
            for frame in frames {
                e = e.send(to.clone(), frame);
            }
        }
        if outcome.timers_changed {
            for name in [TYPING_TIMER, PRUNE_TIMER] {
                e = match self.timers.get(name) {
                    Some(at) => e.set_timer(name, at),
                    None => e.cancel_timer(name),
                };
            }
        }
        e
    }

    /// The DO alarm fired at `now`: expire typing flags (broadcast if the set changed) and, if
    /// the prune timer is due, decide the cutoff.
    pub fn on_alarm(&mut self, now: Millis, max_messages: i64) -> Outcome {
        let due = self.timers.take_due(now);
        let mut outcome = Outcome { timers_changed: !due.is_empty(), ..Outcome::default() };
        if due.iter().any(|t| t == PRUNE_TIMER) {
            outcome.prune_through = replay::prune_through(self.latest_seq, self.pruned_through, max_messages);
            if let Some(cutoff) = outcome.prune_through {
                self.pruned_through = cutoff;
            }
        }
        // Always sweep: a late or early alarm must still leave the right set and deadline.
        if self.expire_typing(now) {
            outcome.typing_changed = true;
            outcome.to_all.push(self.typing_frame());
        }
        outcome.timers_changed |= self.sync_typing_timer();
        outcome
    }

    fn start_typing(&mut self, user_id: &str, now: Millis) -> Outcome {
        self.expire_typing(now);
        self.typing.insert(user_id.to_owned(), now.saturating_add(TYPING_TTL_MS));
        Outcome {
            to_all: vec![self.typing_frame()],
            typing_changed: true,
            timers_changed: self.sync_typing_timer(),
            ..Outcome::default()
        }
    }

    fn stop_typing(&mut self, user_id: &str, now: Millis) -> Outcome {
        let expired = self.expire_typing(now);
        let removed = self.typing.remove(user_id).is_some();
        if !(expired || removed) {
            return Outcome::default();
        }
        Outcome {
            to_all: vec![self.typing_frame()],
            typing_changed: true,
            timers_changed: self.sync_typing_timer(),
            ..Outcome::default()
        }
    }

    /// `{"type":"typing","users":[...]}`, sorted by user id.
    pub fn typing_frame(&self) -> String {
        users_frame("typing", self.typing.keys().map(String::as_str))
    }

    /// Drop flags whose expiry is at or before `now`; whether any went.
    fn expire_typing(&mut self, now: Millis) -> bool {
        let before = self.typing.len();
        self.typing.retain(|_, expires_at| *expires_at > now);
        self.typing.len() != before
    }

    /// Point the typing timer at the earliest expiry; whether it moved.
    fn sync_typing_timer(&mut self) -> bool {
        let wanted = self.typing.values().copied().min();
        if self.timers.get(TYPING_TIMER) == wanted {
            return false;
        }
        match wanted {
            Some(at) => self.timers.set(TYPING_TIMER, at),
            None => self.timers.cancel(TYPING_TIMER),
        }
        true
    }
}

/// Our frame structs hold only strings, numbers and options: serializing them cannot fail.
fn to_json<T: Serialize>(frame: &T) -> String {
    serde_json::to_string(frame).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(max_messages: i64) -> Retention {
        Retention { max_messages, prune_interval_ms: PRUNE_INTERVAL_MS }
    }

    #[test]
    fn retention_from_vars() {
        let r = Retention::from_vars(|k| match k {
            "CHANNEL_MAX_MESSAGES" => Some("250".into()),
            "CHANNEL_PRUNE_INTERVAL_MS" => Some("2000".into()),
            _ => None,
        });
        assert_eq!(r, Retention { max_messages: 250, prune_interval_ms: 2000 });
        let r = Retention::from_vars(|_| Some("0".into()));
        assert_eq!(r, Retention::default());
    }

    const MAX: i64 = DEFAULT_MAX_MESSAGES;

    fn users(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn done(h: Result<Handled, Reject>) -> Outcome {
        match h {
            Ok(Handled::Done(o)) => o,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn post(h: Result<Handled, Reject>) -> Post {
        match h {
            Ok(Handled::Post(p)) => p,
            other => panic!("expected Post, got {other:?}"),
        }
    }

    fn typing(c: &mut Channel, user: &str, on: bool, now: Millis) -> Outcome {
        done(c.on_message(user, &format!(r#"{{"type":"typing","isTyping":{on}}}"#), now))
    }

    /// Post through the full two-step path.
    fn send(c: &mut Channel, user: &str, content: &str, now: Millis) -> (ChannelMessage, Outcome) {
        let p = post(c.on_message(user, &serde_json::json!({"type": "message", "content": content}).to_string(), now));
        let m = c.prepare(user, p, now).unwrap();
        let out = c.commit(&m, now, keep(MAX));
        (m, out)
    }

    fn rejected(c: &mut Channel, text: &str) -> Reject {
        let before = c.clone();
        let err = c.on_message("a", text, 5).unwrap_err();
        assert_eq!(*c, before, "state changed after rejecting {text}");
        err
    }

    #[test]
    fn message_frames_are_exact() {
        let m = ChannelMessage {
            sequence: 7,
            user_id: "u1".into(),
            content: "hi \"there\"".into(),
            timestamp: 1_000,
            client_id: Some("c-1".into()),
        };
        assert_eq!(
            m.frame(),
            r#"{"type":"message","sequence":7,"userId":"u1","content":"hi \"there\"","timestamp":"1970-01-01T00:00:01.000Z","id":"c-1"}"#
        );
        let anon = ChannelMessage { client_id: None, ..m };
        assert!(anon.frame().ends_with(r#""id":null}"#));
        assert_eq!(ack_frame(Some("c-1"), 7), r#"{"type":"ack","id":"c-1","sequence":7}"#);
        assert_eq!(ack_frame(None, 8), r#"{"type":"ack","id":null,"sequence":8}"#);
        assert_eq!(post_response(9), r#"{"success":true,"sequence":9}"#);
    }

    #[test]
    fn websocket_message_becomes_a_trimmed_post() {
        let mut c = Channel::default();
        let p = post(c.on_message("a", r#"{"type":"message","content":"  hello \n","id":"x1"}"#, 1));
        assert_eq!(p, Post { content: "hello".into(), client_id: Some("x1".into()) });
        let p = post(c.on_message("a", r#"{"type":"message","content":"hi"}"#, 1));
        assert_eq!(p.client_id, None);
        // A present id must be a string: null closes 1007 (it is not "no id").
        assert!(matches!(
            c.on_message("a", r#"{"type":"message","content":"hi","id":null}"#, 1),
            Err(Reject::Close { code: 1007, .. })
        ));
        assert_eq!(c, Channel::default());
    }

    #[test]
    fn sequences_are_gapless_and_only_advance_on_commit() {
        let mut c = Channel::default();
        let p = Post { content: "x".into(), client_id: None };
        let m1 = c.prepare("a", p.clone(), 10).unwrap();
        assert_eq!(c.prepare("a", p.clone(), 10).unwrap().sequence, 1, "prepare must not consume");
        let out = c.commit(&m1, 10, keep(MAX));
        assert_eq!(out.to_all, vec![m1.frame()]);
        assert!(out.to_self.is_empty() && out.to_others.is_empty());
        for expected in 2..=50 {
            let (m, _) = send(&mut c, "b", "y", expected);
            assert_eq!(m.sequence, expected);
            assert_eq!(m.timestamp, expected);
            assert_eq!(c.latest_seq(), expected);
        }
    }

    #[test]
    fn sequence_never_leaves_the_safe_integer_range() {
        let c = Channel::restore(MAX_SAFE_INTEGER - 1, 0, BTreeMap::new(), Schedule::default());
        let p = Post { content: "x".into(), client_id: None };
        assert_eq!(c.prepare("a", p.clone(), 1).unwrap().sequence, MAX_SAFE_INTEGER);
        let c = Channel::restore(MAX_SAFE_INTEGER, 0, BTreeMap::new(), Schedule::default());
        assert_eq!(c.prepare("a", p, 1), Err(ChannelError::SequenceExhausted));
        assert_eq!(ChannelError::SequenceExhausted.to_api().status, 500);
        assert!(matches!(ChannelError::SequenceExhausted.to_reject(), Reject::Close { code: 1011, .. }));
    }

    #[test]
    fn content_boundaries() {
        let at_max = "é".repeat(MAX_CONTENT_CHARS); // 8000 bytes, 4000 characters
        assert_eq!(validate(&at_max, None).map(|p| p.content.chars().count()), Ok(MAX_CONTENT_CHARS));
        assert_eq!(validate(&format!("  {at_max}\t"), None).map(|p| p.content), Ok(at_max.clone()));
        assert_eq!(validate(&format!("{at_max}x"), None), Err(ChannelError::ContentTooLong));
        assert_eq!(validate("x", None).map(|p| p.content), Ok("x".into()));
        for empty in ["", " ", "\n\t  ", "\u{feff}"] {
            assert_eq!(validate(empty, None), Err(ChannelError::EmptyContent), "{empty:?}");
        }
        // Trimmed exactly like ChatRoom (and JavaScript's trim): the BOM goes too.
        assert_eq!(validate("\u{feff} hi\u{a0}", None).map(|p| p.content), Ok("hi".into()));
        assert_eq!(validate("x", Some(String::new())), Err(ChannelError::InvalidId));
        assert_eq!(validate("x", Some("i".repeat(129))), Err(ChannelError::InvalidId));
        assert!(validate("x", Some("i".repeat(128))).is_ok());
    }

    #[test]
    fn bad_websocket_frames_leave_the_channel_unchanged() {
        let mut c = Channel::default();
        send(&mut c, "a", "first", 1);
        typing(&mut c, "a", true, 2);
        let in_band = [
            (r#"{"type":"message","content":"   "}"#, "empty_content"),
            (r#"{"type":"message","content":"x","id":""}"#, "invalid_id"),
        ];
        for (text, code) in in_band {
            assert!(matches!(rejected(&mut c, text), Reject::InBand { code: got, .. } if got == code), "{text}");
        }
        let long = serde_json::json!({"type": "message", "content": "x".repeat(MAX_CONTENT_CHARS + 1)}).to_string();
        assert!(matches!(rejected(&mut c, &long), Reject::InBand { code: "content_too_long", .. }));
        let closes = [
            ("nope", 1007),
            (r#"{"type":"message","content":5}"#, 1007),
            (r#"{"type":"message"}"#, 1007),
            (r#"{"type":"message","content":"x","id":3}"#, 1007),
            (r#"{"type":"typing","isTyping":"true"}"#, 1007),
            (r#"{"type":"typing"}"#, 1007),
            (r#"{"type":"presence_update","status":"away"}"#, 1008),
        ];
        for (text, code) in closes {
            assert!(matches!(rejected(&mut c, text), Reject::Close { code: got, .. } if got == code), "{text}");
        }
        let huge = serde_json::json!({"type": "message", "content": "x".repeat(MAX_FRAME_BYTES)}).to_string();
        assert!(matches!(rejected(&mut c, &huge), Reject::Close { code: 1009, .. }));
    }

    #[test]
    fn http_post_bodies() {
        assert_eq!(parse_post_body(r#"{"content":" hi ","id":"k"}"#), Ok(Post { content: "hi".into(), client_id: Some("k".into()) }));
        assert_eq!(parse_post_body(r#"{"content":"hi","extra":1}"#), Ok(Post { content: "hi".into(), client_id: None }));
        assert_eq!(parse_post_body(r#"{"content":"hi","id":null}"#), Err(ChannelError::WrongType("id")));
        let status = |body: &str| parse_post_body(body).map_err(|e| (e.to_api().status, e.code()));
        for bad in ["", "nope", "[]", "\"x\"", "null"] {
            assert_eq!(status(bad), Err((400, "invalid_body")), "{bad}");
        }
        assert_eq!(status("{}"), Err((400, "invalid_body")));
        assert_eq!(status(r#"{"content":1}"#), Err((400, "invalid_body")));
        assert_eq!(status(r#"{"content":"x","id":7}"#), Err((400, "invalid_body")));
        assert_eq!(status(r#"{"content":"  "}"#), Err((422, "empty_content")));
        assert_eq!(status(r#"{"content":"x","id":""}"#), Err((422, "invalid_id")));
        let long = serde_json::json!({"content": "x".repeat(MAX_CONTENT_CHARS + 1)}).to_string();
        assert_eq!(status(&long), Err((422, "content_too_long")));
        let huge = serde_json::json!({"content": "x".repeat(MAX_FRAME_BYTES)}).to_string();
        assert_eq!(status(&huge), Err((413, "payload_too_large")));
        assert_eq!(
            ChannelError::WrongType("content").to_api().body(),
            r#"{"error":{"code":"invalid_body","message":"content must be a string"}}"#
        );
    }

    #[test]
    fn typing_expires_exactly_3000_ms_after_the_last_refresh() {
        let mut c = Channel::default();
        let out = typing(&mut c, "a", true, 1_000);
        assert_eq!(out.to_all, vec![r#"{"type":"typing","users":["a"]}"#]);
        assert!(out.typing_changed && out.timers_changed);
        assert_eq!(c.poll_timeout(), Some(4_000));

        let early = c.on_alarm(3_999, MAX);
        assert_eq!(early, Outcome::default());
        assert_eq!(c.typing().keys().collect::<Vec<_>>(), ["a"]);

        let out = c.on_alarm(4_000, MAX);
        assert_eq!(out.to_all, vec![r#"{"type":"typing","users":[]}"#]);
        assert!(out.typing_changed && out.timers_changed);
        assert!(c.typing().is_empty());
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn refresh_extends_and_still_broadcasts() {
        let mut c = Channel::default();
        typing(&mut c, "a", true, 0);
        let out = typing(&mut c, "a", true, 2_000);
        assert_eq!(out.to_all, vec![r#"{"type":"typing","users":["a"]}"#]);
        assert_eq!(c.poll_timeout(), Some(5_000));
        assert!(c.on_alarm(3_000, MAX).to_all.is_empty());
        assert!(c.on_alarm(4_999, MAX).to_all.is_empty());
        assert_eq!(c.on_alarm(5_000, MAX).to_all, vec![r#"{"type":"typing","users":[]}"#]);
    }

    #[test]
    fn explicit_stop_removes_at_once_and_only_broadcasts_changes() {
        let mut c = Channel::default();
        typing(&mut c, "b", true, 0);
        typing(&mut c, "a", true, 100);
        assert_eq!(c.typing_frame(), r#"{"type":"typing","users":["a","b"]}"#);
        let out = typing(&mut c, "b", false, 200);
        assert_eq!(out.to_all, vec![r#"{"type":"typing","users":["a"]}"#]);
        assert_eq!(c.poll_timeout(), Some(3_100), "timer follows the earliest remaining flag");
        let before = c.clone();
        assert_eq!(typing(&mut c, "b", false, 300), Outcome::default());
        assert_eq!(c, before);
    }

    #[test]
    fn late_alarm_and_stale_flags_are_swept_by_the_next_event() {
        let mut c = Channel::default();
        typing(&mut c, "a", true, 0);
        // the alarm has not run yet at 3500: a's flag is already gone from b's broadcast
        let out = typing(&mut c, "b", true, 3_500);
        assert_eq!(out.to_all, vec![r#"{"type":"typing","users":["b"]}"#]);
        assert_eq!(c.poll_timeout(), Some(6_500));
        // a flag restored after eviction is expired by a spurious alarm too
        let mut woke = Channel::restore(0, 0, [("z".to_string(), 10)].into(), Schedule::default());
        let out = woke.on_alarm(50, MAX);
        assert_eq!(out.to_all, vec![r#"{"type":"typing","users":[]}"#]);
        assert!(out.typing_changed);
    }

    #[test]
    fn participants_change_only_with_the_distinct_user_set() {
        let c = Channel::default();
        let first = c.on_connect("b", &users(&[]));
        assert_eq!(first.to_self, vec![r#"{"type":"participants","users":["b"]}"#]);
        assert_eq!(first.to_others, first.to_self);

        let joined = c.on_connect("a", &users(&["b"]));
        assert_eq!(joined.to_self, vec![r#"{"type":"participants","users":["a","b"]}"#]);
        assert_eq!(joined.to_others, joined.to_self);

        let second_device = c.on_connect("a", &users(&["a", "b"]));
        assert_eq!(second_device.to_self, vec![r#"{"type":"participants","users":["a","b"]}"#]);
        assert!(second_device.to_others.is_empty());
    }

    /// `n` distinct users `u000`, `u001`, … (sorted as numbered).
    fn crowd(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("u{i:03}")).collect()
    }

    fn list_of(set: &BTreeSet<String>) -> String {
        users_frame("participants", set.iter().map(String::as_str))
    }

    #[test]
    fn joins_up_to_the_list_max_send_the_full_list_then_deltas() {
        let c = Channel::default();
        // 99 → 100: still the full list, byte for byte, to the others and to the new socket.
        let room = crowd(99);
        let out = c.on_connect("zed", &room);
        let mut after = room.clone();
        after.insert("zed".into());
        assert_eq!(after.len(), PARTICIPANTS_LIST_MAX);
        assert_eq!(out.to_others, vec![list_of(&after)]);
        assert_eq!(out.to_self, vec![list_of(&after)]);
        // 100 → 101: the others get a delta; the new socket still gets the whole list.
        let out = c.on_connect("zoe", &after);
        assert_eq!(out.to_others, vec![r#"{"type":"participant_joined","userId":"zoe","count":101}"#]);
        let mut full = after.clone();
        full.insert("zoe".into());
        assert_eq!(out.to_self, vec![list_of(&full)]);
        assert!(out.to_all.is_empty() && !out.typing_changed && !out.timers_changed);
        // 101 → 102: a delta with the new count.
        let out = c.on_connect("a-first", &full);
        assert_eq!(out.to_others, vec![r#"{"type":"participant_joined","userId":"a-first","count":102}"#]);
    }

    #[test]
    fn another_socket_of_a_participant_in_a_large_room_tells_nobody() {
        let c = Channel::default();
        let room = crowd(150);
        let out = c.on_connect("u007", &room);
        assert!(out.to_others.is_empty(), "{:?}", out.to_others);
        assert_eq!(out.to_self, vec![list_of(&room)]);
        let mut c = Channel::default();
        assert_eq!(c.on_close("u007", &room, 10), Outcome::default(), "a close that leaves another socket");
    }

    #[test]
    fn leaves_above_the_list_max_send_deltas_and_back_at_it_the_full_list() {
        let mut c = Channel::default();
        // 102 → 101: a delta.
        let mut room = crowd(101);
        let out = c.on_close("gone", &room, 10);
        assert_eq!(out.to_others, vec![r#"{"type":"participant_left","userId":"gone","count":101}"#]);
        assert!(out.to_self.is_empty() && out.to_all.is_empty());
        // 101 → 100: the full list again.
        room.remove("u100");
        let out = c.on_close("u100", &room, 20);
        assert_eq!(room.len(), PARTICIPANTS_LIST_MAX);
        assert_eq!(out.to_others, vec![list_of(&room)]);
    }

    #[test]
    fn a_large_room_leave_still_clears_typing_after_the_delta() {
        let mut c = Channel::default();
        typing(&mut c, "gone", true, 0);
        let out = c.on_close("gone", &crowd(120), 10);
        assert_eq!(
            out.to_others,
            vec![r#"{"type":"participant_left","userId":"gone","count":120}"#.to_string(), r#"{"type":"typing","users":[]}"#.to_string()]
        );
        assert!(out.typing_changed);
    }

    #[test]
    fn deltas_escape_the_user_id_like_any_json() {
        let frame = participants_change("a\"b", true, crowd(101).iter().map(String::as_str));
        let v: Value = serde_json::from_str(&frame).unwrap_or_default();
        assert_eq!(v["userId"], "a\"b");
        assert_eq!(v["count"], 101);
        assert_eq!(sequence_of(&frame), None, "a delta is not sequenced");
    }

    #[test]
    fn only_the_last_close_leaves_and_stops_typing() {
        let mut c = Channel::default();
        typing(&mut c, "a", true, 0);
        let before = c.clone();
        assert_eq!(c.on_close("a", &users(&["a", "b"]), 10), Outcome::default());
        assert_eq!(c, before);

        let out = c.on_close("a", &users(&["b"]), 20);
        assert_eq!(
            out.to_others,
            vec![r#"{"type":"participants","users":["b"]}"#.to_string(), r#"{"type":"typing","users":[]}"#.to_string()]
        );
        assert!(out.to_all.is_empty() && out.to_self.is_empty());
        assert!(out.typing_changed && out.timers_changed);
        assert_eq!(c.poll_timeout(), None);

        let out = c.on_close("b", &users(&[]), 30);
        assert_eq!(out.to_others, vec![r#"{"type":"participants","users":[]}"#]);
        assert!(!out.typing_changed);
    }

    #[test]
    fn pruning_runs_from_the_alarm_at_most_once_a_minute() {
        let mut c = Channel::default();
        for t in 1..=3 {
            let (_, out) = send(&mut c, "a", "m", t);
            assert!(!out.timers_changed, "within the limit no prune is armed");
        }
        let msg = c.prepare("a", Post { content: "m".into(), client_id: None }, 4).unwrap();
        let out = c.commit(&msg, 4, keep(2));
        assert!(out.timers_changed);
        assert_eq!(c.poll_timeout(), Some(60_004));
        let msg = c.prepare("a", Post { content: "m".into(), client_id: None }, 5).unwrap();
        assert!(!c.commit(&msg, 5, keep(2)).timers_changed, "an armed prune is not postponed");

        assert_eq!(c.on_alarm(60_003, 2), Outcome::default());
        let out = c.on_alarm(60_004, 2);
        assert_eq!(out.prune_through, Some(3));
        assert!(out.timers_changed);
        assert_eq!((c.pruned_through(), c.poll_timeout()), (3, None));

        let msg = c.prepare("a", Post { content: "m".into(), client_id: None }, 60_010).unwrap();
        c.commit(&msg, 60_010, keep(2));
        assert_eq!(c.poll_timeout(), Some(120_010), "next prune a full minute later");
        assert_eq!(c.on_alarm(120_010, 2).prune_through, Some(4));
    }

    #[test]
    fn replay_after_pruning_needs_a_resync() {
        let c = Channel::restore(10, 4, BTreeMap::new(), Schedule::default());
        assert_eq!(c.replay_plan(None), Replay::Nothing);
        assert_eq!(c.replay_plan(Some(4)), Replay::After(4));
        assert_eq!(c.replay_plan(Some(3)), Replay::Resync { latest_seq: 10 });
        assert_eq!(c.replay_plan(Some(10)), Replay::Nothing);
        assert_eq!(c.replay_plan(Some(11)), Replay::Resync { latest_seq: 10 });
    }

    #[test]
    fn history_pages_in_sequence_order() {
        assert_eq!(HistoryQuery::parse(None, None), Ok(HistoryQuery { after: 0, limit: 50 }));
        assert_eq!(HistoryQuery::parse(Some("12"), Some("500")), Ok(HistoryQuery { after: 12, limit: 100 }));
        assert_eq!(HistoryQuery::parse(None, Some("2")).unwrap().fetch_limit(), 3);
        for (after, limit) in [(Some("-1"), None), (Some("x"), None), (None, Some("0")), (None, Some("abc"))] {
            assert_eq!(HistoryQuery::parse(after, limit).map_err(|e| e.status), Err(400));
        }
        let row = |sequence: i64| ChannelMessage {
            sequence,
            user_id: "u".into(),
            content: format!("m{sequence}"),
            timestamp: 0,
            client_id: None,
        };
        let counts = reactions::counts_from_rows(vec![(5, "👍".to_string(), 2), (5, "🎉".to_string(), 1), (9, "👍".to_string(), 1)]);
        assert_eq!(
            history_body(vec![row(4), row(5), row(6)], &counts, 2),
            concat!(
                r#"{"messages":[{"sequence":4,"userId":"u","content":"m4","timestamp":"1970-01-01T00:00:00.000Z","id":null,"reactions":{}},"#,
                r#"{"sequence":5,"userId":"u","content":"m5","timestamp":"1970-01-01T00:00:00.000Z","id":null,"reactions":{"🎉":1,"👍":2}}],"nextAfter":5}"#
            )
        );
        assert!(history_body(vec![row(4), row(5)], &counts, 2).ends_with(r#""nextAfter":null}"#));
        assert_eq!(history_body(vec![], &counts, 50), r#"{"messages":[],"nextAfter":null}"#);
        assert_eq!(history_range(&[row(4), row(5), row(6)]), Some((3, 6)));
        assert_eq!(history_range(&[]), None);
    }

    #[test]
    fn max_messages_setting() {
        assert_eq!(parse_max_messages(None), DEFAULT_MAX_MESSAGES);
        assert_eq!(parse_max_messages(Some(" 500 ")), 500);
        for bad in ["0", "-3", "x", ""] {
            assert_eq!(parse_max_messages(Some(bad)), DEFAULT_MAX_MESSAGES, "{bad}");
        }
    }

    #[test]
    fn message_frames_carry_their_sequence_for_shards() {
        let m = ChannelMessage { sequence: 42, user_id: "u".into(), content: "x".into(), timestamp: 0, client_id: None };
        assert_eq!(sequence_of(&m.frame()), Some(42));
        assert_eq!(sequence_of(r#"{"type":"typing","users":["a"]}"#), None);
        assert_eq!(sequence_of(r#"{"type":"participants","users":[]}"#), None);
        assert_eq!(sequence_of(r#"{"type":"reaction","sequence":3}"#), None);
        assert_eq!(sequence_of("nope"), None);
    }

    #[test]
    fn ping_gets_pong() {
        let mut c = Channel::default();
        assert_eq!(done(c.on_message("a", r#"{"type": "ping"}"#, 1)).to_self, vec![r#"{"type":"pong"}"#]);
        assert_eq!(c, Channel::default());
    }

    #[test]
    fn attachment_round_trips() {
        let conn = ChannelConn { user_id: "u".into(), user_name: None };
        let json = serde_json::to_string(&conn).unwrap();
        assert_eq!(json, r#"{"userId":"u"}"#);
        assert_eq!(serde_json::from_str::<ChannelConn>(&json).unwrap(), conn);
    }

    #[test]
    fn reconcile_drops_typing_of_users_without_a_socket() {
        let typing: BTreeMap<String, Millis> = [("ghost".to_string(), 10_000), ("bob".to_string(), 9_000)].into_iter().collect();
        let mut timers = Schedule::default();
        timers.set(TYPING_TIMER, 9_000);
        let mut c = Channel::restore(5, 0, typing, timers);
        let live: BTreeSet<String> = ["bob".to_string()].into_iter().collect();
        let outcome = c.reconcile(&live, 1_000);
        assert_eq!(outcome.to_all, vec![r#"{"type":"typing","users":["bob"]}"#.to_string()]);
        assert!(outcome.typing_changed);
        assert_eq!(c.typing().keys().cloned().collect::<Vec<_>>(), vec!["bob".to_string()]);
        assert_eq!(c.reconcile(&live, 1_000), Outcome::default());
        // Nobody left: the typing timer goes too.
        let out = c.reconcile(&BTreeSet::new(), 1_000);
        assert!(out.timers_changed);
        assert_eq!(c.timers().get(TYPING_TIMER), None);
    }

    #[test]
    fn outcomes_become_effects_in_the_kits_order() {
        let mut c = Channel::default();
        let Handled::Done(outcome) = c.on_message("u", r#"{"type":"typing","isTyping":true}"#, 1_000).unwrap() else {
            panic!("typing is not a post")
        };
        let e = c.effects(outcome);
        // The typing table is rewritten, everyone hears the list, the typing timer moves.
        assert_eq!(e.store.len(), 2);
        assert_eq!(e.frames_to(&To::All), vec![r#"{"type":"typing","users":["u"]}"#]);
        assert!(e.timers.contains(&crate::effects::Timer::Set { name: TYPING_TIMER.into(), at: 1_000 + TYPING_TTL_MS }));
        assert!(e.timers.contains(&crate::effects::Timer::Cancel { name: PRUNE_TIMER.into() }));
        // A post: its row and the new latest sequence, then the broadcast.
        let message = c.prepare("u", Post { content: "hi".into(), client_id: None }, 2_000).unwrap();
        let e = c.post_effects(&message, 2_000, keep(100));
        assert_eq!(e.store.len(), 2);
        assert_eq!(e.frames_to(&To::All), vec![message.frame().as_str()]);
        assert_eq!(c.latest_seq(), 1);
    }

    /// The reaction tables (and message rows) as the adapter would hold them: every statement
    /// the core emits is applied here, so the tests check what would really be stored.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    struct Tables {
        messages: BTreeSet<i64>,
        reactors: BTreeSet<(i64, String, String)>,
        counts: BTreeMap<(i64, String), i64>,
    }

    fn int(v: Option<&crate::effects::Value>) -> i64 {
        match v {
            Some(crate::effects::Value::Int(n)) => *n,
            other => panic!("expected an integer bind, got {other:?}"),
        }
    }
    fn text(v: Option<&crate::effects::Value>) -> String {
        match v {
            Some(crate::effects::Value::Text(t)) => t.clone(),
            other => panic!("expected a text bind, got {other:?}"),
        }
    }

    impl Tables {
        fn apply(&mut self, e: &Effects) {
            for st in &e.store {
                let b = &st.binds;
                match st.sql {
                    reactions::INSERT_REACTOR => {
                        let row = (int(b.first()), text(b.get(1)), text(b.get(2)));
                        assert!(self.messages.contains(&row.0), "reaction stored for a missing message {row:?}");
                        assert!(self.reactors.insert(row), "primary key violated: a user reacted twice");
                    }
                    reactions::DELETE_REACTOR => {
                        assert!(self.reactors.remove(&(int(b.first()), text(b.get(1)), text(b.get(2)))), "deleted a missing row");
                    }
                    reactions::SET_COUNT => {
                        self.counts.insert((int(b.first()), text(b.get(1))), int(b.get(2)));
                    }
                    reactions::DELETE_COUNT => {
                        self.counts.remove(&(int(b.first()), text(b.get(1))));
                    }
                    reactions::PRUNE_REACTORS => {
                        let n = int(b.first());
                        self.reactors.retain(|r| r.0 > n);
                    }
                    reactions::PRUNE_COUNTS => {
                        let n = int(b.first());
                        self.counts.retain(|k, _| k.0 > n);
                    }
                    "DELETE FROM messages WHERE sequence <= ?" => {
                        let n = int(b.first());
                        self.messages.retain(|s| *s > n);
                    }
                    sql if sql.starts_with("INSERT INTO messages") => {
                        self.messages.insert(int(b.first()));
                    }
                    _ => {}
                }
            }
        }

        /// What the adapter reads before [`Channel::react`].
        fn current(&self, sequence: i64, emoji: &str, user: &str) -> Current {
            Current {
                counts: self.counts.iter().filter(|((s, _), _)| *s == sequence).map(|((_, e), n)| (e.clone(), *n)).collect(),
                mine: self.reactors.contains(&(sequence, emoji.to_owned(), user.to_owned())),
            }
        }

        /// `reaction_counts` must equal `reactions` grouped by (sequence, emoji).
        fn check_consistent(&self) {
            let mut grouped: BTreeMap<(i64, String), i64> = BTreeMap::new();
            for (s, e, _) in &self.reactors {
                *grouped.entry((*s, e.clone())).or_default() += 1;
            }
            assert_eq!(grouped, self.counts, "tallies drifted from the reactor rows");
        }
    }

    /// One socket frame through the whole path (decode → read → react), applied to `tables`.
    fn toggle(c: &mut Channel, tables: &mut Tables, user: &str, sequence: i64, emoji: &str, on: bool) -> Result<Effects, Reject> {
        let frame = serde_json::json!({"type": "react", "sequence": sequence, "emoji": emoji, "on": on}).to_string();
        let react = match c.on_message(user, &frame, 1)? {
            Handled::React(r) => r,
            other => panic!("expected React, got {other:?}"),
        };
        let effects = c.react(user, &react, &tables.current(react.sequence, &react.emoji, user))?;
        tables.apply(&effects);
        Ok(effects)
    }

    fn post_into(c: &mut Channel, tables: &mut Tables, now: Millis, retention: Retention) -> i64 {
        let m = c.prepare("poster", Post { content: "m".into(), client_id: None }, now).unwrap();
        let e = c.post_effects(&m, now, retention);
        tables.apply(&e);
        m.sequence
    }

    fn reaction_of(e: &Effects) -> (To, Value) {
        let [send] = e.sends.as_slice() else { panic!("one frame expected: {e:?}") };
        (send.to.clone(), serde_json::from_str(&send.frame).unwrap())
    }

    #[test]
    fn reactions_broadcast_exact_counts_and_a_user_counts_once() {
        let (mut c, mut t) = (Channel::default(), Tables::default());
        let seq = post_into(&mut c, &mut t, 1, keep(MAX));
        let e = toggle(&mut c, &mut t, "alice", seq, "👍", true).unwrap();
        assert_eq!(e.frames_to(&To::All), vec![r#"{"type":"reaction","sequence":1,"emoji":"👍","userId":"alice","on":true,"count":1}"#]);
        let e = toggle(&mut c, &mut t, "bob", seq, "👍", true).unwrap();
        assert_eq!(reaction_of(&e).1["count"], 2);
        // alice again: unchanged, only she hears it, nothing stored.
        let before = t.clone();
        let e = toggle(&mut c, &mut t, "alice", seq, "👍", true).unwrap();
        assert!(e.store.is_empty());
        assert_eq!(reaction_of(&e), (To::This, serde_json::json!({"type":"reaction","sequence":1,"emoji":"👍","userId":"alice","on":true,"count":2})));
        assert_eq!(t, before);
        // Off decrements; off again changes nothing.
        assert_eq!(reaction_of(&toggle(&mut c, &mut t, "bob", seq, "👍", false).unwrap()), (To::All, serde_json::json!({"type":"reaction","sequence":1,"emoji":"👍","userId":"bob","on":false,"count":1})));
        assert_eq!(reaction_of(&toggle(&mut c, &mut t, "bob", seq, "👍", false).unwrap()).0, To::This);
        // 50 users on, 25 off: exactly 50, then 25.
        for u in 0..50 {
            toggle(&mut c, &mut t, &format!("u{u}"), seq, "🎉", true).unwrap();
        }
        assert_eq!(t.counts.get(&(seq, "🎉".to_string())), Some(&50));
        let mut last = Value::Null;
        for u in 0..25 {
            last = reaction_of(&toggle(&mut c, &mut t, &format!("u{u}"), seq, "🎉", false).unwrap()).1;
        }
        assert_eq!((last["count"].clone(), t.counts.get(&(seq, "🎉".to_string()))), (serde_json::json!(25), Some(&25)));
        t.check_consistent();
        // The core's own state never changes on a reaction.
        assert_eq!(c.latest_seq(), 1);
    }

    #[test]
    fn bad_reactions_change_nothing() {
        let (mut c, mut t) = (Channel::default(), Tables::default());
        for now in 1..=3 {
            post_into(&mut c, &mut t, now, keep(MAX));
        }
        toggle(&mut c, &mut t, "a", 2, "👍", true).unwrap();
        let (core_before, tables_before) = (c.clone(), t.clone());
        let in_band = [
            (serde_json::json!({"type":"react","sequence":2,"emoji":"a","on":true}), "invalid_emoji"),
            (serde_json::json!({"type":"react","sequence":2,"emoji":"👍👍","on":true}), "invalid_emoji"),
            (serde_json::json!({"type":"react","sequence":2,"emoji":"","on":true}), "invalid_emoji"),
            (serde_json::json!({"type":"react","sequence":2,"emoji":" 👍","on":true}), "invalid_emoji"),
            (serde_json::json!({"type":"react","sequence":2,"emoji":"👍","on":false,"extra":1}), ""),
            // invalid emoji is reported before the sequence
            (serde_json::json!({"type":"react","sequence":99,"emoji":"x","on":true}), "invalid_emoji"),
            (serde_json::json!({"type":"react","sequence":4,"emoji":"👍","on":true}), "unknown_sequence"),
            (serde_json::json!({"type":"react","sequence":0,"emoji":"👍","on":true}), "unknown_sequence"),
            (serde_json::json!({"type":"react","sequence":-1,"emoji":"👍","on":true}), "unknown_sequence"),
            (serde_json::json!({"type":"react","sequence":i64::MAX,"emoji":"👍","on":false}), "unknown_sequence"),
        ];
        for (frame, code) in in_band {
            if code.is_empty() {
                continue; // the control case: unknown fields are ignored, it is a valid frame
            }
            assert!(matches!(rejected(&mut c, &frame.to_string()), Reject::InBand { code: got, .. } if got == code), "{frame}");
        }
        let closes = [
            r#"{"type":"react","sequence":"2","emoji":"👍","on":true}"#,
            r#"{"type":"react","sequence":2.5,"emoji":"👍","on":true}"#,
            r#"{"type":"react","sequence":1e30,"emoji":"👍","on":true}"#,
            r#"{"type":"react","sequence":null,"emoji":"👍","on":true}"#,
            r#"{"type":"react","emoji":"👍","on":true}"#,
            r#"{"type":"react","sequence":2,"emoji":7,"on":true}"#,
            r#"{"type":"react","sequence":2,"on":true}"#,
            r#"{"type":"react","sequence":2,"emoji":"👍","on":"true"}"#,
            r#"{"type":"react","sequence":2,"emoji":"👍","on":null}"#,
            r#"{"type":"react","sequence":2,"emoji":"👍"}"#,
        ];
        for text in closes {
            assert!(matches!(rejected(&mut c, text), Reject::Close { code: 1007, .. }), "{text}");
        }
        let long = serde_json::json!({"type":"react","sequence":2,"emoji":"👍".repeat(20_000),"on":true}).to_string();
        assert!(matches!(rejected(&mut c, &long), Reject::Close { code: 1009, .. }));
        assert!(matches!(rejected(&mut c, r#"{"type":"reaction","sequence":2,"emoji":"👍","on":true}"#), Reject::Close { code: 1008, .. }));
        assert_eq!((c, t), (core_before, tables_before));
    }

    #[test]
    fn a_twenty_first_emoji_is_refused_and_changes_nothing() {
        let (mut c, mut t) = (Channel::default(), Tables::default());
        let seq = post_into(&mut c, &mut t, 1, keep(MAX));
        for e in reactions::tests::EMOJI.iter().take(reactions::MAX_EMOJI_PER_MESSAGE) {
            toggle(&mut c, &mut t, "a", seq, e, true).unwrap();
        }
        let before = t.clone();
        let err = toggle(&mut c, &mut t, "b", seq, "🫠", true).unwrap_err();
        assert!(matches!(err, Reject::InBand { code: "too_many_reactions", .. }), "{err:?}");
        assert_eq!(t, before);
        // Existing emoji still count; once one is gone a new one fits.
        assert_eq!(reaction_of(&toggle(&mut c, &mut t, "b", seq, "👍", true).unwrap()).1["count"], 2);
        toggle(&mut c, &mut t, "a", seq, "👎", false).unwrap();
        assert_eq!(reaction_of(&toggle(&mut c, &mut t, "b", seq, "🫠", true).unwrap()).1["count"], 1);
        // The cap is per message.
        let other = post_into(&mut c, &mut t, 2, keep(MAX));
        toggle(&mut c, &mut t, "b", other, "🤔", true).unwrap();
        t.check_consistent();
    }

    #[test]
    fn pruning_removes_reactions_with_their_messages() {
        let (mut c, mut t) = (Channel::default(), Tables::default());
        for now in 1..=5 {
            post_into(&mut c, &mut t, now, keep(2));
        }
        for seq in [1, 3, 4, 5] {
            toggle(&mut c, &mut t, "a", seq, "👍", true).unwrap();
            toggle(&mut c, &mut t, "b", seq, "🔥", true).unwrap();
        }
        let out = c.on_alarm(c.poll_timeout().unwrap(), 2);
        assert_eq!(out.prune_through, Some(3));
        t.apply(&c.effects(out));
        assert_eq!(t.messages, [4, 5].into());
        assert!(t.reactors.iter().all(|r| r.0 >= 4) && t.counts.keys().all(|k| k.0 >= 4), "{t:?}");
        assert_eq!(t.counts.len(), 4);
        t.check_consistent();
        let before = t.clone();
        for seq in [1, 3] {
            let err = toggle(&mut c, &mut t, "a", seq, "👍", false).unwrap_err();
            assert!(matches!(err, Reject::InBand { code: "unknown_sequence", .. }), "{err:?}");
        }
        assert_eq!(t, before);
        // A core restored after the prune still refuses them (the check is pruned_through).
        let woke = Channel::restore(c.latest_seq(), c.pruned_through(), BTreeMap::new(), Schedule::default());
        assert!(woke.react("a", &React::new(3, "👍".into(), true).unwrap(), &Current::default()).is_err());
        assert!(woke.react("a", &React::new(4, "👍".into(), true).unwrap(), &t.current(4, "👍", "a")).is_ok());
    }

    #[test]
    fn replay_frames_carry_reactions_live_frames_do_not() {
        let m = ChannelMessage { sequence: 2, user_id: "u".into(), content: "hi".into(), timestamp: 0, client_id: None };
        let counts = reactions::counts_from_rows(vec![(2, "👍🏽".to_string(), 3)]);
        assert_eq!(
            m.replay_frame(&counts),
            r#"{"type":"message","sequence":2,"userId":"u","content":"hi","timestamp":"1970-01-01T00:00:00.000Z","id":null,"reactions":{"👍🏽":3}}"#
        );
        assert!(m.replay_frame(&ReactionCounts::new()).ends_with(r#""id":null,"reactions":{}}"#));
        assert!(!m.frame().contains("reactions"));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Post,
        /// `back`: how far behind the latest sequence (-1: one past it; 99: 0, never a sequence).
        React { user: u8, back: i64, emoji: usize, on: bool },
        Prune,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            1 => Just(Step::Post),
            1 => Just(Step::Prune),
            60 => (0u8..12, prop_oneof![10 => Just(0i64), 4 => 1i64..3, 2 => 3i64..9, 1 => Just(-1i64), 1 => Just(99i64)],
                   0usize..reactions::tests::EMOJI.len(), prop_oneof![2 => Just(true), 1 => Just(false)])
                .prop_map(|(user, back, emoji, on)| Step::React { user, back, emoji, on }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Random toggles, posts and prunes against a plain model (who is "on" per message and
        /// emoji): every stored tally and every frame's count is the number of distinct users on;
        /// errors are exactly the unknown sequences and the 21st emoji, and change nothing.
        #[test]
        fn counts_follow_the_model(steps in proptest::collection::vec(step(), 1..300)) {
            let (mut c, mut t) = (Channel::default(), Tables::default());
            let mut model: BTreeMap<(i64, String), BTreeSet<String>> = BTreeMap::new();
            let mut now = 0;
            while now < 6 {
                now += 1;
                post_into(&mut c, &mut t, now, keep(6));
            }
            for step in steps {
                now += 1;
                match step {
                    Step::Post => { post_into(&mut c, &mut t, now, keep(6)); }
                    Step::Prune => {
                        now += PRUNE_INTERVAL_MS;
                        let out = c.on_alarm(now, 6);
                        t.apply(&c.effects(out));
                        model.retain(|(s, _), _| *s > c.pruned_through());
                    }
                    Step::React { user, back, emoji, on } => {
                        let sequence = if back == 99 { 0 } else { c.latest_seq() - back };
                        let user = format!("user{user}");
                        let emoji = reactions::tests::EMOJI[emoji];
                        let known = t.messages.contains(&sequence);
                        let distinct = model.iter().filter(|((s, _), users)| *s == sequence && !users.is_empty()).count();
                        let users = model.get(&(sequence, emoji.to_owned())).cloned().unwrap_or_default();
                        let full = on && users.is_empty() && distinct >= reactions::MAX_EMOJI_PER_MESSAGE;
                        let before = t.clone();
                        match toggle(&mut c, &mut t, &user, sequence, emoji, on) {
                            Err(Reject::InBand { code, .. }) => {
                                proptest::prop_assert_eq!(code, if known { "too_many_reactions" } else { "unknown_sequence" });
                                proptest::prop_assert!(!known || full);
                                proptest::prop_assert_eq!(&t, &before);
                            }
                            Err(other) => proptest::prop_assert!(false, "unexpected {:?}", other),
                            Ok(e) => {
                                proptest::prop_assert!(known && !full);
                                let set = model.entry((sequence, emoji.to_owned())).or_default();
                                let changed = if on { set.insert(user.clone()) } else { set.remove(&user) };
                                let (to, frame) = reaction_of(&e);
                                proptest::prop_assert_eq!(to, if changed { To::All } else { To::This });
                                proptest::prop_assert_eq!(frame["count"].as_i64(), Some(set.len() as i64));
                                proptest::prop_assert_eq!(&frame["on"], &Value::Bool(on));
                                proptest::prop_assert_eq!(e.store.is_empty(), !changed);
                            }
                        }
                    }
                }
                t.check_consistent();
                let expected: BTreeMap<(i64, String), i64> =
                    model.iter().filter(|(_, u)| !u.is_empty()).map(|(k, u)| (k.clone(), u.len() as i64)).collect();
                proptest::prop_assert_eq!(&t.counts, &expected);
                for seq in &t.messages {
                    proptest::prop_assert!(t.counts.keys().filter(|(s, _)| s == seq).count() <= reactions::MAX_EMOJI_PER_MESSAGE);
                }
            }
        }

        /// The emoji rule never panics and only passes single grapheme clusters.
        #[test]
        fn the_emoji_rule_is_total(s in "\\PC{0,6}|[\u{1F300}-\u{1FAFF}\u{200D}\u{FE0F}\u{20E3}\u{1F3FB}-\u{1F3FF}\u{1F1E6}-\u{1F1FF}\u{E0020}-\u{E007F}#0-9a ]{0,8}") {
            use unicode_segmentation::UnicodeSegmentation;
            if reactions::is_reaction_emoji(&s) {
                proptest::prop_assert_eq!(s.graphemes(true).count(), 1);
                proptest::prop_assert!(s.len() <= reactions::MAX_EMOJI_BYTES);
            }
        }
    }
}
