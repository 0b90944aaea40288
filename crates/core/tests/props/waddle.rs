//! Waddle: a member is online from a connect, has the status it last chose while connected,
//! and is offline exactly when its last socket closes (or, after a lost close, at the next
//! wake's reconcile); typing is relayed, never stored.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

use edge_realtime_core::waddle::{Presence, Status, Waddle, WaddleConn};

use crate::common::clock;

#[derive(Debug, Clone)]
enum Op {
    Connect(&'static str),
    Close(&'static str),
    /// The socket vanished without a close event (the object was evicted meanwhile).
    LostClose(&'static str),
    Update(&'static str, &'static str),
    Typing(&'static str),
    Wake,
}

fn op() -> impl Strategy<Value = Op> {
    let user = select(vec!["alice", "bob", "carol"]);
    prop_oneof![
        3 => user.clone().prop_map(Op::Connect),
        3 => user.clone().prop_map(Op::Close),
        1 => user.clone().prop_map(Op::LostClose),
        3 => (user.clone(), select(vec!["online", "away", "busy", "offline", "idle"])).prop_map(|(u, s)| Op::Update(u, s)),
        1 => user.prop_map(Op::Typing),
        1 => Just(Op::Wake),
    ]
}

fn conn(u: &str) -> WaddleConn {
    WaddleConn { user_id: u.to_owned(), user_name: None }
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn waddle_offline_exactly_when_the_last_socket_closes(ops in prop::collection::vec(op(), 0..100), times in clock(100, 5_000)) {
        let mut w = Waddle::default();
        let mut sockets: BTreeMap<&str, usize> = BTreeMap::new();
        let mut model: BTreeMap<String, Presence> = BTreeMap::new();
        for (op, now) in ops.iter().zip(times) {
            match op {
                Op::Connect(u) => {
                    let out = w.on_connect(&conn(u), now);
                    *sockets.entry(u).or_default() += 1;
                    model.insert((*u).to_owned(), Presence { status: Status::Online, last_seen: now });
                    prop_assert_eq!(out.store, Some(((*u).to_owned(), Presence { status: Status::Online, last_seen: now })));
                    let state: Value = serde_json::from_str(out.to_self.first().map_or("", String::as_str)).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let listed: Vec<&str> = state["users"].as_array().into_iter().flatten().filter_map(|e| e[0].as_str()).collect();
                    prop_assert_eq!(listed, model.keys().map(String::as_str).collect::<Vec<_>>(), "presence_state: every member, sorted");
                }
                Op::Close(u) | Op::LostClose(u) => {
                    let Some(n) = sockets.get_mut(u).filter(|n| **n > 0) else { continue };
                    *n -= 1;
                    let remaining = *n;
                    if matches!(op, Op::LostClose(_)) {
                        continue;
                    }
                    let out = w.on_close(&conn(u), remaining, now);
                    if remaining == 0 {
                        model.insert((*u).to_owned(), Presence { status: Status::Offline, last_seen: now });
                        let sent: Vec<Value> = out.to_others.iter().filter_map(|f| serde_json::from_str(f).ok()).collect();
                        prop_assert_eq!(sent, vec![json!({"type": "presence_update", "userId": u, "status": "offline"})]);
                    } else {
                        prop_assert_eq!(out, Default::default(), "not the last socket: nothing happens");
                    }
                }
                Op::Update(u, s) => {
                    if sockets.get(u).copied().unwrap_or(0) == 0 {
                        continue;
                    }
                    let before = w.clone();
                    let got = w.on_message(&conn(u), &json!({"type": "presence_update", "status": s}).to_string(), now);
                    match Status::parse(s) {
                        Some(status) => {
                            prop_assert!(got.is_ok());
                            model.insert((*u).to_owned(), Presence { status, last_seen: now });
                        }
                        None => {
                            prop_assert!(got.is_err());
                            prop_assert_eq!(&w, &before);
                        }
                    }
                }
                Op::Typing(u) => {
                    let before = w.clone();
                    let out = w.on_message(&conn(u), r#"{"type":"typing","channelId":"general","isTyping":true}"#, now)
                        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    prop_assert!(out.store.is_none());
                    prop_assert_eq!(&w, &before, "typing is relayed, never stored");
                    prop_assert_eq!(out.to_others.len(), 1);
                }
                Op::Wake => {
                    let live: BTreeSet<String> = sockets.iter().filter(|(_, n)| **n > 0).map(|(u, _)| (*u).to_owned()).collect();
                    let outs = w.reconcile(&live, now);
                    let ghosts: Vec<String> = model.iter().filter(|(u, p)| p.status != Status::Offline && !live.contains(*u)).map(|(u, _)| u.clone()).collect();
                    prop_assert_eq!(outs.len(), ghosts.len());
                    for g in ghosts {
                        model.insert(g, Presence { status: Status::Offline, last_seen: now });
                    }
                }
            }
            for (u, p) in &model {
                prop_assert_eq!(w.presence_of(u), Some(*p), "{}", u);
            }
            // With no lost close pending, a member without sockets is offline.
            if matches!(op, Op::Wake) {
                for (u, p) in &model {
                    if sockets.get(u.as_str()).copied().unwrap_or(0) == 0 {
                        prop_assert_eq!(p.status, Status::Offline);
                    }
                }
            }
        }
    }
}
