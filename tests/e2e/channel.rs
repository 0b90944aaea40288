//! Channel (docs/protocol.md §6.5) over real HTTP and WebSockets.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use serde_json::{json, Value};

use crate::support::{fail, http, server, unique, ws, ws_at, Hibernation, Ws, TestResult};
use crate::{ensure, ensure_eq, restart_trial, trial};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("channel::http_and_ws_posts_share_one_sequence", http_and_ws),
        trial("channel::duplicate_client_id_stored_once", duplicate_id),
        trial("channel::duplicate_ids_sent_together_stored_once", duplicate_ids_together),
        trial("channel::history_pages_in_sequence_order", history),
        trial("channel::participants_join_and_leave", participants),
        trial("channel::participants_above_100_are_deltas_back_at_100_the_list", || async {
            large_room(&server().ws_base(), &unique("chbig")).await.map(|_| ())
        }),
        trial("channel::since_replays_then_live_or_resync", since_replay),
        trial("channel::typing_broadcast_and_expiry_after_3s", typing_expiry),
        trial("channel::bad_input_leaves_sequence_untouched", bad_input),
        trial("channel::concurrent_writers_gapless_same_order", concurrent),
        trial("channel::reconnect_with_since_during_writes", reconnect_since),
        trial("channel::sequence_survives_hibernation", hibernation),
        trial("channel::pruning_keeps_newest_and_since_resyncs", pruning),
        restart_trial("channel::sequence_survives_wrangler_restart", restart),
        trial("channel::null_client_id_rejected_nothing_sequenced", null_client_id),
    ]
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Connect and read the `participants` frame.
async fn connect(channel: &str, user: &str, query: &str) -> Res<(Ws, Value)> {
    let mut sock = ws(&format!("/ws/channel/{channel}{query}"), &server().token(user)).await?;
    let first = sock.recv().await?;
    ensure_eq!(first["type"], json!("participants"));
    Ok((sock, first))
}

async fn post(channel: &str, user: &str, body: Value) -> Res<i64> {
    let r = http().post(&format!("/api/channel/{channel}/message"), &server().token(user), &body.to_string()).await?;
    ensure_eq!((r.status, r.body["success"].clone()), (200, json!(true)));
    r.body["sequence"].as_i64().ok_or_else(|| "sequence".into())
}

async fn all_history(channel: &str) -> Res<Vec<Value>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let r = http().get(&format!("/api/channel/{channel}/messages?after={after}&limit=100"), &server().token(&unique("reader"))).await?;
        ensure_eq!(r.status, 200);
        out.extend(r.body["messages"].as_array().ok_or("messages")?.iter().cloned());
        match r.body["nextAfter"].as_i64() {
            Some(n) => after = n,
            None => return Ok(out),
        }
    }
}

/// The next `message` frame (skipping participants / typing).
async fn next_message(sock: &mut Ws) -> Res<Value> {
    sock.recv_type("message").await
}

async fn http_and_ws() -> TestResult {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let c = unique("chseq");
    let (mut a, _) = connect(&c, &alice, "").await?;
    let r = http().post(&format!("/api/channel/{c}/message"), &server().token(&bob), r#"{"content":"  hello  "}"#).await?;
    ensure_eq!((r.status, r.body.clone()), (200, json!({"success":true,"sequence":1})));
    let m = next_message(&mut a).await?;
    let ts = m["timestamp"].as_str().ok_or("timestamp")?.to_owned();
    ensure!(ts.ends_with('Z') && ts.contains('T'), "timestamp {ts}");
    ensure_eq!(m, json!({"type":"message","sequence":1,"userId":bob,"content":"hello","timestamp":ts,"id":null}));

    a.send_json(&json!({"type":"message","content":"from ws","id":"a-1"})).await?;
    let first = a.recv().await?;
    let second = a.recv().await?;
    let (msg, ack) = if first["type"] == "ack" { (second, first) } else { (first, second) };
    ensure_eq!(ack, json!({"type":"ack","id":"a-1","sequence":2}));
    ensure_eq!((msg["type"].clone(), msg["sequence"].clone(), msg["userId"].clone(), msg["content"].clone(), msg["id"].clone()),
        (json!("message"), json!(2), json!(alice), json!("from ws"), json!("a-1")));
    ensure_eq!(post(&c, &bob, json!({"content":"three"})).await?, 3);
    ensure_eq!(next_message(&mut a).await?["sequence"], json!(3));
    a.close().await
}

async fn duplicate_id() -> TestResult {
    let (alice, bob, watcher_id) = (unique("alice"), unique("bob"), unique("watcher"));
    let c = unique("chdup");
    let (mut watcher, _) = connect(&c, &watcher_id, "").await?;
    let (mut a, _) = connect(&c, &alice, "").await?;
    a.send_json(&json!({"type":"message","content":"once","id":"same"})).await?;
    ensure_eq!(a.recv_type("ack").await?, json!({"type":"ack","id":"same","sequence":1}));
    a.send_json(&json!({"type":"message","content":"once again","id":"same"})).await?;
    ensure_eq!(a.recv_type("ack").await?, json!({"type":"ack","id":"same","sequence":1}));
    ensure_eq!(post(&c, &alice, json!({"content":"http","id":"same"})).await?, 1);
    ensure_eq!(post(&c, &alice, json!({"content":"http","id":"h"})).await?, 2);
    ensure_eq!(post(&c, &alice, json!({"content":"http","id":"h"})).await?, 2);
    // Another user's identical id is a different message.
    ensure_eq!(post(&c, &bob, json!({"content":"bob","id":"same"})).await?, 3);
    let seqs: Vec<i64> = all_history(&c).await?.iter().filter_map(|m| m["sequence"].as_i64()).collect();
    ensure_eq!(seqs, vec![1, 2, 3]);
    one_broadcast_each(&mut watcher, 3).await?;
    a.close().await?;
    watcher.close().await
}

/// Frames written together are queued and stored in one transaction (kit::coalesce): a repeat
/// must be found among the posts still queued, and an older id in storage, with the queue
/// unwritten until the burst's own flush.
async fn duplicate_ids_together() -> TestResult {
    let alice = unique("alice");
    let c = unique("chduptogether");
    let (mut watcher, _) = connect(&c, &unique("watcher"), "").await?;
    let (mut a, _) = connect(&c, &alice, "").await?;
    ensure_eq!(post(&c, &alice, json!({"content":"stored","id":"old"})).await?, 1);
    a.send_json_together(&[
        json!({"type":"message","content":"new","id":"new"}),
        json!({"type":"message","content":"new again","id":"new"}),
        json!({"type":"message","content":"old again","id":"old"}),
        json!({"type":"message","content":"plain"}),
        json!({"type":"message","content":"new once more","id":"new"}),
    ])
    .await?;
    for (id, sequence) in [(json!("new"), 2), (json!("new"), 2), (json!("old"), 1), (json!(null), 3), (json!("new"), 2)] {
        ensure_eq!(a.recv_type("ack").await?, json!({"type":"ack","id":id,"sequence":sequence}));
    }
    let stored: Vec<(Value, Value)> =
        all_history(&c).await?.iter().map(|m| (m["sequence"].clone(), m["content"].clone())).collect();
    ensure_eq!(stored, vec![(json!(1), json!("stored")), (json!(2), json!("new")), (json!(3), json!("plain"))]);
    one_broadcast_each(&mut watcher, 3).await?;
    a.close().await?;
    watcher.close().await
}

/// Exactly one broadcast per stored message, sequences 1..=`last`: read up to the last one
/// (the answers came back, so every broadcast is queued), then the sentinel shows nothing
/// follows it.
async fn one_broadcast_each(watcher: &mut Ws, last: i64) -> TestResult {
    let mut broadcast = Vec::new();
    while broadcast.last() != Some(&json!(last)) {
        broadcast.push(next_message(watcher).await?["sequence"].clone());
        ensure!(broadcast.len() <= usize::try_from(last)?, "more broadcasts than messages: {broadcast:?}");
    }
    ensure_eq!(broadcast, (1..=last).map(|s| json!(s)).collect::<Vec<_>>());
    watcher.expect_next_is_pong().await
}

async fn history() -> TestResult {
    let alice = unique("alice");
    let c = unique("chhist");
    for i in 1..=7 {
        post(&c, &alice, json!({"content":format!("m{i}")})).await?;
    }
    let t = server().token(&unique("reader"));
    let r = http().get(&format!("/api/channel/{c}/messages?limit=3"), &t).await?.ok()?;
    ensure_eq!(r.body["nextAfter"], json!(3));
    let first = &r.body["messages"][0];
    let ts = first["timestamp"].clone();
    ensure_eq!(first, &json!({"sequence":1,"userId":alice,"content":"m1","timestamp":ts,"id":null,"reactions":{}}));
    let r = http().get(&format!("/api/channel/{c}/messages?after=3&limit=3"), &t).await?.ok()?;
    let seqs: Vec<i64> = r.body["messages"].as_array().ok_or("messages")?.iter().filter_map(|m| m["sequence"].as_i64()).collect();
    ensure_eq!((seqs, r.body["nextAfter"].clone()), (vec![4, 5, 6], json!(6)));
    let r = http().get(&format!("/api/channel/{c}/messages?after=6&limit=3"), &t).await?.ok()?;
    ensure_eq!((r.body["messages"].as_array().map(Vec::len), r.body["nextAfter"].clone()), (Some(1), json!(null)));
    let all: Vec<Value> = all_history(&c).await?.iter().map(|m| m["content"].clone()).collect();
    ensure_eq!(all, (1..=7).map(|i| json!(format!("m{i}"))).collect::<Vec<_>>());
    for bad in ["limit=0", "limit=abc", "after=-1", "after=x"] {
        let r = http().get(&format!("/api/channel/{c}/messages?{bad}"), &t).await?;
        ensure_eq!((bad, r.status), (bad, 400));
    }
    let r = http().get(&format!("/api/channel/{c}/messages?limit=5000"), &t).await?.ok()?;
    ensure_eq!(r.body["messages"].as_array().map(Vec::len), Some(7));
    Ok(())
}

async fn participants() -> TestResult {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let c = unique("chpart");
    let (mut a, first) = connect(&c, &alice, "").await?;
    ensure_eq!(first, json!({"type":"participants","users":[alice]}));
    let (mut b, first) = connect(&c, &bob, "").await?;
    ensure_eq!(first, json!({"type":"participants","users":[alice, bob]}));
    ensure_eq!(a.recv().await?, json!({"type":"participants","users":[alice, bob]}));
    // a second socket of bob changes nothing for the others
    let (b2, first) = connect(&c, &bob, "").await?;
    ensure_eq!(first, json!({"type":"participants","users":[alice, bob]}));
    a.expect_next_is_pong().await?;
    b2.close().await?;
    // b2's close event reaches the channel before b's typing frame (sent after our Close was
    // answered), so a participants change from it would arrive before the typing frame.
    b.send_json(&json!({"type":"typing","isTyping":true})).await?;
    ensure_eq!(a.recv().await?, json!({"type":"typing","users":[bob]}));
    b.close().await?;
    // bob's last socket left: participants shrink and his typing flag goes with him
    ensure_eq!(a.recv().await?, json!({"type":"participants","users":[alice]}));
    ensure_eq!(a.recv().await?, json!({"type":"typing","users":[]}));
    a.close().await
}

/// Participants (distinct users) up to which the others get the full list (`PARTICIPANTS_LIST_MAX`).
const LIST_MAX: usize = 100;

fn users_of(v: &Value) -> Res<BTreeSet<String>> {
    Ok(v["users"].as_array().ok_or_else(|| fail(format!("no users in {v}")))?.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect())
}

/// Open a channel socket on `ws_base` and read its `participants` frame.
async fn open_at(ws_base: &str, channel: &str, user: &str) -> Res<(Ws, Value)> {
    let mut sock = ws_at(ws_base, &format!("/ws/channel/{channel}"), &server().token(user)).await?;
    let first = sock.recv().await?;
    ensure_eq!(first["type"], json!("participants"));
    Ok((sock, first))
}

/// docs/protocol.md §6.5 on `ws_base` (also run by `sharding::` on a CHANNEL_SHARDS=4 server):
/// an observer sees full `participants` lists while the room fills to 100 users, then
/// `participant_joined` deltas with the right `count` up to 105 users (every joiner still gets
/// the whole list), nothing for another socket of a participant, `participant_left` deltas
/// down to 101 and the full list again at 100. Returns how many sockets it opened.
pub async fn large_room(ws_base: &str, c: &str) -> Res<usize> {
    let observer = unique("obs");
    let (mut obs, first) = open_at(ws_base, c, &observer).await?;
    ensure_eq!(first, json!({"type":"participants","users":[observer]}));
    let mut room: BTreeSet<String> = BTreeSet::from([observer.clone()]);
    // 99 more users, 20 at a time: 100 participants.
    let fill: Vec<String> = (0..LIST_MAX - 1).map(|i| unique(&format!("f{i}"))).collect();
    let mut sockets: Vec<(String, Ws)> = Vec::new();
    for batch in fill.chunks(20) {
        let joins = batch.iter().map(|u| open_at(ws_base, c, u));
        let joined = futures_util::future::join_all(joins).await;
        room.extend(batch.iter().cloned());
        for (u, joined) in batch.iter().zip(joined) {
            let (sock, first) = joined?;
            let listed = users_of(&first)?;
            ensure!(listed.contains(u) && listed.is_subset(&room), "{u}'s own list: {first}");
            sockets.push((u.clone(), sock));
        }
    }
    ensure_eq!(room.len(), LIST_MAX);
    // Every join was answered, so each frame it caused is queued before the observer's pong:
    // exactly 99 full lists (concurrent joins; shards may get them in either order), the
    // biggest one the whole room.
    obs.send_text(r#"{"type":"ping"}"#).await?;
    let mut lists = 0;
    loop {
        let v = obs.recv().await?;
        if v == json!({"type":"pong"}) {
            break;
        }
        ensure_eq!(v["type"], json!("participants"));
        let listed = users_of(&v)?;
        ensure!(listed.contains(&observer) && listed.is_subset(&room), "observer got {v}");
        if listed.len() == LIST_MAX {
            ensure_eq!(listed, room);
        }
        lists += 1;
    }
    ensure_eq!(lists, LIST_MAX - 1);
    // 101..=105 participants: one at a time, each joiner gets the full list, the others a delta.
    let extra: Vec<String> = (0..5).map(|i| unique(&format!("x{i}"))).collect();
    for u in &extra {
        let (sock, first) = open_at(ws_base, c, u).await?;
        room.insert(u.clone());
        ensure_eq!(users_of(&first)?, room);
        ensure_eq!(obs.recv().await?, json!({"type":"participant_joined","userId":u,"count":room.len()}));
        sockets.push((u.clone(), sock));
    }
    // Another socket of a participant: its own list, nothing for anyone else.
    let again = fill.first().ok_or("no filler")?.clone();
    let (second, first) = open_at(ws_base, c, &again).await?;
    ensure_eq!(users_of(&first)?, room);
    obs.expect_next_is_pong().await?;
    // It closes (the user keeps a socket): still nothing, so the next frame is the next leave's.
    second.close().await?;
    // 105 → 101: deltas; 101 → 100: the full list again, byte for byte as a small room's.
    for u in extra.iter().rev() {
        let at = sockets.iter().position(|(v, _)| v == u).ok_or("socket")?;
        let (_, sock) = sockets.swap_remove(at);
        sock.close().await?;
        room.remove(u);
        let v = obs.recv().await?;
        if room.len() > LIST_MAX {
            ensure_eq!(v, json!({"type":"participant_left","userId":u,"count":room.len()}));
        } else {
            ensure_eq!(v, json!({"type":"participants","users":room}));
        }
    }
    ensure_eq!(room.len(), LIST_MAX);
    obs.expect_next_is_pong().await?;
    let opened = sockets.len() + extra.len() + 2;
    for r in futures_util::future::join_all(sockets.into_iter().map(|(_, s)| s.close())).await {
        r?;
    }
    obs.close().await?;
    Ok(opened)
}

async fn since_replay() -> TestResult {
    let (alice, bob, carol, dave, eve) = (unique("alice"), unique("bob"), unique("carol"), unique("dave"), unique("eve"));
    let c = unique("chsince");
    for i in 1..=5 {
        post(&c, &alice, json!({"content":format!("m{i}")})).await?;
    }
    let (mut a, _) = connect(&c, &alice, "?since=2").await?;
    for seq in 3..=5 {
        let m = a.recv().await?;
        ensure_eq!((m["type"].clone(), m["sequence"].clone(), m["content"].clone()), (json!("message"), json!(seq), json!(format!("m{seq}"))));
    }
    post(&c, &bob, json!({"content":"live"})).await?;
    ensure_eq!(next_message(&mut a).await?["sequence"], json!(6));
    let (mut current, _) = connect(&c, &carol, "?since=6").await?;
    // Up to date: the connect replayed nothing.
    current.expect_next_is_pong().await?;
    let (mut future, _) = connect(&c, &dave, "?since=99").await?;
    ensure_eq!(future.recv().await?, json!({"type":"resync_required","latestSeq":6}));
    let refused = crate::support::ws_refusal(&format!("/ws/channel/{c}?since=abc"), &[("Authorization", &format!("Bearer {}", server().token(&eve)))]).await?;
    ensure_eq!(refused, 400);
    a.close().await?;
    current.close().await?;
    future.close().await
}

async fn typing_expiry() -> TestResult {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let c = unique("chtyping");
    let (mut a, _) = connect(&c, &alice, "").await?;
    let (mut b, _) = connect(&c, &bob, "").await?;
    a.recv_type("participants").await?;
    a.send_json(&json!({"type":"typing","isTyping":true})).await?;
    let started = Instant::now();
    ensure_eq!(a.recv().await?, json!({"type":"typing","users":[alice]}));
    ensure_eq!(b.recv().await?, json!({"type":"typing","users":[alice]}));
    // alice stays silent; the alarm expires her flag. Never before the 3 s TTL (strict); the
    // upper bound is generous: a loaded machine may run the alarm late.
    let expired = b.recv().await?;
    let elapsed = started.elapsed();
    ensure_eq!(expired, json!({"type":"typing","users":[]}));
    ensure_eq!(a.recv().await?, json!({"type":"typing","users":[]}));
    ensure!(elapsed >= Duration::from_millis(2_800) && elapsed <= crate::support::RECV, "expiry after {elapsed:?}");
    eprintln!("channel typing expiry observed after {elapsed:?}");

    // explicit stop removes at once
    b.send_json(&json!({"type":"typing","isTyping":true})).await?;
    ensure_eq!(a.recv().await?, json!({"type":"typing","users":[bob]}));
    b.send_json(&json!({"type":"typing","isTyping":false})).await?;
    ensure_eq!(a.recv().await?, json!({"type":"typing","users":[]}));
    // bob hears his own changes too
    ensure_eq!(b.recv().await?, json!({"type":"typing","users":[bob]}));
    ensure_eq!(b.recv().await?, json!({"type":"typing","users":[]}));
    // Past the TTL, the (now pointless) expiry must not send a second "nobody types" frame.
    // (On a slow machine the alarm may run later than this wait: the check can then only pass,
    // never fail spuriously.)
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    a.expect_next_is_pong().await?;
    b.expect_next_is_pong().await?;
    a.close().await?;
    b.close().await
}

async fn bad_input() -> TestResult {
    let (alice, watcher_id, mallory) = (unique("alice"), unique("watcher"), unique("mallory"));
    let c = unique("chbad");
    ensure_eq!(post(&c, &alice, json!({"content":"first"})).await?, 1);
    let (mut watcher, _) = connect(&c, &watcher_id, "").await?;
    let closes: Vec<(&str, Option<String>, u16)> = vec![
        ("non-JSON", Some("hello".into()), 1007),
        ("wrong field type", Some(r#"{"type":"message","content":5}"#.into()), 1007),
        ("missing content", Some(r#"{"type":"message"}"#.into()), 1007),
        ("unknown type", Some(r#"{"type":"explode"}"#.into()), 1008),
        ("oversize", Some(json!({"type":"message","content":"x".repeat(70 * 1024)}).to_string()), 1009),
        ("binary", None, 1007),
    ];
    for (what, frame, code) in closes {
        let (mut bad, _) = connect(&c, &mallory, "").await?;
        let closed = bad.send_bad_frame(frame.as_deref()).await?;
        ensure_eq!((what, closed.code), (what, code));
    }
    let (mut a, _) = connect(&c, &alice, "").await?;
    for (frame, code) in [
        (json!({"type":"message","content":"   "}), "empty_content"),
        (json!({"type":"message","content":"x".repeat(4001)}), "content_too_long"),
        (json!({"type":"message","content":"x","id":""}), "invalid_id"),
    ] {
        a.send_json(&frame).await?;
        let err = a.recv_type("error").await?;
        ensure_eq!((err["type"].clone(), err["code"].clone()), (json!("error"), json!(code)));
    }
    let t = server().token(&alice);
    for (body, status) in [
        ("not json".to_owned(), 400),
        (r#"{"content":5}"#.to_owned(), 400),
        ("[]".to_owned(), 400),
        (r#"{"content":"  "}"#.to_owned(), 422),
        (json!({"content":"x".repeat(4001)}).to_string(), 422),
    ] {
        let r = http().post(&format!("/api/channel/{c}/message"), &t, &body).await?;
        ensure_eq!((status, r.status), (status, status));
    }
    // Nothing was stored or sequenced; the channel still works.
    ensure_eq!(all_history(&c).await?.len(), 1);
    a.send_json(&json!({"type":"message","content":"second","id":"ok"})).await?;
    ensure_eq!(a.recv_type("ack").await?, json!({"type":"ack","id":"ok","sequence":2}));
    ensure_eq!(next_message(&mut watcher).await?["sequence"], json!(2));
    a.close().await?;
    watcher.close().await
}

const WRITERS: usize = 4;
const PER_WRITER: usize = 50;
const TOTAL: i64 = (WRITERS * PER_WRITER) as i64;

/// Two WebSocket and two HTTP writers, `PER_WRITER` messages each, all at once.
fn spawn_writers(c: &str) -> Vec<tokio::task::JoinHandle<TestResult>> {
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let c = c.to_owned();
        tasks.push(tokio::spawn(async move {
            let user = unique(&format!("writer{w}"));
            if w % 2 == 0 {
                let (mut sock, _) = connect(&c, &user, "").await?;
                for i in 0..PER_WRITER {
                    sock.send_json(&json!({"type":"message","content":format!("writer{w}:{i}"),"id":format!("{user}-{i}")})).await?;
                }
                let mut acks = 0;
                while acks < PER_WRITER {
                    if sock.recv().await?["type"] == "ack" {
                        acks += 1;
                    }
                }
                sock.close().await
            } else {
                for i in 0..PER_WRITER {
                    post(&c, &user, json!({"content":format!("writer{w}:{i}"),"id":format!("{user}-{i}")})).await?;
                }
                Ok(())
            }
        }));
    }
    tasks
}

/// Collect `message` frames until sequence `TOTAL`.
async fn read_until_total(sock: &mut Ws, mut out: Vec<Value>) -> Res<Vec<Value>> {
    while out.last().and_then(|m| m["sequence"].as_i64()) != Some(TOTAL) {
        out.push(next_message(sock).await?);
    }
    Ok(out)
}

fn check_gapless(seen: &[Value]) -> TestResult {
    let seqs: Vec<i64> = seen.iter().filter_map(|m| m["sequence"].as_i64()).collect();
    ensure_eq!(seqs, (1..=TOTAL).collect::<Vec<_>>());
    // every writer's messages appear in the order it sent them
    for w in 0..WRITERS {
        let prefix = format!("writer{w}:");
        let own: Vec<String> = seen.iter().filter_map(|m| m["content"].as_str()).filter(|s| s.starts_with(&prefix)).map(str::to_owned).collect();
        ensure_eq!(own, (0..PER_WRITER).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>());
    }
    Ok(())
}

async fn concurrent() -> TestResult {
    let c = unique("chconc");
    let mut readers = Vec::new();
    for r in 0..3 {
        readers.push(connect(&c, &unique(&format!("reader{r}")), "").await?.0);
    }
    let started = Instant::now();
    let writers = spawn_writers(&c);
    let mut views = Vec::new();
    for reader in &mut readers {
        views.push(read_until_total(reader, Vec::new()).await?);
    }
    let elapsed = started.elapsed();
    for task in writers {
        task.await??;
    }
    eprintln!("channel: {TOTAL} messages from {WRITERS} writers delivered to 3 readers in {elapsed:?}");
    let first = views.first().ok_or("no reader")?;
    check_gapless(first)?;
    for view in &views {
        ensure!(view == first, "readers saw different orders");
    }
    let history = all_history(&c).await?;
    ensure_eq!(history.len(), first.len());
    for (h, m) in history.iter().zip(first) {
        ensure_eq!((&h["sequence"], &h["content"]), (&m["sequence"], &m["content"]));
    }
    for reader in readers {
        reader.close().await?;
    }
    Ok(())
}

async fn reconnect_since() -> TestResult {
    let c = unique("chrecon");
    let reader_id = unique("reader");
    let (mut reader, _) = connect(&c, &reader_id, "").await?;
    let writers = spawn_writers(&c);
    let mut seen = Vec::new();
    // read a little, then drop the connection while the writers keep going
    while seen.len() < 30 {
        seen.push(next_message(&mut reader).await?);
    }
    reader.close().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = seen.last().and_then(|m| m["sequence"].as_i64()).ok_or("no sequence")?;
    let (mut again, _) = connect(&c, &reader_id, &format!("?since={last}")).await?;
    let seen = read_until_total(&mut again, seen).await?;
    for task in writers {
        task.await??;
    }
    check_gapless(&seen)?;
    again.close().await
}

async fn hibernation() -> TestResult {
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let c = unique("chhib");
    let (mut a, _) = connect(&c, &alice, "").await?;
    let (mut b, _) = connect(&c, &bob, "").await?;
    a.recv_type("participants").await?;
    a.send_json(&json!({"type":"message","content":"before","id":"before"})).await?;
    ensure_eq!(a.recv_type("ack").await?["sequence"], json!(1));
    ensure_eq!(post(&c, &carol, json!({"content":"http before"})).await?, 2);
    ensure_eq!(next_message(&mut b).await?["sequence"], json!(1));
    ensure_eq!(next_message(&mut b).await?["sequence"], json!(2));
    // a: its own broadcast and ack of 1 (either order), then 2; then nothing else is pending.
    while next_message(&mut a).await?["sequence"] != json!(2) {}
    a.expect_next_is_pong().await?;
    // Idle until workerd evicts the channel: pings are answered by the runtime without waking
    // it; the probe — the known id again — reaches the object (waking it if it was evicted) and
    // changes nothing: acked with its original sequence, no broadcast.
    let mut hib = Hibernation::start("Channel", &c).await?;
    loop {
        hib.idle().await?;
        a.expect_next_is_pong().await?;
        a.send_json(&json!({"type":"message","content":"before","id":"before"})).await?;
        ensure_eq!(a.recv().await?, json!({"type":"ack","id":"before","sequence":1}));
        if hib.woke().await {
            break;
        }
    }
    b.expect_next_is_pong().await?;
    a.send_json(&json!({"type":"message","content":"after","id":"after"})).await?;
    ensure_eq!(a.recv_type("ack").await?, json!({"type":"ack","id":"after","sequence":3}));
    ensure_eq!(next_message(&mut b).await?["sequence"], json!(3));
    ensure_eq!(post(&c, &carol, json!({"content":"http after"})).await?, 4);
    ensure_eq!(next_message(&mut b).await?["sequence"], json!(4));
    // the repeated id is still known after the wake
    a.send_json(&json!({"type":"message","content":"before","id":"before"})).await?;
    ensure_eq!(a.recv_type("ack").await?, json!({"type":"ack","id":"before","sequence":1}));
    // participants were rebuilt from the sockets after the wake
    b.close().await?;
    ensure_eq!(a.recv_type("participants").await?, json!({"type":"participants","users":[alice]}));
    a.close().await
}

async fn restart() -> TestResult {
    let alice = unique("alice");
    let s = server();
    let c = unique("chrestart");
    for i in 1..=3 {
        post(&c, &alice, json!({"content":format!("m{i}"),"id":format!("r{i}")})).await?;
    }
    let (mut r, _) = connect(&c, &alice, "").await?;
    r.send_json(&json!({"type":"react","sequence":3,"emoji":"🎉","on":true})).await?;
    ensure_eq!(r.recv_type("reaction").await?["count"], json!(1));
    r.close().await?;
    s.restart()?;
    ensure_eq!(post(&c, &alice, json!({"content":"m2","id":"r2"})).await?, 2);
    ensure_eq!(post(&c, &alice, json!({"content":"m4"})).await?, 4);
    let (mut a, _) = connect(&c, &alice, "?since=2").await?;
    let third = next_message(&mut a).await?;
    ensure_eq!((third["sequence"].clone(), third["reactions"].clone()), (json!(3), json!({"🎉": 1})));
    ensure_eq!(next_message(&mut a).await?["sequence"], json!(4));
    // The tally survived the restart: another user counts on from it.
    a.send_json(&json!({"type":"react","sequence":3,"emoji":"🎉","on":true})).await?;
    ensure_eq!(a.recv_type("reaction").await?["count"], json!(1)); // alice already reacted: unchanged
    let (mut b, _) = connect(&c, &unique("bob"), "").await?;
    b.send_json(&json!({"type":"react","sequence":3,"emoji":"🎉","on":true})).await?;
    ensure_eq!(b.recv_type("reaction").await?["count"], json!(2));
    b.close().await?;
    a.send_json(&json!({"type":"message","content":"m5"})).await?;
    ensure_eq!(a.recv_type("ack").await?["sequence"], json!(5));
    let seqs: Vec<i64> = all_history(&c).await?.iter().filter_map(|m| m["sequence"].as_i64()).collect();
    ensure_eq!(seqs, vec![1, 2, 3, 4, 5]);
    a.close().await
}

/// The e2e run keeps `CHANNEL_MAX_MESSAGES=250` and may prune every 2 s (tests/e2e/support.rs).
async fn pruning() -> TestResult {
    let (late, edge_id) = (unique("late"), unique("edge"));
    const KEEP: i64 = crate::support::CHANNEL_MAX_MESSAGES;
    let channel = unique("prune");
    let total = KEEP + 10;
    // A reaction on the first message, which pruning will delete.
    ensure_eq!(post(&channel, "pruner", json!({"content": "m1"})).await?, 1);
    let reactor = unique("reactor");
    let (mut r, _) = connect(&channel, &reactor, "").await?;
    r.send_json(&json!({"type":"react","sequence":1,"emoji":"👍","on":true})).await?;
    ensure_eq!(r.recv_type("reaction").await?["count"], json!(1));
    for chunk in (2..=total).collect::<Vec<_>>().chunks(10) {
        let posts = chunk.iter().map(|i| {
            let channel = channel.clone();
            let i = *i;
            tokio::spawn(async move { post(&channel, "pruner", json!({"content": format!("m{i}")})).await })
        });
        for p in posts.collect::<Vec<_>>() {
            p.await??;
        }
    }
    // The prune alarm fires ~2 s after the channel went over the limit (later under load).
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let r = http().get(&format!("/api/channel/{channel}/messages?after=0&limit=1"), &server().token(&unique("reader"))).await?.ok()?;
        let first = r.body["messages"][0]["sequence"].as_i64().unwrap_or(0);
        if first > 1 || Instant::now() > deadline {
            break first;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    ensure_eq!(first, total - KEEP + 1);
    let kept: Vec<i64> = all_history(&channel).await?.iter().filter_map(|m| m["sequence"].as_i64()).collect();
    ensure_eq!(kept, (total - KEEP + 1..=total).collect::<Vec<_>>());
    // Reactions went with their messages: the pruned sequence is unknown now, in-band, and a
    // kept one still takes reactions (its count starts from zero, never a leftover).
    for seq in [1, total - KEEP] {
        r.send_json(&json!({"type":"react","sequence":seq,"emoji":"👍","on":false})).await?;
        let err = r.recv_type("error").await?;
        ensure_eq!((seq, err["code"].clone()), (seq, json!("unknown_sequence")));
    }
    r.send_json(&json!({"type":"react","sequence":total,"emoji":"👍","on":true})).await?;
    ensure_eq!(r.recv_type("reaction").await?["count"], json!(1));
    r.close().await?;
    // Missing pruned messages: resync, never a partial replay.
    let (mut stale, _) = connect(&channel, &late, &format!("?since={}", total - KEEP - 1)).await?;
    ensure_eq!(stale.recv().await?, json!({"type":"resync_required","latestSeq":total}));
    stale.expect_next_is_pong().await?;
    // Exactly at the cut: a complete replay is still possible.
    let (mut edge, _) = connect(&channel, &edge_id, &format!("?since={}", total - 3)).await?;
    for seq in total - 2..=total {
        let m = edge.recv().await?;
        let reactions = if seq == total { json!({"👍": 1}) } else { json!({}) };
        ensure_eq!((m["sequence"].clone(), m["reactions"].clone()), (json!(seq), reactions));
    }
    ensure_eq!(post(&channel, "pruner", json!({"content": "after"})).await?, total + 1);
    stale.close().await?;
    edge.close().await
}

/// A present `id` must be a string: `null` is 400 over HTTP and closes 1007 over the socket,
/// never "no id"; nothing is stored or sequenced.
async fn null_client_id() -> TestResult {
    let c = unique("chnull");
    ensure_eq!(post(&c, "alice", json!({"content":"first"})).await?, 1);
    let t = server().token("alice");
    let r = http().post(&format!("/api/channel/{c}/message"), &t, r#"{"content":"hi","id":null}"#).await?;
    ensure_eq!((r.status, r.error_code()), (400, Some("invalid_body")));
    let (mut bad, _) = connect(&c, "mallory", "").await?;
    let closed = bad.send_bad_frame(Some(r#"{"type":"message","content":"hi","id":null}"#)).await?;
    ensure_eq!(closed.code, 1007);
    ensure_eq!(all_history(&c).await?.len(), 1);
    ensure_eq!(post(&c, "alice", json!({"content":"second"})).await?, 2);
    Ok(())
}
