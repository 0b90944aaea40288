//! Schedule: over random set / cancel / set-if-absent / fire sequences the alarm always points
//! at the earliest deadline and a firing returns exactly the due timers, earliest first; the
//! heartbeat sweep closes exactly the silent sockets and re-arms at the earliest live deadline.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::select;

use edge_realtime_core::schedule::{liveness, Schedule};

#[derive(Debug, Clone)]
enum Op {
    Set(&'static str, i64),
    SetIfAbsent(&'static str, i64),
    Cancel(&'static str),
    TakeDue(i64),
}

fn op() -> impl Strategy<Value = Op> {
    let name = select(vec!["prune", "typing", "heartbeat", "forget", "a", "b"]);
    let at = -1_000i64..100_000;
    prop_oneof![
        3 => (name.clone(), at.clone()).prop_map(|(n, a)| Op::Set(n, a)),
        2 => (name.clone(), at.clone()).prop_map(|(n, a)| Op::SetIfAbsent(n, a)),
        1 => name.prop_map(Op::Cancel),
        2 => at.prop_map(Op::TakeDue),
    ]
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn next_alarm_is_the_earliest_deadline(ops in prop::collection::vec(op(), 0..80)) {
        let mut s = Schedule::default();
        let mut model: BTreeMap<&str, i64> = BTreeMap::new();
        for op in &ops {
            match op {
                Op::Set(n, at) => {
                    s.set(n, *at);
                    model.insert(n, *at);
                }
                Op::SetIfAbsent(n, at) => {
                    s.set_if_later_absent(n, *at);
                    model.entry(n).or_insert(*at);
                }
                Op::Cancel(n) => {
                    s.cancel(n);
                    model.remove(n);
                }
                Op::TakeDue(now) => {
                    let mut due: Vec<(i64, &str)> = model.iter().filter(|(_, at)| **at <= *now).map(|(n, at)| (*at, *n)).collect();
                    due.sort();
                    model.retain(|_, at| *at > *now);
                    let want: Vec<String> = due.into_iter().map(|(_, n)| n.to_owned()).collect();
                    prop_assert_eq!(s.take_due(*now), want, "exactly the due timers, earliest first");
                    prop_assert!(s.next_deadline().is_none_or(|n| n > *now));
                }
            }
            prop_assert_eq!(s.next_deadline(), model.values().copied().min(), "alarm at the earliest deadline");
            prop_assert_eq!(s.entries().collect::<Vec<_>>(), model.iter().map(|(n, at)| (*n, *at)).collect::<Vec<_>>());
            prop_assert_eq!(Schedule::from_entries(s.entries().map(|(n, at)| (n.to_owned(), at))), s.clone(), "the table round-trips");
        }
    }

    #[test]
    fn heartbeat_sweep_closes_exactly_the_silent_sockets(
        sockets in prop::collection::vec(proptest::option::of(0i64..200_000), 0..20),
        now in 0i64..200_000,
        timeout in 1_000i64..100_000,
    ) {
        let sweep = liveness::sweep(&sockets, now, timeout);
        let due = |seen: &Option<i64>| seen.unwrap_or(now).min(now) + timeout;
        let stale: Vec<usize> = sockets.iter().enumerate().filter(|(_, s)| due(s) <= now).map(|(i, _)| i).collect();
        prop_assert_eq!(&sweep.stale, &stale);
        let next = sockets.iter().map(due).filter(|d| *d > now).min();
        prop_assert_eq!(sweep.next, next);
        // Arming on connect never postpones an earlier sweep, and is due within the timeout.
        let mut sched = Schedule::default();
        if let Some(n) = sweep.next {
            liveness::rearm(&mut sched, Some(n));
        }
        let before = sched.get(liveness::HEARTBEAT_TIMER);
        liveness::arm_on_connect(&mut sched, now, timeout);
        let after = sched.get(liveness::HEARTBEAT_TIMER);
        prop_assert_eq!(after, Some(before.map_or(now + timeout, |b| b.min(now + timeout))));
    }

    #[test]
    fn ghosts_are_exactly_stored_members_without_a_socket(
        stored in prop::collection::vec(select(vec!["a", "b", "c", "d", "e"]), 0..10),
        live in prop::collection::btree_set(select(vec!["a", "b", "c", "d", "e"]).prop_map(str::to_owned), 0..5),
    ) {
        let got = liveness::ghosts(stored.iter().copied(), &live);
        let want: Vec<String> = stored.iter().copied().collect::<BTreeSet<_>>().into_iter().filter(|u| !live.contains(*u)).map(str::to_owned).collect();
        prop_assert_eq!(got, want);
    }
}
