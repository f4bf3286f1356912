//! A release: several promotions to one environment, requested together
//! and decided as one. It has no record of its own: its members carry its
//! id ([`Promotion::release_id`], the first member's id), and everything a
//! release shows is derived from them here.

use super::machine::{self, Outcome};
use super::model::{Action, Approval, Promotion, PromotionId, SERVICE_ACTOR, State, Time};

/// The audit attribute naming the release on each member's entries.
pub const RELEASE_ATTRIBUTE: &str = "release";

/// Names the release on `o`'s entry when its promotion is a member of one.
pub fn mark(o: &mut Outcome) {
    if let (Some(rid), Some(e)) = (o.promotion.release_id, o.event.as_mut()) {
        e.attributes
            .insert(RELEASE_ATTRIBUTE.to_owned(), rid.to_string());
    }
}

/// A release superseded in any member is superseded whole: `sibling`, an
/// open member of the release `member` belongs to, ends SUPERSEDED with
/// it, by the same `newer` promotion (of `member`'s tag). `None` when
/// `sibling` is no open member of that release.
pub fn superseded_with(
    sibling: &Promotion,
    member: &Promotion,
    newer: &Promotion,
    now: Time,
) -> Option<Outcome> {
    let open = !sibling.state.is_terminal();
    let same_release = sibling.release_id.is_some() && sibling.release_id == member.release_id;
    if !open || !same_release || sibling.id == member.id {
        return None;
    }
    let mut next = sibling.clone();
    next.state = State::Superseded;
    next.superseded_by = Some(newer.id);
    next.updated_at = now;
    let comment = format!(
        "superseded with its release {}: member {} ({}) was superseded by promotion {} ({})",
        member.release_id.unwrap_or(member.id),
        member.id,
        member.repository,
        newer.id,
        newer.digest
    );
    let mut o = Outcome {
        event: Some(machine::entry(
            &next,
            Action::Superseded,
            SERVICE_ACTOR,
            &comment,
        )),
        promotion: next,
    };
    mark(&mut o);
    Some(o)
}

/// The fewest components a release has (one is a promotion).
pub const MIN_COMPONENTS: usize = 2;
/// The most: each member is pinned, gated and moved on its own.
pub const MAX_COMPONENTS: usize = 50;

/// A release and its members, in the order requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub id: PromotionId,
    pub members: Vec<Promotion>,
}

impl Release {
    /// The release of `members` (its first member's id names it). `None`
    /// when they are none or are not all members of that release.
    pub fn of(members: Vec<Promotion>) -> Option<Release> {
        let id = members.first()?.id;
        members
            .iter()
            .all(|m| m.release_id == Some(id))
            .then_some(Release { id, members })
    }

    fn first(&self) -> &Promotion {
        // `of` refuses an empty list.
        &self.members[0]
    }

    pub fn environment(&self) -> &str {
        &self.first().environment
    }

    pub fn requested_by(&self) -> &str {
        &self.first().requested_by
    }

    pub fn reason(&self) -> &str {
        &self.first().reason
    }

    /// Every member carries the release's approvals.
    pub fn approvals(&self) -> &[Approval] {
        &self.first().approvals
    }

    pub fn created_at(&self) -> Time {
        self.first().created_at
    }

    /// The latest change of any member.
    pub fn updated_at(&self) -> Time {
        self.members
            .iter()
            .map(|m| m.updated_at)
            .max()
            .unwrap_or(self.first().updated_at)
    }

    /// The first member's failure message that is not empty.
    pub fn failure_message(&self) -> &str {
        self.members
            .iter()
            .map(|m| m.failure_message.as_str())
            .find(|m| !m.is_empty())
            .unwrap_or("")
    }

    /// The state of the whole: [`state_of`] the members'.
    pub fn state(&self) -> State {
        state_of(self.members.iter().map(|m| m.state))
    }
}

/// The state of a release whose members are in `states`: theirs when they
/// agree; otherwise FAILED if any failed, else the ending of a member that
/// ended otherwise than PROMOTED, else the least advanced one's
/// (PENDING_APPROVAL, WAITING, APPROVED, PROMOTED in that order).
pub fn state_of(states: impl IntoIterator<Item = State>) -> State {
    let states: Vec<State> = states.into_iter().collect();
    if states.contains(&State::Failed) {
        return State::Failed;
    }
    if let Some(ended) = states
        .iter()
        .find(|s| s.is_terminal() && **s != State::Promoted)
    {
        return *ended;
    }
    let rank = |s: &State| match s {
        State::PendingApproval => 0,
        State::Waiting => 1,
        State::Approved => 2,
        _ => 3,
    };
    states
        .iter()
        .min_by_key(|s| rank(s))
        .copied()
        .unwrap_or(State::PendingApproval)
}

/// Whether a release's tags may move now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// Every member is approved (none ended): move them all, in order.
    Go,
    /// A member is still undecided: its change brings the release back.
    Wait,
    /// A member ended otherwise than PROMOTED: the release does not move,
    /// and its APPROVED members end FAILED with this message.
    Stop(String),
}

/// The turn of the release whose members, in order, are `members` (id,
/// state, repository): tags move only once the whole release is approved.
pub fn turn(members: &[(PromotionId, State, &str)]) -> Turn {
    if let Some((ended, state, repository)) = members
        .iter()
        .find(|(_, s, _)| s.is_terminal() && *s != State::Promoted)
    {
        return Turn::Stop(format!(
            "release {}: member {ended} ({repository}) ended {}, so the release does not move",
            members.first().map_or(*ended, |m| m.0),
            state.label()
        ));
    }
    if members.iter().any(|(_, s, _)| s.is_undecided()) {
        return Turn::Wait;
    }
    if members.iter().any(|(_, s, _)| *s == State::Approved) {
        Turn::Go
    } else {
        Turn::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    #[test]
    fn the_state_of_the_whole_is_the_least_advanced_unless_one_ended_otherwise() {
        assert_eq!(state_of([Promoted, Promoted]), Promoted);
        assert_eq!(state_of([Approved, Promoted, Approved]), Approved);
        assert_eq!(state_of([Waiting, Approved]), Waiting);
        assert_eq!(state_of([PendingApproval, Waiting]), PendingApproval);
        assert_eq!(state_of([Promoted, Failed, Promoted]), Failed);
        assert_eq!(state_of([Superseded, Failed]), Failed);
        assert_eq!(state_of([Promoted, Superseded]), Superseded);
        assert_eq!(state_of([Cancelled, Cancelled]), Cancelled);
        assert_eq!(state_of([Approved, Expired]), Expired);
    }

    #[test]
    fn a_member_superseded_takes_its_open_siblings_with_it() {
        let now = Time {
            seconds: 1_800_000_000,
            nanos: 0,
        };
        let member = |id: PromotionId, repo: &str, state: State| Promotion {
            id,
            repository: repo.into(),
            state,
            release_id: Some(7),
            ..machine::tests::pending(1)
        };
        let newer = Promotion {
            release_id: None,
            digest: "sha256:2".into(),
            ..member(20, "reg.test/api", Approved)
        };
        let api = member(7, "reg.test/api", Superseded);
        let web = member(8, "reg.test/web", Waiting);
        let o = superseded_with(&web, &api, &newer, now).expect("an open sibling");
        assert_eq!(o.promotion.state, Superseded);
        assert_eq!(o.promotion.superseded_by, Some(20));
        let e = o.event.expect("an entry");
        assert_eq!(e.action, Action::Superseded);
        assert_eq!(e.attributes[RELEASE_ATTRIBUTE], "7");
        assert!(
            e.comment.contains("member 7 (reg.test/api)"),
            "{}",
            e.comment
        );
        // Not a sibling, already ended, or the member itself: nothing.
        let mut other = member(9, "reg.test/db", Approved);
        other.release_id = Some(9);
        assert_eq!(superseded_with(&other, &api, &newer, now), None);
        assert_eq!(
            superseded_with(&member(8, "reg.test/web", Promoted), &api, &newer, now),
            None
        );
        assert_eq!(superseded_with(&api, &api, &newer, now), None);
        let single = Promotion {
            release_id: None,
            ..member(8, "reg.test/web", Approved)
        };
        let lone = Promotion {
            release_id: None,
            ..api.clone()
        };
        assert_eq!(superseded_with(&single, &lone, &newer, now), None);
    }

    #[test]
    fn a_release_moves_once_every_member_is_approved_and_never_after_one_ended() {
        let m = |states: [State; 3]| -> Vec<(PromotionId, State, &'static str)> {
            states
                .iter()
                .enumerate()
                .map(|(i, s)| (1 + i as PromotionId, *s, "reg.test/app"))
                .collect()
        };
        assert_eq!(turn(&m([Approved, Approved, Approved])), Turn::Go);
        assert_eq!(turn(&m([Approved, Waiting, Approved])), Turn::Wait);
        assert_eq!(turn(&m([Approved, Approved, PendingApproval])), Turn::Wait);
        assert_eq!(turn(&m([Promoted, Promoted, Promoted])), Turn::Wait);
        match turn(&m([Approved, Superseded, Approved])) {
            Turn::Stop(why) => assert!(
                why.contains("member 2") && why.contains("SUPERSEDED"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
