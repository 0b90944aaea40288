//! ChatRoom: the per-connection rate limit never admits more than `limit` per window, its
//! `retryAfterMs` is exact and the third violation in a row closes; sequences are gapless and a
//! client id is applied once; pruning keeps exactly the newest N; replay is the missed range.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

use edge_realtime_core::chat::{self, ChatConfig, ChatConn, ChatLog, ChatMessage, Inbound, Post};
use edge_realtime_core::replay::Replay;
use edge_realtime_core::schedule::Schedule;

use crate::common::clock;

fn conn(user: &str) -> Result<ChatConn, TestCaseError> {
    ChatConn::new(Some(user), None).map_err(|e| TestCaseError::fail(e.to_string()))
}

fn msg(content: &str) -> String {
    json!({"type": "message", "content": content}).to_string()
}

#[derive(Debug, Clone)]
enum Frame {
    Valid,
    Invalid,
    Ping,
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![8 => Just(Frame::Valid), 1 => Just(Frame::Invalid), 1 => Just(Frame::Ping)]
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn chat_rate_limit_never_admits_more_than_the_limit_per_window(
        limit in 1u32..5,
        window in 1i64..5_000,
        frames in prop::collection::vec(frame(), 1..80),
        times in clock(80, 2_000),
    ) {
        let cfg = ChatConfig { rate_limit_messages: limit, rate_limit_window_ms: window, ..ChatConfig::default() };
        let mut c = conn("alice")?;
        // The model: a fixed window starting at the first message after the previous one ended.
        let (mut start, mut count, mut violations) = (0i64, 0u32, 0u32);
        let mut posts: Vec<i64> = Vec::new();
        for (f, now) in frames.iter().zip(times) {
            let text = match f {
                Frame::Valid => msg("hi"),
                Frame::Invalid => msg("   "),
                Frame::Ping => r#"{"type":"ping"}"#.to_owned(),
            };
            let probe = c.clone();
            let got = chat::on_message(&mut c, &cfg, &text, now);
            match f {
                Frame::Invalid | Frame::Ping => {
                    prop_assert!(matches!(got, Inbound::Reply(_)));
                    prop_assert_eq!(&c, &probe, "invalid frames and pings neither count nor forgive");
                    continue;
                }
                Frame::Valid => {}
            }
            if count == 0 || now - start >= window {
                start = now;
                count = 0;
            }
            if count < limit {
                count += 1;
                violations = 0;
                prop_assert!(matches!(got, Inbound::Post(_)), "model admits at {}, got {:?}", now, got);
                posts.push(now);
                continue;
            }
            violations += 1;
            if violations >= chat::MAX_RATE_VIOLATIONS {
                prop_assert!(matches!(got, Inbound::Close { code: 1008, .. }), "third violation: {:?}", got);
                break;
            }
            let Inbound::Reply(r) = &got else { return Err(TestCaseError::fail(format!("expected rate_limited, got {got:?}"))) };
            let v: Value = serde_json::from_str(r).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&v["code"], &json!("rate_limited"));
            let retry = v["retryAfterMs"].as_i64().unwrap_or(-1);
            prop_assert_eq!(retry, start + window - now);
            // Exact: waiting it out is enough, one ms less is not.
            let mut later = c.clone();
            prop_assert!(matches!(chat::on_message(&mut later, &cfg, &msg("x"), now + retry), Inbound::Post(_)));
            let mut early = c.clone();
            prop_assert!(!matches!(chat::on_message(&mut early, &cfg, &msg("x"), now + retry - 1), Inbound::Post(_)));
        }
        // Independent of the model: split the accepted messages into windows the way the room
        // does (each starts at the first message at or after the previous window's end).
        let mut i = 0;
        while let Some(&s) = posts.get(i) {
            let n = posts.iter().skip(i).take_while(|t| **t < s + window).count();
            prop_assert!(n <= limit as usize, "{} messages in the window from {}", n, s);
            i += n;
        }
    }
}

#[derive(Debug, Clone)]
enum RoomOp {
    Connect(&'static str),
    Close(&'static str),
    Post(&'static str, Option<&'static str>),
    Tick,
}

fn room_op() -> impl Strategy<Value = RoomOp> {
    let user = select(vec!["alice", "bob", "carol"]);
    let id = proptest::option::of(select(vec!["c1", "c2", "c3", "c4"]));
    prop_oneof![
        2 => user.clone().prop_map(RoomOp::Connect),
        2 => user.clone().prop_map(RoomOp::Close),
        6 => (user, id).prop_map(|(u, i)| RoomOp::Post(u, i)),
        1 => Just(RoomOp::Tick),
    ]
}

/// A room as the adapter runs it: the log, the message table, the socket counts, the timers.
struct Room {
    cfg: ChatConfig,
    log: ChatLog,
    rows: BTreeMap<i64, ChatMessage>,
    sockets: BTreeMap<&'static str, usize>,
    sched: Schedule,
    next_id: u64,
    prunes: Vec<i64>,
    /// The last seq stored.
    last: i64,
}

impl Room {
    fn new(cfg: ChatConfig) -> Self {
        Self { cfg, log: ChatLog::default(), rows: BTreeMap::new(), sockets: BTreeMap::new(), sched: Schedule::default(), next_id: 0, prunes: Vec::new(), last: 0 }
    }

    fn server_id(&mut self) -> String {
        self.next_id += 1;
        format!("srv-{}", self.next_id)
    }

    fn store(&mut self, m: ChatMessage, now: i64) -> Result<(), TestCaseError> {
        prop_assert_eq!(m.seq, self.last + 1, "gapless");
        self.last = m.seq;
        prop_assert_eq!(m.seq, self.log.latest_seq);
        prop_assert_eq!(m.timestamp, now);
        self.rows.insert(m.seq, m);
        self.log.schedule_prune(&self.cfg, &mut self.sched, now);
        if self.log.latest_seq - self.log.pruned_through > self.cfg.max_messages {
            prop_assert!(self.sched.get(chat::PRUNE_TIMER).is_some(), "over the limit with no prune pending");
        }
        Ok(())
    }

    /// The alarm fires at every deadline up to `now`.
    fn advance(&mut self, now: i64) -> Result<(), TestCaseError> {
        while let Some(at) = self.sched.next_deadline().filter(|at| *at <= now) {
            let due = self.sched.take_due(at);
            prop_assert_eq!(due, vec![chat::PRUNE_TIMER.to_owned()]);
            if let Some(cutoff) = self.log.prune(&self.cfg) {
                self.rows.retain(|seq, _| *seq > cutoff);
                if let Some(prev) = self.prunes.last() {
                    prop_assert!(at - prev >= self.cfg.prune_interval_ms, "prunes {} and {} closer than the interval", prev, at);
                }
                self.prunes.push(at);
                let newest: Vec<i64> = ((self.log.latest_seq - self.cfg.max_messages + 1)..=self.log.latest_seq).collect();
                prop_assert_eq!(self.rows.keys().copied().collect::<Vec<_>>(), newest, "prune keeps exactly the newest N");
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &RoomOp, now: i64) -> Result<(), TestCaseError> {
        self.advance(now)?;
        match op {
            RoomOp::Connect(u) => {
                let others = self.sockets.get(u).copied().unwrap_or(0);
                let id = self.server_id();
                let joined = self.log.join(&conn(u)?, others, id, now);
                prop_assert_eq!(joined.is_some(), others == 0, "join message only for the first socket");
                *self.sockets.entry(u).or_default() += 1;
                if let Some(m) = joined {
                    self.store(m, now)?;
                }
            }
            RoomOp::Close(u) => {
                let Some(n) = self.sockets.get_mut(u).filter(|n| **n > 0) else { return Ok(()) };
                *n -= 1;
                let others = *n;
                let id = self.server_id();
                let left = self.log.leave(&conn(u)?, others, id, now);
                prop_assert_eq!(left.is_some(), others == 0, "leave message only for the last socket");
                if let Some(m) = left {
                    self.store(m, now)?;
                }
            }
            RoomOp::Post(u, client_id) => {
                // The adapter's dedup: a (user, client id) already stored gets its original frame.
                let original = client_id.and_then(|id| {
                    self.rows.values().find(|m| m.user_id == *u && m.client_id.as_deref() == Some(id)).cloned()
                });
                if let Some(m) = original {
                    prop_assert_eq!(chat::duplicate_frame(&m), chat::message_frame(&m));
                    return Ok(());
                }
                let before = self.log.latest_seq;
                let id = self.server_id();
                let m = self.log.post(&conn(u)?, Post { content: "hi".into(), client_id: client_id.map(str::to_owned) }, id, now);
                prop_assert_eq!(m.seq, before + 1);
                prop_assert_eq!(m.id.as_str(), client_id.map_or(m.id.as_str(), |c| c));
                self.store(m, now)?;
            }
            RoomOp::Tick => {}
        }
        Ok(())
    }

    /// `?since=` against the stored rows: After(s) exactly when every seq in (s, latest] is
    /// stored; Resync when any is gone or `since` is ahead; Nothing when up to date.
    fn check_replay(&self, since: i64) -> Result<(), TestCaseError> {
        let latest = self.log.latest_seq;
        match self.log.replay(Some(since)) {
            Replay::Nothing => prop_assert_eq!(since, latest),
            Replay::After(s) => {
                prop_assert_eq!(s, since);
                let sent: Vec<i64> = self.rows.range(s + 1..).map(|(k, _)| *k).collect();
                prop_assert_eq!(sent, ((s + 1)..=latest).collect::<Vec<_>>(), "replay is exactly the missed range");
            }
            Replay::Resync { latest_seq } => {
                prop_assert_eq!(latest_seq, latest);
                let complete = (since + 1..=latest).all(|s| self.rows.contains_key(&s));
                prop_assert!(since > latest || !complete, "resync although rows {}..={} are all stored", since + 1, latest);
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(crate::config())]

    /// Joins, leaves and posts (with repeated client ids) get gapless seqs, an id is stored once.
    #[test]
    fn chat_sequences_are_gapless_and_ids_apply_once(
        ops in prop::collection::vec(room_op(), 0..120),
        times in clock(120, 100),
    ) {
        let mut room = Room::new(ChatConfig { max_messages: 1_000_000, ..ChatConfig::default() });
        for (op, now) in ops.iter().zip(times) {
            room.apply(op, now)?;
        }
        let seqs: Vec<i64> = room.rows.keys().copied().collect();
        prop_assert_eq!(seqs, (1..=room.log.latest_seq).collect::<Vec<_>>());
        let ids: Vec<(&str, &str)> = room.rows.values().filter_map(|m| m.client_id.as_deref().map(|c| (m.user_id.as_str(), c))).collect();
        let unique: BTreeSet<_> = ids.iter().collect();
        prop_assert_eq!(unique.len(), ids.len(), "a client id applied twice");
    }

    #[test]
    fn chat_prune_keeps_exactly_the_newest_n_and_replay_is_the_missed_range(
        max in 1i64..12,
        interval in 1i64..3_000,
        ops in prop::collection::vec(room_op(), 0..150),
        times in clock(150, 500),
        probes in prop::collection::vec(0i64..200, 4),
    ) {
        let mut room = Room::new(ChatConfig { max_messages: max, prune_interval_ms: interval, ..ChatConfig::default() });
        for (op, now) in ops.iter().zip(times) {
            room.apply(op, now)?;
            let (p, l) = (room.log.pruned_through, room.log.latest_seq);
            for since in [0, p.saturating_sub(1), p, l.saturating_sub(1), l, l + 1] {
                room.check_replay(since)?;
            }
            for since in &probes {
                room.check_replay(*since)?;
            }
        }
    }
}
