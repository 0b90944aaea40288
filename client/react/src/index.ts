// @edge-realtime/react: React 19 hooks over @edge-realtime/client. One SDK client per mounted
// hook: opened in an effect, closed in its cleanup and on `enabled: false`, started a microtask
// later so StrictMode's double mount opens one socket.

export { RealtimeProvider, type ConnectionState, type HookClientOptions, type HookStatus } from "./core.js";
export { useUserSession, defaultDeviceId, type UseUserSessionOptions, type UseUserSessionResult } from "./session.js";
export { useCounterWebSocket, type UseCounterWebSocketOptions, type UseCounterWebSocketResult } from "./counter.js";
export { useChat, type UseChatOptions, type UseChatResult } from "./chat.js";
export { useChannel, type UseChannelOptions, type UseChannelResult } from "./channel.js";
export { useWaddle, type UseWaddleOptions, type UseWaddleResult } from "./waddle.js";
export { useGame, type UseGameOptions, type UseGameResult } from "./game.js";
export { useVoiceChannel, type UseVoiceChannelOptions, type UseVoiceChannelResult } from "./voice.js";
