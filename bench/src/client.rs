//! Clients: tokens minted with the project's own signer, WebSockets, HTTP, and the clock the
//! benchmark stamps messages with (all clients live in this process, so one monotonic clock).

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_realtime_core::auth::{mint, Claims};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{fail, Res};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Time allowed for one handshake or one awaited frame before the run counts it as an error.
pub const RECV: Duration = Duration::from_secs(15);

/// How often every long-lived benchmark socket sends the heartbeat, like a real client: rooms
/// and channels close a socket silent for `HEARTBEAT_TIMEOUT_MS` (90 s) with 1001, and only
/// these exact bytes count (answered by the runtime's auto-response, without waking the object).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);
pub const PING: &str = r#"{"type":"ping"}"#;

/// Microseconds since the first call: the timestamp carried in benchmark messages.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A one-hour token for `user`, signed like the Worker expects.
pub fn token(secret: &str, user: &str) -> Res<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let now = i64::try_from(now)?;
    let claims = Claims { sub: user.to_owned(), iat: now, exp: now + 3600, name: None, roles: Vec::new() };
    Ok(mint(&claims, secret.as_bytes())?)
}

/// A name no earlier run used (objects persist within one `wrangler dev`).
pub fn unique(prefix: &str) -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0) % 1_000_000_000;
    format!("{prefix}-{ms}")
}

/// Open a WebSocket, with `Authorization: Bearer` when a token is given.
pub async fn connect(url: &str, token: Option<&str>) -> Res<Socket> {
    connect_within(url, token, RECV).await
}

/// [`connect`] with its own handshake deadline (scale runs: measured, not limited).
pub async fn connect_within(url: &str, token: Option<&str>, within: Duration) -> Res<Socket> {
    let mut request = url.into_client_request()?;
    if let Some(t) = token {
        request.headers_mut().insert("Authorization", format!("Bearer {t}").parse()?);
    }
    let (socket, _) = tokio::time::timeout(within, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| fail(format!("no handshake within {within:?} for {url}")))??;
    Ok(socket)
}

/// The next JSON text frame (skipping control frames); an error on close, timeout or bad JSON.
pub async fn next_json(socket: &mut Socket, within: Duration) -> Res<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, socket.next())
            .await
            .map_err(|_| fail(format!("no frame within {within:?}")))?
            .ok_or_else(|| fail("socket ended"))??;
        match msg {
            Message::Text(text) => return Ok(serde_json::from_str(&text)?),
            Message::Close(frame) => return Err(fail(format!("socket closed by the server: {frame:?}"))),
            _ => continue,
        }
    }
}

/// HTTP client with keep-alive (the pool is shared by every task of a scenario).
pub fn http() -> Res<reqwest::Client> {
    Ok(reqwest::Client::builder().timeout(RECV).pool_max_idle_per_host(256).build()?)
}
