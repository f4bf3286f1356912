//! Wire <-> domain: validating what clients send and rendering records.

use crate::domain::audit::AuditEntry;
use crate::domain::model::{CheckReport, CheckStatus};
use crate::domain::model::{Promotion, PromotionId, State, Time};
use crate::domain::names::{Repository, Source, echo};
use crate::domain::names::{validate_check_name, validate_digest};
use crate::domain::release::{MAX_COMPONENTS, Release};
use crate::error::Error;
use crate::pb;
use crate::promotions::{CheckInput, ReleaseInput, RequestInput, RollbackInput};

/// Longest free-text field (reason, comment).
pub const MAX_TEXT: usize = 4096;
/// Longest idempotency key.
pub const MAX_REQUEST_ID: usize = 256;
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field,
        message: message.into(),
    }
}

pub fn timestamp(t: Time) -> crate::pb::Timestamp {
    crate::pb::Timestamp {
        seconds: t.seconds,
        // Always below 1e9, so it fits.
        nanos: i32::try_from(t.nanos).unwrap_or(0),
    }
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range of RFC 3339 and
/// of google.protobuf.Timestamp: outside it no formatter can render a time.
pub const MIN_SECONDS: i64 = -62_135_596_800;
pub const MAX_SECONDS: i64 = 253_402_300_799;

pub fn time(field: &'static str, ts: &crate::pb::Timestamp) -> Result<Time, Error> {
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| invalid(field, "nanos must be in 0..1e9"))?;
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
        return Err(invalid(
            field,
            format!(
                "{} seconds is outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z",
                ts.seconds
            ),
        ));
    }
    Ok(Time {
        seconds: ts.seconds,
        nanos,
    })
}

pub fn state(s: State) -> pb::PromotionState {
    match s {
        State::PendingApproval => pb::PromotionState::PendingApproval,
        State::Approved => pb::PromotionState::Approved,
        State::Promoted => pb::PromotionState::Promoted,
        State::Rejected => pb::PromotionState::Rejected,
        State::Cancelled => pb::PromotionState::Cancelled,
        State::Expired => pb::PromotionState::Expired,
        State::Failed => pb::PromotionState::Failed,
        State::Superseded => pb::PromotionState::Superseded,
        State::Waiting => pb::PromotionState::Waiting,
    }
}

/// A state filter: 0 is "any".
pub fn state_filter(n: i32) -> Result<Option<State>, Error> {
    let s = pb::PromotionState::try_from(n)
        .map_err(|_| invalid("state", format!("{n} is not a PromotionState")))?;
    Ok(State::ALL.into_iter().find(|x| state(*x) == s))
}

pub fn promotion(p: &Promotion) -> pb::Promotion {
    pb::Promotion {
        id: p.id.to_string(),
        repository: p.repository.clone(),
        environment: p.environment.clone(),
        target_tag: p.target_tag.clone(),
        source: p.source.clone(),
        digest: p.digest.clone(),
        state: state(p.state) as i32,
        requested_by: p.requested_by.clone(),
        reason: p.reason.clone(),
        approvals: p
            .approvals
            .iter()
            .map(|a| pb::Approval {
                approver: a.approver.clone(),
                comment: a.comment.clone(),
                time: Some(timestamp(a.time)),
                groups: a.groups.clone(),
            })
            .collect(),
        required_approvals: p.required_approvals,
        previous_digest: p.previous_digest.clone(),
        created_at: Some(timestamp(p.created_at)),
        updated_at: Some(timestamp(p.updated_at)),
        promoted_at: p.promoted_at.map(timestamp),
        failure_message: p.failure_message.clone(),
        expires_at: Some(timestamp(p.expires_at)),
        superseded_by: p.superseded_by.map(|id| id.to_string()).unwrap_or_default(),
        last_apply_error: p.last_apply_error.clone(),
        break_glass: p.break_glass,
        project: p.project.clone(),
        rollback: p.rollback,
        policy_digest: p.policy_digest.clone(),
        apply_attempts: p.apply_attempts,
        waiting_for: p.waiting_for.clone(),
        not_before: p.not_before.map(timestamp),
        request_id: p.request_id.clone(),
        release_id: p.release_id.map(|id| id.to_string()).unwrap_or_default(),
    }
}

/// A release as the API shows it: its members, each as [`promotion`].
pub fn release(r: &Release) -> pb::Release {
    pb::Release {
        id: r.id.to_string(),
        environment: r.environment().to_owned(),
        state: state(r.state()) as i32,
        members: r.members.iter().map(promotion).collect(),
        requested_by: r.requested_by().to_owned(),
        reason: r.reason().to_owned(),
        approvals: promotion(&r.members[0]).approvals,
        created_at: Some(timestamp(r.created_at())),
        updated_at: Some(timestamp(r.updated_at())),
        failure_message: r.failure_message().to_owned(),
    }
}

/// A RequestRelease, validated: each component as RequestPromotion's
/// repository and source (the field named `components[i].…`).
pub fn release_input(r: pb::RequestReleaseRequest) -> Result<ReleaseInput, Error> {
    if r.environment.is_empty() {
        return Err(invalid("environment", "is required"));
    }
    request_id(&r.request_id)?;
    // Counted before anything is parsed: the count and the distinctness
    // are checked again by the use case, which also refuses too few.
    if r.components.len() > MAX_COMPONENTS {
        return Err(invalid(
            "components",
            format!(
                "has {} components; a release has at most {MAX_COMPONENTS}",
                r.components.len()
            ),
        ));
    }
    let mut components = Vec::with_capacity(r.components.len());
    for (i, c) in r.components.iter().enumerate() {
        let repository =
            repository("components", &c.repository).map_err(|e| at(i, "repository", e))?;
        let source = Source::parse(&c.source).map_err(|e| {
            invalid(
                "components",
                format!("components[{i}].source: {:?} {e}", echo(&c.source)),
            )
        })?;
        components.push((repository, source));
    }
    Ok(ReleaseInput {
        environment: text("environment", &r.environment)?,
        reason: text("reason", &r.reason)?,
        request_id: r.request_id,
        components,
        break_glass: r.break_glass,
    })
}

/// `e` (about the `components` field) said of `components[i].field`.
fn at(i: usize, field: &str, e: Error) -> Error {
    match e {
        Error::InvalidArgument { message, .. } => {
            invalid("components", format!("components[{i}].{field} {message}"))
        }
        other => other,
    }
}

pub fn audit_entry(e: &AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        sequence: e.sequence,
        time: Some(timestamp(e.time)),
        actor: e.event.actor.clone(),
        action: e.event.action.number() as i32,
        promotion_id: crate::domain::audit::promotion_id_text(e.event.promotion_id),
        repository: e.event.repository.clone(),
        environment: e.event.environment.clone(),
        digest: e.event.digest.clone(),
        previous_digest: e.event.previous_digest.clone(),
        comment: e.event.comment.clone(),
        prev_hash: hex::encode(e.prev_hash),
        hash: hex::encode(e.hash),
        attributes: e
            .event
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// GetPolicy's `digest`: empty for the running policy, else `sha256:<hex>`.
pub fn policy_digest(s: &str) -> Result<Option<&str>, Error> {
    if s.is_empty() {
        return Ok(None);
    }
    validate_digest(s).map_err(|e| invalid("digest", e.to_string()))?;
    Ok(Some(s))
}

pub fn promotion_id(s: &str) -> Result<PromotionId, Error> {
    promotion_id_field("promotion_id", s)
}

/// A promotion id given in `field` (a release's id is its first member's).
pub fn promotion_id_field(field: &'static str, s: &str) -> Result<PromotionId, Error> {
    if s.is_empty() {
        return Err(invalid(field, "is required"));
    }
    match s.parse::<PromotionId>() {
        Ok(id) if id > 0 && !s.starts_with(['+', '0']) => {
            tracing::Span::current().record("promotion", id);
            Ok(id)
        }
        _ => Err(invalid(
            field,
            format!(
                "{:?} is not a promotion id (a positive decimal number)",
                echo(s)
            ),
        )),
    }
}

/// An optional name filter (an environment): empty means "any". Control
/// characters are refused here, as no configured name holds one, so every
/// backend answers alike (PostgreSQL's text cannot hold a NUL at all).
pub fn name_filter(field: &'static str, s: &str) -> Result<Option<String>, Error> {
    if s.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("{:?} holds a control character; no name does", echo(s)),
        ));
    }
    Ok(optional(s))
}

/// An optional filter: empty means "any".
pub fn optional(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

pub fn text(field: &'static str, s: &str) -> Result<String, Error> {
    if s.len() > MAX_TEXT {
        return Err(invalid(
            field,
            format!("is {} bytes; at most {MAX_TEXT} are allowed", s.len()),
        ));
    }
    Ok(s.to_owned())
}

pub fn page_size(n: u32) -> Result<usize, Error> {
    match n {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n <= MAX_PAGE_SIZE => Ok(n as usize),
        n => Err(invalid(
            "page_size",
            format!("{n} is more than the maximum of {MAX_PAGE_SIZE}"),
        )),
    }
}

/// ListChecks' `page_size` (an int32, as AIP-158 has it): the same
/// meaning as the other listings' sizes, and a negative one is refused.
pub fn signed_page_size(n: i32) -> Result<usize, Error> {
    let n = u32::try_from(n).map_err(|_| invalid("page_size", format!("{n} is negative")))?;
    page_size(n)
}

/// A check's `details_url`: empty, or an absolute `http`/`https` URL as
/// sent (so a console or notification that links it never links a
/// `javascript:` or `data:` URL), at most [`MAX_TEXT`] bytes. Whitespace
/// and control characters are refused rather than dropped the way the URL
/// parser does, so what is stored is what was checked.
fn details_url(s: &str) -> Result<String, Error> {
    let s = text("details_url", s)?;
    if s.is_empty() {
        return Ok(s);
    }
    let refuse = |why: &str| invalid("details_url", format!("{:?} {why}", echo(&s)));
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse("contains whitespace or control characters"));
    }
    let url =
        reqwest::Url::parse(&s).map_err(|e| refuse(&format!("is not an absolute URL: {e}")))?;
    match url.scheme() {
        "http" | "https" => Ok(s),
        other => Err(refuse(&format!(
            "has scheme {other}; only http and https are allowed"
        ))),
    }
}

pub fn repository(field: &'static str, s: &str) -> Result<Repository, Error> {
    Repository::parse(s).map_err(|e| invalid(field, format!("{:?} {e}", echo(s))))
}

/// A repository filter must be well-formed when present.
pub fn repository_filter(s: &str) -> Result<Option<String>, Error> {
    optional(s)
        .map(|r| repository("repository", &r).map(|r| r.to_string()))
        .transpose()
}

pub fn check_input(r: pb::ReportCheckRequest) -> Result<CheckInput, Error> {
    let repository = repository("repository", &r.repository)?;
    validate_digest(&r.digest).map_err(|e| invalid("digest", e.to_string()))?;
    validate_check_name(&r.check).map_err(|e| invalid("check", e.to_string()))?;
    let status = match pb::CheckStatus::try_from(r.status) {
        Ok(pb::CheckStatus::Passed) => CheckStatus::Passed,
        Ok(pb::CheckStatus::Failed) => CheckStatus::Failed,
        _ => {
            return Err(invalid(
                "status",
                "must be CHECK_STATUS_PASSED or CHECK_STATUS_FAILED",
            ));
        }
    };
    Ok(CheckInput {
        repository,
        digest: r.digest,
        check: r.check,
        status,
        details_url: details_url(&r.details_url)?,
        comment: text("comment", &r.comment)?,
    })
}

pub fn check_result(c: &CheckReport) -> pb::CheckResult {
    pb::CheckResult {
        repository: c.repository.clone(),
        digest: c.digest.clone(),
        check: c.check.clone(),
        status: match c.status {
            CheckStatus::Passed => pb::CheckStatus::Passed,
            CheckStatus::Failed => pb::CheckStatus::Failed,
        } as i32,
        reported_by: c.reported_by.clone(),
        time: Some(timestamp(c.time)),
        details_url: c.details_url.clone(),
        comment: c.comment.clone(),
    }
}

/// ListPromotions' `request_id`: a key as RequestPromotion takes it; empty
/// matches all.
pub fn request_id_filter(s: &str) -> Result<Option<String>, Error> {
    request_id(s)?;
    Ok(optional(s))
}

/// An idempotency key: short and printable.
fn request_id(s: &str) -> Result<(), Error> {
    if s.len() > MAX_REQUEST_ID || s.chars().any(char::is_control) {
        return Err(invalid(
            "request_id",
            format!("must be at most {MAX_REQUEST_ID} bytes without control characters"),
        ));
    }
    Ok(())
}

pub fn rollback_input(r: pb::RollbackRequest) -> Result<RollbackInput, Error> {
    let repository = repository("repository", &r.repository)?;
    if r.environment.is_empty() {
        return Err(invalid("environment", "is required"));
    }
    let digest = match r.digest.as_str() {
        "" => None,
        d => {
            validate_digest(d).map_err(|e| invalid("digest", e.to_string()))?;
            Some(d.to_owned())
        }
    };
    request_id(&r.request_id)?;
    Ok(RollbackInput {
        repository,
        environment: text("environment", &r.environment)?,
        digest,
        reason: text("reason", &r.reason)?,
        request_id: r.request_id,
        break_glass: r.break_glass,
    })
}

pub fn request_input(r: pb::RequestPromotionRequest) -> Result<RequestInput, Error> {
    let repository = repository("repository", &r.repository)?;
    let source = Source::parse(&r.source)
        .map_err(|e| invalid("source", format!("{:?} {e}", echo(&r.source))))?;
    if r.environment.is_empty() {
        return Err(invalid("environment", "is required"));
    }
    request_id(&r.request_id)?;
    Ok(RequestInput {
        repository,
        source,
        environment: text("environment", &r.environment)?,
        reason: text("reason", &r.reason)?,
        request_id: r.request_id,
        break_glass: r.break_glass,
        rollback: false,
    })
}

/// What an EvaluateGates call asks about: a promotion, or a dry run.
#[derive(Debug, Clone)]
pub enum GatesQuery {
    Promotion(PromotionId),
    DryRun(RequestInput),
}

/// An EvaluateGates call: `promotion_id`, or all of `repository`,
/// `environment` and `source` (a dry run), never both.
pub fn gates_query(r: pb::EvaluateGatesRequest) -> Result<GatesQuery, Error> {
    let dry_fields = [
        ("repository", &r.repository),
        ("environment", &r.environment),
        ("source", &r.source),
    ];
    if !r.promotion_id.is_empty() {
        if let Some((field, _)) = dry_fields.iter().find(|(_, v)| !v.is_empty()) {
            return Err(invalid(
                field,
                "must be empty with promotion_id: give a promotion_id, or repository, environment and source for a dry run",
            ));
        }
        return promotion_id(&r.promotion_id).map(GatesQuery::Promotion);
    }
    if dry_fields.iter().all(|(_, v)| v.is_empty()) {
        return Err(invalid(
            "promotion_id",
            "is required (or repository, environment and source for a dry run)",
        ));
    }
    if let Some((field, _)) = dry_fields.iter().find(|(_, v)| v.is_empty()) {
        return Err(invalid(
            field,
            "is required for a dry run (repository, environment and source)",
        ));
    }
    request_input(pb::RequestPromotionRequest {
        repository: r.repository,
        source: r.source,
        environment: r.environment,
        ..Default::default()
    })
    .map(GatesQuery::DryRun)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_sizes() {
        assert_eq!(promotion_id("42").unwrap(), 42);
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "01",
            "x",
            "1.5",
            "99999999999999999999999",
        ] {
            assert!(promotion_id(bad).is_err(), "{bad}");
        }
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(1000).unwrap(), 1000);
        assert!(page_size(1001).is_err());
        assert!(text("reason", &"x".repeat(4097)).is_err());
        assert!(state_filter(99).is_err());
        assert_eq!(name_filter("environment", "").unwrap(), None);
        assert_eq!(
            name_filter("environment", "production").unwrap().as_deref(),
            Some("production")
        );
        for bad in ["prod\0", "\0", "a\nb", "\u{7f}"] {
            let e = name_filter("environment", bad).unwrap_err().to_string();
            assert!(e.starts_with("environment: "), "{e}");
        }
        assert_eq!(state_filter(0).unwrap(), None);
        assert_eq!(state_filter(3).unwrap(), Some(State::Promoted));
        assert_eq!(signed_page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(signed_page_size(7).unwrap(), 7);
        assert!(signed_page_size(-1).is_err());
        assert!(signed_page_size(i32::MIN).is_err());
        assert!(signed_page_size(1001).is_err());
    }

    #[test]
    fn details_urls_are_http_or_https() {
        for good in [
            "",
            "http://ci.example/1",
            "https://ci.example:8443/run?id=2#log",
            "HTTPS://CI.example/x",
            "http://[::1]/x",
        ] {
            assert_eq!(details_url(good).unwrap(), good, "kept as sent");
        }
        for bad in [
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "ftp://x",
            "data:text/html,<b>x</b>",
            "file:///etc/passwd",
            "/relative",
            "ci.example/1",
            "https://",
            "https://ci.example/a b",
            " http://ci.example/",
            "http://ci.example/\n",
            "http://ci.example/\u{7}",
            "https://ci.example/\u{a0}",
        ] {
            let e = details_url(bad).unwrap_err().to_string();
            assert!(e.starts_with("details_url: "), "{bad}: {e}");
        }
        let long = format!("https://ci.example/{}", "a".repeat(MAX_TEXT));
        assert!(details_url(&long).is_err());
    }
}
