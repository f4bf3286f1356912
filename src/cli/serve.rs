//! `prodgate serve`: config -> tracing -> bind -> [`crate::server::run`]
//! until SIGTERM or SIGINT; SIGHUP re-reads the config file (the policy
//! changes without a restart; see `config::live`). The server announces its address in the log
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
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
    };
    overrides.apply(&mut config);
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| CliError::Listen {
            addr: config.listen.clone(),
            source,
        })?;
    let path = args.config;
    let load = move || {
        let mut loaded = Config::load_with(&path, Files::Read)?;
        overrides.apply(&mut loaded.config);
        Ok(loaded)
    };
    let reloads = crate::server::Reloads {
        requests: reload_requests(),
        load: std::sync::Arc::new(load),
    };
    crate::server::run(config, listener, shutdown_signal(), Some(reloads)).await?;
    Ok(())
}

/// The command line's `--listen`/`--data-dir`: they win over the file at
/// start and on every reload (so a reload compares like with like).
#[derive(Debug, Clone)]
struct Overrides {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if let Some(l) = &self.listen {
            config.listen.clone_from(l);
        }
        if let Some(d) = &self.data_dir {
            config.data_dir.clone_from(d);
        }
    }
}

/// One message per SIGHUP. Signals that arrive while a reload runs fold
/// into one more reload (the channel holds one), which reads the file as
/// it is by then.
fn reload_requests() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the config file");
                    // Full: a reload is already queued and will read the file.
                    let _ = tx.try_send(());
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP; config reload is off"),
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
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
