//! `edgeclip model check DIR`: what the device and the cloud make of a model folder, with
//! timings: the family, the image tower's declared input and output (names, type, shape, a
//! fixed or free batch), the preprocessing, then one picture through the device's decode,
//! preprocessing and tower ([`edgeclip_device::model::check`]); where the folder has a
//! `textual/`, the text tower as a cloud worker loads it, with one text through its tokenizer
//! and tower ([`edgeclip_cloud::model::check`]). A broken folder is one line naming the file
//! and what is wrong with it.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use edgeclip_device::model::ImageTowerReport;

/// Flags of `model`.
#[derive(Args, Debug)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub command: ModelCommand,
}

/// Subcommands of `model`.
#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Load a model folder's towers as the device and the cloud do and run a picture and a
    /// text through them.
    Check(CheckArgs),
}

/// Flags of `model check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The model folder (open_clip/Immich layout).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `model`.
pub async fn run(args: ModelArgs) -> anyhow::Result<()> {
    match args.command {
        ModelCommand::Check(a) => check(a).await,
    }
}

/// Both halves' reports, as `--json` prints them.
#[derive(serde::Serialize)]
struct Report {
    #[serde(flatten)]
    image: ImageTowerReport,
    /// The text tower's one-line report; `None`: the folder has no `textual/`.
    text: Option<String>,
}

async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone();
    // Loading a tower is seconds of CPU work: off the async threads.
    let image = tokio::task::spawn_blocking(move || edgeclip_device::model::check(&dir))
        .await
        .map_err(|e| anyhow::anyhow!("the model check crashed: {e}"))??;
    let dir = args.dir.clone();
    let text = if dir.join("textual").is_dir() {
        let report = tokio::task::spawn_blocking(move || edgeclip_cloud::model::check(&dir))
            .await
            .map_err(|e| anyhow::anyhow!("the model check crashed: {e}"))??;
        if report.space != image.model {
            anyhow::bail!(
                "{}: the text tower serves the embedding space {}, the image tower makes {}: \
                 searches would be refused",
                args.dir.display(),
                report.space,
                image.model
            );
        }
        Some(report.to_string())
    } else {
        None
    };
    if args.json {
        let report = Report { image, text };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&image));
        match &text {
            Some(line) => {
                println!("text tower   {line}");
                println!("ok: the cloud can encode searches with this model");
            }
            None => println!("text tower   none (no textual/: a device-only folder)"),
        }
    }
    Ok(())
}

/// The report as lines for a person.
fn summary(r: &ImageTowerReport) -> String {
    let list = |v: &[String]| v.join(", ");
    let mut out = format!(
        "model {} ({})\n\
         family       {}\n\
         dimension    {}\n\
         image tower  {} ({:.1} MB, weights {:?}{})\n\
         input        \"{}\" {} [{}], batch {}\n\
         output       \"{}\" [{}], opset {}\n\
         pictures     {} px, resize {}, {}, mean [{}], std [{}]\n\
         timings      open {:.0} ms, load {:.0} ms, first picture {:.1} ms, then {:.1} ms\n",
        r.model,
        r.dir.display(),
        r.family,
        r.dim,
        r.file.display(),
        r.file_bytes as f64 / 1e6,
        r.weights,
        if r.f16_weights > 0 {
            format!(", {} expanded from float16", r.f16_weights)
        } else {
            String::new()
        },
        r.input,
        r.input_type,
        list(&r.input_shape),
        r.batch,
        r.output,
        list(&r.output_shape),
        r.opset,
        r.size,
        r.resize_mode,
        r.interpolation,
        r.mean.map(|m| format!("{m}")).join(", "),
        r.std.map(|s| format!("{s}")).join(", "),
        r.open_ms,
        r.load_ms,
        r.first_picture_ms,
        r.picture_ms,
    );
    for note in &r.notes {
        out.push_str(&format!("note         {note}\n"));
    }
    out.push_str("ok: the device can index pictures with this model\n");
    out
}
