//! What `prodgate release` sends: its components from the command line
//! (`REPOSITORY:SOURCE`) or the whole request from a TOML file
//! (`--from-file`), checked here so that a mistake is named where it was
//! made (the argument, or the file's key and line) before anything is sent.

use super::CliError;
use crate::domain::names::{self, Reference, Repository, Source, split_image};
use crate::domain::release::{MAX_COMPONENTS, MIN_COMPONENTS};
use crate::pb;
use serde::Deserialize;
use std::io::Read;
use std::path::Path;
use toml::Spanned;

/// The most of a release file read: one with 50 components is a few KiB.
pub const FILE_LIMIT: u64 = 1024 * 1024;

/// The file as written. `environment` and `reason` may be left to the
/// command line (a file reused for several environments).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseFile {
    environment: Option<String>,
    reason: Option<String>,
    request_id: Option<String>,
    #[serde(default)]
    break_glass: bool,
    #[serde(default)]
    component: Vec<FileComponent>,
}

/// One `[[component]]` table; spans so that an error names its line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileComponent {
    repository: Spanned<String>,
    source: Spanned<String>,
}

/// What the command line says beside `--from-file`: each value given wins
/// over the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub environment: Option<String>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    /// `--break-glass`: sets it (the file's `break_glass = true` does too).
    pub break_glass: bool,
}

/// Why a release file was refused; the path is added by [`CliError::ReleaseFile`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("is over {FILE_LIMIT} bytes (a release file is a few KiB)")]
    TooLarge,
    #[error("is not UTF-8 text")]
    NotText,
    /// The toml crate's message: the line and column, the line itself with
    /// a caret under the key or value, and what was expected (an unknown
    /// key names the keys allowed).
    #[error("{0}")]
    Toml(String),
    #[error("no `{key}`: set it in the file or give {flag}")]
    Missing {
        key: &'static str,
        flag: &'static str,
    },
    #[error(
        "{count} [[component]] table{}: a release has {MIN_COMPONENTS} to {MAX_COMPONENTS}",
        if *.count == 1 { "" } else { "s" }
    )]
    Count { count: usize },
    /// `index` counts the `[[component]]` tables from 1.
    #[error("line {line}: [[component]] {index}: {key} {message}")]
    Component {
        line: usize,
        index: usize,
        key: &'static str,
        message: String,
    },
}

/// `REPOSITORY:TAG` or `REPOSITORY@sha256:…` ([`split_image`]), a
/// positional argument of `prodgate release`.
pub fn component(s: &str) -> Result<pb::ReleaseComponent, String> {
    let (repository, source) = match split_image(s) {
        (repository, Some(Reference::Tag(source) | Reference::Digest(source))) => {
            (repository, source)
        }
        (_, None) => {
            return Err(format!(
                "{:?}: give each image as REPOSITORY:SOURCE (e.g. registry.example.com/shop/api:staging) or REPOSITORY@sha256:…",
                names::echo(s)
            ));
        }
    };
    checked(repository, source).map_err(|(key, message)| format!("{key} {message}"))
}

/// A component as the server reads it: a repository without a tag, a
/// source that is a tag or a `sha256:` digest. The error names which of
/// the two is wrong and why.
fn checked(repository: &str, source: &str) -> Result<pb::ReleaseComponent, (&'static str, String)> {
    let said = |v: &str, e: &dyn std::fmt::Display| format!("{:?} {e}", names::echo(v));
    super::repository(repository)
        .map_err(|e| ("repository", format!("{:?}: {e}", names::echo(repository))))?;
    Repository::parse(repository).map_err(|e| ("repository", said(repository, &e)))?;
    Source::parse(source).map_err(|e| ("source", said(source, &e)))?;
    Ok(pb::ReleaseComponent {
        repository: repository.to_owned(),
        source: source.to_owned(),
    })
}

/// The request `path` describes, with `overrides` applied; its errors name
/// the file.
pub fn from_file(path: &Path, overrides: Overrides) -> Result<pb::RequestReleaseRequest, CliError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(FILE_LIMIT + 1).read_to_end(&mut bytes))
        .map_err(|source| CliError::ReadFile {
            what: "release file",
            path: path.to_owned(),
            source,
        })?;
    let refused = |error| CliError::ReleaseFile {
        path: path.to_owned(),
        error,
    };
    if bytes.len() as u64 > FILE_LIMIT {
        return Err(refused(FileError::TooLarge));
    }
    let text = String::from_utf8(bytes).map_err(|_| refused(FileError::NotText))?;
    parse(&text, overrides).map_err(refused)
}

/// The request the file's `text` describes, with `overrides` applied.
pub fn parse(text: &str, overrides: Overrides) -> Result<pb::RequestReleaseRequest, FileError> {
    let file: ReleaseFile = toml::from_str(text).map_err(|e| FileError::Toml(e.to_string()))?;
    let count = file.component.len();
    if !(MIN_COMPONENTS..=MAX_COMPONENTS).contains(&count) {
        return Err(FileError::Count { count });
    }
    let line = |at: &Spanned<String>| {
        let before = text.get(..at.span().start).unwrap_or(text);
        before.matches('\n').count() + 1
    };
    let components = file
        .component
        .iter()
        .enumerate()
        .map(|(i, c)| {
            checked(c.repository.get_ref(), c.source.get_ref()).map_err(|(key, message)| {
                FileError::Component {
                    line: line(if key == "source" {
                        &c.source
                    } else {
                        &c.repository
                    }),
                    index: i + 1,
                    key,
                    message,
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let environment = overrides
        .environment
        .or(file.environment)
        .ok_or(FileError::Missing {
            key: "environment",
            flag: "--env",
        })?;
    let reason = overrides.reason.or(file.reason).ok_or(FileError::Missing {
        key: "reason",
        flag: "--reason",
    })?;
    Ok(pb::RequestReleaseRequest {
        environment,
        reason,
        request_id: overrides.request_id.or(file.request_id).unwrap_or_default(),
        components,
        break_glass: overrides.break_glass || file.break_glass,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# shop 2.0: the tags move in this order
environment = "production"
reason = "shop 2.0"
request_id = "shop-2.0"

[[component]]
repository = "127.0.0.1:5000/shop/web"
source = "staging"

[[component]]
repository = "127.0.0.1:5000/shop/api"
source = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
"#;

    /// The error of [`FILE`] with `from` replaced by `to`.
    fn refused(from: &str, to: &str) -> FileError {
        match parse(&FILE.replace(from, to), Overrides::default()) {
            Ok(r) => panic!("{from:?} -> {to:?} accepted: {r:?}"),
            Err(e) => e,
        }
    }

    fn repositories(r: &pb::RequestReleaseRequest) -> Vec<&str> {
        r.components.iter().map(|c| c.repository.as_str()).collect()
    }

    #[test]
    fn a_file_is_the_request_in_its_order_and_the_command_line_wins() {
        let r = parse(FILE, Overrides::default()).unwrap();
        assert_eq!(r.environment, "production");
        assert_eq!(r.reason, "shop 2.0");
        assert_eq!(r.request_id, "shop-2.0");
        assert!(!r.break_glass);
        assert_eq!(
            repositories(&r),
            ["127.0.0.1:5000/shop/web", "127.0.0.1:5000/shop/api"]
        );
        assert_eq!(r.components[0].source, "staging");
        assert!(r.components[1].source.starts_with("sha256:"));

        let r = parse(
            FILE,
            Overrides {
                environment: Some("staging".into()),
                reason: Some("again".into()),
                request_id: Some("other".into()),
                break_glass: true,
            },
        )
        .unwrap();
        assert_eq!(
            (
                r.environment.as_str(),
                r.reason.as_str(),
                r.request_id.as_str()
            ),
            ("staging", "again", "other")
        );
        assert!(r.break_glass);

        // Environment and reason may come from the command line alone.
        let bare = FILE.replace("environment = \"production\"\n", "");
        assert_eq!(
            parse(&bare, Overrides::default()).unwrap_err(),
            FileError::Missing {
                key: "environment",
                flag: "--env"
            }
        );
        let r = parse(
            &bare,
            Overrides {
                environment: Some("production".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(r.environment, "production");
        let r = parse(
            &FILE.replace("request_id", "break_glass = true\n#"),
            Overrides::default(),
        )
        .unwrap();
        assert!(r.break_glass);
        assert_eq!(r.request_id, "");
    }

    #[test]
    fn an_unknown_key_is_refused_naming_it_and_its_line() {
        let e = refused("source = \"staging\"", "tag = \"staging\"");
        let FileError::Toml(message) = &e else {
            panic!("{e:?}");
        };
        assert!(message.contains("line 8"), "{message}");
        assert!(message.contains("unknown field `tag`"), "{message}");
        let e = parse(&format!("colour = \"blue\"\n{FILE}"), Overrides::default()).unwrap_err();
        assert!(
            e.to_string().contains("line 1") && e.to_string().contains("`colour`"),
            "{e}"
        );
        // A component without its source.
        let e = refused("source = \"staging\"\n", "");
        assert!(e.to_string().contains("missing field `source`"), "{e}");
        // Not TOML at all, or the wrong type.
        for bad in [
            "environment = ",
            "reason = 7\n",
            "[[component]]\nrepository = [1]\n",
            "\u{0}",
        ] {
            assert!(
                matches!(parse(bad, Overrides::default()), Err(FileError::Toml(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_bad_component_is_named_by_its_line_and_key() {
        let e = refused("127.0.0.1:5000/shop/api", "127.0.0.1:5000/shop/API");
        match &e {
            FileError::Component {
                line, index, key, ..
            } => assert_eq!((*line, *index, *key), (11, 2, "repository")),
            other => panic!("{other:?}"),
        }
        let e = refused("\"staging\"", "\"no tag\"");
        assert!(
            e.to_string()
                .starts_with("line 8: [[component]] 1: source \"no tag\""),
            "{e}"
        );
        // A tag on the repository belongs in source.
        let e = refused("shop/web\"", "shop/web:staging\"");
        assert!(e.to_string().contains("names no tag"), "{e}");
        // One component is a promotion, not a release; 51 are too many.
        let one = FILE
            .split("\n[[component]]")
            .take(2)
            .collect::<Vec<_>>()
            .join("\n[[component]]");
        assert_eq!(
            parse(&one, Overrides::default()).unwrap_err().to_string(),
            "1 [[component]] table: a release has 2 to 50"
        );
        let many: String = (0..51)
            .map(|i| format!("[[component]]\nrepository = \"r.io/a{i}\"\nsource = \"s\"\n"))
            .collect();
        assert_eq!(
            parse(&many, Overrides::default()).unwrap_err(),
            FileError::Count { count: 51 }
        );
    }

    #[test]
    fn a_component_argument_is_repository_and_source() {
        let c = component("127.0.0.1:5000/shop/api:staging").unwrap();
        assert_eq!(
            (c.repository.as_str(), c.source.as_str()),
            ("127.0.0.1:5000/shop/api", "staging")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let c = component(&format!("r.io/shop/web@{d}")).unwrap();
        assert_eq!(
            (c.repository.as_str(), c.source.as_str()),
            ("r.io/shop/web", d.as_str())
        );
        assert!(
            component("127.0.0.1:5000/shop/api")
                .unwrap_err()
                .contains("REPOSITORY:SOURCE")
        );
        assert!(
            component("r.io/shop/api:")
                .unwrap_err()
                .starts_with("source")
        );
        assert!(
            component("shop/api:staging")
                .unwrap_err()
                .starts_with("repository")
        );
        assert!(
            component("r.io/a@sha256:zz")
                .unwrap_err()
                .starts_with("source")
        );
    }
}
