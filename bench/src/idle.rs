//! `idle`: N idle hibernated sockets on one Counter of one dev server: what they cost in memory,
//! and how long one broadcast takes to reach all of them.
//!
//! 1. Create the counter (one HTTP increment, so its constructor finds its row and logs
//!    `wake Counter <name>` from then on), read the resident memory of the `wrangler dev` process
//!    group (npx → node → workerd, `/proc/<pid>/status` `VmRSS`, summed).
//! 2. Open `--sockets` WebSockets to it, `--concurrency` handshakes in flight, each reading its
//!    `snapshot`; read the memory again.
//! 3. Stay idle `--idle` seconds (the Counter has no heartbeat timeout, so the sockets send
//!    nothing), read the memory of the hibernated state.
//! 4. One `POST /api/counter/<name>/increment`: time until its event reached every socket (each
//!    must get exactly that event: `value` 2). The constructor's log line proves the object had
//!    been evicted. Then every socket sends the exact ping and the next frame must be the pong:
//!    nothing else (no duplicate) arrived.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, connect, next_json, now_us, Socket};
use crate::procfs;
use crate::server::Services;
use crate::stats::{self, Samples, Table};
use crate::{fail, Opts, Res};

/// How long every socket may take to see the broadcast, and to answer the sentinel ping.
const REACH_WITHIN: Duration = Duration::from_secs(120);

struct Config {
    sockets: usize,
    idle: Duration,
    concurrency: usize,
}

fn mb(kb: Option<u64>) -> String {
    kb.map_or_else(|| "-".to_owned(), |kb| format!("{:.1}", kb as f64 / 1024.0))
}

/// Memory per socket in KiB: the growth of `after` over `before`, over `n` sockets.
pub fn per_socket_kb(before: Option<u64>, after: Option<u64>, n: usize) -> String {
    match (before, after) {
        (Some(b), Some(a)) if n > 0 => format!("{:.1}", (a as f64 - b as f64) / n as f64),
        _ => "-".to_owned(),
    }
}

/// Wait for the counter's `increment` event with `value`, then (after `go`) prove with a ping
/// that nothing else arrived. Returns the arrival time.
async fn await_event(mut socket: Socket, value: i64, first: Arc<AtomicUsize>, mut go: watch::Receiver<bool>) -> Res<u64> {
    let frame = next_json(&mut socket, REACH_WITHIN).await;
    let at = now_us();
    first.fetch_add(1, Ordering::Relaxed);
    let frame = frame?;
    if frame.get("type").and_then(Value::as_str) != Some("increment") || frame.get("value").and_then(Value::as_i64) != Some(value) {
        return Err(fail(format!("expected the increment to {value}, got {frame}")));
    }
    let _ = tokio::time::timeout(REACH_WITHIN, go.wait_for(|g| *g)).await;
    socket.send(Message::Text(r#"{"type":"ping"}"#.to_owned())).await?;
    let next = next_json(&mut socket, REACH_WITHIN).await?;
    if next != json!({"type": "pong"}) {
        return Err(fail(format!("after the broadcast expected only the pong, got {next}")));
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
    Ok(at)
}

/// With `--direct true`: the Worker's own workerd entry, skipping wrangler's proxy workerd (dev
/// only, and six file descriptors per WebSocket). Found as the port of the group's other workerd
/// that answers `/health` with `"status":"ok"`.
async fn direct_base(http: &reqwest::Client, pgrp: Option<u32>, public_port: &str) -> Res<String> {
    let pgrp = pgrp.ok_or_else(|| fail("--direct needs a wrangler dev started by the driver"))?;
    for pid in procfs::group_pids(pgrp) {
        if procfs::parse_name(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()) != Some("workerd")
            || procfs::cmdline(pid).contains(&format!(":{public_port}"))
        {
            continue;
        }
        for port in procfs::listening_ports(pid) {
            let base = format!("http://127.0.0.1:{port}");
            let Ok(resp) = http.get(format!("{base}/health")).timeout(Duration::from_secs(5)).send().await else { continue };
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if body.get("status").and_then(Value::as_str) == Some("ok") {
                return Ok(base);
            }
        }
    }
    Err(fail("--direct: no port of the Worker's workerd answers /health"))
}

pub async fn run(services: &mut Services, opts: &Opts) -> Res<()> {
    let cfg = Config {
        sockets: opts.usize("sockets", 500)?,
        idle: opts.secs("idle", 20.0)?,
        concurrency: opts.usize("concurrency", 64)?.max(1),
    };
    if cfg.sockets == 0 {
        return Err(fail("idle needs sockets"));
    }
    let secret = services.secret().to_owned();
    let edge = services.edge().await?;
    let (mut base, log, pgrp) = (edge.base.clone(), edge.log(), edge.pgrp());
    let public_port = base.rsplit(':').next().unwrap_or_default().to_owned();
    let http = client::http()?;
    if opts.flag("direct") {
        base = direct_base(&http, pgrp, &public_port).await?;
        eprintln!("idle: --direct: the Worker's workerd answers at {base}");
    }
    let ws_base = base.replacen("http", "ws", 1);
    let name = client::unique("bench-idle");
    let writer = client::token(&secret, "bench-idle-writer")?;
    let inc = format!("{base}/api/counter/{name}/increment");
    http.post(&inc).bearer_auth(&writer).json(&json!({"amount": 1})).send().await?.error_for_status()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = pgrp.and_then(procfs::group_rss_kb);
    let by_process_before = pgrp.map(procfs::group_rss_by_process).unwrap_or_default();

    eprintln!("idle: opening {} sockets to counter {name} ({} in flight)", cfg.sockets, cfg.concurrency);
    let url = format!("{ws_base}/ws/counter/{name}");
    let connect_start = now_us();
    let gate = Arc::new(Semaphore::new(cfg.concurrency));
    let opened: Vec<Res<Socket>> = stream::iter(0..cfg.sockets)
        .map(|i| {
            let (url, secret, gate) = (url.clone(), secret.clone(), Arc::clone(&gate));
            async move {
                let _permit = gate.acquire().await?;
                let token = client::token(&secret, &format!("bench-idle{}", i % 100))?;
                let mut socket = connect(&url, Some(&token)).await?;
                let snapshot = next_json(&mut socket, client::RECV).await?;
                if snapshot.get("type").and_then(Value::as_str) != Some("snapshot") {
                    return Err(fail(format!("expected a snapshot, got {snapshot}")));
                }
                Ok(socket)
            }
        })
        .buffer_unordered(cfg.concurrency)
        .collect()
        .await;
    let connect_us = now_us().saturating_sub(connect_start);
    let mut sockets = Vec::with_capacity(cfg.sockets);
    let mut failures = Vec::new();
    for s in opened {
        match s {
            Ok(s) => sockets.push(s),
            Err(e) => failures.push(e.to_string()),
        }
    }
    if !failures.is_empty() {
        failures.dedup();
        return Err(fail(format!("{} of {} sockets failed to open: {}", failures.len(), cfg.sockets, failures.join("; "))));
    }
    let rss_connected = pgrp.and_then(procfs::group_rss_kb);
    eprintln!("idle: {} sockets open in {} s; idle {:?}", sockets.len(), stats::ms(connect_us / 1000), cfg.idle);
    tokio::time::sleep(cfg.idle).await;
    let rss_hibernated = pgrp.and_then(procfs::group_rss_kb);
    let by_process_hibernated = pgrp.map(procfs::group_rss_by_process).unwrap_or_default();
    let fds: Vec<Option<(usize, usize)>> = by_process_hibernated.iter().map(|(_, pid, _)| procfs::open_fds(*pid)).collect();

    let needle = edge_realtime_core::ops::wake_prefix("Counter", &name);
    let wakes_before = log.as_ref().map(|l| l.count(&needle));
    let (go_tx, go_rx) = watch::channel(false);
    let first = Arc::new(AtomicUsize::new(0));
    let n = sockets.len();
    let readers: Vec<_> =
        sockets.into_iter().map(|s| tokio::spawn(await_event(s, 2, Arc::clone(&first), go_rx.clone()))).collect();
    let t0 = now_us();
    let resp = http.post(&inc).bearer_auth(&writer).json(&json!({"amount": 1})).send().await?;
    let http_us = now_us().saturating_sub(t0);
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() || body.get("value").and_then(Value::as_i64) != Some(2) {
        failures.push(format!("the broadcast increment answered {status} {body}"));
    }
    // Every socket has its first frame (or failed) before any sentinel ping is sent.
    let mut arrivals = Samples::default();
    let until = tokio::time::Instant::now() + REACH_WITHIN;
    while first.load(Ordering::Relaxed) < n && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = go_tx.send(true);
    let mut last = 0;
    let mut reached = 0_usize;
    for r in readers {
        match r.await? {
            Ok(at) => {
                reached += 1;
                last = last.max(at);
                arrivals.push(at.saturating_sub(t0));
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    let rss_woken = pgrp.and_then(procfs::group_rss_kb);
    let proven = match (&log, wakes_before) {
        (Some(log), Some(before)) => {
            let ok = log.wait_for_more(&needle, before, Duration::from_secs(5)).await;
            if !ok {
                failures.push("the counter had not been evicted before the broadcast (no constructor log line): raise --idle".to_owned());
            }
            if ok { "yes" } else { "**no**" }.to_owned()
        }
        _ => "- (remote server)".to_owned(),
    };

    println!(
        "{} sockets (100 users) on one Counter, {} handshakes in flight; {:?} idle; then one HTTP increment \
         broadcast to all. Memory: VmRSS summed over the `wrangler dev` process group (npx, node, workerd).\n",
        cfg.sockets, cfg.concurrency, cfg.idle
    );
    let mut table = Table::new(&["", "value"]);
    let row = |t: &mut Table, k: &str, v: String| t.row(vec![k.to_owned(), v]);
    row(&mut table, "sockets open (of asked)", format!("{reached} of {}", cfg.sockets));
    row(&mut table, "time to open all (s)", stats::ms(connect_us / 1000));
    row(&mut table, "RSS before the sockets (MiB)", mb(rss_before));
    row(&mut table, "RSS with all sockets, object active (MiB)", mb(rss_connected));
    row(&mut table, "RSS with all sockets, object hibernated (MiB)", mb(rss_hibernated));
    row(&mut table, "RSS after the broadcast woke it (MiB)", mb(rss_woken));
    row(&mut table, "**memory per hibernated socket (KiB)**", format!("**{}**", per_socket_kb(rss_before, rss_hibernated, cfg.sockets)));
    row(&mut table, "memory per socket, active (KiB)", per_socket_kb(rss_before, rss_connected, cfg.sockets));
    let port = public_port;
    for ((name, pid, kb), fds) in by_process_hibernated.iter().zip(fds) {
        let before = by_process_before.iter().find(|(_, p, _)| p == pid).map(|(_, _, kb)| *kb);
        // wrangler dev runs two workerd: its proxy on the public port (dev only), and the Worker.
        let role = match name.as_str() {
            "workerd" if procfs::cmdline(*pid).contains(&format!(":{port}")) => "wrangler's proxy workerd, dev only",
            "workerd" => "the Worker's workerd",
            "node" => "wrangler (node)",
            _ => "",
        };
        let fds = fds.map_or_else(String::new, |(all, sockets)| format!(", {all} fds ({sockets} sockets)"));
        row(
            &mut table,
            &format!("· {name} {role} (pid {pid}): MiB before → hibernated, KiB per socket"),
            format!("{} → {}, {}{fds}", mb(before), mb(Some(*kb)), per_socket_kb(before, Some(*kb), cfg.sockets)),
        );
    }
    row(&mut table, "object evicted before the broadcast (log)", proven);
    row(&mut table, "broadcast: HTTP increment answered (ms)", stats::ms(http_us));
    row(&mut table, "broadcast: reached the first socket (ms)", arrivals.ms(0.0));
    row(&mut table, "broadcast: p50 / p99 socket (ms)", format!("{} / {}", arrivals.ms(0.5), arrivals.ms(0.99)));
    row(&mut table, "**broadcast: reached all sockets (ms)**", format!("**{}**", stats::ms(last.saturating_sub(t0))));
    row(&mut table, "lost / duplicates", format!("{} / 0 (ping sentinel)", cfg.sockets - reached.min(cfg.sockets)));
    table.print();
    if failures.is_empty() {
        Ok(())
    } else {
        failures.dedup();
        Err(fail(failures.join("\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::per_socket_kb;

    #[test]
    fn memory_per_socket() {
        assert_eq!(per_socket_kb(Some(100_000), Some(150_000), 5000), "10.0");
        assert_eq!(per_socket_kb(Some(100_000), Some(99_000), 1000), "-1.0");
        assert_eq!(per_socket_kb(None, Some(1), 1), "-");
        assert_eq!(per_socket_kb(Some(1), Some(2), 0), "-");
    }
}
