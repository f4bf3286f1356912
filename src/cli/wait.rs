//! `--wait`: follows a promotion through the WatchPromotion stream until it
//! reaches a terminal state, printing each change, and turns the end state
//! into the exit code a CI job needs (0 only for PROMOTED). A server that
//! restarts or drops the connection meanwhile is watched again, with capped
//! backoff, for as long as `--timeout` allows (without one, until it ends),
//! with the token `--token-file` holds by then. Any other failure is
//! [`CliError::FollowFailed`] ([`failed_after`]): the promotion exists.

use super::CliError;
use super::client::Client;
use super::output::Printer;
use super::table::state_label;
use crate::backoff::{Delays, jitter};
use crate::pb::{self, PromotionState};
use std::time::{Duration, Instant};

/// First pause before watching again after losing the server; doubled after
/// each failed attempt up to [`MAX_RETRY`]. A restart takes about a second,
/// so the first attempts come quickly; an outage of minutes costs one
/// attempt every few seconds.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// `--timeout` of a `--wait`: when to give up.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub deadline: Instant,
    /// The `--timeout` given, for the message.
    pub after: Duration,
}

/// What a line is printed for: a new state, an approval that moved a
/// multi-approval promotion closer (1/2 -> 2/2) without changing its state,
/// a gate a WAITING promotion no longer waits for, or a different tag-move
/// error while APPROVED. Other field changes (timestamps, the attempt
/// count) are not progress anyone waits for.
fn milestone(p: &pb::Promotion) -> (i32, usize, &[String], &str) {
    (
        p.state,
        p.approvals.len(),
        &p.waiting_for,
        &p.last_apply_error,
    )
}

fn is_terminal(state: i32) -> bool {
    matches!(
        PromotionState::try_from(state),
        Ok(PromotionState::Promoted
            | PromotionState::Rejected
            | PromotionState::Cancelled
            | PromotionState::Expired
            | PromotionState::Failed
            | PromotionState::Superseded)
    )
}

/// `first` is the answer already printed (of request or approve). Each
/// stream starts with the current state, which usually repeats the last
/// one printed, so only milestones not yet printed are shown.
pub async fn follow(
    c: &mut Client,
    out: &mut Printer,
    first: pb::Promotion,
    limit: Option<Limit>,
) -> Result<(), CliError> {
    let mut last = first;
    let mut retry = Delays::new(FIRST_RETRY, MAX_RETRY);
    let mut lost = false;
    while !is_terminal(last.state) {
        let mut heard = false;
        let watched = watch(c, out, &mut last, &mut heard);
        let result = match limit {
            Some(l) => tokio::time::timeout_at(l.deadline.into(), watched)
                .await
                .unwrap_or_else(|_| Err(timed_out(&last, l))),
            None => watched.await,
        };
        if heard {
            retry.reset();
            lost = false;
        }
        match result {
            Ok(()) => {}
            Err(e) if is_interruption(&e) => {
                if !lost {
                    lost = true;
                    // stderr, so that `-o json` stdout stays JSON lines.
                    eprintln!(
                        "prodgate: lost the watch of promotion {} ({}); watching again{}",
                        last.id,
                        crate::telemetry::visible(&e.to_string()),
                        if limit.is_some() {
                            " until --timeout"
                        } else {
                            ""
                        }
                    );
                }
                let pause = jitter(retry.next_delay());
                match limit {
                    Some(l) if Instant::now() + pause >= l.deadline => {
                        tokio::time::sleep_until(l.deadline.into()).await;
                        return Err(timed_out(&last, l));
                    }
                    _ => tokio::time::sleep(pause).await,
                }
            }
            Err(e) => return Err(e),
        }
    }
    if last.state == PromotionState::Promoted as i32 {
        Ok(())
    } else {
        Err(CliError::NotPromoted {
            state: end_state(&last),
            id: last.id,
            detail: last.failure_message,
        })
    }
}

/// What a `--wait` that failed after promotion `id` was known exits with:
/// an end state other than PROMOTED (5) and `--timeout` (6) are answers to
/// the wait; anything else (a refusal when watching again, such as an
/// expired token, an unreadable token file, stdout closed) leaves a
/// promotion that exists and goes on, and says so (8).
pub fn failed_after(id: &str, e: CliError) -> CliError {
    match e {
        CliError::NotPromoted { .. } | CliError::WaitTimedOut { .. } => e,
        error => CliError::FollowFailed {
            id: id.to_owned(),
            error: Box::new(error),
        },
    }
}

/// One WatchPromotion stream, until `last` is terminal (`Ok`) or the stream
/// fails or ends. `heard` says whether the server sent anything.
async fn watch(
    c: &mut Client,
    out: &mut Printer,
    last: &mut pb::Promotion,
    heard: &mut bool,
) -> Result<(), CliError> {
    // An OIDC token may expire during a long wait: the job that refreshes
    // it writes the new one to the same file.
    c.reread_token()?;
    let req = pb::WatchPromotionRequest {
        promotion_id: last.id.clone(),
    };
    let mut stream = c.api.watch_promotion(req).await?.into_inner();
    while let Some(p) = stream.message().await? {
        *heard = true;
        if milestone(&p) != milestone(last) {
            out.progress(&p)?;
        }
        *last = p;
        if is_terminal(last.state) {
            return Ok(());
        }
    }
    Err(CliError::WatchEnded(last.id.clone()))
}

/// Worth watching again: the connection broke or could not be made, the
/// server said UNAVAILABLE (draining for a restart), or it closed the stream
/// early. A refusal (NOT_FOUND, PERMISSION_DENIED, …) ends the wait.
fn is_interruption(e: &CliError) -> bool {
    match e {
        CliError::WatchEnded(_) => true,
        CliError::Status(_) => e.exit() == super::Exit::Unreachable,
        _ => false,
    }
}

fn timed_out(last: &pb::Promotion, l: Limit) -> CliError {
    CliError::WaitTimedOut {
        id: last.id.clone(),
        state: format!(
            "{} (approvals {}/{})",
            end_state(last),
            last.approvals.len(),
            last.required_approvals
        ),
        after: l.after,
    }
}

/// The state's label, with what superseded it.
fn end_state(p: &pb::Promotion) -> String {
    let label = state_label(p.state);
    if p.superseded_by.is_empty() {
        label
    } else {
        format!("{label} by promotion {}", p.superseded_by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Exit;

    #[test]
    fn a_wait_goes_on_through_waiting_and_approved() {
        for open in [
            PromotionState::PendingApproval,
            PromotionState::Waiting,
            PromotionState::Approved,
        ] {
            assert!(!is_terminal(open as i32), "{open:?}");
        }
        assert!(is_terminal(PromotionState::Promoted as i32));
        // A gate that passed while still WAITING is progress worth a line.
        let before = pb::Promotion {
            state: PromotionState::Waiting as i32,
            waiting_for: vec!["soak".into(), "window".into()],
            ..Default::default()
        };
        let after = pb::Promotion {
            waiting_for: vec!["window".into()],
            ..before.clone()
        };
        assert_ne!(milestone(&before), milestone(&after));
    }

    #[test]
    fn only_an_end_state_and_the_timeout_are_answers_to_a_wait() {
        let end = CliError::NotPromoted {
            id: "3".into(),
            state: "REJECTED".into(),
            detail: String::new(),
        };
        assert_eq!(failed_after("3", end).exit(), Exit::NotPromoted);
        let timed_out = CliError::WaitTimedOut {
            id: "3".into(),
            state: "PENDING_APPROVAL".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(failed_after("3", timed_out).exit(), Exit::WaitTimedOut);
        // A refusal, a token file gone, an ended stream, a closed stdout:
        // the promotion is there all the same.
        for e in [
            CliError::Status(tonic::Status::unauthenticated("unknown token")),
            CliError::Status(tonic::Status::unavailable("draining")),
            CliError::EmptyToken {
                from: "--token-file t".into(),
            },
            CliError::WatchEnded("3".into()),
            CliError::Output(std::io::ErrorKind::BrokenPipe.into()),
        ] {
            let shown = e.to_string();
            match failed_after("3", e) {
                CliError::FollowFailed { id, error } => {
                    assert_eq!((id.as_str(), error.to_string()), ("3", shown));
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
