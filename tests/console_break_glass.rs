//! Break-glass from the console, in a real browser: during a freeze an
//! approval waits; the same approver breaking glass, with a reason, ships
//! it, and the audit entry says so.

mod support;

use prodgate::pb::{self, HistoryRequest, PromotionState};
use std::time::Duration;
use support::browser::Browser;
use support::console::{ConsoleSetup, sign_in};
use support::registry::TestRegistry;
use support::server::standard_config;
use support::{history, request_to, wait_for_state};

#[tokio::test]
async fn an_approver_named_by_break_glass_ships_through_a_freeze_with_a_reason() {
    let registry = TestRegistry::start().await;
    let (console, server) = ConsoleSetup::serve(|console| {
        format!(
            "{}\n[[environment]]\nname = \"frozen\"\ntag = \"frozen\"\n\
         approvers = [\"group:release-managers\"]\nrequired_approvals = 1\n\
         break_glass = [\"bob\"]\n\n\
         [[freeze]]\nenvironments = [\"frozen\"]\nstart = \"2000-01-01T00:00:00Z\"\n\
         end = \"2100-01-01T00:00:00Z\"\nreason = \"year-end change freeze\"\n{}",
            standard_config(&registry.host),
            console.toml("token_login = true\n")
        )
    });
    let base = console.base.clone();
    registry
        .push_image("team/app", Some("staging"), 1024, 1)
        .await;
    let repo = format!("{}/team/app", registry.host);
    let mut alice = server.client("alice").await;
    let p = alice
        .request_promotion(pb::RequestPromotionRequest {
            reason: "INC-7 fix".into(),
            ..request_to(&repo, "staging", "frozen")
        })
        .await
        .expect("request")
        .into_inner();
    let browser = Browser::start().await;
    browser
        .run("console_break_glass", async |b| {
            sign_in(b, &base, "bob-token").await;
            b.goto(&format!("{base}/promotions/{}", p.id)).await;
            // An approval alone waits for the freeze to end.
            b.click("#approve").await;
            b.wait_for_text("#state", "WAITING").await;
            b.wait_for_text("#waiting-for", "freeze").await;
            // Breaking glass needs a reason: without one, refused on the page.
            b.click("input[name=break_glass]").await;
            b.click("#approve").await;
            b.wait_for(".error").await;
            assert_eq!(
                get_state(&mut server.client("alice").await, &p.id).await,
                PromotionState::Waiting as i32
            );
            b.click("input[name=break_glass]").await;
            b.fill("#comment", "INC-7: checkout is down").await;
            b.click("#approve").await;
            wait_for_state(
                &mut alice,
                &p.id,
                PromotionState::Promoted,
                Duration::from_secs(30),
            )
            .await;
            b.wait_for_text("#state", "PROMOTED").await;
        })
        .await;
    let entries = history(
        &mut alice,
        HistoryRequest {
            promotion_id: p.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let glass: Vec<_> = entries
        .iter()
        .filter(|e| e.attributes.get("break_glass").map(String::as_str) == Some("true"))
        .collect();
    assert_eq!(glass.len(), 1, "{entries:#?}");
    assert_eq!(glass[0].actor, "bob");
    assert_eq!(glass[0].comment, "INC-7: checkout is down");
}

async fn get_state(c: &mut support::server::Client, id: &str) -> i32 {
    support::get(c, id).await.state
}
