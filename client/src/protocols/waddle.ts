// Waddle (docs/protocol.md §6.4, docs/waddle.md): `/ws/waddle/:id`, community presence and typing.

import { array, boolean, decodeWith, frame, integer, literal, object, string, tuple, type FrameOf, type Infer } from "../guards.js";
import { TypedClient, errorFrame, loggedOutFrame, pongFrame, segment, type ClientOptions } from "./common.js";

export const waddleStatus = literal("online", "away", "busy", "offline");
export type WaddleStatus = Infer<typeof waddleStatus>;
export const waddlePresence = object({ status: waddleStatus, lastSeen: integer });
export type WaddlePresence = Infer<typeof waddlePresence>;

/** Every frame the server sends on a waddle socket, by `type` (admin broadcasts aside). */
export const waddleFrames = {
  presence_state: frame("presence_state", { users: array(tuple(string, waddlePresence)) }),
  presence_update: frame("presence_update", { userId: string, status: waddleStatus }),
  typing: frame("typing", { userId: string, channelId: string, isTyping: boolean }),
  error: errorFrame,
  logged_out: loggedOutFrame,
  pong: pongFrame,
};
export type WaddleFrame = FrameOf<typeof waddleFrames>;

export function decodeWaddleFrame(value: unknown, exact = false): WaddleFrame | undefined {
  return decodeWith(waddleFrames, value, exact);
}

/** `GET /api/waddle/:id/presence` */
export const waddlePresenceView = object({
  users: array(object({ userId: string, status: waddleStatus, lastSeen: integer })),
});
export type WaddlePresenceView = Infer<typeof waddlePresenceView>;

/**
 * A community. `members` follows `presence_state` and every `presence_update`. Admin broadcasts
 * are arbitrary JSON objects: they arrive through `onBroadcast` (frames that are none of the
 * protocol's own types).
 */
export class WaddleClient extends TypedClient<WaddleFrame> {
  readonly members = new Map<string, WaddlePresence>();

  constructor(
    readonly id: string,
    options: ClientOptions,
  ) {
    super(waddleFrames, `/ws/waddle/${segment(id)}`, options);
  }

  protected override apply(f: WaddleFrame): void {
    if (f.type === "presence_state") {
      this.members.clear();
      for (const [user, p] of f.users) this.members.set(user, p);
    } else if (f.type === "presence_update") {
      this.members.set(f.userId, { status: f.status, lastSeen: Date.now() });
    }
  }

  /** Admin broadcasts (`POST /api/waddle/:id/broadcast`), exactly as the admin sent them. */
  onBroadcast(fn: (body: Record<string, unknown>) => void): () => void {
    return this.onUnknown(fn);
  }

  setStatus(status: WaddleStatus): void {
    this.socket.send({ type: "presence_update", status });
  }

  setTyping(channelId: string, isTyping: boolean): void {
    this.socket.send({ type: "typing", channelId, isTyping });
  }

  /** `GET /api/waddle/:id/presence` */
  presence(): Promise<WaddlePresenceView> {
    return this.http("GET", `/api/waddle/${segment(this.id)}/presence`);
  }
}
