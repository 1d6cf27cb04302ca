//! Settings, wiring and serving: opens the store, bootstraps the admin key, starts the publisher and
//! serves the routes. `/health` and the OAuth callback are open; everything else sits behind the
//! browser checks and the admin-key middleware.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{DefaultHeaders, Next, from_fn};
use actix_web::{App, HttpResponse, HttpServer, web};
use shared::runtime::{init_tracing, shutdown_signal};
use shared::settings as names;
use shared::snapshot::{GuardrailProvider, ProviderKind, SnapshotSettings};
use shared::stdio_commands::StdioCommands;
use utoipa_swagger_ui::SwaggerUi;

use crate::admin_key::{self, AdminKeyFile};
use crate::api::configs::ServerRules;
use crate::api::data_plane::{self, DataPlaneTokens};
use crate::api::{api_keys, audit, configs, import, oauth, pins, projects, state, system, users};
use crate::auth::require_admin;
use crate::browser::AllowedOrigins;
use crate::error::ApiError;
use crate::publish::Publisher;
use crate::secrets::SecretBox;
use crate::store::{Database, Dialect, Store};

/// Control-plane settings (flags, then `MCPGW_*` variables, then defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Address of the admin API; port 0 picks a free port (the bound address is logged).
    #[arg(long, env = names::ENV_CONTROL_LISTEN, default_value = names::DEFAULT_CONTROL_LISTEN)]
    pub listen: String,
    /// Directory for the SQLite database (unless MCPGW_DATABASE_URL names another), the snapshot and
    /// a generated admin key.
    #[arg(long, env = names::ENV_DATA_DIR, default_value = names::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The database: `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB` (any number of
    /// instances may share one PostgreSQL database) [default: <data dir>/mcpgw.db].
    #[arg(long, env = names::ENV_DATABASE_URL, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Tokens data planes on other hosts present to pull the snapshot and send their reports,
    /// comma separated (several during a rotation); unset, no data plane can pull.
    #[arg(long, env = names::ENV_DATA_PLANE_TOKEN, hide_env_values = true)]
    pub data_plane_token: Option<String>,
    /// PEM certificate chain: serve the admin API over HTTPS (with MCPGW_TLS_KEY).
    #[arg(long, env = shared::tls::ENV_TLS_CERT)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of MCPGW_TLS_CERT.
    #[arg(long, env = shared::tls::ENV_TLS_KEY)]
    pub tls_key: Option<PathBuf>,
    /// Where to publish the snapshot [default: <data dir>/snapshot.json].
    #[arg(long, env = names::ENV_SNAPSHOT_PATH)]
    pub snapshot_path: Option<PathBuf>,
    /// Admin key; generated at first start (and written to <data dir>/admin_apikey) when unset.
    #[arg(long = "admin-api-key", env = names::ENV_ADMIN_API_KEY, hide_env_values = true)]
    pub admin_api_key: Option<String>,
    /// Key that encrypts the secrets stored in the database (32 bytes, base64 or hex); generated at
    /// first start (and written to <data dir>/secrets_key) when unset.
    #[arg(long = "secrets-key", env = names::ENV_SECRETS_KEY, hide_env_values = true)]
    pub secrets_key: Option<String>,
    /// Remote guardrail provider for detectors that need a model (toxicity, nsfw, bias,
    /// topic_detector, policy_violation): `webhook` or `enkrypt`. Unset, the admin API refuses them.
    #[arg(long, env = "MCPGW_GUARDRAIL_PROVIDER", value_parser = ["webhook", "enkrypt"])]
    pub guardrail_provider: Option<String>,
    /// The provider's URL (webhook: the endpoint; enkrypt: the API base, e.g. https://api.enkryptai.com).
    #[arg(long, env = "MCPGW_GUARDRAIL_URL")]
    pub guardrail_url: Option<String>,
    /// Time one provider request may take before the call fails closed (or open, per policy).
    #[arg(long, env = "MCPGW_GUARDRAIL_TIMEOUT_MS", default_value_t = 3000)]
    pub guardrail_timeout_ms: u64,
    /// Provider requests in flight at once, per data plane.
    #[arg(long, env = "MCPGW_GUARDRAIL_MAX_CONCURRENCY", default_value_t = 16)]
    pub guardrail_max_concurrency: usize,
    /// Browser origins the admin API takes requests from, comma separated: `self` (the origin a
    /// request is addressed to) and origins such as `https://admin.example.com` (a reverse proxy's
    /// public address); empty, none. Requests without an Origin (curl, the CLI) are not affected.
    #[arg(long, env = names::ENV_ADMIN_ALLOWED_ORIGINS, default_value = crate::browser::OWN_ORIGIN)]
    pub admin_allowed_origins: String,
    /// Executables, or directories of them, that stdio servers may run, comma separated (absolute
    /// paths, or names looked up in PATH); unset, any. Servers with another command are refused.
    #[arg(long, env = names::ENV_STDIO_COMMANDS)]
    pub stdio_commands: Option<String>,
    /// Days the audit log of changes keeps a row (at least 1); unset, rows are kept.
    #[arg(long, env = "MCPGW_AUDIT_RETENTION_DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub audit_retention_days: Option<u32>,
}

impl Settings {
    /// From the environment and defaults only (for the all-in-one binary).
    pub fn from_env() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            s: Settings,
        }
        <Only as clap::Parser>::parse_from(["control-plane"]).s
    }

    /// The database the settings name.
    pub fn database(&self) -> anyhow::Result<Database> {
        match self.database_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
            None => Ok(Database::sqlite_file(&self.data_dir.join(names::DATABASE_FILE_NAME))),
            Some(url) => Database::from_url(url),
        }
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.snapshot_path.clone().unwrap_or_else(|| names::default_snapshot_path(&self.data_dir))
    }

    /// What every published snapshot carries besides the configuration.
    pub fn snapshot_settings(&self) -> anyhow::Result<SnapshotSettings> {
        let guardrail_provider = match (self.guardrail_provider.as_deref(), &self.guardrail_url) {
            (None, _) => None,
            (Some(_), None) => anyhow::bail!("MCPGW_GUARDRAIL_PROVIDER is set but MCPGW_GUARDRAIL_URL is not"),
            (Some(kind), Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    anyhow::bail!("MCPGW_GUARDRAIL_URL must be an http:// or https:// URL");
                }
                if self.guardrail_timeout_ms == 0 || self.guardrail_max_concurrency == 0 {
                    anyhow::bail!("MCPGW_GUARDRAIL_TIMEOUT_MS and MCPGW_GUARDRAIL_MAX_CONCURRENCY must be positive");
                }
                Some(GuardrailProvider {
                    kind: if kind == "enkrypt" { ProviderKind::Enkrypt } else { ProviderKind::Webhook },
                    url: url.trim_end_matches('/').to_string(),
                    timeout_ms: self.guardrail_timeout_ms,
                    max_concurrency: self.guardrail_max_concurrency,
                })
            }
        };
        Ok(SnapshotSettings { guardrail_provider, ..SnapshotSettings::default() })
    }

    /// What the admin API accepts in a server besides its own validity.
    pub fn server_rules(&self) -> anyhow::Result<ServerRules> {
        Ok(ServerRules {
            remote_provider: self.snapshot_settings()?.guardrail_provider.is_some(),
            stdio_commands: StdioCommands::parse(self.stdio_commands.as_deref())?,
        })
    }
}

/// Runs the control plane until `shutdown` completes.
pub async fn serve(settings: Settings, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    settings.validate()?;
    let telemetry = crate::telemetry::Telemetry::start()?;
    create_private_dir(&settings.data_dir)?;
    let secrets =
        SecretBox::load(settings.secrets_key.as_deref(), &settings.data_dir.join(names::SECRETS_KEY_FILE_NAME))?;
    let store =
        Arc::new(Store::open(settings.database()?, secrets).await?.with_audit_retention(settings.audit_retention_days));
    let following = store.spawn_follower();
    let pruning = store.spawn_audit_pruner();
    let key_file = AdminKeyFile {
        path: settings.data_dir.join(names::ADMIN_KEY_FILE_NAME),
        from_env: settings.admin_api_key.is_some(),
    };
    let admin = web::Data::new(admin_key::bootstrap(&store.pool, &key_file, settings.admin_api_key.as_deref()).await?);
    let admin_following = following.is_some().then(|| admin_key::spawn_follower(store.clone(), admin.clone()));
    let data_planes = web::Data::new(DataPlaneTokens::parse(settings.data_plane_token.as_deref())?);
    let tls = shared::tls::server_config(settings.tls_cert.as_deref(), settings.tls_key.as_deref())?;
    let key_file = web::Data::new(key_file);
    let publisher = Publisher::new(settings.snapshot_path(), settings.snapshot_settings()?);
    let publishing = publisher.spawn(store.clone());
    let token_http = crate::upstream_oauth::http_client()?;
    let renewing = crate::upstream_oauth::spawn_refresher(store.clone(), token_http.clone());
    let token_http = web::Data::new(oauth::TokenHttp(token_http));
    let origins = web::Data::new(AllowedOrigins::parse(&settings.admin_allowed_origins)?);
    let rules = web::Data::new(settings.server_rules()?);

    let listener = TcpListener::bind(&settings.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
    let addr = listener.local_addr()?;
    let store_data = web::Data::from(store.clone());
    let publisher_data = web::Data::new(publisher);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(store_data.clone())
            .app_data(admin.clone())
            .app_data(key_file.clone())
            .app_data(publisher_data.clone())
            .app_data(token_http.clone())
            .app_data(origins.clone())
            .app_data(rules.clone())
            .app_data(data_planes.clone())
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| ApiError::BadRequest(format!("query string: {e}")).into()),
            )
            .app_data(
                web::PathConfig::default().error_handler(|e, _| ApiError::BadRequest(format!("path: {e}")).into()),
            )
            .wrap(from_fn(access_log))
            // Nothing here is meant to be framed: no clickjacking of the Swagger UI.
            .wrap(
                DefaultHeaders::new()
                    .add((header::X_FRAME_OPTIONS, "DENY"))
                    .add((header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff")),
            )
            // Outermost: the span covers everything a request goes through.
            .wrap(from_fn(crate::telemetry::trace_request))
            .service(system::health)
            .service(oauth::callback)
            // Data planes present their own token, not the admin key.
            .service(
                web::scope("/api/v1/data-plane")
                    .wrap(from_fn(crate::browser::guard))
                    .configure(data_plane::routes)
                    .default_service(web::to(not_found)),
            )
            .service(
                web::scope("")
                    .wrap(from_fn(require_admin))
                    // Outermost, so it runs first: a page of another site never reaches the key check.
                    .wrap(from_fn(crate::browser::guard))
                    .service(
                        web::scope("/api/v1")
                            .configure(users::routes)
                            .configure(projects::routes)
                            .configure(configs::routes)
                            .configure(pins::routes)
                            .configure(api_keys::routes)
                            .configure(system::routes)
                            .configure(import::routes)
                            .configure(oauth::routes)
                            .configure(state::routes)
                            .configure(audit::routes)
                            .default_service(web::to(not_found)),
                    )
                    .route(
                        "/docs",
                        web::get().to(|| async {
                            HttpResponse::PermanentRedirect().insert_header(("Location", "/docs/")).finish()
                        }),
                    )
                    .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", crate::openapi::document()).config(
                        utoipa_swagger_ui::Config::default().persist_authorization(false).try_it_out_enabled(true),
                    ))
                    .default_service(web::to(not_found)),
            )
    })
    .workers(2)
    .disable_signals();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, (*config).clone())?,
        None => server.listen(listener)?,
    }
    .run();
    tracing::info!(database = %store.database_display(), "database open");
    tracing::info!("control plane listening on {scheme}://{addr}");
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.await;
        handle.stop(true).await;
    });
    let result = server.await;
    publishing.abort();
    renewing.abort();
    following.inspect(|t| t.abort());
    pruning.inspect(|t| t.abort());
    admin_following.inspect(|t| t.abort());
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    result.map_err(Into::into)
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route; see /docs for the API".into()))
}

/// One log line per request: method, path, status, duration. Never headers or bodies (they carry keys).
async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let (method, path) = (req.method().to_string(), loggable_path(req.path()));
    let resp = next.call(req).await?;
    tracing::info!(%method, %path, status = resp.status().as_u16(), ms = start.elapsed().as_secs_f64() * 1e3, "request");
    Ok(resp)
}

/// The request path with anything shaped like a client key reduced to its public id: a key pasted
/// into a URL by mistake must not end up in the logs.
fn loggable_path(path: &str) -> String {
    path.split('/')
        .map(
            |seg| {
                if seg.starts_with(shared::api_key::KEY_PREFIX) {
                    shared::api_key::redact(seg)
                } else {
                    seg.to_string()
                }
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// Entry point of the `control-plane` binary.
pub fn cli_main() -> anyhow::Result<()> {
    use clap::Parser;

    #[derive(Parser)]
    #[command(
        name = "control-plane",
        version,
        about = "mcpgw admin REST API over SQLite or PostgreSQL; publishes the config snapshot"
    )]
    struct Cli {
        #[command(subcommand)]
        command: Option<Command>,
        #[command(flatten)]
        settings: Settings,
        /// Log format: text or json.
        #[arg(long, env = names::ENV_LOG_FORMAT, default_value = "text", global = true)]
        log_format: String,
    }
    #[derive(clap::Subcommand)]
    enum Command {
        /// Serve the admin API (the default).
        Serve,
        /// Print the OpenAPI document and exit.
        Openapi,
        /// Print the JSON Schema of state documents (`mcpgw plan/apply`) and exit.
        StateSchema,
    }

    let cli = Cli::parse();
    match cli.command {
        Some(Command::Openapi) => {
            print!("{}", crate::openapi::document_json());
            return Ok(());
        }
        Some(Command::StateSchema) => {
            print!("{}", crate::api::state::schema_json());
            return Ok(());
        }
        _ => {}
    }
    init_tracing(&cli.log_format);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(serve(cli.settings, shutdown_signal()))
}

impl Settings {
    /// Checks every setting that can be checked before starting, so that a process with a bad one
    /// stops with one clear message before anything listens (the all-in-one binary checks both
    /// planes first).
    pub fn validate(&self) -> anyhow::Result<()> {
        shared::settings::check_listen_address(names::ENV_CONTROL_LISTEN, &self.listen)?;
        if let Some(key) = &self.admin_api_key {
            anyhow::ensure!(
                key.len() >= crate::admin_key::MIN_ENV_KEY_LEN,
                "{} must be at least {} characters",
                names::ENV_ADMIN_API_KEY,
                crate::admin_key::MIN_ENV_KEY_LEN
            );
        }
        if let Some(key) = &self.secrets_key {
            SecretBox::check_env_key(key)?;
        }
        let database = self.database()?;
        anyhow::ensure!(
            database.dialect == Dialect::Sqlite || self.secrets_key.is_some(),
            "{} is required with a PostgreSQL database: every instance must encrypt stored secrets with the same \
             key (32 bytes as base64, e.g. `openssl rand -base64 32`), so none is generated",
            names::ENV_SECRETS_KEY
        );
        DataPlaneTokens::parse(self.data_plane_token.as_deref())?;
        shared::tls::server_config(self.tls_cert.as_deref(), self.tls_key.as_deref())?;
        AllowedOrigins::parse(&self.admin_allowed_origins)?;
        crate::telemetry::check_settings()?;
        self.server_rules().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_shaped_path_segments_are_redacted() {
        let key = shared::api_key::generate();
        let logged = super::loggable_path(&format!("/api/v1/api-keys/{}/rotate", key.secret));
        assert!(!logged.contains(&key.secret));
        assert!(logged.contains(&key.id));
        assert_eq!(super::loggable_path("/api/v1/users/a@b.co"), "/api/v1/users/a@b.co");
    }
}
