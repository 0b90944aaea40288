// Channel (docs/protocol.md §6.5, docs/channel.md): `/ws/channel/:id`, gapless sequenced messages.

import { array, decodeWith, frame, integer, nullable, object, string, type FrameOf, type Infer } from "../guards.js";
import { TypedClient, clientId, errorFrame, loggedOutFrame, pongFrame, query, resyncFrame, segment, type ClientOptions } from "./common.js";

const messageFields = { sequence: integer, userId: string, content: string, timestamp: string, id: nullable(string) };

/** Every frame the server sends on a channel socket, by `type`. */
export const channelFrames = {
  participants: frame("participants", { users: array(string) }),
  message: frame("message", messageFields),
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

/** `GET /api/channel/:id/messages` (history entries are the message frame without `type`). */
export const channelHistory = object({ messages: array(object(messageFields)), nextAfter: nullable(integer) });
export type ChannelHistory = Infer<typeof channelHistory>;

export interface ChannelOptions extends ClientOptions {
  /** Replay from here on the first connect (0: everything still stored). Default: live only. */
  since?: number;
}

/** A sequenced channel: every message exactly once, in `sequence` order, across reconnects. */
export class ChannelClient extends TypedClient<ChannelFrame> {
  participants: string[] = [];
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
    if (f.type === "participants") this.participants = f.users;
    if (f.type === "typing") this.typing = f.users;
  }

  /** Post over the socket (queued while offline); returns the client id (the `ack` carries it). */
  send(content: string, id = clientId()): string {
    this.socket.send({ type: "message", content, id });
    return id;
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
