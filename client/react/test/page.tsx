// The browser test's React page (bundled with esbuild into build-test/page.js): mounts the
// hooks that `window.harness.render(config)` asks for, publishes each hook's state in
// `window.harness.snap` and its actions in `window.harness.api`, and counts WebSockets per path
// (`window.harness.sockets`) by wrapping the browser's constructor before any hook runs.

import { StrictMode, useEffect, type ReactNode } from "react";
import { createRoot } from "react-dom/client";
import { RealtimeProvider, useChannel, useChat, useCounterWebSocket, useGame, useUserSession, useVoiceChannel, useWaddle } from "../src/index.js";

interface HookConfig {
  token?: string;
  enabled?: boolean;
  since?: number;
}
export interface PageConfig {
  base: string;
  token: string;
  strict: boolean;
  session?: HookConfig & { userId: string | null; deviceId?: string };
  counter?: HookConfig & { name: string };
  chat?: HookConfig & { room: string };
  channel?: HookConfig & { id: string };
  waddle?: HookConfig & { id: string };
  game?: HookConfig & { id: string };
  voice?: HookConfig & { id: string };
}

const sockets = { created: {} as Record<string, number>, open: {} as Record<string, number> };
const Native = window.WebSocket;
class CountedWebSocket extends Native {
  constructor(url: string | URL, protocols?: string | string[]) {
    super(url, protocols);
    const path = new URL(String(url)).pathname;
    sockets.created[path] = (sockets.created[path] ?? 0) + 1;
    let opened = false;
    this.addEventListener("open", () => {
      opened = true;
      sockets.open[path] = (sockets.open[path] ?? 0) + 1;
    });
    this.addEventListener("close", () => {
      if (opened) sockets.open[path] = (sockets.open[path] ?? 1) - 1;
    });
  }
}
window.WebSocket = CountedWebSocket;

const harness = {
  sockets,
  snap: {} as Record<string, Record<string, unknown>>,
  api: {} as Record<string, Record<string, unknown>>,
  events: {} as Record<string, unknown[]>,
  renders: 0,
  mountEffects: {} as Record<string, number>,
  render,
};
(window as unknown as { harness: typeof harness }).harness = harness;

const push = (name: string, e: unknown) => (harness.events[name] ??= []).push(e);
const conn = (r: { status: string; isConnected: boolean; isConnecting: boolean; error: string | null; lastSeq: number | undefined }) => ({
  status: r.status,
  isConnected: r.isConnected,
  isConnecting: r.isConnecting,
  error: r.error,
  lastSeq: r.lastSeq ?? null,
});
function usePublish(name: string, api: Record<string, unknown>, snap: Record<string, unknown>): void {
  // Mount effects run twice under StrictMode (mount, unmount, mount): counted to prove it did.
  useEffect(() => {
    harness.mountEffects[name] = (harness.mountEffects[name] ?? 0) + 1;
  }, [name]);
  useEffect(() => {
    harness.api[name] = api;
    harness.snap[name] = snap;
  });
  useEffect(
    () => () => {
      delete harness.api[name];
      harness.snap[name] = { status: "unmounted" };
    },
    [name],
  );
}

function Session({ c }: { c: NonNullable<PageConfig["session"]> }): ReactNode {
  const r = useUserSession({
    userId: c.userId,
    enabled: c.enabled ?? true,
    deviceId: c.deviceId,
    ...(c.token ? { token: c.token } : {}),
    onGameJoined: (g) => push("session", `joined:${g}`),
    onGameLeft: (g) => push("session", `left:${g}`),
    onLoggedOut: () => push("session", "logged_out"),
  });
  usePublish("session", r as unknown as Record<string, unknown>, { ...conn(r), isLoading: r.isLoading, state: r.state });
  return <p id="session">{r.isLoading ? "Connecting..." : r.isConnected ? `games: ${r.state?.activeGames.join(",") ?? ""}` : "Disconnected"}</p>;
}

function Counter({ c }: { c: NonNullable<PageConfig["counter"]> }): ReactNode {
  const r = useCounterWebSocket(c.name, {
    enabled: c.enabled ?? true,
    reconnectInterval: 1000,
    ...(c.token ? { token: c.token } : {}),
    onUpdate: (e) => push("counter", `${e.type}:${e.value}:${e.seq}`),
  });
  usePublish("counter", r as unknown as Record<string, unknown>, { ...conn(r), value: r.value, lastUpdate: r.lastUpdate?.toISOString() ?? null });
  return <p id="counter">{r.isConnected ? `value ${r.value ?? "?"}` : "Disconnected"}</p>;
}

function Chat({ c }: { c: NonNullable<PageConfig["chat"]> }): ReactNode {
  const r = useChat(c.room, { enabled: c.enabled ?? true, ...(c.since !== undefined ? { since: c.since } : {}), ...(c.token ? { token: c.token } : {}) });
  usePublish("chat", r as unknown as Record<string, unknown>, { ...conn(r), userCount: r.userCount, messages: r.messages.map((m) => `${m.kind}:${m.seq}:${m.content}`) });
  return <ul id="chat">{r.messages.map((m) => <li key={m.id}>{m.content}</li>)}</ul>;
}

function Channel({ c }: { c: NonNullable<PageConfig["channel"]> }): ReactNode {
  const r = useChannel(c.id, { enabled: c.enabled ?? true, ...(c.since !== undefined ? { since: c.since } : {}), ...(c.token ? { token: c.token } : {}) });
  usePublish("channel", r as unknown as Record<string, unknown>, {
    ...conn(r),
    participants: r.participants,
    participantCount: r.participantCount,
    messages: r.messages.map((m) => `${m.sequence}:${m.content}`),
    reactions: r.messages.map((m) => `${m.sequence}:${JSON.stringify(m.reactions)}`),
  });
  return <ul id="channel">{r.messages.map((m) => <li key={m.sequence}>{m.content}</li>)}</ul>;
}

function Waddle({ c }: { c: NonNullable<PageConfig["waddle"]> }): ReactNode {
  const r = useWaddle(c.id, { enabled: c.enabled ?? true, ...(c.token ? { token: c.token } : {}) });
  const members = Object.fromEntries(Object.entries(r.members).map(([u, p]) => [u, p.status]));
  usePublish("waddle", r as unknown as Record<string, unknown>, { ...conn(r), members, typing: r.typing });
  return <p id="waddle">{Object.keys(members).join(", ")}</p>;
}

function Game({ c }: { c: NonNullable<PageConfig["game"]> }): ReactNode {
  const r = useGame(c.id, { enabled: c.enabled ?? true, ...(c.token ? { token: c.token } : {}), onMove: (m) => push("game", `${m.userId}:${m.seq}`) });
  usePublish("game", r as unknown as Record<string, unknown>, { ...conn(r), state: r.state });
  return <p id="game">{r.state ? `${r.state.status} ${r.state.players.length}` : "-"}</p>;
}

function Voice({ c }: { c: NonNullable<PageConfig["voice"]> }): ReactNode {
  const r = useVoiceChannel(c.id, { enabled: c.enabled ?? true, ...(c.token ? { token: c.token } : {}), onSignal: (from, data) => push("voice", { from, data }) });
  usePublish("voice", r as unknown as Record<string, unknown>, { ...conn(r), state: r.state });
  return <p id="voice">{r.state ? `${r.state.sessionId ?? "no call"} ${r.state.participants.length}` : "-"}</p>;
}

function App({ cfg }: { cfg: PageConfig }): ReactNode {
  harness.renders += 1;
  return (
    <RealtimeProvider baseUrl={cfg.base} token={cfg.token}>
      {cfg.session && <Session c={cfg.session} />}
      {cfg.counter && <Counter c={cfg.counter} />}
      {cfg.chat && <Chat c={cfg.chat} />}
      {cfg.channel && <Channel c={cfg.channel} />}
      {cfg.waddle && <Waddle c={cfg.waddle} />}
      {cfg.game && <Game c={cfg.game} />}
      {cfg.voice && <Voice c={cfg.voice} />}
    </RealtimeProvider>
  );
}

const root = createRoot(document.getElementById("root") as HTMLElement);
function render(cfg: PageConfig): void {
  root.render(cfg.strict ? <StrictMode><App cfg={cfg} /></StrictMode> : <App cfg={cfg} />);
}
