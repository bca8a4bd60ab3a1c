//! `blox bench`: the scale scenarios, run against the real code paths on this machine (the `blox`
//! binary's `bench` command calls [`run`]; the scenarios that need a `blox server` process spawn the
//! running executable).
//!
//! 1. **load**: C clusters, I container instances and T tasks, one event each, into a fresh redb store;
//! 2. **apply**: a batch of E further events (state changes of random tasks and instances) through
//!    `Ingestor::commit` in commits of `--batch` (the ingest default), as the SQS consumer commits a backlog;
//! 3. **get** / **list** / **instance filter**: the API served in-process over that store, measured
//!    with an HTTP client;
//! 4. **stream**: many `/v1/stream/tasks` clients, and the latency from committing a change to each
//!    client reading its line;
//! 5. **process**: `blox server` started on the store, timed until it answers a GET, and its resident
//!    memory after serving listings of everything;
//! 6. **simulator** ([`sim`]): an account of the same sizes in `blox_sim`'s in-process ECS: its
//!    DescribeTasks throughput, a reconcile pass under ECS-like throttling against the pagination
//!    floor, and ingestion keeping up with the simulator's churn;
//! 7. **etcd** ([`replicas`]): ingestion into the etcd store, GET latency on a follower and on the
//!    leader of three `blox server` replicas, and failover after SIGKILL of the leader;
//! 8. **daemon scheduler** ([`scheduler`]): the scheduler against the simulator: a new instance's
//!    event to its StartTask, a first deployment against the StartTask throttle's floor, a full
//!    pass's planning time, and a deployment's dry-run plan (`daemon::preview`);
//! 9. **dashboard** ([`dashboard`]): browsers' event streams on an environment page during a rollout.
//!
//! Data is synthetic and seeded ([`workload`], and the simulator's seed), so that runs on the same
//! sizes compare. Figures are printed as a table and written as JSON.

mod dashboard;
mod process;
mod query;
mod replicas;
mod report;
mod scheduler;
mod serve;
mod sim;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

use blox_aws::{Message, NoEvents};
use blox_model::EcsEvent;
use blox_server::{IngestOptions, Ingestor, documents};
use blox_sim::ThrottleConfig;
use blox_store::{Kind, LogStore, PreparedWrite, RedbStore, Store, StoreOptions, Write};
use clap::Args;
use hdrhistogram::Histogram;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::time::Instant;

use report::{Goal, Machine, Report};
use workload::{Rng, Shape, Workload};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Tasks in the workload [default: 100000; --quick: 10000].
    #[arg(long)]
    tasks: Option<u64>,
    /// Container instances [default: 10000; --quick: 1000].
    #[arg(long)]
    instances: Option<u64>,
    /// Clusters the instances (and their tasks) are spread over [default: 10].
    #[arg(long)]
    clusters: Option<u64>,
    /// Events of the apply-throughput batch [default: 1000000; --quick: 100000].
    #[arg(long)]
    events: Option<u64>,
    /// Events per commit [default: the ingest default, `IngestOptions::max_batch`].
    #[arg(long)]
    batch: Option<usize>,
    /// Cluster listings in flight at once [default: 4, the goal's]: how the listing's latency
    /// scales with concurrency on this machine's cores.
    #[arg(long)]
    list_concurrency: Option<usize>,
    /// Clients of the stream fan-out [default: 1000; --quick: 100].
    #[arg(long)]
    stream_clients: Option<usize>,
    /// Threads calling the simulator's DescribeTasks [default: 2, the "2 cores"].
    #[arg(long)]
    describe_threads: Option<usize>,
    /// How long each simulator DescribeTasks measurement runs [default: 5s; --quick: 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    describe_duration: Option<Duration>,
    /// ECS events per second of the simulator's task churn [default: 1000].
    #[arg(long)]
    churn_rate: Option<f64>,
    /// How long the churn runs while ingestion is measured [default: 60s; --quick: 5s].
    #[arg(long, value_parser = humantime::parse_duration)]
    churn_duration: Option<Duration>,
    /// The simulator's throttling in the reconcile, churn and daemon scheduler scenarios:
    /// `FAMILY=BURST/RATE` or `FAMILY=off` pairs over the ECS-like defaults, as `--sim-throttle` of
    /// `blox server`.
    #[arg(long, default_value = "")]
    sim_throttle: String,
    /// Only the simulator scenarios (describe, reconcile, churn, the daemon scheduler's).
    #[arg(long, conflicts_with = "no_sim")]
    sim_only: bool,
    /// Skip the simulator scenarios (the daemon scheduler's included).
    #[arg(long)]
    no_sim: bool,
    /// Only the daemon scheduler's scenarios.
    #[arg(long, conflicts_with_all = ["no_sim", "sim_only"])]
    scheduler_only: bool,
    /// The etcd scenario against this etcd (`http://HOST:PORT`) instead of one the benchmark starts
    /// (from `etcd` on the PATH, data on disk).
    #[arg(long)]
    etcd: Option<String>,
    /// Skip the etcd scenario.
    #[arg(long, conflicts_with = "etcd")]
    no_etcd: bool,
    /// Only the etcd scenario.
    #[arg(long, conflicts_with_all = ["no_etcd", "sim_only", "scheduler_only"])]
    etcd_only: bool,
    /// Skip the dashboard scenario (browsers' event streams during a rollout).
    #[arg(long)]
    no_dashboard: bool,
    /// Only the dashboard scenario.
    #[arg(long, conflicts_with_all = ["no_dashboard", "sim_only", "scheduler_only", "etcd_only", "no_sim"])]
    dashboard_only: bool,
    /// A small workload, for smoke tests. Sizes given explicitly still apply.
    #[arg(long)]
    quick: bool,
    /// Where the store files go (the store is recreated); default: a temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where the figures are written as JSON.
    #[arg(long, default_value = "target/bench/cluster-state.json")]
    json_out: PathBuf,
    /// Seed of the synthetic data and of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The sizes of a run, after `--quick` and explicit flags are combined.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub tasks: u64,
    pub instances: u64,
    pub clusters: u64,
    pub events: u64,
    pub batch: usize,
    pub get_requests: usize,
    pub get_concurrency: usize,
    pub list_requests: usize,
    pub list_concurrency: usize,
    pub filter_requests: usize,
    pub filter_concurrency: usize,
    pub stream_clients: usize,
    pub stream_updates: usize,
    pub stream_interval_ms: u64,
    pub seed: u64,
    /// Which scenarios run: the cluster-state ones (store, API, process), the simulator's.
    pub cluster_state: bool,
    pub simulator: bool,
    pub etcd: bool,
    pub dashboard: bool,
    pub describe_threads: usize,
    pub describe_secs: f64,
    pub churn_rate: f64,
    pub churn_secs: f64,
    pub sim_throttle: ThrottleConfig,
}

impl Params {
    fn resolve(args: &BenchArgs) -> Result<Params> {
        let pick = |explicit: Option<u64>, full: u64, quick: u64| {
            explicit.unwrap_or(if args.quick { quick } else { full })
        };
        let (get_requests, list_requests, filter_requests, stream_updates) = if args.quick {
            (2_000, 50, 200, 50)
        } else {
            (20_000, 200, 1_000, 200)
        };
        Ok(Params {
            tasks: pick(args.tasks, 100_000, 10_000).max(1),
            instances: pick(args.instances, 10_000, 1_000).max(1),
            clusters: pick(args.clusters, 10, 10).max(1),
            events: pick(args.events, 1_000_000, 100_000),
            // The ingest default: what one SQS consumer commit holds at most.
            batch: args.batch.unwrap_or(IngestOptions::default().max_batch).max(1),
            get_requests,
            get_concurrency: 16,
            list_requests,
            list_concurrency: args.list_concurrency.unwrap_or(4).max(1),
            filter_requests,
            filter_concurrency: 4,
            stream_clients: args
                .stream_clients
                .unwrap_or(if args.quick { 100 } else { 1_000 }),
            stream_updates,
            // 100 changes a second: a busy cluster, and slow enough that each change is its own
            // commit and its own wake-up of every stream.
            stream_interval_ms: 10,
            seed: args.seed,
            cluster_state: !args.sim_only && !args.scheduler_only && !args.etcd_only && !args.dashboard_only,
            simulator: !args.no_sim && !args.etcd_only && !args.dashboard_only,
            etcd: !args.no_etcd && !args.sim_only && !args.scheduler_only && !args.dashboard_only,
            dashboard: !args.no_dashboard && !args.no_sim && !args.etcd_only && !args.scheduler_only,
            describe_threads: args.describe_threads.unwrap_or(2).max(1),
            describe_secs: args
                .describe_duration
                .unwrap_or(Duration::from_secs(if args.quick { 1 } else { 5 }))
                .as_secs_f64(),
            churn_rate: args.churn_rate.unwrap_or(1_000.0).max(0.0),
            churn_secs: args
                .churn_duration
                .unwrap_or(Duration::from_secs(if args.quick { 5 } else { 60 }))
                .as_secs_f64(),
            sim_throttle: sim::throttle(&args.sim_throttle)?,
        })
    }
}

/// The one clock of the benchmark: tokio's, which is the monotonic clock (time is never paused here).
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// A latency histogram in microseconds, from 1 µs to 10 minutes.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|e| unreachable!("constant histogram bounds are valid: {e}"))
}

pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// A percentile of a microsecond histogram, in milliseconds.
pub(crate) fn percentile_ms(histogram: &Histogram<u64>, percentile: f64) -> f64 {
    histogram.value_at_percentile(percentile) as f64 / 1000.0
}

pub async fn run(args: BenchArgs) -> Result<()> {
    init_logging();
    let params = Params::resolve(&args)?;
    let machine = Machine::read();
    eprintln!("blox bench on {}", machine.describe());
    eprintln!(
        "workload: {} clusters, {} instances, {} tasks; {} events in batches of {}; {} stream clients",
        params.clusters, params.instances, params.tasks, params.events, params.batch, params.stream_clients
    );

    // Keeps a default temporary directory alive (and removes it) until the run ends.
    let (dir, _temp) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("blox-bench-")
                .tempdir()
                .context("creating a temporary directory")?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let mut bench = Bench {
        workload: Workload::new(Shape {
            clusters: params.clusters,
            instances: params.instances,
            tasks: params.tasks,
            seed: params.seed,
        }),
        task_versions: vec![0; params.tasks as usize],
        instance_versions: vec![0; params.instances as usize],
        rng: Rng::new(params.seed ^ 0xbe4c_0000),
        params,
        report: Report::default(),
    };
    let simulator = sim::describe_params(&bench);
    if bench.params.simulator {
        eprintln!("{simulator}");
    }
    // The API's recorder is installed first so that ingestion (and reconciliation) pay for their
    // metrics, as in the server.
    let metrics = blox_server::metrics::handle();
    if bench.params.cluster_state {
        bench.cluster_state(&dir, metrics).await?;
    }
    if bench.params.etcd {
        replicas::run(&mut bench, &dir, args.etcd.clone(), args.quick).await?;
    }
    if bench.params.simulator {
        if !args.scheduler_only {
            sim::run(&mut bench, &dir).await?;
        }
        scheduler::run(&mut bench, &dir, args.quick).await?;
    }
    if bench.params.dashboard {
        dashboard::run(&mut bench, &dir, args.quick).await?;
    }

    println!("blox bench — {}", machine.describe());
    println!(
        "workload: {} clusters, {} container instances, {} tasks; {} events in batches of {}",
        bench.params.clusters,
        bench.params.instances,
        bench.params.tasks,
        bench.params.events,
        bench.params.batch
    );
    if bench.params.simulator {
        println!("{simulator}");
    }
    println!();
    print!("{}", bench.report.table());
    bench.report.write_json(&args.json_out, &machine, &bench.params)?;
    println!("\nfigures written to {}", args.json_out.display());
    Ok(())
}

fn init_logging() {
    // Warnings only: a failed commit logs its reason, and nothing else should interleave the table.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Waits until this is the last handle of the store (stream tasks of the in-process server may take
/// a moment to notice the shutdown), then drops it, which closes the store.
async fn release<S>(store: Arc<S>) -> Result<()> {
    let deadline = now() + Duration::from_secs(30);
    let mut store = store;
    loop {
        match Arc::try_unwrap(store) {
            Ok(store) => {
                drop(store);
                return Ok(());
            }
            Err(shared) if now() < deadline => {
                store = shared;
                // Nothing signals the last clone's drop; a short poll is enough for a one-off wait.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => bail!("the in-process server still holds the store after 30 s"),
        }
    }
}

pub(crate) struct Bench {
    pub(crate) params: Params,
    pub(crate) workload: Workload,
    /// The version of each task's last event, so that every event is newer and applies.
    task_versions: Vec<u64>,
    instance_versions: Vec<u64>,
    pub(crate) rng: Rng,
    pub(crate) report: Report,
}

pub(crate) fn message(n: u64, body: String) -> Message {
    Message {
        id: format!("m-{n}"),
        receipt: format!("r-{n}"),
        body,
        sent_at_ms: None,
    }
}

impl Bench {
    /// The cluster-state scenarios, in order: load, apply, the API in-process, the server process.
    /// The write path is measured twice in one run: on redb (before: the store of earlier versions,
    /// still `--store redb:PATH`) and on the log store (after: the default); everything after it runs
    /// on the log store.
    async fn cluster_state(&mut self, dir: &Path, metrics: PrometheusHandle) -> Result<()> {
        let path = dir.join("cluster-state.redb");
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing the old {}", path.display()))?;
        }
        let redb = Arc::new(RedbStore::open(&path, StoreOptions::default()).context("opening the store")?);
        let ingestor = Ingestor::new(redb.clone(), Arc::new(NoEvents), IngestOptions::default());
        self.load(&ingestor, redb.as_ref(), "load (redb, before)").await?;
        self.apply(&ingestor, "apply (redb, before)").await?;
        self.split_apply(redb.as_ref(), "Store::apply only (redb)")
            .await?;
        drop(ingestor);
        release(redb).await?;
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;

        let path = dir.join("cluster-state");
        if path.exists() {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing the old {}", path.display()))?;
        }
        let store = Arc::new(LogStore::open(&path, StoreOptions::default()).context("opening the store")?);
        let ingestor = Ingestor::new(store.clone(), Arc::new(NoEvents), IngestOptions::default());
        self.load(&ingestor, store.as_ref(), "load").await?;
        self.apply(&ingestor, "apply").await?;
        self.split_apply(store.as_ref(), "Store::apply only (log store)")
            .await?;
        drop(ingestor);
        self.crash_now(&path, &dir.join("cluster-state-crashed"))?;
        serve::run(self, store.clone(), metrics.clone()).await?;
        query::run(self)?;
        // The server process must be able to open the directory: every handle of this process must
        // be gone (the last one's drop writes the closing checkpoint).
        release(store).await?;
        process::run(self, &path).await?;
        let reopen = || -> Result<Arc<LogStore>> {
            Ok(Arc::new(
                LogStore::open(&path, StoreOptions::default()).context("reopening the store")?,
            ))
        };
        // The store's listings again, on the same entities laid out anew (loaded in key order):
        // what the storm's scatter costs. On an open of their own, so that the backlog below
        // starts from a fresh open, as it did before these figures.
        let store = reopen()?;
        serve::store_list(self, store.as_ref(), serve::Layout::Reopened).await?;
        release(store).await?;
        // Last, since the backlog it commits stays in the store: every figure before it is of the
        // store earlier versions measured.
        let store = reopen()?;
        serve::backlog(self, store.clone(), metrics).await?;
        release(store).await
    }

    /// A crash at the end of the write storm, with the log grown since the last checkpoint as it
    /// happens to be: the store's directory, still open, is copied as a SIGKILL would leave it (every
    /// acknowledged commit is in it) and opened, as a restart would: checkpoint load and replay.
    fn crash_now(&mut self, dir: &Path, copy: &Path) -> Result<()> {
        // A checkpoint finishing meanwhile may delete a segment the copied checkpoint needs: then
        // copy again.
        let mut attempts = 0;
        while let Err(error) = copy_store(dir, copy) {
            attempts += 1;
            ensure!(attempts < 3, "copying {}: {error}", dir.display());
        }
        let started = now();
        let reopened = LogStore::open(copy, StoreOptions::default()).context("opening the crashed copy")?;
        let took = started.elapsed();
        let opened = reopened.opened();
        drop(reopened);
        std::fs::remove_dir_all(copy)?;
        let w = "apply";
        self.report.add(
            w,
            "log replayed after a crash at the storm's end",
            opened.replayed_bytes as f64 / (1024.0 * 1024.0),
            "MiB",
            None,
        );
        self.report.add(
            w,
            "open after that crash (checkpoint + replay)",
            took.as_secs_f64() * 1000.0,
            "ms",
            None,
        );
        Ok(())
    }

    /// The next event of a task: its version is bumped, so ingestion applies it.
    pub(crate) fn next_task_event(&mut self, task: u64) -> String {
        let version = &mut self.task_versions[task as usize];
        *version += 1;
        self.workload.task_event(task, *version)
    }

    pub(crate) fn next_instance_event(&mut self, instance: u64) -> String {
        let version = &mut self.instance_versions[instance as usize];
        *version += 1;
        self.workload.instance_event(instance, *version)
    }

    /// A state change of a random resource: nine in ten are tasks, as ECS sends far more task events.
    pub(crate) fn random_event(&mut self) -> String {
        if self.rng.below(10) == 0 {
            let instance = self.rng.below(self.params.instances);
            self.next_instance_event(instance)
        } else {
            let task = self.rng.below(self.params.tasks);
            self.next_task_event(task)
        }
    }

    /// Commits one batch through the ingest path; every event of the benchmark is newer than what is
    /// stored, so anything but "all applied" means the benchmark measured something else.
    pub(crate) async fn commit(&self, ingestor: &Ingestor, batch: Vec<Message>) -> Result<Duration> {
        let n = batch.len();
        let started = now();
        let report = ingestor
            .commit(batch)
            .await
            .map_err(|()| anyhow::anyhow!("a batch failed to commit (its error is logged above)"))?;
        let elapsed = started.elapsed();
        ensure!(
            report.applied == n,
            "only {} of {n} events applied: {report:?}",
            report.applied
        );
        Ok(elapsed)
    }

    async fn load(&mut self, ingestor: &Ingestor, store: &dyn Store, w: &str) -> Result<()> {
        let (instances, tasks) = (self.params.instances, self.params.tasks);
        let mut busy = Duration::ZERO;
        let mut batch = Vec::with_capacity(self.params.batch);
        // Instances first, as ECS registers them before it places tasks on them.
        for n in 0..instances + tasks {
            let body = if n < instances {
                self.next_instance_event(n)
            } else {
                self.next_task_event(n - instances)
            };
            batch.push(message(n, body));
            if batch.len() == self.params.batch || n + 1 == instances + tasks {
                busy += self.commit(ingestor, std::mem::take(&mut batch)).await?;
            }
        }
        ensure!(
            store.count(Kind::Task).await? == tasks && store.count(Kind::Instance).await? == instances,
            "the store does not hold the loaded workload"
        );
        self.report
            .add(w, "entities loaded", (instances + tasks) as f64, "entities", None);
        self.report
            .add(w, "load time (ingest commits)", busy.as_secs_f64(), "s", None);
        self.report.add(
            w,
            "load rate",
            (instances + tasks) as f64 / busy.as_secs_f64(),
            "events/s",
            None,
        );
        Ok(())
    }

    /// The headline figure: events per second through `Ingestor::commit` (parse, documents, one
    /// durable store transaction per batch). Generating the events is not timed.
    async fn apply(&mut self, ingestor: &Ingestor, w: &str) -> Result<()> {
        let events = self.params.events;
        let mut busy = Duration::ZERO;
        let mut bytes = 0_u64;
        let mut batches = histogram();
        let mut sent = 0_u64;
        let written_before = bytes_written();
        while sent < events {
            let n = (events - sent).min(self.params.batch as u64);
            let batch: Vec<Message> = (0..n)
                .map(|i| {
                    let body = self.random_event();
                    bytes += body.len() as u64;
                    message(sent + i, body)
                })
                .collect();
            let took = self.commit(ingestor, batch).await?;
            batches.record(micros(took))?;
            busy += took;
            sent += n;
        }
        let rate = events as f64 / busy.as_secs_f64().max(1e-9);
        self.report.add(
            w,
            "mean event size",
            bytes as f64 / events.max(1) as f64,
            "bytes",
            None,
        );
        self.report.add(
            w,
            "apply throughput (Ingestor::commit)",
            rate,
            "events/s",
            (w == "apply").then_some(Goal::AtLeast(100_000.0)),
        );
        self.report
            .add(w, "batch commit p50", percentile_ms(&batches, 50.0), "ms", None);
        self.report
            .add(w, "batch commit p99", percentile_ms(&batches, 99.0), "ms", None);
        if let (Some(before), Some(after)) = (written_before, bytes_written()) {
            // What the store's write amplification costs: redb rewrites whole 4 KiB pages; the log
            // store appends each commit once (and a checkpoint now and then).
            self.report.add(
                w,
                "bytes written to the store file per event",
                (after - before) as f64 / events.max(1) as f64,
                "bytes",
                (w == "apply").then_some(Goal::AtMost(1_500.0)),
            );
        }
        Ok(())
    }

    /// Where apply time goes: the same kind of batches, parsed into documents on one thread (timed
    /// alone), then written with `Store::apply` (timed alone). A tenth of the batch, at most 100k.
    /// `storing_figure` names the store's row; the parse row is the same whatever the store and is
    /// reported once, with the default store's.
    async fn split_apply(&mut self, store: &dyn Store, storing_figure: &str) -> Result<()> {
        let events = (self.params.events / 10).clamp(self.params.batch as u64, 100_000);
        let (mut parsing, mut preparing, mut storing) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let mut sent = 0;
        while sent < events {
            let n = (events - sent).min(self.params.batch as u64);
            let bodies: Vec<String> = (0..n).map(|_| self.random_event()).collect();
            let started = now();
            let writes = bodies
                .iter()
                .map(|body| match EcsEvent::parse(body) {
                    Ok(EcsEvent::Task { cluster, task }) => {
                        Ok(Write::Upsert(documents::task(cluster, &task)))
                    }
                    Ok(EcsEvent::ContainerInstance { cluster, instance }) => {
                        Ok(Write::Upsert(documents::instance(cluster, &instance)))
                    }
                    other => bail!("a generated event did not parse as a task or instance: {other:?}"),
                })
                .collect::<Result<Vec<_>>>()?;
            let parsed = now();
            // What `Store::apply` does before its write lock, and the ingest on its parsing thread.
            let writes = PreparedWrite::all(writes);
            let prepared = now();
            store.apply_prepared(writes).await?;
            parsing += parsed - started;
            preparing += prepared - parsed;
            storing += prepared.elapsed();
            sent += n;
        }
        let w = "apply";
        let rate = |took: Duration| events as f64 / took.as_secs_f64().max(1e-9);
        if !storing_figure.contains("redb") {
            self.report.add(
                w,
                "parse + documents only (1 thread)",
                rate(parsing),
                "events/s",
                None,
            );
            self.report.add(
                w,
                "body compression only (PreparedWrite::new, 1 thread)",
                rate(preparing),
                "events/s",
                None,
            );
            self.report.add(
                w,
                "Store::apply_prepared only (log store)",
                rate(storing),
                "events/s",
                None,
            );
        }
        // `Store::apply` compresses the bodies itself, then commits.
        self.report
            .add(w, storing_figure, rate(preparing + storing), "events/s", None);
        Ok(())
    }
}

/// Copies a log store's files (its checkpoint first) but the lock.
fn copy_store(dir: &Path, copy: &Path) -> std::io::Result<()> {
    if copy.exists() {
        std::fs::remove_dir_all(copy)?;
    }
    std::fs::create_dir_all(copy)?;
    match std::fs::copy(dir.join("checkpoint"), copy.join("checkpoint")) {
        // None yet: the log is replayed from its start.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        other => {
            other?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if name.to_string_lossy().starts_with("wal-") {
            std::fs::copy(dir.join(&name), copy.join(&name))?;
        }
    }
    Ok(())
}

/// Bytes this process has passed to write calls (`wchar` of `/proc/self/io`), when Linux says. Only
/// the store writes while events are applied, so a difference over that phase is the store's.
fn bytes_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("wchar:"))?
        .trim()
        .parse()
        .ok()
}

/// The store's size on disk (a file, or a directory's files), for the report.
pub(crate) fn file_mib(path: &Path) -> f64 {
    let bytes = match std::fs::read_dir(path) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum(),
        Err(_) => std::fs::metadata(path).map_or(0, |m| m.len()),
    };
    bytes as f64 / (1024.0 * 1024.0)
}
