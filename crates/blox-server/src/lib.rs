//! The blox server: wires the store, the event source and ECS into activities that share nothing but
//! the store — ingestion ([`ingest`]), reconciliation ([`reconcile`]), the daemon scheduler's executor
//! ([`scheduler`]) and the REST API ([`api`], [`stream`], the environment APIs) — and the in-memory
//! [`view`] the executor and the API read, which follows the store's change log.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware;
use axum::routing::{delete, get, post};
use blox_aws::{EcsControl, EcsReader, EventSource};
use blox_store::Store;
use blox_store::leader::{Leadership, SoleLeadership, Term};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::OpenApi as _;
use utoipa_swagger_ui::SwaggerUi;

pub mod api;
pub mod auth;
pub mod clock;
pub mod documents;
mod env_api;
mod env_v03;
mod env_v1;
pub mod environments;
mod error;
pub mod ingest;
pub mod limits;
pub mod metrics;
mod query;
pub mod reconcile;
pub mod render;
pub mod scheduler;
pub mod stream;
pub mod tls;
pub mod ui;
pub mod view;

pub use api::{ApiDoc, AppState};
pub use clock::Clock;
pub use error::V03Errors;
pub use ingest::{IngestOptions, Ingestor};
pub use limits::{Gates, Limits};
pub use reconcile::{ReadinessState, ReconcileOptions, Reconciler};
pub use scheduler::{Scheduler, SchedulerOptions};
pub use stream::StreamOptions;
pub use tls::TlsConfig;
pub use view::View;

/// The OpenAPI document, as checked in at `openapi/blox.json`.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| unreachable!("the OpenAPI document serialises: {e}"))
}

/// The HTTP application over a state. Used by [`serve`] and by in-process tests. With
/// `state.auth`, the token check wraps everything, the OpenAPI document and docs included: no route
/// but `/healthz` and `/readyz` answers without a token.
pub fn router(state: AppState) -> Router {
    let (tokens, gates) = (state.auth.clone(), state.gates.clone());
    limits::layers(routes(state), gates, tokens)
}

/// The routes alone: no token check, no limits, panics not caught. Never served by blox; `blox
/// bench` measures [`router`]'s cost against it.
pub fn routes(state: AppState) -> Router {
    // Blox v0.3's routes, whose errors can be v0.3's plain text.
    let v03 = Router::new()
        .route("/v1/tasks", get(api::list_tasks))
        .route("/v1/tasks/{*cluster_and_arn}", get(api::get_task))
        .route("/v1/instances", get(api::list_instances))
        .route("/v1/instances/{*cluster_and_arn}", get(api::get_instance))
        .route("/v1/stream/tasks", get(stream::stream_tasks))
        .route("/v1/stream/instances", get(stream::stream_instances))
        .route("/v1/ping", get(env_v03::ping))
        .route(
            "/v1/environments",
            post(env_v03::create_environment).get(env_v03::list_environments),
        )
        .route(
            "/v1/environments/{name}",
            get(env_v03::get_environment)
                .put(env_v03::update_environment)
                .delete(env_v03::delete_environment),
        )
        .route(
            "/v1/environments/{name}/deployments",
            post(env_v03::create_deployment).get(env_v03::list_deployments),
        )
        .route(
            "/v1/environments/{name}/deployments/{id}",
            get(env_v03::get_deployment),
        )
        // Rejections made JSON first (an `ApiError`), so that the text layer can rewrite them too.
        .route_layer(middleware::from_fn_with_state(
            state.gates.limits.max_body_bytes,
            limits::json_errors,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.v03_errors,
            error::v03_errors,
        ));
    // Blox v1.0's environments, under a cluster. Static segments above win over `{cluster}`.
    let v1 = Router::new()
        .route(
            "/v1/{cluster}/environments",
            get(env_v1::list_environments).post(env_v1::create_environment),
        )
        .route(
            "/v1/{cluster}/environments/{environment}",
            get(env_v1::describe_environment)
                .put(env_v1::update_environment)
                .delete(env_v1::delete_environment),
        )
        .route(
            "/v1/{cluster}/environments/{environment}/revisions",
            get(env_v1::list_revisions),
        )
        .route(
            "/v1/{cluster}/environments/{environment}/revisions/{revision}",
            get(env_v1::describe_revision),
        )
        .route(
            "/v1/{cluster}/environments/{environment}/deployments",
            get(env_v1::list_deployments).post(env_v1::start_deployment),
        )
        .route(
            "/v1/{cluster}/environments/{environment}/deployments/{deployment}",
            get(env_v1::describe_deployment),
        )
        .route(
            "/v1/{cluster}/environments/{environment}/deployments/{deployment}/stop",
            post(env_v1::stop_deployment),
        )
        .route(
            "/v1/{cluster}/environments/{environment}/deployments/{deployment}/promote",
            post(env_v1::promote_deployment),
        )
        .route(
            "/v1/{cluster}/environments/{environment}/rollback",
            post(env_v1::rollback),
        )
        .route(
            "/v1/{cluster}/environments/{environment}/freeze",
            post(env_v1::freeze),
        )
        .route(
            "/v1/{cluster}/environments/{environment}/thaw",
            post(env_v1::thaw),
        );
    let api = v03
        .merge(v1)
        .route("/v1/dead-letters", get(api::list_dead_letters))
        .route("/v1/dead-letters/{id}", delete(api::delete_dead_letter))
        .route("/v1/leader", get(api::leader))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .merge(ui::routes())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        // Shared, not copied: every request clones its route, and with it the state.
        .with_state(Arc::new(state));
    api.merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
}

/// Unknown paths answer JSON like every other error.
async fn unknown_route(uri: axum::http::Uri) -> error::ApiError {
    error::ApiError::not_found(
        "UnknownRoute",
        format!("no endpoint at {}; see /openapi.json", uri.path()),
    )
}

/// A known path with a method it does not serve answers JSON too.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> error::ApiError {
    error::ApiError {
        status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
        code: "MethodNotAllowed",
        message: format!("{} does not serve {method}; see /openapi.json", uri.path()),
        field: None,
        details: None,
    }
}

/// What the server is connected to.
pub struct Services {
    pub store: Arc<dyn Store>,
    /// How this replica learns whether it leads; without it, it leads alone from the start (a
    /// store of one process).
    pub leadership: Option<Arc<dyn Leadership>>,
    /// ECS for the reconciler; without it the server serves what events bring.
    pub ecs: Option<Arc<dyn EcsReader>>,
    /// The event queue; without it the server mirrors by reconciling only.
    pub events: Option<Arc<dyn EventSource>>,
    /// ECS's StartTask/StopTask; with it (and `ecs`), the daemon scheduler runs.
    pub control: Option<Arc<dyn EcsControl>>,
    /// CloudWatch, for deployments' alarms; without it they are not watched.
    pub alarms: Option<Arc<dyn blox_aws::AlarmReader>>,
}

#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    pub reconcile: ReconcileOptions,
    pub ingest: IngestOptions,
    pub stream_heartbeat: Option<Duration>,
    pub scheduler: SchedulerOptions,
    /// How errors are written on the v0.3 routes.
    pub v03_errors: V03Errors,
    /// The server's resource bounds.
    pub limits: Limits,
    /// The API's tokens; without them every route is open.
    pub auth: Option<Arc<auth::Tokens>>,
    /// HTTPS; without it, HTTP.
    pub tls: Option<TlsConfig>,
}

/// Serves until `shutdown`, then stops ingestion (committing what was received), the reconciler and
/// the streams, and returns within `options.limits.shutdown_grace` (connections and activities still
/// busy then are abandoned).
pub async fn serve(
    listener: TcpListener,
    services: Services,
    options: ServerOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let readiness = Arc::new(ReadinessState::default());
    let mut stream = StreamOptions {
        shutdown: shutdown.clone(),
        ..StreamOptions::default()
    };
    if let Some(heartbeat) = options.stream_heartbeat {
        stream.heartbeat = heartbeat;
    }
    let view = View::spawn(
        services.store.clone(),
        options.scheduler.clock.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(std::io::Error::other)?;
    let leadership = services
        .leadership
        .clone()
        .unwrap_or_else(|| alone(services.store.clone()));
    let state = AppState {
        leadership: leadership.clone(),
        store: services.store.clone(),
        readiness: readiness.clone(),
        metrics: metrics::handle(),
        stream,
        control: services.control.clone(),
        view: view.clone(),
        v03_errors: options.v03_errors,
        gates: Gates::new(options.limits.clone()),
        auth: options.auth.clone(),
        calls_per_second: options.scheduler.calls_per_second,
        ui: Arc::default(),
    };
    let tls = options.tls.clone();

    let background = TaskTracker::new();
    let activities = Activities {
        ecs: services.ecs,
        control: services.control,
        events: services.events,
        alarms: services.alarms,
        view,
        readiness,
        options: options.clone(),
    };
    background.spawn(lead(leadership, activities, shutdown.clone()));
    background.close();

    // Connections and background activities wind down together, each within the grace.
    let grace = options.limits.shutdown_grace;
    let listener = limits::without_nagle(listener);
    let http = async {
        let app = router(state);
        let served = match tls {
            None => limits::serve_http(listener, app, &options.limits, shutdown.clone()).await,
            Some(tls) => {
                let listener = tls::TlsListener::new(listener, &tls);
                limits::serve_http(listener, app, &options.limits, shutdown.clone()).await
            }
        };
        shutdown.cancel();
        served
    };
    let background = async {
        shutdown.cancelled().await;
        if tokio::time::timeout(grace, background.wait()).await.is_err() {
            tracing::warn!(
                grace = %humantime::format_duration(grace),
                "background activities still busy after the shutdown grace: leaving them"
            );
        }
    };
    let (served, ()) = tokio::join!(http, background);
    served
}

/// The leadership of a server alone with its store, when it is given none: replica `local`, leading
/// from now on.
pub(crate) fn alone(store: Arc<dyn Store>) -> Arc<dyn Leadership> {
    Arc::new(SoleLeadership::new(
        store,
        "local".to_owned(),
        Duration::from_secs(10),
        clock::now_unix_ms(),
    ))
}

/// What only the leader runs.
struct Activities {
    ecs: Option<Arc<dyn EcsReader>>,
    control: Option<Arc<dyn EcsControl>>,
    events: Option<Arc<dyn EventSource>>,
    alarms: Option<Arc<dyn blox_aws::AlarmReader>>,
    view: Arc<View>,
    readiness: Arc<ReadinessState>,
    options: ServerOptions,
}

/// Campaigns for leadership until `shutdown`; while leading, runs ingestion, reconciliation and the
/// scheduler's executor on the term's (fenced) store, and stops them the moment the term ends.
async fn lead(leadership: Arc<dyn Leadership>, activities: Activities, shutdown: CancellationToken) {
    let replica = leadership.replica_id().to_owned();
    ::metrics::gauge!(metrics::LEADER).set(0.0);
    let mut leader = leadership.leader();
    loop {
        let acquire = leadership.acquire();
        tokio::pin!(acquire);
        let term = loop {
            // Another replica leads: this one follows (and is ready) until it may lead.
            if leader
                .borrow_and_update()
                .as_ref()
                .is_some_and(|leader| leader.id != replica)
            {
                activities.readiness.set_role(false);
            }
            tokio::select! {
                term = &mut acquire => break term,
                _ = leader.changed() => {}
                () = shutdown.cancelled() => return,
            }
        };
        let term = match term {
            Ok(term) => term,
            Err(err) => {
                tracing::warn!(replica = %replica, error = %err, "campaigning for leadership failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        tracing::info!(replica = %replica, "this replica leads: ingestion, reconciliation and the scheduler start");
        ::metrics::gauge!(metrics::LEADER).set(1.0);
        ::metrics::counter!(metrics::LEADERSHIP_CHANGES, "event" => "acquired").increment(1);
        activities.readiness.set_role(true);
        let stop = shutdown.child_token();
        let running = activities.start(&term, stop.clone());
        tokio::select! {
            () = term.guard.lost() => {
                tracing::warn!(replica = %replica, "this replica no longer leads: its activities stop");
                ::metrics::counter!(metrics::LEADERSHIP_CHANGES, "event" => "lost").increment(1);
            }
            () = shutdown.cancelled() => {}
        }
        stop.cancel();
        running.wait().await;
        ::metrics::gauge!(metrics::LEADER).set(0.0);
        activities.readiness.set_role(false);
        if shutdown.is_cancelled() {
            // What ingestion received is committed: the next leader starts at once.
            leadership.resign(&term).await;
            return;
        }
    }
}

impl Activities {
    /// Starts the leader's activities for one term; they stop when `stop` is cancelled.
    fn start(&self, term: &Term, stop: CancellationToken) -> TaskTracker {
        let running = TaskTracker::new();
        let options = &self.options;
        // Passes of this term: the scheduler plans after the term's first reconcile pass.
        let passes_before = self.readiness.snapshot().reconcile_passes;
        match (&self.ecs, &self.control) {
            (Some(ecs), Some(control)) => {
                let mut scheduler = Scheduler::new(
                    term.store.clone(),
                    ecs.clone(),
                    control.clone(),
                    self.view.clone(),
                    options.scheduler.clone(),
                )
                .with_guard(term.guard.clone());
                if let Some(alarms) = &self.alarms {
                    scheduler = scheduler.with_alarms(alarms.clone());
                }
                let (readiness, stop) = (self.readiness.clone(), stop.clone());
                running.spawn(async move {
                    // Plans need a loaded cluster view: start after the first reconcile pass.
                    while readiness.snapshot().reconcile_passes == passes_before {
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(100)) => {}
                            () = stop.cancelled() => return,
                        }
                    }
                    scheduler.run(stop).await;
                });
            }
            (None, Some(_)) => {
                tracing::warn!("ECS control without ECS reads: the daemon scheduler does not run");
            }
            _ => {}
        }
        match &self.ecs {
            Some(ecs) => {
                let reconciler = Reconciler::new(
                    term.store.clone(),
                    ecs.clone(),
                    options.reconcile.clone(),
                    self.readiness.clone(),
                )
                .with_guard(term.guard.clone());
                running.spawn(reconciler.run(stop.clone()));
            }
            None => self.readiness.ready_without_reconcile(),
        }
        if let Some(source) = &self.events {
            let ingestor = Ingestor::new(term.store.clone(), source.clone(), options.ingest.clone());
            running.spawn(ingestor.run(stop));
        }
        running.close();
        running
    }
}
