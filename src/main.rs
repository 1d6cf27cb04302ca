//! `mcpgw`: alone (or `mcpgw serve`), the control plane and the data plane in one process (the
//! embedded default); with a command, a client of the admin API (see `mcpgw --help`).
//! Settings come from the `MCPGW_*` environment variables; both planes share the data dir and the
//! snapshot file, exactly as separate processes would.

mod cli;

use clap::Parser;

// The data plane runs here too: the same allocator as the `data-plane` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match args.command {
        None | Some(cli::Command::Serve) => match serve() {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
        Some(command) => std::process::ExitCode::from(cli::run(command, args.global)),
    }
}

fn serve() -> anyhow::Result<()> {
    let log_format = std::env::var(shared::settings::ENV_LOG_FORMAT).unwrap_or_else(|_| "text".into());
    shared::runtime::init_tracing(&log_format);
    let (control_settings, data_settings) = (control_plane::Settings::from_env(), data_plane::Config::from_env());
    // Both planes' settings are checked before either starts: the process starts whole or not at all.
    control_settings.validate()?;
    data_settings.validate()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let control = tokio::spawn(control_plane::serve(control_settings, wait(stop_rx.clone())));
        let data = tokio::spawn(data_plane::serve(data_settings, wait(stop_rx)));
        tokio::spawn(async move {
            shared::runtime::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        // If either plane fails, the process fails: a half-running gateway is worse than none.
        let (first, rest) = futures_select(control, data).await;
        first?;
        rest.await??;
        Ok(())
    })
}

/// Waits for the first of two tasks; returns its result and the other task.
async fn futures_select(
    a: tokio::task::JoinHandle<anyhow::Result<()>>,
    b: tokio::task::JoinHandle<anyhow::Result<()>>,
) -> (anyhow::Result<()>, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let mut a = a;
    let mut b = b;
    tokio::select! {
        r = &mut a => (r.map_err(anyhow::Error::from).and_then(|r| r), b),
        r = &mut b => (r.map_err(anyhow::Error::from).and_then(|r| r), a),
    }
}
