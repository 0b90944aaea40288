//! Replay and paging (docs/protocol.md §6): `?since=` replays exactly the missed range or asks
//! for a resync, never a partial replay; pruning keeps exactly the newest N; a history page has
//! at most `limit` rows and a cursor exactly when more exist.

use proptest::prelude::*;

use edge_realtime_core::replay::{self, Replay};

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn since_replays_exactly_the_missed_range(latest in 0i64..500, pruned in 0i64..500, since in proptest::option::of(0i64..600)) {
        let pruned = pruned.min(latest);
        // Storage holds exactly (pruned, latest].
        let stored = |s: i64| s > pruned && s <= latest;
        match replay::plan(since, latest, pruned) {
            Replay::Nothing => prop_assert!(since.is_none() || since == Some(latest)),
            Replay::After(s) => {
                prop_assert_eq!(Some(s), since);
                prop_assert!(s < latest);
                prop_assert!((s + 1..=latest).all(stored), "a partial replay from {}", s);
            }
            Replay::Resync { latest_seq } => {
                prop_assert_eq!(latest_seq, latest);
                let s = since.unwrap_or(latest);
                prop_assert!(s > latest || !(s + 1..=latest).all(stored), "resync although complete");
            }
        }
    }

    #[test]
    fn prune_through_keeps_exactly_the_newest_n(latest in 0i64..10_000, pruned in 0i64..10_000, keep in -5i64..2_000) {
        let pruned = pruned.min(latest);
        match replay::prune_through(latest, pruned, keep) {
            Some(cutoff) => {
                prop_assert!(cutoff > pruned && cutoff <= latest);
                prop_assert_eq!(latest - cutoff, keep.max(0), "exactly the newest N remain");
            }
            None => prop_assert!(latest - pruned <= keep.max(0), "over the limit but nothing pruned"),
        }
    }

    #[test]
    fn pages_have_at_most_limit_rows_and_a_cursor_exactly_when_more_exist(n in 0usize..300, limit in 0u32..200) {
        let rows: Vec<i64> = (0..n as i64).rev().collect();
        let page = replay::page(rows.clone(), limit, |r| *r);
        let shown = n.min(limit as usize);
        prop_assert_eq!(&page.items[..], &rows[..shown]);
        prop_assert_eq!(page.next, if n > limit as usize { page.items.last().copied() } else { None });
    }
}
