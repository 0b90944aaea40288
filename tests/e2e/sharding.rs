//! Sharded Channel and Waddle (docs/sharding.md) on a second `wrangler dev` with
//! `CHANNEL_SHARDS=4` and `WADDLE_SHARDS=4` (the main server runs N = 1: every other module
//! is the N = 1 proof). The spread over the shards is read from the shards' DEBUG_WAKE log
//! line `shard accept <Class> <id>~shard-<k> user <u>`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use libtest_mimic::Trial;
use serde_json::{json, Value};

use edge_realtime_core::shard::shard_of;

use crate::support::{fail, server, unique, ws_at, ExtraServer, TestResult, Ws};
use crate::{ensure, ensure_eq, trial};

const SHARDS: u32 = 4;
/// `DEBUG_SHARD_REFUSE_SEQ:5`: every shard refuses every delivery of sequence 5 (a test-only
/// fault, like an unreachable shard): the primary tries 3 times and logs it, and each shard gets
/// 5 by fetching the gap when 6 arrives — in every channel test here with more than 5 messages.
const VARS: [&str; 4] = ["CHANNEL_SHARDS:4", "WADDLE_SHARDS:4", "CHANNEL_MAX_MESSAGES:10000", "DEBUG_SHARD_REFUSE_SEQ:5"];

pub fn tests() -> Vec<Trial> {
    vec![
        trial("sharding::channel_200_sockets_400_messages_4_writers_gapless", fan_out_200),
        trial("sharding::channel_since_reconnect_gets_exactly_what_it_missed", since_reconnect),
        trial("sharding::channel_participants_and_typing_across_shards", channel_presence),
        trial("sharding::channel_close_and_reconnect_at_once_stays_a_member", reconnect_at_once),
        trial("sharding::channel_reactions_across_shards", channel_reactions),
        trial("sharding::channel_post_without_id_across_shards", post_without_id),
        trial("sharding::channel_participants_above_100_are_deltas_across_shards", channel_large_room),
        trial("sharding::waddle_presence_typing_broadcast_across_shards", waddle_presence),
        trial("sharding::restart_mid_run_loses_nothing_acknowledged", restart_mid_run),
        trial("sharding::shard_names_are_not_addressable", not_addressable),
    ]
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

static SHARDED: tokio::sync::Mutex<Option<Arc<ExtraServer>>> = tokio::sync::Mutex::const_new(None);

/// The shared sharded server (started by the first test that needs it).
async fn sharded() -> Res<Arc<ExtraServer>> {
    let mut slot = SHARDED.lock().await;
    if let Some(s) = slot.as_ref() {
        return Ok(Arc::clone(s));
    }
    let started = Arc::new(tokio::task::spawn_blocking(|| ExtraServer::start("sharded", &VARS)).await??);
    *slot = Some(Arc::clone(&started));
    Ok(started)
}

/// Stop the shared sharded server (main, after the run).
pub fn stop() {
    if let Ok(mut slot) = SHARDED.try_lock() {
        slot.take();
    }
}

/// A user id that hashes to shard `k` of [`SHARDS`].
fn user_in(prefix: &str, k: u32) -> String {
    loop {
        let u = unique(prefix);
        if shard_of(&u, SHARDS) == k {
            return u;
        }
    }
}

async fn request(base: &str, method: &str, path: &str, user: &str, body: Option<Value>, admin: bool) -> Res<(u16, Value)> {
    let client = ::reqwest::Client::builder().timeout(Duration::from_secs(60)).pool_max_idle_per_host(0).build()?;
    let token = if admin { server().admin_token(user) } else { server().token(user) };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut req = client.request(::reqwest::Method::from_bytes(method.as_bytes())?, format!("{base}{path}")).bearer_auth(&token);
        if let Some(b) = &body {
            req = req.header("Content-Type", "application/json").body(b.to_string());
        }
        match req.send().await {
            Err(e) if e.is_connect() && attempt < 5 => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await?;
                // wrangler's dev proxy lost a request on a stale connection (see support::Http).
                if status == 503 && text.starts_with("Your worker restarted mid-request.") && attempt < 5 {
                    continue;
                }
                return Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)));
            }
        }
    }
}

async fn post(base: &str, channel: &str, user: &str, content: &str, id: &str) -> Res<i64> {
    let (status, body) = request(base, "POST", &format!("/api/channel/{channel}/message"), user, Some(json!({"content": content, "id": id})), false).await?;
    ensure_eq!((status, body["success"].clone()), (200, json!(true)));
    body["sequence"].as_i64().ok_or_else(|| fail(format!("no sequence in {body}")))
}

async fn history(base: &str, channel: &str) -> Res<Vec<Value>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (status, body) = request(base, "GET", &format!("/api/channel/{channel}/messages?after={after}&limit=100"), "reader", None, false).await?;
        ensure_eq!(status, 200);
        out.extend(body["messages"].as_array().ok_or("messages")?.iter().cloned());
        match body["nextAfter"].as_i64() {
            Some(n) => after = n,
            None => return Ok(out),
        }
    }
}

/// Open a channel socket and read its `participants` frame.
async fn join(s: &ExtraServer, channel: &str, user: &str, query: &str) -> Res<(Ws, Value)> {
    let mut sock = ws_at(&s.ws_base(), &format!("/ws/channel/{channel}{query}"), &server().token(user)).await?;
    let first = sock.recv().await?;
    ensure_eq!(first["type"], json!("participants"));
    Ok((sock, first))
}

/// Other sockets joining and leaving: `participants` lists — or, above 100 participants (the
/// 200-reader room), `participant_joined` / `participant_left` deltas — and `typing` lists.
fn is_presence(v: &Value) -> bool {
    ["participants", "participant_joined", "participant_left", "typing"].iter().any(|t| v["type"] == *t)
}

/// Read `message` frames until sequence `last`; other frames are skipped.
async fn read_through(sock: &mut Ws, last: i64, out: &mut Vec<Value>) -> TestResult {
    while out.last().and_then(|m| m["sequence"].as_i64()).is_none_or(|s| s < last) {
        let v = sock.recv_within(Duration::from_secs(90)).await?;
        if v["type"] == "message" {
            out.push(v);
        } else {
            ensure!(is_presence(&v), "unexpected frame {v}");
        }
    }
    Ok(())
}

/// The sentinel with other sockets coming and going: every frame before the pong may only be
/// presence ([`is_presence`]: their joins and departures), never a message.
async fn no_message_before_pong(sock: &mut Ws) -> TestResult {
    sock.send_text(r#"{"type":"ping"}"#).await?;
    loop {
        let v = sock.recv().await?;
        if v == json!({"type":"pong"}) {
            return Ok(());
        }
        ensure!(is_presence(&v), "unexpected frame before the sentinel pong: {v}");
    }
}

/// The sender's `ack`; the `message` frames read before it go to `seen` (the ack and the
/// broadcast come in either order, §6.5), presence frames are skipped, anything else fails.
async fn ack_of(sock: &mut Ws, seen: &mut Vec<Value>) -> Res<Value> {
    loop {
        let v = sock.recv().await?;
        match v["type"].as_str() {
            Some("ack") => return Ok(v),
            Some("message") => seen.push(v),
            _ => ensure!(is_presence(&v), "unexpected frame {v}"),
        }
    }
}

fn sequences(view: &[Value]) -> Vec<i64> {
    view.iter().filter_map(|m| m["sequence"].as_i64()).collect()
}

/// Wait (deadline, not a sleep) until every shard logged `shard accept` for `id` and the lines
/// add up to `expected`; the per-shard counts.
async fn spread(s: &ExtraServer, class: &str, id: &str, expected: usize) -> Res<Vec<usize>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counts: Vec<usize> = (0..SHARDS).map(|k| s.log_count(&format!("shard accept {class} {id}~shard-{k} user"))).collect();
        if counts.iter().sum::<usize>() >= expected || tokio::time::Instant::now() > deadline {
            return Ok(counts);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const READERS: usize = 200;
const PER_WRITER: usize = 100;
const TOTAL: i64 = 400;

async fn fan_out_200() -> TestResult {
    let s = sharded().await?;
    let c = unique("shfan");
    // 200 readers, 200 users, connected 20 at a time.
    let users: Vec<String> = (0..READERS).map(|i| unique(&format!("r{i}"))).collect();
    let mut readers = Vec::new();
    for batch in users.chunks(20) {
        let joins = batch.iter().map(|u| join(&s, &c, u, ""));
        for joined in futures_util::future::join_all(joins).await {
            readers.push(joined?.0);
        }
    }
    let counts = spread(&s, "Channel", &c, READERS).await?;
    eprintln!("sharding: {READERS} readers over the shards: {counts:?}");
    ensure_eq!(counts.iter().sum::<usize>(), READERS);
    ensure!(counts.iter().all(|n| *n > 0), "a shard got no socket: {counts:?}");

    // The readers read while 4 writers post: 2 over sockets (on two different shards), 2 over HTTP.
    let reading: Vec<_> = readers
        .into_iter()
        .map(|mut sock| {
            tokio::spawn(async move {
                let mut view = Vec::new();
                read_through(&mut sock, TOTAL, &mut view).await?;
                no_message_before_pong(&mut sock).await?; // nothing after 400: no duplicate
                sock.close().await?;
                Res::Ok(view)
            })
        })
        .collect();
    let mut writers = Vec::new();
    for w in 0..4u32 {
        let (s, c) = (Arc::clone(&s), c.clone());
        writers.push(tokio::spawn(async move {
            let user = user_in(&format!("w{w}"), w);
            let mut acked = Vec::new();
            if w < 2 {
                let (mut sock, _) = join(&s, &c, &user, "").await?;
                for i in 0..PER_WRITER {
                    sock.send_json(&json!({"type":"message","content":format!("w{w}:{i}"),"id":format!("{user}-{i}")})).await?;
                }
                while acked.len() < PER_WRITER {
                    let v = sock.recv_within(Duration::from_secs(90)).await?;
                    if v["type"] == "ack" {
                        acked.push(v["sequence"].as_i64().ok_or("ack sequence")?);
                    }
                }
                sock.close().await?;
            } else {
                for i in 0..PER_WRITER {
                    acked.push(post(&s.base, &c, &user, &format!("w{w}:{i}"), &format!("{user}-{i}")).await?);
                }
            }
            Res::Ok(acked)
        }));
    }
    let mut acked = BTreeSet::new();
    for (w, task) in writers.into_iter().enumerate() {
        let seqs = task.await??;
        ensure_eq!(seqs.len(), PER_WRITER);
        // Socket writers sent all 100 without waiting: still sequenced (and acked) in their order.
        ensure!(seqs.windows(2).all(|p| p[0] < p[1]), "writer {w}'s posts out of order: {seqs:?}");
        acked.extend(seqs);
    }
    ensure_eq!(acked.into_iter().collect::<Vec<_>>(), (1..=TOTAL).collect::<Vec<_>>());
    let mut views = Vec::new();
    for task in reading {
        views.push(task.await??);
    }
    let first = views.first().ok_or("no reader")?.clone();
    ensure_eq!(sequences(&first), (1..=TOTAL).collect::<Vec<_>>());
    for view in &views {
        ensure!(*view == first, "two readers saw different streams");
    }
    // Every writer's posts appear in the order it sent them; the history is the same stream.
    for w in 0..4 {
        let prefix = format!("w{w}:");
        let own: Vec<&str> = first.iter().filter_map(|m| m["content"].as_str()).filter(|t| t.starts_with(&prefix)).collect();
        ensure_eq!(own, (0..PER_WRITER).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>());
    }
    // Sequence 5 was refused by every shard (3 tries each, logged); each shard fetched it as a gap.
    let gaps = s.log_count(&format!("shard gap Channel {c}"));
    let refused = s.log_count(&format!("shard refuse Channel {c}"));
    eprintln!("sharding: 400 messages to {READERS} readers, {refused} refused deliveries, {gaps} gap fetch(es) by the shards");
    ensure!(refused >= 4 * 3, "every shard refused sequence 5 three times: {refused}");
    ensure!(gaps >= 4, "every shard fetched the gap: {gaps}");
    let stored = history(&s.base, &c).await?;
    ensure_eq!(stored.len(), first.len());
    for (h, m) in stored.iter().zip(&first) {
        ensure_eq!((&h["sequence"], &h["content"], &h["userId"]), (&m["sequence"], &m["content"], &m["userId"]));
    }
    Ok(())
}

async fn since_reconnect() -> TestResult {
    let s = sharded().await?;
    let c = unique("shsince");
    let reader = user_in("reader", 1);
    let (mut sock, _) = join(&s, &c, &reader, "").await?;
    let writer = {
        let (s, c) = (Arc::clone(&s), c.clone());
        tokio::spawn(async move {
            let user = user_in("hw", 2);
            for i in 0..60 {
                post(&s.base, &c, &user, &format!("m{i}"), &format!("id-{i}")).await?;
            }
            TestResult::Ok(())
        })
    };
    let mut seen = Vec::new();
    read_through(&mut sock, 20, &mut seen).await?;
    let mark = seen.last().and_then(|m| m["sequence"].as_i64()).ok_or("no message")?;
    sock.close().await?;
    // Back on the same shard with ?since=: exactly what it missed, then live, nothing twice.
    let (mut sock, _) = join(&s, &c, &reader, &format!("?since={mark}")).await?;
    read_through(&mut sock, 60, &mut seen).await?;
    writer.await??;
    sock.expect_next_is_pong().await?;
    ensure_eq!(sequences(&seen), (1..=60).collect::<Vec<_>>());
    let contents: Vec<&str> = seen.iter().filter_map(|m| m["content"].as_str()).collect();
    ensure_eq!(contents, (0..60).map(|i| format!("m{i}")).collect::<Vec<_>>());
    // A reader on another shard that joins late with since=0 gets the whole stream.
    let (mut late, _) = join(&s, &c, &user_in("late", 3), "?since=0").await?;
    let mut all = Vec::new();
    read_through(&mut late, 60, &mut all).await?;
    late.expect_next_is_pong().await?;
    // A replayed message carries its reaction counts (none here), a live one does not: the
    // same messages otherwise.
    ensure!(all.iter().all(|m| m["reactions"] == json!({})), "replayed messages carry their (empty) reactions");
    let without_reactions = |frames: &[Value]| -> Vec<Value> {
        frames
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if let Some(o) = m.as_object_mut() {
                    o.remove("reactions");
                }
                m
            })
            .collect()
    };
    ensure_eq!(without_reactions(&all), without_reactions(&seen));
    late.close().await?;
    sock.close().await
}

fn users(v: &Value) -> Res<Vec<String>> {
    Ok(v["users"].as_array().ok_or("users")?.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect())
}

async fn channel_presence() -> TestResult {
    let s = sharded().await?;
    let c = unique("shpart");
    let (a, b) = (user_in("pa", 0), user_in("pb", 3));
    let (mut sa, first) = join(&s, &c, &a, "").await?;
    ensure_eq!(users(&first)?, vec![a.clone()]);
    let (mut sb, first) = join(&s, &c, &b, "").await?;
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    ensure_eq!(users(&first)?, both);
    ensure_eq!(users(&sa.recv_type("participants").await?)?, both);
    // b's second device on b's shard: no change, so nobody hears of it.
    let (mut sb2, first) = join(&s, &c, &b, "").await?;
    ensure_eq!(users(&first)?, both);
    // Typing goes through the primary to every shard, the typer included.
    sb.send_json(&json!({"type":"typing","isTyping":true})).await?;
    for sock in [&mut sa, &mut sb, &mut sb2] {
        ensure_eq!(users(&sock.recv_type("typing").await?)?, vec![b.clone()]);
    }
    // Nothing else reached a (no participants for b's second device). On a slow machine b's
    // flag may already have expired (3 s): its empty typing list is the only frame allowed.
    pong_after_typing_expiry(&mut sa).await?;
    // Closing one of b's two sockets changes nothing; the last one leaves and stops typing.
    sb2.close().await?;
    sb.send_json(&json!({"type":"message","content":"still here","id":"x"})).await?;
    ensure_eq!(sb.recv_type("ack").await?["sequence"], json!(1));
    ensure_eq!(sa.recv_type("message").await?["content"], json!("still here"));
    sb.close().await?;
    ensure_eq!(users(&sa.recv_type("participants").await?)?, vec![a.clone()]);
    // b's typing flag is gone now (by expiry or with b): only empty typing lists, then the pong.
    pong_after_typing_expiry(&mut sa).await?;
    sa.close().await
}

/// The sentinel ping's pong, with only empty typing lists (a flag expiring) before it.
async fn pong_after_typing_expiry(sock: &mut Ws) -> TestResult {
    sock.send_text(r#"{"type":"ping"}"#).await?;
    loop {
        let v = sock.recv().await?;
        if v == json!({"type":"pong"}) {
            return Ok(());
        }
        ensure_eq!(v, json!({"type":"typing","users":[]}));
    }
}

/// A user closing their only socket and reconnecting at once, ten times: the shard's leave and
/// the next join reach the primary in that order (one lane per user), so the user stays a
/// member — every later message reaches their socket and the others see them in `participants`.
async fn reconnect_at_once() -> TestResult {
    let s = sharded().await?;
    let c = unique("shrejoin");
    let (a, b) = (user_in("rja", 0), user_in("rjb", 1));
    let (mut sa, _) = join(&s, &c, &a, "").await?;
    let (mut sb, _) = join(&s, &c, &b, "").await?;
    for _ in 0..10 {
        // No wait between the close and the next connect: the shard handles both at once.
        sb.close().await?;
        sb = join(&s, &c, &b, "").await?.0;
    }
    // b's own post goes through b's lane, after every leave and join before it.
    sb.send_json(&json!({"type":"message","content":"back","id":"rb-1"})).await?;
    // The ack and the broadcast come in either order (§6.5): keep the messages read meanwhile.
    let mut seen = Vec::new();
    let acked = ack_of(&mut sb, &mut seen).await?["sequence"].as_i64().ok_or("no ack sequence")?;
    let sequence = post(&s.base, &c, &a, "for b", "ra-1").await?;
    ensure!(sequence > acked, "sequence {sequence} after {acked}");
    read_through(&mut sb, sequence, &mut seen).await?;
    ensure_eq!(sequences(&seen), vec![acked, sequence]);
    // a heard every leave and join; the last list names both.
    let mut last = None;
    sa.send_text(r#"{"type":"ping"}"#).await?;
    loop {
        let v = sa.recv().await?;
        if v == json!({"type":"pong"}) {
            break;
        }
        if v["type"] == "participants" {
            last = Some(users(&v)?);
        }
    }
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    ensure_eq!(last, Some(both));
    sb.close().await?;
    sa.close().await
}

/// A socket post without a client `id` (optional, §6.5) from a socket on a shard other than the
/// primary's: stored once, acked with `id: null`, delivered to the other shard's socket, and the
/// sender's socket stays open (it used to be forwarded as `"id":null`, refused, and closed 1011).
async fn post_without_id() -> TestResult {
    let s = sharded().await?;
    let c = unique("shnoid");
    let (a, b) = (user_in("nia", 1), user_in("nib", 2));
    let (mut sa, _) = join(&s, &c, &a, "").await?;
    let (mut sb, _) = join(&s, &c, &b, "").await?;
    sb.send_json(&json!({"type":"message","content":"no id"})).await?;
    let mut seen = Vec::new();
    let ack = ack_of(&mut sb, &mut seen).await?;
    ensure_eq!(ack["id"], Value::Null);
    let acked = ack["sequence"].as_i64().ok_or("no ack sequence")?;
    read_through(&mut sb, acked, &mut seen).await?;
    let mut heard = Vec::new();
    read_through(&mut sa, acked, &mut heard).await?;
    ensure_eq!(sequences(&heard), vec![acked]);
    ensure_eq!(heard.first().map(|m| m["content"].clone()), Some(json!("no id")));
    // The sender's socket is still open and in order: its sentinel ping is answered.
    no_message_before_pong(&mut sb).await?;
    let stored = history(&s.base, &c).await?;
    ensure_eq!(stored.iter().map(|m| m["content"].clone()).collect::<Vec<_>>(), vec![json!("no id")]);
    sb.close().await?;
    sa.close().await
}

/// `channel::large_room` over 4 shards: the primary decides over the union and every shard's
/// sockets hear the same lists and deltas as with one object.
async fn channel_large_room() -> TestResult {
    let s = sharded().await?;
    let c = unique("shbig");
    let opened = crate::channel::large_room(&s.ws_base(), &c).await?;
    let counts = spread(&s, "Channel", &c, opened).await?;
    ensure_eq!(counts.iter().sum::<usize>(), opened);
    ensure!(counts.iter().all(|n| *n > 0), "a shard got no socket: {counts:?}");
    Ok(())
}

async fn waddle(s: &ExtraServer, id: &str, user: &str) -> Res<(Ws, Value)> {
    let mut sock = ws_at(&s.ws_base(), &format!("/ws/waddle/{id}"), &server().token(user)).await?;
    let first = sock.recv().await?;
    ensure_eq!(first["type"], json!("presence_state"));
    Ok((sock, first))
}

fn status_of(state: &Value, user: &str) -> Option<String> {
    state["users"].as_array()?.iter().find(|e| e[0] == user).and_then(|e| e[1]["status"].as_str().map(str::to_owned))
}

async fn waddle_presence() -> TestResult {
    let s = sharded().await?;
    let w = unique("shwad");
    let (a, b) = (user_in("wa", 1), user_in("wb", 2));
    let (mut sa, _) = waddle(&s, &w, &a).await?;
    let (mut sb, state) = waddle(&s, &w, &b).await?;
    ensure_eq!((status_of(&state, &a), status_of(&state, &b)), (Some("online".to_string()), Some("online".to_string())));
    ensure_eq!(sa.recv_type("presence_update").await?, json!({"type":"presence_update","userId":b,"status":"online"}));
    let spread = spread(&s, "Waddle", &w, 2).await?;
    ensure!(spread.get(1) == Some(&1) && spread.get(2) == Some(&1), "a on shard 1, b on shard 2: {spread:?}");
    // b's second device (same shard) hears its own status change; a (other shard) too; b's
    // changing socket does not.
    let (mut sb2, _) = waddle(&s, &w, &b).await?;
    ensure_eq!(sa.recv_type("presence_update").await?["userId"], json!(b));
    ensure_eq!(sb.recv_type("presence_update").await?["userId"], json!(b));
    sb.send_json(&json!({"type":"presence_update","status":"away"})).await?;
    let away = json!({"type":"presence_update","userId":b,"status":"away"});
    ensure_eq!(sa.recv_type("presence_update").await?, away);
    ensure_eq!(sb2.recv_type("presence_update").await?, away);
    sb.expect_next_is_pong().await?;
    // Typing relayed across shards.
    sa.send_json(&json!({"type":"typing","channelId":"general","isTyping":true})).await?;
    let typing = json!({"type":"typing","userId":a,"channelId":"general","isTyping":true});
    ensure_eq!(sb.recv_type("typing").await?, typing);
    ensure_eq!(sb2.recv_type("typing").await?, typing);
    sa.expect_next_is_pong().await?;
    // The admin broadcast reaches every shard; presence over HTTP covers the community.
    let (status, _) = request(&s.base, "POST", &format!("/api/waddle/{w}/broadcast"), "ops", Some(json!({"type":"announcement","n":1})), true).await?;
    ensure_eq!(status, 200);
    for sock in [&mut sa, &mut sb, &mut sb2] {
        ensure_eq!(sock.recv_type("announcement").await?, json!({"type":"announcement","n":1}));
    }
    let (status, view) = request(&s.base, "GET", &format!("/api/waddle/{w}/presence"), "viewer", None, false).await?;
    ensure_eq!(status, 200);
    ensure_eq!(view["users"].as_array().map(Vec::len), Some(2));
    // Offline only with b's last socket.
    sb2.close().await?;
    sa.expect_next_is_pong().await?;
    sb.close().await?;
    ensure_eq!(sa.recv_type("presence_update").await?, json!({"type":"presence_update","userId":b,"status":"offline"}));
    sa.expect_next_is_pong().await?;
    let (_, view) = request(&s.base, "GET", &format!("/api/waddle/{w}/presence"), "viewer", None, false).await?;
    let b_status = view["users"].as_array().and_then(|u| u.iter().find(|e| e["userId"] == b.as_str())).map(|e| e["status"].clone());
    ensure_eq!(b_status, Some(json!("offline")));
    sa.close().await
}

/// A crash of the dev server mid-run (its own server: the others keep theirs): every post
/// acknowledged before or after reaches the readers when they come back with `?since=`.
async fn restart_mid_run() -> TestResult {
    let mut s = tokio::task::spawn_blocking(|| ExtraServer::start("sharded-restart", &VARS)).await??;
    let c = unique("shcrash");
    let readers: Vec<String> = (0..SHARDS).map(|k| user_in(&format!("cr{k}"), k)).collect();
    let mut socks = Vec::new();
    for r in &readers {
        socks.push(join(&s, &c, r, "").await?.0);
    }
    let writer = user_in("cw", 0);
    for i in 0..30 {
        post(&s.base, &c, &writer, &format!("m{i}"), &format!("k{i}")).await?;
    }
    let mut views = Vec::new();
    for sock in &mut socks {
        let mut view = Vec::new();
        read_through(sock, 15, &mut view).await?;
        views.push(view);
    }
    s = tokio::task::spawn_blocking(move || s.crash_restart().map(|()| s)).await??;
    drop(socks);
    for i in 30..60 {
        post(&s.base, &c, &writer, &format!("m{i}"), &format!("k{i}")).await?;
    }
    for (r, view) in readers.iter().zip(&mut views) {
        let mark = view.last().and_then(|m| m["sequence"].as_i64()).ok_or("no mark")?;
        let (mut sock, _) = join(&s, &c, r, &format!("?since={mark}")).await?;
        read_through(&mut sock, 60, view).await?;
        sock.expect_next_is_pong().await?;
        sock.close().await?;
        ensure_eq!(sequences(view), (1..=60).collect::<Vec<_>>());
    }
    // A repeat of an acknowledged post after the crash is still the same message.
    ensure_eq!(post(&s.base, &c, &writer, "m0", "k0").await?, 1);
    Ok(())
}

/// A shard's name is outside the public alphabet: no route reaches it.
async fn not_addressable() -> TestResult {
    let s = sharded().await?;
    let (status, body) = request(&s.base, "POST", "/api/channel/x~shard-1/message", "u", Some(json!({"content":"x"})), false).await?;
    ensure_eq!((status, body["error"]["code"].clone()), (400, json!("invalid_name")));
    let (status, _) = request(&s.base, "GET", "/api/waddle/x%7Eshard-1/presence", "u", None, false).await?;
    ensure_eq!(status, 400);
    Ok(())
}

/// Reactions from sockets on two shards go through the primary: every socket gets each
/// `reaction` with the exact count, an unchanged toggle and an error reach only the sender,
/// history and a shard's `?since=` replay carry the counts.
async fn channel_reactions() -> TestResult {
    let s = sharded().await?;
    let c = unique("shreact");
    let (a, b) = (user_in("ra", 0), user_in("rb", 2));
    let (mut sa, _) = join(&s, &c, &a, "").await?;
    let (mut sb, _) = join(&s, &c, &b, "").await?;
    sa.recv_type("participants").await?;
    ensure_eq!(post(&s.base, &c, &a, "react to me", "r-1").await?, 1);
    for sock in [&mut sa, &mut sb] {
        ensure_eq!(sock.recv_type("message").await?["sequence"], json!(1));
    }
    let react = |on: bool| json!({"type":"react","sequence":1,"emoji":"👍","on":on});
    sb.send_json(&react(true)).await?;
    for sock in [&mut sa, &mut sb] {
        let r = sock.recv_type("reaction").await?;
        ensure_eq!((r["userId"].clone(), r["count"].clone(), r["on"].clone()), (json!(b), json!(1), json!(true)));
    }
    sa.send_json(&react(true)).await?;
    for sock in [&mut sa, &mut sb] {
        let r = sock.recv_type("reaction").await?;
        ensure_eq!((r["userId"].clone(), r["count"].clone()), (json!(a), json!(2)));
    }
    // Unchanged (b is already on): only b hears it, with the unchanged count.
    sb.send_json(&react(true)).await?;
    let r = sb.recv_type("reaction").await?;
    ensure_eq!((r["userId"].clone(), r["count"].clone()), (json!(b), json!(2)));
    // Errors: the sequence is checked by the primary, the emoji on the shard; only b hears them.
    sb.send_json(&json!({"type":"react","sequence":99,"emoji":"👍","on":true})).await?;
    ensure_eq!(sb.recv_type("error").await?["code"], json!("unknown_sequence"));
    sb.send_json(&json!({"type":"react","sequence":1,"emoji":"a","on":true})).await?;
    ensure_eq!(sb.recv_type("error").await?["code"], json!("invalid_emoji"));
    sb.expect_next_is_pong().await?;
    sa.expect_next_is_pong().await?;
    let stored = history(&s.base, &c).await?;
    ensure_eq!(stored.len(), 1);
    ensure_eq!(stored.first().map(|m| m["reactions"].clone()), Some(json!({"👍": 2})));
    // A's second socket (same shard) replays with the counts.
    let (mut sa2, _) = join(&s, &c, &a, "?since=0").await?;
    let replayed = sa2.recv_type("message").await?;
    ensure_eq!((replayed["sequence"].clone(), replayed["reactions"].clone()), (json!(1), json!({"👍": 2})));
    // Off again: everyone, the count down by one.
    sb.send_json(&react(false)).await?;
    for sock in [&mut sa, &mut sb, &mut sa2] {
        let r = sock.recv_type("reaction").await?;
        ensure_eq!((r["userId"].clone(), r["count"].clone(), r["on"].clone()), (json!(b), json!(1), json!(false)));
    }
    sa2.close().await?;
    sb.close().await?;
    sa.close().await
}
