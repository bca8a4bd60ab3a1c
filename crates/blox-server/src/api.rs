//! The REST API: Blox v0.3's cluster-state paths and JSON, fixed (structured errors, pagination,
//! long ARNs and every partition, draining filter, deletions in streams), plus operational endpoints.

use std::sync::Arc;

use crate::error::Path;
use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use blox_api::{
    DeadLetter, DeadLetters, ErrorBody, Health, InstanceRecord, Instances, LeaderStatus, Readiness,
    TaskRecord, Tasks,
};
use blox_model::{ClusterName, INSTANCE_STATUSES, ResourceArn, TASK_STATUSES};
use blox_store::{Filter, Key, Kind, PageRequest, Store};
use bytes::Bytes;
use futures::StreamExt as _;
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::OpenApi;

use crate::auth::BearerDoc;
use crate::error::ApiError;
use crate::limits::GuardDoc;
use crate::query::{Params, encode_token, parse_cluster};
use crate::reconcile::ReadinessState;
use crate::render;
use crate::stream::{self, StreamOptions};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Which replica leads (`GET /v1/leader`).
    pub leadership: Arc<dyn blox_store::leader::Leadership>,
    pub readiness: Arc<ReadinessState>,
    pub metrics: PrometheusHandle,
    pub stream: StreamOptions,
    /// ECS's control calls, to check environments' clusters and task definitions with; without it,
    /// creating or updating an environment answers 503.
    pub control: Option<Arc<dyn blox_aws::EcsControl>>,
    /// The in-memory view, for live counts.
    pub view: Arc<crate::view::View>,
    /// How errors are written on the v0.3 routes.
    pub v03_errors: crate::error::V03Errors,
    /// The server's resource bounds and the semaphores behind them.
    pub gates: crate::limits::Gates,
    /// The API's tokens (`--auth-token-file`); without them every route is open.
    pub auth: Option<Arc<crate::auth::Tokens>>,
    /// The executor's ECS call rate per API family, for deployment plans' estimates.
    pub calls_per_second: f64,
    /// The dashboard's environment pages, shared by the browsers that show them.
    pub ui: Arc<crate::ui::Pages>,
}

impl AppState {
    /// A state over `store` with a view that follows it until `shutdown`, for servers and tests.
    pub async fn new(
        store: Arc<dyn Store>,
        control: Option<Arc<dyn blox_aws::EcsControl>>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<AppState, blox_store::StoreError> {
        let view = crate::view::View::spawn(store.clone(), crate::clock::wall(), shutdown.clone()).await?;
        Ok(AppState {
            leadership: crate::alone(store.clone()),
            store,
            readiness: Arc::default(),
            metrics: crate::metrics::handle(),
            stream: StreamOptions {
                shutdown,
                ..StreamOptions::default()
            },
            control,
            view,
            v03_errors: crate::error::V03Errors::Json,
            gates: crate::limits::Gates::default(),
            auth: None,
            calls_per_second: crate::scheduler::SchedulerOptions::default().calls_per_second,
            ui: Arc::default(),
        })
    }
}

/// Entities read from the store at a time when a listing asks for everything: each page is one
/// chunk of the answer.
pub const UNBOUNDED_LIST_PAGE: usize = 1_000;

#[derive(OpenApi)]
#[openapi(
    modifiers(&BearerDoc, &GuardDoc),
    info(
        title = "blox",
        description = "ECS cluster state mirrored from ECS events, with Blox v0.3's API. \
                       Errors are JSON {code, message, field}.",
    ),
    paths(
        list_tasks,
        get_task,
        list_instances,
        get_instance,
        stream::stream_tasks,
        stream::stream_instances,
        list_dead_letters,
        delete_dead_letter,
        leader,
        healthz,
        readyz,
        metrics,
        crate::env_v03::ping,
        crate::env_v03::create_environment,
        crate::env_v03::list_environments,
        crate::env_v03::get_environment,
        crate::env_v03::update_environment,
        crate::env_v03::delete_environment,
        crate::env_v03::create_deployment,
        crate::env_v03::list_deployments,
        crate::env_v03::get_deployment,
        crate::env_v1::list_environments,
        crate::env_v1::create_environment,
        crate::env_v1::describe_environment,
        crate::env_v1::update_environment,
        crate::env_v1::delete_environment,
        crate::env_v1::list_revisions,
        crate::env_v1::describe_revision,
        crate::env_v1::start_deployment,
        crate::env_v1::list_deployments,
        crate::env_v1::describe_deployment,
        crate::env_v1::stop_deployment,
        crate::env_v1::promote_deployment,
        crate::env_v1::rollback,
        crate::env_v1::freeze,
        crate::env_v1::thaw,
        crate::ui::session,
        crate::ui::overview,
        crate::ui::cluster_grid,
        crate::ui::environment_page,
        crate::ui::events
    ),
    components(schemas(
        Tasks,
        TaskRecord,
        Instances,
        InstanceRecord,
        ErrorBody,
        DeadLetters,
        DeadLetter,
        Health,
        Readiness,
        LeaderStatus,
        blox_api::StreamError,
        blox_api::RevisionId,
        blox_api::AttributeBody,
        blox_api::DeploymentConfigurationBody,
        blox_api::TaskCounts,
        blox_api::InstanceFailureBody,
        blox_api::TransitionBody,
        blox_api::CreateEnvironmentRequest,
        blox_api::InstanceGroupBody,
        blox_api::Environment,
        blox_api::Environments,
        blox_api::Deployment,
        blox_api::Deployments,
        blox_api::DeploymentCounts,
        blox_api::DeploymentFailure,
        blox_api::DeleteEnvironmentResponse,
        blox_api::InstanceGroup,
        blox_api::CreateEnvironment,
        blox_api::UpdateEnvironment,
        blox_api::EnvironmentV1,
        blox_api::EnvironmentResponse,
        blox_api::RevisionCreated,
        blox_api::EnvironmentList,
        blox_api::EnvironmentRevision,
        blox_api::RevisionResponse,
        blox_api::RevisionList,
        blox_api::DeploymentV1,
        blox_api::DeploymentResponse,
        blox_api::DeploymentPlan,
        blox_api::PlannedInstance,
        blox_api::PlannedBatch,
        blox_api::PlannedStop,
        blox_api::StartDeploymentAnswer,
        blox_api::dashboard::Session,
        blox_api::dashboard::Overview,
        blox_api::dashboard::ClusterSummary,
        blox_api::dashboard::IngestSummary,
        blox_api::dashboard::EnvironmentSummary,
        blox_api::dashboard::ClusterGrid,
        blox_api::dashboard::GridInstance,
        blox_api::dashboard::EnvironmentPage,
        blox_api::dashboard::Rollout,
        blox_api::dashboard::GridCell,
        blox_api::CanaryBody,
        blox_api::UncoveredInstance,
        blox_api::DeploymentList,
        blox_api::RollbackRequest
    ))
)]
pub struct ApiDoc;

const TASK_PARAMS: &[&str] = &["status", "cluster", "startedBy", "maxResults", "nextToken"];
const INSTANCE_PARAMS: &[&str] = &["status", "cluster", "maxResults", "nextToken", "filter"];

/// List tasks, optionally filtered by status, cluster and startedBy.
#[utoipa::path(get, path = "/v1/tasks", tag = "cluster state", params(blox_api::TaskQuery),
    responses((status = 200, body = Tasks), (status = 400, body = ErrorBody)))]
pub async fn list_tasks(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref(), TASK_PARAMS)?;
    let filter = Filter {
        cluster: params.cluster()?.map(|c| c.name),
        status: params.status(TASK_STATUSES)?,
        started_by: params.started_by()?,
    };
    list(&state, Kind::Task, filter, &params).await
}

/// List container instances, optionally filtered by status (including draining) and cluster.
#[utoipa::path(get, path = "/v1/instances", tag = "cluster state", params(blox_api::InstanceQuery),
    responses((status = 200, body = Instances), (status = 400, body = ErrorBody)))]
pub async fn list_instances(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref(), INSTANCE_PARAMS)?;
    let filter = Filter {
        cluster: params.cluster()?.map(|c| c.name),
        status: params.status(INSTANCE_STATUSES)?,
        started_by: None,
    };
    match params.get("filter") {
        Some(text) => {
            let query = crate::env_api::cluster_query("filter", text)?;
            if query.reads_task_groups() {
                crate::env_api::task_groups(&state).await?;
            }
            filtered_instances(&state, &filter, &query, &params)
        }
        None => list(&state, Kind::Instance, filter, &params).await,
    }
}

/// The instances matching a cluster query, from the in-memory view (which follows the store within
/// milliseconds), in the unfiltered listing's order: by cluster, then ARN. Its `nextToken` is the
/// last cluster and ARN answered.
fn filtered_instances(
    state: &AppState,
    filter: &Filter,
    query: &blox_model::Query,
    params: &Params,
) -> Result<Response, ApiError> {
    let limit = params.max_results()?;
    let after = params
        .next_token()?
        .map(|cursor| {
            String::from_utf8(cursor.0)
                .ok()
                .and_then(|text| {
                    let (cluster, arn) = text.split_once('\n')?;
                    Some((ClusterName::new(cluster).ok()?, arn.to_owned()))
                })
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "nextToken",
                        "InvalidNextToken",
                        "invalid nextToken: pass back the nextToken of a previous answer with the same filter",
                    )
                })
        })
        .transpose()?;
    let view = state.view.read();
    let mut out = render::LIST_START.to_vec();
    let mut answered = 0usize;
    let mut last: Option<(&ClusterName, &str)> = None;
    let mut more = false;
    'clusters: for (name, cluster) in &view.clusters {
        if filter.cluster.as_ref().is_some_and(|wanted| wanted != name)
            || after.as_ref().is_some_and(|(c, _)| name < c)
        {
            continue;
        }
        let Some(records) = view.instance_records.get(name) else {
            continue;
        };
        for (_, instance) in cluster.instances() {
            if let Some((c, arn)) = &after
                && c == name
                && *instance.arn <= **arn
            {
                continue;
            }
            if filter
                .status
                .as_deref()
                .is_some_and(|status| status != instance.status.as_str())
                || !query.matches(&cluster.subject(instance))
            {
                continue;
            }
            let Some((seq, body)) = records.get(&instance.arn) else {
                continue;
            };
            if limit == Some(answered) {
                more = true;
                break 'clusters;
            }
            if answered > 0 {
                out.push(b',');
            }
            render::record(&mut out, *seq, false, body);
            answered += 1;
            last = Some((name, &instance.arn));
        }
    }
    let token = match (more, last) {
        (true, Some((cluster, arn))) => Some(encode_token(&blox_store::Cursor(
            format!("{cluster}\n{arn}").into_bytes(),
        ))),
        _ => None,
    };
    render::list_end(&mut out, token.as_deref());
    Ok(json(out))
}

async fn list(state: &AppState, kind: Kind, filter: Filter, params: &Params) -> Result<Response, ApiError> {
    let limit = params.max_results()?;
    let after = params.next_token()?;
    let page_size = limit.unwrap_or(UNBOUNDED_LIST_PAGE);
    // The first page is read before answering so that a store failure is a proper 500. Entities
    // are written into the body straight from the store's bytes.
    let first = state
        .store
        .list_spliced(
            kind,
            &filter,
            PageRequest {
                after,
                limit: Some(page_size),
            },
            render::RECORD,
            render::LIST_START.to_vec(),
        )
        .await?;
    let mut out = first.out;
    if limit.is_some() || first.next.is_none() {
        let token = if limit.is_some() {
            first.next.as_ref().map(encode_token)
        } else {
            None
        };
        render::list_end(&mut out, token.as_deref());
        return Ok(json(out));
    }
    // Everything was asked for: stream the rest page by page rather than holding it all in memory.
    let store = state.store.clone();
    let rest = futures::stream::unfold((first.next, out.len()), move |(cursor, room)| {
        let store = store.clone();
        let filter = filter.clone();
        async move {
            let cursor = cursor?;
            let splice = blox_store::Splice {
                lead: true,
                ..render::RECORD
            };
            match store
                .list_spliced(
                    kind,
                    &filter,
                    PageRequest {
                        after: Some(cursor),
                        limit: Some(page_size),
                    },
                    splice,
                    page_buffer(room),
                )
                .await
            {
                Ok(page) => {
                    let mut out = page.out;
                    if page.next.is_none() {
                        render::list_end(&mut out, None);
                    }
                    let room = out.len();
                    Some((Ok(Bytes::from(out)), (page.next, room)))
                }
                Err(err) => {
                    // Too late for a status code: cut the body so the client sees it incomplete.
                    tracing::error!(error = %err, "listing failed mid-response");
                    Some((Err(std::io::Error::other(err.to_string())), (None, 0)))
                }
            }
        }
    });
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(out)) }).chain(rest);
    Ok(with_json_type(Response::new(Body::from_stream(body))))
}

/// The buffer for a listing's next page, the one before it `previous` bytes long: pages are about
/// as long as each other, so room for one up front rather than grown by doubling.
pub fn page_buffer(previous: usize) -> Vec<u8> {
    Vec::with_capacity(previous + previous / 8)
}

/// Get one task by cluster (name or ARN) and task ARN (either format; slashes may be literal).
#[utoipa::path(get, path = "/v1/tasks/{cluster}/{arn}", tag = "cluster state",
    params(blox_api::TaskPath),
    responses((status = 200, body = TaskRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_task(
    State(state): State<Arc<AppState>>,
    Path(rest): Path<String>,
) -> Result<Response, ApiError> {
    let (cluster, arn) = split_cluster_and_arn(&rest)?;
    get(&state, Kind::Task, cluster, arn).await
}

/// Get one container instance by cluster (name or ARN) and container-instance ARN.
#[utoipa::path(get, path = "/v1/instances/{cluster}/{arn}", tag = "cluster state",
    params(blox_api::InstancePath),
    responses((status = 200, body = InstanceRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_instance(
    State(state): State<Arc<AppState>>,
    Path(rest): Path<String>,
) -> Result<Response, ApiError> {
    let (cluster, arn) = split_cluster_and_arn(&rest)?;
    get(&state, Kind::Instance, cluster, arn).await
}

/// Splits `{cluster}/{arn}`, where either may hold literal slashes: a cluster ARN ends in
/// `cluster/NAME` and task ARNs in `task/ID` or `task/CLUSTER/ID`. The entity ARN starts at the last
/// `/arn:`; without one (a malformed ARN), at the first slash, so that the ARN gets its own error.
fn split_cluster_and_arn(rest: &str) -> Result<(&str, &str), ApiError> {
    let split = rest
        .rfind("/arn:")
        .map(|i| (&rest[..i], &rest[i + 1..]))
        .or_else(|| rest.split_once('/'));
    match split {
        Some((cluster, arn)) if !cluster.is_empty() && !arn.is_empty() => Ok((cluster, arn)),
        _ => Err(ApiError::not_found(
            "UnknownRoute",
            "expected a path of the form {cluster}/{arn}",
        )),
    }
}

async fn get(state: &AppState, kind: Kind, cluster: &str, arn: &str) -> Result<Response, ApiError> {
    let cluster = parse_cluster("cluster", cluster)?.name;
    let (parsed, what) = match kind {
        Kind::Task => (ResourceArn::task(arn), "task"),
        Kind::Instance => (ResourceArn::container_instance(arn), "container instance"),
        // Scheduler documents have no ARN; no route looks them up here.
        Kind::Environment | Kind::Revision | Kind::Deployment | Kind::Intent | Kind::Failure | Kind::Name => {
            return Err(ApiError::not_found(
                "UnknownRoute",
                format!("no {kind} is looked up by ARN"),
            ));
        }
    };
    let parsed =
        parsed.map_err(|e| ApiError::bad_request("arn", "InvalidArn", format!("invalid {what} ARN: {e}")))?;
    if let Some(named) = parsed.cluster.as_ref().filter(|named| **named != cluster) {
        return Err(ApiError::bad_request(
            "arn",
            "ClusterMismatch",
            format!("the {what} ARN names cluster {named} but the path names cluster {cluster}"),
        ));
    }
    let key = Key {
        kind,
        cluster: cluster.clone(),
        id: arn.to_owned(),
    };
    let record = state
        .store
        .get(&key)
        .await?
        .ok_or_else(|| not_found(what, arn, &cluster))?;
    let mut out = Vec::with_capacity(record.doc.body.len() + 64);
    render::record(&mut out, record.seq, false, &record.doc.body);
    Ok(json(out))
}

fn not_found(what: &str, arn: &str, cluster: &ClusterName) -> ApiError {
    let code = if what == "task" {
        "TaskNotFound"
    } else {
        "InstanceNotFound"
    };
    ApiError::not_found(code, format!("{what} {arn} not found in cluster {cluster}"))
}

/// Page size of `GET /v1/dead-letters` without `maxResults`: a parked message can be as large as
/// SQS allows (256 KiB), so the listing is always paged.
pub const DEAD_LETTER_PAGE: usize = 100;

/// Messages that could not be applied (not JSON, not a valid ECS event), newest first, a page at a
/// time: `maxResults` of them (100 without it), with `nextToken` when there are more.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "operations", params(blox_api::PageQuery),
    responses((status = 200, body = DeadLetters), (status = 400, body = ErrorBody)))]
pub async fn list_dead_letters(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<DeadLetters>, ApiError> {
    let params = Params::parse(query.as_deref(), &["maxResults", "nextToken"])?;
    let page = state
        .store
        .dead_letters(PageRequest {
            after: params.next_token()?,
            limit: Some(params.max_results()?.unwrap_or(DEAD_LETTER_PAGE)),
        })
        .await?;
    Ok(Json(DeadLetters {
        items: page
            .items
            .into_iter()
            .map(|d| DeadLetter {
                id: d.id.to_string(),
                message_id: d.message_id,
                received_at: d.received_at,
                reason: d.reason,
                body: d.body,
            })
            .collect(),
        next_token: page.next.as_ref().map(encode_token),
    }))
}

/// Removes a parked message once an operator has dealt with it.
#[utoipa::path(delete, path = "/v1/dead-letters/{id}", tag = "operations",
    params(blox_api::DeadLetterPath),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_dead_letter(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let parsed = id
        .parse::<u64>()
        .map_err(|_| ApiError::bad_request("id", "InvalidId", format!("invalid dead letter id {id:?}")))?;
    if state.store.remove_dead_letter(parsed).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "DeadLetterNotFound",
            format!("dead letter {id} not found"),
        ))
    }
}

/// Which replica leads, as this one knows it. Every replica answers; only the leader runs ingestion,
/// reconciliation and the scheduler.
#[utoipa::path(get, path = "/v1/leader", tag = "operations", responses((status = 200, body = LeaderStatus)))]
pub async fn leader(State(state): State<Arc<AppState>>) -> Json<LeaderStatus> {
    Json(leader_status(&state))
}

/// Which replica leads, as this one knows it.
pub fn leader_status(state: &AppState) -> LeaderStatus {
    let leader = state.leadership.leader().borrow().clone();
    LeaderStatus {
        self_id: state.leadership.replica_id().to_owned(),
        leader: leader.as_ref().map(|leader| leader.id.clone()),
        lease_ttl_seconds: state.leadership.lease_ttl().as_secs(),
        since: leader.map(|leader| blox_model::emit::rfc3339_millis(leader.since_ms)),
    }
}

/// The process is alive and serving.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Ready once the first full reconcile pass has completed; 503 until then.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let readiness = state.readiness.snapshot();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    for kind in [Kind::Task, Kind::Instance] {
        if let Ok(n) = state.store.count(kind).await {
            metrics::gauge!(crate::metrics::ENTITIES, "kind" => kind.name()).set(n as f64);
        }
    }
    if let Ok(bounds) = state.store.log_bounds().await {
        metrics::gauge!(crate::metrics::CHANGE_LOG_HEAD).set(bounds.head as f64);
    }
    metrics::gauge!(crate::metrics::API_REQUESTS_IN_FLIGHT).set(state.gates.in_flight_now() as f64);
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn json(body: Vec<u8>) -> Response {
    with_json_type(Response::new(Body::from(body)))
}

fn with_json_type(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
