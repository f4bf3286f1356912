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
//! byte order (the structs below declare their fields in that order, so the
//! output does not depend on serde_json's map features), integers for
//! durations (seconds), RFC 3339 UTC strings for instants. Lists keep the
//! file's order where order decides (projects, their patterns); principals
//! are sorted by name and their groups sorted and deduplicated, since
//! reordering them in the file changes nobody's rights; identities and
//! their rules keep the file's order (the first matching rule maps a
//! token). `identities` is left out when there are none, so a config
//! without `[[identity]]` keeps the digest it had before identities
//! existed (an older prodgate cannot write a document that has them, so
//! one digest still has one meaning). An auditor
//! re-hashes the document with SHA-256 to check it against its digest.

use super::{Config, IdentityConfig, PrincipalConfig, ProjectConfig};
use crate::domain::model::{Precision, Time};
use crate::domain::policy::{Approver, EnvironmentPolicy, Freeze, Window};
use jiff::civil::Weekday;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Bumped when the document's shape changes, so two versions of prodgate
/// never give one policy two meanings under one digest. 2: environments
/// gained `restore_on_drift`. 3: environments gained `signature_keys` (the
/// keys' fingerprints, not their file paths: moving a file changes nobody's
/// rights, replacing the key in it does). 4: environments gained
/// `attach_record`.
const FORMAT: u32 = 4;

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

#[derive(Serialize)]
struct Environment {
    allow_self_approval: bool,
    apply_deadline_seconds: Option<u64>,
    approval_ttl_seconds: u64,
    approvers: Vec<String>,
    attach_record: bool,
    break_glass: Vec<String>,
    freezes: Vec<FreezeDoc>,
    min_soak_seconds: Option<u64>,
    name: String,
    required_approvals: u32,
    required_checks: Vec<String>,
    required_groups: Vec<String>,
    requires: Option<String>,
    restore_on_drift: bool,
    rollback_approvals: u32,
    signature_keys: Vec<String>,
    tag: String,
    window: Option<WindowDoc>,
}

#[derive(Serialize)]
struct FreezeDoc {
    end: String,
    reason: String,
    start: String,
}

#[derive(Serialize)]
struct WindowDoc {
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
    Environment {
        allow_self_approval: e.allow_self_approval,
        apply_deadline_seconds: e.apply_deadline.map(|d| d.as_secs()),
        approval_ttl_seconds: e.approval_ttl.as_secs(),
        approvers: members(&e.approvers),
        attach_record: e.attach_record,
        break_glass: members(&e.break_glass),
        freezes: e.freezes.iter().map(freeze).collect(),
        min_soak_seconds: e.min_soak.map(|d| d.as_secs()),
        name: e.name.clone(),
        required_approvals: e.required_approvals,
        required_checks: e.required_checks.clone(),
        required_groups: e.required_groups.clone(),
        requires: e.requires.clone(),
        restore_on_drift: e.restore_on_drift,
        rollback_approvals: e.rollback_approvals,
        signature_keys: e
            .signature_keys
            .iter()
            .map(|k| k.fingerprint.clone())
            .collect(),
        tag: e.tag.clone(),
        window: e.window.as_ref().map(window),
    }
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
