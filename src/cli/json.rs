//! `--output json`: one proto3-JSON object per line, for scripts.
//!
//! A message the server sent is printed by the serde impls pbjson-build
//! generates from the .proto (build.rs), so the mapping follows the proto3
//! JSON spec rather than a hand-written copy of it:
//! - field names are lowerCamelCase (`requestedBy`, `promotionId`);
//! - enums are their full names (`"PROMOTION_STATE_PROMOTED"`,
//!   `"AUDIT_ACTION_APPLIED"`); a number this build does not know is printed
//!   as the number, as the spec says (see [`unknown_enum`]);
//! - `google.protobuf.Timestamp` is an RFC 3339 string in UTC with `Z` and 0,
//!   3, 6 or 9 fractional digits (`pb::Timestamp`);
//! - `uint64` is a decimal string (`"sequence":"12"`), `uint32` and `bool`
//!   are JSON numbers and booleans;
//! - **fields at their default value are omitted** (empty string, 0, false,
//!   empty list, unset Timestamp), as a proto3 serializer does by default. So
//!   a successful `verify-log` has `"ok":true`, a broken one has no `ok` at
//!   all, and a promotion without a previous digest has no `previousDigest`.
//!   Scripts should read a missing field as its default (jq: `.ok // false`);
//! - `attributes` has its keys in ascending order (a BTreeMap, build.rs).
//!
//! Every object is one line; field order follows the .proto. The objects of
//! `prove` and `consistency` are the CLI's own, in the same style.

use crate::pb;
#[cfg(test)]
use crate::pb::Timestamp;
use serde::Serialize;

/// One message as one line of JSON.
fn line<T: Serialize>(value: &T) -> String {
    // Serializing these types fails only on an enum number pbjson does not
    // know, which the callers route through `unknown_enum` first; should it
    // ever fail, the line still parses and says why.
    serde_json::to_string(value).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("cannot render as JSON: {e}") }).to_string()
    })
}

/// pbjson refuses to serialize an enum number the build does not know (an
/// error, "Invalid variant"), where the proto3 JSON spec, and this CLI talking
/// to a newer server, print the number. So `with_known` renders the message
/// with `placeholder` in the field instead, and the placeholder's name is
/// replaced by the number. The replacement cannot hit a string value (inside
/// one every `"` is escaped, so `"name":"` never occurs) and the first match
/// is the message's own field: every field before the enum is a scalar.
fn unknown_enum(with_known: String, name: &str, placeholder: &str, number: i32) -> String {
    with_known.replacen(
        &format!("\"{name}\":\"{placeholder}\""),
        &format!("\"{name}\":{number}"),
        1,
    )
}

pub fn promotion(p: &pb::Promotion) -> String {
    if pb::PromotionState::try_from(p.state).is_ok() {
        return line(p);
    }
    let placeholder = pb::PromotionState::PendingApproval;
    let mut known = p.clone();
    known.set_state(placeholder);
    unknown_enum(line(&known), "state", placeholder.as_str_name(), p.state)
}

/// A release as one line (its members inside, as the server sent them).
pub fn release(r: &pb::Release) -> String {
    line(r)
}

pub fn audit_entry(e: &pb::AuditEntry) -> String {
    if pb::AuditAction::try_from(e.action).is_ok() {
        return line(e);
    }
    let placeholder = pb::AuditAction::Requested;
    let mut known = e.clone();
    known.set_action(placeholder);
    unknown_enum(line(&known), "action", placeholder.as_str_name(), e.action)
}

pub fn check(r: &pb::CheckResult) -> String {
    if pb::CheckStatus::try_from(r.status).is_ok() {
        return line(r);
    }
    let placeholder = pb::CheckStatus::Passed;
    let mut known = r.clone();
    known.set_status(placeholder);
    unknown_enum(line(&known), "status", placeholder.as_str_name(), r.status)
}

pub fn deployed(d: &pb::Deployed) -> String {
    line(d)
}

pub fn verification(v: &pb::VerifyAuditLogResponse) -> String {
    line(v)
}

pub fn gate_report(r: &pb::GateReport) -> String {
    line(r)
}

pub fn checkpoint(c: &pb::Checkpoint) -> String {
    line(c)
}

pub fn policy(p: &pb::Policy) -> String {
    line(p)
}

/// `u64` as a decimal string, as proto3 JSON writes 64-bit integers
/// (JavaScript numbers lose precision above 2^53).
fn decimal<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn is_zero(v: &u64) -> bool {
    *v == 0
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
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Json<'a> {
        #[serde(skip_serializing_if = "is_zero", serialize_with = "decimal")]
        sequence: u64,
        #[serde(skip_serializing_if = "str::is_empty")]
        entry_hash: &'a str,
        #[serde(skip_serializing_if = "is_zero", serialize_with = "decimal")]
        leaf_index: u64,
        #[serde(skip_serializing_if = "is_zero", serialize_with = "decimal")]
        tree_size: u64,
        #[serde(skip_serializing_if = "str::is_empty")]
        root_hash: &'a str,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        hashes: &'a [String],
        #[serde(skip_serializing_if = "str::is_empty")]
        note: &'a str,
    }
    line(&Json {
        sequence: i.sequence,
        entry_hash: i.entry_hash,
        leaf_index: i.proof.leaf_index,
        tree_size: i.proof.tree_size,
        root_hash: i.root_hash,
        hashes: &i.proof.hashes,
        note: i.note,
    })
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
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Json<'a> {
        #[serde(skip_serializing_if = "is_zero", serialize_with = "decimal")]
        from_size: u64,
        #[serde(skip_serializing_if = "is_zero", serialize_with = "decimal")]
        to_size: u64,
        #[serde(skip_serializing_if = "str::is_empty")]
        from_root: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        to_root: &'a str,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        hashes: &'a [String],
        #[serde(skip_serializing_if = "str::is_empty")]
        note: &'a str,
    }
    line(&Json {
        from_size: c.proof.from_size,
        to_size: c.proof.to_size,
        from_root: c.from_root,
        to_root: c.to_root,
        hashes: &c.proof.hashes,
        note: c.note,
    })
}

/// `grpc.health.v1.HealthCheckResponse`: tonic-health's type, which has no
/// generated serde here, so its one enum field is written out.
pub fn health(status: i32, name: Option<&str>) -> String {
    let value = match (status, name) {
        (0, _) => return String::from("{}"),
        (_, Some(n)) => serde_json::Value::from(n),
        (n, None) => serde_json::Value::from(n),
    };
    serde_json::json!({ "status": value }).to_string()
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
            release_id: String::new(),
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
                groups: Vec::new(),
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
    fn a_waiting_promotion_has_its_gates_and_groups() {
        let p = pb::Promotion {
            id: "7".into(),
            state: pb::PromotionState::Waiting as i32,
            approvals: vec![pb::Approval {
                approver: "carol".into(),
                groups: vec!["security".into()],
                ..Default::default()
            }],
            waiting_for: vec!["soak".into(), "window".into()],
            not_before: Some(Timestamp {
                seconds: 1_795_703_520,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            parse(&promotion(&p)),
            json!({
                "id": "7",
                "state": "PROMOTION_STATE_WAITING",
                "approvals": [{"approver": "carol", "groups": ["security"]}],
                "waitingFor": ["soak", "window"],
                "notBefore": "2026-11-26T14:32:00Z",
            })
        );
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
