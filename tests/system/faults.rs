//! Faults through the real programs and a real broker: the device's disk filling up while it
//! writes its index, and Mosquitto restarted while the device indexes and searches.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgeclip::client::Client;
use edgeclip_cloud::Cloud;
use edgeclip_device::Device;
use edgeclip_messages::dashboard::{DeviceStatus, SearchResponse};

use crate::util::*;

fn set_file_size_limit(pid: libc::pid_t, bytes: Option<u64>) {
    let limit = libc::rlimit {
        rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit only reads `limit` and writes nothing (old limit pointer is null).
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

async fn reported_status_until(
    client: &mut Client,
    device: &str,
    what: &str,
    pred: impl Fn(&DeviceStatus) -> bool,
) -> DeviceStatus {
    let mut wait = Wait::new(what, TEST_TIMEOUT);
    loop {
        match client.status(device, Duration::from_secs(2)).await {
            Ok((_, s)) if pred(&s) => return s,
            Ok((_, s)) => wait.again(&s).await,
            Err(e) => wait.again(&e).await,
        }
    }
}

/// The disk fills up (simulated with the file-size limit of the device process, which makes
/// writes fail like a full disk does) while the device writes its index: the device says so
/// in its status, keeps answering searches from what it has, and once space returns writes
/// every waiting picture without encoding it again; the index on disk is valid throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_is_reported_and_indexing_resumes_when_space_returns() {
    let tmp = tempfile::tempdir().expect("tmp");
    let shapes = data("shapes");
    let labels = labels(&shapes);
    let pictures = copy_pictures(&shapes);
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let url = broker.url();
    let cloud = bounded("cloud start", Cloud::start(cloud_config(&url, "disk-w")))
        .await
        .expect("cloud");
    let state = tmp.path().join("state");
    let conf = tmp.path().join("device.toml");
    std::fs::write(
        &conf,
        format!(
            "device_id = \"sdcard\"\nfolders = [{:?}]\nstate_dir = {:?}\n[model]\ndir = {:?}\n[broker]\nurl = {url:?}\n[status]\ninterval_ms = 200\n",
            pictures.path().display().to_string(),
            state.display().to_string(),
            model_dir().display().to_string()
        ),
    )
    .expect("device.toml");
    // Room for the journal's header and about four pictures' records (~400 bytes each).
    const ROOM: u64 = 1800;
    let mut command = Command::new(sibling_binary("edgeclip-device"));
    command.arg("--config").arg(&conf).stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // A process over its file-size limit gets SIGXFSZ, which kills by default; ignored,
            // the write fails with EFBIG instead, as a full disk fails with ENOSPC. Ignored
            // signals stay ignored across exec.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: ROOM,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let device = Killed(command.spawn().expect("device starts"));
    let pid = device.0.id() as libc::pid_t;

    let mut client = bounded("connect", Client::connect(&url, Duration::from_secs(5)))
        .await
        .expect("connect");
    let full = reported_status_until(
        &mut client,
        "sdcard",
        "the device reports the full disk",
        |s| s.storage_error.is_some() && s.unsaved as usize + s.indexed as usize == labels.len(),
    )
    .await;
    assert!(
        full.indexed >= 1 && (full.indexed as usize) < labels.len(),
        "{full:?}"
    );
    assert_eq!(
        full.failed, 0,
        "a full disk is not the pictures' fault: {full:?}"
    );
    assert!(
        full.storage_error
            .as_deref()
            .is_some_and(|e| e.contains("journal")),
        "{full:?}"
    );

    // It keeps serving searches from what it has.
    let response = bounded(
        "search",
        client.search("sdcard", "a red circle", Some(50), Duration::from_secs(20)),
    )
    .await
    .expect("answered");
    match &response {
        SearchResponse::Results(r) => assert_eq!(r.hits.len(), full.indexed as usize),
        SearchResponse::Error(e) => panic!("search failed: {}", e.error),
    }

    // Space returns.
    set_file_size_limit(pid, None);
    let done = reported_status_until(
        &mut client,
        "sdcard",
        "the waiting pictures are written",
        |s| s.storage_error.is_none() && s.unsaved == 0 && s.indexed as usize == labels.len(),
    )
    .await;
    assert_eq!(
        (done.encoded as usize, done.failed),
        (labels.len(), 0),
        "nothing encoded twice, nothing lost: {done:?}"
    );
    client.disconnect().await;
    drop(device);

    // The index on disk holds every picture exactly once.
    let model = edgeclip_device::model::ModelFolder::open(&model_dir(), None).expect("model");
    let (_, index, report) =
        edgeclip_device::index::Store::open(&state.join("index"), &model.id, model.dim)
            .expect("the index opens");
    assert_eq!((index.len(), report.pictures), (labels.len(), labels.len()));
    let mut paths: Vec<_> = index.iter().map(|(e, _)| e.path.clone()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), labels.len());
    bounded("cloud shutdown", cloud.shutdown())
        .await
        .expect("cloud shutdown");
}

/// Accepts one connection on `listener`, reads its first bytes (an MQTT CONNECT names its
/// client id) and closes it; whether it came from `client_id`.
async fn is_connect_of(listener: &tokio::net::TcpListener, client_id: &str) -> bool {
    use tokio::io::AsyncReadExt;
    let (mut socket, _) = listener.accept().await.expect("accept");
    let mut connect = vec![0u8; 1024];
    let n = bounded("a CONNECT packet", socket.read(&mut connect))
        .await
        .unwrap_or(0);
    connect[..n]
        .windows(client_id.len())
        .any(|w| w == client_id.as_bytes())
}

/// Mosquitto is restarted while the device indexes and while a search waits for the cloud:
/// device and cloud reconnect by themselves, the index ends with every picture exactly once,
/// and the search in flight answers (after the device's retry) or fails with a reason — it
/// never hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_loses_no_picture_and_hangs_no_search() {
    let tmp = tempfile::tempdir().expect("tmp");
    let shapes = data("shapes");
    let labels = labels(&shapes);
    // Four copies of every picture under other names: enough work to restart the broker
    // while the device is still indexing.
    let pictures = tempfile::tempdir().expect("pictures");
    for copy in 0..4 {
        for name in labels.keys() {
            std::fs::copy(
                shapes.join(name),
                pictures.path().join(format!("{copy}-{name}")),
            )
            .expect("copy");
        }
    }
    let total = labels.len() * 4;
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let mut broker = Some(mosquitto(port, tmp.path()));
    let cloud = bounded("cloud start", Cloud::start(cloud_config(&url, "restart-w")))
        .await
        .expect("cloud");
    let state = tempfile::tempdir().expect("state");
    let mut config = device_config(&url, "restarted", &[pictures.path()], state.path());
    config.encoder.workers = 1;
    let device = bounded("device start", Device::start(config))
        .await
        .expect("device");

    // Restart the broker while pictures are still waiting.
    let s = status_until(&device, "the device to index its first pictures", |s| {
        s.indexed >= 2
    })
    .await;
    assert!(
        (s.indexed as usize) < total,
        "indexing finished before the broker restart; make the test's folder bigger"
    );
    drop(broker.take());
    // Until Mosquitto is back, the port answers with a listener of the test's own, which
    // takes note of the device's reconnect attempts and closes each at once.
    let stand_in = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the broker's port");
    // A search while the broker is down: the device cannot reach the cloud.
    let started = Instant::now();
    let conf_dir = tmp.path().to_path_buf();
    let (answer, restarted) = tokio::join!(
        device.search(edgeclip_messages::dashboard::SearchRequest::text(
            "a red circle"
        )),
        async move {
            // The broker comes back once the device has noticed it gone: its link is trying
            // to reconnect, with the search waiting.
            bounded("the device's reconnect attempt", async {
                while !is_connect_of(&stand_in, "edgeclip-device-restarted").await {}
            })
            .await;
            drop(stand_in);
            tokio::task::spawn_blocking(move || mosquitto(port, &conf_dir))
                .await
                .expect("restart")
        }
    );
    broker = Some(restarted);
    let answer = answer.expect("the device answers");
    let waited = started.elapsed();
    // Answered after the retry once the broker is back, or failed with a reason; never a hang.
    match &answer {
        SearchResponse::Results(r) => assert!(!r.hits.is_empty()),
        SearchResponse::Error(e) => assert!(
            e.error.contains("cloud"),
            "a reason naming the cloud: {}",
            e.error
        ),
    }
    assert!(
        waited < Duration::from_secs(15),
        "the search took {waited:?}"
    );

    // Both reconnect on their own: the device finishes and answers searches again.
    let done = wait_idle(&device).await;
    assert_eq!((done.indexed as usize, done.failed), (total, 0), "{done:?}");
    wait_until("searches to work again", TEST_TIMEOUT, || async {
        match device
            .search(edgeclip_messages::dashboard::SearchRequest::text(
                "a blue square",
            ))
            .await
            .expect("search")
        {
            SearchResponse::Results(_) => Ok(()),
            error => Err(error),
        }
    })
    .await;
    bounded("device shutdown", device.shutdown())
        .await
        .expect("shutdown");
    bounded("cloud shutdown", cloud.shutdown())
        .await
        .expect("cloud shutdown");
    drop(broker);

    let model = edgeclip_device::model::ModelFolder::open(&model_dir(), None).expect("model");
    let (_, index, _) =
        edgeclip_device::index::Store::open(&state.path().join("index"), &model.id, model.dim)
            .expect("store");
    let mut paths: Vec<_> = index.iter().map(|(e, _)| e.path.clone()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(
        (index.len(), paths.len()),
        (total, total),
        "every picture exactly once"
    );
}
