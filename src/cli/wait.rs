//! `--wait`: follows a promotion through the WatchPromotion stream until it
//! reaches a terminal state, printing each change, and turns the end state
//! into the exit code a CI job needs (0 only for PROMOTED).

use super::CliError;
use super::client::Client;
use super::output::Printer;
use super::table::state_label;
use crate::pb::{self, PromotionState};

/// What a line is printed for: a new state, or an approval that moved a
/// multi-approval promotion closer (1/2 -> 2/2) without changing its state.
/// Other field changes (timestamps) are not progress anyone waits for.
fn milestone(p: &pb::Promotion) -> (i32, usize) {
    (p.state, p.approvals.len())
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

/// `first` is the answer already printed (of request or approve). The
/// stream starts with the current state, which usually repeats `first`, so
/// only milestones not yet printed are shown.
pub async fn follow(
    c: &mut Client,
    out: &mut Printer,
    first: pb::Promotion,
) -> Result<(), CliError> {
    let mut last = first;
    if !is_terminal(last.state) {
        let mut stream = c
            .api
            .watch_promotion(pb::WatchPromotionRequest {
                promotion_id: last.id.clone(),
            })
            .await?
            .into_inner();
        while !is_terminal(last.state) {
            let Some(p) = stream.message().await? else {
                return Err(CliError::WatchEnded(last.id));
            };
            if milestone(&p) != milestone(&last) {
                out.progress(&p)?;
            }
            last = p;
        }
    }
    if last.state == PromotionState::Promoted as i32 {
        Ok(())
    } else {
        Err(CliError::NotPromoted {
            state: state_label(last.state),
            id: last.id,
            detail: last.failure_message,
        })
    }
}
