//! The planner: from an environment, its active deployment, a view of its cluster, its start intents
//! and failure records, and the time, what to do now. Pure and deterministic.
//!
//! Each instance is classified first (eligible or not; a healthy task of the target, an outdated task,
//! nothing, a start in flight, back-off), then a rollout strategy spends its budget on the outdated
//! ones: TerminateThenReplace the healthy floor, ReplaceThenTerminate the surge.
//!
//! Safety:
//! - **Never below the floor by blox's own action.** The only stop that can lower the number of
//!   eligible instances with a healthy daemon is TerminateThenReplace's stop of a healthy outdated
//!   task, and it is planned only while that number stays at or above the floor. Every other stop is
//!   of a task that is not counted (not healthy, a duplicate, on an instance outside the group), or
//!   of an outdated task beside a healthy target task.
//! - **Never a second start where one may be starting.** No start on an instance with a live task of
//!   the environment, a task still stopping, or a start intent (a StartTask whose outcome has not been
//!   confirmed); such an intent is verified with ECS, not guessed.

use std::collections::{BTreeSet, HashSet};
use std::fmt;

use super::config::DeploymentMethod;
use super::docs::{
    Counts, Deployment, Environment, EnvironmentStatus, InstanceFailure, Revision, StartIntent,
};
use super::view::{ClusterView, FastSet, GroupTasks, InstanceStatus, InstanceView, Slot, Sym, TaskView};
use super::{GROUP_PREFIX, STOP_REASON_PREFIX, group};

/// A start intent as the planner sees it.
#[derive(Debug, Clone, Copy)]
pub struct IntentState<'a> {
    pub intent: &'a StartIntent,
    /// From when the executor may ask ECS what became of it: at once for an intent left by an earlier
    /// process, a little after an answer that was lost.
    pub verify_at_ms: u64,
}

/// What the environment's active deployment deploys.
#[derive(Debug, Clone, Copy)]
pub struct Active<'a> {
    pub deployment: &'a Deployment,
    pub revision: &'a Revision,
}

/// Everything a plan depends on.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub environment: &'a Environment,
    /// `None` before the first deployment.
    pub active: Option<Active<'a>>,
    /// The ids of every deployment of the environment: a task is the environment's when its
    /// `startedBy` is one of them and its group is [`group`]`(environment)`.
    pub deployment_ids: &'a [&'a str],
    /// Task definitions of the environment's revisions that have container health checks.
    pub health_checked: &'a [&'a str],
    pub cluster: &'a ClusterView,
    /// The environment's start intents, of any of its deployments.
    pub intents: &'a [IntentState<'a>],
    /// The active deployment's failure records.
    pub failures: &'a [&'a InstanceFailure],
    pub now_ms: u64,
}

/// What to do now. Every list is in a fixed order (instances by ARN; starts by priority).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Instances to start the active deployment's task on: new instances and failed starts first,
    /// then replacements.
    pub starts: Vec<String>,
    pub stops: Vec<Stop>,
    /// Intents whose outcome the executor must ask ECS about now (ListTasks by startedBy and instance).
    pub verify: Vec<IntentRef>,
    /// Intents whose task is in view: the view guards their instance now, they can go.
    pub settled: Vec<IntentRef>,
    /// Tasks of the active deployment that stopped before they were healthy, not yet counted: each is
    /// a failed start attempt on its instance.
    pub failed_tasks: Vec<FailedTask>,
    /// Instances in back-off after a failed start, and until when.
    pub waiting: Vec<(String, u64)>,
    /// The earliest time something falls due (a back-off, a verification, a bake time).
    pub next_due_ms: Option<u64>,
    pub counts: Counts,
    pub fleet: Fleet,
    /// Failed start attempts of the active deployment, the ones in `failed_tasks` included.
    pub failed_attempts: u64,
    /// ECS's reason for one failed attempt, to report.
    pub failure_example: Option<String>,
    /// Converged: every eligible instance runs one healthy task of the target, no outdated or
    /// duplicate task is left on them, nothing is left on instances that should have none, and no
    /// start is in flight. Daemons kept on draining or disconnected instances do not hold this up. A
    /// deleting environment is complete once no task of it is left and no start is in flight.
    pub complete: bool,
    /// Whether the plan may act at all (not frozen, a deployment that acts, its canary recorded);
    /// when not, the lists of actions are empty and the counts are still right.
    pub acting: bool,
    /// The active deployment's canary, while it holds the rest of the fleet back.
    pub canary: Option<CanaryPlan>,
    /// Eligible instances that should run the active revision and have had no healthy task of it
    /// for longer than `coverageGraceSeconds`, in ARN order. An instance still served by a healthy
    /// task of an older revision is not counted while the deployment is in progress (the rollout
    /// will reach it), nor is one the canary holds back.
    pub uncovered: Vec<Uncovered>,
    /// Each instance's daemon to the active deployment, in the order of `cluster.instances()` (what
    /// the dashboard's grids colour); empty when nothing is deployed or the environment is deleting.
    pub coverage: Vec<Coverage>,
}

/// What an instance's daemon is to the active deployment: one cell of a rollout grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coverage {
    /// Eligible, with a healthy task of the active revision.
    Healthy,
    /// Eligible, with a task of the active revision (or its start) not yet healthy.
    Starting,
    /// Eligible, still served (or left) by an older revision's task.
    Old,
    /// Eligible, ECS refusing starts here (counted in `Fleet::failing`).
    Failed,
    /// Eligible, with no live task of the environment (maybe one still stopping).
    Missing,
    /// Eligible, held back by the canary until promotion.
    Held,
    /// Draining or agent-disconnected: its daemon is kept, none is started.
    Kept,
    /// Should have none of the environment's tasks: outside its instance group, draining under
    /// `stopOnDrain`, or no longer ACTIVE or DRAINING.
    Excluded,
}

impl Coverage {
    /// Its wire name.
    pub fn name(self) -> &'static str {
        match self {
            Coverage::Healthy => "healthy",
            Coverage::Starting => "starting",
            Coverage::Old => "old",
            Coverage::Failed => "failed",
            Coverage::Missing => "missing",
            Coverage::Held => "held",
            Coverage::Kept => "kept",
            Coverage::Excluded => "excluded",
        }
    }
}

/// A deployment's canary as the planner sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CanaryPlan {
    /// The canary's instances, in ARN order: as recorded on the deployment, or (when `recorded` is
    /// false) as the planner picks them now: every eligible instance its query matches, or the first
    /// N eligible ones by ARN, those already running the revision first.
    pub instances: Vec<String>,
    /// The deployment carries the set already; until it does, nothing is acted on.
    pub recorded: bool,
    /// Every eligible canary instance runs one healthy task of the revision (for the bake time) and
    /// no start is in flight on them: the canary may be promoted.
    pub complete: bool,
}

/// An instance without its daemon, and since when.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Uncovered {
    pub instance_arn: String,
    pub since_ms: u64,
}

/// How the fleet stands against the rollout's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fleet {
    /// Instances that should run the daemon: ACTIVE, agent connected, in the instance group.
    pub eligible: u64,
    /// Eligible instances with a healthy task of the environment, of any revision.
    pub healthy: u64,
    /// ceil(minHealthyPercent × eligible / 100).
    pub floor: u64,
    /// Eligible instances whose daemon is still of an older revision.
    pub outdated: u64,
    /// Eligible instances with ECS refusing starts (in back-off, without a task of the target).
    pub failing: u64,
    /// Eligible instances carrying two tasks of the environment (an outdated one and its replacement,
    /// or any two still stopping), or one and a start in flight.
    pub surged: u64,
    /// How many may (ReplaceThenTerminate).
    pub surge: u64,
    /// Eligible instances the canary holds back: nothing is started or replaced on them until
    /// promotion.
    pub held: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IntentRef {
    pub deployment_id: String,
    pub instance_arn: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FailedTask {
    pub instance_arn: String,
    pub task_arn: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stop {
    pub task_arn: String,
    pub reason: StopReason,
}

/// Why a task is stopped; its `Display` is StopTask's `reason` (with [`STOP_REASON_PREFIX`], so that a
/// task blox stopped is never counted as a failed start).
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
    /// The instance is INACTIVE (or otherwise neither ACTIVE nor DRAINING).
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
        f.write_str(STOP_REASON_PREFIX)?;
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
    /// started, and a stop would only take effect on reconnection): keep one task, start none.
    Keep,
    /// Should have none of the environment's tasks.
    Evict(StopReason),
}

fn role(cluster: &ClusterView, instance: &InstanceView, active: &Active<'_>) -> Role {
    let config = &active.revision.deployment_configuration;
    let in_group = || active.revision.instance_group.matches(&cluster.subject(instance));
    match instance.status {
        InstanceStatus::Active if !in_group() => Role::Evict(StopReason::NotInGroup),
        InstanceStatus::Active if instance.agent_connected => Role::Eligible,
        InstanceStatus::Active => Role::Keep,
        InstanceStatus::Draining if config.stop_on_drain => Role::Evict(StopReason::Drained),
        InstanceStatus::Draining if !in_group() => Role::Evict(StopReason::NotInGroup),
        InstanceStatus::Draining => Role::Keep,
        _ => Role::Evict(StopReason::InstanceGone),
    }
}

/// While a deployment is in progress, a task of it that stops within this long of becoming healthy
/// (or within the bake time, if longer) is a failed attempt.
pub const FAILURE_WINDOW_MS: u64 = 60_000;

/// Whether ECS will report what happens to the tasks on an instance: ACTIVE or DRAINING, with its
/// agent connected.
fn reachable(instance: &InstanceView) -> bool {
    instance.agent_connected && matches!(instance.status, InstanceStatus::Active | InstanceStatus::Draining)
}

/// The environment's tasks, and how to judge them.
struct Judge<'a> {
    tasks: Option<&'a GroupTasks>,
    /// The environment's deployments, task definitions with health checks and the target's task
    /// definition, as the view's symbols (strings it never met match no task).
    ids: FastSet<Sym>,
    health_checked: Vec<Sym>,
    target_td: Option<Sym>,
    min_healthy_ms: u64,
    now_ms: u64,
    /// The earliest time a task not yet healthy for long enough will be.
    next_baked: Option<u64>,
}

impl<'a> Judge<'a> {
    fn owned(&self, task: &TaskView) -> bool {
        task.started_by_sym != Sym::NONE && self.ids.contains(&task.started_by_sym)
    }

    /// The environment's tasks still on an instance, into `here` (reused: planning a fleet is
    /// mostly this).
    fn on(&self, slot: Slot, here: &mut Vec<&'a TaskView>) {
        here.clear();
        if let Some(tasks) = self.tasks {
            here.extend(tasks.on(slot).iter().filter(|t| t.occupying() && self.owned(t)));
        }
        if here.len() > 1 {
            here.sort_unstable_by(|a, b| a.arn.cmp(&b.arn));
        }
    }

    fn is_target(&self, task: &TaskView) -> bool {
        self.target_td == Some(task.task_definition_sym)
    }

    fn checked(&self, task: &TaskView) -> bool {
        self.health_checked.contains(&task.task_definition_sym)
    }

    /// Since when the task has been healthy, if it has (RUNNING, and HEALTHY with health checks).
    fn healthy_from(&self, task: &TaskView) -> Option<u64> {
        task.healthy_from(self.checked(task))
    }

    /// Healthy for at least the bake time.
    fn healthy(&mut self, task: &TaskView) -> bool {
        let Some(since) = self.healthy_from(task) else {
            return false;
        };
        let ready = since.saturating_add(self.min_healthy_ms);
        if self.now_ms >= ready {
            true
        } else {
            self.next_baked = Some(self.next_baked.map_or(ready, |d| d.min(ready)));
            false
        }
    }

    /// The live task to keep of several: healthy first, then the most advanced status, then the
    /// greatest ARN (any fixed rule will do; this one is deterministic).
    fn best<'t>(&mut self, tasks: &[&'t TaskView]) -> Option<&'t TaskView> {
        let mut best: Option<(&TaskView, (bool, u8))> = None;
        for &task in tasks.iter().filter(|t| t.live()) {
            let rank = (self.healthy(task), task.progress());
            let better = match best {
                None => true,
                Some((b, r)) => (rank, &task.arn) > (r, &b.arn),
            };
            if better {
                best = Some((task, rank));
            }
        }
        best.map(|(t, _)| t)
    }

    /// A failed attempt of the deployment, unless blox stopped it: stopped before it was healthy for
    /// the bake time or, while the deployment is in progress, within [`FAILURE_WINDOW_MS`] of
    /// becoming healthy if that is longer. A release that passes its health check and crashes a
    /// moment later would otherwise count as healthy (with no bake time), let the rollout go on, and
    /// crash-loop the fleet without ever failing the deployment.
    fn failed_start(&self, task: &TaskView, in_progress: bool) -> bool {
        if task.occupying()
            || task
                .stopped_reason
                .as_deref()
                .is_some_and(|r| r.starts_with(STOP_REASON_PREFIX))
        {
            return false;
        }
        let window = if in_progress {
            self.min_healthy_ms.max(FAILURE_WINDOW_MS)
        } else {
            self.min_healthy_ms
        };
        let since = if self.checked(task) {
            task.healthy_since
        } else {
            task.running_since
        };
        match (since, task.stopped_at) {
            (Some(since), Some(stopped)) => stopped < since.saturating_add(window),
            (Some(_), None) => false,
            // It ran, but its health was never seen: only its final record is known (the view was
            // loaded after it stopped), so whether it was ever healthy is not: not counted.
            (None, _) if self.checked(task) && task.running_since.is_some() && !task.seen_live => false,
            (None, _) => true,
        }
    }
}

/// An eligible instance whose daemon is of an older revision only, waiting for the strategy.
struct Outdated<'a> {
    instance: &'a str,
    task: &'a TaskView,
    healthy: bool,
}

/// The plan for one environment.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let env = input.environment;
    let group_name = group(&env.name);
    let tasks = input.cluster.group(&group_name);
    debug_assert!(group_name.starts_with(GROUP_PREFIX));
    let cluster = input.cluster;
    let mut judge = Judge {
        tasks,
        ids: input
            .deployment_ids
            .iter()
            .chain(input.active.map(|a| a.deployment.id.as_str()).as_ref())
            .filter_map(|id| cluster.sym(id))
            .collect(),
        health_checked: input
            .health_checked
            .iter()
            .filter_map(|td| cluster.sym(td))
            .collect(),
        target_td: input
            .active
            .and_then(|a| cluster.sym(&a.deployment.task_definition)),
        min_healthy_ms: input.active.map_or(0, |a| {
            a.revision
                .deployment_configuration
                .min_healthy_seconds
                .saturating_mul(1_000)
        }),
        now_ms: input.now_ms,
        next_baked: None,
    };
    let mut plan = Plan::default();
    let blocked = resolve_intents(input, &judge, &mut plan);

    match env.status {
        EnvironmentStatus::Deleting { terminate_tasks } => {
            plan.acting = true;
            let mut busy = !blocked.is_empty();
            if terminate_tasks {
                let mut owned: Vec<&TaskView> = tasks
                    .into_iter()
                    .flat_map(GroupTasks::iter)
                    .filter(|t| t.occupying() && judge.owned(t))
                    .collect();
                owned.sort_unstable_by(|a, b| a.arn.cmp(&b.arn));
                for task in owned {
                    if task.live() {
                        busy = true;
                        plan.stop(task, StopReason::EnvironmentDeleted);
                    } else {
                        // Asked to stop already: wait for STOPPED where ECS will report it, not
                        // on an instance that is gone, cut off or unknown (ECS orphans such tasks).
                        busy |= task
                            .instance
                            .as_deref()
                            .and_then(|arn| cluster.instance(arn))
                            .is_some_and(reachable);
                    }
                }
            }
            plan.complete = !busy;
            plan.finish(&judge);
            return plan;
        }
        EnvironmentStatus::Active => {}
    }
    let Some(active) = input.active else {
        // Nothing deployed yet: nothing to do, nothing to count.
        plan.finish(&judge);
        return plan;
    };
    let config = &active.revision.deployment_configuration;
    let method = active.revision.deployment_method;
    plan.coverage.reserve_exact(cluster.instance_count());
    plan.acting = !env.frozen && active.deployment.status.acts();
    let canary = canary_set(input, &active, &judge);
    if let Some((set, recorded)) = &canary {
        plan.acting &= *recorded;
        plan.canary = Some(CanaryPlan {
            instances: set.iter().map(|s| (*s).to_owned()).collect(),
            recorded: *recorded,
            complete: false,
        });
    }
    let in_canary = |arn: &str| canary.as_ref().is_none_or(|(set, _)| set.contains(arn));
    let grace_ms = config.coverage_grace_seconds.saturating_mul(1_000);
    // Held instances with no daemon wait for the promotion: nothing this deployment does before it
    // can cover them, so the floor is not held against them (otherwise a fleet that lost daemons
    // outside the canary could never replace the canary under TerminateThenReplace).
    let mut held_without_daemon = 0u64;
    // Nobody expected the revision anywhere before its deployment was made.
    let expected_from = active.deployment.created_at;

    // Failure records and fresh failed attempts of the active deployment, by instance.
    let failures: std::collections::HashMap<&str, &InstanceFailure> = input
        .failures
        .iter()
        .map(|f| (f.instance_arn.as_str(), *f))
        .collect();
    plan.failed_attempts = input
        .failures
        .iter()
        .fold(0u64, |sum, f| sum.saturating_add(f.attempts));
    plan.failure_example = input
        .failures
        .iter()
        .max_by_key(|f| (f.last_at_ms, &f.instance_arn))
        .map(|f| format!("{} on {}", f.reason, f.instance_arn));
    let mut fresh: BTreeSet<&str> = BTreeSet::new();

    let mut busy = !blocked.is_empty();
    let mut new_starts: Vec<String> = Vec::new();
    let mut outdated: Vec<Outdated<'_>> = Vec::new();
    // Eligible instances with an outdated task and a start beside it (task or intent).
    let mut surged = 0u64;

    // Reused across instances: planning a fleet must not allocate per instance.
    let (mut here, mut target, mut old) = (Vec::new(), Vec::new(), Vec::new());
    let active_sym = cluster.sym(&active.deployment.id);
    let in_progress = active.deployment.status.in_progress();
    for (slot, instance) in cluster.instances() {
        let arn: &str = &instance.arn;
        judge.on(slot, &mut here);
        let role = role(cluster, instance, &active);
        let failure = if failures.is_empty() {
            None
        } else {
            failures.get(arn).copied()
        };
        let is_blocked = !blocked.is_empty() && blocked.contains(arn);
        plan.counts.total += here.iter().filter(|t| t.live() && judge.is_target(t)).count() as u64;
        if role == Role::Eligible {
            // Tasks of the active deployment that failed here.
            let counted = failure.map_or(&[][..], |f| f.tasks.as_slice());
            for task in tasks.map_or(&[][..], |t| t.on(slot)) {
                if Some(task.started_by_sym) == active_sym
                    && judge.failed_start(task, in_progress)
                    && !counted.iter().any(|c| **c == *task.arn)
                {
                    fresh.insert(arn);
                    plan.failed_tasks.push(FailedTask {
                        instance_arn: arn.to_owned(),
                        task_arn: task.arn.to_string(),
                        reason: task
                            .stopped_reason
                            .as_deref()
                            .unwrap_or("stopped before it was healthy")
                            .to_owned(),
                    });
                }
            }
        }
        match role {
            Role::Evict(reason) => {
                plan.coverage.push(Coverage::Excluded);
                // A task already asked to stop on an instance that is gone or cut off may never be
                // seen STOPPED (ECS orphans tasks of a deregistered instance): it does not hold up
                // completion.
                let reachable = reachable(instance);
                busy |= here.iter().any(|t| t.live() || reachable);
                if here.len() > 1 {
                    surged += 1;
                }
                for task in here.iter().filter(|t| t.live()) {
                    plan.stop(task, reason);
                }
            }
            Role::Keep => {
                plan.coverage.push(Coverage::Kept);
                busy |= here.iter().filter(|t| t.live()).count() > 1;
                // Two tasks here still use a surge slot (the instance may come back eligible with
                // both).
                if here.len() > 1 {
                    surged += 1;
                }
                if let Some(kept) = judge.best(&here) {
                    plan.stop_all_but(&here, kept, StopReason::Duplicate);
                }
            }
            Role::Eligible => {
                plan.fleet.eligible += 1;
                target.clear();
                old.clear();
                for &task in here.iter().filter(|t| t.live()) {
                    if judge.is_target(task) {
                        target.push(task);
                    } else {
                        old.push(task);
                    }
                }
                let best_target = judge.best(&target);
                let best_old = judge.best(&old);
                let target_healthy = best_target.is_some_and(|t| judge.healthy(t));
                let old_healthy = best_old.is_some_and(|t| judge.healthy(t));
                if let Some(kept) = best_target {
                    plan.stop_all_but(&target, kept, StopReason::Duplicate);
                }
                if let Some(kept) = best_old {
                    plan.stop_all_but(&old, kept, StopReason::Duplicate);
                }
                if target_healthy || old_healthy {
                    plan.fleet.healthy += 1;
                }
                // Two tasks of the environment on the instance (live or still stopping), or one and
                // a start in flight (maybe an earlier deployment's, e.g. before a rollback made the
                // task here the target): the instance holds a surge slot until it is down to one,
                // whichever case below it is in, even when none of its tasks is live any more.
                let doubled = here.len() + usize::from(is_blocked) > 1;
                if doubled {
                    surged += 1;
                }
                if !in_canary(arn) {
                    // Held back by the canary: nothing is started or replaced here. Duplicates went
                    // above, and an older task beside a healthy task of the revision (a replacement
                    // an earlier deployment finished here) gives way, which lowers no coverage.
                    plan.fleet.held += 1;
                    plan.coverage.push(if target_healthy {
                        Coverage::Healthy
                    } else {
                        Coverage::Held
                    });
                    if target.is_empty() && old.is_empty() && !is_blocked {
                        held_without_daemon += 1;
                    }
                    busy |= is_blocked;
                    if target_healthy {
                        plan.counts.healthy += 1;
                        if let Some(old_task) = best_old {
                            plan.stop(
                                old_task,
                                StopReason::Replaced {
                                    revision: active.revision.number,
                                },
                            );
                        }
                    }
                    continue;
                }
                let covered = best_target.is_some_and(|t| judge.healthy_from(t).is_some())
                    || (in_progress && old_healthy);
                if !covered {
                    // Since the latest of: the deployment, the instance's registration, the stop of
                    // its last task of the revision.
                    let registered = instance
                        .registered_at
                        .as_deref()
                        .and_then(|t| super::time::parse_rfc3339_ms(t).ok());
                    let last_stop = tasks
                        .map_or(&[][..], |t| t.on(slot))
                        .iter()
                        .filter(|t| judge.owned(t) && judge.is_target(t))
                        .filter_map(|t| t.stopped_at)
                        .max();
                    let since = [Some(expected_from), registered, last_stop]
                        .into_iter()
                        .flatten()
                        .max()
                        .unwrap_or(expected_from);
                    // Not a reason to plan again when the grace ends: coverage changes no action,
                    // and the executor's interval and the API's live plans show it soon enough.
                    if input.now_ms.saturating_sub(since) > grace_ms {
                        plan.uncovered.push(Uncovered {
                            instance_arn: arn.to_owned(),
                            since_ms: since,
                        });
                    }
                }
                let in_back_off = (!fresh.is_empty() && fresh.contains(arn))
                    || failure.is_some_and(|f| f.retry_at_ms > input.now_ms);
                // Each arm names the instance's cell where it counts it: `Failed` exactly where
                // `failing` is counted.
                let coverage;
                match (best_target, best_old) {
                    (Some(_), old_task) => {
                        // Two tasks on the instance until the old one has stopped.
                        busy |= doubled;
                        if target_healthy {
                            plan.counts.healthy += 1;
                            if let Some(old_task) = old_task {
                                // The replacement is healthy: the old task can go without lowering coverage.
                                plan.stop(
                                    old_task,
                                    StopReason::Replaced {
                                        revision: active.revision.number,
                                    },
                                );
                            }
                        } else {
                            busy = true;
                            if old_task.is_some() {
                                plan.fleet.outdated += 1;
                            }
                        }
                        busy |= target.len() > 1 || old.len() > 1;
                        coverage = if target_healthy {
                            Coverage::Healthy
                        } else {
                            Coverage::Starting
                        };
                    }
                    (None, Some(old_task)) => {
                        busy = true;
                        plan.fleet.outdated += 1;
                        coverage = if is_blocked {
                            // A start beside it is in flight.
                            Coverage::Starting
                        } else if method == DeploymentMethod::ReplaceThenTerminate && doubled {
                            // Another task of the environment is still stopping here (a replacement
                            // that crashed, a duplicate): a start now would be one where a task may
                            // still be, and would skip the back-off of a crash not yet STOPPED.
                            Coverage::Old
                        } else if in_back_off {
                            plan.wait(arn, failure, &fresh);
                            plan.fleet.failing += 1;
                            Coverage::Failed
                        } else {
                            outdated.push(Outdated {
                                instance: arn,
                                task: old_task,
                                healthy: old_healthy,
                            });
                            Coverage::Old
                        };
                    }
                    (None, None) => {
                        busy = true;
                        coverage = if is_blocked {
                            Coverage::Starting
                        } else if here.iter().any(|t| t.occupying()) {
                            // A task still stopping: no daemon serves the instance.
                            Coverage::Missing
                        } else if in_back_off {
                            plan.wait(arn, failure, &fresh);
                            plan.fleet.failing += 1;
                            Coverage::Failed
                        } else {
                            new_starts.push(arn.to_owned());
                            if failure.is_some() {
                                plan.fleet.failing += 1;
                                Coverage::Failed
                            } else {
                                Coverage::Missing
                            }
                        };
                    }
                }
                plan.coverage.push(coverage);
            }
        }
    }
    plan.failed_attempts += plan.failed_tasks.len() as u64;
    if let Some(f) = plan.failed_tasks.first() {
        plan.failure_example = Some(format!("{} on {}", f.reason, f.instance_arn));
    }
    plan.counts.desired = plan.fleet.eligible - plan.fleet.held;
    // Counted per instance in the loop; tasks on instances the view lacks are counted here.
    plan.counts.total += tasks
        .into_iter()
        .flat_map(GroupTasks::iter_unplaced)
        .filter(|t| t.live() && judge.owned(t) && judge.is_target(t))
        .count() as u64;
    plan.fleet.floor = config.healthy_floor(plan.fleet.eligible - held_without_daemon);
    plan.fleet.surge = config.surge(plan.fleet.eligible);
    plan.fleet.surged = surged;

    // The strategy: which outdated instances to replace now. Unhealthy ones first (replacing them
    // only raises coverage), then healthy ones within the budget.
    outdated.sort_by_key(|o| o.healthy);
    let mut replacements: Vec<String> = Vec::new();
    match method {
        DeploymentMethod::TerminateThenReplace => {
            let mut budget = plan.fleet.healthy.saturating_sub(plan.fleet.floor);
            for o in &outdated {
                if o.healthy {
                    if budget == 0 {
                        break;
                    }
                    budget -= 1;
                }
                plan.stop(
                    o.task,
                    StopReason::Replaced {
                        revision: active.revision.number,
                    },
                );
            }
        }
        DeploymentMethod::ReplaceThenTerminate => {
            let slots = plan.fleet.surge.saturating_sub(surged);
            replacements.extend(
                outdated
                    .iter()
                    .take(slots as usize)
                    .map(|o| o.instance.to_owned()),
            );
        }
    }

    plan.starts = new_starts;
    plan.starts.extend(replacements);
    match &mut plan.canary {
        // The canary is done when nothing on its instances is left to do; the deployment is not
        // complete before its promotion.
        Some(canary) => {
            canary.complete = !busy && canary.recorded;
            plan.complete = false;
        }
        None => plan.complete = !busy,
    }
    if !plan.acting {
        plan.starts.clear();
        plan.stops.clear();
        plan.failed_tasks.clear();
    }
    plan.finish(&judge);
    plan
}

impl Plan {
    fn stop(&mut self, task: &TaskView, reason: StopReason) {
        self.stops.push(Stop {
            task_arn: task.arn.to_string(),
            reason,
        });
    }

    /// Stops every live task of `tasks` but `kept` (tasks already being stopped are left to finish).
    fn stop_all_but(&mut self, tasks: &[&TaskView], kept: &TaskView, reason: StopReason) {
        for task in tasks {
            if task.live() && task.arn != kept.arn {
                self.stop(task, reason);
            }
        }
    }

    fn wait(&mut self, instance: &str, failure: Option<&InstanceFailure>, fresh: &BTreeSet<&str>) {
        // A fresh failure gets its back-off when the executor records it; the next pass sees it.
        if !fresh.contains(instance)
            && let Some(f) = failure
        {
            self.waiting.push((instance.to_owned(), f.retry_at_ms));
        }
    }

    fn due(&mut self, at_ms: u64) {
        self.next_due_ms = Some(self.next_due_ms.map_or(at_ms, |d| d.min(at_ms)));
    }

    fn finish(&mut self, judge: &Judge<'_>) {
        self.stops.sort_unstable();
        self.stops.dedup();
        self.failed_tasks.sort_unstable();
        let waiting: Vec<u64> = self.waiting.iter().map(|(_, at)| *at).collect();
        for at in waiting {
            self.due(at);
        }
        if let Some(at) = judge.next_baked {
            self.due(at);
        }
    }
}

/// The canary's instances while the deployment is in its canary phase, and whether the deployment
/// records them already. Picked when not recorded: every eligible instance the canary's query
/// matches, or the first N eligible instances by ARN, those already running the revision first (so
/// that a pick made again after a lost write picks the same).
fn canary_set<'a>(
    input: &PlanInput<'a>,
    active: &Active<'a>,
    judge: &Judge<'_>,
) -> Option<(BTreeSet<&'a str>, bool)> {
    let canary = active.revision.deployment_configuration.canary.as_ref()?;
    if !active.deployment.in_canary(active.revision) {
        return None;
    }
    if let Some(set) = &active.deployment.canary_instances {
        return Some((set.iter().map(String::as_str).collect(), true));
    }
    let cluster = input.cluster;
    let mut here = Vec::new();
    // Matched by the query; or, for a count, already running the revision (picked first).
    let mut first = Vec::new();
    let mut others = Vec::new();
    for (slot, instance) in cluster.instances() {
        if role(cluster, instance, active) != Role::Eligible {
            continue;
        }
        let subject = cluster.subject(instance);
        if let Some(query) = &canary.query {
            if query.matches(&subject) {
                first.push(&*instance.arn);
            }
            continue;
        }
        judge.on(slot, &mut here);
        if here.iter().any(|t| t.live() && judge.is_target(t)) {
            first.push(&*instance.arn);
        } else {
            others.push(&*instance.arn);
        }
    }
    let eligible = (first.len() + others.len()) as u64;
    let picked: BTreeSet<&'a str> = match canary.count(eligible) {
        None => first.into_iter().collect(),
        Some(n) => first.into_iter().chain(others).take(n as usize).collect(),
    };
    Some((picked, false))
}

/// Settles the intents whose task is in view, lists those to verify, and returns the instances the
/// others block.
fn resolve_intents<'a>(input: &PlanInput<'a>, judge: &Judge<'_>, plan: &mut Plan) -> HashSet<&'a str> {
    let mut blocked = HashSet::new();
    for state in input.intents {
        let intent = state.intent;
        let instance = intent.instance_arn.as_str();
        let landed = judge
            .tasks
            .map_or(&[][..], |t| input.cluster.tasks_on(t, instance))
            .iter()
            .any(|t| t.live() && t.started_by.as_deref() == Some(intent.deployment_id.as_str()));
        let reference = IntentRef {
            deployment_id: intent.deployment_id.clone(),
            instance_arn: intent.instance_arn.clone(),
        };
        if landed {
            plan.settled.push(reference);
            continue;
        }
        blocked.insert(instance);
        if input.now_ms >= state.verify_at_ms {
            plan.verify.push(reference);
        } else {
            plan.due(state.verify_at_ms);
        }
    }
    plan.settled.sort_unstable();
    plan.verify.sort_unstable();
    blocked
}
