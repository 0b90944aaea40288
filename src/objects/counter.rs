//! Counter Durable Object (docs/protocol.md §6.2): the kit hosts it ([`crate::kit::object`]) and
//! `core::counter` decides. State lives in SQLite and is cached in memory; every mutation is
//! one synchronous hook (dedup read → core → store → broadcast), so none is ever lost.

use serde::{Deserialize, Serialize};

use edge_realtime_core::counter::{self, CounterApi, CounterError, CounterState, OpKind, Operation, WsFrame, PRUNE_TIMER};
use edge_realtime_core::effects::Effects;
use edge_realtime_core::error::ApiError;
use edge_realtime_core::frame::Reject;
use edge_realtime_core::query::{parse_limit, parse_seq};
use edge_realtime_core::replay::{self, Replay};

use crate::kit::coalesce::QueuedIds;
use crate::kit::object::{Connection, Ctx, Incoming, RealtimeObject, Reply};
use crate::kit::{http, Identity};

crate::kit::object::durable_object!(
    /// One counter (`idFromName(name)`): its value and operation history in SQLite.
    Counter => CounterObject
);

/// The counter in memory (`None` until the first request names it), rebuilt after every wake.
pub struct CounterObject {
    current: Option<(CounterState, i64)>,
    /// Whether the `prune` timer is set (so a mutation never reads the schedule).
    prune_armed: bool,
    /// The sequences of the mutations with a client id whose rows may still be queued (the
    /// dedup lookup).
    queued_ids: QueuedIds<i64>,
}

/// A socket's part of the attachment: the event types it subscribed to (`?ops=`, its tags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CounterConn {
    ops: Vec<String>,
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

#[derive(Deserialize)]
struct SeqRow {
    seq: i64,
}


impl RealtimeObject for CounterObject {
    const CLASS: &'static str = "Counter";
    const SCHEMA: &'static [&'static str] = counter::SCHEMA;
    type Op = CounterApi;
    type Conn = CounterConn;

    fn restore(ctx: &Ctx<'_>) -> Self {
        let current = ctx.first::<CounterRow>("SELECT * FROM counter WHERE id = 1", vec![]).ok().flatten().map(|r| {
            let state = CounterState {
                name: r.name,
                value: r.value,
                created_at: r.created_at,
                updated_at: r.updated_at,
                operation_count: r.operation_count,
                seq: r.seq,
            };
            (state, r.pruned_through)
        });
        let prune_armed = ctx.timer_at(PRUNE_TIMER).is_some();
        Self { current, prune_armed, queued_ids: QueuedIds::default() }
    }

    fn name(&self) -> Option<String> {
        self.current.as_ref().map(|(s, _)| s.name.clone())
    }

    fn on_request(&mut self, ctx: &Ctx<'_>, op: CounterApi, req: &Incoming) -> Result<Reply, ApiError> {
        if let Some(kind) = op.mutation() {
            return self.http_mutation(ctx, kind, req);
        }
        let (state, created) = self.ensure(ctx, req)?;
        match op {
            CounterApi::History => Ok(history(ctx, req)?.with(created)),
            _ => Ok(Reply::json(200, &state.view()).with(created)),
        }
    }

    /// `GET /ws/counter/:name[?ops=][&since=]`: the snapshot, then the missed events it wants.
    /// The replay read happens before the accept, so an error never leaves a socket behind.
    fn on_connect(&mut self, ctx: &Ctx<'_>, _who: &Identity, req: &Incoming) -> Result<(CounterConn, Effects), ApiError> {
        let ops = counter::parse_ops_filter(req.query("ops"))?;
        let since = parse_seq("since", req.query("since"))?;
        let (state, created) = self.ensure(ctx, req)?;
        let pruned_through = self.current.as_ref().map_or(0, |(_, p)| *p);
        let mut effects = created.to_self(state.snapshot_frame());
        match replay::plan(since, state.seq, pruned_through) {
            Replay::Nothing => {}
            Replay::Resync { latest_seq } => effects = effects.to_self(replay::resync_frame(latest_seq)),
            Replay::After(from) => {
                let rows: Vec<OperationRow> = ctx.rows(
                    "SELECT seq, type, amount, value, previous_value, timestamp FROM operations WHERE seq > ? ORDER BY seq",
                    vec![from.into()],
                )?;
                for op in rows.into_iter().filter_map(OperationRow::into_operation).filter(|op| ops.contains(&op.kind)) {
                    effects = effects.to_self(state.event(&op).to_string());
                }
            }
        }
        Ok((CounterConn { ops: ops.into_iter().map(counter::op_tag).collect() }, effects))
    }

    fn tags(conn: &CounterConn) -> Vec<String> {
        conn.ops.clone()
    }

    /// A mutation frame: broadcast to its type's subscribers, then `ack` to the sender.
    fn on_message(&mut self, ctx: &Ctx<'_>, conn: &mut Connection<CounterConn>, text: &str) -> Result<Effects, Reject> {
        let (op, client_id) = match counter::ws_frame(text)? {
            WsFrame::Ping => return Ok(Effects::none().to_self(counter::PONG_FRAME.to_owned())),
            WsFrame::Mutation { op, client_id } => (op, client_id),
        };
        let (seq, effects) = match self.mutate(ctx, op, &conn.user_id, client_id.as_deref()).map_err(|e| e.to_reject())? {
            Mutation::Applied { seq, effects, .. } => (seq, effects),
            Mutation::Duplicate { seq } => (seq, Effects::none()),
        };
        Ok(effects.to_self(counter::ack_frame(client_id.as_deref(), seq)).and(self.maybe_prune(ctx)))
    }

    fn on_timer(&mut self, ctx: &Ctx<'_>, name: &str) -> Effects {
        if name != PRUNE_TIMER {
            return Effects::none();
        }
        self.prune_armed = false;
        let Some((state, pruned_through)) = self.current.as_mut() else { return Effects::none() };
        match replay::prune_through(state.seq, *pruned_through, max_history(ctx)) {
            Some(cutoff) => {
                *pruned_through = cutoff;
                counter::prune(cutoff)
            }
            None => Effects::none(),
        }
    }
}

/// A mutation: applied (its event frame, seq and effects), or the original seq of a repeat.
enum Mutation {
    Applied { event: String, seq: i64, effects: Effects },
    Duplicate { seq: i64 },
}

impl CounterObject {
    /// The counter's state, and the effects that create its row on first use.
    fn ensure(&mut self, ctx: &Ctx<'_>, req: &Incoming) -> Result<(CounterState, Effects), ApiError> {
        if let Some((state, _)) = &self.current {
            return Ok((state.clone(), Effects::none()));
        }
        let (fresh, created) = counter::create(req.object_name()?, ctx.now);
        self.current = Some((fresh.clone(), 0));
        Ok((fresh, created))
    }

    /// Dedup by client id, then the core's mutation (memory follows; the kit stores first and
    /// rebuilds memory if the store fails).
    fn mutate(
        &mut self,
        ctx: &Ctx<'_>,
        op: counter::CounterOp,
        user_id: &str,
        client_id: Option<&str>,
    ) -> Result<Mutation, CounterError> {
        if let Some(id) = client_id {
            let seen = self.queued_ids.seen(ctx, user_id, id, || {
                let row: Option<SeqRow> = ctx
                    .first_written("SELECT seq FROM operations WHERE user_id = ? AND client_id = ?", vec![user_id.into(), id.into()])
                    .map_err(|_| CounterError::Storage)?;
                Ok(row.map(|r| r.seq))
            })?;
            if let Some(seq) = seen {
                return Ok(Mutation::Duplicate { seq });
            }
        }
        let Some((current, _)) = self.current.as_mut() else { return Err(CounterError::Storage) };
        let (next, event, seq, effects) = counter::mutate(current, op, user_id, client_id, ctx.now)?;
        *current = next;
        if let Some(id) = client_id {
            self.queued_ids.remember(user_id, id, seq);
        }
        Ok(Mutation::Applied { event, seq, effects })
    }

    fn http_mutation(&mut self, ctx: &Ctx<'_>, kind: OpKind, req: &Incoming) -> Result<Reply, ApiError> {
        let identity = req.identity()?;
        let body = if req.body.iter().all(u8::is_ascii_whitespace) { None } else { Some(http::parse_json_body(&req.body)?) };
        let op = counter::parse_op(kind, body.as_ref()).map_err(|e| e.to_api())?;
        let client_id = body.as_ref().map(counter::http_client_id).transpose()?.flatten();
        let (_, created) = self.ensure(ctx, req)?;
        let user_id = identity.user_id.clone();
        let answered = match self.mutate(ctx, op, &user_id, client_id.as_deref()).map_err(|e| e.to_api()) {
            Ok(Mutation::Applied { event, effects, .. }) => Ok((event, effects)),
            Ok(Mutation::Duplicate { seq }) => self.event_at(ctx, seq).map(|event| (event, Effects::none())),
            Err(e) => Err(e),
        };
        // A hook that fails leaves the object unchanged: forget a counter created just now.
        let (event, effects) = answered.inspect_err(|_| {
            if !created.store.is_empty() {
                self.current = None;
            }
        })?;
        let effects = created.and(effects).and(self.maybe_prune(ctx));
        Ok(Reply { status: 200, body: event, effects })
    }

    /// The stored event with `seq` (a repeated client id is answered with the original).
    fn event_at(&self, ctx: &Ctx<'_>, seq: i64) -> Result<String, ApiError> {
        let (state, _) = self.current.as_ref().ok_or_else(ApiError::internal)?;
        let row: Option<OperationRow> = ctx.first(
            "SELECT seq, type, amount, value, previous_value, timestamp FROM operations WHERE seq = ?",
            vec![seq.into()],
        )?;
        row.and_then(OperationRow::into_operation).map(|op| state.event(&op).to_string()).ok_or_else(ApiError::internal)
    }

    /// Arm the `prune` timer (a minute out) when there is history to prune and it is not set.
    fn maybe_prune(&mut self, ctx: &Ctx<'_>) -> Effects {
        let Some((state, pruned_through)) = &self.current else { return Effects::none() };
        if self.prune_armed || replay::prune_through(state.seq, *pruned_through, max_history(ctx)).is_none() {
            return Effects::none();
        }
        self.prune_armed = true;
        Effects::none().set_timer(PRUNE_TIMER, ctx.now + counter::PRUNE_INTERVAL_MS)
    }
}

fn max_history(ctx: &Ctx<'_>) -> i64 {
    counter::parse_max_history(ctx.var("COUNTER_MAX_HISTORY").as_deref())
}

/// `GET /api/counter/:name/history?limit=&before=`
fn history(ctx: &Ctx<'_>, req: &Incoming) -> Result<Reply, ApiError> {
    let limit = parse_limit(req.query("limit"), 50, 100)?;
    let before = parse_seq("before", req.query("before"))?.unwrap_or(i64::MAX);
    let rows: Vec<OperationRow> = ctx.rows(
        "SELECT seq, type, amount, value, previous_value, timestamp FROM operations WHERE seq < ? ORDER BY seq DESC LIMIT ?",
        vec![before.min(edge_realtime_core::MAX_SAFE_INTEGER).into(), (i64::from(limit) + 1).into()],
    )?;
    let ops: Vec<Operation> = rows.into_iter().filter_map(OperationRow::into_operation).collect();
    let page = replay::page(ops, limit, |op| op.seq);
    let operations: Vec<serde_json::Value> = page.items.iter().map(Operation::history_entry).collect();
    Ok(Reply::json(200, &serde_json::json!({"operations": operations, "nextBefore": page.next})))
}
