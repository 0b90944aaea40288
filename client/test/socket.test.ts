// ReconnectingSocket against a local `ws` server the test controls: heartbeat bytes, backoff
// bounds, terminal codes, half-open detection. (The real-runtime behaviour is in live.test.ts.)

import assert from "node:assert/strict";
import { after, test } from "node:test";
import { WebSocketServer, type WebSocket as ServerSocket } from "ws";

import { PING_FRAME, ReconnectingSocket, type Status, type StatusInfo } from "../src/index.js";
import net from "node:net";

import { NodeWebSocket, trackedTimers, waitFor } from "./support.js";

/** A `ws` server on an OS-assigned port (listening before this returns), closed after the test. */
async function localServer(onConnection: (ws: ServerSocket, url: string, protocol: string | undefined) => void) {
  const wss = new WebSocketServer({ port: 0, host: "127.0.0.1", handleProtocols: (p) => (p.has("bearer") ? "bearer" : false) });
  await new Promise<void>((ok) => wss.once("listening", () => ok()));
  wss.on("connection", (ws, req) => onConnection(ws, req.url ?? "", req.headers["sec-websocket-protocol"]));
  after(() => {
    for (const c of wss.clients) c.terminate();
    wss.close();
  });
  const addr = wss.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  return { url: `ws://127.0.0.1:${port}/x`, wss };
}

/**
 * A TCP server that drops every connection at once: each connect attempt fails (1006) for
 * sure, unlike a "free" port another process on the machine may start listening on.
 */
async function droppingServer(): Promise<string> {
  const srv = net.createServer((c) => c.destroy());
  await new Promise<void>((ok) => srv.listen(0, "127.0.0.1", () => ok()));
  after(() => srv.close());
  const addr = srv.address();
  return `ws://127.0.0.1:${typeof addr === "object" && addr ? addr.port : 0}/`;
}

function recorder() {
  const statuses: [Status, StatusInfo][] = [];
  return { statuses, onStatus: (s: Status, i: StatusInfo) => statuses.push([s, i]) };
}

test("heartbeat sends exactly {\"type\":\"ping\"}, and pong is not passed to the app", async () => {
  const received: string[] = [];
  const { url } = await localServer((ws) => {
    ws.on("message", (d) => {
      received.push(d.toString());
      if (d.toString() === PING_FRAME) ws.send('{"type":"pong"}');
    });
  });
  const frames: unknown[] = [];
  const s = new ReconnectingSocket({ url, WebSocket: NodeWebSocket, heartbeatMs: 50, onMessage: (f) => frames.push(f) });
  await waitFor(() => received.length >= 3, "three pings");
  s.close();
  assert.deepEqual(received.slice(0, 3), [PING_FRAME, PING_FRAME, PING_FRAME]);
  assert.equal(PING_FRAME, '{"type":"ping"}');
  assert.deepEqual(frames, []);
});

test("the first ping goes out as soon as the socket opens, not a heartbeat later", async () => {
  const received: string[] = [];
  const { url } = await localServer((ws) => {
    ws.on("message", (d) => received.push(d.toString()));
  });
  // A heartbeat an hour away: only the opening ping can arrive.
  const s = new ReconnectingSocket({ url, WebSocket: NodeWebSocket, heartbeatMs: 3_600_000 });
  await waitFor(() => received.length >= 1, "the opening ping");
  s.close();
  assert.deepEqual(received, [PING_FRAME]);
});

test("with frames queued before open, those go first and no extra ping is sent", async () => {
  const received: string[] = [];
  const { url } = await localServer((ws) => {
    ws.on("message", (d) => received.push(d.toString()));
  });
  const s = new ReconnectingSocket({ url, WebSocket: NodeWebSocket, heartbeatMs: 3_600_000 });
  s.send({ type: "hello" });
  await waitFor(() => received.length >= 1, "the queued frame");
  // The sentinel: a frame sent after the first one arrives after it, so nothing came between.
  s.send({ type: "sentinel" });
  await waitFor(() => received.length >= 2, "the sentinel");
  s.close();
  assert.deepEqual(received, ['{"type":"hello"}', '{"type":"sentinel"}']);
});

test("a socket that keeps receiving frames still pings every heartbeatMs (the server counts only pings)", async () => {
  let pings = 0;
  const { url } = await localServer((ws) => {
    // A frame every 5 ms: far more often than the heartbeat interval.
    const flood = setInterval(() => ws.readyState === ws.OPEN && ws.send('{"type":"tick"}'), 5);
    ws.on("close", () => clearInterval(flood));
    ws.on("message", (d) => {
      if (d.toString() === PING_FRAME) {
        pings += 1;
        ws.send('{"type":"pong"}');
      }
    });
  });
  let ticks = 0;
  const s = new ReconnectingSocket({ url, WebSocket: NodeWebSocket, heartbeatMs: 200, onMessage: () => (ticks += 1) });
  await waitFor(() => pings >= 3, "three pings while frames keep arriving");
  s.close();
  assert.ok(ticks > 3, `frames kept arriving (${ticks})`);
});

test("a silent (half-open) connection is dropped after the heartbeat timeout and reconnected", async () => {
  let connections = 0;
  const { url } = await localServer(() => {
    connections += 1; // never answers anything
  });
  const rec = recorder();
  const s = new ReconnectingSocket({
    url, WebSocket: NodeWebSocket, heartbeatMs: 50, heartbeatTimeoutMs: 100, backoff: { initialMs: 10, maxMs: 10 }, onStatus: rec.onStatus,
  });
  await waitFor(() => connections >= 2, "a second connection");
  s.close();
  const closed = rec.statuses.find(([st]) => st === "closed");
  assert.equal(closed?.[1].reason, "heartbeat timeout");
});

test("the token provider is called on every connect; subprotocol or query transport", async () => {
  // Each part has its own server: a reconnect of the first socket still in flight when it is
  // closed can only ever land on the first server's list.
  const seenA: { url: string; protocol: string | undefined }[] = [];
  const { url: urlA } = await localServer((ws, u, p) => {
    seenA.push({ url: u, protocol: p });
    ws.send('{"type":"hello"}');
    ws.close(1012, "restart");
  });
  let n = 0;
  const a = new ReconnectingSocket({ url: urlA, WebSocket: NodeWebSocket, token: () => `t${++n}`, backoff: { initialMs: 5, maxMs: 5 } });
  await waitFor(() => seenA.length >= 3, "three connects");
  a.close();
  // Connects are strictly sequential (the next starts after the previous closed), so the first
  // three are the first three tokens, in order.
  assert.deepEqual(seenA.slice(0, 3).map((s) => s.protocol?.split(",").map((p) => p.trim())), [["bearer", "t1"], ["bearer", "t2"], ["bearer", "t3"]]);
  assert.ok(seenA.slice(0, 3).every((s) => s.url === "/x"), "no token in the URL with the subprotocol transport");

  const seenB: { url: string; protocol: string | undefined }[] = [];
  const { url: urlB } = await localServer((ws, u, p) => {
    seenB.push({ url: u, protocol: p });
    ws.send('{"type":"hello"}');
  });
  const b = new ReconnectingSocket({ url: urlB, WebSocket: NodeWebSocket, token: async () => "a b", tokenTransport: "query" });
  await waitFor(() => seenB.length >= 1 && b.status === "open", "a connect");
  b.close();
  assert.equal(seenB.length, 1);
  assert.equal(seenB[0]?.url, "/x?token=a%20b");
  assert.equal(seenB[0]?.protocol, undefined);
});

test("backoff: full jitter within min(max, initial·2^(n−1)), capped", async () => {
  // Computed values only: the jitter source is injected and every delay is read back from what
  // was reported and what was scheduled, never measured on the wall clock.
  const url = await droppingServer(); // every attempt fails
  for (const [r, want] of [[0.999, [3, 7, 15, 19, 19]], [0.5, [2, 4, 8, 10, 10]], [0, [0, 0, 0, 0, 0]]] as const) {
    const rec = recorder();
    const t = trackedTimers();
    const s = new ReconnectingSocket({
      url, WebSocket: NodeWebSocket, random: () => r, backoff: { initialMs: 4, maxMs: 20 }, onStatus: rec.onStatus, timers: t.timers, heartbeatMs: 0,
    });
    await waitFor(() => rec.statuses.filter(([st]) => st === "closed").length >= 5, "five failures");
    s.close();
    const closed = rec.statuses.filter(([st]) => st === "closed").slice(0, 5);
    assert.deepEqual(closed.map(([, i]) => i.retryInMs), want, `random ${r}`);
    assert.deepEqual(closed.map(([, i]) => i.attempt), [1, 2, 3, 4, 5], "consecutive failures count up");
    assert.deepEqual(t.delays.slice(0, 5), want, `random ${r}: the retry timers use the reported delays`);
    assert.equal(t.pending, 0, "close() cancels the pending retry");
  }
});

test("terminal codes (4001, 4003, 1008, 1007) stop; 1000, 1009 and 1011 reconnect", async () => {
  for (const [code, terminal] of [[4001, true], [4003, true], [1008, true], [1007, true], [1000, false], [1009, false], [1011, false]] as const) {
    let connections = 0;
    const { url, wss } = await localServer((ws) => {
      connections += 1;
      ws.send('{"type":"hello"}');
      ws.close(code, "bye"); // after the hello: one connection is ordered
    });
    const rec = recorder();
    const t = trackedTimers();
    const s = new ReconnectingSocket({ url, WebSocket: NodeWebSocket, backoff: { initialMs: 5, maxMs: 5 }, onStatus: rec.onStatus, timers: t.timers });
    if (terminal) {
      await waitFor(() => s.status === "stopped", `stop on ${code}`);
      // No reconnect, proven without waiting for one: a reconnect needs a retry ("closed",
      // then a timer) or a new "connecting"; there is neither, and no timer is pending at all.
      assert.deepEqual(rec.statuses.map(([st]) => st), ["connecting", "open", "stopped"], `statuses after ${code}`);
      assert.equal(t.pending, 0, `nothing scheduled after ${code}`);
      assert.equal(connections, 1, `no reconnect after ${code}`);
      const last = rec.statuses.at(-1);
      assert.deepEqual([last?.[0], last?.[1].code, last?.[1].stoppedBy], ["stopped", code, "terminal_code"]);
      assert.throws(() => s.send({ type: "x" }), { name: "SocketStoppedError" });
    } else {
      await waitFor(() => connections >= 2, `reconnect after ${code}`);
      assert.equal(rec.statuses.find(([st]) => st === "closed")?.[1].code, code);
    }
    s.close();
    assert.equal(t.pending, 0, "close() leaves nothing scheduled");
    for (const c of wss.clients) c.terminate();
    wss.close();
  }
});

test("a token provider returning null stops the socket", async () => {
  const rec = recorder();
  const s = new ReconnectingSocket({ url: "ws://127.0.0.1:9/", WebSocket: NodeWebSocket, token: () => null, onStatus: rec.onStatus });
  await waitFor(() => s.status === "stopped", "stop");
  assert.equal(rec.statuses.at(-1)?.[1].stoppedBy, "no_token");
});

test("without any WebSocket implementation, start() throws at once", () => {
  const g = globalThis as { WebSocket?: unknown };
  const saved = g.WebSocket; // Node ≥ 22 has a global one
  delete g.WebSocket;
  try {
    assert.throws(() => new ReconnectingSocket({ url: "ws://127.0.0.1:9/" }), /no WebSocket implementation/);
  } finally {
    if (saved !== undefined) g.WebSocket = saved;
  }
});
