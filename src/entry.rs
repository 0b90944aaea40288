//! The entry Worker: route → `Upgrade` check → auth → forward to one Durable Object.
//! Everything here is decided before any DO is touched (docs/protocol.md §3, §4).

use worker::{Env, Headers, Method, Request, Response};

use edge_realtime_core::auth::{self, Claims};
use edge_realtime_core::devtoken;
use edge_realtime_core::error::ApiError;
use edge_realtime_core::effects::Op;
use edge_realtime_core::ops::{self, RequestLine, STATS_OP};
use edge_realtime_core::ratelimit::{self, Decision, GcraDecision, RateLimitOp};
use edge_realtime_core::route::{self as routes, resolve, Access, DoClass, Endpoint};
use edge_realtime_core::session::SessionOp;
use edge_realtime_core::shard;

use crate::kit::http::{self, encode_header_text, error_response, json_response, Identity, RequestUrl, OBJECT_NAME};
use crate::kit::internal;

/// `/health` version: crate version plus the git commit build.rs stamped.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "+", env!("EDGE_REALTIME_GIT_SHA"));

/// What the request's log line names, filled in as the request is resolved.
#[derive(Default)]
struct Seen {
    class: Option<&'static str>,
    object: Option<String>,
    user_id: Option<String>,
}

/// Handle one request from the outside world, and log it: one `{"event":"request",…}` line
/// (docs/operations.md) with the route template — never the raw path, query or token.
pub async fn handle(req: Request, env: Env) -> worker::Result<Response> {
    let started = crate::kit::now();
    let ray = req.headers().get("cf-ray").ok().flatten();
    let request_id = ops::request_id_from(ray.as_deref()).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = method_of(&req);
    let route_template = routes::template(&RequestUrl::of(&req).path);
    let mut seen = Seen::default();
    let result = if req.method() == Method::Options {
        preflight()
    } else {
        match route(req, &env, &mut seen).await {
            Ok(response) => Ok(response),
            Err(e) => error_response(&e),
        }
    };
    crate::kit::log(&RequestLine {
        event: "request",
        request_id: &request_id,
        method: &method,
        route: route_template,
        class: seen.class,
        object: seen.object.as_deref(),
        status: result.as_ref().map_or(500, Response::status_code),
        duration_ms: crate::kit::now().saturating_sub(started),
        user_id: seen.user_id.as_deref(),
    });
    result
}

async fn route(mut req: Request, env: &Env, seen: &mut Seen) -> Result<Response, ApiError> {
    let url = RequestUrl::of(&req);
    let query = url.query_pairs();
    let lookup = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    // Dev sign-in (`DEV_TOKENS=1` only, docs/protocol.md §3): matched before the routing table,
    // so without the var this path falls through to the table's 404 like any unknown path.
    if url.path == devtoken::PATH && dev_tokens_enabled(env) {
        return dev_token(&mut req, env).await;
    }
    let endpoint = resolve(&method_of(&req), &url.path, lookup)?;
    if let Endpoint::Object { class, name, .. } = &endpoint {
        seen.class = Some(class.as_str());
        seen.object = Some(name.clone());
    }

    if endpoint == Endpoint::Health {
        return json_response(200, &serde_json::json!({"status": "ok", "version": VERSION}))
            .map_err(internal("health"));
    }
    if endpoint == Endpoint::OpenApi {
        // A static asset (public/openapi.json, copied from docs/openapi.json by the build),
        // served before the Worker runs: 142 KB the WASM does not carry. Only a build that
        // skipped scripts/build-worker.sh gets here.
        return Err(ApiError::not_found("the OpenAPI document was not built: run scripts/build-worker.sh"));
    }
    if endpoint.is_websocket() && !is_websocket_upgrade(&req) {
        return Err(ApiError::upgrade_required());
    }
    let claims = authenticate(&req, env, lookup("token"))?;
    seen.user_id = Some(claims.sub.clone());
    authorize(&endpoint, &claims)?;
    let identity = Identity { user_id: claims.sub.clone(), user_name: claims.display_name().to_owned(), token_iat: claims.iat };
    match endpoint {
        Endpoint::Object { class, name, op, websocket, .. } => {
            let name = if websocket { shard_for(env, class, &name, &identity.user_id) } else { name };
            if websocket {
                // The upgrade limit and the revocation check ask two different objects: in parallel.
                // UserSession refuses revoked tokens itself (same DO: no second call).
                let revocation = async {
                    if class == DoClass::UserSession {
                        Ok(())
                    } else {
                        check_revocation(env, &identity, class, &name).await
                    }
                };
                let (limited, revoked) = futures::join!(guard_upgrade(env, &claims), revocation);
                if let Some(limited) = limited {
                    return Ok(limited);
                }
                revoked?;
            }
            let body = if websocket { None } else { Some(read_body(&mut req).await?) };
            // The stats op (any class) gets the class's short name for its body, nothing else.
            let stats_query = format!("class={}", class.as_str());
            let query = if op == STATS_OP { Some(stats_query.as_str()) } else { url.query.as_deref() };
            forward(env, &req, class, &name, op, query, &identity, body).await
        }
        Endpoint::RateLimit { op } => {
            let bytes = read_body(&mut req).await?;
            // Validate fully here, so a bad body never reaches (or creates) an object.
            let check = ratelimit::parse_request(op.path(), &http::parse_json_body(&bytes)?)?;
            let name = format!("api:{}", check.key);
            seen.class = Some(DoClass::RateLimiter.as_str());
            seen.object = Some(name.clone());
            forward(env, &req, DoClass::RateLimiter, &name, op.path(), None, &identity, Some(bytes)).await
        }
        Endpoint::Health | Endpoint::OpenApi => Err(ApiError::internal()),
    }
}

/// `CHANNEL_SHARDS` / `WADDLE_SHARDS` = N > 1 (docs/sharding.md): a socket of a channel or
/// waddle goes to shard `core::shard::shard_of(userId, N)` of it (`<id>~shard-<k>`), so all sockets of one
/// user meet in one shard; HTTP always reaches the primary `<id>`. N = 1 (the default): the
/// object itself, as always.
fn shard_for(env: &Env, class: DoClass, name: &str, user_id: &str) -> String {
    let var = match class {
        DoClass::Channel => "CHANNEL_SHARDS",
        DoClass::Waddle => "WADDLE_SHARDS",
        _ => return name.to_owned(),
    };
    let shards = shard::parse_shards(env.var(var).ok().map(|v| v.to_string()).as_deref());
    if shards <= 1 {
        return name.to_owned();
    }
    shard::shard_name(name, shard::shard_of(user_id, shards))
}

// --- dev tokens (DEV_TOKENS=1; never in production: anyone could mint any user's token) ---

fn dev_tokens_enabled(env: &Env) -> bool {
    let var = env.secret("DEV_TOKENS").or_else(|_| env.var("DEV_TOKENS")).map(|v| v.to_string()).ok();
    devtoken::enabled(var.as_deref())
}

/// `POST /__dev/token {"userId","name"?,"admin"?}` → `{"token","userId","exp"}`, signed like
/// `make token` (the same `auth::mint` and `AUTH_SECRET`); `GET` → `{"devTokens":true}` (probe).
async fn dev_token(req: &mut Request, env: &Env) -> Result<Response, ApiError> {
    match method_of(req).as_str() {
        "POST" => {}
        // The demo page's probe: present (a 404 means the route does not exist).
        "GET" => {
            return json_response(200, &serde_json::json!({"devTokens": true, "usage": "POST {\"userId\",\"name\"?,\"admin\"?}"}))
                .map_err(internal("dev token probe"))
        }
        _ => return Err(ApiError::method_not_allowed("use POST /__dev/token")),
    }
    let bytes = read_body(req).await?;
    let claims = devtoken::claims_from_body(&http::parse_json_body(&bytes)?, crate::kit::now() / 1000)?;
    let secret = auth_secret(env)?;
    let token = auth::mint(&claims, secret.as_bytes()).map_err(|_| ApiError::internal())?;
    worker::console_log!("[edge-realtime] DEV_TOKENS: minted a dev token for {}", claims.sub);
    json_response(200, &serde_json::json!({"token": token, "userId": claims.sub, "exp": claims.exp}))
        .map_err(internal("dev token"))
}

/// The request's method exactly as sent. (`Request::method()` of workers-rs maps every method it
/// has no variant for — `QUERY`, `PROPFIND`, … — to `GET`, which would answer them as a `GET`.)
fn method_of(req: &Request) -> String {
    req.inner().method()
}

fn is_websocket_upgrade(req: &Request) -> bool {
    req.headers().get("Upgrade").ok().flatten().is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Verify the request's token (header, subprotocol or `?token=`).
fn authenticate(req: &Request, env: &Env, query_token: Option<&str>) -> Result<Claims, ApiError> {
    let headers = req.headers();
    let authorization = headers.get("Authorization").ok().flatten();
    let protocol = headers.get("Sec-WebSocket-Protocol").ok().flatten();
    let (token, _) = auth::extract_token(authorization.as_deref(), protocol.as_deref(), query_token)
        .ok_or_else(|| ApiError::unauthorized(auth::AuthError::Missing.code(), auth::AuthError::Missing.to_string()))?;
    let secret = auth_secret(env)?;
    let now_secs = crate::kit::now() / 1000;
    auth::verify(token, secret.as_bytes(), now_secs).map_err(|e| ApiError::unauthorized(e.code(), e.to_string()))
}

fn auth_secret(env: &Env) -> Result<String, ApiError> {
    env.secret("AUTH_SECRET")
        .or_else(|_| env.var("AUTH_SECRET"))
        .map(|s| s.to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            worker::console_error!("AUTH_SECRET is not configured (wrangler secret put AUTH_SECRET, or .dev.vars locally)");
            ApiError::internal()
        })
}

/// Roles and "names a user" rules (docs/protocol.md §3).
fn authorize(endpoint: &Endpoint, claims: &Claims) -> Result<(), ApiError> {
    let named_user = match endpoint {
        Endpoint::Object { class: DoClass::UserSession, name, .. } => Some(name.as_str()),
        _ => None,
    };
    let own = named_user == Some(claims.sub.as_str());
    match endpoint.access() {
        Access::Public | Access::User => Ok(()),
        Access::Admin if claims.is_admin() => Ok(()),
        Access::Admin => Err(ApiError::forbidden("this route needs the admin role")),
        Access::OwnUserOrAdmin if own || claims.is_admin() => Ok(()),
        Access::OwnUser if own => Ok(()),
        Access::OwnUserOrAdmin | Access::OwnUser => {
            Err(ApiError::unauthorized("wrong_user", "userId must be the token's own user"))
        }
    }
}

async fn read_body(req: &mut Request) -> Result<Vec<u8>, ApiError> {
    let bytes = req.bytes().await.map_err(|_| ApiError::bad_request("invalid_body", "could not read the body"))?;
    if bytes.len() > http::MAX_BODY_BYTES {
        return Err(ApiError::payload_too_large("body is larger than 64 KiB"));
    }
    Ok(bytes)
}

/// The per-user WebSocket-upgrade limit (docs/protocol.md §6.6), checked after auth and before the target
/// object is touched: `Some(429)` (with `Retry-After` and `RateLimit-*`) once the user's
/// allowance of `WS_UPGRADES_PER_MINUTE` is spent. The user's RateLimiter object
/// (`ws-upgrade:<sub>`) decides. If it cannot answer, the upgrade goes through and the failure
/// is logged: a limiter outage must not take every socket down with it.
async fn guard_upgrade(env: &Env, claims: &Claims) -> Option<Response> {
    let per_minute = env
        .var("WS_UPGRADES_PER_MINUTE")
        .ok()
        .and_then(|v| v.to_string().trim().parse::<u32>().ok())
        .unwrap_or(ratelimit::DEFAULT_WS_UPGRADES_PER_MINUTE);
    let decision = match ask_upgrade_limiter(env, &claims.sub, per_minute).await {
        Ok(d) => d,
        Err(e) => {
            worker::console_error!("upgrade limiter unavailable, letting the upgrade through: {e}");
            return None;
        }
    };
    let refusal = Decision::Gcra(decision).rejection("WebSocket upgrades")?;
    let mut response = error_response(&refusal).ok()?;
    for (name, value) in ratelimit::upgrade_limit_headers(per_minute, &decision) {
        let _ = response.headers_mut().set(name, &value);
    }
    Some(response)
}

async fn ask_upgrade_limiter(env: &Env, user_id: &str, per_minute: u32) -> worker::Result<GcraDecision> {
    let name = ratelimit::upgrade_limit_key(user_id);
    let headers = Headers::new();
    headers.set(OBJECT_NAME, &encode_header_text(&name))?;
    let url = format!("https://do.internal/{}?perMinute={per_minute}", RateLimitOp::Upgrade.path());
    let request = http::internal_request(&url, &Method::Post, &headers, None)?;
    let stub = env.durable_object(DoClass::RateLimiter.binding())?.get_by_name(&name)?;
    let mut response = stub.fetch_with_request(request).await?;
    if response.status_code() != 200 {
        return Err(worker::Error::RustError(format!("rate limiter answered {}", response.status_code())));
    }
    response.json::<GcraDecision>().await
}

/// docs/protocol.md §3 revocation, before any WebSocket is forwarded: ask the user's UserSession whether
/// this token predates their last `logout_all` (→ 401 `token_revoked`). The same call records
/// `(class, name)` in the user's registry, so a later `logout_all` reaches that object's
/// sockets. Costs one extra DO round trip per WebSocket connect; fails closed.
async fn check_revocation(env: &Env, identity: &Identity, class: DoClass, name: &str) -> Result<(), ApiError> {
    let headers = Headers::new();
    identity.write(&headers).map_err(internal("identity headers"))?;
    headers.set(OBJECT_NAME, &encode_header_text(&identity.user_id)).map_err(internal("object header"))?;
    let url = format!(
        "https://do.internal/{}?class={}&name={}",
        SessionOp::Check.path(),
        class.as_str(),
        encode_header_text(name)
    );
    let request = http::internal_request(&url, &Method::Get, &headers, None).map_err(internal("check request"))?;
    let stub = env
        .durable_object(DoClass::UserSession.binding())
        .and_then(|ns| ns.get_by_name(&identity.user_id))
        .map_err(internal("user session stub"))?;
    let response = stub.fetch_with_request(request).await.map_err(internal("revocation check"))?;
    match response.status_code() {
        200 => Ok(()),
        401 => Err(ApiError::unauthorized("token_revoked", "this token was revoked by logout_all; sign in again")),
        status => {
            worker::console_error!("revocation check answered {status}");
            Err(ApiError::internal())
        }
    }
}

/// Forward to object `name` of `class` as internal operation `op`, with identity headers
/// the Worker set itself (every client `X-User-*` header is dropped).
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    env: &Env,
    original: &Request,
    class: DoClass,
    name: &str,
    op: &str,
    query: Option<&str>,
    identity: &Identity,
    body: Option<Vec<u8>>,
) -> Result<Response, ApiError> {
    let headers = Headers::new();
    for (key, value) in original.headers().entries() {
        let lower = key.to_ascii_lowercase();
        if lower.starts_with("x-user-") || lower == "authorization" || lower == "x-object-name" {
            continue;
        }
        let _ = headers.set(&key, &value);
    }
    identity.write(&headers).map_err(internal("identity headers"))?;
    headers.set(OBJECT_NAME, &encode_header_text(name)).map_err(internal("object header"))?;

    let url = match query {
        Some(q) if !q.is_empty() => format!("https://do.internal/{op}?{q}"),
        _ => format!("https://do.internal/{op}"),
    };
    let method = original.method();
    // GET/HEAD requests may not carry a body, even an empty one.
    let body = body.filter(|b| !b.is_empty() && !matches!(method, Method::Get | Method::Head));
    let request = http::internal_request(&url, &method, &headers, body.as_deref()).map_err(internal("internal request"))?;
    let stub = env
        .durable_object(class.binding())
        .and_then(|ns| ns.get_by_name(name))
        .map_err(internal("durable object stub"))?;
    stub.fetch_with_request(request).await.map_err(internal("durable object fetch"))
}

fn preflight() -> worker::Result<Response> {
    let mut response = Response::empty()?.with_status(204);
    let headers = response.headers_mut();
    headers.set("Access-Control-Allow-Origin", "*")?;
    headers.set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")?;
    headers.set("Access-Control-Allow-Headers", "Authorization, Content-Type")?;
    headers.set("Access-Control-Max-Age", "86400")?;
    Ok(response)
}
