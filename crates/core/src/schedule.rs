//! One alarm, many timers (like quinn-proto's timer table): each DO keeps named deadlines and
//! the runtime alarm always points at the earliest one. Pure: the adapter stores the table
//! and calls `setAlarm(next_deadline())` after every change.

use std::collections::BTreeMap;

use crate::time::Millis;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    deadlines: BTreeMap<String, Millis>,
}

impl Schedule {
    pub fn from_entries(entries: impl IntoIterator<Item = (String, Millis)>) -> Self {
        Self { deadlines: entries.into_iter().collect() }
    }

    /// Set (or move) timer `name` to fire at `at`.
    pub fn set(&mut self, name: &str, at: Millis) {
        self.deadlines.insert(name.to_owned(), at);
    }

    /// Set timer `name` unless it is already due earlier (keeps "at most once per period" timers).
    pub fn set_if_later_absent(&mut self, name: &str, at: Millis) {
        self.deadlines.entry(name.to_owned()).or_insert(at);
    }

    pub fn cancel(&mut self, name: &str) {
        self.deadlines.remove(name);
    }

    pub fn get(&self, name: &str) -> Option<Millis> {
        self.deadlines.get(name).copied()
    }

    /// When the alarm should next fire.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.values().copied().min()
    }

    /// Remove and return the timers due at `now`, earliest first.
    pub fn take_due(&mut self, now: Millis) -> Vec<String> {
        let mut due: Vec<(Millis, String)> =
            self.deadlines.iter().filter(|(_, at)| **at <= now).map(|(n, at)| (*at, n.clone())).collect();
        due.sort();
        for (_, name) in &due {
            self.deadlines.remove(name);
        }
        due.into_iter().map(|(_, n)| n).collect()
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, Millis)> {
        self.deadlines.iter().map(|(n, at)| (n.as_str(), *at))
    }

    /// What turns the `stored` table into this one: the timers to delete and the timers to
    /// write (new or moved). Unchanged timers are in neither, so saving a schedule writes only
    /// the rows that changed (SQLite rows written are what an object is billed for).
    pub fn changes_from(&self, stored: &Schedule) -> ScheduleChanges {
        ScheduleChanges {
            removed: stored.deadlines.keys().filter(|n| !self.deadlines.contains_key(*n)).cloned().collect(),
            written: self
                .deadlines
                .iter()
                .filter(|(n, at)| stored.deadlines.get(*n) != Some(*at))
                .map(|(n, at)| (n.clone(), *at))
                .collect(),
        }
    }
}

/// [`Schedule::changes_from`]: rows to delete and rows to upsert, by timer name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleChanges {
    pub removed: Vec<String>,
    pub written: Vec<(String, Millis)>,
}

impl ScheduleChanges {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.written.is_empty()
    }
}

/// Liveness of hibernated sockets: which ones vanished without a close, and when to look again.
///
/// The runtime answers `{"type":"ping"}` itself and remembers when it last did
/// (`getWebSocketAutoResponseTimestamp`); a socket whose client disappeared without a TCP close
/// may never get a `webSocketClose` (workerd issue 1187). A socket is *stale* once
/// `timeout_ms` passed since its last ping (or, if it never pinged, since it connected). The
/// adapter keeps the [`HEARTBEAT_TIMER`] at [`Sweep::next`]: the earliest moment a live
/// socket could go stale, or no timer at all when no socket remains.
pub mod liveness {
    use std::collections::BTreeSet;

    use super::Schedule;
    use crate::time::Millis;

    /// The timer the heartbeat sweep runs on.
    pub const HEARTBEAT_TIMER: &str = "heartbeat";
    /// Default `HEARTBEAT_TIMEOUT_MS`: three missed 30 s heartbeats.
    pub const DEFAULT_TIMEOUT_MS: Millis = 90_000;
    /// Floor for the var, so a typo cannot sweep healthy clients between two pings.
    pub const MIN_TIMEOUT_MS: Millis = 1_000;

    /// `HEARTBEAT_TIMEOUT_MS`: a positive integer (ms, at least [`MIN_TIMEOUT_MS`]); anything
    /// else is the default.
    pub fn parse_timeout(raw: Option<&str>) -> Millis {
        raw.and_then(|s| s.trim().parse::<Millis>().ok())
            .filter(|ms| *ms >= MIN_TIMEOUT_MS)
            .unwrap_or(DEFAULT_TIMEOUT_MS)
    }

    /// When a socket last showed life: its last auto-answered ping, else its connect time.
    /// `None` when neither is known (treated as just seen: it gets a full timeout).
    pub fn last_seen(last_ping: Option<Millis>, connected_at: Option<Millis>) -> Option<Millis> {
        match (last_ping, connected_at) {
            (Some(p), Some(c)) => Some(p.max(c)),
            (p, c) => p.or(c),
        }
    }

    /// The decision of one sweep over `sockets` (their last-seen times, in the adapter's order).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Sweep {
        /// Indexes of the sockets to close and announce gone.
        pub stale: Vec<usize>,
        /// When the next sweep is due (`None`: no live socket left, do not re-arm).
        pub next: Option<Millis>,
    }

    /// Decide which sockets are stale at `now`. A socket with unknown last-seen counts as seen
    /// `now` (it gets a full timeout, never an instant close).
    pub fn sweep(sockets: &[Option<Millis>], now: Millis, timeout_ms: Millis) -> Sweep {
        let mut stale = Vec::new();
        let mut next: Option<Millis> = None;
        for (i, seen) in sockets.iter().enumerate() {
            let seen = seen.unwrap_or(now).min(now);
            let due = seen.saturating_add(timeout_ms);
            if due <= now {
                stale.push(i);
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        Sweep { stale, next }
    }

    /// A socket was accepted at `now`: make sure a sweep is due by `now + timeout_ms` (never
    /// postpones an earlier one). Returns whether the schedule changed.
    pub fn arm_on_connect(schedule: &mut Schedule, now: Millis, timeout_ms: Millis) -> bool {
        let due = now.saturating_add(timeout_ms);
        match schedule.get(HEARTBEAT_TIMER) {
            Some(at) if at <= due => false,
            _ => {
                schedule.set(HEARTBEAT_TIMER, due);
                true
            }
        }
    }

    /// The alarm's first step: the timers due at `now` (earliest first) and the table to save
    /// before running them — `stored` without them, except the heartbeat, whose row stays until
    /// the sweep's [`rearm`] moves it: one row written per sweep instead of a delete and an
    /// insert (a sweep repeated after a crash is harmless; other timers fire at most once).
    pub fn fire(stored: &Schedule, now: Millis) -> (Schedule, Vec<String>) {
        let mut schedule = stored.clone();
        let due = schedule.take_due(now);
        if let (true, Some(at)) = (due.iter().any(|n| n == HEARTBEAT_TIMER), stored.get(HEARTBEAT_TIMER)) {
            schedule.set(HEARTBEAT_TIMER, at);
        }
        (schedule, due)
    }

    /// After a sweep: point the heartbeat timer at `next`, or cancel it.
    pub fn rearm(schedule: &mut Schedule, next: Option<Millis>) {
        match next {
            Some(at) => schedule.set(HEARTBEAT_TIMER, at),
            None => schedule.cancel(HEARTBEAT_TIMER),
        }
    }

    /// Reconcile stored membership with the sockets that really exist (run on every wake):
    /// the members of `stored` that have no open socket in `live` are ghosts (left over from a
    /// crash, a deploy or a lost close) and must be dropped / marked offline.
    pub fn ghosts<'a>(stored: impl IntoIterator<Item = &'a str>, live: &BTreeSet<String>) -> Vec<String> {
        let mut out: Vec<String> = stored.into_iter().filter(|u| !live.contains(*u)).map(str::to_owned).collect();
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_points_at_the_earliest_timer() {
        let mut s = Schedule::default();
        assert_eq!(s.next_deadline(), None);
        s.set("prune", 60_000);
        s.set("typing", 3_000);
        assert_eq!(s.next_deadline(), Some(3_000));
        s.cancel("typing");
        assert_eq!(s.next_deadline(), Some(60_000));
    }

    #[test]
    fn a_sweep_writes_one_schedule_row() {
        use super::liveness::{fire, rearm, HEARTBEAT_TIMER};
        let stored = Schedule::from_entries([(HEARTBEAT_TIMER.to_string(), 90_000), ("prune".into(), 60_000), ("typing".into(), 200_000)]);
        let (first, due) = fire(&stored, 100_000);
        assert_eq!(due, vec!["prune".to_string(), HEARTBEAT_TIMER.to_string()]);
        let changes = first.changes_from(&stored);
        assert_eq!(changes.removed, vec!["prune".to_string()], "a due timer's removal is saved first");
        assert!(changes.written.is_empty(), "the heartbeat's row is left for the re-arm");
        let mut rearmed = first.clone();
        rearm(&mut rearmed, Some(190_000));
        let changes = rearmed.changes_from(&first);
        assert_eq!((changes.removed.len(), changes.written), (0, vec![(HEARTBEAT_TIMER.to_string(), 190_000)]));
        // No socket left: the re-arm cancels it, one row deleted.
        let mut cancelled = first.clone();
        rearm(&mut cancelled, None);
        assert_eq!(cancelled.changes_from(&first).removed, vec![HEARTBEAT_TIMER.to_string()]);
        // Nothing due: nothing changes.
        let (same, none) = fire(&stored, 1_000);
        assert!(none.is_empty() && same.changes_from(&stored).is_empty());
    }

    #[test]
    fn changes_name_only_the_rows_that_differ() {
        let stored = Schedule::from_entries([("heartbeat".into(), 90_000), ("prune".into(), 60_000), ("typing".into(), 3_000)]);
        let mut next = stored.clone();
        assert!(next.changes_from(&stored).is_empty(), "an unchanged schedule writes nothing");
        next.set("heartbeat", 180_000); // moved
        next.cancel("typing"); // gone
        next.set("game", 5_000); // new
        let changes = next.changes_from(&stored);
        assert_eq!(changes.removed, vec!["typing".to_string()]);
        assert_eq!(changes.written, vec![("game".to_string(), 5_000), ("heartbeat".to_string(), 180_000)]);
        // Applying the changes to the stored table gives the new one.
        let mut applied = stored.clone();
        for name in &changes.removed {
            applied.cancel(name);
        }
        for (name, at) in &changes.written {
            applied.set(name, *at);
        }
        assert_eq!(applied, next);
        assert_eq!(Schedule::default().changes_from(&next).removed.len(), 3, "clearing deletes every row");
    }

    #[test]
    fn changes_applied_to_the_stored_table_give_the_new_one() {
        let mut rng = crate::TestRng(7);
        for _ in 0..500 {
            let mut stored = Schedule::default();
            let mut next = Schedule::default();
            for name in ["a", "b", "c", "d"] {
                if rng.next(2) == 0 {
                    stored.set(name, rng.next(3) as i64);
                }
                if rng.next(2) == 0 {
                    next.set(name, rng.next(3) as i64);
                }
            }
            let changes = next.changes_from(&stored);
            let mut applied = stored.clone();
            changes.removed.iter().for_each(|n| applied.cancel(n));
            changes.written.iter().for_each(|(n, at)| applied.set(n, *at));
            assert_eq!(applied, next);
            assert!(changes.written.iter().all(|(n, at)| stored.get(n) != Some(*at)), "no unchanged row is rewritten");
        }
    }

    #[test]
    fn take_due_fires_in_order_and_leaves_the_rest() {
        let mut s = Schedule::from_entries([("b".into(), 20), ("a".into(), 10), ("c".into(), 30)]);
        assert_eq!(s.take_due(25), vec!["a".to_string(), "b".to_string()]);
        assert_eq!(s.next_deadline(), Some(30));
        assert!(s.take_due(29).is_empty());
        assert_eq!(s.take_due(30), vec!["c".to_string()]);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn set_if_absent_does_not_postpone() {
        let mut s = Schedule::default();
        s.set_if_later_absent("prune", 100);
        s.set_if_later_absent("prune", 500);
        assert_eq!(s.get("prune"), Some(100));
    }

    mod liveness_tests {
        use super::super::liveness::*;
        use super::super::Schedule;
        use std::collections::BTreeSet;

        #[test]
        fn timeout_var_parses_with_default_and_floor() {
            assert_eq!(parse_timeout(None), 90_000);
            assert_eq!(parse_timeout(Some("5000")), 5_000);
            assert_eq!(parse_timeout(Some(" 120000 ")), 120_000);
            for bad in ["", "abc", "-5", "0", "999", "1e3"] {
                assert_eq!(parse_timeout(Some(bad)), DEFAULT_TIMEOUT_MS, "{bad:?}");
            }
        }

        #[test]
        fn last_seen_prefers_the_later_of_ping_and_connect() {
            assert_eq!(last_seen(None, None), None);
            assert_eq!(last_seen(None, Some(10)), Some(10));
            assert_eq!(last_seen(Some(50), Some(10)), Some(50));
            // A ping timestamp from before the connect tag (clock skew) never ages the socket.
            assert_eq!(last_seen(Some(5), Some(10)), Some(10));
        }

        #[test]
        fn sweep_closes_only_silent_sockets_and_rearms_at_the_earliest_live_deadline() {
            let timeout = 90_000;
            // t=0 connect A (never pings), B pings at 30 s and 60 s, C connects at 50 s.
            let at_90 = sweep(&[Some(0), Some(60_000), Some(50_000)], 90_000, timeout);
            assert_eq!(at_90.stale, vec![0]);
            assert_eq!(at_90.next, Some(140_000));
            // One ms early: nothing is stale yet, the next sweep is exactly at A's deadline.
            let early = sweep(&[Some(0), Some(60_000)], 89_999, timeout);
            assert!(early.stale.is_empty());
            assert_eq!(early.next, Some(90_000));
        }

        #[test]
        fn sweep_with_no_sockets_left_does_not_rearm() {
            assert_eq!(sweep(&[], 1_000, 5_000), Sweep { stale: vec![], next: None });
            let all_gone = sweep(&[Some(0), Some(1)], 10_000, 5_000);
            assert_eq!(all_gone.stale, vec![0, 1]);
            assert_eq!(all_gone.next, None);
        }

        #[test]
        fn unknown_or_future_last_seen_gets_a_full_timeout() {
            let s = sweep(&[None, Some(1_000_000)], 10_000, 5_000);
            assert!(s.stale.is_empty());
            assert_eq!(s.next, Some(15_000));
        }

        #[test]
        fn arming_never_postpones_and_rearm_cancels_when_empty() {
            let mut sched = Schedule::default();
            assert!(arm_on_connect(&mut sched, 0, 90_000));
            assert!(!arm_on_connect(&mut sched, 10_000, 90_000));
            assert_eq!(sched.get(HEARTBEAT_TIMER), Some(90_000));
            rearm(&mut sched, Some(120_000));
            assert_eq!(sched.get(HEARTBEAT_TIMER), Some(120_000));
            // A connect that would go stale sooner pulls the timer in.
            assert!(arm_on_connect(&mut sched, 20_000, 90_000));
            assert_eq!(sched.get(HEARTBEAT_TIMER), Some(110_000));
            rearm(&mut sched, None);
            assert_eq!(sched.get(HEARTBEAT_TIMER), None);
            assert_eq!(sched.next_deadline(), None);
        }

        /// Virtual clock: sockets ping on their own periods; a healthy one (period < timeout)
        /// is never swept, a silent one is swept at the first sweep at or after its deadline,
        /// and the alarm fires only at computed deadlines (never more often than needed).
        #[test]
        fn virtual_clock_healthy_sockets_survive_silent_ones_are_swept_once() {
            let timeout = 90_000;
            // (connect time, ping period or None for a vanished client)
            let clients: Vec<(i64, Option<i64>)> = vec![(0, Some(30_000)), (5_000, None), (7_000, Some(89_000)), (40_000, None)];
            let mut sched = Schedule::default();
            for (c, _) in &clients {
                arm_on_connect(&mut sched, *c, timeout);
            }
            let mut open: Vec<bool> = vec![true; clients.len()];
            let mut swept_at: Vec<Option<i64>> = vec![None; clients.len()];
            let mut fires = 0;
            while let Some(now) = sched.next_deadline() {
                if now > 1_000_000 {
                    break;
                }
                fires += 1;
                assert_eq!(sched.take_due(now), vec![HEARTBEAT_TIMER.to_string()]);
                let idx: Vec<usize> = (0..clients.len()).filter(|i| open[*i]).collect();
                let seen: Vec<Option<i64>> = idx
                    .iter()
                    .map(|i| {
                        let (c, period) = clients[*i];
                        let ping = period.filter(|p| now >= c + p).map(|p| c + ((now - c) / p) * p);
                        last_seen(ping, Some(c))
                    })
                    .collect();
                let s = sweep(&seen, now, timeout);
                for k in &s.stale {
                    open[idx[*k]] = false;
                    swept_at[idx[*k]] = Some(now);
                }
                rearm(&mut sched, s.next);
            }
            assert_eq!(swept_at, vec![None, Some(95_000), None, Some(130_000)]);
            assert!(open[0] && open[2]);
            assert!(fires < 40, "alarm fired {fires} times");
        }

        #[test]
        fn ghosts_are_stored_members_without_a_live_socket() {
            let live: BTreeSet<String> = ["bob".to_string()].into_iter().collect();
            assert_eq!(ghosts(["alice", "bob", "carol", "alice"], &live), vec!["alice".to_string(), "carol".to_string()]);
            assert!(ghosts(["bob"], &live).is_empty());
            assert_eq!(ghosts(["x"], &BTreeSet::new()), vec!["x".to_string()]);
        }
    }
}
