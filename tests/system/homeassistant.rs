//! Home Assistant itself (core 2024.3.3, installed by `tests/clients/install.sh`) on the same
//! Mosquitto as a real device: what its MQTT integration makes of the device's discovery
//! configs, read back through its REST API (states, services, the image proxy, and the device
//! registry through its template API). One instance for the whole test: it takes a while to
//! start.

use std::process::Command;
use std::time::{Duration, Instant};

use edgeclip_messages::dashboard::{DeviceState, SearchResponse};
use edgeclip_messages::topics;
use serde_json::{json, Value};

use crate::clients::*;
use crate::util::*;

/// How long Home Assistant may take to answer its API after it is started: a few seconds on a
/// quiet machine once its bytecode is compiled, much longer on the first start of a fresh venv
/// on a busy 2-core CI machine (it imports hundreds of modules).
const HA_START_TIMEOUT: Duration = Duration::from_secs(300);

/// The device's entities as Home Assistant shows them: entity id and name (its friendly name is
/// the device's name, then this).
const ENTITIES: [(&str, &str); 7] = [
    (
        "button.edgeclip_nas_re_index_all_pictures",
        "Re-index all pictures",
    ),
    ("button.edgeclip_nas_rescan_folders", "Rescan folders"),
    ("image.edgeclip_nas_best_match", "Best match"),
    (
        "image.edgeclip_nas_best_match_picture",
        "Best match (picture)",
    ),
    ("sensor.edgeclip_nas_last_search_hits", "Last search hits"),
    ("sensor.edgeclip_nas_pictures_indexed", "Pictures indexed"),
    ("text.edgeclip_nas_search_pictures", "Search pictures"),
];
const SEARCH: &str = "text.edgeclip_nas_search_pictures";
const HITS: &str = "sensor.edgeclip_nas_last_search_hits";
const INDEXED: &str = "sensor.edgeclip_nas_pictures_indexed";
const RESCAN: &str = "button.edgeclip_nas_rescan_folders";
const REINDEX: &str = "button.edgeclip_nas_re_index_all_pictures";
const BEST: &str = "image.edgeclip_nas_best_match";
const BEST_BYTES: &str = "image.edgeclip_nas_best_match_picture";

/// The MQTT integration's entities, and its devices with theirs, from Home Assistant's entity
/// and device registries (the template functions read them).
const REGISTRY: &str = "{% set ns = namespace(devices=[]) %}\
{% for id in integration_entities('mqtt') | map('device_id') | reject('none') | unique %}\
{% set ns.devices = ns.devices + [{'name': device_attr(id, 'name'), \
'manufacturer': device_attr(id, 'manufacturer'), 'model': device_attr(id, 'model'), \
'identifiers': device_attr(id, 'identifiers') | list, 'entities': device_entities(id) | sort}] %}\
{% endfor %}\
{{ {'entities': integration_entities('mqtt') | sort, 'devices': ns.devices} | tojson }}";

/// A running Home Assistant with an owner's access token.
struct HomeAssistant {
    process: Process,
    base: String,
    token: String,
    _config: tempfile::TempDir,
}

impl HomeAssistant {
    /// Prepares a configuration folder (HTTP on a free loopback port, the REST API, the MQTT
    /// integration's config entry for the broker on `broker_port`), starts Home Assistant on
    /// it and onboards an owner through its onboarding API.
    async fn start(broker_port: u16) -> HomeAssistant {
        let venv = installed("homeassistant", "Home Assistant");
        let config = tempfile::tempdir().expect("config folder");
        let port = free_port();
        std::fs::write(
            config.path().join("configuration.yaml"),
            format!(
                "homeassistant:\n  name: edgeclip tests\n  latitude: 0\n  longitude: 0\n  \
                 elevation: 0\n  unit_system: metric\n  time_zone: UTC\n  currency: EUR\n  \
                 country: FR\nhttp:\n  server_host: 127.0.0.1\n  server_port: {port}\napi:\n\
                 logger:\n  default: warning\n  logs:\n    homeassistant.components.mqtt: info\n"
            ),
        )
        .expect("configuration.yaml");
        // The MQTT broker is set up as a config entry (its YAML setup was removed in 2022.12),
        // as the integration's config flow stores it.
        let entries = json!({
            "version": 1, "minor_version": 1, "key": "core.config_entries",
            "data": {"entries": [{
                "entry_id": "edgeclipteststhemqttbroker0001", "version": 1, "minor_version": 1,
                "domain": "mqtt", "title": "Mosquitto", "source": "user", "unique_id": null,
                "data": {"broker": "127.0.0.1", "port": broker_port, "discovery": true},
                "options": {}, "pref_disable_new_entities": false,
                "pref_disable_polling": false, "disabled_by": null,
            }]},
        });
        std::fs::create_dir(config.path().join(".storage")).expect(".storage");
        std::fs::write(
            config.path().join(".storage/core.config_entries"),
            serde_json::to_vec_pretty(&entries).expect("json"),
        )
        .expect("core.config_entries");
        // --skip-pip: tests/clients/install.sh installed every requirement; nothing is
        // downloaded while the test runs.
        let mut command = Command::new(venv.join("bin/hass"));
        command.arg("--config").arg(config.path()).arg("--skip-pip");
        let log = config.path().join("console.log");
        let started = Instant::now();
        let mut process = Process::spawn("Home Assistant", command, &log);
        let base = format!("http://127.0.0.1:{port}");

        let onboarding = format!("{base}/api/onboarding");
        let mut wait = Wait::new("Home Assistant to answer its API", HA_START_TIMEOUT);
        loop {
            process.assert_running();
            match request("GET", &onboarding, &[], "").await {
                Ok((200, _, _)) => break,
                other => wait.again(&other).await,
            }
        }
        eprintln!("Home Assistant answered after {:?}", started.elapsed());

        // Onboarding: the owner account, then its authorization code exchanged for a token.
        let client_id = format!("{base}/");
        let (status, _, body) = request(
            "POST",
            &format!("{base}/api/onboarding/users"),
            &[("content-type", "application/json")],
            json!({
                "client_id": client_id, "name": "edgeclip tests", "username": "edgeclip",
                "password": "edgeclip-tests-only", "language": "en",
            })
            .to_string(),
        )
        .await
        .expect("onboarding");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let code: Value = serde_json::from_slice(&body).expect("onboarding JSON");
        let code = code["auth_code"].as_str().expect("auth_code");
        let (status, _, body) = request(
            "POST",
            &format!("{base}/auth/token"),
            &[("content-type", "application/x-www-form-urlencoded")],
            format!(
                "grant_type=authorization_code&code={}&client_id={}",
                form_value(code),
                form_value(&client_id)
            ),
        )
        .await
        .expect("token");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let token: Value = serde_json::from_slice(&body).expect("token JSON");
        HomeAssistant {
            process,
            token: token["access_token"].as_str().expect("access_token").into(),
            base,
            _config: config,
        }
    }

    /// A request to the API as the owner.
    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let auth = format!("Bearer {}", self.token);
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        request(method, &format!("{}{path}", self.base), &headers, body)
            .await
            .unwrap_or_else(|e| panic!("Home Assistant's API: {e}"))
    }

    /// The JSON answer of a request that must succeed.
    async fn json(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, _, body) = self.api(method, path, body).await;
        assert_eq!(
            status,
            200,
            "{method} {path}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// An entity's state object, if Home Assistant has the entity.
    async fn state(&self, entity: &str) -> Option<Value> {
        let (status, _, body) = self
            .api("GET", &format!("/api/states/{entity}"), None)
            .await;
        match status {
            200 => Some(serde_json::from_slice(&body).expect("state JSON")),
            404 => None,
            other => panic!(
                "state of {entity}: {other} {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    /// Waits until `entity`'s state object satisfies `pred`, and returns it.
    async fn wait_state(&self, entity: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_until(
            &format!("Home Assistant to show {entity} {what}"),
            TEST_TIMEOUT,
            || async {
                match self.state(entity).await {
                    Some(s) if pred(&s) => Ok(s),
                    other => Err(other),
                }
            },
        )
        .await
    }

    /// Calls a service (`domain/service`) on one entity, with more data.
    async fn call(&self, service: &str, entity: &str, mut data: Value) {
        data["entity_id"] = entity.into();
        self.json("POST", &format!("/api/services/{service}"), Some(data))
            .await;
    }

    /// What the MQTT integration has registered (see [`REGISTRY`]).
    async fn registry(&self) -> Value {
        let (status, _, body) = self
            .api(
                "POST",
                "/api/template",
                Some(json!({ "template": REGISTRY })),
            )
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("the template renders JSON")
    }

    /// What Home Assistant's MQTT integration logged as a warning or an error.
    fn mqtt_problems(&self) -> Vec<String> {
        self.process
            .output()
            .lines()
            .filter(|l| {
                (l.contains(" WARNING ") || l.contains(" ERROR "))
                    && l.contains("[homeassistant.components.mqtt")
            })
            .map(str::to_string)
            .collect()
    }
}

fn ids(entities: &Value) -> Vec<String> {
    serde_json::from_value(entities.clone()).expect("entity ids")
}

fn every_entity() -> Vec<String> {
    ENTITIES.iter().map(|(id, _)| id.to_string()).collect()
}

/// Waits until every entity of the device has a state that satisfies `pred`.
async fn wait_every_entity(ha: &HomeAssistant, what: &str, pred: impl Fn(&str) -> bool) {
    wait_until(
        &format!("every entity of the device to be {what}"),
        TEST_TIMEOUT,
        || async {
            let mut states = Vec::new();
            for (entity, _) in ENTITIES {
                let state = ha.state(entity).await;
                states.push((entity, state.map(|s| s["state"].to_string())));
            }
            if states
                .iter()
                .all(|(_, s)| s.as_deref().is_some_and(|s| pred(s.trim_matches('"'))))
            {
                Ok(())
            } else {
                Err(states)
            }
        },
    )
    .await
}

/// One device "edgeclip nas" in Home Assistant's device registry, holding exactly the
/// device's entities, and no other MQTT entity.
async fn assert_one_device_with_every_entity(ha: &HomeAssistant) {
    let registry = wait_until(
        "Home Assistant to register the device's 7 entities",
        TEST_TIMEOUT,
        || async {
            let registry = ha.registry().await;
            let grouped = registry["devices"].as_array().is_some_and(|d| {
                d.iter()
                    .any(|d| d["entities"].as_array().map(Vec::len) == Some(7))
            });
            if grouped {
                Ok(registry)
            } else {
                Err(registry)
            }
        },
    )
    .await;
    assert_eq!(ids(&registry["entities"]), every_entity(), "{registry:#}");
    let devices = registry["devices"].as_array().expect("devices");
    assert_eq!(
        devices.len(),
        1,
        "one device per edgeclip device: {registry:#}"
    );
    let device = &devices[0];
    assert_eq!(
        (&device["name"], &device["manufacturer"], &device["model"]),
        (
            &json!("edgeclip nas"),
            &json!("edgeclip"),
            &json!("edgeclip-device")
        ),
        "{device:#}"
    );
    assert_eq!(device["identifiers"], json!([["mqtt", "edgeclip_nas"]]));
    assert_eq!(ids(&device["entities"]), every_entity());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn home_assistant_shows_the_device_searches_presses_its_buttons_and_sees_it_go_offline() {
    let started = Instant::now();
    let mut home = Home::start("nas", true).await;
    let ha = HomeAssistant::start(home.broker_port).await;
    let recorder = Recorder::start(&home.url(), "edgeclip/nas/#").await;
    let n = home.indexed;

    // ---- Discovery: one device with every entity, named as the docs say ----
    assert_one_device_with_every_entity(&ha).await;
    // Available once the device's retained `online` reaches the new entities.
    wait_every_entity(&ha, "available", |s| s != "unavailable").await;
    for (entity, name) in ENTITIES {
        let state = ha.state(entity).await.expect("the entity has a state");
        assert_eq!(
            state["attributes"]["friendly_name"],
            format!("edgeclip nas {name}"),
            "{state:#}"
        );
    }
    // The index sensor: the count as state, the rest as attributes. The indexing state is the
    // attribute `status`: `state` is one of the names Home Assistant's MQTT integration drops
    // from JSON attributes (MQTT_ATTRIBUTES_BLOCKED in its mixins.py).
    let indexed = ha
        .wait_state(INDEXED, "the indexed pictures, idle", |s| {
            s["state"] == n.to_string().as_str() && s["attributes"]["status"] == "idle"
        })
        .await;
    let attributes = &indexed["attributes"];
    assert_eq!(
        (
            &attributes["pending"],
            &attributes["failed"],
            &attributes["eta_s"]
        ),
        (&json!(0), &json!(0), &Value::Null),
        "{indexed:#}"
    );
    let model = home.device().status().await.expect("status").model;
    assert_eq!(attributes["model"], model.as_str(), "{indexed:#}");
    assert_eq!(attributes["unit_of_measurement"], "pictures");

    // ---- Typing into the search box runs a real search ----
    let text = "a red circle";
    ha.call("text/set_value", SEARCH, json!({ "value": text }))
        .await;
    let hits = ha
        .wait_state(HITS, "the hits of the search", |s| {
            s["attributes"]["text"] == text
        })
        .await;
    let published = recorder
        .wait_for(&topics::results("nas"), |p| {
            serde_json::from_slice::<Value>(p).is_ok_and(|r| r["text"] == text)
        })
        .await;
    let results = match serde_json::from_slice(&published).expect("results JSON") {
        SearchResponse::Results(r) => r,
        SearchResponse::Error(e) => panic!("the search failed: {}", e.error),
    };
    assert_eq!(
        hits["state"],
        results.hits.len().to_string().as_str(),
        "the state is the number of hits: {hits:#}"
    );
    let attributes = &hits["attributes"];
    assert_eq!(attributes["error"], "");
    let paths: Vec<String> =
        serde_json::from_value(attributes["hits"].clone()).expect("hits: paths");
    let scores: Vec<f32> =
        serde_json::from_value(attributes["scores"].clone()).expect("scores: numbers");
    let taken: Vec<i64> =
        serde_json::from_value(attributes["taken_s"].clone()).expect("taken_s: numbers");
    assert_eq!(
        paths,
        results
            .hits
            .iter()
            .map(|h| h.path.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        taken,
        results.hits.iter().map(|h| h.taken_s).collect::<Vec<_>>()
    );
    let shown: Vec<(String, f32)> = paths.iter().map(|p| file_name(p)).zip(scores).collect();
    assert_same_ranking(
        &shown,
        &Reference::new(&data("shapes")).rank(text, results.hits.len()),
        "the hits Home Assistant shows",
    );

    // ---- The best match, through Home Assistant's image proxy ----
    let best = &results.hits[0];
    let url = best.thumb_url.as_deref().expect("the HTTP endpoint is on");
    let (status, kind, thumbnail) = request("GET", url, &[], "").await.expect("thumbnail");
    assert_eq!((status, kind.as_str()), (200, "image/jpeg"));
    image::load_from_memory(&thumbnail).expect("the thumbnail decodes");
    for entity in [BEST, BEST_BYTES] {
        // The image entity's state is the time its image last changed.
        ha.wait_state(entity, "a best match", |s| s["state"] != "unknown")
            .await;
        let (status, kind, body) = ha
            .api("GET", &format!("/api/image_proxy/{entity}"), None)
            .await;
        assert_eq!(
            (status, kind.as_str()),
            (200, "image/jpeg"),
            "{entity}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            body == thumbnail,
            "{entity} shows {} bytes, not the device's thumbnail of {} ({} bytes)",
            body.len(),
            best.path,
            thumbnail.len()
        );
    }

    // ---- The buttons ----
    home.add_picture("added.jpg");
    ha.call("button/press", RESCAN, json!({})).await;
    recorder
        .wait_for(&topics::command("nas"), |p| p == b"rescan")
        .await;
    status_until(
        home.device(),
        "the rescan to index the added picture",
        |s| s.indexed == n + 1 && s.pending == 0,
    )
    .await;
    ha.wait_state(INDEXED, "the added picture", |s| {
        s["state"] == (n + 1).to_string().as_str()
    })
    .await;
    let before = home.device().status().await.expect("status").encoded;
    let every = n + 1;
    ha.call("button/press", REINDEX, json!({})).await;
    recorder
        .wait_for(&topics::command("nas"), |p| p == b"reindex")
        .await;
    status_until(home.device(), "every picture encoded again", |s| {
        s.encoded >= before + every && s.pending == 0 && s.state == DeviceState::Idle
    })
    .await;

    // ---- Unavailable once the device stops ----
    home.stop_device().await;
    wait_every_entity(&ha, "unavailable", |s| s == "unavailable").await;

    // The device program on the same state comes back as the same device, then a power cut:
    // the broker publishes its last will.
    let config = home.state.path().join("device.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"nas\"\nfolders = [{:?}]\nstate_dir = {:?}\n[model]\ndir = {:?}\n\
             [broker]\nurl = {:?}\n[http]\nbind = \"127.0.0.1\"\nport = 0\n\
             [homeassistant]\nimage_bytes = true\n",
            home.pictures.path().display().to_string(),
            home.state.path().join("program").display().to_string(),
            model_dir().display().to_string(),
            home.url(),
        ),
    )
    .expect("device.toml");
    let mut program = Command::new(sibling_binary("edgeclip-device"));
    program.arg("--config").arg(&config).env("RUST_LOG", "warn");
    let mut program = Process::spawn(
        "edgeclip-device",
        program,
        &home.state.path().join("device.log"),
    );
    wait_every_entity(&ha, "available again", |s| s != "unavailable").await;
    program.assert_running();
    assert_one_device_with_every_entity(&ha).await;
    program.kill();
    wait_every_entity(&ha, "unavailable after the power cut", |s| {
        s == "unavailable"
    })
    .await;

    let problems = ha.mqtt_problems();
    assert!(
        problems.is_empty(),
        "Home Assistant's MQTT integration complained:\n{}",
        problems.join("\n")
    );
    drop(program);
    home.stop().await;
    eprintln!("the Home Assistant test took {:?}", started.elapsed());
}
