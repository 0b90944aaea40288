//! The shared hibernation kit every Durable Object is built on (PartyServer-style base, as
//! free functions): accept with tags + attachment, auto-response, broadcast, reciprocated
//! close, frame decoding, the multiplexed alarm, SQL helpers, and error → response mapping.
//! Each DO file then reads as its own protocol.

pub mod coalesce;
pub mod http;
pub mod object;
pub mod liveness;
pub mod runtime;
pub mod sql;

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::{JsCast, JsValue};
use worker::{js_sys, Request, Response, State, WebSocket, WebSocketIncomingMessage, WebSocketPair};

use edge_realtime_core::error::{clip_reason, ApiError};
use edge_realtime_core::{accept, auth};
use edge_realtime_core::frame::{self, Reject};
use edge_realtime_core::schedule::Schedule;
use edge_realtime_core::time::Millis;

pub use http::{error_response, json_response, read_json_body, Identity};

/// Current time in ms (the only clock the adapters read; cores get it as an argument).
pub fn now() -> Millis {
    // `Date.now()`, not `new Date()`: no object per event.
    let millis = js_sys::Date::now();
    if millis.is_finite() && millis >= 0.0 {
        millis as Millis
    } else {
        0
    }
}

/// Write one structured log line (docs/operations.md): a JSON object per line on stdout, what
/// `wrangler tail --format json` and Workers Logs (`[observability]`) collect.
pub fn log<L: Serialize>(line: &L) {
    worker::console_log!("{}", edge_realtime_core::ops::line(line));
}

/// How long an object's lifecycle lines wait before they are written ([`log_soon`]).
pub const LOG_DELAY_MS: u32 = 50;

/// [`log`] for an object's lifecycle lines (wake, socket, alarm): queued per object and
/// written together, in order, by one timer [`LOG_DELAY_MS`] after the first of them, so no
/// line is written inside the event it describes. Under `wrangler dev` the first console line
/// of a turn wakes wrangler's own process to print it: on a 2-core machine that added about
/// 2 ms to the wake it logged (docs/benchmarks.md, session 6), and in a reconnect storm the
/// lines of 1,000 connects were a quarter of the isolate's samples (session 7). The lines are
/// the same; only their moment moves. [`liveness::abort`] writes the queue before it resets
/// the object, so a line is lost only with the instance itself.
pub fn log_soon<L: Serialize>(state: &worker::State, line: &L) {
    runtime::log_soon(runtime::raw(state), &edge_realtime_core::ops::line(line), LOG_DELAY_MS);
}

/// With var `DEBUG_WAKE=1` (the e2e suite sets it), log a lifecycle detail as
/// `{"event":"debug","message":…}` (reconciles, fan-outs; the e2e suite looks for some).
pub fn log_debug(env: &worker::Env, message: &str) {
    if env.var("DEBUG_WAKE").map(|v| v.to_string() == "1").unwrap_or(false) {
        log(&edge_realtime_core::ops::DebugLine { event: "debug", message });
    }
}

/// Answer `{"type":"ping"}` with `{"type":"pong"}` in the runtime, without waking the object.
/// Called from every constructor (cheap, idempotent).
pub fn install_auto_response(state: &State) {
    match worker::worker_sys::WebSocketRequestResponsePair::new(r#"{"type":"ping"}"#, r#"{"type":"pong"}"#) {
        Ok(pair) => {
            if let Err(e) = state.as_raw().set_websocket_auto_response(&pair) {
                worker::console_error!("setWebSocketAutoResponse failed: {e:?}");
            }
        }
        Err(e) => worker::console_error!("WebSocketRequestResponsePair failed: {e:?}"),
    }
}

/// Accept a hibernatable WebSocket with `tags` (plus the kit's connect-time tag, see
/// [`liveness`]) and `attachment`; returns the socket (to send the first frames on) and the 101
/// response.
///
/// Nothing is ever left half-accepted: tags and size are checked first (the runtime throws on
/// bad ones), the attachment is serialized onto the server socket *before* `acceptWebSocket`
/// registers it (an unregistered socket that fails is simply dropped), and if building the
/// 101 fails after registration the socket is closed with 1011, so no object ever counts a
/// socket that has no state.
pub fn accept<A: Serialize>(
    state: &State,
    req: &Request,
    tags: &[String],
    attachment: &A,
) -> Result<(WebSocket, Response), ApiError> {
    let encoded = serde_json::to_vec(attachment).map_err(|_| ApiError::internal())?;
    accept_with(state, req, tags, encoded.len(), &|ws| ws.serialize_attachment(attachment))
}

/// [`accept`] without its type: the attachment is `attach` (called on the server socket before
/// the accept) and `encoded_len` bytes of JSON — compiled once for every attachment type.
fn accept_with(
    state: &State,
    req: &Request,
    tags: &[String],
    encoded_len: usize,
    attach: &dyn Fn(&WebSocket) -> worker::Result<()>,
) -> Result<(WebSocket, Response), ApiError> {
    // The kit adds one tag of its own: the connect time, for the heartbeat sweep.
    let all_tags: Vec<String> = tags.iter().cloned().chain(std::iter::once(liveness::connected_tag(now()))).collect();
    accept::check(&all_tags, encoded_len).map_err(|e| {
        worker::console_error!("refusing to accept a socket: {e}");
        e.to_api()
    })?;
    let pair = WebSocketPair::new().map_err(internal("WebSocketPair"))?;
    let server = pair.server;
    attach(&server).map_err(internal("serializeAttachment"))?;
    let js_tags: js_sys::Array = all_tags.iter().map(|t| JsValue::from_str(t)).collect();
    runtime::raw(state)
        .accept_web_socket(server.as_ref(), js_tags)
        .map_err(|e| internal("acceptWebSocket")(worker::Error::from(e)))?;
    if let Some(user) = tags.first().and_then(|t| t.strip_prefix("u:")) {
        runtime::live_add(runtime::raw(state), server.as_ref(), user);
    }
    let mut response = match Response::from_websocket(pair.client) {
        Ok(r) => r,
        Err(e) => {
            close(&server, edge_realtime_core::error::close::INTERNAL, "internal error");
            return Err(internal("101 response")(e));
        }
    };
    let offered = req.headers().get("Sec-WebSocket-Protocol").ok().flatten();
    if let Some(selected) = auth::selected_subprotocol(offered.as_deref()) {
        // `bearer, <jwt>` selects `bearer`; a lone JWT (design note 004) selects itself.
        if response.headers_mut().set("Sec-WebSocket-Protocol", selected).is_err() {
            close(&server, edge_realtime_core::error::close::INTERNAL, "internal error");
            worker::console_error!("could not select the WebSocket subprotocol");
            return Err(ApiError::internal());
        }
    }
    Ok((server, response))
}

/// Log an internal runtime error and mask it as a 500.
pub fn internal(what: &'static str) -> impl Fn(worker::Error) -> ApiError {
    move |e| {
        worker::console_error!("{what}: {e}");
        ApiError::internal()
    }
}

/// Every socket of this object (those with `tag` only, if given).
pub fn sockets(state: &State, tag: Option<&str>) -> Vec<WebSocket> {
    match runtime::raw(state).get_web_sockets(tag.map(str::to_owned)) {
        Ok(array) => array
            .iter()
            // getWebSockets() returns only WebSockets: no per-socket instanceof check.
            .map(|v| WebSocket::from(v.unchecked_into::<worker::web_sys::WebSocket>()))
            .collect(),
        Err(e) => {
            worker::console_error!("getWebSockets failed: {e:?}");
            Vec::new()
        }
    }
}

/// Whether a socket is open (not closing or closed): what "connected" means for presence.
pub fn is_open(ws: &WebSocket) -> bool {
    let raw: &worker::web_sys::WebSocket = ws.as_ref();
    raw.ready_state() == worker::web_sys::WebSocket::OPEN
}

/// Sockets (with `tag`, if given) that are still open, without `closing`. Inside
/// `websocket_close`/`websocket_error` the runtime still lists the socket being closed.
pub fn open_peers(state: &State, tag: Option<&str>, closing: &WebSocket) -> Vec<WebSocket> {
    const OPEN: u16 = 1;
    sockets(state, tag)
        .into_iter()
        .filter(|ws| !same_socket(ws, closing) && AsRef::<worker::web_sys::WebSocket>::as_ref(ws).ready_state() == OPEN)
        .collect()
}

/// The distinct users of the object's open sockets, without `except`: a socket's first tag is
/// `u:<userId>` (the convention every DO follows). Answered in JS, one crossing in all, from a
/// per-object index (user → sockets): one scan of the runtime's sockets builds it at the first
/// question of an instance; [`accept`] adds to it and [`live_gone`] takes out. A reconnect
/// storm asks on every join and departure: a scan per question made the storm O(n²) in tag
/// reads (a tenth of its samples at 400 clients, more above).
pub fn live_users(state: &State, except: Option<&WebSocket>) -> BTreeSet<String> {
    let except: Option<&JsValue> = except.map(|ws| AsRef::<worker::web_sys::WebSocket>::as_ref(ws).as_ref());
    match runtime::live_users(runtime::raw(state), except) {
        Ok(users) => users.iter().filter_map(|u| u.as_string()).collect(),
        Err(e) => {
            worker::console_error!("getWebSockets failed: {e:?}");
            BTreeSet::new()
        }
    }
}

/// `ws` of `user_id` was announced gone: out of the live index ([`live_users`]).
pub fn live_gone(state: &State, ws: &WebSocket, user_id: &str) {
    runtime::live_remove(runtime::raw(state), AsRef::<worker::web_sys::WebSocket>::as_ref(ws).as_ref(), user_id);
}

/// A new instance: forget any live index kept for this state; the first question rebuilds it
/// from the runtime's sockets.
pub fn live_forget(state: &State) {
    runtime::live_forget(runtime::raw(state));
}

/// The tags a socket was accepted with.
pub fn tags(state: &State, ws: &WebSocket) -> Vec<String> {
    runtime::raw(state)
        .get_tags(ws.as_ref())
        .map(|a| a.iter().filter_map(|v| v.as_string()).collect())
        .unwrap_or_default()
}

/// Whether two handles are the same socket.
pub fn same_socket(a: &WebSocket, b: &WebSocket) -> bool {
    js_sys::Object::is(a.as_ref(), b.as_ref())
}

/// Send a frame; a socket that is already closing just misses it. Whether it was sent.
pub fn send(ws: &WebSocket, frame: &str) -> bool {
    ws.send_with_str(frame).is_ok()
}

/// Send `frame` to every socket (with `tag`, if given), except `except`: one crossing into JS
/// for the whole fan-out ([`runtime::broadcast_text`]); with 50+ sockets the per-socket
/// crossings (array access, identity check, send) dominated the cost.
/// Returns how many sockets it was sent to (the kit's `framesOut`).
pub fn broadcast(state: &State, frame: &str, tag: Option<&str>, except: Option<&WebSocket>) -> u32 {
    let except: Option<&JsValue> = except.map(|ws| AsRef::<worker::web_sys::WebSocket>::as_ref(ws).as_ref());
    match runtime::broadcast_text(runtime::raw(state), frame, tag.map(str::to_owned), except) {
        Ok(sent) => sent,
        Err(e) => {
            worker::console_error!("broadcast failed: {e:?}");
            0
        }
    }
}

/// Close with `code` and a clipped reason; errors (already closed) are ignored.
pub fn close(ws: &WebSocket, code: u16, reason: &str) {
    let _ = ws.close(Some(code), Some(clip_reason(reason)));
}

/// Reciprocate a client's close (PartyServer's `closeQuietly`): codes the peer may not send
/// back (1005 no status, 1006 abnormal, 1015 TLS) become 1000.
pub fn reciprocate_close(ws: &WebSocket, code: usize, reason: &str) {
    let code = u16::try_from(code)
        .ok()
        .filter(|c| matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999))
        .unwrap_or(1000);
    close(ws, code, reason);
}

/// Act on a rejected frame: close with its code, or answer in-band and keep the socket.
/// Whether a frame (the in-band error) was sent.
pub fn reject(ws: &WebSocket, rejection: &Reject) -> bool {
    match rejection {
        Reject::Close { code, reason } => {
            close(ws, *code, reason);
            false
        }
        Reject::InBand { code, message } => send(ws, &Reject::error_frame(code, message)),
    }
}

/// The text of a frame, or the 1007 rejection for binary frames.
pub fn frame_text(message: WebSocketIncomingMessage) -> Result<String, Reject> {
    match message {
        WebSocketIncomingMessage::String(s) => Ok(s),
        WebSocketIncomingMessage::Binary(_) => Err(frame::binary_rejected()),
    }
}

/// A socket's attachment, if it has a readable one.
pub fn attachment<A: DeserializeOwned>(ws: &WebSocket) -> Option<A> {
    ws.deserialize_attachment::<A>().ok().flatten()
}

/// Replace a socket's attachment (e.g. a rate-limit window), logging failures.
pub fn set_attachment<A: Serialize>(ws: &WebSocket, value: &A) {
    if let Err(e) = ws.serialize_attachment(value) {
        worker::console_error!("serializeAttachment failed: {e}");
    }
}

/// Load the object's timer table (see [`edge_realtime_core::schedule`]).
pub fn load_schedule(sql: &worker::SqlStorage) -> Schedule {
    #[derive(serde::Deserialize)]
    struct Row {
        name: String,
        at: i64,
    }
    let rows: Vec<Row> = sql::rows(sql, "SELECT name, at FROM _schedule", vec![]).unwrap_or_default();
    Schedule::from_entries(rows.into_iter().map(|r| (r.name, r.at)))
}

/// Persist the timer table: only the rows that changed from `stored` (the table as read at the
/// start of the event) are written — a heartbeat sweep that moves its timer is one upsert, not a
/// rewrite of the table (rows written are what an object is billed for). The caller then points
/// the alarm ([`sync_alarm`]): always, since it may have fired since the table was read.
pub fn write_schedule(sql: &worker::SqlStorage, stored: &Schedule, schedule: &Schedule) -> Result<(), ApiError> {
    let changes = schedule.changes_from(stored);
    for name in &changes.removed {
        sql::exec(sql, "DELETE FROM _schedule WHERE name = ?", vec![name.as_str().into()])?;
    }
    for (name, at) in &changes.written {
        sql::exec(
            sql,
            "INSERT INTO _schedule (name, at) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET at = excluded.at",
            vec![name.as_str().into(), sql::int(*at)],
        )?;
    }
    Ok(())
}

/// Point the single alarm at `deadline` (absolute ms) or clear it.
pub async fn sync_alarm(state: &State, deadline: Option<Millis>) -> Result<(), ApiError> {
    let storage = state.storage();
    match deadline {
        Some(at) => {
            let date = js_sys::Date::new(&JsValue::from_f64(at as f64));
            storage.set_alarm(worker::ScheduledTime::new(date)).await.map_err(internal("setAlarm"))
        }
        None => storage.delete_alarm().await.map_err(internal("deleteAlarm")),
    }
}

/// Create the kit's own table (called by each DO's schema setup).
pub const SCHEDULE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS _schedule (name TEXT PRIMARY KEY, at INTEGER NOT NULL)";

/// Unique ids for server-made records (UUID v4 format): one random seed per instance (one
/// `crypto.getRandomValues` per wake), then a counter — not one random draw per message. Ids are
/// unique, not secret: nothing may use them as capabilities.
pub struct UniqueIds {
    seed: u128,
    next: std::cell::Cell<u64>,
}

impl Default for UniqueIds {
    fn default() -> Self {
        Self { seed: uuid::Uuid::new_v4().as_u128(), next: std::cell::Cell::new(0) }
    }
}

impl UniqueIds {
    pub fn next_id(&self) -> String {
        let n = self.next.get().wrapping_add(1);
        self.next.set(n);
        let bytes = self.seed.wrapping_add(u128::from(n)).to_be_bytes();
        uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
    }
}

/// An in-memory copy of each socket's attachment, for per-message hot paths: reading an
/// attachment is a structured-clone deserialization, writing one a serialization. Keyed by the
/// socket object (a JS `WeakMap`), refilled from the stored attachment after every wake.
/// The owner decides when a change must also be persisted (see [`AttachmentCache::put`]).
pub struct AttachmentCache<T> {
    ids: js_sys::WeakMap,
    values: std::cell::RefCell<std::collections::HashMap<u32, T>>,
    next_id: std::cell::Cell<u32>,
}

impl<T: Clone + Serialize + DeserializeOwned> Default for AttachmentCache<T> {
    fn default() -> Self {
        Self { ids: js_sys::WeakMap::new(), values: Default::default(), next_id: std::cell::Cell::new(0) }
    }
}

impl<T: Clone + Serialize + DeserializeOwned> AttachmentCache<T> {
    fn key(ws: &WebSocket) -> &js_sys::Object {
        AsRef::<worker::web_sys::WebSocket>::as_ref(ws).unchecked_ref()
    }

    fn id(&self, ws: &WebSocket) -> Option<u32> {
        self.ids.get(Self::key(ws)).as_f64().map(|f| f as u32)
    }

    /// The socket's attachment: the cached copy, else the stored one (then cached).
    pub fn get(&self, ws: &WebSocket) -> Option<T> {
        if let Some(v) = self.id(ws).and_then(|id| self.values.borrow().get(&id).cloned()) {
            return Some(v);
        }
        let stored = attachment::<T>(ws)?;
        self.remember(ws, stored.clone());
        Some(stored)
    }

    fn remember(&self, ws: &WebSocket, value: T) {
        let id = self.id(ws).unwrap_or_else(|| {
            let id = self.next_id.get().wrapping_add(1);
            self.next_id.set(id);
            self.ids.set(Self::key(ws), &JsValue::from(id));
            id
        });
        self.values.borrow_mut().insert(id, value);
    }

    /// Update the cached copy; with `persist`, store it as the socket's attachment too (what
    /// must survive hibernation).
    pub fn put(&self, ws: &WebSocket, value: &T, persist: bool) {
        if persist {
            set_attachment(ws, value);
        }
        self.remember(ws, value.clone());
    }

    /// Drop a closed socket's copy.
    pub fn forget(&self, ws: &WebSocket) {
        if let Some(id) = self.id(ws) {
            self.values.borrow_mut().remove(&id);
            self.ids.delete(Self::key(ws));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::UniqueIds;

    #[test]
    fn unique_ids_are_distinct_v4_uuids() {
        let ids = UniqueIds::default();
        let other_instance = UniqueIds::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            for id in [ids.next_id(), other_instance.next_id()] {
                assert_eq!(uuid::Uuid::parse_str(&id).map(|u| u.get_version_num()), Ok(4), "{id}");
                assert!(seen.insert(id), "duplicate id");
            }
        }
    }
}
