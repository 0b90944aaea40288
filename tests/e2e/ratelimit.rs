//! RateLimiter (docs/protocol.md §6.6) over real HTTP: the five algorithms' exact answers, exactness under
//! concurrency, `retryAfterMs`, invalid parameters (no state change), restarts, and the
//! Worker's own per-user WebSocket-upgrade limit.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libtest_mimic::Trial;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{fail, http, server, unique, ws, TestResult};
use crate::{ensure, ensure_eq, restart_trial, trial};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub fn tests() -> Vec<Trial> {
    vec![
        trial("ratelimit::fixed_window_sequence", fixed_window),
        trial("ratelimit::sliding_window_sequence", sliding_window),
        trial("ratelimit::token_bucket_sequence", token_bucket),
        trial("ratelimit::leaky_bucket_sequence", leaky_bucket),
        trial("ratelimit::gcra_sequence", gcra),
        trial("ratelimit::keys_and_algorithms_are_independent", independent),
        trial("ratelimit::concurrent_checks_allow_exactly_the_limit", concurrent),
        trial("ratelimit::retry_after_ms_is_honoured", retry_after),
        trial("ratelimit::invalid_parameters_rejected_without_state_change", invalid_parameters),
        trial("ratelimit::non_admin_forbidden", non_admin),
        trial("ratelimit::upgrade_limit_429_then_recovers", upgrade_limit),
        trial("ratelimit::idle_keys_pruned_by_alarm", idle_keys_pruned),
        restart_trial("ratelimit::state_survives_wrangler_restart", restart),
        trial("ratelimit::null_tokens_is_400_and_spends_nothing", null_tokens),
    ]
}

const DAY: i64 = 86_400_000;
/// Windows for the sequence tests: a year (the longest allowed). Fixed and sliding windows are
/// aligned to multiples of their length since the epoch, so a day-long window rolls over every
/// midnight UTC — a run crossing it would see counts reset. A year's boundary is that rare.
const LONG: i64 = 365 * DAY;
/// Rates slow enough that nothing refills during a test: one per 1000 s.
const SLOW: f64 = 0.001;
const SLOW_MS: i64 = 1_000_000;
/// Clock slack between this process and workerd (same machine) plus request latency, which on
/// a loaded machine can reach seconds: generous, yet tiny next to the windows and rates checked.
const SLACK: i64 = 30_000;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `POST /api/ratelimit/<path>` as an admin; the decision (200) or the error body.
async fn check(path: &str, body: &Value) -> Res<(u16, Value)> {
    let t = server().admin_token("ops");
    let r = http().post(&format!("/api/ratelimit/{path}"), &t, &body.to_string()).await?;
    let body = if r.body.is_null() { Value::String(r.text) } else { r.body };
    Ok((r.status, body))
}

/// A check that must answer 200.
async fn decide(path: &str, body: &Value) -> Res<Value> {
    let (status, v) = check(path, body).await?;
    ensure!(status == 200, "{path} {body}: HTTP {status} {v}");
    Ok(v)
}

fn int(v: &Value, field: &str) -> Res<i64> {
    v[field].as_i64().ok_or_else(|| fail(format!("{field} missing in {v}")))
}

/// `v` with its time fields replaced by `"<t>"`, for exact comparison of everything else.
fn untimed(v: &Value, fields: &[&str]) -> Value {
    let mut v = v.clone();
    for f in fields {
        if v.get(*f).is_some() {
            v[*f] = json!("<t>");
        }
    }
    v
}

async fn fixed_window() -> TestResult {
    let key = unique("fw");
    let body = json!({"key": key, "limit": 3, "window": LONG});
    let before = now_ms();
    let first = decide("check", &body).await?;
    let reset_at = int(&first, "resetAt")?;
    ensure!(reset_at % LONG == 0 && reset_at > before - SLACK && reset_at <= before + LONG + SLACK, "resetAt {reset_at}");
    ensure_eq!(first, json!({"allowed": true, "count": 1, "remaining": 2, "resetAt": reset_at, "retryAfterMs": 0}));
    ensure_eq!(decide("check", &body).await?, json!({"allowed": true, "count": 2, "remaining": 1, "resetAt": reset_at, "retryAfterMs": 0}));
    ensure_eq!(decide("check", &body).await?, json!({"allowed": true, "count": 3, "remaining": 0, "resetAt": reset_at, "retryAfterMs": 0}));
    for _ in 0..2 {
        let denied = decide("check", &body).await?;
        ensure_eq!(untimed(&denied, &["retryAfterMs"]), json!({"allowed": false, "count": 3, "remaining": 0, "resetAt": reset_at, "retryAfterMs": "<t>"}));
        // The wait is exactly until the window's end.
        let ends = now_ms() + int(&denied, "retryAfterMs")?;
        ensure!((ends - reset_at).abs() < SLACK, "retryAfterMs points at {ends}, window ends {reset_at}");
    }
    Ok(())
}

async fn sliding_window() -> TestResult {
    let key = unique("sw");
    let body = json!({"key": key, "limit": 3, "window": LONG});
    let first = decide("check/sliding-window", &body).await?;
    // A fresh key counts only the current window: the estimate is back to 0 two windows on.
    let reset_at = int(&first, "resetAt")?;
    ensure!(reset_at % LONG == 0 && reset_at > now_ms() + LONG - SLACK, "resetAt {reset_at}");
    let window_start = reset_at - 2 * LONG;
    for (count, remaining) in [(1, 2), (2, 1), (3, 0)] {
        let v = if count == 1 { first.clone() } else { decide("check/sliding-window", &body).await? };
        ensure_eq!(v, json!({"allowed": true, "count": count, "remaining": remaining, "resetAt": reset_at, "retryAfterMs": 0}));
    }
    let denied = decide("check/sliding-window", &body).await?;
    ensure_eq!(untimed(&denied, &["retryAfterMs"]), json!({"allowed": false, "count": 3, "remaining": 0, "resetAt": reset_at, "retryAfterMs": "<t>"}));
    // Next window, 3 previous requests weigh 3·(1 − e/w): a 4th fits once that is ≤ 2, at e = w/3.
    let allowed_at = now_ms() + int(&denied, "retryAfterMs")?;
    let expected = window_start + LONG + LONG / 3;
    ensure!((allowed_at - expected).abs() < SLACK, "retry points at {allowed_at}, expected {expected}");
    Ok(())
}

async fn token_bucket() -> TestResult {
    let key = unique("tb");
    let body = json!({"key": key, "capacity": 3, "refillRate": SLOW});
    for remaining in [2, 1, 0] {
        ensure_eq!(decide("check/token-bucket", &body).await?, json!({"allowed": true, "remaining": remaining, "retryAfterMs": 0}));
    }
    let denied = decide("check/token-bucket", &body).await?;
    ensure_eq!(untimed(&denied, &["retryAfterMs"]), json!({"allowed": false, "remaining": 0, "retryAfterMs": "<t>"}));
    let retry = int(&denied, "retryAfterMs")?;
    ensure!(retry > SLOW_MS - SLACK && retry <= SLOW_MS, "one token refills in 1000 s, got {retry}");

    // `tokens` spends several at once; a request for more than is left changes nothing.
    let key = unique("tb-multi");
    let two = json!({"key": key, "capacity": 3, "refillRate": SLOW, "tokens": 2});
    ensure_eq!(decide("check/token-bucket", &two).await?, json!({"allowed": true, "remaining": 1, "retryAfterMs": 0}));
    let denied = decide("check/token-bucket", &two).await?;
    ensure_eq!(untimed(&denied, &["retryAfterMs"]), json!({"allowed": false, "remaining": 1, "retryAfterMs": "<t>"}));
    let one = json!({"key": key, "capacity": 3, "refillRate": SLOW});
    ensure_eq!(decide("check/token-bucket", &one).await?, json!({"allowed": true, "remaining": 0, "retryAfterMs": 0}));
    Ok(())
}

async fn leaky_bucket() -> TestResult {
    let key = unique("lb");
    let body = json!({"key": key, "capacity": 2, "leakRate": SLOW});
    for remaining in [1, 0] {
        ensure_eq!(decide("check/leaky-bucket", &body).await?, json!({"allowed": true, "remaining": remaining, "retryAfterMs": 0}));
    }
    for _ in 0..2 {
        let denied = decide("check/leaky-bucket", &body).await?;
        ensure_eq!(untimed(&denied, &["retryAfterMs"]), json!({"allowed": false, "remaining": 0, "retryAfterMs": "<t>"}));
        let retry = int(&denied, "retryAfterMs")?;
        ensure!(retry > SLOW_MS - SLACK && retry <= SLOW_MS, "one request drains in 1000 s, got {retry}");
    }
    Ok(())
}

async fn gcra() -> TestResult {
    let key = unique("gcra");
    let body = json!({"key": key, "rate": 1, "period": SLOW_MS, "burst": 2});
    let times = ["retryAfterMs", "resetAfterMs"];
    let a = decide("check/gcra", &body).await?;
    ensure_eq!(untimed(&a, &["resetAfterMs"]), json!({"allowed": true, "remaining": 1, "retryAfterMs": 0, "resetAfterMs": "<t>"}));
    ensure!((SLOW_MS - SLACK..=SLOW_MS).contains(&int(&a, "resetAfterMs")?), "{a}");
    let b = decide("check/gcra", &body).await?;
    ensure_eq!(untimed(&b, &["resetAfterMs"]), json!({"allowed": true, "remaining": 0, "retryAfterMs": 0, "resetAfterMs": "<t>"}));
    ensure!((2 * SLOW_MS - SLACK..=2 * SLOW_MS).contains(&int(&b, "resetAfterMs")?), "{b}");
    let denied = decide("check/gcra", &body).await?;
    ensure_eq!(untimed(&denied, &times), json!({"allowed": false, "remaining": 0, "retryAfterMs": "<t>", "resetAfterMs": "<t>"}));
    ensure!((SLOW_MS - SLACK..=SLOW_MS).contains(&int(&denied, "retryAfterMs")?), "{denied}");
    ensure!((2 * SLOW_MS - SLACK..=2 * SLOW_MS).contains(&int(&denied, "resetAfterMs")?), "{denied}");
    Ok(())
}

async fn independent() -> TestResult {
    // Same key, two algorithms: separate rows. Two keys: separate objects.
    let key = unique("ind");
    let other = unique("ind");
    let fw = |k: &str| json!({"key": k, "limit": 1, "window": LONG});
    ensure_eq!(decide("check", &fw(&key)).await?["allowed"], json!(true));
    ensure_eq!(decide("check", &fw(&key)).await?["allowed"], json!(false));
    ensure_eq!(decide("check", &fw(&other)).await?["allowed"], json!(true));
    let sw = json!({"key": key, "limit": 1, "window": LONG});
    ensure_eq!(decide("check/sliding-window", &sw).await?["allowed"], json!(true));
    let g = json!({"key": key, "rate": 1, "period": SLOW_MS, "burst": 1});
    ensure_eq!(decide("check/gcra", &g).await?["allowed"], json!(true));
    // Another limit for the same key and algorithm is another window length: counted afresh.
    ensure_eq!(decide("check", &json!({"key": key, "limit": 1, "window": LONG / 2})).await?["allowed"], json!(true));
    Ok(())
}

async fn concurrent() -> TestResult {
    let cases = [
        ("check", json!({"key": unique("conc-fw"), "limit": 10, "window": LONG})),
        ("check/sliding-window", json!({"key": unique("conc-sw"), "limit": 10, "window": LONG})),
        ("check/token-bucket", json!({"key": unique("conc-tb"), "capacity": 10, "refillRate": SLOW})),
        ("check/leaky-bucket", json!({"key": unique("conc-lb"), "capacity": 10, "leakRate": SLOW})),
        ("check/gcra", json!({"key": unique("conc-gcra"), "rate": 1, "period": SLOW_MS, "burst": 10})),
    ];
    for (path, body) in cases {
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let body = body.clone();
                tokio::spawn(async move { decide(path, &body).await })
            })
            .collect();
        let mut allowed = Vec::new();
        for task in tasks {
            let v = task.await??;
            if v["allowed"] == json!(true) {
                allowed.push(v);
            }
        }
        ensure_eq!((path, allowed.len()), (path, 10));
        // Each allowed request saw a distinct count: none read a stale state.
        let mut seen: Vec<i64> = allowed.iter().map(|v| v.get("count").or(v.get("remaining")).and_then(Value::as_i64).unwrap_or(-1)).collect();
        seen.sort_unstable();
        let expected: Vec<i64> = if body.get("limit").is_some() { (1..=10).collect() } else { (0..10).collect() };
        ensure_eq!((path, seen), (path, expected));
    }
    Ok(())
}

/// Each algorithm's allowance refills (or its window rolls over) only every 4 s — far above
/// the latency of a check through the Worker, the object and SQLite even on a loaded machine —
/// so a denial is reached quickly; the loop is bounded by a deadline, not a number of tries.
const RETRY_PERIOD_MS: i64 = 4_000;

async fn retry_after() -> TestResult {
    let period = RETRY_PERIOD_MS;
    let per_second = 1_000.0 / period as f64;
    let cases = [
        // A denied fixed window waits for its end (≤ one window); a sliding one may wait until
        // the end of the next (≤ two windows): the previous window's weight must fall to 0.
        ("check", json!({"key": unique("ra-fw"), "limit": 1, "window": period}), period),
        ("check/sliding-window", json!({"key": unique("ra-sw"), "limit": 1, "window": period}), 2 * period),
        ("check/token-bucket", json!({"key": unique("ra-tb"), "capacity": 1, "refillRate": per_second}), period),
        ("check/leaky-bucket", json!({"key": unique("ra-lb"), "capacity": 1, "leakRate": per_second}), period),
        ("check/gcra", json!({"key": unique("ra-gcra"), "rate": 1, "period": period, "burst": 1}), period),
    ];
    for (path, body, longest) in cases {
        // Spend the allowance; a window may roll over (or a token refill) in between, so keep
        // going until denied.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let denied = loop {
            let v = decide(path, &body).await?;
            if v["allowed"] == json!(false) {
                break v;
            }
            ensure!(std::time::Instant::now() < deadline, "{path}: never denied within 60 s");
        };
        let wait = int(&denied, "retryAfterMs")?;
        ensure!(wait > 0 && wait <= longest, "{path}: retryAfterMs {wait}, expected 1..={longest}");
        // The retry is allowed once that wait has passed (later is fine: state only refills).
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        let again = decide(path, &body).await?;
        ensure_eq!((path, again["allowed"].clone()), (path, json!(true)));
    }
    Ok(())
}

async fn invalid_parameters() -> TestResult {
    let key = unique("bad");
    // One valid check per algorithm first, so "no state change" is visible afterwards.
    let valid = [
        ("check", json!({"key": key, "limit": 5, "window": LONG})),
        ("check/sliding-window", json!({"key": key, "limit": 5, "window": LONG})),
        ("check/token-bucket", json!({"key": key, "capacity": 5, "refillRate": SLOW})),
        ("check/leaky-bucket", json!({"key": key, "capacity": 5, "leakRate": SLOW})),
        ("check/gcra", json!({"key": key, "rate": 1, "period": SLOW_MS, "burst": 5})),
    ];
    for (path, body) in &valid {
        ensure_eq!(decide(path, body).await?["remaining"], json!(4));
    }
    let k = key.as_str();
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        ("check", json!({"limit": 5, "window": DAY}).to_string(), 400, "invalid_body", "key is required"),
        ("check", json!({"key": null, "limit": 5, "window": DAY}).to_string(), 400, "invalid_body", "key is required"),
        ("check", json!({"key": 7, "limit": 5, "window": DAY}).to_string(), 400, "invalid_body", "key must be a string"),
        ("check", json!({"key": "", "limit": 5, "window": DAY}).to_string(), 422, "invalid_key", "key must be 1 to 256 characters"),
        ("check", json!({"key": "k".repeat(257), "limit": 5, "window": DAY}).to_string(), 422, "invalid_key", "key must be 1 to 256 characters"),
        ("check", "not json".to_owned(), 400, "invalid_json", "body is not valid JSON"),
        ("check", String::new(), 400, "invalid_body", "body must be a JSON object"),
        ("check", json!([k, 5, DAY]).to_string(), 400, "invalid_body", "body must be a JSON object"),
        ("check", json!({"key": k, "limit": 0, "window": DAY}).to_string(), 422, "invalid_parameter", "limit must be a positive integer"),
        ("check", json!({"key": k, "limit": -1, "window": DAY}).to_string(), 422, "invalid_parameter", "limit must be a positive integer"),
        ("check", json!({"key": k, "limit": 2.5, "window": DAY}).to_string(), 422, "invalid_parameter", "limit must be a whole number"),
        ("check", json!({"key": k, "limit": 1e12, "window": DAY}).to_string(), 422, "invalid_parameter", "limit must be at most 1000000000"),
        ("check", json!({"key": k, "limit": "5", "window": DAY}).to_string(), 400, "invalid_body", "limit must be a number"),
        ("check", json!({"key": k, "limit": 5}).to_string(), 400, "invalid_body", "window is required"),
        ("check", json!({"key": k, "limit": 5, "window": 0}).to_string(), 422, "invalid_parameter", "window must be a positive integer (ms)"),
        ("check/sliding-window", json!({"key": k, "limit": 5, "window": -DAY}).to_string(), 422, "invalid_parameter", "window must be a positive integer (ms)"),
        ("check/sliding-window", json!({"key": k, "limit": 5, "window": 400 * DAY}).to_string(), 422, "invalid_parameter", "window must be at most 31536000000 ms (one year)"),
        ("check/sliding-window", json!({"key": k, "limit": true, "window": DAY}).to_string(), 400, "invalid_body", "limit must be a number"),
        ("check/token-bucket", json!({"key": k, "capacity": 0, "refillRate": 1}).to_string(), 422, "invalid_parameter", "capacity must be a positive integer"),
        ("check/token-bucket", json!({"key": k, "capacity": 5, "refillRate": 0}).to_string(), 422, "invalid_parameter", "refillRate must be a positive number (per second)"),
        ("check/token-bucket", json!({"key": k, "capacity": 5, "refillRate": -2}).to_string(), 422, "invalid_parameter", "refillRate must be a positive number (per second)"),
        ("check/token-bucket", json!({"key": k, "capacity": 5, "refillRate": "fast"}).to_string(), 400, "invalid_body", "refillRate must be a number"),
        ("check/token-bucket", json!({"key": k, "capacity": 5, "refillRate": 1, "tokens": 6}).to_string(), 422, "invalid_parameter", "tokens must not exceed capacity (such a request could never be allowed)"),
        ("check/token-bucket", json!({"key": k, "capacity": 5, "refillRate": 1, "tokens": 0}).to_string(), 422, "invalid_parameter", "tokens must be a positive integer"),
        ("check/token-bucket", json!({"key": k, "capacity": 5}).to_string(), 400, "invalid_body", "refillRate is required"),
        ("check/leaky-bucket", json!({"key": k, "capacity": -5, "leakRate": 1}).to_string(), 422, "invalid_parameter", "capacity must be a positive integer"),
        ("check/leaky-bucket", json!({"key": k, "capacity": 5, "leakRate": 0}).to_string(), 422, "invalid_parameter", "leakRate must be a positive number (per second)"),
        ("check/leaky-bucket", json!({"key": k, "capacity": 1_000_000_000, "leakRate": 1}).to_string(), 422, "invalid_parameter", "leakRate is too slow: draining a full bucket would take more than ten years"),
        ("check/gcra", json!({"key": k, "rate": 0, "period": 1000, "burst": 1}).to_string(), 422, "invalid_parameter", "rate must be a positive integer"),
        ("check/gcra", json!({"key": k, "rate": 1, "period": -1, "burst": 1}).to_string(), 422, "invalid_parameter", "period must be a positive integer (ms)"),
        ("check/gcra", json!({"key": k, "rate": 1, "period": 1000, "burst": 0}).to_string(), 422, "invalid_parameter", "burst must be a positive integer"),
        ("check/gcra", json!({"key": k, "rate": 1, "period": 1000}).to_string(), 400, "invalid_body", "burst is required"),
        ("check/gcra", json!({"key": k, "rate": [1], "period": 1000, "burst": 1}).to_string(), 400, "invalid_body", "rate must be a number"),
    ];
    let t = server().admin_token("ops");
    for (path, body, status, code, message) in &cases {
        let r = http().post(&format!("/api/ratelimit/{path}"), &t, body).await?;
        let error = (r.status, r.error_code().map(str::to_owned), r.body["error"]["message"].as_str().map(str::to_owned));
        ensure_eq!((path, body.as_str(), error), (path, body.as_str(), (*status, Some((*code).to_owned()), Some((*message).to_owned()))));
    }
    // Untouched: every algorithm's next valid check is only the second one.
    for (path, body) in &valid {
        ensure_eq!((path, decide(path, body).await?["remaining"].clone()), (path, json!(3)));
    }
    let r = decide("check", &valid[0].1).await?;
    ensure_eq!(r["count"], json!(3));
    Ok(())
}

async fn non_admin() -> TestResult {
    let user = server().token(&unique("alice"));
    let body = r#"{"key":"k","limit":1,"window":1000}"#;
    for path in ["check", "check/sliding-window", "check/token-bucket", "check/leaky-bucket", "check/gcra"] {
        let r = http().post(&format!("/api/ratelimit/{path}"), &user, body).await?;
        ensure_eq!((path, r.status, r.error_code()), (path, 403, Some("forbidden")));
        let r = http().request("POST", &format!("/api/ratelimit/{path}"), None, Some(body), &[]).await?;
        ensure_eq!((path, r.status), (path, 401));
    }
    let r = http().request("GET", "/api/ratelimit/check", Some(&server().admin_token("ops")), None, &[]).await?;
    ensure_eq!(r.status, 405);
    Ok(())
}

/// One WebSocket upgrade attempt: the refusal's status and headers (`101` if it opened).
async fn upgrade_attempt(path: &str, token: &str) -> Res<(u16, reqwest::header::HeaderMap, Value)> {
    let mut request = format!("{}{}", server().ws_base(), path).into_client_request()?;
    request.headers_mut().insert("Authorization", format!("Bearer {token}").parse()?);
    match tokio::time::timeout(crate::support::RECV, tokio_tungstenite::connect_async(request)).await? {
        Ok(_) => Ok((101, reqwest::header::HeaderMap::new(), Value::Null)),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let mut headers = reqwest::header::HeaderMap::new();
            for (k, v) in resp.headers() {
                if let (Ok(k), Ok(v)) = (reqwest::header::HeaderName::from_bytes(k.as_str().as_bytes()), reqwest::header::HeaderValue::from_bytes(v.as_bytes())) {
                    headers.insert(k, v);
                }
            }
            let body = resp.body().as_ref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
            Ok((resp.status().as_u16(), headers, body))
        }
        Err(e) => Err(fail(format!("unexpected handshake error {e}"))),
    }
}

fn header_int(headers: &reqwest::header::HeaderMap, name: &str) -> Res<i64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| fail(format!("{name} missing or not a number: {headers:?}")))
}

/// A WebSocket upgrade request sent over plain HTTP, so a refusal's body is readable (the
/// handshake client drops it): 400 from the counter (`since=bad`) once past the guard, 429 from it.
async fn upgrade_over_http(path: &str, token: &str) -> Res<crate::support::Reply> {
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    http().request("GET", path, Some(token), None, &upgrade).await
}

async fn upgrade_limit() -> TestResult {
    let s = server();
    let user = unique("upgrader");
    let t = s.token(&user);
    let counter = unique("upg");
    // Upgrades that pass the guard are refused by the counter (bad `since`): no socket to close.
    // The 429 is read from the same response that was limited (status, headers and body), so a
    // slot refilling in between (one every 60/limit s) cannot hide it.
    let path = format!("/ws/counter/{counter}?since=bad");
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(300);
    let mut passed = 0_i64;
    let mut limited = None; // the first 429 read over HTTP
    let mut handshake_limited = false; // a real WebSocket handshake refused with 429
    while limited.is_none() || !handshake_limited {
        ensure!(std::time::Instant::now() < deadline, "no 429 within 300 s ({passed} upgrades passed)");
        // Half real handshakes, half HTTP upgrade requests: the guard must treat both alike.
        let batch: Vec<_> = (0..24).map(|i| {
            let (path, t) = (path.clone(), t.clone());
            tokio::spawn(async move {
                if i % 2 == 0 {
                    let (status, _, body) = upgrade_attempt(&path, &t).await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, None, body))
                } else {
                    let r = upgrade_over_http(&path, &t).await?;
                    Ok((r.status, Some(r), Value::Null))
                }
            })
        }).collect();
        for task in batch {
            let (status, reply, body) = task.await??;
            match (status, reply) {
                (400, _) => passed += 1,
                (429, Some(r)) => {
                    if limited.is_none() {
                        limited = Some(r);
                    }
                }
                (429, None) => handshake_limited = true,
                (other, reply) => {
                    let text = reply.map(|r| r.text).unwrap_or_else(|| body.to_string());
                    return Err(fail(format!("unexpected status {other}: {text}")));
                }
            }
        }
    }
    let r = limited.ok_or_else(|| fail("no 429"))?;
    let headers = r.headers.clone();
    let limit = header_int(&headers, "RateLimit-Limit")?;
    if s.is_local() {
        ensure_eq!(limit, i64::from(crate::support::WS_UPGRADES_PER_MINUTE));
    }
    // The whole burst passed, plus at most what refilled meanwhile (one every 60/limit s).
    let refilled = started.elapsed().as_millis() as i64 * limit / 60_000 + 1;
    ensure!(passed >= limit && passed <= limit + refilled, "{passed} upgrades passed, limit {limit} (+{refilled} refilled)");
    ensure_eq!((r.status, r.error_code()), (429, Some("rate_limited")));
    let message = r.body["error"]["message"].as_str().unwrap_or_default().to_owned();
    ensure!(message.starts_with("too many WebSocket upgrades; retry in "), "message {message}");
    ensure_eq!(header_int(&headers, "RateLimit-Remaining")?, 0);
    let retry_after = header_int(&headers, "Retry-After")?;
    ensure!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let reset = header_int(&headers, "RateLimit-Reset")?;
    ensure!((1..=60).contains(&reset), "RateLimit-Reset {reset}");
    ensure_eq!(headers.get("RateLimit-Policy").and_then(|v| v.to_str().ok()), Some(format!("{limit};w=60").as_str()));
    // Other users are not affected.
    let (status, _, _) = upgrade_attempt(&path, &s.token(&unique("bystander"))).await?;
    ensure_eq!(status, 400);

    // Waiting out Retry-After lets the next upgrade through, to a working socket.
    tokio::time::sleep(Duration::from_secs(retry_after as u64)).await;
    let mut sock = ws(&format!("/ws/counter/{counter}"), &t).await?;
    ensure_eq!(sock.recv().await?["type"], json!("snapshot"));
    sock.close().await
}

async fn idle_keys_pruned() -> TestResult {
    let s = server();
    // `short` is idle a second after its check: its alarm deletes the row, then the object's
    // name (logged as `forgot`). `long` (a year's window) keeps its state.
    let short = unique("idle-short");
    let long = unique("idle-long");
    let fw = |key: &str, window: i64| json!({"key": key, "limit": 1, "window": window});
    ensure_eq!(decide("check", &fw(&short, 1_000)).await?["count"], json!(1));
    ensure_eq!(decide("check", &fw(&long, LONG)).await?["count"], json!(1));
    let forgot = |key: &str| s.log_count(&format!("forgot RateLimiter api:{key}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while forgot(&short) == 0 {
        ensure!(std::time::Instant::now() < deadline, "the alarm did not prune the idle key");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure_eq!(forgot(&long), 0);
    let again = decide("check", &fw(&short, 1_000)).await?;
    ensure_eq!((again["allowed"].clone(), again["count"].clone()), (json!(true), json!(1)));
    ensure_eq!(decide("check", &fw(&long, LONG)).await?["allowed"], json!(false));
    Ok(())
}

async fn restart() -> TestResult {
    let s = server();
    let key = unique("rs");
    let fw = json!({"key": key, "limit": 3, "window": LONG});
    let g = json!({"key": key, "rate": 1, "period": SLOW_MS, "burst": 2});
    ensure_eq!(decide("check", &fw).await?["count"], json!(1));
    ensure_eq!(decide("check", &fw).await?["count"], json!(2));
    ensure_eq!(decide("check/gcra", &g).await?["remaining"], json!(1));
    let wakes = s.log_count(&crate::support::wake_needle("RateLimiter", &format!("api:{key}")));
    s.restart()?;
    let v = decide("check", &fw).await?;
    ensure_eq!((v["allowed"].clone(), v["count"].clone()), (json!(true), json!(3)));
    let v = decide("check", &fw).await?;
    ensure_eq!((v["allowed"].clone(), v["count"].clone()), (json!(false), json!(3)));
    ensure_eq!(decide("check/gcra", &g).await?["remaining"], json!(0));
    ensure_eq!(decide("check/gcra", &g).await?["allowed"], json!(false));
    // The wake line comes 50 ms after the constructor, through wrangler's output: wait for it.
    let needle = crate::support::wake_needle("RateLimiter", &format!("api:{key}"));
    ensure!(s.log_count_exceeds(&needle, wakes, crate::support::RECV).await, "the object was not rebuilt from storage");
    Ok(())
}

/// `tokens` absent means 1; `tokens: null` is a 400, never 1 token spent.
async fn null_tokens() -> TestResult {
    let key = unique("tbnull");
    let (status, body) = check("check/token-bucket", &json!({"key": key, "capacity": 1, "refillRate": 0.001, "tokens": null})).await?;
    ensure_eq!((status, body["error"]["code"].clone()), (400, json!("invalid_body")));
    // The one token is still there.
    ensure_eq!(
        decide("check/token-bucket", &json!({"key": key, "capacity": 1, "refillRate": 0.001})).await?,
        json!({"allowed": true, "remaining": 0, "retryAfterMs": 0})
    );
    Ok(())
}
