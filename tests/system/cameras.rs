//! Cameras polled over HTTP: kept and near-duplicate frames, sources, `keep_days` and
//! `keep_frames`.

use std::path::Path;
use std::time::Duration;

use edgeclip_device::Device;
use edgeclip_messages::dashboard::{SearchRequest, SearchResponse};

use crate::util::*;

/// A camera on a free port: every GET is answered with the current frame (404 while there is
/// none).
struct FakeCamera {
    url: String,
    frame: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeCamera {
    async fn start() -> FakeCamera {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://127.0.0.1:{}/snapshot.jpg",
            listener.local_addr().expect("addr").port()
        );
        let frame = std::sync::Arc::new(std::sync::Mutex::new(None::<Vec<u8>>));
        let serving = frame.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    continue;
                };
                let serving = serving.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let (mut request, mut buf) = (Vec::new(), [0u8; 1024]);
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16384 {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = serving.lock().expect("lock").clone();
                    let response = match body {
                        Some(b) => [format!("HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len()).into_bytes(), b].concat(),
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    };
                    let _ = socket.write_all(&response).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        FakeCamera { url, frame, task }
    }

    fn show(&self, picture: Option<Vec<u8>>) {
        *self.frame.lock().expect("lock") = picture;
    }
}

impl Drop for FakeCamera {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn camera_of(
    s: &edgeclip_messages::dashboard::DeviceStatus,
) -> edgeclip_messages::dashboard::CameraStatus {
    s.cameras
        .first()
        .cloned()
        .expect("the camera in the status")
}

/// Two clearly different camera scenes among the fixtures: the first picture, and the one
/// least like it.
fn two_scenes(reference: &Reference) -> (String, String) {
    let names = reference.names();
    let a = names[0].clone();
    let cos = |n: &String| edgeclip_device::rank::dot(reference.vector(&a), reference.vector(n));
    let b = names
        .iter()
        .min_by(|x, y| cos(x).total_cmp(&cos(y)))
        .expect("pictures")
        .clone();
    assert!(cos(&b) < 0.9);
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_polled_camera_keeps_distinct_frames_deletes_static_ones_and_is_searchable_by_source() {
    let shapes = data("shapes");
    let reference = Reference::new(&shapes);
    let names = reference.names();
    let (a, b) = two_scenes(&reference);
    let (frame_a, frame_b) = (
        std::fs::read(shapes.join(&a)).expect("a"),
        std::fs::read(shapes.join(&b)).expect("b"),
    );

    let library = copy_pictures(&shapes);
    let state = tempfile::tempdir().expect("state");
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let camera = FakeCamera::start().await;
    camera.show(Some(frame_a.clone()));
    let mut config = device_config(&broker.url(), "watcher", &[library.path()], state.path());
    let mut cam: edgeclip_device::config::CameraConfig = serde_json::from_value(
        serde_json::json!({"name": "door", "url": camera.url, "interval_ms": 150}),
    )
    .expect("camera config");
    cam.folder = Default::default();
    config.cameras.push(cam);
    let config = config.validated().expect("valid");
    let folder = state.path().join("cameras/door");
    let started_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let device = Device::start(config).await.expect("device");

    // The camera goes dark (404) between scenes until every frame it gave is handled, so the
    // frames of two scenes are never encoded at the same time.
    let drained = |s: &edgeclip_messages::dashboard::DeviceStatus| {
        let c = camera_of(s);
        c.last_error.is_some() && c.polled == c.kept + c.skipped && s.pending == 0
    };
    // A static scene: one frame kept, the others deleted.
    status_until(&device, "a static scene", |s| {
        camera_of(s).kept == 1 && camera_of(s).skipped >= 3
    })
    .await;
    camera.show(None);
    status_until(&device, "the first scene handled", drained).await;
    // Something changes: kept; and back: kept again (it differs from the last kept frame).
    camera.show(Some(frame_b));
    status_until(&device, "a second scene", |s| {
        camera_of(s).kept == 2 && camera_of(s).last_error.is_none()
    })
    .await;
    camera.show(None);
    status_until(&device, "the second scene handled", drained).await;
    camera.show(Some(frame_a));
    status_until(&device, "the first scene again", |s| {
        camera_of(s).kept == 3 && camera_of(s).last_error.is_none()
    })
    .await;
    // The camera fails: counted, named, and nothing more is saved.
    camera.show(None);
    let settled = status_until(&device, "failing polls with every frame handled", |s| {
        camera_of(s).failed >= 2 && drained(s)
    })
    .await;
    let c = camera_of(&settled);
    assert!(
        c.last_error.as_deref().is_some_and(|e| e.contains("404")),
        "{c:?}"
    );
    assert_eq!(c.kept, 3, "{c:?}");
    let mut frames: Vec<String> = std::fs::read_dir(&folder)
        .expect("camera folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    frames.sort();
    assert_eq!(frames.len(), 3, "only kept frames stay on disk: {frames:?}");
    assert!(
        frames
            .iter()
            .all(|f| f.len() == "YYYYMMDD-HHMMSS-mmm.jpg".len() && f.ends_with(".jpg")),
        "{frames:?}"
    );
    assert_eq!(settled.indexed as usize, names.len() + 3, "{settled:?}");

    // Searchable by source: "more like this" of the library's first picture.
    let query = library.path().join(&a).display().to_string();
    let like = |source: Option<&str>| SearchRequest {
        like: Some(query.clone()),
        k: Some(100),
        filter: edgeclip_messages::Filter {
            source: source.map(String::from),
            ..Default::default()
        },
        ..SearchRequest::text("")
    };
    let SearchResponse::Results(r) = device.search(like(Some("door"))).await.expect("answer")
    else {
        panic!("source search failed")
    };
    assert_eq!(r.hits.len(), 3, "{r:?}");
    assert!(
        r.hits.iter().all(|h| h.source == "door"
            && Path::new(&h.path).starts_with(&folder)
            && h.taken_s >= started_s - 1),
        "{r:?}"
    );
    assert!(
        r.hits[0].score > 0.999 && r.hits[1].score > 0.999,
        "the two frames of the first scene come first: {r:?}"
    );
    let SearchResponse::Results(r) = device.search(like(Some(""))).await.expect("answer") else {
        panic!("library search failed")
    };
    assert_eq!(r.hits.len(), names.len() - 1);
    assert!(r.hits.iter().all(|h| h.source.is_empty()));
    let SearchResponse::Results(r) = device.search(like(Some("yard"))).await.expect("answer")
    else {
        panic!("search failed")
    };
    assert!(r.hits.is_empty());
    device.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_camera_deletes_frames_older_than_keep_days_and_beyond_keep_frames() {
    use edgeclip_device::camera::frame_name;
    let shapes = data("shapes");
    let (a, b) = two_scenes(&Reference::new(&shapes));
    let (frame_a, frame_b) = (
        std::fs::read(shapes.join(&a)).expect("a"),
        std::fs::read(shapes.join(&b)).expect("b"),
    );

    // Frames left by earlier runs: two older than 30 days, two recent; and a file of the
    // user's own, which is never a frame however old.
    let library = tempfile::tempdir().expect("library");
    let state = tempfile::tempdir().expect("state");
    let folder = state.path().join("cameras/door");
    std::fs::create_dir_all(&folder).expect("camera folder");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let day = 86_400_000;
    let left = |days: i64| format!("{}.jpg", frame_name(now_ms - days * day));
    // Each with its poll time as modification time, as the camera saves them: the newest (of
    // scene b) is then the last kept frame the first new one is compared with.
    let write = |name: String, bytes: &[u8], days: i64| {
        std::fs::write(folder.join(&name), bytes).expect("old frame");
        let polled = std::time::UNIX_EPOCH + Duration::from_millis((now_ms - days * day) as u64);
        std::fs::File::options()
            .write(true)
            .open(folder.join(&name))
            .and_then(|f| f.set_modified(polled))
            .expect("mtime");
    };
    for (days, bytes) in [(40, &frame_a), (31, &frame_b), (2, &frame_a), (1, &frame_b)] {
        write(left(days), bytes, days);
    }
    write("holiday.jpg".into(), &frame_b, 400);

    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let camera = FakeCamera::start().await;
    let mut config = device_config(&broker.url(), "keeper", &[library.path()], state.path());
    let cam: edgeclip_device::config::CameraConfig =
        serde_json::from_value(serde_json::json!({"name": "door", "url": camera.url, "interval_ms": 150, "keep_days": 30, "keep_frames": 2})).expect("camera config");
    config.cameras.push(cam);
    let device = Device::start(config.validated().expect("valid"))
        .await
        .expect("device");
    let drained = |s: &edgeclip_messages::dashboard::DeviceStatus| {
        let c = camera_of(s);
        c.last_error.is_some() && c.polled == c.kept + c.skipped && s.pending == 0
    };
    // The camera answers once the leftovers are indexed (the first new frame is then compared
    // with the newest of them, as after a restart).
    status_until(&device, "the leftover frames indexed", |s| {
        s.indexed == 5 && s.pending == 0
    })
    .await;
    camera.show(Some(frame_a.clone()));
    // The first frame: the two old frames go (age); once it is kept, the older of the recent
    // two goes too (it and one older frame make keep_frames = 2).
    status_until(&device, "the first frame kept", |s| {
        camera_of(s).kept == 1 && camera_of(s).skipped >= 2
    })
    .await;
    camera.show(None);
    status_until(&device, "the first scene handled", drained).await;
    // A new scene: kept, and the last recent frame goes.
    camera.show(Some(frame_b));
    status_until(&device, "a second scene", |s| {
        camera_of(s).kept == 2 && camera_of(s).last_error.is_none()
    })
    .await;
    camera.show(None);
    // Every frame handled, and a scan since the deletions (each poll's frame triggers one).
    let on_disk = || {
        let mut files: Vec<String> = std::fs::read_dir(&folder)
            .expect("folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        files
    };
    let settled = status_until(
        &device,
        "the second scene handled and the index in step with the folder",
        |s| drained(s) && s.indexed as usize == on_disk().len(),
    )
    .await;
    let c = camera_of(&settled);
    assert_eq!((c.kept, c.pruned), (2, 4), "{c:?}");
    let files = on_disk();
    assert_eq!(files.len(), 3, "{files:?}");
    assert_eq!(files[2], "holiday.jpg", "{files:?}");
    assert!(
        files[..2].iter().all(|f| f.as_str() > left(1).as_str()),
        "only this run's two kept frames stay: {files:?}"
    );
    device.shutdown().await.expect("shutdown");
}
