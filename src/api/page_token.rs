//! Opaque, checked page tokens: a version, which listing they belong to, a
//! fingerprint of its filters, the last key served, and a checksum. A token
//! that was altered, truncated or used with other filters is refused.
//!
//! The last key is a number (an id or a sequence: 8 bytes) or, for the
//! checks of a digest, a check name; the checksum is no secret, so a
//! decoded key is only ever a place to continue from.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
/// Version, kind, fingerprint; the key follows, then the checksum.
const HEAD: usize = 1 + 1 + 8;
const CHECKSUM: usize = 4;
/// Longest key a token carries (check names have at most 63 bytes).
const MAX_KEY: usize = 64;
/// Longest token that can hold a [`MAX_KEY`] key, in base64.
const MAX_TOKEN: usize = (HEAD + MAX_KEY + CHECKSUM).div_ceil(3) * 4;

/// Which listing a token continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Promotions = 1,
    History = 2,
    Checks = 3,
}

/// Fingerprint of a listing's filters, so a token cannot continue another query.
pub fn fingerprint(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM] {
    let d = Sha256::digest(body);
    [d[0], d[1], d[2], d[3]]
}

fn encode_key(kind: Kind, fingerprint: u64, key: &[u8]) -> String {
    let mut b = Vec::with_capacity(HEAD + key.len() + CHECKSUM);
    b.push(VERSION);
    b.push(kind as u8);
    b.extend_from_slice(&fingerprint.to_be_bytes());
    b.extend_from_slice(key);
    let c = checksum(&b);
    b.extend_from_slice(&c);
    URL_SAFE_NO_PAD.encode(b)
}

fn invalid() -> String {
    "is not a page token this server issued; start again without one".to_owned()
}

/// The key bytes to continue after, `None` for an empty token (the first page).
fn decode_key(token: &str, kind: Kind, fingerprint: u64) -> Result<Option<Vec<u8>>, String> {
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() > MAX_TOKEN {
        return Err(invalid());
    }
    let b = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let Some(body_len) = b.len().checked_sub(CHECKSUM).filter(|n| *n >= HEAD) else {
        return Err(invalid());
    };
    if b[0] != VERSION || checksum(&b[..body_len]) != b[body_len..] {
        return Err(invalid());
    }
    if b[1] != kind as u8 {
        return Err("belongs to another listing".to_owned());
    }
    let fp = u64::from_be_bytes(b[2..HEAD].try_into().map_err(|_| invalid())?);
    if fp != fingerprint {
        return Err(
            "was issued for other filters; repeat the filters of the first page".to_owned(),
        );
    }
    Ok(Some(b[HEAD..body_len].to_vec()))
}

pub fn encode(kind: Kind, fingerprint: u64, after: u64) -> String {
    encode_key(kind, fingerprint, &after.to_be_bytes())
}

/// The id or sequence to continue after, `None` for an empty token.
pub fn decode(token: &str, kind: Kind, fingerprint: u64) -> Result<Option<u64>, String> {
    decode_key(token, kind, fingerprint)?
        .map(|k| <[u8; 8]>::try_from(k.as_slice()).map(u64::from_be_bytes))
        .transpose()
        .map_err(|_| invalid())
}

/// A token continuing after the name `after` (at most [`MAX_KEY`] bytes:
/// longer names are never issued, so the caller's names fit).
pub fn encode_name(kind: Kind, fingerprint: u64, after: &str) -> String {
    encode_key(kind, fingerprint, after.as_bytes())
}

/// The name to continue after, `None` for an empty token.
pub fn decode_name(token: &str, kind: Kind, fingerprint: u64) -> Result<Option<String>, String> {
    decode_key(token, kind, fingerprint)?
        .map(|k| {
            if k.is_empty() || k.len() > MAX_KEY {
                return Err(invalid());
            }
            String::from_utf8(k).map_err(|_| invalid())
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let fp = fingerprint(&["r.io/app", ""]);
        let t = encode(Kind::History, fp, 42);
        assert_eq!(decode(&t, Kind::History, fp), Ok(Some(42)));
        assert_eq!(decode("", Kind::History, fp), Ok(None));
        assert!(decode(&t, Kind::Promotions, fp).is_err());
        assert!(decode(&t, Kind::History, fingerprint(&["other", ""])).is_err());
        let mut tampered = t.clone().into_bytes();
        tampered[12] = if tampered[12] == b'A' { b'B' } else { b'A' };
        assert!(decode(std::str::from_utf8(&tampered).unwrap(), Kind::History, fp).is_err());
        for junk in ["x", "!!!", &"A".repeat(500), &t[..t.len() - 2]] {
            assert!(decode(junk, Kind::History, fp).is_err(), "{junk}");
        }
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
    }

    #[test]
    fn numeric_tokens_keep_their_layout() {
        // Tokens issued before names were possible still decode.
        let fp = fingerprint(&["r.io/app"]);
        let t = encode(Kind::Promotions, fp, 7);
        assert_eq!(t.len(), 30);
        assert_eq!(decode(&t, Kind::Promotions, fp), Ok(Some(7)));
    }

    #[test]
    fn name_tokens_round_trip_and_refuse_what_they_must() {
        let fp = fingerprint(&["r.io/app", "sha256:aa"]);
        let longest = "a".repeat(63);
        for name in ["e2e", "a.b-c_d", longest.as_str()] {
            let t = encode_name(Kind::Checks, fp, name);
            assert_eq!(decode_name(&t, Kind::Checks, fp), Ok(Some(name.to_owned())));
        }
        assert_eq!(decode_name("", Kind::Checks, fp), Ok(None));
        let t = encode_name(Kind::Checks, fp, "e2e");
        assert!(decode_name(&t, Kind::History, fp).is_err());
        assert!(decode_name(&t, Kind::Checks, fingerprint(&["r.io/app", "x"])).is_err());
        // A numeric token is no name token, nor the other way round.
        assert!(decode_name(&encode(Kind::History, fp, 3), Kind::Checks, fp).is_err());
        assert!(decode(&t, Kind::Checks, fp).is_err());
        // Empty, over-long and non-UTF-8 keys are never issued.
        for key in [&b""[..], &[0xff, 0xfe][..], "a".repeat(65).as_bytes()] {
            let forged = encode_key(Kind::Checks, fp, key);
            assert!(decode_name(&forged, Kind::Checks, fp).is_err(), "{key:?}");
        }
        let mut tampered = t.clone().into_bytes();
        tampered[14] = if tampered[14] == b'A' { b'B' } else { b'A' };
        assert!(decode_name(std::str::from_utf8(&tampered).unwrap(), Kind::Checks, fp).is_err());
        for junk in ["x", "!!!", &"A".repeat(500), &t[..t.len() - 2]] {
            assert!(decode_name(junk, Kind::Checks, fp).is_err(), "{junk}");
        }
    }
}
