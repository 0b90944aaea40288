// The client against the real runtime (`wrangler dev`): reconnect, resume, terminal close,
// bounded queue, token refresh. Dropped connections go through a TCP proxy the test cuts.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  ChannelClient, ChatClient, CounterClient, QueueFullError, UserSessionClient,
  type ChatMessage, type CounterEvent, type Status, type StatusInfo,
} from "../src/index.js";
import { NodeWebSocket, Proxy, api, mintToken, pingSentinel, server, stopOwnServer, trackedTimers, unique, waitFor, wireTap } from "./support.js";

let base = "";
let port = 0;
before(async () => ({ base, port } = await server()));
after(stopOwnServer);

function recorder() {
  const statuses: [Status, StatusInfo][] = [];
  return { statuses, onStatus: (s: Status, i: StatusInfo) => statuses.push([s, i]) };
}

const fast = { backoff: { initialMs: 50, maxMs: 300 }, WebSocket: NodeWebSocket };

async function proxy(): Promise<Proxy> {
  const p = await new Proxy(port).start();
  after(() => p.close());
  return p;
}

function contiguous(seqs: number[]): boolean {
  return seqs.every((s, i) => i === 0 || s === (seqs[i - 1] as number) + 1);
}

test("reconnects after the server closes the socket (admin clear closes with 1000)", async () => {
  const user = unique("ann");
  const rec = recorder();
  const s = new UserSessionClient(user, "laptop", { baseUrl: base, token: mintToken(user), ...fast, onStatus: rec.onStatus });
  let initial = 0;
  s.on("initial_state", () => (initial += 1));
  await waitFor(() => initial === 1, "initial_state");
  s.joinGame("g1");
  await waitFor(() => s.state?.activeGames.includes("g1") === true, "game_joined");
  const cleared = await api(base, mintToken("ops", { roles: ["admin"] }), "POST", `/__user-session/clear?userId=${user}`);
  assert.equal(cleared.status, 200);
  await waitFor(() => initial === 2, "a second initial_state after reconnecting");
  s.close();
  const closed = rec.statuses.find(([st]) => st === "closed");
  assert.equal(closed?.[1].code, 1000);
  assert.deepEqual(s.state?.activeGames, []);
  assert.deepEqual(rec.statuses.map(([st]) => st), ["connecting", "open", "closed", "connecting", "open", "stopped"]);
});

test("an expired token is replaced by the provider on the next attempt", async () => {
  const user = unique("eve");
  let calls = 0;
  const token = () => (++calls === 1 ? mintToken(user, { iat: Math.floor(Date.now() / 1000) - 7200 }) : mintToken(user));
  const rec = recorder();
  const c = new CounterClient(unique("tok"), { baseUrl: base, token, ...fast, onStatus: rec.onStatus });
  await waitFor(() => c.value === 0, "snapshot with the fresh token");
  c.close();
  assert.equal(calls, 2);
  assert.deepEqual(rec.statuses.slice(0, 4).map(([st]) => st), ["connecting", "closed", "connecting", "open"]);
});

test("resume: a chat room after a dropped connection — nothing lost, nothing duplicated", async () => {
  const room = unique("room");
  const p = await proxy();
  const alice = unique("alice");
  const bob = unique("bob");
  const seen: ChatMessage[] = [];
  const tap = wireTap();
  const a = new ChatClient(room, { baseUrl: p.base, token: mintToken(alice), ...fast, WebSocket: tap.WebSocket });
  a.on("message", (f) => seen.push(f.message));
  await waitFor(() => seen.some((m) => m.content.endsWith("joined")), "alice's join");
  const b = new ChatClient(room, { baseUrl: base, token: mintToken(bob), ...fast });
  const bSeen: string[] = [];
  b.on("message", (f) => bSeen.push(f.message.content));
  for (const n of [1, 2, 3]) b.send(`m${n}`);
  await waitFor(() => seen.some((m) => m.content === "m3"), "m3 live");

  p.refusing = true;
  p.cut();
  await waitFor(() => a.socket.status !== "open", "alice disconnected");
  for (const n of [4, 5, 6, 7, 8]) b.send(`m${n}`);
  await waitFor(() => bSeen.includes("m8"), "bob's m8 echo");
  p.refusing = false;
  await waitFor(() => seen.some((m) => m.content === "m8"), "m8 after resuming");
  await pingSentinel(a.socket, tap); // anything sent before the pong (a duplicate) is in `seen` now
  a.close();
  b.close();

  const user = seen.filter((m) => m.kind === "user").map((m) => m.content);
  assert.deepEqual(user, ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8"]);
  const seqs = seen.map((m) => m.seq);
  assert.ok(contiguous(seqs), `gapless, no repeats: ${seqs.join(",")}`);
  const reconnect = p.requests.at(-1) ?? "";
  assert.match(reconnect, new RegExp(`since=${seqs[seen.findIndex((m) => m.content === "m3")]}\\b`), reconnect);
});

test("resume: a counter after a dropped connection — every event once, value exact", async () => {
  const name = unique("clicks");
  const p = await proxy();
  const user = unique("cy");
  const token = mintToken(user);
  const events: CounterEvent[] = [];
  const tap = wireTap();
  const c = new CounterClient(name, { baseUrl: p.base, token, ...fast, WebSocket: tap.WebSocket });
  for (const t of ["increment", "decrement", "setValue", "reset"] as const) c.on(t, (e) => events.push(e));
  await waitFor(() => c.value === 0, "snapshot");
  for (let i = 0; i < 3; i++) await api(base, token, "POST", `/api/counter/${name}/increment`, { amount: 1 });
  await waitFor(() => events.length === 3, "three live events");
  p.refusing = true;
  p.cut();
  await waitFor(() => c.socket.status !== "open", "disconnected");
  for (let i = 0; i < 5; i++) await api(base, token, "POST", `/api/counter/${name}/increment`, { amount: 2 });
  p.refusing = false;
  await waitFor(() => events.length >= 8, "the five missed events");
  await pingSentinel(c.socket, tap);
  c.close();
  assert.deepEqual(events.map((e) => e.seq), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal(c.value, 13);
  assert.equal(c.socket.lastSeq, 8);
  assert.match(p.requests.at(-1) ?? "", /since=3\b/);
});

test("resume: a channel from since=0, across a dropped connection, in sequence order", async () => {
  const id = unique("chan");
  const p = await proxy();
  const user = unique("dee");
  const token = mintToken(user);
  await api(base, token, "POST", `/api/channel/${id}/message`, { content: "before" });
  const seqs: number[] = [];
  const tap = wireTap();
  const ch = new ChannelClient(id, { baseUrl: p.base, token, since: 0, ...fast, WebSocket: tap.WebSocket });
  ch.on("message", (m) => seqs.push(m.sequence));
  await waitFor(() => seqs.length === 1, "replay of the first message");
  ch.send("live-1");
  await waitFor(() => seqs.length === 2, "live message");
  p.refusing = true;
  p.cut();
  await waitFor(() => ch.socket.status !== "open", "disconnected");
  for (let i = 0; i < 4; i++) await api(base, token, "POST", `/api/channel/${id}/message`, { content: `away-${i}`, id: `away-${i}` });
  // A retry of the same client id while away is stored once.
  await api(base, token, "POST", `/api/channel/${id}/message`, { content: "away-0", id: "away-0" });
  p.refusing = false;
  await waitFor(() => seqs.length >= 6, "the missed messages");
  await pingSentinel(ch.socket, tap);
  ch.close();
  assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6]);
});

test("resync_required is reported to the app and resets the resume point", async () => {
  const resyncs: number[] = [];
  const c = new CounterClient(unique("ahead"), {
    baseUrl: base, token: mintToken(unique("fay")), since: 50, ...fast, onResync: (n) => resyncs.push(n),
  });
  let frames = 0;
  c.on("resync_required", () => (frames += 1));
  await waitFor(() => resyncs.length === 1 && frames === 1, "resync_required");
  c.close();
  assert.deepEqual(resyncs, [0]);
  assert.equal(c.socket.lastSeq, 0);
});

test("logout_all: every socket of the user stops on 4001 and never reconnects", async () => {
  const user = unique("gus");
  let tokenCalls = 0;
  const token = () => {
    tokenCalls += 1;
    return mintToken(user);
  };
  const recS = recorder();
  const recC = recorder();
  const timersS = trackedTimers();
  const timersC = trackedTimers();
  const s = new UserSessionClient(user, "phone", { baseUrl: base, token, ...fast, onStatus: recS.onStatus, timers: timersS.timers });
  const c = new CounterClient(unique("gus-counter"), { baseUrl: base, token, ...fast, onStatus: recC.onStatus, timers: timersC.timers });
  let loggedOut = 0;
  s.on("logged_out", () => (loggedOut += 1));
  c.on("logged_out", () => (loggedOut += 1));
  await waitFor(() => s.state !== undefined && c.value !== undefined, "both connected");
  s.logoutAll();
  await waitFor(() => s.socket.status === "stopped" && c.socket.status === "stopped", "both stopped")
    .catch((e) => { throw new Error(`${e} ${JSON.stringify([recS.statuses, recC.statuses])}`); });
  // No reconnect, proven without waiting for one: each socket connected once, never entered
  // a retry ("closed"), and has no timer left that could start one.
  assert.equal(tokenCalls, 2, "one connect per socket");
  for (const [rec, t] of [[recS, timersS], [recC, timersC]] as const) {
    assert.deepEqual(rec.statuses.map(([st]) => st), ["connecting", "open", "stopped"]);
    const last = rec.statuses.at(-1);
    assert.deepEqual([last?.[0], last?.[1].code, last?.[1].stoppedBy], ["stopped", 4001, "terminal_code"]);
    assert.equal(t.pending, 0, "no retry or heartbeat timer pending");
  }
  assert.equal(loggedOut, 2);
  assert.throws(() => c.increment(), { name: "SocketStoppedError" });
});

test("bounded send queue: the overflow throws, queued frames are delivered once connected", async () => {
  const name = unique("queued");
  const p = await proxy();
  p.refusing = true;
  const user = unique("hal");
  const c = new CounterClient(name, { baseUrl: p.base, token: mintToken(user), maxQueue: 5, ...fast });
  const acks: string[] = [];
  c.on("ack", (a) => a.id && acks.push(a.id));
  const ids = [1, 2, 3, 4, 5].map(() => c.increment(1));
  assert.equal(c.socket.queued, 5);
  assert.throws(() => c.increment(1), (e: unknown) => e instanceof QueueFullError && e.limit === 5);
  p.refusing = false;
  await waitFor(() => acks.length === 5, "five acks");
  c.close();
  assert.deepEqual(acks, ids);
  const now = await api(base, mintToken(user), "GET", `/api/counter/${name}`);
  assert.equal(now.json.value, 5);
});
