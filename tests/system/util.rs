//! Helpers shared by the whole-system tests: paths of the fixtures, a broker on a free port,
//! device and cloud configurations, and waits that always have a deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgeclip::broker::EmbeddedBroker;
use edgeclip_cloud::{Cloud, CloudConfig};
use edgeclip_device::{Device, DeviceConfig};
use edgeclip_messages::dashboard::{DeviceState, DeviceStatus, SearchResponse};
use serde::Deserialize;

/// Every await in a test is bounded by this, so a hang fails instead of stalling the suite.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Root of the checkout.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled small model.
pub fn model_dir() -> PathBuf {
    repo().join("models/clip-shapes")
}

/// Fixture folder under tests/data.
pub fn data(rel: &str) -> PathBuf {
    repo().join("tests/data").join(rel)
}

/// Runs `fut` with [`TEST_TIMEOUT`].
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TEST_TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {TEST_TIMEOUT:?}"),
    }
}

/// A wait for an observable state, with a deadline: the caller checks the state and, while it
/// is not there yet, calls [`Wait::again`] with what it saw. `again` fails the test once the
/// deadline has passed (naming what was awaited and the last state seen) and otherwise pauses
/// a short, growing interval (10 ms, doubling up to 200 ms) before the next check. Every
/// polling loop of the tests goes through it, mostly by [`wait_until`]; a fixed sleep that
/// hopes something has happened has no place here.
pub struct Wait {
    what: String,
    within: Duration,
    deadline: Instant,
    pause: Duration,
}

impl Wait {
    /// A wait for `what` (phrased as the state awaited), failing after `within`.
    pub fn new(what: impl Into<String>, within: Duration) -> Wait {
        Wait {
            what: what.into(),
            within,
            deadline: Instant::now() + within,
            pause: Duration::from_millis(10),
        }
    }

    /// Time left before the deadline.
    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The pause before the next check; fails the test if the deadline has passed.
    fn next(&mut self, last: &dyn std::fmt::Debug) -> Duration {
        assert!(
            Instant::now() < self.deadline,
            "waited {:?} for {}; last seen: {last:?}",
            self.within,
            self.what
        );
        let pause = self.pause.min(self.left());
        self.pause = (self.pause * 2).min(Duration::from_millis(200));
        pause
    }

    /// The state is not there yet (`last` is what was seen): pause before the next check.
    pub async fn again(&mut self, last: &dyn std::fmt::Debug) {
        let pause = self.next(last);
        tokio::time::sleep(pause).await;
    }

    /// [`Wait::again`] for tests without a runtime (processes, sockets).
    pub fn again_blocking(&mut self, last: &dyn std::fmt::Debug) {
        let pause = self.next(last);
        std::thread::sleep(pause);
    }
}

/// Checks until `check` answers `Ok` (the state awaited, returned) rather than `Err` (the
/// state seen instead), failing after `within`; a check that hangs fails too.
pub async fn wait_until<T, L, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    L: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, L>>,
{
    let mut wait = Wait::new(what, within);
    loop {
        match tokio::time::timeout(wait.left(), check()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(last)) => wait.again(&last).await,
            Err(_) => panic!("waited {within:?} for {what}; the last check did not finish"),
        }
    }
}

/// [`wait_until`] for tests without a runtime.
pub fn wait_until_blocking<T, L: std::fmt::Debug>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<T, L>,
) -> T {
    let mut wait = Wait::new(what, within);
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => wait.again_blocking(&last),
        }
    }
}

/// One shape in a labels.json (the whole format, though no test reads every field).
#[derive(Debug, Clone, Deserialize)]
#[allow(dead_code)]
pub struct ShapeLabel {
    pub colour: String,
    pub shape: String,
    pub size: String,
    pub position: String,
}

/// One picture in a labels.json (the whole format, though no test reads every field).
#[derive(Debug, Clone, Deserialize)]
#[allow(dead_code)]
pub struct SceneLabel {
    pub background: String,
    pub shapes: Vec<ShapeLabel>,
}

/// labels.json of a generated picture folder: file name -> scene.
pub fn labels(dir: &Path) -> BTreeMap<String, SceneLabel> {
    let raw = std::fs::read(dir.join("labels.json")).expect("labels.json");
    serde_json::from_slice(&raw).expect("labels.json parses")
}

/// Copies a fixture folder's pictures (not labels.json) into a fresh temporary folder.
pub fn copy_pictures(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(from).expect("fixture folder") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e != "json") {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
    }
    dir
}

/// A fresh temporary folder holding the fixture's pictures twice, in `a/` and `b/`.
pub fn two_copies(from: &Path) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("root");
    for sub in ["a", "b"] {
        let copy = copy_pictures(from);
        std::fs::rename(copy.path(), root.path().join(sub)).expect("move");
    }
    root
}

/// Device configuration for tests: given broker and folders, quick timeouts.
pub fn device_config(url: &str, id: &str, folders: &[&Path], state: &Path) -> DeviceConfig {
    let folders: Vec<String> = folders.iter().map(|f| f.display().to_string()).collect();
    DeviceConfig::load(
        None,
        &[
            ("device_id", id.into()),
            ("state_dir", state.display().to_string().into()),
            ("broker.url", url.into()),
            ("model.dir", model_dir().display().to_string().into()),
            ("folders", folders.into()),
            ("search.cloud_timeout_ms", 3000.into()),
            ("capture.rescan_s", 0.into()),
            ("capture.settle_ms", 300.into()),
            ("capture.debounce_ms", 200.into()),
            ("status.interval_ms", 200.into()),
            ("http.bind", "127.0.0.1".into()),
            ("http.port", 0.into()),
        ],
    )
    .expect("device config")
}

/// Cloud configuration for tests.
/// The tests search as fast as the system answers (32 searches in ~0.1 s in the quality
/// test): above the default 5 a second per device (burst 20), so the rate is raised here;
/// the limits themselves are tested in security.rs with their own values.
pub fn cloud_config(url: &str, worker: &str) -> CloudConfig {
    CloudConfig::load(
        None,
        &[
            ("worker_id", worker.into()),
            ("broker.url", url.into()),
            ("model.dir", model_dir().display().to_string().into()),
            ("limits.requests_per_s", 1000.0.into()),
            ("limits.burst", 1000.into()),
        ],
    )
    .expect("cloud config")
}

/// A broker, a cloud worker and a device on `folders`, indexed.
pub struct System {
    pub state: tempfile::TempDir,
    pub broker: EmbeddedBroker,
    pub cloud: Option<Cloud>,
    pub device: Device,
}

impl System {
    pub async fn start(id: &str, folders: &[&Path]) -> System {
        let broker = EmbeddedBroker::start_on_free_port().expect("broker");
        let cloud = bounded(
            "cloud start",
            Cloud::start(cloud_config(&broker.url(), &format!("{id}-w"))),
        )
        .await
        .expect("cloud");
        let state = tempfile::tempdir().expect("state");
        let device = bounded(
            "device start",
            Device::start(device_config(&broker.url(), id, folders, state.path())),
        )
        .await
        .expect("device");
        wait_idle(&device).await;
        System {
            state,
            broker,
            cloud: Some(cloud),
            device,
        }
    }

    pub async fn stop(self) {
        bounded("device shutdown", self.device.shutdown())
            .await
            .expect("device shutdown");
        if let Some(cloud) = self.cloud {
            bounded("cloud shutdown", cloud.shutdown())
                .await
                .expect("cloud shutdown");
        }
    }
}

/// Waits until the device has indexed everything it found.
pub async fn wait_idle(device: &Device) -> DeviceStatus {
    status_until(device, "the device to be idle", |s| {
        s.state == DeviceState::Idle && s.pending == 0
    })
    .await
}

/// File name of a hit's path.
pub fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Publishes seen: (topic, payload).
pub type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// Records every publish matching a filter, from a separate MQTT client.
pub struct Recorder {
    pub client: rumqttc::AsyncClient,
    pub seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Connects, subscribes to `filter` and waits for the acknowledgement.
    pub async fn start(url: &str, filter: &str) -> Recorder {
        Self::start_with(url, &edgeclip_link::Security::default(), filter).await
    }

    /// [`Recorder::start`] with credentials and TLS.
    pub async fn start_with(
        url: &str,
        security: &edgeclip_link::Security,
        filter: &str,
    ) -> Recorder {
        Self::start_filters(url, security, &[filter]).await
    }

    /// [`Recorder::start_with`] on several filters, acknowledged together.
    pub async fn start_filters(
        url: &str,
        security: &edgeclip_link::Security,
        filters: &[&str],
    ) -> Recorder {
        let (host, port, tls) = edgeclip_link::options::parse_broker(url).expect("url");
        let id = format!("recorder-{}", rand_suffix());
        let mut options = rumqttc::MqttOptions::new(id, host, port);
        options.set_max_packet_size(4 << 20, 4 << 20);
        security.apply(&mut options, tls).expect("security");
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
        client
            .subscribe_many(
                filters.iter().map(|f| {
                    rumqttc::SubscribeFilter::new(f.to_string(), rumqttc::QoS::AtLeastOnce)
                }),
            )
            .await
            .expect("subscribe");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (acked_tx, acked_rx) = tokio::sync::oneshot::channel();
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut acked = Some(acked_tx);
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(tx) = acked.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        sink.lock()
                            .expect("lock")
                            .push((p.topic, p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    // The next poll reconnects: pause so a broker that is gone is not
                    // hammered (an event loop's backoff, not a wait for something to happen).
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        bounded("recorder subscription", acked_rx)
            .await
            .expect("suback");
        Recorder { client, seen, task }
    }

    /// Publishes from the recorder's client.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish");
    }

    /// Everything recorded so far.
    pub fn all(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().expect("lock").clone()
    }

    /// Waits until a publish on `topic` satisfies `pred`, and returns it.
    pub async fn wait_for(&self, topic: &str, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let what = format!("a matching publish on {topic}");
        wait_until(&what, TEST_TIMEOUT, || async {
            let all = self.all();
            let seen = all.len();
            all.into_iter()
                .find(|(t, p)| t == topic && pred(p))
                .map(|(_, p)| p)
                .ok_or(format!("{seen} publishes, none matching"))
        })
        .await
    }

    /// A round trip through the broker: publishes a marker on `topic` (which this recorder's
    /// filter must match) and waits until it comes back. Whatever the broker had routed to
    /// this recorder before the marker (retained messages at subscription, earlier publishes)
    /// has then been recorded: brokers deliver to one subscriber in order. The marker itself
    /// is not kept among the recorded publishes.
    pub async fn round_trip(&self, topic: &str) {
        let marker = format!("edgeclip-test-marker-{}", rand_suffix()).into_bytes();
        self.publish(topic, marker.clone()).await;
        self.wait_for(topic, |p| p == marker.as_slice()).await;
        self.seen
            .lock()
            .expect("lock")
            .retain(|(t, p)| !(t == topic && *p == marker));
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A short random suffix for client ids.
pub fn rand_suffix() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), n)
}

/// The model's own ranking, computed directly with the engines (no actors, no MQTT): what the
/// whole system must reproduce.
pub struct Reference {
    tokenizer: edgeclip_cloud::tokenize::ClipTokenizer,
    text: edgeclip_cloud::encode::TextTower,
    pictures: Vec<(String, Vec<f32>)>,
}

impl Reference {
    /// Loads the bundled model and encodes every picture of `dir` (by file name).
    pub fn new(dir: &Path) -> Reference {
        use edgeclip_cloud::model::TextModelFolder;
        let model = edgeclip_device::model::ModelFolder::open(&model_dir(), None).expect("model");
        let textual = TextModelFolder::open(&model_dir(), None).expect("model");
        let image = edgeclip_device::encode::ImageTower::load(
            &model.visual_onnx(),
            model.preprocess.size as usize,
            model.dim,
        )
        .expect("image tower");
        let tokenizer = edgeclip_cloud::tokenize::ClipTokenizer::from_file(
            &textual.tokenizer_json(),
            textual.context_length,
        )
        .expect("tokenizer");
        let text = edgeclip_cloud::encode::TextTower::load(
            &textual.textual_onnx(),
            textual.context_length,
            textual.dim,
        )
        .expect("text tower");
        let mut pictures = Vec::new();
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e != "json"))
            .collect();
        names.sort();
        for path in names {
            let img = edgeclip_device::preprocess::decode_file(&path, Default::default())
                .expect("decode");
            let v = image
                .encode(model.preprocess.tensor(&img).expect("preprocess"))
                .expect("encode");
            pictures.push((
                path.file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned(),
                v,
            ));
        }
        Reference {
            tokenizer,
            text,
            pictures,
        }
    }

    /// The image vector of a picture, by file name.
    pub fn vector(&self, name: &str) -> &[f32] {
        &self
            .pictures
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is not a reference picture"))
            .1
    }

    /// File names of the reference pictures, sorted.
    pub fn names(&self) -> Vec<String> {
        self.pictures.iter().map(|(n, _)| n.clone()).collect()
    }

    /// (file name, score) of the `k` best pictures for `text`, best first.
    pub fn rank(&self, text: &str, k: usize) -> Vec<(String, f32)> {
        let q = self
            .text
            .encode(&self.tokenizer.encode(text).expect("tokens"))
            .expect("text vector");
        let mut scored: Vec<(String, f32)> = self
            .pictures
            .iter()
            .map(|(n, v)| (n.clone(), edgeclip_device::rank::dot(&q, v)))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        scored
    }
}

/// Asserts that a ranking (file name, score) from the system equals the reference ranking:
/// same scores, and the same pictures wherever scores are not tied.
pub fn assert_same_ranking(system: &[(String, f32)], reference: &[(String, f32)], what: &str) {
    assert_eq!(
        system.len(),
        reference.len(),
        "{what}: {system:?} vs {reference:?}"
    );
    for (i, ((sn, ss), (rn, rs))) in system.iter().zip(reference).enumerate() {
        assert!(
            (ss - rs).abs() < 1e-4,
            "{what}: rank {i} score {ss} vs {rs}"
        );
        let tied = reference
            .iter()
            .filter(|(_, s)| (s - rs).abs() < 1e-4)
            .count()
            > 1;
        assert!(
            tied || sn == rn,
            "{what}: rank {i} is {sn}, the model says {rn}"
        );
    }
}

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Mosquitto on `127.0.0.1:port`, without persistence (a restart loses retained messages),
/// its config in `dir`.
pub fn mosquitto(port: u16, dir: &Path) -> Killed {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        ),
    )
    .expect("conf");
    mosquitto_with(&conf, port)
}

/// A program of the Mosquitto package (`mosquitto`, `mosquitto_passwd`).
pub fn mosquitto_bin(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: the README's test command (bash .ci/run) installs Mosquitto"))
}

/// Mosquitto with the configuration file `conf`, once it listens on `port`.
pub fn mosquitto_with(conf: &Path, port: u16) -> Killed {
    use std::process::{Command, Stdio};
    let child = Command::new(mosquitto_bin("mosquitto"))
        .arg("-c")
        .arg(conf)
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto starts");
    let mosquitto = Killed(child);
    wait_until_blocking(
        &format!("mosquitto to listen on port {port}"),
        Duration::from_secs(10),
        || std::net::TcpStream::connect(("127.0.0.1", port)),
    );
    mosquitto
}

/// A program of the workspace built next to `edgeclip` (the README's test command builds them).
pub fn sibling_binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_edgeclip")).with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (cargo build --release --workspace)",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

// ---- searches, shared by several areas ----

/// A search through `client` (MQTT, as a dashboard sends it), bounded.
pub async fn search(
    client: &mut edgeclip::client::Client,
    device: &str,
    text: &str,
    k: usize,
) -> SearchResponse {
    bounded(
        "search",
        client.search(device, text, Some(k), Duration::from_secs(20)),
    )
    .await
    .expect("search answered")
}

/// File names of a response's hits, best first; panics on an error answer.
pub fn hits(response: &SearchResponse) -> Vec<String> {
    match response {
        SearchResponse::Results(r) => r.hits.iter().map(|h| file_name(&h.path)).collect(),
        SearchResponse::Error(e) => panic!("search failed: {}", e.error),
    }
}

/// (file name, score) of a response's hits, best first; panics on an error answer.
pub fn scored(response: &SearchResponse) -> Vec<(String, f32)> {
    match response {
        SearchResponse::Results(r) => r
            .hits
            .iter()
            .map(|h| (file_name(&h.path), h.score))
            .collect(),
        SearchResponse::Error(e) => panic!("search failed: {}", e.error),
    }
}

/// `edgeclip up` with its broker on 127.0.0.1:`port`, the page on a free loopback port, the
/// pictures of `photos` and the state in `state`; stdin and stdout piped (the banner).
pub fn edgeclip_up(port: u16, photos: &Path, state: &Path) -> std::process::Command {
    use std::process::Stdio;
    let mut c = edgeclip();
    c.args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--http", "127.0.0.1:0", "--photos"])
        .arg(photos)
        .arg("--state")
        .arg(state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    c
}

/// A fleet search through `client`, its results (a panic on an error answer).
pub async fn fleet_search(
    client: &mut edgeclip::client::Client,
    request: edgeclip_messages::dashboard::FleetSearchRequest,
) -> edgeclip_messages::dashboard::FleetResults {
    use edgeclip_messages::dashboard::FleetResponse;
    match bounded(
        "fleet search",
        client.fleet_search(request, Duration::from_secs(20)),
    )
    .await
    .expect("fleet answer")
    {
        FleetResponse::Results(r) => r,
        FleetResponse::Error(e) => panic!("fleet search failed: {}", e.error),
    }
}

/// The `edgeclip` program, as a user runs it (no broker from the environment).
pub fn edgeclip() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_edgeclip"));
    c.env_remove("EDGECLIP_BROKER")
        .env("RUST_LOG", "warn,rumqttd=off");
    c
}

/// Sets a file's modification time.
pub fn set_mtime(path: &Path, t: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .expect("picture")
        .set_modified(t)
        .expect("mtime");
}

/// Waits until the device's status satisfies `pred`, and returns that status.
pub async fn status_until(
    device: &Device,
    what: &str,
    pred: impl Fn(&DeviceStatus) -> bool,
) -> DeviceStatus {
    wait_until(what, TEST_TIMEOUT, || async {
        let s = device.status().await.expect("status");
        if pred(&s) {
            Ok(s)
        } else {
            Err(s)
        }
    })
    .await
}

/// Lines of a child's stdout, read on a thread, received with a deadline.
pub fn line_reader(out: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The lines of `rx` up to the first for which `pred` holds (a panic, with the lines, if it
/// never comes within [`TEST_TIMEOUT`]).
pub fn wait_line(
    rx: &std::sync::mpsc::Receiver<String>,
    pred: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + TEST_TIMEOUT;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = pred(&line);
                lines.push(line);
                if done {
                    return lines;
                }
            }
            Err(_) => panic!("expected line never came; got {lines:#?}"),
        }
    }
}
