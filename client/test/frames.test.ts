// Keeps the client's types from drifting: provoke every server frame type of every protocol on
// the real runtime, and require each raw frame to pass the typed decoder in `exact` mode (right
// field types AND no field the client doesn't know about).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  channelFrames, chatFrames, counterFrames, decodeChannelFrame, decodeChatFrame, decodeCounterFrame,
  decodeSessionFrame, decodeWaddleFrame, sessionFrames, waddleFrames,
} from "../src/index.js";
import { RawSocket, api, mintToken, server, stopOwnServer, unique } from "./support.js";

let base = "";
before(async () => ({ base } = await server()));
after(async () => {
  RawSocket.terminateAll();
  await stopOwnServer();
});

const admin = () => mintToken("ops", { roles: ["admin"] });
const PING = '{"type":"ping"}';

/** Every frame decodes exactly; every type of the table was seen. */
function roundTrip(frames: Record<string, unknown>[], decode: (v: unknown, exact: boolean) => unknown, table: object, skip: string[] = []) {
  for (const f of frames) {
    assert.ok(decode(f, true) !== undefined, `frame does not match the client's type: ${JSON.stringify(f)}`);
  }
  const seen = new Set(frames.map((f) => f.type));
  const missing = Object.keys(table).filter((t) => !seen.has(t) && !skip.includes(t));
  assert.deepEqual(missing, [], `frame types not provoked: ${missing.join(", ")}`);
}

/** Log `user` out everywhere from a fresh session socket (every other socket gets `logged_out`). */
async function logoutAll(user: string): Promise<RawSocket> {
  const s = await RawSocket.open(base, `/__user-session?userId=${user}&deviceId=killer`, mintToken(user));
  await s.type("initial_state");
  s.send({ type: "logout_all" });
  await s.type("logged_out");
  return s;
}

test("Counter: every server frame matches the typed decoder", async () => {
  const user = unique("cf");
  const name = unique("cnt");
  const t = mintToken(user);
  const ws = await RawSocket.open(base, `/ws/counter/${name}`, t);
  await ws.type("snapshot");
  ws.send({ type: "increment", amount: 2, id: "i1" });
  await ws.next((f) => f.type === "ack" && f.id === "i1", "ack i1");
  ws.send({ type: "decrement", amount: 1 });
  await ws.type("decrement");
  ws.send({ type: "setValue", value: 9007199254740991, id: "s1" });
  await ws.type("setValue");
  ws.send({ type: "increment", amount: 1, id: "overflow" });
  const err = await ws.type("error");
  assert.equal(err.code, "overflow");
  ws.send({ type: "reset" });
  await ws.type("reset");
  ws.send(PING);
  await ws.type("pong");
  const ahead = await RawSocket.open(base, `/ws/counter/${name}?since=999`, t);
  await ahead.type("resync_required");
  await logoutAll(user);
  await ws.type("logged_out");
  roundTrip([...ws.frames, ...ahead.frames], decodeCounterFrame, counterFrames);
  const ack = ws.frames.find((f) => f.type === "ack" && f.id === null);
  assert.ok(ack, "an ack without a client id has id null");
});

test("UserSession: every server frame matches the typed decoder", async () => {
  const user = unique("sf");
  const ws = await RawSocket.open(base, `/__user-session?userId=${user}&deviceId=d1`, mintToken(user));
  await ws.type("initial_state");
  ws.send({ type: "sync_state" });
  await ws.type("state");
  ws.send({ type: "join_game", gameId: "chess-1" });
  await ws.type("game_joined");
  ws.send({ type: "leave_game", gameId: "chess-1" });
  await ws.type("game_left");
  ws.send({ type: "update_presence", presence: "away" });
  await ws.type("presence_updated");
  ws.send({ type: "update_presence", presence: "asleep" });
  await ws.type("error");
  const notified = await api(base, admin(), "POST", `/__user-session/notify?userId=${user}`, { title: "hi", n: 1 });
  assert.equal(notified.status, 200);
  await ws.type("notification");
  ws.send(PING);
  await ws.type("pong");
  ws.send({ type: "logout_all" });
  await ws.type("logged_out");
  roundTrip(ws.frames, decodeSessionFrame, sessionFrames);
});

test("ChatRoom: every server frame matches the typed decoder", async () => {
  const user = unique("chf");
  const room = unique("room");
  const t = mintToken(user, { name: "Chat Frames" });
  const ws = await RawSocket.open(base, `/api/chat/${room}`, t);
  await ws.type("userCount");
  ws.send({ type: "message", content: "hello", id: "m1" });
  await ws.next((f) => f.type === "message" && (f.message as { kind?: string }).kind === "user", "a user message");
  ws.send({ type: "message", content: "   " });
  await ws.next((f) => f.type === "error" && f.code === "invalid_content", "invalid_content");
  // Over the per-connection limit (20 per 5 s by default): one rate_limited error (with retryAfterMs).
  for (let i = 0; i < 21; i++) ws.send({ type: "message", content: `burst ${i}` });
  const limited = await ws.next((f) => f.type === "error" && f.code === "rate_limited", "rate_limited");
  assert.ok(typeof limited.retryAfterMs === "number");
  ws.send(PING);
  await ws.type("pong");
  const ahead = await RawSocket.open(base, `/api/chat/${room}?since=99999`, t);
  await ahead.type("resync_required");
  await logoutAll(user);
  await ws.type("logged_out");
  roundTrip([...ws.frames, ...ahead.frames], decodeChatFrame, chatFrames);
  const history = await api(base, t, "GET", `/api/chat/${room}/messages?limit=5`);
  assert.equal(history.status, 200);
  const { chatHistory } = await import("../src/index.js");
  assert.ok(chatHistory.exact(history.json), JSON.stringify(history.json).slice(0, 300));
});

test("Channel: every server frame matches the typed decoder", async () => {
  const user = unique("cnf");
  const id = unique("chan");
  const t = mintToken(user);
  const ws = await RawSocket.open(base, `/ws/channel/${id}`, t);
  await ws.type("participants");
  ws.send({ type: "message", content: "one", id: "c1" });
  await ws.type("ack");
  await ws.type("message");
  ws.send({ type: "typing", isTyping: true });
  await ws.type("typing");
  ws.send({ type: "react", sequence: 1, emoji: "👍", on: true });
  const reaction = await ws.type("reaction");
  assert.equal(reaction.count, 1);
  ws.send({ type: "message", content: "" });
  await ws.type("error");
  ws.send({ type: "react", sequence: 1, emoji: "a", on: true });
  const badEmoji = await ws.next((f) => f.type === "error" && f.code === "invalid_emoji", "invalid_emoji");
  assert.ok(decodeChannelFrame(badEmoji, true));
  ws.send(PING);
  await ws.type("pong");
  const ahead = await RawSocket.open(base, `/ws/channel/${id}?since=999`, t);
  await ahead.type("resync_required");
  // A replayed message carries its reactions.
  const replay = await RawSocket.open(base, `/ws/channel/${id}?since=0`, t);
  const replayed = await replay.type("message");
  assert.deepEqual(replayed.reactions, { "👍": 1 });
  await logoutAll(user);
  await ws.type("logged_out");
  // The deltas need more than 100 participants: the next test.
  roundTrip([...ws.frames, ...ahead.frames, ...replay.frames], decodeChannelFrame, channelFrames, ["participant_joined", "participant_left"]);
  const live = ws.frames.find((f) => f.type === "message");
  assert.ok(live && !("reactions" in live), "a live message has no reactions field");
  const history = await api(base, t, "GET", `/api/channel/${id}/messages`);
  const { channelHistory } = await import("../src/index.js");
  assert.ok(channelHistory.exact(history.json), JSON.stringify(history.json));
  assert.deepEqual(history.json.messages[0]?.reactions, { "👍": 1 });
});

test("Channel above 100 participants: participant_joined / participant_left match the typed decoder", async () => {
  const id = unique("chbig");
  const observer = await RawSocket.open(base, `/ws/channel/${id}`, mintToken(unique("cobs")));
  await observer.type("participants");
  // 100 more users, 20 at a time (101 participants: the last join is a delta for the others) …
  const others: RawSocket[] = [];
  for (let batch = 0; batch < 5; batch++) {
    const opened = await Promise.all(Array.from({ length: 20 }, () => RawSocket.open(base, `/ws/channel/${id}`, mintToken(unique("cmember")))));
    await Promise.all(opened.map((s) => s.type("participants")));
    others.push(...opened);
  }
  // … and one more (102), who still gets the full list, then leaves again (101: a delta).
  const extra = await RawSocket.open(base, `/ws/channel/${id}`, mintToken(unique("cextra")));
  const list = await extra.type("participants");
  assert.equal((list.users as unknown[]).length, 102);
  assert.equal((await observer.next((f) => f.type === "participant_joined" && f.count === 102, "the 102nd join")).type, "participant_joined");
  extra.close();
  const left = await observer.type("participant_left");
  assert.equal(left.count, 101);
  for (const s of others) s.close();
  const types = new Set(observer.frames.map((f) => f.type));
  assert.ok(types.has("participants") && types.has("participant_joined") && types.has("participant_left"), [...types].join());
  for (const f of observer.frames) assert.ok(decodeChannelFrame(f, true), `frame does not match the client's type: ${JSON.stringify(f)}`);
});

test("Waddle: every server frame matches the typed decoder; admin broadcasts are not protocol frames", async () => {
  const user = unique("wf");
  const other = unique("wo");
  const id = unique("wad");
  const ws = await RawSocket.open(base, `/ws/waddle/${id}`, mintToken(user));
  await ws.type("presence_state");
  const ws2 = await RawSocket.open(base, `/ws/waddle/${id}`, mintToken(other));
  await ws.type("presence_update");
  ws2.send({ type: "typing", channelId: "general", isTyping: true });
  await ws.type("typing");
  ws.send({ type: "presence_update", status: "sleepy" });
  await ws.type("error");
  ws.send(PING);
  await ws.type("pong");
  const sent = await api(base, admin(), "POST", `/api/waddle/${id}/broadcast`, { type: "announcement", text: "hi" });
  assert.equal(sent.status, 200);
  const bcast = await ws.type("announcement");
  assert.equal(decodeWaddleFrame(bcast, false), undefined);
  await logoutAll(user);
  await ws.type("logged_out");
  ws2.close();
  const frames = [...ws.frames, ...ws2.frames].filter((f) => f.type !== "announcement");
  roundTrip(frames, decodeWaddleFrame, waddleFrames);
  const presence = await api(base, mintToken(other), "GET", `/api/waddle/${id}/presence`);
  const { waddlePresenceView } = await import("../src/index.js");
  assert.ok(waddlePresenceView.exact(presence.json), JSON.stringify(presence.json));
});

test("Counter history and view match the typed decoders", async () => {
  const user = unique("ch");
  const name = unique("hist");
  const t = mintToken(user);
  await api(base, t, "POST", `/api/counter/${name}/increment`, { amount: 3 });
  await api(base, t, "POST", `/api/counter/${name}/set`, { value: 10 });
  const history = await api(base, t, "GET", `/api/counter/${name}/history?limit=1`);
  const { counterHistory, counterMetadata } = await import("../src/index.js");
  assert.ok(counterHistory.exact(history.json), JSON.stringify(history.json));
  assert.equal(history.json.nextBefore, 2);
  const view = await api(base, t, "GET", `/api/counter/${name}`);
  assert.ok(counterMetadata.exact(view.json.metadata));
});
