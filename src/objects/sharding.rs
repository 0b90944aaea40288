//! What the sharded classes (Channel, Waddle) share (docs/sharding.md): the primary's member
//! list and its fan-out — one `deliver` call per shard with members, carrying every frame an
//! event sent to "everyone" — and a shard's leave and wake-time reconcile.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use edge_realtime_core::effects::{Call, Effects, To};
use edge_realtime_core::error::ApiError;
use edge_realtime_core::shard::{self, Deliver, Item};

use crate::kit::object::{Ctx, Incoming};

/// Primary: the users with sockets on each shard.
pub type Members = BTreeMap<String, BTreeSet<u32>>;

#[derive(Deserialize)]
struct MemberRow {
    user_id: String,
    shard: i64,
}

#[derive(Deserialize)]
struct UserRow {
    user_id: String,
}

/// The primary's `shard_members` table.
pub fn load_members(ctx: &Ctx<'_>) -> Members {
    let rows: Vec<MemberRow> = ctx.rows("SELECT user_id, shard FROM shard_members", vec![]).unwrap_or_default();
    let mut members = Members::new();
    for m in rows {
        if let Ok(k) = u32::try_from(m.shard) {
            members.entry(m.user_id).or_default().insert(k);
        }
    }
    members
}

/// Record `user` on shard `index` (memory and the store effect).
pub fn join(members: &mut Members, user: &str, index: u32) -> Effects {
    members.entry(user.to_owned()).or_default().insert(index);
    Effects::none().store(shard::ADD_MEMBER, vec![user.into(), i64::from(index).into()])
}

/// Forget `user` on shard `index`: the store effect and whether the user has left every shard
/// (false if they were not a member there at all).
pub fn part(members: &mut Members, user: &str, index: u32) -> (Effects, bool) {
    let stored = Effects::none().store(shard::REMOVE_MEMBER, vec![user.into(), i64::from(index).into()]);
    let was = members.get_mut(user).is_some_and(|shards| shards.remove(&index));
    let gone = members.get(user).is_none_or(BTreeSet::is_empty);
    if gone {
        members.remove(user);
    }
    (stored, was && gone)
}

/// Primary: every frame `effects` sends to everyone (`To::All` / `To::Others`: a primary's
/// events have no socket of their own on the sharded path) also goes to each shard with
/// members but `except`, in ONE call per shard, tried [`shard::CALL_TRIES`] times. `seq_of`
/// marks the sequenced frames. No members: `effects` unchanged (the unsharded path).
pub fn fan_out(
    binding: &'static str,
    primary: Option<&str>,
    members: &Members,
    effects: Effects,
    except: Option<u32>,
    seq_of: fn(&str) -> Option<i64>,
) -> Effects {
    let Some(primary) = primary else { return effects };
    let shards: BTreeSet<u32> = members.values().flatten().copied().filter(|k| Some(*k) != except).collect();
    if shards.is_empty() {
        return effects;
    }
    let items: Vec<Item> = effects
        .sends
        .iter()
        .filter(|s| matches!(s.to, To::All | To::Others))
        .map(|s| Item { seq: seq_of(&s.frame), frame: s.frame.clone() })
        .collect();
    if items.is_empty() {
        return effects;
    }
    let body = Deliver { items }.to_json();
    shards.into_iter().fold(effects, |e, k| {
        e.call_with(Call::new(binding, shard::shard_name(primary, k), "deliver").body(body.clone()).tries(shard::CALL_TRIES))
    })
}

/// A call to the primary with a JSON body, tried [`shard::CALL_TRIES`] times.
pub fn to_primary(binding: &'static str, primary: &str, op: &str, body: &serde_json::Value) -> Call {
    Call::new(binding, primary, op).body(body.to_string()).tries(shard::CALL_TRIES)
}

/// Shard: a user's last socket here left: forget them and tell the primary (`shard-leave`), in
/// the user's lane ([`user_lane`]): a socket of theirs opened right after waits for this leave,
/// so the primary never sees the join before the leave (and drop a member who is here).
pub fn leave(binding: &'static str, primary: &str, index: u32, user_id: &str) -> Effects {
    Effects::none().store(shard::REMOVE_USER, vec![user_id.into()]).call_with(
        to_primary(binding, primary, &format!("shard-leave?shard={index}"), &serde_json::json!({"userId": user_id}))
            .ordered(user_lane(user_id)),
    )
}

/// The ordered-call lane of a user's calls from a shard to its primary (joins, frames, leaves):
/// they reach the primary one at a time, in the order the shard made them.
pub fn user_lane(user_id: &str) -> String {
    format!("u:{user_id}")
}

/// Shard: a socket of `user_id` is gone (`remaining`: their other sockets here). The wake's
/// ghosts leave first; the user leaves with their last socket.
pub fn on_gone(
    binding: &'static str,
    ghosts: &mut BTreeSet<String>,
    ctx: &Ctx<'_>,
    (primary, index): (&str, u32),
    user_id: &str,
    remaining: usize,
) -> Effects {
    let gone = flush_ghosts(binding, ghosts, ctx, primary, index, None);
    if remaining > 0 {
        return gone;
    }
    gone.and(leave(binding, primary, index, user_id))
}

/// Shard wake: the users it announced whose sockets are gone (a crash, a deploy). They leave
/// with the next event ([`flush_ghosts`]; a constructor cannot wait) unless they are back by then.
pub fn ghosts(ctx: &Ctx<'_>, live_users: &BTreeSet<String>) -> BTreeSet<String> {
    let announced: Vec<UserRow> = ctx.rows("SELECT user_id FROM shard_users", vec![]).unwrap_or_default();
    announced.into_iter().map(|u| u.user_id).filter(|u| !live_users.contains(u)).collect()
}

/// Shard: the wake's ghosts still without a socket leave now (`back`: a user connecting in
/// this very event, not a ghost any more).
pub fn flush_ghosts(
    binding: &'static str,
    ghosts: &mut BTreeSet<String>,
    ctx: &Ctx<'_>,
    primary: &str,
    index: u32,
    back: Option<&str>,
) -> Effects {
    if ghosts.is_empty() {
        return Effects::none();
    }
    let live = ctx.live_users();
    std::mem::take(ghosts)
        .into_iter()
        .filter(|u| !live.contains(u) && Some(u.as_str()) != back)
        .fold(Effects::none(), |e, u| e.and(leave(binding, primary, index, &u)))
}

/// `?shard=<k>` of an internal call.
pub fn index(req: &Incoming) -> Result<u32, ApiError> {
    req.query("shard")
        .and_then(|k| k.parse::<u32>().ok())
        .filter(|k| *k < shard::MAX_SHARDS)
        .ok_or_else(|| ApiError::bad_request("invalid_shard", "shard index required"))
}

/// The `userId` of an internal call's body (a valid name).
pub fn user_of(body: &serde_json::Value) -> Result<String, ApiError> {
    body.get("userId")
        .and_then(serde_json::Value::as_str)
        .filter(|u| edge_realtime_core::names::is_valid_name(u))
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request("invalid_body", "userId required"))
}

pub fn ok_body() -> String {
    r#"{"ok":true}"#.to_owned()
}
