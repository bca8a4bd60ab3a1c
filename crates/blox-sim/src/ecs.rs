//! The simulated ECS control plane of one account and region: clusters, container instances with
//! their resources and attributes, task definitions and tasks with ECS's lifecycles. The public
//! methods are ECS API calls with ECS's limits, errors and throttling; every state change raises the
//! resource's `version` and (except attribute changes, as in ECS) emits the ECS event EventBridge
//! would deliver. Time is an argument in milliseconds since the Unix epoch; randomness comes from a
//! seeded generator, so a run is reproducible.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use blox_aws::{
    ClusterDescription, ContainerDefinition, DESCRIBE_BATCH, Failure, START_TASK_BATCH, StartTask, Started,
    TaskDefinitionDescription,
};
use blox_model::emit::{instance_event, rfc3339_millis, task_event};
use blox_model::{Attribute, Container, ContainerInstance, NetworkBinding, Resource, Task, VersionInfo};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::throttle::{Family, Throttle, ThrottleConfig};

/// ECS limit: items per List page.
pub const LIST_PAGE_MAX: usize = 100;
/// ECS limit: instances per UpdateContainerInstancesState call.
pub const UPDATE_STATE_BATCH: usize = 10;
/// ECS limit: custom attributes per resource (PutAttributes' AttributeLimitExceededException).
const MAX_CUSTOM_ATTRIBUTES: usize = 10;
/// Ports the ECS agent reserves on every instance (SSH, Docker, the agent).
const RESERVED_PORTS: [i64; 5] = [22, 2375, 2376, 51678, 51679];

/// How the simulated control plane behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    pub account: String,
    pub region: String,
    /// PROVISIONING → PENDING.
    pub provisioning_ms: u64,
    /// PENDING → RUNNING (image pull and container start).
    pub pending_ms: u64,
    /// Desired STOPPED → STOPPED (SIGTERM, stop timeout, cleanup).
    pub stopping_ms: u64,
    /// How long a STOPPED task stays describable (ECS: at least an hour).
    pub stopped_task_retention_ms: u64,
    /// How long a deregistered (INACTIVE) instance stays describable.
    pub inactive_instance_retention_ms: u64,
    /// Probability that a started task fails before RUNNING (`CannotPullContainerError`).
    pub start_failure: f64,
    pub throttle: ThrottleConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            account: "123456789012".into(),
            region: "us-east-1".into(),
            provisioning_ms: 200,
            pending_ms: 1_000,
            stopping_ms: 500,
            stopped_task_retention_ms: 3_600_000,
            inactive_instance_retention_ms: 3_600_000,
            start_failure: 0.0,
            throttle: ThrottleConfig::default(),
        }
    }
}

/// An ECS error answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SimError {
    #[error("ClusterNotFoundException: Cluster not found ({cluster})")]
    ClusterNotFound { cluster: String },
    /// `InvalidParameterException` or `ClientException`.
    #[error("{code}: {message}")]
    Rejected { code: &'static str, message: String },
    /// `ThrottlingException`; a token is back after `retry_after_ms`.
    #[error("ThrottlingException: Rate exceeded")]
    Throttled { retry_after_ms: u64 },
}

fn invalid(message: impl Into<String>) -> SimError {
    SimError::Rejected {
        code: "InvalidParameterException",
        message: message.into(),
    }
}

fn client(message: impl Into<String>) -> SimError {
    SimError::Rejected {
        code: "ClientException",
        message: message.into(),
    }
}

/// One page of a List call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    pub arns: Vec<String>,
    pub next_token: Option<String>,
}

/// ListTasks' filters. `desired_status` defaults to RUNNING, as in ECS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub desired_status: Option<String>,
    pub started_by: Option<String>,
    pub container_instance: Option<String>,
    pub family: Option<String>,
}

/// A container instance joining a cluster (what the agent sends to RegisterContainerInstance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInstance {
    pub ec2_instance_id: Option<String>,
    pub cpu: i64,
    pub memory: i64,
    /// Built-in (`ecs.*`) and custom attributes.
    pub attributes: Vec<Attribute>,
}

impl NewInstance {
    /// An EC2 instance of a known type in an availability zone, with the built-in attributes the
    /// agent registers. Unknown types get 2 vCPU / 4 GiB.
    pub fn ec2(instance_type: &str, availability_zone: &str) -> NewInstance {
        let (cpu, memory) = match instance_type {
            "t3.medium" => (2048, 3_891),
            "m5.large" => (2048, 7_680),
            "m5.xlarge" => (4096, 15_620),
            "c5.xlarge" => (4096, 7_468),
            "c5.2xlarge" => (8192, 15_136),
            "r5.large" => (2048, 15_620),
            _ => (2048, 3_891),
        };
        let attribute = |name: &str, value: &str| Attribute {
            name: name.into(),
            value: Some(value.into()),
        };
        NewInstance {
            ec2_instance_id: None,
            cpu,
            memory,
            attributes: vec![
                attribute("ecs.availability-zone", availability_zone),
                attribute("ecs.instance-type", instance_type),
                attribute("ecs.os-type", "linux"),
                attribute("ecs.os-family", "LINUX"),
                attribute("ecs.cpu-architecture", "x86_64"),
                attribute("ecs.ami-id", "ami-0sim0000000000001"),
            ],
        }
    }
}

/// A registered task definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDefinition {
    pub family: String,
    pub revision: i64,
    pub status: String,
    pub cpu: Option<i64>,
    pub memory: Option<i64>,
    pub containers: Vec<SimContainer>,
}

/// A container of a task definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimContainer {
    pub name: String,
    pub cpu: i64,
    pub memory: Option<i64>,
    pub essential: bool,
    pub host_ports: Vec<i64>,
    /// ECS's `healthCheck`. Without one the container's health stays UNKNOWN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<SimHealthCheck>,
    /// What is wrong with it, for revisions that are bad on purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<SimFault>,
}

/// A container health check: the container reports `healthStatus` UNKNOWN from RUNNING until the
/// check's first verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimHealthCheck {
    /// From RUNNING to the verdict (ECS: the start period, then passing runs at the interval):
    /// HEALTHY, or UNHEALTHY for a container whose fault is [`SimFault::NeverHealthy`].
    pub healthy_after_ms: u64,
}

/// How a container of a bad revision fails. A revision ECS refuses at StartTask needs no fault:
/// more CPU or memory than the instances have, or a host port they hold, is `RESOURCE:*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimFault {
    /// Its image cannot be pulled: the task stops from PENDING with `CannotPullContainerError` and
    /// never runs.
    CannotPull,
    /// It exits with `exit_code` `after_ms` after RUNNING. An essential container stops its task
    /// ("Essential container in task exited"); another just stops.
    Crash { after_ms: u64, exit_code: i64 },
    /// Its health check never passes: UNHEALTHY once the check's delay is over, and the task keeps
    /// running (ECS stops a standalone task for nothing of the sort; only services replace
    /// unhealthy tasks). Needs a health check.
    NeverHealthy,
}

/// ECS's `healthStatus` values.
const UNKNOWN: &str = "UNKNOWN";
const HEALTHY: &str = "HEALTHY";
const UNHEALTHY: &str = "UNHEALTHY";
/// The task's `stoppedReason` when an essential container exits.
const ESSENTIAL_EXITED: &str = "Essential container in task exited";

impl TaskDefinition {
    /// CPU units and MiB a task reserves on its instance: the task-level size when set, else the
    /// sum of its containers'.
    fn reservation(&self) -> (i64, i64) {
        let cpu = self
            .cpu
            .unwrap_or_else(|| self.containers.iter().map(|c| c.cpu).sum());
        let memory = self
            .memory
            .unwrap_or_else(|| self.containers.iter().filter_map(|c| c.memory).sum());
        (cpu, memory)
    }

    fn host_ports(&self) -> Vec<i64> {
        self.containers
            .iter()
            .flat_map(|c| c.host_ports.iter().copied())
            .collect()
    }

    fn cannot_pull(&self) -> bool {
        self.containers
            .iter()
            .any(|c| c.fault == Some(SimFault::CannotPull))
    }

    /// ECS's task health from its containers': UNHEALTHY if an essential container is, HEALTHY when
    /// every essential container with a check is (and there is one), else UNKNOWN. Non-essential
    /// containers do not count.
    fn task_health(&self, containers: &[Container]) -> &'static str {
        let mut checked = self
            .containers
            .iter()
            .zip(containers)
            .filter(|(d, _)| d.essential && d.health_check.is_some())
            .map(|(_, c)| c.health_status.as_deref())
            .peekable();
        if checked.peek().is_none() {
            return UNKNOWN;
        }
        let statuses: Vec<Option<&str>> = checked.collect();
        if statuses.contains(&Some(UNHEALTHY)) {
            UNHEALTHY
        } else if statuses.iter().all(|s| *s == Some(HEALTHY)) {
            HEALTHY
        } else {
            UNKNOWN
        }
    }
}

/// Instances and tasks are keyed by their id (the tail of their ARN) as a number: see [`parse_id`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cluster {
    arn: String,
    instances: BTreeMap<u128, Instance>,
    tasks: BTreeMap<u128, SimTask>,
}

impl Cluster {
    /// The instance an id or ARN names.
    fn instance(&self, reference: &str) -> Option<(u128, &Instance)> {
        let id = resource_id(reference)?;
        self.instances
            .get(&id)
            .filter(|i| arn_matches(reference, &i.desc.container_instance_arn))
            .map(|i| (id, i))
    }

    /// The task an id or ARN names.
    fn task(&self, reference: &str) -> Option<(u128, &SimTask)> {
        let id = resource_id(reference)?;
        self.tasks
            .get(&id)
            .filter(|t| arn_matches(reference, &t.desc.task_arn))
            .map(|t| (id, t))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Instance {
    desc: Arc<ContainerInstance>,
    cpu: i64,
    memory: i64,
    cpu_used: i64,
    memory_used: i64,
    ports_used: BTreeSet<i64>,
    /// Tasks placed here that are not STOPPED yet.
    tasks: BTreeSet<u128>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SimTask {
    desc: Arc<Task>,
    instance: Option<u128>,
    family: String,
    cpu: i64,
    memory: i64,
    ports: Vec<i64>,
    /// The revision of `family` it runs: where its containers' checks and faults are (0 in states
    /// saved before revisions were kept, whose definitions had neither).
    #[serde(default)]
    revision: i64,
    /// Fails before RUNNING (drawn at start, or a container's image cannot be pulled).
    fails_to_start: bool,
    /// The essential container's exit code once stopped.
    exit_code: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Timer {
    /// Move the task one step along its lifecycle, if it is still at `version`.
    Task { cluster: String, id: u128, version: u64 },
    /// Forget a task STOPPED long enough ago.
    ExpireTask { cluster: String, id: u128 },
    /// Forget a deregistered instance.
    PurgeInstance { cluster: String, id: u128 },
    /// Something happens to one container (by index) of a RUNNING task. Not tied to the task's
    /// version: other changes (another container's verdict) must not cancel it.
    Container {
        cluster: String,
        id: u128,
        container: usize,
        step: ContainerStep,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum ContainerStep {
    /// The health check's first verdict.
    Health { healthy: bool },
    /// The container exits.
    Exit { code: i64 },
}

/// What ECS lists and describes in one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub instances: Vec<Arc<ContainerInstance>>,
    pub tasks: Vec<Arc<Task>>,
}

/// What [`Ecs::advance`] and the API calls emitted, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    pub at_ms: u64,
    pub body: String,
}

/// The control plane.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ecs {
    config: SimConfig,
    rng: ChaCha8Rng,
    clusters: BTreeMap<String, Cluster>,
    task_definitions: BTreeMap<String, BTreeMap<i64, TaskDefinition>>,
    timers: BTreeSet<(u64, u64, Timer)>,
    timer_seq: u64,
    #[serde(skip)]
    throttle: Mutex<Throttle>,
    /// Calls of the families the throttle leaves unlimited, counted without taking its lock.
    #[serde(skip)]
    unthrottled_calls: [AtomicU64; 4],
    #[serde(skip)]
    outbox: Vec<Emitted>,
    /// Off while a scenario builds its initial world, whose events nobody needs.
    #[serde(skip)]
    quiet: bool,
}

impl Ecs {
    pub fn new(config: SimConfig, seed: u64) -> Ecs {
        let throttle = Mutex::new(Throttle::new(config.throttle.clone()));
        Ecs {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            clusters: BTreeMap::new(),
            task_definitions: BTreeMap::new(),
            timers: BTreeSet::new(),
            timer_seq: 0,
            throttle,
            unthrottled_calls: Default::default(),
            outbox: Vec::new(),
            quiet: false,
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Replaces the throttle's shape (for a state loaded from disk, whose buckets are not saved).
    pub fn set_throttle(&mut self, config: ThrottleConfig) {
        self.config.throttle = config.clone();
        *self.throttle_state() = Throttle::new(config);
        self.unthrottled_calls = Default::default();
    }

    pub fn set_start_failure(&mut self, probability: f64) {
        self.config.start_failure = probability.clamp(0.0, 1.0);
    }

    /// Calls answered and throttled per API family so far.
    pub fn call_counts(&self, family: Family) -> (u64, u64) {
        let t = self.throttle_state();
        let unthrottled = self.unthrottled_calls[family as usize].load(Ordering::Relaxed);
        (t.calls(family) + unthrottled, t.throttled(family))
    }

    fn throttle_state(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, family: Family, now: u64) -> Result<(), SimError> {
        if self.config.throttle.rate(family).is_none() {
            // Concurrent readers (the simulator's read lock) need not queue on the mutex.
            self.unthrottled_calls[family as usize].fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.throttle_state()
            .take(family, now)
            .map_err(|retry_after_ms| SimError::Throttled { retry_after_ms })
    }

    /// While quiet, changes raise versions but emit no events.
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    /// Events emitted since the last call.
    pub fn drain_events(&mut self) -> Vec<Emitted> {
        std::mem::take(&mut self.outbox)
    }

    /// Runs the lifecycle steps due by `now`.
    pub fn advance(&mut self, now: u64) {
        while let Some(first) = self.timers.first() {
            if first.0 > now {
                break;
            }
            let Some((due, _, timer)) = self.timers.pop_first() else {
                break;
            };
            // Steps run at their due time, so that a long gap between calls does not bunch them.
            self.fire(timer, due);
        }
    }

    /// When the next lifecycle step is due, if any.
    pub fn next_due(&self) -> Option<u64> {
        self.timers.first().map(|t| t.0)
    }

    fn schedule(&mut self, at: u64, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq, timer));
    }

    fn random_id(&mut self) -> u128 {
        self.rng.random()
    }

    fn arn(&self, resource: &str) -> String {
        format!(
            "arn:aws:ecs:{}:{}:{resource}",
            self.config.region, self.config.account
        )
    }

    // ---- clusters and task definitions -------------------------------------------------------

    /// CreateCluster; creating an existing cluster returns it, as ECS does.
    pub fn create_cluster(&mut self, name: &str) -> Result<ClusterDescription, SimError> {
        blox_model::ClusterName::new(name).map_err(|e| invalid(format!("clusterName: {e}")))?;
        if !self.clusters.contains_key(name) {
            let arn = self.arn(&format!("cluster/{name}"));
            self.clusters.insert(
                name.to_owned(),
                Cluster {
                    arn,
                    instances: BTreeMap::new(),
                    tasks: BTreeMap::new(),
                },
            );
        }
        Ok(self.cluster_description(name))
    }

    /// RegisterTaskDefinition: the next revision of the family.
    pub fn register_task_definition(
        &mut self,
        family: &str,
        cpu: Option<i64>,
        memory: Option<i64>,
        containers: Vec<SimContainer>,
    ) -> Result<TaskDefinitionDescription, SimError> {
        if family.is_empty()
            || family.len() > 255
            || !family
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(client(format!(
                "Family {family:?} must be 1-255 letters, numbers, hyphens and underscores"
            )));
        }
        if containers.is_empty() {
            return Err(client("Container list cannot be empty."));
        }
        // The simulator's own misuse, not an ECS answer: a check that never passes needs a check.
        if let Some(c) = containers
            .iter()
            .find(|c| c.fault == Some(SimFault::NeverHealthy) && c.health_check.is_none())
        {
            return Err(client(format!(
                "container {:?}: a NeverHealthy fault needs a health check",
                c.name
            )));
        }
        let revisions = self.task_definitions.entry(family.to_owned()).or_default();
        let revision = revisions.keys().next_back().copied().unwrap_or(0) + 1;
        revisions.insert(
            revision,
            TaskDefinition {
                family: family.to_owned(),
                revision,
                status: "ACTIVE".into(),
                cpu,
                memory,
                containers,
            },
        );
        self.describe_task_definition_unthrottled(&format!("{family}:{revision}"))
    }

    /// DeregisterTaskDefinition: the revision becomes INACTIVE (running tasks are unaffected).
    pub fn deregister_task_definition(
        &mut self,
        task_definition: &str,
    ) -> Result<TaskDefinitionDescription, SimError> {
        // ECS: "You must specify a revision."
        let name = task_definition
            .rsplit_once(":task-definition/")
            .map_or(task_definition, |(_, rest)| rest);
        if !name.contains(':') {
            return Err(client("A task definition revision must be specified."));
        }
        let (family, revision) = self.resolve_task_definition(task_definition)?;
        if let Some(td) = self
            .task_definitions
            .get_mut(&family)
            .and_then(|r| r.get_mut(&revision))
        {
            td.status = "INACTIVE".into();
        }
        self.describe_task_definition_unthrottled(&format!("{family}:{revision}"))
    }

    /// `FAMILY`, `FAMILY:REVISION` or an ARN → (family, revision). A bare family means its latest
    /// ACTIVE revision.
    fn resolve_task_definition(&self, reference: &str) -> Result<(String, i64), SimError> {
        let unknown = || client("Unable to describe task definition.");
        let name = reference
            .rsplit_once(":task-definition/")
            .map_or(reference, |(_, rest)| rest);
        let (family, revision) = match name.rsplit_once(':') {
            Some((family, revision)) => (family, Some(revision.parse::<i64>().map_err(|_| unknown())?)),
            None => (name, None),
        };
        let revisions = self.task_definitions.get(family).ok_or_else(unknown)?;
        let revision = match revision {
            Some(r) if revisions.contains_key(&r) => r,
            Some(_) => return Err(unknown()),
            None => {
                *revisions
                    .iter()
                    .rev()
                    .find(|(_, td)| td.status == "ACTIVE")
                    .ok_or_else(unknown)?
                    .0
            }
        };
        Ok((family.to_owned(), revision))
    }

    fn task_definition(&self, family: &str, revision: i64) -> Option<&TaskDefinition> {
        self.task_definitions.get(family)?.get(&revision)
    }

    fn task_definition_arn(&self, family: &str, revision: i64) -> String {
        self.arn(&format!("task-definition/{family}:{revision}"))
    }

    /// DescribeTaskDefinition.
    pub fn describe_task_definition(
        &self,
        reference: &str,
        now: u64,
    ) -> Result<TaskDefinitionDescription, SimError> {
        self.take(Family::Describe, now)?;
        self.describe_task_definition_unthrottled(reference)
    }

    fn describe_task_definition_unthrottled(
        &self,
        reference: &str,
    ) -> Result<TaskDefinitionDescription, SimError> {
        let (family, revision) = self.resolve_task_definition(reference)?;
        let td = self
            .task_definition(&family, revision)
            .ok_or_else(|| client("Unable to describe task definition."))?;
        Ok(TaskDefinitionDescription {
            arn: self.task_definition_arn(&family, revision),
            family,
            revision,
            status: td.status.clone(),
            cpu: td.cpu,
            memory: td.memory,
            containers: td
                .containers
                .iter()
                .map(|c| ContainerDefinition {
                    name: c.name.clone(),
                    cpu: c.cpu,
                    memory: c.memory,
                    essential: c.essential,
                    host_ports: c.host_ports.clone(),
                    health_check: c.health_check.is_some(),
                })
                .collect(),
        })
    }

    /// ListClusters, one page.
    pub fn list_clusters(
        &self,
        next_token: Option<&str>,
        max_results: Option<usize>,
        now: u64,
    ) -> Result<Page, SimError> {
        self.take(Family::List, now)?;
        let max = page_size(max_results)?;
        let start = start_after(next_token)?;
        let mut page = Page::default();
        for cluster in self
            .clusters
            .range::<str, _>(after(start.as_deref()))
            .map(|(_, c)| c)
        {
            if page.arns.len() == max {
                page.next_token = Some(page_token(&page));
                break;
            }
            page.arns.push(cluster.arn.clone());
        }
        Ok(page)
    }

    /// DescribeClusters: names or ARNs; unknown ones are `MISSING` failures.
    pub fn describe_clusters(
        &self,
        clusters: &[String],
        now: u64,
    ) -> Result<(Vec<ClusterDescription>, Vec<Failure>), SimError> {
        self.take(Family::Describe, now)?;
        // As in ECS: no cluster named means the default cluster.
        let default = ["default".to_owned()];
        let clusters = if clusters.is_empty() {
            &default[..]
        } else {
            clusters
        };
        if clusters.len() > DESCRIBE_BATCH {
            return Err(invalid(format!(
                "clusters can have at most {DESCRIBE_BATCH} items."
            )));
        }
        let mut found = Vec::new();
        let mut failures = Vec::new();
        for reference in clusters {
            let name = cluster_name(reference);
            if self.clusters.contains_key(name) {
                found.push(self.cluster_description(name));
            } else {
                failures.push(Failure {
                    arn: Some(self.arn(&format!("cluster/{name}"))),
                    reason: "MISSING".into(),
                    detail: None,
                });
            }
        }
        Ok((found, failures))
    }

    fn cluster_description(&self, name: &str) -> ClusterDescription {
        let cluster = &self.clusters[name];
        let registered = cluster
            .instances
            .values()
            .filter(|i| i.desc.status != "INACTIVE")
            .count() as i64;
        let (mut running, mut pending) = (0, 0);
        for t in cluster.tasks.values() {
            match t.desc.last_status.as_str() {
                "RUNNING" => running += 1,
                "STOPPED" => {}
                _ => pending += 1,
            }
        }
        ClusterDescription {
            cluster_arn: cluster.arn.clone(),
            cluster_name: name.to_owned(),
            status: "ACTIVE".into(),
            registered_container_instances_count: registered,
            running_tasks_count: running,
            pending_tasks_count: pending,
        }
    }

    fn cluster(&self, reference: &str) -> Result<&Cluster, SimError> {
        let name = cluster_name(reference);
        self.clusters.get(name).ok_or_else(|| SimError::ClusterNotFound {
            cluster: name.to_owned(),
        })
    }

    fn cluster_mut(&mut self, reference: &str) -> Result<(String, &mut Cluster), SimError> {
        let name = cluster_name(reference).to_owned();
        match self.clusters.get_mut(&name) {
            Some(c) => Ok((name, c)),
            None => Err(SimError::ClusterNotFound { cluster: name }),
        }
    }

    // ---- container instances -----------------------------------------------------------------

    /// RegisterContainerInstance: a new ACTIVE instance with a connected agent.
    pub fn register_container_instance(
        &mut self,
        cluster: &str,
        new: NewInstance,
        now: u64,
    ) -> Result<Arc<ContainerInstance>, SimError> {
        self.take(Family::Modify, now)?;
        self.register_instance(cluster, new, now)
    }

    pub(crate) fn register_instance(
        &mut self,
        cluster: &str,
        new: NewInstance,
        now: u64,
    ) -> Result<Arc<ContainerInstance>, SimError> {
        if new.cpu <= 0 || new.memory <= 0 {
            return Err(invalid("totalResources: CPU and MEMORY must be positive"));
        }
        let id = self.random_id();
        let ec2 = new
            .ec2_instance_id
            .unwrap_or_else(|| format!("i-{}", &format_id(self.random_id())[..17]));
        let (name, _) = self.cluster_mut(cluster)?;
        let arn = self.arn(&format!("container-instance/{name}/{}", format_id(id)));
        let cluster_arn = self.clusters[&name].arn.clone();
        let mut instance = Instance {
            desc: Arc::new(ContainerInstance {
                agent_connected: true,
                agent_update_status: None,
                attributes: new.attributes,
                cluster_arn,
                container_instance_arn: arn,
                ec2_instance_id: Some(ec2),
                registered_resources: Vec::new(),
                remaining_resources: Vec::new(),
                status: "ACTIVE".into(),
                status_reason: None,
                version_info: VersionInfo {
                    agent_hash: Some("sim".into()),
                    agent_version: Some("1.89.0".into()),
                    docker_version: Some("DockerVersion: 25.0.8".into()),
                },
                running_tasks_count: Some(0),
                pending_tasks_count: Some(0),
                registered_at: Some(rfc3339_millis(now)),
                version: 0,
                updated_at: None,
            }),
            cpu: new.cpu,
            memory: new.memory,
            cpu_used: 0,
            memory_used: 0,
            ports_used: BTreeSet::new(),
            tasks: BTreeSet::new(),
        };
        let desc = Arc::make_mut(&mut instance.desc);
        desc.registered_resources = resources(instance.cpu, instance.memory, &BTreeSet::new());
        refresh_instance(&mut instance, &BTreeMap::new());
        let cluster = self.clusters.get_mut(&name).unwrap_or_else(|| unreachable!());
        cluster.instances.insert(id, instance);
        self.bump_instance(&name, id, now, true, |_| {});
        Ok(self.clusters[&name].instances[&id].desc.clone())
    }

    /// DeregisterContainerInstance. Refused while tasks run on it unless `force`; forced, its tasks
    /// are orphaned (they keep running, accounted to no instance), as in ECS.
    pub fn deregister_container_instance(
        &mut self,
        cluster: &str,
        instance: &str,
        force: bool,
        now: u64,
    ) -> Result<Arc<ContainerInstance>, SimError> {
        self.take(Family::Modify, now)?;
        let (name, id) = self.instance_key(cluster, instance)?;
        let live = self.clusters[&name].instances[&id].tasks.len();
        if live > 0 && !force {
            return Err(invalid("Found running tasks on the instance."));
        }
        self.remove_instance(&name, id, None, now);
        Ok(self.clusters[&name].instances[&id].desc.clone())
    }

    /// The EC2 instance behind a container instance is gone: its agent disconnects, its tasks stop
    /// and the instance is deregistered, as after an Auto Scaling scale-in.
    pub fn terminate_instance(&mut self, cluster: &str, instance: &str, now: u64) -> Result<(), SimError> {
        let (name, id) = self.instance_key(cluster, instance)?;
        let ec2 = self.clusters[&name].instances[&id]
            .desc
            .ec2_instance_id
            .clone()
            .unwrap_or_default();
        self.set_agent_connected(&name, instance, false, now)?;
        let reason = format!("Host EC2 (instance {ec2}) terminated.");
        self.remove_instance(&name, id, Some(&reason), now);
        Ok(())
    }

    /// Deregisters an instance. With a `stop_reason` (its host is gone) its tasks stop; without
    /// (a forced deregistration) they are orphaned as in ECS: they keep their last status, and ECS no
    /// longer accounts for them on any instance.
    fn remove_instance(&mut self, cluster: &str, id: u128, stop_reason: Option<&str>, now: u64) {
        let tasks: Vec<u128> = self.clusters[cluster].instances[&id]
            .tasks
            .iter()
            .copied()
            .collect();
        match stop_reason {
            Some(reason) => {
                for task in tasks {
                    self.begin_stop(cluster, task, reason, Some(137), now);
                    // The host is gone: its tasks are STOPPED at once, not after a stop timeout.
                    self.finish_stop(cluster, task, now);
                }
            }
            None => {
                let c = self.clusters.get_mut(cluster).unwrap_or_else(|| unreachable!());
                for task in &tasks {
                    if let Some(t) = c.tasks.get_mut(task) {
                        t.instance = None;
                    }
                }
                if let Some(instance) = c.instances.get_mut(&id) {
                    instance.tasks.clear();
                    instance.cpu_used = 0;
                    instance.memory_used = 0;
                    instance.ports_used.clear();
                }
            }
        }
        if self.clusters[cluster].instances[&id].desc.status == "INACTIVE" {
            return;
        }
        self.bump_instance(cluster, id, now, true, |d| {
            d.status = "INACTIVE".into();
            d.agent_connected = false;
        });
        self.schedule(
            now + self.config.inactive_instance_retention_ms,
            Timer::PurgeInstance {
                cluster: cluster.to_owned(),
                id,
            },
        );
    }

    /// The agent disconnects or reconnects (it does so several times an hour in ECS).
    pub fn set_agent_connected(
        &mut self,
        cluster: &str,
        instance: &str,
        connected: bool,
        now: u64,
    ) -> Result<(), SimError> {
        let (name, id) = self.instance_key(cluster, instance)?;
        let desc = &self.clusters[&name].instances[&id].desc;
        if desc.agent_connected != connected && desc.status != "INACTIVE" {
            self.bump_instance(&name, id, now, true, |d| d.agent_connected = connected);
        }
        Ok(())
    }

    /// UpdateContainerInstancesState: ACTIVE or DRAINING, at most 10 instances. Standalone tasks
    /// (StartTask) keep running on a DRAINING instance; only services would move theirs.
    pub fn update_container_instances_state(
        &mut self,
        cluster: &str,
        instances: &[String],
        status: &str,
        now: u64,
    ) -> Result<(Vec<Arc<ContainerInstance>>, Vec<Failure>), SimError> {
        self.take(Family::Modify, now)?;
        self.update_instances_state(cluster, instances, status, now)
    }

    pub(crate) fn update_instances_state(
        &mut self,
        cluster: &str,
        instances: &[String],
        status: &str,
        now: u64,
    ) -> Result<(Vec<Arc<ContainerInstance>>, Vec<Failure>), SimError> {
        if !matches!(status, "ACTIVE" | "DRAINING") {
            return Err(invalid(format!("status: {status:?} is not ACTIVE or DRAINING")));
        }
        if instances.is_empty() || instances.len() > UPDATE_STATE_BATCH {
            return Err(invalid(format!(
                "containerInstances must have 1 to {UPDATE_STATE_BATCH} items."
            )));
        }
        let name = self.cluster(cluster)?;
        let name = cluster_name(&name.arn).to_owned();
        let mut updated = Vec::new();
        let mut failures = Vec::new();
        for reference in instances {
            let Some((id, instance)) = self.clusters[&name].instance(reference) else {
                failures.push(missing(reference));
                continue;
            };
            if instance.desc.status == "INACTIVE" {
                failures.push(Failure {
                    arn: Some(instance.desc.container_instance_arn.clone()),
                    reason: "INACTIVE".into(),
                    detail: None,
                });
                continue;
            }
            if instance.desc.status != status {
                self.bump_instance(&name, id, now, true, |d| d.status = status.to_owned());
            }
            updated.push(self.clusters[&name].instances[&id].desc.clone());
        }
        Ok((updated, failures))
    }

    /// PutAttributes on a container instance. ECS raises no event for attribute changes, but the
    /// description's version rises.
    pub fn put_attributes(
        &mut self,
        cluster: &str,
        instance: &str,
        attributes: &[Attribute],
        now: u64,
    ) -> Result<Arc<ContainerInstance>, SimError> {
        self.take(Family::Modify, now)?;
        // The character sets of the PutAttributes API reference.
        for a in attributes {
            let valid_name = !a.name.is_empty()
                && a.name.len() <= 128
                && a.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./\\".contains(&b));
            if !valid_name {
                return Err(invalid(format!("attribute name {:?} is not valid", a.name)));
            }
            if a.name.starts_with("ecs.") {
                return Err(invalid(format!(
                    "attribute {:?}: built-in attributes cannot be changed",
                    a.name
                )));
            }
            let valid_value = |v: &String| {
                (1..=128).contains(&v.len())
                    && !v.starts_with(' ')
                    && !v.ends_with(' ')
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.@/\\: ".contains(&b))
            };
            if a.value.as_ref().is_some_and(|v| !valid_value(v)) {
                return Err(invalid(format!(
                    "attribute {:?}: value must be 1-128 letters, numbers and -_.@/\\: or inner spaces",
                    a.name
                )));
            }
        }
        self.cluster(cluster)?;
        let (name, id) = self
            .instance_key(cluster, instance)
            .map_err(|_| SimError::Rejected {
                code: "TargetNotFoundException",
                message: format!("Could not find {instance}."),
            })?;
        let desc = &self.clusters[&name].instances[&id].desc;
        let custom = |n: &str| !n.starts_with("ecs.") && !n.starts_with("com.amazonaws.ecs.");
        let added = attributes
            .iter()
            .filter(|a| custom(&a.name) && !desc.attributes.iter().any(|x| x.name == a.name))
            .map(|a| a.name.as_str())
            .collect::<BTreeSet<_>>()
            .len();
        let existing = desc.attributes.iter().filter(|a| custom(&a.name)).count();
        if existing + added > MAX_CUSTOM_ATTRIBUTES {
            return Err(SimError::Rejected {
                code: "AttributeLimitExceededException",
                message: format!("at most {MAX_CUSTOM_ATTRIBUTES} custom attributes per resource"),
            });
        }
        self.bump_instance(&name, id, now, false, |d| {
            for a in attributes {
                match d.attributes.iter_mut().find(|x| x.name == a.name) {
                    Some(existing) => existing.value = a.value.clone(),
                    None => d.attributes.push(a.clone()),
                }
            }
        });
        Ok(self.clusters[&name].instances[&id].desc.clone())
    }

    /// ListContainerInstances, one page. Without a status filter, every status but INACTIVE.
    pub fn list_container_instances(
        &self,
        cluster: &str,
        status: Option<&str>,
        next_token: Option<&str>,
        max_results: Option<usize>,
        now: u64,
    ) -> Result<Page, SimError> {
        self.take(Family::List, now)?;
        if let Some(s) = status
            && !blox_model::INSTANCE_STATUSES.contains(&s)
        {
            return Err(invalid(format!(
                "status: {s:?} is not a container instance status"
            )));
        }
        let max = page_size(max_results)?;
        let start = start_after_id(next_token)?;
        let cluster = self.cluster(cluster)?;
        let mut page = Page::default();
        for instance in cluster.instances.range(after(start.as_ref())).map(|(_, i)| i) {
            let status_matches = match status {
                Some(s) => instance.desc.status == s,
                None => instance.desc.status != "INACTIVE",
            };
            if !status_matches {
                continue;
            }
            if page.arns.len() == max {
                page.next_token = Some(page_token(&page));
                break;
            }
            page.arns.push(instance.desc.container_instance_arn.clone());
        }
        Ok(page)
    }

    /// DescribeContainerInstances: at most 100 ids or ARNs; unknown ones are `MISSING` failures.
    pub fn describe_container_instances(
        &self,
        cluster: &str,
        instances: &[String],
        now: u64,
    ) -> Result<(Vec<Arc<ContainerInstance>>, Vec<Failure>), SimError> {
        self.take(Family::Describe, now)?;
        check_describe_batch("containerInstances", instances)?;
        let cluster = self.cluster(cluster)?;
        Ok(describe_each(instances, |r| {
            cluster.instance(r).map(|(_, i)| i.desc.clone())
        }))
    }

    fn instance_key(&self, cluster: &str, instance: &str) -> Result<(String, u128), SimError> {
        let c = self.cluster(cluster)?;
        match c.instance(instance) {
            Some((id, _)) => Ok((cluster_name(&c.arn).to_owned(), id)),
            None => Err(invalid(format!(
                "The referenced container instance {instance} was not found."
            ))),
        }
    }

    /// Changes an instance's description, raises its version and (when ECS would) emits its event.
    fn bump_instance(
        &mut self,
        cluster: &str,
        id: u128,
        now: u64,
        evented: bool,
        change: impl FnOnce(&mut ContainerInstance),
    ) {
        let Some(c) = self.clusters.get_mut(cluster) else {
            return;
        };
        let Some(instance) = c.instances.get_mut(&id) else {
            return;
        };
        let desc = Arc::make_mut(&mut instance.desc);
        change(desc);
        desc.version += 1;
        refresh_instance(instance, &c.tasks);
        if evented && !self.quiet {
            let body = instance_event(&instance.desc, instance.desc.version, &rfc3339_millis(now));
            self.outbox.push(Emitted { at_ms: now, body });
        }
    }

    // ---- tasks -------------------------------------------------------------------------------

    /// StartTask: one task of the definition on each named instance (at most 10). Instances that
    /// cannot take it are `failures`: `MISSING`, `INACTIVE`, `DRAINING`, `AGENT` (disconnected),
    /// `RESOURCE:CPU`, `RESOURCE:MEMORY`, `RESOURCE:PORTS`.
    pub fn start_task(&mut self, request: &StartTask, now: u64) -> Result<Started, SimError> {
        self.take(Family::Launch, now)?;
        self.start(request, now)
    }

    pub(crate) fn start(&mut self, request: &StartTask, now: u64) -> Result<Started, SimError> {
        if request.container_instances.is_empty() || request.container_instances.len() > START_TASK_BATCH {
            return Err(invalid(format!(
                "containerInstances must have 1 to {START_TASK_BATCH} items."
            )));
        }
        if let Some(s) = &request.started_by
            && (s.len() > 36
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_/".contains(&b)))
        {
            return Err(invalid(
                "startedBy: up to 36 letters, numbers, hyphens, forward slashes and underscores",
            ));
        }
        if request.group.as_ref().is_some_and(|g| g.len() > 255) {
            return Err(invalid("group: at most 255 characters"));
        }
        let (name, _) = self.cluster_mut(&request.cluster)?;
        let (family, revision) = self.resolve_task_definition(&request.task_definition)?;
        let td = self
            .task_definition(&family, revision)
            .cloned()
            .ok_or_else(|| client("TaskDefinition not found."))?;
        if td.status != "ACTIVE" {
            return Err(client("TaskDefinition is inactive"));
        }
        let (cpu, memory) = td.reservation();
        let ports = td.host_ports();
        let mut started = Started::default();
        for reference in &request.container_instances {
            let failure = |reason: &str, arn: &str| Failure {
                arn: Some(arn.to_owned()),
                reason: reason.to_owned(),
                detail: None,
            };
            let Some((id, instance)) = resource_id(reference)
                .and_then(|id| self.clusters[&name].instances.get(&id).map(|i| (id, i)))
            else {
                started.failures.push(missing(reference));
                continue;
            };
            let arn = instance.desc.container_instance_arn.clone();
            let refusal = if !arn_matches(reference, &arn) {
                Some("MISSING")
            } else if instance.desc.status != "ACTIVE" {
                Some(if instance.desc.status == "DRAINING" {
                    "DRAINING"
                } else {
                    "INACTIVE"
                })
            } else if !instance.desc.agent_connected {
                Some("AGENT")
            } else if instance.cpu - instance.cpu_used < cpu {
                Some("RESOURCE:CPU")
            } else if instance.memory - instance.memory_used < memory {
                Some("RESOURCE:MEMORY")
            } else if ports
                .iter()
                .any(|p| instance.ports_used.contains(p) || RESERVED_PORTS.contains(p))
            {
                Some("RESOURCE:PORTS")
            } else {
                None
            };
            if let Some(reason) = refusal {
                started.failures.push(failure(reason, &arn));
                continue;
            }
            let task = self.place(&name, id, &td, cpu, memory, &ports, request, now);
            started.tasks.push((*task).clone());
        }
        Ok(started)
    }

    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        cluster: &str,
        instance_id: u128,
        td: &TaskDefinition,
        cpu: i64,
        memory: i64,
        ports: &[i64],
        request: &StartTask,
        now: u64,
    ) -> Arc<Task> {
        let id = self.random_id();
        let task_id = format_id(id);
        let task_arn = self.arn(&format!("task/{cluster}/{task_id}"));
        let containers = td
            .containers
            .iter()
            .map(|c| {
                let container_id = format_id(self.random_id());
                Container {
                    container_arn: self.arn(&format!("container/{cluster}/{task_id}/{container_id}")),
                    last_status: "PENDING".into(),
                    name: c.name.clone(),
                    exit_code: None,
                    network_bindings: c
                        .host_ports
                        .iter()
                        .map(|p| NetworkBinding {
                            bind_ip: "0.0.0.0".into(),
                            container_port: *p,
                            host_port: *p,
                            protocol: Some("tcp".into()),
                        })
                        .collect(),
                    reason: None,
                    // As ECS: UNKNOWN until a health check says otherwise, or for good without one.
                    health_status: Some(UNKNOWN.into()),
                }
            })
            .collect();
        let fails_to_start = (self.config.start_failure > 0.0
            && self.rng.random_bool(self.config.start_failure))
            || td.cannot_pull();
        let first_status = if self.config.provisioning_ms > 0 {
            "PROVISIONING"
        } else {
            "PENDING"
        };
        let c = self.clusters.get_mut(cluster).unwrap_or_else(|| unreachable!());
        let instance = c
            .instances
            .get_mut(&instance_id)
            .unwrap_or_else(|| unreachable!());
        let task = Task {
            cluster_arn: c.arn.clone(),
            container_instance_arn: Some(instance.desc.container_instance_arn.clone()),
            containers,
            created_at: Some(rfc3339_millis(now)),
            desired_status: "RUNNING".into(),
            last_status: first_status.into(),
            overrides: Default::default(),
            task_arn,
            task_definition_arn: format!(
                "arn:aws:ecs:{}:{}:task-definition/{}:{}",
                self.config.region, self.config.account, td.family, td.revision
            ),
            started_at: None,
            started_by: request.started_by.clone(),
            stopped_at: None,
            stopped_reason: None,
            group: Some(
                request
                    .group
                    .clone()
                    .unwrap_or_else(|| format!("family:{}", td.family)),
            ),
            launch_type: Some("EC2".into()),
            version: 0,
            updated_at: None,
            health_status: Some(UNKNOWN.into()),
        };
        instance.cpu_used += cpu;
        instance.memory_used += memory;
        instance.ports_used.extend(ports.iter().copied());
        instance.tasks.insert(id);
        c.tasks.insert(
            id,
            SimTask {
                desc: Arc::new(task),
                instance: Some(instance_id),
                family: td.family.clone(),
                revision: td.revision,
                cpu,
                memory,
                ports: ports.to_vec(),
                fails_to_start,
                exit_code: None,
            },
        );
        self.bump_task(cluster, id, now, |_| {});
        let delay = if first_status == "PROVISIONING" {
            self.config.provisioning_ms
        } else {
            self.config.pending_ms
        };
        self.schedule_step(cluster, id, now + delay);
        self.bump_instance(cluster, instance_id, now, true, |_| {});
        self.clusters[cluster].tasks[&id].desc.clone()
    }

    /// StopTask. Stopping a task that is already stopping or stopped changes nothing.
    pub fn stop_task(
        &mut self,
        cluster: &str,
        task: &str,
        reason: &str,
        now: u64,
    ) -> Result<Arc<Task>, SimError> {
        self.take(Family::Modify, now)?;
        self.stop(cluster, task, reason, now)
    }

    pub(crate) fn stop(
        &mut self,
        cluster: &str,
        task: &str,
        reason: &str,
        now: u64,
    ) -> Result<Arc<Task>, SimError> {
        let (name, id) = self.task_key(cluster, task)?;
        let reason = if reason.is_empty() {
            "Task stopped by user"
        } else {
            reason
        };
        if self.clusters[&name].tasks[&id].desc.desired_status != "STOPPED" {
            self.begin_stop(&name, id, reason, Some(143), now);
        }
        Ok(self.clusters[&name].tasks[&id].desc.clone())
    }

    /// A running task's essential container exits (a crash, an OOM kill).
    pub fn crash_task(
        &mut self,
        cluster: &str,
        task: &str,
        exit_code: i64,
        now: u64,
    ) -> Result<(), SimError> {
        let (name, id) = self.task_key(cluster, task)?;
        if self.clusters[&name].tasks[&id].desc.desired_status != "STOPPED" {
            self.begin_stop(&name, id, ESSENTIAL_EXITED, Some(exit_code), now);
        }
        Ok(())
    }

    fn begin_stop(&mut self, cluster: &str, id: u128, reason: &str, exit_code: Option<i64>, now: u64) {
        self.begin_stop_with(cluster, id, reason, exit_code, now, |_| {});
    }

    /// [`Ecs::begin_stop`] with more changes in the same version (the container that exited).
    fn begin_stop_with(
        &mut self,
        cluster: &str,
        id: u128,
        reason: &str,
        exit_code: Option<i64>,
        now: u64,
        also: impl FnOnce(&mut Task),
    ) {
        let Some(task) = self.clusters.get_mut(cluster).and_then(|c| c.tasks.get_mut(&id)) else {
            return;
        };
        // A task already stopping keeps its first reason and exit code (a host lost meanwhile
        // only hurries it along, see remove_instance).
        if task.desc.desired_status == "STOPPED" {
            return;
        }
        task.exit_code = exit_code;
        self.bump_task(cluster, id, now, |t| {
            t.desired_status = "STOPPED".into();
            t.stopped_reason = Some(reason.to_owned());
            also(t);
        });
        self.schedule_step(cluster, id, now + self.config.stopping_ms);
    }

    fn finish_stop(&mut self, cluster: &str, id: u128, now: u64) {
        let Some(c) = self.clusters.get_mut(cluster) else {
            return;
        };
        let Some(task) = c.tasks.get_mut(&id) else {
            return;
        };
        if task.desc.last_status == "STOPPED" {
            return;
        }
        let started = task.desc.started_at.is_some();
        let exit_code = task.exit_code;
        let instance = task.instance;
        if let Some(instance) = instance.and_then(|i| c.instances.get_mut(&i)) {
            instance.cpu_used -= task.cpu;
            instance.memory_used -= task.memory;
            for p in &task.ports {
                instance.ports_used.remove(p);
            }
            instance.tasks.remove(&id);
        }
        self.bump_task(cluster, id, now, |t| {
            t.last_status = "STOPPED".into();
            t.desired_status = "STOPPED".into();
            t.stopped_at = Some(rfc3339_millis(now));
            for c in &mut t.containers {
                c.last_status = "STOPPED".into();
                if started {
                    c.exit_code = exit_code;
                }
            }
        });
        if let Some(instance) = instance {
            self.bump_instance(cluster, instance, now, true, |_| {});
        }
        self.schedule(
            now + self.config.stopped_task_retention_ms,
            Timer::ExpireTask {
                cluster: cluster.to_owned(),
                id,
            },
        );
    }

    fn schedule_step(&mut self, cluster: &str, id: u128, at: u64) {
        let version = self.clusters[cluster].tasks[&id].desc.version;
        self.schedule(
            at,
            Timer::Task {
                cluster: cluster.to_owned(),
                id,
                version,
            },
        );
    }

    fn fire(&mut self, timer: Timer, now: u64) {
        match timer {
            Timer::Task { cluster, id, version } => {
                let Some(task) = self.clusters.get(&cluster).and_then(|c| c.tasks.get(&id)) else {
                    return;
                };
                if task.desc.version != version {
                    return; // superseded by a later change, which scheduled its own step
                }
                let (desired, last) = (task.desc.desired_status.clone(), task.desc.last_status.clone());
                let fails = task.fails_to_start;
                match (desired.as_str(), last.as_str()) {
                    ("RUNNING", "PROVISIONING") => {
                        self.bump_task(&cluster, id, now, |t| t.last_status = "PENDING".into());
                        self.schedule_step(&cluster, id, now + self.config.pending_ms);
                    }
                    ("RUNNING", "PENDING") if fails => {
                        // The containers whose image is missing, or all of them for a drawn failure.
                        let faulty: Vec<bool> = match self.definition_of(&cluster, id) {
                            Some(td) if td.cannot_pull() => td
                                .containers
                                .iter()
                                .map(|c| c.fault == Some(SimFault::CannotPull))
                                .collect(),
                            _ => Vec::new(),
                        };
                        self.bump_task(&cluster, id, now, |t| {
                            t.desired_status = "STOPPED".into();
                            t.stopped_reason = Some(
                                "CannotPullContainerError: pull image manifest has been retried 5 time(s): image not found"
                                    .into(),
                            );
                            for (i, c) in t.containers.iter_mut().enumerate() {
                                if faulty.get(i).copied().unwrap_or(true) {
                                    c.reason = Some("CannotPullContainerError".into());
                                }
                            }
                        });
                        self.finish_stop(&cluster, id, now);
                    }
                    ("RUNNING", "PENDING") => {
                        self.bump_task(&cluster, id, now, |t| {
                            t.last_status = "RUNNING".into();
                            t.started_at = Some(rfc3339_millis(now));
                            for c in &mut t.containers {
                                c.last_status = "RUNNING".into();
                            }
                        });
                        self.schedule_containers(&cluster, id, now);
                        if let Some(instance) = self.clusters[&cluster].tasks[&id].instance {
                            self.bump_instance(&cluster, instance, now, true, |_| {});
                        }
                    }
                    ("STOPPED", last) if last != "STOPPED" => self.finish_stop(&cluster, id, now),
                    _ => {}
                }
            }
            Timer::ExpireTask { cluster, id } => {
                if let Some(c) = self.clusters.get_mut(&cluster)
                    && c.tasks.get(&id).is_some_and(|t| t.desc.last_status == "STOPPED")
                {
                    c.tasks.remove(&id);
                }
            }
            Timer::PurgeInstance { cluster, id } => {
                if let Some(c) = self.clusters.get_mut(&cluster)
                    && c.instances.get(&id).is_some_and(|i| i.desc.status == "INACTIVE")
                {
                    c.instances.remove(&id);
                }
            }
            Timer::Container {
                cluster,
                id,
                container,
                step,
            } => self.container_step(&cluster, id, container, step, now),
        }
    }

    /// The definition a task runs, when it is still known.
    fn definition_of(&self, cluster: &str, id: u128) -> Option<&TaskDefinition> {
        let task = self.clusters.get(cluster)?.tasks.get(&id)?;
        self.task_definition(&task.family, task.revision)
    }

    /// A task just RUNNING: its containers' health verdicts and exits, as its definition has them.
    fn schedule_containers(&mut self, cluster: &str, id: u128, now: u64) {
        let Some(td) = self.definition_of(cluster, id) else {
            return;
        };
        let mut steps = Vec::new();
        for (container, c) in td.containers.iter().enumerate() {
            if let Some(check) = c.health_check {
                let healthy = c.fault != Some(SimFault::NeverHealthy);
                steps.push((
                    now + check.healthy_after_ms,
                    container,
                    ContainerStep::Health { healthy },
                ));
            }
            if let Some(SimFault::Crash { after_ms, exit_code }) = c.fault {
                steps.push((now + after_ms, container, ContainerStep::Exit { code: exit_code }));
            }
        }
        for (at, container, step) in steps {
            self.schedule(
                at,
                Timer::Container {
                    cluster: cluster.to_owned(),
                    id,
                    container,
                    step,
                },
            );
        }
    }

    /// A container's health verdict or exit, if its task and the container are still RUNNING.
    fn container_step(&mut self, cluster: &str, id: u128, container: usize, step: ContainerStep, now: u64) {
        let Some(task) = self.clusters.get(cluster).and_then(|c| c.tasks.get(&id)) else {
            return;
        };
        let running = task.desc.desired_status == "RUNNING"
            && task.desc.last_status == "RUNNING"
            && task
                .desc
                .containers
                .get(container)
                .is_some_and(|c| c.last_status == "RUNNING");
        let Some(td) = self.definition_of(cluster, id).filter(|_| running).cloned() else {
            return;
        };
        let essential = td.containers.get(container).is_some_and(|c| c.essential);
        match step {
            ContainerStep::Health { healthy } => {
                let verdict = if healthy { HEALTHY } else { UNHEALTHY };
                self.bump_task(cluster, id, now, |t| {
                    t.containers[container].health_status = Some(verdict.into());
                    t.health_status = Some(td.task_health(&t.containers).into());
                });
            }
            ContainerStep::Exit { code } if essential => {
                self.begin_stop_with(cluster, id, ESSENTIAL_EXITED, Some(code), now, |t| {
                    t.containers[container].last_status = "STOPPED".into();
                    t.containers[container].exit_code = Some(code);
                });
            }
            ContainerStep::Exit { code } => {
                self.bump_task(cluster, id, now, |t| {
                    t.containers[container].last_status = "STOPPED".into();
                    t.containers[container].exit_code = Some(code);
                });
            }
        }
    }

    fn bump_task(&mut self, cluster: &str, id: u128, now: u64, change: impl FnOnce(&mut Task)) {
        let Some(task) = self.clusters.get_mut(cluster).and_then(|c| c.tasks.get_mut(&id)) else {
            return;
        };
        let desc = Arc::make_mut(&mut task.desc);
        change(desc);
        desc.version += 1;
        if !self.quiet {
            let body = task_event(&task.desc, task.desc.version, &rfc3339_millis(now));
            self.outbox.push(Emitted { at_ms: now, body });
        }
    }

    fn task_key(&self, cluster: &str, task: &str) -> Result<(String, u128), SimError> {
        let c = self.cluster(cluster)?;
        match c.task(task) {
            Some((id, _)) => Ok((cluster_name(&c.arn).to_owned(), id)),
            None => Err(invalid("The referenced task was not found.")),
        }
    }

    /// ListTasks, one page. `desired_status` defaults to RUNNING; STOPPED lists tasks stopped within
    /// the retention. `started_by` goes with no other filter but the desired status (ECS: "it must
    /// be the only filter that you use"; it answers InvalidParameterException).
    pub fn list_tasks(
        &self,
        cluster: &str,
        filter: &TaskFilter,
        next_token: Option<&str>,
        max_results: Option<usize>,
        now: u64,
    ) -> Result<Page, SimError> {
        self.take(Family::List, now)?;
        let desired = filter.desired_status.as_deref().unwrap_or("RUNNING");
        if !matches!(desired, "RUNNING" | "PENDING" | "STOPPED") {
            return Err(invalid(format!(
                "desiredStatus: {desired:?} is not RUNNING, PENDING or STOPPED"
            )));
        }
        if filter.started_by.is_some() && (filter.container_instance.is_some() || filter.family.is_some()) {
            return Err(invalid("cannot specify startedBy with other arguments"));
        }
        let max = page_size(max_results)?;
        let start = start_after_id(next_token)?;
        let c = self.cluster(cluster)?;
        let instance = match &filter.container_instance {
            Some(reference) => match c.instance(reference) {
                Some((id, _)) => Some(id),
                // ECS answers an unknown instance with an empty list.
                None => return Ok(Page::default()),
            },
            None => None,
        };
        let mut page = Page::default();
        for task in c.tasks.range(after(start.as_ref())).map(|(_, t)| t) {
            let d = &task.desc;
            // ECS never sets a desired status of PENDING, so that filter lists nothing (API doc).
            let matches = d.desired_status == desired
                && filter
                    .started_by
                    .as_ref()
                    .is_none_or(|s| d.started_by.as_ref() == Some(s))
                && filter.family.as_ref().is_none_or(|f| *f == task.family)
                && instance.is_none_or(|i| task.instance == Some(i));
            if !matches {
                continue;
            }
            if page.arns.len() == max {
                page.next_token = Some(page_token(&page));
                break;
            }
            page.arns.push(d.task_arn.clone());
        }
        Ok(page)
    }

    /// DescribeTasks: at most 100 ids or ARNs; unknown ones are `MISSING` failures.
    pub fn describe_tasks(
        &self,
        cluster: &str,
        tasks: &[String],
        now: u64,
    ) -> Result<(Vec<Arc<Task>>, Vec<Failure>), SimError> {
        self.take(Family::Describe, now)?;
        check_describe_batch("tasks", tasks)?;
        let c = self.cluster(cluster)?;
        Ok(describe_each(tasks, |r| c.task(r).map(|(_, t)| t.desc.clone())))
    }

    // ---- views for drivers, tests and benchmarks -------------------------------------------

    /// A task of the cluster chosen near `probe` (ids are uniformly random, so this is a uniform
    /// pick without building a list) that satisfies `want`, looking at most at `limit` tasks.
    pub(crate) fn pick_task(
        &self,
        cluster: &str,
        probe: u128,
        limit: usize,
        want: impl Fn(&Task) -> bool,
    ) -> Option<Arc<Task>> {
        pick_near(
            &self.clusters.get(cluster)?.tasks,
            probe,
            limit,
            |t| &t.desc,
            want,
        )
    }

    /// An instance of the cluster chosen near `probe` that satisfies `want`; see [`Ecs::pick_task`].
    pub(crate) fn pick_instance(
        &self,
        cluster: &str,
        probe: u128,
        limit: usize,
        want: impl Fn(&ContainerInstance) -> bool,
    ) -> Option<Arc<ContainerInstance>> {
        pick_near(
            &self.clusters.get(cluster)?.instances,
            probe,
            limit,
            |i| &i.desc,
            want,
        )
    }

    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters.keys().cloned().collect()
    }

    /// Every instance ECS lists (not INACTIVE) and every task it still describes, per cluster:
    /// what the cluster-state service should mirror.
    pub fn listed(&self) -> BTreeMap<String, Listed> {
        self.clusters
            .iter()
            .map(|(name, c)| {
                let instances = c
                    .instances
                    .values()
                    .filter(|i| i.desc.status != "INACTIVE")
                    .map(|i| i.desc.clone())
                    .collect();
                let tasks = c.tasks.values().map(|t| t.desc.clone()).collect();
                (name.clone(), Listed { instances, tasks })
            })
            .collect()
    }

    /// Instances of a cluster, any status.
    pub fn instances(&self, cluster: &str) -> Vec<Arc<ContainerInstance>> {
        self.clusters
            .get(cluster)
            .map(|c| c.instances.values().map(|i| i.desc.clone()).collect())
            .unwrap_or_default()
    }

    /// Tasks of a cluster that are not STOPPED.
    pub fn live_tasks(&self, cluster: &str) -> Vec<Arc<Task>> {
        self.clusters
            .get(cluster)
            .map(|c| {
                c.tasks
                    .values()
                    .filter(|t| t.desc.last_status != "STOPPED")
                    .map(|t| t.desc.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// (instances not INACTIVE, tasks not STOPPED) over every cluster.
    pub fn totals(&self) -> (usize, usize) {
        self.clusters.values().fold((0, 0), |(i, t), c| {
            (
                i + c
                    .instances
                    .values()
                    .filter(|x| x.desc.status != "INACTIVE")
                    .count(),
                t + c
                    .tasks
                    .values()
                    .filter(|x| x.desc.last_status != "STOPPED")
                    .count(),
            )
        })
    }

    /// Task definitions, latest revision of each family.
    pub fn task_definition_families(&self) -> Vec<String> {
        self.task_definitions.keys().cloned().collect()
    }

    /// Saves to JSON (throttle buckets and undelivered events are not part of the state).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Loads what [`Ecs::to_json`] wrote; the throttle takes its configured shape with full buckets.
    pub fn from_json(json: &str) -> Result<Ecs, serde_json::Error> {
        let ecs: Ecs = serde_json::from_str(json)?;
        *ecs.throttle_state() = Throttle::new(ecs.config.throttle.clone());
        Ok(ecs)
    }
}

/// Recomputes what an instance's description derives from its bookkeeping.
fn refresh_instance(instance: &mut Instance, tasks: &BTreeMap<u128, SimTask>) {
    let (mut running, mut pending) = (0, 0);
    for id in &instance.tasks {
        match tasks.get(id).map(|t| t.desc.last_status.as_str()) {
            Some("RUNNING") => running += 1,
            Some(_) => pending += 1,
            None => {}
        }
    }
    let remaining = resources(
        instance.cpu - instance.cpu_used,
        instance.memory - instance.memory_used,
        &instance.ports_used,
    );
    let desc = Arc::make_mut(&mut instance.desc);
    desc.remaining_resources = remaining;
    desc.running_tasks_count = Some(running);
    desc.pending_tasks_count = Some(pending);
}

/// ECS's resource list: CPU, MEMORY, PORTS (reserved plus used, in numeric order as moto lists
/// them; ECS's string set has no order), PORTS_UDP.
fn resources(cpu: i64, memory: i64, ports: &BTreeSet<i64>) -> Vec<Resource> {
    let tcp: Vec<String> = RESERVED_PORTS
        .iter()
        .chain(ports.iter())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|p| p.to_string())
        .collect();
    vec![
        Resource::from_ecs("CPU", "INTEGER", Some(cpu), None, None, &[]),
        Resource::from_ecs("MEMORY", "INTEGER", Some(memory), None, None, &[]),
        Resource::from_ecs("PORTS", "STRINGSET", None, None, None, &tcp),
        Resource::from_ecs("PORTS_UDP", "STRINGSET", None, None, None, &[]),
    ]
}

/// `NAME` from a cluster name or ARN.
fn cluster_name(reference: &str) -> &str {
    reference
        .rsplit_once(":cluster/")
        .map_or(reference, |(_, name)| name)
}

/// The end of an ARN (`…/CLUSTER/ID` or `…/ID`), or the reference itself.
fn arn_tail(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

/// The id an ARN or bare id names; `None` when it is not an id this control plane could have made
/// (so it names nothing).
fn resource_id(reference: &str) -> Option<u128> {
    parse_id(arn_tail(reference))
}

/// An instance or task id as a number: ids are exactly 32 lowercase hex digits (see [`format_id`]),
/// so numeric order is the order of their text, which ListTasks and ListContainerInstances page in.
fn parse_id(id: &str) -> Option<u128> {
    // DescribeTasks parses 100 ids a call: a table lookup per digit, no branch, two independent halves.
    let bytes: &[u8; 32] = id.as_bytes().try_into().ok()?;
    let digits = bytes.map(|b| HEX_DIGIT[usize::from(b)]);
    if digits.iter().any(|&d| d > 15) {
        return None;
    }
    let half = |digits: &[u8]| digits.iter().fold(0_u64, |n, &d| n << 4 | u64::from(d));
    Some(u128::from(half(&digits[..16])) << 64 | u128::from(half(&digits[16..])))
}

/// The value of each lowercase hex digit; 16 for every other byte.
const HEX_DIGIT: [u8; 256] = {
    let mut table = [16; 256];
    let mut i = 0;
    while i < 16 {
        table[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// The text of an id, as it ends ARNs: what [`parse_id`] reads.
fn format_id(id: u128) -> String {
    format!("{id:032x}")
}

/// An ARN names the resource only if it is the resource's ARN (a bare id always does).
fn arn_matches(reference: &str, arn: &str) -> bool {
    !reference.starts_with("arn:") || reference == arn || {
        // Short-format ARN: arn:…:task/ID.
        let (prefix, id) = arn.rsplit_once('/').unwrap_or((arn, ""));
        let kind_prefix = prefix.rsplit_once('/').map_or(prefix, |(p, _)| p);
        reference == format!("{kind_prefix}/{id}")
    }
}

fn missing(reference: &str) -> Failure {
    Failure {
        arn: Some(reference.to_owned()),
        reason: "MISSING".into(),
        detail: None,
    }
}

/// What a Describe call returns for `references`: each one `lookup` finds, and a `MISSING` failure
/// for each it does not.
fn describe_each<T>(
    references: &[String],
    lookup: impl Fn(&str) -> Option<Arc<T>>,
) -> (Vec<Arc<T>>, Vec<Failure>) {
    let mut found = Vec::with_capacity(references.len());
    let mut failures = Vec::new();
    for reference in references {
        match lookup(reference) {
            Some(desc) => found.push(desc),
            None => failures.push(missing(reference)),
        }
    }
    (found, failures)
}

/// The first of at most `limit` entries from `probe` on (wrapping around) whose description
/// satisfies `want`: see [`Ecs::pick_task`].
fn pick_near<V, T>(
    map: &BTreeMap<u128, V>,
    probe: u128,
    limit: usize,
    desc: impl Fn(&V) -> &Arc<T>,
    want: impl Fn(&T) -> bool,
) -> Option<Arc<T>> {
    map.range(probe..)
        .chain(map.range(..probe))
        .take(limit)
        .map(|(_, v)| desc(v))
        .find(|d| want(d))
        .cloned()
}

fn check_describe_batch(field: &str, items: &[String]) -> Result<(), SimError> {
    if items.is_empty() {
        return Err(invalid(format!("{field} cannot be empty.")));
    }
    if items.len() > DESCRIBE_BATCH {
        return Err(invalid(format!(
            "{field} can have at most {DESCRIBE_BATCH} items."
        )));
    }
    Ok(())
}

fn page_size(max_results: Option<usize>) -> Result<usize, SimError> {
    match max_results {
        None => Ok(LIST_PAGE_MAX),
        Some(n) if (1..=LIST_PAGE_MAX).contains(&n) => Ok(n),
        Some(n) => Err(invalid(format!(
            "maxResults: {n} is not between 1 and {LIST_PAGE_MAX}"
        ))),
    }
}

/// A page token is the key the previous page ended after, hex-encoded so that it is opaque-looking
/// and checkable.
fn start_after(next_token: Option<&str>) -> Result<Option<String>, SimError> {
    next_token
        .map(|token| decode_token(token).ok_or_else(|| invalid("Invalid nextToken")))
        .transpose()
}

/// The start of a list keyed by id: a token that names no id is not one of this list's.
fn start_after_id(next_token: Option<&str>) -> Result<Option<u128>, SimError> {
    start_after(next_token)?
        .map(|key| parse_id(&key).ok_or_else(|| invalid("Invalid nextToken")))
        .transpose()
}

/// The keys after `start`, or all of them.
fn after<K: ?Sized>(start: Option<&K>) -> (Bound<&K>, Bound<&K>) {
    match start {
        Some(key) => (Bound::Excluded(key), Bound::Unbounded),
        None => (Bound::Unbounded, Bound::Unbounded),
    }
}

/// The token of a full page: the key of its last item (a cluster name or a resource id, both the
/// tail of the ARN).
fn page_token(page: &Page) -> String {
    let last = page.arns.last().map(String::as_str).unwrap_or_default();
    let key = last
        .rsplit_once(":cluster/")
        .map(|(_, name)| name)
        .unwrap_or_else(|| arn_tail(last));
    encode_token(key)
}

fn encode_token(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str) -> Option<String> {
    if token.is_empty() || !token.len().is_multiple_of(2) || token.len() > 1024 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_as_made() {
        for id in [0, 1, u128::from(u64::MAX) + 1, u128::MAX] {
            assert_eq!(parse_id(&format_id(id)), Some(id));
        }
        assert_eq!(
            resource_id("arn:aws:ecs:r:a:task/c/000000000000000000000000000000ff"),
            Some(255)
        );
        for not_an_id in [
            "",
            "feed",
            "0000000000000000000000000000000",   // 31 digits
            "000000000000000000000000000000000", // 33
            "000000000000000000000000000000FF",  // upper case
            "+0000000000000000000000000000000f",
            "0000000000000000000000000000000g",
            "arn:aws:ecs:r:a:task/c/",
        ] {
            assert_eq!(resource_id(not_an_id), None, "{not_an_id:?}");
        }
    }

    #[test]
    fn saved_state_keeps_ids_of_all_128_bits() {
        let mut ecs = Ecs::new(SimConfig::default(), 1);
        ecs.create_cluster("c").unwrap();
        let new = NewInstance::ec2("m5.large", "us-east-1a");
        let instance = ecs.register_instance("c", new, 0).unwrap();
        let id = resource_id(&instance.container_instance_arn).unwrap();
        // Move it to the top of the id space, beyond what f64 or u64 would keep.
        let c = ecs.clusters.get_mut("c").unwrap();
        let moved = c.instances.remove(&id).unwrap();
        c.instances.insert(u128::MAX, moved);
        ecs.schedule(
            1,
            Timer::PurgeInstance {
                cluster: "c".into(),
                id: u128::MAX - 1,
            },
        );
        let json = ecs.to_json().unwrap();
        let restored = Ecs::from_json(&json).unwrap();
        assert!(restored.clusters["c"].instances.contains_key(&u128::MAX));
        assert!(restored.timers.iter().any(|(_, _, t)| matches!(
            t,
            Timer::PurgeInstance { id, .. } if *id == u128::MAX - 1
        )));
        assert_eq!(restored.to_json().unwrap(), json);
    }
}
