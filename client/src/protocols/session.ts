// UserSession (docs/protocol.md §6.1, docs/session.md): `/__user-session?userId=&deviceId=`.

import { array, decodeWith, frame, integer, literal, openObject, string, type FrameOf, type Infer } from "../guards.js";
import { TypedClient, errorFrame, loggedOutFrame, pongFrame, query, type ClientOptions } from "./common.js";

export const sessionPresence = literal("online", "away", "offline");
export type SessionPresence = Infer<typeof sessionPresence>;

const view = {
  userId: string,
  activeGames: array(string),
  presence: sessionPresence,
  lastActive: integer,
  /** How many devices have an open socket (design note 000: a count). */
  connectedDevices: integer,
  /** Their ids, sorted. */
  devices: array(string),
};

/** Every frame the server sends on a session socket, by `type`. */
export const sessionFrames = {
  initial_state: frame("initial_state", view),
  state: frame("state", view),
  game_joined: frame("game_joined", { gameId: string, activeGames: array(string) }),
  game_left: frame("game_left", { gameId: string, activeGames: array(string) }),
  presence_updated: frame("presence_updated", { presence: sessionPresence }),
  notification: openObject({ type: literal("notification") }),
  logged_out: loggedOutFrame,
  error: errorFrame,
  pong: pongFrame,
};
export type SessionFrame = FrameOf<typeof sessionFrames>;
export type SessionState = Omit<Extract<SessionFrame, { type: "state" }>, "type">;

export function decodeSessionFrame(value: unknown, exact = false): SessionFrame | undefined {
  return decodeWith(sessionFrames, value, exact);
}

/**
 * The signed-in user's session on this device. `state` follows `initial_state`/`state` and
 * every change. `logoutAll()` ends every device's sockets with 4001: the socket stops and the
 * app must sign in again (a new token) and call `socket.start()`.
 */
export class UserSessionClient extends TypedClient<SessionFrame> {
  state: SessionState | undefined;

  constructor(
    readonly userId: string,
    readonly deviceId: string,
    options: ClientOptions,
  ) {
    super(sessionFrames, `/__user-session${query({ userId, deviceId })}`, options);
  }

  protected override apply(f: SessionFrame): void {
    if (f.type === "initial_state" || f.type === "state") {
      const { type: _type, ...rest } = f;
      this.state = rest;
    } else if (this.state && (f.type === "game_joined" || f.type === "game_left")) {
      this.state = { ...this.state, activeGames: f.activeGames };
    } else if (this.state && f.type === "presence_updated") {
      this.state = { ...this.state, presence: f.presence };
    }
  }

  joinGame(gameId: string): void {
    this.socket.send({ type: "join_game", gameId });
  }
  leaveGame(gameId: string): void {
    this.socket.send({ type: "leave_game", gameId });
  }
  updatePresence(presence: SessionPresence): void {
    this.socket.send({ type: "update_presence", presence });
  }
  syncState(): void {
    this.socket.send({ type: "sync_state" });
  }
  /** Log out every device of this user (their sockets close with 4001; old tokens are refused). */
  logoutAll(): void {
    this.socket.send({ type: "logout_all" });
  }

  /** `GET /__user-session/state?userId=` */
  fetchState(): Promise<SessionState> {
    return this.http("GET", `/__user-session/state${query({ userId: this.userId })}`);
  }
}
