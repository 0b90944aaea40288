//! `sharded`: one channel's fan-out with N = 1 and N = 4 shards (`CHANNEL_SHARDS`,
//! docs/sharding.md), same load, same machine.
//!
//! R receivers join one channel (on N = 4 the Worker spreads them over the shards by user id);
//! S writers post M messages in all over HTTP, closed-loop (each waits for its answer), the sent
//! time in the content. Every receiver checks the sequences arrive gapless and records the
//! latency of each; after the writers stop the run waits for the last deliveries; whatever has
//! not arrived is lost. The room fill (all R joined, each with its `participants` list) is timed
//! too: every join tells the others (the full list up to 100 participants, a `participant_joined`
//! delta above, docs/protocol.md §6.5); receivers skip those frames.
//!
//! Caveat, printed with the table: locally every object shares this one machine (one workerd,
//! the same cores), so N = 4 cannot run its shards in parallel the way Cloudflare's network
//! does. The figure that carries over is the fan-out cost on the primary: per message it sends
//! one frame per socket with N = 1, and one internal call per shard with N = 4.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use serde_json::Value;

use crate::client::{self, connect_within, next_json, now_us, Socket};
use crate::procfs;
use crate::server::{Service, Services};
use crate::stats::{self, Samples, Table};
use crate::{fail, Opts, Res};

const CONNECT_IN_FLIGHT: usize = 32;
/// How long a handshake, or a socket's wait for its next frame while the room fills, may take:
/// measured, not limited (the storm scenario's deadline).
const FILL_WITHIN: Duration = Duration::from_secs(180);
const SHARDS: u32 = 4;

struct Config {
    receivers: usize,
    writers: usize,
    messages: usize,
    drain: Duration,
}

struct RunResult {
    /// Connecting all receivers (each got its `participants`).
    fill: Duration,
    deliveries: u64,
    window: Duration,
    latency: Samples,
    lost: u64,
    out_of_order: u64,
    spread: Vec<usize>,
    cpu: String,
}

pub async fn run(services: &mut Services, opts: &Opts) -> Res<()> {
    let config = Config {
        receivers: opts.usize("receivers", 2_000)?,
        writers: opts.usize("writers", 4)?.max(1),
        messages: opts.usize("messages", 200)?.max(1),
        drain: opts.secs("drain", 30.0)?,
    };
    let secret = services.secret().to_owned();
    let mut results = Vec::new();
    for shards in [1, SHARDS] {
        let service = if shards == 1 { services.edge().await? } else { services.edge_sharded(shards).await? };
        eprintln!("sharded: N = {shards}, {} receivers, {} messages from {} writers ...", config.receivers, config.messages, config.writers);
        results.push((shards, one_run(service, &secret, &config, shards).await));
    }
    let mut table = Table::new(&[
        "shards (N)",
        "receivers",
        "messages",
        "fill",
        "deliveries/s",
        "p50",
        "p99",
        "lost",
        "out of order",
        "sockets per shard",
        "primary fan-out per message",
        "CPU",
    ]);
    for (shards, result) in results {
        match result {
            Ok(mut r) => {
                let fan_out = if shards == 1 {
                    format!("{} socket sends", config.receivers)
                } else {
                    format!("{shards} calls (then ~{} sends per shard)", config.receivers.div_ceil(shards as usize))
                };
                table.row(vec![
                    shards.to_string(),
                    config.receivers.to_string(),
                    config.messages.to_string(),
                    format!("{:.1} s", r.fill.as_secs_f64()),
                    stats::rate(r.deliveries, r.window),
                    r.latency.ms(0.5),
                    r.latency.ms(0.99),
                    r.lost.to_string(),
                    r.out_of_order.to_string(),
                    if shards == 1 { "-".to_owned() } else { format!("{:?}", r.spread) },
                    fan_out,
                    r.cpu.clone(),
                ]);
            }
            Err(e) => table.row(vec![shards.to_string(), format!("failed: {e}")]),
        }
    }
    table.print();
    println!(
        "\nLocally every object shares this machine (one workerd, the same cores): N = 4 cannot run its shards \
         in parallel as Cloudflare's network does, and adds a hop per message. What carries over is the primary's \
         fan-out cost per message: one send per socket with N = 1, one call per shard with N = {SHARDS} (docs/sharding.md)."
    );
    Ok(())
}

async fn one_run(service: &Service, secret: &str, config: &Config, shards: u32) -> Res<RunResult> {
    let channel = client::unique(&format!("bench-shard{shards}"));
    let url = format!("{}/ws/channel/{channel}", service.ws_base());
    let users: Vec<String> = (0..config.receivers).map(|i| format!("{channel}-r{i}")).collect();
    let total = config.messages as i64;
    let drain = config.drain;
    // Set once the writers start: until then a reader waits for frames without a silence limit.
    let posting = Arc::new(AtomicBool::new(false));
    let filling = std::time::Instant::now();
    // Each socket is read from the moment it is in: the joins after it send it frames (lists,
    // then deltas), and a socket nobody reads would push back on the server through TCP.
    let receivers: Vec<Res<tokio::task::JoinHandle<Received>>> = stream::iter(users.iter())
        .map(|user| {
            let url = url.clone();
            let token = client::token(secret, user);
            let posting = Arc::clone(&posting);
            async move {
                let mut socket = connect_within(&url, Some(&token?), FILL_WITHIN).await?;
                let first = next_json(&mut socket, FILL_WITHIN).await?;
                if first.get("type").and_then(Value::as_str) != Some("participants") {
                    return Err(fail(format!("first frame {first}")));
                }
                Ok(tokio::spawn(receive(socket, total, drain, posting)))
            }
        })
        .buffer_unordered(CONNECT_IN_FLIGHT)
        .collect()
        .await;
    let receivers: Vec<tokio::task::JoinHandle<Received>> = receivers.into_iter().collect::<Res<_>>()?;
    let fill = filling.elapsed();
    let spread = match service.log() {
        Some(log) if shards > 1 => (0..shards).map(|k| log.count(&format!("shard accept Channel {channel}~shard-{k} user"))).collect(),
        _ => Vec::new(),
    };
    let started = now_us();
    let meter = procfs::CpuMeter::start(service.pgrp());
    posting.store(true, Ordering::SeqCst);
    let http = Arc::new(client::http()?);
    let per_writer = config.messages.div_ceil(config.writers);
    let mut writers = Vec::new();
    for w in 0..config.writers {
        let (http, base, channel) = (Arc::clone(&http), service.base.clone(), channel.clone());
        let token = client::token(secret, &format!("{channel}-w{w}"))?;
        let count = per_writer.min(config.messages.saturating_sub(w * per_writer));
        writers.push(tokio::spawn(async move {
            for i in 0..count {
                let body = serde_json::json!({"content": format!("{} {w} {i}", now_us()), "id": format!("w{w}-{i}")});
                let resp = http.post(format!("{base}/api/channel/{channel}/message")).bearer_auth(&token).json(&body).send().await?;
                if !resp.status().is_success() {
                    return Err(fail(format!("post answered {}", resp.status())));
                }
            }
            Res::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let mut result = RunResult {
        fill,
        deliveries: 0,
        window: Duration::ZERO,
        latency: Samples::default(),
        lost: 0,
        out_of_order: 0,
        spread,
        cpu: String::new(),
    };
    let mut last_us = started;
    for r in receivers {
        let (got, out_of_order, latency, last) = r.await?;
        result.deliveries += got;
        result.lost += u64::try_from(total).unwrap_or(0).saturating_sub(got);
        result.out_of_order += out_of_order;
        result.latency.extend(latency);
        last_us = last_us.max(last);
    }
    result.cpu = meter.report();
    result.window = Duration::from_micros(last_us.saturating_sub(started));
    Ok(result)
}

/// What one receiver saw: deliveries, frames out of order, latencies, the time of the last one.
type Received = (u64, u64, Samples, u64);

/// A receiver pings like a real client (docs/protocol.md §2 heartbeat): the fill of 2,000
/// sockets takes minutes, longer than `HEARTBEAT_TIMEOUT_MS` (90 s), and the server rightly
/// sweeps a socket that never pings.
const PING_EVERY: Duration = Duration::from_secs(20);

/// Read until sequence `total` (or, once the writers started, `drain` without a message),
/// pinging every [`PING_EVERY`]: deliveries, frames out of order, latencies, the time of the
/// last one. A socket the server closes ends its count (its missing messages are lost).
async fn receive(mut socket: Socket, total: i64, drain: Duration, posting: Arc<AtomicBool>) -> Received {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let (mut got, mut out_of_order, mut latency, mut last, mut expected) = (0_u64, 0_u64, Samples::default(), 0_u64, 1_i64);
    let mut pinged = tokio::time::Instant::now();
    // Since the writers started or the last message, whichever is later.
    let mut quiet_since: Option<tokio::time::Instant> = None;
    while expected <= total {
        let now = tokio::time::Instant::now();
        if posting.load(Ordering::SeqCst) {
            let since = *quiet_since.get_or_insert(now);
            if now.duration_since(since) >= drain {
                break;
            }
        }
        if now.duration_since(pinged) >= PING_EVERY {
            if socket.send(Message::Text(r#"{"type":"ping"}"#.into())).await.is_err() {
                break;
            }
            pinged = now;
        }
        let text = match tokio::time::timeout(Duration::from_secs(1), socket.next()).await {
            Err(_) => continue, // nothing this second: check the drain and the ping
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Close(frame)))) => {
                eprintln!("sharded: a receiver was closed by the server: {frame:?}");
                break;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => break,
        };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
        if frame.get("type").and_then(Value::as_str) != Some("message") {
            continue;
        }
        let now = now_us();
        quiet_since = posting.load(Ordering::SeqCst).then(tokio::time::Instant::now);
        let seq = frame.get("sequence").and_then(Value::as_i64).unwrap_or(0);
        if seq != expected {
            out_of_order += 1;
        }
        expected = seq.max(expected) + 1;
        got += 1;
        last = now;
        if let Some(sent) = frame.get("content").and_then(Value::as_str).and_then(|c| c.split(' ').next()).and_then(|t| t.parse::<u64>().ok()) {
            latency.push(now.saturating_sub(sent));
        }
    }
    (got, out_of_order, latency, last)
}
