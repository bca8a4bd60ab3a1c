//! The daemon scheduler's scenarios: the real executor (the simulator as its ECS) and the real
//! `Ingestor` (the simulator as its event source) on one redb store, environments written by the same
//! commands the API runs; and the pure planner.
//!
//! 1. **new instance**: an environment deployed and completed on a cluster, then instances
//!    registering one at a time; for each, the time from the commit that applied its instance event
//!    (seen on the store's change log) to the simulator receiving the StartTask naming it (a thin
//!    recorder around the simulator's `EcsControl`);
//! 2. **first deployment**: a deployment onto N instances under the simulator's launch throttle
//!    (ECS-like: burst 20, 20 calls/s), the executor paced at that rate; the time from the
//!    deployment's write to every task RUNNING, against the floor the throttle and the simulator's
//!    PROVISIONING + PENDING delays set;
//! 3. **rolling updates** of the same N instances, TerminateThenReplace at minHealthyPercent 90 then
//!    ReplaceThenTerminate at maxOverPercent 10: the time to completed against the floor the
//!    StartTask and StopTask rates set, the fewest instances with a healthy daemon seen (sampled
//!    continuously in the simulator), the most instances carrying two tasks, and the bytes of
//!    scheduler documents written to the store per instance (from the change log);
//! 4. **planning**: `plan()` of E environments over I instances with their tasks (one daemon per
//!    instance per environment, as after convergence), and `Scheduler::pass` (the in-memory view
//!    included) over a redb store holding the same;
//! 5. **deployment plan**: `daemon::preview` (a `dryRun` deployment's plan) of a new revision over I
//!    instances each running the environment's current one, TerminateThenReplace at
//!    minHealthyPercent 90 and ReplaceThenTerminate at maxOverPercent 10.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use async_trait::async_trait;
use blox_aws::{
    ClusterDescription, EcsControl, EcsError, Failure, START_TASK_BATCH, StartTask, Started,
    TaskDefinitionDescription,
};
use blox_model::daemon::lifecycle::{
    self, CreateEnvironment, DeployTarget, Fresh, TaskDefinitionRef, UpdateEnvironment,
};
use blox_model::daemon::{
    self, Active, ClusterView, ConfigPatch, Deployment, DeploymentMethod, DeploymentStatus, Doc, Environment,
    EnvironmentStatus, InstanceGroup, PlanInput, Revision,
};
use blox_model::{ClusterName, ContainerInstance, Task};
use blox_server::environments::{self, Depth};
use blox_server::{IngestOptions, Ingestor, Scheduler, SchedulerOptions, View, documents};
use blox_sim::{
    Clock, Ecs, Family, NewInstance, SimConfig, SimContainer, SimOptions, Simulator, ThrottleConfig,
};
use blox_store::{Expect, Key, Kind, RedbStore, Store, StoreOptions, Write};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::report::Goal;
use super::{Bench, histogram, micros, now, percentile_ms};

const CLUSTER: &str = "sched";
/// The time between two instances joining in the new-instance scenario: well apart, so that each
/// is its own event, its own pass and its own StartTask (and the 20 calls/s pacing never delays one).
const JOIN_INTERVAL: Duration = Duration::from_millis(100);
/// How often progress is polled.
const POLL: Duration = Duration::from_millis(10);

/// The sizes of the scheduler scenarios.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// The rolling updates' minHealthyPercent and maxOverPercent: 90 and 10 (the goals' settings);
    /// 50 and 50 for `--quick`, whose fleet is so small that a 10% budget would make the update
    /// budget-bound, not rate-bound, and slow.
    min_healthy_percent: i64,
    max_over_percent: i64,
    /// Instances running the environment before the joiners come.
    base: usize,
    joiners: usize,
    /// Instances of the first deployment and the rolling updates.
    deploy: usize,
    plan_instances: usize,
    plan_environments: usize,
    plan_runs: usize,
    pass_runs: usize,
    /// Instances of the deployment plans, and how many times each plan is timed.
    preview_instances: usize,
    preview_runs: usize,
}

impl Sizes {
    fn of(quick: bool) -> Sizes {
        if quick {
            Sizes {
                min_healthy_percent: 50,
                max_over_percent: 50,
                base: 10,
                joiners: 20,
                deploy: 200,
                plan_instances: 500,
                plan_environments: 20,
                plan_runs: 10,
                pass_runs: 5,
                preview_instances: 500,
                preview_runs: 10,
            }
        } else {
            Sizes {
                min_healthy_percent: 90,
                max_over_percent: 10,
                base: 100,
                joiners: 200,
                deploy: 5_000,
                plan_instances: 10_000,
                plan_environments: 20,
                plan_runs: 50,
                pass_runs: 50,
                preview_instances: 5_000,
                preview_runs: 50,
            }
        }
    }
}

pub(crate) async fn run(bench: &mut Bench, dir: &Path, quick: bool) -> Result<()> {
    let sizes = Sizes::of(quick);
    eprintln!(
        "daemon scheduler: {} instances joining one every {} ms onto {}; first deployment and two rolling updates of {}; planning {} instances × {} environments; deployment plans of {} instances",
        sizes.joiners,
        JOIN_INTERVAL.as_millis(),
        sizes.base,
        sizes.deploy,
        sizes.plan_instances,
        sizes.plan_environments,
        sizes.preview_instances
    );
    new_instances(bench, dir, sizes).await?;
    deployments(bench, dir, sizes).await?;
    planning(bench, dir, sizes).await?;
    deployment_plans(bench, sizes).await
}

/// StartTask calls as the simulator received them: when, and for which instances.
struct Recorder {
    sim: Simulator,
    starts: Mutex<Vec<(Instant, Vec<String>)>>,
}

#[async_trait]
impl EcsControl for Recorder {
    async fn describe_clusters(
        &self,
        clusters: &[String],
    ) -> Result<(Vec<ClusterDescription>, Vec<Failure>), EcsError> {
        self.sim.describe_clusters(clusters).await
    }

    async fn describe_task_definition(
        &self,
        task_definition: &str,
    ) -> Result<TaskDefinitionDescription, EcsError> {
        self.sim.describe_task_definition(task_definition).await
    }

    async fn start_task(&self, request: &StartTask) -> Result<Started, EcsError> {
        let at = now();
        self.starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((at, request.container_instances.clone()));
        self.sim.start_task(request).await
    }

    async fn stop_task(&self, cluster: &str, task: &str, reason: &str) -> Result<Task, EcsError> {
        self.sim.stop_task(cluster, task, reason).await
    }
}

impl Recorder {
    /// When each instance was first named in a StartTask.
    fn first_starts(&self) -> HashMap<String, Instant> {
        let mut first = HashMap::new();
        for (at, instances) in self.starts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            for arn in instances {
                first.entry(arn.clone()).or_insert(*at);
            }
        }
        first
    }
}

/// A simulated account with one cluster, two revisions of a daemon task definition and `instances`
/// instances, built unthrottled and then given `throttle`.
struct Account {
    sim: Simulator,
    cluster_arn: String,
    td1: String,
    td2: String,
    instances: Vec<String>,
}

fn account(instances: usize, throttle: &ThrottleConfig, seed: u64) -> Account {
    let config = SimConfig {
        throttle: ThrottleConfig::unlimited(),
        ..SimConfig::default()
    };
    let options = SimOptions {
        config: config.clone(),
        seed,
        receive_wait: Duration::from_millis(200),
        ..SimOptions::default()
    };
    let sim = Simulator::new(Ecs::new(config, seed), Clock::Wall, options);
    let container = |memory: i64| SimContainer {
        name: "agent".into(),
        cpu: 128,
        memory: Some(memory),
        essential: true,
        host_ports: vec![],
        health_check: None,
        fault: None,
    };
    let (cluster_arn, td1, td2, arns) = sim
        .write(|ecs, now| {
            let created = ecs.create_cluster(CLUSTER).map(|c| c.cluster_arn);
            let td1 = ecs
                .register_task_definition("daemon", None, None, vec![container(128)])?
                .arn;
            let td2 = ecs
                .register_task_definition("daemon", None, None, vec![container(160)])?
                .arn;
            let arns: Vec<String> = (0..instances)
                .filter_map(|_| {
                    ecs.register_container_instance(CLUSTER, NewInstance::ec2("m5.large", "us-east-1a"), now)
                        .ok()
                        .map(|i| i.container_instance_arn.clone())
                })
                .collect();
            ecs.set_throttle(throttle.clone());
            created.map(|c| (c, td1, td2, arns))
        })
        .unwrap_or_else(|e| unreachable!("an empty account accepts a cluster and task definitions: {e}"));
    Account {
        sim,
        cluster_arn,
        td1,
        td2,
        instances: arns,
    }
}

fn cluster_name() -> ClusterName {
    ClusterName::new(CLUSTER).unwrap_or_else(|e| unreachable!("a constant cluster name is valid: {e:?}"))
}

fn fresh<'a>(id: &'a str) -> Fresh<'a> {
    Fresh {
        now_ms: blox_server::clock::now_unix_ms(),
        deployment_id: id,
        token: "00000000-0000-4000-8000-000000000000",
    }
}

/// Runs a command on environment `name` as the API does (read, decide, compare-and-swap).
async fn command(
    store: &dyn Store,
    name: &str,
    mut decide: impl FnMut(Option<&environments::Stored>) -> Result<lifecycle::Changes, daemon::CommandError>,
) -> Result<()> {
    environments::cas(store, name, Depth::Documents, |stored| Ok((decide(stored)?, ())))
        .await
        .with_context(|| format!("a command on environment {name}"))?;
    Ok(())
}

/// Creates environment `name` on `task_definition`.
async fn create(
    store: &dyn Store,
    name: &str,
    cluster_arn: &str,
    task_definition: &str,
    method: DeploymentMethod,
    patch: ConfigPatch,
) -> Result<()> {
    let request = CreateEnvironment {
        name: name.into(),
        cluster: cluster_name(),
        cluster_arn: cluster_arn.into(),
        task_definition: TaskDefinitionRef {
            arn: task_definition.into(),
            health_checks: false,
        },
        instance_group: daemon::InstanceSelection::default(),
        method: Some(method),
        configuration: patch,
    };
    command(store, name, |stored| {
        lifecycle::create_environment(stored.map(|s| s.environment()), request.clone(), fresh(""))
    })
    .await
}

/// A new revision of `name`: `task_definition`, `method`, `patch`.
async fn update(
    store: &dyn Store,
    name: &str,
    task_definition: &str,
    method: DeploymentMethod,
    patch: ConfigPatch,
) -> Result<()> {
    let request = UpdateEnvironment {
        task_definition: Some(TaskDefinitionRef {
            arn: task_definition.into(),
            health_checks: false,
        }),
        method: Some(method),
        configuration: patch,
        ..UpdateEnvironment::default()
    };
    command(store, name, |stored| {
        let stored = stored.ok_or_else(|| daemon::CommandError::NotFound {
            resource: lifecycle::Resource::Environment,
            id: "?".into(),
        })?;
        lifecycle::update_environment(&stored.snapshot, request.clone(), fresh(""))
    })
    .await
}

/// Deploys revision `number` of `name` as deployment `id`.
async fn deploy(store: &dyn Store, name: &str, number: u64, id: &str) -> Result<()> {
    command(store, name, |stored| {
        let stored = stored.ok_or_else(|| daemon::CommandError::NotFound {
            resource: lifecycle::Resource::Environment,
            id: "?".into(),
        })?;
        lifecycle::deploy(
            &stored.snapshot,
            DeployTarget::Revision {
                number,
                rollback: false,
            },
            fresh(id),
        )
    })
    .await
}

fn fresh_store(dir: &Path, name: &str) -> Result<Arc<RedbStore>> {
    let path = dir.join(name);
    if path.exists() {
        std::fs::remove_file(&path).with_context(|| format!("removing the old {}", path.display()))?;
    }
    Ok(Arc::new(
        RedbStore::open(&path, StoreOptions::default()).context("opening the store")?,
    ))
}

pub(crate) async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut done: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let until = now() + deadline;
    loop {
        if done().await? {
            return Ok(());
        }
        if now() > until {
            bail!("{what}: not done after {} s", deadline.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn deployment_status(store: &dyn Store, id: &str) -> Result<Option<DeploymentStatus>> {
    let record = store.get(&Key::deployment(cluster_name(), id)).await?;
    Ok(match record {
        Some(record) => Some(documents::parse::<Deployment>(&record.doc)?.status),
        None => None,
    })
}

async fn wait_completed(store: &dyn Store, id: &str, deadline: Duration) -> Result<()> {
    wait_for(&format!("deployment {id} completes"), deadline, || async {
        match deployment_status(store, id).await? {
            Some(DeploymentStatus::Completed) => Ok(true),
            Some(status @ (DeploymentStatus::Failed | DeploymentStatus::Stopped)) => {
                bail!("deployment {id} is {}", status.name())
            }
            _ => Ok(false),
        }
    })
    .await
}

/// Per instance, the live tasks of `group` in the simulator: (instances with a RUNNING task not asked
/// to stop, instances with two live tasks, tasks of `td` RUNNING).
fn census(sim: &Simulator, group: &str, td: &str) -> (usize, usize, usize) {
    sim.read(|ecs| {
        let mut by_instance: HashMap<&str, (bool, usize)> = HashMap::new();
        let mut on_target = 0;
        let tasks = ecs.live_tasks(CLUSTER);
        for task in tasks.iter().filter(|t| t.group.as_deref() == Some(group)) {
            let entry = by_instance
                .entry(task.container_instance_arn.as_deref().unwrap_or_default())
                .or_default();
            entry.1 += 1;
            if task.last_status == "RUNNING" && task.desired_status == "RUNNING" {
                entry.0 = true;
                if task.task_definition_arn == td {
                    on_target += 1;
                }
            }
        }
        let covered = by_instance.values().filter(|(running, _)| *running).count();
        let doubled = by_instance.values().filter(|(_, n)| *n > 1).count();
        (covered, doubled, on_target)
    })
}

/// The simulator ticking and the ingestor consuming its events into `store`, until `shutdown`.
fn spawn_world(sim: &Simulator, store: Arc<RedbStore>, shutdown: &CancellationToken) {
    tokio::spawn({
        let (sim, shutdown) = (sim.clone(), shutdown.clone());
        async move { sim.run(shutdown).await }
    });
    let ingestor = Ingestor::new(store, Arc::new(sim.clone()), IngestOptions::default());
    tokio::spawn(ingestor.run(shutdown.clone()));
}

/// The executor on `store` with `control`, paced at `calls_per_second` per API family.
async fn spawn_scheduler(
    sim: &Simulator,
    store: Arc<RedbStore>,
    control: Arc<dyn EcsControl>,
    calls_per_second: f64,
    shutdown: &CancellationToken,
) -> Result<()> {
    let view = View::spawn(store.clone(), blox_server::clock::wall(), shutdown.clone()).await?;
    let scheduler = Scheduler::new(
        store,
        Arc::new(sim.clone()),
        control,
        view,
        SchedulerOptions {
            calls_per_second,
            ..SchedulerOptions::default()
        },
    );
    tokio::spawn(scheduler.run(shutdown.child_token()));
    Ok(())
}

/// A family's calls per second under `throttle` (ECS's 20 when it is off).
fn rate(throttle: &ThrottleConfig, family: Family) -> f64 {
    throttle.rate(family).map_or(20.0, |r| r.per_second)
}

/// The seconds `calls` take under `family`'s bucket (its burst is free).
fn throttle_floor(throttle: &ThrottleConfig, family: Family, calls: u64) -> f64 {
    throttle.rate(family).map_or(0.0, |r| {
        calls.saturating_sub(u64::from(r.burst)) as f64 / r.per_second
    })
}

async fn new_instances(bench: &mut Bench, dir: &Path, sizes: Sizes) -> Result<()> {
    let throttle = bench.params.sim_throttle.clone();
    let account = account(sizes.base, &throttle, bench.params.seed);
    let (sim, base) = (account.sim.clone(), account.instances.clone());
    let store = fresh_store(dir, "scheduler-join.redb")?;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    spawn_world(&sim, store.clone(), &shutdown);
    wait_for(
        "the store holds the instances",
        Duration::from_secs(60),
        || async { Ok(store.count(Kind::Instance).await? >= base.len() as u64) },
    )
    .await?;

    let recorder = Arc::new(Recorder {
        sim: sim.clone(),
        starts: Mutex::default(),
    });
    spawn_scheduler(
        &sim,
        store.clone(),
        recorder.clone(),
        rate(&throttle, Family::Launch),
        &shutdown,
    )
    .await?;
    create(
        store.as_ref(),
        "join",
        &account.cluster_arn,
        &account.td1,
        DeploymentMethod::TerminateThenReplace,
        ConfigPatch::default(),
    )
    .await?;
    deploy(store.as_ref(), "join", 1, "join-1").await?;
    wait_completed(store.as_ref(), "join-1", Duration::from_secs(120)).await?;

    // The commits that applied each instance's first document, as the change log shows them.
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let observing = CancellationToken::new();
    let observer = tokio::spawn({
        let (store, committed, observing) = (store.clone(), committed.clone(), observing.clone());
        async move {
            let mut heads = store.subscribe();
            let mut position = *heads.borrow_and_update();
            loop {
                tokio::select! {
                    changed = heads.changed() => if changed.is_err() { return Ok(()) },
                    () = observing.cancelled() => return Ok(()),
                }
                let at = now();
                let head = *heads.borrow_and_update();
                while position < head {
                    let changes = store.changes(position, 1_000).await?;
                    let Some(last) = changes.last() else { break };
                    position = last.seq;
                    let mut committed = committed.lock().unwrap_or_else(|p| p.into_inner());
                    for change in changes.iter().filter(|c| c.seq <= head) {
                        if change.doc.key.kind == Kind::Instance && !change.deleted {
                            committed.entry(change.doc.key.id.clone()).or_insert(at);
                        }
                    }
                }
            }
        }
    });

    let mut joined = Vec::with_capacity(sizes.joiners);
    let mut ticker = tokio::time::interval(JOIN_INTERVAL);
    for _ in 0..sizes.joiners {
        ticker.tick().await;
        let arn = sim.write(|ecs, now| {
            ecs.register_container_instance(CLUSTER, NewInstance::ec2("m5.large", "us-east-1b"), now)
                .map(|i| i.container_instance_arn.clone())
        });
        joined.push(arn.map_err(|e| anyhow::anyhow!("registering an instance: {e}"))?);
    }
    wait_for(
        "every joined instance is started",
        Duration::from_secs(60),
        || {
            let starts = recorder.first_starts();
            let all = joined.iter().all(|arn| starts.contains_key(arn));
            async move { Ok(all) }
        },
    )
    .await?;
    observing.cancel();
    let observed: Result<()> = observer.await.context("the change-log observer panicked")?;
    observed?;

    let starts = recorder.first_starts();
    let committed = committed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut latency = histogram();
    for arn in &joined {
        let commit = committed
            .get(arn)
            .with_context(|| format!("no commit of instance {arn} was seen"))?;
        latency.record(micros(starts[arn].saturating_duration_since(*commit)))?;
    }
    shutdown.cancel();

    let w = &format!("scheduler new instance ({} joining)", sizes.joiners);
    bench
        .report
        .add(w, "instances joined", joined.len() as f64, "instances", None);
    bench.report.add(
        w,
        "instance event committed → StartTask p50",
        percentile_ms(&latency, 50.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        "instance event committed → StartTask p99",
        percentile_ms(&latency, 99.0),
        "ms",
        Some(Goal::AtMost(100.0)),
    );
    bench.report.add(
        w,
        "instance event committed → StartTask max",
        percentile_ms(&latency, 100.0),
        "ms",
        None,
    );
    Ok(())
}

/// The first deployment onto N instances, then the two rolling updates of them.
async fn deployments(bench: &mut Bench, dir: &Path, sizes: Sizes) -> Result<()> {
    let throttle = bench.params.sim_throttle.clone();
    let n = sizes.deploy;
    let account = account(n, &throttle, bench.params.seed ^ 0x5ced);
    ensure!(
        account.instances.len() == n,
        "only {} of {n} instances registered",
        account.instances.len()
    );
    let sim = account.sim.clone();
    let store = fresh_store(dir, "scheduler-deploy.redb")?;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    spawn_world(&sim, store.clone(), &shutdown);
    wait_for(
        "the store holds the instances",
        Duration::from_secs(120),
        || async { Ok(store.count(Kind::Instance).await? >= n as u64) },
    )
    .await?;
    let calls_per_second = rate(&throttle, Family::Launch).max(rate(&throttle, Family::Modify));
    spawn_scheduler(
        &sim,
        store.clone(),
        Arc::new(sim.clone()),
        calls_per_second,
        &shutdown,
    )
    .await?;
    let config = sim.read(|ecs| ecs.config().clone());
    let start_delays = (config.provisioning_ms + config.pending_ms) as f64 / 1000.0;
    let stop_delay = config.stopping_ms as f64 / 1000.0;
    let group = daemon::group("roll");

    // 1. The first deployment.
    create(
        store.as_ref(),
        "roll",
        &account.cluster_arn,
        &account.td1,
        DeploymentMethod::TerminateThenReplace,
        ConfigPatch {
            min_healthy_percent: Some(90),
            ..ConfigPatch::default()
        },
    )
    .await?;
    let start_calls = n.div_ceil(START_TASK_BATCH) as u64;
    let floor = throttle_floor(&throttle, Family::Launch, start_calls) + start_delays;
    let (launches_before, _) = sim.read(|ecs| ecs.call_counts(Family::Launch));
    let started = now();
    deploy(store.as_ref(), "roll", 1, "roll-1").await?;
    let deadline = Duration::from_secs_f64(floor * 3.0 + 60.0);
    wait_for("every task is RUNNING", deadline, || {
        let done = census(&sim, &group, &account.td1).2 >= n;
        async move { Ok(done) }
    })
    .await?;
    let all_running = started.elapsed().as_secs_f64();
    wait_completed(store.as_ref(), "roll-1", deadline).await?;
    let completed = started.elapsed().as_secs_f64();
    let (launches, throttled) = sim.read(|ecs| ecs.call_counts(Family::Launch));
    let (covered, _, _) = census(&sim, &group, &account.td1);
    ensure!(covered == n, "{covered} instances run the daemon of {n}");
    let w = &format!("scheduler first deployment ({n} instances)");
    bench.report.add(
        w,
        "StartTask calls answered",
        (launches - launches_before) as f64,
        "calls",
        None,
    );
    bench
        .report
        .add(w, "StartTask calls throttled", throttled as f64, "calls", None);
    bench
        .report
        .add(w, "deployment write → all RUNNING", all_running, "s", None);
    bench
        .report
        .add(w, "deployment write → deployment COMPLETED", completed, "s", None);
    bench
        .report
        .add(w, "StartTask throttle floor + start delays", floor, "s", None);
    bench.report.add(
        w,
        "all RUNNING / floor",
        all_running / floor.max(1e-9),
        "×",
        Some(Goal::AtMost(1.1)),
    );

    // 2. TerminateThenReplace at 90%, then ReplaceThenTerminate at 10%.
    let updates = [
        (
            DeploymentMethod::TerminateThenReplace,
            account.td2.clone(),
            ConfigPatch {
                min_healthy_percent: Some(sizes.min_healthy_percent),
                ..ConfigPatch::default()
            },
            "roll-2",
            2,
        ),
        (
            DeploymentMethod::ReplaceThenTerminate,
            account.td1.clone(),
            ConfigPatch {
                max_over_percent: Some(sizes.max_over_percent),
                ..ConfigPatch::default()
            },
            "roll-3",
            3,
        ),
    ];
    for (method, td, patch, id, revision) in updates {
        update(store.as_ref(), "roll", &td, method, patch.clone()).await?;
        let config = patch.apply(daemon::DeploymentConfiguration::default())?;
        let healthy_floor = config.healthy_floor(n as u64) as usize;
        let surge = config.surge(n as u64) as usize;
        let stop_floor = throttle_floor(&throttle, Family::Modify, n as u64);
        let launch_floor = throttle_floor(&throttle, Family::Launch, start_calls);
        // The slower family sets the pace; one instance's own start, stop (and for surge, both) come
        // on top.
        let floor = stop_floor.max(launch_floor) + start_delays + stop_delay;
        let from = store.log_bounds().await?.head;
        let (stops_before, _) = sim.read(|ecs| ecs.call_counts(Family::Modify));
        let watching = Arc::new(AtomicBool::new(true));
        let seen = Arc::new(Mutex::new((usize::MAX, 0usize)));
        let watcher = std::thread::spawn({
            let (sim, group, watching, seen) = (sim.clone(), group.clone(), watching.clone(), seen.clone());
            move || {
                while watching.load(Ordering::Relaxed) {
                    let (covered, doubled, _) = census(&sim, &group, "");
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    seen.0 = seen.0.min(covered);
                    seen.1 = seen.1.max(doubled);
                    drop(seen);
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        let started = now();
        deploy(store.as_ref(), "roll", revision, id).await?;
        let outcome = wait_completed(store.as_ref(), id, Duration::from_secs_f64(floor * 3.0 + 120.0)).await;
        let took = started.elapsed().as_secs_f64();
        watching.store(false, Ordering::Relaxed);
        watcher
            .join()
            .map_err(|_| anyhow::anyhow!("the fleet watcher panicked"))?;
        outcome?;
        let to = store.log_bounds().await?.head;
        let (stops, _) = sim.read(|ecs| ecs.call_counts(Family::Modify));
        let (lowest, doubled) = *seen.lock().unwrap_or_else(|p| p.into_inner());
        let (covered, _, on_target) = census(&sim, &group, &td);
        ensure!(
            covered == n && on_target == n,
            "{covered} instances covered, {on_target} on the target"
        );
        let (scheduler_bytes, all_bytes) = bytes_written(store.as_ref(), from, to).await?;

        let setting = match method {
            DeploymentMethod::TerminateThenReplace => {
                format!("minHealthyPercent {}", config.min_healthy_percent)
            }
            DeploymentMethod::ReplaceThenTerminate => format!("maxOverPercent {}", config.max_over_percent),
        };
        let w = &format!(
            "scheduler rolling update {} {setting} ({n} instances)",
            method.name()
        );
        bench
            .report
            .add(w, "StopTask calls", (stops - stops_before) as f64, "calls", None);
        bench
            .report
            .add(w, "deployment write → COMPLETED", took, "s", None);
        bench
            .report
            .add(w, "StartTask/StopTask throttle floor + delays", floor, "s", None);
        bench.report.add(
            w,
            "COMPLETED / floor",
            took / floor.max(1e-9),
            "×",
            Some(Goal::AtMost(1.1)),
        );
        bench.report.add(
            w,
            "fewest instances with a healthy daemon",
            lowest as f64,
            "instances",
            Some(Goal::AtLeast(match method {
                DeploymentMethod::TerminateThenReplace => healthy_floor as f64,
                DeploymentMethod::ReplaceThenTerminate => n as f64,
            })),
        );
        bench.report.add(
            w,
            "most instances carrying two tasks",
            doubled as f64,
            "instances",
            Some(Goal::AtMost(match method {
                DeploymentMethod::TerminateThenReplace => 0.0,
                DeploymentMethod::ReplaceThenTerminate => surge as f64,
            })),
        );
        bench.report.add(
            w,
            "scheduler documents written per instance",
            scheduler_bytes as f64 / n as f64,
            "bytes",
            Some(Goal::AtMost(2_048.0)),
        );
        bench.report.add(
            w,
            "all documents written per instance (tasks included)",
            all_bytes as f64 / n as f64,
            "bytes",
            None,
        );
    }
    shutdown.cancel();
    drop(sim);
    super::release(store).await?;
    Ok(())
}

/// Bytes of the documents the change log recorded in `(from, to]`: of scheduler documents, and of all.
/// Bodies as written (JSON, before the store's compression) plus keys.
async fn bytes_written(store: &dyn Store, from: u64, to: u64) -> Result<(u64, u64)> {
    let (mut scheduler, mut all) = (0u64, 0u64);
    let mut position = from;
    while position < to {
        let changes = store.changes(position, 10_000).await?;
        let Some(last) = changes.last() else { break };
        position = last.seq;
        for change in changes.iter().filter(|c| c.seq <= to) {
            let bytes = (change.doc.body.len() + change.doc.key.id.len()) as u64;
            all += bytes;
            if !change.doc.key.kind.is_ecs() {
                scheduler += bytes;
            }
        }
    }
    Ok((scheduler, all))
}

/// A converged cluster: `instances` instances, and per environment one RUNNING task on each.
struct Converged {
    instances: Vec<ContainerInstance>,
    tasks: Vec<Task>,
    /// Per environment: its environment, revision and deployment documents.
    environments: Vec<(Environment, Revision, Deployment)>,
}

fn converged(instances: usize, environments: usize) -> Result<Converged> {
    let cluster_arn = format!("arn:aws:ecs:us-east-1:123456789012:cluster/{CLUSTER}");
    let instance_arns: Vec<String> = (0..instances)
        .map(|i| format!("arn:aws:ecs:us-east-1:123456789012:container-instance/{CLUSTER}/{i:032x}"))
        .collect();
    let instances = instance_arns
        .iter()
        .map(|arn| {
            serde_json::from_value(serde_json::json!({
                "agentConnected": true,
                "clusterARN": cluster_arn,
                "containerInstanceARN": arn,
                "status": "ACTIVE",
                "version": 1,
            }))
        })
        .collect::<Result<Vec<ContainerInstance>, _>>()?;
    let mut tasks = Vec::with_capacity(instance_arns.len() * environments);
    let mut envs = Vec::with_capacity(environments);
    for e in 0..environments {
        let name = format!("env-{e:02}");
        let id = format!("{name}-d1");
        let td = format!("arn:aws:ecs:us-east-1:123456789012:task-definition/{name}:1");
        let environment = Environment {
            name: name.clone(),
            cluster: cluster_name(),
            cluster_arn: cluster_arn.clone(),
            latest_revision: 1,
            active_deployment: Some(id.clone()),
            status: EnvironmentStatus::Active,
            frozen: false,
            created_at: 0,
            updated_at: 0,
        };
        let revision = Revision {
            environment: name.clone(),
            number: 1,
            token: format!("token-{name}"),
            task_definition: td.clone(),
            health_checks: false,
            instance_group: InstanceGroup {
                cluster_arn: cluster_arn.clone(),
                attributes: vec![],
                query: None,
            },
            deployment_method: DeploymentMethod::TerminateThenReplace,
            deployment_configuration: daemon::DeploymentConfiguration::default(),
            created_at: 0,
        };
        let mut deployment = Deployment::new(id.clone(), &revision, 0);
        deployment.transition(DeploymentStatus::Running, "started", 0);
        deployment.transition(DeploymentStatus::Completed, "converged", 0);
        for (i, arn) in instance_arns.iter().enumerate() {
            tasks.push(serde_json::from_value(serde_json::json!({
                "clusterARN": cluster_arn,
                "containerInstanceARN": arn,
                "desiredStatus": "RUNNING",
                "lastStatus": "RUNNING",
                "startedAt": "2026-01-01T00:00:00.000Z",
                "taskARN": format!("arn:aws:ecs:us-east-1:123456789012:task/{CLUSTER}/{e:04x}{i:028x}"),
                "taskDefinitionARN": td,
                "startedBy": id,
                "group": daemon::group(&name),
                "version": 3,
            }))?);
        }
        envs.push((environment, revision, deployment));
    }
    Ok(Converged {
        instances,
        tasks,
        environments: envs,
    })
}

/// Every environment's plan over one cluster view; returns the actions planned (none, when
/// converged).
fn plan_all(world: &Converged, view: &ClusterView) -> usize {
    let mut actions = 0;
    for (environment, revision, deployment) in &world.environments {
        let ids = [deployment.id.as_str()];
        let plan = daemon::plan(&PlanInput {
            environment,
            active: Some(Active { deployment, revision }),
            deployment_ids: &ids,
            health_checked: &[],
            cluster: view,
            intents: &[],
            failures: &[],
            now_ms: blox_server::clock::now_unix_ms(),
        });
        actions += plan.starts.len() + plan.stops.len() + plan.verify.len();
    }
    actions
}

async fn planning(bench: &mut Bench, dir: &Path, sizes: Sizes) -> Result<()> {
    let (instances, environments) = (sizes.plan_instances, sizes.plan_environments);
    let world = Arc::new(converged(instances, environments)?);
    let runs = sizes.plan_runs;
    let timed = {
        let world = world.clone();
        tokio::task::spawn_blocking(move || {
            let view = ClusterView::from_entities(&world.instances, &world.tasks, 0);
            // One untimed run: allocations and caches warm, as in a long-running scheduler.
            let mut actions = plan_all(&world, &view);
            let mut took = histogram();
            for _ in 0..runs {
                let started = now();
                actions += plan_all(&world, &view);
                took.record(micros(started.elapsed()))?;
            }
            anyhow::Ok((took, actions))
        })
        .await
        .context("the planning runs panicked")??
    };
    let (took, actions) = timed;
    ensure!(actions == 0, "a converged cluster planned {actions} actions");

    // The executor's pass over a redb store holding the same, through its in-memory view.
    let store = fresh_store(dir, "scheduler-pass.redb")?;
    let cluster = cluster_name();
    let mut writes: Vec<Write> = world
        .instances
        .iter()
        .map(|i| Write::Upsert(documents::instance(cluster.clone(), i)))
        .collect();
    writes.extend(
        world
            .tasks
            .iter()
            .map(|t| Write::Upsert(documents::task(cluster.clone(), t))),
    );
    for (environment, revision, deployment) in &world.environments {
        for doc in [
            Doc::Environment(environment.clone()),
            Doc::Revision(revision.clone()),
            Doc::Deployment(deployment.clone()),
        ] {
            writes.push(Write::Put {
                doc: documents::scheduler_doc(&cluster, &doc),
                expect: Expect::Absent,
            });
        }
    }
    let mut chunks = writes.into_iter().peekable();
    while chunks.peek().is_some() {
        store.apply(chunks.by_ref().take(10_000).collect()).await?;
    }
    // An account without the cluster: any StartTask or StopTask would fail and show as an error.
    let sim = Simulator::new(
        Ecs::new(
            SimConfig {
                throttle: ThrottleConfig::unlimited(),
                ..SimConfig::default()
            },
            1,
        ),
        Clock::Wall,
        SimOptions::default(),
    );
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let loading = now();
    let view = View::spawn(store.clone(), blox_server::clock::wall(), shutdown.clone()).await?;
    let loaded = loading.elapsed().as_secs_f64();
    let scheduler = Scheduler::new(
        store.clone(),
        Arc::new(sim.clone()),
        Arc::new(sim),
        view,
        SchedulerOptions {
            calls_per_second: 0.0,
            ..SchedulerOptions::default()
        },
    );
    let first = scheduler.pass().await;
    ensure!(
        first.errors == 0 && first.started == 0 && first.stopped == 0,
        "the pass over a converged store acted: {first:?}"
    );
    let mut passes = histogram();
    for _ in 0..sizes.pass_runs {
        let started = now();
        let report = scheduler.pass().await;
        passes.record(micros(started.elapsed()))?;
        ensure!(
            report.errors == 0 && report.started == 0 && report.stopped == 0 && report.transitions == 0,
            "the pass over a converged store acted: {report:?}"
        );
    }
    drop(scheduler);
    shutdown.cancel();
    super::release(store).await?;

    let w = &format!("scheduler planning ({instances} instances × {environments} environments)");
    bench
        .report
        .add(w, "tasks in view", world.tasks.len() as f64, "tasks", None);
    bench.report.add(
        w,
        "plan() of every environment p50",
        percentile_ms(&took, 50.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        "plan() of every environment p99",
        percentile_ms(&took, 99.0),
        "ms",
        None,
    );
    bench
        .report
        .add(w, "view loaded from the redb store", loaded, "s", None);
    bench.report.add(
        w,
        "Scheduler::pass (view and store included) p50",
        percentile_ms(&passes, 50.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        "Scheduler::pass (view and store included) p99",
        percentile_ms(&passes, 99.0),
        "ms",
        Some(Goal::AtMost(50.0)),
    );
    Ok(())
}

/// The deployment plans' clock: a day after the converged tasks started, so that every one of them
/// is long healthy whatever the machine's clock says.
const PREVIEW_NOW_MS: u64 = 1_767_312_000_000; // 2026-01-02T00:00:00Z

/// `daemon::preview` of revision 2 (another task definition) of an environment whose revision 1 runs,
/// healthy, on every instance: what `POST …/deployments?revisionId=2&dryRun=true` computes.
async fn deployment_plans(bench: &mut Bench, sizes: Sizes) -> Result<()> {
    let n = sizes.preview_instances;
    let world = converged(n, 1)?;
    let (environment, current, deployment) = world
        .environments
        .first()
        .cloned()
        .context("a converged world of one environment has none")?;
    let view = Arc::new(ClusterView::from_entities(&world.instances, &world.tasks, 0));
    let environment = Arc::new(Environment {
        latest_revision: 2,
        ..environment
    });
    let methods = [
        (
            DeploymentMethod::TerminateThenReplace,
            ConfigPatch {
                min_healthy_percent: Some(90),
                ..ConfigPatch::default()
            },
        ),
        (
            DeploymentMethod::ReplaceThenTerminate,
            ConfigPatch {
                max_over_percent: Some(10),
                ..ConfigPatch::default()
            },
        ),
    ];
    for (method, patch) in methods {
        let config = patch.apply(daemon::DeploymentConfiguration::default())?;
        let setting = match method {
            DeploymentMethod::TerminateThenReplace => {
                format!("minHealthyPercent {}", config.min_healthy_percent)
            }
            DeploymentMethod::ReplaceThenTerminate => format!("maxOverPercent {}", config.max_over_percent),
        };
        let family = current
            .task_definition
            .rsplit_once(':')
            .map_or(current.task_definition.as_str(), |(family, _)| family);
        let revision = Revision {
            number: 2,
            token: format!("{}-2", current.token),
            task_definition: format!("{family}:2"),
            deployment_method: method,
            deployment_configuration: config,
            ..current.clone()
        };
        let (view, environment, id) = (view.clone(), environment.clone(), deployment.id.clone());
        let runs = sizes.preview_runs;
        let (took, preview) = tokio::task::spawn_blocking(move || {
            let ids = [id.as_str()];
            let input = daemon::PreviewInput {
                environment: &environment,
                revision: &revision,
                deployment_ids: &ids,
                health_checked: &[],
                cluster: &view,
                rollback: false,
                now_ms: PREVIEW_NOW_MS,
                // The estimate `blox server` gives by default.
                calls_per_second: SchedulerOptions::default().calls_per_second,
            };
            // One untimed run, which is also the one checked.
            let preview = daemon::preview(&input);
            let mut took = histogram();
            for _ in 0..runs {
                let started = now();
                std::hint::black_box(daemon::preview(std::hint::black_box(&input)));
                took.record(micros(started.elapsed()))?;
            }
            anyhow::Ok((took, preview))
        })
        .await
        .context("the deployment plan runs panicked")??;
        ensure!(
            preview.complete,
            "the {} plan of {n} instances is not complete: {:?}",
            method.name(),
            preview.stalled
        );
        let replaced = preview
            .instances
            .iter()
            .filter(|(_, action, _)| *action == daemon::Action::Replace)
            .count();
        ensure!(
            replaced == n && preview.instances.len() == n,
            "the {} plan replaces {replaced} of {} instances, {n} expected",
            method.name(),
            preview.instances.len()
        );
        let w = &format!("deployment plan {} {setting} ({n} instances)", method.name());
        bench.report.add(
            w,
            "daemon::preview (dry run) p50",
            percentile_ms(&took, 50.0),
            "ms",
            None,
        );
        bench.report.add(
            w,
            "daemon::preview (dry run) p99",
            percentile_ms(&took, 99.0),
            "ms",
            Some(Goal::AtMost(50.0)),
        );
        bench
            .report
            .add(w, "instances replaced", replaced as f64, "instances", None);
        bench.report.add(
            w,
            "batches planned",
            preview.batches.len() as f64,
            "batches",
            None,
        );
        bench.report.add(
            w,
            "estimated rollout time (estimated_seconds)",
            preview.estimated_seconds,
            "s",
            None,
        );
    }
    Ok(())
}
