//! The proto3 JSON mapping of the messages the CLI prints, written by hand
//! because the generated prost types carry no serde. This is the one place
//! that decides how a message looks in `--output json`; scripts depend on it.
//!
//! The choices, all from the proto3 JSON spec:
//! - field names are lowerCamelCase (`requestedBy`, `promotionId`);
//! - enums are their full names (`"PROMOTION_STATE_PROMOTED"`,
//!   `"AUDIT_ACTION_APPLIED"`); a number this build does not know is printed
//!   as the number, as the spec says;
//! - `google.protobuf.Timestamp` is an RFC 3339 string in UTC with `Z` and 0,
//!   3, 6 or 9 fractional digits;
//! - `uint64` is a decimal string (`"sequence":"12"`), `uint32` and `bool`
//!   are JSON numbers and booleans;
//! - **fields at their default value are omitted** (empty string, 0, false,
//!   empty list, unset Timestamp), as a proto3 serializer does by default. So
//!   a successful `verify-log` has `"ok":true`, a broken one has no `ok` at
//!   all, and a promotion without a previous digest has no `previousDigest`.
//!   Scripts should read a missing field as its default (jq: `.ok // false`).
//!
//! Every object is one line; field order follows the .proto.

use super::time::{Precision, rfc3339};
use crate::pb;
use prost_types::Timestamp;

/// Builds one JSON object, leaving out fields at their proto3 default.
struct Object {
    buf: String,
}

impl Object {
    fn new() -> Self {
        Self {
            buf: String::from("{"),
        }
    }

    fn key(&mut self, name: &str) {
        if self.buf.len() > 1 {
            self.buf.push(',');
        }
        self.buf.push_str(&quote(name));
        self.buf.push(':');
    }

    fn string(mut self, name: &str, v: &str) -> Self {
        if !v.is_empty() {
            self.key(name);
            self.buf.push_str(&quote(v));
        }
        self
    }

    /// A `map<string, string>` as a JSON object, keys in ascending order
    /// (HashMap order would differ run to run); omitted when empty.
    fn map(mut self, name: &str, v: &std::collections::HashMap<String, String>) -> Self {
        if !v.is_empty() {
            self.key(name);
            let mut pairs: Vec<_> = v.iter().collect();
            pairs.sort();
            self.buf.push('{');
            for (i, (k, val)) in pairs.into_iter().enumerate() {
                if i > 0 {
                    self.buf.push(',');
                }
                self.buf.push_str(&quote(k));
                self.buf.push(':');
                self.buf.push_str(&quote(val));
            }
            self.buf.push('}');
        }
        self
    }

    fn boolean(mut self, name: &str, v: bool) -> Self {
        if v {
            self.key(name);
            self.buf.push_str("true");
        }
        self
    }

    fn uint32(mut self, name: &str, v: u32) -> Self {
        if v != 0 {
            self.key(name);
            self.buf.push_str(&v.to_string());
        }
        self
    }

    /// 64-bit integers are strings: JavaScript numbers lose precision above 2^53.
    fn uint64(mut self, name: &str, v: u64) -> Self {
        if v != 0 {
            self.key(name);
            self.buf.push_str(&quote(&v.to_string()));
        }
        self
    }

    fn enumeration(mut self, name: &str, number: i32, known: Option<&str>) -> Self {
        if number != 0 {
            self.key(name);
            match known {
                Some(n) => self.buf.push_str(&quote(n)),
                None => self.buf.push_str(&number.to_string()),
            }
        }
        self
    }

    fn timestamp(mut self, name: &str, v: Option<&Timestamp>) -> Self {
        if let Some(ts) = v {
            self.key(name);
            self.buf.push_str(&quote(&rfc3339(ts, Precision::Exact)));
        }
        self
    }

    /// `items` are already-rendered JSON values.
    fn array(mut self, name: &str, items: Vec<String>) -> Self {
        if !items.is_empty() {
            self.key(name);
            self.buf.push('[');
            self.buf.push_str(&items.join(","));
            self.buf.push(']');
        }
        self
    }

    fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

/// A JSON string literal with serde_json's escaping.
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

pub fn promotion(p: &pb::Promotion) -> String {
    let state = pb::PromotionState::try_from(p.state).ok();
    Object::new()
        .string("id", &p.id)
        .string("repository", &p.repository)
        .string("environment", &p.environment)
        .string("targetTag", &p.target_tag)
        .string("source", &p.source)
        .string("digest", &p.digest)
        .enumeration("state", p.state, state.map(|s| s.as_str_name()))
        .string("requestedBy", &p.requested_by)
        .string("reason", &p.reason)
        .array("approvals", p.approvals.iter().map(approval).collect())
        .uint32("requiredApprovals", p.required_approvals)
        .string("previousDigest", &p.previous_digest)
        .timestamp("createdAt", p.created_at.as_ref())
        .timestamp("updatedAt", p.updated_at.as_ref())
        .timestamp("promotedAt", p.promoted_at.as_ref())
        .string("failureMessage", &p.failure_message)
        .timestamp("expiresAt", p.expires_at.as_ref())
        .string("supersededBy", &p.superseded_by)
        .string("lastApplyError", &p.last_apply_error)
        .uint32("applyAttempts", p.apply_attempts)
        .boolean("rollback", p.rollback)
        .boolean("breakGlass", p.break_glass)
        .string("policyDigest", &p.policy_digest)
        .string("project", &p.project)
        .finish()
}

fn approval(a: &pb::Approval) -> String {
    Object::new()
        .string("approver", &a.approver)
        .string("comment", &a.comment)
        .timestamp("time", a.time.as_ref())
        .finish()
}

pub fn audit_entry(e: &pb::AuditEntry) -> String {
    let action = pb::AuditAction::try_from(e.action).ok();
    Object::new()
        .uint64("sequence", e.sequence)
        .timestamp("time", e.time.as_ref())
        .string("actor", &e.actor)
        .enumeration("action", e.action, action.map(|a| a.as_str_name()))
        .string("promotionId", &e.promotion_id)
        .string("repository", &e.repository)
        .string("environment", &e.environment)
        .string("digest", &e.digest)
        .string("previousDigest", &e.previous_digest)
        .string("comment", &e.comment)
        .string("prevHash", &e.prev_hash)
        .string("hash", &e.hash)
        .map("attributes", &e.attributes)
        .finish()
}

pub fn deployed(d: &pb::Deployed) -> String {
    Object::new()
        .string("digest", &d.digest)
        .string("promotionId", &d.promotion_id)
        .timestamp("since", d.since.as_ref())
        .boolean("drifted", d.drifted)
        .finish()
}

pub fn verification(v: &pb::VerifyAuditLogResponse) -> String {
    Object::new()
        .boolean("ok", v.ok)
        .uint64("entriesChecked", v.entries_checked)
        .uint64("firstBadSequence", v.first_bad_sequence)
        .string("headHash", &v.head_hash)
        .string("message", &v.message)
        .finish()
}

pub fn gate_report(r: &pb::GateReport) -> String {
    let gate = |g: &pb::Gate| {
        Object::new()
            .string("name", &g.name)
            .boolean("passed", g.passed)
            .string("message", &g.message)
            .finish()
    };
    Object::new()
        .boolean("ready", r.ready)
        .array("gates", r.gates.iter().map(gate).collect())
        .finish()
}

pub fn check(r: &pb::CheckResult) -> String {
    let status = pb::CheckStatus::try_from(r.status).ok();
    Object::new()
        .string("repository", &r.repository)
        .string("digest", &r.digest)
        .string("check", &r.check)
        .enumeration("status", r.status, status.map(|s| s.as_str_name()))
        .string("reportedBy", &r.reported_by)
        .timestamp("time", r.time.as_ref())
        .string("detailsUrl", &r.details_url)
        .string("comment", &r.comment)
        .finish()
}

pub fn checkpoint(c: &pb::Checkpoint) -> String {
    Object::new()
        .uint64("size", c.size)
        .string("rootHash", &c.root_hash)
        .string("note", &c.note)
        .finish()
}

pub fn policy(p: &pb::Policy) -> String {
    Object::new()
        .string("digest", &p.digest)
        .string("canonicalJson", &p.canonical_json)
        .timestamp("firstRecorded", p.first_recorded.as_ref())
        .finish()
}

/// What `prove` checked: the entry, its inclusion proof and the signed
/// checkpoint the proof leads to.
pub struct Inclusion<'a> {
    pub sequence: u64,
    pub entry_hash: &'a str,
    pub proof: &'a pb::InclusionProof,
    pub root_hash: &'a str,
    pub note: &'a str,
}

/// `prove -o json`; `leafIndex` is the sequence less 1 (so, as every
/// default, absent for entry 1).
pub fn inclusion(i: &Inclusion) -> String {
    Object::new()
        .uint64("sequence", i.sequence)
        .string("entryHash", i.entry_hash)
        .uint64("leafIndex", i.proof.leaf_index)
        .uint64("treeSize", i.proof.tree_size)
        .string("rootHash", i.root_hash)
        .array("hashes", i.proof.hashes.iter().map(|h| quote(h)).collect())
        .string("note", i.note)
        .finish()
}

/// What `consistency` checked: the proof, the two roots it joins and the
/// signed checkpoint.
pub struct Consistency<'a> {
    pub proof: &'a pb::ConsistencyProof,
    pub from_root: &'a str,
    pub to_root: &'a str,
    pub note: &'a str,
}

/// `consistency -o json`.
pub fn consistency(c: &Consistency) -> String {
    Object::new()
        .uint64("fromSize", c.proof.from_size)
        .uint64("toSize", c.proof.to_size)
        .string("fromRoot", c.from_root)
        .string("toRoot", c.to_root)
        .array("hashes", c.proof.hashes.iter().map(|h| quote(h)).collect())
        .string("note", c.note)
        .finish()
}

/// `grpc.health.v1.HealthCheckResponse`.
pub fn health(status: i32, name: Option<&str>) -> String {
    Object::new().enumeration("status", status, name).finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(s: &str) -> Value {
        assert!(!s.contains('\n'), "one line: {s}");
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
    }

    #[test]
    fn deployed_carries_drifted_when_true() {
        let mut d = pb::Deployed {
            digest: "sha256:ab".into(),
            promotion_id: "7".into(),
            since: None,
            drifted: false,
        };
        assert_eq!(parse(&deployed(&d)).get("drifted"), None);
        d.drifted = true;
        assert_eq!(parse(&deployed(&d))["drifted"], json!(true));
    }

    #[test]
    fn promotion_uses_camel_case_enum_names_and_omits_defaults() {
        let p = pb::Promotion {
            id: "7".into(),
            repository: "r.example/app".into(),
            environment: "production".into(),
            target_tag: "production".into(),
            source: "staging".into(),
            digest: "sha256:ab".into(),
            state: pb::PromotionState::Promoted as i32,
            requested_by: "alice".into(),
            reason: "say \"hi\"\n".into(),
            approvals: vec![pb::Approval {
                approver: "bob".into(),
                comment: String::new(),
                time: Some(Timestamp {
                    seconds: 1_795_703_520,
                    nanos: 500_000_000,
                }),
            }],
            required_approvals: 1,
            previous_digest: String::new(),
            created_at: Some(Timestamp {
                seconds: 1_795_703_520,
                nanos: 0,
            }),
            updated_at: None,
            promoted_at: None,
            failure_message: String::new(),
            expires_at: None,
            ..Default::default()
        };
        let text = promotion(&p);
        assert!(text.starts_with(r#"{"id":"7","repository":"#), "{text}");
        assert_eq!(
            parse(&text),
            json!({
                "id": "7",
                "repository": "r.example/app",
                "environment": "production",
                "targetTag": "production",
                "source": "staging",
                "digest": "sha256:ab",
                "state": "PROMOTION_STATE_PROMOTED",
                "requestedBy": "alice",
                "reason": "say \"hi\"\n",
                "approvals": [{"approver": "bob", "time": "2026-11-26T14:32:00.500Z"}],
                "requiredApprovals": 1,
                "createdAt": "2026-11-26T14:32:00Z",
            })
        );
        assert_eq!(promotion(&pb::Promotion::default()), "{}");
    }

    #[test]
    fn unknown_enum_numbers_stay_numbers_and_uint64_are_strings() {
        let e = pb::AuditEntry {
            sequence: 12,
            action: 99,
            ..Default::default()
        };
        assert_eq!(
            parse(&audit_entry(&e)),
            json!({"sequence": "12", "action": 99})
        );
        let mut with = e.clone();
        with.attributes.insert("status".into(), "passed".into());
        with.attributes.insert("check".into(), "e2e \"x\"".into());
        let text = audit_entry(&with);
        assert!(
            text.ends_with(r#""attributes":{"check":"e2e \"x\"","status":"passed"}}"#),
            "{text}"
        );
        let v = pb::VerifyAuditLogResponse {
            ok: false,
            entries_checked: 3,
            first_bad_sequence: 2,
            head_hash: "ab".into(),
            message: "altered".into(),
        };
        assert_eq!(
            parse(&verification(&v)),
            json!({"entriesChecked": "3", "firstBadSequence": "2", "headHash": "ab", "message": "altered"})
        );
    }
}
