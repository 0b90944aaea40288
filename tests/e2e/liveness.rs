//! Liveness (issue "Green on every run" §2, defects 3–5): presence matches the sockets that
//! really exist.
//!
//! - `logout_all` ends every device's TCP at once, the sender's too (abort after the fan-out),
//!   without disturbing requests to other objects.
//! - After a crash (SIGKILL of wrangler + workerd, restart on the same state) the next member
//!   sees no ghost, per object class.
//! - A client that vanishes without a TCP close (a proxy that stops forwarding) is swept after
//!   `HEARTBEAT_TIMEOUT_MS` and announced gone; a pinging socket is never swept. Those run on a
//!   second `wrangler dev` with `HEARTBEAT_TIMEOUT_MS=5000`; every other server has an hour
//!   (`support::HEARTBEAT_TIMEOUT_MS`), so no long test on a loaded machine is swept.

use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use serde_json::{json, Value};

use crate::proxy::Proxy;
use crate::support::{fail, http, server, unique, ws, ws_at, ExtraServer, TestResult, Ws};
use crate::{ensure, ensure_eq, restart_trial, trial};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub fn tests() -> Vec<Trial> {
    vec![
        trial("liveness::logout_all_ends_every_device_tcp_sender_included", logout_all_ends_tcp),
        trial("liveness::logout_all_abort_leaves_other_objects_working", logout_all_concurrent),
        restart_trial("liveness::crash_restart_no_ghost_waddle", crash_waddle),
        restart_trial("liveness::crash_restart_no_ghost_channel", crash_channel),
        restart_trial("liveness::crash_restart_no_ghost_chat", crash_chat),
        restart_trial("liveness::crash_restart_no_ghost_session", crash_session),
        trial("liveness::heartbeat_sweep_announces_vanished_clients", heartbeat_sweep),
    ]
}

/// The issue asks for 1 s; the bound is 5 s because this 2-core machine runs the suite with
/// 24 tests in parallel. It still separates the fix from the bug: without the abort, the
/// sender's TCP lingered until eviction (10–30 s).
const PROMPT: Duration = Duration::from_secs(5);

fn session_path(user: &str, device: &str) -> String {
    format!("/__user-session?userId={user}&deviceId={device}")
}

async fn device_at(base: &str, user: &str, device: &str, token: &str) -> Res<(Ws, Value)> {
    let mut sock = ws_at(base, &session_path(user, device), token).await?;
    let init = sock.recv().await?;
    ensure_eq!(init["type"], json!("initial_state"));
    Ok((sock, init))
}

// ------------------------------------------------------------------ A: logout_all

async fn logout_all_ends_tcp() -> TestResult {
    let s = server();
    let base = s.ws_base();
    let user = unique("lotcp");
    let token = s.token(&user);
    let (mut phone, _) = device_at(&base, &user, "phone", &token).await?;
    let (mut tablet, _) = device_at(&base, &user, "tablet", &token).await?;
    let (mut laptop, _) = device_at(&base, &user, "laptop", &token).await?;
    // A socket in another object, so the fan-out has work to await before the abort.
    let mut waddle = ws(&format!("/ws/waddle/{}", unique("lotw")), &token).await?;
    waddle.recv_type("presence_state").await?;

    let sent = Instant::now();
    laptop.send_json(&json!({"type":"logout_all"})).await?;
    // The sender first: it is the one that used to wait for eviction.
    for (name, sock) in [("laptop (sender)", &mut laptop), ("phone", &mut phone), ("tablet", &mut tablet)] {
        let (closed, _) = sock.expect_close_and_end(PROMPT).await.map_err(|e| fail(format!("{name}: {e}")))?;
        ensure_eq!((name, closed.code), (name, 4001));
        ensure!(sent.elapsed() < PROMPT, "{name}: TCP ended only {:?} after logout_all", sent.elapsed());
    }
    // A shared object is not reset (it holds other users' sockets): its socket gets the 4001
    // Close frame at once; its TCP may linger until that object is evicted.
    ensure_eq!(waddle.expect_close().await?.code, 4001);
    // The revocation was flushed before the reset: the old token stays refused, a new one works.
    let refused = crate::support::ws_refusal(&session_path(&user, "phone"), &[("Authorization", &format!("Bearer {token}"))]).await?;
    ensure_eq!(refused, 401);
    tokio::time::sleep(Duration::from_millis(1100)).await; // iat has whole seconds
    let fresh = s.token(&user);
    let (mut again, init) = device_at(&base, &user, "phone", &fresh).await?;
    ensure_eq!((init["connectedDevices"].clone(), init["devices"].clone()), (json!(1), json!(["phone"])));
    again.send_text(r#"{"type":"ping"}"#).await?;
    ensure_eq!(again.recv().await?, json!({"type":"pong"}));
    again.close().await
}

/// abort() resets only the UserSession: requests to other objects running at the same time
/// (HTTP to a waddle and a counter, a bystander's socket) all succeed.
async fn logout_all_concurrent() -> TestResult {
    let s = server();
    let base = s.ws_base();
    let waddle = unique("lconw");
    let bystander_user = unique("lconb");
    let mut bystander = ws(&format!("/ws/waddle/{waddle}"), &s.token(&bystander_user)).await?;
    bystander.recv_type("presence_state").await?;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = std::sync::Arc::clone(&stop);
        let waddle = waddle.clone();
        tokio::spawn(async move {
            let reader = server().token("lcon-reader");
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || statuses.len() < 20 {
                let (hw, hc) = (http(), http());
                let path = format!("/api/waddle/{waddle}/presence");
                let (w, c) = tokio::join!(hw.get(&path, &reader), hc.get("/api/counter/lcon-counter", &reader));
                statuses.push(w.map(|r| r.status).unwrap_or(0));
                statuses.push(c.map(|r| r.status).unwrap_or(0));
            }
            statuses
        })
    };
    for round in 0..3 {
        let user = unique(&format!("lcon{round}"));
        let token = s.token(&user);
        let (mut a, _) = device_at(&base, &user, "a", &token).await?;
        let (mut b, _) = device_at(&base, &user, "b", &token).await?;
        let mut in_waddle = ws(&format!("/ws/waddle/{waddle}"), &token).await?;
        in_waddle.recv_type("presence_state").await?;
        a.send_json(&json!({"type":"logout_all"})).await?;
        for sock in [&mut a, &mut b] {
            let (closed, _) = sock.expect_close_and_end(PROMPT).await?;
            ensure_eq!(closed.code, 4001);
        }
        ensure_eq!(in_waddle.expect_close().await?.code, 4001);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statuses = hammer.await?;
    ensure!(statuses.iter().all(|c| *c == 200), "requests to other objects failed during logout_all: {statuses:?}");
    // The bystander in the waddle the fan-out reached is untouched.
    bystander.send_text(r#"{"type":"ping"}"#).await?;
    ensure_eq!(bystander.recv_type("pong").await?, json!({"type":"pong"}));
    bystander.close().await
}

// ------------------------------------------------------------------ B: crash restarts

/// Connect, then SIGKILL wrangler + workerd and start it again on the same state.
fn crash() -> TestResult {
    server().crash_restart()
}

async fn crash_waddle() -> TestResult {
    let s = server();
    let w = unique("ghostw");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = ws(&format!("/ws/waddle/{w}"), &s.token(&alice)).await?;
    a.recv_type("presence_state").await?;
    tokio::task::spawn_blocking(crash).await??;
    drop(a);
    let mut b = ws(&format!("/ws/waddle/{w}"), &s.token(&bob)).await?;
    let state = b.recv_type("presence_state").await?;
    let users = state["users"].as_array().ok_or("users")?;
    let status = |u: &str| users.iter().find(|e| e[0] == u).map(|e| e[1]["status"].clone());
    ensure_eq!(status(&alice), Some(json!("offline")));
    ensure_eq!(status(&bob), Some(json!("online")));
    let view = http().get(&format!("/api/waddle/{w}/presence"), &s.token("reader")).await?.body;
    let alice_view = view["users"].as_array().ok_or("users")?.iter().find(|e| e["userId"] == alice.as_str()).cloned();
    ensure_eq!(alice_view.map(|e| e["status"].clone()), Some(json!("offline")));
    // Nothing else is pending for bob (a second, late correction would be a bug too).
    b.send_text(r#"{"type":"ping"}"#).await?;
    ensure_eq!(b.recv().await?, json!({"type":"pong"}));
    b.close().await
}

async fn crash_channel() -> TestResult {
    let s = server();
    let c = unique("ghostc");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = ws(&format!("/ws/channel/{c}"), &s.token(&alice)).await?;
    a.recv_type("participants").await?;
    a.send_json(&json!({"type":"typing","isTyping":true})).await?;
    a.recv_type("typing").await?;
    tokio::task::spawn_blocking(crash).await??;
    drop(a);
    let mut b = ws(&format!("/ws/channel/{c}"), &s.token(&bob)).await?;
    ensure_eq!(b.recv().await?, json!({"type":"participants","users":[bob]}));
    b.send_json(&json!({"type":"typing","isTyping":true})).await?;
    ensure_eq!(b.recv_type("typing").await?, json!({"type":"typing","users":[bob]}));
    b.close().await
}

async fn crash_chat() -> TestResult {
    let s = server();
    let room = unique("ghostr");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = ws(&format!("/api/chat/{room}"), &s.token(&alice)).await?;
    ensure_eq!(a.recv_type("userCount").await?["count"], json!(1));
    tokio::task::spawn_blocking(crash).await??;
    drop(a);
    let mut b = ws(&format!("/api/chat/{room}"), &s.token(&bob)).await?;
    ensure_eq!(b.recv_type("userCount").await?, json!({"type":"userCount","count":1}));
    // The crash took alice's socket without a close event: the wake stored her "left" once,
    // before bob's "joined" (§2: presence is reconciled on wake; §6.3: left is persisted).
    let system = |body: &Value| -> Vec<String> {
        let mut lines: Vec<String> = body["messages"]
            .as_array()
            .map(|m| m.iter().filter(|m| m["kind"] == "system").filter_map(|m| m["content"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        lines.reverse();
        lines
    };
    let history = http().get(&format!("/api/chat/{room}/messages?limit=100"), &s.token(&bob)).await?;
    ensure_eq!(history.status, 200);
    ensure_eq!(system(&history.body), vec![format!("{alice} joined"), format!("{alice} left"), format!("{bob} joined")]);
    // Alice comes back: one more "joined", and her old socket is not announced again.
    let mut c = ws(&format!("/api/chat/{room}"), &s.token(&alice)).await?;
    ensure_eq!(c.recv_type("userCount").await?, json!({"type":"userCount","count":2}));
    let history = http().get(&format!("/api/chat/{room}/messages?limit=100"), &s.token(&alice)).await?;
    ensure_eq!(
        system(&history.body),
        vec![format!("{alice} joined"), format!("{alice} left"), format!("{bob} joined"), format!("{alice} joined")]
    );
    c.close().await?;
    b.close().await
}

async fn crash_session() -> TestResult {
    let s = server();
    let base = s.ws_base();
    let user = unique("ghosts");
    let token = s.token(&user);
    let (phone, _) = device_at(&base, &user, "phone", &token).await?;
    tokio::task::spawn_blocking(crash).await??;
    drop(phone);
    let (laptop, init) = device_at(&base, &user, "laptop", &token).await?;
    ensure_eq!((init["connectedDevices"].clone(), init["devices"].clone()), (json!(1), json!(["laptop"])));
    ensure_eq!(init["presence"], json!("online"));
    laptop.close().await
}

// ------------------------------------------------------------------ C: heartbeat sweep

/// The sweep server's timeout, and how long we allow for a departure (timeout + an alarm that
/// runs late on a loaded machine).
const SWEEP_TIMEOUT_MS: u64 = 5_000;
const DEPARTURE_WITHIN: Duration = Duration::from_secs(60);
/// The observer pings this often (well within the timeout), so it is never swept.
const PING_EVERY: Duration = Duration::from_secs(1);

async fn heartbeat_sweep() -> TestResult {
    let vars = [format!("HEARTBEAT_TIMEOUT_MS:{SWEEP_TIMEOUT_MS}")];
    let extra = tokio::task::spawn_blocking(move || {
        let v: Vec<&str> = vars.iter().map(String::as_str).collect();
        ExtraServer::start("sweep", &v)
    })
    .await??;
    let base = extra.ws_base();
    let target = format!("127.0.0.1:{}", extra.port);
    let (w, c, r, s, v) = tokio::join!(
        sweep_waddle(&base, &target),
        sweep_channel(&base, &target),
        sweep_chat(&base, &target),
        sweep_session(&base, &target),
        crate::voice::sweep(&base, &target, PING_EVERY, DEPARTURE_WITHIN, SWEEP_TIMEOUT_MS),
    );
    let result = w.and(c).and(r).and(s).and(v);
    drop(extra); // stops the second wrangler (whole process group) and removes its state
    result
}

/// The departure must not come before the vanished socket's timeout (minus 1 s of slack for
/// clocks and for when its last ping was answered).
fn ensure_not_early(last_alive: Instant, what: &str) -> TestResult {
    let waited = last_alive.elapsed();
    ensure!(
        waited >= Duration::from_millis(SWEEP_TIMEOUT_MS - 1_000),
        "{what} announced after only {waited:?} (timeout {SWEEP_TIMEOUT_MS} ms)"
    );
    Ok(())
}

async fn sweep_waddle(base: &str, target: &str) -> TestResult {
    let s = server();
    let w = unique("sweepw");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut b = ws_at(base, &format!("/ws/waddle/{w}"), &s.token(&bob)).await?;
    b.recv_type("presence_state").await?;
    let proxy = Proxy::start(target).await?;
    let proxied = format!("ws://{}", proxy.addr);
    let mut a = ws_at(&proxied, &format!("/ws/waddle/{w}"), &s.token(&alice)).await?;
    a.recv_type("presence_state").await?;
    b.recv_matching_while_pinging(Duration::from_secs(10), PING_EVERY, |v| v["userId"] == alice.as_str()).await?;
    // Alice pings (auto-response: her last-seen is the ping) and then vanishes.
    a.send_text(r#"{"type":"ping"}"#).await?;
    ensure_eq!(a.recv().await?, json!({"type":"pong"}));
    let alive = Instant::now();
    proxy.freeze();
    let gone = b
        .recv_matching_while_pinging(DEPARTURE_WITHIN, PING_EVERY, |v| v["type"] == "presence_update" && v["userId"] == alice.as_str())
        .await?;
    ensure_eq!(gone, json!({"type":"presence_update","userId":alice,"status":"offline"}));
    ensure_not_early(alive, "waddle offline")?;
    // Bob kept pinging: he survives more sweeps (each at most a timeout apart).
    let pongs = b.ping_for(Duration::from_millis(2 * SWEEP_TIMEOUT_MS), PING_EVERY).await?;
    ensure!(pongs >= 5, "healthy socket got only {pongs} pongs");
    b.send_text(r#"{"type":"ping"}"#).await?;
    ensure_eq!(b.recv().await?, json!({"type":"pong"}));
    b.close().await
}

async fn sweep_channel(base: &str, target: &str) -> TestResult {
    let s = server();
    let c = unique("sweepc");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut b = ws_at(base, &format!("/ws/channel/{c}"), &s.token(&bob)).await?;
    b.recv_type("participants").await?;
    let proxy = Proxy::start(target).await?;
    let mut a = ws_at(&format!("ws://{}", proxy.addr), &format!("/ws/channel/{c}"), &s.token(&alice)).await?;
    a.recv_type("participants").await?;
    let alive = Instant::now(); // alice never pings: her connect time counts
    b.recv_matching_while_pinging(Duration::from_secs(10), PING_EVERY, |v| v["type"] == "participants").await?;
    proxy.freeze();
    let left = b
        .recv_matching_while_pinging(DEPARTURE_WITHIN, PING_EVERY, |v| v["type"] == "participants")
        .await?;
    ensure_eq!(left, json!({"type":"participants","users":[bob]}));
    ensure_not_early(alive, "channel participant left")?;
    let pongs = b.ping_for(Duration::from_millis(SWEEP_TIMEOUT_MS + 2_000), PING_EVERY).await?;
    ensure!(pongs >= 4, "healthy socket got only {pongs} pongs");
    b.close().await
}

async fn sweep_chat(base: &str, target: &str) -> TestResult {
    let s = server();
    let room = unique("sweepr");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut b = ws_at(base, &format!("/api/chat/{room}"), &s.token(&bob)).await?;
    ensure_eq!(b.recv_type("userCount").await?["count"], json!(1));
    let proxy = Proxy::start(target).await?;
    let mut a = ws_at(&format!("ws://{}", proxy.addr), &format!("/api/chat/{room}"), &s.token(&alice)).await?;
    a.recv_type("userCount").await?;
    let alive = Instant::now();
    b.recv_matching_while_pinging(Duration::from_secs(10), PING_EVERY, |v| v["type"] == "userCount" && v["count"] == 2).await?;
    proxy.freeze();
    let left = b
        .recv_matching_while_pinging(DEPARTURE_WITHIN, PING_EVERY, |v| {
            v["type"] == "message" && v["message"]["kind"] == "system" && v["message"]["content"].as_str().is_some_and(|c| c.ends_with(" left"))
        })
        .await?;
    ensure_eq!(left["message"]["userId"], json!(alice));
    ensure_eq!(b.recv_matching_while_pinging(Duration::from_secs(10), PING_EVERY, |v| v["type"] == "userCount").await?["count"], json!(1));
    ensure_not_early(alive, "chat user left")?;
    let pongs = b.ping_for(Duration::from_millis(SWEEP_TIMEOUT_MS + 2_000), PING_EVERY).await?;
    ensure!(pongs >= 4, "healthy socket got only {pongs} pongs");
    b.close().await
}

async fn sweep_session(base: &str, target: &str) -> TestResult {
    let s = server();
    let user = unique("sweeps");
    let token = s.token(&user);
    let (mut laptop, _) = device_at(base, &user, "laptop", &token).await?;
    // The laptop is away, the phone (behind the proxy) online: the user is online until the
    // phone is swept, then away.
    laptop.send_json(&json!({"type":"update_presence","presence":"away"})).await?;
    let proxy = Proxy::start(target).await?;
    let (_phone, _) = device_at(&format!("ws://{}", proxy.addr), &user, "phone", &token).await?;
    let alive = Instant::now();
    laptop
        .recv_matching_while_pinging(Duration::from_secs(10), PING_EVERY, |v| v == &json!({"type":"presence_updated","presence":"online"}))
        .await?;
    proxy.freeze();
    let now_away = laptop
        .recv_matching_while_pinging(DEPARTURE_WITHIN, PING_EVERY, |v| v["type"] == "presence_updated")
        .await?;
    ensure_eq!(now_away, json!({"type":"presence_updated","presence":"away"}));
    ensure_not_early(alive, "session device gone")?;
    laptop.send_text(r#"{"type":"sync_state"}"#).await?;
    let st = laptop.recv_matching_while_pinging(Duration::from_secs(10), PING_EVERY, |v| v["type"] == "state").await?;
    ensure_eq!((st["connectedDevices"].clone(), st["devices"].clone()), (json!(1), json!(["laptop"])));
    let pongs = laptop.ping_for(Duration::from_millis(SWEEP_TIMEOUT_MS + 2_000), PING_EVERY).await?;
    ensure!(pongs >= 4, "healthy socket got only {pongs} pongs");
    laptop.close().await
}
