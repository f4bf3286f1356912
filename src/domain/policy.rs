//! Who is acting and what an environment demands of a promotion.

use std::time::Duration;

/// An authenticated caller. Built only from credentials, never from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub groups: Vec<String>,
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

    pub fn matches(&self, p: &Principal) -> bool {
        match self {
            Approver::Principal(name) => *name == p.name,
            Approver::Group(g) => p.groups.iter().any(|pg| pg == g),
        }
    }
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
}

impl EnvironmentPolicy {
    pub fn is_approver(&self, p: &Principal) -> bool {
        self.approvers.iter().any(|a| a.matches(p))
    }
}
