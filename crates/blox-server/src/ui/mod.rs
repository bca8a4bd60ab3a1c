//! The dashboard: one page of HTML, a script and a style sheet, embedded in the binary and served at
//! `/ui/` (no CDN, no build step), over the JSON under `/ui/api/` and the rest of the API. Live pages
//! follow `/ui/api/events`: server-sent events fed by the view's one change-log reader
//! ([`crate::view::View::feed`]), each subscriber coalescing what it missed, never a log reader per
//! browser. Everything shown is computed by what the API already uses: the planner's counts and
//! coverage, the view's instances, the metrics.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Json, Router, routing::get};
use blox_api::ErrorBody;
use blox_api::dashboard::{
    ClusterGrid, ClusterSummary, EnvironmentPage, EnvironmentSummary, GridCell, GridInstance, IngestSummary,
    Overview, Rollout, Session,
};
use blox_model::ClusterName;
use blox_model::daemon::{self, Coverage};
use blox_store::PageRequest;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::api::AppState;
use crate::auth::{Refusal, Role};
use crate::env_api;
use crate::environments::{self, Stored};
use crate::error::ApiError;
use crate::query::{Params, parse_cluster};
use crate::view::{Applied, TaskTally};

/// The live pages' event stream.
pub const EVENTS_PATH: &str = "/ui/api/events";

/// Shortest gap between two events to one subscriber: what arrives meanwhile is merged into the
/// next, so a page redraws at most this often however fast the fleet changes.
const EVENT_GAP: Duration = Duration::from_millis(100);

/// How long a data answer waits for the view to reach the store's last commit (then it answers
/// with what the view has).
const VIEW_CATCH_UP: Duration = Duration::from_secs(1);

/// The longest silence on the events stream.
const EVENTS_HEARTBEAT: Duration = Duration::from_secs(5);

/// How long an overview waits for every task to have been read once.
const TASK_COUNT_WAIT: Duration = Duration::from_secs(2);

/// Dead letters counted at most (past it the overview says "at least").
const DEAD_LETTERS_COUNTED: usize = 100_000;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Whether a path is the dashboard's page or one of its assets (served without a token: they hold
/// no data; the page asks for the token and sends it with every call).
pub fn is_shell(path: &str) -> bool {
    path == "/"
        || path == "/ui"
        || path == SESSION_PATH
        || (path.starts_with("/ui/") && !path.starts_with("/ui/api/"))
}

/// Answers without a token (saying that one is needed) so that a page can ask for one before it
/// calls anything that would be refused.
const SESSION_PATH: &str = "/ui/api/session";

/// The dashboard's routes, over the API's state.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui/", get(page))
        .route("/ui/assets/{file}", get(asset))
        .route(SESSION_PATH, get(session))
        .route("/ui/api/overview", get(overview))
        .route("/ui/api/clusters/{cluster}", get(cluster_grid))
        .route("/ui/api/environments/{name}", get(environment_page))
        .route(EVENTS_PATH, get(events))
        .route("/ui/api/{*rest}", get(unknown_data))
        // Every other page of the app (`/ui/clusters/…`, `/ui/environments/…`): the same HTML, which
        // routes by its address.
        .route("/ui/{*page}", get(page))
}

/// What the page may load and who may frame it: its own assets and API only (a script injected
/// through data could send nothing elsewhere), and no framing (its action buttons cannot be
/// clicked through another site's page). Inline styles are the grids' widths.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => {
            return ApiError::not_found("UnknownAsset", format!("no dashboard asset {file:?}"))
                .into_response();
        }
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidated on each load: the binary may have been upgraded under the same address.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn unknown_data(Path(rest): Path<String>) -> ApiError {
    ApiError::not_found(
        "UnknownRoute",
        format!("no endpoint at /ui/api/{rest}; see /openapi.json"),
    )
}

/// What the caller's token may do, for the page to ask for one or hide its actions. Answers without
/// a token (`role` null); a token that is not valid is refused as everywhere else.
#[utoipa::path(get, path = "/ui/api/session", tag = "dashboard",
    responses((status = 200, body = Session), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn session(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let role = match &state.auth {
        // Without a token file every request may do everything.
        None => Some(Role::Admin),
        Some(tokens) => match crate::auth::authenticate(tokens, &headers) {
            Ok(role) => Some(role),
            Err(Refusal::Missing) => None,
            Err(refusal) => return Ok(refusal.response(&method)),
        },
    };
    Ok(Json(Session {
        role: role.map(|r| r.name().to_owned()),
        auth: state.auth.is_some(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
    .into_response())
}

/// Clusters, environments, ingestion, reconciliation and dead letters at a glance.
#[utoipa::path(get, path = "/ui/api/overview", tag = "dashboard",
    responses((status = 200, body = Overview), (status = 400, body = ErrorBody)))]
pub async fn overview(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Overview>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    caught_up(&state).await?;
    // Every task's status is counted once every task has been read (once per start; the first
    // overview waits a moment for it, then answers without the counts and the page asks again).
    let tasks_known = state.view.task_groups_loaded(&state.store, TASK_COUNT_WAIT).await;
    let dead_letters = count_dead_letters(&state).await?;
    let head = state.store.log_bounds().await?.head;
    let rendered = state.metrics.render();
    let metric = |name| crate::metrics::sum(&rendered, name);
    let ingest = IngestSummary {
        events_applied: metric(crate::metrics::EVENTS_APPLIED).unwrap_or(0.0) as u64,
        events_stale: metric(crate::metrics::EVENTS_STALE).unwrap_or(0.0) as u64,
        events_parked: metric(crate::metrics::EVENTS_PARKED).unwrap_or(0.0) as u64,
        queue_lag_seconds: metric(crate::metrics::QUEUE_LAG_SECONDS),
        queue_messages: crate::metrics::sum_where(
            &rendered,
            crate::metrics::QUEUE_MESSAGES,
            "state=\"visible\"",
        ),
    };
    let stored = stored_of(&state, |_, _| true);
    let view = state.view.read();
    // A cluster with no instance in view (an environment's, all its instances gone).
    let empty = |name: &ClusterName| ClusterSummary {
        cluster: name.to_string(),
        instances: 0,
        instances_by_status: BTreeMap::new(),
        agents_disconnected: 0,
        tasks_by_status: tasks_known.then(|| task_counts(None)),
        environments: Vec::new(),
    };
    let mut clusters: BTreeMap<String, ClusterSummary> = BTreeMap::new();
    for (name, cluster) in &view.clusters {
        let mut by_status = BTreeMap::new();
        let mut disconnected = 0;
        for (_, instance) in cluster.instances() {
            *by_status
                .entry(instance.status.as_str().to_owned())
                .or_insert(0u64) += 1;
            disconnected += u64::from(!instance.agent_connected);
        }
        let tasks = view.task_statuses.get(name);
        // A cluster with neither instances nor tasks (all deleted) is not shown.
        if cluster.instance_count() == 0 && tasks.is_none_or(|t| t.total() == 0) {
            continue;
        }
        clusters.insert(
            name.to_string(),
            ClusterSummary {
                instances: cluster.instance_count() as u64,
                instances_by_status: by_status,
                agents_disconnected: disconnected,
                tasks_by_status: tasks_known.then(|| task_counts(tasks)),
                ..empty(name)
            },
        );
    }
    let mut environments = Vec::new();
    for s in &stored {
        let env = s.environment();
        let live = env_api::active_in(&view, s);
        clusters
            .entry(s.cluster.to_string())
            .or_insert_with(|| empty(&s.cluster))
            .environments
            .push(env.name.clone());
        let active = s.snapshot.active();
        let (health, health_reason) = live.health.clone();
        environments.push(EnvironmentSummary {
            environment_name: env.name.clone(),
            cluster: s.cluster.to_string(),
            environment_health: env_api::health_name(health).to_owned(),
            health_reason,
            environment_status: env_api::status_name(s).to_owned(),
            task_definition: s
                .snapshot
                .latest_revision()
                .map(|r| r.task_definition.clone())
                .unwrap_or_default(),
            active_deployment_id: active.map(|d| d.id.clone()),
            active_deployment_status: active.map(|d| d.status.name().to_owned()),
            counts: env_api::task_counts(live.plan.counts),
            uncovered: live.plan.uncovered.len() as u64,
            coverage: tally(live.plan.coverage.iter().copied()),
        });
    }
    let reconcile = state.readiness.snapshot();
    let leader = crate::api::leader_status(&state);
    Ok(Json(Overview {
        clusters: clusters.into_values().collect(),
        environments,
        ingest,
        reconcile,
        leader,
        dead_letters: dead_letters.min(DEAD_LETTERS_COUNTED) as u64,
        dead_letters_at_least: dead_letters >= DEAD_LETTERS_COUNTED,
        change_log_head: head,
    }))
}

/// Dead letters, counted up to [`DEAD_LETTERS_COUNTED`].
async fn count_dead_letters(state: &AppState) -> Result<usize, ApiError> {
    let mut count = 0usize;
    let mut after = None;
    loop {
        let page = state
            .store
            .dead_letters(PageRequest {
                after,
                limit: Some(1_000),
            })
            .await?;
        count += page.items.len();
        match page.next {
            Some(next) if count < DEAD_LETTERS_COUNTED => after = Some(next),
            _ => return Ok(count),
        }
    }
}

/// Every container instance of a cluster and each environment's daemon on it; `filter` (a cluster
/// query) keeps those it matches.
#[utoipa::path(get, path = "/ui/api/clusters/{cluster}", tag = "dashboard",
    params(("cluster" = String, Path, description = "A cluster name or ARN", pattern = r"^(arn:aws(-[a-z0-9-]*)?:ecs:[a-z0-9-]+:[0-9]{12}:cluster/)?[A-Za-z0-9_-]{1,255}$"),
           ("filter" = Option<String>, Query, description = "a cluster query, e.g. `attribute:ecs.availability-zone == us-east-1a`")),
    responses((status = 200, body = ClusterGrid), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn cluster_grid(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<ClusterGrid>, ApiError> {
    let params = Params::parse(query.as_deref(), &["filter"])?;
    let filter = match params.get("filter").filter(|f| !f.trim().is_empty()) {
        Some(text) => Some(env_api::cluster_query("filter", text)?),
        None => None,
    };
    let name = parse_cluster("cluster", &cluster)?.name;
    if filter.as_ref().is_some_and(blox_model::Query::reads_task_groups) {
        // `task:group` matches only once every task's group is known.
        env_api::task_groups(&state).await?;
    }
    caught_up(&state).await?;
    let stored = stored_of(&state, |_, c| *c == name);
    let view = state.view.read();
    let Some(cluster_view) = view
        .clusters
        .get(&name)
        .filter(|c| c.instance_count() > 0 || !stored.is_empty())
    else {
        return Err(ApiError::not_found(
            "ClusterNotFound",
            format!("blox knows no container instance of cluster {name}"),
        ));
    };
    let plans: Vec<Vec<Coverage>> = stored
        .iter()
        .map(|s| env_api::active_in(&view, s).plan.coverage)
        .collect();
    let instances = cluster_view
        .instances()
        .enumerate()
        .filter(|(_, (_, instance))| {
            filter
                .as_ref()
                .is_none_or(|q| q.matches(&cluster_view.subject(instance)))
        })
        .map(|(at, (_, instance))| GridInstance {
            container_instance_arn: instance.arn.to_string(),
            status: instance.status.as_str().to_owned(),
            agent_connected: instance.agent_connected,
            running_tasks_count: instance.running_tasks_count,
            coverage: plans.iter().map(|p| coverage_name(p.get(at).copied())).collect(),
        })
        .collect();
    Ok(Json(ClusterGrid {
        cluster: name.to_string(),
        environments: stored.iter().map(|s| s.environment().name.clone()).collect(),
        instances,
        total: cluster_view.instance_count() as u64,
    }))
}

/// Everything the environment page shows: the environment, its deployments and revisions as the v1.0
/// API answers them, and the active deployment's rollout (the fleet against its floor and surge,
/// every instance's daemon), planned once. Answers are shared: browsers asking while the view has not
/// moved (and within [`PAGE_REUSE`]) get the same bytes.
#[utoipa::path(get, path = "/ui/api/environments/{name}", tag = "dashboard",
    params(("name" = String, Path, description = "the environment's name", pattern = r"^[A-Za-z0-9_-]{1,30}$")),
    responses((status = 200, body = EnvironmentPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn environment_page(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    daemon::validate_environment_name(&name)
        .map_err(|e| ApiError::bad_request("name", "InvalidName", e.reason))?;
    caught_up(&state).await?;
    let wanted = state.view.applied();
    if let Some(body) = state.ui.page(&name, wanted) {
        return Ok(json_bytes(body));
    }
    let _building = state.ui.building.lock().await;
    // Built meanwhile from a view that had what this request waited for: that answer is this one's.
    if let Some(body) = state.ui.page(&name, wanted) {
        return Ok(json_bytes(body));
    }
    let applied = state.view.applied();
    let stored = stored_of(&state, |n, _| n == name);
    let Some(stored) = stored.first() else {
        return Err(ApiError::not_found(
            "EnvironmentNotFound",
            format!("environment {name} not found"),
        ));
    };
    let page = {
        let view = state.view.read();
        let live = env_api::live_in(&view, stored);
        let empty = daemon::ClusterView::default();
        let cluster = view.clusters.get(&stored.cluster).unwrap_or(&empty);
        page_of(stored, &live, cluster, crate::clock::now_unix_ms())
    };
    let body = bytes::Bytes::from(
        serde_json::to_vec(&page).map_err(|e| ApiError::internal("writing the page", &e))?,
    );
    state.ui.keep(&name, applied, body.clone());
    Ok(json_bytes(body))
}

fn page_of(
    stored: &Stored,
    live: &env_api::Live,
    cluster: &daemon::ClusterView,
    now_ms: u64,
) -> EnvironmentPage {
    let plan = &live.plan;
    let active = stored.snapshot.active();
    let revision = active.and_then(|d| stored.snapshot.revision(d.revision));
    let config = revision
        .map(|r| r.deployment_configuration.clone())
        .unwrap_or_default();
    let instances: Vec<GridCell> = cluster
        .instances()
        .enumerate()
        .map(|(at, (_, instance))| GridCell {
            container_instance_arn: instance.arn.to_string(),
            coverage: coverage_name(plan.coverage.get(at).copied()),
        })
        .collect();
    let rollout = Rollout {
        environment_name: stored.environment().name.clone(),
        cluster: stored.cluster.to_string(),
        deployment_id: active.map(|d| d.id.clone()),
        deployment_status: active.map(|d| d.status.name().to_owned()),
        deployment_method: revision
            .map(|r| r.deployment_method)
            .unwrap_or_default()
            .name()
            .to_owned(),
        counts: env_api::task_counts(plan.counts),
        eligible: plan.fleet.eligible,
        healthy: plan.fleet.healthy,
        floor: plan.fleet.floor,
        surge: plan.fleet.surge,
        surged: plan.fleet.surged,
        outdated: plan.fleet.outdated,
        failing: plan.fleet.failing,
        held: plan.fleet.held,
        failed_attempts: plan.failed_attempts,
        failure_threshold: config.failure_threshold(plan.fleet.eligible),
        started_at: active
            .and_then(|d| d.started_at)
            .map(blox_model::emit::rfc3339_millis),
        complete: plan.complete,
        coverage: tally(plan.coverage.iter().copied()),
        instances,
        actions: daemon::lifecycle::available(&stored.snapshot, now_ms)
            .into_iter()
            .map(str::to_owned)
            .collect(),
    };
    let mut revisions: Vec<&daemon::Revision> = stored.snapshot.revisions.iter().collect();
    revisions.sort_by_key(|r| std::cmp::Reverse(r.number));
    EnvironmentPage {
        environment: crate::env_v1::environment_body_with(stored, live),
        deployments: env_api::newest_first(&stored.snapshot)
            .into_iter()
            .take(EnvironmentPage::DEPLOYMENTS)
            .map(|d| crate::env_v1::deployment_body(stored, live, d))
            .collect(),
        revisions: revisions
            .into_iter()
            .map(|r| crate::env_v1::revision_body(stored, live, r))
            .collect(),
        rollout,
    }
}

fn json_bytes(body: bytes::Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// How long an environment page's answer is reused while the view has not moved: its live counts
/// also move with time alone (a task turns healthy after `minHealthySeconds`).
const PAGE_REUSE: Duration = Duration::from_millis(250);

/// The environment pages' last answers, shared by the browsers that show them.
#[derive(Default)]
pub struct Pages {
    answers: std::sync::Mutex<std::collections::HashMap<String, (u64, tokio::time::Instant, bytes::Bytes)>>,
    /// Held while an answer is built: browsers woken by the same change wait for the first one's
    /// answer instead of each planning the fleet.
    building: tokio::sync::Mutex<()>,
}

impl Pages {
    /// An answer built from the view at `applied` or later, and recent enough.
    fn page(&self, name: &str, applied: u64) -> Option<bytes::Bytes> {
        let pages = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let (at_applied, at, body) = pages.get(name)?;
        (*at_applied >= applied && at.elapsed() < PAGE_REUSE).then(|| body.clone())
    }

    fn keep(&self, name: &str, applied: u64, body: bytes::Bytes) {
        let mut pages = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        // Answers too old to be reused go (a deleted environment's with them).
        pages.retain(|_, (_, at, _)| at.elapsed() < PAGE_REUSE);
        pages.insert(name.to_owned(), (applied, tokio::time::Instant::now(), body));
    }
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages").finish_non_exhaustive()
    }
}

/// Server-sent events: `ready` once (with the change log position), then `change` after each step
/// of the change log that the view applied (coalesced to one per 100 ms), naming the kinds, clusters
/// and environments it touched; `reload: true` when everything should be read anew.
#[utoipa::path(get, path = "/ui/api/events", tag = "dashboard",
    responses((status = 200, content_type = "text/event-stream", body = String,
               description = "events `ready` and `change`, whose data is JSON {seq, atMs, kinds, clusters, environments, reload?}"),
              (status = 400, body = ErrorBody),
              (status = 503, body = ErrorBody, description = "as many streams are open as the server takes (--max-streams)")))]
pub async fn events(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let permit = crate::stream::permit(&state)?;
    let feed = state.view.feed();
    let gauge = crate::stream::ClientGauge::labelled("dashboard", state.stream.open.clone());
    let shutdown = state.stream.shutdown.clone();
    let ready = Applied {
        seq: state.view.applied(),
        ..Applied::default()
    };
    let first = Event::default()
        .event("ready")
        .json_data(&ready)
        .map_err(|e| ApiError::internal("writing an event", &e))?;
    let subscriber = Subscriber {
        feed,
        last_sent: None,
        _held: (permit, gauge),
    };
    let live = futures::stream::unfold(subscriber, move |mut subscriber| {
        let shutdown = shutdown.clone();
        async move {
            let applied = tokio::select! {
                applied = subscriber.next() => applied?,
                () = shutdown.cancelled() => return None,
            };
            let event = Event::default()
                .event("change")
                .json_data(&applied)
                .unwrap_or_else(|_| Event::default().event("change").data("{\"reload\":true}"));
            Some((Ok::<_, Infallible>(event), subscriber))
        }
    });
    let stream = futures::StreamExt::chain(futures::stream::once(async { Ok(first) }), live);
    let mut response = Sse::new(stream)
        // Often enough that a browser gone without closing is noticed (a write fails) within seconds.
        .keep_alive(KeepAlive::new().interval(state.stream.heartbeat.min(EVENTS_HEARTBEAT)))
        .into_response();
    // Proxies must pass each event on at once.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// One browser's follow of the view's feed.
struct Subscriber {
    feed: tokio::sync::broadcast::Receiver<Arc<Applied>>,
    last_sent: Option<tokio::time::Instant>,
    /// Released when the browser goes.
    _held: (tokio::sync::OwnedSemaphorePermit, crate::stream::ClientGauge),
}

impl Subscriber {
    /// The next event: everything applied since the last one, at most one per [`EVENT_GAP`].
    /// `None` when the feed is gone.
    async fn next(&mut self) -> Option<Applied> {
        let mut merged = match self.feed.recv().await {
            Ok(applied) => (*applied).clone(),
            Err(RecvError::Lagged(_)) => lagged(),
            Err(RecvError::Closed) => return None,
        };
        if let Some(last) = self.last_sent {
            tokio::time::sleep_until(last + EVENT_GAP).await;
        }
        loop {
            match self.feed.try_recv() {
                Ok(applied) => merged.merge(&applied),
                Err(TryRecvError::Lagged(_)) => merged.merge(&lagged()),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return None,
            }
        }
        self.last_sent = Some(tokio::time::Instant::now());
        Some(merged)
    }
}

/// What a subscriber that fell behind the feed is told: read everything anew.
fn lagged() -> Applied {
    Applied {
        reload: true,
        ..Applied::default()
    }
}

/// The environments `wanted` picks by name and cluster, as the view holds them, their task groups
/// asked for.
fn stored_of(state: &AppState, wanted: impl Fn(&str, &ClusterName) -> bool) -> Vec<Stored> {
    let stored: Vec<Stored> = {
        let view = state.view.read();
        view.environments
            .iter()
            .filter(|(name, entry)| wanted(name, &entry.cluster))
            .filter_map(|(name, _)| environments::from_view(&view, name))
            .collect()
    };
    for s in &stored {
        env_api::want_task_groups(state, s);
    }
    stored
}

/// Every status, counted (zero for a cluster without tasks).
fn task_counts(tally: Option<&TaskTally>) -> BTreeMap<String, u64> {
    let none = TaskTally::default();
    tally
        .unwrap_or(&none)
        .counts()
        .map(|(status, n)| (status.to_owned(), n))
        .collect()
}

/// Waits (briefly) until the view holds every change the store has committed, so that a page drawn
/// after an action shows it.
async fn caught_up(state: &AppState) -> Result<(), ApiError> {
    let head = state.store.log_bounds().await?.head;
    state.view.caught_up(head, VIEW_CATCH_UP).await;
    Ok(())
}

fn coverage_name(coverage: Option<Coverage>) -> String {
    coverage.map_or("none", Coverage::name).to_owned()
}

fn tally(coverage: impl Iterator<Item = Coverage>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for c in coverage {
        *counts.entry(c.name().to_owned()).or_insert(0) += 1;
    }
    counts
}
