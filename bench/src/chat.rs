//! `chat`: fan-out throughput and latency of one room under load, edge-realtime's ChatRoom
//! against the bare JS baseline (`bench/baseline`), same load, same machine.
//!
//! R receivers and S senders join one room. Each sender is closed-loop: it sends
//! `{"type":"message","content":"bench <sender> <n> <phase> <sent µs>"}` and waits for its own
//! message to come back before sending the next. Every receiver records, for every bench message,
//! the time from send to receipt (one clock: all clients are in this process). Messages sent
//! during the warmup (phase 0) are delivered and checked but not measured. After the senders stop,
//! the run waits for every message to reach every receiver; whatever has not is lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, connect, next_json, now_us, Socket};
use crate::procfs;
use crate::server::Services;
use crate::stats::{self, Samples, Table};
use crate::{fail, Opts, Res};

/// Receiver handshakes in flight while a room fills (one at a time made 1,000 receivers take
/// minutes: every join is announced to everyone already in).
const CONNECT_IN_FLIGHT: usize = 32;

struct Config {
    receivers: usize,
    senders: usize,
    warmup: Duration,
    duration: Duration,
    /// How long to wait, after the senders stop, for the last deliveries.
    drain: Duration,
    /// Each message carries a client id (`"id"`), as the SDK's `send` does: the server then
    /// checks it for a repeat before storing.
    client_ids: bool,
}

/// What one room run measured.
struct RoomResult {
    label: &'static str,
    sent_measured: u64,
    sent_total: u64,
    /// Deliveries of measured messages to receivers, and the time they took to arrive.
    delivered_measured: u64,
    delivery_window: Duration,
    latency: Samples,
    lost: u64,
    duplicates: u64,
    errors: Vec<String>,
    /// CPU of the driver and of the server over the measured run, from `/proc`.
    cpu: String,
}

impl RoomResult {
    fn delivered_per_sec(&self) -> f64 {
        let secs = self.delivery_window.as_secs_f64();
        if secs > 0.0 {
            self.delivered_measured as f64 / secs
        } else {
            0.0
        }
    }
}

/// One bench message as a receiver sees it.
struct Stamp {
    sender: usize,
    n: u64,
    measured: bool,
    sent_us: u64,
}

/// The bench stamp of a frame: edge-realtime sends `{"type":"message","message":{..,"content"}}`,
/// the baseline echoes `{"type":"message","content"}`.
fn stamp(frame: &Value) -> Option<Stamp> {
    if frame.get("type")?.as_str()? != "message" {
        return None;
    }
    let content = frame.get("message").and_then(|m| m.get("content")).or_else(|| frame.get("content"))?.as_str()?;
    let mut fields = content.strip_prefix("bench ")?.split(' ');
    Some(Stamp {
        sender: fields.next()?.parse().ok()?,
        n: fields.next()?.parse().ok()?,
        measured: fields.next()? == "1",
        sent_us: fields.next()?.parse().ok()?,
    })
}

#[derive(Default)]
struct Shared {
    /// Distinct (message, receiver) deliveries so far, warmup included.
    delivered: AtomicU64,
}

#[derive(Default)]
struct ReceiverStats {
    delivered_measured: u64,
    duplicates: u64,
    last_measured_us: u64,
    latency: Samples,
    error: Option<String>,
}

async fn receive(mut socket: Socket, senders: usize, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> ReceiverStats {
    let mut stats = ReceiverStats::default();
    // Highest n seen per sender: a sender's messages arrive in order (one DO, one socket).
    let mut last = vec![0_u64; senders];
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + client::HEARTBEAT_EVERY, client::HEARTBEAT_EVERY);
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => break,
            _ = heartbeat.tick() => {
                if let Err(e) = socket.send(Message::Text(client::PING.to_owned())).await {
                    stats.error = Some(format!("receiver heartbeat failed: {e}"));
                    break;
                }
                continue;
            }
            msg = socket.next() => msg,
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                stats.error = Some(format!("receiver closed by the server: {frame:?}"));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                stats.error = Some(format!("receiver socket error: {e}"));
                break;
            }
            None => {
                stats.error = Some("receiver socket ended".to_owned());
                break;
            }
        };
        let at = now_us();
        let Some(s) = serde_json::from_str::<Value>(&text).ok().as_ref().and_then(stamp) else { continue };
        let Some(seen) = last.get_mut(s.sender) else { continue };
        if s.n <= *seen {
            stats.duplicates += 1;
            continue;
        }
        *seen = s.n;
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        if s.measured {
            stats.delivered_measured += 1;
            stats.latency.push(at.saturating_sub(s.sent_us));
            stats.last_measured_us = stats.last_measured_us.max(at);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
    stats
}

#[derive(Default)]
struct SenderStats {
    sent_measured: u64,
    sent_total: u64,
}

/// Closed loop until `end_us`: send, wait for the own message to come back, repeat.
async fn send(socket: &mut Socket, index: usize, client_ids: bool, measure_from_us: u64, end_us: u64) -> Res<SenderStats> {
    let mut stats = SenderStats::default();
    let mut n = 0_u64;
    let mut next_ping = tokio::time::Instant::now() + client::HEARTBEAT_EVERY;
    loop {
        let sent_us = now_us();
        if sent_us >= end_us {
            return Ok(stats);
        }
        if tokio::time::Instant::now() >= next_ping {
            // Its pong is read (and skipped) below, with the echoes.
            socket.send(Message::Text(client::PING.to_owned())).await?;
            next_ping += client::HEARTBEAT_EVERY;
        }
        n += 1;
        let measured = sent_us >= measure_from_us;
        let content = format!("bench {index} {n} {} {sent_us}", u8::from(measured));
        let frame = if client_ids {
            serde_json::json!({"type": "message", "content": content, "id": format!("bench-{index}-{n}")})
        } else {
            serde_json::json!({"type": "message", "content": content})
        };
        socket.send(Message::Text(frame.to_string())).await?;
        stats.sent_total += 1;
        stats.sent_measured += u64::from(measured);
        loop {
            let frame = next_json(socket, client::RECV)
                .await
                .map_err(|e| fail(format!("sender {index} waiting for its message {n} to come back: {e}")))?;
            if let Some(Stamp { sender, n: got, .. }) = stamp(&frame) {
                if sender == index && got == n {
                    break;
                }
            } else if frame.get("type").and_then(Value::as_str) == Some("error") {
                return Err(fail(format!("sender {index}: server answered {frame}")));
            }
        }
    }
}

async fn run_room(label: &'static str, ws_base: &str, secret: Option<&str>, pgrp: Option<u32>, cfg: &Config) -> Res<RoomResult> {
    let url = format!("{ws_base}/api/chat/{}", client::unique("bench"));
    let token = |user: String| secret.map(|s| client::token(s, &user)).transpose();
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let senders = cfg.senders;

    // Receivers join `CONNECT_IN_FLIGHT` at a time, each reading (and pinging) from its handshake on.
    let tokens = (0..cfg.receivers).map(|i| token(format!("bench-r{i}"))).collect::<Res<Vec<_>>>()?;
    let joined: Vec<Res<_>> = stream::iter(tokens)
        .map(|t| {
            let (url, shared, stop_rx) = (url.clone(), Arc::clone(&shared), stop_rx.clone());
            async move {
                let socket = connect(&url, t.as_deref()).await?;
                Ok(tokio::spawn(receive(socket, senders, shared, stop_rx)))
            }
        })
        .buffered(CONNECT_IN_FLIGHT)
        .collect()
        .await;
    let receivers = joined.into_iter().collect::<Res<Vec<_>>>()?;
    let mut sockets = Vec::with_capacity(cfg.senders);
    for j in 0..cfg.senders {
        sockets.push(connect(&url, token(format!("bench-s{j}"))?.as_deref()).await?);
    }
    // Let the join announcements settle before the clock starts.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let meter = procfs::CpuMeter::start(pgrp);
    let start_us = now_us();
    let measure_from_us = start_us + u64::try_from(cfg.warmup.as_micros())?;
    let end_us = measure_from_us + u64::try_from(cfg.duration.as_micros())?;
    let client_ids = cfg.client_ids;
    let senders: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(j, mut socket)| {
            tokio::spawn(async move {
                let outcome = send(&mut socket, j, client_ids, measure_from_us, end_us).await;
                (socket, outcome)
            })
        })
        .collect();

    let mut errors = Vec::new();
    let mut sent_total = 0;
    let mut sent_measured = 0;
    let mut open = Vec::new();
    for handle in senders {
        let (socket, outcome) = handle.await?;
        open.push(socket);
        match outcome {
            Ok(s) => {
                sent_total += s.sent_total;
                sent_measured += s.sent_measured;
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    // Errors stop a sender after it sent its last message; count what was sent.
    let expected = sent_total * u64::try_from(cfg.receivers)?;
    let drain_until = now_us() + u64::try_from(cfg.drain.as_micros())?;
    while shared.delivered.load(Ordering::Relaxed) < expected && now_us() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = meter.report();
    let _ = stop_tx.send(true);

    let mut latency = Samples::default();
    let (mut delivered_measured, mut duplicates, mut last_us) = (0, 0, measure_from_us);
    for handle in receivers {
        let r = handle.await?;
        delivered_measured += r.delivered_measured;
        duplicates += r.duplicates;
        last_us = last_us.max(r.last_measured_us);
        latency.extend(r.latency);
        if let Some(e) = r.error {
            errors.push(e);
        }
    }
    for mut socket in open {
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
    }
    let delivered = shared.delivered.load(Ordering::Relaxed);
    errors.dedup();
    Ok(RoomResult {
        label,
        sent_measured,
        sent_total,
        delivered_measured,
        delivery_window: Duration::from_micros(last_us - measure_from_us),
        latency,
        lost: expected.saturating_sub(delivered),
        duplicates,
        errors,
        cpu,
    })
}

/// Which room a run measures.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    Edge,
    Baseline,
}

/// Run one room on `target`'s server (started on first use; both stay up between rounds).
async fn run_target(services: &mut Services, target: Target, secret: &str, cfg: &Config) -> Result<RoomResult, (&'static str, String)> {
    let label = match target {
        Target::Edge => "edge-realtime ChatRoom",
        Target::Baseline => "JS baseline (bare hibernating DO)",
    };
    let server = match target {
        Target::Edge => services.edge().await,
        Target::Baseline => services.baseline().await,
    };
    let (ws_base, pgrp) = match server {
        Ok(s) => (s.ws_base(), s.pgrp()),
        Err(e) => return Err((label, e.to_string())),
    };
    eprintln!("chat: {label}, {} receivers, {} senders, {:?} + {:?} warmup", cfg.receivers, cfg.senders, cfg.duration, cfg.warmup);
    let secret = (target == Target::Edge).then_some(secret);
    run_room(label, &ws_base, secret, pgrp, cfg).await.map_err(|e| (label, e.to_string()))
}

/// The edge / baseline ratios of one round: sent msg/s, delivered msg/s, p50, p95, p99.
fn ratios(edge: &mut RoomResult, base: &mut RoomResult) -> [f64; 5] {
    let q = |r: &mut RoomResult, q: f64| r.latency.quantile(q).unwrap_or(0) as f64;
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    [
        div(edge.sent_measured as f64, base.sent_measured as f64),
        div(edge.delivered_per_sec(), base.delivered_per_sec()),
        div(q(edge, 0.5), q(base, 0.5)),
        div(q(edge, 0.95), q(base, 0.95)),
        div(q(edge, 0.99), q(base, 0.99)),
    ]
}

/// "median (min–max)" of one ratio over the rounds.
fn spread(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let (Some(min), Some(max)) = (values.first(), values.last()) else { return "-".to_owned() };
    let median = match (values.get(n / 2), n % 2) {
        (Some(mid), 1) => *mid,
        (Some(upper), _) => values.get(n / 2 - 1).map_or(*upper, |lower| (lower + upper) / 2.0),
        (None, _) => return "-".to_owned(),
    };
    if n == 1 {
        format!("{median:.2}")
    } else {
        format!("{median:.2} ({min:.2}–{max:.2})")
    }
}

pub async fn run(services: &mut Services, opts: &Opts) -> Res<()> {
    let cfg = Config {
        receivers: opts.usize("receivers", 50)?,
        senders: opts.usize("senders", 5)?,
        warmup: opts.secs("warmup", 3.0)?,
        duration: opts.secs("duration", 15.0)?,
        drain: opts.secs("drain", 10.0)?,
        client_ids: opts.flag("client-ids"),
    };
    if cfg.receivers == 0 || cfg.senders == 0 || cfg.duration.is_zero() {
        return Err(fail("chat needs receivers, senders and a duration"));
    }
    // Rounds alternate which target goes first (edge, baseline; then baseline, edge; ...), so a
    // drift of the machine during the run weighs on both alike.
    let rounds = opts.usize("rounds", 3)?.max(1);
    let targets: &[Target] = match opts.text("target", "both") {
        "edge" => &[Target::Edge],
        "baseline" => &[Target::Baseline],
        _ => &[Target::Edge, Target::Baseline],
    };
    let secret = services.secret().to_owned();

    let mut table = Table::new(&[
        "round", "target", "sent msg/s", "delivered msg/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "samples", "lost", "duplicates",
        "CPU (% of one core)",
    ]);
    let mut failures = Vec::new();
    let mut per_round: Vec<[f64; 5]> = Vec::new();
    for round in 1..=rounds {
        let mut order = targets.to_vec();
        if round % 2 == 0 {
            order.reverse();
        }
        let (mut edge, mut base) = (None, None);
        for target in order {
            let mut result = run_target(services, target, &secret, &cfg).await;
            match &mut result {
                Ok(r) => {
                    table.row(vec![
                        round.to_string(),
                        r.label.to_owned(),
                        stats::rate(r.sent_measured, cfg.duration),
                        format!("{:.0}", r.delivered_per_sec()),
                        r.latency.ms(0.50),
                        r.latency.ms(0.95),
                        r.latency.ms(0.99),
                        r.latency.ms(1.0),
                        r.latency.len().to_string(),
                        format!("{} of {}", r.lost, r.sent_total * u64::try_from(cfg.receivers)?),
                        r.duplicates.to_string(),
                        r.cpu.clone(),
                    ]);
                    failures.extend(r.errors.iter().map(|e| format!("{}: {e}", r.label)));
                    if r.lost > 0 {
                        failures.push(format!("{}: {} deliveries lost", r.label, r.lost));
                    }
                    if r.duplicates > 0 {
                        failures.push(format!("{}: {} duplicate deliveries", r.label, r.duplicates));
                    }
                }
                Err((label, e)) => {
                    table.row(vec![round.to_string(), (*label).to_owned(), format!("failed: {e}")]);
                    failures.push(format!("round {round}, {label}: {e}"));
                }
            }
            match target {
                Target::Edge => edge = result.ok(),
                Target::Baseline => base = result.ok(),
            }
        }
        if let (Some(edge), Some(base)) = (edge.as_mut(), base.as_mut()) {
            let r = ratios(edge, base);
            let cell = |x: f64| if x.is_finite() { format!("{x:.2}") } else { "-".to_owned() };
            let mut row = vec![round.to_string(), "**edge / baseline**".to_owned()];
            row.extend([cell(r[0]), cell(r[1]), cell(r[2]), cell(r[3]), cell(r[4])]);
            table.row(row);
            per_round.push(r);
        }
    }

    println!(
        "{} receivers + {} closed-loop senders in one room; {:?} measured after {:?} warmup; {rounds} round(s), \
         each target's order alternating. Delivered = bench messages received by the receivers per second; \
         latency = send → receipt at each receiver.\n",
        cfg.receivers, cfg.senders, cfg.duration, cfg.warmup
    );
    if per_round.len() > 1 {
        let column = |k: usize| spread(&mut per_round.iter().filter_map(|r| r.get(k).copied()).filter(|x| x.is_finite()).collect::<Vec<_>>());
        let mut row = vec!["all".to_owned(), format!("**edge / baseline, median (min–max) of {}**", per_round.len())];
        row.extend((0..5).map(column));
        table.row(row);
    }
    table.print();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(fail(failures.join("\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::{spread, stamp};

    #[test]
    fn spread_is_the_median_and_the_range() {
        assert_eq!(spread(&mut [0.7, 0.5, 0.9]), "0.70 (0.50–0.90)");
        assert_eq!(spread(&mut [0.6, 0.8]), "0.70 (0.60–0.80)");
        assert_eq!(spread(&mut [0.66]), "0.66");
        assert_eq!(spread(&mut []), "-");
    }
    use serde_json::json;

    #[test]
    fn reads_the_stamp_of_both_frame_shapes() {
        let edge = json!({"type":"message","message":{"id":"x","seq":3,"kind":"user","userId":"u","userName":"u",
            "content":"bench 2 17 1 123456","timestamp":"2026-01-01T00:00:00.000Z"}});
        let s = stamp(&edge).unwrap();
        assert_eq!((s.sender, s.n, s.measured, s.sent_us), (2, 17, true, 123_456));
        let baseline = json!({"type":"message","content":"bench 0 1 0 5"});
        let s = stamp(&baseline).unwrap();
        assert_eq!((s.sender, s.n, s.measured, s.sent_us), (0, 1, false, 5));
    }

    #[test]
    fn ignores_everything_else() {
        assert!(stamp(&json!({"type":"message","message":{"kind":"system","content":"bench-r1 joined"}})).is_none());
        assert!(stamp(&json!({"type":"userCount","count":3})).is_none());
        assert!(stamp(&json!({"type":"message","content":"bench x 1 1 1"})).is_none());
    }
}
