// Channel (docs/protocol.md §6.5, docs/channel.md): `/ws/channel/:id`, gapless sequenced messages.

import { array, boolean, decodeWith, frame, integer, nullable, object, optional, record, string, type FrameOf, type Infer } from "../guards.js";
import { TypedClient, clientId, errorFrame, loggedOutFrame, pongFrame, query, resyncFrame, segment, type ClientOptions } from "./common.js";

const messageFields = { sequence: integer, userId: string, content: string, timestamp: string, id: nullable(string) };
/** A message's reactions: emoji → number of users (`{}` when none). */
export const reactionCounts = record(integer);
export type ReactionCounts = Infer<typeof reactionCounts>;

/** Every frame the server sends on a channel socket, by `type`. */
export const channelFrames = {
  /** The full list (distinct users, sorted): on connect, and on a join/leave while ≤ 100 participants. */
  participants: frame("participants", { users: array(string) }),
  /** Above 100 participants (`PARTICIPANTS_LIST_MAX`): `userId` joined; `count` participants now. */
  participant_joined: frame("participant_joined", { userId: string, count: integer }),
  /** Above 100 participants after the leave: `userId` left; `count` participants now. */
  participant_left: frame("participant_left", { userId: string, count: integer }),
  /** Live messages have no `reactions` (a new message has none); `?since=` replays carry them. */
  message: frame("message", { ...messageFields, reactions: optional(reactionCounts) }),
  /** A toggle: `count` users now react with `emoji` on message `sequence`. */
  reaction: frame("reaction", { sequence: integer, emoji: string, userId: string, on: boolean, count: integer }),
  ack: frame("ack", { id: nullable(string), sequence: integer }),
  typing: frame("typing", { users: array(string) }),
  resync_required: resyncFrame,
  error: errorFrame,
  logged_out: loggedOutFrame,
  pong: pongFrame,
};
export type ChannelFrame = FrameOf<typeof channelFrames>;
export type ChannelMessage = Omit<Extract<ChannelFrame, { type: "message" }>, "type">;

export function decodeChannelFrame(value: unknown, exact = false): ChannelFrame | undefined {
  return decodeWith(channelFrames, value, exact);
}

/** `GET /api/channel/:id/messages` (history entries are the message frame without `type`, with `reactions`). */
export const channelHistory = object({
  messages: array(object({ ...messageFields, reactions: reactionCounts })),
  nextAfter: nullable(integer),
});
export type ChannelHistory = Infer<typeof channelHistory>;

/** Participants as the server describes them: the users (sorted) and how many there are. */
export interface Participants {
  users: string[];
  count: number;
}

/**
 * The participants after frame `f` (docs/channel.md): a `participants` list replaces them, a
 * `participant_joined` / `participant_left` delta (sent above 100 participants instead of the
 * list) adds or removes one user and carries the server's `count`. Idempotent (a user already
 * there is not added twice). Any other frame: `undefined` (nothing changed).
 */
export function applyParticipants(current: Participants, f: ChannelFrame): Participants | undefined {
  switch (f.type) {
    case "participants":
      return { users: [...f.users], count: f.users.length };
    case "participant_joined": {
      const users = current.users.includes(f.userId) ? current.users : [...current.users, f.userId].sort(byCodeUnit);
      return { users, count: f.count };
    }
    case "participant_left":
      return { users: current.users.filter((u) => u !== f.userId), count: f.count };
    default:
      return undefined;
  }
}

/** The server's order: user ids are ASCII (`[A-Za-z0-9_.-]`), so byte order = code-unit order. */
function byCodeUnit(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export interface ChannelOptions extends ClientOptions {
  /** Replay from here on the first connect (0: everything still stored). Default: live only. */
  since?: number;
}

/** A sequenced channel: every message exactly once, in `sequence` order, across reconnects. */
export class ChannelClient extends TypedClient<ChannelFrame> {
  /** Users connected, sorted: the connect list kept current by lists and deltas. */
  participants: string[] = [];
  /** How many participants the server counts (`participants.length` once the list arrived). */
  participantCount = 0;
  typing: string[] = [];

  constructor(
    readonly id: string,
    options: ChannelOptions,
  ) {
    super(channelFrames, `/ws/channel/${segment(id)}`, options, {
      sequenceOf: (f) => (f.type === "message" && Number.isSafeInteger(f.sequence) ? (f.sequence as number) : undefined),
    });
  }

  protected override apply(f: ChannelFrame): void {
    const next = applyParticipants({ users: this.participants, count: this.participantCount }, f);
    if (next) [this.participants, this.participantCount] = [next.users, next.count];
    if (f.type === "typing") this.typing = f.users;
  }

  /** Post over the socket (queued while offline); returns the client id (the `ack` carries it). */
  send(content: string, id = clientId()): string {
    this.socket.send({ type: "message", content, id });
    return id;
  }

  /**
   * `react {sequence, emoji, on}`: add (`on: true`) or remove your reaction. `emoji` must be
   * exactly one emoji (docs/channel.md); the answer is a `reaction` frame with the new `count`.
   */
  react(sequence: number, emoji: string, on = true): void {
    this.socket.send({ type: "react", sequence, emoji, on });
  }

  /** `typing {isTyping}`; a flag expires 3 s after its last refresh. */
  setTyping(isTyping: boolean): void {
    this.socket.send({ type: "typing", isTyping });
  }

  /** `POST /api/channel/:id/message` */
  post(content: string, id = clientId()): Promise<{ success: true; sequence: number }> {
    return this.http("POST", `/api/channel/${segment(this.id)}/message`, { content, id });
  }

  /** `GET /api/channel/:id/messages?after=&limit=` in sequence order. */
  history(params: { after?: number; limit?: number } = {}): Promise<ChannelHistory> {
    return this.http("GET", `/api/channel/${segment(this.id)}/messages${query(params)}`);
  }
}
