//! Rate-limiter benchmark (docs/protocol.md §7, not a test): checks per second and latency percentiles of
//! `POST /api/ratelimit/check` against `wrangler dev`, for one hot key (one object, every check
//! serialized) and for many keys (one object each, spread across the runtime).
//!
//! `make bench-ratelimit` starts its own `wrangler dev` exactly as the e2e harness does (fresh
//! persistence, free port), or measures `BENCH_BASE_URL` (then `E2E_AUTH_SECRET` or `.dev.vars`
//! must hold that deployment's secret). Knobs: `BENCH_REQUESTS` (default 2000 per scenario),
//! `BENCH_CONCURRENCY` (32 in flight), `BENCH_KEYS` (500 for the many-keys run).
//! Every request is authenticated (HS256) by the entry Worker, then decided by the object, so
//! the numbers are end to end. The client runs in the same machine: treat them as indicative.

#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, unused_macros)]
#[path = "../tests/e2e/support.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(default)
}

struct Run {
    name: String,
    elapsed: Duration,
    latencies: Vec<Duration>,
    allowed: usize,
}

impl Run {
    fn percentile(&self, p: f64) -> Duration {
        let idx = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(idx).copied().unwrap_or_default()
    }

    fn print(&self) {
        let n = self.latencies.len();
        let per_sec = n as f64 / self.elapsed.as_secs_f64().max(1e-9);
        println!(
            "{:<34} {:>6} checks in {:>6.2} s = {:>7.0} checks/s   p50 {:>6.1} ms   p99 {:>6.1} ms   max {:>6.1} ms   ({} allowed)",
            self.name,
            n,
            self.elapsed.as_secs_f64(),
            per_sec,
            ms(self.percentile(0.50)),
            ms(self.percentile(0.99)),
            ms(self.latencies.last().copied().unwrap_or_default()),
            self.allowed,
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `requests` fixed-window checks, `concurrency` in flight, spread round-robin over `keys`.
async fn scenario(name: &str, keys: Arc<Vec<String>>, requests: usize, concurrency: usize) -> Result<Run, Error> {
    let token = Arc::new(support::server().admin_token("bench"));
    let url = Arc::new(format!("{}/api/ratelimit/check", support::server().base));
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (client, token, url, keys) = (client.clone(), Arc::clone(&token), Arc::clone(&url), Arc::clone(&keys));
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut allowed = 0;
            for i in (w..requests).step_by(concurrency) {
                let key = keys.get(i % keys.len().max(1)).cloned().unwrap_or_default();
                // A limit no run reaches: every check is a full read-decide-write.
                let body = json!({"key": key, "limit": 1_000_000_000, "window": 3_600_000}).to_string();
                let sent = Instant::now();
                let resp = client.post(url.as_str()).bearer_auth(token.as_str()).body(body).send().await?;
                let status = resp.status();
                let text = resp.text().await?;
                latencies.push(sent.elapsed());
                if status != 200 {
                    return Err::<_, Error>(format!("status {status}: {text}").into());
                }
                allowed += usize::from(text.contains(r#""allowed":true"#));
            }
            Ok((latencies, allowed))
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    let mut allowed = 0;
    for worker in workers {
        let (l, a) = worker.await??;
        latencies.extend(l);
        allowed += a;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(Run { name: name.to_owned(), elapsed, latencies, allowed })
}

async fn bench() -> Result<(), Error> {
    let requests = knob("BENCH_REQUESTS", 2000);
    let concurrency = knob("BENCH_CONCURRENCY", 32);
    let key_count = knob("BENCH_KEYS", 500);
    let tag = support::unique("bench");
    println!("rate-limiter benchmark against {} ({} requests per scenario, {} in flight)", support::server().base, requests, concurrency);
    println!("machine: {}", machine());

    let hot = Arc::new(vec![format!("{tag}-hot")]);
    scenario("warm-up", Arc::clone(&hot), 200.min(requests), concurrency.min(8)).await?;
    scenario("one key, sequential (1 in flight)", Arc::clone(&hot), requests / 4, 1).await?.print();
    scenario("one key", hot, requests, concurrency).await?.print();
    let many = Arc::new((0..key_count).map(|i| format!("{tag}-k{i}")).collect::<Vec<_>>());
    scenario(&format!("{key_count} keys (first touch)"), Arc::clone(&many), requests, concurrency).await?.print();
    scenario(&format!("{key_count} keys (warm)"), many, requests, concurrency).await?.print();
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next().map(str::to_owned)).unwrap_or_default();
    format!("{cpu}, {cores} cores, load {load}")
}

fn main() {
    if let Ok(base) = std::env::var("BENCH_BASE_URL") {
        std::env::set_var("E2E_BASE_URL", base);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let _ = support::server(); // starts wrangler dev (or checks BENCH_BASE_URL) before timing
    let outcome = runtime.block_on(bench());
    support::server().stop();
    if let Err(e) = outcome {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    }
}
