//! What an image is, as the promotion page's "what changes" shows it: read
//! from its manifest and config blob through the [`Registry`] trait (its
//! size limits apply), parsed here, and kept per digest: a digest names
//! the same bytes forever, so a description never goes stale. Only
//! successes are kept (a failure may be transient), at most [`CACHED`].

use crate::domain::names::Repository;
use crate::registry::{Registry, RegistryError};
use hashlink::LruCache;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use std::collections::HashMap;
use std::sync::Mutex;

/// Descriptions kept; the oldest goes first.
const CACHED: usize = 512;

/// The largest config blob read: configs are a few KiB; a long history
/// list can reach a few hundred.
const CONFIG_LIMIT: usize = 1024 * 1024;

pub const REVISION: &str = "org.opencontainers.image.revision";
pub const SOURCE: &str = "org.opencontainers.image.source";
pub const VERSION: &str = "org.opencontainers.image.version";

/// One platform of an index (`linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: String,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// An image as a person compares two of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    pub digest: String,
    pub media_type: String,
    /// The config's `created`, as written.
    pub created: Option<String>,
    pub revision: Option<String>,
    pub source: Option<String>,
    pub version: Option<String>,
    /// Config plus layers, in bytes (of the platform described, for an index).
    pub size: Option<u64>,
    /// An index's platforms; empty for an image.
    pub platforms: Vec<Platform>,
    /// For an index: the platform whose manifest and config the other
    /// fields describe.
    pub described: Option<Platform>,
}

impl Image {
    /// Where `.revision` can be read: `{source}/commit/{revision}` for a
    /// forge that serves that path, else `.source` itself; `None` unless
    /// `.source` is an http(s) URL.
    pub fn revision_link(&self) -> Option<String> {
        let source = self.source.as_deref()?.trim();
        if !super::pages::is_http_url(source) {
            return None;
        }
        let lower = source.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"))?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        let forge = matches!(
            host,
            "github.com" | "gitlab.com" | "codeberg.org" | "bitbucket.org"
        );
        let plain_revision = self.revision.as_deref().filter(|r| {
            !r.is_empty()
                && r.len() <= 128
                && r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        });
        match plain_revision {
            Some(r) if forge && !source.contains(['?', '#']) => {
                let base = source.trim_end_matches('/');
                let base = base.strip_suffix(".git").unwrap_or(base);
                Some(format!("{base}/commit/{r}"))
            }
            _ => Some(source.to_owned()),
        }
    }
}

/// What a manifest says, before its config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Image {
        config_digest: String,
        /// The config's size plus every layer's.
        size: u64,
        annotations: HashMap<String, String>,
    },
    Index {
        /// Each platform manifest: its digest and platform (attestations,
        /// `unknown/unknown`, left out).
        manifests: Vec<(String, Platform)>,
        annotations: HashMap<String, String>,
    },
}

/// A manifest's JSON: an image manifest (`config` and `layers`) or an
/// index (`manifests`), read with oci-spec's types.
pub fn parse_manifest(bytes: &[u8]) -> Result<Parsed, String> {
    let image = serde_json::from_slice::<ImageManifest>(bytes);
    if let Ok(m) = image {
        let size = m
            .layers()
            .iter()
            .map(|l| l.size())
            .fold(m.config().size(), u64::saturating_add);
        return Ok(Parsed::Image {
            config_digest: m.config().digest().to_string(),
            size,
            annotations: m.annotations().clone().unwrap_or_default(),
        });
    }
    match serde_json::from_slice::<ImageIndex>(bytes) {
        Ok(index) => Ok(Parsed::Index {
            manifests: index
                .manifests()
                .iter()
                .filter_map(|m| {
                    let p = m.platform().as_ref()?;
                    let platform = Platform {
                        os: p.os().to_string(),
                        architecture: p.architecture().to_string(),
                        variant: p.variant().clone().unwrap_or_default(),
                    };
                    (platform.os != "unknown").then(|| (m.digest().to_string(), platform))
                })
                .collect(),
            annotations: index.annotations().clone().unwrap_or_default(),
        }),
        Err(_) => Err(match image {
            Err(e) => format!("neither an image manifest nor an index: {e}"),
            Ok(_) => "neither an image manifest nor an index".to_owned(),
        }),
    }
}

/// A config blob's `created` and `config.Labels`.
pub fn parse_config(bytes: &[u8]) -> Result<(Option<String>, HashMap<String, String>), String> {
    let config = serde_json::from_slice::<ImageConfiguration>(bytes)
        .map_err(|e| format!("the config is not an OCI image config: {e}"))?;
    let labels = config
        .config()
        .as_ref()
        .and_then(|c| c.labels().clone())
        .unwrap_or_default();
    Ok((config.created().clone(), labels))
}

/// Fills the OCI keys from the manifest's annotations, then the config's
/// labels for any the annotations leave out.
fn fill(
    image: &mut Image,
    annotations: &HashMap<String, String>,
    labels: &HashMap<String, String>,
) {
    let pick = |key: &str| {
        annotations
            .get(key)
            .or_else(|| labels.get(key))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    image.revision = image.revision.take().or_else(|| pick(REVISION));
    image.source = image.source.take().or_else(|| pick(SOURCE));
    image.version = image.version.take().or_else(|| pick(VERSION));
}

/// A repository and a digest in it.
type Key = (String, String);

/// Reads and describes images, keeping each description by digest (read
/// with `peek`, so the oldest description goes first).
pub struct Images {
    cache: Mutex<LruCache<Key, Image>>,
}

impl Default for Images {
    fn default() -> Images {
        Images {
            cache: Mutex::new(LruCache::new(CACHED)),
        }
    }
}

impl Images {
    /// `digest` in `repository`, from the cache or the registry; the error
    /// is a sentence for the page.
    pub async fn describe(
        &self,
        registry: &dyn Registry,
        repository: &str,
        digest: &str,
    ) -> Result<Image, String> {
        let key = (repository.to_owned(), digest.to_owned());
        if let Ok(cache) = self.cache.lock()
            && let Some(hit) = cache.peek(&key)
        {
            return Ok(hit.clone());
        }
        let repo = Repository::parse(repository).map_err(|e| e.to_string())?;
        let image = read(registry, &repo, digest).await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, image.clone());
        }
        Ok(image)
    }
}

fn registry_error(e: RegistryError) -> String {
    e.to_string()
}

async fn read(registry: &dyn Registry, repo: &Repository, digest: &str) -> Result<Image, String> {
    let manifest = registry
        .fetch(repo, digest)
        .await
        .map_err(registry_error)?
        .ok_or_else(|| format!("{digest} is not in the registry"))?;
    let mut image = Image {
        digest: manifest.digest.clone(),
        media_type: manifest.media_type.clone(),
        ..Image::default()
    };
    let (config_digest, size, annotations) = match parse_manifest(&manifest.bytes)? {
        Parsed::Image {
            config_digest,
            size,
            annotations,
        } => (config_digest, size, annotations),
        Parsed::Index {
            manifests,
            annotations,
        } => {
            fill(&mut image, &annotations, &HashMap::new());
            image.platforms = manifests.iter().map(|(_, p)| p.clone()).collect();
            // The first platform stands for the others: one more manifest
            // read, not one per platform.
            let Some((child, platform)) = manifests.into_iter().next() else {
                return Ok(image);
            };
            let bytes = registry
                .fetch(repo, &child)
                .await
                .map_err(registry_error)?
                .ok_or_else(|| format!("{child} is not in the registry"))?
                .bytes;
            image.described = Some(platform);
            match parse_manifest(&bytes)? {
                Parsed::Image {
                    config_digest,
                    size,
                    annotations,
                } => (config_digest, size, annotations),
                Parsed::Index { .. } => return Ok(image),
            }
        }
    };
    let config = registry
        .fetch_blob(repo, &config_digest, CONFIG_LIMIT)
        .await
        .map_err(registry_error)?
        .ok_or_else(|| format!("config {config_digest} is not in the registry"))?;
    let (created, labels) = parse_config(&config)?;
    image.created = created;
    image.size = Some(size);
    fill(&mut image, &annotations, &labels);
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc", "size": 100},
      "layers": [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111", "size": 1000},
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:2222222222222222222222222222222222222222222222222222222222222222", "size": 24}
      ],
      "annotations": {"org.opencontainers.image.version": "1.4.0"}
    }"#;

    const CONFIG: &str = r#"{
      "created": "2026-12-01T10:00:00Z",
      "architecture": "amd64", "os": "linux",
      "config": {"Labels": {
        "org.opencontainers.image.revision": "0123abc",
        "org.opencontainers.image.source": "https://github.com/acme/app",
        "org.opencontainers.image.version": "1.3.9"
      }},
      "rootfs": {"type": "layers", "diff_ids": []}
    }"#;

    const INDEX: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.index.v1+json",
      "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "size": 1,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", "size": 1,
         "platform": {"os": "unknown", "architecture": "unknown"}}
      ]
    }"#;

    #[test]
    fn an_image_manifest_sums_config_and_layers() {
        let Parsed::Image {
            config_digest,
            size,
            annotations,
        } = parse_manifest(MANIFEST.as_bytes()).unwrap()
        else {
            panic!("an image");
        };
        assert_eq!(
            config_digest,
            "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
        );
        assert_eq!(size, 1124);
        assert_eq!(annotations[VERSION], "1.4.0");
    }

    #[test]
    fn annotations_win_over_labels_and_labels_fill_the_rest() {
        let (created, labels) = parse_config(CONFIG.as_bytes()).unwrap();
        assert_eq!(created.as_deref(), Some("2026-12-01T10:00:00Z"));
        let Parsed::Image { annotations, .. } = parse_manifest(MANIFEST.as_bytes()).unwrap() else {
            panic!("an image");
        };
        let mut image = Image::default();
        fill(&mut image, &annotations, &labels);
        assert_eq!(image.version.as_deref(), Some("1.4.0"));
        assert_eq!(image.revision.as_deref(), Some("0123abc"));
        assert_eq!(
            image.revision_link().as_deref(),
            Some("https://github.com/acme/app/commit/0123abc")
        );
    }

    #[test]
    fn an_index_lists_its_platforms_without_attestations() {
        let Parsed::Index { manifests, .. } = parse_manifest(INDEX.as_bytes()).unwrap() else {
            panic!("an index");
        };
        let shown: Vec<String> = manifests.iter().map(|(_, p)| p.to_string()).collect();
        assert_eq!(shown, ["linux/amd64", "linux/arm64/v8"]);
        assert_eq!(
            manifests[0].0,
            "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        );
    }

    #[test]
    fn links_only_to_http_sources() {
        let image = |source: &str, revision: &str| Image {
            source: Some(source.into()),
            revision: Some(revision.into()),
            ..Image::default()
        };
        assert_eq!(image("javascript:alert(1)", "abc").revision_link(), None);
        assert_eq!(image("git@github.com:a/b.git", "abc").revision_link(), None);
        assert_eq!(image("https://", "abc").revision_link(), None);
        assert_eq!(
            image("https://github.com/a/b.git", "abc")
                .revision_link()
                .as_deref(),
            Some("https://github.com/a/b/commit/abc")
        );
        // Another host, or a revision that is not a plain name: the source.
        assert_eq!(
            image("https://git.example/a/b", "abc")
                .revision_link()
                .as_deref(),
            Some("https://git.example/a/b")
        );
        assert_eq!(
            image("https://github.com/a/b", "<script>")
                .revision_link()
                .as_deref(),
            Some("https://github.com/a/b")
        );
    }

    #[test]
    fn what_is_not_a_manifest_says_why() {
        assert!(parse_manifest(b"nope").unwrap_err().contains("neither"));
        assert!(parse_manifest(b"{}").unwrap_err().contains("neither"));
        assert!(
            parse_config(b"[]")
                .unwrap_err()
                .contains("not an OCI image config")
        );
        let bare = br#"{"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}"#;
        let (created, labels) = parse_config(bare).unwrap();
        assert_eq!((created, labels.len()), (None, 0));
    }

    /// A registry of a few manifests and blobs that counts its reads and
    /// can be made unavailable.
    #[derive(Default)]
    struct Fake {
        manifests: Mutex<HashMap<String, crate::registry::Manifest>>,
        blobs: Mutex<HashMap<String, Vec<u8>>>,
        reads: std::sync::atomic::AtomicUsize,
        down: std::sync::atomic::AtomicBool,
    }

    fn digest_of(bytes: &[u8]) -> String {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
    }

    impl Fake {
        fn manifest(&self, json: &str) -> String {
            let digest = digest_of(json.as_bytes());
            self.manifests.lock().unwrap().insert(
                digest.clone(),
                crate::registry::Manifest {
                    digest: digest.clone(),
                    media_type: String::new(),
                    bytes: json.as_bytes().to_vec(),
                },
            );
            digest
        }

        fn unavailable(&self) -> Result<(), RegistryError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match self.down.load(std::sync::atomic::Ordering::SeqCst) {
                true => Err(RegistryError::Unavailable {
                    registry: "reg.test".into(),
                    reason: "HTTP 503".into(),
                    retry_after: None,
                }),
                false => Ok(()),
            }
        }
    }

    fn unused() -> RegistryError {
        RegistryError::Protocol {
            registry: "reg.test".into(),
            message: "not in this fake".into(),
        }
    }

    #[async_trait::async_trait]
    impl Registry for Fake {
        async fn resolve(&self, _: &Repository, _: &str) -> Result<Option<String>, RegistryError> {
            Err(unused())
        }
        async fn fetch(
            &self,
            _: &Repository,
            reference: &str,
        ) -> Result<Option<crate::registry::Manifest>, RegistryError> {
            self.unavailable()?;
            Ok(self.manifests.lock().unwrap().get(reference).cloned())
        }
        async fn fetch_blob(
            &self,
            _: &Repository,
            digest: &str,
            _: usize,
        ) -> Result<Option<Vec<u8>>, RegistryError> {
            self.unavailable()?;
            Ok(self.blobs.lock().unwrap().get(digest).cloned())
        }
        async fn move_tag(
            &self,
            _: &Repository,
            _: &crate::registry::Manifest,
            _: &str,
        ) -> Result<crate::registry::Moved, RegistryError> {
            Err(unused())
        }
        async fn push_blob(&self, _: &Repository, _: &[u8]) -> Result<String, RegistryError> {
            Err(unused())
        }
        async fn push_manifest(
            &self,
            _: &Repository,
            _: &crate::registry::Manifest,
            _: &str,
        ) -> Result<(), RegistryError> {
            Err(unused())
        }
        async fn fetch_index(
            &self,
            _: &Repository,
            _: &str,
        ) -> Result<Option<crate::registry::Manifest>, RegistryError> {
            Err(unused())
        }
    }

    const REPO: &str = "reg.test/team/app";

    #[tokio::test]
    async fn an_index_is_described_from_its_first_platform_and_kept() {
        let fake = Fake::default();
        fake.blobs.lock().unwrap().insert(
            "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc".into(),
            CONFIG.as_bytes().to_vec(),
        );
        let child = fake.manifest(MANIFEST);
        let index = fake.manifest(&INDEX.replace(
            "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            &child,
        ));
        let images = Images::default();
        let image = images.describe(&fake, REPO, &index).await.unwrap();
        assert_eq!(image.digest, index);
        assert_eq!(image.platforms.len(), 2);
        assert_eq!(image.described.as_ref().unwrap().to_string(), "linux/amd64");
        assert_eq!(image.size, Some(1124));
        assert_eq!(image.version.as_deref(), Some("1.4.0"));
        assert_eq!(image.revision.as_deref(), Some("0123abc"));
        // Index, child manifest, config: three reads, then none.
        let reads = || fake.reads.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(reads(), 3);
        fake.down.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(images.describe(&fake, REPO, &index).await.unwrap(), image);
        assert_eq!(reads(), 3);
    }

    #[tokio::test]
    async fn a_failure_is_a_sentence_and_not_kept() {
        let fake = Fake::default();
        let digest = fake.manifest(MANIFEST);
        let images = Images::default();
        fake.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let why = images.describe(&fake, REPO, &digest).await.unwrap_err();
        assert_eq!(why, "registry reg.test is unavailable: HTTP 503");
        fake.down.store(false, std::sync::atomic::Ordering::SeqCst);
        // The config blob is missing: said so.
        let why = images.describe(&fake, REPO, &digest).await.unwrap_err();
        assert!(why.starts_with("config sha256:ccc"), "{why}");
        let missing = images.describe(&fake, REPO, "sha256:0").await.unwrap_err();
        assert_eq!(missing, "sha256:0 is not in the registry");
    }
}
