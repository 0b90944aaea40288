//! # edge-realtime-bench
//!
//! The project's benchmark command (docs/protocol.md §7). It starts its own `wrangler dev` for the Worker
//! (and, for the chat comparison, for a bare JavaScript baseline), drives it over real HTTP and
//! WebSockets from this process, prints a Markdown table with the machine it ran on, and stops
//! every server it started. `BENCH_BASE_URL` / `BENCH_BASELINE_URL` point it at running servers
//! instead. See docs/benchmarks.md.
//!
//! ## Layout
//! - `main.rs`: command line, the machine header, dispatch, Ctrl-C.
//! - [`server`]: `wrangler dev` on free ports with a fresh `--persist-to`, killed as a group.
//! - [`client`]: tokens, WebSocket and HTTP helpers, the benchmark clock.
//! - [`stats`]: percentiles and Markdown tables.
//! - [`procfs`]: memory and CPU of process groups from `/proc`.
//! - [`chat`], [`counter`], [`wake`], [`size`], [`sharded`], [`idle`], [`storm`]: one scenario
//!   per file (`all` runs the first five; `idle` and `storm` are scale runs, asked for by name).

mod chat;
mod client;
mod counter;
mod idle;
mod procfs;
mod server;
mod sharded;
mod size;
mod stats;
mod storm;
mod wake;

use std::collections::HashMap;
use std::time::Duration;

use server::Services;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Res<T> = Result<T, BoxError>;

/// Make an error out of a message.
pub fn fail(msg: impl Into<String>) -> BoxError {
    msg.into().into()
}

const USAGE: &str = "usage: edge-realtime-bench <all|chat|counter|wake|size|sharded|idle|storm> [--option value ...]

chat     --receivers 50 --senders 5 --duration 15 --warmup 3 --drain 10 --rounds 3 --client-ids false --target both|edge|baseline
counter  --clients 10 --duration 10 --warmup 2 --mode both|http|ws
wake     --objects 3 --rounds 3 --idle 15 --hot 20 --target all|counter|chat|baseline
size     --no-build true   (measure build/index_bg.wasm as it is)
sharded  --receivers 2000 --writers 4 --messages 200 --drain 30   (one channel, CHANNEL_SHARDS 1 vs 4)
idle     --sockets 500 --idle 20 --concurrency 64 --direct false   (not in `all`)
storm    --clients 200 --users 20 --before 3 --missed 5 --live-ms 100 --concurrency 64 --target both|edge|baseline   (not in `all`)

BENCH_BASE_URL / BENCH_SHARDED_URL / BENCH_BASELINE_URL: use running servers instead of starting wrangler dev.
BENCH_VERBOSE=1: echo wrangler's output.";

/// `--key value` options after the scenario name.
pub struct Opts {
    values: HashMap<String, String>,
}

impl Opts {
    fn parse(args: &[String]) -> Res<Opts> {
        let mut values = HashMap::new();
        let mut it = args.iter();
        while let Some(key) = it.next() {
            let key = key.strip_prefix("--").ok_or_else(|| fail(format!("unexpected argument {key}\n\n{USAGE}")))?;
            let value = it.next().ok_or_else(|| fail(format!("--{key} needs a value\n\n{USAGE}")))?;
            values.insert(key.to_owned(), value.clone());
        }
        Ok(Opts { values })
    }

    pub fn usize(&self, key: &str, default: usize) -> Res<usize> {
        self.values.get(key).map_or(Ok(default), |v| v.parse().map_err(|_| fail(format!("--{key} must be a whole number"))))
    }

    pub fn secs(&self, key: &str, default: f64) -> Res<Duration> {
        let secs = self.values.get(key).map_or(Ok(default), |v| v.parse::<f64>().map_err(|_| fail(format!("--{key} must be seconds"))))?;
        Duration::try_from_secs_f64(secs).map_err(|_| fail(format!("--{key} must be a non-negative number of seconds")))
    }

    pub fn text<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.values.get(key).map_or(default, String::as_str)
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.values.get(key).map(String::as_str), Some("true" | "1" | "yes"))
    }
}

/// What every table starts with: where and how the numbers were taken.
fn print_header(scenario: &str) {
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    println!("\n## {scenario}\n");
    println!("| | |\n|---|---|");
    println!("| machine | {} |", stats::machine());
    println!("| load average (1/5/15 min) | {} |", stats::load_average());
    println!("| runtime | {} |", stats::runtime());
    println!("| date (UTC) | {} |", stats::date());
    println!("| command | `edge-realtime-bench {command}` |\n");
}

async fn run(scenario: &str, opts: &Opts) -> Res<()> {
    let mut services = Services::new()?;
    let all = scenario == "all";
    // Size first: rebuilding under a running `wrangler dev` would reload the Worker mid-run.
    if all || scenario == "size" {
        print_header("WASM size");
        size::run(opts)?;
    }
    if all || scenario == "counter" {
        print_header("Counter mutation throughput");
        counter::run(&mut services, opts).await?;
    }
    if all || scenario == "wake" {
        print_header("Wake from hibernation");
        wake::run(&mut services, opts).await?;
    }
    if all || scenario == "chat" {
        print_header("Chat fan-out");
        chat::run(&mut services, opts).await?;
    }
    if all || scenario == "sharded" {
        print_header("Sharded channel fan-out");
        sharded::run(&mut services, opts).await?;
    }
    if scenario == "idle" {
        print_header("Idle hibernated sockets");
        idle::run(&mut services, opts).await?;
    }
    if scenario == "storm" {
        print_header("Reconnect storm");
        storm::run(&mut services, opts).await?;
    }
    if !all && !matches!(scenario, "size" | "counter" | "wake" | "chat" | "sharded" | "idle" | "storm") {
        return Err(fail(format!("unknown scenario {scenario:?}\n\n{USAGE}")));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((scenario, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return std::process::ExitCode::from(2);
    };
    if matches!(scenario.as_str(), "-h" | "--help" | "help") {
        println!("{USAGE}");
        return std::process::ExitCode::SUCCESS;
    }
    let outcome = Opts::parse(rest).and_then(|opts| {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(async {
            // Dropping `run` on Ctrl-C drops its `Services`, which kill the wrangler process groups
            // (they live in their own groups, so the terminal's SIGINT does not reach them).
            tokio::select! {
                outcome = run(scenario, &opts) => outcome,
                _ = tokio::signal::ctrl_c() => Err(fail("interrupted")),
            }
        })
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-realtime-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
