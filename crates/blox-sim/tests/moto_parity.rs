//! The simulator against moto: one script of ECS actions played on both, then compared through blox's
//! AWS boundary (`EcsReader`, `EcsControl`), moto behind `SdkEcs` and the simulator itself.
//!
//! The script: create clusters `parity` and `spare`; register task definition `web` twice (revision 1:
//! task-level 1024 CPU / 3000 MiB, one container of the same size on host port 8080; revision 2
//! smaller, no port); register four container instances i0–i3 (4096 CPU, 7482 MiB: what moto gives
//! every instance); set the custom attribute `stack=blue` on i2; StartTask `web:1` on i0, i1 and i2
//! with startedBy and group (tasks t0, t1, t2); StopTask t0; drain i1; deregister i3.
//!
//! Tests named `…_matches_moto…` compare what both answer, normalised where the two legitimately
//! differ (ids, account and region inside ARNs, timestamps). Tests named `…_where_moto_differs_…`
//! are where moto is wrong compared with ECS's documented behaviour: they assert the simulator's ECS
//! behaviour and pin moto's deviation, so that the list of moto's deviations reads from the names.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use blox_aws::{
    ClusterDescription, DesiredStatus, EcsControl, EcsError, EcsErrorKind, EcsReader, Failure, SdkEcs,
    StartTask, Started, TaskDefinitionDescription,
};
use blox_model::{Attribute, ContainerInstance, Task};
use blox_sim::{
    Clock, Ecs, NewInstance, SimConfig, SimContainer, SimError, SimHealthCheck, SimOptions, Simulator,
    TaskFilter, ThrottleConfig,
};
use blox_testkit::{EcsFixture, Moto};

const CLUSTER: &str = "parity";
const SPARE: &str = "spare";
const STARTED_BY: &str = "parity-test";
const GROUP: &str = "service:web";
/// What moto registers for every instance, whatever the agent reports.
const CPU: i64 = 4096;
const MEMORY: i64 = 7482;
/// The simulator's account differs from moto's (123456789012), so that normalising ARNs is tested too.
const SIM_ACCOUNT: &str = "111122223333";

/// Both backends as the traits see them.
trait Api: EcsReader + EcsControl {}
impl<T: EcsReader + EcsControl> Api for T {}

/// One side of the comparison, with the setup calls that are not part of blox's traits.
enum Backend {
    Moto {
        _moto: Moto,
        fx: EcsFixture,
        ecs: SdkEcs,
    },
    Sim {
        sim: Simulator,
    },
}

impl Backend {
    async fn moto() -> Backend {
        let moto = Moto::start().await.expect("moto (scripts/setup-test-env.sh)");
        let fx = EcsFixture::new(&moto).await;
        let ecs = SdkEcs::new(&moto.sdk_config().await);
        Backend::Moto { _moto: moto, fx, ecs }
    }

    fn sim() -> Backend {
        let config = SimConfig {
            account: SIM_ACCOUNT.into(),
            throttle: ThrottleConfig::unlimited(),
            ..SimConfig::default()
        };
        let options = SimOptions {
            config: config.clone(),
            ..SimOptions::default()
        };
        let clock = Clock::manual(1_764_000_000_000);
        Backend::Sim {
            sim: Simulator::new(Ecs::new(config, 7), clock, options),
        }
    }

    fn api(&self) -> &dyn Api {
        match self {
            Backend::Moto { ecs, .. } => ecs,
            Backend::Sim { sim } => sim,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Moto { .. } => "moto",
            Backend::Sim { .. } => "sim",
        }
    }

    fn fx(&self) -> &EcsFixture {
        match self {
            Backend::Moto { fx, .. } => fx,
            Backend::Sim { .. } => panic!("not moto"),
        }
    }

    fn simulator(&self) -> &Simulator {
        match self {
            Backend::Sim { sim } => sim,
            Backend::Moto { .. } => panic!("not the simulator"),
        }
    }

    async fn create_cluster(&self, name: &str) {
        match self {
            Backend::Moto { fx, .. } => {
                fx.create_cluster(name).await.unwrap();
            }
            Backend::Sim { sim } => {
                sim.write(|ecs, _| ecs.create_cluster(name)).unwrap();
            }
        }
    }

    /// One container `app` of the given size (task-level size the same when `task_level`), on host
    /// port `port` when given; returns the definition's ARN.
    async fn register_task_definition(
        &self,
        family: &str,
        cpu: i64,
        memory: i64,
        task_level: bool,
        port: Option<i64>,
    ) -> String {
        match self {
            Backend::Moto { fx, .. } => {
                let (cpu_s, memory_s) = (cpu.to_string(), memory.to_string());
                fx.register_sized_task_definition(
                    family,
                    task_level.then_some(cpu_s.as_str()),
                    task_level.then_some(memory_s.as_str()),
                    cpu as i32,
                    memory as i32,
                    port.map(|p| p as i32),
                )
                .await
                .unwrap()
            }
            Backend::Sim { sim } => {
                let container = SimContainer {
                    name: "app".into(),
                    cpu,
                    memory: Some(memory),
                    essential: true,
                    host_ports: port.into_iter().collect(),
                    health_check: None,
                    fault: None,
                };
                sim.write(|ecs, _| {
                    ecs.register_task_definition(
                        family,
                        task_level.then_some(cpu),
                        task_level.then_some(memory),
                        vec![container],
                    )
                })
                .unwrap()
                .arn
            }
        }
    }

    /// Instances as moto registers them: 4096 CPU, 7482 MiB, and the built-in attributes moto derives
    /// from the EC2 instance (its AMI is a Windows one, hence `ecs.os-type`). The simulator's also
    /// get the two built-ins the agent sets that moto does not.
    async fn register_instances(&self, cluster: &str, n: usize) -> Vec<String> {
        match self {
            Backend::Moto { fx, .. } => fx.register_instances(cluster, n).await.unwrap(),
            Backend::Sim { sim } => {
                let mut arns = Vec::new();
                for _ in 0..n {
                    let new = NewInstance {
                        ec2_instance_id: None,
                        cpu: CPU,
                        memory: MEMORY,
                        attributes: agent_attributes(),
                    };
                    let instance = sim
                        .write(|ecs, now| ecs.register_container_instance(cluster, new, now))
                        .unwrap();
                    arns.push(instance.container_instance_arn.clone());
                }
                arns
            }
        }
    }

    async fn put_attribute(&self, cluster: &str, instance: &str, name: &str, value: &str) {
        match self {
            Backend::Moto { fx, .. } => fx.put_attribute(cluster, instance, name, value).await.unwrap(),
            Backend::Sim { sim } => {
                let attribute = Attribute {
                    name: name.into(),
                    value: Some(value.into()),
                };
                sim.write(|ecs, now| ecs.put_attributes(cluster, instance, &[attribute], now))
                    .unwrap();
            }
        }
    }

    async fn drain(&self, cluster: &str, instance: &str) {
        match self {
            Backend::Moto { fx, .. } => fx.drain(cluster, &[instance.to_owned()]).await.unwrap(),
            Backend::Sim { sim } => {
                let (_, failures) = sim
                    .write(|ecs, now| {
                        ecs.update_container_instances_state(cluster, &[instance.to_owned()], "DRAINING", now)
                    })
                    .unwrap();
                assert_eq!(failures, Vec::new());
            }
        }
    }

    async fn deregister(&self, cluster: &str, instance: &str) {
        match self {
            Backend::Moto { fx, .. } => fx.deregister(cluster, instance, false).await.unwrap(),
            Backend::Sim { sim } => {
                sim.write(|ecs, now| ecs.deregister_container_instance(cluster, instance, false, now))
                    .unwrap();
            }
        }
    }

    /// Lets lifecycle steps in flight finish: the simulator's tasks reach RUNNING or STOPPED (moto's
    /// are there at once).
    fn settle(&self) {
        if let Backend::Sim { sim } = self {
            sim.clock().advance(Duration::from_secs(10));
            sim.tick();
        }
    }
}

fn attribute(name: &str, value: &str) -> Attribute {
    Attribute {
        name: name.into(),
        value: Some(value.into()),
    }
}

/// The built-in attributes the ECS agent registers on the EC2 instance moto's fixture launches.
fn agent_attributes() -> Vec<Attribute> {
    vec![
        attribute("ecs.ami-id", "ami-12c6146b"),
        attribute("ecs.availability-zone", "us-east-1a"),
        attribute("ecs.instance-type", "t2.micro"),
        attribute("ecs.os-type", "windows"),
        attribute("ecs.os-family", "WINDOWS_SERVER_2019_FULL"),
        attribute("ecs.cpu-architecture", "x86_64"),
    ]
}

/// What the script left behind on one backend: the ARNs it created, in script order.
struct Scripted {
    backend: Backend,
    /// i0..i3.
    instances: Vec<String>,
    /// t0..t2, on i0..i2.
    tasks: Vec<String>,
    web_1: String,
    web_2: String,
    started: Started,
    stopped: Task,
}

impl Scripted {
    fn api(&self) -> &dyn Api {
        self.backend.api()
    }

    fn name(&self) -> &'static str {
        self.backend.name()
    }

    /// `i0`… for the script's instances, `t0`… for its tasks, the resource part of any other ARN.
    fn label(&self, arn: &str) -> String {
        if let Some(i) = self.instances.iter().position(|a| a == arn) {
            return format!("i{i}");
        }
        if let Some(i) = self.tasks.iter().position(|a| a == arn) {
            return format!("t{i}");
        }
        resource(arn)
    }

    fn labels(&self, arns: &[String]) -> BTreeSet<String> {
        arns.iter().map(|a| self.label(a)).collect()
    }

    async fn instance(&self, n: usize) -> Option<ContainerInstance> {
        let arn = self.instances[n].clone();
        let mut found = self
            .api()
            .describe_container_instances(CLUSTER, &[arn])
            .await
            .unwrap();
        assert!(found.len() <= 1);
        found.pop()
    }

    async fn task(&self, n: usize) -> Task {
        let arn = self.tasks[n].clone();
        let mut found = self.api().describe_tasks(CLUSTER, &[arn]).await.unwrap();
        assert_eq!(found.len(), 1, "{}: t{n}", self.name());
        found.pop().unwrap()
    }

    async fn start(&self, task_definition: &str, instances: Vec<String>) -> Result<Started, EcsError> {
        self.api()
            .start_task(&StartTask {
                cluster: CLUSTER.into(),
                task_definition: task_definition.into(),
                container_instances: instances,
                started_by: None,
                group: None,
            })
            .await
    }
}

async fn script(backend: Backend) -> Scripted {
    backend.create_cluster(CLUSTER).await;
    backend.create_cluster(SPARE).await;
    let web_1 = backend
        .register_task_definition("web", 1024, 3000, true, Some(8080))
        .await;
    let web_2 = backend
        .register_task_definition("web", 512, 1024, true, None)
        .await;
    let instances = backend.register_instances(CLUSTER, 4).await;
    backend
        .put_attribute(CLUSTER, &instances[2], "stack", "blue")
        .await;
    let started = backend
        .api()
        .start_task(&StartTask {
            cluster: CLUSTER.into(),
            task_definition: "web:1".into(),
            container_instances: instances[..3].to_vec(),
            started_by: Some(STARTED_BY.into()),
            group: Some(GROUP.into()),
        })
        .await
        .unwrap();
    assert_eq!(started.failures, Vec::new(), "{}", backend.name());
    let tasks: Vec<String> = started.tasks.iter().map(|t| t.task_arn.clone()).collect();
    assert_eq!(tasks.len(), 3, "{}", backend.name());
    backend.settle();
    let stopped = backend
        .api()
        .stop_task(CLUSTER, &tasks[0], "scaled in")
        .await
        .unwrap();
    backend.drain(CLUSTER, &instances[1]).await;
    backend.deregister(CLUSTER, &instances[3]).await;
    backend.settle();
    Scripted {
        backend,
        instances,
        tasks,
        web_1,
        web_2,
        started,
        stopped,
    }
}

/// The script played on moto and on the simulator.
async fn scripted() -> (Scripted, Scripted) {
    let moto = script(Backend::moto().await).await;
    let sim = script(Backend::sim()).await;
    (moto, sim)
}

// ---- normalisation --------------------------------------------------------------------------------

/// The resource part of an ARN (`cluster/NAME`, `task-definition/FAMILY:REVISION`…): without the
/// partition, region and account, which legitimately differ.
fn resource(arn: &str) -> String {
    if arn.starts_with("arn:") {
        arn.splitn(6, ':').nth(5).unwrap_or(arn).to_owned()
    } else {
        arn.to_owned()
    }
}

fn error_kind(err: &EcsError) -> String {
    match &err.kind {
        EcsErrorKind::Throttled => "Throttled".into(),
        EcsErrorKind::ClusterNotFound => "ClusterNotFound".into(),
        EcsErrorKind::Invalid(_) => "Invalid".into(),
        EcsErrorKind::Rejected { code, .. } => format!("Rejected:{code}"),
        EcsErrorKind::Other(_) => "Other".into(),
    }
}

/// A resource list as (name → value), string sets sorted (moto and ECS order ports differently).
fn resources(list: &[blox_model::Resource]) -> BTreeMap<String, String> {
    list.iter()
        .map(|r| {
            let value = if r.kind == "STRINGSET" {
                let mut items: Vec<i64> = r.value.split(',').filter_map(|p| p.parse().ok()).collect();
                items.sort_unstable();
                items.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
            } else {
                r.value.clone()
            };
            (r.name.clone(), value)
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
struct InstanceView {
    cluster: String,
    status: String,
    agent_connected: bool,
    has_ec2_instance_id: bool,
    registered: BTreeMap<String, String>,
    remaining: BTreeMap<String, String>,
    running_tasks: Option<i64>,
    pending_tasks: Option<i64>,
}

fn instance_view(i: &ContainerInstance) -> InstanceView {
    InstanceView {
        cluster: resource(&i.cluster_arn),
        status: i.status.clone(),
        agent_connected: i.agent_connected,
        has_ec2_instance_id: i
            .ec2_instance_id
            .as_deref()
            .is_some_and(|id| id.starts_with("i-")),
        registered: resources(&i.registered_resources),
        remaining: resources(&i.remaining_resources),
        running_tasks: i.running_tasks_count,
        pending_tasks: i.pending_tasks_count,
    }
}

fn attributes(i: &ContainerInstance) -> BTreeMap<String, Option<String>> {
    i.attributes
        .iter()
        .map(|a| (a.name.clone(), a.value.clone()))
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
struct TaskView {
    cluster: String,
    instance: Option<String>,
    last_status: String,
    desired_status: String,
    started_by: Option<String>,
    group: Option<String>,
    task_definition: String,
    stopped_reason: Option<String>,
    containers: Vec<String>,
}

fn task_view(side: &Scripted, t: &Task) -> TaskView {
    TaskView {
        cluster: resource(&t.cluster_arn),
        instance: t.container_instance_arn.as_deref().map(|a| side.label(a)),
        last_status: t.last_status.clone(),
        desired_status: t.desired_status.clone(),
        started_by: t.started_by.clone(),
        group: t.group.clone(),
        task_definition: resource(&t.task_definition_arn),
        stopped_reason: t.stopped_reason.clone(),
        containers: t.containers.iter().map(|c| c.name.clone()).collect(),
    }
}

fn cluster_view(c: &ClusterDescription) -> (String, String, String) {
    (resource(&c.cluster_arn), c.cluster_name.clone(), c.status.clone())
}

fn failure_view(side: &Scripted, f: &Failure) -> (Option<String>, String) {
    (f.arn.as_deref().map(|a| side.label(a)), f.reason.clone())
}

fn task_definition_view(td: &TaskDefinitionDescription) -> TaskDefinitionDescription {
    TaskDefinitionDescription {
        arn: resource(&td.arn),
        ..td.clone()
    }
}

// ---- what both answer alike ----------------------------------------------------------------------

#[tokio::test]
async fn listings_match_moto_clusters_instances_without_inactive_and_tasks_by_desired_status() {
    let (moto, sim) = scripted().await;
    let mut seen = Vec::new();
    for side in [&moto, &sim] {
        let api = side.api();
        let clusters: BTreeSet<String> = api
            .list_clusters()
            .await
            .unwrap()
            .iter()
            .map(|c| resource(c))
            .collect();
        let instances = side.labels(&api.list_container_instances(CLUSTER).await.unwrap());
        let spare = side.labels(&api.list_container_instances(SPARE).await.unwrap());
        let running = side.labels(&api.list_tasks(CLUSTER, DesiredStatus::Running).await.unwrap());
        let stopped = side.labels(&api.list_tasks(CLUSTER, DesiredStatus::Stopped).await.unwrap());
        let spare_tasks = api.list_tasks(SPARE, DesiredStatus::Running).await.unwrap();
        seen.push((
            side.name(),
            clusters,
            instances,
            spare,
            running,
            stopped,
            spare_tasks,
        ));
    }
    let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let expected = (
        set(&["cluster/parity", "cluster/spare"]),
        // i3 was deregistered: ListContainerInstances leaves INACTIVE out.
        set(&["i0", "i1", "i2"]),
        BTreeSet::new(),
        set(&["t1", "t2"]),
        set(&["t0"]),
        Vec::<String>::new(),
    );
    for (name, clusters, instances, spare, running, stopped, spare_tasks) in seen {
        assert_eq!(
            (clusters, instances, spare, running, stopped, spare_tasks),
            expected,
            "{name}"
        );
    }
}

#[tokio::test]
async fn described_instances_match_moto_status_resources_task_counts_and_cluster() {
    let (moto, sim) = scripted().await;
    let mut views = Vec::new();
    for side in [&moto, &sim] {
        let arns = side.api().list_container_instances(CLUSTER).await.unwrap();
        let described = side
            .api()
            .describe_container_instances(CLUSTER, &arns)
            .await
            .unwrap();
        let view: BTreeMap<String, InstanceView> = described
            .iter()
            .map(|i| (side.label(&i.container_instance_arn), instance_view(i)))
            .collect();
        views.push(view);
    }
    assert_eq!(views[0], views[1], "moto (left) and the simulator (right)");

    let reserved = "22,2375,2376,51678,51679";
    let res = |cpu: i64, memory: i64, ports: &str| {
        BTreeMap::from([
            ("CPU".to_owned(), cpu.to_string()),
            ("MEMORY".to_owned(), memory.to_string()),
            ("PORTS".to_owned(), ports.to_owned()),
            ("PORTS_UDP".to_owned(), String::new()),
        ])
    };
    let busy = res(CPU - 1024, MEMORY - 3000, "22,2375,2376,8080,51678,51679");
    let view = |status: &str, remaining: &BTreeMap<String, String>, running: i64| InstanceView {
        // DescribeContainerInstances has no clusterArn (in ECS as in moto): SdkEcs derives it from
        // the cluster asked about, the simulator knows it.
        cluster: "cluster/parity".into(),
        status: status.into(),
        agent_connected: true,
        has_ec2_instance_id: true,
        registered: res(CPU, MEMORY, reserved),
        remaining: remaining.clone(),
        running_tasks: Some(running),
        pending_tasks: Some(0),
    };
    let expected = BTreeMap::from([
        // t0 stopped: its resources and port are back.
        ("i0".to_owned(), view("ACTIVE", &res(CPU, MEMORY, reserved), 0)),
        // Draining stops no standalone task.
        ("i1".to_owned(), view("DRAINING", &busy, 1)),
        ("i2".to_owned(), view("ACTIVE", &busy, 1)),
    ]);
    assert_eq!(views[1], expected);
}

#[tokio::test]
async fn instance_attributes_both_set_match_moto() {
    let (moto, sim) = scripted().await;
    let moto_attributes = attributes(&moto.instance(2).await.unwrap());
    let sim_attributes = attributes(&sim.instance(2).await.unwrap());
    let both: BTreeMap<_, _> = moto_attributes
        .iter()
        .filter(|(name, _)| sim_attributes.contains_key(*name))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let on_sim: BTreeMap<_, _> = sim_attributes
        .iter()
        .filter(|(name, _)| moto_attributes.contains_key(*name))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(both, on_sim);
    let names: Vec<&str> = both.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "ecs.ami-id",
            "ecs.availability-zone",
            "ecs.instance-type",
            "ecs.os-type",
            "stack"
        ]
    );
    assert_eq!(both["stack"].as_deref(), Some("blue"));
    // Only i2 got the custom attribute.
    for side in [&moto, &sim] {
        let i0 = attributes(&side.instance(0).await.unwrap());
        assert!(!i0.contains_key("stack"), "{}: {i0:?}", side.name());
    }
}

#[tokio::test]
async fn described_tasks_match_moto_statuses_started_by_group_definition_and_instance() {
    let (moto, sim) = scripted().await;
    let mut views = Vec::new();
    for side in [&moto, &sim] {
        let described = side.api().describe_tasks(CLUSTER, &side.tasks).await.unwrap();
        let view: BTreeMap<String, TaskView> = described
            .iter()
            .map(|t| (side.label(&t.task_arn), task_view(side, t)))
            .collect();
        views.push(view);
    }
    assert_eq!(views[0], views[1], "moto (left) and the simulator (right)");
    let view = |instance: &str, status: &str, reason: Option<&str>| TaskView {
        cluster: "cluster/parity".into(),
        instance: Some(instance.into()),
        last_status: status.into(),
        desired_status: status.into(),
        started_by: Some(STARTED_BY.into()),
        group: Some(GROUP.into()),
        task_definition: "task-definition/web:1".into(),
        stopped_reason: reason.map(str::to_owned),
        containers: vec!["app".into()],
    };
    let expected = BTreeMap::from([
        ("t0".to_owned(), view("i0", "STOPPED", Some("scaled in"))),
        ("t1".to_owned(), view("i1", "RUNNING", None)),
        ("t2".to_owned(), view("i2", "RUNNING", None)),
    ]);
    assert_eq!(views[1], expected);

    // Unknown tasks are left out of the answer by both.
    for side in [&moto, &sim] {
        let unknown = side.tasks[0].rsplit_once('/').unwrap().0.to_owned() + "/0123456789abcdef";
        let found = side
            .api()
            .describe_tasks(CLUSTER, &[unknown, side.tasks[1].clone()])
            .await
            .unwrap();
        assert_eq!(
            side.labels(&found.iter().map(|t| t.task_arn.clone()).collect::<Vec<_>>()),
            BTreeSet::from(["t1".to_owned()]),
            "{}",
            side.name()
        );
    }
}

#[tokio::test]
async fn start_and_stop_answers_match_moto_but_for_the_lifecycle() {
    let (moto, sim) = scripted().await;
    let mut views = Vec::new();
    for side in [&moto, &sim] {
        let started: Vec<(String, TaskView)> = side
            .started
            .tasks
            .iter()
            .map(|t| {
                let mut v = task_view(side, t);
                // Where the task is in its lifecycle: see the `…_where_moto_differs_…` tests.
                v.last_status = String::new();
                (side.label(&t.task_arn), v)
            })
            .collect();
        let mut stopped = task_view(side, &side.stopped);
        stopped.last_status = String::new();
        views.push((started, side.label(&side.stopped.task_arn), stopped));
    }
    assert_eq!(views[0], views[1], "moto (left) and the simulator (right)");
    let (started, stopped_label, stopped) = &views[1];
    assert_eq!(
        started
            .iter()
            .map(|(t, v)| (t.as_str(), v.instance.as_deref(), v.desired_status.as_str()))
            .collect::<Vec<_>>(),
        [
            ("t0", Some("i0"), "RUNNING"),
            ("t1", Some("i1"), "RUNNING"),
            ("t2", Some("i2"), "RUNNING")
        ]
    );
    assert_eq!(stopped_label, "t0");
    assert_eq!(
        (stopped.desired_status.as_str(), stopped.stopped_reason.as_deref()),
        ("STOPPED", Some("scaled in"))
    );
}

/// The bare id at the end of an ARN.
fn id(arn: &str) -> String {
    arn.rsplit('/').next().unwrap_or(arn).to_owned()
}

#[tokio::test]
async fn references_by_bare_id_match_moto() {
    let (moto, sim) = scripted().await;
    let mut seen = Vec::new();
    for side in [&moto, &sim] {
        let api = side.api();
        let instances = api
            .describe_container_instances(CLUSTER, &[id(&side.instances[2])])
            .await
            .unwrap();
        let tasks = api.describe_tasks(CLUSTER, &[id(&side.tasks[1])]).await.unwrap();
        let stopped = api
            .stop_task(CLUSTER, &id(&side.tasks[2]), "by id")
            .await
            .unwrap();
        let started = side.start("web:2", vec![id(&side.instances[0])]).await.unwrap();
        seen.push((
            instances
                .iter()
                .map(|i| side.label(&i.container_instance_arn))
                .collect::<Vec<_>>(),
            tasks.iter().map(|t| side.label(&t.task_arn)).collect::<Vec<_>>(),
            (side.label(&stopped.task_arn), stopped.desired_status),
            started
                .tasks
                .iter()
                .map(|t| t.container_instance_arn.as_deref().map(|i| side.label(i)))
                .collect::<Vec<_>>(),
            started.failures.len(),
        ));
    }
    assert_eq!(seen[0], seen[1], "moto (left) and the simulator (right)");
    assert_eq!(
        seen[1],
        (
            vec!["i2".to_owned()],
            vec!["t1".to_owned()],
            ("t2".to_owned(), "STOPPED".to_owned()),
            vec![Some("i0".to_owned())],
            0
        )
    );
}

/// ListTasks' filters besides the desired status (not part of blox's traits: asked of both directly).
#[tokio::test]
async fn list_tasks_filters_match_moto_started_by_instance_and_family() {
    let (moto, sim) = scripted().await;
    // (desiredStatus, startedBy, containerInstance (script index), family)
    type Filter = (
        &'static str,
        Option<&'static str>,
        Option<usize>,
        Option<&'static str>,
    );
    let filters: [Filter; 5] = [
        ("RUNNING", Some(STARTED_BY), None, None),
        ("RUNNING", Some("somebody-else"), None, None),
        ("RUNNING", None, Some(1), None),
        ("STOPPED", None, None, Some("web")),
        ("RUNNING", None, None, Some("other")),
    ];
    let mut seen = Vec::new();
    for side in [&moto, &sim] {
        let mut listed = Vec::new();
        for (desired, started_by, instance, family) in filters {
            let instance = instance.map(|n| side.instances[n].clone());
            let arns = match &side.backend {
                Backend::Moto { fx, .. } => fx
                    .ecs
                    .list_tasks()
                    .cluster(CLUSTER)
                    .desired_status(desired.into())
                    .set_started_by(started_by.map(str::to_owned))
                    .set_container_instance(instance)
                    .set_family(family.map(str::to_owned))
                    .send()
                    .await
                    .unwrap()
                    .task_arns()
                    .to_vec(),
                Backend::Sim { sim } => {
                    let filter = TaskFilter {
                        desired_status: Some(desired.into()),
                        started_by: started_by.map(str::to_owned),
                        container_instance: instance,
                        family: family.map(str::to_owned),
                    };
                    sim.read(|ecs| ecs.list_tasks(CLUSTER, &filter, None, None, sim.now_ms()))
                        .unwrap()
                        .arns
                }
            };
            listed.push(side.labels(&arns));
        }
        seen.push(listed);
    }
    assert_eq!(seen[0], seen[1], "moto (left) and the simulator (right)");
    let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        seen[1],
        [set(&["t1", "t2"]), set(&[]), set(&["t1"]), set(&["t0"]), set(&[])]
    );
}

/// What a scheduler asks to settle a start whose answer was lost, through the trait: the tasks a
/// startedBy started on one instance, stopped ones included.
#[tokio::test]
async fn list_started_tasks_matches_moto_running_and_stopped() {
    let (moto, sim) = scripted().await;
    // (startedBy, instance (script index))
    let asked = [
        (STARTED_BY, 0),
        (STARTED_BY, 1),
        (STARTED_BY, 2),
        (STARTED_BY, 3),
        ("somebody-else", 1),
    ];
    let mut seen = Vec::new();
    for side in [&moto, &sim] {
        let mut listed = Vec::new();
        for (started_by, instance) in asked {
            let arns = side
                .api()
                .list_started_tasks(CLUSTER, started_by, &side.instances[instance])
                .await
                .unwrap();
            assert_eq!(arns.len(), side.labels(&arns).len(), "{}: each once", side.name());
            listed.push(side.labels(&arns));
        }
        seen.push(listed);
    }
    assert_eq!(seen[0], seen[1], "moto (left) and the simulator (right)");
    let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        seen[1],
        [set(&["t0"]), set(&["t1"]), set(&["t2"]), set(&[]), set(&[])]
    );
}

/// A definition with a container health check says so on both.
#[tokio::test]
async fn described_health_checks_match_moto() {
    let (moto, sim) = scripted().await;
    let mut views = Vec::new();
    for side in [&moto, &sim] {
        match &side.backend {
            Backend::Moto { fx, .. } => {
                fx.register_health_checked_task_definition("checked")
                    .await
                    .unwrap();
            }
            Backend::Sim { sim } => {
                let container = SimContainer {
                    name: "app".into(),
                    cpu: 128,
                    memory: Some(128),
                    essential: true,
                    host_ports: Vec::new(),
                    health_check: Some(SimHealthCheck {
                        healthy_after_ms: 10_000,
                    }),
                    fault: None,
                };
                sim.write(|ecs, _| ecs.register_task_definition("checked", None, None, vec![container]))
                    .unwrap();
            }
        }
        let checked = side.api().describe_task_definition("checked").await.unwrap();
        let unchecked = side.api().describe_task_definition("web:1").await.unwrap();
        let checks = |td: &TaskDefinitionDescription| {
            let each: Vec<bool> = td.containers.iter().map(|c| c.health_check).collect();
            (each, td.has_health_checks())
        };
        views.push((checks(&checked), checks(&unchecked)));
    }
    assert_eq!(views[0], views[1], "moto (left) and the simulator (right)");
    assert_eq!(views[1], ((vec![true], true), (vec![false], false)));
}

#[tokio::test]
async fn start_task_without_group_defaults_to_the_family_like_moto() {
    let (moto, sim) = scripted().await;
    for side in [&moto, &sim] {
        let started = side
            .start("web:2", vec![side.instances[0].clone()])
            .await
            .unwrap();
        assert_eq!(started.failures, Vec::new(), "{}", side.name());
        let [task] = &started.tasks[..] else {
            panic!("{}: {started:?}", side.name())
        };
        assert_eq!(
            (
                task.group.as_deref(),
                task.started_by.as_deref(),
                resource(&task.task_definition_arn).as_str()
            ),
            (Some("family:web"), None, "task-definition/web:2"),
            "{}",
            side.name()
        );
    }
}

#[tokio::test]
async fn describe_clusters_matches_moto_names_status_and_missing_failures() {
    let (moto, sim) = scripted().await;
    let mut views = Vec::new();
    for side in [&moto, &sim] {
        let asked = vec![
            CLUSTER.to_owned(),
            "nowhere".to_owned(),
            // By ARN, in the backend's own account.
            format!(
                "{}cluster/{SPARE}",
                side.web_1.split("task-definition/").next().unwrap()
            ),
        ];
        let (clusters, failures) = side.api().describe_clusters(&asked).await.unwrap();
        views.push((
            clusters.iter().map(cluster_view).collect::<Vec<_>>(),
            failures.iter().map(|f| failure_view(side, f)).collect::<Vec<_>>(),
        ));
    }
    assert_eq!(views[0], views[1], "moto (left) and the simulator (right)");
    let cluster = |name: &str| (format!("cluster/{name}"), name.to_owned(), "ACTIVE".to_owned());
    assert_eq!(
        views[1],
        (
            vec![cluster(CLUSTER), cluster(SPARE)],
            vec![(Some("cluster/nowhere".to_owned()), "MISSING".to_owned())]
        )
    );
}

#[tokio::test]
async fn describe_task_definition_matches_moto_by_family_revision_and_arn() {
    let (moto, sim) = scripted().await;
    let mut views = Vec::new();
    for side in [&moto, &sim] {
        let api = side.api();
        let latest = api.describe_task_definition("web").await.unwrap();
        let first = api.describe_task_definition("web:1").await.unwrap();
        let by_arn = api.describe_task_definition(&side.web_2).await.unwrap();
        assert_eq!(first.arn, side.web_1, "{}", side.name());
        assert_eq!(by_arn, latest, "{}", side.name());
        views.push((task_definition_view(&latest), task_definition_view(&first)));
    }
    assert_eq!(views[0], views[1], "moto (left) and the simulator (right)");
    let web = |revision: i64, cpu: i64, memory: i64, ports: Vec<i64>| TaskDefinitionDescription {
        arn: format!("task-definition/web:{revision}"),
        family: "web".into(),
        revision,
        status: "ACTIVE".into(),
        cpu: Some(cpu),
        memory: Some(memory),
        containers: vec![blox_aws::ContainerDefinition {
            name: "app".into(),
            cpu,
            memory: Some(memory),
            essential: true,
            host_ports: ports,
            health_check: false,
        }],
    };
    assert_eq!(
        views[1],
        (web(2, 512, 1024, vec![]), web(1, 1024, 3000, vec![8080]))
    );
}

#[tokio::test]
async fn errors_match_moto_for_unknown_cluster_and_task_definition() {
    let (moto, sim) = scripted().await;
    let mut seen = Vec::new();
    for side in [&moto, &sim] {
        let api = side.api();
        let task = side.tasks[1].clone();
        let instance = side.instances[0].clone();
        let start = |cluster: &str, task_definition: &str| StartTask {
            cluster: cluster.into(),
            task_definition: task_definition.into(),
            container_instances: vec![instance.clone()],
            started_by: None,
            group: None,
        };
        let outcomes = vec![
            (
                "ListTasks",
                api.list_tasks("nowhere", DesiredStatus::Running)
                    .await
                    .map(|_| ()),
            ),
            (
                "DescribeTasks",
                api.describe_tasks("nowhere", std::slice::from_ref(&task))
                    .await
                    .map(|_| ()),
            ),
            (
                "DescribeContainerInstances",
                api.describe_container_instances("nowhere", std::slice::from_ref(&instance))
                    .await
                    .map(|_| ()),
            ),
            (
                "StartTask cluster",
                api.start_task(&start("nowhere", "web:1")).await.map(|_| ()),
            ),
            ("StopTask", api.stop_task("nowhere", &task, "x").await.map(|_| ())),
            (
                "StartTask family",
                api.start_task(&start(CLUSTER, "nothing")).await.map(|_| ()),
            ),
            (
                "StartTask revision",
                api.start_task(&start(CLUSTER, "web:9")).await.map(|_| ()),
            ),
            (
                "DescribeTaskDefinition family",
                api.describe_task_definition("nothing").await.map(|_| ()),
            ),
            (
                "DescribeTaskDefinition revision",
                api.describe_task_definition("web:9").await.map(|_| ()),
            ),
        ];
        let kinds: Vec<(&str, String)> = outcomes
            .into_iter()
            .map(|(call, outcome)| (call, outcome.map_or_else(|e| error_kind(&e), |()| "Ok".into())))
            .collect();
        seen.push(kinds);
    }
    assert_eq!(seen[0], seen[1], "moto (left) and the simulator (right)");
    let not_found = "ClusterNotFound".to_owned();
    let client = "Rejected:ClientException".to_owned();
    assert_eq!(
        seen[1].iter().map(|(_, k)| k.clone()).collect::<Vec<_>>(),
        [
            not_found.clone(),
            not_found.clone(),
            not_found.clone(),
            not_found.clone(),
            not_found,
            client.clone(),
            client.clone(),
            client.clone(),
            client
        ]
    );
}

// ---- where moto is wrong: the simulator does what ECS documents ------------------------------------

/// ECS: every task and container instance carries `version`, raised on every change (what the event
/// feed's ordering rests on). moto has none (the SDK reads 0).
#[tokio::test]
async fn versions_rise_with_every_change_where_moto_differs_reporting_none() {
    let (moto, sim) = scripted().await;
    for n in 0..3 {
        assert_eq!(moto.task(n).await.version, 0);
        assert_eq!(moto.instance(n).await.unwrap().version, 0);
    }
    let started = sim.started.tasks[0].version;
    let stopping = sim.stopped.version;
    let stopped = sim.task(0).await.version;
    assert!(started >= 1, "{started}");
    assert!(
        started < stopping && stopping < stopped,
        "{started} {stopping} {stopped}"
    );
    let running = sim.task(1).await.version;
    assert!(running > sim.started.tasks[1].version);

    let before = sim.instance(0).await.unwrap().version;
    assert!(before >= 1);
    sim.backend.drain(CLUSTER, &sim.instances[0]).await;
    assert!(sim.instance(0).await.unwrap().version > before);
}

/// ECS: ListTasks takes `startedBy` with no other filter but the desired status ("it must be the only
/// filter that you use"; InvalidParameterException "cannot specify startedBy with other
/// arguments"). moto combines any filters.
#[tokio::test]
async fn list_tasks_refuses_started_by_with_other_filters_where_moto_differs_combining_them() {
    let (moto, sim) = scripted().await;
    let simulator = sim.backend.simulator();
    let on_i1 = TaskFilter {
        started_by: Some(STARTED_BY.into()),
        container_instance: Some(sim.instances[1].clone()),
        ..TaskFilter::default()
    };
    let of_web = TaskFilter {
        started_by: Some(STARTED_BY.into()),
        family: Some("web".into()),
        ..TaskFilter::default()
    };
    let alone = TaskFilter {
        started_by: Some(STARTED_BY.into()),
        desired_status: Some("STOPPED".into()),
        ..TaskFilter::default()
    };
    let list = |filter: &TaskFilter| {
        simulator.read(|ecs| ecs.list_tasks(CLUSTER, filter, None, None, simulator.now_ms()))
    };
    for refused in [&on_i1, &of_web] {
        let answer = list(refused);
        assert!(
            matches!(&answer, Err(SimError::Rejected { code: "InvalidParameterException", message })
                if message == "cannot specify startedBy with other arguments"),
            "{refused:?}: {answer:?}"
        );
    }
    assert_eq!(
        sim.labels(&list(&alone).unwrap().arns),
        BTreeSet::from(["t0".into()])
    );

    let ecs = &moto.backend.fx().ecs;
    let combined = ecs
        .list_tasks()
        .cluster(CLUSTER)
        .started_by(STARTED_BY)
        .container_instance(&moto.instances[1])
        .send()
        .await
        .unwrap();
    assert_eq!(moto.labels(combined.task_arns()), BTreeSet::from(["t1".into()]));
    let combined = ecs
        .list_tasks()
        .cluster(CLUSTER)
        .started_by(STARTED_BY)
        .family("web")
        .desired_status("RUNNING".into())
        .send()
        .await
        .unwrap();
    assert_eq!(
        moto.labels(combined.task_arns()),
        BTreeSet::from(["t1".into(), "t2".into()])
    );
}

/// ECS: without a health check a container's and its task's `healthStatus` is UNKNOWN. moto reports
/// every container HEALTHY and gives the task no health at all.
#[tokio::test]
async fn health_is_unknown_without_checks_where_moto_differs_reporting_containers_healthy() {
    let (moto, sim) = scripted().await;
    let health = |t: &Task| {
        (
            t.health_status.clone(),
            t.containers
                .iter()
                .map(|c| c.health_status.clone())
                .collect::<Vec<_>>(),
        )
    };
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        health(&sim.task(1).await),
        (some("UNKNOWN"), vec![some("UNKNOWN")])
    );
    assert_eq!(health(&moto.task(1).await), (None, vec![some("HEALTHY")]));
}

/// ECS's task lifecycle: StartTask answers PROVISIONING or PENDING, RUNNING comes later and sets
/// `startedAt`. moto starts tasks RUNNING at once, with no `createdAt` or `startedAt`, and its
/// StartTask leaves `launchType` empty.
#[tokio::test]
async fn start_task_answers_tasks_not_yet_running_where_moto_differs_starting_them_running() {
    let (moto, sim) = scripted().await;
    for t in &moto.started.tasks {
        assert_eq!(t.last_status, "RUNNING");
        assert_eq!(
            (&t.created_at, &t.started_at, &t.launch_type),
            (&None, &None, &None)
        );
    }
    for t in &sim.started.tasks {
        assert!(
            ["PROVISIONING", "PENDING"].contains(&t.last_status.as_str()),
            "{}",
            t.last_status
        );
        assert_eq!(t.desired_status, "RUNNING");
        assert!(t.created_at.is_some() && t.started_at.is_none(), "{t:?}");
        assert_eq!(t.launch_type.as_deref(), Some("EC2"));
    }
    // The simulator's steps, one at a time.
    let side = &sim.backend;
    let task = side
        .api()
        .start_task(&StartTask {
            cluster: CLUSTER.into(),
            task_definition: "web:2".into(),
            container_instances: vec![sim.instances[0].clone()],
            started_by: None,
            group: None,
        })
        .await
        .unwrap()
        .tasks
        .remove(0);
    let simulator = side.simulator();
    let mut statuses = vec![task.last_status.clone()];
    for _ in 0..20 {
        simulator.clock().advance(Duration::from_millis(100));
        simulator.tick();
        let now = side
            .api()
            .describe_tasks(CLUSTER, std::slice::from_ref(&task.task_arn))
            .await
            .unwrap()
            .remove(0);
        if statuses.last() != Some(&now.last_status) {
            statuses.push(now.last_status.clone());
        }
        if now.last_status == "RUNNING" {
            assert!(now.started_at.is_some());
        }
    }
    assert_eq!(statuses, ["PROVISIONING", "PENDING", "RUNNING"]);
}

/// ECS: StopTask sets desiredStatus STOPPED; lastStatus follows once the containers have exited
/// (after the stop timeout at most), with `stoppedAt`. moto stops the task at once.
#[tokio::test]
async fn stop_task_leaves_the_task_stopping_where_moto_differs_stopping_it_at_once() {
    let (moto, sim) = scripted().await;
    assert_eq!(
        (
            moto.stopped.desired_status.as_str(),
            moto.stopped.last_status.as_str()
        ),
        ("STOPPED", "STOPPED")
    );
    assert_eq!(moto.stopped.stopped_at, None);
    assert_eq!(
        (
            sim.stopped.desired_status.as_str(),
            sim.stopped.last_status.as_str()
        ),
        ("STOPPED", "RUNNING")
    );
    let stopped = sim.task(0).await;
    assert_eq!(stopped.last_status, "STOPPED");
    assert!(stopped.stopped_at.is_some());
    // Until the containers exit, the task still holds its instance's resources.
    let t1 = sim.tasks[1].clone();
    let stopping = sim.api().stop_task(CLUSTER, &t1, "later").await.unwrap();
    assert_eq!(stopping.last_status, "RUNNING");
    let i1 = instance_view(&sim.instance(1).await.unwrap());
    assert_eq!(i1.remaining["MEMORY"], (MEMORY - 3000).to_string());
    sim.backend.settle();
    let i1 = instance_view(&sim.instance(1).await.unwrap());
    assert_eq!(i1.remaining["MEMORY"], MEMORY.to_string());
}

/// ECS: stopping a stopped task is allowed and changes nothing. moto gives the task's CPU and memory
/// back a second time, then fails (HTTP 500) giving back its host port.
#[tokio::test]
async fn stopping_a_stopped_task_changes_nothing_where_moto_differs_failing_with_http_500() {
    let (moto, sim) = scripted().await;
    let before = sim.task(0).await;
    let again = sim
        .api()
        .stop_task(CLUSTER, &sim.tasks[0], "again")
        .await
        .unwrap();
    assert_eq!(again, before);
    assert_eq!(sim.task(0).await, before);

    let err = moto
        .api()
        .stop_task(CLUSTER, &moto.tasks[0], "again")
        .await
        .unwrap_err();
    assert_eq!(error_kind(&err), "Other", "{err}");
    // CPU given back again (once per attempt: the SDK retries the 500), more than the instance has.
    let i0 = instance_view(&moto.instance(0).await.unwrap());
    let remaining: i64 = i0.remaining["CPU"].parse().unwrap();
    assert!(remaining > CPU, "{remaining}");
}

/// ECS: StopTask of a task it does not know is `InvalidParameterException` ("The referenced task was
/// not found"). moto fails with HTTP 500.
#[tokio::test]
async fn stop_task_of_an_unknown_task_is_rejected_where_moto_differs_failing_with_http_500() {
    let (moto, sim) = scripted().await;
    for (side, want) in [(&sim, "Rejected:InvalidParameterException"), (&moto, "Other")] {
        let unknown = side.tasks[0].rsplit_once('/').unwrap().0.to_owned() + "/0123456789abcdef";
        let err = side.api().stop_task(CLUSTER, &unknown, "x").await.unwrap_err();
        assert_eq!(error_kind(&err), want, "{}: {err}", side.name());
    }
}

/// ECS: StartTask answers an instance it does not know with a `MISSING` failure and starts the tasks
/// it can. moto fails the whole call with HTTP 500.
#[tokio::test]
async fn start_task_reports_an_unknown_instance_missing_where_moto_differs_failing_with_http_500() {
    let (moto, sim) = scripted().await;
    let unknown = |side: &Scripted| side.instances[0].rsplit_once('/').unwrap().0.to_owned() + "/0123abcd";
    let sim_unknown = unknown(&sim);
    let started = sim
        .start("web:2", vec![sim_unknown.clone(), sim.instances[0].clone()])
        .await
        .unwrap();
    assert_eq!(
        started.failures,
        [Failure {
            arn: Some(sim_unknown),
            reason: "MISSING".into(),
            detail: None
        }]
    );
    assert_eq!(started.tasks.len(), 1);
    assert_eq!(
        started.tasks[0].container_instance_arn.as_ref(),
        Some(&sim.instances[0])
    );

    let err = moto.start("web:2", vec![unknown(&moto)]).await.unwrap_err();
    assert_eq!(error_kind(&err), "Other", "{err}");
}

/// ECS: StartTask places a task only where its CPU, memory and host ports fit (`RESOURCE:CPU`,
/// `RESOURCE:MEMORY`, `RESOURCE:PORTS` failures). moto checks nothing and overcommits the instance.
#[tokio::test]
async fn start_task_checks_resources_where_moto_differs_overcommitting_the_instance() {
    let (moto, sim) = scripted().await;
    let mut sizes = Vec::new();
    for side in [&moto, &sim] {
        // i2 runs t2 (1024 CPU, 3000 MiB, port 8080): 3072 CPU and 4482 MiB are left.
        side.backend
            .register_task_definition("big", 1024, 7000, false, None)
            .await;
        side.backend
            .register_task_definition("hog", CPU, 512, false, None)
            .await;
        let mut failures = Vec::new();
        let mut tasks = 0;
        for family in ["big", "hog", "web:1"] {
            let started = side.start(family, vec![side.instances[2].clone()]).await.unwrap();
            failures.extend(started.failures.iter().map(|f| failure_view(side, f)));
            tasks += started.tasks.len();
        }
        let i2 = instance_view(&side.instance(2).await.unwrap());
        sizes.push((
            failures,
            tasks,
            i2.remaining["CPU"].clone(),
            i2.remaining["MEMORY"].clone(),
        ));
    }
    let failure = |reason: &str| (Some("i2".to_owned()), reason.to_owned());
    assert_eq!(
        sizes[1],
        (
            vec![
                failure("RESOURCE:MEMORY"),
                failure("RESOURCE:CPU"),
                failure("RESOURCE:PORTS")
            ],
            0,
            (CPU - 1024).to_string(),
            (MEMORY - 3000).to_string()
        )
    );
    // moto: three more tasks, remaining CPU and memory below zero.
    assert_eq!(
        sizes[0],
        (
            vec![],
            3,
            (CPU - 1024 - 1024 - CPU - 1024).to_string(),
            (MEMORY - 3000 - 7000 - 512 - 3000).to_string()
        )
    );
}

/// ECS: a DRAINING instance gets no new tasks ("Amazon ECS prevents new tasks from being scheduled
/// for placement on the container instance", UpdateContainerInstancesState). moto starts them.
#[tokio::test]
async fn start_task_refuses_a_draining_instance_where_moto_differs_starting_on_it() {
    let (moto, sim) = scripted().await;
    let started = sim.start("web:2", vec![sim.instances[1].clone()]).await.unwrap();
    assert_eq!(started.tasks, Vec::new());
    assert_eq!(
        started
            .failures
            .iter()
            .map(|f| failure_view(&sim, f))
            .collect::<Vec<_>>(),
        [(Some("i1".to_owned()), "DRAINING".to_owned())]
    );
    let started = moto
        .start("web:2", vec![moto.instances[1].clone()])
        .await
        .unwrap();
    assert_eq!((started.tasks.len(), started.failures.len()), (1, 0));
}

/// ECS: StartTask takes at most 10 container instances. moto accepts any number (SdkEcs refuses more
/// than 10 before calling, so moto is asked directly here).
#[tokio::test]
async fn start_task_of_more_than_ten_instances_is_rejected_where_moto_differs_accepting_any_number() {
    let (moto, sim) = scripted().await;
    let sim_extra = sim.backend.register_instances(SPARE, 11).await;
    let err = sim
        .api()
        .start_task(&StartTask {
            cluster: SPARE.into(),
            task_definition: "web:2".into(),
            container_instances: sim_extra,
            started_by: None,
            group: None,
        })
        .await
        .unwrap_err();
    assert_eq!(error_kind(&err), "Rejected:InvalidParameterException", "{err}");
    assert_eq!(
        sim.api().list_tasks(SPARE, DesiredStatus::Running).await.unwrap(),
        Vec::<String>::new()
    );

    let moto_extra = moto.backend.register_instances(SPARE, 11).await;
    let out = moto
        .backend
        .fx()
        .ecs
        .start_task()
        .cluster(SPARE)
        .task_definition("web:2")
        .set_container_instances(Some(moto_extra))
        .send()
        .await
        .unwrap();
    assert_eq!((out.tasks().len(), out.failures().len()), (11, 0));
}

/// ECS: a deregistered instance is INACTIVE: left out of ListContainerInstances, still described.
/// moto forgets it (DescribeContainerInstances answers MISSING).
#[tokio::test]
async fn deregistered_instance_stays_described_as_inactive_where_moto_differs_forgetting_it() {
    let (moto, sim) = scripted().await;
    let i3 = sim.instance(3).await.expect("i3 described");
    assert_eq!((i3.status.as_str(), i3.agent_connected), ("INACTIVE", false));
    assert_eq!(moto.instance(3).await, None);
}

/// ECS: a cluster counts its registered (not INACTIVE) instances and its RUNNING and PENDING tasks.
/// moto never decrements `registeredContainerInstancesCount`, and StartTask does not count its tasks
/// while StopTask uncounts them (running -1 here).
#[tokio::test]
async fn cluster_counts_follow_instances_and_tasks_where_moto_differs_miscounting_them() {
    let (moto, sim) = scripted().await;
    let counts = |c: &ClusterDescription| {
        (
            c.registered_container_instances_count,
            c.running_tasks_count,
            c.pending_tasks_count,
        )
    };
    let (clusters, _) = sim.api().describe_clusters(&[CLUSTER.into()]).await.unwrap();
    assert_eq!(counts(&clusters[0]), (3, 2, 0));
    let (clusters, _) = moto.api().describe_clusters(&[CLUSTER.into()]).await.unwrap();
    assert_eq!(counts(&clusters[0]), (4, -1, 0));
}

/// ECS: ListContainerInstances of an unknown cluster is ClusterNotFoundException, as every other
/// call naming a cluster. moto lists nothing.
#[tokio::test]
async fn list_container_instances_of_an_unknown_cluster_fails_where_moto_differs_listing_none() {
    let (moto, sim) = scripted().await;
    let err = sim.api().list_container_instances("nowhere").await.unwrap_err();
    assert_eq!(error_kind(&err), "ClusterNotFound", "{err}");
    assert_eq!(
        moto.api().list_container_instances("nowhere").await.unwrap(),
        Vec::<String>::new()
    );
}

/// ECS: the agent's `totalResources` and attributes are what the instance is registered with. moto
/// ignores both (4096 CPU, 7482 MiB and its own built-in attributes for every instance).
#[tokio::test]
async fn registration_keeps_reported_resources_and_attributes_where_moto_differs_ignoring_them() {
    let (moto, sim) = scripted().await;
    let reported = [("ecs.os-type", "linux"), ("rack", "r7")];
    let moto_arn = moto
        .backend
        .fx()
        .register_instance_reporting(SPARE, 2048, 3891, &reported)
        .await
        .unwrap();
    let simulator = sim.backend.simulator();
    let new = NewInstance {
        ec2_instance_id: None,
        cpu: 2048,
        memory: 3891,
        attributes: reported.iter().map(|(n, v)| attribute(n, v)).collect(),
    };
    let sim_arn = simulator
        .write(|ecs, now| ecs.register_container_instance(SPARE, new, now))
        .unwrap()
        .container_instance_arn
        .clone();
    let mut seen = Vec::new();
    for (side, arn) in [(&moto, moto_arn), (&sim, sim_arn)] {
        let described = side
            .api()
            .describe_container_instances(SPARE, &[arn])
            .await
            .unwrap()
            .remove(0);
        let registered = resources(&described.registered_resources);
        let attributes = attributes(&described);
        seen.push((
            registered["CPU"].clone(),
            registered["MEMORY"].clone(),
            attributes.get("ecs.os-type").cloned().flatten(),
            attributes.get("rack").cloned().flatten(),
        ));
    }
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(seen[1], ("2048".into(), "3891".into(), some("linux"), some("r7")));
    assert_eq!(
        seen[0],
        (CPU.to_string(), MEMORY.to_string(), some("windows"), None)
    );
}

/// ECS: a task's containers follow it (RUNNING with it, STOPPED with it), have container ARNs and the
/// host ports they bind. moto keeps them PENDING forever, names them under the task definition's ARN
/// and reports no network bindings.
#[tokio::test]
async fn containers_follow_their_task_where_moto_differs_keeping_them_pending_without_bindings() {
    let (moto, sim) = scripted().await;
    let container = |t: &Task| {
        let [c] = &t.containers[..] else { panic!("{t:?}") };
        (
            c.last_status.clone(),
            resource(&c.container_arn)
                .split('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
            c.network_bindings.iter().map(|b| b.host_port).collect::<Vec<_>>(),
        )
    };
    let (running, stopped) = (sim.task(1).await, sim.task(0).await);
    assert_eq!(
        container(&running),
        ("RUNNING".into(), "container".into(), vec![8080])
    );
    assert_eq!(container(&stopped).0, "STOPPED");
    let (running, stopped) = (moto.task(1).await, moto.task(0).await);
    assert_eq!(
        container(&running),
        ("PENDING".into(), "task-definition".into(), vec![])
    );
    assert_eq!(container(&stopped).0, "PENDING");
}

/// ECS: ListTasks without `desiredStatus` lists RUNNING-desired tasks only. moto lists every task.
/// (blox's traits always name the status, so this is asked of both directly.)
#[tokio::test]
async fn list_tasks_defaults_to_running_where_moto_differs_listing_stopped_tasks_too() {
    let (moto, sim) = scripted().await;
    let simulator = sim.backend.simulator();
    let page = simulator
        .read(|ecs| ecs.list_tasks(CLUSTER, &TaskFilter::default(), None, None, simulator.now_ms()))
        .unwrap();
    assert_eq!(sim.labels(&page.arns), BTreeSet::from(["t1".into(), "t2".into()]));
    let out = moto
        .backend
        .fx()
        .ecs
        .list_tasks()
        .cluster(CLUSTER)
        .send()
        .await
        .unwrap();
    assert_eq!(
        moto.labels(out.task_arns()),
        BTreeSet::from(["t0".into(), "t1".into(), "t2".into()])
    );
}

/// ECS: list calls page at `maxResults` with a `nextToken`. moto ignores `maxResults` and answers one
/// page. (Following every page, as the traits do, both list the same.)
#[tokio::test]
async fn list_pages_honour_max_results_where_moto_differs_ignoring_it() {
    let (moto, sim) = scripted().await;
    let simulator = sim.backend.simulator();
    let page = simulator
        .read(|ecs| ecs.list_container_instances(CLUSTER, None, None, Some(1), simulator.now_ms()))
        .unwrap();
    assert_eq!(page.arns.len(), 1);
    assert!(page.next_token.is_some());
    let out = moto
        .backend
        .fx()
        .ecs
        .list_container_instances()
        .cluster(CLUSTER)
        .max_results(1)
        .send()
        .await
        .unwrap();
    assert_eq!((out.container_instance_arns().len(), out.next_token()), (3, None));
}

/// ECS: DescribeTasks reports an unknown task as a `MISSING` failure. moto leaves it out silently.
/// (The traits drop failures, so this is asked of both directly.)
#[tokio::test]
async fn describe_tasks_reports_unknown_tasks_missing_where_moto_differs_omitting_them() {
    let (moto, sim) = scripted().await;
    let simulator = sim.backend.simulator();
    let unknown = sim.tasks[0].rsplit_once('/').unwrap().0.to_owned() + "/0123456789abcdef";
    let (found, failures) = simulator
        .read(|ecs| ecs.describe_tasks(CLUSTER, std::slice::from_ref(&unknown), simulator.now_ms()))
        .unwrap();
    assert!(found.is_empty());
    assert_eq!(
        failures,
        [Failure {
            arn: Some(unknown),
            reason: "MISSING".into(),
            detail: None
        }]
    );
    let unknown = moto.tasks[0].rsplit_once('/').unwrap().0.to_owned() + "/0123456789abcdef";
    let out = moto
        .backend
        .fx()
        .ecs
        .describe_tasks()
        .cluster(CLUSTER)
        .tasks(unknown)
        .send()
        .await
        .unwrap();
    assert_eq!((out.tasks().len(), out.failures().len()), (0, 0));
}

/// ECS: tasks belong to a cluster; DescribeTasks finds only the named cluster's. moto looks through
/// every cluster's tasks (and matches ids by substring).
#[tokio::test]
async fn describe_tasks_finds_only_the_clusters_tasks_where_moto_differs_searching_every_cluster() {
    let (moto, sim) = scripted().await;
    let found = sim
        .api()
        .describe_tasks(SPARE, std::slice::from_ref(&sim.tasks[1]))
        .await
        .unwrap();
    assert_eq!(found, Vec::new());
    let found = moto
        .api()
        .describe_tasks(SPARE, std::slice::from_ref(&moto.tasks[1]))
        .await
        .unwrap();
    assert_eq!(
        found
            .iter()
            .map(|t| (moto.label(&t.task_arn), resource(&t.cluster_arn)))
            .collect::<Vec<_>>(),
        [("t1".to_owned(), "cluster/parity".to_owned())]
    );
}

/// ECS: ListTasks lists the named cluster's tasks. moto lists every task whose cluster ARN contains
/// the name, so cluster `arity` lists `parity`'s tasks.
#[tokio::test]
async fn list_tasks_lists_only_the_clusters_tasks_where_moto_differs_matching_names_by_substring() {
    let (moto, sim) = scripted().await;
    for side in [&moto, &sim] {
        side.backend.create_cluster("arity").await;
    }
    let listed = sim
        .api()
        .list_tasks("arity", DesiredStatus::Running)
        .await
        .unwrap();
    assert_eq!(listed, Vec::<String>::new());
    let listed = moto
        .api()
        .list_tasks("arity", DesiredStatus::Running)
        .await
        .unwrap();
    assert_eq!(moto.labels(&listed), BTreeSet::from(["t1".into(), "t2".into()]));
}

/// Through the traits a describe of more than 100 items is answered in batches of 100 (ECS's limit),
/// as `SdkEcs` does: the items found, the unknown ones left out (clusters: `MISSING` failures).
#[tokio::test]
async fn describes_of_more_than_100_items_are_batched_like_sdk_ecs() {
    let (moto, sim) = scripted().await;
    let mut seen = Vec::new();
    for side in [&moto, &sim] {
        let api = side.api();
        let unknown = |arn: &str| -> Vec<String> {
            let prefix = arn.rsplit_once('/').unwrap().0;
            (0..100).map(|n| format!("{prefix}/{n:032x}")).collect()
        };
        let mut tasks = vec![side.tasks[1].clone()];
        tasks.extend(unknown(&side.tasks[1]));
        let mut instances = vec![side.instances[0].clone()];
        instances.extend(unknown(&side.instances[0]));
        let mut clusters = vec![CLUSTER.to_owned()];
        clusters.extend((0..100).map(|n| format!("nowhere-{n}")));
        let tasks = api
            .describe_tasks(CLUSTER, &tasks)
            .await
            .map(|found| found.iter().map(|t| side.label(&t.task_arn)).collect::<Vec<_>>());
        let instances = api
            .describe_container_instances(CLUSTER, &instances)
            .await
            .map(|found| {
                found
                    .iter()
                    .map(|i| side.label(&i.container_instance_arn))
                    .collect::<Vec<_>>()
            });
        let clusters = api.describe_clusters(&clusters).await.map(|(found, failures)| {
            (
                found.iter().map(|c| c.cluster_name.clone()).collect::<Vec<_>>(),
                failures.len(),
            )
        });
        seen.push(format!("{tasks:?} {instances:?} {clusters:?}"));
    }
    assert_eq!(seen[0], seen[1], "moto (left) and the simulator (right)");
    assert_eq!(seen[1], r#"Ok(["t1"]) Ok(["i0"]) Ok((["parity"], 100))"#);
}
