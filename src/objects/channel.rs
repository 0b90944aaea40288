//! Channel Durable Object (docs/protocol.md §6.5): the kit hosts it ([`crate::kit::object`]) and
//! `core::channel` decides. Messages live in SQLite; the core's small state (latest sequence,
//! pruned_through, typing flags, its timers) is rebuilt on every wake. A post is deduplicated,
//! sequenced and stored in one synchronous hook, so sequences stay gapless under any mix of
//! WebSocket and HTTP writers.
//!
//! Sharded (`CHANNEL_SHARDS` > 1, docs/sharding.md): the same class plays two roles, read from
//! its name. The primary `<id>` keeps everything above plus the member list (`shard_members`)
//! and hands every frame for "everyone" to each shard with members, one `deliver` call per
//! shard; a shard `<id>~shard-<k>` holds sockets only, forwards posts and typing to the
//! primary, asks it on every connect (participants, replay), and delivers sequenced frames in
//! order through `core::shard::Feed` (a gap is fetched from the primary first).
//!
//! A reaction is read (the message's tallies, this user's row), decided and stored in one
//! synchronous hook of the primary, so concurrent toggles count exactly; a shard forwards it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use edge_realtime_core::channel::{self, Channel as Core, ChannelMessage, ChannelOp, Handled, HistoryQuery, Outcome, Post};
use edge_realtime_core::effects::{Call, Effects, Op, To};
use edge_realtime_core::shard::{self, Deliver, Feed, Item, Role, Step};
use edge_realtime_core::error::{close, ApiError};
use edge_realtime_core::frame::Reject;
use edge_realtime_core::query::parse_seq;
use edge_realtime_core::reactions::{self, Current, React, ReactionCounts};
use edge_realtime_core::replay::{self, Replay};
use edge_realtime_core::schedule::Schedule;

use crate::kit::coalesce::QueuedIds;
use crate::kit::object::{self, Connection, Ctx, Incoming, RealtimeObject, Reply};
use crate::kit::Identity;
use crate::objects::sharding;

const BINDING: &str = "CHANNEL";

crate::kit::object::durable_object!(
    /// One channel (`idFromName(id)`): its messages, typing flags and participants.
    Channel => ChannelRoom
);

pub struct ChannelRoom {
    name: Option<String>,
    core: Core,
    /// Primary: the users with sockets on each shard (`shard_members`).
    members: sharding::Members,
    /// Shard: what its sockets got so far (`shard_feed` + recent frames in memory).
    feed: Feed,
    /// Shard: users announced to the primary whose sockets were gone at the last wake.
    ghosts: BTreeSet<String>,
    /// Primary: the sequences of the posts with a client id whose rows may still be queued
    /// (the dedup lookup).
    queued_posts: QueuedIds<i64>,
}

#[derive(Deserialize)]
struct FeedRow {
    delivered: i64,
}

/// `shard-post` / `shard-typing` / `shard-join` / `shard-leave` bodies (from a shard).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShardRequest {
    user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    is_typing: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<i64>,
    /// The shard's feed position, sent when it has sockets that must catch up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delivered: Option<i64>,
    /// `shard-react`: the validated toggle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    react: Option<ReactBody>,
}

/// A reaction toggle a shard forwards (its emoji already passed the rule; checked again).
#[derive(Serialize, Deserialize)]
struct ReactBody {
    sequence: i64,
    emoji: String,
    on: bool,
}

/// The primary's answer to `shard-join` and `range`.
#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    participants: Option<String>,
    latest_seq: i64,
    pruned_through: i64,
    /// Live frames (the shard's catch-up and gap fills).
    messages: Vec<Item>,
    /// `shard-join`: the joining socket's `?since=` replay, with each message's reactions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    replay: Vec<Item>,
}

#[derive(Deserialize)]
struct RangeRow {
    sequence: i64,
    emoji: String,
    count: i64,
}

#[derive(Deserialize)]
struct PostAnswer {
    sequence: i64,
}

#[derive(Deserialize)]
struct ChannelRow {
    name: String,
    latest_seq: i64,
    pruned_through: i64,
}

#[derive(Deserialize)]
struct TypingRow {
    user_id: String,
    expires_at: i64,
}

#[derive(Deserialize)]
struct SeqRow {
    sequence: i64,
}

#[derive(Deserialize)]
struct MessageRow {
    sequence: i64,
    user_id: String,
    content: String,
    timestamp: i64,
    client_id: Option<String>,
}

impl From<MessageRow> for ChannelMessage {
    fn from(r: MessageRow) -> Self {
        ChannelMessage { sequence: r.sequence, user_id: r.user_id, content: r.content, timestamp: r.timestamp, client_id: r.client_id }
    }
}

impl RealtimeObject for ChannelRoom {
    const CLASS: &'static str = "Channel";
    const SCHEMA: &'static [&'static str] = channel::SCHEMA;
    type Op = ChannelOp;
    type Conn = ();

    fn restore(ctx: &Ctx<'_>) -> Self {
        let row: Option<ChannelRow> =
            ctx.first("SELECT name, latest_seq, pruned_through FROM channel WHERE id = 1", vec![]).ok().flatten();
        let typing: Vec<TypingRow> = ctx.rows("SELECT user_id, expires_at FROM typing", vec![]).unwrap_or_default();
        // The core's own timers (the kit keeps its heartbeat apart).
        let timers = [channel::TYPING_TIMER, channel::PRUNE_TIMER]
            .into_iter()
            .filter_map(|name| Some((name.to_owned(), ctx.timer_at(name)?)));
        let (latest_seq, pruned_through) = row.as_ref().map_or((0, 0), |r| (r.latest_seq, r.pruned_through));
        let core = Core::restore(
            latest_seq,
            pruned_through,
            typing.into_iter().map(|t| (t.user_id, t.expires_at)).collect(),
            Schedule::from_entries(timers),
        );
        let by_user = sharding::load_members(ctx);
        let feed: Option<FeedRow> = ctx.first("SELECT delivered FROM shard_feed WHERE id = 1", vec![]).ok().flatten();
        Self { name: row.map(|r| r.name), core, members: by_user, feed: Feed::restore(feed.map_or(0, |f| f.delivered)), ghosts: BTreeSet::new(), queued_posts: QueuedIds::default() }
    }

    fn name(&self) -> Option<String> {
        self.name.clone()
    }

    /// Typing flags of users without an open socket (dropped by a crash or a deploy) go, and
    /// whoever is left hears the new list.
    fn on_wake(&mut self, ctx: &Ctx<'_>) -> Effects {
        let live_users = &ctx.live_users();
        if let Some((primary, index)) = self.shard() {
            let _ = (primary, index);
            self.ghosts = sharding::ghosts(ctx, live_users);
            return Effects::none();
        }
        let live: BTreeSet<String> = live_users.iter().cloned().chain(self.members.keys().cloned()).collect();
        let outcome = self.core.reconcile(&live, ctx.now);
        if !outcome.typing_changed {
            return Effects::none();
        }
        ctx.log_debug("reconcile Channel: ghost typing dropped");
        let effects = self.core.effects(outcome);
        self.fan_out(effects, None)
    }

    fn on_request(&mut self, ctx: &Ctx<'_>, op: ChannelOp, req: &Incoming) -> Result<Reply, ApiError> {
        if let Role::Shard { primary, index } = shard::role(req.name_text()?) {
            return self.shard_request(ctx, op, req, primary, index);
        }
        let reply = self.primary_request(ctx, op, req)?;
        let effects = self.fan_out(reply.effects, None);
        Ok(Reply { effects, ..reply })
    }

    /// `participants` (the others hear the join if the set grew: the list, or a
    /// `participant_joined` delta above `PARTICIPANTS_LIST_MAX`), then the replay of `?since=`, in
    /// this same hook so no live message can overtake it. On a shard, from the primary's
    /// answer to [`Self::connect_call`].
    fn on_connect(&mut self, ctx: &Ctx<'_>, who: &Identity, req: &Incoming) -> Result<((), Effects), ApiError> {
        let since = parse_seq("since", req.query("since"))?;
        if let Role::Shard { .. } = shard::role(req.name_text()?) {
            return self.shard_connect(ctx, who, req, since).map(|e| ((), e));
        }
        let named = object::remember_name(&mut self.name, req, channel::REMEMBER_NAME)?;
        let others = self.everyone(ctx);
        let mut effects = named.and(self.core.effects(self.core.on_connect(&who.user_id, &others)));
        match self.core.replay_plan(since) {
            Replay::Nothing => {}
            Replay::Resync { latest_seq } => effects = effects.to_self(replay::resync_frame(latest_seq)),
            Replay::After(from) => {
                let counts = reaction_counts(ctx, from, self.core.latest_seq())?;
                for message in messages_after(ctx, from, None)? {
                    effects = effects.to_self(message.replay_frame(&counts));
                }
            }
        }
        Ok(((), self.fan_out(effects, None)))
    }

    /// A shard asks its primary before accepting: the participants with this user, the latest
    /// sequence and the messages this socket (replay) and the shard's others (catch-up) need.
    fn connect_call(&mut self, ctx: &Ctx<'_>, who: &Identity, req: &Incoming) -> Result<Option<Call>, ApiError> {
        let Role::Shard { primary, index } = shard::role(req.name_text()?) else { return Ok(None) };
        let since = parse_seq("since", req.query("since"))?;
        let delivered = (ctx.open_sockets(None) > 0).then(|| self.feed.delivered());
        let body = ShardRequest { user_id: who.user_id.clone(), is_typing: None, since, delivered, react: None };
        Ok(Some(to_primary(primary, &format!("{}?shard={index}", ChannelOp::ShardJoin.path()), &body).ordered(lane(&who.user_id))))
    }

    fn on_message(&mut self, ctx: &Ctx<'_>, conn: &mut Connection<()>, text: &str) -> Result<Effects, Reject> {
        if let Some((primary, index)) = self.shard() {
            let gone = sharding::flush_ghosts(BINDING, &mut self.ghosts, ctx, &primary, index, None);
            return shard_message(ctx, conn, text, &primary).map(|e| gone.and(e));
        }
        let effects = self.socket_message(ctx, conn, text)?;
        Ok(self.fan_out(effects, None))
    }

    /// A user's last socket leaves and stops typing (a shard tells the primary).
    fn on_gone(&mut self, ctx: &Ctx<'_>, conn: &Connection<()>, remaining: usize) -> Effects {
        if let Some((primary, index)) = self.shard() {
            return sharding::on_gone(BINDING, &mut self.ghosts, ctx, (&primary, index), &conn.user_id, remaining);
        }
        let outcome = self.core.on_close(&conn.user_id, &self.everyone(ctx), ctx.now);
        let effects = self.core.effects(outcome);
        self.fan_out(effects, None)
    }

    /// Typing expiry and pruning (the core knows which of its timers are due).
    fn on_timer(&mut self, ctx: &Ctx<'_>, _name: &str) -> Effects {
        let max_messages = retention(ctx).max_messages;
        let outcome = self.core.on_alarm(ctx.now, max_messages);
        let effects = self.core.effects(outcome);
        self.fan_out(effects, None)
    }

    /// A shard's forwarded post came back (`ack:<client id JSON>`), or a gap's range did
    /// (`gap:<the deliver items from the one that revealed it>`).
    fn on_reply(&mut self, ctx: &Ctx<'_>, then: &str, reply: Result<String, String>) -> Effects {
        if let Some(id) = then.strip_prefix("ack:") {
            let client_id: Option<String> = serde_json::from_str(id).unwrap_or(None);
            return match reply.as_deref().map(serde_json::from_str::<PostAnswer>) {
                Ok(Ok(answer)) => Effects::none().to_self(channel::ack_frame(client_id.as_deref(), answer.sequence)),
                // The post may or may not be stored: the client reconnects and resends (its id dedups).
                _ => Effects::none().close(close::INTERNAL, "channel primary unavailable"),
            };
        }
        if then == "react" {
            // The sender's own frames: an unchanged toggle's `reaction`, or an in-band error.
            return match reply.as_deref().map(serde_json::from_str::<Vec<String>>) {
                Ok(Ok(frames)) => frames.into_iter().fold(Effects::none(), Effects::to_self),
                _ => Effects::none().to_self(Reject::error_frame("unavailable", "the channel is not reachable; try again")),
            };
        }
        if let Some(rest) = then.strip_prefix("gap:") {
            let Some(pending) = Deliver::parse(rest.as_bytes()) else { return Effects::none() };
            let mut items = pending.items.into_iter();
            let Some(first) = items.next() else { return Effects::none() };
            let fetched: Vec<(i64, String)> = reply
                .ok()
                .and_then(|body| serde_json::from_str::<Snapshot>(&body).ok())
                .map(|s| s.messages.into_iter().filter_map(|i| i.seq.map(|seq| (seq, i.frame))).collect())
                .unwrap_or_default();
            let mut effects = match self.feed.fill(fetched, (first.seq.unwrap_or(0), first.frame)) {
                Ok(frames) => frames.into_iter().fold(Effects::none(), Effects::to_all),
                Err(at) => {
                    worker::console_error!("Channel shard: messages before {at} unavailable: sockets told to resync");
                    Effects::none().to_all(replay::resync_frame(at))
                }
            };
            effects = effects.store(shard::SAVE_FEED, vec![self.feed.delivered().into()]);
            let primary = self.shard().map(|(p, _)| p).unwrap_or_default();
            return effects.and(self.deliver(ctx, &primary, items.collect()));
        }
        Effects::none()
    }
}

impl ChannelRoom {
    /// Primary: every frame for everyone also goes to each shard with members
    /// ([`sharding::fan_out`]; none without members: the unsharded path is untouched).
    fn fan_out(&self, effects: Effects, except: Option<u32>) -> Effects {
        sharding::fan_out(BINDING, self.name.as_deref(), &self.members, effects, except, channel::sequence_of)
    }

    /// Primary: the HTTP ops and the shards' internal ones.
    fn primary_request(&mut self, ctx: &Ctx<'_>, op: ChannelOp, req: &Incoming) -> Result<Reply, ApiError> {
        match op {
            // `POST /api/channel/:id/message`
            ChannelOp::Message => {
                let identity = req.identity()?;
                let body = std::str::from_utf8(&req.body)
                    .map_err(|_| ApiError::bad_request("invalid_body", "could not read the body"))?;
                let post = channel::parse_post_body(body).map_err(|e| e.to_api())?;
                let named = object::remember_name(&mut self.name, req, channel::REMEMBER_NAME)?;
                let (sequence, effects) = self.post(ctx, &identity.user_id.clone(), post)?;
                Ok(Reply { status: 200, body: channel::post_response(sequence), effects: named.and(effects) })
            }
            // `GET /api/channel/:id/messages?after=&limit=`
            ChannelOp::Messages => {
                let query = HistoryQuery::parse(req.query("after"), req.query("limit"))?;
                let rows = messages_after(ctx, query.after, Some(query.fetch_limit()))?;
                let counts = match channel::history_range(&rows) {
                    Some((after, through)) => reaction_counts(ctx, after, through)?,
                    None => ReactionCounts::new(),
                };
                Ok(Reply { status: 200, body: channel::history_body(rows, &counts, query.limit), effects: Effects::none() })
            }
            ChannelOp::ShardPost => {
                let request = shard_body(req)?;
                let body = std::str::from_utf8(&req.body)
                    .map_err(|_| ApiError::bad_request("invalid_body", "could not read the body"))?;
                let post = channel::parse_post_body(body).map_err(|e| e.to_api())?;
                let named = object::remember_name(&mut self.name, req, channel::REMEMBER_NAME)?;
                let (sequence, effects) = self.post(ctx, &request.user_id, post)?;
                Ok(Reply { status: 200, body: channel::post_response(sequence), effects: named.and(effects) })
            }
            ChannelOp::ShardTyping => {
                let request = shard_body(req)?;
                let frame = serde_json::json!({"type": "typing", "isTyping": request.is_typing.unwrap_or(false)}).to_string();
                let outcome = match self.core.on_message(&request.user_id, &frame, ctx.now) {
                    Ok(Handled::Done(outcome)) => outcome,
                    _ => return Err(ApiError::bad_request("invalid_body", "not a typing change")),
                };
                Ok(Reply { status: 200, body: sharding::ok_body(), effects: self.core.effects(outcome) })
            }
            ChannelOp::ShardReact => {
                let request = shard_body(req)?;
                let body = request.react.ok_or_else(|| ApiError::bad_request("invalid_body", "not a reaction"))?;
                let to_sender = |frames: Vec<String>| serde_json::to_string(&frames).map_err(|_| ApiError::internal());
                let checked = React::new(body.sequence, body.emoji, body.on)
                    .map_err(|e| e.to_reject())
                    .and_then(|react| {
                        let current = current_reactions(ctx, &react, &request.user_id)
                            .map_err(|_| Reject::close(close::INTERNAL, "internal error"))?;
                        self.core.react(&request.user_id, &react, &current)
                    });
                match checked {
                    // The sender's own frames (an unchanged toggle) go back to its shard; the
                    // `reaction` broadcast is fanned out to every shard like any frame.
                    Ok(mut effects) => {
                        let (own, rest): (Vec<_>, Vec<_>) = effects.sends.drain(..).partition(|s| s.to == To::This);
                        effects.sends = rest;
                        Ok(Reply { status: 200, body: to_sender(own.into_iter().map(|s| s.frame).collect())?, effects })
                    }
                    Err(Reject::InBand { code, message }) => {
                        Ok(Reply { status: 200, body: to_sender(vec![Reject::error_frame(code, &message)])?, effects: Effects::none() })
                    }
                    Err(Reject::Close { .. }) => Err(ApiError::internal()),
                }
            }
            ChannelOp::ShardJoin => {
                let request = shard_body(req)?;
                let index = sharding::index(req)?;
                let named = object::remember_name(&mut self.name, req, channel::REMEMBER_NAME)?;
                let others = self.everyone(ctx);
                // The full list for the joining socket; the others' list or delta is fanned out.
                let mut outcome = self.core.on_connect(&request.user_id, &others);
                let participants = outcome.to_self.pop();
                let stored = sharding::join(&mut self.members, &request.user_id, index);
                let replay_after = match self.core.replay_plan(request.since) {
                    Replay::After(s) => Some(s),
                    _ => None,
                };
                let after = match (replay_after, request.delivered) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let messages = match after {
                    Some(a) => messages_after(ctx, a, None)?,
                    None => Vec::new(),
                };
                // The joining socket's replay carries each message's reactions, like an unsharded one.
                let replay = match replay_after {
                    Some(from) => {
                        let counts = reaction_counts(ctx, from, self.core.latest_seq())?;
                        messages
                            .iter()
                            .filter(|m| m.sequence > from)
                            .map(|m| Item { seq: Some(m.sequence), frame: m.replay_frame(&counts) })
                            .collect()
                    }
                    None => Vec::new(),
                };
                let snapshot = Snapshot {
                    participants,
                    latest_seq: self.core.latest_seq(),
                    pruned_through: self.core.pruned_through(),
                    messages: messages.iter().map(|m| Item { seq: Some(m.sequence), frame: m.frame() }).collect(),
                    replay,
                };
                ctx.log_debug(&format!("shard join Channel {} shard {index} user {}", self.name.clone().unwrap_or_default(), request.user_id));
                let body = serde_json::to_string(&snapshot).map_err(|_| ApiError::internal())?;
                Ok(Reply { status: 200, body, effects: named.and(stored).and(self.core.effects(outcome)) })
            }
            ChannelOp::ShardLeave => {
                let request = shard_body(req)?;
                let index = sharding::index(req)?;
                let (stored, left) = sharding::part(&mut self.members, &request.user_id, index);
                if !left {
                    return Ok(Reply { status: 200, body: sharding::ok_body(), effects: stored });
                }
                let outcome = self.core.on_close(&request.user_id, &self.everyone(ctx), ctx.now);
                Ok(Reply { status: 200, body: sharding::ok_body(), effects: stored.and(self.core.effects(outcome)) })
            }
            ChannelOp::Range => {
                let after = parse_seq("after", req.query("after"))?.unwrap_or(0);
                let through = parse_seq("through", req.query("through"))?.unwrap_or(i64::MAX);
                let messages = messages_after(ctx, after, None)?;
                let snapshot = Snapshot {
                    participants: None,
                    latest_seq: self.core.latest_seq(),
                    pruned_through: self.core.pruned_through(),
                    messages: messages
                        .iter()
                        .filter(|m| m.sequence <= through)
                        .map(|m| Item { seq: Some(m.sequence), frame: m.frame() })
                        .collect(),
                    replay: Vec::new(),
                };
                let body = serde_json::to_string(&snapshot).map_err(|_| ApiError::internal())?;
                Ok(Reply { status: 200, body, effects: Effects::none() })
            }
            ChannelOp::Deliver => Err(ApiError::not_found("deliver is a shard operation")),
            ChannelOp::Socket => Err(ApiError::not_found("the channel socket is a WebSocket")),
        }
    }

    /// Shard: only `deliver` (a shard serves no public route).
    fn shard_request(&mut self, ctx: &Ctx<'_>, op: ChannelOp, req: &Incoming, primary: &str, index: u32) -> Result<Reply, ApiError> {
        if op != ChannelOp::Deliver {
            return Err(ApiError::not_found("a channel shard serves deliver only"));
        }
        let deliver = Deliver::parse(&req.body).ok_or_else(|| ApiError::bad_request("invalid_body", "not a deliver body"))?;
        // Test-only fault (like DEBUG_WAKE): refuse every delivery of one sequence, as an
        // unreachable shard would, so the e2e suite sees the retries and the gap fetch.
        let refused = ctx.var("DEBUG_SHARD_REFUSE_SEQ").and_then(|v| v.trim().parse::<i64>().ok());
        if refused.is_some_and(|n| deliver.items.iter().any(|i| i.seq == Some(n))) {
            ctx.log_debug(&format!("shard refuse Channel {primary}: DEBUG_SHARD_REFUSE_SEQ"));
            return Err(ApiError::service_unavailable("DEBUG_SHARD_REFUSE_SEQ"));
        }
        let gone = sharding::flush_ghosts(BINDING, &mut self.ghosts, ctx, primary, index, None);
        let effects = gone.and(self.deliver(ctx, primary, deliver.items));
        Ok(Reply { status: 200, body: sharding::ok_body(), effects })
    }

    /// Shard: hand `items` to every socket — unsequenced at once, sequenced in order (a gap
    /// stops here and fetches the range; the rest goes with it in the continuation).
    fn deliver(&mut self, ctx: &Ctx<'_>, primary: &str, items: Vec<Item>) -> Effects {
        let has_sockets = ctx.open_sockets(None) > 0;
        let mut effects = Effects::none();
        let mut advanced = false;
        let mut items = items.into_iter();
        while let Some(item) = items.next() {
            let Some(seq) = item.seq else {
                effects = effects.to_all(item.frame);
                continue;
            };
            match self.feed.on_frame(seq, &item.frame, has_sockets) {
                Step::Duplicate => {}
                Step::Deliver(frame) => {
                    advanced = true;
                    effects = effects.to_all(frame);
                }
                Step::Gap { after, before } => {
                    ctx.log_debug(&format!("shard gap Channel {primary}: fetching {}..{}", after + 1, before - 1));
                    let rest = Deliver { items: std::iter::once(item).chain(items).collect() };
                    let op = format!("{}?after={after}&through={}", ChannelOp::Range.path(), before - 1);
                    let call = Call::new(BINDING, primary, op)
                        .tries(shard::CALL_TRIES)
                        .then(format!("gap:{}", rest.to_json()));
                    effects = effects.call_with(call);
                    break;
                }
            }
        }
        if advanced {
            effects = effects.store(shard::SAVE_FEED, vec![self.feed.delivered().into()]);
        }
        effects
    }

    /// Shard: a socket is accepted with the primary's snapshot (its prelude).
    fn shard_connect(&mut self, ctx: &Ctx<'_>, who: &Identity, req: &Incoming, since: Option<i64>) -> Result<Effects, ApiError> {
        let snapshot = match req.prelude() {
            Some(Ok(body)) => serde_json::from_str::<Snapshot>(body).map_err(|_| ApiError::internal())?,
            _ => return Err(ApiError::service_unavailable("the channel is not reachable; try again")),
        };
        let name = req.name_text()?.to_owned();
        let mut effects = Effects::none();
        if self.name.is_none() {
            self.name = Some(name.clone());
            effects = effects.store(channel::REMEMBER_NAME, vec![name.as_str().into()]);
        }
        ctx.log_debug(&format!("shard accept Channel {name} user {}", who.user_id));
        if let Role::Shard { primary, index } = shard::role(&name) {
            effects = effects.and(sharding::flush_ghosts(BINDING, &mut self.ghosts, ctx, primary, index, Some(&who.user_id)));
        }
        effects = effects.store(shard::ADD_USER, vec![who.user_id.as_str().into()]);
        let has_others = ctx.open_sockets(None) > 0;
        // The others catch up to the snapshot first (they never see the new socket's replay).
        if has_others {
            for item in &snapshot.messages {
                let Some(seq) = item.seq else { continue };
                if seq > snapshot.latest_seq {
                    continue;
                }
                if let Step::Deliver(frame) = self.feed.on_frame(seq, &item.frame, true) {
                    effects = effects.to_others(frame);
                }
            }
        }
        self.feed.skip_to(snapshot.latest_seq);
        effects = effects.store(shard::SAVE_FEED, vec![self.feed.delivered().into()]);
        if let Some(participants) = snapshot.participants {
            effects = effects.to_self(participants);
        }
        match replay::plan(since, snapshot.latest_seq, snapshot.pruned_through) {
            Replay::Nothing => {}
            Replay::Resync { latest_seq } => effects = effects.to_self(replay::resync_frame(latest_seq)),
            Replay::After(from) => {
                for item in snapshot.replay.iter().filter(|i| i.seq.is_some_and(|s| s > from && s <= snapshot.latest_seq)) {
                    effects = effects.to_self(item.frame.clone());
                }
            }
        }
        // Frames this shard delivered while the snapshot was on its way.
        match self.feed.since(snapshot.latest_seq) {
            Ok(frames) => effects = frames.into_iter().fold(effects, Effects::to_self),
            Err(at) => effects = effects.to_self(replay::resync_frame(at)),
        }
        Ok(effects)
    }

    /// The shard's primary and index, from the remembered name.
    fn shard(&self) -> Option<(String, u32)> {
        match shard::role(self.name.as_deref()?) {
            Role::Shard { primary, index } => Some((primary.to_owned(), index)),
            Role::Primary => None,
        }
    }

    /// Primary: the users with an open socket here or on any shard.
    fn everyone(&self, ctx: &Ctx<'_>) -> BTreeSet<String> {
        let mut users = ctx.live_users();
        users.extend(self.members.keys().cloned());
        users
    }

    fn socket_message(&mut self, ctx: &Ctx<'_>, conn: &mut Connection<()>, text: &str) -> Result<Effects, Reject> {
        match self.core.on_message(&conn.user_id, text, ctx.now)? {
            Handled::Done(outcome) => Ok(self.core.effects(outcome)),
            Handled::Post(post) => {
                let client_id = post.client_id.clone();
                let (sequence, effects) =
                    self.post(ctx, &conn.user_id, post).map_err(|_| Reject::close(close::INTERNAL, "internal error"))?;
                Ok(effects.to_self(channel::ack_frame(client_id.as_deref(), sequence)))
            }
            Handled::React(react) => {
                let current = current_reactions(ctx, &react, &conn.user_id)
                    .map_err(|_| Reject::close(close::INTERNAL, "internal error"))?;
                self.core.react(&conn.user_id, &react, &current)
            }
        }
    }


    /// Dedup, sequence, store: the sequence and the effects (none for a repeated client id).
    fn post(&mut self, ctx: &Ctx<'_>, user_id: &str, post: Post) -> Result<(i64, Effects), ApiError> {
        let client_id = post.client_id.clone();
        if let Some(id) = client_id.as_deref() {
            let seen = self.queued_posts.seen(ctx, user_id, id, || {
                let row: Option<SeqRow> =
                    ctx.first_written("SELECT sequence FROM messages WHERE user_id = ? AND client_id = ?", vec![user_id.into(), id.into()])?;
                Ok::<_, ApiError>(row.map(|r| r.sequence))
            })?;
            if let Some(sequence) = seen {
                return Ok((sequence, Effects::none()));
            }
        }
        let message = self.core.prepare(user_id, post, ctx.now).map_err(|e| e.to_api())?;
        if let Some(id) = client_id.as_deref() {
            self.queued_posts.remember(user_id, id, message.sequence);
        }
        let effects = self.core.post_effects(&message, ctx.now, retention(ctx));
        Ok((message.sequence, effects))
    }
}

/// Shard: a frame from one of its sockets. Validated like the primary would (a scratch core,
/// so the shard keeps no typing state and no timer); posts and typing go to the primary.
fn shard_message(ctx: &Ctx<'_>, conn: &Connection<()>, text: &str, primary: &str) -> Result<Effects, Reject> {
    // Any sequence passes here: only the primary knows which messages exist.
    let mut scratch = Core::restore(edge_realtime_core::MAX_SAFE_INTEGER, 0, Default::default(), Schedule::default());
    match scratch.on_message(&conn.user_id, text, ctx.now)? {
        Handled::React(react) => {
            let react = Some(ReactBody { sequence: react.sequence, emoji: react.emoji, on: react.on });
            let body = ShardRequest { user_id: conn.user_id.clone(), is_typing: None, since: None, delivered: None, react };
            let call = to_primary(primary, ChannelOp::ShardReact.path(), &body).then("react".to_owned()).ordered(lane(&conn.user_id));
            Ok(Effects::none().call_with(call))
        }
        Handled::Post(post) => {
            let client_id = serde_json::to_string(&post.client_id).unwrap_or_else(|_| "null".into());
            // No client id: no `id` at all (the route refuses `null`, as it would from a client).
            let mut body = serde_json::json!({"userId": conn.user_id, "content": post.content});
            if let (Some(id), Some(fields)) = (&post.client_id, body.as_object_mut()) {
                fields.insert("id".to_owned(), id.as_str().into());
            }
            let body = body.to_string();
            let call = Call::new(BINDING, primary, ChannelOp::ShardPost.path())
                .body(body)
                .tries(shard::CALL_TRIES)
                .then(format!("ack:{client_id}"))
                .ordered(lane(&conn.user_id));
            Ok(Effects::none().call_with(call))
        }
        Handled::Done(outcome) if !outcome.to_self.is_empty() => Ok(scratch.effects(Outcome { timers_changed: false, typing_changed: false, ..outcome })),
        Handled::Done(_) => {
            let is_typing = scratch.typing().contains_key(&conn.user_id);
            let body = ShardRequest { user_id: conn.user_id.clone(), is_typing: Some(is_typing), since: None, delivered: None, react: None };
            Ok(Effects::none().call_with(to_primary(primary, ChannelOp::ShardTyping.path(), &body).ordered(lane(&conn.user_id))))
        }
    }
}

/// A user's forwarded frames reach the primary one at a time, in the order they were sent
/// (all of a user's sockets are on this shard): a socket's posts are sequenced in its order,
/// and a join waits for the leave of a socket closed just before it.
fn lane(user_id: &str) -> String {
    sharding::user_lane(user_id)
}

fn to_primary(primary: &str, op: &str, body: &ShardRequest) -> Call {
    Call::new(BINDING, primary, op)
        .body(serde_json::to_string(body).unwrap_or_default())
        .tries(shard::CALL_TRIES)
}

fn shard_body(req: &Incoming) -> Result<ShardRequest, ApiError> {
    serde_json::from_slice::<ShardRequest>(&req.body)
        .ok()
        .filter(|r| edge_realtime_core::names::is_valid_name(&r.user_id))
        .ok_or_else(|| ApiError::bad_request("invalid_body", "not a shard request"))
}

fn retention(ctx: &Ctx<'_>) -> channel::Retention {
    channel::Retention::from_vars(|k| ctx.var(k))
}

fn messages_after(ctx: &Ctx<'_>, after: i64, limit: Option<u32>) -> Result<Vec<ChannelMessage>, ApiError> {
    let rows: Vec<MessageRow> = match limit {
        Some(n) => ctx.rows(
            "SELECT sequence, user_id, content, timestamp, client_id FROM messages WHERE sequence > ? ORDER BY sequence LIMIT ?",
            vec![after.into(), i64::from(n).into()],
        )?,
        None => ctx.rows(
            "SELECT sequence, user_id, content, timestamp, client_id FROM messages WHERE sequence > ? ORDER BY sequence",
            vec![after.into()],
        )?,
    };
    Ok(rows.into_iter().map(ChannelMessage::from).collect())
}

/// The message's tallies and whether `user_id` already reacted with this emoji, read in the
/// same synchronous turn that stores the toggle.
fn current_reactions(ctx: &Ctx<'_>, react: &React, user_id: &str) -> Result<Current, ApiError> {
    let counts: Vec<RangeRow> = ctx.rows(reactions::SELECT_COUNTS, vec![react.sequence.into()])?;
    let mine: Option<SeqRow> =
        ctx.first(reactions::SELECT_MINE, vec![react.sequence.into(), react.emoji.as_str().into(), user_id.into()])?;
    Ok(Current { counts: counts.into_iter().map(|r| (r.emoji, r.count)).collect(), mine: mine.is_some() })
}

/// Tallies of the messages in `(after, through]`.
fn reaction_counts(ctx: &Ctx<'_>, after: i64, through: i64) -> Result<ReactionCounts, ApiError> {
    let rows: Vec<RangeRow> = ctx.rows(reactions::SELECT_RANGE, vec![after.into(), through.into()])?;
    Ok(reactions::counts_from_rows(rows.into_iter().map(|r| (r.sequence, r.emoji, r.count))))
}
