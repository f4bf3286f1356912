//! Prometheus metrics and the `/metrics` endpoint. Counters are fed from
//! three places: a tower layer around the gRPC server (RPCs by method and
//! status), the registry client (requests by operation and outcome), and the
//! store's streams of committed changes (final states, apply latency) and
//! promotion-less entries (drift). Gauges
//! that describe stored state (promotions by open state, audit entries) are read
//! from the store at scrape time, so they cannot drift. Every label value
//! comes from the config or the code, never from a client: each one is kept
//! for the life of the process.

use crate::domain::audit::AuditEntry;
use crate::domain::model::{Action, Promotion, State, Time};
use crate::store::{Change, Store};
use crate::telemetry::Throttle;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::broadcast;

pub struct Metrics {
    registry: Registry,
    /// The standard unprefixed `process_*` metrics, apart from `registry`,
    /// which prefixes every name with `prodgate_`.
    process: Registry,
    /// Configured environments: each has a pending-approvals sample, zero
    /// included, so a dashboard tells "none pending" from "not reported".
    environments: Vec<String>,
    rpcs: IntCounterVec,
    promotions: IntCounterVec,
    apply_seconds: HistogramVec,
    registry_requests: IntCounterVec,
    pending: IntGaugeVec,
    /// WAITING promotions: approvals complete, another gate still blocks.
    waiting: IntGaugeVec,
    /// APPROVED promotions whose tag move has not happened yet.
    apply_waiting: IntGaugeVec,
    audit_entries: IntGauge,
    store_commits: IntCounter,
    store_flushes: IntCounter,
    config_reloads: IntCounterVec,
    auth_failures: IntCounterVec,
    drift_detected: IntCounterVec,
    attach_failures: IntCounterVec,
    attest_failures: IntCounterVec,
}

impl Metrics {
    pub fn new(environments: Vec<String>) -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new_custom(Some("prodgate".into()), None)?;
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Always 1; the version of the running binary"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
        let process = Registry::new();
        // CPU seconds, resident memory, open and maximum file descriptors,
        // threads, start time: read from /proc at scrape time, Linux only.
        #[cfg(target_os = "linux")]
        process.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let rpcs = IntCounterVec::new(
            Opts::new("rpcs_total", "gRPC calls by method and status code"),
            &["method", "code"],
        )?;
        let promotions = IntCounterVec::new(
            Opts::new(
                "promotions_total",
                "Promotions that reached a final state, by environment and state",
            ),
            &["environment", "state"],
        )?;
        let apply_seconds = HistogramVec::new(
            HistogramOpts::new(
                "apply_duration_seconds",
                "Time from the final approval to the tag move (or its failure)",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["environment"],
        )?;
        let registry_requests = IntCounterVec::new(
            Opts::new(
                "registry_requests_total",
                "Requests to registries by operation and outcome",
            ),
            &["operation", "outcome"],
        )?;
        let pending = IntGaugeVec::new(
            Opts::new("pending_approvals", "Promotions waiting for approval"),
            &["environment"],
        )?;
        let waiting = IntGaugeVec::new(
            Opts::new(
                "promotions_waiting",
                "Promotions whose approvals are complete while another gate (soak, window, \
                 freeze, checks, signature) still blocks",
            ),
            &["environment"],
        )?;
        let apply_waiting = IntGaugeVec::new(
            Opts::new(
                "apply_waiting",
                "Approved promotions whose tag move has not happened yet",
            ),
            &["environment"],
        )?;
        let audit_entries = IntGauge::new("audit_entries", "Entries in the audit log")?;
        let store_commits = IntCounter::new(
            "store_commits_total",
            "Record changes committed and flushed since start",
        )?;
        let store_flushes = IntCounter::new(
            "store_flushes_total",
            "Flushes (fsyncs) of the database since start; commits/flushes is the group-commit factor",
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "config_reloads_total",
                "Config reloads (SIGHUP) by result: success, or failure (the running config was kept)",
            ),
            &["result"],
        )?;
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "auth_failures_total",
                "Calls refused before the API by authentication, by reason (a fixed set: \
                 expired, audience, unknown_kid, no_rule, unknown_token, ...)",
            ),
            &["reason"],
        )?;
        // Every reason at zero, so a rate over one never starts from "absent".
        for reason in crate::auth::AuthError::REASONS {
            auth_failures.with_label_values(&[reason]);
        }
        registry.register(Box::new(auth_failures.clone()))?;
        let drift_detected = IntCounterVec::new(
            Opts::new(
                "drift_detected_total",
                "DRIFT_DETECTED entries: a tag prodgate moved found carrying another digest, by environment",
            ),
            &["environment"],
        )?;
        // Zero from the start, so an alert on its increase sees the first one.
        for e in &environments {
            drift_detected.with_label_values(&[e.as_str()]);
        }
        registry.register(Box::new(drift_detected.clone()))?;
        let attach_failures = IntCounterVec::new(
            Opts::new(
                "attach_failures_total",
                "Failed attempts to attach a promotion's record to the image (each is retried), by environment",
            ),
            &["environment"],
        )?;
        for e in &environments {
            attach_failures.with_label_values(&[e.as_str()]);
        }
        registry.register(Box::new(attach_failures.clone()))?;
        let attest_failures = IntCounterVec::new(
            Opts::new(
                "attest_failures_total",
                "Failed attempts to sign and store a promotion's attestation under the image's .att tag (each is retried), by environment",
            ),
            &["environment"],
        )?;
        for e in &environments {
            attest_failures.with_label_values(&[e.as_str()]);
        }
        registry.register(Box::new(attest_failures.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(store_commits.clone()))?;
        registry.register(Box::new(store_flushes.clone()))?;
        registry.register(Box::new(rpcs.clone()))?;
        registry.register(Box::new(promotions.clone()))?;
        registry.register(Box::new(apply_seconds.clone()))?;
        registry.register(Box::new(registry_requests.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(waiting.clone()))?;
        registry.register(Box::new(apply_waiting.clone()))?;
        registry.register(Box::new(audit_entries.clone()))?;
        Ok(Arc::new(Self {
            registry,
            process,
            environments,
            rpcs,
            promotions,
            apply_seconds,
            registry_requests,
            pending,
            waiting,
            apply_waiting,
            audit_entries,
            store_commits,
            store_flushes,
            config_reloads,
            auth_failures,
            drift_detected,
            attach_failures,
            attest_failures,
        }))
    }

    /// One config reload: applied, or refused (the old config runs on).
    pub fn config_reload(&self, applied: bool) {
        self.config_reloads
            .with_label_values(&[if applied { "success" } else { "failure" }])
            .inc();
    }

    /// One call refused by authentication; `reason` is one of
    /// [`crate::auth::AuthError::REASONS`].
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// One failed attempt to attach a record to an image of `environment`
    /// (a configured environment's name).
    pub fn attach_failure(&self, environment: &str) {
        self.attach_failures.with_label_values(&[environment]).inc();
    }

    /// One failed attempt to store an attestation for an image of
    /// `environment` (a configured environment's name).
    pub fn attest_failure(&self, environment: &str) {
        self.attest_failures.with_label_values(&[environment]).inc();
    }

    /// One registry request: `operation` like "GET manifest", `outcome` the
    /// HTTP status or "error".
    pub fn registry_request(&self, operation: &str, outcome: &str) {
        self.registry_requests
            .with_label_values(&[operation, outcome])
            .inc();
    }

    fn observe_change(&self, p: &Promotion) {
        if !p.state.is_terminal() {
            return;
        }
        self.promotions
            .with_label_values(&[p.environment.as_str(), p.state.label()])
            .inc();
        if matches!(p.state, State::Promoted | State::Failed) {
            let approved = p
                .approvals
                .iter()
                .map(|a| a.time)
                .max()
                .unwrap_or(p.created_at);
            let done = p.promoted_at.unwrap_or(p.updated_at);
            self.apply_seconds
                .with_label_values(&[p.environment.as_str()])
                .observe(seconds_between(approved, done));
        }
    }

    /// The exposition text, with state gauges read from `store` now.
    pub async fn render(&self, store: &Store) -> String {
        for (gauge, state) in [
            (&self.pending, State::PendingApproval),
            (&self.waiting, State::Waiting),
            (&self.apply_waiting, State::Approved),
        ] {
            gauge.reset();
            for e in &self.environments {
                gauge.with_label_values(&[e.as_str()]).set(0);
            }
            match store.in_state(state).await {
                Ok(found) => {
                    for p in found {
                        gauge.with_label_values(&[p.environment.as_str()]).inc();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, state = state.label(), "cannot count promotions")
                }
            }
        }
        match store.audit_len().await {
            Ok(n) => self.audit_entries.set(i64::try_from(n).unwrap_or(i64::MAX)),
            Err(e) => tracing::warn!(error = %e, "cannot count audit entries"),
        }
        let stats = store.stats();
        // The writer counts; bring the exported counters up to its values.
        for (counter, source) in [
            (&self.store_commits, &stats.commits),
            (&self.store_flushes, &stats.flushes),
        ] {
            let now = source.load(std::sync::atomic::Ordering::Relaxed);
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        let mut out = Vec::new();
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

fn seconds_between(a: Time, b: Time) -> f64 {
    let secs = (b.seconds - a.seconds) as f64 + (f64::from(b.nanos) - f64::from(a.nanos)) / 1e9;
    secs.max(0.0)
}

/// Counts final states and apply latencies from committed changes.
pub async fn follow_changes(metrics: Arc<Metrics>, mut changes: broadcast::Receiver<Change>) {
    loop {
        match changes.recv().await {
            Ok(c) => metrics.observe_change(&c.promotion),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "metrics missed promotion changes");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Counts drift from committed entries about no promotion.
pub async fn follow_records(metrics: Arc<Metrics>, mut records: broadcast::Receiver<AuditEntry>) {
    loop {
        match records.recv().await {
            Ok(e) if e.event.action == Action::DriftDetected => metrics
                .drift_detected
                .with_label_values(&[e.event.environment.as_str()])
                .inc(),
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "metrics missed audit entries about no promotion"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// `GET /metrics`, served by the server on `metrics_listen` (`server::http1`).
pub fn app(metrics: Arc<Metrics>, store: Store) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, store) = (metrics.clone(), store.clone());
            async move {
                let body = metrics.render(&store).await;
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    )
}

/// Tower layer around every gRPC call: a `rpc` tracing span (method, and the
/// principal and promotion id once the handler knows them), the call counter
/// by method and status code, and one log line per call. A call is counted
/// when it ends: a unary refusal at its headers, anything else at its
/// trailers (a WatchPromotion when its stream closes), and a call the
/// client reset first (it cancelled, or its deadline passed) when hyper
/// drops it, as CANCELLED or DEADLINE_EXCEEDED.
///
/// Calls arrive here before routing and authentication, so the path is
/// whatever a client sent: only methods the server serves get their own
/// label, every other path counts as `method="unknown"` (a label per made-up
/// path would grow memory without bound). Refused calls (unknown method, no
/// valid credentials) are logged at most once a second per reason, with the
/// number left out, since anyone can send them as fast as they like.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
    methods: Arc<HashMap<String, Arc<str>>>,
    refused: Arc<Refused>,
}

struct Refused {
    unknown: Throttle,
    unauthenticated: Throttle,
}

/// The label of a path no served method has.
pub const UNKNOWN_METHOD: &str = "unknown";

impl RpcMetricsLayer {
    /// `descriptor_sets`: the encoded `FileDescriptorSet`s of every service
    /// the server routes to (the ones reflection serves).
    pub fn new(
        metrics: Arc<Metrics>,
        descriptor_sets: &[&[u8]],
    ) -> Result<Self, prost::DecodeError> {
        Ok(Self {
            metrics,
            methods: Arc::new(method_labels(descriptor_sets)?),
            refused: Arc::new(Refused {
                unknown: Throttle::new(Duration::from_secs(1)),
                unauthenticated: Throttle::new(Duration::from_secs(1)),
            }),
        })
    }
}

/// "/prodgate.v1.PromotionService/Approve" -> "PromotionService/Approve", for
/// every method of every service in `descriptor_sets`.
fn method_labels(
    descriptor_sets: &[&[u8]],
) -> Result<HashMap<String, Arc<str>>, prost::DecodeError> {
    use prost::Message;
    let mut labels = HashMap::new();
    for encoded in descriptor_sets {
        for file in prost_types::FileDescriptorSet::decode(*encoded)?.file {
            for service in &file.service {
                let full = match file.package() {
                    "" => service.name().to_owned(),
                    p => format!("{p}.{}", service.name()),
                };
                for m in &service.method {
                    labels.insert(
                        format!("/{full}/{}", m.name()),
                        Arc::from(format!("{}/{}", service.name(), m.name())),
                    );
                }
            }
        }
    }
    Ok(labels)
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How much of an unknown path a log line shows.
const LOGGED_PATH_CHARS: usize = 100;

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    RB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let known = self.layer.methods.get(path).cloned();
        // Kept for the log line only when the method is unknown.
        let unknown_path = match known {
            Some(_) => None,
            None => Some(path.chars().take(LOGGED_PATH_CHARS).collect::<String>()),
        };
        let method = known.unwrap_or_else(|| Arc::from(UNKNOWN_METHOD));
        let span = tracing::info_span!(
            "rpc",
            method = %method,
            principal = tracing::field::Empty,
            promotion = tracing::field::Empty
        );
        let timeout = grpc_timeout(req.headers());
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        // Counted once, whichever way the call ends, even if dropped here.
        let mut call = Call {
            layer: self.layer.clone(),
            method,
            unknown_path,
            span: span.clone(),
            started: std::time::Instant::now(),
            timeout,
            done: false,
        };
        let respond = async move {
            let res = match fut.await {
                Ok(res) => res,
                Err(e) => {
                    // No response at all (the routes here never fail).
                    call.finish(tonic::Code::Internal);
                    return Err(e);
                }
            };
            // Errors of unary calls come as trailers-only responses, with
            // the status in the headers; any other call ends with its
            // status in the trailers, counted when the body yields them.
            if let Some(code) = status_in(res.headers()) {
                call.finish(code);
            }
            Ok(res.map(|body| tonic::body::Body::new(Counted { body, call })))
        };
        Box::pin(tracing::Instrument::instrument(respond, span))
    }
}

/// One call, counted and logged exactly once: with the status it ends
/// with, or, when the response (its future or its body) is dropped first
/// because the client reset the stream, as CANCELLED, or as
/// DEADLINE_EXCEEDED once the call's `grpc-timeout` has passed (clients
/// reset the stream at their deadline; the server itself does not end
/// calls at theirs, see `server::grpc`).
struct Call {
    layer: RpcMetricsLayer,
    method: Arc<str>,
    unknown_path: Option<String>,
    span: tracing::Span,
    started: std::time::Instant,
    /// The call's `grpc-timeout`, when it sent one.
    timeout: Option<Duration>,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let _entered = self.span.enter();
        let layer = &self.layer;
        let name = code_name(code);
        layer
            .metrics
            .rpcs
            .with_label_values(&[&*self.method, name])
            .inc();
        let elapsed_us = self.started.elapsed().as_micros() as u64;
        let refused = if self.unknown_path.is_some() {
            Some(&layer.refused.unknown)
        } else if code == tonic::Code::Unauthenticated {
            Some(&layer.refused.unauthenticated)
        } else {
            None
        };
        match refused {
            None => tracing::info!(code = name, elapsed_us, "rpc"),
            Some(throttle) => {
                if let Some(suppressed) = throttle.allow() {
                    tracing::info!(
                        code = name,
                        elapsed_us,
                        path = self.unknown_path.as_deref(),
                        suppressed,
                        "rpc refused"
                    );
                }
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let code = match self.timeout {
            Some(t) if deadline_passed(t, self.started.elapsed()) => tonic::Code::DeadlineExceeded,
            _ => tonic::Code::Cancelled,
        };
        self.finish(code);
    }
}

/// The most a reset may come before the deadline as this server measures
/// it and still be the client's deadline: the client's clock started
/// earlier (it encoded and sent the call, which then crossed the network),
/// so its deadline falls a little before ours. A tenth of the timeout, at
/// most this.
const DEADLINE_SLACK: Duration = Duration::from_millis(100);

/// Whether a call with `timeout` that was dropped `elapsed` after it
/// arrived ended at its client's deadline.
fn deadline_passed(timeout: Duration, elapsed: Duration) -> bool {
    elapsed + (timeout / 10).min(DEADLINE_SLACK) >= timeout
}

/// The `grpc-timeout` header: at most 8 digits and a unit (H, M, S, m, u,
/// n), per the gRPC HTTP/2 protocol. tonic parses it only inside its own
/// server loop, which prodgate does not use (see `server::grpc`).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The status code in `headers` (the headers of a trailers-only response,
/// or trailers), if they carry one.
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from)
}

/// A response body that counts its call when the trailers pass (a
/// streaming call, such as WatchPromotion, only then has a status), or
/// when it is dropped before they do.
struct Counted<B> {
    body: B,
    call: Call,
}

impl<B: http_body::Body + Unpin> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref() {
                    // Trailers without a status: clients read that as INTERNAL.
                    this.call
                        .finish(status_in(trailers).unwrap_or(tonic::Code::Internal));
                }
            }
            // hyper resets the stream: the client sees no status from us.
            Some(Err(_)) => this.call.finish(tonic::Code::Internal),
            None => this.call.finish(tonic::Code::Internal),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn code_name(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_have_labels() {
        let labels = method_labels(&[
            crate::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ])
        .expect("valid descriptors");
        assert_eq!(
            labels
                .get("/prodgate.v1.PromotionService/Approve")
                .map(|l| &**l),
            Some("PromotionService/Approve")
        );
        assert_eq!(
            labels.get("/grpc.health.v1.Health/Check").map(|l| &**l),
            Some("Health/Check")
        );
        assert!(!labels.contains_key("/prodgate.v1.PromotionService/Nope"));
    }

    #[test]
    fn grpc_timeout_is_parsed_per_the_protocol() {
        let parse = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("999m"), Some(Duration::from_millis(999)));
        assert_eq!(parse("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "1s", "-1S", "1.5S", "1 S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn a_reset_just_before_the_deadline_is_the_clients_deadline() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert!(deadline_passed(s(1), s(1)));
        assert!(deadline_passed(s(1), ms(950)));
        assert!(!deadline_passed(s(1), ms(850)));
        // At most DEADLINE_SLACK early, however long the timeout.
        assert!(deadline_passed(s(60), s(60) - ms(99)));
        assert!(!deadline_passed(s(60), s(59)));
        assert!(!deadline_passed(ms(10), ms(5)));
    }
}
