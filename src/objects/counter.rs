//! Counter Durable Object (SPEC §6.2): an adapter over `core::counter`. State lives in
//! SQLite and is cached in memory; every mutation is read-modify-write inside one
//! synchronous turn (no `.await` between read and write), so none is ever lost.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};
use worker::{durable_object, DurableObject, Env, Request, Response, State, WebSocket, WebSocketIncomingMessage};

use edge_realtime_core::counter::{self, CounterError, CounterOp, CounterState, OpKind, Operation};
use edge_realtime_core::error::ApiError;
use edge_realtime_core::frame::Reject;
use edge_realtime_core::query::{parse_limit, parse_seq};
use edge_realtime_core::replay::{self, Replay};
use edge_realtime_core::time::Millis;

use crate::kit::{self, http, sql, Identity};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL, value INTEGER NOT NULL, \
     created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, operation_count INTEGER NOT NULL, seq INTEGER NOT NULL, \
     pruned_through INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS operations (seq INTEGER PRIMARY KEY, type TEXT NOT NULL, amount INTEGER, value INTEGER NOT NULL, \
     previous_value INTEGER NOT NULL, timestamp INTEGER NOT NULL, user_id TEXT NOT NULL, client_id TEXT)",
    "CREATE UNIQUE INDEX IF NOT EXISTS operations_client ON operations (user_id, client_id) WHERE client_id IS NOT NULL",
    kit::SCHEDULE_SCHEMA,
];
const PRUNE_TIMER: &str = "prune";
const PRUNE_INTERVAL_MS: Millis = 60_000;
const DEFAULT_MAX_HISTORY: i64 = 10_000;

/// Per-socket attachment.
#[derive(Debug, Serialize, Deserialize)]
struct CounterConn {
    user_id: String,
    token_iat: i64,
}

#[derive(Deserialize)]
struct CounterRow {
    name: String,
    value: i64,
    created_at: i64,
    updated_at: i64,
    operation_count: i64,
    seq: i64,
    pruned_through: i64,
}

#[derive(Deserialize)]
struct OperationRow {
    seq: i64,
    #[serde(rename = "type")]
    kind: String,
    amount: Option<i64>,
    value: i64,
    previous_value: i64,
    timestamp: i64,
}

impl OperationRow {
    fn into_operation(self) -> Option<Operation> {
        Some(Operation {
            seq: self.seq,
            kind: OpKind::parse(&self.kind)?,
            amount: self.amount,
            value: self.value,
            previous_value: self.previous_value,
            timestamp: self.timestamp,
        })
    }
}

#[durable_object]
pub struct Counter {
    state: State,
    env: Env,
    /// Cached row; `None` until the first request names the counter.
    current: RefCell<Option<(CounterState, i64)>>,
}

/// The result of a mutation: the event frame and its seq, or the original seq of a repeat.
enum Mutation {
    Applied { event: serde_json::Value, seq: i64 },
    Duplicate { seq: i64 },
}

impl Counter {
    fn sql(&self) -> worker::SqlStorage {
        self.state.storage().sql()
    }

    fn load(&self) -> Result<Option<(CounterState, i64)>, ApiError> {
        let row: Option<CounterRow> = sql::first(&self.sql(), "SELECT * FROM counter WHERE id = 1", vec![])?;
        Ok(row.map(|r| {
            let state = CounterState {
                name: r.name,
                value: r.value,
                created_at: r.created_at,
                updated_at: r.updated_at,
                operation_count: r.operation_count,
                seq: r.seq,
            };
            (state, r.pruned_through)
        }))
    }

    /// The counter's state, creating its row on first use.
    fn ensure(&self, req: &Request) -> Result<(CounterState, i64), ApiError> {
        if let Some(current) = self.current.borrow().clone() {
            return Ok(current);
        }
        if let Some(loaded) = self.load()? {
            *self.current.borrow_mut() = Some(loaded.clone());
            return Ok(loaded);
        }
        let name = http::object_name(req).ok_or_else(|| ApiError::bad_request("missing_name", "object name missing"))?;
        let fresh = CounterState::new(&name, kit::now());
        sql::exec(
            &self.sql(),
            "INSERT INTO counter (id, name, value, created_at, updated_at, operation_count, seq, pruned_through) VALUES (1, ?, 0, ?, ?, 0, 0, 0)",
            vec![name.as_str().into(), sql::int(fresh.created_at), sql::int(fresh.updated_at)],
        )?;
        *self.current.borrow_mut() = Some((fresh.clone(), 0));
        Ok((fresh, 0))
    }

    fn cached(&self) -> Result<(CounterState, i64), ApiError> {
        if let Some(c) = self.current.borrow().clone() {
            return Ok(c);
        }
        let loaded = self.load()?.ok_or_else(ApiError::internal)?;
        *self.current.borrow_mut() = Some(loaded.clone());
        Ok(loaded)
    }

    /// Apply one operation: dedup by client id, store, then broadcast. Synchronous on purpose.
    fn mutate(&self, op: CounterOp, user_id: &str, client_id: Option<&str>) -> Result<Mutation, CounterError> {
        let db = self.sql();
        let storage_err = |_| CounterError::Storage;
        if let Some(id) = client_id {
            #[derive(Deserialize)]
            struct Seq {
                seq: i64,
            }
            let seen: Option<Seq> = sql::first(
                &db,
                "SELECT seq FROM operations WHERE user_id = ? AND client_id = ?",
                vec![user_id.into(), id.into()],
            )
            .map_err(storage_err)?;
            if let Some(seen) = seen {
                return Ok(Mutation::Duplicate { seq: seen.seq });
            }
        }
        let (current, pruned_through) = self.cached().map_err(storage_err)?;
        let now = kit::now().max(current.updated_at);
        let (next, operation) = current.apply(op, now)?;
        sql::exec(
            &db,
            "UPDATE counter SET value = ?, updated_at = ?, operation_count = ?, seq = ? WHERE id = 1",
            vec![sql::int(next.value), sql::int(next.updated_at), sql::int(next.operation_count), sql::int(next.seq)],
        )
        .map_err(storage_err)?;
        sql::exec(
            &db,
            "INSERT INTO operations (seq, type, amount, value, previous_value, timestamp, user_id, client_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                sql::int(operation.seq),
                operation.kind.as_str().into(),
                operation.amount.map_or(worker::SqlStorageValue::Null, sql::int),
                sql::int(operation.value),
                sql::int(operation.previous_value),
                sql::int(operation.timestamp),
                user_id.into(),
                sql::opt_text(client_id),
            ],
        )
        .map_err(storage_err)?;
        let event = next.event(&operation);
        *self.current.borrow_mut() = Some((next, pruned_through));
        kit::broadcast(&self.state, &event.to_string(), Some(&op_tag(operation.kind)), None);
        Ok(Mutation::Applied { event, seq: operation.seq })
    }

    /// Schedule history pruning at most once a minute, and only when there is something to prune.
    async fn maybe_schedule_prune(&self) {
        let Ok((state, pruned_through)) = self.cached() else { return };
        if replay::prune_through(state.seq, pruned_through, self.max_history()).is_none() {
            return;
        }
        let mut schedule = kit::load_schedule(&self.sql());
        if schedule.get(PRUNE_TIMER).is_none() {
            schedule.set(PRUNE_TIMER, kit::now() + PRUNE_INTERVAL_MS);
            let _ = kit::save_schedule(&self.state, &schedule).await;
        }
    }

    fn max_history(&self) -> i64 {
        self.env
            .var("COUNTER_MAX_HISTORY")
            .ok()
            .and_then(|v| v.to_string().parse::<i64>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_MAX_HISTORY)
    }

    fn operations_after(&self, since: i64) -> Result<Vec<Operation>, ApiError> {
        let rows: Vec<OperationRow> = sql::rows(
            &self.sql(),
            "SELECT seq, type, amount, value, previous_value, timestamp FROM operations WHERE seq > ? ORDER BY seq",
            vec![sql::int(since)],
        )?;
        Ok(rows.into_iter().filter_map(OperationRow::into_operation).collect())
    }

    async fn open_socket(&self, req: &Request) -> Result<Response, ApiError> {
        let identity = Identity::from_request(req)?;
        let ops = counter::parse_ops_filter(http::query_param(req, "ops").as_deref())?;
        let since = parse_seq("since", http::query_param(req, "since").as_deref())?;
        let (state, pruned_through) = self.ensure(req)?;
        let mut tags = vec![format!("u:{}", identity.user_id)];
        tags.extend(ops.iter().map(|k| op_tag(*k)));
        let conn = CounterConn { user_id: identity.user_id, token_iat: identity.token_iat };
        // Everything that can fail (the replay read) happens before the socket is accepted, so
        // an error never leaves an accepted socket behind. No await in between: same turn.
        let mut frames = vec![state.snapshot_frame()];
        match replay::plan(since, state.seq, pruned_through) {
            Replay::Nothing => {}
            Replay::Resync { latest_seq } => frames.push(replay::resync_frame(latest_seq)),
            Replay::After(from) => frames.extend(
                self.operations_after(from)?
                    .iter()
                    .filter(|op| ops.contains(&op.kind))
                    .map(|op| state.event(op).to_string()),
            ),
        }
        let (ws, response) = kit::accept(&self.state, req, &tags, &conn)?;
        for frame in &frames {
            kit::send(&ws, frame);
        }
        Ok(response)
    }

    async fn http_mutation(&self, mut req: Request, kind: OpKind) -> Result<Response, ApiError> {
        let identity = Identity::from_request(&req)?;
        let body = http::read_optional_json_body(&mut req).await?;
        let op = counter::parse_op(kind, body.as_ref()).map_err(|e| e.to_api())?;
        let client_id = body.as_ref().map(counter::http_client_id).transpose()?.flatten();
        self.ensure(&req)?;
        let event = match self.mutate(op, &identity.user_id, client_id.as_deref()).map_err(|e| e.to_api())? {
            Mutation::Applied { event, .. } => event,
            Mutation::Duplicate { seq } => self.event_at(seq)?,
        };
        self.maybe_schedule_prune().await;
        http::json_response(200, &event).map_err(kit::internal("response"))
    }

    /// The stored event with `seq` (for answering a repeated client id with the original).
    fn event_at(&self, seq: i64) -> Result<serde_json::Value, ApiError> {
        let (state, _) = self.cached()?;
        let row: Option<OperationRow> = sql::first(
            &self.sql(),
            "SELECT seq, type, amount, value, previous_value, timestamp FROM operations WHERE seq = ?",
            vec![sql::int(seq)],
        )?;
        row.and_then(OperationRow::into_operation).map(|op| state.event(&op)).ok_or_else(ApiError::internal)
    }

    fn history(&self, req: &Request) -> Result<Response, ApiError> {
        let limit = parse_limit(http::query_param(req, "limit").as_deref(), 50, 100)?;
        let before = parse_seq("before", http::query_param(req, "before").as_deref())?.unwrap_or(i64::MAX);
        let rows: Vec<OperationRow> = sql::rows(
            &self.sql(),
            "SELECT seq, type, amount, value, previous_value, timestamp FROM operations WHERE seq < ? ORDER BY seq DESC LIMIT ?",
            vec![sql::int(before.min(edge_realtime_core::MAX_SAFE_INTEGER)), sql::int(i64::from(limit) + 1)],
        )?;
        let ops: Vec<Operation> = rows.into_iter().filter_map(OperationRow::into_operation).collect();
        let page = replay::page(ops, limit, |op| op.seq);
        let operations: Vec<serde_json::Value> = page.items.iter().map(Operation::history_entry).collect();
        http::json_response(200, &serde_json::json!({"operations": operations, "nextBefore": page.next}))
            .map_err(kit::internal("response"))
    }

    async fn route(&self, req: Request) -> Result<Response, ApiError> {
        let op = req.path();
        match op.trim_start_matches('/') {
            "ws" => self.open_socket(&req).await,
            "get" => {
                let (state, _) = self.ensure(&req)?;
                http::json_response(200, &state.view()).map_err(kit::internal("response"))
            }
            "increment" => self.http_mutation(req, OpKind::Increment).await,
            "decrement" => self.http_mutation(req, OpKind::Decrement).await,
            "set" => self.http_mutation(req, OpKind::SetValue).await,
            "reset" => self.http_mutation(req, OpKind::Reset).await,
            "history" => {
                self.ensure(&req)?;
                self.history(&req)
            }
            "revoke" => {
                crate::objects::revoke_sockets(&self.state, &req)?;
                http::json_response(200, &serde_json::json!({"ok": true})).map_err(kit::internal("response"))
            }
            _ => Err(ApiError::not_found("unknown counter operation")),
        }
    }

    fn on_frame(&self, ws: &WebSocket, text: &str) -> Result<(), Reject> {
        let frame: serde_json::Value = edge_realtime_core::frame::decode(text, &counter::WS_TYPES)?;
        let kind = frame.get("type").and_then(|t| t.as_str()).and_then(OpKind::parse).ok_or_else(|| {
            Reject::close(edge_realtime_core::error::close::POLICY, "unknown message type")
        })?;
        let client_id = counter::client_id(&frame)?;
        let op = counter::parse_op(kind, Some(&frame)).map_err(|e| e.to_reject())?;
        let conn: CounterConn = kit::attachment(ws)
            .ok_or_else(|| Reject::close(edge_realtime_core::error::close::INTERNAL, "lost connection state"))?;
        let seq = match self.mutate(op, &conn.user_id, client_id.as_deref()).map_err(|e| e.to_reject())? {
            Mutation::Applied { seq, .. } | Mutation::Duplicate { seq } => seq,
        };
        kit::send(ws, &counter::ack_frame(client_id.as_deref(), seq));
        Ok(())
    }
}

fn op_tag(kind: OpKind) -> String {
    format!("op:{}", kind.as_str())
}

impl DurableObject for Counter {
    fn new(state: State, env: Env) -> Self {
        let db = state.storage().sql();
        for statement in SCHEMA {
            let _ = sql::exec(&db, statement, vec![]);
        }
        kit::install_auto_response(&state);
        let counter = Self { state, env, current: RefCell::new(None) };
        // Rebuild the in-memory cache from storage: this runs again after every wake.
        if let Ok(Some(loaded)) = counter.load() {
            kit::log_wake(&counter.env, "Counter", &loaded.0.name);
            *counter.current.borrow_mut() = Some(loaded);
        }
        counter
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        http::respond(self.route(req).await)
    }

    async fn websocket_message(&self, ws: WebSocket, message: WebSocketIncomingMessage) -> worker::Result<()> {
        let outcome = kit::frame_text(message).and_then(|text| self.on_frame(&ws, &text));
        if let Err(rejection) = outcome {
            kit::reject(&ws, &rejection);
        } else {
            self.maybe_schedule_prune().await;
        }
        Ok(())
    }

    async fn websocket_close(&self, ws: WebSocket, code: usize, reason: String, _was_clean: bool) -> worker::Result<()> {
        kit::reciprocate_close(&ws, code, &reason);
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> worker::Result<()> {
        kit::close(&ws, edge_realtime_core::error::close::INTERNAL, "socket error");
        Ok(())
    }

    async fn connect(&self, _socket: worker::Socket) -> worker::Result<()> {
        Err(worker::Error::RustError("Counter does not accept raw TCP connections".into()))
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let mut schedule = kit::load_schedule(&self.sql());
        if schedule.take_due(kit::now()).iter().any(|t| t == PRUNE_TIMER) {
            if let Ok((state, pruned_through)) = self.cached() {
                if let Some(cutoff) = replay::prune_through(state.seq, pruned_through, self.max_history()) {
                    let db = self.sql();
                    let _ = sql::exec(&db, "DELETE FROM operations WHERE seq <= ?", vec![sql::int(cutoff)]);
                    let _ = sql::exec(&db, "UPDATE counter SET pruned_through = ? WHERE id = 1", vec![sql::int(cutoff)]);
                    *self.current.borrow_mut() = Some((state, cutoff));
                }
            }
        }
        let _ = kit::save_schedule(&self.state, &schedule).await;
        Response::ok("ok")
    }
}
