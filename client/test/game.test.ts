// GameClient against the real runtime: every server frame of the game protocol decodes exactly
// with the client's table, and a dropped connection resumes with `?since=` — every move once.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { GameClient, decodeGameFrame, gameFrames, gameStateResponse } from "../src/index.js";
import { NodeWebSocket, Proxy, RawSocket, api, mintToken, server, sleep, stopOwnServer, unique, waitFor } from "./support.js";

let base = "";
let port = 0;
before(async () => ({ base, port } = await server()));
after(async () => {
  RawSocket.terminateAll();
  await stopOwnServer();
});

const fast = { backoff: { initialMs: 50, maxMs: 300 }, WebSocket: NodeWebSocket };

test("every game frame decodes exactly with the client's table", async () => {
  const game = unique("gframes");
  const [a, b, c] = [unique("ga"), unique("gb"), unique("gc")];
  const sa = await RawSocket.open(base, `/api/game/${game}`, mintToken(a));
  const sb = await RawSocket.open(base, `/api/game/${game}`, mintToken(b));
  await sa.type("game_state");
  sa.send({ type: "join" });
  await sa.type("player_joined");
  sb.send({ type: "join" });
  await sb.next((f) => f.type === "player_joined" && (f.player as { userId: string }).userId === b, "b joined");
  sa.send({ type: "move", move: { cell: 4 }, id: "m1" });
  await sa.type("ack");
  sa.send({ type: "move", move: 1 });
  await sa.type("error");
  sb.send({ type: "leave" });
  await sa.type("player_left");
  const late = await RawSocket.open(base, `/api/game/${game}?since=99`, mintToken(c));
  await late.type("resync_required");
  const killer = await RawSocket.open(base, `/__user-session?userId=${a}&deviceId=killer`, mintToken(a));
  await killer.type("initial_state");
  killer.send({ type: "logout_all" });
  await sa.type("logged_out");
  const frames = [...sa.frames, ...sb.frames, ...late.frames];
  for (const f of frames) assert.ok(decodeGameFrame(f, true), `frame does not match the client's type: ${JSON.stringify(f)}`);
  const seen = new Set(frames.map((f) => f.type));
  assert.deepEqual(Object.keys(gameFrames).filter((t) => !seen.has(t) && t !== "pong"), []);
  const state = await api(base, mintToken(c), "GET", `/api/game/${game}/state`);
  assert.equal(state.status, 200);
  assert.ok(gameStateResponse.exact(state.json), JSON.stringify(state.json));
});

test("resume: a game after a dropped connection — every move once, state exact", async () => {
  const game = unique("gresume");
  const p = await new Proxy(port).start();
  after(() => p.close());
  const [a, b] = [unique("ra"), unique("rb")];
  const alice = new GameClient(game, { baseUrl: p.base, token: mintToken(a), ...fast });
  const bob = new GameClient(game, { baseUrl: base, token: mintToken(b), ...fast });
  const seqs: number[] = [];
  alice.on("moved", (m) => seqs.push(m.seq));
  await waitFor(() => alice.state !== undefined && bob.state !== undefined, "both game_state");
  alice.join();
  await waitFor(() => bob.state?.players.length === 1, "alice joined");
  bob.join();
  await waitFor(() => alice.state?.status === "playing", "playing");
  assert.ok(alice.isTurnOf(a));
  alice.move({ cell: 0 });
  await waitFor(() => bob.isTurnOf(b), "bob's turn");
  p.refusing = true;
  p.cut();
  await waitFor(() => alice.socket.status !== "open", "alice disconnected");
  const acks: number[] = [];
  bob.on("ack", (f) => acks.push(f.seq));
  bob.move({ cell: 4 }, "bob-1");
  await waitFor(() => acks.length === 1, "bob's ack");
  p.refusing = false;
  await waitFor(() => seqs.length === 2, "the missed move");
  assert.ok(alice.isTurnOf(a));
  alice.move({ cell: 8 });
  await waitFor(() => seqs.length === 3 && bob.state?.seq === 3, "a live move after the resume");
  await sleep(300);
  alice.close();
  bob.close();
  assert.deepEqual(seqs, [1, 2, 3]);
  assert.deepEqual(alice.state?.players.map((pl) => pl.score), [2, 1]);
  assert.match(p.requests.at(-1) ?? "", /since=1\b/);
  const fetched = await bob.fetchState();
  assert.deepEqual({ ...fetched, type: undefined }, { ...alice.state, type: undefined });
});
