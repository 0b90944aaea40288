// Channel participants (docs/channel.md): the full `participants` list and, above 100
// participants, the `participant_joined` / `participant_left` deltas — the pure reducer the
// client and `useChannel` share, and ChannelClient fed by a local `ws` server the test controls.
// (The real server's frames: tests/e2e `channel::participants_above_100_…`.)

import assert from "node:assert/strict";
import { after, test } from "node:test";
import { WebSocketServer, type WebSocket as ServerSocket } from "ws";

import { ChannelClient, applyParticipants, channelFrames, decodeChannelFrame, type ChannelFrame, type Participants } from "../src/index.js";

import { NodeWebSocket, waitFor } from "./support.js";

const crowd = (n: number) => Array.from({ length: n }, (_, i) => `u${String(i).padStart(3, "0")}`);
const list = (users: string[]): ChannelFrame => ({ type: "participants", users });
const none: Participants = { users: [], count: 0 };

test("applyParticipants: a list replaces, deltas add/remove one user in order, other frames change nothing", () => {
  const start = applyParticipants(none, list(crowd(101)));
  assert.deepEqual(start, { users: crowd(101), count: 101 });
  const joined = applyParticipants(start!, { type: "participant_joined", userId: "a-early", count: 102 });
  assert.deepEqual(joined?.users.slice(0, 2), ["a-early", "u000"], "kept sorted like the server's list");
  assert.equal(joined?.count, 102);
  assert.equal(joined?.users.length, 102);
  // Idempotent: a delta already reflected (e.g. after the connect list) adds nobody twice.
  assert.deepEqual(applyParticipants(joined!, { type: "participant_joined", userId: "a-early", count: 102 })?.users, joined?.users);
  const left = applyParticipants(joined!, { type: "participant_left", userId: "u050", count: 101 });
  assert.equal(left?.count, 101);
  assert.ok(!left?.users.includes("u050") && left?.users.includes("a-early"));
  // Back at 100 the server sends the list again: it replaces whatever was there.
  assert.deepEqual(applyParticipants(left!, list(crowd(100))), { users: crowd(100), count: 100 });
  assert.equal(applyParticipants(left!, { type: "typing", users: ["u001"] }), undefined);
  assert.equal(applyParticipants(left!, { type: "pong" }), undefined);
  // The caller's array is never mutated.
  const mine = ["b"];
  applyParticipants({ users: mine, count: 1 }, { type: "participant_joined", userId: "a", count: 2 });
  assert.deepEqual(mine, ["b"]);
});

test("decoders: the deltas are typed frames; a delta without count or with a non-string userId is unknown", () => {
  assert.ok(decodeChannelFrame({ type: "participant_joined", userId: "bob", count: 101 }, true));
  assert.ok(decodeChannelFrame({ type: "participant_left", userId: "bob", count: 101 }, true));
  assert.equal(decodeChannelFrame({ type: "participant_joined", userId: "bob" }), undefined);
  assert.equal(decodeChannelFrame({ type: "participant_left", userId: 7, count: 1 }), undefined);
  assert.ok("participant_joined" in channelFrames && "participant_left" in channelFrames);
});

test("ChannelClient: participants and participantCount follow the list, then the deltas, then the list again", async () => {
  const wss = new WebSocketServer({ port: 0, host: "127.0.0.1", handleProtocols: (p) => (p.has("bearer") ? "bearer" : false) });
  await new Promise<void>((ok) => wss.once("listening", () => ok()));
  const sockets: ServerSocket[] = [];
  wss.on("connection", (ws) => sockets.push(ws));
  after(() => {
    for (const c of wss.clients) c.terminate();
    wss.close();
  });
  const addr = wss.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;

  const ch = new ChannelClient("big", { baseUrl: `http://127.0.0.1:${port}`, token: "t", WebSocket: NodeWebSocket });
  const deltas: string[] = [];
  ch.on("participant_joined", (f) => deltas.push(`+${f.userId}:${f.count}`));
  ch.on("participant_left", (f) => deltas.push(`-${f.userId}:${f.count}`));
  const unknown: unknown[] = [];
  ch.onUnknown((f) => unknown.push(f));
  await waitFor(() => sockets.length === 1, "the channel socket");
  const server = sockets[0]!;
  const send = (f: object) => server.send(JSON.stringify(f));

  send({ type: "participants", users: crowd(101) });
  send({ type: "participant_joined", userId: "zed", count: 102 });
  send({ type: "participant_left", userId: "u000", count: 101 });
  send({ type: "participant_left", userId: "u001", count: 100 }); // not what the server sends at 100, but a delta is applied as is
  send({ type: "typing", users: ["zed"] });
  await waitFor(() => ch.typing.length === 1, "the frames in order");
  assert.deepEqual(deltas, ["+zed:102", "-u000:101", "-u001:100"]);
  assert.equal(ch.participantCount, 100);
  assert.deepEqual(ch.participants, [...crowd(101).slice(2), "zed"]);
  // The full list again replaces the set.
  send({ type: "participants", users: ["a", "b"] });
  await waitFor(() => ch.participantCount === 2, "the list");
  assert.deepEqual(ch.participants, ["a", "b"]);
  assert.deepEqual(unknown, []);
  ch.close();
});
