//! The I/O half of a decision: what the store and the registry say about a
//! promotion, read before its write job (which runs on the writer and only
//! reads the store). The pure half is `domain::decision`.

use super::{Promotions, RequestInput, policy_of};
use crate::config::Config;
use crate::domain::decision::{self, Deployed, Prerequisite};
use crate::domain::model::{CheckReport, Time};
use crate::domain::names::{Repository, Source};
use crate::domain::policy::EnvironmentPolicy;
use crate::domain::signature::{self, Verdict};
use crate::error::Error;
use crate::registry::Manifest;
use crate::store::StoredManifest;

/// Facts read for one decision, owned so a write job can carry them.
#[derive(Debug, Clone, Default)]
pub(super) struct Gathered {
    pub checks: Vec<CheckReport>,
    pub soak_since: Option<Time>,
    /// Read when the policy names `signature_keys`.
    pub signature: Option<Verdict>,
    /// Read for a request to an environment that `requires` another.
    pub prerequisite: Option<Prerequisite>,
    /// Read for a request: what prodgate last applied to the target tag.
    pub deployed: Option<Deployed>,
}

impl Gathered {
    /// The decision's view of these facts under `policy` at `now`.
    pub fn facts<'a>(
        &'a self,
        policy: &'a EnvironmentPolicy,
        policy_digest: &'a str,
        now: Time,
    ) -> decision::Facts<'a> {
        decision::Facts {
            policy,
            policy_digest,
            now,
            checks: &self.checks,
            soak_since: self.soak_since,
            signature: self.signature.as_ref(),
            prerequisite: self.prerequisite.as_ref(),
            deployed: self.deployed.as_ref(),
        }
    }
}

impl Promotions {
    /// What a request for `input` under `policy` rests on: the manifest to
    /// pin (the apply pushes these exact bytes) and the facts its decision
    /// needs. `all_gates`: also the checks, soak and signature (a request
    /// decided at once, or a dry run); otherwise only the prerequisite and
    /// what the target tag carries.
    pub(super) async fn request_facts(
        &self,
        config: &Config,
        input: &RequestInput,
        policy: &EnvironmentPolicy,
        all_gates: bool,
    ) -> Result<(Resolved, Gathered), Error> {
        let repository = input.repository.to_string();
        let source_ref = input.source.as_reference();
        // A digest already pinned for this repository is immutable content
        // seen there before, so it needs no registry round trip. A tag
        // needs one: a HEAD names its digest, and only a digest not pinned
        // yet is then fetched (by digest, so exactly those bytes).
        let digest = match &input.source {
            Source::Digest(d) => Some(d.clone()),
            Source::Tag(t) => self.registry.resolve(&input.repository, t).await?,
        };
        let known = match &digest {
            Some(d) => self.store.manifest(&repository, d).await?,
            None => None,
        };
        let stored = known.is_some();
        let manifest = match (digest, known) {
            (Some(digest), Some(m)) => Manifest {
                digest,
                media_type: m.media_type,
                bytes: m.bytes,
            },
            (Some(digest), None) => match self.registry.fetch(&input.repository, &digest).await? {
                Some(m) => m,
                None => return Err(self.not_found(config, input, policy)),
            },
            (None, _) => return Err(self.not_found(config, input, policy)),
        };
        let digest = &manifest.digest;
        let mut facts = if all_gates {
            self.gather_gates(&repository, policy, digest).await?
        } else {
            Gathered::default()
        };
        // A rollback's digest passed the prerequisite when it was first
        // promoted here.
        if let Some(required) = policy.requires.as_ref().filter(|_| !input.rollback) {
            let prereq = policy_of(config, &repository, required)?;
            // The source tag is the prerequisite's tag: the fetch just read it.
            let carries = if source_ref == prereq.tag {
                Some(digest.clone())
            } else {
                self.registry
                    .resolve(&input.repository, &prereq.tag)
                    .await?
            };
            facts.prerequisite = Some(Prerequisite {
                reference: format!("{}:{}", input.repository, prereq.tag),
                environment: prereq.name.clone(),
                carries,
            });
        }
        facts.deployed = self.deployed_now(&repository, &input.environment).await?;
        let resolved = Resolved {
            digest: manifest.digest,
            pin: (!stored).then_some(StoredManifest {
                media_type: manifest.media_type,
                bytes: manifest.bytes,
            }),
        };
        Ok((resolved, facts))
    }

    /// Reads what the checks, soak and signature gates of `policy` need for
    /// `digest` (nothing for a gate that is not configured).
    pub(super) async fn gather_gates(
        &self,
        repository: &str,
        policy: &EnvironmentPolicy,
        digest: &str,
    ) -> Result<Gathered, Error> {
        self.gather(repository, policy, digest, true).await
    }

    /// Like [`Promotions::gather_gates`], reading the store only: no
    /// signature (it takes registry round trips), for reads that show how a
    /// WAITING promotion's gates stand.
    pub(super) async fn gather_stored(
        &self,
        repository: &str,
        policy: &EnvironmentPolicy,
        digest: &str,
    ) -> Result<Gathered, Error> {
        self.gather(repository, policy, digest, false).await
    }

    async fn gather(
        &self,
        repository: &str,
        policy: &EnvironmentPolicy,
        digest: &str,
        read_signature: bool,
    ) -> Result<Gathered, Error> {
        let checks = if policy.required_checks.is_empty() {
            Vec::new()
        } else {
            self.store.checks(repository, digest).await?
        };
        let soak_since = match (&policy.min_soak, &policy.requires) {
            (Some(_), Some(requires)) => self
                .store
                .deployed_at(repository, requires, None)
                .await?
                .filter(|e| e.event.digest == digest)
                .map(|e| e.time),
            _ => None,
        };
        let signature = if policy.signature_keys.is_empty() || !read_signature {
            None
        } else {
            let repo = Repository::parse(repository).map_err(|e| {
                Error::Internal(format!(
                    "stored repository {repository:?} does not parse: {e}"
                ))
            })?;
            let found = crate::registry::signatures::find(&*self.registry, &repo, digest).await?;
            Some(signature::verify(digest, &policy.signature_keys, &found))
        };
        Ok(Gathered {
            checks,
            soak_since,
            signature,
            prerequisite: None,
            deployed: None,
        })
    }

    /// A source the registry does not have: when it is the tag of the
    /// environment `policy` requires, the prerequisite is what is not met
    /// (one reason for "not promoted there yet", whatever the source).
    fn not_found(
        &self,
        config: &Config,
        input: &RequestInput,
        policy: &EnvironmentPolicy,
    ) -> Error {
        let repository = input.repository.to_string();
        let reference = input.source.as_reference();
        let prereq = policy
            .requires
            .as_deref()
            .filter(|_| !input.rollback)
            .and_then(|r| policy_of(config, &repository, r).ok().map(|p| (r, p)));
        match prereq {
            Some((requires, pre))
                if matches!(input.source, Source::Tag(_)) && pre.tag == reference =>
            {
                let facts = Prerequisite {
                    reference: format!("{}:{}", input.repository, pre.tag),
                    environment: pre.name.clone(),
                    carries: None,
                };
                Error::Blocked(vec![decision::prerequisite_unmet(
                    &repository,
                    policy,
                    requires,
                    &facts,
                    "",
                )])
            }
            _ => Error::SourceNotFound(format!("{}:{reference}", input.repository)),
        }
    }

    /// What prodgate last applied to `environment`'s tag of `repository`,
    /// and whether the drift watch last saw the tag elsewhere.
    pub(super) async fn deployed_now(
        &self,
        repository: &str,
        environment: &str,
    ) -> Result<Option<Deployed>, Error> {
        Ok(self
            .store
            .tag_record(repository, environment, None)
            .await?
            .map(|r| Deployed {
                digest: r.applied.event.digest.clone(),
                promotion_id: r.applied.event.promotion_id,
                time: r.applied.time,
                // Seen elsewhere and not restored since: a request puts it
                // back, so it is not a no-op.
                drifted: r.drifted(),
            }))
    }
}

/// The image a request resolved its source to: the digest it pins, and
/// the manifest's bytes to pin with it, unless the store holds them
/// already (pins are content-addressed: a digest requested before is not
/// written again).
pub(super) struct Resolved {
    pub digest: String,
    pub pin: Option<StoredManifest>,
}

impl Resolved {
    /// Pins the manifest in `tx` if it is not stored yet.
    pub fn pin(
        &self,
        tx: &mut dyn crate::store::UnitOfWork,
        repository: &str,
    ) -> Result<(), Error> {
        if let Some(m) = &self.pin {
            tx.put_manifest(repository, &self.digest, m)?;
        }
        Ok(())
    }
}
