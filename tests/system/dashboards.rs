//! Dashboard tests: the device's HTTP endpoint (thumbnails, JSON search) over real sockets, and
//! its search page in a real headless browser (Debian's chromium through chromedriver), on a
//! real broker, cloud and device with the bundled model.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use edgeclip::client::Client;
use edgeclip_device::Device;
use edgeclip_messages::dashboard::{SearchResponse, SearchResults};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;

use crate::util::*;

/// (status, content type, body) of one HTTP request to the device.
async fn http(method: &str, url: &str, body: &str) -> (u16, String, Vec<u8>) {
    let client: HttpClient<_, Full<bytes::Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .expect("request");
    let response = bounded("HTTP request", client.request(request))
        .await
        .expect("HTTP answer");
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = bounded("HTTP body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, kind, body)
}

/// A system whose device does not watch its folders (so a picture can be damaged behind its
/// back), with the HTTP endpoint on 127.0.0.1 and a free port.
async fn start_unwatched(id: &str, folder: &Path) -> (System, String) {
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let cloud = bounded(
        "cloud start",
        edgeclip_cloud::Cloud::start(cloud_config(&broker.url(), &format!("{id}-w"))),
    )
    .await
    .expect("cloud");
    let state = tempfile::tempdir().expect("state");
    let mut config = device_config(&broker.url(), id, &[folder], state.path());
    config.capture.watch = false;
    let device = bounded("device start", Device::start(config))
        .await
        .expect("device");
    wait_idle(&device).await;
    let addr = device
        .http_addr()
        .await
        .expect("http addr")
        .expect("the HTTP endpoint is on by default");
    (
        System {
            state,
            broker,
            cloud: Some(cloud),
            device,
        },
        format!("http://{addr}"),
    )
}

fn results(response: SearchResponse) -> SearchResults {
    match response {
        SearchResponse::Results(r) => r,
        SearchResponse::Error(e) => panic!("search failed: {}", e.error),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thumbnails_are_served_by_id_cached_and_bad_ids_or_pictures_get_clean_errors() {
    let pictures = copy_pictures(&data("shapes"));
    let (system, base) = start_unwatched("thumbs", pictures.path()).await;

    // The JSON search of the page is the device's own search: same hits as over MQTT.
    let (status, kind, body) = http(
        "POST",
        &format!("{base}/api/search"),
        r#"{"text":"a red circle","k":5}"#,
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (200, "application/json"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let page_hits = results(serde_json::from_slice(&body).expect("search JSON"));
    let mut client = Client::connect(&system.broker.url(), Duration::from_secs(5))
        .await
        .expect("connect");
    let mqtt_hits = results(
        bounded(
            "search",
            client.search("thumbs", "a red circle", Some(5), Duration::from_secs(20)),
        )
        .await
        .expect("answer"),
    );
    let ids = |r: &SearchResults| {
        r.hits
            .iter()
            .map(|h| (h.id.clone(), (h.score * 1e4).round() as i64))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&page_hits), ids(&mqtt_hits));
    let (status, _, body) = http("POST", &format!("{base}/api/search"), r#"{"txt":"x"}"#).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    // Every hit's thumbnail: a JPEG no larger than thumb_side, the picture's shape, cached.
    let first = &page_hits.hits[0];
    assert_eq!(
        first.thumb_url.as_deref(),
        Some(format!("{base}/thumb/{}", first.id).as_str())
    );
    let (status, kind, jpeg) = http("GET", first.thumb_url.as_deref().expect("url"), "").await;
    assert_eq!((status, kind.as_str()), (200, "image/jpeg"));
    let thumb = image::load_from_memory(&jpeg).expect("the thumbnail decodes");
    let side = 256; // http.thumb_side's default
    assert!(thumb.width() <= side && thumb.height() <= side && thumb.width() > 0);
    let (w, h) = (first.width as f64, first.height as f64);
    assert!(
        ((thumb.width() as f64 / thumb.height() as f64) - w / h).abs() < 0.05,
        "aspect kept"
    );
    let cache: Vec<PathBuf> = std::fs::read_dir(system.state.path().join("thumbs"))
        .expect("cache folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(cache.len(), 1, "{cache:?}");
    assert_eq!(std::fs::read(&cache[0]).expect("cached"), jpeg);
    let (_, _, again) = http("GET", &format!("{base}/thumb/{}", first.id), "").await;
    assert_eq!(again, jpeg, "served from the cache");

    // Unknown ids: 404, not a crash.
    for bad in ["0000000000000000", "nothex", "..%2F..%2Fetc%2Fpasswd"] {
        let (status, _, _) = http("GET", &format!("{base}/thumb/{bad}"), "").await;
        assert_eq!(status, 404, "{bad}");
    }
    // A picture damaged after indexing: a clear error naming it, and the device keeps serving.
    let second = &page_hits.hits[1];
    std::fs::write(&second.path, b"this is no longer a picture").expect("damage");
    let (status, kind, body) = http("GET", &format!("{base}/thumb/{}", second.id), "").await;
    let reason = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 422, "{reason}");
    assert!(
        kind.starts_with("text/plain") && reason.contains(&second.path),
        "{reason}"
    );
    std::fs::remove_file(&page_hits.hits[2].path).expect("remove");
    let (status, _, _) = http("GET", &format!("{base}/thumb/{}", page_hits.hits[2].id), "").await;
    assert_eq!(status, 404, "a picture gone from disk");
    let (status, _, _) = http("GET", &format!("{base}/thumb/{}", first.id), "").await;
    assert_eq!(status, 200);
    let (status, kind, page) = http("GET", &format!("{base}/"), "").await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/html") && String::from_utf8_lossy(&page).contains("id=\"q\""));
    client.disconnect().await;
    system.stop().await;
}

// ---- the search page in a real browser ----

/// chromedriver on a free port, driving Debian's chromium.
pub(crate) fn chromedriver() -> (Killed, u16) {
    let chromium = Path::new("/usr/bin/chromium");
    let driver = Path::new("/usr/bin/chromedriver");
    assert!(
        chromium.is_file() && driver.is_file(),
        "chromium or chromedriver is not installed: the README's test command (bash .ci/run) installs them"
    );
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Killed(child);
    wait_until_blocking("chromedriver to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
    });
    (driver, port)
}

pub(crate) async fn browser(port: u16, profile: &Path) -> fantoccini::Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1200,900", format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    bounded(
        "browser session",
        fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}")),
    )
    .await
    .expect("a chromium session")
}

/// Waits until `script` (a JavaScript function body) returns something truthy; returns it.
pub(crate) async fn wait_js(
    browser: &fantoccini::Client,
    what: &str,
    script: &str,
) -> serde_json::Value {
    wait_until(
        &format!("the page to show {what}"),
        TEST_TIMEOUT,
        || async {
            let value = browser.execute(script, vec![]).await.expect("script runs");
            let truthy = match &value {
                serde_json::Value::Null | serde_json::Value::Bool(false) => false,
                serde_json::Value::Number(n) => n.as_f64() != Some(0.0),
                serde_json::Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                Ok(value)
            } else {
                Err(value)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_search_page_shows_the_systems_best_match_first_in_a_real_browser() {
    use fantoccini::Locator;
    let (_driver, port) = chromedriver();
    let pictures = copy_pictures(&data("shapes"));
    let system = System::start("page", &[pictures.path()]).await;
    let addr = system
        .device
        .http_addr()
        .await
        .expect("addr")
        .expect("HTTP endpoint on");
    let profile = tempfile::tempdir().expect("profile");
    let browser = browser(port, profile.path()).await;

    browser
        .goto(&format!("http://{addr}/"))
        .await
        .expect("page loads");
    let text = "a red circle";
    browser
        .find(Locator::Id("q"))
        .await
        .expect("search box")
        .send_keys(text)
        .await
        .expect("type");
    browser
        .find(Locator::Id("go"))
        .await
        .expect("button")
        .click()
        .await
        .expect("submit");
    wait_js(
        &browser,
        "results",
        "return document.querySelectorAll('#results .hit').length",
    )
    .await;

    // The first thumbnail is the picture the system itself ranks first for this text.
    let mut client = Client::connect(&system.broker.url(), Duration::from_secs(5))
        .await
        .expect("connect");
    let expected = results(
        bounded(
            "search",
            client.search("page", text, Some(12), Duration::from_secs(20)),
        )
        .await
        .expect("answer"),
    );
    let shown = browser
        .execute(
            "return [...document.querySelectorAll('#results .hit')].map(h => h.dataset.id)",
            vec![],
        )
        .await
        .expect("ids");
    let shown: Vec<String> = serde_json::from_value(shown).expect("ids");
    let best = expected.hits[0].score;
    let firsts: Vec<&str> = expected
        .hits
        .iter()
        .filter(|h| h.score > best - 1e-4)
        .map(|h| h.id.as_str())
        .collect();
    assert!(
        firsts.contains(&shown[0].as_str()),
        "the page shows {} first, the system ranks {firsts:?} first",
        shown[0]
    );
    assert_eq!(shown.len(), expected.hits.len());
    let first_src = wait_js(&browser, "a loaded first thumbnail", "const i = document.querySelector('#results .hit img'); return i.complete && i.naturalWidth > 0 && i.src").await;
    assert!(
        first_src
            .as_str()
            .expect("src")
            .ends_with(&format!("/thumb/{}", shown[0])),
        "{first_src}"
    );
    wait_js(&browser, "every thumbnail loaded", "return [...document.querySelectorAll('#results .hit img')].every(i => i.complete && i.naturalWidth > 0)").await;
    let screenshot = browser.screenshot().await.expect("screenshot");
    let dir = repo().join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    std::fs::write(dir.join("search-page.png"), &screenshot).expect("screenshot saved");
    assert!(screenshot.starts_with(b"\x89PNG"));

    // "More like this" on the first picture: the device's own image-to-image ranking, without
    // the picture itself.
    browser
        .find(Locator::Css("#results .hit .more"))
        .await
        .expect("more like this")
        .click()
        .await
        .expect("click");
    let like_first = format!("return (() => {{ const h = document.querySelector('#results .hit'); return h && h.dataset.id !== '{}' && h.dataset.id }})()", shown[0]);
    let like_first = wait_js(&browser, "more-like-this results", &like_first).await;
    let request = edgeclip_messages::dashboard::SearchRequest {
        like: Some(shown[0].clone()),
        k: Some(12),
        ..edgeclip_messages::dashboard::SearchRequest::text("")
    };
    let like = results(
        bounded(
            "like",
            client.request("page", request, Duration::from_secs(20)),
        )
        .await
        .expect("answer"),
    );
    assert!(!like.hits.iter().any(|h| h.id == shown[0]));
    let best = like.hits[0].score;
    assert!(
        like.hits
            .iter()
            .filter(|h| h.score > best - 1e-4)
            .any(|h| h.id == like_first.as_str().unwrap_or_default()),
        "{like_first}"
    );

    // A folder filter that matches nothing: an empty grid, not an error.
    let none = format!(
        "const s = document.getElementById('folder'); const o = document.createElement('option'); o.value = o.textContent = '{}'; s.appendChild(o); s.value = o.value; document.getElementById('go').click(); return true",
        pictures.path().join("no-such-folder").display()
    );
    browser.execute(&none, vec![]).await.expect("filter");
    wait_js(
        &browser,
        "an empty result for a folder without pictures",
        "return document.getElementById('message').textContent.startsWith('0 pictures')",
    )
    .await;

    // Date filters: the copies were made today, so nothing is taken from the day after
    // tomorrow on, and everything between the day before yesterday and the day after tomorrow.
    let day = |offset: i64| {
        format!("new Date(Date.now() + {offset} * 86400000).toISOString().slice(0, 10)")
    };
    let dates = |after: i64, before: Option<i64>| {
        format!(
            "document.getElementById('folder').value = ''; document.getElementById('after').value = {}; document.getElementById('before').value = {}; document.getElementById('message').textContent = ''; document.getElementById('go').click(); return true",
            day(after),
            before.map_or("''".to_string(), day)
        )
    };
    browser
        .execute(&dates(2, None), vec![])
        .await
        .expect("after filter");
    wait_js(
        &browser,
        "no pictures taken after the day after tomorrow",
        "return document.getElementById('message').textContent.startsWith('0 pictures')",
    )
    .await;
    browser
        .execute(&dates(-2, Some(2)), vec![])
        .await
        .expect("date range");
    let all = format!(
        "return document.getElementById('message').textContent.startsWith('{} pictures')",
        expected.hits.len()
    );
    wait_js(&browser, "every picture within the date range", &all).await;

    browser.close().await.expect("browser closes");
    client.disconnect().await;
    system.stop().await;
}

// ---- Home Assistant MQTT discovery ----

/// What Home Assistant requires of a discovery config, per component (its MQTT integration's
/// schemas), and what every edgeclip entity must carry to be grouped and tracked.
fn home_assistant_accepts(component: &str, config: &serde_json::Value) -> Result<(), String> {
    let text = |field: &str| {
        config
            .get(field)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    for field in ["unique_id", "name"] {
        text(field).ok_or(format!("{component}: {field} missing"))?;
    }
    let identifiers = config["device"]["identifiers"]
        .as_array()
        .ok_or(format!("{component}: device.identifiers missing"))?;
    if identifiers.is_empty()
        || !identifiers
            .iter()
            .all(|i| i.as_str().is_some_and(|s| !s.is_empty()))
    {
        return Err(format!("{component}: device.identifiers empty"));
    }
    config["origin"]["name"]
        .as_str()
        .ok_or(format!("{component}: origin.name missing"))?;
    let availability = config["availability"]
        .as_array()
        .ok_or(format!("{component}: availability missing"))?;
    if availability.is_empty() || !availability.iter().all(|a| a["topic"].as_str().is_some()) {
        return Err(format!("{component}: availability without a topic"));
    }
    match component {
        "text" | "button" => {
            text("command_topic").ok_or(format!("{component}: command_topic missing"))?;
        }
        "sensor" => {
            text("state_topic").ok_or("sensor: state_topic missing")?;
        }
        "image" => {
            if text("url_topic").is_none() && text("image_topic").is_none() {
                return Err("image: url_topic or image_topic required".into());
            }
            if text("url_topic").is_some() && text("image_topic").is_some() {
                return Err("image: url_topic and image_topic are exclusive".into());
            }
        }
        other => return Err(format!("unexpected component {other}")),
    }
    Ok(())
}

/// The last payload on each topic matching `pred`.
fn latest(
    recorder: &Recorder,
    pred: impl Fn(&str) -> bool,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    recorder
        .all()
        .into_iter()
        .filter(|(t, _)| pred(t))
        .collect()
}

async fn wait_status(
    recorder: &Recorder,
    topic: &str,
    what: &str,
    pred: impl Fn(&edgeclip_messages::dashboard::DeviceStatus) -> bool,
) {
    wait_until(
        &format!("the status to show {what}"),
        TEST_TIMEOUT,
        || async {
            let last = latest(recorder, |t| t == topic).remove(topic);
            match last.and_then(|p| serde_json::from_slice(&p).ok()) {
                Some(status) if pred(&status) => Ok(()),
                other => Err(other),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn home_assistant_discovers_valid_entities_whose_buttons_and_search_box_really_act() {
    use edgeclip_messages::topics;
    let shapes = data("shapes");
    let pictures = copy_pictures(&shapes);
    let n = labels(&shapes).len() as u64;
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let ha = Recorder::start(&broker.url(), "homeassistant/#").await;
    let edgeclip_topics = Recorder::start(&broker.url(), "edgeclip/hass/#").await;
    let cloud = edgeclip_cloud::Cloud::start(cloud_config(&broker.url(), "hass-w"))
        .await
        .expect("cloud");
    let state = tempfile::tempdir().expect("state");
    let mut config = device_config(&broker.url(), "hass", &[pictures.path()], state.path());
    config.capture.watch = false;
    config.homeassistant.image_bytes = true;
    let device = Device::start(config).await.expect("device");
    wait_idle(&device).await;

    // Every config is one Home Assistant accepts, for the expected entities of this device.
    let configs = wait_until("7 discovery configs", TEST_TIMEOUT, || async {
        let configs = latest(&ha, |t| t.ends_with("/config"));
        if configs.len() >= 7 {
            Ok(configs)
        } else {
            Err(configs.into_keys().collect::<Vec<_>>())
        }
    })
    .await;
    let mut by_object = std::collections::BTreeMap::new();
    for (topic, payload) in &configs {
        let levels: Vec<&str> = topic.split('/').collect();
        assert_eq!((levels.len(), levels[0]), (5, "homeassistant"), "{topic}");
        let config: serde_json::Value =
            serde_json::from_slice(payload).unwrap_or_else(|e| panic!("{topic}: {e}"));
        home_assistant_accepts(levels[1], &config)
            .unwrap_or_else(|e| panic!("{topic}: {e}\n{config:#}"));
        assert_eq!(
            config["availability"][0]["topic"],
            topics::availability("hass"),
            "{topic}: availability is the last will's topic"
        );
        assert_eq!(
            config["device"]["identifiers"],
            configs_first_identifiers(&configs),
            "{topic}: one device"
        );
        by_object.insert(levels[3].to_string(), (levels[1].to_string(), config));
    }
    let kinds: Vec<(&str, &str)> = by_object
        .iter()
        .map(|(o, (c, _))| (o.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("best_match", "image"),
            ("best_match_bytes", "image"),
            ("indexed", "sensor"),
            ("last_hits", "sensor"),
            ("reindex", "button"),
            ("rescan", "button"),
            ("search", "text")
        ]
    );
    let ids: std::collections::BTreeSet<&str> = by_object
        .values()
        .map(|(_, c)| c["unique_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), by_object.len(), "unique ids are unique");
    let cfg = |object: &str, field: &str| {
        by_object[object].1[field]
            .as_str()
            .expect(field)
            .to_string()
    };
    assert_eq!(cfg("search", "command_topic"), topics::search("hass"));
    assert_eq!(cfg("indexed", "state_topic"), topics::status("hass"));
    assert_eq!(cfg("last_hits", "state_topic"), topics::results("hass"));

    // Typing into the text entity: Home Assistant publishes the plain text on its command topic.
    ha.publish(&cfg("search", "command_topic"), "a red circle")
        .await;
    let answer = edgeclip_topics
        .wait_for(&topics::results("hass"), |_| true)
        .await;
    let answer = results(serde_json::from_slice(&answer).expect("results JSON"));
    assert_eq!(answer.text, "a red circle");
    let url = edgeclip_topics
        .wait_for(&cfg("best_match", "url_topic"), |_| true)
        .await;
    let url = String::from_utf8(url).expect("URL");
    assert_eq!(Some(url.as_str()), answer.hits[0].thumb_url.as_deref());
    let (status, kind, jpeg) = http("GET", &url, "").await;
    assert_eq!((status, kind.as_str()), (200, "image/jpeg"));
    let bytes = edgeclip_topics
        .wait_for(&cfg("best_match_bytes", "image_topic"), |_| true)
        .await;
    assert_eq!(
        bytes, jpeg,
        "the optional image topic carries the same thumbnail"
    );

    // The rescan button finds a picture added behind the device's back (no watching here),
    // written an hour ago: past capture.settle_ms, so the scan takes it at once (a file still
    // settling would be scanned again by itself after the settle time, button or not).
    let added = pictures.path().join("added.jpg");
    std::fs::copy(shapes.join("red_circle.jpg"), &added).expect("add");
    set_mtime(
        &added,
        std::time::SystemTime::now() - Duration::from_secs(3600),
    );
    ha.publish(
        &cfg("rescan", "command_topic"),
        by_object["rescan"].1["payload_press"]
            .as_str()
            .expect("payload"),
    )
    .await;
    wait_status(
        &edgeclip_topics,
        &topics::status("hass"),
        "the added picture",
        |s| s.indexed == n + 1 && s.pending == 0,
    )
    .await;
    // The re-index button encodes every picture again.
    let before = device.status().await.expect("status").encoded;
    ha.publish(
        &cfg("reindex", "command_topic"),
        by_object["reindex"].1["payload_press"]
            .as_str()
            .expect("payload"),
    )
    .await;
    wait_status(
        &edgeclip_topics,
        &topics::status("hass"),
        "every picture encoded again",
        |s| s.encoded > before + n && s.pending == 0,
    )
    .await;

    // Home Assistant restarts: the configs come again.
    let seen = ha.all().len();
    ha.publish("homeassistant/status", "online").await;
    wait_until(
        "the configs again after Home Assistant said online",
        TEST_TIMEOUT,
        || async {
            let again = ha.all()[seen..]
                .iter()
                .filter(|(t, p)| t.ends_with("/config") && !p.is_empty())
                .count();
            if again >= 7 {
                Ok(())
            } else {
                Err(again)
            }
        },
    )
    .await;

    // Uninstall: every config topic gets an empty retained payload; nothing is left retained.
    device.shutdown().await.expect("device shutdown");
    // As a person runs it: the device program with --uninstall-discovery.
    let program = Path::new(env!("CARGO_BIN_EXE_edgeclip")).with_file_name("edgeclip-device");
    assert!(
        program.is_file(),
        "{} is missing: build the workspace first",
        program.display()
    );
    let url = broker.url();
    let run = move || {
        Command::new(&program)
            .arg("--uninstall-discovery")
            .env("EDGECLIP_DEVICE_ID", "hass")
            .env("EDGECLIP_BROKER__URL", url)
            .env("RUST_LOG", "warn")
            .output()
    };
    let out = bounded("uninstall", tokio::task::spawn_blocking(run))
        .await
        .expect("joined")
        .expect("edgeclip-device runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed 7 Home Assistant discovery configs"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_until("every config removed", TEST_TIMEOUT, || async {
        let left: Vec<String> = latest(&ha, |t| t.ends_with("/config"))
            .into_iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(t, _)| t)
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(left)
        }
    })
    .await;
    // A new subscriber gets whatever is retained, before a marker published after it subscribed.
    let late = Recorder::start(&broker.url(), "homeassistant/#").await;
    late.round_trip("homeassistant/edgeclip-tests/marker").await;
    assert!(
        late.all().iter().all(|(_, p)| p.is_empty()),
        "retained configs left: {:?}",
        late.all()
    );
    cloud.shutdown().await.expect("cloud shutdown");
}

fn configs_first_identifiers(
    configs: &std::collections::BTreeMap<String, Vec<u8>>,
) -> serde_json::Value {
    let first: serde_json::Value =
        serde_json::from_slice(configs.values().next().expect("a config")).expect("json");
    first["device"]["identifiers"].clone()
}

// ---- Node-RED ----

#[test]
fn the_node_red_example_flow_is_valid_json_wired_to_the_real_topics() {
    use edgeclip_messages::topics;
    let raw =
        std::fs::read(repo().join("docs/node-red-flow.json")).expect("docs/node-red-flow.json");
    let flow: Vec<serde_json::Value> =
        serde_json::from_slice(&raw).expect("an importable flow is a JSON array of nodes");
    let ids: std::collections::HashSet<&str> = flow
        .iter()
        .map(|n| n["id"].as_str().expect("every node has an id"))
        .collect();
    assert_eq!(ids.len(), flow.len(), "node ids are unique");
    let node = |id: &str| {
        flow.iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    };
    for n in &flow {
        let kind = n["type"].as_str().expect("every node has a type");
        for output in n["wires"].as_array().into_iter().flatten() {
            for target in output.as_array().expect("wires are lists") {
                assert!(
                    ids.contains(target.as_str().expect("id")),
                    "{} wires to a missing node {target}",
                    n["id"]
                );
            }
        }
        for reference in ["z", "broker", "group", "tab"] {
            // A broker config node's own "broker" field is the broker's host name.
            if let Some(r) = n[reference].as_str().filter(|_| kind != "mqtt-broker") {
                assert!(
                    ids.contains(r),
                    "{} refers to a missing {reference} {r}",
                    n["id"]
                );
            }
        }
        if kind == "mqtt in" || kind == "mqtt out" {
            assert_eq!(
                node(n["broker"].as_str().expect("broker"))["type"],
                "mqtt-broker"
            );
        }
    }
    // The MQTT nodes use exactly the device's real topics (device id "nas" in the example).
    let mqtt = |kind: &str| -> std::collections::BTreeSet<String> {
        flow.iter()
            .filter(|n| n["type"] == kind)
            .map(|n| n["topic"].as_str().expect("topic").to_string())
            .collect()
    };
    assert_eq!(
        mqtt("mqtt out"),
        [topics::search("nas"), topics::command("nas")]
            .into_iter()
            .collect()
    );
    assert_eq!(
        mqtt("mqtt in"),
        [topics::results("nas"), topics::status("nas")]
            .into_iter()
            .collect()
    );
    // The search box feeds the search topic; results feed a gallery of thumbnails by URL.
    let search_box = flow
        .iter()
        .find(|n| n["type"] == "ui_text_input")
        .expect("a search box");
    assert_eq!(
        node(search_box["wires"][0][0].as_str().expect("wired"))["topic"],
        topics::search("nas").as_str()
    );
    let results_in = flow
        .iter()
        .find(|n| n["topic"] == topics::results("nas").as_str())
        .expect("results");
    assert_eq!(results_in["datatype"], "json");
    let gallery = node(results_in["wires"][0][0].as_str().expect("wired"));
    assert_eq!(gallery["type"], "ui_template");
    let template = gallery["format"].as_str().expect("template");
    assert!(
        template.contains("hit.thumb_url")
            && template.contains("msg.payload.hits")
            && template.contains("hit.score"),
        "{template}"
    );
    let rescan = flow
        .iter()
        .find(|n| n["type"] == "ui_button")
        .expect("a rescan button");
    assert_eq!(rescan["payload"], edgeclip_messages::homeassistant::RESCAN);
    assert_eq!(
        node(rescan["wires"][0][0].as_str().expect("wired"))["topic"],
        topics::command("nas").as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discovery_comes_back_after_a_broker_restart_that_lost_the_retained_configs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let broker = mosquitto(port, tmp.path());
    let url = format!("mqtt://127.0.0.1:{port}");
    let pictures = copy_pictures(&data("shapes"));
    let state = tempfile::tempdir().expect("state");
    let mut config = device_config(&url, "restart", &[pictures.path()], state.path());
    config.broker.reconnect_max_ms = 500;
    let device = Device::start(config).await.expect("device");
    let configs = |r: &Recorder| {
        r.all()
            .iter()
            .filter(|(t, p)| t.ends_with("/config") && !p.is_empty())
            .count()
    };
    let before = Recorder::start(&url, "homeassistant/#").await;
    wait_until("the discovery configs", TEST_TIMEOUT, || async {
        let n = configs(&before);
        if n >= 6 {
            Ok(())
        } else {
            Err(n)
        }
    })
    .await;
    drop(before);
    drop(broker);
    let _broker = mosquitto(port, tmp.path());
    // A new broker has nothing retained; once the device is back, its configs are: each check
    // is a new subscriber, which gets what is retained before a marker published after it.
    wait_until(
        "the discovery configs retained again after the broker restart",
        TEST_TIMEOUT,
        || async {
            let after = Recorder::start(&url, "homeassistant/#").await;
            after
                .round_trip("homeassistant/edgeclip-tests/marker")
                .await;
            let n = configs(&after);
            if n >= 6 {
                Ok(())
            } else {
                Err(n)
            }
        },
    )
    .await;
    bounded("device shutdown", device.shutdown())
        .await
        .expect("shutdown");
}
