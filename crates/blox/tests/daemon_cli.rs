//! `blox env` and `blox deploy` as an operator runs them, against `blox server --ecs sim` on the demo
//! account: create, list and get an environment, deploy it with `--wait` until it completes, and
//! delete it with its tasks.

use std::time::Duration;

use blox_testkit::{BloxProcess, wait_until};

const BLOX: &str = env!("CARGO_BIN_EXE_blox");
const DEADLINE: Duration = Duration::from_secs(60);
const CLUSTER: &str = "demo-staging";

/// Runs the CLI with `--endpoint`; returns (success, stdout, stderr).
async fn run(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let child = tokio::process::Command::new(BLOX)
        .args(args)
        .arg("--endpoint")
        .arg(endpoint)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, child)
        .await
        .unwrap_or_else(|_| panic!("blox {args:?} did not finish within {DEADLINE:?}"))
        .expect("blox runs");
    (
        out.status.success(),
        String::from_utf8(out.stdout).expect("UTF-8"),
        String::from_utf8(out.stderr).expect("UTF-8"),
    )
}

async fn cli(endpoint: &str, args: &[&str]) -> String {
    let (ok, stdout, stderr) = run(endpoint, args).await;
    assert!(ok, "blox {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

async fn json(endpoint: &str, args: &[&str]) -> serde_json::Value {
    let mut with = args.to_vec();
    with.push("--json");
    let out = cli(endpoint, &with).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("blox {args:?}: {e}:\n{out}"))
}

#[tokio::test]
async fn env_and_deploy_commands_run_a_daemon_and_remove_it() {
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
    let url = blox.base_url().to_owned();

    let created = cli(
        &url,
        &[
            "env",
            "create",
            "agents",
            "--cluster",
            CLUSTER,
            "--task-definition",
            "metrics-agent",
        ],
    )
    .await;
    assert!(
        created.contains("agents") && created.contains("healthy"),
        "{created}"
    );
    let listed = cli(&url, &["env", "list", "--cluster", CLUSTER]).await;
    assert!(listed.lines().any(|l| l.starts_with("agents")), "{listed}");
    let got = json(&url, &["env", "get", "agents"]).await;
    assert_eq!(
        (
            got["name"].as_str(),
            got["status"].as_str(),
            got["revision"].as_u64()
        ),
        (Some("agents"), Some("active"), Some(1))
    );
    assert!(got["taskDefinition"].as_str().unwrap().contains("metrics-agent"));

    let waited = cli(&url, &["deploy", "start", "agents", "--wait"]).await;
    assert!(waited.contains("completed: running "), "{waited}");
    let deployments = json(&url, &["deploy", "list", "agents"]).await;
    let deployment = &deployments["items"][0];
    assert_eq!(deployment["status"], "completed", "{deployments}");
    let counts = &deployment["counts"];
    assert!(counts["desired"].as_u64().unwrap() > 0, "{counts}");
    assert_eq!(counts["running"], counts["desired"], "{counts}");
    let id = deployment["id"].as_str().unwrap();
    let one = cli(&url, &["deploy", "get", "agents", id]).await;
    assert!(one.contains(id) && one.contains("completed"), "{one}");

    // The same token again is refused: the CLI fails with the API's message.
    let token = got["deploymentToken"].as_str().unwrap();
    let (ok, _, stderr) = run(&url, &["deploy", "start", "agents", "--token", token]).await;
    assert!(!ok && stderr.contains("DeploymentTokenUsed"), "{stderr}");

    let deleted = cli(&url, &["env", "delete", "agents", "--terminate-tasks"]).await;
    assert!(deleted.contains("being stopped"), "{deleted}");
    wait_until("the environment is removed", DEADLINE, || async {
        let (ok, _, stderr) = run(&url, &["env", "get", "agents"]).await;
        !ok && stderr.contains("EnvironmentNotFound")
    })
    .await;
    let client = blox_client::Client::new(&url);
    wait_until("the daemons are stopped", DEADLINE, || async {
        client
            .list_tasks(&blox_api::TaskQuery {
                cluster: Some(CLUSTER.into()),
                status: Some("running".into()),
                started_by: Some(id.to_owned()),
                ..blox_api::TaskQuery::default()
            })
            .await
            .is_ok_and(|t| t.items.is_empty())
    })
    .await;
}
