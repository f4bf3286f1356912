//! The prodgate server every scenario measures: its config, its start from
//! inside the async runtime, and the HTTP client the bench itself uses.

use crate::support::server::{self, TestServer};
use std::path::Path;
use std::time::Duration;

/// A prodgate config: top-level keys first, then the tables. Environments:
/// `production` (one approval by a release manager, no prerequisite),
/// `staging` (no approval) and `canary` (one approval).
pub fn config(registry_host: &str, metrics_port: Option<u16>) -> String {
    let mut s = String::new();
    if let Some(p) = metrics_port {
        s.push_str(&format!("metrics_listen = \"127.0.0.1:{p}\"\n"));
    }
    s.push_str(
        "apply_wait = \"1s\"\nregistry_timeout = \"60s\"\nexpiry_sweep_interval = \"60s\"\n",
    );
    s.push_str(&server::registry_toml(registry_host));
    s.push_str(&server::principals_toml());
    s.push_str(
        r#"
[[environment]]
name = "production"
tag = "production"
approvers = ["group:release-managers"]
required_approvals = 1
approval_ttl = "24h"

[[environment]]
name = "staging"
tag = "staging"
required_approvals = 0

[[environment]]
name = "canary"
tag = "canary"
approvers = ["group:release-managers"]
required_approvals = 1
approval_ttl = "24h"
"#,
    );
    s
}

/// Starts `prodgate serve`; it blocks until the server listens, so off the
/// runtime's worker threads. The server logs at `info`, its default (the
/// tests' servers log at `debug`: a line per call, which costs a write
/// measured here as part of every RPC).
///
/// On a data directory (the reads scenario, which judges resident memory)
/// the server runs with glibc's `MALLOC_ARENA_MAX=2`, as `deploy/` runs it
/// (the Dockerfile and the systemd unit): at 1,000,000 entries glibc's
/// default arenas raised the peak by about 24 MiB (medians 211 and 187 MiB
/// over three and four runs; BENCHMARKS.md, "Issue 23", "Peak RSS at
/// 1,000,000 entries"). A `MALLOC_ARENA_MAX` in the bench's own
/// environment is passed on instead, for A/B runs.
pub fn start_server(config: &str, data_dir: Option<&Path>) -> TestServer {
    tokio::task::block_in_place(|| match data_dir {
        Some(d) => {
            let mut env = vec![("RUST_LOG", "info".into())];
            if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
                env.push(("MALLOC_ARENA_MAX", "2".into()));
            }
            TestServer::start_with_data_dir_and_env(config, d, &env)
        }
        None => TestServer::start_with_env(config, &[("RUST_LOG", "info".into())]),
    })
}

/// The bench's own HTTP client: long enough a deadline for a 1 GiB pull.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("build the HTTP client")
}
