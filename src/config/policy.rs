//! The checks of an environment's gate keys (declared once in
//! [`super::keys`]; `[[project.environment]]` overrides only the keys it
//! gives), the window they make, `[[freeze]]`, and the checks that refuse
//! an effective policy no promotion could ever pass.

use super::identity::{IdentityConfig, IdentityRule, Reach};
use super::keys::{GateKeys, set_given};
use super::raw::RawFreeze;
use super::validate::{Cx, check_name, duration};
use super::{ConfigError, PrincipalConfig, invalid};
use crate::domain::gates::weekday_name;
use crate::domain::model::Time;
use crate::domain::policy::{Approver, EnvironmentPolicy, Freeze, Hours, Principal, Window, Zone};
use crate::domain::signature::SignatureKey;
use jiff::civil;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// Sets on `policy` the gate keys `keys` gives: every key of a top-level
/// environment, or the overrides of a `[[project.environment]]`. `prefix`
/// is the section's key, e.g. `project[0].environment[1]`.
/// `inherited` are the top-level environment's own keys when a project
/// overrides it, for what depends on what was written rather than on the
/// policy it made: `rollback_approvals` (absent both, the effective
/// `required_approvals`) and `time_zone` (which makes no window on its
/// own, so the policy cannot carry it).
pub(super) fn apply_policy_keys(
    prefix: &str,
    keys: &GateKeys<'_>,
    inherited: Option<&GateKeys<'_>>,
    people: &People,
    policy: &mut EnvironmentPolicy,
    cx: &mut Cx,
) -> Result<(), ConfigError> {
    let written = keys.or(inherited.copied().unwrap_or_default());
    set_given(prefix, keys, &mut KeyCx { people, cx }, policy)?;
    if written.rollback_approvals.is_none() {
        policy.rollback_approvals = policy.required_approvals;
    }
    window(prefix, keys, &written, policy)
}

/// The window keys `keys` gives, over the window `policy` has; `written`
/// is what the project and its top-level environment say together.
fn window(
    prefix: &str,
    keys: &GateKeys<'_>,
    written: &GateKeys<'_>,
    policy: &mut EnvironmentPolicy,
) -> Result<(), ConfigError> {
    if keys.allowed_days.is_none() && keys.allowed_hours.is_none() && keys.time_zone.is_none() {
        return Ok(());
    }
    let key = |field: &str| format!("{prefix}.{field}");
    // Each window key overrides on its own: a project that gives only
    // `allowed_hours` keeps the top-level days and time zone.
    let mut w = policy.window.clone().unwrap_or(Window {
        days: Vec::new(),
        hours: None,
        time_zone: Zone::utc(),
    });
    if let Some(days) = keys.allowed_days {
        w.days = weekdays(&key("allowed_days"), days)?;
    }
    if let Some(hours) = keys.allowed_hours {
        w.hours = Some(parse_hours(&key("allowed_hours"), hours)?);
    }
    if let Some(zone) = written.time_zone {
        w.time_zone = Zone::get(zone).map_err(|e| {
            invalid(
                key("time_zone"),
                format!("{zone:?} is not an IANA time zone like \"Europe/Berlin\": {e}"),
            )
        })?;
    }
    // A time zone alone restricts nothing.
    policy.window = (!w.days.is_empty() || w.hours.is_some()).then_some(w);
    Ok(())
}

/// What the checks of the gate keys ([`super::keys`]) may read besides
/// the value: who exists, and the validation's context (files, warnings).
pub(super) struct KeyCx<'a> {
    pub people: &'a People,
    pub cx: &'a mut Cx,
}

/// A key whose value is the policy's as written (a count, a switch).
pub(super) fn as_written<T: Clone>(
    _key: &str,
    value: &T,
    _: &mut KeyCx<'_>,
) -> Result<T, ConfigError> {
    Ok(value.clone())
}

/// A duration like `"24h"`; zero is refused.
pub(super) fn positive_duration(
    key: &str,
    value: &str,
    _: &mut KeyCx<'_>,
) -> Result<Duration, ConfigError> {
    duration(key, Some(value), Duration::ZERO)
}

/// `min_soak`: zero is refused, since "no soak" is said by leaving the key
/// out.
pub(super) fn soak(
    key: &str,
    value: &str,
    cx: &mut KeyCx<'_>,
) -> Result<Option<Duration>, ConfigError> {
    positive_duration(key, value, cx).map(Some)
}

/// `approvers`: principals by name and groups as `group:<g>`; whether
/// they exist is checked with the whole policy (`policy_can_pass`).
pub(super) fn approver_list(
    key: &str,
    list: &[String],
    _: &mut KeyCx<'_>,
) -> Result<Vec<Approver>, ConfigError> {
    for (j, a) in list.iter().enumerate() {
        check_name(&format!("{key}[{j}]"), a)?;
    }
    Ok(list.iter().map(|a| Approver::parse(a)).collect())
}

/// `break_glass`: principals and groups who exist.
pub(super) fn break_glass(
    key: &str,
    list: &[String],
    cx: &mut KeyCx<'_>,
) -> Result<Vec<Approver>, ConfigError> {
    members(key, list, cx.people, cx.cx)
}

/// `signature_keys`: PEM public keys (ECDSA P-256 or Ed25519), read now so
/// that a missing or foreign file stops the start, each key once. A file
/// absent while only checking the config is left out (with the warning
/// [`Cx::read`] gives).
pub(super) fn signature_keys(
    key: &str,
    paths: &[PathBuf],
    cx: &mut KeyCx<'_>,
) -> Result<Vec<SignatureKey>, ConfigError> {
    let mut out: Vec<SignatureKey> = Vec::new();
    for (j, path) in paths.iter().enumerate() {
        let k = format!("{key}[{j}]");
        let Some(pem) = cx.cx.read(&k, path)? else {
            continue;
        };
        let parsed = SignatureKey::from_pem(&pem)
            .map_err(|e| invalid(&k, format!("{} {e}", path.display())))?;
        if out.iter().any(|o| o.fingerprint == parsed.fingerprint) {
            return Err(invalid(
                k,
                format!(
                    "{} is a key listed twice ({})",
                    path.display(),
                    parsed.fingerprint
                ),
            ));
        }
        out.push(parsed);
    }
    Ok(out)
}

/// `required_groups`: plain group names, each once.
pub(super) fn group_names(
    key: &str,
    groups: &[String],
    _: &mut KeyCx<'_>,
) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    for (j, g) in groups.iter().enumerate() {
        let k = format!("{key}[{j}]");
        check_name(&k, g)?;
        if let Some(bare) = g.strip_prefix("group:") {
            return Err(invalid(
                k,
                format!("{g:?}: required_groups lists groups only; write {bare:?}"),
            ));
        }
        if out.contains(g) {
            return Err(invalid(k, format!("{g:?} is listed twice")));
        }
        out.push(g.clone());
    }
    Ok(out)
}

/// `required_checks`: names as ReportCheck accepts them
/// (`[a-z0-9][a-z0-9._-]{0,62}`), each once.
pub(super) fn check_names(
    key: &str,
    checks: &[String],
    _: &mut KeyCx<'_>,
) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    for (j, c) in checks.iter().enumerate() {
        let k = format!("{key}[{j}]");
        let b = c.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|x| {
                x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-')
            });
        if !ok {
            return Err(invalid(
                k,
                format!(
                    "{c:?} is not a check name: 1 to 63 of [a-z0-9._-], starting with a letter or digit"
                ),
            ));
        }
        if out.contains(c) {
            return Err(invalid(k, format!("{c:?} is listed twice")));
        }
        out.push(c.clone());
    }
    Ok(out)
}

const WEEKDAYS: [civil::Weekday; 7] = [
    civil::Weekday::Monday,
    civil::Weekday::Tuesday,
    civil::Weekday::Wednesday,
    civil::Weekday::Thursday,
    civil::Weekday::Friday,
    civil::Weekday::Saturday,
    civil::Weekday::Sunday,
];

/// `allowed_days = ["mon", …]`.
fn weekdays(key: &str, days: &[String]) -> Result<Vec<civil::Weekday>, ConfigError> {
    if days.is_empty() {
        return Err(invalid(
            key,
            "is empty: list the days deploys may happen, or remove the key for every day",
        ));
    }
    let mut out = Vec::new();
    for (j, d) in days.iter().enumerate() {
        let k = format!("{key}[{j}]");
        let day = WEEKDAYS
            .into_iter()
            .find(|w| weekday_name(*w) == d)
            .ok_or_else(|| {
                invalid(
                    &k,
                    format!(
                        "{d:?} is not one of {}",
                        WEEKDAYS.map(weekday_name).join(", ")
                    ),
                )
            })?;
        if out.contains(&day) {
            return Err(invalid(k, format!("{d:?} is listed twice")));
        }
        out.push(day);
    }
    Ok(out)
}

/// `allowed_hours = "09:00-17:00"`: 24-hour `HH:MM`, end exclusive; an end
/// at or before the start runs past midnight.
fn parse_hours(key: &str, text: &str) -> Result<Hours, ConfigError> {
    let bad = || {
        invalid(
            key,
            format!(
                "{text:?} is not hours like \"09:00-17:00\" (24-hour HH:MM-HH:MM; an end before \
                 the start runs past midnight)"
            ),
        )
    };
    let hm = |s: &str| -> Option<civil::Time> {
        let (h, m) = s.split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
        civil::Time::new(h, m, 0, 0).ok()
    };
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    Ok(Hours {
        start: hm(start).ok_or_else(bad)?,
        end: hm(end).ok_or_else(bad)?,
    })
}

/// Every freeze of `raw` (`[[freeze]]`, or a project's `[[project.freeze]]`,
/// `section` saying which), added to the environments it names.
pub(super) fn add_freezes(
    section: &str,
    raw: &[RawFreeze],
    environments: &mut [EnvironmentPolicy],
) -> Result<(), ConfigError> {
    for (i, f) in raw.iter().enumerate() {
        let key = |field: &str| format!("{section}[{i}].{field}");
        let instant = |field: &str, text: &str| -> Result<Time, ConfigError> {
            let ts: jiff::Timestamp = text.parse().map_err(|e| {
                invalid(
                    key(field),
                    format!("{text:?} is not an RFC 3339 time like \"2026-12-20T00:00:00Z\": {e}"),
                )
            })?;
            let (mut seconds, mut nanos) = (ts.as_second(), ts.subsec_nanosecond());
            if nanos < 0 {
                seconds -= 1;
                nanos += 1_000_000_000;
            }
            Ok(Time {
                seconds,
                nanos: u32::try_from(nanos).unwrap_or(0),
            })
        };
        let start = instant("start", &f.start)?;
        let end = instant("end", &f.end)?;
        if end <= start {
            return Err(invalid(
                key("end"),
                format!(
                    "{:?} is not after start {:?} (end is exclusive)",
                    f.end, f.start
                ),
            ));
        }
        if f.reason.trim().is_empty() {
            return Err(invalid(
                key("reason"),
                "is empty: say why, for whoever is refused by the freeze",
            ));
        }
        if f.environments.is_empty() {
            return Err(invalid(
                key("environments"),
                "is empty: name the environments this freeze closes",
            ));
        }
        let freeze = Freeze {
            start,
            end,
            reason: f.reason.clone(),
        };
        for (j, name) in f.environments.iter().enumerate() {
            let Some(env) = environments.iter_mut().find(|e| &e.name == name) else {
                return Err(invalid(
                    format!("{section}[{i}].environments[{j}]"),
                    format!("no [[environment]] is named {name:?}"),
                ));
            };
            env.freezes.push(freeze.clone());
        }
    }
    Ok(())
}

/// Everyone the config says can authenticate, as the satisfiability
/// checks see them: the `[[principal]]`s, and what each `[[identity.rule]]`
/// can map a token to.
///
/// A rule counts like this (decided here, documented in the README's
/// "Identity"): a literal `principal` is one more name; a templated one
/// stands for any number of distinct names, so it never limits how many
/// approvals can be given. Its literal `groups` are certain. A templated
/// group or `groups_claim` could be anything the IdP says, which no config
/// check can know: a list that only such groups could satisfy is a warning,
/// not an error.
pub(super) struct People {
    principals: Vec<Principal>,
    /// Each rule with its key, `identity[i].rule[j]`.
    rules: Vec<(String, IdentityRule)>,
}

impl People {
    pub fn new(principals: &[PrincipalConfig], identities: &[IdentityConfig]) -> People {
        People {
            principals: principals
                .iter()
                .map(|p| Principal::new(p.name.clone(), p.groups.clone()))
                .collect(),
            rules: identities
                .iter()
                .enumerate()
                .flat_map(|(i, id)| {
                    id.rules
                        .iter()
                        .enumerate()
                        .map(move |(j, r)| (format!("identity[{i}].rule[{j}]"), r.clone()))
                })
                .collect(),
        }
    }
}

/// Who a list of principals and groups designates.
#[derive(Default)]
struct Designated {
    /// Distinct names certainly designated.
    names: BTreeSet<String>,
    /// A rule with a templated principal is designated: any number.
    many: bool,
    /// Names designated only if tokens carry the right group (see [`People`]).
    maybe_names: BTreeSet<String>,
    maybe_many: bool,
    /// The rules behind the `maybe_*`, for messages.
    maybe_rules: BTreeSet<String>,
}

impl Designated {
    /// At most this many distinct approvers; `None`: no limit.
    fn at_most(&self) -> Option<usize> {
        (!self.many && !self.maybe_many).then(|| self.names.union(&self.maybe_names).count())
    }
}

/// A principals-or-groups list (`requesters`, `check_reporters`,
/// `break_glass`): every entry names a principal or a group with members.
pub(super) fn members(
    key: &str,
    list: &[String],
    people: &People,
    cx: &mut Cx,
) -> Result<Vec<Approver>, ConfigError> {
    for (j, m) in list.iter().enumerate() {
        check_name(&format!("{key}[{j}]"), m)?;
    }
    let parsed: Vec<Approver> = list.iter().map(|m| Approver::parse(m)).collect();
    who_is_in(key, &parsed, people, cx)?;
    Ok(parsed)
}

/// Everyone `list` designates; an entry that designates nobody is an
/// error, one that only a token's templated groups or `groups_claim` could
/// satisfy a warning.
fn who_is_in(
    key: &str,
    list: &[Approver],
    people: &People,
    cx: &mut Cx,
) -> Result<Designated, ConfigError> {
    let mut d = Designated::default();
    for a in list {
        let mut certain = false;
        let mut maybe_rules = Vec::new();
        for p in people.principals.iter().filter(|p| a.matches(p)) {
            d.names.insert(p.name.clone());
            certain = true;
        }
        for (rule_key, r) in &people.rules {
            let reach = r.reaches(a);
            // Named by a principal entry, the name is the one in the list.
            let name = match a {
                Approver::Principal(n) => Some(n.as_str()),
                Approver::Group(_) => r.fixed_name(),
            };
            match (reach, name) {
                (Reach::No, _) => {}
                (Reach::Yes, Some(n)) => {
                    d.names.insert(n.to_owned());
                    certain = true;
                }
                (Reach::Yes, None) => {
                    d.many = true;
                    certain = true;
                }
                (Reach::Maybe, Some(n)) => {
                    d.maybe_names.insert(n.to_owned());
                    maybe_rules.push(rule_key.as_str());
                }
                (Reach::Maybe, None) => {
                    d.maybe_many = true;
                    maybe_rules.push(rule_key.as_str());
                }
            }
        }
        if certain {
            continue;
        }
        if !maybe_rules.is_empty() {
            let Approver::Group(g) = a else {
                continue;
            };
            cx.warn(
                key,
                format!(
                    "\"group:{g}\" has no [[principal]] member; only a token whose templated \
                     groups or groups_claim say {g:?} would be in it ({}), which check-config \
                     cannot know",
                    maybe_rules.join(", ")
                ),
            );
            d.maybe_rules
                .extend(maybe_rules.iter().map(|r| (*r).to_owned()));
            continue;
        }
        let rules = if people.rules.is_empty() {
            ""
        } else {
            " or [[identity.rule]] gives"
        };
        return Err(invalid(
            key,
            match a {
                Approver::Principal(name) => {
                    format!("{name:?} is not a configured principal")
                }
                Approver::Group(g) => format!(
                    "\"group:{g}\" has no members: no [[principal]] lists {g:?} in groups{rules}"
                ),
            },
        ));
    }
    Ok(d)
}

/// Whether someone in group `g` can be an approver of `policy`.
fn group_can_approve(g: &str, policy: &EnvironmentPolicy, people: &People) -> (Vec<String>, Reach) {
    let mut members = Vec::new();
    let mut best = Reach::No;
    let mut raise = |r: Reach| {
        best = match (best, r) {
            (Reach::Yes, _) | (_, Reach::Yes) => Reach::Yes,
            (Reach::Maybe, _) | (_, Reach::Maybe) => Reach::Maybe,
            _ => Reach::No,
        }
    };
    for p in people
        .principals
        .iter()
        .filter(|p| p.groups.iter().any(|pg| pg == g))
    {
        members.push(format!("{:?}", p.name));
        if policy.is_approver(p) {
            raise(Reach::Yes);
        }
    }
    for (key, r) in &people.rules {
        let in_group = r.has_group(g);
        if in_group == Reach::No {
            continue;
        }
        members.push(key.clone());
        let approver =
            policy
                .approvers
                .iter()
                .map(|a| r.reaches(a))
                .fold(Reach::No, |acc, x| match (acc, x) {
                    (Reach::Yes, _) | (_, Reach::Yes) => Reach::Yes,
                    (Reach::Maybe, _) | (_, Reach::Maybe) => Reach::Maybe,
                    _ => Reach::No,
                });
        raise(match (in_group, approver) {
            (_, Reach::No) | (Reach::No, _) => Reach::No,
            (Reach::Yes, Reach::Yes) => Reach::Yes,
            _ => Reach::Maybe,
        });
    }
    (members, best)
}

/// Refuses an effective policy no promotion can ever pass: approvals
/// required but nobody designated, an approver that names no principal, a
/// group nobody is in, more approvals (or rollback approvals) than there are
/// distinct approvers, a required group no approver is in, required checks
/// nobody may report (`reporters`, the list that applies where this policy
/// does), a soak without a prerequisite. Warns when only some requesters
/// are stuck: with self-approval off and exactly `required_approvals`
/// approvers, a promotion requested by one of them can never collect enough.
/// What only identity tokens' templated groups could satisfy is a warning
/// (see [`People`]).
pub(super) fn policy_can_pass(
    prefix: &str,
    policy: &EnvironmentPolicy,
    people: &People,
    reporters: &[Approver],
    cx: &mut Cx,
) -> Result<(), ConfigError> {
    let key = |field: &str| format!("{prefix}.{field}");
    let most = policy.required_approvals.max(policy.rollback_approvals);
    if most > 0 && policy.approvers.is_empty() {
        let field = if policy.required_approvals > 0 {
            "required_approvals"
        } else {
            "rollback_approvals"
        };
        return Err(invalid(
            key("approvers"),
            format!("{field} is {most} but no approvers are designated"),
        ));
    }
    let can_approve = who_is_in(&key("approvers"), &policy.approvers, people, cx)?;
    let quoted: Vec<String> = can_approve.names.iter().map(|n| format!("{n:?}")).collect();
    for (field, required) in [
        ("required_approvals", policy.required_approvals),
        ("rollback_approvals", policy.rollback_approvals),
    ] {
        let required = required as usize;
        if can_approve.many || required <= can_approve.names.len() {
            continue;
        }
        if can_approve.at_most().is_none_or(|n| required <= n) {
            cx.warn(
                key(field),
                format!(
                    "{required} approvals need approvers that only tokens' templated groups or \
                     groups_claim can supply ({}); the [[principal]]s and fixed groups give {}",
                    can_approve
                        .maybe_rules
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    can_approve.names.len()
                ),
            );
            continue;
        }
        return Err(invalid(
            key(field),
            format!(
                "{required} approvals can never be given: only {} principal(s) can approve ({})",
                can_approve.names.len(),
                quoted.join(", ")
            ),
        ));
    }
    let required = policy.required_approvals as usize;
    if required > 0 && can_approve.at_most() == Some(required) && !policy.allow_self_approval {
        cx.warn(
            key("required_approvals"),
            format!(
                "a promotion requested by {} can never be approved: self-approval is off, \
                 and the other approvers can give only {} of the {required} approval(s) needed",
                quoted.join(" or "),
                required - 1
            ),
        );
    }
    if !policy.required_groups.is_empty() && policy.required_approvals == 0 {
        return Err(invalid(
            key("required_groups"),
            "needs approvals, but required_approvals is 0: nobody would approve, so no group \
             could; set required_approvals or remove required_groups",
        ));
    }
    for g in &policy.required_groups {
        let (members, reach) = group_can_approve(g, policy, people);
        if members.is_empty() {
            return Err(invalid(
                key("required_groups"),
                format!("{g:?} has no members: no [[principal]] lists {g:?} in groups"),
            ));
        }
        match reach {
            Reach::Yes => {}
            Reach::Maybe => cx.warn(
                key("required_groups"),
                format!(
                    "{g:?}: an approver in it can only come from a token's templated groups or \
                     groups_claim ({}), which check-config cannot know",
                    members.join(", ")
                ),
            ),
            Reach::No => {
                return Err(invalid(
                    key("required_groups"),
                    format!(
                        "no member of {g:?} ({}) is an approver, so its approval can never be given",
                        members.join(", ")
                    ),
                ));
            }
        }
    }
    if !policy.required_checks.is_empty() && reporters.is_empty() {
        return Err(invalid(
            key("required_checks"),
            format!(
                "nobody may report checks here (check_reporters is empty), so {} can never pass",
                policy.required_checks.join(", ")
            ),
        ));
    }
    if policy.min_soak.is_some() && policy.requires.is_none() {
        return Err(invalid(
            key("min_soak"),
            format!(
                "environment {} has no `requires`: soak is counted on the prerequisite's tag",
                policy.name
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::domain::model::Time;
    use crate::domain::policy::{Approver, EnvironmentPolicy, Hours, Zone};
    use jiff::civil::{Time as Clock, Weekday};
    use std::time::Duration;

    const HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    /// Every gate key on the top-level production, and a project that
    /// overrides some of them.
    fn gated() -> String {
        let mut s = String::from("check_reporters = [\"group:ci\"]\n");
        s.push_str("[[registry]]\nhost = \"r.test\"\ninsecure = true\n");
        for (name, groups) in [
            ("ann", "\"rm\", \"security\""),
            ("ben", "\"rm\""),
            ("cat", "\"rm\""),
            ("sre", "\"sre\""),
            ("bot", "\"ci\""),
            ("lead", "\"pay-leads\""),
            ("lead2", "\"pay-leads\", \"security\""),
        ] {
            s.push_str(&format!(
                "[[principal]]\nname = \"{name}\"\ntoken_sha256 = \"{HASH}\"\ngroups = [{groups}]\n"
            ));
        }
        s.push_str(
            r#"
[[environment]]
name = "staging"
tag = "staging"
required_approvals = 0
[[environment]]
name = "production"
tag = "production"
requires = "staging"
approvers = ["group:rm"]
required_approvals = 2
required_groups = ["security"]
required_checks = ["e2e", "scan"]
min_soak = "30m"
allowed_days = ["mon", "tue", "wed", "thu"]
allowed_hours = "09:00-17:00"
time_zone = "Europe/Berlin"
break_glass = ["group:sre"]

[[freeze]]
environments = ["production"]
start = "2026-12-20T00:00:00Z"
end = "2027-01-05T00:00:00Z"
reason = "year-end freeze"

[[project]]
name = "pay"
repositories = ["r.test/pay/*"]
[[project.environment]]
name = "production"
approvers = ["group:pay-leads"]
required_approvals = 1
allowed_hours = "22:00-02:00"
[[project.freeze]]
environments = ["production", "staging"]
start = "2026-11-01T00:00:00Z"
end = "2026-11-02T00:00:00Z"
reason = "payments migration"
"#,
        );
        s
    }

    fn production<'c>(c: &'c Config, repo: &str) -> &'c EnvironmentPolicy {
        c.governing(repo).environment("production").unwrap()
    }

    fn at(rfc3339: &str) -> Time {
        let ts: jiff::Timestamp = rfc3339.parse().unwrap();
        Time {
            seconds: ts.as_second(),
            nanos: 0,
        }
    }

    #[test]
    fn gate_keys_fill_the_policy_and_projects_override_them_one_by_one() {
        let c = Config::parse(&gated()).unwrap();
        let top = production(&c, "r.test/web/app");
        assert_eq!(top.required_groups, ["security"]);
        assert_eq!(top.required_checks, ["e2e", "scan"]);
        assert_eq!(top.min_soak, Some(Duration::from_secs(1800)));
        assert_eq!(top.break_glass, [Approver::Group("sre".into())]);
        // Absent: a rollback needs what a promotion needs.
        assert_eq!(top.rollback_approvals, 2);
        let w = top.window.as_ref().unwrap();
        assert_eq!(
            w.days,
            [
                Weekday::Monday,
                Weekday::Tuesday,
                Weekday::Wednesday,
                Weekday::Thursday
            ]
        );
        assert_eq!(
            w.hours,
            Some(Hours {
                start: Clock::constant(9, 0, 0, 0),
                end: Clock::constant(17, 0, 0, 0)
            })
        );
        assert_eq!(w.time_zone, Zone::get("Europe/Berlin").unwrap());
        assert_eq!(top.freezes.len(), 1);
        assert_eq!(top.freezes[0].reason, "year-end freeze");
        assert_eq!(top.freezes[0].start, at("2026-12-20T00:00:00Z"));
        assert_eq!(top.freezes[0].end, at("2027-01-05T00:00:00Z"));

        let pay = production(&c, "r.test/pay/api");
        // Overridden: approvers, count, hours; a rollback follows the
        // project's count.
        assert_eq!(pay.required_approvals, 1);
        assert_eq!(pay.rollback_approvals, 1);
        let pw = pay.window.as_ref().unwrap();
        assert!(pw.hours.unwrap().crosses_midnight());
        // Inherited: days, zone, groups, checks, soak, break-glass.
        assert_eq!(pw.days, w.days);
        assert_eq!(pw.time_zone, w.time_zone);
        assert_eq!(pay.required_groups, top.required_groups);
        assert_eq!(pay.required_checks, top.required_checks);
        assert_eq!(pay.min_soak, top.min_soak);
        assert_eq!(pay.break_glass, top.break_glass);
        // The top-level freeze, then the project's own.
        let reasons: Vec<&str> = pay.freezes.iter().map(|f| f.reason.as_str()).collect();
        assert_eq!(reasons, ["year-end freeze", "payments migration"]);
        let staging = c
            .governing("r.test/pay/api")
            .environment("staging")
            .unwrap();
        assert_eq!(staging.freezes.len(), 1);
        assert!(
            c.governing("r.test/web/app")
                .environment("staging")
                .unwrap()
                .freezes
                .is_empty()
        );
    }

    #[test]
    fn attach_record_is_off_unless_set_and_a_project_may_set_it_either_way() {
        let c = Config::parse(&gated()).unwrap();
        assert!(!production(&c, "r.test/web/app").attach_record);
        let c = Config::parse(&gated().replace(
            "required_approvals = 1\nallowed_hours",
            "required_approvals = 1\nattach_record = true\nallowed_hours",
        ))
        .unwrap();
        assert!(!production(&c, "r.test/web/app").attach_record);
        assert!(production(&c, "r.test/pay/api").attach_record);
        let on = gated().replace(
            "break_glass = [\"group:sre\"]",
            "break_glass = [\"group:sre\"]\nattach_record = true",
        );
        let c = Config::parse(&on).unwrap();
        assert!(production(&c, "r.test/web/app").attach_record);
        assert!(production(&c, "r.test/pay/api").attach_record, "inherited");
        // It is policy: turning it on changes the policy's digest.
        assert_ne!(
            Config::parse(&gated()).unwrap().policy.digest,
            c.policy.digest
        );
        let e = Config::parse(&on.replace("attach_record = true", "attach_record = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("attach_record"), "{e}");
    }

    #[test]
    fn restore_on_drift_is_off_unless_set_and_a_project_may_set_it_either_way() {
        let c = Config::parse(&gated()).unwrap();
        assert!(!production(&c, "r.test/web/app").restore_on_drift);
        assert!(!production(&c, "r.test/pay/api").restore_on_drift);
        let c = Config::parse(&gated().replace(
            "required_approvals = 1\nallowed_hours",
            "required_approvals = 1\nrestore_on_drift = true\nallowed_hours",
        ))
        .unwrap();
        assert!(!production(&c, "r.test/web/app").restore_on_drift);
        assert!(production(&c, "r.test/pay/api").restore_on_drift);
        let c = Config::parse(&gated().replace(
            "break_glass = [\"group:sre\"]",
            "break_glass = [\"group:sre\"]\nrestore_on_drift = true",
        ))
        .unwrap();
        assert!(production(&c, "r.test/web/app").restore_on_drift);
        assert!(
            production(&c, "r.test/pay/api").restore_on_drift,
            "inherited"
        );
        let e = Config::parse(&gated().replace(
            "break_glass = [\"group:sre\"]",
            "break_glass = [\"group:sre\"]\nrestore_on_drift = \"yes\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("restore_on_drift"), "{e}");
    }

    #[test]
    fn wait_ttl_is_a_week_unless_set_a_project_may_change_it_and_zero_is_refused() {
        use crate::config::DEFAULT_WAIT_TTL;
        let week = Duration::from_secs(7 * 24 * 3600);
        assert_eq!(DEFAULT_WAIT_TTL, week);
        let plain = Config::parse(&gated()).unwrap();
        assert_eq!(production(&plain, "r.test/web/app").wait_ttl, week);
        assert_eq!(production(&plain, "r.test/pay/api").wait_ttl, week);

        let top_line = |value: &str| {
            gated().replace(
                "break_glass = [\"group:sre\"]",
                &format!("break_glass = [\"group:sre\"]\nwait_ttl = {value}"),
            )
        };
        let top = top_line("\"2d\"");
        let c = Config::parse(&top).unwrap();
        let two_days = Duration::from_secs(2 * 24 * 3600);
        assert_eq!(production(&c, "r.test/web/app").wait_ttl, two_days);
        assert_eq!(
            production(&c, "r.test/pay/api").wait_ttl,
            two_days,
            "inherited"
        );
        let project_line = |text: &str, value: &str| {
            text.replace(
                "required_approvals = 1\nallowed_hours",
                &format!("required_approvals = 1\nwait_ttl = {value}\nallowed_hours"),
            )
        };
        let both = Config::parse(&project_line(&top, "\"90m\"")).unwrap();
        assert_eq!(production(&both, "r.test/web/app").wait_ttl, two_days);
        assert_eq!(
            production(&both, "r.test/pay/api").wait_ttl,
            Duration::from_secs(5400)
        );
        let only_project = Config::parse(&project_line(&gated(), "\"90m\"")).unwrap();
        assert_eq!(production(&only_project, "r.test/web/app").wait_ttl, week);
        assert_eq!(
            production(&only_project, "r.test/pay/api").wait_ttl,
            Duration::from_secs(5400)
        );

        // In the policy's document only away from its default: a config
        // that does not set it, or sets the default, keeps its digest.
        assert!(!plain.policy.canonical_json.contains("wait_ttl"));
        for week in ["\"7d\"", "\"168h\"", "\"1w\""] {
            let c = Config::parse(&top_line(week)).unwrap();
            assert_eq!(c.policy, plain.policy, "{week}");
        }
        let json = &both.policy.canonical_json;
        assert!(json.contains("\"wait_ttl_seconds\":172800"), "{json}");
        assert!(json.contains("\"wait_ttl_seconds\":5400"), "{json}");
        assert_ne!(both.policy.digest, plain.policy.digest);

        for (text, want) in [
            (
                top_line("\"0s\""),
                "environment[1].wait_ttl: must be greater than zero",
            ),
            (
                project_line(&gated(), "\"0s\""),
                "project[0].environment[0].wait_ttl: must be greater than zero",
            ),
            (
                top_line("\"soon\""),
                "environment[1].wait_ttl: \"soon\" is not a duration",
            ),
        ] {
            let e = Config::parse(&text).unwrap_err().to_string();
            assert!(e.starts_with(want), "want {want:?}\n got {e:?}");
        }
        let e = Config::parse(&top_line("7")).unwrap_err().to_string();
        assert!(e.contains("wait_ttl"), "{e}");
    }

    #[test]
    fn rollback_approvals_given_at_the_top_level_stay_when_a_project_changes_the_count() {
        let c = Config::parse(&gated().replace(
            "break_glass = [\"group:sre\"]",
            "break_glass = [\"group:sre\"]\nrollback_approvals = 1",
        ))
        .unwrap();
        assert_eq!(production(&c, "r.test/web/app").rollback_approvals, 1);
        assert_eq!(production(&c, "r.test/pay/api").rollback_approvals, 1);
        let c = Config::parse(&gated().replace(
            "required_approvals = 1\nallowed_hours",
            "required_approvals = 1\nrollback_approvals = 0\nallowed_hours",
        ))
        .unwrap();
        assert_eq!(production(&c, "r.test/pay/api").rollback_approvals, 0);
    }

    #[test]
    fn a_time_zone_alone_opens_no_window_but_reaches_a_projects_hours() {
        let text = gated()
            .replace("allowed_days = [\"mon\", \"tue\", \"wed\", \"thu\"]\n", "")
            .replace("allowed_hours = \"09:00-17:00\"\n", "");
        let c = Config::parse(&text).unwrap();
        assert_eq!(production(&c, "r.test/web/app").window, None);
        let pay = production(&c, "r.test/pay/api").window.as_ref().unwrap();
        assert_eq!(pay.time_zone, Zone::get("Europe/Berlin").unwrap());
        assert!(pay.days.is_empty());
    }

    #[test]
    fn gate_key_errors_name_the_key() {
        let base = gated();
        let cases = [
            (
                base.replace("\"thu\"]", "\"thursday\"]"),
                "environment[1].allowed_days[3]: \"thursday\" is not one of mon, tue, wed, thu, fri, sat, sun",
            ),
            (
                base.replace("\"thu\"]", "\"mon\"]"),
                "environment[1].allowed_days[3]: \"mon\" is listed twice",
            ),
            (
                base.replace(
                    "allowed_days = [\"mon\", \"tue\", \"wed\", \"thu\"]",
                    "allowed_days = []",
                ),
                "environment[1].allowed_days: is empty",
            ),
            (
                base.replace("\"09:00-17:00\"", "\"9-17\""),
                "environment[1].allowed_hours: \"9-17\" is not hours like \"09:00-17:00\"",
            ),
            (
                base.replace("\"22:00-02:00\"", "\"22:00-24:00\""),
                "project[0].environment[0].allowed_hours: \"22:00-24:00\" is not hours",
            ),
            (
                base.replace("Europe/Berlin", "Europe/Atlantis"),
                "environment[1].time_zone: \"Europe/Atlantis\" is not an IANA time zone",
            ),
            (
                base.replace("[\"e2e\", \"scan\"]", "[\"e2e\", \"Scan\"]"),
                "environment[1].required_checks[1]: \"Scan\" is not a check name",
            ),
            (
                base.replace("[\"security\"]", "[\"group:security\"]"),
                "environment[1].required_groups[0]: \"group:security\": required_groups lists groups only; write \"security\"",
            ),
            (
                base.replace("[\"security\"]", "[\"auditors\"]"),
                "environment[1].required_groups: \"auditors\" has no members",
            ),
            (
                base.replace("[\"security\"]", "[\"sre\"]"),
                "environment[1].required_groups: no member of \"sre\" (\"sre\") is an approver",
            ),
            (
                base.replace("min_soak = \"30m\"", "min_soak = \"0s\""),
                "environment[1].min_soak: must be greater than zero",
            ),
            (
                base.replace("requires = \"staging\"\n", ""),
                "environment[1].min_soak: environment production has no `requires`",
            ),
            (
                base.replace("check_reporters = [\"group:ci\"]\n", ""),
                "environment[1].required_checks: nobody may report checks here",
            ),
            (
                base.replace("name = \"pay\"\n", "name = \"pay\"\ncheck_reporters = []\n"),
                "project[0].environment[0].required_checks: nobody may report checks here (check_reporters is empty), so e2e, scan can never pass",
            ),
            (
                // Production inherited as is, with its checks.
                base.replace("name = \"pay\"\n", "name = \"pay\"\ncheck_reporters = []\n")
                    .replace(
                        "[[project.environment]]\nname = \"production\"\napprovers = [\"group:pay-leads\"]\nrequired_approvals = 1\nallowed_hours = \"22:00-02:00\"\n",
                        "",
                    ),
                "project[0].check_reporters: is empty, but environment production requires checks (e2e, scan): nobody could report them",
            ),
            (
                base.replace(
                    "break_glass = [\"group:sre\"]",
                    "break_glass = [\"group:oncall\"]",
                ),
                "environment[1].break_glass: \"group:oncall\" has no members",
            ),
            (
                base.replace(
                    "break_glass = [\"group:sre\"]",
                    "break_glass = [\"group:sre\"]\nrollback_approvals = 4",
                ),
                "environment[1].rollback_approvals: 4 approvals can never be given: only 3",
            ),
            (
                base.replace(
                    "required_approvals = 1\nallowed_hours",
                    "required_approvals = 0\nallowed_hours",
                ),
                "project[0].environment[0].required_groups: needs approvals, but required_approvals is 0",
            ),
            (
                base.replace("\"2027-01-05T00:00:00Z\"", "\"2026-12-19T00:00:00Z\""),
                "freeze[0].end: \"2026-12-19T00:00:00Z\" is not after start",
            ),
            (
                base.replace("\"2026-12-20T00:00:00Z\"", "\"20 Dec 2026\""),
                "freeze[0].start: \"20 Dec 2026\" is not an RFC 3339 time",
            ),
            (
                base.replace("reason = \"year-end freeze\"", "reason = \" \""),
                "freeze[0].reason: is empty",
            ),
            (
                base.replace("[\"production\", \"staging\"]", "[\"production\", \"qa\"]"),
                "project[0].freeze[0].environments[1]: no [[environment]] is named \"qa\"",
            ),
        ];
        for (config, want) in cases {
            let e = Config::parse(&config).unwrap_err().to_string();
            assert!(e.starts_with(want), "want {want:?}\n got {e:?}");
        }
    }
}
