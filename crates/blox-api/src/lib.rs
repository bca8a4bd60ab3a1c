//! Wire types of the blox REST API. The entity shapes come from `blox-model` (they are Blox v0.3's
//! `TaskDetail` and `ContainerInstanceDetail`); this crate adds the envelopes v0.3 wrapped them in
//! (`{metadata, entity}`, `{items}`), pagination, errors and the operational endpoints' bodies.
//!
//! The server writes list and stream bodies by splicing stored entity JSON into these envelopes
//! rather than through serde (see `blox-server`'s `render`); a test there keeps the two identical.

use blox_model::{ContainerInstance, Task};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What `blox server` prints on stdout, followed by `http://ADDRESS`, once it accepts connections:
/// tests and scripts read it to find a port chosen with `--listen 127.0.0.1:0`.
pub const LISTENING_PREFIX: &str = "blox listening on ";

/// Where an entity is in the change log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The store's sequence number of the entity's last change, as a decimal string (v0.3 served the
    /// etcd revision here). Streams resume from it with `?entityVersion=`, which replays that change
    /// again (inclusive, as v0.3's did).
    pub entity_version: String,
    /// Set on stream records of entities that were removed (ECS no longer lists them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// A task with its metadata (v0.3 `Task`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskRecord {
    pub metadata: Metadata,
    pub entity: Task,
}

/// A container instance with its metadata (v0.3 `ContainerInstance`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceRecord {
    pub metadata: Metadata,
    pub entity: ContainerInstance,
}

/// A page of tasks (v0.3 `Tasks`, plus `nextToken`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tasks {
    pub items: Vec<TaskRecord>,
    /// Present when `maxResults` cut the list; pass it back as `nextToken` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// A page of container instances (v0.3 `ContainerInstances`, plus `nextToken`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Instances {
    pub items: Vec<InstanceRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// Every error answer: a stable machine-readable `code`, a sentence for people, and the request field
/// at fault when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// On a 404 of the scheduler's API: the kind of resource not found (`environment`, `revision`,
    /// `deployment`), as v1.0's `ResourceNotFoundException` said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    /// And its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
}

/// A message that could not be applied, parked for an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub received_at: String,
    pub reason: String,
    /// The message body exactly as received.
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetters {
    pub items: Vec<DeadLetter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `/healthz`: the process is alive and serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// `/readyz`: whether the first full reconcile pass has completed, and how the last one went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    pub ready: bool,
    /// Completed reconcile passes since start.
    pub reconcile_passes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass_completed_at: Option<String>,
    /// Clusters whose last reconcile failed, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing_clusters: Vec<ClusterFailure>,
    /// `leader` (runs ingestion, reconciliation and the scheduler) or `follower` (serves the API
    /// from the shared store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// `GET /v1/leader`: which replica leads, as this one knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaderStatus {
    /// This replica's id (`--replica-id`).
    #[serde(rename = "self")]
    pub self_id: String,
    /// The leader's replica id; null while no replica leads.
    pub leader: Option<String>,
    /// The leadership lease's time to live (`--leader-lease`).
    pub lease_ttl_seconds: u64,
    /// When the leader took the lead (RFC 3339); null while no replica leads.
    pub since: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterFailure {
    pub cluster: String,
    pub reason: String,
}

/// An error line ending a stream (the connection closes after it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StreamError {
    pub error: ErrorBody,
}

/// A line of a stream that asked for `heartbeat=position`, sent after a quiet spell instead of an
/// empty line: every change before `entityVersion` that matches the stream has been sent, so a
/// client resumes from there (`?entityVersion=`, inclusive) with nothing repeated or missed, even
/// when nothing matched for a long time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StreamHeartbeat {
    pub heartbeat: StreamPosition,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamPosition {
    /// The change log's position, as a decimal string like records' `metadata.entityVersion`.
    pub entity_version: String,
}

/// Query of `GET /v1/tasks`. Every parameter is optional; unknown or repeated ones are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct TaskQuery {
    /// A task `lastStatus`, case-insensitive: pending, running, stopped, or any other ECS lifecycle
    /// status (provisioning, activating, deactivating, stopping, deprovisioning).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(
        pattern = r"^(?:provisioning|pending|activating|running|deactivating|stopping|deprovisioning|stopped|deleted|PROVISIONING|PENDING|ACTIVATING|RUNNING|DEACTIVATING|STOPPING|DEPROVISIONING|STOPPED|DELETED)$"
    )]
    pub status: Option<String>,
    /// A cluster name or ARN.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$")]
    pub cluster: Option<String>,
    /// Exact `startedBy`: any value (one that ECS never gives a task matches nothing), as in Blox
    /// v0.3; an empty one is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(min_length = 1)]
    pub started_by: Option<String>,
    /// Page size, 1 to 10,000. Without it every match is returned, as in Blox v0.3.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 10000)]
    pub max_results: Option<u32>,
    /// `nextToken` of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(pattern = r"^([A-Za-z0-9_-]{4})*([A-Za-z0-9_-]{2,3})?$", min_length = 2)]
    pub next_token: Option<String>,
}

/// Query of `GET /v1/instances`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct InstanceQuery {
    /// An instance `status`, case-insensitive: active, draining, inactive (or registering,
    /// registration_failed, deregistering).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(
        pattern = r"^(?:registering|registration_failed|active|draining|deregistering|inactive|REGISTERING|REGISTRATION_FAILED|ACTIVE|DRAINING|DEREGISTERING|INACTIVE)$"
    )]
    pub status: Option<String>,
    /// A cluster name or ARN.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 10000)]
    pub max_results: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(pattern = r"^([A-Za-z0-9_-]{4})*([A-Za-z0-9_-]{2,3})?$", min_length = 2)]
    pub next_token: Option<String>,
    /// blox's addition: only instances matching this cluster query (ECS's cluster query language,
    /// e.g. `attribute:ecs.instance-type =~ m5.* and task:group != batch`), answered from memory.
    /// A filtered listing's `nextToken` serves only the same filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(min_length = 1, max_length = 4096)]
    pub filter: Option<String>,
}

/// Query of the stream endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Replay every change from this entityVersion on (inclusive, as v0.3's streams: a client resuming
    /// from the last record it read gets it again), then go live; 0 replays the log from its start
    /// (a 400 once the log no longer holds it).
    /// Without it, only changes from now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_version: Option<u64>,
    /// Only this cluster (name or ARN).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$")]
    pub cluster: Option<String>,
    /// What a heartbeat after a quiet spell is: `empty` (the default), an empty line, which any JSON
    /// decoder skips; or `position`, a `StreamHeartbeat` line with the stream's position to resume
    /// from. Decoders that take every line for a record (Blox v0.3's Go client would decode it as an
    /// empty Task) must not ask for `position`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(pattern = r"^(empty|position)$")]
    pub heartbeat: Option<String>,
}

/// Query of paged operational listings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 10,000. Without it: 100 dead letters a page; every item of the v1.0 lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 10000)]
    pub max_results: Option<u32>,
    /// `nextToken` of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(pattern = r"^([A-Za-z0-9_-]{4})*([A-Za-z0-9_-]{2,3})?$", min_length = 2)]
    pub next_token: Option<String>,
}

/// Path of `GET /v1/tasks/{cluster}/{arn}`.
#[derive(Debug, Clone, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TaskPath {
    /// Cluster name or ARN.
    #[param(pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$")]
    pub cluster: String,
    /// Task ARN, short (`task/ID`) or long (`task/CLUSTER/ID`); slashes may be literal.
    #[param(
        pattern = r"^arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:task/([A-Za-z0-9_-]{1,255}/)?[A-Za-z0-9_-]{1,255}$"
    )]
    pub arn: String,
}

/// Path of `GET /v1/instances/{cluster}/{arn}`.
#[derive(Debug, Clone, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct InstancePath {
    /// Cluster name or ARN.
    #[param(pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$")]
    pub cluster: String,
    /// Container-instance ARN, short or long format; slashes may be literal.
    #[param(
        pattern = r"^arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:container-instance/([A-Za-z0-9_-]{1,255}/)?[A-Za-z0-9_-]{1,255}$"
    )]
    pub arn: String,
}

/// Path of `DELETE /v1/dead-letters/{id}`.
#[derive(Debug, Clone, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeadLetterPath {
    /// The dead letter's id.
    #[param(pattern = r"^[0-9]{1,19}$")]
    pub id: String,
}

// ---- daemon scheduler --------------------------------------------------------------------------------

pub mod dashboard;
mod scheduler;

pub use scheduler::*;
