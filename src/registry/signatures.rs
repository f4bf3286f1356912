//! Finding cosign's signatures of a digest in a registry without a
//! referrers API (Distribution 2.8 has none): the legacy `sha256-<hex>.sig`
//! manifest and the Sigstore bundles listed in the referrers tag-schema
//! index `sha256-<hex>`. Reads only, each body capped; what is found is
//! verified by [`crate::domain::signature`].

use super::{Registry, RegistryError};
use crate::domain::names::Repository;
use crate::domain::signature::{
    BUNDLE_ARTIFACT_PREFIX, CANDIDATE_LIMIT, Candidate, Found, PAYLOAD_LIMIT, SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE, legacy_tag, referrers_tag,
};
use oci_spec::image::{ImageIndex, ImageManifest, MediaType};

/// Every signature of `digest` in `repo`, up to [`CANDIDATE_LIMIT`] of each
/// form. A signature that cannot be read for what it is (a missing or
/// oversized blob, bytes that do not match their digest, JSON of another
/// shape) is a [`Candidate::Unreadable`], which the gate reports; only a
/// registry that cannot be asked (unavailable, refusing prodgate's
/// credentials, answering off-protocol) is an error.
pub async fn find(
    registry: &dyn Registry,
    repo: &Repository,
    digest: &str,
) -> Result<Found, RegistryError> {
    let mut found = Found::default();
    // A digest that is not sha256 has no tag cosign could have written.
    let (Some(legacy), Some(referrers)) = (legacy_tag(digest), referrers_tag(digest)) else {
        return Ok(found);
    };
    found.looked_at.push(format!("{repo}:{legacy}"));
    if let Read::Got(m) = readable(registry.fetch(repo, &legacy).await, &mut found, &legacy)? {
        legacy_candidates(registry, repo, &legacy, &m.bytes, &mut found).await?;
    }
    found.looked_at.push(format!("{repo}:{referrers}"));
    let index = registry.fetch(repo, &referrers).await;
    if let Read::Got(m) = readable(index, &mut found, &referrers)? {
        bundle_candidates(registry, repo, &referrers, &m.bytes, &mut found).await?;
    }
    Ok(found)
}

/// What a read gave.
enum Read<T> {
    Got(T),
    /// The registry has nothing there (404).
    Absent,
    /// There is something, but it cannot be used; the reason is recorded.
    Unusable,
}

/// Sorts a read: content that cannot be used becomes a recorded reason;
/// registry failures stay errors.
fn readable<T>(
    read: Result<Option<T>, RegistryError>,
    found: &mut Found,
    source: &str,
) -> Result<Read<T>, RegistryError> {
    match read {
        Ok(Some(v)) => Ok(Read::Got(v)),
        Ok(None) => Ok(Read::Absent),
        Err(
            e @ (RegistryError::ManifestTooLarge { .. }
            | RegistryError::BlobTooLarge { .. }
            | RegistryError::DigestMismatch { .. }
            | RegistryError::NotFound { .. }),
        ) => {
            unreadable(found, source.to_owned(), &e.to_string());
            Ok(Read::Unusable)
        }
        Err(
            e @ (RegistryError::Unavailable { .. }
            | RegistryError::Denied { .. }
            | RegistryError::Protocol { .. }
            | RegistryError::Refused { .. }),
        ) => Err(e),
    }
}

fn unreadable(found: &mut Found, source: String, why: &str) {
    found.candidates.push(Candidate::Unreadable {
        source,
        why: why.to_owned(),
    });
}

/// The simple-signing layers of a `.sig` manifest, with their payloads.
async fn legacy_candidates(
    registry: &dyn Registry,
    repo: &Repository,
    tag: &str,
    manifest: &[u8],
    found: &mut Found,
) -> Result<(), RegistryError> {
    // Typed: a manifest oci-spec refuses (a descriptor without its required
    // mediaType, digest or size) is invalid anyway and stays unreadable.
    let Ok(manifest) = serde_json::from_slice::<ImageManifest>(manifest) else {
        unreadable(
            found,
            tag.to_owned(),
            "is not an image manifest with layers",
        );
        return Ok(());
    };
    let simple_signing = MediaType::from(SIMPLE_SIGNING_MEDIA_TYPE);
    let signing = manifest
        .layers()
        .iter()
        .enumerate()
        .filter(|(_, l)| *l.media_type() == simple_signing)
        .take(CANDIDATE_LIMIT);
    let mut any = false;
    for (i, layer) in signing {
        any = true;
        let source = format!("{tag} layer {i}");
        let blob = layer.digest().as_ref();
        let Some(signature) = layer
            .annotations()
            .as_ref()
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
        else {
            unreadable(
                found,
                source,
                &format!("the layer has no {SIGNATURE_ANNOTATION} annotation"),
            );
            continue;
        };
        let payload = registry.fetch_blob(repo, blob, PAYLOAD_LIMIT).await;
        match readable(payload, found, &source)? {
            Read::Got(payload) => found.candidates.push(Candidate::SimpleSigning {
                source,
                payload,
                signature: signature.to_owned(),
            }),
            Read::Absent => unreadable(
                found,
                source,
                &format!("its payload blob {blob} is missing"),
            ),
            Read::Unusable => {}
        }
    }
    if !any {
        unreadable(
            found,
            tag.to_owned(),
            &format!("has no layer of media type {SIMPLE_SIGNING_MEDIA_TYPE}"),
        );
    }
    Ok(())
}

/// The Sigstore bundles a referrers index lists (other referrers, such as
/// SBOMs or prodgate's own records, are not signatures and are skipped).
async fn bundle_candidates(
    registry: &dyn Registry,
    repo: &Repository,
    tag: &str,
    index: &[u8],
    found: &mut Found,
) -> Result<(), RegistryError> {
    // Typed as above: an index oci-spec refuses is invalid anyway.
    let Ok(index) = serde_json::from_slice::<ImageIndex>(index) else {
        unreadable(found, tag.to_owned(), "is not an image index");
        return Ok(());
    };
    let bundles = index
        .manifests()
        .iter()
        .filter(|d| {
            d.artifact_type()
                .as_ref()
                .is_some_and(|t| t.to_string().starts_with(BUNDLE_ARTIFACT_PREFIX))
        })
        .map(|d| d.digest().as_ref())
        .take(CANDIDATE_LIMIT);
    for manifest_digest in bundles {
        let source = format!("{tag} → {manifest_digest}");
        let m = match readable(registry.fetch(repo, manifest_digest).await, found, &source)? {
            Read::Got(m) => m,
            Read::Absent => {
                unreadable(found, source, "the index lists a manifest that is missing");
                continue;
            }
            Read::Unusable => continue,
        };
        // cosign puts the bundle in the artifact's one layer.
        let layer = serde_json::from_slice::<ImageManifest>(&m.bytes)
            .ok()
            .and_then(|v| v.layers().first().map(|l| l.digest().to_string()));
        let Some(layer) = layer else {
            unreadable(found, source, "the bundle's manifest has no layer");
            continue;
        };
        let blob = registry.fetch_blob(repo, &layer, PAYLOAD_LIMIT).await;
        match readable(blob, found, &source)? {
            Read::Got(bundle) => found.candidates.push(Candidate::Bundle { source, bundle }),
            Read::Absent => unreadable(
                found,
                source,
                &format!("its bundle blob {layer} is missing"),
            ),
            Read::Unusable => {}
        }
    }
    Ok(())
}
