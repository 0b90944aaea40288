//! The e2e harness: one real `wrangler dev` (workerd) for the whole run, tokens minted with
#![allow(dead_code)] // helpers used by some DO suites only
//! the project's own signer, and small HTTP / WebSocket clients that time out every receive.

use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edge_realtime_core::auth::{mint, Claims};
use edge_realtime_devserver as devserver;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Default receive timeout.
pub const RECV: Duration = Duration::from_secs(10);

/// Make an error out of a message.
pub fn fail(msg: impl Into<String>) -> Box<dyn std::error::Error + Send + Sync> {
    msg.into().into()
}

/// `ensure!(cond, "message {}", x)`
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::support::fail(format!($($arg)+)));
        }
    };
}

/// `ensure_eq!(left, right)` with both values in the message.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr $(,)?) => {{
        match (&$left, &$right) { (l, r) => if l != r {
            return Err($crate::support::fail(format!(
                "{} != {}\n  left: {:?}\n right: {:?}",
                stringify!($left), stringify!($right), l, r
            )));
        } }
    }};
}

/// The service under test.
pub struct Server {
    pub base: String,
    /// `None` when testing a deployment through `E2E_BASE_URL`.
    local: Option<Mutex<LocalServer>>,
    secret: String,
    /// Lines wrangler printed (DO logs included), for wake/hibernation checks.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Restart tests take this exclusively; all others share it.
    pub restart_lock: RwLock<()>,
}

struct LocalServer {
    child: Child,
    port: u16,
    persist: PathBuf,
}

static SERVER: OnceLock<Server> = OnceLock::new();

pub fn server() -> &'static Server {
    SERVER.get_or_init(Server::start)
}



fn read_secret() -> String {
    devserver::read_secret("E2E_AUTH_SECRET").expect("AUTH_SECRET (run `make setup`)")
}

fn free_port() -> u16 {
    devserver::free_port().unwrap_or(18787)
}

fn project_root() -> PathBuf {
    devserver::project_root()
}

impl Server {
    fn start() -> Server {
        let secret = read_secret();
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Ok(base) = std::env::var("E2E_BASE_URL") {
            return Server { base: base.trim_end_matches('/').to_owned(), local: None, secret, log, restart_lock: RwLock::new(()) };
        }
        let port = free_port();
        let persist = project_root().join("target").join(format!("e2e-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&persist);
        let child = spawn_wrangler(port, &persist, &log);
        let server = Server {
            base: format!("http://127.0.0.1:{port}"),
            local: Some(Mutex::new(LocalServer { child, port, persist })),
            secret,
            log,
            restart_lock: RwLock::new(()),
        };
        server.wait_ready();
        server
    }

    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        while std::time::Instant::now() < deadline {
            if let Ok(resp) = reqwest::blocking_get(&format!("{}/health", self.base)) {
                if resp == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let tail = self.log.lock().map(|l| l.iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default();
        panic!("wrangler dev did not become ready on {}:\n{tail}", self.base);
    }

    /// Stop and start `wrangler dev` on the same port and persistence directory.
    pub fn restart(&self) -> TestResult {
        let Some(local) = &self.local else { return Err(fail("cannot restart a remote deployment")) };
        {
            let mut l = local.lock().map_err(|_| fail("poisoned"))?;
            kill_group(&mut l.child);
            l.child = spawn_wrangler(l.port, &l.persist, &self.log);
        }
        self.wait_ready();
        Ok(())
    }

    /// Stop wrangler (end of the run).
    pub fn stop(&self) {
        if let Some(local) = &self.local {
            if let Ok(mut l) = local.lock() {
                kill_group(&mut l.child);
                let _ = std::fs::remove_dir_all(&l.persist);
            }
        }
    }

    pub fn ws_base(&self) -> String {
        self.base.replacen("http", "ws", 1)
    }

    /// A token for `user` (optionally with roles), valid for an hour, issued now.
    pub fn token(&self, user: &str) -> String {
        self.token_with(user, None, &[], now_secs(), now_secs() + 3600)
    }

    pub fn admin_token(&self, user: &str) -> String {
        self.token_with(user, None, &["admin"], now_secs(), now_secs() + 3600)
    }

    pub fn token_with(&self, user: &str, name: Option<&str>, roles: &[&str], iat: i64, exp: i64) -> String {
        let claims = Claims {
            sub: user.to_owned(),
            iat,
            exp,
            name: name.map(str::to_owned),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        };
        mint(&claims, self.secret.as_bytes()).expect("mint")
    }

    /// How many times wrangler's log shows `needle` (e.g. a DO wake line).
    pub fn log_count(&self, needle: &str) -> usize {
        self.log.lock().map(|l| l.iter().filter(|line| line.contains(needle)).count()).unwrap_or(0)
    }
}

fn spawn_wrangler(port: u16, persist: &std::path::Path, log: &Arc<Mutex<Vec<String>>>) -> Child {
    let mut args: Vec<String> = vec!["--var".into(), "DEBUG_WAKE:1".into()];
    args.extend(e2e_vars());
    let opts = devserver::Options { port, persist, args, verbose_env: "E2E_VERBOSE", label: "wrangler", keep: |_| true };
    devserver::spawn(&opts, log).expect("failed to start `npx wrangler dev` (run `make setup` first)")
}

/// WebSocket upgrades per user per minute in the e2e run. Raised from the default 30 so suites
/// running in parallel (many sockets as "alice") never trip it; `ratelimit::upgrade_limit`
/// exhausts it on purpose with its own user (and reads the limit from `RateLimit-Limit`).
pub const WS_UPGRADES_PER_MINUTE: u32 = 200;

/// Channel history kept in the e2e run (the concurrency test needs 200 rows; the pruning test
/// goes past it), pruned at most every 2 s.
pub const CHANNEL_MAX_MESSAGES: i64 = 250;

/// Small limits so pruning is testable quickly; kept in one place. Chat keeps 30 messages and
/// may prune every 2 s (tests/e2e/chat.rs keeps its other rooms under 30 rows).
fn e2e_vars() -> Vec<String> {
    let upgrades = format!("WS_UPGRADES_PER_MINUTE:{WS_UPGRADES_PER_MINUTE}");
    let channel_max = format!("CHANNEL_MAX_MESSAGES:{CHANNEL_MAX_MESSAGES}");
    let vars = [
        "COUNTER_MAX_HISTORY:10000",
        "CHAT_MAX_MESSAGES:30",
        "CHAT_PRUNE_INTERVAL_MS:2000",
        upgrades.as_str(),
        channel_max.as_str(),
        "CHANNEL_PRUNE_INTERVAL_MS:2000",
    ];
    vars
        .iter()
        .flat_map(|v| ["--var".to_owned(), (*v).to_owned()])
        .collect()
}

fn kill_group(child: &mut Child) {
    devserver::kill_group(child);
}

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A unique object name per test (and per run, so reruns against a deployment don't collide).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0) % 1_000_000_000;
    format!("{prefix}-{t}-{n}")
}

/// Minimal blocking GET used before the async runtime exists (readiness probe).
mod reqwest {
    pub fn blocking_get(url: &str) -> Result<u16, Box<dyn std::error::Error>> {
        use std::io::{BufRead, Write};
        let rest = url.strip_prefix("http://").ok_or("http only")?;
        let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
        let mut s = std::net::TcpStream::connect(host)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
        // Read only the status line: workerd may keep the connection open.
        let mut buf = String::new();
        std::io::BufReader::new(s).read_line(&mut buf)?;
        let status = buf.split_whitespace().nth(1).ok_or("no status")?.parse()?;
        Ok(status)
    }
}

// ---------------------------------------------------------------- HTTP

pub struct Http {
    client: ::reqwest::Client,
}

pub struct Reply {
    pub status: u16,
    pub headers: ::reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
    /// The SPEC §5 error code, if this is an error body.
    pub fn error_code(&self) -> Option<&str> {
        self.body.get("error")?.get("code")?.as_str()
    }
}

pub fn http() -> Http {
    Http { client: ::reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client") }
}

impl Http {
    pub async fn request(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>, headers: &[(&str, &str)]) -> Result<Reply, Box<dyn std::error::Error + Send + Sync>> {
        let url = format!("{}{}", server().base, path);
        let method = ::reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.client.request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b.to_owned());
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply { status, headers, body, text })
    }

    pub async fn get(&self, path: &str, token: &str) -> Result<Reply, Box<dyn std::error::Error + Send + Sync>> {
        self.request("GET", path, Some(token), None, &[]).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &str) -> Result<Reply, Box<dyn std::error::Error + Send + Sync>> {
        self.request("POST", path, Some(token), Some(body), &[]).await
    }
}

// ---------------------------------------------------------------- WebSocket

pub struct Ws {
    inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a socket ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

/// Connect to `path` (with its query) using `token` in the `Authorization` header.
pub async fn ws(path: &str, token: &str) -> Result<Ws, Box<dyn std::error::Error + Send + Sync>> {
    ws_with(path, &[("Authorization", &format!("Bearer {token}"))]).await
}

/// Connect with explicit headers; an HTTP refusal comes back as `Err` with its status inside.
pub async fn ws_with(path: &str, headers: &[(&str, &str)]) -> Result<Ws, Box<dyn std::error::Error + Send + Sync>> {
    let mut request = format!("{}{}", server().ws_base(), path).into_client_request()?;
    for (k, v) in headers {
        request.headers_mut().insert(::reqwest::header::HeaderName::from_bytes(k.as_bytes())?, v.parse()?);
    }
    let (inner, _) = tokio::time::timeout(RECV, tokio_tungstenite::connect_async(request)).await??;
    Ok(Ws { inner })
}

/// The HTTP status a refused WebSocket handshake got.
pub async fn ws_refusal(path: &str, headers: &[(&str, &str)]) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let mut request = format!("{}{}", server().ws_base(), path).into_client_request()?;
    for (k, v) in headers {
        request.headers_mut().insert(::reqwest::header::HeaderName::from_bytes(k.as_bytes())?, v.parse()?);
    }
    match tokio::time::timeout(RECV, tokio_tungstenite::connect_async(request)).await? {
        Ok(_) => Err(fail("handshake unexpectedly succeeded")),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Ok(resp.status().as_u16()),
        Err(e) => Err(fail(format!("unexpected handshake error {e}"))),
    }
}

impl Ws {
    pub async fn send_text(&mut self, text: &str) -> TestResult {
        self.inner.send(Message::Text(text.to_owned())).await?;
        Ok(())
    }

    pub async fn send_json(&mut self, value: &Value) -> TestResult {
        self.send_text(&value.to_string()).await
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> TestResult {
        self.inner.send(Message::Binary(bytes)).await?;
        Ok(())
    }

    /// The next JSON frame (skipping transport pings), or an error on timeout/close.
    pub async fn recv(&mut self) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        self.recv_within(RECV).await
    }

    pub async fn recv_within(&mut self, limit: Duration) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        loop {
            let msg = tokio::time::timeout(limit, self.inner.next())
                .await
                .map_err(|_| fail(format!("no frame within {limit:?}")))?
                .ok_or_else(|| fail("socket ended"))??;
            match msg {
                Message::Text(t) => return Ok(serde_json::from_str(&t)?),
                Message::Close(c) => return Err(fail(format!("socket closed: {c:?}"))),
                _ => continue,
            }
        }
    }

    /// The next frame of `type`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let deadline = tokio::time::Instant::now() + RECV;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.recv_within(left).await?;
            if v["type"] == kind {
                return Ok(v);
            }
        }
    }

    /// Assert nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) -> TestResult {
        match tokio::time::timeout(quiet, self.inner.next()).await {
            Err(_) => Ok(()),
            Ok(Some(Ok(Message::Text(t)))) => Err(fail(format!("unexpected frame {t}"))),
            Ok(other) => Err(fail(format!("unexpected event {other:?}"))),
        }
    }

    /// Send a frame the server must reject (`None`: a binary frame) and return how it closed,
    /// checking the close reason fits the protocol's 123 bytes.
    pub async fn send_bad_frame(&mut self, frame: Option<&str>) -> Result<Closed, Box<dyn std::error::Error + Send + Sync>> {
        match frame {
            Some(text) => self.send_text(text).await?,
            None => self.send_binary(vec![1, 2, 3]).await?,
        }
        let closed = self.expect_close().await?;
        if closed.reason.len() > 123 {
            return Err(fail(format!("close reason longer than 123 bytes: {}", closed.reason.len())));
        }
        Ok(closed)
    }

    /// Wait for the server's Close frame (skipping data frames) and return its code and reason.
    pub async fn expect_close(&mut self) -> Result<Closed, Box<dyn std::error::Error + Send + Sync>> {
        let deadline = tokio::time::Instant::now() + RECV;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.inner.next()).await.map_err(|_| fail("no close frame in time"))? {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Ok(Closed { code: u16::from(frame.code), reason: frame.reason.to_string() })
                }
                Some(Ok(Message::Close(None))) => return Ok(Closed { code: 1005, reason: String::new() }),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(fail(format!("socket error before close: {e}"))),
                None => return Err(fail("socket ended without a close frame")),
            }
        }
    }

    pub async fn close(mut self) -> TestResult {
        let _ = self.inner.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await;
        // drain until the server reciprocates
        let _ = tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = self.inner.next().await {} }).await;
        Ok(())
    }
}

// ---------------------------------------------------------------- liveness harness
// (appended for tests/e2e/liveness.rs: crash restarts, a second wrangler with other vars,
// WebSockets to any address)

impl Server {
    /// A crash, not a stop: SIGKILL the whole process group (npx, node, workerd) — sockets
    /// dropped, no close events, no shutdown hooks — then start again on the same port and
    /// `--persist-to` state, as a crash or a deploy does.
    pub fn crash_restart(&self) -> TestResult {
        let Some(local) = &self.local else { return Err(fail("cannot crash a remote deployment")) };
        {
            let mut l = local.lock().map_err(|_| fail("poisoned"))?;
            let group = format!("-{}", l.child.id());
            let _ = std::process::Command::new("kill").args(["-s", "KILL", "--", &group]).status();
            let _ = l.child.wait();
            // workerd may outlive its group leader for a moment; wait until the port is free.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::net::TcpListener::bind(("127.0.0.1", l.port)).is_err() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            l.child = spawn_wrangler(l.port, &l.persist, &self.log);
        }
        self.wait_ready();
        Ok(())
    }
}

/// A second, private `wrangler dev` with the e2e vars plus `extra_vars` (`K:V`), on its own
/// port and state; stopped (whole group) when dropped.
pub struct ExtraServer {
    pub base: String,
    pub port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
    child: Option<Child>,
    persist: PathBuf,
}

impl ExtraServer {
    pub fn start(label: &str, extra_vars: &[&str]) -> Result<ExtraServer, Box<dyn std::error::Error + Send + Sync>> {
        let port = devserver::free_port()?;
        let persist = project_root().join("target").join(format!("e2e-{label}-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&persist);
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut args: Vec<String> = vec!["--var".into(), "DEBUG_WAKE:1".into()];
        args.extend(e2e_vars());
        for v in extra_vars {
            args.extend(["--var".to_owned(), (*v).to_owned()]);
        }
        let opts = devserver::Options { port, persist: &persist, args, verbose_env: "E2E_VERBOSE", label: "wrangler-2", keep: |_| true };
        let child = devserver::spawn(&opts, &log)?;
        let server = ExtraServer { base: format!("http://127.0.0.1:{port}"), port, log, child: Some(child), persist };
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        while std::time::Instant::now() < deadline {
            if matches!(reqwest::blocking_get(&format!("{}/health", server.base)), Ok(200)) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(fail(format!("second wrangler dev on {port} did not become ready")))
    }

    pub fn ws_base(&self) -> String {
        self.base.replacen("http", "ws", 1)
    }
}

impl Drop for ExtraServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            devserver::kill_group(&mut child);
        }
        let _ = std::fs::remove_dir_all(&self.persist);
    }
}

/// Connect to `ws_base + path` (any server or proxy) with a bearer token.
pub async fn ws_at(ws_base: &str, path: &str, token: &str) -> Result<Ws, Box<dyn std::error::Error + Send + Sync>> {
    let mut request = format!("{ws_base}{path}").into_client_request()?;
    request.headers_mut().insert(::reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
    let (inner, _) = tokio::time::timeout(RECV, tokio_tungstenite::connect_async(request)).await??;
    Ok(Ws { inner })
}

impl Ws {
    /// Wait up to `limit` for the server's Close frame and then the end of the TCP stream;
    /// returns the close and how long the stream took to end after it.
    pub async fn expect_close_and_end(&mut self, limit: Duration) -> Result<(Closed, Duration), Box<dyn std::error::Error + Send + Sync>> {
        let deadline = tokio::time::Instant::now() + limit;
        let closed = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.inner.next()).await.map_err(|_| fail(format!("no close frame within {limit:?}")))? {
                Some(Ok(Message::Close(Some(frame)))) => break Closed { code: u16::from(frame.code), reason: frame.reason.to_string() },
                Some(Ok(Message::Close(None))) => break Closed { code: 1005, reason: String::new() },
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(fail(format!("socket error before close: {e}"))),
                None => return Err(fail("socket ended without a close frame")),
            }
        };
        let at_close = tokio::time::Instant::now();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.inner.next()).await {
                Err(_) => return Err(fail(format!("close {closed:?} arrived but the TCP stream did not end within {limit:?}"))),
                Ok(None) | Ok(Some(Err(_))) => return Ok((closed, at_close.elapsed())),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Send `{"type":"ping"}` every `every` while waiting up to `limit` for a frame matching
    /// `pred` (pongs and other frames are skipped); keeps this socket alive under a sweep.
    pub async fn recv_matching_while_pinging(
        &mut self,
        limit: Duration,
        every: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => self.send_text(r#"{"type":"ping"}"#).await?,
                msg = tokio::time::timeout_at(deadline, self.inner.next()) => {
                    let msg = msg.map_err(|_| fail(format!("no matching frame within {limit:?}")))?
                        .ok_or_else(|| fail("socket ended"))??;
                    match msg {
                        Message::Text(t) => {
                            let v: Value = serde_json::from_str(&t)?;
                            if pred(&v) {
                                return Ok(v);
                            }
                        }
                        Message::Close(c) => return Err(fail(format!("socket closed: {c:?}"))),
                        _ => {}
                    }
                }
            }
        }
    }

    /// Keep pinging every `every` for `total`, failing on a close; proves a healthy socket
    /// survives sweeps. Returns how many pongs came back.
    pub async fn ping_for(&mut self, total: Duration, every: Duration) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let end = tokio::time::Instant::now() + total;
        let mut pongs = 0;
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(end) => return Ok(pongs),
                _ = tick.tick() => self.send_text(r#"{"type":"ping"}"#).await?,
                msg = self.inner.next() => match msg {
                    Some(Ok(Message::Text(t))) if t == r#"{"type":"pong"}"# => pongs += 1,
                    Some(Ok(Message::Close(c))) => return Err(fail(format!("healthy socket was closed: {c:?}"))),
                    None => return Err(fail("healthy socket ended")),
                    Some(Err(e)) => return Err(fail(format!("healthy socket error: {e}"))),
                    _ => {}
                },
            }
        }
    }
}
