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
}
