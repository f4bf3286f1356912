//! A real, headless Chromium for tests of the web console, driven over WebDriver.
//!
//! [`Browser::start`] starts Debian's `chromedriver` on a free loopback port, waits (against a
//! deadline) until its `/status` says ready, and opens one fantoccini session on
//! `/usr/bin/chromium` with `--headless=new`, a fixed 1280×900 window and a throwaway profile in a
//! temporary directory. Dropping the [`Browser`] kills chromedriver's whole process group, which
//! holds every chromium process (SIGKILL to chromedriver alone leaves chromium running), then
//! removes the directory. `scripts/test` installs `chromium` and `chromium-driver`.
//!
//! Chromium is slow to start, so a test starts one browser and no more. Measured on a 2-core
//! machine: chromedriver is ready in ~30 ms; the session (chromium's start) takes 0.4–0.9 s, or
//! 1.0–1.4 s when two tests start one at once; the first page load ~0.4 s more; a screenshot
//! ~65 ms; the kill on drop 10–25 ms. The test runs its body through [`Browser::run`]:
//!
//! ```ignore
//! let browser = Browser::start().await;
//! browser
//!     .run("console_lists_promotions", async |b| {
//!         b.goto(&format!("{base}/promotions")).await;
//!         b.fill("input[name=reason]", "ship it").await;
//!         b.click("button[type=submit]").await;
//!         // After a click the next page may not be there yet: wait for it.
//!         b.wait_for_text("#state", "Approved").await;
//!         assert!(b.cookie("session").await.is_some());
//!     })
//!     .await;
//! ```
//!
//! When the body panics, `run` saves what the page looked like to
//! `$CARGO_TARGET_DIR/screenshots/<test name>.png` (`target/screenshots/` without
//! `CARGO_TARGET_DIR`), prints that path, and lets the panic go on. [`Browser::screenshot`] takes
//! a deliberate one (the README's pictures of the console come from a test).
//!
//! The helpers panic, as a failed assertion would, naming the CSS selector (and the page's URL
//! when an element never showed); [`Browser::client`] is the fantoccini client for anything they do not cover.

use std::fs;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::cookies::Cookie;
use fantoccini::elements::Element;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tempfile::TempDir;

use super::registry::free_port;

const DRIVER_BIN: &str = "chromedriver";
const CHROMIUM_BIN: &str = "/usr/bin/chromium";
const LOG_FILE: &str = "chromedriver.log";
/// For chromedriver's readiness and chromium's session together: they take ~30 ms and ~1 s here;
/// the margin is for a loaded CI machine running other test binaries at once.
const START_DEADLINE: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(25);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const PORT_ATTEMPTS: usize = 3;
/// How long the helpers wait for an element to appear.
pub const ELEMENT_DEADLINE: Duration = Duration::from_secs(10);
/// Fixed, so that screenshots and layout-dependent assertions are the same on every machine.
/// With `--headless=new` the viewport (and a screenshot) is 1280×757: the window keeps room for
/// the browser's own bars.
pub const WINDOW_SIZE: (u32, u32) = (1280, 900);

pub struct Browser {
    client: Client,
    /// chromedriver, leader of a process group that also holds chromium.
    driver: Child,
    /// The chromedriver log and chromium's profile; removed after the processes are dead.
    dir: TempDir,
}

enum Startup {
    Ready,
    PortTaken,
}

impl Browser {
    /// Starts chromedriver and one headless chromium session.
    pub async fn start() -> Browser {
        let dir = tempfile::Builder::new()
            .prefix("prodgate-browser-")
            .tempdir()
            .expect("create a temporary directory for the browser");
        let deadline = Instant::now() + START_DEADLINE;
        let http = HttpClient::builder(TokioExecutor::new()).build(HttpConnector::new());
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut driver = spawn_driver(dir.path(), port);
            match wait_until_ready(&http, &mut driver, port, dir.path(), deadline).await {
                Startup::Ready => {
                    let session = tokio::time::timeout_at(
                        tokio::time::Instant::from_std(deadline),
                        new_session(port, dir.path()),
                    );
                    let client = match session.await {
                        Ok(Ok(client)) => client,
                        Ok(Err(e)) => {
                            kill_group(&mut driver);
                            panic!(
                                "{DRIVER_BIN}: no chromium session: {e}; log:\n{}",
                                read_log(dir.path())
                            );
                        }
                        Err(_) => {
                            kill_group(&mut driver);
                            panic!(
                                "{DRIVER_BIN}: no chromium session within {START_DEADLINE:?}; log:\n{}",
                                read_log(dir.path())
                            );
                        }
                    };
                    return Browser {
                        client,
                        driver,
                        dir,
                    };
                }
                Startup::PortTaken => {
                    let _ = driver.wait();
                }
            }
        }
        panic!("{DRIVER_BIN}: the chosen port was taken in each of {PORT_ATTEMPTS} attempts");
    }

    /// The WebDriver session, for what the helpers below do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs a test body with this browser; if it panics, saves a screenshot of the page to
    /// [`screenshot_path`]`(name)`, prints the path, and resumes the panic.
    pub async fn run<T>(&self, name: &str, body: impl AsyncFnOnce(&Browser) -> T) -> T {
        match AssertUnwindSafe(body(self)).catch_unwind().await {
            Ok(out) => out,
            Err(panic) => {
                let path = screenshot_path(name);
                match self.try_screenshot(&path).await {
                    Ok(()) => {
                        eprintln!("browser test {name} failed; screenshot: {}", path.display())
                    }
                    Err(e) => eprintln!("browser test {name} failed; no screenshot: {e}"),
                }
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Saves a PNG of the viewport to `path`, creating its directory.
    pub async fn screenshot(&self, path: &Path) {
        self.try_screenshot(path)
            .await
            .unwrap_or_else(|e| panic!("screenshot to {}: {e}", path.display()));
    }

    async fn try_screenshot(&self, path: &Path) -> Result<(), String> {
        let png = self.client.screenshot().await.map_err(|e| e.to_string())?;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// The page's current URL.
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("current URL")
            .to_string()
    }

    /// The first element matching `css`, waiting up to [`ELEMENT_DEADLINE`] for it to appear.
    pub async fn wait_for(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(ELEMENT_DEADLINE)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => panic!(
                "no element {css:?} within {ELEMENT_DEADLINE:?} on {}: {e}",
                self.url().await
            ),
        }
    }

    /// Replaces the value of the form field matching `css` with `value` (typed, so the page's
    /// input events fire).
    pub async fn fill(&self, css: &str, value: &str) {
        let field = self.wait_for(css).await;
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clear {css:?}: {e}"));
        field
            .send_keys(value)
            .await
            .unwrap_or_else(|e| panic!("type into {css:?}: {e}"));
    }

    /// Clicks the element matching `css` (a submit button submits its form).
    pub async fn click(&self, css: &str) {
        self.wait_for(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css:?}: {e}"));
    }

    /// The rendered text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.wait_for(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("text of {css:?}: {e}"))
    }

    /// Waits up to [`ELEMENT_DEADLINE`] until the element matching `css` has the text `want`
    /// (after a click the next page, or a script, may not have rendered it yet); panics with the
    /// last text seen.
    pub async fn wait_for_text(&self, css: &str, want: &str) {
        let deadline = Instant::now() + ELEMENT_DEADLINE;
        loop {
            let seen = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.ok(),
                Err(_) => None,
            };
            if seen.as_deref() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css:?} never read {want:?} within {ELEMENT_DEADLINE:?} on {}; last: {seen:?}",
                self.url().await
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The document's title.
    pub async fn title(&self) -> String {
        self.client.title().await.expect("document title")
    }

    /// Every cookie the browser holds for the current page, HttpOnly ones included.
    pub async fn cookies(&self) -> Vec<Cookie<'static>> {
        self.client.get_all_cookies().await.expect("read cookies")
    }

    /// The cookie `name` of the current page, if the browser holds one.
    pub async fn cookie(&self, name: &str) -> Option<Cookie<'static>> {
        self.cookies().await.into_iter().find(|c| c.name() == name)
    }

    /// chromedriver's output so far (chromium's start-up errors land here).
    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}

/// Where [`Browser::run`] puts the screenshot of a failed test `name`:
/// `$CARGO_TARGET_DIR/screenshots/<name>.png`, or `target/screenshots/<name>.png` in the package.
pub fn screenshot_path(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots").join(format!("{name}.png"))
}

/// chromedriver in a process group of its own, so that one kill ends chromium with it.
fn spawn_driver(dir: &Path, port: u16) -> Child {
    use std::os::unix::process::CommandExt;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LOG_FILE))
        .expect("open the chromedriver log");
    Command::new(DRIVER_BIN)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the chromedriver log handle"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("spawn {DRIVER_BIN} (apt-get install chromium chromium-driver): {e}")
        })
}

/// Polls `/status` until chromedriver says `ready`, or it exits (a port taken: it says "port not
/// available"), or the deadline passes.
async fn wait_until_ready(
    http: &HttpClient<HttpConnector, Empty<Bytes>>,
    driver: &mut Child,
    port: u16,
    dir: &Path,
    deadline: Instant,
) -> Startup {
    let probe: hyper::Uri = format!("http://127.0.0.1:{port}/status")
        .parse()
        .expect("status URI");
    loop {
        if let Some(status) = driver.try_wait().expect("check whether chromedriver runs") {
            let log = read_log(dir);
            if log.contains("port not available") {
                return Startup::PortTaken;
            }
            panic!("{DRIVER_BIN} on port {port} exited early ({status}); log:\n{log}");
        }
        if is_ready(http, probe.clone()).await {
            return Startup::Ready;
        }
        if Instant::now() >= deadline {
            kill_group(driver);
            panic!(
                "{DRIVER_BIN} on port {port} not ready within {START_DEADLINE:?}; log:\n{}",
                read_log(dir)
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn is_ready(http: &HttpClient<HttpConnector, Empty<Bytes>>, probe: hyper::Uri) -> bool {
    let answer = async {
        let resp = http.get(probe).await.ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        let status: serde_json::Value = serde_json::from_slice(&body).ok()?;
        status["value"]["ready"].as_bool()
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, answer).await,
        Ok(Some(true))
    )
}

async fn new_session(port: u16, dir: &Path) -> Result<Client, fantoccini::error::NewSessionError> {
    let profile = dir.join("profile");
    let (width, height) = WINDOW_SIZE;
    let mut capabilities = Capabilities::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    let options = json!({
        "binary": CHROMIUM_BIN,
        "args": [
            "--headless=new",
            // The tests run as root in CI, where chromium's sandbox refuses to start.
            "--no-sandbox",
            "--disable-gpu",
            // /dev/shm is small in containers; chromium then crashes on big pages.
            "--disable-dev-shm-usage",
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.display()),
        ],
    });
    capabilities.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
}

/// SIGKILL to chromedriver's process group (chromium's processes included), then reaps
/// chromedriver.
fn kill_group(driver: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", driver.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

fn read_log(dir: &Path) -> String {
    fs::read_to_string(dir.join(LOG_FILE))
        .unwrap_or_else(|e| format!("<cannot read the chromedriver log: {e}>"))
}
