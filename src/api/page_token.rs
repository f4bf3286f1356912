//! Opaque, checked page tokens: a version, which listing they belong to, a
//! fingerprint of its filters, the last key served, and a checksum. A token
//! that was altered, truncated or used with other filters is refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const LEN: usize = 1 + 1 + 8 + 8 + 4;

/// Which listing a token continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Promotions = 1,
    History = 2,
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

fn checksum(body: &[u8]) -> [u8; 4] {
    let d = Sha256::digest(body);
    [d[0], d[1], d[2], d[3]]
}

pub fn encode(kind: Kind, fingerprint: u64, after: u64) -> String {
    let mut b = Vec::with_capacity(LEN);
    b.push(VERSION);
    b.push(kind as u8);
    b.extend_from_slice(&fingerprint.to_be_bytes());
    b.extend_from_slice(&after.to_be_bytes());
    let c = checksum(&b);
    b.extend_from_slice(&c);
    URL_SAFE_NO_PAD.encode(b)
}

/// The key to continue after, `None` for an empty token (the first page).
pub fn decode(token: &str, kind: Kind, fingerprint: u64) -> Result<Option<u64>, String> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || "is not a page token this server issued; start again without one".to_owned();
    if token.len() > 64 {
        return Err(invalid());
    }
    let b = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    if b.len() != LEN || b[0] != VERSION || checksum(&b[..LEN - 4]) != b[LEN - 4..] {
        return Err(invalid());
    }
    if b[1] != kind as u8 {
        return Err("belongs to another listing".to_owned());
    }
    let fp = u64::from_be_bytes(b[2..10].try_into().map_err(|_| invalid())?);
    if fp != fingerprint {
        return Err(
            "was issued for other filters; repeat the filters of the first page".to_owned(),
        );
    }
    Ok(Some(u64::from_be_bytes(
        b[10..18].try_into().map_err(|_| invalid())?,
    )))
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
}
