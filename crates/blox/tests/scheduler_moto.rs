//! Black-box tests of the daemon scheduler: the `blox` binary against moto (ECS and SQS) through the
//! real AWS SDK, driven over HTTP through the Blox v1.0 environment API. moto emits no ECS events and
//! its tasks are RUNNING at once: blox learns ECS's state by reconciling every second, from StartTask
//! and StopTask answers, and from the events the test publishes itself.

use std::collections::BTreeMap;
use std::time::Duration;

use blox_model::Task;
use blox_testkit::{
    Api, BloxProcess, EcsFixture, EventFeed, Moto, StartTaskFault, StartTaskFaultProxy, deployment_id,
    tasks_by_instance, wait_until,
};
use reqwest::Method;
use serde_json::json;

const BLOX: &str = env!("CARGO_BIN_EXE_blox");
const DEADLINE: Duration = Duration::from_secs(60);
const QUEUE: &str = "events";
const VERIFICATIONS: &str = "blox_scheduler_verifications_total";

struct Harness {
    moto: Moto,
    ecs: EcsFixture,
    feed: EventFeed,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Harness {
        let moto = Moto::start()
            .await
            .expect("moto starts (run scripts/setup-test-env.sh)");
        let ecs = EcsFixture::new(&moto).await;
        let queue = ecs.create_queue(QUEUE).await.expect("queue");
        let feed = EventFeed::new(&moto, &queue).await;
        Harness {
            moto,
            ecs,
            feed,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// blox on the harness's store and queue, reconciling and planning every second, with ECS
    /// reached at what `env` says.
    async fn blox(&self, env: &[(String, String)]) -> Blox {
        self.blox_with(env, &[]).await
    }

    /// [`Harness::blox`] with `extra` flags.
    async fn blox_with(&self, env: &[(String, String)], extra: &[&str]) -> Blox {
        let store = format!("log:{}", self.dir.path().join("store").display());
        let mut args = vec![
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &store,
            "--queue",
            QUEUE,
            "--reconcile-interval",
            "1s",
            "--scheduler-interval",
            "1s",
        ];
        args.extend_from_slice(extra);
        let process = BloxProcess::start(BLOX, args, env).await.expect("blox starts");
        Blox { process }
    }

    /// A cluster `cluster` of `n` instances (their ARNs) and the task definitions `agent:1` and
    /// `agent:2`.
    async fn two_revisions_on(&self, cluster: &str, n: usize) -> Vec<String> {
        self.ecs.create_cluster(cluster).await.unwrap();
        self.ecs.register_task_definition("agent").await.unwrap();
        self.ecs.register_task_definition("agent").await.unwrap();
        self.ecs.register_instances(cluster, n).await.unwrap()
    }

    /// The environment's tasks (ECS group `blox:ENVIRONMENT`), stopped ones included.
    async fn environment_tasks(&self, cluster: &str, environment: &str) -> Vec<Task> {
        let group = blox_model::daemon::group(environment);
        let mut tasks = self.ecs.all_tasks(cluster).await.expect("moto lists its tasks");
        tasks.retain(|task| task.group.as_deref() == Some(group.as_str()));
        tasks
    }

    /// The environment's tasks that are not STOPPED, by instance.
    async fn live(&self, cluster: &str, environment: &str) -> BTreeMap<String, Vec<Task>> {
        let tasks = self.environment_tasks(cluster, environment).await;
        tasks_by_instance(tasks.into_iter().filter(|task| task.last_status != "STOPPED"))
    }

    /// Every instance runs exactly one task of the environment, started by `deployment`, of a task
    /// definition ending in `task_definition` (`agent:2`); nothing else of the environment is live.
    async fn converged(
        &self,
        cluster: &str,
        environment: &str,
        instances: &[String],
        deployment: &str,
        task_definition: &str,
    ) -> bool {
        let live = self.live(cluster, environment).await;
        live.len() == instances.len()
            && instances.iter().all(|i| {
                live.get(i).is_some_and(|tasks| {
                    tasks.len() == 1
                        && tasks[0].last_status == "RUNNING"
                        && tasks[0].started_by.as_deref() == Some(deployment)
                        && tasks[0].task_definition_arn.ends_with(task_definition)
                })
            })
    }

    /// Tasks of the environment ECS ever started, stopped ones included, by instance.
    async fn ever_started(&self, cluster: &str, environment: &str) -> BTreeMap<String, usize> {
        tasks_by_instance(self.environment_tasks(cluster, environment).await)
            .into_iter()
            .map(|(instance, tasks)| (instance, tasks.len()))
            .collect()
    }
}

/// A blox server; its [`Api`] through `Deref`, with the deployments of the `prod` cluster.
struct Blox {
    process: BloxProcess,
}

impl std::ops::Deref for Blox {
    type Target = Api;

    fn deref(&self) -> &Api {
        self.process.api()
    }
}

impl Blox {
    /// Starts a deployment of revision `revision`; returns its id.
    async fn deploy(&self, environment: &str, revision: u64) -> String {
        self.process.api().deploy("prod", environment, revision).await
    }

    async fn deployment(&self, environment: &str, id: &str) -> serde_json::Value {
        self.process.api().deployment("prod", environment, id).await
    }

    async fn wait_completed(&self, environment: &str, id: &str, instances: usize) {
        self.process
            .api()
            .wait_completed("prod", environment, id, instances, DEADLINE)
            .await;
    }

    /// Scheduler passes so far, every trigger.
    async fn passes(&self) -> u64 {
        self.counter("blox_scheduler_passes_total").await
    }

    /// Waits until the scheduler has run `n` more full passes.
    async fn wait_passes(&self, n: u64) {
        let from = self.passes().await;
        wait_until(&format!("{n} more scheduler passes"), DEADLINE, || async {
            self.passes().await >= from + n
        })
        .await;
    }
}

/// The whole life of an environment over the v1.0 API, each step checked in moto: create, deploy,
/// update and deploy, roll back, freeze (a deployment taken, nothing acted on), stop, thaw, delete
/// with its tasks.
#[tokio::test]
async fn an_environment_lives_and_dies_through_the_v1_api() {
    let h = Harness::new().await;
    let instances = h.two_revisions_on("prod", 3).await;
    let blox = h.blox(&h.moto.env()).await;
    let env = "/v1/prod/environments/agent";

    let created = blox
        .ok(
            Method::POST,
            "/v1/prod/environments",
            Some(json!({
                "environmentName": "agent",
                "taskDefinition": "agent:1",
                "deploymentMethod": "TerminateThenReplace",
                "deploymentConfiguration": {"minHealthyPercent": 50},
            })),
        )
        .await;
    assert_eq!(created["environmentRevisionId"], "1", "{created}");
    assert!(
        created["environment"]["clusterArn"]
            .as_str()
            .is_some_and(|a| a.ends_with(":cluster/prod")),
        "{created}"
    );
    assert!(
        h.live("prod", "agent").await.is_empty(),
        "nothing runs before a deployment"
    );

    // Deploy revision 1: one task per instance, startedBy the deployment, group blox:agent.
    let first = blox.deploy("agent", 1).await;
    wait_until("revision 1 runs on every instance", DEADLINE, || async {
        h.converged("prod", "agent", &instances, &first, "agent:1").await
    })
    .await;
    blox.wait_completed("agent", &first, 3).await;

    // Update to agent:2 and deploy it: the old tasks are stopped, new ones started.
    let updated = blox
        .ok(
            Method::PUT,
            env,
            Some(json!({"taskDefinition": "agent:2", "baseRevisionId": "1"})),
        )
        .await;
    assert_eq!(updated["environmentRevisionId"], "2", "{updated}");
    let second = blox.deploy("agent", 2).await;
    wait_until("revision 2 replaces revision 1", DEADLINE, || async {
        h.converged("prod", "agent", &instances, &second, "agent:2").await
    })
    .await;
    blox.wait_completed("agent", &second, 3).await;
    let revision = blox.ok(Method::GET, &format!("{env}/revisions/1"), None).await;
    assert_eq!(
        revision["environmentRevision"]["counts"],
        json!({"desired": 0, "healthy": 0, "total": 0})
    );

    // Roll back (no body: the revision that completed before).
    let rollback = blox.ok(Method::POST, &format!("{env}/rollback"), None).await;
    assert_eq!(
        (
            &rollback["deployment"]["environmentRevisionId"],
            &rollback["deployment"]["rollback"]
        ),
        (&json!("1"), &json!(true)),
        "{rollback}"
    );
    let third = deployment_id(&rollback);
    wait_until("the rollback restores revision 1", DEADLINE, || async {
        h.converged("prod", "agent", &instances, &third, "agent:1").await
    })
    .await;
    blox.wait_completed("agent", &third, 3).await;
    assert_eq!(blox.deployment("agent", &second).await["status"], "rolled-back");

    // Frozen: a deployment is taken but nothing is started, stopped or restarted.
    let frozen = blox.ok(Method::POST, &format!("{env}/freeze"), None).await;
    assert_eq!(frozen["environment"]["environmentStatus"], "Frozen");
    let fourth = blox.deploy("agent", 2).await;
    let victim = h.live("prod", "agent").await[&instances[0]][0].task_arn.clone();
    h.ecs.stop_task("prod", &victim, "test: crash").await.unwrap();
    h.feed
        .publish_tasks("prod", std::slice::from_ref(&victim))
        .await
        .unwrap();
    wait_until("blox sees the stopped task", DEADLINE, || async {
        let r = blox.ok(Method::GET, &format!("{env}/revisions/1"), None).await;
        r["environmentRevision"]["counts"]["total"] == 2
    })
    .await;
    blox.wait_passes(2).await;
    let live = h.live("prod", "agent").await;
    assert_eq!(live.len(), 2, "a frozen environment restarts nothing: {live:?}");
    assert!(
        live.values()
            .flatten()
            .all(|t| t.started_by.as_deref() == Some(third.as_str())),
        "a frozen environment starts nothing new: {live:?}"
    );
    assert_eq!(blox.deployment("agent", &fourth).await["status"], "pending");

    // Stop the pending deployment; stopping it again is a conflict.
    let stop = format!("{env}/deployments/{fourth}/stop");
    let stopped = blox.ok(Method::POST, &stop, None).await;
    assert_eq!(stopped["deployment"]["status"], "stopped", "{stopped}");
    let (status, again) = blox.call(Method::POST, &stop, None).await;
    assert_eq!(
        (status, &again["code"]),
        (409, &json!("DeploymentFinished")),
        "{again}"
    );

    // Thawed, a new deployment of revision 2 rolls out, on the crashed instance too.
    let fifth = blox.deploy("agent", 2).await;
    let thawed = blox.ok(Method::POST, &format!("{env}/thaw"), None).await;
    assert_eq!(thawed["environment"]["environmentStatus"], "Active");
    wait_until("revision 2 rolls out after the thaw", DEADLINE, || async {
        h.converged("prod", "agent", &instances, &fifth, "agent:2").await
    })
    .await;
    blox.wait_completed("agent", &fifth, 3).await;

    let deployments = blox.ok(Method::GET, &format!("{env}/deployments"), None).await;
    assert_eq!(
        deployments["deploymentIds"],
        json!([fifth, fourth, third, second, first]),
        "newest first"
    );

    // Delete with its tasks: Deleting until they are stopped, then gone.
    let deleting = blox
        .ok(Method::DELETE, &format!("{env}?terminateTasks=true"), None)
        .await;
    assert_eq!(deleting["environment"]["environmentStatus"], "Deleting");
    wait_until(
        "the environment's tasks are stopped and it is gone",
        DEADLINE,
        || async {
            h.live("prod", "agent").await.is_empty() && blox.call(Method::GET, env, None).await.0 == 404
        },
    )
    .await;
    // 3 instances × 4 deployments that ran (the crashed task's restart is the fifth's start there).
    let started = h.ever_started("prod", "agent").await;
    assert_eq!(started.len(), 3, "{started:?}");
    assert!(started.values().all(|&n| n == 4), "{started:?}");
}

/// StartTask has no idempotency token, so blox sends it once: when the answer is a 500 it asks ECS
/// (ListTasks by startedBy and instance) instead of sending it again. An answer lost after ECS acted
/// is one StartTask and no duplicate; a call refused before ECS acted is sent again only once ECS
/// has said nothing started.
#[tokio::test]
async fn start_task_is_sent_once_when_its_answer_is_a_500() {
    let h = Harness::new().await;
    h.ecs.register_task_definition("agent").await.unwrap();
    let mut instances = BTreeMap::new();
    for cluster in ["prod", "other"] {
        h.ecs.create_cluster(cluster).await.unwrap();
        instances.insert(cluster, h.ecs.register_instances(cluster, 3).await.unwrap());
    }
    let proxy = StartTaskFaultProxy::start(&h.moto).await.expect("proxy");
    let blox = h.blox(&proxy.env()).await;

    let cases = [
        // (cluster, environment, fault, StartTask requests for its one batch of 3 instances)
        ("prod", "lost", StartTaskFault::LoseAnswer, 1),
        ("other", "refused", StartTaskFault::Refuse, 2),
    ];
    for (cluster, environment, fault, requests) in cases {
        let before = proxy.start_task_requests();
        let verified = blox.counter(VERIFICATIONS).await;
        proxy.fail_next_start_tasks(1, fault);
        blox.ok(
            Method::POST,
            &format!("/v1/{cluster}/environments"),
            Some(json!({"environmentName": environment, "taskDefinition": "agent"})),
        )
        .await;
        let (_, answer) = blox
            .call(
                Method::POST,
                &format!("/v1/{cluster}/environments/{environment}/deployments?revisionId=1"),
                None,
            )
            .await;
        let id = deployment_id(&answer);
        let path = format!("/v1/{cluster}/environments/{environment}/deployments/{id}");
        wait_until(
            &format!("{environment}: the deployment completes"),
            DEADLINE,
            || async {
                let d = blox.ok(Method::GET, &path, None).await;
                d["deployment"]["status"] == "completed"
                    && d["deployment"]["counts"] == json!({"desired": 3, "healthy": 3, "total": 3})
            },
        )
        .await;
        assert_eq!(proxy.faults_left(), 0, "{environment}: the fault was used");
        assert_eq!(
            proxy.start_task_requests() - before,
            requests,
            "{environment}: StartTask requests ({fault:?})"
        );
        assert!(
            h.converged(cluster, environment, &instances[cluster], &id, "agent:1")
                .await
        );
        let started = h.ever_started(cluster, environment).await;
        assert!(
            started.len() == 3 && started.values().all(|&n| n == 1),
            "{environment}: one task ever per instance: {started:?}"
        );
        if fault == StartTaskFault::Refuse {
            // Sent again only after ECS said, instance by instance, that nothing had started.
            assert_eq!(blox.counter(VERIFICATIONS).await - verified, 3);
        }
    }
}

/// SIGKILL in the middle of a deployment onto 200 instances; a restart on the same store converges
/// with exactly one task per instance: nothing started twice.
#[tokio::test]
async fn killed_mid_deployment_converges_without_duplicates() {
    let h = Harness::new().await;
    h.ecs.create_cluster("prod").await.unwrap();
    h.ecs.register_task_definition("agent").await.unwrap();
    let instances = h.ecs.register_instances("prod", 200).await.unwrap();
    // Slow enough (2 StartTask calls of 10 per second) that the kill lands mid-deployment.
    let mut blox = h
        .blox_with(&h.moto.env(), &["--scheduler-calls-per-second", "2"])
        .await;
    blox.ok(
        Method::POST,
        "/v1/prod/environments",
        Some(json!({"environmentName": "agent", "taskDefinition": "agent"})),
    )
    .await;
    let id = blox.deploy("agent", 1).await;
    wait_until("the deployment is under way", DEADLINE, || async {
        !h.live("prod", "agent").await.is_empty()
    })
    .await;
    blox.process.kill();
    let started = h.live("prod", "agent").await.len();
    assert!(
        started < instances.len(),
        "killed after the deployment finished ({started} tasks)"
    );

    let blox = h.blox(&h.moto.env()).await;
    wait_until(
        "the deployment converges after the restart",
        Duration::from_secs(180),
        || async { h.converged("prod", "agent", &instances, &id, "agent:1").await },
    )
    .await;
    blox.wait_completed("agent", &id, instances.len()).await;
    let ever = h.ever_started("prod", "agent").await;
    assert_eq!(ever.len(), instances.len());
    assert!(
        ever.values().all(|&n| n == 1),
        "a task was started twice on an instance: {:?}",
        ever.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
}

/// A deployment's CloudWatch alarm set to ALARM mid-rollout (moto's SetAlarmState) fails it with the
/// alarm's name, and the automatic rollback, which is not watched, restores the first revision.
#[tokio::test]
async fn an_alarm_in_alarm_fails_the_deployment_and_rolls_back() {
    let h = Harness::new().await;
    let instances = h.two_revisions_on("prod", 4).await;
    h.ecs.put_alarm("agent-errors").await.unwrap();
    let blox = h.blox(&h.moto.env()).await;
    let env = "/v1/prod/environments/agent";
    blox.ok(
        Method::POST,
        "/v1/prod/environments",
        Some(json!({
            "environmentName": "agent",
            "taskDefinition": "agent:1",
            "deploymentConfiguration": {"minHealthyPercent": 50, "alarms": ["agent-errors"]},
        })),
    )
    .await;
    let first = blox.deploy("agent", 1).await;
    blox.wait_completed("agent", &first, 4).await;

    // Revision 2 bakes for two minutes: the deployment is still running when the alarm goes off.
    blox.ok(
        Method::PUT,
        env,
        Some(json!({"taskDefinition": "agent:2", "deploymentConfiguration": {"minHealthySeconds": 120}})),
    )
    .await;
    let second = blox.deploy("agent", 2).await;
    wait_until("the second deployment runs", DEADLINE, || async {
        blox.deployment("agent", &second).await["status"] == "running"
    })
    .await;
    h.ecs
        .set_alarm_state(
            "agent-errors",
            aws_sdk_cloudwatch::types::StateValue::Alarm,
            "errors above 5%",
        )
        .await
        .unwrap();
    wait_until("the alarm fails the deployment", DEADLINE, || async {
        blox.deployment("agent", &second).await["status"] == "failed"
    })
    .await;
    let failed = blox.deployment("agent", &second).await;
    assert_eq!(
        failed["statusReason"], "alarm agent-errors is in ALARM",
        "{failed}"
    );
    let rollback = failed["rolledBackBy"]
        .as_str()
        .unwrap_or_else(|| panic!("an automatic rollback: {failed}"))
        .to_owned();
    blox.wait_completed("agent", &rollback, 4).await;
    wait_until("revision 1 runs everywhere again", DEADLINE, || async {
        h.converged("prod", "agent", &instances, &rollback, "agent:1")
            .await
    })
    .await;
    assert!(
        blox.counter("blox_scheduler_alarm_checks_total").await >= 2,
        "the alarm was read"
    );
}

/// On a quiet fleet, a deployment's plan (`dryRun=true`) is what the deployment then does: the same
/// instances replaced and stopped, as many tasks started; and the dry run itself writes nothing.
#[tokio::test]
async fn a_plan_is_what_the_deployment_then_does() {
    let h = Harness::new().await;
    let instances = h.two_revisions_on("prod", 5).await;
    let blox = h.blox(&h.moto.env()).await;
    let env = "/v1/prod/environments/agent";
    blox.ok(
        Method::POST,
        "/v1/prod/environments",
        Some(json!({
            "environmentName": "agent",
            "taskDefinition": "agent:1",
            "deploymentConfiguration": {"minHealthyPercent": 60},
        })),
    )
    .await;
    let first = blox.deploy("agent", 1).await;
    blox.wait_completed("agent", &first, 5).await;

    // Revision 2 leaves the last instance out of the group (by its EC2 id) and runs agent:2.
    let leaving = &instances[4];
    let described = blox
        .ok(Method::GET, &format!("/v1/instances/prod/{leaving}"), None)
        .await;
    let ec2 = described["entity"]["EC2InstanceID"]
        .as_str()
        .unwrap_or_else(|| panic!("an EC2 instance id: {described}"))
        .to_owned();
    blox.ok(
        Method::PUT,
        env,
        Some(json!({
            "taskDefinition": "agent:2",
            "instanceGroup": {"query": format!("ec2InstanceId != {ec2}")},
        })),
    )
    .await;
    let before = h.live("prod", "agent").await;
    let started_before: usize = h.ever_started("prod", "agent").await.values().sum();
    let plan = blox
        .ok(
            Method::POST,
            &format!("{env}/deployments?revisionId=2&dryRun=true"),
            None,
        )
        .await;
    assert_eq!(plan["dryRun"], true, "{plan}");
    assert_eq!(plan["complete"], true, "{plan}");
    assert_eq!(
        (plan["eligible"].as_u64(), plan["floor"].as_u64()),
        (Some(4), Some(3))
    );
    let planned: BTreeMap<String, String> = plan["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["containerInstanceArn"].as_str().unwrap().to_owned(),
                i["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let planned_starts: usize = plan["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["starts"].as_array().unwrap().len())
        .sum();
    // Nothing was written or started by the dry run.
    let deployments = blox.ok(Method::GET, &format!("{env}/deployments"), None).await;
    assert_eq!(
        deployments["deploymentIds"].as_array().unwrap().len(),
        1,
        "{deployments}"
    );
    assert_eq!(
        h.ever_started("prod", "agent").await.values().sum::<usize>(),
        started_before
    );

    let second = blox.deploy("agent", 2).await;
    blox.wait_completed("agent", &second, 4).await;
    let after = h.live("prod", "agent").await;
    let done: BTreeMap<String, String> = instances
        .iter()
        .map(|i| {
            let action = match (before.get(i), after.get(i)) {
                (Some(b), Some(a)) if b[0].task_arn == a[0].task_arn => "keep",
                (Some(_), Some(_)) => "replace",
                (None, Some(_)) => "start",
                (Some(_), None) => "stop",
                (None, None) => "wait",
            };
            (i.clone(), action.to_owned())
        })
        .collect();
    assert_eq!(planned, done, "{plan}");
    let started = h.ever_started("prod", "agent").await.values().sum::<usize>() - started_before;
    assert_eq!(planned_starts, started, "{plan}");
}
