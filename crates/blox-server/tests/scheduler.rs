//! The daemon scheduler's executor against the simulator: the real ingestion (fed by the simulator's
//! events), the real reconciler, a MemStore, and environment documents written the way the API will.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use blox_aws::{EcsControl as _, StartTask};
mod common;

use blox_model::ClusterName;
use blox_model::Task;
use blox_model::daemon::{
    Counts, Deployment, DeploymentConfiguration, DeploymentStatus, Environment, EnvironmentStatus, Health,
    InstanceGroup, Revision, StartIntent,
};
use blox_server::documents;
use blox_server::{
    IngestOptions, Ingestor, ReadinessState, ReconcileOptions, Reconciler, Scheduler, SchedulerOptions,
};
use blox_sim::{Family, NewInstance, Rate, Simulator, ThrottleConfig};
use blox_store::{Expect, Key, MemStore, Store, StoreError, StoreOptions, Write};
use blox_testkit::wait_until;
use common::{container, simulator};
use tokio_util::sync::CancellationToken;

const CLUSTER: &str = "prod";
const ENV: &str = "web";
const DEADLINE: Duration = Duration::from_secs(20);

struct World {
    sim: Simulator,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    cluster: ClusterName,
    cluster_arn: String,
    td1: String,
    td2: String,
    /// Needs more memory than any instance has.
    big: String,
    instances: Vec<String>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn world(instances: usize) -> World {
    world_with(instances, ThrottleConfig::unlimited()).await
}

async fn world_with(instances: usize, throttle: ThrottleConfig) -> World {
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
    World {
        sim,
        store,
        shutdown,
        cluster: ClusterName::new(CLUSTER).expect("name"),
        cluster_arn,
        td1,
        td2,
        big,
        instances: arns,
    }
}

fn options() -> SchedulerOptions {
    SchedulerOptions {
        calls_per_second: 100.0,
        ..SchedulerOptions::default()
    }
}

fn fast_backoff() -> DeploymentConfiguration {
    DeploymentConfiguration {
        start_backoff_initial_ms: 400,
        start_backoff_max_ms: 1_600,
        ..DeploymentConfiguration::default()
    }
}

impl World {
    fn engine(&self, options: SchedulerOptions) -> CancellationToken {
        let stop = self.shutdown.child_token();
        tokio::spawn(self.scheduler_with(options).run(stop.clone()));
        stop
    }

    fn scheduler(&self) -> Scheduler {
        self.scheduler_with(options())
    }

    fn scheduler_with(&self, options: SchedulerOptions) -> Scheduler {
        Scheduler::new(
            self.store.clone(),
            Arc::new(self.sim.clone()),
            Arc::new(self.sim.clone()),
            options,
        )
    }

    /// Writes revision `number` and deployment `id` of it, and makes the deployment active (what
    /// the API will do).
    async fn deploy(&self, number: u64, task_definition: &str, id: &str, config: DeploymentConfiguration) {
        let revision = Revision {
            environment: ENV.into(),
            number,
            token: format!("token-{number}"),
            task_definition: task_definition.into(),
            instance_group: InstanceGroup {
                cluster_arn: self.cluster_arn.clone(),
                attributes: vec![],
            },
            deployment: config,
            created_at: 0,
        };
        let deployment = Deployment::new(id, ENV, number, task_definition, 0);
        self.store
            .apply(vec![
                Write::Put {
                    doc: documents::revision(self.cluster.clone(), &revision),
                    expect: Expect::Absent,
                },
                Write::Put {
                    doc: documents::deployment(self.cluster.clone(), &deployment),
                    expect: Expect::Absent,
                },
            ])
            .await
            .expect("revision and deployment");
        self.update_environment(|env| {
            env.latest_revision = number;
            env.active_deployment = Some(id.into());
        })
        .await;
    }

    /// Deploys revision 1, of `td1`, as deployment `d1` with the default configuration.
    async fn deploy_first(&self) {
        self.deploy(1, &self.td1, "d1", DeploymentConfiguration::default())
            .await;
    }

    async fn update_environment(&self, change: impl Fn(&mut Environment)) {
        let key = Key::environment(self.cluster.clone(), ENV);
        loop {
            let (mut env, expect) = match self.store.get(&key).await.expect("get") {
                Some(record) => (
                    documents::parse::<Environment>(&record.doc).expect("environment"),
                    Expect::Seq(record.seq),
                ),
                None => (
                    Environment {
                        name: ENV.into(),
                        cluster: self.cluster.clone(),
                        cluster_arn: self.cluster_arn.clone(),
                        latest_revision: 0,
                        active_deployment: None,
                        status: EnvironmentStatus::Active,
                        health: Health::Healthy,
                        health_reason: None,
                        created_at: 0,
                        updated_at: 0,
                    },
                    Expect::Absent,
                ),
            };
            change(&mut env);
            let write = Write::Put {
                doc: documents::environment(&env),
                expect,
            };
            match self.store.apply(vec![write]).await {
                Ok(_) => return,
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => panic!("environment: {err}"),
            }
        }
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

    async fn wait_status(&self, id: &str, status: DeploymentStatus) {
        wait_until(&format!("deployment {id} is {status:?}"), DEADLINE, || async {
            self.deployment(id).await.is_some_and(|d| d.status == status)
        })
        .await;
    }

    /// Waits for deployment `id` to complete, asserting at every look that no instance runs two
    /// of the environment's tasks.
    async fn wait_completed_at_most_one_per_instance(&self, id: &str) {
        wait_until(&format!("deployment {id} completes"), DEADLINE, || async {
            self.assert_at_most_one_per_instance();
            self.deployment(id)
                .await
                .is_some_and(|d| d.status == DeploymentStatus::Completed)
        })
        .await;
    }

    /// The environment's tasks in ECS that are not STOPPED, by instance.
    fn live(&self) -> BTreeMap<String, Vec<Task>> {
        let mut out: BTreeMap<String, Vec<Task>> = BTreeMap::new();
        for task in self.sim.read(|ecs| ecs.live_tasks(CLUSTER)) {
            if task.group.as_deref() == Some("blox:web") {
                let instance = task.container_instance_arn.clone().unwrap_or_default();
                out.entry(instance).or_default().push((*task).clone());
            }
        }
        out
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
                    .filter(|t| t.group.as_deref() == Some("blox:web"))
                    .count()
            })
        })
    }

    fn start_calls(&self) -> u64 {
        self.sim.read(|ecs| ecs.call_counts(Family::Launch).0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_starts_one_task_per_instance_and_completes() {
    let world = world(3).await;
    let _engine = world.engine(options());
    world.deploy_first().await;
    world.wait_status("d1", DeploymentStatus::Completed).await;
    assert!(world.converged(&world.instances, &world.td1));
    for tasks in world.live().values() {
        assert_eq!(tasks[0].started_by.as_deref(), Some("d1"));
        assert_eq!(tasks[0].group.as_deref(), Some("blox:web"));
    }
    let deployment = world.deployment("d1").await.expect("deployment");
    assert_eq!(
        deployment.counts,
        Counts {
            desired: 3,
            running: 3,
            pending: 0,
            failed: 0
        }
    );
    assert!(deployment.intents.is_empty(), "{:?}", deployment.intents);
    assert!(deployment.started_at.is_some() && deployment.ended_at.is_some());
    assert_eq!(world.environment().await.expect("env").health, Health::Healthy);
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
    world.deploy_first().await;
    world.wait_status("d1", DeploymentStatus::Completed).await;
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
async fn a_draining_instance_keeps_its_daemon_and_gets_no_new_one() {
    let world = world(2).await;
    let engine = world.engine(options());
    world.deploy_first().await;
    world.wait_status("d1", DeploymentStatus::Completed).await;
    engine.cancel();
    let drained = world.instances[0].clone();
    world
        .sim
        .write(|ecs, now| {
            ecs.update_container_instances_state(CLUSTER, std::slice::from_ref(&drained), "DRAINING", now)
        })
        .expect("drain");
    wait_until("the store sees the instance draining", DEADLINE, || async {
        let record = world
            .store
            .get(&Key::instance(world.cluster.clone(), drained.clone()))
            .await
            .expect("get");
        record.is_some_and(|r| r.doc.status == "DRAINING")
    })
    .await;
    let scheduler = world.scheduler();
    let report = scheduler.pass().await;
    assert_eq!(
        (report.started, report.stopped, report.errors),
        (0, 0, 0),
        "{report:?}"
    );
    let kept = world.live()[&drained][0].task_arn.clone();
    let deployment = world.deployment("d1").await.expect("deployment");
    assert_eq!(deployment.counts.desired, 1, "{:?}", deployment.counts);

    // Its daemon crashes: nothing new is started there.
    world
        .sim
        .write(|ecs, now| ecs.crash_task(CLUSTER, &kept, 1, now))
        .expect("crash");
    wait_until("the store sees the daemon stopped", DEADLINE, || async {
        let record = world
            .store
            .get(&Key::task(world.cluster.clone(), kept.clone()))
            .await
            .expect("get");
        record.is_some_and(|r| r.doc.status == "STOPPED")
    })
    .await;
    let report = scheduler.pass().await;
    assert_eq!((report.started, report.errors), (0, 0), "{report:?}");
    assert!(!world.live().contains_key(&drained));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_deployment_replaces_the_tasks_one_per_instance() {
    let world = world(3).await;
    let _engine = world.engine(options());
    world.deploy_first().await;
    world.wait_status("d1", DeploymentStatus::Completed).await;
    world
        .deploy(2, &world.td2, "d2", DeploymentConfiguration::default())
        .await;
    world.wait_completed_at_most_one_per_instance("d2").await;
    assert!(world.converged(&world.instances, &world.td2));
    for tasks in world.live().values() {
        assert_eq!(tasks[0].started_by.as_deref(), Some("d2"));
    }
    // d1 had completed: it is left so.
    assert_eq!(
        world.deployment("d1").await.expect("d1").status,
        DeploymentStatus::Completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_running_deployment_is_stopped() {
    let world = world(2).await;
    world.deploy(1, &world.big, "d1", fast_backoff()).await;
    let scheduler = world.scheduler();
    scheduler.pass().await;
    assert_eq!(
        world.deployment("d1").await.expect("d1").status,
        DeploymentStatus::Running
    );
    world
        .deploy(2, &world.td1, "d2", DeploymentConfiguration::default())
        .await;
    let _engine = world.engine(options());
    world.wait_status("d2", DeploymentStatus::Completed).await;
    let d1 = world.deployment("d1").await.expect("d1");
    assert_eq!(d1.status, DeploymentStatus::Stopped);
    assert!(d1.ended_at.is_some());
    assert_eq!(world.environment().await.expect("env").health, Health::Healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_starts_back_off_instead_of_retrying_every_pass() {
    let world = world(2).await;
    let _engine = world.engine(SchedulerOptions {
        // Frequent passes: a retry on every pass would show.
        interval: Duration::from_millis(50),
        ..options()
    });
    world.deploy(1, &world.big, "d1", fast_backoff()).await;
    wait_until("both instances failed three times", DEADLINE, || async {
        world.deployment("d1").await.is_some_and(|d| {
            d.failed_instances.len() == 2 && d.failed_instances.iter().all(|f| f.attempts >= 3)
        })
    })
    .await;
    let deployment = world.deployment("d1").await.expect("d1");
    for failed in &deployment.failed_instances {
        assert_eq!(failed.reason, "RESOURCE:MEMORY");
        assert!(world.instances.contains(&failed.arn));
    }
    assert_eq!(deployment.counts.failed, 2, "{:?}", deployment.counts);
    assert_eq!(deployment.status, DeploymentStatus::Running);
    assert!(deployment.intents.is_empty());
    // One call per attempt (both instances in one call); a few more at most if a retry fell due
    // while this was checked.
    let calls = world.start_calls();
    let attempts = deployment
        .failed_instances
        .iter()
        .map(|f| u64::from(f.attempts))
        .max()
        .unwrap_or(0);
    assert!(
        calls <= attempts + 1,
        "{calls} StartTask calls for {attempts} attempts"
    );
    let env = world.environment().await.expect("env");
    assert_eq!(env.health, Health::Unhealthy);
    assert!(
        env.health_reason
            .as_deref()
            .is_some_and(|r| r.contains("RESOURCE:MEMORY")),
        "{:?}",
        env.health_reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_does_not_start_what_recorded_intents_may_have_started() {
    let world = world(3).await;
    world.deploy_first().await;
    // What an engine leaves when it dies between recording its intents and writing ECS's answer:
    // the intents without task ARNs, and tasks ECS started that the store has not heard of (the
    // simulator is quiet: no events for them).
    let key = Key::deployment(world.cluster.clone(), "d1");
    let record = world.store.get(&key).await.expect("get").expect("d1");
    let mut deployment: Deployment = documents::parse(&record.doc).expect("d1");
    let now = world.sim.now_ms();
    deployment.intents = world
        .instances
        .iter()
        .map(|arn| StartIntent {
            instance_arn: arn.clone(),
            deployment_id: "d1".into(),
            recorded_at_ms: now,
            task_arn: None,
        })
        .collect();
    world
        .store
        .apply(vec![Write::Put {
            doc: documents::deployment(world.cluster.clone(), &deployment),
            expect: Expect::Seq(record.seq),
        }])
        .await
        .expect("intents");
    world.sim.write(|ecs, _| ecs.set_quiet(true));
    let started = world
        .sim
        .start_task(&StartTask {
            cluster: CLUSTER.into(),
            task_definition: world.td1.clone(),
            container_instances: world.instances.clone(),
            started_by: Some("d1".into()),
            group: Some("blox:web".into()),
        })
        .await
        .expect("start");
    assert_eq!(started.tasks.len(), 3);

    let _engine = world.engine(SchedulerOptions {
        intent_ttl_ms: 1_000,
        ..options()
    });
    // Only verification can tell the engine about these tasks: it writes what ECS describes.
    wait_until("the engine verified the instances", DEADLINE, || async {
        world.deployment("d1").await.is_some_and(|d| d.intents.is_empty())
    })
    .await;
    for task in &started.tasks {
        let key = Key::task(world.cluster.clone(), task.task_arn.clone());
        assert!(
            world.store.get(&key).await.expect("get").is_some(),
            "{} not stored",
            task.task_arn
        );
    }
    world.sim.write(|ecs, _| ecs.set_quiet(false));
    world.wait_status("d1", DeploymentStatus::Completed).await;
    assert!(world.converged(&world.instances, &world.td1));
    assert_eq!(world.start_calls(), 1, "only the test's own StartTask");
    assert_eq!(world.ever_started(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_restarted_mid_deployment_starts_no_duplicates() {
    let world = world(25).await;
    // Three StartTask calls half a second apart.
    let slow = SchedulerOptions {
        calls_per_second: 2.0,
        intent_ttl_ms: 1_000,
        ..SchedulerOptions::default()
    };
    let first = world.engine(slow.clone());
    world.deploy_first().await;
    wait_until("the first batch is started", DEADLINE, || async {
        !world.live().is_empty()
    })
    .await;
    first.cancel();
    let _second = world.engine(slow);
    world.wait_completed_at_most_one_per_instance("d1").await;
    assert!(world.converged(&world.instances, &world.td1));
    assert_eq!(world.ever_started(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_with_terminate_tasks_stops_them_and_removes_the_documents() {
    let world = world(2).await;
    let _engine = world.engine(options());
    world.deploy_first().await;
    world.wait_status("d1", DeploymentStatus::Completed).await;
    world
        .update_environment(|env| {
            env.status = EnvironmentStatus::Deleting {
                terminate_tasks: true,
            }
        })
        .await;
    wait_until("the environment is removed", DEADLINE, || async {
        world.environment().await.is_none()
    })
    .await;
    assert!(world.live().is_empty(), "{:?}", world.live());
    assert!(world.deployment("d1").await.is_none());
    let revision = world
        .store
        .get(&Key::revision(world.cluster.clone(), ENV, 1))
        .await
        .expect("get");
    assert!(revision.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_start_task_still_converges_without_duplicates() {
    let mut throttle = ThrottleConfig::default();
    // One StartTask every half second, no burst: an engine asking faster is throttled.
    throttle.set(Family::Launch, Some(Rate::new(1, 2.0)));
    let world = world_with(25, throttle).await;
    let _engine = world.engine(SchedulerOptions {
        calls_per_second: 1_000.0,
        ..options()
    });
    world.deploy_first().await;
    world.wait_completed_at_most_one_per_instance("d1").await;
    assert!(world.converged(&world.instances, &world.td1));
    assert_eq!(world.ever_started(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_the_scheduler_when_given_ecs_control() {
    let world = world(2).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let services = blox_server::Services {
        store: world.store.clone(),
        ecs: Some(Arc::new(world.sim.clone())),
        // The world's ingestor already consumes the simulator's events.
        events: None,
        control: Some(Arc::new(world.sim.clone())),
    };
    let server = tokio::spawn(blox_server::serve(
        listener,
        services,
        blox_server::ServerOptions::default(),
        world.shutdown.child_token(),
    ));
    world.deploy_first().await;
    world.wait_status("d1", DeploymentStatus::Completed).await;
    assert!(world.converged(&world.instances, &world.td1));
    world.shutdown.cancel();
    server.await.expect("join").expect("serve");
}
