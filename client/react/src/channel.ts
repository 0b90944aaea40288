// useChannel over ChannelClient (`/ws/channel/:id`): gapless, sequenced, resumable.

import { useCallback, useEffect, useState } from "react";
import { ChannelClient, type ChannelMessage } from "@edge-realtime/client";
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
}

export interface UseChannelResult extends ConnectionState<ChannelClient> {
  messages: ChannelMessage[];
  /** Users connected (the server's `participants`). */
  participants: string[];
  /** Users typing now (the server's `typing`). */
  typing: string[];
  /** Post over the socket (queued while offline); resolves to the client id (the `ack` carries it). */
  send: (content: string) => Promise<string>;
  setTyping: (isTyping: boolean) => Promise<void>;
}

export function useChannel(id: string, options: UseChannelOptions = {}): UseChannelResult {
  const { enabled = true, since, onMessage, maxMessages = 500, ...clientOptions } = options;
  const callbacks = useLatest({ onMessage, maxMessages });
  const [messages, setMessages] = useState<ChannelMessage[]>([]);
  const [participants, setParticipants] = useState<string[]>([]);
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
          setMessages((list) => capped(list, m, callbacks.current.maxMessages));
          callbacks.current.onMessage?.(m);
        } else if (f.type === "participants") setParticipants(f.users);
        else if (f.type === "typing") setTypingState(f.users);
      }),
  });

  useEffect(() => {
    setMessages([]);
    setParticipants([]);
    setTypingState([]);
  }, [enabled, id]);

  const client = conn.client;
  return {
    ...conn,
    messages,
    participants,
    typing,
    send: useCallback((content: string) => withClient(client, (c) => c.send(content)), [client]),
    setTyping: useCallback((isTyping: boolean) => withClient(client, (c) => c.setTyping(isTyping)), [client]),
  };
}
