//! `edgeclip status`: print a device's retained status.

use std::time::Duration;

use clap::Args;
use edgeclip::client::Client;
use edgeclip::output::status_summary;

/// Default of `--timeout`, seconds: the status is retained, so the broker sends it as soon as
/// the client subscribes; this covers connecting to a distant broker as well.
const DEFAULT_TIMEOUT_S: &str = "5";

/// Flags of `status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// MQTT broker.
    #[arg(long, default_value = super::DEFAULT_BROKER, env = "EDGECLIP_BROKER")]
    pub broker: String,
    /// Device; default: the only device online.
    #[arg(long)]
    pub device: Option<String>,
    /// Seconds to wait.
    #[arg(long, default_value = DEFAULT_TIMEOUT_S, value_parser = super::parse_seconds)]
    pub timeout: Duration,
    /// Print the status message itself (JSON).
    #[arg(long)]
    pub json: bool,
}

/// Runs `status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let mut client =
        Client::connect_with(&args.broker, &super::broker_security()?, args.timeout).await?;
    let device = client
        .resolve_device(args.device.as_deref(), args.timeout)
        .await;
    let status = match device {
        Ok(d) => client.status(&d, args.timeout).await,
        Err(e) => Err(e),
    };
    client.disconnect().await;
    let (raw, status) = status?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&raw));
    } else {
        print!("{}", status_summary(&status));
    }
    Ok(())
}
