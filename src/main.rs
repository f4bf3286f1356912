//! The `prodgate` binary: the server (`serve`) and its command-line client;
//! everything lives in [`prodgate::cli`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    prodgate::cli::main(std::env::args_os()).await
}
