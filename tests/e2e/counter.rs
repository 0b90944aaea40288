//! Counter (docs/protocol.md §6.2) over real HTTP and WebSockets.


use libtest_mimic::Trial;
use serde_json::{json, Value};

use std::time::Duration;

use crate::support::{http, server, unique, ws, ws_at, ExtraServer, Hibernation, TestResult, Ws};
use crate::{ensure, ensure_eq, restart_trial, trial};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("counter::http_ops_and_event_shape", http_ops),
        trial("counter::http_changes_reach_two_sockets", broadcast_to_two),
        trial("counter::ws_mutation_acked_and_broadcast", ws_mutation),
        trial("counter::ping_pong_auto_response", ping_pong),
        trial("counter::ops_filter", ops_filter),
        trial("counter::since_replays_missed_events", since_replay),
        trial("counter::duplicate_client_id_applied_once", duplicate_id),
        trial("counter::history_pagination", history),
        trial("counter::overflow_and_bad_amounts_422_value_unchanged", bad_amounts),
        trial("counter::bad_frames_close_and_value_unchanged", bad_frames),
        trial("counter::concurrent_increments_exact", concurrent),
        trial("counter::survives_hibernation", hibernation),
        restart_trial("counter::survives_wrangler_restart", restart),
        trial("counter::present_null_or_non_integer_amount_rejected_value_unchanged", null_amounts),
        trial("counter::empty_ops_filter_is_400_not_every_event", empty_ops),
        trial("counter::history_pruned_by_the_alarm_then_since_resyncs", pruning),
    ]
}

async fn value_of(name: &str) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
    let r = http().get(&format!("/api/counter/{name}"), &server().token(&unique("reader"))).await?;
    ensure_eq!(r.status, 200);
    Ok(r.body["value"].clone())
}

async fn http_ops() -> TestResult {
    let t = server().token(&unique("alice"));
    let name = unique("ops");
    let r = http().get(&format!("/api/counter/{name}"), &t).await?;
    ensure_eq!(r.status, 200);
    ensure_eq!(r.body["value"], json!(0));
    ensure_eq!(r.body["metadata"]["name"], json!(name));
    ensure_eq!(r.body["metadata"]["operationCount"], json!(0));

    let r = http().post(&format!("/api/counter/{name}/increment"), &t, r#"{"amount":5}"#).await?;
    ensure_eq!(r.status, 200);
    let ev = &r.body;
    ensure_eq!((ev["type"].clone(), ev["value"].clone(), ev["previousValue"].clone(), ev["seq"].clone()), (json!("increment"), json!(5), json!(0), json!(1)));
    ensure_eq!(ev["metadata"]["operationCount"], json!(1));
    ensure!(ev["timestamp"].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')), "timestamp {}", ev["timestamp"]);

    let r = http().post(&format!("/api/counter/{name}/increment"), &t, "").await?.ok()?;
    ensure_eq!((r.body["value"].clone(), r.body["seq"].clone()), (json!(6), json!(2)));
    let r = http().post(&format!("/api/counter/{name}/decrement"), &t, r#"{"amount":10}"#).await?.ok()?;
    ensure_eq!((r.body["type"].clone(), r.body["value"].clone()), (json!("decrement"), json!(-4)));
    let r = http().post(&format!("/api/counter/{name}/set"), &t, r#"{"value":42}"#).await?.ok()?;
    ensure_eq!((r.body["type"].clone(), r.body["value"].clone(), r.body["previousValue"].clone()), (json!("setValue"), json!(42), json!(-4)));
    let r = http().post(&format!("/api/counter/{name}/reset"), &t, "").await?.ok()?;
    ensure_eq!((r.body["type"].clone(), r.body["value"].clone(), r.body["seq"].clone()), (json!("reset"), json!(0), json!(5)));
    ensure_eq!(value_of(&name).await?, json!(0));
    Ok(())
}

async fn broadcast_to_two() -> TestResult {
    let s = server();
    let name = unique("bc");
    let mut a = ws(&format!("/ws/counter/{name}"), &s.token(&unique("alice"))).await?;
    let mut b = ws(&format!("/ws/counter/{name}"), &s.token(&unique("bob"))).await?;
    for sock in [&mut a, &mut b] {
        let snap = sock.recv().await?;
        ensure_eq!((snap["type"].clone(), snap["value"].clone(), snap["seq"].clone()), (json!("snapshot"), json!(0), json!(0)));
    }
    let r = http().post(&format!("/api/counter/{name}/increment"), &s.token(&unique("carol")), r#"{"amount":3}"#).await?.ok()?;
    for sock in [&mut a, &mut b] {
        let ev = sock.recv().await?;
        ensure_eq!(ev, r.body);
    }
    let r = http().post(&format!("/api/counter/{name}/set"), &s.token(&unique("carol")), r#"{"value":-7}"#).await?.ok()?;
    for sock in [&mut a, &mut b] {
        ensure_eq!(sock.recv().await?, r.body);
    }
    a.close().await?;
    b.close().await
}

async fn ws_mutation() -> TestResult {
    let s = server();
    let name = unique("wsm");
    let mut a = ws(&format!("/ws/counter/{name}"), &s.token(&unique("alice"))).await?;
    let mut b = ws(&format!("/ws/counter/{name}"), &s.token(&unique("bob"))).await?;
    a.recv().await?;
    b.recv().await?;
    a.send_json(&json!({"type":"increment","amount":2,"id":"m1"})).await?;
    let first = a.recv().await?;
    let second = a.recv().await?;
    // The broadcast and the ack both reach the sender; order between them is not promised.
    let (ev, ack) = if first["type"] == "ack" { (second, first) } else { (first, second) };
    ensure_eq!(ack, json!({"type":"ack","id":"m1","seq":1}));
    ensure_eq!((ev["type"].clone(), ev["value"].clone(), ev["seq"].clone()), (json!("increment"), json!(2), json!(1)));
    ensure_eq!(b.recv().await?, ev);
    a.send_json(&json!({"type":"setValue","value":100,"id":"m2"})).await?;
    ensure_eq!(b.recv().await?["value"], json!(100));
    // §6.2 "likewise setValue": the new value named `amount` is read the same way.
    a.send_json(&json!({"type":"setValue","amount":7,"id":"m2b"})).await?;
    let ev = b.recv().await?;
    ensure_eq!((ev["type"].clone(), ev["value"].clone(), ev["previousValue"].clone()), (json!("setValue"), json!(7), json!(100)));
    a.send_json(&json!({"type":"reset","id":"m3"})).await?;
    ensure_eq!(b.recv().await?["type"], json!("reset"));
    ensure_eq!(value_of(&name).await?, json!(0));
    a.close().await?;
    b.close().await
}

async fn ping_pong() -> TestResult {
    let name = unique("ping");
    let mut a = ws(&format!("/ws/counter/{name}"), &server().token(&unique("alice"))).await?;
    a.recv().await?;
    a.send_text(r#"{"type":"ping"}"#).await?;
    ensure_eq!(a.recv().await?, json!({"type":"pong"}));
    // Spelled differently (Python's json.dumps): it reaches the object, which answers the same
    // way and keeps the socket open.
    a.send_text(r#"{"type": "ping"}"#).await?;
    ensure_eq!(a.recv().await?, json!({"type":"pong"}));
    a.expect_next_is_pong().await?;
    a.close().await
}

async fn ops_filter() -> TestResult {
    let s = server();
    let name = unique("filter");
    let mut only_reset = ws(&format!("/ws/counter/{name}?ops=reset"), &s.token(&unique("alice"))).await?;
    only_reset.recv().await?;
    let t = s.token(&unique("bob"));
    http().post(&format!("/api/counter/{name}/increment"), &t, "").await?.ok()?;
    http().post(&format!("/api/counter/{name}/reset"), &t, "").await?.ok()?;
    let ev = only_reset.recv().await?;
    ensure_eq!(ev["type"], json!("reset"));
    ensure_eq!(ev["seq"], json!(2));
    // Both HTTP responses came back, so both broadcasts were already queued: the filtered-out
    // increment would arrive before the sentinel's pong.
    only_reset.expect_next_is_pong().await?;
    let refused = crate::support::ws_refusal(&format!("/ws/counter/{name}?ops=bogus"), &[("Authorization", &format!("Bearer {t}"))]).await?;
    ensure_eq!(refused, 400);
    only_reset.close().await
}

async fn since_replay() -> TestResult {
    let s = server();
    let t = s.token(&unique("alice"));
    let name = unique("since");
    for _ in 0..5 {
        http().post(&format!("/api/counter/{name}/increment"), &t, "").await?.ok()?;
    }
    let mut a = ws(&format!("/ws/counter/{name}?since=2"), &t).await?;
    let snap = a.recv().await?;
    ensure_eq!((snap["type"].clone(), snap["seq"].clone(), snap["value"].clone()), (json!("snapshot"), json!(5), json!(5)));
    for seq in 3..=5 {
        let ev = a.recv().await?;
        ensure_eq!((ev["type"].clone(), ev["seq"].clone(), ev["value"].clone()), (json!("increment"), json!(seq), json!(seq)));
    }
    http().post(&format!("/api/counter/{name}/increment"), &t, "").await?.ok()?;
    ensure_eq!(a.recv().await?["seq"], json!(6));
    let mut future = ws(&format!("/ws/counter/{name}?since=99"), &t).await?;
    future.recv().await?;
    ensure_eq!(future.recv().await?, json!({"type":"resync_required","latestSeq":6}));
    a.close().await?;
    future.close().await
}

async fn duplicate_id() -> TestResult {
    let t = server().token(&unique("alice"));
    let name = unique("dup");
    let mut a = ws(&format!("/ws/counter/{name}"), &t).await?;
    a.recv().await?;
    a.send_json(&json!({"type":"increment","amount":1,"id":"same"})).await?;
    a.recv_type("ack").await?;
    a.send_json(&json!({"type":"increment","amount":1,"id":"same"})).await?;
    ensure_eq!(a.recv_type("ack").await?, json!({"type":"ack","id":"same","seq":1}));
    let r = http().post(&format!("/api/counter/{name}/increment"), &t, r#"{"id":"same"}"#).await?;
    ensure_eq!((r.status, r.body["seq"].clone(), r.body["value"].clone()), (200, json!(1), json!(1)));
    ensure_eq!(value_of(&name).await?, json!(1));
    // Another user's identical id is a different operation.
    let r = http().post(&format!("/api/counter/{name}/increment"), &server().token(&unique("bob")), r#"{"id":"same"}"#).await?.ok()?;
    ensure_eq!(r.body["seq"], json!(2));
    // Frames written together are queued and stored in one transaction: the repeat is found
    // among the queued mutations, the older id in storage.
    a.send_json_together(&[
        json!({"type":"increment","amount":5,"id":"burst"}),
        json!({"type":"increment","amount":5,"id":"burst"}),
        json!({"type":"increment","amount":1,"id":"same"}),
    ])
    .await?;
    for (id, seq) in [("burst", 3), ("burst", 3), ("same", 1)] {
        ensure_eq!(a.recv_type("ack").await?, json!({"type":"ack","id":id,"seq":seq}));
    }
    ensure_eq!(value_of(&name).await?, json!(7));
    a.close().await
}

async fn history() -> TestResult {
    let t = server().token(&unique("alice"));
    let name = unique("hist");
    for i in 1..=7 {
        http().post(&format!("/api/counter/{name}/increment"), &t, &format!(r#"{{"amount":{i}}}"#)).await?.ok()?;
    }
    let mut seen = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let path = match before {
            Some(b) => format!("/api/counter/{name}/history?limit=3&before={b}"),
            None => format!("/api/counter/{name}/history?limit=3"),
        };
        let r = http().get(&path, &t).await?;
        ensure_eq!(r.status, 200);
        for op in r.body["operations"].as_array().ok_or("operations")? {
            seen.push(op["seq"].as_i64().ok_or("seq")?);
            ensure_eq!(op["type"], json!("increment"));
            ensure_eq!(op["amount"].as_i64(), op["seq"].as_i64());
        }
        match r.body["nextBefore"].as_i64() {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    ensure_eq!(seen, vec![7, 6, 5, 4, 3, 2, 1]);
    let r = http().get(&format!("/api/counter/{name}/history?limit=0"), &t).await?;
    ensure_eq!(r.status, 400);
    let r = http().get(&format!("/api/counter/{name}/history?limit=abc"), &t).await?;
    ensure_eq!(r.status, 400);
    let r = http().get(&format!("/api/counter/{name}/history?limit=5000"), &t).await?;
    ensure_eq!(r.body["operations"].as_array().map(Vec::len), Some(7));
    Ok(())
}

async fn bad_amounts() -> TestResult {
    let t = server().token(&unique("alice"));
    let name = unique("bad");
    http().post(&format!("/api/counter/{name}/set"), &t, r#"{"value":9007199254740990}"#).await?.ok()?;
    let r = http().post(&format!("/api/counter/{name}/increment"), &t, r#"{"amount":5}"#).await?;
    ensure_eq!((r.status, r.error_code()), (422, Some("overflow")));
    let r = http().post(&format!("/api/counter/{name}/increment"), &t, r#"{"amount":1.5}"#).await?;
    ensure_eq!(r.status, 422);
    let r = http().post(&format!("/api/counter/{name}/set"), &t, r#"{"value":9007199254740992}"#).await?;
    ensure_eq!(r.status, 422);
    let r = http().post(&format!("/api/counter/{name}/increment"), &t, r#"{"amount":"5"}"#).await?;
    ensure_eq!(r.status, 400);
    let r = http().post(&format!("/api/counter/{name}/increment"), &t, "not json").await?;
    ensure_eq!((r.status, r.error_code()), (400, Some("invalid_json")));
    let r = http().post(&format!("/api/counter/{name}/set"), &t, "{}").await?;
    ensure_eq!(r.status, 400);
    ensure_eq!(value_of(&name).await?, json!(9007199254740990_i64));
    let mut a = ws(&format!("/ws/counter/{name}"), &t).await?;
    ensure_eq!(a.recv().await?["seq"], json!(1));
    a.send_json(&json!({"type":"increment","amount":100})).await?;
    let err = a.recv().await?;
    ensure_eq!((err["type"].clone(), err["code"].clone()), (json!("error"), json!("overflow")));
    ensure_eq!(value_of(&name).await?, json!(9007199254740990_i64));
    a.close().await
}

async fn bad_frames() -> TestResult {
    let t = server().token(&unique("alice"));
    let name = unique("frames");
    http().post(&format!("/api/counter/{name}/set"), &t, r#"{"value":7}"#).await?.ok()?;
    let cases = vec![
        ("non-JSON", Message::Text("hello".into()), 1007),
        ("wrong field type", Message::Text(r#"{"type":"increment","amount":"x"}"#.into()), 1007),
        ("type not a string", Message::Text(r#"{"type":1}"#.into()), 1007),
        ("unknown type", Message::Text(r#"{"type":"explode"}"#.into()), 1008),
        ("oversize", Message::Text(format!(r#"{{"type":"increment","pad":"{}"}}"#, "x".repeat(70 * 1024))), 1009),
        ("binary", Message::Binary(vec![1, 2, 3]), 1007),
    ];
    let mut watcher = ws(&format!("/ws/counter/{name}"), &t).await?;
    watcher.recv().await?;
    for (what, frame, code) in cases {
        let mut a = ws(&format!("/ws/counter/{name}"), &t).await?;
        a.recv().await?;
        match frame {
            Message::Text(s) => a.send_text(&s).await?,
            Message::Binary(b) => a.send_binary(b).await?,
        }
        let closed = a.expect_close().await?;
        ensure_eq!((what, closed.code), (what, code));
        ensure!(closed.reason.len() <= 123, "reason too long");
    }
    // Nothing was applied, and the counter still works for others.
    ensure_eq!(value_of(&name).await?, json!(7));
    watcher.send_json(&json!({"type":"increment","id":"ok"})).await?;
    ensure_eq!(watcher.recv_type("increment").await?["value"], json!(8));
    watcher.close().await
}

enum Message {
    Text(String),
    Binary(Vec<u8>),
}

async fn concurrent() -> TestResult {
    let s = server();
    let name = unique("conc");
    let mut tasks = Vec::new();
    for w in 0..4 {
        let t = s.token(&unique(&format!("user{w}")));
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let mut sock = ws(&format!("/ws/counter/{name}"), &t).await?;
            sock.recv().await?;
            for i in 0..40 {
                sock.send_json(&json!({"type":"increment","amount":1,"id":format!("w{w}-{i}")})).await?;
            }
            let mut acks = 0;
            while acks < 40 {
                if sock.recv().await?["type"] == "ack" {
                    acks += 1;
                }
            }
            sock.close().await
        }));
    }
    for h in 0..40 {
        let t = s.token(&unique("httpuser"));
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let r = http().post(&format!("/api/counter/{name}/increment"), &t, &format!(r#"{{"id":"h{h}"}}"#)).await?;
            ensure_eq!(r.status, 200);
            Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    ensure_eq!(value_of(&name).await?, json!(200));
    let r = http().get(&format!("/api/counter/{name}/history?limit=1"), &s.token(&unique("alice"))).await?.ok()?;
    ensure_eq!(r.body["operations"][0]["seq"], json!(200));
    Ok(())
}

async fn hibernation() -> TestResult {
    let s = server();
    let t = s.token(&unique("alice"));
    let name = unique("hib");
    let mut a = ws(&format!("/ws/counter/{name}"), &t).await?;
    let mut b = ws(&format!("/ws/counter/{name}"), &s.token(&unique("bob"))).await?;
    a.recv().await?;
    b.recv().await?;
    a.send_json(&json!({"type":"increment","amount":5,"id":"before"})).await?;
    a.recv_type("ack").await?;
    b.recv_type("increment").await?;
    // Idle until workerd evicts the object: a ping is answered by the runtime's auto-response
    // while it sleeps; the probe — the same op id again — reaches the object (waking it if it
    // was evicted) and changes nothing: acked with its original seq, no broadcast.
    let mut hib = Hibernation::start("Counter", &name).await?;
    loop {
        hib.idle().await?;
        a.expect_next_is_pong().await?;
        a.send_json(&json!({"type":"increment","amount":5,"id":"before"})).await?;
        ensure_eq!(a.recv_type("ack").await?, json!({"type":"ack","id":"before","seq":1}));
        if hib.woke().await {
            break;
        }
    }
    b.expect_next_is_pong().await?;
    a.send_json(&json!({"type":"increment","amount":1,"id":"after"})).await?;
    ensure_eq!(a.recv_type("ack").await?, json!({"type":"ack","id":"after","seq":2}));
    let ev = b.recv_type("increment").await?;
    ensure_eq!((ev["value"].clone(), ev["seq"].clone()), (json!(6), json!(2)));
    a.close().await?;
    b.close().await
}

async fn restart() -> TestResult {
    let s = server();
    let t = s.token(&unique("alice"));
    let name = unique("restart");
    http().post(&format!("/api/counter/{name}/increment"), &t, r#"{"amount":41}"#).await?.ok()?;
    http().post(&format!("/api/counter/{name}/increment"), &t, r#"{"id":"r1"}"#).await?.ok()?;
    s.restart()?;
    ensure_eq!(value_of(&name).await?, json!(42));
    let r = http().post(&format!("/api/counter/{name}/increment"), &t, r#"{"id":"r1"}"#).await?.ok()?;
    ensure_eq!((r.body["seq"].clone(), r.body["value"].clone()), (json!(2), json!(42)));
    let r = http().post(&format!("/api/counter/{name}/increment"), &t, "").await?.ok()?;
    ensure_eq!((r.body["seq"].clone(), r.body["value"].clone()), (json!(3), json!(43)));
    Ok(())
}

/// `{"amount":null}` (what `JSON.stringify({amount: NaN})` sends) is never the default +1:
/// null (an invalid number) and non-integers are 422 / in-band `invalid_amount`, other types
/// 400 `invalid_body` / close 1007 (docs/protocol.md §5); the value and the history do not move.
async fn null_amounts() -> TestResult {
    let t = server().token("alice");
    let name = unique("nullamt");
    let r = http().post(&format!("/api/counter/{name}/set"), &t, r#"{"value":10}"#).await?;
    ensure_eq!(r.status, 200);
    for (op, body, status, code) in [
        ("increment", r#"{"amount":null}"#, 422, "invalid_amount"),
        ("decrement", r#"{"amount":null}"#, 422, "invalid_amount"),
        ("set", r#"{"value":null}"#, 422, "invalid_amount"),
        ("increment", r#"{"amount":true}"#, 400, "invalid_body"),
        ("increment", r#"{"amount":"2"}"#, 400, "invalid_body"),
        ("increment", r#"{"amount":1.5}"#, 422, "invalid_amount"),
        ("decrement", r#"{"amount":9007199254740992}"#, 422, "invalid_amount"),
        ("increment", r#"{"amount":-9007199254740992}"#, 422, "invalid_amount"),
        ("increment", r#"{"amount":1,"id":null}"#, 400, "invalid_id"),
        ("increment", "null", 400, "invalid_body"),
        ("reset", "null", 400, "invalid_body"),
    ] {
        let r = http().post(&format!("/api/counter/{name}/{op}"), &t, body).await?;
        ensure_eq!((op, body, r.status, r.error_code()), (op, body, status, Some(code)));
    }
    let r = http().post(&format!("/api/counter/{name}/increment"), &t, r#"{"amount":null}"#).await?;
    ensure!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("null")), "message {}", r.body);
    ensure_eq!(value_of(&name).await?, json!(10));

    // Over the socket: a wrong-typed amount or id closes 1007; null or a fraction is in-band.
    for frame in [
        json!({"type":"increment","amount":"2","id":"n1"}),
        json!({"type":"decrement","amount":true}),
        json!({"type":"increment","amount":2,"id":null}),
    ] {
        let mut bad = ws(&format!("/ws/counter/{name}"), &t).await?;
        ensure_eq!(bad.recv().await?["type"], json!("snapshot"));
        let closed = bad.send_bad_frame(Some(&frame.to_string())).await?;
        ensure_eq!((frame.to_string(), closed.code), (frame.to_string(), 1007));
    }
    let mut a = ws(&format!("/ws/counter/{name}"), &t).await?;
    ensure_eq!(a.recv().await?["type"], json!("snapshot"));
    for frame in [
        json!({"type":"increment","amount":1.5,"id":"frac"}),
        json!({"type":"increment","amount":null,"id":"n1"}),
        json!({"type":"decrement","amount":null}),
        json!({"type":"setValue","value":null}),
    ] {
        a.send_json(&frame).await?;
        let err = a.recv().await?;
        ensure_eq!((frame.to_string(), err["type"].clone(), err["code"].clone()), (frame.to_string(), json!("error"), json!("invalid_amount")));
    }
    a.send_json(&json!({"type":"ping"})).await?;
    ensure_eq!(a.recv().await?, json!({"type":"pong"}));
    // Nothing was applied or recorded: only the first `set` is in the history.
    ensure_eq!(value_of(&name).await?, json!(10));
    let r = http().get(&format!("/api/counter/{name}/history"), &t).await?;
    ensure_eq!(r.body["operations"].as_array().map(Vec::len), Some(1));
    // The counter still works.
    a.send_json(&json!({"type":"increment","id":"ok"})).await?;
    ensure_eq!(a.recv_type("increment").await?["value"], json!(11));
    a.close().await
}

/// `?ops=` (what a client sends for an empty `ops` list) is 400, not a socket that receives
/// every event type; absent `ops` still means every type.
async fn empty_ops() -> TestResult {
    let t = server().token("alice");
    let name = unique("emptyops");
    let auth = format!("Bearer {t}");
    for query in ["?ops=", "?ops=%20", "?ops=,"] {
        let status = crate::support::ws_refusal(&format!("/ws/counter/{name}{query}"), &[("Authorization", &auth)]).await?;
        ensure_eq!((query, status), (query, 400));
    }
    let mut all = ws(&format!("/ws/counter/{name}"), &t).await?;
    ensure_eq!(all.recv().await?["type"], json!("snapshot"));
    all.send_json(&json!({"type":"increment","id":"e1"})).await?;
    ensure_eq!(all.recv_type("increment").await?["value"], json!(1));
    all.close().await
}

/// `COUNTER_MAX_HISTORY` on the pruning server, and how long the prune may take: its timer is
/// armed a minute (`counter::PRUNE_INTERVAL_MS`) after the first event over the limit, and an
/// alarm may run late on a loaded machine.
const PRUNE_KEEP: i64 = 5;
const PRUNED_WITHIN: Duration = Duration::from_secs(240);

/// The snapshot, then every frame before the sentinel pong.
async fn frames_after_snapshot(sock: &mut Ws) -> Result<Vec<Value>, Box<dyn std::error::Error + Send + Sync>> {
    ensure_eq!(sock.recv().await?["type"], json!("snapshot"));
    sock.send_text(r#"{"type":"ping"}"#).await?;
    let mut frames = Vec::new();
    loop {
        let v = sock.recv().await?;
        if v == json!({"type":"pong"}) {
            return Ok(frames);
        }
        frames.push(v);
    }
}

/// §6.3 (counters likewise): history keeps the newest `COUNTER_MAX_HISTORY` events, pruned by
/// the alarm (never per event); a `?since=` older than what is kept gets `resync_required`, one
/// inside it the exact events after it. The value and the sequence are untouched.
async fn pruning() -> TestResult {
    let extra = tokio::task::spawn_blocking(|| ExtraServer::start("counter-prune", &["COUNTER_MAX_HISTORY:5"])).await??;
    let base = extra.ws_base();
    let t = server().token(&unique("alice"));
    let name = unique("prune");
    let path = format!("/ws/counter/{name}");
    let mut a = ws_at(&base, &path, &t).await?;
    a.recv().await?;
    for i in 1..=12 {
        a.send_json(&json!({"type":"increment","id":format!("p{i}")})).await?;
        ensure_eq!(a.recv_type("ack").await?["seq"], json!(i));
    }
    // Until the alarm prunes, `since=3` replays 4..=12; afterwards it must resync.
    let deadline = tokio::time::Instant::now() + PRUNED_WITHIN;
    loop {
        let mut probe = ws_at(&base, &format!("{path}?since=3"), &t).await?;
        let frames = frames_after_snapshot(&mut probe).await?;
        probe.close().await?;
        if frames == vec![json!({"type":"resync_required","latestSeq":12})] {
            break;
        }
        let seqs: Vec<i64> = frames.iter().filter_map(|f| f["seq"].as_i64()).collect();
        ensure_eq!(seqs, (4..=12).collect::<Vec<i64>>());
        ensure!(tokio::time::Instant::now() < deadline, "history not pruned within {PRUNED_WITHIN:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // What is kept: exactly the newest PRUNE_KEEP events, in order.
    let kept_from = 12 - PRUNE_KEEP;
    let mut inside = ws_at(&base, &format!("{path}?since={kept_from}"), &t).await?;
    let frames = frames_after_snapshot(&mut inside).await?;
    let seqs: Vec<i64> = frames.iter().filter_map(|f| f["seq"].as_i64()).collect();
    ensure_eq!(seqs, ((kept_from + 1)..=12).collect::<Vec<i64>>());
    ensure!(frames.iter().all(|f| f["type"] == "increment"), "only the kept events: {frames:?}");
    // The counter itself is untouched, and the next event continues the sequence.
    a.send_json(&json!({"type":"increment","id":"p13"})).await?;
    ensure_eq!(a.recv_type("ack").await?["seq"], json!(13));
    let ev = inside.recv_type("increment").await?;
    ensure_eq!((ev["value"].clone(), ev["seq"].clone()), (json!(13), json!(13)));
    inside.close().await?;
    a.close().await?;
    drop(extra);
    Ok(())
}
