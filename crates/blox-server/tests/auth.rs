//! Authentication and authorisation in-process, through `blox_server::router`: every route of the
//! OpenAPI document (and the routes outside it) in one table, asked with no token, a read token and an
//! admin token of a router with tokens, and once of the same router without tokens, which gives the
//! route's own answer. Two apps over twin stores (the same simulated account, the same setup), so
//! that the writes of the table leave them alike.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use blox_aws::EcsControl;
use blox_server::auth::Tokens;
use blox_server::{AppState, ReconcileOptions, Reconciler, documents};
use blox_sim::{NewInstance, Simulator, ThrottleConfig};
use blox_store::{DeadLetter, MemStore, Store, StoreOptions, Write};
use blox_testkit::entities;
use common::{container, simulator};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

const READ: &str = "read-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";
const DEADLINE: Duration = Duration::from_secs(30);

fn tokens() -> Arc<Tokens> {
    let file = format!("# the matrix's tokens\nread {READ}\nadmin {ADMIN}\n");
    Arc::new(Tokens::parse(&file, Path::new("tokens")).expect("a valid token file"))
}

/// Cluster `prod`: one instance, task definitions `daemon:1` and `daemon:2`.
fn account() -> Simulator {
    let sim = simulator(ThrottleConfig::unlimited());
    sim.write(|ecs, now| {
        ecs.create_cluster("prod").expect("cluster");
        for memory in [128, 256] {
            ecs.register_task_definition("daemon", None, None, container(memory))
                .expect("td");
        }
        ecs.register_container_instance("prod", NewInstance::ec2("m5.large", "us-east-1a"), now)
            .expect("instance");
    });
    sim
}

/// The values a path of the table names, which differ between the two apps.
struct App {
    router: Router,
    /// `Authorization` for the setup's writes.
    admin: Option<&'static str>,
    instance: String,
    dead_letter: String,
    v1_deployment: String,
    v03_deployment: String,
    v03_token: String,
    shutdown: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An answer: the status, the `WWW-Authenticate` header and, unless it is a stream, the body.
struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    body: Value,
}

async fn call(
    router: &Router,
    method: &Method,
    uri: &str,
    body: Option<&Value>,
    authorization: Option<&str>,
) -> Answer {
    let mut request = Request::builder().method(method.clone()).uri(uri);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    // A stream's body never ends: its status is the answer.
    let body = if (uri.starts_with("/v1/stream/") || uri == "/ui/api/events") && status == StatusCode::OK {
        Value::Null
    } else {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Answer {
        status,
        challenge,
        body,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

impl App {
    async fn new(sim: &Simulator, tokens: Option<Arc<Tokens>>) -> App {
        let store: Arc<dyn Store> = Arc::new(MemStore::new(StoreOptions::default()));
        let readiness = Arc::default();
        Reconciler::new(
            store.clone(),
            Arc::new(sim.clone()),
            ReconcileOptions::default(),
            Arc::clone(&readiness),
        )
        .pass()
        .await;
        let task = entities::task("prod", "t1");
        store
            .apply(vec![
                Write::Upsert(documents::task(
                    blox_model::ClusterName::new("prod").unwrap(),
                    &task,
                )),
                Write::Park(DeadLetter {
                    id: 0,
                    message_id: Some("m1".into()),
                    received_at: "2026-11-25T10:00:00Z".into(),
                    reason: "not an ECS event".into(),
                    body: "{}".into(),
                }),
            ])
            .await
            .expect("seeded");
        let shutdown = CancellationToken::new();
        let control: Arc<dyn EcsControl> = Arc::new(sim.clone());
        let mut state = AppState::new(store.clone(), Some(control), shutdown.clone())
            .await
            .expect("state");
        state.readiness = readiness;
        let with_tokens = tokens.is_some();
        state.auth = tokens;
        let head = store.log_bounds().await.expect("bounds").head;
        assert!(
            state.view.caught_up(head, DEADLINE).await,
            "the view reads the store"
        );
        let mut app = App {
            router: blox_server::router(state),
            admin: with_tokens.then_some(ADMIN),
            instance: String::new(),
            dead_letter: String::new(),
            v1_deployment: String::new(),
            v03_deployment: String::new(),
            v03_token: String::new(),
            shutdown,
        };
        let instances = app.ok(Method::GET, "/v1/instances", None).await;
        app.instance = instances["items"][0]["entity"]["containerInstanceARN"]
            .as_str()
            .expect("an instance")
            .to_owned();
        let letters = app.ok(Method::GET, "/v1/dead-letters", None).await;
        app.dead_letter = letters["items"][0]["id"]
            .as_str()
            .expect("a dead letter")
            .to_owned();
        let web = json!({"environmentName": "web", "taskDefinition": "daemon:1"});
        app.ok(Method::POST, "/v1/prod/environments", Some(web)).await;
        let started = app
            .ok(
                Method::POST,
                "/v1/prod/environments/web/deployments?revisionId=1",
                None,
            )
            .await;
        app.v1_deployment = started["deployment"]["deploymentId"]
            .as_str()
            .expect("a deployment id")
            .to_owned();
        let legacy =
            json!({"name": "legacy", "instanceGroup": {"cluster": "prod"}, "taskDefinition": "daemon:1"});
        let created = app.ok(Method::POST, "/v1/environments", Some(legacy)).await;
        app.v03_token = created["deploymentToken"].as_str().expect("a token").to_owned();
        let uri = format!(
            "/v1/environments/legacy/deployments?deploymentToken={}",
            app.v03_token
        );
        let deployment = app.ok(Method::POST, &uri, None).await;
        app.v03_deployment = deployment["id"]
            .as_str()
            .expect("a v0.3 deployment id")
            .to_owned();
        app
    }

    /// A setup request, which must succeed.
    async fn ok(&self, method: Method, uri: &str, body: Option<Value>) -> Value {
        let authorization = self.admin.map(bearer);
        let answer = call(
            &self.router,
            &method,
            uri,
            body.as_ref(),
            authorization.as_deref(),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{method} {uri}: {}", answer.body);
        answer.body
    }

    /// `path` with this app's values.
    fn path(&self, path: &str) -> String {
        let task = entities::task_arn("prod", "t1");
        path.replace("{task}", &encode(&task))
            .replace("{instance}", &encode(&self.instance))
            .replace("{dead_letter}", &self.dead_letter)
            .replace("{v1_deployment}", &self.v1_deployment)
            .replace("{v03_deployment}", &self.v03_deployment)
            .replace("{v03_token}", &self.v03_token)
    }
}

fn encode(text: &str) -> String {
    text.replace(':', "%3A").replace('/', "%2F")
}

/// One request of the matrix: the route (method and path template of the OpenAPI document, or a
/// route outside it), the request, and the route's own status, which the router without tokens
/// answers.
struct Row {
    method: Method,
    template: &'static str,
    path: &'static str,
    body: Option<Value>,
    own: u16,
}

fn row(method: Method, template: &'static str, path: &'static str, body: Option<Value>, own: u16) -> Row {
    Row {
        method,
        template,
        path,
        body,
        own,
    }
}

/// Every route, reads first, then writes in an order that keeps each meaningful.
fn table() -> Vec<Row> {
    let (get, post, put, delete) = (Method::GET, Method::POST, Method::PUT, Method::DELETE);
    let v1 = "/v1/{cluster}/environments/{environmentName}";
    vec![
        // Open to everyone.
        row(get.clone(), "/healthz", "/healthz", None, 200),
        row(get.clone(), "/readyz", "/readyz", None, 200),
        // The dashboard's page, assets and session probe: no data in them.
        row(get.clone(), "(dashboard)", "/", None, 307),
        row(get.clone(), "(dashboard)", "/ui/", None, 200),
        row(get.clone(), "(dashboard)", "/ui/environments/web", None, 200),
        row(get.clone(), "(dashboard)", "/ui/assets/app.js", None, 200),
        row(get.clone(), "/ui/api/session", "/ui/api/session", None, 200),
        // The dashboard's data.
        row(get.clone(), "/ui/api/overview", "/ui/api/overview", None, 200),
        row(
            get.clone(),
            "/ui/api/clusters/{cluster}",
            "/ui/api/clusters/prod",
            None,
            200,
        ),
        row(
            get.clone(),
            "/ui/api/environments/{name}",
            "/ui/api/environments/web",
            None,
            200,
        ),
        row(get.clone(), "/ui/api/events", "/ui/api/events", None, 200),
        // Reads.
        row(get.clone(), "/metrics", "/metrics", None, 200),
        row(get.clone(), "/openapi.json", "/openapi.json", None, 200),
        row(get.clone(), "/docs/", "/docs/", None, 200),
        row(get.clone(), "/v1/tasks", "/v1/tasks?cluster=prod", None, 200),
        row(
            get.clone(),
            "/v1/tasks/{cluster}/{arn}",
            "/v1/tasks/prod/{task}",
            None,
            200,
        ),
        row(get.clone(), "/v1/instances", "/v1/instances", None, 200),
        row(
            get.clone(),
            "/v1/instances/{cluster}/{arn}",
            "/v1/instances/prod/{instance}",
            None,
            200,
        ),
        row(get.clone(), "/v1/stream/tasks", "/v1/stream/tasks", None, 200),
        row(
            get.clone(),
            "/v1/stream/instances",
            "/v1/stream/instances",
            None,
            200,
        ),
        row(get.clone(), "/v1/dead-letters", "/v1/dead-letters", None, 200),
        row(get.clone(), "/v1/ping", "/v1/ping", None, 200),
        row(get.clone(), "/v1/leader", "/v1/leader", None, 200),
        row(get.clone(), "/v1/environments", "/v1/environments", None, 200),
        row(
            get.clone(),
            "/v1/environments/{name}",
            "/v1/environments/legacy",
            None,
            200,
        ),
        row(
            get.clone(),
            "/v1/environments/{name}/deployments",
            "/v1/environments/legacy/deployments",
            None,
            200,
        ),
        row(
            get.clone(),
            "/v1/environments/{name}/deployments/{id}",
            "/v1/environments/legacy/deployments/{v03_deployment}",
            None,
            200,
        ),
        row(
            get.clone(),
            "/v1/{cluster}/environments",
            "/v1/prod/environments",
            None,
            200,
        ),
        row(get.clone(), v1, "/v1/prod/environments/web", None, 200),
        row(
            get.clone(),
            "/v1/{cluster}/environments/{environmentName}/revisions",
            "/v1/prod/environments/web/revisions",
            None,
            200,
        ),
        row(
            get.clone(),
            "/v1/{cluster}/environments/{environmentName}/revisions/{environmentRevisionId}",
            "/v1/prod/environments/web/revisions/1",
            None,
            200,
        ),
        row(
            get.clone(),
            "/v1/{cluster}/environments/{environmentName}/deployments",
            "/v1/prod/environments/web/deployments",
            None,
            200,
        ),
        row(
            get.clone(),
            "/v1/{cluster}/environments/{environmentName}/deployments/{deploymentId}",
            "/v1/prod/environments/web/deployments/{v1_deployment}",
            None,
            200,
        ),
        // Neither a route nor a method: still nothing without a token.
        row(
            get.clone(),
            "(unknown path)",
            "/v1/nothing/here/at/all",
            None,
            404,
        ),
        row(Method::PATCH, "(unknown method)", "/v1/tasks", None, 405),
        // Writes.
        row(
            post.clone(),
            "/v1/environments",
            "/v1/environments",
            Some(
                json!({"name": "other", "instanceGroup": {"cluster": "prod"}, "taskDefinition": "daemon:1"}),
            ),
            200,
        ),
        // The token was used by the setup's deployment: v0.3 refuses it.
        row(
            post.clone(),
            "/v1/environments/{name}/deployments",
            "/v1/environments/legacy/deployments?deploymentToken={v03_token}",
            None,
            400,
        ),
        row(
            put.clone(),
            "/v1/environments/{name}",
            "/v1/environments/legacy",
            Some(json!({"taskDefinition": "daemon:2"})),
            200,
        ),
        row(
            delete.clone(),
            "/v1/environments/{name}",
            "/v1/environments/legacy",
            None,
            200,
        ),
        row(
            post.clone(),
            "/v1/{cluster}/environments",
            "/v1/prod/environments",
            Some(json!({"environmentName": "api", "taskDefinition": "daemon:1"})),
            200,
        ),
        row(
            put.clone(),
            v1,
            "/v1/prod/environments/web",
            Some(json!({"taskDefinition": "daemon:2"})),
            200,
        ),
        row(
            post.clone(),
            "/v1/{cluster}/environments/{environmentName}/deployments/{deploymentId}/stop",
            "/v1/prod/environments/web/deployments/{v1_deployment}/stop",
            None,
            200,
        ),
        // Stopped, and without a canary: an admin is refused by the lifecycle, not the token check.
        row(
            post.clone(),
            "/v1/{cluster}/environments/{environmentName}/deployments/{deploymentId}/promote",
            "/v1/prod/environments/web/deployments/{v1_deployment}/promote",
            None,
            409,
        ),
        row(
            post.clone(),
            "/v1/{cluster}/environments/{environmentName}/deployments",
            "/v1/prod/environments/web/deployments?revisionId=2",
            None,
            200,
        ),
        row(
            post.clone(),
            "/v1/{cluster}/environments/{environmentName}/freeze",
            "/v1/prod/environments/web/freeze",
            None,
            200,
        ),
        row(
            post.clone(),
            "/v1/{cluster}/environments/{environmentName}/thaw",
            "/v1/prod/environments/web/thaw",
            None,
            200,
        ),
        row(
            post.clone(),
            "/v1/{cluster}/environments/{environmentName}/rollback",
            "/v1/prod/environments/web/rollback",
            Some(json!({"environmentRevisionId": "1"})),
            200,
        ),
        row(delete.clone(), v1, "/v1/prod/environments/api", None, 200),
        row(
            delete.clone(),
            "/v1/dead-letters/{id}",
            "/v1/dead-letters/{dead_letter}",
            None,
            204,
        ),
    ]
}

/// Every operation of the OpenAPI document, as `METHOD /path`.
fn documented_operations() -> BTreeSet<String> {
    let doc: Value = serde_json::from_str(&blox_server::openapi_json()).unwrap();
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            if [
                "get", "put", "post", "delete", "patch", "head", "options", "trace",
            ]
            .contains(&method.as_str())
            {
                operations.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    operations
}

#[test]
fn the_table_covers_every_documented_route() {
    let covered: BTreeSet<String> = table()
        .iter()
        .map(|r| format!("{} {}", r.method, r.template))
        .collect();
    let missing: Vec<String> = documented_operations().difference(&covered).cloned().collect();
    assert!(
        missing.is_empty(),
        "routes of openapi/blox.json missing from the auth matrix: {missing:?}"
    );
}

fn assert_refused(answer: &Answer, status: StatusCode, code: &str, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
    assert_eq!(answer.body["code"], code, "{what}: {}", answer.body);
    assert!(
        answer.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {}",
        answer.body
    );
    if status == StatusCode::UNAUTHORIZED {
        assert!(
            answer
                .challenge
                .as_deref()
                .is_some_and(|c| c.starts_with("Bearer realm=\"blox\"")),
            "{what}: WWW-Authenticate {:?}",
            answer.challenge
        );
    }
}

#[tokio::test]
async fn every_route_needs_a_token_of_the_right_role() {
    let sim = account();
    let open = App::new(&sim, None).await;
    let secured = App::new(&sim, Some(tokens())).await;
    let (read, admin) = (bearer(READ), bearer(ADMIN));
    let mut summary = Vec::new();
    for row in table() {
        let what = format!("{} {}", row.method, row.path);
        let body = row.body.as_ref();
        let own = call(&open.router, &row.method, &open.path(row.path), body, None).await;
        assert_eq!(
            own.status.as_u16(),
            row.own,
            "{what} without tokens: {}",
            own.body
        );

        let path = secured.path(row.path);
        let is_open =
            ["/healthz", "/readyz", "/ui/api/session"].contains(&row.path) || row.template == "(dashboard)";
        let none = call(&secured.router, &row.method, &path, body, None).await;
        let with_read = call(&secured.router, &row.method, &path, body, Some(&read)).await;
        let with_admin = call(&secured.router, &row.method, &path, body, Some(&admin)).await;
        if is_open {
            assert_eq!(none.status, own.status, "{what} with no token");
        } else {
            assert_refused(
                &none,
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                &format!("{what} with no token"),
            );
        }
        if row.method == Method::GET {
            assert_eq!(
                with_read.status, own.status,
                "{what} with a read token: {}",
                with_read.body
            );
        } else {
            assert_refused(
                &with_read,
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!("{what} with a read token"),
            );
            assert!(
                with_read.body["message"]
                    .as_str()
                    .unwrap()
                    .contains("admin token"),
                "{what}: {}",
                with_read.body
            );
        }
        assert_eq!(
            with_admin.status, own.status,
            "{what} with an admin token: {}",
            with_admin.body
        );
        summary.push(format!(
            "{what}: {} / {} / {}",
            none.status.as_u16(),
            with_read.status.as_u16(),
            with_admin.status.as_u16()
        ));
    }
    eprintln!("none / read / admin:\n{}", summary.join("\n"));
}

#[tokio::test]
async fn bad_authorization_headers_are_refused_without_echoing_the_token() {
    let sim = account();
    let app = App::new(&sim, Some(tokens())).await;
    let wrong = "wrong-0123456789abcdef";
    let none = call(&app.router, &Method::GET, "/v1/tasks", None, None).await;
    assert_refused(
        &none,
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "no Authorization header",
    );
    for (header_value, what) in [
        (format!("Bearer {wrong}"), "an unknown token"),
        (format!("Basic {READ}"), "another scheme"),
        (READ.to_owned(), "no scheme"),
        ("Bearer ".to_owned(), "no token"),
        (format!("Bearer {READ} {READ}"), "two tokens"),
        (
            format!("Bearer {}", &READ[..READ.len() - 1]),
            "a prefix of a token",
        ),
    ] {
        let answer = call(&app.router, &Method::GET, "/v1/tasks", None, Some(&header_value)).await;
        assert_refused(&answer, StatusCode::UNAUTHORIZED, "Unauthorized", what);
        let text = answer.body.to_string();
        assert!(!text.contains(wrong) && !text.contains(READ), "{what}: {text}");
    }
    let unknown = call(
        &app.router,
        &Method::GET,
        "/v1/tasks",
        None,
        Some(&format!("Bearer {wrong}")),
    )
    .await;
    assert_eq!(unknown.body["message"], "the token is not valid for this blox");
    assert_eq!(
        unknown.challenge.as_deref(),
        Some("Bearer realm=\"blox\", error=\"invalid_token\"")
    );

    // The scheme in any case.
    let answer = call(
        &app.router,
        &Method::GET,
        "/v1/tasks",
        None,
        Some(&format!("bearer {READ}")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    // Two Authorization headers are refused, whatever they hold.
    let request = Request::builder()
        .uri("/v1/tasks")
        .header(header::AUTHORIZATION, bearer(ADMIN))
        .header(header::AUTHORIZATION, bearer(ADMIN))
        .body(Body::empty())
        .unwrap();
    let response = app.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Failures are counted by reason.
    let metrics = call(&app.router, &Method::GET, "/metrics", None, Some(&bearer(READ))).await;
    let text = metrics.body.as_str().expect("metrics text");
    for reason in ["missing", "malformed", "invalid"] {
        assert!(
            text.contains(&format!("blox_api_auth_failures_total{{reason=\"{reason}\"}}")),
            "{reason}: {text}"
        );
    }
    let forbidden = call(
        &app.router,
        &Method::DELETE,
        "/v1/prod/environments/web",
        None,
        Some(&bearer(READ)),
    )
    .await;
    assert_refused(
        &forbidden,
        StatusCode::FORBIDDEN,
        "Forbidden",
        "a read token on a delete",
    );
    let metrics = call(&app.router, &Method::GET, "/metrics", None, Some(&bearer(ADMIN))).await;
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains("blox_api_auth_failures_total{reason=\"forbidden\"}"),
        "{}",
        metrics.body
    );
}
