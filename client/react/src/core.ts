// The lifecycle every hook shares: one SDK client per mounted hook, created in an effect and
// closed in its cleanup, started a microtask later so React StrictMode's mount → unmount →
// mount (which runs synchronously) opens exactly one socket.

import { createContext, createElement, useCallback, useContext, useEffect, useRef, useState, type ReactNode } from "react";
import type { ClientOptions, ReconnectingSocket, Status, StatusInfo } from "@edge-realtime/client";

/** The SDK's client options, with `baseUrl` optional (a {@link RealtimeProvider} can supply it). */
export type HookClientOptions = Omit<Partial<ClientOptions>, "autoStart"> & { baseUrl?: string };

/** `idle`: not enabled (or not started yet); the rest are the SDK socket's statuses. */
export type HookStatus = "idle" | Status;

/** What every hook returns besides its protocol's own state and actions. */
export interface ConnectionState<C> {
  /** The socket's status: `idle` → `connecting` → `open` → `closed` (retrying) … or `stopped`. */
  status: HookStatus;
  /** Details of the last status (close code, reason, `retryInMs`, `stoppedBy`). */
  statusInfo: StatusInfo | null;
  isConnected: boolean;
  isConnecting: boolean;
  /** The last in-band `error` frame's message, or why the socket stopped; `null` once open again. */
  error: string | null;
  /** The last event sequence seen: what the next (re)connect resumes from (`?since=`). */
  lastSeq: number | undefined;
  /** Connect again (after `disconnect()`, a terminal close, or to force a fresh connection); resumes. */
  reconnect: () => void;
  /** Close the socket (1000) until `reconnect()`. */
  disconnect: () => void;
  /** The SDK client while mounted and enabled (for anything the hook does not wrap). */
  client: C | null;
}

const RealtimeContext = createContext<HookClientOptions>({});

/**
 * Defaults for every hook below it (typically `baseUrl` and `token`); a hook's own options
 * override them.
 */
export function RealtimeProvider(props: HookClientOptions & { children?: ReactNode }): ReactNode {
  const { children, ...options } = props;
  return createElement(RealtimeContext.Provider, { value: options }, children);
}

interface SdkClient {
  readonly socket: ReconnectingSocket;
  close(): void;
  onFrame(fn: (frame: { type: string; message?: unknown }) => void): () => void;
}

export interface LifecycleParams<C extends SdkClient> {
  enabled: boolean;
  /** Identity of the connection: a change closes the client and opens a new one. */
  key: string;
  options: HookClientOptions;
  /** Build the client (with `autoStart: false`); called in the effect with the merged options. */
  create: (options: ClientOptions) => C;
  /** Subscribe to the client; return what undoes it. Always the latest function is used. */
  attach: (client: C) => () => void;
}

/** Shared lifecycle; hooks add their protocol's state on top (see each hook). */
export function useRealtimeClient<C extends SdkClient>(params: LifecycleParams<C>): ConnectionState<C> {
  const context = useContext(RealtimeContext);
  const latest = useRef({ ...params, merged: { ...context, ...params.options } });
  latest.current = { ...params, merged: { ...context, ...params.options } };

  const [client, setClient] = useState<C | null>(null);
  const [status, setStatus] = useState<HookStatus>("idle");
  const [statusInfo, setStatusInfo] = useState<StatusInfo | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [lastSeq, setLastSeq] = useState<number | undefined>(undefined);
  const merged = latest.current.merged;
  const baseUrl = merged.baseUrl;

  useEffect(() => {
    if (!params.enabled) {
      setStatus("idle");
      setStatusInfo(null);
      return undefined;
    }
    const { merged: opts, create, attach } = latest.current;
    if (!opts.baseUrl) {
      setError("no baseUrl: pass it in the hook's options or a <RealtimeProvider>");
      return undefined;
    }
    let live = true;
    const tokenOption = opts.token;
    const c = create({
      ...opts,
      baseUrl: opts.baseUrl,
      autoStart: false,
      // The latest token (or provider) on every connect, without reconnecting on a new identity.
      token:
        tokenOption === undefined
          ? undefined
          : () => {
              const t = latest.current.merged.token;
              return typeof t === "function" ? t() : (t ?? null);
            },
      onStatus: (s, info) => {
        if (live) {
          setStatus(s);
          setStatusInfo(info);
          setLastSeq(c.socket.lastSeq);
          if (s === "open") setError(null);
          if (s === "stopped" && info.stoppedBy !== "client") {
            setError(`stopped: ${info.stoppedBy ?? "?"}${info.code ? ` (${info.code}${info.reason ? ` ${info.reason}` : ""})` : ""}`);
          }
        }
        latest.current.merged.onStatus?.(s, info);
      },
      onResync: (seq) => {
        if (live) setLastSeq(seq);
        latest.current.merged.onResync?.(seq);
      },
    });
    const detachFrames = c.onFrame((f) => {
      if (!live) return;
      setLastSeq(c.socket.lastSeq);
      if (f.type === "error") setError(typeof f.message === "string" ? f.message : "error");
    });
    const detach = attach(c);
    setClient(c);
    setError(null);
    setLastSeq(c.socket.lastSeq);
    queueMicrotask(() => {
      if (live) c.socket.start();
    });
    return () => {
      live = false;
      detach();
      detachFrames();
      c.close();
      setClient(null);
      setStatus("idle");
    };
    // `key` is the connection's identity; callbacks and tokens are read from `latest`.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [params.enabled, params.key, baseUrl]);

  const reconnect = useCallback(() => {
    if (!client) return;
    if (client.socket.status !== "stopped") client.socket.close(1000, "reconnect");
    client.socket.start();
  }, [client]);
  const disconnect = useCallback(() => client?.close(), [client]);

  return {
    status,
    statusInfo,
    isConnected: status === "open",
    isConnecting: status === "connecting",
    error,
    lastSeq,
    reconnect,
    disconnect,
    client,
  };
}

/** A stable callback that always calls the latest `fn` (so new closures never reconnect). */
export function useLatest<T>(value: T): { readonly current: T } {
  const ref = useRef(value);
  ref.current = value;
  return ref;
}

/** Run `fn` with the client, or reject if the hook is not connected to one (disabled/unmounted). */
export function withClient<C, R>(client: C | null, fn: (c: C) => R): Promise<R> {
  if (!client) return Promise.reject(new Error("not connected: the hook is disabled or unmounted"));
  try {
    return Promise.resolve(fn(client));
  } catch (err) {
    return Promise.reject(err);
  }
}

/** Stable JSON of option values that define a connection (part of a hook's `key`). */
export function keyOf(...parts: unknown[]): string {
  return JSON.stringify(parts);
}

/** Append with a cap (oldest dropped). */
export function capped<T>(list: T[], item: T, max: number): T[] {
  const next = list.length >= max ? list.slice(list.length - max + 1) : list.slice();
  next.push(item);
  return next;
}
