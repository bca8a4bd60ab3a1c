//! The `blox` binary: `blox server` runs the service; the other subcommands are a CLI of its API.

mod bench;
mod cli;
mod server;
mod table;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "blox",
    version,
    about = "ECS cluster state mirrored from ECS events, served with Blox's API"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: ingest ECS events from SQS, reconcile with ECS, serve the API.
    Server(server::ServerArgs),
    /// Container instances.
    #[command(subcommand)]
    Instances(cli::InstancesCommand),
    /// Tasks.
    #[command(subcommand)]
    Tasks(cli::TasksCommand),
    /// Messages that could not be applied.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(cli::DeadLettersCommand),
    /// Run the cluster-state scale benchmark and print its figures.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("blox: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Command::Server(args) => server::run(args).await,
            Command::Instances(command) => cli::instances(command).await,
            Command::Tasks(command) => cli::tasks(command).await,
            Command::DeadLetters(command) => cli::dead_letters(command).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("blox: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
