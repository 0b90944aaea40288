// A tiny schema language for server frames. One declaration per frame gives both the
// TypeScript type (`Infer`) and the runtime type guard, so the two cannot drift apart; the
// client tests feed real frames from the server through these guards.

/** A runtime type guard. `exact` also rejects keys the schema does not name (tests use it). */
export interface Guard<T> {
  (value: unknown): value is T;
  exact(value: unknown): value is T;
}

/** A field that may be absent. */
export interface Optional<T> {
  readonly optional: Guard<T>;
}

type Field = Guard<unknown> | Optional<unknown>;
export type Shape = Record<string, Field>;

type Simplify<T> = { [K in keyof T]: T[K] } & {};

/** The TypeScript type a guard accepts. */
export type Infer<G> = G extends Guard<infer T> ? T : never;

type Required<S extends Shape> = { [K in keyof S as S[K] extends Optional<unknown> ? never : K]: Infer<S[K]> };
type Optionals<S extends Shape> = {
  [K in keyof S as S[K] extends Optional<unknown> ? K : never]?: S[K] extends Optional<infer T> ? T : never;
};
export type ObjectOf<S extends Shape> = Simplify<Required<S> & Optionals<S>>;

function guard<T>(loose: (v: unknown) => boolean, exact: (v: unknown) => boolean = loose): Guard<T> {
  const g = ((v: unknown) => loose(v)) as Guard<T>;
  g.exact = (v: unknown): v is T => exact(v);
  return g;
}

export const string: Guard<string> = guard((v) => typeof v === "string");
export const boolean: Guard<boolean> = guard((v) => typeof v === "boolean");
/** An integer within ±(2^53−1): every seq, count, value and millisecond time on the wire. */
export const integer: Guard<number> = guard((v) => Number.isSafeInteger(v));
export const unknownValue: Guard<unknown> = guard(() => true);

/** One of the given string literals. */
export function literal<const T extends string>(...values: T[]): Guard<T> {
  return guard((v) => typeof v === "string" && (values as string[]).includes(v));
}

export function nullable<T>(inner: Guard<T>): Guard<T | null> {
  return guard((v) => v === null || inner(v), (v) => v === null || inner.exact(v));
}

export function optional<T>(inner: Guard<T>): Optional<T> {
  return { optional: inner };
}

export function array<T>(item: Guard<T>): Guard<T[]> {
  return guard(
    (v) => Array.isArray(v) && v.every((x) => item(x)),
    (v) => Array.isArray(v) && v.every((x) => item.exact(x)),
  );
}

export function tuple<A, B>(a: Guard<A>, b: Guard<B>): Guard<[A, B]> {
  return guard(
    (v) => Array.isArray(v) && v.length === 2 && a(v[0]) && b(v[1]),
    (v) => Array.isArray(v) && v.length === 2 && a.exact(v[0]) && b.exact(v[1]),
  );
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A JSON object used as a map: any keys, every value of this type (e.g. emoji → count). */
export function record<T>(value: Guard<T>): Guard<Record<string, T>> {
  return guard(
    (v) => isRecord(v) && Object.values(v).every((x) => value(x)),
    (v) => isRecord(v) && Object.values(v).every((x) => value.exact(x)),
  );
}

function checkFields(shape: Shape, v: Record<string, unknown>, exact: boolean): boolean {
  for (const [key, field] of Object.entries(shape)) {
    const present = Object.prototype.hasOwnProperty.call(v, key);
    if ("optional" in field) {
      if (present && !(exact ? field.optional.exact(v[key]) : field.optional(v[key]))) return false;
    } else if (!present || !(exact ? field.exact(v[key]) : field(v[key]))) {
      return false;
    }
  }
  return true;
}

/** A JSON object with these fields. Extra keys are accepted, except by `exact`. */
export function object<S extends Shape>(shape: S): Guard<ObjectOf<S>> {
  return guard(
    (v) => isRecord(v) && checkFields(shape, v, false),
    (v) => isRecord(v) && checkFields(shape, v, true) && Object.keys(v).every((k) => k in shape),
  );
}

/** A JSON object with these fields and any others (notifications, admin broadcasts). */
export function openObject<S extends Shape>(shape: S): Guard<ObjectOf<S> & Record<string, unknown>> {
  return guard((v) => isRecord(v) && checkFields(shape, v, false), (v) => isRecord(v) && checkFields(shape, v, true));
}

/** A server frame: `{"type": <type>, ...fields}`. */
export function frame<const T extends string, S extends Shape>(type: T, shape: S): Guard<ObjectOf<{ type: Guard<T> } & S>> {
  return object({ type: literal(type), ...shape }) as Guard<ObjectOf<{ type: Guard<T> } & S>>;
}

/** Every frame type of a protocol, by its `type`. */
export type FrameTable = Record<string, Guard<{ type: string }>>;
/** The union of a protocol's frames. */
export type FrameOf<T extends FrameTable> = { [K in keyof T]: Infer<T[K]> }[keyof T];

/**
 * Decode a parsed frame with a protocol's table: the typed frame, or `undefined` if its `type`
 * is unknown or its fields don't match (`exact` also refuses unknown keys).
 */
export function decodeWith<T extends FrameTable>(table: T, value: unknown, exact = false): FrameOf<T> | undefined {
  if (!isRecord(value) || typeof value.type !== "string") return undefined;
  if (!Object.prototype.hasOwnProperty.call(table, value.type)) return undefined;
  const g = table[value.type];
  if (!g) return undefined;
  return (exact ? g.exact(value) : g(value)) ? (value as FrameOf<T>) : undefined;
}
