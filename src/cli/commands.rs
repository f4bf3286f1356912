//! The client subcommands: each connects, makes its call(s), and prints the
//! answer. Nothing else; flags live in [`super`], output in [`super::output`].

use super::client::{self, Client};
use super::output::Printer;
use super::{CliError, ClientArgs, Format, table, wait};
use crate::pb;
use crate::telemetry::visible;
use std::time::Instant;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Largest page the server serves; fewer round trips when printing everything.
const PAGE_SIZE: u32 = 1000;

pub async fn rollback(
    g: &ClientArgs,
    req: pb::RollbackRequest,
    follow: bool,
) -> Result<(), CliError> {
    let started = Instant::now();
    let mut c = Client::connect(g).await?;
    let p = c.api.rollback(c.unary(req)).await?.into_inner();
    answer(g, &mut c, p, follow, started, Printer::promotion).await
}

pub async fn request(
    g: &ClientArgs,
    req: pb::RequestPromotionRequest,
    follow: bool,
) -> Result<(), CliError> {
    let started = Instant::now();
    let mut c = Client::connect(g).await?;
    let p = c.api.request_promotion(c.unary(req)).await?.into_inner();
    answer(g, &mut c, p, follow, started, Printer::promotion).await
}

pub async fn release(g: &ClientArgs, req: pb::RequestReleaseRequest) -> Result<(), CliError> {
    let mut c = Client::connect(g).await?;
    let r = c.api.request_release(c.unary(req)).await?.into_inner();
    Printer::stdout(g.output).release(&r)
}

pub async fn get_release(g: &ClientArgs, id: String) -> Result<(), CliError> {
    let mut c = Client::connect(g).await?;
    let req = pb::GetReleaseRequest { release_id: id };
    let r = c.api.get_release(c.unary(req)).await?.into_inner();
    Printer::stdout(g.output).release(&r)
}

pub async fn approve(
    g: &ClientArgs,
    req: pb::ApproveRequest,
    follow: bool,
) -> Result<(), CliError> {
    let started = Instant::now();
    let mut c = Client::connect(g).await?;
    let p = c.api.approve(c.unary(req)).await?.into_inner();
    let print = with_release(g, &mut c, &p, Printer::approval).await?;
    answer(g, &mut c, p, follow, started, print).await
}

pub async fn reject(g: &ClientArgs, req: pb::RejectRequest) -> Result<(), CliError> {
    let mut c = Client::connect(g).await?;
    let p = c.api.reject(c.unary(req)).await?.into_inner();
    let print = with_release(g, &mut c, &p, Printer::promotion).await?;
    print(&mut Printer::stdout(g.output), &p)
}

pub async fn cancel(g: &ClientArgs, req: pb::CancelRequest) -> Result<(), CliError> {
    let mut c = Client::connect(g).await?;
    let p = c.api.cancel(c.unary(req)).await?.into_inner();
    let print = with_release(g, &mut c, &p, Printer::promotion).await?;
    print(&mut Printer::stdout(g.output), &p)
}

/// How an approve/reject/cancel prints the promotion `p` it decided. A
/// release's member is decided with its whole release, so a table shows
/// the release as it is now, every member with its state (read with
/// GetRelease), and of `p` itself only what it waits for if WAITING.
/// `-o json` stays the Promotion the call answered, the one shape scripts
/// parse. If the release cannot be read, the decision stands: stderr says
/// so and `p` is printed as `print` does.
async fn with_release(
    g: &ClientArgs,
    c: &mut Client,
    p: &pb::Promotion,
    print: Print,
) -> Result<Print, CliError> {
    if p.release_id.is_empty() || g.output != Format::Table {
        return Ok(print);
    }
    let req = pb::GetReleaseRequest {
        release_id: p.release_id.clone(),
    };
    match c.api.get_release(c.unary(req)).await {
        Ok(r) => {
            Printer::stdout(g.output).release(&r.into_inner())?;
            // The member approved may wait for a gate of its own.
            Ok(|out, p| {
                if p.state == pb::PromotionState::Waiting as i32 {
                    out.raw(&table::approval_waiting(p))
                } else {
                    Ok(())
                }
            })
        }
        Err(e) => {
            eprintln!(
                "prodgate: promotion {} is {}; its release {} cannot be shown: {}",
                visible(&p.id),
                table::state_label(p.state),
                visible(&p.release_id),
                visible(&CliError::Status(e).to_string())
            );
            Ok(print)
        }
    }
}

pub async fn get(g: &ClientArgs, id: String, follow: bool) -> Result<(), CliError> {
    let started = Instant::now();
    let mut c = Client::connect(g).await?;
    let req = pb::GetPromotionRequest { promotion_id: id };
    let p = c.api.get_promotion(c.unary(req)).await?.into_inner();
    answer(g, &mut c, p, follow, started, Printer::promotion).await
}

/// Every gate of a promotion, evaluated now (EvaluateGates).
pub async fn gates(g: &ClientArgs, id: String) -> Result<(), CliError> {
    let mut c = Client::connect(g).await?;
    let req = pb::EvaluateGatesRequest {
        promotion_id: id.clone(),
        ..Default::default()
    };
    let r = c.api.evaluate_gates(c.unary(req)).await?.into_inner();
    Printer::stdout(g.output).gate_report(&r)?;
    let blocking: Vec<&str> = r
        .gates
        .iter()
        .filter(|g| !g.passed)
        .map(|g| g.name.as_str())
        .collect();
    if blocking.is_empty() {
        Ok(())
    } else {
        Err(CliError::GateBlocks {
            subject: format!("promotion {id}"),
            gates: blocking.join(", "),
        })
    }
}

/// The gates a request would meet now (EvaluateGates' dry run), recording
/// nothing. Blocks (exit 7) when a gate other than the approvals still to
/// be given (their count, the required groups) fails.
pub async fn dry_run(
    g: &ClientArgs,
    repository: String,
    source: String,
    environment: String,
) -> Result<(), CliError> {
    let mut c = Client::connect(g).await?;
    let req = pb::EvaluateGatesRequest {
        repository: repository.clone(),
        environment: environment.clone(),
        source: source.clone(),
        ..Default::default()
    };
    let r = c.api.evaluate_gates(c.unary(req)).await?.into_inner();
    Printer::stdout(g.output).gate_report(&r)?;
    let blocking: Vec<&str> = r
        .gates
        .iter()
        .filter(|g| !g.passed && g.name != "approvals" && g.name != "required_groups")
        .map(|g| g.name.as_str())
        .collect();
    if blocking.is_empty() {
        Ok(())
    } else {
        Err(CliError::GateBlocks {
            subject: format!(
                "a request of {repository}{}{source} to {environment}",
                if source.starts_with("sha256:") {
                    "@"
                } else {
                    ":"
                }
            ),
            gates: blocking.join(", "),
        })
    }
}

/// Records a check result (ReportCheck) and prints it as stored.
pub async fn report_check(g: &ClientArgs, req: pb::ReportCheckRequest) -> Result<(), CliError> {
    let mut c = Client::connect(g).await?;
    let r = c.api.report_check(c.unary(req)).await?.into_inner();
    Printer::stdout(g.output).checks(std::slice::from_ref(&r))
}

/// The latest report of every check for a digest (ListChecks, every page).
pub async fn checks(g: &ClientArgs, repository: String, digest: String) -> Result<(), CliError> {
    let c = Client::connect(g).await?;
    let all = pages(None, |page_token, page_size| {
        let mut api = c.api.clone();
        let req = c.unary(pb::ListChecksRequest {
            repository: repository.clone(),
            digest: digest.clone(),
            // At most PAGE_SIZE (1000), so it fits.
            page_size: i32::try_from(page_size).unwrap_or(i32::MAX),
            page_token,
        });
        async move {
            let page = api.list_checks(req).await?.into_inner();
            Ok((page.checks, page.next_page_token))
        }
    })
    .await?;
    Printer::stdout(g.output).checks(&all)
}

/// Prints one promotion, in the format of a [`Printer`].
type Print = fn(&mut Printer, &pb::Promotion) -> Result<(), CliError>;

/// Prints the answer of request/approve/rollback with `print`, then follows
/// it if asked to (through WAITING and APPROVED to a final state), until
/// `--timeout` after `started` if one was given. Once there is an answer,
/// a failure to follow it says that the promotion exists
/// ([`wait::failed_after`]).
async fn answer(
    g: &ClientArgs,
    c: &mut Client,
    p: pb::Promotion,
    follow: bool,
    started: Instant,
    print: Print,
) -> Result<(), CliError> {
    let out = &mut Printer::stdout(g.output);
    if !follow {
        return print(out, &p);
    }
    let limit = g.timeout.map(|t| wait::Limit {
        deadline: started + t,
        after: t,
    });
    let id = p.id.clone();
    let followed = async {
        print(out, &p)?;
        wait::follow(c, out, p, limit).await
    };
    followed.await.map_err(|e| wait::failed_after(&id, e))
}

/// Every promotion matching `filter` (or the first `limit` in the order
/// asked for: the newest with `newest_first`).
pub async fn list(
    g: &ClientArgs,
    filter: pb::ListPromotionsRequest,
    limit: Option<u32>,
) -> Result<(), CliError> {
    let c = Client::connect(g).await?;
    let all = pages(limit, |page_token, page_size| {
        let mut api = c.api.clone();
        let req = c.unary(pb::ListPromotionsRequest {
            page_size,
            page_token,
            ..filter.clone()
        });
        async move {
            let page = api.list_promotions(req).await?.into_inner();
            Ok((page.promotions, page.next_page_token))
        }
    })
    .await?;
    Printer::stdout(g.output).promotions(&all)
}

/// Every audit entry matching `filter` (or the first `limit`), oldest first
/// unless `newest_first`.
pub async fn history(
    g: &ClientArgs,
    filter: pb::HistoryRequest,
    limit: Option<u32>,
) -> Result<(), CliError> {
    let c = Client::connect(g).await?;
    let all = history_pages(&c, filter, limit).await?;
    Printer::stdout(g.output).audit_entries(&all)
}

/// The audit entries `filter` selects, oldest first unless it says
/// otherwise, following pages until the end or `limit` entries.
pub(super) async fn history_pages(
    c: &Client,
    filter: pb::HistoryRequest,
    limit: Option<u32>,
) -> Result<Vec<pb::AuditEntry>, CliError> {
    pages(limit, |page_token, page_size| {
        let mut api = c.api.clone();
        let req = c.unary(pb::HistoryRequest {
            page_size,
            page_token,
            ..filter.clone()
        });
        async move {
            let page = api.history(req).await?.into_inner();
            Ok((page.entries, page.next_page_token))
        }
    })
    .await
}

/// Follows page tokens until the last page or `limit` items. `fetch` gets
/// the page token and size and answers the items and the next token.
async fn pages<T, F, Fut>(limit: Option<u32>, mut fetch: F) -> Result<Vec<T>, CliError>
where
    F: FnMut(String, u32) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let want = limit.map_or(usize::MAX, |n| n as usize);
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let left = u32::try_from(want - all.len()).unwrap_or(PAGE_SIZE);
        let (items, next) = fetch(token.clone(), left.min(PAGE_SIZE)).await?;
        all.extend(items);
        all.truncate(want);
        // A token that does not advance would loop forever; the server
        // has then sent all it is going to.
        if next.is_empty() || next == token || all.len() >= want {
            return Ok(all);
        }
        token = next;
    }
}

pub async fn deployed(g: &ClientArgs, req: pb::GetDeployedRequest) -> Result<(), CliError> {
    let mut c = Client::connect(g).await?;
    let repository = req.repository.clone();
    let d = c.api.get_deployed(c.unary(req)).await?.into_inner();
    Printer::stdout(g.output).deployed(&d, &repository)
}

/// The server recomputes its chain; a broken one exits 1, like the offline
/// check.
pub async fn verify_log(g: &ClientArgs) -> Result<(), CliError> {
    let mut c = Client::connect(g).await?;
    let req = pb::VerifyAuditLogRequest {};
    let v = c.api.verify_audit_log(c.unary(req)).await?.into_inner();
    Printer::stdout(g.output).verification(&v)?;
    if v.ok {
        Ok(())
    } else {
        Err(CliError::ChainBroken)
    }
}

/// `grpc.health.v1.Health/Check` of the whole server (service ""), which
/// needs no token: made for Docker HEALTHCHECK and load balancers.
pub async fn health(g: &ClientArgs) -> Result<(), CliError> {
    let mut health = HealthClient::new(client::channel(g).await?);
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.set_timeout(g.call_timeout());
    let status = health.check(req).await?.into_inner().status;
    let name = ServingStatus::try_from(status)
        .ok()
        .map(|s| s.as_str_name());
    Printer::stdout(g.output).health(status, name)?;
    if status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(CliError::NotServing(
            name.map_or_else(|| status.to_string(), str::to_owned),
        ))
    }
}
