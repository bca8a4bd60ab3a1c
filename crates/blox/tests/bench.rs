//! `blox bench --quick` end to end (including the `blox server` process it starts), at a size that runs
//! in seconds in a debug build. Only the shape of the report is checked: every figure is there, finite
//! and positive. Timings are never asserted, since they depend on the machine.

use std::process::Command;

use serde_json::Value;

/// Every figure the report must hold.
const FIGURES: &[&str] = &[
    "entities loaded",
    "load time (ingest commits)",
    "load rate",
    "mean event size",
    "apply throughput (Ingestor::commit)",
    "batch commit p50",
    "batch commit p99",
    "bytes written to the store file per event",
    "parse + documents only (1 thread)",
    "Store::apply only (redb)",
    "Store::apply only (log store)",
    "body compression only (PreparedWrite::new, 1 thread)",
    "Store::apply_prepared only (log store)",
    "open after that crash (checkpoint + replay)",
    "GET /v1/tasks/{cluster}/{arn} p50",
    "GET /v1/tasks/{cluster}/{arn} p99",
    "GET throughput",
    "tasks per cluster listed",
    "GET /v1/tasks?cluster=X p50",
    "GET /v1/tasks?cluster=X p99",
    "GET /v1/tasks?cluster=X p99, body streamed by the client",
    "GET of one prepared answer from memory p50",
    "GET of one prepared answer from memory p99",
    "GET of one prepared answer from memory p99, body streamed by the client",
    "Store::list of a cluster alone (c=1) p50",
    "Store::list_spliced of a cluster alone (c=1) p50",
    "Store::list_spliced of a cluster alone (c=1) p50, a buffer per page",
    "memcpy of the listing's body p50",
    "Store::list of a cluster alone (c=1) p50, store reopened (values in key order)",
    "Store::list_spliced of a cluster alone (c=1) p50, store reopened (values in key order)",
    "Store::list_spliced of a cluster alone (c=1) p50, a buffer per page, store reopened (values in key order)",
    "instances matched by the filter",
    "GET /v1/instances?filter=Q p50",
    "GET /v1/instances?filter=Q p99",
    "stream clients",
    "changes committed (one per commit)",
    "single-change commit p50",
    "commit → client line p50",
    "commit → client line p99",
    "GET /v1/tasks/{cluster}/{arn} p99, bare routes",
    "GET /v1/tasks/{cluster}/{arn} p99, tokens + limits",
    "GET p99, tokens + limits ÷ bare",
    // --stream-clients 20 below: half on each server.
    "commit → client line p99, 10 clients of the bare routes",
    "commit → client line p99, 10 clients of tokens + limits",
    "stream fan-out p99, tokens + limits ÷ bare",
    "ingest transaction p50 (a full batch each)",
    "GET /v1/tasks/{cluster}/{arn} p50, while the ingest commits",
    "GET /v1/tasks/{cluster}/{arn} p99, while the ingest commits",
    "GET /v1/tasks/{cluster}/{arn} max, while the ingest commits",
    "GET /v1/tasks/{cluster}/{arn} answered per second, while the ingest commits",
    "GET /healthz p99 (one every 2 ms), while the ingest commits",
    "GET /healthz max (one every 2 ms), while the ingest commits",
    "instances matched",
    "three-clause query, per instance",
    "store file size",
    "spawn → address printed",
    "spawn → first GET answered",
    "RSS after start",
    "list every cluster + instances + all tasks",
    "RSS after listing everything",
    "peak RSS (VmHWM)",
    "GET /v1/tasks?cluster=X p50 (c=4)",
    "GET /v1/tasks?cluster=X p99 (c=4)",
    "GET /v1/tasks?cluster=X p99 (c=4), body streamed by the client",
    "spawn → first GET answered, after SIGKILL",
    "RSS after start, after SIGKILL",
    // The simulator scenarios.
    "simulated instances",
    "simulated tasks",
    "account built (Scenario::scale)",
    "DescribeTasks by 100: Ecs under the read lock",
    "DescribeTasks by 100: Ecs under the read lock, 1 thread",
    "DescribeTasks by 100: EcsReader (tasks cloned out)",
    "entities upserted",
    "list calls answered",
    "list pagination floor",
    "describe calls answered",
    "describe pagination floor",
    "reconcile pass time",
    "throttle floor time (slower family)",
    "pass time / throttle floor time",
    "driver actions",
    "events emitted",
    "events committed",
    // The daemon scheduler's scenarios.
    "instances joined",
    "instance event committed → StartTask p50",
    "instance event committed → StartTask p99",
    "instance event committed → StartTask max",
    "StartTask calls answered",
    "deployment write → all RUNNING",
    "deployment write → deployment COMPLETED",
    "StartTask throttle floor + start delays",
    "all RUNNING / floor",
    "StopTask calls",
    "deployment write → COMPLETED",
    "StartTask/StopTask throttle floor + delays",
    "COMPLETED / floor",
    "fewest instances with a healthy daemon",
    "scheduler documents written per instance",
    "all documents written per instance (tasks included)",
    "tasks in view",
    "plan() of every environment p50",
    "plan() of every environment p99",
    "view loaded from the redb store",
    "Scheduler::pass (view and store included) p50",
    "Scheduler::pass (view and store included) p99",
    "daemon::preview (dry run) p50",
    "daemon::preview (dry run) p99",
    "instances replaced",
    "batches planned",
    "estimated rollout time (estimated_seconds)",
    // The dashboard's.
    "rollout (deployment write → completed)",
    "events received per browser",
    "page refreshes per browser",
    "event → page data p50",
    "event → page data p99",
    "server CPU during the rollout",
];

/// Figures that may well be zero on a run this small (nothing throttled, no lag left, a flat or
/// falling lag), so only their presence and finiteness are checked.
const MAY_BE_ZERO: &[&str] = &[
    "log replayed after a crash at the storm's end",
    "list calls throttled (retried)",
    "describe calls throttled (retried)",
    "time list calls were answered",
    "time describe calls were answered",
    "time both were answered",
    "lag at the end (emitted − deleted)",
    "max lag",
    "max queue depth (visible + in flight)",
    "lag slope over the last half",
    "emission → delete p50",
    "emission → delete p99",
    "emission → delete max",
    "messages per commit (mean)",
    "queue drained after churn stopped",
    "StartTask calls throttled",
    // Zero for TerminateThenReplace, which never runs two tasks on an instance.
    "most instances carrying two tasks",
    // CPU time is counted in ticks of 10 ms: the quick run's few listings may take less.
    "GET /v1/tasks?cluster=X CPU per listing, client and server",
    "GET /v1/tasks?cluster=X cores busy",
    "GET of one prepared answer from memory CPU per listing, client and server",
    "GET of one prepared answer from memory cores busy",
    "GET /v1/tasks?cluster=X CPU per listing, server process (c=4)",
    "GET /v1/tasks?cluster=X CPU per listing, client process (c=4)",
    "GET /v1/tasks?cluster=X CPU per listing, client and server (c=4)",
    "GET /v1/tasks?cluster=X cores busy (c=4)",
];

#[test]
fn quick_bench_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("figures.json");
    let output = Command::new(env!("CARGO_BIN_EXE_blox"))
        .args([
            "bench",
            "--quick",
            "--tasks",
            "2000",
            "--instances",
            "200",
            "--clusters",
            "4",
        ])
        .args(["--events", "5000", "--stream-clients", "20"])
        // Short simulator phases, and a throttle small enough that the reconcile pass (29 list and
        // 24 describe calls at these sizes) still has a floor time to be compared with.
        .args(["--describe-duration", "200ms", "--churn-duration", "1s"])
        .args(["--sim-throttle", "list=5/100,describe=5/100", "--dir"])
        .arg(dir.path().join("store"))
        .arg("--json-out")
        .arg(&json)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "blox bench failed:\n{stderr}");
    let table = String::from_utf8(output.stdout).unwrap();

    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report["machine"]["cpus"].as_u64().unwrap() > 0);
    assert!(!report["machine"]["cpu_model"].as_str().unwrap().is_empty());
    assert_eq!(report["parameters"]["tasks"], 2000);
    let figures = report["figures"].as_array().unwrap();
    let names = FIGURES.iter().map(|n| (n, true));
    for (name, positive) in names.chain(MAY_BE_ZERO.iter().map(|n| (n, false))) {
        let row = figures
            .iter()
            .find(|row| row["figure"] == *name)
            .unwrap_or_else(|| panic!("no figure {name:?} in {figures:#?}"));
        let value = row["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name} is not a number: {row}"));
        assert!(
            value.is_finite() && (!positive || value > 0.0),
            "{name} = {value}"
        );
        assert!(!row["unit"].as_str().unwrap().is_empty());
        assert!(table.contains(name), "the table lacks {name:?}:\n{table}");
    }
    // The simulator's account is the run's: 200 instances, 2,000 tasks, all of them reconciled.
    let value = |name: &str| {
        figures.iter().find(|row| row["figure"] == name).unwrap()["value"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(value("simulated instances"), 200.0);
    assert_eq!(value("simulated tasks"), 2000.0);
    assert_eq!(value("entities upserted"), 2200.0);
    assert_eq!(value("list pagination floor"), 29.0);
    assert_eq!(value("describe pagination floor"), 24.0);
    assert_eq!(report["parameters"]["describe_threads"], 2);
    // The scheduler's `--quick` sizes: 20 instances join, a first deployment onto 200 instances
    // (ten per StartTask) and two rolling updates of them (200 StopTask calls each), planning over
    // 500 instances × 20 environments.
    assert_eq!(value("instances joined"), 20.0);
    assert_eq!(value("StartTask calls answered"), 20.0);
    assert_eq!(value("StopTask calls"), 200.0);
    assert_eq!(value("tasks in view"), 10_000.0);
    let row = |name: &str| figures.iter().find(|row| row["figure"] == name).unwrap();
    for name in [
        "instance event committed → StartTask p99",
        "all RUNNING / floor",
        "COMPLETED / floor",
        "Scheduler::pass (view and store included) p99",
        "GET /v1/instances?filter=Q p99",
        "daemon::preview (dry run) p99",
    ] {
        assert!(row(name)["goal_met"].is_boolean(), "{name}");
    }
    // 200 instances: a third in us-east-1a, three in five of those without batch tasks. Both
    // deployment plans replace all 500 of `--quick`'s instances.
    assert_eq!(value("instances matched by the filter"), 40.0);
    for method in [
        "TerminateThenReplace minHealthyPercent 90",
        "ReplaceThenTerminate maxOverPercent 10",
    ] {
        let replaced = figures
            .iter()
            .find(|row| {
                row["workload"] == format!("deployment plan {method} (500 instances)")
                    && row["figure"] == "instances replaced"
            })
            .unwrap_or_else(|| panic!("no deployment plan {method}"));
        assert_eq!(replaced["value"], 500.0, "{method}");
    }
    // Safety is no matter of the machine: never below the floor, never over the surge.
    for name in [
        "fewest instances with a healthy daemon",
        "most instances carrying two tasks",
        "scheduler documents written per instance",
    ] {
        assert_eq!(row(name)["goal_met"], true, "{name}: {}", row(name));
    }
    // Figures with a goal say whether they meet it; the verdict itself depends on the machine.
    assert!(figures.iter().any(|row| row["goal_met"].is_boolean()));
    assert_eq!(
        figures
            .iter()
            .find(|row| row["figure"] == "tasks per cluster listed")
            .unwrap()["value"],
        500.0
    );
}
