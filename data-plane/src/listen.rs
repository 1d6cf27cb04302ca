//! The MCP listener's accept loop: each client connection is served by hyper on a task of its own,
//! polled through [`Inlined`] so that the wake-ups a call gives its own task (reading the request's
//! body signals the connection's dispatcher, which runs in that task) cost no trip through the
//! scheduler. On shutdown, connections finish what they are serving, then close.

use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::wake::Inlined;

/// A client that has not sent a request's headers by then (on a new connection, or after the last
/// answer on a kept one) is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` completes, then waits for open connections to end.
pub async fn serve<L: Listener>(mut listener: L, app: Router, shutdown: impl Future<Output = ()>) {
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(Inlined::new(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut connection = pin!(connection);
            let mut asked = false;
            loop {
                tokio::select! {
                    served = connection.as_mut() => {
                        if let Err(e) = served {
                            tracing::trace!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = stop.cancelled(), if !asked => {
                        asked = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        }));
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
}
