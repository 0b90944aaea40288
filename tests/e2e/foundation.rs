//! Entry Worker: health, routing errors, `Upgrade` check, auth (docs/protocol.md §3–5).

use libtest_mimic::Trial;
use serde_json::json;

use crate::support::{http, now_secs, server, unique, ws, ws_refusal, ws_with, TestResult};
use crate::{ensure, ensure_eq, trial};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("foundation::health_reports_version", health),
        trial("foundation::unknown_path_404_wrong_method_405", not_found_and_method),
        trial("foundation::unlisted_methods_405_not_get", unlisted_methods),
        trial("foundation::openapi_json_is_the_repo_document", openapi_json),
        trial("foundation::websocket_route_without_upgrade_426", upgrade_required),
        trial("foundation::bad_names_400", bad_names),
        trial("foundation::missing_bad_expired_token_401", unauthorized),
        trial("foundation::websocket_refused_without_valid_token", websocket_unauthorized),
        trial("foundation::token_via_subprotocol_and_query", token_sources),
        trial("foundation::admin_routes_403_for_users", forbidden),
        trial("foundation::body_over_64k_413", too_large),
        trial("foundation::client_identity_headers_are_ignored", spoofed_identity),
        trial("foundation::lone_jwt_subprotocol_accepted_and_selected", lone_jwt_subprotocol),
        trial("foundation::dev_tokens_only_with_the_var", dev_tokens),
    ]
}

async fn health() -> TestResult {
    let r = http().request("GET", "/health", None, None, &[]).await?;
    ensure_eq!(r.status, 200);
    ensure_eq!(r.body["status"], json!("ok"));
    ensure!(r.body["version"].as_str().is_some_and(|v| v.starts_with("0.1.0+")), "version {}", r.body);
    Ok(())
}

async fn not_found_and_method() -> TestResult {
    let t = server().token(&unique("alice"));
    let r = http().get("/nope", &t).await?;
    ensure_eq!((r.status, r.error_code()), (404, Some("not_found")));
    let r = http().request("DELETE", "/api/counter/x", Some(&t), None, &[]).await?;
    ensure_eq!((r.status, r.error_code()), (405, Some("method_not_allowed")));
    ensure_eq!(r.header("allow").as_deref(), Some("GET"));
    let r = http().get("/api/counter/x/increment", &t).await?;
    ensure_eq!(r.status, 405);
    Ok(())
}

/// Methods workers-rs has no `Method` variant for (`QUERY`, `PROPFIND`) are 405 with `Allow`, never
/// answered as a `GET` (workers-rs maps them to `Get`; found by schemathesis, scripts/fuzz-http.sh).
async fn unlisted_methods() -> TestResult {
    let name = unique("c");
    let t = server().token(&unique("alice"));
    for method in ["QUERY", "PROPFIND"] {
        for path in ["/health".to_owned(), format!("/api/counter/{name}"), "/__dev/token".to_owned()] {
            let r = http().request(method, &path, Some(&t), None, &[]).await?;
            ensure_eq!((method, &path, r.status, r.error_code()), (method, &path, 405, Some("method_not_allowed")));
        }
        let r = http().request(method, "/health", None, None, &[]).await?;
        ensure_eq!((method, r.header("allow").as_deref()), (method, Some("GET")));
    }
    // The real GET still answers, and the counter was never created by the refused requests.
    let r = http().get(&format!("/api/counter/{name}"), &t).await?;
    ensure_eq!((r.status, r.body["metadata"]["operationCount"].clone()), (200, json!(0)));
    Ok(())
}

/// `GET /openapi.json` (public) serves docs/openapi.json byte for byte, as JSON.
async fn openapi_json() -> TestResult {
    let r = http().request("GET", "/openapi.json", None, None, &[]).await?;
    ensure_eq!(r.status, 200);
    ensure!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")), "content-type {:?}", r.header("content-type"));
    ensure_eq!(r.header("access-control-allow-origin").as_deref(), Some("*"));
    ensure_eq!(r.text.as_str(), include_str!("../../docs/openapi.json"));
    ensure_eq!(r.body["openapi"], json!("3.1.0"));
    // A static asset (public/openapi.json, copied by the build: not in the WASM); other
    // methods are the asset layer's 405 (its `Allow` set by public/_headers).
    let r = http().request("POST", "/openapi.json", None, None, &[]).await?;
    ensure_eq!((r.status, r.header("allow").as_deref()), (405, Some("GET, HEAD")));
    Ok(())
}

async fn upgrade_required() -> TestResult {
    let alice = unique("alice");
    let t = server().token(&alice);
    let session = format!("/__user-session?userId={alice}&deviceId=d");
    for path in ["/ws/counter/c", "/api/chat", "/api/chat/room1", "/ws/waddle/w", "/ws/channel/c", session.as_str()] {
        let r = http().get(path, &t).await?;
        ensure_eq!((path, r.status, r.error_code()), (path, 426, Some("upgrade_required")));
        // The Worker sets `Upgrade: websocket`, but workerd drops that hop-by-hop header from
        // non-101 responses, so it is not asserted here (see README, "Known runtime behaviour").
    }
    Ok(())
}

async fn bad_names() -> TestResult {
    let alice = unique("alice");
    let t = server().token(&alice);
    let long = "x".repeat(65);
    for path in ["/api/counter/a%20b", &format!("/api/counter/{long}"), "/api/counter/a$b/history", "/api/chat/a!b/messages"] {
        let r = http().get(path, &t).await?;
        ensure_eq!((path, r.status, r.error_code()), (path, 400, Some("invalid_name")));
    }
    let status = ws_refusal("/ws/counter/bad*name", &[("Authorization", &format!("Bearer {t}"))]).await?;
    ensure_eq!(status, 400);
    let status = ws_refusal(&format!("/__user-session?userId={alice}"), &[("Authorization", &format!("Bearer {t}"))]).await?;
    ensure_eq!(status, 400);
    Ok(())
}

async fn unauthorized() -> TestResult {
    let s = server();
    let path = format!("/api/counter/{}", unique("auth"));
    let r = http().request("GET", &path, None, None, &[]).await?;
    ensure_eq!((r.status, r.error_code()), (401, Some("missing_token")));
    let r = http().get(&path, "not.a.token").await?;
    ensure_eq!((r.status, r.error_code()), (401, Some("invalid_token")));
    let expired = s.token_with("alice", None, &[], now_secs() - 7200, now_secs() - 3600);
    let r = http().get(&path, &expired).await?;
    ensure_eq!((r.status, r.error_code()), (401, Some("token_expired")));
    let mut forged = s.token(&unique("alice"));
    forged.push('x');
    let r = http().get(&path, &forged).await?;
    ensure_eq!(r.status, 401);
    Ok(())
}

async fn websocket_unauthorized() -> TestResult {
    let name = unique("wsauth");
    ensure_eq!(ws_refusal(&format!("/ws/counter/{name}"), &[]).await?, 401);
    ensure_eq!(ws_refusal(&format!("/ws/counter/{name}?token=garbage"), &[]).await?, 401);
    let expired = server().token_with("alice", None, &[], now_secs() - 7200, now_secs() - 1);
    ensure_eq!(ws_refusal(&format!("/ws/counter/{name}"), &[("Authorization", &format!("Bearer {expired}"))]).await?, 401);
    Ok(())
}

async fn token_sources() -> TestResult {
    let t = server().token(&unique("alice"));
    let name = unique("src");
    let mut a = ws_with(&format!("/ws/counter/{name}"), &[("Sec-WebSocket-Protocol", &format!("bearer, {t}"))]).await?;
    ensure_eq!(a.recv().await?["type"], json!("snapshot"));
    let mut b = ws_with(&format!("/ws/counter/{name}?token={t}"), &[]).await?;
    ensure_eq!(b.recv().await?["type"], json!("snapshot"));
    let r = http().request("GET", &format!("/api/counter/{name}?token={t}"), None, None, &[]).await?;
    ensure_eq!(r.status, 200);
    a.close().await?;
    b.close().await
}

async fn forbidden() -> TestResult {
    let t = server().token(&unique("alice"));
    let r = http().post("/api/ratelimit/check", &t, r#"{"key":"k","limit":1,"window":1000}"#).await?;
    ensure_eq!((r.status, r.error_code()), (403, Some("forbidden")));
    let r = http().post(&format!("/__user-session/notify?userId={}", unique("bob")), &t, "{}").await?;
    ensure_eq!(r.status, 403);
    Ok(())
}

async fn too_large() -> TestResult {
    let t = server().token(&unique("alice"));
    let body = format!(r#"{{"amount":1,"pad":"{}"}}"#, "x".repeat(70 * 1024));
    let name = unique("big");
    let r = http().post(&format!("/api/counter/{name}/increment"), &t, &body).await?;
    ensure_eq!((r.status, r.error_code()), (413, Some("payload_too_large")));
    let r = http().get(&format!("/api/counter/{name}"), &t).await?.ok()?;
    ensure_eq!(r.body["value"], json!(0));
    Ok(())
}

async fn spoofed_identity() -> TestResult {
    // A client-sent X-User-Id must not change who the op is recorded for: the duplicate-id
    // check is per user, so a spoofed header would show up as a separate user.
    let t = server().token(&unique("alice"));
    let name = unique("spoof");
    let path = format!("/api/counter/{name}/increment");
    let r1 = http().request("POST", &path, Some(&t), Some(r#"{"id":"once"}"#), &[("X-User-Id", "mallory")]).await?;
    let r2 = http().request("POST", &path, Some(&t), Some(r#"{"id":"once"}"#), &[]).await?;
    ensure_eq!((r1.status, r2.status), (200, 200));
    ensure_eq!(r1.body["seq"], r2.body["seq"]);
    let r = http().get(&format!("/api/counter/{name}"), &t).await?.ok()?;
    ensure_eq!(r.body["value"], json!(1));
    let mut s = ws(&format!("/ws/counter/{name}"), &t).await?;
    ensure_eq!(s.recv().await?["value"], json!(1));
    s.close().await
}

/// Design note 004's `new WebSocket(url, [token])`: the JWT as the only subprotocol is the
/// token, and the 101 selects it (a browser drops a connection whose selected protocol it did
/// not offer). `bearer, <jwt>` still selects `bearer`; a lone non-JWT protocol is still 401.
async fn lone_jwt_subprotocol() -> TestResult {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let t = server().token("alice");
    let name = unique("lone");
    let path = format!("/ws/counter/{name}");
    for (offered, selected) in [(t.clone(), t.clone()), (format!("bearer, {t}"), "bearer".to_owned())] {
        let mut request = format!("{}{path}", server().ws_base()).into_client_request()?;
        request.headers_mut().insert("Sec-WebSocket-Protocol", offered.parse()?);
        let (mut sock, response) =
            tokio::time::timeout(std::time::Duration::from_secs(10), tokio_tungstenite::connect_async(request)).await??;
        let got = response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).map(str::to_owned);
        ensure_eq!(got, Some(selected));
        use futures_util::StreamExt;
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), sock.next()).await?.ok_or("socket ended")??;
        let first: serde_json::Value = serde_json::from_str(first.to_text()?)?;
        ensure_eq!(first["type"], json!("snapshot"));
        sock.close(None).await?;
    }
    let other = server().token_with("alice", None, &[], now_secs(), now_secs() + 3600);
    let forged = format!("{}.{}", other.rsplit_once('.').map(|(h, _)| h).unwrap_or_default(), "AAAA");
    for lone in ["chat", "not-a-jwt", "a.b", forged.as_str()] {
        ensure_eq!((lone, ws_refusal(&path, &[("Sec-WebSocket-Protocol", lone)]).await?), (lone, 401));
    }
    // A JWT next to another protocol is not "the only subprotocol": refused.
    ensure_eq!(ws_refusal(&path, &[("Sec-WebSocket-Protocol", &format!("chat, {t}"))]).await?, 401);
    Ok(())
}

/// One-click dev sign-in (docs/protocol.md §3 "dev tokens"). The e2e server runs with
/// `DEV_TOKENS=1` (support.rs): `POST /__dev/token` mints a token (signed like `make token`)
/// that works on a WebSocket as the named user, admin only when asked; bad bodies are clear
/// 400s. A second server with `DEV_TOKENS=0` has no such route: the same 404 as an unknown path.
async fn dev_tokens() -> TestResult {
    if !server().is_local() {
        // A deployment (E2E_BASE_URL) must not have the route; only the local run sets the var.
        let r = http().request("POST", "/__dev/token", None, Some(r#"{"userId":"x"}"#), &[]).await?;
        ensure_eq!((r.status, r.error_code()), (404, Some("not_found")));
        return Ok(());
    }
    let alice = unique("alice");
    let body = format!(r#"{{"userId":"{alice}","name":"Alice D."}}"#);
    let r = http().request("POST", "/__dev/token", None, Some(&body), &[]).await?;
    ensure_eq!((r.status, r.body["userId"].clone()), (200, json!(alice)));
    let token = r.body["token"].as_str().ok_or("no token in the reply")?.to_owned();
    let mut s = ws(&format!("/__user-session?userId={alice}&deviceId=dev-1"), &token).await?;
    let first = s.recv_type("initial_state").await?;
    ensure_eq!((first["userId"].clone(), first["connectedDevices"].clone()), (json!(alice), json!(1)));
    s.expect_next_is_pong().await?;
    s.close().await?;
    // Not an admin unless asked; with "admin":true the admin route answers.
    let r = http().post(&format!("/__user-session/clear?userId={alice}"), &token, "").await?;
    ensure_eq!(r.status, 403);
    let admin = http().request("POST", "/__dev/token", None, Some(&format!(r#"{{"userId":"{alice}-admin","admin":true}}"#)), &[]).await?;
    let admin = admin.body["token"].as_str().ok_or("no admin token")?.to_owned();
    let r = http().post(&format!("/__user-session/clear?userId={alice}"), &admin, "").await?;
    ensure!(r.status < 300, "admin dev token on an admin route: {}", r.status);
    // Bad input: clear errors, nothing minted.
    for (bad, code) in [(r#"{"userId":"a b"}"#, "invalid_user_id"), ("{}", "invalid_user_id"), ("[1]", "invalid_body"), (r#"{"userId":"x","admin":"yes"}"#, "invalid_admin")] {
        let r = http().request("POST", "/__dev/token", None, Some(bad), &[]).await?;
        ensure_eq!((bad, r.status, r.error_code(), r.body.get("token").is_none()), (bad, 400, Some(code), true));
    }
    // The demo page's probe: GET answers 200 while the route exists; other methods 405.
    let r = http().request("GET", "/__dev/token", None, None, &[]).await?;
    ensure_eq!((r.status, r.body["devTokens"].clone()), (200, json!(true)));
    let r = http().request("DELETE", "/__dev/token", None, None, &[]).await?;
    ensure_eq!((r.status, r.error_code()), (405, Some("method_not_allowed")));

    // Without the var (explicitly off, whatever .dev.vars says): 404, exactly like an unknown path.
    let extra = tokio::task::spawn_blocking(|| crate::support::ExtraServer::start("nodev", &["DEV_TOKENS:0"])).await??;
    let client = ::reqwest::Client::new();
    let mut replies = Vec::new();
    let probe = client.get(format!("{}/__dev/token", extra.base)).send().await?.status().as_u16();
    for path in ["/__dev/token", "/__dev/nope"] {
        let r = client.post(format!("{}{path}", extra.base)).header("content-type", "application/json").body(body.clone()).send().await?;
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await?;
        replies.push((status, v["error"]["code"].clone(), v["error"]["message"].as_str().map(|m| m.replace(path, "<path>"))));
    }
    drop(extra);
    ensure_eq!(probe, 404);
    ensure_eq!(replies[0], (404, json!("not_found"), Some("no route for <path>".to_owned())));
    ensure_eq!(replies[0], replies[1]);
    Ok(())
}
