//! The deployment state machine and the commands on environments: each takes what is stored of an
//! environment (a [`Snapshot`]), the request, the time and fresh ids, and returns the documents to
//! write ([`Changes`]) or why not ([`CommandError`]). Both HTTP APIs and the executor call these; none
//! of them holds a rule of its own. The caller writes the changes in one compare-and-swap batch
//! against the versions it read, and calls again on a conflict.

use super::config::{ConfigPatch, DeploymentConfiguration, DeploymentMethod};
use super::docs::{
    Deployment, DeploymentStatus, Environment, EnvironmentStatus, InstanceFailure, InstanceGroup,
    InstanceSelection, Revision, StartIntent,
};
use super::plan::Plan;
use crate::arn::ClusterName;
use crate::entity::FieldError;

/// What is stored of one environment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub environment: Option<Environment>,
    pub revisions: Vec<Revision>,
    pub deployments: Vec<Deployment>,
    pub intents: Vec<StartIntent>,
    pub failures: Vec<InstanceFailure>,
}

/// A document to write or remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Doc {
    Environment(Environment),
    Revision(Revision),
    Deployment(Deployment),
    Intent(StartIntent),
    Failure(InstanceFailure),
}

/// The documents a command writes (inserted or replaced) and removes, to be applied in one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub put: Vec<Doc>,
    pub remove: Vec<Doc>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.remove.is_empty()
    }
}

/// Why a command was refused. The HTTP layers map these to statuses (and v0.3's messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("{resource} {id} not found")]
    NotFound { resource: Resource, id: String },
    /// An environment of that name exists (in any cluster).
    #[error("environment {name} already exists")]
    Exists { name: String },
    /// The request is wrong whatever the state: a field and what is wrong with it.
    #[error("{field}: {message}")]
    Invalid {
        field: String,
        code: &'static str,
        message: String,
    },
    /// The request does not fit the current state.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A v0.3 deployment quoted a token other than the latest revision's.
    #[error("Token '{token}' is outdated and does not match the environment token '{current}'")]
    StaleToken { token: String, current: String },
    /// A v0.3 deployment quoted a token already deployed.
    #[error("Deployment with token '{token}' already exists")]
    TokenUsed { token: String, deployment: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Environment,
    Revision,
    Deployment,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Environment => "environment",
            Resource::Revision => "revision",
            Resource::Deployment => "deployment",
        }
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<FieldError> for CommandError {
    fn from(e: FieldError) -> CommandError {
        CommandError::Invalid {
            field: e.field.to_owned(),
            code: "InvalidParameter",
            message: e.reason,
        }
    }
}

fn not_found(resource: Resource, id: impl ToString) -> CommandError {
    CommandError::NotFound {
        resource,
        id: id.to_string(),
    }
}

fn conflict(code: &'static str, message: String) -> CommandError {
    CommandError::Conflict { code, message }
}

/// A task definition as ECS resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDefinitionRef {
    pub arn: String,
    pub health_checks: bool,
}

/// `create`'s request, resolved against ECS (cluster and task definition ARNs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateEnvironment {
    pub name: String,
    pub cluster: ClusterName,
    pub cluster_arn: String,
    pub task_definition: TaskDefinitionRef,
    pub instance_group: InstanceSelection,
    pub method: Option<DeploymentMethod>,
    pub configuration: ConfigPatch,
}

/// `update`'s request: each field present replaces the latest revision's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateEnvironment {
    pub task_definition: Option<TaskDefinitionRef>,
    /// Replaces the whole group (attributes and query).
    pub instance_group: Option<InstanceSelection>,
    pub method: Option<DeploymentMethod>,
    pub configuration: ConfigPatch,
    /// The revision the caller based the update on: refused if it is not the latest.
    pub base_revision: Option<u64>,
}

/// Which revision a deployment deploys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeployTarget {
    /// v0.3: the latest revision, quoting its token.
    Token(String),
    /// v1.0: a revision by number; an older one than the active deployment's needs `rollback`.
    Revision { number: u64, rollback: bool },
}

/// Fresh values a command may need (randomness is an argument).
#[derive(Debug, Clone, Copy)]
pub struct Fresh<'a> {
    pub now_ms: u64,
    /// A new deployment's id (a UUID: ECS's `startedBy` takes at most 36 characters).
    pub deployment_id: &'a str,
    /// A new revision's v0.3 token.
    pub token: &'a str,
}

impl Snapshot {
    fn environment(&self) -> Result<&Environment, CommandError> {
        self.environment
            .as_ref()
            .ok_or_else(|| not_found(Resource::Environment, "?"))
    }

    pub fn revision(&self, number: u64) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.number == number)
    }

    pub fn deployment(&self, id: &str) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.id == id)
    }

    /// The ids of every deployment: a task is the environment's when started by one of them.
    pub fn deployment_ids(&self) -> Vec<&str> {
        self.deployments.iter().map(|d| d.id.as_str()).collect()
    }

    /// The task definitions of the revisions that have container health checks.
    pub fn health_checked(&self) -> Vec<&str> {
        self.revisions
            .iter()
            .filter(|r| r.health_checks)
            .map(|r| r.task_definition.as_str())
            .collect()
    }

    /// Whether planning the active deployment reads every task's group (`Revision::reads_task_groups`).
    pub fn reads_task_groups(&self) -> bool {
        self.active()
            .and_then(|d| self.revision(d.revision))
            .is_some_and(Revision::reads_task_groups)
    }

    pub fn latest_revision(&self) -> Option<&Revision> {
        let env = self.environment.as_ref()?;
        self.revision(env.latest_revision)
    }

    /// The environment's newest deployment, which the scheduler acts on.
    pub fn active(&self) -> Option<&Deployment> {
        let id = self.environment.as_ref()?.active_deployment.as_deref()?;
        self.deployment(id)
    }

    fn require_active_environment(&self) -> Result<&Environment, CommandError> {
        let env = self.environment()?;
        if env.status.is_deleting() {
            return Err(conflict(
                "EnvironmentDeleting",
                format!("environment {} is being deleted", env.name),
            ));
        }
        Ok(env)
    }

    /// Deployments other than `except` that completed (and, unless `rolled_back`, were not rolled
    /// back from since), the most recently completed first.
    fn completed(&self, except: &str, rolled_back: bool) -> Vec<&Deployment> {
        let mut completed: Vec<(u64, &Deployment)> = self
            .deployments
            .iter()
            .filter(|d| d.id != except && (rolled_back || d.status != DeploymentStatus::RolledBack))
            .filter_map(|d| {
                let completed = d
                    .history
                    .iter()
                    .filter(|t| t.status == DeploymentStatus::Completed)
                    .map(|t| t.at)
                    .max()?;
                Some((completed, d))
            })
            .collect();
        completed.sort_by(|(a, x), (b, y)| (b, &y.created_at, &y.id).cmp(&(a, &x.created_at, &x.id)));
        completed.into_iter().map(|(_, d)| d).collect()
    }
}

/// Creates an environment with its first revision. `existing` is an environment of that name in any
/// cluster (names are unique: the v0.3 paths name no cluster).
pub fn create_environment(
    existing: Option<&Environment>,
    request: CreateEnvironment,
    fresh: Fresh<'_>,
) -> Result<Changes, CommandError> {
    super::validate_environment_name(&request.name)?;
    if existing.is_some() {
        return Err(CommandError::Exists { name: request.name });
    }
    let configuration = request.configuration.apply(DeploymentConfiguration::default())?;
    let environment = Environment {
        name: request.name.clone(),
        cluster: request.cluster,
        cluster_arn: request.cluster_arn.clone(),
        latest_revision: 1,
        active_deployment: None,
        status: EnvironmentStatus::Active,
        frozen: false,
        created_at: fresh.now_ms,
        updated_at: fresh.now_ms,
    };
    let revision = Revision {
        environment: request.name,
        number: 1,
        token: fresh.token.to_owned(),
        task_definition: request.task_definition.arn,
        health_checks: request.task_definition.health_checks,
        instance_group: InstanceGroup {
            cluster_arn: request.cluster_arn,
            attributes: request.instance_group.attributes,
            query: request.instance_group.query,
        },
        deployment_method: request.method.unwrap_or_default(),
        deployment_configuration: configuration,
        created_at: fresh.now_ms,
    };
    Ok(Changes {
        put: vec![Doc::Environment(environment), Doc::Revision(revision)],
        remove: Vec::new(),
    })
}

/// A new revision: the latest with the request's fields. Nothing is deployed.
pub fn update_environment(
    snapshot: &Snapshot,
    request: UpdateEnvironment,
    fresh: Fresh<'_>,
) -> Result<Changes, CommandError> {
    let env = snapshot.require_active_environment()?;
    if let Some(base) = request.base_revision
        && base != env.latest_revision
    {
        return Err(conflict(
            "StaleRevision",
            format!(
                "baseRevisionId {base} is not the latest revision of environment {} ({}): read it again",
                env.name, env.latest_revision
            ),
        ));
    }
    if request.task_definition.is_none()
        && request.instance_group.is_none()
        && request.method.is_none()
        && request.configuration.is_empty()
    {
        return Err(CommandError::Invalid {
            field: "body".to_owned(),
            code: "NothingToUpdate",
            message: "give at least one of taskDefinition, instanceGroup, deploymentMethod, deploymentConfiguration"
                .to_owned(),
        });
    }
    let latest = snapshot.latest_revision().ok_or_else(|| {
        conflict(
            "RevisionMissing",
            format!(
                "revision {} of environment {} is missing",
                env.latest_revision, env.name
            ),
        )
    })?;
    let mut revision = latest.clone();
    revision.number = latest.number + 1;
    revision.token = fresh.token.to_owned();
    revision.created_at = fresh.now_ms;
    if let Some(td) = request.task_definition {
        revision.task_definition = td.arn;
        revision.health_checks = td.health_checks;
    }
    if let Some(selection) = request.instance_group {
        revision.instance_group.attributes = selection.attributes;
        revision.instance_group.query = selection.query;
    }
    if let Some(method) = request.method {
        revision.deployment_method = method;
    }
    revision.deployment_configuration = request
        .configuration
        .apply(latest.deployment_configuration.clone())?;
    let mut env = env.clone();
    env.latest_revision = revision.number;
    env.updated_at = fresh.now_ms;
    Ok(Changes {
        put: vec![Doc::Environment(env), Doc::Revision(revision)],
        remove: Vec::new(),
    })
}

/// Starts a deployment. It becomes the environment's active one; one still in progress is
/// superseded (or, for a rollback, rolled back), and the new one continues from the fleet as it is.
pub fn deploy(snapshot: &Snapshot, target: DeployTarget, fresh: Fresh<'_>) -> Result<Changes, CommandError> {
    let env = snapshot.require_active_environment()?;
    let active = snapshot.active();
    let (revision, rollback) = match &target {
        DeployTarget::Token(token) => {
            let latest = snapshot
                .latest_revision()
                .ok_or_else(|| not_found(Resource::Revision, env.latest_revision))?;
            if !latest.token.eq_ignore_ascii_case(token) {
                return Err(CommandError::StaleToken {
                    token: token.clone(),
                    current: latest.token.clone(),
                });
            }
            if let Some(used) = snapshot.deployments.iter().find(|d| d.revision == latest.number) {
                return Err(CommandError::TokenUsed {
                    token: token.clone(),
                    deployment: used.id.clone(),
                });
            }
            (latest, false)
        }
        DeployTarget::Revision { number, rollback } => {
            let revision = snapshot
                .revision(*number)
                .ok_or_else(|| not_found(Resource::Revision, number))?;
            if let Some(active) = active
                && *number < active.revision
                && !rollback
            {
                return Err(CommandError::Invalid {
                    field: "revisionId".to_owned(),
                    code: "RollbackRequired",
                    message: format!(
                        "revision {number} is older than the active revision {}: pass rollback=true to roll back",
                        active.revision
                    ),
                });
            }
            (revision, *rollback)
        }
    };
    let reason = if rollback {
        match active {
            Some(a) => format!("rollback of deployment {} to revision {}", a.id, revision.number),
            None => format!("rollback to revision {}", revision.number),
        }
    } else {
        format!("deployment of revision {}", revision.number)
    };
    Ok(start_deployment(snapshot, env, revision, rollback, reason, fresh))
}

/// Rolls back to `revision`, or by default to the revision of the last deployment that completed
/// before the active one.
pub fn rollback(
    snapshot: &Snapshot,
    revision: Option<u64>,
    fresh: Fresh<'_>,
) -> Result<Changes, CommandError> {
    let env = snapshot.require_active_environment()?;
    let Some(active) = snapshot.active() else {
        return Err(conflict(
            "NothingToRollBack",
            format!("environment {} has no deployment to roll back", env.name),
        ));
    };
    let number = match revision {
        Some(number) => number,
        // The last completed one that deployed another revision (rolling back to the active
        // revision itself would change nothing).
        None => match snapshot
            .completed(&active.id, true)
            .into_iter()
            .find(|d| d.revision != active.revision)
        {
            Some(d) => d.revision,
            None => {
                return Err(conflict(
                    "NoRollbackTarget",
                    format!(
                        "environment {} has no deployment that completed before {} to roll back to; name a revision",
                        env.name, active.id
                    ),
                ));
            }
        },
    };
    let revision = snapshot
        .revision(number)
        .ok_or_else(|| not_found(Resource::Revision, number))?;
    let reason = format!(
        "rollback of deployment {} to revision {}",
        active.id, revision.number
    );
    Ok(start_deployment(snapshot, env, revision, true, reason, fresh))
}

fn start_deployment(
    snapshot: &Snapshot,
    env: &Environment,
    revision: &Revision,
    rollback: bool,
    reason: String,
    fresh: Fresh<'_>,
) -> Changes {
    let active = snapshot.active();
    let mut deployment = Deployment {
        previous_revision: active.map(|a| a.revision),
        rollback,
        rollback_of: if rollback {
            active.map(|a| a.id.clone())
        } else {
            None
        },
        ..Deployment::new(fresh.deployment_id, revision, fresh.now_ms)
    };
    deployment.transition(DeploymentStatus::Pending, reason, fresh.now_ms);
    let mut changes = Changes::default();
    if let Some(previous) = active {
        let mut previous = previous.clone();
        let replaced = if rollback {
            previous.rolled_back_by = Some(deployment.id.clone());
            // A failed deployment stays failed: the failure is what a user needs to see.
            matches!(
                previous.status,
                DeploymentStatus::Pending
                    | DeploymentStatus::Running
                    | DeploymentStatus::AwaitingPromotion
                    | DeploymentStatus::Completed
            )
            .then(|| {
                (
                    DeploymentStatus::RolledBack,
                    format!("rolled back by deployment {}", deployment.id),
                )
            })
        } else {
            previous.status.in_progress().then(|| {
                previous.superseded_by = Some(deployment.id.clone());
                (
                    DeploymentStatus::Superseded,
                    format!("superseded by deployment {}", deployment.id),
                )
            })
        };
        let changed = replaced.is_some() || previous.rolled_back_by.is_some();
        if let Some((status, why)) = replaced {
            previous.transition(status, why, fresh.now_ms);
        }
        if changed {
            changes.put.push(Doc::Deployment(previous));
        }
    }
    let mut env = env.clone();
    env.active_deployment = Some(deployment.id.clone());
    env.updated_at = fresh.now_ms;
    changes.put.push(Doc::Deployment(deployment));
    changes.put.push(Doc::Environment(env));
    changes
}

/// Stops a pending or running deployment: progress halts, tasks are left as they are.
pub fn stop(snapshot: &Snapshot, deployment_id: &str, now_ms: u64) -> Result<Changes, CommandError> {
    let env = snapshot.environment()?;
    let deployment = snapshot
        .deployment(deployment_id)
        .filter(|d| d.environment == env.name)
        .ok_or_else(|| not_found(Resource::Deployment, deployment_id))?;
    if !deployment.status.in_progress() {
        return Err(conflict(
            "DeploymentFinished",
            format!(
                "deployment {deployment_id} is {}: only a deployment in progress (pending, running or awaiting promotion) can be stopped",
                deployment.status.name()
            ),
        ));
    }
    let mut deployment = deployment.clone();
    deployment.transition(DeploymentStatus::Stopped, "stopped by a user", now_ms);
    Ok(Changes {
        put: vec![Doc::Deployment(deployment)],
        remove: Vec::new(),
    })
}

/// Promotes a deployment's canary: the rest of the fleet is rolled out. Allowed while the canary
/// holds the fleet back, awaiting promotion or before (to cut the wait short).
pub fn promote(snapshot: &Snapshot, deployment_id: &str, now_ms: u64) -> Result<Changes, CommandError> {
    let env = snapshot.require_active_environment()?;
    let deployment = snapshot
        .deployment(deployment_id)
        .filter(|d| d.environment == env.name)
        .ok_or_else(|| not_found(Resource::Deployment, deployment_id))?;
    let revision = snapshot
        .revision(deployment.revision)
        .ok_or_else(|| not_found(Resource::Revision, deployment.revision))?;
    let refuse = |why: String| Err(conflict("NotAwaitingPromotion", why));
    if !deployment.status.in_progress() {
        return refuse(format!(
            "deployment {deployment_id} is {}: only a deployment in progress can be promoted",
            deployment.status.name()
        ));
    }
    if !deployment.in_canary(revision) {
        return refuse(match deployment.promoted_at {
            Some(_) => format!("deployment {deployment_id} was promoted already"),
            None => format!("deployment {deployment_id} has no canary to promote"),
        });
    }
    let mut deployment = deployment.clone();
    deployment.promoted_at = Some(now_ms);
    deployment.transition(DeploymentStatus::Running, "promoted by a user", now_ms);
    Ok(Changes {
        put: vec![Doc::Deployment(deployment)],
        remove: Vec::new(),
    })
}

/// The user commands the environment takes now, by name (`deploy`, `thaw` or `freeze`, `stop`,
/// `promote`, `rollback`): each tried on the snapshot, nothing written. What a page offers.
pub fn available(snapshot: &Snapshot, now_ms: u64) -> Vec<&'static str> {
    let Ok(env) = snapshot.require_active_environment() else {
        return Vec::new();
    };
    let mut commands = vec!["deploy", if env.frozen { "thaw" } else { "freeze" }];
    if let Some(active) = snapshot.active() {
        if stop(snapshot, &active.id, now_ms).is_ok() {
            commands.push("stop");
        }
        if promote(snapshot, &active.id, now_ms).is_ok() {
            commands.push("promote");
        }
    }
    let fresh = Fresh {
        now_ms,
        // Never written: the rollback is only tried.
        deployment_id: "",
        token: "",
    };
    if rollback(snapshot, None, fresh).is_ok() {
        commands.push("rollback");
    }
    commands
}

/// Freezes (`frozen: true`) or thaws an environment. Idempotent.
pub fn freeze(snapshot: &Snapshot, frozen: bool, now_ms: u64) -> Result<Changes, CommandError> {
    let env = snapshot.require_active_environment()?;
    if env.frozen == frozen {
        return Ok(Changes::default());
    }
    let mut env = env.clone();
    env.frozen = frozen;
    env.updated_at = now_ms;
    Ok(Changes {
        put: vec![Doc::Environment(env)],
        remove: Vec::new(),
    })
}

/// Deletes an environment. Without `terminate_tasks` it is gone at once, with everything it owns
/// (its tasks are left running, v0.3's behaviour); with it, it is `deleting` until the executor has
/// stopped its tasks and settled its starts in flight ([`finish_delete`]).
pub fn delete(snapshot: &Snapshot, terminate_tasks: bool, now_ms: u64) -> Result<Changes, CommandError> {
    let env = snapshot.environment()?;
    if !terminate_tasks {
        return Ok(finish_delete(snapshot));
    }
    if env.status
        == (EnvironmentStatus::Deleting {
            terminate_tasks: true,
        })
    {
        return Ok(Changes::default());
    }
    let mut env = env.clone();
    env.status = EnvironmentStatus::Deleting {
        terminate_tasks: true,
    };
    // Asking for the tasks to be stopped overrides a freeze (a deleting environment cannot be
    // thawed).
    env.frozen = false;
    env.updated_at = now_ms;
    Ok(Changes {
        put: vec![Doc::Environment(env)],
        remove: Vec::new(),
    })
}

/// Removes the environment and everything it owns.
pub fn finish_delete(snapshot: &Snapshot) -> Changes {
    let mut remove = Vec::new();
    remove.extend(snapshot.environment.iter().cloned().map(Doc::Environment));
    remove.extend(snapshot.revisions.iter().cloned().map(Doc::Revision));
    remove.extend(snapshot.deployments.iter().cloned().map(Doc::Deployment));
    remove.extend(snapshot.intents.iter().cloned().map(Doc::Intent));
    remove.extend(snapshot.failures.iter().cloned().map(Doc::Failure));
    Changes {
        put: Vec::new(),
        remove,
    }
}

/// The executor's memory of a deployment's progress, to tell a stalled rollout: the most healthy
/// instances seen and since when. Kept in memory only: after a restart the deadline starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub best_healthy: u64,
    pub since_ms: u64,
}

impl Progress {
    pub fn new(now_ms: u64) -> Progress {
        Progress {
            best_healthy: 0,
            since_ms: now_ms,
        }
    }
}

/// What the executor observed besides the plan.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observed<'a> {
    /// One of the deployment's CloudWatch alarms in state ALARM, by name.
    pub alarm: Option<&'a str>,
}

/// What a plan means for the active deployment: its next status, if it changes, and (when it fails
/// with automatic rollback) the rollback deployment, whose id is `fresh.deployment_id`. `progress` is
/// updated in place.
pub fn advance(
    snapshot: &Snapshot,
    plan: &Plan,
    observed: Observed<'_>,
    progress: &mut Progress,
    fresh: Fresh<'_>,
) -> Changes {
    let now = fresh.now_ms;
    let (Some(env), Some(active)) = (snapshot.environment.as_ref(), snapshot.active()) else {
        return Changes::default();
    };
    if env.frozen || env.status.is_deleting() || !active.status.in_progress() {
        // The clock of the deadline does not run while nothing may act.
        *progress = Progress {
            best_healthy: plan.counts.healthy,
            since_ms: now,
        };
        return Changes::default();
    }
    let Some(revision) = snapshot.revision(active.revision) else {
        return Changes::default();
    };
    let config = &revision.deployment_configuration;
    let mut deployment = active.clone();
    deployment.counts = plan.counts;
    deployment.failed_attempts = plan.failed_attempts;
    if deployment.status == DeploymentStatus::Pending {
        deployment.transition(DeploymentStatus::Running, "acting on the instances", now);
        *progress = Progress {
            best_healthy: plan.counts.healthy,
            since_ms: now,
        };
    }
    if let Some(canary) = &plan.canary
        && !canary.recorded
    {
        deployment.canary_instances = Some(canary.instances.clone());
    }
    let awaiting = deployment.status == DeploymentStatus::AwaitingPromotion;
    if let Some(canary) = plan.canary.as_ref().filter(|c| c.complete && !awaiting) {
        let held = format!(
            "the canary ({} instances) is healthy on revision {}",
            canary.instances.len(),
            revision.number
        );
        if config.canary.as_ref().is_some_and(|c| c.auto_promote) {
            deployment.promoted_at = Some(now);
            deployment.transition(
                DeploymentStatus::Running,
                format!("{held}: promoted by itself (autoPromote)"),
                now,
            );
        } else {
            deployment.transition(
                DeploymentStatus::AwaitingPromotion,
                format!("{held}: waiting for promotion"),
                now,
            );
        }
    }
    let threshold = config.failure_threshold(plan.fleet.eligible);
    let failure = if let Some(alarm) = observed.alarm.filter(|_| active.watches_alarms(revision)) {
        Some(format!("alarm {alarm} is in ALARM"))
    } else if plan.complete {
        deployment.transition(
            DeploymentStatus::Completed,
            format!(
                "{} of {} eligible instances run a healthy task of revision {}",
                plan.counts.healthy, plan.counts.desired, revision.number
            ),
            now,
        );
        None
    } else if plan.failed_attempts >= threshold {
        Some(format!(
            "{} failed start attempts reached the failure threshold of {threshold}{}",
            plan.failed_attempts,
            plan.failure_example
                .as_deref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default()
        ))
    } else if plan.counts.healthy > progress.best_healthy {
        *progress = Progress {
            best_healthy: plan.counts.healthy,
            since_ms: now,
        };
        None
    } else if deployment.status == DeploymentStatus::AwaitingPromotion {
        // Waiting on a person is not a stalled rollout.
        *progress = Progress {
            best_healthy: plan.counts.healthy,
            since_ms: now,
        };
        None
    } else if now.saturating_sub(progress.since_ms) >= config.progress_deadline_seconds.saturating_mul(1_000)
    {
        Some(format!(
            "no progress for {} s: {} of {} eligible instances healthy on revision {}",
            config.progress_deadline_seconds, plan.counts.healthy, plan.counts.desired, revision.number
        ))
    } else {
        None
    };
    let mut changes = Changes::default();
    let Some(reason) = failure else {
        if deployment.history.len() != active.history.len()
            || deployment.canary_instances != active.canary_instances
        {
            changes.put.push(Doc::Deployment(deployment));
        }
        return changes;
    };
    deployment.transition(DeploymentStatus::Failed, reason, now);
    let target = (config.auto_rollback && !deployment.rollback)
        .then(|| {
            // The last completed revision that runs something else (rolling back to the same task
            // definition would change nothing), and that a user did not roll back from.
            snapshot
                .completed(&deployment.id, false)
                .into_iter()
                .find(|d| d.task_definition != deployment.task_definition)
        })
        .flatten()
        .and_then(|d| snapshot.revision(d.revision));
    let Some(target) = target else {
        changes.put.push(Doc::Deployment(deployment));
        return changes;
    };
    // The failed deployment stays failed and records its rollback.
    deployment.rolled_back_by = Some(fresh.deployment_id.to_owned());
    let mut rollback = Deployment {
        previous_revision: Some(deployment.revision),
        rollback: true,
        rollback_of: Some(deployment.id.clone()),
        ..Deployment::new(fresh.deployment_id, target, now)
    };
    rollback.transition(
        DeploymentStatus::Pending,
        format!(
            "automatic rollback of failed deployment {} to revision {}",
            deployment.id, target.number
        ),
        now,
    );
    let mut env = env.clone();
    env.active_deployment = Some(rollback.id.clone());
    env.updated_at = now;
    changes.put.push(Doc::Deployment(deployment));
    changes.put.push(Doc::Deployment(rollback));
    changes.put.push(Doc::Environment(env));
    *progress = Progress::new(now);
    changes
}
