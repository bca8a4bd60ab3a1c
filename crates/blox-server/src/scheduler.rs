//! The daemon scheduler's executor: applies [`blox_model::daemon::plan`] to ECS.
//!
//! A loop runs a pass over every environment when the store changes in a way that matters (an
//! environment, revision or deployment document, a container instance, a task started by someone),
//! when a back-off or an intent's TTL falls due, and at least every [`SchedulerOptions::interval`].
//! A pass reads everything from the store — environments, their deployments (which hold the start
//! intents), the active deployment's revision, and per cluster one [`ClusterView`] of its instances
//! and of the tasks started by the environments' deployments, shared by the cluster's environments —
//! plans, and applies the plan in this order:
//!
//! 1. settled intents are dropped;
//! 2. instances whose intents expired are verified with ECS (DescribeTasks of the intent's task, or
//!    ListTasks + DescribeTasks of the cluster when ECS never answered with an ARN); what ECS says is
//!    written to the store (`Write::Observe`) and the expired intents are dropped;
//! 3. stops (StopTask with the reason);
//! 4. starts, at most [`START_TASK_BATCH`] instances per StartTask call, each call preceded by one
//!    compare-and-swap write of the deployment recording its intents: a conflict ends the pass's
//!    starts (the next pass re-plans from what was written). StartTask is never retried on an
//!    error: ECS's `failures` and refused calls go to the deployment's failed instances (back-off),
//!    intents of calls that may have started something stay until verified;
//! 5. the deployment's counts and status ([`Deployment::observe`]) and the environment's health.
//!
//! A deleting environment is removed (with its revisions and deployments) once its plan is complete.
//! ECS calls are paced under [`SchedulerOptions::calls_per_second`], slowing down while throttled.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blox_aws::{
    DESCRIBE_BATCH, DesiredStatus, EcsControl, EcsError, EcsErrorKind, EcsReader, Listing, START_TASK_BATCH,
    StartTask,
};
use blox_model::daemon::{
    self, ClusterView, DEFAULT_INTENT_TTL_MS, Deployment, DeploymentStatus, Environment, EnvironmentStatus,
    InstanceView, IntentKey, PlanInput, Revision, StartIntent, Target, TaskView,
};
use blox_model::{ClusterName, ContainerInstance, Task};
use blox_store::{Expect, Filter, Key, Kind, PageRequest, Record, Store, StoreError, Write};
use thiserror::Error;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::documents::{self, DocumentError};
use crate::{clock, metrics as m};

/// Milliseconds since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Clone)]
pub struct SchedulerOptions {
    /// A full pass runs at least this often, whatever changed.
    pub interval: Duration,
    /// ECS calls (StartTask, StopTask, List, Describe) per second at most; 0 or less: unpaced.
    pub calls_per_second: f64,
    /// How long a start intent without its task in view is trusted before the instance is verified.
    pub intent_ttl_ms: u64,
    /// After a relevant change, how long to wait for more before the pass (changes come in bursts).
    pub settle: Duration,
    /// The time, in milliseconds since the Unix epoch (the wall clock unless a test sets one).
    pub clock: Clock,
}

impl fmt::Debug for SchedulerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchedulerOptions")
            .field("interval", &self.interval)
            .field("calls_per_second", &self.calls_per_second)
            .field("intent_ttl_ms", &self.intent_ttl_ms)
            .field("settle", &self.settle)
            .finish_non_exhaustive()
    }
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            interval: Duration::from_secs(30),
            calls_per_second: 10.0,
            intent_ttl_ms: DEFAULT_INTENT_TTL_MS,
            settle: Duration::from_millis(20),
            clock: Arc::new(clock::now_unix_ms),
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
    /// Environments or clusters whose pass failed (logged).
    pub errors: usize,
    /// The earliest time (ms) something falls due: a back-off ends or an intent expires.
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

/// A deployment as read, with the sequence number its next write expects.
#[derive(Debug, Clone)]
struct Dep {
    seq: u64,
    dep: Deployment,
}

struct EnvState {
    seq: u64,
    env: Environment,
    deployments: Vec<Dep>,
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
            Duration::from_secs_f64(1.0 / calls_per_second)
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

/// The executor. [`Scheduler::run`] loops; [`Scheduler::pass`] is one pass (tests call it directly).
pub struct Scheduler {
    store: Arc<dyn Store>,
    reader: Arc<dyn EcsReader>,
    control: Arc<dyn EcsControl>,
    options: SchedulerOptions,
    pacer: Pacer,
    /// What the last pass saw, for telling relevant changes from the rest.
    watched: Mutex<Watched>,
}

#[derive(Debug, Default)]
struct Watched {
    clusters: HashSet<ClusterName>,
    deployments: HashSet<String>,
}

impl Scheduler {
    pub fn new(
        store: Arc<dyn Store>,
        reader: Arc<dyn EcsReader>,
        control: Arc<dyn EcsControl>,
        options: SchedulerOptions,
    ) -> Scheduler {
        let pacer = Pacer::new(options.calls_per_second);
        Scheduler {
            store,
            reader,
            control,
            options,
            pacer,
            watched: Mutex::default(),
        }
    }

    fn now(&self) -> u64 {
        (self.options.clock)()
    }

    /// Passes until `shutdown`: after relevant changes of the store, when something falls due, and
    /// every `interval`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut heads = self.store.subscribe();
        let mut trigger = "interval";
        loop {
            let mut seen = *heads.borrow_and_update();
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
                    changed = heads.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let head = *heads.borrow_and_update();
                        let relevant = self.relevant(seen, head).await;
                        seen = head;
                        if relevant {
                            trigger = "change";
                            tokio::select! {
                                () = tokio::time::sleep(self.options.settle) => {}
                                () = shutdown.cancelled() => return,
                            }
                            break;
                        }
                    }
                    () = tokio::time::sleep_until(due) => {
                        trigger = "interval";
                        break;
                    }
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }

    /// Whether the changes after `after` up to `head` can change a plan: scheduler documents,
    /// instances of clusters with environments, and tasks started by the environments' deployments
    /// (as of the last pass; a new deployment is a scheduler document, so it is never missed).
    async fn relevant(&self, after: u64, head: u64) -> bool {
        let mut position = after;
        for _ in 0..16 {
            if position >= head {
                return false;
            }
            let changes = match self.store.changes(position, 1_000).await {
                Ok(changes) => changes,
                Err(_) => return true,
            };
            let Some(last) = changes.last() else {
                return false;
            };
            position = last.seq;
            let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            let hit = changes.iter().any(|c| match c.doc.key.kind {
                Kind::Environment | Kind::Revision | Kind::Deployment => true,
                Kind::Instance => watched.clusters.contains(&c.doc.key.cluster),
                Kind::Task => c
                    .doc
                    .started_by
                    .as_ref()
                    .is_some_and(|s| watched.deployments.contains(s)),
            });
            drop(watched);
            if hit {
                return true;
            }
        }
        // A long burst: a pass costs less than reading all of it.
        true
    }

    async fn list_all(&self, kind: Kind, filter: Filter) -> Result<Vec<Record>, StoreError> {
        Ok(self
            .store
            .list(kind, &filter, PageRequest::default())
            .await?
            .items)
    }

    /// One pass over every environment.
    pub async fn pass(&self) -> PassReport {
        let mut report = PassReport::default();
        let environments = match self.list_all(Kind::Environment, Filter::default()).await {
            Ok(records) => records,
            Err(err) => {
                tracing::warn!(error = %err, "scheduler could not list environments");
                report.errors += 1;
                return report;
            }
        };
        let mut by_cluster: BTreeMap<ClusterName, Vec<Record>> = BTreeMap::new();
        for record in environments {
            by_cluster
                .entry(record.doc.key.cluster.clone())
                .or_default()
                .push(record);
        }
        let mut watched = Watched {
            clusters: by_cluster.keys().cloned().collect(),
            deployments: HashSet::new(),
        };
        for (cluster, records) in by_cluster {
            let result = self
                .pass_cluster(&cluster, records, &mut watched.deployments, &mut report)
                .await;
            if let Err(err) = result {
                tracing::warn!(cluster = %cluster, error = %err, "scheduler pass failed for the cluster");
                report.errors += 1;
            }
        }
        let mut last = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if report.errors > 0 {
            // What could not be read this time is still watched.
            watched.clusters.extend(last.clusters.drain());
            watched.deployments.extend(last.deployments.drain());
        }
        *last = watched;
        drop(last);
        report
    }

    async fn pass_cluster(
        &self,
        cluster: &ClusterName,
        records: Vec<Record>,
        watched: &mut HashSet<String>,
        report: &mut PassReport,
    ) -> Result<(), PassError> {
        let mut states = Vec::with_capacity(records.len());
        for record in records {
            let env: Environment = match documents::parse(&record.doc) {
                Ok(env) => env,
                Err(err) => {
                    tracing::warn!(cluster = %cluster, error = %err, "skipping an unreadable environment");
                    report.errors += 1;
                    continue;
                }
            };
            let filter = Filter {
                cluster: Some(cluster.clone()),
                status: None,
                started_by: Some(env.name.clone()),
            };
            let mut deployments = Vec::new();
            for record in self.list_all(Kind::Deployment, filter).await? {
                match documents::parse::<Deployment>(&record.doc) {
                    Ok(dep) => deployments.push(Dep { seq: record.seq, dep }),
                    Err(err) => {
                        tracing::warn!(cluster = %cluster, error = %err, "skipping an unreadable deployment");
                        report.errors += 1;
                    }
                }
            }
            states.push(EnvState {
                seq: record.seq,
                env,
                deployments,
            });
        }

        let instance_filter = Filter {
            cluster: Some(cluster.clone()),
            ..Filter::default()
        };
        let instances: Vec<ContainerInstance> = self
            .list_all(Kind::Instance, instance_filter)
            .await?
            .iter()
            .map(|r| documents::parse(&r.doc))
            .collect::<Result<_, _>>()?;
        // Only the tasks some deployment of these environments started can be theirs.
        let mut tasks: Vec<Task> = Vec::new();
        let mut listed: HashSet<String> = HashSet::new();
        for state in &states {
            for dep in &state.deployments {
                watched.insert(dep.dep.id.clone());
                let filter = Filter {
                    cluster: Some(cluster.clone()),
                    status: None,
                    started_by: Some(dep.dep.id.clone()),
                };
                for record in self.list_all(Kind::Task, filter).await? {
                    if listed.insert(record.doc.key.id.clone()) {
                        tasks.push(documents::parse(&record.doc)?);
                    }
                }
            }
        }
        let view = ClusterView::new(
            instances.iter().map(InstanceView::from),
            tasks.iter().map(TaskView::from),
        );
        let mut ecs_tasks: Option<Vec<Task>> = None;
        for state in states {
            report.environments += 1;
            let name = state.env.name.clone();
            if let Err(err) = self
                .pass_environment(cluster, &view, state, &mut ecs_tasks, report)
                .await
            {
                tracing::warn!(cluster = %cluster, environment = %name, error = %err, "scheduler pass failed for the environment");
                report.errors += 1;
            }
        }
        Ok(())
    }

    async fn pass_environment(
        &self,
        cluster: &ClusterName,
        view: &ClusterView<'_>,
        state: EnvState,
        ecs_tasks: &mut Option<Vec<Task>>,
        report: &mut PassReport,
    ) -> Result<(), PassError> {
        let now = self.now();
        let EnvState {
            seq: env_seq,
            env,
            mut deployments,
        } = state;
        let name = env.name.as_str();

        // A newer deployment supersedes the older ones that had not completed.
        if let Some(active) = &env.active_deployment {
            for dep in deployments.iter_mut() {
                if dep.dep.id != *active
                    && matches!(
                        dep.dep.status,
                        DeploymentStatus::Pending | DeploymentStatus::Running
                    )
                {
                    let changed = self
                        .update_deployment(cluster, dep, |d| {
                            if !matches!(d.status, DeploymentStatus::Pending | DeploymentStatus::Running) {
                                return false;
                            }
                            d.status = DeploymentStatus::Stopped;
                            d.ended_at = Some(now);
                            true
                        })
                        .await?;
                    if changed {
                        tracing::info!(cluster = %cluster, environment = name, deployment = %dep.dep.id, superseded_by = %active, "deployment stopped: superseded");
                    }
                }
            }
        }

        let deleting = matches!(env.status, EnvironmentStatus::Deleting { .. });
        let active = env
            .active_deployment
            .as_ref()
            .and_then(|active| deployments.iter().position(|d| d.dep.id == *active));
        // A deleting environment without its active deployment is still planned (so that its tasks
        // are stopped and its intents resolved) against its newest deployment.
        let target = active.or_else(|| {
            deployments
                .iter()
                .enumerate()
                .filter(|_| deleting)
                .max_by_key(|(_, d)| (d.dep.created_at, d.dep.id.clone()))
                .map(|(i, _)| i)
        });
        let Some(ti) = target else {
            if deleting {
                self.remove_environment(cluster, env_seq, &env, &deployments, report)
                    .await?;
            } else if let Some(active) = &env.active_deployment {
                tracing::warn!(cluster = %cluster, environment = name, deployment = %active, "the active deployment does not exist");
            }
            return Ok(());
        };
        if !deleting && view.instances().is_empty() {
            // Nothing to start, and a view without instances may just not be loaded yet.
            return Ok(());
        }
        let revision_key = Key::revision(cluster.clone(), name, deployments[ti].dep.revision);
        let Some(revision_record) = self.store.get(&revision_key).await? else {
            tracing::warn!(cluster = %cluster, environment = name, revision = deployments[ti].dep.revision, "the active deployment's revision does not exist");
            return Ok(());
        };
        let revision: Revision = documents::parse(&revision_record.doc)?;
        let ids: Vec<String> = deployments.iter().map(|d| d.dep.id.clone()).collect();
        let intents: Vec<StartIntent> = deployments
            .iter()
            .flat_map(|d| d.dep.intents.iter().cloned())
            .collect();
        let target_dep = deployments[ti].dep.clone();
        let input = PlanInput {
            environment: name,
            status: env.status,
            target: Target::new(&revision, &target_dep),
            deployment_ids: &ids,
            cluster: view,
            intents: &intents,
            failed: &target_dep.failed_instances,
            intent_ttl_ms: self.options.intent_ttl_ms,
        };
        let plan = daemon::plan(&input, now);
        let settled: HashSet<&IntentKey> = plan.settled.iter().collect();
        for (_, at) in &plan.waiting {
            report.due(*at);
        }
        for intent in intents.iter().filter(|i| !settled.contains(&i.key())) {
            report.due(intent.recorded_at_ms.saturating_add(self.options.intent_ttl_ms));
        }
        if !plan.starts.is_empty() || !plan.stops.is_empty() || !plan.verify.is_empty() {
            tracing::debug!(
                cluster = %cluster,
                environment = name,
                deployment = %target_dep.id,
                starts = plan.starts.len(),
                stops = plan.stops.len(),
                verify = plan.verify.len(),
                settled = plan.settled.len(),
                waiting = plan.waiting.len(),
                "plan"
            );
        }

        // 1. Settled intents go: the view guards their instances now.
        if !settled.is_empty() {
            for dep in deployments.iter_mut() {
                if dep.dep.intents.iter().any(|i| settled.contains(&i.key())) {
                    self.update_deployment(cluster, dep, |d| {
                        let before = d.intents.len();
                        d.intents.retain(|i| !settled.contains(&i.key()));
                        d.intents.len() != before
                    })
                    .await?;
                }
            }
        }

        // 2. Expired intents: ask ECS.
        if !plan.verify.is_empty() {
            self.verify(cluster, &plan.verify, &mut deployments, ecs_tasks, now)
                .await?;
            report.verified += plan.verify.len();
        }

        // 3. Stops.
        for stop in &plan.stops {
            self.pacer.wait().await;
            let reason = stop.reason.to_string();
            let result = self
                .control
                .stop_task(cluster.as_str(), &stop.task_arn, &reason)
                .await;
            self.pacer.outcome("StopTask", result.as_ref().map(|_| ()));
            match result {
                Ok(task) => {
                    report.stopped += 1;
                    ::metrics::counter!(m::SCHEDULER_TASKS_STOPPED, "reason" => stop.reason.code())
                        .increment(1);
                    tracing::info!(cluster = %cluster, environment = name, task = %stop.task_arn, reason = stop.reason.code(), "task stopped");
                    self.observe(cluster, std::slice::from_ref(&task)).await;
                }
                Err(err) => {
                    tracing::warn!(cluster = %cluster, environment = name, task = %stop.task_arn, error = %err, "StopTask failed");
                    if matches!(err.kind, EcsErrorKind::Throttled) {
                        break;
                    }
                }
            }
        }

        if deleting {
            let no_intents = deployments.iter().all(|d| d.dep.intents.is_empty());
            if plan.complete && no_intents {
                self.remove_environment(cluster, env_seq, &env, &deployments, report)
                    .await?;
            }
            return Ok(());
        }

        // 4. Starts.
        if !plan.starts.is_empty() && !target_dep.status.is_final() {
            self.start(
                cluster,
                name,
                &revision,
                &mut deployments[ti],
                &plan.starts,
                report,
            )
            .await?;
        }

        // 5. Progress and health.
        let clear = plan.clear_failed.clone();
        self.update_deployment(cluster, &mut deployments[ti], |d| {
            let before = d.failed_instances.len();
            daemon::clear_started(&mut d.failed_instances, &clear);
            let cleared = d.failed_instances.len() != before;
            d.observe(&plan, now) | cleared
        })
        .await?;
        let (health, health_reason) = deployments[ti].dep.health();
        if (env.health, &env.health_reason) != (health, &health_reason) {
            self.update_environment(cluster, env_seq, env.clone(), |e| {
                if (e.health, &e.health_reason) == (health, &health_reason) {
                    return false;
                }
                e.health = health;
                e.health_reason = health_reason.clone();
                e.updated_at = now;
                true
            })
            .await?;
        }
        Ok(())
    }

    /// Starts the target's task on `instances`, a batch at a time, each batch's intents recorded first.
    async fn start(
        &self,
        cluster: &ClusterName,
        environment: &str,
        revision: &Revision,
        dep: &mut Dep,
        instances: &[String],
        report: &mut PassReport,
    ) -> Result<(), PassError> {
        let config = revision.deployment;
        for chunk in instances.chunks(START_TASK_BATCH) {
            let recorded_at = self.now();
            let mut next = dep.dep.clone();
            next.intents.extend(chunk.iter().map(|arn| StartIntent {
                instance_arn: arn.clone(),
                deployment_id: next.id.clone(),
                recorded_at_ms: recorded_at,
                task_arn: None,
            }));
            match self.put_deployment(cluster, dep.seq, &next).await {
                Ok(seq) => {
                    dep.seq = seq;
                    dep.dep = next;
                }
                Err(StoreError::Conflict { .. }) => {
                    ::metrics::counter!(m::SCHEDULER_CONFLICTS, "kind" => "deployment").increment(1);
                    tracing::debug!(cluster = %cluster, environment, deployment = %dep.dep.id, "deployment changed meanwhile; starting next pass");
                    return Ok(());
                }
                Err(err) => return Err(err.into()),
            }
            let request = StartTask {
                cluster: cluster.to_string(),
                task_definition: dep.dep.task_definition.clone(),
                container_instances: chunk.to_vec(),
                started_by: Some(dep.dep.id.clone()),
                group: Some(daemon::group(environment)),
            };
            self.pacer.wait().await;
            // Never retried: StartTask has no idempotency token.
            let result = self.control.start_task(&request).await;
            self.pacer.outcome("StartTask", result.as_ref().map(|_| ()));
            let now = self.now();
            match result {
                Ok(started) => {
                    self.observe(cluster, &started.tasks).await;
                    let arns: HashMap<&str, &str> = started
                        .tasks
                        .iter()
                        .filter_map(|t| Some((t.container_instance_arn.as_deref()?, t.task_arn.as_str())))
                        .collect();
                    let failures: Vec<(&str, &str)> = started
                        .failures
                        .iter()
                        .filter_map(|f| {
                            let arn = f.arn.as_deref()?;
                            chunk.iter().any(|c| c == arn).then_some((arn, f.reason.as_str()))
                        })
                        .collect();
                    let succeeded: Vec<String> = arns.keys().map(|a| (*a).to_owned()).collect();
                    for (arn, reason) in &failures {
                        ::metrics::counter!(m::SCHEDULER_START_FAILURES, "reason" => reason.to_string())
                            .increment(1);
                        tracing::info!(cluster = %cluster, environment, deployment = %dep.dep.id, instance = %arn, reason, "ECS refused the start");
                    }
                    report.started += arns.len();
                    report.start_failures += failures.len();
                    ::metrics::counter!(m::SCHEDULER_TASKS_STARTED).increment(arns.len() as u64);
                    tracing::info!(cluster = %cluster, environment, deployment = %dep.dep.id, started = arns.len(), failed = failures.len(), "StartTask answered");
                    self.update_deployment(cluster, dep, |d| {
                        for intent in d.intents.iter_mut() {
                            if intent.task_arn.is_none()
                                && let Some(task) = arns.get(intent.instance_arn.as_str())
                            {
                                intent.task_arn = Some((*task).to_owned());
                            }
                        }
                        d.intents.retain(|i| {
                            i.task_arn.is_some() || !failures.iter().any(|(arn, _)| *arn == i.instance_arn)
                        });
                        for (arn, reason) in &failures {
                            daemon::record_start_failure(&mut d.failed_instances, arn, reason, now, &config);
                        }
                        daemon::clear_started(&mut d.failed_instances, &succeeded);
                        true
                    })
                    .await?;
                }
                Err(err) => {
                    tracing::warn!(cluster = %cluster, environment, deployment = %dep.dep.id, instances = chunk.len(), error = %err, "StartTask failed");
                    let throttled = matches!(err.kind, EcsErrorKind::Throttled);
                    // Refused outright: nothing was started. Otherwise it may have been, and the
                    // intents stay until the instances are verified.
                    let refused = matches!(
                        err.kind,
                        EcsErrorKind::Throttled
                            | EcsErrorKind::Rejected { .. }
                            | EcsErrorKind::ClusterNotFound
                    );
                    let reason = match &err.kind {
                        EcsErrorKind::Throttled => "THROTTLED".to_owned(),
                        EcsErrorKind::ClusterNotFound => "ClusterNotFoundException".to_owned(),
                        EcsErrorKind::Rejected { code, .. } => code.clone(),
                        EcsErrorKind::Invalid(_) | EcsErrorKind::Other(_) => "ERROR".to_owned(),
                    };
                    if !throttled {
                        report.start_failures += chunk.len();
                        ::metrics::counter!(m::SCHEDULER_START_FAILURES, "reason" => "error")
                            .increment(chunk.len() as u64);
                    }
                    self.update_deployment(cluster, dep, |d| {
                        if refused {
                            d.intents
                                .retain(|i| i.task_arn.is_some() || !chunk.contains(&i.instance_arn));
                        }
                        if !throttled {
                            for arn in chunk {
                                daemon::record_start_failure(
                                    &mut d.failed_instances,
                                    arn,
                                    &reason,
                                    now,
                                    &config,
                                );
                            }
                        }
                        true
                    })
                    .await?;
                    if throttled {
                        // The rest waits for the next pass, behind the pacer's back-off.
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Asks ECS what runs on instances whose intents expired, writes it to the store, and drops the
    /// expired intents there.
    async fn verify(
        &self,
        cluster: &ClusterName,
        instances: &[String],
        deployments: &mut [Dep],
        ecs_tasks: &mut Option<Vec<Task>>,
        now: u64,
    ) -> Result<(), PassError> {
        let ttl = self.options.intent_ttl_ms;
        let wanted: HashSet<&str> = instances.iter().map(String::as_str).collect();
        let expired = |i: &StartIntent| {
            wanted.contains(i.instance_arn.as_str()) && now >= i.recorded_at_ms.saturating_add(ttl)
        };
        let mut known: Vec<String> = Vec::new();
        let mut unknown: HashSet<String> = HashSet::new();
        for intent in deployments
            .iter()
            .flat_map(|d| &d.dep.intents)
            .filter(|i| expired(i))
        {
            match &intent.task_arn {
                Some(arn) => known.push(arn.clone()),
                None => drop(unknown.insert(intent.instance_arn.clone())),
            }
        }
        let mut found: Vec<Task> = Vec::new();
        if !known.is_empty() {
            found.extend(self.describe(cluster, &known).await?);
        }
        if !unknown.is_empty() {
            if ecs_tasks.is_none() {
                let mut arns = Vec::new();
                let mut token: Option<String> = None;
                loop {
                    self.pacer.wait().await;
                    let page = self
                        .reader
                        .list_page(
                            cluster.as_str(),
                            Listing::Tasks(DesiredStatus::Running),
                            token.as_deref(),
                        )
                        .await;
                    self.pacer.outcome("ListTasks", page.as_ref().map(|_| ()));
                    let page = page?;
                    arns.extend(page.arns);
                    match page.next_token {
                        Some(next) => token = Some(next),
                        None => break,
                    }
                }
                *ecs_tasks = Some(self.describe(cluster, &arns).await?);
            }
            let on_instances = ecs_tasks.iter().flatten().filter(|t| {
                t.container_instance_arn
                    .as_deref()
                    .is_some_and(|arn| unknown.contains(arn))
            });
            found.extend(on_instances.cloned());
        }
        tracing::info!(cluster = %cluster, instances = instances.len(), tasks = found.len(), "verified instances with expired start intents");
        ::metrics::counter!(m::SCHEDULER_VERIFICATIONS).increment(instances.len() as u64);
        if !found.is_empty() {
            let writes = found
                .iter()
                .map(|t| Write::Observe(documents::task(cluster.clone(), t)))
                .collect();
            self.store.apply(writes).await?;
        }
        for dep in deployments.iter_mut() {
            if dep.dep.intents.iter().any(&expired) {
                self.update_deployment(cluster, dep, |d| {
                    let before = d.intents.len();
                    d.intents.retain(|i| !expired(i));
                    d.intents.len() != before
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn describe(&self, cluster: &ClusterName, arns: &[String]) -> Result<Vec<Task>, EcsError> {
        let mut described = Vec::with_capacity(arns.len());
        for chunk in arns.chunks(DESCRIBE_BATCH) {
            self.pacer.wait().await;
            let result = self.reader.describe_tasks(cluster.as_str(), chunk).await;
            self.pacer.outcome("DescribeTasks", result.as_ref().map(|_| ()));
            described.extend(result?);
        }
        Ok(described)
    }

    /// Writes tasks as ECS just described them (the version rule applies).
    async fn observe(&self, cluster: &ClusterName, tasks: &[Task]) {
        if tasks.is_empty() {
            return;
        }
        let writes = tasks
            .iter()
            .map(|t| Write::Observe(documents::task(cluster.clone(), t)))
            .collect();
        if let Err(err) = self.store.apply(writes).await {
            tracing::warn!(cluster = %cluster, error = %err, "could not write tasks ECS described");
        }
    }

    async fn put_deployment(
        &self,
        cluster: &ClusterName,
        seq: u64,
        dep: &Deployment,
    ) -> Result<u64, StoreError> {
        let doc = documents::deployment(cluster.clone(), dep);
        let outcomes = self
            .store
            .apply(vec![Write::Put {
                doc,
                expect: Expect::Seq(seq),
            }])
            .await?;
        Ok(written_seq(&outcomes).unwrap_or(seq))
    }

    /// Applies `change` to the deployment and writes it by compare-and-swap; on a conflict, re-reads
    /// and applies it again (a few times). `change` returns whether it changed anything.
    async fn update_deployment(
        &self,
        cluster: &ClusterName,
        dep: &mut Dep,
        mut change: impl FnMut(&mut Deployment) -> bool,
    ) -> Result<bool, PassError> {
        let key = Key::deployment(cluster.clone(), dep.dep.id.clone());
        for _ in 0..5 {
            let mut next = dep.dep.clone();
            if !change(&mut next) {
                return Ok(false);
            }
            match self.put_deployment(cluster, dep.seq, &next).await {
                Ok(seq) => {
                    dep.seq = seq;
                    dep.dep = next;
                    return Ok(true);
                }
                Err(StoreError::Conflict { .. }) => {
                    ::metrics::counter!(m::SCHEDULER_CONFLICTS, "kind" => "deployment").increment(1);
                    let Some(record) = self.store.get(&key).await? else {
                        return Ok(false);
                    };
                    dep.seq = record.seq;
                    dep.dep = documents::parse(&record.doc)?;
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(StoreError::Conflict {
            key,
            expected: Expect::Seq(dep.seq),
            found: None,
        }
        .into())
    }

    async fn update_environment(
        &self,
        cluster: &ClusterName,
        mut seq: u64,
        mut env: Environment,
        mut change: impl FnMut(&mut Environment) -> bool,
    ) -> Result<bool, PassError> {
        let key = Key::environment(cluster.clone(), env.name.clone());
        for _ in 0..5 {
            let mut next = env.clone();
            if !change(&mut next) {
                return Ok(false);
            }
            let write = Write::Put {
                doc: documents::environment(&next),
                expect: Expect::Seq(seq),
            };
            match self.store.apply(vec![write]).await {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { .. }) => {
                    ::metrics::counter!(m::SCHEDULER_CONFLICTS, "kind" => "environment").increment(1);
                    let Some(record) = self.store.get(&key).await? else {
                        return Ok(false);
                    };
                    seq = record.seq;
                    env = documents::parse(&record.doc)?;
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(false)
    }

    /// Removes a deleted environment with its revisions and deployments, in one batch.
    async fn remove_environment(
        &self,
        cluster: &ClusterName,
        env_seq: u64,
        env: &Environment,
        deployments: &[Dep],
        report: &mut PassReport,
    ) -> Result<(), PassError> {
        let filter = Filter {
            cluster: Some(cluster.clone()),
            status: None,
            started_by: Some(env.name.clone()),
        };
        let revisions = self.list_all(Kind::Revision, filter).await?;
        let mut writes = vec![Write::Remove {
            key: Key::environment(cluster.clone(), env.name.clone()),
            expect: env_seq,
        }];
        writes.extend(revisions.into_iter().map(|r| Write::Remove {
            key: r.doc.key,
            expect: r.seq,
        }));
        writes.extend(deployments.iter().map(|d| Write::Remove {
            key: Key::deployment(cluster.clone(), d.dep.id.clone()),
            expect: d.seq,
        }));
        match self.store.apply(writes).await {
            Ok(_) => {
                report.removed += 1;
                ::metrics::counter!(m::SCHEDULER_ENVIRONMENTS_REMOVED).increment(1);
                tracing::info!(cluster = %cluster, environment = %env.name, "environment removed");
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => {
                ::metrics::counter!(m::SCHEDULER_CONFLICTS, "kind" => "environment").increment(1);
                Ok(())
            }
            Err(err) => Err(err.into()),
        }
    }
}

fn written_seq(outcomes: &[blox_store::Outcome]) -> Option<u64> {
    outcomes.iter().find_map(|o| match o {
        blox_store::Outcome::Written { seq } => Some(*seq),
        _ => None,
    })
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
