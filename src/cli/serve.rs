//! `prodgate serve`: config -> tracing -> bind -> [`crate::server::run`]
//! until SIGTERM or SIGINT.

use super::CliError;
use crate::config::{Config, Files};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML).
    #[arg(long, env = "PRODGATE_CONFIG")]
    pub config: PathBuf,
    /// Override `listen` from the file (e.g. 127.0.0.1:0 for any free port).
    #[arg(long)]
    pub listen: Option<String>,
    /// Override `data_dir` from the file.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

pub async fn serve(args: ServeArgs) -> Result<(), CliError> {
    let loaded = Config::load_with(&args.config, Files::Read)?;
    let mut config = loaded.config;
    crate::telemetry::init(config.log_format);
    for w in &loaded.warnings {
        tracing::warn!(key = %w.key, "config: {}", w.message);
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| CliError::Listen {
            addr: config.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| CliError::Listen {
        addr: config.listen.clone(),
        source,
    })?;
    // The first line on stdout tells scripts and tests where to connect.
    // Nobody may be reading it (tests close the pipe after this line), so a
    // failed write must not stop the server.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "prodgate listening on {addr}");
    let _ = stdout.flush();
    crate::server::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
