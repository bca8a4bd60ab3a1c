//! Black-box tests of the daemon scheduler: the `blox` binary against moto through the real AWS SDK,
//! driven through the Blox v0.3 environment and deployment API. moto emits no ECS events, so blox
//! learns ECS's state by reconciling every second.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use blox_aws::{DesiredStatus, EcsReader as _, SdkEcs};
use blox_model::Task;
use blox_testkit::{BloxProcess, EcsFixture, Moto, wait_until};
use serde_json::{Value, json};

const BLOX: &str = env!("CARGO_BIN_EXE_blox");
const DEADLINE: Duration = Duration::from_secs(60);

struct Harness {
    moto: Moto,
    ecs: EcsFixture,
    reader: SdkEcs,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Harness {
        let moto = Moto::start()
            .await
            .expect("moto starts (run scripts/setup-test-env.sh)");
        let ecs = EcsFixture::new(&moto).await;
        let reader = SdkEcs::new(&moto.sdk_config().await);
        Harness {
            moto,
            ecs,
            reader,
            http: reqwest::Client::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn blox(&self, extra: &[&str]) -> BloxProcess {
        let store = format!("redb:{}", self.dir.path().join("blox.redb").display());
        let mut args = vec![
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &store,
            "--reconcile-interval",
            "1s",
            "--scheduler-interval",
            "1s",
        ];
        args.extend_from_slice(extra);
        BloxProcess::start(BLOX, args, &self.moto.env())
            .await
            .expect("blox starts")
    }

    /// (status, body) of a request with an optional JSON body.
    async fn call(&self, method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("blox answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        (status, body)
    }

    /// (status, body) of starting a deployment of environment `agent` with `token`.
    async fn deploy(&self, blox: &BloxProcess, token: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            blox.url(&format!(
                "/v1/environments/agent/deployments?deploymentToken={token}"
            )),
            None,
        )
        .await
    }

    /// The cluster's live tasks (desired RUNNING, not STOPPED) as moto describes them.
    async fn live_tasks(&self, cluster: &str) -> Vec<Task> {
        let arns = self
            .reader
            .list_tasks(cluster, DesiredStatus::Running)
            .await
            .expect("ListTasks");
        self.reader
            .describe_tasks(cluster, &arns)
            .await
            .expect("DescribeTasks")
            .into_iter()
            .filter(|t| t.last_status != "STOPPED")
            .collect()
    }
}

/// Instance → the environment's live tasks on it.
fn per_instance<'a>(tasks: &'a [Task], group: &str) -> BTreeMap<String, Vec<&'a Task>> {
    let mut out: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.group.as_deref() == Some(group)) {
        out.entry(t.container_instance_arn.clone().unwrap_or_default())
            .or_default()
            .push(t);
    }
    out
}

/// Every instance has exactly one task of `group`, started by `deployment`, of `task_definition`.
fn converged(
    tasks: &[Task],
    instances: &[String],
    group: &str,
    deployment: &str,
    task_definition: &str,
) -> bool {
    let on = per_instance(tasks, group);
    on.len() == instances.len()
        && instances.iter().all(|i| {
            on.get(i).is_some_and(|ts| {
                ts.len() == 1
                    && ts[0].started_by.as_deref() == Some(deployment)
                    && ts[0].task_definition_arn.ends_with(task_definition)
            })
        })
}

#[tokio::test]
async fn environments_deploy_one_task_per_instance_and_keep_it_there() {
    let h = Harness::new().await;
    h.ecs.create_cluster("prod").await.unwrap();
    h.ecs.register_task_definition("agent").await.unwrap();
    let mut instances = h.ecs.register_instances("prod", 3).await.unwrap();
    let blox = h.blox(&[]).await;
    let url = |path: &str| blox.url(path);

    let (status, _) = h.call(reqwest::Method::GET, url("/v1/ping"), None).await;
    assert_eq!(status, 200);
    let (status, env) = h
        .call(
            reqwest::Method::POST,
            url("/v1/environments"),
            Some(json!({"name": "agent", "instanceGroup": {"cluster": "prod"}, "taskDefinition": "agent"})),
        )
        .await;
    assert_eq!(status, 200, "{env}");
    assert_eq!(env["name"], "agent");
    assert!(
        env["instanceGroup"]["cluster"]
            .as_str()
            .unwrap()
            .ends_with(":cluster/prod"),
        "{env}"
    );
    assert!(
        env["taskDefinition"]
            .as_str()
            .unwrap()
            .ends_with("task-definition/agent:1"),
        "{env}"
    );
    let token = env["deploymentToken"].as_str().unwrap().to_owned();

    let (status, deployment) = h.deploy(&blox, &token).await;
    assert_eq!(status, 200, "{deployment}");
    let first = deployment["id"].as_str().unwrap().to_owned();
    wait_until(
        "one task per instance, started by the deployment",
        DEADLINE,
        || async {
            converged(
                &h.live_tasks("prod").await,
                &instances,
                "blox:agent",
                &first,
                "agent:1",
            )
        },
    )
    .await;
    wait_until("the deployment completes", DEADLINE, || async {
        let (_, d) = h
            .call(
                reqwest::Method::GET,
                url(&format!("/v1/environments/agent/deployments/{first}")),
                None,
            )
            .await;
        d["status"] == "completed"
    })
    .await;

    // A new instance gets one.
    instances.extend(h.ecs.register_instances("prod", 1).await.unwrap());
    wait_until("the new instance gets its task", DEADLINE, || async {
        converged(
            &h.live_tasks("prod").await,
            &instances,
            "blox:agent",
            &first,
            "agent:1",
        )
    })
    .await;

    // A stopped task is restarted.
    let victim = h.live_tasks("prod").await[0].clone();
    h.ecs.stop_task("prod", &victim.task_arn, "test").await.unwrap();
    wait_until("the stopped task is replaced", DEADLINE, || async {
        let tasks = h.live_tasks("prod").await;
        !tasks.iter().any(|t| t.task_arn == victim.task_arn)
            && converged(&tasks, &instances, "blox:agent", &first, "agent:1")
    })
    .await;

    // Update + redeploy replaces the task definition everywhere.
    h.ecs.register_task_definition("agent").await.unwrap();
    let (status, updated) = h
        .call(
            reqwest::Method::PUT,
            url("/v1/environments/agent"),
            Some(json!({"taskDefinition": "agent:2"})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    let new_token = updated["deploymentToken"].as_str().unwrap().to_owned();
    assert_ne!(new_token, token);
    let (status, stale) = h.deploy(&blox, &token).await;
    assert_eq!(status, 400, "a stale token: {stale}");
    assert_eq!(stale["field"], "deploymentToken");
    let (status, second) = h.deploy(&blox, &new_token).await;
    assert_eq!(status, 200, "{second}");
    let second = second["id"].as_str().unwrap().to_owned();
    wait_until(
        "every instance runs the new task definition",
        DEADLINE,
        || async {
            converged(
                &h.live_tasks("prod").await,
                &instances,
                "blox:agent",
                &second,
                "agent:2",
            )
        },
    )
    .await;
    let (_, list) = h
        .call(
            reqwest::Method::GET,
            url("/v1/environments/agent/deployments"),
            None,
        )
        .await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "newest first");

    // Delete with terminateTasks stops them.
    let (status, deleted) = h
        .call(
            reqwest::Method::DELETE,
            url("/v1/environments/agent?terminateTasks=true"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["terminateTasks"], true, "{deleted}");
    wait_until(
        "the environment's tasks are stopped and it is gone",
        DEADLINE,
        || async {
            per_instance(&h.live_tasks("prod").await, "blox:agent").is_empty()
                && h.call(reqwest::Method::GET, url("/v1/environments/agent"), None)
                    .await
                    .0
                    == 404
        },
    )
    .await;
}

#[tokio::test]
async fn bad_requests_answer_json_errors() {
    let h = Harness::new().await;
    h.ecs.create_cluster("prod").await.unwrap();
    h.ecs.register_task_definition("agent").await.unwrap();
    let blox = h.blox(&[]).await;
    let create = |body: Value| {
        let url = blox.url("/v1/environments");
        let h = &h;
        async move { h.call(reqwest::Method::POST, url, Some(body)).await }
    };
    let cases = [
        (
            json!({"name": "bad name!", "instanceGroup": {"cluster": "prod"}, "taskDefinition": "agent"}),
            400,
            "name",
        ),
        (
            json!({"name": "ok", "instanceGroup": {"cluster": "nowhere"}, "taskDefinition": "agent"}),
            404,
            "instanceGroup.cluster",
        ),
        (
            json!({"name": "ok", "instanceGroup": {"cluster": "prod"}, "taskDefinition": "nothing:9"}),
            404,
            "taskDefinition",
        ),
    ];
    for (body, want, field) in cases {
        let (status, error) = create(body.clone()).await;
        assert_eq!(status, want, "{body} → {error}");
        assert_eq!(error["field"], field, "{body} → {error}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{error}"
        );
    }
    let (status, _) =
        create(json!({"name": "ok", "instanceGroup": {"cluster": "prod"}, "taskDefinition": "agent"})).await;
    assert_eq!(status, 200);
    let (status, error) = h
        .call(
            reqwest::Method::POST,
            blox.url("/v1/environments/ok/deployments?deploymentToken=00000000-0000-4000-8000-000000000000"),
            None,
        )
        .await;
    assert_eq!(
        (status, &error["field"]),
        (400, &json!("deploymentToken")),
        "{error}"
    );
    let (status, error) = h
        .call(reqwest::Method::GET, blox.url("/v1/environments/missing"), None)
        .await;
    assert_eq!(status, 404, "{error}");
}

/// SIGKILL in the middle of a deployment onto 200 instances; a restart on the same store converges
/// with exactly one task per instance: nothing started twice.
#[tokio::test]
async fn killed_mid_deployment_converges_without_duplicates() {
    let h = Harness::new().await;
    h.ecs.create_cluster("big").await.unwrap();
    h.ecs.register_task_definition("agent").await.unwrap();
    let instances = h.ecs.register_instances("big", 200).await.unwrap();
    // Slow enough (2 StartTask calls of 10 per second) that the kill lands mid-deployment.
    let mut blox = h.blox(&["--scheduler-calls-per-second", "2"]).await;
    let (status, env) = h
        .call(
            reqwest::Method::POST,
            blox.url("/v1/environments"),
            Some(json!({"name": "agent", "instanceGroup": {"cluster": "big"}, "taskDefinition": "agent"})),
        )
        .await;
    assert_eq!(status, 200, "{env}");
    let token = env["deploymentToken"].as_str().unwrap();
    let (status, deployment) = h.deploy(&blox, token).await;
    assert_eq!(status, 200, "{deployment}");
    let id = deployment["id"].as_str().unwrap().to_owned();
    wait_until("the deployment is under way", DEADLINE, || async {
        !per_instance(&h.live_tasks("big").await, "blox:agent").is_empty()
    })
    .await;
    blox.kill();
    let started = per_instance(&h.live_tasks("big").await, "blox:agent").len();
    assert!(
        started < instances.len(),
        "killed after the deployment finished ({started} tasks)"
    );

    let _blox = h.blox(&[]).await;
    wait_until(
        "the deployment converges after the restart",
        Duration::from_secs(180),
        || async {
            converged(
                &h.live_tasks("big").await,
                &instances,
                "blox:agent",
                &id,
                "agent:1",
            )
        },
    )
    .await;
    // Nothing ever ran twice on an instance: every task of the environment moto knows, stopped or
    // not, is on its own instance.
    let all = h.reader.list_tasks("big", DesiredStatus::Stopped).await.unwrap();
    let stopped = h.reader.describe_tasks("big", &all).await.unwrap();
    let live = h.live_tasks("big").await;
    let mut seen = BTreeSet::new();
    for t in live
        .iter()
        .chain(&stopped)
        .filter(|t| t.group.as_deref() == Some("blox:agent"))
    {
        assert!(
            seen.insert(t.container_instance_arn.clone()),
            "two tasks were started on {:?}",
            t.container_instance_arn
        );
    }
}
