//! Live reactions on Channel messages (docs/protocol.md §6.5, docs/channel.md "Reactions"):
//! the emoji rule, the per-(message, emoji) tallies and what one toggle stores and sends.
//!
//! Storage is two tables (in [`crate::channel::SCHEMA`]): `reactions (sequence, emoji,
//! user_id)` — who reacted, one row per user, so a user counts once — and `reaction_counts
//! (sequence, emoji, count)`, the tallies that history, replay and the next toggle read without
//! scanning every reactor (SQLite bills rows read). Both change in the same transaction, so the
//! count is exact across hibernation and restarts, and both are pruned with the message.
//!
//! A toggle is one synchronous turn of the object: the adapter reads the message's tallies and
//! whether this user already reacted with this emoji ([`Current`]), [`decide`] answers, and the
//! store happens before the next frame is read. 50 users toggling at once are 50 turns in a row.

use std::collections::BTreeMap;

use serde::Serialize;
use unicode_properties::{EmojiStatus, UnicodeEmoji};
use unicode_segmentation::UnicodeSegmentation;

use crate::effects::{Effects, To};
use crate::frame::Reject;

/// Longest accepted emoji, in UTF-8 bytes (the longest RGI emoji, a kiss with two skin tones,
/// is 35; a subdivision flag 28).
pub const MAX_EMOJI_BYTES: usize = 64;
/// Distinct emoji one message may carry.
pub const MAX_EMOJI_PER_MESSAGE: usize = 20;

/// Who reacted (a user counts once per message and emoji).
pub const INSERT_REACTOR: &str = "INSERT INTO reactions (sequence, emoji, user_id) VALUES (?, ?, ?)";
pub const DELETE_REACTOR: &str = "DELETE FROM reactions WHERE sequence = ? AND emoji = ? AND user_id = ?";
/// The tally after the toggle (the count the broadcast carries).
pub const SET_COUNT: &str = "INSERT INTO reaction_counts (sequence, emoji, count) VALUES (?, ?, ?) \
     ON CONFLICT (sequence, emoji) DO UPDATE SET count = excluded.count";
pub const DELETE_COUNT: &str = "DELETE FROM reaction_counts WHERE sequence = ? AND emoji = ?";
/// Pruning: reactions go with their messages (`sequence <= cutoff`).
pub const PRUNE_REACTORS: &str = "DELETE FROM reactions WHERE sequence <= ?";
pub const PRUNE_COUNTS: &str = "DELETE FROM reaction_counts WHERE sequence <= ?";

/// What the adapter reads before [`decide`]: the message's tallies and whether
/// `(sequence, emoji, user_id)` is in `reactions`.
pub const SELECT_COUNTS: &str = "SELECT sequence, emoji, count FROM reaction_counts WHERE sequence = ?";
pub const SELECT_MINE: &str = "SELECT sequence FROM reactions WHERE sequence = ? AND emoji = ? AND user_id = ?";
/// The tallies of the messages in `(after, through]` (history pages, `?since=` replay).
pub const SELECT_RANGE: &str =
    "SELECT sequence, emoji, count FROM reaction_counts WHERE sequence > ? AND sequence <= ? ORDER BY sequence";

/// Why a reaction was refused (in-band; nothing changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReactionError {
    #[error("emoji must be exactly one emoji (one grapheme cluster, at most 64 bytes)")]
    InvalidEmoji,
    #[error("no such message: the sequence is unknown or was pruned")]
    UnknownSequence,
    #[error("a message carries at most 20 distinct emoji")]
    TooManyReactions,
}

impl ReactionError {
    pub fn code(&self) -> &'static str {
        match self {
            ReactionError::InvalidEmoji => "invalid_emoji",
            ReactionError::UnknownSequence => "unknown_sequence",
            ReactionError::TooManyReactions => "too_many_reactions",
        }
    }
    pub fn to_reject(&self) -> Reject {
        Reject::in_band(self.code(), self.to_string())
    }
}

/// A validated `{"type":"react","sequence","emoji","on"}` (the emoji passed [`is_reaction_emoji`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct React {
    pub sequence: i64,
    pub emoji: String,
    pub on: bool,
}

impl React {
    /// Check the emoji; the sequence is the channel's to check.
    pub fn new(sequence: i64, emoji: String, on: bool) -> Result<Self, ReactionError> {
        if !is_reaction_emoji(&emoji) {
            return Err(ReactionError::InvalidEmoji);
        }
        Ok(Self { sequence, emoji, on })
    }
}

/// One message's reactions as stored when the toggle arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    /// emoji → count (every count ≥ 1).
    pub counts: BTreeMap<String, i64>,
    /// Whether the reacting user already reacted with the toggle's emoji.
    pub mine: bool,
}

/// The answer to one toggle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    pub sequence: i64,
    pub emoji: String,
    pub user_id: String,
    /// The user's state after the toggle (what they asked for).
    pub on: bool,
    /// Users reacting with this emoji on this message after the toggle.
    pub count: i64,
    /// Whether anything changed (else only the sender hears the unchanged state).
    pub changed: bool,
}

/// Decide one toggle of `user_id` against what is stored. `on` equal to the user's current
/// state changes nothing; a new emoji beyond [`MAX_EMOJI_PER_MESSAGE`] is refused.
pub fn decide(user_id: &str, react: &React, current: &Current) -> Result<Reaction, ReactionError> {
    let count = current.counts.get(&react.emoji).copied().unwrap_or(0).max(0);
    let answer = |count: i64, changed: bool| Reaction {
        sequence: react.sequence,
        emoji: react.emoji.clone(),
        user_id: user_id.to_owned(),
        on: react.on,
        count,
        changed,
    };
    match (react.on, current.mine) {
        (true, true) | (false, false) => Ok(answer(count, false)),
        (true, false) => {
            let distinct = current.counts.values().filter(|n| **n > 0).count();
            if count == 0 && distinct >= MAX_EMOJI_PER_MESSAGE {
                return Err(ReactionError::TooManyReactions);
            }
            Ok(answer(count.saturating_add(1), true))
        }
        (false, true) => Ok(answer(count.saturating_sub(1).max(0), true)),
    }
}

impl Reaction {
    /// `{"type":"reaction","sequence","emoji","userId","on","count"}`.
    pub fn frame(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            r#type: &'static str,
            sequence: i64,
            emoji: &'a str,
            user_id: &'a str,
            on: bool,
            count: i64,
        }
        serde_json::to_string(&Wire {
            r#type: "reaction",
            sequence: self.sequence,
            emoji: &self.emoji,
            user_id: &self.user_id,
            on: self.on,
            count: self.count,
        })
        .unwrap_or_default()
    }

    /// A change: the reactor row and the new tally in one store, then the frame to everyone.
    /// No change: the frame to the sender only.
    pub fn effects(&self) -> Effects {
        if !self.changed {
            return Effects::none().send(To::This, self.frame());
        }
        let (seq, emoji) = (self.sequence, self.emoji.as_str());
        let reactor = vec![seq.into(), emoji.into(), self.user_id.as_str().into()];
        let e = if self.on { Effects::none().store(INSERT_REACTOR, reactor) } else { Effects::none().store(DELETE_REACTOR, reactor) };
        let e = if self.count > 0 {
            e.store(SET_COUNT, vec![seq.into(), emoji.into(), self.count.into()])
        } else {
            e.store(DELETE_COUNT, vec![seq.into(), emoji.into()])
        };
        e.send(To::All, self.frame())
    }
}

/// The tallies of many messages: sequence → emoji → count.
pub type ReactionCounts = BTreeMap<i64, BTreeMap<String, i64>>;

/// [`ReactionCounts`] from `(sequence, emoji, count)` rows ([`SELECT_RANGE`]).
pub fn counts_from_rows(rows: impl IntoIterator<Item = (i64, String, i64)>) -> ReactionCounts {
    let mut out = ReactionCounts::new();
    for (sequence, emoji, count) in rows {
        if count > 0 {
            out.entry(sequence).or_default().insert(emoji, count);
        }
    }
    out
}

/// The reaction rule (docs/protocol.md §6.5): `s` is 1..=[`MAX_EMOJI_BYTES`] bytes, exactly one
/// extended grapheme cluster (UAX #29), and matches UTS #51's "possible emoji" grammar
/// (§1.4.9 EBNF), tightened in two places so plain text never passes:
///
/// ```text
/// possible_emoji := zwj_element (U+200D zwj_element)*
/// zwj_element    := RI RI                                    (a flag: exactly two)
///                 | \p{Emoji} emoji_modification? tag_modifier?
/// emoji_modification := \p{Emoji_Modifier} | U+FE0F U+20E3?
/// tag_modifier   := [U+E0020-U+E007E]+ U+E007F
/// ```
///
/// - an ASCII `\p{Emoji}` (`0-9`, `#`, `*`) counts only as a keycap, `U+FE0F U+20E3` after it;
/// - a regional indicator only as one of a pair (a flag).
///
/// Nothing is trimmed or normalized: `"❤"` and `"❤️"` (with U+FE0F) both pass and are two
/// different reactions; `U+FE0E` (text presentation) never passes.
pub fn is_reaction_emoji(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_EMOJI_BYTES {
        return false;
    }
    let mut clusters = s.graphemes(true);
    if clusters.next().is_none() || clusters.next().is_some() {
        return false;
    }
    s.split('\u{200D}').all(zwj_element)
}

fn is_regional_indicator(c: char) -> bool {
    matches!(c, '\u{1F1E6}'..='\u{1F1FF}')
}

fn is_modifier(c: char) -> bool {
    matches!(c.emoji_status(), EmojiStatus::EmojiPresentationAndModifierAndEmojiComponent)
}

fn zwj_element(element: &str) -> bool {
    let mut chars = element.chars();
    let Some(base) = chars.next() else {
        return false;
    };
    let rest: Vec<char> = chars.collect();
    if is_regional_indicator(base) {
        return matches!(rest.as_slice(), [second] if is_regional_indicator(*second));
    }
    if !base.is_emoji_char() {
        return false;
    }
    let (keycap, tags) = match rest.as_slice() {
        [m, tags @ ..] if is_modifier(*m) => (false, tags),
        ['\u{FE0F}', '\u{20E3}', tags @ ..] => (true, tags),
        ['\u{FE0F}', tags @ ..] => (false, tags),
        tags => (false, tags),
    };
    if base.is_ascii() && !keycap {
        return false;
    }
    match tags {
        [] => true,
        [spec @ .., '\u{E007F}'] => !spec.is_empty() && spec.iter().all(|c| matches!(c, '\u{E0020}'..='\u{E007E}')),
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn the_rule_accepts_single_emoji() {
        for ok in [
            "👍", "👍🏽", "❤️", "❤", "🇫🇷", "👨‍👩‍👧", "🏳️‍🌈", "❤️‍🔥", "🧑🏿‍🤝‍🧑🏻", "1️⃣", "#️⃣", "*️⃣", "©️", "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
            "👨🏻‍❤️‍💋‍👨🏼", "🫠", "🦀", "😀", "🏻", "☺️", "👁️‍🗨️",
        ] {
            assert!(is_reaction_emoji(ok), "{ok:?} {:x?}", ok.chars().map(u32::from).collect::<Vec<_>>());
        }
    }

    #[test]
    fn the_rule_refuses_everything_else() {
        for bad in [
            "", "a", "ab", "👍👍", " 👍", "👍 ", "\u{FE0F}", "\u{200D}", "👍\u{200D}", "\u{200D}👍", "👍\u{200D}\u{200D}👍",
            "1", "#", "*", "1\u{FE0F}", "1\u{20E3}", "x\u{FE0F}\u{20E3}", "🇫", "🇫🇷🇩", "🇫🇷🇩🇪", "❤\u{FE0E}", "👍\u{301}",
            "é", "\u{1F3F4}\u{E0067}\u{E0062}", "\u{1F3F4}\u{E007F}", "😀\u{1F3FB}\u{FE0F}", "\n", "\u{0}", "👍\u{FE0F}\u{FE0F}",
        ] {
            assert!(!is_reaction_emoji(bad), "{bad:?} {:x?}", bad.chars().map(u32::from).collect::<Vec<_>>());
        }
        // The byte bound, even for a string the grammar would take.
        let long = format!("🏴{}\u{E007F}", "\u{E0061}".repeat(15));
        assert!(long.len() > MAX_EMOJI_BYTES);
        assert!(!is_reaction_emoji(&long));
    }

    #[test]
    fn the_property_tables_cover_every_scalar_value() {
        // unicode-properties looks statuses up with an unwrap: every char must be in a range.
        let mut emoji = 0;
        for c in (0..=0x10FFFF_u32).filter_map(char::from_u32) {
            emoji += usize::from(c.is_emoji_char());
        }
        assert!(emoji > 1_000, "{emoji}");
    }

    fn react(seq: i64, emoji: &str, on: bool) -> React {
        React::new(seq, emoji.into(), on).unwrap()
    }

    #[test]
    fn toggles_count_users_once() {
        let none = Current::default();
        let r = decide("a", &react(3, "👍", true), &none).unwrap();
        assert_eq!((r.count, r.changed, r.on), (1, true, true));
        assert_eq!(r.frame(), r#"{"type":"reaction","sequence":3,"emoji":"👍","userId":"a","on":true,"count":1}"#);
        let e = r.effects();
        assert_eq!(e.store.iter().map(|s| s.sql).collect::<Vec<_>>(), vec![INSERT_REACTOR, SET_COUNT]);
        assert_eq!(e.frames_to(&To::All), vec![r.frame().as_str()]);
        assert!(e.frames_to(&To::This).is_empty());

        let two = Current { counts: [("👍".to_string(), 2)].into(), mine: true };
        // Already on: unchanged, only the sender hears it, nothing stored.
        let again = decide("a", &react(3, "👍", true), &two).unwrap();
        assert_eq!((again.count, again.changed), (2, false));
        let e = again.effects();
        assert!(e.store.is_empty());
        assert_eq!(e.frames_to(&To::This), vec![again.frame().as_str()]);
        assert!(e.frames_to(&To::All).is_empty());
        // Off decrements; the last one off deletes the tally.
        let off = decide("a", &react(3, "👍", false), &two).unwrap();
        assert_eq!((off.count, off.changed, off.on), (1, true, false));
        assert_eq!(off.effects().store.iter().map(|s| s.sql).collect::<Vec<_>>(), vec![DELETE_REACTOR, SET_COUNT]);
        let last = decide("a", &react(3, "👍", false), &Current { counts: [("👍".to_string(), 1)].into(), mine: true }).unwrap();
        assert_eq!(last.count, 0);
        assert_eq!(last.effects().store.iter().map(|s| s.sql).collect::<Vec<_>>(), vec![DELETE_REACTOR, DELETE_COUNT]);
        // Off when never on: unchanged.
        let never = decide("b", &react(3, "🎉", false), &Current { mine: false, ..two }).unwrap();
        assert_eq!((never.count, never.changed, never.on), (0, false, false));
    }

    #[test]
    fn at_most_twenty_distinct_emoji() {
        let twenty: BTreeMap<String, i64> = EMOJI.iter().take(MAX_EMOJI_PER_MESSAGE).map(|e| (e.to_string(), 1)).collect();
        let full = Current { counts: twenty, mine: false };
        let extra = EMOJI.get(MAX_EMOJI_PER_MESSAGE).copied().unwrap_or("🦀");
        assert_eq!(decide("z", &react(1, extra, true), &full), Err(ReactionError::TooManyReactions));
        assert_eq!(ReactionError::TooManyReactions.to_reject(), Reject::in_band("too_many_reactions", ReactionError::TooManyReactions.to_string()));
        // One of the twenty is still fine, and so is switching one off.
        assert_eq!(decide("z", &react(1, "👍", true), &full).map(|r| r.count), Ok(2));
        assert_eq!(decide("z", &react(1, extra, false), &full).map(|r| r.changed), Ok(false));
    }

    #[test]
    fn range_rows_become_counts() {
        let c = counts_from_rows(vec![(1, "👍".to_string(), 2), (1, "🎉".to_string(), 1), (4, "👍".to_string(), 0)]);
        assert_eq!(c.len(), 1);
        assert_eq!(serde_json::to_string(&c.get(&1)).unwrap(), r#"{"🎉":1,"👍":2}"#);
    }

    /// 24 distinct emoji for the model tests.
    pub(crate) const EMOJI: [&str; 24] = [
        "👍", "👎", "❤️", "🎉", "😂", "😮", "😢", "🙏", "🔥", "👀", "🚀", "✅", "🇫🇷", "👍🏽", "👨‍👩‍👧", "1️⃣", "🦀", "🍕", "⭐", "💯",
        "🤔", "👏", "🙈", "🫠",
    ];
}
