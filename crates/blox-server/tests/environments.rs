//! The daemon scheduler's two APIs in-process, through `blox_server::router`: Blox v0.3's
//! (`/v1/environments`) and Blox v1.0's (`/v1/{cluster}/environments`). Every answer of the happy
//! paths as a JSON snapshot (ids, tokens and times redacted); every bad input of every route in one
//! table; v0.3's contract (statuses, deletion, supersession) and its plain-text errors; stream content
//! types; and live counts with the real ingestion, view and executor on the simulator.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use blox_aws::EcsControl;
use blox_server::{
    AppState, IngestOptions, Ingestor, ReconcileOptions, Reconciler, Scheduler, SchedulerOptions, V03Errors,
};
use blox_sim::{NewInstance, Simulator, ThrottleConfig};
use blox_store::{MemStore, Store, StoreOptions};
use blox_testkit::wait_until;
use common::{container, simulator};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

const CLUSTER: &str = "prod";
const DEADLINE: Duration = Duration::from_secs(30);
/// Cluster `tasks`, which only its ARN can name in a v1.0 path (`/v1/tasks/...` is the task API).
const TASKS_ARN: &str = "arn:aws:ecs:us-east-1:123456789012:cluster%2Ftasks";

struct Account {
    sim: Simulator,
    td1: String,
    td2: String,
}

/// A simulated account: cluster `prod` with `instances` m5.large instances, clusters `tasks` and `dev`
/// (empty), task definitions `daemon:1` and `daemon:2`, `huge:1` (more memory than any instance has)
/// and `old:1`, deregistered (INACTIVE).
fn account(instances: usize) -> Account {
    let sim = simulator(ThrottleConfig::unlimited());
    let (td1, td2) = sim.write(|ecs, now| {
        for cluster in [CLUSTER, "tasks", "dev"] {
            ecs.create_cluster(cluster).expect("cluster");
        }
        let td1 = ecs
            .register_task_definition("daemon", None, None, container(128))
            .expect("td")
            .arn;
        let td2 = ecs
            .register_task_definition("daemon", None, None, container(256))
            .expect("td")
            .arn;
        ecs.register_task_definition("huge", None, None, container(100_000))
            .expect("td");
        let old = ecs
            .register_task_definition("old", None, None, container(128))
            .expect("td")
            .arn;
        ecs.deregister_task_definition(&old).expect("deregister");
        for _ in 0..instances {
            ecs.register_container_instance(CLUSTER, NewInstance::ec2("m5.large", "us-east-1a"), now)
                .expect("instance");
        }
        (td1, td2)
    });
    Account { sim, td1, td2 }
}

/// The router over a MemStore holding one reconciliation of the account, with the simulator as ECS
/// control and no executor: deployments stay pending, so every answer is deterministic.
struct App {
    router: Router,
    state: AppState,
    shutdown: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn app(account: &Account, errors: V03Errors) -> App {
    let store: Arc<dyn Store> = Arc::new(MemStore::new(StoreOptions::default()));
    let readiness = Arc::default();
    Reconciler::new(
        store.clone(),
        Arc::new(account.sim.clone()),
        ReconcileOptions::default(),
        Arc::clone(&readiness),
    )
    .pass()
    .await;
    let shutdown = CancellationToken::new();
    let control: Arc<dyn EcsControl> = Arc::new(account.sim.clone());
    let mut state = AppState::new(store.clone(), Some(control), shutdown.clone())
        .await
        .expect("state");
    state.readiness = readiness;
    state.v03_errors = errors;
    let head = store.log_bounds().await.expect("bounds").head;
    assert!(
        state.view.caught_up(head, DEADLINE).await,
        "the view reads the reconciled cluster"
    );
    App {
        router: blox_server::router(state.clone()),
        state,
        shutdown,
    }
}

/// An answer: status, content type and body (JSON, or a JSON string holding the text).
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Value,
}

async fn send(app: &Router, method: Method, uri: &str, body: Option<Value>, headers: HeaderMap) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    // An empty body (v0.3's ping) reads as an empty string, whatever its content type.
    let body = if !bytes.is_empty() && content_type.starts_with("application/json") {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{uri}: {e}: {bytes:?}"))
    } else {
        Value::String(String::from_utf8_lossy(&bytes).into_owned())
    };
    Answer {
        status,
        content_type,
        body,
    }
}

/// A JSON request that must succeed: its answer.
async fn ok(app: &App, method: Method, uri: &str, body: Option<Value>) -> Value {
    let answer = send(&app.router, method.clone(), uri, body, HeaderMap::new()).await;
    assert_eq!(answer.status, StatusCode::OK, "{method} {uri}: {}", answer.body);
    assert_eq!(answer.content_type, "application/json", "{method} {uri}");
    answer.body
}

fn str_of<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

// ---- redaction -------------------------------------------------------------------------------------

/// Keys whose values are times.
const TIMES: &[&str] = &[
    "createdAt",
    "updatedAt",
    "startedAt",
    "endedAt",
    "lastAt",
    "retryAt",
    "at",
    "timestamp",
];

/// What differs from run to run, named: UUIDs (deployment ids, tokens) by the names the test gives
/// them (`[uuid]` for any other), times by `[time]`. Ids inside text (`superseded by deployment …`)
/// are named too.
#[derive(Default)]
struct Names(Vec<(String, String)>);

impl Names {
    fn name(&mut self, id: &str, label: &str) {
        assert!(is_uuid(id), "{id} is not a UUID");
        self.0.push((id.to_ascii_lowercase(), label.to_owned()));
    }

    fn redact(&self, value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let v = if TIMES.contains(&k.as_str()) && !v.is_null() {
                            json!("[time]")
                        } else {
                            self.redact(v)
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.redact(v)).collect()),
            Value::String(s) => Value::String(self.redact_text(s)),
            other => other.clone(),
        }
    }

    fn redact_text(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(candidate) = rest.get(..36)
                && is_uuid(candidate)
            {
                let lower = candidate.to_ascii_lowercase();
                let label = self
                    .0
                    .iter()
                    .find(|(id, _)| *id == lower)
                    .map_or("uuid", |(_, label)| label.as_str());
                out.push_str(&format!("[{label}]"));
                rest = &rest[36..];
            } else {
                let c = rest.chars().next().expect("non-empty");
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        out
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

macro_rules! snapshot {
    ($names:expr, $name:expr, $value:expr) => {
        insta::assert_json_snapshot!($name, $names.redact(&$value))
    };
}

// ---- v1.0 happy path -------------------------------------------------------------------------------

#[tokio::test]
async fn v1_answers_match_snapshots() {
    let account = account(2);
    let app = app(&account, V03Errors::Json).await;
    let mut names = Names::default();
    let post = Method::POST;

    let created = ok(
        &app,
        post.clone(),
        "/v1/prod/environments",
        Some(json!({
            "environmentName": "web",
            "taskDefinition": "daemon:1",
            "environmentType": "Daemon",
            "instanceGroup": {"attributes": [{"name": "ecs.instance-type", "value": "m5.large"}]},
            "deploymentMethod": "ReplaceThenTerminate",
            "deploymentConfiguration": {"minHealthyPercent": 50, "maxOverPercent": 50},
        })),
    )
    .await;
    assert_eq!(created["environmentRevisionId"], "1");
    assert_eq!(str_of(&created, "/environment/taskDefinition"), account.td1);
    snapshot!(names, "v1_created", created);
    for (cluster, name) in [("prod", "api"), ("prod", "worker"), ("dev", "web-dev")] {
        let body = json!({"environmentName": name, "taskDefinition": "daemon"});
        ok(
            &app,
            post.clone(),
            &format!("/v1/{cluster}/environments"),
            Some(body),
        )
        .await;
    }

    // Lists: by prefix, and page by page.
    let list = ok(
        &app,
        Method::GET,
        "/v1/prod/environments?environmentNamePrefix=w",
        None,
    )
    .await;
    assert_eq!(list["environmentNames"], json!(["web", "worker"]));
    snapshot!(names, "v1_list_prefix", list);
    let mut pages = Vec::new();
    let mut uri = "/v1/prod/environments?maxResults=2".to_owned();
    loop {
        let page = ok(&app, Method::GET, &uri, None).await;
        pages.push(page["environmentNames"].clone());
        match page["nextToken"].as_str() {
            Some(token) => uri = format!("/v1/prod/environments?maxResults=2&nextToken={token}"),
            None => break,
        }
    }
    assert_eq!(pages, [json!(["api", "web"]), json!(["worker"])]);
    let by_arn = ok(
        &app,
        Method::GET,
        "/v1/arn:aws:ecs:us-east-1:123456789012:cluster%2Fdev/environments",
        None,
    )
    .await;
    assert_eq!(by_arn["environmentNames"], json!(["web-dev"]));

    let described = ok(&app, Method::GET, "/v1/prod/environments/web", None).await;
    assert_eq!(described["environment"], created["environment"]);
    snapshot!(names, "v1_described", described);

    let updated = ok(
        &app,
        Method::PUT,
        "/v1/prod/environments/web",
        Some(json!({"taskDefinition": "daemon:2", "baseRevisionId": "1"})),
    )
    .await;
    assert_eq!(updated["environmentRevisionId"], "2");
    snapshot!(names, "v1_updated", updated);

    let revisions = ok(&app, Method::GET, "/v1/prod/environments/web/revisions", None).await;
    assert_eq!(revisions["revisionIds"], json!(["1", "2"]));
    snapshot!(names, "v1_revisions", revisions);
    let first = ok(
        &app,
        Method::GET,
        "/v1/prod/environments/web/revisions?maxResults=1",
        None,
    )
    .await;
    let token = str_of(&first, "/nextToken");
    let second = ok(
        &app,
        Method::GET,
        &format!("/v1/prod/environments/web/revisions?maxResults=1&nextToken={token}"),
        None,
    )
    .await;
    assert_eq!(
        (
            &first["revisionIds"],
            &second["revisionIds"],
            &second["nextToken"]
        ),
        (&json!(["1"]), &json!(["2"]), &Value::Null)
    );
    let revision = ok(&app, Method::GET, "/v1/prod/environments/web/revisions/1", None).await;
    snapshot!(names, "v1_revision_1", revision);

    // Deployments: the second supersedes the first, which is still pending (no executor).
    let d1 = ok(
        &app,
        post.clone(),
        "/v1/prod/environments/web/deployments?revisionId=1",
        None,
    )
    .await;
    names.name(str_of(&d1, "/deploymentId"), "deployment-1");
    assert_eq!(d1["deploymentId"], d1["deployment"]["deploymentId"]);
    snapshot!(names, "v1_deployment_started", d1);
    let revision = ok(&app, Method::GET, "/v1/prod/environments/web/revisions/1", None).await;
    assert_eq!(
        revision["environmentRevision"]["counts"],
        json!({"desired": 2, "healthy": 0, "total": 0}),
        "the active revision's desired count is its eligible instances"
    );
    let d2 = ok(
        &app,
        post.clone(),
        "/v1/prod/environments/web/deployments?revisionId=2",
        None,
    )
    .await;
    names.name(str_of(&d2, "/deploymentId"), "deployment-2");
    let deployments = ok(&app, Method::GET, "/v1/prod/environments/web/deployments", None).await;
    assert_eq!(
        deployments["deploymentIds"],
        json!([d2["deploymentId"], d1["deploymentId"]]),
        "newest first"
    );
    snapshot!(names, "v1_deployments", deployments);
    let page = ok(
        &app,
        Method::GET,
        "/v1/prod/environments/web/deployments?maxResults=1",
        None,
    )
    .await;
    let rest = ok(
        &app,
        Method::GET,
        &format!(
            "/v1/prod/environments/web/deployments?maxResults=1&nextToken={}",
            str_of(&page, "/nextToken")
        ),
        None,
    )
    .await;
    assert_eq!(
        (&page["deploymentIds"], &rest["deploymentIds"], &rest["nextToken"]),
        (
            &json!([d2["deploymentId"]]),
            &json!([d1["deploymentId"]]),
            &Value::Null
        )
    );
    let superseded = ok(
        &app,
        Method::GET,
        &format!(
            "/v1/prod/environments/web/deployments/{}",
            str_of(&d1, "/deploymentId")
        ),
        None,
    )
    .await;
    assert_eq!(superseded["deployment"]["status"], "superseded");
    snapshot!(names, "v1_deployment_superseded", superseded);

    let stopped = ok(
        &app,
        post.clone(),
        &format!(
            "/v1/prod/environments/web/deployments/{}/stop",
            str_of(&d2, "/deploymentId")
        ),
        None,
    )
    .await;
    assert_eq!(stopped["deployment"]["status"], "stopped");
    snapshot!(names, "v1_deployment_stopped", stopped);

    let rollback = ok(
        &app,
        post.clone(),
        "/v1/prod/environments/web/rollback",
        Some(json!({"environmentRevisionId": "1"})),
    )
    .await;
    names.name(str_of(&rollback, "/deploymentId"), "deployment-3");
    assert_eq!(
        (
            &rollback["deployment"]["rollback"],
            &rollback["deployment"]["environmentRevisionId"],
            &rollback["deployment"]["rollbackOf"]
        ),
        (&json!(true), &json!("1"), &d2["deploymentId"])
    );
    snapshot!(names, "v1_rollback", rollback);

    let frozen = ok(&app, post.clone(), "/v1/prod/environments/web/freeze", None).await;
    assert_eq!(frozen["environment"]["environmentStatus"], "Frozen");
    snapshot!(names, "v1_frozen", frozen);
    let thawed = ok(&app, post.clone(), "/v1/prod/environments/web/thaw", None).await;
    assert_eq!(thawed["environment"]["environmentStatus"], "Active");

    // Deleting with terminateTasks waits for the executor; without, it is gone at once.
    let deleting = ok(
        &app,
        Method::DELETE,
        "/v1/prod/environments/web?terminateTasks=true",
        None,
    )
    .await;
    snapshot!(names, "v1_deleting", deleting);
    let still = ok(&app, Method::GET, "/v1/prod/environments/web", None).await;
    assert_eq!(still["environment"]["environmentStatus"], "Deleting");
    let deleted = ok(&app, Method::DELETE, "/v1/prod/environments/api", None).await;
    assert_eq!(deleted["environment"]["environmentStatus"], "Deleted");
    let gone = send(
        &app.router,
        Method::GET,
        "/v1/prod/environments/api",
        None,
        HeaderMap::new(),
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.body);
    let list = ok(&app, Method::GET, "/v1/prod/environments", None).await;
    assert_eq!(list["environmentNames"], json!(["web", "worker"]));

    // A cluster named like a static segment, by its ARN.
    let tasks = format!("/v1/{TASKS_ARN}/environments");
    let created = ok(
        &app,
        post.clone(),
        &tasks,
        Some(json!({"environmentName": "in-tasks", "taskDefinition": "daemon"})),
    )
    .await;
    assert_eq!(created["environment"]["cluster"], "tasks");
    let list = ok(&app, Method::GET, &tasks, None).await;
    assert_eq!(list["environmentNames"], json!(["in-tasks"]));
    ok(&app, Method::GET, &format!("{tasks}/in-tasks"), None).await;
}

// ---- v0.3 happy path and contract ------------------------------------------------------------------

async fn create_v03(app: &App, name: &str, td: &str) -> Value {
    ok(
        app,
        Method::POST,
        "/v1/environments",
        Some(json!({"name": name, "instanceGroup": {"cluster": CLUSTER}, "taskDefinition": td})),
    )
    .await
}

async fn deploy_v03(app: &App, name: &str, token: &str) -> Value {
    let uri = format!("/v1/environments/{name}/deployments?deploymentToken={token}");
    ok(app, Method::POST, &uri, None).await
}

#[tokio::test]
async fn v03_answers_match_snapshots() {
    let account = account(2);
    let app = app(&account, V03Errors::Json).await;
    let mut names = Names::default();

    // v0.3's ping: 200, a JSON content type and an empty body.
    let ping = ok(&app, Method::GET, "/v1/ping", None).await;
    assert_eq!(ping, json!(""));

    let created = ok(
        &app,
        Method::POST,
        "/v1/environments",
        Some(json!({
            "name": "web",
            "instanceGroup": {"cluster": CLUSTER},
            "taskDefinition": "daemon:1",
            "deploymentConfiguration": {"stopOnDrain": true},
        })),
    )
    .await;
    names.name(str_of(&created, "/deploymentToken"), "token-1");
    assert_eq!(str_of(&created, "/taskDefinition"), account.td1);
    snapshot!(names, "v03_created", created);
    let logs = create_v03(&app, "logs", "daemon").await;
    names.name(str_of(&logs, "/deploymentToken"), "token-logs");

    let list = ok(&app, Method::GET, "/v1/environments", None).await;
    snapshot!(names, "v03_list", list);
    let by_arn = ok(
        &app,
        Method::GET,
        "/v1/environments?cluster=arn:aws:ecs:us-east-1:123456789012:cluster/prod",
        None,
    )
    .await;
    assert_eq!(by_arn, list);
    let other = ok(&app, Method::GET, "/v1/environments?cluster=dev", None).await;
    assert_eq!(other, json!({"items": []}));

    let d1 = deploy_v03(&app, "web", str_of(&created, "/deploymentToken")).await;
    names.name(str_of(&d1, "/id"), "deployment-1");
    assert_eq!(d1["status"], "pending");
    snapshot!(names, "v03_deployment_created", d1);
    let got = ok(&app, Method::GET, "/v1/environments/web", None).await;
    assert_eq!(got["activeDeployment"], d1["id"]);
    snapshot!(names, "v03_deployed", got);

    let updated = ok(
        &app,
        Method::PUT,
        "/v1/environments/web",
        Some(json!({"taskDefinition": account.td2})),
    )
    .await;
    names.name(str_of(&updated, "/deploymentToken"), "token-2");
    assert_eq!(updated["revision"], 2);
    snapshot!(names, "v03_updated", updated);
    let d2 = deploy_v03(&app, "web", str_of(&updated, "/deploymentToken")).await;
    names.name(str_of(&d2, "/id"), "deployment-2");
    assert_eq!(d2["revision"], 2);

    let deployments = ok(&app, Method::GET, "/v1/environments/web/deployments", None).await;
    let ids: Vec<&Value> = deployments["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["id"])
        .collect();
    assert_eq!(ids, [&d2["id"], &d1["id"]], "newest first");
    snapshot!(names, "v03_deployments", deployments);
    let one = ok(
        &app,
        Method::GET,
        &format!("/v1/environments/web/deployments/{}", str_of(&d1, "/id")),
        None,
    )
    .await;
    assert_eq!(
        one["status"], "superseded",
        "a deployment supersedes one in progress"
    );
    snapshot!(names, "v03_deployment_superseded", one);

    let deleted = ok(&app, Method::DELETE, "/v1/environments/web", None).await;
    snapshot!(names, "v03_deleted_left_running", deleted);
    let deleting = ok(
        &app,
        Method::DELETE,
        "/v1/environments/logs?terminateTasks=true",
        None,
    )
    .await;
    snapshot!(names, "v03_deleted_terminating", deleting);
    let got = ok(&app, Method::GET, "/v1/environments/logs", None).await;
    assert_eq!(got["status"], "deleting");
}

/// Blox v0.3's answers where they differ from v1.0's: a name in use and a used token are 400, a
/// deletion without `terminateTasks` is final at once (the name free again) and deleting a missing
/// environment is 200.
#[tokio::test]
async fn v03_contract() {
    let account = account(1);
    let app = app(&account, V03Errors::Json).await;
    let get = |uri: &'static str| send(&app.router, Method::GET, uri, None, HeaderMap::new());

    let env = create_v03(&app, "web", "daemon:1").await;
    let again = send(
        &app.router,
        Method::POST,
        "/v1/environments",
        Some(json!({"name": "web", "instanceGroup": {"cluster": CLUSTER}, "taskDefinition": "daemon"})),
        HeaderMap::new(),
    )
    .await;
    assert_eq!(
        (again.status, &again.body["code"], &again.body["field"]),
        (
            StatusCode::BAD_REQUEST,
            &json!("EnvironmentExists"),
            &json!("name")
        ),
        "{}",
        again.body
    );
    // v1.0 answers the same case with 409.
    let v1 = send(
        &app.router,
        Method::POST,
        "/v1/prod/environments",
        Some(json!({"environmentName": "web", "taskDefinition": "daemon"})),
        HeaderMap::new(),
    )
    .await;
    assert_eq!(v1.status, StatusCode::CONFLICT, "{}", v1.body);

    let token = str_of(&env, "/deploymentToken").to_owned();
    deploy_v03(&app, "web", &token).await;
    let used = send(
        &app.router,
        Method::POST,
        &format!("/v1/environments/web/deployments?deploymentToken={token}"),
        None,
        HeaderMap::new(),
    )
    .await;
    assert_eq!(
        (used.status, &used.body["code"]),
        (StatusCode::BAD_REQUEST, &json!("DeploymentTokenUsed")),
        "{}",
        used.body
    );

    let deleted = ok(&app, Method::DELETE, "/v1/environments/web", None).await;
    assert_eq!(deleted["status"], "deleted");
    assert_eq!(get("/v1/environments/web").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        ok(&app, Method::GET, "/v1/environments", None).await,
        json!({"items": []})
    );
    let reused = create_v03(&app, "web", "daemon:2").await;
    assert_eq!(reused["revision"], 1, "a new environment of the same name");
    assert_ne!(reused["deploymentToken"], env["deploymentToken"]);

    let missing = ok(&app, Method::DELETE, "/v1/environments/never", None).await;
    assert_eq!(missing["status"], "deleted");
    let missing = ok(
        &app,
        Method::DELETE,
        "/v1/environments/never?terminateTasks=true",
        None,
    )
    .await;
    assert_eq!(missing["status"], "deleted", "nothing to terminate");
}

// ---- bad input -------------------------------------------------------------------------------------

/// What a bad request must be answered with.
#[derive(Debug, Clone)]
enum Want {
    /// JSON `{code, message, field?, resourceType?, resourceId?}`.
    Json {
        status: u16,
        code: &'static str,
        field: Option<&'static str>,
        /// `(resourceType, resourceId)` on a 404 of a resource.
        resource: Option<(&'static str, String)>,
    },
    /// `text/plain; charset=utf-8`: the message and a newline.
    Text { status: u16, message: String },
}

fn json_error(status: u16, code: &'static str, field: Option<&'static str>) -> Want {
    Want::Json {
        status,
        code,
        field,
        resource: None,
    }
}

fn missing(kind: &'static str, id: impl Into<String>) -> Want {
    let code = match kind {
        "cluster" => "ClusterNotFound",
        "environment" => "EnvironmentNotFound",
        "revision" => "RevisionNotFound",
        "deployment" => "DeploymentNotFound",
        other => panic!("no resource {other}"),
    };
    Want::Json {
        status: 404,
        code,
        field: (kind == "cluster").then_some("cluster"),
        resource: Some((kind, id.into())),
    }
}

fn text(status: u16, message: impl Into<String>) -> Want {
    Want::Text {
        status,
        message: message.into(),
    }
}

struct Case {
    method: Method,
    uri: String,
    body: Option<Value>,
    want: Want,
}

fn case(method: &Method, uri: impl Into<String>, body: Option<Value>, want: Want) -> Case {
    Case {
        method: method.clone(),
        uri: uri.into(),
        body,
        want,
    }
}

/// One bad request and what it must be answered with.
async fn check(app: &Router, case: &Case) {
    let Case {
        method,
        uri,
        body,
        want,
    } = case;
    let got = send(app, method.clone(), uri, body.clone(), HeaderMap::new()).await;
    let what = format!(
        "{method} {uri} {}",
        body.as_ref().map(Value::to_string).unwrap_or_default()
    );
    match want {
        Want::Json {
            status,
            code,
            field,
            resource,
        } => {
            assert_eq!(got.content_type, "application/json", "{what}: {}", got.body);
            assert_eq!(
                (
                    got.status.as_u16(),
                    got.body["code"].as_str(),
                    got.body["field"].as_str()
                ),
                (*status, Some(*code), *field),
                "{what}: {}",
                got.body
            );
            let named = (got.body["resourceType"].as_str(), got.body["resourceId"].as_str());
            let want = resource.as_ref().map(|(kind, id)| (*kind, id.as_str()));
            assert_eq!(
                named,
                want.map_or((None, None), |(k, i)| (Some(k), Some(i))),
                "{what}: {}",
                got.body
            );
            assert!(
                got.body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: {}",
                got.body
            );
        }
        Want::Text { status, message } => {
            assert_eq!(
                (got.status.as_u16(), got.content_type.as_str(), got.body.as_str()),
                (
                    *status,
                    "text/plain; charset=utf-8",
                    Some(format!("{message}\n").as_str())
                ),
                "{what}"
            );
        }
    }
}

/// Environments in `prod`: `web`, created through v0.3 with a superseded deployment of revision 1
/// (quoting the now used first token) and an active, pending deployment of revision 2; `bare`, never
/// deployed; `gone`, being deleted with its tasks.
struct Setup {
    superseded: String,
    active: String,
    used_token: String,
}

async fn setup(app: &App) -> Setup {
    let web = create_v03(app, "web", "daemon:1").await;
    let used_token = str_of(&web, "/deploymentToken").to_owned();
    let first = deploy_v03(app, "web", &used_token).await;
    ok(
        app,
        Method::PUT,
        "/v1/prod/environments/web",
        Some(json!({"taskDefinition": "daemon:2"})),
    )
    .await;
    let second = ok(
        app,
        Method::POST,
        "/v1/prod/environments/web/deployments?revisionId=2",
        None,
    )
    .await;
    create_v03(app, "bare", "daemon").await;
    create_v03(app, "gone", "daemon").await;
    ok(
        app,
        Method::DELETE,
        "/v1/environments/gone?terminateTasks=true",
        None,
    )
    .await;
    Setup {
        superseded: str_of(&first, "/id").to_owned(),
        active: str_of(&second, "/deploymentId").to_owned(),
        used_token,
    }
}

#[tokio::test]
async fn bad_input_on_every_route() {
    let account = account(1);
    let app = app(&account, V03Errors::Json).await;
    let Setup {
        superseded,
        active,
        used_token,
    } = setup(&app).await;
    let (get, post, put, delete) = (Method::GET, Method::POST, Method::PUT, Method::DELETE);
    let env = "/v1/prod/environments/web";
    let new_v1 = |extra: Value| {
        let mut body = json!({"environmentName": "a", "taskDefinition": "daemon"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        Some(body)
    };
    let new_v03 = |extra: Value| {
        let mut body =
            json!({"name": "a", "instanceGroup": {"cluster": CLUSTER}, "taskDefinition": "daemon"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        Some(body)
    };
    let config = |key: &str, value: Value| json!({"deploymentConfiguration": {key: value}});
    let min_healthy = Some("deploymentConfiguration.minHealthyPercent");
    let max_over = Some("deploymentConfiguration.maxOverPercent");
    let stale = "0b69d5c0-d655-4695-98cd-5d2d526d9d5a";

    let cases = vec![
        // GET /v1/{cluster}/environments
        case(
            &get,
            "/v1/nowhere/environments",
            None,
            missing("cluster", "nowhere"),
        ),
        case(
            &get,
            "/v1/prod/environments?color=red",
            None,
            json_error(400, "UnsupportedParameter", Some("color")),
        ),
        case(
            &get,
            "/v1/prod/environments?maxResults=0",
            None,
            json_error(400, "InvalidMaxResults", Some("maxResults")),
        ),
        case(
            &get,
            "/v1/prod/environments?nextToken=!!",
            None,
            json_error(400, "InvalidNextToken", Some("nextToken")),
        ),
        case(
            &get,
            "/v1/bad%20name/environments",
            None,
            json_error(400, "InvalidCluster", Some("cluster")),
        ),
        // POST /v1/{cluster}/environments
        case(
            &post,
            "/v1/nowhere/environments",
            new_v1(json!({})),
            missing("cluster", "nowhere"),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(config("minHealthyPercent", json!(101))),
            json_error(400, "InvalidParameter", min_healthy),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(config("minHealthyPercent", json!(-1))),
            json_error(400, "InvalidParameter", min_healthy),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(config("maxOverPercent", json!(0))),
            json_error(400, "InvalidParameter", max_over),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(config("minHealthyPercent", json!("ninety"))),
            json_error(400, "InvalidBody", min_healthy),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(config("autoRollback", json!("yes"))),
            json_error(400, "InvalidBody", Some("deploymentConfiguration.autoRollback")),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(json!({"deploymentMethod": "Bogus"})),
            json_error(400, "InvalidDeploymentMethod", Some("deploymentMethod")),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(json!({"environmentType": "Service"})),
            json_error(400, "InvalidEnvironmentType", Some("environmentType")),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(json!({"environmentName": "has space"})),
            json_error(400, "InvalidName", Some("environmentName")),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(json!({"taskDefinition": 7})),
            json_error(400, "InvalidBody", Some("taskDefinition")),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(json!({"taskDefinition": " "})),
            json_error(400, "MissingField", Some("taskDefinition")),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(json!({"taskDefinition": "nothing:1"})),
            json_error(404, "TaskDefinitionNotFound", Some("taskDefinition")),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(json!({"taskDefinition": "old:1"})),
            json_error(404, "TaskDefinitionInactive", Some("taskDefinition")),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(json!({"instanceGroup": {"attributes": [{"name": ""}]}})),
            json_error(400, "InvalidAttribute", Some("instanceGroup.attributes[0].name")),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(json!({"instanceGroup": {"query": "attribute:stack =="}})),
            json_error(400, "InvalidQuery", Some("instanceGroup.query")),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(json!({"instanceGroup": {"query": 7}})),
            json_error(400, "InvalidBody", Some("instanceGroup.query")),
        ),
        case(
            &post,
            "/v1/prod/environments",
            new_v1(json!({"environmentName": "web"})),
            json_error(409, "EnvironmentExists", Some("environmentName")),
        ),
        case(
            &post,
            "/v1/prod/environments",
            None,
            json_error(400, "InvalidBody", Some("body")),
        ),
        case(
            &post,
            "/v1/prod/environments?x=1",
            new_v1(json!({})),
            json_error(400, "UnsupportedParameter", Some("x")),
        ),
        // GET /v1/{cluster}/environments/{environment}
        case(
            &get,
            "/v1/nowhere/environments/web",
            None,
            missing("cluster", "nowhere"),
        ),
        case(
            &get,
            "/v1/prod/environments/nope",
            None,
            missing("environment", "nope"),
        ),
        case(
            &get,
            "/v1/dev/environments/web",
            None,
            missing("environment", "web"),
        ),
        case(
            &get,
            format!("{env}?verbose=1"),
            None,
            json_error(400, "UnsupportedParameter", Some("verbose")),
        ),
        // PUT
        case(
            &put,
            "/v1/prod/environments/nope",
            Some(json!({"taskDefinition": "daemon"})),
            missing("environment", "nope"),
        ),
        case(
            &put,
            env,
            Some(json!({"taskDefinition": "daemon", "baseRevisionId": "1"})),
            json_error(409, "StaleRevision", None),
        ),
        case(
            &put,
            env,
            Some(json!({"baseRevisionId": "zero"})),
            json_error(400, "InvalidBody", Some("baseRevisionId")),
        ),
        case(
            &put,
            env,
            Some(config("minHealthyPercent", json!(101))),
            json_error(400, "InvalidParameter", min_healthy),
        ),
        case(
            &put,
            env,
            Some(config("maxOverPercent", json!(0))),
            json_error(400, "InvalidParameter", max_over),
        ),
        case(
            &put,
            env,
            Some(config("minHealthyPercent", json!("ninety"))),
            json_error(400, "InvalidBody", min_healthy),
        ),
        case(
            &put,
            env,
            Some(json!({"deploymentMethod": "Bogus"})),
            json_error(400, "InvalidDeploymentMethod", Some("deploymentMethod")),
        ),
        case(
            &put,
            env,
            Some(json!({"taskDefinition": "nothing"})),
            json_error(404, "TaskDefinitionNotFound", Some("taskDefinition")),
        ),
        case(
            &put,
            env,
            Some(json!({})),
            json_error(400, "NothingToUpdate", Some("body")),
        ),
        case(
            &put,
            format!("{env}?x=1"),
            Some(json!({"taskDefinition": "daemon"})),
            json_error(400, "UnsupportedParameter", Some("x")),
        ),
        case(
            &put,
            "/v1/prod/environments/gone",
            Some(json!({"taskDefinition": "daemon"})),
            json_error(409, "EnvironmentDeleting", None),
        ),
        // DELETE
        case(
            &delete,
            "/v1/prod/environments/nope",
            None,
            missing("environment", "nope"),
        ),
        case(
            &delete,
            format!("{env}?terminateTasks=yes"),
            None,
            json_error(400, "InvalidTerminateTasks", Some("terminateTasks")),
        ),
        case(
            &delete,
            format!("{env}?force=true"),
            None,
            json_error(400, "UnsupportedParameter", Some("force")),
        ),
        // Revisions
        case(
            &get,
            "/v1/prod/environments/nope/revisions",
            None,
            missing("environment", "nope"),
        ),
        case(
            &get,
            format!("{env}/revisions?limit=1"),
            None,
            json_error(400, "UnsupportedParameter", Some("limit")),
        ),
        case(
            &get,
            format!("{env}/revisions?maxResults=10001"),
            None,
            json_error(400, "InvalidMaxResults", Some("maxResults")),
        ),
        case(&get, format!("{env}/revisions/9"), None, missing("revision", "9")),
        case(
            &get,
            format!("{env}/revisions/abc"),
            None,
            json_error(400, "InvalidRevisionId", Some("environmentRevisionId")),
        ),
        case(
            &get,
            "/v1/prod/environments/nope/revisions/1",
            None,
            missing("environment", "nope"),
        ),
        case(
            &get,
            format!("{env}/revisions/1?x=1"),
            None,
            json_error(400, "UnsupportedParameter", Some("x")),
        ),
        // Start a deployment
        case(
            &post,
            format!("{env}/deployments"),
            None,
            json_error(400, "MissingRevisionId", Some("revisionId")),
        ),
        case(
            &post,
            format!("{env}/deployments?revisionId=two"),
            None,
            json_error(400, "InvalidRevisionId", Some("revisionId")),
        ),
        case(
            &post,
            format!("{env}/deployments?revisionId=9"),
            None,
            missing("revision", "9"),
        ),
        case(
            &post,
            format!("{env}/deployments?revisionId=1"),
            None,
            json_error(400, "RollbackRequired", Some("revisionId")),
        ),
        case(
            &post,
            format!("{env}/deployments?revisionId=1&rollback=maybe"),
            None,
            json_error(400, "InvalidRollback", Some("rollback")),
        ),
        case(
            &post,
            format!("{env}/deployments?revisionId=2&x=1"),
            None,
            json_error(400, "UnsupportedParameter", Some("x")),
        ),
        case(
            &post,
            "/v1/prod/environments/nope/deployments?revisionId=1",
            None,
            missing("environment", "nope"),
        ),
        case(
            &post,
            "/v1/prod/environments/gone/deployments?revisionId=1",
            None,
            json_error(409, "EnvironmentDeleting", None),
        ),
        // List and describe deployments
        case(
            &get,
            "/v1/prod/environments/nope/deployments",
            None,
            missing("environment", "nope"),
        ),
        case(
            &get,
            format!("{env}/deployments?status=running"),
            None,
            json_error(400, "UnsupportedParameter", Some("status")),
        ),
        case(
            &get,
            format!("{env}/deployments?nextToken=bm9wZQ"),
            None,
            json_error(400, "InvalidNextToken", Some("nextToken")),
        ),
        case(
            &get,
            format!("{env}/deployments/nope"),
            None,
            missing("deployment", "nope"),
        ),
        case(
            &get,
            format!("/v1/prod/environments/bare/deployments/{active}"),
            None,
            missing("deployment", active.clone()),
        ),
        case(
            &get,
            format!("{env}/deployments/{active}?x=1"),
            None,
            json_error(400, "UnsupportedParameter", Some("x")),
        ),
        // Stop
        case(
            &post,
            format!("{env}/deployments/nope/stop"),
            None,
            missing("deployment", "nope"),
        ),
        case(
            &post,
            format!("{env}/deployments/{superseded}/stop"),
            None,
            json_error(409, "DeploymentFinished", None),
        ),
        case(
            &post,
            format!("/v1/prod/environments/nope/deployments/{active}/stop"),
            None,
            missing("environment", "nope"),
        ),
        // Rollback
        case(
            &post,
            "/v1/prod/environments/nope/rollback",
            None,
            missing("environment", "nope"),
        ),
        case(
            &post,
            format!("{env}/rollback"),
            Some(json!({"environmentRevisionId": "9"})),
            missing("revision", "9"),
        ),
        case(
            &post,
            format!("{env}/rollback"),
            Some(json!({"environmentRevisionId": true})),
            json_error(400, "InvalidBody", Some("environmentRevisionId")),
        ),
        case(
            &post,
            format!("{env}/rollback"),
            None,
            json_error(409, "NoRollbackTarget", None),
        ),
        case(
            &post,
            "/v1/prod/environments/bare/rollback",
            None,
            json_error(409, "NothingToRollBack", None),
        ),
        case(
            &post,
            format!("{env}/rollback?revisionId=1"),
            None,
            json_error(400, "UnsupportedParameter", Some("revisionId")),
        ),
        // Freeze and thaw
        case(
            &post,
            "/v1/prod/environments/nope/freeze",
            None,
            missing("environment", "nope"),
        ),
        case(
            &post,
            "/v1/prod/environments/nope/thaw",
            None,
            missing("environment", "nope"),
        ),
        case(
            &post,
            format!("{env}/freeze?now=1"),
            None,
            json_error(400, "UnsupportedParameter", Some("now")),
        ),
        case(
            &post,
            "/v1/prod/environments/gone/freeze",
            None,
            json_error(409, "EnvironmentDeleting", None),
        ),
        // A cluster named like a static segment, reached by its ARN.
        case(
            &get,
            format!("/v1/{TASKS_ARN}/environments/web"),
            None,
            missing("environment", "web"),
        ),
        case(
            &get,
            format!("/v1/{TASKS_ARN}/environments?x=1"),
            None,
            json_error(400, "UnsupportedParameter", Some("x")),
        ),
        case(
            &post,
            format!("/v1/{TASKS_ARN}/environments"),
            new_v1(config("maxOverPercent", json!(0))),
            json_error(400, "InvalidParameter", max_over),
        ),
        case(
            &get,
            "/v1/arn:aws:ecs:us-east-1:123456789012:cluster%2Fnowhere/environments",
            None,
            missing("cluster", "arn:aws:ecs:us-east-1:123456789012:cluster/nowhere"),
        ),
        // v0.3: POST /v1/environments
        case(
            &post,
            "/v1/environments",
            new_v03(json!({"name": "has space"})),
            json_error(400, "InvalidName", Some("name")),
        ),
        case(
            &post,
            "/v1/environments",
            new_v03(json!({"instanceGroup": {"cluster": "nowhere"}})),
            Want::Json {
                status: 404,
                code: "ClusterNotFound",
                field: Some("instanceGroup.cluster"),
                resource: Some(("cluster", "nowhere".into())),
            },
        ),
        case(
            &post,
            "/v1/environments",
            new_v03(json!({"instanceGroup": {"cluster": "bad name"}})),
            json_error(400, "InvalidCluster", Some("instanceGroup.cluster")),
        ),
        case(
            &post,
            "/v1/environments",
            new_v03(json!({"instanceGroup": {"cluster": CLUSTER, "query": "(agentConnected == true"}})),
            json_error(400, "InvalidQuery", Some("instanceGroup.query")),
        ),
        case(
            &post,
            "/v1/environments",
            new_v03(json!({"taskDefinition": "nothing:1"})),
            json_error(404, "TaskDefinitionNotFound", Some("taskDefinition")),
        ),
        case(
            &post,
            "/v1/environments",
            new_v03(config("minHealthyPercent", json!(101))),
            json_error(400, "InvalidParameter", min_healthy),
        ),
        case(
            &post,
            "/v1/environments",
            new_v03(config("minHealthyPercent", json!("ninety"))),
            json_error(400, "InvalidBody", min_healthy),
        ),
        case(
            &post,
            "/v1/environments",
            new_v03(config("maxOverPercent", json!(0))),
            json_error(400, "InvalidParameter", max_over),
        ),
        case(
            &post,
            "/v1/environments",
            new_v03(json!({"deploymentMethod": "Bogus"})),
            json_error(400, "InvalidDeploymentMethod", Some("deploymentMethod")),
        ),
        case(
            &post,
            "/v1/environments",
            new_v03(json!({"name": "web"})),
            json_error(400, "EnvironmentExists", Some("name")),
        ),
        case(
            &post,
            "/v1/environments",
            Some(json!({"name": "a"})),
            json_error(400, "InvalidBody", Some("body")),
        ),
        case(
            &post,
            "/v1/environments",
            None,
            json_error(400, "InvalidBody", Some("body")),
        ),
        case(
            &post,
            "/v1/environments?x=1",
            new_v03(json!({})),
            json_error(400, "UnsupportedParameter", Some("x")),
        ),
        // v0.3: GET /v1/environments
        case(
            &get,
            "/v1/environments?color=red",
            None,
            json_error(400, "UnsupportedParameter", Some("color")),
        ),
        case(
            &get,
            "/v1/environments?nextToken=abc",
            None,
            json_error(400, "UnsupportedParameter", Some("nextToken")),
        ),
        case(
            &get,
            "/v1/environments?cluster=a&cluster=b",
            None,
            json_error(400, "RepeatedParameter", Some("cluster")),
        ),
        case(
            &get,
            "/v1/environments?cluster=bad%20name",
            None,
            json_error(400, "InvalidCluster", Some("cluster")),
        ),
        // v0.3: one environment
        case(
            &get,
            "/v1/environments/nope",
            None,
            missing("environment", "nope"),
        ),
        case(
            &get,
            "/v1/environments/web?x=1",
            None,
            json_error(400, "UnsupportedParameter", Some("x")),
        ),
        case(
            &put,
            "/v1/environments/nope",
            Some(json!({"taskDefinition": "daemon"})),
            missing("environment", "nope"),
        ),
        case(
            &put,
            "/v1/environments/web",
            Some(json!({"taskDefinition": "old:1"})),
            json_error(404, "TaskDefinitionInactive", Some("taskDefinition")),
        ),
        case(
            &put,
            "/v1/environments/web",
            Some(config("maxOverPercent", json!(0))),
            json_error(400, "InvalidParameter", max_over),
        ),
        case(
            &put,
            "/v1/environments/web",
            Some(json!({"taskDefinition": "daemon", "baseRevisionId": 1})),
            json_error(409, "StaleRevision", None),
        ),
        case(
            &put,
            "/v1/environments/web",
            Some(json!({})),
            json_error(400, "NothingToUpdate", Some("body")),
        ),
        case(
            &put,
            "/v1/environments/gone",
            Some(json!({"taskDefinition": "daemon"})),
            json_error(409, "EnvironmentDeleting", None),
        ),
        case(
            &delete,
            "/v1/environments/web?terminateTasks=yes",
            None,
            json_error(400, "InvalidTerminateTasks", Some("terminateTasks")),
        ),
        case(
            &delete,
            "/v1/environments/web?force=true",
            None,
            json_error(400, "UnsupportedParameter", Some("force")),
        ),
        // v0.3: deployments. Without a token of a UUID's form v0.3 had no route: 404.
        case(
            &post,
            "/v1/environments/web/deployments",
            None,
            json_error(404, "MissingDeploymentToken", Some("deploymentToken")),
        ),
        case(
            &post,
            "/v1/environments/web/deployments?deploymentToken=abc",
            None,
            json_error(404, "InvalidDeploymentToken", Some("deploymentToken")),
        ),
        case(
            &post,
            format!("/v1/environments/web/deployments?deploymentToken={stale}"),
            None,
            json_error(400, "StaleDeploymentToken", Some("deploymentToken")),
        ),
        case(
            &post,
            format!("/v1/environments/bare/deployments?deploymentToken={used_token}"),
            None,
            json_error(400, "StaleDeploymentToken", Some("deploymentToken")),
        ),
        case(
            &post,
            format!("/v1/environments/web/deployments?deploymentToken={used_token}&x=1"),
            None,
            json_error(400, "UnsupportedParameter", Some("x")),
        ),
        case(
            &post,
            format!("/v1/environments/nope/deployments?deploymentToken={used_token}"),
            None,
            missing("environment", "nope"),
        ),
        case(
            &post,
            format!("/v1/environments/gone/deployments?deploymentToken={used_token}"),
            None,
            json_error(409, "EnvironmentDeleting", None),
        ),
        case(
            &get,
            "/v1/environments/nope/deployments",
            None,
            missing("environment", "nope"),
        ),
        case(
            &get,
            "/v1/environments/web/deployments?maxResults=1",
            None,
            json_error(400, "UnsupportedParameter", Some("maxResults")),
        ),
        case(
            &get,
            "/v1/environments/web/deployments/nope",
            None,
            missing("deployment", "nope"),
        ),
        case(
            &get,
            "/v1/environments/nope/deployments/nope",
            None,
            missing("environment", "nope"),
        ),
        // Nowhere
        case(&get, "/v1/nothing", None, json_error(404, "UnknownRoute", None)),
    ];
    for case in &cases {
        check(&app.router, case).await;
    }

    // A used token: the latest revision's token, already deployed.
    let bare = ok(&app, Method::GET, "/v1/environments/bare", None).await;
    let token = str_of(&bare, "/deploymentToken");
    deploy_v03(&app, "bare", token).await;
    check(
        &app.router,
        &case(
            &post,
            format!("/v1/environments/bare/deployments?deploymentToken={token}"),
            None,
            json_error(400, "DeploymentTokenUsed", Some("deploymentToken")),
        ),
    )
    .await;
}

/// `--v03-errors text`: the v0.3 routes answer v0.3's plain-text messages with the same statuses;
/// the v1.0 routes stay JSON.
#[tokio::test]
async fn v03_errors_as_text() {
    let account = account(1);
    let app = app(&account, V03Errors::Text).await;
    let Setup { used_token, .. } = setup(&app).await;
    let web = ok(&app, Method::GET, "/v1/environments/web", None).await;
    let current = str_of(&web, "/deploymentToken").to_owned();
    let stale = "0b69d5c0-d655-4695-98cd-5d2d526d9d5a";
    let bare = ok(&app, Method::GET, "/v1/environments/bare", None).await;
    let bare_token = str_of(&bare, "/deploymentToken").to_owned();
    deploy_v03(&app, "bare", &bare_token).await;
    let (get, post) = (Method::GET, Method::POST);
    let task = "arn:aws:ecs:us-east-1:123456789012:task/prod/0123456789abcdef0123456789abcdef";
    let cases = vec![
        case(
            &get,
            "/v1/environments/nope",
            None,
            text(404, "Environment nope does not exist"),
        ),
        case(
            &get,
            "/v1/environments/nope/deployments",
            None,
            text(404, "Environment nope does not exist"),
        ),
        case(
            &get,
            "/v1/environments/web/deployments/nope",
            None,
            text(404, "Deployment nope does not exist for environment web"),
        ),
        case(
            &post,
            format!("/v1/environments/nope/deployments?deploymentToken={stale}"),
            None,
            text(404, "Environment with name 'nope' does not exist"),
        ),
        case(
            &get,
            format!("/v1/tasks/prod/{task}"),
            None,
            text(404, "Task not found"),
        ),
        case(
            &get,
            "/v1/tasks?color=red",
            None,
            text(400, "At least one of the filters provided is unsupported"),
        ),
        case(
            &get,
            "/v1/tasks?cluster=a&cluster=b",
            None,
            text(
                400,
                "At least one of the filters provided is specified multiple times",
            ),
        ),
        case(
            &get,
            "/v1/environments?color=red",
            None,
            text(400, "At least one of the filters provided is not supported"),
        ),
        case(
            &get,
            "/v1/environments?cluster=bad%20name",
            None,
            text(400, "Invalid cluster ARN or name"),
        ),
        case(
            &post,
            format!("/v1/environments/web/deployments?deploymentToken={stale}"),
            None,
            text(
                400,
                format!("Token '{stale}' is outdated and does not match the environment token '{current}'"),
            ),
        ),
        case(
            &post,
            format!("/v1/environments/web/deployments?deploymentToken={used_token}"),
            None,
            text(
                400,
                format!(
                    "Token '{used_token}' is outdated and does not match the environment token '{current}'"
                ),
            ),
        ),
        case(
            &post,
            format!("/v1/environments/bare/deployments?deploymentToken={bare_token}"),
            None,
            text(
                400,
                format!("Deployment with token '{bare_token}' already exists"),
            ),
        ),
        case(
            &post,
            "/v1/environments",
            Some(json!({"name": "web", "instanceGroup": {"cluster": CLUSTER}, "taskDefinition": "daemon"})),
            text(400, "An environment with name web already exists"),
        ),
        // v1.0 stays JSON.
        case(
            &get,
            "/v1/prod/environments/nope",
            None,
            missing("environment", "nope"),
        ),
        case(
            &post,
            "/v1/prod/environments/web/deployments?revisionId=9",
            None,
            missing("revision", "9"),
        ),
        case(
            &post,
            "/v1/prod/environments",
            Some(json!({"environmentName": "web", "taskDefinition": "daemon"})),
            json_error(409, "EnvironmentExists", Some("environmentName")),
        ),
    ];
    for case in &cases {
        check(&app.router, case).await;
    }
    // Successes are JSON on both.
    ok(&app, Method::GET, "/v1/environments", None).await;
    ok(&app, Method::DELETE, "/v1/environments/never", None).await;
}

// ---- streams ---------------------------------------------------------------------------------------

#[tokio::test]
async fn stream_content_type_follows_accept() {
    let account = account(1);
    let app = app(&account, V03Errors::Json).await;
    // v0.3's type unless the client names NDJSON.
    let cases = [
        (None, "application/octet-stream"),
        (Some("application/octet-stream"), "application/octet-stream"),
        (
            Some("application/json, application/octet-stream"),
            "application/octet-stream",
        ),
        (Some("application/x-ndjson"), "application/x-ndjson"),
        (
            Some("application/x-ndjson, application/octet-stream"),
            "application/x-ndjson",
        ),
        (Some("*/*"), "application/octet-stream"),
        (Some("application/json"), "application/octet-stream"),
    ];
    for path in ["/v1/stream/tasks", "/v1/stream/instances"] {
        for (accept, want) in cases {
            let mut request = Request::builder().uri(path);
            if let Some(accept) = accept {
                request = request.header(header::ACCEPT, accept);
            }
            let response = app
                .router
                .clone()
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                want,
                "{path} with Accept {accept:?}"
            );
        }
    }
}

// ---- live counts -----------------------------------------------------------------------------------

/// An instance group by cluster query through both APIs: stored, shown in its canonical form, replaced
/// as a whole by an update.
#[tokio::test]
async fn instance_groups_take_a_cluster_query() {
    let account = account(2);
    let app = app(&account, V03Errors::Json).await;
    let created = ok(
        &app,
        Method::POST,
        "/v1/prod/environments",
        Some(json!({
            "environmentName": "gpu",
            "taskDefinition": "daemon:1",
            "instanceGroup": {"query": "attribute:ecs.instance-type=~g4dn.*  &&  agentConnected==true"},
        })),
    )
    .await;
    assert_eq!(
        created["environment"]["instanceGroup"],
        json!({"attributes": [], "query": "attribute:ecs.instance-type =~ g4dn.* && agentConnected == true"})
    );
    let v03 = ok(&app, Method::GET, "/v1/environments/gpu", None).await;
    assert_eq!(
        v03["instanceGroup"]["query"],
        "attribute:ecs.instance-type =~ g4dn.* && agentConnected == true"
    );
    // An update's group replaces attributes and query both.
    let updated = ok(
        &app,
        Method::PUT,
        "/v1/prod/environments/gpu",
        Some(json!({"instanceGroup": {"attributes": [{"name": "stack", "value": "prod"}]}})),
    )
    .await;
    assert_eq!(
        updated["environment"]["instanceGroup"],
        json!({"attributes": [{"name": "stack", "value": "prod"}]})
    );
    let revision = ok(&app, Method::GET, "/v1/prod/environments/gpu/revisions/1", None).await;
    assert_eq!(
        revision["environmentRevision"]["instanceGroup"]["query"],
        "attribute:ecs.instance-type =~ g4dn.* && agentConnected == true",
        "revisions are immutable"
    );
    app.shutdown.cancel();
}

/// The API over the real ingestion (the simulator's events), one reconciliation, the view and the
/// executor: counts converge to the instances, failures are reported per instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_counts_converge_and_failures_are_reported() {
    let account = account(3);
    let app = app(&account, V03Errors::Json).await;
    let shutdown = app.shutdown.clone();
    tokio::spawn({
        let (sim, shutdown) = (account.sim.clone(), shutdown.clone());
        async move { sim.run(shutdown).await }
    });
    let ingestor = Ingestor::new(
        app.state.store.clone(),
        Arc::new(account.sim.clone()),
        IngestOptions::default(),
    );
    tokio::spawn(ingestor.run(shutdown.clone()));
    let scheduler = Scheduler::new(
        app.state.store.clone(),
        Arc::new(account.sim.clone()),
        Arc::new(account.sim.clone()),
        app.state.view.clone(),
        SchedulerOptions {
            calls_per_second: 100.0,
            verify_after: Duration::from_millis(300),
            ..SchedulerOptions::default()
        },
    );
    tokio::spawn(scheduler.run(shutdown.clone()));
    let all = json!({"desired": 3, "healthy": 3, "total": 3});
    let none = json!({"desired": 0, "healthy": 0, "total": 0});
    let env = "/v1/prod/environments/web";
    let get = |uri: String| {
        let router = app.router.clone();
        async move {
            send(&router, Method::GET, &uri, None, HeaderMap::new())
                .await
                .body
        }
    };

    ok(
        &app,
        Method::POST,
        "/v1/prod/environments",
        Some(json!({
            "environmentName": "web",
            "taskDefinition": "daemon:1",
            "deploymentConfiguration": {"minHealthyPercent": 50},
        })),
    )
    .await;
    let first = ok(
        &app,
        Method::POST,
        &format!("{env}/deployments?revisionId=1"),
        None,
    )
    .await;
    let first = str_of(&first, "/deploymentId").to_owned();
    wait_until(
        "deployment 1 completes with every count at 3",
        DEADLINE,
        || async {
            let d = get(format!("{env}/deployments/{first}")).await;
            d["deployment"]["status"] == "completed" && d["deployment"]["counts"] == all
        },
    )
    .await;
    let revision = get(format!("{env}/revisions/1")).await;
    assert_eq!(revision["environmentRevision"]["counts"], all);
    let environment = get(env.to_owned()).await;
    assert_eq!(environment["environment"]["counts"], all);
    assert_eq!(environment["environment"]["environmentHealth"], "Healthy");
    let v03 = get(format!("/v1/environments/web/deployments/{first}")).await;
    assert_eq!(
        v03["counts"],
        json!({"desired": 3, "running": 3, "pending": 0, "failed": 0})
    );
    let described = get(format!("{env}/deployments/{first}")).await;
    let history: Vec<&Value> = described["deployment"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["status"])
        .collect();
    assert_eq!(
        history,
        [&json!("pending"), &json!("running"), &json!("completed")]
    );

    // Revision 2 replaces revision 1: its counts rise to 3, revision 1's fall to 0.
    ok(
        &app,
        Method::PUT,
        env,
        Some(json!({"taskDefinition": account.td2})),
    )
    .await;
    let second = ok(
        &app,
        Method::POST,
        &format!("{env}/deployments?revisionId=2"),
        None,
    )
    .await;
    let second = str_of(&second, "/deploymentId").to_owned();
    wait_until(
        "revision 2 runs everywhere, revision 1 nowhere",
        DEADLINE,
        || async {
            let d = get(format!("{env}/deployments/{second}")).await;
            d["deployment"]["status"] == "completed"
                && get(format!("{env}/revisions/2")).await["environmentRevision"]["counts"] == all
                && get(format!("{env}/revisions/1")).await["environmentRevision"]["counts"] == none
        },
    )
    .await;

    // A rollback without a body goes back to the revision that last completed before.
    let rollback = ok(&app, Method::POST, &format!("{env}/rollback"), None).await;
    assert_eq!(
        (
            &rollback["deployment"]["environmentRevisionId"],
            &rollback["deployment"]["rollbackOf"]
        ),
        (&json!("1"), &json!(second))
    );
    let third = str_of(&rollback, "/deploymentId").to_owned();
    wait_until("the rollback completes", DEADLINE, || async {
        let d = get(format!("{env}/deployments/{third}")).await;
        d["deployment"]["status"] == "completed"
            && get(format!("{env}/revisions/1")).await["environmentRevision"]["counts"] == all
    })
    .await;
    let rolled = get(format!("{env}/deployments/{second}")).await;
    assert_eq!(
        (
            &rolled["deployment"]["status"],
            &rolled["deployment"]["rolledBackBy"]
        ),
        (&json!("rolled-back"), &json!(third))
    );

    // Starts ECS refuses: failures per instance, the deployment fails, the environment is unhealthy.
    ok(
        &app,
        Method::POST,
        "/v1/prod/environments",
        Some(json!({
            "environmentName": "big",
            "taskDefinition": "huge",
            "deploymentConfiguration": {"failureThreshold": 3, "autoRollback": false},
        })),
    )
    .await;
    let big = ok(
        &app,
        Method::POST,
        "/v1/prod/environments/big/deployments?revisionId=1",
        None,
    )
    .await;
    let big = str_of(&big, "/deploymentId").to_owned();
    wait_until("the refused deployment fails", DEADLINE, || async {
        get(format!("/v1/prod/environments/big/deployments/{big}")).await["deployment"]["status"] == "failed"
    })
    .await;
    let failed = get(format!("/v1/prod/environments/big/deployments/{big}")).await;
    let failures = failed["deployment"]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3, "{failed}");
    assert!(
        failures
            .iter()
            .all(|f| f["reason"] == "RESOURCE:MEMORY" && f["attempts"] == 1),
        "{failed}"
    );
    assert_eq!(failed["deployment"]["failedAttempts"], 3, "{failed}");
    assert_eq!(failed["deployment"]["failureThreshold"], 3, "{failed}");
    assert!(
        str_of(&failed, "/deployment/statusReason").contains("RESOURCE:MEMORY"),
        "{failed}"
    );
    let environment = get("/v1/prod/environments/big".to_owned()).await;
    assert_eq!(environment["environment"]["environmentHealth"], "Unhealthy");
    let v03 = get(format!("/v1/environments/big/deployments/{big}")).await;
    assert_eq!(v03["failedInstances"].as_array().unwrap().len(), 3, "{v03}");
    assert_eq!(v03["status"], "failed");
}

/// Two servers over one store (as replicas on etcd) create one name at once, in two clusters: the
/// store's reservation of the name lets exactly one of them, every time, and the other answers 409.
#[tokio::test(flavor = "multi_thread")]
async fn one_name_created_at_once_in_two_clusters_is_created_once() {
    let account = account(1);
    let first = app(&account, V03Errors::Json).await;
    let second_state = AppState::new(
        first.state.store.clone(),
        Some(Arc::new(account.sim.clone()) as Arc<dyn EcsControl>),
        first.shutdown.clone(),
    )
    .await
    .expect("state");
    let second = blox_server::router(second_state);
    let prod_uri = format!("/v1/{CLUSTER}/environments");
    for round in 0..20 {
        let body = json!({"environmentName": format!("race-{round}"), "taskDefinition": "daemon"});
        let (a, b) = tokio::join!(
            send(
                &first.router,
                Method::POST,
                &prod_uri,
                Some(body.clone()),
                HeaderMap::new()
            ),
            send(
                &second,
                Method::POST,
                "/v1/dev/environments",
                Some(body),
                HeaderMap::new()
            ),
        );
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "round {round}: {} / {}",
            a.body,
            b.body
        );
    }
    // A deleted environment's name is free again, in any cluster.
    let winner = ok(&first, Method::GET, "/v1/environments/race-0", None).await;
    let cluster = if winner["instanceGroup"]["cluster"] == "dev" {
        CLUSTER
    } else {
        "dev"
    };
    let _ = send(
        &first.router,
        Method::DELETE,
        "/v1/environments/race-0",
        None,
        HeaderMap::new(),
    )
    .await;
    let again = send(
        &second,
        Method::POST,
        &format!("/v1/{cluster}/environments"),
        Some(json!({"environmentName": "race-0", "taskDefinition": "daemon"})),
        HeaderMap::new(),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
}

// ---- the dashboard's JSON and events ---------------------------------------------------------------

#[tokio::test]
async fn dashboard_answers_what_the_api_answers() {
    let account = account(3);
    let app = app(&account, V03Errors::Json).await;
    ok(
        &app,
        Method::POST,
        "/v1/prod/environments",
        Some(json!({"environmentName": "web", "taskDefinition": "daemon:1"})),
    )
    .await;
    let started = ok(
        &app,
        Method::POST,
        "/v1/prod/environments/web/deployments?revisionId=1",
        None,
    )
    .await;
    let deployment = str_of(&started, "/deploymentId").to_owned();
    let head = app.state.store.log_bounds().await.expect("bounds").head;
    assert!(app.state.view.caught_up(head, DEADLINE).await);

    // The overview counts every task once they have all been read (the first ask starts it).
    let running = ok(&app, Method::GET, "/v1/tasks?cluster=prod&status=RUNNING", None).await["items"]
        .as_array()
        .expect("items")
        .len() as u64;
    wait_until("the overview counts tasks", DEADLINE, || async {
        !ok(&app, Method::GET, "/ui/api/overview", None).await["clusters"][0]["tasksByStatus"].is_null()
    })
    .await;
    let overview = ok(&app, Method::GET, "/ui/api/overview", None).await;
    let prod = overview["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .find(|c| c["cluster"] == "prod")
        .unwrap_or_else(|| panic!("prod in {overview}"));
    assert_eq!(prod["instances"], 3, "{prod}");
    assert_eq!(prod["instancesByStatus"], json!({"ACTIVE": 3}), "{prod}");
    assert_eq!(prod["tasksByStatus"]["RUNNING"], running, "{prod}");
    assert_eq!(prod["environments"], json!(["web"]), "{prod}");
    let web = &overview["environments"][0];
    assert_eq!(web["environmentName"], "web", "{overview}");
    assert_eq!(web["activeDeploymentId"], deployment.as_str());
    // No executor runs here: the deployment stays pending, every instance waits for its daemon.
    assert_eq!(web["activeDeploymentStatus"], "pending");
    assert_eq!(web["counts"], json!({"desired": 3, "healthy": 0, "total": 0}));
    assert_eq!(web["coverage"], json!({"missing": 3}));
    assert_eq!(overview["deadLetters"], 0);
    assert_eq!(overview["reconcile"]["ready"], true);

    let grid = ok(&app, Method::GET, "/ui/api/clusters/prod", None).await;
    assert_eq!(grid["environments"], json!(["web"]));
    assert_eq!(grid["total"], 3);
    let arns = |grid: &Value| -> Vec<String> {
        grid["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .map(|i| i["containerInstanceArn"].as_str().expect("an ARN").to_owned())
            .collect()
    };
    let listed = ok(&app, Method::GET, "/v1/instances?cluster=prod", None).await;
    let mut expected: Vec<String> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| str_of(i, "/entity/containerInstanceARN").to_owned())
        .collect();
    expected.sort();
    assert_eq!(
        arns(&grid),
        expected,
        "the grid holds the cluster's instances in ARN order"
    );
    for instance in grid["instances"].as_array().expect("instances") {
        assert_eq!(instance["coverage"], json!(["missing"]), "{instance}");
        assert_eq!(instance["status"], "ACTIVE");
    }
    let matching = ok(
        &app,
        Method::GET,
        "/ui/api/clusters/prod?filter=attribute%3Aecs.instance-type%20%3D%3D%20m5.large",
        None,
    )
    .await;
    assert_eq!(arns(&matching), expected);
    let none = ok(
        &app,
        Method::GET,
        "/ui/api/clusters/prod?filter=attribute%3Aecs.instance-type%20%3D%3D%20t3.micro",
        None,
    )
    .await;
    assert_eq!(
        (none["instances"].as_array().map(Vec::len), &none["total"]),
        (Some(0), &json!(3))
    );

    let page = ok(&app, Method::GET, "/ui/api/environments/web", None).await;
    // The page's environment, deployments and revisions are the v1.0 API's answers.
    let described = ok(&app, Method::GET, "/v1/prod/environments/web", None).await;
    assert_eq!(page["environment"], described["environment"]);
    let deployments = ok(&app, Method::GET, "/v1/prod/environments/web/deployments", None).await;
    assert_eq!(page["deployments"], deployments["deployments"]);
    let revisions = ok(&app, Method::GET, "/v1/prod/environments/web/revisions", None).await;
    assert_eq!(page["revisions"], revisions["revisions"]);
    let rollout = &page["rollout"];
    assert_eq!(rollout["deploymentId"], deployment.as_str());
    assert_eq!(rollout["deploymentStatus"], "pending");
    assert_eq!(rollout["deploymentMethod"], "TerminateThenReplace");
    assert_eq!(
        [
            &rollout["eligible"],
            &rollout["healthy"],
            &rollout["outdated"],
            &rollout["complete"]
        ],
        [&json!(3), &json!(0), &json!(0), &json!(false)],
        "{rollout}"
    );
    assert_eq!(rollout["coverage"], json!({"missing": 3}));
    let cells: Vec<&str> = rollout["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|c| c["coverage"].as_str().expect("coverage"))
        .collect();
    assert_eq!(cells, ["missing"; 3]);
    // What the lifecycle allows now: no completed deployment to roll back to, no canary to promote.
    assert_eq!(rollout["actions"], json!(["deploy", "freeze", "stop"]));
    let session = ok(&app, Method::GET, "/ui/api/session", None).await;
    assert_eq!(
        (&session["role"], &session["auth"]),
        (&json!("admin"), &json!(false))
    );
}

#[tokio::test]
async fn dashboard_routes_answer_bad_input_with_the_field() {
    let account = account(1);
    let app = app(&account, V03Errors::Json).await;
    // (path, status, code, field)
    let cases = [
        (
            "/ui/api/clusters/prod?filter=attribute%3A",
            400,
            Some("InvalidQuery"),
            Some("filter"),
        ),
        ("/ui/api/clusters/prod?limit=3", 400, None, Some("limit")),
        ("/ui/api/clusters/nowhere", 404, Some("ClusterNotFound"), None),
        (
            "/ui/api/clusters/not%20a%20cluster",
            400,
            Some("InvalidCluster"),
            Some("cluster"),
        ),
        (
            "/ui/api/environments/not%20a%20name",
            400,
            Some("InvalidName"),
            Some("name"),
        ),
        ("/ui/api/environments/web?x=1", 400, None, Some("x")),
        ("/ui/api/overview?x=1", 400, None, Some("x")),
        ("/ui/api/session?x=1", 400, None, Some("x")),
        ("/ui/api/events?x=1", 400, None, Some("x")),
        (
            "/ui/api/environments/nope",
            404,
            Some("EnvironmentNotFound"),
            None,
        ),
        ("/ui/api/nothing/here", 404, Some("UnknownRoute"), None),
        ("/ui/assets/nothing.js", 404, Some("UnknownAsset"), None),
    ];
    for (uri, status, code, field) in cases {
        let answer = send(&app.router, Method::GET, uri, None, HeaderMap::new()).await;
        assert_eq!(answer.status.as_u16(), status, "{uri}: {}", answer.body);
        assert_eq!(answer.content_type, "application/json", "{uri}");
        if let Some(code) = code {
            assert_eq!(answer.body["code"], code, "{uri}: {}", answer.body);
        }
        assert_eq!(answer.body["field"].as_str(), field, "{uri}: {}", answer.body);
        assert!(
            answer.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{uri}: {}",
            answer.body
        );
    }
    // The page: `/` sends the browser to it; every address under /ui/ is the same page.
    let root = get_response(&app.router, "/").await;
    assert_eq!(root.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(root.headers()[header::LOCATION], "/ui/");
    for uri in [
        "/ui/",
        "/ui/clusters/prod",
        "/ui/environments/web",
        "/ui/tasks/prod/x",
    ] {
        let page = send(&app.router, Method::GET, uri, None, HeaderMap::new()).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}");
        assert!(
            page.content_type.starts_with("text/html"),
            "{uri}: {}",
            page.content_type
        );
        assert!(
            page.body
                .as_str()
                .is_some_and(|b| b.contains("/ui/assets/app.js")),
            "{uri}"
        );
    }
    let script = send(
        &app.router,
        Method::GET,
        "/ui/assets/app.js",
        None,
        HeaderMap::new(),
    )
    .await;
    assert!(
        script.content_type.starts_with("text/javascript"),
        "{}",
        script.content_type
    );
}

/// A GET's response as it is (its body not read: it may never end).
async fn get_response(router: &Router, uri: &str) -> axum::response::Response {
    router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap()
}

/// Reads a server-sent event stream until an event of `name` whose data `wanted` accepts.
async fn next_event(
    body: &mut (impl futures::Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin),
    buffer: &mut String,
    name: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    use futures::StreamExt as _;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(rest) = line.strip_prefix("event:") {
                    event = if rest.trim() == name { name } else { "other" };
                } else if let Some(rest) = line.strip_prefix("data:") {
                    data.push_str(rest.trim());
                }
            }
            if event == name {
                let value: Value = serde_json::from_str(&data).expect("JSON data");
                if wanted(&value) {
                    return value;
                }
            }
        }
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("no {name} event in time; read {buffer:?}"))
            .expect("the stream goes on")
            .expect("a chunk");
        buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
    }
}

#[tokio::test]
async fn dashboard_events_name_what_changed() {
    let account = account(2);
    let app = app(&account, V03Errors::Json).await;
    let response = get_response(&app.router, "/ui/api/events").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = response.into_body().into_data_stream();
    let mut buffer = String::new();
    let ready = next_event(&mut body, &mut buffer, "ready", |_| true).await;
    assert!(ready["seq"].as_u64().is_some(), "{ready}");
    assert_eq!(app.state.view.feed_subscribers(), 1);

    ok(
        &app,
        Method::POST,
        "/v1/prod/environments",
        Some(json!({"environmentName": "web", "taskDefinition": "daemon:1"})),
    )
    .await;
    let change = next_event(&mut body, &mut buffer, "change", |c| {
        c["environments"] == json!(["web"])
    })
    .await;
    assert!(
        change["kinds"]
            .as_array()
            .is_some_and(|k| k.contains(&json!("environment"))),
        "{change}"
    );
    assert_eq!(change["clusters"], json!(["prod"]));
    assert!(
        change["seq"].as_u64() > ready["seq"].as_u64(),
        "{change} after {ready}"
    );
    drop(body);
    wait_until("the subscriber is gone", DEADLINE, || async {
        app.state.view.feed_subscribers() == 0
    })
    .await;
}
