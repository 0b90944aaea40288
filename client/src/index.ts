// @edge-realtime/client: a reconnecting, resuming WebSocket and typed clients for every
// edge-realtime protocol. No runtime dependencies; browsers and Node ≥ 20 (pass `ws`).
//
// Layout:
// - socket.ts            ReconnectingSocket: backoff, terminal codes, queue, heartbeat, resume
// - guards.ts            the schema language: one declaration → TS type + runtime guard
// - protocols/common.ts  TypedClient base, shared frames, HTTP helper
// - protocols/*.ts       one file per protocol: frame table, decoder, typed client (game.ts: GameClient,
//                        voice.ts: VoiceClient)

export * from "./socket.js";
export * from "./guards.js";
export { TypedClient, HttpError, errorFrame, loggedOutFrame, pongFrame, resyncFrame, wsUrl, httpUrl, clientId, type ClientOptions } from "./protocols/common.js";
export * from "./protocols/counter.js";
export * from "./protocols/chat.js";
export * from "./protocols/channel.js";
export * from "./protocols/waddle.js";
export * from "./protocols/session.js";
export * from "./protocols/game.js";
export * from "./protocols/voice.js";
