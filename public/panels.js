// The demo's other protocols: a community (Waddle presence and typing), a sequenced channel that
// resumes after a reload without loss, a game (GameServer) and a rate-limiter panel. Each panel
// is one function that wires its card to one client and returns what to close on sign-out.

import { ChannelClient, GameClient, WaddleClient } from "/client/index.js";

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
  channel.on("participants", (f) => ($("channel-participants").textContent = `${f.users.length} here`));
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
    rateLimitPanel(base, token),
  ];
}
