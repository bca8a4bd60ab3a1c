//! `blox up` as an operator runs it: the binary with the simulator and the embedded store, served
//! through the API and the CLI within seconds, stopped with Ctrl-C, and started again on the same
//! data directory with its state kept. Also `blox server --ecs sim` and its flag checks.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use blox_api::{InstanceQuery, TaskQuery};
use blox_client::Client;
use blox_testkit::{BloxProcess, wait_until};

const BLOX: &str = env!("CARGO_BIN_EXE_blox");
const DEADLINE: Duration = Duration::from_secs(20);

fn cli(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new(BLOX)
        .args(args)
        .arg("--endpoint")
        .arg(endpoint)
        .output()
        .expect("blox runs");
    assert!(
        out.status.success(),
        "blox {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

async fn instance_arns(client: &Client) -> BTreeSet<String> {
    client
        .list_instances(&InstanceQuery::default())
        .await
        .map(|page| {
            page.items
                .into_iter()
                .map(|i| i.entity.container_instance_arn)
                .collect()
        })
        .unwrap_or_default()
}

async fn up(data_dir: &std::path::Path) -> BloxProcess {
    let dir = data_dir.to_str().expect("UTF-8 path");
    BloxProcess::start(BLOX, ["up", "--listen", "127.0.0.1:0", "--data-dir", dir], &[])
        .await
        .expect("blox up starts")
}

#[tokio::test]
async fn up_serves_a_simulated_account_stops_on_ctrl_c_and_keeps_its_state() {
    let data = tempfile::tempdir().unwrap();
    let mut blox = up(data.path()).await;
    let client = Client::new(blox.base_url());

    // The demo account: 21 instances over three clusters, tasks running on them.
    wait_until("the demo account is served", DEADLINE, || async {
        instance_arns(&client).await.len() >= 20
            && client
                .list_tasks(&TaskQuery {
                    status: Some("running".into()),
                    ..TaskQuery::default()
                })
                .await
                .is_ok_and(|t| t.items.len() >= 20)
    })
    .await;
    let listed = cli(blox.base_url(), &["instances", "list"]);
    for cluster in ["demo-prod", "demo-staging", "demo-batch"] {
        assert!(listed.contains(cluster), "{cluster} in:\n{listed}");
    }
    let tasks = cli(blox.base_url(), &["tasks", "list", "--cluster", "demo-prod"]);
    assert!(tasks.contains("RUNNING"), "{tasks}");
    let json: serde_json::Value = serde_json::from_str(&cli(
        blox.base_url(),
        &["tasks", "list", "--cluster", "demo-prod", "--json"],
    ))
    .expect("JSON");
    let task = &json["items"][0]["entity"];
    assert!(task["version"].as_u64().unwrap() >= 1, "ECS versions: {task}");
    assert!(
        task["taskARN"].as_str().unwrap().contains(":task/demo-prod/"),
        "{task}"
    );

    let before = instance_arns(&client).await;
    let status = blox.interrupt(DEADLINE).await.unwrap();
    assert!(status.success(), "Ctrl-C exits cleanly: {status:?}");
    assert!(data.path().join("simulator.json").exists());
    assert!(data.path().join("store").join("checkpoint").exists());

    // Again, on the same directory: the same account carries on.
    let blox = up(data.path()).await;
    let client = Client::new(blox.base_url());
    // Served from the store at once, before any event or reconcile pass of this run.
    let served_at_start = instance_arns(&client).await;
    assert!(!served_at_start.is_empty());
    wait_until("blox is ready", DEADLINE, || async {
        client.readiness().await.is_ok_and(|r| r.ready)
    })
    .await;
    let after = instance_arns(&client).await;
    let kept = before.intersection(&after).count();
    // Light churn may replace an instance or two between the two listings; the rest are the same.
    assert!(
        kept + 3 >= before.len(),
        "{kept} of {} instances kept across the restart",
        before.len()
    );
}

#[tokio::test]
async fn server_runs_on_the_simulator_with_its_options() {
    let data = tempfile::tempdir().unwrap();
    let store = format!("redb:{}", data.path().join("blox.redb").display());
    let blox = BloxProcess::start(
        BLOX,
        [
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &store,
            "--ecs",
            "sim",
            "--sim-scenario",
            "scale",
            "--sim-clusters",
            "2",
            "--sim-instances",
            "40",
            "--sim-tasks",
            "200",
            "--sim-churn",
            "none",
            "--sim-throttle",
            "describe=off,list=off",
        ],
        &[],
    )
    .await
    .expect("blox server --ecs sim starts");
    let client = Client::new(blox.base_url());
    wait_until("the scale account is served", DEADLINE, || async {
        instance_arns(&client).await.len() == 40
            && client
                .list_tasks(&TaskQuery::default())
                .await
                .is_ok_and(|t| t.items.len() == 200)
    })
    .await;
}

#[test]
fn simulator_flags_are_checked() {
    let check = |args: &[&str], fragment: &str| {
        let out = Command::new(BLOX)
            .args(["server", "--listen", "127.0.0.1:0", "--store", "memory", "--ecs"])
            .args(args)
            .output()
            .expect("blox runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains(fragment), "{args:?}: {stderr}");
    };
    check(&["mars"], "--ecs must be aws or sim");
    check(&["sim", "--queue", "q"], "--queue cannot be used with --ecs sim");
    check(&["sim", "--sim-scenario", "huge"], "--sim-scenario must be");
    check(&["sim", "--sim-churn", "lots"], "--sim-churn must be");
    check(&["sim", "--sim-faults", "drop=2"], "not a probability");
    check(&["sim", "--sim-throttle", "start=1/1"], "unknown API family");
    check(
        &["sim", "--sim-start-failure", "1.5"],
        "--sim-start-failure must be",
    );
    check(&["sim", "--sim-lifecycle", "running=1s"], "unknown step");
    check(
        &["sim", "--scheduler-calls-per-second", "0"],
        "--scheduler-calls-per-second must be",
    );
}

/// `--version`, which Blox v0.3's services took, prints the version and exits, also after `server`.
#[test]
fn version_is_printed_by_the_binary_and_its_server() {
    for args in [&["--version"][..], &["server", "--version"]] {
        let out = Command::new(BLOX).args(args).output().expect("blox runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(env!("CARGO_PKG_VERSION")),
            "{args:?} printed {stdout:?}"
        );
    }
}
