// ChatRoom (docs/protocol.md §6.3, docs/chat.md): `/api/chat` (room `global`) or `/api/chat/:room`.

import { array, decodeWith, frame, integer, literal, nullable, object, string, type FrameOf, type Infer } from "../guards.js";
import { TypedClient, clientId, errorFrame, loggedOutFrame, pongFrame, query, resyncFrame, segment, type ClientOptions } from "./common.js";

export const chatMessage = object({
  id: string,
  seq: integer,
  kind: literal("user", "system"),
  userId: string,
  userName: string,
  content: string,
  timestamp: string,
});
export type ChatMessage = Infer<typeof chatMessage>;

/** Every frame the server sends on a chat socket, by `type`. */
export const chatFrames = {
  message: frame("message", { message: chatMessage }),
  userCount: frame("userCount", { count: integer }),
  resync_required: resyncFrame,
  error: errorFrame,
  logged_out: loggedOutFrame,
  pong: pongFrame,
};
export type ChatFrame = FrameOf<typeof chatFrames>;

export function decodeChatFrame(value: unknown, exact = false): ChatFrame | undefined {
  return decodeWith(chatFrames, value, exact);
}

/** `GET /api/chat/:room/messages` */
export const chatHistory = object({ messages: array(chatMessage), nextBefore: nullable(integer) });
export type ChatHistory = Infer<typeof chatHistory>;

/**
 * A chat room. Reconnects resume from the last `seq` seen, so messages sent while this client
 * was away are delivered once, in order. Sent messages carry a client id: the server stores a
 * repeat once, and its echo of a message already seen is dropped.
 */
export class ChatClient extends TypedClient<ChatFrame> {
  /** Distinct users connected (from the last `userCount`). */
  userCount: number | undefined;

  constructor(
    readonly room: string,
    options: ClientOptions,
  ) {
    super(chatFrames, room === "global" ? "/api/chat" : `/api/chat/${segment(room)}`, options, {
      sequenceOf: (f) => {
        const m = f.type === "message" ? (f.message as { seq?: unknown } | undefined) : undefined;
        return m && Number.isSafeInteger(m.seq) ? (m.seq as number) : undefined;
      },
    });
  }

  protected override apply(f: ChatFrame): void {
    if (f.type === "userCount") this.userCount = f.count;
  }

  /** Send a message (queued while offline); returns its client id. */
  send(content: string, id = clientId()): string {
    this.socket.send({ type: "message", content, id });
    return id;
  }

  /** `GET …/messages`: newest first; pass `nextBefore` as `before` for older pages. */
  history(params: { limit?: number; before?: number } = {}): Promise<ChatHistory> {
    const base = this.room === "global" ? "/api/chat" : `/api/chat/${segment(this.room)}`;
    return this.http("GET", `${base}/messages${query(params)}`);
  }
}
