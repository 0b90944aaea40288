//! RateLimiter Durable Object (docs/protocol.md §6.6): the kit hosts it ([`crate::kit::object`]) and
//! `core::ratelimit` decides. One object per limited key — the Worker names it `api:<key>` for
//! the HTTP API and `ws-upgrade:<userId>` for its own upgrade limit — so no single object is a
//! global bottleneck.
//!
//! A check is one synchronous hook (load the row → core → store the new row), with no `.await`
//! in between, so the object's serialization makes every check exact under any concurrency.
//! Each row carries the core's `forget_at`; the `forget` timer deletes idle rows, and the
//! object's name with them once none is left. No sockets: the kit refuses them (404).

use serde::Deserialize;

use edge_realtime_core::effects::{Effects, Op};
use edge_realtime_core::error::ApiError;
use edge_realtime_core::ratelimit::{self, RateLimitOp, DEFAULT_WS_UPGRADES_PER_MINUTE, FORGET_TIMER};
use edge_realtime_core::time::Millis;
use edge_realtime_core::MAX_SAFE_INTEGER;

use crate::kit::object::{Ctx, Incoming, RealtimeObject, Reply};

crate::kit::object::durable_object!(
    /// One limited key (`idFromName("api:<key>")` or `"ws-upgrade:<userId>"`).
    RateLimiter => Limiter
);

/// What the object keeps in memory: its name (the wake log) and when `forget` is due.
pub struct Limiter {
    name: Option<String>,
    forget_at: Option<Millis>,
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
struct AtRow {
    at: Option<i64>,
}

impl RealtimeObject for Limiter {
    const CLASS: &'static str = "RateLimiter";
    const SCHEMA: &'static [&'static str] = ratelimit::SCHEMA;
    type Op = RateLimitOp;
    type Conn = ();

    fn restore(ctx: &Ctx<'_>) -> Self {
        let name = ctx.first::<NameRow>("SELECT name FROM meta WHERE id = 1", vec![]).ok().flatten().map(|r| r.name);
        let forget_at = ctx.timer_at(FORGET_TIMER);
        Self { name, forget_at }
    }

    fn name(&self) -> Option<String> {
        self.name.clone()
    }

    /// Decide one request and store the new state; a denied request stores nothing (but the
    /// object's name, on first use).
    fn on_request(&mut self, ctx: &Ctx<'_>, op: RateLimitOp, req: &Incoming) -> Result<Reply, ApiError> {
        let name = req.name_text()?.to_owned();
        let (key, params) = match op {
            RateLimitOp::Upgrade => {
                let per_minute =
                    req.query("perMinute").and_then(|v| v.parse::<u32>().ok()).unwrap_or(DEFAULT_WS_UPGRADES_PER_MINUTE);
                (name.clone(), ratelimit::upgrade_limit_params(per_minute))
            }
            _ => {
                let request = ratelimit::parse_request(op.path(), &req.json()?)?;
                (request.key, request.params)
            }
        };
        let algorithm = params.algorithm().as_str();
        let row: Option<StateRow> =
            ctx.first("SELECT state FROM limits WHERE algorithm = ? AND key = ?", vec![algorithm.into(), key.as_str().into()])?;
        let stored = ratelimit::State::load(params.algorithm(), row.as_ref().map(|r| r.state.as_str()));
        let (next, decision) = params.check(&stored, ctx.now);
        let mut effects = Effects::none();
        if self.name.is_none() {
            effects = effects.store("INSERT OR IGNORE INTO meta (id, name) VALUES (1, ?)", vec![name.as_str().into()]);
            self.name = Some(name);
        }
        if decision.allowed() {
            let forget_at = next.forget_at().clamp(0, MAX_SAFE_INTEGER);
            effects = effects.store(
                "INSERT INTO limits (algorithm, key, state, forget_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (algorithm, key) DO UPDATE SET state = excluded.state, forget_at = excluded.forget_at",
                vec![algorithm.into(), key.into(), next.to_json().into(), forget_at.into()],
            );
            // An earlier timer stays: it reschedules itself.
            if self.forget_at.is_none_or(|at| at > forget_at) {
                self.forget_at = Some(forget_at);
                effects = effects.set_timer(FORGET_TIMER, forget_at);
            }
        }
        Ok(Reply::json(200, &decision.to_json()).with(effects))
    }

    /// Delete idle rows (they answer exactly like no row), then re-arm for the next one; with
    /// none left, forget the name too so an unused key leaves nothing behind.
    fn on_timer(&mut self, ctx: &Ctx<'_>, name: &str) -> Effects {
        if name != FORGET_TIMER {
            return Effects::none();
        }
        let next: Option<AtRow> =
            ctx.first("SELECT MIN(forget_at) AS at FROM limits WHERE forget_at > ?", vec![ctx.now.into()]).ok().flatten();
        let effects = Effects::none().store("DELETE FROM limits WHERE forget_at <= ?", vec![ctx.now.into()]);
        self.forget_at = next.and_then(|r| r.at);
        match self.forget_at {
            Some(at) => effects.set_timer(FORGET_TIMER, at),
            None => {
                if let Some(name) = self.name.take() {
                    ctx.log_debug(&format!("forgot RateLimiter {name}"));
                }
                effects.store("DELETE FROM meta", vec![]).cancel_timer(FORGET_TIMER)
            }
        }
    }
}
