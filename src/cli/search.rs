//! `edgeclip search`: send a search to a device over MQTT and print the ranked pictures.

use std::time::Duration;

use anyhow::bail;
use clap::Args;
use edgeclip::client::Client;
use edgeclip::output::results_table;
use edgeclip_messages::dashboard::SearchResponse;

/// Flags of `search`.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// What to look for, e.g. "a red circle".
    pub text: String,
    /// Number of pictures to return.
    #[arg(short = 'k', long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub k: u16,
    /// MQTT broker.
    #[arg(long, default_value = super::DEFAULT_BROKER, env = "EDGECLIP_BROKER")]
    pub broker: String,
    /// Device to search; default: the only device online.
    #[arg(long)]
    pub device: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value = "10", value_parser = super::parse_seconds)]
    pub timeout: Duration,
    /// Print the device's raw JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// Runs `search`.
pub async fn run(args: SearchArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(&args.broker, args.timeout).await?;
    let device = client.resolve_device(args.device.as_deref(), args.timeout).await?;
    let response = client.search(&device, &args.text, Some(args.k as usize), args.timeout).await;
    client.disconnect().await;
    let response = response?;
    if args.json {
        println!("{}", serde_json::to_string(&response)?);
    } else {
        print!("{}", results_table(&response));
    }
    if let SearchResponse::Error(e) = response {
        bail!("search failed: {}", e.error);
    }
    Ok(())
}
