//! Who is acting and what an environment demands of a promotion: the
//! approval rules and the data the gates of [`super::gates`] evaluate.

use super::model::Time;
use jiff::civil;
use jiff::tz::TimeZone;
use std::fmt;
use std::time::Duration;

/// An authenticated caller. Built only from credentials, never from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The name the caller acted under (what the audit log records).
    pub name: String,
    pub groups: Vec<String>,
    /// The other names the same person acts under (`[[principal]] aliases`,
    /// and the principal an alias belongs to): separation of duties and
    /// "approved once per person" compare persons, not names.
    pub aliases: Vec<String>,
}

impl Principal {
    /// A principal with no other names.
    pub fn new(name: impl Into<String>, groups: Vec<String>) -> Self {
        Principal {
            name: name.into(),
            groups,
            aliases: Vec::new(),
        }
    }

    /// Whether `name` is this person: the name used or one of the others.
    pub fn is(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|a| a == name)
    }
}

/// A designated approver: a principal by name, or everyone in a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approver {
    Principal(String),
    Group(String),
}

impl Approver {
    /// `group:<g>` names a group; anything else a principal.
    pub fn parse(s: &str) -> Self {
        match s.strip_prefix("group:") {
            Some(g) => Approver::Group(g.to_owned()),
            None => Approver::Principal(s.to_owned()),
        }
    }

    /// Whether `p` is this member. A name matches the person under any of
    /// their names: bob's Slack or IdP alias is bob, as "approved once per
    /// person" counts him.
    pub fn matches(&self, p: &Principal) -> bool {
        match self {
            Approver::Principal(name) => p.is(name),
            Approver::Group(g) => p.groups.iter().any(|pg| pg == g),
        }
    }
}

/// `group:<g>` or the principal's name, as the config writes it.
pub fn describe(members: &[Approver]) -> String {
    if members.is_empty() {
        return "nobody".to_owned();
    }
    members
        .iter()
        .map(|m| match m {
            Approver::Principal(name) => name.clone(),
            Approver::Group(g) => format!("group:{g}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The gate in front of one environment's tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentPolicy {
    pub name: String,
    /// The tag this environment's promotions move.
    pub tag: String,
    /// An environment whose tag must already carry the digest.
    pub requires: Option<String>,
    pub approvers: Vec<Approver>,
    pub required_approvals: u32,
    pub allow_self_approval: bool,
    pub approval_ttl: Duration,
    /// How long an approved promotion may keep trying to move its tag;
    /// `None`: for as long as it takes.
    pub apply_deadline: Option<Duration>,
    /// Groups each of which must count at least one approver of a promotion
    /// before it is APPROVED; empty: no such gate.
    pub required_groups: Vec<String>,
    /// Checks whose latest report for the pinned digest must be PASSED;
    /// empty: no such gate.
    pub required_checks: Vec<String>,
    /// How long the digest must have carried the `requires` environment's
    /// tag (moved there by prodgate); `None`: no such gate.
    pub min_soak: Option<Duration>,
    /// When the tag may move; `None`: at any time (freezes still apply).
    pub window: Option<Window>,
    /// Who may override the window and soak gates (never the others).
    pub break_glass: Vec<Approver>,
    /// Approvals a rollback of this environment needs.
    pub rollback_approvals: u32,
    /// The freezes that apply to this environment, already resolved from
    /// the top-level and project configuration.
    pub freezes: Vec<Freeze>,
    /// When the drift watch finds the tag moved behind prodgate's back, push
    /// the approved manifest back under it.
    pub restore_on_drift: bool,
    /// Keys one of which must have signed the digest (cosign); empty: no
    /// such gate.
    pub signature_keys: Vec<super::signature::SignatureKey>,
    /// After a promotion is applied, push its record as an OCI artifact
    /// referring to the promoted digest (see `attach`).
    pub attach_record: bool,
    /// After a promotion is applied, sign an in-toto attestation (a SLSA
    /// VSA) of it and store it under the image's cosign attestation tag
    /// (see `attest` and `attach`).
    pub attest: bool,
    /// How long a promotion that has its approvals may wait for the other
    /// gates (WAITING), counted from when it started waiting, before it
    /// ends EXPIRED.
    pub wait_ttl: Duration,
}

impl EnvironmentPolicy {
    pub fn is_approver(&self, p: &Principal) -> bool {
        self.approvers.iter().any(|a| a.matches(p))
    }

    /// Whether `p` is named by `break_glass`. The caller still demands a
    /// non-empty reason.
    pub fn may_break_glass(&self, p: &Principal) -> bool {
        self.break_glass.iter().any(|a| a.matches(p))
    }
}

/// The weekly deploy window of an environment, in its time zone.
///
/// A window opens on each allowed day at `hours.start` (local time) and
/// closes at the next `hours.end`: the same day when the end is later, else
/// the next day (so `fri 22:00-02:00` is Friday night into Saturday, and
/// `00:00-00:00` is the whole day). Without hours it is open all of every
/// allowed day. Local times follow the zone's clock, daylight saving time
/// included: on the day the clock skips the start, the window opens at
/// the jump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The days a window opens on; empty: every day.
    pub days: Vec<civil::Weekday>,
    /// `None`: all day.
    pub hours: Option<Hours>,
    pub time_zone: Zone,
}

/// `start-end` in local time, end exclusive; an end at or before the start
/// crosses midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    pub start: civil::Time,
    pub end: civil::Time,
}

impl Hours {
    /// Whether the window runs past midnight into the next day.
    pub fn crosses_midnight(&self) -> bool {
        self.end <= self.start
    }
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |t: civil::Time| format!("{:02}:{:02}", t.hour(), t.minute());
        write!(f, "{}-{}", hm(self.start), hm(self.end))
    }
}

/// An IANA time zone, resolved once (from jiff's bundled database) and
/// compared by its name: jiff's `TimeZone` has no equality of its own.
#[derive(Debug, Clone)]
pub struct Zone {
    name: String,
    tz: TimeZone,
}

impl Zone {
    /// `name` as in `Europe/Berlin`; an error names what jiff could not find.
    pub fn get(name: &str) -> Result<Zone, jiff::Error> {
        Ok(Zone {
            name: name.to_owned(),
            tz: TimeZone::get(name)?,
        })
    }

    pub fn utc() -> Zone {
        Zone {
            name: "UTC".to_owned(),
            tz: TimeZone::UTC,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Zone {}

/// A period in which an environment's tag does not move (unless by
/// break-glass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freeze {
    pub start: Time,
    /// Exclusive.
    pub end: Time,
    pub reason: String,
}

impl Freeze {
    pub fn contains(&self, t: Time) -> bool {
        self.start <= t && t < self.end
    }
}

#[cfg(test)]
mod person_tests {
    use super::*;

    #[test]
    fn a_name_matches_the_person_under_any_of_their_names() {
        let mut bob_on_slack = Principal::new("slack:U0BOB", vec![]);
        bob_on_slack.aliases = vec!["bob".into()];
        assert!(Approver::parse("bob").matches(&bob_on_slack));
        assert!(Approver::parse("slack:U0BOB").matches(&bob_on_slack));
        assert!(!Approver::parse("carol").matches(&bob_on_slack));
        assert!(!Approver::parse("group:bob").matches(&bob_on_slack));
        // Without the alias known, a name is only itself.
        assert!(!Approver::parse("bob").matches(&Principal::new("slack:U0BOB", vec![])));
    }
}
