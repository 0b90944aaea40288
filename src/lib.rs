//! # edge-realtime
//!
//! Real-time state over WebSockets on Cloudflare Workers, in Rust: one entry Worker that
//! validates and authenticates, and hibernation-aware Durable Objects behind it.
//! The product contract is docs/protocol.md; README.md says how to run, test and deploy.
//!
//! ## Layout
//! - `crates/core` (`edge_realtime_core`): pure, natively tested cores — auth, routing table
//!   (typed ops per class), frame decoding, `Effects`, one protocol core per DO, revocation,
//!   rate-limit algorithms, alarm schedule. No I/O.
//! - [`entry`]: the entry Worker — route → `Upgrade` check → auth → forward to a DO.
//! - [`kit`]: the shared hibernation kit. `kit::object` is the base every DO is written on:
//!   the `RealtimeObject` trait (schema, typed ops, hooks returning `Effects`) and `Host`,
//!   the one Durable Object shell (schema + auto-response + wake log, on_wake reconcile, op
//!   routing, accept with tags + attachment, gone-once departures, heartbeat sweep, timer
//!   table, revoke, the per-object stats and lifecycle log lines, calls to other objects with
//!   retries and replies, store → send → close → timers → calls → release), compiled once: it
//!   is not generic and reaches each object through the object-safe `Hosted` trait, which a
//!   thin synchronous `Adapter<T>` implements for every `RealtimeObject`; `durable_object!`
//!   declares the class, its handlers forwarding to `Host` (docs/custom-object.md).
//!   `kit::coalesce` queues the frames that only store and send, so the frames of one turn share
//!   a SQLite transaction (`QueuedIds`: a `clientId` dedup that keeps it so). The rest are the
//!   primitives it uses.
//! - [`objects`]: one file per Durable Object class, each read top to bottom as its protocol:
//!   a `RealtimeObject` over its core (Counter, UserSession, ChatRoom, Waddle, Channel,
//!   RateLimiter, GameServer, VoiceChannel); the revocation op shared by all lives in
//!   `objects::mod`, the primary ↔ shard plumbing of sharded Channels and Waddles in
//!   `objects::sharding` (docs/sharding.md).
//! - `docs/openapi.json`: the HTTP contract, served at `GET /openapi.json`.
//! - `tests/e2e/`: the end-to-end suite against the real runtime (`wrangler dev`);
//!   `crates/core/tests/props/`: the property tests.

pub mod entry;
pub mod kit;
pub mod objects;

use worker::{event, Context, Env, Request, Response};

pub use objects::channel::Channel;
pub use objects::chat::ChatRoom;
pub use objects::counter::Counter;
pub use objects::game::GameServer;
pub use objects::rate_limiter::RateLimiter;
pub use objects::user_session::UserSession;
pub use objects::voice::VoiceChannel;
pub use objects::waddle::Waddle;

#[event(start)]
fn start() {
    // A panic resets the whole instance; at least make it legible in the logs.
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    entry::handle(req, env).await
}
