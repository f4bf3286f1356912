//! `prodgate policy`: a recorded policy version read per project and
//! environment, and `policy diff`, what changed between two versions.
//!
//! Both read the canonical JSON GetPolicy hands back (see
//! `config::version`) as plain JSON, key by key, rather than as the
//! structs that wrote it: a key a newer server adds shows up here without a
//! change to the client, and a document is never rejected for its shape.
//! An environment's keys the document leaves out at their default
//! (`wait_ttl_seconds`, `attest`, see `config::LEFT_OUT_AT_DEFAULT`) are read at that
//! default, so every environment shows them and a diff says `7days → 1h`
//! rather than "added".

use super::client::Client;
use super::output::Printer;
use super::table::clean;
use super::{CliError, ClientArgs, Format};
use crate::config::reading::{changes, entry, render, sections};
use crate::pb;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The running policy (`digest` `None`) or a recorded one: a readable
/// summary, or with `-o json` the document as GetPolicy answers it.
pub async fn show(g: &ClientArgs, digest: Option<String>) -> Result<(), CliError> {
    let mut c = Client::connect(g).await?;
    let p = fetch(&mut c, digest.unwrap_or_default()).await?;
    Printer::stdout(g.output).policy(&p)
}

/// What changed from policy `a` to `b` (the running one when `None`).
pub async fn diff(g: &ClientArgs, a: String, b: Option<String>) -> Result<(), CliError> {
    let mut c = Client::connect(g).await?;
    let old = fetch(&mut c, a).await?;
    let new = fetch(&mut c, b.unwrap_or_default()).await?;
    let changes = changes(&document(&old)?, &document(&new)?);
    let out = &mut Printer::stdout(g.output);
    match g.output {
        Format::Json => {
            let changes: Vec<Value> = changes
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "section": c.section,
                        "key": c.key,
                        "old": c.old,
                        "new": c.new,
                    })
                })
                .collect();
            let doc = serde_json::json!({
                "from": old.digest,
                "to": new.digest,
                "changes": changes,
            });
            out.raw(&format!("{doc}\n"))
        }
        Format::Table => {
            let mut text = format!("policy {} -> {}\n", clean(&old.digest), clean(&new.digest));
            if changes.is_empty() {
                text.push_str("no change\n");
            }
            let mut section = None;
            for c in &changes {
                if section != Some(&c.section) {
                    text.push_str(&format!("{}\n", clean(&c.section)));
                    section = Some(&c.section);
                }
                let line = match (&c.old, &c.new) {
                    (None, Some(v)) if c.key.is_empty() => format!("  added: {}", render(v)),
                    (Some(v), None) if c.key.is_empty() => format!("  removed: {}", render(v)),
                    (None, Some(v)) => format!("  {}: (unset) → {}", c.key, render(v)),
                    (Some(v), None) => format!("  {}: {} → (unset)", c.key, render(v)),
                    (Some(o), Some(n)) => format!("  {}: {} → {}", c.key, render(o), render(n)),
                    (None, None) => continue,
                };
                text.push_str(&clean(&line));
                text.push('\n');
            }
            out.raw(&text)
        }
    }
}

async fn fetch(c: &mut Client, digest: String) -> Result<pb::Policy, CliError> {
    let req = pb::GetPolicyRequest { digest };
    Ok(c.api.get_policy(c.unary(req)).await?.into_inner())
}

fn document(p: &pb::Policy) -> Result<Map<String, Value>, CliError> {
    match serde_json::from_str(&p.canonical_json) {
        Ok(Value::Object(doc)) => Ok(doc),
        _ => Err(CliError::Evidence(format!(
            "policy {} is not a JSON object",
            p.digest
        ))),
    }
}

/// The readable view: the digest, then principals, check reporters and
/// each top-level environment's keys, then each project with only what it
/// changes from the top level.
pub fn summary(p: &pb::Policy) -> String {
    let recorded = p.first_recorded.as_ref().map_or_else(
        || "-".to_owned(),
        |t| super::time::rfc3339(t, super::time::Precision::Seconds),
    );
    let mut out = format!("policy {}\nfirst recorded {}\n", clean(&p.digest), recorded);
    let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(&p.canonical_json) else {
        out.push_str(&clean(&p.canonical_json));
        out.push('\n');
        return out;
    };
    let mut lines: Vec<String> = Vec::new();
    let secs = sections(&doc);
    let top_envs: BTreeMap<&str, &Map<String, Value>> = secs
        .iter()
        .filter_map(|(n, m)| Some((n.strip_prefix("environment ")?, m)))
        .collect();
    let principals: Vec<String> = secs
        .iter()
        .filter_map(|(n, m)| {
            let name = n.strip_prefix("principal ")?;
            let groups = m.get("groups").map(render).unwrap_or_default();
            Some(if groups.is_empty() || groups == "(none)" {
                name.to_owned()
            } else {
                format!("{name} ({groups})")
            })
        })
        .collect();
    lines.push(format!("principals: {}", principals.join(", ")));
    for (name, keys) in &secs {
        if name == "policy" {
            for (k, v) in keys {
                if k == "format" {
                    continue;
                }
                if k == "identities" {
                    let issuers: Vec<String> = v
                        .as_array()
                        .map(|a| a.iter().map(|i| render(&i["issuer"])).collect())
                        .unwrap_or_default();
                    lines.push(format!("identities: {}", issuers.join(", ")));
                    continue;
                }
                lines.extend(entry(k, v));
            }
        } else if name.starts_with("environment ") {
            lines.push(name.clone());
            lines.extend(
                keys.iter()
                    .filter_map(|(k, v)| entry(k, v))
                    .map(|l| format!("  {l}")),
            );
        } else if let Some(rest) = name.strip_prefix("project ") {
            match rest.split_once(" environment ") {
                None => {
                    lines.push(name.clone());
                    lines.extend(
                        keys.iter()
                            .filter_map(|(k, v)| entry(k, v))
                            .map(|l| format!("  {l}")),
                    );
                }
                Some((_, env)) => {
                    let base = top_envs.get(env);
                    let differs: Vec<String> = keys
                        .iter()
                        .filter(|(k, v)| base.and_then(|b| b.get(*k)) != Some(*v))
                        .map(|(k, v)| entry(k, v).unwrap_or_else(|| format!("{k}: {}", render(v))))
                        .collect();
                    if differs.is_empty() {
                        lines.push(format!("  environment {env}: as the top level"));
                    } else {
                        lines.push(format!("  environment {env}"));
                        lines.extend(differs.into_iter().map(|l| format!("    {l}")));
                    }
                }
            }
        }
    }
    for line in lines {
        out.push_str(&clean(&line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::reading::Change;

    fn doc(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn env(name: &str, approvals: u32, approvers: &[&str]) -> Value {
        serde_json::json!({
            "name": name, "tag": name, "required_approvals": approvals,
            "approvers": approvers, "approval_ttl_seconds": 86400, "window": null,
        })
    }

    #[test]
    fn changes_name_the_section_and_key_and_whole_sections_added_or_removed() {
        let old = doc(serde_json::json!({
            "format": 4, "check_reporters": [],
            "principals": [{"name": "alice", "groups": []}],
            "environments": [env("staging", 0, &[]), env("production", 1, &["group:rm"])],
            "projects": [{"name": "pay", "repositories": ["r/pay/*"], "environments": [env("production", 1, &["group:pay"])]}],
        }));
        let new = doc(serde_json::json!({
            "format": 4, "check_reporters": ["ci"],
            "principals": [{"name": "alice", "groups": []}],
            "environments": [env("staging", 0, &[]), env("production", 2, &["group:rm"])],
            "projects": [{"name": "web", "repositories": ["r/web/*"], "environments": [env("production", 2, &["group:rm"])]}],
        }));
        let c = changes(&old, &new);
        let at = |section: &str, key: &str| {
            c.iter()
                .find(|c| c.section == section && c.key == key)
                .unwrap_or_else(|| panic!("{section} {key} in {c:#?}"))
        };
        let ch = at("environment production", "required_approvals");
        assert_eq!(
            (ch.old.clone(), ch.new.clone()),
            (Some(Value::from(1)), Some(Value::from(2)))
        );
        assert_eq!(
            at("policy", "check_reporters").new,
            Some(serde_json::json!(["ci"]))
        );
        assert!(at("project web", "").old.is_none());
        assert!(at("project pay", "").new.is_none());
        assert!(at("project web environment production", "").old.is_none());
        assert!(
            !c.iter().any(|c| c.section == "environment staging"),
            "{c:#?}"
        );
        assert!(changes(&old, &old).is_empty());
    }

    #[test]
    fn the_summary_reads_per_environment_and_project_overrides_only() {
        let p = pb::Policy {
            digest: "sha256:ab".into(),
            canonical_json: serde_json::json!({
                "format": 4, "check_reporters": ["ci"],
                "principals": [{"name": "bob", "groups": ["rm"]}],
                "environments": [env("production", 1, &["group:rm"])],
                "projects": [
                    {"name": "pay", "repositories": ["r/pay/*"], "environments": [env("production", 2, &["group:rm"])]},
                    {"name": "web", "repositories": ["r/web/*"], "environments": [env("production", 1, &["group:rm"])]},
                ],
            })
            .to_string(),
            first_recorded: None,
        };
        let s = summary(&p);
        for line in [
            "policy sha256:ab\n",
            "principals: bob (rm)\n",
            "check_reporters: ci\n",
            "environment production\n  approval_ttl: 1day\n",
            "  approvers: group:rm\n",
            "project pay\n  repositories: r/pay/*\n  environment production\n    required_approvals: 2\n",
            "project web\n  repositories: r/web/*\n  environment production: as the top level\n",
        ] {
            assert!(s.contains(line), "{line:?} in\n{s}");
        }
        assert!(!s.contains('{'), "{s}");
    }

    #[test]
    fn wait_ttl_left_out_of_the_document_reads_as_its_default() {
        let mut waits = env("production", 1, &["group:rm"]);
        waits["wait_ttl_seconds"] = Value::from(1800);
        let doc_with = |project_env: Value| {
            serde_json::json!({
                "format": 4, "check_reporters": [],
                "principals": [{"name": "bob", "groups": ["rm"]}],
                "environments": [env("production", 1, &["group:rm"])],
                "projects": [{"name": "pay", "repositories": ["r/pay/*"], "environments": [project_env]}],
            })
        };
        let p = pb::Policy {
            digest: "sha256:ab".into(),
            canonical_json: doc_with(waits.clone()).to_string(),
            first_recorded: None,
        };
        let s = summary(&p);
        for line in [
            "environment production\n",
            "  wait_ttl: 7days\n",
            "project pay\n  repositories: r/pay/*\n  environment production\n    wait_ttl: 30m\n",
        ] {
            assert!(s.contains(line), "{line:?} in\n{s}");
        }
        let old = doc(doc_with(env("production", 1, &["group:rm"])));
        let c = changes(&old, &doc(doc_with(waits)));
        assert_eq!(
            c,
            [Change {
                section: "project pay environment production".into(),
                key: "wait_ttl_seconds".into(),
                old: Some(Value::from(604800)),
                new: Some(Value::from(1800)),
            }]
        );
    }
}
