//! Live reactions on Channel messages (docs/protocol.md §6.5, docs/channel.md "Reactions").

use libtest_mimic::Trial;
use serde_json::{json, Value};

use crate::support::{http, server, unique, ws, Hibernation, Ws, TestResult};
use crate::{ensure, ensure_eq, trial};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("reactions::broadcast_exact_counts_toggle_off_and_count_once", broadcast),
        trial("reactions::bad_reactions_change_nothing", bad_reactions),
        trial("reactions::twenty_distinct_emoji_per_message", cap),
        trial("reactions::history_and_since_carry_counts_across_hibernation", hibernation),
        trial("reactions::fifty_concurrent_toggles_are_exact", concurrent),
    ]
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn connect(channel: &str, user: &str, query: &str) -> Res<Ws> {
    let mut sock = ws(&format!("/ws/channel/{channel}{query}"), &server().token(user)).await?;
    ensure_eq!(sock.recv().await?["type"], json!("participants"));
    Ok(sock)
}

async fn post(channel: &str, content: &str) -> Res<i64> {
    let r = http().post(&format!("/api/channel/{channel}/message"), &server().token("poster"), &json!({"content": content}).to_string()).await?;
    ensure_eq!(r.status, 200);
    r.body["sequence"].as_i64().ok_or_else(|| "sequence".into())
}

/// sequence → its `reactions` object, for every message in history.
async fn history_reactions(channel: &str) -> Res<Vec<(i64, Value)>> {
    let r = http().get(&format!("/api/channel/{channel}/messages?limit=100"), &server().token(&unique("reader"))).await?.ok()?;
    let messages = r.body["messages"].as_array().ok_or("messages")?;
    Ok(messages.iter().map(|m| (m["sequence"].as_i64().unwrap_or(-1), m["reactions"].clone())).collect())
}

/// Nothing but `participants` (users joining or leaving) is pending on `sock`: the sentinel
/// ping's pong comes next, with at most participants frames before it.
async fn only_participants_pending(sock: &mut Ws) -> TestResult {
    sock.send_text(r#"{"type":"ping"}"#).await?;
    loop {
        let f = sock.recv().await?;
        if f == json!({"type": "pong"}) {
            return Ok(());
        }
        ensure_eq!(f["type"], json!("participants"));
    }
}

fn react(sequence: i64, emoji: &str, on: bool) -> Value {
    json!({"type": "react", "sequence": sequence, "emoji": emoji, "on": on})
}

fn reaction(sequence: i64, emoji: &str, user: &str, on: bool, count: i64) -> Value {
    json!({"type": "reaction", "sequence": sequence, "emoji": emoji, "userId": user, "on": on, "count": count})
}

async fn broadcast() -> TestResult {
    let (alice, bob, watcher_id) = (unique("alice"), unique("bob"), unique("watcher"));
    let c = unique("rxbc");
    let seq = post(&c, "react to me").await?;
    let mut a = connect(&c, &alice, "").await?;
    let mut b = connect(&c, &bob, "").await?;
    let mut w = connect(&c, &watcher_id, "").await?;

    a.send_json(&react(seq, "👍", true)).await?;
    for sock in [&mut a, &mut b, &mut w] {
        ensure_eq!(sock.recv_type("reaction").await?, reaction(seq, "👍", &alice, true, 1));
    }
    b.send_json(&react(seq, "👍", true)).await?;
    for sock in [&mut a, &mut b, &mut w] {
        ensure_eq!(sock.recv_type("reaction").await?, reaction(seq, "👍", &bob, true, 2));
    }
    // alice again: she counts once. Only she hears the unchanged state; nobody else hears anything.
    a.send_json(&react(seq, "👍", true)).await?;
    ensure_eq!(a.recv().await?, reaction(seq, "👍", &alice, true, 2));
    only_participants_pending(&mut w).await?;
    only_participants_pending(&mut b).await?;
    ensure_eq!(history_reactions(&c).await?, vec![(seq, json!({"👍": 2}))]);

    // Off decrements for everyone; off again is only answered.
    a.send_json(&react(seq, "👍", false)).await?;
    for sock in [&mut a, &mut b, &mut w] {
        ensure_eq!(sock.recv_type("reaction").await?, reaction(seq, "👍", &alice, false, 1));
    }
    a.send_json(&react(seq, "👍", false)).await?;
    ensure_eq!(a.recv().await?, reaction(seq, "👍", &alice, false, 1));
    only_participants_pending(&mut w).await?;

    // Every kind of single emoji is its own reaction; "👍🏽" is not "👍", "❤" is not "❤️".
    let kinds = ["👍🏽", "❤️", "❤", "🇫🇷", "👨‍👩‍👧", "1️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿"];
    for emoji in kinds {
        b.send_json(&react(seq, emoji, true)).await?;
        ensure_eq!(w.recv_type("reaction").await?, reaction(seq, emoji, &bob, true, 1));
    }
    let mut expected = serde_json::Map::new();
    expected.insert("👍".into(), json!(1));
    for emoji in kinds {
        expected.insert(emoji.into(), json!(1));
    }
    ensure_eq!(history_reactions(&c).await?, vec![(seq, Value::Object(expected))]);
    // The last one off removes the emoji from the message.
    b.send_json(&react(seq, "👍", false)).await?;
    ensure_eq!(w.recv_type("reaction").await?, reaction(seq, "👍", &bob, false, 0));
    let after = history_reactions(&c).await?;
    ensure!(after.first().is_some_and(|(_, r)| r.get("👍").is_none() && r.get("🇫🇷") == Some(&json!(1))), "{after:?}");
    for sock in [a, b, w] {
        sock.close().await?;
    }
    Ok(())
}

async fn bad_reactions() -> TestResult {
    let (alice, watcher_id, mallory) = (unique("alice"), unique("watcher"), unique("mallory"));
    let c = unique("rxbad");
    let first = post(&c, "one").await?;
    let second = post(&c, "two").await?;
    // Wrong types close 1007 (each on its own socket) and store nothing.
    for text in [
        r#"{"type":"react","sequence":"1","emoji":"👍","on":true}"#,
        r#"{"type":"react","sequence":1.5,"emoji":"👍","on":true}"#,
        r#"{"type":"react","sequence":1,"emoji":5,"on":true}"#,
        r#"{"type":"react","sequence":1,"emoji":"👍"}"#,
        r#"{"type":"react","sequence":1,"emoji":"👍","on":null}"#,
        r#"{"type":"react","emoji":"👍","on":true}"#,
    ] {
        let mut bad = connect(&c, &mallory, "").await?;
        let closed = bad.send_bad_frame(Some(text)).await?;
        ensure_eq!((text, closed.code), (text, 1007));
    }
    ensure_eq!(history_reactions(&c).await?, vec![(first, json!({})), (second, json!({}))]);

    let mut a = connect(&c, &alice, "").await?;
    let mut w = connect(&c, &watcher_id, "").await?;
    a.send_json(&react(first, "👍", true)).await?;
    ensure_eq!(w.recv_type("reaction").await?["count"], json!(1));
    let before = history_reactions(&c).await?;
    ensure_eq!(before, vec![(first, json!({"👍": 1})), (second, json!({}))]);

    let in_band = [
        (react(first, "a", true), "invalid_emoji"),
        (react(first, "👍👍", true), "invalid_emoji"),
        (react(first, "", true), "invalid_emoji"),
        (react(first, " 👍", true), "invalid_emoji"),
        (react(first, "1", false), "invalid_emoji"),
        (react(first, "❤\u{FE0E}", true), "invalid_emoji"),
        // one grapheme cluster, but over 64 bytes
        (react(first, &format!("🏴{}\u{E007F}", "\u{E0061}".repeat(15)), true), "invalid_emoji"),
        (react(second + 1, "👍", true), "unknown_sequence"),
        (react(0, "👍", true), "unknown_sequence"),
        (react(-1, "👍", false), "unknown_sequence"),
    ];
    for (frame, code) in in_band {
        a.send_json(&frame).await?;
        let err = a.recv_type("error").await?;
        ensure_eq!((frame.clone(), err["type"].clone(), err["code"].clone()), (frame, json!("error"), json!(code)));
        ensure!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "{err}");
    }
    // Nothing changed, nothing was broadcast, and the socket still works.
    ensure_eq!(history_reactions(&c).await?, before);
    only_participants_pending(&mut w).await?;
    only_participants_pending(&mut a).await?;
    a.send_json(&react(second, "🎉", true)).await?;
    ensure_eq!(w.recv_type("reaction").await?, reaction(second, "🎉", &alice, true, 1));
    a.close().await?;
    w.close().await
}

const TWENTY: [&str; 20] = [
    "👍", "👎", "❤️", "🎉", "😂", "😮", "😢", "🙏", "🔥", "👀", "🚀", "✅", "🇫🇷", "👍🏽", "👨‍👩‍👧", "1️⃣", "🦀", "🍕", "⭐", "💯",
];

async fn cap() -> TestResult {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let c = unique("rxcap");
    let seq = post(&c, "popular").await?;
    let other = post(&c, "other").await?;
    let mut a = connect(&c, &alice, "").await?;
    for emoji in TWENTY {
        a.send_json(&react(seq, emoji, true)).await?;
        ensure_eq!(a.recv_type("reaction").await?, reaction(seq, emoji, &alice, true, 1));
    }
    let before = history_reactions(&c).await?;
    ensure_eq!(before.first().and_then(|(_, r)| r.as_object().map(serde_json::Map::len)), Some(20));
    let mut b = connect(&c, &bob, "").await?;
    b.send_json(&react(seq, "🤔", true)).await?;
    let err = b.recv_type("error").await?;
    ensure_eq!(err["code"], json!("too_many_reactions"));
    ensure_eq!(history_reactions(&c).await?, before);
    only_participants_pending(&mut a).await?; // no broadcast of the refused one
    // One of the twenty still counts; the cap is per message; freeing one makes room.
    b.send_json(&react(seq, "🔥", true)).await?;
    ensure_eq!(b.recv_type("reaction").await?, reaction(seq, "🔥", &bob, true, 2));
    b.send_json(&react(other, "🤔", true)).await?;
    ensure_eq!(b.recv_type("reaction").await?, reaction(other, "🤔", &bob, true, 1));
    a.send_json(&react(seq, "💯", false)).await?;
    ensure_eq!(b.recv_type("reaction").await?, reaction(seq, "💯", &alice, false, 0));
    b.send_json(&react(seq, "🤔", true)).await?;
    ensure_eq!(b.recv_type("reaction").await?, reaction(seq, "🤔", &bob, true, 1));
    a.close().await?;
    b.close().await
}

/// The replayed `message` frames of `?since=0`, as (sequence, reactions).
async fn replayed(c: &str, user: &str, count: usize) -> Res<Vec<(i64, Value)>> {
    let mut sock = connect(c, user, "?since=0").await?;
    let mut out = Vec::new();
    while out.len() < count {
        let m = sock.recv_type("message").await?;
        out.push((m["sequence"].as_i64().unwrap_or(-1), m["reactions"].clone()));
    }
    sock.expect_next_is_pong().await?;
    sock.close().await?;
    Ok(out)
}

async fn hibernation() -> TestResult {
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let c = unique("rxhib");
    for i in 1..=3 {
        post(&c, &format!("m{i}")).await?;
    }
    let mut a = connect(&c, &alice, "").await?;
    let mut b = connect(&c, &bob, "").await?;
    a.recv_type("participants").await?; // bob joined
    a.send_json(&react(1, "👍", true)).await?;
    ensure_eq!(a.recv_type("reaction").await?, reaction(1, "👍", &alice, true, 1));
    b.send_json(&react(1, "👍", true)).await?;
    ensure_eq!(a.recv_type("reaction").await?, reaction(1, "👍", &bob, true, 2));
    b.send_json(&react(3, "🎉", true)).await?;
    ensure_eq!(a.recv_type("reaction").await?, reaction(3, "🎉", &bob, true, 1));
    let expected = vec![(1, json!({"👍": 2})), (2, json!({})), (3, json!({"🎉": 1}))];
    ensure_eq!(history_reactions(&c).await?, expected.clone());
    ensure_eq!(replayed(&c, &unique("late"), 3).await?, expected.clone());
    only_participants_pending(&mut a).await?;

    // Idle until evicted; the probe — alice's 👍 again — reaches the object and changes nothing.
    let mut hib = Hibernation::start("Channel", &c).await?;
    loop {
        hib.idle().await?;
        only_participants_pending(&mut a).await?;
        a.send_json(&react(1, "👍", true)).await?;
        ensure_eq!(a.recv().await?, reaction(1, "👍", &alice, true, 2));
        if hib.woke().await {
            break;
        }
    }
    // b heard none of the probes: the setup's three broadcasts, then nothing but participants.
    for expected in [reaction(1, "👍", &alice, true, 1), reaction(1, "👍", &bob, true, 2), reaction(3, "🎉", &bob, true, 1)] {
        ensure_eq!(b.recv_type("reaction").await?, expected);
    }
    only_participants_pending(&mut b).await?;
    ensure_eq!(history_reactions(&c).await?, expected.clone());
    ensure_eq!(replayed(&c, &unique("late"), 3).await?, expected);
    // Counting goes on from the stored tallies.
    let mut k = connect(&c, &carol, "").await?;
    k.send_json(&react(1, "👍", true)).await?;
    ensure_eq!(b.recv_type("reaction").await?, reaction(1, "👍", &carol, true, 3));
    a.send_json(&react(1, "👍", false)).await?;
    ensure_eq!(b.recv_type("reaction").await?, reaction(1, "👍", &alice, false, 2));
    ensure_eq!(history_reactions(&c).await?, vec![(1, json!({"👍": 2})), (2, json!({})), (3, json!({"🎉": 1}))]);
    for sock in [a, b, k] {
        sock.close().await?;
    }
    Ok(())
}

const USERS: usize = 50;

/// Every socket sends its toggle at once; each waits for its own broadcast.
async fn all_toggle(socks: Vec<(String, Ws)>, seq: i64, on: bool) -> Res<Vec<(String, Ws)>> {
    let tasks: Vec<_> = socks
        .into_iter()
        .map(|(user, mut sock)| {
            tokio::spawn(async move {
                sock.send_json(&react(seq, "👍", on)).await?;
                loop {
                    let f = sock.recv_type("reaction").await?;
                    if f["userId"] == json!(user) {
                        ensure_eq!(f["on"], json!(on));
                        return Ok::<_, Box<dyn std::error::Error + Send + Sync>>((user, sock));
                    }
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// The watcher's next `n` reaction counts.
async fn counts(w: &mut Ws, n: usize) -> Res<Vec<i64>> {
    let mut out = Vec::new();
    while out.len() < n {
        out.push(w.recv_type("reaction").await?["count"].as_i64().ok_or("count")?);
    }
    Ok(out)
}

async fn concurrent() -> TestResult {
    let c = unique("rxconc");
    let seq = post(&c, "pile on").await?;
    let mut w = connect(&c, &unique("watcher"), "").await?;
    let mut socks = Vec::new();
    for i in 0..USERS {
        let user = unique(&format!("fan{i}"));
        let sock = connect(&c, &user, "").await?;
        socks.push((user, sock));
    }
    let socks = all_toggle(socks, seq, true).await?;
    // One turn per toggle: the broadcasts count 1, 2, … 50 in order, the last one exactly 50.
    ensure_eq!(counts(&mut w, USERS).await?, (1..=USERS as i64).collect::<Vec<_>>());
    ensure_eq!(history_reactions(&c).await?, vec![(seq, json!({"👍": USERS}))]);

    let (off, stay): (Vec<_>, Vec<_>) = socks.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let off = all_toggle(off.into_iter().map(|(_, s)| s).collect(), seq, false).await?;
    let half = (USERS / 2) as i64;
    ensure_eq!(counts(&mut w, USERS / 2).await?, (half..USERS as i64).rev().collect::<Vec<_>>());
    ensure_eq!(history_reactions(&c).await?, vec![(seq, json!({"👍": half}))]);
    only_participants_pending(&mut w).await?;
    for (_, sock) in off.into_iter().chain(stay.into_iter().map(|(_, s)| s)) {
        sock.close().await?;
    }
    w.close().await
}
