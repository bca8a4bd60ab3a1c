//! The daemon scheduler's scenarios: the real `Scheduler` (the simulator as its ECS) and the real
//! `Ingestor` (the simulator as its event source) on one redb store, and the pure planner.
//!
//! 1. **new instance**: an environment deployed and completed on a cluster, then instances
//!    registering one at a time; for each, the time from the commit that applied its instance event
//!    (seen on the store's change log) to the simulator receiving the StartTask naming it (a thin
//!    recorder around the simulator's `EcsControl`);
//! 2. **first deployment**: a deployment onto N instances under the simulator's launch throttle
//!    (ECS-like: burst 20, 20 calls/s), the scheduler paced at the launch rate; the time from the
//!    deployment's write to every task RUNNING in the simulator, against the floor the throttle and
//!    the simulator's PROVISIONING + PENDING delays set;
//! 3. **planning**: `ClusterView::new` and `plan()` of E environments over I instances with their
//!    tasks (one daemon per instance per environment, as after convergence), repeated; and
//!    `Scheduler::pass` over a redb store holding the same.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use async_trait::async_trait;
use blox_aws::{
    ClusterDescription, EcsControl, EcsError, Failure, START_TASK_BATCH, StartTask, Started,
    TaskDefinitionDescription,
};
use blox_model::daemon::{
    self, ClusterView, Counts, Deployment, DeploymentConfiguration, DeploymentStatus, Environment,
    EnvironmentStatus, Health, InstanceGroup, InstanceView, PlanInput, Revision, Target, TaskView,
};
use blox_model::{ClusterName, ContainerInstance, Task};
use blox_server::{IngestOptions, Ingestor, Scheduler, SchedulerOptions, documents};
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
/// How often the first deployment's progress is sampled in the simulator.
const POLL: Duration = Duration::from_millis(10);

/// The sizes of the scheduler scenarios.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Instances running the environment before the joiners come.
    base: usize,
    joiners: usize,
    deploy: usize,
    plan_instances: usize,
    plan_environments: usize,
    plan_runs: usize,
    pass_runs: usize,
}

impl Sizes {
    fn of(quick: bool) -> Sizes {
        if quick {
            Sizes {
                base: 10,
                joiners: 20,
                deploy: 200,
                plan_instances: 500,
                plan_environments: 20,
                plan_runs: 10,
                pass_runs: 3,
            }
        } else {
            Sizes {
                base: 100,
                joiners: 200,
                deploy: 5_000,
                plan_instances: 10_000,
                plan_environments: 20,
                plan_runs: 50,
                pass_runs: 10,
            }
        }
    }
}

pub(crate) async fn run(bench: &mut Bench, dir: &Path, quick: bool) -> Result<()> {
    let sizes = Sizes::of(quick);
    eprintln!(
        "daemon scheduler: {} instances joining one every {} ms onto {}; first deployment onto {}; planning {} instances × {} environments",
        sizes.joiners,
        JOIN_INTERVAL.as_millis(),
        sizes.base,
        sizes.deploy,
        sizes.plan_instances,
        sizes.plan_environments
    );
    new_instances(bench, dir, sizes).await?;
    first_deployment(bench, dir, sizes).await?;
    planning(bench, dir, sizes).await
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

/// A simulated account with one cluster, one daemon task definition and `instances` instances,
/// built unthrottled and then given `throttle`.
struct Account {
    sim: Simulator,
    cluster_arn: String,
    task_definition: String,
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
    let (cluster_arn, td, arns) = sim
        .write(|ecs, now| {
            let created = ecs.create_cluster(CLUSTER).map(|c| c.cluster_arn);
            let td = ecs
                .register_task_definition(
                    "daemon",
                    None,
                    None,
                    vec![SimContainer {
                        name: "agent".into(),
                        cpu: 128,
                        memory: Some(128),
                        essential: true,
                        host_ports: vec![],
                        health_check: None,
                        fault: None,
                    }],
                )
                .map(|t| t.arn.clone());
            let arns: Vec<String> = (0..instances)
                .filter_map(|_| {
                    ecs.register_container_instance(CLUSTER, NewInstance::ec2("m5.large", "us-east-1a"), now)
                        .ok()
                        .map(|i| i.container_instance_arn.clone())
                })
                .collect();
            ecs.set_throttle(throttle.clone());
            created.and_then(|c| td.map(|td| (c, td, arns)))
        })
        .unwrap_or_else(|e| unreachable!("an empty account accepts a cluster and a task definition: {e}"));
    Account {
        sim,
        cluster_arn,
        task_definition: td,
        instances: arns,
    }
}

fn cluster_name() -> ClusterName {
    ClusterName::new(CLUSTER).unwrap_or_else(|e| unreachable!("a constant cluster name is valid: {e:?}"))
}

/// The documents of an environment deploying `task_definition` on the cluster: its revision 1, the
/// deployment, and the environment with that deployment active (what the API writes).
fn environment_writes(
    name: &str,
    cluster_arn: &str,
    task_definition: &str,
    deployment_id: &str,
    status: DeploymentStatus,
    counts: Counts,
) -> Vec<Write> {
    let cluster = cluster_name();
    let revision = Revision {
        environment: name.into(),
        number: 1,
        token: format!("token-{name}"),
        task_definition: task_definition.into(),
        instance_group: InstanceGroup {
            cluster_arn: cluster_arn.into(),
            attributes: vec![],
        },
        deployment: DeploymentConfiguration::default(),
        created_at: 0,
    };
    let deployment = Deployment {
        id: deployment_id.into(),
        environment: name.into(),
        revision: 1,
        task_definition: task_definition.into(),
        status,
        created_at: 0,
        started_at: None,
        ended_at: None,
        failed_instances: vec![],
        counts,
        intents: vec![],
    };
    let environment = Environment {
        name: name.into(),
        cluster: cluster.clone(),
        cluster_arn: cluster_arn.into(),
        latest_revision: 1,
        active_deployment: Some(deployment_id.into()),
        status: EnvironmentStatus::Active,
        health: Health::Healthy,
        health_reason: None,
        created_at: 0,
        updated_at: 0,
    };
    vec![
        Write::Put {
            doc: documents::revision(cluster.clone(), &revision),
            expect: Expect::Absent,
        },
        Write::Put {
            doc: documents::deployment(cluster, &deployment),
            expect: Expect::Absent,
        },
        Write::Put {
            doc: documents::environment(&environment),
            expect: Expect::Absent,
        },
    ]
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

async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut done: F) -> Result<()>
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

/// Instances of `group` running in the simulator.
fn running(sim: &Simulator, group: &str) -> usize {
    sim.read(|ecs| {
        ecs.live_tasks(CLUSTER)
            .iter()
            .filter(|t| t.group.as_deref() == Some(group) && t.last_status == "RUNNING")
            .count()
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

fn scheduler_options(calls_per_second: f64) -> SchedulerOptions {
    SchedulerOptions {
        calls_per_second,
        ..SchedulerOptions::default()
    }
}

/// The launch family's calls per second under `throttle` (ECS's 20 when it is off).
fn launch_rate(throttle: &ThrottleConfig) -> f64 {
    throttle.rate(Family::Launch).map_or(20.0, |r| r.per_second)
}

async fn new_instances(bench: &mut Bench, dir: &Path, sizes: Sizes) -> Result<()> {
    let throttle = bench.params.sim_throttle.clone();
    let Account {
        sim,
        cluster_arn,
        task_definition: td,
        instances: base,
    } = account(sizes.base, &throttle, bench.params.seed);
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
    let scheduler = Scheduler::new(
        store.clone(),
        Arc::new(sim.clone()),
        recorder.clone(),
        scheduler_options(launch_rate(&throttle)),
    );
    tokio::spawn(scheduler.run(shutdown.child_token()));
    store
        .apply(environment_writes(
            "join",
            &cluster_arn,
            &td,
            "join-1",
            DeploymentStatus::Pending,
            Counts::default(),
        ))
        .await?;
    wait_for(
        "the base deployment completes",
        Duration::from_secs(120),
        || async {
            Ok(deployment_status(store.as_ref(), "join-1").await? == Some(DeploymentStatus::Completed))
        },
    )
    .await?;

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
        let start = starts[arn];
        latency.record(micros(start.saturating_duration_since(*commit)))?;
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

async fn first_deployment(bench: &mut Bench, dir: &Path, sizes: Sizes) -> Result<()> {
    let throttle = bench.params.sim_throttle.clone();
    let n = sizes.deploy;
    let Account {
        sim,
        cluster_arn,
        task_definition: td,
        instances: arns,
    } = account(n, &throttle, bench.params.seed ^ 0x5ced);
    ensure!(arns.len() == n, "only {} of {n} instances registered", arns.len());
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
    let rate = launch_rate(&throttle);
    let scheduler = Scheduler::new(
        store.clone(),
        Arc::new(sim.clone()),
        Arc::new(sim.clone()),
        scheduler_options(rate),
    );
    tokio::spawn(scheduler.run(shutdown.child_token()));
    // The scheduler's first pass (nothing to do) is over before the deployment is written.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let config = sim.read(|ecs| ecs.config().clone());
    let calls = n.div_ceil(START_TASK_BATCH) as u64;
    let lifecycle = (config.provisioning_ms + config.pending_ms) as f64 / 1000.0;
    let floor = throttle.rate(Family::Launch).map_or(0.0, |r| {
        calls.saturating_sub(u64::from(r.burst)) as f64 / r.per_second
    }) + lifecycle;

    let group = daemon::group("first");
    let started = now();
    store
        .apply(environment_writes(
            "first",
            &cluster_arn,
            &td,
            "first-1",
            DeploymentStatus::Pending,
            Counts::default(),
        ))
        .await?;
    let deadline = Duration::from_secs_f64(floor * 3.0 + 60.0);
    wait_for("every task is RUNNING", deadline, || {
        let done = running(&sim, &group) >= n;
        async move { Ok(done) }
    })
    .await?;
    let all_running = started.elapsed().as_secs_f64();
    wait_for("the deployment completes", deadline, || async {
        Ok(deployment_status(store.as_ref(), "first-1").await? == Some(DeploymentStatus::Completed))
    })
    .await?;
    let completed = started.elapsed().as_secs_f64();
    let (launches, throttled) = sim.read(|ecs| ecs.call_counts(Family::Launch));
    let live = sim.read(|ecs| {
        ecs.live_tasks(CLUSTER)
            .iter()
            .filter(|t| t.group.as_deref() == Some(group.as_str()))
            .count()
    });
    shutdown.cancel();
    ensure!(live == n, "{live} tasks of the environment for {n} instances");

    let w = &format!("scheduler first deployment ({n} instances)");
    bench
        .report
        .add(w, "StartTask calls answered", launches as f64, "calls", None);
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
    Ok(())
}

/// A converged cluster: `instances` instances, and per environment one RUNNING task on each.
struct Converged {
    instances: Vec<ContainerInstance>,
    tasks: Vec<Task>,
    /// Per environment: its name, revision and deployment.
    environments: Vec<(String, Revision, Deployment)>,
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
        let revision = Revision {
            environment: name.clone(),
            number: 1,
            token: format!("token-{name}"),
            task_definition: td.clone(),
            instance_group: InstanceGroup {
                cluster_arn: cluster_arn.clone(),
                attributes: vec![],
            },
            deployment: DeploymentConfiguration::default(),
            created_at: 0,
        };
        let deployment = Deployment {
            id: id.clone(),
            environment: name.clone(),
            revision: 1,
            task_definition: td.clone(),
            status: DeploymentStatus::Completed,
            created_at: 0,
            started_at: Some(0),
            ended_at: Some(0),
            failed_instances: vec![],
            counts: Counts {
                desired: instances.len() as u64,
                running: instances.len() as u64,
                pending: 0,
                failed: 0,
            },
            intents: vec![],
        };
        for (i, arn) in instance_arns.iter().enumerate() {
            tasks.push(serde_json::from_value(serde_json::json!({
                "clusterARN": cluster_arn,
                "containerInstanceARN": arn,
                "desiredStatus": "RUNNING",
                "lastStatus": "RUNNING",
                "taskARN": format!("arn:aws:ecs:us-east-1:123456789012:task/{CLUSTER}/{e:04x}{i:028x}"),
                "taskDefinitionARN": td,
                "startedBy": id,
                "group": daemon::group(&name),
                "version": 3,
            }))?);
        }
        envs.push((name, revision, deployment));
    }
    Ok(Converged {
        instances,
        tasks,
        environments: envs,
    })
}

/// One full pass of planning: the cluster's view, then every environment's plan; returns the
/// starts and stops planned (none, when converged).
fn plan_all(world: &Converged) -> usize {
    let view = ClusterView::new(
        world.instances.iter().map(InstanceView::from),
        world.tasks.iter().map(TaskView::from),
    );
    let mut actions = 0;
    for (name, revision, deployment) in &world.environments {
        let ids = [deployment.id.clone()];
        let input = PlanInput {
            environment: name,
            status: EnvironmentStatus::Active,
            target: Target::new(revision, deployment),
            deployment_ids: &ids,
            cluster: &view,
            intents: &[],
            failed: &[],
            intent_ttl_ms: daemon::DEFAULT_INTENT_TTL_MS,
        };
        let plan = daemon::plan(&input, 1);
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
            // One untimed run: allocations and caches warm, as in a long-running scheduler.
            let mut actions = plan_all(&world);
            let mut took = histogram();
            for _ in 0..runs {
                let started = now();
                actions += plan_all(&world);
                took.record(micros(started.elapsed()))?;
            }
            anyhow::Ok((took, actions))
        })
        .await
        .context("the planning runs panicked")??
    };
    let (took, actions) = timed;
    ensure!(actions == 0, "a converged cluster planned {actions} actions");

    // The executor's pass over a store holding the same: every environment, revision, deployment,
    // instance and task document, on redb.
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
    let mut chunks = writes.into_iter().peekable();
    while chunks.peek().is_some() {
        store.apply(chunks.by_ref().take(10_000).collect()).await?;
    }
    for (name, revision, deployment) in &world.environments {
        store
            .apply(environment_writes(
                name,
                &revision.instance_group.cluster_arn,
                &revision.task_definition,
                &deployment.id,
                deployment.status,
                deployment.counts,
            ))
            .await?;
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
    let scheduler = Scheduler::new(
        store.clone(),
        Arc::new(sim.clone()),
        Arc::new(sim),
        scheduler_options(0.0),
    );
    // The first pass may write what it observes (health, counts); the timed ones find nothing to do.
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
            report.errors == 0 && report.started == 0 && report.stopped == 0,
            "the pass over a converged store acted: {report:?}"
        );
    }
    drop(scheduler);
    super::release(store).await?;

    let w = &format!("scheduler planning ({instances} instances × {environments} environments)");
    bench
        .report
        .add(w, "tasks in view", world.tasks.len() as f64, "tasks", None);
    bench.report.add(
        w,
        "full-pass planning (ClusterView + plan) p50",
        percentile_ms(&took, 50.0),
        "ms",
        Some(Goal::AtMost(50.0)),
    );
    bench.report.add(
        w,
        "full-pass planning (ClusterView + plan) p99",
        percentile_ms(&took, 99.0),
        "ms",
        Some(Goal::AtMost(50.0)),
    );
    bench.report.add(
        w,
        "Scheduler::pass over the redb store p50",
        percentile_ms(&passes, 50.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        "Scheduler::pass over the redb store max",
        percentile_ms(&passes, 100.0),
        "ms",
        None,
    );
    Ok(())
}
