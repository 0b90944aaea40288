//! `counter`: mutation throughput of one Counter object. K closed-loop clients increment the same
//! counter by 1, over HTTP (`POST /api/counter/:name/increment`) and over WebSockets
//! (`{"type":"increment","amount":1,"id"}` → `ack`, every socket also receiving every event).
//! Every answer is checked, and the final value must equal the number of increments.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, connect, next_json, now_us, Socket};
use crate::server::Services;
use crate::stats::{self, Samples, Table};
use crate::{fail, Opts, Res};

struct Config {
    clients: usize,
    warmup: Duration,
    duration: Duration,
}

/// What one client did.
#[derive(Default)]
struct ClientStats {
    total: u64,
    measured: u64,
    latency: Samples,
}

struct Outcome {
    label: &'static str,
    stats: ClientStats,
    final_value: i64,
    errors: Vec<String>,
}

fn as_us(d: Duration) -> Res<u64> {
    Ok(u64::try_from(d.as_micros())?)
}

async fn http_client(http: reqwest::Client, url: String, token: String, measure_from_us: u64, end_us: u64) -> Res<ClientStats> {
    let mut stats = ClientStats::default();
    loop {
        let start = now_us();
        if start >= end_us {
            return Ok(stats);
        }
        let resp = http.post(&url).bearer_auth(&token).json(&json!({"amount": 1})).send().await?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() || body.get("type").and_then(Value::as_str) != Some("increment") {
            return Err(fail(format!("increment answered {status} {body}")));
        }
        stats.total += 1;
        if start >= measure_from_us {
            stats.measured += 1;
            stats.latency.push(now_us().saturating_sub(start));
        }
    }
}

async fn ws_client(mut socket: Socket, index: usize, measure_from_us: u64, end_us: u64) -> Res<ClientStats> {
    let mut stats = ClientStats::default();
    loop {
        let start = now_us();
        if start >= end_us {
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
            return Ok(stats);
        }
        let id = format!("c{index}-{}", stats.total);
        socket.send(Message::Text(json!({"type": "increment", "amount": 1, "id": id}).to_string())).await?;
        loop {
            let frame = next_json(&mut socket, client::RECV).await?;
            match frame.get("type").and_then(Value::as_str) {
                Some("ack") if frame.get("id").and_then(Value::as_str) == Some(id.as_str()) => break,
                Some("error") => return Err(fail(format!("increment answered {frame}"))),
                _ => continue,
            }
        }
        stats.total += 1;
        if start >= measure_from_us {
            stats.measured += 1;
            stats.latency.push(now_us().saturating_sub(start));
        }
    }
}

async fn final_value(http: &reqwest::Client, base: &str, name: &str, token: &str) -> Res<i64> {
    let body: Value = http.get(format!("{base}/api/counter/{name}")).bearer_auth(token).send().await?.json().await?;
    body.get("value").and_then(Value::as_i64).ok_or_else(|| fail(format!("counter answered {body}")))
}

/// Join the clients' tasks: sum what they did, collect what went wrong.
async fn gather(label: &'static str, handles: Vec<tokio::task::JoinHandle<Res<ClientStats>>>) -> (ClientStats, Vec<String>) {
    let mut sum = ClientStats::default();
    let mut errors = Vec::new();
    for handle in handles {
        match handle.await {
            Ok(Ok(s)) => {
                sum.total += s.total;
                sum.measured += s.measured;
                sum.latency.extend(s.latency);
            }
            Ok(Err(e)) => errors.push(format!("{label}: {e}")),
            Err(e) => errors.push(format!("{label}: task failed: {e}")),
        }
    }
    errors.dedup();
    (sum, errors)
}

async fn run_http(base: &str, secret: &str, cfg: &Config) -> Res<Outcome> {
    let name = client::unique("bench-http");
    let http = client::http()?;
    let url = format!("{base}/api/counter/{name}/increment");
    let measure_from_us = now_us() + as_us(cfg.warmup)?;
    let end_us = measure_from_us + as_us(cfg.duration)?;
    let mut handles = Vec::new();
    for k in 0..cfg.clients {
        let token = client::token(secret, &format!("bench-h{k}"))?;
        handles.push(tokio::spawn(http_client(http.clone(), url.clone(), token, measure_from_us, end_us)));
    }
    let (stats, errors) = gather("HTTP", handles).await;
    let final_value = final_value(&http, base, &name, &client::token(secret, "bench-check")?).await?;
    Ok(Outcome { label: "HTTP POST increment", stats, final_value, errors })
}

async fn run_ws(base: &str, ws_base: &str, secret: &str, cfg: &Config) -> Res<Outcome> {
    let name = client::unique("bench-ws");
    let url = format!("{ws_base}/ws/counter/{name}");
    let mut sockets = Vec::new();
    for k in 0..cfg.clients {
        let token = client::token(secret, &format!("bench-w{k}"))?;
        let mut socket = connect(&url, Some(&token)).await?;
        let snapshot = next_json(&mut socket, client::RECV).await?;
        if snapshot.get("type").and_then(Value::as_str) != Some("snapshot") {
            return Err(fail(format!("expected a snapshot on connect, got {snapshot}")));
        }
        sockets.push(socket);
    }
    let measure_from_us = now_us() + as_us(cfg.warmup)?;
    let end_us = measure_from_us + as_us(cfg.duration)?;
    let handles = sockets.into_iter().enumerate().map(|(k, s)| tokio::spawn(ws_client(s, k, measure_from_us, end_us))).collect();
    let (stats, errors) = gather("WebSocket", handles).await;
    let final_value = final_value(&client::http()?, base, &name, &client::token(secret, "bench-check")?).await?;
    Ok(Outcome { label: "WebSocket increment + ack", stats, final_value, errors })
}

pub async fn run(services: &mut Services, opts: &Opts) -> Res<()> {
    let cfg = Config {
        clients: opts.usize("clients", 10)?,
        warmup: opts.secs("warmup", 2.0)?,
        duration: opts.secs("duration", 10.0)?,
    };
    if cfg.clients == 0 || cfg.duration.is_zero() {
        return Err(fail("counter needs clients and a duration"));
    }
    let mode = opts.text("mode", "both");
    let secret = services.secret().to_owned();
    let edge = services.edge().await?;
    let mut outcomes = Vec::new();
    if matches!(mode, "both" | "http") {
        eprintln!("counter: HTTP, {} clients, {:?} + {:?} warmup", cfg.clients, cfg.duration, cfg.warmup);
        outcomes.push(run_http(&edge.base, &secret, &cfg).await?);
    }
    if matches!(mode, "both" | "ws") {
        eprintln!("counter: WebSocket, {} clients, {:?} + {:?} warmup", cfg.clients, cfg.duration, cfg.warmup);
        outcomes.push(run_ws(&edge.base, &edge.ws_base(), &secret, &cfg).await?);
    }

    println!(
        "{} closed-loop clients incrementing one counter by 1; {:?} measured after {:?} warmup. \
         Over WebSockets every increment is also broadcast to all {} sockets.\n",
        cfg.clients, cfg.duration, cfg.warmup, cfg.clients
    );
    let mut table = Table::new(&["mode", "ops/s", "p50 ms", "p99 ms", "max ms", "increments", "final value", "exact"]);
    let mut failures = Vec::new();
    for o in &mut outcomes {
        let exact = i64::try_from(o.stats.total).ok() == Some(o.final_value);
        table.row(vec![
            o.label.to_owned(),
            stats::rate(o.stats.measured, cfg.duration),
            o.stats.latency.ms(0.50),
            o.stats.latency.ms(0.99),
            o.stats.latency.ms(1.0),
            o.stats.total.to_string(),
            o.final_value.to_string(),
            if exact { "yes".to_owned() } else { "**NO**".to_owned() },
        ]);
        failures.append(&mut o.errors);
        if !exact {
            failures.push(format!("{}: {} increments acknowledged but the value is {}", o.label, o.stats.total, o.final_value));
        }
    }
    table.print();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(fail(failures.join("\n")))
    }
}
