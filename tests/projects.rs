//! Per-repository policy end to end (`[[project]]`): two teams share one
//! real registry behind a real `prodgate serve`; each team's leads approve
//! only their own repositories, a project's requesters are enforced, and a
//! repository no project matches keeps the top-level policy.

mod support;

use prodgate::pb::{self, ListPromotionsRequest, PromotionState, RejectRequest};
use sha2::{Digest, Sha256};
use std::time::Duration;
use support::registry::TestRegistry;
use support::server::{TestServer, principals_toml, registry_toml, token};
use support::{approve, request_to, wait_for_state};
use tonic::Code;

/// The test principals plus each team's people (tokens `<name>-token`):
/// payments leads pam and pete, web leads wendy and walt, and the payments
/// pipeline `ci-payments`.
fn config(registry_host: &str) -> String {
    let mut s = registry_toml(registry_host);
    s.push_str(&principals_toml());
    for (name, group) in [
        ("pam", "payments-leads"),
        ("pete", "payments-leads"),
        ("wendy", "web-leads"),
        ("walt", "web-leads"),
        ("ci-payments", "ci"),
    ] {
        let hash = hex::encode(Sha256::digest(token(name).as_bytes()));
        s.push_str(&format!(
            "[[principal]]\nname = \"{name}\"\ntoken_sha256 = \"{hash}\"\ngroups = [\"{group}\"]\n"
        ));
    }
    s.push_str(&format!(
        r#"
[[environment]]
name = "staging"
tag = "staging"
required_approvals = 0

[[environment]]
name = "production"
tag = "production"
requires = "staging"
approvers = ["group:release-managers"]
required_approvals = 1

[[project]]
name = "payments"
repositories = ["{registry_host}/payments/*"]
requesters = ["ci-payments", "alice"]
[[project.environment]]
name = "production"
approvers = ["group:payments-leads"]

[[project]]
name = "web"
repositories = ["{registry_host}/web/**"]
[[project.environment]]
name = "production"
approvers = ["group:web-leads"]
"#
    ));
    s
}

fn state(p: &pb::Promotion) -> PromotionState {
    PromotionState::try_from(p.state).expect("known state")
}

#[tokio::test]
async fn each_project_approves_only_its_own_repositories() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(&registry.host));
    let repo = |path: &str| format!("{}/{path}", registry.host);
    for path in ["payments/api", "web/shop/frontend", "tools/app"] {
        registry.push_image(path, Some("staging"), 1024, 1).await;
    }
    let mut ci = server.client("ci-payments").await;
    let mut mallory = server.client("mallory").await;
    let payments = ci
        .request_promotion(request_to(&repo("payments/api"), "staging", "production"))
        .await
        .expect("the payments pipeline requests")
        .into_inner();
    assert_eq!(state(&payments), PromotionState::PendingApproval);
    // `web/**` reaches any depth; anyone may request there.
    let web = mallory
        .request_promotion(request_to(
            &repo("web/shop/frontend"),
            "staging",
            "production",
        ))
        .await
        .expect("anyone requests for web")
        .into_inner();
    let tools = mallory
        .request_promotion(request_to(&repo("tools/app"), "staging", "production"))
        .await
        .expect("no project: anyone requests")
        .into_inner();
    // Each promotion names the project that governs it.
    let projects = [&payments, &web, &tools].map(|p| p.project.clone());
    assert_eq!(
        projects,
        ["payments".to_owned(), "web".to_owned(), String::new()]
    );

    // The other team's leads, and the top-level approvers the project
    // replaced, are refused, and nothing is recorded.
    for (who, id) in [
        ("wendy", &payments.id),
        ("bob", &payments.id),
        ("pam", &web.id),
        ("bob", &web.id),
        ("pam", &tools.id),
    ] {
        let mut c = server.client(who).await;
        let e = c
            .approve(approve(id))
            .await
            .expect_err("not this project's approver");
        assert_eq!(e.code(), Code::PermissionDenied, "{who} on {id}: {e:?}");
        assert!(
            e.message()
                .contains(&format!("{who} is not a designated approver")),
            "{}",
            e.message()
        );
        // The refusal says whose policy it is and who approves there.
        if id == &payments.id {
            assert!(
                e.message()
                    .contains("of project payments (its approvers: group:payments-leads)"),
                "{}",
                e.message()
            );
        }
        let e = c
            .reject(RejectRequest {
                promotion_id: id.clone(),
                comment: "not mine".into(),
            })
            .await
            .expect_err("rejecting needs an approver too");
        assert_eq!(e.code(), Code::PermissionDenied, "{who} on {id}: {e:?}");
    }
    for p in [&payments, &web, &tools] {
        let now = support::get(&mut ci, &p.id).await;
        assert_eq!(state(&now), PromotionState::PendingApproval);
        assert!(now.approvals.is_empty(), "{now:?}");
    }

    // Each lead's queue holds their own project's promotion only.
    for (who, want) in [
        ("pam", &payments.id),
        ("wendy", &web.id),
        ("bob", &tools.id),
    ] {
        let queue = server
            .client(who)
            .await
            .list_promotions(ListPromotionsRequest {
                awaiting_me: true,
                ..Default::default()
            })
            .await
            .expect("awaiting me")
            .into_inner();
        let ids: Vec<&str> = queue.promotions.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, [want.as_str()], "{who}'s queue");
    }

    // Their own leads approve; the tags move.
    for (who, p, path) in [
        ("pete", &payments, "payments/api"),
        ("walt", &web, "web/shop/frontend"),
        ("bob", &tools, "tools/app"),
    ] {
        server
            .client(who)
            .await
            .approve(approve(&p.id))
            .await
            .unwrap_or_else(|e| panic!("{who} approves {path}: {e:?}"));
        wait_for_state(
            &mut ci,
            &p.id,
            PromotionState::Promoted,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            registry.tag_digest(path, "production").await.as_deref(),
            Some(p.digest.as_str()),
            "{path}"
        );
    }
}

#[tokio::test]
async fn only_a_projects_requesters_may_request_there() {
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config(&registry.host));
    registry
        .push_image("payments/api", Some("staging"), 1024, 1)
        .await;
    let repo = format!("{}/payments/api", registry.host);
    // wendy leads another team; bob approves elsewhere; mallory is nobody.
    for who in ["wendy", "bob", "mallory"] {
        let e = server
            .client(who)
            .await
            .request_promotion(request_to(&repo, "staging", "production"))
            .await
            .expect_err("not a payments requester");
        assert_eq!(e.code(), Code::PermissionDenied, "{who}: {e:?}");
        assert_eq!(
            e.message(),
            format!(
                "{who} may not request promotions of {repo}: project payments lets only \
                 ci-payments, alice request them"
            )
        );
    }
    // Also to an environment that needs no approval.
    let e = server
        .client("mallory")
        .await
        .request_promotion(request_to(&repo, "staging", "staging"))
        .await
        .expect_err("not a payments requester");
    assert_eq!(e.code(), Code::PermissionDenied);

    let mut alice = server.client("alice").await;
    let listed = alice
        .list_promotions(ListPromotionsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.promotions.is_empty(), "a refusal recorded something");
    let p = alice
        .request_promotion(request_to(&repo, "staging", "production"))
        .await
        .expect("alice is a payments requester")
        .into_inner();
    assert_eq!(state(&p), PromotionState::PendingApproval);
    assert_eq!(
        registry.tag_digest("payments/api", "production").await,
        None
    );
}

#[tokio::test]
async fn cancel_and_expiry_follow_the_governing_projects_policy() {
    // payments overrides approval_ttl; the top-level production keeps 24h.
    let registry = TestRegistry::start().await;
    let server = TestServer::start(&config_with_sweep(&registry.host));
    for path in ["payments/api", "tools/app"] {
        registry.push_image(path, Some("staging"), 1024, 1).await;
    }
    let repo = |path: &str| format!("{}/{path}", registry.host);
    let mut ci = server.client("ci-payments").await;
    // Cancel: the requester or one of the project's approvers; another
    // team's lead is refused, and nothing is recorded.
    let p = ci
        .request_promotion(request_to(&repo("payments/api"), "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    let cancel = |id: &str| pb::CancelRequest {
        promotion_id: id.to_owned(),
        comment: "not this one".into(),
    };
    let e = server
        .client("wendy")
        .await
        .cancel(cancel(&p.id))
        .await
        .expect_err("another team's lead");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(
        state(&support::get(&mut ci, &p.id).await),
        PromotionState::PendingApproval
    );
    let cancelled = server
        .client("pam")
        .await
        .cancel(cancel(&p.id))
        .await
        .expect("the project's lead cancels")
        .into_inner();
    assert_eq!(state(&cancelled), PromotionState::Cancelled);

    // Expiry: the project's one-second TTL ends its promotion; the
    // top-level one's stays pending.
    let short = ci
        .request_promotion(request_to(&repo("payments/api"), "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    let long = server
        .client("alice")
        .await
        .request_promotion(request_to(&repo("tools/app"), "staging", "production"))
        .await
        .expect("request")
        .into_inner();
    let expired = wait_for_state(
        &mut ci,
        &short.id,
        PromotionState::Expired,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(expired.project, "payments");
    let e = server
        .client("pam")
        .await
        .approve(approve(&short.id))
        .await
        .expect_err("expired");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(
        state(&support::get(&mut ci, &long.id).await),
        PromotionState::PendingApproval
    );
}

/// [`config`] with a fast expiry sweep and payments' production approvals
/// valid for one second.
fn config_with_sweep(registry_host: &str) -> String {
    let c = config(registry_host).replace(
        "[[project.environment]]\nname = \"production\"\napprovers = [\"group:payments-leads\"]",
        "[[project.environment]]\nname = \"production\"\napprovers = [\"group:payments-leads\"]\napproval_ttl = \"1s\"",
    );
    assert!(c.contains("approval_ttl = \"1s\""), "{c}");
    format!("expiry_sweep_interval = \"100ms\"\n{c}")
}

#[tokio::test]
async fn a_second_name_for_a_registry_is_governed_by_the_same_projects() {
    let registry = TestRegistry::start().await;
    let port = registry
        .host
        .rsplit_once(':')
        .map(|(_, p)| p.to_owned())
        .expect("host:port");
    let alias = format!("localhost:{port}");
    let second = format!("[[registry]]\nhost = \"{alias}\"\ninsecure = true\n");
    // Both names, undeclared: a project naming one would not hold the other.
    let refused = support::server::serve_until_exit(
        &format!("{second}{}", config(&registry.host)),
        Duration::from_secs(30),
    );
    assert_ne!(refused.code, Some(0), "{}", refused.log);
    assert!(
        refused.code.is_some(),
        "serve kept running:\n{}",
        refused.log
    );
    assert!(
        refused.log.contains("the same registry") && refused.log.contains("alias_of"),
        "{}",
        refused.log
    );

    let declared = format!(
        "unclaimed_repositories = \"refuse\"\n[[registry]]\nhost = \"{alias}\"\ninsecure = true\nalias_of = \"{}\"\n{}",
        registry.host,
        config(&registry.host)
    );
    let server = TestServer::start(&declared);
    let mut bob = server.client("bob").await;
    // payments lets only its requesters request, under either name.
    for host in [&registry.host, &alias] {
        let e = bob
            .request_promotion(request_to(
                &format!("{host}/payments/api"),
                "staging",
                "production",
            ))
            .await
            .expect_err("bob is not a payments requester");
        assert_eq!(e.code(), Code::PermissionDenied, "{host}: {e:?}");
        assert!(e.message().contains("payments"), "{e:?}");
    }
    // A repository no project claims is refused, naming the patterns.
    let e = bob
        .request_promotion(request_to(
            &format!("{alias}/other/app"),
            "staging",
            "production",
        ))
        .await
        .expect_err("unclaimed");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("unclaimed_repositories")
            && e.message()
                .contains(&format!("{}/payments/*", registry.host)),
        "{e:?}"
    );
}
