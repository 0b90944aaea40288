//! Operations (docs/operations.md): the kit's per-object counters at
//! `GET /api/admin/stats/{class}/{name}` and the structured JSON log lines.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libtest_mimic::Trial;
use serde_json::{json, Value};

use crate::support::{fail, http, server, unique, wake_needle, ws, Hibernation, Ws, TestResult};
use crate::{ensure, ensure_eq, trial};

type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub fn tests() -> Vec<Trial> {
    vec![
        trial("ops::chat_room_counts_frames_sockets_and_rows", chat_counts),
        trial("ops::wakes_counted_across_hibernation", wakes),
        trial("ops::alarm_runs_counted_and_logged", alarm_runs),
        trial("ops::stats_route_is_admin_only_and_validated", admin_only),
        trial("ops::untouched_name_answers_zeros_and_stores_nothing", untouched),
        trial("ops::request_and_socket_lines_logged_without_the_token", log_lines),
    ]
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn admin() -> String {
    server().admin_token(&unique("ops-admin"))
}

async fn stats(class: &str, name: &str) -> R<Value> {
    let r = http().get(&format!("/api/admin/stats/{class}/{name}"), &admin()).await?;
    ensure_eq!(r.status, 200);
    let keys: Vec<&String> = r.body.as_object().ok_or("object")?.keys().collect();
    ensure_eq!(keys.len(), 12);
    Ok(r.body)
}

/// Poll the stats until `pred` holds (events are processed in their own time on a busy machine).
async fn stats_until(class: &str, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> R<Value> {
    let deadline = tokio::time::Instant::now() + crate::support::RECV;
    loop {
        let body = stats(class, name).await?;
        if pred(&body) {
            return Ok(body);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(fail(format!("stats never showed {what}: {body}")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn int(v: &Value, key: &str) -> R<i64> {
    v[key].as_i64().ok_or_else(|| fail(format!("{key} missing in {v}")))
}

fn zeros(class: &str, name: &str) -> Value {
    json!({
        "class": class, "name": name, "openSockets": 0, "socketsAccepted": 0, "socketsClosed": {},
        "framesIn": 0, "framesOut": 0, "framesRejected": 0, "wakes": 0, "alarmRuns": 0,
        "storageRows": 0, "lastActivity": null
    })
}

/// Reads `n` frames of the given types (join traffic).
async fn frames(sock: &mut Ws, n: usize) -> R<Vec<Value>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(sock.recv().await?);
    }
    Ok(out)
}

async fn chat_counts() -> TestResult {
    let started = now_ms();
    let room = unique("opsroom");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let (ta, tb) = (server().token(&alice), server().token(&bob));
    let mut a = ws(&format!("/api/chat/{room}"), &ta).await?;
    frames(&mut a, 2).await?; // Alice joined, userCount
    let mut b = ws(&format!("/api/chat/{room}"), &tb).await?;
    frames(&mut a, 2).await?; // Bob joined, userCount
    frames(&mut b, 2).await?;
    // 3 + 2 messages, each delivered to both sockets (each seen by both before the next).
    for (i, text) in ["a1", "b1", "a2", "b2", "a3"].into_iter().enumerate() {
        let sock = if i % 2 == 0 { &mut a } else { &mut b };
        sock.send_json(&json!({"type": "message", "content": text})).await?;
        for sock in [&mut a, &mut b] {
            ensure_eq!(sock.recv().await?["message"]["content"], json!(text));
        }
    }
    // One frame refused in-band (the socket stays), answered with an error frame.
    a.send_json(&json!({"type": "message", "content": "   "})).await?;
    ensure_eq!(a.recv().await?["code"], json!("invalid_content"));
    // Sentinels: the runtime answers pings without the object, so they count nowhere.
    a.expect_next_is_pong().await?;
    b.expect_next_is_pong().await?;
    let live = stats("chat_room", &room).await?;
    ensure_eq!((int(&live, "openSockets")?, int(&live, "socketsAccepted")?, int(&live, "framesIn")?), (2, 2, 6));
    ensure_eq!(int(&live, "framesRejected")?, 1);
    // 4 + 2 join frames, 10 message deliveries, 1 error frame.
    ensure!(int(&live, "framesOut")? >= 17, "framesOut {live}");

    b.close_with(4000, "done").await?;
    frames(&mut a, 2).await?; // Bob left, userCount
    a.close().await?;
    let done = stats_until("chat_room", &room, "both closes", |s| s["socketsClosed"] == json!({"1000": 1, "4000": 1})).await?;
    ensure_eq!((int(&done, "openSockets")?, int(&done, "socketsAccepted")?, int(&done, "framesIn")?), (0, 2, 6));
    ensure!(int(&done, "framesOut")? >= 19, "framesOut {done}");
    ensure!(int(&done, "wakes")? >= 1, "the first start is a wake: {done}");
    let last = int(&done, "lastActivity")?;
    ensure!(last >= started - 5_000 && last <= now_ms() + 5_000, "lastActivity {last}");
    // Rows: every stored message (joins, five messages, lefts) plus the room's own row.
    let history = http().get(&format!("/api/chat/{room}/messages?limit=100"), &ta).await?.ok()?;
    let stored = history.body["messages"].as_array().ok_or("messages")?.len() as i64;
    ensure_eq!(stored, 9);
    ensure_eq!(int(&done, "storageRows")?, stored + 1);
    ensure_eq!((done["class"].clone(), done["name"].clone()), (json!("chat_room"), json!(room)));
    Ok(())
}

async fn wakes() -> TestResult {
    let room = unique("opswake");
    let user = unique("alice");
    let token = server().token(&user);
    let mut a = ws(&format!("/api/chat/{room}"), &token).await?;
    frames(&mut a, 2).await?;
    a.send_json(&json!({"type": "message", "content": "before"})).await?;
    frames(&mut a, 1).await?;
    // The stats request flushes the counters: they must come back after the eviction.
    let before = stats("chat_room", &room).await?;
    ensure_eq!((int(&before, "socketsAccepted")?, int(&before, "framesIn")?), (1, 1));
    let mut hib = Hibernation::start("ChatRoom", &room).await?;
    loop {
        hib.idle().await?;
        a.expect_next_is_pong().await?;
        // The probe reaches the room (waking it if it was evicted) and changes nothing.
        ensure_eq!(http().get(&format!("/api/chat/{room}/messages"), &token).await?.status, 200);
        if hib.woke().await {
            break;
        }
    }
    let after = stats("chat_room", &room).await?;
    ensure!(int(&after, "wakes")? > int(&before, "wakes")?, "wakes did not grow: {before} → {after}");
    // Counted before the eviction, still there after it; the socket survived it too.
    ensure_eq!((int(&after, "socketsAccepted")?, int(&after, "framesIn")?, int(&after, "openSockets")?), (1, 1, 1));
    // The wake line is one JSON object with the running count.
    let line = find_line(&wake_needle("ChatRoom", &room), |v| v["wakes"].as_i64().is_some_and(|n| n >= 2)).await?;
    ensure_eq!((line["event"].clone(), line["class"].clone(), line["object"].clone()), (json!("wake"), json!("ChatRoom"), json!(room)));
    a.close().await
}

async fn alarm_runs() -> TestResult {
    let c = unique("opsalarm");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = ws(&format!("/ws/channel/{c}"), &server().token(&alice)).await?;
    a.recv_type("participants").await?;
    let mut b = ws(&format!("/ws/channel/{c}"), &server().token(&bob)).await?;
    b.recv_type("participants").await?;
    a.recv_type("participants").await?;
    a.send_json(&json!({"type": "typing", "isTyping": true})).await?;
    ensure_eq!(b.recv().await?, json!({"type": "typing", "users": [alice]}));
    // The typing expiry is an alarm: once its frame arrived, the alarm has run.
    ensure_eq!(b.recv().await?, json!({"type": "typing", "users": []}));
    let s = stats_until("channel", &c, "an alarm run", |s| s["alarmRuns"].as_i64().is_some_and(|n| n >= 1)).await?;
    ensure!(int(&s, "lastActivity")? > 0, "lastActivity {s}");
    let line = find_line(&format!(r#"{{"event":"alarm","class":"Channel","object":"{c}""#), |v| {
        v["timers"].as_array().is_some_and(|t| t.contains(&json!("typing")))
    })
    .await?;
    ensure_eq!(line["event"], json!("alarm"));
    a.close().await?;
    b.close().await
}

async fn admin_only() -> TestResult {
    let name = unique("opsauth");
    let path = format!("/api/admin/stats/counter/{name}");
    let none = http().request("GET", &path, None, None, &[]).await?;
    ensure_eq!(none.status, 401);
    let bad = http().get(&path, "not-a-token").await?;
    ensure_eq!(bad.status, 401);
    let user = http().get(&path, &server().token(&unique("user"))).await?;
    ensure_eq!((user.status, user.error_code()), (403, Some("forbidden")));
    let t = admin();
    let unknown = http().get(&format!("/api/admin/stats/nope/{name}"), &t).await?;
    ensure_eq!(unknown.status, 404);
    // The class by its class name, in any case, is the same class (the answer names it short).
    let by_class_name = http().get(&format!("/api/admin/stats/ChatRoom/{name}"), &t).await?.ok()?;
    ensure_eq!(by_class_name.body["class"], json!("chat_room"));
    let misspelt = http().get(&format!("/api/admin/stats/chat-room/{name}"), &t).await?;
    ensure_eq!(misspelt.status, 404);
    let bad_name = http().get("/api/admin/stats/counter/bad%20name", &t).await?;
    ensure_eq!((bad_name.status, bad_name.error_code()), (400, Some("invalid_name")));
    let post = http().post(&path, &t, "{}").await?;
    ensure_eq!(post.status, 405);
    // None of those touched the object.
    ensure_eq!(stats("counter", &name).await?, zeros("counter", &name));
    Ok(())
}

async fn untouched() -> TestResult {
    let name = unique("opsfresh");
    // Every class answers for a name never touched, with zeros, and creates nothing: a second
    // look still finds no wake (a start would have created the tables and counted one).
    for class in ["counter", "chat_room", "waddle", "channel", "game", "user_session"] {
        ensure_eq!(stats(class, &name).await?, zeros(class, &name));
        ensure_eq!(stats(class, &name).await?, zeros(class, &name));
    }
    // Touched, it counts: the request, the first start.
    let t = server().token(&unique("user"));
    ensure_eq!(http().get(&format!("/api/counter/{name}"), &t).await?.status, 200);
    let touched = stats("counter", &name).await?;
    ensure_eq!((int(&touched, "wakes")?, int(&touched, "framesIn")?), (1, 0));
    ensure!(touched["lastActivity"].is_i64(), "lastActivity {touched}");
    // The other classes of that name are still untouched.
    ensure_eq!(stats("chat_room", &name).await?, zeros("chat_room", &name));
    Ok(())
}

/// Wait (generously) for a log line containing `needle` whose JSON satisfies `pred`.
async fn find_line(needle: &str, pred: impl Fn(&Value) -> bool) -> R<Value> {
    let deadline = tokio::time::Instant::now() + crate::support::RECV;
    loop {
        let found = server().log.lock().ok().and_then(|l| {
            l.iter().filter(|line| line.contains(needle)).filter_map(|line| parse_line(line)).find(|v| pred(v))
        });
        if let Some(v) = found {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(fail(format!("no log line with {needle} in time")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The JSON object of a structured line (wrangler may prefix what the Worker printed).
fn parse_line(line: &str) -> Option<Value> {
    let start = line.find(r#"{"event""#)?;
    let end = line.rfind('}')?;
    serde_json::from_str(line.get(start..=end)?).ok()
}

async fn log_lines() -> TestResult {
    if !server().is_local() {
        return Ok(()); // no log of a deployment here: `wrangler tail` (docs/operations.md)
    }
    let room = unique("opslog");
    let user = unique("alice");
    let token = server().token(&user);
    // An HTTP request with the token in the header.
    let r = http().get(&format!("/api/chat/{room}/messages"), &token).await?;
    ensure_eq!(r.status, 200);
    let line = find_line(&format!(r#""object":"{room}""#), |v| v["event"] == json!("request") && v["method"] == json!("GET")).await?;
    ensure_eq!(
        (line["route"].clone(), line["class"].clone(), line["status"].clone(), line["userId"].clone()),
        (json!("/api/chat/{room}/messages"), json!("chat_room"), json!(200), json!(user))
    );
    ensure!(line["requestId"].as_str().is_some_and(|id| !id.is_empty()), "requestId {line}");
    ensure!(line["durationMs"].as_i64().is_some_and(|d| d >= 0), "durationMs {line}");
    let keys: Vec<&String> = line.as_object().ok_or("object")?.keys().collect();
    ensure_eq!(keys.len(), 9);

    // A socket with the token in the query: the request line names the route, not the URL.
    // (A token of its own: a different expiry makes a different string.)
    let query_token = server().token_with(&user, None, &[], crate::support::now_secs(), crate::support::now_secs() + 1800);
    ensure!(query_token != token, "tokens must differ");
    let sock = crate::support::ws_with(&format!("/api/chat/{room}?token={query_token}"), &[]).await?;
    let upgrade = find_line(&format!(r#""object":"{room}""#), |v| v["event"] == json!("request") && v["status"] == json!(101)).await?;
    ensure_eq!((upgrade["route"].clone(), upgrade["userId"].clone()), (json!("/api/chat/{room}"), json!(user)));
    let open = find_line(r#"{"event":"socket_open""#, |v| v["object"] == json!(room)).await?;
    ensure_eq!((open["class"].clone(), open["userId"].clone()), (json!("ChatRoom"), json!(user)));
    sock.close().await?;
    let closed = find_line(r#"{"event":"socket_close""#, |v| v["object"] == json!(room)).await?;
    ensure_eq!((closed["userId"].clone(), closed["code"].clone()), (json!(user), json!(1000)));

    // A refused request is logged too, with its status and no user.
    let refused = http().get(&format!("/api/admin/stats/counter/{room}"), "garbage-token-value").await?;
    ensure_eq!(refused.status, 401);
    let line = find_line(&format!(r#""object":"{room}""#), |v| v["status"] == json!(401)).await?;
    ensure_eq!((line["route"].clone(), line["userId"].clone()), (json!("/api/admin/stats/{class}/{name}"), Value::Null));

    // No line of ours carries a token; the header token appears nowhere in the log at all.
    let log = server().log.lock().map_err(|_| fail("log poisoned"))?.clone();
    ensure!(!log.iter().any(|l| l.contains(&token)), "the header token reached the log");
    ensure!(!log.iter().any(|l| l.contains("garbage-token-value")), "a refused token reached the log");
    let ours: Vec<&String> = log.iter().filter(|l| l.contains(r#"{"event""#)).collect();
    ensure!(ours.iter().all(|l| !l.contains(&query_token)), "a query token reached a structured line");
    ensure!(ours.iter().all(|l| !l.contains("token=")), "a query string reached a structured line");
    Ok(())
}
