//! GameServer (docs/game.md) over real sockets: joins, turns, moves, dedup, replay, the
//! UserSession mirror, revocation, bad input, hibernation and restarts. Every test uses its
//! own game and users; "nothing else arrived" is proven with a ping → pong sentinel.

use libtest_mimic::Trial;
use serde_json::{json, Value};

use crate::support::{http, server, unique, ws, ws_refusal, Hibernation, TestResult, Ws};
use crate::{ensure, ensure_eq, restart_trial, trial};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub fn tests() -> Vec<Trial> {
    vec![
        trial("game::fresh_game_state_and_joins", fresh_and_joins),
        trial("game::turns_rotate_with_three_players", rotation),
        trial("game::fifth_join_is_game_full_and_changes_nothing", game_full),
        trial("game::double_join_answers_state_to_that_socket_only", double_join),
        trial("game::not_a_player_not_your_turn_move_too_large", refusals_in_band),
        trial("game::leave_mid_turn_passes_the_turn", leave_mid_turn),
        trial("game::closing_a_socket_keeps_the_player", close_keeps_player),
        trial("game::repeated_id_is_acked_not_applied", dedup),
        trial("game::since_replays_missed_moves", replay),
        trial("game::joins_show_on_every_session_device", session_mirror),
        trial("game::logout_all_closes_game_sockets_4001", logout_all),
        trial("game::bad_frames_close_1007_1008_1009", bad_frames),
        trial("game::bad_game_id_400_no_token_401", http_refusals),
        trial("game::survives_hibernation", hibernation),
        restart_trial("game::survives_wrangler_restart", restart),
    ]
}

/// Open `user`'s socket on `game` (with `query`, e.g. `?since=2`) and read its `game_state`.
async fn open(game: &str, user: &str, query: &str) -> Res<(Ws, Value)> {
    let mut sock = ws(&format!("/api/game/{game}{query}"), &server().token(user)).await?;
    let state = sock.recv().await?;
    ensure_eq!(state["type"], json!("game_state"));
    Ok((sock, state))
}

/// `GET /api/game/:gameId/state`, read by a bystander.
async fn state_of(game: &str) -> Res<Value> {
    let r = http().get(&format!("/api/game/{game}/state"), &server().token("observer")).await?;
    ensure_eq!(r.status, 200);
    Ok(r.body)
}

/// Ping → the very next frame must be pong: nothing else was queued for this socket.
async fn quiet(sock: &mut Ws) -> TestResult {
    sock.send_text(r#"{"type":"ping"}"#).await?;
    ensure_eq!(sock.recv().await?, json!({"type":"pong"}));
    Ok(())
}

fn player(user: &str, score: i64) -> Value {
    json!({"userId": user, "userName": user, "score": score})
}

/// `user` sends `join`; their socket and every one in `others` sees the same `player_joined`.
async fn join(sock: &mut Ws, user: &str, others: &mut [&mut Ws]) -> Res<Value> {
    sock.send_json(&json!({"type":"join"})).await?;
    let frame = sock.recv().await?;
    ensure_eq!(frame["type"], json!("player_joined"));
    ensure_eq!(frame["player"], player(user, 0));
    for other in others.iter_mut() {
        ensure_eq!(other.recv().await?, frame);
    }
    Ok(frame)
}

/// `user` moves and every socket sees the same `moved`.
async fn play(sock: &mut Ws, mv: Value, all_others: &mut [&mut Ws]) -> Res<Value> {
    sock.send_json(&json!({"type":"move","move":mv})).await?;
    let frame = sock.recv().await?;
    ensure_eq!(frame["type"], json!("moved"));
    for other in all_others.iter_mut() {
        ensure_eq!(other.recv().await?, frame);
    }
    Ok(frame)
}

async fn error_code(sock: &mut Ws) -> Res<String> {
    let frame = sock.recv().await?;
    ensure_eq!(frame["type"], json!("error"));
    ensure!(frame["message"].as_str().is_some_and(|m| !m.is_empty()), "error without message: {frame}");
    Ok(frame["code"].as_str().unwrap_or_default().to_owned())
}

async fn fresh_and_joins() -> TestResult {
    let g = unique("gfresh");
    let (a, b) = (unique("ga"), unique("gb"));
    let (mut sa, state) = open(&g, &a, "").await?;
    ensure_eq!(
        state,
        json!({"type":"game_state","gameId":g,"status":"waiting","players":[],"turn":null,"moves":0,"seq":0})
    );
    ensure_eq!(state_of(&g).await?, state);
    let first = join(&mut sa, &a, &mut []).await?;
    ensure_eq!(first, json!({"type":"player_joined","player":player(&a,0),"players":[player(&a,0)],"status":"waiting","turn":null}));
    let (mut sb, state) = open(&g, &b, "").await?;
    ensure_eq!(state["players"], json!([player(&a, 0)]));
    let second = join(&mut sb, &b, &mut [&mut sa]).await?;
    ensure_eq!(
        second,
        json!({"type":"player_joined","player":player(&b,0),"players":[player(&a,0),player(&b,0)],"status":"playing","turn":a})
    );
    ensure_eq!(
        state_of(&g).await?,
        json!({"type":"game_state","gameId":g,"status":"playing","players":[player(&a,0),player(&b,0)],"turn":a,"moves":0,"seq":0})
    );
    quiet(&mut sa).await?;
    quiet(&mut sb).await
}

async fn rotation() -> TestResult {
    let g = unique("grot");
    let users = [unique("ra"), unique("rb"), unique("rc")];
    let (mut s0, _) = open(&g, &users[0], "").await?;
    let (mut s1, _) = open(&g, &users[1], "").await?;
    let (mut s2, _) = open(&g, &users[2], "").await?;
    join(&mut s0, &users[0], &mut [&mut s1, &mut s2]).await?;
    join(&mut s1, &users[1], &mut [&mut s0, &mut s2]).await?;
    join(&mut s2, &users[2], &mut [&mut s0, &mut s1]).await?;
    for round in 0..2i64 {
        for i in 0..3usize {
            let seq = round * 3 + i as i64 + 1;
            let next = &users[(i + 1) % 3];
            let frame = match i {
                0 => play(&mut s0, json!({"cell": seq}), &mut [&mut s1, &mut s2]).await?,
                1 => play(&mut s1, json!({"cell": seq}), &mut [&mut s0, &mut s2]).await?,
                _ => play(&mut s2, json!({"cell": seq}), &mut [&mut s0, &mut s1]).await?,
            };
            ensure_eq!(frame, json!({"type":"moved","userId":users[i],"move":{"cell":seq},"seq":seq,"turn":next}));
        }
    }
    let state = state_of(&g).await?;
    ensure_eq!(state["players"], json!([player(&users[0], 2), player(&users[1], 2), player(&users[2], 2)]));
    ensure_eq!((state["moves"].clone(), state["seq"].clone(), state["turn"].clone()), (json!(6), json!(6), json!(users[0])));
    quiet(&mut s0).await
}

async fn game_full() -> TestResult {
    let g = unique("gfull");
    let users: Vec<String> = (0..5).map(|i| unique(&format!("f{i}"))).collect();
    let mut socks = Vec::new();
    for u in &users {
        socks.push(open(&g, u, "").await?.0);
    }
    for (i, u) in users.iter().take(4).enumerate() {
        let sock = &mut socks[i];
        sock.send_json(&json!({"type":"join"})).await?;
        // earlier players' joins may still be queued on this socket: skip to our own
        loop {
            let frame = sock.recv_type("player_joined").await?;
            if frame["player"] == player(u, 0) {
                ensure_eq!(frame["players"].as_array().map(Vec::len), Some(i + 1));
                break;
            }
        }
    }
    // drain the joins every socket saw, then take a snapshot
    for sock in socks.iter_mut() {
        quiet_after_joins(sock).await?;
    }
    let before = state_of(&g).await?;
    ensure_eq!(before["players"].as_array().map(Vec::len), Some(4));
    let fifth = &mut socks[4];
    fifth.send_json(&json!({"type":"join"})).await?;
    ensure_eq!(error_code(fifth).await?, "game_full");
    quiet(fifth).await?;
    ensure_eq!(state_of(&g).await?, before);
    for sock in socks.iter_mut().take(4) {
        quiet(sock).await?;
    }
    // the fifth cannot move either
    socks[4].send_json(&json!({"type":"move","move":1})).await?;
    ensure_eq!(error_code(&mut socks[4]).await?, "not_a_player");
    ensure_eq!(state_of(&g).await?, before);
    Ok(())
}

/// Skip every `player_joined` until the sentinel's pong.
async fn quiet_after_joins(sock: &mut Ws) -> TestResult {
    sock.send_text(r#"{"type":"ping"}"#).await?;
    loop {
        let frame = sock.recv().await?;
        match frame["type"].as_str() {
            Some("pong") => return Ok(()),
            Some("player_joined") => continue,
            _ => return Err(crate::support::fail(format!("unexpected {frame}"))),
        }
    }
}

async fn double_join() -> TestResult {
    let g = unique("gdouble");
    let (a, b) = (unique("da"), unique("db"));
    let (mut sa, _) = open(&g, &a, "").await?;
    let (mut sb, _) = open(&g, &b, "").await?;
    join(&mut sa, &a, &mut [&mut sb]).await?;
    let before = state_of(&g).await?;
    sa.send_json(&json!({"type":"join"})).await?;
    ensure_eq!(sa.recv().await?, before);
    quiet(&mut sb).await?;
    ensure_eq!(state_of(&g).await?, before);
    // a second socket of the same user joining is the same player
    let (mut sa2, _) = open(&g, &a, "").await?;
    sa2.send_json(&json!({"type":"join"})).await?;
    ensure_eq!(sa2.recv().await?, before);
    quiet(&mut sa).await?;
    quiet(&mut sb).await
}

async fn refusals_in_band() -> TestResult {
    let g = unique("gref");
    let (a, b, z) = (unique("xa"), unique("xb"), unique("xz"));
    let (mut sa, _) = open(&g, &a, "").await?;
    join(&mut sa, &a, &mut []).await?;
    // one player: the game is waiting, nobody's turn
    sa.send_json(&json!({"type":"move","move":1})).await?;
    ensure_eq!(error_code(&mut sa).await?, "not_your_turn");
    let (mut sb, _) = open(&g, &b, "").await?;
    join(&mut sb, &b, &mut [&mut sa]).await?;
    let (mut sz, _) = open(&g, &z, "").await?;
    let before = state_of(&g).await?;
    sz.send_json(&json!({"type":"move","move":1})).await?;
    ensure_eq!(error_code(&mut sz).await?, "not_a_player");
    sz.send_json(&json!({"type":"leave"})).await?;
    ensure_eq!(error_code(&mut sz).await?, "not_a_player");
    sb.send_json(&json!({"type":"move","move":1})).await?;
    ensure_eq!(error_code(&mut sb).await?, "not_your_turn");
    sa.send_json(&json!({"type":"move","move":"x".repeat(1100)})).await?;
    ensure_eq!(error_code(&mut sa).await?, "move_too_large");
    sa.send_json(&json!({"type":"move","move":1,"id":""})).await?;
    ensure_eq!(error_code(&mut sa).await?, "invalid_id");
    for sock in [&mut sa, &mut sb, &mut sz] {
        quiet(sock).await?;
    }
    ensure_eq!(state_of(&g).await?, before);
    // exactly 1 KiB serialized is accepted (a 1022-char string plus its quotes)
    let frame = play(&mut sa, json!("y".repeat(1022)), &mut [&mut sb, &mut sz]).await?;
    ensure_eq!(frame["seq"], json!(1));
    Ok(())
}

async fn leave_mid_turn() -> TestResult {
    let g = unique("gleave");
    let users = [unique("la"), unique("lb"), unique("lc")];
    let (mut s0, _) = open(&g, &users[0], "").await?;
    let (mut s1, _) = open(&g, &users[1], "").await?;
    let (mut s2, _) = open(&g, &users[2], "").await?;
    join(&mut s0, &users[0], &mut [&mut s1, &mut s2]).await?;
    join(&mut s1, &users[1], &mut [&mut s0, &mut s2]).await?;
    join(&mut s2, &users[2], &mut [&mut s0, &mut s1]).await?;
    ensure_eq!(play(&mut s0, json!(1), &mut [&mut s1, &mut s2]).await?["turn"], json!(users[1]));
    // it is users[1]'s turn and they leave: the turn passes to users[2]
    s1.send_json(&json!({"type":"leave"})).await?;
    let left = json!({"type":"player_left","userId":users[1],"players":[player(&users[0],1),player(&users[2],0)],
                      "status":"playing","turn":users[2]});
    for sock in [&mut s0, &mut s1, &mut s2] {
        ensure_eq!(sock.recv().await?, left);
    }
    // the one who left is no longer a player
    s1.send_json(&json!({"type":"move","move":2})).await?;
    ensure_eq!(error_code(&mut s1).await?, "not_a_player");
    ensure_eq!(play(&mut s2, json!(2), &mut [&mut s0, &mut s1]).await?, json!({"type":"moved","userId":users[2],"move":2,"seq":2,"turn":users[0]}));
    // down to one player: waiting, no turn
    s2.send_json(&json!({"type":"leave"})).await?;
    let frame = s0.recv().await?;
    ensure_eq!((frame["type"].clone(), frame["status"].clone(), frame["turn"].clone()), (json!("player_left"), json!("waiting"), Value::Null));
    let state = state_of(&g).await?;
    ensure_eq!((state["players"].clone(), state["turn"].clone()), (json!([player(&users[0], 1)]), Value::Null));
    Ok(())
}

async fn close_keeps_player() -> TestResult {
    let g = unique("gclose");
    let (a, b) = (unique("ca"), unique("cb"));
    let (mut sa, _) = open(&g, &a, "").await?;
    let (mut sb, _) = open(&g, &b, "").await?;
    join(&mut sa, &a, &mut [&mut sb]).await?;
    join(&mut sb, &b, &mut [&mut sa]).await?;
    play(&mut sa, json!(1), &mut [&mut sb]).await?;
    sb.close().await?;
    quiet(&mut sa).await?; // no player_left
    let state = state_of(&g).await?;
    ensure_eq!((state["players"].clone(), state["turn"].clone()), (json!([player(&a, 1), player(&b, 0)]), json!(b)));
    let (mut sb, state) = open(&g, &b, "").await?;
    ensure_eq!(state["turn"], json!(b));
    ensure_eq!(play(&mut sb, json!(2), &mut [&mut sa]).await?["seq"], json!(2));
    Ok(())
}

async fn dedup() -> TestResult {
    let g = unique("gdedup");
    let (a, b) = (unique("ea"), unique("eb"));
    let (mut sa, _) = open(&g, &a, "").await?;
    let (mut sb, _) = open(&g, &b, "").await?;
    join(&mut sa, &a, &mut [&mut sb]).await?;
    join(&mut sb, &b, &mut [&mut sa]).await?;
    sa.send_json(&json!({"type":"move","move":{"x":1},"id":"m-1"})).await?;
    let moved = json!({"type":"moved","userId":a,"move":{"x":1},"seq":1,"turn":b});
    ensure_eq!(sa.recv().await?, moved);
    ensure_eq!(sa.recv().await?, json!({"type":"ack","id":"m-1","seq":1}));
    ensure_eq!(sb.recv().await?, moved);
    // the retry (after the turn moved on) is acked with the original seq and not applied
    sa.send_json(&json!({"type":"move","move":{"x":1},"id":"m-1"})).await?;
    ensure_eq!(sa.recv().await?, json!({"type":"ack","id":"m-1","seq":1}));
    quiet(&mut sa).await?;
    quiet(&mut sb).await?;
    let state = state_of(&g).await?;
    ensure_eq!((state["moves"].clone(), state["players"][0]["score"].clone()), (json!(1), json!(1)));
    // ids are per user: b may use the same id
    sb.send_json(&json!({"type":"move","move":2,"id":"m-1"})).await?;
    ensure_eq!(sb.recv().await?["seq"], json!(2));
    ensure_eq!(sb.recv().await?, json!({"type":"ack","id":"m-1","seq":2}));
    ensure_eq!(sa.recv().await?["seq"], json!(2));
    Ok(())
}

async fn replay() -> TestResult {
    let g = unique("greplay");
    let (a, b) = (unique("pa"), unique("pb"));
    let (mut sa, _) = open(&g, &a, "").await?;
    let (mut sb, _) = open(&g, &b, "").await?;
    join(&mut sa, &a, &mut [&mut sb]).await?;
    join(&mut sb, &b, &mut [&mut sa]).await?;
    let m1 = play(&mut sa, json!("e4"), &mut [&mut sb]).await?;
    let m2 = play(&mut sb, json!("e5"), &mut [&mut sa]).await?;
    let m3 = play(&mut sa, json!({"from":"g1","to":"f3"}), &mut [&mut sb]).await?;
    // "any JSON value", null included: stored and replayed as null.
    let m4 = play(&mut sb, Value::Null, &mut [&mut sa]).await?;
    ensure_eq!(m4, json!({"type":"moved","userId":b,"move":null,"seq":4,"turn":a}));
    let (mut late, state) = open(&g, &b, "?since=1").await?;
    ensure_eq!((state["seq"].clone(), state["turn"].clone()), (json!(4), json!(a)));
    ensure_eq!(late.recv().await?, m2);
    ensure_eq!(late.recv().await?, m3);
    ensure_eq!(late.recv().await?, m4);
    quiet(&mut late).await?;
    let (mut all, _) = open(&g, &b, "?since=0").await?;
    for m in [&m1, &m2, &m3, &m4] {
        ensure_eq!(all.recv().await?, *m);
    }
    quiet(&mut all).await?;
    let (mut current, _) = open(&g, &b, "?since=4").await?;
    quiet(&mut current).await?;
    let (mut ahead, _) = open(&g, &b, "?since=99").await?;
    ensure_eq!(ahead.recv().await?, json!({"type":"resync_required","latestSeq":4}));
    quiet(&mut ahead).await?;
    let refused = ws_refusal(&format!("/api/game/{g}?since=abc"), &[("Authorization", &format!("Bearer {}", server().token(&a)))]).await?;
    ensure_eq!(refused, 400);
    Ok(())
}

async fn session_device(user: &str, device: &str) -> Res<Ws> {
    let mut sock = ws(&format!("/__user-session?userId={user}&deviceId={device}"), &server().token(user)).await?;
    ensure_eq!(sock.recv().await?["type"], json!("initial_state"));
    Ok(sock)
}

/// Skip presence frames (another device connecting) until the frame of `kind`.
async fn session_frame(sock: &mut Ws, kind: &str) -> Res<Value> {
    sock.recv_type(kind).await
}

async fn session_mirror() -> TestResult {
    let g = unique("gsess");
    let a = unique("sa");
    let mut desktop = session_device(&a, "desktop").await?;
    let mut mobile = session_device(&a, "mobile").await?;
    let (mut sa, _) = open(&g, &a, "").await?;
    join(&mut sa, &a, &mut []).await?;
    let joined = json!({"type":"game_joined","gameId":g,"activeGames":[g]});
    ensure_eq!(session_frame(&mut desktop, "game_joined").await?, joined);
    ensure_eq!(session_frame(&mut mobile, "game_joined").await?, joined);
    let view = http().get(&format!("/__user-session/state?userId={a}"), &server().token(&a)).await?;
    ensure_eq!(view.body["activeGames"], json!([g]));
    sa.send_json(&json!({"type":"leave"})).await?;
    ensure_eq!(sa.recv().await?["type"], json!("player_left"));
    let left = json!({"type":"game_left","gameId":g,"activeGames":[]});
    ensure_eq!(session_frame(&mut desktop, "game_left").await?, left);
    ensure_eq!(session_frame(&mut mobile, "game_left").await?, left);
    quiet(&mut desktop).await?;
    quiet(&mut mobile).await
}

async fn logout_all() -> TestResult {
    let g = unique("glogout");
    let a = unique("oa");
    let mut device = session_device(&a, "phone").await?;
    let (mut sa, _) = open(&g, &a, "").await?;
    join(&mut sa, &a, &mut []).await?;
    device.send_json(&json!({"type":"logout_all"})).await?;
    ensure_eq!(sa.recv().await?, json!({"type":"logged_out"}));
    ensure_eq!(sa.expect_close().await?.code, 4001);
    // the player stays in the game (leaving is explicit)
    ensure_eq!(state_of(&g).await?["players"], json!([player(&a, 0)]));
    Ok(())
}

async fn bad_frames() -> TestResult {
    let g = unique("gbad");
    let a = unique("ba");
    let (mut sa, _) = open(&g, &a, "").await?;
    join(&mut sa, &a, &mut []).await?;
    let before = state_of(&g).await?;
    let big = json!({"type":"move","move":"x".repeat(70 * 1024)}).to_string();
    let cases: Vec<(Option<String>, u16)> = vec![
        (None, 1007),
        (Some("not json".into()), 1007),
        (Some(r#"{"type":"move"}"#.into()), 1007),
        (Some(r#"{"type":"move","move":1,"id":null}"#.into()), 1007),
        (Some(r#"{"type":"move","move":1,"id":7}"#.into()), 1007),
        (Some(r#"{"type":5}"#.into()), 1007),
        (Some(r#"{"type":"dance"}"#.into()), 1008),
        (Some(big), 1009),
    ];
    for (frame, code) in cases {
        let (mut sock, _) = open(&g, &a, "").await?;
        let closed = sock.send_bad_frame(frame.as_deref()).await?;
        let shown: Option<String> = frame.as_deref().map(|f| f.chars().take(60).collect());
        ensure!(closed.code == code, "{shown:?} closed with {closed:?}, expected {code}");
    }
    quiet(&mut sa).await?;
    ensure_eq!(state_of(&g).await?, before);
    Ok(())
}

async fn http_refusals() -> TestResult {
    let token = server().token(&unique("ha"));
    let auth = format!("Bearer {token}");
    let r = http().get("/api/game/bad%20id/state", &token).await?;
    ensure_eq!((r.status, r.error_code()), (400, Some("invalid_name")));
    ensure_eq!(ws_refusal("/api/game/bad%20id", &[("Authorization", &auth)]).await?, 400);
    let g = unique("gauth");
    let r = http().request("GET", &format!("/api/game/{g}/state"), None, None, &[]).await?;
    ensure_eq!(r.status, 401);
    ensure_eq!(ws_refusal(&format!("/api/game/{g}"), &[]).await?, 401);
    let r = http().get(&format!("/api/game/{g}"), &token).await?;
    ensure_eq!((r.status, r.error_code()), (426, Some("upgrade_required")));
    let r = http().post(&format!("/api/game/{g}/state"), &token, "{}").await?;
    ensure_eq!(r.status, 405);
    Ok(())
}

/// Two players `a` and `b` joined in game `g`, in that order, and `a` has made move 1 with
/// client id `id` (so it is `b`'s turn).
async fn two_players_one_move(g: &str, a: &str, b: &str, id: &str) -> Res<(Ws, Ws)> {
    let (mut sa, _) = open(g, a, "").await?;
    let (mut sb, _) = open(g, b, "").await?;
    join(&mut sa, a, &mut [&mut sb]).await?;
    join(&mut sb, b, &mut [&mut sa]).await?;
    sa.send_json(&json!({"type":"move","move":id,"id":id})).await?;
    ensure_eq!(sa.recv_type("ack").await?["seq"], json!(1));
    ensure_eq!(sb.recv().await?["seq"], json!(1));
    Ok((sa, sb))
}

async fn hibernation() -> TestResult {
    let g = unique("ghib");
    let (a, b) = (unique("ha"), unique("hb"));
    let (mut sa, mut sb) = two_players_one_move(&g, &a, &b, "before").await?;
    // Idle until the object is evicted; a repeated join (a no-op answered with game_state)
    // wakes it.
    let mut hib = Hibernation::start("GameServer", &g).await?;
    loop {
        hib.idle().await?;
        sa.send_json(&json!({"type":"join"})).await?;
        ensure_eq!(sa.recv().await?["type"], json!("game_state"));
        if hib.woke().await {
            break;
        }
    }
    let state = state_of(&g).await?;
    ensure_eq!(
        (state["players"].clone(), state["turn"].clone(), state["seq"].clone()),
        (json!([player(&a, 1), player(&b, 0)]), json!(b), json!(1))
    );
    // dedup and turn order survived the wake
    sa.send_json(&json!({"type":"move","move":"before","id":"before"})).await?;
    ensure_eq!(sa.recv().await?, json!({"type":"ack","id":"before","seq":1}));
    ensure_eq!(
        play(&mut sb, json!("after"), &mut [&mut sa]).await?,
        json!({"type":"moved","userId":b,"move":"after","seq":2,"turn":a})
    );
    Ok(())
}

async fn restart() -> TestResult {
    let s = server();
    let g = unique("grestart");
    let (a, b) = (unique("ta"), unique("tb"));
    let (mut sa, mut sb) = two_players_one_move(&g, &a, &b, "r1").await?;
    let m2 = play(&mut sb, json!(2), &mut [&mut sa]).await?;
    let before = state_of(&g).await?;
    drop(sa);
    drop(sb);
    s.restart()?;
    ensure_eq!(state_of(&g).await?, before);
    let (mut sa, state) = open(&g, &a, "?since=1").await?;
    ensure_eq!(state, before);
    ensure_eq!(sa.recv().await?, m2);
    sa.send_json(&json!({"type":"move","move":1,"id":"r1"})).await?;
    ensure_eq!(sa.recv().await?, json!({"type":"ack","id":"r1","seq":1}));
    ensure_eq!(play(&mut sa, json!(3), &mut []).await?, json!({"type":"moved","userId":a,"move":3,"seq":3,"turn":b}));
    Ok(())
}
