//! rhizome-bench: a load generator for Matrix homeservers.
//!
//! It speaks only the Client-Server API over HTTP, so it can drive any homeserver. `run`
//! measures one server and writes its results JSON; `report` merges several into a table.

mod client;
mod procfs;
mod report;
mod results;
mod run;
mod stats;
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
    /// Run the workloads against one server and write its results JSON.
    Run(Box<run::RunArgs>),
    /// Merge results files into one table (stdout) and a combined JSON.
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
