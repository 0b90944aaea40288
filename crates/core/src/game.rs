//! GameServer core (docs/game.md): a turn-based game room of up to four players, one object per
//! game. Pure: every handler takes `now`, mutates the in-memory [`Game`] and returns the
//! [`Effects`] (rows to store, frames to send, calls to make) that the kit executes — store
//! first, so nothing is ever broadcast that is not on disk.
//!
//! Rules, in the order they are checked:
//! - `join`: a player joining again is answered `game_state` (to that socket) and nothing
//!   changes; a fifth player gets in-band `game_full`. Else the player is appended (join order),
//!   everyone gets `player_joined`, and the user's UserSession records the game.
//! - `leave`: a non-player gets `not_a_player`. Else the player is removed, the turn passes to
//!   the next in join order if it was theirs, everyone gets `player_left`, and the UserSession
//!   forgets the game. Closing a socket is *not* leaving: a game survives reconnects.
//! - `move`: a repeated client `id` (per user) is acked with its original `seq` and not applied
//!   again — checked first, so a retry after the turn moved on is still recognised. Then
//!   `not_a_player`, `move_too_large` (> 1 KiB serialized), `not_your_turn` (also while the
//!   game is `waiting`: there is no turn before two players). Else `seq` + 1, the mover's score
//!   + 1, the turn passes, everyone gets `moved` and a move with an id is acked to the sender.
//!
//! `seq` counts moves only (it is the `?since=` replay cursor); joins and leaves do not consume
//! one. Moves are kept for the life of the game (nothing is pruned), so a replay is complete
//! unless `since` is ahead of the game (then `resync_required`).

use std::collections::HashMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use crate::effects::Effects;
use crate::frame::{self, Reject};
use crate::replay::{self, Replay};
use crate::route::DoClass;
use crate::time::Millis;

/// At most four players per game.
pub const MAX_PLAYERS: usize = 4;
/// Largest accepted `move`, serialized.
pub const MAX_MOVE_BYTES: usize = 1024;
/// The client frame types.
pub const CLIENT_TYPES: [&str; 4] = ["join", "leave", "move", "ping"];

crate::ops! {
    /// GameServer's operations (what the route table forwards to).
    pub enum GameOp {
        /// `GET /api/game/:gameId` — the game's WebSocket.
        Socket = "ws" (websocket),
        /// `GET /api/game/:gameId/state` — the `game_state` JSON.
        State = "state",
    }
}

/// The tables (the kit adds its own `_schedule`).
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS game (id INTEGER PRIMARY KEY CHECK (id = 1), game_id TEXT NOT NULL, \
     seq INTEGER NOT NULL DEFAULT 0, turn TEXT)",
    "CREATE TABLE IF NOT EXISTS players (position INTEGER PRIMARY KEY, user_id TEXT NOT NULL UNIQUE, \
     user_name TEXT NOT NULL, score INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS moves (seq INTEGER PRIMARY KEY, user_id TEXT NOT NULL, move TEXT NOT NULL, \
     turn TEXT, client_id TEXT, at INTEGER NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS moves_client ON moves (user_id, client_id) WHERE client_id IS NOT NULL",
];

/// One player, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Player {
    pub user_id: String,
    pub user_name: String,
    /// Moves this player has made (the server does not interpret `move`; a game with real
    /// scoring would compute it here).
    pub score: i64,
}

/// One stored move, as read back for a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct MoveRecord {
    pub seq: i64,
    pub user_id: String,
    pub mv: Value,
    /// Whose turn it was after this move.
    pub turn: Option<String>,
}

/// The game in memory: rebuilt from storage by [`Game::restore`] after every wake.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Game {
    /// Empty until the first request names the game.
    pub game_id: String,
    /// In join order.
    pub players: Vec<Player>,
    pub turn: Option<String>,
    /// The last move's seq (0 before the first).
    pub seq: i64,
    /// (user, client id) → seq of every move sent with an id.
    seen: HashMap<(String, String), i64>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Join,
    Leave,
    Move {
        #[serde(rename = "move")]
        mv: Value,
        /// Absent → none; present must be a string (`null` is a 1007, not "no id").
        #[serde(default, deserialize_with = "present")]
        id: Option<String>,
    },
    Ping,
}

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl Game {
    /// Rebuild from stored rows (`seen`: (user, client id, seq) of moves sent with an id).
    pub fn restore(
        game_id: String,
        players: Vec<Player>,
        turn: Option<String>,
        seq: i64,
        seen: impl IntoIterator<Item = (String, String, i64)>,
    ) -> Self {
        let seen = seen.into_iter().map(|(user, id, seq)| ((user, id), seq)).collect();
        let mut game = Self { game_id, players, turn, seq, seen };
        game.turn = game.turn.take().filter(|t| game.playing() && game.index_of(t).is_some());
        if game.turn.is_none() && game.playing() {
            game.turn = game.players.first().map(|p| p.user_id.clone());
        }
        game
    }

    /// Name a fresh game (the first request carries its name): the row to store.
    pub fn named(&mut self, game_id: &str) -> Effects {
        if !self.game_id.is_empty() {
            return Effects::none();
        }
        self.game_id = game_id.to_owned();
        Effects::none().store("INSERT OR IGNORE INTO game (id, game_id, seq) VALUES (1, ?, 0)", vec![game_id.into()])
    }

    pub fn playing(&self) -> bool {
        self.players.len() >= 2
    }

    fn status(&self) -> &'static str {
        if self.playing() { "playing" } else { "waiting" }
    }

    fn index_of(&self, user_id: &str) -> Option<usize> {
        self.players.iter().position(|p| p.user_id == user_id)
    }

    /// `{"type":"game_state",...}`: on connect, on a repeated join, and from `GET .../state`.
    pub fn state(&self) -> Value {
        json!({
            "type": "game_state",
            "gameId": self.game_id,
            "status": self.status(),
            "players": self.players,
            "turn": self.turn,
            "moves": self.seq,
            "seq": self.seq,
        })
    }

    /// A socket connected with `?since=`: `game_state`, then the missed `moved` events (read
    /// lazily through `history(after)`), or `resync_required`.
    pub fn on_connect(&self, since: Option<i64>, history: impl FnOnce(i64) -> Vec<MoveRecord>) -> Effects {
        let mut effects = Effects::none().to_self(self.state().to_string());
        match replay::plan(since, self.seq, 0) {
            Replay::Nothing => {}
            Replay::Resync { latest_seq } => effects = effects.to_self(replay::resync_frame(latest_seq)),
            Replay::After(after) => {
                for record in history(after) {
                    effects = effects.to_self(moved_frame(&record));
                }
            }
        }
        effects
    }

    /// A text frame from `user_id` (display name `user_name`).
    pub fn on_message(&mut self, user_id: &str, user_name: &str, text: &str, now: Millis) -> Result<Effects, Reject> {
        match frame::decode::<ClientFrame>(text, &CLIENT_TYPES)? {
            ClientFrame::Join => Ok(self.join(user_id, user_name)),
            ClientFrame::Leave => self.leave(user_id),
            ClientFrame::Move { mv, id } => self.play(user_id, mv, id, now),
            ClientFrame::Ping => Ok(Effects::none().to_self(r#"{"type":"pong"}"#)),
        }
    }

    fn join(&mut self, user_id: &str, user_name: &str) -> Effects {
        if self.index_of(user_id).is_some() {
            return Effects::none().to_self(self.state().to_string());
        }
        if self.players.len() >= MAX_PLAYERS {
            return Effects::none().to_self(Reject::error_frame("game_full", "this game already has 4 players"));
        }
        let player = Player { user_id: user_id.to_owned(), user_name: user_name.to_owned(), score: 0 };
        self.players.push(player.clone());
        if self.playing() && self.turn.is_none() {
            self.turn = self.players.first().map(|p| p.user_id.clone());
        }
        let frame = json!({
            "type": "player_joined",
            "player": player,
            "players": self.players,
            "status": self.status(),
            "turn": self.turn,
        });
        Effects::none()
            .store(
                "INSERT INTO players (user_id, user_name, score) VALUES (?, ?, 0)",
                vec![user_id.into(), user_name.into()],
            )
            .store("UPDATE game SET turn = ? WHERE id = 1", vec![self.turn.clone().into()])
            .to_all(frame.to_string())
            .call(DoClass::UserSession.binding(), user_id, membership_op(&self.game_id, "join"))
    }

    fn leave(&mut self, user_id: &str) -> Result<Effects, Reject> {
        let index = self.index_of(user_id).ok_or_else(not_a_player)?;
        self.players.remove(index);
        if !self.playing() {
            self.turn = None;
        } else if self.turn.as_deref() == Some(user_id) {
            // The next in join order now sits at `index` (wrapping to the first).
            self.turn = self.players.get(index).or(self.players.first()).map(|p| p.user_id.clone());
        }
        let frame = json!({
            "type": "player_left",
            "userId": user_id,
            "players": self.players,
            "status": self.status(),
            "turn": self.turn,
        });
        Ok(Effects::none()
            .store("DELETE FROM players WHERE user_id = ?", vec![user_id.into()])
            .store("UPDATE game SET turn = ? WHERE id = 1", vec![self.turn.clone().into()])
            .to_all(frame.to_string())
            .call(DoClass::UserSession.binding(), user_id, membership_op(&self.game_id, "leave")))
    }

    fn play(&mut self, user_id: &str, mv: Value, id: Option<String>, now: Millis) -> Result<Effects, Reject> {
        // Any JSON value is a move, `null` included; a missing `move` never gets here (1007).
        frame::check_client_id(id.as_deref())?;
        if let Some(seq) = id.as_ref().and_then(|id| self.seen.get(&(user_id.to_owned(), id.clone()))) {
            return Ok(Effects::none().to_self(ack_frame(id.as_deref(), *seq)));
        }
        let index = self.index_of(user_id).ok_or_else(not_a_player)?;
        let encoded = mv.to_string();
        if encoded.len() > MAX_MOVE_BYTES {
            return Err(Reject::in_band("move_too_large", "move must be at most 1 KiB serialized"));
        }
        if self.turn.as_deref() != Some(user_id) {
            let message = if self.playing() { "it is not your turn" } else { "the game starts with 2 players" };
            return Err(Reject::in_band("not_your_turn", message));
        }
        self.seq += 1;
        if let Some(player) = self.players.get_mut(index) {
            player.score += 1;
        }
        let next = (index + 1) % self.players.len().max(1);
        self.turn = self.players.get(next).map(|p| p.user_id.clone());
        if let Some(id) = &id {
            self.seen.insert((user_id.to_owned(), id.clone()), self.seq);
        }
        let record = MoveRecord { seq: self.seq, user_id: user_id.to_owned(), mv, turn: self.turn.clone() };
        let mut effects = Effects::none()
            .store(
                "INSERT INTO moves (seq, user_id, move, turn, client_id, at) VALUES (?, ?, ?, ?, ?, ?)",
                vec![self.seq.into(), user_id.into(), encoded.into(), self.turn.clone().into(), id.clone().into(), now.into()],
            )
            .store("UPDATE players SET score = score + 1 WHERE user_id = ?", vec![user_id.into()])
            .store("UPDATE game SET seq = ?, turn = ? WHERE id = 1", vec![self.seq.into(), self.turn.clone().into()])
            .to_all(moved_frame(&record));
        if id.is_some() {
            effects = effects.to_self(ack_frame(id.as_deref(), self.seq));
        }
        Ok(effects)
    }
}

fn not_a_player() -> Reject {
    Reject::in_band("not_a_player", "join the game first")
}

/// `{"type":"moved","userId","move","seq","turn"}`
pub fn moved_frame(record: &MoveRecord) -> String {
    json!({"type": "moved", "userId": record.user_id, "move": record.mv, "seq": record.seq, "turn": record.turn}).to_string()
}

/// `{"type":"ack","id","seq"}`
fn ack_frame(id: Option<&str>, seq: i64) -> String {
    json!({"type": "ack", "id": id, "seq": seq}).to_string()
}

/// UserSession's internal `games` op (game ids are names: nothing to escape).
pub fn membership_op(game_id: &str, action: &str) -> String {
    format!("{}?gameId={game_id}&action={action}", crate::effects::Op::path(&crate::session::SessionOp::Games))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::To;
    use crate::error::close;

    const T0: Millis = 1_700_000_000_000;

    fn game() -> Game {
        let mut g = Game::default();
        g.named("g1");
        g
    }
    fn send(g: &mut Game, user: &str, frame: Value) -> Result<Effects, Reject> {
        g.on_message(user, &user.to_uppercase(), &frame.to_string(), T0)
    }
    fn ok(g: &mut Game, user: &str, frame: Value) -> Effects {
        send(g, user, frame).unwrap()
    }
    fn frames(e: &Effects, to: &To) -> Vec<Value> {
        e.frames_to(to).iter().map(|f| serde_json::from_str(f).unwrap()).collect()
    }
    fn in_band(r: Result<Effects, Reject>) -> &'static str {
        match r {
            Err(Reject::InBand { code, .. }) => code,
            other => panic!("expected an in-band error, got {other:?}"),
        }
    }
    fn close_code(r: Result<Effects, Reject>) -> u16 {
        match r {
            Err(Reject::Close { code, .. }) => code,
            other => panic!("expected a close, got {other:?}"),
        }
    }
    fn joined(users: &[&str]) -> Game {
        let mut g = game();
        for u in users {
            ok(&mut g, u, json!({"type":"join"}));
        }
        g
    }
    fn mv(g: &mut Game, user: &str) -> Result<Effects, Reject> {
        send(g, user, json!({"type":"move","move":{"x":1}}))
    }

    #[test]
    fn state_frame_shape() {
        let g = joined(&["a"]);
        assert_eq!(
            g.state(),
            json!({"type":"game_state","gameId":"g1","status":"waiting",
                   "players":[{"userId":"a","userName":"A","score":0}],"turn":null,"moves":0,"seq":0})
        );
    }

    #[test]
    fn join_broadcasts_stores_and_records_in_the_session() {
        let mut g = joined(&["a"]);
        let e = ok(&mut g, "b", json!({"type":"join"}));
        assert_eq!(
            frames(&e, &To::All),
            vec![json!({"type":"player_joined","player":{"userId":"b","userName":"B","score":0},
                        "players":[{"userId":"a","userName":"A","score":0},{"userId":"b","userName":"B","score":0}],
                        "status":"playing","turn":"a"})]
        );
        assert_eq!(e.store.len(), 2);
        assert_eq!(e.calls.len(), 1);
        assert_eq!(e.calls[0].object, "b");
        assert_eq!(e.calls[0].op, "games?gameId=g1&action=join");
    }

    #[test]
    fn joining_twice_answers_state_and_changes_nothing() {
        let mut g = joined(&["a", "b"]);
        let before = g.clone();
        let e = ok(&mut g, "a", json!({"type":"join"}));
        assert_eq!(g, before);
        assert!(e.store.is_empty() && e.calls.is_empty());
        assert_eq!(frames(&e, &To::This), vec![g.state()]);
    }

    #[test]
    fn a_fifth_player_is_refused() {
        let mut g = joined(&["a", "b", "c", "d"]);
        let before = g.clone();
        let e = ok(&mut g, "e", json!({"type":"join"}));
        assert_eq!(g, before);
        assert!(e.store.is_empty() && e.calls.is_empty() && frames(&e, &To::All).is_empty());
        assert_eq!(frames(&e, &To::This)[0]["code"], json!("game_full"));
    }

    #[test]
    fn moves_need_a_player_whose_turn_it_is() {
        let mut g = joined(&["a"]);
        assert_eq!(in_band(mv(&mut g, "a")), "not_your_turn"); // waiting: no turn yet
        ok(&mut g, "b", json!({"type":"join"}));
        let before = g.clone();
        assert_eq!(in_band(mv(&mut g, "z")), "not_a_player");
        assert_eq!(in_band(mv(&mut g, "b")), "not_your_turn");
        let big = json!({"type":"move","move":"x".repeat(MAX_MOVE_BYTES)});
        assert_eq!(in_band(send(&mut g, "a", big)), "move_too_large");
        assert_eq!(g, before);
        let e = mv(&mut g, "a").unwrap();
        assert_eq!(frames(&e, &To::All), vec![json!({"type":"moved","userId":"a","move":{"x":1},"seq":1,"turn":"b"})]);
        assert!(frames(&e, &To::This).is_empty(), "no id, no ack");
        assert_eq!(g.players[0].score, 1);
    }

    #[test]
    fn turns_rotate_in_join_order() {
        let mut g = joined(&["a", "b", "c"]);
        let order: Vec<String> = (0..6)
            .map(|_| {
                let who = g.turn.clone().unwrap();
                mv(&mut g, &who).unwrap();
                who
            })
            .collect();
        assert_eq!(order, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn leaving_passes_the_turn_on() {
        let mut g = joined(&["a", "b", "c"]);
        mv(&mut g, "a").unwrap(); // b's turn
        let e = ok(&mut g, "b", json!({"type":"leave"}));
        assert_eq!(g.turn.as_deref(), Some("c"));
        assert_eq!(frames(&e, &To::All)[0]["turn"], json!("c"));
        assert_eq!(e.calls[0].op, "games?gameId=g1&action=leave");
        mv(&mut g, "c").unwrap(); // wraps to a
        assert_eq!(g.turn.as_deref(), Some("a"));
        // the last in order leaving on their turn wraps to the first
        let mut g = joined(&["a", "b", "c"]);
        mv(&mut g, "a").unwrap();
        mv(&mut g, "b").unwrap();
        ok(&mut g, "c", json!({"type":"leave"}));
        assert_eq!(g.turn.as_deref(), Some("a"));
        // not their turn: unchanged; down to one player: waiting, no turn
        ok(&mut g, "b", json!({"type":"leave"}));
        assert_eq!((g.status(), g.turn.clone()), ("waiting", None));
        assert_eq!(in_band(send(&mut g, "zz", json!({"type":"leave"}))), "not_a_player");
    }

    #[test]
    fn a_repeated_id_is_acked_with_its_seq_and_not_applied() {
        let mut g = joined(&["a", "b"]);
        let e = send(&mut g, "a", json!({"type":"move","move":1,"id":"m1"})).unwrap();
        assert_eq!(frames(&e, &To::This), vec![json!({"type":"ack","id":"m1","seq":1})]);
        // a retry after the turn moved on is still recognised
        let before = g.clone();
        let e = send(&mut g, "a", json!({"type":"move","move":1,"id":"m1"})).unwrap();
        assert_eq!(g, before);
        assert!(e.store.is_empty() && frames(&e, &To::All).is_empty());
        assert_eq!(frames(&e, &To::This), vec![json!({"type":"ack","id":"m1","seq":1})]);
        // ids are per user
        assert!(send(&mut g, "b", json!({"type":"move","move":2,"id":"m1"})).unwrap().store.len() == 3);
        assert_eq!(g.seq, 2);
    }

    #[test]
    fn bad_frames_close_with_the_spec_codes() {
        let mut g = joined(&["a", "b"]);
        for bad in [
            json!({"type":"move"}),
            json!({"type":"move","move":1,"id":null}),
            json!({"type":"move","move":1,"id":5}),
        ] {
            assert_eq!(close_code(send(&mut g, "a", bad.clone())), close::INVALID_DATA, "{bad}");
        }
        assert_eq!(close_code(send(&mut g, "a", json!({"type":"dance"}))), close::POLICY);
        assert_eq!(in_band(send(&mut g, "a", json!({"type":"move","move":1,"id":""}))), "invalid_id");
        assert_eq!(g.seq, 0);
        // "any JSON value": null is a move like any other.
        let e = send(&mut g, "a", json!({"type":"move","move":null})).unwrap();
        assert_eq!(frames(&e, &To::All), vec![json!({"type":"moved","userId":"a","move":null,"seq":1,"turn":"b"})]);
    }

    #[test]
    fn replay_after_since() {
        let mut g = joined(&["a", "b"]);
        mv(&mut g, "a").unwrap();
        mv(&mut g, "b").unwrap();
        let history = |after: i64| {
            (after + 1..=2).map(|seq| MoveRecord { seq, user_id: "a".into(), mv: json!(seq), turn: None }).collect()
        };
        let e = g.on_connect(Some(0), history);
        let sent = frames(&e, &To::This);
        assert_eq!(sent.iter().map(|f| f["type"].clone()).collect::<Vec<_>>(), [json!("game_state"), json!("moved"), json!("moved")]);
        assert_eq!(frames(&g.on_connect(Some(2), |_| panic!("no read")), &To::This).len(), 1);
        assert_eq!(frames(&g.on_connect(Some(9), |_| panic!("no read")), &To::This)[1], json!({"type":"resync_required","latestSeq":2}));
    }

    #[test]
    fn restore_keeps_dedup_and_repairs_the_turn() {
        let players = vec![
            Player { user_id: "a".into(), user_name: "A".into(), score: 0 },
            Player { user_id: "b".into(), user_name: "B".into(), score: 1 },
        ];
        let mut g = Game::restore("g1".into(), players, Some("gone".into()), 1, [("b".into(), "m".into(), 1)]);
        assert_eq!(g.turn.as_deref(), Some("a"));
        let e = send(&mut g, "b", json!({"type":"move","move":1,"id":"m"})).unwrap();
        assert_eq!(frames(&e, &To::This), vec![json!({"type":"ack","id":"m","seq":1})]);
    }

    use crate::TestRng as Rng;

    /// Random sessions of six users: at most 4 players, seq gapless, no id applied twice,
    /// the turn always the player after the last mover in join order.
    #[test]
    fn property_invariants_hold_for_random_sessions() {
        let users = ["a", "b", "c", "d", "e", "f"];
        for seed in 1..200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut g = game();
            let mut applied: Vec<(String, String)> = Vec::new();
            for step in 0..200 {
                let user = users[rng.next(users.len())];
                let before = g.clone();
                let frame = match rng.next(4) {
                    0 => json!({"type":"join"}),
                    1 if rng.next(4) == 0 => json!({"type":"leave"}),
                    _ => json!({"type":"move","move":step,"id":format!("id{}", rng.next(8))}),
                };
                let result = send(&mut g, user, frame.clone());
                assert!(g.players.len() <= MAX_PLAYERS);
                assert_eq!(g.playing(), g.turn.is_some(), "a turn exactly while playing");
                if let Some(t) = &g.turn {
                    assert!(g.index_of(t).is_some(), "the turn is a player's");
                }
                let moved = result.as_ref().map(|e| frames(e, &To::All)).unwrap_or_default();
                if let Some(m) = moved.iter().find(|f| f["type"] == "moved") {
                    assert_eq!(g.seq, before.seq + 1, "seq gapless");
                    assert_eq!(m["seq"], json!(g.seq));
                    let key = (user.to_owned(), frame["id"].as_str().unwrap().to_owned());
                    assert!(!applied.contains(&key), "id {key:?} applied twice");
                    applied.push(key);
                    let i = before.index_of(user).unwrap();
                    assert_eq!(before.turn.as_deref(), Some(user));
                    assert_eq!(g.turn.as_ref(), Some(&before.players[(i + 1) % before.players.len()].user_id));
                } else {
                    assert_eq!(g.seq, before.seq);
                }
                if result.is_err() {
                    assert_eq!(g, before, "a refusal changes nothing");
                }
            }
        }
    }
}
