//! The HTTP side: the route resolver and every request-body / query parser answer Ok or a
//! documented status and code (docs/protocol.md §5, Appendix B), never panic.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

use edge_realtime_core::error::ApiError;
use edge_realtime_core::route::{self, Endpoint};
use edge_realtime_core::{channel, chat, counter, devtoken, query, ratelimit, session, waddle};

use crate::common::{json, near_valid, string};

/// A documented error: status and code from Appendix B, a JSON body of the §5 shape.
fn check_api(e: &ApiError, statuses: &[u16], codes: &[&str]) -> Result<(), TestCaseError> {
    prop_assert!(statuses.contains(&e.status), "status {} not in {:?} ({})", e.status, statuses, e);
    prop_assert!(codes.contains(&e.code), "code {} not in {:?} ({})", e.code, codes, e);
    let body: Value = serde_json::from_str(&e.body()).map_err(|x| TestCaseError::fail(x.to_string()))?;
    prop_assert_eq!(&body["error"]["code"], &json!(e.code));
    Ok(())
}

const SEGMENTS: &[&str] = &[
    "api", "ws", "counter", "chat", "messages", "waddle", "presence", "broadcast", "channel", "message", "game", "state",
    "ratelimit", "check", "sliding-window", "token-bucket", "leaky-bucket", "gcra", "fixed-window", "health",
    "__user-session", "clear", "notify", "history", "increment", "decrement", "set", "reset", "room1", "a.b-c_1", "",
];

fn segment() -> BoxedStrategy<String> {
    prop_oneof![6 => select(SEGMENTS.to_vec()).prop_map(str::to_owned), 2 => string(), 1 => "[A-Za-z0-9_.-]{60,70}"].boxed()
}

fn path() -> BoxedStrategy<String> {
    prop_oneof![
        6 => (prop::collection::vec(segment(), 1..6), any::<bool>()).prop_map(|(s, slash)| format!("{}{}", if slash { "/" } else { "" }, s.join("/"))),
        1 => any::<String>(),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn route_resolve_answers_a_route_or_400_404_405(
        method in prop_oneof![4 => select(vec!["GET", "POST"]).prop_map(str::to_owned), 1 => select(vec!["PUT", "get", "DELETE", ""]).prop_map(str::to_owned), 1 => any::<String>()],
        path in path(),
        query in prop::collection::btree_map(select(vec!["userId", "deviceId", "token", "since"]), string(), 0..3),
    ) {
        let q: BTreeMap<&str, String> = query;
        match route::resolve(&method, &path, |k| q.get(k).map(String::as_str)) {
            Ok(Endpoint::Object { name, websocket, .. }) => {
                prop_assert!(edge_realtime_core::names::is_valid_name(&name), "object name {:?}", name);
                if websocket {
                    prop_assert_eq!(method.as_str(), "GET");
                }
            }
            Ok(_) => prop_assert!(method == "GET" || method == "POST"),
            Err(e) => {
                check_api(&e, &[400, 404, 405], &["invalid_name", "not_found", "method_not_allowed"])?;
                if e.status == 405 {
                    let allowed = route::allowed_method(&e);
                    prop_assert!(matches!(allowed, Some("GET" | "POST")), "Allow {:?}", allowed);
                    prop_assert_ne!(allowed, Some(method.as_str()));
                }
            }
        }
    }

    #[test]
    fn channel_post_bodies(body in prop_oneof![
        3 => near_valid((string(), proptest::option::of(string())).prop_map(|(c, id)| {
            let mut v = json!({"content": c});
            if let Some(id) = id { v["id"] = json!(id); }
            v
        }).boxed()).prop_map(|v| v.to_string()),
        1 => json().prop_map(|v| v.to_string()),
        1 => any::<String>(),
        1 => (0usize..4).prop_map(|d| format!("{{\"content\":\"{}\"}}", "x".repeat(64 * 1024 - 14 + d))),
    ]) {
        match channel::parse_post_body(&body) {
            Ok(p) => {
                prop_assert!((1..=channel::MAX_CONTENT_CHARS).contains(&p.content.chars().count()));
                prop_assert!(body.len() <= 64 * 1024);
            }
            Err(e) => {
                check_api(&e.to_api(), &[400, 413, 422], &["invalid_body", "payload_too_large", "empty_content", "content_too_long", "invalid_id"])?;
                prop_assert_eq!(e.to_api().status == 413, body.len() > 64 * 1024);
            }
        }
    }

    #[test]
    fn waddle_broadcast_bodies(body in prop_oneof![json().prop_map(|v| v.to_string()), any::<String>(), crate::common::typed_object().prop_map(|v| format!(" {v}\n"))]) {
        match waddle::broadcast_frame(&body) {
            Ok(frame) => {
                prop_assert!(serde_json::from_str::<Value>(&frame).is_ok_and(|v| v.is_object()));
                prop_assert_eq!(frame.as_str(), body.trim());
            }
            Err(e) => check_api(&e, &[400, 413], &["invalid_body", "payload_too_large"])?,
        }
    }

    #[test]
    fn session_notify_bodies(body in json()) {
        match session::notification_frame(&body) {
            Ok(frame) => {
                let v: Value = serde_json::from_str(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&v["type"], &json!("notification"));
                prop_assert!(body.is_object());
            }
            Err(e) => {
                check_api(&e, &[400], &["invalid_body"])?;
                prop_assert!(!body.is_object());
            }
        }
    }

    #[test]
    fn counter_http_bodies(kind in select(counter::OpKind::ALL.to_vec()), body in prop_oneof![
        2 => json(),
        3 => near_valid((proptest::option::of(crate::common::number()), proptest::option::of(string())).prop_map(|(n, id)| {
            let mut v = json!({});
            if let Some(n) = n { v["amount"] = n.clone(); v["value"] = n; }
            if let Some(id) = id { v["id"] = json!(id); }
            v
        }).boxed()),
    ]) {
        match counter::parse_op(kind, Some(&body)) {
            Ok(op) => prop_assert_eq!(op.kind(), kind),
            Err(e) => check_api(&e.to_api(), &[400, 422], &["invalid_body", "invalid_amount"])?,
        }
        if let Err(e) = counter::http_client_id(&body) {
            check_api(&e, &[400, 422], &["invalid_id"])?;
        }
    }

    #[test]
    fn ratelimit_bodies(
        op in prop_oneof![4 => select(ratelimit::Algorithm::ALL.to_vec()).prop_map(|a| format!("check/{}", a.as_str())), 1 => any::<String>()],
        body in prop_oneof![1 => json(), 3 => near_valid(ratelimit_body())],
    ) {
        let known = ratelimit::Algorithm::from_op(&op).is_some();
        match ratelimit::parse_request(&op, &body) {
            Ok(req) => {
                prop_assert!(known);
                prop_assert_eq!(Some(req.params.algorithm()), ratelimit::Algorithm::from_op(&op));
                let n = req.key.chars().count();
                prop_assert!((1..=ratelimit::MAX_KEY_CHARS).contains(&n));
                // A valid request can be checked at any time without panicking.
                let (_, d) = req.params.check(&ratelimit::State::fresh(req.params.algorithm()), 1_700_000_000_000);
                prop_assert!(d.allowed());
            }
            Err(e) => {
                let api = ApiError::from(e);
                if known {
                    check_api(&api, &[400, 422], &["invalid_body", "invalid_key", "invalid_parameter"])?;
                } else {
                    check_api(&api, &[404], &["not_found"])?;
                }
            }
        }
    }

    #[test]
    fn dev_token_bodies(body in prop_oneof![
        1 => json(),
        3 => near_valid((string(), proptest::option::of(string()), proptest::option::of(any::<bool>())).prop_map(|(u, n, a)| {
            let mut v = json!({"userId": u});
            if let Some(n) = n { v["name"] = json!(n); }
            if let Some(a) = a { v["admin"] = json!(a); }
            v
        }).boxed()),
    ], now in 0i64..4_000_000_000) {
        match devtoken::claims_from_body(&body, now) {
            Ok(c) => {
                prop_assert!(edge_realtime_core::names::is_valid_name(&c.sub));
                prop_assert!(c.name.as_ref().is_none_or(|n| n.chars().count() <= devtoken::MAX_NAME_CHARS));
                prop_assert_eq!(c.exp - c.iat, devtoken::TTL_SECS);
            }
            Err(e) => check_api(&e, &[400], &["invalid_body", "invalid_user_id", "invalid_name", "invalid_admin"])?,
        }
    }

    #[test]
    fn history_and_cursor_queries(limit in proptest::option::of(string()), cursor in proptest::option::of(string())) {
        match chat::HistoryQuery::parse(limit.as_deref(), cursor.as_deref()) {
            Ok(q) => {
                prop_assert!((1..=chat::HISTORY_MAX_LIMIT).contains(&q.limit));
                prop_assert_eq!(q.fetch_limit, q.limit + 1);
                prop_assert!((0..=edge_realtime_core::MAX_SAFE_INTEGER).contains(&q.before));
            }
            Err(e) => check_api(&e, &[400], &["invalid_limit", "invalid_cursor"])?,
        }
        match channel::HistoryQuery::parse(cursor.as_deref(), limit.as_deref()) {
            Ok(q) => {
                prop_assert!((1..=channel::HISTORY_MAX_LIMIT).contains(&q.limit));
                prop_assert!(q.after >= 0);
            }
            Err(e) => check_api(&e, &[400], &["invalid_limit", "invalid_cursor"])?,
        }
        match query::parse_seq("since", cursor.as_deref()) {
            Ok(Some(n)) => prop_assert!((0..=edge_realtime_core::MAX_SAFE_INTEGER).contains(&n)),
            Ok(None) => prop_assert!(cursor.is_none(), "present is never absent"),
            Err(e) => check_api(&e, &[400], &["invalid_cursor"])?,
        }
        match query::parse_limit(limit.as_deref(), 50, 100) {
            Ok(n) => prop_assert!((1..=100).contains(&n)),
            Err(e) => check_api(&e, &[400], &["invalid_limit"])?,
        }
    }

    #[test]
    fn counter_ops_filter(raw in proptest::option::of(prop_oneof![
        string(),
        prop::collection::vec(select(vec!["increment", "decrement", "setValue", "reset", "", " ", "bogus"]), 0..5).prop_map(|v| v.join(",")),
    ])) {
        match counter::parse_ops_filter(raw.as_deref()) {
            Ok(kinds) => {
                prop_assert!(!kinds.is_empty(), "an empty list never means every type");
                let mut dedup = kinds.clone();
                dedup.dedup();
                prop_assert_eq!(dedup.len(), kinds.len());
            }
            Err(e) => check_api(&e, &[400], &["invalid_ops"])?,
        }
    }

    /// Config vars: garbage never disables a limit (every value stays positive).
    #[test]
    fn config_vars_stay_positive(raw in proptest::option::of(string())) {
        let get = |_: &str| raw.clone();
        let c = chat::ChatConfig::from_vars(get);
        prop_assert!(c.rate_limit_messages > 0 && c.rate_limit_window_ms > 0 && c.max_messages > 0 && c.prune_interval_ms > 0);
        let r = channel::Retention::from_vars(get);
        prop_assert!(r.max_messages > 0 && r.prune_interval_ms > 0);
        prop_assert!(counter::parse_max_history(raw.as_deref()) > 0);
        prop_assert!(edge_realtime_core::schedule::liveness::parse_timeout(raw.as_deref()) >= edge_realtime_core::schedule::liveness::MIN_TIMEOUT_MS);
    }
}

/// A body valid for one of the algorithms (small numbers, so most are in range).
fn ratelimit_body() -> BoxedStrategy<Value> {
    (string(), 1i64..100, 1i64..100_000, 0.000001f64..1000.0, 1i64..10).prop_map(|(key, n, ms, rate, tokens)| {
        json!({"key": key, "limit": n, "window": ms, "capacity": n, "refillRate": rate, "tokens": tokens,
               "leakRate": rate, "rate": n, "period": ms, "burst": tokens})
    })
    .boxed()
}
