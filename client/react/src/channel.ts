// useChannel over ChannelClient (`/ws/channel/:id`): gapless, sequenced, resumable.

import { useCallback, useEffect, useState } from "react";
import { ChannelClient, applyParticipants, type ChannelFrame, type ChannelMessage, type Participants } from "@edge-realtime/client";
import { capped, keyOf, useLatest, useRealtimeClient, withClient, type ConnectionState, type HookClientOptions } from "./core.js";

export interface UseChannelOptions extends HookClientOptions {
  /** Default true; `false` closes the socket. */
  enabled?: boolean;
  /**
   * Replay every message after this sequence on connect (0: all still stored). Pass the
   * `lastSeq` of an earlier mount to resume without loss. Default: live only.
   */
  since?: number;
  /** Every message, once, in `sequence` order (the replay first). */
  onMessage?: (message: ChannelMessage) => void;
  /** Messages kept in `messages` (oldest dropped). Default 500. */
  maxMessages?: number;
  /** Every `reaction` (also for messages no longer in `messages`). */
  onReaction?: (reaction: Omit<Extract<ChannelFrame, { type: "reaction" }>, "type">) => void;
}

export interface UseChannelResult extends ConnectionState<ChannelClient> {
  /** Each with its `reactions` (emoji → count; `{}` when none), kept current by `reaction` frames. */
  messages: (ChannelMessage & { reactions: Record<string, number> })[];
  /**
   * Users connected, sorted: the server's `participants` list, kept current by its
   * `participant_joined` / `participant_left` deltas (sent instead above 100 participants).
   */
  participants: string[];
  /** How many participants the server counts (the deltas' `count`). */
  participantCount: number;
  /** Users typing now (the server's `typing`). */
  typing: string[];
  /** Post over the socket (queued while offline); resolves to the client id (the `ack` carries it). */
  send: (content: string) => Promise<string>;
  setTyping: (isTyping: boolean) => Promise<void>;
  /** Add (`on`, the default) or remove your reaction `emoji` on message `sequence`. */
  react: (sequence: number, emoji: string, on?: boolean) => Promise<void>;
}

export function useChannel(id: string, options: UseChannelOptions = {}): UseChannelResult {
  const { enabled = true, since, onMessage, onReaction, maxMessages = 500, ...clientOptions } = options;
  const callbacks = useLatest({ onMessage, onReaction, maxMessages });
  const [messages, setMessages] = useState<UseChannelResult["messages"]>([]);
  const [participants, setParticipants] = useState<Participants>(NO_PARTICIPANTS);
  const [typing, setTypingState] = useState<string[]>([]);

  const conn = useRealtimeClient({
    enabled,
    key: keyOf(id),
    options: clientOptions,
    create: (o) => new ChannelClient(id, { ...o, since }),
    attach: (c) =>
      c.onFrame((f) => {
        if (f.type === "message") {
          const { type: _type, ...m } = f;
          setMessages((list) => capped(list, { ...m, reactions: m.reactions ?? {} }, callbacks.current.maxMessages));
          callbacks.current.onMessage?.(m);
        } else if (f.type === "reaction") {
          const { type: _type, ...r } = f;
          setMessages((list) => list.map((m) => (m.sequence === r.sequence ? { ...m, reactions: withCount(m.reactions, r.emoji, r.count) } : m)));
          callbacks.current.onReaction?.(r);
        } else if (f.type === "typing") setTypingState(f.users);
        else setParticipants((current) => applyParticipants(current, f) ?? current);
      }),
  });

  useEffect(() => {
    setMessages([]);
    setParticipants(NO_PARTICIPANTS);
    setTypingState([]);
  }, [enabled, id]);

  const client = conn.client;
  return {
    ...conn,
    messages,
    participants: participants.users,
    participantCount: participants.count,
    typing,
    send: useCallback((content: string) => withClient(client, (c) => c.send(content)), [client]),
    setTyping: useCallback((isTyping: boolean) => withClient(client, (c) => c.setTyping(isTyping)), [client]),
    react: useCallback((sequence: number, emoji: string, on = true) => withClient(client, (c) => c.react(sequence, emoji, on)), [client]),
  };
}

const NO_PARTICIPANTS: Participants = { users: [], count: 0 };

/** `reactions` with `emoji` at `count` (gone at 0). */
function withCount(reactions: Record<string, number>, emoji: string, count: number): Record<string, number> {
  const next = { ...reactions };
  if (count > 0) next[emoji] = count;
  else delete next[emoji];
  return next;
}
