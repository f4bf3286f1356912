//! The policy version in force: recorded (a POLICY_CHANGED entry) before
//! anything is decided under it, at start and on each reload.

use super::Promotions;
use crate::config::Config;
use crate::domain::audit::AuditEntry;
use crate::domain::model::policy_changed;
use crate::error::Error;
use crate::store::UnitOfWork;
use std::sync::Arc;

impl Promotions {
    /// Records the running policy version (a POLICY_CHANGED entry, actor
    /// `prodgate`) unless it is the one the log last recorded; at start.
    pub async fn record_policy(&self) -> Result<Option<AuditEntry>, Error> {
        self.record_version(&self.config.get()).await
    }

    /// Runs `next` from now on, after recording its policy version if it
    /// differs from the last recorded one, so that nothing is ever decided
    /// under a version the log does not hold. If recording fails the
    /// running config stays. Calls already under way finish under the
    /// version they started with (their entries name it).
    pub async fn adopt(&self, next: Config) -> Result<Option<AuditEntry>, Error> {
        let next = Arc::new(next);
        let entry = self.record_version(&next).await?;
        self.config.replace(next);
        self.reloaded.send_modify(|n| *n += 1);
        Ok(entry)
    }

    async fn record_version(&self, config: &Config) -> Result<Option<AuditEntry>, Error> {
        let digest = config.policy.digest.clone();
        let json = config.policy.canonical_json.clone();
        self.store
            .write(move |tx: &mut dyn UnitOfWork| {
                if tx.latest_policy()?.as_deref() == Some(digest.as_str()) {
                    return Ok(None);
                }
                tx.put_policy(&digest, &json)?;
                let now = tx.now();
                Ok::<_, Error>(Some(tx.record(policy_changed(&digest), now)?))
            })
            .await
    }
}
