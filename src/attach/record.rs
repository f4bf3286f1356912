//! The record's bytes: the JSON layer naming the promotion and its evidence,
//! the OCI artifact manifest that carries it with the promoted image as its
//! `subject`, and the merge of that artifact into the referrers index
//! (`sha256-<hex>`), which keeps every other referrer as it was. Pure: the
//! worker in [`super`] gathers the facts and does the I/O.

use crate::domain::audit::AuditEntry;
use crate::domain::model::{CheckReport, Precision, Promotion};
use crate::evidence::SignedHead;
use crate::registry::{INDEX_MEDIA_TYPE, Manifest};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The artifact's `artifactType` and its layer's media type.
pub const ARTIFACT_TYPE: &str = "application/vnd.prodgate.promotion.v1+json";
/// The OCI empty descriptor's media type, for the artifact's config.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The empty config's content.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// The annotation naming the promotion, on the artifact and on its entry in
/// the index: how prodgate knows a record is attached without keeping
/// state of its own.
pub const PROMOTION_ANNOTATION: &str = "dev.prodgate.promotion.id";
const IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The layer's JSON. Field names are the format; add, never rename.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub promotion_id: String,
    pub repository: String,
    pub environment: String,
    pub target_tag: String,
    pub digest: String,
    /// What the tag carried before (empty: it did not exist).
    pub previous_digest: String,
    pub requested_by: String,
    pub reason: String,
    pub approvals: Vec<RecordApproval>,
    /// The policy version under which the promotion was approved.
    pub policy_digest: String,
    /// The latest report of each check for the digest when the record was made.
    pub checks: Vec<RecordCheck>,
    /// The APPLIED audit entry.
    pub applied: RecordEntry,
    /// A tree head covering the APPLIED entry (`size` ≥ its sequence); `note`
    /// is its signed checkpoint, empty without `[checkpoint]`.
    pub checkpoint: RecordCheckpoint,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordApproval {
    pub approver: String,
    /// RFC 3339, UTC.
    pub time: String,
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCheck {
    pub check: String,
    /// `PASSED` or `FAILED`, as ListChecks names them.
    pub status: String,
    pub reported_by: String,
    pub time: String,
    pub details_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEntry {
    pub sequence: u64,
    /// Hex, as History shows it.
    pub hash: String,
    pub time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCheckpoint {
    pub size: u64,
    /// Hex.
    pub root_hash: String,
    pub note: String,
}

impl Record {
    pub fn new(
        p: &Promotion,
        applied: &AuditEntry,
        checks: &[CheckReport],
        head: &SignedHead,
    ) -> Record {
        Record {
            promotion_id: p.id.to_string(),
            repository: p.repository.clone(),
            environment: p.environment.clone(),
            target_tag: p.target_tag.clone(),
            digest: p.digest.clone(),
            previous_digest: p.previous_digest.clone(),
            requested_by: p.requested_by.clone(),
            reason: p.reason.clone(),
            approvals: p
                .approvals
                .iter()
                .map(|a| RecordApproval {
                    approver: a.approver.clone(),
                    time: a.time.rfc3339(Precision::Nanos),
                    comment: a.comment.clone(),
                })
                .collect(),
            policy_digest: p.policy_digest.clone(),
            checks: checks
                .iter()
                .map(|c| RecordCheck {
                    check: c.check.clone(),
                    status: c.status.name().to_owned(),
                    reported_by: c.reported_by.clone(),
                    time: c.time.rfc3339(Precision::Nanos),
                    details_url: c.details_url.clone(),
                })
                .collect(),
            applied: RecordEntry {
                sequence: applied.sequence,
                hash: hex::encode(applied.hash),
                time: applied.time.rfc3339(Precision::Nanos),
            },
            checkpoint: RecordCheckpoint {
                size: head.size,
                root_hash: hex::encode(head.root),
                note: head.note.clone(),
            },
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain strings and integers: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A descriptor: what one manifest says about another piece of content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: sha256(bytes),
            size: bytes.len() as u64,
        }
    }

    fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The artifact: an image manifest with the empty config, `layer` (the
/// record) as its only layer, and `subject` the promoted manifest.
pub fn artifact(layer: &Descriptor, subject: &Descriptor, promotion_id: &str) -> Manifest {
    // `json!`, not oci-spec's builder: these bytes are pushed and digested, and
    // serde_json's sorted keys keep a retried record's digest what it was.
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": IMAGE_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": Descriptor::of(EMPTY_MEDIA_TYPE, EMPTY_CONFIG).json(),
        "layers": [layer.json()],
        "subject": subject.json(),
        "annotations": {PROMOTION_ANNOTATION: promotion_id},
    });
    let bytes = serde_json::to_vec(&doc).unwrap_or_default();
    Manifest {
        digest: sha256(&bytes),
        media_type: IMAGE_MANIFEST.to_owned(),
        bytes,
    }
}

/// The referrers tag-schema tag of `digest`: `sha256-<hex>`.
pub fn index_tag(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256-{hex}"))
}

/// Why an index cannot take the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("the referrers index is not an OCI image index: {0}")]
    NotAnIndex(String),
}

/// Whether `index` lists prodgate's record of promotion `id`.
pub fn lists(index: &[u8], id: &str) -> Result<bool, IndexError> {
    Ok(manifests(&parse(index)?)?
        .iter()
        .any(|d| is_record_of(d, id)))
}

// `Value`, not oci-spec's `ImageIndex`: `merge` writes the index back and every
// field prodgate does not know must survive; `lists` shares it to accept the same indexes.
fn parse(index: &[u8]) -> Result<Value, IndexError> {
    serde_json::from_slice(index).map_err(|e| IndexError::NotAnIndex(e.to_string()))
}

fn manifests(index: &Value) -> Result<&Vec<Value>, IndexError> {
    index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| IndexError::NotAnIndex("it has no manifests list".into()))
}

fn is_record_of(d: &Value, id: &str) -> bool {
    d.get("artifactType").and_then(Value::as_str) == Some(ARTIFACT_TYPE)
        && d.pointer(&format!(
            "/annotations/{}",
            PROMOTION_ANNOTATION.replace('/', "~1")
        ))
        .and_then(Value::as_str)
            == Some(id)
}

/// `index` (the current referrers index, `None` if there is none) with
/// `artifact`, the record of promotion `id`, listed, every other entry
/// (cosign's signatures and bundles, other tools' artifacts, unknown
/// fields) kept as it was. An older record of the same promotion (a lost
/// race) is replaced rather than listed twice. `None` when `artifact` is
/// listed already.
pub fn merge(
    index: Option<&[u8]>,
    artifact: &Manifest,
    id: &str,
) -> Result<Option<Manifest>, IndexError> {
    let mut doc = match index {
        Some(bytes) => parse(bytes)?,
        None => json!({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}),
    };
    let listed = manifests(&doc)?;
    if listed
        .iter()
        .any(|d| d.get("digest").and_then(Value::as_str) == Some(artifact.digest.as_str()))
    {
        return Ok(None);
    }
    let mut entries: Vec<Value> = listed
        .iter()
        .filter(|d| !is_record_of(d, id))
        .cloned()
        .collect();
    entries.push(json!({
        "mediaType": artifact.media_type,
        "digest": artifact.digest,
        "size": artifact.bytes.len(),
        "artifactType": ARTIFACT_TYPE,
        "annotations": {PROMOTION_ANNOTATION: id},
    }));
    if let Some(o) = doc.as_object_mut() {
        o.insert("manifests".into(), Value::Array(entries));
        // A registry refuses a body whose mediaType differs from the
        // Content-Type it is pushed with; say it outright.
        o.insert("mediaType".into(), Value::from(INDEX_MEDIA_TYPE));
    }
    let bytes = serde_json::to_vec(&doc).unwrap_or_default();
    Ok(Some(Manifest {
        digest: sha256(&bytes),
        media_type: INDEX_MEDIA_TYPE.to_owned(),
        bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Action, Approval, CheckStatus, Event, State, Time};
    use std::collections::BTreeMap;

    fn t(seconds: i64) -> Time {
        Time { seconds, nanos: 0 }
    }

    fn promotion() -> Promotion {
        Promotion {
            id: 42,
            repository: "reg.test/team/app".into(),
            environment: "production".into(),
            target_tag: "production".into(),
            source: "staging".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            state: State::Promoted,
            requested_by: "alice".into(),
            reason: "ship it".into(),
            approvals: vec![Approval {
                approver: "bob".into(),
                comment: "lgtm".into(),
                time: t(1_700_000_100),
                groups: vec!["rm".into()],
            }],
            required_approvals: 1,
            previous_digest: format!("sha256:{}", "b".repeat(64)),
            created_at: t(1_700_000_000),
            updated_at: t(1_700_000_200),
            promoted_at: Some(t(1_700_000_200)),
            failure_message: String::new(),
            expires_at: t(1_800_000_000),
            request_id: String::new(),
            superseded_by: None,
            break_glass: false,
            project: String::new(),
            rollback: false,
            waiting_for: Vec::new(),
            not_before: None,
            release_id: None,
            policy_digest: format!("sha256:{}", "c".repeat(64)),
            last_apply_error: String::new(),
            apply_attempts: 0,
        }
    }

    fn applied() -> AuditEntry {
        AuditEntry {
            sequence: 7,
            time: t(1_700_000_200),
            event: Event {
                action: Action::Applied,
                actor: "prodgate".into(),
                promotion_id: 42,
                repository: "reg.test/team/app".into(),
                environment: "production".into(),
                digest: format!("sha256:{}", "a".repeat(64)),
                previous_digest: String::new(),
                comment: String::new(),
                attributes: BTreeMap::new(),
            },
            prev_hash: [1; 32],
            hash: [2; 32],
        }
    }

    #[test]
    fn the_record_names_the_promotion_its_entry_and_a_checkpoint_covering_it() {
        let check = CheckReport {
            repository: "reg.test/team/app".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            check: "e2e".into(),
            status: CheckStatus::Passed,
            reported_by: "ci".into(),
            time: t(1_700_000_050),
            details_url: "https://ci.test/1".into(),
            comment: String::new(),
        };
        let head = SignedHead {
            size: 9,
            root: [3; 32],
            note: "origin\n9\nroot\n\n— k sig\n".into(),
        };
        let bytes = Record::new(&promotion(), &applied(), &[check], &head).to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["promotion_id"], "42");
        assert_eq!(v["repository"], "reg.test/team/app");
        assert_eq!(v["environment"], "production");
        assert_eq!(v["digest"], format!("sha256:{}", "a".repeat(64)));
        assert_eq!(v["previous_digest"], format!("sha256:{}", "b".repeat(64)));
        assert_eq!(v["requested_by"], "alice");
        assert_eq!(v["approvals"][0]["approver"], "bob");
        assert_eq!(v["approvals"][0]["comment"], "lgtm");
        assert_eq!(v["approvals"][0]["time"], "2023-11-14T22:15:00.000000000Z");
        assert_eq!(v["policy_digest"], format!("sha256:{}", "c".repeat(64)));
        assert_eq!(v["checks"][0]["check"], "e2e");
        assert_eq!(v["checks"][0]["status"], "PASSED");
        assert_eq!(v["applied"]["sequence"], 7);
        assert_eq!(v["applied"]["hash"], hex::encode([2; 32]));
        assert_eq!(v["checkpoint"]["size"], 9);
        assert_eq!(v["checkpoint"]["root_hash"], hex::encode([3; 32]));
        assert_eq!(v["checkpoint"]["note"], head.note);
        // The format reads back as written.
        let back: Record = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn the_artifact_refers_to_the_promoted_manifest() {
        let layer = Descriptor::of(ARTIFACT_TYPE, b"{\"x\":1}");
        let subject = Descriptor::of(IMAGE_MANIFEST, b"image");
        let m = artifact(&layer, &subject, "42");
        assert_eq!(m.digest, sha256(&m.bytes));
        let v: Value = serde_json::from_slice(&m.bytes).unwrap();
        assert_eq!(v["mediaType"], IMAGE_MANIFEST);
        assert_eq!(v["artifactType"], ARTIFACT_TYPE);
        assert_eq!(v["config"]["mediaType"], EMPTY_MEDIA_TYPE);
        assert_eq!(
            v["config"]["digest"],
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(v["config"]["size"], 2);
        assert_eq!(v["layers"][0]["mediaType"], ARTIFACT_TYPE);
        assert_eq!(v["layers"][0]["digest"], layer.digest);
        assert_eq!(v["subject"]["digest"], subject.digest);
        assert_eq!(v["subject"]["size"], 5);
        assert_eq!(v["annotations"][PROMOTION_ANNOTATION], "42");
    }

    #[test]
    fn index_tags_follow_the_tag_schema() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(
            index_tag(&format!("sha256:{hex}")),
            Some(format!("sha256-{hex}"))
        );
        assert_eq!(index_tag("sha256:abc"), None);
        assert_eq!(index_tag(&format!("sha512:{hex}")), None);
    }

    fn cosign_index() -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [{
                "mediaType": IMAGE_MANIFEST,
                "digest": format!("sha256:{}", "d".repeat(64)),
                "size": 700,
                "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                "annotations": {"dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"},
            }],
            "annotations": {"kept": "yes"},
        }))
        .unwrap()
    }

    #[test]
    fn merging_keeps_other_referrers_and_lists_the_record_once() {
        let ours = artifact(
            &Descriptor::of(ARTIFACT_TYPE, b"r1"),
            &Descriptor::of(IMAGE_MANIFEST, b"image"),
            "42",
        );
        let cosign = cosign_index();
        let merged = merge(Some(&cosign), &ours, "42").unwrap().unwrap();
        assert_eq!(merged.media_type, INDEX_MEDIA_TYPE);
        assert_eq!(merged.digest, sha256(&merged.bytes));
        let v: Value = serde_json::from_slice(&merged.bytes).unwrap();
        let before: Value = serde_json::from_slice(&cosign).unwrap();
        assert_eq!(
            v["manifests"][0], before["manifests"][0],
            "cosign's entry as it was"
        );
        assert_eq!(
            v["annotations"], before["annotations"],
            "unknown fields kept"
        );
        assert_eq!(v["manifests"][1]["digest"], ours.digest);
        assert_eq!(v["manifests"][1]["size"], ours.bytes.len());
        assert_eq!(v["manifests"][1]["artifactType"], ARTIFACT_TYPE);
        assert!(lists(&merged.bytes, "42").unwrap());
        assert!(!lists(&merged.bytes, "43").unwrap());
        assert!(!lists(&cosign, "42").unwrap());

        // Listed already: nothing to push.
        assert_eq!(merge(Some(&merged.bytes), &ours, "42").unwrap(), None);

        // Another record of the same promotion replaces the older one;
        // another promotion's record is kept beside it.
        let newer = artifact(
            &Descriptor::of(ARTIFACT_TYPE, b"r2"),
            &Descriptor::of(IMAGE_MANIFEST, b"image"),
            "42",
        );
        let again = merge(Some(&merged.bytes), &newer, "42").unwrap().unwrap();
        let v: Value = serde_json::from_slice(&again.bytes).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
        assert_eq!(v["manifests"][1]["digest"], newer.digest);
        let other = artifact(
            &Descriptor::of(ARTIFACT_TYPE, b"r3"),
            &Descriptor::of(IMAGE_MANIFEST, b"image"),
            "43",
        );
        let both = merge(Some(&again.bytes), &other, "43").unwrap().unwrap();
        assert!(lists(&both.bytes, "42").unwrap() && lists(&both.bytes, "43").unwrap());
    }

    #[test]
    fn an_absent_index_is_created_and_a_foreign_document_refused() {
        let ours = artifact(
            &Descriptor::of(ARTIFACT_TYPE, b"r1"),
            &Descriptor::of(IMAGE_MANIFEST, b"image"),
            "1",
        );
        let created = merge(None, &ours, "1").unwrap().unwrap();
        let v: Value = serde_json::from_slice(&created.bytes).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], INDEX_MEDIA_TYPE);
        assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
        assert!(matches!(
            merge(Some(b"not json"), &ours, "1"),
            Err(IndexError::NotAnIndex(_))
        ));
        assert!(matches!(
            merge(Some(br#"{"layers":[]}"#), &ours, "1"),
            Err(IndexError::NotAnIndex(_))
        ));
    }
}
