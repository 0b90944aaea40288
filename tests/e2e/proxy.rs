//! A TCP proxy for the liveness tests: forwards bytes both ways until [`Proxy::freeze`], then
//! silently stops forwarding WITHOUT closing either side — what a phone that lost its radio or
//! a tab frozen by the OS looks like to the server (no FIN, no RST, no close frame).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    /// `127.0.0.1:<port>` to connect to instead of the server.
    pub addr: String,
    frozen: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listen on a free port and forward every connection to `target` (`host:port`).
    pub async fn start(target: &str) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let frozen = Arc::new(AtomicBool::new(false));
        let target = target.to_owned();
        let flag = Arc::clone(&frozen);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(&target).await else { continue };
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::spawn(pump(cr, uw, Arc::clone(&flag)));
                tokio::spawn(pump(ur, cw, Arc::clone(&flag)));
            }
        });
        Ok(Proxy { addr, frozen, task })
    }

    /// Stop forwarding in both directions; both TCP connections stay open (bytes are read and
    /// dropped, so no side sees back-pressure or a close).
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, frozen: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    // Kept open after freezing: the halves live until the test's runtime drops them.
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if frozen.load(Ordering::SeqCst) {
                    // Never propagate a close once frozen: park forever, holding `to` open.
                    std::future::pending::<()>().await;
                }
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            continue; // swallow
        }
        if to.write_all(buf.get(..n).unwrap_or_default()).await.is_err() {
            return;
        }
    }
}
