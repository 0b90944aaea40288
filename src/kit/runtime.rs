//! Runtime methods workers-rs 0.8.7 does not bind (or binds with an internal `unwrap()`),
//! declared over `state.as_raw()` so every call returns a `Result` instead of panicking.

use wasm_bindgen::prelude::*;
use worker::js_sys;

#[wasm_bindgen]
extern "C" {
    /// The same JS object as `worker_sys::DurableObjectState`, seen through the methods we need.
    #[wasm_bindgen(extends = js_sys::Object)]
    pub type RawState;

    /// `ctx.abort()`: resets the object; every socket it holds is dropped at once.
    #[wasm_bindgen(method, catch)]
    pub fn abort(this: &RawState, reason: &str) -> Result<(), JsValue>;

    #[wasm_bindgen(method, catch, js_name = acceptWebSocket)]
    pub fn accept_web_socket(this: &RawState, ws: &JsValue, tags: js_sys::Array) -> Result<(), JsValue>;

    #[wasm_bindgen(method, catch, js_name = getWebSockets)]
    pub fn get_web_sockets(this: &RawState, tag: Option<String>) -> Result<js_sys::Array, JsValue>;

    #[wasm_bindgen(method, catch, js_name = getTags)]
    pub fn get_tags(this: &RawState, ws: &JsValue) -> Result<js_sys::Array, JsValue>;

    #[wasm_bindgen(method, catch, js_name = getWebSocketAutoResponseTimestamp)]
    pub fn get_web_socket_auto_response_timestamp(this: &RawState, ws: &JsValue) -> Result<JsValue, JsValue>;
}

/// View a DO's state through [`RawState`].
pub fn raw(state: &worker::State) -> &RawState {
    state.as_raw().unchecked_ref::<RawState>()
}

#[wasm_bindgen(inline_js = r#"
export function sql_exec(sql, query, binds) {
  sql.exec(query, ...JSON.parse(binds));
}
const pendingLines = new WeakMap();
function writeLines(state, lines) {
  if (pendingLines.get(state) !== lines) return;
  pendingLines.delete(state);
  for (const line of lines) console.log(line);
}
export function log_soon(state, line, ms) {
  let lines = pendingLines.get(state);
  if (lines === undefined) {
    lines = [];
    pendingLines.set(state, lines);
    setTimeout(() => writeLines(state, lines), ms);
  }
  lines.push(line);
}
export function log_now(state) {
  const lines = pendingLines.get(state);
  if (lines !== undefined) writeLines(state, lines);
}
// Per object: user -> the sockets of theirs this instance counts as live. Built by one scan
// of the runtime's sockets at the first question after a wake, then kept by live_add (accept)
// and live_remove (the kit's gone announcement), so a join or a leave costs O(users), not
// O(sockets) tag reads. readyState is still checked when asked: a socket closing but not yet
// announced gone is not live, as with the scan.
const liveIndex = new WeakMap();
function liveIndexOf(state) {
  let index = liveIndex.get(state);
  if (index === undefined) {
    index = new Map();
    for (const ws of state.getWebSockets()) {
      if (ws.readyState !== 1) continue;
      const first = state.getTags(ws)[0];
      if (typeof first === "string" && first.startsWith("u:")) liveAdd(index, first.slice(2), ws);
    }
    liveIndex.set(state, index);
  }
  return index;
}
function liveAdd(index, user, ws) {
  const sockets = index.get(user);
  if (sockets === undefined) index.set(user, new Set([ws]));
  else sockets.add(ws);
}
export function live_users(state, except) {
  const index = liveIndexOf(state);
  const users = [];
  for (const [user, sockets] of index) {
    for (const ws of sockets) {
      if (ws.readyState === 3) { sockets.delete(ws); continue; }
      if (ws !== except && ws.readyState === 1) { users.push(user); break; }
    }
    if (sockets.size === 0) index.delete(user);
  }
  return users;
}
export function live_add(state, ws, user) {
  // Not built yet: the first question's scan will find this socket.
  const index = liveIndex.get(state);
  if (index !== undefined) liveAdd(index, user, ws);
}
export function live_remove(state, ws, user) {
  const index = liveIndex.get(state);
  const sockets = index === undefined ? undefined : index.get(user);
  if (sockets === undefined) return;
  sockets.delete(ws);
  if (sockets.size === 0) index.delete(user);
}
export function live_forget(state) {
  liveIndex.delete(state);
}
export function next_turn(callback) {
  setTimeout(callback, 0);
}
export function broadcast_text(state, frame, tag, except) {
  let sent = 0;
  for (const ws of (tag === undefined ? state.getWebSockets() : state.getWebSockets(tag))) {
    if (ws === except) continue;
    try { ws.send(frame); sent++; } catch (_) { /* closing: it misses the frame */ }
  }
  return sent;
}
"#)]
extern "C" {
    /// Send `frame` to every socket of the object (with `tag`, if given) except `except`, in one
    /// call across the WASM boundary: the loop runs in JS, so fan-out costs one string copy and
    /// one crossing per broadcast instead of three crossings per socket. Returns how many sends
    /// the runtime accepted. `getWebSockets` throwing is the only error.
    #[wasm_bindgen(catch)]
    pub fn broadcast_text(state: &RawState, frame: &str, tag: Option<String>, except: Option<&JsValue>) -> Result<u32, JsValue>;

    /// Queue `line` for `console.log`: the object's queued lines are written together, in order,
    /// by one timer `ms` after the first of them (see `kit::log_soon`).
    pub fn log_soon(state: &RawState, line: &str, ms: u32);

    /// The distinct users (first tag `u:<id>`) of the object's open sockets, without `except`,
    /// from the object's live index (see `kit::live_users`).
    #[wasm_bindgen(catch)]
    pub fn live_users(state: &RawState, except: Option<&JsValue>) -> Result<js_sys::Array, JsValue>;

    /// Count `ws`, just accepted for `user`, in the live index (if it is built).
    pub fn live_add(state: &RawState, ws: &JsValue, user: &str);

    /// `ws` of `user` was announced gone: out of the live index.
    pub fn live_remove(state: &RawState, ws: &JsValue, user: &str);

    /// Drop the live index (a new instance builds its own from the runtime's sockets).
    pub fn live_forget(state: &RawState);

    /// Write the object's queued lines now (before the object resets itself).
    pub fn log_now(state: &RawState);

    /// Call `callback` in a later turn of the event loop (`setTimeout(callback, 0)`): after the
    /// frames that already arrived (kit::coalesce).
    pub fn next_turn(callback: &JsValue);

    /// `sql.exec(query, ...bindings)` with the bindings as one JSON array (see `kit::sql::exec`).
    #[wasm_bindgen(catch)]
    pub fn sql_exec(sql: &JsValue, query: &str, binds_json: &str) -> Result<(), JsValue>;
}

#[wasm_bindgen]
extern "C" {
    /// The same JS object as `worker_sys::DurableObjectStorage`, seen through `sync()`.
    #[wasm_bindgen(extends = js_sys::Object)]
    pub type RawStorage;

    /// `ctx.storage.sync()`: resolves once every write so far is durable.
    #[wasm_bindgen(method, catch)]
    pub fn sync(this: &RawStorage) -> Result<js_sys::Promise, JsValue>;
}

/// View a DO's storage through [`RawStorage`].
pub fn raw_storage(storage: &worker::Storage) -> &RawStorage {
    storage.as_raw().unchecked_ref::<RawStorage>()
}

#[wasm_bindgen]
extern "C" {
    /// The global `queueMicrotask(fn)`.
    #[wasm_bindgen(catch, js_name = queueMicrotask)]
    pub fn queue_microtask(f: &JsValue) -> Result<(), JsValue>;
}

/// Schedule `ctx.abort(reason)` as a plain JS microtask, so it runs with no WASM frame on the
/// stack. Called directly from Rust, the reset re-entered wasm-bindgen-futures' task queue
/// while it was polling ("closure invoked recursively or after being dropped").
pub fn abort_soon(state: &worker::State, reason: &str) -> Result<(), JsValue> {
    let raw: &JsValue = state.as_raw().as_ref();
    let abort: js_sys::Function = js_sys::Reflect::get(raw, &JsValue::from_str("abort"))?.dyn_into()?;
    let bound = abort.bind1(raw, &JsValue::from_str(reason));
    queue_microtask(bound.as_ref())
}
