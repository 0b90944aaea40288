//! `wake`: how long the first message to a hibernated object takes, next to a hot round trip.
//!
//! Per counter (several in parallel, started a second apart so their wakes do not coincide):
//! connect, measure `hot` increment → ack round trips, then `rounds` times: stay idle for `idle`
//! seconds (a `{"type":"ping"}` every 4 s, answered by the runtime without waking the object),
//! send one increment and time its ack. With a local `wrangler dev` the Worker runs with
//! `DEBUG_WAKE=1`, so each wake is confirmed by the constructor's `wake Counter <name>` log line.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, connect, next_json, now_us, Socket};
use crate::server::{Log, Services};
use crate::stats::{self, Samples, Table};
use crate::{fail, Opts, Res};

const PING_EVERY: Duration = Duration::from_secs(4);

#[derive(Clone, Copy)]
struct Config {
    counters: usize,
    rounds: usize,
    idle: Duration,
    hot: usize,
}

#[derive(Default)]
struct Probe {
    hot: Samples,
    wake: Samples,
    /// Rounds whose wake the log confirmed (`None`: no log to look at).
    confirmed: Option<usize>,
}

/// Increment by 1 and time the ack.
async fn increment(socket: &mut Socket, id: &str) -> Res<u64> {
    let start = now_us();
    socket.send(Message::Text(json!({"type": "increment", "amount": 1, "id": id}).to_string())).await?;
    loop {
        let frame = next_json(socket, client::RECV).await?;
        match frame.get("type").and_then(Value::as_str) {
            Some("ack") if frame.get("id").and_then(Value::as_str) == Some(id) => return Ok(now_us().saturating_sub(start)),
            Some("error") => return Err(fail(format!("increment answered {frame}"))),
            _ => continue,
        }
    }
}

/// Stay idle for `idle`, pinging like a real client's heartbeat.
async fn idle(socket: &mut Socket, idle: Duration) -> Res<()> {
    let until = tokio::time::Instant::now() + idle;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        tokio::time::sleep(left.min(PING_EVERY)).await;
        socket.send(Message::Text(r#"{"type":"ping"}"#.to_owned())).await?;
        let pong = next_json(socket, client::RECV).await?;
        if pong != json!({"type": "pong"}) {
            return Err(fail(format!("expected the auto-response pong, got {pong}")));
        }
    }
}

async fn probe(url: String, token: String, name: String, log: Option<Log>, cfg: Config, delay: Duration) -> Res<Probe> {
    tokio::time::sleep(delay).await;
    let mut socket = connect(&url, Some(&token)).await?;
    next_json(&mut socket, client::RECV).await?; // snapshot
    let mut probe = Probe { confirmed: log.as_ref().map(|_| 0), ..Probe::default() };
    for i in 0..cfg.hot {
        probe.hot.push(increment(&mut socket, &format!("hot-{i}")).await?);
    }
    let needle = format!("wake Counter {name}");
    for round in 0..cfg.rounds {
        idle(&mut socket, cfg.idle).await?;
        let before = log.as_ref().map(|l| l.count(&needle));
        probe.wake.push(increment(&mut socket, &format!("wake-{round}")).await?);
        if let (Some(log), Some(before), Some(confirmed)) = (&log, before, probe.confirmed.as_mut()) {
            // The log line travels through wrangler's stdout: give it a moment.
            for _ in 0..40 {
                if log.count(&needle) > before {
                    *confirmed += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
    Ok(probe)
}

pub async fn run(services: &mut Services, opts: &Opts) -> Res<()> {
    let cfg = Config {
        counters: opts.usize("counters", 4)?,
        rounds: opts.usize("rounds", 3)?,
        idle: opts.secs("idle", 15.0)?,
        hot: opts.usize("hot", 20)?,
    };
    if cfg.counters == 0 || cfg.rounds == 0 {
        return Err(fail("wake needs counters and rounds"));
    }
    let secret = services.secret().to_owned();
    let edge = services.edge().await?;
    let (base, ws_base, log) = (edge.base.clone(), edge.ws_base(), edge.log());
    eprintln!("wake: {} counters × {} rounds, {:?} idle each", cfg.counters, cfg.rounds, cfg.idle);
    let mut handles = Vec::new();
    let mut names = Vec::new();
    for k in 0..cfg.counters {
        let name = client::unique(&format!("bench-wake{k}"));
        let url = format!("{ws_base}/ws/counter/{name}");
        let token = client::token(&secret, &format!("bench-wake{k}"))?;
        let delay = Duration::from_secs(u64::try_from(k)?);
        handles.push(tokio::spawn(probe(url, token, name.clone(), log.clone(), cfg, delay)));
        names.push(name);
    }
    let (mut hot, mut wake) = (Samples::default(), Samples::default());
    let mut confirmed: Option<usize> = log.as_ref().map(|_| 0);
    let mut failures = Vec::new();
    for handle in handles {
        match handle.await? {
            Ok(p) => {
                hot.extend(p.hot);
                wake.extend(p.wake);
                confirmed = confirmed.zip(p.confirmed).map(|(a, b)| a + b);
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    // Nothing was lost across the wakes.
    let http = client::http()?;
    let check = client::token(&secret, "bench-check")?;
    let expected = i64::try_from(cfg.hot + cfg.rounds)?;
    for name in &names {
        let body: Value = http.get(format!("{base}/api/counter/{name}")).bearer_auth(&check).send().await?.json().await?;
        if body.get("value").and_then(Value::as_i64) != Some(expected) {
            failures.push(format!("counter {name}: expected value {expected}, got {body}"));
        }
    }

    println!(
        "{} counters, one socket each; {} hot round trips, then {} rounds of {:?} idle (pings only) + one increment.\n",
        cfg.counters, cfg.hot, cfg.rounds, cfg.idle
    );
    let mut table = Table::new(&["increment → ack", "samples", "p50 ms", "p99 ms", "max ms"]);
    table.row(vec!["hot (object in memory)".to_owned(), hot.len().to_string(), hot.ms(0.5), hot.ms(0.99), hot.ms(1.0)]);
    table.row(vec!["after hibernation (wake)".to_owned(), wake.len().to_string(), wake.ms(0.5), wake.ms(0.99), wake.ms(1.0)]);
    table.row(vec![
        "**wake / hot (p50)**".to_owned(),
        String::new(),
        stats::ratio(wake.quantile(0.5).unwrap_or(0) as f64, hot.quantile(0.5).unwrap_or(0) as f64),
        String::new(),
        String::new(),
    ]);
    table.print();
    match confirmed {
        Some(n) => println!("Wakes confirmed by the constructor's log line: {n} of {}.\n", wake.len()),
        None => println!("Wakes not confirmed (remote server: its log is out of reach).\n"),
    }
    if confirmed.is_some_and(|n| n < wake.len()) {
        failures.push("some rounds did not hibernate: raise --idle".to_owned());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(fail(failures.join("\n")))
    }
}
