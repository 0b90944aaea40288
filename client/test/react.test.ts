// The React hooks (client/react, @edge-realtime/react) in Debian's headless chromium: a real
// React 19 page bundled with esbuild (client/react/build-test, built by `npm test`) served from
// a local http server on 127.0.0.1, against the run's `wrangler dev`. The page counts
// WebSockets per path by wrapping the browser's constructor; closes are proven on the server
// (the session's connectedDevices, a chat room's userCount, a channel's participants) as seen
// by a second user's raw socket or the HTTP API. Every wait is for a state, with a deadline.

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import http from "node:http";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { type Browser, type Page } from "playwright-core";

import { launchChromium } from "./chromium.js";
import { RawSocket, ROOT, api, mintToken, server, stopOwnServer, unique } from "./support.js";

const WAIT = 60_000;
const PAGE_DIR = join(ROOT, "client", "react", "build-test");

let base = "";
let browser: Browser | undefined;
let pages: http.Server | undefined;
let pageUrl = "";

before(async () => {
  ({ base } = await server());
  assert.ok(existsSync(join(PAGE_DIR, "page.js")), "client/react/build-test/page.js missing: `npm test` builds it (npm run build:react)");
  pages = http.createServer((req, res) => {
    const file = req.url === "/page.js" ? "page.js" : "index.html";
    res.writeHead(200, { "content-type": file.endsWith(".js") ? "text/javascript" : "text/html" });
    res.end(readFileSync(join(PAGE_DIR, file)));
  });
  await new Promise<void>((ok) => pages?.listen(0, "127.0.0.1", () => ok()));
  const addr = pages.address();
  pageUrl = `http://127.0.0.1:${typeof addr === "object" && addr ? addr.port : 0}/`;
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  await new Promise<void>((ok) => (pages ? pages.close(() => ok()) : ok()));
  RawSocket.terminateAll();
  await stopOwnServer();
});

async function openPage(errors: string[]): Promise<Page> {
  assert.ok(browser);
  const context = await browser.newContext();
  context.setDefaultTimeout(WAIT);
  const page = await context.newPage();
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(pageUrl);
  await page.waitForFunction("typeof window.harness === 'object'");
  return page;
}

/** Wait until `expr` (with `h` = window.harness) holds in the page. */
async function until(page: Page, expr: string): Promise<void> {
  try {
    await page.waitForFunction(`(() => { const h = window.harness; return ${expr}; })()`, null, { timeout: WAIT });
  } catch (err) {
    const snap = await page.evaluate("JSON.stringify({ snap: window.harness.snap, sockets: window.harness.sockets, events: window.harness.events })");
    throw new Error(`page never reached: ${expr}\n${String(snap)}\n${String(err)}`);
  }
}
const get = <T>(page: Page, expr: string): Promise<T> => page.evaluate(`(() => { const h = window.harness; return ${expr}; })()`) as Promise<T>;
const render = (page: Page, cfg: Record<string, unknown>) => page.evaluate((c) => (window as unknown as { harness: { render(c: unknown): void } }).harness.render(c), cfg);
const act = (page: Page, hook: string, method: string, ...args: unknown[]) =>
  page.evaluate(([h, m, a]) => (window as unknown as { harness: { api: Record<string, Record<string, (...x: unknown[]) => unknown>> } }).harness.api[h as string]?.[m as string]?.(...(a as unknown[])), [hook, method, args] as const);

async function poll<T>(what: string, read: () => Promise<T>, ok: (v: T) => boolean): Promise<T> {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const v = await read();
    if (ok(v)) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const lastOf = (raw: RawSocket, type: string) => [...raw.frames].reverse().find((f) => f.type === type);

test("react hooks in StrictMode: one socket per hook, updates arrive, unmount and enabled:false close (seen by the server)", async () => {
  const alice = unique("alice");
  const bob = unique("bob");
  const names = { counter: unique("rc"), room: unique("rroom"), channel: unique("rch"), waddle: unique("rw"), game: unique("rg") };
  const tokenA = mintToken(alice, { name: "Alice" });
  const tokenB = mintToken(bob, { name: "Bob" });
  const paths = {
    session: "/__user-session",
    counter: `/ws/counter/${names.counter}`,
    chat: `/api/chat/${names.room}`,
    channel: `/ws/channel/${names.channel}`,
    waddle: `/ws/waddle/${names.waddle}`,
    game: `/api/game/${names.game}`,
  };
  const bobChat = await RawSocket.open(base, paths.chat, tokenB);
  const bobChannel = await RawSocket.open(base, paths.channel, tokenB);
  const bobWaddle = await RawSocket.open(base, paths.waddle, tokenB);
  const errors: string[] = [];
  const page = await openPage(errors);
  const all = {
    base, token: tokenA, strict: true,
    session: { userId: alice, deviceId: "tab-1" },
    counter: { name: names.counter },
    chat: { room: names.room },
    channel: { id: names.channel },
    waddle: { id: names.waddle },
    game: { id: names.game },
  };
  await render(page, all);
  for (const hook of Object.keys(paths)) await until(page, `h.snap.${hook}?.status === "open"`);

  // Exactly one socket per hook, although StrictMode mounted, unmounted and remounted each.
  assert.deepEqual(await get(page, "h.sockets.created"), Object.fromEntries(Object.values(paths).map((p) => [p, 1])));
  assert.deepEqual(await get(page, "h.sockets.open"), Object.fromEntries(Object.values(paths).map((p) => [p, 1])));
  // StrictMode really did mount, unmount and mount every hook's component.
  assert.deepEqual(await get(page, "h.mountEffects"), Object.fromEntries(Object.keys(paths).map((k) => [k, 2])));
  // The server sees one device, two chat users, both channel participants.
  await until(page, `h.snap.session.state?.connectedDevices === 1 && h.snap.session.isLoading === false`);
  const state = await api(base, tokenA, "GET", `/__user-session/state?userId=${alice}`);
  assert.equal(state.status, 200);
  assert.equal(state.json.connectedDevices, 1);
  assert.deepEqual(state.json.devices, ["tab-1"]);
  await bobChat.next((f) => f.type === "userCount" && f.count === 2, "userCount 2 with Alice's hook");
  await until(page, "h.snap.chat.userCount === 2");
  await bobChannel.next((f) => f.type === "participants" && Array.isArray(f.users) && f.users.length === 2, "Alice's channel hook as a participant");
  // The hook's participants (the reducer shared with ChannelClient: lists and, above 100, deltas).
  await until(page, `h.snap.channel.participantCount === 2 && h.snap.channel.participants.join() === ${JSON.stringify([alice, bob].sort().join())}`);

  // Updates arrive, and the hooks' actions reach the server.
  assert.equal((await api(base, tokenB, "POST", `/api/counter/${names.counter}/increment`, { amount: 5 })).status, 200);
  await until(page, `h.snap.counter.value === 5 && h.snap.counter.lastUpdate !== null`);
  assert.deepEqual(await get(page, "h.events.counter"), ["increment:5:1"]);
  await act(page, "counter", "increment", 2);
  await until(page, `h.snap.counter.value === 7`);

  await act(page, "session", "joinGame", "chess-1");
  await until(page, `h.snap.session.state?.activeGames.includes("chess-1")`);
  await act(page, "session", "updatePresence", "away");
  await until(page, `h.snap.session.state?.presence === "away"`);
  await act(page, "session", "leaveGame", "chess-1");
  await until(page, `(h.events.session ?? []).includes("left:chess-1")`);
  assert.deepEqual(await get(page, "h.events.session"), ["joined:chess-1", "left:chess-1"]);

  bobChat.send({ type: "message", content: "hi from bob", id: "b1" });
  await until(page, `h.snap.chat.messages.some((m) => m.startsWith("user:") && m.endsWith(":hi from bob"))`);
  await act(page, "chat", "send", "hi from alice");
  await bobChat.next((f) => f.type === "message" && (f.message as { content?: string }).content === "hi from alice", "Alice's message at Bob");

  assert.equal((await api(base, tokenB, "POST", `/api/channel/${names.channel}/message`, { content: "m1" })).status, 200);
  await until(page, `h.snap.channel.messages.join() === "1:m1" && h.snap.channel.lastSeq === 1`);
  await act(page, "channel", "send", "m2");
  await bobChannel.next((f) => f.type === "message" && f.content === "m2" && f.sequence === 2, "Alice's channel message at Bob");
  // Reactions: Alice's hook reacts (Bob sees it); Bob's reaction updates the message in her hook.
  await act(page, "channel", "react", 1, "👍");
  await bobChannel.next((f) => f.type === "reaction" && f.userId === alice && f.sequence === 1 && f.count === 1, "Alice's reaction at Bob");
  bobChannel.send({ type: "react", sequence: 1, emoji: "👍", on: true });
  await until(page, `h.snap.channel.reactions.join("|") === '1:{"👍":2}|2:{}'`);
  bobChannel.send({ type: "react", sequence: 2, emoji: "🎉", on: true });
  await act(page, "channel", "react", 1, "👍", false);
  await until(page, `h.snap.channel.reactions.join("|") === '1:{"👍":1}|2:{"🎉":1}'`);

  // Waddle never echoes a presence_update to its sender: Bob's socket sees Alice's, and hers his.
  await act(page, "waddle", "setStatus", "busy");
  await bobWaddle.next((f) => f.type === "presence_update" && f.userId === alice && f.status === "busy", "Alice busy at Bob");
  bobWaddle.send({ type: "presence_update", status: "away" });
  await until(page, `h.snap.waddle.members[${JSON.stringify(bob)}] === "away"`);
  await act(page, "waddle", "setTyping", "general", true);
  await bobWaddle.next((f) => f.type === "typing" && f.userId === alice && f.isTyping === true, "Alice typing at Bob");
  await act(page, "game", "join");
  await until(page, `h.snap.game.state?.players.some((p) => p.userId === ${JSON.stringify(alice)})`);

  // Unmount the session and chat hooks: their sockets close, as the server sees it.
  const chatFrom = bobChat.frames.length;
  const { session: _s, chat: _c, ...rest } = all;
  await render(page, rest);
  await until(page, `h.snap.session.status === "unmounted" && h.snap.chat.status === "unmounted"`);
  await poll("connectedDevices 0 after the unmount", () => api(base, tokenA, "GET", `/__user-session/state?userId=${alice}`), (r) => r.json?.connectedDevices === 0);
  await bobChat.next((f) => f.type === "userCount" && f.count === 1, "userCount 1 after Alice's chat hook unmounted", chatFrom);
  await until(page, `h.sockets.open[${JSON.stringify(paths.session)}] === 0 && h.sockets.open[${JSON.stringify(paths.chat)}] === 0`);

  // enabled: false closes the channel hook's socket; Bob sees Alice leave the participants.
  const channelFrom = bobChannel.frames.length;
  await render(page, { ...rest, channel: { id: names.channel, enabled: false } });
  await until(page, `h.snap.channel.status === "idle" && h.snap.channel.isConnected === false`);
  await bobChannel.next((f) => f.type === "participants" && Array.isArray(f.users) && f.users.length === 1, "participants without Alice", channelFrom);
  await until(page, `h.sockets.open[${JSON.stringify(paths.channel)}] === 0`);

  // Nothing opened a second socket at any point; the remaining hooks are still live.
  assert.deepEqual(await get(page, "h.sockets.created"), Object.fromEntries(Object.values(paths).map((p) => [p, 1])));
  assert.equal((await api(base, tokenB, "POST", `/api/counter/${names.counter}/increment`, { amount: 1 })).status, 200);
  await until(page, `h.snap.counter.value === 8`);
  await render(page, { base, token: tokenA, strict: true });
  await until(page, `Object.values(h.sockets.open).every((n) => n === 0)`);
  assert.deepEqual(errors, []);
  bobChat.close();
  bobChannel.close();
  bobWaddle.close();
});

test("react hooks: a remount resumes (channel since=lastSeq: every missed message once), the session's state returns, logoutAllDevices calls onLoggedOut", async () => {
  const alice = unique("alice");
  const bob = unique("bob");
  const channel = unique("rch");
  const tokenA = mintToken(alice, { name: "Alice" });
  const tokenB = mintToken(bob, { name: "Bob" });
  const errors: string[] = [];
  const page = await openPage(errors);
  const path = `/ws/channel/${channel}`;
  const post = async (content: string) => assert.equal((await api(base, tokenB, "POST", `/api/channel/${channel}/message`, { content })).status, 200);

  await render(page, { base, token: tokenA, strict: true, channel: { id: channel }, session: { userId: alice, deviceId: "tab-r" } });
  await until(page, `h.snap.channel?.status === "open" && h.snap.session?.status === "open"`);
  await post("m1");
  await until(page, `h.snap.channel.messages.join() === "1:m1"`);
  await act(page, "session", "joinGame", "go-1");
  await until(page, `h.snap.session.state?.activeGames.includes("go-1")`);
  const lastSeq = await get<number>(page, "h.snap.channel.lastSeq");
  assert.equal(lastSeq, 1);

  // Unmount both; two messages are posted while nothing of Alice is connected.
  await render(page, { base, token: tokenA, strict: true });
  await until(page, `h.snap.channel.status === "unmounted" && h.sockets.open[${JSON.stringify(path)}] === 0`);
  await poll("connectedDevices 0", () => api(base, tokenA, "GET", `/__user-session/state?userId=${alice}`), (r) => r.json?.connectedDevices === 0);
  await post("m2");
  await post("m3");

  // Remount (StrictMode again) resuming after the last sequence seen: m2, m3 once, in order.
  await render(page, { base, token: tokenA, strict: true, channel: { id: channel, since: lastSeq }, session: { userId: alice, deviceId: "tab-r" } });
  await until(page, `h.snap.channel?.status === "open" && h.snap.channel.messages.length >= 2`);
  // The live message after the replay is the sentinel: anything duplicated would precede it.
  await post("m4");
  await until(page, `h.snap.channel.messages.length >= 3`);
  assert.deepEqual(await get(page, "h.snap.channel.messages"), ["2:m2", "3:m3", "4:m4"]);
  assert.equal(await get(page, `h.sockets.created[${JSON.stringify(path)}]`), 2, "one socket per mount, StrictMode or not");
  await until(page, `h.snap.session.state?.activeGames.join() === "go-1" && h.snap.session.state.connectedDevices === 1`);

  // Log out every device from the hook: onLoggedOut fires, the socket stops (4001), no reconnect.
  await act(page, "session", "logoutAllDevices");
  await until(page, `(h.events.session ?? []).includes("logged_out") && h.snap.session.status === "stopped"`);
  assert.match(await get<string>(page, "h.snap.session.error"), /4001/);
  assert.deepEqual(await get(page, "h.events.session"), ["joined:go-1", "logged_out"]);
  assert.equal(await get(page, `h.sockets.created["/__user-session"]`), 2, "no reconnect after the logout");
  assert.deepEqual(errors, []);
});

test("useVoiceChannel in StrictMode: one socket, join, signals both ways, recording, enabled:false leaves (seen by the server)", async () => {
  const [alice, bob] = [unique("valice"), unique("vbob")];
  const ch = unique("rvoice");
  const path = `/ws/voice/${ch}`;
  const tokenA = mintToken(alice, { name: "Alice" });
  const bobVoice = await RawSocket.open(base, path, mintToken(bob, { name: "Bob" }));
  await bobVoice.type("voice_state");
  const errors: string[] = [];
  const page = await openPage(errors);
  await render(page, { base, token: tokenA, strict: true, voice: { id: ch } });
  await until(page, `h.snap.voice?.status === "open" && h.snap.voice.state?.channelId === ${JSON.stringify(ch)}`);
  assert.deepEqual(await get(page, "h.sockets.created"), { [path]: 1 });
  await act(page, "voice", "join", { videoEnabled: true });
  await bobVoice.next((f) => f.type === "participant_joined" && (f.participant as { userId: string }).userId === alice, "Alice joined at Bob");
  bobVoice.send({ type: "join" });
  await until(page, `h.snap.voice.state.participants.length === 2 && typeof h.snap.voice.state.sessionId === "string"`);
  bobVoice.send({ type: "signal", to: alice, data: { sdp: { type: "offer", sdp: "v=0" } } });
  await until(page, `(h.events.voice ?? []).length === 1`);
  assert.deepEqual(await get(page, "h.events.voice"), [{ from: bob, data: { sdp: { type: "offer", sdp: "v=0" } } }]);
  await act(page, "voice", "signal", bob, { sdp: { type: "answer", sdp: "v=0" } });
  await bobVoice.next((f) => f.type === "signal" && f.from === alice, "Alice's answer at Bob");
  await act(page, "voice", "setRecording", true);
  await until(page, `h.snap.voice.state.recording === true`);
  await act(page, "voice", "update", { audioEnabled: false });
  await bobVoice.next((f) => f.type === "participant_updated" && (f.participant as { audioEnabled: boolean }).audioEnabled === false, "Alice muted at Bob");
  // enabled: false closes the socket: Alice is no participant any more, the call goes on with Bob.
  await render(page, { base, token: tokenA, strict: true, voice: { id: ch, enabled: false } });
  await bobVoice.next((f) => f.type === "participant_left" && f.userId === alice, "Alice left at Bob");
  const view = await api(base, tokenA, "GET", `/api/voice/${ch}`);
  assert.deepEqual(view.json.participants.map((p: { userId: string }) => p.userId), [bob]);
  assert.equal(view.json.recording, true);
  assert.deepEqual(errors, []);
});
