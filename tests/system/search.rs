//! Searches over MQTT as a dashboard sends them: rankings equal to the model's own, privacy,
//! a missing or mismatched cloud, malformed messages, "more like this" and filters without the
//! cloud, near-duplicate groups.

use std::path::Path;
use std::time::Duration;

use edgeclip::client::Client;
use edgeclip_cloud::Cloud;
use edgeclip_device::Device;
use edgeclip_messages::dashboard::{SearchRequest, SearchResponse};
use edgeclip_messages::topics;

use crate::util::*;

fn has(label: &SceneLabel, colour: &str, shape: &str) -> bool {
    label
        .shapes
        .iter()
        .any(|s| s.colour == colour && s.shape == shape)
}

/// Every hit names its picture's stable id, size in bytes and pixels (orientation applied), and
/// a thumbnail URL on the device that serves that very picture's id.
fn assert_hits_describe_the_files(response: &SearchResponse) {
    let SearchResponse::Results(r) = response else {
        panic!("search failed: {response:?}")
    };
    assert!(!r.hits.is_empty());
    for hit in &r.hits {
        let path = Path::new(&hit.path);
        assert_eq!(hit.id, edgeclip_device::index::picture_id(path), "{hit:?}");
        assert_eq!(
            hit.bytes,
            std::fs::metadata(path).expect("picture").len(),
            "{hit:?}"
        );
        let (w, h) = image::image_dimensions(path).expect("dimensions");
        assert_eq!((hit.width, hit.height), (w, h), "{hit:?}");
        let url = hit
            .thumb_url
            .as_deref()
            .expect("thumbnail URL while the HTTP endpoint is on");
        assert!(
            url.starts_with("http://127.0.0.1:") && url.ends_with(&format!("/thumb/{}", hit.id)),
            "{url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_search_over_mqtt_ranks_exactly_as_the_model_does() {
    let shapes = data("shapes");
    let labels = labels(&shapes);
    let pictures = copy_pictures(&shapes);
    let reference = Reference::new(&shapes);
    let system = System::start("finder", &[pictures.path()]).await;
    let status = system.device.status().await.expect("status");
    assert_eq!(status.indexed as usize, labels.len(), "{status:?}");
    assert_eq!(status.failed, 0);

    let mut client = bounded(
        "connect",
        Client::connect(&system.broker.url(), Duration::from_secs(5)),
    )
    .await
    .expect("connect");
    assert_eq!(
        client
            .online_devices(Duration::from_secs(5))
            .await
            .expect("online"),
        vec!["finder".to_string()]
    );
    for text in [
        "a red circle",
        "a blue square",
        "a yellow star and a purple square",
    ] {
        let response = search(&mut client, "finder", text, 5).await;
        assert_same_ranking(&scored(&response), &reference.rank(text, 5), text);
        assert_hits_describe_the_files(&response);
    }
    client.disconnect().await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn search_quality_through_the_whole_system_equals_the_models_own() {
    let samples = repo().join("models/samples");
    let labels = labels(&samples);
    let reference = Reference::new(&samples);
    let system = System::start("quality", &[samples.as_path()]).await;
    let mut client = Client::connect(&system.broker.url(), Duration::from_secs(5))
        .await
        .expect("connect");
    let (mut through_system, mut direct) = (Vec::new(), Vec::new());
    for colour in [
        "red", "green", "blue", "yellow", "orange", "purple", "white", "black",
    ] {
        for shape in ["circle", "square", "triangle", "star"] {
            let article = if colour == "orange" { "an" } else { "a" };
            let text = format!("{article} {colour} {shape}");
            let precision = |names: Vec<String>| {
                names
                    .iter()
                    .filter(|f| has(&labels[f.as_str()], colour, shape))
                    .count() as f64
                    / 5.0
            };
            let response = search(&mut client, "quality", &text, 5).await;
            through_system.push(precision(hits(&response)));
            direct.push(precision(
                reference
                    .rank(&text, 5)
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect(),
            ));
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (system_p, direct_p) = (mean(&through_system), mean(&direct));
    println!(
        "precision@5 over {} colour+shape queries on {} samples: whole system {system_p:.3}, model alone {direct_p:.3} (issue bar 0.90)",
        through_system.len(),
        labels.len()
    );
    assert!(
        (system_p - direct_p).abs() < 0.02,
        "the system loses quality: {system_p:.3} vs the model's {direct_p:.3}"
    );
    client.disconnect().await;
    system.stop().await;
}

/// Every 64-byte slice at a few offsets of every picture: a payload holding a copy of a
/// picture (or of a large part of it) would contain one of them.
fn picture_fingerprints(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        if bytes.len() < 256 {
            continue;
        }
        for i in 0..8 {
            let at = (bytes.len() - 64) * i / 8;
            out.push(bytes[at..at + 64].to_vec());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_picture_bytes_ever_leave_the_device() {
    let pictures = copy_pictures(&data("shapes"));
    let state = tempfile::tempdir().expect("state");
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let recorder = Recorder::start(&broker.url(), "#").await;
    let cloud = Cloud::start(cloud_config(&broker.url(), "privacy-w"))
        .await
        .expect("cloud");
    let device = Device::start(device_config(
        &broker.url(),
        "privacy",
        &[pictures.path()],
        state.path(),
    ))
    .await
    .expect("device");
    wait_idle(&device).await;
    let mut client = Client::connect(&broker.url(), Duration::from_secs(5))
        .await
        .expect("connect");
    for text in ["a red circle", "a yellow star and a purple square"] {
        hits(&search(&mut client, "privacy", text, 5).await);
    }
    client.disconnect().await;
    device.shutdown().await.expect("device shutdown");
    cloud.shutdown().await.expect("cloud shutdown");

    // Everything published before this marker has been recorded.
    recorder.round_trip("edgeclip-tests/marker").await;
    let seen = recorder.all();
    let fingerprints = picture_fingerprints(pictures.path());
    assert!(
        seen.len() >= 6,
        "recorded too little to judge: {}",
        seen.len()
    );
    let magics: [&[u8]; 5] = [b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"BM"];
    for (topic, payload) in &seen {
        assert!(
            payload.len() < 16 * 1024,
            "{topic}: {} bytes is more than any edgeclip message needs",
            payload.len()
        );
        for m in magics {
            assert!(!payload.starts_with(m), "{topic} carries a picture header");
        }
        for f in &fingerprints {
            assert!(
                !payload.windows(f.len()).any(|w| w == f.as_slice()),
                "{topic} carries bytes of a picture"
            );
        }
    }
    let topics_seen: std::collections::BTreeSet<&str> =
        seen.iter().map(|(t, _)| t.as_str()).collect();
    assert!(
        topics_seen.contains(topics::CLOUD_ENCODE),
        "{topics_seen:?}"
    );
    assert!(
        topics_seen.contains(topics::cloud_reply("privacy").as_str()),
        "{topics_seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_cloud_searches_fail_clearly_and_work_once_it_is_back() {
    let pictures = copy_pictures(&data("shapes"));
    let state = tempfile::tempdir().expect("state");
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let device = Device::start(device_config(
        &broker.url(),
        "lonely",
        &[pictures.path()],
        state.path(),
    ))
    .await
    .expect("device");
    wait_idle(&device).await;
    let requests = Recorder::start(&broker.url(), topics::CLOUD_ENCODE).await;
    let started = std::time::Instant::now();
    let response = bounded("search", device.search(SearchRequest::text("a red circle")))
        .await
        .expect("answer");
    let SearchResponse::Error(e) = response else {
        panic!("expected an error without a cloud")
    };
    assert!(
        e.error.contains("did not answer within 3000 ms"),
        "{}",
        e.error
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The unanswered request was sent once more (search.cloud_retry_ms), unchanged: same id.
    let sent = requests.all();
    assert_eq!(sent.len(), 2, "one request and one retry");
    assert_eq!(sent[0].1, sent[1].1);

    let cloud = Cloud::start(cloud_config(&broker.url(), "late-w"))
        .await
        .expect("cloud");
    // The worker announces itself (retained) after subscribing, on the same connection: once
    // that is seen, a request is no longer published before the worker listens.
    let presence_topic = edgeclip_messages::topics::worker_presence("late-w");
    let presence = Recorder::start(&broker.url(), &presence_topic).await;
    presence.wait_for(&presence_topic, |p| !p.is_empty()).await;
    let answer = bounded(
        "search",
        device.search(SearchRequest {
            k: Some(2),
            ..SearchRequest::text("a red circle")
        }),
    )
    .await
    .expect("answer");
    let SearchResponse::Results(results) = answer else {
        panic!("searches work once the cloud is back: {answer:?}")
    };
    assert_eq!(results.hits.len(), 2);
    device.shutdown().await.expect("device shutdown");
    cloud.shutdown().await.expect("cloud shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cloud_serving_another_model_is_refused_with_a_clear_error() {
    let pictures = copy_pictures(&data("shapes"));
    let state = tempfile::tempdir().expect("state");
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let mut config = cloud_config(&broker.url(), "other-w");
    config.model.id = "some-other-model@000000000000".into();
    let cloud = Cloud::start(config).await.expect("cloud");
    let device = Device::start(device_config(
        &broker.url(),
        "mismatch",
        &[pictures.path()],
        state.path(),
    ))
    .await
    .expect("device");
    wait_idle(&device).await;
    let response = bounded("search", device.search(SearchRequest::text("a red circle")))
        .await
        .expect("answer");
    let SearchResponse::Error(e) = response else {
        panic!("a vector of another model must not be ranked")
    };
    assert!(
        e.error.contains("some-other-model") && e.error.contains("ModelMismatch"),
        "{}",
        e.error
    );
    device.shutdown().await.expect("device shutdown");
    cloud.shutdown().await.expect("cloud shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_messages_are_answered_or_dropped_and_everyone_keeps_serving() {
    let pictures = copy_pictures(&data("shapes"));
    let system = System::start("hardened", &[pictures.path()]).await;
    let recorder = Recorder::start(&system.broker.url(), "edgeclip/hardened/results").await;
    let search_topic = topics::search("hardened");
    recorder
        .publish(&search_topic, vec![0xff, 0xfe, 0x00])
        .await;
    recorder
        .publish(&search_topic, r#"{"text": 42, "id": "bad-json"}"#)
        .await;
    recorder.publish(&search_topic, "x".repeat(5000)).await;
    // Garbage on the device<->cloud topics: random bytes, a truncated frame, another version.
    let good = edgeclip_messages::wire::encode(&edgeclip_messages::wire::EncodeRequest {
        request_id: 1,
        reply_to: topics::cloud_reply("hardened"),
        model: "x".into(),
        text: "y".into(),
        lang: None,
    })
    .expect("frame");
    let mut future = good.clone();
    future[2] = 99;
    for junk in [
        b"random bytes".to_vec(),
        good[..good.len() / 2].to_vec(),
        future,
    ] {
        recorder.publish(topics::CLOUD_ENCODE, junk.clone()).await;
        recorder
            .publish(&topics::cloud_reply("hardened"), junk)
            .await;
    }
    let bad_json = recorder
        .wait_for(&topics::results("hardened"), |p| {
            String::from_utf8_lossy(p).contains("bad-json")
        })
        .await;
    let parsed: SearchResponse = serde_json::from_slice(&bad_json).expect("answer is JSON");
    assert!(matches!(parsed, SearchResponse::Error(_)), "{parsed:?}");
    let errors = recorder
        .all()
        .into_iter()
        .filter(|(_, p)| String::from_utf8_lossy(p).contains("\"error\""))
        .count();
    assert!(
        errors >= 2,
        "expected error answers for the bad searches, got {errors}"
    );

    let mut client = Client::connect(&system.broker.url(), Duration::from_secs(5))
        .await
        .expect("connect");
    let response = search(&mut client, "hardened", "a red circle", 1).await;
    assert_eq!(hits(&response).len(), 1);
    client.disconnect().await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_shutdown_announces_offline() {
    let pictures = copy_pictures(&data("shapes"));
    let system = System::start("leaver", &[pictures.path()]).await;
    let url = system.broker.url();
    let availability = topics::availability("leaver");
    let recorder = Recorder::start(&url, &availability).await;
    recorder.wait_for(&availability, |p| p == b"online").await;
    system.stop().await;
    recorder.wait_for(&availability, |p| p == b"offline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_like_this_needs_no_cloud_and_filters_restrict_the_hits() {
    let shapes = data("shapes");
    let labels = labels(&shapes);
    let root = two_copies(&shapes);
    let state = tempfile::tempdir().expect("state");
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    // No cloud at all: "more like this" is answered by the device alone.
    let device = Device::start(device_config(
        &broker.url(),
        "liker",
        &[root.path()],
        state.path(),
    ))
    .await
    .expect("device");
    let status = wait_idle(&device).await;
    assert_eq!(status.indexed as usize, 2 * labels.len());
    let name = labels.keys().next().expect("a picture").clone();
    let query = root.path().join("a").join(&name).display().to_string();
    let like = SearchRequest {
        like: Some(query.clone()),
        k: Some(3),
        ..SearchRequest::text("")
    };
    let SearchResponse::Results(r) = device.search(like.clone()).await.expect("answer") else {
        panic!("like search failed")
    };
    assert_eq!(
        r.hits[0].path,
        root.path().join("b").join(&name).display().to_string(),
        "{r:?}"
    );
    assert!(r.hits[0].score > 0.999);
    assert!(
        r.hits.iter().all(|h| h.path != query),
        "the query picture is not its own hit"
    );
    let strict = SearchRequest {
        filter: edgeclip_messages::Filter {
            min_score: Some(0.999),
            ..like.filter.clone()
        },
        ..like.clone()
    };
    let SearchResponse::Results(r) = device.search(strict).await.expect("answer") else {
        panic!("failed")
    };
    assert_eq!(r.hits.len(), 1);
    let only_a = SearchRequest {
        k: Some(100),
        filter: edgeclip_messages::Filter {
            folder: Some(root.path().join("a").display().to_string()),
            ..like.filter.clone()
        },
        ..like.clone()
    };
    let SearchResponse::Results(r) = device.search(only_a).await.expect("answer") else {
        panic!("failed")
    };
    assert_eq!(r.hits.len(), labels.len() - 1);
    assert!(r.hits.iter().all(|h| h.path.contains("/a/")));
    let future = SearchRequest {
        filter: edgeclip_messages::Filter {
            after: Some(i64::MAX / 2),
            ..like.filter.clone()
        },
        ..like.clone()
    };
    let SearchResponse::Results(r) = device.search(future).await.expect("answer") else {
        panic!("failed")
    };
    assert!(r.hits.is_empty());
    let unknown = SearchRequest {
        like: Some("/nowhere.jpg".into()),
        ..like
    };
    let SearchResponse::Error(e) = device.search(unknown).await.expect("answer") else {
        panic!("must fail")
    };
    assert!(e.error.contains("not an indexed picture"), "{}", e.error);
    device.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn near_duplicate_groups_over_mqtt_pair_each_picture_with_its_copy() {
    let shapes = data("shapes");
    let labels = labels(&shapes);
    let root = two_copies(&shapes);
    // One more copy, re-encoded as PNG: other bytes, nearly the same vector.
    let name = labels.keys().next().expect("a picture").clone();
    image::open(shapes.join(&name))
        .expect("decode")
        .save(root.path().join("a/again.png"))
        .expect("png");
    let state = tempfile::tempdir().expect("state");
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    // No cloud: groups are answered by the device alone.
    let device = Device::start(device_config(
        &broker.url(),
        "twins",
        &[root.path()],
        state.path(),
    ))
    .await
    .expect("device");
    wait_idle(&device).await;
    let mut client = Client::connect(&broker.url(), Duration::from_secs(5))
        .await
        .expect("connect");
    let request = SearchRequest {
        duplicates: Some(0.99),
        k: Some(1000),
        ..SearchRequest::text("")
    };
    let answer = bounded(
        "duplicates",
        client.request("twins", request.clone(), Duration::from_secs(20)),
    )
    .await
    .expect("answer");
    let SearchResponse::Results(r) = answer else {
        panic!("duplicates search failed: {answer:?}")
    };
    assert!(r.hits.is_empty());
    let groups: Vec<Vec<String>> = r
        .groups
        .iter()
        .map(|g| {
            let mut names: Vec<String> = g
                .iter()
                .map(|h| {
                    h.path
                        .strip_prefix(&root.path().display().to_string())
                        .unwrap_or(&h.path)
                        .to_string()
                })
                .collect();
            names.sort();
            names
        })
        .collect();
    // The picture with two copies comes first (largest group), then pairs.
    assert_eq!(
        groups[0],
        {
            let mut expected = vec![
                format!("/a/{name}"),
                "/a/again.png".to_string(),
                format!("/b/{name}"),
            ];
            expected.sort();
            expected
        },
        "{groups:?}"
    );
    for g in &groups[1..] {
        assert_eq!(g.len(), 2, "{groups:?}");
        assert_eq!(file_name(&g[0]), file_name(&g[1]), "{groups:?}");
    }
    assert_eq!(
        groups.len(),
        labels.len(),
        "every picture is in a group: {groups:?}"
    );
    assert!(r.groups.iter().flatten().all(|h| h.score >= 0.99));
    // Filters choose what is compared: folder b alone holds no two alike pictures.
    let only_b = SearchRequest {
        filter: edgeclip_messages::Filter {
            folder: Some(root.path().join("b").display().to_string()),
            ..request.filter.clone()
        },
        ..request.clone()
    };
    let answer = bounded(
        "duplicates in b",
        client.request("twins", only_b, Duration::from_secs(20)),
    )
    .await
    .expect("answer");
    let SearchResponse::Results(r) = answer else {
        panic!("failed: {answer:?}")
    };
    assert!(r.groups.is_empty(), "{r:?}");
    // Folder a alone: the picture and its PNG copy, named right although the rows compared
    // are a subset of the index's.
    let only_a = SearchRequest {
        filter: edgeclip_messages::Filter {
            folder: Some(root.path().join("a").display().to_string()),
            ..request.filter.clone()
        },
        ..request.clone()
    };
    let answer = bounded(
        "duplicates in a",
        client.request("twins", only_a, Duration::from_secs(20)),
    )
    .await
    .expect("answer");
    let SearchResponse::Results(r) = answer else {
        panic!("failed: {answer:?}")
    };
    let mut in_a: Vec<String> = r.groups.iter().flatten().map(|h| h.path.clone()).collect();
    in_a.sort();
    let mut expected = vec![
        root.path().join("a").join(&name).display().to_string(),
        root.path().join("a/again.png").display().to_string(),
    ];
    expected.sort();
    assert_eq!((r.groups.len(), in_a), (1, expected));
    let bad = bounded(
        "bad",
        client.request(
            "twins",
            SearchRequest {
                duplicates: Some(1.5),
                ..request
            },
            Duration::from_secs(20),
        ),
    )
    .await
    .expect("answer");
    let SearchResponse::Error(e) = bad else {
        panic!("a threshold above 1 must be refused")
    };
    assert!(e.error.contains("duplicates"), "{}", e.error);
    client.disconnect().await;
    device.shutdown().await.expect("shutdown");
}
