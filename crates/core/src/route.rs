//! The entry Worker's routing table (docs/protocol.md §4), pure so it is tested natively.
//!
//! `resolve` turns method + path + query into an [`Endpoint`] or the exact [`ApiError`]
//! (404 unknown path, 405 wrong method, 400 bad name). Auth and the `Upgrade` check run after
//! it in the Worker, still before any Durable Object is touched.

use crate::effects::Op;
use crate::channel::ChannelOp;
use crate::chat::ChatOp;
use crate::counter::CounterApi;
use crate::error::ApiError;
use crate::game::GameOp;
use crate::names::is_valid_name;
use crate::ops::STATS_OP;
use crate::ratelimit::RateLimitOp;
use crate::session::SessionOp;
use crate::voice::VoiceOp;
use crate::waddle::WaddleOp;

/// Declares [`DoClass`] from one line per class: variant, wrangler.toml binding, short name.
macro_rules! do_classes {
    ($($variant:ident => $binding:literal, $name:literal;)+) => {
        /// The Durable Object classes, with their binding names in wrangler.toml.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DoClass {
            $($variant,)+
        }

        impl DoClass {
            /// Every class, in declaration order.
            pub const ALL: &'static [DoClass] = &[$(DoClass::$variant,)+];

            pub fn binding(self) -> &'static str {
                match self {
                    $(DoClass::$variant => $binding,)+
                }
            }
            /// Short stable name, used when one object registers in another (e.g. logout fan-out).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(DoClass::$variant => $name,)+
                }
            }
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|c| c.as_str() == s)
            }
            /// A class as an operator may spell it: the short name (`chat_room`), the class
            /// (`ChatRoom`, i.e. the binding without underscores) or the binding (`CHAT_ROOM`),
            /// in any case.
            pub fn parse_loose(s: &str) -> Option<Self> {
                let fold = |t: &str| t.chars().filter(|c| *c != '_').collect::<String>().to_ascii_lowercase();
                let wanted = fold(s);
                Self::ALL.iter().copied().find(|c| fold(c.as_str()) == wanted || fold(c.binding()) == wanted)
            }
        }
    };
}

// A new object adds one line here (its binding must match wrangler.toml).
do_classes! {
    UserSession => "USER_SESSION", "user_session";
    Counter => "COUNTER", "counter";
    ChatRoom => "CHAT_ROOM", "chat_room";
    Waddle => "WADDLE", "waddle";
    Channel => "CHANNEL", "channel";
    RateLimiter => "RATE_LIMITER", "rate_limiter";
    Game => "GAME_SERVER", "game";
    Voice => "VOICE_CHANNEL", "voice";
}

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed.
    Public,
    /// Any valid token.
    User,
    /// A token with the `admin` role.
    Admin,
    /// The user named by `?userId=` (the object name) or an admin.
    OwnUserOrAdmin,
    /// Only the user named by `?userId=`.
    OwnUser,
}

/// What a request resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    /// `GET /openapi.json`: the machine-readable contract (docs/openapi.json), public.
    OpenApi,
    /// Forward to object `name` of `class` as internal operation `op`.
    Object { class: DoClass, name: String, op: &'static str, websocket: bool, access: Access },
    /// A RateLimiter API call; the object is named by the body's `key`.
    RateLimit { op: RateLimitOp },
}

impl Endpoint {
    pub fn access(&self) -> Access {
        match self {
            Endpoint::Health | Endpoint::OpenApi => Access::Public,
            Endpoint::Object { access, .. } => *access,
            Endpoint::RateLimit { .. } => Access::Admin,
        }
    }
    pub fn is_websocket(&self) -> bool {
        matches!(self, Endpoint::Object { websocket: true, .. })
    }
}

fn name(raw: &str, what: &str) -> Result<String, ApiError> {
    if is_valid_name(raw) {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::bad_request("invalid_name", format!("{what} must match ^[A-Za-z0-9_.-]{{1,64}}$")))
    }
}

/// A chat room's name: a Name, and never `messages` (`/api/chat/messages` is the global room's
/// history, so no room can be called that).
fn room(raw: &str) -> Result<String, ApiError> {
    if raw == "messages" {
        return Err(ApiError::bad_request("invalid_name", "no room is named \"messages\" (/api/chat/messages is the history of room global)"));
    }
    name(raw, "room")
}

fn object(class: DoClass, name: String, op: &'static str, websocket: bool, access: Access) -> Endpoint {
    Endpoint::Object { class, name, op, websocket, access }
}

/// An endpoint named by an object's typed op (kit objects, `crate::effects::ops!`).
fn endpoint(class: DoClass, name: String, op: impl Op, access: Access) -> Endpoint {
    object(class, name, op.path(), op.is_websocket(), access)
}

/// Builds the endpoint once the method matched (name validation may still fail).
type Build<'a> = Box<dyn FnOnce() -> Result<Endpoint, ApiError> + 'a>;

/// Every route [`resolve`] knows, as (method, path template) — the templates are the OpenAPI
/// ones of docs/openapi.json (`{name}` for a path Name). Tests prove this list, the match arms
/// of [`resolve`] and the document's operations are the same set.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("GET", "/__user-session"),
    ("GET", "/__user-session/state"),
    ("POST", "/__user-session/clear"),
    ("POST", "/__user-session/notify"),
    ("GET", "/ws/counter/{name}"),
    ("GET", "/api/counter/{name}"),
    ("GET", "/api/counter/{name}/history"),
    ("POST", "/api/counter/{name}/increment"),
    ("POST", "/api/counter/{name}/decrement"),
    ("POST", "/api/counter/{name}/set"),
    ("POST", "/api/counter/{name}/reset"),
    ("GET", "/api/chat"),
    ("GET", "/api/chat/messages"),
    ("GET", "/api/chat/{room}"),
    ("GET", "/api/chat/{room}/messages"),
    ("GET", "/ws/waddle/{id}"),
    ("GET", "/api/waddle/{id}/presence"),
    ("POST", "/api/waddle/{id}/broadcast"),
    ("GET", "/ws/channel/{id}"),
    ("POST", "/api/channel/{id}/message"),
    ("GET", "/api/channel/{id}/messages"),
    ("GET", "/api/game/{gameId}"),
    ("GET", "/api/game/{gameId}/state"),
    ("GET", "/ws/voice/{channelId}"),
    ("GET", "/api/voice/{channelId}"),
    ("GET", "/api/admin/stats/{class}/{name}"),
    ("POST", "/api/ratelimit/check"),
    ("POST", "/api/ratelimit/check/sliding-window"),
    ("POST", "/api/ratelimit/check/token-bucket"),
    ("POST", "/api/ratelimit/check/leaky-bucket"),
    ("POST", "/api/ratelimit/check/gcra"),
];

/// Resolve a request. `query` looks up a query parameter.
pub fn resolve<'q>(method: &str, path: &str, query: impl Fn(&str) -> Option<&'q str>) -> Result<Endpoint, ApiError> {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    // (allowed method, endpoint builder) — path matching first, so a wrong method is a 405 not a 404.
    let (allowed, build): (&str, Build<'_>) = match segments.as_slice() {
        ["health"] => ("GET", Box::new(|| Ok(Endpoint::Health))),
        ["openapi.json"] => ("GET", Box::new(|| Ok(Endpoint::OpenApi))),
        ["__user-session"] => ("GET", Box::new(|| {
            let user = name(query("userId").unwrap_or_default(), "userId")?;
            name(query("deviceId").unwrap_or_default(), "deviceId")?;
            Ok(endpoint(DoClass::UserSession, user, SessionOp::Socket, Access::OwnUser))
        })),
        ["__user-session", op @ ("state" | "clear" | "notify")] => {
            let (method, op, access): (&str, SessionOp, Access) = match *op {
                "state" => ("GET", SessionOp::State, Access::OwnUserOrAdmin),
                "clear" => ("POST", SessionOp::Clear, Access::Admin),
                _ => ("POST", SessionOp::Notify, Access::Admin),
            };
            (method, Box::new(move || {
                let user = name(query("userId").unwrap_or_default(), "userId")?;
                Ok(endpoint(DoClass::UserSession, user, op, access))
            }))
        }
        ["ws", "counter", n] => ("GET", Box::new(|| Ok(endpoint(DoClass::Counter, name(n, "counter name")?, CounterApi::Socket, Access::User)))),
        ["api", "counter", n] => ("GET", Box::new(|| Ok(endpoint(DoClass::Counter, name(n, "counter name")?, CounterApi::Get, Access::User)))),
        ["api", "counter", n, "history"] => ("GET", Box::new(|| Ok(endpoint(DoClass::Counter, name(n, "counter name")?, CounterApi::History, Access::User)))),
        ["api", "counter", n, op @ ("increment" | "decrement" | "set" | "reset")] => {
            let op = match *op {
                "increment" => CounterApi::Increment,
                "decrement" => CounterApi::Decrement,
                "set" => CounterApi::Set,
                _ => CounterApi::Reset,
            };
            ("POST", Box::new(move || Ok(endpoint(DoClass::Counter, name(n, "counter name")?, op, Access::User))))
        }
        ["api", "chat"] => ("GET", Box::new(|| Ok(endpoint(DoClass::ChatRoom, "global".into(), ChatOp::Socket, Access::User)))),
        ["api", "chat", "messages"] => ("GET", Box::new(|| Ok(endpoint(DoClass::ChatRoom, "global".into(), ChatOp::Messages, Access::User)))),
        ["api", "chat", r] => ("GET", Box::new(|| Ok(endpoint(DoClass::ChatRoom, room(r)?, ChatOp::Socket, Access::User)))),
        ["api", "chat", r, "messages"] => ("GET", Box::new(|| Ok(endpoint(DoClass::ChatRoom, room(r)?, ChatOp::Messages, Access::User)))),
        ["ws", "waddle", id] => ("GET", Box::new(|| Ok(endpoint(DoClass::Waddle, name(id, "waddle id")?, WaddleOp::Socket, Access::User)))),
        ["api", "waddle", id, "presence"] => ("GET", Box::new(|| Ok(endpoint(DoClass::Waddle, name(id, "waddle id")?, WaddleOp::Presence, Access::User)))),
        ["api", "waddle", id, "broadcast"] => ("POST", Box::new(|| Ok(endpoint(DoClass::Waddle, name(id, "waddle id")?, WaddleOp::Broadcast, Access::Admin)))),
        ["ws", "channel", id] => ("GET", Box::new(|| Ok(endpoint(DoClass::Channel, name(id, "channel id")?, ChannelOp::Socket, Access::User)))),
        ["api", "channel", id, "message"] => ("POST", Box::new(|| Ok(endpoint(DoClass::Channel, name(id, "channel id")?, ChannelOp::Message, Access::User)))),
        ["api", "channel", id, "messages"] => ("GET", Box::new(|| Ok(endpoint(DoClass::Channel, name(id, "channel id")?, ChannelOp::Messages, Access::User)))),
        ["api", "game", id] => ("GET", Box::new(|| Ok(endpoint(DoClass::Game, name(id, "game id")?, GameOp::Socket, Access::User)))),
        ["api", "game", id, "state"] => ("GET", Box::new(|| Ok(endpoint(DoClass::Game, name(id, "game id")?, GameOp::State, Access::User)))),
        ["ws", "voice", id] => ("GET", Box::new(|| Ok(endpoint(DoClass::Voice, name(id, "channel id")?, VoiceOp::Socket, Access::User)))),
        ["api", "voice", id] => ("GET", Box::new(|| Ok(endpoint(DoClass::Voice, name(id, "channel id")?, VoiceOp::State, Access::User)))),
        ["api", "ratelimit", "check"] => ("POST", Box::new(|| Ok(Endpoint::RateLimit { op: RateLimitOp::FixedWindow }))),
        ["api", "ratelimit", "check", algo @ ("sliding-window" | "token-bucket" | "leaky-bucket" | "gcra")] => {
            let op = match *algo {
                "sliding-window" => RateLimitOp::SlidingWindow,
                "token-bucket" => RateLimitOp::TokenBucket,
                "leaky-bucket" => RateLimitOp::LeakyBucket,
                _ => RateLimitOp::Gcra,
            };
            ("POST", Box::new(move || Ok(Endpoint::RateLimit { op })))
        }
        // The kit's per-object counters (docs/operations.md), for every class of `do_classes!`.
        ["api", "admin", "stats", short, n] => {
            let (short, n): (&str, &str) = (short, n);
            ("GET", Box::new(move || {
                let class = DoClass::parse_loose(short).ok_or_else(|| ApiError::not_found(format!("unknown class {short}")))?;
                Ok(object(class, name(n, "object name")?, STATS_OP, false, Access::Admin))
            }))
        }
        _ => return Err(ApiError::not_found(format!("no route for {path}"))),
    };
    if method != allowed {
        return Err(ApiError::method_not_allowed(format!("{path} accepts {allowed} only")));
    }
    build()
}

/// The route template of a path, for logs (`/api/chat/{room}`): never the raw path, whose
/// names a log line must not echo. Matched against [`ROUTES`] (a `{param}` segment matches any
/// one segment; the template with the most literal segments wins, so `/api/chat/messages` is
/// not `/api/chat/{room}`), plus the dev sign-in path. `None`: no route.
pub fn template(path: &str) -> Option<&'static str> {
    if path == crate::devtoken::PATH {
        return Some(crate::devtoken::PATH);
    }
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    ROUTES
        .iter()
        .map(|(_, t)| *t)
        .filter_map(|t| {
            let parts: Vec<&str> = t.trim_start_matches('/').split('/').collect();
            let fits = parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(p, s)| p.starts_with('{') || p == s);
            fits.then(|| (parts.iter().filter(|p| !p.starts_with('{')).count(), t))
        })
        .max_by_key(|(literal, _)| *literal)
        .map(|(_, t)| t)
}

/// The method a 405 should advertise in `Allow`, parsed back from [`resolve`]'s message.
pub fn allowed_method(err: &ApiError) -> Option<&str> {
    (err.status == 405).then(|| err.message.rsplit(" accepts ").next().and_then(|m| m.split(' ').next())).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(method: &str, path: &str) -> Result<Endpoint, ApiError> {
        resolve(method, path, |_| None)
    }
    fn status(res: Result<Endpoint, ApiError>) -> u16 {
        res.map(|_| 200).unwrap_or_else(|e| e.status)
    }

    #[test]
    fn health_and_unknown() {
        assert_eq!(r("GET", "/health"), Ok(Endpoint::Health));
        assert_eq!(status(r("GET", "/nope")), 404);
        assert_eq!(status(r("GET", "/")), 404);
        assert_eq!(status(r("GET", "/ws/counter/a/b")), 404);
    }

    #[test]
    fn counter_routes() {
        assert_eq!(
            r("GET", "/ws/counter/c1"),
            Ok(object(DoClass::Counter, "c1".into(), "ws", true, Access::User))
        );
        assert_eq!(
            r("POST", "/api/counter/c1/increment"),
            Ok(object(DoClass::Counter, "c1".into(), "increment", false, Access::User))
        );
        assert_eq!(status(r("GET", "/api/counter/c1/increment")), 405);
        assert_eq!(status(r("POST", "/api/counter/c1")), 405);
        assert_eq!(status(r("GET", "/api/counter/bad%20name")), 400);
        assert_eq!(status(r("GET", &format!("/ws/counter/{}", "x".repeat(65)))), 400);
        assert_eq!(status(r("GET", "/ws/counter/")), 400);
    }

    #[test]
    fn chat_routes_reserve_messages() {
        assert_eq!(r("GET", "/api/chat"), Ok(object(DoClass::ChatRoom, "global".into(), "ws", true, Access::User)));
        assert_eq!(
            r("GET", "/api/chat/messages"),
            Ok(object(DoClass::ChatRoom, "global".into(), "messages", false, Access::User))
        );
        assert_eq!(r("GET", "/api/chat/lobby"), Ok(object(DoClass::ChatRoom, "lobby".into(), "ws", true, Access::User)));
        assert_eq!(
            r("GET", "/api/chat/lobby/messages"),
            Ok(object(DoClass::ChatRoom, "lobby".into(), "messages", false, Access::User))
        );
        // No room is named `messages`: its history path would be the global room's + /messages.
        let refused = r("GET", "/api/chat/messages/messages").map_err(|e| (e.status, e.code));
        assert_eq!(refused, Err((400, "invalid_name")));
    }

    #[test]
    fn user_session_names_come_from_the_query() {
        let q = |k: &str| match k {
            "userId" => Some("alice"),
            "deviceId" => Some("phone"),
            _ => None,
        };
        assert_eq!(
            resolve("GET", "/__user-session", q),
            Ok(object(DoClass::UserSession, "alice".into(), "ws", true, Access::OwnUser))
        );
        let no_device = |k: &str| if k == "userId" { Some("alice") } else { None };
        assert_eq!(status(resolve("GET", "/__user-session", no_device)), 400);
        assert_eq!(status(resolve("GET", "/__user-session", |_| None)), 400);
        let bad_device = |k: &str| if k == "userId" { Some("alice") } else { Some("a b") };
        assert_eq!(status(resolve("GET", "/__user-session", bad_device)), 400);
        assert_eq!(status(resolve("GET", "/__user-session/clear", q)), 405);
        assert!(matches!(resolve("POST", "/__user-session/clear", q), Ok(Endpoint::Object { access: Access::Admin, .. })));
    }

    #[test]
    fn ratelimit_routes_are_admin() {
        let e = r("POST", "/api/ratelimit/check/gcra").unwrap();
        assert_eq!(e, Endpoint::RateLimit { op: RateLimitOp::Gcra });
        assert_eq!(r("POST", "/api/ratelimit/check"), Ok(Endpoint::RateLimit { op: RateLimitOp::FixedWindow }));
        assert_eq!(e.access(), Access::Admin);
        assert_eq!(status(r("POST", "/api/ratelimit/check/other")), 404);
    }

    #[test]
    fn voice_routes_name_the_typed_ops() {
        assert_eq!(r("GET", "/ws/voice/v1"), Ok(object(DoClass::Voice, "v1".into(), "ws", true, Access::User)));
        assert_eq!(r("GET", "/api/voice/v1"), Ok(object(DoClass::Voice, "v1".into(), "state", false, Access::User)));
        assert_eq!(status(r("GET", "/ws/voice/bad%20id")), 400);
        assert_eq!(status(r("POST", "/api/voice/v1")), 405);
        assert_eq!(status(r("GET", "/api/voice/v1/extra")), 404);
    }

    #[test]
    fn game_routes_name_the_typed_ops() {
        assert_eq!(r("GET", "/api/game/g1"), Ok(object(DoClass::Game, "g1".into(), "ws", true, Access::User)));
        assert_eq!(r("GET", "/api/game/g1/state"), Ok(object(DoClass::Game, "g1".into(), "state", false, Access::User)));
        assert_eq!(status(r("GET", "/api/game/bad%20id")), 400);
        assert_eq!(status(r("POST", "/api/game/g1/state")), 405);
    }

    #[test]
    fn admin_stats_route() {
        for c in DoClass::ALL {
            let path = format!("/api/admin/stats/{}/n1", c.as_str());
            assert_eq!(r("GET", &path), Ok(object(*c, "n1".into(), STATS_OP, false, Access::Admin)));
            assert_eq!(template(&path), Some("/api/admin/stats/{class}/{name}"));
        }
        assert_eq!(status(r("GET", "/api/admin/stats/nope/n1")), 404);
        for spelling in ["ChatRoom", "chatroom", "CHAT_ROOM", "chat_room"] {
            let path = format!("/api/admin/stats/{spelling}/n1");
            assert_eq!(r("GET", &path), Ok(object(DoClass::ChatRoom, "n1".into(), STATS_OP, false, Access::Admin)), "{spelling}");
        }
        assert_eq!(DoClass::parse_loose("GameServer"), Some(DoClass::Game));
        assert_eq!(DoClass::parse_loose("VoiceChannel"), Some(DoClass::Voice));
        assert_eq!(DoClass::parse_loose("UserSession"), Some(DoClass::UserSession));
        assert_eq!(status(r("GET", "/api/admin/stats/chat-room/n1")), 404);
        assert_eq!(status(r("GET", "/api/admin/stats/chat_room/bad%20name")), 400);
        assert_eq!(status(r("POST", "/api/admin/stats/chat_room/n1")), 405);
        assert_eq!(status(r("GET", "/api/admin/stats/chat_room")), 404);
    }

    /// Every path the table routes has a template, and no template echoes a name.
    #[test]
    fn every_route_has_a_template() {
        let paths = [
            "/health", "/__user-session", "/__user-session/state", "/__user-session/clear", "/__user-session/notify",
            "/ws/counter/c", "/api/counter/c", "/api/counter/c/history", "/api/counter/c/increment",
            "/api/counter/c/decrement", "/api/counter/c/set", "/api/counter/c/reset", "/api/chat", "/api/chat/messages",
            "/api/chat/c", "/api/chat/c/messages", "/ws/waddle/c", "/api/waddle/c/presence", "/api/waddle/c/broadcast",
            "/ws/channel/c", "/api/channel/c/message", "/api/channel/c/messages", "/api/game/c", "/api/game/c/state",
            "/api/ratelimit/check", "/api/ratelimit/check/gcra", "/api/ratelimit/check/sliding-window",
            "/api/ratelimit/check/token-bucket", "/api/ratelimit/check/leaky-bucket", "/api/admin/stats/counter/c",
        ];
        let query = |k: &str| match k {
            "userId" => Some("u"),
            "deviceId" => Some("d"),
            _ => None,
        };
        for path in paths {
            let resolved = ["GET", "POST"].iter().any(|m| resolve(m, path, query).is_ok());
            assert!(resolved, "{path} is not a route");
            let t = template(path).unwrap_or_else(|| panic!("{path} has no template"));
            assert!(!t.split('/').any(|s| s == "c" || s == "u"), "{t} echoes a name");
        }
        assert_eq!(template("/api/chat/c"), Some("/api/chat/{room}"));
        assert_eq!(template("/api/chat/messages"), Some("/api/chat/messages"));
        assert_eq!(template("/__dev/token"), Some("/__dev/token"));
        assert_eq!(template("/nope"), None);
        assert_eq!(template("/ws/counter/a/b"), None);
    }

    #[test]
    fn allow_header_value() {
        let e = r("GET", "/api/counter/a/reset").unwrap_err();
        assert_eq!(allowed_method(&e), Some("POST"));
    }

    #[test]
    fn do_class_names_round_trip() {
        assert_eq!(DoClass::ALL.len(), 8);
        for c in DoClass::ALL {
            assert_eq!(DoClass::parse(c.as_str()), Some(*c));
        }
        let names: std::collections::HashSet<_> = DoClass::ALL.iter().map(|c| c.as_str()).collect();
        let bindings: std::collections::HashSet<_> = DoClass::ALL.iter().map(|c| c.binding()).collect();
        assert_eq!((names.len(), bindings.len()), (DoClass::ALL.len(), DoClass::ALL.len()));
    }

    /// A template with every `{param}` filled with a valid name.
    fn concrete(template: &str) -> String {
        template
            .split('/')
            .map(|s| match s {
                "{class}" => "counter",
                s if s.starts_with('{') => "n1",
                s => s,
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    fn shape(template: &str) -> String {
        template.split('/').map(|s| if s.starts_with('{') { "{}" } else { s }).collect::<Vec<_>>().join("/")
    }

    #[test]
    fn every_listed_route_resolves_with_its_method_only() {
        let names = |k: &str| matches!(k, "userId" | "deviceId").then_some("u1");
        for (method, template) in ROUTES {
            let path = concrete(template);
            assert!(resolve(method, &path, names).is_ok(), "{method} {path}");
            let other = if *method == "GET" { "POST" } else { "GET" };
            assert_eq!(status(resolve(other, &path, names)), 405, "{other} {path}");
        }
        let unique: std::collections::BTreeSet<_> = ROUTES.iter().map(|(_, t)| *t).collect();
        assert_eq!(unique.len(), ROUTES.len(), "a path is listed twice");
    }

    /// The path shapes of `resolve`'s match arms, read from this file (a literal segment, `{}`
    /// for a bound name, one shape per alternative of `x @ ("a" | "b")`), so a route added to
    /// `resolve` but not to `ROUTES` fails here.
    fn arm_shapes() -> std::collections::BTreeSet<String> {
        let source = include_str!("route.rs");
        let start = source.find("pub fn resolve<").unwrap();
        let end = source[start..].find("\npub fn allowed_method").unwrap() + start;
        let mut shapes = std::collections::BTreeSet::new();
        for line in source[start..end].lines().map(str::trim).filter(|l| l.starts_with("[\"")) {
            let pattern = &line[1..line.find("] =>").unwrap()];
            let mut paths = vec![String::new()];
            for part in pattern.split(',').map(str::trim) {
                let options: Vec<String> = if let Some(alts) = part.split_once("@ (") {
                    alts.1.trim_end_matches(')').split('|').map(|a| a.trim().trim_matches('"').to_owned()).collect()
                } else if part.starts_with('"') {
                    vec![part.trim_matches('"').to_owned()]
                } else {
                    vec!["{}".to_owned()]
                };
                paths = paths.iter().flat_map(|p| options.iter().map(move |o| format!("{p}/{o}"))).collect();
            }
            shapes.extend(paths);
        }
        shapes
    }

    #[test]
    fn routes_are_exactly_the_match_arms() {
        let listed: std::collections::BTreeSet<String> = ROUTES.iter().map(|(_, t)| shape(t)).collect();
        assert_eq!(arm_shapes(), listed);
    }

    /// docs/openapi.json (served at `GET /openapi.json`) documents exactly these routes.
    #[test]
    fn openapi_document_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("../../../docs/openapi.json")).unwrap();
        const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys().filter(|m| METHODS.contains(&m.as_str())) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let routes: std::collections::BTreeSet<(String, String)> =
            ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
        assert_eq!(documented, routes);
    }

    /// Every class's binding is declared in wrangler.toml (a typo would be a runtime 500).
    #[test]
    fn every_binding_is_in_wrangler_toml() {
        let toml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../wrangler.toml")).unwrap();
        for c in DoClass::ALL {
            assert!(toml.contains(&format!("name = \"{}\"", c.binding())), "{} missing from wrangler.toml", c.binding());
        }
    }
}
