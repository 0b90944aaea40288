//! Channel Durable Object (SPEC §6.5): an adapter over `core::channel`. Messages live in
//! SQLite; the core's small state (latest sequence, pruned_through, typing flags, timers) is
//! persisted in its own tables and rebuilt in the constructor. A post is deduplicated,
//! sequenced, stored and committed in one synchronous turn, so sequences stay gapless under
//! any mix of WebSocket and HTTP writers.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use worker::{durable_object, DurableObject, Env, Request, Response, State, WebSocket, WebSocketIncomingMessage};

use edge_realtime_core::channel::{self, Channel as Core, ChannelMessage, Handled, HistoryQuery, Outcome, Post};
use edge_realtime_core::error::{close, ApiError};
use edge_realtime_core::frame::Reject;
use edge_realtime_core::query::parse_seq;
use edge_realtime_core::replay::{self, Replay};

use crate::kit::{self, http, sql, Identity};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS channel (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL, \
     latest_seq INTEGER NOT NULL DEFAULT 0, pruned_through INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS messages (sequence INTEGER PRIMARY KEY, user_id TEXT NOT NULL, content TEXT NOT NULL, \
     timestamp INTEGER NOT NULL, client_id TEXT)",
    "CREATE UNIQUE INDEX IF NOT EXISTS messages_client ON messages (user_id, client_id) WHERE client_id IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS typing (user_id TEXT PRIMARY KEY, expires_at INTEGER NOT NULL)",
    kit::SCHEDULE_SCHEMA,
];
const COLUMNS: &str = "sequence, user_id, content, timestamp, client_id";

/// Per-socket attachment (first tag `u:<userId>`).
#[derive(Debug, Serialize, Deserialize)]
struct Conn {
    user_id: String,
    token_iat: i64,
    /// Set when the heartbeat sweep closed this socket and announced it, so a late
    /// `webSocketClose` does not announce it again.
    #[serde(default)]
    gone: bool,
}

#[derive(Deserialize)]
struct ChannelRow {
    name: String,
    latest_seq: i64,
    pruned_through: i64,
}

#[derive(Deserialize)]
struct TypingRow {
    user_id: String,
    expires_at: i64,
}

#[derive(Deserialize)]
struct MessageRow {
    sequence: i64,
    user_id: String,
    content: String,
    timestamp: i64,
    client_id: Option<String>,
}

impl From<MessageRow> for ChannelMessage {
    fn from(r: MessageRow) -> Self {
        ChannelMessage { sequence: r.sequence, user_id: r.user_id, content: r.content, timestamp: r.timestamp, client_id: r.client_id }
    }
}

/// A post's result: a new message, or the sequence a repeated client id already has.
enum Posted {
    New { sequence: i64, outcome: Outcome },
    Repeat { sequence: i64 },
}

#[durable_object]
pub struct Channel {
    state: State,
    env: Env,
    core: RefCell<Core>,
    /// `HEARTBEAT_TIMEOUT_MS`.
    heartbeat_ms: i64,
}

impl Channel {
    fn sql(&self) -> worker::SqlStorage {
        self.state.storage().sql()
    }

    fn retention(&self) -> channel::Retention {
        channel::Retention::from_vars(|k| self.env.var(k).ok().map(|v| v.to_string()))
    }

    /// Create the channel row on first use (its name lets the constructor log wakes).
    fn remember_name(&self, req: &Request) -> Result<(), ApiError> {
        let name = http::object_name(req).ok_or_else(|| ApiError::bad_request("missing_name", "object name missing"))?;
        sql::exec(&self.sql(), "INSERT OR IGNORE INTO channel (id, name) VALUES (1, ?)", vec![name.into()])
    }

    /// Dedup, sequence, store, commit — synchronously, so no other event interleaves.
    fn post(&self, user_id: &str, post: Post) -> Result<Posted, ApiError> {
        let db = self.sql();
        if let Some(id) = post.client_id.as_deref() {
            #[derive(Deserialize)]
            struct Seq {
                sequence: i64,
            }
            let seen: Option<Seq> = sql::first(
                &db,
                "SELECT sequence FROM messages WHERE user_id = ? AND client_id = ?",
                vec![user_id.into(), id.into()],
            )?;
            if let Some(seen) = seen {
                return Ok(Posted::Repeat { sequence: seen.sequence });
            }
        }
        let now = kit::now();
        let message = self.core.borrow().prepare(user_id, post, now).map_err(|e| e.to_api())?;
        sql::exec(
            &db,
            "INSERT INTO messages (sequence, user_id, content, timestamp, client_id) VALUES (?, ?, ?, ?, ?)",
            vec![
                sql::int(message.sequence),
                message.user_id.as_str().into(),
                message.content.as_str().into(),
                sql::int(message.timestamp),
                sql::opt_text(message.client_id.as_deref()),
            ],
        )?;
        sql::exec(&db, "UPDATE channel SET latest_seq = ? WHERE id = 1", vec![sql::int(message.sequence)])?;
        let outcome = self.core.borrow_mut().commit(&message, now, self.retention());
        Ok(Posted::New { sequence: message.sequence, outcome })
    }

    /// Persist what the outcome says (typing table, pruning), then send `to_self` to
    /// `origin`, `to_all` to everyone and `to_others` to all but `origin`. Synchronous; the
    /// schedule follows with [`Self::sync_timers`].
    fn apply(&self, origin: Option<&WebSocket>, outcome: &Outcome) {
        if let Err(e) = self.persist(outcome) {
            worker::console_error!("channel persist failed: {e:?}");
        }
        if let Some(ws) = origin {
            for frame in &outcome.to_self {
                kit::send(ws, frame);
            }
        }
        for frame in &outcome.to_all {
            kit::broadcast(&self.state, frame, None, None);
        }
        for frame in &outcome.to_others {
            kit::broadcast(&self.state, frame, None, origin);
        }
    }

    /// Store the core's timers and point the alarm at the earliest one.
    async fn sync_timers(&self) {
        let timers = self.core.borrow().timers().clone();
        if let Err(e) = kit::save_schedule(&self.state, &timers).await {
            worker::console_error!("channel schedule failed: {e:?}");
        }
    }

    async fn execute(&self, origin: Option<&WebSocket>, outcome: Outcome) {
        self.apply(origin, &outcome);
        if outcome.timers_changed {
            self.sync_timers().await;
        }
    }

    /// The synchronous part of persisting an outcome.
    fn persist(&self, outcome: &Outcome) -> Result<(), ApiError> {
        let db = self.sql();
        if let Some(cutoff) = outcome.prune_through {
            sql::exec(&db, "DELETE FROM messages WHERE sequence <= ?", vec![sql::int(cutoff)])?;
            sql::exec(&db, "UPDATE channel SET pruned_through = ? WHERE id = 1", vec![sql::int(cutoff)])?;
        }
        if outcome.typing_changed {
            let typing = self.core.borrow().typing().clone();
            sql::exec(&db, "DELETE FROM typing", vec![])?;
            for (user_id, expires_at) in typing {
                sql::exec(&db, "INSERT INTO typing (user_id, expires_at) VALUES (?, ?)", vec![user_id.into(), sql::int(expires_at)])?;
            }
        }
        Ok(())
    }

    /// Distinct users of the open sockets (not those closing), without `except`.
    fn users(&self, except: Option<&WebSocket>) -> BTreeSet<String> {
        let sockets = match except {
            Some(ws) => kit::open_peers(&self.state, None, ws),
            None => kit::sockets(&self.state, None).into_iter().filter(kit::is_open).collect(),
        };
        sockets.iter().filter_map(|ws| kit::user_of(&self.state, ws)).collect()
    }

    fn messages_after(&self, after: i64, limit: Option<u32>) -> Result<Vec<ChannelMessage>, ApiError> {
        let (query, binds) = match limit {
            Some(n) => (
                format!("SELECT {COLUMNS} FROM messages WHERE sequence > ? ORDER BY sequence LIMIT ?"),
                vec![sql::int(after), sql::int(i64::from(n))],
            ),
            None => (format!("SELECT {COLUMNS} FROM messages WHERE sequence > ? ORDER BY sequence"), vec![sql::int(after)]),
        };
        let rows: Vec<MessageRow> = sql::rows(&self.sql(), &query, binds)?;
        Ok(rows.into_iter().map(ChannelMessage::from).collect())
    }

    async fn open_socket(&self, req: &Request) -> Result<Response, ApiError> {
        let identity = Identity::from_request(req)?;
        let since = parse_seq("since", http::query_param(req, "since").as_deref())?;
        self.remember_name(req)?;
        let others = self.users(None);
        let conn = Conn { user_id: identity.user_id, token_iat: identity.token_iat, gone: false };
        let (ws, response) = kit::accept(&self.state, req, &[format!("u:{}", conn.user_id)], &conn)?;
        let outcome = self.core.borrow().on_connect(&conn.user_id, &others);
        self.apply(Some(&ws), &outcome);
        // Replay in this same synchronous turn, so no live message can overtake it.
        let plan = self.core.borrow().replay_plan(since);
        match plan {
            Replay::Nothing => {}
            Replay::Resync { latest_seq } => kit::send(&ws, &replay::resync_frame(latest_seq)),
            Replay::After(from) => match self.messages_after(from, None) {
                Ok(messages) => messages.iter().for_each(|m| kit::send(&ws, &m.frame())),
                Err(_) => kit::close(&ws, close::INTERNAL, "replay failed"),
            },
        }
        let armed = self.core.borrow_mut().arm_heartbeat(kit::now(), self.heartbeat_ms);
        if outcome.timers_changed || armed {
            self.sync_timers().await;
        }
        Ok(response)
    }

    async fn http_post(&self, mut req: Request) -> Result<Response, ApiError> {
        let identity = Identity::from_request(&req)?;
        let body = req.text().await.map_err(|_| ApiError::bad_request("invalid_body", "could not read the body"))?;
        let post = channel::parse_post_body(&body).map_err(|e| e.to_api())?;
        self.remember_name(&req)?;
        let sequence = match self.post(&identity.user_id, post)? {
            Posted::Repeat { sequence } => sequence,
            Posted::New { sequence, outcome } => {
                self.execute(None, outcome).await;
                sequence
            }
        };
        http::json_text_response(200, channel::post_response(sequence))
    }

    fn history(&self, req: &Request) -> Result<Response, ApiError> {
        let query = HistoryQuery::parse(
            http::query_param(req, "after").as_deref(),
            http::query_param(req, "limit").as_deref(),
        )?;
        let rows = self.messages_after(query.after, Some(query.fetch_limit()))?;
        http::json_text_response(200, channel::history_body(rows, query.limit))
    }

    async fn route(&self, req: Request) -> Result<Response, ApiError> {
        match req.path().trim_start_matches('/') {
            "ws" => self.open_socket(&req).await,
            "message" => self.http_post(req).await,
            "messages" => self.history(&req),
            "revoke" => {
                let closed = crate::objects::revoke_sockets(&self.state, &req)?.len();
                http::json_response(200, &serde_json::json!({"ok": true, "closed": closed})).map_err(kit::internal("response"))
            }
            _ => Err(ApiError::not_found("unknown channel operation")),
        }
    }

    async fn on_frame(&self, ws: &WebSocket, text: &str) -> Result<(), Reject> {
        let conn: Conn = kit::attachment(ws).ok_or_else(|| Reject::close(close::INTERNAL, "lost connection state"))?;
        let handled = self.core.borrow_mut().on_message(&conn.user_id, text, kit::now())?;
        match handled {
            Handled::Done(outcome) => self.execute(Some(ws), outcome).await,
            Handled::Post(post) => {
                let client_id = post.client_id.clone();
                let posted = self.post(&conn.user_id, post).map_err(|_| Reject::close(close::INTERNAL, "internal error"))?;
                match posted {
                    Posted::Repeat { sequence } => kit::send(ws, &channel::ack_frame(client_id.as_deref(), sequence)),
                    Posted::New { sequence, mut outcome } => {
                        outcome.to_self.push(channel::ack_frame(client_id.as_deref(), sequence));
                        self.execute(Some(ws), outcome).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// A socket closed or errored: the last socket of a user leaves and stops typing.
    async fn on_gone(&self, ws: &WebSocket) {
        let Some(conn) = kit::attachment::<Conn>(ws) else { return };
        if conn.gone {
            return; // the heartbeat sweep already announced it
        }
        self.depart(ws, &conn).await;
    }

    /// Announce that `ws` (of `conn`) left.
    async fn depart(&self, ws: &WebSocket, conn: &Conn) {
        let remaining = self.users(Some(ws));
        let outcome = self.core.borrow_mut().on_close(&conn.user_id, &remaining, kit::now());
        self.execute(Some(ws), outcome).await;
    }
}

impl Channel {
    /// On wake: typing flags of users without an open socket (dropped by a crash or a deploy)
    /// go, and whoever is left hears the new list. Synchronous (a constructor cannot await):
    /// the typing table is written now; a moved typing timer reaches the alarm on the next
    /// [`Self::sync_timers`], and an alarm that fires early just sweeps and re-arms.
    fn reconcile(&self) {
        let now = kit::now();
        let outcome = kit::liveness::reconcile(&self.state, |live| self.core.borrow_mut().reconcile(live, now));
        if outcome.typing_changed {
            kit::log_debug(&self.env, "reconcile Channel: ghost typing dropped");
            self.apply(None, &outcome);
        }
    }

    /// Close the sockets silent for the heartbeat timeout and announce each like a close.
    /// Returns when the next sweep is due.
    async fn sweep(&self) -> Option<i64> {
        let (stale, next) = kit::liveness::sweep(&self.state, kit::now(), self.heartbeat_ms);
        for ws in stale {
            let conn = kit::attachment::<Conn>(&ws).map(|c| Conn { gone: true, ..c });
            if let Some(conn) = &conn {
                kit::set_attachment(&ws, conn);
            }
            kit::liveness::close_stale(&ws);
            if let Some(conn) = &conn {
                self.depart(&ws, conn).await;
            }
        }
        next
    }
}

impl DurableObject for Channel {
    fn new(state: State, env: Env) -> Self {
        let db = state.storage().sql();
        for statement in SCHEMA {
            let _ = sql::exec(&db, statement, vec![]);
        }
        kit::install_auto_response(&state);
        let row: Option<ChannelRow> =
            sql::first(&db, "SELECT name, latest_seq, pruned_through FROM channel WHERE id = 1", vec![]).ok().flatten();
        let typing: Vec<TypingRow> = sql::rows(&db, "SELECT user_id, expires_at FROM typing", vec![]).unwrap_or_default();
        let (latest_seq, pruned_through) = row.as_ref().map_or((0, 0), |r| (r.latest_seq, r.pruned_through));
        let core = Core::restore(
            latest_seq,
            pruned_through,
            typing.into_iter().map(|t| (t.user_id, t.expires_at)).collect(),
            kit::load_schedule(&db),
        );
        if let Some(row) = &row {
            kit::log_wake(&env, "Channel", &row.name);
        }
        let heartbeat_ms = kit::liveness::timeout_ms(&env);
        let this = Self { state, env, core: RefCell::new(core), heartbeat_ms };
        this.reconcile();
        this
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        http::respond(self.route(req).await)
    }

    async fn websocket_message(&self, ws: WebSocket, message: WebSocketIncomingMessage) -> worker::Result<()> {
        let result = match kit::frame_text(message) {
            Ok(text) => self.on_frame(&ws, &text).await,
            Err(rejection) => Err(rejection),
        };
        if let Err(rejection) = result {
            kit::reject(&ws, &rejection);
        }
        Ok(())
    }

    async fn websocket_close(&self, ws: WebSocket, code: usize, reason: String, _was_clean: bool) -> worker::Result<()> {
        kit::reciprocate_close(&ws, code, &reason);
        self.on_gone(&ws).await;
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> worker::Result<()> {
        kit::close(&ws, close::INTERNAL, "socket error");
        self.on_gone(&ws).await;
        Ok(())
    }

    async fn connect(&self, _socket: worker::Socket) -> worker::Result<()> {
        Err(worker::Error::RustError("Channel does not accept raw TCP connections".into()))
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let outcome = self.core.borrow_mut().on_alarm(kit::now(), self.retention().max_messages);
        self.apply(None, &outcome);
        // Every alarm also sweeps silent sockets and re-arms the heartbeat timer (or drops it).
        let next = self.sweep().await;
        self.core.borrow_mut().rearm_heartbeat(next);
        // The alarm that fired is spent: always point it at the next deadline.
        self.sync_timers().await;
        Response::ok("ok")
    }
}
