// useGame over GameClient (`/api/game/:gameId`): a turn-based room; moves exactly once.

import { useCallback, useEffect, useState } from "react";
import { GameClient, type GameState } from "@edge-realtime/client";
import { keyOf, useLatest, useRealtimeClient, withClient, type ConnectionState, type HookClientOptions } from "./core.js";

export interface UseGameOptions extends HookClientOptions {
  /** Default true; `false` closes the socket. */
  enabled?: boolean;
  /** Replay `moved` events after this seq on connect (0: all). Default: live only. */
  since?: number;
  onMove?: (event: { userId: string; move: unknown; seq: number; turn: string | null }) => void;
}

export interface UseGameResult extends ConnectionState<GameClient> {
  /** `{gameId, status, players, turn, moves, seq}`; `null` until the first `game_state`. */
  state: GameState | null;
  isTurnOf: (userId: string) => boolean;
  join: () => Promise<void>;
  leave: () => Promise<void>;
  /** Any JSON value up to 1 KiB; resolves to the client id (the `ack` carries it). */
  move: (move: unknown) => Promise<string>;
}

export function useGame(gameId: string, options: UseGameOptions = {}): UseGameResult {
  const { enabled = true, since, onMove, ...clientOptions } = options;
  const callbacks = useLatest({ onMove });
  const [state, setState] = useState<GameState | null>(null);

  const conn = useRealtimeClient({
    enabled,
    key: keyOf(gameId),
    options: clientOptions,
    create: (o) => new GameClient(gameId, { ...o, since }),
    attach: (c) =>
      c.onFrame((f) => {
        setState(c.state ?? null);
        if (f.type === "moved") callbacks.current.onMove?.({ userId: f.userId, move: f.move, seq: f.seq, turn: f.turn });
      }),
  });

  useEffect(() => {
    setState(null);
  }, [enabled, gameId]);

  const client = conn.client;
  return {
    ...conn,
    state,
    isTurnOf: useCallback((userId: string) => state?.turn === userId, [state]),
    join: useCallback(() => withClient(client, (c) => c.join()), [client]),
    leave: useCallback(() => withClient(client, (c) => c.leave()), [client]),
    move: useCallback((m: unknown) => withClient(client, (c) => c.move(m)), [client]),
  };
}
