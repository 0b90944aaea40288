//! End-to-end suite: the real Workers runtime (`wrangler dev`, workerd) over real HTTP and
//! WebSockets. One server for the run (or `E2E_BASE_URL` for a deployment); every test uses
//! its own object names, so tests run in parallel. Restart tests hold the server exclusively.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

mod chat;
mod counter;
mod foundation;
mod game;
mod voice;
mod session;
mod channel;
mod reactions;
mod waddle;
mod ratelimit;
mod liveness;
mod proxy;
mod sharding;
mod ops;

use std::future::Future;
use std::sync::OnceLock;

use libtest_mimic::{Arguments, Failed, Trial};
use support::{server, TestResult};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime"))
}

/// A test that shares the server with the others.
pub fn trial<F, Fut>(name: &str, f: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = TestResult> + Send + 'static,
{
    Trial::test(name, move || {
        let _shared = server().restart_lock.read().map_err(|_| Failed::from("lock poisoned"))?;
        runtime().block_on(f()).map_err(|e| Failed::from(e.to_string()))
    })
}

/// A test that restarts `wrangler dev`: runs alone (skipped against a deployment).
pub fn restart_trial<F, Fut>(name: &str, f: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = TestResult> + Send + 'static,
{
    let remote = std::env::var_os("E2E_BASE_URL").is_some();
    Trial::test(name, move || {
        let _exclusive = server().restart_lock.write().map_err(|_| Failed::from("lock poisoned"))?;
        runtime().block_on(f()).map_err(|e| Failed::from(e.to_string()))
    })
    .with_ignored_flag(remote)
}

/// Tests spend nearly all their time waiting — on frames, on the server, on hibernation idles of
/// 12 s and more — not computing, so many run per core: 12 per CPU (24 on a 2-core machine),
/// at least 8, at most 64 so a large machine does not flood one local workerd. `--test-threads`
/// overrides it. Load only makes the run slower: every wait in the suite has a generous deadline.
fn default_test_threads() -> usize {
    let cpus = std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(2);
    cpus.saturating_mul(12).clamp(8, 64)
}

fn main() {
    let mut args = Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = Some(default_test_threads());
    }
    let mut trials = Vec::new();
    trials.extend(foundation::tests());
    trials.extend(counter::tests());
    trials.extend(session::tests());
    trials.extend(chat::tests());
    trials.extend(waddle::tests());
    trials.extend(channel::tests());
    trials.extend(reactions::tests());
    trials.extend(ratelimit::tests());
    trials.extend(game::tests());
    trials.extend(voice::tests());
    trials.extend(liveness::tests());
    trials.extend(sharding::tests());
    trials.extend(ops::tests());

    let listing = args.list;
    if !listing {
        let _ = server();
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if !listing {
        sharding::stop();
        server().stop();
    }
    conclusion.exit();
}
