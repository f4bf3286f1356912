//! The name grammar on arbitrary UTF-8: repositories, tags, digests, sources,
//! image references.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prodgate::domain::names::{
    Reference, Repository, Source, split_image, validate_digest, validate_tag,
};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(r) = Repository::parse(s) {
        // What parses re-displays to the same string, and parses again.
        assert_eq!(r.to_string(), s);
        assert_eq!(format!("{}/{}", r.host(), r.path()), s);
        assert!(!r.host().is_empty() && !r.path().is_empty());
        assert!(s.len() <= 255);
        assert_eq!(Repository::parse(&r.to_string()).as_ref(), Ok(&r));
    }

    let tag = validate_tag(s).is_ok();
    let digest = validate_digest(s).is_ok();
    if tag {
        assert!(!s.is_empty() && s.len() <= 128 && s.is_ascii());
    }
    if digest {
        assert_eq!(s.len(), "sha256:".len() + 64);
    }
    // A digest has a ':' and a tag cannot, so nothing is both.
    assert!(!(tag && digest), "{s:?} is both a tag and a digest");

    match Source::parse(s) {
        Ok(Source::Tag(t)) => {
            assert!(tag);
            assert_eq!(t, s);
        }
        Ok(Source::Digest(d)) => {
            assert!(digest);
            assert_eq!(d, s);
        }
        Err(_) => assert!(!tag && !digest, "{s:?} validates but does not parse"),
    }

    // An image reference is cut without losing or adding anything.
    let (name, reference) = split_image(s);
    let joined = match reference {
        Some(Reference::Tag(t)) => format!("{name}:{t}"),
        Some(Reference::Digest(d)) => format!("{name}@{d}"),
        None => name.to_owned(),
    };
    assert_eq!(joined, s);
    assert!(!name.contains('@'), "{s:?}: {name:?}");
});
