// useCounterWebSocket: design note 001's hook over CounterClient (`/ws/counter/:name`).

import { useCallback, useEffect, useState } from "react";
import { CounterClient, COUNTER_EVENT_TYPES, type CounterEvent, type CounterEventType, type CounterMetadata } from "@edge-realtime/client";
import { keyOf, useLatest, useRealtimeClient, withClient, type ConnectionState, type HookClientOptions } from "./core.js";

export interface UseCounterWebSocketOptions extends HookClientOptions {
  /** Default true; `false` closes the socket (and opens none). */
  enabled?: boolean;
  /** Every counter event (`increment`/`decrement`/`setValue`/`reset`), once, in `seq` order. */
  onUpdate?: (event: CounterEvent) => void;
  /** The first retry's delay bound in ms (backoff `initialMs`, full jitter, doubling). Default 3000. */
  reconnectInterval?: number;
  /** The `{"type":"ping"}` heartbeat interval in ms (socket `heartbeatMs`). Default 30000. */
  pingInterval?: number;
  /** Only these event types (`?ops=`). */
  ops?: readonly CounterEventType[];
}

export interface UseCounterWebSocketResult extends ConnectionState<CounterClient> {
  /** When the last event arrived (design note 001). */
  lastUpdate: Date | null;
  /** The counter's value (from the snapshot and every event); `null` before the first. */
  value: number | null;
  metadata: CounterMetadata | null;
  lastEvent: CounterEvent | null;
  /** Mutations over the socket (queued while offline); each returns its client id. */
  increment: (amount?: number) => Promise<string>;
  decrement: (amount?: number) => Promise<string>;
  setValue: (value: number) => Promise<string>;
  reset: () => Promise<string>;
}

export function useCounterWebSocket(counterName: string, options: UseCounterWebSocketOptions = {}): UseCounterWebSocketResult {
  const { enabled = true, onUpdate, reconnectInterval = 3000, pingInterval = 30_000, ops, ...clientOptions } = options;
  const onUpdateRef = useLatest(onUpdate);
  const [lastUpdate, setLastUpdate] = useState<Date | null>(null);
  const [value, setValueState] = useState<number | null>(null);
  const [metadata, setMetadata] = useState<CounterMetadata | null>(null);
  const [lastEvent, setLastEvent] = useState<CounterEvent | null>(null);

  const conn = useRealtimeClient({
    enabled,
    key: keyOf(counterName, ops, reconnectInterval, pingInterval),
    options: clientOptions,
    create: (o) =>
      new CounterClient(counterName, {
        ...o,
        ops,
        backoff: { initialMs: reconnectInterval, ...o.backoff },
        heartbeatMs: o.heartbeatMs ?? pingInterval,
      }),
    attach: (c) =>
      c.onFrame((f) => {
        if (f.type === "snapshot") {
          setValueState(f.value);
          setMetadata(f.metadata);
        } else if (COUNTER_EVENT_TYPES.includes(f.type as CounterEventType)) {
          const e = f as CounterEvent;
          setValueState(e.value);
          setMetadata(e.metadata);
          setLastEvent(e);
          setLastUpdate(new Date());
          onUpdateRef.current?.(e);
        }
      }),
  });

  useEffect(() => {
    if (!enabled) {
      setValueState(null);
      setMetadata(null);
    }
  }, [enabled, counterName]);

  const client = conn.client;
  return {
    ...conn,
    lastUpdate,
    value,
    metadata,
    lastEvent,
    increment: useCallback((amount = 1) => withClient(client, (c) => c.increment(amount)), [client]),
    decrement: useCallback((amount = 1) => withClient(client, (c) => c.decrement(amount)), [client]),
    setValue: useCallback((v: number) => withClient(client, (c) => c.setValue(v)), [client]),
    reset: useCallback(() => withClient(client, (c) => c.reset()), [client]),
  };
}
