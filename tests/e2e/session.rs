//! UserSession (docs/protocol.md §6.1, §3) over real HTTP and WebSockets: devices, games, presence,
//! notifications, logout-all with service-wide revocation, hibernation and restarts.

use std::time::Duration;

use libtest_mimic::Trial;
use serde_json::{json, Value};

use crate::support::{http, server, unique, ws, ws_refusal, Hibernation, Reply, TestResult, Ws};
use crate::{ensure, ensure_eq, restart_trial, trial};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub fn tests() -> Vec<Trial> {
    vec![
        trial("session::two_devices_see_games_and_presence", two_devices),
        trial("session::refusals_401_400_426", refusals),
        trial("session::presence_aggregates_across_devices", presence_aggregate),
        trial("session::notification_reaches_every_device", notification),
        trial("session::logout_all_closes_everything_and_revokes_old_tokens", logout_all),
        trial("session::invalid_input_leaves_state_unchanged", invalid_input),
        trial("session::admin_routes_and_clear", admin_routes),
        trial("session::survives_hibernation", hibernation),
        restart_trial("session::survives_wrangler_restart", restart),
        trial("session::state_connected_devices_is_a_count", connected_devices_count),
    ]
}

fn session_path(user: &str, device: &str) -> String {
    format!("/__user-session?userId={user}&deviceId={device}")
}

/// Connect `device` of `user` and return the socket with its `initial_state`.
async fn device(user: &str, device: &str, token: &str) -> Res<(Ws, Value)> {
    let mut sock = ws(&session_path(user, device), token).await?;
    let init = sock.recv().await?;
    ensure_eq!(init["type"], json!("initial_state"));
    Ok((sock, init))
}

/// `GET /__user-session/state` read by an admin.
async fn state_of(user: &str) -> Res<Value> {
    let r = http().get(&format!("/__user-session/state?userId={user}"), &server().admin_token("ops")).await?;
    ensure_eq!(r.status, 200);
    Ok(r.body)
}

/// Poll the state endpoint until `pred` holds (close handling is asynchronous), at most 30 s
/// (a loaded machine is slow; the deadline only bounds a failing run).
async fn state_until(user: &str, pred: impl Fn(&Value) -> bool) -> Res<Value> {
    let deadline = tokio::time::Instant::now() + crate::support::RECV;
    loop {
        let s = state_of(user).await?;
        if pred(&s) || tokio::time::Instant::now() > deadline {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The view without `lastActive` (a timestamp), for exact comparisons.
fn without_last_active(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("lastActive");
    }
    v
}

/// A WebSocket handshake refusal read as HTTP, to see its error code.
async fn ws_refusal_reply(path: &str, token: &str) -> Res<Reply> {
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    http().request("GET", path, Some(token), None, &upgrade).await
}

async fn two_devices() -> TestResult {
    let s = server();
    let user = unique("two");
    let t = s.token(&user);
    let (mut phone, init) = device(&user, "phone", &t).await?;
    ensure_eq!(
        without_last_active(init.clone()),
        json!({"type":"initial_state","userId":user,"activeGames":[],"presence":"online","connectedDevices":1,"devices":["phone"]})
    );
    ensure!(init["lastActive"].as_i64().is_some_and(|t| t > 1_600_000_000_000), "lastActive {}", init["lastActive"]);
    let (mut laptop, init) = device(&user, "laptop", &t).await?;
    ensure_eq!(
        without_last_active(init),
        json!({"type":"initial_state","userId":user,"activeGames":[],"presence":"online","connectedDevices":2,"devices":["laptop","phone"]})
    );
    // The aggregate did not move (online → online): the phone hears nothing. (The laptop's
    // initial_state came from the same event, so anything for the phone was queued already.)
    phone.expect_next_is_pong().await?;

    phone.send_json(&json!({"type":"join_game","gameId":"poker-1"})).await?;
    let joined = json!({"type":"game_joined","gameId":"poker-1","activeGames":["poker-1"]});
    ensure_eq!(phone.recv().await?, joined);
    ensure_eq!(laptop.recv().await?, joined);
    laptop.send_json(&json!({"type":"join_game","gameId":"chess.2"})).await?;
    let joined = json!({"type":"game_joined","gameId":"chess.2","activeGames":["poker-1","chess.2"]});
    ensure_eq!(laptop.recv().await?, joined);
    ensure_eq!(phone.recv().await?, joined);
    laptop.send_json(&json!({"type":"leave_game","gameId":"poker-1"})).await?;
    let left = json!({"type":"game_left","gameId":"poker-1","activeGames":["chess.2"]});
    ensure_eq!(laptop.recv().await?, left);
    ensure_eq!(phone.recv().await?, left);

    // No-ops answer the sender only.
    phone.send_json(&json!({"type":"join_game","gameId":"chess.2"})).await?;
    ensure_eq!(phone.recv().await?, json!({"type":"game_joined","gameId":"chess.2","activeGames":["chess.2"]}));
    phone.send_json(&json!({"type":"leave_game","gameId":"never"})).await?;
    ensure_eq!(phone.recv().await?, json!({"type":"game_left","gameId":"never","activeGames":["chess.2"]}));
    laptop.expect_next_is_pong().await?;

    // Presence: the phone goes away, the laptop is still online → aggregate unchanged.
    phone.send_json(&json!({"type":"update_presence","presence":"away"})).await?;
    ensure_eq!(phone.recv().await?, json!({"type":"presence_updated","presence":"online"}));
    laptop.expect_next_is_pong().await?;
    laptop.send_json(&json!({"type":"update_presence","presence":"away"})).await?;
    let away = json!({"type":"presence_updated","presence":"away"});
    ensure_eq!(laptop.recv().await?, away);
    ensure_eq!(phone.recv().await?, away);

    phone.send_json(&json!({"type":"sync_state"})).await?;
    let st = phone.recv().await?;
    ensure_eq!(
        without_last_active(st.clone()),
        json!({"type":"state","userId":user,"activeGames":["chess.2"],"presence":"away","connectedDevices":2,"devices":["laptop","phone"]})
    );
    phone.send_text(r#"{"type":"ping"}"#).await?;
    ensure_eq!(phone.recv().await?, json!({"type":"pong"}));
    let view = state_of(&user).await?;
    ensure_eq!(
        without_last_active(view.clone()),
        json!({"userId":user,"activeGames":["chess.2"],"presence":"away","connectedDevices":2,"devices":["laptop","phone"]})
    );
    ensure!(view["lastActive"].as_i64() >= st["lastActive"].as_i64(), "lastActive went backwards");
    phone.close().await?;
    laptop.close().await
}

async fn refusals() -> TestResult {
    let s = server();
    let alice = unique("alice");
    let bob_token = s.token(&unique("bob"));
    let bearer = |t: &str| format!("Bearer {t}");
    ensure_eq!(ws_refusal(&session_path(&alice, "phone"), &[("Authorization", &bearer(&bob_token))]).await?, 401);
    let r = ws_refusal_reply(&session_path(&alice, "phone"), &bob_token).await?;
    ensure_eq!((r.status, r.error_code()), (401, Some("wrong_user")));
    // Even an admin may not open another user's session socket.
    ensure_eq!(ws_refusal(&session_path(&alice, "phone"), &[("Authorization", &bearer(&s.admin_token("ops")))]).await?, 401);
    ensure_eq!(ws_refusal(&session_path(&alice, "phone"), &[]).await?, 401);
    let t = s.token(&alice);
    ensure_eq!(ws_refusal(&format!("/__user-session?userId={alice}"), &[("Authorization", &bearer(&t))]).await?, 400);
    ensure_eq!(ws_refusal(&session_path(&alice, "bad%20device"), &[("Authorization", &bearer(&t))]).await?, 400);
    ensure_eq!(ws_refusal("/__user-session?deviceId=x", &[("Authorization", &bearer(&t))]).await?, 400);
    let r = http().get(&session_path(&alice, "phone"), &t).await?;
    ensure_eq!(r.status, 426);
    // Another user's state: 401 for a plain user.
    let r = http().get(&format!("/__user-session/state?userId={alice}"), &bob_token).await?;
    ensure_eq!((r.status, r.error_code()), (401, Some("wrong_user")));
    Ok(())
}

async fn presence_aggregate() -> TestResult {
    let s = server();
    let user = unique("pres");
    let t = s.token(&user);
    let (a, _) = device(&user, "a", &t).await?;
    let (mut b, _) = device(&user, "b", &t).await?;
    b.send_json(&json!({"type":"update_presence","presence":"away"})).await?;
    ensure_eq!(b.recv().await?, json!({"type":"presence_updated","presence":"online"}));
    // away + online = online
    let st = state_of(&user).await?;
    ensure_eq!((st["presence"].clone(), st["devices"].clone()), (json!("online"), json!(["a", "b"])));
    // A third socket of an away device and an offline one change nothing.
    let (mut c, init) = device(&user, "c", &t).await?;
    ensure_eq!(init["devices"], json!(["a", "b", "c"]));
    c.send_json(&json!({"type":"update_presence","presence":"offline"})).await?;
    ensure_eq!(c.recv().await?, json!({"type":"presence_updated","presence":"online"}));
    // Close the online one → away, broadcast to the rest.
    a.close().await?;
    let away = json!({"type":"presence_updated","presence":"away"});
    ensure_eq!(b.recv().await?, away);
    ensure_eq!(c.recv().await?, away);
    let st = state_until(&user, |v| v["presence"] == "away").await?;
    ensure_eq!((st["presence"].clone(), st["devices"].clone()), (json!("away"), json!(["b", "c"])));
    // Close the away one → offline (c is offline).
    b.close().await?;
    ensure_eq!(c.recv().await?, json!({"type":"presence_updated","presence":"offline"}));
    // c comes back online: the aggregate follows, for c alone.
    c.send_json(&json!({"type":"update_presence","presence":"online"})).await?;
    ensure_eq!(c.recv().await?, json!({"type":"presence_updated","presence":"online"}));
    c.close().await?;
    let st = state_until(&user, |v| v["devices"] == json!([])).await?;
    ensure_eq!(without_last_active(st), json!({"userId":user,"activeGames":[],"presence":"offline","connectedDevices":0,"devices":[]}));
    Ok(())
}

async fn notification() -> TestResult {
    let s = server();
    let user = unique("notif");
    let t = s.token(&user);
    let (mut a, _) = device(&user, "a", &t).await?;
    let (mut b, _) = device(&user, "b", &t).await?;
    let admin = s.admin_token("ops");
    let r = http()
        .post(&format!("/__user-session/notify?userId={user}"), &admin, r#"{"message":"Your game is starting!","gameId":"g1","type":"spoof"}"#)
        .await?;
    ensure_eq!((r.status, r.body.clone()), (200, json!({"delivered":2})));
    let expected = json!({"type":"notification","message":"Your game is starting!","gameId":"g1"});
    ensure_eq!(a.recv().await?, expected);
    ensure_eq!(b.recv().await?, expected);
    for bad in ["[1]", "\"x\"", "not json"] {
        let r = http().post(&format!("/__user-session/notify?userId={user}"), &admin, bad).await?;
        ensure_eq!((bad, r.status), (bad, 400));
    }
    // The 400s came back, so anything they had sent would already be queued before the pong.
    a.expect_next_is_pong().await?;
    b.expect_next_is_pong().await?;
    a.close().await?;
    b.close().await
}

async fn logout_all() -> TestResult {
    let s = server();
    let user = unique("logout");
    let old = s.token(&user);
    let counter = unique("lc");
    let (mut phone, _) = device(&user, "phone", &old).await?;
    let (mut laptop, _) = device(&user, "laptop", &old).await?;
    phone.send_json(&json!({"type":"join_game","gameId":"g1"})).await?;
    phone.recv().await?;
    laptop.recv().await?;
    let mut count_sock = ws(&format!("/ws/counter/{counter}"), &old).await?;
    ensure_eq!(count_sock.recv().await?["type"], json!("snapshot"));
    // Someone else's socket on the same counter is left alone.
    let mut bystander = ws(&format!("/ws/counter/{counter}"), &s.token(&unique("other"))).await?;
    bystander.recv().await?;
    // Sockets in every other kind of object are closed too (the registry fan-out).
    let mut chat_sock = ws(&format!("/api/chat/{}", unique("lchat")), &old).await?;
    chat_sock.recv_type("userCount").await?;
    let mut waddle_sock = ws(&format!("/ws/waddle/{}", unique("lwad")), &old).await?;
    waddle_sock.recv_type("presence_state").await?;
    let mut channel_sock = ws(&format!("/ws/channel/{}", unique("lchan")), &old).await?;
    channel_sock.recv_type("participants").await?;

    laptop.send_json(&json!({"type":"logout_all"})).await?;
    for sock in [&mut phone, &mut laptop, &mut count_sock, &mut chat_sock, &mut waddle_sock, &mut channel_sock] {
        ensure_eq!(sock.recv_type("logged_out").await?, json!({"type":"logged_out"}));
        let closed = sock.expect_close().await?;
        ensure_eq!(closed.code, 4001);
    }
    bystander.send_text(r#"{"type":"ping"}"#).await?;
    ensure_eq!(bystander.recv().await?, json!({"type":"pong"}));

    // The old token is refused on every WebSocket route.
    for path in [
        session_path(&user, "phone"),
        format!("/ws/counter/{counter}"),
        format!("/ws/counter/{}", unique("never")),
        "/api/chat".to_owned(),
        format!("/ws/waddle/{}", unique("never")),
        format!("/ws/channel/{}", unique("never")),
    ] {
        let r = ws_refusal_reply(&path, &old).await?;
        ensure_eq!((path.as_str(), r.status, r.error_code()), (path.as_str(), 401, Some("token_revoked")));
    }
    // iat has whole seconds: a token from the logout's own second is revoked too, so wait for the next one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = s.token(&user);
    let (mut phone, init) = device(&user, "phone", &fresh).await?;
    ensure_eq!(
        without_last_active(init),
        json!({"type":"initial_state","userId":user,"activeGames":["g1"],"presence":"online","connectedDevices":1,"devices":["phone"]})
    );
    let mut count_sock = ws(&format!("/ws/counter/{counter}"), &fresh).await?;
    ensure_eq!(count_sock.recv().await?["type"], json!("snapshot"));
    phone.send_text(r#"{"type":"sync_state"}"#).await?;
    ensure_eq!(phone.recv().await?["type"], json!("state"));
    // A second socket to the same counter within the registry's refresh window writes no row
    // (revocation::REFRESH_MS); a second logout_all still reaches both.
    let mut count_again = ws(&format!("/ws/counter/{counter}"), &fresh).await?;
    ensure_eq!(count_again.recv().await?["type"], json!("snapshot"));
    phone.send_json(&json!({"type":"logout_all"})).await?;
    for sock in [&mut phone, &mut count_sock, &mut count_again] {
        ensure_eq!(sock.recv_type("logged_out").await?, json!({"type":"logged_out"}));
        ensure_eq!(sock.expect_close().await?.code, 4001);
    }
    bystander.send_text(r#"{"type":"ping"}"#).await?;
    ensure_eq!(bystander.recv().await?, json!({"type":"pong"}));
    bystander.close().await
}

async fn invalid_input() -> TestResult {
    let s = server();
    let user = unique("inval");
    let t = s.token(&user);
    let (mut a, _) = device(&user, "a", &t).await?;
    let (mut watcher, _) = device(&user, "w", &t).await?;
    a.send_json(&json!({"type":"join_game","gameId":"g0"})).await?;
    a.recv().await?;
    watcher.recv().await?;
    let before = without_last_active(state_of(&user).await?);

    let long = "x".repeat(65);
    for (frame, code, message) in [
        (json!({"type":"join_game","gameId":"a b"}), "invalid_game_id", "gameId must match ^[A-Za-z0-9_.-]{1,64}$"),
        (json!({"type":"join_game","gameId":""}), "invalid_game_id", "gameId must match ^[A-Za-z0-9_.-]{1,64}$"),
        (json!({"type":"join_game","gameId":long}), "invalid_game_id", "gameId must match ^[A-Za-z0-9_.-]{1,64}$"),
        (json!({"type":"leave_game","gameId":"../g0"}), "invalid_game_id", "gameId must match ^[A-Za-z0-9_.-]{1,64}$"),
        (json!({"type":"update_presence","presence":"busy"}), "invalid_presence", "presence must be \"online\", \"away\" or \"offline\""),
        (json!({"type":"update_presence","presence":"ONLINE"}), "invalid_presence", "presence must be \"online\", \"away\" or \"offline\""),
    ] {
        a.send_json(&frame).await?;
        ensure_eq!(a.recv().await?, json!({"type":"error","code":code,"message":message}));
    }
    watcher.expect_next_is_pong().await?;
    ensure_eq!(without_last_active(state_of(&user).await?), before);

    // Fill up to 100 games; the 101st is refused and nothing changes.
    for i in 1..100 {
        a.send_json(&json!({"type":"join_game","gameId":format!("g{i}")})).await?;
        ensure_eq!(a.recv().await?["activeGames"].as_array().map(Vec::len), Some(i + 1));
    }
    let full = without_last_active(state_of(&user).await?);
    ensure_eq!(full["activeGames"].as_array().map(Vec::len), Some(100));
    a.send_json(&json!({"type":"join_game","gameId":"one-more"})).await?;
    ensure_eq!(a.recv().await?, json!({"type":"error","code":"too_many_games","message":"at most 100 active games; leave one first"}));
    ensure_eq!(without_last_active(state_of(&user).await?), full);

    // Wrong JSON / wrong types close 1007, unknown types 1008, binary 1007: state unchanged.
    for (text, code) in [
        ("not json", 1007),
        (r#"{"type":"join_game","gameId":5}"#, 1007),
        (r#"{"type":"join_game"}"#, 1007),
        (r#"{"type":"update_presence","presence":1}"#, 1007),
        (r#"{"type":"explode"}"#, 1008),
        ("binary", 1007),
    ] {
        let (mut sock, _) = device(&user, "victim", &t).await?;
        if text == "binary" {
            sock.send_binary(vec![1, 2, 3]).await?;
        } else {
            sock.send_text(text).await?;
        }
        let closed = sock.expect_close().await?;
        ensure_eq!((text, closed.code), (text, code));
    }
    let after = state_until(&user, |v| v["devices"] == json!(["a", "w"])).await?;
    ensure_eq!(without_last_active(after), full);
    a.close().await?;
    watcher.close().await
}

async fn admin_routes() -> TestResult {
    let s = server();
    let user = unique("adm");
    let t = s.token(&user);
    let r = http().post(&format!("/__user-session/clear?userId={user}"), &t, "").await?;
    ensure_eq!((r.status, r.error_code()), (403, Some("forbidden")));
    let r = http().post(&format!("/__user-session/notify?userId={user}"), &t, r#"{"m":1}"#).await?;
    ensure_eq!((r.status, r.error_code()), (403, Some("forbidden")));
    // Own state: allowed without admin.
    let r = http().get(&format!("/__user-session/state?userId={user}"), &t).await?;
    ensure_eq!(r.status, 200);

    let (mut a, _) = device(&user, "a", &t).await?;
    a.send_json(&json!({"type":"join_game","gameId":"g1"})).await?;
    a.recv().await?;
    let r = http().post(&format!("/__user-session/clear?userId={user}"), &s.admin_token("ops"), "").await?;
    ensure_eq!(r.status, 200);
    let st = a.recv().await?;
    ensure_eq!(
        without_last_active(st),
        json!({"type":"state","userId":user,"activeGames":[],"presence":"online","connectedDevices":1,"devices":["a"]})
    );
    ensure_eq!(a.expect_close().await?.code, 1000);
    let st = state_until(&user, |v| v["devices"] == json!([])).await?;
    ensure_eq!(without_last_active(st), json!({"userId":user,"activeGames":[],"presence":"offline","connectedDevices":0,"devices":[]}));
    // The session works again afterwards with the same token.
    let (b, init) = device(&user, "b", &t).await?;
    ensure_eq!(init["activeGames"], json!([]));
    b.close().await
}

async fn hibernation() -> TestResult {
    let s = server();
    let user = unique("hib");
    let t = s.token(&user);
    let (mut phone, _) = device(&user, "phone", &t).await?;
    let (mut laptop, _) = device(&user, "laptop", &t).await?;
    phone.send_json(&json!({"type":"join_game","gameId":"g1"})).await?;
    phone.recv().await?;
    laptop.recv().await?;
    phone.send_json(&json!({"type":"update_presence","presence":"away"})).await?;
    phone.recv().await?;
    // Idle until workerd evicts the session: pings are answered by the runtime without waking
    // it; the probe — a sync_state, answered to the laptop alone — reaches the object (waking
    // it if it was evicted) and changes nothing.
    let mut hib = Hibernation::start("UserSession", &user).await?;
    loop {
        hib.idle().await?;
        laptop.expect_next_is_pong().await?;
        laptop.send_json(&json!({"type":"sync_state"})).await?;
        let st = laptop.recv().await?;
        ensure_eq!(
            without_last_active(st),
            json!({"type":"state","userId":user,"activeGames":["g1"],"presence":"online","connectedDevices":2,"devices":["laptop","phone"]})
        );
        if hib.woke().await {
            break;
        }
    }
    phone.expect_next_is_pong().await?;
    // The phone's "away" lives in its attachment: the laptop going away moves the aggregate.
    laptop.send_json(&json!({"type":"update_presence","presence":"away"})).await?;
    let away = json!({"type":"presence_updated","presence":"away"});
    ensure_eq!(laptop.recv().await?, away);
    ensure_eq!(phone.recv().await?, away);
    laptop.send_json(&json!({"type":"join_game","gameId":"g2"})).await?;
    let joined = json!({"type":"game_joined","gameId":"g2","activeGames":["g1","g2"]});
    ensure_eq!(laptop.recv().await?, joined);
    ensure_eq!(phone.recv().await?, joined);
    let st = state_of(&user).await?;
    ensure_eq!(
        without_last_active(st),
        json!({"userId":user,"activeGames":["g1","g2"],"presence":"away","connectedDevices":2,"devices":["laptop","phone"]})
    );
    phone.close().await?;
    laptop.close().await
}

async fn restart() -> TestResult {
    let s = server();
    let user = unique("rst");
    let old = s.token(&user);
    let (mut phone, _) = device(&user, "phone", &old).await?;
    for g in ["g1", "g2"] {
        phone.send_json(&json!({"type":"join_game","gameId":g})).await?;
        phone.recv().await?;
    }
    phone.send_json(&json!({"type":"logout_all"})).await?;
    ensure_eq!(phone.recv().await?, json!({"type":"logged_out"}));
    ensure_eq!(phone.expect_close().await?.code, 4001);
    let before = state_until(&user, |v| v["devices"] == json!([])).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.restart()?;
    let after = state_of(&user).await?;
    // lastActive may move once more: the logged-out socket's close can be processed as late as
    // the shutdown (the client's reply to a server Close is flushed lazily).
    ensure_eq!(without_last_active(after.clone()), without_last_active(before.clone()));
    ensure!(after["lastActive"].as_i64() >= before["lastActive"].as_i64(), "lastActive went backwards");
    ensure_eq!(after["activeGames"], json!(["g1", "g2"]));
    // The revocation survived the restart; a newer token works.
    let r = ws_refusal_reply(&session_path(&user, "phone"), &old).await?;
    ensure_eq!((r.status, r.error_code()), (401, Some("token_revoked")));
    let r = ws_refusal_reply(&format!("/ws/counter/{}", unique("rc")), &old).await?;
    ensure_eq!((r.status, r.error_code()), (401, Some("token_revoked")));
    let (phone, init) = device(&user, "phone", &s.token(&user)).await?;
    ensure_eq!(init["activeGames"], json!(["g1", "g2"]));
    phone.close().await
}

/// Design note 000 / docs/protocol.md §4: `connectedDevices` is a count; the ids are `devices`. Two sockets
/// of one device count once.
async fn connected_devices_count() -> TestResult {
    let user = unique("count");
    let t = server().token(&user);
    let (mut a, init) = device(&user, "phone", &t).await?;
    ensure_eq!((init["connectedDevices"].clone(), init["devices"].clone()), (json!(1), json!(["phone"])));
    let (b, init) = device(&user, "laptop", &t).await?;
    ensure_eq!((init["connectedDevices"].clone(), init["devices"].clone()), (json!(2), json!(["laptop", "phone"])));
    let (c, _) = device(&user, "phone", &t).await?;
    let r = http().get(&format!("/__user-session/state?userId={user}"), &t).await?;
    ensure_eq!(r.status, 200);
    ensure_eq!((r.body["connectedDevices"].clone(), r.body["devices"].clone()), (json!(2), json!(["laptop", "phone"])));
    a.send_json(&json!({"type":"sync_state"})).await?;
    let st = a.recv_type("state").await?;
    ensure_eq!((st["connectedDevices"].clone(), st["devices"].clone()), (json!(2), json!(["laptop", "phone"])));
    c.close().await?;
    b.close().await?;
    a.close().await
}
