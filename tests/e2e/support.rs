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

/// Default receive timeout: generous, because it only bounds how long a failing run waits; a
/// loaded 2-core machine can take seconds to deliver a frame (wasm start, SQLite, a wake).
pub const RECV: Duration = Duration::from_secs(30);

/// How long a hibernation test keeps idling and probing before it gives up on seeing the
/// object evicted (workerd evicts after ~10 s idle, later on a loaded machine).
pub const HIBERNATION_DEADLINE: Duration = Duration::from_secs(120);

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
        if let Err(e) = server.wait_ready() {
            server.stop();
            panic!("{e}");
        }
        server
    }

    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// Wait until `/health` answers 200: the first start compiles the Worker (minutes on a
    /// loaded machine), so the deadline is generous.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(900);
        let tail = || self.log.lock().map(|l| l.iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default();
        while std::time::Instant::now() < deadline {
            if let Ok(resp) = reqwest::blocking_get(&format!("{}/health", self.base)) {
                if resp == 200 {
                    return Ok(());
                }
            }
            // Fail fast if wrangler itself exited (port taken, build error).
            if let Some(local) = &self.local {
                if let Ok(mut l) = local.lock() {
                    if let Ok(Some(status)) = l.child.try_wait() {
                        return Err(format!("wrangler dev exited ({status}) before becoming ready on {}:\n{}", self.base, tail()));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!("wrangler dev did not become ready on {}:\n{}", self.base, tail()))
    }

    /// Stop and start `wrangler dev` on the same port and persistence directory. Returns once
    /// the new server answers: the old process group is gone and the port was free before the
    /// new one started, so `/health` cannot be answered by the old workerd.
    pub fn restart(&self) -> TestResult {
        let Some(local) = &self.local else { return Err(fail("cannot restart a remote deployment")) };
        {
            let mut l = local.lock().map_err(|_| fail("poisoned"))?;
            kill_group(&mut l.child);
            if !devserver::wait_port_free(l.port, Duration::from_secs(60)) {
                return Err(fail(format!("port {} still in use 60 s after stopping wrangler", l.port)));
            }
            l.child = spawn_wrangler(l.port, &l.persist, &self.log);
        }
        self.wait_ready().map_err(fail)?;
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

    /// The highest `wakes` count among the wake lines with `needle` (0: none yet).
    pub fn max_wakes_logged(&self, needle: &str) -> u64 {
        let wakes = |line: &String| {
            let json = line.get(line.find(needle)?..=line.rfind('}')?)?;
            serde_json::from_str::<serde_json::Value>(json).ok()?["wakes"].as_u64()
        };
        self.log.lock().map(|l| l.iter().filter(|line| line.contains(needle)).filter_map(wakes).max().unwrap_or(0)).unwrap_or(0)
    }

    /// Wait up to `within` for `needle` to appear more than `before` times (wrangler's output
    /// reaches the log through a pipe and a reader thread, a little after the event that wrote
    /// it). True if it did.
    pub async fn log_count_exceeds(&self, needle: &str, before: usize, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.log_count(needle) > before {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn spawn_wrangler(port: u16, persist: &std::path::Path, log: &Arc<Mutex<Vec<String>>>) -> Child {
    let mut args: Vec<String> = vec!["--var".into(), "DEBUG_WAKE:1".into()];
    args.extend(e2e_vars(&[]));
    // The main server has the dev sign-in (foundation::dev_tokens_only_with_the_var); an
    // ExtraServer does not unless asked.
    args.extend(["--var".to_owned(), "DEV_TOKENS:1".to_owned()]);
    let opts = devserver::Options { port, persist, args, verbose_env: "E2E_VERBOSE", label: "wrangler", keep: |_| true };
    devserver::spawn(&opts, log).expect("failed to start `npx wrangler dev` (run `make setup` first)")
}

/// WebSocket upgrades per user per minute in the e2e run. Raised from the default 30 so no test's
/// own users trip it (every test uses its own `unique` users, so budgets are not shared); `ratelimit::upgrade_limit`
/// exhausts it on purpose with its own user (and reads the limit from `RateLimit-Limit`).
pub const WS_UPGRADES_PER_MINUTE: u32 = 200;

/// Channel history kept in the e2e run (the concurrency test needs 200 rows; the pruning test
/// goes past it), pruned at most every 2 s.
pub const CHANNEL_MAX_MESSAGES: i64 = 250;

/// Chat's per-connection limit in the e2e run: the default 20 messages, but per minute instead of
/// per 5 s, so the window cannot roll over while `chat::rate_limit_then_1008` sends and reads its
/// 23 frames on a loaded machine (every other chat test sends at most 20 per socket).
pub const CHAT_RATE_LIMIT_MESSAGES: i64 = 20;
pub const CHAT_RATE_LIMIT_WINDOW_MS: i64 = 60_000;

/// `VOICE_MAX_PARTICIPANTS` of the e2e server (small, so `voice::channel_full` fills it).
pub const VOICE_MAX_PARTICIPANTS: usize = 3;

/// The heartbeat sweep's timeout in the e2e run: an hour. The tests' sockets never ping, so with
/// the default 90 s a test that runs long on a loaded machine had its sockets swept ("heartbeat
/// timeout", 1001) halfway through. The sweep itself is tested on its own server with 5 s
/// (liveness::heartbeat_sweep).
pub const HEARTBEAT_TIMEOUT_MS: i64 = 3_600_000;

/// Small limits so pruning is testable quickly; kept in one place. Chat keeps 30 messages and
/// may prune every 2 s (tests/e2e/chat.rs keeps its other rooms under 30 rows). A var in
/// `overrides` (`KEY:value`) replaces the one of the same key here.
fn e2e_vars(overrides: &[&str]) -> Vec<String> {
    let heartbeat = format!("HEARTBEAT_TIMEOUT_MS:{HEARTBEAT_TIMEOUT_MS}");
    let upgrades = format!("WS_UPGRADES_PER_MINUTE:{WS_UPGRADES_PER_MINUTE}");
    let channel_max = format!("CHANNEL_MAX_MESSAGES:{CHANNEL_MAX_MESSAGES}");
    let chat_rate = format!("CHAT_RATE_LIMIT_MESSAGES:{CHAT_RATE_LIMIT_MESSAGES}");
    let chat_window = format!("CHAT_RATE_LIMIT_WINDOW_MS:{CHAT_RATE_LIMIT_WINDOW_MS}");
    let voice_max = format!("VOICE_MAX_PARTICIPANTS:{VOICE_MAX_PARTICIPANTS}");
    let vars = [
        "COUNTER_MAX_HISTORY:10000",
        "CHAT_MAX_MESSAGES:30",
        "CHAT_PRUNE_INTERVAL_MS:2000",
        chat_rate.as_str(),
        chat_window.as_str(),
        upgrades.as_str(),
        channel_max.as_str(),
        "CHANNEL_PRUNE_INTERVAL_MS:2000",
        voice_max.as_str(),
        heartbeat.as_str(),
    ];
    let key = |v: &str| v.split(':').next().unwrap_or_default().to_owned();
    let overridden: Vec<String> = overrides.iter().map(|v| key(v)).collect();
    vars.iter()
        .copied()
        .filter(|v| !overridden.contains(&key(v)))
        .chain(overrides.iter().copied())
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
        s.set_read_timeout(Some(std::time::Duration::from_secs(15)))?;
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
    /// The docs/protocol.md §5 error code, if this is an error body.
    pub fn error_code(&self) -> Option<&str> {
        self.body.get("error")?.get("code")?.as_str()
    }

    /// This reply if its status is `status`, else an error naming both and the body.
    pub fn expect_status(self, status: u16) -> Result<Reply, Box<dyn std::error::Error + Send + Sync>> {
        if self.status != status {
            return Err(fail(format!("HTTP {} (expected {status}): {}", self.status, self.text)));
        }
        Ok(self)
    }

    /// This reply if it is a 200.
    pub fn ok(self) -> Result<Reply, Box<dyn std::error::Error + Send + Sync>> {
        self.expect_status(200)
    }
}

/// How wrangler's dev proxy (ProxyWorker) answers a non-GET request it could not deliver.
const PROXY_LOST_REQUEST: &str = "Your worker restarted mid-request.";

/// A fresh connection per request (no idle pool): a request sent on a keep-alive connection
/// that wrangler's dev proxy has just closed is lost ("error sending request", or the proxy's
/// own 503) — that flaked the 100-concurrent-checks test under load.
pub fn http() -> Http {
    let client = ::reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(0).build().expect("client");
    Http { client }
}

impl Http {
    /// One HTTP request. A non-GET request that wrangler's dev proxy lost on its way to the
    /// Worker is sent again (up to 3 times): the proxy answers those with its own 503 ("Your
    /// worker restarted mid-request…", `Retry-After: 0`) although the Worker never restarted —
    /// the proxy reused a keep-alive connection the runtime had just closed, so the Worker never
    /// saw the request (cloudflare/workers-sdk#14641; GET and HEAD the proxy retries itself).
    /// The Worker never sends that body, so no answer of ours is hidden.
    pub async fn request(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>, headers: &[(&str, &str)]) -> Result<Reply, Box<dyn std::error::Error + Send + Sync>> {
        let mut attempt = 1;
        loop {
            let reply = match self.request_once(method, path, token, body, headers).await {
                // Never connected: nothing reached the server, so sending again is safe.
                Err(e) if attempt < 3 && e.downcast_ref::<::reqwest::Error>().is_some_and(::reqwest::Error::is_connect) => {
                    eprintln!("e2e: could not connect for {method} {path} (attempt {attempt}): {e}; trying again");
                    attempt += 1;
                    continue;
                }
                other => other?,
            };
            if reply.status == 503 && reply.text.starts_with(PROXY_LOST_REQUEST) && attempt < 3 && server().is_local() {
                eprintln!("e2e: wrangler's proxy lost {method} {path} (attempt {attempt}); sending it again");
                attempt += 1;
                continue;
            }
            return Ok(reply);
        }
    }

    async fn request_once(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>, headers: &[(&str, &str)]) -> Result<Reply, Box<dyn std::error::Error + Send + Sync>> {
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
    /// The server's Close frame was already received (the closing handshake is the server's).
    peer_closed: bool,
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
    Ok(Ws { inner, peer_closed: false })
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

    /// Several frames in one write (one TCP segment when they fit), so they reach the server
    /// together.
    pub async fn send_json_together(&mut self, values: &[Value]) -> TestResult {
        for value in values {
            self.inner.feed(Message::Text(value.to_string())).await?;
        }
        self.inner.flush().await?;
        Ok(())
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
                Message::Close(c) => {
                    self.peer_closed = true;
                    return Err(fail(format!("socket closed: {c:?}")));
                }
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

    /// Prove nothing else is pending on this socket: send `{"type":"ping"}`; the very next text
    /// frame must be `{"type":"pong"}`.
    ///
    /// Why this is ordered: the pong is the runtime's auto-response (`setWebSocketAutoResponse`),
    /// and workerd sends an auto-response only after every frame already queued on that socket
    /// when the ping was read (its pump sends queued messages first, and a message queued later
    /// records how many auto-responses must go before it). So any frame the server sent, or
    /// queued, in an event that finished before the ping arrived — including broadcasts caused by
    /// other sockets' messages or HTTP requests — reaches us before the pong and fails this check.
    /// A frame from an event still in flight may come later: first wait for evidence that the
    /// event finished (the sender's own ack or echo, the HTTP response that caused it).
    pub async fn expect_next_is_pong(&mut self) -> TestResult {
        self.send_text(r#"{"type":"ping"}"#).await?;
        let v = self.recv().await.map_err(|e| fail(format!("no pong after the sentinel ping: {e}")))?;
        if v != serde_json::json!({"type": "pong"}) {
            return Err(fail(format!("unexpected frame before the sentinel pong: {v}")));
        }
        Ok(())
    }

    /// Assert nothing arrives for `quiet`. A timer proves nothing on a loaded machine (the frame
    /// may just be late): to show "nothing else arrived" use [`Ws::expect_next_is_pong`].
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
                    self.peer_closed = true;
                    return Ok(Closed { code: u16::from(frame.code), reason: frame.reason.to_string() });
                }
                Some(Ok(Message::Close(None))) => {
                    self.peer_closed = true;
                    return Ok(Closed { code: 1005, reason: String::new() });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(fail(format!("socket error before close: {e}"))),
                None => return Err(fail("socket ended without a close frame")),
            }
        }
    }

    /// Close the socket with `code` and wait for the server's Close in reply (see [`Ws::close`]).
    pub async fn close_with(mut self, code: u16, reason: &str) -> TestResult {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame { code: CloseCode::from(code), reason: reason.to_owned().into() };
        self.inner.close(Some(frame)).await.map_err(|e| fail(format!("sending Close failed: {e}")))?;
        loop {
            match tokio::time::timeout(RECV, self.inner.next()).await {
                Err(_) => return Err(fail(format!("the server did not answer our Close within {RECV:?}"))),
                Ok(Some(Ok(Message::Close(_)))) => return Ok(()),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Err(fail(format!("socket error while closing: {e}"))),
                Ok(None) => return Err(fail("socket ended without the server's Close")),
            }
        }
    }

    /// Close the socket (1000 "bye") and wait, up to [`RECV`], for the server's Close in reply;
    /// an error if it does not come, the socket errors or it ends without one. After the server
    /// closed first, only completes our side of the handshake.
    pub async fn close(mut self) -> TestResult {
        if self.peer_closed {
            // tungstenite queued the reply to the server's Close when it read it: flush it.
            let _ = self.inner.close(None).await;
            return Ok(());
        }
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
        self.inner.close(Some(frame)).await.map_err(|e| fail(format!("sending Close failed: {e}")))?;
        let deadline = tokio::time::Instant::now() + RECV;
        loop {
            match tokio::time::timeout_at(deadline, self.inner.next()).await {
                Err(_) => return Err(fail(format!("the server did not answer our Close within {RECV:?}"))),
                Ok(Some(Ok(Message::Close(_)))) => return Ok(()),
                Ok(Some(Ok(_))) => continue, // frames the server sent before it read our Close
                Ok(Some(Err(e))) => return Err(fail(format!("socket error while closing: {e}"))),
                Ok(None) => return Err(fail("socket ended without the server's Close")),
            }
        }
    }
}

// ---------------------------------------------------------------- Hibernation

/// What the constructor's structured wake line (`{"event":"wake","class":…,"object":…,"wakes":n}`,
/// docs/operations.md) of object `name` of `class` starts with.
pub fn wake_needle(class: &str, name: &str) -> String {
    edge_realtime_core::ops::wake_prefix(class, name)
}

/// Drives a hibernation test without racing workerd's eviction: workerd logs nothing when it
/// evicts an object, so eviction is only visible afterwards, as the constructor's wake line
/// ([`wake_needle`]; always logged) once the next event reaches it. The line is written 50 ms
/// after its constructor (docs/operations.md), so the line of the run before `start` may still
/// be on its way: a wake is a line whose `wakes` count is above the one the object's stats
/// report at `start`, not any new line.
/// Pattern: `loop { h.idle().await?; <probe: an event that reaches the object and changes
/// nothing, checked as usual>; if h.woke().await { break } }` — each round idles longer, all
/// within [`HIBERNATION_DEADLINE`]. Against a deployment (no log) one round is done.
pub struct Hibernation {
    needle: String,
    wakes_before: u64,
    deadline: tokio::time::Instant,
    round: u32,
}

impl Hibernation {
    /// Start watching for the wake line of `class` `name`; call once the object's setup traffic is done.
    /// Every constructor run logs that line with the running count (the first run too), so a
    /// line counting past the stats' `wakes` now is a rebuild after eviction.
    pub async fn start(class: &str, name: &str) -> Result<Hibernation, Box<dyn std::error::Error + Send + Sync>> {
        let needle = wake_needle(class, name);
        let mut wakes_before = 0;
        if server().is_local() {
            let admin = server().admin_token(&unique("hib-admin"));
            let r = http().get(&format!("/api/admin/stats/{class}/{name}"), &admin).await?;
            if r.status != 200 {
                return Err(fail(format!("stats of {class} {name}: {} {}", r.status, r.body)));
            }
            wakes_before = r.body["wakes"].as_u64().ok_or("stats without wakes")?;
        }
        Ok(Hibernation { needle, wakes_before, deadline: tokio::time::Instant::now() + HIBERNATION_DEADLINE, round: 0 })
    }

    /// Stay idle for this round (12 s, then 6 s longer each round: workerd evicts after ~10 s
    /// idle, later under load); an error once the next round would pass the deadline.
    pub async fn idle(&mut self) -> TestResult {
        let idle = Duration::from_secs(12 + 6 * u64::from(self.round));
        self.round += 1;
        if tokio::time::Instant::now() + idle > self.deadline {
            return Err(fail(format!(
                "no hibernation within {HIBERNATION_DEADLINE:?}: `{}` still logged {} time(s) after {} idle rounds",
                self.needle,
                server().log_count(&self.needle),
                self.round - 1
            )));
        }
        tokio::time::sleep(idle).await;
        Ok(())
    }

    /// After the probe: did the constructor run again since [`Hibernation::start`]?
    pub async fn woke(&self) -> bool {
        if !server().is_local() {
            return true;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let woke = loop {
            if server().max_wakes_logged(&self.needle) > self.wakes_before {
                break true;
            }
            if tokio::time::Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if woke {
            eprintln!("e2e: `{}` seen after {} idle round(s)", self.needle, self.round);
        }
        woke
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
            if !devserver::wait_port_free(l.port, Duration::from_secs(60)) {
                return Err(fail(format!("port {} still in use 60 s after killing wrangler", l.port)));
            }
            l.child = spawn_wrangler(l.port, &l.persist, &self.log);
        }
        self.wait_ready().map_err(fail)?;
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
    args: Vec<String>,
}

impl ExtraServer {
    pub fn start(label: &str, extra_vars: &[&str]) -> Result<ExtraServer, Box<dyn std::error::Error + Send + Sync>> {
        let port = devserver::free_port()?;
        let persist = project_root().join("target").join(format!("e2e-{label}-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&persist);
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut args: Vec<String> = vec!["--var".into(), "DEBUG_WAKE:1".into()];
        args.extend(e2e_vars(extra_vars));
        let opts = devserver::Options { port, persist: &persist, args: args.clone(), verbose_env: "E2E_VERBOSE", label: "wrangler-2", keep: |_| true };
        let child = devserver::spawn(&opts, &log)?;
        let server = ExtraServer { base: format!("http://127.0.0.1:{port}"), port, log, child: Some(child), persist, args };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&self) -> TestResult {
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        while std::time::Instant::now() < deadline {
            if matches!(reqwest::blocking_get(&format!("{}/health", self.base)), Ok(200)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(fail(format!("second wrangler dev on {} did not become ready", self.port)))
    }

    /// A crash (like [`Server::crash_restart`]): SIGKILL the whole group — sockets dropped, no
    /// close events — then start again on the same port, vars and `--persist-to` state.
    /// Blocking: call it from `spawn_blocking`.
    pub fn crash_restart(&mut self) -> TestResult {
        if let Some(child) = self.child.take() {
            let group = format!("-{}", child.id());
            let _ = std::process::Command::new("kill").args(["-s", "KILL", "--", &group]).status();
            let mut child = child;
            let _ = child.wait();
        }
        if !devserver::wait_port_free(self.port, Duration::from_secs(60)) {
            return Err(fail(format!("port {} still in use 60 s after killing wrangler", self.port)));
        }
        let opts = devserver::Options {
            port: self.port,
            persist: &self.persist,
            args: self.args.clone(),
            verbose_env: "E2E_VERBOSE",
            label: "wrangler-2",
            keep: |_| true,
        };
        self.child = Some(devserver::spawn(&opts, &self.log)?);
        self.wait_ready()
    }

    /// How many log lines so far contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log.lock().map(|l| l.iter().filter(|line| line.contains(needle)).count()).unwrap_or(0)
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
    Ok(Ws { inner, peer_closed: false })
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
