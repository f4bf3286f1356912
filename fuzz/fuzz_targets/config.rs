//! The configuration file on arbitrary UTF-8: it parses or it is refused with
//! an error, and what is accepted holds the promises `Config` makes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prodgate::config::Config;
use prodgate::domain::names::{Repository, validate_tag};
use std::collections::HashSet;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = Config::parse(text) else {
        return;
    };
    assert!(c.listen.parse::<std::net::SocketAddr>().is_ok());
    assert!(!c.registry_timeout.is_zero());
    assert!(!c.expiry_sweep_interval.is_zero());

    let mut hosts = HashSet::new();
    for r in &c.registries {
        assert!(hosts.insert(&r.host), "registry {:?} twice", r.host);
        assert!(Repository::parse(&format!("{}/x", r.host)).is_ok());
        assert!(c.registry(&r.host).is_some());
    }
    let mut principals = HashSet::new();
    for p in &c.principals {
        assert!(principals.insert(&p.name), "principal {:?} twice", p.name);
        assert_ne!(p.name, "prodgate");
    }
    let mut names = HashSet::new();
    let mut tags = HashSet::new();
    for e in &c.environments {
        assert!(names.insert(&e.name), "environment {:?} twice", e.name);
        assert!(tags.insert(&e.tag), "tag {:?} twice", e.tag);
        assert!(validate_tag(&e.tag).is_ok());
        assert!(!e.approval_ttl.is_zero());
        assert!(e.required_approvals == 0 || !e.approvers.is_empty());
        if let Some(req) = &e.requires {
            assert_ne!(req, &e.name);
            assert!(c.environment(req).is_some());
        }
        assert_eq!(c.environment(&e.name).map(|x| &x.tag), Some(&e.tag));
    }
});
