// The reconnecting socket every typed client is built on: backoff with full jitter, terminal
// close codes, a bounded send queue, the `{"type":"ping"}` heartbeat, a token provider called
// on every (re)connect, and resume from the last sequence number seen (`?since=`).

/** What the socket needs from a WebSocket implementation (the browser's, or `ws` in Node). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onopen: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onmessage: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onclose: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onerror: ((event: any) => void) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** A token, or a function returning one (called before every connect). `null` stops the socket. */
export type TokenProvider = string | (() => string | null | Promise<string | null>);

export type Status = "connecting" | "open" | "closed" | "stopped";

export interface StatusInfo {
  /** Close code of the connection that just ended (`closed` / `stopped`). */
  code?: number;
  reason?: string;
  /** Consecutive failed attempts so far. */
  attempt: number;
  /** `closed`: when the next attempt starts. */
  retryInMs?: number;
  /**
   * `stopped`: why — the app closed it, a terminal close code (or the `logged_out` frame that
   * precedes 4001), no token, or too many attempts.
   */
  stoppedBy?: "client" | "terminal_code" | "no_token" | "max_attempts";
}

/**
 * Close codes after which the socket does not reconnect:
 * - 4001 logged out / token revoked (docs/protocol.md §5: never reconnect with the same token),
 * - 4003 forbidden,
 * - 1008 policy (unknown message type or repeated rate-limit violations: a client bug or abuse
 *   that reconnecting would only repeat),
 * - 1007 invalid data (the client sent malformed frames: a bug, not a network problem).
 * 1009 (frame too big) is NOT terminal: the offending frame is gone, the connection is fine.
 * 1000 from the server (e.g. an admin cleared the session) reconnects too.
 */
export const TERMINAL_CLOSE_CODES: readonly number[] = [4001, 4003, 1008, 1007];

/** The exact heartbeat frame the server's auto-response answers without waking the object. */
export const PING_FRAME = '{"type":"ping"}';
/** The runtime's auto-response to [`PING_FRAME`]. */
export const PONG_FRAME = '{"type":"pong"}';

export class QueueFullError extends Error {
  constructor(readonly limit: number) {
    super(`send queue is full (${limit} frames waiting for a connection)`);
    this.name = "QueueFullError";
  }
}

export class SocketStoppedError extends Error {
  constructor() {
    super("the socket is stopped; call start() to connect again");
    this.name = "SocketStoppedError";
  }
}

export interface BackoffOptions {
  /** First retry is within [0, initialMs). Default 500. */
  initialMs?: number;
  /** Upper bound of any delay. Default 30 000. */
  maxMs?: number;
  /** Growth per failed attempt. Default 2. */
  factor?: number;
}

/**
 * The timer functions the socket schedules retries and heartbeats with. They are called as
 * plain functions (not as methods), so `{ setTimeout, clearTimeout }` works in a browser too.
 */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(id: unknown): void;
}

export interface SocketOptions {
  /** WebSocket URL (`ws://` / `wss://`) with any query parameters except `token` and `since`. */
  url: string | (() => string);
  token?: TokenProvider;
  /** How the token travels: subprotocol pair `["bearer", jwt]` (default) or `?token=`. */
  tokenTransport?: "subprotocol" | "query";
  /** The WebSocket constructor; defaults to `globalThis.WebSocket` (browsers, Node ≥ 22). */
  WebSocket?: WebSocketConstructor;
  backoff?: BackoffOptions;
  /** Give up after this many consecutive failed attempts. Default: never. */
  maxAttempts?: number;
  /** Close codes that stop the socket. Default {@link TERMINAL_CLOSE_CODES}. */
  terminalCodes?: readonly number[];
  /** Frames kept while disconnected; `send` throws {@link QueueFullError} past it. Default 100. */
  maxQueue?: number;
  /** Send `{"type":"ping"}` this often while open (0: never). Default 25 000. */
  heartbeatMs?: number;
  /** No frame at all this long after a ping → drop the connection and reconnect. Default 10 000. */
  heartbeatTimeoutMs?: number;
  /** Resume: the sequence number of a persisted event, if the frame is one (else undefined). */
  sequenceOf?: (frame: Record<string, unknown>) => number | undefined;
  /** A frame giving the current position without being an event (counter `snapshot`). */
  baselineOf?: (frame: Record<string, unknown>) => number | undefined;
  /** Start from this sequence (first connect sends `?since=`). Default: live only. */
  since?: number;
  /** Connect in the constructor. Default true. */
  autoStart?: boolean;
  /** Randomness for the jitter (tests). Default Math.random. */
  random?: () => number;
  /**
   * Timers for the retry delay and the heartbeat (tests: count what is pending, or fake time).
   * Default `globalThis.setTimeout` / `clearTimeout`.
   */
  timers?: Timers;
  onStatus?: (status: Status, info: StatusInfo) => void;
  /** Every JSON object frame except `pong` and duplicates of already-seen events. */
  onMessage?: (frame: Record<string, unknown>) => void;
  /** `resync_required`: events after `since` were pruned; reload state, then live events follow. */
  onResync?: (latestSeq: number) => void;
  /** A frame that is not a JSON object (ignored otherwise). */
  onInvalidFrame?: (data: unknown) => void;
}

const OPEN = 1;

const globalTimers: Timers = {
  setTimeout: (fn, ms) => (globalThis as unknown as Timers).setTimeout(fn, ms),
  clearTimeout: (id) => (globalThis as unknown as Timers).clearTimeout(id),
};

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

export class ReconnectingSocket {
  private ws: WebSocketLike | null = null;
  private state: Status = "closed";
  private stopped = true;
  private attempt = 0;
  private queue: string[] = [];
  private retryTimer: unknown = null;
  private pingTimer: unknown = null;
  private pongTimer: unknown = null;
  private seq: number | undefined;
  /** Bumped on every connect/stop, so stale callbacks (old sockets, old token promises) do nothing. */
  private generation = 0;
  private readonly opts: SocketOptions;
  private readonly later: Timers["setTimeout"];
  private readonly cancel: Timers["clearTimeout"];

  constructor(options: SocketOptions) {
    this.opts = options;
    const { setTimeout: set, clearTimeout: clear } = options.timers ?? globalTimers;
    this.later = (fn, ms) => set(fn, ms);
    this.cancel = (id) => clear(id);
    this.seq = options.since;
    if (options.autoStart !== false) this.start();
  }

  get status(): Status {
    return this.state;
  }

  /** The last event sequence seen (what the next connect resumes from). */
  get lastSeq(): number | undefined {
    return this.seq;
  }

  /**
   * Resume from `seq` on the next connect: the app loaded state up to it some other way (e.g.
   * history over HTTP before `start()`, or a reload after `resync_required`).
   */
  resumeFrom(seq: number | undefined): void {
    this.seq = seq;
  }

  /** Frames waiting for a connection. */
  get queued(): number {
    return this.queue.length;
  }

  /** Connect (again): after a terminal close, after `close()`, or with `autoStart: false`. */
  start(): void {
    if (!this.stopped) return;
    if (!this.ctor()) {
      throw new Error("no WebSocket implementation: pass options.WebSocket (e.g. the `ws` package in Node 20)");
    }
    this.stopped = false;
    this.attempt = 0;
    void this.connect();
  }

  /** Stop for good (until `start()`): closes with 1000 and drops queued frames. */
  close(code = 1000, reason = "client closed"): void {
    this.queue = [];
    this.stop({ stoppedBy: "client", code, reason }, code, reason);
  }

  /**
   * Send a frame now, or queue it until the socket is open. Returns whether it was sent now.
   * Throws {@link QueueFullError} when `maxQueue` frames are already waiting, and
   * {@link SocketStoppedError} after the socket stopped.
   */
  send(frame: string | object): boolean {
    if (this.stopped) throw new SocketStoppedError();
    const text = typeof frame === "string" ? frame : JSON.stringify(frame);
    if (this.ws && this.state === "open" && this.ws.readyState === OPEN) {
      this.ws.send(text);
      return true;
    }
    const limit = this.opts.maxQueue ?? 100;
    if (this.queue.length >= limit) throw new QueueFullError(limit);
    this.queue.push(text);
    return false;
  }

  private ctor(): WebSocketConstructor | undefined {
    return this.opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  }

  private emit(status: Status, info: Omit<StatusInfo, "attempt"> = {}): void {
    this.state = status;
    this.opts.onStatus?.(status, { attempt: this.attempt, ...info });
  }

  private url(token: string | null): string {
    const base = typeof this.opts.url === "function" ? this.opts.url() : this.opts.url;
    const params: string[] = [];
    if (this.seq !== undefined) params.push(`since=${this.seq}`);
    if (token !== null && this.opts.tokenTransport === "query") params.push(`token=${encodeURIComponent(token)}`);
    if (params.length === 0) return base;
    return base + (base.includes("?") ? "&" : "?") + params.join("&");
  }

  private async connect(): Promise<void> {
    const gen = ++this.generation;
    this.emit("connecting");
    let token: string | null = null;
    try {
      const provider = this.opts.token;
      token = typeof provider === "function" ? await provider() : (provider ?? null);
      if (provider !== undefined && token === null) {
        if (gen === this.generation) this.stop({ stoppedBy: "no_token" });
        return;
      }
    } catch (err) {
      if (gen === this.generation) this.retry({ reason: `token provider failed: ${String(err)}` });
      return;
    }
    if (gen !== this.generation || this.stopped) return;

    const Ctor = this.ctor();
    if (!Ctor) return; // checked in start()
    let ws: WebSocketLike;
    try {
      const protocols = token !== null && this.opts.tokenTransport !== "query" ? ["bearer", token] : undefined;
      ws = protocols ? new Ctor(this.url(token), protocols) : new Ctor(this.url(token));
    } catch (err) {
      this.retry({ reason: `cannot connect: ${String(err)}` });
      return;
    }
    this.ws = ws;
    let greeted = false;
    ws.onopen = () => {
      if (gen !== this.generation) return;
      // Flush before telling the app, so frames it sends from onStatus("open") stay in order.
      this.state = "open";
      const pending = this.queue;
      this.queue = [];
      for (const text of pending) ws.send(text);
      // A first frame right away. Under workerd, until a client has sent anything on a
      // hibernatable socket, a close the server makes from another event (logout_all's 4001,
      // the heartbeat sweep) delivers its Close frame but leaves the TCP open until the object
      // is evicted (~10 s): `close` would fire that late (docs/protocol.md §2 "Closing").
      if (pending.length === 0 && (this.opts.heartbeatMs ?? 25_000) > 0) ws.send(PING_FRAME);
      this.armHeartbeat(gen);
      this.emit("open");
    };
    ws.onmessage = (event: { data: unknown }) => {
      if (gen !== this.generation) return;
      if (!greeted && event.data !== PONG_FRAME) {
        // The server greets every accepted socket; only then is the backoff reset, so a
        // server that accepts and immediately closes doesn't get hammered. (The runtime's
        // answer to the opening ping is not a greeting.)
        greeted = true;
        this.attempt = 0;
      }
      this.alive(gen);
      this.receive(event.data);
    };
    ws.onclose = (event: { code?: number; reason?: string }) => {
      if (gen !== this.generation) return;
      this.ws = null;
      this.clearHeartbeat();
      const code = event.code ?? 1006;
      const reason = event.reason ?? "";
      if ((this.opts.terminalCodes ?? TERMINAL_CLOSE_CODES).includes(code)) {
        this.stop({ stoppedBy: "terminal_code", code, reason });
      } else {
        this.retry({ code, reason });
      }
    };
    ws.onerror = () => {
      // A close event always follows; that is where we decide what to do.
    };
  }

  private receive(data: unknown): void {
    let frame: unknown;
    try {
      frame = typeof data === "string" ? JSON.parse(data) : undefined;
    } catch {
      frame = undefined;
    }
    if (!isRecord(frame)) {
      this.opts.onInvalidFrame?.(data);
      return;
    }
    if (frame.type === "pong") return;
    if (frame.type === "resync_required" && Number.isSafeInteger(frame.latestSeq)) {
      this.seq = frame.latestSeq as number;
      this.opts.onResync?.(this.seq);
    }
    const seq = this.opts.sequenceOf?.(frame);
    if (seq !== undefined) {
      if (this.seq !== undefined && seq <= this.seq) return; // already delivered
      this.seq = seq;
    } else if (this.seq === undefined) {
      this.seq = this.opts.baselineOf?.(frame);
    }
    this.opts.onMessage?.(frame);
    if (frame.type === "logged_out") {
      // The server closes with 4001 right after this frame, but the TCP close that makes the
      // close event fire can lag by seconds; stop now so nothing is sent or retried meanwhile.
      const ws = this.ws;
      this.stop({ stoppedBy: "terminal_code", code: 4001, reason: "logged out" }, 1000, "logged out");
      // Node's `ws` would keep the half-closed connection (and the process) alive until that
      // TCP close; browsers have no terminate() and drop it themselves.
      (ws as { terminate?: () => void } | null)?.terminate?.();
    }
  }

  private retry(info: { code?: number; reason?: string }): void {
    if (this.stopped) return;
    this.attempt += 1;
    const max = this.opts.maxAttempts ?? Infinity;
    if (this.attempt >= max) {
      this.stop({ stoppedBy: "max_attempts", ...info });
      return;
    }
    const delay = this.delay(this.attempt);
    this.emit("closed", { ...info, retryInMs: delay });
    const gen = this.generation;
    this.retryTimer = this.later(() => {
      this.retryTimer = null;
      if (gen === this.generation && !this.stopped) void this.connect();
    }, delay);
  }

  /** Full jitter: uniform in [0, min(max, initial · factor^(attempt−1))). */
  private delay(attempt: number): number {
    const b = this.opts.backoff ?? {};
    const initial = b.initialMs ?? 500;
    const cap = b.maxMs ?? 30_000;
    const ceiling = Math.min(cap, initial * Math.pow(b.factor ?? 2, attempt - 1));
    return Math.floor((this.opts.random ?? Math.random)() * ceiling);
  }

  private stop(info: Omit<StatusInfo, "attempt">, code = 1000, reason = "client closed"): void {
    const wasStopped = this.stopped;
    this.stopped = true;
    this.generation += 1;
    this.clearHeartbeat();
    if (this.retryTimer !== null) this.cancel(this.retryTimer);
    this.retryTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      detach(ws);
      try {
        ws.close(code, reason);
      } catch {
        // already closing
      }
    }
    if (!wasStopped || this.state !== "stopped") this.emit("stopped", info);
  }

  /**
   * Ping every `heartbeatMs` while open, whatever else arrives: the server counts only pings as
   * proof of life (its heartbeat sweep closes sockets that have not pinged for
   * `HEARTBEAT_TIMEOUT_MS`, default 90 s), so a socket that only receives must still ping.
   */
  private armHeartbeat(gen: number): void {
    const every = this.opts.heartbeatMs ?? 25_000;
    if (every <= 0) return;
    this.clearHeartbeat();
    const tick = () => {
      if (gen !== this.generation || !this.ws) return;
      try {
        this.ws.send(PING_FRAME);
      } catch {
        return;
      }
      if (this.pongTimer === null) {
        this.pongTimer = this.later(() => this.dead(gen), this.opts.heartbeatTimeoutMs ?? 10_000);
      }
      this.pingTimer = this.later(tick, every);
    };
    this.pingTimer = this.later(tick, every);
  }

  /** Any frame proves the connection alive: cancel the pending "no answer" timeout. */
  private alive(_gen: number): void {
    if (this.pongTimer !== null) this.cancel(this.pongTimer);
    this.pongTimer = null;
  }

  /** No answer to a ping: a half-open connection. Drop it without waiting for a close handshake. */
  private dead(gen: number): void {
    if (gen !== this.generation || !this.ws) return;
    const ws = this.ws;
    this.ws = null;
    detach(ws);
    try {
      ws.close(4000, "heartbeat timeout");
    } catch {
      // ignore
    }
    this.clearHeartbeat();
    this.generation += 1;
    this.retry({ code: 1006, reason: "heartbeat timeout" });
  }

  private clearHeartbeat(): void {
    if (this.pingTimer !== null) this.cancel(this.pingTimer);
    if (this.pongTimer !== null) this.cancel(this.pongTimer);
    this.pingTimer = null;
    this.pongTimer = null;
  }
}

function detach(ws: WebSocketLike): void {
  ws.onopen = null;
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = () => {};
}
