//! # edge-realtime-core
//!
//! The pure half of edge-realtime: protocol cores that take `now` as an argument and never do
//! I/O, so they run and are tested natively on a virtual clock. The Worker crate (repo root)
//! executes what they decide against the Workers runtime.
//!
//! ## Layout
//! - [`error`]: the HTTP error body and WebSocket close codes of docs/protocol.md §5.
//! - [`names`]: name validation (docs/protocol.md §4).
//! - [`accept`]: the runtime's limits on a hibernatable socket's tags and attachment.
//! - [`auth`]: HS256 JWT verify/mint and token extraction (docs/protocol.md §3).
//! - [`devtoken`]: the dev-only `POST /__dev/token` sign-in (`DEV_TOKENS=1`; never in production).
//! - [`route`]: the entry Worker's routing table (docs/protocol.md §4).
//! - [`frame`]: decoding client frames into protocol enums, mapping failures to close codes.
//! - [`query`]: `limit` / cursor query parameters.
//! - [`replay`]: `?since=` recovery plans, pruning cutoffs and history pages.
//! - [`schedule`]: many named timers multiplexed onto one DO alarm.
//! - [`time`]: milliseconds and ISO-8601.
//! - [`counter`]: the Counter protocol (docs/protocol.md §6.2).
//! - [`ratelimit`]: the RateLimiter's five algorithms, exact on an injected clock (docs/protocol.md §6.6).
//! - [`chat`]: the ChatRoom protocol (docs/protocol.md §6.3): validation, rate limit, history, pruning.
//! - [`session`]: the UserSession protocol: games, presence, logout-all (docs/protocol.md §6.1, §3).
//! - [`waddle`]: the Waddle protocol: community presence and typing relay (docs/protocol.md §6.4).
//! - [`channel`]: the Channel protocol: sequenced messages, typing expiry, participants (docs/protocol.md §6.5).
//! - [`reactions`]: live reactions on Channel messages: the emoji rule, exact per-emoji tallies.
//! - [`effects`]: what a kit object's hooks decide, as data (store, send, close, timers, calls), and typed ops.
//! - [`shard`]: spreading one Channel or Waddle over several objects (hash, names, in-order delivery).
//! - [`game`]: the GameServer protocol: a turn-based room of up to 4 players (docs/game.md).
//! - [`ops`]: operations: per-object stats counters and their flush policy, the structured log lines.
//! - [`voice`]: the VoiceChannel protocol: participants, session, recording, signalling relay (docs/voice.md).

pub mod accept;
pub mod auth;
pub mod channel;
pub mod chat;
pub mod content;
pub mod counter;
pub mod devtoken;
pub mod effects;
pub mod error;
pub mod frame;
pub mod game;
pub mod names;
pub mod ops;
pub mod query;
pub mod ratelimit;
pub mod reactions;
pub mod replay;
pub mod revocation;
pub mod route;
pub mod schedule;
pub mod session;
pub mod shard;
pub mod time;
pub mod voice;
pub mod waddle;

/// 2^53 − 1: the largest integer JavaScript (and so every client and the runtime) holds exactly.
pub const MAX_SAFE_INTEGER: i64 = 9_007_199_254_740_991;

/// A tiny deterministic generator for the cores' randomized unit tests (no extra dependency):
/// xorshift64. The property tests in `tests/props/` use proptest.
#[cfg(test)]
pub(crate) struct TestRng(pub u64);

#[cfg(test)]
impl TestRng {
    /// A value in `0..n` (`n` > 0).
    pub fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
