//! Waddle Durable Object (docs/protocol.md §6.4): the kit hosts it ([`crate::kit::object`]) and
//! `core::waddle` decides. One object per community; the presence table lives in SQLite and
//! in memory (rebuilt on every wake), typing is relayed and never stored.
//!
//! Sharded (`WADDLE_SHARDS` > 1, docs/sharding.md): the primary `<id>` keeps the presence
//! table and the member list and hands every frame for "everyone" to each shard with members
//! (one `deliver` call per shard); a shard `<id>~shard-<k>` holds sockets only: it asks the
//! primary on every connect (`presence_state` of the whole community), relays a socket's
//! presence change and typing to its own other sockets at once and to the primary for the
//! other shards, and tells the primary when a user's last socket leaves.

use std::collections::BTreeSet;

use serde::Deserialize;

use edge_realtime_core::effects::{Effects, Op};
use edge_realtime_core::error::ApiError;
use edge_realtime_core::frame::Reject;
use edge_realtime_core::shard::{self, Deliver, Role};
use edge_realtime_core::waddle::{self, Presence, Waddle as Core, WaddleConn, WaddleOp};

use crate::kit::object::{self, Connection, Ctx, Incoming, RealtimeObject, Reply};
use crate::kit::Identity;
use crate::objects::sharding;

const BINDING: &str = "WADDLE";

crate::kit::object::durable_object!(
    /// One community (`idFromName(id)`): every member's presence.
    Waddle => WaddleRoom
);

pub struct WaddleRoom {
    name: Option<String>,
    core: Core,
    /// Primary: the users with sockets on each shard (`shard_members`).
    members: sharding::Members,
    /// Shard: users announced to the primary whose sockets were gone at the last wake.
    ghosts: BTreeSet<String>,
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

fn member<C>(conn: &Connection<C>) -> WaddleConn {
    WaddleConn { user_id: conn.user_id.clone(), user_name: Some(conn.user_name.clone()) }
}

impl RealtimeObject for WaddleRoom {
    const CLASS: &'static str = "Waddle";
    const SCHEMA: &'static [&'static str] = waddle::SCHEMA;
    type Op = WaddleOp;
    type Conn = ();

    fn restore(ctx: &Ctx<'_>) -> Self {
        let rows: Vec<PresenceRow> = ctx.rows("SELECT user_id, status, last_seen FROM presence", vec![]).unwrap_or_default();
        let core = Core::from_rows(rows.into_iter().map(|r| {
            let presence = Presence::from_row(&r.status, r.last_seen);
            (r.user_id, presence)
        }));
        let name = ctx.first::<NameRow>("SELECT name FROM waddle WHERE id = 1", vec![]).ok().flatten().map(|r| r.name);
        Self { name, core, members: sharding::load_members(ctx), ghosts: BTreeSet::new() }
    }

    fn name(&self) -> Option<String> {
        self.name.clone()
    }

    /// Members the table calls present but who have no open socket here or on a shard (a
    /// crash or a deploy dropped them without close events) go offline, announced to whoever
    /// is left. A shard instead tells the primary which of its users are gone.
    fn on_wake(&mut self, ctx: &Ctx<'_>) -> Effects {
        let live_users = &ctx.live_users();
        if self.shard().is_some() {
            self.ghosts = sharding::ghosts(ctx, live_users);
            return Effects::none();
        }
        let live: BTreeSet<String> = live_users.iter().cloned().chain(self.members.keys().cloned()).collect();
        let outcomes = self.core.reconcile(&live, ctx.now);
        if !outcomes.is_empty() {
            ctx.log_debug(&format!("reconcile Waddle: {} ghost(s) offline", outcomes.len()));
        }
        let effects = outcomes.into_iter().fold(Effects::none(), |all, o| all.and(o.into_effects()));
        self.fan_out(effects, None)
    }

    fn on_request(&mut self, ctx: &Ctx<'_>, op: WaddleOp, req: &Incoming) -> Result<Reply, ApiError> {
        if let Role::Shard { .. } = shard::role(req.name_text()?) {
            if op != WaddleOp::Deliver {
                return Err(ApiError::not_found("a waddle shard serves deliver only"));
            }
            let deliver = Deliver::parse(&req.body).ok_or_else(|| ApiError::bad_request("invalid_body", "not a deliver body"))?;
            let gone = match self.shard() {
                Some((primary, index)) => sharding::flush_ghosts(BINDING, &mut self.ghosts, ctx, &primary, index, None),
                None => Effects::none(),
            };
            let effects = deliver.items.into_iter().fold(gone, |e, item| e.to_all(item.frame));
            return Ok(Reply { status: 200, body: sharding::ok_body(), effects });
        }
        let (reply, except) = self.primary_request(ctx, op, req)?;
        let effects = self.fan_out(reply.effects, except);
        Ok(Reply { effects, ..reply })
    }

    /// The member goes online; they get `presence_state`, the others `presence_update`. On a
    /// shard, `presence_state` is the primary's answer to [`Self::connect_call`].
    fn on_connect(&mut self, ctx: &Ctx<'_>, who: &Identity, req: &Incoming) -> Result<((), Effects), ApiError> {
        let name = req.name_text()?.to_owned();
        if let Role::Shard { .. } = shard::role(&name) {
            let state = match req.prelude() {
                Some(Ok(body)) => serde_json::from_str::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("presenceState").and_then(serde_json::Value::as_str).map(str::to_owned))
                    .ok_or_else(ApiError::internal)?,
                _ => return Err(ApiError::service_unavailable("the waddle is not reachable; try again")),
            };
            let mut effects = Effects::none();
            if self.name.is_none() {
                self.name = Some(name.clone());
                effects = effects.store(waddle::REMEMBER_NAME, vec![name.as_str().into()]);
            }
            ctx.log_debug(&format!("shard accept Waddle {name} user {}", who.user_id));
            if let Role::Shard { primary, index } = shard::role(&name) {
                effects = effects.and(sharding::flush_ghosts(BINDING, &mut self.ghosts, ctx, primary, index, Some(&who.user_id)));
            }
            return Ok(((), effects.store(shard::ADD_USER, vec![who.user_id.as_str().into()]).to_self(state)));
        }
        let named = object::remember_name(&mut self.name, req, waddle::REMEMBER_NAME)?;
        let conn = WaddleConn { user_id: who.user_id.clone(), user_name: Some(who.user_name.clone()) };
        let effects = named.and(self.core.on_connect(&conn, ctx.now).into_effects());
        Ok(((), self.fan_out(effects, None)))
    }

    /// A shard asks its primary before accepting: the user goes online there, and the answer
    /// is the whole community's `presence_state`.
    fn connect_call(&mut self, _ctx: &Ctx<'_>, who: &Identity, req: &Incoming) -> Result<Option<edge_realtime_core::effects::Call>, ApiError> {
        let Role::Shard { primary, index } = shard::role(req.name_text()?) else { return Ok(None) };
        let body = serde_json::json!({"userId": who.user_id, "userName": who.user_name});
        let call = sharding::to_primary(BINDING, primary, &format!("{}?shard={index}", WaddleOp::ShardJoin.path()), &body);
        Ok(Some(call.ordered(sharding::user_lane(&who.user_id))))
    }

    fn on_message(&mut self, ctx: &Ctx<'_>, conn: &mut Connection<()>, text: &str) -> Result<Effects, Reject> {
        if let Some((primary, index)) = self.shard() {
            let gone = sharding::flush_ghosts(BINDING, &mut self.ghosts, ctx, &primary, index, None);
            // Validated and relayed here (a scratch core: the shard stores no presence), then
            // handed to the primary for the store and the other shards.
            let mut scratch = Core::default();
            let outcome = scratch.on_message(&member(conn), text, ctx.now)?;
            let relayed = !outcome.to_others.is_empty();
            let local = waddle::Outcome { store: None, ..outcome }.into_effects();
            if !relayed {
                return Ok(gone.and(local));
            }
            let body = serde_json::json!({"userId": conn.user_id, "userName": conn.user_name, "text": text});
            let op = format!("{}?shard={index}", WaddleOp::ShardFrame.path());
            let call = sharding::to_primary(BINDING, &primary, &op, &body).ordered(sharding::user_lane(&conn.user_id));
            return Ok(gone.and(local).call_with(call));
        }
        let effects = self.core.on_message(&member(conn), text, ctx.now)?.into_effects();
        Ok(self.fan_out(effects, None))
    }

    /// The member goes offline with their last socket (a shard tells the primary).
    fn on_gone(&mut self, ctx: &Ctx<'_>, conn: &Connection<()>, remaining: usize) -> Effects {
        if let Some((primary, index)) = self.shard() {
            return sharding::on_gone(BINDING, &mut self.ghosts, ctx, (&primary, index), &conn.user_id, remaining);
        }
        let elsewhere = self.members.contains_key(&conn.user_id);
        let effects = self.core.on_close(&member(conn), remaining + usize::from(elsewhere), ctx.now).into_effects();
        self.fan_out(effects, None)
    }
}

impl WaddleRoom {
    /// Primary: the HTTP ops and the shards' internal ones; the reply and the shard whose
    /// sockets already have its frames (a relayed frame).
    fn primary_request(&mut self, ctx: &Ctx<'_>, op: WaddleOp, req: &Incoming) -> Result<(Reply, Option<u32>), ApiError> {
        match op {
            WaddleOp::Presence => {
                let named = object::remember_name(&mut self.name, req, waddle::REMEMBER_NAME)?;
                Ok((Reply { status: 200, body: self.core.presence_view(), effects: named }, None))
            }
            // The body exactly as received, to every socket (here and on every shard).
            WaddleOp::Broadcast => {
                let body = std::str::from_utf8(&req.body)
                    .map_err(|_| ApiError::bad_request("invalid_body", "could not read the body"))?;
                let frame = waddle::broadcast_frame(body)?;
                // Sharded: the sockets here plus one per member on a shard (a user's other
                // devices on that shard are not counted; docs/sharding.md).
                let recipients = ctx.socket_count(None) + self.members.len();
                Ok((Reply { status: 200, body: waddle::broadcast_response(recipients), effects: Effects::none().to_all(frame) }, None))
            }
            WaddleOp::ShardJoin => {
                let body = req.json()?;
                let user_id = sharding::user_of(&body)?;
                let index = sharding::index(req)?;
                let named = object::remember_name(&mut self.name, req, waddle::REMEMBER_NAME)?;
                let user_name = body.get("userName").and_then(serde_json::Value::as_str).map(str::to_owned);
                let stored = sharding::join(&mut self.members, &user_id, index);
                let mut outcome = self.core.on_connect(&WaddleConn { user_id: user_id.clone(), user_name }, ctx.now);
                let state = outcome.to_self.pop().unwrap_or_default();
                ctx.log_debug(&format!("shard join Waddle {} shard {index} user {user_id}", self.name.clone().unwrap_or_default()));
                let answer = serde_json::json!({"presenceState": state}).to_string();
                Ok((Reply { status: 200, body: answer, effects: named.and(stored).and(outcome.into_effects()) }, None))
            }
            WaddleOp::ShardFrame => {
                let body = req.json()?;
                let user_id = sharding::user_of(&body)?;
                let index = sharding::index(req)?;
                let user_name = body.get("userName").and_then(serde_json::Value::as_str).map(str::to_owned);
                let text = body.get("text").and_then(serde_json::Value::as_str).unwrap_or_default();
                let outcome = self
                    .core
                    .on_message(&WaddleConn { user_id, user_name }, text, ctx.now)
                    .map_err(|_| ApiError::bad_request("invalid_frame", "the shard relayed a frame the primary refuses"))?;
                let outcome = waddle::Outcome { to_self: Vec::new(), ..outcome };
                Ok((Reply { status: 200, body: sharding::ok_body(), effects: outcome.into_effects() }, Some(index)))
            }
            WaddleOp::ShardLeave => {
                let body = req.json()?;
                let user_id = sharding::user_of(&body)?;
                let index = sharding::index(req)?;
                let (stored, left) = sharding::part(&mut self.members, &user_id, index);
                if !left {
                    return Ok((Reply { status: 200, body: sharding::ok_body(), effects: stored }, None));
                }
                let here = ctx.open_sockets(Some(&format!("u:{user_id}")));
                let outcome = self.core.on_close(&WaddleConn { user_id, user_name: None }, here, ctx.now);
                Ok((Reply { status: 200, body: sharding::ok_body(), effects: stored.and(outcome.into_effects()) }, None))
            }
            WaddleOp::Deliver => Err(ApiError::not_found("deliver is a shard operation")),
            WaddleOp::Socket => Err(ApiError::not_found("the waddle socket is a WebSocket")),
        }
    }

    /// Primary: every frame for everyone also goes to each shard with members but `except`.
    fn fan_out(&self, effects: Effects, except: Option<u32>) -> Effects {
        sharding::fan_out(BINDING, self.name.as_deref(), &self.members, effects, except, |_| None)
    }

    /// The shard's primary and index, from the remembered name.
    fn shard(&self) -> Option<(String, u32)> {
        match shard::role(self.name.as_deref()?) {
            Role::Shard { primary, index } => Some((primary.to_owned(), index)),
            Role::Primary => None,
        }
    }
}
