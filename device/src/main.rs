//! `edgeclip-device`: the device side as its own program, against any MQTT broker.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use edgeclip_device::{Device, DeviceConfig};

/// Indexes local pictures with CLIP's image tower and answers text searches over MQTT.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML); built-in defaults and EDGECLIP_* variables apply too.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the built-in default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Remove this device from Home Assistant (empty retained payloads on its discovery
    /// config topics) and exit.
    #[arg(long)]
    uninstall_discovery: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Errors are one line, the reason after its context (a model file and what is wrong
    // with it), never a backtrace.
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgeclip-device: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.print_default_config {
        print!("{}", edgeclip_device::config::DEFAULTS);
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = DeviceConfig::load(args.config.as_deref(), &[])
        .context("loading the device configuration")?;
    if args.uninstall_discovery {
        let removed = edgeclip_device::actors::discovery::uninstall(&config)
            .await
            .context("removing the Home Assistant discovery configs")?;
        println!(
            "removed {removed} Home Assistant discovery configs of device {} under {}/",
            config.device_id, config.homeassistant.prefix
        );
        return Ok(());
    }
    let mut device = Device::start(config).await.context("starting the device")?;
    tokio::select! {
        _ = edgeclip_link::shutdown_signal() => {
            device.shutdown().await.context("shutting down")?;
            Ok(())
        }
        _ = device.stopped() => anyhow::bail!("the device stopped after an internal failure (see the log)"),
    }
}
