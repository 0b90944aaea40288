// The demo's other protocols: a community (Waddle presence and typing), a sequenced channel that
// resumes after a reload without loss, a game (GameServer), a voice call (VoiceChannel + WebRTC,
// peer to peer) and a rate-limiter panel. Each panel
// is one function that wires its card to one client and returns what to close on sign-out.

import { ChannelClient, GameClient, VoiceClient, WaddleClient } from "/client/index.js";

const $ = (id) => document.getElementById(id);
const el = (tag, { dataset = {}, ...props } = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, dataset);
  node.append(...children);
  return node;
};

/** Waddle: every member's presence, my status, and who is typing in the community's #general. */
function waddlePanel(name, options, me) {
  const waddle = new WaddleClient(name, options("waddle-status"));
  const typing = new Set();
  const render = () => {
    const rows = [...waddle.members].sort(([a], [b]) => a.localeCompare(b));
    $("waddle-members").replaceChildren(
      ...rows.map(([user, p]) => el("li", { className: `presence ${p.status}`, dataset: { user } }, `${user}${user === me ? " (you)" : ""} · ${p.status}`)),
    );
    const others = [...typing].filter((u) => u !== me);
    $("waddle-typing").textContent = others.length ? `${others.join(", ")} typing…` : "";
  };
  waddle.onFrame(render);
  waddle.on("typing", (f) => {
    if (f.isTyping) typing.add(f.userId);
    else typing.delete(f.userId);
    render();
  });
  $("waddle-label").textContent = name;
  $("waddle-select").onchange = (e) => waddle.setStatus(e.target.value);
  let typingNow = false;
  $("waddle-input").oninput = (e) => {
    const now = e.target.value.length > 0;
    if (now !== typingNow) waddle.setTyping("general", now);
    typingNow = now;
  };
  return waddle;
}

/**
 * Channel: history over HTTP, then the live socket resumed right after the newest message shown
 * (`?since=`): nothing falls between the two, and a reload shows the same messages, in order,
 * plus whatever arrived meanwhile.
 */
function channelPanel(name, options) {
  const channel = new ChannelClient(name, { ...options("channel-status"), autoStart: false });
  const list = $("channel-log");
  const shown = new Set();
  const render = (m) => {
    if (shown.has(m.sequence)) return;
    shown.add(m.sequence);
    const li = el("li", { dataset: { seq: String(m.sequence) } }, el("b", {}, `#${m.sequence} `), `${m.userId}: ${m.content}`);
    const after = [...list.children].find((x) => Number(x.dataset.seq) > m.sequence);
    list.insertBefore(li, after ?? null);
    $("channel-last").textContent = `last #${Math.max(...shown)}`;
  };
  channel.on("message", render);
  // The full list on connect (and while ≤ 100 participants), deltas above: the client keeps the count.
  const here = () => ($("channel-participants").textContent = `${channel.participantCount} here`);
  for (const t of ["participants", "participant_joined", "participant_left"]) channel.on(t, here);
  channel.on("resync_required", () => channel.history({ limit: 100 }).then((h) => h.messages.forEach(render)));
  $("channel-label").textContent = name;
  const loadAll = async () => {
    let after = 0;
    for (;;) {
      const page = await channel.history({ after, limit: 100 });
      page.messages.forEach(render);
      if (page.nextAfter === null) return after;
      after = page.nextAfter;
    }
  };
  loadAll()
    .then(() => channel.socket.resumeFrom(shown.size ? Math.max(...shown) : 0))
    .catch((e) => console.warn("channel history", e))
    .finally(() => channel.socket.start());
  $("channel-form").onsubmit = (e) => {
    e.preventDefault();
    const text = $("channel-input").value.trim();
    if (!text) return;
    channel.send(text);
    $("channel-input").value = "";
  };
  return channel;
}

/** Game: join, take turns (a move is a number), see the players, the turn and every move. */
function gamePanel(name, options, me) {
  const game = new GameClient(name, options("game-status"));
  const render = () => {
    const s = game.state;
    if (!s) return;
    $("game-state").textContent = `${s.status} · ${s.moves} moves · turn: ${s.turn ?? "–"}${s.turn === me ? " (you)" : ""}`;
    $("game-players").replaceChildren(...s.players.map((p) => el("li", { dataset: { user: p.userId } }, `${p.userName} · ${p.score}`)));
    $("game-move").disabled = s.turn !== me;
  };
  game.onFrame(render);
  game.on("moved", (f) => $("game-log").prepend(el("li", {}, `#${f.seq} ${f.userId} played ${JSON.stringify(f.move)}`)));
  game.on("error", (f) => ($("game-error").textContent = `${f.code}: ${f.message}`));
  $("game-label").textContent = name;
  $("game-join").onclick = () => game.join();
  $("game-leave").onclick = () => game.leave();
  $("game-move").onclick = () => {
    $("game-error").textContent = "";
    game.move(Math.floor(Math.random() * 100));
  };
  return game;
}

/**
 * Voice: join with the microphone; every pair of participants opens one RTCPeerConnection, the
 * smaller userId offering, and offer / answer / ICE candidates travel as `signal` frames through
 * the VoiceChannel object. Audio is peer to peer; no STUN/TURN (`iceServers: []`: host
 * candidates only, enough on one network). Each peer row shows its `connectionState` and the
 * inbound audio packets counted by `getStats()`.
 */
function voicePanel(name, options, me) {
  const voice = new VoiceClient(name, options("voice-status"));
  /** userId → { pc, chain (signals applied in order), audio, state, packets } */
  const peers = new Map();
  let stream = null;
  let muted = false;
  const joined = () => voice.isParticipant(me);

  const render = () => {
    const s = voice.state;
    if (!s) return;
    $("voice-state").textContent = s.sessionId
      ? `in call · ${s.participants.length} participant(s)${s.recording ? " · ● recording" : ""}`
      : "no call";
    $("voice-participants").replaceChildren(
      ...s.participants.map((p) => {
        const peer = peers.get(p.userId);
        const detail = p.userId === me ? "you" : peer ? `${peer.state} · ${peer.packets} audio packets in` : "…";
        const dataset = { user: p.userId, state: p.userId === me ? "self" : (peer?.state ?? "none"), packets: String(peer?.packets ?? 0) };
        return el("li", { dataset }, `${p.userName}${p.audioEnabled ? "" : " (muted)"} · ${detail}`);
      }),
    );
    const inCall = joined();
    $("voice-join").disabled = inCall;
    for (const id of ["voice-mute", "voice-record", "voice-leave"]) $(id).disabled = !inCall;
    $("voice-mute").textContent = muted ? "Unmute" : "Mute";
    $("voice-record").textContent = s.recording ? "Stop recording" : "Start recording";
  };

  const peerFor = (userId) => {
    let peer = peers.get(userId);
    if (peer) return peer;
    const pc = new RTCPeerConnection({ iceServers: [] });
    peer = { pc, chain: Promise.resolve(), pending: [], audio: el("audio", { autoplay: true }), state: pc.connectionState, packets: 0 };
    peers.set(userId, peer);
    for (const track of stream?.getTracks() ?? []) pc.addTrack(track, stream);
    pc.onicecandidate = (e) => e.candidate && voice.signal(userId, { candidate: e.candidate.toJSON() });
    pc.ontrack = (e) => {
      peer.audio.srcObject = e.streams[0] ?? new MediaStream([e.track]);
      peer.audio.play?.().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      peer.state = pc.connectionState;
      render();
    };
    return peer;
  };
  const closePeer = (userId) => {
    peers.get(userId)?.pc.close();
    peers.delete(userId);
  };
  /** Apply one signal after the previous one finished (descriptions before their candidates). */
  const onSignal = (from, data) => {
    const peer = peerFor(from);
    const { pc } = peer;
    peer.chain = peer.chain
      .then(async () => {
        if (data?.sdp) {
          await pc.setRemoteDescription(data.sdp);
          for (const c of peer.pending.splice(0)) await pc.addIceCandidate(c);
          if (data.sdp.type === "offer") {
            await pc.setLocalDescription(await pc.createAnswer());
            voice.signal(from, { sdp: pc.localDescription.toJSON() });
          }
        } else if (data?.candidate && !pc.remoteDescription) {
          peer.pending.push(data.candidate); // before its description: applied right after it
        } else if (data?.candidate) {
          await pc.addIceCandidate(data.candidate);
        }
      })
      .catch((e) => ($("voice-error").textContent = `signal from ${from}: ${e.message ?? e}`));
  };
  /** Joined: a connection to every other participant; the smaller userId makes the offer. */
  const connectAll = () => {
    if (!joined() || !stream) return;
    for (const p of voice.state?.participants ?? []) {
      if (p.userId === me || peers.has(p.userId)) continue;
      const peer = peerFor(p.userId);
      if (me < p.userId) {
        peer.chain = peer.chain
          .then(async () => {
            await peer.pc.setLocalDescription(await peer.pc.createOffer());
            voice.signal(p.userId, { sdp: peer.pc.localDescription.toJSON() });
          })
          .catch((e) => ($("voice-error").textContent = `offer to ${p.userId}: ${e.message ?? e}`));
      }
    }
  };
  const hangUp = () => {
    for (const userId of [...peers.keys()]) closePeer(userId);
    for (const track of stream?.getTracks() ?? []) track.stop();
    stream = null;
  };

  voice.onFrame((f) => {
    if (f.type === "signal") onSignal(f.from, f.data);
    else if (f.type === "participant_left") {
      closePeer(f.userId);
      if (f.userId === me) hangUp();
    } else if (f.type === "session_ended") hangUp();
    else if (f.type === "error") $("voice-error").textContent = `${f.code}: ${f.message}`;
    else connectAll();
    render();
  });
  const stats = setInterval(async () => {
    for (const peer of peers.values()) {
      const report = await peer.pc.getStats().catch(() => null);
      report?.forEach((r) => {
        if (r.type === "inbound-rtp" && r.kind === "audio") peer.packets = r.packetsReceived ?? 0;
      });
    }
    if (peers.size) render();
  }, 1000);

  $("voice-label").textContent = name;
  $("voice-join").onclick = async () => {
    $("voice-error").textContent = "";
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
      muted = false;
      voice.join({ audioEnabled: true, videoEnabled: false });
    } catch (e) {
      $("voice-error").textContent = `microphone: ${e.message ?? e}`;
    }
  };
  $("voice-mute").onclick = () => {
    muted = !muted;
    for (const track of stream?.getAudioTracks() ?? []) track.enabled = !muted;
    voice.update({ audioEnabled: !muted });
  };
  $("voice-record").onclick = () => voice.setRecording(!voice.state?.recording);
  $("voice-leave").onclick = () => {
    voice.leave();
    hangUp();
    render();
  };
  return {
    close() {
      clearInterval(stats);
      hangUp();
      voice.close();
    },
  };
}

/** Rate limiter (admin tokens only): one decision per click, the answer as the server sent it. */
function rateLimitPanel(base, token) {
  $("rl-check").onclick = async () => {
    const algorithm = $("rl-algorithm").value;
    const key = $("rl-key").value.trim() || "demo";
    const bodies = {
      "": { key, limit: 5, window: 10000 },
      "/sliding-window": { key, limit: 5, window: 10000 },
      "/token-bucket": { key, capacity: 5, refillRate: 0.5 },
      "/leaky-bucket": { key, capacity: 5, leakRate: 0.5 },
      "/gcra": { key, rate: 5, period: 10000, burst: 5 },
    };
    const res = await fetch(`${base}/api/ratelimit/check${algorithm}`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token()}`, "Content-Type": "application/json" },
      body: JSON.stringify(bodies[algorithm]),
    });
    const body = await res.json();
    const out = $("rl-result");
    out.className = res.ok ? (body.allowed ? "allowed" : "denied") : "error";
    out.textContent = res.ok ? `${body.allowed ? "allowed" : "denied"} · ${JSON.stringify(body)}` : `${res.status} ${body.error?.code}: ${body.error?.message}`;
  };
  return { close() {} };
}

/** Start every panel; returns the clients to close on sign-out. */
export function startPanels({ base, options, token, me, names }) {
  return [
    waddlePanel(names.waddle, options, me),
    channelPanel(names.channel, options),
    gamePanel(names.game, options, me),
    voicePanel(names.voice, options, me),
    rateLimitPanel(base, token),
  ];
}
