//! # edge-realtime
//!
//! Real-time state over WebSockets on Cloudflare Workers, in Rust: one entry Worker that
//! validates and authenticates, and hibernation-aware Durable Objects behind it.
//! The product contract is SPEC.md; README.md says how to run, test and deploy.
//!
//! ## Layout
//! - `crates/core` (`edge_realtime_core`): pure, natively tested cores — auth, routing table,
//!   frame decoding, one protocol core per DO, rate-limit algorithms, alarm schedule. No I/O.
//! - [`entry`]: the entry Worker — route → `Upgrade` check → auth → forward to a DO.
//! - [`kit`]: the shared hibernation kit every DO uses (accept with tags + attachment,
//!   auto-response, broadcast, reciprocated close, frame rejection, alarm, SQL, HTTP errors).
//! - [`objects`]: one file per Durable Object class, each an adapter over its core;
//!   `objects::game` is written on the kit's base trait (`kit::object`, docs/custom-object.md).
//! - `tests/e2e.rs`: the end-to-end suite against the real runtime (`wrangler dev`).

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
