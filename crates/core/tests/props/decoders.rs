//! Every protocol's frame decoder: arbitrary text never panics, steps 1–4 of docs/protocol.md §5
//! give exactly their close code, and anything else is Ok, 1007, or the protocol's documented
//! close / in-band codes — and a refused frame changes nothing.

use proptest::prelude::*;
use proptest::sample::select;
use serde::Deserialize;
use serde_json::{json, Value};

use edge_realtime_core::chat::{self, ChatConfig, ChatConn, Inbound};
use edge_realtime_core::channel::{Channel, Handled};
use edge_realtime_core::counter::{self, CounterOp, CounterState, WsFrame};
use edge_realtime_core::effects::To;
use edge_realtime_core::error::close;
use edge_realtime_core::frame::{self, Reject};
use edge_realtime_core::game::{Game, Player};
use edge_realtime_core::session::{self, DeviceConn, Presence, SessionState};
use edge_realtime_core::waddle::{Waddle, WaddleConn};

use crate::common::{check_error_frame, check_reject, frame_text, json, pre_decode, string};

fn id_field() -> BoxedStrategy<Option<Value>> {
    prop_oneof![1 => Just(None), 2 => string().prop_map(|s| Some(Value::from(s)))].boxed()
}

fn with_id(mut frame: Value, id: Option<Value>) -> Value {
    if let (Some(id), Some(obj)) = (id, frame.as_object_mut()) {
        obj.insert("id".into(), id);
    }
    frame
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(dead_code)]
enum Probe {
    Ping,
    Message {
        content: String,
        #[serde(default, deserialize_with = "frame::present")]
        id: Option<String>,
    },
}

fn probe_frames() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(json!({"type": "ping"})),
        (string(), id_field()).prop_map(|(c, id)| with_id(json!({"type": "message", "content": c}), id)),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(crate::config())]

    /// The shared decoder: steps 1–4 exactly as the oracle says, step 5 is Ok or 1007.
    #[test]
    fn frame_decode_maps_every_input_to_its_close_code(text in frame_text(probe_frames())) {
        let known = ["ping", "message"];
        let got = frame::decode::<Probe>(&text, &known);
        match (pre_decode(&text, &known), &got) {
            (Some(code), Err(r)) => prop_assert_eq!(crate::common::close_code(r), Some(code)),
            (Some(code), Ok(v)) => prop_assert!(false, "expected close {}, decoded {:?}", code, v),
            (None, Err(r)) => check_reject(r, &[close::INVALID_DATA], &[])?,
            (None, Ok(_)) => {}
        }
    }
}

proptest! {
    #![proptest_config(crate::config())]

    /// `frame::decode`'s direct path (no `Value` tree) answers every frame exactly as the
    /// reference decoder does: the same frame, or the same rejection with the same reason.
    #[test]
    fn frame_decode_fast_path_answers_exactly_as_the_reference(text in frame_text(probe_frames())) {
        let known = ["ping", "message"];
        prop_assert_eq!(
            format!("{:?}", frame::decode::<Probe>(&text, &known)),
            format!("{:?}", frame::decode_reference::<Probe>(&text, &known))
        );
        prop_assert_eq!(frame::decode::<Value>(&text, &known), frame::decode_reference::<Value>(&text, &known));
    }
}

// --- ChatRoom ---------------------------------------------------------------------------------

fn chat_frames() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(json!({"type": "ping"})),
        4 => (string(), id_field()).prop_map(|(c, id)| with_id(json!({"type": "message", "content": c}), id)),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn chat_frames_never_panic_and_answer_documented_codes(
        text in frame_text(chat_frames()),
        limit in 1u32..4,
        used in 0u32..4,
        violations in 0u32..3,
        now in 0i64..20_000,
    ) {
        let cfg = ChatConfig { rate_limit_messages: limit, rate_limit_window_ms: 10_000, ..ChatConfig::default() };
        let mut conn = ChatConn::new(Some("alice"), Some("Alice")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        conn.window_start = 5_000;
        conn.window_count = used.min(limit);
        conn.violations = violations;
        let before = conn.clone();
        let got = chat::on_message(&mut conn, &cfg, &text, now);
        if let Some(code) = pre_decode(&text, &chat::CLIENT_TYPES) {
            prop_assert!(matches!(&got, Inbound::Close { code: c, .. } if *c == code), "expected close {}, got {:?}", code, got);
            prop_assert_eq!(&conn, &before);
            return Ok(());
        }
        match &got {
            Inbound::Post(post) => {
                let n = post.content.chars().count();
                prop_assert!((1..=chat::MAX_CONTENT_CHARS).contains(&n));
                prop_assert_eq!(post.content.as_str(), edge_realtime_core::content::trim(&post.content));
                prop_assert!(frame::check_client_id(post.client_id.as_deref()).is_ok());
            }
            Inbound::Reply(r) if r == r#"{"type":"pong"}"# => prop_assert_eq!(&conn, &before),
            Inbound::Reply(r) => {
                check_error_frame(r, &["invalid_content", "invalid_id", "rate_limited"])?;
                if !r.contains("rate_limited") {
                    prop_assert_eq!(&conn, &before, "an invalid frame changes nothing");
                }
            }
            Inbound::Close { code, reason } => {
                prop_assert!([close::INVALID_DATA, close::POLICY, close::TOO_BIG].contains(code), "{} {}", code, reason);
                prop_assert!(reason.len() <= 123);
                if *code != close::POLICY {
                    prop_assert_eq!(&conn, &before, "a broken frame changes nothing");
                }
            }
        }
    }
}

// --- Channel ----------------------------------------------------------------------------------

fn channel_frames() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(json!({"type": "ping"})),
        2 => any::<bool>().prop_map(|b| json!({"type": "typing", "isTyping": b})),
        4 => (string(), id_field()).prop_map(|(c, id)| with_id(json!({"type": "message", "content": c}), id)),
        3 => (
            prop_oneof![3 => (-2i64..8).prop_map(Value::from), 1 => json()],
            prop_oneof![3 => select(vec!["👍", "👍🏽", "❤️", "🇫🇷", "1️⃣", "a", "👍👍", "", " 👍", "🇫"]).prop_map(Value::from), 1 => json()],
            prop_oneof![3 => any::<bool>().prop_map(Value::Bool), 1 => json()],
        )
            .prop_map(|(seq, emoji, on)| json!({"type": "react", "sequence": seq, "emoji": emoji, "on": on})),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn channel_frames_never_panic_and_answer_documented_codes(text in frame_text(channel_frames()), now in 0i64..1_000_000) {
        // Messages 3..=5 exist (1 and 2 were pruned).
        let mut ch = Channel::restore(5, 2, Default::default(), Default::default());
        let before = ch.clone();
        let got = ch.on_message("alice", &text, now);
        match (pre_decode(&text, &edge_realtime_core::channel::CLIENT_TYPES), &got) {
            (Some(code), Err(r)) => prop_assert_eq!(crate::common::close_code(r), Some(code)),
            (Some(code), Ok(h)) => prop_assert!(false, "expected close {}, got {:?}", code, h),
            (None, Err(r)) => check_reject(
                r,
                &[close::INVALID_DATA],
                &["empty_content", "content_too_long", "invalid_id", "invalid_emoji", "unknown_sequence"],
            )?,
            (None, Ok(Handled::React(r))) => {
                prop_assert!((3..=5).contains(&r.sequence), "only a stored message takes a reaction: {:?}", r);
                prop_assert!(edge_realtime_core::reactions::is_reaction_emoji(&r.emoji), "{:?}", r);
            }
            (None, Ok(Handled::Post(p))) => {
                prop_assert!((1..=edge_realtime_core::channel::MAX_CONTENT_CHARS).contains(&p.content.chars().count()));
                prop_assert!(frame::check_client_id(p.client_id.as_deref()).is_ok());
            }
            (None, Ok(Handled::Done(_))) => {}
        }
        if !matches!(got, Ok(Handled::Done(_))) {
            prop_assert_eq!(&ch, &before, "only typing changes the channel");
        }
    }
}

// --- Waddle -----------------------------------------------------------------------------------

fn waddle_frames() -> BoxedStrategy<Value> {
    let status = prop_oneof![select(vec!["online", "away", "busy", "offline"]).prop_map(str::to_owned), string()];
    prop_oneof![
        1 => Just(json!({"type": "ping"})),
        2 => status.prop_map(|s| json!({"type": "presence_update", "status": s})),
        2 => (string(), any::<bool>()).prop_map(|(c, b)| json!({"type": "typing", "channelId": c, "isTyping": b})),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn waddle_frames_never_panic_and_answer_documented_codes(text in frame_text(waddle_frames()), now in 0i64..1_000_000) {
        let mut w = Waddle::default();
        let conn = WaddleConn { user_id: "alice".into(), user_name: None };
        let _ = w.on_connect(&conn, 0);
        let before = w.clone();
        let got = w.on_message(&conn, &text, now);
        match (pre_decode(&text, &edge_realtime_core::waddle::CLIENT_TYPES), &got) {
            (Some(code), Err(r)) => prop_assert_eq!(crate::common::close_code(r), Some(code)),
            (Some(code), Ok(o)) => prop_assert!(false, "expected close {}, got {:?}", code, o),
            (None, Err(r)) => check_reject(r, &[close::INVALID_DATA], &["invalid_status", "invalid_channel_id"])?,
            (None, Ok(o)) => {
                if o.store.is_none() {
                    prop_assert_eq!(&w, &before, "typing and ping are not stored");
                }
            }
        }
        if got.is_err() {
            prop_assert_eq!(&w, &before);
        }
    }
}

// --- UserSession ------------------------------------------------------------------------------

fn session_frames() -> BoxedStrategy<Value> {
    let presence = prop_oneof![select(vec!["online", "away", "offline"]).prop_map(str::to_owned), string()];
    prop_oneof![
        1 => select(vec!["ping", "sync_state", "logout_all"]).prop_map(|t| json!({"type": t})),
        2 => (select(vec!["join_game", "leave_game"]), string()).prop_map(|(t, g)| json!({"type": t, "gameId": g})),
        2 => presence.prop_map(|p| json!({"type": "update_presence", "presence": p})),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn session_frames_never_panic_and_answer_documented_codes(
        text in frame_text(session_frames()),
        games in 0usize..=100,
        logged_out in proptest::option::of(0i64..10_000_000),
        iat in 0i64..10_000,
        now in 0i64..10_000_000,
    ) {
        let mut state = SessionState::new("alice", 0);
        state.active_games = (0..games).map(|i| format!("g{i}")).collect();
        state.logged_out_at = logged_out;
        let device = DeviceConn::new("d1", iat);
        let others = [DeviceConn { presence: Presence::Away, ..DeviceConn::new("d2", iat) }];
        let out = session::on_message(&state, &device, &others, &text, now);
        if session::is_revoked(logged_out, iat) {
            prop_assert_eq!(out.close.as_ref().map(|c| c.code), Some(close::LOGGED_OUT));
            prop_assert!(out.state.is_none());
            return Ok(());
        }
        if let Some(code) = pre_decode(&text, &session::CLIENT_TYPES) {
            prop_assert_eq!(out.close.as_ref().map(|c| c.code), Some(code));
        }
        if let Some(c) = &out.close {
            prop_assert!([close::INVALID_DATA, close::POLICY, close::TOO_BIG].contains(&c.code));
            prop_assert!(c.reason.len() <= 123);
            prop_assert!(out.state.is_none() && out.sends.is_empty() && out.attachment.is_none());
        }
        for d in &out.sends {
            let v: Value = serde_json::from_str(&d.frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
            if v["type"] == "error" {
                check_error_frame(&d.frame, &["invalid_game_id", "invalid_presence", "too_many_games"])?;
                prop_assert!(out.state.is_none(), "an in-band error changes nothing");
            }
        }
        if let Some(next) = &out.state {
            prop_assert!(next.active_games.len() <= session::MAX_ACTIVE_GAMES);
            prop_assert!(next.last_active >= state.last_active);
        }
    }
}

// --- GameServer -------------------------------------------------------------------------------

fn game_frames() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => select(vec!["ping", "join", "leave"]).prop_map(|t| json!({"type": t})),
        4 => (json(), id_field()).prop_map(|(m, id)| with_id(json!({"type": "move", "move": m}), id)),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn game_frames_never_panic_and_answer_documented_codes(
        text in frame_text(game_frames()),
        players in 0usize..=4,
        user in select(vec!["p0", "p1", "p4"]),
        now in 0i64..1_000_000,
    ) {
        let players: Vec<Player> = (0..players).map(|i| Player { user_id: format!("p{i}"), user_name: format!("P{i}"), score: 0 }).collect();
        let mut g = Game::restore("g".into(), players, None, 3, [("p1".to_owned(), "seen".to_owned(), 2)]);
        let before = g.clone();
        let got = g.on_message(user, "User", &text, now);
        match (pre_decode(&text, &edge_realtime_core::game::CLIENT_TYPES), &got) {
            (Some(code), Err(r)) => prop_assert_eq!(crate::common::close_code(r), Some(code)),
            (Some(code), Ok(e)) => prop_assert!(false, "expected close {}, got {:?}", code, e),
            (None, Err(r)) => check_reject(r, &[close::INVALID_DATA], &["not_a_player", "move_too_large", "not_your_turn", "invalid_id"])?,
            (None, Ok(e)) => {
                for f in e.frames_to(&To::This) {
                    if f.contains(r#""type":"error""#) {
                        check_error_frame(f, &["game_full"])?;
                    }
                }
            }
        }
        if got.is_err() {
            prop_assert_eq!(&g, &before, "a refusal changes nothing");
        }
    }
}

// --- Counter ----------------------------------------------------------------------------------

/// The Counter object's WebSocket pipeline (src/objects/counter.rs `on_message`), built from
/// the core's pieces: decode, the op kind, the client id, the op, the mutation.
pub fn counter_frame(text: &str) -> Result<(CounterOp, Option<String>), Reject> {
    match counter::ws_frame(text)? {
        WsFrame::Mutation { op, client_id } => Ok((op, client_id)),
        // Handled before (the test returns early): an in-band code no check accepts.
        WsFrame::Ping => Err(Reject::in_band("pong", "a ping")),
    }
}

fn counter_frames() -> BoxedStrategy<Value> {
    let n = crate::common::number();
    prop_oneof![
        (select(vec!["increment", "decrement"]), proptest::option::of(n.clone()), id_field()).prop_map(|(t, a, id)| {
            let mut f = json!({"type": t});
            if let (Some(a), Some(o)) = (a, f.as_object_mut()) {
                o.insert("amount".into(), a);
            }
            with_id(f, id)
        }),
        (n, id_field()).prop_map(|(v, id)| with_id(json!({"type": "setValue", "value": v}), id)),
        id_field().prop_map(|id| with_id(json!({"type": "reset"}), id)),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn counter_frames_never_panic_and_answer_documented_codes(text in frame_text(counter_frames()), value in -10i64..10, now in 0i64..1_000_000) {
        let state = CounterState { value: if value > 5 { edge_realtime_core::MAX_SAFE_INTEGER } else { value }, ..CounterState::new("c", 0) };
        if counter::ws_frame(&text) == Ok(WsFrame::Ping) {
            // A ping, byte-exact or not, is answered with pong and applies nothing.
            prop_assert_eq!(pre_decode(&text, &counter::CLIENT_TYPES), None);
            return Ok(());
        }
        let got = counter_frame(&text)
            .and_then(|(op, id)| counter::mutate(&state, op, "alice", id.as_deref(), now).map_err(|e| e.to_reject()));
        match (pre_decode(&text, &counter::CLIENT_TYPES), &got) {
            (Some(code), Err(r)) => prop_assert_eq!(crate::common::close_code(r), Some(code)),
            (Some(code), Ok(_)) => prop_assert!(false, "expected close {}", code),
            (None, Err(r)) => check_reject(r, &[close::INVALID_DATA], &["invalid_amount", "invalid_id", "overflow"])?,
            (None, Ok((next, _, seq, _))) => {
                prop_assert_eq!(*seq, 1);
                prop_assert!(next.value.abs() <= edge_realtime_core::MAX_SAFE_INTEGER);
            }
        }
    }
}

// --- VoiceChannel -----------------------------------------------------------------------------

fn voice_flag() -> BoxedStrategy<Option<Value>> {
    prop_oneof![2 => Just(None), 3 => any::<bool>().prop_map(|b| Some(Value::Bool(b))), 1 => json().prop_map(Some)].boxed()
}

fn with_flags(mut frame: Value, audio: Option<Value>, video: Option<Value>) -> Value {
    if let Some(obj) = frame.as_object_mut() {
        if let Some(a) = audio {
            obj.insert("audioEnabled".into(), a);
        }
        if let Some(v) = video {
            obj.insert("videoEnabled".into(), v);
        }
    }
    frame
}

fn voice_frames() -> BoxedStrategy<Value> {
    let user = select(vec!["p0", "p1", "p2", "ghost", "", "me"]);
    prop_oneof![
        1 => select(vec!["ping", "leave"]).prop_map(|t| json!({"type": t})),
        2 => (select(vec!["join", "update"]), voice_flag(), voice_flag()).prop_map(|(t, a, v)| with_flags(json!({"type": t}), a, v)),
        3 => (user, json()).prop_map(|(to, data)| json!({"type": "signal", "to": to, "data": data})),
        1 => json().prop_map(|enabled| json!({"type": "recording", "enabled": enabled})),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(crate::config())]

    /// Any frame from any socket state: steps 1–4 exactly, else Ok, 1007 or the documented
    /// in-band codes; a refusal changes neither the channel nor the socket's `joined`.
    #[test]
    fn voice_frames_never_panic_and_answer_documented_codes(
        text in frame_text(voice_frames()),
        participants in 0usize..=3,
        max in 1usize..=3,
        joined in any::<bool>(),
        user in select(vec!["p0", "p1", "p3"]),
        others in 0usize..=2,
        now in 0i64..1_000_000,
    ) {
        use edge_realtime_core::voice::{Participant, Sender, Voice, VoiceConn, CLIENT_TYPES};
        let list: Vec<Participant> = (0..participants)
            .map(|i| Participant { user_id: format!("p{i}"), user_name: format!("P{i}"), joined_at: 1, audio_enabled: true, video_enabled: false })
            .collect();
        let session = (!list.is_empty()).then(|| "s1".to_owned());
        let mut v = Voice::restore("vc".into(), session, false, list, max);
        let mut conn = VoiceConn { joined: joined && v.is_participant(user) };
        let (before, conn_before) = (v.clone(), conn.clone());
        let who = Sender { user_id: user, user_name: "User" };
        let got = v.on_message(who, &mut conn, &text, now, || others, || "s2".to_owned());
        match (pre_decode(&text, &CLIENT_TYPES), &got) {
            (Some(code), Err(r)) => prop_assert_eq!(crate::common::close_code(r), Some(code)),
            (Some(code), Ok(e)) => prop_assert!(false, "expected close {}, got {:?}", code, e),
            (None, Err(r)) => check_reject(
                r,
                &[close::INVALID_DATA],
                &["not_a_participant", "signal_too_large", "invalid_target", "unknown_target", "channel_full"],
            )?,
            (None, Ok(_)) => {}
        }
        if got.is_err() {
            prop_assert_eq!(&v, &before, "a refusal changes nothing");
            prop_assert_eq!(&conn, &conn_before, "a refusal leaves the socket as it was");
        }
        prop_assert!(v.participants.len() <= max.max(participants), "never above the max");
        prop_assert_eq!(v.session_id.is_some(), !v.participants.is_empty(), "a session exactly while someone is in");
    }
}
