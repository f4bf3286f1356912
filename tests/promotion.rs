//! The core contract end to end: a real `prodgate serve` process in front of
//! a real CNCF Distribution registry, driven over gRPC.

mod support;

use prodgate::pb::{
    self, ApproveRequest, AuditAction, CancelRequest, GetPromotionRequest, HistoryRequest,
    ListPromotionsRequest, PromotionState, RejectRequest, RequestPromotionRequest,
    VerifyAuditLogRequest,
};
use sha2::{Digest, Sha256};
use support::server::Client;
use support::{World, approve, expected_hash, history, request_to};
use tonic::Code;

fn state(p: &pb::Promotion) -> PromotionState {
    PromotionState::try_from(p.state).expect("known state")
}

/// Every entry about promotions (the log also opens with the server's
/// POLICY_CHANGED entry, which `tests/policy_versions.rs` covers).
async fn all_entries(c: &mut Client) -> Vec<pb::AuditEntry> {
    let mut entries = history(c, HistoryRequest::default()).await;
    entries.retain(|e| e.action != AuditAction::PolicyChanged as i32);
    entries
}

fn actions(entries: &[pb::AuditEntry]) -> Vec<AuditAction> {
    entries
        .iter()
        .map(|e| AuditAction::try_from(e.action).expect("known action"))
        .collect()
}

#[tokio::test]
async fn request_approve_promotes_by_copying_the_manifest() {
    let w = World::start().await;
    let digest = w
        .registry
        .push_image("team/app", Some("staging"), 64 * 1024, 1)
        .await;
    let repo = w.repo("team/app");
    let mut alice = w.server.client("alice").await;
    let p = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    assert_eq!(state(&p), PromotionState::PendingApproval);
    assert_eq!(p.digest, digest);
    assert_eq!(p.requested_by, "alice");
    assert_eq!(p.target_tag, "production");
    assert_eq!(p.required_approvals, 1);
    assert!(p.expires_at.is_some());
    assert_eq!(w.registry.tag_digest("team/app", "production").await, None);

    let mut bob = w.server.client("bob").await;
    let done = bob
        .approve(approve(&p.id))
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(state(&done), PromotionState::Promoted, "{done:?}");
    assert_eq!(done.approvals.len(), 1);
    assert_eq!(done.approvals[0].approver, "bob");
    assert_eq!(done.previous_digest, "");
    assert!(done.promoted_at.is_some());
    assert_eq!(
        w.registry
            .tag_digest("team/app", "production")
            .await
            .as_deref(),
        Some(digest.as_str())
    );

    let got = alice
        .get_promotion(GetPromotionRequest {
            promotion_id: p.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got, done);

    let entries = all_entries(&mut alice).await;
    assert_eq!(
        actions(&entries),
        [
            AuditAction::Requested,
            AuditAction::Approved,
            AuditAction::Applied
        ]
    );
    assert_eq!(entries[0].actor, "alice");
    assert_eq!(entries[1].actor, "bob");
    assert_eq!(entries[2].actor, "prodgate");
    assert!(
        entries
            .iter()
            .all(|e| e.digest == digest && e.promotion_id == p.id)
    );
}

#[tokio::test]
async fn the_digest_is_pinned_when_staging_moves() {
    let w = World::start().await;
    let first = w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let repo = w.repo("app");
    let mut alice = w.server.client("alice").await;
    let p = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    let second = w.registry.push_image("app", Some("staging"), 1024, 2).await;
    assert_ne!(first, second);
    let done = w
        .server
        .client("carol")
        .await
        .approve(approve(&p.id))
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(state(&done), PromotionState::Promoted);
    assert_eq!(done.digest, first);
    assert_eq!(
        w.registry.tag_digest("app", "production").await.as_deref(),
        Some(first.as_str())
    );
}

#[tokio::test]
async fn production_requires_what_staging_carries() {
    let w = World::start().await;
    let staged = w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let other = w.registry.push_image("app", Some("dev"), 1024, 2).await;
    let repo = w.repo("app");
    let mut alice = w.server.client("alice").await;
    for source in ["dev", other.as_str()] {
        let e = alice
            .request_promotion(request_to(&repo, source, "production"))
            .await
            .expect_err("not staged");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("staging"), "{}", e.message());
    }
    // By digest works when staging carries it.
    let p = alice
        .request_promotion(request_to(&repo, &staged, "production"))
        .await
        .expect("staged digest")
        .into_inner();
    assert_eq!(p.digest, staged);
    // No staging tag at all.
    w.registry.push_image("lonely", Some("dev"), 1024, 3).await;
    let e = alice
        .request_promotion(request_to(&w.repo("lonely"), "dev", "production"))
        .await
        .expect_err("no staging tag");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("does not exist"), "{}", e.message());
    // Only the one accepted request was recorded.
    assert_eq!(all_entries(&mut alice).await.len(), 1);
}

#[tokio::test]
async fn no_approval_environments_apply_at_once() {
    let w = World::start().await;
    let digest = w.registry.push_image("app", Some("dev"), 1024, 1).await;
    let mut alice = w.server.client("alice").await;
    let p = alice
        .request_promotion(request_to(&w.repo("app"), "dev", "staging"))
        .await
        .expect("request")
        .into_inner();
    assert_eq!(state(&p), PromotionState::Promoted, "{p:?}");
    assert_eq!(
        w.registry.tag_digest("app", "staging").await.as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(
        actions(&all_entries(&mut alice).await),
        [AuditAction::Requested, AuditAction::Applied]
    );
}

#[tokio::test]
async fn approvers_are_designated_and_never_the_requester_alone() {
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let repo = w.repo("app");
    // rita is a release manager herself.
    let mut rita = w.server.client("rita").await;
    let p = rita
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    let e = rita.approve(approve(&p.id)).await.expect_err("self");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("self-approval"), "{}", e.message());
    for outsider in ["mallory", "alice"] {
        let e = w
            .server
            .client(outsider)
            .await
            .approve(approve(&p.id))
            .await
            .expect_err("not an approver");
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(
            e.message().contains("not a designated approver"),
            "{}",
            e.message()
        );
    }
    let e = w
        .server
        .client("mallory")
        .await
        .reject(RejectRequest {
            promotion_id: p.id.clone(),
            comment: String::new(),
        })
        .await
        .expect_err("reject needs an approver");
    assert_eq!(e.code(), Code::PermissionDenied);
    // Refusals wrote nothing and left it pending.
    assert_eq!(all_entries(&mut rita).await.len(), 1);
    // Where the environment allows it, the requester may approve.
    w.registry.push_image("solo", Some("latest"), 1024, 2).await;
    let mut bob = w.server.client("bob").await;
    let s = bob
        .request_promotion(request_to(&w.repo("solo"), "latest", "selfok"))
        .await
        .expect("request")
        .into_inner();
    let s = bob
        .approve(approve(&s.id))
        .await
        .expect("self ok")
        .into_inner();
    assert_eq!(state(&s), PromotionState::Promoted);
}

#[tokio::test]
async fn unauthenticated_calls_are_refused_but_health_is_open() {
    let w = World::start().await;
    let repo = w.repo("app");
    let mut anon = w.server.anonymous().await;
    let e = anon
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = anon
        .verify_audit_log(VerifyAuditLogRequest {})
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut wrong = w.server.client_with_token("guess").await;
    let e = wrong
        .list_promotions(ListPromotionsRequest::default())
        .await
        .expect_err("bad token");
    assert_eq!(e.code(), Code::Unauthenticated);

    let mut health = tonic_health::pb::health_client::HealthClient::new(w.server.channel().await);
    for service in ["", "prodgate.v1.PromotionService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
}

#[tokio::test]
async fn two_of_n_approvals() {
    let w = World::start().await;
    let digest = w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let mut alice = w.server.client("alice").await;
    let p = alice
        .request_promotion(request_to(&w.repo("app"), "staging", "prod2"))
        .await
        .expect("request")
        .into_inner();
    assert_eq!(p.required_approvals, 2);
    let mut bob = w.server.client("bob").await;
    let one = bob.approve(approve(&p.id)).await.expect("bob").into_inner();
    assert_eq!(state(&one), PromotionState::PendingApproval);
    // The same approver twice counts once and is not an error.
    let again = bob
        .approve(approve(&p.id))
        .await
        .expect("bob again")
        .into_inner();
    assert_eq!(state(&again), PromotionState::PendingApproval);
    assert_eq!(again.approvals.len(), 1);
    assert_eq!(w.registry.tag_digest("app", "prod2").await, None);
    let two = w
        .server
        .client("carol")
        .await
        .approve(approve(&p.id))
        .await
        .expect("carol")
        .into_inner();
    assert_eq!(state(&two), PromotionState::Promoted);
    let approvers: Vec<&str> = two.approvals.iter().map(|a| a.approver.as_str()).collect();
    assert_eq!(approvers, ["bob", "carol"]);
    assert_eq!(
        w.registry.tag_digest("app", "prod2").await.as_deref(),
        Some(digest.as_str())
    );
    let e = w
        .server
        .client("dave")
        .await
        .approve(approve(&p.id))
        .await
        .expect_err("already promoted");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        actions(&all_entries(&mut alice).await),
        [
            AuditAction::Requested,
            AuditAction::Approved,
            AuditAction::Approved,
            AuditAction::Applied
        ]
    );
}

#[tokio::test]
async fn concurrent_approvals_count_exactly_the_required_number() {
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let p = w
        .server
        .client("alice")
        .await
        .request_promotion(request_to(&w.repo("app"), "staging", "prod2"))
        .await
        .expect("request")
        .into_inner();
    let mut calls = Vec::new();
    for who in ["bob", "carol", "dave", "erin"] {
        let mut c = w.server.client(who).await;
        let id = p.id.clone();
        calls.push(tokio::spawn(async move { c.approve(approve(&id)).await }));
    }
    let mut ok = 0;
    for call in calls {
        match call.await.expect("join") {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}"),
        }
    }
    assert_eq!(ok, 2);
    let mut alice = w.server.client("alice").await;
    let final_state = alice
        .get_promotion(GetPromotionRequest {
            promotion_id: p.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(final_state.approvals.len(), 2);
    let acts = actions(&all_entries(&mut alice).await);
    assert_eq!(
        acts.iter().filter(|a| **a == AuditAction::Approved).count(),
        2
    );
    assert_eq!(
        acts.iter().filter(|a| **a == AuditAction::Applied).count(),
        1
    );
}

#[tokio::test]
async fn reject_and_cancel_end_a_pending_promotion() {
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let repo = w.repo("app");
    let mut alice = w.server.client("alice").await;
    let mut bob = w.server.client("bob").await;

    let p = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    let r = bob
        .reject(RejectRequest {
            promotion_id: p.id.clone(),
            comment: "not during the freeze".into(),
        })
        .await
        .expect("reject")
        .into_inner();
    assert_eq!(state(&r), PromotionState::Rejected);
    for e in [
        bob.approve(approve(&p.id)).await.expect_err("terminal"),
        alice
            .cancel(CancelRequest {
                promotion_id: p.id.clone(),
                comment: String::new(),
            })
            .await
            .expect_err("terminal"),
    ] {
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("REJECTED"), "{}", e.message());
    }

    let q = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    let e = w
        .server
        .client("mallory")
        .await
        .cancel(CancelRequest {
            promotion_id: q.id.clone(),
            comment: String::new(),
        })
        .await
        .expect_err("stranger");
    assert_eq!(e.code(), Code::PermissionDenied);
    let c = alice
        .cancel(CancelRequest {
            promotion_id: q.id.clone(),
            comment: "wrong build".into(),
        })
        .await
        .expect("requester cancels")
        .into_inner();
    assert_eq!(state(&c), PromotionState::Cancelled);
    // An approver may cancel too.
    let z = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    let c = bob
        .cancel(CancelRequest {
            promotion_id: z.id.clone(),
            comment: String::new(),
        })
        .await
        .expect("approver cancels")
        .into_inner();
    assert_eq!(state(&c), PromotionState::Cancelled);

    assert_eq!(w.registry.tag_digest("app", "production").await, None);
    let entries = all_entries(&mut alice).await;
    assert_eq!(
        actions(&entries),
        [
            AuditAction::Requested,
            AuditAction::Rejected,
            AuditAction::Requested,
            AuditAction::Cancelled,
            AuditAction::Requested,
            AuditAction::Cancelled
        ]
    );
    assert_eq!(entries[1].comment, "not during the freeze");
    let e = bob
        .get_promotion(GetPromotionRequest {
            promotion_id: "999".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn pending_promotions_expire() {
    let w = World::start().await;
    w.registry.push_image("app", Some("v1"), 1024, 1).await;
    let mut alice = w.server.client("alice").await;
    let p = alice
        .request_promotion(request_to(&w.repo("app"), "v1", "shortlived"))
        .await
        .expect("request")
        .into_inner();
    let created = p.created_at.expect("created_at");
    let expires = p.expires_at.expect("expires_at");
    assert_eq!(expires.seconds - created.seconds, 1);
    // Wait for the state the sweep writes, polling with a bound; the TTL is
    // real time in a real process, so there is nothing to fast-forward.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let expired = loop {
        let got = alice
            .list_promotions(ListPromotionsRequest {
                state: PromotionState::Expired as i32,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        if let Some(e) = got.promotions.into_iter().find(|x| x.id == p.id) {
            break e;
        }
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(state(&expired), PromotionState::Expired);
    let e = w
        .server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect_err("expired");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let entries = all_entries(&mut alice).await;
    assert_eq!(
        actions(&entries),
        [AuditAction::Requested, AuditAction::Expired]
    );
    assert_eq!(entries[1].actor, "prodgate");
    assert_eq!(w.registry.tag_digest("app", "shortlived").await, None);
}

#[tokio::test]
async fn request_ids_make_retries_idempotent() {
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let mut alice = w.server.client("alice").await;
    let mut r = request_to(&w.repo("app"), "staging", "production");
    r.request_id = "deploy-42".into();
    let first = alice
        .request_promotion(r.clone())
        .await
        .expect("first")
        .into_inner();
    // staging moves; the retry still answers the original.
    w.registry.push_image("app", Some("staging"), 1024, 2).await;
    let again = alice
        .request_promotion(r.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(all_entries(&mut alice).await.len(), 1);

    let mut changed = r.clone();
    changed.reason = "something else".into();
    let e = alice
        .request_promotion(changed)
        .await
        .expect_err("reused key");
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains(&first.id), "{}", e.message());

    // Keys are per principal: rita's deploy-42 is her own.
    r.source = "staging".into();
    let hers = w
        .server
        .client("rita")
        .await
        .request_promotion(r)
        .await
        .expect("other principal")
        .into_inner();
    assert_ne!(hers.id, first.id);
    assert_eq!(all_entries(&mut alice).await.len(), 2);
}

#[tokio::test]
async fn multi_arch_index_bytes_are_preserved() {
    let w = World::start().await;
    let amd = w.registry.push_image("multi", None, 2048, 1).await;
    let arm = w.registry.push_image("multi", None, 2048, 2).await;
    let index = w
        .registry
        .push_index("multi", Some("staging"), &[(amd, "amd64"), (arm, "arm64")])
        .await;
    let (ct, bytes) = w.registry.manifest("multi", &index).await.expect("index");
    let mut alice = w.server.client("alice").await;
    let p = alice
        .request_promotion(request_to(&w.repo("multi"), "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    assert_eq!(p.digest, index);
    let done = w
        .server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(state(&done), PromotionState::Promoted, "{done:?}");
    let (prod_ct, prod_bytes) = w
        .registry
        .manifest("multi", "production")
        .await
        .expect("production tag");
    assert_eq!(prod_ct, ct);
    assert_eq!(prod_bytes, bytes);
    assert_eq!(
        hex::encode(Sha256::digest(&prod_bytes)),
        index["sha256:".len()..]
    );
}

#[tokio::test]
async fn previous_digest_records_what_the_tag_carried() {
    let w = World::start().await;
    let repo = w.repo("app");
    let mut alice = w.server.client("alice").await;
    let mut bob = w.server.client("bob").await;
    let mut digests = Vec::new();
    for seed in [1, 2] {
        let d = w
            .registry
            .push_image("app", Some("staging"), 1024, seed)
            .await;
        let p = alice
            .request_promotion(request_to(&repo, "staging", "production"))
            .await
            .expect("request")
            .into_inner();
        let done = bob
            .approve(approve(&p.id))
            .await
            .expect("approve")
            .into_inner();
        assert_eq!(state(&done), PromotionState::Promoted);
        digests.push((d, done));
    }
    assert_eq!(digests[0].1.previous_digest, "");
    assert_eq!(digests[1].1.previous_digest, digests[0].0);
    let applied: Vec<_> = all_entries(&mut alice)
        .await
        .into_iter()
        .filter(|e| e.action == AuditAction::Applied as i32)
        .collect();
    assert_eq!(applied.len(), 2);
    assert_eq!(applied[1].previous_digest, digests[0].0);
    assert_eq!(applied[1].digest, digests[1].0);
}

#[tokio::test]
async fn the_audit_log_is_a_verifiable_hash_chain() {
    let w = World::start().await;
    let mut alice = w.server.client("alice").await;
    // A new server's log holds the policy it started with.
    let fresh = alice
        .verify_audit_log(VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(fresh.ok);
    assert_eq!(fresh.entries_checked, 1);

    w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let repo = w.repo("app");
    let p = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    w.server
        .client("bob")
        .await
        .approve(approve(&p.id))
        .await
        .expect("approve");
    // The next image: production already carries the first.
    w.registry.push_image("app", Some("staging"), 1024, 2).await;
    let q = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    alice
        .cancel(CancelRequest {
            promotion_id: q.id,
            comment: "ünïcödé comment".into(),
        })
        .await
        .expect("cancel");

    let entries = history(&mut alice, HistoryRequest::default()).await;
    assert_eq!(entries.len(), 6);
    assert_eq!(entries[0].action, AuditAction::PolicyChanged as i32);
    assert_eq!(entries[0].hash, fresh.head_hash);
    let mut prev = "0".repeat(64);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1);
        assert_eq!(e.prev_hash, prev, "entry {}", e.sequence);
        assert_eq!(e.hash, expected_hash(e), "entry {}", e.sequence);
        prev = e.hash.clone();
    }
    let v = alice
        .verify_audit_log(VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.entries_checked, 6);
    assert_eq!(v.first_bad_sequence, 0);
    assert_eq!(v.head_hash, prev);

    // Everything acknowledged survives a SIGKILL.
    let mut server = w.server;
    server.kill_and_restart();
    let mut alice = server.client("alice").await;
    assert_eq!(
        history(&mut alice, HistoryRequest::default()).await,
        entries
    );
}

#[tokio::test]
async fn listings_paginate_with_checked_tokens() {
    let w = World::start().await;
    w.registry.push_image("app", Some("dev"), 1024, 1).await;
    w.registry.push_image("other", Some("dev"), 1024, 2).await;
    let mut alice = w.server.client("alice").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        // A new image each time: a request for what staging already
        // carries would change nothing and is refused.
        w.registry
            .push_image("app", Some("dev"), 1024, 10 + i)
            .await;
        let p = alice
            .request_promotion(request_to(&w.repo("app"), "dev", "staging"))
            .await
            .expect("request")
            .into_inner();
        ids.push(p.id);
    }
    alice
        .request_promotion(request_to(&w.repo("other"), "dev", "staging"))
        .await
        .expect("request");

    let filter = ListPromotionsRequest {
        repository: w.repo("app"),
        page_size: 3,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = alice
            .list_promotions(ListPromotionsRequest {
                page_token: token.clone(),
                ..filter.clone()
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        assert!(page.promotions.len() <= 3);
        seen.extend(page.promotions.into_iter().map(|p| p.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    let first = alice
        .list_promotions(filter.clone())
        .await
        .expect("list")
        .into_inner();
    let token = first.next_page_token;
    // A token only continues the query it came from, and only unaltered.
    let mut tampered = token.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    for bad in [
        ListPromotionsRequest {
            page_token: String::from_utf8(tampered).expect("ascii"),
            ..filter.clone()
        },
        ListPromotionsRequest {
            page_token: token.clone(),
            repository: w.repo("other"),
            ..filter.clone()
        },
        ListPromotionsRequest {
            page_token: "garbage!".into(),
            ..filter.clone()
        },
    ] {
        let e = alice.list_promotions(bad).await.expect_err("bad token");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("page_token"), "{}", e.message());
    }
    let e = alice
        .history(HistoryRequest {
            page_token: token,
            ..Default::default()
        })
        .await
        .expect_err("list token in history");
    assert_eq!(e.code(), Code::InvalidArgument);

    // History filters and pages.
    let by_repo = history(
        &mut alice,
        HistoryRequest {
            repository: w.repo("app"),
            page_size: 4,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_repo.len(), 14);
    assert!(by_repo.windows(2).all(|p| p[0].sequence < p[1].sequence));
    let one = history(
        &mut alice,
        HistoryRequest {
            promotion_id: ids[2].clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        actions(&one),
        [AuditAction::Requested, AuditAction::Applied]
    );
    let all = all_entries(&mut alice).await;
    assert_eq!(all.len(), 16);
    let cut = all[9].time;
    let later = history(
        &mut alice,
        HistoryRequest {
            since: cut,
            ..Default::default()
        },
    )
    .await;
    assert!(
        later
            .iter()
            .all(|e| e.sequence >= all[9].sequence || e.time == cut)
    );
    assert_eq!(later.last(), all.last());
    let earlier = history(
        &mut alice,
        HistoryRequest {
            until: cut,
            environment: "staging".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(earlier.first(), all.first());
    let key = |t: Option<prodgate::pb::Timestamp>| t.map(|t| (t.seconds, t.nanos));
    assert!(earlier.iter().all(|e| key(e.time) <= key(cut)));
}

#[tokio::test]
async fn malformed_requests_are_refused_precisely_and_write_nothing() {
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let repo = w.repo("app");
    let mut alice = w.server.client("alice").await;
    let long = "x".repeat(4097);
    let cases: Vec<(&str, RequestPromotionRequest, Code, &str)> = vec![
        (
            "empty repository",
            request_to("", "staging", "production"),
            Code::InvalidArgument,
            "repository",
        ),
        (
            "no host",
            request_to("team/app", "staging", "production"),
            Code::InvalidArgument,
            "repository",
        ),
        (
            "uppercase path",
            request_to(&w.repo("App"), "staging", "production"),
            Code::InvalidArgument,
            "repository",
        ),
        (
            "unknown registry",
            request_to("registry.example.com/app", "staging", "production"),
            Code::InvalidArgument,
            "not configured",
        ),
        (
            "bad tag",
            request_to(&repo, "-staging", "production"),
            Code::InvalidArgument,
            "source",
        ),
        (
            "bad digest",
            request_to(&repo, "sha256:1234", "production"),
            Code::InvalidArgument,
            "source",
        ),
        (
            "empty source",
            request_to(&repo, "", "production"),
            Code::InvalidArgument,
            "source",
        ),
        (
            "unknown environment",
            request_to(&repo, "staging", "moon"),
            Code::InvalidArgument,
            "environment",
        ),
        (
            "empty environment",
            request_to(&repo, "staging", ""),
            Code::InvalidArgument,
            "environment",
        ),
        (
            "long reason",
            RequestPromotionRequest {
                reason: long.clone(),
                ..request_to(&repo, "staging", "production")
            },
            Code::InvalidArgument,
            "reason",
        ),
        (
            "control chars in request_id",
            RequestPromotionRequest {
                request_id: "a\u{7}b".into(),
                ..request_to(&repo, "staging", "production")
            },
            Code::InvalidArgument,
            "request_id",
        ),
        (
            "missing tag",
            request_to(&repo, "nope", "production"),
            Code::NotFound,
            "not found",
        ),
        (
            "missing repository",
            request_to(&w.repo("ghost"), "dev", "production"),
            Code::NotFound,
            "not found",
        ),
        (
            // The prerequisite's own tag: not promoted there yet.
            "missing repository, from the prerequisite's tag",
            request_to(&w.repo("ghost"), "staging", "production"),
            Code::FailedPrecondition,
            "ghost:staging does not exist",
        ),
        (
            "missing digest",
            request_to(&repo, &format!("sha256:{}", "0".repeat(64)), "production"),
            Code::NotFound,
            "not found",
        ),
    ];
    for (name, req, code, needle) in cases {
        let e = alice.request_promotion(req).await.expect_err(name);
        assert_eq!(e.code(), code, "{name}: {e:?}");
        assert!(e.message().contains(needle), "{name}: {}", e.message());
    }
    for (name, id) in [
        ("empty id", ""),
        ("word", "abc"),
        ("negative", "-1"),
        ("zero", "0"),
    ] {
        let e = alice.approve(approve(id)).await.expect_err(name);
        assert_eq!(e.code(), Code::InvalidArgument, "{name}");
    }
    let e = alice
        .approve(ApproveRequest {
            promotion_id: "1".into(),
            comment: long.clone(),
            break_glass: false,
        })
        .await
        .expect_err("long comment");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = alice
        .list_promotions(ListPromotionsRequest {
            page_size: 1001,
            ..Default::default()
        })
        .await
        .expect_err("page size");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = alice
        .list_promotions(ListPromotionsRequest {
            state: 42,
            ..Default::default()
        })
        .await
        .expect_err("state");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = alice
        .history(HistoryRequest {
            since: Some(prodgate::pb::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
            ..Default::default()
        })
        .await
        .expect_err("bad timestamp");
    assert_eq!(e.code(), Code::InvalidArgument);
    // A message far beyond any legitimate size is refused; the server stays up.
    let e = alice
        .request_promotion(RequestPromotionRequest {
            reason: "x".repeat(1 << 20),
            ..request_to(&repo, "staging", "production")
        })
        .await
        .expect_err("huge");
    assert!(
        matches!(
            e.code(),
            Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument
        ),
        "{e:?}"
    );
    assert!(all_entries(&mut alice).await.is_empty());
    let v = alice
        .verify_audit_log(VerifyAuditLogRequest {})
        .await
        .expect("still serving")
        .into_inner();
    assert!(v.ok);
}

#[tokio::test]
async fn an_unreachable_registry_is_unavailable() {
    let w = World::start().await;
    w.registry.push_image("app", Some("staging"), 1024, 1).await;
    let repo = w.repo("app");
    let mut alice = w.server.client("alice").await;
    let World { registry, server } = w;
    drop(registry);
    let e = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect_err("registry gone");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(all_entries(&mut alice).await.is_empty());
    drop(server);
}
