//! Channel Durable Object (docs/protocol.md §6.5): the kit hosts it ([`crate::kit::object`]) and
//! `core::channel` decides. Messages live in SQLite; the core's small state (latest sequence,
//! pruned_through, typing flags, its timers) is rebuilt on every wake. A post is deduplicated,
//! sequenced and stored in one synchronous hook, so sequences stay gapless under any mix of
//! WebSocket and HTTP writers. A reaction is read (the message's tallies, this user's row),
//! decided and stored in one synchronous hook too, so concurrent toggles count exactly.

use std::collections::BTreeSet;

use serde::Deserialize;

use edge_realtime_core::channel::{self, Channel as Core, ChannelMessage, ChannelOp, Handled, HistoryQuery, Post};
use edge_realtime_core::effects::Effects;
use edge_realtime_core::error::{close, ApiError};
use edge_realtime_core::frame::Reject;
use edge_realtime_core::query::parse_seq;
use edge_realtime_core::reactions::{self, Current, React, ReactionCounts};
use edge_realtime_core::replay::{self, Replay};
use edge_realtime_core::schedule::Schedule;

use crate::kit::object::{self, Connection, Ctx, Incoming, RealtimeObject, Reply};
use crate::kit::Identity;

crate::kit::object::durable_object!(
    /// One channel (`idFromName(id)`): its messages, typing flags and participants.
    Channel => ChannelRoom
);

pub struct ChannelRoom {
    name: Option<String>,
    core: Core,
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
struct TimerRow {
    name: String,
    at: i64,
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

#[derive(Deserialize)]
struct RangeRow {
    sequence: i64,
    emoji: String,
    count: i64,
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
        let timers: Vec<TimerRow> = ctx
            .rows("SELECT name, at FROM _schedule WHERE name IN (?, ?)", vec![channel::TYPING_TIMER.into(), channel::PRUNE_TIMER.into()])
            .unwrap_or_default();
        let (latest_seq, pruned_through) = row.as_ref().map_or((0, 0), |r| (r.latest_seq, r.pruned_through));
        let core = Core::restore(
            latest_seq,
            pruned_through,
            typing.into_iter().map(|t| (t.user_id, t.expires_at)).collect(),
            Schedule::from_entries(timers.into_iter().map(|t| (t.name, t.at))),
        );
        Self { name: row.map(|r| r.name), core }
    }

    fn name(&self) -> Option<String> {
        self.name.clone()
    }

    /// Typing flags of users without an open socket (dropped by a crash or a deploy) go, and
    /// whoever is left hears the new list.
    fn on_wake(&mut self, ctx: &Ctx<'_>, live_users: &BTreeSet<String>) -> Effects {
        let outcome = self.core.reconcile(live_users, ctx.now);
        if !outcome.typing_changed {
            return Effects::none();
        }
        ctx.log_debug("reconcile Channel: ghost typing dropped");
        self.core.effects(outcome)
    }

    fn on_request(&mut self, ctx: &Ctx<'_>, op: ChannelOp, req: &Incoming) -> Result<Reply, ApiError> {
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
            ChannelOp::Socket => Err(ApiError::not_found("the channel socket is a WebSocket")),
        }
    }

    /// `participants` (to the others too if the set grew), then the replay of `?since=`, in
    /// this same hook so no live message can overtake it.
    fn on_connect(&mut self, ctx: &Ctx<'_>, who: &Identity, req: &Incoming) -> Result<((), Effects), ApiError> {
        let since = parse_seq("since", req.query("since"))?;
        let named = object::remember_name(&mut self.name, req, channel::REMEMBER_NAME)?;
        let mut effects = named.and(self.core.effects(self.core.on_connect(&who.user_id, &ctx.live_users())));
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
        Ok(((), effects))
    }

    fn on_message(&mut self, ctx: &Ctx<'_>, conn: &mut Connection<()>, text: &str) -> Result<Effects, Reject> {
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

    /// A user's last socket leaves and stops typing.
    fn on_gone(&mut self, ctx: &Ctx<'_>, conn: &Connection<()>, _remaining: usize) -> Effects {
        let outcome = self.core.on_close(&conn.user_id, &ctx.live_users(), ctx.now);
        self.core.effects(outcome)
    }

    /// Typing expiry and pruning (the core knows which of its timers are due).
    fn on_timer(&mut self, ctx: &Ctx<'_>, _name: &str) -> Effects {
        let max_messages = retention(ctx).max_messages;
        let outcome = self.core.on_alarm(ctx.now, max_messages);
        self.core.effects(outcome)
    }
}

impl ChannelRoom {
    /// Dedup, sequence, store: the sequence and the effects (none for a repeated client id).
    fn post(&mut self, ctx: &Ctx<'_>, user_id: &str, post: Post) -> Result<(i64, Effects), ApiError> {
        if let Some(id) = post.client_id.as_deref() {
            let seen: Option<SeqRow> = ctx.first(
                "SELECT sequence FROM messages WHERE user_id = ? AND client_id = ?",
                vec![user_id.into(), id.into()],
            )?;
            if let Some(seen) = seen {
                return Ok((seen.sequence, Effects::none()));
            }
        }
        let message = self.core.prepare(user_id, post, ctx.now).map_err(|e| e.to_api())?;
        let effects = self.core.post_effects(&message, ctx.now, retention(ctx));
        Ok((message.sequence, effects))
    }
}

fn retention(ctx: &Ctx<'_>) -> channel::Retention {
    channel::Retention::from_vars(|k| ctx.var(k))
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
