//! `[attest]`: the key prodgate signs its in-toto attestations with
//! ([`crate::attest`]) and the URI that names this prodgate as their
//! verifier. Signing after each APPLIED promotion comes next; the key and
//! its checks are here first, so `check-config` and `keygen --attest`
//! already agree on what a key file holds.

use super::validate::Cx;
use super::{ConfigError, Secret, invalid};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAttest {
    pub key_file: PathBuf,
    pub verifier_id: String,
}

/// `[attest]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestConfig {
    /// The PKCS#8 PEM of an ECDSA P-256 key (checked); `None` only when
    /// `check-config` could not read the file.
    pub key: Option<Secret>,
    /// The VSA's `verifier.id`: a URI naming this prodgate.
    pub verifier_id: String,
}

impl AttestConfig {
    /// The signer of `key` (checked when the config was validated).
    pub fn attestor(&self) -> Option<crate::attest::Attestor> {
        let pem = std::str::from_utf8(self.key.as_ref()?.expose()).ok()?;
        crate::attest::Attestor::from_pem(pem).ok()
    }
}

pub(super) fn attest(raw: RawAttest, cx: &mut Cx) -> Result<AttestConfig, ConfigError> {
    let uri = reqwest::Url::parse(&raw.verifier_id).map_err(|e| {
        invalid(
            "attest.verifier_id",
            format!(
                "{:?} is not a URI ({e}): name this prodgate, e.g. \"https://prodgate.example.com\"",
                raw.verifier_id
            ),
        )
    })?;
    if uri.cannot_be_a_base() && uri.scheme() != "urn" {
        return Err(invalid(
            "attest.verifier_id",
            format!("{:?} is not a URI that names a service", raw.verifier_id),
        ));
    }
    let key = match cx.read("attest.key_file", &raw.key_file)? {
        None => None,
        Some(bytes) => {
            // The error says what the file should hold, never what it holds.
            let text = String::from_utf8(bytes)
                .ok()
                .filter(|t| crate::attest::Attestor::from_pem(t).is_ok());
            let Some(text) = text else {
                return Err(invalid(
                    "attest.key_file",
                    format!("{} is {}", raw.key_file.display(), crate::attest::NotAKey),
                ));
            };
            Some(Secret::new(text.trim().as_bytes().to_vec()))
        }
    };
    Ok(AttestConfig {
        key,
        verifier_id: raw.verifier_id,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn with(key_file: &std::path::Path, verifier_id: &str) -> String {
        format!(
            "[[registry]]\nhost = \"reg.test\"\n[[environment]]\nname = \"staging\"\ntag = \"staging\"\nrequired_approvals = 0\n\
             [attest]\nkey_file = {:?}\nverifier_id = \"{verifier_id}\"\n",
            key_file.display().to_string()
        )
    }

    #[test]
    fn an_attestation_key_must_be_a_p256_pkcs8_key_and_the_verifier_a_uri() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("attest.key");
        let (private, public) = crate::attest::keygen();
        std::fs::write(&key, &private).unwrap();
        let c = Config::parse(&with(&key, "https://prodgate.acme.test")).expect("valid");
        let a = c.attest.as_ref().expect("[attest]");
        assert_eq!(a.verifier_id, "https://prodgate.acme.test");
        assert_eq!(a.attestor().expect("a signer").public_pem(), public);
        assert!(!format!("{c:?}").contains("PRIVATE KEY"), "no key in Debug");

        let e = Config::parse(&with(&key, "prodgate"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("attest.verifier_id"), "{e}");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = Config::parse(&with(&key, "https://p.test"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("attest.key_file") && e.contains("PKCS#8"),
            "{e}"
        );
        assert!(!e.contains("c2VjcmV0"), "never the file's content: {e}");
    }

    #[test]
    fn attest_true_needs_an_attest_section_and_changes_no_digest_while_false() {
        let base = "[[registry]]\nhost = \"reg.test\"\n[[environment]]\nname = \"staging\"\ntag = \"staging\"\nrequired_approvals = 0\n";
        let e = Config::parse(&format!("{base}attest = true\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("environment[0].attest") && e.contains("[attest]"),
            "{e}"
        );
        let in_project = format!(
            "{base}[[project]]\nname = \"pay\"\nrepositories = [\"reg.test/pay/*\"]\n\
             [[project.environment]]\nname = \"staging\"\nattest = true\n"
        );
        let e = Config::parse(&in_project).unwrap_err().to_string();
        assert!(e.starts_with("project[0].environment[0].attest"), "{e}");

        // `attest = false` is what a config without the key meant: same digest.
        let without = Config::parse(base).unwrap();
        let off = Config::parse(&format!("{base}attest = false\n")).unwrap();
        assert_eq!(without.policy.digest, off.policy.digest);
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("attest.key");
        std::fs::write(&key, crate::attest::keygen().0).unwrap();
        let on = Config::parse(&with(&key, "https://p.test").replace(
            "required_approvals = 0\n",
            "required_approvals = 0\nattest = true\n",
        ))
        .unwrap();
        assert_ne!(on.policy.digest, without.policy.digest);
        assert!(on.environments[0].attest);
    }
}
