//! VoiceChannel (docs/voice.md) over real sockets: joins and sessions, updates, recording,
//! the signalling relay (target only), limits, one participant per user, departures by leave /
//! close / heartbeat sweep, bad input, hibernation and crash restarts. Every test uses its own
//! channel and users; "nothing else arrived" is proven with a ping → pong sentinel.

use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use serde_json::{json, Value};

use crate::support::{http, server, unique, ws, ws_at, ws_refusal, Hibernation, TestResult, Ws, VOICE_MAX_PARTICIPANTS};
use crate::{ensure, ensure_eq, restart_trial, trial};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub fn tests() -> Vec<Trial> {
    vec![
        trial("voice::fresh_state_first_join_starts_a_session", fresh_and_joins),
        trial("voice::update_and_recording_reach_everyone", update_and_recording),
        trial("voice::non_participants_cannot_update_signal_record", non_participants),
        trial("voice::signal_reaches_only_the_target_sockets", signal_relay),
        trial("voice::signal_refusals_keep_the_socket_open", signal_refusals),
        trial("voice::channel_full_changes_nothing", channel_full),
        trial("voice::last_leave_ends_the_session_for_everyone", last_leave),
        trial("voice::one_user_many_sockets_is_one_participant", one_user_many_sockets),
        trial("voice::bad_frames_close_1007_1008_1009", bad_frames),
        trial("voice::bad_channel_id_400_no_token_401", http_refusals),
        trial("voice::survives_hibernation", hibernation),
        restart_trial("voice::crash_restart_no_ghost_participants", crash_restart),
    ]
}

/// Open `user`'s socket on channel `ch` and read its `voice_state`.
async fn open(ch: &str, user: &str) -> Res<(Ws, Value)> {
    let mut sock = ws(&format!("/ws/voice/{ch}"), &server().token(user)).await?;
    let state = sock.recv().await?;
    ensure_eq!(state["type"], json!("voice_state"));
    Ok((sock, state))
}

/// `GET /api/voice/:channelId`, read by a bystander.
async fn state_of(ch: &str) -> Res<Value> {
    let r = http().get(&format!("/api/voice/{ch}"), &server().token("observer")).await?;
    ensure_eq!(r.status, 200);
    Ok(r.body)
}

/// `user` sends `join` (with `extra` fields); their socket and every one in `others` sees the
/// same `participant_joined`.
async fn join(sock: &mut Ws, user: &str, extra: Value, others: &mut [&mut Ws]) -> Res<Value> {
    let mut frame = json!({"type":"join"});
    if let (Some(f), Some(e)) = (frame.as_object_mut(), extra.as_object()) {
        f.extend(e.clone());
    }
    sock.send_json(&frame).await?;
    let joined = sock.recv().await?;
    ensure_eq!(joined["type"], json!("participant_joined"));
    ensure_eq!(joined["participant"]["userId"], json!(user));
    for other in others.iter_mut() {
        ensure_eq!(other.recv().await?, joined);
    }
    Ok(joined)
}

async fn error_code(sock: &mut Ws) -> Res<String> {
    let frame = sock.recv().await?;
    ensure_eq!(frame["type"], json!("error"));
    ensure!(frame["message"].as_str().is_some_and(|m| !m.is_empty()), "error without message: {frame}");
    Ok(frame["code"].as_str().unwrap_or_default().to_owned())
}

fn ids(participants: &Value) -> Vec<String> {
    participants.as_array().map(|a| a.iter().filter_map(|p| p["userId"].as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

async fn fresh_and_joins() -> TestResult {
    let ch = unique("vfresh");
    let (a, b) = (unique("va"), unique("vb"));
    let (mut sa, state) = open(&ch, &a).await?;
    ensure_eq!(state, json!({"type":"voice_state","channelId":ch,"sessionId":null,"participants":[],"recording":false}));
    ensure_eq!(state_of(&ch).await?, json!({"channelId":ch,"sessionId":null,"participants":[],"recording":false}));
    let first = join(&mut sa, &a, json!({}), &mut []).await?;
    let pa = &first["participant"];
    ensure_eq!(
        (pa["userName"].clone(), pa["audioEnabled"].clone(), pa["videoEnabled"].clone()),
        (json!(a), json!(true), json!(false))
    );
    ensure!(pa["joinedAt"].as_i64().is_some_and(|t| t > 1_600_000_000_000), "joinedAt is ms: {pa}");
    let session = first["sessionId"].as_str().ok_or("a session started")?.to_owned();
    ensure_eq!(first["participants"], json!([pa]));
    let (mut sb, state) = open(&ch, &b).await?;
    ensure_eq!((state["sessionId"].clone(), ids(&state["participants"])), (json!(session), vec![a.clone()]));
    let second = join(&mut sb, &b, json!({"audioEnabled":false,"videoEnabled":true}), &mut [&mut sa]).await?;
    ensure_eq!(second["sessionId"], json!(session));
    ensure_eq!((second["participant"]["audioEnabled"].clone(), second["participant"]["videoEnabled"].clone()), (json!(false), json!(true)));
    ensure_eq!(ids(&second["participants"]), vec![a.clone(), b.clone()]);
    let view = state_of(&ch).await?;
    ensure_eq!(view, json!({"channelId":ch,"sessionId":session,"participants":second["participants"],"recording":false}));
    sa.expect_next_is_pong().await?;
    sb.expect_next_is_pong().await
}

async fn update_and_recording() -> TestResult {
    let ch = unique("vupd");
    let (a, b) = (unique("ua"), unique("ub"));
    let (mut sa, _) = open(&ch, &a).await?;
    let (mut sb, _) = open(&ch, &b).await?;
    join(&mut sa, &a, json!({}), &mut [&mut sb]).await?;
    join(&mut sb, &b, json!({}), &mut [&mut sa]).await?;
    sa.send_json(&json!({"type":"update","audioEnabled":false,"videoEnabled":true})).await?;
    let updated = sa.recv().await?;
    ensure_eq!(updated["type"], json!("participant_updated"));
    ensure_eq!((updated["participant"]["userId"].clone(), updated["participant"]["audioEnabled"].clone(), updated["participant"]["videoEnabled"].clone()), (json!(a), json!(false), json!(true)));
    ensure_eq!(sb.recv().await?, updated);
    // an absent field keeps its value
    sa.send_json(&json!({"type":"update","audioEnabled":true})).await?;
    let again = sa.recv().await?;
    ensure_eq!((again["participant"]["audioEnabled"].clone(), again["participant"]["videoEnabled"].clone()), (json!(true), json!(true)));
    ensure_eq!(sb.recv().await?, again);
    sb.send_json(&json!({"type":"recording","enabled":true})).await?;
    let rec = json!({"type":"recording_changed","recording":true,"by":b});
    ensure_eq!(sb.recv().await?, rec);
    ensure_eq!(sa.recv().await?, rec);
    let view = state_of(&ch).await?;
    ensure_eq!(view["recording"], json!(true));
    ensure_eq!(view["participants"][0], again["participant"]);
    sa.expect_next_is_pong().await?;
    sb.expect_next_is_pong().await
}

async fn non_participants() -> TestResult {
    let ch = unique("vnon");
    let (a, x) = (unique("na"), unique("nx"));
    let (mut sa, _) = open(&ch, &a).await?;
    join(&mut sa, &a, json!({}), &mut []).await?;
    let (mut sx, _) = open(&ch, &x).await?;
    let before = state_of(&ch).await?;
    for frame in [
        json!({"type":"update","audioEnabled":false}),
        json!({"type":"signal","to":a,"data":{"sdp":"v=0"}}),
        json!({"type":"recording","enabled":true}),
        json!({"type":"leave"}),
    ] {
        sx.send_json(&frame).await?;
        ensure_eq!((frame["type"].clone(), error_code(&mut sx).await?), (frame["type"].clone(), "not_a_participant".to_owned()));
    }
    ensure_eq!(state_of(&ch).await?, before);
    sa.expect_next_is_pong().await?;
    sx.expect_next_is_pong().await
}

async fn signal_relay() -> TestResult {
    let ch = unique("vsig");
    let (a, b, c) = (unique("sa"), unique("sb"), unique("sc"));
    let (mut sa, _) = open(&ch, &a).await?;
    let (mut sb, _) = open(&ch, &b).await?;
    let (mut sb2, _) = open(&ch, &b).await?; // b's second device, not joined: still b's socket
    let (mut sc, _) = open(&ch, &c).await?;
    join(&mut sa, &a, json!({}), &mut [&mut sb, &mut sb2, &mut sc]).await?;
    join(&mut sb, &b, json!({}), &mut [&mut sa, &mut sb2, &mut sc]).await?;
    join(&mut sc, &c, json!({}), &mut [&mut sa, &mut sb, &mut sb2]).await?;
    let offer = json!({"sdp":{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"},"n":[1,2,{"x":null}]});
    sa.send_json(&json!({"type":"signal","to":b,"data":offer})).await?;
    let relayed = json!({"type":"signal","from":a,"data":offer});
    ensure_eq!(sb.recv().await?, relayed);
    ensure_eq!(sb2.recv().await?, relayed);
    // the answer goes back the same way
    sb.send_json(&json!({"type":"signal","to":a,"data":{"candidate":"c1"}})).await?;
    ensure_eq!(sa.recv().await?, json!({"type":"signal","from":b,"data":{"candidate":"c1"}}));
    // after the answer arrived, nobody else saw either signal (each sentinel follows both events)
    for sock in [&mut sa, &mut sb, &mut sb2, &mut sc] {
        sock.expect_next_is_pong().await?;
    }
    Ok(())
}

async fn signal_refusals() -> TestResult {
    let ch = unique("vsigx");
    let (a, b, x) = (unique("ra"), unique("rb"), unique("rx"));
    let (mut sa, _) = open(&ch, &a).await?;
    let (mut sb, _) = open(&ch, &b).await?;
    let (mut sx, _) = open(&ch, &x).await?; // connected, never joined
    join(&mut sa, &a, json!({}), &mut [&mut sb, &mut sx]).await?;
    join(&mut sb, &b, json!({}), &mut [&mut sa, &mut sx]).await?;
    let before = state_of(&ch).await?;
    let too_big = "x".repeat(16 * 1024 - 1); // 16 KiB + 1 serialized, with the quotes
    let cases = [
        (json!({"type":"signal","to":b,"data":too_big}), "signal_too_large"),
        (json!({"type":"signal","to":a,"data":{"sdp":"x"}}), "invalid_target"),
        (json!({"type":"signal","to":x,"data":{"sdp":"x"}}), "unknown_target"),
        (json!({"type":"signal","to":unique("nobody"),"data":1}), "unknown_target"),
    ];
    for (frame, code) in cases {
        sa.send_json(&frame).await?;
        ensure_eq!(error_code(&mut sa).await?, code.to_owned());
    }
    // still open and still relaying: exactly 16 KiB fits
    let fits = "y".repeat(16 * 1024 - 2);
    sa.send_json(&json!({"type":"signal","to":b,"data":fits})).await?;
    ensure_eq!(sb.recv().await?, json!({"type":"signal","from":a,"data":fits}));
    ensure_eq!(state_of(&ch).await?, before);
    for sock in [&mut sa, &mut sb, &mut sx] {
        sock.expect_next_is_pong().await?;
    }
    Ok(())
}

async fn channel_full() -> TestResult {
    let ch = unique("vfull");
    let mut socks = Vec::new();
    for i in 0..VOICE_MAX_PARTICIPANTS {
        let user = unique(&format!("f{i}"));
        let (mut sock, _) = open(&ch, &user).await?;
        let mut others: Vec<&mut Ws> = socks.iter_mut().collect();
        join(&mut sock, &user, json!({}), &mut others).await?;
        socks.push(sock);
    }
    let late = unique("flate");
    let (mut sl, _) = open(&ch, &late).await?;
    let before = state_of(&ch).await?;
    ensure_eq!(before["participants"].as_array().map(Vec::len), Some(VOICE_MAX_PARTICIPANTS));
    sl.send_json(&json!({"type":"join"})).await?;
    ensure_eq!(error_code(&mut sl).await?, "channel_full".to_owned());
    ensure_eq!(state_of(&ch).await?, before);
    // not a participant: it cannot signal either, and nobody heard of the attempt
    sl.send_json(&json!({"type":"recording","enabled":true})).await?;
    ensure_eq!(error_code(&mut sl).await?, "not_a_participant".to_owned());
    for sock in socks.iter_mut() {
        sock.expect_next_is_pong().await?;
    }
    // a place frees up: the late user can join now
    let first = socks.remove(0);
    first.close().await?;
    ensure_eq!(sl.recv().await?["type"], json!("participant_left"));
    join(&mut sl, &late, json!({}), &mut []).await?;
    Ok(())
}

async fn last_leave() -> TestResult {
    let ch = unique("vend");
    let (a, b, o) = (unique("la"), unique("lb"), unique("lo"));
    let (mut sa, _) = open(&ch, &a).await?;
    let (mut sb, _) = open(&ch, &b).await?;
    let (mut so, _) = open(&ch, &o).await?; // an observer, never joins
    let joined = join(&mut sa, &a, json!({}), &mut [&mut sb, &mut so]).await?;
    let session = joined["sessionId"].clone();
    join(&mut sb, &b, json!({}), &mut [&mut sa, &mut so]).await?;
    sb.send_json(&json!({"type":"recording","enabled":true})).await?;
    for sock in [&mut sb, &mut sa, &mut so] {
        ensure_eq!(sock.recv().await?["type"], json!("recording_changed"));
    }
    // a leaves by frame: the session goes on
    sa.send_json(&json!({"type":"leave"})).await?;
    let left_a = sa.recv().await?;
    ensure_eq!(left_a["userId"], json!(a));
    ensure_eq!(ids(&left_a["participants"]), vec![b.clone()]);
    ensure_eq!(so.recv().await?, left_a);
    ensure_eq!(sb.recv().await?, left_a);
    let view = state_of(&ch).await?;
    ensure_eq!((view["sessionId"].clone(), view["recording"].clone()), (session.clone(), json!(true)));
    // b's socket closes: the last participant is gone, the session ends for every socket
    sb.close().await?;
    for sock in [&mut sa, &mut so] {
        ensure_eq!(sock.recv().await?, json!({"type":"participant_left","userId":b,"participants":[]}));
        ensure_eq!(sock.recv().await?, json!({"type":"session_ended","sessionId":session}));
    }
    ensure_eq!(state_of(&ch).await?, json!({"channelId":ch,"sessionId":null,"participants":[],"recording":false}));
    // a new join starts a new session
    let again = join(&mut so, &o, json!({}), &mut [&mut sa]).await?;
    ensure!(again["sessionId"].is_string() && again["sessionId"] != session, "a new session: {again}");
    sa.expect_next_is_pong().await?;
    so.expect_next_is_pong().await
}

async fn one_user_many_sockets() -> TestResult {
    let ch = unique("vmany");
    let (a, o) = (unique("ma"), unique("mo"));
    let (mut s1, _) = open(&ch, &a).await?;
    let (mut s2, _) = open(&ch, &a).await?;
    let (mut s3, _) = open(&ch, &a).await?; // never joins
    let (mut so, _) = open(&ch, &o).await?;
    join(&mut s1, &a, json!({}), &mut [&mut s2, &mut s3, &mut so]).await?;
    // the second socket's join answers the state to it alone: still one participant
    s2.send_json(&json!({"type":"join"})).await?;
    let state = s2.recv().await?;
    ensure_eq!((state["type"].clone(), ids(&state["participants"])), (json!("voice_state"), vec![a.clone()]));
    ensure_eq!(ids(&state_of(&ch).await?["participants"]), vec![a.clone()]);
    // one joined socket closes: the user is still there while another joined socket is
    s1.close().await?;
    so.expect_next_is_pong().await?;
    ensure_eq!(ids(&state_of(&ch).await?["participants"]), vec![a.clone()]);
    // the last joined socket leaves: a is gone although a's unjoined socket stays open
    s2.send_json(&json!({"type":"leave"})).await?;
    for sock in [&mut s2, &mut s3, &mut so] {
        ensure_eq!(sock.recv().await?, json!({"type":"participant_left","userId":a,"participants":[]}));
        ensure_eq!(sock.recv().await?["type"], json!("session_ended"));
    }
    for sock in [&mut s2, &mut s3, &mut so] {
        sock.expect_next_is_pong().await?;
    }
    Ok(())
}

async fn bad_frames() -> TestResult {
    let ch = unique("vbad");
    let a = unique("ba");
    let (mut sa, _) = open(&ch, &a).await?;
    join(&mut sa, &a, json!({}), &mut []).await?;
    let before = state_of(&ch).await?;
    let big = json!({"type":"signal","to":a,"data":"x".repeat(70 * 1024)}).to_string();
    let cases: Vec<(Option<String>, u16)> = vec![
        (None, 1007),
        (Some("not json".into()), 1007),
        (Some(r#"{"type":"join","audioEnabled":null}"#.into()), 1007),
        (Some(r#"{"type":"join","videoEnabled":"yes"}"#.into()), 1007),
        (Some(r#"{"type":"update","audioEnabled":1}"#.into()), 1007),
        (Some(r#"{"type":"signal","to":"x"}"#.into()), 1007),
        (Some(r#"{"type":"signal","to":5,"data":1}"#.into()), 1007),
        (Some(r#"{"type":"recording"}"#.into()), 1007),
        (Some(r#"{"type":"shout"}"#.into()), 1008),
        (Some(big), 1009),
    ];
    for (frame, code) in cases {
        let (mut sock, _) = open(&ch, &unique("bx")).await?;
        let closed = sock.send_bad_frame(frame.as_deref()).await?;
        let shown: Option<String> = frame.as_deref().map(|f| f.chars().take(60).collect());
        ensure!(closed.code == code, "{shown:?} closed with {closed:?}, expected {code}");
    }
    sa.expect_next_is_pong().await?;
    ensure_eq!(state_of(&ch).await?, before);
    Ok(())
}

async fn http_refusals() -> TestResult {
    let token = server().token(&unique("ha"));
    let auth = format!("Bearer {token}");
    let r = http().get("/api/voice/bad%20id", &token).await?;
    ensure_eq!((r.status, r.error_code()), (400, Some("invalid_name")));
    ensure_eq!(ws_refusal("/ws/voice/bad%20id", &[("Authorization", &auth)]).await?, 400);
    let ch = unique("vauth");
    let r = http().request("GET", &format!("/api/voice/{ch}"), None, None, &[]).await?;
    ensure_eq!(r.status, 401);
    ensure_eq!(ws_refusal(&format!("/ws/voice/{ch}"), &[]).await?, 401);
    let r = http().get(&format!("/ws/voice/{ch}"), &token).await?;
    ensure_eq!((r.status, r.error_code()), (426, Some("upgrade_required")));
    let r = http().post(&format!("/api/voice/{ch}"), &token, "{}").await?;
    ensure_eq!(r.status, 405);
    Ok(())
}

async fn hibernation() -> TestResult {
    let ch = unique("vhib");
    let (a, b) = (unique("ha"), unique("hb"));
    let (mut sa, _) = open(&ch, &a).await?;
    let (mut sb, _) = open(&ch, &b).await?;
    join(&mut sa, &a, json!({"videoEnabled":true}), &mut [&mut sb]).await?;
    join(&mut sb, &b, json!({}), &mut [&mut sa]).await?;
    sa.send_json(&json!({"type":"recording","enabled":true})).await?;
    sa.recv_type("recording_changed").await?;
    sb.recv_type("recording_changed").await?;
    let before = state_of(&ch).await?;
    let mut hib = Hibernation::start("VoiceChannel", &ch).await?;
    loop {
        hib.idle().await?;
        // a repeated join reaches the object and changes nothing
        sa.send_json(&json!({"type":"join"})).await?;
        ensure_eq!(sa.recv().await?["type"], json!("voice_state"));
        if hib.woke().await {
            break;
        }
    }
    ensure_eq!(state_of(&ch).await?, before);
    // the relay still works, and b's joined flag survived: b's close removes b
    sa.send_json(&json!({"type":"signal","to":b,"data":"after"})).await?;
    ensure_eq!(sb.recv().await?, json!({"type":"signal","from":a,"data":"after"}));
    sb.close().await?;
    let left = sa.recv().await?;
    ensure_eq!((left["type"].clone(), left["userId"].clone()), (json!("participant_left"), json!(b)));
    ensure_eq!(ids(&state_of(&ch).await?["participants"]), vec![a.clone()]);
    sa.expect_next_is_pong().await
}

fn crash() -> TestResult {
    server().crash_restart()
}

async fn crash_restart() -> TestResult {
    let ch = unique("vcrash");
    let (a, b, c) = (unique("ca"), unique("cb"), unique("cc"));
    let (mut sa, _) = open(&ch, &a).await?;
    let (mut sb, _) = open(&ch, &b).await?;
    join(&mut sa, &a, json!({}), &mut [&mut sb]).await?;
    join(&mut sb, &b, json!({}), &mut [&mut sa]).await?;
    sa.send_json(&json!({"type":"recording","enabled":true})).await?;
    sa.recv_type("recording_changed").await?;
    ensure_eq!(ids(&state_of(&ch).await?["participants"]), vec![a.clone(), b.clone()]);
    tokio::task::spawn_blocking(crash).await??;
    drop((sa, sb));
    // the next socket sees no ghost: nobody is a participant, the session ended
    let (mut sc, state) = open(&ch, &c).await?;
    ensure_eq!(state, json!({"type":"voice_state","channelId":ch,"sessionId":null,"participants":[],"recording":false}));
    ensure_eq!(state_of(&ch).await?, json!({"channelId":ch,"sessionId":null,"participants":[],"recording":false}));
    sc.expect_next_is_pong().await?;
    let fresh = join(&mut sc, &c, json!({}), &mut []).await?;
    ensure_eq!(ids(&fresh["participants"]), vec![c.clone()]);
    sc.close().await
}

// ------------------------------------------------------------------ heartbeat sweep
// (run from liveness::heartbeat_sweep, on its second wrangler with a 5 s timeout)

/// A joined participant behind a proxy that freezes is swept: everyone sees `participant_left`
/// and, as they were the last, `session_ended`.
pub async fn sweep(base: &str, target: &str, ping_every: Duration, within: Duration, timeout_ms: u64) -> TestResult {
    let s = server();
    let ch = unique("sweepv");
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut b = ws_at(base, &format!("/ws/voice/{ch}"), &s.token(&bob)).await?;
    b.recv_type("voice_state").await?;
    let proxy = crate::proxy::Proxy::start(target).await?;
    let mut a = ws_at(&format!("ws://{}", proxy.addr), &format!("/ws/voice/{ch}"), &s.token(&alice)).await?;
    a.recv_type("voice_state").await?;
    a.send_json(&json!({"type":"join"})).await?;
    let joined = a.recv_type("participant_joined").await?;
    let alive = Instant::now();
    b.recv_matching_while_pinging(Duration::from_secs(10), ping_every, |v| v["type"] == "participant_joined").await?;
    proxy.freeze();
    let left = b.recv_matching_while_pinging(within, ping_every, |v| v["type"] == "participant_left").await?;
    ensure_eq!(left, json!({"type":"participant_left","userId":alice,"participants":[]}));
    let waited = alive.elapsed();
    ensure!(waited >= Duration::from_millis(timeout_ms - 1_000), "voice participant swept after only {waited:?}");
    let ended = b.recv_matching_while_pinging(Duration::from_secs(10), ping_every, |v| v["type"] == "session_ended").await?;
    ensure_eq!(ended, json!({"type":"session_ended","sessionId":joined["sessionId"]}));
    b.send_text(r#"{"type":"ping"}"#).await?;
    ensure_eq!(b.recv().await?, json!({"type":"pong"}));
    b.close().await
}
