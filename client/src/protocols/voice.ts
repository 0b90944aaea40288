// VoiceChannel (docs/voice.md): `/ws/voice/:channelId`, who is in a voice call, its session and
// recording state, and the relay of WebRTC signalling between participants. Media is peer to
// peer (the object never sees audio); an SFU backend is out of scope for now.

import { array, boolean, decodeWith, frame, integer, nullable, object, string, unknownValue, type FrameOf, type Infer } from "../guards.js";
import { TypedClient, errorFrame, loggedOutFrame, pongFrame, segment, type ClientOptions } from "./common.js";

export const voiceParticipant = object({
  userId: string,
  userName: string,
  joinedAt: integer,
  audioEnabled: boolean,
  videoEnabled: boolean,
});
export type VoiceParticipant = Infer<typeof voiceParticipant>;

const stateFields = {
  channelId: string,
  sessionId: nullable(string),
  participants: array(voiceParticipant),
  recording: boolean,
};

/** Every frame the server sends on a voice socket, by `type`. */
export const voiceFrames = {
  voice_state: frame("voice_state", stateFields),
  participant_joined: frame("participant_joined", { participant: voiceParticipant, participants: array(voiceParticipant), sessionId: string }),
  participant_left: frame("participant_left", { userId: string, participants: array(voiceParticipant) }),
  participant_updated: frame("participant_updated", { participant: voiceParticipant }),
  recording_changed: frame("recording_changed", { recording: boolean, by: string }),
  session_ended: frame("session_ended", { sessionId: nullable(string) }),
  signal: frame("signal", { from: string, data: unknownValue }),
  error: errorFrame,
  logged_out: loggedOutFrame,
  pong: pongFrame,
};
export type VoiceFrame = FrameOf<typeof voiceFrames>;
export type VoiceState = Omit<Extract<VoiceFrame, { type: "voice_state" }>, "type">;

export function decodeVoiceFrame(value: unknown, exact = false): VoiceFrame | undefined {
  return decodeWith(voiceFrames, value, exact);
}

/** `GET /api/voice/:channelId`: the `voice_state` frame without `type`. */
export const voiceStateResponse = object(stateFields);

/** Largest `signal` `data`, serialized (bigger is the in-band error `signal_too_large`). */
export const MAX_SIGNAL_BYTES = 16 * 1024;

export interface JoinOptions {
  /** Default true. */
  audioEnabled?: boolean;
  /** Default false. */
  videoEnabled?: boolean;
}

/**
 * One voice channel. `state` follows `voice_state` and every event. `join` makes this socket a
 * participant — and again after every reconnect (a new socket has not joined), until `leave`.
 * `signal(to, data)` relays any JSON (an SDP offer/answer, an ICE candidate) to one other
 * participant's sockets; listen with `on("signal", ...)`.
 */
export class VoiceClient extends TypedClient<VoiceFrame> {
  readonly channelId: string;
  state: VoiceState | undefined;
  /** The flags of the last `join`/`update` while joined; `undefined` after `leave`. */
  private wanted: Required<JoinOptions> | undefined;

  constructor(channelId: string, options: ClientOptions) {
    const hooks: { open?: () => void } = {};
    super(voiceFrames, `/ws/voice/${segment(channelId)}`, {
      ...options,
      onStatus: (status, info) => {
        if (status === "open") hooks.open?.();
        options.onStatus?.(status, info);
      },
    });
    this.channelId = channelId;
    hooks.open = () => {
      if (this.wanted) this.socket.send({ type: "join", ...this.wanted });
    };
  }

  protected override apply(f: VoiceFrame): void {
    if (f.type === "voice_state") {
      const { type: _type, ...state } = f;
      this.state = state;
      return;
    }
    const s = this.state;
    if (!s) return;
    if (f.type === "participant_joined") this.state = { ...s, participants: f.participants, sessionId: f.sessionId };
    else if (f.type === "participant_left") this.state = { ...s, participants: f.participants };
    else if (f.type === "participant_updated") {
      this.state = { ...s, participants: s.participants.map((p) => (p.userId === f.participant.userId ? f.participant : p)) };
    } else if (f.type === "recording_changed") this.state = { ...s, recording: f.recording };
    else if (f.type === "session_ended") this.state = { ...s, sessionId: null, recording: false, participants: [] };
  }

  /** Whether `userId` is a participant now. */
  isParticipant(userId: string): boolean {
    return this.state?.participants.some((p) => p.userId === userId) ?? false;
  }

  /** Join (sent when the socket is open; again after each reconnect until {@link leave}). */
  join(options: JoinOptions = {}): void {
    this.wanted = { audioEnabled: options.audioEnabled ?? true, videoEnabled: options.videoEnabled ?? false };
    if (this.socket.status === "open") this.socket.send({ type: "join", ...this.wanted });
  }

  leave(): void {
    this.wanted = undefined;
    if (this.socket.status === "open") this.socket.send({ type: "leave" });
  }

  /** Change this participant's flags (absent fields stay as they are). */
  update(flags: JoinOptions): void {
    if (this.wanted) this.wanted = { ...this.wanted, ...definedOnly(flags) };
    this.socket.send({ type: "update", ...definedOnly(flags) });
  }

  /** Relay `data` (any JSON, at most 16 KiB serialized) to participant `to`'s sockets. */
  signal(to: string, data: unknown): void {
    this.socket.send({ type: "signal", to, data });
  }

  /** Turn the channel's recording flag on or off (participants only). */
  setRecording(enabled: boolean): void {
    this.socket.send({ type: "recording", enabled });
  }

  /** `GET /api/voice/:channelId` */
  fetchState(): Promise<VoiceState> {
    return this.http("GET", `/api/voice/${segment(this.channelId)}`);
  }
}

function definedOnly(flags: JoinOptions): JoinOptions {
  const out: JoinOptions = {};
  if (flags.audioEnabled !== undefined) out.audioEnabled = flags.audioEnabled;
  if (flags.videoEnabled !== undefined) out.videoEnabled = flags.videoEnabled;
  return out;
}
