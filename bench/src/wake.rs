//! `wake`: how long the first message to a hibernated object takes, next to a hot round trip, for
//! edge-realtime's Counter and ChatRoom and for the bare JS baseline room, in one run.
//!
//! Probes (`--objects` per target, one socket each) start a second apart, the targets interleaved
//! (Counter, ChatRoom, baseline, Counter, …), so no two wakes coincide and every target sees the
//! same machine. Per probe: connect, `--hot` round trips with the object in memory, then
//! `--rounds` times: stay idle for `--idle` seconds (a `{"type":"ping"}` every 4 s, answered by
//! the runtime's auto-response without waking the object, like a real client's heartbeat), send
//! one operation and time its answer:
//! - Counter: `{"type":"increment"}` → its `ack`;
//! - ChatRoom and baseline: a chat message → its own echo.
//!
//! Every measured wake must be proven by the constructor's log line: edge-realtime logs
//! `{"event":"wake","class":<Class>,"object":<name>,…}` (docs/operations.md), the baseline `[baseline] wake <id>`
//! (the id's hex, which the baseline's `/api/chat/<room>/id` route reports without touching the
//! object). A round without it fails the run.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, connect, next_json, now_us, Socket};
use crate::server::{Log, Services};
use crate::stats::{self, Samples, Table};
use crate::{fail, Opts, Res};

const PING_EVERY: Duration = Duration::from_secs(4);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Counter,
    ChatRoom,
    Baseline,
}

impl Target {
    const ALL: [Target; 3] = [Target::Counter, Target::ChatRoom, Target::Baseline];

    fn label(self) -> &'static str {
        match self {
            Target::Counter => "edge-realtime Counter (increment → ack)",
            Target::ChatRoom => "edge-realtime ChatRoom (message → echo)",
            Target::Baseline => "JS baseline room (message → echo)",
        }
    }
}

#[derive(Clone, Copy)]
struct Config {
    objects: usize,
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

/// One probe's object: where to connect, and the log line its constructor writes.
struct Plan {
    target: Target,
    url: String,
    token: Option<String>,
    needle: String,
}

/// Send one operation and time its answer.
async fn round_trip(socket: &mut Socket, target: Target, id: &str) -> Res<u64> {
    let start = now_us();
    let frame = match target {
        Target::Counter => json!({"type": "increment", "amount": 1, "id": id}),
        Target::ChatRoom | Target::Baseline => json!({"type": "message", "content": id}),
    };
    socket.send(Message::Text(frame.to_string())).await?;
    loop {
        let frame = next_json(socket, client::RECV).await?;
        if frame.get("type").and_then(Value::as_str) == Some("error") {
            return Err(fail(format!("{target:?} answered {frame}")));
        }
        if is_answer(&frame, target, id) {
            return Ok(now_us().saturating_sub(start));
        }
    }
}

/// Is `frame` the answer to operation `id`: the Counter's ack, or the chat message's own echo
/// (edge-realtime nests it under `message`, the baseline echoes the frame as sent).
fn is_answer(frame: &Value, target: Target, id: &str) -> bool {
    let kind = frame.get("type").and_then(Value::as_str);
    match target {
        Target::Counter => kind == Some("ack") && frame.get("id").and_then(Value::as_str) == Some(id),
        Target::ChatRoom => {
            kind == Some("message") && frame.get("message").and_then(|m| m.get("content")).and_then(Value::as_str) == Some(id)
        }
        Target::Baseline => kind == Some("message") && frame.get("content").and_then(Value::as_str) == Some(id),
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
        // Frames queued before the pong (a join notice, a user count) are skipped.
        loop {
            let frame = next_json(socket, client::RECV).await?;
            if frame == json!({"type": "pong"}) {
                break;
            }
            if frame.get("type").and_then(Value::as_str) == Some("error") {
                return Err(fail(format!("expected the auto-response pong, got {frame}")));
            }
        }
    }
}

async fn probe(plan: Plan, log: Option<Log>, cfg: Config, delay: Duration) -> Res<Probe> {
    tokio::time::sleep(delay).await;
    let mut socket = connect(&plan.url, plan.token.as_deref()).await?;
    let mut probe = Probe { confirmed: log.as_ref().map(|_| 0), ..Probe::default() };
    for i in 0..cfg.hot {
        probe.hot.push(round_trip(&mut socket, plan.target, &format!("hot-{i}")).await?);
    }
    for round in 0..cfg.rounds {
        idle(&mut socket, cfg.idle).await?;
        let before = log.as_ref().map(|l| l.count(&plan.needle));
        probe.wake.push(round_trip(&mut socket, plan.target, &format!("wake-{round}")).await?);
        if let (Some(log), Some(before), Some(confirmed)) = (&log, before, probe.confirmed.as_mut()) {
            // The log line travels through wrangler's stdout: give it a moment.
            if log.wait_for_more(&plan.needle, before, Duration::from_secs(5)).await {
                *confirmed += 1;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
    Ok(probe)
}

#[derive(Default)]
struct Totals {
    hot: Samples,
    wake: Samples,
    confirmed: Option<usize>,
    probes: usize,
}

pub async fn run(services: &mut Services, opts: &Opts) -> Res<()> {
    let cfg = Config {
        objects: opts.usize("objects", opts.usize("counters", 3)?)?,
        rounds: opts.usize("rounds", 3)?,
        idle: opts.secs("idle", 15.0)?,
        hot: opts.usize("hot", 20)?,
    };
    if cfg.objects == 0 || cfg.rounds == 0 {
        return Err(fail("wake needs objects and rounds"));
    }
    let targets: Vec<Target> = match opts.text("target", "all") {
        "all" => Target::ALL.to_vec(),
        "counter" => vec![Target::Counter],
        "chat" => vec![Target::ChatRoom],
        "baseline" => vec![Target::Baseline],
        other => return Err(fail(format!("--target must be all|counter|chat|baseline, not {other}"))),
    };
    let secret = services.secret().to_owned();
    let edge = services.edge().await?;
    let (edge_base, edge_ws, edge_log) = (edge.base.clone(), edge.ws_base(), edge.log());
    let baseline = if targets.contains(&Target::Baseline) {
        let b = services.baseline().await?;
        Some((b.base.clone(), b.ws_base(), b.log()))
    } else {
        None
    };
    let http = client::http()?;
    eprintln!("wake: {:?} × {} objects × {} rounds, {:?} idle each", targets, cfg.objects, cfg.rounds, cfg.idle);

    let mut handles = Vec::new();
    let mut counters = Vec::new();
    let mut slot = 0_u64;
    for k in 0..cfg.objects {
        for &target in &targets {
            let user = format!("bench-wake{k}");
            let (plan, log) = match target {
                Target::Counter => {
                    let name = client::unique(&format!("bench-wake{k}"));
                    counters.push(name.clone());
                    let plan = Plan {
                        target,
                        url: format!("{edge_ws}/ws/counter/{name}"),
                        token: Some(client::token(&secret, &user)?),
                        needle: edge_realtime_core::ops::wake_prefix("Counter", &name),
                    };
                    (plan, edge_log.clone())
                }
                Target::ChatRoom => {
                    let room = client::unique(&format!("bench-wake{k}"));
                    let plan = Plan {
                        target,
                        url: format!("{edge_ws}/api/chat/{room}"),
                        token: Some(client::token(&secret, &user)?),
                        needle: edge_realtime_core::ops::wake_prefix("ChatRoom", &room),
                    };
                    (plan, edge_log.clone())
                }
                Target::Baseline => {
                    let (base, ws, log) = baseline.as_ref().ok_or_else(|| fail("baseline server missing"))?;
                    let room = client::unique(&format!("bench-wake{k}"));
                    let id = http.get(format!("{base}/api/chat/{room}/id")).send().await?.error_for_status()?.text().await?;
                    let plan = Plan {
                        target,
                        url: format!("{ws}/api/chat/{room}"),
                        token: None,
                        needle: format!("[baseline] wake {}", id.trim()),
                    };
                    (plan, log.clone())
                }
            };
            let delay = Duration::from_secs(slot);
            slot += 1;
            handles.push((target, tokio::spawn(probe(plan, log, cfg, delay))));
        }
    }
    let mut totals: Vec<(Target, Totals)> = targets.iter().map(|t| (*t, Totals::default())).collect();
    let mut failures = Vec::new();
    for (target, handle) in handles {
        let Some((_, t)) = totals.iter_mut().find(|(x, _)| *x == target) else { continue };
        match handle.await? {
            Ok(p) => {
                t.hot.extend(p.hot);
                t.wake.extend(p.wake);
                t.confirmed = p.confirmed.map(|n| t.confirmed.unwrap_or(0) + n);
                t.probes += 1;
            }
            Err(e) => failures.push(format!("{target:?}: {e}")),
        }
    }
    // Nothing was lost across the wakes.
    let check = client::token(&secret, "bench-check")?;
    let expected = i64::try_from(cfg.hot + cfg.rounds)?;
    for name in &counters {
        let body: Value = http.get(format!("{edge_base}/api/counter/{name}")).bearer_auth(&check).send().await?.json().await?;
        if body.get("value").and_then(Value::as_i64) != Some(expected) {
            failures.push(format!("counter {name}: expected value {expected}, got {body}"));
        }
    }

    println!(
        "{} objects per target, one socket each, started 1 s apart (targets interleaved); {} hot round trips, \
         then {} rounds of {:?} idle (auto-response pings every {:?}) + one operation timed.\n",
        cfg.objects, cfg.hot, cfg.rounds, cfg.idle, PING_EVERY
    );
    let mut table = Table::new(&[
        "target",
        "hot p50 ms",
        "hot p99 ms",
        "wakes",
        "wake p50 ms",
        "wake p99 ms",
        "wake max ms",
        "wakes proven by the log",
    ]);
    for (target, t) in &mut totals {
        let proven = match t.confirmed {
            Some(n) => format!("{n} of {}", t.wake.len()),
            None => "- (remote server)".to_owned(),
        };
        if t.confirmed.is_some_and(|n| n < t.wake.len()) {
            failures.push(format!("{target:?}: some rounds did not hibernate (no constructor log line): raise --idle"));
        }
        table.row(vec![
            target.label().to_owned(),
            t.hot.ms(0.5),
            t.hot.ms(0.99),
            t.wake.len().to_string(),
            t.wake.ms(0.5),
            t.wake.ms(0.99),
            t.wake.ms(1.0),
            proven,
        ]);
    }
    let q = |totals: &mut Vec<(Target, Totals)>, target: Target, hot: bool, q: f64| {
        totals.iter_mut().find(|(t, _)| *t == target).and_then(|(_, t)| if hot { t.hot.quantile(q) } else { t.wake.quantile(q) })
    };
    for edge in [Target::Counter, Target::ChatRoom] {
        let ratio = |totals: &mut Vec<(Target, Totals)>, hot: bool, quant: f64| {
            match (q(totals, edge, hot, quant), q(totals, Target::Baseline, hot, quant)) {
                (Some(a), Some(b)) => stats::ratio(a as f64, b as f64),
                _ => "-".to_owned(),
            }
        };
        if totals.iter().any(|(t, _)| *t == edge) && totals.iter().any(|(t, _)| *t == Target::Baseline) {
            let row = vec![
                format!("**{edge:?} / baseline**"),
                ratio(&mut totals, true, 0.5),
                ratio(&mut totals, true, 0.99),
                String::new(),
                format!("**{}**", ratio(&mut totals, false, 0.5)),
                format!("**{}**", ratio(&mut totals, false, 0.99)),
                ratio(&mut totals, false, 1.0),
                String::new(),
            ];
            table.row(row);
        }
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
    use super::{is_answer, Target};
    use serde_json::json;

    #[test]
    fn recognises_each_targets_answer() {
        assert!(is_answer(&json!({"type":"ack","id":"wake-0","seq":21}), Target::Counter, "wake-0"));
        assert!(!is_answer(&json!({"type":"ack","id":"wake-1"}), Target::Counter, "wake-0"));
        assert!(!is_answer(&json!({"type":"increment","value":3}), Target::Counter, "wake-0"));
        let edge = json!({"type":"message","message":{"kind":"user","content":"hot-3","seq":9}});
        assert!(is_answer(&edge, Target::ChatRoom, "hot-3"));
        assert!(!is_answer(&edge, Target::Baseline, "hot-3"));
        assert!(!is_answer(&json!({"type":"message","message":{"kind":"system","content":"x joined"}}), Target::ChatRoom, "hot-3"));
        assert!(is_answer(&json!({"type":"message","content":"hot-3"}), Target::Baseline, "hot-3"));
        assert!(!is_answer(&json!({"type":"userCount","count":1}), Target::Baseline, "hot-3"));
    }
}
