//! The planner: which tasks to start and stop so that every eligible instance runs exactly one task of
//! the environment's current task definition, and no other instance runs one.
//!
//! A plan is a pure function of the environment, its current deployment, a view of the cluster (which
//! may lag behind ECS: events are delayed, duplicated and reordered, but the store's version rule keeps
//! each entity moving forward), the executor's start intents, and the time.
//!
//! Safety against double starts comes from the intents, not from the view: a start is recorded before
//! StartTask is called, and no instance with an unsettled intent gets another start. An intent goes
//! away only when its task is in view ([`Plan::settled`]; from then on the view itself guards the
//! instance, since a task seen occupying an instance stays so until ECS reports it STOPPED), when ECS
//! refused the start, or when the executor has asked ECS what runs on the instance and written the
//! answer to the store ([`Plan::verify`]). So, however stale the view, the planner never starts a task
//! on an instance where one it started may still be running, provided the intents it is given are
//! current (read back from where the executor wrote them) and verification sees what ECS has. If
//! verification can miss a task, a duplicate can arise; it is stopped as soon as it is in view.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use super::{
    Counts, Deployment, DeploymentConfiguration, EnvironmentStatus, FailedInstance, GROUP_PREFIX,
    InstanceGroup, Revision, group,
};
use crate::entity::{Attribute, ContainerInstance, Task};

/// How long a start intent without a task in view is trusted before the executor must ask ECS
/// (v0.3 waited the same minute for its cluster-state service to catch up). It should exceed a
/// StartTask call plus the usual event lag, or verification becomes the common path.
pub const DEFAULT_INTENT_TTL_MS: u64 = 60_000;

/// The planner's view of a container instance, borrowed from the stored entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceView<'a> {
    pub arn: &'a str,
    pub status: &'a str,
    pub agent_connected: bool,
    pub attributes: &'a [Attribute],
}

impl<'a> From<&'a ContainerInstance> for InstanceView<'a> {
    fn from(instance: &'a ContainerInstance) -> Self {
        InstanceView {
            arn: &instance.container_instance_arn,
            status: &instance.status,
            agent_connected: instance.agent_connected,
            attributes: &instance.attributes,
        }
    }
}

/// The planner's view of a task, borrowed from the stored entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskView<'a> {
    pub arn: &'a str,
    pub container_instance_arn: Option<&'a str>,
    pub started_by: Option<&'a str>,
    pub group: Option<&'a str>,
    pub task_definition_arn: &'a str,
    pub last_status: &'a str,
    pub desired_status: &'a str,
}

impl<'a> From<&'a Task> for TaskView<'a> {
    fn from(task: &'a Task) -> Self {
        TaskView {
            arn: &task.task_arn,
            container_instance_arn: task.container_instance_arn.as_deref(),
            started_by: task.started_by.as_deref(),
            group: task.group.as_deref(),
            task_definition_arn: &task.task_definition_arn,
            last_status: &task.last_status,
            desired_status: &task.desired_status,
        }
    }
}

impl TaskView<'_> {
    /// Still on its instance: not yet STOPPED, whatever ECS has been asked. A replacement waits for
    /// this to end, so that two tasks of an environment never share an instance.
    fn occupying(&self) -> bool {
        !matches!(self.last_status, "STOPPED" | "DELETED")
    }

    /// Occupying and meant to keep running: the tasks the planner keeps or stops.
    fn live(&self) -> bool {
        self.occupying() && self.desired_status != "STOPPED"
    }

    /// How far along its lifecycle a live task is, to keep the one closest to serving.
    fn progress(&self) -> u8 {
        match self.last_status {
            "RUNNING" => 5,
            "ACTIVATING" => 4,
            "PENDING" => 3,
            "PROVISIONING" => 2,
            "DEACTIVATING" | "STOPPING" | "DEPROVISIONING" => 0,
            _ => 1,
        }
    }
}

/// A task of a [`ClusterView`] (an index into its tasks) and its instance (an index into its sorted
/// instances, or [`UNKNOWN`]).
#[derive(Debug, Clone, Copy)]
struct Entry {
    slot: usize,
    index: usize,
}

/// A task with its instance, as a plan sees it.
#[derive(Debug, Clone, Copy)]
struct Placed<'t, 'a> {
    slot: usize,
    task: &'t TaskView<'a>,
}

/// A hash map keyed by ARNs and groups, which come from ECS, not from an adversary: FxHash (rustc's)
/// instead of SipHash, as indexing a whole cluster is mostly hashing.
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
type FastSet<K> = HashSet<K, BuildHasherDefault<FxHasher>>;

#[derive(Debug, Clone, Copy, Default)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut buf = [0; 8];
            buf.copy_from_slice(word);
            self.add(u64::from_le_bytes(buf));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut buf = [0; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The slot of a task whose instance is not in the view (or that has none).
const UNKNOWN: usize = usize::MAX;

/// One cluster's instances and scheduler tasks, indexed once and shared by the plans of all the
/// environments on the cluster, so that a full pass is linear in instances and tasks.
#[derive(Debug, Clone, Default)]
pub struct ClusterView<'a> {
    /// Sorted by ARN, so that plans come out in the same order whatever order the store gave.
    instances: Vec<InstanceView<'a>>,
    slots: FastMap<&'a str, usize>,
    /// Only tasks of groups with [`GROUP_PREFIX`]: the rest can belong to no environment.
    tasks: Vec<TaskView<'a>>,
    groups: FastMap<&'a str, Vec<Entry>>,
}

impl<'a> ClusterView<'a> {
    /// Every instance of the cluster, and its tasks (any status; STOPPED ones still in the store settle
    /// intents sooner). The view must be complete: a task whose instance it lacks is taken to be on an
    /// instance that left, and is stopped, so a cluster is planned only once it has been loaded.
    /// Instances are expected unique by ARN (the store's are); of duplicates one is kept.
    pub fn new(
        instances: impl IntoIterator<Item = InstanceView<'a>>,
        tasks: impl IntoIterator<Item = TaskView<'a>>,
    ) -> Self {
        let mut instances: Vec<InstanceView<'a>> = instances.into_iter().collect();
        // Stores list by key, so this is usually a check.
        if !instances.is_sorted_by(|a, b| a.arn <= b.arn) {
            instances.sort_unstable_by(|a, b| a.arn.cmp(b.arn));
        }
        instances.dedup_by(|a, b| a.arn == b.arn);
        let slots: FastMap<&'a str, usize> = instances.iter().enumerate().map(|(i, v)| (v.arn, i)).collect();
        let tasks = tasks.into_iter();
        let mut kept = Vec::with_capacity(tasks.size_hint().0);
        let mut groups: FastMap<&'a str, Vec<Entry>> = FastMap::default();
        for task in tasks {
            let Some(group) = task.group.filter(|g| g.starts_with(GROUP_PREFIX)) else {
                continue;
            };
            let slot = task
                .container_instance_arn
                .and_then(|arn| slots.get(arn).copied())
                .unwrap_or(UNKNOWN);
            let entry = Entry {
                slot,
                index: kept.len(),
            };
            kept.push(task);
            // Not `entry`, which costs more here: groups are few, tasks many.
            match groups.get_mut(group) {
                Some(entries) => entries.push(entry),
                None => drop(groups.insert(group, vec![entry])),
            }
        }
        ClusterView {
            instances,
            slots,
            tasks: kept,
            groups,
        }
    }

    pub fn instances(&self) -> &[InstanceView<'a>] {
        &self.instances
    }

    pub fn instance(&self, arn: &str) -> Option<&InstanceView<'a>> {
        self.slots.get(arn).map(|&slot| &self.instances[slot])
    }
}

/// What the current deployment wants.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub deployment_id: &'a str,
    pub revision: u64,
    pub task_definition: &'a str,
    pub instance_group: &'a InstanceGroup,
    pub config: DeploymentConfiguration,
}

impl<'a> Target<'a> {
    /// The target of `deployment`, which deploys `revision`.
    pub fn new(revision: &'a Revision, deployment: &'a Deployment) -> Self {
        Target {
            deployment_id: &deployment.id,
            revision: deployment.revision,
            task_definition: &deployment.task_definition,
            instance_group: &revision.instance_group,
            config: revision.deployment,
        }
    }
}

/// A start the executor has decided on, recorded durably before it calls StartTask so that after a
/// crash nothing is started twice. `task_arn` is filled in once ECS has answered with the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartIntent {
    #[serde(rename = "containerInstanceARN", alias = "containerInstanceArn")]
    pub instance_arn: String,
    pub deployment_id: String,
    #[serde(rename = "recordedAt", with = "super::rfc3339")]
    pub recorded_at_ms: u64,
    #[serde(
        rename = "taskARN",
        alias = "taskArn",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub task_arn: Option<String>,
}

impl StartIntent {
    pub fn key(&self) -> IntentKey {
        IntentKey {
            instance_arn: self.instance_arn.clone(),
            deployment_id: self.deployment_id.clone(),
        }
    }
}

/// Identifies a start intent: at most one per instance and deployment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IntentKey {
    pub instance_arn: String,
    pub deployment_id: String,
}

/// Everything a plan depends on, besides the time.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub environment: &'a str,
    pub status: EnvironmentStatus,
    pub target: Target<'a>,
    /// Every deployment the environment has had: a task is the environment's when its `startedBy` is
    /// one of them (the target's is always included) and its group is [`group`]`(environment)`.
    pub deployment_ids: &'a [String],
    pub cluster: &'a ClusterView<'a>,
    /// The environment's start intents (of any of its deployments), as the executor last wrote them.
    pub intents: &'a [StartIntent],
    /// The current deployment's failed instances (back-off state).
    pub failed: &'a [FailedInstance],
    pub intent_ttl_ms: u64,
}

/// What to do now. Every list is sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Instances to start the target's task on (startedBy = its deployment, group = the environment's).
    pub starts: Vec<String>,
    pub stops: Vec<Stop>,
    /// Instances with an unsettled intent older than the TTL: nothing is started there until the
    /// executor has asked ECS what runs on the instance (ListTasks by container instance, then
    /// DescribeTasks), written what it found to the store, and deleted the instance's expired intents.
    pub verify: Vec<String>,
    /// Intents whose task is in view (by its ARN, or before ECS answered, a task of the intent's
    /// deployment occupying the instance): the executor deletes them, the view now guards the instance.
    pub settled: Vec<IntentKey>,
    /// Failed instances that no longer need a retry (they have their task, or should not have one).
    pub clear_failed: Vec<String>,
    /// Instances in back-off after a failed start, and when they may be retried.
    pub waiting: Vec<(String, u64)>,
    pub counts: Counts,
    /// Converged: every eligible instance has exactly one RUNNING task of the target's task definition,
    /// no other instance has a task the environment should not have, nothing is being stopped, no start
    /// is in flight and nothing is waiting. Daemons kept on draining or agent-disconnected instances
    /// do not hold this up. A deleting environment is complete once none of its tasks is left.
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stop {
    pub task_arn: String,
    pub reason: StopReason,
}

/// Why a task is stopped; its `Display` is meant for StopTask's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopReason {
    /// Another task of the environment is kept on the same instance.
    Duplicate,
    /// An older task definition, replaced by this revision's.
    Replaced { revision: u64 },
    /// The instance is draining and the revision stops daemons on drain.
    Drained,
    /// The instance no longer matches the revision's instance group.
    NotInGroup,
    /// The instance is INACTIVE (or otherwise not ACTIVE or DRAINING), or not in the cluster any more.
    InstanceGone,
    /// The environment is being deleted with `terminateTasks`.
    EnvironmentDeleted,
}

impl StopReason {
    /// A stable name, e.g. for metric labels.
    pub fn code(self) -> &'static str {
        match self {
            StopReason::Duplicate => "duplicate",
            StopReason::Replaced { .. } => "replaced",
            StopReason::Drained => "drained",
            StopReason::NotInGroup => "not-in-group",
            StopReason::InstanceGone => "instance-gone",
            StopReason::EnvironmentDeleted => "environment-deleted",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Duplicate => {
                f.write_str("duplicate: another task of the environment runs on this instance")
            }
            StopReason::Replaced { revision } => write!(f, "replaced by revision {revision}"),
            StopReason::Drained => f.write_str("instance is draining"),
            StopReason::NotInGroup => f.write_str("instance left the environment's instance group"),
            StopReason::InstanceGone => f.write_str("instance left the cluster"),
            StopReason::EnvironmentDeleted => f.write_str("environment deleted"),
        }
    }
}

/// What an instance is to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// ACTIVE, agent connected, in the instance group: exactly one task of the target.
    Eligible,
    /// DRAINING (the daemon outlives the instance's other tasks) or agent-disconnected (nothing can be
    /// started, and stopping would only take effect on reconnection): keep one task, start none.
    Keep,
    /// Should have none of the environment's tasks.
    Evict(StopReason),
}

fn role(instance: &InstanceView<'_>, target: &Target<'_>) -> Role {
    let in_group = || target.instance_group.matches(instance.attributes);
    match instance.status {
        "ACTIVE" if !in_group() => Role::Evict(StopReason::NotInGroup),
        "ACTIVE" if instance.agent_connected => Role::Eligible,
        "ACTIVE" => Role::Keep,
        "DRAINING" if target.config.stop_on_drain => Role::Evict(StopReason::Drained),
        "DRAINING" if !in_group() => Role::Evict(StopReason::NotInGroup),
        "DRAINING" => Role::Keep,
        _ => Role::Evict(StopReason::InstanceGone),
    }
}

/// The plan for one environment at `now_ms`. Linear in the cluster's instances plus the environment's
/// tasks, intents and failed instances (and a sort of the environment's tasks).
pub fn plan(input: &PlanInput<'_>, now_ms: u64) -> Plan {
    let terminate = match input.status {
        EnvironmentStatus::Active => false,
        // The tasks are left running: there is nothing to decide.
        EnvironmentStatus::Deleting {
            terminate_tasks: false,
        } => {
            return Plan {
                complete: true,
                ..Plan::default()
            };
        }
        EnvironmentStatus::Deleting {
            terminate_tasks: true,
        } => true,
    };
    let group = group(input.environment);
    let cluster = input.cluster;
    let tasks: Vec<Placed<'_, '_>> = cluster
        .groups
        .get(group.as_str())
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|e| Placed {
            slot: e.slot,
            task: &cluster.tasks[e.index],
        })
        .collect();
    let ids: FastSet<&str> = input
        .deployment_ids
        .iter()
        .map(String::as_str)
        .chain([input.target.deployment_id])
        .collect();
    // The environment's tasks still on an instance, by instance; a task listed twice counts once.
    let mut owned: Vec<Placed<'_, '_>> = tasks
        .iter()
        .filter(|p| p.task.occupying() && p.task.started_by.is_some_and(|s| ids.contains(s)))
        .copied()
        .collect();
    owned.sort_unstable_by(|a, b| a.slot.cmp(&b.slot).then_with(|| a.task.arn.cmp(b.task.arn)));
    owned.dedup_by(|a, b| a.slot == b.slot && a.task.arn == b.task.arn);

    let mut plan = Plan::default();
    let blocked = resolve_intents(input, &tasks, &owned, now_ms, &mut plan);
    let mut busy = !blocked.is_empty();

    if terminate {
        for p in &owned {
            busy = true;
            if p.task.live() {
                plan.stop(p.task, StopReason::EnvironmentDeleted);
            }
            if p.task.last_status == "RUNNING" {
                plan.counts.running += 1;
            } else {
                plan.counts.pending += 1;
            }
        }
        plan.stops.sort_unstable();
        plan.complete = !busy;
        return plan;
    }

    let target = &input.target;
    let failed: HashMap<&str, &FailedInstance> = input.failed.iter().map(|f| (f.arn.as_str(), f)).collect();
    let mut cursor = 0;
    for (slot, instance) in cluster.instances.iter().enumerate() {
        let start = cursor;
        while cursor < owned.len() && owned[cursor].slot == slot {
            cursor += 1;
        }
        let here = &owned[start..cursor];
        let failure = if failed.is_empty() {
            None
        } else {
            failed.get(instance.arn).copied()
        };
        let role = role(instance, target);
        if role != Role::Eligible && failure.is_some() {
            plan.clear_failed.push(instance.arn.to_owned());
        }
        match role {
            Role::Evict(reason) => {
                busy |= !here.is_empty();
                for p in here.iter().filter(|p| p.task.live()) {
                    plan.stop(p.task, reason);
                }
            }
            Role::Keep => {
                busy |= here.len() > 1;
                if let Some(kept) = best(here, target) {
                    plan.stop_all_but(here, kept, target);
                }
            }
            Role::Eligible => {
                plan.counts.desired += 1;
                match best(here, target) {
                    Some(kept) if kept.task_definition_arn == target.task_definition => {
                        plan.stop_all_but(here, kept, target);
                        if failure.is_some() {
                            plan.clear_failed.push(instance.arn.to_owned());
                        }
                        if kept.last_status == "RUNNING" {
                            plan.counts.running += 1;
                            busy |= here.len() > 1;
                        } else {
                            plan.counts.pending += 1;
                            busy = true;
                        }
                        continue;
                    }
                    // Terminate, then replace: the old task goes now, the new one comes once
                    // nothing of the environment is left on the instance.
                    Some(old) => {
                        plan.stop_all_but(here, old, target);
                        plan.stop(old, reason_for(old, target));
                    }
                    // A task still stopping, or a start in flight.
                    None if !here.is_empty() || blocked.contains(instance.arn) => {}
                    None => match failure.filter(|f| f.retry_at_ms > now_ms) {
                        Some(f) => plan.waiting.push((instance.arn.to_owned(), f.retry_at_ms)),
                        None => plan.starts.push(instance.arn.to_owned()),
                    },
                }
                // Without its task of the target yet.
                busy = true;
                if failure.is_some() {
                    plan.counts.failed += 1;
                } else {
                    plan.counts.pending += 1;
                }
            }
        }
    }
    // Tasks on instances the view does not have: they left.
    for p in &owned[cursor..] {
        busy = true;
        if p.task.live() {
            plan.stop(p.task, StopReason::InstanceGone);
        }
    }
    for f in input.failed {
        if !cluster.slots.contains_key(f.arn.as_str()) {
            plan.clear_failed.push(f.arn.clone());
        }
    }
    plan.stops.sort_unstable();
    plan.clear_failed.sort_unstable();
    plan.clear_failed.dedup();
    plan.complete = !busy;
    plan
}

/// The live task to keep on an instance: the target's task definition first, then the most advanced
/// status, then the greatest ARN (any fixed rule will do; this one is deterministic).
fn best<'t, 'a>(here: &[Placed<'t, 'a>], target: &Target<'_>) -> Option<&'t TaskView<'a>> {
    here.iter().map(|p| p.task).filter(|t| t.live()).max_by(|a, b| {
        let rank = |t: &TaskView<'_>| (t.task_definition_arn == target.task_definition, t.progress());
        rank(a).cmp(&rank(b)).then_with(|| a.arn.cmp(b.arn))
    })
}

fn reason_for(task: &TaskView<'_>, target: &Target<'_>) -> StopReason {
    if task.task_definition_arn == target.task_definition {
        StopReason::Duplicate
    } else {
        StopReason::Replaced {
            revision: target.revision,
        }
    }
}

impl Plan {
    fn stop(&mut self, task: &TaskView<'_>, reason: StopReason) {
        self.stops.push(Stop {
            task_arn: task.arn.to_owned(),
            reason,
        });
    }

    /// Stops every live task of `here` but `kept` (tasks already being stopped are left to finish).
    fn stop_all_but(&mut self, here: &[Placed<'_, '_>], kept: &TaskView<'_>, target: &Target<'_>) {
        for p in here {
            if p.task.live() && p.task.arn != kept.arn {
                self.stop(p.task, reason_for(p.task, target));
            }
        }
    }
}

/// Settles what intents can be settled and returns the instances the others block. An intent settles
/// when its task is in view (by ARN, whatever its status), or, before ECS has answered with an ARN,
/// when a task of its deployment occupies its instance. Unsettled intents older than the TTL are
/// listed for verification.
fn resolve_intents<'a>(
    input: &PlanInput<'a>,
    tasks: &[Placed<'_, '_>],
    owned: &[Placed<'_, '_>],
    now_ms: u64,
    plan: &mut Plan,
) -> HashSet<&'a str> {
    let mut blocked = HashSet::new();
    if input.intents.is_empty() {
        return blocked;
    }
    let wanted: HashSet<&str> = input
        .intents
        .iter()
        .filter_map(|i| i.task_arn.as_deref())
        .collect();
    let visible: HashSet<&str> = if wanted.is_empty() {
        HashSet::new()
    } else {
        tasks
            .iter()
            .map(|p| p.task.arn)
            .filter(|arn| wanted.contains(arn))
            .collect()
    };
    let instances: HashSet<&str> = input.intents.iter().map(|i| i.instance_arn.as_str()).collect();
    let landed: HashSet<(&str, &str)> = owned
        .iter()
        .filter_map(|p| Some((p.task.container_instance_arn?, p.task.started_by?)))
        .filter(|(instance, _)| instances.contains(instance))
        .collect();
    let mut verify = HashSet::new();
    for intent in input.intents {
        let instance = intent.instance_arn.as_str();
        let settled = match &intent.task_arn {
            Some(arn) => visible.contains(arn.as_str()),
            None => landed.contains(&(instance, intent.deployment_id.as_str())),
        };
        if settled {
            plan.settled.push(intent.key());
            continue;
        }
        blocked.insert(instance);
        if now_ms >= intent.recorded_at_ms.saturating_add(input.intent_ttl_ms) {
            verify.insert(instance);
        }
    }
    plan.settled.sort_unstable();
    plan.settled.dedup();
    plan.verify = verify.into_iter().map(str::to_owned).collect();
    plan.verify.sort_unstable();
    blocked
}

/// Records that ECS refused to start the task on `arn`: the next try waits `initial × 2^(attempts-1)`,
/// at most `max`. Entries stay sorted by ARN.
pub fn record_start_failure(
    failed: &mut Vec<FailedInstance>,
    arn: &str,
    reason: &str,
    now_ms: u64,
    config: &DeploymentConfiguration,
) {
    let index = match failed.binary_search_by(|f| f.arn.as_str().cmp(arn)) {
        Ok(index) => index,
        Err(index) => {
            failed.insert(
                index,
                FailedInstance {
                    arn: arn.to_owned(),
                    reason: String::new(),
                    attempts: 0,
                    retry_at_ms: 0,
                },
            );
            index
        }
    };
    let entry = &mut failed[index];
    entry.attempts = entry.attempts.saturating_add(1);
    let factor = 1u64.checked_shl(entry.attempts - 1).unwrap_or(u64::MAX);
    let delay = config
        .start_backoff_initial_ms
        .saturating_mul(factor)
        .min(config.start_backoff_max_ms);
    entry.reason = reason.to_owned();
    entry.retry_at_ms = now_ms.saturating_add(delay);
}

/// Forgets the failures of instances that got their task (StartTask succeeded there) or no longer
/// need one ([`Plan::clear_failed`]).
pub fn clear_started(failed: &mut Vec<FailedInstance>, instance_arns: &[String]) {
    if instance_arns.is_empty() {
        return;
    }
    let clear: HashSet<&str> = instance_arns.iter().map(String::as_str).collect();
    failed.retain(|f| !clear.contains(f.arn.as_str()));
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURRENT: &str = "d2";
    const OLD: &str = "d1";
    const TD: &str = "td:2";
    const OLD_TD: &str = "td:1";

    /// An instance: `stack=prod` or `stack=dev`.
    #[derive(Clone)]
    struct I {
        arn: &'static str,
        status: &'static str,
        connected: bool,
        attributes: Vec<Attribute>,
    }

    fn instance(arn: &'static str, status: &'static str) -> I {
        I {
            arn,
            status,
            connected: true,
            attributes: vec![Attribute {
                name: "stack".into(),
                value: Some("prod".into()),
            }],
        }
    }
    fn active(arn: &'static str) -> I {
        instance(arn, "ACTIVE")
    }
    fn draining(arn: &'static str) -> I {
        instance(arn, "DRAINING")
    }
    fn inactive(arn: &'static str) -> I {
        instance(arn, "INACTIVE")
    }
    fn disconnected(arn: &'static str) -> I {
        I {
            connected: false,
            ..active(arn)
        }
    }
    fn dev(i: I) -> I {
        I {
            attributes: vec![Attribute {
                name: "stack".into(),
                value: Some("dev".into()),
            }],
            ..i
        }
    }

    /// A task, by default the current deployment's, RUNNING.
    #[derive(Clone, Copy)]
    struct T {
        arn: &'static str,
        instance: Option<&'static str>,
        by: &'static str,
        group: &'static str,
        td: &'static str,
        last: &'static str,
        desired: &'static str,
    }

    fn task(arn: &'static str, instance: &'static str) -> T {
        T {
            arn,
            instance: Some(instance),
            by: CURRENT,
            group: "blox:web",
            td: TD,
            last: "RUNNING",
            desired: "RUNNING",
        }
    }

    impl T {
        /// Of the previous deployment, with the previous task definition.
        fn old(self) -> T {
            T {
                by: OLD,
                td: OLD_TD,
                ..self
            }
        }
        fn last(self, last: &'static str) -> T {
            T { last, ..self }
        }
        /// Asked to stop, not stopped yet.
        fn stopping(self) -> T {
            T {
                desired: "STOPPED",
                ..self
            }
        }
        fn stopped(self) -> T {
            T {
                desired: "STOPPED",
                last: "STOPPED",
                ..self
            }
        }
        fn by(self, by: &'static str) -> T {
            T { by, ..self }
        }
        fn group(self, group: &'static str) -> T {
            T { group, ..self }
        }
        fn td(self, td: &'static str) -> T {
            T { td, ..self }
        }
        fn nowhere(self) -> T {
            T {
                instance: None,
                ..self
            }
        }
    }

    fn intent(instance: &str, deployment: &str, at: u64, task: Option<&str>) -> StartIntent {
        StartIntent {
            instance_arn: instance.into(),
            deployment_id: deployment.into(),
            recorded_at_ms: at,
            task_arn: task.map(str::to_owned),
        }
    }

    fn failure(arn: &str, retry_at_ms: u64) -> FailedInstance {
        FailedInstance {
            arn: arn.into(),
            reason: "RESOURCE:MEMORY".into(),
            attempts: 1,
            retry_at_ms,
        }
    }

    struct Case {
        instances: Vec<I>,
        tasks: Vec<T>,
        intents: Vec<StartIntent>,
        failed: Vec<FailedInstance>,
        status: EnvironmentStatus,
        stop_on_drain: bool,
        /// Only `stack=prod` instances are in the group.
        prod_only: bool,
        now: u64,
    }

    impl Default for Case {
        fn default() -> Self {
            Case {
                instances: vec![],
                tasks: vec![],
                intents: vec![],
                failed: vec![],
                status: EnvironmentStatus::Active,
                stop_on_drain: false,
                prod_only: false,
                now: 100_000,
            }
        }
    }

    fn run(case: &Case) -> Plan {
        let instance_group = InstanceGroup {
            cluster_arn: "c".into(),
            attributes: if case.prod_only {
                vec![Attribute {
                    name: "stack".into(),
                    value: Some("prod".into()),
                }]
            } else {
                vec![]
            },
        };
        let cluster = ClusterView::new(
            case.instances.iter().map(|i| InstanceView {
                arn: i.arn,
                status: i.status,
                agent_connected: i.connected,
                attributes: &i.attributes,
            }),
            case.tasks.iter().map(|t| TaskView {
                arn: t.arn,
                container_instance_arn: t.instance,
                started_by: Some(t.by),
                group: Some(t.group),
                task_definition_arn: t.td,
                last_status: t.last,
                desired_status: t.desired,
            }),
        );
        let ids = [OLD.to_owned(), CURRENT.to_owned()];
        let input = PlanInput {
            environment: "web",
            status: case.status,
            target: Target {
                deployment_id: CURRENT,
                revision: 2,
                task_definition: TD,
                instance_group: &instance_group,
                config: DeploymentConfiguration {
                    stop_on_drain: case.stop_on_drain,
                    ..DeploymentConfiguration::default()
                },
            },
            deployment_ids: &ids,
            cluster: &cluster,
            intents: &case.intents,
            failed: &case.failed,
            intent_ttl_ms: DEFAULT_INTENT_TTL_MS,
        };
        plan(&input, case.now)
    }

    /// The plan, one line per decision, in a fixed order.
    fn render(plan: &Plan) -> Vec<String> {
        let mut lines = Vec::new();
        lines.extend(plan.starts.iter().map(|i| format!("start {i}")));
        lines.extend(
            plan.stops
                .iter()
                .map(|s| format!("stop {} ({})", s.task_arn, s.reason.code())),
        );
        lines.extend(plan.verify.iter().map(|i| format!("verify {i}")));
        lines.extend(
            plan.settled
                .iter()
                .map(|k| format!("settled {}/{}", k.instance_arn, k.deployment_id)),
        );
        lines.extend(plan.clear_failed.iter().map(|i| format!("clear {i}")));
        lines.extend(plan.waiting.iter().map(|(i, at)| format!("wait {i} until {at}")));
        let c = plan.counts;
        lines.push(format!(
            "desired {} running {} pending {} failed {}",
            c.desired, c.running, c.pending, c.failed
        ));
        if plan.complete {
            lines.push("complete".into());
        }
        lines
    }

    fn check(name: &str, case: Case, want: &[&str]) {
        let plan = run(&case);
        assert_eq!(render(&plan), want, "{name}");
        let c = plan.counts;
        if case.status == EnvironmentStatus::Active {
            assert_eq!(
                c.desired,
                c.running + c.pending + c.failed,
                "{name}: counts add up"
            );
        }
        // The input's order does not matter.
        let reversed = Case {
            instances: case.instances.iter().rev().cloned().collect(),
            tasks: case.tasks.iter().rev().copied().collect(),
            intents: case.intents.iter().rev().cloned().collect(),
            failed: case.failed.iter().rev().cloned().collect(),
            ..case
        };
        assert_eq!(run(&reversed), plan, "{name}: reversed input");
    }

    #[test]
    fn eligible_instances_get_exactly_one_task() {
        check(
            "an empty eligible instance gets a task",
            Case {
                instances: vec![active("i1")],
                ..Case::default()
            },
            &["start i1", "desired 1 running 0 pending 1 failed 0"],
        );
        check(
            "a RUNNING task of the target is converged",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1")],
                ..Case::default()
            },
            &["desired 1 running 1 pending 0 failed 0", "complete"],
        );
        check(
            "a PENDING task of the target is waited for",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1").last("PENDING")],
                ..Case::default()
            },
            &["desired 1 running 0 pending 1 failed 0"],
        );
        check(
            "starts are sorted whatever the order of instances",
            Case {
                instances: vec![active("i3"), draining("i2"), active("i1")],
                tasks: vec![],
                ..Case::default()
            },
            &["start i1", "start i3", "desired 2 running 0 pending 2 failed 0"],
        );
        check(
            "a crashed task is replaced",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1").stopped()],
                ..Case::default()
            },
            &["start i1", "desired 1 running 0 pending 1 failed 0"],
        );
        check(
            "a task that is stopping is waited for before a new one starts",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1").stopping()],
                ..Case::default()
            },
            &["desired 1 running 0 pending 1 failed 0"],
        );
        check(
            "the instance group selects instances by attribute",
            Case {
                instances: vec![active("i1"), dev(active("i2"))],
                prod_only: true,
                ..Case::default()
            },
            &["start i1", "desired 1 running 0 pending 1 failed 0"],
        );
    }

    #[test]
    fn ineligible_instances_get_no_new_task() {
        for (name, i) in [
            ("draining", draining("i1")),
            ("inactive", inactive("i1")),
            ("agent disconnected", disconnected("i1")),
            ("registering", instance("i1", "REGISTERING")),
        ] {
            check(
                name,
                Case {
                    instances: vec![i],
                    ..Case::default()
                },
                &["desired 0 running 0 pending 0 failed 0", "complete"],
            );
        }
        check(
            "outside the instance group",
            Case {
                instances: vec![dev(active("i1"))],
                prod_only: true,
                ..Case::default()
            },
            &["desired 0 running 0 pending 0 failed 0", "complete"],
        );
    }

    #[test]
    fn draining_and_departed_instances() {
        check(
            "the daemon on a draining instance is kept",
            Case {
                instances: vec![draining("i1")],
                tasks: vec![task("t1", "i1")],
                ..Case::default()
            },
            &["desired 0 running 0 pending 0 failed 0", "complete"],
        );
        check(
            "even of an older revision: nothing could replace it",
            Case {
                instances: vec![draining("i1")],
                tasks: vec![task("t1", "i1").old()],
                ..Case::default()
            },
            &["desired 0 running 0 pending 0 failed 0", "complete"],
        );
        check(
            "unless the revision stops daemons on drain",
            Case {
                instances: vec![draining("i1")],
                tasks: vec![task("t1", "i1")],
                stop_on_drain: true,
                ..Case::default()
            },
            &["stop t1 (drained)", "desired 0 running 0 pending 0 failed 0"],
        );
        check(
            "a draining instance keeps one daemon, not two",
            Case {
                instances: vec![draining("i1")],
                tasks: vec![task("t1", "i1").old(), task("t2", "i1"), task("t3", "i1")],
                ..Case::default()
            },
            &[
                "stop t1 (replaced)",
                "stop t2 (duplicate)",
                "desired 0 running 0 pending 0 failed 0",
            ],
        );
        check(
            "a draining instance outside the group keeps nothing",
            Case {
                instances: vec![dev(draining("i1"))],
                tasks: vec![task("t1", "i1")],
                prod_only: true,
                ..Case::default()
            },
            &["stop t1 (not-in-group)", "desired 0 running 0 pending 0 failed 0"],
        );
        check(
            "an agent-disconnected instance keeps its daemon, whatever its revision",
            Case {
                instances: vec![disconnected("i1")],
                tasks: vec![task("t1", "i1").old()],
                ..Case::default()
            },
            &["desired 0 running 0 pending 0 failed 0", "complete"],
        );
        check(
            "an instance that left the group loses its daemon",
            Case {
                instances: vec![dev(active("i1"))],
                tasks: vec![task("t1", "i1")],
                prod_only: true,
                ..Case::default()
            },
            &["stop t1 (not-in-group)", "desired 0 running 0 pending 0 failed 0"],
        );
        check(
            "tasks on an INACTIVE instance are stopped",
            Case {
                instances: vec![inactive("i1")],
                tasks: vec![task("t1", "i1"), task("t2", "i1").last("PENDING")],
                ..Case::default()
            },
            &[
                "stop t1 (instance-gone)",
                "stop t2 (instance-gone)",
                "desired 0 running 0 pending 0 failed 0",
            ],
        );
        check(
            "tasks on an instance the view does not have are stopped",
            Case {
                instances: vec![],
                tasks: vec![task("t1", "i9"), task("t2", "i1").nowhere()],
                ..Case::default()
            },
            &[
                "stop t1 (instance-gone)",
                "stop t2 (instance-gone)",
                "desired 0 running 0 pending 0 failed 0",
            ],
        );
        check(
            "a task still stopping there is waited for, not stopped again",
            Case {
                instances: vec![inactive("i1")],
                tasks: vec![task("t1", "i1").stopping(), task("t2", "i2").stopped()],
                ..Case::default()
            },
            &["desired 0 running 0 pending 0 failed 0"],
        );
    }

    #[test]
    fn never_two_tasks_on_one_instance() {
        check(
            "of two RUNNING tasks the greatest ARN is kept",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1"), task("t2", "i1")],
                ..Case::default()
            },
            &["stop t1 (duplicate)", "desired 1 running 1 pending 0 failed 0"],
        );
        check(
            "a RUNNING task is kept over a PENDING one",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1"), task("t2", "i1").last("PENDING")],
                ..Case::default()
            },
            &["stop t2 (duplicate)", "desired 1 running 1 pending 0 failed 0"],
        );
        check(
            "the target's task definition is kept over a more advanced older one",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1").last("PENDING"), task("t2", "i1").old()],
                ..Case::default()
            },
            &["stop t2 (replaced)", "desired 1 running 0 pending 1 failed 0"],
        );
        check(
            "a task listed twice is one task",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1"), task("t1", "i1")],
                ..Case::default()
            },
            &["desired 1 running 1 pending 0 failed 0", "complete"],
        );
        check(
            "a duplicate being stopped holds up completion",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1").stopping(), task("t2", "i1")],
                ..Case::default()
            },
            &["desired 1 running 1 pending 0 failed 0"],
        );
    }

    #[test]
    fn terminate_then_replace() {
        check(
            "an older revision's task is stopped and nothing started yet",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1").old()],
                ..Case::default()
            },
            &["stop t1 (replaced)", "desired 1 running 0 pending 1 failed 0"],
        );
        check(
            "the replacement waits until the old task has stopped",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1").old().stopping()],
                ..Case::default()
            },
            &["desired 1 running 0 pending 1 failed 0"],
        );
        check(
            "then starts",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1").old().stopped()],
                ..Case::default()
            },
            &["start i1", "desired 1 running 0 pending 1 failed 0"],
        );
        check(
            "older duplicates all go",
            Case {
                instances: vec![active("i1"), active("i2")],
                tasks: vec![task("t1", "i1").old(), task("t2", "i1").old()],
                ..Case::default()
            },
            &[
                "start i2",
                "stop t1 (replaced)",
                "stop t2 (replaced)",
                "desired 2 running 0 pending 2 failed 0",
            ],
        );
        check(
            "a task of an earlier deployment with the target's task definition is adopted",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1").by(OLD)],
                ..Case::default()
            },
            &["desired 1 running 1 pending 0 failed 0", "complete"],
        );
    }

    #[test]
    fn ownership_is_group_and_deployment() {
        for (name, foreign) in [
            (
                "our group, someone else's startedBy",
                task("t1", "i1").by("ecs-svc/1"),
            ),
            (
                "our startedBy, another group",
                task("t1", "i1").group("service:web"),
            ),
            ("another environment", task("t1", "i1").group("blox:api")),
            ("no group", task("t1", "i1").group("")),
        ] {
            check(
                name,
                Case {
                    instances: vec![active("i1"), inactive("i2")],
                    tasks: vec![
                        foreign,
                        T {
                            arn: "t2",
                            ..foreign.td("x").nowhere()
                        },
                    ],
                    ..Case::default()
                },
                &["start i1", "desired 1 running 0 pending 1 failed 0"],
            );
        }
    }

    #[test]
    fn intents_prevent_double_starts() {
        let now = Case::default().now;
        check(
            "a fresh intent without a task in view is waited for",
            Case {
                instances: vec![active("i1")],
                intents: vec![intent("i1", CURRENT, now - 1_000, None)],
                ..Case::default()
            },
            &["desired 1 running 0 pending 1 failed 0"],
        );
        check(
            "an expired one is verified, still without a start",
            Case {
                instances: vec![active("i1")],
                intents: vec![intent("i1", CURRENT, now - DEFAULT_INTENT_TTL_MS, Some("t1"))],
                ..Case::default()
            },
            &["verify i1", "desired 1 running 0 pending 1 failed 0"],
        );
        check(
            "an intent settles when its task is in view",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1")],
                intents: vec![intent("i1", CURRENT, now, Some("t1"))],
                ..Case::default()
            },
            &[
                "settled i1/d2",
                "desired 1 running 1 pending 0 failed 0",
                "complete",
            ],
        );
        check(
            "even stopped: the instance needs a new task",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1").stopped()],
                intents: vec![intent("i1", CURRENT, now, Some("t1"))],
                ..Case::default()
            },
            &[
                "start i1",
                "settled i1/d2",
                "desired 1 running 0 pending 1 failed 0",
            ],
        );
        check(
            "without an ARN, a task of its deployment on its instance settles it",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1").last("PENDING")],
                intents: vec![intent("i1", CURRENT, now, None)],
                ..Case::default()
            },
            &["settled i1/d2", "desired 1 running 0 pending 1 failed 0"],
        );
        check(
            "but a stopped one may be older than the intent",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1").stopped()],
                intents: vec![intent("i1", CURRENT, now, None)],
                ..Case::default()
            },
            &["desired 1 running 0 pending 1 failed 0"],
        );
        check(
            "and with an ARN, only that task settles it",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1")],
                intents: vec![intent("i1", CURRENT, now, Some("t2"))],
                ..Case::default()
            },
            &["desired 1 running 1 pending 0 failed 0"],
        );
        check(
            "an earlier deployment's intent blocks too",
            Case {
                instances: vec![active("i1")],
                intents: vec![intent("i1", OLD, now, None)],
                ..Case::default()
            },
            &["desired 1 running 0 pending 1 failed 0"],
        );
        check(
            "an intent on an instance that cannot have a task still holds up completion",
            Case {
                instances: vec![draining("i1"), inactive("i2")],
                intents: vec![
                    intent("i1", CURRENT, now, None),
                    intent("i2", CURRENT, 0, None),
                    intent("i3", CURRENT, 0, None),
                ],
                ..Case::default()
            },
            &["verify i2", "verify i3", "desired 0 running 0 pending 0 failed 0"],
        );
    }

    #[test]
    fn failed_starts_back_off() {
        let now = Case::default().now;
        check(
            "an instance in back-off waits",
            Case {
                instances: vec![active("i1")],
                failed: vec![failure("i1", now + 1)],
                ..Case::default()
            },
            &[
                &format!("wait i1 until {}", now + 1),
                "desired 1 running 0 pending 0 failed 1",
            ],
        );
        check(
            "and is retried when due",
            Case {
                instances: vec![active("i1")],
                failed: vec![failure("i1", now)],
                ..Case::default()
            },
            &["start i1", "desired 1 running 0 pending 0 failed 1"],
        );
        check(
            "a failure is cleared once the task is there",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1").last("PENDING")],
                failed: vec![failure("i1", now + 1)],
                ..Case::default()
            },
            &["clear i1", "desired 1 running 0 pending 1 failed 0"],
        );
        check(
            "or once the instance should not have one",
            Case {
                instances: vec![draining("i1"), dev(active("i2"))],
                failed: vec![failure("i1", now + 1), failure("i2", now + 1), failure("i3", 0)],
                prod_only: true,
                ..Case::default()
            },
            &[
                "clear i1",
                "clear i2",
                "clear i3",
                "desired 0 running 0 pending 0 failed 0",
                "complete",
            ],
        );
        check(
            "a failed instance still running an older revision is replaced as usual",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1").old()],
                failed: vec![failure("i1", now + 1)],
                ..Case::default()
            },
            &["stop t1 (replaced)", "desired 1 running 0 pending 0 failed 1"],
        );
    }

    #[test]
    fn deleting_environments() {
        let tasks = vec![
            task("t1", "i1"),
            task("t2", "i2").old().last("PENDING"),
            task("t3", "i9"),
            task("t4", "i1").stopping(),
            task("t5", "i1").by("ecs-svc/1"),
        ];
        check(
            "without terminateTasks nothing is done",
            Case {
                instances: vec![active("i1"), draining("i2"), active("i3")],
                tasks: tasks.clone(),
                status: EnvironmentStatus::Deleting {
                    terminate_tasks: false,
                },
                ..Case::default()
            },
            &["desired 0 running 0 pending 0 failed 0", "complete"],
        );
        check(
            "with terminateTasks every task of the environment is stopped, and none started",
            Case {
                instances: vec![active("i1"), draining("i2"), active("i3")],
                tasks,
                status: EnvironmentStatus::Deleting {
                    terminate_tasks: true,
                },
                ..Case::default()
            },
            &[
                "stop t1 (environment-deleted)",
                "stop t2 (environment-deleted)",
                "stop t3 (environment-deleted)",
                "desired 0 running 3 pending 1 failed 0",
            ],
        );
        check(
            "a start in flight may still land, so deletion waits for it",
            Case {
                instances: vec![active("i1")],
                intents: vec![intent("i1", CURRENT, 0, None)],
                status: EnvironmentStatus::Deleting {
                    terminate_tasks: true,
                },
                ..Case::default()
            },
            &["verify i1", "desired 0 running 0 pending 0 failed 0"],
        );
        check(
            "and completes when nothing is left",
            Case {
                instances: vec![active("i1")],
                tasks: vec![task("t1", "i1").stopped()],
                status: EnvironmentStatus::Deleting {
                    terminate_tasks: true,
                },
                ..Case::default()
            },
            &["desired 0 running 0 pending 0 failed 0", "complete"],
        );
    }

    #[test]
    fn back_off_doubles_up_to_the_maximum() {
        let config = DeploymentConfiguration {
            stop_on_drain: false,
            start_backoff_initial_ms: 5_000,
            start_backoff_max_ms: 30_000,
        };
        let mut failed = Vec::new();
        let mut delays = Vec::new();
        for attempt in 0..6u64 {
            let now = attempt * 1_000_000;
            record_start_failure(&mut failed, "i2", &format!("reason {attempt}"), now, &config);
            delays.push(failed[0].retry_at_ms - now);
        }
        assert_eq!(delays, [5_000, 10_000, 20_000, 30_000, 30_000, 30_000]);
        assert_eq!(failed[0].attempts, 6);
        assert_eq!(failed[0].reason, "reason 5");

        record_start_failure(&mut failed, "i3", "RESOURCE:CPU", 7, &config);
        record_start_failure(&mut failed, "i1", "AGENT", 7, &config);
        let arns: Vec<&str> = failed.iter().map(|f| f.arn.as_str()).collect();
        assert_eq!(arns, ["i1", "i2", "i3"], "kept sorted");
        assert_eq!(failed[0].retry_at_ms, 5_007);

        // Many failures neither overflow nor exceed the maximum.
        failed[1].attempts = u32::MAX - 1;
        record_start_failure(&mut failed, "i2", "x", u64::MAX - 1, &config);
        assert_eq!(failed[1].attempts, u32::MAX);
        assert_eq!(failed[1].retry_at_ms, u64::MAX);

        clear_started(&mut failed, &["i2".to_owned(), "i9".to_owned()]);
        let arns: Vec<&str> = failed.iter().map(|f| f.arn.as_str()).collect();
        assert_eq!(arns, ["i1", "i3"]);
    }

    #[test]
    fn stop_reasons_read_well() {
        assert_eq!(
            StopReason::Replaced { revision: 3 }.to_string(),
            "replaced by revision 3"
        );
        assert_eq!(StopReason::InstanceGone.code(), "instance-gone");
    }

    #[test]
    fn views_borrow_the_stored_entities() {
        let task: Task = serde_json::from_value(serde_json::json!({
            "clusterARN": "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
            "containerInstanceARN": "arn:aws:ecs:us-east-1:123456789012:container-instance/prod/i1",
            "desiredStatus": "RUNNING", "lastStatus": "PENDING",
            "taskARN": "arn:aws:ecs:us-east-1:123456789012:task/prod/t1",
            "taskDefinitionARN": "td", "startedBy": "d2", "group": "blox:web",
        }))
        .unwrap();
        let view = TaskView::from(&task);
        assert_eq!(view.started_by, Some("d2"));
        assert_eq!(view.group, Some("blox:web"));
        assert_eq!(
            view.container_instance_arn,
            Some("arn:aws:ecs:us-east-1:123456789012:container-instance/prod/i1")
        );
        let instance: ContainerInstance = serde_json::from_value(serde_json::json!({
            "agentConnected": false, "status": "DRAINING",
            "containerInstanceARN": "arn:aws:ecs:us-east-1:123456789012:container-instance/prod/i1",
            "attributes": [{"name": "stack", "value": "prod"}],
        }))
        .unwrap();
        let view = InstanceView::from(&instance);
        assert_eq!((view.status, view.agent_connected), ("DRAINING", false));
        assert_eq!(view.attributes.len(), 1);
        let cluster = ClusterView::new([view], [TaskView::from(&task)]);
        assert_eq!(cluster.instances().len(), 1);
        assert!(cluster.instance(view.arn).is_some());
    }
}
