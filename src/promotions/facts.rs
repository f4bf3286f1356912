//! The I/O half of a decision: what the store and the registry say about a
//! promotion, read before its write job (which runs on the writer and only
//! reads the store). The pure half is `domain::decision`.

use super::Promotions;
use crate::domain::decision::{self, Deployed, Prerequisite};
use crate::domain::model::{CheckReport, Time};
use crate::domain::names::Repository;
use crate::domain::policy::EnvironmentPolicy;
use crate::domain::signature::{self, Verdict};
use crate::error::Error;

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
