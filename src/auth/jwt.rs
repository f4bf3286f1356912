//! JWT bearer tokens from `[[identity]]` issuers: telling a JWT from a
//! static token, the checks on a verified token's claims, and the mapping
//! of its claims to a principal through the issuer's rules. Pure: the
//! signature is checked by the caller (with a key from [`super::keys`]),
//! and time is a parameter.

use super::AuthError;
use crate::config::IdentityConfig;
use crate::domain::policy::Principal;
use base64::Engine;
use serde_json::{Map, Value};

/// `nbf` and `iat` may be this far in the future: the issuer's clock may
/// run ahead of ours. `exp` gets none: a token is not honoured past the
/// expiry its issuer gave it.
pub const LEEWAY_SECONDS: i64 = 60;

/// Groups taken from a `groups_claim` at most; an IdP that sends more is
/// cut short rather than making every call carry thousands of strings.
const MAX_CLAIM_GROUPS: usize = 256;

/// A bearer token that has the shape of a JWS: three base64url parts, a
/// JSON header with an `alg`, a JSON object as payload. Nothing in it is
/// trusted yet.
pub struct Unverified<'t> {
    pub token: &'t str,
    pub alg: String,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
}

/// The token as a JWT, or `None` when it is not one (then it can only be a
/// static token).
pub fn parse(token: &str) -> Option<Unverified<'_>> {
    #[derive(serde::Deserialize)]
    struct Header {
        alg: String,
        kid: Option<String>,
    }
    let mut parts = token.split('.');
    let (header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Header = serde_json::from_slice(&b64.decode(header).ok()?).ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&b64.decode(payload).ok()?).ok()?;
    Some(Unverified {
        token,
        alg: header.alg,
        kid: header.kid,
        claims,
    })
}

/// A client-supplied string as messages show it: quoted, and cut short so
/// a huge claim cannot make a huge message.
pub fn shown(s: &str) -> String {
    const MAX: usize = 120;
    match crate::domain::names::cut(s, MAX) {
        None => format!("{s:?}"),
        Some(head) => format!("{head:?}…"),
    }
}

/// A NumericDate claim (RFC 7519: seconds, possibly fractional), `None`
/// when absent; present but not a number is malformed.
fn numeric(
    claims: &Map<String, Value>,
    name: &'static str,
    issuer: &str,
) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or_else(|| AuthError::Malformed {
                message: format!(
                    "the token from {} has a `{name}` that is not a number",
                    shown(issuer)
                ),
            }),
    }
}

/// The time claims, the audience and the lifetime of a token whose
/// signature verified, at `now` (Unix seconds).
pub fn check_claims(
    claims: &Map<String, Value>,
    identity: &IdentityConfig,
    now: i64,
) -> Result<(), AuthError> {
    let issuer = identity.issuer.as_str();
    let exp = numeric(claims, "exp", issuer)?.ok_or_else(|| AuthError::MissingClaim {
        issuer: issuer.to_owned(),
        claim: "exp",
        why: "tokens without an expiry are refused",
    })?;
    if now >= exp {
        return Err(AuthError::Expired {
            issuer: issuer.to_owned(),
            // Saturating: `exp` is the token's, and may be any i64.
            seconds_ago: now.saturating_sub(exp),
        });
    }
    for name in ["nbf", "iat"] {
        if let Some(t) = numeric(claims, name, issuer)?
            && t > now.saturating_add(LEEWAY_SECONDS)
        {
            return Err(AuthError::NotYetValid {
                issuer: issuer.to_owned(),
                claim: name,
                seconds_ahead: t.saturating_sub(now),
            });
        }
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => *a == identity.audience,
        Some(Value::Array(list)) => list
            .iter()
            .any(|a| a.as_str() == Some(identity.audience.as_str())),
        _ => false,
    };
    if !aud_ok {
        return Err(AuthError::Audience {
            issuer: issuer.to_owned(),
            audience: identity.audience.clone(),
        });
    }
    if let Some(max) = identity.max_lifetime {
        let iat = numeric(claims, "iat", issuer)?.ok_or_else(|| AuthError::MissingClaim {
            issuer: issuer.to_owned(),
            claim: "iat",
            why: "max_lifetime is set and needs it",
        })?;
        let lifetime = exp.saturating_sub(iat);
        if lifetime > i64::try_from(max.as_secs()).unwrap_or(i64::MAX) {
            return Err(AuthError::Lifetime {
                issuer: issuer.to_owned(),
                seconds: lifetime,
                max_seconds: max.as_secs(),
            });
        }
    }
    Ok(())
}

/// The principal the first rule whose claims all match maps the token to.
/// Its name and groups come only from the rule (and the claims it names).
pub fn map_to_principal(
    claims: &Map<String, Value>,
    identity: &IdentityConfig,
) -> Result<Principal, AuthError> {
    let issuer = identity.issuer.as_str();
    let string = |name: &str| claims.get(name).and_then(Value::as_str);
    let Some((j, rule)) = identity.rules.iter().enumerate().find(|(_, r)| {
        r.claims
            .iter()
            .all(|(name, want)| string(name) == Some(want.as_str()))
    }) else {
        return Err(AuthError::NoRule {
            issuer: issuer.to_owned(),
        });
    };
    let missing = |claim: &str, field: &str| AuthError::Mapping {
        issuer: issuer.to_owned(),
        message: format!(
            "rule {j} matched, but the token has no string claim {} for its {field}",
            shown(claim)
        ),
    };
    let name = rule
        .principal
        .render(string)
        .map_err(|c| missing(c, "principal"))?;
    if !valid_name(&name) || name == crate::domain::model::SERVICE_ACTOR {
        return Err(AuthError::Mapping {
            issuer: issuer.to_owned(),
            message: format!(
                "rule {j} maps the token to {}, which is not a principal name (1 to 128 characters, no control characters, not \"prodgate\")",
                shown(&name)
            ),
        });
    }
    let mut groups: Vec<String> = Vec::new();
    for g in &rule.groups {
        let g = g.render(string).map_err(|c| missing(c, "groups"))?;
        // A rendered group that could not be configured cannot match anything.
        if valid_name(&g) && !groups.contains(&g) {
            groups.push(g);
        }
    }
    if let Some(claim) = &rule.groups_claim {
        let from_claim: Vec<&str> = match claims.get(claim) {
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => vec![s.as_str()],
            // IdPs leave the claim out for someone in no group.
            _ => Vec::new(),
        };
        for g in from_claim.into_iter().take(MAX_CLAIM_GROUPS) {
            if valid_name(g) && !groups.iter().any(|x| x == g) {
                groups.push(g.to_owned());
            }
        }
    }
    Ok(Principal::new(name, groups))
}

/// What config validation accepts as a principal or group name.
fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    fn identity(extra: &str) -> IdentityConfig {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(
            &jwks,
            r#"{"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]}"#,
        )
        .unwrap();
        let c = Config::parse(&format!(
            r#"
[[identity]]
issuer = "https://issuer.test"
audience = "prodgate"
jwks_file = {:?}
{extra}
[[identity.rule]]
claims = {{ repository_owner = "acme", ref = "refs/heads/main" }}
principal = "ci:{{repository}}"
groups = ["ci", "{{repository_owner}}-ci"]
[[identity.rule]]
claims = {{ email_verified = "yes" }}
principal = "{{email}}"
groups_claim = "groups"
"#,
            jwks.display().to_string()
        ))
        .unwrap();
        c.identities[0].clone()
    }

    fn claims(v: serde_json::Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn only_jwt_shaped_tokens_parse() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let t = format!(
            "{}.{}.sig",
            b64.encode(r#"{"alg":"none","kid":"k"}"#),
            b64.encode(r#"{"iss":"x"}"#)
        );
        let u = parse(&t).unwrap();
        assert_eq!((u.alg.as_str(), u.kid.as_deref()), ("none", Some("k")));
        assert_eq!(u.claims["iss"], "x");
        for not in ["alice-token", "a.b.c", "", "..", &format!("{t}.x")] {
            assert!(parse(not).is_none(), "{not}");
        }
    }

    #[test]
    fn time_audience_and_lifetime_are_checked() {
        let id = identity("max_lifetime = \"1h\"");
        let ok = json!({"exp": NOW + 60, "iat": NOW - 10, "nbf": NOW - 10, "aud": "prodgate"});
        check_claims(&claims(ok.clone()), &id, NOW).unwrap();
        let with = |k: &str, v: Value| {
            let mut c = claims(ok.clone());
            c.insert(k.into(), v);
            check_claims(&c, &id, NOW).unwrap_err().reason()
        };
        assert_eq!(with("exp", json!(NOW)), "expired");
        assert_eq!(with("exp", json!("soon")), "malformed");
        assert_eq!(with("nbf", json!(NOW + 61)), "not_yet_valid");
        assert_eq!(with("iat", json!(NOW + 61)), "not_yet_valid");
        assert_eq!(with("aud", json!(["other", "x"])), "audience");
        assert_eq!(with("iat", json!(NOW - 3600)), "lifetime");
        // Within the leeway, and an audience among several.
        check_claims(
            &claims(json!({"exp": NOW + 60, "iat": NOW + 59, "nbf": NOW + 60, "aud": ["x", "prodgate"]})),
            &id,
            NOW,
        )
        .unwrap();
        let mut no_exp = claims(ok.clone());
        no_exp.remove("exp");
        let e = check_claims(&no_exp, &id, NOW).unwrap_err();
        assert_eq!(e.reason(), "missing_claim");
        assert!(e.to_string().contains("`exp`"), "{e}");
        // Times at the ends of the range say how far, never a wrapped number.
        let mut ancient = claims(ok.clone());
        ancient.insert("exp".into(), json!(i64::MIN));
        let e = check_claims(&ancient, &id, NOW).unwrap_err().to_string();
        assert!(e.contains(&format!("expired {} s ago", i64::MAX)), "{e}");
        let mut future = claims(ok.clone());
        future.insert("nbf".into(), json!(i64::MAX));
        let e = check_claims(&future, &id, -NOW).unwrap_err().to_string();
        assert!(e.contains(&format!("is {} s ahead", i64::MAX)), "{e}");
        let mut no_iat = claims(ok);
        no_iat.remove("iat");
        assert_eq!(
            check_claims(&no_iat, &id, NOW).unwrap_err().reason(),
            "missing_claim"
        );
    }

    #[test]
    fn the_first_matching_rule_maps_the_token() {
        let id = identity("");
        let p = map_to_principal(
            &claims(json!({"repository_owner": "acme", "ref": "refs/heads/main", "repository": "acme/app", "groups": ["admins"]})),
            &id,
        )
        .unwrap();
        assert_eq!(p.name, "ci:acme/app");
        // groups_claim belongs to the other rule.
        assert_eq!(p.groups, ["ci", "acme-ci"]);

        let p = map_to_principal(
            &claims(json!({"email_verified": "yes", "email": "ann@acme.test", "groups": ["rm", 7, "rm", "qa"]})),
            &id,
        )
        .unwrap();
        assert_eq!(
            (p.name.as_str(), p.groups),
            ("ann@acme.test", vec!["rm".to_string(), "qa".to_string()])
        );

        let e = map_to_principal(
            &claims(json!({"repository_owner": "acme", "ref": "refs/heads/dev", "repository": "acme/app"})),
            &id,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "token from \"https://issuer.test\" matched no rule"
        );
        // A non-string claim never matches a rule's string.
        let e = map_to_principal(&claims(json!({"email_verified": true, "email": "x"})), &id)
            .unwrap_err();
        assert_eq!(e.reason(), "no_rule");
        let e = map_to_principal(
            &claims(json!({"repository_owner": "acme", "ref": "refs/heads/main"})),
            &id,
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"repository\""), "{e}");
        let e = map_to_principal(
            &claims(json!({"email_verified": "yes", "email": "prodgate"})),
            &id,
        )
        .unwrap_err();
        assert_eq!(e.reason(), "mapping");
    }
}
