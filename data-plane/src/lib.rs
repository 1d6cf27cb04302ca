//! mcpgw data plane: the MCP gateway.
//!
//! To clients it is an MCP server (streamable HTTP at `/mcp`, or stdio); to upstream servers an MCP
//! client. A request flows one way:
//! `http` (listener, authentication) -> `auth` (key -> principal) -> `gateway` (the MCP surface)
//! -> `catalog` (what this caller may see; the one allow/deny decision) -> `upstream` (pooled
//! connections) -> back to the client whole. `reload` swaps in new snapshots; `metrics` and `audit`
//! record what happened.

mod audit;
mod auth;
mod call;
mod catalog;
mod config;
mod direct;
mod gateway;
mod guard;
mod http;
mod listen;
mod meta_tools;
mod metrics;
// Public for the access-token fuzz target.
pub mod oauth;
mod pull;
mod rate_limit;
mod reload;
mod sealed_session;
mod session;
mod state;
mod telemetry;
mod tls;
mod upstream;
mod wake;

use std::sync::Arc;

use anyhow::Context;
use rmcp::ServiceExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use state::Gateway;
use upstream::UpstreamSettings;
use upstream::pool::UpstreamPool;

/// The gateway state and its upstream pool; `observed` is where definitions awaiting review go
/// (and `control`, when the snapshot comes from a control plane over the network).
fn assemble(
    config: Config,
    replica: String,
    observed: Option<std::path::PathBuf>,
    control: Option<Arc<pull::ControlPlane>>,
) -> anyhow::Result<Arc<Gateway>> {
    // HTTPS to upstreams uses rustls with the ring provider (no C toolchain beyond ring's own).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(metrics::Metrics::default());
    let (events, _) = broadcast::channel(256);
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .tcp_nodelay(true)
        // rmcp does not always read a response to its end before the connection goes back to the
        // pool; reusing such a connection stalls ~40 ms on delayed ACKs. A fresh connection per
        // request costs far less on the networks upstreams sit on (measured by mcpgw-bench).
        .pool_max_idle_per_host(0)
        // An upstream may redirect within its own origin, never elsewhere (headers and tokens
        // must not follow a redirect to another host).
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt.previous().last().is_some_and(|prev| {
                prev.scheme() == attempt.url().scheme()
                    && prev.host_str() == attempt.url().host_str()
                    && prev.port_or_known_default() == attempt.url().port_or_known_default()
            });
            if same_origin && attempt.previous().len() < 5 { attempt.follow() } else { attempt.stop() }
        }))
        .build()
        .context("building the HTTP client")?;
    let observer = upstream::observed::Observer::new(replica, observed, control);
    tokio::spawn(observer.clone().run());
    let settings = Arc::new(UpstreamSettings {
        tokens: Arc::new(upstream::oauth::TokenSource::new(http.clone())),
        http,
        max_response_bytes: config.max_response_bytes,
        stdio_commands: shared::stdio_commands::StdioCommands::parse(config.stdio_commands.as_deref())?,
        metrics: metrics.clone(),
        events: events.clone(),
        observer,
        pooled: upstream::http_call::PooledHttp::new().context("building the upstream TLS client")?,
    });
    let pool = Arc::new(UpstreamPool::new(settings));
    let audit = match config.audit_target() {
        Some(target) => audit::AuditLog::open(&target, config.audit_arguments)
            .with_context(|| format!("opening the audit log {target}"))?,
        None => audit::AuditLog::disabled(),
    };
    let oauth = oauth::OAuth::from_config(&config)?.map(Arc::new);
    Ok(Arc::new(Gateway::new(config, pool, metrics, audit, events).with_oauth(oauth)))
}

/// Builds the gateway state, loads the snapshot and starts following it (the file's watcher, or
/// the control plane's long poll, serving the last good snapshot kept on disk meanwhile) and the
/// idle reaper.
async fn start(config: Config, local_port: Option<u16>) -> anyhow::Result<Arc<Gateway>> {
    let snapshot_path = config.snapshot_path();
    let replica = config.replica_id(local_port);
    let idle = config.upstream_idle();
    let control = pull::ControlPlane::from_config(&config)?;
    let observed = Some(shared::pins::observations_dir(&snapshot_path));
    let gateway = assemble(config, replica, observed, control.clone())?;
    reload::load(&gateway, &snapshot_path).await;
    match control {
        Some(control) => {
            gateway.follow_control_plane(control.url());
            if gateway.is_ready() {
                tracing::info!(
                    revision = gateway.catalog().revision,
                    "serving the last good snapshot kept on disk until the control plane answers"
                );
            }
            tokio::spawn(pull::follow(gateway.clone(), control, snapshot_path));
        }
        None => {
            tokio::spawn(reload::watch(gateway.clone(), snapshot_path));
        }
    }
    tokio::spawn(gateway.pool.clone().reap_idle(idle));
    if let Some(oauth) = &gateway.oauth {
        tokio::spawn(oauth.clone().keep_keys_fresh());
    }
    Ok(gateway)
}

/// The gateway as an in-process HTTP service serving `snapshot`, with no listener, no file watching
/// and no audit file: for embedding it, property tests and fuzzing. Call inside a Tokio runtime.
pub fn in_process(mut config: Config, snapshot: shared::Snapshot) -> anyhow::Result<axum::Router> {
    snapshot.validate()?;
    config.audit_log = Some("off".into());
    let gateway = assemble(config, "in-process".into(), None, None)?;
    gateway.install(catalog::Catalog::build(snapshot))?;
    Ok(http::router(gateway, CancellationToken::new()))
}

/// Serves streamable HTTP until `shutdown` completes, then closes every upstream.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    config.validate()?;
    let telemetry = telemetry::Telemetry::start()?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let tls = shared::tls::server_config(config.tls_cert.as_deref(), config.tls_key.as_deref())?;
    let gateway = start(config, Some(addr.port())).await?;
    let cancel = CancellationToken::new();
    let app = http::router(gateway.clone(), cancel.clone());
    let stop = cancel.clone();
    let shutdown = async move {
        shutdown.await;
        stop.cancel();
    };
    match tls {
        Some(tls) => {
            tracing::info!("data plane listening on https://{addr}");
            listen::serve(tls::TlsListener::new(listener, tls)?, app, shutdown).await;
        }
        None => {
            tracing::info!("data plane listening on http://{addr}");
            // Small JSON-RPC answers must not wait for Nagle's algorithm (40 ms with delayed ACKs).
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            listen::serve(listener, app, shutdown).await;
        }
    }
    gateway.pool.shutdown().await;
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    Ok(())
}

/// Serves one MCP client over stdin/stdout with the key in `MCPGW_API_KEY`; returns when the client
/// disconnects.
pub async fn serve_stdio(config: Config, key: String) -> anyhow::Result<()> {
    let telemetry = telemetry::Telemetry::start()?;
    let gateway = start(config, None).await?;
    gateway.authenticate(Some(&key)).await.map_err(|e| anyhow::anyhow!("{}: {e}", shared::settings::ENV_API_KEY))?;
    let service = gateway::GatewayService::new(gateway.clone(), gateway::Identity::Key(key.into()));
    let service = telemetry::Traced::new(service, telemetry::Transport::Stdio);
    let running = service.serve(rmcp::transport::io::stdio()).await.context("starting the stdio session")?;
    let _ = running.waiting().await;
    gateway.pool.shutdown().await;
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    Ok(())
}

/// Entry point of the `data-plane` binary.
pub fn cli_main() -> anyhow::Result<()> {
    use clap::Parser;

    #[derive(Parser)]
    #[command(name = "data-plane", version, about = "mcpgw MCP gateway")]
    struct Cli {
        #[command(subcommand)]
        command: Option<Command>,
        #[command(flatten)]
        config: Config,
        /// Log format: text or json.
        #[arg(long, env = shared::settings::ENV_LOG_FORMAT, default_value = "text", global = true)]
        log_format: String,
    }
    #[derive(clap::Subcommand)]
    enum Command {
        /// Serve streamable HTTP at /mcp (the default).
        Serve,
        /// Serve one client over stdin/stdout, authenticated by MCPGW_API_KEY.
        Stdio,
    }

    let cli = Cli::parse();
    shared::runtime::init_tracing(&cli.log_format);
    match cli.command {
        Some(Command::Stdio) => {
            let key = std::env::var(shared::settings::ENV_API_KEY)
                .map_err(|_| anyhow::anyhow!("set {} to the API key", shared::settings::ENV_API_KEY))?;
            // One client, one request at a time for the most part: a single thread serves it without
            // handing its messages between threads (clients often start one such process each).
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(serve_stdio(cli.config, key))
        }
        _ => {
            let rt = tokio::runtime::Runtime::new()?;
            // The server runs as a task on the workers, not on this thread: a future given to
            // `block_on` itself is polled here, so every accepted connection would cost a wake-up of
            // this thread and a hand-over back to a worker.
            let server = rt.spawn(serve(cli.config, shared::runtime::shutdown_signal()));
            rt.block_on(server)?
        }
    }
}
