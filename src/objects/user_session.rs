//! UserSession Durable Object (docs/protocol.md §6.1, §3): one per user; the kit hosts it
//! ([`crate::kit::object`]) and `core::session` decides. The session row (games,
//! `lastActive`, last logout) lives in SQLite and in memory; each device's presence lives in
//! its socket's attachment, so a woken object rebuilds everything from storage + attachments
//! (nothing to reconcile after a crash).
//!
//! It is also the user's revocation authority (`core::revocation`): the entry Worker asks it
//! (`check`) before every WebSocket connect on any route, which records the object in the
//! registry, so `logout_all` can close them all with 4001 (the `revoke` fan-out), then release
//! this object so every device's TCP ends at once.

use serde::Deserialize;

use edge_realtime_core::effects::Effects;
use edge_realtime_core::error::{close, ApiError};
use edge_realtime_core::frame::Reject;
use edge_realtime_core::names::is_valid_name;
use edge_realtime_core::revocation;
use edge_realtime_core::route::DoClass;
use edge_realtime_core::session::{self, DeviceConn, LogoutAll, Outcome, SessionOp, SessionState};

use crate::kit::object::{Connection, Ctx, Incoming, RealtimeObject, Reply};
use crate::kit::Identity;

crate::kit::object::durable_object!(
    /// One user (`idFromName(userId)`): their session and devices.
    UserSession => Session
);

pub struct Session {
    /// `None` until the first request names the user.
    current: Option<SessionState>,
    /// The registry rows this instance wrote lately (a check within the refresh window writes
    /// nothing).
    registered: revocation::Registered,
}

#[derive(Deserialize)]
struct SessionRow {
    state: String,
}

#[derive(Deserialize)]
struct RegistryRow {
    class: String,
    name: String,
}

fn devices(ctx: &Ctx<'_>) -> Vec<DeviceConn> {
    ctx.open_connections::<DeviceConn>(None).into_iter().map(|c| c.conn).collect()
}

impl RealtimeObject for Session {
    const CLASS: &'static str = "UserSession";
    const SCHEMA: &'static [&'static str] = session::SCHEMA;
    type Op = SessionOp;
    type Conn = DeviceConn;

    fn restore(ctx: &Ctx<'_>) -> Self {
        let row: Option<SessionRow> = ctx.first("SELECT state FROM session WHERE id = 1", vec![]).ok().flatten();
        Self { current: row.and_then(|r| serde_json::from_str(&r.state).ok()), registered: revocation::Registered::default() }
    }

    fn name(&self) -> Option<String> {
        self.current.as_ref().map(|s| s.user_id.clone())
    }

    fn on_request(&mut self, ctx: &Ctx<'_>, op: SessionOp, req: &Incoming) -> Result<Reply, ApiError> {
        match op {
            SessionOp::Check => self.check(ctx, req),
            SessionOp::State => {
                let (current, created) = self.ensure(ctx, req)?;
                let view = current.view(&devices(ctx));
                self.keep(current);
                Ok(Reply::json(200, &view).with(created))
            }
            // Admin: wipe games (not the revocation), tell every device, close them (1000).
            SessionOp::Clear => {
                let (current, created) = self.ensure(ctx, req)?;
                let (state, _, _, effects) = session::on_clear(&current, &devices(ctx), ctx.now).into_effects();
                let next = state.unwrap_or(current);
                let view = next.view(&[]);
                self.current = Some(next);
                Ok(Reply::json(200, &view).with(created.and(effects).close_all(1000, "session cleared")))
            }
            SessionOp::Notify => {
                let frame = session::notification_frame(&req.json()?)?;
                let (current, created) = self.ensure(ctx, req)?;
                self.keep(current);
                let delivered = devices(ctx).len();
                Ok(Reply::json(200, &serde_json::json!({"delivered": delivered})).with(created.to_all(frame)))
            }
            // Internal, from a GameServer after it stored the change: `games?gameId=&action=`.
            SessionOp::Games => {
                let game_id = req.query("gameId").unwrap_or_default().to_owned();
                let joined = match req.query("action") {
                    Some("join") => true,
                    Some("leave") => false,
                    _ => return Err(ApiError::bad_request("invalid_action", "action must be join or leave")),
                };
                let (current, created) = self.ensure(ctx, req)?;
                let outcome = session::on_game(&current, &game_id, joined, ctx.now)
                    .map_err(|e| ApiError::unprocessable(e.code(), e.to_string()))?;
                self.keep(current);
                let effects = self.apply(ctx, None, outcome);
                Ok(Reply::json(200, &serde_json::json!({"ok": true})).with(created.and(effects)))
            }
            SessionOp::Socket => Err(ApiError::not_found("the session socket is a WebSocket")),
        }
    }

    /// `GET /__user-session?userId=&deviceId=`: refuse revoked tokens (401), else accept.
    fn on_connect(&mut self, ctx: &Ctx<'_>, who: &Identity, req: &Incoming) -> Result<(DeviceConn, Effects), ApiError> {
        let device_id = req
            .query("deviceId")
            .filter(|d| is_valid_name(d))
            .ok_or_else(|| ApiError::bad_request("invalid_name", "deviceId must match ^[A-Za-z0-9_.-]{1,64}$"))?
            .to_owned();
        let (current, created) = self.ensure(ctx, req)?;
        if current.user_id != who.user_id {
            return Err(ApiError::unauthorized("wrong_user", "userId must be the token's own user"));
        }
        if session::is_revoked(current.logged_out_at, who.token_iat) {
            return Err(revoked_error());
        }
        let device = DeviceConn::new(device_id, who.token_iat);
        let outcome = session::on_connect(&current, &device, &devices(ctx), ctx.now);
        self.keep(current);
        let mut conn = device;
        let effects = self.apply(ctx, Some(&mut conn), outcome);
        Ok((conn, created.and(effects)))
    }

    fn tags(conn: &DeviceConn) -> Vec<String> {
        vec![format!("d:{}", conn.device_id)]
    }

    fn on_message(&mut self, ctx: &Ctx<'_>, conn: &mut Connection<DeviceConn>, text: &str) -> Result<Effects, Reject> {
        let Some(current) = &self.current else { return Err(Reject::close(close::INTERNAL, "lost session state")) };
        let outcome = session::on_message(current, &conn.conn, &devices(ctx), text, ctx.now);
        Ok(self.apply(ctx, Some(&mut conn.conn), outcome))
    }

    /// A device is gone: it no longer counts (presence may move).
    fn on_gone(&mut self, ctx: &Ctx<'_>, conn: &Connection<DeviceConn>, _remaining: usize) -> Effects {
        let Some(current) = &self.current else { return Effects::none() };
        let outcome = session::on_close(current, &conn.conn, &devices(ctx), ctx.now);
        self.apply(ctx, None, outcome)
    }
}

impl Session {
    /// The session, and the effects that create it on the first request naming the user.
    /// Memory follows only through [`Self::apply`] or [`Self::keep`], so a hook that fails
    /// after this leaves the object unchanged.
    fn ensure(&self, ctx: &Ctx<'_>, req: &Incoming) -> Result<(SessionState, Effects), ApiError> {
        if let Some(s) = &self.current {
            return Ok((s.clone(), Effects::none()));
        }
        let fresh = SessionState::new(req.object_name()?, ctx.now);
        let created = session::store_state(&fresh);
        Ok((fresh, created))
    }

    /// Remember a session [`Self::ensure`] created (the hook succeeded).
    fn keep(&mut self, current: SessionState) {
        if self.current.is_none() {
            self.current = Some(current);
        }
    }

    /// A core outcome as effects: memory and the socket's attachment follow, `logout_all`
    /// becomes the revocation fan-out.
    fn apply(&mut self, ctx: &Ctx<'_>, conn: Option<&mut DeviceConn>, outcome: Outcome) -> Effects {
        let (state, attachment, logout, effects) = outcome.into_effects();
        if let Some(next) = state {
            self.current = Some(next);
        }
        if let (Some(conn), Some(next)) = (conn, attachment) {
            *conn = next;
        }
        match logout {
            Some(LogoutAll { at }) => {
                self.registered.forget();
                effects.and(self.fan_out(ctx, at))
            }
            None => effects,
        }
    }

    /// `logout_all`: revoke in every registered object, close every device here 4001, then
    /// (after every call finished) flush and release this object.
    fn fan_out(&self, ctx: &Ctx<'_>, at: i64) -> Effects {
        let Some(user) = self.current.as_ref().map(|s| s.user_id.clone()) else { return Effects::none() };
        let rows: Vec<RegistryRow> =
            ctx.rows("SELECT class, name FROM registry WHERE seen_at <= ?", vec![at.into()]).unwrap_or_default();
        ctx.log_debug(&format!("logout_all {user}: revoking in {} objects", rows.len()));
        revocation::fan_out(&user, rows.iter().map(|r| (r.class.as_str(), r.name.as_str())), at)
    }

    /// Internal `check?class=&name=` from the entry Worker: 401 if the caller's token was
    /// revoked, else remember that the user is connecting to that object (one write per object
    /// and [`revocation::REFRESH_MS`]).
    fn check(&mut self, ctx: &Ctx<'_>, req: &Incoming) -> Result<Reply, ApiError> {
        let identity = req.identity()?;
        if let Some(s) = &self.current {
            if session::is_revoked(s.logged_out_at, identity.token_iat) {
                return Err(revoked_error());
            }
        }
        let class = req.query("class").and_then(DoClass::parse);
        let name = req.query("name").filter(|n| !n.is_empty() && n.len() <= 256);
        let (Some(class), Some(name)) = (class, name) else {
            return Err(ApiError::bad_request("invalid_check", "class and name required"));
        };
        Ok(Reply::json(200, &serde_json::json!({"ok": true})).with(self.registered.register(class, name, ctx.now)))
    }
}

fn revoked_error() -> ApiError {
    ApiError::unauthorized("token_revoked", "this token was revoked by logout_all; sign in again")
}
