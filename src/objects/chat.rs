//! ChatRoom Durable Object (SPEC §6.3): an adapter over `core::chat`, one object per room.
//!
//! Storage: a `room` row (name, `latest_seq`, `pruned_through`) and one `messages` row per
//! chat or system message; the [`ChatLog`] is cached in memory and rebuilt in the constructor.
//! Each socket's [`ChatConn`] (identity + rate-limit window) is its attachment, so it survives
//! hibernation. Every append is read-modify-write in one synchronous turn, stored before it
//! is broadcast.

use std::cell::RefCell;
use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use worker::{durable_object, DurableObject, Env, Request, Response, State, WebSocket, WebSocketIncomingMessage};

use edge_realtime_core::chat::{self, ChatConfig, ChatConn, ChatLog, ChatMessage, HistoryQuery, Inbound, Post};
use edge_realtime_core::error::{close, ApiError};
use edge_realtime_core::frame;
use edge_realtime_core::query::parse_seq;
use edge_realtime_core::replay::{self, Replay};

use crate::kit::{self, http, sql, Identity};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS room (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL, \
     latest_seq INTEGER NOT NULL, pruned_through INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, client_id TEXT, kind TEXT NOT NULL, \
     user_id TEXT NOT NULL, user_name TEXT NOT NULL, content TEXT NOT NULL, timestamp INTEGER NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS messages_client ON messages (user_id, client_id) WHERE client_id IS NOT NULL",
    kit::SCHEDULE_SCHEMA,
];
/// Selecting these columns deserializes straight into [`ChatMessage`].
const COLUMNS: &str = "seq, id, client_id, kind, user_id, user_name, content, timestamp";

/// Per-socket attachment. `left` marks a socket whose departure was already announced (we
/// closed it ourselves), so a later `websocket_close` for it does not announce it twice.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ChatAttachment {
    token_iat: i64,
    #[serde(default)]
    left: bool,
    conn: ChatConn,
}

/// Rate-limit windows this short have always expired by the time an evicted room wakes (eviction
/// needs ~10 s idle), so within one their counts may live in memory only.
const MEMORY_ONLY_WINDOW_MS: i64 = 10_000;

#[derive(Deserialize)]
struct RoomRow {
    name: String,
    latest_seq: i64,
    pruned_through: i64,
}

#[durable_object]
pub struct ChatRoom {
    state: State,
    cfg: ChatConfig,
    log: RefCell<ChatLog>,
    /// Whether the prune timer is armed (mirrors the stored schedule), so the hot message path
    /// reads the schedule from storage only when it may have to arm it.
    prune_armed: std::cell::Cell<bool>,
    /// Attachments cached in memory: the message path neither deserializes nor rewrites them.
    attachments: kit::AttachmentCache<ChatAttachment>,
    /// Ids of messages the client did not name.
    ids: kit::UniqueIds,
    /// `HEARTBEAT_TIMEOUT_MS`.
    heartbeat_ms: i64,
}

fn user_tag(user_id: &str) -> String {
    format!("u:{user_id}")
}

impl ChatRoom {
    fn sql(&self) -> worker::SqlStorage {
        self.state.storage().sql()
    }

    /// Sequence one message with `make`, store it, and only then update the cache. `None` from `make` stores nothing.
    fn append(&self, make: impl FnOnce(&mut ChatLog) -> Option<ChatMessage>) -> Result<Option<ChatMessage>, ApiError> {
        let mut log = *self.log.borrow();
        let Some(m) = make(&mut log) else { return Ok(None) };
        let db = self.sql();
        sql::exec(
            &db,
            &format!("INSERT INTO messages ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
            vec![
                sql::int(m.seq),
                m.id.as_str().into(),
                sql::opt_text(m.client_id.as_deref()),
                m.kind.as_str().into(),
                m.user_id.as_str().into(),
                m.user_name.as_str().into(),
                m.content.as_str().into(),
                sql::int(m.timestamp),
            ],
        )?;
        // No `room` write per message: the newest row always survives pruning (CHAT_MAX_MESSAGES
        // ≥ 1), so `MAX(seq)` is the latest seq; `room.latest_seq` is refreshed when pruning.
        *self.log.borrow_mut() = log;
        Ok(Some(m))
    }

    /// Sockets whose departure has not been announced (with `tag` only, if given), except `except`.
    fn live(&self, tag: Option<&str>, except: Option<&WebSocket>) -> Vec<ChatConn> {
        kit::sockets(&self.state, tag)
            .iter()
            .filter(|ws| !except.is_some_and(|e| kit::same_socket(e, ws)))
            .filter_map(kit::attachment::<ChatAttachment>)
            .filter(|a| !a.left)
            .map(|a| a.conn)
            .collect()
    }

    fn user_count_frame(&self, except: Option<&WebSocket>) -> String {
        let users: HashSet<String> = self.live(None, except).into_iter().map(|c| c.user_id).collect();
        chat::user_count_frame(users.len())
    }

    /// Arm the prune timer if history is over the limit (never postpones a pending one).
    async fn schedule_prune(&self) {
        let log = *self.log.borrow();
        if self.prune_armed.get() || replay::prune_through(log.latest_seq, log.pruned_through, self.cfg.max_messages).is_none() {
            return;
        }
        let mut schedule = kit::load_schedule(&self.sql());
        let before = schedule.clone();
        self.log.borrow().schedule_prune(&self.cfg, &mut schedule, kit::now());
        if schedule != before {
            let _ = kit::save_schedule(&self.state, &schedule).await;
        }
        self.prune_armed.set(schedule.get(chat::PRUNE_TIMER).is_some());
    }

    async fn open_socket(&self, req: &Request) -> Result<Response, ApiError> {
        let identity = Identity::from_request(req)?;
        let since = parse_seq("since", http::query_param(req, "since").as_deref())?;
        let conn = ChatConn::new(Some(&identity.user_id), Some(&identity.user_name))?;
        let name = http::object_name(req).ok_or_else(|| ApiError::bad_request("missing_name", "object name missing"))?;
        sql::exec(
            &self.sql(),
            "INSERT OR IGNORE INTO room (id, name, latest_seq, pruned_through) VALUES (1, ?, 0, 0)",
            vec![name.as_str().into()],
        )?;
        // Read the replay before accepting, so a storage error is still a clean 500.
        let log = *self.log.borrow();
        let replay = match log.replay(since) {
            Replay::Nothing => Vec::new(),
            Replay::Resync { latest_seq } => vec![replay::resync_frame(latest_seq)],
            Replay::After(from) => sql::rows::<ChatMessage>(
                &self.sql(),
                &format!("SELECT {COLUMNS} FROM messages WHERE seq > ? ORDER BY seq"),
                vec![sql::int(from)],
            )?
            .iter()
            .map(chat::message_frame)
            .collect(),
        };
        let tag = user_tag(&conn.user_id);
        let attachment = ChatAttachment { token_iat: identity.token_iat, left: false, conn };
        let (ws, response) = kit::accept(&self.state, req, std::slice::from_ref(&tag), &attachment)?;
        for f in &replay {
            kit::send(&ws, f);
        }
        let others = self.live(Some(&tag), Some(&ws)).len();
        match self.append(|log| log.join(&attachment.conn, others, self.ids.next_id(), kit::now())) {
            Ok(joined) => {
                if let Some(m) = joined {
                    kit::broadcast(&self.state, &chat::message_frame(&m), None, None);
                }
                kit::broadcast(&self.state, &self.user_count_frame(None), None, None);
                self.schedule_prune().await;
                if let Err(e) = kit::liveness::arm(&self.state, kit::now(), self.heartbeat_ms).await {
                    worker::console_error!("chat heartbeat arm: {e:?}");
                }
            }
            Err(_) => self.depart_and_close(&ws, close::INTERNAL, "storage error").await,
        }
        Ok(response)
    }

    /// Announce that `ws` is gone ("<name> left" for a user's last socket, then the new count),
    /// once per socket.
    async fn depart(&self, ws: &WebSocket) {
        let Some(mut attachment) = self.attachments.get(ws) else { return };
        if attachment.left {
            return;
        }
        attachment.left = true;
        self.attachments.put(ws, &attachment, true);
        let others = self.live(Some(&user_tag(&attachment.conn.user_id)), Some(ws)).len();
        if let Ok(Some(m)) = self.append(|log| log.leave(&attachment.conn, others, self.ids.next_id(), kit::now())) {
            kit::broadcast(&self.state, &chat::message_frame(&m), None, Some(ws));
        }
        kit::broadcast(&self.state, &self.user_count_frame(Some(ws)), None, Some(ws));
        self.schedule_prune().await;
    }

    async fn depart_and_close(&self, ws: &WebSocket, code: u16, reason: &str) {
        self.depart(ws).await;
        kit::close(ws, code, reason);
    }

    /// Dedup by `(user, client id)`, else sequence, store and broadcast.
    fn post(&self, ws: &WebSocket, conn: &ChatConn, post: Post) -> Result<(), ApiError> {
        if let Some(client_id) = &post.client_id {
            let original: Option<ChatMessage> = sql::first(
                &self.sql(),
                &format!("SELECT {COLUMNS} FROM messages WHERE user_id = ? AND client_id = ?"),
                vec![conn.user_id.as_str().into(), client_id.as_str().into()],
            )?;
            if let Some(original) = original {
                kit::send(ws, &chat::duplicate_frame(&original));
                return Ok(());
            }
        }
        let now = kit::now();
        if let Some(m) = self.append(|log| Some(log.post(conn, post, self.ids.next_id(), now)))? {
            kit::broadcast(&self.state, &chat::message_frame(&m), None, None);
        }
        Ok(())
    }

    async fn on_frame(&self, ws: &WebSocket, message: WebSocketIncomingMessage) {
        let Some(mut attachment) = self.attachments.get(ws) else {
            return kit::close(ws, close::INTERNAL, "lost connection state");
        };
        if attachment.left {
            return; // we already closed it; frames still in flight are dropped
        }
        let before = attachment.conn.clone();
        let inbound = match kit::frame_text(message) {
            Ok(text) => chat::on_message(&mut attachment.conn, &self.cfg, &text, kit::now()),
            Err(_) => Inbound::from(frame::binary_rejected()),
        };
        if attachment.conn != before {
            // Persist when a window starts or windows are long; counts inside a short window
            // can stay in memory (it has expired by the time an evicted room wakes).
            let persist = attachment.conn.window_start != before.window_start
                || self.cfg.rate_limit_window_ms > MEMORY_ONLY_WINDOW_MS;
            self.attachments.put(ws, &attachment, persist);
        }
        match inbound {
            Inbound::Reply(f) => kit::send(ws, &f),
            Inbound::Close { code, reason } => self.depart_and_close(ws, code, &reason).await,
            Inbound::Post(post) => match self.post(ws, &attachment.conn, post) {
                Ok(()) => self.schedule_prune().await,
                Err(_) => self.depart_and_close(ws, close::INTERNAL, "storage error").await,
            },
        }
    }

    fn history(&self, req: &Request) -> Result<Response, ApiError> {
        let query = HistoryQuery::parse(
            http::query_param(req, "limit").as_deref(),
            http::query_param(req, "before").as_deref(),
        )?;
        let rows: Vec<ChatMessage> = sql::rows(
            &self.sql(),
            &format!("SELECT {COLUMNS} FROM messages WHERE seq < ? ORDER BY seq DESC LIMIT ?"),
            vec![sql::int(query.before), sql::int(i64::from(query.fetch_limit))],
        )?;
        http::json_text_response(200, chat::history_body(rows, query.limit))
    }

    async fn route(&self, req: Request) -> Result<Response, ApiError> {
        match req.path().trim_start_matches('/') {
            "ws" => self.open_socket(&req).await,
            "messages" => self.history(&req),
            "revoke" => {
                crate::objects::revoke_sockets(&self.state, &req)?;
                http::json_response(200, &serde_json::json!({"ok": true})).map_err(kit::internal("response"))
            }
            _ => Err(ApiError::not_found("unknown chat operation")),
        }
    }
}

impl DurableObject for ChatRoom {
    fn new(state: State, env: Env) -> Self {
        let db = state.storage().sql();
        for statement in SCHEMA {
            let _ = sql::exec(&db, statement, vec![]);
        }
        kit::install_auto_response(&state);
        let cfg = ChatConfig::from_vars(|k| env.var(k).ok().map(|v| v.to_string()));
        // Runs again after every wake: rebuild the log cache from storage.
        let row: Option<RoomRow> = sql::first(
            &db,
            "SELECT name, MAX(latest_seq, COALESCE((SELECT MAX(seq) FROM messages), 0)) AS latest_seq, pruned_through FROM room WHERE id = 1",
            vec![],
        )
            .ok()
            .flatten();
        let log = match row {
            Some(r) => {
                kit::log_wake(&env, "ChatRoom", &r.name);
                ChatLog { latest_seq: r.latest_seq, pruned_through: r.pruned_through }
            }
            None => ChatLog::default(),
        };
        let prune_armed = kit::load_schedule(&db).get(chat::PRUNE_TIMER).is_some();
        // The user count and "left" messages derive from the sockets' attachments, never from
        // storage: after a crash or a deploy there is nothing to reconcile (see kit::liveness).
        let heartbeat_ms = kit::liveness::timeout_ms(&env);
        Self {
            state,
            cfg,
            log: RefCell::new(log),
            prune_armed: std::cell::Cell::new(prune_armed),
            attachments: kit::AttachmentCache::default(),
            ids: kit::UniqueIds::default(),
            heartbeat_ms,
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        http::respond(self.route(req).await)
    }

    async fn websocket_message(&self, ws: WebSocket, message: WebSocketIncomingMessage) -> worker::Result<()> {
        self.on_frame(&ws, message).await;
        Ok(())
    }

    async fn websocket_close(&self, ws: WebSocket, code: usize, reason: String, _was_clean: bool) -> worker::Result<()> {
        kit::reciprocate_close(&ws, code, &reason);
        self.depart(&ws).await;
        self.attachments.forget(&ws);
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> worker::Result<()> {
        self.depart_and_close(&ws, close::INTERNAL, "socket error").await;
        self.attachments.forget(&ws);
        Ok(())
    }

    async fn connect(&self, _socket: worker::Socket) -> worker::Result<()> {
        Err(worker::Error::RustError("ChatRoom does not accept raw TCP connections".into()))
    }

    async fn alarm(&self) -> worker::Result<Response> {
        // Every alarm first sweeps silent sockets: each is announced like a close ("left", the
        // new count), then closed. Departures may arm the prune timer, so load the schedule after.
        let (stale, next) = kit::liveness::sweep(&self.state, kit::now(), self.heartbeat_ms);
        for ws in &stale {
            self.depart_and_close(ws, kit::liveness::SWEEP_CLOSE_CODE, kit::liveness::SWEEP_CLOSE_REASON).await;
        }
        let db = self.sql();
        let mut schedule = kit::load_schedule(&db);
        if schedule.take_due(kit::now()).iter().any(|t| t == chat::PRUNE_TIMER) {
            let mut log = *self.log.borrow();
            if let Some(cutoff) = log.prune(&self.cfg) {
                // Only message rows go; the room row keeps latest_seq, so seqs are never reused.
                let deleted = sql::exec(&db, "DELETE FROM messages WHERE seq <= ?", vec![sql::int(cutoff)])
                    .and_then(|()| sql::exec(
                        &db,
                        "UPDATE room SET pruned_through = ?, latest_seq = ? WHERE id = 1",
                        vec![sql::int(cutoff), sql::int(log.latest_seq)],
                    ));
                if deleted.is_ok() {
                    *self.log.borrow_mut() = log;
                }
            }
        }
        // The heartbeat timer moves to the next deadline, or goes with the last socket.
        edge_realtime_core::schedule::liveness::rearm(&mut schedule, next);
        let _ = kit::save_schedule(&self.state, &schedule).await;
        self.prune_armed.set(schedule.get(chat::PRUNE_TIMER).is_some());
        Response::ok("ok")
    }
}
