// VoiceChannel from the client side, against the real runtime:
// - every server frame of the voice protocol decodes exactly with VoiceClient's table;
// - VoiceClient joins again after a dropped connection (a new socket has not joined);
// - in headless Chromium with a fake microphone, the demo page's voice panel in two browser
//   contexts: join, exchange offer / answer / ICE through the object, reach
//   `connectionState === "connected"` and receive audio packets (getStats inbound-rtp).
//   Host candidates only, no STUN (`iceServers: []`); every candidate that is not loopback is
//   dropped in the page, so the media never leaves 127.0.0.1.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { type Browser, type Page } from "playwright-core";

import { VoiceClient, decodeVoiceFrame, voiceFrames, voiceStateResponse } from "../src/index.js";
import { SCREENSHOTS, launchChromium } from "./chromium.js";
import { NodeWebSocket, Proxy, RawSocket, api, mintToken, server, stopOwnServer, unique, waitFor } from "./support.js";

const WAIT = 60_000;
let base = "";
let port = 0;
let browser: Browser | undefined;
before(async () => {
  ({ base, port } = await server());
});
after(async () => {
  RawSocket.terminateAll();
  await browser?.close();
  await stopOwnServer();
});

const fast = { backoff: { initialMs: 50, maxMs: 300 }, WebSocket: NodeWebSocket };
const userOf = (f: Record<string, unknown>) => (f.participant as { userId?: string } | undefined)?.userId;

test("every voice frame decodes exactly with the client's table", async () => {
  const ch = unique("vframes");
  const [a, b] = [unique("va"), unique("vb")];
  const sa = await RawSocket.open(base, `/ws/voice/${ch}`, mintToken(a));
  const sb = await RawSocket.open(base, `/ws/voice/${ch}`, mintToken(b));
  await sa.type("voice_state");
  await sb.type("voice_state");
  sa.send({ type: "join" });
  await sa.type("participant_joined");
  sb.send({ type: "join", audioEnabled: false });
  await sa.next((f) => f.type === "participant_joined" && userOf(f) === b, "b joined");
  sa.send({ type: "update", videoEnabled: true });
  await sb.type("participant_updated");
  sa.send({ type: "recording", enabled: true });
  await sb.type("recording_changed");
  sa.send({ type: "signal", to: b, data: { sdp: { type: "offer", sdp: "v=0" } } });
  await sb.type("signal");
  sa.send({ type: "signal", to: a, data: 1 });
  await sa.type("error");
  const state = await api(base, mintToken(a), "GET", `/api/voice/${ch}`);
  assert.equal(state.status, 200);
  assert.ok(voiceStateResponse.exact(state.json), JSON.stringify(state.json));
  sa.send({ type: "leave" });
  await sb.type("participant_left");
  sb.send({ type: "leave" });
  await sb.type("session_ended");
  const killer = await RawSocket.open(base, `/__user-session?userId=${a}&deviceId=killer`, mintToken(a));
  await killer.type("initial_state");
  killer.send({ type: "logout_all" });
  await sa.type("logged_out");
  const frames = [...sa.frames, ...sb.frames];
  for (const f of frames) assert.ok(decodeVoiceFrame(f, true), `frame does not match the client's type: ${JSON.stringify(f)}`);
  const seen = new Set(frames.map((f) => f.type));
  assert.deepEqual(Object.keys(voiceFrames).filter((t) => !seen.has(t) && t !== "pong"), []);
});

test("VoiceClient: state follows the events; a dropped connection joins again", async () => {
  const ch = unique("vrejoin");
  const p = await new Proxy(port).start();
  after(() => p.close());
  const [a, b] = [unique("ra"), unique("rb")];
  const alice = new VoiceClient(ch, { baseUrl: p.base, token: mintToken(a), ...fast });
  const bob = new VoiceClient(ch, { baseUrl: base, token: mintToken(b), ...fast });
  const signals: unknown[] = [];
  bob.on("signal", (f) => signals.push([f.from, f.data]));
  await waitFor(() => alice.state !== undefined && bob.state !== undefined, "both voice_state");
  alice.join({ videoEnabled: true });
  bob.join();
  await waitFor(() => alice.isParticipant(b) && bob.isParticipant(a), "both joined");
  const session = bob.state?.sessionId;
  assert.ok(session);
  alice.signal(b, { sdp: "offer" });
  await waitFor(() => signals.length === 1, "the signal");
  assert.deepEqual(signals, [[a, { sdp: "offer" }]]);
  alice.update({ audioEnabled: false });
  await waitFor(() => bob.state?.participants.find((x) => x.userId === a)?.audioEnabled === false, "alice muted");
  // the network drops alice: her socket goes, she leaves, and her client joins again (flags kept).
  // Her reconnects are refused until bob saw her leave: a reconnect that joined before the
  // server noticed the dropped socket would keep her a participant throughout (by design).
  p.refusing = true;
  p.cut();
  await waitFor(() => !bob.isParticipant(a), "alice left with her socket");
  p.refusing = false;
  await waitFor(() => bob.isParticipant(a), "alice joined again");
  const back = bob.state?.participants.find((x) => x.userId === a);
  assert.deepEqual([back?.audioEnabled, back?.videoEnabled], [false, true]);
  assert.equal(bob.state?.sessionId, session, "bob stayed: the same session");
  alice.leave();
  await waitFor(() => !bob.isParticipant(a), "alice left");
  bob.leave();
  await waitFor(() => bob.state?.sessionId === null && alice.state?.sessionId === null, "session ended");
  const fetched = await bob.fetchState();
  assert.deepEqual(fetched, { channelId: ch, sessionId: null, participants: [], recording: false });
  alice.close();
  bob.close();
});

/** Only loopback ICE candidates pass (in SDP and trickled): the test's media stays on 127.0.0.1. */
function loopbackOnly(): void {
  const loopback = (c: string) => / (127\.0\.0\.1|::1) \d+ typ /.test(c);
  const strip = (d: RTCSessionDescriptionInit | null | undefined) =>
    d?.sdp ? { type: d.type, sdp: d.sdp.split("\r\n").filter((l) => !l.startsWith("a=candidate:") || loopback(l)).join("\r\n") } : d;
  const proto = RTCPeerConnection.prototype;
  const setRemote = proto.setRemoteDescription as (this: RTCPeerConnection, d?: RTCSessionDescriptionInit) => Promise<void>;
  proto.setRemoteDescription = function (this: RTCPeerConnection, d?: RTCSessionDescriptionInit) {
    return setRemote.call(this, strip(d) ?? undefined);
  } as typeof proto.setRemoteDescription;
  const addCandidate = proto.addIceCandidate as (this: RTCPeerConnection, c?: RTCIceCandidateInit) => Promise<void>;
  proto.addIceCandidate = function (this: RTCPeerConnection, c?: RTCIceCandidateInit | null) {
    if (c?.candidate && !loopback(c.candidate)) return Promise.resolve();
    return addCandidate.call(this, c ?? undefined);
  } as typeof proto.addIceCandidate;
}

async function open(token: string, query: string, errors: string[]): Promise<Page> {
  assert.ok(browser);
  const context = await browser.newContext({ viewport: { width: 1200, height: 1600 } });
  context.setDefaultTimeout(WAIT);
  await context.addInitScript((t) => sessionStorage.setItem("token", t), token);
  await context.addInitScript(loopbackOnly);
  const page = await context.newPage();
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(`${base}/?${query}`);
  await page.waitForFunction(() => document.querySelector("#voice-status")?.textContent === "open", null, { timeout: WAIT });
  return page;
}

/** The voice panel's row for `user` shows `connected` and audio packets arriving from them. */
const hearing = (page: Page, user: string) =>
  page.waitForFunction(
    (u) => {
      const li = document.querySelector<HTMLElement>(`#voice-participants li[data-user="${u}"]`);
      return li?.dataset.state === "connected" && Number(li.dataset.packets) > 0;
    },
    user,
    { timeout: WAIT, polling: 250 },
  );

test("two browsers with fake microphones: the demo's voice panel connects peer to peer and audio flows", async () => {
  browser = await launchChromium([
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
  ]);
  mkdirSync(SCREENSHOTS, { recursive: true });
  const [alice, bob] = [unique("alice"), unique("bob")];
  const ch = unique("call");
  const query = new URLSearchParams({ voice: ch, waddle: unique("vw"), channel: unique("vc"), game: unique("vg") }).toString();
  const errors: string[] = [];
  const a = await open(mintToken(alice, { name: "Alice" }), query, errors);
  const b = await open(mintToken(bob, { name: "Bob" }), query, errors);
  assert.ok(await a.evaluate(() => typeof navigator.mediaDevices?.getUserMedia === "function"), "mediaDevices on http://127.0.0.1");

  await a.click("#voice-join");
  await a.waitForSelector(`#voice-participants li[data-user="${alice}"]`, { timeout: WAIT });
  await b.click("#voice-join");
  await hearing(a, bob);
  await hearing(b, alice);
  const states = await Promise.all(
    [a, b].map((p) => p.$$eval("#voice-participants li", (lis) => lis.map((li) => (li as HTMLElement).dataset.state))),
  );
  assert.deepEqual(states.map((s) => [...s].sort()), [["connected", "self"], ["connected", "self"]]);
  const view = await api(base, mintToken("observer"), "GET", `/api/voice/${ch}`);
  assert.deepEqual(view.json.participants.map((p: { userId: string }) => p.userId), [alice, bob]);
  await a.screenshot({ path: join(SCREENSHOTS, "voice-alice.png"), fullPage: true });

  // Bob leaves: Alice sees him go; the call goes on with her alone, then ends when she leaves.
  await b.click("#voice-leave");
  await a.waitForFunction((u) => !document.querySelector(`#voice-participants li[data-user="${u}"]`), bob, { timeout: WAIT });
  await a.click("#voice-leave");
  await a.waitForFunction(() => document.querySelector("#voice-state")?.textContent === "no call", null, { timeout: WAIT });
  assert.deepEqual((await api(base, mintToken("observer"), "GET", `/api/voice/${ch}`)).json.sessionId, null);
  assert.deepEqual(errors, []);
});
