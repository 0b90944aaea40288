//! Waddle Durable Object (SPEC §6.4): an adapter over `core::waddle`. One object per
//! community; the presence table lives in SQLite and in memory (rebuilt in the constructor),
//! typing is relayed and never stored.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};
use worker::{durable_object, DurableObject, Env, Request, Response, State, WebSocket, WebSocketIncomingMessage};

use edge_realtime_core::error::{close, ApiError};
use edge_realtime_core::frame::Reject;
use edge_realtime_core::waddle::{self, Outcome, Presence, Waddle as Core, WaddleConn};

use crate::kit::{self, http, sql, Identity};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS waddle (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS presence (user_id TEXT PRIMARY KEY, status TEXT NOT NULL, last_seen INTEGER NOT NULL)",
    kit::SCHEDULE_SCHEMA,
];

/// Per-socket attachment (first tag `u:<userId>`).
#[derive(Debug, Serialize, Deserialize)]
struct Conn {
    user_id: String,
    user_name: String,
    token_iat: i64,
    /// Set when the heartbeat sweep closed this socket and announced its user's departure, so
    /// a late `webSocketClose` does not announce it again.
    #[serde(default)]
    gone: bool,
}

impl Conn {
    fn core(&self) -> WaddleConn {
        WaddleConn { user_id: self.user_id.clone(), user_name: Some(self.user_name.clone()) }
    }
}

#[derive(Deserialize)]
struct PresenceRow {
    user_id: String,
    status: String,
    last_seen: i64,
}

#[derive(Deserialize)]
struct NameRow {
    name: String,
}

#[durable_object]
pub struct Waddle {
    state: State,
    core: RefCell<Core>,
    /// `HEARTBEAT_TIMEOUT_MS`.
    heartbeat_ms: i64,
}

impl Waddle {
    fn sql(&self) -> worker::SqlStorage {
        self.state.storage().sql()
    }

    /// Store the object's name once, so the constructor can log wakes by name.
    fn remember_name(&self, req: &Request) -> Result<(), ApiError> {
        let name = http::object_name(req).ok_or_else(|| ApiError::bad_request("missing_name", "object name missing"))?;
        sql::exec(&self.sql(), "INSERT OR IGNORE INTO waddle (id, name) VALUES (1, ?)", vec![name.into()])
    }

    /// Persist, then send: `store` first, `to_self` to `origin`, `to_others` to every other socket.
    fn execute(&self, origin: Option<&WebSocket>, outcome: Outcome) -> Result<(), ApiError> {
        if let Some((user_id, presence)) = &outcome.store {
            sql::exec(
                &self.sql(),
                "INSERT INTO presence (user_id, status, last_seen) VALUES (?, ?, ?) \
                 ON CONFLICT (user_id) DO UPDATE SET status = excluded.status, last_seen = excluded.last_seen",
                vec![user_id.as_str().into(), presence.status.as_str().into(), sql::int(presence.last_seen)],
            )?;
        }
        if let Some(ws) = origin {
            for frame in &outcome.to_self {
                kit::send(ws, frame);
            }
        }
        for frame in &outcome.to_others {
            kit::broadcast(&self.state, frame, None, origin);
        }
        Ok(())
    }

    async fn open_socket(&self, req: &Request) -> Result<Response, ApiError> {
        let identity = Identity::from_request(req)?;
        self.remember_name(req)?;
        let conn =
            Conn { user_id: identity.user_id, user_name: identity.user_name, token_iat: identity.token_iat, gone: false };
        let tags = [format!("u:{}", conn.user_id)];
        let (ws, response) = kit::accept(&self.state, req, &tags, &conn)?;
        let now = kit::now();
        let outcome = self.core.borrow_mut().on_connect(&conn.core(), now);
        self.execute(Some(&ws), outcome)?;
        if let Err(e) = kit::liveness::arm(&self.state, now, self.heartbeat_ms).await {
            worker::console_error!("waddle heartbeat arm: {e:?}");
        }
        Ok(response)
    }

    async fn broadcast(&self, mut req: Request) -> Result<Response, ApiError> {
        let body = req.text().await.map_err(|_| ApiError::bad_request("invalid_body", "could not read the body"))?;
        let frame = waddle::broadcast_frame(&body)?;
        let sockets = kit::sockets(&self.state, None);
        for ws in &sockets {
            kit::send(ws, &frame);
        }
        http::json_text_response(200, waddle::broadcast_response(sockets.len()))
    }

    async fn route(&self, req: Request) -> Result<Response, ApiError> {
        match req.path().trim_start_matches('/') {
            "ws" => self.open_socket(&req).await,
            "presence" => {
                self.remember_name(&req)?;
                let view = self.core.borrow().presence_view();
                http::json_text_response(200, view)
            }
            "broadcast" => self.broadcast(req).await,
            "revoke" => {
                let closed = crate::objects::revoke_sockets(&self.state, &req)?.len();
                http::json_response(200, &serde_json::json!({"ok": true, "closed": closed})).map_err(kit::internal("response"))
            }
            _ => Err(ApiError::not_found("unknown waddle operation")),
        }
    }

    fn on_frame(&self, ws: &WebSocket, text: &str) -> Result<(), Reject> {
        let conn: Conn = kit::attachment(ws).ok_or_else(|| Reject::close(close::INTERNAL, "lost connection state"))?;
        let outcome = self.core.borrow_mut().on_message(&conn.core(), text, kit::now())?;
        self.execute(Some(ws), outcome).map_err(|_| Reject::close(close::INTERNAL, "internal error"))
    }

    /// A socket closed or errored: its user goes offline when it was their last one.
    fn on_gone(&self, ws: &WebSocket) {
        let Some(conn) = kit::attachment::<Conn>(ws) else { return };
        if conn.gone {
            return; // the heartbeat sweep already announced it
        }
        self.depart(ws, &conn);
    }

    /// Announce that `ws` (of `conn`) is gone.
    fn depart(&self, ws: &WebSocket, conn: &Conn) {
        let remaining = kit::open_peers(&self.state, Some(&format!("u:{}", conn.user_id)), ws).len();
        let outcome = self.core.borrow_mut().on_close(&conn.core(), remaining, kit::now());
        if let Err(e) = self.execute(Some(ws), outcome) {
            worker::console_error!("waddle close: {e:?}");
        }
    }
}

impl Waddle {
    /// On wake: members the table calls present but who have no open socket (a crash or a
    /// deploy dropped them without close events) go offline, announced to whoever is left.
    fn reconcile(&self, env: &Env) {
        let now = kit::now();
        let outcomes = kit::liveness::reconcile(&self.state, |live| self.core.borrow_mut().reconcile(live, now));
        if !outcomes.is_empty() {
            kit::log_debug(env, &format!("reconcile Waddle: {} ghost(s) offline", outcomes.len()));
        }
        for outcome in outcomes {
            if let Err(e) = self.execute(None, outcome) {
                worker::console_error!("waddle reconcile: {e:?}");
            }
        }
    }

    /// Close the sockets silent for the heartbeat timeout and announce them like a close, one
    /// at a time (so a user's last one makes them offline exactly once). Returns the next due time.
    fn sweep(&self) -> Option<i64> {
        let (stale, next) = kit::liveness::sweep(&self.state, kit::now(), self.heartbeat_ms);
        for ws in stale {
            let conn = kit::attachment::<Conn>(&ws).map(|c| Conn { gone: true, ..c });
            if let Some(conn) = &conn {
                kit::set_attachment(&ws, conn);
            }
            kit::liveness::close_stale(&ws);
            if let Some(conn) = &conn {
                self.depart(&ws, conn);
            }
        }
        next
    }
}

impl DurableObject for Waddle {
    fn new(state: State, env: Env) -> Self {
        let db = state.storage().sql();
        for statement in SCHEMA {
            let _ = sql::exec(&db, statement, vec![]);
        }
        kit::install_auto_response(&state);
        let rows: Vec<PresenceRow> =
            sql::rows(&db, "SELECT user_id, status, last_seen FROM presence", vec![]).unwrap_or_default();
        let core = Core::from_rows(rows.into_iter().map(|r| {
            let presence = Presence::from_row(&r.status, r.last_seen);
            (r.user_id, presence)
        }));
        if let Ok(Some(row)) = sql::first::<NameRow>(&db, "SELECT name FROM waddle WHERE id = 1", vec![]) {
            kit::log_wake(&env, "Waddle", &row.name);
        }
        let this = Self { state, core: RefCell::new(core), heartbeat_ms: kit::liveness::timeout_ms(&env) };
        this.reconcile(&env);
        this
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        http::respond(self.route(req).await)
    }

    async fn websocket_message(&self, ws: WebSocket, message: WebSocketIncomingMessage) -> worker::Result<()> {
        if let Err(rejection) = kit::frame_text(message).and_then(|text| self.on_frame(&ws, &text)) {
            kit::reject(&ws, &rejection);
        }
        Ok(())
    }

    async fn websocket_close(&self, ws: WebSocket, code: usize, reason: String, _was_clean: bool) -> worker::Result<()> {
        kit::reciprocate_close(&ws, code, &reason);
        self.on_gone(&ws);
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> worker::Result<()> {
        kit::close(&ws, close::INTERNAL, "socket error");
        self.on_gone(&ws);
        Ok(())
    }

    async fn connect(&self, _socket: worker::Socket) -> worker::Result<()> {
        Err(worker::Error::RustError("Waddle does not accept raw TCP connections".into()))
    }

    async fn alarm(&self) -> worker::Result<Response> {
        // The only timer is the heartbeat sweep; a stray or early alarm just sweeps again.
        let mut schedule = kit::load_schedule(&self.sql());
        schedule.take_due(kit::now());
        let next = self.sweep();
        edge_realtime_core::schedule::liveness::rearm(&mut schedule, next);
        if let Err(e) = kit::save_schedule(&self.state, &schedule).await {
            worker::console_error!("waddle schedule: {e:?}");
        }
        Response::ok("ok")
    }
}
