//! The effective policy as one canonical JSON document and its digest: what
//! decides who may do what (principals' names and groups, identities:
//! issuers, audiences, algorithms, lifetimes and the rules that map tokens
//! to names and groups, projects, environments with every override and
//! freeze resolved, check reporters), never token hashes, key material,
//! secrets, addresses (a JWKS URL or file included; signature keys by their
//! fingerprint, not their file) or timeouts. The digest is what
//! POLICY_CHANGED entries, the `policy` attribute of an approving entry and
//! `Promotion.policy_digest` name; GetPolicy hands back the document.
//!
//! Canonical form: UTF-8 JSON without whitespace, object keys in ascending
//! byte order (the structs below declare their fields in that order, and an
//! environment is a `BTreeMap` by name, so the output does not depend on
//! serde_json's map features), integers for durations (seconds), RFC 3339
//! UTC strings for instants. Lists keep the file's order where order
//! decides (projects, their patterns); principals are sorted by name and
//! their groups sorted and deduplicated, since reordering them in the file
//! changes nobody's rights; identities and their rules keep the file's
//! order (the first matching rule maps a token). `identities` is left out
//! when there are none, so a config without `[[identity]]` keeps the digest
//! it had before identities existed (an older prodgate cannot write a
//! document that has them, so one digest still has one meaning). In the
//! same way an environment's `wait_ttl_seconds` is left out while its
//! `wait_ttl` is the default 7d ([`LEFT_OUT_AT_DEFAULT`]): a config written
//! before the key existed keeps its digest, and that document already
//! meant 7d, since an older prodgate (which never writes the key) has no
//! other wait. `attest` is left out while false for the same reason: an
//! older prodgate never signed attestations. An auditor re-hashes the document with SHA-256 to check it
//! against its digest.
//!
//! An environment's gate keys are written as [`super::keys`] declares them
//! (by the writers in [`json`]); its other fields here.

use super::keys::{OwnFields, document_fields};
use super::{Config, DEFAULT_WAIT_TTL, IdentityConfig, PrincipalConfig, ProjectConfig};
use crate::domain::model::{Precision, Time};
use crate::domain::policy::{Approver, EnvironmentPolicy, Freeze, Window};
use jiff::civil::Weekday;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Bumped when the document's shape changes, so two versions of prodgate
/// never give one policy two meanings under one digest. 2: environments
/// gained `restore_on_drift`. 3: environments gained `signature_keys` (the
/// keys' fingerprints, not their file paths: moving a file changes nobody's
/// rights, replacing the key in it does). 4: environments gained
/// `attach_record`. `wait_ttl_seconds` did not bump it: the document
/// leaves it out where it means what older documents meant (see the
/// module's comment).
const FORMAT: u32 = 4;

/// An environment's keys the document leaves out while they hold their
/// default, with that default (see the module's comment); `prodgate policy`
/// shows them at it.
pub const LEFT_OUT_AT_DEFAULT: [(&str, LeftOut); 2] = [
    ("attest", LeftOut::Flag(false)),
    (
        "wait_ttl_seconds",
        LeftOut::Seconds(DEFAULT_WAIT_TTL.as_secs()),
    ),
];

/// The default of a key the document leaves out there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftOut {
    Flag(bool),
    Seconds(u64),
}

impl From<LeftOut> for serde_json::Value {
    fn from(d: LeftOut) -> serde_json::Value {
        match d {
            LeftOut::Flag(b) => b.into(),
            LeftOut::Seconds(s) => s.into(),
        }
    }
}

/// One version of the effective policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    /// `sha256:<hex>` of `canonical_json`.
    pub digest: String,
    pub canonical_json: String,
}

impl PolicyVersion {
    pub fn of(config: &Config) -> PolicyVersion {
        let doc = Document {
            check_reporters: members(&config.check_reporters),
            environments: config.environments.iter().map(environment).collect(),
            format: FORMAT,
            identities: config.identities.iter().map(identity).collect(),
            principals: principals(&config.principals),
            projects: config.projects.iter().map(project).collect(),
            registry_aliases: registry_aliases(config),
            unclaimed_repositories: match config.unclaimed_repositories {
                super::Unclaimed::Default => None,
                super::Unclaimed::Refuse => Some("refuse"),
            },
        };
        // Serializing these plain structs cannot fail (no maps with
        // non-string keys, no floats); an empty document would still be
        // hashed consistently if it ever did.
        let canonical_json = serde_json::to_string(&doc).unwrap_or_default();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&canonical_json)));
        PolicyVersion {
            digest,
            canonical_json,
        }
    }
}

#[derive(Serialize)]
struct Document {
    check_reporters: Vec<String>,
    environments: Vec<Environment>,
    format: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    identities: Vec<Identity>,
    principals: Vec<Principal>,
    projects: Vec<Project>,
    /// Which registry names govern as another (`alias_of`): they decide
    /// which project a repository falls under. Left out when none, like
    /// the next key when it has its default, so older policies keep their
    /// digests.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    registry_aliases: Vec<[String; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unclaimed_repositories: Option<&'static str>,
}

/// `[alias, registry it aliases]`, sorted.
fn registry_aliases(config: &Config) -> Vec<[String; 2]> {
    let mut out: Vec<[String; 2]> = config
        .registries
        .iter()
        .filter_map(|r| Some([r.host.clone(), r.alias_of.clone()?]))
        .collect();
    out.sort();
    out
}

#[derive(Serialize)]
struct Identity {
    algorithms: Vec<&'static str>,
    audience: String,
    issuer: String,
    max_lifetime_seconds: Option<u64>,
    rules: Vec<Rule>,
}

/// Claims as a sorted list of pairs rather than an object: their order
/// means nothing, and pairs keep the ordering rule visible in the types.
#[derive(Serialize)]
struct Rule {
    claims: Vec<[String; 2]>,
    groups: Vec<String>,
    groups_claim: Option<String>,
    principal: String,
}

#[derive(Serialize)]
struct Principal {
    /// Left out when empty, so a policy without aliases keeps its digest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    aliases: Vec<String>,
    certificate_cn: Option<String>,
    groups: Vec<String>,
    name: String,
}

#[derive(Serialize)]
struct Project {
    check_reporters: Option<Vec<String>>,
    environments: Vec<Environment>,
    name: String,
    repositories: Vec<String>,
    requesters: Option<Vec<String>>,
}

/// An environment: its fields by name. A map sorted by the name, so the
/// keys are in ascending order however many there are.
type Environment = BTreeMap<&'static str, Json>;

/// A value in an environment, written as the value alone (`untagged`).
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum Json {
    Null,
    Bool(bool),
    Number(u64),
    Text(String),
    List(Vec<String>),
    Freezes(Vec<FreezeDoc>),
    Window(WindowDoc),
}

impl From<bool> for Json {
    fn from(b: bool) -> Json {
        Json::Bool(b)
    }
}

impl From<u32> for Json {
    fn from(n: u32) -> Json {
        Json::Number(u64::from(n))
    }
}

impl From<Vec<String>> for Json {
    fn from(list: Vec<String>) -> Json {
        Json::List(list)
    }
}

/// How the document writes the gate keys (named in [`super::keys`]'s
/// table); `None`: the key is left out.
pub(super) mod json {
    use super::{Json, LEFT_OUT_AT_DEFAULT};
    use crate::domain::policy::Approver;
    use crate::domain::signature::SignatureKey;
    use std::time::Duration;

    /// The value as it is.
    pub fn plain<T: Clone + Into<Json>>(value: &T) -> Option<Json> {
        Some(value.clone().into())
    }

    /// Whole seconds.
    pub fn seconds(d: &Duration) -> Option<Json> {
        Some(Json::Number(d.as_secs()))
    }

    /// Whole seconds, or null.
    pub fn optional_seconds(d: &Option<Duration>) -> Option<Json> {
        Some(d.map_or(Json::Null, |d| Json::Number(d.as_secs())))
    }

    /// `group:<g>` or the principal's name, in the file's order.
    pub fn members(list: &[Approver]) -> Option<Json> {
        Some(Json::List(super::members(list)))
    }

    /// The keys' fingerprints, not their files: moving a file changes
    /// nobody's rights, replacing the key in it does.
    pub fn fingerprints(keys: &[SignatureKey]) -> Option<Json> {
        Some(Json::List(
            keys.iter().map(|k| k.fingerprint.clone()).collect(),
        ))
    }

    /// Whole seconds, left out at the default 7d, so that a config that
    /// does not set `wait_ttl` keeps the digest it had before the key
    /// existed (see the module's comment).
    pub fn wait_ttl(d: &Duration) -> Option<Json> {
        let [_, (_, default)] = LEFT_OUT_AT_DEFAULT;
        (default != super::LeftOut::Seconds(d.as_secs())).then_some(Json::Number(d.as_secs()))
    }

    /// `true`, or left out: a key whose `false` means what a document
    /// without it meant, because an older prodgate never did what `true`
    /// asks (see the module's comment), so a config that does not set it
    /// keeps its digest.
    pub fn unless_false(on: &bool) -> Option<Json> {
        on.then_some(Json::Bool(true))
    }
}

#[derive(Serialize)]
pub(super) struct FreezeDoc {
    end: String,
    reason: String,
    start: String,
}

#[derive(Serialize)]
pub(super) struct WindowDoc {
    days: Vec<&'static str>,
    hours: Option<String>,
    time_zone: String,
}

fn members(list: &[Approver]) -> Vec<String> {
    list.iter()
        .map(|m| match m {
            Approver::Principal(name) => name.clone(),
            Approver::Group(g) => format!("group:{g}"),
        })
        .collect()
}

fn principals(list: &[PrincipalConfig]) -> Vec<Principal> {
    let mut out: Vec<Principal> = list
        .iter()
        .map(|p| {
            let mut groups = p.groups.clone();
            groups.sort();
            groups.dedup();
            let mut aliases = p.aliases.clone();
            aliases.sort();
            Principal {
                aliases,
                certificate_cn: p.certificate_cn.clone(),
                groups,
                name: p.name.clone(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn identity(i: &IdentityConfig) -> Identity {
    Identity {
        algorithms: i.algorithms.iter().map(|a| a.name()).collect(),
        audience: i.audience.clone(),
        issuer: i.issuer.clone(),
        max_lifetime_seconds: i.max_lifetime.map(|d| d.as_secs()),
        rules: i
            .rules
            .iter()
            .map(|r| Rule {
                // A BTreeMap iterates in ascending key order.
                claims: r
                    .claims
                    .iter()
                    .map(|(k, v)| [k.clone(), v.clone()])
                    .collect(),
                groups: r.groups.iter().map(|g| g.as_str().to_owned()).collect(),
                groups_claim: r.groups_claim.clone(),
                principal: r.principal.as_str().to_owned(),
            })
            .collect(),
    }
}

fn project(p: &ProjectConfig) -> Project {
    Project {
        check_reporters: p.check_reporters.as_deref().map(members),
        environments: p.environments.iter().map(environment).collect(),
        name: p.name.clone(),
        repositories: p.repositories.iter().map(ToString::to_string).collect(),
        requesters: p.requesters.as_deref().map(members),
    }
}

fn environment(e: &EnvironmentPolicy) -> Environment {
    let (own, gates) = document_fields(e);
    // Every field by name, without `..`: one added to `OwnFields` and left
    // out here does not compile.
    let OwnFields {
        name,
        tag,
        requires,
        apply_deadline,
        freezes,
        window: win,
    } = own;
    let fields = [
        (
            "apply_deadline_seconds",
            apply_deadline.map_or(Json::Null, |d| Json::Number(d.as_secs())),
        ),
        (
            "freezes",
            Json::Freezes(freezes.iter().map(freeze).collect()),
        ),
        ("name", Json::Text(name.clone())),
        ("requires", requires.clone().map_or(Json::Null, Json::Text)),
        ("tag", Json::Text(tag.clone())),
        (
            "window",
            win.as_ref().map_or(Json::Null, |w| Json::Window(window(w))),
        ),
    ];
    let mut out = Environment::new();
    for (key, value) in fields.into_iter().chain(gates) {
        // Names are unique (a test of `keys` checks them): a second value
        // would replace the first and change the digest.
        let twice = out.insert(key, value);
        debug_assert!(twice.is_none(), "{key} written twice");
    }
    out
}

fn freeze(f: &Freeze) -> FreezeDoc {
    FreezeDoc {
        end: instant(f.end),
        reason: f.reason.clone(),
        start: instant(f.start),
    }
}

/// RFC 3339 in UTC with only the fractional digits needed
/// (`2026-12-20T00:00:00Z`), as jiff prints it.
fn instant(t: Time) -> String {
    t.rfc3339(Precision::Shortest)
}

fn window(w: &Window) -> WindowDoc {
    WindowDoc {
        days: w.days.iter().map(|d| day(*d)).collect(),
        hours: w.hours.map(|h| h.to_string()),
        time_zone: w.time_zone.name().to_owned(),
    }
}

fn day(d: Weekday) -> &'static str {
    match d {
        Weekday::Monday => "mon",
        Weekday::Tuesday => "tue",
        Weekday::Wednesday => "wed",
        Weekday::Thursday => "thu",
        Weekday::Friday => "fri",
        Weekday::Saturday => "sat",
        Weekday::Sunday => "sun",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    fn config(extra: &str) -> Config {
        Config::parse(&format!(
            r#"
[[registry]]
host = "127.0.0.1:5000"
insecure = true
[[principal]]
name = "bob"
token_sha256 = "{HASH}"
groups = ["rm", "leads"]
[[principal]]
name = "alice"
token_sha256 = "{HASH}"
[[environment]]
name = "production"
tag = "production"
approvers = ["group:rm"]
required_approvals = 1
{extra}
"#
        ))
        .unwrap()
    }

    #[test]
    fn the_digest_is_the_sha256_of_the_document() {
        let v = PolicyVersion::of(&config(""));
        let expected = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(v.canonical_json.as_bytes()))
        );
        assert_eq!(v.digest, expected);
        let doc: serde_json::Value = serde_json::from_str(&v.canonical_json).unwrap();
        assert_eq!(doc["format"], 4);
        assert_eq!(doc["environments"][0]["attach_record"], false);
        // Sorted principals, sorted groups; no token hashes anywhere.
        assert_eq!(doc["principals"][0]["name"], "alice");
        assert_eq!(
            doc["principals"][1]["groups"],
            serde_json::json!(["leads", "rm"])
        );
        assert!(!v.canonical_json.contains(HASH));
        assert!(!v.canonical_json.contains(' '), "{}", v.canonical_json);
    }

    #[test]
    fn keys_are_in_ascending_order_at_every_level() {
        let v = PolicyVersion::of(&config(
            r#"
[[project]]
name = "payments"
repositories = ["127.0.0.1:5000/payments/*"]
"#,
        ));
        // serde_json's map (without its `preserve_order` feature, which
        // nothing here enables) sorts keys: re-serializing the parsed
        // document gives the same bytes only if every object already had
        // its keys in order.
        let doc: serde_json::Value = serde_json::from_str(&v.canonical_json).unwrap();
        assert_eq!(serde_json::to_string(&doc).unwrap(), v.canonical_json);
    }

    #[test]
    fn what_decides_rights_changes_the_digest_and_nothing_else_does() {
        let base = PolicyVersion::of(&config("")).digest;
        // Reordering principals or groups changes nobody's rights.
        let reordered = Config::parse(&format!(
            r#"
[[principal]]
name = "alice"
token_sha256 = "{HASH}"
[[principal]]
name = "bob"
token_sha256 = "{HASH}"
groups = ["leads", "rm"]
[[environment]]
name = "production"
tag = "production"
approvers = ["group:rm"]
required_approvals = 1
"#
        ))
        .unwrap();
        assert_eq!(PolicyVersion::of(&reordered).digest, base);
        // Neither do timeouts or the listen address.
        let mut other = config("");
        other.listen = "127.0.0.1:1".into();
        other.registry_timeout = std::time::Duration::from_secs(99);
        assert_eq!(PolicyVersion::of(&other).digest, base);
        // A freeze does.
        let frozen = config(
            r#"
[[freeze]]
environments = ["production"]
start = "2026-12-20T00:00:00Z"
end = "2027-01-05T00:00:00Z"
reason = "year-end freeze"
"#,
        );
        let v = PolicyVersion::of(&frozen);
        assert_ne!(v.digest, base);
        assert!(v.canonical_json.contains("year-end freeze"));
        assert!(
            v.canonical_json
                .contains("\"start\":\"2026-12-20T00:00:00Z\"")
        );
    }

    #[test]
    fn signature_keys_enter_by_fingerprint_not_by_path() {
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        let dir = tempfile::tempdir().unwrap();
        let key = p256::ecdsa::SigningKey::from_slice(&[5; 32]).unwrap();
        let pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let der = key.verifying_key().to_public_key_der().unwrap();
        let fingerprint = format!("sha256:{}", hex::encode(Sha256::digest(der.as_bytes())));
        let (a, b) = (dir.path().join("a.pub"), dir.path().join("b.pub"));
        std::fs::write(&a, &pem).unwrap();
        std::fs::write(&b, &pem).unwrap();
        let with = |p: &std::path::Path| {
            PolicyVersion::of(&config(&format!("signature_keys = [{:?}]", p.display())))
        };
        let v = with(&a);
        let doc: serde_json::Value = serde_json::from_str(&v.canonical_json).unwrap();
        assert_eq!(
            doc["environments"][0]["signature_keys"],
            serde_json::json!([fingerprint])
        );
        assert!(!v.canonical_json.contains("a.pub"), "{}", v.canonical_json);
        // The same key elsewhere: the same rights.
        assert_eq!(with(&b).digest, v.digest);
        assert_ne!(PolicyVersion::of(&config("")).digest, v.digest);
    }
}

/// The canonical document of a config that sets every key, pinned byte for
/// byte: a refactoring of how policies are read or written must leave it
/// (and so every recorded digest) as it is.
#[cfg(test)]
mod pinned {
    use super::*;

    const HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    /// Every key of `[[environment]]` and `[[project.environment]]` away
    /// from its default, with a signature key from a fixed seed.
    pub(crate) fn every_key(dir: &std::path::Path) -> String {
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        let key = p256::ecdsa::SigningKey::from_slice(&[5; 32]).unwrap();
        let pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let path = dir.join("cosign.pub");
        std::fs::write(&path, pem).unwrap();
        format!(
            r#"
check_reporters = ["group:ci"]
unclaimed_repositories = "refuse"
[[registry]]
host = "r.test"
[[registry]]
host = "localhost:5000"
insecure = true
[[registry]]
host = "127.0.0.1:5000"
insecure = true
alias_of = "localhost:5000"
[[principal]]
name = "ann"
token_sha256 = "{HASH}"
groups = ["rm", "security"]
aliases = ["sso:ann"]
[[principal]]
name = "ben"
token_sha256 = "{HASH}"
groups = ["rm", "pay-leads"]
[[principal]]
name = "cat"
token_sha256 = "{HASH}"
groups = ["rm", "security", "pay-leads"]
[[principal]]
name = "sre"
token_sha256 = "{HASH}"
groups = ["sre"]
[[principal]]
name = "bot"
token_sha256 = "{HASH}"
groups = ["ci"]
[[environment]]
name = "staging"
tag = "staging"
required_approvals = 0
[[environment]]
name = "production"
tag = "production"
requires = "staging"
approvers = ["group:rm", "ann"]
required_approvals = 2
allow_self_approval = true
approval_ttl = "2h"
apply_deadline = "30m"
required_groups = ["security"]
required_checks = ["e2e", "scan"]
min_soak = "45m"
allowed_days = ["mon", "tue", "wed", "thu"]
allowed_hours = "09:00-17:00"
time_zone = "Europe/Berlin"
break_glass = ["group:sre"]
rollback_approvals = 1
restore_on_drift = true
signature_keys = [{path:?}]
attach_record = true
[[freeze]]
environments = ["production"]
start = "2026-12-20T00:00:00Z"
end = "2027-01-05T00:00:00Z"
reason = "year-end freeze"
[[project]]
name = "pay"
repositories = ["r.test/pay/*", "r.test/ledger"]
requesters = ["group:pay-leads"]
check_reporters = ["bot"]
[[project.environment]]
name = "production"
approvers = ["group:pay-leads"]
required_approvals = 1
allow_self_approval = false
approval_ttl = "3h"
required_groups = ["pay-leads"]
required_checks = ["e2e"]
min_soak = "1h"
allowed_days = ["fri"]
allowed_hours = "22:00-02:00"
time_zone = "America/New_York"
break_glass = ["ann"]
rollback_approvals = 2
restore_on_drift = false
signature_keys = []
attach_record = false
[[project.environment]]
name = "staging"
allowed_hours = "08:00-18:00"
[[project.freeze]]
environments = ["staging"]
start = "2026-11-01T00:00:00Z"
end = "2026-11-02T00:00:00Z"
reason = "payments migration"
[[project]]
name = "web"
repositories = ["r.test/web/**"]
[[project]]
name = "tokyo"
repositories = ["r.test/tokyo/*"]
[[project.environment]]
name = "production"
required_approvals = 1
time_zone = "Asia/Tokyo"
[[project.environment]]
name = "staging"
approvers = ["ben"]
required_approvals = 1
allowed_days = ["sat"]
"#
        )
    }

    const EVERY_KEY: &str = concat!(
        r##"{"check_reporters":["group:ci"],"environments":[{"allow_self_approval":false,"apply_dead"##,
        r##"line_seconds":3600,"approval_ttl_seconds":86400,"approvers":[],"attach_record":false,"br"##,
        r##"eak_glass":[],"freezes":[],"min_soak_seconds":null,"name":"staging","required_approvals""##,
        r##":0,"required_checks":[],"required_groups":[],"requires":null,"restore_on_drift":false,"r"##,
        r##"ollback_approvals":0,"signature_keys":[],"tag":"staging","window":null},{"allow_self_app"##,
        r##"roval":true,"apply_deadline_seconds":1800,"approval_ttl_seconds":7200,"approvers":["grou"##,
        r##"p:rm","ann"],"attach_record":true,"break_glass":["group:sre"],"freezes":[{"end":"2027-01"##,
        r##"-05T00:00:00Z","reason":"year-end freeze","start":"2026-12-20T00:00:00Z"}],"min_soak_sec"##,
        r##"onds":2700,"name":"production","required_approvals":2,"required_checks":["e2e","scan"],""##,
        r##"required_groups":["security"],"requires":"staging","restore_on_drift":true,"rollback_app"##,
        r##"rovals":1,"signature_keys":["sha256:24bd4e669723bd264edfa722e21680098cbe88c74850f0d74489"##,
        r##"074dcf218c15"],"tag":"production","window":{"days":["mon","tue","wed","thu"],"hours":"09"##,
        r##":00-17:00","time_zone":"Europe/Berlin"}}],"format":4,"principals":[{"aliases":["sso:ann""##,
        r##"],"certificate_cn":null,"groups":["rm","security"],"name":"ann"},{"certificate_cn":null,"##,
        r##""groups":["pay-leads","rm"],"name":"ben"},{"certificate_cn":null,"groups":["ci"],"name":"##,
        r##""bot"},{"certificate_cn":null,"groups":["pay-leads","rm","security"],"name":"cat"},{"cer"##,
        r##"tificate_cn":null,"groups":["sre"],"name":"sre"}],"projects":[{"check_reporters":["bot"]"##,
        r##","environments":[{"allow_self_approval":false,"apply_deadline_seconds":3600,"approval_tt"##,
        r##"l_seconds":86400,"approvers":[],"attach_record":false,"break_glass":[],"freezes":[{"end""##,
        r##":"2026-11-02T00:00:00Z","reason":"payments migration","start":"2026-11-01T00:00:00Z"}],""##,
        r##"min_soak_seconds":null,"name":"staging","required_approvals":0,"required_checks":[],"req"##,
        r##"uired_groups":[],"requires":null,"restore_on_drift":false,"rollback_approvals":0,"signat"##,
        r##"ure_keys":[],"tag":"staging","window":{"days":[],"hours":"08:00-18:00","time_zone":"UTC""##,
        r##"}},{"allow_self_approval":false,"apply_deadline_seconds":1800,"approval_ttl_seconds":108"##,
        r##"00,"approvers":["group:pay-leads"],"attach_record":false,"break_glass":["ann"],"freezes""##,
        r##":[{"end":"2027-01-05T00:00:00Z","reason":"year-end freeze","start":"2026-12-20T00:00:00Z"##,
        r##""}],"min_soak_seconds":3600,"name":"production","required_approvals":1,"required_checks""##,
        r##":["e2e"],"required_groups":["pay-leads"],"requires":"staging","restore_on_drift":false,""##,
        r##"rollback_approvals":2,"signature_keys":[],"tag":"production","window":{"days":["fri"],"h"##,
        r##"ours":"22:00-02:00","time_zone":"America/New_York"}}],"name":"pay","repositories":["r.te"##,
        r##"st/pay/*","r.test/ledger"],"requesters":["group:pay-leads"]},{"check_reporters":null,"en"##,
        r##"vironments":[{"allow_self_approval":false,"apply_deadline_seconds":3600,"approval_ttl_se"##,
        r##"conds":86400,"approvers":[],"attach_record":false,"break_glass":[],"freezes":[],"min_soa"##,
        r##"k_seconds":null,"name":"staging","required_approvals":0,"required_checks":[],"required_g"##,
        r##"roups":[],"requires":null,"restore_on_drift":false,"rollback_approvals":0,"signature_key"##,
        r##"s":[],"tag":"staging","window":null},{"allow_self_approval":true,"apply_deadline_seconds"##,
        r##"":1800,"approval_ttl_seconds":7200,"approvers":["group:rm","ann"],"attach_record":true,""##,
        r##"break_glass":["group:sre"],"freezes":[{"end":"2027-01-05T00:00:00Z","reason":"year-end f"##,
        r##"reeze","start":"2026-12-20T00:00:00Z"}],"min_soak_seconds":2700,"name":"production","req"##,
        r##"uired_approvals":2,"required_checks":["e2e","scan"],"required_groups":["security"],"requ"##,
        r##"ires":"staging","restore_on_drift":true,"rollback_approvals":1,"signature_keys":["sha256"##,
        r##":24bd4e669723bd264edfa722e21680098cbe88c74850f0d74489074dcf218c15"],"tag":"production",""##,
        r##"window":{"days":["mon","tue","wed","thu"],"hours":"09:00-17:00","time_zone":"Europe/Berl"##,
        r##"in"}}],"name":"web","repositories":["r.test/web/**"],"requesters":null},{"check_reporter"##,
        r##"s":null,"environments":[{"allow_self_approval":false,"apply_deadline_seconds":3600,"appr"##,
        r##"oval_ttl_seconds":86400,"approvers":["ben"],"attach_record":false,"break_glass":[],"free"##,
        r##"zes":[],"min_soak_seconds":null,"name":"staging","required_approvals":1,"required_checks"##,
        r##"":[],"required_groups":[],"requires":null,"restore_on_drift":false,"rollback_approvals":"##,
        r##"1,"signature_keys":[],"tag":"staging","window":{"days":["sat"],"hours":null,"time_zone":"##,
        r##""UTC"}},{"allow_self_approval":true,"apply_deadline_seconds":1800,"approval_ttl_seconds""##,
        r##":7200,"approvers":["group:rm","ann"],"attach_record":true,"break_glass":["group:sre"],"f"##,
        r##"reezes":[{"end":"2027-01-05T00:00:00Z","reason":"year-end freeze","start":"2026-12-20T00"##,
        r##":00:00Z"}],"min_soak_seconds":2700,"name":"production","required_approvals":1,"required_"##,
        r##"checks":["e2e","scan"],"required_groups":["security"],"requires":"staging","restore_on_d"##,
        r##"rift":true,"rollback_approvals":1,"signature_keys":["sha256:24bd4e669723bd264edfa722e216"##,
        r##"80098cbe88c74850f0d74489074dcf218c15"],"tag":"production","window":{"days":["mon","tue","##,
        r##""wed","thu"],"hours":"09:00-17:00","time_zone":"Asia/Tokyo"}}],"name":"tokyo","repositor"##,
        r##"ies":["r.test/tokyo/*"],"requesters":null}],"registry_aliases":[["127.0.0.1:5000","local"##,
        r##"host:5000"]],"unclaimed_repositories":"refuse"}"##,
    );
    const EVERY_KEY_DIGEST: &str =
        "sha256:7406e260001351439f3f909e8d49b4f801eec56248d73a2c82b3eb855cd4b922";

    #[test]
    fn a_config_with_every_key_keeps_its_document_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let v = Config::parse(&every_key(dir.path())).unwrap().policy;
        assert_eq!(v.canonical_json, EVERY_KEY);
        assert_eq!(v.digest, EVERY_KEY_DIGEST);
    }

    #[test]
    fn the_deploy_examples_keep_their_digests() {
        for (file, digest) in [
            (
                // Since production attests.
                "prodgate.example.toml",
                "sha256:41a161ade48429074c89ca8e5911e259cdaedb6e0f11e115578344e0a8bea5d9",
            ),
            (
                "prodgate.oidc.example.toml",
                "sha256:e3efbf18b555cd2a852803840490782f2c17c46cb7501bef1870b7a39dd84502",
            ),
            (
                // Since payments' production soaks 1m (the README's
                // walk-through approves in the soak).
                "prodgate.projects.example.toml",
                "sha256:cf452ee521b900101951bce431ad1336e154fae11aec1ab6cf78c00db75403e3",
            ),
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy")
                .join(file);
            let loaded = Config::load_with(&path, crate::config::Files::WarnIfAbsent).unwrap();
            assert_eq!(loaded.config.policy.digest, digest, "{file}");
        }
    }
}
