//! The console's read-only pages beyond a promotion's: `/history` (the
//! audit log, filtered and paged), `/deployed` (what each tag prodgate
//! moved carries, now or `?at=` a moment) and `/policy` (the running policy
//! and what changed from the version before). Each reads through the same
//! use cases as the gRPC calls (History, GetDeployed, GetPolicy) and the
//! policy diff of `prodgate policy diff`.

use super::{Shared, failure, page, pages, reader, refusal, to_login};
use crate::domain::model::{Action, Time};
use crate::domain::names::Repository;
use crate::error::Error;
use crate::promotions::HistoryQuery;
use crate::store::HistoryFilter;
use axum::extract::{Query, State as Extract};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Entries per page of `/history`.
const HISTORY_PAGE: usize = 50;

/// Tags listed on `/deployed` at most.
const DEPLOYED_SHOWN: usize = 500;

/// How far back `/policy` looks for the version before the running one.
const POLICY_LOOKBACK: usize = 10_000;

/// An RFC 3339 moment from a form field; empty is none.
fn moment(field: &'static str, raw: &str) -> Result<Option<Time>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let ts: jiff::Timestamp = raw
        .parse()
        .map_err(|_| format!("{field}: {raw:?} is not RFC 3339 (2026-11-26T14:32:00Z)"))?;
    let t = crate::pb::Timestamp {
        seconds: ts.as_second(),
        nanos: ts.subsec_nanosecond(),
    };
    crate::api::convert::time(field, &t)
        .map(Some)
        .map_err(|e| refusal(e, "").1)
}

/// `/history`'s GET form; `after` is the cursor (a sequence).
#[derive(Deserialize, Default)]
pub(super) struct HistoryForm {
    #[serde(default)]
    repository: String,
    #[serde(default)]
    environment: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    after: Option<u64>,
}

impl HistoryForm {
    fn filter(&self) -> Result<HistoryFilter, String> {
        let text = |e: Error| refusal(e, "").1;
        Ok(HistoryFilter {
            repository: crate::api::convert::repository_filter(&self.repository).map_err(text)?,
            environment: crate::api::convert::name_filter("environment", &self.environment)
                .map_err(text)?,
            promotion_id: None,
            since: moment("since", &self.since)?,
            until: moment("until", &self.until)?,
        })
    }

    /// The query string of the page after `next`, keeping the filters.
    fn next(&self, next: u64) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("repository", &self.repository),
            ("environment", &self.environment),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.append_pair("after", &next.to_string());
        q.finish()
    }
}

pub(super) async fn history(
    Extract(c): Extract<Shared>,
    headers: HeaderMap,
    Query(form): Query<HistoryForm>,
) -> Response {
    let Some((s, who)) = c.session(&headers) else {
        return to_login();
    };
    let r = reader(&s, &who);
    let fields = pages::HistoryFields {
        repository: &form.repository,
        environment: &form.environment,
        since: &form.since,
        until: &form.until,
    };
    let filter = match form.filter() {
        Ok(f) => f,
        Err(why) => {
            return page(
                StatusCode::BAD_REQUEST,
                pages::history(&r, &fields, &[], None, Some(&why)),
            );
        }
    };
    let listing = c
        .promotions
        .history(HistoryQuery {
            filter,
            after: form.after,
            limit: HISTORY_PAGE,
            newest_first: true,
        })
        .await;
    match listing {
        Ok(l) => {
            let next = l.next.map(|n| format!("/history?{}", form.next(n)));
            page(
                StatusCode::OK,
                pages::history(&r, &fields, &l.items, next.as_deref(), None),
            )
        }
        Err(e) => failure(Some(&r), e),
    }
}

#[derive(Deserialize, Default)]
pub(super) struct DeployedForm {
    #[serde(default)]
    at: String,
}

pub(super) async fn deployed(
    Extract(c): Extract<Shared>,
    headers: HeaderMap,
    Query(form): Query<DeployedForm>,
) -> Response {
    let Some((s, who)) = c.session(&headers) else {
        return to_login();
    };
    let r = reader(&s, &who);
    let at = match moment("at", &form.at) {
        Ok(at) => at,
        Err(why) => {
            return page(
                StatusCode::BAD_REQUEST,
                pages::deployed(&r, &form.at, &[], false, Some(&why)),
            );
        }
    };
    let (tags, more) = match c.promotions.moved_tags(DEPLOYED_SHOWN).await {
        Ok(t) => t,
        Err(e) => return failure(Some(&r), e),
    };
    let mut rows = Vec::with_capacity(tags.len());
    for (repository, environment) in tags {
        let record = match Repository::parse(&repository) {
            Ok(repo) => c.promotions.deployed(&repo, &environment, at).await,
            Err(e) => Err(Error::InvalidArgument {
                field: "repository",
                message: e.to_string(),
            }),
        };
        let record = match record {
            Ok(record) => Ok(Some(record)),
            Err(Error::NothingDeployed { .. }) => Ok(None),
            Err(e) => Err(refusal(e, "").1),
        };
        rows.push(pages::DeployedRow {
            repository,
            environment,
            record,
        });
    }
    page(
        StatusCode::OK,
        pages::deployed(&r, &form.at, &rows, more, None),
    )
}

fn document(json: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(json) {
        Ok(Value::Object(doc)) => Some(doc),
        _ => None,
    }
}

pub(super) async fn policy(Extract(c): Extract<Shared>, headers: HeaderMap) -> Response {
    let Some((s, who)) = c.session(&headers) else {
        return to_login();
    };
    let r = reader(&s, &who);
    let running = match c.promotions.policy(None).await {
        Ok(p) => p,
        Err(e) => return failure(Some(&r), e),
    };
    let Some(doc) = document(&running.canonical_json) else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::problem(
                Some(&r),
                "Policy",
                "the running policy is not a JSON object",
            ),
        );
    };
    let previous = match previous_policy(&c, &running.digest).await {
        Ok(Some(digest)) => match c.promotions.policy(Some(&digest)).await {
            Ok(p) => match document(&p.canonical_json) {
                Some(old) => pages::Previous::Diff {
                    changes: crate::config::reading::changes(&old, &doc),
                    policy: p,
                },
                None => pages::Previous::Unreadable(format!("{digest} is not a JSON object")),
            },
            Err(e) => pages::Previous::Unreadable(refusal(e, "").1),
        },
        Ok(None) => pages::Previous::None,
        Err(e) => pages::Previous::Unreadable(refusal(e, "").1),
    };
    let sections = crate::config::reading::sections(&doc);
    page(
        StatusCode::OK,
        pages::policy(&r, &running, &sections, &previous),
    )
}

/// The digest of the version in force before `running`: the newest
/// POLICY_CHANGED entry naming another digest, within the last
/// [`POLICY_LOOKBACK`] entries.
async fn previous_policy(c: &super::Console, running: &str) -> Result<Option<String>, Error> {
    let mut after = None;
    let mut seen = 0;
    while seen < POLICY_LOOKBACK {
        let page = c
            .promotions
            .history(HistoryQuery {
                filter: HistoryFilter::default(),
                after,
                limit: 1000,
                newest_first: true,
            })
            .await?;
        seen += page.items.len();
        for e in &page.items {
            if e.event.action == Action::PolicyChanged
                && let Some(digest) = e.event.attributes.get("policy")
                && digest != running
            {
                return Ok(Some(digest.clone()));
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(None),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_rfc3339_or_empty() {
        assert_eq!(moment("at", " ").unwrap(), None);
        let t = moment("at", "2026-11-26T14:32:00Z").unwrap().unwrap();
        assert_eq!(t.seconds, 1_795_703_520);
        assert!(moment("at", "yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn the_next_page_keeps_the_filters() {
        let f = HistoryForm {
            repository: "r.example/a b".into(),
            since: "2026-11-26T14:32:00Z".into(),
            ..HistoryForm::default()
        };
        assert_eq!(
            f.next(7),
            "repository=r.example%2Fa+b&since=2026-11-26T14%3A32%3A00Z&after=7"
        );
    }
}
