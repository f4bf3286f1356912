//! The console's part of a test config: a `[console]` section on a free
//! loopback port with a fresh session key, and signing in through its token
//! form in the browser.

use super::browser::Browser;
use super::registry::free_port;
use super::server::TestServer;
use std::path::PathBuf;
use tempfile::TempDir;

/// Where a test's console listens, and its session key file (kept while
/// this lives).
pub struct ConsoleSetup {
    pub port: u16,
    /// `http://127.0.0.1:PORT`, the `public_url`.
    pub base: String,
    pub key: PathBuf,
    /// Holds the key, and any other file a test writes beside it.
    pub dir: TempDir,
}

impl ConsoleSetup {
    pub fn new() -> ConsoleSetup {
        let dir = tempfile::tempdir().expect("a temp dir");
        let key = dir.path().join("session.key");
        std::fs::write(&key, hex::encode(rand::random::<[u8; 32]>())).expect("write the key");
        let port = free_port();
        ConsoleSetup {
            port,
            base: format!("http://127.0.0.1:{port}"),
            key,
            dir,
        }
    }

    /// A console set-up and the server `config_of` it runs, on another
    /// port when the one chosen was taken before the server bound it (the
    /// port must be known before the start: it is in `public_url`).
    /// `config_of` may run more than once, each time for a new set-up.
    pub fn serve(config_of: impl Fn(&ConsoleSetup) -> String) -> (ConsoleSetup, TestServer) {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            let setup = ConsoleSetup::new();
            match TestServer::try_start(&config_of(&setup)) {
                Ok(server) => return (setup, server),
                Err(log) if log.contains("cannot listen for the console") => {}
                Err(log) => panic!("prodgate did not start; log:\n{log}"),
            }
        }
        panic!("the console's port was taken in each of {ATTEMPTS} attempts");
    }

    /// The `[console]` section, with `extra` keys after the listener's.
    pub fn toml(&self, extra: &str) -> String {
        format!(
            "\n[console]\nlisten = \"127.0.0.1:{}\"\npublic_url = \"{}\"\nsession_key_file = {:?}\n{extra}",
            self.port, self.base, self.key
        )
    }
}

/// Signs in with `token` through the token form (`token_login`).
pub async fn sign_in(b: &Browser, base: &str, token: &str) {
    b.goto(&format!("{base}/")).await;
    b.wait_for("input[name=token]").await;
    b.fill("input[name=token]", token).await;
    b.click("form[action='/login'] button[type=submit]").await;
    b.wait_for("form.logout").await;
}
