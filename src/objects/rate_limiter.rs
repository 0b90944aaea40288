//! RateLimiter Durable Object (SPEC §6.6): an adapter over `core::ratelimit`. One object per
//! limited key — the Worker names it `api:<key>` for the HTTP API and `ws-upgrade:<userId>` for
//! its own upgrade limit — so no single object is a global bottleneck.
//!
//! A check is one synchronous turn (load the row → core → store the new row), with no `.await`
//! in between, so the object's serialization makes every check exact under any concurrency.
//! Each row carries the core's `forget_at`; the alarm (kit schedule) deletes idle rows, and the
//! object's name with them once none is left.

use std::cell::Cell;

use serde::Deserialize;
use worker::{durable_object, DurableObject, Env, Request, Response, State, WebSocket, WebSocketIncomingMessage};

use edge_realtime_core::error::{close, ApiError};
use edge_realtime_core::ratelimit::{self, Decision, Params, DEFAULT_WS_UPGRADES_PER_MINUTE};
use edge_realtime_core::time::Millis;
use edge_realtime_core::MAX_SAFE_INTEGER;

use crate::kit::{self, http, sql};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS limits (algorithm TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL, \
     forget_at INTEGER NOT NULL, PRIMARY KEY (algorithm, key))",
    kit::SCHEDULE_SCHEMA,
];
/// The one timer: delete rows whose `forget_at` has passed.
const FORGET_TIMER: &str = "forget";
/// Internal op of the Worker's upgrade guard (`?perMinute=`); not reachable from outside.
pub const UPGRADE_OP: &str = "upgrade";

#[durable_object]
pub struct RateLimiter {
    state: State,
    env: Env,
    /// Whether `meta` holds our name (written once, for the wake log).
    named: Cell<bool>,
}

#[derive(Deserialize)]
struct StateRow {
    state: String,
}

#[derive(Deserialize)]
struct NameRow {
    name: String,
}

#[derive(Deserialize)]
struct NextRow {
    at: Option<i64>,
}

impl RateLimiter {
    fn sql(&self) -> worker::SqlStorage {
        self.state.storage().sql()
    }

    /// Decide one request and store the new state; a denied request stores nothing.
    /// Returns the decision and, when a row was written, its `forget_at`.
    fn check(&self, key: &str, params: &Params) -> Result<(Decision, Option<Millis>), ApiError> {
        let db = self.sql();
        let algorithm = params.algorithm().as_str();
        let row: Option<StateRow> = sql::first(
            &db,
            "SELECT state FROM limits WHERE algorithm = ? AND key = ?",
            vec![algorithm.into(), key.into()],
        )?;
        let stored = ratelimit::State::load(params.algorithm(), row.as_ref().map(|r| r.state.as_str()));
        let (next, decision) = params.check(&stored, kit::now());
        if !decision.allowed() {
            return Ok((decision, None));
        }
        let forget_at = next.forget_at().clamp(0, MAX_SAFE_INTEGER);
        sql::exec(
            &db,
            "INSERT INTO limits (algorithm, key, state, forget_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (algorithm, key) DO UPDATE SET state = excluded.state, forget_at = excluded.forget_at",
            vec![algorithm.into(), key.into(), next.to_json().into(), sql::int(forget_at)],
        )?;
        Ok((decision, Some(forget_at)))
    }

    /// Store the object's name on first use (the constructor logs it on every wake).
    fn remember_name(&self, name: &str) {
        if !self.named.get() {
            let stored = sql::exec(&self.sql(), "INSERT OR IGNORE INTO meta (id, name) VALUES (1, ?)", vec![name.into()]);
            self.named.set(stored.is_ok());
        }
    }

    /// Make sure the alarm fires by `forget_at` (an earlier timer stays: it reschedules itself).
    async fn schedule_forget(&self, forget_at: Millis) {
        let mut schedule = kit::load_schedule(&self.sql());
        if schedule.get(FORGET_TIMER).is_some_and(|at| at <= forget_at) {
            return;
        }
        schedule.set(FORGET_TIMER, forget_at);
        let _ = kit::save_schedule(&self.state, &schedule).await;
    }

    async fn route(&self, mut req: Request) -> Result<Response, ApiError> {
        let name = req
            .headers()
            .get(http::OBJECT_NAME)
            .ok()
            .flatten()
            .map(|n| http::decode_header_text(&n))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::bad_request("missing_name", "object name missing"))?;
        let path = req.path();
        let op = path.trim_start_matches('/');
        let (key, params) = if op == UPGRADE_OP {
            let per_minute = http::query_param(&req, "perMinute")
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(DEFAULT_WS_UPGRADES_PER_MINUTE);
            (name.clone(), ratelimit::upgrade_limit_params(per_minute))
        } else {
            let body = http::read_json_body(&mut req).await?;
            let request = ratelimit::parse_request(op, &body)?;
            (request.key, request.params)
        };
        self.remember_name(&name);
        let (decision, forget_at) = self.check(&key, &params)?;
        if let Some(at) = forget_at {
            self.schedule_forget(at).await;
        }
        http::json_response(200, &decision.to_json()).map_err(kit::internal("response"))
    }
}

impl DurableObject for RateLimiter {
    fn new(state: State, env: Env) -> Self {
        let db = state.storage().sql();
        for statement in SCHEMA {
            let _ = sql::exec(&db, statement, vec![]);
        }
        let name: Option<NameRow> = sql::first(&db, "SELECT name FROM meta WHERE id = 1", vec![]).ok().flatten();
        if let Some(row) = &name {
            kit::log_wake(&env, "RateLimiter", &row.name);
        }
        Self { state, env, named: Cell::new(name.is_some()) }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        http::respond(self.route(req).await)
    }

    async fn websocket_message(&self, ws: WebSocket, _message: WebSocketIncomingMessage) -> worker::Result<()> {
        // This object never accepts sockets; close anything that reaches it.
        kit::close(&ws, close::POLICY, "the rate limiter has no WebSocket protocol");
        Ok(())
    }

    async fn websocket_close(&self, ws: WebSocket, code: usize, reason: String, _was_clean: bool) -> worker::Result<()> {
        kit::reciprocate_close(&ws, code, &reason);
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> worker::Result<()> {
        kit::close(&ws, close::INTERNAL, "socket error");
        Ok(())
    }

    async fn connect(&self, _socket: worker::Socket) -> worker::Result<()> {
        Err(worker::Error::RustError("RateLimiter does not accept raw TCP connections".into()))
    }

    /// Delete idle rows (they answer exactly like no row), then re-arm for the next one;
    /// with none left, forget the name too so an unused key leaves nothing behind.
    async fn alarm(&self) -> worker::Result<Response> {
        let db = self.sql();
        let now = kit::now();
        let mut schedule = kit::load_schedule(&db);
        schedule.take_due(now);
        let name: Option<NameRow> = sql::first(&db, "SELECT name FROM meta WHERE id = 1", vec![]).ok().flatten();
        let name = name.map(|r| r.name).unwrap_or_default();
        let _ = sql::exec(&db, "DELETE FROM limits WHERE forget_at <= ?", vec![sql::int(now)]);
        let next: Option<NextRow> = sql::first(&db, "SELECT MIN(forget_at) AS at FROM limits", vec![]).ok().flatten();
        match next.and_then(|r| r.at) {
            Some(at) => schedule.set(FORGET_TIMER, at),
            None => {
                schedule.cancel(FORGET_TIMER);
                if sql::exec(&db, "DELETE FROM meta", vec![]).is_ok() {
                    self.named.set(false);
                    kit::log_debug(&self.env, &format!("forgot RateLimiter {name}"));
                }
            }
        }
        let _ = kit::save_schedule(&self.state, &schedule).await;
        Response::ok("ok")
    }
}
