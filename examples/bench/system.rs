//! The whole system over loopback MQTT: the `edgeclip-device` and `edgeclip-cloud` programs as
//! separate processes on the embedded broker (rumqttd, in this process) or Mosquitto, a device
//! whose index holds N pictures (int8 in memory), searches sent as a dashboard sends them
//! (JSON on `edgeclip/<device>/search`), timed until the answer on `.../results`. Also the
//! device's resident memory, empty and with the N pictures.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use edgeclip_device::index::Precision;
use edgeclip_device::index::Store;
use edgeclip_device::index::{Entry, Index};
use edgeclip_device::model::ModelFolder;
use edgeclip_messages::topics;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::encoding::percentile;
use crate::ranking::Gen;

const DEVICE: &str = "bench";

/// Pause of the bench's MQTT client after a connection error, before polling again: the
/// broker runs on this machine, so it is back (or gone for good) quickly.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// Longest wait for one search's answer: far beyond a search's latency, so only a hung system
/// reaches it, and the run fails instead of waiting forever.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for the empty device to be ready: loading the model is all it does.
const EMPTY_READY_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest wait for the device with the bench index to be ready: it opens the index and checks
/// every picture of it, which takes long on a slow disk or machine.
const INDEXED_READY_TIMEOUT: Duration = Duration::from_secs(600);

/// Pause after a device says it is ready, before its memory is read: what it does right after
/// (giving back the scan's memory, its last status messages) is over by then.
const SETTLE: Duration = Duration::from_secs(2);

/// Pause after clearing the retained status, for the broker's echo of it to arrive before the
/// channel is emptied.
const CLEAR_PAUSE: Duration = Duration::from_millis(500);

/// Longest wait for Mosquitto to listen: it starts in milliseconds.
const MOSQUITTO_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between two probes of Mosquitto's port: short beside a start, long enough not to spin.
const PROBE_PAUSE: Duration = Duration::from_millis(20);

/// A child process killed (and reaped) when dropped.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A line of a process's /proc status in MiB (`VmRSS:`, `VmHWM:`, `RssAnon:`, `RssFile:`).
fn status_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Resident and peak resident memory of a process, MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    (status_mib(pid, "VmRSS:"), status_mib(pid, "VmHWM:"))
}

/// Resident memory of a process by what is mapped, MiB, from /proc/PID/smaps: the program's
/// own file (its code and constants), files under `state` (the index's vector file), other
/// files (shared libraries), and anonymous memory (heap, thread stacks, tract's plans).
fn resident_by_mapping(pid: u32, program: &Path, state: &Path) -> Value {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let program = program
        .canonicalize()
        .unwrap_or_else(|_| program.to_path_buf());
    let state = state.canonicalize().unwrap_or_else(|_| state.to_path_buf());
    let (mut code, mut index, mut libraries, mut anonymous) = (0u64, 0u64, 0u64, 0u64);
    let mut current = &mut anonymous;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping's header: range, permissions, offset, device, inode, then the path.
            let path = fields.nth(4).unwrap_or("");
            current = if path.is_empty() || path.starts_with('[') {
                &mut anonymous
            } else if Path::new(path) == program {
                &mut code
            } else if Path::new(path).starts_with(&state) {
                &mut index
            } else {
                &mut libraries
            };
        } else if first == "Rss:" {
            *current += fields
                .next()
                .and_then(|kb| kb.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let mib = |kb: u64| kb as f64 / 1024.0;
    json!({"program_mib": mib(code), "index_files_mib": mib(index), "libraries_mib": mib(libraries), "anonymous_mib": mib(anonymous)})
}

/// A state folder whose index holds `n` pictures of `model_dir`'s model (seeded unit vectors,
/// written by the device's own store and compacted, as a device that indexed them has it).
/// Also times the device's ranker on the same vectors in int8, on as many threads as the
/// device ranks on by default (one per core; for the split).
/// The pictures are empty files under `<root>/photos-<n>/` (the device's scan must find every
/// indexed file unchanged, or it removes it from the index); returns the state and photo folders.
pub fn prepare_state(
    root: &Path,
    model_dir: &Path,
    n: usize,
) -> anyhow::Result<(PathBuf, PathBuf, Value)> {
    let folder = ModelFolder::open(model_dir, None)?;
    let root = std::fs::canonicalize(root)?;
    let photos = root.join(format!("photos-{n}"));
    let state = root.join(format!("state-{}-{n}", folder.dim));
    let index_dir = state.join("index");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&index_dir)?;
    // In int8, the precision the measured device runs with: its vector file is mapped as is.
    let (mut store, _, _) = Store::open_with(&index_dir, &folder.id, folder.dim, Precision::I8)?;
    let mut index = Index::with_precision(folder.id.clone(), folder.dim, Precision::I8);
    let mut gen = Gen::new(0xe2e);
    let mut v = Vec::with_capacity(folder.dim);
    for i in 0..n {
        v.clear();
        gen.unit(folder.dim, &mut v);
        let path = photos.join(format!("{:04}/IMG_{i:07}.jpg", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(path.parent().context("photo folder")?)?;
        }
        if !path.is_file() {
            std::fs::write(&path, b"")?;
        }
        let meta = std::fs::metadata(&path)?;
        let mtime_ns = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let entry = Entry {
            path,
            size: meta.len(),
            mtime_ns,
            hash: [(i % 251) as u8; 32],
            width: 4000,
            height: 3000,
            taken_s: 1_700_000_000 + i as i64,
            source: Box::default(),
        };
        index.upsert(entry, &v)?;
    }
    store.compact(&mut index)?;
    drop(store);
    let mut q = Vec::new();
    gen.unit(folder.dim, &mut q);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    index.set_search_threads(threads);
    let mut ms = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        std::hint::black_box(index.search(&folder.id, &q, 10)?);
        ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let json = json!({"model": folder.id, "dim": folder.dim, "pictures": n, "rank_i8_median_ms": percentile(&ms, 50.0), "rank_threads": threads});
    Ok((state, photos, json))
}

fn device_config(
    dir: &Path,
    state: &Path,
    photos: Option<&Path>,
    model: &Path,
    url: &str,
) -> anyhow::Result<PathBuf> {
    let folders = photos
        .map(|p| format!("\"{}\"", p.display()))
        .unwrap_or_default();
    let path = dir.join(format!(
        "device-{}.toml",
        state
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("state")
    ));
    std::fs::write(
        &path,
        format!(
            r#"device_id = "{DEVICE}"
folders = [{folders}]
state_dir = "{}"
[model]
dir = "{}"
[broker]
url = "{url}"
[encoder]
workers = 1
[capture]
watch = false
rescan_s = 0
[search]
vectors = "i8"
[status]
interval_ms = 200
[http]
enabled = false
[homeassistant]
discovery = false
"#,
            state.display(),
            model.display()
        ),
    )?;
    Ok(path)
}

fn cloud_config(dir: &Path, model: &Path, url: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("cloud.toml");
    // The per-requester rate limit (5/s by default) would throttle a benchmark's searches.
    std::fs::write(
        &path,
        format!(
            r#"worker_id = "bench-w"
[model]
dir = "{}"
[broker]
url = "{url}"
[limits]
requests_per_s = 100000.0
burst = 100000
"#,
            model.display()
        ),
    )?;
    Ok(path)
}

fn spawn(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Killed> {
    let log = std::fs::File::create(log)?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Killed(child))
}

/// A dashboard-like MQTT client: every publish on the device's results and status topics
/// arrives on a channel.
struct Client {
    client: rumqttc::AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    async fn connect(port: u16) -> anyhow::Result<Client> {
        let mut options =
            rumqttc::MqttOptions::new(format!("bench-{}", std::process::id()), "127.0.0.1", port);
        options.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
        // As edgeclip's own link does: no Nagle delay on small packets.
        eventloop.network_options.set_tcp_nodelay(true);
        client
            .subscribe(topics::results(DEVICE), rumqttc::QoS::AtLeastOnce)
            .await?;
        client
            .subscribe(topics::status(DEVICE), rumqttc::QoS::AtLeastOnce)
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let _ = tx.send((p.topic, p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(RECONNECT_PAUSE).await,
                }
            }
        });
        Ok(Client { client, rx, task })
    }

    /// Waits for a retained status saying the device is idle with `indexed` pictures.
    async fn wait_ready(&mut self, indexed: u64, deadline: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + deadline;
        let mut last = Value::Null;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(Some((topic, payload))) = tokio::time::timeout(left, self.rx.recv()).await
            else {
                bail!("the device did not report {indexed} pictures indexed and idle within {deadline:?}; last status: {last}");
            };
            if topic != topics::status(DEVICE) {
                continue;
            }
            let status: Value = serde_json::from_slice(&payload).unwrap_or_default();
            last = status.clone();
            if status["indexed"].as_u64() == Some(indexed) && status["state"] == "idle" {
                return Ok(());
            }
        }
    }

    /// Sends one search and waits for its answer: (milliseconds, the device's `took_ms`).
    async fn search(&mut self, id: &str, text: &str) -> anyhow::Result<(f64, f64)> {
        let request = json!({"text": text, "id": id, "k": 10}).to_string();
        let started = Instant::now();
        self.client
            .publish(
                topics::search(DEVICE),
                rumqttc::QoS::AtLeastOnce,
                false,
                request.into_bytes(),
            )
            .await?;
        loop {
            let left = SEARCH_TIMEOUT.saturating_sub(started.elapsed());
            let Ok(Some((topic, payload))) = tokio::time::timeout(left, self.rx.recv()).await
            else {
                bail!("no answer to search {id}");
            };
            if topic != topics::results(DEVICE) {
                continue;
            }
            let answer: Value = serde_json::from_slice(&payload)?;
            if answer["id"] != id {
                continue;
            }
            let elapsed = started.elapsed().as_secs_f64() * 1e3;
            if let Some(error) = answer.get("error") {
                bail!("search {id} failed: {error}");
            }
            let hits = answer["hits"].as_array().map(Vec::len).unwrap_or(0);
            anyhow::ensure!(hits == 10, "search {id} returned {hits} hits");
            return Ok((elapsed, answer["took_ms"].as_f64().unwrap_or(f64::NAN)));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn latencies(ms: &[f64], took: &[f64]) -> Value {
    json!({"runs": ms.len(), "p50_ms": percentile(ms, 50.0), "p90_ms": percentile(ms, 90.0), "p99_ms": percentile(ms, 99.0),
           "max_ms": percentile(ms, 100.0), "device_took_ms_p50": percentile(took, 50.0)})
}

/// Everything the suite needs to run the programs.
pub struct Setup<'a> {
    pub bin_dir: &'a Path,
    pub work: &'a Path,
    pub model: &'a Path,
    pub state: &'a Path,
    pub photos: &'a Path,
    pub pictures: u64,
    pub warm: usize,
    pub cold: usize,
    pub memory: bool,
}

/// One broker: cloud and device started against it, readiness, memory, searches.
pub async fn run(setup: &Setup<'_>, broker: &str, port: u16) -> anyhow::Result<Value> {
    let url = format!("mqtt://127.0.0.1:{port}");
    let logs = setup.work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut client = Client::connect(port).await?;
    let cloud_cfg = cloud_config(setup.work, setup.model, &url)?;
    let _cloud = spawn(
        &setup.bin_dir.join("edgeclip-cloud"),
        &cloud_cfg,
        &logs.join(format!("cloud-{broker}.log")),
    )?;
    let device_bin = setup.bin_dir.join("edgeclip-device");
    let mut memory = json!(null);
    if setup.memory {
        let empty = setup.work.join("state-empty");
        let _ = std::fs::remove_dir_all(&empty);
        std::fs::create_dir_all(&empty)?;
        let cfg = device_config(setup.work, &empty, None, setup.model, &url)?;
        let device = spawn(
            &device_bin,
            &cfg,
            &logs.join(format!("device-empty-{broker}.log")),
        )?;
        client
            .wait_ready(0, EMPTY_READY_TIMEOUT)
            .await
            .context("empty device")?;
        tokio::time::sleep(SETTLE).await;
        let (rss, hwm) = rss_mib(device.0.id());
        memory = json!({"empty_idle_rss_mib": rss, "empty_peak_rss_mib": hwm,
                        "empty_idle_by_mapping": resident_by_mapping(device.0.id(), &device_bin, &empty)});
        drop(device);
        // Its retained status would otherwise satisfy the next wait.
        client
            .client
            .publish(
                topics::status(DEVICE),
                rumqttc::QoS::AtLeastOnce,
                true,
                Vec::new(),
            )
            .await?;
        tokio::time::sleep(CLEAR_PAUSE).await;
        while client.rx.try_recv().is_ok() {}
    }
    let cfg = device_config(
        setup.work,
        setup.state,
        Some(setup.photos),
        setup.model,
        &url,
    )?;
    let started = Instant::now();
    let device = spawn(
        &device_bin,
        &cfg,
        &logs.join(format!("device-{broker}.log")),
    )?;
    client
        .wait_ready(setup.pictures, INDEXED_READY_TIMEOUT)
        .await
        .context("device with the index")?;
    let ready_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let (idle_rss, idle_hwm) = rss_mib(device.0.id());
    for i in 0..5 {
        client
            .search(&format!("warmup-{i}"), "a red circle")
            .await?;
    }
    let (mut warm, mut warm_took) = (Vec::new(), Vec::new());
    for i in 0..setup.warm {
        let (ms, took) = client.search(&format!("warm-{i}"), "a red circle").await?;
        warm.push(ms);
        warm_took.push(took);
    }
    // New texts: the text tower's bench texts (as long as typed searches), each once; this
    // run's cloud was started above, so its cache holds none of them.
    let (mut cold, mut cold_took) = (Vec::new(), Vec::new());
    for i in 0..setup.cold {
        let (ms, took) = client
            .search(&format!("cold-{i}"), &crate::encoding::query_text(i))
            .await?;
        cold.push(ms);
        cold_took.push(took);
    }
    let (rss, hwm) = rss_mib(device.0.id());
    if setup.memory {
        memory["indexed_idle_rss_mib"] = json!(idle_rss);
        memory["indexed_peak_rss_mib_before_searches"] = json!(idle_hwm);
        memory["indexed_after_searches_rss_mib"] = json!(rss);
        memory["indexed_peak_rss_mib"] = json!(hwm);
        // Private memory, and file pages mapped (the vector file, the program's own code).
        memory["indexed_after_searches_rss_anon_mib"] =
            json!(status_mib(device.0.id(), "RssAnon:"));
        memory["indexed_after_searches_rss_file_mib"] =
            json!(status_mib(device.0.id(), "RssFile:"));
        let weights = std::fs::metadata(setup.model.join("visual/model.onnx"))
            .map(|m| m.len() as f64 / 1048576.0)
            .unwrap_or(f64::NAN);
        memory["image_weights_mib"] = json!(weights);
        memory["indexed_after_searches_by_mapping"] =
            resident_by_mapping(device.0.id(), &device_bin, setup.state);
    }
    drop(device);
    client
        .client
        .publish(
            topics::status(DEVICE),
            rumqttc::QoS::AtLeastOnce,
            true,
            Vec::new(),
        )
        .await?;
    Ok(json!({
        "broker": broker, "pictures": setup.pictures, "device_ready_s": ready_s,
        "cached_text": latencies(&warm, &warm_took),
        "new_text": latencies(&cold, &cold_took),
        "memory": memory,
    }))
}

/// Mosquitto on a free port, if installed.
pub fn mosquitto(work: &Path) -> anyhow::Result<Option<(u16, impl Drop)>> {
    let Some(bin) = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
    else {
        return Ok(None);
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = work.join("mosquitto.conf");
    // set_tcp_nodelay: Mosquitto leaves Nagle's algorithm on by default (see BENCHMARKS.md).
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nset_tcp_nodelay true\n"))?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stderr(Stdio::null())
        .spawn()?;
    let child = Killed(child);
    let until = Instant::now() + MOSQUITTO_START_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > until {
            bail!("mosquitto did not listen on {port}");
        }
        std::thread::sleep(PROBE_PAUSE);
    }
    Ok(Some((port, child)))
}
