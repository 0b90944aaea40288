//! VoiceChannel Durable Object (docs/voice.md): one voice call per `channelId`. The kit hosts it
//! ([`crate::kit::object`]) and `core::voice` decides; this file only says where the channel
//! lives in SQLite, which sockets have joined, and which hook feeds which core call. Media is
//! peer to peer: the object coordinates and relays signalling, it never sees audio or video.

use std::collections::BTreeSet;

use serde::Deserialize;

use edge_realtime_core::effects::Effects;
use edge_realtime_core::error::ApiError;
use edge_realtime_core::frame::Reject;
use edge_realtime_core::voice::{self, Participant, Sender, Voice, VoiceConn, VoiceOp};

use crate::kit::object::{Connection, Ctx, Incoming, RealtimeObject, Reply};
use crate::kit::{self, Identity};

crate::kit::object::durable_object!(
    /// One voice channel (`idFromName(channelId)`): participants, session and recording in SQLite.
    VoiceChannel => VoiceRoom
);

/// The channel in memory, rebuilt from SQLite after every wake.
pub struct VoiceRoom {
    voice: Voice,
    /// Session ids.
    ids: kit::UniqueIds,
}

#[derive(Deserialize)]
struct VoiceRow {
    channel_id: String,
    session_id: Option<String>,
    recording: i64,
}

#[derive(Deserialize)]
struct ParticipantRow {
    user_id: String,
    user_name: String,
    joined_at: i64,
    audio: i64,
    video: i64,
}

fn sender<C>(conn: &Connection<C>) -> Sender<'_> {
    Sender { user_id: &conn.user_id, user_name: &conn.user_name }
}

/// How many of `user`'s open sockets other than the event's own have joined.
fn others_joined(ctx: &Ctx<'_>, user: &str) -> usize {
    let tag = format!("u:{user}");
    ctx.open_connections::<VoiceConn>(Some(&tag)).iter().filter(|c| c.user_id == user && c.conn.joined).count()
}

impl RealtimeObject for VoiceRoom {
    const CLASS: &'static str = "VoiceChannel";
    const SCHEMA: &'static [&'static str] = voice::SCHEMA;
    type Op = VoiceOp;
    /// Whether this socket has joined (a user is a participant while one of theirs has).
    type Conn = VoiceConn;

    fn restore(ctx: &Ctx<'_>) -> Self {
        let max = voice::max_participants(ctx.var("VOICE_MAX_PARTICIPANTS").as_deref());
        let ids = kit::UniqueIds::default();
        let Ok(Some(row)) = ctx.first::<VoiceRow>("SELECT channel_id, session_id, recording FROM voice WHERE id = 1", vec![])
        else {
            return Self { voice: Voice::new(max), ids };
        };
        let rows: Vec<ParticipantRow> = ctx
            .rows("SELECT user_id, user_name, joined_at, audio, video FROM participants ORDER BY joined_at, rowid", vec![])
            .unwrap_or_default();
        let participants = rows
            .into_iter()
            .map(|r| Participant {
                user_id: r.user_id,
                user_name: r.user_name,
                joined_at: r.joined_at,
                audio_enabled: r.audio != 0,
                video_enabled: r.video != 0,
            })
            .collect();
        Self { voice: Voice::restore(row.channel_id, row.session_id, row.recording != 0, participants, max), ids }
    }

    fn name(&self) -> Option<String> {
        Some(self.voice.channel_id.clone()).filter(|n| !n.is_empty())
    }

    /// Participants without an open joined socket (a crash or a deploy dropped their sockets
    /// without close events) leave; an empty session ends.
    fn on_wake(&mut self, ctx: &Ctx<'_>) -> Effects {
        let joined: BTreeSet<String> =
            ctx.open_connections::<VoiceConn>(None).into_iter().filter(|c| c.conn.joined).map(|c| c.user_id).collect();
        let effects = self.voice.reconcile(&joined);
        if !effects.sends.is_empty() {
            ctx.log_debug(&format!("reconcile VoiceChannel: {} frame(s)", effects.sends.len()));
        }
        effects
    }

    /// `GET /api/voice/:channelId`
    fn on_request(&mut self, _ctx: &Ctx<'_>, op: VoiceOp, req: &Incoming) -> Result<Reply, ApiError> {
        match op {
            VoiceOp::State => {
                let named = self.voice.named(req.object_name()?);
                Ok(Reply::json(200, &self.voice.state()).with(named))
            }
            VoiceOp::Socket => Err(ApiError::not_found("the voice socket is a WebSocket")),
        }
    }

    /// `GET /ws/voice/:channelId`: `voice_state`; the socket has not joined yet.
    fn on_connect(&mut self, _ctx: &Ctx<'_>, _who: &Identity, req: &Incoming) -> Result<(VoiceConn, Effects), ApiError> {
        let named = self.voice.named(req.object_name()?);
        Ok((VoiceConn::default(), named.to_self(self.voice.state_frame())))
    }

    fn on_message(&mut self, ctx: &Ctx<'_>, conn: &mut Connection<VoiceConn>, text: &str) -> Result<Effects, Reject> {
        let who = Sender { user_id: &conn.user_id, user_name: &conn.user_name };
        let ids = &self.ids;
        self.voice.on_message(who, &mut conn.conn, text, ctx.now, || others_joined(ctx, who.user_id), || ids.next_id())
    }

    /// The participant leaves with their last joined socket.
    fn on_gone(&mut self, ctx: &Ctx<'_>, conn: &Connection<VoiceConn>, _remaining: usize) -> Effects {
        if !conn.conn.joined {
            return Effects::none();
        }
        self.voice.on_gone(sender(conn), &conn.conn, others_joined(ctx, &conn.user_id))
    }
}
