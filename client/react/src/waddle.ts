// useWaddle over WaddleClient (`/ws/waddle/:id`): community presence, typing, admin broadcasts.

import { useCallback, useEffect, useState } from "react";
import { WaddleClient, type WaddlePresence, type WaddleStatus } from "@edge-realtime/client";
import { keyOf, useLatest, useRealtimeClient, withClient, type ConnectionState, type HookClientOptions } from "./core.js";

export interface UseWaddleOptions extends HookClientOptions {
  /** Default true; `false` closes the socket. */
  enabled?: boolean;
  onPresence?: (userId: string, status: WaddleStatus) => void;
  onTyping?: (event: { userId: string; channelId: string; isTyping: boolean }) => void;
  /** Admin broadcasts (`POST /api/waddle/:id/broadcast`), exactly as sent. */
  onBroadcast?: (body: Record<string, unknown>) => void;
}

export interface UseWaddleResult extends ConnectionState<WaddleClient> {
  /** Members by user id (from `presence_state` and every `presence_update`). */
  members: Record<string, WaddlePresence>;
  /** Who is typing, by channel id. */
  typing: Record<string, string[]>;
  setStatus: (status: WaddleStatus) => Promise<void>;
  setTyping: (channelId: string, isTyping: boolean) => Promise<void>;
}

export function useWaddle(id: string, options: UseWaddleOptions = {}): UseWaddleResult {
  const { enabled = true, onPresence, onTyping, onBroadcast, ...clientOptions } = options;
  const callbacks = useLatest({ onPresence, onTyping, onBroadcast });
  const [members, setMembers] = useState<Record<string, WaddlePresence>>({});
  const [typing, setTypingState] = useState<Record<string, string[]>>({});

  const conn = useRealtimeClient({
    enabled,
    key: keyOf(id),
    options: clientOptions,
    create: (o) => new WaddleClient(id, o),
    attach: (c) => {
      const offFrame = c.onFrame((f) => {
        if (f.type === "presence_state" || f.type === "presence_update") {
          setMembers(Object.fromEntries(c.members));
          if (f.type === "presence_update") callbacks.current.onPresence?.(f.userId, f.status);
        } else if (f.type === "typing") {
          setTypingState((t) => {
            const others = (t[f.channelId] ?? []).filter((u) => u !== f.userId);
            return { ...t, [f.channelId]: f.isTyping ? [...others, f.userId] : others };
          });
          callbacks.current.onTyping?.({ userId: f.userId, channelId: f.channelId, isTyping: f.isTyping });
        }
      });
      const offBroadcast = c.onBroadcast((body) => callbacks.current.onBroadcast?.(body));
      return () => {
        offFrame();
        offBroadcast();
      };
    },
  });

  useEffect(() => {
    setMembers({});
    setTypingState({});
  }, [enabled, id]);

  const client = conn.client;
  return {
    ...conn,
    members,
    typing,
    setStatus: useCallback((s: WaddleStatus) => withClient(client, (c) => c.setStatus(s)), [client]),
    setTyping: useCallback((ch: string, on: boolean) => withClient(client, (c) => c.setTyping(ch, on)), [client]),
  };
}
