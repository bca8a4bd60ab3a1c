//! The daemon scheduler's executor: applies [`blox_model::daemon::plan`] to ECS and moves deployments
//! along with [`lifecycle::advance`]. It decides nothing itself.
//!
//! A pass runs when the view applied a change that can alter a plan and that the executor did not
//! write itself, when something falls due (a back-off, a verification, a bake time), and at least
//! every [`SchedulerOptions::interval`]. Before planning it waits until the view holds everything the
//! store had committed when the pass began (its own writes included). Per environment, planned from
//! the view as it stands then, in this order:
//!
//! 1. intents whose task is in view are removed;
//! 2. intents to verify (left by an earlier process, or whose StartTask answer was lost) are checked
//!    with ECS (the instance's tasks listed and described, kept by startedBy): what ECS has is
//!    written to the store, then the intent is removed, in one batch; a lost start ECS has no task
//!    for is a failed attempt;
//! 3. tasks of the deployment that failed (stopped before they were healthy) are recorded as
//!    failed attempts;
//! 4. the deployment's transition, if any (and an automatic rollback): a deployment that failed
//!    acts no more;
//! 5. stops and starts, together. Stops: StopTask with the reason; the task as ECS answered goes to
//!    the view at once and to the store, so that the next plan counts it as stopping. Starts: at most
//!    [`START_TASK_BATCH`] instances per StartTask call, each call preceded by one batch recording its
//!    intents. StartTask is never retried (it has no idempotency token): its tasks and `failures` are
//!    written with the intents' removal in one batch; a refused call removes them and records
//!    failures; a call whose outcome is unknown leaves them to be verified;
//! 6. a deleting environment whose tasks are gone is removed with everything it owns.
//!
//! A failing environment backs off on its own; ECS calls are paced under
//! [`SchedulerOptions::calls_per_second`] per API family, slowing down while throttled, and a pass
//! sends only what its pacers allow in about [`SchedulerOptions::pass_budget`] before planning again.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blox_aws::{
    AlarmReader, AlarmStateValue, DESCRIBE_BATCH, EcsControl, EcsError, EcsErrorKind, EcsReader,
    START_TASK_BATCH, StartTask,
};
use blox_model::daemon::{
    self, Active, Changes, DeploymentStatus, Doc, InstanceFailure, IntentRef, IntentState, Plan, PlanInput,
    StartIntent, instance_record_id, lifecycle,
};
use blox_model::{ClusterName, Task};
use blox_store::leader::LeaderGuard;
use blox_store::{Expect, Key, Outcome, Store, StoreError, Write};
use thiserror::Error;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::clock::Clock;
use crate::documents::{self, DocumentError};
use crate::environments::Stored;
use crate::view::View;
use crate::{clock, metrics as m};

#[derive(Clone)]
pub struct SchedulerOptions {
    /// A full pass runs at least this often, whatever changed.
    pub interval: Duration,
    /// ECS calls per second at most, per API family as ECS throttles them (StartTask; StopTask;
    /// ListTasks and DescribeTasks); 0 or less: unpaced.
    pub calls_per_second: f64,
    /// About how long one environment's actions may take in a pass before it plans again (a
    /// paced pass sends at most what its pacers allow in this time).
    pub pass_budget: Duration,
    /// How long after a StartTask whose answer was lost its intent is verified with ECS (intents left
    /// by an earlier process are verified at once).
    pub verify_after: Duration,
    /// After a relevant change, how long to wait for more before the pass (changes come in bursts).
    pub settle: Duration,
    /// The longest an environment whose pass keeps failing waits before the next try.
    pub max_backoff: Duration,
    /// How often a deployment's CloudWatch alarms are read while it is in progress.
    pub alarm_interval: Duration,
    /// The time, in milliseconds since the Unix epoch (the wall clock unless a test sets one).
    pub clock: Clock,
}

impl fmt::Debug for SchedulerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchedulerOptions")
            .field("interval", &self.interval)
            .field("calls_per_second", &self.calls_per_second)
            .field("verify_after", &self.verify_after)
            .field("pass_budget", &self.pass_budget)
            .field("settle", &self.settle)
            .field("max_backoff", &self.max_backoff)
            .field("alarm_interval", &self.alarm_interval)
            .finish_non_exhaustive()
    }
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            interval: Duration::from_secs(30),
            calls_per_second: 10.0,
            verify_after: Duration::from_secs(5),
            pass_budget: Duration::from_secs(1),
            settle: Duration::from_millis(20),
            max_backoff: Duration::from_secs(60),
            alarm_interval: Duration::from_secs(10),
            clock: clock::wall(),
        }
    }
}

/// What one pass did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub environments: usize,
    pub started: usize,
    pub stopped: usize,
    /// Instances where a start failed.
    pub start_failures: usize,
    pub verified: usize,
    pub removed: usize,
    /// Deployment transitions written.
    pub transitions: usize,
    /// Environments whose pass failed (logged; they back off).
    pub errors: usize,
    /// The earliest time (ms) something falls due.
    pub next_due_ms: Option<u64>,
}

impl PassReport {
    fn due(&mut self, at_ms: u64) {
        self.next_due_ms = Some(self.next_due_ms.map_or(at_ms, |d| d.min(at_ms)));
    }
}

#[derive(Debug, Error)]
enum PassError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error(transparent)]
    Ecs(#[from] EcsError),
}

/// Spaces ECS calls out: one per `interval`, times `slowdown` (doubled when throttled, halved back
/// after each call that was not).
struct Pacer {
    interval: Duration,
    state: Mutex<PacerState>,
}

struct PacerState {
    next: Instant,
    slowdown: u32,
}

const MAX_SLOWDOWN: u32 = 64;

impl Pacer {
    fn new(calls_per_second: f64) -> Pacer {
        let interval = if calls_per_second.is_finite() && calls_per_second > 0.0 {
            // At most an hour between calls: a tiny rate is a mistake, not a reason to panic.
            Duration::from_secs_f64((1.0 / calls_per_second).min(3_600.0))
        } else {
            Duration::ZERO
        };
        Pacer {
            interval,
            state: Mutex::new(PacerState {
                next: Instant::now(),
                slowdown: 1,
            }),
        }
    }

    /// How many calls fit in `budget` at the unthrottled pace (at least one); `None` when unpaced.
    fn quota(&self, budget: Duration) -> Option<usize> {
        if self.interval.is_zero() {
            return None;
        }
        Some(((budget.as_secs_f64() / self.interval.as_secs_f64()) as usize).max(1))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PacerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn wait(&self) {
        let at = {
            let mut state = self.lock();
            let at = state.next.max(Instant::now());
            state.next = at + self.interval * state.slowdown;
            at
        };
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
    }

    fn outcome(&self, operation: &'static str, result: Result<(), &EcsError>) {
        let mut state = self.lock();
        let label = match result {
            Ok(()) => {
                state.slowdown = (state.slowdown / 2).max(1);
                "ok"
            }
            Err(EcsError {
                kind: EcsErrorKind::Throttled,
                ..
            }) => {
                state.slowdown = (state.slowdown * 2).min(MAX_SLOWDOWN);
                // At least a second's pause, so that an unpaced engine backs off too.
                let pause = (self.interval * state.slowdown).max(Duration::from_secs(1));
                state.next = state.next.max(Instant::now() + pause);
                "throttled"
            }
            Err(_) => "error",
        };
        ::metrics::counter!(m::SCHEDULER_ECS_CALLS, "operation" => operation, "result" => label).increment(1);
    }
}

/// What the executor remembers between passes (none of it is needed for safety after a restart).
#[derive(Debug, Default)]
struct Memory {
    /// Sequence numbers of changes it wrote, so that they do not wake it.
    own: HashSet<u64>,
    /// Its last write, which the view must hold before the next plan.
    last_write: u64,
    /// Intents whose StartTask answer was lost, and when to verify them.
    lost: HashMap<String, u64>,
    /// Per intent id, lost answers in a row that ECS then had no task for: the wait before the next
    /// verification doubles with each (an ECS answering 5xx is not hammered every few seconds).
    lost_streak: HashMap<String, u32>,
    /// Each in-progress deployment's progress, for its deadline.
    progress: HashMap<String, lifecycle::Progress>,
    /// Environments whose pass failed: failures in a row and the next try.
    backoff: HashMap<String, (u32, u64)>,
    /// Per deployment, when its alarms were last read and the first found in ALARM.
    alarms: HashMap<String, (u64, Option<String>)>,
    /// Environments whose uncovered gauge was set, to zero it when they go.
    gauged: HashSet<String>,
}

/// The executor. [`Scheduler::run`] loops; [`Scheduler::pass`] is one pass (tests call it directly).
pub struct Scheduler {
    store: Arc<dyn Store>,
    reader: Arc<dyn EcsReader>,
    control: Arc<dyn EcsControl>,
    /// CloudWatch, for deployments' alarms; without it a deployment's alarms are not watched (a
    /// warning says so).
    alarms: Option<Arc<dyn AlarmReader>>,
    view: Arc<View>,
    options: SchedulerOptions,
    /// One pacer per ECS API family, as ECS throttles them: StartTask, StopTask, reads.
    starts: Pacer,
    stops: Pacer,
    reads: Pacer,
    memory: Mutex<Memory>,
    /// This replica's leadership term: no StartTask or StopTask once it no longer holds.
    guard: LeaderGuard,
}

impl Scheduler {
    pub fn new(
        store: Arc<dyn Store>,
        reader: Arc<dyn EcsReader>,
        control: Arc<dyn EcsControl>,
        view: Arc<View>,
        options: SchedulerOptions,
    ) -> Scheduler {
        Scheduler {
            store,
            reader,
            control,
            alarms: None,
            view,
            starts: Pacer::new(options.calls_per_second),
            stops: Pacer::new(options.calls_per_second),
            reads: Pacer::new(options.calls_per_second),
            options,
            memory: Mutex::default(),
            guard: LeaderGuard::sole(),
        }
    }

    /// Acts only while `guard`'s leadership term holds.
    pub fn with_guard(mut self, guard: LeaderGuard) -> Scheduler {
        self.guard = guard;
        self
    }

    /// Reads deployments' CloudWatch alarms with `alarms`.
    pub fn with_alarms(mut self, alarms: Arc<dyn AlarmReader>) -> Scheduler {
        self.alarms = Some(alarms);
        self
    }

    fn now(&self) -> u64 {
        (self.options.clock)()
    }

    /// The first of the active deployment's alarms in ALARM, read at most every `alarm_interval`
    /// while the deployment watches them (`Deployment::watches_alarms`) and may act (not frozen). A
    /// failed read fails nothing (CloudWatch's trouble is not the deployment's): it is logged,
    /// counted and tried again at the next interval.
    async fn alarm_in_alarm(&self, stored: &Stored, report: &mut PassReport) -> Option<String> {
        let active = stored.snapshot.active()?;
        let revision = stored.snapshot.revision(active.revision)?;
        if !active.watches_alarms(revision) || stored.environment().frozen {
            return None;
        }
        let names = &revision.deployment_configuration.alarms;
        let now = self.now();
        let interval = self.options.alarm_interval.as_millis() as u64;
        if let Some((at, found)) = self.memory().alarms.get(&active.id)
            && now < at.saturating_add(interval)
        {
            report.due(at.saturating_add(interval));
            return found.clone();
        }
        report.due(now.saturating_add(interval));
        let Some(reader) = &self.alarms else {
            tracing::warn!(environment = %active.environment, deployment = %active.id, "the deployment has alarms but this server reads no CloudWatch alarms");
            self.memory().alarms.insert(active.id.clone(), (now, None));
            return None;
        };
        let found = match reader.alarm_states(names).await {
            Ok(states) => {
                let found = states
                    .into_iter()
                    .find(|s| s.state == AlarmStateValue::Alarm)
                    .map(|s| s.name);
                let result = if found.is_some() { "alarm" } else { "ok" };
                ::metrics::counter!(m::SCHEDULER_ALARM_CHECKS, "result" => result).increment(1);
                found
            }
            Err(err) => {
                ::metrics::counter!(m::SCHEDULER_ALARM_CHECKS, "result" => "error").increment(1);
                tracing::warn!(environment = %active.environment, deployment = %active.id, error = %err, "could not read the deployment's CloudWatch alarms");
                None
            }
        };
        self.memory()
            .alarms
            .insert(active.id.clone(), (now, found.clone()));
        found
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Passes until `shutdown`: after relevant changes, when something falls due, and every `interval`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut trigger = "interval";
        loop {
            let started = Instant::now();
            let report = tokio::select! {
                report = self.pass() => report,
                () = shutdown.cancelled() => return,
            };
            let elapsed = started.elapsed();
            ::metrics::counter!(m::SCHEDULER_PASSES, "trigger" => trigger).increment(1);
            ::metrics::histogram!(m::SCHEDULER_PASS_DURATION_SECONDS).record(elapsed.as_secs_f64());
            tracing::debug!(
                trigger,
                environments = report.environments,
                started = report.started,
                stopped = report.stopped,
                start_failures = report.start_failures,
                verified = report.verified,
                transitions = report.transitions,
                removed = report.removed,
                errors = report.errors,
                elapsed_ms = elapsed.as_millis() as u64,
                "scheduler pass"
            );
            let mut due = Instant::now() + self.options.interval;
            if let Some(at) = report.next_due_ms {
                // A little after, so that the plan sees it due.
                let wait = Duration::from_millis(at.saturating_sub(self.now()) + 5);
                due = due.min(Instant::now() + wait);
            }
            loop {
                tokio::select! {
                    () = self.view.relevant_change() => {
                        if self.foreign_change() {
                            trigger = "change";
                            tokio::select! {
                                () = tokio::time::sleep(self.options.settle) => {}
                                () = shutdown.cancelled() => return,
                            }
                            break;
                        }
                    }
                    () = tokio::time::sleep_until(due) => {
                        trigger = "due";
                        break;
                    }
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }

    /// Whether the view applied a relevant change the executor did not write.
    fn foreign_change(&self) -> bool {
        let applied = self.view.applied();
        let changes = self.view.take_relevant();
        let mut memory = self.memory();
        let foreign = changes.iter().any(|seq| !memory.own.remove(seq));
        // Own changes the view has passed without queueing them never will be.
        memory.own.retain(|&seq| seq > applied);
        foreign
    }

    fn wrote(&self, outcomes: &[Outcome]) {
        let mut memory = self.memory();
        for outcome in outcomes {
            if let Outcome::Written { seq } | Outcome::Deleted { seq } = outcome {
                memory.own.insert(*seq);
                memory.last_write = memory.last_write.max(*seq);
            }
        }
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Outcome>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let outcomes = self.store.apply(writes).await?;
        self.wrote(&outcomes);
        Ok(outcomes)
    }

    /// Writes a batch and notes where its failure records now are.
    async fn apply_batch(
        &self,
        batch: Batch,
        failures: &mut HashMap<String, (Option<u64>, InstanceFailure)>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let outcomes = self.apply(batch.writes).await?;
        for (id, outcome) in batch.failures.iter().zip(&outcomes) {
            if let (Some(id), Outcome::Written { seq }) = (id, outcome)
                && let Some(entry) = failures.get_mut(id)
            {
                entry.0 = Some(*seq);
            }
        }
        Ok(outcomes)
    }

    /// One pass over every environment.
    pub async fn pass(&self) -> PassReport {
        let mut report = PassReport::default();
        // Plan only from a view that holds everything committed before the pass began (its own
        // writes, and what the reconciler or the API wrote): a view missing a task would start a
        // second one beside it.
        let head = match self.store.log_bounds().await {
            Ok(bounds) => bounds.head,
            Err(err) => {
                tracing::warn!(error = %err, "the scheduler could not read the store's head; pass skipped");
                report.errors += 1;
                report.due(self.now() + 1_000);
                return report;
            }
        };
        let wanted = head.max(self.memory().last_write);
        if !self.view.caught_up(wanted, Duration::from_secs(10)).await {
            tracing::warn!(
                wanted,
                applied = self.view.applied(),
                "the view lags behind the store; pass skipped"
            );
            report.errors += 1;
            report.due(self.now() + 1_000);
            return report;
        }
        let names: Vec<String> = self.view.read().environments.keys().cloned().collect();
        if let Err(err) = self.remove_orphans().await {
            tracing::warn!(error = %err, "could not remove intents and failure records of deleted deployments");
        }
        let now = self.now();
        {
            // Forget what no longer exists.
            let state = self.view.read();
            let mut memory = self.memory();
            memory.progress.retain(|id, _| state.deployments.contains_key(id));
            memory.lost.retain(|id, _| state.intents.contains_key(id));
            memory.lost_streak.retain(|id, _| {
                state
                    .deployments
                    .contains_key(id.split('/').next().unwrap_or_default())
            });
            memory
                .backoff
                .retain(|name, _| state.environments.contains_key(name));
            memory.alarms.retain(|id, _| state.deployments.contains_key(id));
            let gone: Vec<String> = memory
                .gauged
                .iter()
                .filter(|name| !state.environments.contains_key(*name))
                .cloned()
                .collect();
            for name in gone {
                ::metrics::gauge!(m::ENVIRONMENT_UNCOVERED_INSTANCES, "environment" => name.clone()).set(0.0);
                memory.gauged.remove(&name);
            }
        }
        for name in names {
            // Each environment as it stands now, not as it stood when the pass began: a stop,
            // freeze or deletion acknowledged meanwhile is seen.
            let Some(stored) = crate::environments::from_view(&self.view.read(), &name) else {
                continue;
            };
            report.environments += 1;
            if let Some(&(_, until)) = self.memory().backoff.get(&name)
                && until > now
            {
                report.due(until);
                continue;
            }
            match self.pass_environment(&stored, &mut report).await {
                Ok(()) => {
                    self.memory().backoff.remove(&name);
                }
                Err(err) => {
                    report.errors += 1;
                    ::metrics::counter!(m::SCHEDULER_ENVIRONMENT_ERRORS).increment(1);
                    let mut memory = self.memory();
                    let failures = memory.backoff.get(&name).map_or(0, |b| b.0).saturating_add(1);
                    let delay = (500u64 << failures.min(16)).min(self.options.max_backoff.as_millis() as u64);
                    let until = self.now() + delay;
                    memory.backoff.insert(name.clone(), (failures, until));
                    drop(memory);
                    report.due(until);
                    tracing::warn!(cluster = %stored.cluster, environment = %name, error = %err, retry_in_ms = delay, "scheduler pass failed for the environment");
                }
            }
        }
        report
    }

    /// Plans one environment from the view.
    fn plan(&self, stored: &Stored, now: u64) -> Plan {
        let snapshot = &stored.snapshot;
        let env = stored.environment();
        let active = snapshot.active().and_then(|deployment| {
            let revision = snapshot.revision(deployment.revision)?;
            Some(Active { deployment, revision })
        });
        let ids = snapshot.deployment_ids();
        let checked = snapshot.health_checked();
        let lost = self.memory().lost.clone();
        let intents: Vec<IntentState<'_>> = snapshot
            .intents
            .iter()
            .map(|intent| IntentState {
                intent,
                // Not known to be this process's (left by an earlier one): verified once a StartTask
                // sent just before it died would be listed, i.e. at once for any older one.
                verify_at_ms: lost.get(&intent.id()).copied().unwrap_or_else(|| {
                    intent
                        .recorded_at_ms
                        .saturating_add(self.options.verify_after.as_millis() as u64)
                }),
            })
            .collect();
        let failures: Vec<&InstanceFailure> = match active {
            Some(a) => snapshot
                .failures
                .iter()
                .filter(|f| f.deployment_id == a.deployment.id)
                .collect(),
            None => Vec::new(),
        };
        let state = self.view.read();
        let empty = daemon::ClusterView::default();
        let cluster = state.clusters.get(&stored.cluster).unwrap_or(&empty);
        daemon::plan(&PlanInput {
            environment: env,
            active,
            deployment_ids: &ids,
            health_checked: &checked,
            cluster,
            intents: &intents,
            failures: &failures,
            now_ms: now,
        })
    }

    async fn pass_environment(&self, stored: &Stored, report: &mut PassReport) -> Result<(), PassError> {
        let now = self.now();
        let env = stored.environment();
        let name = env.name.as_str();
        let cluster = &stored.cluster;
        if stored.snapshot.reads_task_groups() && !self.view.task_groups(&self.store) {
            // A `task:group` it cannot answer yet would match no `==` and every `!=`: wait.
            tracing::debug!(cluster = %cluster, environment = name, "waiting for every task's group before planning");
            report.due(now + 200);
            return Ok(());
        }
        let plan = self.plan(stored, now);
        if let Some(at) = plan.next_due_ms {
            report.due(at);
        }
        ::metrics::gauge!(m::ENVIRONMENT_UNCOVERED_INSTANCES, "environment" => name.to_owned())
            .set(plan.uncovered.len() as f64);
        self.memory().gauged.insert(name.to_owned());
        if !plan.starts.is_empty()
            || !plan.stops.is_empty()
            || !plan.verify.is_empty()
            || !plan.failed_tasks.is_empty()
        {
            tracing::debug!(
                cluster = %cluster,
                environment = name,
                starts = plan.starts.len(),
                stops = plan.stops.len(),
                verify = plan.verify.len(),
                settled = plan.settled.len(),
                failed = plan.failed_tasks.len(),
                healthy = plan.fleet.healthy,
                floor = plan.fleet.floor,
                eligible = plan.fleet.eligible,
                "plan"
            );
        }
        // Failure records as this pass leaves them, to build each new failure on the last.
        let mut failures: HashMap<String, (Option<u64>, InstanceFailure)> = HashMap::new();
        for f in &stored.snapshot.failures {
            let seq = stored.seq(&Key::failure(cluster.clone(), &f.deployment_id, &f.instance_arn));
            failures.insert(f.id(), (seq, f.clone()));
        }

        // 1. Settled intents go: the view guards their instances now.
        let settled: Vec<Write> = plan
            .settled
            .iter()
            .filter_map(|i| self.remove_intent(stored, i))
            .collect();
        self.apply_ignoring_conflicts(settled).await?;

        // 2. Intents whose outcome is unknown: ask ECS. One that cannot be verified now keeps
        // blocking its instance and is tried again; the others go on.
        for intent in &plan.verify {
            match self.verify(stored, intent, &mut failures).await {
                Ok(()) => report.verified += 1,
                Err(err) => {
                    tracing::warn!(cluster = %cluster, environment = name, instance = %intent.instance_arn, error = %err, "could not verify a start with ECS");
                    report.due(now + self.options.verify_after.as_millis() as u64);
                }
            }
        }

        // 3. Tasks that stopped before they were healthy count as failed attempts.
        if let Some(active) = stored.snapshot.active() {
            let config = stored
                .snapshot
                .revision(active.revision)
                .map(|r| r.deployment_configuration.clone())
                .unwrap_or_default();
            let mut batch = Batch::default();
            for failed in &plan.failed_tasks {
                ::metrics::counter!(m::SCHEDULER_FAILED_ATTEMPTS, "cause" => "stopped").increment(1);
                tracing::info!(cluster = %cluster, environment = name, deployment = %active.id, instance = %failed.instance_arn, task = %failed.task_arn, reason = %failed.reason, "task stopped before it was healthy");
                let (id, write, retry_at) = record_failure(
                    cluster,
                    &mut failures,
                    (name, &active.id, &failed.instance_arn),
                    &failed.reason,
                    Some(&failed.task_arn),
                    now,
                    &config,
                );
                batch.push_failure(id, write);
                report.due(retry_at);
            }
            self.apply_batch(batch, &mut failures).await?;
        }

        // 4. The deployment's transition, before acting: a deployment whose failures reached the
        // threshold fails now, not after one more round of starts.
        let deployment_id = uuid::Uuid::new_v4().to_string();
        let alarm = self.alarm_in_alarm(stored, report).await;
        let changes = {
            let mut memory = self.memory();
            let progress = match stored.snapshot.active() {
                Some(active) => memory
                    .progress
                    .entry(active.id.clone())
                    .or_insert_with(|| lifecycle::Progress::new(now)),
                None => &mut lifecycle::Progress::new(now),
            };
            lifecycle::advance(
                &stored.snapshot,
                &plan,
                lifecycle::Observed {
                    alarm: alarm.as_deref(),
                },
                progress,
                lifecycle::Fresh {
                    now_ms: now,
                    deployment_id: &deployment_id,
                    token: "",
                },
            )
        };
        let mut act = true;
        if !changes.is_empty() {
            self.transition(stored, &changes, report).await?;
            // The next plan reads the new state (a canary recorded or promoted) without waiting for
            // the interval: the executor's own writes wake nobody.
            report.due(self.now());
            // Acting on after a failure, or for a deployment that is no longer the active one,
            // waits for a plan of the new state.
            act = changes.put.iter().all(|doc| match doc {
                Doc::Deployment(d) => d.status.acts(),
                Doc::Environment(e) => e.active_deployment == env.active_deployment,
                _ => true,
            });
            if !act {
                report.due(self.now());
            }
        }

        if act {
            // 5. Stops and starts, at once: a plan's stops and starts are on different instances
            // (a replacement starts only once its old task has stopped, or beside a task that stays), so
            // neither waits for the other's calls. A pass does at most what its pacers allow in about
            // `pass_budget`, and plans again: a rollout flows instead of stalling on one long pass.
            let mut stops: &[daemon::Stop] = &plan.stops;
            let mut starts: &[String] = &plan.starts;
            if let Some(quota) = self.stops.quota(self.options.pass_budget)
                && stops.len() > quota
            {
                stops = &stops[..quota];
                report.due(now);
            }
            if let Some(quota) = self.starts.quota(self.options.pass_budget)
                && starts.len() > quota * START_TASK_BATCH
            {
                starts = &starts[..quota * START_TASK_BATCH];
                report.due(now);
            }
            let mut start_report = PassReport::default();
            let (stopped, started) = tokio::join!(
                self.stop_tasks(cluster, name, stops),
                self.start_tasks(stored, starts, &mut failures, &mut start_report)
            );
            report.stopped += stopped?;
            started?;
            report.started += start_report.started;
            report.start_failures += start_report.start_failures;
            if let Some(at) = start_report.next_due_ms {
                report.due(at);
            }
        }

        // 6. A deleting environment goes once nothing of it is left.
        if env.status.is_deleting() && plan.complete && stored.snapshot.intents.is_empty() {
            let changes = lifecycle::finish_delete(&stored.snapshot);
            match self.apply(stored.writes(&changes)).await {
                Ok(_) => {
                    report.removed += 1;
                    ::metrics::counter!(m::SCHEDULER_ENVIRONMENTS_REMOVED).increment(1);
                    tracing::info!(cluster = %cluster, environment = name, "environment removed");
                }
                Err(StoreError::Conflict { .. }) => {
                    ::metrics::counter!(m::SCHEDULER_CONFLICTS, "kind" => "environment").increment(1);
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// Sends the stops; returns how many ECS took.
    async fn stop_tasks(
        &self,
        cluster: &ClusterName,
        environment: &str,
        stops: &[daemon::Stop],
    ) -> Result<usize, PassError> {
        let mut stopped = 0;
        for stop in stops {
            self.stops.wait().await;
            self.guard.check()?;
            let reason = stop.reason.to_string();
            let result = self
                .control
                .stop_task(cluster.as_str(), &stop.task_arn, &reason)
                .await;
            self.stops.outcome("StopTask", result.as_ref().map(|_| ()));
            match result {
                Ok(task) => {
                    stopped += 1;
                    ::metrics::counter!(m::SCHEDULER_TASKS_STOPPED, "reason" => stop.reason.code())
                        .increment(1);
                    tracing::info!(cluster = %cluster, environment, task = %stop.task_arn, reason = stop.reason.code(), "task stopped");
                    self.observe(cluster, std::slice::from_ref(&task)).await?;
                }
                Err(EcsError {
                    kind: EcsErrorKind::Throttled,
                    ..
                }) => {
                    // The pacer slows down; the rest waits for the next pass.
                    tracing::info!(cluster = %cluster, environment, "StopTask throttled");
                    break;
                }
                Err(err) => {
                    // It may or may not have stopped: ask ECS before planning on it again.
                    tracing::warn!(cluster = %cluster, environment, task = %stop.task_arn, error = %err, "StopTask failed; describing the task");
                    self.settle_task(cluster, &stop.task_arn).await?;
                }
            }
        }
        Ok(stopped)
    }

    /// Sends the starts of the active deployment, a StartTask call per batch of instances.
    async fn start_tasks(
        &self,
        stored: &Stored,
        starts: &[String],
        failures: &mut HashMap<String, (Option<u64>, InstanceFailure)>,
        report: &mut PassReport,
    ) -> Result<(), PassError> {
        let Some(active) = stored.snapshot.active() else {
            return Ok(());
        };
        let config = stored
            .snapshot
            .revision(active.revision)
            .map(|r| r.deployment_configuration.clone())
            .unwrap_or_default();
        for chunk in starts.chunks(START_TASK_BATCH) {
            let go_on = self
                .start(
                    stored,
                    &active.id,
                    &active.task_definition,
                    chunk,
                    &config,
                    failures,
                    report,
                )
                .await?;
            if !go_on {
                report.due(self.now() + 1_000);
                break;
            }
        }
        Ok(())
    }

    async fn transition(
        &self,
        stored: &Stored,
        changes: &Changes,
        report: &mut PassReport,
    ) -> Result<(), PassError> {
        match self.apply(stored.writes(changes)).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                // A user changed the environment meanwhile: the next pass decides again, once the
                // view has the change.
                ::metrics::counter!(m::SCHEDULER_CONFLICTS, "kind" => "deployment").increment(1);
                report.due(self.now() + 100);
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        }
        let env = stored.environment();
        for doc in &changes.put {
            let Doc::Deployment(d) = doc else { continue };
            let before = stored.snapshot.deployment(&d.id).map(|b| b.status);
            if before == Some(d.status) {
                continue;
            }
            report.transitions += 1;
            ::metrics::counter!(m::SCHEDULER_DEPLOYMENT_TRANSITIONS, "status" => d.status.name())
                .increment(1);
            let reason = d.reason().unwrap_or_default();
            match d.status {
                DeploymentStatus::Failed => {
                    tracing::warn!(cluster = %stored.cluster, environment = %env.name, deployment = %d.id, reason, "deployment failed")
                }
                DeploymentStatus::Pending if d.rollback => {
                    ::metrics::counter!(m::SCHEDULER_AUTO_ROLLBACKS).increment(1);
                    tracing::warn!(cluster = %stored.cluster, environment = %env.name, deployment = %d.id, revision = d.revision, reason, "automatic rollback started");
                    // A new deployment to act on at once.
                    report.due(self.now());
                }
                status => {
                    tracing::info!(cluster = %stored.cluster, environment = %env.name, deployment = %d.id, status = status.name(), reason, "deployment status")
                }
            }
        }
        Ok(())
    }

    /// Writes a batch; a conflict means someone else changed those documents, which the next pass
    /// sees.
    async fn apply_ignoring_conflicts(&self, writes: Vec<Write>) -> Result<(), PassError> {
        match self.apply(writes).await {
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    fn remove_intent(&self, stored: &Stored, intent: &IntentRef) -> Option<Write> {
        let key = Key::intent(
            stored.cluster.clone(),
            &intent.deployment_id,
            &intent.instance_arn,
        );
        let seq = stored.seq(&key)?;
        Some(Write::Remove { key, expect: seq })
    }

    /// Asks ECS what the intent's deployment has on its instance, writes it, and removes the intent.
    async fn verify(
        &self,
        stored: &Stored,
        intent: &IntentRef,
        failures: &mut HashMap<String, (Option<u64>, InstanceFailure)>,
    ) -> Result<(), PassError> {
        let cluster = &stored.cluster;
        // Listing an instance's tasks takes a ListTasks call per desired status at least.
        for _ in 0..blox_aws::STARTED_TASKS_ORDER.len() {
            self.reads.wait().await;
        }
        let listed = self
            .reader
            .list_started_tasks(cluster.as_str(), &intent.deployment_id, &intent.instance_arn)
            .await;
        self.reads.outcome("ListTasks", listed.as_ref().map(|_| ()));
        let arns = listed?;
        let tasks = self.describe(cluster, &arns).await?;
        if tasks.len() < arns.len() {
            // ECS listed more than it described: not an answer yet.
            return Err(PassError::Ecs(EcsError {
                operation: "DescribeTasks",
                cluster: Some(cluster.to_string()),
                kind: EcsErrorKind::Other(format!(
                    "{} of {} listed tasks described",
                    tasks.len(),
                    arns.len()
                )),
            }));
        }
        ::metrics::counter!(m::SCHEDULER_VERIFICATIONS).increment(1);
        tracing::info!(cluster = %cluster, deployment = %intent.deployment_id, instance = %intent.instance_arn, tasks = tasks.len(), "verified a start with ECS");
        let id = instance_record_id(&intent.deployment_id, &intent.instance_arn);
        let lost = self.memory().lost.contains_key(&id);
        let mut batch = Batch::default();
        for task in &tasks {
            batch.push(Write::observe(documents::task(cluster.clone(), task)));
        }
        batch.writes.extend(self.remove_intent(stored, intent));
        batch.failures.resize(batch.writes.len(), None);
        {
            // A lost start ECS has nothing for (the call never reached it) is not the revision's
            // failure; the next one is verified later, and later still after each such loss.
            let mut memory = self.memory();
            if lost && tasks.is_empty() {
                *memory.lost_streak.entry(id.clone()).or_default() += 1;
            } else {
                memory.lost_streak.remove(&id);
            }
        }
        match self.apply_batch(batch, failures).await {
            Ok(_) | Err(StoreError::Conflict { .. }) => {}
            Err(err) => return Err(err.into()),
        }
        self.memory().lost.remove(&id);
        Ok(())
    }

    /// Removes start intents and failure records whose deployment no longer exists (their
    /// environment was deleted at once while the executor was acting for it).
    async fn remove_orphans(&self) -> Result<(), StoreError> {
        let writes: Vec<Write> = {
            let state = self.view.read();
            let intents = state
                .intents
                .values()
                .filter(|e| !state.deployments.contains_key(&e.doc.deployment_id))
                .map(|e| Write::Remove {
                    key: Key::intent(e.cluster.clone(), &e.doc.deployment_id, &e.doc.instance_arn),
                    expect: e.seq,
                });
            let failures = state
                .failures
                .values()
                .filter(|e| !state.deployments.contains_key(&e.doc.deployment_id))
                .map(|e| Write::Remove {
                    key: Key::failure(e.cluster.clone(), &e.doc.deployment_id, &e.doc.instance_arn),
                    expect: e.seq,
                });
            intents.chain(failures).take(1_000).collect()
        };
        match self.apply(writes).await {
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    async fn describe(&self, cluster: &ClusterName, arns: &[String]) -> Result<Vec<Task>, EcsError> {
        let mut described = Vec::with_capacity(arns.len());
        for chunk in arns.chunks(DESCRIBE_BATCH) {
            self.reads.wait().await;
            let result = self.reader.describe_tasks(cluster.as_str(), chunk).await;
            self.reads.outcome("DescribeTasks", result.as_ref().map(|_| ()));
            described.extend(result?);
        }
        Ok(described)
    }

    /// Writes tasks as ECS just described them (the version rule applies), and shows them to the
    /// view at once: the next plan must count a task ECS was asked to stop as stopping even if the
    /// write changed nothing (ECS answered with the version the store holds) or failed.
    async fn observe(&self, cluster: &ClusterName, tasks: &[Task]) -> Result<(), StoreError> {
        if tasks.is_empty() {
            return Ok(());
        }
        self.view.observe_tasks(cluster, tasks);
        let writes = tasks
            .iter()
            .map(|t| Write::observe(documents::task(cluster.clone(), t)))
            .collect();
        self.apply(writes).await.map(drop)
    }

    /// After a StopTask whose outcome is unknown: what ECS says of the task goes to the store (and
    /// the view). A task ECS does not describe is left to the reconciler, which confirms its absence
    /// before removing it.
    async fn settle_task(&self, cluster: &ClusterName, arn: &str) -> Result<(), PassError> {
        let described = self.describe(cluster, &[arn.to_owned()]).await?;
        self.observe(cluster, &described).await?;
        Ok(())
    }

    /// Starts the deployment's task on up to [`START_TASK_BATCH`] instances, their intents recorded
    /// first. Returns whether more starts may follow in this pass.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        stored: &Stored,
        deployment_id: &str,
        task_definition: &str,
        chunk: &[String],
        config: &daemon::DeploymentConfiguration,
        failures: &mut HashMap<String, (Option<u64>, InstanceFailure)>,
        report: &mut PassReport,
    ) -> Result<bool, PassError> {
        let cluster = &stored.cluster;
        let environment = stored.environment().name.as_str();
        if !self.still_current(stored, deployment_id) {
            // A user stopped, froze, redeployed or deleted meanwhile: plan again first.
            tracing::debug!(cluster = %cluster, environment, "the environment changed since it was planned; next pass");
            return Ok(false);
        }
        let recorded_at = self.now();
        let intents: Vec<StartIntent> = chunk
            .iter()
            .map(|arn| StartIntent {
                environment: environment.to_owned(),
                deployment_id: deployment_id.to_owned(),
                instance_arn: arn.clone(),
                recorded_at_ms: recorded_at,
            })
            .collect();
        let writes = intents
            .iter()
            .map(|i| Write::Put {
                doc: documents::scheduler_doc(cluster, &Doc::Intent(i.clone())),
                expect: Expect::Absent,
            })
            .collect();
        let outcomes = match self.apply(writes).await {
            Ok(outcomes) => outcomes,
            Err(StoreError::Conflict { .. }) => {
                ::metrics::counter!(m::SCHEDULER_CONFLICTS, "kind" => "intent").increment(1);
                tracing::debug!(cluster = %cluster, environment, deployment = deployment_id, "an intent exists already; next pass");
                return Ok(false);
            }
            Err(err) => return Err(err.into()),
        };
        let intent_seqs: HashMap<&str, u64> = chunk
            .iter()
            .zip(&outcomes)
            .filter_map(|(arn, o)| match o {
                Outcome::Written { seq } => Some((arn.as_str(), *seq)),
                _ => None,
            })
            .collect();
        let remove = |arn: &str| {
            intent_seqs.get(arn).map(|&seq| Write::Remove {
                key: Key::intent(cluster.clone(), deployment_id, arn),
                expect: seq,
            })
        };
        let request = StartTask {
            cluster: cluster.to_string(),
            task_definition: task_definition.to_owned(),
            container_instances: chunk.to_vec(),
            started_by: Some(deployment_id.to_owned()),
            group: Some(daemon::group(environment)),
        };
        self.starts.wait().await;
        self.guard.check()?;
        // Never retried: StartTask has no idempotency token.
        let result = self.control.start_task(&request).await;
        self.starts.outcome("StartTask", result.as_ref().map(|_| ()));
        let now = self.now();
        match result {
            Ok(started) => {
                let mut batch = Batch::default();
                for task in &started.tasks {
                    batch.push(Write::observe(documents::task(cluster.clone(), task)));
                }
                let placed: HashSet<&str> = started
                    .tasks
                    .iter()
                    .filter_map(|t| t.container_instance_arn.as_deref())
                    .collect();
                let mut refused: HashSet<&str> = HashSet::new();
                for f in &started.failures {
                    let Some(arn) = f.arn.as_deref().and_then(|a| chunk.iter().find(|c| *c == a)) else {
                        continue;
                    };
                    ::metrics::counter!(m::SCHEDULER_START_FAILURES, "reason" => f.reason.clone())
                        .increment(1);
                    ::metrics::counter!(m::SCHEDULER_FAILED_ATTEMPTS, "cause" => "refused").increment(1);
                    tracing::info!(cluster = %cluster, environment, deployment = deployment_id, instance = %arn, reason = %f.reason, "ECS refused the start");
                    let (id, write, retry_at) = record_failure(
                        cluster,
                        failures,
                        (environment, deployment_id, arn),
                        &f.reason,
                        None,
                        now,
                        config,
                    );
                    batch.push_failure(id, write);
                    report.due(retry_at);
                    refused.insert(arn);
                }
                for arn in chunk {
                    if placed.contains(arn.as_str()) {
                        self.memory()
                            .lost_streak
                            .remove(&instance_record_id(deployment_id, arn));
                    }
                    if placed.contains(arn.as_str()) || refused.contains(arn.as_str()) {
                        if let Some(write) = remove(arn) {
                            batch.push(write);
                        }
                    } else {
                        // ECS neither started nor refused it: the intent is verified later.
                        self.lose(deployment_id, arn, now);
                    }
                }
                report.started += started.tasks.len();
                report.start_failures += refused.len();
                ::metrics::counter!(m::SCHEDULER_TASKS_STARTED).increment(started.tasks.len() as u64);
                tracing::info!(cluster = %cluster, environment, deployment = deployment_id, started = started.tasks.len(), refused = refused.len(), "StartTask answered");
                self.apply_batch(batch, failures).await?;
                Ok(true)
            }
            Err(err) => {
                let throttled = matches!(err.kind, EcsErrorKind::Throttled);
                // Refused outright: nothing was started. Otherwise it may have been: the intents stay
                // until ECS has been asked.
                let refused = matches!(
                    err.kind,
                    EcsErrorKind::Throttled | EcsErrorKind::Rejected { .. } | EcsErrorKind::ClusterNotFound
                );
                tracing::warn!(cluster = %cluster, environment, deployment = deployment_id, instances = chunk.len(), error = %err, refused, "StartTask failed");
                if !refused {
                    for arn in chunk {
                        self.lose(deployment_id, arn, now);
                    }
                    report.due(now + self.options.verify_after.as_millis() as u64);
                    return Ok(false);
                }
                let mut batch = Batch::default();
                for write in chunk.iter().filter_map(|arn| remove(arn)) {
                    batch.push(write);
                }
                if !throttled {
                    let reason = match &err.kind {
                        EcsErrorKind::ClusterNotFound => "ClusterNotFoundException".to_owned(),
                        EcsErrorKind::Rejected { code, message } => format!("{code}: {message}"),
                        _ => "ERROR".to_owned(),
                    };
                    report.start_failures += chunk.len();
                    ::metrics::counter!(m::SCHEDULER_START_FAILURES, "reason" => "error")
                        .increment(chunk.len() as u64);
                    for arn in chunk {
                        let (id, write, retry_at) = record_failure(
                            cluster,
                            failures,
                            (environment, deployment_id, arn),
                            &reason,
                            None,
                            now,
                            config,
                        );
                        batch.push_failure(id, write);
                        report.due(retry_at);
                    }
                }
                self.apply_batch(batch, failures).await?;
                Ok(!throttled)
            }
        }
    }

    /// Whether the view still lets the deployment act: its environment is there, neither deleting
    /// nor frozen, with the deployment active, and the deployment not stopped or failed. (A user's
    /// command acknowledged since the plan was made wins over the plan.)
    fn still_current(&self, stored: &Stored, deployment_id: &str) -> bool {
        let state = self.view.read();
        let env_ok = state
            .environments
            .get(&stored.environment().name)
            .is_some_and(|e| {
                !e.doc.frozen
                    && !e.doc.status.is_deleting()
                    && e.doc.active_deployment.as_deref() == Some(deployment_id)
            });
        env_ok
            && state
                .deployments
                .get(deployment_id)
                .is_some_and(|d| d.doc.status.acts())
    }

    /// Notes a start whose outcome is unknown, to verify its intent a little later.
    fn lose(&self, deployment_id: &str, instance_arn: &str, now: u64) {
        let id = instance_record_id(deployment_id, instance_arn);
        let mut memory = self.memory();
        let streak = memory.lost_streak.get(&id).copied().unwrap_or(0);
        let wait = (self.options.verify_after.as_millis() as u64)
            .saturating_mul(1 << streak.min(6))
            .min(300_000);
        memory.lost.insert(id, now + wait);
    }
}

/// A batch of writes, some of which record failed attempts whose new sequence numbers must be noted.
#[derive(Default)]
struct Batch {
    writes: Vec<Write>,
    failures: Vec<Option<String>>,
}

impl Batch {
    fn push(&mut self, write: Write) {
        self.writes.push(write);
        self.failures.push(None);
    }

    fn push_failure(&mut self, id: String, write: Write) {
        self.writes.push(write);
        self.failures.push(Some(id));
    }
}

/// The write recording one more failed attempt on an instance, and the record as it will be.
fn record_failure(
    cluster: &ClusterName,
    failures: &mut HashMap<String, (Option<u64>, InstanceFailure)>,
    key: (&str, &str, &str),
    reason: &str,
    task: Option<&str>,
    now: u64,
    config: &daemon::DeploymentConfiguration,
) -> (String, Write, u64) {
    let id = instance_record_id(key.1, key.2);
    let previous = failures.get(&id);
    let failure = InstanceFailure::record(previous.map(|p| &p.1), key, reason, task, now, config);
    let expect = match previous.and_then(|p| p.0) {
        Some(seq) => Expect::Seq(seq),
        None => Expect::Absent,
    };
    let doc = documents::scheduler_doc(cluster, &Doc::Failure(failure.clone()));
    let retry_at = failure.retry_at_ms;
    failures.insert(id.clone(), (previous.and_then(|p| p.0), failure));
    (id, Write::Put { doc, expect }, retry_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pacer_spaces_calls_and_backs_off_when_throttled() {
        let pacer = Pacer::new(20.0);
        let started = Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        // The first call goes at once, the next four 50 ms apart.
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );

        let throttled = EcsError {
            operation: "StartTask",
            cluster: None,
            kind: EcsErrorKind::Throttled,
        };
        pacer.outcome("StartTask", Err(&throttled));
        assert_eq!(pacer.lock().slowdown, 2);
        let paused = Instant::now();
        pacer.wait().await;
        assert!(
            paused.elapsed() >= Duration::from_millis(900),
            "{:?}",
            paused.elapsed()
        );
        pacer.outcome("StartTask", Ok(()));
        assert_eq!(pacer.lock().slowdown, 1);

        let unpaced = Pacer::new(0.0);
        let started = Instant::now();
        for _ in 0..100 {
            unpaced.wait().await;
        }
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
