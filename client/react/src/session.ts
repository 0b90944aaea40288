// useUserSession: design note 000's hook over UserSessionClient (`/__user-session`).

import { useCallback, useEffect, useRef, useState } from "react";
import { UserSessionClient, type SessionPresence, type SessionState } from "@edge-realtime/client";
import { keyOf, useLatest, useRealtimeClient, withClient, type ConnectionState, type HookClientOptions } from "./core.js";

export interface UseUserSessionOptions extends HookClientOptions {
  /** The signed-in user (the token's `sub`); `null`/`undefined` connects nothing. */
  userId: string | null | undefined;
  /** Default true; `false` closes the socket. */
  enabled?: boolean;
  /** This device's id. Default: one id per browser tab (kept in `sessionStorage`). */
  deviceId?: string;
  onGameJoined?: (gameId: string) => void;
  onGameLeft?: (gameId: string) => void;
  /** Another device (or this one) logged out every device: the socket stopped (4001). */
  onLoggedOut?: () => void;
  onPresenceUpdated?: (presence: SessionPresence) => void;
  /** Server-sent `notification` frames (any fields). */
  onNotification?: (frame: Record<string, unknown>) => void;
}

export interface UseUserSessionResult extends ConnectionState<UserSessionClient> {
  /** `{userId, activeGames, presence, lastActive, connectedDevices, devices}`; `null` until the first state. */
  state: SessionState | null;
  /** Enabled and no state yet (connecting). */
  isLoading: boolean;
  joinGame: (gameId: string) => Promise<void>;
  leaveGame: (gameId: string) => Promise<void>;
  /** Every device of the user is logged out (their sockets stop with 4001; the token is refused). */
  logoutAllDevices: () => Promise<void>;
  updatePresence: (presence: SessionPresence) => Promise<void>;
}

let tabDevice: string | undefined;
/** One device id per tab: survives reloads (sessionStorage), differs between tabs. */
export function defaultDeviceId(): string {
  if (tabDevice) return tabDevice;
  const fresh = `web-${Math.random().toString(36).slice(2, 10)}`;
  try {
    const store = (globalThis as { sessionStorage?: Storage }).sessionStorage;
    const saved = store?.getItem("edge-realtime:deviceId");
    tabDevice = saved && /^[A-Za-z0-9_.-]{1,64}$/.test(saved) ? saved : fresh;
    store?.setItem("edge-realtime:deviceId", tabDevice);
  } catch {
    tabDevice = fresh;
  }
  return tabDevice;
}

export function useUserSession(options: UseUserSessionOptions): UseUserSessionResult {
  const { userId, enabled = true, deviceId, onGameJoined, onGameLeft, onLoggedOut, onPresenceUpdated, onNotification, ...clientOptions } = options;
  const callbacks = useLatest({ onGameJoined, onGameLeft, onLoggedOut, onPresenceUpdated, onNotification });
  const [state, setState] = useState<SessionState | null>(null);
  const reported = useRef(false);
  const device = deviceId ?? defaultDeviceId();
  const on = enabled && !!userId;

  const conn = useRealtimeClient({
    enabled: on,
    key: keyOf(userId, device),
    options: clientOptions,
    create: (o) => new UserSessionClient(userId ?? "", device, o),
    attach: (c) => {
      reported.current = false;
      return c.onFrame((f) => {
        setState(c.state ?? null);
        const cb = callbacks.current;
        if (f.type === "game_joined") cb.onGameJoined?.(f.gameId);
        else if (f.type === "game_left") cb.onGameLeft?.(f.gameId);
        else if (f.type === "presence_updated") cb.onPresenceUpdated?.(f.presence);
        else if (f.type === "notification") cb.onNotification?.(f);
        else if (f.type === "logged_out" && !reported.current) {
          reported.current = true;
          cb.onLoggedOut?.();
        }
      });
    },
  });

  // A 4001 stop without the `logged_out` frame before it is a logout too: report it once.
  const loggedOutClose = conn.status === "stopped" && conn.statusInfo?.code === 4001;
  useEffect(() => {
    if (!loggedOutClose) return;
    setState(null);
    if (!reported.current) {
      reported.current = true;
      callbacks.current.onLoggedOut?.();
    }
  }, [loggedOutClose, callbacks]);

  useEffect(() => {
    if (!on) setState(null);
  }, [on, userId, device]);

  const client = conn.client;
  return {
    ...conn,
    state,
    isLoading: on && state === null && conn.status !== "stopped",
    joinGame: useCallback((gameId: string) => withClient(client, (c) => c.joinGame(gameId)), [client]),
    leaveGame: useCallback((gameId: string) => withClient(client, (c) => c.leaveGame(gameId)), [client]),
    logoutAllDevices: useCallback(() => withClient(client, (c) => c.logoutAll()), [client]),
    updatePresence: useCallback((p: SessionPresence) => withClient(client, (c) => c.updatePresence(p)), [client]),
  };
}
