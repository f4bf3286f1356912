//! Per-repository policy: `[[project]]` sections and which of them governs a
//! repository ([`Config::governing`]).

use super::Config;
use super::pattern::RepositoryPattern;
use crate::domain::policy::{Approver, EnvironmentPolicy, Principal};

/// One `[[project]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectConfig {
    pub name: String,
    /// The repositories it governs, unless an earlier project matches first.
    pub repositories: Vec<RepositoryPattern>,
    /// Who may request promotions (and rollbacks) of its repositories;
    /// `None`: anyone. Entries are principals or groups, as approvers are.
    pub requesters: Option<Vec<Approver>>,
    /// Who may report checks of its repositories; `None`: the top-level
    /// `check_reporters`.
    pub check_reporters: Option<Vec<Approver>>,
    /// Every top-level environment, in the same order, with this project's
    /// `[[project.environment]]` overrides applied: the effective policies.
    pub environments: Vec<EnvironmentPolicy>,
}

impl ProjectConfig {
    pub fn governs(&self, repository: &str) -> bool {
        self.repositories.iter().any(|p| p.matches(repository))
    }
}

/// The policy that governs one repository: the first `[[project]]` (in file
/// order) with a pattern matching its full name, or, when none does, the
/// top-level environments and `check_reporters`.
#[derive(Debug, Clone, Copy)]
pub struct Governance<'a> {
    config: &'a Config,
    project: Option<&'a ProjectConfig>,
}

impl Config {
    /// Who governs `repository`, its full name `host/path` (as
    /// [`crate::domain::names::Repository`] displays it; stored promotions
    /// keep that form).
    pub fn governing(&self, repository: &str) -> Governance<'_> {
        let canonical = self.canonical_repository(repository);
        Governance {
            config: self,
            project: self.projects.iter().find(|p| p.governs(&canonical)),
        }
    }

    /// Every project's patterns, for messages: `a/* (payments), b/* (web)`,
    /// at most a few hundred characters.
    pub fn project_patterns(&self) -> String {
        let all: Vec<String> = self
            .projects
            .iter()
            .flat_map(|p| {
                p.repositories
                    .iter()
                    .map(move |r| format!("{r} ({})", p.name))
            })
            .collect();
        if all.is_empty() {
            return "no pattern (there is no [[project]])".to_owned();
        }
        let mut out = String::new();
        for (i, p) in all.iter().enumerate() {
            if out.len() + p.len() > 400 {
                out.push_str(&format!(", and {} more", all.len() - i));
                break;
            }
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(p);
        }
        out
    }

    /// `repository` named through the registry its host is an `alias_of`,
    /// so that both names fall under the same projects.
    pub(crate) fn canonical_repository<'r>(
        &self,
        repository: &'r str,
    ) -> std::borrow::Cow<'r, str> {
        let Some((host, path)) = repository.split_once('/') else {
            return repository.into();
        };
        match self
            .registries
            .iter()
            .find(|r| r.host == host)
            .and_then(|r| r.alias_of.as_deref())
        {
            Some(target) => format!("{target}/{path}").into(),
            None => repository.into(),
        }
    }
}

impl<'a> Governance<'a> {
    pub fn project(&self) -> Option<&'a ProjectConfig> {
        self.project
    }

    /// The governing project's name; empty for the top-level defaults (as
    /// `Promotion.project` records it).
    pub fn project_name(&self) -> &'a str {
        self.project.map_or("", |p| p.name.as_str())
    }

    /// The effective policies of every environment, in file order.
    pub fn environments(&self) -> &'a [EnvironmentPolicy] {
        match self.project {
            Some(p) => &p.environments,
            None => &self.config.environments,
        }
    }

    /// The effective policy of environment `name`, if it is configured.
    pub fn environment(&self, name: &str) -> Option<&'a EnvironmentPolicy> {
        self.environments().iter().find(|e| e.name == name)
    }

    /// Whether `who` may request promotions (and rollbacks) here.
    pub fn may_request(&self, who: &Principal) -> bool {
        match self.project.and_then(|p| p.requesters.as_ref()) {
            None => true,
            Some(requesters) => requesters.iter().any(|r| r.matches(who)),
        }
    }

    /// Whether `who` may report checks here.
    pub fn may_report(&self, who: &Principal) -> bool {
        self.check_reporters().iter().any(|r| r.matches(who))
    }

    /// Who may report checks here (empty: nobody).
    pub fn check_reporters(&self) -> &'a [Approver] {
        self.project
            .and_then(|p| p.check_reporters.as_deref())
            .unwrap_or(&self.config.check_reporters)
    }

    /// Who may request here, as configured (`None`: anyone); for messages.
    pub fn requesters(&self) -> Option<&'a [Approver]> {
        self.project.and_then(|p| p.requesters.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Files};
    use crate::domain::policy::{Approver, Principal};
    use std::time::Duration;

    const HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    /// Two projects over one registry, a catch-all-free default.
    fn two_projects() -> String {
        let mut s = String::from("check_reporters = [\"group:ci\"]\n");
        s.push_str("[[registry]]\nhost = \"127.0.0.1:5000\"\ninsecure = true\n");
        for (name, groups) in [
            ("pat", "\"payments-leads\""),
            ("paula", "\"payments-leads\""),
            ("pia", "\"payments-leads\""),
            ("dev", "\"payments-dev\""),
            ("wes", "\"web-leads\""),
            ("rm", "\"release-managers\""),
            ("rm2", "\"release-managers\""),
            ("robot", "\"ci\""),
            ("ci-payments", ""),
        ] {
            s.push_str(&format!(
                "[[principal]]\nname = \"{name}\"\ntoken_sha256 = \"{HASH}\"\ngroups = [{groups}]\n"
            ));
        }
        s.push_str(
            r#"
[[environment]]
name = "staging"
tag = "staging"
required_approvals = 0
[[environment]]
name = "production"
tag = "production"
requires = "staging"
approvers = ["group:release-managers"]
required_approvals = 1
approval_ttl = "2h"

[[project]]
name = "payments"
repositories = ["127.0.0.1:5000/payments/*", "127.0.0.1:5000/shared/ledger"]
requesters = ["group:payments-dev", "ci-payments"]
check_reporters = ["ci-payments"]
[[project.environment]]
name = "production"
approvers = ["group:payments-leads"]
required_approvals = 2

[[project]]
name = "web"
repositories = ["127.0.0.1:5000/**"]
[[project.environment]]
name = "production"
approvers = ["wes"]
allow_self_approval = true
"#,
        );
        s
    }

    fn who(name: &str, groups: &[&str]) -> Principal {
        Principal::new(name, groups.iter().map(|g| (*g).into()).collect())
    }

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_first_matching_project_governs_and_overrides_only_the_keys_given() {
        let c = Config::parse(&two_projects()).unwrap();
        let payments = c.governing("127.0.0.1:5000/payments/api");
        assert_eq!(payments.project_name(), "payments");
        let prod = payments.environment("production").unwrap();
        assert_eq!(prod.approvers, [Approver::Group("payments-leads".into())]);
        assert_eq!(prod.required_approvals, 2);
        // Inherited from the top-level environment.
        assert_eq!(prod.approval_ttl, Duration::from_secs(7200));
        assert_eq!(prod.tag, "production");
        assert_eq!(prod.requires.as_deref(), Some("staging"));
        assert!(!prod.allow_self_approval);
        // Not overridden at all: the top-level policy as is.
        assert_eq!(
            payments.environment("staging"),
            c.environment("staging"),
            "staging"
        );
        assert_eq!(
            c.governing("127.0.0.1:5000/shared/ledger").project_name(),
            "payments"
        );

        // `payments/*` stops at the slash; `web`'s `**` comes second and
        // takes the rest of the registry.
        let web = c.governing("127.0.0.1:5000/payments/api/sidecar");
        assert_eq!(web.project_name(), "web");
        let prod = web.environment("production").unwrap();
        assert_eq!(prod.approvers, [Approver::Principal("wes".into())]);
        assert_eq!(prod.required_approvals, 1);
        assert!(prod.allow_self_approval);

        // Nothing matches another registry's repositories: the defaults.
        let none = c.governing("reg.example.com/payments/api");
        assert!(none.project().is_none());
        assert_eq!(none.project_name(), "");
        assert_eq!(none.environment("production"), c.environment("production"));
        assert_eq!(none.environment("qa"), None);
    }

    #[test]
    fn requesters_default_to_anyone_and_reporters_to_the_top_level_list() {
        let c = Config::parse(&two_projects()).unwrap();
        let payments = c.governing("127.0.0.1:5000/payments/api");
        let web = c.governing("127.0.0.1:5000/web/site");
        let none = c.governing("reg.example.com/x/y");
        let dev = who("dev", &["payments-dev"]);
        let ci_payments = who("ci-payments", &[]);
        let wes = who("wes", &["web-leads"]);
        let robot = who("robot", &["ci"]);
        assert!(payments.may_request(&dev));
        assert!(payments.may_request(&ci_payments));
        assert!(!payments.may_request(&wes));
        assert!(web.may_request(&wes) && web.may_request(&dev));
        assert!(none.may_request(&wes));

        // The project's list replaces the top-level one.
        assert!(payments.may_report(&ci_payments));
        assert!(!payments.may_report(&robot));
        assert!(web.may_report(&robot));
        assert!(!web.may_report(&ci_payments));
        assert!(none.may_report(&robot));

        // Without a top-level list nobody may report.
        let c = Config::parse(&two_projects().replace("check_reporters = [\"group:ci\"]\n", ""))
            .unwrap();
        assert!(!c.governing("reg.example.com/x/y").may_report(&robot));
        assert!(c.check_reporters.is_empty());
    }

    #[test]
    fn project_errors_name_the_key() {
        let base = two_projects();
        let cases = [
            (
                base.replace("\"127.0.0.1:5000/shared/ledger\"", "\"127.0.0.1:5000/a?\""),
                "project[0].repositories[1]: \"127.0.0.1:5000/a?\": '?' cannot occur",
            ),
            (
                base.replace(
                    "\"127.0.0.1:5000/shared/ledger\"",
                    "\"127.0.0.1:5001/shared/*\"",
                ),
                "project[0].repositories[1]: \"127.0.0.1:5001/shared/*\": registry \"127.0.0.1:5001\" is not a configured [[registry]] (configured: 127.0.0.1:5000)",
            ),
            (
                // A path without its host reads as host "payments".
                base.replace("\"127.0.0.1:5000/payments/*\"", "\"payments/*\""),
                "project[0].repositories[0]: \"payments/*\": registry \"payments\" is not a configured",
            ),
            (
                base.replace(
                    "\"127.0.0.1:5000/shared/ledger\"",
                    "\"127.0.0.1:5000/Shared\"",
                ),
                "project[0].repositories[1]: \"127.0.0.1:5000/Shared\" is not a repository name",
            ),
            (
                base.replace(
                    "repositories = [\"127.0.0.1:5000/**\"]",
                    "repositories = []",
                ),
                "project[1].repositories: is empty",
            ),
            (
                base.replace("name = \"web\"", "name = \"payments\""),
                "project[1].name: \"payments\" is listed twice",
            ),
            (
                base.replace(
                    "\"group:payments-dev\", \"ci-payments\"",
                    "\"group:payments-dev\", \"zoe\"",
                ),
                "project[0].requesters: \"zoe\" is not a configured principal",
            ),
            (
                base.replace(
                    "check_reporters = [\"ci-payments\"]",
                    "check_reporters = [\"group:qa\"]",
                ),
                "project[0].check_reporters: \"group:qa\" has no members",
            ),
            (
                base.replace(
                    "check_reporters = [\"group:ci\"]",
                    "check_reporters = [\"nobody\"]",
                ),
                "check_reporters: \"nobody\" is not a configured principal",
            ),
            (
                base.replace("required_approvals = 2", "required_approvals = 4"),
                "project[0].environment[0].required_approvals: 4 approvals can never be given: only 3 principal(s) can approve (\"pat\", \"paula\", \"pia\")",
            ),
            (
                base.replace(
                    "approvers = [\"wes\"]",
                    "approvers = [\"group:web-admins\"]",
                ),
                "project[1].environment[0].approvers: \"group:web-admins\" has no members",
            ),
            (
                base.replace("approvers = [\"wes\"]", "approvers = []"),
                "project[1].environment[0].approvers: required_approvals is 1 but no approvers are designated",
            ),
            (
                base.replace("allow_self_approval = true", "approval_ttl = \"soon\""),
                "project[1].environment[0].approval_ttl: \"soon\" is not a duration",
            ),
            (
                base.replace(
                    "[[project.environment]]\nname = \"production\"\napprovers = [\"wes\"]",
                    "[[project.environment]]\nname = \"prod\"\napprovers = [\"wes\"]",
                ),
                "project[1].environment[0].name: no [[environment]] is named \"prod\" (configured: staging, production)",
            ),
            (
                format!("{base}[[project.environment]]\nname = \"production\"\n"),
                "project[1].environment[1].name: \"production\" is listed twice in this project",
            ),
        ];
        for (config, want) in cases {
            let e = err(&config);
            assert!(e.starts_with(want), "want {want:?}\n got {e:?}");
        }
        // What a project cannot override is an unknown key to serde, which
        // names it.
        let e = err(&format!("{base}tag = \"prod\"\n"));
        assert!(e.contains("unknown field `tag`"), "{e}");
    }

    #[test]
    fn shadowed_patterns_and_empty_requesters_are_warnings() {
        let shadowed = two_projects().replace(
            "repositories = [\"127.0.0.1:5000/**\"]",
            "repositories = [\"127.0.0.1:5000/**\", \"127.0.0.1:5000/payments/api\", \"127.0.0.1:5000/payments/*\"]",
        );
        let loaded = Config::parse_with(&shadowed, Files::Read).unwrap();
        let keys: Vec<&str> = loaded.warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            ["project[1].repositories[1]", "project[1].repositories[2]"],
            "{:?}",
            loaded.warnings
        );
        assert!(
            loaded.warnings[0].message.contains(
                "project \"payments\" (project[0].repositories[0] = \"127.0.0.1:5000/payments/*\") comes first"
            ),
            "{:?}",
            loaded.warnings
        );

        let nobody = two_projects().replace(
            "requesters = [\"group:payments-dev\", \"ci-payments\"]",
            "requesters = []",
        );
        let loaded = Config::parse_with(&nobody, Files::Read).unwrap();
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert_eq!(loaded.warnings[0].key, "project[0].requesters");
        assert!(
            !loaded
                .config
                .governing("127.0.0.1:5000/payments/api")
                .may_request(&who("dev", &["payments-dev"]))
        );

        assert!(
            Config::parse_with(&two_projects(), Files::Read)
                .unwrap()
                .warnings
                .is_empty()
        );
    }

    #[test]
    fn a_config_without_projects_governs_as_before() {
        let all = two_projects();
        let c = Config::parse(all.split("[[project]]").next().unwrap()).unwrap();
        assert!(c.projects.is_empty());
        let g = c.governing("127.0.0.1:5000/payments/api");
        assert!(g.project().is_none());
        assert!(g.may_request(&who("anyone", &[])));
        assert_eq!(g.environments(), c.environments.as_slice());
    }
}
