//! UserSession: the user's presence is the maximum over the open devices (online > away >
//! offline) and `presence_updated` goes to everyone exactly when that maximum moves; the active
//! games follow the joins and leaves (no duplicates, at most 100); logout-all revokes exactly the
//! tokens issued at or before it, and never moves back.

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

use edge_realtime_core::session::{self, DeviceConn, Outcome, Presence, SessionState, To};

use crate::common::clock;

fn rank(p: Presence) -> u8 {
    match p {
        Presence::Offline => 0,
        Presence::Away => 1,
        Presence::Online => 2,
    }
}

fn max_presence(devices: &[DeviceConn]) -> Presence {
    devices.iter().map(|d| d.presence).max_by_key(|p| rank(*p)).unwrap_or(Presence::Offline)
}

#[derive(Debug, Clone)]
enum Op {
    Connect(&'static str),
    Close(prop::sample::Index),
    Update(prop::sample::Index, &'static str),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => select(vec!["d1", "d2", "d3", "d4"]).prop_map(Op::Connect),
        1 => any::<prop::sample::Index>().prop_map(Op::Close),
        4 => (any::<prop::sample::Index>(), select(vec!["online", "away", "offline", "Online", "busy"])).prop_map(|(i, p)| Op::Update(i, p)),
    ]
}

/// The `presence_updated` frames of an outcome: (recipients, presence).
fn presence_frames(o: &Outcome) -> Vec<(To, Value)> {
    o.sends
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(&d.frame).ok().map(|v| (d.to, v)))
        .filter(|(_, v)| v["type"] == "presence_updated")
        .map(|(to, v)| (to, v["presence"].clone()))
        .collect()
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn session_presence_is_the_max_over_devices(ops in prop::collection::vec(op(), 0..80), times in clock(80, 10_000)) {
        let mut state = SessionState::new("alice", 0);
        let mut devices: Vec<DeviceConn> = Vec::new();
        for (op, now) in ops.iter().zip(times) {
            let before = max_presence(&devices);
            let out = match op {
                Op::Connect(id) => {
                    let device = DeviceConn::new(*id, now / 1000);
                    let out = session::on_connect(&state, &device, &devices, now);
                    devices.push(device);
                    out
                }
                Op::Close(i) => {
                    if devices.is_empty() {
                        continue;
                    }
                    let closing = devices.remove(i.index(devices.len()));
                    session::on_close(&state, &closing, &devices, now)
                }
                Op::Update(i, p) => {
                    if devices.is_empty() {
                        continue;
                    }
                    let at = i.index(devices.len());
                    let mut others = devices.clone();
                    let device = others.remove(at);
                    let out = session::on_message(&state, &device, &others, &json!({"type": "update_presence", "presence": p}).to_string(), now);
                    if Presence::parse(p).is_none() {
                        prop_assert!(out.state.is_none() && out.attachment.is_none(), "an invalid presence changes nothing");
                    }
                    if let (Some(new), Some(slot)) = (&out.attachment, devices.get_mut(at)) {
                        prop_assert_ne!(&*slot, new, "an attachment is only rewritten when it changed");
                        *slot = new.clone();
                    }
                    out
                }
            };
            let after = max_presence(&devices);
            prop_assert_eq!(Presence::aggregate(&devices), after, "aggregate = max over devices");
            let frames = presence_frames(&out);
            let broadcast: Vec<&Value> = frames.iter().filter(|(to, _)| *to != To::This).map(|(_, v)| v).collect();
            if before == after {
                prop_assert!(broadcast.is_empty(), "presence_updated broadcast without a change");
            } else {
                let want = json!(after.as_str());
                prop_assert_eq!(broadcast, vec![&want], "a change is broadcast once, with the new aggregate");
            }
            for (_, v) in &frames {
                prop_assert_eq!(v, &json!(after.as_str()));
            }
            if let Some(next) = out.state {
                prop_assert!(next.last_active >= state.last_active, "lastActive never runs backwards");
                state = next;
            }
            let view = state.view(&devices);
            prop_assert_eq!(&view["presence"], &json!(after.as_str()));
            let distinct: std::collections::BTreeSet<&str> = devices.iter().map(|d| d.device_id.as_str()).collect();
            prop_assert_eq!(&view["connectedDevices"], &json!(distinct.len()));
        }
    }

    #[test]
    fn session_games_follow_joins_and_leaves(
        start in 0usize..=100,
        ops in prop::collection::vec((any::<bool>(), prop_oneof![4 => "g[0-9]{1,3}", 1 => select(vec!["a b", "", "ä"]).prop_map(str::to_owned)]), 0..60),
    ) {
        let mut state = SessionState::new("alice", 0);
        state.active_games = (0..start).map(|i| format!("g{i}")).collect();
        let mut model = state.active_games.clone();
        let device = DeviceConn::new("d1", 1);
        for (join, game) in &ops {
            let kind = if *join { "join_game" } else { "leave_game" };
            let out = session::on_message(&state, &device, &[], &json!({"type": kind, "gameId": game}).to_string(), 5);
            let valid = edge_realtime_core::names::is_valid_name(game);
            let present = model.contains(game);
            let error = out.sends.iter().find_map(|d| serde_json::from_str::<Value>(&d.frame).ok().filter(|v| v["type"] == "error"));
            let want_error = if !valid { Some("invalid_game_id") } else if *join && !present && model.len() >= session::MAX_ACTIVE_GAMES { Some("too_many_games") } else { None };
            prop_assert_eq!(error.as_ref().and_then(|e| e["code"].as_str()), want_error);
            if want_error.is_some() {
                prop_assert!(out.state.is_none());
                continue;
            }
            let changed = if *join && !present { model.push(game.clone()); true } else if !*join && present { model.retain(|g| g != game); true } else { false };
            prop_assert_eq!(out.sends.len(), 1);
            prop_assert_eq!(out.sends.first().map(|d| d.to), Some(if changed { To::All } else { To::This }));
            if let Some(next) = out.state {
                state = next;
            }
            prop_assert_eq!(&state.active_games, &model);
        }
        prop_assert!(state.active_games.len() <= session::MAX_ACTIVE_GAMES);
    }

    #[test]
    fn session_logout_revokes_exactly_older_tokens(logouts in prop::collection::vec(0i64..10_000_000_000, 1..5), iat in 0i64..10_000_000) {
        let mut state = SessionState::new("alice", 0);
        let mut at = None::<i64>;
        for now in &logouts {
            let out = session::on_message(&state, &DeviceConn::new("d", session::first_accepted_iat(state.logged_out_at.unwrap_or(-1_000))), &[], r#"{"type":"logout_all"}"#, *now);
            let next = out.state.ok_or_else(|| TestCaseError::fail("logout_all stores the state"))?;
            let want = at.map_or(*now, |a| a.max(*now));
            prop_assert_eq!(next.logged_out_at, Some(want), "the revocation never moves back");
            prop_assert_eq!(out.logout_all.map(|l| l.at), Some(want));
            at = Some(want);
            state = next;
        }
        let at = at.unwrap_or_default();
        prop_assert_eq!(session::is_revoked(Some(at), iat), iat * 1000 <= at);
        let first = session::first_accepted_iat(at);
        prop_assert!(!session::is_revoked(Some(at), first) && session::is_revoked(Some(at), first - 1));
        let out = session::on_connect(&state, &DeviceConn::new("d2", iat), &[], at + 1);
        prop_assert_eq!(out.close.is_some(), iat * 1000 <= at, "a revoked token is closed 4001, a newer one is not");
    }
}
