//! A model change: the background re-index while the old index answers, until the switch.

use std::path::Path;
use std::time::Duration;

use edgeclip_cloud::Cloud;
use edgeclip_device::Device;
use edgeclip_messages::dashboard::{SearchRequest, SearchResponse};

use crate::util::*;

/// The bundled model under another folder name with a harmlessly different config.json (one
/// more newline): another model id, the same weights (the towers are symbolic links), hence the
/// same vectors.
fn model_copy(into: &Path) -> std::path::PathBuf {
    let dir = into.join("clip-shapes-v2");
    for sub in ["visual", "textual"] {
        std::fs::create_dir_all(dir.join(sub)).expect("folder");
        for entry in std::fs::read_dir(model_dir().join(sub)).expect("model folder") {
            let path = entry.expect("entry").path();
            std::os::unix::fs::symlink(&path, dir.join(sub).join(path.file_name().expect("name")))
                .expect("link");
        }
    }
    std::fs::copy(model_dir().join("SHA256SUMS"), dir.join("SHA256SUMS")).expect("sums");
    let mut config = std::fs::read(model_dir().join("config.json")).expect("config");
    config.push(b'\n');
    std::fs::write(dir.join("config.json"), config).expect("config");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_change_re_indexes_in_the_background_while_the_old_index_answers_until_the_switch()
{
    let shapes = data("shapes");
    let labels = labels(&shapes);
    let n = labels.len() as u64;
    let pictures = copy_pictures(&shapes);
    let state = tempfile::tempdir().expect("state");
    let models = tempfile::tempdir().expect("models");
    let v2 = model_copy(models.path());
    let old_id = edgeclip_device::model::ModelFolder::open(&model_dir(), None)
        .expect("model")
        .id;
    let new_id = edgeclip_device::model::ModelFolder::open(&v2, None)
        .expect("model copy")
        .id;
    assert_ne!(old_id, new_id);
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let cloud = Cloud::start(cloud_config(&broker.url(), "upgrade-w"))
        .await
        .expect("cloud");
    let config = device_config(&broker.url(), "upgrader", &[pictures.path()], state.path());
    let red = || SearchRequest {
        k: Some(5),
        ..SearchRequest::text("a red circle")
    };

    let device = Device::start(config.clone()).await.expect("device");
    wait_idle(&device).await;
    let before = device.search(red()).await.expect("search");
    device.shutdown().await.expect("shutdown");

    // The device gets the new model. One picture is still being written (modified "in the
    // future"), so the re-index cannot finish before the test lets it.
    let mut names: Vec<&String> = labels.keys().collect();
    names.sort();
    let late = pictures.path().join(names[0]);
    let late_mtime = std::fs::metadata(&late)
        .expect("late")
        .modified()
        .expect("mtime");
    set_mtime(
        &late,
        std::time::SystemTime::now() + Duration::from_secs(3600),
    );
    let mut new_config = config.clone();
    new_config.model.dir = v2.clone();
    let device = Device::start(new_config.clone())
        .await
        .expect("device with the new model");
    let during = status_until(&device, "re-encoding all but one picture", |s| {
        s.reindex.as_ref().is_some_and(|r| r.indexed == n - 1)
    })
    .await;
    assert_eq!(
        (during.model.as_str(), during.indexed),
        (old_id.as_str(), n),
        "{during:?}"
    );
    assert_eq!(
        during.reindex.as_ref().map(|r| (r.model.as_str(), r.total)),
        Some((new_id.as_str(), n)),
        "{during:?}"
    );

    // The cloud still serves the old model: the old index answers, completely.
    let answer = device.search(red()).await.expect("search");
    let SearchResponse::Results(r) = &answer else {
        panic!("search failed during the re-index: {answer:?}")
    };
    assert_eq!((r.model.as_str(), r.partial), (old_id.as_str(), false));
    assert_eq!(hits(&answer), hits(&before));
    // "More like this" too, even for the picture not re-encoded yet.
    let like = SearchRequest {
        like: Some(late.display().to_string()),
        k: Some(3),
        ..SearchRequest::text("")
    };
    let SearchResponse::Results(r) = device.search(like.clone()).await.expect("like") else {
        panic!("like failed during the re-index")
    };
    assert_eq!((r.model.as_str(), r.hits.len()), (old_id.as_str(), 3));

    // A restart in the middle resumes: nothing already re-encoded is encoded again.
    device.shutdown().await.expect("shutdown");
    let device = Device::start(new_config.clone())
        .await
        .expect("device again");
    // The first scan's report is what ends `starting`, and it counts what the scan queued for
    // encoding: `pending` is then the late picture alone (settling), unless a picture already
    // re-encoded was queued again.
    let resumed = status_until(&device, "the resumed re-index's first scan", |s| {
        s.state != edgeclip_messages::dashboard::DeviceState::Starting
    })
    .await;
    assert_eq!(
        (
            resumed.encoded,
            resumed.pending,
            resumed.reindex.as_ref().map(|r| r.indexed)
        ),
        (0, 1, Some(n - 1)),
        "{resumed:?}"
    );

    // The cloud switches to the new model first: searches are answered from the index being
    // built, marked partial (the late picture is not in it yet).
    cloud.shutdown().await.expect("cloud shutdown");
    let mut cloud_config_v2 = cloud_config(&broker.url(), "upgrade-w2");
    cloud_config_v2.model.dir = v2.clone();
    let cloud = Cloud::start(cloud_config_v2)
        .await
        .expect("cloud with the new model");
    let answer = device
        .search(SearchRequest {
            k: Some(100),
            ..red()
        })
        .await
        .expect("search");
    let SearchResponse::Results(r) = &answer else {
        panic!("search failed with the new cloud: {answer:?}")
    };
    assert_eq!(
        (r.model.as_str(), r.partial, r.hits.len() as u64),
        (new_id.as_str(), true, n - 1)
    );
    assert!(r.hits.iter().all(|h| Path::new(&h.path) != late));

    // The picture is complete: the new index is, and the device switches to it.
    set_mtime(&late, late_mtime);
    let after = status_until(&device, "the switch", |s| {
        s.reindex.is_none() && s.model == new_id && s.pending == 0
    })
    .await;
    assert_eq!((after.indexed, after.encoded), (n, 1), "{after:?}");
    let answer = device.search(red()).await.expect("search");
    let SearchResponse::Results(r) = &answer else {
        panic!("search failed after the switch: {answer:?}")
    };
    assert_eq!((r.model.as_str(), r.partial), (new_id.as_str(), false));
    assert_eq!(hits(&answer), hits(&before), "same weights, same ranking");
    device.shutdown().await.expect("shutdown");
    assert!(!state.path().join("index.next").exists() && !state.path().join("index.old").exists());
    let stored =
        edgeclip_device::index::Store::stored_model(&state.path().join("index")).expect("readable");
    assert_eq!(stored.map(|(m, _)| m), Some(new_id));
    cloud.shutdown().await.expect("cloud shutdown");
}
