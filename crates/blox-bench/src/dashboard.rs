//! The dashboard during a rollout: `blox server` as its own process on the simulator (one cluster of
//! `instances`), `browsers` clients following `/ui/api/events` as the environment page does, while
//! the environment's first deployment starts a daemon on every instance. On each event naming the
//! environment a client fetches what the page draws (`/ui/api/environments/NAME`: the rollout grid,
//! the environment, its deployments and revisions); its latency runs from the moment the server's view applied the
//! change (the event's `atMs`, the server's wall clock) to the last of those answers in hand (the
//! client's wall clock, on the same machine). What the browser then spends drawing is measured by
//! the dashboard's browser test (`crates/blox/tests/dashboard.rs`), not here.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::process::{Server, client, cpu_seconds};
use super::report::Goal;
use super::{Bench, histogram, now};

const ENVIRONMENT: &str = "agents";
const CLUSTER: &str = "scale-00";
/// Goal of the event → page data p99.
const LATENCY_GOAL_MS: f64 = 250.0;

pub(crate) async fn run(bench: &mut Bench, dir: &Path, quick: bool) -> Result<()> {
    let (instances, browsers) = if quick { (500, 20) } else { (5_000, 100) };
    let w = format!("dashboard ({browsers} browsers on an environment page, {instances}-instance rollout)");
    eprintln!("{w}");
    let store = format!("log:{}", dir.join("dashboard").display());
    let instances_flag = instances.to_string();
    let server = Server::start_with(
        &store,
        &[
            "--ecs",
            "sim",
            "--sim-scenario",
            "scale",
            "--sim-clusters",
            "1",
            "--sim-instances",
            &instances_flag,
            "--sim-tasks",
            "0",
            "--sim-churn",
            "none",
            // ECS's rate limits would make the rollout minutes long and the load on the page thin:
            // off, so that the changes come as fast as the executor and the simulator make them.
            "--sim-throttle",
            "launch=off,modify=off,describe=off,list=off",
            "--scheduler-calls-per-second",
            "1000",
            "--max-streams",
            "1024",
        ],
        &dir.join("dashboard.log"),
        "/readyz",
    )
    .await?;
    let base = server.address.clone();
    let http = client()?;
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let response = http
                .get(&url)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            ensure!(response.status().is_success(), "GET {url}: {}", response.status());
            response
                .json::<Value>()
                .await
                .with_context(|| format!("GET {url}: JSON"))
        }
    };
    super::scheduler::wait_for(
        "the cluster's instances are in view",
        Duration::from_secs(120),
        || {
            let grid = get(format!("/ui/api/clusters/{CLUSTER}"));
            async move {
                Ok(grid
                    .await
                    .is_ok_and(|g| g["total"].as_u64() == Some(instances as u64)))
            }
        },
    )
    .await?;

    // The browsers: each follows the events and draws (fetches) after those naming the environment.
    let latencies = Arc::new(Mutex::new(histogram()));
    let mut pages = Vec::with_capacity(browsers);
    for _ in 0..browsers {
        pages.push(Page::open(&http, &base, latencies.clone()).await?);
    }
    let cpu_before = cpu_seconds(server.pid()?)?;
    let started = now();
    let post = |path: String, body: Option<Value>| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let mut request = http.post(&url);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.with_context(|| format!("POST {url}"))?;
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            ensure!(status.is_success(), "POST {url}: {status}: {body}");
            Ok::<_, anyhow::Error>(body)
        }
    };
    post(
        format!("/v1/{CLUSTER}/environments"),
        Some(json!({"environmentName": ENVIRONMENT, "taskDefinition": "sidecar"})),
    )
    .await?;
    post(
        format!("/v1/{CLUSTER}/environments/{ENVIRONMENT}/deployments?revisionId=1"),
        None,
    )
    .await?;
    super::scheduler::wait_for("the rollout completes", Duration::from_secs(600), || {
        let page = get(format!("/ui/api/environments/{ENVIRONMENT}"));
        async move {
            let rollout = page.await?["rollout"].take();
            if rollout["deploymentStatus"] == "failed" {
                bail!("the rollout failed: {rollout}");
            }
            Ok(rollout["deploymentStatus"] == "completed")
        }
    })
    .await?;
    let rollout_secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.pid()?)? - cpu_before;
    // Every page has drawn the completed rollout.
    for page in &pages {
        super::scheduler::wait_for(
            "every page shows the completed rollout",
            Duration::from_secs(30),
            || {
                let done = page.saw_completed();
                async move { Ok(done) }
            },
        )
        .await?;
    }
    let (events, renders) = pages.iter().fold((0, 0), |(e, r), p| {
        let (events, renders) = p.counts();
        (e + events, r + renders)
    });
    drop(pages);
    server.stop().await;

    let latencies = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ms = |p: f64| super::percentile_ms(&latencies, p);
    let report = &mut bench.report;
    report.add(
        &w,
        "rollout (deployment write → completed)",
        rollout_secs,
        "s",
        None,
    );
    report.add(
        &w,
        "events received per browser",
        events as f64 / browsers as f64,
        "events",
        None,
    );
    report.add(
        &w,
        "page refreshes per browser",
        renders as f64 / browsers as f64,
        "refreshes",
        None,
    );
    report.add(&w, "event → page data p50", ms(50.0), "ms", None);
    report.add(
        &w,
        "event → page data p99",
        ms(99.0),
        "ms",
        Some(Goal::AtMost(LATENCY_GOAL_MS)),
    );
    report.add(
        &w,
        "server CPU during the rollout",
        100.0 * cpu / rollout_secs.max(1e-9),
        "% of a core",
        None,
    );
    Ok(())
}

/// One browser on the environment page.
struct Page {
    state: Arc<Mutex<PageState>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct PageState {
    events: u64,
    renders: u64,
    completed: bool,
}

impl Drop for Page {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Page {
    async fn open(
        http: &reqwest::Client,
        base: &str,
        latencies: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    ) -> Result<Page> {
        let response = http
            .get(format!("{base}/ui/api/events"))
            .send()
            .await
            .context("opening the event stream")?;
        ensure!(
            response.status().is_success(),
            "the event stream: {}",
            response.status()
        );
        let state = Arc::new(Mutex::new(PageState::default()));
        // The reader hands the draw loop the `atMs` of every event naming the environment.
        let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
        let reader_state = state.clone();
        let reader = tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut buffer = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) else {
                        continue;
                    };
                    if !block.starts_with("event: change") {
                        continue;
                    }
                    let Ok(change) = serde_json::from_str::<Value>(data.trim()) else {
                        continue;
                    };
                    reader_state.lock().unwrap_or_else(|p| p.into_inner()).events += 1;
                    // What the page redraws on: its environment, or an instance of its cluster.
                    let has = |list: &str, wanted: &str| {
                        change[list]
                            .as_array()
                            .is_some_and(|l| l.iter().any(|n| n == wanted))
                    };
                    let wanted = has("environments", ENVIRONMENT)
                        || (has("clusters", CLUSTER) && has("kinds", "instance"));
                    if (wanted || change["reload"] == true)
                        && tx.send(change["atMs"].as_u64().unwrap_or(0)).is_err()
                    {
                        return;
                    }
                }
            }
        });
        let http = http.clone();
        let base = base.to_owned();
        let draw_state = state.clone();
        let drawer = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // What arrived meanwhile is drawn by the same refresh; its oldest event is timed.
                let mut oldest = first;
                while let Ok(at) = rx.try_recv() {
                    oldest = oldest.min(at);
                }
                let Ok(status) = draw(&http, &base).await else {
                    continue;
                };
                let latency_ms = blox_server::clock::now_unix_ms().saturating_sub(oldest);
                latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .saturating_record(latency_ms.max(1) * 1_000);
                let mut state = draw_state.lock().unwrap_or_else(|p| p.into_inner());
                state.renders += 1;
                state.completed |= status == "completed";
            }
        });
        Ok(Page {
            state,
            tasks: vec![reader, drawer],
        })
    }

    fn saw_completed(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).completed
    }

    fn counts(&self) -> (u64, u64) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (state.events, state.renders)
    }
}

/// What the environment page fetches to draw (one answer holds it all); the deployment's status.
/// Only that is parsed: the benchmark stands for browsers on other machines, and must not take the
/// server's CPU to build what it does not read.
async fn draw(http: &reqwest::Client, base: &str) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Page {
        rollout: Rollout,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Rollout {
        #[serde(default)]
        deployment_status: String,
    }
    let url = format!("{base}/ui/api/environments/{ENVIRONMENT}");
    let response = http.get(&url).send().await?;
    ensure!(response.status().is_success(), "{url}: {}", response.status());
    let body = response.bytes().await?;
    let page: Page = serde_json::from_slice(&body)?;
    Ok(page.rollout.deployment_status)
}
