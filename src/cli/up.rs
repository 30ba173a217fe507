//! `edgeclip up`: the whole system in one process on embedded defaults — an MQTT broker, the
//! cloud text encoder and a device indexing the sample pictures — with a search prompt.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use edgeclip::broker::EmbeddedBroker;
use edgeclip::output::results_table;
use edgeclip_cloud::{Cloud, CloudConfig};
use edgeclip_device::{Device, DeviceConfig};
use edgeclip_messages::dashboard::{DeviceState, SearchRequest};
use tokio::io::AsyncBufReadExt;

/// How often the indexing progress is read from the device and redrawn: smooth for the eye,
/// and a status read is one call to the device's actors.
const PROGRESS_TICK: Duration = Duration::from_millis(250);

/// Flags of `up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// A folder of pictures to index (repeatable); default: the bundled sample pictures.
    #[arg(long = "photos", value_name = "DIR")]
    pub photos: Vec<PathBuf>,
    /// Address of the embedded MQTT broker.
    #[arg(long, default_value = "127.0.0.1:1883", value_name = "HOST:PORT")]
    pub listen: SocketAddr,
    /// The device's state folder.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// CLIP model folder (open_clip/Immich layout); default: the bundled small model.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Device id; default: the host name.
    #[arg(long, value_name = "ID")]
    pub device_id: Option<String>,
    /// Address of the device's search page and thumbnails (port 0: any free one); default:
    /// the configuration's `http.bind`/`http.port`, else 127.0.0.1:8470.
    #[arg(long, value_name = "IP:PORT")]
    pub http: Option<SocketAddr>,
    /// A settings file for both sides: `[device]` and `[cloud]` tables laid out as each
    /// side's own configuration file; other keys go to every side that has them. The
    /// environment (`EDGECLIP_*`, `EDGECLIP_DEVICE__*`, `EDGECLIP_CLOUD__*`) and the flags
    /// above win over it. See docs/configuration.md.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Do not read searches from standard input; serve until Ctrl-C.
    #[arg(long)]
    pub no_prompt: bool,
}

/// A bundled folder: relative to the working directory, else to the source checkout.
fn bundled(relative: &str) -> PathBuf {
    let here = PathBuf::from(relative);
    if here.exists() {
        return here;
    }
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    if checkout.exists() {
        checkout
    } else {
        here
    }
}

/// Both sides' configurations: the defaults, what `up` chooses (the bundled model and
/// sample pictures, the search page on 127.0.0.1:8470), the `--config` file, the environment,
/// then the flags and the embedded broker's address ([`super::up_settings`]).
fn settings(args: &UpArgs, url: &str) -> anyhow::Result<(DeviceConfig, CloudConfig)> {
    let bundled_model = bundled("models/clip-shapes").display().to_string();
    let samples = vec![bundled("models/samples").display().to_string()];
    let mut device_forced: Vec<(&str, config::Value)> = vec![("broker.url", url.into())];
    let mut cloud_forced: Vec<(&str, config::Value)> = vec![("broker.url", url.into())];
    if let Some(model) = &args.model {
        let model = model.display().to_string();
        device_forced.push(("model.dir", model.clone().into()));
        cloud_forced.push(("model.dir", model.into()));
    }
    if !args.photos.is_empty() {
        let photos: Vec<String> = args
            .photos
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        device_forced.push(("folders", photos.into()));
    }
    if let Some(http) = args.http {
        device_forced.push(("http.bind", http.ip().to_string().into()));
        device_forced.push(("http.port", i64::from(http.port()).into()));
    }
    if let Some(state) = &args.state {
        device_forced.push(("state_dir", state.display().to_string().into()));
    }
    if let Some(id) = &args.device_id {
        device_forced.push(("device_id", id.clone().into()));
    }
    super::up_settings::load(super::up_settings::Given {
        file: args.config.as_deref(),
        env: std::env::vars().collect(),
        device_chosen: vec![
            ("model.dir", bundled_model.clone().into()),
            ("folders", samples.into()),
            ("http.bind", "127.0.0.1".into()),
            ("http.port", 8470.into()),
        ],
        cloud_chosen: vec![("model.dir", bundled_model.into())],
        device_forced,
        cloud_forced,
    })
}

/// Runs `up`.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rumqttd=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let broker = EmbeddedBroker::start(args.listen)?;
    let url = broker.url();
    let (device_config, cloud_config) = settings(&args, &url)?;
    let photos = device_config.folders.clone();
    let device_id = device_config.device_id.clone();

    let cloud = Cloud::start(cloud_config)
        .await
        .context("starting the cloud text encoder")?;
    let device = Device::start(device_config)
        .await
        .context("starting the device")?;
    let started = Instant::now();
    println!(
        "edgeclip is up: broker {url}, device {device_id}, pictures from {}",
        photos
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("Search from another terminal:  edgeclip search \"a red circle\" --broker {url}");
    println!("Device status:                 edgeclip status --broker {url}");
    if let Some(addr) = device
        .http_addr()
        .await
        .context("asking the device for its search page")?
    {
        println!("Search page in a browser:      http://{addr}/");
    }

    let served = serve(&device, &args, started).await;
    println!("shutting down...");
    let d = device.shutdown().await;
    let c = cloud.shutdown().await;
    served?;
    d.context("stopping the device")?;
    c.context("stopping the cloud")?;
    Ok(())
}

async fn serve(device: &Device, args: &UpArgs, started: Instant) -> anyhow::Result<()> {
    let mut announced = false;
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut tick = tokio::time::interval(PROGRESS_TICK);
    let mut lines =
        (!args.no_prompt).then(|| tokio::io::BufReader::new(tokio::io::stdin()).lines());
    let shutdown = edgeclip_link::shutdown_signal();
    tokio::pin!(shutdown);
    if lines.is_some() {
        println!("Type a search and press Enter (Ctrl-C or Ctrl-D to stop).");
    }
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tick.tick(), if !announced => {
                let status = device.status().await?;
                let done = status.indexed + status.failed;
                if status.state == DeviceState::Indexing {
                    let b = bar.get_or_insert_with(|| {
                        let b = indicatif::ProgressBar::new(0);
                        b.set_style(
                            indicatif::ProgressStyle::with_template("indexing {bar:30} {pos}/{len} pictures  {msg}")
                                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                        );
                        b
                    });
                    b.set_length(done + status.pending);
                    b.set_position(done);
                    b.set_message(match status.eta_s {
                        Some(eta) => format!("{:.1}/s, {eta} s left", status.rate_per_s),
                        None => String::new(),
                    });
                }
                if status.state == DeviceState::Idle {
                    announced = true;
                    if let Some(b) = bar.take() {
                        b.finish_and_clear();
                    }
                    println!(
                        "indexed {} pictures ({} skipped) in {:.1} s",
                        status.indexed, status.failed, started.elapsed().as_secs_f64()
                    );
                }
            }
            line = async { lines.as_mut().map(|l| l.next_line()).expect("guarded").await }, if lines.is_some() => {
                match line {
                    Ok(Some(text)) if text.trim().is_empty() => {}
                    Ok(Some(text)) => {
                        let request = SearchRequest::text(text.trim());
                        match device.search(request).await {
                            Ok(response) => print!("{}", results_table(&response)),
                            Err(e) => println!("error: {e}"),
                        }
                    }
                    // End of input: stop, like a shell does on Ctrl-D.
                    Ok(None) | Err(_) => return Ok(()),
                }
            }
        }
    }
}
