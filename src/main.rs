//! `edgeclip`: try the whole system with `up`, search and inspect devices with `search` and
//! `status`, check a model folder with `model check`.

mod cli;

use clap::{Parser, Subcommand};

/// Private text-to-photo search: CLIP split between your device and a cloud text encoder.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start an embedded MQTT broker, the cloud text encoder and a device, and search at a prompt.
    Up(cli::up::UpArgs),
    /// Send a search to a device and print the ranked pictures.
    Search(cli::search::SearchArgs),
    /// Print a device's status.
    Status(cli::status::StatusArgs),
    /// Check a model folder as the device uses it (`model check DIR`).
    Model(cli::model::ModelArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Up(a) => cli::up::run(a).await,
        Command::Search(a) => cli::search::run(a).await,
        Command::Status(a) => cli::status::run(a).await,
        Command::Model(a) => cli::model::run(a).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgeclip: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
