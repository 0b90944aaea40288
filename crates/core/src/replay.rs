//! `?since=<seq>` recovery and history paging shared by every sequenced object (docs/protocol.md §6).
//!
//! An object remembers `pruned_through`: the highest `seq` it has deleted. A replay from
//! `since` is complete only if nothing after `since` was pruned; otherwise the client gets
//! `resync_required` — never a partial replay.

use serde::Serialize;

/// What to do for a client that connects with `?since=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Up to date: nothing to send.
    Nothing,
    /// Send every persisted event with `seq > since`, in order, before live traffic.
    After(i64),
    /// Events after `since` are gone (or `since` is from the future): send `resync_required`.
    Resync { latest_seq: i64 },
}

/// Decide the replay for `since` given the latest assigned seq and the highest pruned seq.
pub fn plan(since: Option<i64>, latest_seq: i64, pruned_through: i64) -> Replay {
    match since {
        None => Replay::Nothing,
        Some(s) if s > latest_seq => Replay::Resync { latest_seq },
        Some(s) if s == latest_seq => Replay::Nothing,
        Some(s) if s < pruned_through => Replay::Resync { latest_seq },
        Some(s) => Replay::After(s),
    }
}

/// `{"type":"resync_required","latestSeq":n}`
pub fn resync_frame(latest_seq: i64) -> String {
    serde_json::json!({"type": "resync_required", "latestSeq": latest_seq}).to_string()
}

/// The highest seq to delete so that the newest `keep` remain, if any must go.
pub fn prune_through(latest_seq: i64, pruned_through: i64, keep: i64) -> Option<i64> {
    let cutoff = latest_seq.saturating_sub(keep.max(0));
    (cutoff > pruned_through).then_some(cutoff)
}

/// One page of history. `rows` were fetched with `limit + 1` so we know whether more exist;
/// `cursor_of` gives the seq the next page continues from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<i64>,
}

pub fn page<T>(mut rows: Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> i64) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more { rows.last().map(&cursor_of) } else { None };
    Page { items: rows, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_plans() {
        assert_eq!(plan(None, 10, 0), Replay::Nothing);
        assert_eq!(plan(Some(10), 10, 0), Replay::Nothing);
        assert_eq!(plan(Some(4), 10, 0), Replay::After(4));
        assert_eq!(plan(Some(0), 10, 0), Replay::After(0));
        // seqs 1..=5 pruned: since=5 still complete, since=4 would miss 5
        assert_eq!(plan(Some(5), 10, 5), Replay::After(5));
        assert_eq!(plan(Some(4), 10, 5), Replay::Resync { latest_seq: 10 });
        assert_eq!(plan(Some(11), 10, 0), Replay::Resync { latest_seq: 10 });
    }

    #[test]
    fn pruning_cutoff() {
        assert_eq!(prune_through(10, 0, 1000), None);
        assert_eq!(prune_through(1005, 0, 1000), Some(5));
        assert_eq!(prune_through(1005, 5, 1000), None);
        assert_eq!(prune_through(3, 0, 0), Some(3));
    }

    #[test]
    fn paging() {
        let p = page(vec![9, 8, 7], 2, |x| *x);
        assert_eq!(p, Page { items: vec![9, 8], next: Some(8) });
        let p = page(vec![9, 8], 2, |x| *x);
        assert_eq!(p, Page { items: vec![9, 8], next: None });
    }
}
