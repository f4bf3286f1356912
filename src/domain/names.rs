//! Grammar of the names a client sends: repositories, tags and digests, as the
//! OCI distribution spec defines them. Pure functions, fuzzed under `fuzz/`.

use std::fmt;

/// A repository with its registry host, e.g. `registry.example.com:5000/team/app`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repository {
    host: String,
    path: String,
}

/// Why a name was refused; the message names the rule that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("must start with a registry host, e.g. \"registry.example.com:5000/team/app\"")]
    MissingHost,
    #[error("registry host {0:?} is not a valid host[:port]")]
    BadHost(String),
    #[error(
        "path component {0:?} must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
    )]
    BadPathComponent(String),
    #[error("is {0} bytes; at most 255 are allowed")]
    TooLong(usize),
    #[error("{0:?} is not a tag: 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    BadTag(String),
    #[error("{0:?} is not a digest of the form sha256:<64 lowercase hex>")]
    BadDigest(String),
    #[error("{0:?} is not a check name: [a-z0-9][a-z0-9._-]{{0,62}}")]
    BadCheck(String),
}

/// How many characters of a refused value a message repeats.
const ECHOED: usize = 64;

/// A client's value as an error message repeats it: cut after [`ECHOED`]
/// characters with an ellipsis, so a message stays far below gRPC's
/// metadata limit (16 KiB) whatever was sent. The one way values sent by
/// clients are echoed.
pub fn echo(s: &str) -> String {
    match cut(s, ECHOED) {
        Some(head) => format!("{head}…"),
        None => s.to_owned(),
    }
}

/// The first `max` characters of `s` when it has more (`None` when it fits):
/// where every message that repeats a client's value cuts it.
pub fn cut(s: &str, max: usize) -> Option<&str> {
    s.char_indices().nth(max).map(|(i, _)| &s[..i])
}

/// Longest repository name (host and path) most registries accept.
const MAX_REPOSITORY_LEN: usize = 255;

impl Repository {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_REPOSITORY_LEN {
            return Err(NameError::TooLong(s.len()));
        }
        let (host, path) = s.split_once('/').ok_or(NameError::MissingHost)?;
        // Like docker's reference grammar: the first component is a host only if it
        // looks like one, so "team/app" is not silently read as host "team".
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(NameError::MissingHost);
        }
        validate_host(host)?;
        for component in path.split('/') {
            validate_path_component(component)?;
        }
        Ok(Self {
            host: host.to_owned(),
            path: path.to_owned(),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The repository path inside the registry, e.g. `team/app`.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.path)
    }
}

fn validate_host(host: &str) -> Result<(), NameError> {
    let bad = || NameError::BadHost(echo(host));
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if let Some(port) = port
        && (port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err())
    {
        return Err(bad());
    }
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(bad())
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn validate_path_component(c: &str) -> Result<(), NameError> {
    let bad = || NameError::BadPathComponent(echo(c));
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(bad());
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`
pub fn validate_tag(tag: &str) -> Result<(), NameError> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NameError::BadTag(echo(tag)))
    }
}

/// `sha256:<64 lowercase hex>`, the only digest algorithm prodgate pins.
pub fn validate_digest(digest: &str) -> Result<(), NameError> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(NameError::BadDigest(echo(digest)))
    }
}

/// A validation check's name: `[a-z0-9][a-z0-9._-]{0,62}` (like `e2e`,
/// `trivy.scan`).
pub fn validate_check_name(name: &str) -> Result<(), NameError> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = bytes
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() {
        Err(NameError::Empty)
    } else if first_ok && rest_ok && name.len() <= 63 {
        Ok(())
    } else {
        Err(NameError::BadCheck(echo(name)))
    }
}

/// What a promotion's `source` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Tag(String),
    Digest(String),
}

impl Source {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.contains(':') {
            validate_digest(s)?;
            Ok(Self::Digest(s.to_owned()))
        } else {
            validate_tag(s)?;
            Ok(Self::Tag(s.to_owned()))
        }
    }

    /// The reference as it appears after the repository in a manifest URL.
    pub fn as_reference(&self) -> &str {
        match self {
            Self::Tag(t) | Self::Digest(t) => t,
        }
    }
}

/// What follows the name in an image reference, not validated yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference<'a> {
    /// After `:`, e.g. `staging`.
    Tag(&'a str),
    /// After `@`, e.g. `sha256:…`.
    Digest(&'a str),
}

/// `sha256:` and the first 12 hex digits: enough to tell digests apart in
/// a table, a page or a chat message (each shows the whole one nearby).
pub fn short_digest(d: &str) -> &str {
    let end = d.find(':').map_or(0, |i| i + 1) + 12;
    d.get(..end).unwrap_or(d)
}

/// Cuts an image reference as docker does: `name@digest`, `name:tag` or
/// `name` alone. A colon before the last `/` belongs to the registry's
/// port (`127.0.0.1:5000/team/app`). Nothing is validated: the one place
/// that knows where a name ends, for every command that takes an image.
pub fn split_image(s: &str) -> (&str, Option<Reference<'_>>) {
    if let Some((name, digest)) = s.split_once('@') {
        return (name, Some(Reference::Digest(digest)));
    }
    let last = s.rfind('/').unwrap_or(0);
    match s[last..].split_once(':') {
        Some((tail, tag)) => (&s[..last + tail.len()], Some(Reference::Tag(tag))),
        None => (s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories() {
        let r = Repository::parse("registry.example.com:5000/team/app").unwrap();
        assert_eq!(r.host(), "registry.example.com:5000");
        assert_eq!(r.path(), "team/app");
        assert_eq!(r.to_string(), "registry.example.com:5000/team/app");
        for ok in [
            "127.0.0.1:5000/app",
            "localhost/a/b/c",
            "r.io/a.b_c__d---e",
            "r.io/0",
        ] {
            assert!(Repository::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "app",
            "team/app",
            "r.io",
            "r.io/",
            "r.io/App",
            "r.io/a//b",
            "r.io/a/",
            "r.io/-a",
            "r.io/a___b",
            "r.io/a.-b",
            "r.io:99999/a",
            "r.io:/a",
            "-r.io/a",
            "r .io/a",
            "r.io/a\0b",
        ] {
            assert!(Repository::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Repository::parse(&format!("r.io/{}", "a".repeat(300))),
            Err(NameError::TooLong(305))
        );
    }

    #[test]
    fn tags_and_digests() {
        assert!(validate_tag("staging").is_ok());
        assert!(validate_tag("_v1.2-rc").is_ok());
        assert!(validate_tag(&"a".repeat(128)).is_ok());
        for bad in ["", ".x", "-x", "a/b", "a:b", &"a".repeat(129), "é"] {
            assert!(validate_tag(bad).is_err(), "{bad:?}");
        }
        let d = format!("sha256:{}", "ab".repeat(32));
        assert!(validate_digest(&d).is_ok());
        assert_eq!(Source::parse(&d), Ok(Source::Digest(d.clone())));
        assert_eq!(Source::parse("staging"), Ok(Source::Tag("staging".into())));
        for bad in [
            "sha256:abc",
            "sha512:00",
            &format!("sha256:{}", "AB".repeat(32)),
            &format!("sha256:{}", "ab".repeat(33)),
        ] {
            assert!(Source::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn short_digests_keep_the_algorithm() {
        assert_eq!(
            short_digest(&format!("sha256:{}", "ab".repeat(32))),
            "sha256:abababababab"
        );
        assert_eq!(short_digest(""), "");
        assert_eq!(short_digest("sha256:ab"), "sha256:ab");
        // Never cut inside a character.
        assert_eq!(short_digest("sha256:aéééééé"), "sha256:aéééééé");
    }

    #[test]
    fn image_references_are_cut_where_docker_cuts_them() {
        use Reference::{Digest, Tag};
        assert_eq!(
            split_image("127.0.0.1:5000/team/app:v1"),
            ("127.0.0.1:5000/team/app", Some(Tag("v1")))
        );
        assert_eq!(
            split_image("127.0.0.1:5000/team/app"),
            ("127.0.0.1:5000/team/app", None)
        );
        assert_eq!(
            split_image("r.io/app@sha256:ab"),
            ("r.io/app", Some(Digest("sha256:ab")))
        );
        assert_eq!(split_image("app:v1"), ("app", Some(Tag("v1"))));
        assert_eq!(split_image("r.io/app:"), ("r.io/app", Some(Tag(""))));
        assert_eq!(split_image("r.io/a:b:c"), ("r.io/a", Some(Tag("b:c"))));
        assert_eq!(split_image(""), ("", None));
        assert_eq!(split_image("é/ü:ß"), ("é/ü", Some(Tag("ß"))));
        // Nothing is lost or added (the fuzz target checks it on any input).
        for s in [
            "h:1/a:b@c:d/e",
            "a@b@c",
            ":/:",
            "/",
            "h:5000",
            "h:5000/a/b:c:d",
        ] {
            let joined = match split_image(s) {
                (name, Some(Tag(t))) => format!("{name}:{t}"),
                (name, Some(Digest(d))) => format!("{name}@{d}"),
                (name, None) => name.to_owned(),
            };
            assert_eq!(joined, s);
        }
    }
}
