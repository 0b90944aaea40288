//! Property tests (issue 14): every frame decoder and HTTP body parser against arbitrary input,
//! and every core's invariants over random operation sequences on a virtual clock.
//!
//! `cargo test -p edge-realtime-core --test props` runs each property with proptest's default
//! case count (256, or `PROPTEST_CASES`); `make fuzz` runs the same tests with many more cases.
//! A failure is shrunk, printed, and its seed saved under `proptest-regressions/` (committed,
//! so every later run replays it first).

// Test code, like tests/e2e: a failed lookup fails the case (JSON indexing gives `Null`).
#![allow(clippy::indexing_slicing)]

mod common;

mod auth;
mod channel;
mod chat;
mod counter;
mod decoders;
mod game;
mod http;
mod misc;
mod ratelimit;
mod replay;
mod schedule;
mod session;
mod waddle;

/// Cases per property: `PROPTEST_CASES` when set (`make fuzz`), else 32 — enough for `make
/// test` to exercise every property in seconds. Each property's own config starts here.
pub fn config() -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(32);
    proptest::test_runner::Config { cases, ..proptest::test_runner::Config::default() }
}
