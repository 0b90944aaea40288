// Test harness: one real `wrangler dev` (workerd) per run, tokens minted with node:crypto,
// a TCP proxy the tests can cut to simulate dropped connections, and small helpers.

import { spawn, type ChildProcess } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

import { PING_FRAME, type ReconnectingSocket, type Timers, type WebSocketConstructor } from "../src/index.js";

/** The `ws` package as the client's WebSocket (Node 20 has no global WebSocket by default). */
export const NodeWebSocket = WebSocket as unknown as WebSocketConstructor;

/** Repository root (this file compiles to client/build-test/test/support.js). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

export function readSecret(): string {
  if (process.env.E2E_AUTH_SECRET) return process.env.E2E_AUTH_SECRET;
  for (const file of [".dev.vars", ".dev.vars.example"]) {
    try {
      const text = readFileSync(join(ROOT, file), "utf8");
      const line = text.split("\n").find((l) => l.startsWith("AUTH_SECRET="));
      if (line) return line.slice("AUTH_SECRET=".length).trim().replace(/^"|"$/g, "");
    } catch {
      // next
    }
  }
  throw new Error("no AUTH_SECRET: run `make setup`");
}

const b64url = (data: string | Buffer) => Buffer.from(data).toString("base64url");

/** An HS256 JWT, like `make token`. */
export function mintToken(sub: string, opts: { name?: string; roles?: string[]; iat?: number; ttl?: number } = {}): string {
  const iat = opts.iat ?? Math.floor(Date.now() / 1000);
  const claims: Record<string, unknown> = { sub, iat, exp: iat + (opts.ttl ?? 3600) };
  if (opts.name) claims.name = opts.name;
  if (opts.roles) claims.roles = opts.roles;
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", readSecret()).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** A unique name for users and objects, so tests never share state (or upgrade budgets). */
export function unique(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}

export function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = net.createServer();
    srv.once("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr ? ok(addr.port) : fail(new Error("no port"))));
    });
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Poll `cond` until it holds (or throw after `ms`). The default deadline is generous on
 * purpose: it only makes a slow (loaded) run slower, never a fast one.
 */
export async function waitFor(cond: () => boolean, what: string, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Real timers for a socket's `timers` option that also track what is scheduled: `pending` is
 * the number of timers neither fired nor cleared, `delays` every delay asked for, in order.
 * A stopped socket must have nothing pending (no retry, no heartbeat): that proves "it will not
 * reconnect" without waiting for a retry that should never come.
 */
export function trackedTimers(): { timers: Timers; delays: number[]; readonly pending: number } {
  const live = new Set<unknown>();
  const delays: number[] = [];
  const timers: Timers = {
    setTimeout: (fn, ms) => {
      delays.push(ms);
      const id: unknown = setTimeout(() => {
        live.delete(id);
        fn();
      }, ms);
      live.add(id);
      return id;
    },
    clearTimeout: (id) => {
      live.delete(id);
      clearTimeout(id as ReturnType<typeof setTimeout>);
    },
  };
  return {
    timers,
    delays,
    get pending() {
      return live.size;
    },
  };
}

/** What one tapped connection carried: pings the client sent, pongs it received. */
export interface TappedConnection {
  pings: number;
  pongs: number;
  readonly ws: WebSocket;
}

/**
 * A `ws` constructor for a client's `WebSocket` option that counts, per connection, the
 * `{"type":"ping"}` frames sent and the `pong`s received (the socket swallows pongs, so the
 * app never sees them). `connections` lists every connection in order; the last is current.
 */
export function wireTap(): { WebSocket: WebSocketConstructor; connections: TappedConnection[] } {
  const connections: TappedConnection[] = [];
  class Tapped extends WebSocket {
    private readonly tap: TappedConnection;
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols);
      const tap: TappedConnection = { pings: 0, pongs: 0, ws: this };
      this.tap = tap;
      connections.push(tap);
      this.on("message", (data, isBinary) => {
        if (isBinary) return;
        try {
          if ((JSON.parse(data.toString()) as { type?: unknown }).type === "pong") tap.pongs += 1;
        } catch {
          // not JSON: not a pong
        }
      });
    }
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    override send(data: any, ...rest: any[]): void {
      if (data === PING_FRAME) this.tap.pings += 1;
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      (super.send as (...a: any[]) => void)(data, ...rest);
    }
  }
  return { WebSocket: Tapped as unknown as WebSocketConstructor, connections };
}

/**
 * The sentinel that proves "nothing else arrived": send `{"type":"ping"}` on the socket's
 * current (open) connection and wait for its pong. Every frame the server sent before it
 * answered has then been delivered to the app (one connection is ordered), so a duplicate or a
 * stray frame would already be in what the test recorded. Pongs answer pings in order, so
 * heartbeat pings in between are counted too.
 */
export async function pingSentinel(socket: ReconnectingSocket, tap: { connections: TappedConnection[] }): Promise<void> {
  const conn = tap.connections.at(-1);
  if (!conn || socket.status !== "open" || conn.ws.readyState !== WebSocket.OPEN) {
    throw new Error(`sentinel needs an open connection (status ${socket.status})`);
  }
  if (!socket.send(PING_FRAME)) throw new Error("sentinel ping was queued, not sent");
  const want = conn.pings;
  await waitFor(() => conn.pongs >= want, "the pong answering the sentinel ping");
  if (tap.connections.at(-1) !== conn) throw new Error("the connection changed during the sentinel");
}

export interface Server {
  base: string;
  port: number;
  stop(): Promise<void>;
}

/**
 * Start `wrangler dev` like tests/e2e/support.rs does: own process group, fresh persistence
 * directory, free ports. The build runs first if needed, so allow minutes on a cold tree.
 */
export async function startWrangler(): Promise<Server> {
  const port = await freePort();
  const inspector = await freePort();
  const persist = mkdtempSync(join(tmpdir(), "er-client-"));
  const child: ChildProcess = spawn(
    "npx",
    ["wrangler", "dev", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspector),
      "--persist-to", persist, "--show-interactive-dev-session=false",
      // The demo page's one-click dev sign-in (POST /__dev/token) is tested here.
      "--var", "DEV_TOKENS:1"],
    { cwd: ROOT, detached: true, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, WRANGLER_SEND_METRICS: "false", CI: "true" } },
  );
  const log: string[] = [];
  const keep = (chunk: Buffer) => {
    log.push(chunk.toString());
    if (log.length > 200) log.shift();
    if (process.env.E2E_VERBOSE) process.stderr.write(chunk);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const base = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.pid && child.exitCode === null) {
      try {
        process.kill(-child.pid, "SIGTERM");
      } catch {
        // gone
      }
      const deadline = Date.now() + 5000;
      while (child.exitCode === null && child.signalCode === null && Date.now() < deadline) await sleep(50);
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        // gone
      }
    }
    rmSync(persist, { recursive: true, force: true });
  };
  // A cold tree compiles the whole worker first; on a busy 2-core machine that can take many
  // minutes. The deadline only bounds a run that would never become ready.
  const deadline = Date.now() + 1_800_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`wrangler dev exited (${child.exitCode}):\n${log.join("").slice(-4000)}`);
    try {
      const res = await fetch(`${base}/health`, { signal: AbortSignal.timeout(10_000) });
      if (res.ok) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`wrangler dev did not become ready:\n${log.join("").slice(-4000)}`);
    }
    await sleep(250);
  }
  return { base, port, stop };
}

/**
 * The server for this test process: `EDGE_BASE_URL` (set by test/run.ts, which starts one
 * wrangler for all files), else one started here and stopped when the process exits.
 */
let shared: Promise<{ base: string; port: number }> | undefined;
let owned: Server | undefined;
export function server(): Promise<{ base: string; port: number }> {
  shared ??= (async () => {
    const env = process.env.EDGE_BASE_URL;
    if (env) return { base: env, port: Number(new URL(env).port) };
    owned = await startWrangler();
    return owned;
  })();
  return shared;
}

/** Stop the server this process started, if any (register with node:test's `after`). */
export async function stopOwnServer(): Promise<void> {
  await owned?.stop();
}

/**
 * A TCP proxy in front of the server. `cut()` drops every connection (a network failure, not
 * a close handshake); while `refusing`, new connections are dropped at once; while `stalled`,
 * bytes are swallowed both ways (a half-open connection). `requests` logs each request line.
 */
export class Proxy {
  refusing = false;
  stalled = false;
  readonly requests: string[] = [];
  private readonly conns = new Set<net.Socket>();
  private srv: net.Server | undefined;
  port = 0;

  constructor(private readonly target: number) {}

  async start(): Promise<this> {
    this.srv = net.createServer((client) => {
      if (this.refusing) {
        client.destroy();
        return;
      }
      const upstream = net.connect(this.target, "127.0.0.1");
      this.conns.add(client);
      this.conns.add(upstream);
      let first = true;
      client.on("data", (d) => {
        if (first) {
          first = false;
          this.requests.push(d.toString("latin1").split("\r\n")[0] ?? "");
        }
        if (!this.stalled) upstream.write(d);
      });
      upstream.on("data", (d) => {
        if (!this.stalled) client.write(d);
      });
      const end = () => {
        client.destroy();
        upstream.destroy();
        this.conns.delete(client);
        this.conns.delete(upstream);
      };
      client.on("close", end);
      upstream.on("close", end);
      client.on("error", end);
      upstream.on("error", end);
    });
    await new Promise<void>((ok) => this.srv?.listen(0, "127.0.0.1", () => ok()));
    const addr = this.srv.address();
    this.port = typeof addr === "object" && addr ? addr.port : 0;
    return this;
  }

  get base(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Drop every open connection. */
  cut(): void {
    for (const c of this.conns) c.destroy();
    this.conns.clear();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((ok) => (this.srv ? this.srv.close(() => ok()) : ok()));
  }
}

/** JSON over HTTP with a bearer token. */
export async function api(base: string, token: string, method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, json };
}

/** A raw socket that records every parsed frame (for the frame round-trip tests). */
export class RawSocket {
  readonly frames: Record<string, unknown>[] = [];
  closed: { code: number; reason: string } | undefined;
  private readonly ws: WebSocket;

  private static readonly open_ = new Set<WebSocket>();

  /** Drop every raw socket still open (server-closed ones can linger half-closed for seconds). */
  static terminateAll(): void {
    for (const ws of RawSocket.open_) ws.terminate();
    RawSocket.open_.clear();
  }

  private constructor(ws: WebSocket) {
    this.ws = ws;
    RawSocket.open_.add(ws);
    ws.on("message", (data, isBinary) => {
      if (!isBinary) this.frames.push(JSON.parse(data.toString()) as Record<string, unknown>);
    });
    ws.on("close", (code, reason) => (this.closed = { code, reason: reason.toString() }));
  }

  static open(base: string, path: string, token: string): Promise<RawSocket> {
    // A handshake that never completes fails the test (after a generous minute), never hangs it.
    const ws = new WebSocket(base.replace(/^http/, "ws") + path, ["bearer", token], { handshakeTimeout: 60_000 });
    return new Promise((ok, fail) => {
      const raw = new RawSocket(ws);
      ws.once("open", () => ok(raw));
      ws.once("error", fail);
    });
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /** Wait for the first frame matching `pred` that arrived at or after index `from`. */
  async next(pred: (f: Record<string, unknown>) => boolean, what: string, from = 0): Promise<Record<string, unknown>> {
    let found: Record<string, unknown> | undefined;
    await waitFor(() => (found = this.frames.slice(from).find(pred)) !== undefined, what);
    return found as Record<string, unknown>;
  }

  async type(type: string, from = 0): Promise<Record<string, unknown>> {
    return this.next((f) => f.type === type, `a ${type} frame`, from);
  }

  close(): void {
    this.ws.close();
  }
}
