//! rhizome-bench: a load generator for Matrix homeservers.
//!
//! It speaks only the Client-Server API over HTTP, so it can drive any homeserver. `run`
//! measures several servers in interleaved rounds and writes a results JSON; `report` turns
//! one into a table and the combined JSON kept under bench-results/.

mod client;
mod labels;
mod plan;
mod procfs;
mod report;
mod results;
mod run;
mod stats;
mod summary;
mod workloads;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "rhizome-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the workloads against the servers, interleaved, and write the results JSON.
    Run(Box<plan::RunArgs>),
    /// Turn a results file into the table (stdout) and a combined JSON.
    Report(report::ReportArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run::run(*args)),
        Command::Report(args) => report::report(args),
    }
}
