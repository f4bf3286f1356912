//! The configuration file on arbitrary UTF-8: it parses or it is refused with
//! an error, and what is accepted holds the promises `Config` makes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prodgate::config::{Config, Files};
use prodgate::domain::policy::Approver;
use prodgate::domain::names::{Repository, validate_tag};
use std::collections::HashSet;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Files the text names are rarely there: check the rest of it anyway,
    // and run no credential helper.
    let Ok(loaded) = Config::parse_with(text, Files::WarnIfAbsent) else {
        return;
    };
    let c = loaded.config;
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
        assert!(e.apply_deadline.is_none_or(|d| !d.is_zero()));
        // Enough distinct principals can approve.
        let can_approve = c
            .principals
            .iter()
            .filter(|p| {
                e.approvers.iter().any(|a| match a {
                    Approver::Principal(n) => *n == p.name,
                    Approver::Group(g) => p.groups.contains(g),
                })
            })
            .count();
        assert!(e.required_approvals as usize <= can_approve);
        if let Some(req) = &e.requires {
            assert_ne!(req, &e.name);
            assert!(c.environment(req).is_some());
        }
        assert_eq!(c.environment(&e.name).map(|x| &x.tag), Some(&e.tag));
    }
});
