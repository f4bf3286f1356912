//! Repository patterns of `[[project]] repositories`: a full repository name
//! (`host/path`) where `*` stands for any run of characters except `/` and
//! `**` for any run including `/`.
//!
//! Hand-written rather than taken from a glob crate on purpose: glob crates
//! give `**` its meaning only as a whole path component (`a/**/b`) and make
//! whether `*` crosses `/` a builder option, while the config documents both
//! per character and anywhere in a pattern (`host/team-**`). Stating that
//! meaning in a few lines here is simpler than bending a file-system glob to
//! it and checking every release keeps agreeing.

use std::fmt;

/// One parsed pattern; [`RepositoryPattern::matches`] runs in time
/// proportional to the pattern's tokens times the name's length, whatever
/// the stars (no backtracking).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryPattern {
    text: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `*`: any run, possibly empty, without `/`.
    Star,
    /// `**`: any run, possibly empty, `/` included.
    AnyDepth,
}

impl RepositoryPattern {
    /// Parses `text`; the error says what to change.
    pub fn parse(text: &str) -> Result<RepositoryPattern, String> {
        if text.is_empty() {
            return Err("is empty; write a repository like \"registry:5000/team/*\"".into());
        }
        if let Some(c) = text.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '*'))
        }) {
            return Err(format!(
                "{text:?}: {c:?} cannot occur in a repository name; only `*` and `**` are wildcards"
            ));
        }
        if !text.contains('/') {
            return Err(format!(
                "{text:?} is not a full repository name: write the registry host too, \
                 e.g. \"registry:5000/team/*\" (or \"*/**\" for every repository)"
            ));
        }
        if text.starts_with('/') || text.ends_with('/') || text.contains("//") {
            return Err(format!(
                "{text:?} has an empty path component: no repository name can match it"
            ));
        }
        let mut tokens = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let stars = rest.len() - rest.trim_start_matches('*').len();
            let token = match stars {
                0 => {
                    let end = rest.find('*').unwrap_or(rest.len());
                    let literal = &rest[..end];
                    rest = &rest[end..];
                    tokens.push(Token::Literal(literal.to_owned()));
                    continue;
                }
                1 => Token::Star,
                2 => Token::AnyDepth,
                _ => {
                    return Err(format!(
                        "{text:?}: {} stars in a row mean nothing more; write `*` (within one \
                         path component) or `**` (across `/`)",
                        stars
                    ));
                }
            };
            rest = &rest[stars..];
            tokens.push(token);
        }
        Ok(RepositoryPattern {
            text: text.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The registry host the pattern names, when it names one without
    /// wildcards.
    pub fn literal_host(&self) -> Option<&str> {
        let host = self.text.split('/').next()?;
        (!host.contains('*')).then_some(host)
    }

    /// True when the pattern has no wildcard: it names one repository.
    pub fn is_literal(&self) -> bool {
        !self.text.contains('*')
    }

    /// Whether `repository` (the full `host/path`) matches the whole pattern.
    pub fn matches(&self, repository: &str) -> bool {
        let name = repository.as_bytes();
        let n = name.len();
        // reachable[i]: the tokens so far can match exactly name[..i].
        let mut reachable = vec![false; n + 1];
        reachable[0] = true;
        for token in &self.tokens {
            let mut next = vec![false; n + 1];
            match token {
                Token::Literal(lit) => {
                    let lit = lit.as_bytes();
                    for i in 0..=n {
                        if reachable[i] && name[i..].starts_with(lit) {
                            next[i + lit.len()] = true;
                        }
                    }
                }
                Token::Star | Token::AnyDepth => {
                    let crosses = matches!(token, Token::AnyDepth);
                    // Extend every reachable point rightwards, up to the next
                    // `/` unless this is `**`.
                    let mut open = false;
                    for i in 0..=n {
                        open |= reachable[i];
                        next[i] = open;
                        if i < n && name[i] == b'/' && !crosses {
                            open = false;
                        }
                    }
                }
            }
            reachable = next;
        }
        reachable[n]
    }
}

impl fmt::Display for RepositoryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, name: &str) -> bool {
        RepositoryPattern::parse(pattern).unwrap().matches(name)
    }

    #[test]
    fn a_single_star_stays_within_one_path_component() {
        let p = "127.0.0.1:5000/payments/*";
        assert!(matches(p, "127.0.0.1:5000/payments/api"));
        assert!(matches(p, "127.0.0.1:5000/payments/ledger-worker"));
        assert!(!matches(p, "127.0.0.1:5000/payments/api/sidecar"));
        assert!(!matches(p, "127.0.0.1:5000/payments"));
        assert!(!matches(p, "127.0.0.1:5000/payments2/api"));
        assert!(!matches(p, "127.0.0.1:5001/payments/api"));
        // The empty run: `payments/` is not a repository name, but the
        // matcher is exact about what `*` means.
        assert!(matches(p, "127.0.0.1:5000/payments/"));
        assert!(matches(
            "reg.example.com/team-*/app",
            "reg.example.com/team-a/app"
        ));
        assert!(!matches(
            "reg.example.com/team-*/app",
            "reg.example.com/team-a/b/app"
        ));
        assert!(matches("*/web/*", "reg.example.com/web/frontend"));
        assert!(!matches("*/web/*", "reg.example.com/x/web/frontend"));
    }

    #[test]
    fn a_double_star_crosses_slashes() {
        let p = "reg.example.com/payments/**";
        assert!(matches(p, "reg.example.com/payments/api"));
        assert!(matches(p, "reg.example.com/payments/api/sidecar/x"));
        assert!(!matches(p, "reg.example.com/web/api"));
        assert!(matches(
            "reg.example.com/team-**",
            "reg.example.com/team-a/b/c"
        ));
        assert!(matches("*/**", "reg.example.com/a"));
        assert!(matches("*/**", "127.0.0.1:5000/a/b/c"));
        assert!(matches("**/app", "reg.example.com/a/b/app"));
        assert!(!matches("**/app", "reg.example.com/a/b/app2"));
        assert!(matches("reg.example.com/**/app", "reg.example.com/x/y/app"));
        assert!(!matches("reg.example.com/**/app", "reg.example.com/app"));
    }

    #[test]
    fn literals_match_only_themselves() {
        let p = "reg.example.com/team/app";
        assert!(matches(p, p));
        assert!(!matches(p, "reg.example.com/team/app2"));
        assert!(!matches(p, "reg.example.com/team/ap"));
        assert!(!matches(p, "xreg.example.com/team/app"));
        // `.` is a literal, not "any character".
        assert!(!matches("reg.example.com/a.b", "reg.example.com/aXb"));
    }

    #[test]
    fn several_stars_in_one_component_need_no_backtracking() {
        assert!(matches("r.io/*-*-*", "r.io/a-b-c-d"));
        assert!(!matches("r.io/*-*-*", "r.io/a-b"));
        // Many stars against a long name that fails late: stays linear.
        let pattern = format!("r.io/{}x", "*a".repeat(40));
        let name = format!("r.io/{}", "a".repeat(200));
        assert!(!matches(&pattern, &name));
    }

    #[test]
    fn malformed_patterns_say_what_to_change() {
        let err = |p: &str| RepositoryPattern::parse(p).unwrap_err();
        assert!(err("").contains("is empty"));
        assert!(err("*").contains("full repository name"), "{}", err("*"));
        assert!(err("r.io/a?").contains("'?'"), "{}", err("r.io/a?"));
        assert!(err("r.io/a b").contains("' '"));
        assert!(err("r.io/***").contains("3 stars"), "{}", err("r.io/***"));
        assert!(err("r.io//a").contains("empty path component"));
        assert!(err("r.io/a/").contains("empty path component"));
        assert!(err("/r.io/a").contains("empty path component"));
    }

    #[test]
    fn the_literal_host_is_known_only_without_wildcards() {
        let host = |p: &str| {
            RepositoryPattern::parse(p)
                .unwrap()
                .literal_host()
                .map(str::to_owned)
        };
        assert_eq!(
            host("127.0.0.1:5000/a/*").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(host("*/a"), None);
        assert_eq!(host("reg-*.example.com/a"), None);
        assert!(RepositoryPattern::parse("r.io/a").unwrap().is_literal());
        assert!(!RepositoryPattern::parse("r.io/*").unwrap().is_literal());
    }
}
