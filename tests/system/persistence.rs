//! The persistent index: restarts, on-disk changes, vector precisions, and crashes at random
//! moments.

use std::process::{Command, Stdio};
use std::time::Duration;

use edgeclip_cloud::Cloud;
use edgeclip_device::Device;
use edgeclip_messages::dashboard::SearchRequest;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_encodes_nothing_and_changes_on_disk_are_followed() {
    let shapes = data("shapes");
    let labels = labels(&shapes);
    let pictures = copy_pictures(&shapes);
    let state = tempfile::tempdir().expect("state");
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let cloud = Cloud::start(cloud_config(&broker.url(), "restart-w"))
        .await
        .expect("cloud");
    let config = device_config(&broker.url(), "restarter", &[pictures.path()], state.path());

    let device = Device::start(config.clone()).await.expect("device");
    let first = wait_idle(&device).await;
    assert_eq!(
        (first.indexed as usize, first.encoded as usize),
        (labels.len(), labels.len())
    );
    let before = device
        .search(SearchRequest {
            k: Some(5),
            ..SearchRequest::text("a red circle")
        })
        .await
        .expect("search");
    device.shutdown().await.expect("shutdown");
    // The batch measured at the first start is kept, and the next start takes it from the file.
    let memo = state.path().join(edgeclip_device::batch_memo::FILE);
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&memo).expect("measured batch kept")).expect("json");
    assert_eq!(
        kept["batch"].as_u64(),
        Some(first.encoder_batch as u64),
        "{kept}"
    );
    assert!(
        kept["single_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{kept}"
    );
    // Another batch written there is what the next start runs, without measuring.
    let recalled = if first.encoder_batch == 1 { 2 } else { 1 };
    let mut edited = kept.clone();
    edited["batch"] = recalled.into();
    std::fs::write(&memo, serde_json::to_vec(&edited).unwrap()).expect("edit");

    let device = Device::start(config.clone()).await.expect("device again");
    let second = wait_idle(&device).await;
    assert_eq!(
        (second.indexed as usize, second.encoded),
        (labels.len(), 0),
        "{second:?}"
    );
    assert_eq!(second.encoder_batch, recalled);
    let after = device
        .search(SearchRequest {
            k: Some(5),
            ..SearchRequest::text("a red circle")
        })
        .await
        .expect("search");
    assert_eq!(hits(&before), hits(&after));

    // While it runs, with no rescan asked for: delete one picture, rename one, rewrite one
    // with another's content, copy one under a new name, and add a genuinely new picture.
    let mut names: Vec<&String> = labels.keys().collect();
    names.sort();
    let (gone, moved, changed, source, flipped) =
        (names[0], names[1], names[2], names[3], names[4]);
    let dir = pictures.path();
    std::fs::remove_file(dir.join(gone)).expect("delete");
    std::fs::rename(dir.join(moved), dir.join("renamed.jpg")).expect("rename");
    std::fs::copy(dir.join(source), dir.join(changed)).expect("rewrite");
    std::fs::copy(dir.join(source), dir.join("copy.jpg")).expect("copy");
    image::open(dir.join(flipped))
        .expect("decode")
        .fliph()
        .save(dir.join("mirrored.png"))
        .expect("new picture");
    let third = status_until(&device, "the changes to be picked up", |s| {
        s.encoded >= 1 && s.pending == 0 && s.indexed as usize == labels.len() + 1
    })
    .await;
    // Only the mirrored picture was encoded: the renamed, rewritten and copied ones reused the
    // vectors of pictures with the same content.
    assert_eq!(third.encoded, 1, "{third:?}");
    device.shutdown().await.expect("shutdown");
    cloud.shutdown().await.expect("cloud shutdown");

    let model = edgeclip_device::model::ModelFolder::open(&model_dir(), None).expect("model");
    let (_, index, _) =
        edgeclip_device::index::Store::open(&state.path().join("index"), &model.id, model.dim)
            .expect("store");
    let vector_of = |name: &str| {
        index
            .iter()
            .find(|(e, _)| e.path == dir.join(name))
            .map(|(_, v)| v.to_vec())
    };
    assert!(vector_of(gone).is_none() && vector_of(moved).is_none());
    assert!(vector_of("renamed.jpg").is_some() && vector_of("mirrored.png").is_some());
    assert_eq!(vector_of(changed), vector_of(source));
    assert_eq!(vector_of("copy.jpg"), vector_of(source));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compact_vectors_in_memory_rank_like_f32_and_switching_needs_no_re_encoding() {
    let shapes = data("shapes");
    let labels = labels(&shapes);
    let pictures = copy_pictures(&shapes);
    let reference = Reference::new(&shapes);
    let state = tempfile::tempdir().expect("state");
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let cloud = Cloud::start(cloud_config(&broker.url(), "compact-w"))
        .await
        .expect("cloud");
    let mut encoded = Vec::new();
    for precision in ["i8", "f16", "f32"] {
        let mut config = device_config(&broker.url(), "compact", &[pictures.path()], state.path());
        config.search.vectors =
            serde_json::from_value(serde_json::json!(precision)).expect("precision");
        let device = Device::start(config).await.expect("device");
        let status = wait_idle(&device).await;
        assert_eq!(
            status.indexed as usize,
            labels.len(),
            "{precision}: {status:?}"
        );
        encoded.push(status.encoded);
        for text in [
            "a red circle",
            "a blue square",
            "a yellow star and a purple square",
        ] {
            let all = reference.rank(text, labels.len());
            let response = device
                .search(SearchRequest {
                    k: Some(5),
                    ..SearchRequest::text(text)
                })
                .await
                .expect("search");
            let fifth = all[4].1;
            for (name, score) in scored(&response) {
                let exact = all
                    .iter()
                    .find(|(n, _)| *n == name)
                    .expect("an indexed picture")
                    .1;
                // int8 with a scale per vector errs by ~1e-2 at most on these 64-d vectors
                assert!(
                    (score - exact).abs() < 0.02,
                    "{precision} {text}: {name} scores {score}, exactly {exact}"
                );
                assert!(
                    exact > fifth - 0.04,
                    "{precision} {text}: {name} ({exact}) is far below the 5th best ({fifth})"
                );
            }
        }
        device.shutdown().await.expect("shutdown");
    }
    // Only the first start encoded; the others reused the files on disk.
    assert_eq!(encoded, vec![labels.len() as u64, 0, 0]);
    cloud.shutdown().await.expect("cloud shutdown");
}

#[test]
fn killing_the_device_at_random_moments_never_loses_or_doubles_a_picture() {
    let samples = repo().join("models/samples");
    let labels = labels(&samples);
    let pictures = copy_pictures(&samples);
    let state = tempfile::tempdir().expect("state");
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let config = state.path().join("device.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"crashy\"\nfolders = [{:?}]\nstate_dir = {:?}\n[model]\ndir = {:?}\n[broker]\nurl = {:?}\n",
            pictures.path().display().to_string(),
            state.path().join("state").display().to_string(),
            model_dir().display().to_string(),
            broker.url()
        ),
    )
    .expect("config");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let mut kills = 0;
    for round in 0..20 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = Duration::from_millis(150 + (seed >> 33) % 1500);
        let mut child = Command::new(sibling_binary("edgeclip-device"))
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .expect("device");
        // Not a wait for something to happen: the random moment of the kill is what this
        // test varies, so it lands anywhere in loading, scanning, encoding or writing.
        std::thread::sleep(wait);
        if child.try_wait().expect("wait").is_none() {
            kills += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        println!("round {round}: killed after {wait:?}");
    }
    assert!(
        kills >= 15,
        "only {kills} kills landed while the device ran"
    );

    // What survived is consistent: every picture at most once, nothing corrupt.
    let model = edgeclip_device::model::ModelFolder::open(&model_dir(), None).expect("model");
    let (_, index, report) = edgeclip_device::index::Store::open(
        &state.path().join("state/index"),
        &model.id,
        model.dim,
    )
    .expect("store opens");
    println!(
        "after {kills} kills: {} pictures indexed, {} bytes of torn tail cut",
        index.len(),
        report.truncated_bytes
    );
    assert!(index.len() <= labels.len());
    let paths: std::collections::HashSet<_> = index.iter().map(|(e, _)| e.path.clone()).collect();
    assert_eq!(paths.len(), index.len(), "a picture is indexed twice");
    drop(index);

    // One more run to the end: every picture exactly once, and the same vectors as a clean run.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let crashed =
            Device::start(edgeclip_device::DeviceConfig::load(Some(&config), &[]).expect("config"))
                .await
                .expect("device");
        let status = wait_idle(&crashed).await;
        assert_eq!(
            (status.indexed as usize, status.failed),
            (labels.len(), 0),
            "{status:?}"
        );
        crashed.shutdown().await.expect("shutdown");
        let model = edgeclip_device::model::ModelFolder::open(&model_dir(), None).expect("model");
        let (_, survived, _) = edgeclip_device::index::Store::open(
            &state.path().join("state/index"),
            &model.id,
            model.dim,
        )
        .expect("store");
        let clean_state = tempfile::tempdir().expect("clean state");
        let clean = Device::start(device_config(
            &broker.url(),
            "clean",
            &[pictures.path()],
            clean_state.path(),
        ))
        .await
        .expect("clean device");
        wait_idle(&clean).await;
        clean.shutdown().await.expect("shutdown");
        let (_, reference, _) = edgeclip_device::index::Store::open(
            &clean_state.path().join("index"),
            &model.id,
            model.dim,
        )
        .expect("store");
        assert_eq!(survived.len(), reference.len());
        for (entry, vector) in reference.iter() {
            let (_, v) = survived
                .iter()
                .find(|(e, _)| e.path == entry.path)
                .unwrap_or_else(|| panic!("{} lost", entry.path.display()));
            let cos: f32 = v.iter().zip(vector.iter()).map(|(a, b)| a * b).sum();
            assert!(cos > 0.9999, "{}: cosine {cos}", entry.path.display());
        }
    });
}

#[test]
fn a_second_device_on_the_same_state_folder_is_refused_and_names_the_first() {
    let pictures = copy_pictures(&data("shapes"));
    let state = tempfile::tempdir().expect("state");
    let up = |port: u16| {
        let mut command = edgeclip_up(port, pictures.path(), state.path());
        command.stderr(Stdio::piped());
        command
    };
    let mut first = Killed(up(free_port()).spawn().expect("the first device starts"));
    let out = line_reader(first.0.stdout.take().expect("stdout"));
    wait_line(&out, |l| l.starts_with("indexed "));
    let second = up(free_port()).output().expect("the second runs");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("is in use by process")
            && stderr.contains(&first.0.id().to_string())
            && stderr.contains(&state.path().display().to_string()),
        "{stderr}"
    );
    // The first one was left alone: its index is intact and it still answers.
    assert!(
        first.0.try_wait().expect("wait").is_none(),
        "the first device still runs"
    );
}
