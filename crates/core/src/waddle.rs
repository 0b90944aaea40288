//! Waddle core (docs/protocol.md §6.4): one object per community, holding every member's presence.
//!
//! The core keeps the persisted presence table in memory (the adapter loads it with
//! [`Waddle::from_rows`] in the constructor) and turns connects, frames and closes into an
//! [`Outcome`]: the row to upsert, frames for the originating socket and frames for the others.
//! Typing is relayed, never stored.
//!
//! Wire decisions (docs/protocol.md leaves them open):
//! - `lastSeen` is a number of milliseconds since the epoch (what the design seed stores), set on
//!   every status change: connect, `presence_update`, last close.
//! - `presence_state.users` and the HTTP view are sorted by user id, and include the connecting
//!   user already `online`.
//! - "Others" means every socket of the waddle except the originating one, so a user's other
//!   devices also learn their new status.
//! - `presence_update` is broadcast on every accepted status change request, even when it
//!   repeats the current status (it still moves `lastSeen`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::effects::Effects;
use crate::error::ApiError;
use crate::frame::{decode, Reject, MAX_FRAME_BYTES};
use crate::names::is_valid_name;
use crate::time::Millis;

/// The `type`s a client may send (`ping` is normally answered by the runtime's auto-response;
/// a differently spaced ping reaches the object and is answered here).
pub const CLIENT_TYPES: [&str; 3] = ["presence_update", "typing", "ping"];

/// Per-socket attachment. Identity comes from the Worker's `X-User-Id` / `X-User-Name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaddleConn {
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
}

/// A member's presence status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Away,
    Busy,
    Offline,
}

impl Status {
    pub const ALL: [Status; 4] = [Status::Online, Status::Away, Status::Busy, Status::Offline];

    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Busy => "busy",
            Status::Offline => "offline",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// One member's persisted presence (row `user_id, status, last_seen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub status: Status,
    pub last_seen: Millis,
}

impl Presence {
    /// Rebuild a stored row; an unreadable status counts as `offline` rather than failing the wake.
    pub fn from_row(status: &str, last_seen: Millis) -> Self {
        Self { status: Status::parse(status).unwrap_or(Status::Offline), last_seen }
    }
}

/// What the adapter does after one event, in this order: upsert `store`, then send `to_self`
/// to the originating socket and `to_others` to every other socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub store: Option<(String, Presence)>,
    pub to_self: Vec<String>,
    pub to_others: Vec<String>,
}

impl Outcome {
    /// As the kit's effects: the presence row, then `to_self`, then `to_others`.
    pub fn into_effects(self) -> Effects {
        let mut effects = Effects::none();
        if let Some((user_id, presence)) = self.store {
            effects = effects.store(UPSERT_PRESENCE, vec![user_id.into(), presence.status.as_str().into(), presence.last_seen.into()]);
        }
        for frame in self.to_self {
            effects = effects.to_self(frame);
        }
        for frame in self.to_others {
            effects = effects.to_others(frame);
        }
        effects
    }
}

crate::ops! {
    /// Waddle's operations (`/ws/waddle/:id`, `/api/waddle/:id/{presence,broadcast}`).
    pub enum WaddleOp {
        Socket = "ws" (websocket),
        Presence = "presence",
        Broadcast = "broadcast",
        // Internal, sharded waddles only (docs/sharding.md; no route reaches them).
        /// Primary: a socket is joining a shard (answers `presence_state`).
        ShardJoin = "shard-join",
        /// Primary: a presence change or typing from a shard's socket (already relayed there).
        ShardFrame = "shard-frame",
        /// Primary: a user's last socket left a shard.
        ShardLeave = "shard-leave",
        /// Shard: frames for every socket.
        Deliver = "deliver",
    }
}

/// The Waddle object's tables (the kit adds `_schedule`).
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS waddle (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS presence (user_id TEXT PRIMARY KEY, status TEXT NOT NULL, last_seen INTEGER NOT NULL)",
    crate::shard::SCHEMA[0],
    crate::shard::SCHEMA[1],
    crate::shard::SCHEMA[2],
];
/// Store the object's name once (the wake log names it).
pub const REMEMBER_NAME: &str = "INSERT OR IGNORE INTO waddle (id, name) VALUES (1, ?)";
const UPSERT_PRESENCE: &str = "INSERT INTO presence (user_id, status, last_seen) VALUES (?, ?, ?) \
     ON CONFLICT (user_id) DO UPDATE SET status = excluded.status, last_seen = excluded.last_seen";

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    PresenceUpdate {
        status: String,
    },
    Typing {
        #[serde(rename = "channelId")]
        channel_id: String,
        #[serde(rename = "isTyping")]
        is_typing: bool,
    },
    Ping,
}

#[derive(Serialize)]
struct PresenceStateFrame<'a> {
    r#type: &'static str,
    users: Vec<(&'a str, Presence)>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PresenceUpdateFrame<'a> {
    r#type: &'static str,
    user_id: &'a str,
    status: Status,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TypingFrame<'a> {
    r#type: &'static str,
    user_id: &'a str,
    channel_id: &'a str,
    is_typing: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PresenceEntry<'a> {
    user_id: &'a str,
    status: Status,
    last_seen: Millis,
}

#[derive(Serialize)]
struct PresenceView<'a> {
    users: Vec<PresenceEntry<'a>>,
}

/// The presence of every member of one waddle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waddle {
    presence: BTreeMap<String, Presence>,
}

impl Waddle {
    /// Rebuild from the stored presence rows (the constructor runs on every wake).
    pub fn from_rows(rows: impl IntoIterator<Item = (String, Presence)>) -> Self {
        Self { presence: rows.into_iter().collect() }
    }

    pub fn presence_of(&self, user_id: &str) -> Option<Presence> {
        self.presence.get(user_id).copied()
    }

    /// A socket of `conn.user_id` was accepted: it becomes `online`, gets `presence_state`,
    /// and the others get `presence_update`.
    pub fn on_connect(&mut self, conn: &WaddleConn, now: Millis) -> Outcome {
        let mut outcome = self.set_status(&conn.user_id, Status::Online, now);
        outcome.to_self.push(self.presence_state_frame());
        outcome
    }

    /// A text frame from `conn`. `Err` is the rejection to execute (close or in-band error);
    /// on any `Err` nothing changed.
    pub fn on_message(&mut self, conn: &WaddleConn, text: &str, now: Millis) -> Result<Outcome, Reject> {
        match decode::<ClientFrame>(text, &CLIENT_TYPES)? {
            ClientFrame::PresenceUpdate { status } => {
                let status = Status::parse(&status).ok_or_else(|| {
                    Reject::in_band("invalid_status", "status must be online, away, busy or offline")
                })?;
                Ok(self.set_status(&conn.user_id, status, now))
            }
            ClientFrame::Typing { channel_id, is_typing } => {
                if !is_valid_name(&channel_id) {
                    return Err(Reject::in_band("invalid_channel_id", "channelId must match ^[A-Za-z0-9_.-]{1,64}$"));
                }
                let frame = TypingFrame { r#type: "typing", user_id: &conn.user_id, channel_id: &channel_id, is_typing };
                Ok(Outcome { to_others: vec![to_json(&frame)], ..Outcome::default() })
            }
            ClientFrame::Ping => Ok(Outcome { to_self: vec![r#"{"type":"pong"}"#.to_owned()], ..Outcome::default() }),
        }
    }

    /// A socket of `conn.user_id` closed or errored. `remaining_sockets` counts that user's
    /// sockets still open here, NOT counting the closing one: only the last close makes the
    /// user `offline`.
    pub fn on_close(&mut self, conn: &WaddleConn, remaining_sockets: usize, now: Millis) -> Outcome {
        if remaining_sockets > 0 {
            return Outcome::default();
        }
        self.set_status(&conn.user_id, Status::Offline, now)
    }

    /// Reconcile the stored presence with the sockets that really exist (run on every wake):
    /// every member not `offline` without an open socket in `live_users` — left over from a
    /// crash, a deploy or a lost close — goes `offline` now. One outcome per ghost (its row to
    /// store, its `presence_update` for the remaining sockets), sorted by user id.
    pub fn reconcile(&mut self, live_users: &BTreeSet<String>, now: Millis) -> Vec<Outcome> {
        let stored = self.presence.iter().filter(|(_, p)| p.status != Status::Offline).map(|(id, _)| id.as_str());
        let ghosts = crate::schedule::liveness::ghosts(stored, live_users);
        ghosts.iter().map(|user| self.set_status(user, Status::Offline, now)).collect()
    }

    /// `{"type":"presence_state","users":[[userId,{"status","lastSeen"}],...]}`, sorted by user id.
    pub fn presence_state_frame(&self) -> String {
        let users = self.presence.iter().map(|(id, p)| (id.as_str(), *p)).collect();
        to_json(&PresenceStateFrame { r#type: "presence_state", users })
    }

    /// Body of `GET /api/waddle/:id/presence`: `{"users":[{"userId","status","lastSeen"}]}`,
    /// sorted by user id.
    pub fn presence_view(&self) -> String {
        let users = self
            .presence
            .iter()
            .map(|(id, p)| PresenceEntry { user_id: id, status: p.status, last_seen: p.last_seen })
            .collect();
        to_json(&PresenceView { users })
    }

    fn set_status(&mut self, user_id: &str, status: Status, now: Millis) -> Outcome {
        let presence = Presence { status, last_seen: now };
        self.presence.insert(user_id.to_owned(), presence);
        let update = PresenceUpdateFrame { r#type: "presence_update", user_id, status };
        Outcome { store: Some((user_id.to_owned(), presence)), to_self: Vec::new(), to_others: vec![to_json(&update)] }
    }
}

/// `POST /api/waddle/:id/broadcast`: the body must be a JSON object of at most 64 KiB; it is
/// sent to every socket exactly as received (surrounding whitespace trimmed).
pub fn broadcast_frame(body: &str) -> Result<String, ApiError> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(ApiError::payload_too_large("broadcast body larger than 64 KiB"));
    }
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(_)) => Ok(body.trim().to_owned()),
        _ => Err(ApiError::bad_request("invalid_body", "body must be a JSON object")),
    }
}

/// Answer to the admin broadcast: `{"success":true,"recipients":n}` (sockets it was sent to).
pub fn broadcast_response(recipients: usize) -> String {
    #[derive(Serialize)]
    struct Answer {
        success: bool,
        recipients: usize,
    }
    to_json(&Answer { success: true, recipients })
}

/// Our frame structs hold only strings, numbers and enums: serializing them cannot fail.
fn to_json<T: Serialize>(frame: &T) -> String {
    serde_json::to_string(frame).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::close;

    fn conn(user: &str) -> WaddleConn {
        WaddleConn { user_id: user.into(), user_name: None }
    }

    fn online(at: Millis) -> Presence {
        Presence { status: Status::Online, last_seen: at }
    }

    fn rejected(w: &mut Waddle, text: &str) -> Reject {
        let before = w.clone();
        let err = w.on_message(&conn("a"), text, 9_999).unwrap_err();
        assert_eq!(*w, before, "state changed after rejecting {text}");
        err
    }

    fn close_code(r: Reject) -> u16 {
        match r {
            Reject::Close { code, .. } => code,
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[test]
    fn connect_goes_online_and_sends_sorted_presence_state() {
        let mut w = Waddle::from_rows([
            ("zed".to_string(), Presence { status: Status::Away, last_seen: 5 }),
            ("bob".to_string(), Presence { status: Status::Offline, last_seen: 7 }),
        ]);
        let out = w.on_connect(&conn("amy"), 1_000);
        assert_eq!(out.store, Some(("amy".to_string(), online(1_000))));
        assert_eq!(
            out.to_self,
            vec![concat!(
                r#"{"type":"presence_state","users":[["amy",{"status":"online","lastSeen":1000}],"#,
                r#"["bob",{"status":"offline","lastSeen":7}],["zed",{"status":"away","lastSeen":5}]]}"#
            )]
        );
        assert_eq!(out.to_others, vec![r#"{"type":"presence_update","userId":"amy","status":"online"}"#]);
        assert_eq!(w.presence_of("amy"), Some(online(1_000)));
    }

    #[test]
    fn reconnect_resets_a_chosen_status_to_online() {
        let mut w = Waddle::default();
        w.on_connect(&conn("a"), 1);
        w.on_message(&conn("a"), r#"{"type":"presence_update","status":"busy"}"#, 2).unwrap();
        let out = w.on_connect(&conn("a"), 3);
        assert_eq!(out.store, Some(("a".to_string(), online(3))));
    }

    #[test]
    fn presence_update_persists_and_tells_the_others() {
        let mut w = Waddle::default();
        w.on_connect(&conn("a"), 1_000);
        for (status, at) in [("away", 2_000), ("busy", 3_000), ("offline", 4_000), ("online", 5_000)] {
            let frame = format!(r#"{{"type":"presence_update","status":"{status}"}}"#);
            let out = w.on_message(&conn("a"), &frame, at).unwrap();
            let expected = Presence { status: Status::parse(status).unwrap(), last_seen: at };
            assert_eq!(out.store, Some(("a".to_string(), expected)));
            assert!(out.to_self.is_empty());
            assert_eq!(out.to_others, vec![format!(r#"{{"type":"presence_update","userId":"a","status":"{status}"}}"#)]);
            assert_eq!(w.presence_of("a"), Some(expected));
        }
    }

    #[test]
    fn unknown_status_is_an_in_band_error_and_nothing_changes() {
        let mut w = Waddle::default();
        w.on_connect(&conn("a"), 1);
        for bad in ["invisible", "", "Online", " away"] {
            let frame = format!(r#"{{"type":"presence_update","status":"{bad}"}}"#);
            match rejected(&mut w, &frame) {
                Reject::InBand { code, .. } => assert_eq!(code, "invalid_status"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn malformed_frames_close_with_the_spec_codes_and_nothing_changes() {
        let mut w = Waddle::default();
        w.on_connect(&conn("a"), 1);
        let cases = [
            ("not json", close::INVALID_DATA),
            (r#"{"type":"presence_update","status":3}"#, close::INVALID_DATA),
            (r#"{"type":"presence_update"}"#, close::INVALID_DATA),
            (r#"{"type":"typing","channelId":"c","isTyping":"yes"}"#, close::INVALID_DATA),
            (r#"{"type":"typing","channelId":5,"isTyping":true}"#, close::INVALID_DATA),
            (r#"{"type":"typing","isTyping":true}"#, close::INVALID_DATA),
            (r#"{"type":"presence"}"#, close::POLICY),
            (r#"{"type":"message","content":"hi"}"#, close::POLICY),
        ];
        for (text, code) in cases {
            assert_eq!(close_code(rejected(&mut w, text)), code, "{text}");
        }
        let huge = format!(r#"{{"type":"presence_update","status":"{}"}}"#, "x".repeat(MAX_FRAME_BYTES));
        assert_eq!(close_code(rejected(&mut w, &huge)), close::TOO_BIG);
    }

    #[test]
    fn typing_is_relayed_to_the_others_and_not_stored() {
        let mut w = Waddle::default();
        w.on_connect(&conn("a"), 1);
        let before = w.clone();
        let out = w.on_message(&conn("a"), r#"{"type":"typing","channelId":"general-1","isTyping":true}"#, 2).unwrap();
        assert_eq!(
            out,
            Outcome {
                store: None,
                to_self: vec![],
                to_others: vec![r#"{"type":"typing","userId":"a","channelId":"general-1","isTyping":true}"#.into()],
            }
        );
        let out = w.on_message(&conn("a"), r#"{"type":"typing","channelId":"c","isTyping":false}"#, 3).unwrap();
        assert_eq!(out.to_others, vec![r#"{"type":"typing","userId":"a","channelId":"c","isTyping":false}"#]);
        assert_eq!(w, before);
    }

    #[test]
    fn typing_in_an_invalid_channel_is_an_in_band_error() {
        let mut w = Waddle::default();
        for bad in ["", "a b", "../x", &"c".repeat(65)] {
            let frame = format!(r#"{{"type":"typing","channelId":"{bad}","isTyping":true}}"#);
            assert!(matches!(rejected(&mut w, &frame), Reject::InBand { code: "invalid_channel_id", .. }), "{bad}");
        }
    }

    #[test]
    fn ping_gets_pong() {
        let mut w = Waddle::default();
        let out = w.on_message(&conn("a"), r#"{ "type" : "ping" }"#, 1).unwrap();
        assert_eq!(out.to_self, vec![r#"{"type":"pong"}"#]);
        assert_eq!((out.store, out.to_others.len()), (None, 0));
    }

    #[test]
    fn offline_only_when_the_last_socket_closes() {
        let mut w = Waddle::default();
        w.on_connect(&conn("a"), 1_000);
        w.on_connect(&conn("a"), 2_000); // second device
        let before = w.clone();
        assert_eq!(w.on_close(&conn("a"), 1, 3_000), Outcome::default());
        assert_eq!(w, before);
        assert_eq!(w.presence_of("a"), Some(online(2_000)));
        let out = w.on_close(&conn("a"), 0, 4_000);
        let offline = Presence { status: Status::Offline, last_seen: 4_000 };
        assert_eq!(out.store, Some(("a".to_string(), offline)));
        assert_eq!(out.to_others, vec![r#"{"type":"presence_update","userId":"a","status":"offline"}"#]);
        assert!(out.to_self.is_empty());
        assert_eq!(w.presence_of("a"), Some(offline));
    }

    #[test]
    fn http_presence_view_lists_every_member_sorted() {
        let mut w = Waddle::default();
        assert_eq!(w.presence_view(), r#"{"users":[]}"#);
        w.on_connect(&conn("b"), 20);
        w.on_connect(&conn("a"), 10);
        w.on_close(&conn("b"), 0, 30);
        assert_eq!(
            w.presence_view(),
            r#"{"users":[{"userId":"a","status":"online","lastSeen":10},{"userId":"b","status":"offline","lastSeen":30}]}"#
        );
    }

    #[test]
    fn stored_rows_round_trip() {
        assert_eq!(Presence::from_row("busy", 4), Presence { status: Status::Busy, last_seen: 4 });
        assert_eq!(Presence::from_row("garbage", 4).status, Status::Offline);
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn admin_broadcast_is_sent_as_is() {
        let body = r#"{"type":"announcement","text":"hi","z":1,"a":[2]}"#;
        assert_eq!(broadcast_frame(body), Ok(body.to_string()));
        assert_eq!(broadcast_frame(&format!(" {body}\n")), Ok(body.to_string()));
        assert_eq!(broadcast_frame("{}"), Ok("{}".to_string()));
        for bad in ["", "[1]", "\"x\"", "3", "null", "{", "{} {}"] {
            assert_eq!(broadcast_frame(bad).map_err(|e| (e.status, e.code)), Err((400, "invalid_body")), "{bad}");
        }
        let huge = format!(r#"{{"t":"{}"}}"#, "x".repeat(MAX_FRAME_BYTES));
        assert_eq!(broadcast_frame(&huge).map_err(|e| e.status), Err(413));
        assert_eq!(broadcast_response(3), r#"{"success":true,"recipients":3}"#);
    }

    #[test]
    fn attachment_is_small_camel_case_json() {
        let c = WaddleConn { user_id: "u1".into(), user_name: Some("Ann".into()) };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"userId":"u1","userName":"Ann"}"#);
        assert_eq!(serde_json::from_str::<WaddleConn>(&json).unwrap(), c);
        assert_eq!(serde_json::to_string(&conn("u")).unwrap(), r#"{"userId":"u"}"#);
        assert_eq!(serde_json::from_str::<WaddleConn>(r#"{"userId":"u"}"#).unwrap(), conn("u"));
    }

    #[test]
    fn reconcile_marks_members_without_a_socket_offline_and_keeps_live_ones() {
        let mut w = Waddle::from_rows([
            ("alice".to_string(), online(1)),
            ("bob".to_string(), online(2)),
            ("carol".to_string(), Presence { status: Status::Away, last_seen: 3 }),
            ("dave".to_string(), Presence { status: Status::Offline, last_seen: 4 }),
        ]);
        let live: BTreeSet<String> = ["bob".to_string()].into_iter().collect();
        let outcomes = w.reconcile(&live, 100);
        let stored: Vec<_> = outcomes.iter().filter_map(|o| o.store.clone()).collect();
        assert_eq!(
            stored,
            vec![
                ("alice".to_string(), Presence { status: Status::Offline, last_seen: 100 }),
                ("carol".to_string(), Presence { status: Status::Offline, last_seen: 100 }),
            ]
        );
        assert_eq!(outcomes[0].to_others, vec![r#"{"type":"presence_update","userId":"alice","status":"offline"}"#.to_string()]);
        assert!(outcomes.iter().all(|o| o.to_self.is_empty()));
        assert_eq!(w.presence_of("bob"), Some(online(2)));
        // dave was already offline: untouched, lastSeen kept.
        assert_eq!(w.presence_of("dave"), Some(Presence { status: Status::Offline, last_seen: 4 }));
        // A second wake changes nothing.
        assert!(w.reconcile(&live, 200).is_empty());
    }
}
