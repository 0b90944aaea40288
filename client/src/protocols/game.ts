// GameServer (docs/game.md): `/api/game/:gameId`, a turn-based room of up to 4 players.
// `moved` events are sequenced (`seq`); a reconnect resumes with `?since=` and replays them.

import { array, decodeWith, frame, integer, literal, nullable, object, string, unknownValue, type FrameOf, type Infer } from "../guards.js";
import { TypedClient, clientId, errorFrame, loggedOutFrame, pongFrame, resyncFrame, segment, type ClientOptions } from "./common.js";

export const gamePlayer = object({ userId: string, userName: string, score: integer });
export type GamePlayer = Infer<typeof gamePlayer>;
const status = literal("waiting", "playing");

const stateFields = {
  gameId: string,
  status,
  players: array(gamePlayer),
  turn: nullable(string),
  moves: integer,
  seq: integer,
};

/** Every frame the server sends on a game socket, by `type`. */
export const gameFrames = {
  game_state: frame("game_state", stateFields),
  player_joined: frame("player_joined", { player: gamePlayer, players: array(gamePlayer), status, turn: nullable(string) }),
  player_left: frame("player_left", { userId: string, players: array(gamePlayer), status, turn: nullable(string) }),
  moved: frame("moved", { userId: string, move: unknownValue, seq: integer, turn: nullable(string) }),
  ack: frame("ack", { id: string, seq: integer }),
  resync_required: resyncFrame,
  error: errorFrame,
  logged_out: loggedOutFrame,
  pong: pongFrame,
};
export type GameFrame = FrameOf<typeof gameFrames>;
export type GameState = Omit<Extract<GameFrame, { type: "game_state" }>, "type">;

export function decodeGameFrame(value: unknown, exact = false): GameFrame | undefined {
  return decodeWith(gameFrames, value, exact);
}

/** `GET /api/game/:gameId/state`: the `game_state` frame. */
export const gameStateResponse = gameFrames.game_state;

export interface GameOptions extends ClientOptions {
  /** Replay `moved` events after this seq on the first connect (0: all). Default: live only. */
  since?: number;
}

/**
 * One game. `state` follows `game_state` and every event; `join`/`leave`/`move` go over the
 * socket (queued while offline). A reconnect resumes after the last `moved` seen, so every move
 * arrives exactly once, in `seq` order.
 */
export class GameClient extends TypedClient<GameFrame> {
  state: GameState | undefined;

  constructor(
    readonly gameId: string,
    options: GameOptions,
  ) {
    super(gameFrames, `/api/game/${segment(gameId)}`, options, {
      sequenceOf: (f) => (f.type === "moved" && Number.isSafeInteger(f.seq) ? (f.seq as number) : undefined),
      baselineOf: (f) => (f.type === "game_state" && Number.isSafeInteger(f.seq) ? (f.seq as number) : undefined),
    });
  }

  protected override apply(f: GameFrame): void {
    if (f.type === "game_state") {
      const { type: _type, ...state } = f;
      this.state = state;
      return;
    }
    const s = this.state;
    if (!s) return;
    if (f.type === "player_joined" || f.type === "player_left") {
      this.state = { ...s, players: f.players, status: f.status, turn: f.turn };
    } else if (f.type === "moved" && f.seq > s.seq) {
      // A replayed move (`?since=`) is already part of the `game_state` before it.
      const players = s.players.map((p) => (p.userId === f.userId ? { ...p, score: p.score + 1 } : p));
      this.state = { ...s, players, turn: f.turn, moves: f.seq, seq: f.seq };
    }
  }

  /** Whether it is `userId`'s turn. */
  isTurnOf(userId: string): boolean {
    return this.state?.turn === userId;
  }

  join(): void {
    this.socket.send({ type: "join" });
  }

  leave(): void {
    this.socket.send({ type: "leave" });
  }

  /** Any JSON value up to 1 KiB serialized. Returns the client id (the `ack` carries it). */
  move(move: unknown, id = clientId()): string {
    this.socket.send({ type: "move", move, id });
    return id;
  }

  /** `GET /api/game/:gameId/state` */
  fetchState(): Promise<Extract<GameFrame, { type: "game_state" }>> {
    return this.http("GET", `/api/game/${segment(this.gameId)}/state`);
  }
}
