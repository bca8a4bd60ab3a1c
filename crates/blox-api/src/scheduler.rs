//! Wire types of the daemon scheduler: Blox v0.3's environments and deployments (`/v1/environments`),
//! and Blox v1.0's (`/v1/{cluster}/environments`), two views of the same documents. Field names are the
//! originals'; what they lacked is added, never renamed.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// A revision id: the revision's number, written as a JSON string (`"2"`, as v1.0's ids were strings);
/// a plain number is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ToSchema)]
#[schema(value_type = String, example = "2", pattern = r"^[1-9][0-9]{0,17}$")]
pub struct RevisionId(pub u64);

impl Serialize for RevisionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for RevisionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(u64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Number(n) if n > 0 => Ok(RevisionId(n)),
            Either::Text(t) => match t.parse::<u64>() {
                Ok(n) if n > 0 => Ok(RevisionId(n)),
                _ => Err(serde::de::Error::custom(format!(
                    "{t:?} is not a revision id: a revision number from 1, e.g. \"2\""
                ))),
            },
            Either::Number(_) => Err(serde::de::Error::custom("revision ids start at 1")),
        }
    }
}

/// An attribute an instance must carry to be in the group: with a value, that value; without, any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttributeBody {
    #[schema(min_length = 1)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// How a revision is rolled out. In a request every field is optional (defaults for a new
/// environment, the latest revision's for an update); in an answer every field is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentConfigurationBody {
    /// TerminateThenReplace: healthy instances never fall below ceil(minHealthyPercent × eligible /
    /// 100), and below 100 at most eligible − 1 (so that one can always be replaced), by blox's
    /// doing. 0–100, default 90.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 100)]
    pub min_healthy_percent: Option<i64>,
    /// ReplaceThenTerminate: at most ceil(maxOverPercent × eligible / 100) instances run two tasks at
    /// once. 1–100, default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub max_over_percent: Option<i64>,
    /// Bake time: how long a task must have been healthy to count. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 604800)]
    pub min_healthy_seconds: Option<i64>,
    /// Failed start attempts that fail a deployment. Default: 10% of the eligible instances, at least
    /// 3, at most 200 (absent in an answer when it is the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100000)]
    pub failure_threshold: Option<i64>,
    /// A deployment fails when its healthy count has not grown for this long. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 604800)]
    pub progress_deadline_seconds: Option<i64>,
    /// A failed deployment rolls back to the last completed revision by itself. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<bool>,
    /// Stop the daemon when its instance starts draining. Default false: log and metric agents
    /// outlive the tasks they serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_on_drain: Option<bool>,
    /// Roll out to a few instances first, hold for `minHealthySeconds`, then wait in
    /// `awaiting-promotion` for `POST …/deployments/{id}/promote`. Absent: no canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryBody>,
    /// CloudWatch alarms watched while a deployment runs: one in ALARM fails it (and rolls back when
    /// `autoRollback`). An update's list replaces the latest revision's (`[]` removes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 100)]
    pub alarms: Option<Vec<String>>,
    /// An eligible instance without a healthy task of the active revision for longer than this is
    /// `uncovered`. 0–604800, default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 604800)]
    pub coverage_grace_seconds: Option<i64>,
}

/// A canary: exactly one of `instances`, `percent` and `query`. In an update, `{"instances": 0}`
/// removes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryBody {
    /// The first N eligible instances (by ARN; those already running the revision first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 100000)]
    pub instances: Option<i64>,
    /// ceil(percent × eligible / 100) instances, at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub percent: Option<i64>,
    /// Every eligible instance matching this cluster query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Promote by itself once the canary has been healthy for `minHealthySeconds`. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promote: Option<bool>,
}

/// Live progress of a revision or deployment over the eligible instances (ACTIVE, agent connected,
/// in the instance group).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskCounts {
    /// Instances that should run it.
    pub desired: u64,
    /// Instances that run a healthy task of it.
    pub healthy: u64,
    /// Live tasks of it, on any instance.
    pub total: u64,
}

/// A deployment's failed start attempts on one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceFailureBody {
    #[serde(rename = "containerInstanceArn")]
    pub container_instance_arn: String,
    /// ECS's reason for the last one: a StartTask failure (`RESOURCE:MEMORY`) or the task's
    /// `stoppedReason` (`CannotPullContainerError: …`).
    pub reason: String,
    pub attempts: u64,
    pub last_at: String,
    /// No start is tried on the instance before then.
    pub retry_at: String,
}

/// A status a deployment entered, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransitionBody {
    /// `pending`, `running`, `awaiting-promotion`, `completed`, `failed`, `stopped`, `superseded` or
    /// `rolled-back`.
    pub status: String,
    pub at: String,
    pub reason: String,
}

// ---- v0.3 ------------------------------------------------------------------------------------------

/// The instances an environment runs on (v0.3): every container instance of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceGroupBody {
    /// A cluster name or ARN in a request; its ARN in an answer.
    #[schema(pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$")]
    pub cluster: String,
    /// blox's addition: attributes an instance must carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<AttributeBody>,
    /// blox's addition: a cluster query instances must match (ECS's cluster query language, e.g.
    /// `attribute:stack == prod and agentVersion >= 1.70.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// `POST /v1/environments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateEnvironmentRequest {
    /// 1 to 30 letters, digits, '-' or '_'; unique across clusters.
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,30}$")]
    pub name: String,
    pub instance_group: InstanceGroupBody,
    /// `FAMILY`, `FAMILY:REVISION` or an ARN; checked against ECS.
    #[schema(min_length = 1)]
    pub task_definition: String,
    /// `TerminateThenReplace` (default) or `ReplaceThenTerminate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^(TerminateThenReplace|ReplaceThenTerminate)$")]
    pub deployment_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_configuration: Option<DeploymentConfigurationBody>,
}

/// `PUT /v1/environments/{name}`: a new revision (with a new token) with the fields given; the same
/// body as v1.0's update.
pub type UpdateEnvironmentRequest = UpdateEnvironment;

/// A new instance group: its attributes (the cluster cannot change).
pub type InstanceGroupUpdate = InstanceGroup;

/// A daemon environment (v0.3 `Environment`, with what blox adds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Environment {
    pub name: String,
    /// The latest revision's token: quote it to deploy that revision.
    pub deployment_token: String,
    pub instance_group: InstanceGroupBody,
    /// The ARN of the latest revision's task definition.
    pub task_definition: String,
    /// `healthy` or `unhealthy`.
    pub health: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
    /// The latest revision's number (from 1).
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deployment: Option<String>,
    /// `active` or `deleting`.
    pub status: String,
    /// Frozen: deployments are taken but nothing is acted on until thawed.
    #[serde(default)]
    pub frozen: bool,
    pub deployment_method: String,
    pub deployment_configuration: DeploymentConfigurationBody,
    /// blox's addition: eligible instances without a healthy task of the active revision for longer
    /// than `coverageGraceSeconds`.
    pub uncovered: u64,
    pub uncovered_instances: Vec<UncoveredInstance>,
    pub created_at: String,
    pub updated_at: String,
}

/// A list of environments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Environments {
    pub items: Vec<Environment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// An instance where the task could not be started (v0.3 kept only the ARNs, in `failedInstances`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentFailure {
    /// The container instance's ARN.
    pub arn: String,
    pub reason: String,
    pub attempts: u64,
    pub retry_at: String,
}

/// Per-instance progress: `desired = running + pending + failed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentCounts {
    pub desired: u64,
    /// Instances with a healthy task of the deployment's revision.
    pub running: u64,
    pub pending: u64,
    /// Instances where ECS refuses the start (in back-off).
    pub failed: u64,
}

/// A deployment (v0.3 `Deployment`, with progress and history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    pub environment_name: String,
    /// `pending`, `running`, `awaiting-promotion`, `completed`, `failed`, `stopped`, `superseded` or
    /// `rolled-back`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub task_definition: String,
    pub revision: u64,
    /// Container-instance ARNs where the task could not be started (v0.3's shape).
    pub failed_instances: Vec<String>,
    /// The same instances with ECS's reason and the retry schedule.
    pub failures: Vec<DeploymentFailure>,
    pub counts: DeploymentCounts,
    #[serde(default)]
    pub rollback: bool,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// blox's addition: the instances its canary runs on, once chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_instances: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<String>,
}

/// An environment's deployments, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deployments {
    pub items: Vec<Deployment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// The answer to `DELETE /v1/environments/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteEnvironmentResponse {
    pub name: String,
    /// `deleted` (gone now, tasks left running) or `deleting` (its tasks are being stopped).
    pub status: String,
    pub terminate_tasks: bool,
    /// What happens to the environment's tasks.
    pub message: String,
}

// ---- v1.0 ------------------------------------------------------------------------------------------

/// The instances of the cluster a revision runs on: those carrying every attribute listed and
/// matching the query, if one is given. An update's instance group replaces the whole group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceGroup {
    #[serde(default)]
    pub attributes: Vec<AttributeBody>,
    /// A cluster query (ECS's cluster query language), e.g. `attribute:stack == prod and
    /// task:group != batch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// `POST /v1/{cluster}/environments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateEnvironment {
    /// 1 to 30 letters, digits, '-' or '_'; unique across clusters.
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,30}$")]
    pub environment_name: String,
    /// `FAMILY`, `FAMILY:REVISION` or an ARN; checked against ECS.
    #[schema(min_length = 1)]
    pub task_definition: String,
    /// `Daemon` (the only type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^Daemon$")]
    pub environment_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_group: Option<InstanceGroup>,
    /// `TerminateThenReplace` (default) or `ReplaceThenTerminate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^(TerminateThenReplace|ReplaceThenTerminate)$")]
    pub deployment_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_configuration: Option<DeploymentConfigurationBody>,
}

/// `PUT /v1/{cluster}/environments/{environmentName}`: a new revision with the fields given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateEnvironment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    pub task_definition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_group: Option<InstanceGroup>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^(TerminateThenReplace|ReplaceThenTerminate)$")]
    pub deployment_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_configuration: Option<DeploymentConfigurationBody>,
    /// Refused with 409 unless it is the latest revision (optimistic concurrency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_revision_id: Option<RevisionId>,
}

/// A v1.0 environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentV1 {
    pub environment_name: String,
    /// The cluster's name.
    pub cluster: String,
    pub cluster_arn: String,
    /// `Daemon`.
    pub environment_type: String,
    /// `Healthy` or `Unhealthy`.
    pub environment_health: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
    /// `Inactive` before the first deployment (as v1.0 created environments), then `Active`;
    /// `Frozen` or `Deleting` over either; `Deleted` in the answer to a delete that did not wait for
    /// the tasks to stop.
    pub environment_status: String,
    /// The latest revision's method and configuration.
    pub deployment_method: String,
    pub deployment_configuration: DeploymentConfigurationBody,
    pub task_definition: String,
    pub instance_group: InstanceGroup,
    /// The revision of the active (newest) deployment; absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_environment_revision_id: Option<RevisionId>,
    pub latest_environment_revision_id: RevisionId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deployment_id: Option<String>,
    /// Live counts of the active deployment's revision.
    pub counts: TaskCounts,
    /// Eligible instances that have had no healthy task of the active revision for longer than
    /// `coverageGraceSeconds` (one still served by an older revision's healthy task is not counted
    /// while its deployment is in progress): the number to page on.
    pub uncovered: u64,
    pub uncovered_instances: Vec<UncoveredInstance>,
    pub created_at: String,
    pub updated_at: String,
}

/// `{environment}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentResponse {
    pub environment: EnvironmentV1,
}

/// The answer to a create or an update: the new revision's id and the environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionCreated {
    pub environment_revision_id: RevisionId,
    pub environment: EnvironmentV1,
}

/// `GET /v1/{cluster}/environments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentList {
    pub environment_names: Vec<String>,
    pub environments: Vec<EnvironmentV1>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// An immutable revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentRevision {
    pub environment_revision_id: RevisionId,
    pub environment_name: String,
    pub task_definition: String,
    /// Whether the task definition has container health checks (then healthy means HEALTHY).
    pub health_checks: bool,
    pub instance_group: InstanceGroup,
    pub deployment_method: String,
    pub deployment_configuration: DeploymentConfigurationBody,
    /// Live: `desired` is the eligible instances when this is the active revision, else 0.
    pub counts: TaskCounts,
    pub created_at: String,
}

/// `{environmentRevision}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionResponse {
    pub environment_revision: EnvironmentRevision,
}

/// `GET …/revisions`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionList {
    pub revision_ids: Vec<RevisionId>,
    pub revisions: Vec<EnvironmentRevision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// A v1.0 deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentV1 {
    pub deployment_id: String,
    pub environment_name: String,
    /// `pending`, `running`, `awaiting-promotion`, `completed`, `failed`, `stopped`, `superseded` or
    /// `rolled-back`.
    pub status: String,
    /// Why it entered its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// The revision it deploys (v1.0's `newTargetRevisionId`, repeated).
    pub environment_revision_id: RevisionId,
    pub new_target_revision_id: RevisionId,
    /// The revision of the deployment it followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_target_revision_id: Option<RevisionId>,
    pub task_definition: String,
    /// Creation time in milliseconds since the epoch (v1.0's `timestamp`).
    pub timestamp: u64,
    /// Started as a rollback, by a user or automatically after a failure.
    pub rollback: bool,
    /// The deployment it rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<String>,
    /// The rollback that replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    /// Live while it is the active deployment; as of its last transition otherwise.
    pub counts: TaskCounts,
    pub failed_attempts: u64,
    pub failure_threshold: u64,
    pub failures: Vec<InstanceFailureBody>,
    /// Every transition, oldest first.
    pub history: Vec<TransitionBody>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// The container instances its canary runs on, once chosen (its first pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_instances: Option<Vec<String>>,
    /// When its canary was promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<String>,
}

/// An instance without its daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UncoveredInstance {
    pub container_instance_arn: String,
    /// Since when it has had no healthy task of the active revision.
    pub since: String,
}

/// What a deployment of a revision would do now (`dryRun=true`), computed by the planner the executor
/// uses over a copy of the cluster in which every start succeeds and is healthy at once and every
/// stop is done at once: what the rollout does on a quiet fleet, never faster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentPlan {
    /// Always true: nothing was written or started.
    pub dry_run: bool,
    pub environment_name: String,
    pub environment_revision_id: RevisionId,
    pub task_definition: String,
    pub deployment_method: String,
    /// Instances that should run the revision (ACTIVE, agent connected, in the group).
    pub eligible: u64,
    /// TerminateThenReplace: the fewest eligible instances with a healthy daemon.
    pub floor: u64,
    /// ReplaceThenTerminate: instances that may carry two tasks at once.
    pub surge: u64,
    /// The canary's instances, when the revision has a canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_instances: Option<Vec<String>>,
    /// Per instance, in ARN order: `keep`, `start`, `replace`, `stop` or `wait` (nothing can be
    /// started there: agent disconnected, draining, or the rollout stalls before it).
    pub instances: Vec<PlannedInstance>,
    /// The executor's passes in order: what each starts and stops.
    pub batches: Vec<PlannedBatch>,
    /// The rollout reaches completion; when not, `stalledReason` says why.
    pub complete: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_reason: Option<String>,
    pub start_task_calls: u64,
    pub stop_task_calls: u64,
    /// The executor's ECS call rate per API family.
    pub calls_per_second: f64,
    /// Per batch, the slower of its StartTask and StopTask calls at `callsPerSecond`, plus
    /// `minHealthySeconds` for a batch that starts tasks; image pulls and health checks add to it.
    pub estimated_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedInstance {
    pub container_instance_arn: String,
    pub action: String,
    /// Why its tasks are stopped, for `stop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedBatch {
    /// Container instances a task of the revision is started on.
    pub starts: Vec<String>,
    pub stops: Vec<PlannedStop>,
    /// The canary was promoted before this batch.
    #[serde(default)]
    pub after_promotion: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStop {
    pub task_arn: String,
    pub container_instance_arn: String,
    /// StopTask's reason.
    pub reason: String,
}

/// The answer to `POST …/deployments`: the deployment started, or with `dryRun=true` its plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StartDeploymentAnswer {
    Started(Box<DeploymentResponse>),
    Plan(Box<DeploymentPlan>),
}

/// `{deploymentId, deployment}`: a started, stopped or described deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentResponse {
    pub deployment_id: String,
    pub deployment: DeploymentV1,
}

/// `GET …/deployments`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentList {
    pub deployment_ids: Vec<String>,
    pub deployments: Vec<DeploymentV1>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `POST …/rollback`'s optional body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRequest {
    /// The revision to roll back to; default: that of the last deployment that completed before the
    /// active one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_revision_id: Option<RevisionId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_ids_are_strings_that_also_parse_from_numbers() {
        assert_eq!(
            serde_json::to_value(RevisionId(2)).unwrap(),
            serde_json::json!("2")
        );
        for ok in [serde_json::json!("2"), serde_json::json!(2)] {
            assert_eq!(serde_json::from_value::<RevisionId>(ok).unwrap(), RevisionId(2));
        }
        for bad in [
            serde_json::json!("0"),
            serde_json::json!(0),
            serde_json::json!("two"),
            serde_json::json!(-1),
        ] {
            assert!(
                serde_json::from_value::<RevisionId>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
