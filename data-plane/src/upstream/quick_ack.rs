//! Plain TCP connections to upstreams that acknowledge at once: an upstream that leaves Nagle's
//! algorithm on (axum's default) writes an answer in pieces and waits for the ACK of the first
//! before sending the next, and a delayed ACK would hold every answer on a reused connection for
//! 40 ms.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

/// Connects as `HttpConnector` does, with quick ACKs on the connections it makes.
#[derive(Clone)]
pub struct QuickAckConnector(pub HttpConnector);

impl Service<Uri> for QuickAckConnector {
    type Response = QuickAck;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<QuickAck, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { connecting.await.map(QuickAck) })
    }
}

pub struct QuickAck(TokioIo<TcpStream>);

impl Connection for QuickAck {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}

impl hyper::rt::Read for QuickAck {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.0).poll_read(cx, buf);
        if read.is_ready() {
            // Linux leaves quick-ACK mode on its own; back into it after every read.
            let _ = this.0.inner().set_quickack(true);
        }
        read
    }
}

impl hyper::rt::Write for QuickAck {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}
