//! The servers under test: `wrangler dev` for the Worker (the project's `wrangler.toml`) and for
//! the JS baseline (`bench/baseline/wrangler.toml`), each on free ports with a fresh
//! `--persist-to` directory, started on first use and killed as a process group (npx → node →
//! workerd) when dropped, Ctrl-C included.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_realtime_devserver as devserver;

use crate::{fail, Res};

/// Vars the Worker runs with under benchmark: the per-connection chat limit and the upgrade limit
/// are lifted (the benchmark is the only client), and constructor runs are logged so the wake
/// scenario can prove an object really was evicted.
const EDGE_VARS: &[&str] = &[
    "CHAT_RATE_LIMIT_MESSAGES:1000000",
    "CHAT_RATE_LIMIT_WINDOW_MS:1000",
    "WS_UPGRADES_PER_MINUTE:1000000",
    "DEBUG_WAKE:1",
];

/// How long a first start may take: `wrangler dev` builds the WASM (release) first.
const READY_WITHIN: Duration = Duration::from_secs(900);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Edge,
    /// The Worker with `CHANNEL_SHARDS` / `WADDLE_SHARDS` set (the `sharded` scenario).
    EdgeSharded(u32),
    Baseline,
}

/// One server: its base URL, and the `wrangler dev` behind it when we started it.
pub struct Service {
    pub base: String,
    local: Option<Local>,
    log: Arc<Mutex<Vec<String>>>,
}

struct Local {
    child: Child,
    persist: PathBuf,
}

/// The lines wrangler printed (per-request lines left out).
#[derive(Clone)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.0.lock().map(|l| l.iter().filter(|line| line.contains(needle)).count()).unwrap_or(0)
    }

    /// Wait (up to `within`) until more than `before` lines contain `needle`.
    pub async fn wait_for_more(&self, needle: &str, before: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.count(needle) > before {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The servers a run needs, started on first use.
pub struct Services {
    secret: String,
    edge: Option<Service>,
    sharded: Option<Service>,
    baseline: Option<Service>,
}

pub fn project_root() -> PathBuf {
    devserver::project_root()
}

fn free_port() -> Res<u16> {
    Ok(devserver::free_port()?)
}

/// `AUTH_SECRET` from `.dev.vars` (what `wrangler dev` gives the Worker), or `BENCH_AUTH_SECRET`.
fn read_secret() -> Res<String> {
    devserver::read_secret("BENCH_AUTH_SECRET").map_err(fail)
}

impl Services {
    pub fn new() -> Res<Services> {
        Ok(Services { secret: read_secret()?, edge: None, sharded: None, baseline: None })
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// edge-realtime: `BENCH_BASE_URL`, or a `wrangler dev` of the project.
    pub async fn edge(&mut self) -> Res<&Service> {
        if self.edge.is_none() {
            self.edge = Some(Service::start(Kind::Edge, "BENCH_BASE_URL").await?);
        }
        self.edge.as_ref().ok_or_else(|| fail("edge server missing"))
    }

    /// edge-realtime with `CHANNEL_SHARDS` and `WADDLE_SHARDS` = `shards`: `BENCH_SHARDED_URL`, or
    /// a second `wrangler dev` of the project.
    pub async fn edge_sharded(&mut self, shards: u32) -> Res<&Service> {
        if self.sharded.is_none() {
            self.sharded = Some(Service::start(Kind::EdgeSharded(shards), "BENCH_SHARDED_URL").await?);
        }
        self.sharded.as_ref().ok_or_else(|| fail("sharded server missing"))
    }

    /// The JS baseline: `BENCH_BASELINE_URL`, or a `wrangler dev` of `bench/baseline`.
    pub async fn baseline(&mut self) -> Res<&Service> {
        if self.baseline.is_none() {
            self.baseline = Some(Service::start(Kind::Baseline, "BENCH_BASELINE_URL").await?);
        }
        self.baseline.as_ref().ok_or_else(|| fail("baseline server missing"))
    }
}

impl Service {
    async fn start(kind: Kind, url_var: &str) -> Res<Service> {
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Ok(base) = std::env::var(url_var) {
            return Ok(Service { base: base.trim_end_matches('/').to_owned(), local: None, log });
        }
        let port = free_port()?;
        let persist = project_root().join("target").join(format!("bench-state-{}-{kind:?}", std::process::id()));
        let _ = std::fs::remove_dir_all(&persist);
        eprintln!("starting wrangler dev ({kind:?}) on 127.0.0.1:{port} ...");
        let child = spawn(kind, port, &persist, &log)?;
        let mut service = Service { base: format!("http://127.0.0.1:{port}"), local: Some(Local { child, persist }), log };
        service.wait_ready().await?;
        eprintln!("wrangler dev ({kind:?}) ready");
        Ok(service)
    }

    pub fn ws_base(&self) -> String {
        self.base.replacen("http", "ws", 1)
    }

    /// The process group of the `wrangler dev` we started (npx → node → workerd), for memory and
    /// CPU readings from `/proc`.
    pub fn pgrp(&self) -> Option<u32> {
        self.local.as_ref().map(|l| l.child.id())
    }

    /// wrangler's output, when we started it (a remote server's logs are out of reach).
    pub fn log(&self) -> Option<Log> {
        self.local.as_ref().map(|_| Log(Arc::clone(&self.log)))
    }

    fn log_tail(&self) -> String {
        self.log.lock().map(|l| l.iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> Res<()> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if let Ok(resp) = client.get(format!("{}/health", self.base)).send().await {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
            if self.exited() {
                return Err(fail(format!("wrangler dev exited before it was ready:\n{}", self.log_tail())));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(fail(format!("wrangler dev did not become ready on {}:\n{}", self.base, self.log_tail())))
    }

    fn exited(&mut self) -> bool {
        self.local.as_mut().is_some_and(|l| matches!(l.child.try_wait(), Ok(Some(_))))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(local) = &mut self.local {
            kill_group(&mut local.child);
            let _ = std::fs::remove_dir_all(&local.persist);
        }
    }
}

fn spawn(kind: Kind, port: u16, persist: &Path, log: &Arc<Mutex<Vec<String>>>) -> Res<Child> {
    let args: Vec<String> = match kind {
        Kind::Edge => EDGE_VARS.iter().flat_map(|v| ["--var".to_owned(), (*v).to_owned()]).collect(),
        Kind::EdgeSharded(n) => EDGE_VARS
            .iter()
            .map(|v| (*v).to_owned())
            .chain([format!("CHANNEL_SHARDS:{n}"), format!("WADDLE_SHARDS:{n}")])
            .flat_map(|v| ["--var".to_owned(), v])
            .collect(),
        Kind::Baseline => vec!["--config".into(), "bench/baseline/wrangler.toml".into()],
    };
    let label = match kind {
        Kind::Edge => "wrangler Edge",
        Kind::EdgeSharded(_) => "wrangler EdgeSharded",
        Kind::Baseline => "wrangler Baseline",
    };
    // Per-request lines are not kept: only what a scenario may look for.
    let keep: fn(&str) -> bool =
        |line| line.contains("wake") || line.contains("shard accept") || line.contains("rror") || !line.contains("[wrangler:info]");
    let opts = devserver::Options { port, persist, args, verbose_env: "BENCH_VERBOSE", label, keep };
    devserver::spawn(&opts, log)
        .map_err(|e| fail(format!("failed to start `npx wrangler dev` ({e}); run `make setup` first")))
}

fn kill_group(child: &mut Child) {
    devserver::kill_group(child);
}
