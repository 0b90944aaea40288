// The demo page: one counter, one chat room and the signed-in user's own session, live, through
// @edge-realtime/client (its ES module build is copied to /client/ by `make setup`).

import { ChatClient, CounterClient, UserSessionClient } from "/client/index.js";
import { startPanels } from "/panels.js";

const $ = (id) => document.getElementById(id);
const base = location.origin;
const deviceId = sessionStorage.getItem("deviceId") ?? `tab-${Math.random().toString(36).slice(2, 8)}`;
sessionStorage.setItem("deviceId", deviceId);
$("device-id").textContent = deviceId;

let clients = [];

/** The token's claims, read (not verified) to know who we are; the server verifies it. */
function claimsOf(token) {
  const part = token.split(".")[1];
  if (!part) throw new Error("that is not a JWT");
  const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
  const claims = JSON.parse(json);
  if (typeof claims.sub !== "string") throw new Error("the token has no sub");
  if (typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) throw new Error("the token has expired");
  return claims;
}

function showStatus(id) {
  return (status, info) => {
    const el = $(id);
    el.textContent = status === "closed" && info.retryInMs !== undefined ? `retry in ${(info.retryInMs / 1000).toFixed(1)}s` : status;
    el.className = `status ${status}`;
    el.title = info.code ? `close ${info.code} ${info.reason ?? ""}` : "";
    if (status === "stopped" && info.code === 4001) signedOut("Logged out on every device: paste a new token.");
  };
}

function signedOut(message) {
  for (const c of clients) c.close();
  clients = [];
  sessionStorage.removeItem("token");
  $("app").hidden = true;
  $("signin-panel").hidden = false;
  $("who").textContent = "Not signed in.";
  $("signin-error").textContent = message ?? "";
  $("signin-error").hidden = !message;
}

function connect(token, counterName, room) {
  const claims = claimsOf(token);
  sessionStorage.setItem("token", token);
  sessionStorage.setItem("counter", counterName);
  sessionStorage.setItem("room", room);
  $("signin-panel").hidden = true;
  $("app").hidden = false;
  $("who").textContent = `Signed in as ${claims.name ?? claims.sub} (${claims.sub}) on ${deviceId}`;
  $("counter-label").textContent = counterName;
  $("room-label").textContent = room;
  const options = (statusId) => ({ baseUrl: base, token: () => sessionStorage.getItem("token"), onStatus: showStatus(statusId) });

  // Counter: the client keeps `value` from the snapshot and every event.
  const counter = new CounterClient(counterName, options("counter-status"));
  counter.onFrame(() => {
    if (counter.value === undefined) return;
    $("counter-value").textContent = String(counter.value);
    const m = counter.metadata;
    if (m) $("counter-meta").textContent = `${m.operationCount} operations · updated ${new Date(m.updatedAt).toLocaleTimeString()}`;
  });
  $("inc").onclick = () => counter.increment(1);
  $("dec").onclick = () => counter.decrement(1);
  $("reset").onclick = () => counter.reset();

  // Chat: recent history over HTTP, then live messages (the client resumes from the last seq).
  const chat = new ChatClient(room, { ...options("chat-status"), autoStart: false });
  const shown = new Set();
  const log = $("chat-log");
  const render = (m) => {
    if (shown.has(m.seq)) return;
    shown.add(m.seq);
    const li = document.createElement("li");
    li.className = m.kind;
    li.dataset.seq = String(m.seq);
    const time = document.createElement("time");
    time.textContent = new Date(m.timestamp).toLocaleTimeString();
    li.append(time);
    if (m.kind === "user") {
      const from = document.createElement("span");
      from.className = "from";
      from.textContent = m.userName;
      li.append(from);
    }
    li.append(document.createTextNode(m.content));
    const after = [...log.children].find((el) => Number(el.dataset.seq) > m.seq);
    log.insertBefore(li, after ?? null);
    log.scrollTop = log.scrollHeight;
  };
  const loadHistory = () =>
    chat.history({ limit: 50 }).then((h) => h.messages.forEach(render)).catch((e) => console.warn("history", e));
  chat.on("message", (f) => render(f.message));
  chat.on("userCount", (f) => ($("chat-users").textContent = `${f.count} online`));
  chat.on("resync_required", loadHistory);
  chat.on("error", (f) => {
    $("chat-error").textContent = f.code === "rate_limited" ? `Slow down (retry in ${f.retryAfterMs} ms)` : f.message;
    $("chat-error").hidden = false;
  });
  // Live traffic resumes right after the newest message the history showed: nothing falls
  // between the two.
  chat
    .history({ limit: 50 })
    .then((h) => {
      h.messages.forEach(render);
      chat.socket.resumeFrom(h.messages[0]?.seq ?? 0);
    })
    .catch((e) => console.warn("history", e))
    .finally(() => chat.socket.start());
  $("chat-form").onsubmit = (e) => {
    e.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text) return;
    $("chat-error").hidden = true;
    try {
      chat.send(text);
      $("chat-input").value = "";
    } catch (err) {
      $("chat-error").textContent = String(err.message ?? err);
      $("chat-error").hidden = false;
    }
  };

  // My session: devices, presence and games, on every device of this user.
  const session = new UserSessionClient(claims.sub, deviceId, options("session-status"));
  const renderSession = () => {
    const s = session.state;
    if (!s) return;
    $("presence").textContent = s.presence;
    $("devices").textContent = s.devices.join(", ") || "–";
    const games = $("games");
    games.replaceChildren(
      ...s.activeGames.map((g) => {
        const li = document.createElement("li");
        li.textContent = g;
        const leave = document.createElement("button");
        leave.className = "secondary";
        leave.textContent = "leave";
        leave.onclick = () => session.leaveGame(g);
        li.append(leave);
        return li;
      }),
    );
  };
  session.onFrame(renderSession);
  // A device arriving or leaving changes `devices` without a frame of its own unless
  // presence moves: refresh on presence changes and every few seconds.
  session.on("presence_updated", () => session.syncState());
  const refresh = setInterval(() => session.socket.status === "open" && session.syncState(), 5000);
  session.on("notification", (n) => alert(`Notification: ${JSON.stringify(n)}`));
  $("presence-select").onchange = (e) => session.updatePresence(e.target.value);
  $("game-form").onsubmit = (e) => {
    e.preventDefault();
    const id = $("game-input").value.trim();
    if (id) session.joinGame(id);
    $("game-input").value = "";
  };
  $("logout-all").onclick = () => session.logoutAll();
  $("signout").onclick = () => signedOut();

  // Community, channel, game, voice and rate limiter (public/panels.js). Names come from the URL
  // (`?waddle=&channel=&game=&voice=`), so two tabs meet in the same objects; default "demo".
  const params = new URLSearchParams(location.search);
  const names = Object.fromEntries(["waddle", "channel", "game", "voice"].map((k) => [k, params.get(k) || "demo"]));
  const panels = startPanels({ base, options, token: () => sessionStorage.getItem("token"), me: claims.sub, names });

  clients = [counter, chat, session, ...panels, { close: () => clearInterval(refresh) }];
}

// Dev sign-in: with DEV_TOKENS=1 the server has `POST /__dev/token` (a GET there answers 200,
// not the 404 of a path that does not exist); the page then offers "Sign in as …" instead of
// the token textarea. `document.body.dataset.signin` says which form is shown ("dev" | "token").
let devTokens = false;
function setSigninMode(dev) {
  devTokens = dev;
  $("dev-signin").hidden = !dev;
  $("token-signin").hidden = dev;
  $("token").required = !dev;
  document.body.dataset.signin = dev ? "dev" : "token";
  updateSigninLabel();
}
function updateSigninLabel() {
  $("signin").textContent = devTokens ? `Sign in as ${$("dev-user").value.trim() || "…"}` : "Connect";
}
$("dev-user").oninput = updateSigninLabel;
$("use-token").onclick = (e) => {
  e.preventDefault();
  setSigninMode(false);
};
async function devToken(userId, admin) {
  const res = await fetch("/__dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ userId, name: userId, admin }),
  });
  const body = await res.json().catch(() => null);
  if (!res.ok || typeof body?.token !== "string") throw new Error(body?.error?.message ?? `dev sign-in failed (${res.status})`);
  return body.token;
}

$("signin-form").onsubmit = async (e) => {
  e.preventDefault();
  try {
    const token = devTokens ? await devToken($("dev-user").value.trim(), $("dev-admin").checked) : $("token").value.trim();
    connect(token, $("counter-name").value.trim() || "demo", $("room-name").value.trim() || "lobby");
  } catch (err) {
    $("signin-error").textContent = String(err.message ?? err);
    $("signin-error").hidden = false;
  }
};

fetch("/__dev/token")
  .then((res) => setSigninMode(res.ok))
  .catch(() => setSigninMode(false));

const saved = sessionStorage.getItem("token");
if (saved) {
  try {
    connect(saved, sessionStorage.getItem("counter") ?? "demo", sessionStorage.getItem("room") ?? "lobby");
  } catch {
    signedOut();
  }
}
