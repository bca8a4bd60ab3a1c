//! Blox v1.0's environment API (`/v1/{cluster}/environments`): v1.0's paths and JSON names, every
//! operation real (v1.0 left most of them stubs), over the same documents as the v0.3 API. The
//! cluster is a name or, for a cluster named like a static segment (`tasks`, `environments`, …), its
//! ARN.

use std::sync::Arc;

use crate::error::Path;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use blox_api::{
    CreateEnvironment as CreateBody, DeploymentList, DeploymentPlan, DeploymentResponse, DeploymentV1,
    EnvironmentList, EnvironmentResponse, EnvironmentRevision, EnvironmentV1, ErrorBody, InstanceGroup,
    PlannedBatch, PlannedInstance, PlannedStop, RevisionCreated, RevisionId, RevisionList, RevisionResponse,
    RollbackRequest, StartDeploymentAnswer, UpdateEnvironment as UpdateBody,
};
use blox_model::ClusterName;
use blox_model::daemon::lifecycle::{self, CreateEnvironment, DeployTarget, Resource};
use blox_model::daemon::{self, Deployment, PreviewInput, Revision};
use blox_model::emit::rfc3339_millis;
use blox_store::{Cursor, Filter, Kind};

use crate::api::AppState;
use crate::env_api::{self, Ids, Live};
use crate::environments::{self, Depth, Stored};
use crate::error::ApiError;
use crate::query::{Params, encode_token, parse_cluster};

const PAGE: &[&str] = &["maxResults", "nextToken"];

/// The cluster of the path, if blox or ECS knows it; 404 otherwise.
async fn known_cluster(state: &AppState, reference: &str) -> Result<ClusterName, ApiError> {
    let cluster = parse_cluster("cluster", reference)?.name;
    for kind in [Kind::Environment, Kind::Instance, Kind::Task] {
        if state.store.clusters(kind).await?.contains(&cluster) {
            return Ok(cluster);
        }
    }
    if let Some(control) = state.control.as_deref() {
        match control.describe_clusters(&[reference.to_owned()]).await {
            Ok((described, _)) if described.iter().any(|c| c.status == "ACTIVE") => return Ok(cluster),
            Ok(_) => {}
            // Not knowing is not "not found".
            Err(err) => {
                tracing::warn!(cluster = reference, error = %err, "ECS DescribeClusters failed");
                return Err(ApiError::unavailable(
                    "EcsUnavailable",
                    "ECS DescribeClusters failed; see the server log",
                ));
            }
        }
    }
    Err(
        ApiError::not_found("ClusterNotFound", format!("cluster {reference} not found"))
            .with_field("cluster")
            .resource("cluster", reference),
    )
}

/// The environment of the path, in the path's cluster.
async fn require(state: &AppState, cluster: &str, name: &str) -> Result<Stored, ApiError> {
    let cluster = known_cluster(state, cluster).await?;
    let stored = env_api::require(state, name).await?;
    if stored.cluster != cluster {
        return Err(ApiError::missing(Resource::Environment, name));
    }
    Ok(stored)
}

fn revision_number(field: &str, value: &str) -> Result<u64, ApiError> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ApiError::bad_request(
            field,
            "InvalidRevisionId",
            format!("invalid {field} {value:?}: a revision number from 1"),
        )),
    }
}

/// List the cluster's environments by name.
#[utoipa::path(get, path = "/v1/{cluster}/environments", tag = "environments (v1.0)",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$"),
        ("environmentNamePrefix" = Option<String>, Query, description = "Only names starting with this"),
        ("maxResults" = Option<u32>, Query, description = "Page size, 1 to 10,000", minimum = 1, maximum = 10000),
        ("nextToken" = Option<String>, Query, description = "nextToken of the previous page", pattern = r"^([A-Za-z0-9_-]{4})*([A-Za-z0-9_-]{2,3})?$", min_length = 2)),
    responses((status = 200, body = EnvironmentList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_environments(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<EnvironmentList>, ApiError> {
    let params = Params::parse(
        query.as_deref(),
        &["environmentNamePrefix", "maxResults", "nextToken"],
    )?;
    let prefix = params.get("environmentNamePrefix").unwrap_or_default().to_owned();
    let limit = params.max_results()?;
    let after = params
        .next_token()?
        .map(|c| String::from_utf8_lossy(&c.0).into_owned());
    let cluster = known_cluster(&state, &cluster).await?;
    let filter = Filter {
        cluster: Some(cluster),
        ..Filter::default()
    };
    let mut names: Vec<String> = environments::list_all(state.store.as_ref(), Kind::Environment, &filter)
        .await?
        .into_iter()
        .map(|r| r.doc.key.id)
        .filter(|n| n.starts_with(&prefix) && after.as_ref().is_none_or(|a| n > a))
        .collect();
    names.sort();
    let next_token = cut_page(&mut names, limit, |n| n.as_bytes().to_vec());
    let mut environments = Vec::with_capacity(names.len());
    for name in &names {
        if let Some(stored) = environments::load(state.store.as_ref(), name, Depth::Documents).await? {
            environments.push(environment_body(&state, &stored));
        }
    }
    Ok(Json(EnvironmentList {
        environment_names: environments.iter().map(|e| e.environment_name.clone()).collect(),
        environments,
        next_token,
    }))
}

/// Create an environment (revision 1); nothing runs until it is deployed.
#[utoipa::path(post, path = "/v1/{cluster}/environments", tag = "environments (v1.0)",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$")),
    request_body = CreateBody,
    responses((status = 200, body = RevisionCreated), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_environment(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<RevisionCreated>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    parse_cluster("cluster", &cluster)?;
    let request: CreateBody = env_api::parse_body(&body)?;
    daemon::validate_environment_name(&request.environment_name)
        .map_err(|e| ApiError::bad_request("environmentName", "InvalidName", e.reason))?;
    if let Some(kind) = request.environment_type.as_deref()
        && !kind.eq_ignore_ascii_case("Daemon")
    {
        return Err(ApiError::bad_request(
            "environmentType",
            "InvalidEnvironmentType",
            format!("{kind:?} is not an environment type blox runs: Daemon"),
        ));
    }
    let task_definition = env_api::non_empty(
        "taskDefinition",
        &request.task_definition,
        "a family, family:revision or ARN",
    )?;
    let method = env_api::method("deploymentMethod", request.deployment_method.as_deref())?;
    let configuration = env_api::patch(request.deployment_configuration.as_ref())?;
    env_api::check_patch(&configuration)?;
    let instance_group = env_api::selection(
        request.instance_group.as_ref().map_or(&[][..], |g| &g.attributes),
        request.instance_group.as_ref().and_then(|g| g.query.as_deref()),
    )?;
    let (cluster, cluster_arn) = env_api::resolve_cluster(&state, "cluster", &cluster).await?;
    let task_definition =
        env_api::resolve_task_definition(&state, "taskDefinition", &task_definition).await?;
    let ids = Ids::new();
    let stored = env_api::create(
        &state,
        CreateEnvironment {
            name: request.environment_name,
            cluster,
            cluster_arn,
            task_definition,
            instance_group,
            method,
            configuration,
        },
        &ids,
    )
    .await?;
    Ok(Json(RevisionCreated {
        environment_revision_id: RevisionId(stored.environment().latest_revision),
        environment: environment_body(&state, &stored),
    }))
}

/// Describe an environment.
#[utoipa::path(get, path = "/v1/{cluster}/environments/{environmentName}", tag = "environments (v1.0)",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$"),
        ("environmentName" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$")),
    responses((status = 200, body = EnvironmentResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn describe_environment(
    State(state): State<Arc<AppState>>,
    Path((cluster, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<EnvironmentResponse>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let stored = require(&state, &cluster, &name).await?;
    Ok(Json(EnvironmentResponse {
        environment: environment_body(&state, &stored),
    }))
}

/// Update an environment: a new revision made of the latest and the fields given (`baseRevisionId`, if
/// given, must be the latest: 409 otherwise). Nothing is deployed.
#[utoipa::path(put, path = "/v1/{cluster}/environments/{environmentName}", tag = "environments (v1.0)",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$"),
        ("environmentName" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$")),
    request_body = UpdateBody,
    responses((status = 200, body = RevisionCreated), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn update_environment(
    State(state): State<Arc<AppState>>,
    Path((cluster, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<RevisionCreated>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let request = env_api::UpdateRequest::parse(&body)?;
    require(&state, &cluster, &name).await?;
    let update = request.resolve(&state).await?;
    let ids = Ids::new();
    // The revision this request made (a concurrent update may have made a later one since).
    let made = std::sync::atomic::AtomicU64::new(0);
    let stored = env_api::command(&state, &name, Depth::Documents, |snapshot| {
        let changes = lifecycle::update_environment(snapshot, update.clone(), ids.fresh())?;
        for doc in &changes.put {
            if let daemon::Doc::Revision(r) = doc {
                made.store(r.number, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(changes)
    })
    .await?
    .ok_or_else(|| ApiError::missing(Resource::Environment, &name))?;
    Ok(Json(RevisionCreated {
        environment_revision_id: RevisionId(made.load(std::sync::atomic::Ordering::Relaxed)),
        environment: environment_body(&state, &stored),
    }))
}

/// Delete an environment: at once (tasks left running), or with `terminateTasks=true` once the
/// scheduler has stopped its tasks (`environmentStatus` `Deleting` until then).
#[utoipa::path(delete, path = "/v1/{cluster}/environments/{environmentName}", tag = "environments (v1.0)",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$"),
        ("environmentName" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$"),
        ("terminateTasks" = Option<bool>, Query, description = "Stop the environment's tasks first (default false)"),
        ("forceDelete" = Option<bool>, Query, description = "v1.0's name for terminateTasks")),
    responses((status = 200, body = EnvironmentResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_environment(
    State(state): State<Arc<AppState>>,
    Path((cluster, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<EnvironmentResponse>, ApiError> {
    let params = Params::parse(query.as_deref(), &["terminateTasks", "forceDelete"])?;
    // v1.0's `forceDelete` (never acted on there) is taken as `terminateTasks`: force the tasks out.
    let terminate_tasks = env_api::terminate_tasks(params.get("terminateTasks"))?
        || env_api::bool_param("forceDelete", params.get("forceDelete"))?;
    let before = require(&state, &cluster, &name).await?;
    let mut body = environment_body(&state, &before);
    let now = crate::clock::now_unix_ms();
    env_api::command(&state, &name, Depth::Everything, |snapshot| {
        lifecycle::delete(snapshot, terminate_tasks, now)
    })
    .await?;
    body.environment_status = if terminate_tasks { "Deleting" } else { "Deleted" }.to_owned();
    Ok(Json(EnvironmentResponse { environment: body }))
}

/// The environment's revisions, oldest first.
#[utoipa::path(get, path = "/v1/{cluster}/environments/{environmentName}/revisions", tag = "environments (v1.0)",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$"),
        ("environmentName" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$"),
        ("maxResults" = Option<u32>, Query, description = "Page size, 1 to 10,000", minimum = 1, maximum = 10000),
        ("nextToken" = Option<String>, Query, description = "nextToken of the previous page", pattern = r"^([A-Za-z0-9_-]{4})*([A-Za-z0-9_-]{2,3})?$", min_length = 2)),
    responses((status = 200, body = RevisionList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_revisions(
    State(state): State<Arc<AppState>>,
    Path((cluster, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<RevisionList>, ApiError> {
    let params = Params::parse(query.as_deref(), PAGE)?;
    let limit = params.max_results()?;
    let after = params.next_token()?.map(|c| cursor_number(&c));
    let stored = require(&state, &cluster, &name).await?;
    let live = env_api::live(&state, &stored);
    let mut revisions: Vec<&Revision> = stored
        .snapshot
        .revisions
        .iter()
        .filter(|r| after.is_none_or(|a| r.number > a))
        .collect();
    revisions.sort_by_key(|r| r.number);
    let next_token = cut_page(&mut revisions, limit, |r| r.number.to_be_bytes().to_vec());
    let revisions: Vec<EnvironmentRevision> = revisions
        .into_iter()
        .map(|r| revision_body(&stored, &live, r))
        .collect();
    Ok(Json(RevisionList {
        revision_ids: revisions.iter().map(|r| r.environment_revision_id).collect(),
        revisions,
        next_token,
    }))
}

/// Cuts `items` to a page of `limit`; the token of the next page, if there is one, is the cursor of
/// the page's last item.
fn cut_page<T>(items: &mut Vec<T>, limit: Option<usize>, cursor: impl Fn(&T) -> Vec<u8>) -> Option<String> {
    let limit = limit.filter(|&l| items.len() > l)?;
    items.truncate(limit);
    items.last().map(|last| encode_token(&Cursor(cursor(last))))
}

fn cursor_number(cursor: &Cursor) -> u64 {
    let mut bytes = [0u8; 8];
    let n = cursor.0.len().min(8);
    bytes[8 - n..].copy_from_slice(&cursor.0[cursor.0.len() - n..]);
    u64::from_be_bytes(bytes)
}

/// Describe a revision, with live counts.
#[utoipa::path(get, path = "/v1/{cluster}/environments/{environmentName}/revisions/{environmentRevisionId}",
    tag = "environments (v1.0)",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$"),
        ("environmentName" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$"),
        ("environmentRevisionId" = String, Path, description = "The revision's number", pattern = r"^[1-9][0-9]{0,17}$")),
    responses((status = 200, body = RevisionResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn describe_revision(
    State(state): State<Arc<AppState>>,
    Path((cluster, name, revision)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<RevisionResponse>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let number = revision_number("environmentRevisionId", &revision)?;
    let stored = require(&state, &cluster, &name).await?;
    let revision = stored
        .snapshot
        .revision(number)
        .ok_or_else(|| ApiError::missing(Resource::Revision, &revision))?;
    let live = env_api::live(&state, &stored);
    Ok(Json(RevisionResponse {
        environment_revision: revision_body(&stored, &live, revision),
    }))
}

/// Start a deployment of revision `revisionId`; a revision older than the active one needs
/// `rollback=true`. A deployment in progress is superseded (rolled back, for a rollback).
#[utoipa::path(post, path = "/v1/{cluster}/environments/{environmentName}/deployments", tag = "environments (v1.0)",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$"),
        ("environmentName" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$"),
        ("revisionId" = String, Query, description = "The revision to deploy", pattern = r"^[1-9][0-9]{0,17}$"),
        ("rollback" = Option<bool>, Query, description = "Required to deploy a revision older than the active one"),
        ("dryRun" = Option<bool>, Query, description = "Answer the deployment's plan (a DeploymentPlan) instead of starting it")),
    responses((status = 200, body = StartDeploymentAnswer), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn start_deployment(
    State(state): State<Arc<AppState>>,
    Path((cluster, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<StartDeploymentAnswer>, ApiError> {
    let params = Params::parse(query.as_deref(), &["revisionId", "rollback", "dryRun"])?;
    let number = match params.get("revisionId") {
        Some(value) => revision_number("revisionId", value)?,
        None => {
            return Err(ApiError::bad_request(
                "revisionId",
                "MissingRevisionId",
                "revisionId is required: the number of the revision to deploy",
            ));
        }
    };
    let rollback = match params.get("rollback") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "rollback",
                "InvalidRollback",
                format!("invalid rollback {other:?}: expected true or false"),
            ));
        }
    };
    let dry_run = match params.get("dryRun") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "dryRun",
                "InvalidDryRun",
                format!("invalid dryRun {other:?}: expected true or false"),
            ));
        }
    };
    require(&state, &cluster, &name).await?;
    let ids = Ids::new();
    let target = DeployTarget::Revision { number, rollback };
    if dry_run {
        // The plan of a group or canary that reads task:group needs every task's group.
        let reads_groups = crate::environments::from_view(&state.view.read(), &name)
            .and_then(|stored| stored.snapshot.revision(number).map(Revision::reads_task_groups))
            .unwrap_or(false);
        if reads_groups {
            env_api::task_groups(&state).await?;
        }
        return deployment_plan(&state, &name, target, &ids)
            .map(|plan| Json(StartDeploymentAnswer::Plan(Box::new(plan))));
    }
    deployment_command(&state, &name, &ids, |snapshot| {
        lifecycle::deploy(snapshot, target.clone(), ids.fresh())
    })
    .await
    .map(|Json(started)| Json(StartDeploymentAnswer::Started(Box::new(started))))
}

/// A deployment's plan: the deploy command checked as if it were run (same errors), then the
/// planner's preview over the view. Nothing is written.
fn deployment_plan(
    state: &AppState,
    name: &str,
    target: DeployTarget,
    ids: &Ids,
) -> Result<DeploymentPlan, ApiError> {
    let view = state.view.read();
    let stored = crate::environments::from_view(&view, name)
        .ok_or_else(|| ApiError::missing(Resource::Environment, name))?;
    let snapshot = &stored.snapshot;
    lifecycle::deploy(snapshot, target.clone(), ids.fresh()).map_err(ApiError::from)?;
    let DeployTarget::Revision { number, rollback } = target else {
        unreachable!("the v1.0 API deploys revisions by number")
    };
    let revision = snapshot
        .revision(number)
        .ok_or_else(|| ApiError::missing(Resource::Revision, &number.to_string()))?;
    let empty = blox_model::daemon::ClusterView::default();
    let cluster = view.clusters.get(&stored.cluster).unwrap_or(&empty);
    let deployment_ids = snapshot.deployment_ids();
    let health_checked = snapshot.health_checked();
    let preview = daemon::preview(&PreviewInput {
        environment: stored.environment(),
        revision,
        deployment_ids: &deployment_ids,
        health_checked: &health_checked,
        cluster,
        rollback,
        now_ms: ids.now_ms,
        calls_per_second: state.calls_per_second,
    });
    Ok(DeploymentPlan {
        dry_run: true,
        environment_name: name.to_owned(),
        environment_revision_id: RevisionId(revision.number),
        task_definition: revision.task_definition.clone(),
        deployment_method: revision.deployment_method.name().to_owned(),
        eligible: preview.eligible,
        floor: preview.floor,
        surge: preview.surge,
        canary_instances: preview.canary.clone(),
        instances: preview
            .instances
            .iter()
            .map(|(arn, action, reason)| PlannedInstance {
                container_instance_arn: arn.clone(),
                action: action.name().to_owned(),
                reason: reason.map(|r| r.to_string()),
            })
            .collect(),
        batches: preview
            .batches
            .iter()
            .map(|b| PlannedBatch {
                starts: b.starts.clone(),
                stops: b
                    .stops
                    .iter()
                    .map(|(instance, task, reason)| PlannedStop {
                        task_arn: task.clone(),
                        container_instance_arn: instance.clone(),
                        reason: reason.to_string(),
                    })
                    .collect(),
                after_promotion: b.after_promotion,
            })
            .collect(),
        complete: preview.complete,
        stalled_reason: preview.stalled.clone(),
        start_task_calls: preview.start_calls,
        stop_task_calls: preview.stop_calls,
        calls_per_second: state.calls_per_second,
        estimated_seconds: (preview.estimated_seconds * 10.0).round() / 10.0,
    })
}

/// Roll back: a deployment of the given revision, or by default of the revision of the last deployment
/// that completed before the active one. The deployment it replaces is marked `rolled-back`.
#[utoipa::path(post, path = "/v1/{cluster}/environments/{environmentName}/rollback", tag = "environments (v1.0)",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$"),
        ("environmentName" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$")),
    request_body(content = Option<RollbackRequest>, description = "Optional: the revision to roll back to"),
    responses((status = 200, body = DeploymentResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    Path((cluster, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<DeploymentResponse>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let request: RollbackRequest = env_api::parse_optional_body(&body)?;
    require(&state, &cluster, &name).await?;
    let ids = Ids::new();
    let revision = request.environment_revision_id.map(|r| r.0);
    deployment_command(&state, &name, &ids, |snapshot| {
        lifecycle::rollback(snapshot, revision, ids.fresh())
    })
    .await
}

async fn deployment_command(
    state: &AppState,
    name: &str,
    ids: &Ids,
    decide: impl FnMut(&daemon::Snapshot) -> Result<lifecycle::Changes, daemon::CommandError>,
) -> Result<Json<DeploymentResponse>, ApiError> {
    let stored = env_api::command(state, name, Depth::Documents, decide)
        .await?
        .ok_or_else(|| ApiError::missing(Resource::Environment, name))?;
    let deployment = stored
        .snapshot
        .deployment(&ids.deployment_id)
        .ok_or_else(|| ApiError::missing(Resource::Deployment, &ids.deployment_id))?;
    let live = env_api::live(state, &stored);
    Ok(Json(DeploymentResponse {
        deployment_id: deployment.id.clone(),
        deployment: deployment_body(&stored, &live, deployment),
    }))
}

/// The environment's deployments, newest first.
#[utoipa::path(get, path = "/v1/{cluster}/environments/{environmentName}/deployments", tag = "environments (v1.0)",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$"),
        ("environmentName" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$"),
        ("maxResults" = Option<u32>, Query, description = "Page size, 1 to 10,000", minimum = 1, maximum = 10000),
        ("nextToken" = Option<String>, Query, description = "nextToken of the previous page", pattern = r"^([A-Za-z0-9_-]{4})*([A-Za-z0-9_-]{2,3})?$", min_length = 2)),
    responses((status = 200, body = DeploymentList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_deployments(
    State(state): State<Arc<AppState>>,
    Path((cluster, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<DeploymentList>, ApiError> {
    let params = Params::parse(query.as_deref(), PAGE)?;
    let limit = params.max_results()?;
    let after = params
        .next_token()?
        .map(|c| String::from_utf8_lossy(&c.0).into_owned());
    let stored = require(&state, &cluster, &name).await?;
    let live = env_api::live(&state, &stored);
    let mut deployments = env_api::newest_first(&stored.snapshot);
    if let Some(after) = &after {
        // The token is the last id of the previous page; any other is not a token of this list
        // (starting over would page forever).
        let at = deployments.iter().position(|d| d.id == *after).ok_or_else(|| {
            ApiError::bad_request(
                "nextToken",
                "InvalidNextToken",
                "invalid nextToken: pass back the nextToken of a previous answer unchanged",
            )
        })?;
        deployments.drain(..=at);
    }
    let next_token = cut_page(&mut deployments, limit, |d| d.id.as_bytes().to_vec());
    let deployments: Vec<DeploymentV1> = deployments
        .into_iter()
        .map(|d| deployment_body(&stored, &live, d))
        .collect();
    Ok(Json(DeploymentList {
        deployment_ids: deployments.iter().map(|d| d.deployment_id.clone()).collect(),
        deployments,
        next_token,
    }))
}

/// Describe a deployment: status, counts, failures per instance, history.
#[utoipa::path(get, path = "/v1/{cluster}/environments/{environmentName}/deployments/{deploymentId}",
    tag = "environments (v1.0)",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$"),
        ("environmentName" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$"),
        ("deploymentId" = String, Path, description = "The deployment's id")),
    responses((status = 200, body = DeploymentResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn describe_deployment(
    State(state): State<Arc<AppState>>,
    Path((cluster, name, id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<DeploymentResponse>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let stored = require(&state, &cluster, &name).await?;
    let deployment = stored
        .snapshot
        .deployment(&id)
        .ok_or_else(|| ApiError::missing(Resource::Deployment, &id))?;
    let live = env_api::live(&state, &stored);
    Ok(Json(DeploymentResponse {
        deployment_id: deployment.id.clone(),
        deployment: deployment_body(&stored, &live, deployment),
    }))
}

/// Stop a pending or running deployment: progress halts and tasks are left as they are (409 for a
/// deployment that already ended).
#[utoipa::path(post, path = "/v1/{cluster}/environments/{environmentName}/deployments/{deploymentId}/stop",
    tag = "environments (v1.0)",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$"),
        ("environmentName" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$"),
        ("deploymentId" = String, Path, description = "The deployment's id")),
    responses((status = 200, body = DeploymentResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn stop_deployment(
    State(state): State<Arc<AppState>>,
    Path((cluster, name, id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<DeploymentResponse>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    on_deployment(&state, &cluster, &name, &id, lifecycle::stop).await
}

/// Promote a deployment's canary: the rest of the fleet is rolled out. Allowed while the canary holds
/// the fleet back (awaiting promotion, or before, to cut the wait short); 409 otherwise.
#[utoipa::path(post, path = "/v1/{cluster}/environments/{environmentName}/deployments/{deploymentId}/promote",
    tag = "environments (v1.0)",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$"),
        ("environmentName" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$"),
        ("deploymentId" = String, Path, description = "The deployment's id")),
    responses((status = 200, body = DeploymentResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn promote_deployment(
    State(state): State<Arc<AppState>>,
    Path((cluster, name, id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<DeploymentResponse>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    on_deployment(&state, &cluster, &name, &id, lifecycle::promote).await
}

/// A command on one deployment (`stop`, `promote`), answered with the deployment as it is after.
async fn on_deployment(
    state: &AppState,
    cluster: &str,
    name: &str,
    id: &str,
    command: fn(&daemon::Snapshot, &str, u64) -> Result<lifecycle::Changes, daemon::CommandError>,
) -> Result<Json<DeploymentResponse>, ApiError> {
    require(state, cluster, name).await?;
    let now = crate::clock::now_unix_ms();
    let stored = env_api::command(state, name, Depth::Documents, |snapshot| {
        command(snapshot, id, now)
    })
    .await?
    .ok_or_else(|| ApiError::missing(Resource::Environment, name))?;
    let deployment = stored
        .snapshot
        .deployment(id)
        .ok_or_else(|| ApiError::missing(Resource::Deployment, id))?;
    let live = env_api::live(state, &stored);
    Ok(Json(DeploymentResponse {
        deployment_id: deployment.id.clone(),
        deployment: deployment_body(&stored, &live, deployment),
    }))
}

/// Freeze an environment: deployments are still taken, but nothing is started, stopped or restarted
/// until it is thawed.
#[utoipa::path(post, path = "/v1/{cluster}/environments/{environmentName}/freeze", tag = "environments (v1.0)",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$"),
        ("environmentName" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$")),
    responses((status = 200, body = EnvironmentResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn freeze(
    State(state): State<Arc<AppState>>,
    Path((cluster, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<EnvironmentResponse>, ApiError> {
    set_frozen(state, cluster, name, query, true).await
}

/// Thaw a frozen environment: the scheduler acts again.
#[utoipa::path(post, path = "/v1/{cluster}/environments/{environmentName}/thaw", tag = "environments (v1.0)",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$"),
        ("environmentName" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$")),
    responses((status = 200, body = EnvironmentResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn thaw(
    State(state): State<Arc<AppState>>,
    Path((cluster, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<EnvironmentResponse>, ApiError> {
    set_frozen(state, cluster, name, query, false).await
}

async fn set_frozen(
    state: Arc<AppState>,
    cluster: String,
    name: String,
    query: Option<String>,
    frozen: bool,
) -> Result<Json<EnvironmentResponse>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    require(&state, &cluster, &name).await?;
    let now = crate::clock::now_unix_ms();
    let stored = env_api::command(&state, &name, Depth::Documents, |snapshot| {
        lifecycle::freeze(snapshot, frozen, now)
    })
    .await?
    .ok_or_else(|| ApiError::missing(Resource::Environment, &name))?;
    Ok(Json(EnvironmentResponse {
        environment: environment_body(&state, &stored),
    }))
}

pub fn environment_body(state: &AppState, stored: &Stored) -> EnvironmentV1 {
    environment_body_with(stored, &env_api::live(state, stored))
}

/// [`environment_body`] from counts already planned.
pub fn environment_body_with(stored: &Stored, live: &Live) -> EnvironmentV1 {
    let env = stored.environment();
    let latest = stored.snapshot.latest_revision();
    let active = stored.snapshot.active();
    let (health, health_reason) = live.health.clone();
    EnvironmentV1 {
        environment_name: env.name.clone(),
        cluster: env.cluster.to_string(),
        cluster_arn: env.cluster_arn.clone(),
        environment_type: "Daemon".to_owned(),
        environment_health: env_api::health_name(health).to_owned(),
        health_reason,
        environment_status: env_api::status_name(stored).to_owned(),
        deployment_method: latest
            .map(|r| r.deployment_method)
            .unwrap_or_default()
            .name()
            .to_owned(),
        deployment_configuration: env_api::config_body(
            &latest
                .map(|r| r.deployment_configuration.clone())
                .unwrap_or_default(),
        ),
        task_definition: latest.map(|r| r.task_definition.clone()).unwrap_or_default(),
        instance_group: InstanceGroup {
            attributes: latest
                .map(|r| env_api::attribute_bodies(&r.instance_group.attributes))
                .unwrap_or_default(),
            query: latest.and_then(|r| env_api::query_text(&r.instance_group)),
        },
        active_environment_revision_id: active.map(|d| RevisionId(d.revision)),
        latest_environment_revision_id: RevisionId(env.latest_revision),
        active_deployment_id: env.active_deployment.clone(),
        counts: env_api::task_counts(live.plan.counts),
        uncovered: live.plan.uncovered.len() as u64,
        uncovered_instances: live.uncovered(),
        created_at: rfc3339_millis(env.created_at),
        updated_at: rfc3339_millis(env.updated_at),
    }
}

pub fn revision_body(stored: &Stored, live: &Live, revision: &Revision) -> EnvironmentRevision {
    EnvironmentRevision {
        environment_revision_id: RevisionId(revision.number),
        environment_name: revision.environment.clone(),
        task_definition: revision.task_definition.clone(),
        health_checks: revision.health_checks,
        instance_group: InstanceGroup {
            attributes: env_api::attribute_bodies(&revision.instance_group.attributes),
            query: env_api::query_text(&revision.instance_group),
        },
        deployment_method: revision.deployment_method.name().to_owned(),
        deployment_configuration: env_api::config_body(&revision.deployment_configuration),
        counts: live.revision_counts(revision, stored.snapshot.active()),
        created_at: rfc3339_millis(revision.created_at),
    }
}

pub fn deployment_body(stored: &Stored, live: &Live, deployment: &Deployment) -> DeploymentV1 {
    let active = stored.snapshot.active();
    let is_active = active.is_some_and(|a| a.id == deployment.id);
    let config = stored
        .snapshot
        .revision(deployment.revision)
        .map(|r| r.deployment_configuration.clone())
        .unwrap_or_default();
    let failures = live.failures_of(&deployment.id);
    let failed_attempts = if is_active {
        live.plan.failed_attempts
    } else {
        failures
            .iter()
            .map(|f| f.attempts)
            .sum::<u64>()
            .max(deployment.failed_attempts)
    };
    let eligible = if is_active {
        live.plan.fleet.eligible
    } else {
        deployment.counts.desired
    };
    DeploymentV1 {
        deployment_id: deployment.id.clone(),
        environment_name: deployment.environment.clone(),
        status: deployment.status.name().to_owned(),
        status_reason: deployment.reason().map(str::to_owned),
        environment_revision_id: RevisionId(deployment.revision),
        new_target_revision_id: RevisionId(deployment.revision),
        old_target_revision_id: deployment.previous_revision.map(RevisionId),
        task_definition: deployment.task_definition.clone(),
        timestamp: deployment.created_at,
        rollback: deployment.rollback,
        rollback_of: deployment.rollback_of.clone(),
        rolled_back_by: deployment.rolled_back_by.clone(),
        superseded_by: deployment.superseded_by.clone(),
        counts: live.deployment_counts(deployment, active),
        failed_attempts,
        failure_threshold: config.failure_threshold(eligible),
        failures: env_api::failure_bodies(failures),
        history: env_api::history_bodies(deployment),
        created_at: rfc3339_millis(deployment.created_at),
        started_at: deployment.started_at.map(rfc3339_millis),
        ended_at: deployment.ended_at.map(rfc3339_millis),
        canary_instances: deployment.canary_instances.clone(),
        promoted_at: deployment.promoted_at.map(rfc3339_millis),
    }
}
