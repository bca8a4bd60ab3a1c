//! A real headless Chromium, driven over WebDriver, for the dashboard's browser tests.
//!
//! [`Browser::start`] runs a private chromedriver (`--port=0`: the port the OS assigned is read from
//! its ready line, so no port is guessed) and opens one session on it with a fresh profile in a
//! temporary directory. Chromium is `/usr/bin/chromium` and chromedriver `/usr/bin/chromedriver`
//! (Debian's `chromium` and `chromium-driver`), or `$BLOX_CHROMIUM` and `$BLOX_CHROMEDRIVER`; when
//! they are missing the start fails (tests fail, they do not skip).
//!
//! Tests wait on conditions, never with sleeps: [`Browser::wait_for`] evaluates a JavaScript
//! condition until it holds or the deadline passes. The browser's console is recorded
//! (`goog:loggingPrefs`), and [`Browser::console_errors`] returns every SEVERE entry of the session:
//! `console.error` calls, uncaught exceptions and failed loads (a 404 or 401 answer to any request
//! of the page counts too).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};
use fantoccini::error::{CmdError, ErrorStatus, WebDriver};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::time::Instant;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const INSTALL_HINT: &str = "install Debian's chromium and chromium-driver \
                            (apt-get install -y chromium chromium-driver), or set BLOX_CHROMIUM \
                            and BLOX_CHROMEDRIVER";
/// What chromedriver prints on stdout once it listens, followed by the port and a full stop.
const READY_PREFIX: &str = "ChromeDriver was started successfully on port ";
/// chromedriver starts in well under a second; Chromium in one or two. Room for a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How often [`Browser::wait_for`] evaluates its condition.
const POLL: Duration = Duration::from_millis(50);
/// How long [`Browser::click`] and [`Browser::fill`] try again on an element a re-render replaced.
const RETRY_DEADLINE: Duration = Duration::from_secs(10);
/// The window of every session, and its viewport: headless Chromium still takes room for a browser
/// frame it does not draw (1400x1000 gives a 1400x857 viewport), so the viewport is set through the
/// DevTools protocol too, and screenshots are this size.
pub const WINDOW: (u32, u32) = (1400, 1000);

/// Chromium's flags: headless, without a sandbox (tests run as root in containers), and without
/// anything that talks to Google or needs a GPU or a large /dev/shm.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// A headless Chromium session through a private chromedriver. Chromedriver, and the browser it
/// started, are killed on drop; [`Browser::close`] ends the session properly first.
#[derive(Debug)]
pub struct Browser {
    client: Option<Client>,
    session_id: String,
    driver: Child,
    /// SEVERE entries read from the browser log so far: chromedriver hands each entry out once.
    errors: Mutex<Vec<String>>,
    // Chromium's profile and temporary files; removed after the browser has gone (fields drop after
    // `Drop::drop`).
    _scratch: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a fresh profile.
    /// Chromium and chromedriver are Debian's, or `$BLOX_CHROMIUM` and `$BLOX_CHROMEDRIVER`.
    pub async fn start() -> anyhow::Result<Browser> {
        let chromedriver = program("BLOX_CHROMEDRIVER", CHROMEDRIVER);
        let chromium = program("BLOX_CHROMIUM", CHROMIUM);
        Browser::start_with(&chromedriver, &chromium).await
    }

    /// [`Browser::start`] with these programs; fails when either is missing.
    pub async fn start_with(chromedriver: &Path, chromium: &Path) -> anyhow::Result<Browser> {
        for program in [chromedriver, chromium] {
            if !program.exists() {
                bail!("no {}: {INSTALL_HINT}", program.display());
            }
        }
        // The session's files: Chromium's profile, and the temporary files of chromedriver and
        // Chromium (TMPDIR: Chromium leaves a directory in it per run), removed on drop.
        let scratch = tempfile::Builder::new()
            .prefix("blox-chromium-")
            .tempdir()
            .context("a temporary directory for Chromium")?;
        let (profile, tmp) = (scratch.path().join("profile"), scratch.path().join("tmp"));
        std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut driver = Command::new(chromedriver)
            .arg("--port=0")
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, Chromium included, so that drop can kill them all.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}: {INSTALL_HINT}", chromedriver.display()))?;
        let stdout = driver.stdout.take().context("chromedriver stdout")?;
        let stderr = driver.stderr.take().context("chromedriver stderr")?;
        crate::process::forward("chromedriver", stderr);
        let port = match tokio::time::timeout(START_DEADLINE, watch_stdout(stdout)).await {
            Ok(Ok(port)) => port,
            outcome => {
                kill_group(&mut driver);
                match outcome {
                    Err(_) => {
                        bail!("chromedriver printed no {READY_PREFIX:?} line within {START_DEADLINE:?}")
                    }
                    _ => bail!("chromedriver exited before listening (see its output above)"),
                }
            }
        };
        let mut args: Vec<String> = FLAGS.iter().map(|&f| f.to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push(format!("--window-size={},{}", WINDOW.0, WINDOW.1));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
            "pageLoadStrategy": "normal",
            "timeouts": {"script": 30_000, "pageLoad": 30_000, "implicit": 0},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let url = format!("http://127.0.0.1:{port}");
        let connect = async {
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&url)
                .await
        };
        let client = match tokio::time::timeout(START_DEADLINE, connect).await {
            Ok(Ok(client)) => client,
            outcome => {
                kill_group(&mut driver);
                match outcome {
                    Err(_) => bail!("no Chromium session within {START_DEADLINE:?}"),
                    Ok(Err(e)) => bail!("starting a Chromium session through chromedriver: {e}"),
                    Ok(Ok(_)) => unreachable!(),
                }
            }
        };
        let session_id = match client.session_id().await {
            Ok(Some(id)) => id,
            other => {
                kill_group(&mut driver);
                bail!("the WebDriver session has no id: {other:?}");
            }
        };
        let browser = Browser {
            client: Some(client),
            session_id,
            driver,
            errors: Mutex::new(Vec::new()),
            _scratch: scratch,
        };
        browser
            .cdp(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": WINDOW.0, "height": WINDOW.1, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await
            .context("setting the viewport's size")?;
        Ok(browser)
    }

    /// Sends a DevTools protocol command to the page (chromedriver's `goog/cdp/execute`) and returns
    /// its result.
    pub async fn cdp(&self, command: &str, params: Value) -> anyhow::Result<Value> {
        self.client()
            .issue_cmd(Cdp {
                command: command.to_owned(),
                params,
            })
            .await
            .with_context(|| format!("the DevTools command {command}"))
    }

    /// The Enter key, to type at the end of [`Browser::fill`]'s text.
    pub const ENTER: char = '\u{e007}';

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open until close")
    }

    /// The fantoccini client, for what the helpers here do not cover.
    pub fn webdriver(&self) -> &Client {
        self.client()
    }

    /// Navigates to `url` and waits for the page's load event.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client()
            .goto(url)
            .await
            .with_context(|| format!("navigating to {url}"))
    }

    /// Reloads the page and waits for its load event.
    pub async fn reload(&self) -> anyhow::Result<()> {
        self.client().refresh().await.context("reloading the page")
    }

    /// The page's URL.
    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .client()
            .current_url()
            .await
            .context("the page's URL")?
            .to_string())
    }

    /// The value of a JavaScript expression, as JSON (`undefined` is `null`; a promise is awaited).
    pub async fn eval(&self, expression: &str) -> anyhow::Result<Value> {
        self.run(&format!("return ({expression});"), Vec::new()).await
    }

    /// Runs a script (a function body: `arguments[0]`… are `args`) and returns what it returns.
    pub async fn run(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.client()
            .execute(script, args)
            .await
            .with_context(|| format!("running the script {script:?}"))
    }

    /// Evaluates `condition` (a JavaScript expression; truthy or not) every 50 ms until it holds;
    /// fails naming `what` when `deadline` passes first, with the page's URL, its `body` data
    /// attributes, the last error of the evaluation and the console's errors. A condition that throws
    /// (an element not there yet, a page being replaced) does not hold.
    pub async fn wait_for(&self, what: &str, condition: &str, deadline: Duration) -> anyhow::Result<()> {
        let script = format!("return !!({condition});");
        let start = Instant::now();
        loop {
            let last_error = match self.client().execute(&script, Vec::new()).await {
                Ok(Value::Bool(true)) => return Ok(()),
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            };
            let elapsed = start.elapsed();
            if elapsed >= deadline {
                let url = self.url().await.unwrap_or_else(|e| format!("({e:#})"));
                let body = self
                    .eval("document.body && Object.assign({}, document.body.dataset)")
                    .await
                    .unwrap_or_else(|e| json!(format!("({e:#})")));
                let errors = self.console_errors().await.unwrap_or_default();
                bail!(
                    "timed out after {elapsed:?} (deadline {deadline:?}) waiting until {what} \
                     ({condition}); page {url}, body data {body}, last evaluation error: {}, \
                     console errors: {errors:?}",
                    last_error.as_deref().unwrap_or("none")
                );
            }
            tokio::time::sleep(POLL.min(deadline - elapsed)).await;
        }
    }

    /// Every SEVERE entry of the browser's log since the session started (`console.error`, uncaught
    /// exceptions, failed requests), each as `SOURCE: MESSAGE`.
    pub async fn console_errors(&self) -> anyhow::Result<Vec<String>> {
        let entries = self
            .client()
            .issue_cmd(BrowserLog)
            .await
            .context("reading the browser log (POST /session/{id}/se/log)")?;
        let entries = entries
            .as_array()
            .with_context(|| format!("the browser log is not a list: {entries}"))?;
        let mut errors = self.errors.lock().expect("not poisoned");
        errors.extend(
            entries
                .iter()
                .filter(|entry| entry["level"] == "SEVERE")
                .map(|entry| {
                    let source = entry["source"].as_str().unwrap_or("unknown");
                    let message = entry["message"].as_str().unwrap_or_default();
                    format!("{source}: {message}")
                }),
        );
        Ok(errors.clone())
    }

    /// Fails listing the console's errors, if there are any.
    pub async fn assert_no_console_errors(&self) -> anyhow::Result<()> {
        let errors = self.console_errors().await?;
        if !errors.is_empty() {
            bail!("{} console error(s): {errors:#?}", errors.len());
        }
        Ok(())
    }

    /// Clicks the first element `css` selects. A live page may replace the element between its
    /// lookup and the click (WebDriver's "stale element reference"), or cover it for a moment ("element
    /// click intercepted"): neither clicked anything, so the element is looked up and clicked again,
    /// for up to 10 s.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.on_element(css, "clicking", |element| async move { element.click().await })
            .await
    }

    /// Clears the input `css` selects and types `text` into it (a [`fantoccini::key::Key`] as a
    /// char, such as [`Browser::ENTER`], presses that key). Like [`Browser::click`], starts again
    /// on an input that a re-render replaced meanwhile.
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        self.on_element(css, "typing into", |element| async move {
            element.clear().await?;
            element.send_keys(text).await
        })
        .await
    }

    /// Looks up the first element `css` selects and does `act` to it; again, on a fresh lookup,
    /// while the page replaced or covered the element meanwhile (for up to 10 s).
    async fn on_element<F, Fut>(&self, css: &str, doing: &str, act: F) -> anyhow::Result<()>
    where
        F: Fn(fantoccini::elements::Element) -> Fut,
        Fut: std::future::Future<Output = Result<(), CmdError>>,
    {
        let start = Instant::now();
        loop {
            let element = self
                .client()
                .find(Locator::Css(css))
                .await
                .with_context(|| format!("finding {css}"))?;
            match act(element).await {
                Ok(()) => return Ok(()),
                Err(e) if replaced(&e) && start.elapsed() < RETRY_DEADLINE => {
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => return Err(e).with_context(|| format!("{doing} {css}")),
            }
        }
    }

    /// The rendered text of the first element `css` selects (`innerText`, trimmed).
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let value = self
            .run(
                "const e = document.querySelector(arguments[0]); return e && e.innerText.trim();",
                vec![json!(css)],
            )
            .await?;
        match value {
            Value::String(text) => Ok(text),
            _ => bail!("no element matches {css}"),
        }
    }

    /// How many elements `css` selects.
    pub async fn count(&self, css: &str) -> anyhow::Result<u64> {
        let value = self
            .run(
                "return document.querySelectorAll(arguments[0]).length;",
                vec![json!(css)],
            )
            .await?;
        value.as_u64().with_context(|| format!("a count: {value}"))
    }

    /// Writes a PNG of the viewport to `path`, creating its directory.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let png = self.client().screenshot().await.context("taking a screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session (Chromium quits) and stops chromedriver.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let client = self.client.take().expect("open until close");
        let closed = client.close().await.context("ending the WebDriver session");
        kill_group(&mut self.driver);
        closed
    }

    /// The WebDriver session's id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}

/// chromedriver's `getLog` (not in the W3C protocol, still served): the browser log entries
/// recorded since the last call, which are handed out once.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

/// chromedriver's `executeCdpCommand`: a DevTools protocol command to the page.
#[derive(Debug)]
struct Cdp {
    command: String,
    params: Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({"cmd": self.command, "params": self.params});
        (http::Method::POST, Some(body.to_string()))
    }
}

/// Whether a command failed on an element that a re-render replaced or something covered for a
/// moment: it did nothing, and the element can be looked up again.
fn replaced(error: &CmdError) -> bool {
    error.is_stale_element_reference()
        || matches!(
            error,
            CmdError::Standard(WebDriver {
                error: ErrorStatus::ElementClickIntercepted,
                ..
            })
        )
}

fn program(variable: &str, default: &str) -> PathBuf {
    std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// Kills chromedriver's process group (chromedriver and the Chromium it started: SIGKILL, by the
/// group's id, which is chromedriver's pid) and reaps chromedriver.
fn kill_group(driver: &mut Child) {
    if let Ok(None) = driver.try_wait() {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = driver.kill();
    }
    let _ = driver.wait();
}

/// Forwards chromedriver's stdout to the test's stderr and reports the port of its ready line.
fn watch_stdout(stdout: impl Read + Send + 'static) -> oneshot::Receiver<u16> {
    crate::process::watch_lines("chromedriver", stdout, |line| {
        line.strip_prefix(READY_PREFIX)?
            .trim_end_matches('.')
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::response::Html;
    use axum::routing::get;

    /// A page with a button that counts its clicks, a console error on demand and a known colour.
    const PAGE: &str = r#"<!doctype html>
<html><head><title>harness</title><link rel="icon" href="data:,"></head>
<body style="background: rgb(0, 128, 255)">
<p id="clicks">0</p>
<button id="button" onclick="document.getElementById('clicks').textContent = ++window.clicks">+1</button>
<input id="input">
<div id="live"></div>
<script>
window.clicks = 0;
// Redrawn every 250 ms, like a page with live updates: its button is replaced each time.
window.liveClicks = 0;
document.addEventListener('click', (e) => { if (e.target.id === 'live-button') window.liveClicks++; });
const draw = () => { document.getElementById('live').innerHTML = '<button id="live-button">live</button>'; };
draw();
setInterval(draw, 250);
setTimeout(() => { document.body.dataset.ready = "1"; }, 100);
</script>
</body></html>"#;

    async fn serve() -> String {
        let app = Router::new().route("/", get(|| async { Html(PAGE) }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    #[tokio::test]
    async fn drives_a_page_and_reads_its_console_errors() {
        let url = serve().await;
        let browser = Browser::start().await.unwrap();
        browser.goto(&url).await.unwrap();
        let deadline = Duration::from_secs(10);
        browser
            .wait_for(
                "the page is ready",
                "document.body.dataset.ready === '1'",
                deadline,
            )
            .await
            .unwrap();
        assert_eq!(browser.eval("document.title").await.unwrap(), "harness");
        assert_eq!(
            browser.eval("[innerWidth, innerHeight]").await.unwrap(),
            json!([WINDOW.0, WINDOW.1])
        );
        assert_eq!(
            browser.eval("Promise.resolve(6 * 7)").await.unwrap(),
            42,
            "promises are awaited"
        );
        assert_eq!(browser.console_errors().await.unwrap(), Vec::<String>::new());

        browser.click("#button").await.unwrap();
        browser.click("#button").await.unwrap();
        assert_eq!(browser.text("#clicks").await.unwrap(), "2");
        assert_eq!(browser.count("button").await.unwrap(), 2);
        browser.fill("#input", "abc").await.unwrap();
        assert_eq!(
            browser
                .eval("document.getElementById('input').value")
                .await
                .unwrap(),
            "abc"
        );
        assert!(browser.click("#absent").await.is_err());
        // A button replaced every 250 ms (a click takes some 60 ms: some find it stale): clicked once per click all the same.
        for _ in 0..20 {
            browser.click("#live-button").await.unwrap();
        }
        assert_eq!(browser.eval("window.liveClicks").await.unwrap(), 20);
        assert!(browser.text("#absent").await.is_err());

        browser.eval("console.error('boom', 42)").await.unwrap();
        browser.eval("console.warn('not an error')").await.unwrap();
        let errors = browser.console_errors().await.unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("console-api: ") && errors[0].contains("boom"),
            "{errors:?}"
        );
        // Kept: chromedriver hands an entry out once, the harness remembers it.
        assert_eq!(browser.console_errors().await.unwrap(), errors);
        // An uncaught exception is an error too.
        browser
            .eval("void setTimeout(() => { throw new Error('uncaught'); })")
            .await
            .unwrap();
        browser
            .wait_for(
                "the timer ran",
                "new Promise(r => setTimeout(() => r(true), 10))",
                deadline,
            )
            .await
            .unwrap();
        let errors = browser.console_errors().await.unwrap();
        assert!(errors.iter().any(|e| e.contains("uncaught")), "{errors:?}");
        // So is a request the server refuses.
        assert_eq!(
            browser
                .eval("fetch('/missing').then(r => r.status)")
                .await
                .unwrap(),
            404
        );
        let errors = browser.console_errors().await.unwrap();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("network: ") && e.contains("/missing") && e.contains("404")),
            "{errors:?}"
        );
        assert!(browser.assert_no_console_errors().await.is_err());

        let err = browser
            .wait_for("never", "window.nothing.here", Duration::from_millis(200))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("waiting until never") && err.contains(&url), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shots/page.png");
        browser.screenshot(&path).await.unwrap();
        let png = std::fs::read(&path).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // The IHDR chunk: width and height, big-endian.
        let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
        assert_eq!((size(16), size(20)), WINDOW);
        browser.close().await.unwrap();
    }

    #[tokio::test]
    async fn fails_without_chromium_or_chromedriver() {
        let missing = Path::new("/nonexistent/chromedriver");
        let err = Browser::start_with(missing, Path::new(CHROMIUM))
            .await
            .unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("/nonexistent/chromedriver") && err.contains("apt-get install"),
            "{err}"
        );
        let missing = Path::new("/nonexistent/chromium");
        let err = Browser::start_with(Path::new(CHROMEDRIVER), missing)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/chromium"), "{err}");
    }

    #[tokio::test]
    async fn drop_stops_chromedriver_and_chromium() {
        let browser = Browser::start().await.unwrap();
        let group = browser.driver.id();
        let members = || {
            // Every process whose process group is chromedriver's: `PID (COMM) STATE PPID PGRP`.
            std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
                .filter(|stat| {
                    let fields: Vec<&str> = stat
                        .rsplit_once(") ")
                        .map(|(_, rest)| rest.split(' ').collect())
                        .unwrap_or_default();
                    fields.get(2) == Some(&group.to_string().as_str()) && fields[0] != "Z"
                })
                .count()
        };
        assert!(members() >= 2, "chromedriver and Chromium share a process group");
        drop(browser);
        // SIGKILL is delivered at once, the processes' ends follow.
        crate::wait_until(
            "nothing of the browser is left",
            Duration::from_secs(10),
            || async { members() == 0 },
        )
        .await;
    }
}
