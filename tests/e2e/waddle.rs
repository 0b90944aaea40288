//! Waddle (docs/protocol.md §6.4) over real HTTP and WebSockets.

use libtest_mimic::Trial;
use serde_json::{json, Value};

use crate::support::{http, server, unique, ws, Hibernation, Ws, TestResult};
use crate::{ensure, ensure_eq, trial};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("waddle::presence_state_on_connect", presence_state_on_connect),
        trial("waddle::presence_update_broadcast_not_echoed", presence_update),
        trial("waddle::invalid_status_in_band_error", invalid_status),
        trial("waddle::multi_socket_offline_after_last_close", multi_socket),
        trial("waddle::typing_relayed_to_others", typing),
        trial("waddle::admin_broadcast_and_403", admin_broadcast),
        trial("waddle::bad_frames_close_and_presence_unchanged", bad_frames),
        trial("waddle::presence_survives_hibernation", hibernation),
    ]
}

async fn connect(waddle: &str, user: &str) -> Result<(Ws, Value), Box<dyn std::error::Error + Send + Sync>> {
    let mut sock = ws(&format!("/ws/waddle/{waddle}"), &server().token(user)).await?;
    let state = sock.recv().await?;
    ensure_eq!(state["type"], json!("presence_state"));
    Ok((sock, state))
}

async fn presence(waddle: &str) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
    let r = http().get(&format!("/api/waddle/{waddle}/presence"), &server().token(&unique("reader"))).await?;
    ensure_eq!(r.status, 200);
    Ok(r.body)
}

fn status_of(view: &Value, user: &str) -> Option<(String, i64)> {
    view["users"].as_array()?.iter().find(|u| u["userId"] == user).map(|u| {
        (u["status"].as_str().unwrap_or_default().to_owned(), u["lastSeen"].as_i64().unwrap_or(-1))
    })
}

async fn presence_state_on_connect() -> TestResult {
    let w = unique("wpres");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let before = crate::support::now_secs() * 1000 - 1000;
    let (mut a, state) = connect(&w, &alice).await?;
    let users = state["users"].as_array().ok_or("users")?;
    ensure_eq!(users.len(), 1);
    ensure_eq!(users[0][0], json!(alice));
    ensure_eq!(users[0][1]["status"], json!("online"));
    ensure!(users[0][1]["lastSeen"].as_i64().is_some_and(|t| t >= before), "lastSeen {}", users[0][1]);

    let (mut b, state) = connect(&w, &bob).await?;
    let ids: Vec<&Value> = state["users"].as_array().ok_or("users")?.iter().map(|u| &u[0]).collect();
    ensure_eq!(ids, vec![&json!(alice), &json!(bob)]);
    for entry in state["users"].as_array().ok_or("users")? {
        ensure_eq!(entry[1]["status"], json!("online"));
    }
    ensure_eq!(a.recv().await?, json!({"type":"presence_update","userId":bob,"status":"online"}));
    // Bob's own connect sent Alice the update: nothing of it was queued for Bob himself.
    b.expect_next_is_pong().await?;

    let view = presence(&w).await?;
    ensure_eq!(status_of(&view, &alice).map(|s| s.0), Some("online".to_owned()));
    ensure_eq!(status_of(&view, &bob).map(|s| s.0), Some("online".to_owned()));
    a.close().await?;
    b.close().await
}

async fn presence_update() -> TestResult {
    let w = unique("wupd");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let (mut a, _) = connect(&w, &alice).await?;
    let (mut b, _) = connect(&w, &bob).await?;
    a.recv_type("presence_update").await?;
    for status in ["away", "busy", "offline", "online"] {
        a.send_json(&json!({"type":"presence_update","status":status})).await?;
        ensure_eq!(b.recv().await?, json!({"type":"presence_update","userId":alice,"status":status}));
        ensure_eq!(status_of(&presence(&w).await?, &alice).map(|s| s.0), Some(status.to_owned()));
    }
    // Not echoed to the sender.
    a.expect_next_is_pong().await?;
    a.close().await?;
    b.close().await
}

async fn invalid_status() -> TestResult {
    let w = unique("wbad");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let (mut a, _) = connect(&w, &alice).await?;
    let (mut b, _) = connect(&w, &bob).await?;
    a.recv_type("presence_update").await?;
    a.send_json(&json!({"type":"presence_update","status":"busy"})).await?;
    b.recv().await?;
    for bad in ["invisible", "", "Online"] {
        a.send_json(&json!({"type":"presence_update","status":bad})).await?;
        let err = a.recv().await?;
        ensure_eq!((err["type"].clone(), err["code"].clone()), (json!("error"), json!("invalid_status")));
    }
    b.expect_next_is_pong().await?;
    ensure_eq!(status_of(&presence(&w).await?, &alice).map(|s| s.0), Some("busy".to_owned()));
    a.close().await?;
    b.close().await
}

async fn multi_socket() -> TestResult {
    let w = unique("wmulti");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let (mut watcher, _) = connect(&w, &bob).await?;
    let (a1, _) = connect(&w, &alice).await?;
    ensure_eq!(watcher.recv().await?, json!({"type":"presence_update","userId":alice,"status":"online"}));
    let (a2, _) = connect(&w, &alice).await?;
    ensure_eq!(watcher.recv().await?, json!({"type":"presence_update","userId":alice,"status":"online"}));

    a1.close().await?;
    // The runtime answers our Close before the close handler has run; a presence read queued
    // behind that close event proves the handler is done — then nothing may be pending for the
    // watcher (alice still has a socket: no offline).
    ensure_eq!(status_of(&presence(&w).await?, &alice).map(|s| s.0), Some("online".to_owned()));
    watcher.expect_next_is_pong().await?;

    let before_close = crate::support::now_secs() * 1000 - 1000;
    a2.close().await?;
    ensure_eq!(watcher.recv().await?, json!({"type":"presence_update","userId":alice,"status":"offline"}));
    let (status, last_seen) = status_of(&presence(&w).await?, &alice).ok_or("alice missing")?;
    ensure_eq!(status, "offline");
    ensure!(last_seen >= before_close, "lastSeen {last_seen} not updated at the last close");
    watcher.close().await
}

async fn typing() -> TestResult {
    let w = unique("wtyping");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let (mut a, _) = connect(&w, &alice).await?;
    let (mut b, _) = connect(&w, &bob).await?;
    a.recv_type("presence_update").await?;
    a.send_json(&json!({"type":"typing","channelId":"general","isTyping":true})).await?;
    ensure_eq!(b.recv().await?, json!({"type":"typing","userId":alice,"channelId":"general","isTyping":true}));
    a.send_json(&json!({"type":"typing","channelId":"general","isTyping":false})).await?;
    ensure_eq!(b.recv().await?, json!({"type":"typing","userId":alice,"channelId":"general","isTyping":false}));
    a.expect_next_is_pong().await?;
    a.send_json(&json!({"type":"typing","channelId":"bad channel","isTyping":true})).await?;
    ensure_eq!(a.recv().await?["code"], json!("invalid_channel_id"));
    b.expect_next_is_pong().await?;
    a.close().await?;
    b.close().await
}

async fn admin_broadcast() -> TestResult {
    let s = server();
    let w = unique("wbc");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let (mut a, _) = connect(&w, &alice).await?;
    let (mut b, _) = connect(&w, &bob).await?;
    a.recv_type("presence_update").await?;
    let body = json!({"type":"announcement","text":"maintenance at noon","n":[1,2]});
    let r = http().post(&format!("/api/waddle/{w}/broadcast"), &s.admin_token("root"), &body.to_string()).await?;
    ensure_eq!((r.status, r.body.clone()), (200, json!({"success":true,"recipients":2})));
    ensure_eq!(a.recv().await?, body);
    ensure_eq!(b.recv().await?, body);

    let r = http().post(&format!("/api/waddle/{w}/broadcast"), &s.token(&alice), &body.to_string()).await?;
    ensure_eq!((r.status, r.error_code()), (403, Some("forbidden")));
    for bad in ["[1,2]", "\"x\"", "not json"] {
        let r = http().post(&format!("/api/waddle/{w}/broadcast"), &s.admin_token("root"), bad).await?;
        ensure_eq!((bad, r.status), (bad, 400));
    }
    // The refused broadcasts came back as 403/400: nothing reached either socket.
    a.expect_next_is_pong().await?;
    b.expect_next_is_pong().await?;
    a.close().await?;
    b.close().await
}

async fn bad_frames() -> TestResult {
    let w = unique("wframes");
    let (alice, bob, mallory) = (unique("alice"), unique("bob"), unique("mallory"));
    let (mut watcher, _) = connect(&w, &bob).await?;
    let cases: Vec<(&str, Option<String>, u16)> = vec![
        ("non-JSON", Some("hello".into()), 1007),
        ("wrong field type", Some(r#"{"type":"presence_update","status":3}"#.into()), 1007),
        ("unknown type", Some(r#"{"type":"explode"}"#.into()), 1008),
        ("oversize", Some(format!(r#"{{"type":"presence_update","status":"{}"}}"#, "x".repeat(70 * 1024))), 1009),
        ("binary", None, 1007),
    ];
    let (mut a, _) = connect(&w, &alice).await?;
    watcher.recv_type("presence_update").await?;
    a.send_json(&json!({"type":"presence_update","status":"away"})).await?;
    watcher.recv().await?;
    for (what, frame, code) in cases {
        let (mut bad, _) = connect(&w, &mallory).await?;
        watcher.recv_type("presence_update").await.map_err(|e| format!("{what} online: {e}"))?;
        let closed = bad.send_bad_frame(frame.as_deref()).await?;
        ensure_eq!((what, closed.code), (what, code));
        bad.close().await?; // completes the closing handshake, as a browser does
        // mallory's only socket closed: offline.
        let update = watcher.recv().await.map_err(|e| format!("{what}: {e}"))?;
        ensure_eq!(update, json!({"type":"presence_update","userId":mallory,"status":"offline"}));
    }
    ensure_eq!(status_of(&presence(&w).await?, &alice).map(|s| s.0), Some("away".to_owned()));
    a.close().await?;
    watcher.close().await
}

async fn hibernation() -> TestResult {
    let w = unique("whib");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let (mut watcher, _) = connect(&w, &bob).await?;
    let (a1, _) = connect(&w, &alice).await?;
    let (mut a2, _) = connect(&w, &alice).await?;
    a2.send_json(&json!({"type":"presence_update","status":"busy"})).await?;
    while watcher.recv().await? != json!({"type":"presence_update","userId":alice,"status":"busy"}) {}
    // Idle until workerd evicts the waddle: pings are answered by the runtime without waking it;
    // the probe — an HTTP presence read — reaches the object (waking it if it was evicted) and
    // changes nothing.
    let mut hib = Hibernation::start("Waddle", &w).await?;
    loop {
        hib.idle().await?;
        watcher.expect_next_is_pong().await?;
        ensure_eq!(status_of(&presence(&w).await?, &alice).map(|s| s.0), Some("busy".to_owned()));
        if hib.woke().await {
            break;
        }
    }
    // After the wake: one of alice's two sockets closing keeps her busy, the last one makes her
    // offline. The presence read after the close is queued behind its close event.
    a1.close().await?;
    ensure_eq!(status_of(&presence(&w).await?, &alice).map(|s| s.0), Some("busy".to_owned()));
    watcher.expect_next_is_pong().await?;
    a2.close().await?;
    ensure_eq!(watcher.recv().await?, json!({"type":"presence_update","userId":alice,"status":"offline"}));
    watcher.close().await
}
