//! Channel: sequences are gapless and strictly increasing and a client id is applied once
//! (the two-step post of the module docs); typing flags expire exactly `TYPING_TTL_MS` after
//! their last refresh with the alarm always at the earliest deadline; pruning keeps exactly the
//! newest N; replay is exactly the missed range; an observer applying every participants
//! frame (full lists and, above `PARTICIPANTS_LIST_MAX`, deltas) always knows the exact set.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

use edge_realtime_core::channel::{self, Channel, ChannelMessage, Handled, Outcome, Retention, PARTICIPANTS_LIST_MAX, TYPING_TTL_MS};
use edge_realtime_core::replay::Replay;

use crate::common::clock;

const USERS: [&str; 3] = ["alice", "bob", "carol"];

#[derive(Debug, Clone)]
enum Op {
    WsPost(&'static str, Option<&'static str>),
    HttpPost(&'static str, Option<&'static str>),
    Typing(&'static str, bool),
    /// A socket of the user closed; `true`: the user still has another one open.
    Close(&'static str, bool),
    /// A wake: these users have sockets.
    Reconcile(Vec<bool>),
    Ping,
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    let user = select(USERS.to_vec());
    let id = proptest::option::of(select(vec!["c1", "c2", "c3"]));
    prop_oneof![
        4 => (user.clone(), id.clone()).prop_map(|(u, i)| Op::WsPost(u, i)),
        2 => (user.clone(), id).prop_map(|(u, i)| Op::HttpPost(u, i)),
        4 => (user.clone(), prop_oneof![3 => Just(true), 1 => Just(false)]).prop_map(|(u, b)| Op::Typing(u, b)),
        1 => (user, any::<bool>()).prop_map(|(u, b)| Op::Close(u, b)),
        1 => prop::collection::vec(any::<bool>(), 3).prop_map(Op::Reconcile),
        1 => Just(Op::Ping),
        2 => Just(Op::Tick),
    ]
}

struct Sim {
    ch: Channel,
    retention: Retention,
    rows: BTreeMap<i64, ChannelMessage>,
    /// The model of the typing table: user → expiry.
    typing: BTreeMap<String, i64>,
    last_seq: i64,
    prunes: Vec<i64>,
}

fn users_of(frame: &str) -> Option<Vec<String>> {
    let v: Value = serde_json::from_str(frame).ok()?;
    (v["type"] == "typing").then(|| v["users"].as_array().map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect()))?
}

impl Sim {
    fn new(retention: Retention) -> Self {
        Self { ch: Channel::default(), retention, rows: BTreeMap::new(), typing: BTreeMap::new(), last_seq: 0, prunes: Vec::new() }
    }

    /// Every typing frame an outcome sends lists exactly the users typing now.
    fn check_outcome(&self, o: &Outcome) -> Result<(), TestCaseError> {
        for f in o.to_all.iter().chain(&o.to_others) {
            if let Some(users) = users_of(f) {
                prop_assert_eq!(users, self.ch.typing().keys().cloned().collect::<Vec<_>>());
            }
        }
        Ok(())
    }

    fn check_timers(&self) -> Result<(), TestCaseError> {
        let earliest_typing = self.ch.typing().values().copied().min();
        prop_assert_eq!(self.ch.timers().get(channel::TYPING_TIMER), earliest_typing, "typing timer at the earliest expiry");
        let want = [earliest_typing, self.ch.timers().get(channel::PRUNE_TIMER)].into_iter().flatten().min();
        prop_assert_eq!(self.ch.poll_timeout(), want, "alarm at the earliest timer");
        Ok(())
    }

    /// The runtime fires the alarm at each deadline up to `now`.
    fn advance(&mut self, now: i64) -> Result<(), TestCaseError> {
        while let Some(at) = self.ch.poll_timeout().filter(|at| *at <= now) {
            let prune_due = self.ch.timers().get(channel::PRUNE_TIMER).is_some_and(|p| p <= at);
            let o = self.ch.on_alarm(at, self.retention.max_messages);
            prop_assert!(self.ch.poll_timeout().is_none_or(|next| next > at), "the alarm fired but did not move on");
            self.typing.retain(|_, exp| *exp > at);
            self.check_outcome(&o)?;
            if let Some(cutoff) = o.prune_through {
                prop_assert!(prune_due);
                self.rows.retain(|s, _| *s > cutoff);
                if let Some(prev) = self.prunes.last() {
                    prop_assert!(at - prev >= self.retention.prune_interval_ms);
                }
                self.prunes.push(at);
                let max = self.retention.max_messages;
                let newest: Vec<i64> = ((self.ch.latest_seq() - max + 1)..=self.ch.latest_seq()).collect();
                prop_assert_eq!(self.rows.keys().copied().collect::<Vec<_>>(), newest, "prune keeps exactly the newest N");
                prop_assert_eq!(self.ch.pruned_through(), cutoff);
            }
        }
        Ok(())
    }

    fn post(&mut self, user: &str, post: channel::Post, now: i64) -> Result<(), TestCaseError> {
        // The adapter's dedup: a stored (user, client id) is answered with its sequence.
        if let Some(id) = &post.client_id {
            if let Some(m) = self.rows.values().find(|m| m.user_id == user && m.client_id.as_ref() == Some(id)) {
                let ack: Value = serde_json::from_str(&channel::ack_frame(Some(id), m.sequence)).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&ack["sequence"], &json!(m.sequence));
                return Ok(());
            }
        }
        let before = self.ch.clone();
        let m = self.ch.prepare(user, post, now).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&self.ch, &before, "prepare changes nothing");
        prop_assert_eq!(m.sequence, self.last_seq + 1, "gapless, strictly increasing");
        self.last_seq = m.sequence;
        let effects = self.ch.post_effects(&m, now, self.retention);
        prop_assert_eq!(self.ch.latest_seq(), m.sequence);
        prop_assert!(effects.frames_to(&edge_realtime_core::effects::To::All).contains(&m.frame().as_str()));
        if self.ch.latest_seq() - self.ch.pruned_through() > self.retention.max_messages {
            prop_assert!(self.ch.timers().get(channel::PRUNE_TIMER).is_some(), "over the limit with no prune pending");
        }
        self.rows.insert(m.sequence, m);
        Ok(())
    }

    fn apply(&mut self, op: &Op, now: i64) -> Result<(), TestCaseError> {
        self.advance(now)?;
        match op {
            Op::WsPost(u, id) => {
                let mut frame = json!({"type": "message", "content": " hi "});
                if let Some(id) = id {
                    frame["id"] = json!(id);
                }
                match self.ch.on_message(u, &frame.to_string(), now) {
                    Ok(Handled::Post(p)) => {
                        prop_assert_eq!(p.content.as_str(), "hi");
                        self.post(u, p, now)?;
                    }
                    other => return Err(TestCaseError::fail(format!("a valid post was {other:?}"))),
                }
            }
            Op::HttpPost(u, id) => {
                let mut body = json!({"content": "hello"});
                if let Some(id) = id {
                    body["id"] = json!(id);
                }
                let p = channel::parse_post_body(&body.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                self.post(u, p, now)?;
            }
            Op::Typing(u, on) => {
                let o = match self.ch.on_message(u, &json!({"type": "typing", "isTyping": on}).to_string(), now) {
                    Ok(Handled::Done(o)) => o,
                    other => return Err(TestCaseError::fail(format!("typing was {other:?}"))),
                };
                if *on {
                    self.typing.insert((*u).to_owned(), now + TYPING_TTL_MS);
                    prop_assert_eq!(o.to_all.len(), 1, "a refresh always broadcasts");
                } else {
                    self.typing.remove(*u);
                }
                self.check_outcome(&o)?;
            }
            Op::Close(u, still_open) => {
                let mut remaining: BTreeSet<String> = USERS.iter().filter(|x| *x != u).map(|x| (*x).to_owned()).collect();
                if *still_open {
                    remaining.insert((*u).to_owned());
                } else {
                    self.typing.remove(*u);
                }
                let o = self.ch.on_close(u, &remaining, now);
                self.check_outcome(&o)?;
            }
            Op::Reconcile(live) => {
                let live: BTreeSet<String> = USERS.iter().zip(live).filter(|(_, l)| **l).map(|(u, _)| (*u).to_owned()).collect();
                self.typing.retain(|u, _| live.contains(u));
                let o = self.ch.reconcile(&live, now);
                self.check_outcome(&o)?;
            }
            Op::Ping => {
                let o = self.ch.on_message("alice", r#"{"type":"ping"}"#, now);
                prop_assert!(matches!(o, Ok(Handled::Done(_))));
            }
            Op::Tick => {}
        }
        // Flags at or past their expiry are gone, live ones have exactly their expiry.
        let live: BTreeMap<String, i64> = self.typing.iter().filter(|(_, e)| **e > now).map(|(u, e)| (u.clone(), *e)).collect();
        prop_assert_eq!(self.ch.typing(), &live, "typing at {}", now);
        self.check_timers()
    }

    fn check_replay(&self, since: i64) -> Result<(), TestCaseError> {
        let latest = self.ch.latest_seq();
        match self.ch.replay_plan(Some(since)) {
            Replay::Nothing => prop_assert_eq!(since, latest),
            Replay::After(s) => {
                let sent: Vec<i64> = self.rows.range(s + 1..).map(|(k, _)| *k).collect();
                prop_assert_eq!(sent, ((s + 1)..=latest).collect::<Vec<_>>(), "replay is exactly the missed range");
            }
            Replay::Resync { latest_seq } => {
                prop_assert_eq!(latest_seq, latest);
                let complete = (since + 1..=latest).all(|s| self.rows.contains_key(&s));
                prop_assert!(since > latest || !complete, "resync although nothing after {} is missing", since);
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn channel_sequences_are_gapless_and_ids_apply_once(ops in prop::collection::vec(op(), 0..120), times in clock(120, 1_000)) {
        let mut sim = Sim::new(Retention { max_messages: 1_000_000, ..Retention::default() });
        for (op, now) in ops.iter().zip(times) {
            sim.apply(op, now)?;
        }
        prop_assert_eq!(sim.rows.keys().copied().collect::<Vec<_>>(), (1..=sim.ch.latest_seq()).collect::<Vec<_>>());
        let ids: Vec<(&str, &str)> = sim.rows.values().filter_map(|m| m.client_id.as_deref().map(|c| (m.user_id.as_str(), c))).collect();
        prop_assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len(), "a client id applied twice");
    }

    /// Typing-heavy sessions with times around the TTL: the flags are exactly the model's.
    #[test]
    fn channel_typing_flags_expire_after_their_ttl(ops in prop::collection::vec(op(), 0..120), times in clock(120, 1_500)) {
        let mut sim = Sim::new(Retention::default());
        for (op, now) in ops.iter().zip(times) {
            sim.apply(op, now)?;
        }
    }

    #[test]
    fn channel_prune_keeps_exactly_the_newest_n_and_replay_is_the_missed_range(
        max in 1i64..12,
        interval in 1i64..3_000,
        ops in prop::collection::vec(op(), 0..150),
        times in clock(150, 500),
        probes in prop::collection::vec(0i64..200, 4),
    ) {
        let mut sim = Sim::new(Retention { max_messages: max, prune_interval_ms: interval });
        for (op, now) in ops.iter().zip(times) {
            sim.apply(op, now)?;
            let (p, l) = (sim.ch.pruned_through(), sim.ch.latest_seq());
            for since in [0, p.saturating_sub(1), p, l.saturating_sub(1), l, l + 1].into_iter().chain(probes.iter().copied()) {
                sim.check_replay(since)?;
            }
        }
    }
}

/// Sockets joining and leaving a room that hovers around `PARTICIPANTS_LIST_MAX` users: each op
/// is (user index, connect or close). The room starts with `start` users, one socket each.
fn crowd_ops() -> impl Strategy<Value = (usize, Vec<(usize, bool)>)> {
    (90usize..=110, prop::collection::vec((0usize..130, any::<bool>()), 0..200))
}

/// An observer (a socket that stays open, not itself a participant here) applies what the
/// others hear; it must hold exactly the participants after every event.
fn observe(seen: &mut BTreeSet<String>, frame: &str, truth: &BTreeSet<String>) -> Result<(), TestCaseError> {
    let v: Value = serde_json::from_str(frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
    match v["type"].as_str() {
        Some("participants") => {
            prop_assert!(truth.len() <= PARTICIPANTS_LIST_MAX, "a full list for {} participants", truth.len());
            *seen = v["users"].as_array().map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect()).unwrap_or_default();
        }
        Some(t @ ("participant_joined" | "participant_left")) => {
            prop_assert!(truth.len() > PARTICIPANTS_LIST_MAX, "a delta for {} participants", truth.len());
            prop_assert_eq!(v["count"].as_u64(), u64::try_from(truth.len()).ok());
            let user = v["userId"].as_str().unwrap_or_default().to_owned();
            if t == "participant_joined" {
                prop_assert!(seen.insert(user), "joined twice");
            } else {
                prop_assert!(seen.remove(&user), "left without having joined");
            }
        }
        _ => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::config())]

    /// Full list at most `PARTICIPANTS_LIST_MAX` participants, a delta with the right count
    /// above; nothing for a socket that does not change the set; the observer never drifts.
    #[test]
    fn channel_participants_lists_and_deltas_keep_an_observer_exact((start, ops) in crowd_ops()) {
        let mut ch = Channel::default();
        let name = |i: usize| format!("u{i:03}");
        // sockets per user
        let mut sockets: BTreeMap<String, usize> = (0..start).map(|i| (name(i), 1)).collect();
        let mut seen: BTreeSet<String> = sockets.keys().cloned().collect();
        for (i, connect) in ops {
            let user = name(i);
            let others: BTreeSet<String> = sockets.keys().cloned().collect();
            let before = others.len();
            if connect {
                let o = ch.on_connect(&user, &others);
                *sockets.entry(user.clone()).or_default() += 1;
                let truth: BTreeSet<String> = sockets.keys().cloned().collect();
                let list = serde_json::json!({"type": "participants", "users": truth}).to_string();
                prop_assert_eq!(&o.to_self, &vec![list], "the new socket gets the full list");
                prop_assert_eq!(o.to_others.len(), usize::from(truth.len() > before));
                for f in &o.to_others {
                    observe(&mut seen, f, &truth)?;
                }
            } else {
                let Some(n) = sockets.get_mut(&user) else { continue };
                *n -= 1;
                if *n == 0 {
                    sockets.remove(&user);
                }
                let remaining: BTreeSet<String> = sockets.keys().cloned().collect();
                let o = ch.on_close(&user, &remaining, 0);
                let changes: Vec<&String> = o.to_others.iter().filter(|f| f.contains("\"type\":\"particip")).collect();
                prop_assert_eq!(changes.len(), usize::from(remaining.len() < before));
                for f in &o.to_others {
                    observe(&mut seen, f, &remaining)?;
                }
            }
            prop_assert_eq!(&seen, &sockets.keys().cloned().collect::<BTreeSet<_>>());
        }
    }
}
