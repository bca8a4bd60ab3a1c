//! The daemon scheduler's API (environments and deployments): each answer's JSON as a snapshot, the
//! bad inputs as one table, and one end-to-end run through `serve()` with the scheduler on the
//! simulator.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use blox_aws::{
    ClusterDescription, EcsControl, EcsError, EcsErrorKind, Failure, StartTask, Started,
    TaskDefinitionDescription,
};
use blox_server::{AppState, ReadinessState, StreamOptions};
use blox_sim::{NewInstance, Simulator, ThrottleConfig};
use blox_store::{MemStore, Store, StoreOptions};
use blox_testkit::wait_until;
use common::{container, simulator};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

const CLUSTER: &str = "prod";

struct Account {
    sim: Simulator,
    td1: String,
    td2: String,
    instances: Vec<String>,
}

/// A simulated account: cluster `prod` with `instances` instances, task definitions `daemon:1` and
/// `daemon:2`, and `old:1`, deregistered (INACTIVE).
fn account(instances: usize) -> Account {
    let sim = simulator(ThrottleConfig::unlimited());
    let (td1, td2, instances) = sim.write(|ecs, now| {
        ecs.create_cluster(CLUSTER).expect("cluster");
        let td1 = ecs
            .register_task_definition("daemon", None, None, container(128))
            .expect("td")
            .arn;
        let td2 = ecs
            .register_task_definition("daemon", None, None, container(256))
            .expect("td")
            .arn;
        let old = ecs
            .register_task_definition("old", None, None, container(128))
            .expect("td")
            .arn;
        ecs.deregister_task_definition(&old).expect("deregister");
        let instances = (0..instances)
            .map(|_| {
                ecs.register_container_instance(CLUSTER, NewInstance::ec2("m5.large", "us-east-1a"), now)
                    .expect("instance")
                    .container_instance_arn
                    .clone()
            })
            .collect();
        (td1, td2, instances)
    });
    Account {
        sim,
        td1,
        td2,
        instances,
    }
}

/// The router over a MemStore, with the simulator as ECS control and no scheduler: deployments stay
/// pending, so the answers are deterministic.
fn app(sim: Option<&Simulator>) -> Router {
    app_with(sim.map(|s| Arc::new(s.clone()) as Arc<dyn EcsControl>))
}

fn app_with(control: Option<Arc<dyn EcsControl>>) -> Router {
    let store: Arc<dyn Store> = Arc::new(MemStore::new(StoreOptions::default()));
    let readiness = Arc::new(ReadinessState::default());
    readiness.ready_without_reconcile();
    blox_server::router(AppState {
        store,
        readiness,
        metrics: blox_server::metrics::handle(),
        stream: StreamOptions::default(),
        control,
        environment_writes: Arc::default(),
    })
}

async fn call(app: &Router, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let request = Request::builder().method(method).uri(uri);
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{uri}: {e}: {bytes:?}"));
    (status, value)
}

async fn create(app: &Router, name: &str, td: &str) -> Value {
    let (status, body) = call(
        app,
        Method::POST,
        "/v1/environments",
        Some(json!({"name": name, "instanceGroup": {"cluster": CLUSTER}, "taskDefinition": td})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn deploy(app: &Router, name: &str, token: &str) -> Value {
    let uri = format!("/v1/environments/{name}/deployments?deploymentToken={token}");
    let (status, body) = call(app, Method::POST, &uri, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn token(environment: &Value) -> String {
    environment["deploymentToken"].as_str().unwrap().to_owned()
}

macro_rules! snapshot {
    ($name:expr, $value:expr) => {
        insta::assert_json_snapshot!($name, $value, {
            ".**.deploymentToken" => "[token]",
            ".**.id" => "[id]",
            ".**.activeDeployment" => "[id]",
            ".**.createdAt" => "[time]",
            ".**.updatedAt" => "[time]",
            ".**.startedAt" => "[time]",
            ".**.endedAt" => "[time]",
        })
    };
}

#[tokio::test]
async fn answers_match_snapshots() {
    let account = account(2);
    let app = app(Some(&account.sim));

    let (status, ping) = call(&app, Method::GET, "/v1/ping", None).await;
    assert_eq!((status, ping.clone()), (StatusCode::OK, json!({})));

    let created = call(
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
    assert_eq!(created.0, StatusCode::OK);
    snapshot!("environment_created", created.1);
    assert_eq!(created.1["taskDefinition"], account.td1.as_str());
    let _ = create(&app, "logs", "daemon").await;

    let (status, list) = call(&app, Method::GET, "/v1/environments", None).await;
    assert_eq!(status, StatusCode::OK);
    snapshot!("environments", list);
    let (status, by_arn) = call(
        &app,
        Method::GET,
        "/v1/environments?cluster=arn:aws:ecs:us-east-1:123456789012:cluster/prod",
        None,
    )
    .await;
    assert_eq!(
        (status, by_arn["items"].as_array().unwrap().len()),
        (StatusCode::OK, 2)
    );
    let (_, other) = call(&app, Method::GET, "/v1/environments?cluster=dev", None).await;
    assert_eq!(other, json!({"items": []}));

    let deployment = deploy(&app, "web", &token(&created.1)).await;
    snapshot!("deployment_created", deployment);
    let id = deployment["id"].as_str().unwrap().to_owned();

    let (status, got) = call(&app, Method::GET, "/v1/environments/web", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["activeDeployment"], id.as_str());
    snapshot!("environment_deployed", got);

    let (status, updated) = call(
        &app,
        Method::PUT,
        "/v1/environments/web",
        Some(json!({"taskDefinition": account.td2})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_ne!(token(&updated), token(&created.1));
    snapshot!("environment_updated", updated);
    let second = deploy(&app, "web", &token(&updated)).await;
    assert_eq!(second["revision"], 2);

    let (status, deployments) = call(&app, Method::GET, "/v1/environments/web/deployments", None).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = deployments["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second["id"].as_str().unwrap(), id.as_str()], "newest first");
    snapshot!("deployments", deployments);

    let (status, one) = call(
        &app,
        Method::GET,
        &format!("/v1/environments/web/deployments/{id}"),
        None,
    )
    .await;
    assert_eq!((status, &one["id"]), (StatusCode::OK, &json!(id)));

    let (status, deleted) = call(&app, Method::DELETE, "/v1/environments/web", None).await;
    assert_eq!(status, StatusCode::OK);
    snapshot!("environment_deleted_left_running", deleted);
    let (status, deleted) = call(
        &app,
        Method::DELETE,
        "/v1/environments/logs?terminateTasks=true",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    snapshot!("environment_deleted_terminating", deleted);
    let (_, got) = call(&app, Method::GET, "/v1/environments/logs", None).await;
    assert_eq!(got["status"], "deleting");
}

/// The status, code and field a bad request must be answered with.
type Want<'a> = (u16, &'a str, Option<&'a str>);

/// One bad request and what it must be answered with.
async fn check(app: &Router, method: Method, uri: &str, body: Option<Value>, want: Want<'_>) {
    let (status, got) = call(app, method.clone(), uri, body).await;
    assert_eq!(
        (status.as_u16(), got["code"].as_str(), got["field"].as_str()),
        (want.0, Some(want.1), want.2),
        "{method} {uri}: {got}"
    );
    assert!(got["message"].as_str().is_some_and(|m| !m.is_empty()), "{got}");
}

#[tokio::test]
async fn bad_requests_are_json_errors() {
    let account = account(1);
    let app = app(Some(&account.sim));
    let env = create(&app, "web", "daemon:1").await;
    let used = token(&env);
    deploy(&app, "web", &used).await;
    let _ = create(&app, "old", "daemon:1").await;
    call(&app, Method::DELETE, "/v1/environments/old", None).await;

    let new = |name: &str, cluster: &str, td: &str| {
        Some(json!({"name": name, "instanceGroup": {"cluster": cluster}, "taskDefinition": td}))
    };
    let post = Method::POST;
    let cases: Vec<(Method, String, Option<Value>, Want)> = vec![
        (
            post.clone(),
            "/v1/environments".into(),
            new("has space", CLUSTER, "daemon"),
            (400, "InvalidName", Some("name")),
        ),
        (
            post.clone(),
            "/v1/environments".into(),
            new(&"x".repeat(31), CLUSTER, "daemon"),
            (400, "InvalidName", Some("name")),
        ),
        (
            post.clone(),
            "/v1/environments".into(),
            new("a", "bad name", "daemon"),
            (400, "InvalidCluster", Some("instanceGroup.cluster")),
        ),
        (
            post.clone(),
            "/v1/environments".into(),
            new("a", CLUSTER, " "),
            (400, "InvalidTaskDefinition", Some("taskDefinition")),
        ),
        (
            post.clone(),
            "/v1/environments".into(),
            Some(json!({"name": "a"})),
            (400, "InvalidBody", Some("body")),
        ),
        (
            post.clone(),
            "/v1/environments".into(),
            None,
            (400, "InvalidBody", Some("body")),
        ),
        (
            post.clone(),
            "/v1/environments".into(),
            new("a", "nowhere", "daemon"),
            (404, "ClusterNotFound", Some("instanceGroup.cluster")),
        ),
        (
            post.clone(),
            "/v1/environments".into(),
            new("a", CLUSTER, "nothing:1"),
            (404, "TaskDefinitionNotFound", Some("taskDefinition")),
        ),
        (
            post.clone(),
            "/v1/environments".into(),
            new("a", CLUSTER, "old:1"),
            (404, "TaskDefinitionInactive", Some("taskDefinition")),
        ),
        (
            post.clone(),
            "/v1/environments".into(),
            new("web", CLUSTER, "daemon"),
            (409, "EnvironmentExists", None),
        ),
        (
            post.clone(),
            "/v1/environments?x=1".into(),
            new("a", CLUSTER, "daemon"),
            (400, "UnsupportedParameter", Some("x")),
        ),
        (
            Method::GET,
            "/v1/environments?color=red".into(),
            None,
            (400, "UnsupportedParameter", Some("color")),
        ),
        (
            Method::GET,
            "/v1/environments?cluster=a&cluster=b".into(),
            None,
            (400, "RepeatedParameter", Some("cluster")),
        ),
        (
            Method::GET,
            "/v1/environments?cluster=bad%20name".into(),
            None,
            (400, "InvalidCluster", Some("cluster")),
        ),
        (
            Method::GET,
            "/v1/environments/nope".into(),
            None,
            (404, "EnvironmentNotFound", None),
        ),
        (
            Method::PUT,
            "/v1/environments/nope".into(),
            Some(json!({"taskDefinition": "daemon"})),
            (404, "EnvironmentNotFound", None),
        ),
        (
            Method::PUT,
            "/v1/environments/web".into(),
            Some(json!({"taskDefinition": "nothing"})),
            (404, "TaskDefinitionNotFound", Some("taskDefinition")),
        ),
        (
            Method::PUT,
            "/v1/environments/web".into(),
            Some(json!({"taskDefinition": "old:1"})),
            (404, "TaskDefinitionInactive", Some("taskDefinition")),
        ),
        (
            Method::PUT,
            "/v1/environments/web".into(),
            Some(json!({})),
            (400, "InvalidBody", Some("body")),
        ),
        (
            Method::PUT,
            "/v1/environments/old".into(),
            Some(json!({"taskDefinition": "daemon"})),
            (409, "EnvironmentDeleting", None),
        ),
        (
            post.clone(),
            "/v1/environments/web/deployments".into(),
            None,
            (400, "MissingDeploymentToken", Some("deploymentToken")),
        ),
        (
            post.clone(),
            "/v1/environments/web/deployments?deploymentToken=abc".into(),
            None,
            (400, "InvalidDeploymentToken", Some("deploymentToken")),
        ),
        (
            post.clone(),
            "/v1/environments/web/deployments?deploymentToken=0b69d5c0-d655-4695-98cd-5d2d526d9d5a".into(),
            None,
            (400, "StaleDeploymentToken", Some("deploymentToken")),
        ),
        (
            post.clone(),
            format!("/v1/environments/web/deployments?deploymentToken={used}"),
            None,
            (409, "DeploymentTokenUsed", Some("deploymentToken")),
        ),
        (
            post.clone(),
            format!("/v1/environments/web/deployments?deploymentToken={used}&x=1"),
            None,
            (400, "UnsupportedParameter", Some("x")),
        ),
        (
            post.clone(),
            format!("/v1/environments/nope/deployments?deploymentToken={used}"),
            None,
            (404, "EnvironmentNotFound", None),
        ),
        (
            post.clone(),
            format!("/v1/environments/old/deployments?deploymentToken={used}"),
            None,
            (409, "EnvironmentDeleting", None),
        ),
        (
            Method::GET,
            "/v1/environments/nope/deployments".into(),
            None,
            (404, "EnvironmentNotFound", None),
        ),
        (
            Method::GET,
            "/v1/environments/web/deployments/nope".into(),
            None,
            (404, "DeploymentNotFound", None),
        ),
        (
            Method::DELETE,
            "/v1/environments/web?terminateTasks=yes".into(),
            None,
            (400, "InvalidTerminateTasks", Some("terminateTasks")),
        ),
        (
            Method::DELETE,
            "/v1/environments/web?force=true".into(),
            None,
            (400, "UnsupportedParameter", Some("force")),
        ),
        (
            Method::DELETE,
            "/v1/environments/nope".into(),
            None,
            (404, "EnvironmentNotFound", None),
        ),
        (
            Method::GET,
            "/v1/nothing".into(),
            None,
            (404, "UnknownRoute", None),
        ),
    ];
    for (method, uri, body, want) in cases {
        check(&app, method, &uri, body, want).await;
    }
    // The stale token's message names both tokens, as v0.3's did.
    let (_, stale) = call(
        &app,
        Method::POST,
        "/v1/environments/web/deployments?deploymentToken=0b69d5c0-d655-4695-98cd-5d2d526d9d5a",
        None,
    )
    .await;
    assert_eq!(
        stale["message"],
        format!(
            "Token '0b69d5c0-d655-4695-98cd-5d2d526d9d5a' is outdated and does not match the environment token '{used}'"
        )
    );
    // After an update, the used token is stale rather than used.
    call(
        &app,
        Method::PUT,
        "/v1/environments/web",
        Some(json!({"taskDefinition": "daemon:2"})),
    )
    .await;
    check(
        &app,
        Method::POST,
        &format!("/v1/environments/web/deployments?deploymentToken={used}"),
        None,
        (400, "StaleDeploymentToken", Some("deploymentToken")),
    )
    .await;

    // A cluster that is not ACTIVE, and ECS failing: a stub of ECS.
    let stub = app_with(Some(Arc::new(InactiveCluster)));
    check(
        &stub,
        Method::POST,
        "/v1/environments",
        new("a", CLUSTER, "daemon"),
        (404, "ClusterInactive", Some("instanceGroup.cluster")),
    )
    .await;
    check(
        &stub,
        Method::POST,
        "/v1/environments",
        new("a", "throttled", "daemon"),
        (503, "EcsUnavailable", None),
    )
    .await;

    // Without ECS, nothing can be checked: 503.
    let no_ecs = self::app(None);
    check(
        &no_ecs,
        Method::POST,
        "/v1/environments",
        new("a", CLUSTER, "daemon"),
        (503, "NoEcs", None),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_deploy_redeploy_and_delete_through_serve() {
    const DEADLINE: Duration = Duration::from_secs(30);
    let account = account(3);
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let (sim, shutdown) = (account.sim.clone(), shutdown.clone());
        async move { sim.run(shutdown).await }
    });
    let store: Arc<dyn Store> = Arc::new(MemStore::new(StoreOptions::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let services = blox_server::Services {
        store,
        ecs: Some(Arc::new(account.sim.clone())),
        events: Some(Arc::new(account.sim.clone())),
        control: Some(Arc::new(account.sim.clone())),
    };
    let options = blox_server::ServerOptions {
        scheduler: blox_server::SchedulerOptions {
            calls_per_second: 100.0,
            ..blox_server::SchedulerOptions::default()
        },
        ..blox_server::ServerOptions::default()
    };
    let server = tokio::spawn(blox_server::serve(listener, services, options, shutdown.clone()));
    let client = blox_client::Client::new(format!("http://{address}"));
    client.ping().await.expect("ping");

    let live = |td: Option<&str>| {
        let tasks = account.sim.read(|ecs| ecs.live_tasks(CLUSTER));
        let ours: Vec<_> = tasks
            .iter()
            .filter(|t| t.group.as_deref() == Some("blox:web"))
            .collect();
        let mut on: Vec<String> = ours
            .iter()
            .filter(|t| t.last_status == "RUNNING" && td.is_none_or(|td| t.task_definition_arn == td))
            .filter_map(|t| t.container_instance_arn.clone())
            .collect();
        on.sort();
        (ours.len(), on)
    };
    let mut instances = account.instances.clone();
    instances.sort();

    let env = client
        .create_environment(&blox_api::CreateEnvironmentRequest {
            name: "web".into(),
            instance_group: blox_api::InstanceGroupBody {
                cluster: CLUSTER.into(),
            },
            task_definition: "daemon:1".into(),
            deployment_configuration: None,
        })
        .await
        .expect("create");
    let first = client
        .create_deployment("web", &env.deployment_token)
        .await
        .expect("deploy");
    wait_completed(&client, &first.id, DEADLINE).await;
    assert_eq!(
        live(Some(&account.td1)),
        (3, instances.clone()),
        "one task per instance"
    );
    let done = client.get_deployment("web", &first.id).await.expect("get");
    assert_eq!(
        (
            done.counts.desired,
            done.counts.running,
            done.counts.pending,
            done.counts.failed
        ),
        (3, 3, 0, 0)
    );
    assert_eq!(
        client.get_environment("web").await.expect("get").health,
        "healthy"
    );

    let updated = client
        .update_environment(
            "web",
            &blox_api::UpdateEnvironmentRequest {
                task_definition: account.td2.clone(),
            },
        )
        .await
        .expect("update");
    let second = client
        .create_deployment("web", &updated.deployment_token)
        .await
        .expect("deploy again");
    wait_completed(&client, &second.id, DEADLINE).await;
    wait_until("the tasks are replaced", DEADLINE, || async {
        live(Some(&account.td2)) == (3, instances.clone())
    })
    .await;

    let deleted = client.delete_environment("web", true).await.expect("delete");
    assert!(
        deleted.terminate_tasks && deleted.message.contains("being stopped"),
        "{deleted:?}"
    );
    wait_until("the environment is gone", DEADLINE, || async {
        matches!(
            client.get_environment("web").await,
            Err(blox_client::ClientError::Api { status: 404, .. })
        )
    })
    .await;
    assert_eq!(live(None).0, 0, "every task of the environment is stopped");
    shutdown.cancel();
    server.await.expect("join").expect("serve");
}

/// Waits, through the API, for deployment `id` of environment `web` to complete.
async fn wait_completed(client: &blox_client::Client, id: &str, deadline: Duration) {
    wait_until(&format!("deployment {id} completes"), deadline, || async {
        client
            .get_deployment("web", id)
            .await
            .is_ok_and(|d| d.status == "completed")
    })
    .await;
}

/// ECS where cluster `throttled` cannot be described and every other cluster is INACTIVE.
struct InactiveCluster;

#[async_trait::async_trait]
impl EcsControl for InactiveCluster {
    async fn describe_clusters(
        &self,
        clusters: &[String],
    ) -> Result<(Vec<ClusterDescription>, Vec<Failure>), EcsError> {
        if clusters.iter().any(|c| c == "throttled") {
            return Err(EcsError {
                operation: "DescribeClusters",
                cluster: None,
                kind: EcsErrorKind::Throttled,
            });
        }
        let described = clusters
            .iter()
            .map(|c| ClusterDescription {
                cluster_arn: format!("arn:aws:ecs:us-east-1:123456789012:cluster/{c}"),
                cluster_name: c.clone(),
                status: "INACTIVE".into(),
                registered_container_instances_count: 0,
                running_tasks_count: 0,
                pending_tasks_count: 0,
            })
            .collect();
        Ok((described, vec![]))
    }

    async fn describe_task_definition(
        &self,
        task_definition: &str,
    ) -> Result<TaskDefinitionDescription, EcsError> {
        Ok(TaskDefinitionDescription {
            arn: format!("arn:aws:ecs:us-east-1:123456789012:task-definition/{task_definition}:1"),
            family: task_definition.to_owned(),
            revision: 1,
            status: "ACTIVE".into(),
            cpu: None,
            memory: None,
            containers: vec![],
        })
    }

    async fn start_task(&self, _request: &StartTask) -> Result<Started, EcsError> {
        unreachable!("the API never starts tasks")
    }

    async fn stop_task(
        &self,
        _cluster: &str,
        _task: &str,
        _reason: &str,
    ) -> Result<blox_model::Task, EcsError> {
        unreachable!("the API never stops tasks")
    }
}
