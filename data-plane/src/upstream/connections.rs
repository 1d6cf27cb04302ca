//! Kept-alive HTTP/1.1 connections to upstreams, each driven by the task that uses it.
//!
//! A client with connection tasks (hyper-util's) hands every step of an exchange from one task to
//! another: the request to the connection's task, the answer's head back, then each part of its body.
//! Tokio runs a few such hand-offs on the same worker and then spreads the rest over the others,
//! waking a parked worker for each: at low load that cost more CPU than the gateway's own work. Here
//! the task making a call polls the connection itself while it sends the request and reads the answer,
//! and a wake-up one of them gives the other while they are polled stays inside that poll.
//!
//! Connections use `TCP_NODELAY` and quick ACKs (`quick_ack`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1;
use hyper::http::{HeaderValue, Request, Response, Uri, header};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use tower_service::Service;

use super::quick_ack::{QuickAck, QuickAckConnector};
use crate::wake::Inline;

/// An idle connection older than this is closed rather than used.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often idle connections are checked, to close those their upstream closed.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Idle connections kept per upstream origin; more are closed when their calls end.
const IDLE_PER_ORIGIN: usize = 64;

type Stream = MaybeHttpsStream<QuickAck>;

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("invalid upstream address {0}")]
    Address(String),
    #[error("connecting to the upstream")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("calling the upstream")]
    Http(#[source] hyper::Error),
}

/// The connections to all upstreams, idle ones kept per origin (scheme and authority).
pub struct Connections {
    connector: HttpsConnector<QuickAckConnector>,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

struct Idle {
    link: Link,
    since: Instant,
}

impl Connections {
    pub fn new(connector: HttpsConnector<QuickAckConnector>) -> Arc<Self> {
        let connections = Arc::new(Connections { connector, idle: Mutex::default() });
        // Closes idle connections that expired or that their upstream closed, also when no call
        // comes to check them out; ends with the pool.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = Arc::downgrade(&connections);
            runtime.spawn(async move {
                let mut every = tokio::time::interval(SWEEP_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let Some(pool) = pool.upgrade() else { break };
                    pool.sweep();
                }
            });
        }
        connections
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `request` (with an absolute URI) on a kept connection to its origin, or a new one, and
    /// returns the answer. Its body drives the connection and gives it back when read to its end.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, ExchangeError> {
        let uri = request.uri().clone();
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(ExchangeError::Address(uri.to_string()));
        };
        let origin = format!("{scheme}://{authority}");
        // On a connection of its own, a request names only its path and query (origin form); the
        // host goes in `Host`, without user info and with the port only when it is not the default.
        *request.uri_mut() = origin_form(&uri);
        if !request.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(&host_header(&uri))
        {
            request.headers_mut().insert(header::HOST, host);
        }
        loop {
            let (mut link, kept) = match self.checkout(&origin) {
                Some(link) => (link, true),
                None => (self.connect(&uri).await?, false),
            };
            let sent = link.sender.try_send_request(request);
            let mut sent = std::pin::pin!(sent);
            match std::future::poll_fn(|cx| link.driver.drive(cx, |cx| sent.as_mut().poll(cx))).await {
                Ok(response) => {
                    let connections = self.clone();
                    return Ok(response.map(|body| PooledBody { body, link: Some(link), connections, origin }));
                }
                // Not sent: a kept connection closed while idle. Try the next one.
                Err(mut e) if kept && e.message().is_some() => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(ExchangeError::Http(e.into_error())),
                },
                Err(e) => return Err(ExchangeError::Http(e.into_error())),
            }
        }
    }

    /// An idle connection to `origin` that can take a request now.
    fn checkout(&self, origin: &str) -> Option<Link> {
        loop {
            let Idle { mut link, since } = self.idle().get_mut(origin)?.pop()?;
            if since.elapsed() <= IDLE_TIMEOUT && link.usable() {
                return Some(link);
            }
        }
    }

    fn sweep(&self) {
        // Checked outside the lock (calls check connections out and in meanwhile), then put back.
        let mut swept = std::mem::take(&mut *self.idle());
        for kept in swept.values_mut() {
            kept.retain_mut(|i| i.since.elapsed() <= IDLE_TIMEOUT && i.link.usable());
        }
        let mut idle = self.idle();
        for (origin, kept) in swept {
            let now = idle.entry(origin).or_default();
            now.extend(kept);
            now.truncate(IDLE_PER_ORIGIN);
        }
        idle.retain(|_, kept| !kept.is_empty());
    }

    async fn connect(&self, uri: &Uri) -> Result<Link, ExchangeError> {
        let mut connector = self.connector.clone();
        let io = connector.call(uri.clone()).await.map_err(ExchangeError::Connect)?;
        let (sender, conn) = http1::handshake(io).await.map_err(ExchangeError::Http)?;
        Ok(Link { sender, driver: Driver { conn: Some(conn), inline: Inline::new() } })
    }

    fn checkin(&self, origin: String, link: Link) {
        link.driver.inline.release();
        let mut idle = self.idle();
        let kept = idle.entry(origin).or_default();
        if kept.len() < IDLE_PER_ORIGIN {
            kept.push(Idle { link, since: Instant::now() });
        }
    }
}

/// `uri`'s path and query alone: `/path?query`, `/` when it has neither.
fn origin_form(uri: &Uri) -> Uri {
    let mut parts = hyper::http::uri::Parts::default();
    parts.path_and_query = uri.path_and_query().cloned();
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

/// The `Host` header for `uri`: its host, and its port unless that is the scheme's default.
fn host_header(uri: &Uri) -> String {
    let host = uri.host().unwrap_or_default();
    let default = if uri.scheme_str() == Some("https") { 443 } else { 80 };
    match uri.port_u16() {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host.to_string(),
    }
}

/// One connection: its request sender, and the connection itself, polled by the task using it.
struct Link {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: Driver,
}

impl Link {
    /// Whether the connection can take a request now. Reads what came while it was idle: nothing,
    /// or the upstream closing it.
    fn usable(&mut self) -> bool {
        let sender = &mut self.sender;
        let ready = self.driver.drive(&mut Context::from_waker(Waker::noop()), |cx| sender.poll_ready(cx));
        self.driver.inline.release();
        matches!(ready, Poll::Ready(Ok(())))
    }
}

struct Driver {
    /// `None` once the connection has ended (closed, or failed: what was on it ends with the error).
    conn: Option<http1::Connection<Stream, Full<Bytes>>>,
    inline: Inline,
}

impl Driver {
    /// Polls the connection and `step` in turn, within the poll of the calling task, until `step`
    /// is done or neither can move. `step` is what the task waits for on the connection: the sender
    /// being ready, the answer's head, or a part of its body.
    fn drive<T>(&mut self, cx: &mut Context<'_>, mut step: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        let conn = &mut self.conn;
        self.inline.poll(cx, |inner| {
            if let Some(open) = conn.as_mut()
                && Pin::new(open).poll(inner).is_ready()
            {
                *conn = None;
            }
            step(inner)
        })
    }
}

/// An answer's body on a pooled connection. Reading it drives its connection; read to its end,
/// the connection goes back to `connections` for the next request (dropped before, it is closed).
pub struct PooledBody {
    body: Incoming,
    link: Option<Link>,
    connections: Arc<Connections>,
    origin: String,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(link) = this.link.as_mut() else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        let frame = std::task::ready!(link.driver.drive(cx, |cx| Pin::new(&mut this.body).poll_frame(cx)));
        if frame.is_none()
            && let Some(link) = this.link.take()
            && link.driver.conn.is_some()
            && !link.sender.is_closed()
        {
            this.connections.checkin(std::mem::take(&mut this.origin), link);
        }
        Poll::Ready(frame)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::connect::HttpConnector;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn plain() -> Arc<Connections> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(QuickAckConnector(HttpConnector::new()));
        Connections::new(connector)
    }

    async fn call(connections: &Arc<Connections>, port: u16) -> Bytes {
        let request = Request::post(format!("http://127.0.0.1:{port}/mcp")).body(Full::new(Bytes::from_static(b"{}")));
        let answer = connections.send(request.unwrap()).await.unwrap();
        answer.into_body().collect().await.unwrap().to_bytes()
    }

    /// An upstream that keeps connections alive, answering each request, and closes a connection
    /// that stays idle for `idle`.
    async fn upstream(idle: Duration) -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0; 1024];
                    loop {
                        let Ok(Ok(n @ 1..)) = tokio::time::timeout(idle, tcp.read(&mut buf)).await else { return };
                        request.extend_from_slice(&buf[..n]);
                        if request.ends_with(b"\r\n\r\n{}") {
                            request.clear();
                            let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nok\r\n").await;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    #[test]
    fn requests_name_their_target_and_host_as_the_upstream_expects() {
        let target = |u: &str| origin_form(&u.parse().unwrap()).to_string();
        assert_eq!(target("http://h:8080/mcp?x=1"), "/mcp?x=1");
        assert_eq!(target("http://h?key=abc"), "/?key=abc");
        assert_eq!(target("https://h"), "/");
        let host = |u: &str| host_header(&u.parse().unwrap());
        assert_eq!(host("http://h:80/mcp"), "h");
        assert_eq!(host("https://h:443/mcp"), "h");
        assert_eq!(host("https://h:80/mcp"), "h:80");
        assert_eq!(host("http://h:8080/mcp"), "h:8080");
        assert_eq!(host("http://[::1]:9000/mcp"), "[::1]:9000");
    }

    #[tokio::test]
    async fn kept_connections_are_reused_and_closed_ones_dropped() {
        let connections = plain();
        // Kept open: the second call goes on the first call's connection.
        let (port, accepted) = upstream(Duration::from_secs(60)).await;
        assert_eq!(call(&connections, port).await, "ok\r\n");
        assert_eq!(call(&connections, port).await, "ok\r\n");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Closed by the upstream while idle: swept, and the next call opens a new one.
        let (port, accepted) = upstream(Duration::from_millis(20)).await;
        assert_eq!(call(&connections, port).await, "ok\r\n");
        let origin = format!("http://127.0.0.1:{port}");
        assert_eq!(connections.idle().get(&origin).map(Vec::len), Some(1));
        tokio::time::sleep(Duration::from_millis(200)).await;
        connections.sweep();
        assert!(!connections.idle().contains_key(&origin), "the closed connection is still kept");
        assert_eq!(call(&connections, port).await, "ok\r\n");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
