// ReconnectingSocket against a local `ws` server the test controls: heartbeat bytes, backoff
// bounds, terminal codes, half-open detection. (The real-runtime behaviour is in live.test.ts.)

import assert from "node:assert/strict";
import { after, test } from "node:test";
import { WebSocketServer, type WebSocket as ServerSocket } from "ws";

import { PING_FRAME, ReconnectingSocket, type Status, type StatusInfo } from "../src/index.js";
import { NodeWebSocket, freePort, sleep, waitFor } from "./support.js";

async function localServer(onConnection: (ws: ServerSocket, url: string, protocol: string | undefined) => void) {
  const port = await freePort();
  const wss = new WebSocketServer({ port, host: "127.0.0.1", handleProtocols: (p) => (p.has("bearer") ? "bearer" : false) });
  wss.on("connection", (ws, req) => onConnection(ws, req.url ?? "", req.headers["sec-websocket-protocol"]));
  after(() => {
    for (const c of wss.clients) c.terminate();
    wss.close();
  });
  return { url: `ws://127.0.0.1:${port}/x`, wss };
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
  const seen: { url: string; protocol: string | undefined }[] = [];
  const { url } = await localServer((ws, u, p) => {
    seen.push({ url: u, protocol: p });
    ws.send('{"type":"hello"}');
    setTimeout(() => ws.close(1012, "restart"), 10);
  });
  let n = 0;
  const a = new ReconnectingSocket({ url, WebSocket: NodeWebSocket, token: () => `t${++n}`, backoff: { initialMs: 5, maxMs: 5 } });
  await waitFor(() => seen.length >= 3, "three connects");
  a.close();
  assert.deepEqual(seen.slice(0, 3).map((s) => s.protocol?.split(",").map((p) => p.trim())), [["bearer", "t1"], ["bearer", "t2"], ["bearer", "t3"]]);
  seen.length = 0;
  const b = new ReconnectingSocket({ url, WebSocket: NodeWebSocket, token: async () => "a b", tokenTransport: "query" });
  await waitFor(() => seen.length >= 1, "a connect");
  b.close();
  assert.equal(seen[0]?.url, "/x?token=a%20b");
  assert.equal(seen[0]?.protocol, undefined);
});

test("backoff: full jitter within min(max, initial·2^(n−1)), capped", async () => {
  const port = await freePort(); // nothing listens: every attempt fails
  const rec = recorder();
  const s = new ReconnectingSocket({
    url: `ws://127.0.0.1:${port}/`, WebSocket: NodeWebSocket, random: () => 0.999, backoff: { initialMs: 4, maxMs: 20 }, onStatus: rec.onStatus,
  });
  await waitFor(() => rec.statuses.filter(([st]) => st === "closed").length >= 5, "five failures");
  s.close();
  const delays = rec.statuses.filter(([st]) => st === "closed").map(([, i]) => i.retryInMs);
  assert.deepEqual(delays.slice(0, 5), [3, 7, 15, 19, 19]);
});

test("terminal codes (4001, 4003, 1008, 1007) stop; 1000, 1009 and 1011 reconnect", async () => {
  for (const [code, terminal] of [[4001, true], [4003, true], [1008, true], [1007, true], [1000, false], [1009, false], [1011, false]] as const) {
    let connections = 0;
    const { url, wss } = await localServer((ws) => {
      connections += 1;
      ws.send('{"type":"hello"}');
      setTimeout(() => ws.close(code, "bye"), 5);
    });
    const rec = recorder();
    const s = new ReconnectingSocket({ url, WebSocket: NodeWebSocket, backoff: { initialMs: 5, maxMs: 5 }, onStatus: rec.onStatus });
    if (terminal) {
      await waitFor(() => s.status === "stopped", `stop on ${code}`);
      await sleep(100);
      assert.equal(connections, 1, `no reconnect after ${code}`);
      const last = rec.statuses.at(-1);
      assert.deepEqual([last?.[0], last?.[1].code, last?.[1].stoppedBy], ["stopped", code, "terminal_code"]);
      assert.throws(() => s.send({ type: "x" }), { name: "SocketStoppedError" });
    } else {
      await waitFor(() => connections >= 2, `reconnect after ${code}`);
      assert.equal(rec.statuses.find(([st]) => st === "closed")?.[1].code, code);
    }
    s.close();
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
