//! GameServer Durable Object (docs/game.md): a turn-based game room, one per `gameId`. The kit
//! hosts it ([`crate::kit::object`]) and `core::game` decides; this file only says where the
//! game lives in SQLite and which hook feeds which core call.

use serde::Deserialize;

use edge_realtime_core::effects::Effects;
use edge_realtime_core::error::ApiError;
use edge_realtime_core::frame::Reject;
use edge_realtime_core::game::{self, Game, GameOp, MoveRecord, Player};
use edge_realtime_core::query::parse_seq;

use crate::kit::object::{Connection, Ctx, Incoming, RealtimeObject, Reply};
use crate::kit::Identity;

crate::kit::object::durable_object!(
    /// One game (`idFromName(gameId)`): players, turn and moves in SQLite.
    GameServer => GameRoom
);

/// The game in memory, rebuilt from SQLite after every wake.
pub struct GameRoom {
    game: Game,
}

#[derive(Deserialize)]
struct GameRow {
    game_id: String,
    seq: i64,
    turn: Option<String>,
}

#[derive(Deserialize)]
struct SeenRow {
    user_id: String,
    client_id: String,
    seq: i64,
}

#[derive(Deserialize)]
struct MoveRow {
    seq: i64,
    user_id: String,
    #[serde(rename = "move")]
    mv: String,
    turn: Option<String>,
}

impl RealtimeObject for GameRoom {
    const CLASS: &'static str = "GameServer";
    const SCHEMA: &'static [&'static str] = game::SCHEMA;
    type Op = GameOp;
    /// Nothing per socket beyond the kit's identity: a player is a user, not a socket.
    type Conn = ();

    fn restore(ctx: &Ctx<'_>) -> Self {
        let Ok(Some(row)) = ctx.first::<GameRow>("SELECT game_id, seq, turn FROM game WHERE id = 1", vec![]) else {
            return Self { game: Game::default() };
        };
        let players: Vec<Player> = ctx
            .rows("SELECT user_id AS userId, user_name AS userName, score FROM players ORDER BY position", vec![])
            .unwrap_or_default();
        let seen: Vec<SeenRow> =
            ctx.rows("SELECT user_id, client_id, seq FROM moves WHERE client_id IS NOT NULL", vec![]).unwrap_or_default();
        let seen = seen.into_iter().map(|r| (r.user_id, r.client_id, r.seq));
        Self { game: Game::restore(row.game_id, players, row.turn, row.seq, seen) }
    }

    fn name(&self) -> Option<String> {
        Some(self.game.game_id.clone()).filter(|n| !n.is_empty())
    }

    /// `GET /api/game/:gameId/state`
    fn on_request(&mut self, _ctx: &Ctx<'_>, op: GameOp, req: &Incoming) -> Result<Reply, ApiError> {
        match op {
            GameOp::State => {
                let named = self.game.named(req.object_name()?);
                Ok(Reply::json(200, &self.game.state()).with(named))
            }
            GameOp::Socket => Err(ApiError::not_found("the game socket is a WebSocket")),
        }
    }

    /// `GET /api/game/:gameId[?since=]`: `game_state`, then the missed moves.
    fn on_connect(&mut self, ctx: &Ctx<'_>, _who: &Identity, req: &Incoming) -> Result<((), Effects), ApiError> {
        let since = parse_seq("since", req.query("since"))?;
        let name = req.object_name()?;
        let history = match since {
            Some(after) => moves_after(ctx, after)?,
            None => Vec::new(),
        };
        let named = self.game.named(name);
        Ok(((), named.and(self.game.on_connect(since, |_| history))))
    }

    fn on_message(&mut self, ctx: &Ctx<'_>, conn: &mut Connection<()>, text: &str) -> Result<Effects, Reject> {
        self.game.on_message(&conn.user_id, &conn.user_name, text, ctx.now)
    }
}

fn moves_after(ctx: &Ctx<'_>, after: i64) -> Result<Vec<MoveRecord>, ApiError> {
    let rows: Vec<MoveRow> =
        ctx.rows("SELECT seq, user_id, move, turn FROM moves WHERE seq > ? ORDER BY seq", vec![after.into()])?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let mv = serde_json::from_str(&r.mv).ok()?;
            Some(MoveRecord { seq: r.seq, user_id: r.user_id, mv, turn: r.turn })
        })
        .collect())
}
