// The bare hibernating Durable Object the chat benchmark measures edge-realtime against:
// the least a hibernating chat room can do. No auth, no storage, no validation beyond
// JSON.parse, no sequencing: every text frame is parsed and the original text is sent to every
// socket of the room (the sender included). Same ping/pong auto-response as edge-realtime.
// The constructor logs `[baseline] wake <id hex>` 50 ms later (as edge-realtime's objects log
// their wake line), so the wake benchmark can prove each measured round really woke the object
// without the log's own cost landing in the timed wake (under `wrangler dev` a console line
// wakes wrangler's process, about 2 ms on a 2-core machine; docs/benchmarks.md, session 6);
// `GET /api/chat/<room>/id` gives that hex without touching the object.
// Benchmark-only code: it is not part of the product and is never deployed.

const ROOM_PATH = /^\/api\/chat\/([A-Za-z0-9_.-]{1,64})$/;
const ID_PATH = /^\/api\/chat\/([A-Za-z0-9_.-]{1,64})\/id$/;

export class BaselineRoom {
  constructor(ctx, env) {
    this.ctx = ctx;
    const line = `[baseline] wake ${ctx.id}`;
    setTimeout(() => console.log(line), 50);
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair('{"type":"ping"}', '{"type":"pong"}'));
  }

  async fetch(request) {
    if (request.headers.get("Upgrade") !== "websocket") {
      return new Response("expected a WebSocket upgrade", { status: 426, headers: { Upgrade: "websocket" } });
    }
    const { 0: client, 1: server } = new WebSocketPair();
    this.ctx.acceptWebSocket(server);
    return new Response(null, { status: 101, webSocket: client });
  }

  webSocketMessage(ws, message) {
    if (typeof message !== "string") {
      ws.close(1007, "binary frames are not accepted");
      return;
    }
    try {
      JSON.parse(message);
    } catch {
      ws.close(1007, "frame is not valid JSON");
      return;
    }
    for (const socket of this.ctx.getWebSockets()) {
      try {
        socket.send(message);
      } catch {
        // a socket closing concurrently: nothing to do
      }
    }
  }

  webSocketClose(ws, code, reason) {
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, reason);
    } catch {
      // already closed (the runtime may have answered the close itself)
    }
  }

  webSocketError(ws) {
    try {
      ws.close(1011, "socket error");
    } catch {
      // already closed
    }
  }
}

export default {
  async fetch(request, env) {
    const { pathname } = new URL(request.url);
    if (pathname === "/health") {
      return Response.json({ status: "ok", version: "baseline" });
    }
    const id = ID_PATH.exec(pathname);
    if (id) {
      return new Response(env.ROOM.idFromName(id[1]).toString());
    }
    const match = ROOM_PATH.exec(pathname);
    if (!match) {
      return new Response("not found", { status: 404 });
    }
    return env.ROOM.get(env.ROOM.idFromName(match[1])).fetch(request);
  },
};
