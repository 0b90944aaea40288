// useChat over ChatClient (`/api/chat` for "global", `/api/chat/:room`).

import { useCallback, useEffect, useState } from "react";
import { ChatClient, type ChatMessage } from "@edge-realtime/client";
import { capped, keyOf, useLatest, useRealtimeClient, withClient, type ConnectionState, type HookClientOptions } from "./core.js";

export interface UseChatOptions extends HookClientOptions {
  /** Default true; `false` closes the socket. */
  enabled?: boolean;
  /** Every message (user and system), once, in `seq` order, also those replayed on a resume. */
  onMessage?: (message: ChatMessage) => void;
  onUserCount?: (count: number) => void;
  /** Messages kept in `messages` (oldest dropped). Default 200. */
  maxMessages?: number;
}

export interface UseChatResult extends ConnectionState<ChatClient> {
  /** Messages received since this hook connected (with `since`, the replay first). */
  messages: ChatMessage[];
  /** Distinct users connected (the server's `userCount`). */
  userCount: number | null;
  /** Send (queued while offline); resolves to the client id. */
  send: (content: string) => Promise<string>;
}

export function useChat(room: string, options: UseChatOptions = {}): UseChatResult {
  const { enabled = true, onMessage, onUserCount, maxMessages = 200, ...clientOptions } = options;
  const callbacks = useLatest({ onMessage, onUserCount, maxMessages });
  const [messages, setMessages] = useState<ChatMessage[]>([]);
  const [userCount, setUserCount] = useState<number | null>(null);

  const conn = useRealtimeClient({
    enabled,
    key: keyOf(room),
    options: clientOptions,
    create: (o) => new ChatClient(room, o),
    attach: (c) =>
      c.onFrame((f) => {
        if (f.type === "message") {
          setMessages((list) => capped(list, f.message, callbacks.current.maxMessages));
          callbacks.current.onMessage?.(f.message);
        } else if (f.type === "userCount") {
          setUserCount(f.count);
          callbacks.current.onUserCount?.(f.count);
        }
      }),
  });

  useEffect(() => {
    setMessages([]);
    setUserCount(null);
  }, [enabled, room]);

  const client = conn.client;
  return { ...conn, messages, userCount, send: useCallback((content: string) => withClient(client, (c) => c.send(content)), [client]) };
}
