//! A real browser for the dashboard tests: Debian's `chromedriver` on a
//! free loopback port, driving headless Chromium with a fresh profile in a
//! temp dir, through the fantoccini WebDriver client.
//!
//! Chromium is required, never skipped: without it the test fails saying
//! how to install it (`.ci/run` installs it). `DADD_TEST_CHROMIUM` and
//! `DADD_TEST_CHROMEDRIVER` name other binaries.
//!
//! Cleanup: dropping the [`Browser`] ends the WebDriver session (Chromium
//! quits), then kills chromedriver's whole process group (Chromium and its
//! helpers included, had the session not ended).

use std::future::Future;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::procs::{pid_alive, ChildGuard};

/// How long chromedriver and the browser get to start.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Chromium's flags for a headless run in a container.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

/// The first of `candidates` that is a file, else `name` found on `PATH`.
fn find(env: &str, candidates: &[&str], name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .chain(
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join(name))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        )
        .find(|p| p.is_file())
}

fn missing(what: &str) -> ! {
    panic!(
        "{what} is not installed, and the dashboard tests need a real browser: \
         install Debian's packages with `apt-get update && apt-get install -y chromium chromium-driver` \
         (.ci/run does this), or point DADD_TEST_CHROMIUM and DADD_TEST_CHROMEDRIVER at them"
    )
}

/// `target/` (this test executable is in `target/<profile>/deps`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.ancestors()
        .nth(3)
        .expect("the test executable is in target/<profile>/deps")
        .to_path_buf()
}

/// Where screenshots go: `target/dashboard-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    target_dir().join("dashboard-screenshots")
}

/// A headless Chromium under chromedriver, with one WebDriver session.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: Option<ChildGuard>,
    driver_url: String,
    session: Option<String>,
    /// Chromium's profile, and where downloads land.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("driver_url", &self.driver_url)
            .finish()
    }
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session.
    pub async fn start() -> Browser {
        let chromium = find(
            "DADD_TEST_CHROMIUM",
            &["/usr/lib/chromium/chromium", "/usr/bin/chromium"],
            "chromium",
        )
        .unwrap_or_else(|| missing("chromium"));
        let chromedriver = find(
            "DADD_TEST_CHROMEDRIVER",
            &["/usr/bin/chromedriver"],
            "chromedriver",
        )
        .unwrap_or_else(|| missing("chromedriver (Debian package chromium-driver)"));
        let dir = tempfile::Builder::new()
            .prefix("dadd-browser-")
            .tempdir()
            .expect("browser temp dir");
        for sub in ["profile", "downloads"] {
            std::fs::create_dir(dir.path().join(sub)).expect("browser dirs");
        }
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("its address").port()
        };
        let log = std::fs::File::create(dir.path().join("chromedriver.log")).expect("driver log");
        let err = log.try_clone().expect("driver log");
        let mut cmd = Command::new(&chromedriver);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            // Its own group, so one signal reaches it and every browser process.
            .process_group(0);
        let driver = ChildGuard::new(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display())),
        );
        let driver_url = format!("http://127.0.0.1:{port}");
        let status = format!("{driver_url}/status");
        let start = Instant::now();
        loop {
            let ready = ureq::get(&status)
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(
                pid_alive(driver.pid()),
                "chromedriver exited at start; its log:\n{}",
                std::fs::read_to_string(dir.path().join("chromedriver.log")).unwrap_or_default()
            );
            assert!(
                start.elapsed() < START_DEADLINE,
                "chromedriver did not answer {status} within {START_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ));
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": args,
                "prefs": {
                    "download.default_directory": dir.path().join("downloads"),
                    "download.prompt_for_download": false,
                    "download.directory_upgrade": true,
                    "safebrowsing.enabled": false,
                },
            },
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!("a JSON object"),
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start {}: {e}; its log:\n{}",
                    chromium.display(),
                    std::fs::read_to_string(dir.path().join("chromedriver.log"))
                        .unwrap_or_default()
                )
            });
        let session = client.session_id().await.ok().flatten();
        Browser {
            client,
            driver: Some(driver),
            driver_url,
            session,
            dir,
        }
    }

    /// Where the browser saves downloads.
    pub fn downloads(&self) -> PathBuf {
        self.dir.path().join("downloads")
    }

    /// A scratch dir beside the profile (files to upload).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// The visible text of the first element matching `css`, if any.
    pub async fn text(&self, css: &str) -> Option<String> {
        let e = self.client.find(Locator::Css(css)).await.ok()?;
        e.text().await.ok()
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Clicks the first element matching `css`.
    pub async fn click(&self, css: &str) {
        let e = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"));
        e.click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    /// Saves a PNG of the viewport as `target/dashboard-screenshots/NAME.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot failed: {e}"));
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session so Chromium quits by itself...
        if let Some(id) = &self.session {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .into();
            let _ = agent
                .delete(&format!("{}/session/{id}", self.driver_url))
                .call();
        }
        // ...then the driver's whole group: anything left of the browser.
        if let Some(driver) = self.driver.take() {
            let _ = killpg(Pid::from_raw(driver.pid()), Signal::SIGKILL);
            drop(driver);
        }
        // Chromium's crash handlers leave the group for sessions of their
        // own; they (and any straggler) name the profile dir on their
        // command line, which no other process does.
        let start = Instant::now();
        loop {
            let left = processes_naming(self.dir.path());
            for pid in &left {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            if left.is_empty() || start.elapsed() > Duration::from_secs(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Live processes (zombies aside) whose command line mentions `dir`.
fn processes_naming(dir: &Path) -> Vec<i32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
                && pid_alive(*pid)
        })
        .collect()
}

/// Polls `f` until it returns `Some`, at most `deadline`; panics naming
/// `what` and `last`, what the page showed at the last try.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
