//! The dashboard (`GET /`), `GET /v1/watch` and the rerun route, end to end: a real
//! controller over a temporary folder (process runtime), plain HTTP for what `curl` sees,
//! and a real headless Chromium driven through chromedriver (fantoccini) for what a person
//! sees once the page's script ran.
//!
//! The browser tests need Debian's `chromium` and `chromium-driver`
//! (`source scripts/services.sh && ensure_chromium`). Without them they fail when
//! `SKIFF_REQUIRE_SERVICES=1` (CI sets it), and otherwise say loudly that they did not run.
//! `SKIFF_DASHBOARD_SCREENSHOT=docs/dashboard.png` saves the main view of the live-update
//! test (the picture in the README).

mod support;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{Workspace, free_port};

const HOSTILE_KEY: &str = "<script>alert(1)</script>";
const HOSTILE_FILE: &str = "<img src=x onerror=alert(4)>";
/// A file name is a task's name unless `metadata.name` is set, and a name has a strict
/// charset; the task key (its path) has not.
const NAMED: &str = "metadata:\n  name: hostile-file\n";
const HOSTILE_LOG: &str = r#"<b id="injected">bold</b><img src=x onerror="document.title=1">"#;

/// Runs blocking work (file waits, blocking HTTP) from an async test without stalling its
/// runtime; reqwest's blocking client must not even be dropped on an async worker.
fn sync<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// Waits, without blocking the async workers, until `check` holds.
async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a controller listening on a free loopback port; waits until it answers.
fn controller(ws: &Workspace, extra: &[&str]) -> (support::Controller, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut flags = vec!["--listen", listen.as_str()];
    flags.extend_from_slice(extra);
    let ctl = ws.controller(&flags);
    let base = format!("http://{listen}");
    wait_answers(ws, &base);
    (ctl, base)
}

fn wait_answers(ws: &Workspace, base: &str) {
    let client = http();
    ws.wait_until(Duration::from_secs(20), "the controller to answer /healthz", || {
        client.get(format!("{base}/healthz")).send().is_ok()
    });
}

// ---- the browser ----

/// Chromium and chromedriver, or `None` when absent and services are not required.
fn chromium_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    let path = |var: &str, default: &str| PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_string()));
    let chromium = path("SKIFF_CHROMIUM", "/usr/bin/chromium");
    let driver = path("SKIFF_CHROMEDRIVER", "/usr/bin/chromedriver");
    if chromium.is_file() && driver.is_file() {
        return Some((chromium, driver));
    }
    let why = format!(
        "no {} or {}; run `source scripts/services.sh && ensure_chromium`",
        chromium.display(),
        driver.display()
    );
    if std::env::var("SKIFF_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("{test}: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    None
}

/// A headless Chromium under a chromedriver this test started, in a process group of
/// their own: dropping it kills that group (the driver and the browser it launched).
struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(chromium: PathBuf, driver: PathBuf) -> Browser {
        let port = free_port();
        let profile = tempfile::Builder::new()
            .prefix("skiff-chromium-")
            .tempdir()
            .expect("profile dir");
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let mut browser = Browser {
            driver,
            client: None,
            _profile: profile,
        };
        let url = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(40), "chromedriver to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1200,760",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a chromedriver session");
        browser.client = Some(client);
        browser
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    async fn js(&self, script: &str) -> Value {
        self.c().execute(script, vec![]).await.expect("script runs")
    }

    /// (task, phase badge text) of every row the page shows, in order.
    async fn rows(&self) -> Vec<(String, String)> {
        let rows = self
            .js(
                "return Array.from(document.querySelectorAll('#tasks tbody tr[data-task]'))\
                 .map(tr => [tr.querySelector('td.task a').textContent, tr.querySelector('.badge').textContent]);",
            )
            .await;
        serde_json::from_value(rows).expect("rows")
    }

    async fn phase_shown(&self, task: &str) -> Option<String> {
        self.rows().await.into_iter().find(|(t, _)| t == task).map(|(_, p)| p)
    }

    /// The page's script has fetched the list and follows /v1/watch.
    async fn wait_live(&self) {
        eventually(Duration::from_secs(30), "the page to be live", || async {
            self.js("return document.body.dataset.live === '1' && Number(document.body.dataset.loaded || 0) > 0;")
                .await
                == json!(true)
        })
        .await;
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group this test created: chromedriver and every browser process it started.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.driver.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.driver.wait();
    }
}

// ---- plain HTTP ----

#[test]
fn curl_root_returns_a_table_with_every_task_and_a_strict_csp() {
    let ws = Workspace::new();
    let mut keys = Vec::new();
    for i in 0..12 {
        let key = format!("team{}/job-{i}", i % 3);
        ws.task(&format!("{key}.yaml"), if i == 5 { "exit 3" } else { "true" }, "");
        keys.push(key);
    }
    ws.task(&format!("{HOSTILE_FILE}.yaml"), "true", NAMED);
    keys.push(HOSTILE_FILE.to_string());
    let (_ctl, base) = controller(&ws, &[]);
    for key in &keys {
        ws.wait_until(Duration::from_secs(30), &format!("{key} to finish"), || {
            matches!(ws.phase(key).as_deref(), Some("Succeeded" | "Failed"))
        });
    }
    let response = http().get(format!("{base}/")).send().expect("GET /");
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = response.text().unwrap();
    assert_eq!(page.matches("<tr data-task=").count(), keys.len(), "{page}");
    for key in &keys {
        let phase = ws.phase(key).unwrap();
        let escaped = key.replace('<', "&lt;").replace('>', "&gt;");
        assert!(
            page.contains(&format!(r#"<tr data-task="{escaped}" data-phase="{phase}">"#)),
            "{key} as {phase} in\n{page}"
        );
    }
    assert!(!page.contains("<img src=x"), "{page}");
    assert!(page.contains(r#"Failed <b>1</b>"#), "the counts: {page}");
    // The script is a file of the binary's, and the page loads it by address only.
    let js = http().get(format!("{base}/assets/app.js")).send().unwrap();
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let js = js.text().unwrap();
    assert!(js.contains("/v1/watch") && !js.contains("eval(") && !js.contains("innerHTML"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no address elsewhere: {page}"
    );
    // The one-task view, and one that does not exist.
    let one = http().get(format!("{base}/tasks/team2/job-5")).send().unwrap();
    assert_eq!(one.status(), 200);
    let one = one.text().unwrap();
    assert!(one.contains("<h3>Attempts</h3>") && one.contains("ExitCode"), "{one}");
    assert_eq!(http().get(format!("{base}/tasks/nope")).send().unwrap().status(), 404);
}

/// Reads `/v1/watch` on a thread: (event, id, data) per message.
fn watch(base: &str, token: Option<&str>) -> mpsc::Receiver<(String, Option<u64>, Value)> {
    let client = reqwest::blocking::Client::builder().build().unwrap();
    let mut request = client.get(format!("{base}/v1/watch"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().expect("GET /v1/watch");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut event, mut id, mut data) = (String::new(), None, String::new());
        for line in BufReader::new(response).lines() {
            let Ok(line) = line else { return };
            if line.is_empty() {
                if !event.is_empty() {
                    let value = serde_json::from_str(&data).unwrap_or(Value::Null);
                    if tx.send((std::mem::take(&mut event), id.take(), value)).is_err() {
                        return;
                    }
                }
                data.clear();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_string();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    });
    rx
}

/// The events about `task` until one satisfies `last`.
fn events_until(
    rx: &mpsc::Receiver<(String, Option<u64>, Value)>,
    task: &str,
    last: impl Fn(&str, &Value) -> bool,
) -> Vec<(String, Option<u64>, Value)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (event, id, data) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no more events for {task}; seen {seen:#?}"));
        assert_ne!(event, "resync", "a reader this fast never lags");
        if data["task"] == task {
            let done = last(&event, &data);
            seen.push((event, id, data));
            if done {
                return seen;
            }
        }
    }
}

#[test]
fn watch_streams_one_event_per_status_change_and_rerun_runs_a_final_task_again() {
    let ws = Workspace::new();
    let (_ctl, base) = controller(&ws, &[]);
    let rx = watch(&base, None);
    let (event, _, data) = rx.recv_timeout(Duration::from_secs(10)).expect("the ready event");
    assert_eq!(event, "ready");
    assert!(data["seq"].is_u64());

    ws.task("w.yaml", &format!("{}; sleep 0.3", ws.ledger_line()), "");
    let first = events_until(&rx, "w", |e, d| e == "status" && d["phase"] == "Succeeded");
    let order = ["Pending", "Creating", "Running", "Deleting", "Succeeded"];
    let phases: Vec<&str> = first.iter().map(|(_, _, d)| d["phase"].as_str().unwrap()).collect();
    let rank: Vec<usize> = phases
        .iter()
        .map(|p| order.iter().position(|o| o == p).expect("a lifecycle phase"))
        .collect();
    assert!(rank.windows(2).all(|w| w[0] <= w[1]), "in lifecycle order: {phases:?}");
    for needed in ["Creating", "Deleting", "Succeeded"] {
        assert!(phases.contains(&needed), "{needed} in {phases:?}");
    }
    // One event per write: no event repeats the one before, and ids only grow.
    for pair in first.windows(2) {
        assert_ne!(pair[0].2, pair[1].2, "a repeated event");
        assert!(pair[0].1 < pair[1].1);
    }
    let file = ws.status("w").unwrap();
    assert_eq!(first.last().unwrap().2, file, "the last event is the status as written");

    // A running task is refused; a finished one runs again, announced by a `deleted` event.
    ws.task("busy.yaml", "sleep 30", "");
    ws.wait_phase("busy", "Running", Duration::from_secs(20));
    let refused = http().post(format!("{base}/v1/tasks/busy/rerun")).send().unwrap();
    assert_eq!(refused.status(), 409);
    assert_eq!(ws.phase("busy").as_deref(), Some("Running"));
    assert_eq!(
        http()
            .post(format!("{base}/v1/tasks/none/rerun"))
            .send()
            .unwrap()
            .status(),
        404
    );
    // However it is encoded, a key never reaches outside the root.
    for outside in ["%2E%2E%2Fw", "jobs%2F%2E%2E%2F%2E%2E%2Fw", ".skiff/secret"] {
        let url = format!("{base}/v1/tasks/{outside}/rerun");
        assert_eq!(http().post(&url).send().unwrap().status(), 400, "{url}");
        let url = format!("{base}/tasks/{outside}");
        assert_eq!(http().get(&url).send().unwrap().status(), 400, "{url}");
    }
    // Events of `w` from before the rerun (a relist may look at a just-finished task once
    // more and refresh its observedAt) are not the rerun's.
    while rx.try_recv().is_ok() {}
    let accepted = http().post(format!("{base}/v1/tasks/w/rerun")).send().unwrap();
    assert_eq!(accepted.status(), 202);
    let second = events_until(&rx, "w", |e, d| e == "status" && d["phase"] == "Succeeded");
    let deleted = second.iter().position(|e| e.0 == "deleted");
    assert!(deleted.is_some(), "the rerun announced by a deleted event: {second:#?}");
    assert_eq!(ws.ledger_lines(), vec!["w 1", "w 1"], "ran again from attempt 1");
    let terminated = http().post(format!("{base}/v1/tasks/busy/terminate")).send().unwrap();
    assert_eq!(terminated.status(), 202);
    ws.wait_phase("busy", "Failed", Duration::from_secs(20));
}

// ---- in the browser ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_lists_tasks_and_a_badge_changes_live_without_a_reload() {
    let Some((chromium, driver)) = chromium_or_skip("the_table_lists_tasks_and_a_badge_changes_live_without_a_reload")
    else {
        return;
    };
    let ws = Workspace::new();
    let gate = ws.root().join("gate");
    // Keeps one task running through the screenshot.
    let gate2 = ws.root().join("gate2");
    for i in 0..5 {
        ws.task(&format!("batch/resize-{i}.yaml"), &format!("sleep 0.{}", i + 1), "");
    }
    ws.task("reports/broken.yaml", "echo cannot open input; exit 3", "");
    ws.task("fan.yaml", "sleep 0.2", "  completions: 3\n");
    ws.task(
        "held.yaml",
        &format!("while [ ! -e {} ]; do sleep 0.1; done", gate.display()),
        "",
    );
    ws.task(
        "render/final-cut.yaml",
        &format!(
            "i=0; while [ ! -e {} ]; do i=$((i+1)); echo frame $i; sleep 0.2; done",
            gate2.display()
        ),
        "",
    );
    let (ctl, base) = sync(|| controller(&ws, &[]));
    let finals = ["batch/resize-0", "batch/resize-4", "reports/broken", "fan"];
    sync(|| {
        for task in finals {
            ws.wait_until(Duration::from_secs(30), &format!("{task} to finish"), || {
                matches!(ws.phase(task).as_deref(), Some("Succeeded" | "Failed"))
            });
        }
        ws.wait_phase("held", "Running", Duration::from_secs(20));
        ws.wait_phase("render/final-cut", "Running", Duration::from_secs(20));
    });

    let browser = Browser::start(chromium, driver).await;
    browser.c().goto(&format!("{base}/")).await.expect("open the page");
    browser.wait_live().await;
    let rows = browser.rows().await;
    assert_eq!(rows.len(), 9, "{rows:?}");
    for (task, shown) in &rows {
        assert_eq!(Some(shown.clone()), ws.phase(task), "{task}");
    }
    let fan = browser
        .js("return document.querySelector('tr[data-task=\"fan\"] td:nth-child(8)').textContent;")
        .await;
    assert_eq!(fan, json!("3/3"));

    // A mark that a reload would wipe out.
    browser.js("window.__skiffMark = 'same page'; return true;").await;
    std::fs::write(&gate, b"").unwrap();
    sync(|| ws.wait_phase("held", "Succeeded", Duration::from_secs(20)));
    eventually(Duration::from_secs(20), "the held badge to turn Succeeded", || async {
        browser.phase_shown("held").await.as_deref() == Some("Succeeded")
    })
    .await;
    assert_eq!(browser.js("return window.__skiffMark;").await, json!("same page"));
    let counts = browser
        .js("return document.querySelector('#counts [data-phase=\"Succeeded\"] b').textContent;")
        .await;
    assert_eq!(counts, json!("7"));

    // Filter by text, by phase; sort by a column.
    browser
        .c()
        .find(Locator::Css("#filter-text"))
        .await
        .unwrap()
        .send_keys("resize")
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the text filter", || async {
        browser.rows().await.len() == 5
    })
    .await;
    browser.js("const s = document.getElementById('filter-text'); s.value = ''; s.dispatchEvent(new Event('input')); return 1;").await;
    browser
        .c()
        .find(Locator::Css("#counts [data-phase=\"Failed\"]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the phase filter", || async {
        browser.rows().await == vec![("reports/broken".to_string(), "Failed".to_string())]
    })
    .await;
    browser
        .c()
        .find(Locator::Css("#counts [data-phase=\"Failed\"]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .c()
        .find(Locator::Css("th[data-sort=\"task\"]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the reverse sort", || async {
        let rows = browser.rows().await;
        rows.len() == 9 && rows[0].0 == "reports/broken" && rows[8].0 == "batch/resize-0"
    })
    .await;
    browser
        .c()
        .find(Locator::Css("th[data-sort=\"task\"]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let chart_bars = browser
        .js("return document.querySelectorAll('#chart svg rect').length;")
        .await;
    assert_eq!(chart_bars, json!(8), "a bar per finished task");

    if let Ok(path) = std::env::var("SKIFF_DASHBOARD_SCREENSHOT") {
        let png = browser.c().screenshot().await.expect("a screenshot");
        std::fs::write(&path, png).expect("write the screenshot");
    }

    // The one-task view: attempts, the log tail, a link back.
    browser.c().goto(&format!("{base}/tasks/reports/broken")).await.unwrap();
    browser.wait_live().await;
    let log = browser
        .js("return document.querySelector('pre.log').textContent;")
        .await;
    assert!(log.as_str().unwrap_or("").contains("cannot open input"), "{log}");

    // A running task's output, followed live: the status holds no log tail yet, and the
    // page's grows without a reload.
    browser
        .c()
        .goto(&format!("{base}/tasks/render/final-cut"))
        .await
        .unwrap();
    browser.wait_live().await;
    let log = "return document.querySelector('pre.log').textContent;";
    let frames = |text: &Value| -> usize {
        text.as_str()
            .unwrap_or("")
            .lines()
            .filter(|l| l.starts_with("frame "))
            .count()
    };
    let seen = std::cell::Cell::new(0);
    eventually(Duration::from_secs(20), "frames in the log", || async {
        seen.set(frames(&browser.js(log).await));
        seen.get() >= 2
    })
    .await;
    assert_eq!(
        ws.status("render/final-cut").unwrap()["logTail"],
        Value::Null,
        "not from the status"
    );
    browser.js("window.__skiffMark = 'same page'; return true;").await;
    eventually(Duration::from_secs(20), "the log to grow", || async {
        frames(&browser.js(log).await) >= seen.get() + 3
    })
    .await;
    assert_eq!(browser.js("return window.__skiffMark;").await, json!("same page"));
    std::fs::write(&gate2, b"").unwrap();
    sync(|| ws.wait_phase("render/final-cut", "Succeeded", Duration::from_secs(20)));
    eventually(Duration::from_secs(20), "the badge of the task view", || async {
        browser
            .js("return document.querySelector('#task-body .badge').textContent;")
            .await
            == json!("Succeeded")
    })
    .await;
    browser.close().await;
    drop(ctl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_log_lines_render_as_text() {
    let Some((chromium, driver)) = chromium_or_skip("hostile_names_and_log_lines_render_as_text") else {
        return;
    };
    let ws = Workspace::new();
    // A task key with a slash takes a folder: `<script>alert(1)<` / `script>.yaml`.
    ws.task(
        &format!("{HOSTILE_KEY}.yaml"),
        &format!("echo '{HOSTILE_LOG}'"),
        "metadata:\n  name: hostile-key\n",
    );
    ws.task(
        &format!("{HOSTILE_FILE}.yaml"),
        &format!("echo '{HOSTILE_LOG}'; exit 1"),
        NAMED,
    );
    let (_ctl, base) = sync(|| controller(&ws, &[]));
    let page = sync(|| {
        ws.wait_phase(HOSTILE_KEY, "Succeeded", Duration::from_secs(30));
        ws.wait_phase(HOSTILE_FILE, "Failed", Duration::from_secs(30));
        http().get(format!("{base}/")).send().unwrap().text().unwrap()
    });
    assert!(!page.contains("<script>alert") && !page.contains("<img"), "{page}");

    let browser = Browser::start(chromium, driver).await;
    browser.c().goto(&format!("{base}/")).await.unwrap();
    browser.wait_live().await;
    let mut names: Vec<String> = browser.rows().await.into_iter().map(|(t, _)| t).collect();
    names.sort();
    let mut expected = vec![HOSTILE_KEY.to_string(), HOSTILE_FILE.to_string()];
    expected.sort();
    assert_eq!(names, expected, "the names, as text");
    let injected = "return [document.querySelectorAll('img').length, document.querySelectorAll('script').length, \
                    !!document.getElementById('injected'), document.title];";
    assert_eq!(browser.js(injected).await, json!([0, 1, false, "skiff tasks"]));

    // Follow the hostile link to its one-task view: the log line is text too.
    let link = browser.c().find(Locator::Css("td.task a")).await.unwrap();
    let href = link.attr("href").await.unwrap().unwrap_or_default();
    assert!(href.starts_with("/tasks/%3C"), "{href}");
    browser
        .c()
        .goto(&format!(
            "{base}/tasks/{}",
            urlencoding::encode(HOSTILE_KEY).replace("%2F", "/")
        ))
        .await
        .unwrap();
    browser.wait_live().await;
    let shown = browser
        .js("return [document.getElementById('task-title').textContent, document.querySelector('pre.log').textContent];")
        .await;
    assert_eq!(shown[0], json!(HOSTILE_KEY));
    assert!(shown[1].as_str().unwrap_or("").contains(HOSTILE_LOG), "{shown}");
    let after = browser.js(injected).await;
    assert_eq!(
        (&after[0], &after[1], &after[2]),
        (&json!(0), &json!(1), &json!(false)),
        "{after}"
    );
    assert!(browser.c().get_alert_text().await.is_err(), "no alert opened");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_needs_the_token_and_works_with_it() {
    let Some((chromium, driver)) = chromium_or_skip("terminate_needs_the_token_and_works_with_it") else {
        return;
    };
    let ws = Workspace::new();
    let token = "s3cret-token";
    let token_file = ws.root().join(".token");
    std::fs::write(&token_file, token).unwrap();
    ws.task("slow.yaml", "sleep 60", "");
    let token_flag = token_file.display().to_string();
    let (_ctl, base) = sync(|| controller(&ws, &["--api-token-file", &token_flag]));
    let terminate = format!("{base}/v1/tasks/slow/terminate");
    sync(|| {
        ws.wait_phase("slow", "Running", Duration::from_secs(20));

        // Without the token (or with a wrong one): 401, and nothing changes.
        let client = http();
        assert_eq!(client.post(&terminate).send().unwrap().status(), 401);
        assert_eq!(
            client.post(&terminate).bearer_auth("wrong").send().unwrap().status(),
            401
        );
        assert_eq!(
            client
                .post(format!("{base}/v1/tasks/slow/rerun"))
                .send()
                .unwrap()
                .status(),
            401
        );
        assert_eq!(client.get(format!("{base}/v1/watch")).send().unwrap().status(), 401);
        let locked = client.get(format!("{base}/")).send().unwrap().text().unwrap();
        assert_eq!(locked.matches("<tr data-task=").count(), 0, "{locked}");
        let open = client
            .get(format!("{base}/"))
            .bearer_auth(token)
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert_eq!(open.matches("<tr data-task=").count(), 1, "{open}");
        // Another site's page cannot use the API through the user's browser, token or not.
        let evil = client
            .post(&terminate)
            .bearer_auth(token)
            .header("origin", "http://evil.example");
        assert_eq!(evil.send().unwrap().status(), 403);
        let evil = client
            .post(&terminate)
            .bearer_auth(token)
            .header("sec-fetch-site", "cross-site");
        assert_eq!(evil.send().unwrap().status(), 403);
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(ws.phase("slow").as_deref(), Some("Running"));
    });

    let browser = Browser::start(chromium, driver).await;
    browser.c().goto(&format!("{base}/")).await.unwrap();
    eventually(Duration::from_secs(20), "the token form", || async {
        browser
            .js("return !document.getElementById('token-form').classList.contains('hidden');")
            .await
            == json!(true)
    })
    .await;
    let buttons = "return document.querySelectorAll('button[data-action]').length;";
    assert_eq!(browser.js(buttons).await, json!(0), "no action without the token");
    browser
        .c()
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    browser
        .c()
        .find(Locator::Css("#token-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_live().await;
    let button = browser
        .c()
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("tr[data-task=\"slow\"] button[data-action=\"terminate\"]"))
        .await
        .expect("a terminate button");
    button.click().await.unwrap();
    sync(|| ws.wait_phase("slow", "Failed", Duration::from_secs(20)));
    let status = ws.status("slow").unwrap();
    assert_eq!(status["attempts"][0]["completedBy"], "terminate");
    eventually(Duration::from_secs(20), "the badge to turn Failed", || async {
        browser.phase_shown("slow").await.as_deref() == Some("Failed")
    })
    .await;

    // Re-run from the page: the task starts again from attempt 1 (then is stopped again).
    let rerun = browser
        .c()
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("tr[data-task=\"slow\"] button[data-action=\"rerun\"]"))
        .await
        .expect("a re-run button");
    rerun.click().await.unwrap();
    sync(|| ws.wait_phase("slow", "Running", Duration::from_secs(20)));
    eventually(Duration::from_secs(20), "the badge to turn Running", || async {
        browser.phase_shown("slow").await.as_deref() == Some("Running")
    })
    .await;
    sync(|| {
        let stop = http().post(&terminate).bearer_auth(token).send().unwrap();
        assert_eq!(stop.status(), 202);
        ws.wait_phase("slow", "Failed", Duration::from_secs(20));
    });
    // The token lives in the tab's session storage, not in a cookie or the address.
    let kept = browser
        .js("return [sessionStorage.getItem('skiff.apiToken'), document.cookie, location.href];")
        .await;
    assert_eq!(kept, json!([token, "", format!("{base}/")]));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_keeps_working_after_the_controller_restarts() {
    let Some((chromium, driver)) = chromium_or_skip("the_page_keeps_working_after_the_controller_restarts") else {
        return;
    };
    let ws = Workspace::new();
    ws.task("before.yaml", "true", "");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let base = format!("http://{listen}");
    let first = ws.controller(&["--listen", &listen]);
    sync(|| {
        wait_answers(&ws, &base);
        ws.wait_phase("before", "Succeeded", Duration::from_secs(20));
    });

    let browser = Browser::start(chromium, driver).await;
    browser.c().goto(&format!("{base}/")).await.unwrap();
    browser.wait_live().await;
    browser.js("window.__skiffMark = 'same page'; return true;").await;

    assert_eq!(sync(|| first.terminate()), Some(0));
    eventually(
        Duration::from_secs(10),
        "the page to notice the controller is gone",
        || async { browser.js("return document.body.dataset.live;").await == json!("0") },
    )
    .await;
    // Changed while nobody served the page: the list fetched on reconnect brings it.
    ws.task("during.yaml", "true", "");
    let second = ws.controller(&["--listen", &listen]);
    sync(|| {
        wait_answers(&ws, &base);
        ws.wait_phase("during", "Succeeded", Duration::from_secs(20));
    });
    eventually(
        Duration::from_secs(15),
        "the page to show the task made while it was away",
        || async { browser.phase_shown("during").await.as_deref() == Some("Succeeded") },
    )
    .await;
    // And it is live again: a task made now appears as it runs.
    ws.task("after.yaml", "sleep 0.5", "");
    eventually(Duration::from_secs(30), "the task made after the restart", || async {
        browser.phase_shown("after").await.as_deref() == Some("Succeeded")
    })
    .await;
    assert_eq!(
        browser.js("return window.__skiffMark;").await,
        json!("same page"),
        "never reloaded"
    );
    browser.close().await;
    drop(second);
}
