//! Page tokens: arbitrary strings never panic the decoder, and every token
//! the server issues decodes back to what it was issued for, and only that
//! (numeric keys for promotions and history, check names for checks).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prodgate::api::page_token::{Kind, decode, decode_name, encode, encode_name, fingerprint};

const KINDS: [Kind; 3] = [Kind::Promotions, Kind::History, Kind::Checks];

fuzz_target!(|data: &[u8]| {
    // (fingerprint, after) from the first 16 bytes, zero-padded.
    let mut head = [0u8; 16];
    let n = data.len().min(16);
    head[..n].copy_from_slice(&data[..n]);
    let fp = u64::from_be_bytes(head[..8].try_into().unwrap());
    let after = u64::from_be_bytes(head[8..].try_into().unwrap());

    if let Ok(s) = std::str::from_utf8(data) {
        for kind in KINDS {
            for f in [fp, fingerprint(&[s]), fingerprint(&[])] {
                if let Ok(Some(key)) = decode(s, kind, f) {
                    // Only a token this server issued decodes, and it has
                    // one spelling.
                    assert_eq!(encode(kind, f, key), s);
                }
                if let Ok(Some(name)) = decode_name(s, kind, f) {
                    assert!(!name.is_empty() && name.len() <= 64);
                    assert_eq!(encode_name(kind, f, &name), s);
                }
            }
        }
        assert_eq!(decode("", Kind::History, fp), Ok(None));
    }

    for kind in KINDS {
        let other = match kind {
            Kind::Promotions => Kind::History,
            Kind::History | Kind::Checks => Kind::Promotions,
        };
        let t = encode(kind, fp, after);
        assert!(!t.is_empty() && t.len() <= 64);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(decode(&t, kind, fp), Ok(Some(after)));
        assert!(
            decode(&t, other, fp).is_err(),
            "decoded for another listing"
        );
        assert!(
            decode(&t, kind, fp ^ 1).is_err(),
            "decoded for other filters"
        );
        // Truncated or extended, it is refused.
        assert!(decode(&t[..t.len() - 1], kind, fp).is_err());
        assert!(decode(&format!("{t}A"), kind, fp).is_err());
    }

    // A check name from the bytes after the first 16 (names have at most
    // 63 bytes; any non-empty UTF-8 up to 64 round-trips).
    let rest = &data[n..];
    if let Ok(name) = std::str::from_utf8(&rest[..rest.len().min(64)])
        && !name.is_empty()
    {
        let t = encode_name(Kind::Checks, fp, name);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(decode_name(&t, Kind::Checks, fp), Ok(Some(name.to_owned())));
        assert!(decode_name(&t, Kind::History, fp).is_err());
        assert!(decode_name(&t, Kind::Checks, fp ^ 1).is_err());
        assert!(decode_name(&t[..t.len() - 1], Kind::Checks, fp).is_err());
        assert!(decode_name(&format!("{t}A"), Kind::Checks, fp).is_err());
    }
});
