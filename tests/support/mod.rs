//! Real parts for integration tests: Debian's `docker-registry` and a
//! `prodgate serve` process, each on a free loopback port with temp storage.
#![allow(dead_code)]
pub mod proxy;
pub mod registry;
pub mod server;

use registry::TestRegistry;
use server::{TestServer, standard_config};

/// A registry and a prodgate server configured for it.
pub struct World {
    pub registry: TestRegistry,
    pub server: TestServer,
}

impl World {
    pub async fn start() -> World {
        let registry = TestRegistry::start().await;
        let server = TestServer::start(&standard_config(&registry.host));
        World { registry, server }
    }

    /// `<registry host>/<path>`, the repository name clients send.
    pub fn repo(&self, path: &str) -> String {
        format!("{}/{}", self.registry.host, path)
    }
}
