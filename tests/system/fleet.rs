//! Fleet search: every device, one encoding, merged by a cloud worker.

use std::path::Path;
use std::time::Duration;

use edgeclip::client::Client;
use edgeclip_cloud::Cloud;
use edgeclip_device::Device;
use edgeclip_messages::topics;

use crate::util::*;

/// Copies the pictures of `from` into `parts` fresh folders, round robin over the sorted names.
fn split_pictures(from: &Path, parts: usize) -> Vec<tempfile::TempDir> {
    let dirs: Vec<tempfile::TempDir> = (0..parts)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut names: Vec<_> = std::fs::read_dir(from)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e != "json"))
        .collect();
    names.sort();
    for (i, path) in names.iter().enumerate() {
        std::fs::copy(
            path,
            dirs[i % parts].path().join(path.file_name().expect("name")),
        )
        .expect("copy");
    }
    dirs
}

async fn fleet(
    client: &mut Client,
    text: &str,
    k: usize,
    deadline_ms: Option<u64>,
) -> edgeclip_messages::dashboard::FleetResults {
    use edgeclip_messages::dashboard::FleetSearchRequest;
    let request = FleetSearchRequest {
        k: Some(k),
        deadline_ms,
        ..FleetSearchRequest::text(text)
    };
    fleet_search(client, request).await
}

/// Fleet searches until the worker's view of the fleet satisfies `known`; returns the first
/// answer that does, and how long that search took. The worker follows the devices' retained
/// availability on its own connection, so a change the test has just caused may not have
/// reached it yet; its answers are what show its view.
async fn fleet_until(
    client: &mut Client,
    what: &str,
    (text, k, deadline_ms): (&str, usize, Option<u64>),
    known: impl Fn(&edgeclip_messages::dashboard::FleetResults) -> bool,
) -> (edgeclip_messages::dashboard::FleetResults, Duration) {
    let mut wait = Wait::new(what, TEST_TIMEOUT);
    loop {
        let started = std::time::Instant::now();
        let r = fleet(client, text, k, deadline_ms).await;
        if known(&r) {
            return (r, started.elapsed());
        }
        wait.again(&r).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_search_encodes_once_merges_every_device_and_lists_the_silent_ones_as_missing() {
    let shapes = data("shapes");
    let reference = Reference::new(&shapes);
    let parts = split_pictures(&shapes, 3);
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let url = broker.url();
    let recorder = Recorder::start(&url, "#").await;
    let cloud = Cloud::start(cloud_config(&url, "fleet-w"))
        .await
        .expect("cloud");
    let ids = ["fleet-a", "fleet-b", "fleet-c"];
    let states: Vec<tempfile::TempDir> = ids
        .iter()
        .map(|_| tempfile::tempdir().expect("state"))
        .collect();
    let mut devices = Vec::new();
    for ((id, part), state) in ids.iter().zip(&parts).zip(&states) {
        let device = bounded(
            "device start",
            Device::start(device_config(&url, id, &[part.path()], state.path())),
        )
        .await
        .expect("device");
        wait_idle(&device).await;
        devices.push(device);
    }
    let owner = |name: &str| {
        ids[parts
            .iter()
            .position(|p| p.path().join(name).is_file())
            .expect("picture of some part")]
    };
    let mut client = bounded("connect", Client::connect(&url, Duration::from_secs(5)))
        .await
        .expect("connect");

    // The merged ranking is the ranking over the union of the pictures, each hit from its device.
    let texts = [
        "a red circle",
        "a blue square",
        "a yellow star and a purple square",
    ];
    for (text, k) in texts.iter().zip([5, 16, 8]) {
        let r = fleet(&mut client, text, k, None).await;
        assert_eq!(r.asked, ids.to_vec(), "{r:?}");
        assert_eq!(r.answered, ids.to_vec(), "{r:?}");
        assert!(r.missing.is_empty() && r.failed.is_empty(), "{r:?}");
        let merged: Vec<(String, f32)> = r
            .hits
            .iter()
            .map(|h| (file_name(&h.path), h.score))
            .collect();
        assert_same_ranking(&merged, &reference.rank(text, k), &format!("fleet: {text}"));
        for hit in &r.hits {
            assert_eq!(
                hit.device.as_deref(),
                Some(owner(&file_name(&hit.path))),
                "{hit:?}"
            );
            assert!(
                !hit.id.is_empty(),
                "a fleet hit keeps its picture id: {hit:?}"
            );
        }
    }
    // Encoded once per search: no device asked the cloud for a vector; each device got one
    // query per search, and all three carry the same bytes (the same vector). The recorder is
    // a subscriber of its own: its copies of the last queries may arrive after the answers.
    let seen = wait_until(
        "the recorder to have every fleet query",
        TEST_TIMEOUT,
        || async {
            let seen = recorder.all();
            let complete = ids.iter().all(|d| {
                seen.iter()
                    .filter(|(t, _)| *t == topics::fleet_query(d))
                    .count()
                    >= texts.len()
            });
            if complete {
                Ok(seen)
            } else {
                Err(format!("{} messages so far", seen.len()))
            }
        },
    )
    .await;
    let count = |topic: &str| seen.iter().filter(|(t, _)| t == topic).count();
    assert_eq!(
        count(topics::CLOUD_ENCODE),
        0,
        "devices must not encode fleet searches themselves"
    );
    assert_eq!(count(topics::FLEET_SEARCH), texts.len());
    let queries: Vec<Vec<&Vec<u8>>> = ids
        .iter()
        .map(|d| {
            seen.iter()
                .filter(|(t, _)| *t == topics::fleet_query(d))
                .map(|(_, p)| p)
                .collect()
        })
        .collect();
    for (device, q) in ids.iter().zip(&queries) {
        assert_eq!(q.len(), texts.len(), "{device} got {} queries", q.len());
    }
    for i in 0..texts.len() {
        assert!(
            queries.iter().all(|q| q[i] == queries[0][i]),
            "search {i}: devices got different vectors"
        );
    }

    // Malformed input on the fleet topics is answered where a reply topic is known, dropped
    // otherwise, and everyone keeps serving.
    recorder
        .publish(
            topics::FLEET_SEARCH,
            r#"{"text": "x", "k": 0, "id": "bad-1"}"#,
        )
        .await;
    let refused = recorder
        .wait_for(&topics::fleet_results("bad-1"), |_| true)
        .await;
    assert!(
        String::from_utf8_lossy(&refused).contains("error"),
        "{}",
        String::from_utf8_lossy(&refused)
    );
    recorder
        .publish(topics::FLEET_SEARCH, vec![0xff, 0xfe, 0x00])
        .await;
    recorder
        .publish(
            &topics::fleet_query(ids[0]),
            vec![
                0x45, 0x43, 0x01, 0x00, 0x05, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
            ],
        )
        .await;
    let hijack = edgeclip_messages::wire::FleetQuery {
        request_id: 1,
        reply_to: topics::search(ids[1]),
        k: 3,
        vector: edgeclip_messages::wire::TextVector {
            model: "m".into(),
            vector: vec![1.0],
        },
    };
    recorder
        .publish(
            &topics::fleet_query(ids[0]),
            edgeclip_messages::wire::encode(&hijack).expect("frame"),
        )
        .await;
    recorder
        .publish(&topics::fleet_answers("fleet-w"), b"not a frame".to_vec())
        .await;
    let r = fleet(&mut client, "a red circle", 5, None).await;
    assert_eq!(r.answered, ids.to_vec(), "{r:?}");
    assert_same_ranking(
        &r.hits
            .iter()
            .map(|h| (file_name(&h.path), h.score))
            .collect::<Vec<_>>(),
        &reference.rank("a red circle", 5),
        "after garbage",
    );
    assert!(
        recorder
            .all()
            .iter()
            .all(|(t, _)| *t != topics::search(ids[1])),
        "a fleet query made a device publish outside edgeclip/fleet/answers/"
    );

    // A device that is online but does not answer (hung) is listed as missing at the deadline;
    // the others' hits still come back.
    let ghost = topics::availability("fleet-ghost");
    recorder
        .client
        .publish(&ghost, rumqttc::QoS::AtLeastOnce, true, "online")
        .await
        .expect("ghost online");
    let (r, waited) = fleet_until(
        &mut client,
        "the worker to ask the silent device",
        ("a red circle", 5, Some(1500)),
        |r| r.asked.iter().any(|d| d == "fleet-ghost"),
    )
    .await;
    println!("fleet search with a silent device: answered {:?}, missing {:?}, took {} ms (waited {waited:?})", r.answered, r.missing, r.took_ms);
    assert_eq!(r.missing, vec!["fleet-ghost".to_string()], "{r:?}");
    assert_eq!(r.answered, ids.to_vec());
    assert!(
        r.took_ms >= 1500 && waited < Duration::from_millis(1500 + 3000),
        "{} ms, waited {waited:?}",
        r.took_ms
    );
    let merged: Vec<(String, f32)> = r
        .hits
        .iter()
        .map(|h| (file_name(&h.path), h.score))
        .collect();
    assert_same_ranking(
        &merged,
        &reference.rank("a red circle", 5),
        "fleet with a silent device",
    );

    // The command line: a device column and the missing list; exit 0 with at least one answer.
    let cli_url = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        edgeclip()
            .args([
                "search",
                "--all",
                "a red circle",
                "-k",
                "3",
                "--deadline",
                "1.5",
                "--broker",
                &cli_url,
            ])
            .output()
            .expect("search --all runs")
    })
    .await
    .expect("join");
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.lines().next().expect("header").contains("device"),
        "{table}"
    );
    let first = table.lines().nth(1).expect("a first hit").to_string();
    let best = &reference.rank("a red circle", 1)[0].0;
    assert!(
        first.contains(best.as_str()) && first.contains(owner(best)),
        "{table}"
    );
    assert!(
        table.contains("missing (no answer before the deadline): fleet-ghost"),
        "{table}"
    );

    // A device whose index holds another model answers with an error: listed as failed, the
    // others' hits unaffected.
    let (empty, odd_state) = (
        tempfile::tempdir().expect("empty"),
        tempfile::tempdir().expect("state"),
    );
    let mut odd_config = device_config(&url, "fleet-odd", &[empty.path()], odd_state.path());
    odd_config.model.id = "another-model@000000000000".into();
    let odd = bounded("device start", Device::start(odd_config))
        .await
        .expect("device");
    wait_idle(&odd).await;
    let (r, _) = fleet_until(
        &mut client,
        "the worker to ask the device of another model",
        ("a red circle", 5, Some(1500)),
        |r| r.asked.iter().any(|d| d == "fleet-odd"),
    )
    .await;
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(r.failed[0].device, "fleet-odd");
    assert!(
        r.failed[0].error.contains("another-model"),
        "{}",
        r.failed[0].error
    );
    assert_eq!(r.answered, ids.to_vec(), "{r:?}");
    assert_eq!(r.missing, vec!["fleet-ghost".to_string()], "{r:?}");
    let merged: Vec<(String, f32)> = r
        .hits
        .iter()
        .map(|h| (file_name(&h.path), h.score))
        .collect();
    assert_same_ranking(
        &merged,
        &reference.rank("a red circle", 5),
        "fleet with a failing device",
    );
    bounded("device shutdown", odd.shutdown())
        .await
        .expect("shutdown");

    // A stopped device says offline and is not asked; the rest still answer.
    let stopped = devices.remove(0);
    bounded("device shutdown", stopped.shutdown())
        .await
        .expect("shutdown");
    let (r, _) = fleet_until(
        &mut client,
        "the worker to know the stopped devices offline",
        ("a blue square", 16, Some(1000)),
        |r| {
            [ids[0], "fleet-odd"]
                .iter()
                .all(|d| r.offline.contains(&d.to_string()))
        },
    )
    .await;
    assert_eq!(
        r.offline,
        vec![ids[0].to_string(), "fleet-odd".to_string()],
        "{r:?}"
    );
    assert_eq!(r.answered, ids[1..].to_vec());
    assert!(
        !r.hits.is_empty() && r.hits.iter().all(|h| h.device.as_deref() != Some(ids[0])),
        "{r:?}"
    );

    // Only the silent device left: the command line fails, saying nobody answered.
    for device in devices {
        bounded("device shutdown", device.shutdown())
            .await
            .expect("shutdown");
    }
    fleet_until(
        &mut client,
        "the worker to know every real device offline",
        ("a red circle", 5, Some(1000)),
        |r| ids.iter().all(|d| r.offline.contains(&d.to_string())),
    )
    .await;
    let cli_url = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        edgeclip()
            .args([
                "search",
                "--all",
                "a red circle",
                "--deadline",
                "1",
                "--broker",
                &cli_url,
            ])
            .output()
            .expect("runs")
    })
    .await
    .expect("join");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no device answered"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    client.disconnect().await;
    cloud.shutdown().await.expect("cloud shutdown");
}
