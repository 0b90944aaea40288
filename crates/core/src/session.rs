//! UserSession core (docs/protocol.md §6.1, §3): one object per user coordinates that user's devices —
//! active games, aggregate presence, logout-all and notifications.
//!
//! What lives where, so that a woken DO rebuilds everything without extra reads:
//! - [`SessionState`] is the user's persisted row (games, `lastActive`, `logged_out_at`).
//! - [`DeviceConn`] is each socket's attachment (device id, that device's own presence, the
//!   token's `iat`). Presence is never persisted: it is the aggregate over the sockets that are
//!   open right now, so a DO that restarts can't report a stale "online".
//!
//! Every handler returns an [`Outcome`]; the adapter persists `state`, rewrites the attachment,
//! performs `sends` in order, then `close`, then `logout_all`.
//!
//! Wire decisions (docs/protocol.md leaves them open):
//! - `lastActive` is milliseconds since the epoch (a JSON number, as the design notes' clients
//!   read it): the time of the last connect, close or accepted client frame. Rejected frames and
//!   admin calls other than `clear` don't move it.
//! - `connectedDevices` is the number of connected devices (design note 000, docs/protocol.md §4/§6.1: a
//!   count); two sockets of one device count once. `devices` is the sorted, de-duplicated list
//!   of their ids (its length is `connectedDevices`).
//! - A change (game joined/left, aggregate presence moved) goes to every device of the user,
//!   the sender included — that broadcast *is* the sender's answer. A no-op (joining a joined
//!   game, leaving an unjoined one, a presence update that leaves the aggregate as it was) is
//!   answered to the sender only, with the same frame type and the unchanged value.
//! - `logout_all` keeps the active games: they are the user's, not a device's.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{close, ApiError};
use crate::frame::{self, Reject};
use crate::names::is_valid_name;
use crate::time::Millis;

/// docs/protocol.md §6.1: at most 100 active games per user.
pub const MAX_ACTIVE_GAMES: usize = 100;

/// The client frame types of docs/protocol.md §6.1.
pub const CLIENT_TYPES: [&str; 6] = ["join_game", "leave_game", "update_presence", "sync_state", "logout_all", "ping"];

crate::ops! {
    /// UserSession's operations: the device socket, the state view, the admin `clear` and
    /// `notify`, and two internal ones — `check` (the entry Worker's revocation check before
    /// every WebSocket connect) and `games` (a GameServer's join / leave).
    pub enum SessionOp {
        Socket = "ws" (websocket),
        State = "state",
        Clear = "clear",
        Notify = "notify",
        Check = "check",
        Games = "games",
    }
}

/// The UserSession object's tables (the kit adds `_schedule`).
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS session (id INTEGER PRIMARY KEY CHECK (id = 1), user_id TEXT NOT NULL, state TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS registry (class TEXT NOT NULL, name TEXT NOT NULL, seen_at INTEGER NOT NULL, PRIMARY KEY (class, name))",
];

/// Store the session row.
pub fn store_state(state: &SessionState) -> crate::effects::Effects {
    let json = serde_json::to_string(state).unwrap_or_default();
    crate::effects::Effects::none().store(
        "INSERT INTO session (id, user_id, state) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state",
        vec![state.user_id.as_str().into(), json.into()],
    )
}

/// Close reason sent with 4001 to every socket on `logout_all`.
pub const LOGGED_OUT_REASON: &str = "logged out";
/// Close reason sent with 4001 to a socket whose token predates the last logout.
pub const REVOKED_REASON: &str = "token revoked";

/// A device's (or the user's aggregate) presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Online,
    Away,
    Offline,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Online => "online",
            Presence::Away => "away",
            Presence::Offline => "offline",
        }
    }

    /// Exact, case-sensitive: only the three values of docs/protocol.md §6.1.
    pub fn parse(s: &str) -> Option<Self> {
        [Presence::Online, Presence::Away, Presence::Offline].into_iter().find(|p| p.as_str() == s)
    }

    /// The user's presence: online if any device is online, else away if any is away, else
    /// offline (also with no device at all).
    pub fn aggregate<'a>(devices: impl IntoIterator<Item = &'a DeviceConn>) -> Presence {
        let mut any_away = false;
        for device in devices {
            match device.presence {
                Presence::Online => return Presence::Online,
                Presence::Away => any_away = true,
                Presence::Offline => {}
            }
        }
        if any_away { Presence::Away } else { Presence::Offline }
    }
}

/// One socket's attachment (well under 2 KiB: a ≤64-char id, an enum, an integer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConn {
    pub device_id: String,
    /// This device's own presence, as it last reported it.
    pub presence: Presence,
    /// `iat` (seconds) of the token the socket connected with, checked against logouts.
    pub token_iat: i64,
    /// Set when the heartbeat sweep closed this socket and announced it (so a late close
    /// event does not announce it twice). Absent from older attachments: `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gone: bool,
}

impl DeviceConn {
    /// A device that just connected counts as online.
    pub fn new(device_id: impl Into<String>, token_iat: i64) -> Self {
        Self { device_id: device_id.into(), presence: Presence::Online, token_iat, gone: false }
    }
}

/// The user's persisted session (one row, or this struct as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionState {
    pub user_id: String,
    /// Game ids in the order they were joined, at most [`MAX_ACTIVE_GAMES`].
    pub active_games: Vec<String>,
    pub last_active: Millis,
    /// When the user last logged out everywhere; tokens issued at or before it are revoked.
    pub logged_out_at: Option<Millis>,
}

impl SessionState {
    /// The state of a user never seen before.
    pub fn new(user_id: impl Into<String>, now: Millis) -> Self {
        Self { user_id: user_id.into(), active_games: Vec::new(), last_active: now, logged_out_at: None }
    }

    /// The admin `clear`: a fresh session, except the revocation — wiping it would make
    /// tokens valid again that logout-all revoked.
    pub fn cleared(&self, now: Millis) -> Self {
        Self { logged_out_at: self.logged_out_at, ..Self::new(self.user_id.clone(), now) }
    }

    /// `lastActive` never runs backwards.
    fn touched(&self, now: Millis) -> Self {
        Self { last_active: self.last_active.max(now), ..self.clone() }
    }

    /// `GET /__user-session/state`: `{userId, activeGames, presence, lastActive,
    /// connectedDevices (a count), devices (their ids)}`.
    pub fn view(&self, devices: &[DeviceConn]) -> Value {
        let ids = connected_devices(devices);
        serde_json::json!({
            "userId": self.user_id,
            "activeGames": self.active_games,
            "presence": Presence::aggregate(devices).as_str(),
            "lastActive": self.last_active,
            "connectedDevices": ids.len(),
            "devices": ids,
        })
    }

    /// `initial_state` (on connect) or `state` (on `sync_state`): the view plus its `type`.
    fn state_frame(&self, kind: &str, devices: &[DeviceConn]) -> String {
        let mut view = self.view(devices);
        if let Some(obj) = view.as_object_mut() {
            obj.insert("type".into(), kind.into());
        }
        view.to_string()
    }
}

/// Sorted, de-duplicated device ids.
fn connected_devices(devices: &[DeviceConn]) -> Vec<&str> {
    devices.iter().map(|d| d.device_id.as_str()).collect::<BTreeSet<_>>().into_iter().collect()
}

/// docs/protocol.md §3: a token is revoked if it was issued at or before the last logout-all,
/// `iat * 1000 <= logged_out_at`.
///
/// `iat` has whole-second precision, so a token minted in the same second as the logout but
/// after it is revoked too: a client re-authenticating right after `logout_all` must get a
/// token whose `iat` is at least [`first_accepted_iat`] (i.e. wait for the next second).
pub fn is_revoked(logged_out_at: Option<Millis>, token_iat_secs: i64) -> bool {
    logged_out_at.is_some_and(|at| token_iat_secs.saturating_mul(1000) <= at)
}

/// The smallest `iat` (seconds) accepted after a logout at `logged_out_at` (ms).
pub fn first_accepted_iat(logged_out_at: Millis) -> i64 {
    logged_out_at.div_euclid(1000).saturating_add(1)
}

/// Who receives a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// The socket the event came from.
    This,
    /// Every open socket of the user, this one included.
    All,
    /// Every open socket of the user except this one.
    Others,
}

/// One frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub to: To,
    pub frame: String,
}

/// Close this socket (after the sends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: String,
}

/// The user logged out everywhere at `at`. After the sends (which carry `logged_out` to every
/// socket), the adapter closes every socket of the user with 4001 [`LOGGED_OUT_REASON`] and
/// fans the revocation out so every route refuses tokens with `iat * 1000 <= at` and other DOs
/// close this user's sockets with 4001. `state.logged_out_at` already holds `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogoutAll {
    pub at: Millis,
}

/// What the adapter does after a handler, in this order: persist `state`, write `attachment`
/// on this socket, perform `sends`, `close` this socket, run `logout_all`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The state to persist, when it changed.
    pub state: Option<SessionState>,
    /// This socket's new attachment, when it changed.
    pub attachment: Option<DeviceConn>,
    pub sends: Vec<Delivery>,
    pub close: Option<Close>,
    pub logout_all: Option<LogoutAll>,
}

impl Outcome {
    /// As the kit's effects: the session row, the sends, this socket's close. The new state
    /// and attachment are returned for the adapter's memory; `logout_all` is left to it.
    pub fn into_effects(self) -> (Option<SessionState>, Option<DeviceConn>, Option<LogoutAll>, crate::effects::Effects) {
        let mut e = self.state.as_ref().map_or_else(crate::effects::Effects::none, store_state);
        for d in self.sends {
            let to = match d.to {
                To::This => crate::effects::To::This,
                To::All => crate::effects::To::All,
                To::Others => crate::effects::To::Others,
            };
            e = e.send(to, d.frame);
        }
        if let Some(c) = self.close {
            e = e.close(c.code, c.reason);
        }
        (self.state, self.attachment, self.logout_all, e)
    }

    fn send(mut self, to: To, frame: String) -> Self {
        self.sends.push(Delivery { to, frame });
        self
    }

    /// A frame the core refuses: close, or an in-band error with nothing else changed.
    fn rejected(reject: Reject) -> Self {
        match reject {
            Reject::Close { code, reason } => Self { close: Some(Close { code, reason }), ..Self::default() },
            Reject::InBand { code, message } => Self::default().send(To::This, Reject::error_frame(code, &message)),
        }
    }

    /// A socket whose token predates the last logout: told, then closed with 4001.
    fn revoked() -> Self {
        Self {
            close: Some(Close { code: close::LOGGED_OUT, reason: REVOKED_REASON.to_owned() }),
            ..Self::default()
        }
        .send(To::This, logged_out_frame())
    }
}

/// A well-formed frame with an invalid value: answered in-band, state unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("gameId must match ^[A-Za-z0-9_.-]{{1,64}}$")]
    InvalidGameId,
    #[error("presence must be \"online\", \"away\" or \"offline\"")]
    InvalidPresence,
    #[error("at most 100 active games; leave one first")]
    TooManyGames,
}

impl SessionError {
    pub fn code(self) -> &'static str {
        match self {
            SessionError::InvalidGameId => "invalid_game_id",
            SessionError::InvalidPresence => "invalid_presence",
            SessionError::TooManyGames => "too_many_games",
        }
    }
    pub fn to_reject(self) -> Reject {
        Reject::in_band(self.code(), self.to_string())
    }
}

/// Client frames of docs/protocol.md §6.1 (unknown fields are ignored).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    JoinGame {
        #[serde(rename = "gameId")]
        game_id: String,
    },
    LeaveGame {
        #[serde(rename = "gameId")]
        game_id: String,
    },
    /// A string, parsed by hand so an unknown value is an in-band error, not a 1007.
    UpdatePresence { presence: String },
    SyncState,
    LogoutAll,
    Ping,
}

/// A device connected (the adapter has accepted it with `device` as its attachment; `others`
/// are the user's other open sockets). A revoked token gets `logged_out` and 4001.
pub fn on_connect(state: &SessionState, device: &DeviceConn, others: &[DeviceConn], now: Millis) -> Outcome {
    if is_revoked(state.logged_out_at, device.token_iat) {
        return Outcome::revoked();
    }
    let next = state.touched(now);
    let devices = with_device(others, device);
    let before = Presence::aggregate(others);
    let after = Presence::aggregate(&devices);
    let mut outcome = Outcome::default().send(To::This, next.state_frame("initial_state", &devices));
    if before != after {
        outcome = outcome.send(To::Others, presence_updated_frame(after));
    }
    Outcome { state: Some(next), ..outcome }
}

/// A socket closed or errored; `remaining` are the user's other open sockets. It no longer
/// counts towards presence.
pub fn on_close(state: &SessionState, closing: &DeviceConn, remaining: &[DeviceConn], now: Millis) -> Outcome {
    let before = Presence::aggregate(remaining.iter().chain(std::iter::once(closing)));
    let after = Presence::aggregate(remaining);
    let mut outcome = Outcome { state: Some(state.touched(now)), ..Outcome::default() };
    if before != after {
        outcome = outcome.send(To::Others, presence_updated_frame(after));
    }
    outcome
}

/// A text frame from `device` (binary frames: [`frame::binary_rejected`]).
pub fn on_message(state: &SessionState, device: &DeviceConn, others: &[DeviceConn], text: &str, now: Millis) -> Outcome {
    if is_revoked(state.logged_out_at, device.token_iat) {
        return Outcome::revoked();
    }
    let msg = match frame::decode::<ClientFrame>(text, &CLIENT_TYPES) {
        Ok(msg) => msg,
        Err(reject) => return Outcome::rejected(reject),
    };
    let result = match msg {
        ClientFrame::JoinGame { game_id } => join_game(state, &game_id, now),
        ClientFrame::LeaveGame { game_id } => leave_game(state, &game_id, now),
        ClientFrame::UpdatePresence { presence } => update_presence(state, device, others, &presence, now),
        ClientFrame::SyncState => {
            let next = state.touched(now);
            let frame = next.state_frame("state", &with_device(others, device));
            Ok(Outcome { state: Some(next), ..Outcome::default() }.send(To::This, frame))
        }
        ClientFrame::LogoutAll => Ok(logout_all(state, now)),
        ClientFrame::Ping => Ok(Outcome { state: Some(state.touched(now)), ..Outcome::default() }.send(To::This, pong_frame())),
    };
    result.unwrap_or_else(|e| Outcome::rejected(e.to_reject()))
}

/// Admin `clear`: the fresh state to persist, and a `state` frame to every open socket so no
/// device keeps showing wiped games.
pub fn on_clear(state: &SessionState, devices: &[DeviceConn], now: Millis) -> Outcome {
    let fresh = state.cleared(now);
    let frame = fresh.state_frame("state", devices);
    Outcome { state: Some(fresh), ..Outcome::default() }.send(To::All, frame)
}

/// A GameServer stored that the user joined (`joined`) or left `game_id` (UserSession's internal
/// `games` op): the rules of the `join_game` / `leave_game` frames with no sending device — a
/// change goes `To::All`; a no-op only `To::This`, which an internal call has no socket for.
pub fn on_game(state: &SessionState, game_id: &str, joined: bool, now: Millis) -> Result<Outcome, SessionError> {
    if joined { join_game(state, game_id, now) } else { leave_game(state, game_id, now) }
}

fn join_game(state: &SessionState, game_id: &str, now: Millis) -> Result<Outcome, SessionError> {
    if !is_valid_name(game_id) {
        return Err(SessionError::InvalidGameId);
    }
    let mut next = state.touched(now);
    if next.active_games.iter().any(|g| g == game_id) {
        let frame = game_frame("game_joined", game_id, &next.active_games);
        return Ok(Outcome { state: Some(next), ..Outcome::default() }.send(To::This, frame));
    }
    if next.active_games.len() >= MAX_ACTIVE_GAMES {
        return Err(SessionError::TooManyGames);
    }
    next.active_games.push(game_id.to_owned());
    let frame = game_frame("game_joined", game_id, &next.active_games);
    Ok(Outcome { state: Some(next), ..Outcome::default() }.send(To::All, frame))
}

fn leave_game(state: &SessionState, game_id: &str, now: Millis) -> Result<Outcome, SessionError> {
    if !is_valid_name(game_id) {
        return Err(SessionError::InvalidGameId);
    }
    let mut next = state.touched(now);
    let before = next.active_games.len();
    next.active_games.retain(|g| g != game_id);
    let to = if next.active_games.len() == before { To::This } else { To::All };
    let frame = game_frame("game_left", game_id, &next.active_games);
    Ok(Outcome { state: Some(next), ..Outcome::default() }.send(to, frame))
}

fn update_presence(
    state: &SessionState,
    device: &DeviceConn,
    others: &[DeviceConn],
    presence: &str,
    now: Millis,
) -> Result<Outcome, SessionError> {
    let presence = Presence::parse(presence).ok_or(SessionError::InvalidPresence)?;
    let updated = DeviceConn { presence, ..device.clone() };
    let before = Presence::aggregate(others.iter().chain(std::iter::once(device)));
    let after = Presence::aggregate(others.iter().chain(std::iter::once(&updated)));
    let to = if before == after { To::This } else { To::All };
    Ok(Outcome {
        state: Some(state.touched(now)),
        attachment: (updated != *device).then_some(updated),
        ..Outcome::default()
    }
    .send(to, presence_updated_frame(after)))
}

fn logout_all(state: &SessionState, now: Millis) -> Outcome {
    let at = state.logged_out_at.map_or(now, |prev| prev.max(now));
    let next = SessionState { logged_out_at: Some(at), ..state.touched(now) };
    Outcome { state: Some(next), logout_all: Some(LogoutAll { at }), ..Outcome::default() }
        .send(To::All, logged_out_frame())
}

fn with_device(others: &[DeviceConn], device: &DeviceConn) -> Vec<DeviceConn> {
    others.iter().cloned().chain(std::iter::once(device.clone())).collect()
}

/// `{"type":"game_joined"|"game_left","gameId","activeGames"}`
fn game_frame(kind: &str, game_id: &str, active_games: &[String]) -> String {
    serde_json::json!({"type": kind, "gameId": game_id, "activeGames": active_games}).to_string()
}

/// `{"type":"presence_updated","presence"}`
pub fn presence_updated_frame(presence: Presence) -> String {
    serde_json::json!({"type": "presence_updated", "presence": presence.as_str()}).to_string()
}

/// `{"type":"logged_out"}`
pub fn logged_out_frame() -> String {
    serde_json::json!({"type": "logged_out"}).to_string()
}

/// `{"type":"pong"}`
pub fn pong_frame() -> String {
    serde_json::json!({"type": "pong"}).to_string()
}

/// Admin `notify`: `{"type":"notification",...body}` for every socket of the user. The body
/// must be a JSON object (else 400); a `type` key in it is replaced by `"notification"`.
pub fn notification_frame(body: &Value) -> Result<String, ApiError> {
    let Value::Object(fields) = body else {
        return Err(ApiError::bad_request("invalid_body", "body must be a JSON object"));
    };
    let mut fields = fields.clone();
    fields.insert("type".into(), "notification".into());
    Ok(Value::Object(fields).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: Millis = 1_700_000_000_000;

    fn state() -> SessionState {
        SessionState::new("alice", T0)
    }
    fn dev(id: &str, presence: Presence) -> DeviceConn {
        DeviceConn { presence, ..DeviceConn::new(id, T0 / 1000) }
    }
    fn with_games(n: usize) -> SessionState {
        SessionState { active_games: (0..n).map(|i| format!("g{i}")).collect(), ..state() }
    }
    fn parse(frame: &str) -> Value {
        serde_json::from_str(frame).unwrap()
    }
    /// The sends as (recipients, parsed JSON) for exact comparisons.
    fn sends(outcome: &Outcome) -> Vec<(To, Value)> {
        outcome.sends.iter().map(|d| (d.to, parse(&d.frame))).collect()
    }
    fn error_code(outcome: &Outcome) -> String {
        match sends(outcome).as_slice() {
            [(To::This, v)] if v["type"] == "error" => v["code"].as_str().unwrap().to_owned(),
            other => panic!("expected one in-band error, got {other:?}"),
        }
    }
    /// An in-band rejection: one error frame to the sender and nothing else.
    fn assert_in_band(outcome: &Outcome, code: &str) {
        assert_eq!(error_code(outcome), code);
        assert_eq!((&outcome.state, &outcome.attachment, &outcome.close, outcome.logout_all), (&None, &None, &None, None));
    }
    fn msg(s: &SessionState, text: &str, now: Millis) -> Outcome {
        on_message(s, &dev("phone", Presence::Online), &[], text, now)
    }

    // ── presence ────────────────────────────────────────────────────────────

    #[test]
    fn aggregate_prefers_online_then_away() {
        use Presence::*;
        let agg = |ps: &[Presence]| {
            let ds: Vec<_> = ps.iter().enumerate().map(|(i, p)| dev(&format!("d{i}"), *p)).collect();
            Presence::aggregate(&ds)
        };
        assert_eq!(agg(&[]), Offline);
        assert_eq!(agg(&[Offline]), Offline);
        assert_eq!(agg(&[Away]), Away);
        assert_eq!(agg(&[Away, Online]), Online);
        assert_eq!(agg(&[Offline, Away, Offline]), Away);
        assert_eq!(agg(&[Offline, Offline, Online]), Online);
    }

    #[test]
    fn presence_parse_is_exact() {
        assert_eq!(Presence::parse("away"), Some(Presence::Away));
        for bad in ["Online", "", "busy", " away", "offline "] {
            assert_eq!(Presence::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn presence_across_devices_broadcasts_only_on_change() {
        let s = state();
        // The laptop connects first: offline → online, told to nobody else (there is nobody).
        let laptop = DeviceConn::new("laptop", 1);
        let out = on_connect(&s, &laptop, &[], T0 + 1);
        assert_eq!(sends(&out)[1..], [(To::Others, json!({"type":"presence_updated","presence":"online"}))]);

        // The laptop goes away: aggregate online → away, broadcast to all.
        let out = on_message(&s, &laptop, &[], r#"{"type":"update_presence","presence":"away"}"#, T0 + 2);
        assert_eq!(sends(&out), [(To::All, json!({"type":"presence_updated","presence":"away"}))]);
        let laptop = out.attachment.unwrap();
        assert_eq!(laptop.presence, Presence::Away);

        // The phone connects online: away + online = online, broadcast to the laptop.
        let phone = DeviceConn::new("phone", 1);
        let out = on_connect(&s, &phone, std::slice::from_ref(&laptop), T0 + 3);
        let frames = sends(&out);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].1["presence"], "online");
        assert_eq!(frames[1], (To::Others, json!({"type":"presence_updated","presence":"online"})));

        // A tablet connects while someone is online: no presence change, no broadcast.
        let tablet = DeviceConn::new("tablet", 1);
        let out = on_connect(&s, &tablet, &[laptop.clone(), phone.clone()], T0 + 4);
        assert_eq!(out.sends.len(), 1);
        assert_eq!(out.sends[0].to, To::This);

        // The tablet closes: phone still online, nothing to say.
        let out = on_close(&s, &tablet, &[laptop.clone(), phone.clone()], T0 + 5);
        assert!(out.sends.is_empty());
        // The phone (the only online one) closes → away.
        let out = on_close(&s, &phone, std::slice::from_ref(&laptop), T0 + 6);
        assert_eq!(sends(&out), [(To::Others, json!({"type":"presence_updated","presence":"away"}))]);
        // The last one closes → offline (sent to nobody, but decided).
        let out = on_close(&s, &laptop, &[], T0 + 7);
        assert_eq!(sends(&out), [(To::Others, json!({"type":"presence_updated","presence":"offline"}))]);
        assert_eq!(out.state.unwrap().last_active, T0 + 7);
    }

    #[test]
    fn presence_update_that_keeps_the_aggregate_answers_only_the_sender() {
        let s = state();
        let phone = dev("phone", Presence::Online);
        let laptop = dev("laptop", Presence::Online);
        let out = on_message(&s, &phone, std::slice::from_ref(&laptop), r#"{"type":"update_presence","presence":"away"}"#, T0 + 1);
        assert_eq!(sends(&out), [(To::This, json!({"type":"presence_updated","presence":"online"}))]);
        assert_eq!(out.attachment, Some(dev("phone", Presence::Away)));
        // Repeating the current presence: no new attachment, still answered.
        let out = on_message(&s, &phone, &[], r#"{"type":"update_presence","presence":"online"}"#, T0 + 2);
        assert_eq!(out.attachment, None);
        assert_eq!(sends(&out), [(To::This, json!({"type":"presence_updated","presence":"online"}))]);
        assert_eq!(out.state.unwrap().last_active, T0 + 2);
    }

    #[test]
    fn every_device_offline_is_offline() {
        let s = state();
        let phone = dev("phone", Presence::Online);
        let laptop = dev("laptop", Presence::Offline);
        let out = on_message(&s, &phone, &[laptop], r#"{"type":"update_presence","presence":"offline"}"#, T0);
        assert_eq!(sends(&out), [(To::All, json!({"type":"presence_updated","presence":"offline"}))]);
    }

    // ── connect / state frames ──────────────────────────────────────────────

    #[test]
    fn initial_state_exact_json() {
        let s = SessionState { active_games: vec!["b".into(), "a".into()], ..state() };
        let others = [dev("tab-2", Presence::Away), dev("tab-1", Presence::Offline), dev("tab-2", Presence::Away)];
        let out = on_connect(&s, &DeviceConn::new("tab-1", 5), &others, T0 + 50);
        assert_eq!(
            sends(&out),
            [
                (
                    To::This,
                    json!({"type":"initial_state","userId":"alice","activeGames":["b","a"],"presence":"online",
                           "lastActive":T0 + 50,"connectedDevices":2,"devices":["tab-1","tab-2"]})
                ),
                (To::Others, json!({"type":"presence_updated","presence":"online"})),
            ]
        );
        assert_eq!(out.state, Some(SessionState { last_active: T0 + 50, ..s }));
        assert_eq!((out.attachment, out.close, out.logout_all), (None, None, None));
    }

    #[test]
    fn sync_state_answers_the_sender_with_state() {
        let s = with_games(1);
        let phone = dev("phone", Presence::Away);
        let out = on_message(&s, &phone, &[dev("laptop", Presence::Offline)], r#"{"type":"sync_state"}"#, T0 + 9);
        assert_eq!(
            sends(&out),
            [(
                To::This,
                json!({"type":"state","userId":"alice","activeGames":["g0"],"presence":"away",
                       "lastActive":T0 + 9,"connectedDevices":2,"devices":["laptop","phone"]})
            )]
        );
    }

    #[test]
    fn last_active_never_runs_backwards() {
        let s = SessionState { last_active: T0 + 100, ..state() };
        assert_eq!(msg(&s, r#"{"type":"sync_state"}"#, T0).state.unwrap().last_active, T0 + 100);
        assert_eq!(on_close(&s, &dev("a", Presence::Online), &[], T0).state.unwrap().last_active, T0 + 100);
    }

    #[test]
    fn view_and_state_round_trip() {
        let s = with_games(2);
        assert_eq!(
            s.view(&[]),
            json!({"userId":"alice","activeGames":["g0","g1"],"presence":"offline","lastActive":T0,"connectedDevices":0,"devices":[]})
        );
        let stored = serde_json::to_string(&s).unwrap();
        assert_eq!(parse(&stored), json!({"userId":"alice","activeGames":["g0","g1"],"lastActive":T0,"loggedOutAt":null}));
        assert_eq!(serde_json::from_str::<SessionState>(&stored).unwrap(), s);
    }

    #[test]
    fn attachment_is_small_and_round_trips() {
        let d = DeviceConn { presence: Presence::Away, ..DeviceConn::new("x".repeat(64), crate::MAX_SAFE_INTEGER) };
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.len() < 2048);
        assert_eq!(parse(&json), json!({"device_id":"x".repeat(64),"presence":"away","token_iat":crate::MAX_SAFE_INTEGER}));
        assert_eq!(serde_json::from_str::<DeviceConn>(&json).unwrap(), d);
    }

    // ── games ───────────────────────────────────────────────────────────────

    #[test]
    fn join_and_leave_broadcast_in_join_order() {
        let out = msg(&state(), r#"{"type":"join_game","gameId":"poker-42"}"#, T0 + 1);
        assert_eq!(sends(&out), [(To::All, json!({"type":"game_joined","gameId":"poker-42","activeGames":["poker-42"]}))]);
        let s = out.state.unwrap();
        assert_eq!(s.last_active, T0 + 1);
        let s = msg(&s, r#"{"type":"join_game","gameId":"chess.1"}"#, T0 + 2).state.unwrap();
        assert_eq!(s.active_games, ["poker-42", "chess.1"]);

        let out = msg(&s, r#"{"type":"leave_game","gameId":"poker-42"}"#, T0 + 3);
        assert_eq!(sends(&out), [(To::All, json!({"type":"game_left","gameId":"poker-42","activeGames":["chess.1"]}))]);
        assert_eq!(out.state.unwrap().active_games, ["chess.1"]);
    }

    #[test]
    fn repeated_join_and_unjoined_leave_answer_the_sender_only() {
        let s = with_games(2);
        let out = msg(&s, r#"{"type":"join_game","gameId":"g1"}"#, T0 + 1);
        assert_eq!(sends(&out), [(To::This, json!({"type":"game_joined","gameId":"g1","activeGames":["g0","g1"]}))]);
        assert_eq!(out.state.as_ref().unwrap().active_games, s.active_games);

        let out = msg(&s, r#"{"type":"leave_game","gameId":"nope"}"#, T0 + 1);
        assert_eq!(sends(&out), [(To::This, json!({"type":"game_left","gameId":"nope","activeGames":["g0","g1"]}))]);
        assert_eq!(out.state.unwrap().active_games, s.active_games);
    }

    #[test]
    fn the_hundredth_game_fits_the_hundred_and_first_does_not() {
        let s = with_games(MAX_ACTIVE_GAMES - 1);
        let s = msg(&s, r#"{"type":"join_game","gameId":"last"}"#, T0).state.unwrap();
        assert_eq!(s.active_games.len(), 100);

        let out = msg(&s, r#"{"type":"join_game","gameId":"one-more"}"#, T0 + 1);
        assert_in_band(&out, "too_many_games");
        // At the cap, re-joining a joined game is still a no-op, and leaving frees a slot.
        assert_eq!(sends(&msg(&s, r#"{"type":"join_game","gameId":"g5"}"#, T0))[0].0, To::This);
        let s = msg(&s, r#"{"type":"leave_game","gameId":"g5"}"#, T0).state.unwrap();
        let s = msg(&s, r#"{"type":"join_game","gameId":"one-more"}"#, T0).state.unwrap();
        assert_eq!((s.active_games.len(), s.active_games.last().unwrap().as_str()), (100, "one-more"));
    }

    // ── bad input ───────────────────────────────────────────────────────────

    #[test]
    fn invalid_values_are_in_band_and_change_nothing() {
        let s = with_games(3);
        let long = format!(r#"{{"type":"join_game","gameId":"{}"}}"#, "x".repeat(65));
        for (text, code) in [
            (r#"{"type":"join_game","gameId":""}"#, "invalid_game_id"),
            (r#"{"type":"join_game","gameId":"a b"}"#, "invalid_game_id"),
            (r#"{"type":"join_game","gameId":"ä"}"#, "invalid_game_id"),
            (long.as_str(), "invalid_game_id"),
            (r#"{"type":"leave_game","gameId":"../g0"}"#, "invalid_game_id"),
            (r#"{"type":"update_presence","presence":"busy"}"#, "invalid_presence"),
            (r#"{"type":"update_presence","presence":"ONLINE"}"#, "invalid_presence"),
        ] {
            let out = msg(&s, text, T0 + 1);
            assert_in_band(&out, code);
        }
        let out = msg(&s, r#"{"type":"update_presence","presence":"busy"}"#, T0);
        assert_eq!(
            sends(&out),
            [(To::This, json!({"type":"error","code":"invalid_presence","message":"presence must be \"online\", \"away\" or \"offline\""}))]
        );
    }

    #[test]
    fn wrong_types_close_1007_unknown_types_1008() {
        let s = with_games(1);
        for text in [
            "not json",
            "[]",
            r#"{"gameId":"g"}"#,
            r#"{"type":"join_game"}"#,
            r#"{"type":"join_game","gameId":5}"#,
            r#"{"type":"join_game","gameId":null}"#,
            r#"{"type":"leave_game","gameId":["g0"]}"#,
            r#"{"type":"update_presence"}"#,
            r#"{"type":"update_presence","presence":1}"#,
        ] {
            let out = msg(&s, text, T0 + 1);
            assert_eq!(out.close.as_ref().map(|c| c.code), Some(close::INVALID_DATA), "{text}");
            assert_eq!((&out.state, &out.attachment, out.sends.len(), out.logout_all), (&None, &None, 0, None), "{text}");
        }
        for text in [r#"{"type":"join"}"#, r#"{"type":"notification"}"#, r#"{"type":"pong"}"#] {
            let out = msg(&s, text, T0 + 1);
            assert_eq!(out.close.as_ref().map(|c| c.code), Some(close::POLICY), "{text}");
            assert_eq!(out.state, None);
        }
        let out = msg(&s, &"x".repeat(frame::MAX_FRAME_BYTES + 1), T0);
        assert_eq!(out.close.map(|c| c.code), Some(close::TOO_BIG));
    }

    #[test]
    fn extra_fields_are_ignored() {
        let out = msg(&state(), r#"{"type":"join_game","gameId":"g","junk":{"a":1}}"#, T0);
        assert_eq!(out.state.unwrap().active_games, ["g"]);
    }

    // ── ping, logout ────────────────────────────────────────────────────────

    #[test]
    fn ping_answers_pong() {
        let out = msg(&state(), r#"{"type": "ping"}"#, T0 + 4);
        assert_eq!(out.sends, [Delivery { to: To::This, frame: r#"{"type":"pong"}"#.into() }]);
        assert_eq!(out.state.unwrap().last_active, T0 + 4);
    }

    #[test]
    fn logout_all_tells_everyone_and_revokes() {
        let s = with_games(2);
        let out = msg(&s, r#"{"type":"logout_all"}"#, T0 + 500);
        assert_eq!(out.sends, [Delivery { to: To::All, frame: r#"{"type":"logged_out"}"#.into() }]);
        assert_eq!(out.logout_all, Some(LogoutAll { at: T0 + 500 }));
        let next = out.state.unwrap();
        assert_eq!(next, SessionState { logged_out_at: Some(T0 + 500), last_active: T0 + 500, ..s });

        // The old token's sockets can do nothing more: told and closed with 4001.
        let old = dev("phone", Presence::Online); // iat = T0/1000 ≤ logout
        for out in [
            on_message(&next, &old, &[], r#"{"type":"join_game","gameId":"g9"}"#, T0 + 600),
            on_connect(&next, &old, &[], T0 + 600),
        ] {
            assert_eq!(out.sends, [Delivery { to: To::This, frame: r#"{"type":"logged_out"}"#.into() }]);
            assert_eq!(out.close, Some(Close { code: 4001, reason: "token revoked".into() }));
            assert_eq!(out.state, None);
        }
        // A token from the next second works.
        let fresh = DeviceConn::new("phone", first_accepted_iat(T0 + 500));
        assert!(on_connect(&next, &fresh, &[], T0 + 1_000).close.is_none());
    }

    #[test]
    fn a_second_logout_never_moves_the_revocation_back() {
        let s = SessionState { logged_out_at: Some(T0 + 5_000), ..state() };
        let device = DeviceConn::new("d", (T0 + 10_000) / 1000);
        let out = on_message(&s, &device, &[], r#"{"type":"logout_all"}"#, T0 + 1_000);
        assert_eq!(out.state.unwrap().logged_out_at, Some(T0 + 5_000));
    }

    #[test]
    fn revocation_edges() {
        assert!(!is_revoked(None, 0));
        assert!(!is_revoked(None, i64::MIN));
        // Logout at 10.500 s: tokens of second 10 (even minted at 10.9 s) are revoked, 11 is not.
        assert!(is_revoked(Some(10_500), 9));
        assert!(is_revoked(Some(10_500), 10));
        assert!(!is_revoked(Some(10_500), 11));
        // Logout exactly on a second boundary: that second's tokens are revoked (≤).
        assert!(is_revoked(Some(10_000), 10));
        assert!(!is_revoked(Some(10_000), 11));
        assert!(is_revoked(Some(10_999), 10));
        // No overflow on absurd iat values.
        assert!(!is_revoked(Some(crate::MAX_SAFE_INTEGER), i64::MAX));
        assert!(is_revoked(Some(0), i64::MIN));
        assert_eq!(first_accepted_iat(10_500), 11);
        assert_eq!(first_accepted_iat(10_000), 11);
        assert_eq!(first_accepted_iat(-1), 0);
        assert!(!is_revoked(Some(10_000), first_accepted_iat(10_000)));
        assert!(is_revoked(Some(10_000), first_accepted_iat(10_000) - 1));
    }

    // ── admin ───────────────────────────────────────────────────────────────

    #[test]
    fn clear_wipes_games_keeps_revocation_and_tells_devices() {
        let s = SessionState { logged_out_at: Some(T0 - 1), ..with_games(5) };
        let devices = [dev("phone", Presence::Away)];
        let out = on_clear(&s, &devices, T0 + 7);
        let fresh = out.state.clone().unwrap();
        assert_eq!(fresh, SessionState { user_id: "alice".into(), active_games: vec![], last_active: T0 + 7, logged_out_at: Some(T0 - 1) });
        assert_eq!(
            sends(&out),
            [(
                To::All,
                json!({"type":"state","userId":"alice","activeGames":[],"presence":"away","lastActive":T0 + 7,"connectedDevices":1,"devices":["phone"]})
            )]
        );
    }

    #[test]
    fn notification_frames() {
        let frame = notification_frame(&json!({"message":"Your game is starting!","type":"spoof","n":[1]})).unwrap();
        assert_eq!(parse(&frame), json!({"type":"notification","message":"Your game is starting!","n":[1]}));
        assert_eq!(notification_frame(&json!({})).unwrap(), r#"{"type":"notification"}"#);
        for bad in [json!([1]), json!("x"), json!(null), json!(3)] {
            let err = notification_frame(&bad).unwrap_err();
            assert_eq!((err.status, err.code), (400, "invalid_body"));
        }
    }

    #[test]
    fn fixed_frames_exact() {
        assert_eq!(parse(&presence_updated_frame(Presence::Away)), json!({"type":"presence_updated","presence":"away"}));
        assert_eq!(logged_out_frame(), r#"{"type":"logged_out"}"#);
        assert_eq!(pong_frame(), r#"{"type":"pong"}"#);
        assert_eq!(
            SessionError::TooManyGames.to_reject(),
            Reject::InBand { code: "too_many_games", message: "at most 100 active games; leave one first".into() }
        );
        assert_eq!(SessionError::InvalidGameId.to_string(), "gameId must match ^[A-Za-z0-9_.-]{1,64}$");
    }

    #[test]
    fn device_attachment_without_gone_reads_as_live_and_gone_round_trips() {
        let old: DeviceConn = serde_json::from_str(r#"{"device_id":"d","presence":"online","token_iat":1}"#).unwrap();
        assert!(!old.gone);
        assert!(!serde_json::to_string(&old).unwrap().contains("gone"));
        let swept = DeviceConn { gone: true, ..old };
        let back: DeviceConn = serde_json::from_str(&serde_json::to_string(&swept).unwrap()).unwrap();
        assert!(back.gone);
    }
}
