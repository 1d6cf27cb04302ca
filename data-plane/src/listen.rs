//! The MCP listener's accept loop: each client connection is served by hyper on a task of its own,
//! polled through a [`Relayed`] so that the wake-ups a call gives its own task (reading the
//! request's body signals the connection's dispatcher, which runs in that task) cost no trip
//! through the scheduler. On shutdown, connections finish what they are serving, then close.

use std::pin::pin;

use axum::Router;
use axum::serve::Listener;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

use crate::wake::Relayed;

/// Serves `app` on `listener` until `shutdown` completes, then waits for open connections to end.
pub async fn serve<L>(mut listener: L, app: Router, shutdown: impl Future<Output = ()>)
where
    L: Listener,
{
    // Dropping `stop` asks every connection to finish; each holds a `done` until it has.
    let (stop, stopping) = watch::channel(());
    let (done, finished) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let (mut stopping, finished) = (stopping.clone(), finished.clone());
        tokio::spawn(Relayed::new(async move {
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service).with_upgrades();
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
                    _ = stopping.changed(), if !asked => {
                        asked = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(finished);
        }));
    }
    drop(listener);
    drop((stop, stopping, finished));
    done.closed().await;
}
