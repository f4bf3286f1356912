//! Where prodgate's signed attestations ([`crate::attest`]) live in the
//! registry: cosign's attestation tag. Pure: the worker in [`super`] does the
//! I/O, `verify-image` reads what it writes.
//!
//! Layout (verified against sigstore/cosign `specs/ATTESTATION_SPEC.md` and
//! what cosign 2.x writes for `cosign attest --key` without
//! `--new-bundle-format`; cosign 3 defaults to Sigstore bundles in the
//! referrers index but its `verify-attestation`, Kyverno's `verifyImages`
//! and Sigstore policy-controller still read this tag): the tag
//! `sha256-<hex of the image digest>.att` in the image's repository carries
//! an OCI image manifest whose config is an OCI image config listing the
//! layers as its `rootfs.diff_ids` (the envelopes are stored uncompressed,
//! so a layer's diff id is its digest, as in cosign's own config), and whose
//! layers are the DSSE envelopes: media type
//! `application/vnd.dsse.envelope.v1+json`, annotations
//! `dev.cosignproject.cosign/signature: ""` (the signature is inside the
//! envelope) and `predicateType`. prodgate adds `dev.prodgate.promotion.id`
//! to its own layers, which cosign ignores, so it knows an attestation is
//! there without keeping state or reading blobs.
//!
//! One tag holds every attestation of the digest (cosign's, other tools',
//! prodgate's for each environment): a new one is appended as a layer and
//! every other layer is kept exactly as it was (unknown fields included).

use super::record::{Descriptor, PROMOTION_ANNOTATION, index_tag};
use crate::registry::Manifest;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// A DSSE envelope layer's media type.
pub const ENVELOPE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// cosign's signature annotation; empty on an attestation layer.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The annotation naming the Statement's predicate type.
pub const PREDICATE_TYPE_ANNOTATION: &str = "predicateType";
const IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// The attestation tag of `digest`: `sha256-<hex>.att` (only sha256
/// digests have one).
pub fn tag(digest: &str) -> Option<String> {
    index_tag(digest).map(|t| format!("{t}.att"))
}

/// Why the manifest under an attestation tag cannot be read or extended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("the attestation manifest is not an image manifest with layers: {0}")]
    NotAManifest(String),
}

/// One layer as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub annotations: Map<String, Value>,
}

impl Layer {
    /// The annotation `key`, if it is a string.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).and_then(Value::as_str)
    }

    /// Whether the layer is a DSSE envelope.
    pub fn is_envelope(&self) -> bool {
        self.media_type == ENVELOPE_MEDIA_TYPE
    }
}

/// The layers of the manifest under an attestation tag, in order; a layer
/// without a string `digest` is skipped (nothing could fetch it).
pub fn layers(manifest: &[u8]) -> Result<Vec<Layer>, LayoutError> {
    let doc = parse(manifest)?;
    Ok(layer_list(&doc)?
        .iter()
        .filter_map(|l| {
            Some(Layer {
                media_type: l.get("mediaType")?.as_str().unwrap_or("").to_owned(),
                digest: l.get("digest")?.as_str()?.to_owned(),
                size: l.get("size").and_then(Value::as_u64).unwrap_or(0),
                annotations: l
                    .get("annotations")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
            })
        })
        .collect())
}

/// Whether `manifest` holds prodgate's attestation of promotion `id`.
pub fn lists(manifest: &[u8], id: &str) -> Result<bool, LayoutError> {
    Ok(layer_list(&parse(manifest)?)?
        .iter()
        .any(|l| is_attestation_of(l, id)))
}

/// What to push for a merged attestation tag: the config blob, then the
/// manifest under the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub config: Vec<u8>,
    pub manifest: Manifest,
}

/// `existing` (the manifest under the tag now, `None` if there is none)
/// with `envelope` (the DSSE envelope's bytes, already pushed as a blob)
/// appended as the attestation of promotion `id`, every other layer kept as
/// it was. An older attestation of the same promotion (a lost race, a
/// statement made again with a newer checkpoint) is replaced rather than
/// listed twice. `None` when `envelope` is listed already.
pub fn merge(
    existing: Option<&[u8]>,
    envelope: &[u8],
    predicate_type: &str,
    id: &str,
) -> Result<Option<Merged>, LayoutError> {
    let layer = Descriptor::of(ENVELOPE_MEDIA_TYPE, envelope);
    let mut doc = match existing {
        Some(bytes) => parse(bytes)?,
        None => json!({"schemaVersion": 2, "layers": []}),
    };
    let listed = layer_list(&doc)?;
    if listed
        .iter()
        .any(|l| l.get("digest").and_then(Value::as_str) == Some(layer.digest.as_str()))
    {
        return Ok(None);
    }
    let mut layers: Vec<Value> = listed
        .iter()
        .filter(|l| !is_attestation_of(l, id))
        .cloned()
        .collect();
    layers.push(json!({
        "mediaType": layer.media_type,
        "digest": layer.digest,
        "size": layer.size,
        "annotations": {
            SIGNATURE_ANNOTATION: "",
            PREDICATE_TYPE_ANNOTATION: predicate_type,
            PROMOTION_ANNOTATION: id,
        },
    }));
    let diff_ids: Vec<Value> = layers
        .iter()
        .filter_map(|l| l.get("digest").cloned())
        .collect();
    // cosign's config for its signature and attestation images (an empty
    // image's, with the layers' diff ids); serde_json's sorted keys keep
    // the bytes of the same layers the same.
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap_or_default();
    if let Some(o) = doc.as_object_mut() {
        o.insert("layers".into(), Value::Array(layers));
        o.insert(
            "config".into(),
            json!({
                "mediaType": IMAGE_CONFIG,
                "digest": sha256(&config),
                "size": config.len(),
            }),
        );
        // Pushed with this Content-Type; an older Docker-typed manifest
        // under the tag becomes an OCI one with the same layers.
        o.insert("mediaType".into(), Value::from(IMAGE_MANIFEST));
        o.insert("schemaVersion".into(), Value::from(2));
    }
    let bytes = serde_json::to_vec(&doc).unwrap_or_default();
    Ok(Some(Merged {
        config,
        manifest: Manifest {
            digest: sha256(&bytes),
            media_type: IMAGE_MANIFEST.to_owned(),
            bytes,
        },
    }))
}

// `Value`, not oci-spec's `ImageManifest`: `merge` writes the manifest back
// and every field prodgate does not know must survive.
fn parse(manifest: &[u8]) -> Result<Value, LayoutError> {
    let doc: Value =
        serde_json::from_slice(manifest).map_err(|e| LayoutError::NotAManifest(e.to_string()))?;
    if !doc.is_object() {
        return Err(LayoutError::NotAManifest("it is not a JSON object".into()));
    }
    Ok(doc)
}

fn layer_list(doc: &Value) -> Result<&Vec<Value>, LayoutError> {
    doc.get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| LayoutError::NotAManifest("it has no layers list".into()))
}

fn is_attestation_of(layer: &Value, id: &str) -> bool {
    layer.get("mediaType").and_then(Value::as_str) == Some(ENVELOPE_MEDIA_TYPE)
        && layer
            .get("annotations")
            .and_then(|a| a.get(PROMOTION_ANNOTATION))
            .and_then(Value::as_str)
            == Some(id)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VSA: &str = "https://slsa.dev/verification_summary/v1";

    /// A manifest as cosign writes it, with one attestation of its own and
    /// a field prodgate does not know.
    fn cosigns() -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": IMAGE_MANIFEST,
            "config": {"mediaType": IMAGE_CONFIG, "digest": format!("sha256:{}", "c".repeat(64)), "size": 233},
            "layers": [{
                "mediaType": ENVELOPE_MEDIA_TYPE,
                "digest": format!("sha256:{}", "e".repeat(64)),
                "size": 246,
                "annotations": {SIGNATURE_ANNOTATION: "", PREDICATE_TYPE_ANNOTATION: "https://slsa.dev/provenance/v1", "dev.sigstore.cosign/bundle": "{}"},
            }],
            "x-unknown": {"kept": true},
        }))
        .unwrap()
    }

    #[test]
    fn the_tag_is_cosigns_att_tag_of_sha256_digests_only() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(tag(&d).unwrap(), format!("sha256-{}.att", "a".repeat(64)));
        assert_eq!(tag("sha512:abcd"), None);
        assert_eq!(tag("sha256:zz"), None);
    }

    #[test]
    fn a_new_attestation_is_appended_and_everything_else_kept() {
        let existing = cosigns();
        let m = merge(Some(&existing), b"{\"envelope\":1}", VSA, "42")
            .unwrap()
            .expect("appended");
        assert_eq!(m.manifest.digest, sha256(&m.manifest.bytes));
        let doc: Value = serde_json::from_slice(&m.manifest.bytes).unwrap();
        assert_eq!(doc["mediaType"], IMAGE_MANIFEST);
        assert_eq!(doc["x-unknown"]["kept"], true);
        let old: Value = serde_json::from_slice(&existing).unwrap();
        assert_eq!(
            doc["layers"][0], old["layers"][0],
            "cosign's layer as it was"
        );
        let l = layers(&m.manifest.bytes).unwrap();
        assert_eq!(l.len(), 2);
        assert!(l[1].is_envelope());
        assert_eq!(l[1].digest, sha256(b"{\"envelope\":1}"));
        assert_eq!(l[1].annotation(SIGNATURE_ANNOTATION), Some(""));
        assert_eq!(l[1].annotation(PREDICATE_TYPE_ANNOTATION), Some(VSA));
        // The config names the config blob and lists every layer.
        assert_eq!(doc["config"]["digest"], sha256(&m.config));
        let config: Value = serde_json::from_slice(&m.config).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"],
            json!([l[0].digest, l[1].digest])
        );
        assert!(lists(&m.manifest.bytes, "42").unwrap());
        assert!(!lists(&m.manifest.bytes, "43").unwrap());
        assert!(!lists(&existing, "42").unwrap());

        // The same envelope again: nothing to write.
        assert_eq!(
            merge(Some(&m.manifest.bytes), b"{\"envelope\":1}", VSA, "42").unwrap(),
            None
        );
        // A new statement of the same promotion replaces its older one.
        let again = merge(Some(&m.manifest.bytes), b"{\"envelope\":2}", VSA, "42")
            .unwrap()
            .unwrap();
        let l = layers(&again.manifest.bytes).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].digest, sha256(b"{\"envelope\":2}"));
        // Another promotion's is appended beside it.
        let other = merge(Some(&again.manifest.bytes), b"{\"envelope\":3}", VSA, "43")
            .unwrap()
            .unwrap();
        assert_eq!(layers(&other.manifest.bytes).unwrap().len(), 3);
    }

    #[test]
    fn the_first_attestation_makes_the_manifest() {
        let m = merge(None, b"{}", VSA, "7").unwrap().unwrap();
        let doc: Value = serde_json::from_slice(&m.manifest.bytes).unwrap();
        assert_eq!(doc["schemaVersion"], 2);
        assert_eq!(doc["config"]["mediaType"], IMAGE_CONFIG);
        assert_eq!(layers(&m.manifest.bytes).unwrap().len(), 1);
    }

    #[test]
    fn what_is_not_a_manifest_with_layers_is_refused() {
        for bad in [&b"[]"[..], b"{}", b"not json", b"{\"layers\":{}}"] {
            assert!(merge(Some(bad), b"{}", VSA, "1").is_err());
            assert!(layers(bad).is_err());
        }
    }
}
