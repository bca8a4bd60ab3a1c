//! The `blox` binary: `blox server` runs the service; the other subcommands are a CLI of its API.

mod cli;
mod daemon;
mod doctor;
mod server;
mod sim;

use clap::{Parser, Subcommand};

/// jemalloc rather than glibc's malloc: ingest allocates each parsed event on one thread and frees it
/// on the store's, where glibc's malloc took a third of the commit path's time (BENCHMARKS.md, issue 14).
/// Its options are built in from `.cargo/config.toml` (one arena).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "blox",
    version,
    // `blox server --version` too: Blox v0.3's services took `--version`.
    propagate_version = true,
    about = "ECS cluster state mirrored from ECS events, served with Blox's API"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Try blox on this machine: the server with its embedded store and a simulated ECS account
    /// (no AWS account needed). State is kept in --data-dir across runs.
    Up(UpArgs),
    /// Run the server: ingest ECS events from SQS, reconcile with ECS, serve the API.
    Server(Box<server::ServerArgs>),
    /// Container instances.
    #[command(subcommand)]
    Instances(cli::InstancesCommand),
    /// Tasks.
    #[command(subcommand)]
    Tasks(cli::TasksCommand),
    /// Messages that could not be applied.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(cli::DeadLettersCommand),
    /// Daemon environments: what runs one task on every container instance of a cluster.
    #[command(subcommand, name = "env")]
    Env(daemon::EnvCommand),
    /// Deployments of an environment's revisions: start, follow, roll back, stop.
    #[command(subcommand)]
    Deploy(daemon::DeployCommand),
    /// Check, with `blox server`'s flags, what the server needs: AWS credentials and region, the
    /// queue and the EventBridge rule that feeds it, its policy and dead-letter queue, every ECS call
    /// blox makes, and the store. Exits non-zero on any problem.
    Doctor(Box<server::ServerArgs>),
    /// Run the cluster-state scale benchmark and print its figures.
    Bench(blox_bench::BenchArgs),
}

#[derive(clap::Args)]
struct UpArgs {
    /// Address of the REST API (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "BLOX_LISTEN", default_value = "127.0.0.1:2000")]
    listen: String,
    /// Where the store and the simulated account are kept.
    #[arg(long, env = "BLOX_DATA_DIR", default_value = "./blox-data/up")]
    data_dir: std::path::PathBuf,
    /// Log format on stderr: `text` or `json`.
    #[arg(long, env = "BLOX_LOG_FORMAT", default_value = "text")]
    log_format: String,
    #[command(flatten)]
    security: server::SecurityArgs,
    #[command(flatten)]
    sim: sim::SimArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Before any HTTP client is built (the CLI's, the benchmark's).
    blox_client::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("blox: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Command::Up(up) => {
                let banner = server::Banner {
                    data_dir: up.data_dir.clone(),
                    churn: up.sim.sim_churn.clone(),
                };
                let args =
                    server::ServerArgs::up(up.listen, &up.data_dir, up.log_format, up.security, up.sim);
                server::run(args, Some(banner)).await
            }
            Command::Server(args) => server::run(*args, None).await,
            Command::Instances(command) => cli::instances(command).await,
            Command::Tasks(command) => cli::tasks(command).await,
            Command::DeadLetters(command) => cli::dead_letters(command).await,
            Command::Env(command) => daemon::env(command).await,
            Command::Deploy(command) => daemon::deploy(command).await,
            Command::Doctor(args) => doctor::run(*args).await,
            Command::Bench(args) => blox_bench::run(args).await,
        }
    });
    // The server has wound down within its grace; a store call still running on a blocking thread
    // must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("blox: {err:#}");
            // A deployment followed with --wait that did not complete says how it ended.
            match err.downcast_ref::<daemon::Ended>() {
                Some(ended) => std::process::ExitCode::from(ended.code),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}
