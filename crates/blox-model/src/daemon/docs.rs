//! The scheduler's documents, as stored. Each is small and has one writer at a time (compare-and-swap
//! on its last change): the environment and its immutable revisions, a deployment (what a user reads:
//! status, revision, counts and history, written on transitions only), and per instance and
//! deployment a start intent (before StartTask, gone once ECS answered or was asked) and a failure
//! record (failed start attempts, with ECS's reason and the back-off).

use serde::{Deserialize, Serialize};

use super::config::{DeploymentConfiguration, DeploymentMethod};
use super::time::{rfc3339, rfc3339_opt};
use crate::arn::ClusterName;
use crate::cql::{Query, Subject};
use crate::entity::Attribute;

/// A daemon environment: what the scheduler keeps running on an instance group, through revisions
/// and deployments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Environment {
    pub name: String,
    pub cluster: ClusterName,
    #[serde(rename = "clusterARN", alias = "clusterArn")]
    pub cluster_arn: String,
    /// The number of the newest revision; revisions are numbered from 1.
    pub latest_revision: u64,
    /// The newest deployment: the one the scheduler acts on (if its status lets it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deployment: Option<String>,
    #[serde(flatten)]
    pub status: EnvironmentStatus,
    /// A frozen environment takes deployments but acts on nothing until thawed.
    #[serde(default)]
    pub frozen: bool,
    #[serde(with = "rfc3339")]
    pub created_at: u64,
    #[serde(with = "rfc3339")]
    pub updated_at: u64,
}

/// Serialised flat into the environment: `"status": "active"`, or `"status": "deleting"` with
/// `"terminateTasks": true` (a deletion that leaves the tasks running is immediate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum EnvironmentStatus {
    Active,
    /// Its tasks are being stopped; it is removed once none is left and no start is in flight.
    Deleting {
        #[serde(rename = "terminateTasks", default = "always")]
        terminate_tasks: bool,
    },
}

fn always() -> bool {
    true
}

impl EnvironmentStatus {
    pub fn is_deleting(self) -> bool {
        matches!(self, EnvironmentStatus::Deleting { .. })
    }
}

/// An immutable revision of an environment: what to run, where, and how to roll it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    #[serde(rename = "environmentName", alias = "environment")]
    pub environment: String,
    pub number: u64,
    /// v0.3's `deploymentToken`: a UUID, new with every revision, that a v0.3 deployment quotes so
    /// that it deploys the revision its caller saw.
    pub token: String,
    /// The task definition's ARN.
    pub task_definition: String,
    /// Whether the task definition has container health checks: then a task is healthy only once ECS
    /// reports it HEALTHY, not merely RUNNING.
    #[serde(default)]
    pub health_checks: bool,
    pub instance_group: InstanceGroup,
    #[serde(default)]
    pub deployment_method: DeploymentMethod,
    #[serde(default, alias = "deployment")]
    pub deployment_configuration: DeploymentConfiguration,
    #[serde(with = "rfc3339")]
    pub created_at: u64,
}

impl Revision {
    /// Whether planning it reads the groups of every task (`task:group` in the group's or the
    /// canary's query): then the view must know every task's group first.
    pub fn reads_task_groups(&self) -> bool {
        self.instance_group.reads_task_groups()
            || self
                .deployment_configuration
                .canary
                .as_ref()
                .is_some_and(super::config::Canary::reads_task_groups)
    }
}

/// The container instances a revision runs on: those of the cluster that carry every attribute listed
/// and match the query, if there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceGroup {
    #[serde(rename = "clusterARN", alias = "clusterArn")]
    pub cluster_arn: String,
    /// An attribute with a value matches an instance attribute of that name and value; one without a
    /// value matches the name with any value (or none).
    #[serde(default)]
    pub attributes: Vec<Attribute>,
    /// A cluster query (ECS's cluster query language), e.g. `attribute:stack == prod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Query>,
}

impl InstanceGroup {
    /// Whether matching it reads the groups of the instances' tasks (`task:group`).
    pub fn reads_task_groups(&self) -> bool {
        self.query.as_ref().is_some_and(Query::reads_task_groups)
    }

    /// Whether an instance belongs to the group.
    pub fn matches(&self, instance: &impl Subject) -> bool {
        self.attributes
            .iter()
            .all(|wanted| match instance.attribute(&wanted.name) {
                Some(value) => wanted.value.is_none() || value == wanted.value.as_deref(),
                None => false,
            })
            && self.query.as_ref().is_none_or(|query| query.matches(instance))
    }
}

/// Which instances of its cluster an environment runs on: what a request gives for
/// [`InstanceGroup`] (whose cluster is the environment's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceSelection {
    pub attributes: Vec<Attribute>,
    pub query: Option<Query>,
}

/// One vocabulary for both APIs: v0.3 clients see pending → running → completed as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentStatus {
    /// Created, not acted on yet (or its environment is frozen).
    Pending,
    Running,
    /// Its canary has been healthy for the bake time; nothing more is rolled out until it is
    /// promoted (or stopped, or rolled back).
    AwaitingPromotion,
    /// Every eligible instance ran a healthy task of the revision. A completed deployment keeps
    /// acting: new instances get the daemon, a daemon that stops is replaced.
    Completed,
    /// Too many failed start attempts, or no progress within the deadline. Not acted on any more.
    Failed,
    /// Stopped by a user: nothing is started or stopped for it any more.
    Stopped,
    /// A newer deployment started before this one finished.
    Superseded,
    /// A rollback replaced it.
    RolledBack,
}

impl DeploymentStatus {
    pub const ALL: [DeploymentStatus; 8] = [
        DeploymentStatus::Pending,
        DeploymentStatus::Running,
        DeploymentStatus::AwaitingPromotion,
        DeploymentStatus::Completed,
        DeploymentStatus::Failed,
        DeploymentStatus::Stopped,
        DeploymentStatus::Superseded,
        DeploymentStatus::RolledBack,
    ];

    /// The wire name (`pending`, …, `rolled-back`).
    pub fn name(self) -> &'static str {
        match self {
            DeploymentStatus::Pending => "pending",
            DeploymentStatus::Running => "running",
            DeploymentStatus::AwaitingPromotion => "awaiting-promotion",
            DeploymentStatus::Completed => "completed",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::Stopped => "stopped",
            DeploymentStatus::Superseded => "superseded",
            DeploymentStatus::RolledBack => "rolled-back",
        }
    }

    /// Still in progress: a user can stop it, a newer deployment supersedes it.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Pending | DeploymentStatus::Running | DeploymentStatus::AwaitingPromotion
        )
    }

    /// The scheduler acts for an active deployment in these statuses only (awaiting promotion, it
    /// keeps the canary and the rest of the fleet as they are: a crashed canary is restarted).
    pub fn acts(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Pending
                | DeploymentStatus::Running
                | DeploymentStatus::AwaitingPromotion
                | DeploymentStatus::Completed
        )
    }
}

/// A deployment: makes a revision the one the scheduler converges the instance group to. Its id is
/// the `startedBy` of every task it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    #[serde(rename = "environmentName", alias = "environment")]
    pub environment: String,
    pub revision: u64,
    pub task_definition: String,
    /// The revision the environment's previous deployment targeted, if any (v1.0's
    /// `oldTargetRevisionId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_revision: Option<u64>,
    pub status: DeploymentStatus,
    /// Started as a rollback (by a user, or automatically after a failure).
    #[serde(default)]
    pub rollback: bool,
    /// The deployment this one rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<String>,
    /// The rollback that replaced this deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    #[serde(with = "rfc3339")]
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339_opt")]
    pub started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339_opt")]
    pub ended_at: Option<u64>,
    /// The counts at the last transition (live counts come from the cluster view).
    #[serde(default)]
    pub counts: Counts,
    /// Failed start attempts at the last transition.
    #[serde(default)]
    pub failed_attempts: u64,
    /// Every transition, oldest first.
    #[serde(default)]
    pub history: Vec<Transition>,
    /// The instances its canary runs on, chosen by the planner on the deployment's first pass (the
    /// revision's `canary`; a rollback has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_instances: Option<Vec<String>>,
    /// When its canary was promoted (by a user, or by itself with `autoPromote`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339_opt")]
    pub promoted_at: Option<u64>,
}

/// A status a deployment entered, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub status: DeploymentStatus,
    #[serde(with = "rfc3339")]
    pub at: u64,
    pub reason: String,
}

impl Deployment {
    /// A new deployment of `revision`, pending, with no history yet (the caller records why it was
    /// created with [`Deployment::transition`]).
    pub fn new(id: impl Into<String>, revision: &Revision, now_ms: u64) -> Deployment {
        Deployment {
            id: id.into(),
            environment: revision.environment.clone(),
            revision: revision.number,
            task_definition: revision.task_definition.clone(),
            previous_revision: None,
            status: DeploymentStatus::Pending,
            rollback: false,
            rollback_of: None,
            rolled_back_by: None,
            superseded_by: None,
            created_at: now_ms,
            started_at: None,
            ended_at: None,
            counts: Counts::default(),
            failed_attempts: 0,
            history: Vec::new(),
            canary_instances: None,
            promoted_at: None,
        }
    }

    /// Whether its revision's CloudWatch alarms are watched: while it is in progress, unless it is a
    /// rollback, which restores a revision that ran before, usually while the alarm that failed the
    /// deployment it undoes is still in ALARM. (The bake time after its last start is inside that
    /// window: it completes only once every task has been healthy for `minHealthySeconds`.)
    pub fn watches_alarms(&self, revision: &Revision) -> bool {
        !revision.deployment_configuration.alarms.is_empty() && !self.rollback && self.status.in_progress()
    }

    /// Whether its canary still holds the rest of the fleet back: the revision has a canary, this is
    /// not a rollback (which restores a known revision everywhere at once), and it was not promoted.
    pub fn in_canary(&self, revision: &Revision) -> bool {
        revision.deployment_configuration.canary.is_some() && !self.rollback && self.promoted_at.is_none()
    }

    /// The reason of the latest transition.
    pub fn reason(&self) -> Option<&str> {
        self.history.last().map(|t| t.reason.as_str())
    }

    /// Moves to `status` (recorded in the history with `reason`); entering a final status sets the end.
    pub fn transition(&mut self, status: DeploymentStatus, reason: impl Into<String>, now_ms: u64) {
        if status == DeploymentStatus::Running && self.started_at.is_none() {
            self.started_at = Some(now_ms);
        }
        if !status.in_progress() && self.ended_at.is_none() {
            self.ended_at = Some(now_ms);
        }
        self.status = status;
        self.history.push(Transition {
            status,
            at: now_ms,
            reason: reason.into(),
        });
    }
}

/// Progress over the eligible instances (ACTIVE, agent connected, in the instance group): `desired`
/// of them should run the revision, `healthy` do with a healthy task, `total` tasks of the revision
/// are live (on any instance).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub desired: u64,
    pub healthy: u64,
    pub total: u64,
}

/// A start the executor decided on, recorded durably before StartTask is called, so that after a crash
/// or an answer that was lost, nothing is started on the instance until ECS has been asked. One per
/// instance and deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartIntent {
    pub environment: String,
    pub deployment_id: String,
    #[serde(rename = "containerInstanceARN", alias = "containerInstanceArn")]
    pub instance_arn: String,
    #[serde(rename = "recordedAt", with = "rfc3339")]
    pub recorded_at_ms: u64,
}

/// Failed start attempts of a deployment on one instance: ECS refused the start (a StartTask
/// `failure`), or the task stopped before it was healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceFailure {
    pub environment: String,
    pub deployment_id: String,
    #[serde(rename = "containerInstanceARN", alias = "containerInstanceArn")]
    pub instance_arn: String,
    /// ECS's reason for the last failure: a `failures` reason (`RESOURCE:MEMORY`) or the task's
    /// `stoppedReason`.
    pub reason: String,
    pub attempts: u64,
    #[serde(rename = "lastAt", with = "rfc3339")]
    pub last_at_ms: u64,
    /// No start is tried on the instance before this time.
    #[serde(rename = "retryAt", with = "rfc3339")]
    pub retry_at_ms: u64,
    /// Tasks already counted as failed attempts (so that a stopped task counts once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
}

/// How many of an instance's failed tasks a failure record remembers.
pub const MAX_COUNTED_TASKS: usize = 64;

/// The id, within its cluster, of a deployment's intent or failure record on an instance.
pub fn instance_record_id(deployment_id: &str, instance_arn: &str) -> String {
    format!("{deployment_id}/{instance_arn}")
}

impl StartIntent {
    pub fn id(&self) -> String {
        instance_record_id(&self.deployment_id, &self.instance_arn)
    }
}

impl InstanceFailure {
    pub fn id(&self) -> String {
        instance_record_id(&self.deployment_id, &self.instance_arn)
    }

    /// `previous` with one more failed attempt at `now_ms` (or a first one): the next try waits
    /// `initial × 2^(attempts-1)`, at most `max`.
    pub fn record(
        previous: Option<&InstanceFailure>,
        key: (&str, &str, &str),
        reason: &str,
        task: Option<&str>,
        now_ms: u64,
        config: &DeploymentConfiguration,
    ) -> InstanceFailure {
        let (environment, deployment_id, instance_arn) = key;
        let mut failure = previous.cloned().unwrap_or_else(|| InstanceFailure {
            environment: environment.to_owned(),
            deployment_id: deployment_id.to_owned(),
            instance_arn: instance_arn.to_owned(),
            reason: String::new(),
            attempts: 0,
            last_at_ms: now_ms,
            retry_at_ms: now_ms,
            tasks: Vec::new(),
        });
        failure.attempts = failure.attempts.saturating_add(1);
        let shift = u32::try_from(failure.attempts - 1).unwrap_or(u32::MAX);
        let factor = 1u64.checked_shl(shift).unwrap_or(u64::MAX);
        let delay = config
            .start_backoff_initial_ms
            .saturating_mul(factor)
            .min(config.start_backoff_max_ms);
        failure.reason = reason.to_owned();
        failure.last_at_ms = now_ms;
        failure.retry_at_ms = now_ms.saturating_add(delay);
        if let Some(task) = task
            && !failure.tasks.iter().any(|t| t == task)
        {
            failure.tasks.push(task.to_owned());
            // A task is counted once while it can still be seen; ECS forgets stopped tasks after
            // an hour, and a back-off of minutes allows few attempts in that time.
            if failure.tasks.len() > MAX_COUNTED_TASKS {
                failure.tasks.remove(0);
            }
        }
        failure
    }
}
