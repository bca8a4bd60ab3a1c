//! The simulator scenarios: blox against `blox_sim`, the in-process ECS, in an account of the run's
//! sizes (`Scenario::scale` over `--clusters`, `--instances` and `--tasks`):
//!
//! 1. **describe**: the simulator's own DescribeTasks-by-100 throughput, unthrottled, from
//!    `--describe-threads` threads: it must never be the bottleneck of what it is used to measure;
//! 2. **reconcile**: one `Reconciler::pass` of the whole account into a fresh redb store under the
//!    ECS-like throttle (`--sim-throttle`): its calls against the pagination floor, its time against
//!    the throttle's floor;
//! 3. **churn**: the simulator's `Driver` at `--churn-rate` events/s for `--churn-duration`, the
//!    simulator being the event source of a real `Ingestor` that writes to that store: whether
//!    ingestion keeps up.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use async_trait::async_trait;
use blox_aws::{DESCRIBE_BATCH, EcsReader, EventSource, Message, QueueDepth, SourceError};
use blox_server::{IngestOptions, Ingestor, ReadinessState, ReconcileOptions, Reconciler};
use blox_sim::{
    Clock, Driver, Family, LIST_PAGE_MAX, Rate, Rates, Scenario, SimConfig, SimOptions, Simulator,
    ThrottleConfig,
};
use blox_store::{Kind, RedbStore, Store, StoreOptions};
use hdrhistogram::Histogram;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::report::Goal;
use super::{Bench, histogram, now};

/// Distinct random batches the describe threads cycle through: enough that the tasks they touch
/// are spread over the cluster, few enough to build in a moment.
const DESCRIBE_BATCHES: usize = 1_024;
/// How often the churn driver acts, as the simulator's own ticker does by default.
const DRIVER_TICK: Duration = Duration::from_millis(20);
/// How often the reconcile pass's answered calls are sampled, to see when each bucket was in use:
/// twice the 50 ms between two calls of a busy bucket refilling at 20/s, so that a busy bucket
/// answers a call in every window.
const CALL_SAMPLE: Duration = Duration::from_millis(100);
/// How long the queue may take to empty once churn stops before the run gives up on it.
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);

/// What ECS lists in one cluster, for the pagination floor.
#[derive(Debug, Clone)]
struct ClusterSize {
    name: String,
    instances: usize,
    /// Tasks ListTasks returns with desiredStatus RUNNING, and with STOPPED.
    running: usize,
    stopped: usize,
}

impl ClusterSize {
    fn tasks(&self) -> usize {
        self.running + self.stopped
    }
}

pub(crate) async fn run(bench: &mut Bench, dir: &Path) -> Result<()> {
    let (sim, scenario, sizes) = build(bench).await?;
    describe(bench, &sim, &sizes).await?;

    let path = dir.join("sim-state.redb");
    if path.exists() {
        std::fs::remove_file(&path).with_context(|| format!("removing the old {}", path.display()))?;
    }
    let store = Arc::new(RedbStore::open(&path, StoreOptions::default()).context("opening the store")?);
    reconcile(bench, &sim, store.clone(), &sizes).await?;
    churn(bench, &sim, store, scenario).await
}

/// The account: `Scenario::scale` built at once (no events: blox learns it by reconciling), with no
/// throttle until the reconcile scenario sets one, and no churn until the churn scenario drives it.
async fn build(bench: &mut Bench) -> Result<(Simulator, Scenario, Vec<ClusterSize>)> {
    let p = &bench.params;
    let scenario = Scenario::scale(
        p.clusters as usize,
        p.instances as usize,
        p.tasks as usize,
        Rates::task_churn(p.churn_rate),
    );
    let options = SimOptions {
        config: SimConfig {
            throttle: ThrottleConfig::unlimited(),
            ..SimConfig::default()
        },
        seed: p.seed,
        scenario: Some(scenario.clone()),
        // The bench runs the `Driver` itself, so that churn starts only after the reconcile pass
        // (the simulator's ticker would owe churn for all the time since it opened).
        churn: false,
        ..SimOptions::default()
    };
    let started = now();
    let (sim, _) = tokio::task::spawn_blocking(move || Simulator::open(options, Clock::Wall))
        .await
        .context("building the simulated account panicked")?
        .context("building the simulated account")?;
    let built = started.elapsed();
    let sizes: Vec<ClusterSize> = sim.read(|ecs| {
        ecs.listed()
            .into_iter()
            .map(|(name, listed)| {
                let running = listed
                    .tasks
                    .iter()
                    .filter(|t| t.desired_status == "RUNNING")
                    .count();
                ClusterSize {
                    name,
                    instances: listed.instances.len(),
                    running,
                    stopped: listed.tasks.len() - running,
                }
            })
            .collect()
    });
    let instances: usize = sizes.iter().map(|c| c.instances).sum();
    let tasks: usize = sizes.iter().map(ClusterSize::tasks).sum();
    let w = "sim account";
    bench
        .report
        .add(w, "simulated instances", instances as f64, "instances", None);
    bench
        .report
        .add(w, "simulated tasks", tasks as f64, "tasks", None);
    bench.report.add(
        w,
        "account built (Scenario::scale)",
        built.as_secs_f64(),
        "s",
        None,
    );
    Ok((sim, scenario, sizes))
}

/// Which DescribeTasks is measured.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// `Ecs::describe_tasks` under the simulator's read lock: what the simulator itself costs.
    Ecs,
    /// `EcsReader::describe_tasks`, which also clones the 100 tasks out, as blox receives them.
    Reader,
}

async fn describe(bench: &mut Bench, sim: &Simulator, sizes: &[ClusterSize]) -> Result<()> {
    let cluster = sizes
        .iter()
        .max_by_key(|c| c.tasks())
        .map(|c| c.name.clone())
        .context("the simulated account has no cluster")?;
    let arns: Vec<String> = sim.read(|ecs| {
        ecs.live_tasks(&cluster)
            .iter()
            .map(|t| t.task_arn.clone())
            .collect()
    });
    ensure!(
        arns.len() >= DESCRIBE_BATCH,
        "cluster {cluster} has {} tasks, fewer than one DescribeTasks batch of {DESCRIBE_BATCH}: give more --tasks",
        arns.len()
    );
    let batches: Vec<Vec<String>> = (0..DESCRIBE_BATCHES)
        .map(|_| {
            let mut picked = HashSet::with_capacity(DESCRIBE_BATCH);
            while picked.len() < DESCRIBE_BATCH {
                picked.insert(bench.rng.below(arns.len() as u64) as usize);
            }
            picked.into_iter().map(|i| arns[i].clone()).collect()
        })
        .collect();
    let batches = Arc::new(batches);
    let threads = bench.params.describe_threads;
    let duration = Duration::from_secs_f64(bench.params.describe_secs);

    let w = &format!("sim DescribeTasks (t={threads})");
    let rate = calls_per_second(sim, &cluster, &batches, threads, duration, Via::Ecs).await?;
    bench.report.add(
        w,
        "DescribeTasks by 100: Ecs under the read lock",
        rate,
        "calls/s",
        Some(Goal::AtLeast(50_000.0)),
    );
    if threads != 1 {
        let rate = calls_per_second(sim, &cluster, &batches, 1, duration, Via::Ecs).await?;
        bench.report.add(
            w,
            "DescribeTasks by 100: Ecs under the read lock, 1 thread",
            rate,
            "calls/s",
            None,
        );
    }
    let rate = calls_per_second(sim, &cluster, &batches, threads, duration, Via::Reader).await?;
    bench.report.add(
        w,
        "DescribeTasks by 100: EcsReader (tasks cloned out)",
        rate,
        "calls/s",
        None,
    );
    Ok(())
}

/// DescribeTasks from `threads` threads for `duration`, each cycling through the batches from its
/// own offset; the sum of each thread's calls per second of its own run.
async fn calls_per_second(
    sim: &Simulator,
    cluster: &str,
    batches: &Arc<Vec<Vec<String>>>,
    threads: usize,
    duration: Duration,
    via: Via,
) -> Result<f64> {
    let (sim, cluster, batches) = (sim.clone(), cluster.to_owned(), batches.clone());
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads.max(1))
                .map(|t| {
                    let (sim, cluster, batches) = (&sim, cluster.as_str(), batches.as_slice());
                    let offset = t * batches.len() / threads.max(1);
                    scope.spawn(move || match via {
                        Via::Ecs => describe_ecs(sim, cluster, batches, offset, duration),
                        Via::Reader => describe_reader(sim, cluster, batches, offset, duration),
                    })
                })
                .collect();
            let mut rate = 0.0;
            for worker in workers {
                let (calls, took) = worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("a describe thread panicked"))??;
                rate += calls as f64 / took.as_secs_f64().max(1e-9);
            }
            Ok(rate)
        })
    })
    .await
    .context("the describe threads panicked")?
}

fn describe_ecs(
    sim: &Simulator,
    cluster: &str,
    batches: &[Vec<String>],
    offset: usize,
    duration: Duration,
) -> Result<(u64, Duration)> {
    let started = now();
    let mut calls = 0_u64;
    while started.elapsed() < duration {
        let batch = &batches[(offset + calls as usize) % batches.len()];
        let at = sim.now_ms();
        let (found, failures) = sim.read(|ecs| ecs.describe_tasks(cluster, batch, at))?;
        ensure!(
            found.len() == batch.len() && failures.is_empty(),
            "DescribeTasks found {} of {} tasks",
            found.len(),
            batch.len()
        );
        calls += 1;
    }
    Ok((calls, started.elapsed()))
}

fn describe_reader(
    sim: &Simulator,
    cluster: &str,
    batches: &[Vec<String>],
    offset: usize,
    duration: Duration,
) -> Result<(u64, Duration)> {
    // Unthrottled, the trait method never waits: a runtime per thread only polls it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a describe thread's runtime")?;
    runtime.block_on(async {
        let started = now();
        let mut calls = 0_u64;
        while started.elapsed() < duration {
            let batch = &batches[(offset + calls as usize) % batches.len()];
            let found = EcsReader::describe_tasks(sim, cluster, batch).await?;
            ensure!(
                found.len() == batch.len(),
                "DescribeTasks found {} of {} tasks",
                found.len(),
                batch.len()
            );
            calls += 1;
        }
        Ok((calls, started.elapsed()))
    })
}

/// The fewest calls a reconcile pass of the account can make, with ECS's page sizes.
#[derive(Debug, Clone, Copy)]
struct Floor {
    list: u64,
    describe: u64,
}

impl Floor {
    fn of(sizes: &[ClusterSize]) -> Floor {
        // A listing takes one call even when empty; a describe of nothing takes none.
        let pages = |n: usize| n.div_ceil(LIST_PAGE_MAX).max(1) as u64;
        let batches = |n: usize| n.div_ceil(DESCRIBE_BATCH) as u64;
        Floor {
            list: pages(sizes.len())
                + sizes
                    .iter()
                    .map(|c| pages(c.instances) + pages(c.running) + pages(c.stopped))
                    .sum::<u64>(),
            describe: sizes
                .iter()
                .map(|c| batches(c.instances) + batches(c.tasks()))
                .sum(),
        }
    }
}

/// Seconds a bucket needs for `calls` calls at least: the burst is free, the rest comes at the rate.
fn throttle_secs(calls: u64, rate: Option<Rate>) -> f64 {
    rate.map_or(0.0, |r| {
        calls.saturating_sub(u64::from(r.burst)) as f64 / r.per_second
    })
}

fn answered(sim: &Simulator) -> (u64, u64) {
    sim.read(|ecs| {
        (
            ecs.call_counts(Family::List).0,
            ecs.call_counts(Family::Describe).0,
        )
    })
}

async fn reconcile(
    bench: &mut Bench,
    sim: &Simulator,
    store: Arc<RedbStore>,
    sizes: &[ClusterSize],
) -> Result<()> {
    let throttle = bench.params.sim_throttle.clone();
    // Fresh, full buckets and call counts from zero.
    sim.write(|ecs, _| ecs.set_throttle(throttle.clone()));
    let floor = Floor::of(sizes);

    // Answered calls over time: when each family's bucket was in use.
    let sampling = CancellationToken::new();
    let sampler = tokio::spawn({
        let (sim, sampling) = (sim.clone(), sampling.clone());
        async move {
            let mut ticker = tokio::time::interval(CALL_SAMPLE);
            let mut samples = Vec::new();
            loop {
                tokio::select! {
                    _ = ticker.tick() => samples.push((now(), answered(&sim))),
                    () = sampling.cancelled() => {
                        samples.push((now(), answered(&sim)));
                        return samples;
                    }
                }
            }
        }
    });

    let reconciler = Reconciler::new(
        store.clone(),
        Arc::new(sim.clone()),
        ReconcileOptions::default(),
        Arc::new(ReadinessState::default()),
    );
    let started = now();
    let pass = reconciler.pass().await;
    let elapsed = started.elapsed().as_secs_f64();
    sampling.cancel();
    let samples = sampler.await.context("the call sampler panicked")?;
    ensure!(
        pass.listed && pass.failures.is_empty(),
        "the reconcile pass failed: {:?}",
        pass.failures
    );
    let instances: usize = sizes.iter().map(|c| c.instances).sum();
    let tasks: usize = sizes.iter().map(ClusterSize::tasks).sum();
    ensure!(
        store.count(Kind::Instance).await? == instances as u64
            && store.count(Kind::Task).await? == tasks as u64,
        "the store does not hold the simulated account after the pass"
    );

    let (mut list_busy, mut describe_busy, mut both_busy) = (0.0, 0.0, 0.0);
    for pair in samples.windows(2) {
        let ((t0, (l0, d0)), (t1, (l1, d1))) = (pair[0], pair[1]);
        let dt = (t1 - t0).as_secs_f64();
        if l1 > l0 {
            list_busy += dt;
        }
        if d1 > d0 {
            describe_busy += dt;
        }
        if l1 > l0 && d1 > d0 {
            both_busy += dt;
        }
    }

    let w = "sim reconcile";
    bench
        .report
        .add(w, "entities upserted", pass.upserted as f64, "entities", None);
    let mut floor_secs = 0.0_f64;
    for (family, floor_calls) in [(Family::List, floor.list), (Family::Describe, floor.describe)] {
        let (calls, throttled) = sim.read(|ecs| ecs.call_counts(family));
        let name = family.name();
        bench.report.add(
            w,
            &format!("{name} calls answered"),
            calls as f64,
            "calls",
            Some(Goal::AtMost(floor_calls as f64)),
        );
        bench.report.add(
            w,
            &format!("{name} pagination floor"),
            floor_calls as f64,
            "calls",
            None,
        );
        bench.report.add(
            w,
            &format!("{name} calls throttled (retried)"),
            throttled as f64,
            "calls",
            None,
        );
        floor_secs = floor_secs.max(throttle_secs(floor_calls, throttle.rate(family)));
    }
    bench.report.add(w, "reconcile pass time", elapsed, "s", None);
    // The families have separate buckets, so a pass can spend both at once: the floor is the
    // slower family's, not the sum.
    bench
        .report
        .add(w, "throttle floor time (slower family)", floor_secs, "s", None);
    if floor_secs > 0.0 {
        bench.report.add(
            w,
            "pass time / throttle floor time",
            elapsed / floor_secs,
            "x",
            Some(Goal::AtMost(1.1)),
        );
    } else {
        eprintln!("  {w}: every family's calls fit in its burst: no throttle floor to compare with");
    }
    bench
        .report
        .add(w, "time list calls were answered", list_busy, "s", None);
    bench
        .report
        .add(w, "time describe calls were answered", describe_busy, "s", None);
    bench
        .report
        .add(w, "time both were answered", both_busy, "s", None);
    Ok(())
}

/// The simulator as the ingestor's queue, noting each message's emission time when it is received
/// and the time from emission to its deletion (after its commit) when it is deleted.
struct Observed {
    sim: Simulator,
    sent_at: Mutex<HashMap<String, u64>>,
    latency: Mutex<Histogram<u64>>,
    /// (delete calls, messages deleted): one delete per commit, so the mean commit size.
    deletes: Mutex<(u64, u64)>,
}

#[async_trait]
impl EventSource for Observed {
    async fn receive(&self, max: usize) -> Result<Vec<Message>, SourceError> {
        let messages = self.sim.receive(max).await?;
        let mut sent_at = self.sent_at.lock().unwrap_or_else(|p| p.into_inner());
        for m in &messages {
            if let Some(at) = m.sent_at_ms {
                sent_at.insert(m.receipt.clone(), at);
            }
        }
        Ok(messages)
    }

    async fn delete(&self, receipts: &[String]) -> Result<Vec<String>, SourceError> {
        let failed = self.sim.delete(receipts).await?;
        let deleted_at = self.sim.now_ms();
        let failed_set: HashSet<&String> = failed.iter().collect();
        let mut sent_at = self.sent_at.lock().unwrap_or_else(|p| p.into_inner());
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let mut deleted = 0;
        for receipt in receipts {
            let sent = sent_at.remove(receipt);
            if let Some(sent) = sent.filter(|_| !failed_set.contains(receipt)) {
                deleted += 1;
                // The simulator's clock counts milliseconds; the histogram microseconds.
                let _ = latency.record(deleted_at.saturating_sub(sent).max(1) * 1_000);
            }
        }
        let mut deletes = self.deletes.lock().unwrap_or_else(|p| p.into_inner());
        deletes.0 += 1;
        deletes.1 += deleted;
        Ok(failed)
    }

    async fn depth(&self) -> Result<QueueDepth, SourceError> {
        self.sim.depth().await
    }
}

/// One look at the queue during churn: events emitted and deleted since churn started.
#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    emitted: u64,
    deleted: u64,
    /// Messages in the queue: visible, or received and not deleted yet.
    depth: u64,
}

impl Sample {
    fn lag(&self) -> f64 {
        self.emitted as f64 - self.deleted as f64
    }
}

/// Least-squares slope of the lag over the samples of the last half of the run (at least two).
fn lag_slope(samples: &[Sample]) -> f64 {
    let Some(last) = samples.last() else {
        return 0.0;
    };
    let half = last.secs / 2.0;
    let mut tail: Vec<&Sample> = samples.iter().filter(|s| s.secs > half).collect();
    if tail.len() < 2 {
        tail = samples.iter().rev().take(2).collect();
    }
    if tail.len() < 2 {
        return 0.0;
    }
    let n = tail.len() as f64;
    let mean_t = tail.iter().map(|s| s.secs).sum::<f64>() / n;
    let mean_l = tail.iter().map(|s| s.lag()).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for s in &tail {
        num += (s.secs - mean_t) * (s.lag() - mean_l);
        den += (s.secs - mean_t).powi(2);
    }
    if den > 0.0 { num / den } else { 0.0 }
}

/// A percentile of a histogram of whole milliseconds (the simulator's clock), rounded back to the
/// millisecond it stands for (the histogram reports the top of its bucket).
fn whole_ms(histogram: &Histogram<u64>, percentile: f64) -> f64 {
    (histogram.value_at_percentile(percentile) as f64 / 1000.0).round()
}

/// Runs the churn until `stop`, stepping the driver the way the simulator's ticker does.
async fn drive(sim: Simulator, mut driver: Driver, stop: CancellationToken) -> u64 {
    let mut ticker = tokio::time::interval(DRIVER_TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = sim.now_ms();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => break,
        }
        sim.write(|ecs, at| {
            driver.step(ecs, at, at.saturating_sub(last));
            last = at;
        });
    }
    driver.actions
}

async fn churn(bench: &mut Bench, sim: &Simulator, store: Arc<RedbStore>, scenario: Scenario) -> Result<()> {
    let rate = bench.params.churn_rate;
    let duration = bench.params.churn_secs;
    let source = Arc::new(Observed {
        sim: sim.clone(),
        sent_at: Mutex::new(HashMap::new()),
        latency: Mutex::new(histogram()),
        deletes: Mutex::new((0, 0)),
    });
    let shutdown = CancellationToken::new();
    let ingestor = Ingestor::new(store, source.clone(), IngestOptions::default());
    let ingesting = tokio::spawn(ingestor.run(shutdown.clone()));

    let base = sim.queue(|q| q.stats());
    let sample = || {
        let (stats, depth) = sim.queue(|q| (q.stats(), q.depth()));
        (
            stats.emitted - base.emitted,
            stats.deleted - base.deleted,
            depth.visible + depth.in_flight,
        )
    };
    let stopping = CancellationToken::new();
    let driving = tokio::spawn(drive(
        sim.clone(),
        Driver::new(scenario, bench.params.seed),
        stopping.clone(),
    ));
    // Every second, or four times in a short run so that the last half still has a slope.
    let every = Duration::from_secs_f64((duration / 4.0).clamp(0.05, 1.0));
    let started = now();
    let mut ticker = tokio::time::interval_at(started + every, every);
    let mut samples: Vec<Sample> = Vec::new();
    loop {
        ticker.tick().await;
        let secs = started.elapsed().as_secs_f64();
        let (emitted, deleted, depth) = sample();
        samples.push(Sample {
            secs,
            emitted,
            deleted,
            depth,
        });
        if secs >= duration {
            break;
        }
    }
    stopping.cancel();
    let actions = driving.await.context("the churn driver panicked")?;
    let churned = started.elapsed().as_secs_f64();

    let draining = now();
    while sim.queue(|q| q.pending()) > 0 {
        if draining.elapsed() > DRAIN_DEADLINE {
            shutdown.cancel();
            bail!(
                "the queue still held {} messages {} s after churn stopped",
                sim.queue(|q| q.pending()),
                DRAIN_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = draining.elapsed().as_secs_f64();
    shutdown.cancel();
    ingesting.await.context("the ingestor panicked")?;

    let (emitted, deleted, _) = sample();
    let last = samples
        .last()
        .copied()
        .context("no sample of the queue was taken")?;
    let latency = source.latency.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (commits, committed) = *source.deletes.lock().unwrap_or_else(|p| p.into_inner());
    ensure!(
        deleted == emitted,
        "{emitted} events emitted but {deleted} deleted after the queue emptied"
    );

    let w = &format!("sim churn ({}/s)", super::report::number(rate));
    bench
        .report
        .add(w, "driver actions", actions as f64 / churned, "actions/s", None);
    bench.report.add(
        w,
        "events emitted",
        last.emitted as f64 / last.secs,
        "events/s",
        None,
    );
    bench.report.add(
        w,
        "events committed",
        last.deleted as f64 / last.secs,
        "events/s",
        None,
    );
    bench.report.add(
        w,
        "lag at the end (emitted − deleted)",
        last.lag(),
        "events",
        None,
    );
    bench.report.add(
        w,
        "max lag",
        samples.iter().map(Sample::lag).fold(0.0, f64::max),
        "events",
        None,
    );
    bench.report.add(
        w,
        "max queue depth (visible + in flight)",
        samples.iter().map(|s| s.depth).max().unwrap_or(0) as f64,
        "messages",
        None,
    );
    // "No growing lag": the lag's trend over the last half, against 1% of the churn rate.
    bench.report.add(
        w,
        "lag slope over the last half",
        lag_slope(&samples),
        "events/s",
        Some(Goal::AtMost(rate * 0.01)),
    );
    bench
        .report
        .add(w, "emission → delete p50", whole_ms(&latency, 50.0), "ms", None);
    bench
        .report
        .add(w, "emission → delete p99", whole_ms(&latency, 99.0), "ms", None);
    bench
        .report
        .add(w, "emission → delete max", whole_ms(&latency, 100.0), "ms", None);
    bench.report.add(
        w,
        "messages per commit (mean)",
        committed as f64 / commits.max(1) as f64,
        "messages",
        None,
    );
    bench
        .report
        .add(w, "queue drained after churn stopped", drained, "s", None);
    Ok(())
}

/// Parses `--sim-throttle` over the ECS-like defaults.
pub(crate) fn throttle(spec: &str) -> Result<ThrottleConfig> {
    let mut config = ThrottleConfig::default();
    config
        .parse_overrides(spec)
        .map_err(|e| anyhow::anyhow!("--sim-throttle: {e}"))?;
    Ok(config)
}

/// Describes the simulator's parameters for the header of the run.
pub(crate) fn describe_params(bench: &Bench) -> String {
    let p = &bench.params;
    let rates: Vec<String> = Family::ALL
        .into_iter()
        .map(|f| {
            let shape = p.sim_throttle.rate(f).map_or("off".to_owned(), |r| {
                format!("{}/{}", r.burst, super::report::number(r.per_second))
            });
            format!("{}={shape}", f.name())
        })
        .collect();
    format!(
        "simulator: DescribeTasks from {} threads for {} s each; throttle {}; churn {} events/s for {} s",
        p.describe_threads,
        super::report::number(p.describe_secs),
        rates.join(","),
        super::report::number(p.churn_rate),
        super::report::number(p.churn_secs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(instances: usize, running: usize, stopped: usize) -> ClusterSize {
        ClusterSize {
            name: "c".into(),
            instances,
            running,
            stopped,
        }
    }

    #[test]
    fn the_floor_counts_pages_and_batches() {
        // The account: 10 clusters of 1,000 instances and 10,000 running tasks.
        let sizes = vec![size(1_000, 10_000, 0); 10];
        let floor = Floor::of(&sizes);
        // ListClusters, then per cluster 10 instance pages, 100 RUNNING pages and one empty STOPPED.
        assert_eq!(floor.list, 1 + 10 * (10 + 100 + 1));
        assert_eq!(floor.describe, 10 * (10 + 100));
        assert_eq!(Floor::of(&[size(0, 101, 1)]).describe, 2);
        let rate = Some(Rate::new(50, 20.0));
        assert_eq!(throttle_secs(1_111, rate), 53.05);
        assert_eq!(throttle_secs(10, rate), 0.0);
        assert_eq!(throttle_secs(1_111, None), 0.0);
    }

    #[test]
    fn the_slope_is_that_of_the_last_half() {
        let at = |secs: f64, lag: u64| Sample {
            secs,
            emitted: 1_000 + lag,
            deleted: 1_000,
            depth: 0,
        };
        // A backlog at the start that is worked off, then flat: the slope is the flat part's.
        let samples = [at(1.0, 500), at(2.0, 100), at(3.0, 10), at(4.0, 10)];
        assert_eq!(lag_slope(&samples), 0.0);
        let growing = [at(1.0, 0), at(2.0, 0), at(3.0, 100), at(4.0, 200)];
        assert!((lag_slope(&growing) - 100.0).abs() < 1e-9);
        assert_eq!(lag_slope(&[at(1.0, 5)]), 0.0);
    }
}
