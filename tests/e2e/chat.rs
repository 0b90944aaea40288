//! ChatRoom (docs/protocol.md §6.3) over real HTTP and WebSockets.
//!
//! The harness runs with `CHAT_MAX_MESSAGES=30` and `CHAT_PRUNE_INTERVAL_MS=2000` (see
//! `support::e2e_vars`) so pruning is observable in seconds; every other test stores fewer
//! than 30 rows per room. The rate limit keeps its default 20 per 5 s.

use std::time::Duration;

use libtest_mimic::Trial;
use serde_json::{json, Value};

use crate::support::{http, now_secs, server, unique, ws, Hibernation, Ws, TestResult};
use crate::{ensure, ensure_eq, restart_trial, trial};

type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const KEEP: usize = 30;

pub fn tests() -> Vec<Trial> {
    vec![
        trial("chat::two_users_see_each_message_once_in_order", two_users),
        trial("chat::global_room_routes", global_room),
        trial("chat::history_pagination_no_gaps_or_duplicates", history_pages),
        trial("chat::user_count_and_join_left_messages", user_count),
        trial("chat::bad_input_rejected_nothing_stored_room_still_works", bad_input),
        trial("chat::rate_limit_then_1008", rate_limit),
        trial("chat::duplicate_client_id_stored_once", duplicate_id),
        trial("chat::frames_sent_together_keep_their_order_and_their_dedup", together),
        trial("chat::reconnect_since_replays_exactly_the_missed", since_replay),
        trial("chat::pruning_keeps_exactly_the_newest_n", pruning),
        trial("chat::survives_hibernation", hibernation),
        restart_trial("chat::history_survives_wrangler_restart", restart),
        trial("chat::null_client_id_closes_1007_nothing_stored", null_client_id),
    ]
}

/// A user with a unique id (so per-user limits never couple tests) and a display name.
struct User {
    id: String,
    name: &'static str,
    token: String,
}

fn user(name: &'static str) -> User {
    let id = unique(&name.to_lowercase());
    let token = server().token_with(&id, Some(name), &[], now_secs(), now_secs() + 3600);
    User { id, name, token }
}

async fn connect(room: &str, u: &User) -> R<Ws> {
    ws(&format!("/api/chat/{room}"), &u.token).await
}

/// The next frame, which must be a `message`; returns its `message` object.
async fn message(sock: &mut Ws) -> R<Value> {
    let f = sock.recv().await?;
    ensure_eq!(f["type"], json!("message"));
    Ok(f["message"].clone())
}

async fn count(sock: &mut Ws) -> R<i64> {
    let f = sock.recv().await?;
    ensure_eq!(f["type"], json!("userCount"));
    f["count"].as_i64().ok_or_else(|| "count".into())
}

/// Check a message's fields (id and timestamp only for shape).
fn check(m: &Value, seq: i64, kind: &str, u: &User, content: &str) -> TestResult {
    ensure_eq!(
        (m["seq"].clone(), m["kind"].clone(), m["userId"].clone(), m["userName"].clone(), m["content"].clone()),
        (json!(seq), json!(kind), json!(u.id), json!(u.name), json!(content))
    );
    ensure!(m["id"].as_str().is_some_and(|s| !s.is_empty()), "id {m}");
    ensure!(m["timestamp"].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')), "timestamp {m}");
    let keys: Vec<&String> = m.as_object().ok_or("object")?.keys().collect();
    ensure_eq!(keys.len(), 7);
    Ok(())
}

fn say(content: &str) -> Value {
    json!({"type": "message", "content": content})
}

/// Every stored message of `room`, newest first, walking pages of `limit`.
async fn all_history(room: &str, token: &str, limit: u32) -> R<Vec<Value>> {
    let mut out = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let path = match before {
            Some(b) => format!("/api/chat/{room}/messages?limit={limit}&before={b}"),
            None => format!("/api/chat/{room}/messages?limit={limit}"),
        };
        let r = http().get(&path, token).await?;
        ensure_eq!(r.status, 200);
        let page = r.body["messages"].as_array().ok_or("messages")?;
        ensure!(page.len() <= limit as usize, "page of {} > {limit}", page.len());
        out.extend(page.iter().cloned());
        match r.body["nextBefore"].as_i64() {
            Some(n) => {
                ensure_eq!(Some(n), page.last().and_then(|m| m["seq"].as_i64()));
                before = Some(n);
            }
            None => return Ok(out),
        }
    }
}

fn seqs(messages: &[Value]) -> Vec<i64> {
    messages.iter().filter_map(|m| m["seq"].as_i64()).collect()
}

/// Alice and Bob join `room`; both sockets have consumed the join traffic. Seqs 1, 2 used.
async fn pair(room: &str) -> R<(User, Ws, User, Ws)> {
    let (alice, bob) = (user("Alice"), user("Bob"));
    let mut a = connect(room, &alice).await?;
    check(&message(&mut a).await?, 1, "system", &alice, "Alice joined")?;
    ensure_eq!(count(&mut a).await?, 1);
    let mut b = connect(room, &bob).await?;
    for sock in [&mut a, &mut b] {
        check(&message(sock).await?, 2, "system", &bob, "Bob joined")?;
        ensure_eq!(count(sock).await?, 2);
    }
    Ok((alice, a, bob, b))
}

async fn two_users() -> TestResult {
    let room = unique("talk");
    let (alice, mut a, bob, mut b) = pair(&room).await?;
    // Interleave sends from both sides without waiting in between.
    for i in 0..5 {
        a.send_json(&json!({"type": "message", "content": format!("  a{i}  "), "id": format!("a{i}")})).await?;
        b.send_json(&say(&format!("b{i}"))).await?;
    }
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    for _ in 0..10 {
        seen_a.push(message(&mut a).await?);
        seen_b.push(message(&mut b).await?);
    }
    ensure_eq!(seen_a, seen_b);
    ensure_eq!(seqs(&seen_a), (3..=12).collect::<Vec<_>>());
    // Each side's own messages in the order sent, trimmed, with the right identity and id.
    let from = |u: &User| seen_a.iter().filter(|m| m["userId"] == json!(u.id)).cloned().collect::<Vec<_>>();
    let mine = from(&alice);
    ensure_eq!(mine.iter().map(|m| m["content"].clone()).collect::<Vec<_>>(), (0..5).map(|i| json!(format!("a{i}"))).collect::<Vec<_>>());
    ensure_eq!(mine.iter().map(|m| m["id"].clone()).collect::<Vec<_>>(), (0..5).map(|i| json!(format!("a{i}"))).collect::<Vec<_>>());
    let theirs = from(&bob);
    ensure_eq!(theirs.iter().map(|m| m["content"].clone()).collect::<Vec<_>>(), (0..5).map(|i| json!(format!("b{i}"))).collect::<Vec<_>>());
    for m in &seen_a {
        let u = if m["userId"] == json!(alice.id) { &alice } else { &bob };
        check(m, m["seq"].as_i64().ok_or("seq")?, "user", u, m["content"].as_str().ok_or("content")?)?;
    }
    // Both saw all ten: nothing else (no duplicate) is queued for either.
    a.expect_next_is_pong().await?;
    b.expect_next_is_pong().await?;
    // History holds the same messages.
    let history = all_history(&room, &alice.token, 100).await?;
    ensure_eq!(seqs(&history), (1..=12).rev().collect::<Vec<_>>());
    let mut live = seen_a.clone();
    live.reverse();
    ensure_eq!(history.get(..10).map(<[Value]>::to_vec), Some(live));
    a.close().await?;
    b.close().await
}

async fn global_room() -> TestResult {
    let carol = user("Carol");
    let mut c = ws("/api/chat", &carol.token).await?;
    let joined = message(&mut c).await?;
    ensure_eq!(joined["content"], json!("Carol joined"));
    ensure_eq!(count(&mut c).await?, 1);
    c.send_json(&say("hello world")).await?;
    let m = message(&mut c).await?;
    ensure_eq!(m["content"], json!("hello world"));
    let r = http().get("/api/chat/messages?limit=100", &carol.token).await?;
    ensure_eq!(r.status, 200);
    ensure!(r.body["messages"].as_array().is_some_and(|ms| ms.contains(&m)), "global history {}", r.body);
    c.close().await
}

async fn history_pages() -> TestResult {
    let room = unique("hist");
    let (alice, mut a, _bob, mut b) = pair(&room).await?;
    // 23 messages, more than one socket's rate limit: 12 from Alice, 11 from Bob.
    for i in 0..23 {
        let sock = if i % 2 == 0 { &mut a } else { &mut b };
        sock.send_json(&say(&format!("m{i}"))).await?;
        // wait until both saw it: keeps the order deterministic
        ensure_eq!(message(&mut a).await?["content"], json!(format!("m{i}")));
        ensure_eq!(message(&mut b).await?["content"], json!(format!("m{i}")));
    }
    let t = &alice.token;
    for limit in [1, 4, 5, 25, 100] {
        let history = all_history(&room, t, limit).await?;
        ensure_eq!((limit, seqs(&history)), (limit, (1..=25).rev().collect::<Vec<_>>()));
        let contents: Vec<Value> = history.iter().take(23).map(|m| m["content"].clone()).collect();
        ensure_eq!(contents, (0..23).rev().map(|i| json!(format!("m{i}"))).collect::<Vec<_>>());
    }
    // Default and clamped limits, a cursor in the middle, bad parameters.
    let r = http().get(&format!("/api/chat/{room}/messages"), t).await?.ok()?;
    ensure_eq!((r.body["messages"].as_array().map(Vec::len), r.body["nextBefore"].clone()), (Some(25), Value::Null));
    let r = http().get(&format!("/api/chat/{room}/messages?limit=5000"), t).await?.ok()?;
    ensure_eq!(r.body["messages"].as_array().map(Vec::len), Some(25));
    let r = http().get(&format!("/api/chat/{room}/messages?limit=3&before=10"), t).await?.ok()?;
    ensure_eq!((seqs(r.body["messages"].as_array().ok_or("messages")?), r.body["nextBefore"].clone()), (vec![9, 8, 7], json!(7)));
    for bad in ["limit=0", "limit=abc", "limit=-3", "before=-1", "before=x"] {
        let r = http().get(&format!("/api/chat/{room}/messages?{bad}"), t).await?;
        ensure_eq!((bad, r.status), (bad, 400));
    }
    let r = http().get(&format!("/api/chat/{}/messages", unique("empty")), t).await?.ok()?;
    ensure_eq!(r.body, json!({"messages": [], "nextBefore": null}));
    a.close().await?;
    b.close().await
}

async fn user_count() -> TestResult {
    let room = unique("count");
    let (alice, mut a, bob, mut b) = pair(&room).await?;
    // A second tab of Alice: no join message, the count stays 2.
    let mut a2 = connect(&room, &alice).await?;
    for sock in [&mut a, &mut b, &mut a2] {
        ensure_eq!(count(sock).await?, 2);
    }
    a2.close().await?;
    for sock in [&mut a, &mut b] {
        ensure_eq!(count(sock).await?, 2);
    }
    // Bob leaves: "Bob left" (persisted, seq 3), then the count drops to 1.
    b.close().await?;
    check(&message(&mut a).await?, 3, "system", &bob, "Bob left")?;
    ensure_eq!(count(&mut a).await?, 1);
    a.expect_next_is_pong().await?;
    let history = all_history(&room, &alice.token, 50).await?;
    ensure_eq!(
        history.iter().map(|m| m["content"].clone()).collect::<Vec<_>>(),
        vec![json!("Bob left"), json!("Bob joined"), json!("Alice joined")]
    );
    // Bob comes back: joined again, count 2 again.
    let mut b = connect(&room, &bob).await?;
    check(&message(&mut a).await?, 4, "system", &bob, "Bob joined")?;
    ensure_eq!(count(&mut a).await?, 2);
    check(&message(&mut b).await?, 4, "system", &bob, "Bob joined")?;
    ensure_eq!(count(&mut b).await?, 2);
    a.close().await?;
    check(&message(&mut b).await?, 5, "system", &alice, "Alice left")?;
    ensure_eq!(count(&mut b).await?, 1);
    b.close().await
}

enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

async fn bad_input() -> TestResult {
    let room = unique("bad");
    let alice = user("Alice");
    let mallory = user("Mallory");
    let mut a = connect(&room, &alice).await?;
    message(&mut a).await?;
    count(&mut a).await?;
    // Mallory keeps one socket open, so her bad sockets (second tabs) add no join/left rows.
    let mut m = connect(&room, &mallory).await?;
    for sock in [&mut a, &mut m] {
        check(&message(sock).await?, 2, "system", &mallory, "Mallory joined")?;
        ensure_eq!(count(sock).await?, 2);
    }
    let in_band = [
        (json!({"type": "message", "content": " \t\n "}).to_string(), json!({"type": "error", "code": "invalid_content", "message": "content must not be empty"})),
        (json!({"type": "message", "content": "x", "id": ""}).to_string(), json!({"type": "error", "code": "invalid_id", "message": "id must be 1 to 128 characters"})),
    ];
    let closing = [
        ("too long", Frame::Text(say(&"x".repeat(2001)).to_string()), 1009),
        ("over 64 KiB", Frame::Text(say(&"y".repeat(70 * 1024)).to_string()), 1009),
        ("non-JSON", Frame::Text("hello".into()), 1007),
        ("wrong type", Frame::Text(r#"{"type":"message","content":5}"#.into()), 1007),
        ("no content", Frame::Text(r#"{"type":"message"}"#.into()), 1007),
        ("unknown type", Frame::Text(r#"{"type":"shout","content":"hi"}"#.into()), 1008),
        ("binary", Frame::Binary(vec![1, 2, 3]), 1007),
    ];
    let mut bad = connect(&room, &mallory).await?;
    for sock in [&mut a, &mut m, &mut bad] {
        ensure_eq!(count(sock).await?, 2);
    }
    for (frame, answer) in in_band {
        bad.send_text(&frame).await?;
        ensure_eq!(bad.recv().await?, answer);
    }
    // Still open and usable after in-band errors: a ping gets its pong.
    bad.send_text(r#"{"type":"ping"}"#).await?;
    ensure_eq!(bad.recv().await?, json!({"type": "pong"}));
    bad.close().await?;
    for sock in [&mut a, &mut m] {
        ensure_eq!(count(sock).await?, 2);
    }
    for (what, frame, code) in closing {
        let mut bad = connect(&room, &mallory).await?;
        for sock in [&mut a, &mut m, &mut bad] {
            ensure_eq!((what, count(sock).await?), (what, 2));
        }
        match frame {
            Frame::Text(s) => bad.send_text(&s).await?,
            Frame::Binary(b) => bad.send_binary(b).await?,
        }
        let closed = bad.expect_close().await?;
        ensure_eq!((what, closed.code), (what, code));
        ensure!(closed.reason.len() <= 123, "{what}: reason too long");
        for sock in [&mut a, &mut m] {
            ensure_eq!((what, count(sock).await?), (what, 2));
        }
    }
    // The room still works for the others, and the next seq follows the joins directly.
    a.send_json(&say("still here")).await?;
    for sock in [&mut a, &mut m] {
        check(&message(sock).await?, 3, "user", &alice, "still here")?;
    }
    let history = all_history(&room, &alice.token, 50).await?;
    ensure_eq!(seqs(&history), vec![3, 2, 1]);
    a.expect_next_is_pong().await?;
    a.close().await?;
    m.close().await
}

async fn rate_limit() -> TestResult {
    let room = unique("rate");
    let (alice, mut a, bob, mut b) = pair(&room).await?;
    for i in 0..20 {
        b.send_json(&say(&format!("spam{i}"))).await?;
    }
    for i in 0..20 {
        check(&message(&mut a).await?, 3 + i, "user", &bob, &format!("spam{i}"))?;
        message(&mut b).await?;
    }
    // 21st and 22nd: in-band rate_limited with a retry hint; the 23rd in a row closes 1008.
    // The e2e window is a minute (support::CHAT_RATE_LIMIT_WINDOW_MS), far longer than these
    // 23 frames take on a loaded machine, so it cannot roll over in between.
    let (max, window) = (crate::support::CHAT_RATE_LIMIT_MESSAGES, crate::support::CHAT_RATE_LIMIT_WINDOW_MS);
    ensure_eq!(max, 20);
    for _ in 0..2 {
        b.send_json(&say("one more")).await?;
        let err = b.recv().await?;
        ensure_eq!(
            (err["type"].clone(), err["code"].clone(), err["message"].clone()),
            (json!("error"), json!("rate_limited"), json!(format!("too many messages: at most {max} per {window} ms")))
        );
        let retry = err["retryAfterMs"].as_i64().ok_or("retryAfterMs")?;
        ensure!((1..=window).contains(&retry), "retryAfterMs {retry}");
    }
    b.send_json(&say("and more")).await?;
    ensure_eq!(b.expect_close().await?.code, 1008);
    check(&message(&mut a).await?, 23, "system", &bob, "Bob left")?;
    ensure_eq!(count(&mut a).await?, 1);
    // Nothing from the limited frames was stored; Alice is unaffected.
    a.send_json(&say("quiet now")).await?;
    check(&message(&mut a).await?, 24, "user", &alice, "quiet now")?;
    let history = all_history(&room, &alice.token, 100).await?;
    ensure_eq!(seqs(&history), (1..=24).rev().collect::<Vec<_>>());
    ensure!(!history.iter().any(|m| m["content"] == json!("one more") || m["content"] == json!("and more")), "limited frame stored");
    a.close().await
}

async fn duplicate_id() -> TestResult {
    let room = unique("dup");
    let (alice, mut a, bob, mut b) = pair(&room).await?;
    a.send_json(&json!({"type": "message", "content": "hi", "id": "c-1"})).await?;
    let original = message(&mut a).await?;
    check(&original, 3, "user", &alice, "hi")?;
    ensure_eq!(original["id"], json!("c-1"));
    ensure_eq!(message(&mut b).await?, original);
    // The retry (even with other content) is answered with the original, to Alice only.
    a.send_json(&json!({"type": "message", "content": "hi again", "id": "c-1"})).await?;
    ensure_eq!(a.recv().await?, json!({"type": "message", "message": original}));
    // Alice's answer came from the retry's own event: nothing of it was queued for Bob.
    b.expect_next_is_pong().await?;
    // The same id from another user is another message.
    b.send_json(&json!({"type": "message", "content": "me too", "id": "c-1"})).await?;
    let theirs = message(&mut a).await?;
    check(&theirs, 4, "user", &bob, "me too")?;
    ensure_eq!(message(&mut b).await?, theirs);
    let history = all_history(&room, &alice.token, 100).await?;
    ensure_eq!(seqs(&history), vec![4, 3, 2, 1]);
    ensure_eq!(history.get(1), Some(&original));
    a.close().await?;
    b.close().await
}

/// Frames written in one go (they may share one turn and so one coalesced transaction,
/// kit::coalesce): each is answered in the order sent; a retry of a post still queued is
/// answered with that post, not a storage error; each post is stored once.
async fn together() -> TestResult {
    let room = unique("together");
    let (alice, mut a, bob, mut b) = pair(&room).await?;
    // 19 frames: within the rate limit of 20 per 5 s (the in-band error counts too). From the
    // second round on, a retry of the previous round's id, stored by then: found in storage
    // while this round's frames are still queued.
    let mut previous: Option<(String, Value)> = None;
    for round in 0..4 {
        let id = format!("t-{round}");
        let mut frames = vec![
            json!({"type": "message", "content": format!("one {round}"), "id": id}),
            say(&format!("two {round}")),
            json!({"type": "message", "content": "the retry", "id": id}),
            json!({"type": "message", "content": " "}),
        ];
        if let Some((old_id, _)) = &previous {
            frames.push(json!({"type": "message", "content": "an old retry", "id": old_id}));
        }
        a.send_json_together(&frames).await?;
        let seq = 3 + 2 * round;
        let one = message(&mut a).await?;
        check(&one, seq, "user", &alice, &format!("one {round}"))?;
        check(&message(&mut a).await?, seq + 1, "user", &alice, &format!("two {round}"))?;
        ensure_eq!(a.recv().await?, json!({"type": "message", "message": one}));
        ensure_eq!(a.recv().await?, json!({"type": "error", "code": "invalid_content", "message": "content must not be empty"}));
        if let Some((_, old)) = previous.take() {
            ensure_eq!(a.recv().await?, json!({"type": "message", "message": old}));
        }
        previous = Some((id, one));
        check(&message(&mut b).await?, seq, "user", &alice, &format!("one {round}"))?;
        check(&message(&mut b).await?, seq + 1, "user", &alice, &format!("two {round}"))?;
    }
    a.expect_next_is_pong().await?;
    b.expect_next_is_pong().await?;
    let history = all_history(&room, &bob.token, 100).await?;
    ensure_eq!(seqs(&history), (1..=10).rev().collect::<Vec<i64>>());
    a.close().await?;
    b.close().await
}

async fn since_replay() -> TestResult {
    let room = unique("since");
    let (alice, mut a, bob, mut b) = pair(&room).await?;
    b.send_json(&say("seen")).await?;
    let last_seen = message(&mut a).await?["seq"].as_i64().ok_or("seq")?;
    message(&mut b).await?;
    a.close().await?;
    let mut missed = vec![message(&mut b).await?]; // "Alice left"
    count(&mut b).await?;
    for i in 0..3 {
        b.send_json(&say(&format!("missed{i}"))).await?;
        missed.push(message(&mut b).await?);
    }
    let mut a = ws(&format!("/api/chat/{room}?since={last_seen}"), &alice.token).await?;
    for expected in &missed {
        ensure_eq!(message(&mut a).await?, *expected);
    }
    ensure_eq!(seqs(&missed), vec![4, 5, 6, 7]);
    // Then live traffic: her own join and the count.
    check(&message(&mut a).await?, 8, "system", &alice, "Alice joined")?;
    ensure_eq!(count(&mut a).await?, 2);
    // Up to date: nothing replayed; ahead of the room: resync_required.
    let mut current = ws(&format!("/api/chat/{room}?since=8"), &alice.token).await?;
    ensure_eq!(count(&mut current).await?, 2);
    let mut ahead = ws(&format!("/api/chat/{room}?since=99"), &alice.token).await?;
    ensure_eq!(ahead.recv().await?, json!({"type": "resync_required", "latestSeq": 8}));
    ensure_eq!(count(&mut ahead).await?, 2);
    let refused = crate::support::ws_refusal(&format!("/api/chat/{room}?since=abc"), &[("Authorization", &format!("Bearer {}", bob.token))]).await?;
    ensure_eq!(refused, 400);
    for s in [a, b, current, ahead] {
        s.close().await?;
    }
    Ok(())
}

async fn pruning() -> TestResult {
    let room = unique("prune");
    let (alice, mut a, _bob, mut b) = pair(&room).await?;
    // 40 messages (20 per socket, within the rate limit) + 2 joins = 42 rows > KEEP.
    for i in 0..20 {
        a.send_json(&say(&format!("a{i}"))).await?;
        b.send_json(&say(&format!("b{i}"))).await?;
    }
    for _ in 0..40 {
        message(&mut a).await?;
        message(&mut b).await?;
    }
    // The prune alarm fires CHAT_PRUNE_INTERVAL_MS (2 s in e2e) after the limit was passed
    // (later on a loaded machine: poll with a generous deadline).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let kept = loop {
        let history = all_history(&room, &alice.token, 100).await?;
        if history.len() <= KEEP || tokio::time::Instant::now() > deadline {
            break history;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let newest: Vec<i64> = (1..=42).rev().take(KEEP).collect();
    ensure_eq!(seqs(&kept), newest);
    // A replay from before the cut is refused as a whole; one from inside it is complete.
    let mut old = ws(&format!("/api/chat/{room}?since=5"), &alice.token).await?;
    ensure_eq!(old.recv().await?, json!({"type": "resync_required", "latestSeq": 42}));
    let mut recent = ws(&format!("/api/chat/{room}?since=40"), &alice.token).await?;
    ensure_eq!(seqs(&[message(&mut recent).await?, message(&mut recent).await?]), vec![41, 42]);
    // Seqs continue after pruning (the room row keeps latest_seq). A fresh socket sends it:
    // `a` and `b` used up their rate-limit window.
    recent.send_json(&say("after prune")).await?;
    ensure_eq!(recent.recv_type("message").await?["message"]["seq"], json!(43));
    for s in [a, b, old, recent] {
        s.close().await?;
    }
    Ok(())
}

async fn hibernation() -> TestResult {
    let room = unique("hib");
    let (alice, mut a, bob, mut b) = pair(&room).await?;
    a.send_json(&json!({"type": "message", "content": "before", "id": "before"})).await?;
    let before = message(&mut a).await?;
    check(&before, 3, "user", &alice, "before")?;
    ensure_eq!(message(&mut b).await?, before);
    // Idle until workerd evicts the room. Pings are answered by the runtime without waking it;
    // the probe — Alice retrying her message id — reaches the room (waking it if it was
    // evicted) and changes nothing: she alone gets the original back.
    let mut hib = Hibernation::start("ChatRoom", &room).await?;
    loop {
        hib.idle().await?;
        a.expect_next_is_pong().await?;
        a.send_json(&json!({"type": "message", "content": "retry", "id": "before"})).await?;
        ensure_eq!(a.recv().await?, json!({"type": "message", "message": before}));
        if hib.woke().await {
            break;
        }
    }
    b.expect_next_is_pong().await?;
    b.send_json(&say("after")).await?;
    for sock in [&mut a, &mut b] {
        check(&message(sock).await?, 4, "user", &bob, "after")?;
    }
    a.send_json(&say("and back")).await?;
    for sock in [&mut a, &mut b] {
        check(&message(sock).await?, 5, "user", &alice, "and back")?;
    }
    // Per-socket state survived too: the count still sees both users.
    b.close().await?;
    check(&message(&mut a).await?, 6, "system", &bob, "Bob left")?;
    ensure_eq!(count(&mut a).await?, 1);
    a.close().await
}

async fn restart() -> TestResult {
    let s = server();
    let room = unique("restart");
    let (alice, mut a, _bob, mut b) = pair(&room).await?;
    a.send_json(&json!({"type": "message", "content": "persisted", "id": "p1"})).await?;
    message(&mut a).await?;
    message(&mut b).await?;
    a.close().await?;
    b.close().await?;
    // The "left" rows are written by the close handlers, which may run after the runtime
    // answered our Close: wait for both before taking the reference history.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let before = loop {
        let history = all_history(&room, &alice.token, 100).await?;
        let lefts = history.iter().filter(|m| m["content"].as_str().is_some_and(|c| c.ends_with(" left"))).count();
        if lefts == 2 {
            break history;
        }
        ensure!(tokio::time::Instant::now() < deadline, "the two left messages were not stored: {history:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    s.restart()?;
    let after = all_history(&room, &alice.token, 100).await?;
    ensure_eq!(after, before);
    ensure!(after.len() >= 4, "history {after:?}");
    let latest = after.first().and_then(|m| m["seq"].as_i64()).ok_or("seq")?;
    // Seqs are not reused and client ids still dedup after the restart.
    let mut a = connect(&room, &alice).await?;
    ensure_eq!(message(&mut a).await?["seq"], json!(latest + 1));
    count(&mut a).await?;
    a.send_json(&json!({"type": "message", "content": "again", "id": "p1"})).await?;
    ensure_eq!(message(&mut a).await?["content"], json!("persisted"));
    a.send_json(&say("new")).await?;
    ensure_eq!(message(&mut a).await?["seq"], json!(latest + 2));
    a.close().await
}

/// A present `id` must be a string: `{"id":null}` closes 1007 (docs/protocol.md §5 wrong type) instead of
/// being stored under a server id.
async fn null_client_id() -> TestResult {
    let room = unique("nullid");
    let t = server().token("alice");
    let mut a = ws(&format!("/api/chat/{room}"), &t).await?;
    let closed = a.send_bad_frame(Some(r#"{"type":"message","content":"null-id","id":null}"#)).await?;
    ensure_eq!(closed.code, 1007);
    let r = http().get(&format!("/api/chat/{room}/messages?limit=100"), &t).await?;
    ensure_eq!(r.status, 200);
    let stored = r.body["messages"].as_array().ok_or("messages")?;
    ensure!(stored.iter().all(|m| m["kind"] == "system"), "a user message was stored: {}", r.body);
    Ok(())
}
