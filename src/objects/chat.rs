//! ChatRoom Durable Object (docs/protocol.md §6.3): the kit hosts it ([`crate::kit::object`]) and
//! `core::chat` decides, one object per room.
//!
//! Storage: a `room` row (name, `latest_seq`, `pruned_through`) and one `messages` row per
//! chat or system message; the [`ChatLog`] is kept in memory and rebuilt on every wake. Each
//! socket's [`ChatConn`] (identity + rate-limit window) is its attachment, so it survives
//! hibernation. Every append is one synchronous hook, stored before it is broadcast. The
//! message path is the benchmarked hot path: one statement (no transaction), one broadcast
//! call, no schedule read (`prune_armed`), attachments from the kit's memory cache.

use std::collections::HashSet;

use serde::Deserialize;

use edge_realtime_core::chat::{self, ChatConfig, ChatConn, ChatLog, ChatMessage, ChatOp, HistoryQuery, Inbound, Post};
use edge_realtime_core::effects::Effects;
use edge_realtime_core::error::ApiError;
use edge_realtime_core::frame::Reject;
use edge_realtime_core::query::parse_seq;
use edge_realtime_core::replay::{self, Replay};

use crate::kit::coalesce::QueuedIds;
use crate::kit::object::{Connection, Ctx, Incoming, RealtimeObject, Reply};
use crate::kit::{self, Identity};

crate::kit::object::durable_object!(
    /// One chat room (`idFromName(room)`; `global` for `/api/chat`).
    ChatRoom => Room
);

/// Rate-limit windows this short have always expired by the time an evicted room wakes (eviction
/// needs ~10 s idle), so within one their counts may live in memory only.
const MEMORY_ONLY_WINDOW_MS: i64 = 10_000;

pub struct Room {
    name: Option<String>,
    cfg: ChatConfig,
    log: ChatLog,
    /// Whether the prune timer is armed (mirrors the stored schedule), so the message path
    /// never reads the schedule.
    prune_armed: bool,
    /// Ids of messages the client did not name.
    ids: kit::UniqueIds,
    /// The posts with a client id whose rows may still be queued (the dedup lookup).
    queued_posts: QueuedIds<ChatMessage>,
    /// The `members` rows as `restore` read them, for `on_wake`'s reconciliation.
    members: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct RoomRow {
    name: String,
    latest_seq: i64,
    pruned_through: i64,
    /// `[[user id, name], ...]` (the same read: no statement of its own on a wake).
    members: Option<String>,
}

fn user_tag(user_id: &str) -> String {
    format!("u:{user_id}")
}

impl RealtimeObject for Room {
    const CLASS: &'static str = "ChatRoom";
    const SCHEMA: &'static [&'static str] = chat::SCHEMA;
    type Op = ChatOp;
    type Conn = ChatConn;

    fn restore(ctx: &Ctx<'_>) -> Self {
        let cfg = ChatConfig::from_vars(|k| ctx.var(k));
        let row: Option<RoomRow> = ctx
            .first(
                "SELECT name, MAX(latest_seq, COALESCE((SELECT MAX(seq) FROM messages), 0)) AS latest_seq, pruned_through, \
                 (SELECT json_group_array(json_array(user_id, user_name)) FROM (SELECT * FROM members ORDER BY user_id)) AS members \
                 FROM room WHERE id = 1",
                vec![],
            )
            .ok()
            .flatten();
        let prune_armed = ctx.timer_at(chat::PRUNE_TIMER).is_some();
        let (name, log, members) = match row {
            Some(r) => {
                let members = r.members.as_deref().and_then(|m| serde_json::from_str(m).ok()).unwrap_or_default();
                (Some(r.name), ChatLog { latest_seq: r.latest_seq, pruned_through: r.pruned_through }, members)
            }
            None => (None, ChatLog::default(), Vec::new()),
        };
        // The user count derives from the sockets' attachments; the `members` rows only tell
        // `on_wake` whom a crash or a deploy took without a close event.
        Self { name, cfg, log, prune_armed, ids: kit::UniqueIds::default(), queued_posts: QueuedIds::default(), members }
    }

    /// "<name> left" (stored, then broadcast) for each announced member no socket is left for,
    /// then the user count. Nothing after a plain hibernation: every member still has a socket.
    fn on_wake(&mut self, ctx: &Ctx<'_>) -> Effects {
        let members = std::mem::take(&mut self.members);
        if members.is_empty() {
            return Effects::none();
        }
        let live = ctx.live_users();
        // A member whose socket is closing gets its "left" from that socket's close event.
        let mut present = live.clone();
        for (user_id, _) in &members {
            if !present.contains(user_id) && ctx.socket_count(Some(&user_tag(user_id))) > 0 {
                present.insert(user_id.clone());
            }
        }
        let ids = &self.ids;
        let left = self.log.reconcile(&members, &present, || ids.next_id(), ctx.now);
        if left.is_empty() {
            return Effects::none();
        }
        ctx.log_debug(&format!("reconcile ChatRoom: {} ghost(s) left", left.len()));
        let effects = left.iter().fold(Effects::none(), |e, m| {
            e.and(store_message(m)).store(chat::MEMBER_LEFT, vec![m.user_id.as_str().into()]).to_all(chat::message_frame(m))
        });
        effects.to_all(chat::user_count_frame(live.len())).and(self.maybe_prune(ctx))
    }

    fn name(&self) -> Option<String> {
        self.name.clone()
    }

    /// `GET /api/chat[/:room]/messages?limit=&before=`
    fn on_request(&mut self, ctx: &Ctx<'_>, op: ChatOp, req: &Incoming) -> Result<Reply, ApiError> {
        match op {
            ChatOp::Messages => {
                let query = HistoryQuery::parse(req.query("limit"), req.query("before"))?;
                let rows: Vec<ChatMessage> = ctx.rows(
                    "SELECT seq, id, client_id, kind, user_id, user_name, content, timestamp FROM messages WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                    vec![query.before.into(), i64::from(query.fetch_limit).into()],
                )?;
                Ok(Reply { status: 200, body: chat::history_body(rows, query.limit), effects: Effects::none() })
            }
            ChatOp::Socket => Err(ApiError::not_found("the chat socket is a WebSocket")),
        }
    }

    /// `GET /api/chat[/:room][?since=]`: the replay (read before the accept, so a storage error
    /// is a clean 500), "<name> joined" for a user's first socket, the new user count.
    fn on_connect(&mut self, ctx: &Ctx<'_>, who: &Identity, req: &Incoming) -> Result<(ChatConn, Effects), ApiError> {
        let since = parse_seq("since", req.query("since"))?;
        let conn = ChatConn::new(Some(&who.user_id), Some(&who.user_name))?;
        let name = req.object_name()?;
        let mut effects = Effects::none();
        if self.name.is_none() {
            effects = effects
                .store("INSERT OR IGNORE INTO room (id, name, latest_seq, pruned_through) VALUES (1, ?, 0, 0)", vec![name.into()]);
            self.name = Some(name.to_owned());
        }
        match self.log.replay(since) {
            Replay::Nothing => {}
            Replay::Resync { latest_seq } => effects = effects.to_self(replay::resync_frame(latest_seq)),
            Replay::After(from) => {
                let rows: Vec<ChatMessage> = ctx.rows(
                    "SELECT seq, id, client_id, kind, user_id, user_name, content, timestamp FROM messages WHERE seq > ? ORDER BY seq",
                    vec![from.into()],
                )?;
                for m in &rows {
                    effects = effects.to_self(chat::message_frame(m));
                }
            }
        }
        let live = ctx.connections::<ChatConn>(None);
        let others = live.iter().filter(|c| c.user_id == who.user_id).count();
        if let Some(m) = self.log.join(&conn, others, self.ids.next_id(), ctx.now) {
            effects = effects
                .and(store_message(&m))
                .store(chat::MEMBER_JOINED, vec![m.user_id.as_str().into(), m.user_name.as_str().into()])
                .to_all(chat::message_frame(&m));
        }
        let mut users: HashSet<&str> = live.iter().map(|c| c.user_id.as_str()).collect();
        users.insert(&who.user_id);
        let effects = effects.to_all(chat::user_count_frame(users.len()));
        Ok((conn, effects.and(self.maybe_prune(ctx))))
    }

    /// The hot path: a post is deduplicated by `(user, client id)`, else sequenced, stored
    /// (one statement) and broadcast (one call).
    fn on_message(&mut self, ctx: &Ctx<'_>, conn: &mut Connection<ChatConn>, text: &str) -> Result<Effects, Reject> {
        match chat::on_message(&mut conn.conn, &self.cfg, text, ctx.now) {
            Inbound::Reply(frame) => Ok(Effects::none().to_self(frame)),
            Inbound::Close { code, reason } => Err(Reject::Close { code, reason }),
            Inbound::Post(post) => self.post(ctx, &conn.conn, post),
        }
    }

    /// Persist when a window starts or windows are long; counts inside a short window can stay
    /// in memory (it has expired by the time an evicted room wakes).
    fn must_persist(&self, before: &ChatConn, after: &ChatConn) -> bool {
        after.window_start != before.window_start || self.cfg.rate_limit_window_ms > MEMORY_ONLY_WINDOW_MS
    }

    /// "<name> left" for a user's last socket, then the new count, to everyone else.
    fn on_gone(&mut self, ctx: &Ctx<'_>, conn: &Connection<ChatConn>, _remaining: usize) -> Effects {
        let live = ctx.connections::<ChatConn>(Some(&user_tag(&conn.user_id)));
        let mut effects = Effects::none();
        if let Some(m) = self.log.leave(&conn.conn, live.len(), self.ids.next_id(), ctx.now) {
            effects = effects
                .and(store_message(&m))
                .store(chat::MEMBER_LEFT, vec![m.user_id.as_str().into()])
                .to_others(chat::message_frame(&m));
        }
        let users: HashSet<String> = ctx.connections::<ChatConn>(None).into_iter().map(|c| c.user_id).collect();
        effects.to_others(chat::user_count_frame(users.len())).and(self.maybe_prune(ctx))
    }

    /// Prune history over `CHAT_MAX_MESSAGES`: only message rows go; the room row keeps
    /// `latest_seq`, so seqs are never reused.
    fn on_timer(&mut self, _ctx: &Ctx<'_>, name: &str) -> Effects {
        if name != chat::PRUNE_TIMER {
            return Effects::none();
        }
        self.prune_armed = false;
        match self.log.prune(&self.cfg) {
            Some(cutoff) => Effects::none().store("DELETE FROM messages WHERE seq <= ?", vec![cutoff.into()]).store(
                "UPDATE room SET pruned_through = ?, latest_seq = ? WHERE id = 1",
                vec![cutoff.into(), self.log.latest_seq.into()],
            ),
            None => Effects::none(),
        }
    }
}

impl Room {
    fn post(&mut self, ctx: &Ctx<'_>, conn: &ChatConn, post: Post) -> Result<Effects, Reject> {
        let storage = |_| Reject::close(edge_realtime_core::error::close::INTERNAL, "storage error");
        if let Some(client_id) = &post.client_id {
            let original = self
                .queued_posts
                .seen(ctx, &conn.user_id, client_id, || {
                    ctx.first_written::<ChatMessage>(
                        "SELECT seq, id, client_id, kind, user_id, user_name, content, timestamp FROM messages WHERE user_id = ? AND client_id = ?",
                        vec![conn.user_id.as_str().into(), client_id.as_str().into()],
                    )
                })
                .map_err(storage)?;
            if let Some(original) = original {
                return Ok(Effects::none().to_self(chat::duplicate_frame(&original)));
            }
        }
        let m = self.log.post(conn, post, self.ids.next_id(), ctx.now);
        if let Some(client_id) = &m.client_id {
            self.queued_posts.remember(&m.user_id, client_id, m.clone());
        }
        // No `room` write per message: the newest row always survives pruning
        // (CHAT_MAX_MESSAGES ≥ 1), so `MAX(seq)` is the latest seq after a wake.
        Ok(store_message(&m).to_all(chat::message_frame(&m)).and(self.maybe_prune(ctx)))
    }

    /// Arm the prune timer if history is over the limit (never postpones a pending one).
    fn maybe_prune(&mut self, ctx: &Ctx<'_>) -> Effects {
        if self.prune_armed || replay::prune_through(self.log.latest_seq, self.log.pruned_through, self.cfg.max_messages).is_none() {
            return Effects::none();
        }
        self.prune_armed = true;
        Effects::none().set_timer(chat::PRUNE_TIMER, ctx.now.saturating_add(self.cfg.prune_interval_ms))
    }
}

fn store_message(m: &ChatMessage) -> Effects {
    Effects::none().store(
        "INSERT INTO messages (seq, id, client_id, kind, user_id, user_name, content, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            m.seq.into(),
            m.id.as_str().into(),
            m.client_id.as_deref().into(),
            m.kind.as_str().into(),
            m.user_id.as_str().into(),
            m.user_name.as_str().into(),
            m.content.as_str().into(),
            m.timestamp.into(),
        ],
    )
}
