//! `prodgate verify-image` (local, no server): whether an image's digest
//! carries a valid prodgate attestation for an environment, read from the
//! registry the way an admission controller reads it (cosign's attestation
//! tag, [`crate::attach::attestation`]) and checked with
//! [`crate::attest::verify`]. One line per layer looked at, then the verdict.

use super::CliError;
use super::output::Printer;
use crate::attach::attestation::{self, Layer, PREDICATE_TYPE_ANNOTATION};
use crate::attest::VSA_TYPE;
use crate::attest::verify::{self, Accepted, PublicKey, Rejection};
use crate::config::{Config, DEFAULT_REGISTRY_TIMEOUT, Files};
use crate::domain::names::{Reference, Repository, Source, echo, split_image, validate_digest};
use crate::registry::oci::OciRegistry;
use crate::registry::{Registry, RegistryError};
use crate::telemetry::visible;
use std::io::Read;
use std::path::Path;

/// Layers of the attestation manifest looked at; more are reported, not
/// read. cosign appends one per `cosign attest` and prodgate one per
/// promotion (replacing its own older one), so a real tag holds a handful.
pub const MAX_LAYERS: usize = 64;

/// The most of one envelope read from the registry: a VSA with prodgate's
/// extra fields is a few KiB.
pub const ENVELOPE_LIMIT: usize = 1024 * 1024;

/// A public key file is a few hundred bytes; this much is read at most.
const KEY_FILE_LIMIT: u64 = 64 * 1024;

/// IMAGE as `verify-image` takes it: a repository and a tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub repo: Repository,
    pub reference: Source,
}

impl std::fmt::Display for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reference {
            Source::Tag(t) => write!(f, "{}:{t}", self.repo),
            Source::Digest(d) => write!(f, "{}@{d}", self.repo),
        }
    }
}

/// `host[:port]/repo:tag`, `host[:port]/repo@sha256:<hex>`, or
/// `host[:port]/repo` (tag `latest`, as docker reads it). A colon before
/// the last `/` is the registry's port.
pub fn image(s: &str) -> Result<Image, String> {
    let usage = "expected host[:port]/repository[:tag] or host[:port]/repository@sha256:<hex>";
    let (name, reference) = match split_image(s) {
        (name, Some(Reference::Digest(digest))) => {
            validate_digest(digest).map_err(|e| format!("{usage}: {e}"))?;
            (name, Source::Digest(digest.to_owned()))
        }
        (name, Some(Reference::Tag(tag))) => {
            let reference = Source::parse(tag).map_err(|e| format!("{usage}: {e}"))?;
            (name, reference)
        }
        (name, None) => (name, Source::Tag("latest".to_owned())),
    };
    let repo =
        Repository::parse(name).map_err(|e| format!("{usage}: repository {:?} {e}", echo(name)))?;
    Ok(Image { repo, reference })
}

/// What became of one layer.
enum Outcome {
    Accepted(Accepted),
    /// Not an attestation this command judges (another predicate, not an
    /// envelope): it neither counts for nor against the image.
    Skipped(String),
    Rejected(String),
    /// The registry failed to hand over the envelope: the verdict cannot be
    /// "not attested" on its account.
    Unread(RegistryError),
}

/// Checks `image` for `environment` with the public key in `key_file`,
/// reaching the registry as `serve` would with `config`, or anonymously
/// over HTTPS without one.
pub async fn verify_image(
    image: &Image,
    environment: &str,
    key_file: &Path,
    config: Option<&Path>,
    out: &mut Printer,
) -> Result<(), CliError> {
    let key = read_key(key_file)?;
    let registry = client(config)?;
    let repo = &image.repo;
    let digest = match &image.reference {
        Source::Digest(d) => d.clone(),
        Source::Tag(t) => {
            registry
                .resolve(repo, t)
                .await?
                .ok_or_else(|| RegistryError::NotFound {
                    reference: image.to_string(),
                })?
        }
    };
    let line = |text: String| format!("{}\n", visible(&text));
    out.raw(&line(format!("image: {repo}@{digest}")))?;
    let not_attested = || CliError::NotAttested {
        image: format!("{repo}@{digest}"),
        environment: environment.to_owned(),
    };
    let Some(tag) = attestation::tag(&digest) else {
        out.raw(&line(format!(
            "NOT VERIFIED: no attestations for {digest} (only sha256 digests have an attestation tag)"
        )))?;
        return Err(not_attested());
    };
    let Some(manifest) = registry.fetch(repo, &tag).await? else {
        out.raw(&line(format!(
            "NOT VERIFIED: no attestations for {digest} (no tag {tag})"
        )))?;
        return Err(not_attested());
    };
    let layers = match attestation::layers(&manifest.bytes) {
        Ok(l) => l,
        Err(e) => {
            out.raw(&line(format!("NOT VERIFIED: tag {tag}: {e}")))?;
            return Err(not_attested());
        }
    };
    out.raw(&line(format!(
        "attestations: tag {tag}, {} layer{}",
        layers.len(),
        if layers.len() == 1 { "" } else { "s" }
    )))?;
    let check = Check {
        key: &key,
        key_name: &key_file.display().to_string(),
        digest: &digest,
        environment,
    };
    let mut accepted = None;
    let mut failed = None;
    let mut looked = 0;
    for (i, layer) in layers.iter().take(MAX_LAYERS).enumerate() {
        let n = i + 1;
        looked = n;
        let text = match check.layer(&registry, repo, layer).await {
            Outcome::Accepted(a) => {
                accepted.get_or_insert(n);
                format!("accepted: {a}")
            }
            Outcome::Skipped(why) => format!("skipped: {why}"),
            Outcome::Rejected(why) => format!("rejected: {why}"),
            Outcome::Unread(e) => {
                let text = format!("not read: {e}");
                failed = Some((n, e));
                text
            }
        };
        out.raw(&line(format!("layer {n}: {text}")))?;
        // A registry failing for one blob fails for the next (each after
        // its timeout): stop asking.
        if failed.is_some() {
            break;
        }
    }
    if looked < layers.len() {
        let why = if failed.is_some() {
            "the registry failed".to_owned()
        } else {
            format!("only the first {MAX_LAYERS} are")
        };
        let rest = if looked + 1 == layers.len() {
            format!("layer {}", layers.len())
        } else {
            format!("layers {}-{}", looked + 1, layers.len())
        };
        out.raw(&line(format!("{rest}: not looked at ({why})")))?;
    }
    if let Some(n) = accepted {
        return out.raw(&line(format!(
            "VERIFIED: {repo}@{digest} is attested for {environment} (layer {n})"
        )));
    }
    let verdict = format!(
        "NOT VERIFIED: no attestation of {repo}@{digest} verifies for {environment} with {}",
        check.key_name
    );
    match failed {
        // The envelope that could not be read might have been the one:
        // the registry's error, not a verdict.
        Some((n, e)) => {
            out.raw(&line(format!("{verdict}; layer {n} could not be read")))?;
            Err(e.into())
        }
        None => {
            out.raw(&line(verdict))?;
            Err(not_attested())
        }
    }
}

/// What one layer is checked against.
struct Check<'a> {
    key: &'a PublicKey,
    /// `--key` as given, for the reason naming it.
    key_name: &'a str,
    digest: &'a str,
    environment: &'a str,
}

impl Check<'_> {
    async fn layer(&self, registry: &dyn Registry, repo: &Repository, layer: &Layer) -> Outcome {
        if !layer.is_envelope() {
            return Outcome::Skipped(format!("not a DSSE envelope ({})", echo(&layer.media_type)));
        }
        // cosign annotates each layer with its predicate type: another one is
        // not read at all. The statement inside is checked all the same.
        if let Some(p) = layer.annotation(PREDICATE_TYPE_ANNOTATION)
            && p != VSA_TYPE
        {
            return Outcome::Skipped(format!("predicate {}", echo(p)));
        }
        if validate_digest(&layer.digest).is_err() {
            return Outcome::Rejected(format!(
                "its digest {} is not sha256:<hex>",
                echo(&layer.digest)
            ));
        }
        if layer.size > ENVELOPE_LIMIT as u64 {
            return Outcome::Rejected(format!(
                "its envelope is {} bytes, over the {ENVELOPE_LIMIT}-byte limit",
                layer.size
            ));
        }
        let envelope = match registry
            .fetch_blob(repo, &layer.digest, ENVELOPE_LIMIT)
            .await
        {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return Outcome::Rejected(format!(
                    "its envelope {} is not in the registry",
                    layer.digest
                ));
            }
            // What the registry holds is wrong, not out of reach: asking again
            // would not change it.
            Err(
                e @ (RegistryError::BlobTooLarge { .. }
                | RegistryError::DigestMismatch { .. }
                | RegistryError::NotFound { .. }),
            ) => return Outcome::Rejected(e.to_string()),
            Err(e) => return Outcome::Unread(e),
        };
        match verify::verify(&envelope, self.key, self.digest, self.environment) {
            Ok(a) => Outcome::Accepted(a),
            Err(Rejection::Predicate(p)) => Outcome::Skipped(format!("predicate {p}")),
            Err(Rejection::Signature) => Outcome::Rejected(format!(
                "the signature does not verify with {}",
                self.key_name
            )),
            Err(r) => Outcome::Rejected(r.to_string()),
        }
    }
}

/// The attestation public key in `path`, read with a cap and never quoted.
fn read_key(path: &Path) -> Result<PublicKey, CliError> {
    let mut pem = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(KEY_FILE_LIMIT).read_to_string(&mut pem))
        .map_err(|source| CliError::ReadFile {
            what: "attestation public key",
            path: path.to_owned(),
            source,
        })?;
    verify::public_key(&pem).map_err(|reason| CliError::NotAnAttestKey {
        path: path.to_owned(),
        reason,
    })
}

/// The registry client: `serve`'s, from `config`'s `[[registry]]`
/// entries, or anonymous HTTPS with the system's roots.
fn client(config: Option<&Path>) -> Result<OciRegistry, CliError> {
    crate::server::install_crypto_provider();
    let registry = match config {
        Some(path) => OciRegistry::from_config(&Config::load_with(path, Files::Read)?.config, None),
        None => OciRegistry::new(Vec::new(), DEFAULT_REGISTRY_TIMEOUT, None),
    };
    Ok(registry?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_read_as_docker_reads_them() {
        let i = image("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(i.repo.to_string(), "127.0.0.1:5000/team/app");
        assert_eq!(i.reference, Source::Tag("v1".into()));
        let i = image("127.0.0.1:5000/team/app").unwrap();
        assert_eq!(i.reference, Source::Tag("latest".into()));
        assert_eq!(i.to_string(), "127.0.0.1:5000/team/app:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let i = image(&format!("r.example/app@{d}")).unwrap();
        assert_eq!(i.reference, Source::Digest(d.clone()));
        assert_eq!(i.to_string(), format!("r.example/app@{d}"));
        for bad in [
            "app:v1",
            "r.example/App",
            "r.example/app@sha256:zz",
            "r.example/app:",
            "r.example/app:bad tag",
            "",
        ] {
            let e = image(bad).unwrap_err();
            assert!(
                e.starts_with("expected host[:port]/repository"),
                "{bad}: {e}"
            );
        }
    }
}
