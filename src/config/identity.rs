//! `[[identity]]`: issuers whose JWTs callers may present instead of a
//! static token (a CI job's OIDC token, a person's token from the company
//! IdP), and the `[[identity.rule]]`s that map a verified token's claims to
//! a principal name and groups. Also the signing keys of a JWKS document,
//! parsed here so that `check-config` refuses a `jwks_file` nobody could
//! verify with, and [`crate::auth`] reads keys the same way at run time.

use super::raw::{RawIdentity, RawIdentityRule};
use super::validate::{Cx, check_name, duration};
use super::{ConfigError, PrincipalConfig, invalid};
use crate::domain::policy::Approver;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The algorithms used when `algorithms` is absent: what GitHub Actions,
/// GitLab, Google, Azure AD and Okta sign with.
pub const DEFAULT_ALGORITHMS: [JwsAlgorithm; 2] = [JwsAlgorithm::RS256, JwsAlgorithm::ES256];

/// Largest JWKS document read, from a file or a URL. Real ones are a few
/// KiB (GitHub's: 2 keys, ~1.5 KiB); the cap bounds what a broken or
/// hostile endpoint can make the server hold.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

/// Keys read from one JWKS document at most; the rest are ignored.
const MAX_KEYS: usize = 64;

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// How `[console] identity` names it (its `name` key), if it has one.
    pub name: Option<String>,
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// Must be among the token's `aud`.
    pub audience: String,
    pub keys: KeySource,
    /// `alg` values accepted; never `none` or an HMAC one.
    pub algorithms: Vec<JwsAlgorithm>,
    /// When set, `exp - iat` may be at most this.
    pub max_lifetime: Option<Duration>,
    /// In file order: the first whose claims all match maps the token.
    pub rules: Vec<IdentityRule>,
}

/// Where an issuer's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// HTTPS (plain HTTP only to a loopback address), fetched by the server.
    Url(String),
    /// A JWKS file, read again when it changes.
    File(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Url(u) => f.write_str(u),
            KeySource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Signature algorithms a verifier may accept: asymmetric only. `none`
/// needs no key, and an HMAC one would verify with the *public* key as the
/// secret (the classic key-confusion attack), so neither exists here.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwsAlgorithm {
    pub const ALL: [JwsAlgorithm; 9] = [
        JwsAlgorithm::RS256,
        JwsAlgorithm::RS384,
        JwsAlgorithm::RS512,
        JwsAlgorithm::PS256,
        JwsAlgorithm::PS384,
        JwsAlgorithm::PS512,
        JwsAlgorithm::ES256,
        JwsAlgorithm::ES384,
        JwsAlgorithm::EdDSA,
    ];

    /// As the JWS header's `alg` spells it.
    pub fn name(self) -> &'static str {
        match self {
            JwsAlgorithm::RS256 => "RS256",
            JwsAlgorithm::RS384 => "RS384",
            JwsAlgorithm::RS512 => "RS512",
            JwsAlgorithm::PS256 => "PS256",
            JwsAlgorithm::PS384 => "PS384",
            JwsAlgorithm::PS512 => "PS512",
            JwsAlgorithm::ES256 => "ES256",
            JwsAlgorithm::ES384 => "ES384",
            JwsAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub fn from_name(name: &str) -> Option<JwsAlgorithm> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The kind of key that verifies it: an `alg` must fit the key `kid`
    /// selects, or a token could pick how its key is used.
    pub fn key_kind(self) -> KeyKind {
        match self {
            JwsAlgorithm::RS256
            | JwsAlgorithm::RS384
            | JwsAlgorithm::RS512
            | JwsAlgorithm::PS256
            | JwsAlgorithm::PS384
            | JwsAlgorithm::PS512 => KeyKind::Rsa,
            JwsAlgorithm::ES256 => KeyKind::P256,
            JwsAlgorithm::ES384 => KeyKind::P384,
            JwsAlgorithm::EdDSA => KeyKind::Ed25519,
        }
    }

    pub fn to_jwt(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            JwsAlgorithm::RS256 => A::RS256,
            JwsAlgorithm::RS384 => A::RS384,
            JwsAlgorithm::RS512 => A::RS512,
            JwsAlgorithm::PS256 => A::PS256,
            JwsAlgorithm::PS384 => A::PS384,
            JwsAlgorithm::PS512 => A::PS512,
            JwsAlgorithm::ES256 => A::ES256,
            JwsAlgorithm::ES384 => A::ES384,
            JwsAlgorithm::EdDSA => A::EdDSA,
        }
    }
}

/// The type of a verification key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RSA",
            KeyKind::P256 => "EC P-256",
            KeyKind::P384 => "EC P-384",
            KeyKind::Ed25519 => "Ed25519",
        }
    }
}

/// `[[identity.rule]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRule {
    /// Claim name -> the exact string it must have.
    pub claims: BTreeMap<String, String>,
    pub principal: Template,
    pub groups: Vec<Template>,
    /// An array-of-strings claim whose entries are also groups.
    pub groups_claim: Option<String>,
}

/// What a rule can say about someone the config names, for the checks that
/// refuse a policy nobody could pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Some token this rule maps is it (given the right claims).
    Yes,
    /// Only if the IdP puts the right value in a templated group or the
    /// `groups_claim`, which the config cannot know.
    Maybe,
    No,
}

impl IdentityRule {
    /// The one name every token this rule maps gets, if not templated.
    pub fn fixed_name(&self) -> Option<&str> {
        self.principal.literal()
    }

    /// Whether a token this rule maps can be in group `g`.
    pub fn has_group(&self, g: &str) -> Reach {
        if self.groups.iter().any(|t| t.literal() == Some(g)) {
            Reach::Yes
        } else if self.groups_claim.is_some()
            || self
                .groups
                .iter()
                .any(|t| t.literal().is_none() && t.could_produce(g))
        {
            Reach::Maybe
        } else {
            Reach::No
        }
    }

    /// Whether a token this rule maps can be designated by `a`.
    pub fn reaches(&self, a: &Approver) -> Reach {
        match a {
            Approver::Principal(name) => {
                if self.principal.could_produce(name) {
                    Reach::Yes
                } else {
                    Reach::No
                }
            }
            Approver::Group(g) => self.has_group(g),
        }
    }
}

/// A name with `{claim}` placeholders, each replaced by that string claim
/// of the token. `{` and `}` have no other use (no escapes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Claim(String),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Text(rest.to_owned()));
                    rest = "";
                }
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(format!("{text:?}: `}}` without `{{`"));
                }
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Text(rest[..i].to_owned()));
                    }
                    let after = &rest[i + 1..];
                    let end = after
                        .find(['{', '}'])
                        .filter(|&j| after.as_bytes()[j] == b'}')
                        .ok_or_else(|| format!("{text:?}: `{{` without a matching `}}`"))?;
                    let claim = &after[..end];
                    if claim.trim().is_empty() {
                        return Err(format!("{text:?}: `{{}}` names no claim"));
                    }
                    parts.push(Part::Claim(claim.to_owned()));
                    rest = &after[end + 1..];
                }
            }
        }
        Ok(Template {
            text: text.to_owned(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The text, when it has no placeholder.
    pub fn literal(&self) -> Option<&str> {
        self.parts
            .iter()
            .all(|p| matches!(p, Part::Text(_)))
            .then_some(self.text.as_str())
    }

    /// The claims it reads.
    pub fn claims(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Claim(c) => Some(c.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The text with each placeholder replaced by `claim(name)`; the first
    /// claim it has no string for is the error.
    pub fn render<'c>(&'c self, claim: impl Fn(&str) -> Option<&'c str>) -> Result<String, &'c str>
    where
        Self: 'c,
    {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Claim(c) => out.push_str(claim(c).ok_or(c.as_str())?),
            }
        }
        Ok(out)
    }

    /// A name both templates can render (each placeholder standing for any
    /// non-empty string), if there is one. Decided on the literal text
    /// around the placeholders: both fixed texts must agree as far as both
    /// go at the start and at the end; when that holds, claim values can
    /// fill in the rest (a placeholder's value is free text), so the
    /// example is built from one side's text.
    pub fn overlap(&self, other: &Template) -> Option<String> {
        if let (Some(a), Some(b)) = (self.literal(), other.literal()) {
            return (a == b).then(|| a.to_owned());
        }
        if let Some(a) = self.literal() {
            return other.could_produce(a).then(|| a.to_owned());
        }
        if let Some(b) = other.literal() {
            return self.could_produce(b).then(|| b.to_owned());
        }
        let (pa, sa) = (self.fixed_prefix(), self.fixed_suffix());
        let (pb, sb) = (other.fixed_prefix(), other.fixed_suffix());
        let prefixes = pa.starts_with(pb) || pb.starts_with(pa);
        let suffixes = sa.ends_with(sb) || sb.ends_with(sa);
        (prefixes && suffixes).then(|| {
            let (p, s) = (
                if pa.len() >= pb.len() { pa } else { pb },
                if sa.len() >= sb.len() { sa } else { sb },
            );
            format!("{p}x{s}")
        })
    }

    /// The text before the first placeholder.
    fn fixed_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Text(t)) => t,
            _ => "",
        }
    }

    /// The text after the last placeholder.
    fn fixed_suffix(&self) -> &str {
        match self.parts.last() {
            Some(Part::Text(t)) if self.parts.len() > 1 => t,
            _ => "",
        }
    }

    /// Whether some claim values render it as `name` (a placeholder stands
    /// for any string).
    pub fn could_produce(&self, name: &str) -> bool {
        fn go(parts: &[Part], s: &str) -> bool {
            match parts.split_first() {
                None => s.is_empty(),
                Some((Part::Text(t), rest)) => {
                    s.strip_prefix(t.as_str()).is_some_and(|r| go(rest, r))
                }
                Some((Part::Claim(_), rest)) => s
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain([s.len()])
                    .any(|i| go(rest, &s[i..])),
            }
        }
        go(&self.parts, name)
    }
}

/// Every `[[identity]]`: one per issuer, keys from a URL or a file,
/// asymmetric algorithms, and at least one rule.
pub(super) fn identities(
    raw: Vec<RawIdentity>,
    principals: &[PrincipalConfig],
    cx: &mut Cx,
) -> Result<Vec<IdentityConfig>, ConfigError> {
    let mut out: Vec<IdentityConfig> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("identity[{i}].{field}");
        if r.issuer.trim().is_empty() || r.issuer.chars().any(char::is_control) {
            return Err(invalid(
                key("issuer"),
                "must be the exact `iss` of the issuer's tokens, e.g. \"https://token.actions.githubusercontent.com\"",
            ));
        }
        if out.iter().any(|x| x.issuer == r.issuer) {
            return Err(invalid(
                key("issuer"),
                format!(
                    "{:?} is listed twice: one [[identity]] per issuer, with several rules",
                    r.issuer
                ),
            ));
        }
        if let Some(name) = &r.name {
            check_name(&key("name"), name)?;
            if let Some(j) = out.iter().position(|x| x.name.as_ref() == Some(name)) {
                return Err(invalid(
                    key("name"),
                    format!("{name:?} is also identity[{j}]'s name: names are unique"),
                ));
            }
        }
        if r.audience.trim().is_empty() {
            return Err(invalid(
                key("audience"),
                "is empty: name the audience tokens must be minted for, e.g. \"prodgate\"",
            ));
        }
        let keys = match (r.jwks_url, r.jwks_file) {
            (Some(url), None) => KeySource::Url(jwks_url(&key("jwks_url"), &url)?),
            (None, Some(path)) => {
                let k = key("jwks_file");
                if let Some(bytes) = cx.read(&k, &path)? {
                    KeySet::parse(&bytes)
                        .map_err(|m| invalid(&k, format!("{}: {m}", path.display())))?;
                }
                KeySource::File(path)
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    key("jwks_file"),
                    "give jwks_url or jwks_file, not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    format!("identity[{i}]"),
                    "needs jwks_url or jwks_file: where the issuer's signing keys are",
                ));
            }
        };
        let algorithms = match &r.algorithms {
            None => DEFAULT_ALGORITHMS.to_vec(),
            Some(list) => algorithms(&key("algorithms"), list)?,
        };
        let max_lifetime = r
            .max_lifetime
            .as_deref()
            .map(|m| duration(&key("max_lifetime"), Some(m), Duration::ZERO))
            .transpose()?;
        if r.rule.is_empty() {
            return Err(invalid(
                key("rule"),
                "no [[identity.rule]]: a token maps to a principal only through a rule",
            ));
        }
        let mut rules = Vec::new();
        for (j, raw_rule) in r.rule.iter().enumerate() {
            rules.push(rule(i, j, raw_rule, principals, cx)?);
        }
        if let Some(j) = rules.iter().position(|r| r.claims.is_empty())
            && j + 1 < rules.len()
        {
            cx.warn(
                format!("identity[{i}].rule[{}]", j + 1),
                format!("is never used: rule[{j}] has no claims, so it matches every token first"),
            );
        }
        // A token of one issuer must never act as another's principal.
        for (j, mine) in rules.iter().enumerate() {
            for (k, other) in out.iter().enumerate() {
                for (l, theirs) in other.rules.iter().enumerate() {
                    if let Some(name) = mine.principal.overlap(&theirs.principal) {
                        cx.warn_strict(
                            format!("identity[{i}].rule[{j}].principal"),
                            format!(
                                "{:?} can render the same principal as identity[{k}].rule[{l}] {:?} \
                                 (e.g. {name:?}): a token of {:?} could act as one of {:?}; \
                                 give each issuer's principals a prefix of their own",
                                mine.principal.as_str(),
                                theirs.principal.as_str(),
                                r.issuer,
                                other.issuer,
                            ),
                        );
                    }
                }
            }
        }
        out.push(IdentityConfig {
            name: r.name,
            issuer: r.issuer,
            audience: r.audience,
            keys,
            algorithms,
            max_lifetime,
            rules,
        });
    }
    Ok(out)
}

/// `jwks_url`: HTTPS, or plain HTTP to a loopback IP (a sidecar, tests),
/// without credentials in it.
pub(super) fn jwks_url(key: &str, text: &str) -> Result<String, ConfigError> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| invalid(key, format!("{text:?} is not a URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(key, "must not carry credentials"));
    }
    // A literal loopback IP only: a name like `localhost` is whatever the
    // resolver says it is.
    let loopback = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(invalid(
                key,
                format!(
                    "{text:?}: keys that decide who is who come over HTTPS; plain HTTP only to a loopback address like 127.0.0.1"
                ),
            ));
        }
        other => return Err(invalid(key, format!("{text:?}: {other}: is not https"))),
    }
    Ok(url.to_string())
}

fn algorithms(key: &str, list: &[String]) -> Result<Vec<JwsAlgorithm>, ConfigError> {
    if list.is_empty() {
        return Err(invalid(
            key,
            "is empty: no token could be verified; remove it for the default [\"RS256\", \"ES256\"]",
        ));
    }
    let mut out = Vec::new();
    for (j, name) in list.iter().enumerate() {
        let k = format!("{key}[{j}]");
        let alg = JwsAlgorithm::from_name(name).ok_or_else(|| {
            let why = if name.eq_ignore_ascii_case("none") {
                "an unsigned token proves nothing".to_owned()
            } else if name.starts_with("HS") {
                "HMAC needs a shared secret; with a public JWKS anyone could sign".to_owned()
            } else {
                format!(
                    "not one of {}",
                    JwsAlgorithm::ALL.map(JwsAlgorithm::name).join(", ")
                )
            };
            invalid(&k, format!("{name:?}: {why}"))
        })?;
        if out.contains(&alg) {
            return Err(invalid(k, format!("{name:?} is listed twice")));
        }
        out.push(alg);
    }
    Ok(out)
}

/// `identity[i].rule[j]`.
fn rule(
    i: usize,
    j: usize,
    r: &RawIdentityRule,
    principals: &[PrincipalConfig],
    cx: &mut Cx,
) -> Result<IdentityRule, ConfigError> {
    let key = |field: &str| format!("identity[{i}].rule[{j}].{field}");
    for (claim, value) in &r.claims {
        if claim.is_empty() || value.chars().any(char::is_control) {
            return Err(invalid(
                format!("identity[{i}].rule[{j}].claims.{claim}"),
                "must be a claim name and the exact string it must have",
            ));
        }
    }
    let template = |k: &str, text: &str| -> Result<Template, ConfigError> {
        let t = Template::parse(text).map_err(|m| invalid(k, m))?;
        match t.literal() {
            Some(l) => check_name(k, l)?,
            None if text.chars().any(char::is_control) => check_name(k, text)?,
            None => {}
        }
        Ok(t)
    };
    let principal = template(&key("principal"), &r.principal)?;
    if principal.literal() == Some(crate::domain::model::SERVICE_ACTOR) {
        return Err(invalid(
            key("principal"),
            "\"prodgate\" is reserved for the service itself",
        ));
    }
    if principal.literal().is_none() {
        // A claim the IdP fills could then name a configured principal and
        // act with that principal's rights.
        if let Some(p) = principals.iter().find(|p| principal.could_produce(&p.name)) {
            cx.warn(
                key("principal"),
                format!(
                    "{:?} could render as {:?}, a [[principal]]: a token with the right claims would act as them; give the template a prefix of its own, like \"oidc:{{sub}}\"",
                    r.principal, p.name
                ),
            );
        }
    }
    let mut groups = Vec::new();
    for (g, text) in r.groups.iter().enumerate() {
        groups.push(template(&format!("{}[{g}]", key("groups")), text)?);
    }
    if let Some(c) = &r.groups_claim
        && c.trim().is_empty()
    {
        return Err(invalid(
            key("groups_claim"),
            "is empty: name an array-of-strings claim, e.g. \"groups\"",
        ));
    }
    Ok(IdentityRule {
        claims: r.claims.clone(),
        principal,
        groups,
        groups_claim: r.groups_claim.clone(),
    })
}

/// The verification keys of one JWKS document (RFC 7517): the usable
/// signing keys, each with its `kid` and type. Encryption keys, key types
/// prodgate cannot verify with and malformed entries are skipped, as a
/// verifier must tolerate keys it does not know.
#[derive(Clone)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it pins one.
    pub alg: Option<JwsAlgorithm>,
    pub key: jsonwebtoken::DecodingKey,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (k.kid.as_deref(), k.kind.name())))
            .finish()
    }
}

impl KeySet {
    /// Each key's `kid` and type, in order: enough to tell a re-read of the
    /// same document from new keys, for the log.
    pub fn kids(&self) -> Vec<(Option<&str>, &'static str)> {
        self.keys
            .iter()
            .map(|k| (k.kid.as_deref(), k.kind.name()))
            .collect()
    }

    /// Parses a JWKS document; refuses one without a single usable key.
    pub fn parse(bytes: &[u8]) -> Result<KeySet, String> {
        use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        let doc: Doc = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
        let mut keys = Vec::new();
        for v in doc.keys.into_iter().take(MAX_KEYS) {
            let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
                continue;
            };
            if matches!(
                jwk.common.public_key_use,
                Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
            ) {
                continue;
            }
            let kind = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => KeyKind::Rsa,
                AlgorithmParameters::EllipticCurve(p) => match p.curve {
                    EllipticCurve::P256 => KeyKind::P256,
                    EllipticCurve::P384 => KeyKind::P384,
                    _ => continue,
                },
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    KeyKind::Ed25519
                }
                // Symmetric ("oct") keys never verify a caller: see JwsAlgorithm.
                _ => continue,
            };
            let alg = match jwk.common.key_algorithm {
                None => None,
                Some(a) => match JwsAlgorithm::from_name(&a.to_string()) {
                    Some(a) if a.key_kind() == kind => Some(a),
                    // A key pinned to an algorithm it cannot do, or to one
                    // prodgate never accepts: unusable.
                    _ => continue,
                },
            };
            let Ok(key) = jsonwebtoken::DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                kind,
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err(
                "holds no usable signing key (RSA, EC P-256/P-384 or Ed25519, not for encryption)"
                    .into(),
            );
        }
        Ok(KeySet { keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_and_say_what_they_could_produce() {
        let t = Template::parse("ci:{repository}@{ref}").unwrap();
        assert_eq!(t.literal(), None);
        assert_eq!(t.claims().collect::<Vec<_>>(), ["repository", "ref"]);
        let claims = |c: &str| match c {
            "repository" => Some("acme/app"),
            "ref" => Some("refs/heads/main"),
            _ => None,
        };
        assert_eq!(t.render(claims).unwrap(), "ci:acme/app@refs/heads/main");
        assert_eq!(
            t.render(|c| (c == "ref").then_some("x")).unwrap_err(),
            "repository"
        );
        assert!(t.could_produce("ci:a@b"));
        assert!(t.could_produce("ci:@"));
        assert!(!t.could_produce("alice"));
        assert!(!t.could_produce("ci:ab"));
        let plain = Template::parse("deployer").unwrap();
        assert_eq!(plain.literal(), Some("deployer"));
        assert!(plain.could_produce("deployer") && !plain.could_produce("deployer2"));
        assert!(Template::parse("{sub}").unwrap().could_produce("alice"));
        for bad in ["ci:{repo", "ci:}x", "{}", "a{b{c}}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_that_can_render_one_name_overlap() {
        let t = |s: &str| Template::parse(s).unwrap();
        let overlap = |a: &str, b: &str| t(a).overlap(&t(b));
        assert_eq!(overlap("ci:{sub}", "ci:{repository}"), Some("ci:x".into()));
        assert_eq!(overlap("ci:{sub}", "ci:{a}@{b}"), Some("ci:x".into()));
        assert_eq!(overlap("{sub}", "sso:{email}"), Some("sso:x".into()));
        assert_eq!(overlap("gh:{sub}", "gl:{sub}"), None);
        assert_eq!(overlap("{a}@github", "{a}@gitlab"), None);
        assert_eq!(overlap("deployer", "deployer"), Some("deployer".into()));
        assert_eq!(overlap("deployer", "ci:{x}"), None);
        assert_eq!(overlap("ci:deployer", "ci:{x}"), Some("ci:deployer".into()));
        // Symmetric.
        assert_eq!(overlap("ci:{x}", "ci:deployer"), Some("ci:deployer".into()));
    }

    #[test]
    fn only_asymmetric_algorithms_exist() {
        for name in ["none", "HS256", "HS512"] {
            assert_eq!(JwsAlgorithm::from_name(name), None);
        }
        assert_eq!(
            JwsAlgorithm::from_name("ES256").unwrap().key_kind(),
            KeyKind::P256
        );
    }

    #[test]
    fn a_jwks_without_a_usable_key_is_refused() {
        assert!(KeySet::parse(b"not json").is_err());
        assert!(KeySet::parse(br#"{"keys": []}"#).is_err());
        // A symmetric key and an encryption key are skipped.
        let e = KeySet::parse(
            br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}, {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}, {"kty": "weird"}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("no usable signing key"), "{e}");
        let ok = KeySet::parse(
            br#"{"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "n": "AQAB", "e": "AQAB"}]}"#,
        )
        .unwrap();
        assert_eq!(ok.keys.len(), 1);
        assert_eq!(ok.keys[0].kid.as_deref(), Some("k1"));
        assert_eq!(ok.keys[0].alg, Some(JwsAlgorithm::RS256));
    }
}
