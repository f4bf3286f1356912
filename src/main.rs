//! The `prodgate` binary: flags -> config -> tracing -> server or tool.

use clap::{Parser, Subcommand};
use prodgate::config::Config;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "prodgate",
    version,
    about = "Gated, audited promotion of container images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, env = "PRODGATE_CONFIG")]
        config: PathBuf,
        /// Override `listen` from the file (e.g. 127.0.0.1:0 for any free port).
        #[arg(long)]
        listen: Option<String>,
        /// Override `data_dir` from the file.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Check the audit hash chain of a data directory with the server stopped.
    VerifyLog {
        #[arg(long, default_value = prodgate::config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Load and validate a configuration file.
    CheckConfig { file: PathBuf },
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

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("prodgate: {message}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => {
            let mut config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            prodgate::telemetry::init(config.log_format);
            if let Some(l) = listen {
                config.listen = l;
            }
            if let Some(d) = data_dir {
                config.data_dir = d;
            }
            let listener = match tokio::net::TcpListener::bind(&config.listen).await {
                Ok(l) => l,
                Err(e) => return fail(format!("cannot listen on {}: {e}", config.listen)),
            };
            match listener.local_addr() {
                // The first line on stdout tells scripts and tests where to connect.
                Ok(addr) => {
                    println!("prodgate listening on {addr}");
                    let _ = std::io::stdout().flush();
                }
                Err(e) => return fail(e),
            }
            match prodgate::server::run(config, listener, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::VerifyLog { data_dir } => match prodgate::store::verify_offline(&data_dir) {
            Ok(v) => match v.first_bad_sequence {
                None => {
                    println!(
                        "ok: {} entries, head {}",
                        v.entries_checked,
                        hex::encode(v.head_hash)
                    );
                    ExitCode::SUCCESS
                }
                Some(seq) => {
                    println!("BROKEN at sequence {seq}: {}", v.message);
                    ExitCode::FAILURE
                }
            },
            Err(e) => fail(e),
        },
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "ok: {} registries, {} principals, environments: {}",
                    c.registries.len(),
                    c.principals.len(),
                    c.environments
                        .iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}
