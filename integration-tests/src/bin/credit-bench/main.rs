//! `credit-bench`: the credit service under load, next to the same workload
//! as raw SQL on the same database in the same run, with the ledger's
//! invariants checked after every run. See docs/benchmarks.md.

mod args;
mod cpu;
mod database;
mod feed;
mod grpc;
mod invariants;
mod plot;
mod progress;
mod raw;
mod report;
mod rss;
mod runner;
mod server;
mod session;
mod workload;

use std::process::ExitCode;

use clap::Parser;

use args::Args;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match session::run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("credit-bench: {err:#}");
            ExitCode::from(2)
        }
    }
}
