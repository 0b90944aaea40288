//! UserSession Durable Object (SPEC §6.1, §3): one per user, an adapter over
//! `core::session`. The session row (games, `lastActive`, last logout) lives in SQLite and is
//! cached in memory; each device's presence lives in its socket's attachment, so a woken object
//! rebuilds everything from storage + attachments.
//!
//! It is also the user's revocation authority: the entry Worker asks it (`check`) before every
//! WebSocket connect on any route, and it remembers which objects the user has sockets in
//! (`registry`), so `logout_all` can close them all with 4001 (`revoke` fan-out).

use std::cell::RefCell;

use serde::Deserialize;
use worker::{durable_object, DurableObject, Env, Method, Request, RequestInit, Response, State, WebSocket, WebSocketIncomingMessage};

use edge_realtime_core::error::{close, ApiError};
use edge_realtime_core::names::is_valid_name;
use edge_realtime_core::route::DoClass;
use edge_realtime_core::session::{self, DeviceConn, Outcome, SessionState, To};
use edge_realtime_core::time::Millis;

use crate::kit::{self, http, sql, Identity};

/// Internal op the entry Worker calls before forwarding any WebSocket connect.
pub const CHECK_OP: &str = "check";
/// Internal op a GameServer calls when the user joins or leaves a game.
pub const GAMES_OP: &str = "games";
/// How many (class, object) pairs the registry keeps: the newest by last connect.
const MAX_REGISTRY: i64 = 200;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS session (id INTEGER PRIMARY KEY CHECK (id = 1), user_id TEXT NOT NULL, state TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS registry (class TEXT NOT NULL, name TEXT NOT NULL, seen_at INTEGER NOT NULL, PRIMARY KEY (class, name))",
    kit::SCHEDULE_SCHEMA,
];

#[derive(Deserialize)]
struct SessionRow {
    state: String,
}

#[derive(Deserialize)]
struct RegistryRow {
    class: String,
    name: String,
}

#[durable_object]
pub struct UserSession {
    state: State,
    env: Env,
    /// Cached session row; `None` until the first request names the user.
    current: RefCell<Option<SessionState>>,
    /// `HEARTBEAT_TIMEOUT_MS`.
    heartbeat_ms: i64,
}

impl UserSession {
    fn sql(&self) -> worker::SqlStorage {
        self.state.storage().sql()
    }

    fn load(&self) -> Option<SessionState> {
        let row: Option<SessionRow> = sql::first(&self.sql(), "SELECT state FROM session WHERE id = 1", vec![]).ok()?;
        row.and_then(|r| serde_json::from_str(&r.state).ok())
    }

    fn cached(&self) -> Option<SessionState> {
        if let Some(s) = self.current.borrow().clone() {
            return Some(s);
        }
        let loaded = self.load()?;
        *self.current.borrow_mut() = Some(loaded.clone());
        Some(loaded)
    }

    /// The session, created on the first request that names the user.
    fn ensure(&self, req: &Request) -> Result<SessionState, ApiError> {
        if let Some(s) = self.cached() {
            return Ok(s);
        }
        let user = http::object_name(req).ok_or_else(|| ApiError::bad_request("missing_name", "object name missing"))?;
        let fresh = SessionState::new(user, kit::now());
        self.persist(&fresh)?;
        Ok(fresh)
    }

    /// Write the session row and the cache (synchronous: before anything is sent).
    fn persist(&self, next: &SessionState) -> Result<(), ApiError> {
        let json = serde_json::to_string(next).map_err(|_| ApiError::internal())?;
        sql::exec(
            &self.sql(),
            "INSERT INTO session (id, user_id, state) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state",
            vec![next.user_id.as_str().into(), json.into()],
        )?;
        *self.current.borrow_mut() = Some(next.clone());
        Ok(())
    }

    /// The open sockets of the user except `except`, with their attachments.
    fn devices(&self, except: Option<&WebSocket>) -> Vec<(WebSocket, DeviceConn)> {
        kit::sockets(&self.state, None)
            .into_iter()
            .filter(|ws| kit::is_open(ws) && !except.is_some_and(|e| kit::same_socket(e, ws)))
            .filter_map(|ws| kit::attachment::<DeviceConn>(&ws).map(|d| (ws, d)))
            .collect()
    }

    fn conns(&self, except: Option<&WebSocket>) -> Vec<DeviceConn> {
        self.devices(except).into_iter().map(|(_, d)| d).collect()
    }

    /// Carry out a core outcome for socket `ws`: persist, attachment, sends, close, logout.
    async fn execute(&self, ws: &WebSocket, outcome: Outcome) {
        if let Some(next) = &outcome.state {
            if self.persist(next).is_err() {
                kit::close(ws, close::INTERNAL, "storage failed");
                return;
            }
        }
        if let Some(conn) = &outcome.attachment {
            kit::set_attachment(ws, conn);
        }
        for delivery in &outcome.sends {
            match delivery.to {
                To::This => kit::send(ws, &delivery.frame),
                To::All => kit::broadcast(&self.state, &delivery.frame, None, None),
                To::Others => kit::broadcast(&self.state, &delivery.frame, None, Some(ws)),
            }
        }
        if let Some(c) = &outcome.close {
            kit::close(ws, c.code, &c.reason);
        }
        if let Some(logout) = outcome.logout_all {
            for other in kit::sockets(&self.state, None) {
                kit::close(&other, close::LOGGED_OUT, session::LOGGED_OUT_REASON);
            }
            self.fan_out_revoke(logout.at).await;
            self.release_closed_sockets().await;
        }
    }

    /// After `logout_all` closed every socket here and the fan-out finished: sockets closed
    /// from within an event get their Close frame at once, but workerd keeps their TCP until
    /// the object is evicted (10–30 s), so a browser's `onclose` would wait that long. Flush
    /// storage (the revocation must survive the reset), then `ctx.abort()` the object: the
    /// runtime drops every socket it holds now. Skipped if a socket opened meanwhile (a new
    /// token) is still open — abort would drop it too.
    async fn release_closed_sockets(&self) {
        if kit::sockets(&self.state, None).iter().any(kit::is_open) {
            return;
        }
        if let Err(e) = kit::liveness::flush(&self.state).await {
            worker::console_error!("logout_all flush: {e:?}");
            return;
        }
        kit::liveness::abort(&self.state, "logout_all: release closed sockets");
    }

    /// Tell every object the user has (had) sockets in to close those opened with a token from
    /// before `at`; entries answered are dropped (new connects register again).
    async fn fan_out_revoke(&self, at: Millis) {
        let Some(user) = self.cached().map(|s| s.user_id) else { return };
        let rows: Vec<RegistryRow> =
            sql::rows(&self.sql(), "SELECT class, name FROM registry WHERE seen_at <= ?", vec![sql::int(at)]).unwrap_or_default();
        let calls = rows.iter().map(|row| self.revoke_in(&user, row, at));
        let results = futures::future::join_all(calls).await;
        worker::console_log!("[edge-realtime] logout_all {user}: revoked in {} of {} objects", results.iter().filter(|ok| **ok).count(), rows.len());
        let _ = sql::exec(&self.sql(), "DELETE FROM registry WHERE seen_at <= ?", vec![sql::int(at)]);
    }

    async fn revoke_in(&self, user: &str, row: &RegistryRow, at: Millis) -> bool {
        let Some(class) = DoClass::parse(&row.class).filter(|c| *c != DoClass::UserSession) else { return false };
        let url = format!("https://do.internal/revoke?userId={user}&before={at}");
        let headers = worker::Headers::new();
        let _ = headers.set(http::OBJECT_NAME, &row.name);
        let mut init = RequestInit::new();
        init.with_method(Method::Post).with_headers(headers);
        let Ok(req) = Request::new_with_init(&url, &init) else { return false };
        let stub = self.env.durable_object(class.binding()).and_then(|ns| ns.get_by_name(&row.name));
        match stub {
            Ok(stub) => stub.fetch_with_request(req).await.is_ok_and(|r| r.status_code() == 200),
            Err(e) => {
                worker::console_error!("revoke fan-out to {} {}: {e}", row.class, row.name);
                false
            }
        }
    }

    /// `GET /__user-session?userId=&deviceId=`: refuse revoked tokens (401), else accept.
    async fn open_socket(&self, req: &Request) -> Result<Response, ApiError> {
        let identity = Identity::from_request(req)?;
        let device_id = http::query_param(req, "deviceId")
            .filter(|d| is_valid_name(d))
            .ok_or_else(|| ApiError::bad_request("invalid_name", "deviceId must match ^[A-Za-z0-9_.-]{1,64}$"))?;
        let current = self.ensure(req)?;
        if current.user_id != identity.user_id {
            return Err(ApiError::unauthorized("wrong_user", "userId must be the token's own user"));
        }
        if session::is_revoked(current.logged_out_at, identity.token_iat) {
            return Err(revoked_error());
        }
        let others = self.conns(None);
        let device = DeviceConn::new(device_id.clone(), identity.token_iat);
        let tags = [format!("u:{}", identity.user_id), format!("d:{device_id}")];
        let (ws, response) = kit::accept(&self.state, req, &tags, &device)?;
        let now = kit::now();
        let outcome = session::on_connect(&current, &device, &others, now);
        self.execute(&ws, outcome).await;
        if kit::is_open(&ws) {
            if let Err(e) = kit::liveness::arm(&self.state, now, self.heartbeat_ms).await {
                worker::console_error!("session heartbeat arm: {e:?}");
            }
        }
        Ok(response)
    }

    /// Internal `check?class=&name=` from the entry Worker: 401 if the caller's token was
    /// revoked, else remember that the user is connecting to that object.
    fn check(&self, req: &Request) -> Result<Response, ApiError> {
        let identity = Identity::from_request(req)?;
        if let Some(s) = self.cached() {
            if session::is_revoked(s.logged_out_at, identity.token_iat) {
                return Err(revoked_error());
            }
        }
        let class = http::query_param(req, "class").and_then(|c| DoClass::parse(&c));
        let name = http::query_param(req, "name").filter(|n| !n.is_empty() && n.len() <= 256);
        let (Some(class), Some(name)) = (class, name) else {
            return Err(ApiError::bad_request("invalid_check", "class and name required"));
        };
        let db = self.sql();
        sql::exec(
            &db,
            "INSERT INTO registry (class, name, seen_at) VALUES (?, ?, ?) ON CONFLICT (class, name) DO UPDATE SET seen_at = excluded.seen_at",
            vec![class.as_str().into(), name.into(), sql::int(kit::now())],
        )?;
        sql::exec(
            &db,
            "DELETE FROM registry WHERE rowid NOT IN (SELECT rowid FROM registry ORDER BY seen_at DESC LIMIT ?)",
            vec![sql::int(MAX_REGISTRY)],
        )?;
        ok_json(&serde_json::json!({"ok": true}))
    }

    /// Admin `clear`: wipe games (not the revocation), tell every device, close them (1000).
    fn clear(&self, req: &Request) -> Result<Response, ApiError> {
        let current = self.ensure(req)?;
        let devices = self.devices(None);
        let conns: Vec<DeviceConn> = devices.iter().map(|(_, d)| d.clone()).collect();
        let outcome = session::on_clear(&current, &conns, kit::now());
        if let Some(next) = &outcome.state {
            self.persist(next)?;
        }
        for (ws, _) in &devices {
            for delivery in &outcome.sends {
                kit::send(ws, &delivery.frame);
            }
            kit::close(ws, 1000, "session cleared");
        }
        let view = self.ensure(req)?.view(&[]);
        ok_json(&view)
    }

    async fn notify(&self, mut req: Request) -> Result<Response, ApiError> {
        let body = http::read_json_body(&mut req).await?;
        let frame = session::notification_frame(&body)?;
        self.ensure(&req)?;
        let devices = self.devices(None);
        for (ws, _) in &devices {
            kit::send(ws, &frame);
        }
        ok_json(&serde_json::json!({"delivered": devices.len()}))
    }

    /// Internal `games?gameId=&action=join|leave` from a GameServer, after it stored the
    /// change: the `join_game` / `leave_game` rules, told to every device of the user.
    fn games(&self, req: &Request) -> Result<Response, ApiError> {
        let game_id = http::query_param(req, "gameId").unwrap_or_default();
        let joined = match http::query_param(req, "action").as_deref() {
            Some("join") => true,
            Some("leave") => false,
            _ => return Err(ApiError::bad_request("invalid_action", "action must be join or leave")),
        };
        let outcome = session::on_game(&self.ensure(req)?, &game_id, joined, kit::now())
            .map_err(|e| ApiError::unprocessable(e.code(), e.to_string()))?;
        if let Some(next) = &outcome.state {
            self.persist(next)?;
        }
        for delivery in outcome.sends.iter().filter(|d| d.to == To::All) {
            kit::broadcast(&self.state, &delivery.frame, None, None);
        }
        ok_json(&serde_json::json!({"ok": true}))
    }

    async fn route(&self, req: Request) -> Result<Response, ApiError> {
        let op = req.path();
        match op.trim_start_matches('/') {
            "ws" => self.open_socket(&req).await,
            CHECK_OP => self.check(&req),
            "state" => {
                let view = self.ensure(&req)?.view(&self.conns(None));
                ok_json(&view)
            }
            "clear" => self.clear(&req),
            "notify" => self.notify(req).await,
            GAMES_OP => self.games(&req),
            "revoke" => {
                let closed = crate::objects::revoke_sockets(&self.state, &req)?.len();
                ok_json(&serde_json::json!({"closed": closed}))
            }
            _ => Err(ApiError::not_found("unknown user session operation")),
        }
    }

    /// A socket closed or errored: it no longer counts (presence may move).
    async fn gone(&self, ws: &WebSocket) {
        let (Some(current), Some(closing)) = (self.cached(), kit::attachment::<DeviceConn>(ws)) else { return };
        if closing.gone {
            return; // the heartbeat sweep already announced it
        }
        let outcome = session::on_close(&current, &closing, &self.conns(Some(ws)), kit::now());
        self.execute(ws, outcome).await;
    }
}

impl UserSession {
    /// Close the devices silent for the heartbeat timeout and announce each like a close
    /// (presence may move). Returns when the next sweep is due.
    async fn sweep(&self) -> Option<i64> {
        let (stale, next) = kit::liveness::sweep(&self.state, kit::now(), self.heartbeat_ms);
        for ws in stale {
            let device = kit::attachment::<DeviceConn>(&ws).map(|d| DeviceConn { gone: true, ..d });
            if let Some(device) = &device {
                kit::set_attachment(&ws, device);
            }
            kit::liveness::close_stale(&ws);
            if let (Some(current), Some(device)) = (self.cached(), device) {
                let outcome = session::on_close(&current, &device, &self.conns(Some(&ws)), kit::now());
                self.execute(&ws, outcome).await;
            }
        }
        next
    }
}

fn revoked_error() -> ApiError {
    ApiError::unauthorized("token_revoked", "this token was revoked by logout_all; sign in again")
}

fn ok_json(value: &serde_json::Value) -> Result<Response, ApiError> {
    http::json_response(200, value).map_err(kit::internal("response"))
}

impl DurableObject for UserSession {
    fn new(state: State, env: Env) -> Self {
        let db = state.storage().sql();
        for statement in SCHEMA {
            let _ = sql::exec(&db, statement, vec![]);
        }
        kit::install_auto_response(&state);
        // Devices live in the sockets' attachments, never in storage: after a crash or a
        // deploy there is nothing to reconcile (see kit::liveness).
        let heartbeat_ms = kit::liveness::timeout_ms(&env);
        let this = Self { state, env, current: RefCell::new(None), heartbeat_ms };
        // Runs again after every wake: rebuild the cache from storage.
        if let Some(loaded) = this.load() {
            kit::log_wake(&this.env, "UserSession", &loaded.user_id);
            *this.current.borrow_mut() = Some(loaded);
        }
        this
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        http::respond(self.route(req).await)
    }

    async fn websocket_message(&self, ws: WebSocket, message: WebSocketIncomingMessage) -> worker::Result<()> {
        let text = match kit::frame_text(message) {
            Ok(text) => text,
            Err(rejection) => {
                kit::reject(&ws, &rejection);
                return Ok(());
            }
        };
        let (Some(current), Some(device)) = (self.cached(), kit::attachment::<DeviceConn>(&ws)) else {
            kit::close(&ws, close::INTERNAL, "lost session state");
            return Ok(());
        };
        let outcome = session::on_message(&current, &device, &self.conns(Some(&ws)), &text, kit::now());
        self.execute(&ws, outcome).await;
        Ok(())
    }

    async fn websocket_close(&self, ws: WebSocket, code: usize, reason: String, _was_clean: bool) -> worker::Result<()> {
        kit::reciprocate_close(&ws, code, &reason);
        self.gone(&ws).await;
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> worker::Result<()> {
        kit::close(&ws, close::INTERNAL, "socket error");
        self.gone(&ws).await;
        Ok(())
    }

    async fn connect(&self, _socket: worker::Socket) -> worker::Result<()> {
        Err(worker::Error::RustError("UserSession does not accept raw TCP connections".into()))
    }

    async fn alarm(&self) -> worker::Result<Response> {
        // The only timer is the heartbeat sweep; a stray or early alarm just sweeps again.
        let mut schedule = kit::load_schedule(&self.sql());
        schedule.take_due(kit::now());
        let next = self.sweep().await;
        edge_realtime_core::schedule::liveness::rearm(&mut schedule, next);
        if let Err(e) = kit::save_schedule(&self.state, &schedule).await {
            worker::console_error!("session schedule: {e:?}");
        }
        Response::ok("ok")
    }
}
