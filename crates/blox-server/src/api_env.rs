//! The daemon scheduler's API: Blox v0.3's environments and deployments, with the same paths and JSON
//! names, fixed. The handlers only write documents (by compare-and-swap, through the conversions of
//! [`crate::documents`]); the engine ([`crate::scheduler`]) executes them.
//!
//! v0.3's defects fixed here: a `deploymentToken` can be renewed (`PUT /v1/environments/{name}` makes a
//! new revision with a new token), so an environment can be deployed again and again; deleting can stop
//! the environment's tasks (`terminateTasks=true`) and says so either way; the cluster and task
//! definition are checked against ECS when an environment is created or updated; every error is JSON.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use blox_api::{
    CreateEnvironmentRequest, DeleteEnvironmentResponse, Deployment as ApiDeployment, DeploymentCounts,
    DeploymentFailure, Deployments, Environment as ApiEnvironment, Environments, ErrorBody,
    InstanceGroupBody, Ping, UpdateEnvironmentRequest,
};
use blox_aws::EcsErrorKind;
use blox_model::ClusterName;
use blox_model::daemon::{
    self, Deployment, DeploymentConfiguration, Environment, EnvironmentStatus, Health, InstanceGroup,
    Revision,
};
use blox_model::emit::rfc3339_millis;
use blox_store::{Expect, Filter, Key, Kind, PageRequest, Record, Store, StoreError, Write};
use serde::de::DeserializeOwned;

use crate::api::AppState;
use crate::error::ApiError;
use crate::query::{Params, parse_cluster};
use crate::{clock, documents};

/// How many times a compare-and-swap write is retried on a conflict before answering 409.
const CAS_ATTEMPTS: usize = 5;

/// The server is alive (v0.3's ping).
#[utoipa::path(get, path = "/v1/ping", tag = "daemon scheduler", responses((status = 200, body = Ping)))]
pub async fn ping() -> Json<Ping> {
    Json(Ping {})
}

/// Create an environment; its cluster and task definition are checked against ECS. Answers 200 (as
/// v0.3 did) with the environment and its first `deploymentToken`.
#[utoipa::path(post, path = "/v1/environments", tag = "daemon scheduler",
    request_body = CreateEnvironmentRequest,
    responses((status = 200, body = blox_api::Environment), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_environment(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<ApiEnvironment>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let request: CreateEnvironmentRequest = parse_body(&body)?;
    daemon::validate_environment_name(&request.name)
        .map_err(|e| ApiError::bad_request("name", "InvalidName", e.reason))?;
    let cluster_ref = parse_cluster("instanceGroup.cluster", &request.instance_group.cluster)?;
    let task_definition = non_empty_task_definition(&request.task_definition)?;
    let control = control(&state)?;

    let (described, failures) = control
        .describe_clusters(std::slice::from_ref(&request.instance_group.cluster))
        .await
        .map_err(|e| ecs_unavailable("DescribeClusters", &e))?;
    let Some(cluster) = described.into_iter().next() else {
        let reason = failures
            .first()
            .map(|f| f.reason.clone())
            .unwrap_or_else(|| "MISSING".to_owned());
        return Err(not_found_field(
            "instanceGroup.cluster",
            "ClusterNotFound",
            format!("cluster {} not found ({reason})", request.instance_group.cluster),
        ));
    };
    if cluster.status != "ACTIVE" {
        return Err(not_found_field(
            "instanceGroup.cluster",
            "ClusterInactive",
            format!(
                "cluster {} is {}, not ACTIVE",
                cluster.cluster_arn, cluster.status
            ),
        ));
    }
    let task_definition_arn = check_task_definition(&state, task_definition).await?;
    let cluster_name = ClusterName::new(&cluster.cluster_name).unwrap_or(cluster_ref.name);

    // Names are unique across clusters (the paths name no cluster): check and write under one lock.
    let _guard = state.environment_writes.lock().await;
    if find_environment(state.store.as_ref(), &request.name)
        .await?
        .is_some()
    {
        return Err(conflict(
            "EnvironmentExists",
            format!("environment {} already exists", request.name),
        ));
    }
    let now = clock::now_unix_ms();
    let mut configuration = DeploymentConfiguration::default();
    if let Some(stop_on_drain) = request.deployment_configuration.and_then(|c| c.stop_on_drain) {
        configuration.stop_on_drain = stop_on_drain;
    }
    let environment = Environment {
        name: request.name.clone(),
        cluster: cluster_name.clone(),
        cluster_arn: cluster.cluster_arn.clone(),
        latest_revision: 1,
        active_deployment: None,
        status: EnvironmentStatus::Active,
        health: Health::Healthy,
        health_reason: None,
        created_at: now,
        updated_at: now,
    };
    let revision = Revision {
        environment: request.name.clone(),
        number: 1,
        token: uuid::Uuid::new_v4().to_string(),
        task_definition: task_definition_arn,
        instance_group: InstanceGroup {
            cluster_arn: cluster.cluster_arn,
            attributes: Vec::new(),
        },
        deployment: configuration,
        created_at: now,
    };
    let result = state
        .store
        .apply(vec![
            Write::Put {
                doc: documents::environment(&environment),
                expect: Expect::Absent,
            },
            Write::Put {
                doc: documents::revision(cluster_name, &revision),
                expect: Expect::Absent,
            },
        ])
        .await;
    match result {
        Ok(_) => Ok(Json(environment_body(&environment, &revision))),
        Err(StoreError::Conflict { .. }) => Err(conflict(
            "EnvironmentExists",
            format!("environment {} already exists", request.name),
        )),
        Err(err) => Err(ApiError::internal("creating the environment", &err)),
    }
}

/// List environments, optionally of one cluster (name or ARN).
#[utoipa::path(get, path = "/v1/environments", tag = "daemon scheduler",
    params(("cluster" = Option<String>, Query, description = "A cluster name or ARN")),
    responses((status = 200, body = Environments), (status = 400, body = ErrorBody)))]
pub async fn list_environments(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Environments>, ApiError> {
    let params = Params::parse(query.as_deref(), &["cluster"])?;
    let filter = Filter {
        cluster: params.cluster()?.map(|c| c.name),
        ..Filter::default()
    };
    let mut items = Vec::new();
    for record in list_all(state.store.as_ref(), Kind::Environment, filter).await? {
        let environment: Environment = parse(&record)?;
        let revision = latest_revision(state.store.as_ref(), &environment).await?;
        items.push(environment_body(&environment, &revision));
    }
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(Environments {
        items,
        next_token: None,
    }))
}

/// Get an environment by name.
#[utoipa::path(get, path = "/v1/environments/{name}", tag = "daemon scheduler",
    params(("name" = String, Path, description = "The environment's name")),
    responses((status = 200, body = blox_api::Environment), (status = 404, body = ErrorBody)))]
pub async fn get_environment(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<ApiEnvironment>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let (_, environment) = require_environment(state.store.as_ref(), &name).await?;
    let revision = latest_revision(state.store.as_ref(), &environment).await?;
    Ok(Json(environment_body(&environment, &revision)))
}

/// Give an environment a new task definition: a new revision with a new `deploymentToken` (same
/// instance group and deployment configuration), to be deployed with that token.
#[utoipa::path(put, path = "/v1/environments/{name}", tag = "daemon scheduler",
    params(("name" = String, Path, description = "The environment's name")),
    request_body = UpdateEnvironmentRequest,
    responses((status = 200, body = blox_api::Environment), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn update_environment(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<ApiEnvironment>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let request: UpdateEnvironmentRequest = parse_body(&body)?;
    let task_definition = non_empty_task_definition(&request.task_definition)?;
    require_environment(state.store.as_ref(), &name).await?;
    let task_definition_arn = check_task_definition(&state, task_definition).await?;
    for _ in 0..CAS_ATTEMPTS {
        let (record, mut environment) = require_environment(state.store.as_ref(), &name).await?;
        refuse_deleting(&environment)?;
        let previous = latest_revision(state.store.as_ref(), &environment).await?;
        let now = clock::now_unix_ms();
        let revision = Revision {
            number: previous.number + 1,
            token: uuid::Uuid::new_v4().to_string(),
            task_definition: task_definition_arn.clone(),
            created_at: now,
            ..previous
        };
        environment.latest_revision = revision.number;
        environment.updated_at = now;
        let result = state
            .store
            .apply(vec![
                Write::Put {
                    doc: documents::environment(&environment),
                    expect: Expect::Seq(record.seq),
                },
                Write::Put {
                    doc: documents::revision(environment.cluster.clone(), &revision),
                    expect: Expect::Absent,
                },
            ])
            .await;
        match result {
            Ok(_) => return Ok(Json(environment_body(&environment, &revision))),
            Err(StoreError::Conflict { .. }) => continue,
            Err(err) => return Err(ApiError::internal("updating the environment", &err)),
        }
    }
    Err(kept_changing(&name))
}

/// Delete an environment. With `terminateTasks=true` the scheduler stops its tasks first; without,
/// they are left running (v0.3's only behaviour) and the answer says so.
#[utoipa::path(delete, path = "/v1/environments/{name}", tag = "daemon scheduler",
    params(("name" = String, Path, description = "The environment's name"),
        ("terminateTasks" = Option<bool>, Query, description = "Stop the environment's tasks (default false)")),
    responses((status = 200, body = DeleteEnvironmentResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_environment(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<DeleteEnvironmentResponse>, ApiError> {
    let params = Params::parse(query.as_deref(), &["terminateTasks"])?;
    let terminate_tasks = match params.get("terminateTasks") {
        None => false,
        Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::bad_request(
                "terminateTasks",
                "InvalidTerminateTasks",
                format!("invalid terminateTasks {other:?}: expected true or false"),
            ));
        }
    };
    for _ in 0..CAS_ATTEMPTS {
        // Deviation from v0.3, which answered 200 for an environment that did not exist: 404.
        let (record, mut environment) = require_environment(state.store.as_ref(), &name).await?;
        if let EnvironmentStatus::Deleting {
            terminate_tasks: already,
        } = environment.status
            && (already || !terminate_tasks)
        {
            // Already being deleted at least as thoroughly: answer as if this request did it.
            return Ok(Json(delete_body(&state, &environment, already).await?));
        }
        environment.status = EnvironmentStatus::Deleting { terminate_tasks };
        environment.updated_at = clock::now_unix_ms();
        let result = state
            .store
            .apply(vec![Write::Put {
                doc: documents::environment(&environment),
                expect: Expect::Seq(record.seq),
            }])
            .await;
        match result {
            Ok(_) => return Ok(Json(delete_body(&state, &environment, terminate_tasks).await?)),
            Err(StoreError::Conflict { .. }) => continue,
            Err(err) => return Err(ApiError::internal("deleting the environment", &err)),
        }
    }
    Err(kept_changing(&name))
}

async fn delete_body(
    state: &AppState,
    environment: &Environment,
    terminate_tasks: bool,
) -> Result<DeleteEnvironmentResponse, ApiError> {
    let running = running_tasks(state.store.as_ref(), environment).await?;
    let message = if terminate_tasks {
        format!(
            "environment {} is being deleted; its {running} running task(s) are being stopped",
            environment.name
        )
    } else {
        format!(
            "environment {} is being deleted; its {running} running task(s) are left running \
             (pass terminateTasks=true to stop them)",
            environment.name
        )
    };
    Ok(DeleteEnvironmentResponse {
        name: environment.name.clone(),
        status: "deleting".to_owned(),
        terminate_tasks,
        message,
    })
}

/// The environment's RUNNING tasks as the store knows them: those started by its deployments.
async fn running_tasks(store: &dyn Store, environment: &Environment) -> Result<usize, ApiError> {
    let mut running = 0;
    for deployment in deployments_of(store, environment).await? {
        let filter = Filter {
            cluster: Some(environment.cluster.clone()),
            status: Some("RUNNING".to_owned()),
            started_by: Some(deployment.id.clone()),
        };
        running += list_all(store, Kind::Task, filter).await?.len();
    }
    Ok(running)
}

/// Deploy the environment's latest revision, quoting its `deploymentToken`. A newer deployment
/// supersedes (stops) one still in progress.
#[utoipa::path(post, path = "/v1/environments/{name}/deployments", tag = "daemon scheduler",
    params(("name" = String, Path, description = "The environment's name"),
        ("deploymentToken" = String, Query, description = "The environment's current deploymentToken")),
    responses((status = 200, body = blox_api::Deployment), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_deployment(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<ApiDeployment>, ApiError> {
    let params = Params::parse(query.as_deref(), &["deploymentToken"])?;
    let token = match params.get("deploymentToken") {
        None => {
            return Err(ApiError::bad_request(
                "deploymentToken",
                "MissingDeploymentToken",
                "deploymentToken is required: the environment's current deploymentToken",
            ));
        }
        Some(token) if uuid::Uuid::parse_str(token).is_ok() => token.to_owned(),
        Some(token) => {
            return Err(ApiError::bad_request(
                "deploymentToken",
                "InvalidDeploymentToken",
                format!("invalid deploymentToken {token:?}: expected a UUID"),
            ));
        }
    };
    for _ in 0..CAS_ATTEMPTS {
        let (record, mut environment) = require_environment(state.store.as_ref(), &name).await?;
        refuse_deleting(&environment)?;
        let revision = latest_revision(state.store.as_ref(), &environment).await?;
        if !revision.token.eq_ignore_ascii_case(&token) {
            return Err(ApiError::bad_request(
                "deploymentToken",
                "StaleDeploymentToken",
                format!(
                    "Token '{token}' is outdated and does not match the environment token '{}'",
                    revision.token
                ),
            ));
        }
        let existing = deployments_of(state.store.as_ref(), &environment).await?;
        if let Some(used) = existing.iter().find(|d| d.revision == revision.number) {
            return Err(ApiError {
                field: Some("deploymentToken".to_owned()),
                ..conflict(
                    "DeploymentTokenUsed",
                    format!(
                        "Token '{token}' was already used by deployment {}; update the environment \
                         for a new token",
                        used.id
                    ),
                )
            });
        }
        let now = clock::now_unix_ms();
        let deployment = Deployment::new(
            uuid::Uuid::new_v4().to_string(),
            environment.name.clone(),
            revision.number,
            revision.task_definition.clone(),
            now,
        );
        environment.active_deployment = Some(deployment.id.clone());
        environment.updated_at = now;
        let result = state
            .store
            .apply(vec![
                Write::Put {
                    doc: documents::deployment(environment.cluster.clone(), &deployment),
                    expect: Expect::Absent,
                },
                Write::Put {
                    doc: documents::environment(&environment),
                    expect: Expect::Seq(record.seq),
                },
            ])
            .await;
        match result {
            Ok(_) => return Ok(Json(deployment_body(&deployment))),
            Err(StoreError::Conflict { .. }) => continue,
            Err(err) => return Err(ApiError::internal("creating the deployment", &err)),
        }
    }
    Err(kept_changing(&name))
}

/// An environment's deployments, newest first.
#[utoipa::path(get, path = "/v1/environments/{name}/deployments", tag = "daemon scheduler",
    params(("name" = String, Path, description = "The environment's name")),
    responses((status = 200, body = Deployments), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_deployments(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Deployments>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let (_, environment) = require_environment(state.store.as_ref(), &name).await?;
    let mut deployments = deployments_of(state.store.as_ref(), &environment).await?;
    deployments.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    Ok(Json(Deployments {
        items: deployments.iter().map(deployment_body).collect(),
        next_token: None,
    }))
}

/// One deployment of an environment.
#[utoipa::path(get, path = "/v1/environments/{name}/deployments/{id}", tag = "daemon scheduler",
    params(("name" = String, Path, description = "The environment's name"),
        ("id" = String, Path, description = "The deployment's id")),
    responses((status = 200, body = blox_api::Deployment), (status = 404, body = ErrorBody)))]
pub async fn get_deployment(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<ApiDeployment>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let (_, environment) = require_environment(state.store.as_ref(), &name).await?;
    let key = Key::deployment(environment.cluster.clone(), id.clone());
    let found = match state.store.get(&key).await? {
        Some(record) => Some(parse::<Deployment>(&record)?),
        None => None,
    };
    match found {
        Some(deployment) if deployment.environment == environment.name => {
            Ok(Json(deployment_body(&deployment)))
        }
        _ => Err(ApiError::not_found(
            "DeploymentNotFound",
            format!("deployment {id} of environment {name} not found"),
        )),
    }
}

// ---- helpers -------------------------------------------------------------------------------------

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "body",
            "InvalidBody",
            format!("the request body is not valid: {e}"),
        )
    })
}

fn non_empty_task_definition(value: &str) -> Result<&str, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        Err(ApiError::bad_request(
            "taskDefinition",
            "InvalidTaskDefinition",
            "taskDefinition is required: a family, family:revision or ARN",
        ))
    } else {
        Ok(value)
    }
}

fn control(state: &AppState) -> Result<&dyn blox_aws::EcsControl, ApiError> {
    state.control.as_deref().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "NoEcs",
        message: "this server has no ECS connection to check and run environments with".to_owned(),
        field: None,
    })
}

fn ecs_unavailable(operation: &str, err: &blox_aws::EcsError) -> ApiError {
    tracing::warn!(operation, error = %err, "ECS check failed");
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "EcsUnavailable",
        message: format!("ECS {operation} failed: {err}"),
        field: None,
    }
}

/// The task definition's ARN, if ECS knows it and it is ACTIVE.
async fn check_task_definition(state: &AppState, task_definition: &str) -> Result<String, ApiError> {
    let control = control(state)?;
    match control.describe_task_definition(task_definition).await {
        Ok(description) if description.status == "ACTIVE" => Ok(description.arn),
        Ok(description) => Err(not_found_field(
            "taskDefinition",
            "TaskDefinitionInactive",
            format!(
                "task definition {} is {}, not ACTIVE",
                description.arn, description.status
            ),
        )),
        Err(err) => match &err.kind {
            EcsErrorKind::Rejected { message, .. } => Err(not_found_field(
                "taskDefinition",
                "TaskDefinitionNotFound",
                format!("task definition {task_definition} not found: {message}"),
            )),
            _ => Err(ecs_unavailable("DescribeTaskDefinition", &err)),
        },
    }
}

fn not_found_field(field: &str, code: &'static str, message: String) -> ApiError {
    ApiError {
        field: Some(field.to_owned()),
        ..ApiError::not_found(code, message)
    }
}

fn conflict(code: &'static str, message: String) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        code,
        message,
        field: None,
    }
}

/// The answer when every compare-and-swap attempt on the environment met a conflict.
fn kept_changing(name: &str) -> ApiError {
    conflict(
        "ConcurrentUpdate",
        format!("environment {name} kept changing; try again"),
    )
}

fn refuse_deleting(environment: &Environment) -> Result<(), ApiError> {
    match environment.status {
        EnvironmentStatus::Active => Ok(()),
        EnvironmentStatus::Deleting { .. } => Err(conflict(
            "EnvironmentDeleting",
            format!("environment {} is being deleted", environment.name),
        )),
    }
}

fn parse<T: DeserializeOwned>(record: &Record) -> Result<T, ApiError> {
    documents::parse(&record.doc).map_err(|e| ApiError::internal("reading a stored document", &e))
}

async fn list_all(store: &dyn Store, kind: Kind, filter: Filter) -> Result<Vec<Record>, ApiError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(
                kind,
                &filter,
                PageRequest {
                    after,
                    limit: Some(1_000),
                },
            )
            .await?;
        out.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(out),
        }
    }
}

/// The environment of that name in any cluster.
async fn find_environment(store: &dyn Store, name: &str) -> Result<Option<(Record, Environment)>, ApiError> {
    if daemon::validate_environment_name(name).is_err() {
        return Ok(None);
    }
    for cluster in store.clusters(Kind::Environment).await? {
        if let Some(record) = store.get(&Key::environment(cluster, name)).await? {
            let environment = parse(&record)?;
            return Ok(Some((record, environment)));
        }
    }
    Ok(None)
}

async fn require_environment(store: &dyn Store, name: &str) -> Result<(Record, Environment), ApiError> {
    find_environment(store, name)
        .await?
        .ok_or_else(|| ApiError::not_found("EnvironmentNotFound", format!("environment {name} not found")))
}

async fn latest_revision(store: &dyn Store, environment: &Environment) -> Result<Revision, ApiError> {
    let key = Key::revision(
        environment.cluster.clone(),
        &environment.name,
        environment.latest_revision,
    );
    match store.get(&key).await? {
        Some(record) => parse(&record),
        None => Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "InternalError",
            message: format!(
                "revision {} of environment {} is missing from the store",
                environment.latest_revision, environment.name
            ),
            field: None,
        }),
    }
}

async fn deployments_of(store: &dyn Store, environment: &Environment) -> Result<Vec<Deployment>, ApiError> {
    let filter = Filter {
        cluster: Some(environment.cluster.clone()),
        status: None,
        started_by: Some(environment.name.clone()),
    };
    list_all(store, Kind::Deployment, filter)
        .await?
        .iter()
        .map(parse)
        .collect()
}

fn environment_body(environment: &Environment, revision: &Revision) -> ApiEnvironment {
    ApiEnvironment {
        name: environment.name.clone(),
        deployment_token: revision.token.clone(),
        instance_group: InstanceGroupBody {
            cluster: environment.cluster_arn.clone(),
        },
        task_definition: revision.task_definition.clone(),
        health: match environment.health {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
        .to_owned(),
        health_reason: environment.health_reason.clone(),
        revision: environment.latest_revision,
        active_deployment: environment.active_deployment.clone(),
        status: match environment.status {
            EnvironmentStatus::Active => "active",
            EnvironmentStatus::Deleting { .. } => "deleting",
        }
        .to_owned(),
        created_at: rfc3339_millis(environment.created_at),
        updated_at: rfc3339_millis(environment.updated_at),
    }
}

fn deployment_body(deployment: &Deployment) -> ApiDeployment {
    ApiDeployment {
        id: deployment.id.clone(),
        environment_name: deployment.environment.clone(),
        status: documents::deployment_status(deployment.status).to_ascii_lowercase(),
        task_definition: deployment.task_definition.clone(),
        revision: deployment.revision,
        failed_instances: deployment
            .failed_instances
            .iter()
            .map(|f| f.arn.clone())
            .collect(),
        failures: deployment
            .failed_instances
            .iter()
            .map(|f| DeploymentFailure {
                arn: f.arn.clone(),
                reason: f.reason.clone(),
                attempts: f.attempts,
                retry_at: rfc3339_millis(f.retry_at_ms),
            })
            .collect(),
        counts: DeploymentCounts {
            desired: deployment.counts.desired,
            running: deployment.counts.running,
            pending: deployment.counts.pending,
            failed: deployment.counts.failed,
        },
        created_at: rfc3339_millis(deployment.created_at),
        started_at: deployment.started_at.map(rfc3339_millis),
        ended_at: deployment.ended_at.map(rfc3339_millis),
    }
}
