//! Registry faults injected by a proxy in front of the real registry:
//! transient errors are retried (honouring Retry-After), permanent ones fail
//! the promotion at once.

mod support;

use prodgate::pb::{AuditAction, PromotionState, RequestPromotionRequest};
use std::time::Duration;
use support::proxy::{Fault, FaultProxy};
use support::registry::TestRegistry;
use support::server::{Client, TestServer, standard_config};
use support::{actions_of, approve, request_to, wait_for_state};

/// prodgate talks to the registry only through the proxy.
struct Faulty {
    registry: TestRegistry,
    proxy: FaultProxy,
    server: TestServer,
}

impl Faulty {
    async fn start() -> Faulty {
        let registry = TestRegistry::start().await;
        let proxy = FaultProxy::start(&registry.host).await;
        let server = TestServer::start(&standard_config(&proxy.host));
        Faulty {
            registry,
            proxy,
            server,
        }
    }

    /// A pending production promotion of a freshly pushed image.
    async fn pending(&self) -> (String, String, Client) {
        let digest = self
            .registry
            .push_image("app", Some("staging"), 4096, 1)
            .await;
        let mut alice = self.server.client("alice").await;
        let p = alice
            .request_promotion(RequestPromotionRequest {
                repository: format!("{}/app", self.proxy.host),
                source: "staging".into(),
                environment: "production".into(),
                reason: "faults".into(),
                request_id: String::new(),
                break_glass: false,
            })
            .await
            .expect("request")
            .into_inner();
        (p.id, digest, alice)
    }

    /// The requests prodgate sent through the proxy since the `from`th,
    /// as "METHOD path".
    fn requests_since(&self, from: usize) -> Vec<String> {
        self.proxy.requests()[from..]
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    async fn approve(&self, id: &str) -> prodgate::pb::Promotion {
        self.server
            .client("bob")
            .await
            .approve(approve(id))
            .await
            .expect("approve")
            .into_inner()
    }
}

#[tokio::test]
async fn transient_errors_are_retried_until_the_tag_moves() {
    let f = Faulty::start().await;
    let (id, digest, mut alice) = f.pending().await;
    let put = "/manifests/production";
    f.proxy.inject(
        "PUT",
        put,
        Fault::Status {
            code: 503,
            retry_after: None,
        },
        2,
    );
    f.proxy.inject("PUT", put, Fault::Drop, 1);
    f.proxy.inject(
        "HEAD",
        "/manifests/production",
        Fault::Status {
            code: 500,
            retry_after: None,
        },
        1,
    );
    f.approve(&id).await;
    wait_for_state(
        &mut alice,
        &id,
        PromotionState::Promoted,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        f.registry.tag_digest("app", "production").await.as_deref(),
        Some(digest.as_str())
    );
    let puts: Vec<_> = f
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with(put))
        .collect();
    assert_eq!(puts.len(), 4, "{puts:?}");
    assert!(puts[..3].iter().all(|r| r.fault.is_some()));
    assert_eq!(puts[3].status, 201);
    assert_eq!(
        actions_of(&mut alice, &id).await,
        [
            AuditAction::Requested,
            AuditAction::Approved,
            AuditAction::Applied
        ],
        "attempts are logged, not audited one by one"
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let f = Faulty::start().await;
    let (id, _, mut alice) = f.pending().await;
    f.proxy.inject(
        "PUT",
        "/manifests/production",
        Fault::Status {
            code: 429,
            retry_after: Some(2),
        },
        1,
    );
    f.approve(&id).await;
    wait_for_state(
        &mut alice,
        &id,
        PromotionState::Promoted,
        Duration::from_secs(30),
    )
    .await;
    let puts: Vec<_> = f
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/manifests/production"))
        .collect();
    assert_eq!(puts.len(), 2, "{puts:?}");
    assert_eq!(puts[0].status, 429);
    let waited = puts[1].at - puts[0].at;
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}"
    );
}

#[tokio::test]
async fn permanent_errors_fail_fast() {
    for (code, needle) in [
        (401u16, "credentials"),
        (403, "credentials"),
        (404, "not in the registry"),
    ] {
        let f = Faulty::start().await;
        let (id, _, mut alice) = f.pending().await;
        f.proxy.inject(
            "PUT",
            "/manifests/production",
            Fault::Status {
                code,
                retry_after: None,
            },
            10,
        );
        let answer = f.approve(&id).await;
        // A permanent failure is terminal within Approve's wait for the move.
        assert_eq!(
            answer.state,
            PromotionState::Failed as i32,
            "{code}: {answer:?}"
        );
        assert!(
            answer.failure_message.contains(needle),
            "{code}: {}",
            answer.failure_message
        );
        let tries = f
            .proxy
            .requests()
            .into_iter()
            .filter(|r| r.method == "PUT" && r.path.ends_with("/manifests/production"))
            .count();
        assert!(tries <= 2, "{code}: {tries} attempts");
        assert_eq!(f.registry.tag_digest("app", "production").await, None);
        assert_eq!(
            actions_of(&mut alice, &id).await,
            [
                AuditAction::Requested,
                AuditAction::Approved,
                AuditAction::ApplyFailed
            ]
        );
    }
}

#[tokio::test]
async fn a_concurrent_writer_is_detected_not_overwritten() {
    let f = Faulty::start().await;
    let (id, _, mut alice) = f.pending().await;
    let intruder = f.registry.push_image("app", None, 2048, 99).await;
    // Both reads of the target tag are slowed, so another writer can move it
    // between prodgate's push and its read-back.
    f.proxy.inject(
        "HEAD",
        "/manifests/production",
        Fault::Delay(Duration::from_millis(1500)),
        2,
    );
    let mut bob = f.server.client("bob").await;
    let approve = tokio::spawn(async move { bob.approve(approve(&id)).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !f
        .proxy
        .requests()
        .iter()
        .any(|r| r.method == "PUT" && r.path.ends_with("/manifests/production") && r.status == 201)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "prodgate never pushed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.registry.retag("app", &intruder, "production").await;
    let answer = approve.await.expect("join").expect("approve").into_inner();
    let id = answer.id.clone();
    let failed = wait_for_state(
        &mut alice,
        &id,
        PromotionState::Failed,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        failed.failure_message.contains(&intruder),
        "{}",
        failed.failure_message
    );
    // The other writer's tag stands: prodgate did not push again.
    assert_eq!(
        f.registry.tag_digest("app", "production").await.as_deref(),
        Some(intruder.as_str())
    );
    let puts = f
        .proxy
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/manifests/production"))
        .count();
    assert_eq!(puts, 1);
    assert_eq!(
        actions_of(&mut alice, &id).await,
        [
            AuditAction::Requested,
            AuditAction::Approved,
            AuditAction::ApplyFailed
        ]
    );
}

#[tokio::test]
async fn an_apply_is_three_manifest_requests_and_no_blob() {
    let f = Faulty::start().await;
    let (id, digest, _) = f.pending().await;
    let before = f.proxy.requests().len();
    let done = f.approve(&id).await;
    assert_eq!(done.state, PromotionState::Promoted as i32, "{done:?}");
    let during: Vec<String> = f.proxy.requests()[before..]
        .iter()
        .map(|r| format!("{} {} {}", r.method, r.path, r.status))
        .collect();
    let app = "/v2/app/manifests/production";
    assert_eq!(
        during,
        [
            format!("HEAD {app} 404"),
            format!("PUT {app} 201"),
            format!("HEAD {app} 200")
        ],
        "the manifest was pinned at request time"
    );
    assert_eq!(
        f.registry.tag_digest("app", "production").await.as_deref(),
        Some(digest.as_str())
    );
}

#[tokio::test]
async fn a_digest_already_pinned_in_the_repository_is_not_fetched_again() {
    let f = Faulty::start().await;
    let (_, digest, mut alice) = f.pending().await;
    let before = f.proxy.requests().len();
    let again = alice
        .request_promotion(RequestPromotionRequest {
            repository: format!("{}/app", f.proxy.host),
            source: digest.clone(),
            environment: "production".into(),
            reason: "same image, by digest".into(),
            request_id: String::new(),
            break_glass: false,
        })
        .await
        .expect("request by digest")
        .into_inner();
    assert_eq!(again.digest, digest);
    // Only the prerequisite check: staging must still carry the digest.
    assert_eq!(f.requests_since(before), ["HEAD /v2/app/manifests/staging"]);
    // A digest never seen in the repository is still looked up, and refused.
    let unknown = format!("sha256:{}", "0".repeat(64));
    let e = alice
        .request_promotion(RequestPromotionRequest {
            repository: format!("{}/app", f.proxy.host),
            source: unknown,
            environment: "production".into(),
            reason: "a digest never pushed here".into(),
            request_id: String::new(),
            break_glass: false,
        })
        .await
        .expect_err("unknown digest");
    assert_eq!(e.code(), tonic::Code::NotFound);
}

/// A request by tag costs one HEAD of the tag when its digest is pinned in
/// the repository already, and a HEAD plus a GET of that digest when not.
#[tokio::test]
async fn a_request_by_tag_fetches_only_a_digest_not_pinned_yet() {
    let f = Faulty::start().await;
    let before = f.proxy.requests().len();
    let (_, digest, mut alice) = f.pending().await;
    // First seen here: the tag's HEAD, then exactly the bytes it named.
    assert_eq!(
        f.requests_since(before),
        [
            "HEAD /v2/app/manifests/staging".to_owned(),
            format!("GET /v2/app/manifests/{digest}"),
        ]
    );
    let before = f.proxy.requests().len();
    let again = alice
        .request_promotion(request_to(
            &format!("{}/app", f.proxy.host),
            "staging",
            "prod2",
        ))
        .await
        .expect("request by tag")
        .into_inner();
    assert_eq!(again.digest, digest);
    assert_eq!(f.requests_since(before), ["HEAD /v2/app/manifests/staging"]);
}

/// "One bad manifest blocks a tag forever": while an approved promotion
/// keeps failing, its last error and attempt count are visible, and a newer
/// approved promotion of the same tag supersedes it instead of queueing
/// behind it.
#[tokio::test]
async fn a_failing_move_shows_its_error_and_gives_way_to_a_newer_approval() {
    let f = Faulty::start().await;
    let (stuck, _old, mut alice) = f.pending().await;
    let put = "/manifests/production";
    let unavailable = Fault::Status {
        code: 503,
        retry_after: None,
    };
    f.proxy.inject("PUT", put, unavailable.clone(), usize::MAX);
    assert_eq!(
        f.approve(&stuck).await.state,
        PromotionState::Approved as i32
    );
    // GetPromotion shows why nothing happens yet.
    let seen = loop {
        let p = support::get(&mut alice, &stuck).await;
        if p.apply_attempts >= 2 {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seen.state, PromotionState::Approved as i32);
    assert!(
        seen.last_apply_error.contains("503") || seen.last_apply_error.contains("unavailable"),
        "{seen:?}"
    );

    // A newer image is approved for the same tag while the old one retries.
    let new_digest = f.registry.push_image("app", Some("staging"), 4096, 2).await;
    let newer = alice
        .request_promotion(RequestPromotionRequest {
            repository: format!("{}/app", f.proxy.host),
            source: "staging".into(),
            environment: "production".into(),
            reason: "the fix".into(),
            request_id: String::new(),
            break_glass: false,
        })
        .await
        .expect("request the newer image")
        .into_inner()
        .id;
    f.approve(&newer).await;
    let superseded = wait_for_state(
        &mut alice,
        &stuck,
        PromotionState::Superseded,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(superseded.superseded_by, newer);
    assert_eq!(
        actions_of(&mut alice, &stuck).await.last(),
        Some(&AuditAction::Superseded)
    );
    f.proxy.clear();
    let done = wait_for_state(
        &mut alice,
        &newer,
        PromotionState::Promoted,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(done.last_apply_error, "", "cleared once the tag moved");
    assert_eq!(
        f.registry.tag_digest("app", "production").await.as_deref(),
        Some(new_digest.as_str())
    );
}
