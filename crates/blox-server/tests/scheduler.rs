//! The daemon scheduler's executor against the simulator: the real ingestion (fed by the simulator's
//! events), the real reconciler, the in-memory view, a MemStore, and environment documents written by
//! the same commands the APIs run.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use blox_aws::{
    ClusterDescription, EcsControl, EcsError, EcsErrorKind, Failure, StartTask, Started,
    TaskDefinitionDescription,
};
use blox_model::daemon::lifecycle::{
    self, CreateEnvironment, DeployTarget, Fresh, TaskDefinitionRef, UpdateEnvironment,
};
use blox_model::daemon::{
    CanaryPatch, ConfigPatch, Deployment, DeploymentMethod, DeploymentStatus, Doc, Environment,
    InstanceFailure, InstanceSelection, StartIntent,
};
use blox_model::{ClusterName, Task};
use blox_server::environments::{self, Depth};
use blox_server::{
    IngestOptions, Ingestor, ReadinessState, ReconcileOptions, Reconciler, Scheduler, SchedulerOptions, View,
    documents,
};
use blox_sim::{Family, NewInstance, Rate, SimContainer, Simulator, ThrottleConfig};
use blox_store::{Expect, Key, Kind, MemStore, Store, StoreOptions, Write};
use blox_testkit::wait_until;
use common::{container, simulator};
use tokio_util::sync::CancellationToken;

const CLUSTER: &str = "prod";
const ENV: &str = "web";
const GROUP: &str = "blox:web";
const DEADLINE: Duration = Duration::from_secs(30);

struct World {
    sim: Simulator,
    store: Arc<dyn Store>,
    view: Arc<View>,
    shutdown: CancellationToken,
    cluster: ClusterName,
    cluster_arn: String,
    td1: String,
    td2: String,
    /// Needs more memory than any instance has.
    big: String,
    instances: Vec<String>,
    ids: AtomicUsize,
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn world(instances: usize) -> World {
    world_with(instances, ThrottleConfig::unlimited(), |_| {}).await
}

async fn world_with(instances: usize, throttle: ThrottleConfig, extra: impl FnOnce(&Simulator)) -> World {
    let sim = simulator(throttle);
    let (cluster_arn, td1, td2, big, arns) = sim.write(|ecs, now| {
        let cluster = ecs.create_cluster(CLUSTER).expect("cluster").cluster_arn;
        let td1 = ecs
            .register_task_definition("daemon", None, None, container(128))
            .expect("td")
            .arn;
        let td2 = ecs
            .register_task_definition("daemon", None, None, container(256))
            .expect("td")
            .arn;
        let big = ecs
            .register_task_definition("huge", None, None, container(100_000))
            .expect("td")
            .arn;
        let arns: Vec<String> = (0..instances)
            .map(|_| {
                ecs.register_container_instance(CLUSTER, NewInstance::ec2("m5.large", "us-east-1a"), now)
                    .expect("instance")
                    .container_instance_arn
                    .clone()
            })
            .collect();
        (cluster, td1, td2, big, arns)
    });
    extra(&sim);
    let store: Arc<dyn Store> = Arc::new(MemStore::new(StoreOptions::default()));
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let (sim, shutdown) = (sim.clone(), shutdown.clone());
        async move { sim.run(shutdown).await }
    });
    let ingestor = Ingestor::new(store.clone(), Arc::new(sim.clone()), IngestOptions::default());
    tokio::spawn(ingestor.run(shutdown.clone()));
    let reconciler = Reconciler::new(
        store.clone(),
        Arc::new(sim.clone()),
        ReconcileOptions::default(),
        Arc::new(ReadinessState::default()),
    );
    reconciler.pass().await;
    let view = View::spawn(store.clone(), blox_server::clock::wall(), shutdown.clone())
        .await
        .expect("view");
    World {
        sim,
        store,
        view,
        shutdown,
        cluster: ClusterName::new(CLUSTER).expect("name"),
        cluster_arn,
        td1,
        td2,
        big,
        instances: arns,
        ids: AtomicUsize::new(0),
    }
}

fn options() -> SchedulerOptions {
    SchedulerOptions {
        calls_per_second: 100.0,
        verify_after: Duration::from_millis(300),
        ..SchedulerOptions::default()
    }
}

/// Fast back-off, so that failures add up quickly.
fn fast(config: &mut blox_model::daemon::DeploymentConfiguration) {
    config.start_backoff_initial_ms = 200;
    config.start_backoff_max_ms = 400;
}

impl World {
    fn engine(&self, options: SchedulerOptions) -> CancellationToken {
        self.engine_with(options, Arc::new(self.sim.clone()))
    }

    fn engine_with(&self, options: SchedulerOptions, control: Arc<dyn EcsControl>) -> CancellationToken {
        let stop = self.shutdown.child_token();
        tokio::spawn(self.scheduler_with(options, control).run(stop.clone()));
        stop
    }

    fn scheduler(&self) -> Scheduler {
        self.scheduler_with(options(), Arc::new(self.sim.clone()))
    }

    fn scheduler_with(&self, options: SchedulerOptions, control: Arc<dyn EcsControl>) -> Scheduler {
        Scheduler::new(
            self.store.clone(),
            Arc::new(self.sim.clone()),
            control,
            self.view.clone(),
            options,
        )
    }

    fn fresh_id(&self) -> String {
        format!("d{}", self.ids.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Runs a command the way the API does: read, decide, write by compare-and-swap.
    async fn command(
        &self,
        decide: impl FnMut(
            Option<&environments::Stored>,
        ) -> Result<lifecycle::Changes, blox_model::daemon::CommandError>,
    ) {
        let mut decide = decide;
        environments::cas(self.store.as_ref(), ENV, Depth::Everything, |stored| {
            Ok((decide(stored)?, ()))
        })
        .await
        .expect("command");
    }

    /// Creates the environment on `task_definition`, with `tune` applied to its first revision.
    async fn create(
        &self,
        task_definition: &str,
        method: DeploymentMethod,
        patch: ConfigPatch,
        tune: impl Fn(&mut blox_model::daemon::DeploymentConfiguration),
    ) {
        let request = CreateEnvironment {
            name: ENV.into(),
            cluster: self.cluster.clone(),
            cluster_arn: self.cluster_arn.clone(),
            task_definition: TaskDefinitionRef {
                arn: task_definition.into(),
                health_checks: false,
            },
            instance_group: InstanceSelection::default(),
            method: Some(method),
            configuration: patch,
        };
        self.command(|stored| {
            let mut changes = lifecycle::create_environment(
                stored.map(|s| s.environment()),
                request.clone(),
                self.fresh(""),
            )?;
            for doc in &mut changes.put {
                if let Doc::Revision(r) = doc {
                    tune(&mut r.deployment_configuration);
                }
            }
            Ok(changes)
        })
        .await;
    }

    fn fresh<'a>(&self, id: &'a str) -> Fresh<'a> {
        Fresh {
            now_ms: self.sim.now_ms(),
            deployment_id: id,
            token: "00000000-0000-4000-8000-000000000000",
        }
    }

    /// A new revision on `task_definition` (same configuration).
    async fn update(&self, task_definition: &str) {
        let update = UpdateEnvironment {
            task_definition: Some(TaskDefinitionRef {
                arn: task_definition.into(),
                health_checks: false,
            }),
            ..UpdateEnvironment::default()
        };
        self.command(|stored| {
            lifecycle::update_environment(&stored.expect("env").snapshot, update.clone(), self.fresh(""))
        })
        .await;
    }

    /// Deploys revision `number`; returns the deployment's id.
    async fn deploy(&self, number: u64) -> String {
        let id = self.fresh_id();
        self.command(|stored| {
            lifecycle::deploy(
                &stored.expect("env").snapshot,
                DeployTarget::Revision {
                    number,
                    rollback: false,
                },
                self.fresh(&id),
            )
        })
        .await;
        id
    }

    /// Creates the environment on `td1` (default configuration) and deploys it.
    async fn deploy_first(&self) -> String {
        self.create(
            &self.td1.clone(),
            DeploymentMethod::TerminateThenReplace,
            ConfigPatch::default(),
            |_| {},
        )
        .await;
        self.deploy(1).await
    }

    async fn environment(&self) -> Option<Environment> {
        let record = self
            .store
            .get(&Key::environment(self.cluster.clone(), ENV))
            .await
            .expect("get")?;
        Some(documents::parse(&record.doc).expect("environment"))
    }

    async fn deployment(&self, id: &str) -> Option<Deployment> {
        let record = self
            .store
            .get(&Key::deployment(self.cluster.clone(), id))
            .await
            .expect("get")?;
        Some(documents::parse(&record.doc).expect("deployment"))
    }

    async fn records<T: serde::de::DeserializeOwned>(&self, kind: Kind) -> Vec<T> {
        environments::list_all(self.store.as_ref(), kind, &blox_store::Filter::default())
            .await
            .expect("list")
            .iter()
            .map(|r| documents::parse(&r.doc).expect("record"))
            .collect()
    }

    async fn wait_status(&self, id: &str, status: DeploymentStatus) {
        wait_until(&format!("deployment {id} is {status:?}"), DEADLINE, || async {
            self.deployment(id).await.is_some_and(|d| d.status == status)
        })
        .await;
    }

    /// The environment's tasks in ECS that are not STOPPED, by instance.
    fn live(&self) -> BTreeMap<String, Vec<Task>> {
        live(&self.sim)
    }

    /// Every instance has exactly one live task of the environment, RUNNING, of `td`.
    fn converged(&self, instances: &[String], td: &str) -> bool {
        let live = self.live();
        live.len() == instances.len()
            && instances.iter().all(|i| {
                live.get(i).is_some_and(|tasks| {
                    tasks.len() == 1
                        && tasks[0].last_status == "RUNNING"
                        && tasks[0].task_definition_arn == td
                })
            })
    }

    fn assert_at_most_one_per_instance(&self) {
        for (instance, tasks) in self.live() {
            assert!(
                tasks.len() <= 1,
                "two tasks of the environment on {instance}: {tasks:#?}"
            );
        }
    }

    /// Tasks of the environment ECS has ever started (stopped ones are kept describable).
    fn ever_started(&self) -> usize {
        self.sim.read(|ecs| {
            ecs.listed().get(CLUSTER).map_or(0, |l| {
                l.tasks
                    .iter()
                    .filter(|t| t.group.as_deref() == Some(GROUP))
                    .count()
            })
        })
    }

    fn start_calls(&self) -> u64 {
        self.sim.read(|ecs| ecs.call_counts(Family::Launch).0)
    }

    /// Watches the fleet until dropped: the fewest instances seen with a RUNNING daemon (not asked
    /// to stop), and the most instances seen with two live tasks of the environment.
    fn watch(&self) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((usize::MAX, 0usize)));
        let (sim, flag, record) = (self.sim.clone(), stop.clone(), seen.clone());
        std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let live = live(&sim);
                let covered = live
                    .values()
                    .filter(|tasks| {
                        tasks
                            .iter()
                            .any(|t| t.last_status == "RUNNING" && t.desired_status == "RUNNING")
                    })
                    .count();
                let doubled = live.values().filter(|tasks| tasks.len() > 1).count();
                let mut seen = record.lock().unwrap();
                seen.0 = seen.0.min(covered);
                seen.1 = seen.1.max(doubled);
                drop(seen);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Watch { stop, seen }
    }
}

struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(usize, usize)>>,
}

impl Watch {
    /// (fewest instances covered, most instances with two tasks) so far.
    fn seen(&self) -> (usize, usize) {
        *self.seen.lock().unwrap()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn live(sim: &Simulator) -> BTreeMap<String, Vec<Task>> {
    let mut out: BTreeMap<String, Vec<Task>> = BTreeMap::new();
    for task in sim.read(|ecs| ecs.live_tasks(CLUSTER)) {
        if task.group.as_deref() == Some(GROUP) {
            let instance = task.container_instance_arn.clone().unwrap_or_default();
            out.entry(instance).or_default().push((*task).clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_starts_one_task_per_instance_and_completes() {
    let world = world(3).await;
    let _engine = world.engine(options());
    let id = world.deploy_first().await;
    world.wait_status(&id, DeploymentStatus::Completed).await;
    assert!(world.converged(&world.instances, &world.td1));
    for tasks in world.live().values() {
        assert_eq!(tasks[0].started_by.as_deref(), Some(id.as_str()));
        assert_eq!(tasks[0].group.as_deref(), Some(GROUP));
    }
    let deployment = world.deployment(&id).await.expect("deployment");
    assert_eq!((deployment.counts.desired, deployment.counts.healthy), (3, 3));
    let statuses: Vec<DeploymentStatus> = deployment.history.iter().map(|t| t.status).collect();
    assert_eq!(
        statuses,
        [
            DeploymentStatus::Pending,
            DeploymentStatus::Running,
            DeploymentStatus::Completed
        ]
    );
    assert!(world.records::<StartIntent>(Kind::Intent).await.is_empty());
    assert!(deployment.started_at.is_some() && deployment.ended_at.is_some());
    // Exactly one StartTask per instance was ever needed (three instances fit in one call).
    assert_eq!(world.start_calls(), 1);

    // A new instance gets its daemon within about a second of its event.
    let joined = world.sim.write(|ecs, now| {
        ecs.register_container_instance(CLUSTER, NewInstance::ec2("m5.large", "us-east-1b"), now)
            .expect("instance")
            .container_instance_arn
            .clone()
    });
    wait_until(
        "the new instance has a task",
        Duration::from_millis(1_500),
        || async { world.live().contains_key(&joined) },
    )
    .await;
    let mut all = world.instances.clone();
    all.push(joined);
    wait_until("four daemons run", DEADLINE, || async {
        world.assert_at_most_one_per_instance();
        world.converged(&all, &world.td1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_task_is_restarted() {
    let world = world(2).await;
    let _engine = world.engine(options());
    let id = world.deploy_first().await;
    world.wait_status(&id, DeploymentStatus::Completed).await;
    let victim = world.live()[&world.instances[0]][0].task_arn.clone();
    world
        .sim
        .write(|ecs, now| ecs.crash_task(CLUSTER, &victim, 137, now))
        .expect("crash");
    wait_until("the crashed daemon is replaced", DEADLINE, || async {
        world.assert_at_most_one_per_instance();
        world.converged(&world.instances, &world.td1)
            && world.live()[&world.instances[0]][0].task_arn != victim
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_keeps_the_floor_one_instance_at_a_time() {
    let world = world(10).await;
    let _engine = world.engine(options());
    let first = world.deploy_first().await;
    world.wait_status(&first, DeploymentStatus::Completed).await;
    let watch = world.watch();
    world.update(&world.td2.clone()).await;
    let second = world.deploy(2).await;
    world.wait_status(&second, DeploymentStatus::Completed).await;
    assert!(world.converged(&world.instances, &world.td2));
    let (covered, doubled) = watch.seen();
    // 90% of 10: at most one instance without its daemon at any moment, never two tasks on one.
    assert!(
        covered >= 9,
        "only {covered} of 10 instances had a daemon at one point"
    );
    assert_eq!(doubled, 0);
    assert_eq!(
        world.deployment(&first).await.unwrap().status,
        DeploymentStatus::Completed
    );
    for tasks in world.live().values() {
        assert_eq!(tasks[0].started_by.as_deref(), Some(second.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_then_terminate_never_leaves_an_instance_without_its_daemon() {
    let world = world(10).await;
    let _engine = world.engine(options());
    world
        .create(
            &world.td1.clone(),
            DeploymentMethod::ReplaceThenTerminate,
            ConfigPatch {
                max_over_percent: Some(20),
                ..ConfigPatch::default()
            },
            |_| {},
        )
        .await;
    let first = world.deploy(1).await;
    world.wait_status(&first, DeploymentStatus::Completed).await;
    let watch = world.watch();
    world.update(&world.td2.clone()).await;
    let second = world.deploy(2).await;
    world.wait_status(&second, DeploymentStatus::Completed).await;
    assert!(world.converged(&world.instances, &world.td2));
    let (covered, doubled) = watch.seen();
    assert_eq!(covered, 10, "an instance lost its daemon");
    assert!(doubled <= 2, "{doubled} instances carried two tasks (surge 2)");
    assert!(doubled >= 1, "the watch saw no surge at all");
}

/// The scenario: 12 instances run `daemon:1`; the update is to a task definition whose host
/// port is taken on 9 of them. The deployment fails after three refused starts, and is rolled back;
/// never more than one instance lacks its daemon.
async fn port_taken_scenario(method: DeploymentMethod) -> (World, usize) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("blox_server=debug")
        .with_test_writer()
        .try_init();
    let world = world_with(12, ThrottleConfig::unlimited(), |_| {}).await;
    let web = world.sim.write(|ecs, _| {
        ecs.register_task_definition(
            "web",
            None,
            None,
            vec![SimContainer {
                host_ports: vec![80],
                ..container(128).remove(0)
            }],
        )
        .expect("td")
        .arn
    });
    // Something else holds port 80 on 9 of the 12 instances.
    let squatter = web.clone();
    let taken: Vec<String> = world.instances[3..].to_vec();
    let started = world
        .sim
        .start_task(&StartTask {
            cluster: CLUSTER.into(),
            task_definition: squatter,
            container_instances: taken[..9.min(taken.len())].iter().take(10).cloned().collect(),
            started_by: Some("someone-else".into()),
            group: Some("service:web".into()),
        })
        .await
        .expect("squatters");
    assert_eq!(started.tasks.len(), 9);

    let _engine = world.engine(options());
    world
        .create(&world.td1.clone(), method, ConfigPatch::default(), fast)
        .await;
    let first = world.deploy(1).await;
    world.wait_status(&first, DeploymentStatus::Completed).await;
    let watch = world.watch();
    world.update(&web).await;
    let second = world.deploy(2).await;
    world.wait_status(&second, DeploymentStatus::Failed).await;
    let failed = world.deployment(&second).await.unwrap();
    let rollback = failed.rolled_back_by.clone().expect("an automatic rollback");
    assert!(
        failed.reason().unwrap().contains("RESOURCE:PORTS"),
        "{:?}",
        failed.history
    );
    world.wait_status(&rollback, DeploymentStatus::Completed).await;
    let rolled = world.deployment(&rollback).await.unwrap();
    assert!(rolled.rollback);
    assert_eq!(rolled.revision, 1);
    assert_eq!(rolled.rollback_of.as_deref(), Some(second.as_str()));
    assert!(world.converged(&world.instances, &world.td1));
    let failures: Vec<InstanceFailure> = world.records(Kind::Failure).await;
    assert!(
        failures.iter().all(|f| f.reason == "RESOURCE:PORTS"),
        "{failures:?}"
    );
    assert!(failures.iter().map(|f| f.attempts).sum::<u64>() >= 3);
    let (covered, _) = watch.seen();
    (world, covered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_update_fails_and_rolls_back_above_the_floor() {
    let (_world, covered) = port_taken_scenario(DeploymentMethod::TerminateThenReplace).await;
    assert!(
        covered >= 11,
        "only {covered} of 12 instances had a daemon at one point"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_surge_update_keeps_every_daemon() {
    let (_world, covered) = port_taken_scenario(DeploymentMethod::ReplaceThenTerminate).await;
    assert_eq!(covered, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_starts_back_off_and_fail_the_deployment() {
    let world = world(2).await;
    let _engine = world.engine(SchedulerOptions {
        // Frequent passes: a retry on every pass would show.
        interval: Duration::from_millis(50),
        ..options()
    });
    world
        .create(
            &world.big.clone(),
            DeploymentMethod::TerminateThenReplace,
            ConfigPatch {
                failure_threshold: Some(6),
                auto_rollback: Some(false),
                ..ConfigPatch::default()
            },
            fast,
        )
        .await;
    let id = world.deploy(1).await;
    world.wait_status(&id, DeploymentStatus::Failed).await;
    let failures: Vec<InstanceFailure> = world.records(Kind::Failure).await;
    assert_eq!(failures.len(), 2);
    for failure in &failures {
        assert_eq!(failure.reason, "RESOURCE:MEMORY");
        assert!(world.instances.contains(&failure.instance_arn));
    }
    let attempts: u64 = failures.iter().map(|f| f.attempts).sum();
    assert_eq!(attempts, 6, "the threshold");
    // One call per attempt of both instances, never a retry before its back-off.
    assert_eq!(world.start_calls(), 3);
    let deployment = world.deployment(&id).await.unwrap();
    assert!(deployment.rolled_back_by.is_none(), "autoRollback is off");
    // A failed deployment is not acted on any more.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(world.start_calls(), 3);
    assert!(world.records::<StartIntent>(Kind::Intent).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intents_left_by_a_dead_engine_are_verified_at_once() {
    let world = world(3).await;
    world
        .create(
            &world.td1.clone(),
            DeploymentMethod::TerminateThenReplace,
            ConfigPatch::default(),
            |_| {},
        )
        .await;
    let id = world.deploy(1).await;
    // What an engine leaves when it dies after recording its intents and calling StartTask but
    // before writing ECS's answer: the intents, and tasks ECS started that the store has not heard
    // of (the simulator is quiet: no events for them).
    let now = world.sim.now_ms();
    let writes = world
        .instances
        .iter()
        .map(|arn| Write::Put {
            doc: documents::scheduler_doc(
                &world.cluster,
                &Doc::Intent(StartIntent {
                    environment: ENV.into(),
                    deployment_id: id.clone(),
                    instance_arn: arn.clone(),
                    recorded_at_ms: now,
                }),
            ),
            expect: Expect::Absent,
        })
        .collect();
    world.store.apply(writes).await.expect("intents");
    world.sim.write(|ecs, _| ecs.set_quiet(true));
    let started = world
        .sim
        .start_task(&StartTask {
            cluster: CLUSTER.into(),
            task_definition: world.td1.clone(),
            container_instances: world.instances.clone(),
            started_by: Some(id.clone()),
            group: Some(GROUP.into()),
        })
        .await
        .expect("start");
    assert_eq!(started.tasks.len(), 3);

    let began = tokio::time::Instant::now();
    let _engine = world.engine(options());
    // Only verification can tell the engine about these tasks: it writes what ECS describes.
    wait_until("the engine verified the instances", DEADLINE, || async {
        world.records::<StartIntent>(Kind::Intent).await.is_empty()
    })
    .await;
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "verified after {:?}",
        began.elapsed()
    );
    for task in &started.tasks {
        let key = Key::task(world.cluster.clone(), task.task_arn.clone());
        assert!(
            world.store.get(&key).await.expect("get").is_some(),
            "{} not stored",
            task.task_arn
        );
    }
    world.sim.write(|ecs, _| ecs.set_quiet(false));
    world.wait_status(&id, DeploymentStatus::Completed).await;
    assert!(world.converged(&world.instances, &world.td1));
    assert_eq!(world.start_calls(), 1, "only the test's own StartTask");
    assert_eq!(world.ever_started(), 3);
}

/// ECS control whose StartTask answers are lost: the call reaches ECS, the caller gets an error.
struct LosingAnswers {
    sim: Simulator,
    lose: AtomicUsize,
}

#[async_trait]
impl EcsControl for LosingAnswers {
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
        let started = self.sim.start_task(request).await?;
        if self
            .lose
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(EcsError {
                operation: "StartTask",
                cluster: Some(request.cluster.clone()),
                kind: EcsErrorKind::Other("connection reset".into()),
            });
        }
        Ok(started)
    }
    async fn stop_task(&self, cluster: &str, task: &str, reason: &str) -> Result<Task, EcsError> {
        self.sim.stop_task(cluster, task, reason).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_answer_is_lost_is_verified_not_repeated() {
    let world = world(4).await;
    let control = Arc::new(LosingAnswers {
        sim: world.sim.clone(),
        lose: AtomicUsize::new(1),
    });
    let _engine = world.engine_with(options(), control);
    let id = world.deploy_first().await;
    world.wait_status(&id, DeploymentStatus::Completed).await;
    assert!(world.converged(&world.instances, &world.td1));
    assert_eq!(world.ever_started(), 4, "nothing started twice");
    assert_eq!(world.start_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_restarted_mid_deployment_starts_no_duplicates() {
    let world = world(25).await;
    // Three StartTask calls half a second apart.
    let slow = SchedulerOptions {
        calls_per_second: 2.0,
        ..options()
    };
    let first = world.engine(slow.clone());
    let id = world.deploy_first().await;
    wait_until("the first batch is started", DEADLINE, || async {
        !world.live().is_empty()
    })
    .await;
    first.cancel();
    let _second = world.engine(slow);
    wait_until(&format!("deployment {id} completes"), DEADLINE, || async {
        world.assert_at_most_one_per_instance();
        world
            .deployment(&id)
            .await
            .is_some_and(|d| d.status == DeploymentStatus::Completed)
    })
    .await;
    assert!(world.converged(&world.instances, &world.td1));
    assert_eq!(world.ever_started(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_freeze_and_thaw() {
    let world = world(4).await;
    let _engine = world.engine(options());
    let first = world.deploy_first().await;
    world.wait_status(&first, DeploymentStatus::Completed).await;

    // Frozen: a deployment is taken but nothing moves.
    let now = world.sim.now_ms();
    world
        .command(|stored| lifecycle::freeze(&stored.unwrap().snapshot, true, now))
        .await;
    world.update(&world.td2.clone()).await;
    let second = world.deploy(2).await;
    let calls = world.start_calls();
    let victim = world.live()[&world.instances[0]][0].task_arn.clone();
    world
        .sim
        .write(|ecs, now| ecs.crash_task(CLUSTER, &victim, 1, now))
        .expect("crash");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        world.start_calls(),
        calls,
        "a frozen environment starts nothing, not even a restart"
    );
    assert!(world.converged(&world.instances[1..], &world.td1));
    assert_eq!(
        world.deployment(&second).await.unwrap().status,
        DeploymentStatus::Pending
    );

    // Thawed: it rolls on; stopped midway, it halts.
    let now = world.sim.now_ms();
    world
        .command(|stored| lifecycle::freeze(&stored.unwrap().snapshot, false, now))
        .await;
    wait_until("the rollout begins", DEADLINE, || async {
        world
            .live()
            .values()
            .flatten()
            .any(|t| t.task_definition_arn == world.td2)
    })
    .await;
    let now = world.sim.now_ms();
    world
        .command(|stored| lifecycle::stop(&stored.unwrap().snapshot, &second, now))
        .await;
    let stopped = world.deployment(&second).await.unwrap();
    assert_eq!(stopped.status, DeploymentStatus::Stopped);
    let calls = world.start_calls();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(world.start_calls(), calls, "a stopped deployment starts nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_with_terminate_tasks_stops_them_and_removes_everything() {
    let world = world(2).await;
    let _engine = world.engine(options());
    let id = world.deploy_first().await;
    world.wait_status(&id, DeploymentStatus::Completed).await;
    let now = world.sim.now_ms();
    world
        .command(|stored| lifecycle::delete(&stored.unwrap().snapshot, true, now))
        .await;
    wait_until("the environment is removed", DEADLINE, || async {
        world.environment().await.is_none()
    })
    .await;
    assert!(world.live().is_empty(), "{:?}", world.live());
    assert!(world.deployment(&id).await.is_none());
    for kind in [Kind::Revision, Kind::Deployment, Kind::Intent, Kind::Failure] {
        assert_eq!(world.store.count(kind).await.unwrap(), 0, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_mid_rollout_finishes() {
    let world = world(25).await;
    let _engine = world.engine(SchedulerOptions {
        calls_per_second: 4.0,
        ..options()
    });
    let id = world.deploy_first().await;
    wait_until("the rollout began", DEADLINE, || async {
        !world.live().is_empty()
    })
    .await;
    let now = world.sim.now_ms();
    world
        .command(|stored| lifecycle::delete(&stored.unwrap().snapshot, true, now))
        .await;
    wait_until("the environment is removed", DEADLINE, || async {
        world.environment().await.is_none()
    })
    .await;
    assert!(world.live().is_empty());
    assert!(world.deployment(&id).await.is_none());
    assert_eq!(world.store.count(Kind::Intent).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_start_task_still_converges_without_duplicates() {
    let mut throttle = ThrottleConfig::default();
    // One StartTask every half second, no burst: an engine asking faster is throttled.
    throttle.set(Family::Launch, Some(Rate::new(1, 2.0)));
    let world = world_with(25, throttle, |_| {}).await;
    let _engine = world.engine(SchedulerOptions {
        calls_per_second: 1_000.0,
        ..options()
    });
    let id = world.deploy_first().await;
    wait_until(&format!("deployment {id} completes"), DEADLINE, || async {
        world.assert_at_most_one_per_instance();
        world
            .deployment(&id)
            .await
            .is_some_and(|d| d.status == DeploymentStatus::Completed)
    })
    .await;
    assert!(world.converged(&world.instances, &world.td1));
    assert_eq!(world.ever_started(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pass_finds_nothing_left_to_do() {
    let world = world(3).await;
    let id = world.deploy_first().await;
    assert!(
        world
            .view
            .caught_up(world.store.log_bounds().await.unwrap().head, DEADLINE)
            .await
    );
    let scheduler = world.scheduler();
    let report = scheduler.pass().await;
    assert_eq!(report.started, 3, "{report:?}");
    // The deployment's own writes (intents, tasks, transition) are in the view...
    assert!(
        world
            .view
            .caught_up(world.store.log_bounds().await.unwrap().head, DEADLINE)
            .await
    );
    // ...and a second pass finds nothing to start.
    let report = scheduler.pass().await;
    assert_eq!((report.started, report.errors), (0, 0), "{report:?}");
    let _ = world.deployment(&id).await;
}

/// Changing the instance group (a cluster query) adopts the tasks on instances that still match and
/// starts and stops only the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_change_starts_and_stops_only_the_difference() {
    let world = world(20).await;
    let _engine = world.engine(options());
    let ec2_ids: BTreeMap<String, String> = {
        let view = world.view.read();
        view.clusters[&world.cluster]
            .instances()
            .map(|(_, i)| {
                (
                    i.arn.to_string(),
                    i.ec2_instance_id.as_deref().expect("an EC2 id").to_owned(),
                )
            })
            .collect()
    };
    let ids_of = |range: std::ops::Range<usize>| -> String {
        let ids: Vec<&str> = world.instances[range]
            .iter()
            .map(|arn| ec2_ids[arn].as_str())
            .collect();
        format!("ec2InstanceId in [{}]", ids.join(", "))
    };
    let group = |query: String| InstanceSelection {
        attributes: Vec::new(),
        query: Some(query.parse().expect("query")),
    };
    world
        .create(
            &world.td1.clone(),
            DeploymentMethod::TerminateThenReplace,
            ConfigPatch::default(),
            |_| {},
        )
        .await;
    let regroup = |selection: InstanceSelection| {
        let world = &world;
        async move {
            world
                .command(|stored| {
                    lifecycle::update_environment(
                        &stored.expect("env").snapshot,
                        UpdateEnvironment {
                            instance_group: Some(selection.clone()),
                            ..UpdateEnvironment::default()
                        },
                        world.fresh(""),
                    )
                })
                .await;
        }
    };
    regroup(group(ids_of(0..12))).await;
    let first = world.deploy(2).await;
    world.wait_status(&first, DeploymentStatus::Completed).await;
    assert!(world.converged(&world.instances[0..12], &world.td1));
    let before: BTreeMap<String, String> = world
        .live()
        .into_iter()
        .map(|(instance, tasks)| (instance, tasks[0].task_arn.clone()))
        .collect();

    regroup(group(ids_of(6..20))).await;
    let second = world.deploy(3).await;
    world.wait_status(&second, DeploymentStatus::Completed).await;
    wait_until(
        "the instances that left the group lost their daemon",
        DEADLINE,
        || async { world.converged(&world.instances[6..20], &world.td1) },
    )
    .await;
    let after = world.live();
    for instance in &world.instances[6..12] {
        assert_eq!(
            after[instance][0].task_arn, before[instance],
            "the task on {instance}, still in the group, is adopted"
        );
    }
    for instance in &world.instances[12..20] {
        assert!(!before.contains_key(instance));
    }
    for instance in &world.instances[12..20] {
        assert_eq!(after[instance][0].started_by.as_deref(), Some(second.as_str()));
    }
}

impl World {
    /// A new revision on `task_definition` with `configuration` over the latest's.
    async fn update_with(&self, task_definition: &str, configuration: ConfigPatch) {
        let update = UpdateEnvironment {
            task_definition: Some(TaskDefinitionRef {
                arn: task_definition.into(),
                health_checks: false,
            }),
            configuration,
            ..UpdateEnvironment::default()
        };
        self.command(|stored| {
            lifecycle::update_environment(&stored.expect("env").snapshot, update.clone(), self.fresh(""))
        })
        .await;
    }

    /// Runs `scheduler`'s passes until deployment `id` is `status`, never two tasks on an instance.
    async fn pass_until(&self, scheduler: &Scheduler, id: &str, status: DeploymentStatus) {
        wait_until(&format!("deployment {id} is {status:?}"), DEADLINE, || async {
            scheduler.pass().await;
            self.assert_at_most_one_per_instance();
            self.deployment(id).await.is_some_and(|d| d.status == status)
        })
        .await;
    }

    /// Task ARN by instance, of the environment's live tasks.
    fn task_arns(&self) -> BTreeMap<String, String> {
        self.live()
            .into_iter()
            .map(|(instance, tasks)| (instance, tasks[0].task_arn.clone()))
            .collect()
    }
}

fn canary_of(instances: i64) -> ConfigPatch {
    ConfigPatch {
        canary: Some(CanaryPatch {
            instances: Some(instances),
            ..CanaryPatch::default()
        }),
        ..ConfigPatch::default()
    }
}

/// A canary of 2 on 20 instances: the two are replaced, the deployment waits for promotion while
/// the other 18 keep their tasks and an instance that joins meanwhile gets nothing; promoted, it
/// completes on every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_waits_for_promotion_then_completes() {
    let world = world(20).await;
    let scheduler = world.scheduler();
    let first = world.deploy_first().await;
    world
        .pass_until(&scheduler, &first, DeploymentStatus::Completed)
        .await;
    let before = world.task_arns();

    world.update_with(&world.td2.clone(), canary_of(2)).await;
    let second = world.deploy(2).await;
    world
        .pass_until(&scheduler, &second, DeploymentStatus::AwaitingPromotion)
        .await;
    let deployment = world.deployment(&second).await.expect("deployment");
    let canary = deployment.canary_instances.clone().expect("a recorded canary");
    assert_eq!(canary.len(), 2);
    let live = world.live();
    for (instance, tasks) in &live {
        let want = if canary.contains(instance) {
            &world.td2
        } else {
            &world.td1
        };
        assert_eq!(&tasks[0].task_definition_arn, want, "{instance}");
        if !canary.contains(instance) {
            assert_eq!(tasks[0].task_arn, before[instance], "{instance} was left alone");
        }
    }

    // An instance that joins while the canary waits gets nothing before the promotion.
    let joined = world.sim.write(|ecs, now| {
        ecs.register_container_instance(CLUSTER, NewInstance::ec2("m5.large", "us-east-1a"), now)
            .expect("instance")
            .container_instance_arn
            .clone()
    });
    wait_until("the view has the new instance", DEADLINE, || async {
        world.view.read().clusters[&world.cluster]
            .instance(&joined)
            .is_some()
    })
    .await;
    scheduler.pass().await;
    scheduler.pass().await;
    assert!(
        !world.live().contains_key(&joined),
        "nothing starts before the promotion"
    );
    assert!(world.records::<StartIntent>(Kind::Intent).await.is_empty());
    assert_eq!(
        world.deployment(&second).await.expect("deployment").status,
        DeploymentStatus::AwaitingPromotion
    );

    world
        .command(|stored| lifecycle::promote(&stored.expect("env").snapshot, &second, world.sim.now_ms()))
        .await;
    let mut all = world.instances.clone();
    all.push(joined);
    world
        .pass_until(&scheduler, &second, DeploymentStatus::Completed)
        .await;
    assert!(world.converged(&all, &world.td2));
}

/// A canary whose task cannot be placed fails the deployment; the rollback restores the canary
/// instances, and no other instance was ever touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_fails_and_rolls_back_touching_only_the_canary() {
    let world = world(20).await;
    let _engine = world.engine(options());
    let first = world.deploy_first().await;
    world.wait_status(&first, DeploymentStatus::Completed).await;
    let before = world.task_arns();

    let mut patch = canary_of(2);
    patch.failure_threshold = Some(2);
    world.update_with(&world.big.clone(), patch).await;
    let second = world.deploy(2).await;
    world.wait_status(&second, DeploymentStatus::Failed).await;
    let failed = world.deployment(&second).await.expect("deployment");
    let canary = failed.canary_instances.clone().expect("a recorded canary");
    let rollback = failed.rolled_back_by.clone().expect("an automatic rollback");
    world.wait_status(&rollback, DeploymentStatus::Completed).await;
    wait_until(
        "every instance runs the first revision again",
        DEADLINE,
        || async { world.converged(&world.instances, &world.td1) },
    )
    .await;
    let after = world.task_arns();
    let touched: Vec<&String> = world
        .instances
        .iter()
        .filter(|i| before[*i] != after[*i])
        .collect();
    assert!(
        touched.iter().all(|i| canary.contains(i)),
        "only canary instances changed: {touched:?}, canary {canary:?}"
    );
    assert!(touched.len() <= 2);
}

/// Instances that cannot get their daemon are uncovered once the grace has passed: the executor's
/// gauge says how many, per environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_without_their_daemon_are_counted_uncovered() {
    let world = world(3).await;
    let metrics = blox_server::metrics::handle();
    let _engine = world.engine(options());
    world
        .create(
            &world.big.clone(),
            DeploymentMethod::TerminateThenReplace,
            ConfigPatch {
                coverage_grace_seconds: Some(0),
                failure_threshold: Some(1_000),
                ..ConfigPatch::default()
            },
            fast,
        )
        .await;
    world.deploy(1).await;
    wait_until("three instances are uncovered", DEADLINE, || async {
        metrics
            .render()
            .lines()
            .any(|l| l == "blox_environment_uncovered_instances{environment=\"web\"} 3")
    })
    .await;
}

/// An instance group that reads `task:group` waits for the view to know every task's group (loaded
/// on demand), then leaves out the instance running a batch job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_by_task_group_leaves_out_the_instance_of_a_batch_job() {
    let world = world(4).await;
    let batch_on = world.instances[0].clone();
    world
        .sim
        .write(|ecs, now| {
            ecs.start_task(
                &StartTask {
                    cluster: CLUSTER.into(),
                    task_definition: world.td1.clone(),
                    container_instances: vec![batch_on.clone()],
                    started_by: Some("someone".into()),
                    group: Some("service:batch".into()),
                },
                now,
            )
        })
        .expect("a batch task");
    wait_until("the store has the batch task", DEADLINE, || async {
        world
            .store
            .list(Kind::Task, &blox_store::Filter::default(), Default::default())
            .await
            .is_ok_and(|page| !page.items.is_empty())
    })
    .await;
    let _engine = world.engine(options());
    world
        .create(
            &world.td1.clone(),
            DeploymentMethod::TerminateThenReplace,
            ConfigPatch::default(),
            |_| {},
        )
        .await;
    world
        .command(|stored| {
            lifecycle::update_environment(
                &stored.expect("env").snapshot,
                UpdateEnvironment {
                    instance_group: Some(InstanceSelection {
                        attributes: Vec::new(),
                        query: Some("not(task:group == service:batch)".parse().expect("query")),
                    }),
                    ..UpdateEnvironment::default()
                },
                world.fresh(""),
            )
        })
        .await;
    let id = world.deploy(2).await;
    world.wait_status(&id, DeploymentStatus::Completed).await;
    assert!(world.converged(&world.instances[1..], &world.td1));
    assert!(world.view.knows_task_groups());
}
