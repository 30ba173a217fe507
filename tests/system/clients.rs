//! What the real-client tests (`homeassistant`, `node_red`) share: where
//! `tests/clients/install.sh` put the clients, a client process whose output is shown when the
//! test fails, HTTP requests with headers, and the system they talk to (Mosquitto, as most
//! homes run it, with a cloud worker and a device that does not watch its folders, so that
//! only a rescan finds a new picture).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use edgeclip_cloud::Cloud;
use edgeclip_device::Device;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;

use crate::util::*;

/// One HTTP request to a client or the device: they answer on loopback at once, or are stuck.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many lines of a client's output a failing test shows.
const LOG_TAIL: usize = 60;

/// The folder `tests/clients/install.sh` installed `client` in (`homeassistant`, `node-red`);
/// fails with the command to run when it did not finish there.
pub fn installed(client: &str, what: &str) -> PathBuf {
    let root = std::env::var_os("TEST_CLIENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/clients"));
    let dir = root.join(client);
    assert!(
        dir.join(".edgeclip-installed").is_file(),
        "{what} is not installed in {}: run `bash tests/clients/install.sh {client}` (bash .ci/run does)",
        dir.display()
    );
    dir
}

/// A client program, killed when dropped; its output goes to a file whose last lines are
/// printed if the test is failing then.
pub struct Process {
    name: String,
    log: PathBuf,
    child: Killed,
}

impl Process {
    /// Starts `command` with its output in `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Process {
        let out = std::fs::File::create(log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        Process {
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Killed(child),
        }
    }

    /// Fails the test if the program has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.0.try_wait() {
            panic!("{} exited ({status})", self.name);
        }
    }

    /// Kills the program at once (no clean shutdown, like a power cut).
    pub fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// Everything the program has written so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let output = self.output();
            let lines: Vec<&str> = output.lines().collect();
            eprintln!(
                "---- the last lines of {}'s output ({}) ----\n{}\n----",
                self.name,
                self.log.display(),
                lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
            );
        }
    }
}

/// An HTTP answer: status, content type, body.
pub type Answer = (u16, String, Vec<u8>);

/// One HTTP request; `Err` when nothing answers (not started yet, or gone).
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<bytes::Bytes>,
) -> Result<Answer, String> {
    let client: HttpClient<_, Full<bytes::Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let mut builder = hyper::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body.into())).expect("request");
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes()
            .to_vec();
        Ok((status, kind, body))
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{method} {url}: no answer within {HTTP_TIMEOUT:?}"))?
}

/// Percent-encodes a form value.
pub fn form_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Mosquitto, a cloud worker and a device on a copy of the shapes pictures, indexed.
pub struct Home {
    pub broker_port: u16,
    pub pictures: tempfile::TempDir,
    pub state: tempfile::TempDir,
    pub cloud: Option<Cloud>,
    pub device: Option<Device>,
    /// Pictures indexed at the start.
    pub indexed: u64,
    _broker: Killed,
    _broker_dir: tempfile::TempDir,
}

impl Home {
    /// Starts everything for device `id`; `image_bytes` turns on the best match as bytes.
    pub async fn start(id: &str, image_bytes: bool) -> Home {
        let broker_dir = tempfile::tempdir().expect("broker dir");
        let broker_port = free_port();
        let broker = mosquitto(broker_port, broker_dir.path());
        let url = format!("mqtt://127.0.0.1:{broker_port}");
        let cloud = bounded(
            "cloud start",
            Cloud::start(cloud_config(&url, &format!("{id}-w"))),
        )
        .await
        .expect("cloud");
        let pictures = copy_pictures(&data("shapes"));
        let state = tempfile::tempdir().expect("state");
        let mut config = device_config(&url, id, &[pictures.path()], state.path());
        config.capture.watch = false;
        config.homeassistant.image_bytes = image_bytes;
        let device = bounded("device start", Device::start(config))
            .await
            .expect("device");
        let indexed = wait_idle(&device).await.indexed;
        Home {
            broker_port,
            pictures,
            state,
            cloud: Some(cloud),
            device: Some(device),
            indexed,
            _broker: broker,
            _broker_dir: broker_dir,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.broker_port)
    }

    pub fn device(&self) -> &Device {
        self.device.as_ref().expect("the device is running")
    }

    /// Adds a picture behind the device's back (it does not watch), written an hour ago: past
    /// capture.settle_ms, so the next scan takes it at once.
    pub fn add_picture(&self, name: &str) {
        let added = self.pictures.path().join(name);
        std::fs::copy(data("shapes").join("red_circle.jpg"), &added).expect("add a picture");
        set_mtime(
            &added,
            std::time::SystemTime::now() - Duration::from_secs(3600),
        );
    }

    /// Stops the device cleanly (it publishes `offline` before it disconnects).
    pub async fn stop_device(&mut self) {
        if let Some(device) = self.device.take() {
            bounded("device shutdown", device.shutdown())
                .await
                .expect("device shutdown");
        }
    }

    pub async fn stop(mut self) {
        self.stop_device().await;
        if let Some(cloud) = self.cloud.take() {
            bounded("cloud shutdown", cloud.shutdown())
                .await
                .expect("cloud shutdown");
        }
    }
}
