//! `storm`: N clients reconnecting at once, as after a deploy.
//!
//! edge-realtime **Channel** (`/ws/channel/<id>`, gapless sequences, `?since=` resume):
//! 1. N clients connect (`--concurrency` in flight; `--users` distinct users), `--before`
//!    messages are posted over HTTP and every client reads them: its last sequence is known.
//! 2. Every client drops its connection without a close frame (what a deploy does), `--missed`
//!    more messages are posted while nobody is connected.
//! 3. The storm: all N reconnect at the same moment with `?since=<last>`, while a publisher keeps
//!    posting one message every `--live-ms` over HTTP until every client has resumed. Each client
//!    checks its sequences are gapless and without duplicates from `since + 1` up to the last one
//!    posted. "Resumed" = connected and the replay of everything missed received.
//!
//! JS baseline (`/api/chat/<room>`, no history, no resume): the same N clients connect, drop and
//! reconnect at once; "resumed" = connected and a broadcast sent after the storm received.
//!
//! Reported: time until all handshakes are done and until all are resumed, per-client p50/p99,
//! lost and duplicate messages (fatal), and edge / baseline ratios.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, next_json, now_us, Socket};
use crate::server::Services;
use crate::stats::{self, Samples, Table};
use crate::{fail, Opts, Res};

/// A storm handshake or frame may take long on a small machine: it is measured, not limited.
const STORM_WITHIN: Duration = Duration::from_secs(180);

struct Config {
    clients: usize,
    users: usize,
    before: u64,
    missed: u64,
    live: Duration,
    concurrency: usize,
}

/// What sequence checking found on one client.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct SeqCheck {
    pub last: u64,
    pub gaps: u64,
    pub duplicates: u64,
}

impl SeqCheck {
    pub fn new(since: u64) -> SeqCheck {
        SeqCheck { last: since, ..SeqCheck::default() }
    }

    /// Take sequence `seq`: the next one is expected; a jump counts the missing ones as gaps, an
    /// old one is a duplicate.
    pub fn take(&mut self, seq: u64) {
        if seq <= self.last {
            self.duplicates += 1;
        } else {
            self.gaps += seq - self.last - 1;
            self.last = seq;
        }
    }
}

async fn open(url: &str, token: Option<&str>) -> Res<Socket> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request()?;
    if let Some(t) = token {
        request.headers_mut().insert("Authorization", format!("Bearer {t}").parse()?);
    }
    let (socket, _) = tokio::time::timeout(STORM_WITHIN, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| fail(format!("no handshake within {STORM_WITHIN:?}")))??;
    Ok(socket)
}

fn channel_seq(frame: &Value) -> Option<u64> {
    (frame.get("type")?.as_str()? == "message").then(|| frame.get("sequence")?.as_u64()).flatten()
}

/// Read Channel frames until the sequence the watch gives, checking order; bump `resumed` (once)
/// when the replay up to `replay_to` is in.
async fn read_until(
    socket: &mut Socket,
    check: &mut SeqCheck,
    upto: &mut watch::Receiver<Option<u64>>,
    replay_to: u64,
    resumed: Option<&AtomicUsize>,
) -> Res<Option<u64>> {
    let mut resumed_at = None;
    // A ping now and every `HEARTBEAT_EVERY`, like a real client (the sweep closes silent sockets).
    let mut heartbeat = tokio::time::interval(client::HEARTBEAT_EVERY);
    loop {
        if check.last >= replay_to && resumed_at.is_none() {
            resumed_at = Some(now_us());
            if let Some(r) = resumed {
                r.fetch_add(1, Ordering::Relaxed);
            }
        }
        let end = *upto.borrow_and_update();
        if end.is_some_and(|end| check.last >= end) {
            return Ok(resumed_at);
        }
        tokio::select! {
            frame = next_json(socket, STORM_WITHIN) => {
                let frame = frame?;
                if matches!(frame.get("type").and_then(Value::as_str), Some("resync_required" | "error")) {
                    return Err(fail(format!("the channel answered {frame}")));
                }
                if let Some(seq) = channel_seq(&frame) {
                    check.take(seq);
                }
            }
            changed = upto.changed() => { changed.map_err(|_| fail("publisher gone"))?; }
            _ = heartbeat.tick() => { socket.send(Message::Text(client::PING.to_owned())).await?; }
        }
    }
}

/// Connect all, concurrently `concurrency` at a time, to `url`.
async fn connect_all(url: &str, tokens: &[Option<String>], concurrency: usize) -> Vec<Res<Socket>> {
    stream::iter(tokens.iter().cloned())
        .map(|t| async move { open(url, t.as_deref()).await })
        .buffered(concurrency)
        .collect()
        .await
}

#[derive(Default)]
struct Outcome {
    connected_all_us: u64,
    resumed_all_us: u64,
    connect: Samples,
    resume: Samples,
    resumed: usize,
    gaps: u64,
    duplicates: u64,
    live_posted: u64,
    errors: Vec<String>,
}

/// Post message `n` with the client id `storm-<n>`. Under the storm's load `wrangler dev`'s proxy
/// now and then loses its connection to the runtime and answers a POST 503 ("Your worker
/// restarted mid-request") or drops it; the post is then retried with the same id, as a client
/// would, and the object's id dedup answers the stored sequence if the first try was stored.
/// Each retry is printed; a post that fails [`POST_TRIES`] times fails the run.
async fn post(http: &reqwest::Client, url: &str, token: &str, n: u64) -> Res<u64> {
    let mut tries = 0;
    loop {
        tries += 1;
        match post_once(http, url, token, n).await {
            Ok(sequence) => return Ok(sequence),
            Err(e) if tries < POST_TRIES => {
                eprintln!("storm: post {n} failed ({e}); retrying with the same id");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

const POST_TRIES: u32 = 5;

async fn post_once(http: &reqwest::Client, url: &str, token: &str, n: u64) -> Res<u64> {
    let body: Value = http
        .post(url)
        .bearer_auth(token)
        .json(&json!({"content": format!("storm {n}"), "id": format!("storm-{n}")}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    body.get("sequence").and_then(Value::as_u64).ok_or_else(|| fail(format!("post answered {body}")))
}

async fn edge(base: &str, ws_base: &str, secret: &str, cfg: &Config) -> Res<Outcome> {
    let channel = client::unique("bench-storm");
    let url = format!("{ws_base}/ws/channel/{channel}");
    let post_url = format!("{base}/api/channel/{channel}/message");
    // A post waits its turn behind the storm's handshakes in the object: measured, not limited.
    let http = reqwest::Client::builder().timeout(STORM_WITHIN).build()?;
    let writer = client::token(secret, "bench-storm-writer")?;
    let tokens: Vec<Option<String>> = (0..cfg.clients)
        .map(|i| client::token(secret, &format!("bench-storm{}", i % cfg.users.max(1))).map(Some))
        .collect::<Res<_>>()?;
    eprintln!("storm (edge): connecting {} clients", cfg.clients);
    let mut sockets = Vec::new();
    for s in connect_all(&url, &tokens, cfg.concurrency).await {
        sockets.push(s?);
    }
    let mut seq = 0;
    for n in 0..cfg.before {
        seq = post(&http, &post_url, &writer, n).await?;
    }
    // Every client reads up to `seq`: its last sequence before the "deploy".
    let (_fixed_tx, fixed) = watch::channel(Some(seq));
    let reads = sockets.into_iter().map(|mut s| {
        let mut fixed = fixed.clone();
        async move {
            let mut check = SeqCheck::new(0);
            read_until(&mut s, &mut check, &mut fixed, seq, None).await.map(|_| (s, check))
        }
    });
    let mut out = Outcome::default();
    let mut since = Vec::new();
    for r in futures_util::future::join_all(reads).await {
        let (socket, check) = r?;
        out.gaps += check.gaps;
        out.duplicates += check.duplicates;
        since.push(check.last);
        drop(socket); // TCP gone without a close frame, as in a deploy
    }
    for n in 0..cfg.missed {
        seq = post(&http, &post_url, &writer, cfg.before + n).await?;
    }
    let replay_to = seq;
    // Let the server see the drops before the storm (their close events are not measured).
    tokio::time::sleep(Duration::from_secs(2)).await;

    eprintln!("storm (edge): {} clients reconnect at once with ?since=", cfg.clients);
    let (end_tx, end_rx) = watch::channel(None::<u64>);
    let resumed = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let t0 = now_us();
    let clients: Vec<_> = tokens
        .into_iter()
        .zip(since)
        .map(|(token, since)| {
            let url = format!("{url}?since={since}");
            let mut end = end_rx.clone();
            let (resumed, failed) = (Arc::clone(&resumed), Arc::clone(&failed));
            tokio::spawn(async move {
                let outcome = async {
                    let mut socket = open(&url, token.as_deref()).await?;
                    let connected = now_us();
                    let mut check = SeqCheck::new(since);
                    let at = read_until(&mut socket, &mut check, &mut end, replay_to, Some(&resumed)).await?;
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                    Res::Ok((connected, at.unwrap_or(connected), check))
                }
                .await;
                if outcome.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                outcome
            })
        })
        .collect();
    // The live publisher: one message every `live` until every client has resumed (or failed).
    let until = tokio::time::Instant::now() + STORM_WITHIN;
    while resumed.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < cfg.clients && tokio::time::Instant::now() < until {
        post(&http, &post_url, &writer, 1_000_000 + out.live_posted).await?;
        out.live_posted += 1;
        tokio::time::sleep(cfg.live).await;
    }
    // One more after everyone is back: it must reach all of them too.
    seq = post(&http, &post_url, &writer, 2_000_000).await?;
    out.live_posted += 1;
    let _ = end_tx.send(Some(seq));
    let (mut last_conn, mut last_res) = (t0, t0);
    for h in clients {
        match h.await? {
            Ok((connected, resumed, check)) => {
                out.resumed += 1;
                out.connect.push(connected.saturating_sub(t0));
                out.resume.push(resumed.saturating_sub(t0));
                last_conn = last_conn.max(connected);
                last_res = last_res.max(resumed);
                out.gaps += check.gaps;
                out.duplicates += check.duplicates;
            }
            Err(e) => out.errors.push(e.to_string()),
        }
    }
    out.connected_all_us = last_conn - t0;
    out.resumed_all_us = last_res - t0;
    Ok(out)
}

async fn baseline(ws_base: &str, cfg: &Config) -> Res<Outcome> {
    let url = format!("{ws_base}/api/chat/{}", client::unique("bench-storm"));
    let tokens = vec![None; cfg.clients];
    eprintln!("storm (baseline): connecting {} clients", cfg.clients);
    for s in connect_all(&url, &tokens, cfg.concurrency).await {
        drop(s?); // TCP gone without a close frame
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("storm (baseline): {} clients reconnect at once", cfg.clients);
    let connected_n = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let t0 = now_us();
    let clients: Vec<_> = (0..cfg.clients)
        .map(|_| {
            let url = url.clone();
            let (connected_n, failed) = (Arc::clone(&connected_n), Arc::clone(&failed));
            tokio::spawn(async move {
                let socket = open(&url, None).await;
                let connected = now_us();
                let mut socket = match socket {
                    Ok(s) => s,
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return Err(e);
                    }
                };
                connected_n.fetch_add(1, Ordering::Relaxed);
                // No history to resume: a broadcast sent once everyone is back must arrive.
                loop {
                    let frame = next_json(&mut socket, STORM_WITHIN).await?;
                    if frame.get("content").and_then(Value::as_str) == Some("storm over") {
                        break;
                    }
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                Res::Ok(connected)
            })
        })
        .collect();
    let until = tokio::time::Instant::now() + STORM_WITHIN;
    while connected_n.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < cfg.clients && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut sender = open(&url, None).await?;
    sender.send(Message::Text(json!({"type": "message", "content": "storm over"}).to_string())).await?;
    let mut out = Outcome { live_posted: 1, ..Outcome::default() };
    let mut last = t0;
    for h in clients {
        match h.await? {
            Ok(connected) => {
                out.resumed += 1;
                out.connect.push(connected.saturating_sub(t0));
                out.resume.push(connected.saturating_sub(t0));
                last = last.max(connected);
            }
            Err(e) => out.errors.push(e.to_string()),
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sender.close(None)).await;
    out.connected_all_us = last - t0;
    out.resumed_all_us = last - t0;
    Ok(out)
}

pub async fn run(services: &mut Services, opts: &Opts) -> Res<()> {
    let cfg = Config {
        clients: opts.usize("clients", 200)?,
        users: opts.usize("users", 20)?.max(1),
        before: u64::try_from(opts.usize("before", 3)?)?,
        missed: u64::try_from(opts.usize("missed", 5)?)?,
        live: Duration::from_millis(u64::try_from(opts.usize("live-ms", 100)?)?),
        concurrency: opts.usize("concurrency", 64)?.max(1),
    };
    if cfg.clients == 0 || cfg.missed == 0 {
        return Err(fail("storm needs clients and missed messages"));
    }
    let target = opts.text("target", "both");
    let secret = services.secret().to_owned();
    let mut results: Vec<(&str, Res<Outcome>)> = Vec::new();
    if matches!(target, "both" | "edge") {
        let e = services.edge().await?;
        let (base, ws) = (e.base.clone(), e.ws_base());
        results.push(("edge-realtime Channel (?since= resume)", edge(&base, &ws, &secret, &cfg).await));
    }
    if matches!(target, "both" | "baseline") {
        let ws = services.baseline().await?.ws_base();
        results.push(("JS baseline room (reconnect only)", baseline(&ws, &cfg).await));
    }
    println!(
        "{} clients ({} users on the edge) connected, {} messages read, then every TCP dropped without a close; \
         edge: {} messages posted while all were away, then all reconnect at once with `?since=` their last \
         sequence while one message is posted every {:?} until all have resumed (plus one after); each client \
         checks its sequences gaplessly up to the last. Baseline: all reconnect at once, then one broadcast must \
         reach all. Resumed = connected and every missed message received (baseline: connected).\n",
        cfg.clients, cfg.users, cfg.before, cfg.missed, cfg.live
    );
    let mut table = Table::new(&[
        "target",
        "back (of N)",
        "all connected s",
        "**all resumed s**",
        "connect p50 / p99 ms",
        "resume p50 / p99 ms",
        "live msgs during storm",
        "lost (gaps)",
        "duplicates",
    ]);
    let mut failures = Vec::new();
    for (label, r) in &mut results {
        match r {
            Ok(o) => {
                table.row(vec![
                    (*label).to_owned(),
                    format!("{} of {}", o.resumed, cfg.clients),
                    stats::ms(o.connected_all_us / 1000),
                    format!("**{}**", stats::ms(o.resumed_all_us / 1000)),
                    format!("{} / {}", o.connect.ms(0.5), o.connect.ms(0.99)),
                    format!("{} / {}", o.resume.ms(0.5), o.resume.ms(0.99)),
                    o.live_posted.to_string(),
                    o.gaps.to_string(),
                    o.duplicates.to_string(),
                ]);
                o.errors.dedup();
                failures.extend(o.errors.iter().map(|e| format!("{label}: {e}")));
                if o.gaps > 0 || o.duplicates > 0 {
                    failures.push(format!("{label}: {} lost, {} duplicate messages", o.gaps, o.duplicates));
                }
                if o.resumed < cfg.clients {
                    failures.push(format!("{label}: only {} of {} clients came back", o.resumed, cfg.clients));
                }
            }
            Err(e) => {
                table.row(vec![(*label).to_owned(), format!("failed: {e}")]);
                failures.push(format!("{label}: {e}"));
            }
        }
    }
    if let [(_, Ok(e)), (_, Ok(b))] = results.as_slice() {
        table.row(vec![
            "**edge / baseline**".to_owned(),
            String::new(),
            stats::ratio(e.connected_all_us as f64, b.connected_all_us as f64),
            format!("**{}**", stats::ratio(e.resumed_all_us as f64, b.resumed_all_us as f64)),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
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
    use super::{channel_seq, SeqCheck};
    use serde_json::json;

    #[test]
    fn gapless_check_counts_gaps_and_duplicates() {
        let mut c = SeqCheck::new(5);
        for s in [6, 7, 7, 10, 9, 11] {
            c.take(s);
        }
        assert_eq!(c, SeqCheck { last: 11, gaps: 2, duplicates: 2 });
        let mut clean = SeqCheck::new(0);
        (1..=100).for_each(|s| clean.take(s));
        assert_eq!(clean, SeqCheck { last: 100, gaps: 0, duplicates: 0 });
    }

    #[test]
    fn reads_channel_sequences_only_from_messages() {
        assert_eq!(channel_seq(&json!({"type":"message","sequence":7,"content":"hi"})), Some(7));
        assert_eq!(channel_seq(&json!({"type":"ack","id":"x","sequence":7})), None);
        assert_eq!(channel_seq(&json!({"type":"participants","users":[]})), None);
    }
}
