//! The dashboard's JSON (`/ui/api/…`): what its pages show that the rest of the API does not answer
//! in one request — a fleet's counts, a cluster's coverage grid, a rollout's budget.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{DeploymentV1, EnvironmentRevision, EnvironmentV1, LeaderStatus, Readiness, TaskCounts};

/// `GET /ui/api/session`: what the caller's token may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// `admin` (every action) or `read` (no action); `admin` when the server takes no token; null
    /// when it does and none was sent.
    pub role: Option<String>,
    /// Whether the server asks for tokens (`--auth-token-file`).
    pub auth: bool,
    pub version: String,
}

/// `GET /ui/api/overview`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub clusters: Vec<ClusterSummary>,
    pub environments: Vec<EnvironmentSummary>,
    pub ingest: IngestSummary,
    pub reconcile: Readiness,
    pub leader: LeaderStatus,
    /// Events parked as dead letters (`GET /v1/dead-letters`), counted up to 100,000.
    pub dead_letters: u64,
    /// There are at least `deadLetters` (the count stopped there).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead_letters_at_least: bool,
    /// The change log's last sequence number.
    pub change_log_head: u64,
}

/// One cluster's instances and tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSummary {
    pub cluster: String,
    pub instances: u64,
    /// By `status` (`ACTIVE`, `DRAINING`, …).
    pub instances_by_status: BTreeMap<String, u64>,
    /// Instances whose agent is not connected.
    pub agents_disconnected: u64,
    /// Tasks in the store, by `lastStatus`; null while blox is still counting them (the first
    /// overview after a start reads every task once).
    pub tasks_by_status: Option<BTreeMap<String, u64>>,
    /// Environments of the cluster.
    pub environments: Vec<String>,
}

/// Ingestion as the metrics count it since the start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestSummary {
    /// Events applied to the store (`blox_events_applied_total`); the dashboard shows its rate.
    pub events_applied: u64,
    /// Events older than what the store holds (`blox_events_stale_total`).
    pub events_stale: u64,
    /// Events parked as dead letters (`blox_events_parked_total`).
    pub events_parked: u64,
    /// Age of the oldest message in the queue, as last sampled (`blox_queue_lag_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_lag_seconds: Option<f64>,
    /// Messages visible in the queue, waiting to be received (`blox_queue_messages{state="visible"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_messages: Option<f64>,
}

/// One environment at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentSummary {
    pub environment_name: String,
    pub cluster: String,
    /// `Healthy` or `Unhealthy`.
    pub environment_health: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
    /// As the v1.0 API's: `Inactive` before the first deployment, then `Active`; `Frozen` or
    /// `Deleting` over either.
    pub environment_status: String,
    pub task_definition: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deployment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deployment_status: Option<String>,
    pub counts: TaskCounts,
    /// Eligible instances without a healthy daemon for longer than `coverageGraceSeconds`.
    pub uncovered: u64,
    /// Instances by coverage (see [`GridCell::coverage`]).
    pub coverage: BTreeMap<String, u64>,
}

/// `GET /ui/api/clusters/{cluster}`: every container instance and, per environment of the cluster,
/// its daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterGrid {
    pub cluster: String,
    /// The cluster's environments, in the order of each instance's `coverage`.
    pub environments: Vec<String>,
    /// In ARN order; only those the `filter` matched, when one was given.
    pub instances: Vec<GridInstance>,
    /// The cluster's instances (before any filter).
    pub total: u64,
}

/// One cell of the cluster grid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GridInstance {
    pub container_instance_arn: String,
    pub status: String,
    pub agent_connected: bool,
    /// Tasks running on it, as ECS last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_tasks_count: Option<i64>,
    /// Per environment (in `environments` order): its daemon here (see [`GridCell::coverage`]).
    pub coverage: Vec<String>,
}

/// `GET /ui/api/environments/{name}`: the active deployment's rollout, instance by instance, with
/// everything the environment page shows, planned once (as `GET /v1/{cluster}/environments/{name}`,
/// `…/deployments` and `…/revisions` answer them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentPage {
    pub environment: EnvironmentV1,
    /// Newest first, the last [`EnvironmentPage::DEPLOYMENTS`].
    pub deployments: Vec<DeploymentV1>,
    /// Newest first.
    pub revisions: Vec<EnvironmentRevision>,
    pub rollout: Rollout,
}

impl EnvironmentPage {
    /// Deployments shown at most.
    pub const DEPLOYMENTS: usize = 20;
}

/// The active deployment's rollout, instance by instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub environment_name: String,
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_status: Option<String>,
    /// `TerminateThenReplace` or `ReplaceThenTerminate`.
    pub deployment_method: String,
    pub counts: TaskCounts,
    /// Eligible instances (ACTIVE, agent connected, in the instance group).
    pub eligible: u64,
    /// Eligible instances with a healthy daemon of any revision.
    pub healthy: u64,
    /// TerminateThenReplace: the fewest healthy instances the rollout keeps.
    pub floor: u64,
    /// ReplaceThenTerminate: how many instances may carry two tasks at once, and how many do.
    pub surge: u64,
    pub surged: u64,
    /// Eligible instances still on an older revision.
    pub outdated: u64,
    /// Eligible instances where ECS refuses starts.
    pub failing: u64,
    /// Eligible instances the canary holds back.
    pub held: u64,
    pub failed_attempts: u64,
    pub failure_threshold: u64,
    /// When the deployment started acting (RFC 3339), for the ETA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Every eligible instance runs a healthy task of the revision.
    pub complete: bool,
    /// Instances by coverage.
    pub coverage: BTreeMap<String, u64>,
    /// In ARN order.
    pub instances: Vec<GridCell>,
    /// What the lifecycle lets a user do now: `deploy`, `stop`, `promote`, `rollback`, `freeze`,
    /// `thaw` (a deploy of an older revision is a rollback: the deploy route refuses it without
    /// `rollback=true`).
    pub actions: Vec<String>,
}

/// An instance's daemon to the active deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GridCell {
    pub container_instance_arn: String,
    /// `healthy` (a healthy task of the active revision), `starting`, `old` (an older revision's
    /// task), `failed` (ECS refuses starts here), `missing`, `held` (by the canary), `kept` (draining
    /// or disconnected: kept, not started), `excluded` (should have none: outside the instance group,
    /// draining under stopOnDrain, or gone), or `none` (nothing deployed).
    pub coverage: String,
}
