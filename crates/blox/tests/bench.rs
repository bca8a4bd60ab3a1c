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
    "GET /v1/tasks/{cluster}/{arn} p50",
    "GET /v1/tasks/{cluster}/{arn} p99",
    "GET throughput",
    "tasks per cluster listed",
    "GET /v1/tasks?cluster=X p50",
    "GET /v1/tasks?cluster=X p99",
    "Store::list of a cluster alone (c=1) p50",
    "stream clients",
    "changes committed (one per commit)",
    "single-change commit p50",
    "commit → client line p50",
    "commit → client line p99",
    "store file size",
    "spawn → address printed",
    "spawn → first GET answered",
    "RSS after start",
    "list every cluster + instances + all tasks",
    "RSS after listing everything",
    "peak RSS (VmHWM)",
    "spawn → first GET answered, after SIGKILL",
    "RSS after start, after SIGKILL",
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
        .args(["--events", "5000", "--stream-clients", "20", "--dir"])
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
    for name in FIGURES {
        let row = figures
            .iter()
            .find(|row| row["figure"] == *name)
            .unwrap_or_else(|| panic!("no figure {name:?} in {figures:#?}"));
        let value = row["value"].as_f64().unwrap();
        assert!(value.is_finite() && value > 0.0, "{name} = {value}");
        assert!(!row["unit"].as_str().unwrap().is_empty());
        assert!(table.contains(name), "the table lacks {name:?}:\n{table}");
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
