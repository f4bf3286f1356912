//! A release on the console: its page, `/releases/{id}` (the whole: state,
//! reason, approvals; then each member as its promotion's page shows it:
//! state, digest, gates, checks and what it changes), and a release as one
//! row of the lists on `/`. Read through the same use cases as GetRelease;
//! its buttons and change stream are the promotion page's handlers on
//! `/releases/{id}/…` ([`super::Subject`]), deciding every member at once.

use super::pages::{self, Carried, MemberFacts, Reader, WhatChanges};
use super::{
    Console, Shared, Subject, actions, failure, member_facts, not_found, page, promotion_id, reader,
};
use crate::domain::model::Promotion;
use crate::domain::policy::Principal;
use crate::error::Error;
use axum::http::StatusCode;
use axum::response::Response;
use std::collections::HashSet;
use std::sync::Arc;

/// The release page of `raw_id`, with `error` above it; 404 when it names
/// no release (a promotion of its own, or a member other than the first).
pub(super) async fn render(
    c: &Shared,
    s: &super::Session,
    who: &Principal,
    raw_id: &str,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let r = reader(s, who);
    let Some(id) = promotion_id(raw_id) else {
        return not_found(&r, Subject::Release);
    };
    let release = match c.promotions.release(id).await {
        Ok(release) => release,
        Err(e) => return refused(&r, e),
    };
    let facts = facts_of(c, &release.members).await;
    let actions = actions(c, who, &release.members);
    page(
        status,
        pages::release(
            &r,
            &pages::ReleaseView {
                release: &release,
                facts: &facts,
                actions: &actions,
                error,
            },
        ),
    )
}

/// A release that could not be read: 404 when the id names none.
pub(super) fn refused(r: &Reader<'_>, e: Error) -> Response {
    match e {
        Error::PromotionNotFound(_) => not_found(r, Subject::Release),
        e => failure(Some(r), e),
    }
}

/// Each member's facts, in order, read at once: a release of many images
/// waits for its slowest registry read, not for their sum.
async fn facts_of(c: &Shared, members: &[Promotion]) -> Vec<MemberFacts> {
    let reads: Vec<_> = members
        .iter()
        .map(|m| {
            let (c, m) = (Arc::clone(c), m.clone());
            tokio::spawn(async move { member_facts(&c, &m).await })
        })
        .collect();
    let mut facts = Vec::with_capacity(reads.len());
    for read in reads {
        facts.push(read.await.unwrap_or_else(|e| unread(&e.to_string())));
    }
    facts
}

/// A member whose facts could not be read (its read panicked).
fn unread(why: &str) -> MemberFacts {
    MemberFacts {
        gates: None,
        checks: Err(why.to_owned()),
        changes: WhatChanges {
            now: Carried::Unknown(why.to_owned()),
            candidate: Err(why.to_owned()),
        },
    }
}

/// `promotions` as the rows of a list on `/`, in their order: a release's
/// members as one row where the first of them appears, the release read
/// whole (its state and every member, listed or not).
pub(super) async fn rows(
    c: &Console,
    promotions: Vec<Promotion>,
) -> Result<Vec<pages::Row>, Error> {
    let mut rows = Vec::with_capacity(promotions.len());
    let mut seen = HashSet::new();
    for p in promotions {
        match p.release_id {
            None => rows.push(pages::Row::Promotion(Box::new(p))),
            Some(rid) if seen.insert(rid) => {
                rows.push(pages::Row::Release(c.promotions.release(rid).await?));
            }
            Some(_) => {}
        }
    }
    Ok(rows)
}
