//! Waddle Durable Object (docs/protocol.md §6.4): the kit hosts it ([`crate::kit::object`]) and
//! `core::waddle` decides. One object per community; the presence table lives in SQLite and
//! in memory (rebuilt on every wake), typing is relayed and never stored.

use serde::Deserialize;

use edge_realtime_core::effects::Effects;
use edge_realtime_core::error::ApiError;
use edge_realtime_core::frame::Reject;
use edge_realtime_core::waddle::{self, Presence, Waddle as Core, WaddleConn, WaddleOp};

use crate::kit::object::{self, Connection, Ctx, Incoming, RealtimeObject, Reply};
use crate::kit::Identity;

crate::kit::object::durable_object!(
    /// One community (`idFromName(id)`): every member's presence.
    Waddle => WaddleRoom
);

pub struct WaddleRoom {
    name: Option<String>,
    core: Core,
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
        Self { name, core }
    }

    fn name(&self) -> Option<String> {
        self.name.clone()
    }

    /// Members the table calls present but who have no open socket (a crash or a deploy dropped
    /// them without close events) go offline, announced to whoever is left.
    fn on_wake(&mut self, ctx: &Ctx<'_>, live_users: &std::collections::BTreeSet<String>) -> Effects {
        let outcomes = self.core.reconcile(live_users, ctx.now);
        if !outcomes.is_empty() {
            ctx.log_debug(&format!("reconcile Waddle: {} ghost(s) offline", outcomes.len()));
        }
        outcomes.into_iter().fold(Effects::none(), |all, o| all.and(o.into_effects()))
    }

    fn on_request(&mut self, ctx: &Ctx<'_>, op: WaddleOp, req: &Incoming) -> Result<Reply, ApiError> {
        match op {
            WaddleOp::Presence => {
                let named = object::remember_name(&mut self.name, req, waddle::REMEMBER_NAME)?;
                Ok(Reply { status: 200, body: self.core.presence_view(), effects: named })
            }
            // The body exactly as received, to every socket.
            WaddleOp::Broadcast => {
                let body = std::str::from_utf8(&req.body)
                    .map_err(|_| ApiError::bad_request("invalid_body", "could not read the body"))?;
                let frame = waddle::broadcast_frame(body)?;
                let recipients = ctx.socket_count(None);
                Ok(Reply { status: 200, body: waddle::broadcast_response(recipients), effects: Effects::none().to_all(frame) })
            }
            WaddleOp::Socket => Err(ApiError::not_found("the waddle socket is a WebSocket")),
        }
    }

    /// The member goes online; they get `presence_state`, the others `presence_update`.
    fn on_connect(&mut self, ctx: &Ctx<'_>, who: &Identity, req: &Incoming) -> Result<((), Effects), ApiError> {
        let named = object::remember_name(&mut self.name, req, waddle::REMEMBER_NAME)?;
        let conn = WaddleConn { user_id: who.user_id.clone(), user_name: Some(who.user_name.clone()) };
        Ok(((), named.and(self.core.on_connect(&conn, ctx.now).into_effects())))
    }

    fn on_message(&mut self, ctx: &Ctx<'_>, conn: &mut Connection<()>, text: &str) -> Result<Effects, Reject> {
        Ok(self.core.on_message(&member(conn), text, ctx.now)?.into_effects())
    }

    /// The member goes offline with their last socket.
    fn on_gone(&mut self, ctx: &Ctx<'_>, conn: &Connection<()>, remaining: usize) -> Effects {
        self.core.on_close(&member(conn), remaining, ctx.now).into_effects()
    }
}
