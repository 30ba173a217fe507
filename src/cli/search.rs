//! `edgeclip search`: send a search to a device over MQTT and print the ranked pictures;
//! with `--all`, a fleet search: every online device ranks, the cloud merges.

use std::time::Duration;

use anyhow::bail;
use clap::Args;
use edgeclip::client::Client;
use edgeclip::output::{fleet_table, results_table};
use edgeclip_messages::dashboard::{
    FleetResponse, FleetSearchRequest, SearchMode, SearchRequest, SearchResponse,
};
use edgeclip_messages::Filter;

/// Default of `--timeout`, seconds: a device answers within its own `search.cloud_timeout_ms`
/// (5 s by default, its retry included), with hits or with an error, so this leaves it time to
/// answer even when the cloud does not; and it is about when a person gives up waiting.
const DEFAULT_TIMEOUT_S: &str = "10";

/// How long `search --all` waits past the devices' deadline: the cloud answers at the deadline
/// at the latest, and its answer still has to be merged, published and delivered.
const FLEET_ANSWER_MARGIN: Duration = Duration::from_secs(2);

/// Flags of `search`.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// What to look for, e.g. "a red circle" (may be empty with --like).
    #[arg(default_value = "")]
    pub text: String,
    /// More like this: rank by an indexed picture (its path on the device) instead of a text.
    #[arg(long, value_name = "PATH")]
    pub like: Option<String>,
    /// Only pictures under this folder (on the device).
    #[arg(long, value_name = "DIR")]
    pub folder: Option<String>,
    /// Only pictures taken at or after this time (seconds since the epoch).
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub after: Option<i64>,
    /// Only pictures taken before this time (seconds since the epoch).
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub before: Option<i64>,
    /// Only hits scoring at least this (cosine similarity).
    #[arg(long, value_name = "SCORE")]
    pub min_score: Option<f32>,
    /// Near-duplicate groups instead of a ranking: pictures whose vectors have at least this
    /// cosine (e.g. 0.95), grouped; answered on the device alone (no text needed).
    #[arg(long, value_name = "COSINE")]
    pub duplicates: Option<f32>,
    /// Only frames of this camera (its `name` in `[[cameras]]`); "" for library pictures only.
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// Who ranks: `device` (the cloud returns the text vector) or `server` (the device sends
    /// its vectors and the cloud ranks); default: the device's configuration.
    #[arg(long, value_parser = ["device", "server"])]
    pub mode: Option<String>,
    /// The text's language (`de`, `zh-CN`, `deu_Latn`...): the cloud encodes it with its text
    /// tower for that language (M-CLIP, NLLB) where it has one; default: its English tower.
    #[arg(long, value_name = "CODE", value_parser = parse_lang)]
    pub lang: Option<String>,
    /// Number of pictures to return.
    #[arg(short = 'k', long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub k: u16,
    /// MQTT broker.
    #[arg(long, default_value = super::DEFAULT_BROKER, env = "EDGECLIP_BROKER")]
    pub broker: String,
    /// Device to search; default: the only device online.
    #[arg(long)]
    pub device: Option<String>,
    /// Search every online device: the cloud encodes the text once, each device ranks its
    /// pictures, the cloud merges the hits (with a device column) and lists the devices that
    /// did not answer before the deadline. Exits 0 if at least one device answered.
    #[arg(long, conflicts_with_all = ["device", "like", "folder", "after", "before", "min_score", "mode", "source", "duplicates"])]
    pub all: bool,
    /// With --all: seconds the devices have to answer (default: the cloud's fleet.deadline_ms).
    #[arg(long, requires = "all", value_parser = super::parse_seconds)]
    pub deadline: Option<Duration>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value = DEFAULT_TIMEOUT_S, value_parser = super::parse_seconds)]
    pub timeout: Duration,
    /// Print the device's raw JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// A language code as the wire accepts it.
fn parse_lang(code: &str) -> Result<String, String> {
    edgeclip_messages::wire::validate_lang(code)
        .map(|()| code.to_string())
        .map_err(|e| e.to_string())
}

/// Runs `search`.
pub async fn run(args: SearchArgs) -> anyhow::Result<()> {
    if args.all {
        return run_fleet(args).await;
    }
    let mut client =
        Client::connect_with(&args.broker, &super::broker_security()?, args.timeout).await?;
    let device = client
        .resolve_device(args.device.as_deref(), args.timeout)
        .await?;
    let request = SearchRequest {
        k: Some(args.k as usize),
        like: args.like.clone(),
        filter: Filter {
            folder: args.folder.clone(),
            after: args.after,
            before: args.before,
            min_score: args.min_score,
            source: args.source.clone(),
        },
        duplicates: args.duplicates,
        lang: args.lang.clone(),
        mode: args.mode.as_deref().map(|m| {
            if m == "server" {
                SearchMode::Server
            } else {
                SearchMode::Device
            }
        }),
        ..SearchRequest::text(args.text.clone())
    };
    let response = client.request(&device, request, args.timeout).await;
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

/// Runs `search --all`.
async fn run_fleet(args: SearchArgs) -> anyhow::Result<()> {
    if args.text.trim().is_empty() {
        bail!("search --all needs a text");
    }
    let mut client =
        Client::connect_with(&args.broker, &super::broker_security()?, args.timeout).await?;
    let request = FleetSearchRequest {
        k: Some(args.k as usize),
        deadline_ms: args.deadline.map(|d| d.as_millis() as u64),
        lang: args.lang.clone(),
        ..FleetSearchRequest::text(args.text.clone())
    };
    // Wait past the devices' deadline: the cloud answers at the deadline at the latest.
    let wait = args
        .timeout
        .max(args.deadline.unwrap_or_default() + FLEET_ANSWER_MARGIN);
    let response = client.fleet_search(request, wait).await;
    client.disconnect().await;
    let response = response?;
    if args.json {
        println!("{}", serde_json::to_string(&response)?);
    } else {
        print!("{}", fleet_table(&response));
    }
    match response {
        FleetResponse::Error(e) => bail!("fleet search failed: {}", e.error),
        FleetResponse::Results(r) if r.answered.is_empty() => bail!(
            "no device answered the fleet search ({} asked)",
            r.asked.len()
        ),
        FleetResponse::Results(_) => Ok(()),
    }
}
