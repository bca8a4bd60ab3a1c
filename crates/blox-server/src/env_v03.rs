//! Blox v0.3's daemon-scheduler API (`/v1/environments`), a view of the same environments, revisions and
//! deployments as the v1.0 API: same paths, JSON names and statuses as v0.3, with what it lacked
//! added. A `deploymentToken` is renewed by `PUT` (a new revision), so an environment can be deployed
//! again and again; a deployment supersedes one in progress; `DELETE` is final at once unless
//! `terminateTasks=true` asks for the tasks to be stopped first.

use std::sync::Arc;

use crate::error::Path;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::IntoResponse;
use blox_api::{
    CreateEnvironmentRequest, DeleteEnvironmentResponse, Deployment as ApiDeployment, DeploymentCounts,
    DeploymentFailure, Deployments, Environment as ApiEnvironment, Environments, ErrorBody,
    InstanceGroupBody,
};
use blox_model::daemon::lifecycle::{self, CreateEnvironment, DeployTarget, Resource};
use blox_model::daemon::{self, Deployment, Health};
use blox_model::emit::rfc3339_millis;
use blox_store::{Filter, Kind};

use crate::api::AppState;
use crate::env_api::{self, Ids, Live};
use crate::environments::{self, Depth, Stored};
use crate::error::ApiError;
use crate::query::{Params, parse_cluster};

/// The server is alive (v0.3's ping: 200, an empty body with a JSON content type).
#[utoipa::path(get, path = "/v1/ping", tag = "daemon scheduler (v0.3)",
    responses((status = 200, description = "the server is alive; the body is empty, as v0.3's was")))]
pub async fn ping() -> impl IntoResponse {
    [(header::CONTENT_TYPE, "application/json")]
}

fn not_exist(name: &str) -> ApiError {
    ApiError::missing(Resource::Environment, name).v03(format!("Environment {name} does not exist"))
}

async fn require(state: &AppState, name: &str) -> Result<Stored, ApiError> {
    env_api::require(state, name).await.map_err(|e| {
        if e.code == "EnvironmentNotFound" {
            not_exist(name)
        } else {
            e
        }
    })
}

/// Create an environment; its cluster and task definition are checked against ECS. Answers 200 (as
/// v0.3 did) with the environment and its first `deploymentToken`; 400 when the name is taken.
#[utoipa::path(post, path = "/v1/environments", tag = "daemon scheduler (v0.3)",
    request_body = CreateEnvironmentRequest,
    responses((status = 200, body = blox_api::Environment), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_environment(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<ApiEnvironment>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let request: CreateEnvironmentRequest = env_api::parse_body(&body)?;
    daemon::validate_environment_name(&request.name)
        .map_err(|e| ApiError::bad_request("name", "InvalidName", e.reason))?;
    let cluster = env_api::non_empty(
        "instanceGroup.cluster",
        &request.instance_group.cluster,
        "a cluster name or ARN",
    )?;
    parse_cluster("instanceGroup.cluster", &cluster)?;
    let task_definition = env_api::non_empty(
        "taskDefinition",
        &request.task_definition,
        "a family, family:revision or ARN",
    )?;
    let method = env_api::method("deploymentMethod", request.deployment_method.as_deref())?;
    let configuration = env_api::patch(request.deployment_configuration.as_ref())?;
    env_api::check_patch(&configuration)?;
    let instance_group = env_api::selection(
        &request.instance_group.attributes,
        request.instance_group.query.as_deref(),
    )?;
    let (cluster, cluster_arn) = env_api::resolve_cluster(&state, "instanceGroup.cluster", &cluster).await?;
    let task_definition =
        env_api::resolve_task_definition(&state, "taskDefinition", &task_definition).await?;
    let ids = Ids::new();
    let name = request.name.clone();
    let stored = env_api::create(
        &state,
        CreateEnvironment {
            name: request.name,
            cluster,
            cluster_arn,
            task_definition,
            instance_group,
            method,
            configuration,
        },
        &ids,
    )
    .await
    .map_err(|e| {
        if e.code == "EnvironmentExists" {
            env_api::v03_status(e).v03(format!("An environment with name {name} already exists"))
        } else {
            e
        }
    })?;
    Ok(Json(environment_body(&state, &stored)))
}

/// List environments, optionally of one cluster (name or ARN).
#[utoipa::path(get, path = "/v1/environments", tag = "daemon scheduler (v0.3)",
    params(("cluster" = Option<String>, Query, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$")),
    responses((status = 200, body = Environments), (status = 400, body = ErrorBody)))]
pub async fn list_environments(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Environments>, ApiError> {
    let params = Params::parse(query.as_deref(), &["cluster"])?;
    let filter = Filter {
        cluster: params.cluster()?.map(|c| c.name),
        ..Filter::default()
    };
    let mut items = Vec::new();
    for record in environments::list_all(state.store.as_ref(), Kind::Environment, &filter).await? {
        // An environment removed meanwhile is simply not listed.
        if let Some(stored) =
            environments::load(state.store.as_ref(), &record.doc.key.id, Depth::Documents).await?
        {
            items.push(environment_body(&state, &stored));
        }
    }
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(Environments {
        items,
        next_token: None,
    }))
}

/// Get an environment by name.
#[utoipa::path(get, path = "/v1/environments/{name}", tag = "daemon scheduler (v0.3)",
    params(("name" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$")),
    responses((status = 200, body = blox_api::Environment), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_environment(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<ApiEnvironment>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let stored = require(&state, &name).await?;
    Ok(Json(environment_body(&state, &stored)))
}

/// Change an environment: a new revision with a new `deploymentToken`, made of the latest revision and
/// the fields given. Nothing is deployed until a deployment quotes the new token.
#[utoipa::path(put, path = "/v1/environments/{name}", tag = "daemon scheduler (v0.3)",
    params(("name" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$")),
    request_body = blox_api::UpdateEnvironment,
    responses((status = 200, body = blox_api::Environment), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn update_environment(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<ApiEnvironment>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let request = env_api::UpdateRequest::parse(&body)?;
    require(&state, &name).await?;
    let update = request.resolve(&state).await?;
    let ids = Ids::new();
    let stored = env_api::command(&state, &name, Depth::Documents, |snapshot| {
        lifecycle::update_environment(snapshot, update.clone(), ids.fresh())
    })
    .await?
    .ok_or_else(|| not_exist(&name))?;
    Ok(Json(environment_body(&state, &stored)))
}

/// Delete an environment. Without `terminateTasks` it is gone at once and its tasks are left running
/// (v0.3's behaviour; the name can be used again right away); with `terminateTasks=true` it is
/// `deleting` until the scheduler has stopped its tasks. Deleting an environment that does not exist
/// answers 200, as v0.3 did.
#[utoipa::path(delete, path = "/v1/environments/{name}", tag = "daemon scheduler (v0.3)",
    params(("name" = String, Path, description = "The environment's name"),
        ("terminateTasks" = Option<bool>, Query, description = "Stop the environment's tasks (default false)")),
    responses((status = 200, body = DeleteEnvironmentResponse), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_environment(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<DeleteEnvironmentResponse>, ApiError> {
    let params = Params::parse(query.as_deref(), &["terminateTasks"])?;
    let terminate_tasks = env_api::terminate_tasks(params.get("terminateTasks"))?;
    let Some(before) = environments::load(state.store.as_ref(), &name, Depth::Everything).await? else {
        return Ok(Json(DeleteEnvironmentResponse {
            name: name.clone(),
            status: "deleted".to_owned(),
            terminate_tasks,
            message: format!("environment {name} does not exist"),
        }));
    };
    // Every live task of the environment, of any revision.
    let running: u64 = env_api::live(&state, &before)
        .by_task_definition
        .values()
        .map(|c| c.total)
        .sum();
    let now = crate::clock::now_unix_ms();
    let after = env_api::command(&state, &name, Depth::Everything, |snapshot| {
        lifecycle::delete(snapshot, terminate_tasks, now)
    })
    .await;
    match after {
        // Removed by someone else meanwhile: what was asked is done.
        Err(e) if e.code == "EnvironmentNotFound" => {}
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    Ok(Json(delete_body(&name, terminate_tasks, running)))
}

pub fn delete_body(name: &str, terminate_tasks: bool, running: u64) -> DeleteEnvironmentResponse {
    if terminate_tasks {
        DeleteEnvironmentResponse {
            name: name.to_owned(),
            status: "deleting".to_owned(),
            terminate_tasks,
            message: format!(
                "environment {name} is being deleted; its {running} running task(s) are being stopped"
            ),
        }
    } else {
        DeleteEnvironmentResponse {
            name: name.to_owned(),
            status: "deleted".to_owned(),
            terminate_tasks,
            message: format!(
                "environment {name} is deleted; its {running} running task(s) are left running \
                 (pass terminateTasks=true to stop them)"
            ),
        }
    }
}

/// Deploy the environment's latest revision, quoting its `deploymentToken`. A deployment still in
/// progress is superseded; the new one continues from the fleet as it is, under the same floor.
#[utoipa::path(post, path = "/v1/environments/{name}/deployments", tag = "daemon scheduler (v0.3)",
    params(("name" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$"),
        ("deploymentToken" = String, Query, description = "The environment's current deploymentToken",
            pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")),
    responses((status = 200, body = blox_api::Deployment), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such environment, or no deploymentToken of a UUID's form \
            (v0.3 had no route without one)"), (status = 409, body = ErrorBody)))]
pub async fn create_deployment(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<ApiDeployment>, ApiError> {
    let params = Params::parse(query.as_deref(), &["deploymentToken"])?;
    // v0.3 routed this POST only with a token matching its UUID pattern: without one, there was no
    // route, so a 404 (with what is wrong named, where v0.3 said nothing more).
    let no_route = |code, message: String| ApiError {
        field: Some("deploymentToken".into()),
        ..ApiError::not_found(code, message)
    };
    let token = match params.get("deploymentToken") {
        None => {
            return Err(no_route(
                "MissingDeploymentToken",
                "deploymentToken is required: the environment's current deploymentToken".into(),
            ));
        }
        Some(token) if uuid::Uuid::parse_str(token).is_ok() => token.to_owned(),
        Some(token) => {
            return Err(no_route(
                "InvalidDeploymentToken",
                format!("invalid deploymentToken {token:?}: expected a UUID"),
            ));
        }
    };
    let ids = Ids::new();
    let stored = env_api::command(&state, &name, Depth::Documents, |snapshot| {
        lifecycle::deploy(snapshot, DeployTarget::Token(token.clone()), ids.fresh())
    })
    .await
    .map_err(|e| {
        if e.code == "EnvironmentNotFound" {
            not_exist(&name).v03(format!("Environment with name '{name}' does not exist"))
        } else {
            e
        }
    })?
    .ok_or_else(|| not_exist(&name))?;
    let live = env_api::live(&state, &stored);
    let deployment = stored
        .snapshot
        .deployment(&ids.deployment_id)
        .ok_or_else(|| ApiError::missing(Resource::Deployment, &ids.deployment_id))?;
    Ok(Json(deployment_body(&stored, &live, deployment)))
}

/// An environment's deployments, newest first.
#[utoipa::path(get, path = "/v1/environments/{name}/deployments", tag = "daemon scheduler (v0.3)",
    params(("name" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$")),
    responses((status = 200, body = Deployments), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_deployments(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Deployments>, ApiError> {
    // v0.3 routed nextToken and ignored it; so does this (the list is never cut).
    Params::parse(query.as_deref(), &["nextToken"])?;
    let stored = require(&state, &name).await?;
    let live = env_api::live(&state, &stored);
    let items = env_api::newest_first(&stored.snapshot)
        .into_iter()
        .map(|d| deployment_body(&stored, &live, d))
        .collect();
    Ok(Json(Deployments {
        items,
        next_token: None,
    }))
}

/// One deployment of an environment.
#[utoipa::path(get, path = "/v1/environments/{name}/deployments/{id}", tag = "daemon scheduler (v0.3)",
    params(("name" = String, Path, description = "The environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$"),
        ("id" = String, Path, description = "The deployment's id")),
    responses((status = 200, body = blox_api::Deployment), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_deployment(
    State(state): State<Arc<AppState>>,
    Path((name, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<ApiDeployment>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let stored = require(&state, &name).await?;
    let deployment = stored.snapshot.deployment(&id).ok_or_else(|| {
        ApiError::missing(Resource::Deployment, &id)
            .v03(format!("Deployment {id} does not exist for environment {name}"))
    })?;
    let live = env_api::live(&state, &stored);
    Ok(Json(deployment_body(&stored, &live, deployment)))
}

pub fn environment_body(state: &AppState, stored: &Stored) -> ApiEnvironment {
    let env = stored.environment();
    let live = env_api::live(state, stored);
    let latest = stored.snapshot.latest_revision();
    let (health, health_reason) = live.health.clone();
    ApiEnvironment {
        name: env.name.clone(),
        deployment_token: latest.map(|r| r.token.clone()).unwrap_or_default(),
        instance_group: InstanceGroupBody {
            cluster: env.cluster_arn.clone(),
            attributes: latest
                .map(|r| env_api::attribute_bodies(&r.instance_group.attributes))
                .unwrap_or_default(),
            query: latest.and_then(|r| env_api::query_text(&r.instance_group)),
        },
        task_definition: latest.map(|r| r.task_definition.clone()).unwrap_or_default(),
        health: match health {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
        .to_owned(),
        health_reason,
        revision: env.latest_revision,
        active_deployment: env.active_deployment.clone(),
        status: if env.status.is_deleting() {
            "deleting"
        } else {
            "active"
        }
        .to_owned(),
        frozen: env.frozen,
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
        uncovered: live.plan.uncovered.len() as u64,
        uncovered_instances: live.uncovered(),
        created_at: rfc3339_millis(env.created_at),
        updated_at: rfc3339_millis(env.updated_at),
    }
}

pub fn deployment_body(stored: &Stored, live: &Live, deployment: &Deployment) -> ApiDeployment {
    let active = stored.snapshot.active();
    let is_active = active.is_some_and(|a| a.id == deployment.id);
    let failures = live.failures_of(&deployment.id);
    let counts = live.deployment_counts(deployment, active);
    let failing = if is_active { live.plan.fleet.failing } else { 0 };
    ApiDeployment {
        id: deployment.id.clone(),
        environment_name: deployment.environment.clone(),
        status: deployment.status.name().to_owned(),
        status_reason: deployment.reason().map(str::to_owned),
        task_definition: deployment.task_definition.clone(),
        revision: deployment.revision,
        failed_instances: env_api::failure_bodies(failures)
            .into_iter()
            .map(|f| f.container_instance_arn)
            .collect(),
        failures: env_api::failure_bodies(failures)
            .into_iter()
            .map(|f| DeploymentFailure {
                arn: f.container_instance_arn,
                reason: f.reason,
                attempts: f.attempts,
                retry_at: f.retry_at,
            })
            .collect(),
        counts: DeploymentCounts {
            desired: counts.desired,
            running: counts.healthy,
            failed: failing,
            pending: counts
                .desired
                .saturating_sub(counts.healthy)
                .saturating_sub(failing),
        },
        rollback: deployment.rollback,
        created_at: rfc3339_millis(deployment.created_at),
        started_at: deployment.started_at.map(rfc3339_millis),
        ended_at: deployment.ended_at.map(rfc3339_millis),
        canary_instances: deployment.canary_instances.clone(),
        promoted_at: deployment.promoted_at.map(rfc3339_millis),
    }
}
