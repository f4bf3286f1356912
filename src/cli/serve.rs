//! `prodgate serve`: config -> tracing -> bind -> [`crate::server::run`]
//! until SIGTERM or SIGINT. The server announces its address in the log
//! (`listening`, with `addr`) once its store is open, never on stdout, so
//! that a JSON log stays JSON and a server that cannot start announces
//! nothing.

use super::CliError;
use crate::config::{Config, Files};
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
