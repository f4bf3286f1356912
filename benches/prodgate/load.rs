//! Closed-loop load: concurrent clients that each issue their next call as
//! soon as the previous one answered, for a fixed time; and the latency
//! percentiles every scenario reports.

use crate::support::server::TestServer;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Clients per HTTP/2 connection in the write and empty-RPC loads.
const CLIENTS_PER_CHANNEL: usize = 8;
/// At most this many connections, whatever the client count.
const MAX_CHANNELS: usize = 8;

/// Latency percentiles (nearest rank) of samples in microseconds, in ms.
pub struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

pub fn percentiles(mut micros: Vec<u32>) -> Percentiles {
    micros.sort_unstable();
    let at = |q: f64| -> f64 {
        if micros.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * micros.len() as f64).ceil() as usize).clamp(1, micros.len());
        f64::from(micros[rank - 1]) / 1000.0
    };
    Percentiles {
        n: micros.len(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
    }
}

pub fn micros_since(t: Instant) -> u32 {
    u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)
}

/// The connections `clients` clients share.
pub async fn channels(server: &TestServer, clients: usize) -> Vec<Channel> {
    let n = clients.div_ceil(CLIENTS_PER_CHANNEL).clamp(1, MAX_CHANNELS);
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(server.channel().await);
    }
    v
}

/// What the clients of one load measured, in microseconds. A load with two
/// kinds of call (the write cycle) keeps the second kind in `reject`.
#[derive(Default)]
pub struct ClientResult {
    pub request: Vec<u32>,
    pub reject: Vec<u32>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl ClientResult {
    pub fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }
}

/// One client of a closed-loop load.
pub trait Caller: Send + 'static {
    /// One iteration: its calls' latencies and errors go into `r`.
    fn call(&mut self, r: &mut ClientResult) -> impl Future<Output = ()> + Send;
}

/// Runs every caller in a task of its own until `dur` passes; all start
/// together 50 ms from now, so that spawning them is not measured. Returns
/// what they measured and when they started.
pub async fn closed_loop<C: Caller>(
    callers: Vec<C>,
    dur: Duration,
    what: &str,
) -> (ClientResult, Instant) {
    let start = Instant::now() + Duration::from_millis(50);
    let deadline = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in callers {
        tasks.spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let mut r = ClientResult::default();
            while Instant::now() < deadline {
                c.call(&mut r).await;
            }
            r
        });
    }
    let mut all = ClientResult::default();
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap_or_else(|e| panic!("{what} client task: {e}"));
        all.request.extend(r.request);
        all.reject.extend(r.reject);
        all.errors += r.errors;
        all.first_error = all.first_error.or(r.first_error);
    }
    (all, start)
}

/// One load level's outcome.
pub struct Load {
    pub ops: u64,
    /// The first kind of call alone (RequestPromotion in a write cycle).
    pub requests: u64,
    pub errors: u64,
    pub secs: f64,
    pub all: Percentiles,
    pub first_error: Option<String>,
    /// p50 of RequestPromotion and of Reject separately (writes only).
    pub p50_request: f64,
    pub p50_reject: f64,
}

impl Load {
    /// All of a level's calls as one distribution, measured from `start`.
    pub fn new(r: ClientResult, start: Instant) -> Load {
        let requests = r.request.len() as u64;
        let mut lat = r.request;
        lat.extend(r.reject);
        Load {
            ops: lat.len() as u64,
            requests,
            errors: r.errors,
            secs: start.elapsed().as_secs_f64(),
            all: percentiles(lat),
            first_error: r.first_error,
            p50_request: f64::NAN,
            p50_reject: f64::NAN,
        }
    }

    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}
