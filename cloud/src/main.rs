//! `edgeclip-cloud`: the cloud text encoder as its own program, against any MQTT broker.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use edgeclip_cloud::{Cloud, CloudConfig};

/// Encodes search texts with CLIP's text tower for edgeclip devices, over MQTT.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML); built-in defaults and EDGECLIP_* variables apply too.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the built-in default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", edgeclip_cloud::config::DEFAULTS);
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = CloudConfig::load(args.config.as_deref(), &[])
        .context("loading the cloud configuration")?;
    let mut cloud = Cloud::start(config)
        .await
        .context("starting the cloud worker")?;
    tokio::select! {
        _ = edgeclip_link::shutdown_signal() => {
            cloud.shutdown().await.context("shutting down")?;
            Ok(())
        }
        _ = cloud.stopped() => anyhow::bail!("the cloud worker stopped after an internal failure (see the log)"),
    }
}
