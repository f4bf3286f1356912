//! An environment's gate keys, each declared once. One line of the table
//! at the end of this file makes, for a key: its field in `[[environment]]`
//! and in `[[project.environment]]` (where it overrides the top-level
//! value), its default, the check that turns what is written into the
//! policy's value (and names the key when it refuses), and how the
//! canonical policy document ([`super::version`]) writes it.
//!
//! A new gate key is: its field in `domain::policy::EnvironmentPolicy`,
//! its line below, its rule in `domain::gates`, and its sample in this
//! module's round-trip test, which fails for a key without one. A field of
//! `EnvironmentPolicy` that is in neither the table nor [`OwnFields`] does
//! not compile ([`document_fields`] names every field, without `..`).

use super::policy::{
    KeyCx, approver_list, as_written, break_glass, check_names, group_names, positive_duration,
    signature_keys, soak,
};
use super::version::{Json, json};
use super::{ConfigError, DEFAULT_APPROVAL_TTL, DEFAULT_WAIT_TTL};
use crate::domain::policy::{Approver, EnvironmentPolicy, Freeze, Window};
use crate::domain::signature::SignatureKey;
use std::path::PathBuf;
use std::time::Duration;

/// The fields of an environment's policy that are no gate key: what only
/// `[[environment]]` sets (`name`, `tag`, `requires`, `apply_deadline`),
/// its freezes (`[[freeze]]`, `[[project.freeze]]`) and the window the
/// window keys make together. [`super::version`] writes them.
pub(super) struct OwnFields<'a> {
    pub name: &'a String,
    pub tag: &'a String,
    pub requires: &'a Option<String>,
    pub apply_deadline: &'a Option<Duration>,
    pub freezes: &'a Vec<Freeze>,
    pub window: &'a Option<Window>,
}

/// Generates, from the two sections' own keys and one line per gate key
/// (`key: as written => in the policy = default, check, "name in the
/// document": writer;`):
///
/// - the serde structs of both sections, each gate key an `Option` (absent:
///   the default, or in a project the top-level value);
/// - [`GateKeys`], one view of either section's gate keys, and
///   [`GateKeys::or`], what is written for an environment a project
///   overrides;
/// - [`with_defaults`], an environment's policy before its keys are read;
/// - [`set_given`], which checks and sets the keys a section gives;
/// - [`document_fields`], every field of a policy as the document writes it;
/// - [`GATE_KEYS`] and [`WINDOW_KEYS`], the names, for tests.
///
/// The window keys make one field together, so they are read by
/// `policy::window`, not one by one.
macro_rules! gate_keys {
    (
        $(#[$env_meta:meta])*
        environment $env:ident { $( $(#[$ef_meta:meta])* $ef:ident: $eft:ty, )* }
        $(#[$proj_meta:meta])*
        project $proj:ident { $( $(#[$pf_meta:meta])* $pf:ident: $pft:ty, )* }
        gates {
            $(
                $(#[$meta:meta])*
                $key:ident: $raw:ty => $ty:ty = $default:expr, $check:path,
                    $json:literal: $write:path;
            )*
        }
        window { $( $(#[$wmeta:meta])* $wkey:ident: $wraw:ty, )* }
    ) => {
        $(#[$env_meta])*
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct $env {
            $( $(#[$ef_meta])* pub $ef: $eft, )*
            $( $(#[$meta])* pub $key: Option<$raw>, )*
            $( $(#[$wmeta])* pub $wkey: Option<$wraw>, )*
        }

        $(#[$proj_meta])*
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct $proj {
            $( $(#[$pf_meta])* pub $pf: $pft, )*
            $( $(#[$meta])* pub $key: Option<$raw>, )*
            $( $(#[$wmeta])* pub $wkey: Option<$wraw>, )*
        }

        /// The gate keys of either section as written; `None`: absent.
        #[derive(Debug, Clone, Copy, Default)]
        pub(super) struct GateKeys<'a> {
            $( pub $key: Option<&'a $raw>, )*
            $( pub $wkey: Option<&'a $wraw>, )*
        }

        impl<'a> GateKeys<'a> {
            /// Each key as `self` gives it, else as `under` does: what is
            /// written for an environment a project overrides, the top-level
            /// environment's keys `under` the project's.
            pub fn or(self, under: GateKeys<'a>) -> GateKeys<'a> {
                GateKeys {
                    $( $key: self.$key.or(under.$key), )*
                    $( $wkey: self.$wkey.or(under.$wkey), )*
                }
            }
        }

        impl $env {
            pub fn gate_keys(&self) -> GateKeys<'_> {
                GateKeys {
                    $( $key: self.$key.as_ref(), )*
                    $( $wkey: self.$wkey.as_ref(), )*
                }
            }
        }

        impl $proj {
            pub fn gate_keys(&self) -> GateKeys<'_> {
                GateKeys {
                    $( $key: self.$key.as_ref(), )*
                    $( $wkey: self.$wkey.as_ref(), )*
                }
            }
        }

        /// An environment's policy before its gate keys are read: each at
        /// its default, no window, no freeze.
        pub(super) fn with_defaults(
            name: String,
            tag: String,
            requires: Option<String>,
            apply_deadline: Option<Duration>,
        ) -> EnvironmentPolicy {
            EnvironmentPolicy {
                name,
                tag,
                requires,
                apply_deadline,
                freezes: Vec::new(),
                window: None,
                $( $key: $default, )*
            }
        }

        /// Checks each gate key `keys` gives (but the window keys) and sets
        /// it on `policy`; an error names the key under `prefix`, e.g.
        /// `project[0].environment[1].wait_ttl`. A key `keys` leaves out
        /// keeps the value `policy` has.
        pub(super) fn set_given(
            prefix: &str,
            keys: &GateKeys<'_>,
            cx: &mut KeyCx<'_>,
            policy: &mut EnvironmentPolicy,
        ) -> Result<(), ConfigError> {
            $(
                if let Some(written) = keys.$key {
                    let key = format!("{prefix}.{}", stringify!($key));
                    let value: $ty = $check(&key, written, cx)?;
                    policy.$key = value;
                }
            )*
            Ok(())
        }

        /// Every field of `e`: the gate keys as the canonical document
        /// writes them (a writer may leave its key out), and the others for
        /// [`super::version`] to write.
        pub(super) fn document_fields(
            e: &EnvironmentPolicy,
        ) -> (OwnFields<'_>, Vec<(&'static str, Json)>) {
            let EnvironmentPolicy {
                name,
                tag,
                requires,
                apply_deadline,
                freezes,
                window,
                $( $key, )*
            } = e;
            let mut gates = Vec::new();
            $(
                if let Some(value) = $write($key) {
                    gates.push(($json, value));
                }
            )*
            let own = OwnFields {
                name,
                tag,
                requires,
                apply_deadline,
                freezes,
                window,
            };
            (own, gates)
        }

        /// Each gate key's name in the file and in the canonical document.
        #[cfg_attr(not(test), allow(dead_code))]
        pub(super) const GATE_KEYS: &[(&str, &str)] = &[ $( (stringify!($key), $json), )* ];

        /// The keys that make the window, each also a gate key of both
        /// sections (the document writes them as `window`).
        #[cfg_attr(not(test), allow(dead_code))]
        pub(super) const WINDOW_KEYS: &[&str] = &[ $( stringify!($wkey), )* ];
    };
}

gate_keys! {
    /// `[[environment]]`: an environment, its tag, and every gate key.
    environment RawEnvironment {
        name: String,
        tag: String,
        requires: Option<String>,
        /// How long an approved promotion may take to move the tag; not a
        /// gate key (a project cannot change it), so read in `validate`.
        apply_deadline: Option<String>,
    }
    /// `[[project.environment]]`: the top-level environment it names, and
    /// the gate keys it overrides (each absent one inherited). `tag`,
    /// `requires` and `apply_deadline` are not among them (a tag belongs to
    /// the environment, whoever's repository it is in), so serde refuses
    /// them as unknown.
    project RawProjectEnvironment {
        name: String,
    }
    // key: as written => in the policy = default, check,
    //     "name in the canonical document": writer;
    // In this order keys are checked, so a file's first error is the
    // first key's here.
    gates {
        approvers: Vec<String> => Vec<Approver> = Vec::new(), approver_list,
            "approvers": json::members;
        /// Required in `[[environment]]` (`validate` says so).
        required_approvals: u32 => u32 = 0, as_written,
            "required_approvals": json::plain;
        allow_self_approval: bool => bool = false, as_written,
            "allow_self_approval": json::plain;
        approval_ttl: String => Duration = DEFAULT_APPROVAL_TTL, positive_duration,
            "approval_ttl_seconds": json::seconds;
        /// Absent here and in the top-level environment: the effective
        /// `required_approvals` (`policy::apply_policy_keys`).
        rollback_approvals: u32 => u32 = 0, as_written,
            "rollback_approvals": json::plain;
        required_groups: Vec<String> => Vec<String> = Vec::new(), group_names,
            "required_groups": json::plain;
        required_checks: Vec<String> => Vec<String> = Vec::new(), check_names,
            "required_checks": json::plain;
        min_soak: String => Option<Duration> = None, soak,
            "min_soak_seconds": json::optional_seconds;
        restore_on_drift: bool => bool = false, as_written,
            "restore_on_drift": json::plain;
        attach_record: bool => bool = false, as_written,
            "attach_record": json::plain;
        /// Sign an in-toto attestation of each APPLIED promotion (needs
        /// `[attest]`; `validate` says so). Written only when true
        /// (`json::unless_false`).
        attest: bool => bool = false, as_written,
            "attest": json::unless_false;
        signature_keys: Vec<PathBuf> => Vec<SignatureKey> = Vec::new(), signature_keys,
            "signature_keys": json::fingerprints;
        break_glass: Vec<String> => Vec<Approver> = Vec::new(), break_glass,
            "break_glass": json::members;
        /// How long a promotion that has its approvals may wait for the
        /// other gates (WAITING), from when it started waiting, before it
        /// ends EXPIRED. Written only away from its default (`json::wait_ttl`).
        wait_ttl: String => Duration = DEFAULT_WAIT_TTL, positive_duration,
            "wait_ttl_seconds": json::wait_ttl;
    }
    // The days, hours and time zone make the policy's `window` together
    // (`policy::window`), each overridden on its own.
    window {
        /// `["mon", …]`; absent: every day.
        allowed_days: Vec<String>,
        /// `"09:00-17:00"`, end exclusive; absent: all day.
        allowed_hours: String,
        /// IANA; absent: UTC.
        time_zone: String,
    }
}

#[cfg(test)]
mod tests {
    use super::{GATE_KEYS, WINDOW_KEYS};
    use crate::config::Config;
    use serde_json::{Value, json};

    const HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    /// For each gate key: lines for the top-level production and others
    /// for the project's, each with the value the document then has under
    /// the key's name (and `alone`, when the project's lines make another
    /// value without the top-level ones). A key declared without a sample
    /// here fails [`every_gate_key_is_read_overridden_inherited_and_written`].
    struct Sample {
        key: &'static str,
        top: String,
        top_json: Value,
        project: String,
        project_json: Value,
        alone: Option<Value>,
    }

    fn samples(key_file: &str, fingerprint: &str) -> Vec<Sample> {
        let s = |key: &'static str, top: &str, top_json, project: &str, project_json| Sample {
            key,
            top: format!("{key} = {top}"),
            top_json,
            project: format!("{key} = {project}"),
            project_json,
            alone: None,
        };
        vec![
            s(
                "approvers",
                r#"["group:rm", "ann"]"#,
                json!(["group:rm", "ann"]),
                r#"["group:pay"]"#,
                json!(["group:pay"]),
            ),
            s("required_approvals", "1", json!(1), "2", json!(2)),
            s(
                "allow_self_approval",
                "true",
                json!(true),
                "false",
                json!(false),
            ),
            s(
                "approval_ttl",
                r#""2h""#,
                json!(7200),
                r#""3h""#,
                json!(10800),
            ),
            s("rollback_approvals", "1", json!(1), "2", json!(2)),
            s(
                "required_groups",
                r#"["security"]"#,
                json!(["security"]),
                r#"["pay"]"#,
                json!(["pay"]),
            ),
            s(
                "required_checks",
                r#"["e2e", "scan"]"#,
                json!(["e2e", "scan"]),
                "[]",
                json!([]),
            ),
            s("min_soak", r#""45m""#, json!(2700), r#""1h""#, json!(3600)),
            s(
                "restore_on_drift",
                "true",
                json!(true),
                "false",
                json!(false),
            ),
            s("attach_record", "true", json!(true), "false", json!(false)),
            Sample {
                // Left out of the document while false.
                alone: Some(Value::Null),
                ..s("attest", "true", json!(true), "false", Value::Null)
            },
            s(
                "signature_keys",
                &format!("[{key_file}]"),
                json!([fingerprint]),
                "[]",
                json!([]),
            ),
            s(
                "break_glass",
                r#"["group:sre"]"#,
                json!(["group:sre"]),
                r#"["ann"]"#,
                json!(["ann"]),
            ),
            s("wait_ttl", r#""1d""#, json!(86400), r#""30m""#, json!(1800)),
            s(
                "allowed_days",
                r#"["mon", "tue"]"#,
                json!({"days": ["mon", "tue"], "hours": null, "time_zone": "UTC"}),
                r#"["fri"]"#,
                json!({"days": ["fri"], "hours": null, "time_zone": "UTC"}),
            ),
            s(
                "allowed_hours",
                r#""09:00-17:00""#,
                json!({"days": [], "hours": "09:00-17:00", "time_zone": "UTC"}),
                r#""22:00-02:00""#,
                json!({"days": [], "hours": "22:00-02:00", "time_zone": "UTC"}),
            ),
            // A zone alone restricts nothing: it makes no window, but it
            // is the zone of the hours the other level gives.
            Sample {
                key: "time_zone",
                top: "allowed_hours = \"09:00-17:00\"\ntime_zone = \"Europe/Berlin\"".into(),
                top_json: json!({"days": [], "hours": "09:00-17:00", "time_zone": "Europe/Berlin"}),
                project: "time_zone = \"Asia/Tokyo\"".into(),
                project_json: json!({"days": [], "hours": "09:00-17:00", "time_zone": "Asia/Tokyo"}),
                alone: Some(Value::Null),
            },
        ]
    }

    /// Production's policy: `top` in the top-level environment (besides
    /// approvers and a count, unless it gives them) and, when `project` is
    /// given, project pay's override of it. Project web does not override
    /// production. Every principal and group a sample names exists, so each
    /// value passes the checks that refuse a policy nobody could pass.
    fn config(top: &str, project: Option<&str>) -> String {
        let mut s = String::from("check_reporters = [\"group:ci\"]\n");
        s.push_str("[[registry]]\nhost = \"r.test\"\n");
        for (name, groups) in [
            ("ann", "\"rm\", \"security\", \"pay\""),
            ("ben", "\"rm\", \"security\", \"pay\""),
            ("sre", "\"sre\""),
            ("bot", "\"ci\""),
        ] {
            s.push_str(&format!(
                "[[principal]]\nname = \"{name}\"\ntoken_sha256 = \"{HASH}\"\ngroups = [{groups}]\n"
            ));
        }
        s.push_str(
            "[[environment]]\nname = \"staging\"\ntag = \"staging\"\nrequired_approvals = 0\n",
        );
        s.push_str(
            "[[environment]]\nname = \"production\"\ntag = \"production\"\nrequires = \"staging\"\n",
        );
        for (key, line) in [
            ("approvers", "approvers = [\"group:rm\"]"),
            ("required_approvals", "required_approvals = 2"),
        ] {
            if !top.starts_with(&format!("{key} ")) {
                s.push_str(&format!("{line}\n"));
            }
        }
        s.push_str(&format!("{top}\n"));
        s.push_str("[[project]]\nname = \"pay\"\nrepositories = [\"r.test/pay/*\"]\n");
        if let Some(p) = project {
            s.push_str(&format!(
                "[[project.environment]]\nname = \"production\"\n{p}\n"
            ));
        }
        s.push_str("[[project]]\nname = \"web\"\nrepositories = [\"r.test/web/*\"]\n");
        // `attest = true` needs it; the key file need not exist (`parse`).
        s.push_str(
            "[attest]\nkey_file = \"/nonexistent/attest.key\"\nverifier_id = \"https://p.test\"\n",
        );
        s
    }

    /// Parsed as `check-config` does: the files it names need not exist.
    fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse_with(text, crate::config::Files::WarnIfAbsent).map(|l| l.config)
    }

    /// Production's entry in the document: top-level, or in project `n`.
    fn production(c: &Config, project: Option<usize>) -> Value {
        let doc: Value = serde_json::from_str(&c.policy.canonical_json).unwrap();
        let envs = match project {
            None => &doc["environments"],
            Some(n) => &doc["projects"][n]["environments"],
        };
        envs[1].clone()
    }

    #[test]
    fn every_gate_key_is_read_overridden_inherited_and_written() {
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().unwrap();
        let key = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
        let pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let der = key.verifying_key().to_public_key_der().unwrap();
        let fingerprint = format!("sha256:{}", hex::encode(Sha256::digest(der.as_bytes())));
        let path = dir.path().join("cosign.pub");
        std::fs::write(&path, pem).unwrap();
        let key_file = format!("{:?}", path.display().to_string());

        let samples = samples(&key_file, &fingerprint);
        let mut sampled: Vec<&str> = samples.iter().map(|s| s.key).collect();
        let mut declared: Vec<&str> = GATE_KEYS.iter().map(|(k, _)| *k).collect();
        declared.extend(WINDOW_KEYS);
        sampled.sort_unstable();
        declared.sort_unstable();
        assert_eq!(sampled, declared, "every declared key needs its sample");

        let defaults = parse(&config("", None)).unwrap();
        for s in &samples {
            let name = GATE_KEYS
                .iter()
                .find(|(k, _)| *k == s.key)
                .map_or("window", |(_, json)| *json);
            let at_default = production(&defaults, None);

            // The top-level value, inherited by both projects.
            let c = parse(&config(&s.top, None)).unwrap_or_else(|e| panic!("{}: {e}", s.key));
            let top = production(&c, None);
            assert_eq!(top[name], s.top_json, "{} at the top level", s.key);
            assert_ne!(top[name], at_default[name], "{}: not its default", s.key);
            assert_eq!(production(&c, Some(0)), top, "{} inherited", s.key);
            assert_eq!(production(&c, Some(1)), top, "{} inherited", s.key);

            // Overridden in project pay only.
            let c = parse(&config(&s.top, Some(&s.project)))
                .unwrap_or_else(|e| panic!("{} overridden: {e}", s.key));
            assert_eq!(production(&c, None), top, "{}", s.key);
            let pay = production(&c, Some(0));
            assert_eq!(pay[name], s.project_json, "{} overridden", s.key);
            let mut rest = pay.as_object().unwrap().clone();
            let mut top_rest = top.as_object().unwrap().clone();
            for doc in [&mut rest, &mut top_rest] {
                doc.remove(name);
                // Follows required_approvals unless written.
                doc.remove("rollback_approvals");
            }
            assert_eq!(rest, top_rest, "{}: nothing else changes", s.key);
            assert_eq!(production(&c, Some(1)), top, "{}", s.key);

            // Overridden in a project whose top level leaves it out.
            let c = parse(&config("", Some(&s.project)))
                .unwrap_or_else(|e| panic!("{} only in the project: {e}", s.key));
            assert_eq!(production(&c, None), at_default, "{}", s.key);
            let alone = s.alone.as_ref().unwrap_or(&s.project_json);
            assert_eq!(&production(&c, Some(0))[name], alone, "{}", s.key);
        }
    }

    #[test]
    fn names_in_the_document_are_unique_and_every_field_is_written() {
        let mut names: Vec<&str> = GATE_KEYS.iter().map(|(_, json)| *json).collect();
        let own = [
            "apply_deadline_seconds",
            "freezes",
            "name",
            "requires",
            "tag",
            "window",
        ];
        names.extend(own);
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a name written twice: {names:?}");
        // The keys left out at their default away from it, so that every
        // key is written.
        let c = parse(&config("wait_ttl = \"1h\"\nattest = true", None)).unwrap();
        let written: Vec<String> = production(&c, None)
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(written, names);
    }
}
