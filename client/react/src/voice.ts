// useVoiceChannel over VoiceClient (`/ws/voice/:channelId`): participants, session, recording and
// the signalling relay. Media is peer to peer: the hook coordinates, your RTCPeerConnections
// carry the audio (docs/voice.md has the whole offer/answer/ICE flow).

import { useCallback, useEffect, useState } from "react";
import { VoiceClient, type JoinOptions, type VoiceState } from "@edge-realtime/client";
import { keyOf, useLatest, useRealtimeClient, withClient, type ConnectionState, type HookClientOptions } from "./core.js";

export interface UseVoiceChannelOptions extends HookClientOptions {
  /** Default true; `false` closes the socket (and so leaves the call). */
  enabled?: boolean;
  /** Every relayed `signal` (an SDP offer/answer or ICE candidate from participant `from`). */
  onSignal?: (from: string, data: unknown) => void;
}

export interface UseVoiceChannelResult extends ConnectionState<VoiceClient> {
  /** `{channelId, sessionId, participants, recording}`; `null` until the first `voice_state`. */
  state: VoiceState | null;
  join: (options?: JoinOptions) => Promise<void>;
  leave: () => Promise<void>;
  update: (flags: JoinOptions) => Promise<void>;
  /** Relay any JSON (≤ 16 KiB serialized) to participant `to`. */
  signal: (to: string, data: unknown) => Promise<void>;
  setRecording: (enabled: boolean) => Promise<void>;
}

export function useVoiceChannel(channelId: string, options: UseVoiceChannelOptions = {}): UseVoiceChannelResult {
  const { enabled = true, onSignal, ...clientOptions } = options;
  const callbacks = useLatest({ onSignal });
  const [state, setState] = useState<VoiceState | null>(null);

  const conn = useRealtimeClient({
    enabled,
    key: keyOf(channelId),
    options: clientOptions,
    create: (o) => new VoiceClient(channelId, o),
    attach: (c) =>
      c.onFrame((f) => {
        setState(c.state ?? null);
        if (f.type === "signal") callbacks.current.onSignal?.(f.from, f.data);
      }),
  });

  useEffect(() => {
    setState(null);
  }, [enabled, channelId]);

  const client = conn.client;
  return {
    ...conn,
    state,
    join: useCallback((o?: JoinOptions) => withClient(client, (c) => c.join(o)), [client]),
    leave: useCallback(() => withClient(client, (c) => c.leave()), [client]),
    update: useCallback((flags: JoinOptions) => withClient(client, (c) => c.update(flags)), [client]),
    signal: useCallback((to: string, data: unknown) => withClient(client, (c) => c.signal(to, data)), [client]),
    setRecording: useCallback((on: boolean) => withClient(client, (c) => c.setRecording(on)), [client]),
  };
}
