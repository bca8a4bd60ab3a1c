//! The planner's view of a cluster: its container instances and the tasks of scheduler groups
//! (`blox:<environment>`), parsed once and kept up to date change by change, so that a pass plans
//! from memory instead of re-reading and re-parsing the store.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::GROUP_PREFIX;
use super::time::parse_rfc3339_ms;
use crate::entity::{Attribute, ContainerInstance, Task};

/// A container instance's status, as the planner tells them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceStatus {
    Active,
    Draining,
    Inactive,
    /// REGISTERING, DEREGISTERING, REGISTRATION_FAILED, or anything newer.
    Other(Arc<str>),
}

impl InstanceStatus {
    pub fn parse(status: &str) -> InstanceStatus {
        match status {
            "ACTIVE" => InstanceStatus::Active,
            "DRAINING" => InstanceStatus::Draining,
            "INACTIVE" => InstanceStatus::Inactive,
            other => InstanceStatus::Other(other.into()),
        }
    }
}

/// A task's `lastStatus`, in lifecycle order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskStatus {
    Provisioning,
    Pending,
    Activating,
    Running,
    Deactivating,
    Stopping,
    Deprovisioning,
    Stopped,
    Deleted,
    Other(Arc<str>),
}

impl TaskStatus {
    pub fn parse(status: &str) -> TaskStatus {
        match status {
            "PROVISIONING" => TaskStatus::Provisioning,
            "PENDING" => TaskStatus::Pending,
            "ACTIVATING" => TaskStatus::Activating,
            "RUNNING" => TaskStatus::Running,
            "DEACTIVATING" => TaskStatus::Deactivating,
            "STOPPING" => TaskStatus::Stopping,
            "DEPROVISIONING" => TaskStatus::Deprovisioning,
            "STOPPED" => TaskStatus::Stopped,
            "DELETED" => TaskStatus::Deleted,
            other => TaskStatus::Other(other.into()),
        }
    }

    /// How far along its lifecycle a live task is, to keep the one closest to serving.
    fn progress(&self) -> u8 {
        match self {
            TaskStatus::Running => 5,
            TaskStatus::Activating => 4,
            TaskStatus::Pending => 3,
            TaskStatus::Provisioning => 2,
            TaskStatus::Other(_) => 1,
            _ => 0,
        }
    }
}

/// ECS's `healthStatus` of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    Unknown,
}

impl HealthStatus {
    pub fn parse(status: Option<&str>) -> HealthStatus {
        match status {
            Some("HEALTHY") => HealthStatus::Healthy,
            Some("UNHEALTHY") => HealthStatus::Unhealthy,
            _ => HealthStatus::Unknown,
        }
    }
}

/// The planner's view of a container instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub arn: Arc<str>,
    pub status: InstanceStatus,
    pub agent_connected: bool,
    pub attributes: Arc<[Attribute]>,
}

impl InstanceView {
    pub fn of(instance: &ContainerInstance) -> InstanceView {
        InstanceView {
            arn: instance.container_instance_arn.as_str().into(),
            status: InstanceStatus::parse(&instance.status),
            agent_connected: instance.agent_connected,
            attributes: instance.attributes.clone().into(),
        }
    }
}

/// The planner's view of a task of a scheduler group, with what the view has learnt of its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    pub arn: Arc<str>,
    pub instance: Option<Arc<str>>,
    pub started_by: Option<Arc<str>>,
    pub group: Arc<str>,
    pub task_definition: Arc<str>,
    pub last_status: TaskStatus,
    /// ECS has been asked to stop it (`desiredStatus` STOPPED).
    pub desired_stopped: bool,
    pub health: HealthStatus,
    /// Since when it has been RUNNING (`startedAt`).
    pub running_since: Option<u64>,
    /// Since when it has been HEALTHY without interruption, as first seen.
    pub healthy_since: Option<u64>,
    pub stopped_at: Option<u64>,
    pub stopped_reason: Option<Arc<str>>,
}

impl TaskView {
    /// The view of `task` as observed at `observed_ms`, given what was known of it before. Times ECS
    /// gives (`startedAt`, `updatedAt`, `stoppedAt`) are preferred to the observation time.
    pub fn observe(task: &Task, previous: Option<&TaskView>, observed_ms: u64) -> TaskView {
        let last_status = TaskStatus::parse(&task.last_status);
        let health = HealthStatus::parse(task.health_status.as_deref());
        let time = |text: &Option<String>| text.as_deref().and_then(|t| parse_rfc3339_ms(t).ok());
        let changed_at = time(&task.updated_at).unwrap_or(observed_ms);
        let running_since = previous
            .and_then(|p| p.running_since)
            .or_else(|| time(&task.started_at))
            .or_else(|| (last_status == TaskStatus::Running).then_some(changed_at));
        // A task on its way out reports UNKNOWN health (its containers are stopping). That says nothing
        // about how long it had been healthy, which is what tells a failed start from a daemon that
        // stopped after serving (`plan`'s failed-start rule), so what was learnt is kept.
        let leaving = task.desired_status == "STOPPED"
            || matches!(
                last_status,
                TaskStatus::Deactivating
                    | TaskStatus::Stopping
                    | TaskStatus::Deprovisioning
                    | TaskStatus::Stopped
                    | TaskStatus::Deleted
            );
        let healthy_since = match health {
            HealthStatus::Healthy => previous.and_then(|p| p.healthy_since).or(Some(changed_at)),
            _ if leaving => previous.and_then(|p| p.healthy_since),
            _ => None,
        };
        TaskView {
            arn: task.task_arn.as_str().into(),
            instance: task.container_instance_arn.as_deref().map(Into::into),
            started_by: task
                .started_by
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(Into::into),
            group: task.group.as_deref().unwrap_or_default().into(),
            task_definition: task.task_definition_arn.as_str().into(),
            desired_stopped: task.desired_status == "STOPPED",
            last_status,
            health,
            running_since,
            healthy_since,
            stopped_at: time(&task.stopped_at)
                .or_else(|| previous.and_then(|p| p.stopped_at))
                .or_else(|| (task.last_status == "STOPPED").then_some(changed_at)),
            stopped_reason: task.stopped_reason.as_deref().map(Into::into),
        }
    }

    /// Still on its instance: not yet STOPPED, whatever ECS has been asked. A TerminateThenReplace
    /// replacement waits for this to end, so that two versions never share an instance.
    pub fn occupying(&self) -> bool {
        !matches!(self.last_status, TaskStatus::Stopped | TaskStatus::Deleted)
    }

    /// Occupying and meant to keep running: the tasks the planner keeps or stops.
    pub fn live(&self) -> bool {
        self.occupying() && !self.desired_stopped
    }

    /// Since when the task has been healthy, if it is: RUNNING, and HEALTHY too when its task
    /// definition has container health checks.
    pub fn healthy_from(&self, health_checks: bool) -> Option<u64> {
        if !self.live() || self.last_status != TaskStatus::Running {
            return None;
        }
        if health_checks {
            self.healthy_since
        } else {
            self.running_since
        }
    }

    pub(super) fn progress(&self) -> u8 {
        self.last_status.progress()
    }
}

/// A hash map keyed by ARNs, which come from ECS, not from an adversary: FxHash (rustc's) instead of
/// SipHash, as planning a whole cluster is mostly hashing.
pub(super) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FxHasher(u64);

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

/// The tasks of one scheduler group, by ARN and by instance.
#[derive(Debug, Clone, Default)]
pub struct GroupTasks {
    tasks: FastMap<Arc<str>, TaskView>,
    /// Instance ARN → ARNs of the group's tasks on it (tasks without an instance are under "").
    by_instance: FastMap<Arc<str>, Vec<Arc<str>>>,
}

impl GroupTasks {
    /// Every task of the group, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &TaskView> {
        self.tasks.values()
    }

    /// The group's tasks on an instance.
    pub fn on<'s>(&'s self, instance: &str) -> impl Iterator<Item = &'s TaskView> + 's {
        self.by_instance
            .get(instance)
            .into_iter()
            .flatten()
            .filter_map(|arn| self.tasks.get(arn))
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    fn insert(&mut self, task: TaskView) {
        let place: Arc<str> = task.instance.clone().unwrap_or_else(|| "".into());
        let arns = self.by_instance.entry(place).or_default();
        if !arns.contains(&task.arn) {
            arns.push(task.arn.clone());
        }
        self.tasks.insert(task.arn.clone(), task);
    }

    fn remove(&mut self, arn: &str) -> Option<TaskView> {
        let task = self.tasks.remove(arn)?;
        let place = task.instance.as_deref().unwrap_or_default();
        if let Some(arns) = self.by_instance.get_mut(place) {
            arns.retain(|a| &**a != arn);
            if arns.is_empty() {
                self.by_instance.remove(place);
            }
        }
        Some(task)
    }
}

/// One cluster's instances and scheduler-group tasks, shared by the plans of all its environments so
/// that a full pass is linear in instances and tasks. Updated one entity at a time.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Sorted by ARN, so that plans come out in the same order whatever order changes came in.
    instances: BTreeMap<Arc<str>, InstanceView>,
    groups: FastMap<Arc<str>, GroupTasks>,
    /// Task ARN → its group, to find a task when it is removed or changes group.
    task_groups: FastMap<Arc<str>, Arc<str>>,
}

impl ClusterView {
    /// A view of these entities, observed at `observed_ms`.
    pub fn from_entities<'a>(
        instances: impl IntoIterator<Item = &'a ContainerInstance>,
        tasks: impl IntoIterator<Item = &'a Task>,
        observed_ms: u64,
    ) -> ClusterView {
        let mut view = ClusterView::default();
        for instance in instances {
            view.upsert_instance(instance);
        }
        for task in tasks {
            view.upsert_task(task, observed_ms);
        }
        view
    }

    pub fn upsert_instance(&mut self, instance: &ContainerInstance) {
        let view = InstanceView::of(instance);
        self.instances.insert(view.arn.clone(), view);
    }

    pub fn remove_instance(&mut self, arn: &str) {
        self.instances.remove(arn);
    }

    /// Keeps the task if it belongs to a scheduler group (only those can be an environment's).
    pub fn upsert_task(&mut self, task: &Task, observed_ms: u64) {
        let in_scheduler_group = task.group.as_deref().is_some_and(|g| g.starts_with(GROUP_PREFIX));
        let previous = self.take_task(&task.task_arn);
        if !in_scheduler_group {
            return;
        }
        let view = TaskView::observe(task, previous.as_ref(), observed_ms);
        self.task_groups.insert(view.arn.clone(), view.group.clone());
        self.groups.entry(view.group.clone()).or_default().insert(view);
    }

    pub fn remove_task(&mut self, arn: &str) {
        self.take_task(arn);
    }

    fn take_task(&mut self, arn: &str) -> Option<TaskView> {
        let group = self.task_groups.remove(arn)?;
        let tasks = self.groups.get_mut(&group)?;
        let task = tasks.remove(arn);
        if tasks.is_empty() {
            self.groups.remove(&group);
        }
        task
    }

    /// Instances sorted by ARN.
    pub fn instances(&self) -> impl ExactSizeIterator<Item = &InstanceView> {
        self.instances.values()
    }

    pub fn instance(&self, arn: &str) -> Option<&InstanceView> {
        self.instances.get(arn)
    }

    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    /// The tasks of a scheduler group (`blox:<environment>`).
    pub fn group(&self, group: &str) -> Option<&GroupTasks> {
        self.groups.get(group)
    }

    pub fn task(&self, arn: &str) -> Option<&TaskView> {
        let group = self.task_groups.get(arn)?;
        self.groups.get(group)?.tasks.get(arn)
    }

    /// Tasks of scheduler groups in the view.
    pub fn task_count(&self) -> usize {
        self.task_groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(arn: &str, instance: &str, group: &str, last: &str) -> Task {
        serde_json::from_value(serde_json::json!({
            "clusterARN": "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
            "containerInstanceARN": instance,
            "desiredStatus": "RUNNING", "lastStatus": last,
            "taskARN": arn, "taskDefinitionARN": "td:1", "startedBy": "d1", "group": group,
        }))
        .unwrap()
    }

    #[test]
    fn the_view_follows_changes_one_entity_at_a_time() {
        let mut view = ClusterView::default();
        view.upsert_task(&task("t1", "i1", "blox:web", "PENDING"), 10);
        view.upsert_task(&task("t2", "i1", "service:web", "RUNNING"), 10);
        assert_eq!(view.task_count(), 1, "only scheduler groups are kept");
        let group = view.group("blox:web").unwrap();
        assert_eq!(group.on("i1").count(), 1);
        assert_eq!(view.task("t1").unwrap().running_since, None);

        view.upsert_task(&task("t1", "i1", "blox:web", "RUNNING"), 20);
        assert_eq!(view.task("t1").unwrap().running_since, Some(20));
        view.upsert_task(&task("t1", "i2", "blox:web", "RUNNING"), 30);
        let group = view.group("blox:web").unwrap();
        assert_eq!(group.on("i1").count(), 0, "moved");
        assert_eq!(group.on("i2").count(), 1);
        assert_eq!(
            view.task("t1").unwrap().running_since,
            Some(20),
            "kept from before"
        );

        view.upsert_task(&task("t1", "i2", "blox:api", "RUNNING"), 40);
        assert!(view.group("blox:web").is_none(), "an emptied group goes");
        assert_eq!(view.group("blox:api").unwrap().len(), 1);
        view.upsert_task(&task("t1", "i2", "other", "RUNNING"), 50);
        assert_eq!(view.task_count(), 0, "left the scheduler groups");
        view.upsert_task(&task("t3", "i3", "blox:web", "RUNNING"), 60);
        view.remove_task("t3");
        view.remove_task("t3");
        assert_eq!(view.task_count(), 0);
    }

    #[test]
    fn health_is_held_since_it_was_first_seen() {
        let mut t = task("t1", "i1", "blox:web", "RUNNING");
        t.started_at = Some("1970-01-01T00:00:01.000Z".into());
        let unknown = TaskView::observe(&t, None, 5_000);
        assert_eq!(unknown.running_since, Some(1_000), "ECS's startedAt");
        assert_eq!(unknown.healthy_from(false), Some(1_000));
        assert_eq!(unknown.healthy_from(true), None, "not HEALTHY yet");
        t.health_status = Some("HEALTHY".into());
        let healthy = TaskView::observe(&t, Some(&unknown), 7_000);
        assert_eq!(healthy.healthy_from(true), Some(7_000));
        let still = TaskView::observe(&t, Some(&healthy), 9_000);
        assert_eq!(still.healthy_from(true), Some(7_000));
        t.health_status = Some("UNHEALTHY".into());
        let sick = TaskView::observe(&t, Some(&still), 11_000);
        assert_eq!(sick.healthy_from(true), None);
        t.health_status = Some("HEALTHY".into());
        t.updated_at = Some("1970-01-01T00:00:12.000Z".into());
        let again = TaskView::observe(&t, Some(&sick), 13_000);
        assert_eq!(
            again.healthy_from(true),
            Some(12_000),
            "from ECS's updatedAt, anew"
        );
        t.desired_status = "STOPPED".into();
        assert_eq!(
            TaskView::observe(&t, Some(&again), 14_000).healthy_from(true),
            None
        );
    }
}
