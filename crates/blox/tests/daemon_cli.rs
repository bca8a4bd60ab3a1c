//! `blox env` and `blox deploy` as an operator runs them: the real binary against `blox server --ecs
//! sim` on the demo account (`demo-prod`: 12 instances; `demo-staging`: 5, every one running `web:1`,
//! which holds host port 8080). Create, status, deploy and wait, update, deploy, roll back, stop,
//! freeze and thaw, delete; deployments that fail, with and without an automatic rollback, and the
//! exit codes that say so.

use std::process::Stdio;
use std::time::Duration;

use blox_api::{PageQuery, RevisionId, TaskQuery};
use blox_client::Client;
use blox_testkit::{BloxProcess, Finished, run_to_end, wait_until};
use tokio::io::AsyncReadExt as _;

const BLOX: &str = env!("CARGO_BIN_EXE_blox");
const DEADLINE: Duration = Duration::from_secs(60);

/// Exit codes of `deploy start --wait` (documented in its help).
const FAILED: i32 = 3;
const STOPPED: i32 = 4;
const SUPERSEDED: i32 = 5;
const ROLLED_BACK: i32 = 6;

/// Runs the CLI with `--endpoint`.
async fn run(endpoint: &str, args: &[&str]) -> Finished {
    let mut command = tokio::process::Command::new(BLOX);
    command.args(args).arg("--endpoint").arg(endpoint);
    run_to_end(command, DEADLINE).await
}

async fn cli(endpoint: &str, args: &[&str]) -> String {
    let out = run(endpoint, args).await;
    assert_eq!(
        out.code,
        Some(0),
        "blox {args:?} failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

async fn json(endpoint: &str, args: &[&str]) -> serde_json::Value {
    let mut with = args.to_vec();
    with.push("--json");
    let out = cli(endpoint, &with).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("blox {args:?}: {e}:\n{out}"))
}

/// Runs the CLI and expects it to fail with `code`; returns its stderr.
async fn fails(endpoint: &str, args: &[&str], code: i32) -> String {
    let out = run(endpoint, args).await;
    assert_eq!(
        out.code,
        Some(code),
        "blox {args:?}:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out.stderr
}

/// A CLI command left running (`--wait`, `--watch`), its output collected.
struct Running {
    child: tokio::process::Child,
    args: Vec<String>,
}

impl Running {
    fn start(endpoint: &str, args: &[&str]) -> Running {
        let child = tokio::process::Command::new(BLOX)
            .args(args)
            .arg("--endpoint")
            .arg(endpoint)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("blox runs");
        Running {
            child,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    /// Waits for the command to exit by itself.
    async fn finish(self) -> Finished {
        let args = self.args;
        let out = tokio::time::timeout(DEADLINE, self.child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("blox {args:?} did not finish within {DEADLINE:?}"))
            .expect("blox runs");
        Finished::from(out)
    }
}

/// The row of a table whose first cell is `first`, split into cells (no cell here holds a space).
fn row(table: &str, first: &str) -> Option<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cells| cells.first().map(String::as_str) == Some(first))
}

fn cells(values: &[&str]) -> Option<Vec<String>> {
    Some(values.iter().map(|v| (*v).to_owned()).collect())
}

/// The server on the simulated demo account, once it has mirrored the account (a deployment planned
/// before the instances are known would have nothing to do).
async fn server() -> BloxProcess {
    let blox = BloxProcess::start(
        BLOX,
        [
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--ecs",
            "sim",
            "--sim-scenario",
            "demo",
            "--sim-churn",
            "none",
        ],
        &[],
    )
    .await
    .expect("blox server --ecs sim starts");
    let client = Client::new(blox.base_url());
    wait_until("the demo account is mirrored", DEADLINE, || async {
        let mut instances = 0;
        for cluster in ["demo-prod", "demo-staging"] {
            instances += client
                .list_instances(&blox_api::InstanceQuery {
                    cluster: Some(cluster.into()),
                    ..blox_api::InstanceQuery::default()
                })
                .await
                .map_or(0, |i| i.items.len());
        }
        instances == 17 && client.readiness().await.is_ok_and(|r| r.ready)
    })
    .await;
    blox
}

async fn deployment_count(url: &str, env: &str) -> usize {
    let list = json(url, &["deploy", "list", env]).await;
    list["deployments"].as_array().map_or(0, Vec::len)
}

/// Waits until the environment has `n` deployments; returns the newest one's id.
async fn nth_deployment(url: &str, env: &str, n: usize) -> String {
    wait_until(&format!("{env} has {n} deployments"), DEADLINE, || async {
        deployment_count(url, env).await == n
    })
    .await;
    let list = json(url, &["deploy", "list", env]).await;
    list["deployments"][0]["deploymentId"]
        .as_str()
        .expect("an id")
        .to_owned()
}

#[tokio::test]
async fn an_environment_is_created_deployed_updated_rolled_back_frozen_and_deleted() {
    let blox = server().await;
    let url = blox.base_url().to_owned();

    let created = cli(
        &url,
        &[
            "env",
            "create",
            "agents",
            "--cluster",
            "demo-prod",
            "--task-definition",
            "log-router:1",
            "--min-healthy-percent",
            "50",
        ],
    )
    .await;
    assert!(
        created.contains("created environment agents (revision 1)"),
        "{created}"
    );
    let status = cli(&url, &["env", "status", "agents"]).await;
    assert_eq!(
        row(&status, "agents"),
        cells(&["agents", "-", "-", "created", "0", "0", "0"]),
        "{status}"
    );
    assert_eq!(
        row(&status, "1").map(|r| r[1].clone()).as_deref(),
        Some("Created"),
        "{status}"
    );

    // The first deployment, followed to the end: one line per change, exit 0.
    let waited = cli(&url, &["deploy", "start", "agents", "--wait"]).await;
    let progress: Vec<&str> = waited
        .lines()
        .filter(|l| {
            let mut words = l.split(' ');
            matches!((words.next(), words.next(), words.next()), (Some(_), Some(n), None) if n.contains('/'))
        })
        .collect();
    assert_eq!(progress.last(), Some(&"completed 12/12"), "{waited}");
    assert!(
        waited.lines().last().unwrap().contains("completed: 12 of 12"),
        "{waited}"
    );
    let status = cli(&url, &["env", "status", "agents"]).await;
    assert_eq!(
        row(&status, "agents"),
        cells(&["agents", "1", "1", "completed", "12", "12", "12"]),
        "{status}"
    );
    assert_eq!(
        row(&status, "1"),
        cells(&["1", "Active", "12", "12", "12", "log-router:1"]),
        "{status}"
    );
    let described = json(&url, &["env", "describe", "agents"]).await;
    assert_eq!(described["environment"]["environmentStatus"], "Active");
    assert_eq!(described["environment"]["counts"]["healthy"], 12);

    // A new revision: listed as Created until deployed.
    let updated = cli(
        &url,
        &["env", "update", "agents", "--task-definition", "metrics-agent"],
    )
    .await;
    assert!(updated.contains("created revision 2 of agents"), "{updated}");
    let status = cli(&url, &["env", "status", "agents"]).await;
    assert_eq!(
        row(&status, "2").map(|r| r[1].clone()).as_deref(),
        Some("Created"),
        "{status}"
    );
    cli(&url, &["deploy", "start", "agents", "--wait"]).await;
    let status = cli(&url, &["env", "status", "agents"]).await;
    assert_eq!(
        row(&status, "agents"),
        cells(&["agents", "2", "2", "completed", "12", "12", "12"]),
        "{status}"
    );
    let second = json(&url, &["deploy", "list", "agents"]).await["deploymentIds"][0]
        .as_str()
        .unwrap()
        .to_owned();

    // An older revision needs --rollback; `deploy rollback` picks the last completed revision.
    let stderr = fails(&url, &["deploy", "start", "agents", "--revision", "1"], 1).await;
    assert!(
        stderr.contains("RollbackRequired") && stderr.contains("field revisionId"),
        "{stderr}"
    );
    cli(&url, &["deploy", "rollback", "agents", "--wait"]).await;
    let list = json(&url, &["deploy", "list", "agents"]).await;
    let (rollback, rolled_back) = (&list["deployments"][0], &list["deployments"][1]);
    assert_eq!(
        (
            rollback["status"].as_str(),
            rollback["rollback"].as_bool(),
            rollback["rollbackOf"].as_str(),
            rollback["environmentRevisionId"].as_str()
        ),
        (Some("completed"), Some(true), Some(second.as_str()), Some("1")),
        "{list}"
    );
    assert_eq!(rolled_back["status"], "rolled-back", "{list}");
    let one = cli(
        &url,
        &[
            "deploy",
            "describe",
            "agents",
            rollback["deploymentId"].as_str().unwrap(),
        ],
    )
    .await;
    assert!(
        one.contains("rollback of") && one.contains("AT") && one.contains("completed"),
        "{one}"
    );

    // Frozen, deployments are taken but wait: each way a followed deployment can end other than
    // completed, with its exit code.
    cli(&url, &["env", "freeze", "agents"]).await;
    let status = cli(&url, &["env", "status", "agents"]).await;
    assert_eq!(row(&status, "agents").unwrap()[3], "Frozen", "{status}");

    let waiting = Running::start(&url, &["deploy", "start", "agents", "--revision", "2", "--wait"]);
    let id = nth_deployment(&url, "agents", 4).await;
    let stopped = cli(&url, &["deploy", "stop", "agents", &id]).await;
    assert!(stopped.contains(&format!("deployment {id} stopped")), "{stopped}");
    let out = waiting.finish().await;
    assert_eq!(out.code, Some(STOPPED), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("is frozen") && out.stderr.contains("stopped by a user"),
        "{}",
        out.stderr
    );
    let stderr = fails(&url, &["deploy", "stop", "agents", &id], 1).await;
    assert!(
        stderr.contains("DeploymentFinished") && stderr.contains("HTTP 409"),
        "{stderr}"
    );

    let waiting = Running::start(&url, &["deploy", "start", "agents", "--revision", "2", "--wait"]);
    nth_deployment(&url, "agents", 5).await;
    cli(&url, &["deploy", "start", "agents", "--revision", "2"]).await;
    let out = waiting.finish().await;
    assert_eq!(out.code, Some(SUPERSEDED), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("superseded by deployment"), "{}", out.stderr);

    let waiting = Running::start(&url, &["deploy", "start", "agents", "--revision", "2", "--wait"]);
    nth_deployment(&url, "agents", 7).await;
    cli(&url, &["deploy", "rollback", "agents", "--revision", "1"]).await;
    let out = waiting.finish().await;
    assert_eq!(out.code, Some(ROLLED_BACK), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("rolled back by deployment"), "{}", out.stderr);

    // Thawed, the rollback (to what already runs) completes.
    cli(&url, &["env", "thaw", "agents"]).await;
    wait_until("the rollback completes once thawed", DEADLINE, || async {
        let status = cli(&url, &["env", "status", "agents"]).await;
        row(&status, "agents") == cells(&["agents", "1", "1", "completed", "12", "12", "12"])
    })
    .await;

    // Errors carry the API's code, field and status.
    let stderr = fails(&url, &["env", "describe", "nope"], 1).await;
    assert!(
        stderr.contains("EnvironmentNotFound") && stderr.contains("HTTP 404"),
        "{stderr}"
    );
    let stderr = fails(
        &url,
        &[
            "env",
            "update",
            "agents",
            "--base-revision",
            "1",
            "--task-definition",
            "worker",
        ],
        1,
    )
    .await;
    assert!(stderr.contains("HTTP 409"), "{stderr}");
    // A usage error is clap's.
    fails(&url, &["deploy", "start", "agents", "--revision", "0"], 2).await;

    // Deleted with its tasks: a watch follows it to the end and stops by itself.
    let watch = Running::start(&url, &["env", "status", "agents", "--watch"]);
    let mut watch = watch;
    let mut stdout = watch.child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        while !String::from_utf8_lossy(&seen).contains("REVISION") {
            let n = stdout.read(&mut buffer).await.expect("reads");
            assert!(n > 0, "the watch ended early");
            seen.extend_from_slice(&buffer[..n]);
        }
    })
    .await
    .expect("the watch prints a table");
    let deleted = cli(&url, &["env", "delete", "agents", "--terminate-tasks"]).await;
    assert!(deleted.contains("being deleted"), "{deleted}");
    let out = watch.finish().await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let client = Client::new(&url);
    wait_until("the daemons are stopped", DEADLINE, || async {
        client
            .list_tasks(&TaskQuery {
                cluster: Some("demo-prod".into()),
                status: Some("running".into()),
                ..TaskQuery::default()
            })
            .await
            .is_ok_and(|t| {
                !t.items
                    .iter()
                    .any(|t| t.entity.group.as_deref() == Some("blox:agents"))
            })
    })
    .await;
    let stderr = fails(&url, &["env", "status", "agents"], 1).await;
    assert!(stderr.contains("EnvironmentNotFound"), "{stderr}");
}

#[tokio::test]
async fn failed_deployments_exit_non_zero_and_say_why() {
    let blox = server().await;
    let url = blox.base_url().to_owned();

    // Every demo-staging instance runs web:1 on port 8080: a second web task fits nowhere.
    cli(
        &url,
        &[
            "env",
            "create",
            "webs",
            "--cluster",
            "demo-staging",
            "--task-definition",
            "web",
            "--failure-threshold",
            "2",
            "--no-auto-rollback",
        ],
    )
    .await;
    let stderr = fails(&url, &["deploy", "start", "webs", "--wait"], FAILED).await;
    assert!(
        stderr.contains("failed:")
            && stderr.contains("failure threshold of 2")
            && stderr.contains("RESOURCE:PORTS"),
        "{stderr}"
    );
    assert!(!stderr.contains("rolled back automatically"), "{stderr}");
    let status = cli(&url, &["env", "status", "webs"]).await;
    assert_eq!(row(&status, "1").unwrap()[1], "Failed", "{status}");

    // With --json, stdout is the deployment and the progress goes to stderr.
    let out = run(&url, &["deploy", "start", "webs", "--wait", "--json"]).await;
    assert_eq!(out.code, Some(FAILED), "{}", out.stderr);
    let deployment: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(deployment["status"], "failed", "{deployment}");
    assert!(out.stderr.contains("failed 0/5"), "{}", out.stderr);

    // A failure after a completed deployment is rolled back by itself; the rollback's id is printed.
    cli(
        &url,
        &[
            "env",
            "create",
            "agents",
            "--cluster",
            "demo-prod",
            "--task-definition",
            "log-router:1",
        ],
    )
    .await;
    cli(&url, &["deploy", "start", "agents", "--wait"]).await;
    cli(
        &url,
        &[
            "env",
            "update",
            "agents",
            "--task-definition",
            "web",
            "--failure-threshold",
            "2",
        ],
    )
    .await;
    let stderr = fails(&url, &["deploy", "start", "agents", "--wait"], FAILED).await;
    let rollback = stderr
        .split("rolled back automatically by deployment ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no rollback id in:\n{stderr}"))
        .to_owned();
    let list = json(&url, &["deploy", "list", "agents"]).await;
    assert_eq!(list["deploymentIds"][0], rollback.as_str(), "{list}");
    assert_eq!(list["deployments"][1]["status"], "failed", "{list}");
    assert_eq!(
        list["deployments"][1]["rolledBackBy"],
        rollback.as_str(),
        "{list}"
    );
    wait_until("the automatic rollback completes", DEADLINE, || async {
        json(&url, &["deploy", "describe", "agents", &rollback]).await["deployment"]["status"] == "completed"
    })
    .await;
}

#[tokio::test]
async fn flags_reach_the_api_and_the_client_speaks_v1() {
    let blox = server().await;
    let url = blox.base_url().to_owned();

    let created = json(
        &url,
        &[
            "env",
            "create",
            "tagged",
            "--cluster",
            "demo-prod",
            "--task-definition",
            "worker",
            "--method",
            "ReplaceThenTerminate",
            "--max-over-percent",
            "20",
            "--min-healthy-seconds",
            "5",
            "--progress-deadline-seconds",
            "120",
            "--stop-on-drain",
            "--attribute",
            "stack=prod",
            "--attribute",
            "ecs.os-type",
        ],
    )
    .await;
    let env = &created["environment"];
    assert_eq!(created["environmentRevisionId"], "1");
    assert_eq!(env["deploymentMethod"], "ReplaceThenTerminate");
    let config = &env["deploymentConfiguration"];
    assert_eq!(
        (
            &config["maxOverPercent"],
            &config["minHealthySeconds"],
            &config["progressDeadlineSeconds"],
            &config["stopOnDrain"],
            &config["autoRollback"]
        ),
        (
            &serde_json::json!(20),
            &serde_json::json!(5),
            &serde_json::json!(120),
            &serde_json::json!(true),
            &serde_json::json!(true)
        ),
        "{env}"
    );
    assert_eq!(
        env["instanceGroup"]["attributes"],
        serde_json::json!([{"name": "stack", "value": "prod"}, {"name": "ecs.os-type"}])
    );

    let updated = json(
        &url,
        &[
            "env",
            "update",
            "tagged",
            "--clear-attributes",
            "--no-stop-on-drain",
            "--base-revision",
            "1",
        ],
    )
    .await;
    assert_eq!(updated["environmentRevisionId"], "2");
    assert_eq!(
        updated["environment"]["instanceGroup"]["attributes"],
        serde_json::json!([])
    );
    let config = &updated["environment"]["deploymentConfiguration"];
    assert_eq!(config["stopOnDrain"], false, "{config}");
    assert_eq!(config["maxOverPercent"], 20, "kept from revision 1: {config}");

    // The cluster by ARN, the v0.3 aliases, the listing across clusters.
    let arn = env["clusterArn"].as_str().unwrap();
    let got = json(&url, &["env", "get", "tagged", "--cluster", arn]).await;
    assert_eq!(got["environment"]["latestEnvironmentRevisionId"], "2");
    let listed = cli(&url, &["env", "list"]).await;
    assert!(listed.lines().any(|l| l.starts_with("tagged ")), "{listed}");
    let stderr = fails(
        &url,
        &["env", "describe", "tagged", "--cluster", "demo-staging"],
        1,
    )
    .await;
    assert!(stderr.contains("EnvironmentNotFound"), "{stderr}");
    let status = json(&url, &["env", "status", "tagged"]).await;
    assert_eq!(status["revisions"].as_array().map(Vec::len), Some(2), "{status}");
    assert!(status["activeDeployment"].is_null(), "{status}");

    // The client's v1.0 calls the CLI does not make.
    let client = Client::new(&url);
    let v1 = client.v1();
    let list = v1
        .list_environments(arn, Some("tag"), &PageQuery::default())
        .await
        .unwrap();
    assert_eq!(list.environment_names, ["tagged"]);
    let none = v1
        .list_environments("demo-prod", Some("zzz"), &PageQuery::default())
        .await
        .unwrap();
    assert!(none.environments.is_empty());
    let revision = v1
        .describe_revision("demo-prod", "tagged", RevisionId(1))
        .await
        .unwrap();
    assert_eq!(revision.environment_revision.instance_group.attributes.len(), 2);
    let page = v1
        .list_revisions(
            "demo-prod",
            "tagged",
            &PageQuery {
                max_results: Some(1),
                next_token: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.revision_ids, [RevisionId(1)]);
    let rest = v1
        .list_revisions(
            "demo-prod",
            "tagged",
            &PageQuery {
                max_results: Some(1),
                next_token: page.next_token,
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.revision_ids, [RevisionId(2)]);
    let err = v1
        .describe_revision("demo-prod", "tagged", RevisionId(9))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, blox_client::ClientError::Api { status: 404, .. }),
        "{err}"
    );

    // The v0.3 API still works with its new request fields.
    let updated = client
        .update_environment(
            "tagged",
            &blox_api::UpdateEnvironmentRequest {
                instance_group: Some(blox_api::InstanceGroupUpdate {
                    attributes: vec![blox_api::AttributeBody {
                        name: "stack".into(),
                        value: None,
                    }],
                    query: None,
                }),
                ..blox_api::UpdateEnvironmentRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.revision, 3);
    assert_eq!(updated.instance_group.attributes.len(), 1);
    let deployment = client
        .create_deployment("tagged", &updated.deployment_token)
        .await
        .unwrap();
    let d = client.get_deployment("tagged", &deployment.id).await.unwrap();
    assert_eq!(d.revision, 3);

    let deleted = cli(&url, &["env", "delete", "tagged"]).await;
    assert!(deleted.contains("left running"), "{deleted}");
}

/// The cluster query, the plan and the canary from the CLI: `instances list --filter`, `deploy plan`,
/// `deploy start --wait` stopping at the canary (exit 7), `env status`, `deploy promote --wait`.
#[tokio::test]
async fn a_canary_is_planned_started_and_promoted_from_the_cli() {
    let blox = server().await;
    let url = blox.base_url().to_owned();

    let all = json(
        &url,
        &[
            "instances",
            "list",
            "--cluster",
            "demo-prod",
            "--filter",
            "attribute:ecs.instance-type exists",
        ],
    )
    .await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(12), "{all}");
    let none = json(
        &url,
        &[
            "instances",
            "list",
            "--filter",
            "attribute:gpu exists and agentConnected == true",
        ],
    )
    .await;
    assert_eq!(none["items"].as_array().map(Vec::len), Some(0), "{none}");
    let bad = fails(&url, &["instances", "list", "--filter", "agentVersion >="], 1).await;
    assert!(bad.contains("column"), "{bad}");

    cli(
        &url,
        &[
            "env",
            "create",
            "canaried",
            "--cluster",
            "demo-prod",
            "--task-definition",
            "log-router:1",
            "--min-healthy-percent",
            "50",
        ],
    )
    .await;
    cli(&url, &["deploy", "start", "canaried", "--wait"]).await;
    cli(
        &url,
        &[
            "env",
            "update",
            "canaried",
            "--task-definition",
            "log-router:2",
            "--canary-instances",
            "2",
        ],
    )
    .await;

    let plan = json(&url, &["deploy", "plan", "canaried"]).await;
    assert_eq!(plan["dryRun"], true, "{plan}");
    assert_eq!(plan["complete"], true, "{plan}");
    assert_eq!(
        plan["canaryInstances"].as_array().map(Vec::len),
        Some(2),
        "{plan}"
    );
    assert!(
        plan["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["action"] == "replace"),
        "{plan}"
    );
    let table = cli(&url, &["deploy", "plan", "canaried"]).await;
    assert!(table.contains("-- promotion of the canary --"), "{table}");
    assert_eq!(
        deployment_count(&url, "canaried").await,
        1,
        "the plan deployed nothing"
    );

    let waited = run(&url, &["deploy", "start", "canaried", "--wait"]).await;
    assert_eq!(waited.code, Some(7), "{}\n{}", waited.stdout, waited.stderr);
    assert!(
        waited.stdout.contains("blox deploy promote canaried"),
        "{}",
        waited.stdout
    );
    let id = nth_deployment(&url, "canaried", 2).await;
    let status = cli(&url, &["env", "status", "canaried"]).await;
    assert_eq!(
        row(&status, "2").map(|r| r[1].clone()).as_deref(),
        Some("AwaitingPromotion"),
        "{status}"
    );
    assert!(status.contains("Uncovered: 0"), "{status}");

    let promoted = cli(&url, &["deploy", "promote", "canaried", &id, "--wait"]).await;
    assert!(promoted.contains("completed"), "{promoted}");
    let described = json(&url, &["deploy", "describe", "canaried", &id]).await;
    assert_eq!(described["deployment"]["status"], "completed", "{described}");
    assert!(described["deployment"]["promotedAt"].is_string(), "{described}");
    let again = fails(&url, &["deploy", "promote", "canaried", &id], 1).await;
    assert!(again.contains("NotAwaitingPromotion"), "{again}");
}
