//! The kit as a base: one trait, [`RealtimeObject`], that owns the Durable Object shell, so an
//! object file reads as its protocol (PartyServer's idea in Rust types; docs/custom-object.md).
//!
//! An object declares its schema, typed ops, socket attachment and the hooks its protocol
//! needs. Hooks are synchronous, get a [`Ctx`] (clock, vars, SQL reads, the sockets' users and
//! attachments) and return [`Effects`] — they never touch the runtime. [`Host`] does the rest,
//! the same way for every object:
//! - construct: schema → ping/pong auto-response → [`RealtimeObject::restore`] → wake count + log →
//!   [`RealtimeObject::on_wake`], which reconciles against the users that really have an open socket;
//! - `fetch`: the built-in `revoke` op, else the typed op (unknown → 404); the WebSocket op
//!   accepts with first tag `u:<userId>` and the kit's [`Connection`] envelope as attachment,
//!   and makes sure the heartbeat sweep is due;
//! - frames: binary → 1007, lost attachment → 1011, a `Reject` → close or in-band error;
//!   frames of a socket the kit already closed are dropped;
//! - gone: close/error (reciprocated, or 1011), the heartbeat sweep, `revoke`, a `Reject::Close`
//!   or `Effects.close` — each socket through [`RealtimeObject::on_gone`] exactly once (the
//!   envelope's persisted `gone` flag);
//! - TCP `connect`: refused with an error (the trait's default would panic);
//! - operations (docs/operations.md): counters per object (`core::ops`), written at most once
//!   per `STATS_FLUSH_INTERVAL_MS` at the end of events, served by the built-in stats op (which
//!   never creates state for a name never touched); JSON log lines per socket event, wake, alarm;
//! - alarm: the kit's `heartbeat` sweep (1001 for silent sockets), then the object's due timers
//!   of the persisted schedule, each through `on_timer`.
//!
//! Every outcome runs in one order: **store → send → close → close_all → timers → calls →
//! release**. The store is one `transactionSync` (a single statement runs directly), so it
//! lands whole or not at all; if it fails nothing is sent, the socket is closed 1011 (HTTP:
//! 500) and the object is rebuilt with `restore`, so memory never runs ahead of disk. No
//! `RefCell` borrow is held across an `.await`: hooks run between them.
//!
//! [`Host`] is compiled once for all the classes (WASM size): its event code is not generic and
//! reaches the object through the object-safe `Hosted` trait, which a thin synchronous
//! `Adapter<T>` implements for every `RealtimeObject` — the object, its typed `Op` and its
//! sockets' typed `Connection<T::Conn>` attachments (cached, unchanged on the wire) stay there.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use worker::{Env, Headers, Method, Request, Response, SqlStorageValue, State, WebSocket, WebSocketIncomingMessage};

use edge_realtime_core::effects::{self, Effects, Op, Statement, Timer, To};
use edge_realtime_core::error::{close, ApiError};
use edge_realtime_core::frame::Reject;
use edge_realtime_core::ops::{self, AlarmLine, SocketLine, StatsBody, Tracker, WakeLine};
use edge_realtime_core::schedule::liveness::{self, HEARTBEAT_TIMER};
use edge_realtime_core::schedule::Schedule;
use edge_realtime_core::time::Millis;

use crate::kit::coalesce::Coalesced;
use crate::kit::{self, http, runtime, sql, Identity};

/// A Durable Object protocol, hosted by [`Host`] (declare the class with [`durable_object!`]).
pub trait RealtimeObject: Sized + 'static {
    /// Class name, for the log lines (`{"event":"wake","class":CLASS,…}`, docs/operations.md).
    const CLASS: &'static str;
    /// `CREATE ... IF NOT EXISTS` statements, run by every constructor (the kit adds `_schedule`).
    const SCHEMA: &'static [&'static str];
    /// The internal operations (`edge_realtime_core::ops!`), also named by the route table.
    type Op: Op;
    /// The object's part of each socket's attachment (the kit wraps it in [`Connection`]).
    type Conn: Serialize + DeserializeOwned + Clone + PartialEq;

    /// The constructor: rebuild memory from storage. Runs again after every wake.
    fn restore(ctx: &Ctx<'_>) -> Self;

    /// Every wake, right after `restore`: drop / mark offline whatever the stored state claims
    /// beyond [`Ctx::live_users`] (a crash or a deploy dropped sockets without close events).
    /// Store and sends run at once; timers on the next event. Asking for the live users reads
    /// every socket's attachment, so only an object that reconciles pays for it.
    fn on_wake(&mut self, _ctx: &Ctx<'_>) -> Effects {
        Effects::none()
    }

    /// The object's name once known, for the wake log.
    fn name(&self) -> Option<String> {
        None
    }

    /// An HTTP op. A hook that fails must leave `self` unchanged.
    fn on_request(&mut self, _ctx: &Ctx<'_>, op: Self::Op, _req: &Incoming) -> Result<Reply, ApiError> {
        Err(ApiError::not_found(format!("{} does not serve {}", Self::CLASS, op.path())))
    }

    /// A WebSocket connect, before it is accepted: the socket's attachment and the effects
    /// (`To::This` is the new socket). The store runs before the accept.
    fn on_connect(&mut self, _ctx: &Ctx<'_>, _who: &Identity, _req: &Incoming) -> Result<(Self::Conn, Effects), ApiError> {
        Err(ApiError::not_found(format!("{} accepts no WebSockets", Self::CLASS)))
    }

    /// Tags after the kit's `u:<userId>` (at most 9).
    fn tags(_conn: &Self::Conn) -> Vec<String> {
        Vec::new()
    }

    /// A text frame. Changes to `conn` are written back to the attachment after the store.
    fn on_message(&mut self, _ctx: &Ctx<'_>, _conn: &mut Connection<Self::Conn>, _text: &str) -> Result<Effects, Reject> {
        Err(Reject::close(close::POLICY, "this object accepts no messages"))
    }

    /// Whether a change to a socket's `conn` must survive hibernation (default: always). Say
    /// `false` for state that is worthless after a wake — e.g. counts inside a rate window
    /// shorter than the eviction delay — and it stays in memory only (no serialization per frame).
    fn must_persist(&self, _before: &Self::Conn, _after: &Self::Conn) -> bool {
        true
    }

    /// A socket is gone — closed, errored, swept by the heartbeat, revoked, or closed by the
    /// kit for a `Reject::Close` / `Effects.close` — announced exactly once per socket;
    /// `remaining` is how many other open sockets its user has.
    fn on_gone(&mut self, _ctx: &Ctx<'_>, _conn: &Connection<Self::Conn>, _remaining: usize) -> Effects {
        Effects::none()
    }

    /// A named timer came due (at most once; `ctx.now` is the alarm's time).
    fn on_timer(&mut self, _ctx: &Ctx<'_>, _name: &str) -> Effects {
        Effects::none()
    }

    /// The answer to a call that asked for one ([`effects::Call::then`], `then` is its text):
    /// the 200 body, or why every try failed. Runs in the same event, after all of that
    /// event's calls; `ctx`'s own socket is still the event's socket (if any).
    fn on_reply(&mut self, _ctx: &Ctx<'_>, _then: &str, _reply: Result<String, String>) -> Effects {
        Effects::none()
    }

    /// Before a WebSocket is accepted: at most one call whose answer `on_connect` then reads
    /// with [`Incoming::prelude`] (a shard asks its primary for the state a new socket needs).
    /// Nothing is accepted or stored while it runs.
    fn connect_call(&mut self, _ctx: &Ctx<'_>, _who: &Identity, _req: &Incoming) -> Result<Option<effects::Call>, ApiError> {
        Ok(None)
    }
}

/// Every socket's attachment: who opened it (the kit's revocation reads `token_iat`), when,
/// and the object's own part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection<C> {
    pub user_id: String,
    pub user_name: String,
    /// `iat` (seconds) of the token the socket was opened with.
    pub token_iat: i64,
    pub connected_at: Millis,
    pub conn: C,
    /// Set once the kit announced the socket gone (`on_gone`), so a late `webSocketClose`
    /// never announces it twice. Persisted: that close may arrive after a wake.
    #[serde(default, skip_serializing_if = "is_false")]
    pub gone: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a hook may read: the clock, vars, SQL, how many sockets are open.
pub struct Ctx<'a> {
    /// The event's time (ms): the only clock a hook sees.
    pub now: Millis,
    state: &'a State,
    env: &'a Env,
    /// The event's own socket in `on_message` / `on_gone`: never counted among the others.
    this: Option<&'a WebSocket>,
    /// The host's coalesced writes: a read writes them first.
    queued: Option<&'a Coalesced>,
    class: &'static str,
    /// The host's copy of the timer table.
    schedule: &'a RefCell<Option<Schedule>>,
}

impl Ctx<'_> {
    /// A var (wrangler.toml `[vars]`, `--var`).
    pub fn var(&self, name: &str) -> Option<String> {
        self.env.var(name).ok().map(|v| v.to_string())
    }
    pub fn rows<R: DeserializeOwned>(&self, query: &str, binds: Vec<effects::Value>) -> Result<Vec<R>, ApiError> {
        if let Some(queued) = self.queued.filter(|q| !q.is_empty()) {
            queued.write(|statements| transaction(self.state, statements), self.class);
        }
        sql::rows(&self.state.storage().sql(), query, binds.into_iter().map(sql_value).collect())
    }
    pub fn first<R: DeserializeOwned>(&self, query: &str, binds: Vec<effects::Value>) -> Result<Option<R>, ApiError> {
        Ok(self.rows(query, binds)?.into_iter().next())
    }
    /// When the timer `name` is due (absolute ms), if it is set: from the kit's copy of the
    /// timer table, with no read.
    pub fn timer_at(&self, name: &str) -> Option<Millis> {
        stored_schedule(self.state, self.schedule).get(name)
    }
    /// Whether earlier frames' writes are still queued, not yet run (kit::coalesce).
    pub fn has_queued_writes(&self) -> bool {
        self.queued.is_some_and(|q| !q.is_empty())
    }
    /// [`Self::first`] without writing the queued frames first, for a read the object knows no
    /// queued write can change. Writing them inside this frame's event commits them in its
    /// turn, and the frames that arrived together no longer share one transaction: a post with
    /// a client id did that on every frame (its dedup lookup), so the objects keep the ids of
    /// their queued frames in memory (`kit::coalesce::QueuedIds`) and read storage with this.
    pub fn first_written<R: DeserializeOwned>(&self, query: &str, binds: Vec<effects::Value>) -> Result<Option<R>, ApiError> {
        let rows: Vec<R> = sql::rows(&self.state.storage().sql(), query, binds.into_iter().map(sql_value).collect())?;
        Ok(rows.into_iter().next())
    }
    /// With var `DEBUG_WAKE=1`, log a lifecycle line (the e2e suite looks for some).
    pub fn log_debug(&self, line: &str) {
        kit::log_debug(self.env, line);
    }
    /// Every socket the object holds (with `tag`, if given), open or closing.
    pub fn socket_count(&self, tag: Option<&str>) -> usize {
        kit::sockets(self.state, tag).len()
    }
    /// Distinct users (first tag `u:<userId>`) of the open sockets, without the event's own
    /// socket (`on_message`, `on_gone`).
    pub fn live_users(&self) -> BTreeSet<String> {
        kit::live_users(self.state, self.this)
    }
    /// The attachment of every socket (with `tag`, if given) the kit has not announced gone,
    /// open or closing, without the event's own socket. Reads every attachment: for joins and
    /// departures, not per message.
    pub fn connections<C: DeserializeOwned>(&self, tag: Option<&str>) -> Vec<Connection<C>> {
        self.attachments(tag, false)
    }
    /// [`Self::connections`] of the sockets that are open (not closing).
    pub fn open_connections<C: DeserializeOwned>(&self, tag: Option<&str>) -> Vec<Connection<C>> {
        self.attachments(tag, true)
    }
    fn attachments<C: DeserializeOwned>(&self, tag: Option<&str>, open_only: bool) -> Vec<Connection<C>> {
        kit::sockets(self.state, tag)
            .iter()
            .filter(|ws| !self.is_this(ws) && (!open_only || kit::is_open(ws)))
            .filter_map(kit::attachment::<Connection<C>>)
            .filter(|c| !c.gone)
            .collect()
    }
    fn is_this(&self, ws: &WebSocket) -> bool {
        self.this.is_some_and(|t| kit::same_socket(ws, t))
    }
    /// Open sockets (with `tag`, if given).
    pub fn open_sockets(&self, tag: Option<&str>) -> usize {
        kit::sockets(self.state, tag).iter().filter(|ws| kit::is_open(ws)).count()
    }
}

/// A request, already read: identity (absent on internal calls), object name, query, body.
pub struct Incoming {
    pub identity: Option<Identity>,
    pub object_name: Option<String>,
    /// The name as sent, percent-decoded, any text (RateLimiter's `api:<key>`).
    name_text: Option<String>,
    query: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The answer to [`RealtimeObject::connect_call`], on a WebSocket connect that made one.
    prelude: Option<Result<String, String>>,
}

impl Incoming {
    async fn read(req: &mut Request, with_body: bool) -> Result<Self, ApiError> {
        let query = http::RequestUrl::of(req).query_pairs().into_iter().collect();
        let body = if with_body && !matches!(req.method(), Method::Get | Method::Head) {
            let bytes = req.bytes().await.map_err(|_| ApiError::bad_request("invalid_body", "could not read the body"))?;
            if bytes.len() > http::MAX_BODY_BYTES {
                return Err(ApiError::payload_too_large("body is larger than 64 KiB"));
            }
            bytes
        } else {
            Vec::new()
        };
        let name_text = req
            .headers()
            .get(http::OBJECT_NAME)
            .ok()
            .flatten()
            .map(|n| http::decode_header_text(&n))
            .filter(|n| !n.is_empty());
        Ok(Self { identity: Identity::from_request(req).ok(), object_name: http::object_name(req), name_text, query, body, prelude: None })
    }
    /// The answer to this connect's [`RealtimeObject::connect_call`] (the 200 body, or why it failed).
    pub fn prelude(&self) -> Option<&Result<String, String>> {
        self.prelude.as_ref()
    }
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// The caller, as the entry Worker authenticated them (401 if it did not).
    pub fn identity(&self) -> Result<&Identity, ApiError> {
        self.identity.as_ref().ok_or_else(|| {
            ApiError::unauthorized("missing_identity", "request did not come through the authenticated entry Worker")
        })
    }
    /// The object's name, as the Worker addressed it.
    pub fn object_name(&self) -> Result<&str, ApiError> {
        self.object_name.as_deref().ok_or_else(|| ApiError::bad_request("missing_name", "object name missing"))
    }
    /// The object's name as any text (percent-decoded; not limited to the id alphabet).
    pub fn name_text(&self) -> Result<&str, ApiError> {
        self.name_text.as_deref().ok_or_else(|| ApiError::bad_request("missing_name", "object name missing"))
    }
    /// The body as JSON (empty → `null`; over 64 KiB → 413; not JSON → 400).
    pub fn json(&self) -> Result<serde_json::Value, ApiError> {
        http::parse_json_body(&self.body)
    }
}

/// Store the object's name on first use, so every wake can log it: `slot` is the object's
/// memory of it, `sql` the statement that stores it (binding the name once).
pub fn remember_name(slot: &mut Option<String>, req: &Incoming, sql: &'static str) -> Result<Effects, ApiError> {
    let name = req.object_name()?;
    if slot.is_some() {
        return Ok(Effects::none());
    }
    *slot = Some(name.to_owned());
    Ok(Effects::none().store(sql, vec![name.into()]))
}

/// An HTTP op's answer: exact JSON text and the effects to execute first.
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub effects: Effects,
}

impl Reply {
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Self { status, body: body.to_string(), effects: Effects::none() }
    }
    /// Execute `effects` (store first) before answering; a failed store answers 500 instead.
    pub fn with(self, effects: Effects) -> Self {
        Self { effects: self.effects.and(effects), ..self }
    }
}

/// The internal op every object serves: `POST /revoke?userId=&before=` (logout_all fan-out).
const REVOKE_OP: &str = "revoke";

/// Runs a [`RealtimeObject`] on the runtime: the Durable Object shell, compiled once for every
/// class. Its event code (all the `async` parts) is not generic: it reaches the object only
/// through the object-safe [`Hosted`], which [`Adapter`] implements for each object with thin
/// synchronous calls — the object, its typed ops and its sockets' typed attachments stay there.
pub struct Host {
    /// The object (`None` until [`Host::boot`]: a name never touched has no object yet) and
    /// its sockets' attachments.
    object: Box<dyn Hosted>,
    /// [`RealtimeObject::CLASS`], for the log lines.
    class: &'static str,
    state: State,
    env: Env,
    /// `HEARTBEAT_TIMEOUT_MS`.
    heartbeat_ms: Millis,
    /// Timer changes `on_wake` asked for, applied with the next event's timers.
    pending_timers: RefCell<Vec<Timer>>,
    /// Calls `on_wake` asked for, made with the next event's calls.
    pending_calls: RefCell<Vec<effects::Call>>,
    /// [`effects::Call::order`] lanes.
    lanes: Lanes,
    /// Whether the object has its tables and `object` is built. `false` only for a name never
    /// touched, until its first event other than the stats op (which must not create state).
    started: Cell<bool>,
    /// The operations counters (`core::ops`): in memory, flushed once per `flush_ms`.
    stats: RefCell<Tracker>,
    /// `STATS_FLUSH_INTERVAL_MS`.
    flush_ms: Millis,
    /// The object's name, for log lines: from the first request that named it, else
    /// [`RealtimeObject::name`].
    name: RefCell<Option<String>>,
    /// Frames whose writes wait for the others of their turn (kit::coalesce).
    coalesced: Coalesced,
    /// This host, for the coalesced writes' flush timer (set by [`Host::create`]).
    me: RefCell<std::rc::Weak<Host>>,
    /// The `_schedule` table as this instance last read or wrote it: only the kit writes it, so
    /// a connect's heartbeat check and a restore's timers need no `SELECT` (`None`: read it on
    /// next use, e.g. after a failed write).
    schedule: RefCell<Option<Schedule>>,
}

/// What [`Host`] asks of an object: [`RealtimeObject`] with its types erased (`Op`, `Conn`, the
/// consts), each hook one synchronous call. A hook answers `None` if the object is not built or
/// busy (a borrow held across an `.await`; logged, never a panic).
trait Hosted {
    fn class(&self) -> &'static str;
    fn schema(&self) -> &'static [&'static str];
    /// Build the object from storage ([`RealtimeObject::restore`]) in place of any: its stored
    /// name, and whether it was put in place (`false`: busy).
    fn restore(&self, ctx: &Ctx<'_>) -> (Option<String>, bool);
    fn on_wake(&self, ctx: &Ctx<'_>) -> Option<Effects>;
    /// Whether `path` is one of the object's ops: `Some(true)` for a WebSocket op.
    fn op(&self, path: &str) -> Option<bool>;
    /// `path` (an HTTP op) through [`RealtimeObject::on_request`].
    fn on_request(&self, ctx: &Ctx<'_>, path: &str, req: &Incoming) -> Option<Result<Reply, ApiError>>;
    fn connect_call(&self, ctx: &Ctx<'_>, who: &Identity, req: &Incoming) -> Option<Result<Option<effects::Call>, ApiError>>;
    /// [`RealtimeObject::on_connect`], then `store` (the host's commit of its statements,
    /// before the accept), then accept `req`'s socket with first tag `u:<userId>`, the object's
    /// tags and the [`Connection`] envelope (cached). The socket, the 101, the other effects.
    fn accept(
        &self,
        ctx: &Ctx<'_>,
        who: &Identity,
        incoming: &Incoming,
        req: &Request,
        store: &mut dyn FnMut(Vec<Statement>) -> Result<(), ApiError>,
    ) -> Result<(WebSocket, Response, Effects), ApiError>;
    /// A text frame of `ws` through [`RealtimeObject::on_message`], on its cached attachment.
    /// `store` commits the effects' statements (`false`: failed); only then is a changed
    /// attachment kept (persisted if [`RealtimeObject::must_persist`]).
    fn on_message(&self, ctx: &Ctx<'_>, ws: &WebSocket, text: &str, store: &mut dyn FnMut(&mut Effects) -> bool) -> Frame;
    /// The user of `ws`, from its attachment.
    fn user(&self, ws: &WebSocket) -> Option<String>;
    /// Announce `ws` gone, once: mark its attachment `gone` (persisted), `announce` its user
    /// (the host counts, logs and answers how many other open sockets that user has), then
    /// [`RealtimeObject::on_gone`]. `None` if it has no attachment or was already announced.
    fn on_gone(&self, ctx: &Ctx<'_>, ws: &WebSocket, announce: &mut dyn FnMut(&str) -> usize) -> Option<Effects>;
    fn on_timer(&self, ctx: &Ctx<'_>, name: &str) -> Option<Effects>;
    fn on_reply(&self, ctx: &Ctx<'_>, then: &str, reply: Result<String, String>) -> Option<Effects>;
}

/// How [`Hosted::on_message`] ended.
enum Frame {
    /// The socket has no readable attachment.
    Lost,
    /// The kit already announced the socket gone: a frame still in flight, dropped.
    Dropped,
    /// The hook did not run (the object is busy or not built).
    Busy,
    Rejected(Reject),
    /// The store failed (the origin is closed, the object rebuilt).
    StoreFailed,
    /// Stored: the rest of the effects.
    Stored(Effects),
}

/// A [`RealtimeObject`] behind [`Hosted`]: the only generic part of the shell, all synchronous.
struct Adapter<T: RealtimeObject> {
    object: RefCell<Option<T>>,
    /// Attachments in memory: the frame path neither deserializes nor rewrites them.
    attachments: kit::AttachmentCache<Connection<T::Conn>>,
}

impl<T: RealtimeObject> Adapter<T> {
    /// Run a hook on the object. Hooks are synchronous, so the borrow ends before any `.await`.
    fn hook<R>(&self, ctx: &Ctx<'_>, f: impl FnOnce(&mut T, &Ctx<'_>) -> R) -> Option<R> {
        match self.object.try_borrow_mut() {
            Ok(mut object) => match object.as_mut() {
                Some(object) => Some(f(object, ctx)),
                None => {
                    hook_failed(T::CLASS, "event before the object was built");
                    None
                }
            },
            Err(_) => {
                hook_failed(T::CLASS, "object busy (a borrow was held across an await)");
                None
            }
        }
    }
}

fn hook_failed(class: &str, why: &str) {
    worker::console_error!("{class}: {why}");
}

impl<T: RealtimeObject> Hosted for Adapter<T> {
    fn class(&self) -> &'static str {
        T::CLASS
    }

    fn schema(&self) -> &'static [&'static str] {
        T::SCHEMA
    }

    fn restore(&self, ctx: &Ctx<'_>) -> (Option<String>, bool) {
        let object = T::restore(ctx);
        let name = object.name();
        match self.object.try_borrow_mut() {
            Ok(mut slot) => {
                *slot = Some(object);
                (name, true)
            }
            Err(_) => (name, false),
        }
    }

    fn on_wake(&self, ctx: &Ctx<'_>) -> Option<Effects> {
        self.hook(ctx, |o, ctx| o.on_wake(ctx))
    }

    fn op(&self, path: &str) -> Option<bool> {
        T::Op::parse(path).map(|op| op.is_websocket())
    }

    fn on_request(&self, ctx: &Ctx<'_>, path: &str, req: &Incoming) -> Option<Result<Reply, ApiError>> {
        let Some(op) = T::Op::parse(path) else {
            return Some(Err(ApiError::not_found(format!("unknown {} operation", T::CLASS))));
        };
        self.hook(ctx, |o, ctx| o.on_request(ctx, op, req))
    }

    fn connect_call(&self, ctx: &Ctx<'_>, who: &Identity, req: &Incoming) -> Option<Result<Option<effects::Call>, ApiError>> {
        self.hook(ctx, |o, ctx| o.connect_call(ctx, who, req))
    }

    fn accept(
        &self,
        ctx: &Ctx<'_>,
        who: &Identity,
        incoming: &Incoming,
        req: &Request,
        store: &mut dyn FnMut(Vec<Statement>) -> Result<(), ApiError>,
    ) -> Result<(WebSocket, Response, Effects), ApiError> {
        let (conn, mut effects) = self.hook(ctx, |o, ctx| o.on_connect(ctx, who, incoming)).ok_or_else(ApiError::internal)??;
        let mut tags = vec![format!("u:{}", who.user_id)];
        tags.extend(T::tags(&conn));
        let attachment = Connection {
            user_id: who.user_id.clone(),
            user_name: who.user_name.clone(),
            token_iat: who.token_iat,
            connected_at: kit::now(),
            conn,
            gone: false,
        };
        // Before the accept: a socket never sees state that is not on disk.
        store(std::mem::take(&mut effects.store))?;
        let (ws, response) = kit::accept(ctx.state, req, &tags, &attachment)?;
        self.attachments.put(&ws, &attachment, false);
        Ok((ws, response, effects))
    }

    fn on_message(&self, ctx: &Ctx<'_>, ws: &WebSocket, text: &str, store: &mut dyn FnMut(&mut Effects) -> bool) -> Frame {
        let Some(mut conn) = self.attachments.get(ws) else { return Frame::Lost };
        if conn.gone {
            return Frame::Dropped;
        }
        let before = conn.clone();
        match self.hook(ctx, |o, ctx| o.on_message(ctx, &mut conn, text)) {
            None => Frame::Busy,
            Some(Err(rejection)) => Frame::Rejected(rejection),
            Some(Ok(mut effects)) => {
                if !store(&mut effects) {
                    return Frame::StoreFailed;
                }
                if conn != before {
                    let persist = self
                        .object
                        .try_borrow()
                        .map_or(true, |o| o.as_ref().is_none_or(|o| o.must_persist(&before.conn, &conn.conn)));
                    self.attachments.put(ws, &conn, persist);
                }
                Frame::Stored(effects)
            }
        }
    }

    fn user(&self, ws: &WebSocket) -> Option<String> {
        self.attachments.get(ws).map(|conn| conn.user_id)
    }

    fn on_gone(&self, ctx: &Ctx<'_>, ws: &WebSocket, announce: &mut dyn FnMut(&str) -> usize) -> Option<Effects> {
        let mut conn = self.attachments.get(ws)?;
        if conn.gone {
            return None;
        }
        conn.gone = true;
        self.attachments.put(ws, &conn, true);
        let remaining = announce(&conn.user_id);
        self.hook(ctx, |o, ctx| o.on_gone(ctx, &conn, remaining))
    }

    fn on_timer(&self, ctx: &Ctx<'_>, name: &str) -> Option<Effects> {
        self.hook(ctx, |o, ctx| o.on_timer(ctx, name))
    }

    fn on_reply(&self, ctx: &Ctx<'_>, then: &str, reply: Result<String, String>) -> Option<Effects> {
        self.hook(ctx, |o, ctx| o.on_reply(ctx, then, reply))
    }
}

/// What the constructor reads in one query: the schema version, the kit's counters row and the
/// timer table (`[[name, at], ...]`).
#[derive(Deserialize)]
struct Boot {
    version: String,
    stats: Option<String>,
    timers: Option<String>,
}

/// The kit's copy of the timer table in `copy`, or the table read (and kept) when there is none.
fn stored_schedule(state: &State, copy: &RefCell<Option<Schedule>>) -> Schedule {
    if let Some(schedule) = copy.try_borrow().ok().and_then(|c| c.clone()) {
        return schedule;
    }
    let schedule = kit::load_schedule(&state.storage().sql());
    if let Ok(mut copy) = copy.try_borrow_mut() {
        *copy = Some(schedule.clone());
    }
    schedule
}

/// The boot query's `timers` column; `None` (read the table on first use) if unreadable.
fn parse_timers(json: &str) -> Option<Schedule> {
    serde_json::from_str::<Vec<(String, Millis)>>(json).ok().map(Schedule::from_entries)
}

/// The boot query. It fails before the first run (no `_schema`).
const BOOT_QUERY: &str = "SELECT version, (SELECT json FROM _kit_stats WHERE id = 1) AS stats, \
     (SELECT json_group_array(json_array(name, at)) FROM _schedule) AS timers FROM _schema WHERE id = 1";

/// Ordered calls ([`effects::Call::order`]): a lane is busy while its key is present; callers
/// that find it busy wait their turn in a FIFO queue, handed over one by one.
#[derive(Default)]
struct Lanes {
    lanes: RefCell<std::collections::HashMap<String, std::collections::VecDeque<futures::channel::oneshot::Sender<()>>>>,
}

impl Lanes {
    /// Wait for `key`'s turn (at once if the lane is free). Registration is synchronous, so
    /// turns follow the order in which events reached their calls.
    async fn enter(&self, key: &str) {
        let waiting = {
            let Ok(mut lanes) = self.lanes.try_borrow_mut() else { return };
            match lanes.get_mut(key) {
                None => {
                    lanes.insert(key.to_owned(), std::collections::VecDeque::new());
                    None
                }
                Some(queue) => {
                    let (tx, rx) = futures::channel::oneshot::channel();
                    queue.push_back(tx);
                    Some(rx)
                }
            }
        };
        if let Some(rx) = waiting {
            let _ = rx.await;
        }
    }

    /// Hand `key`'s lane to the next waiter, or free it.
    fn leave(&self, key: &str) {
        let Ok(mut lanes) = self.lanes.try_borrow_mut() else { return };
        let Some(queue) = lanes.get_mut(key) else { return };
        while let Some(next) = queue.pop_front() {
            if next.send(()).is_ok() {
                return;
            }
        }
        lanes.remove(key);
    }
}

impl Host {
    /// The shell for the object `T` (what [`durable_object!`]'s constructor calls).
    pub fn new<T: RealtimeObject>(state: State, env: Env) -> Self {
        Self::build(Box::new(Adapter::<T> { object: RefCell::new(None), attachments: kit::AttachmentCache::default() }), state, env)
    }

    fn build(object: Box<dyn Hosted>, state: State, env: Env) -> Self {
        let class = object.class();
        let sql = state.storage().sql();
        let statements = statements(object.schema());
        // One read on every wake: the schema version, the counters and the timers. It fails
        // before the first run (no `_schema`); then `sqlite_master` tells a name never touched,
        // which gets no tables until its first real event (the stats op must not create state).
        let boot = sql.exec(BOOT_QUERY, None).and_then(|c| c.to_array::<Boot>()).ok().and_then(|rows| rows.into_iter().next());
        let has_state = boot.is_some() || sql::has_tables(&sql);
        let current = boot.as_ref().map(|b| b.version.as_str()) == Some(sql::schema_version(&statements).as_str());
        if has_state && !current {
            sql::apply_schema(&sql, &statements);
        }
        // Only from a current schema's read; otherwise (or unreadable) the first use reads it.
        let schedule = boot.as_ref().filter(|_| current).and_then(|b| b.timers.as_deref()).and_then(parse_timers);
        let (stats, unreadable) = Tracker::restore(boot.as_ref().and_then(|b| b.stats.as_deref()));
        if let Some(e) = unreadable {
            worker::console_error!("{class}: unreadable _kit_stats row, counting from zero: {e}");
        }
        kit::install_auto_response(&state);
        kit::live_forget(&state);
        let heartbeat_ms = kit::liveness::timeout_ms(&env);
        let flush_ms = env
            .var("STATS_FLUSH_INTERVAL_MS")
            .ok()
            .and_then(|v| v.to_string().trim().parse::<Millis>().ok())
            .unwrap_or(ops::DEFAULT_FLUSH_INTERVAL_MS);
        let host = Self {
            object,
            class,
            state,
            env,
            heartbeat_ms,
            pending_timers: RefCell::new(Vec::new()),
            pending_calls: RefCell::new(Vec::new()),
            lanes: Lanes::default(),
            started: Cell::new(false),
            stats: RefCell::new(stats),
            flush_ms,
            name: RefCell::new(None),
            coalesced: Coalesced::default(),
            me: RefCell::new(std::rc::Weak::new()),
            schedule: RefCell::new(schedule),
        };
        if has_state {
            host.boot();
        }
        host
    }

    /// Build the object from storage: `restore`, count and log the wake, `on_wake`.
    fn boot(&self) {
        let (stored, built) = self.object.restore(&self.ctx());
        if let (Some(stored), Ok(mut name)) = (stored, self.name.try_borrow_mut()) {
            name.get_or_insert(stored);
        }
        if !built {
            worker::console_error!("{}: object busy while booting", self.class);
            return;
        }
        self.started.set(true);
        let wakes = self.stats.try_borrow_mut().map_or(0, |mut s| {
            s.wake();
            s.counters().wakes
        });
        let name = self.object_name();
        kit::log_soon(&self.state, &WakeLine { event: "wake", class: self.class, object: name.as_deref(), wakes });
        self.wake();
    }

    /// Before any event but the stats op: a name never touched gets its tables now.
    fn start(&self) {
        if self.started.get() {
            return;
        }
        sql::apply_schema(&self.state.storage().sql(), &statements(self.object.schema()));
        self.boot();
    }

    fn object_name(&self) -> Option<String> {
        self.name.try_borrow().ok().and_then(|n| n.clone())
    }

    /// The timer table: the kit's copy, read once when there is none.
    fn stored_schedule(&self) -> Schedule {
        stored_schedule(&self.state, &self.schedule)
    }

    /// Write the timer table's changes from `stored` and point the alarm. The copy is updated
    /// before the alarm's `await`, so an event that runs meanwhile starts from these rows; a
    /// failed write drops it (the next use reads the table again).
    async fn save_schedule(&self, stored: &Schedule, schedule: &Schedule) -> Result<(), ApiError> {
        let written = kit::write_schedule(&self.state.storage().sql(), stored, schedule);
        if let Ok(mut copy) = self.schedule.try_borrow_mut() {
            *copy = written.is_ok().then(|| schedule.clone());
        }
        written?;
        kit::sync_alarm(&self.state, schedule.next_deadline()).await
    }

    /// Count something (never fails: a busy counter just misses it).
    fn count(&self, f: impl FnOnce(&mut Tracker)) {
        if let Ok(mut stats) = self.stats.try_borrow_mut() {
            f(&mut stats);
        }
    }

    /// At the end of an event: write the counters row if due (at most once per `flush_ms`, or
    /// always with `force`) — one upsert, never one per frame. Nothing before the object has tables.
    fn flush_stats(&self, now: Millis, force: bool) {
        if !self.started.get() {
            return;
        }
        let row = match self.stats.try_borrow_mut() {
            Ok(mut s) if s.is_dirty() && (force || s.due(now, self.flush_ms)) => s.flush(now),
            _ => return,
        };
        if sql::exec(&self.state.storage().sql(), ops::STATS_UPSERT, vec![SqlStorageValue::String(row)]).is_err() {
            self.count(Tracker::flush_failed);
        }
    }

    /// A socket lifecycle line.
    fn log_socket(&self, event: &'static str, user_id: &str, code: Option<u16>) {
        let name = self.object_name();
        kit::log_soon(&self.state, &SocketLine { event, class: self.class, object: name.as_deref(), user_id, code });
    }

    /// Act on a rejected frame (counted; its in-band error counts as a frame out).
    fn reject(&self, ws: &WebSocket, rejection: &Reject) {
        let sent = kit::reject(ws, rejection);
        self.count(|s| {
            s.frame_rejected();
            s.frames_out(u64::from(sent));
        });
    }

    /// `GET /api/admin/stats/{class}/{name}` (the kit's built-in stats op): the counters (flushed
    /// first, so the answer is what storage holds), open sockets from the runtime, rows of the
    /// object's own tables. A name never touched answers zeros and writes nothing.
    fn stats_reply(&self, req: &Request) -> Result<Response, ApiError> {
        let class = http::query_param(req, "class").unwrap_or_else(|| self.class.to_owned());
        let name = req
            .headers()
            .get(http::OBJECT_NAME)
            .ok()
            .flatten()
            .map(|n| http::decode_header_text(&n))
            .unwrap_or_default();
        let sql = self.state.storage().sql();
        let mut storage_rows = 0u64;
        if self.started.get() {
            self.flush_stats(kit::now(), true);
            #[derive(Deserialize)]
            struct Count {
                n: i64,
            }
            for table in sql::table_names(&sql)?.into_iter().filter(|t| ops::is_object_table(t)) {
                let counted: Option<Count> = sql::first(&sql, &ops::count_rows_sql(&table), vec![])?;
                storage_rows += counted.as_ref().map_or(0, |c| u64::try_from(c.n).unwrap_or(0));
            }
        }
        let open = kit::sockets(&self.state, None).iter().filter(|ws| kit::is_open(ws)).count();
        let counters = self.stats.try_borrow().map(|s| s.counters().clone()).unwrap_or_default();
        let body = StatsBody::new(&class, &name, &counters, u64::try_from(open).unwrap_or(0), storage_rows);
        http::json_text_response(200, ops::line(&body))
    }

    /// Reconcile on wake ([`RealtimeObject::on_wake`]): store and sends now (the constructor
    /// cannot await), timers with the next event.
    fn wake(&self) {
        let Some(effects) = self.object.on_wake(&self.ctx()) else { return };
        let mut effects = effects;
        if self.commit(None, std::mem::take(&mut effects.store)).is_err() {
            return;
        }
        self.send_all(None, &effects);
        if let Ok(mut pending) = self.pending_timers.try_borrow_mut() {
            pending.extend(effects.timers);
        }
        if let Ok(mut pending) = self.pending_calls.try_borrow_mut() {
            pending.extend(effects.calls);
        }
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            now: kit::now(),
            state: &self.state,
            env: &self.env,
            this: None,
            queued: Some(&self.coalesced),
            class: self.class,
            schedule: &self.schedule,
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        self.flush_coalesced();
        let path = http::RequestUrl::of(&req).path;
        if path.trim_start_matches('/') == ops::STATS_OP {
            return http::respond(self.stats_reply(&req));
        }
        if let Ok(mut name) = self.name.try_borrow_mut() {
            if name.is_none() {
                *name = req.headers().get(http::OBJECT_NAME).ok().flatten().map(|n| http::decode_header_text(&n));
            }
        }
        self.start();
        let now = kit::now();
        self.count(|s| s.request(now));
        let response = http::respond(self.route(&mut req).await);
        self.flush_stats(kit::now(), false);
        response
    }

    async fn route(&self, req: &mut Request) -> Result<Response, ApiError> {
        let path = http::RequestUrl::of(req).path;
        let path = path.trim_start_matches('/');
        if path == REVOKE_OP {
            let revoked = crate::objects::revoke_sockets(&self.state, req)?;
            // Each got its logged-out frame.
            self.count(|s| s.frames_out(u64::try_from(revoked.len()).unwrap_or(0)));
            for ws in &revoked {
                self.gone(ws, edge_realtime_core::revocation::CLOSE_CODE).await;
            }
            let body = serde_json::json!({"ok": true, "closed": revoked.len()});
            return http::json_text_response(200, body.to_string());
        }
        let is_websocket = self.object.op(path).ok_or_else(|| ApiError::not_found(format!("unknown {} operation", self.class)))?;
        let mut incoming = Incoming::read(req, !is_websocket).await?;
        if is_websocket {
            return self.open(req, &mut incoming).await;
        }
        let mut reply = self.object.on_request(&self.ctx(), path, &incoming).ok_or_else(ApiError::internal)??;
        self.commit(None, std::mem::take(&mut reply.effects.store))?;
        self.finish(None, reply.effects).await;
        http::json_text_response(reply.status, reply.body)
    }

    /// The WebSocket op: `on_connect`, store, accept, then the rest of the effects.
    async fn open(&self, req: &Request, incoming: &mut Incoming) -> Result<Response, ApiError> {
        let who = incoming.identity()?.clone();
        let prelude = self.object.connect_call(&self.ctx(), &who, incoming).ok_or_else(ApiError::internal)??;
        if let Some(call) = prelude {
            incoming.prelude = Some(self.call(&call).await);
        }
        let (ws, response, effects) =
            self.object.accept(&self.ctx(), &who, incoming, req, &mut |statements| self.commit(None, statements))?;
        self.count(Tracker::socket_accepted);
        self.log_socket("socket_open", &who.user_id, None);
        self.finish_with(Some(&ws), effects, true).await;
        Ok(response)
    }

    async fn websocket_message(&self, ws: WebSocket, message: WebSocketIncomingMessage) -> worker::Result<()> {
        self.start();
        let now = kit::now();
        self.count(|s| s.frame_in(now));
        self.message(ws, message, now).await;
        // With a flush pending the timer writes the stats row after the queue: the same
        // transaction, not a second commit for the queued frames' sends to wait on.
        if !self.coalesced.timer_pending() {
            self.flush_stats(now, false);
        }
        Ok(())
    }

    async fn message(&self, ws: WebSocket, message: WebSocketIncomingMessage, now: Millis) {
        let text = match kit::frame_text(message) {
            Ok(text) => text,
            Err(rejection) => {
                self.flush_coalesced();
                self.reject(&ws, &rejection);
                if let Reject::Close { code, .. } = rejection {
                    self.gone(&ws, code).await;
                }
                return;
            }
        };
        let ctx = Ctx { now, this: Some(&ws), ..self.ctx() };
        let mut queued = false;
        let frame = self.object.on_message(&ctx, &ws, &text, &mut |effects| {
            if ops::is_in_band_refusal(effects) {
                self.count(Tracker::frame_rejected);
            }
            let coalescible = effects.coalescible();
            let store = std::mem::take(&mut effects.store);
            let store = if coalescible {
                match self.coalesced.push(ws.clone(), store) {
                    Ok(()) => {
                        queued = true;
                        return true;
                    }
                    Err(store) => store,
                }
            } else {
                store
            };
            self.commit(Some(&ws), store).is_ok()
        });
        if !(queued && matches!(frame, Frame::Stored(_))) {
            // Whatever this frame sends or closes goes after the frames queued before it.
            self.flush_coalesced();
        }
        match frame {
            Frame::Lost => kit::close(&ws, close::INTERNAL, "lost connection state"),
            // Dropped: the kit already closed it, a frame still in flight. A failed store
            // closed it 1011 and rebuilt the object.
            Frame::Dropped | Frame::StoreFailed => {}
            Frame::Busy => kit::close(&ws, close::INTERNAL, "internal error"),
            Frame::Rejected(rejection) => {
                self.reject(&ws, &rejection);
                if let Reject::Close { code, .. } = rejection {
                    self.gone(&ws, code).await;
                }
            }
            Frame::Stored(effects) if queued => match self.coalesced.attach(effects) {
                None => self.flush_next_turn(),
                // Not attached: write the queue (this frame's statements with it), then send.
                Some(effects) => self.finish(Some(&ws), effects).await,
            },
            Frame::Stored(effects) => self.finish(Some(&ws), effects).await,
        }
    }

    /// Set the timer that flushes the coalesced writes, unless one is pending.
    fn flush_next_turn(&self) {
        if !self.coalesced.set_timer() {
            return;
        }
        let me = self.me.try_borrow().map(|me| me.clone()).unwrap_or_default();
        let flush = move || {
            if let Some(host) = me.upgrade() {
                host.coalesced.timer_fired();
                host.flush_coalesced();
                host.flush_stats(kit::now(), false);
            }
        };
        runtime::next_turn(&Closure::once_into_js(flush));
    }

    /// Write every coalesced frame (each its own unit, all in this turn's one transaction),
    /// then run their sends in arrival order. A frame whose write failed sends nothing: its
    /// socket is closed 1011 and the object rebuilt from storage, as for any failed store.
    fn flush_coalesced(&self) {
        if self.coalesced.is_empty() {
            return;
        }
        let failed = self.coalesced.write(|statements| transaction(&self.state, statements), self.class);
        for queued in self.coalesced.take() {
            if queued.failed {
                kit::close(&queued.origin, close::INTERNAL, "storage failed");
            } else if let Some(effects) = &queued.effects {
                self.send_all(Some(&queued.origin), effects);
            }
        }
        if failed {
            self.object.restore(&self.ctx());
        }
    }

    async fn websocket_close(&self, ws: WebSocket, code: usize, reason: String, _was_clean: bool) -> worker::Result<()> {
        self.start();
        self.flush_coalesced();
        kit::reciprocate_close(&ws, code, &reason);
        // 1005 (no status) if the runtime ever reported something outside u16.
        self.gone(&ws, u16::try_from(code).unwrap_or(1005)).await;
        self.flush_stats(kit::now(), false);
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> worker::Result<()> {
        self.start();
        self.flush_coalesced();
        if let Some(user) = self.object.user(&ws) {
            self.log_socket("socket_error", &user, None);
        }
        kit::close(&ws, close::INTERNAL, "socket error");
        self.gone(&ws, close::INTERNAL).await;
        self.flush_stats(kit::now(), false);
        Ok(())
    }

    /// Announce `ws` gone (`on_gone`), once: the `gone` flag is saved on its attachment first,
    /// so a later close or error event of the same socket finds it and does nothing.
    /// `code`: the close code that ended it (counted in `socketsClosed`, logged).
    async fn gone(&self, ws: &WebSocket, code: u16) {
        let ctx = Ctx { this: Some(ws), ..self.ctx() };
        let effects = self.object.on_gone(&ctx, ws, &mut |user| {
            self.count(|s| s.socket_closed(code));
            self.log_socket("socket_close", user, Some(code));
            kit::live_gone(&self.state, ws, user);
            kit::open_peers(&self.state, Some(&format!("u:{user}")), ws).len()
        });
        if let Some(effects) = effects {
            self.execute(Some(ws), effects).await;
        }
    }

    /// The heartbeat sweep: close every socket silent for `HEARTBEAT_TIMEOUT_MS` (1001
    /// `heartbeat timeout`) and announce it gone, one at a time (so a user's last one counts
    /// `remaining` 0 exactly once). Returns when the next sweep is due.
    async fn sweep(&self) -> Option<Millis> {
        let (stale, next) = kit::liveness::sweep(&self.state, kit::now(), self.heartbeat_ms);
        for ws in stale {
            kit::liveness::close_stale(&ws);
            self.gone(&ws, kit::liveness::SWEEP_CLOSE_CODE).await;
        }
        next
    }

    /// Raw TCP is not part of any protocol: refuse it (the trait's default would panic).
    async fn connect(&self, _socket: worker::Socket) -> worker::Result<()> {
        Err(worker::Error::RustError(format!("{} does not accept raw TCP connections", self.class)))
    }

    /// The kit's heartbeat sweep first, then the due timers, each through `on_timer`. Their
    /// removal is saved first: a timer fires at most once, even if a handler's effects fail
    /// (the heartbeat excepted: its row is moved by the sweep's re-arm).
    async fn alarm(&self) -> worker::Result<Response> {
        self.start();
        self.flush_coalesced();
        let now = kit::now();
        self.count(|s| s.alarm(now));
        let stored = self.stored_schedule();
        let (mut schedule, due) = liveness::fire(&stored, now);
        let name = self.object_name();
        kit::log_soon(&self.state, &AlarmLine { event: "alarm", class: self.class, object: name.as_deref(), timers: &due });
        let sweeping = due.iter().any(|n| n == HEARTBEAT_TIMER);
        self.apply_timers(&mut schedule, &[]);
        if let Err(e) = self.save_schedule(&stored, &schedule).await {
            worker::console_error!("{} alarm: saving the schedule failed: {e}", self.class);
        }
        if sweeping {
            let next = self.sweep().await;
            // Reloaded: departures during the sweep may have set timers of their own.
            let stored = self.stored_schedule();
            let mut schedule = stored.clone();
            liveness::rearm(&mut schedule, next);
            if let Err(e) = self.save_schedule(&stored, &schedule).await {
                worker::console_error!("{} alarm: re-arming the heartbeat failed: {e}", self.class);
            }
        }
        for name in due.into_iter().filter(|n| n != HEARTBEAT_TIMER) {
            if let Some(effects) = self.object.on_timer(&self.ctx(), &name) {
                self.execute(None, effects).await;
            }
        }
        self.flush_stats(kit::now(), false);
        Response::ok("ok")
    }

    async fn execute(&self, origin: Option<&WebSocket>, mut effects: Effects) {
        if self.commit(origin, std::mem::take(&mut effects.store)).is_ok() {
            self.finish(origin, effects).await;
        }
    }

    /// Store: all statements in one transaction. On failure: nothing was written, `origin` is
    /// closed 1011, and the object is rebuilt from storage.
    fn commit(&self, origin: Option<&WebSocket>, statements: Vec<Statement>) -> Result<(), ApiError> {
        if statements.is_empty() {
            return Ok(());
        }
        self.flush_coalesced();
        let Err(e) = transaction(&self.state, statements) else { return Ok(()) };
        worker::console_error!("{} store failed: {e}", self.class);
        if let Some(ws) = origin {
            kit::close(ws, close::INTERNAL, "storage failed");
        }
        self.object.restore(&self.ctx());
        Err(ApiError::internal())
    }

    /// Everything after a successful store: send → close → close_all → timers → calls → release.
    async fn finish(&self, origin: Option<&WebSocket>, effects: Effects) {
        self.finish_with(origin, effects, false).await;
    }

    /// [`Self::finish`]; `heartbeat` (a socket was accepted) makes sure a sweep is due.
    async fn finish_with(&self, origin: Option<&WebSocket>, effects: Effects, heartbeat: bool) {
        self.send_all(origin, &effects);
        if let (Some(ws), Some(c)) = (origin, &effects.close) {
            kit::close(ws, c.code, &c.reason);
            // Its close event may come late (or after a wake): announce it now.
            Box::pin(self.gone(ws, c.code)).await;
        }
        if let Some(c) = &effects.close_all {
            for ws in kit::sockets(&self.state, None) {
                kit::close(&ws, c.code, &c.reason);
            }
        }
        let pending = self.pending_timers.try_borrow().map(|p| !p.is_empty()).unwrap_or(false);
        if !effects.timers.is_empty() || heartbeat || pending {
            let stored = self.stored_schedule();
            let mut schedule = stored.clone();
            let mut changed = self.apply_timers(&mut schedule, &effects.timers);
            if heartbeat {
                changed |= liveness::arm_on_connect(&mut schedule, kit::now(), self.heartbeat_ms);
            }
            if changed {
                if let Err(e) = self.save_schedule(&stored, &schedule).await {
                    worker::console_error!("{} schedule failed: {e}", self.class);
                }
            }
        }
        let mut calls = self.pending_calls.try_borrow_mut().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
        calls.extend(effects.calls);
        let answers = futures::future::join_all(calls.iter().map(|c| self.call(c))).await;
        for (call, answer) in calls.iter().zip(answers) {
            let Some(then) = &call.then else { continue };
            let ctx = Ctx { this: origin, ..self.ctx() };
            if let Some(next) = self.object.on_reply(&ctx, then, answer) {
                Box::pin(self.execute(origin, next)).await;
            }
        }
        if effects.release {
            self.release().await;
        }
    }

    /// [`Effects::release`], after every call of the event finished: sockets closed from
    /// within an event get their Close frame at once, but workerd keeps their TCP until the
    /// object is evicted (10–30 s). Flush storage (what was stored must survive the reset),
    /// then `ctx.abort()`: the runtime drops every socket now. Skipped if a socket is still
    /// open (e.g. one opened meanwhile with a new token) — the abort would drop it too.
    async fn release(&self) {
        if kit::sockets(&self.state, None).iter().any(kit::is_open) {
            return;
        }
        // The reset drops memory: the counters go to storage first.
        self.flush_stats(kit::now(), true);
        if let Err(e) = kit::liveness::flush(&self.state).await {
            worker::console_error!("{} release: flush failed: {e:?}", self.class);
            return;
        }
        kit::liveness::abort(&self.state, "release closed sockets");
    }

    /// Apply `timers` (after any `on_wake` left pending) to `schedule`; whether it changed.
    fn apply_timers(&self, schedule: &mut edge_realtime_core::schedule::Schedule, timers: &[Timer]) -> bool {
        let pending = self.pending_timers.try_borrow_mut().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
        let changed = !pending.is_empty() || !timers.is_empty();
        for timer in pending.iter().chain(timers) {
            match timer {
                Timer::Set { name, at } => schedule.set(name, *at),
                Timer::Cancel { name } => schedule.cancel(name),
            }
        }
        changed
    }

    /// The sends, in order (`To::This` needs an origin socket).
    /// Counts one frame out per recipient socket (the broadcast reports how many it reached).
    fn send_all(&self, origin: Option<&WebSocket>, effects: &Effects) {
        self.flush_coalesced();
        let mut sent: u32 = 0;
        for send in &effects.sends {
            sent = sent.saturating_add(match (&send.to, origin) {
                (To::This, Some(ws)) => u32::from(kit::send(ws, &send.frame)),
                (To::This, None) => 0,
                (To::All, _) | (To::Others, None) => kit::broadcast(&self.state, &send.frame, None, None),
                (To::Others, Some(ws)) => kit::broadcast(&self.state, &send.frame, None, Some(ws)),
                (To::Tag(tag), _) => kit::broadcast(&self.state, &send.frame, Some(tag), None),
            });
        }
        if sent > 0 {
            self.count(|s| s.frames_out(u64::from(sent)));
        }
    }

    /// POST `call.op` (with its body) to another object, up to `call.tries` times (in its
    /// [`effects::Call::order`] lane, if any); every failure is logged (what was stored stands).
    /// The 200 body, or the last failure. A 4xx answer is not tried again (the request itself
    /// is wrong).
    async fn call(&self, call: &effects::Call) -> Result<String, String> {
        let Some(lane) = &call.order else { return self.call_tries(call).await };
        self.lanes.enter(lane).await;
        let answer = self.call_tries(call).await;
        self.lanes.leave(lane);
        answer
    }

    async fn call_tries(&self, call: &effects::Call) -> Result<String, String> {
        let tries = call.tries.max(1);
        let mut last = String::new();
        for attempt in 1..=tries {
            let retry = match self.call_once(call).await {
                Ok((200, body)) => return Ok(body),
                Ok((status, body)) => {
                    last = format!("answered {status}: {}", body.chars().take(200).collect::<String>());
                    !(400..500).contains(&status)
                }
                Err(e) => {
                    last = e.to_string();
                    true
                }
            };
            worker::console_error!("{} → {} {} {} (try {attempt} of {tries}): {last}", self.class, call.binding, call.object, call.op);
            if !retry {
                break;
            }
        }
        Err(last)
    }

    async fn call_once(&self, call: &effects::Call) -> worker::Result<(u16, String)> {
        let headers = Headers::new();
        headers.set(http::OBJECT_NAME, &http::encode_header_text(&call.object))?;
        if call.body.is_some() {
            headers.set("Content-Type", "application/json")?;
        }
        let url = format!("https://do.internal/{}", call.op);
        let req = http::internal_request(&url, &Method::Post, &headers, call.body.as_deref().map(str::as_bytes))?;
        let stub = self.env.durable_object(call.binding)?.get_by_name(&call.object)?;
        let mut response = stub.fetch_with_request(req).await?;
        let status = response.status_code();
        let body = response.text().await.unwrap_or_default();
        Ok((status, body))
    }
}

/// The object's tables plus the kit's (`_schedule`, `_kit_stats`).
fn statements(schema: &[&'static str]) -> Vec<&'static str> {
    schema.iter().copied().chain([kit::SCHEDULE_SCHEMA, ops::STATS_SCHEMA]).collect()
}

fn sql_value(v: effects::Value) -> SqlStorageValue {
    match v {
        effects::Value::Null => SqlStorageValue::Null,
        effects::Value::Int(i) => SqlStorageValue::Integer(i),
        effects::Value::Real(f) => SqlStorageValue::Float(f),
        effects::Value::Text(s) => SqlStorageValue::String(s),
    }
}

#[wasm_bindgen]
extern "C" {
    /// `ctx.storage`, seen through `transactionSync` (workers-rs 0.8.7 does not bind it).
    #[wasm_bindgen(extends = js_sys::Object)]
    type RawStorage;

    #[wasm_bindgen(method, catch, js_name = transactionSync)]
    fn transaction_sync(this: &RawStorage, f: &js_sys::Function) -> Result<JsValue, JsValue>;
}

use worker::js_sys;

/// Run `statements` in one `storage.transactionSync`: a failing statement rolls back the rest.
/// A single statement is atomic by itself and runs directly (the hot path: one chat message).
fn transaction(state: &State, mut statements: Vec<Statement>) -> Result<(), String> {
    if statements.len() == 1 {
        if let Some(s) = statements.pop() {
            let binds: Vec<SqlStorageValue> = s.binds.into_iter().map(sql_value).collect();
            return sql::exec(&state.storage().sql(), s.sql, binds).map_err(|e| format!("{}: {e:?}", s.sql));
        }
    }
    let storage = state.as_raw().storage().map_err(|e| format!("storage: {e:?}"))?;
    let db = state.storage().sql();
    let run = move || -> Result<(), JsValue> {
        for s in statements {
            let binds: Vec<SqlStorageValue> = s.binds.into_iter().map(sql_value).collect();
            db.exec(s.sql, binds).map_err(|e| JsValue::from_str(&format!("{}: {e}", s.sql)))?;
        }
        Ok(())
    };
    let f = Closure::<dyn FnMut() -> Result<(), JsValue>>::once_into_js(run);
    storage
        .unchecked_ref::<RawStorage>()
        .transaction_sync(f.unchecked_ref())
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// Run an event handler's future, polled once right here: an event that needs no `.await` — a
/// chat message (store, broadcast), a close — completes synchronously and answers `undefined`,
/// with no Promise, no microtask and no executor task (those were ~10% of the ChatRoom's CPU in
/// a profile). Only a handler that really waits (a body read, an alarm write, a call to another
/// object) becomes a Promise. Sound by the `Future` contract: every poll that returns
/// `Pending` registers the waker of that poll, and the executor polls again at once.
/// Not generic: one executor glue for every handler of every class.
fn settle(mut future: std::pin::Pin<Box<dyn std::future::Future<Output = Result<JsValue, JsValue>>>>) -> JsValue {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Ok(value)) => value,
        std::task::Poll::Ready(Err(e)) => js_sys::Promise::reject(&e).into(),
        std::task::Poll::Pending => worker::wasm_bindgen_futures::future_to_promise(future).into(),
    }
}

/// The runtime's handlers, as [`durable_object!`]'s class forwards them (one line each): the
/// JS values in and out, each event's future through [`settle`].
impl Host {
    /// The constructor.
    pub fn create<T: RealtimeObject>(state: worker::worker_sys::DurableObjectState, env: Env) -> std::rc::Rc<Self> {
        let host = std::rc::Rc::new(Self::new::<T>(State::from(state), env));
        if let Ok(mut me) = host.me.try_borrow_mut() {
            *me = std::rc::Rc::downgrade(&host);
        }
        host
    }

    pub fn handle_fetch(self: &std::rc::Rc<Self>, req: worker::worker_sys::web_sys::Request) -> JsValue {
        let host = std::rc::Rc::clone(self);
        settle(Box::pin(async move {
            host.fetch(req.into())
                .await
                .map(|r| JsValue::from(worker::worker_sys::web_sys::Response::from(r)))
                .map_err(JsValue::from)
        }))
    }

    pub fn handle_websocket_message(self: &std::rc::Rc<Self>, ws: worker::worker_sys::web_sys::WebSocket, message: JsValue) -> JsValue {
        let message = match message.as_string() {
            Some(text) => WebSocketIncomingMessage::String(text),
            None => WebSocketIncomingMessage::Binary(js_sys::Uint8Array::new(&message).to_vec()),
        };
        let host = std::rc::Rc::clone(self);
        settle(Box::pin(async move {
            host.websocket_message(ws.into(), message).await.map(|()| JsValue::UNDEFINED).map_err(JsValue::from)
        }))
    }

    pub fn handle_websocket_close(
        self: &std::rc::Rc<Self>,
        ws: worker::worker_sys::web_sys::WebSocket,
        code: usize,
        reason: String,
        was_clean: bool,
    ) -> JsValue {
        let host = std::rc::Rc::clone(self);
        settle(Box::pin(async move {
            host.websocket_close(ws.into(), code, reason, was_clean).await.map(|()| JsValue::UNDEFINED).map_err(JsValue::from)
        }))
    }

    pub fn handle_websocket_error(self: &std::rc::Rc<Self>, ws: worker::worker_sys::web_sys::WebSocket, error: JsValue) -> JsValue {
        let host = std::rc::Rc::clone(self);
        settle(Box::pin(async move {
            host.websocket_error(ws.into(), error.into()).await.map(|()| JsValue::UNDEFINED).map_err(JsValue::from)
        }))
    }

    pub fn handle_connect(self: &std::rc::Rc<Self>, socket: worker::worker_sys::Socket) -> JsValue {
        let host = std::rc::Rc::clone(self);
        settle(Box::pin(async move {
            host.connect(worker::Socket::from(socket)).await.map(|()| JsValue::UNDEFINED).map_err(JsValue::from)
        }))
    }

    pub fn handle_alarm(self: &std::rc::Rc<Self>) -> JsValue {
        let host = std::rc::Rc::clone(self);
        settle(Box::pin(async move {
            host.alarm()
                .await
                .map(|r| JsValue::from(worker::worker_sys::web_sys::Response::from(r)))
                .map_err(JsValue::from)
        }))
    }
}

/// Declare the Durable Object class `$name` hosting the [`RealtimeObject`] `$object`: the
/// wasm-bindgen class the runtime instantiates (workers-rs needs one type per class), each
/// handler one line into the one, non-generic [`Host`]. (Written here rather than with
/// `#[worker::durable_object]`, whose handlers are always `async` exports: a Promise and an
/// executor task per event, even for a synchronous one.)
#[macro_export]
macro_rules! durable_object {
    ($(#[$meta:meta])* $name:ident => $object:ty) => {
        $(#[$meta])*
        #[::worker::wasm_bindgen::prelude::wasm_bindgen(wasm_bindgen = ::worker::wasm_bindgen)]
        pub struct $name {
            host: ::std::rc::Rc<$crate::kit::object::Host>,
        }

        #[::worker::wasm_bindgen::prelude::wasm_bindgen(wasm_bindgen = ::worker::wasm_bindgen)]
        impl $name {
            #[wasm_bindgen(constructor)]
            pub fn new(state: ::worker::worker_sys::DurableObjectState, env: ::worker::Env) -> Self {
                Self { host: $crate::kit::object::Host::create::<$object>(state, env) }
            }

            pub fn fetch(&self, req: ::worker::worker_sys::web_sys::Request) -> ::worker::wasm_bindgen::JsValue {
                self.host.handle_fetch(req)
            }

            #[wasm_bindgen(js_name = webSocketMessage)]
            pub fn websocket_message(
                &self,
                ws: ::worker::worker_sys::web_sys::WebSocket,
                message: ::worker::wasm_bindgen::JsValue,
            ) -> ::worker::wasm_bindgen::JsValue {
                self.host.handle_websocket_message(ws, message)
            }

            #[wasm_bindgen(js_name = webSocketClose)]
            pub fn websocket_close(
                &self,
                ws: ::worker::worker_sys::web_sys::WebSocket,
                code: usize,
                reason: String,
                was_clean: bool,
            ) -> ::worker::wasm_bindgen::JsValue {
                self.host.handle_websocket_close(ws, code, reason, was_clean)
            }

            #[wasm_bindgen(js_name = webSocketError)]
            pub fn websocket_error(
                &self,
                ws: ::worker::worker_sys::web_sys::WebSocket,
                error: ::worker::wasm_bindgen::JsValue,
            ) -> ::worker::wasm_bindgen::JsValue {
                self.host.handle_websocket_error(ws, error)
            }

            pub fn connect(&self, socket: ::worker::worker_sys::Socket) -> ::worker::wasm_bindgen::JsValue {
                self.host.handle_connect(socket)
            }

            pub fn alarm(&self) -> ::worker::wasm_bindgen::JsValue {
                self.host.handle_alarm()
            }
        }
    };
}

pub use crate::durable_object;

#[cfg(test)]
mod tests {
    use super::parse_timers;
    use edge_realtime_core::schedule::Schedule;

    #[test]
    fn the_boot_query_timers_are_the_table() {
        assert_eq!(parse_timers("[]"), Some(Schedule::default()));
        let timers = parse_timers(r#"[["heartbeat",1700000000123],["prune",5]]"#);
        assert_eq!(timers.as_ref().and_then(|t| t.get("heartbeat")), Some(1_700_000_000_123));
        assert_eq!(timers.as_ref().and_then(|t| t.get("prune")), Some(5));
        assert_eq!(timers.as_ref().map(|t| t.entries().count()), Some(2));
        // Unreadable: no copy, so the first use reads the table itself.
        assert_eq!(parse_timers(r#"[["heartbeat","soon"]]"#), None);
        assert_eq!(parse_timers("not json"), None);
    }
}
