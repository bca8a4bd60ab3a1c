//! The planner's view of a cluster: its container instances and the tasks of scheduler groups
//! (`blox:<environment>`), parsed once and kept up to date change by change, so that a pass plans
//! from memory instead of re-reading and re-parsing the store. It also counts every live task's
//! group per instance, so that a cluster query (`task:group`) is answered from memory too.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use super::GROUP_PREFIX;
use super::time::parse_rfc3339_ms;
use crate::cql::Subject;
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
    /// As ECS writes it.
    pub fn as_str(&self) -> &str {
        match self {
            InstanceStatus::Active => "ACTIVE",
            InstanceStatus::Draining => "DRAINING",
            InstanceStatus::Inactive => "INACTIVE",
            InstanceStatus::Other(status) => status,
        }
    }

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

/// The planner's view of a container instance: what planning and the cluster query language read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub arn: Arc<str>,
    pub status: InstanceStatus,
    pub agent_connected: bool,
    pub attributes: Arc<[Attribute]>,
    pub agent_version: Option<Arc<str>>,
    pub ec2_instance_id: Option<Arc<str>>,
    pub registered_at: Option<Arc<str>>,
    pub running_tasks_count: Option<i64>,
}

impl InstanceView {
    pub fn of(instance: &ContainerInstance) -> InstanceView {
        let text = |value: &Option<String>| value.as_deref().map(Arc::from);
        InstanceView {
            arn: instance.container_instance_arn.as_str().into(),
            status: InstanceStatus::parse(&instance.status),
            agent_connected: instance.agent_connected,
            attributes: instance.attributes.clone().into(),
            agent_version: text(&instance.version_info.agent_version),
            ec2_instance_id: text(&instance.ec2_instance_id),
            registered_at: text(&instance.registered_at),
            running_tasks_count: instance.running_tasks_count,
        }
    }
}

/// An instance of a [`ClusterView`] as the cluster query language sees it. Its task groups are
/// looked up only when a query asks for them: planning an attribute-only group must not pay a hash
/// of every instance's ARN.
#[derive(Debug, Clone, Copy)]
pub struct InstanceSubject<'a> {
    instance: &'a InstanceView,
    view: &'a ClusterView,
}

impl Subject for InstanceSubject<'_> {
    fn agent_connected(&self) -> bool {
        self.instance.agent_connected
    }

    fn agent_version(&self) -> Option<&str> {
        self.instance.agent_version.as_deref()
    }

    fn ec2_instance_id(&self) -> Option<&str> {
        self.instance.ec2_instance_id.as_deref()
    }

    fn registered_at(&self) -> Option<&str> {
        self.instance.registered_at.as_deref()
    }

    fn running_tasks_count(&self) -> Option<i64> {
        self.instance.running_tasks_count
    }

    fn attribute(&self, name: &str) -> Option<Option<&str>> {
        crate::cql::attribute(&self.instance.attributes, name)
    }

    fn task_groups(&self) -> impl Iterator<Item = &str> {
        let groups = self
            .view
            .group_counts
            .get(&*self.instance.arn)
            .map_or(&[][..], Vec::as_slice);
        groups
            .iter()
            .map(|(sym, _)| self.view.names[sym.0 as usize - 1].as_ref())
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
    /// The view saw it before it stopped (not only its final record, as after a restart).
    pub seen_live: bool,
    /// `started_by` and `task_definition` as the view's symbols, so that planning compares numbers,
    /// not strings ([`Sym::NONE`] outside a [`ClusterView`]).
    pub(super) started_by_sym: Sym,
    pub(super) task_definition_sym: Sym,
}

/// A string interned by a [`ClusterView`] (a deployment id, a task definition, a group).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(u32);

impl Sym {
    /// No string: what a task without `startedBy` has.
    pub const NONE: Sym = Sym(0);
}

/// Where an instance is in a [`ClusterView`]: an index that stays while the instance does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot(u32);

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
            seen_live: previous.is_some_and(|p| p.seen_live)
                || !matches!(task.last_status.as_str(), "STOPPED" | "DELETED"),
            started_by_sym: Sym::NONE,
            task_definition_sym: Sym::NONE,
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
pub(super) type FastSet<K> = std::collections::HashSet<K, BuildHasherDefault<FxHasher>>;

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

/// The tasks of one scheduler group, by instance slot; those whose instance is not in the view (or
/// that have none) by instance ARN.
#[derive(Debug, Clone, Default)]
pub struct GroupTasks {
    /// Indexed by slot: planning an instance costs no lookup; an instance rarely holds more than two
    /// tasks of a group.
    by_slot: Vec<Vec<TaskView>>,
    unplaced: FastMap<Arc<str>, Vec<TaskView>>,
    len: usize,
}

impl GroupTasks {
    /// Every task of the group, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &TaskView> {
        self.by_slot
            .iter()
            .flatten()
            .chain(self.unplaced.values().flatten())
    }

    /// The group's tasks on instances the view does not hold (or on none).
    pub fn iter_unplaced(&self) -> impl Iterator<Item = &TaskView> {
        self.unplaced.values().flatten()
    }

    /// The group's tasks on the instance in `slot`.
    pub fn on(&self, slot: Slot) -> &[TaskView] {
        self.by_slot.get(slot.0 as usize).map_or(&[], Vec::as_slice)
    }

    /// The group's tasks on an instance the view does not hold (or on none: `""`).
    pub fn unplaced(&self, instance: &str) -> &[TaskView] {
        self.unplaced.get(instance).map_or(&[], Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn place_mut(&mut self, place: &Place) -> &mut Vec<TaskView> {
        match place {
            Place::Slot(slot) => {
                let index = slot.0 as usize;
                if self.by_slot.len() <= index {
                    self.by_slot.resize_with(index + 1, Vec::new);
                }
                &mut self.by_slot[index]
            }
            Place::Unplaced(instance) => self.unplaced.entry(instance.clone()).or_default(),
        }
    }

    fn insert(&mut self, place: &Place, task: TaskView) {
        let tasks = self.place_mut(place);
        match tasks.iter_mut().find(|t| t.arn == task.arn) {
            Some(existing) => *existing = task,
            None => {
                tasks.push(task);
                self.len += 1;
            }
        }
    }

    fn remove(&mut self, arn: &str, place: &Place) -> Option<TaskView> {
        let tasks = match place {
            Place::Slot(slot) => self.by_slot.get_mut(slot.0 as usize)?,
            Place::Unplaced(instance) => self.unplaced.get_mut(instance)?,
        };
        let index = tasks.iter().position(|t| &*t.arn == arn)?;
        let task = tasks.swap_remove(index);
        if tasks.is_empty()
            && let Place::Unplaced(instance) = place
        {
            self.unplaced.remove(instance);
        }
        self.len -= 1;
        Some(task)
    }

    fn get(&self, arn: &str, place: &Place) -> Option<&TaskView> {
        let tasks = match place {
            Place::Slot(slot) => self.on(*slot),
            Place::Unplaced(instance) => self.unplaced(instance),
        };
        tasks.iter().find(|t| &*t.arn == arn)
    }
}

/// Where a task is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Slot(Slot),
    /// Its instance is not in the view (or it has none: `""`).
    Unplaced(Arc<str>),
}

/// One cluster's instances and scheduler-group tasks, shared by the plans of all its environments so
/// that a full pass is linear in instances and tasks. Updated one entity at a time.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// ARN → slot, in ARN order, so that plans come out in the same order whatever order changes came
    /// in.
    order: BTreeMap<Arc<str>, Slot>,
    /// The slots in ARN order: what planning iterates (a vector is much faster to walk than the map).
    sorted: Vec<Slot>,
    slots: Vec<Option<InstanceView>>,
    free: Vec<Slot>,
    groups: FastMap<Sym, GroupTasks>,
    /// Task ARN → its group and place, to find a task when it is removed or moves.
    homes: FastMap<Arc<str>, (Sym, Place)>,
    symbols: FastMap<Arc<str>, Sym>,
    /// Symbol → its text (symbol `n` at `n - 1`).
    names: Vec<Arc<str>>,
    /// Every live task with a group, of any group, by [`task_key`]: its instance and group. Keyed by
    /// a hash rather than the ARN because it holds every task of the cluster (100,000 ARNs would
    /// cost ~15 MB); a collision (odds ~1e-10 at that size) would only miscount a `task:group`.
    task_groups: FastMap<u64, (Arc<str>, Sym)>,
    /// Instance ARN → the groups of its live tasks, with how many tasks each.
    group_counts: FastMap<Arc<str>, Vec<(Sym, u32)>>,
}

/// The key of a task in [`ClusterView::task_groups`]: SipHash with fixed keys, so that ARNs that
/// differ in a few characters do not collide (FxHash gives no such promise).
pub fn task_key(arn: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    arn.hash(&mut hasher);
    hasher.finish()
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

    /// The symbol of `text`, if the view has met it.
    pub fn sym(&self, text: &str) -> Option<Sym> {
        self.symbols.get(text).copied()
    }

    fn intern(&mut self, text: &Arc<str>) -> Sym {
        if let Some(&sym) = self.symbols.get(&**text) {
            return sym;
        }
        // Symbols are never reused: a view holds as many as distinct ids it met, which is small
        // (deployments, task definitions, groups).
        let sym = Sym(self.symbols.len() as u32 + 1);
        self.symbols.insert(text.clone(), sym);
        self.names.push(text.clone());
        sym
    }

    /// [`ClusterView::intern`] for a borrowed string: allocates only the first time.
    fn intern_str(&mut self, text: &str) -> Sym {
        match self.symbols.get(text) {
            Some(&sym) => sym,
            None => self.intern(&Arc::from(text)),
        }
    }

    /// Follows a task's group and instance for `task:group`: a live task with a group counts on its
    /// instance; a stopped one, or one without a group or an instance, counts nowhere. What
    /// [`ClusterView::upsert_task`] does first; on its own, for the tasks of other groups, which the
    /// view keeps nothing else of.
    pub fn note_task_group(
        &mut self,
        task_arn: &str,
        instance: Option<&str>,
        group: Option<&str>,
        last_status: &str,
    ) {
        let key = task_key(task_arn);
        if let Some((instance, sym)) = self.task_groups.remove(&key) {
            self.uncount(&instance, sym);
        }
        let live = !matches!(last_status, "STOPPED" | "DELETED");
        let (Some(group), Some(instance), true) = (group.filter(|g| !g.is_empty()), instance, live) else {
            return;
        };
        let sym = self.intern_str(group);
        let instance: Arc<str> = match self.group_counts.get_key_value(instance) {
            Some((arn, _)) => arn.clone(),
            None => instance.into(),
        };
        let counts = self.group_counts.entry(instance.clone()).or_default();
        match counts.iter_mut().find(|(s, _)| *s == sym) {
            Some((_, n)) => *n += 1,
            None => counts.push((sym, 1)),
        }
        self.task_groups.insert(key, (instance, sym));
    }

    fn uncount(&mut self, instance: &str, sym: Sym) {
        let Some(counts) = self.group_counts.get_mut(instance) else {
            return;
        };
        if let Some(at) = counts.iter().position(|(s, _)| *s == sym) {
            counts[at].1 -= 1;
            if counts[at].1 == 0 {
                counts.swap_remove(at);
            }
        }
        if counts.is_empty() {
            self.group_counts.remove(instance);
        }
    }

    /// The instance as the cluster query language sees it.
    pub fn subject<'a>(&'a self, instance: &'a InstanceView) -> InstanceSubject<'a> {
        InstanceSubject { instance, view: self }
    }

    pub fn upsert_instance(&mut self, instance: &ContainerInstance) {
        let view = InstanceView::of(instance);
        if let Some(&slot) = self.order.get(&view.arn) {
            self.slots[slot.0 as usize] = Some(view);
            return;
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            Slot(self.slots.len() as u32 - 1)
        });
        let arn = view.arn.clone();
        self.slots[slot.0 as usize] = Some(view);
        self.order.insert(arn.clone(), slot);
        let at = self.order.range(..arn.clone()).count();
        self.sorted.insert(at, slot);
        // Tasks that came before their instance move in.
        self.move_tasks(&Place::Unplaced(arn), Place::Slot(slot));
    }

    /// Moves every task kept at `from` to `to`.
    fn move_tasks(&mut self, from: &Place, to: Place) {
        let mut moved = Vec::new();
        for group in self.groups.values_mut() {
            let tasks = match from {
                Place::Slot(slot) => group.by_slot.get_mut(slot.0 as usize).map(std::mem::take),
                Place::Unplaced(instance) => group.unplaced.remove(instance),
            };
            for task in tasks.into_iter().flatten() {
                group.len -= 1;
                moved.push(task.arn.clone());
                group.insert(&to, task);
            }
        }
        for arn in moved {
            if let Some(home) = self.homes.get_mut(&arn) {
                home.1 = to.clone();
            }
        }
    }

    pub fn remove_instance(&mut self, arn: &str) {
        let Some(slot) = self.order.remove(arn) else {
            return;
        };
        self.sorted.retain(|s| *s != slot);
        self.slots[slot.0 as usize] = None;
        // Its tasks stay in view, unplaced, until ECS says what became of them.
        self.move_tasks(&Place::Slot(slot), Place::Unplaced(arn.into()));
        self.free.push(slot);
    }

    /// Counts the task's group on its instance, and keeps the task if it belongs to a scheduler group
    /// (only those can be an environment's).
    pub fn upsert_task(&mut self, task: &Task, observed_ms: u64) {
        self.note_task_group(
            &task.task_arn,
            task.container_instance_arn.as_deref(),
            task.group.as_deref(),
            &task.last_status,
        );
        let in_scheduler_group = task.group.as_deref().is_some_and(|g| g.starts_with(GROUP_PREFIX));
        let previous = self.take_task(&task.task_arn);
        if !in_scheduler_group {
            return;
        }
        let mut view = TaskView::observe(task, previous.as_ref(), observed_ms);
        view.started_by_sym = match &view.started_by {
            Some(s) => self.intern(s),
            None => Sym::NONE,
        };
        view.task_definition_sym = self.intern(&view.task_definition);
        let group = self.intern(&view.group);
        let instance: Arc<str> = view.instance.clone().unwrap_or_else(|| "".into());
        let place = match self.order.get(&instance) {
            Some(&slot) => Place::Slot(slot),
            None => Place::Unplaced(instance),
        };
        self.homes.insert(view.arn.clone(), (group, place.clone()));
        self.groups.entry(group).or_default().insert(&place, view);
    }

    pub fn remove_task(&mut self, arn: &str) {
        if let Some((instance, sym)) = self.task_groups.remove(&task_key(arn)) {
            self.uncount(&instance, sym);
        }
        self.take_task(arn);
    }

    fn take_task(&mut self, arn: &str) -> Option<TaskView> {
        let (group, place) = self.homes.remove(arn)?;
        let tasks = self.groups.get_mut(&group)?;
        let task = tasks.remove(arn, &place);
        if tasks.is_empty() {
            self.groups.remove(&group);
        }
        task
    }

    /// Instances sorted by ARN, with their slots.
    pub fn instances(&self) -> impl ExactSizeIterator<Item = (Slot, &InstanceView)> {
        self.sorted.iter().map(|&slot| {
            let instance = self.slots[slot.0 as usize]
                .as_ref()
                .unwrap_or_else(|| unreachable!("an ordered slot holds its instance"));
            (slot, instance)
        })
    }

    pub fn instance(&self, arn: &str) -> Option<&InstanceView> {
        let slot = self.order.get(arn)?;
        self.slots[slot.0 as usize].as_ref()
    }

    pub fn slot(&self, arn: &str) -> Option<Slot> {
        self.order.get(arn).copied()
    }

    pub fn instance_count(&self) -> usize {
        self.order.len()
    }

    /// The tasks of a scheduler group (`blox:<environment>`).
    pub fn group(&self, group: &str) -> Option<&GroupTasks> {
        self.groups.get(&self.sym(group)?)
    }

    /// A group's tasks on an instance, whether the view holds the instance or not.
    pub fn tasks_on<'s>(&'s self, group: &'s GroupTasks, instance: &str) -> &'s [TaskView] {
        match self.slot(instance) {
            Some(slot) => group.on(slot),
            None => group.unplaced(instance),
        }
    }

    pub fn task(&self, arn: &str) -> Option<&TaskView> {
        let (group, place) = self.homes.get(arn)?;
        self.groups.get(group)?.get(arn, place)
    }

    /// Tasks of scheduler groups in the view.
    pub fn task_count(&self) -> usize {
        self.homes.len()
    }

    /// Changes a task of a scheduler group in place: a preview's what-if (ECS stopped it).
    pub fn update_task(&mut self, arn: &str, change: impl FnOnce(&mut TaskView)) {
        let Some((group, place)) = self.homes.get(arn).cloned() else {
            return;
        };
        if let Some(task) = self
            .groups
            .get_mut(&group)
            .and_then(|tasks| tasks.place_mut(&place).iter_mut().find(|t| &*t.arn == arn))
        {
            change(task);
        }
    }

    /// Adds a task RUNNING and HEALTHY since `at_ms`: a preview's what-if (ECS started it).
    pub fn add_started_task(
        &mut self,
        arn: &str,
        instance: &str,
        group: &str,
        started_by: &str,
        task_definition: &str,
        at_ms: u64,
    ) {
        let at = crate::emit::rfc3339_millis(at_ms);
        let task = Task {
            cluster_arn: String::new(),
            container_instance_arn: Some(instance.to_owned()),
            containers: Vec::new(),
            created_at: Some(at.clone()),
            desired_status: "RUNNING".to_owned(),
            last_status: "RUNNING".to_owned(),
            overrides: Default::default(),
            task_arn: arn.to_owned(),
            task_definition_arn: task_definition.to_owned(),
            started_at: Some(at.clone()),
            started_by: Some(started_by.to_owned()),
            stopped_at: None,
            stopped_reason: None,
            group: Some(group.to_owned()),
            launch_type: Some("EC2".to_owned()),
            version: 0,
            updated_at: Some(at),
            health_status: Some("HEALTHY".to_owned()),
        };
        self.upsert_task(&task, at_ms);
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
        assert_eq!(view.tasks_on(group, "i1").len(), 1);
        assert_eq!(view.task("t1").unwrap().running_since, None);

        view.upsert_task(&task("t1", "i1", "blox:web", "RUNNING"), 20);
        assert_eq!(view.task("t1").unwrap().running_since, Some(20));
        view.upsert_task(&task("t1", "i2", "blox:web", "RUNNING"), 30);
        let group = view.group("blox:web").unwrap();
        assert_eq!(view.tasks_on(group, "i1").len(), 0, "moved");
        assert_eq!(view.tasks_on(group, "i2").len(), 1);
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

        // A task before its instance, and after it has gone.
        let instance = |arn: &str| -> ContainerInstance {
            serde_json::from_value(serde_json::json!({
                "agentConnected": true, "status": "ACTIVE", "containerInstanceARN": arn,
            }))
            .unwrap()
        };
        view.upsert_task(&task("t4", "i4", "blox:web", "RUNNING"), 70);
        let group = view.group("blox:web").unwrap();
        assert_eq!(group.unplaced("i4").len(), 1);
        view.upsert_instance(&instance("i4"));
        let group = view.group("blox:web").unwrap();
        let slot = view.slot("i4").unwrap();
        assert_eq!((group.on(slot).len(), group.unplaced("i4").len()), (1, 0));
        view.remove_instance("i4");
        let group = view.group("blox:web").unwrap();
        assert_eq!(group.unplaced("i4").len(), 1);
        view.upsert_instance(&instance("i5"));
        assert_eq!(view.slot("i5"), Some(slot), "a freed slot is reused");
        assert!(view.group("blox:web").unwrap().on(slot).is_empty());
        view.remove_task("t4");
        assert_eq!(view.task_count(), 0);
    }

    #[test]
    fn every_live_task_counts_its_group_on_its_instance() {
        let mut view = ClusterView::default();
        let instance: ContainerInstance = serde_json::from_value(serde_json::json!({
            "agentConnected": true, "status": "ACTIVE", "containerInstanceARN": "i1",
            "EC2InstanceID": "i-0abc", "versionInfo": {"agentVersion": "1.89.0"},
            "registeredAt": "2026-01-02T03:04:05.000Z", "runningTasksCount": 3,
            "attributes": [{"name": "ecs.instance-type", "value": "m5.large"}],
        }))
        .unwrap();
        view.upsert_instance(&instance);
        let groups = |view: &ClusterView| -> Vec<String> {
            let mut groups: Vec<String> = view
                .subject(view.instance("i1").unwrap())
                .task_groups()
                .map(str::to_owned)
                .collect();
            groups.sort();
            groups
        };
        view.upsert_task(&task("t1", "i1", "service:web", "RUNNING"), 1);
        view.upsert_task(&task("t2", "i1", "service:web", "PENDING"), 1);
        view.upsert_task(&task("t3", "i1", "blox:logs", "RUNNING"), 1);
        view.upsert_task(&task("t4", "i2", "batch", "RUNNING"), 1);
        assert_eq!(groups(&view), ["blox:logs", "service:web"]);
        view.upsert_task(&task("t1", "i1", "service:web", "STOPPED"), 2);
        assert_eq!(groups(&view), ["blox:logs", "service:web"], "t2 is still there");
        view.remove_task("t2");
        assert_eq!(groups(&view), ["blox:logs"]);
        view.upsert_task(&task("t4", "i1", "batch", "RUNNING"), 3);
        assert_eq!(groups(&view), ["batch", "blox:logs"], "moved in");
        view.upsert_task(&task("t3", "i1", "blox:logs", "STOPPED"), 4);
        view.remove_task("t4");
        assert!(groups(&view).is_empty());
        assert!(view.group_counts.is_empty() && view.task_groups.is_empty());

        let subject = view.subject(view.instance("i1").unwrap());
        assert_eq!(subject.agent_version(), Some("1.89.0"));
        assert_eq!(subject.ec2_instance_id(), Some("i-0abc"));
        assert_eq!(subject.ec2_instance_type(), Some("m5.large"));
        assert_eq!(subject.registered_at(), Some("2026-01-02T03:04:05.000Z"));
        assert_eq!(subject.running_tasks_count(), Some(3));
        let query: crate::cql::Query = "ec2InstanceType =~ m5.* and task:group != batch".parse().unwrap();
        assert!(query.matches(&subject));
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
