// Frames and plumbing shared by every protocol client.

import { decodeWith, frame, integer, optional, string, type FrameTable } from "../guards.js";
import { ReconnectingSocket, type SocketOptions } from "../socket.js";

/** In-band error: `{"type":"error","code","message"}` (chat's `rate_limited` adds `retryAfterMs`). */
export const errorFrame = frame("error", { code: string, message: string, retryAfterMs: optional(integer) });
/** Sent before a 4001 close after `logout_all` (any object the user is connected to). */
export const loggedOutFrame = frame("logged_out", {});
/** The auto-response to `{"type":"ping"}` (the socket consumes it; listed for completeness). */
export const pongFrame = frame("pong", {});
/** Events after `?since=` were pruned: reload state; live events follow. */
export const resyncFrame = frame("resync_required", { latestSeq: integer });

export interface ClientOptions extends Omit<SocketOptions, "url" | "onMessage" | "sequenceOf" | "baselineOf"> {
  /** The service: `https://realtime.example.com` (or `http://127.0.0.1:8787`; `ws(s)://` works too). */
  baseUrl: string;
  /** For the HTTP helpers; defaults to `globalThis.fetch`. */
  fetch?: typeof fetch;
}

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "HttpError";
  }
}

type Handler = (frame: never) => void;

/** A typed client over one {@link ReconnectingSocket}: subscribe by frame `type`. */
export abstract class TypedClient<F extends { type: string }> {
  readonly socket: ReconnectingSocket;
  private readonly handlers = new Map<string, Set<Handler>>();
  private readonly any = new Set<(frame: F) => void>();
  private readonly unknown = new Set<(frame: Record<string, unknown>) => void>();

  protected constructor(
    private readonly table: FrameTable,
    path: string,
    protected readonly options: ClientOptions,
    resume: Pick<SocketOptions, "sequenceOf" | "baselineOf"> = {},
  ) {
    this.socket = new ReconnectingSocket({
      ...options,
      ...resume,
      url: wsUrl(options.baseUrl, path),
      onMessage: (raw) => this.dispatch(raw),
    });
  }

  /** Call `fn` for every frame of this `type`; returns an unsubscribe function. */
  on<K extends F["type"]>(type: K, fn: (frame: Extract<F, { type: K }>) => void): () => void {
    const set = this.handlers.get(type) ?? new Set<Handler>();
    this.handlers.set(type, set);
    set.add(fn as Handler);
    return () => set.delete(fn as Handler);
  }

  /** Every decoded frame. */
  onFrame(fn: (frame: F) => void): () => void {
    this.any.add(fn);
    return () => this.any.delete(fn);
  }

  /** Frames that match none of this protocol's types (or whose fields don't match). */
  onUnknown(fn: (frame: Record<string, unknown>) => void): () => void {
    this.unknown.add(fn);
    return () => this.unknown.delete(fn);
  }

  /** Stop for good (the socket closes with 1000). */
  close(): void {
    this.socket.close();
  }

  /** Update client-side state before handlers run. */
  protected apply(_frame: F): void {}

  private dispatch(raw: Record<string, unknown>): void {
    const frame = decodeWith(this.table, raw) as F | undefined;
    if (!frame) {
      for (const fn of this.unknown) fn(raw);
      return;
    }
    this.apply(frame);
    for (const fn of this.handlers.get(frame.type) ?? []) (fn as (f: F) => void)(frame);
    for (const fn of this.any) fn(frame);
  }

  /** JSON over HTTP with the same token as the socket. Throws {@link HttpError} on non-2xx. */
  protected async http<T>(method: string, path: string, body?: unknown): Promise<T> {
    const provider = this.options.token;
    const token = typeof provider === "function" ? await provider() : provider;
    const doFetch = this.options.fetch ?? globalThis.fetch;
    const headers: Record<string, string> = {};
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const res = await doFetch(httpUrl(this.options.baseUrl, path), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = (await res.json().catch(() => null)) as { error?: { code?: string; message?: string } } | null;
    if (!res.ok) {
      throw new HttpError(res.status, json?.error?.code ?? "http_error", json?.error?.message ?? res.statusText);
    }
    return json as T;
  }
}

/** `http://host` → `ws://host/path` (`https` → `wss`). */
export function wsUrl(baseUrl: string, path: string): string {
  return baseUrl.replace(/\/+$/, "").replace(/^http(s?):/i, "ws$1:") + path;
}

export function httpUrl(baseUrl: string, path: string): string {
  return baseUrl.replace(/\/+$/, "").replace(/^ws(s?):/i, "http$1:") + path;
}

/** A query string from defined values (`?a=1&b=2`, or ""). */
export function query(params: Record<string, string | number | undefined>): string {
  const parts = Object.entries(params)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
  return parts.length ? `?${parts.join("&")}` : "";
}

let counter = 0;
/** A client message id, unique enough per user and object (time, counter, randomness). */
export function clientId(): string {
  counter = (counter + 1) % 1_000_000;
  return `${Date.now().toString(36)}-${counter.toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Encode a name for a path segment (names are `[A-Za-z0-9_.-]{1,64}`; the server 400s others). */
export function segment(name: string): string {
  return encodeURIComponent(name);
}
