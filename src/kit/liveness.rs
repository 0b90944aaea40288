//! Liveness: presence that matches the sockets that really exist.
//!
//! - **Reconcile on wake**: every constructor (`kit::object::Host::new`) calls its object's
//!   `on_wake` hook, which drops / marks offline whatever the stored state claims beyond the
//!   users of the sockets still open (`Ctx::live_users`). After a crash or a deploy (sockets
//!   dropped, no close events) the next wake repairs presence before the first event is handled.
//! - **Heartbeat sweep** ([`sweep`]): a client that vanished without a TCP close may never get a
//!   `webSocketClose` (workerd issue 1187). The runtime remembers each socket's last
//!   auto-answered `{"type":"ping"}` (`getWebSocketAutoResponseTimestamp`); [`accept`](super::accept)
//!   tags each socket with its connect time. On the object's alarm, sockets silent for
//!   `HEARTBEAT_TIMEOUT_MS` are closed and announced gone through the object's `on_gone`; the
//!   timer is re-armed at the earliest moment a live socket could go stale, and not at all
//!   when none remains. The decisions are pure: [`edge_realtime_core::schedule::liveness`].

use wasm_bindgen::JsCast;
use worker::{js_sys, Env, State, WebSocket};

use edge_realtime_core::error::ApiError;
use edge_realtime_core::schedule::liveness;
use edge_realtime_core::time::Millis;

use super::runtime;

/// Tag prefix of the connect time (ms) [`super::accept`] adds to every socket.
pub const CONNECTED_TAG: &str = "t:";
/// Close code and reason for a socket the sweep found silent.
pub const SWEEP_CLOSE_CODE: u16 = 1001;
pub const SWEEP_CLOSE_REASON: &str = "heartbeat timeout";

/// `HEARTBEAT_TIMEOUT_MS` (default 90 000).
pub fn timeout_ms(env: &Env) -> Millis {
    liveness::parse_timeout(env.var("HEARTBEAT_TIMEOUT_MS").ok().map(|v| v.to_string()).as_deref())
}

/// The connect-time tag for a socket accepted at `now`.
pub fn connected_tag(now: Millis) -> String {
    format!("{CONNECTED_TAG}{now}")
}

/// When the socket was accepted (from its tag).
pub fn connected_at(state: &State, ws: &WebSocket) -> Option<Millis> {
    super::tags(state, ws).iter().find_map(|t| t.strip_prefix(CONNECTED_TAG).and_then(|ms| ms.parse().ok()))
}

/// When the runtime last auto-answered a ping on this socket (`None`: never).
pub fn last_ping(state: &State, ws: &WebSocket) -> Option<Millis> {
    let value = runtime::raw(state).get_web_socket_auto_response_timestamp(ws.as_ref()).ok()?;
    let date = value.dyn_ref::<js_sys::Date>()?;
    let ms = date.get_time();
    ms.is_finite().then_some(ms as Millis)
}

/// One sweep: the open sockets silent for `timeout_ms` (to close and announce gone), and
/// when the next sweep is due (`None`: no live socket left).
pub fn sweep(state: &State, now: Millis, timeout_ms: Millis) -> (Vec<WebSocket>, Option<Millis>) {
    let open: Vec<WebSocket> = super::sockets(state, None).into_iter().filter(super::is_open).collect();
    let seen: Vec<Option<Millis>> =
        open.iter().map(|ws| liveness::last_seen(last_ping(state, ws), connected_at(state, ws))).collect();
    let decision = liveness::sweep(&seen, now, timeout_ms);
    let stale = decision.stale.iter().filter_map(|i| open.get(*i).cloned()).collect();
    (stale, decision.next)
}

/// Close a swept socket (after the object announced its departure).
pub fn close_stale(ws: &WebSocket) {
    super::close(ws, SWEEP_CLOSE_CODE, SWEEP_CLOSE_REASON);
}

/// Flush every write so far to disk (`ctx.storage.sync()`).
pub async fn flush(state: &State) -> Result<(), ApiError> {
    let promise = runtime::raw_storage(&state.storage()).sync().map_err(|e| {
        worker::console_error!("storage.sync failed: {e:?}");
        ApiError::internal()
    })?;
    worker::wasm_bindgen_futures::JsFuture::from(promise).await.map(|_| ()).map_err(|e| {
        worker::console_error!("storage.sync failed: {e:?}");
        ApiError::internal()
    })
}

/// Reset the object (`ctx.abort()`), dropping every socket it holds at once so their TCP
/// closes now instead of at eviction. Call only after every outgoing call of the event has
/// finished and storage was flushed ([`flush`]). The reset runs as a JS microtask right after
/// the current Rust poll (the runtime throws from `abort()`; that throw must not unwind
/// through WASM, and the reset must not re-enter the future queue that called it).
pub fn abort(state: &State, reason: &str) {
    runtime::log_now(runtime::raw(state));
    if let Err(e) = runtime::abort_soon(state, reason) {
        worker::console_error!("abort ({reason}) could not be scheduled: {e:?}");
    }
}
