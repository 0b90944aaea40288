//! VoiceChannel core (docs/voice.md, docs/protocol.md §6.7): who is in a voice call, the call's
//! session and recording state, and the relay of WebRTC signalling between participants. Media
//! never passes through the object (peer to peer). Pure: every handler mutates the in-memory
//! [`Voice`] and returns the [`Effects`] the kit executes — store first.
//!
//! Participants are users, membership is per socket: a socket `join`s (its attachment,
//! [`VoiceConn`], says so and survives hibernation); a user is a participant while at least one
//! of their sockets has joined, so a user's several joined sockets are one participant. A
//! socket's `leave`, close, error or heartbeat sweep un-joins it; the participant leaves with
//! their last joined socket. The object tells the core how many *other* open joined sockets the
//! user has (`others_joined`), so the core holds no socket list.
//!
//! Rules, in the order they are checked:
//! - `join`: a user who already is a participant: the socket joins too, answered `voice_state`
//!   (to that socket), nothing else changes. At `max` participants: in-band `channel_full`,
//!   nothing changes. Else the first participant starts a session (new `sessionId`), and
//!   everyone gets `participant_joined`.
//! - `leave`: a socket that has not joined: `not_a_participant`. Else it un-joins; with no
//!   other joined socket the user leaves (`participant_left`), else the socket gets `voice_state`.
//! - `update`, `signal`, `recording`: the user must be a participant (`not_a_participant`).
//!   `signal`: `data` at most 16 KiB serialized (`signal_too_large`), not to oneself
//!   (`invalid_target`), only to a participant (`unknown_target`); relayed to the target's
//!   sockets only.
//! - The last participant leaving ends the session: `session_ended`, recording off.
//! - On every wake, [`Voice::reconcile`] removes participants without an open joined socket
//!   (a crash or a deploy dropped them without close events).

use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use crate::effects::{Effects, To};
use crate::frame::{self, Reject};
use crate::time::Millis;

/// `VOICE_MAX_PARTICIPANTS` when the var is absent or not a positive number.
pub const DEFAULT_MAX_PARTICIPANTS: usize = 100;
/// Largest relayed `signal` `data`, serialized.
pub const MAX_SIGNAL_BYTES: usize = 16 * 1024;
/// The client frame types.
pub const CLIENT_TYPES: [&str; 6] = ["join", "leave", "update", "signal", "recording", "ping"];

crate::ops! {
    /// VoiceChannel's operations (what the route table forwards to).
    pub enum VoiceOp {
        /// `GET /ws/voice/:channelId` — the channel's WebSocket.
        Socket = "ws" (websocket),
        /// `GET /api/voice/:channelId` — the state JSON.
        State = "state",
    }
}

/// The tables (the kit adds its own `_schedule`).
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS voice (id INTEGER PRIMARY KEY CHECK (id = 1), channel_id TEXT NOT NULL, \
     session_id TEXT, recording INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS participants (user_id TEXT PRIMARY KEY, user_name TEXT NOT NULL, \
     joined_at INTEGER NOT NULL, audio INTEGER NOT NULL, video INTEGER NOT NULL)",
];

/// `VOICE_MAX_PARTICIPANTS` as read from the var (absent, 0 or not a number → 100).
pub fn max_participants(var: Option<&str>) -> usize {
    var.and_then(|v| v.trim().parse::<usize>().ok()).filter(|n| *n > 0).unwrap_or(DEFAULT_MAX_PARTICIPANTS)
}

/// One participant, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    pub user_id: String,
    pub user_name: String,
    /// When the user became a participant (ms since the epoch).
    pub joined_at: Millis,
    pub audio_enabled: bool,
    pub video_enabled: bool,
}

/// The object's part of a socket's attachment: whether this socket has joined.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoiceConn {
    #[serde(default)]
    pub joined: bool,
}

/// The channel in memory: rebuilt from storage by [`Voice::restore`] after every wake.
#[derive(Debug, Clone, PartialEq)]
pub struct Voice {
    /// Empty until the first request names the channel.
    pub channel_id: String,
    pub session_id: Option<String>,
    /// In join order.
    pub participants: Vec<Participant>,
    pub recording: bool,
    pub max: usize,
}

/// Who sent a frame (or whose socket is gone).
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    pub user_id: &'a str,
    pub user_name: &'a str,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Join {
        #[serde(default, rename = "audioEnabled", deserialize_with = "present")]
        audio: Option<bool>,
        #[serde(default, rename = "videoEnabled", deserialize_with = "present")]
        video: Option<bool>,
    },
    Leave,
    Update {
        #[serde(default, rename = "audioEnabled", deserialize_with = "present")]
        audio: Option<bool>,
        #[serde(default, rename = "videoEnabled", deserialize_with = "present")]
        video: Option<bool>,
    },
    Signal {
        to: String,
        data: Value,
    },
    Recording {
        enabled: bool,
    },
    Ping,
}

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn not_a_participant() -> Reject {
    Reject::in_band("not_a_participant", "join the voice channel first")
}

impl Voice {
    /// An unnamed, empty channel.
    pub fn new(max: usize) -> Self {
        Self { channel_id: String::new(), session_id: None, participants: Vec::new(), recording: false, max }
    }

    /// Rebuild from stored rows. Inconsistent rows (a session without participants) are left
    /// for [`Voice::reconcile`], which ends that session properly.
    pub fn restore(channel_id: String, session_id: Option<String>, recording: bool, participants: Vec<Participant>, max: usize) -> Self {
        Self { channel_id, session_id, participants, recording, max }
    }

    /// Name a fresh channel (the first request carries its name): the row to store.
    pub fn named(&mut self, channel_id: &str) -> Effects {
        if !self.channel_id.is_empty() {
            return Effects::none();
        }
        self.channel_id = channel_id.to_owned();
        Effects::none().store("INSERT OR IGNORE INTO voice (id, channel_id) VALUES (1, ?)", vec![channel_id.into()])
    }

    pub fn is_participant(&self, user_id: &str) -> bool {
        self.participants.iter().any(|p| p.user_id == user_id)
    }

    /// `{"channelId","sessionId","participants","recording"}` (`GET /api/voice/:channelId`).
    pub fn state(&self) -> Value {
        json!({
            "channelId": self.channel_id,
            "sessionId": self.session_id,
            "participants": self.participants,
            "recording": self.recording,
        })
    }

    /// `{"type":"voice_state",...}`: on connect and on a repeated join.
    pub fn state_frame(&self) -> String {
        let mut state = self.state();
        if let Some(obj) = state.as_object_mut() {
            obj.insert("type".into(), json!("voice_state"));
        }
        state.to_string()
    }

    /// A text frame from `who`'s socket `conn`. `others_joined` counts the user's other open
    /// joined sockets (asked only for `leave`); `new_session_id` is asked only when a session starts.
    pub fn on_message(
        &mut self,
        who: Sender<'_>,
        conn: &mut VoiceConn,
        text: &str,
        now: Millis,
        others_joined: impl FnOnce() -> usize,
        new_session_id: impl FnOnce() -> String,
    ) -> Result<Effects, Reject> {
        match frame::decode::<ClientFrame>(text, &CLIENT_TYPES)? {
            ClientFrame::Join { audio, video } => {
                self.join(who, conn, audio.unwrap_or(true), video.unwrap_or(false), now, new_session_id)
            }
            ClientFrame::Leave => {
                if !conn.joined {
                    return Err(not_a_participant());
                }
                conn.joined = false;
                if others_joined() > 0 {
                    return Ok(Effects::none().to_self(self.state_frame()));
                }
                Ok(self.remove(who.user_id))
            }
            ClientFrame::Update { audio, video } => self.update(who.user_id, audio, video),
            ClientFrame::Signal { to, data } => self.signal(who.user_id, &to, data),
            ClientFrame::Recording { enabled } => self.set_recording(who.user_id, enabled),
            ClientFrame::Ping => Ok(Effects::none().to_self(r#"{"type":"pong"}"#)),
        }
    }

    fn join(
        &mut self,
        who: Sender<'_>,
        conn: &mut VoiceConn,
        audio: bool,
        video: bool,
        now: Millis,
        new_session_id: impl FnOnce() -> String,
    ) -> Result<Effects, Reject> {
        if self.is_participant(who.user_id) {
            conn.joined = true;
            return Ok(Effects::none().to_self(self.state_frame()));
        }
        if self.participants.len() >= self.max {
            let message = format!("this voice channel already has {} participants", self.max);
            return Err(Reject::in_band("channel_full", message));
        }
        conn.joined = true;
        let mut effects = Effects::none();
        if self.session_id.is_none() {
            let id = new_session_id();
            self.session_id = Some(id.clone());
            self.recording = false;
            effects = effects.store("UPDATE voice SET session_id = ?, recording = 0 WHERE id = 1", vec![id.into()]);
        }
        let participant = Participant {
            user_id: who.user_id.to_owned(),
            user_name: who.user_name.to_owned(),
            joined_at: now,
            audio_enabled: audio,
            video_enabled: video,
        };
        self.participants.push(participant.clone());
        let frame = json!({
            "type": "participant_joined",
            "participant": participant,
            "participants": self.participants,
            "sessionId": self.session_id,
        });
        Ok(effects
            .store(
                "INSERT OR REPLACE INTO participants (user_id, user_name, joined_at, audio, video) VALUES (?, ?, ?, ?, ?)",
                vec![who.user_id.into(), who.user_name.into(), now.into(), i64::from(audio).into(), i64::from(video).into()],
            )
            .to_all(frame.to_string()))
    }

    fn update(&mut self, user_id: &str, audio: Option<bool>, video: Option<bool>) -> Result<Effects, Reject> {
        let participant = self.participants.iter_mut().find(|p| p.user_id == user_id).ok_or_else(not_a_participant)?;
        if let Some(a) = audio {
            participant.audio_enabled = a;
        }
        if let Some(v) = video {
            participant.video_enabled = v;
        }
        let (a, v) = (participant.audio_enabled, participant.video_enabled);
        let frame = json!({"type": "participant_updated", "participant": participant});
        Ok(Effects::none()
            .store(
                "UPDATE participants SET audio = ?, video = ? WHERE user_id = ?",
                vec![i64::from(a).into(), i64::from(v).into(), user_id.into()],
            )
            .to_all(frame.to_string()))
    }

    fn signal(&self, from: &str, to: &str, data: Value) -> Result<Effects, Reject> {
        if !self.is_participant(from) {
            return Err(not_a_participant());
        }
        if data.to_string().len() > MAX_SIGNAL_BYTES {
            return Err(Reject::in_band("signal_too_large", "signal data must be at most 16 KiB serialized"));
        }
        if to == from {
            return Err(Reject::in_band("invalid_target", "a signal cannot be sent to yourself"));
        }
        if !self.is_participant(to) {
            return Err(Reject::in_band("unknown_target", "the signal's target is not a participant"));
        }
        let frame = json!({"type": "signal", "from": from, "data": data});
        Ok(Effects::none().send(To::Tag(format!("u:{to}")), frame.to_string()))
    }

    fn set_recording(&mut self, user_id: &str, enabled: bool) -> Result<Effects, Reject> {
        if !self.is_participant(user_id) {
            return Err(not_a_participant());
        }
        self.recording = enabled;
        let frame = json!({"type": "recording_changed", "recording": enabled, "by": user_id});
        Ok(Effects::none()
            .store("UPDATE voice SET recording = ? WHERE id = 1", vec![i64::from(enabled).into()])
            .to_all(frame.to_string()))
    }

    /// A socket is gone (closed, errored, swept, revoked). `others_joined`: the user's other
    /// open joined sockets.
    pub fn on_gone(&mut self, who: Sender<'_>, conn: &VoiceConn, others_joined: usize) -> Effects {
        if !conn.joined || others_joined > 0 {
            return Effects::none();
        }
        self.remove(who.user_id)
    }

    /// Every wake: participants without an open joined socket (`joined_live`) are removed, and
    /// a session without participants ends.
    pub fn reconcile(&mut self, joined_live: &BTreeSet<String>) -> Effects {
        let ghosts: Vec<String> =
            self.participants.iter().filter(|p| !joined_live.contains(&p.user_id)).map(|p| p.user_id.clone()).collect();
        let mut effects = ghosts.iter().fold(Effects::none(), |all, user| all.and(self.remove(user)));
        if self.participants.is_empty() && (self.session_id.is_some() || self.recording) {
            effects = effects.and(self.end_session());
        }
        effects
    }

    /// Remove a participant (nothing if they are not one); the last one ends the session.
    fn remove(&mut self, user_id: &str) -> Effects {
        let before = self.participants.len();
        self.participants.retain(|p| p.user_id != user_id);
        if self.participants.len() == before {
            return Effects::none();
        }
        let frame = json!({"type": "participant_left", "userId": user_id, "participants": self.participants});
        let effects = Effects::none()
            .store("DELETE FROM participants WHERE user_id = ?", vec![user_id.into()])
            .to_all(frame.to_string());
        if self.participants.is_empty() {
            effects.and(self.end_session())
        } else {
            effects
        }
    }

    fn end_session(&mut self) -> Effects {
        let ended = self.session_id.take();
        self.recording = false;
        Effects::none()
            .store("UPDATE voice SET session_id = NULL, recording = 0 WHERE id = 1", vec![])
            .to_all(json!({"type": "session_ended", "sessionId": ended}).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_700_000_000_000;

    fn voice(max: usize) -> Voice {
        let mut v = Voice::new(max);
        v.named("room");
        v
    }
    fn who(user: &str) -> Sender<'_> {
        Sender { user_id: user, user_name: user }
    }
    fn send(v: &mut Voice, user: &str, conn: &mut VoiceConn, frame: Value, others: usize) -> Result<Effects, Reject> {
        v.on_message(who(user), conn, &frame.to_string(), T0, || others, || format!("s-{user}"))
    }
    fn frames(e: &Effects, to: &To) -> Vec<Value> {
        e.frames_to(to).iter().map(|f| serde_json::from_str(f).unwrap()).collect()
    }
    fn code(r: Result<Effects, Reject>) -> String {
        match r {
            Err(Reject::InBand { code, .. }) => code.to_owned(),
            Err(Reject::Close { code, .. }) => code.to_string(),
            Ok(e) => panic!("expected a refusal, got {e:?}"),
        }
    }
    fn joined(v: &mut Voice, user: &str) -> VoiceConn {
        let mut c = VoiceConn::default();
        send(v, user, &mut c, json!({"type":"join"}), 0).unwrap();
        c
    }

    #[test]
    fn first_join_starts_a_session_with_defaults() {
        let mut v = voice(100);
        let mut c = VoiceConn::default();
        let e = send(&mut v, "a", &mut c, json!({"type":"join"}), 0).unwrap();
        assert!(c.joined);
        let p = json!({"userId":"a","userName":"a","joinedAt":T0,"audioEnabled":true,"videoEnabled":false});
        assert_eq!(
            frames(&e, &To::All),
            vec![json!({"type":"participant_joined","participant":p,"participants":[p],"sessionId":"s-a"})]
        );
        assert_eq!(v.state(), json!({"channelId":"room","sessionId":"s-a","participants":[p],"recording":false}));
        assert_eq!(e.store.len(), 2);
        // the second participant joins the same session
        let mut c2 = VoiceConn::default();
        let e = send(&mut v, "b", &mut c2, json!({"type":"join","audioEnabled":false,"videoEnabled":true}), 0).unwrap();
        let f = &frames(&e, &To::All)[0];
        assert_eq!(f["sessionId"], "s-a");
        assert_eq!(f["participant"]["audioEnabled"], false);
        assert_eq!(f["participant"]["videoEnabled"], true);
        assert_eq!(e.store.len(), 1);
    }

    #[test]
    fn repeated_join_answers_state_to_that_socket_only() {
        let mut v = voice(100);
        joined(&mut v, "a");
        let mut second = VoiceConn::default();
        let e = send(&mut v, "a", &mut second, json!({"type":"join"}), 1).unwrap();
        assert!(second.joined);
        assert!(e.store.is_empty() && frames(&e, &To::All).is_empty());
        assert_eq!(frames(&e, &To::This)[0]["type"], "voice_state");
        assert_eq!(v.participants.len(), 1);
    }

    #[test]
    fn channel_full_changes_nothing() {
        let mut v = voice(2);
        joined(&mut v, "a");
        joined(&mut v, "b");
        let before = v.clone();
        let mut c = VoiceConn::default();
        assert_eq!(code(send(&mut v, "c", &mut c, json!({"type":"join"}), 0)), "channel_full");
        assert!(!c.joined);
        assert_eq!(v, before);
    }

    #[test]
    fn last_leave_ends_the_session_and_recording() {
        let mut v = voice(100);
        let mut ca = joined(&mut v, "a");
        let mut cb = joined(&mut v, "b");
        send(&mut v, "a", &mut ca, json!({"type":"recording","enabled":true}), 0).unwrap();
        assert!(v.recording);
        let e = send(&mut v, "a", &mut ca, json!({"type":"leave"}), 0).unwrap();
        assert_eq!(frames(&e, &To::All), vec![json!({"type":"participant_left","userId":"a","participants":v.participants})]);
        assert!(v.recording && v.session_id.is_some());
        let e = send(&mut v, "b", &mut cb, json!({"type":"leave"}), 0).unwrap();
        assert_eq!(
            frames(&e, &To::All),
            vec![
                json!({"type":"participant_left","userId":"b","participants":[]}),
                json!({"type":"session_ended","sessionId":"s-a"})
            ]
        );
        assert_eq!(v.state(), json!({"channelId":"room","sessionId":null,"participants":[],"recording":false}));
        // a new join starts a new session
        joined(&mut v, "c");
        assert_eq!(v.session_id.as_deref(), Some("s-c"));
    }

    #[test]
    fn a_user_leaves_with_their_last_joined_socket() {
        let mut v = voice(100);
        let mut c1 = joined(&mut v, "a");
        let mut c2 = VoiceConn::default();
        send(&mut v, "a", &mut c2, json!({"type":"join"}), 1).unwrap();
        // leave from one of two joined sockets: still a participant
        let e = send(&mut v, "a", &mut c1, json!({"type":"leave"}), 1).unwrap();
        assert_eq!(frames(&e, &To::This)[0]["type"], "voice_state");
        assert!(v.is_participant("a") && !c1.joined);
        assert_eq!(code(send(&mut v, "a", &mut c1, json!({"type":"leave"}), 1)), "not_a_participant");
        // the other socket closes: gone
        let e = v.on_gone(who("a"), &c2, 0);
        assert!(!v.is_participant("a"));
        assert_eq!(frames(&e, &To::All).len(), 2);
        // a socket that never joined changes nothing when it goes
        assert_eq!(v.on_gone(who("a"), &VoiceConn::default(), 0), Effects::none());
    }

    #[test]
    fn only_participants_update_signal_record() {
        let mut v = voice(100);
        let mut ca = joined(&mut v, "a");
        let mut cx = VoiceConn::default();
        for f in [
            json!({"type":"update","audioEnabled":false}),
            json!({"type":"signal","to":"a","data":{"sdp":"x"}}),
            json!({"type":"recording","enabled":true}),
        ] {
            assert_eq!(code(send(&mut v, "x", &mut cx, f, 0)), "not_a_participant");
        }
        let e = send(&mut v, "a", &mut ca, json!({"type":"update","videoEnabled":true}), 0).unwrap();
        assert_eq!(frames(&e, &To::All)[0]["participant"]["videoEnabled"], true);
        assert_eq!(frames(&e, &To::All)[0]["participant"]["audioEnabled"], true);
        let e = send(&mut v, "a", &mut ca, json!({"type":"recording","enabled":true}), 0).unwrap();
        assert_eq!(frames(&e, &To::All), vec![json!({"type":"recording_changed","recording":true,"by":"a"})]);
    }

    #[test]
    fn signals_go_to_the_target_only_with_limits() {
        let mut v = voice(100);
        let mut ca = joined(&mut v, "a");
        joined(&mut v, "b");
        let e = send(&mut v, "a", &mut ca, json!({"type":"signal","to":"b","data":{"sdp":"offer"}}), 0).unwrap();
        assert_eq!(e.sends.len(), 1);
        assert_eq!(frames(&e, &To::Tag("u:b".into())), vec![json!({"type":"signal","from":"a","data":{"sdp":"offer"}})]);
        assert!(e.store.is_empty());
        assert_eq!(code(send(&mut v, "a", &mut ca, json!({"type":"signal","to":"a","data":1}), 0)), "invalid_target");
        assert_eq!(code(send(&mut v, "a", &mut ca, json!({"type":"signal","to":"zed","data":1}), 0)), "unknown_target");
        // 16 KiB serialized is the limit: the quotes count
        let fits = "x".repeat(MAX_SIGNAL_BYTES - 2);
        assert!(send(&mut v, "a", &mut ca, json!({"type":"signal","to":"b","data":fits}), 0).is_ok());
        let big = "x".repeat(MAX_SIGNAL_BYTES - 1);
        assert_eq!(code(send(&mut v, "a", &mut ca, json!({"type":"signal","to":"b","data":big}), 0)), "signal_too_large");
    }

    #[test]
    fn bad_frames_close() {
        let mut v = voice(100);
        let mut c = VoiceConn::default();
        assert_eq!(code(send(&mut v, "a", &mut c, json!({"type":"join","audioEnabled":null}), 0)), "1007");
        assert_eq!(code(send(&mut v, "a", &mut c, json!({"type":"join","videoEnabled":"yes"}), 0)), "1007");
        assert_eq!(code(send(&mut v, "a", &mut c, json!({"type":"signal","to":"b"}), 0)), "1007");
        assert_eq!(code(send(&mut v, "a", &mut c, json!({"type":"recording"}), 0)), "1007");
        assert_eq!(code(send(&mut v, "a", &mut c, json!({"type":"shout"}), 0)), "1008");
        assert_eq!(v.participants.len(), 0);
        let e = send(&mut v, "a", &mut c, json!({"type":"ping"}), 0).unwrap();
        assert_eq!(frames(&e, &To::This), vec![json!({"type":"pong"})]);
    }

    #[test]
    fn reconcile_removes_ghosts_and_ends_an_empty_session() {
        let mut v = voice(100);
        joined(&mut v, "a");
        joined(&mut v, "b");
        v.recording = true;
        let live: BTreeSet<String> = ["b".to_string()].into_iter().collect();
        let e = v.reconcile(&live);
        assert_eq!(frames(&e, &To::All).len(), 1);
        assert!(v.is_participant("b") && v.recording);
        assert_eq!(v.reconcile(&live), Effects::none());
        let e = v.reconcile(&BTreeSet::new());
        assert_eq!(frames(&e, &To::All).iter().map(|f| f["type"].clone()).collect::<Vec<_>>(), vec!["participant_left", "session_ended"]);
        assert_eq!(v.session_id, None);
        assert!(!v.recording);
        // a stored session with no participants left (inconsistent rows) ends too
        let mut odd = Voice::restore("room".into(), Some("s".into()), true, vec![], 100);
        assert_eq!(frames(&odd.reconcile(&BTreeSet::new()), &To::All), vec![json!({"type":"session_ended","sessionId":"s"})]);
        assert_eq!(odd.reconcile(&BTreeSet::new()), Effects::none());
    }

    #[test]
    fn max_from_var() {
        assert_eq!(max_participants(None), 100);
        assert_eq!(max_participants(Some("3")), 3);
        assert_eq!(max_participants(Some("0")), 100);
        assert_eq!(max_participants(Some("x")), 100);
    }

    use crate::TestRng as Rng;

    /// Random join / leave / close / reconcile sequences over five users with two sockets each:
    /// participants are exactly the users with ≥ 1 joined socket, the session id is set iff
    /// there are participants, never above the max, and a refusal changes nothing.
    #[test]
    fn property_participants_are_users_with_a_joined_socket() {
        let users = ["a", "b", "c", "d", "e"];
        let mut sessions = 0;
        for seed in 1..300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let max = 1 + rng.next(4);
            let mut v = voice(max);
            // (user index, socket) → Some(conn) while open
            let mut sockets: Vec<Option<VoiceConn>> = vec![None; users.len() * 2];
            for _ in 0..300 {
                let slot = rng.next(sockets.len());
                let user = users[slot / 2];
                let others = |sockets: &[Option<VoiceConn>]| {
                    (0..2).map(|k| slot / 2 * 2 + k).filter(|&i| i != slot).filter(|&i| sockets[i].as_ref().is_some_and(|c| c.joined)).count()
                };
                let before = v.clone();
                let n_others = others(&sockets);
                match (rng.next(5), sockets[slot].take()) {
                    (_, None) => sockets[slot] = Some(VoiceConn::default()),
                    (0, Some(conn)) => {
                        v.on_gone(who(user), &conn, n_others);
                    }
                    (1, Some(mut conn)) => {
                        let r = send(&mut v, user, &mut conn, json!({"type":"leave"}), n_others);
                        if r.is_err() {
                            assert_eq!(v, before);
                        }
                        sockets[slot] = Some(conn);
                    }
                    (3, Some(mut conn)) => {
                        let r = send(&mut v, user, &mut conn, json!({"type":"recording","enabled":true}), n_others);
                        if r.is_err() {
                            assert_eq!(v, before);
                        }
                        sockets[slot] = Some(conn);
                    }
                    (2, Some(_)) if rng.next(10) == 0 => {
                        // a crash: every socket dropped, then the wake's reconcile
                        sockets.iter_mut().for_each(|s| *s = None);
                        v.reconcile(&BTreeSet::new());
                    }
                    (_, Some(mut conn)) => {
                        let had_session = v.session_id.is_some();
                        let r = send(&mut v, user, &mut conn, json!({"type":"join"}), n_others);
                        match r {
                            Err(_) => assert_eq!(v, before, "a refusal changes nothing"),
                            Ok(_) if !had_session && v.session_id.is_some() => sessions += 1,
                            Ok(_) => {}
                        }
                        sockets[slot] = Some(conn);
                    }
                }
                let expected: BTreeSet<&str> = sockets
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.as_ref().is_some_and(|c| c.joined))
                    .map(|(i, _)| users[i / 2])
                    .collect();
                let actual: BTreeSet<&str> = v.participants.iter().map(|p| p.user_id.as_str()).collect();
                assert_eq!(actual, expected, "participants are the users with a joined socket");
                assert_eq!(actual.len(), v.participants.len(), "one participant per user");
                assert_eq!(v.session_id.is_some(), !v.participants.is_empty(), "a session iff participants");
                assert!(v.participants.len() <= max);
                if v.session_id.is_none() {
                    assert!(!v.recording, "no recording without a session");
                }
            }
        }
        assert!(sessions > 300, "the sequences start sessions ({sessions})");
    }
}
