//! GameServer: over random sessions (with wakes from storage in between) the move sequence is
//! gapless, a client id is applied once and its repeat acked with the original seq, there are
//! at most four players and a turn exactly while playing; replay is exactly the missed moves.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

use edge_realtime_core::effects::To;
use edge_realtime_core::game::{self, Game, MoveRecord};
use edge_realtime_core::replay;

use crate::common::clock;

#[derive(Debug, Clone)]
enum Op {
    Join(&'static str),
    Leave(&'static str),
    Move(&'static str, Option<&'static str>),
    /// Hibernation: rebuild the game from what was stored.
    Wake,
}

fn op() -> impl Strategy<Value = Op> {
    let user = select(vec!["a", "b", "c", "d", "e", "f"]);
    prop_oneof![
        2 => user.clone().prop_map(Op::Join),
        1 => user.clone().prop_map(Op::Leave),
        6 => (user, proptest::option::of(select(vec!["m1", "m2", "m3", "m4", "m5"]))).prop_map(|(u, i)| Op::Move(u, i)),
        1 => Just(Op::Wake),
    ]
}

fn parse(f: &str) -> Value {
    serde_json::from_str(f).unwrap_or(Value::Null)
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn game_moves_are_gapless_and_ids_apply_once(ops in prop::collection::vec(op(), 0..150), times in clock(150, 1_000)) {
        let mut g = Game::default();
        let _ = g.named("g1");
        // What storage holds: the moves (with their client ids) — what a wake restores from.
        let mut moves: BTreeMap<i64, (MoveRecord, Option<String>)> = BTreeMap::new();
        for (step, (op, now)) in ops.iter().zip(times).enumerate() {
            let before = g.clone();
            let result = match op {
                Op::Wake => {
                    let seen = moves.values().filter_map(|(m, id)| id.clone().map(|id| (m.user_id.clone(), id, m.seq)));
                    g = Game::restore(before.game_id.clone(), before.players.clone(), before.turn.clone(), before.seq, seen);
                    prop_assert_eq!(&g, &before, "a wake restores the same game");
                    continue;
                }
                Op::Join(u) => g.on_message(u, u, r#"{"type":"join"}"#, now),
                Op::Leave(u) => g.on_message(u, u, r#"{"type":"leave"}"#, now),
                Op::Move(u, id) => {
                    let mut f = json!({"type": "move", "move": {"step": step}});
                    if let Some(id) = id {
                        f["id"] = json!(id);
                    }
                    g.on_message(u, u, &f.to_string(), now)
                }
            };
            prop_assert!(g.players.len() <= game::MAX_PLAYERS);
            prop_assert_eq!(g.playing(), g.turn.is_some(), "a turn exactly while playing");
            if let Some(t) = &g.turn {
                prop_assert!(g.players.iter().any(|p| &p.user_id == t), "the turn is a player's");
            }
            let Ok(effects) = result else {
                prop_assert_eq!(&g, &before, "a refusal changes nothing");
                continue;
            };
            let moved: Vec<Value> = effects.frames_to(&To::All).into_iter().map(parse).filter(|f| f["type"] == "moved").collect();
            if let Op::Move(u, id) = op {
                let repeat = id.and_then(|id| moves.values().find(|(m, i)| m.user_id == *u && i.as_deref() == Some(id)).map(|(m, _)| m.seq));
                if let Some(original) = repeat {
                    prop_assert!(moved.is_empty(), "a repeated id is applied again");
                    prop_assert_eq!(&g, &before);
                    let acks: Vec<Value> = effects.frames_to(&To::This).into_iter().map(parse).collect();
                    prop_assert_eq!(acks, vec![json!({"type": "ack", "id": id, "seq": original})]);
                    continue;
                }
                if let Some(m) = moved.first() {
                    prop_assert_eq!(moved.len(), 1);
                    prop_assert_eq!(g.seq, before.seq + 1, "gapless");
                    prop_assert_eq!(&m["seq"], &json!(g.seq));
                    prop_assert_eq!(before.turn.as_deref(), Some(*u), "moved out of turn");
                    let record = MoveRecord { seq: g.seq, user_id: (*u).to_owned(), mv: m["move"].clone(), turn: g.turn.clone() };
                    moves.insert(g.seq, (record, id.map(str::to_owned)));
                    continue;
                }
            }
            prop_assert!(moved.is_empty());
            prop_assert_eq!(g.seq, before.seq, "only moves consume a seq");
        }
        prop_assert_eq!(moves.keys().copied().collect::<Vec<_>>(), (1..=g.seq).collect::<Vec<_>>());
    }

    /// `?since=` on connect: `game_state`, then exactly the moves after `since`, in order (or
    /// `resync_required` for a `since` ahead of the game).
    #[test]
    fn game_replay_is_exactly_the_missed_moves(n in 0i64..40, since in proptest::option::of(0i64..50)) {
        let records: Vec<MoveRecord> = (1..=n).map(|seq| MoveRecord { seq, user_id: "a".into(), mv: json!(seq), turn: Some("b".into()) }).collect();
        let g = Game::restore("g".into(), vec![], None, n, []);
        let mut asked = None;
        let effects = g.on_connect(since, |after| {
            asked = Some(after);
            records.iter().filter(|r| r.seq > after).cloned().collect()
        });
        let frames: Vec<Value> = effects.frames_to(&To::This).into_iter().map(parse).collect();
        prop_assert_eq!(&frames[0]["type"], &json!("game_state"));
        let rest = &frames[1..];
        match since {
            Some(s) if s > n => prop_assert_eq!(rest.to_vec(), vec![parse(&replay::resync_frame(n))]),
            Some(s) => {
                let seqs: Vec<i64> = rest.iter().filter_map(|f| f["seq"].as_i64()).collect();
                prop_assert_eq!(seqs, ((s + 1)..=n).collect::<Vec<_>>());
                prop_assert!(rest.iter().all(|f| f["type"] == "moved"));
                prop_assert_eq!(asked.is_some(), s < n, "history is read only when something was missed");
            }
            None => prop_assert!(rest.is_empty()),
        }
    }
}
