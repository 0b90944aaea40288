//! Sharding one Channel or Waddle over several objects (docs/sharding.md).
//!
//! With `CHANNEL_SHARDS` / `WADDLE_SHARDS` = N > 1, the entry Worker routes every socket of
//! `/ws/channel/:id` / `/ws/waddle/:id` to the shard object `<id>~shard-<k>`, where
//! `k = fmix64(fnv1a64(userId)) % N` ([`shard_of`]): all sockets of one user meet in one shard. The
//! object named `<id>` is the *primary*: it owns the sequence, the history, typing, presence
//! and the member list, and hands every frame meant for "everyone" to each shard that has
//! members in ONE internal call per shard ([`Deliver`]). `~` is outside the public name
//! alphabet (`^[A-Za-z0-9_.-]{1,64}$`), so no client can address a shard directly.
//!
//! A shard delivers sequenced frames in order through a [`Feed`]: a frame after a gap makes
//! it fetch the missing range from the primary first; a duplicate is dropped.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// What separates the primary's id from the shard index in a shard's object name.
pub const SHARD_MARK: &str = "~shard-";
/// Most shards a var may ask for.
pub const MAX_SHARDS: u32 = 64;
/// Tries per internal call of the sharded path (inline, no timer).
pub const CALL_TRIES: u8 = 3;
/// Frames a shard keeps in memory to complete a socket that connects while a frame is in flight.
pub const RECENT_FRAMES: usize = 256;

/// The tables a sharded class adds (run by every object of it; a primary uses `shard_members`,
/// a shard `shard_feed` and `shard_users`; unsharded objects leave them empty).
pub const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS shard_members (user_id TEXT NOT NULL, shard INTEGER NOT NULL, PRIMARY KEY (user_id, shard))",
    "CREATE TABLE IF NOT EXISTS shard_feed (id INTEGER PRIMARY KEY CHECK (id = 1), delivered INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS shard_users (user_id TEXT PRIMARY KEY)",
];
pub const ADD_MEMBER: &str = "INSERT OR IGNORE INTO shard_members (user_id, shard) VALUES (?, ?)";
pub const REMOVE_MEMBER: &str = "DELETE FROM shard_members WHERE user_id = ? AND shard = ?";
pub const SAVE_FEED: &str =
    "INSERT INTO shard_feed (id, delivered) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET delivered = excluded.delivered";
pub const ADD_USER: &str = "INSERT OR IGNORE INTO shard_users (user_id) VALUES (?)";
pub const REMOVE_USER: &str = "DELETE FROM shard_users WHERE user_id = ?";

/// FNV-1a, 64 bit, over `bytes` (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A shard-count var: an integer 1..=[`MAX_SHARDS`], else 1 (unsharded).
pub fn parse_shards(raw: Option<&str>) -> u32 {
    raw.and_then(|s| s.trim().parse::<u32>().ok()).filter(|n| (1..=MAX_SHARDS).contains(n)).unwrap_or(1)
}

/// MurmurHash3's 64-bit finalizer (`fmix64`): every input bit reaches every output bit.
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The shard of `user_id` among `shards`: `fmix64(fnv1a64(utf8(userId))) % shards`. FNV-1a
/// alone mixes badly at both ends (its low k bits depend only on the low k bits of each byte,
/// and its last byte barely reaches the top bits), so ids that differ only in a trailing digit —
/// what generated ids look like — would pile onto a few shards; the finalizer spreads them.
pub fn shard_of(user_id: &str, shards: u32) -> u32 {
    let h = fmix64(fnv1a64(user_id.as_bytes()));
    u32::try_from(h % u64::from(shards.max(1))).unwrap_or(0)
}

/// `<primary>~shard-<k>`.
pub fn shard_name(primary: &str, index: u32) -> String {
    format!("{primary}{SHARD_MARK}{index}")
}

/// What an object of a sharded class is, read from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role<'a> {
    /// A public name: the object itself (the primary when sharded).
    Primary,
    /// Shard `index` of `primary`.
    Shard { primary: &'a str, index: u32 },
}

/// The role of the object named `name` (a shard name is `<valid id>~shard-<k>`, `k` in
/// canonical decimal below [`MAX_SHARDS`]; anything else is a primary).
pub fn role(name: &str) -> Role<'_> {
    let Some((primary, index)) = name.rsplit_once(SHARD_MARK) else { return Role::Primary };
    let canonical = !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) && (index == "0" || !index.starts_with('0'));
    match index.parse::<u32>() {
        Ok(i) if canonical && i < MAX_SHARDS && crate::names::is_valid_name(primary) => Role::Shard { primary, index: i },
        _ => Role::Primary,
    }
}

/// One frame of a [`Deliver`]: `seq` set for a sequenced frame (a channel message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    pub frame: String,
}

/// The body of the shard op `deliver`: frames for every socket of the shard, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver {
    pub items: Vec<Item>,
}

impl Deliver {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }
}

/// What a shard does with one sequenced frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Already delivered: drop it.
    Duplicate,
    /// Deliver this frame now (the feed advanced).
    Deliver(String),
    /// Sequences `after+1 .. before-1` are missing: fetch them from the primary, then call
    /// [`Feed::fill`] with them and this frame.
    Gap { after: i64, before: i64 },
}

/// A shard's delivery order: the last sequence its sockets got, and the recent frames.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Feed {
    delivered: i64,
    recent: VecDeque<(i64, String)>,
}

impl Feed {
    pub fn restore(delivered: i64) -> Self {
        Self { delivered, recent: VecDeque::new() }
    }
    pub fn delivered(&self) -> i64 {
        self.delivered
    }

    /// A sequenced frame arrived. `has_sockets`: without open sockets nobody can miss a
    /// frame, so a gap is skipped rather than fetched.
    pub fn on_frame(&mut self, seq: i64, frame: &str, has_sockets: bool) -> Step {
        if seq <= self.delivered {
            return Step::Duplicate;
        }
        if seq == self.delivered.saturating_add(1) || !has_sockets {
            self.advance(seq, frame);
            return Step::Deliver(frame.to_owned());
        }
        Step::Gap { after: self.delivered, before: seq }
    }

    /// The range fetched for a gap (`fetched`, any order, may overlap what arrived meanwhile)
    /// and the frame that revealed it: the frames to deliver now, in order. `Err(seq)` if the
    /// range still has a hole (pruned, or the fetch failed): the sockets must be told to
    /// resync at `seq` (the feed moves there).
    pub fn fill(&mut self, mut fetched: Vec<(i64, String)>, pending: (i64, String)) -> Result<Vec<String>, i64> {
        fetched.push(pending);
        fetched.sort_by_key(|(seq, _)| *seq);
        let mut out = Vec::new();
        for (seq, frame) in fetched {
            if seq <= self.delivered {
                continue;
            }
            if seq != self.delivered.saturating_add(1) {
                self.delivered = self.delivered.max(seq);
                return Err(seq);
            }
            self.advance(seq, &frame);
            out.push(frame);
        }
        Ok(out)
    }

    /// A socket joined with the primary's state at `latest` (its replay ends there): the
    /// frames after `latest` this shard already delivered (in flight while it joined), or
    /// `Err(delivered)` if some are no longer in memory (the socket must resync).
    pub fn since(&self, latest: i64) -> Result<Vec<String>, i64> {
        if latest >= self.delivered {
            return Ok(Vec::new());
        }
        let frames: Vec<&(i64, String)> = self.recent.iter().filter(|(s, _)| *s > latest).collect();
        let complete = frames.first().is_some_and(|(s, _)| *s == latest.saturating_add(1))
            && usize::try_from(self.delivered.saturating_sub(latest)).is_ok_and(|n| n == frames.len());
        if complete {
            Ok(frames.into_iter().map(|(_, f)| f.clone()).collect())
        } else {
            Err(self.delivered)
        }
    }

    /// Move the feed to `seq` without delivering (a shard with no sockets, on join).
    pub fn skip_to(&mut self, seq: i64) {
        if seq > self.delivered {
            self.delivered = seq;
            self.recent.clear();
        }
    }

    fn advance(&mut self, seq: i64, frame: &str) {
        self.delivered = seq;
        self.recent.push_back((seq, frame.to_owned()));
        while self.recent.len() > RECENT_FRAMES {
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_known_values() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shard_of_is_stable_and_spreads() {
        assert_eq!(shard_of("alice", 1), 0);
        // Pinned: a change here moves every user to another shard.
        assert_eq!(fmix64(0), 0);
        assert_eq!(fmix64(1), 0xb456_bcfc_34c2_cb2c);
        let pinned: Vec<u32> = ["", "a", "foobar", "alice", "bob", "carol"].iter().map(|u| shard_of(u, 4)).collect();
        assert_eq!(pinned, vec![2, 3, 3, 0, 0, 2]);
        assert_eq!((shard_of("alice", 64), shard_of("bob", 64)), (52, 32));
        assert_eq!(u64::from(shard_of("a", 4)), fmix64(0xaf63_dc4c_8601_ec8c) % 4);
        // Ids that differ only in a trailing or a middle digit spread evenly.
        for (name, make) in [
            ("trailing", (|i: u32| format!("bench-shard4-1764640000123-r{i}")) as fn(u32) -> String),
            ("middle", |i| format!("r{i}-179826656-{}", i + 11)),
            ("plain", |i| format!("user-{i}")),
        ] {
            for (n, total, low, high) in [(4_u32, 2_000_u32, 400_u32, 600_u32), (4, 40, 3, 18), (16, 3_200, 140, 260)] {
                let mut counts = vec![0_u32; n as usize];
                for i in 0..total {
                    counts[shard_of(&make(i), n) as usize] += 1;
                }
                assert!(counts.iter().all(|c| (low..=high).contains(c)), "{name} over {n}: {counts:?}");
            }
        }
    }

    #[test]
    fn shard_vars() {
        assert_eq!(parse_shards(None), 1);
        assert_eq!(parse_shards(Some(" 4 ")), 4);
        for bad in ["0", "-1", "x", "", "65"] {
            assert_eq!(parse_shards(Some(bad)), 1, "{bad}");
        }
        assert_eq!(parse_shards(Some("64")), 64);
    }

    #[test]
    fn shard_names_round_trip_and_public_names_are_primaries() {
        let name = shard_name("room-1", 3);
        assert_eq!(name, "room-1~shard-3");
        assert_eq!(role(&name), Role::Shard { primary: "room-1", index: 3 });
        assert!(!crate::names::is_valid_name(&name), "a client cannot name a shard");
        for primary in ["room-1", "a-shard-1", "x"] {
            assert_eq!(role(primary), Role::Primary);
        }
        for odd in ["~shard-1", "a~shard-", "a~shard-x", "a~shard-01", "a~shard-64", "a b~shard-1"] {
            assert_eq!(role(odd), Role::Primary, "{odd}");
        }
    }

    #[test]
    fn feed_delivers_in_order_and_drops_duplicates() {
        let mut f = Feed::default();
        assert_eq!(f.on_frame(1, "m1", true), Step::Deliver("m1".into()));
        assert_eq!(f.on_frame(1, "m1", true), Step::Duplicate);
        assert_eq!(f.on_frame(2, "m2", true), Step::Deliver("m2".into()));
        assert_eq!(f.on_frame(5, "m5", true), Step::Gap { after: 2, before: 5 });
        assert_eq!(f.delivered(), 2, "a gap delivers nothing");
        // m3 arrived while the range was fetched; the range brings 3 and 4.
        assert_eq!(f.on_frame(3, "m3", true), Step::Deliver("m3".into()));
        let out = f.fill(vec![(4, "m4".into()), (3, "m3".into())], (5, "m5".into()));
        assert_eq!(out, Ok(vec!["m4".to_string(), "m5".to_string()]));
        assert_eq!(f.delivered(), 5);
        assert_eq!(f.on_frame(4, "m4", true), Step::Duplicate);
    }

    #[test]
    fn a_hole_that_stays_means_resync() {
        let mut f = Feed::restore(2);
        assert_eq!(f.on_frame(6, "m6", true), Step::Gap { after: 2, before: 6 });
        // The fetch failed (or 3..5 were pruned): resync at 6.
        assert_eq!(f.fill(vec![], (6, "m6".into())), Err(6));
        assert_eq!(f.delivered(), 6);
        assert_eq!(f.on_frame(7, "m7", true), Step::Deliver("m7".into()));
    }

    #[test]
    fn without_sockets_a_gap_is_skipped() {
        let mut f = Feed::restore(2);
        assert_eq!(f.on_frame(9, "m9", false), Step::Deliver("m9".into()));
        assert_eq!(f.delivered(), 9);
        f.skip_to(4);
        assert_eq!(f.delivered(), 9);
        f.skip_to(12);
        assert_eq!(f.delivered(), 12);
    }

    #[test]
    fn a_joining_socket_gets_what_was_in_flight() {
        let mut f = Feed::restore(10);
        assert_eq!(f.since(10), Ok(vec![]));
        assert_eq!(f.since(12), Ok(vec![]));
        f.on_frame(11, "m11", true);
        f.on_frame(12, "m12", true);
        assert_eq!(f.since(10), Ok(vec!["m11".to_string(), "m12".to_string()]));
        assert_eq!(f.since(11), Ok(vec!["m12".to_string()]));
        // Restored after a wake: nothing in memory.
        let f = Feed::restore(12);
        assert_eq!(f.since(10), Err(12));
    }

    #[test]
    fn deliver_bodies_round_trip() {
        let d = Deliver { items: vec![Item { seq: Some(3), frame: "{\"a\":1}".into() }, Item { seq: None, frame: "x".into() }] };
        let json = d.to_json();
        assert_eq!(json, r#"{"items":[{"seq":3,"frame":"{\"a\":1}"},{"frame":"x"}]}"#);
        assert_eq!(Deliver::parse(json.as_bytes()), Some(d));
        assert_eq!(Deliver::parse(b"nope"), None);
    }
}
