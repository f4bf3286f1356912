//! The browser harness (tests/support/browser.rs) against a small page served here, the pattern
//! the console's tests follow: one headless chromium per test, the test body inside
//! `Browser::run` so that a failure leaves a screenshot.
mod support;

use std::net::SocketAddr;

use axum::Router;
use axum::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, SET_COOKIE};
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::FutureExt;
use support::browser::{Browser, screenshot_path};

/// As the console will send it: no inline script runs, only scripts from the page's own origin.
const CSP: &str = "script-src 'self'";
const TITLE: &str = "harness page";

/// The inline script comes before the same-origin one, so by the time the latter has run, the
/// former has had its chance.
const INDEX: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>harness page</title></head>
<body>
<form method="post" action="/greet">
  <label>Name <input name="name"></label>
  <button type="submit">Greet</button>
</form>
<p id="script">no script ran</p>
<script>document.title = "inline script ran";</script>
<script src="/app.js"></script>
</body></html>
"#;

const APP_JS: &str = r#"document.getElementById("script").textContent = "same-origin script ran";"#;

/// The page on 127.0.0.1:0; the server task ends with the test's runtime.
async fn serve_page() -> SocketAddr {
    let app = Router::new()
        .route("/", get(|| async { html(INDEX.to_owned()) }))
        .route("/greet", axum::routing::post(greet))
        .route(
            "/app.js",
            get(|| async { ([(CONTENT_TYPE, "text/javascript")], APP_JS) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the page server");
    let addr = listener.local_addr().expect("page server address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn html(body: String) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
}

/// The form's target: a page that names the sender, and a session cookie the page's scripts
/// cannot read.
async fn greet(body: String) -> impl IntoResponse {
    let name = form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let name = name
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    (
        [(SET_COOKIE, "greeted=yes; Path=/; HttpOnly; SameSite=Strict")],
        html(format!(
            "<!doctype html><title>greeted</title><p id=\"greeting\">Hello, {name}</p>"
        )),
    )
}

#[tokio::test]
async fn a_form_posts_and_only_same_origin_scripts_run() {
    let addr = serve_page().await;
    let browser = Browser::start().await;
    browser
        .run("a_form_posts_and_only_same_origin_scripts_run", async |b| {
            b.goto(&format!("http://{addr}/")).await;
            b.wait_for_text("#script", "same-origin script ran").await;
            assert_eq!(
                b.title().await,
                TITLE,
                "the inline script ran despite the CSP"
            );

            b.fill("input[name=name]", "Ada <admin>").await;
            b.click("button[type=submit]").await;
            b.wait_for_text("#greeting", "Hello, Ada <admin>").await;
            assert_eq!(b.url().await, format!("http://{addr}/greet"));
            let cookie = b.cookie("greeted").await.expect("the greeted cookie");
            assert_eq!(cookie.value(), "yes");
            assert_eq!(cookie.http_only(), Some(true));
        })
        .await;
}

#[tokio::test]
async fn a_failing_body_leaves_a_screenshot() {
    const NAME: &str = "browser_harness_failure_probe";
    let path = screenshot_path(NAME);
    let _ = std::fs::remove_file(&path);
    let addr = serve_page().await;
    let browser = Browser::start().await;

    let outcome = std::panic::AssertUnwindSafe(browser.run(NAME, async |b| {
        b.goto(&format!("http://{addr}/")).await;
        panic!("a deliberate failure, to prove the screenshot");
    }))
    .catch_unwind()
    .await;

    let panic = outcome.expect_err("the body's panic goes on");
    assert_eq!(
        panic.downcast_ref::<&str>(),
        Some(&"a deliberate failure, to prove the screenshot")
    );
    let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG: {path:?}");
}
