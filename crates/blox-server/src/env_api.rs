//! What the v0.3 and v1.0 environment APIs share: request parsing (errors name the field), checks
//! against ECS (the cluster and the task definition must exist and be ACTIVE), the commands'
//! plumbing, and live counts from the view. The rules themselves are in
//! [`blox_model::daemon::lifecycle`].

use std::collections::HashMap;

use axum::http::StatusCode;
use blox_api::{
    AttributeBody, CanaryBody, DeploymentConfigurationBody, InstanceFailureBody, TaskCounts, TransitionBody,
    UncoveredInstance,
};
use blox_aws::EcsErrorKind;
use blox_model::daemon::lifecycle::{self, CreateEnvironment, Fresh, TaskDefinitionRef, UpdateEnvironment};
use blox_model::daemon::{
    self, Active, CanaryPatch, ConfigPatch, Counts, Deployment, DeploymentConfiguration, DeploymentMethod,
    Health, InstanceFailure, InstanceGroup, InstanceSelection, IntentState, Plan, PlanInput, Revision,
    Snapshot,
};
use blox_model::emit::rfc3339_millis;
use blox_model::{Attribute, ClusterName, Query};
use serde::de::DeserializeOwned;

use crate::api::AppState;
use crate::clock;
use crate::environments::{self, Depth, Stored};
use crate::error::ApiError;
use crate::query::parse_cluster;

/// A JSON body; an error names the field at fault (`deploymentConfiguration.minHealthyPercent`).
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "body",
            "InvalidBody",
            "a JSON body is required",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    let trailing = |e: serde_json::Error| {
        ApiError::bad_request(
            "body",
            "InvalidBody",
            format!("the request body is not valid: {e}"),
        )
    };
    match parsed {
        Ok(value) => {
            deserializer.end().map_err(trailing)?;
            Ok(value)
        }
        Err(err) => {
            let path = err.path().to_string();
            let field = if path.is_empty() || path == "." {
                "body".to_owned()
            } else {
                path
            };
            Err(ApiError::bad_request(
                field,
                "InvalidBody",
                format!("the request body is not valid: {}", err.inner()),
            ))
        }
    }
}

/// An optional JSON body (absent or empty means `T::default()`).
/// An optional body: none, or JSON `null`, is the default.
pub fn parse_optional_body<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse_body::<Option<T>>(body).map(Option::unwrap_or_default)
    }
}

pub fn non_empty(field: &str, value: &str, what: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        Err(ApiError::bad_request(
            field,
            "MissingField",
            format!("{field} is required: {what}"),
        ))
    } else {
        Ok(value.to_owned())
    }
}

pub fn method(field: &'static str, value: Option<&str>) -> Result<Option<DeploymentMethod>, ApiError> {
    value
        .map(|v| DeploymentMethod::parse(field, v))
        .transpose()
        .map_err(|e| ApiError::bad_request(e.field, "InvalidDeploymentMethod", e.reason))
}

/// A request's `deploymentConfiguration`, each field still optional; a canary's query is parsed
/// here (its error names the field), the ranges are checked by [`check_patch`].
pub fn patch(body: Option<&DeploymentConfigurationBody>) -> Result<ConfigPatch, ApiError> {
    let Some(b) = body else {
        return Ok(ConfigPatch::default());
    };
    let canary = b
        .canary
        .as_ref()
        .map(|c| -> Result<CanaryPatch, ApiError> {
            Ok(CanaryPatch {
                instances: c.instances,
                percent: c.percent,
                query: c
                    .query
                    .as_deref()
                    .map(|q| cluster_query("deploymentConfiguration.canary.query", q))
                    .transpose()?,
                auto_promote: c.auto_promote,
            })
        })
        .transpose()?;
    Ok(ConfigPatch {
        min_healthy_percent: b.min_healthy_percent,
        max_over_percent: b.max_over_percent,
        min_healthy_seconds: b.min_healthy_seconds,
        failure_threshold: b.failure_threshold,
        progress_deadline_seconds: b.progress_deadline_seconds,
        auto_rollback: b.auto_rollback,
        stop_on_drain: b.stop_on_drain,
        canary,
        alarms: b.alarms.clone(),
        coverage_grace_seconds: b.coverage_grace_seconds,
    })
}

/// Checks a patch on its own, so that a bad value is a 400 before ECS is asked anything.
pub fn check_patch(patch: &ConfigPatch) -> Result<(), ApiError> {
    patch
        .apply(DeploymentConfiguration::default())
        .map(drop)
        .map_err(|e| ApiError::bad_request(e.field, "InvalidParameter", e.reason))
}

pub fn attributes(field: &str, body: &[AttributeBody]) -> Result<Vec<Attribute>, ApiError> {
    body.iter()
        .enumerate()
        .map(|(i, a)| {
            if a.name.trim().is_empty() {
                Err(ApiError::bad_request(
                    format!("{field}[{i}].name"),
                    "InvalidAttribute",
                    "an attribute needs a name",
                ))
            } else {
                Ok(Attribute {
                    name: a.name.clone(),
                    value: a.value.clone(),
                })
            }
        })
        .collect()
}

/// A request's instance group (`instanceGroup.attributes` and `instanceGroup.query`), checked.
pub fn selection(
    attributes_body: &[AttributeBody],
    query: Option<&str>,
) -> Result<InstanceSelection, ApiError> {
    Ok(InstanceSelection {
        attributes: attributes("instanceGroup.attributes", attributes_body)?,
        query: query
            .map(|q| cluster_query("instanceGroup.query", q))
            .transpose()?,
    })
}

/// How long a request waits for the view to learn every task's group (`task:group`), once after a
/// start: about a second per 100,000 tasks.
pub const TASK_GROUPS_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Waits until the view knows every task's group, or answers 503.
pub async fn task_groups(state: &AppState) -> Result<(), ApiError> {
    if state
        .view
        .task_groups_loaded(&state.store, TASK_GROUPS_WAIT)
        .await
    {
        Ok(())
    } else {
        Err(ApiError::unavailable(
            "TaskGroupsLoading",
            "the groups of every task are still being read (task:group needs them); try again shortly",
        ))
    }
}

/// A cluster query from a request; the error names the field and the column where the query goes
/// wrong.
pub fn cluster_query(field: &str, text: &str) -> Result<Query, ApiError> {
    Query::parse(text).map_err(|e| {
        ApiError::bad_request(
            field,
            "InvalidQuery",
            format!("{text:?} is not a valid cluster query: {e}"),
        )
    })
}

/// The instance group's query as the API shows it (canonical form).
pub fn query_text(group: &InstanceGroup) -> Option<String> {
    group.query.as_ref().map(ToString::to_string)
}

pub fn attribute_bodies(attributes: &[Attribute]) -> Vec<AttributeBody> {
    attributes
        .iter()
        .map(|a| AttributeBody {
            name: a.name.clone(),
            value: a.value.clone(),
        })
        .collect()
}

pub fn config_body(config: &DeploymentConfiguration) -> DeploymentConfigurationBody {
    DeploymentConfigurationBody {
        min_healthy_percent: Some(i64::from(config.min_healthy_percent)),
        max_over_percent: Some(i64::from(config.max_over_percent)),
        min_healthy_seconds: Some(config.min_healthy_seconds as i64),
        failure_threshold: config.failure_threshold.map(|t| t as i64),
        progress_deadline_seconds: Some(config.progress_deadline_seconds as i64),
        auto_rollback: Some(config.auto_rollback),
        stop_on_drain: Some(config.stop_on_drain),
        canary: config.canary.as_ref().map(|c| CanaryBody {
            instances: c.instances.map(|n| n as i64),
            percent: c.percent.map(i64::from),
            query: c.query.as_ref().map(ToString::to_string),
            auto_promote: Some(c.auto_promote),
        }),
        alarms: Some(config.alarms.clone()),
        coverage_grace_seconds: Some(config.coverage_grace_seconds as i64),
    }
}

fn control(state: &AppState) -> Result<&dyn blox_aws::EcsControl, ApiError> {
    state.control.as_deref().ok_or_else(|| {
        ApiError::unavailable(
            "NoEcs",
            "this server has no ECS connection to check and run environments with",
        )
    })
}

fn ecs_unavailable(operation: &str, err: &blox_aws::EcsError) -> ApiError {
    tracing::warn!(operation, error = %err, "ECS check failed");
    ApiError::unavailable(
        "EcsUnavailable",
        format!("ECS {operation} failed; see the server log"),
    )
}

/// The cluster (name or ARN), if ECS knows it and it is ACTIVE: its name and ARN.
pub async fn resolve_cluster(
    state: &AppState,
    field: &str,
    reference: &str,
) -> Result<(ClusterName, String), ApiError> {
    let parsed = parse_cluster(field, reference)?;
    let control = control(state)?;
    let (described, failures) = control
        .describe_clusters(&[reference.to_owned()])
        .await
        .map_err(|e| ecs_unavailable("DescribeClusters", &e))?;
    let Some(cluster) = described.into_iter().next() else {
        let reason = failures
            .first()
            .map(|f| f.reason.clone())
            .unwrap_or_else(|| "MISSING".to_owned());
        return Err(ApiError::not_found(
            "ClusterNotFound",
            format!("cluster {reference} not found ({reason})"),
        )
        .with_field(field)
        .resource("cluster", reference));
    };
    if cluster.status != "ACTIVE" {
        return Err(ApiError::not_found(
            "ClusterInactive",
            format!(
                "cluster {} is {}, not ACTIVE",
                cluster.cluster_arn, cluster.status
            ),
        )
        .with_field(field));
    }
    let name = ClusterName::new(&cluster.cluster_name).unwrap_or(parsed.name);
    Ok((name, cluster.cluster_arn))
}

/// The task definition, if ECS knows it and it is ACTIVE: its ARN and whether it has health checks.
pub async fn resolve_task_definition(
    state: &AppState,
    field: &str,
    task_definition: &str,
) -> Result<TaskDefinitionRef, ApiError> {
    let control = control(state)?;
    match control.describe_task_definition(task_definition).await {
        Ok(description) if description.status == "ACTIVE" => Ok(TaskDefinitionRef {
            health_checks: description.has_health_checks(),
            arn: description.arn,
        }),
        Ok(description) => Err(ApiError::not_found(
            "TaskDefinitionInactive",
            format!(
                "task definition {} is {}, not ACTIVE",
                description.arn, description.status
            ),
        )
        .with_field(field)),
        Err(err) => match &err.kind {
            // ECS's text stays in the log: a ClientException can be about the caller's permissions.
            EcsErrorKind::Rejected { .. } => {
                tracing::info!(task_definition, error = %err, "ECS refused DescribeTaskDefinition");
                Err(ApiError::not_found(
                    "TaskDefinitionNotFound",
                    format!("task definition {task_definition} not found"),
                )
                .with_field(field))
            }
            _ => Err(ecs_unavailable("DescribeTaskDefinition", &err)),
        },
    }
}

/// An update's body (both APIs take the same), checked; what needs ECS is resolved by
/// [`UpdateRequest::resolve`], after the environment was found.
pub struct UpdateRequest {
    task_definition: Option<String>,
    update: UpdateEnvironment,
}

impl UpdateRequest {
    pub fn parse(body: &[u8]) -> Result<UpdateRequest, ApiError> {
        let request: blox_api::UpdateEnvironment = parse_body(body)?;
        let configuration = patch(request.deployment_configuration.as_ref())?;
        check_patch(&configuration)?;
        Ok(UpdateRequest {
            task_definition: request
                .task_definition
                .as_deref()
                .map(|td| non_empty("taskDefinition", td, "a family, family:revision or ARN"))
                .transpose()?,
            update: UpdateEnvironment {
                task_definition: None,
                instance_group: request
                    .instance_group
                    .as_ref()
                    .map(|g| selection(&g.attributes, g.query.as_deref()))
                    .transpose()?,
                method: method("deploymentMethod", request.deployment_method.as_deref())?,
                configuration,
                base_revision: request.base_revision_id.map(|r| r.0),
            },
        })
    }

    /// The update with its task definition checked against ECS.
    pub async fn resolve(self, state: &AppState) -> Result<UpdateEnvironment, ApiError> {
        let mut update = self.update;
        if let Some(td) = self.task_definition {
            update.task_definition = Some(resolve_task_definition(state, "taskDefinition", &td).await?);
        }
        Ok(update)
    }
}

/// Fresh values for a command: the time, a deployment id and a v0.3 token.
pub struct Ids {
    pub now_ms: u64,
    pub deployment_id: String,
    pub token: String,
}

impl Ids {
    pub fn new() -> Ids {
        Ids {
            now_ms: clock::now_unix_ms(),
            deployment_id: uuid::Uuid::new_v4().to_string(),
            token: uuid::Uuid::new_v4().to_string(),
        }
    }

    pub fn fresh(&self) -> Fresh<'_> {
        Fresh {
            now_ms: self.now_ms,
            deployment_id: &self.deployment_id,
            token: &self.token,
        }
    }
}

/// Creates an environment; names are unique across clusters (the store reserves them: see
/// `environments::cas`).
pub async fn create(state: &AppState, request: CreateEnvironment, ids: &Ids) -> Result<Stored, ApiError> {
    let name = request.name.clone();
    let mut request = Some(request);
    environments::cas(state.store.as_ref(), &name, Depth::Documents, |stored| {
        let request = request
            .take()
            .ok_or_else(|| daemon::CommandError::Exists { name: name.clone() })?;
        let changes = lifecycle::create_environment(stored.map(Stored::environment), request, ids.fresh())?;
        Ok((changes, ()))
    })
    .await?;
    reload(state, &name).await
}

/// The environment as stored now (after a command).
pub async fn reload(state: &AppState, name: &str) -> Result<Stored, ApiError> {
    environments::load(state.store.as_ref(), name, Depth::Documents)
        .await?
        .ok_or_else(|| ApiError::missing(lifecycle::Resource::Environment, name))
}

/// Runs a command on an existing environment (404 when there is none) and returns it as stored after.
pub async fn command(
    state: &AppState,
    name: &str,
    depth: Depth,
    mut decide: impl FnMut(&Snapshot) -> Result<lifecycle::Changes, daemon::CommandError>,
) -> Result<Option<Stored>, ApiError> {
    environments::cas(state.store.as_ref(), name, depth, |stored| {
        let stored = stored.ok_or_else(|| daemon::CommandError::NotFound {
            resource: lifecycle::Resource::Environment,
            id: name.to_owned(),
        })?;
        Ok((decide(&stored.snapshot)?, ()))
    })
    .await?;
    environments::load(state.store.as_ref(), name, Depth::Documents)
        .await
        .map_err(ApiError::from)
}

/// The environment of that name, or 404.
pub async fn require(state: &AppState, name: &str) -> Result<Stored, ApiError> {
    reload(state, name).await
}

/// What the view says of an environment right now.
pub struct Live {
    /// The plan of its active deployment (counts, fleet, health).
    pub plan: Plan,
    pub health: (Health, Option<String>),
    /// Failure records of its deployments, by deployment id.
    pub failures: HashMap<String, Vec<InstanceFailure>>,
    /// Counts by task definition (of every revision's).
    pub by_task_definition: HashMap<String, Counts>,
}

impl Live {
    /// The active revision's uncovered instances.
    pub fn uncovered(&self) -> Vec<UncoveredInstance> {
        self.plan
            .uncovered
            .iter()
            .map(|u| UncoveredInstance {
                container_instance_arn: u.instance_arn.clone(),
                since: rfc3339_millis(u.since_ms),
            })
            .collect()
    }

    /// Live counts of a revision: `desired` only for the active one.
    pub fn revision_counts(&self, revision: &Revision, active: Option<&Deployment>) -> TaskCounts {
        let counts = self
            .by_task_definition
            .get(&revision.task_definition)
            .copied()
            .unwrap_or_default();
        let desired = if active.is_some_and(|d| d.revision == revision.number) {
            self.plan.counts.desired
        } else {
            0
        };
        TaskCounts {
            desired,
            healthy: counts.healthy,
            total: counts.total,
        }
    }

    /// Live counts of the active deployment, recorded ones of the others.
    pub fn deployment_counts(&self, deployment: &Deployment, active: Option<&Deployment>) -> TaskCounts {
        let counts = if active.is_some_and(|a| a.id == deployment.id) {
            self.plan.counts
        } else {
            deployment.counts
        };
        task_counts(counts)
    }

    pub fn failures_of(&self, deployment: &str) -> &[InstanceFailure] {
        self.failures.get(deployment).map_or(&[], Vec::as_slice)
    }
}

pub fn task_counts(counts: Counts) -> TaskCounts {
    TaskCounts {
        desired: counts.desired,
        healthy: counts.healthy,
        total: counts.total,
    }
}

/// Plans the environment against the view (the same planner the executor runs), for its counts.
pub fn live(state: &AppState, stored: &Stored) -> Live {
    want_task_groups(state, stored);
    live_in(&state.view.read(), stored)
}

/// Starts loading every task's group when the environment's instance group reads them.
pub fn want_task_groups(state: &AppState, stored: &Stored) {
    if stored.snapshot.reads_task_groups() {
        // Counts read before every task's group is known may be off for a moment; the executor
        // waits for them before it plans.
        state.view.task_groups(&state.store);
    }
}

/// [`live`] within a read of the view (after [`want_task_groups`]).
pub fn live_in(view: &crate::view::ViewState, stored: &Stored) -> Live {
    live_with(view, stored, true)
}

/// [`live_in`] without the counts of the revisions that are not active (their plans): for answers
/// that show only the active deployment's. `by_task_definition` then holds the active one's alone.
pub fn active_in(view: &crate::view::ViewState, stored: &Stored) -> Live {
    live_with(view, stored, false)
}

fn live_with(view: &crate::view::ViewState, stored: &Stored, every_revision: bool) -> Live {
    let snapshot = &stored.snapshot;
    let env = stored.environment();
    let ids = snapshot.deployment_ids();
    let mut failures: HashMap<String, Vec<InstanceFailure>> = HashMap::new();
    for entry in view.failures.values() {
        if ids.contains(&entry.doc.deployment_id.as_str()) {
            failures
                .entry(entry.doc.deployment_id.clone())
                .or_default()
                .push((*entry.doc).clone());
        }
    }
    let intents: Vec<IntentState<'_>> = view
        .intents
        .values()
        .filter(|e| ids.contains(&e.doc.deployment_id.as_str()))
        .map(|e| IntentState {
            intent: &e.doc,
            verify_at_ms: u64::MAX,
        })
        .collect();
    let checked = snapshot.health_checked();
    let empty = daemon::ClusterView::default();
    let cluster = view.clusters.get(&stored.cluster).unwrap_or(&empty);
    let now = clock::now_unix_ms();
    let active_deployment = snapshot.active();
    let plan_for = |deployment: &Deployment, revision: &Revision| {
        let failures_of: Vec<&InstanceFailure> = failures.get(&deployment.id).into_iter().flatten().collect();
        daemon::plan(&PlanInput {
            environment: env,
            active: Some(Active { deployment, revision }),
            deployment_ids: &ids,
            health_checked: &checked,
            cluster,
            intents: &intents,
            failures: &failures_of,
            now_ms: now,
        })
    };
    let plan = match active_deployment.and_then(|d| Some((d, snapshot.revision(d.revision)?))) {
        Some((deployment, revision)) => plan_for(deployment, revision),
        None => Plan::default(),
    };
    // Other task definitions are counted as if they were the target.
    let mut by_task_definition = HashMap::new();
    for revision in &snapshot.revisions {
        if by_task_definition.contains_key(&revision.task_definition) {
            continue;
        }
        let counts = match active_deployment {
            Some(d) if d.task_definition == revision.task_definition => plan.counts,
            _ if !every_revision => continue,
            _ => {
                // A deployment that exists only to count the revision's tasks.
                let probe = Deployment {
                    status: daemon::DeploymentStatus::Completed,
                    ..Deployment::new(String::new(), revision, 0)
                };
                plan_for(&probe, revision).counts
            }
        };
        by_task_definition.insert(revision.task_definition.clone(), counts);
    }
    let health = daemon::health(active_deployment, &plan);
    Live {
        plan,
        health,
        failures,
        by_task_definition,
    }
}

pub fn failure_bodies(failures: &[InstanceFailure]) -> Vec<InstanceFailureBody> {
    let mut bodies: Vec<InstanceFailureBody> = failures
        .iter()
        .map(|f| InstanceFailureBody {
            container_instance_arn: f.instance_arn.clone(),
            reason: f.reason.clone(),
            attempts: f.attempts,
            last_at: rfc3339_millis(f.last_at_ms),
            retry_at: rfc3339_millis(f.retry_at_ms),
        })
        .collect();
    bodies.sort_by(|a, b| a.container_instance_arn.cmp(&b.container_instance_arn));
    bodies
}

pub fn history_bodies(deployment: &Deployment) -> Vec<TransitionBody> {
    deployment
        .history
        .iter()
        .map(|t| TransitionBody {
            status: t.status.name().to_owned(),
            at: rfc3339_millis(t.at),
            reason: t.reason.clone(),
        })
        .collect()
}

/// The environment's deployments, newest first.
pub fn newest_first(snapshot: &Snapshot) -> Vec<&Deployment> {
    let mut deployments: Vec<&Deployment> = snapshot.deployments.iter().collect();
    deployments.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    deployments
}

/// `terminateTasks`: `true` or `false`.
pub fn terminate_tasks(value: Option<&str>) -> Result<bool, ApiError> {
    bool_param("terminateTasks", value).map_err(|e| ApiError {
        code: "InvalidTerminateTasks",
        ..e
    })
}

/// A boolean query parameter, `true` or `false` (absent: false).
pub fn bool_param(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            name,
            "InvalidParameter",
            format!("invalid {name} {other:?}: expected true or false"),
        )),
    }
}

/// Maps a status code of the v1.0 API onto v0.3's where they differ: v0.3 answered 400 for a name in
/// use.
pub fn v03_status(mut error: ApiError) -> ApiError {
    if error.code == "EnvironmentExists" {
        error.status = StatusCode::BAD_REQUEST;
        error.field = Some("name".to_owned());
    }
    error
}

/// An environment's health as the API writes it.
pub fn health_name(health: Health) -> &'static str {
    match health {
        Health::Healthy => "Healthy",
        Health::Unhealthy => "Unhealthy",
    }
}

/// An environment's status as the API writes it: `Deleting`, `Frozen`, `Inactive` before its first
/// deployment (v1.0's status of a created environment, which has no active revision), else `Active`.
pub fn status_name(stored: &Stored) -> &'static str {
    let env = stored.environment();
    if env.status.is_deleting() {
        "Deleting"
    } else if env.frozen {
        "Frozen"
    } else if stored.snapshot.active().is_some() {
        "Active"
    } else {
        "Inactive"
    }
}
