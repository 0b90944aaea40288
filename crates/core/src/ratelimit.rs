//! RateLimiter core (docs/protocol.md §6.6): five algorithms as pure `check(state, params, now)` functions.
//!
//! The adapter keeps one row per (algorithm, key) holding [`State::to_json`] and its
//! [`State::forget_at`]; a check is `parse_request` → `State::load` → `Params::check` → store
//! the new state (only when the request was allowed; a denied request changes nothing) → answer
//! `Decision::to_json` with 200. Its alarm deletes rows whose `forget_at <= now`: by then the
//! row is equivalent to no row at all.
//!
//! ## Arithmetic: exact integers, no f64 state
//! Every decision is made in integers (i128 inside, i64 stored), so it is exact, never drifts and
//! never overflows, even after years of idle time:
//! - fixed and sliding windows are aligned to the epoch (`start = now - now mod window`) and
//!   count whole requests; the sliding estimate `prev * (1 - elapsed/window) + current` is
//!   compared after multiplying both sides by `window`.
//! - token bucket, leaky bucket and GCRA share one meter: the "theoretical arrival time" (TAT)
//!   of virtual scheduling. Time is scaled by the rate so one request (or token) costs a whole
//!   number of scaled units, and the TAT is stored as whole ms plus a remainder (`frac / scale`).
//!   GCRA: scale `rate`, a request costs `period`. Buckets: a rate in tokens/s is taken in
//!   micro-units (`refillRate` 0.1 → 100 000), the scale; a token costs 10^9 — so fractional
//!   rates are honoured to 10^-6 per second (the one rounding, done once at parse time).
//! - `retryAfterMs` / `resetAfterMs` round *up* to whole ms: waiting them out is always enough,
//!   and one ms less is never enough (the tests check both on every denial).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::time::Millis;

/// Longest accepted `key`, in characters.
pub const MAX_KEY_CHARS: usize = 256;
/// Largest `limit`, `capacity`, `tokens`, `rate` and `burst`.
pub const MAX_COUNT: i64 = 1_000_000_000;
/// Longest `window` / `period`: one year of ms.
pub const MAX_WINDOW_MS: i64 = 365 * 24 * 60 * 60 * 1000;
/// Longest time a bucket may take to refill/drain from empty (capacity / rate), and a GCRA key
/// its burst (burst × period / rate): ten years. Keeps every ms we answer far below 2^53.
pub const MAX_HORIZON_MS: i64 = 10 * MAX_WINDOW_MS;
/// Smallest `refillRate` / `leakRate` (per second): the fixed-point quantum.
pub const MIN_RATE_PER_SEC: f64 = 1e-6;
/// Largest `refillRate` / `leakRate` (per second).
pub const MAX_RATE_PER_SEC: f64 = 1e9;
/// The Worker's default WebSocket-upgrade allowance per user (var `WS_UPGRADES_PER_MINUTE`).
pub const DEFAULT_WS_UPGRADES_PER_MINUTE: u32 = 30;

crate::ops! {
    /// RateLimiter's operations: one check per algorithm (the public API, `POST
    /// /api/ratelimit/check[/<algorithm>]`) and the Worker's own upgrade guard.
    pub enum RateLimitOp {
        FixedWindow = "check/fixed-window",
        SlidingWindow = "check/sliding-window",
        TokenBucket = "check/token-bucket",
        LeakyBucket = "check/leaky-bucket",
        Gcra = "check/gcra",
        /// Internal (`?perMinute=`): the WebSocket upgrade limit, keyed by the object's name.
        Upgrade = "upgrade",
    }
}

/// The RateLimiter object's tables (the kit adds `_schedule`): its name (for the wake log,
/// forgotten with the last row) and one state row per `(algorithm, key)`.
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS limits (algorithm TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL, \
     forget_at INTEGER NOT NULL, PRIMARY KEY (algorithm, key))",
];
/// The RateLimiter's one timer: delete rows whose `forget_at` has passed.
pub const FORGET_TIMER: &str = "forget";

/// Micro-units per unit: rates per second are stored as this many micro-units per second.
const MICRO: f64 = 1_000_000.0;
/// Scaled time one token or request costs in a bucket meter: 10^9 = 10^6 (micro) × 10^3 (ms/s).
const BUCKET_UNIT: i128 = 1_000_000_000;

// ---------------------------------------------------------------------------------------------
// Algorithms and parameters

/// Which limiter; `as_str` names its storage row (with the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    FixedWindow,
    SlidingWindow,
    TokenBucket,
    LeakyBucket,
    Gcra,
}

impl Algorithm {
    pub const ALL: [Algorithm; 5] =
        [Self::FixedWindow, Self::SlidingWindow, Self::TokenBucket, Self::LeakyBucket, Self::Gcra];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::FixedWindow => "fixed-window",
            Self::SlidingWindow => "sliding-window",
            Self::TokenBucket => "token-bucket",
            Self::LeakyBucket => "leaky-bucket",
            Self::Gcra => "gcra",
        }
    }

    /// The router's op (`route::Endpoint::RateLimit`): `check/<algorithm>`.
    pub fn from_op(op: &str) -> Option<Self> {
        let name = op.strip_prefix("check/")?;
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// `{limit, window}` of the fixed and sliding windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowParams {
    limit: i64,
    window_ms: i64,
}

impl WindowParams {
    pub fn new(limit: i64, window_ms: i64) -> Result<Self, ParamError> {
        Ok(Self { limit: count("limit", limit)?, window_ms: window("window", window_ms)? })
    }
    pub fn limit(&self) -> i64 {
        self.limit
    }
    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }
}

/// `{capacity, refillRate, tokens}`: the bucket starts full and refills continuously.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucketParams {
    capacity: i64,
    refill_micro_per_sec: i64,
    tokens: i64,
}

impl TokenBucketParams {
    pub fn new(capacity: i64, refill_per_sec: f64, tokens: i64) -> Result<Self, ParamError> {
        let capacity = count("capacity", capacity)?;
        let tokens = count("tokens", tokens)?;
        if tokens > capacity {
            return Err(invalid("tokens", "must not exceed capacity (such a request could never be allowed)"));
        }
        let refill_micro_per_sec = rate("refillRate", refill_per_sec)?;
        horizon("refillRate", bucket_meter(capacity, refill_micro_per_sec), "refilling the whole capacity")?;
        Ok(Self { capacity, refill_micro_per_sec, tokens })
    }
    pub fn capacity(&self) -> i64 {
        self.capacity
    }
    /// The refill rate in millionths of a token per second.
    pub fn refill_micro_per_sec(&self) -> i64 {
        self.refill_micro_per_sec
    }
    pub fn tokens(&self) -> i64 {
        self.tokens
    }
}

/// `{capacity, leakRate}`: a leaky bucket as a meter — each request adds one, the level drains
/// continuously, and a request that would overflow is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeakyBucketParams {
    capacity: i64,
    leak_micro_per_sec: i64,
}

impl LeakyBucketParams {
    pub fn new(capacity: i64, leak_per_sec: f64) -> Result<Self, ParamError> {
        let capacity = count("capacity", capacity)?;
        let leak_micro_per_sec = rate("leakRate", leak_per_sec)?;
        horizon("leakRate", bucket_meter(capacity, leak_micro_per_sec), "draining a full bucket")?;
        Ok(Self { capacity, leak_micro_per_sec })
    }
    pub fn capacity(&self) -> i64 {
        self.capacity
    }
    /// The leak rate in millionths of a request per second.
    pub fn leak_micro_per_sec(&self) -> i64 {
        self.leak_micro_per_sec
    }
}

/// `{rate, period, burst}`: `rate` requests per `period` ms, evenly spaced, of which up to
/// `burst` may arrive back to back (`burst` is the total allowed at once on a fresh key, so
/// `burst: 1` means strict spacing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraParams {
    rate: i64,
    period_ms: i64,
    burst: i64,
}

impl GcraParams {
    pub fn new(rate: i64, period_ms: i64, burst: i64) -> Result<Self, ParamError> {
        let p = Self { rate: count("rate", rate)?, period_ms: window("period", period_ms)?, burst: count("burst", burst)? };
        horizon("burst", p.meter(), "burst × period / rate")?;
        Ok(p)
    }
    pub fn rate(&self) -> i64 {
        self.rate
    }
    pub fn period_ms(&self) -> i64 {
        self.period_ms
    }
    pub fn burst(&self) -> i64 {
        self.burst
    }
    fn meter(&self) -> Meter {
        Meter { scale: i128::from(self.rate), unit: i128::from(self.period_ms), capacity: i128::from(self.burst) }
    }
}

/// Validated parameters of one check; the adapter matches on it (or just calls [`Params::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Params {
    FixedWindow(WindowParams),
    SlidingWindow(WindowParams),
    TokenBucket(TokenBucketParams),
    LeakyBucket(LeakyBucketParams),
    Gcra(GcraParams),
}

/// A parsed `POST /api/ratelimit/check…` body: the key names the DO and the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    pub key: String,
    pub params: Params,
}

/// Why a body was refused: wrong shapes/types are 400, well-typed but unusable values 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("unknown rate limit operation {0:?}")]
    UnknownOp(String),
    #[error("body must be a JSON object")]
    NotAnObject,
    #[error("{0} is required")]
    Missing(&'static str),
    /// An optional field sent as `null`: never its default.
    #[error("{0} is null: send a number, or leave the field out for the default")]
    Null(&'static str),
    #[error("{field} must be {expected}")]
    WrongType { field: &'static str, expected: &'static str },
    #[error("{field} {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl ParamError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownOp(_) => "not_found",
            Self::NotAnObject | Self::Missing(_) | Self::Null(_) | Self::WrongType { .. } => "invalid_body",
            Self::Invalid { field: "key", .. } => "invalid_key",
            Self::Invalid { .. } => "invalid_parameter",
        }
    }
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> Self {
        match e {
            ParamError::UnknownOp(_) => ApiError::not_found(e.to_string()),
            ParamError::NotAnObject | ParamError::Missing(_) | ParamError::Null(_) | ParamError::WrongType { .. } => {
                ApiError::bad_request(e.code(), e.to_string())
            }
            ParamError::Invalid { .. } => ApiError::unprocessable(e.code(), e.to_string()),
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ParamError {
    ParamError::Invalid { field, reason: reason.into() }
}

fn count(field: &'static str, v: i64) -> Result<i64, ParamError> {
    if v <= 0 {
        Err(invalid(field, "must be a positive integer"))
    } else if v > MAX_COUNT {
        Err(invalid(field, format!("must be at most {MAX_COUNT}")))
    } else {
        Ok(v)
    }
}

fn window(field: &'static str, ms: i64) -> Result<i64, ParamError> {
    if ms <= 0 {
        Err(invalid(field, "must be a positive integer (ms)"))
    } else if ms > MAX_WINDOW_MS {
        Err(invalid(field, format!("must be at most {MAX_WINDOW_MS} ms (one year)")))
    } else {
        Ok(ms)
    }
}

/// A rate per second → micro-units per second (the only rounding in this module).
fn rate(field: &'static str, per_sec: f64) -> Result<i64, ParamError> {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        return Err(invalid(field, "must be a positive number (per second)"));
    }
    if per_sec < MIN_RATE_PER_SEC {
        return Err(invalid(field, "must be at least 0.000001 per second"));
    }
    if per_sec > MAX_RATE_PER_SEC {
        return Err(invalid(field, "must be at most 1000000000 per second"));
    }
    // ≤ 10^15 < 2^53, so the rounded product is an exact integer.
    Ok((per_sec * MICRO).round() as i64)
}

fn horizon(field: &'static str, meter: Meter, what: &str) -> Result<(), ParamError> {
    if meter.capacity * meter.unit > i128::from(MAX_HORIZON_MS) * meter.scale {
        return Err(invalid(field, format!("is too slow: {what} would take more than ten years")));
    }
    Ok(())
}

fn bucket_meter(capacity: i64, micro_per_sec: i64) -> Meter {
    Meter { scale: i128::from(micro_per_sec), unit: BUCKET_UNIT, capacity: i128::from(capacity) }
}

/// Parse the body of `op` (`check/fixed-window`, `check/sliding-window`, `check/token-bucket`,
/// `check/leaky-bucket`, `check/gcra`).
pub fn parse_request(op: &str, body: &Value) -> Result<CheckRequest, ParamError> {
    let algorithm = Algorithm::from_op(op).ok_or_else(|| ParamError::UnknownOp(op.to_owned()))?;
    let Value::Object(obj) = body else {
        return Err(ParamError::NotAnObject);
    };
    let key = match obj.get("key") {
        None | Some(Value::Null) => return Err(ParamError::Missing("key")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(ParamError::WrongType { field: "key", expected: "a string" }),
    };
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS {
        return Err(invalid("key", format!("must be 1 to {MAX_KEY_CHARS} characters")));
    }
    let params = match algorithm {
        Algorithm::FixedWindow => Params::FixedWindow(window_params(obj)?),
        Algorithm::SlidingWindow => Params::SlidingWindow(window_params(obj)?),
        Algorithm::TokenBucket => Params::TokenBucket(TokenBucketParams::new(
            integer(obj, "capacity", None)?,
            number(obj, "refillRate")?,
            integer(obj, "tokens", Some(1))?,
        )?),
        Algorithm::LeakyBucket => {
            Params::LeakyBucket(LeakyBucketParams::new(integer(obj, "capacity", None)?, number(obj, "leakRate")?)?)
        }
        Algorithm::Gcra => Params::Gcra(GcraParams::new(
            integer(obj, "rate", None)?,
            integer(obj, "period", None)?,
            integer(obj, "burst", None)?,
        )?),
    };
    Ok(CheckRequest { key: key.clone(), params })
}

fn window_params(obj: &Map<String, Value>) -> Result<WindowParams, ParamError> {
    WindowParams::new(integer(obj, "limit", None)?, integer(obj, "window", None)?)
}

fn number(obj: &Map<String, Value>, field: &'static str) -> Result<f64, ParamError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(ParamError::Missing(field)),
        Some(Value::Number(n)) => n.as_f64().ok_or(ParamError::WrongType { field, expected: "a number" }),
        Some(_) => Err(ParamError::WrongType { field, expected: "a number" }),
    }
}

/// A whole number (`3` or `3.0`); out-of-range values saturate so the range check names them.
/// Absent → `default` (or Missing); `null` is never the default: Missing for a required field,
/// Null for an optional one.
fn integer(obj: &Map<String, Value>, field: &'static str, default: Option<i64>) -> Result<i64, ParamError> {
    let n = match (obj.get(field), default) {
        (None, Some(d)) => return Ok(d),
        (Some(Value::Null), Some(_)) => return Err(ParamError::Null(field)),
        (None | Some(Value::Null), None) => return Err(ParamError::Missing(field)),
        (Some(Value::Number(n)), _) => n,
        (Some(_), _) => return Err(ParamError::WrongType { field, expected: "a number" }),
    };
    if let Some(i) = n.as_i64() {
        Ok(i)
    } else if n.is_u64() {
        Ok(i64::MAX)
    } else {
        match n.as_f64() {
            Some(f) if f.fract() == 0.0 => Ok(f as i64), // saturating cast
            _ => Err(invalid(field, "must be a whole number")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions

/// Fixed and sliding window answer: `{allowed, count, remaining, resetAt, retryAfterMs}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowDecision {
    pub allowed: bool,
    /// Requests counted in the window after this one (sliding: the weighted estimate, rounded up).
    pub count: i64,
    /// Requests still allowed right now: `limit - count`, at least 0.
    pub remaining: i64,
    /// Epoch ms at which the full `limit` is available again (fixed: the window's end; sliding:
    /// when the weighted count reaches zero — the current window's end if it is still empty,
    /// else the end of the next one).
    pub reset_at: Millis,
    /// 0 when allowed; else the exact wait until this request would be allowed.
    pub retry_after_ms: i64,
}

/// Token and leaky bucket answer: `{allowed, remaining, retryAfterMs}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketDecision {
    pub allowed: bool,
    /// Whole tokens left (token bucket) / whole requests that still fit (leaky bucket).
    pub remaining: i64,
    pub retry_after_ms: i64,
}

/// GCRA answer: `{allowed, remaining, retryAfterMs, resetAfterMs}`. Also read back by the
/// Worker from the RateLimiter's internal upgrade op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcraDecision {
    pub allowed: bool,
    /// Requests that could still be made right now.
    pub remaining: i64,
    pub retry_after_ms: i64,
    /// Wait until the full `burst` is available again.
    pub reset_after_ms: i64,
}

/// Any algorithm's answer; serializes to exactly its docs/protocol.md §6.6 shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Decision {
    Window(WindowDecision),
    Bucket(BucketDecision),
    Gcra(GcraDecision),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        match self {
            Self::Window(d) => d.allowed,
            Self::Bucket(d) => d.allowed,
            Self::Gcra(d) => d.allowed,
        }
    }
    pub fn retry_after_ms(&self) -> i64 {
        match self {
            Self::Window(d) => d.retry_after_ms,
            Self::Bucket(d) => d.retry_after_ms,
            Self::Gcra(d) => d.retry_after_ms,
        }
    }
    /// The response body (answered with 200 whether or not the request is allowed).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
    /// For callers that enforce the decision themselves (the Worker's upgrade limit):
    /// `None` when allowed, else a 429 with `Retry-After`.
    pub fn rejection(&self, what: &str) -> Option<ApiError> {
        (!self.allowed()).then(|| {
            let ms = self.retry_after_ms();
            ApiError::too_many_requests(format!("too many {what}; retry in {ms} ms"), ms)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// States

/// Fixed window: requests counted in the epoch-aligned window starting at `start`.
/// `Default` is "no row yet"; a row written for another `window` length counts as fresh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedWindowState {
    pub window: i64,
    pub start: Millis,
    pub count: i64,
}

impl FixedWindowState {
    pub fn check(&self, p: &WindowParams, now: Millis) -> (Self, WindowDecision) {
        let w = p.window_ms;
        // Same window (or the clock stepped back into an earlier one): keep counting it.
        let current = if self.window == w && now < self.start.saturating_add(w) {
            *self
        } else {
            Self { window: w, start: window_start(now, w), count: 0 }
        };
        let reset_at = current.start.saturating_add(w);
        if current.count < p.limit {
            let next = Self { count: current.count + 1, ..current };
            let d = WindowDecision {
                allowed: true,
                count: next.count,
                remaining: p.limit - next.count,
                reset_at,
                retry_after_ms: 0,
            };
            (next, d)
        } else {
            let d = WindowDecision {
                allowed: false,
                count: current.count,
                remaining: 0,
                reset_at,
                retry_after_ms: reset_at.saturating_sub(now).max(1),
            };
            (*self, d)
        }
    }

    /// From then on the row is equivalent to none: its window is over.
    pub fn forget_at(&self) -> Millis {
        if self.window <= 0 {
            return Millis::MIN;
        }
        self.start.saturating_add(self.window)
    }
}

/// Sliding window: counts of the current (`cur`, from `start`) and previous (`prev`)
/// epoch-aligned windows; the estimate is `prev * (1 - elapsed/window) + cur`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlidingWindowState {
    pub window: i64,
    pub start: Millis,
    pub prev: i64,
    pub cur: i64,
}

impl SlidingWindowState {
    /// The same counts seen from `now`'s window.
    fn roll(&self, w: i64, now: Millis) -> Self {
        let start = window_start(now, w);
        if self.window != w {
            Self { window: w, start, prev: 0, cur: 0 }
        } else if start <= self.start {
            *self // same window, or the clock stepped back
        } else if start == self.start.saturating_add(w) {
            Self { window: w, start, prev: self.cur, cur: 0 }
        } else {
            Self { window: w, start, prev: 0, cur: 0 }
        }
    }

    pub fn check(&self, p: &WindowParams, now: Millis) -> (Self, WindowDecision) {
        let w = i128::from(p.window_ms);
        let limit = i128::from(p.limit);
        let rolled = self.roll(p.window_ms, now);
        let elapsed = i128::from(now.saturating_sub(rolled.start)).clamp(0, w);
        let (prev, cur) = (i128::from(rolled.prev), i128::from(rolled.cur));
        // Everything below is the estimate multiplied by `w`, so it stays in integers.
        let prev_weighted = prev * (w - elapsed);
        let allowed = prev_weighted + (cur + 1) * w <= limit * w;
        let next = if allowed { Self { cur: rolled.cur + 1, ..rolled } } else { *self };
        let cur_after = i128::from(if allowed { next.cur } else { rolled.cur });
        let count = ceil_div(prev_weighted + cur_after * w, w);
        let reset_at = if cur_after > 0 {
            rolled.start.saturating_add(p.window_ms.saturating_mul(2))
        } else if prev > 0 {
            rolled.start.saturating_add(p.window_ms)
        } else {
            now
        };
        let retry_after_ms = if allowed {
            0
        } else {
            Self::allowed_at(rolled.start, w, limit, prev, cur).saturating_sub(now).max(1)
        };
        let d = WindowDecision {
            allowed,
            count: to_i64(count),
            remaining: to_i64((limit - count).max(0)),
            reset_at,
            retry_after_ms,
        };
        (next, d)
    }

    /// The first instant a request is allowed, given a denied request in the window at `start`.
    fn allowed_at(start: Millis, w: i128, limit: i128, prev: i128, cur: i128) -> Millis {
        let start = i128::from(start);
        // Still in this window: prev * (w - e) + cur * w <= (limit - 1) * w  ⇔  e >= w - slack / prev.
        let slack = (limit - 1 - cur) * w;
        if slack >= 0 && prev > 0 {
            let e = (w - slack / prev).max(0);
            if e < w {
                return to_i64(start + e);
            }
        }
        // In the next window `cur` becomes the previous count and the new one is empty.
        let e = if cur > 0 { (w - (limit - 1) * w / cur).max(0) } else { 0 };
        to_i64(start + w + e)
    }

    /// From then on the estimate is zero: the end of the window after the last counted one.
    pub fn forget_at(&self) -> Millis {
        if self.window <= 0 {
            return Millis::MIN;
        }
        let windows = if self.cur > 0 { 2 } else if self.prev > 0 { 1 } else { 0 };
        self.start.saturating_add(self.window.saturating_mul(windows))
    }
}

/// Token bucket, leaky bucket and GCRA: the theoretical arrival time (TAT) of virtual
/// scheduling, `tat + frac / scale` ms. The bucket is full / empty / reset once `now >= TAT`.
/// `scale` is the rate's scale when written (0 = no row yet); a row written at another rate is
/// read conservatively, its TAT rounded up to the next whole ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TatState {
    pub tat: Millis,
    pub frac: i64,
    pub scale: i64,
}

/// A meter in scaled time (`scale` units per ms): each unit of `capacity` costs `unit`.
#[derive(Debug, Clone, Copy)]
struct Meter {
    scale: i128,
    unit: i128,
    capacity: i128,
}

/// What a meter decided, before it is shaped into an algorithm's answer.
struct Metered {
    state: TatState,
    allowed: bool,
    remaining: i64,
    retry_after_ms: i64,
    reset_after_ms: i64,
}

impl TatState {
    pub fn check_token_bucket(&self, p: &TokenBucketParams, now: Millis) -> (Self, BucketDecision) {
        let m = self.meter(bucket_meter(p.capacity, p.refill_micro_per_sec), i128::from(p.tokens), now);
        (m.state, BucketDecision { allowed: m.allowed, remaining: m.remaining, retry_after_ms: m.retry_after_ms })
    }

    pub fn check_leaky_bucket(&self, p: &LeakyBucketParams, now: Millis) -> (Self, BucketDecision) {
        let m = self.meter(bucket_meter(p.capacity, p.leak_micro_per_sec), 1, now);
        (m.state, BucketDecision { allowed: m.allowed, remaining: m.remaining, retry_after_ms: m.retry_after_ms })
    }

    pub fn check_gcra(&self, p: &GcraParams, now: Millis) -> (Self, GcraDecision) {
        let m = self.meter(p.meter(), 1, now);
        let d = GcraDecision {
            allowed: m.allowed,
            remaining: m.remaining,
            retry_after_ms: m.retry_after_ms,
            reset_after_ms: m.reset_after_ms,
        };
        (m.state, d)
    }

    /// From then on the TAT is in the past: the bucket is full again.
    pub fn forget_at(&self) -> Millis {
        if self.scale <= 0 {
            return Millis::MIN;
        }
        self.tat.saturating_add(i64::from(self.frac > 0))
    }

    fn scaled(&self, scale: i128) -> Option<i128> {
        match self.scale {
            ..=0 => None,
            s if i128::from(s) == scale => Some(i128::from(self.tat) * scale + i128::from(self.frac)),
            _ => Some((i128::from(self.tat) + i128::from(self.frac > 0)) * scale),
        }
    }

    /// Virtual scheduling: a request of `cost` units is allowed when the TAT it would push to is
    /// at most `capacity` units ahead of now.
    fn meter(&self, m: Meter, cost: i128, now: Millis) -> Metered {
        let now_s = i128::from(now) * m.scale;
        let tat = self.scaled(m.scale).map_or(now_s, |t| t.max(now_s));
        let tolerance = m.capacity * m.unit;
        let pushed = tat + cost * m.unit;
        let allowed = pushed - now_s <= tolerance;
        let (state, final_tat, retry_after_ms) = if allowed {
            let whole = pushed.div_euclid(m.scale);
            let state = TatState {
                tat: to_i64(whole),
                frac: to_i64(pushed - whole * m.scale),
                scale: to_i64(m.scale),
            };
            (state, pushed, 0)
        } else {
            // Allowed once now * scale >= pushed - tolerance.
            let at = ceil_div(pushed - tolerance, m.scale);
            (*self, tat, to_i64(at - i128::from(now)).max(1))
        };
        let ahead = final_tat - now_s;
        Metered {
            state,
            allowed,
            remaining: to_i64(((tolerance - ahead).div_euclid(m.unit)).clamp(0, m.capacity)),
            retry_after_ms,
            reset_after_ms: to_i64(ceil_div(ahead, m.scale).max(0)),
        }
    }
}

/// A stored row of any algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    FixedWindow(FixedWindowState),
    SlidingWindow(SlidingWindowState),
    TokenBucket(TatState),
    LeakyBucket(TatState),
    Gcra(TatState),
}

impl State {
    /// The state of a key with no row.
    pub fn fresh(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::FixedWindow => Self::FixedWindow(FixedWindowState::default()),
            Algorithm::SlidingWindow => Self::SlidingWindow(SlidingWindowState::default()),
            Algorithm::TokenBucket => Self::TokenBucket(TatState::default()),
            Algorithm::LeakyBucket => Self::LeakyBucket(TatState::default()),
            Algorithm::Gcra => Self::Gcra(TatState::default()),
        }
    }

    /// Read a row written by [`State::to_json`]. No row, or one this version cannot read
    /// (say, from an older schema), is a fresh key: limiter state is disposable.
    pub fn load(algorithm: Algorithm, stored: Option<&str>) -> Self {
        let Some(text) = stored else {
            return Self::fresh(algorithm);
        };
        let parsed = match algorithm {
            Algorithm::FixedWindow => serde_json::from_str(text).map(Self::FixedWindow),
            Algorithm::SlidingWindow => serde_json::from_str(text).map(Self::SlidingWindow),
            Algorithm::TokenBucket => serde_json::from_str(text).map(Self::TokenBucket),
            Algorithm::LeakyBucket => serde_json::from_str(text).map(Self::LeakyBucket),
            Algorithm::Gcra => serde_json::from_str(text).map(Self::Gcra),
        };
        parsed.unwrap_or_else(|_| Self::fresh(algorithm))
    }

    /// The row's text, e.g. `{"tat":1700000000500,"frac":0,"scale":10}`.
    pub fn to_json(&self) -> String {
        match self {
            Self::FixedWindow(s) => serde_json::to_string(s),
            Self::SlidingWindow(s) => serde_json::to_string(s),
            Self::TokenBucket(s) | Self::LeakyBucket(s) | Self::Gcra(s) => serde_json::to_string(s),
        }
        .unwrap_or_default()
    }

    /// When the row can be deleted: from this instant it answers exactly like no row.
    /// Store it beside the row; the alarm deletes rows with `forget_at <= now`.
    pub fn forget_at(&self) -> Millis {
        match self {
            Self::FixedWindow(s) => s.forget_at(),
            Self::SlidingWindow(s) => s.forget_at(),
            Self::TokenBucket(s) | Self::LeakyBucket(s) | Self::Gcra(s) => s.forget_at(),
        }
    }

    pub fn is_idle(&self, now: Millis) -> bool {
        now >= self.forget_at()
    }
}

impl Params {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::FixedWindow(_) => Algorithm::FixedWindow,
            Self::SlidingWindow(_) => Algorithm::SlidingWindow,
            Self::TokenBucket(_) => Algorithm::TokenBucket,
            Self::LeakyBucket(_) => Algorithm::LeakyBucket,
            Self::Gcra(_) => Algorithm::Gcra,
        }
    }

    /// Decide one request at `now`. A denied request returns `state` unchanged (nothing to
    /// write); a state of another algorithm counts as fresh.
    pub fn check(&self, state: &State, now: Millis) -> (State, Decision) {
        match self {
            Self::FixedWindow(p) => {
                let s = if let State::FixedWindow(s) = state { *s } else { FixedWindowState::default() };
                let (s, d) = s.check(p, now);
                (State::FixedWindow(s), Decision::Window(d))
            }
            Self::SlidingWindow(p) => {
                let s = if let State::SlidingWindow(s) = state { *s } else { SlidingWindowState::default() };
                let (s, d) = s.check(p, now);
                (State::SlidingWindow(s), Decision::Window(d))
            }
            Self::TokenBucket(p) => {
                let s = if let State::TokenBucket(s) = state { *s } else { TatState::default() };
                let (s, d) = s.check_token_bucket(p, now);
                (State::TokenBucket(s), Decision::Bucket(d))
            }
            Self::LeakyBucket(p) => {
                let s = if let State::LeakyBucket(s) = state { *s } else { TatState::default() };
                let (s, d) = s.check_leaky_bucket(p, now);
                (State::LeakyBucket(s), Decision::Bucket(d))
            }
            Self::Gcra(p) => {
                let s = if let State::Gcra(s) = state { *s } else { TatState::default() };
                let (s, d) = s.check_gcra(p, now);
                (State::Gcra(s), Decision::Gcra(d))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Worker's own WebSocket-upgrade limit

/// The RateLimiter key of `user_id`'s upgrade allowance.
pub fn upgrade_limit_key(user_id: &str) -> String {
    format!("ws-upgrade:{user_id}")
}

/// Parameters of the per-user WebSocket-upgrade limit (docs/protocol.md §6.6, var `WS_UPGRADES_PER_MINUTE`).
///
/// GCRA with `rate = burst = per_minute` per 60 s: a user may open `per_minute` sockets at
/// once (several tabs reloading together), then one every `60 / per_minute` s. Chosen because
/// its state is one timestamp, its `retryAfterMs` is exact (a precise `Retry-After`), and it
/// spaces a reconnect loop out evenly instead of letting it through in bursts at window edges.
/// Like any token bucket it admits at most `2 × per_minute − 1` in any 60 s span (a full burst,
/// then a minute of refill). `0` is treated as 1; values above [`MAX_COUNT`] are capped.
pub fn upgrade_limit_params(per_minute: u32) -> Params {
    let n = i64::from(per_minute).clamp(1, MAX_COUNT);
    Params::Gcra(GcraParams { rate: n, period_ms: 60_000, burst: n })
}

/// The `RateLimit-*` headers (IETF draft "RateLimit header fields") sent with the Worker's 429
/// on a refused upgrade, beside `Retry-After`: the allowance, what is left (0), and the whole
/// seconds until the full allowance is back.
pub fn upgrade_limit_headers(per_minute: u32, d: &GcraDecision) -> [(&'static str, String); 4] {
    let limit = i64::from(per_minute).clamp(1, MAX_COUNT);
    let reset_secs = (d.reset_after_ms.max(0).saturating_add(999)) / 1000;
    [
        ("RateLimit-Limit", limit.to_string()),
        ("RateLimit-Remaining", d.remaining.max(0).to_string()),
        ("RateLimit-Reset", reset_secs.to_string()),
        ("RateLimit-Policy", format!("{limit};w=60")),
    ]
}

// ---------------------------------------------------------------------------------------------
// Integer helpers

/// Start of the epoch-aligned window of length `w` (> 0) holding `now`.
fn window_start(now: Millis, w: i64) -> Millis {
    now.saturating_sub(now.rem_euclid(w.max(1)))
}

/// ⌈a / b⌉ for b > 0.
fn ceil_div(a: i128, b: i128) -> i128 {
    let b = b.max(1);
    a.div_euclid(b) + i128::from(a.rem_euclid(b) != 0)
}

/// Narrow to i64, saturating (only reachable with absurd clocks).
fn to_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: Millis = 1_700_000_000_000; // a multiple of 1000 and of 60 000
    const YEAR: Millis = MAX_WINDOW_MS;

    fn parse(op: &str, body: Value) -> Params {
        parse_request(op, &body).unwrap().params
    }
    fn fixed(limit: i64, window: i64) -> Params {
        Params::FixedWindow(WindowParams::new(limit, window).unwrap())
    }
    fn sliding(limit: i64, window: i64) -> Params {
        Params::SlidingWindow(WindowParams::new(limit, window).unwrap())
    }
    fn token(capacity: i64, refill: f64, tokens: i64) -> Params {
        Params::TokenBucket(TokenBucketParams::new(capacity, refill, tokens).unwrap())
    }
    fn leaky(capacity: i64, leak: f64) -> Params {
        Params::LeakyBucket(LeakyBucketParams::new(capacity, leak).unwrap())
    }
    fn gcra(rate: i64, period: i64, burst: i64) -> Params {
        Params::Gcra(GcraParams::new(rate, period, burst).unwrap())
    }
    fn fresh(p: &Params) -> State {
        State::fresh(p.algorithm())
    }
    /// Run `n` requests at `now`, all of which must be allowed.
    fn allow_n(p: &Params, mut s: State, now: Millis, n: usize) -> State {
        for i in 0..n {
            let (next, d) = p.check(&s, now);
            assert!(d.allowed(), "request {i} at {now} denied: {d:?}");
            assert_eq!(d.retry_after_ms(), 0);
            s = next;
        }
        s
    }
    /// A denied request changes nothing, and its retryAfterMs is exact: one ms less is denied,
    /// waiting it out is allowed.
    fn assert_denied_exactly(p: &Params, s: &State, now: Millis) -> i64 {
        let (after, d) = p.check(s, now);
        assert!(!d.allowed(), "expected a denial at {now}: {d:?}");
        assert_eq!(&after, s, "a denied request must not change the state");
        let wait = d.retry_after_ms();
        assert!(wait >= 1);
        assert!(!p.check(s, now + wait - 1).1.allowed(), "allowed at now + retryAfterMs - 1 ({wait})");
        assert!(p.check(s, now + wait).1.allowed(), "denied at now + retryAfterMs ({wait})");
        wait
    }
    fn window_decision(d: Decision) -> WindowDecision {
        match d {
            Decision::Window(w) => w,
            other => panic!("not a window decision: {other:?}"),
        }
    }
    fn bucket_decision(d: Decision) -> BucketDecision {
        match d {
            Decision::Bucket(b) => b,
            other => panic!("not a bucket decision: {other:?}"),
        }
    }
    fn gcra_decision(d: Decision) -> GcraDecision {
        match d {
            Decision::Gcra(g) => g,
            other => panic!("not a GCRA decision: {other:?}"),
        }
    }

    // --- fixed window ------------------------------------------------------------------------

    #[test]
    fn fixed_window_allows_exactly_the_limit() {
        let p = fixed(3, 1_000);
        let mut s = fresh(&p);
        for n in 1..=3 {
            let (next, d) = p.check(&s, T0 + 100);
            assert_eq!(
                window_decision(d),
                WindowDecision { allowed: true, count: n, remaining: 3 - n, reset_at: T0 + 1_000, retry_after_ms: 0 }
            );
            s = next;
        }
        let (_, d) = p.check(&s, T0 + 100);
        assert_eq!(
            window_decision(d),
            WindowDecision { allowed: false, count: 3, remaining: 0, reset_at: T0 + 1_000, retry_after_ms: 900 }
        );
        assert_eq!(assert_denied_exactly(&p, &s, T0 + 100), 900);
    }

    #[test]
    fn fixed_window_edges() {
        let p = fixed(2, 1_000);
        // Windows are epoch-aligned: a request at T0 + 999 is in the window ending at T0 + 1000.
        let s = allow_n(&p, fresh(&p), T0 + 998, 2);
        let d = window_decision(p.check(&s, T0 + 999).1);
        assert_eq!((d.allowed, d.reset_at, d.retry_after_ms), (false, T0 + 1_000, 1));
        let (s, d) = p.check(&s, T0 + 1_000);
        assert_eq!(window_decision(d), WindowDecision { allowed: true, count: 1, remaining: 1, reset_at: T0 + 2_000, retry_after_ms: 0 });
        assert_eq!(s.forget_at(), T0 + 2_000);
    }

    #[test]
    fn fixed_window_forgets_a_changed_window_and_survives_a_clock_step_back() {
        let p = fixed(1, 1_000);
        let s = allow_n(&p, fresh(&p), T0, 1);
        assert!(!p.check(&s, T0 + 5).1.allowed());
        // The clock steps back into an earlier window: still limited until the stored window ends.
        let d = window_decision(p.check(&s, T0 - 10).1);
        assert_eq!((d.allowed, d.retry_after_ms), (false, 1_010));
        assert_denied_exactly(&p, &s, T0 - 10);
        // Another window length for the same key is another configuration: it starts fresh.
        assert!(fixed(1, 2_000).check(&s, T0 + 5).1.allowed());
    }

    // --- sliding window ----------------------------------------------------------------------

    #[test]
    fn sliding_window_weighs_the_previous_window() {
        let p = sliding(10, 1_000);
        let s = allow_n(&p, fresh(&p), T0 + 900, 10);
        assert_eq!(window_decision(p.check(&s, T0 + 999).1).retry_after_ms, 1 + 100); // next window, 10% in
        // Half way through the next window the previous 10 weigh 5: five more fit.
        let s = allow_n(&p, s, T0 + 1_500, 5);
        let d = window_decision(p.check(&s, T0 + 1_500).1);
        assert_eq!((d.allowed, d.count, d.remaining), (false, 10, 0));
        // 10 * (1 - e/1000) + 5 + 1 <= 10  ⇔  e >= 600.
        assert_eq!(assert_denied_exactly(&p, &s, T0 + 1_500), 100);
        let (_, d) = p.check(&s, T0 + 1_600);
        let d = window_decision(d);
        assert_eq!((d.allowed, d.count, d.remaining, d.reset_at), (true, 10, 0, T0 + 3_000));
        // The estimate (after this request) rounds up: 10 × (1 − e/1000) + 6.
        let (_, d) = p.check(&s, T0 + 1_650);
        assert_eq!(window_decision(d).count, 10); // 3.5 + 6 = 9.5 → 10
        let (_, d) = p.check(&s, T0 + 1_750);
        assert_eq!(window_decision(d).count, 9); // 2.5 + 6 = 8.5 → 9
    }

    #[test]
    fn sliding_window_reset_at_is_when_the_full_limit_is_back() {
        let p = sliding(4, 1_000);
        let (s, d) = p.check(&fresh(&p), T0 + 250);
        let reset_at = window_decision(d).reset_at;
        assert_eq!(reset_at, T0 + 2_000);
        assert_eq!(s.forget_at(), reset_at);
        // One ms before: the previous window still weighs 1/1000 of a request.
        let d = window_decision(p.check(&s, reset_at - 1).1);
        assert_eq!((d.count, d.remaining), (2, 2));
        let d = window_decision(p.check(&s, reset_at).1);
        assert_eq!((d.count, d.remaining), (1, 3));
        assert_eq!(p.check(&s, reset_at), p.check(&fresh(&p), reset_at));
    }

    #[test]
    fn sliding_window_limit_one_waits_two_windows_at_most() {
        let p = sliding(1, 1_000);
        let s = allow_n(&p, fresh(&p), T0, 1);
        // prev = 1 must weigh 0 before another fits: the end of the next window.
        assert_eq!(assert_denied_exactly(&p, &s, T0), 2_000);
        assert_eq!(assert_denied_exactly(&p, &s, T0 + 1_999), 1);
    }

    // --- token bucket ------------------------------------------------------------------------

    #[test]
    fn token_bucket_starts_full_and_refills() {
        let p = token(5, 1.0, 1);
        let s = allow_n(&p, fresh(&p), T0, 5);
        let d = bucket_decision(p.check(&s, T0).1);
        assert_eq!(d, BucketDecision { allowed: false, remaining: 0, retry_after_ms: 1_000 });
        assert_denied_exactly(&p, &s, T0);
        let (s, d) = p.check(&s, T0 + 2_500); // 2.5 tokens back, one spent
        assert_eq!(bucket_decision(d), BucketDecision { allowed: true, remaining: 1, retry_after_ms: 0 });
        assert_eq!(s.forget_at(), T0 + 2_500 + 3_500);
    }

    #[test]
    fn token_bucket_multi_token_requests() {
        let p = token(10, 2.0, 4); // 4 tokens a request, 2 tokens/s
        let s = allow_n(&p, fresh(&p), T0, 2);
        let d = bucket_decision(p.check(&s, T0).1);
        // 2 tokens left, 4 needed: denied without consuming, 2 more tokens take 1 s.
        assert_eq!(d, BucketDecision { allowed: false, remaining: 2, retry_after_ms: 1_000 });
        assert_denied_exactly(&p, &s, T0);
    }

    #[test]
    fn token_bucket_fractional_rates() {
        let p = token(1, 0.1, 1);
        let s = allow_n(&p, fresh(&p), T0, 1);
        assert_eq!(assert_denied_exactly(&p, &s, T0), 10_000);
        // 1/3 token/s is taken as 0.333333: a token takes 3000.003 ms, so 3001 whole ms.
        let p = token(1, 1.0 / 3.0, 1);
        let s = allow_n(&p, fresh(&p), T0, 1);
        assert_eq!(assert_denied_exactly(&p, &s, T0), 3_001);
        // 1000.5 tokens/s: sub-ms refill, exact.
        let p = token(1_000, 1_000.5, 1);
        let s = allow_n(&p, fresh(&p), T0, 1_000);
        assert_eq!(assert_denied_exactly(&p, &s, T0), 1);
        let s = allow_n(&p, s, T0 + 2, 2); // 2.001 tokens after 2 ms
        assert_denied_exactly(&p, &s, T0 + 2);
    }

    /// A client that retries exactly when told, against a bucket that never sits full, gets
    /// exactly the configured rate: the TAT keeps the sub-ms remainder instead of rounding.
    /// (With a bucket of 1 a late client would lose the refill the full bucket could not hold.)
    fn retry_as_told(p: &Params, mut s: State, requests: usize) -> Millis {
        let mut now = T0;
        for _ in 0..requests {
            now += p.check(&s, now).1.retry_after_ms();
            let (next, d) = p.check(&s, now);
            assert!(d.allowed());
            s = next;
        }
        now
    }

    #[test]
    fn token_bucket_never_drifts() {
        // 3 tokens/s: the k-th request after the first two is due at T0 + k × 333.33… ms.
        let p = token(2, 3.0, 1);
        let s = allow_n(&p, fresh(&p), T0, 2);
        assert_eq!(retry_as_told(&p, s, 3_000), T0 + 1_000_000);
        assert_eq!(retry_as_told(&p, s, 2_999), T0 + 999_667);
    }

    #[test]
    fn buckets_survive_long_idle_gaps_and_huge_parameters() {
        let p = token(MAX_COUNT, MAX_RATE_PER_SEC, MAX_COUNT);
        let s = allow_n(&p, fresh(&p), T0, 1);
        assert_eq!(assert_denied_exactly(&p, &s, T0), 1_000);
        let (_, d) = p.check(&s, T0 + 100 * YEAR);
        assert_eq!(bucket_decision(d), BucketDecision { allowed: true, remaining: 0, retry_after_ms: 0 });
        // The slowest accepted bucket: refilling takes up to ten years, and nothing overflows.
        let p = token(315, 0.000_001, 1);
        let s = allow_n(&p, fresh(&p), T0, 315);
        assert_eq!(assert_denied_exactly(&p, &s, T0), 1_000_000_000);
        let (_, d) = p.check(&s, T0 + 50 * YEAR);
        assert_eq!(bucket_decision(d).remaining, 314);
        // Absurd clocks give saturated numbers, never a panic.
        for now in [i64::MIN, -1, 0, i64::MAX] {
            for p in [p, fixed(1, YEAR), sliding(1, YEAR), leaky(MAX_COUNT, MAX_RATE_PER_SEC), leaky(315, 1e-6), gcra(1, YEAR, 10), gcra(MAX_COUNT, YEAR, MAX_COUNT)] {
                let (s, _) = p.check(&fresh(&p), now);
                let _ = p.check(&s, now);
                let _ = p.check(&s, now.saturating_add(YEAR));
                let _ = s.forget_at();
            }
        }
    }

    // --- leaky bucket ------------------------------------------------------------------------

    #[test]
    fn leaky_bucket_fills_then_drains() {
        let p = leaky(3, 2.0);
        let mut s = fresh(&p);
        for remaining in [2, 1, 0] {
            let (next, d) = p.check(&s, T0);
            assert_eq!(bucket_decision(d), BucketDecision { allowed: true, remaining, retry_after_ms: 0 });
            s = next;
        }
        assert_eq!(assert_denied_exactly(&p, &s, T0), 500);
        assert_eq!(s.forget_at(), T0 + 1_500);
        // A quarter of a second drains half a request: still no room.
        assert_eq!(assert_denied_exactly(&p, &s, T0 + 250), 250);
        let d = bucket_decision(p.check(&s, T0 + 1_000).1);
        assert_eq!(d, BucketDecision { allowed: true, remaining: 1, retry_after_ms: 0 });
    }

    #[test]
    fn leaky_bucket_fractional_leak() {
        let p = leaky(2, 0.25); // one request drains every 4 s
        let s = allow_n(&p, fresh(&p), T0, 2);
        assert_eq!(assert_denied_exactly(&p, &s, T0 + 1), 3_999);
    }

    // --- GCRA --------------------------------------------------------------------------------

    #[test]
    fn gcra_burst_then_even_spacing() {
        let p = gcra(10, 1_000, 3); // one per 100 ms, three back to back
        let mut s = fresh(&p);
        for remaining in [2, 1, 0] {
            let (next, d) = p.check(&s, T0);
            let d = gcra_decision(d);
            assert_eq!((d.allowed, d.remaining), (true, remaining));
            s = next;
        }
        let d = gcra_decision(p.check(&s, T0).1);
        assert_eq!(d, GcraDecision { allowed: false, remaining: 0, retry_after_ms: 100, reset_after_ms: 300 });
        assert_denied_exactly(&p, &s, T0);
        let (s2, d) = p.check(&s, T0 + 100);
        assert_eq!(gcra_decision(d), GcraDecision { allowed: true, remaining: 0, retry_after_ms: 0, reset_after_ms: 300 });
        assert_eq!(s2.forget_at(), T0 + 400);
        assert_eq!(p.check(&s2, T0 + 400), p.check(&fresh(&p), T0 + 400));
    }

    #[test]
    fn gcra_fractional_emission_interval_is_exact() {
        // 3 per second: 333.33… ms apart. A client retrying as told gets exactly 3 per second.
        let p = gcra(3, 1_000, 1);
        let s = allow_n(&p, fresh(&p), T0, 1);
        assert_eq!(assert_denied_exactly(&p, &s, T0), 334);
        let p = gcra(3, 1_000, 2);
        let s = allow_n(&p, fresh(&p), T0, 2);
        assert_eq!(retry_as_told(&p, s, 3_000), T0 + 1_000_000);
        assert_eq!(retry_as_told(&p, s, 1), T0 + 334);
    }

    #[test]
    fn gcra_rate_change_reads_old_state_conservatively() {
        let p = gcra(3, 1_000, 1);
        let s = allow_n(&p, fresh(&p), T0, 1); // TAT = T0 + 333.33…
        let faster = gcra(6, 1_000, 1);
        // Read at another scale, the TAT rounds up to T0 + 334.
        assert_eq!(assert_denied_exactly(&faster, &s, T0), 334);
    }

    // --- all algorithms: model checks on a virtual clock -------------------------------------

    /// A reference for each algorithm written the other way round (token counting / request
    /// logs), compared decision by decision with the real check over random traffic.
    struct Model {
        log: Vec<Millis>,
        level: i128,
        last: Millis,
    }

    impl Model {
        /// (allowed, remaining) the reference expects, updating itself like the limiter would.
        fn check(&mut self, p: &Params, now: Millis) -> (bool, i64) {
            match p {
                Params::FixedWindow(w) | Params::SlidingWindow(w) => {
                    let (limit, win) = (i128::from(w.limit()), i128::from(w.window_ms()));
                    let start = now - now.rem_euclid(w.window_ms());
                    let in_range = |a: Millis, b: Millis| self.log.iter().filter(|t| **t >= a && **t < b).count() as i128;
                    let cur = in_range(start, start + w.window_ms());
                    let prev = if matches!(p, Params::SlidingWindow(_)) { in_range(start - w.window_ms(), start) } else { 0 };
                    let weighted = prev * (win - i128::from(now - start));
                    let allowed = weighted + (cur + 1) * win <= limit * win;
                    if allowed {
                        self.log.push(now);
                    }
                    let count = weighted + (cur + i128::from(allowed)) * win;
                    let count = (count + win - 1) / win;
                    (allowed, (limit - count).max(0) as i64)
                }
                Params::TokenBucket(_) | Params::LeakyBucket(_) | Params::Gcra(_) => {
                    // Tokens in integer units refilled per ms; a request costs `cost` units.
                    let (cap, per_ms, cost, unit) = match p {
                        Params::TokenBucket(t) => {
                            (i128::from(t.capacity()) * BUCKET_UNIT, i128::from(t.refill_micro_per_sec()), i128::from(t.tokens()) * BUCKET_UNIT, BUCKET_UNIT)
                        }
                        Params::LeakyBucket(l) => (i128::from(l.capacity()) * BUCKET_UNIT, i128::from(l.leak_micro_per_sec()), BUCKET_UNIT, BUCKET_UNIT),
                        Params::Gcra(g) => {
                            let period = i128::from(g.period_ms());
                            (i128::from(g.burst()) * period, i128::from(g.rate()), period, period)
                        }
                        _ => unreachable!(),
                    };
                    if self.log.is_empty() {
                        self.level = cap;
                        self.last = now;
                        self.log.push(now);
                    }
                    let level = (self.level + i128::from(now - self.last) * per_ms).min(cap);
                    let allowed = level >= cost;
                    if allowed {
                        self.level = level - cost;
                        self.last = now;
                    }
                    let left = if allowed { level - cost } else { level };
                    (allowed, (left / unit) as i64)
                }
            }
        }
    }

    fn remaining(d: &Decision) -> i64 {
        match d {
            Decision::Window(w) => w.remaining,
            Decision::Bucket(b) => b.remaining,
            Decision::Gcra(g) => g.remaining,
        }
    }

    #[test]
    fn every_algorithm_matches_its_model_with_exact_retry_and_expiry() {
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n.max(1)
        };
        for round in 0..400 {
            let small = |x: u64| i64::try_from(x).unwrap() + 1;
            let p = match round % 5 {
                0 => fixed(small(next(5)), small(next(2_000))),
                1 => sliding(small(next(8)), small(next(2_000))),
                2 => token(small(next(6)) + 3, (small(next(5_000)) as f64) / 1_000.0, small(next(3))),
                3 => leaky(small(next(6)), (small(next(5_000)) as f64) / 1_000.0),
                _ => gcra(small(next(7)), small(next(2_000)), small(next(5))),
            };
            let mut model = Model { log: Vec::new(), level: 0, last: 0 };
            let mut s = fresh(&p);
            let mut now = T0 + i64::try_from(next(10_000)).unwrap();
            for _ in 0..60 {
                now += match next(10) {
                    0..=4 => 0,
                    5..=8 => i64::try_from(next(700)).unwrap(),
                    _ => i64::try_from(next(20_000)).unwrap(),
                };
                let (after, d) = p.check(&s, now);
                let expected = model.check(&p, now);
                assert_eq!((d.allowed(), remaining(&d)), expected, "{p:?} at {now}: {d:?} from {s:?}");
                if d.allowed() {
                    assert_eq!(d.retry_after_ms(), 0);
                    // Expiry is exact: the row answers like no row from forget_at on, not before.
                    let forget_at = after.forget_at();
                    assert!(forget_at > now);
                    assert_eq!(p.check(&after, forget_at), p.check(&fresh(&p), forget_at), "{p:?} {after:?}");
                    assert_ne!(p.check(&after, forget_at - 1).1, p.check(&fresh(&p), forget_at - 1).1);
                    assert!(after.is_idle(forget_at) && !after.is_idle(forget_at - 1));
                } else {
                    assert_denied_exactly(&p, &s, now);
                }
                s = after;
            }
        }
    }

    // --- parsing -----------------------------------------------------------------------------

    #[test]
    fn parses_every_algorithm() {
        let r = parse_request("check/fixed-window", &json!({"key": "user:1", "limit": 100, "window": 3_600_000})).unwrap();
        assert_eq!(r, CheckRequest { key: "user:1".into(), params: fixed(100, 3_600_000) });
        assert_eq!(parse("check/sliding-window", json!({"key": "k", "limit": 5, "window": 1000.0})), sliding(5, 1_000));
        assert_eq!(parse("check/token-bucket", json!({"key": "k", "capacity": 100, "refillRate": 10})), token(100, 10.0, 1));
        assert_eq!(parse("check/token-bucket", json!({"key": "k", "capacity": 10, "refillRate": 0.5, "tokens": 3})), token(10, 0.5, 3));
        // A present `tokens` is never the default: null is a 400, not 1 token.
        let null_tokens = parse_request("check/token-bucket", &json!({"key": "k", "capacity": 10, "refillRate": 1, "tokens": null}));
        assert_eq!(null_tokens, Err(ParamError::Null("tokens")));
        let e = ApiError::from(ParamError::Null("tokens"));
        assert_eq!((e.status, e.code), (400, "invalid_body"));
        assert_eq!(
            parse_request("check/token-bucket", &json!({"key": "k", "capacity": 10, "refillRate": 1, "tokens": "2"})),
            Err(ParamError::WrongType { field: "tokens", expected: "a number" })
        );
        assert_eq!(parse("check/leaky-bucket", json!({"key": "k", "capacity": 100, "leakRate": 10, "extra": true})), leaky(100, 10.0));
        assert_eq!(parse("check/gcra", json!({"key": "k", "rate": 10, "period": 1000, "burst": 5})), gcra(10, 1_000, 5));
        match parse("check/token-bucket", json!({"key": "k", "capacity": 10, "refillRate": 0.1})) {
            Params::TokenBucket(t) => assert_eq!(t.refill_micro_per_sec(), 100_000),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_request("check/whatever", &json!({})).unwrap_err(), ParamError::UnknownOp("check/whatever".into()));
        assert_eq!(ApiError::from(ParamError::UnknownOp("x".into())).status, 404);
    }

    #[test]
    fn keys() {
        let body = |key: Value| json!({"key": key, "limit": 1, "window": 1000});
        let op = "check/fixed-window";
        assert!(parse_request(op, &body(json!("é".repeat(256)))).is_ok());
        for (key, status) in [
            (json!(""), 422),
            (json!("é".repeat(257)), 422),
            (json!(5), 400),
            (json!(["k"]), 400),
            (Value::Null, 400),
        ] {
            let e = ApiError::from(parse_request(op, &body(key.clone())).unwrap_err());
            assert_eq!(e.status, status, "{key}");
            assert!(e.message.starts_with("key "), "{}", e.message);
        }
        let e = ApiError::from(parse_request(op, &json!({"limit": 1, "window": 1000})).unwrap_err());
        assert_eq!((e.status, e.code, e.message.as_str()), (400, "invalid_body", "key is required"));
    }

    #[test]
    fn wrong_types_are_400() {
        let cases = [
            ("check/fixed-window", json!([1, 2])),
            ("check/fixed-window", json!("key")),
            ("check/fixed-window", json!({"key": "k", "limit": "10", "window": 1000})),
            ("check/fixed-window", json!({"key": "k", "limit": 10})),
            ("check/sliding-window", json!({"key": "k", "limit": 10, "window": true})),
            ("check/token-bucket", json!({"key": "k", "capacity": 10, "refillRate": "1"})),
            ("check/token-bucket", json!({"key": "k", "capacity": 10, "refillRate": 1, "tokens": {}})),
            ("check/token-bucket", json!({"key": "k", "capacity": 10})),
            ("check/leaky-bucket", json!({"key": "k", "capacity": [10], "leakRate": 1})),
            ("check/gcra", json!({"key": "k", "rate": 10, "period": 1000})),
        ];
        for (op, body) in cases {
            let e = ApiError::from(parse_request(op, &body).unwrap_err());
            assert_eq!((e.status, e.code), (400, "invalid_body"), "{op} {body}: {}", e.message);
        }
    }

    #[test]
    fn invalid_values_are_422_with_the_field_named() {
        let cases = [
            ("check/fixed-window", json!({"key": "k", "limit": 0, "window": 1000}), "limit must be a positive integer"),
            ("check/fixed-window", json!({"key": "k", "limit": -3, "window": 1000}), "limit must be a positive integer"),
            ("check/fixed-window", json!({"key": "k", "limit": 1.5, "window": 1000}), "limit must be a whole number"),
            ("check/fixed-window", json!({"key": "k", "limit": 1_000_000_001_i64, "window": 1000}), "limit must be at most 1000000000"),
            ("check/fixed-window", json!({"key": "k", "limit": u64::MAX, "window": 1000}), "limit must be at most 1000000000"),
            ("check/fixed-window", json!({"key": "k", "limit": 1e300, "window": 1000}), "limit must be at most 1000000000"),
            ("check/sliding-window", json!({"key": "k", "limit": 1, "window": 0}), "window must be a positive integer (ms)"),
            ("check/sliding-window", json!({"key": "k", "limit": 1, "window": YEAR + 1}), "window must be at most 31536000000 ms (one year)"),
            ("check/token-bucket", json!({"key": "k", "capacity": 0, "refillRate": 1}), "capacity must be a positive integer"),
            ("check/token-bucket", json!({"key": "k", "capacity": 5, "refillRate": 0}), "refillRate must be a positive number (per second)"),
            ("check/token-bucket", json!({"key": "k", "capacity": 5, "refillRate": -1}), "refillRate must be a positive number (per second)"),
            ("check/token-bucket", json!({"key": "k", "capacity": 5, "refillRate": 1e-7}), "refillRate must be at least 0.000001 per second"),
            ("check/token-bucket", json!({"key": "k", "capacity": 5, "refillRate": 2e9}), "refillRate must be at most 1000000000 per second"),
            ("check/token-bucket", json!({"key": "k", "capacity": 5, "refillRate": 1, "tokens": 0}), "tokens must be a positive integer"),
            ("check/token-bucket", json!({"key": "k", "capacity": 5, "refillRate": 1, "tokens": 6}), "tokens must not exceed capacity (such a request could never be allowed)"),
            ("check/token-bucket", json!({"key": "k", "capacity": 316, "refillRate": 0.000001}), "refillRate is too slow: refilling the whole capacity would take more than ten years"),
            ("check/leaky-bucket", json!({"key": "k", "capacity": 5, "leakRate": 0}), "leakRate must be a positive number (per second)"),
            ("check/leaky-bucket", json!({"key": "k", "capacity": MAX_COUNT, "leakRate": 1}), "leakRate is too slow: draining a full bucket would take more than ten years"),
            ("check/gcra", json!({"key": "k", "rate": 0, "period": 1000, "burst": 1}), "rate must be a positive integer"),
            ("check/gcra", json!({"key": "k", "rate": 1, "period": -1, "burst": 1}), "period must be a positive integer (ms)"),
            ("check/gcra", json!({"key": "k", "rate": 1, "period": 1000, "burst": 0}), "burst must be a positive integer"),
            ("check/gcra", json!({"key": "k", "rate": 1, "period": YEAR, "burst": 11}), "burst is too slow: burst × period / rate would take more than ten years"),
        ];
        for (op, body, message) in cases {
            let e = ApiError::from(parse_request(op, &body).unwrap_err());
            assert_eq!((e.status, e.code, e.message.as_str()), (422, "invalid_parameter", message), "{op} {body}");
        }
        // The largest accepted values.
        assert!(parse_request("check/gcra", &json!({"key": "k", "rate": 1, "period": YEAR, "burst": 10})).is_ok());
        assert!(parse_request("check/token-bucket", &json!({"key": "k", "capacity": 315, "refillRate": 0.000001})).is_ok());
        assert!(parse_request("check/fixed-window", &json!({"key": "k", "limit": MAX_COUNT, "window": YEAR})).is_ok());
    }

    // --- wire shapes and storage -------------------------------------------------------------

    #[test]
    fn decisions_serialize_to_the_spec_shapes() {
        let (_, d) = fixed(2, 1_000).check(&State::fresh(Algorithm::FixedWindow), T0 + 10);
        assert_eq!(d.to_json(), json!({"allowed": true, "count": 1, "remaining": 1, "resetAt": T0 + 1_000, "retryAfterMs": 0}));
        let (_, d) = token(2, 1.0, 1).check(&State::fresh(Algorithm::TokenBucket), T0);
        assert_eq!(d.to_json(), json!({"allowed": true, "remaining": 1, "retryAfterMs": 0}));
        let (_, d) = gcra(1, 1_000, 1).check(&State::fresh(Algorithm::Gcra), T0);
        assert_eq!(d.to_json(), json!({"allowed": true, "remaining": 0, "retryAfterMs": 0, "resetAfterMs": 1_000}));
        assert!(d.rejection("upgrades").is_none());
    }

    #[test]
    fn states_round_trip_through_json() {
        let params = [fixed(3, 1_000), sliding(3, 1_000), token(3, 0.7, 2), leaky(3, 1.5), gcra(3, 1_000, 2)];
        for p in params {
            let s = allow_n(&p, fresh(&p), T0 + 333, 1);
            let text = s.to_json();
            assert!(text.len() < 80, "{text}");
            let back = State::load(p.algorithm(), Some(&text));
            assert_eq!(back, s, "{text}");
            assert_eq!(p.check(&back, T0 + 400), p.check(&s, T0 + 400));
        }
        assert_eq!(
            State::Gcra(TatState { tat: 5, frac: 1, scale: 3 }).to_json(),
            r#"{"tat":5,"frac":1,"scale":3}"#
        );
        // No row, an unreadable row, or another algorithm's row: a fresh key.
        assert_eq!(State::load(Algorithm::Gcra, None), State::fresh(Algorithm::Gcra));
        assert_eq!(State::load(Algorithm::Gcra, Some("{\"count\":1}")), State::fresh(Algorithm::Gcra));
        assert_eq!(State::load(Algorithm::FixedWindow, Some("not json")), State::fresh(Algorithm::FixedWindow));
        let other = allow_n(&fixed(1, 1_000), State::fresh(Algorithm::FixedWindow), T0, 1);
        assert!(gcra(1, 1_000, 1).check(&other, T0).1.allowed());
        assert!(State::fresh(Algorithm::TokenBucket).is_idle(i64::MIN));
    }

    #[test]
    fn ops_name_algorithms() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_op(&format!("check/{}", a.as_str())), Some(a));
        }
        assert_eq!(Algorithm::from_op("fixed-window"), None);
        assert_eq!(Algorithm::from_op("check/"), None);
    }

    // --- the Worker's upgrade limit ----------------------------------------------------------

    #[test]
    fn upgrade_limit_is_a_burst_then_one_every_two_seconds() {
        let p = upgrade_limit_params(DEFAULT_WS_UPGRADES_PER_MINUTE);
        assert_eq!(p, gcra(30, 60_000, 30));
        let s = allow_n(&p, fresh(&p), T0, 30);
        assert_eq!(assert_denied_exactly(&p, &s, T0), 2_000);
        let e = p.check(&s, T0).1.rejection("WebSocket upgrades").unwrap();
        assert_eq!((e.status, e.code, e.retry_after_secs), (429, "rate_limited", Some(2)));
        assert_eq!(upgrade_limit_params(0), gcra(1, 60_000, 1));
        assert_eq!(upgrade_limit_params(u32::MAX), upgrade_limit_params(1_000_000_000));
        assert_eq!(upgrade_limit_key("alice"), "ws-upgrade:alice");
    }

    #[test]
    fn upgrade_limit_headers_round_up_and_name_the_policy() {
        let p = upgrade_limit_params(30);
        let s = allow_n(&p, fresh(&p), T0, 30);
        let Decision::Gcra(d) = p.check(&s, T0 + 1).1 else { panic!("not gcra") };
        assert_eq!(d.reset_after_ms, 59_999);
        let headers = upgrade_limit_headers(30, &d);
        assert_eq!(
            headers.map(|(k, v)| format!("{k}: {v}")),
            ["RateLimit-Limit: 30", "RateLimit-Remaining: 0", "RateLimit-Reset: 60", "RateLimit-Policy: 30;w=60"]
        );
        let back: GcraDecision = serde_json::from_value(Decision::Gcra(d).to_json()).unwrap();
        assert_eq!(back, d);
        assert_eq!(upgrade_limit_headers(0, &d)[0].1, "1");
    }
}
