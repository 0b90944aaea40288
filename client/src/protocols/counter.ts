// Counter (docs/protocol.md §6.2, docs/counter.md): `/ws/counter/:name`.

import { frame, integer, literal, nullable, object, optional, string, array, decodeWith, type FrameOf, type Infer } from "../guards.js";
import { TypedClient, clientId, errorFrame, loggedOutFrame, pongFrame, query, resyncFrame, segment, type ClientOptions } from "./common.js";

export const counterMetadata = object({
  name: string,
  value: integer,
  createdAt: string,
  updatedAt: string,
  operationCount: integer,
});
export type CounterMetadata = Infer<typeof counterMetadata>;

const event = <T extends string>(type: T) =>
  frame(type, { value: integer, previousValue: integer, metadata: counterMetadata, timestamp: string, seq: integer });

/** Every frame the server sends on a counter socket, by `type`. */
export const counterFrames = {
  snapshot: frame("snapshot", { value: integer, metadata: counterMetadata, seq: integer }),
  increment: event("increment"),
  decrement: event("decrement"),
  setValue: event("setValue"),
  reset: event("reset"),
  ack: frame("ack", { id: nullable(string), seq: integer }),
  resync_required: resyncFrame,
  error: errorFrame,
  logged_out: loggedOutFrame,
  pong: pongFrame,
};
export type CounterFrame = FrameOf<typeof counterFrames>;
export type CounterEventType = "increment" | "decrement" | "setValue" | "reset";
export type CounterEvent = Extract<CounterFrame, { type: CounterEventType }>;
export const COUNTER_EVENT_TYPES: readonly CounterEventType[] = ["increment", "decrement", "setValue", "reset"];

export function decodeCounterFrame(value: unknown, exact = false): CounterFrame | undefined {
  return decodeWith(counterFrames, value, exact);
}

/** `GET /api/counter/:name/history` */
export const counterHistory = object({
  operations: array(
    object({
      seq: integer,
      type: literal("increment", "decrement", "setValue", "reset"),
      amount: optional(integer),
      value: integer,
      previousValue: integer,
      timestamp: string,
    }),
  ),
  nextBefore: nullable(integer),
});
export type CounterHistory = Infer<typeof counterHistory>;

export interface CounterOptions extends ClientOptions {
  /** Only receive these event types (`?ops=`). */
  ops?: readonly CounterEventType[];
}

/**
 * A live counter. `value` follows the snapshot and every event; mutations go over the socket
 * with a client id (a retry with the same id is applied once) and are queued while offline.
 */
export class CounterClient extends TypedClient<CounterFrame> {
  value: number | undefined;
  metadata: CounterMetadata | undefined;

  constructor(
    readonly name: string,
    options: CounterOptions,
  ) {
    super(counterFrames, `/ws/counter/${segment(name)}${query({ ops: options.ops?.join(",") })}`, options, {
      sequenceOf: (f) => (COUNTER_EVENT_TYPES.includes(f.type as CounterEventType) && Number.isSafeInteger(f.seq) ? (f.seq as number) : undefined),
      baselineOf: (f) => (f.type === "snapshot" && Number.isSafeInteger(f.seq) ? (f.seq as number) : undefined),
    });
  }

  protected override apply(f: CounterFrame): void {
    if (f.type === "snapshot" || COUNTER_EVENT_TYPES.includes(f.type as CounterEventType)) {
      const e = f as CounterEvent | Extract<CounterFrame, { type: "snapshot" }>;
      this.value = e.value;
      this.metadata = e.metadata;
    }
  }

  /** Returns the client id of the mutation (the `ack` carries it). */
  increment(amount = 1, id = clientId()): string {
    this.socket.send({ type: "increment", amount, id });
    return id;
  }
  decrement(amount = 1, id = clientId()): string {
    this.socket.send({ type: "decrement", amount, id });
    return id;
  }
  setValue(value: number, id = clientId()): string {
    this.socket.send({ type: "setValue", value, id });
    return id;
  }
  reset(id = clientId()): string {
    this.socket.send({ type: "reset", id });
    return id;
  }

  /** `GET /api/counter/:name` */
  get(): Promise<{ value: number; metadata: CounterMetadata }> {
    return this.http("GET", `/api/counter/${segment(this.name)}`);
  }

  /** `GET /api/counter/:name/history` (newest first; pass `nextBefore` as `before`). */
  history(params: { limit?: number; before?: number } = {}): Promise<CounterHistory> {
    return this.http("GET", `/api/counter/${segment(this.name)}/history${query(params)}`);
  }
}
