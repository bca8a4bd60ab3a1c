//! The API served in-process over the loaded store, as `blox server` serves it (`blox_server::router`
//! with API tokens, through `limits::serve_http` with its limits) on a loopback port: GET and list
//! latency through an HTTP client, and the fan-out of one change stream to many clients. Then what
//! that hardening costs: the same GETs and streams against the bare routes (`blox_server::routes`
//! through `axum::serve`, no token check, no limits) in the same run, interleaved.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use axum::Router;
use axum::body::Bytes;
use blox_aws::Message;
use blox_model::ClusterName;
use blox_server::auth::Tokens;
use blox_server::{AppState, Gates, IngestOptions, Ingestor, Limits, ReadinessState};
use blox_store::{Filter, Kind, PageRequest, Splice, Store};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::report::{Goal, Report};
use blox_aws::NoEvents;

use super::workload::Rng;
use super::{Bench, histogram, message, micros, now, percentile_ms, process};

/// How long the stream phase may take once the changes are sent, before it reports what it has.
const STREAM_DEADLINE: Duration = Duration::from_secs(120);
/// The hardened server's token file: a few tokens, as an operator would have; clients present the
/// last (the check compares with every digest either way).
const TOKEN_FILE: &str = "admin bench-admin-token-0123456789\n\
                          read bench-dashboard-token-0123456789\n\
                          read bench-reader-token-0123456789\n";
const READ_TOKEN: &str = "bench-reader-token-0123456789";
/// Rounds of the hardening comparison's GETs: the two servers alternate round by round, so that
/// the VM's drifts (other processes, frequency, the page cache) fall on both alike.
const OVERHEAD_ROUNDS: usize = 20;
/// How many times the GET workload's requests each server answers in the comparison.
const OVERHEAD_SAMPLES: usize = 5;
/// What the hardening may cost: its p99 at most this many times the bare routes' (issue 10).
const OVERHEAD_GOAL: f64 = 1.05;

/// One HTTP server over the benchmark's store.
struct Server {
    address: SocketAddr,
    /// Sent as `Authorization: Bearer` on every request.
    token: Option<&'static str>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    fn base(&self) -> String {
        format!("http://{}", self.address)
    }

    /// `blox server`'s router with the token file and limits, through `serve_http`.
    async fn hardened(mut state: AppState, limits: Limits, shutdown: CancellationToken) -> Result<Server> {
        state.auth = Some(Arc::new(Tokens::parse(TOKEN_FILE, Path::new("bench tokens"))?));
        state.gates = Gates::new(limits.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let router = blox_server::router(state);
        let task = tokio::spawn(async move {
            let listener = blox_server::limits::without_nagle(listener);
            blox_server::limits::serve_http(listener, router, &limits, shutdown).await
        });
        Ok(Server {
            address,
            token: Some(READ_TOKEN),
            task,
        })
    }

    /// The routes alone through `axum::serve`: what blox served before it had limits and tokens.
    async fn bare(state: AppState, shutdown: CancellationToken) -> Result<Server> {
        Self::plain(blox_server::routes(state), shutdown).await
    }

    /// `router` through `axum::serve` alone (no limits, no tokens), with Nagle off as `serve()` has it.
    async fn plain(router: Router, shutdown: CancellationToken) -> Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let task = tokio::spawn(async move {
            axum::serve(blox_server::limits::without_nagle(listener), router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        });
        Ok(Server {
            address,
            token: None,
            task,
        })
    }

    /// Answers every request with `body`, a listing of `items` entities, in as many chunks as the
    /// API's pages would make of it (sent as the API sends a listing: chunked, a chunk per page),
    /// and does nothing else.
    async fn prepared(body: Bytes, items: usize, shutdown: CancellationToken) -> Result<Server> {
        let pages = items.div_ceil(blox_server::api::UNBOUNDED_LIST_PAGE).max(1);
        let step = body.len().div_ceil(pages).max(1);
        let chunks: Vec<Bytes> = (0..body.len())
            .step_by(step)
            .map(|start| body.slice(start..(start + step).min(body.len())))
            .collect();
        let router = Router::new().fallback(move || {
            // Each chunk is a reference to the one body: nothing is copied per request.
            let chunks = chunks.clone().into_iter().map(Ok::<_, std::io::Error>);
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    axum::body::Body::from_stream(futures::stream::iter(chunks)),
                )
            }
        });
        Self::plain(router, shutdown).await
    }

    async fn stop(self, name: &str) {
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => tracing::warn!(server = name, error = %err, "the in-process server failed"),
            Ok(Err(err)) => tracing::warn!(server = name, error = %err, "the in-process server panicked"),
            Err(_) => tracing::warn!(server = name, "the in-process server did not stop within 30 s"),
        }
    }
}

/// `blox server`'s state over `store`, ready to serve.
async fn app_state(
    store: Arc<dyn Store>,
    metrics: PrometheusHandle,
    shutdown: &CancellationToken,
) -> Result<AppState> {
    let readiness = Arc::new(ReadinessState::default());
    readiness.ready_without_reconcile();
    let mut state = AppState::new(store, None, shutdown.clone()).await?;
    state.readiness = readiness;
    state.metrics = metrics;
    Ok(state)
}

pub(crate) async fn run(bench: &mut Bench, store: Arc<dyn Store>, metrics: PrometheusHandle) -> Result<()> {
    let shutdown = CancellationToken::new();
    let state = app_state(store.clone(), metrics, &shutdown).await?;
    // The server's own limits, as `blox server` has them, wide enough for the stream clients.
    let defaults = Limits::default();
    let limits = Limits {
        max_streams: defaults.max_streams.max(bench.params.stream_clients),
        max_connections: defaults.max_connections.max(bench.params.stream_clients + 64),
        ..defaults
    };
    let view = state.view.clone();
    let hardened = Server::hardened(state.clone(), limits, shutdown.clone()).await?;
    let bare = Server::bare(state, shutdown.clone()).await?;

    let outcome = async {
        get_latency(bench, &hardened).await?;
        list_latency(bench, &hardened).await?;
        store_list(bench, store.as_ref(), Layout::AfterStorm).await?;
        instance_filter(bench, &hardened, &view, store.as_ref()).await?;
        stream_fan_out(bench, &hardened, store.clone()).await?;
        hardening_cost(bench, &bare, &hardened, store).await
    }
    .await;

    shutdown.cancel();
    hardened.stop("hardened").await;
    bare.stop("bare").await;
    outcome
}

/// The backlog scenario ([`get_during_ingest`]) through `blox server`'s router over `store`. Run
/// last of all, since the backlog it commits stays in the store.
pub(crate) async fn backlog(
    bench: &mut Bench,
    store: Arc<dyn Store>,
    metrics: PrometheusHandle,
) -> Result<()> {
    let shutdown = CancellationToken::new();
    let state = app_state(store.clone(), metrics, &shutdown).await?;
    let server = Server::hardened(state, Limits::default(), shutdown.clone()).await?;
    let outcome = get_during_ingest(bench, &server, store).await;
    shutdown.cancel();
    server.stop("hardened").await;
    outcome
}

fn client(concurrency: usize, server: &Server) -> Result<reqwest::Client> {
    client_for(concurrency, server.token)
}

fn client_for(concurrency: usize, token: Option<&str>) -> Result<reqwest::Client> {
    let headers = match token {
        Some(token) => blox_client::bearer(token)?,
        None => reqwest::header::HeaderMap::new(),
    };
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .default_headers(headers)
        // Loopback round trips are what is measured: Nagle's delay would dominate them.
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")
}

/// How a client reads a response's body.
#[derive(Clone, Copy)]
pub(crate) enum Reading {
    /// Into one buffer (`Response::bytes`), as most clients do.
    Collected,
    /// Chunk by chunk as they arrive, each dropped once read: what the server and the connection
    /// cost without the client's copy of the whole body.
    Streamed,
}

/// Sends every URL with `concurrency` requests in flight, each worker taking the next URL when its
/// response is fully read. Returns the latencies (µs) and the body of the first response.
pub(crate) async fn load_urls(
    client: &reqwest::Client,
    urls: Arc<Vec<String>>,
    concurrency: usize,
) -> Result<(Histogram<u64>, Vec<u8>)> {
    load_urls_reading(client, urls, concurrency, Reading::Collected).await
}

/// [`load_urls`], reading each body as `reading` says.
async fn load_urls_reading(
    client: &reqwest::Client,
    urls: Arc<Vec<String>>,
    concurrency: usize,
    reading: Reading,
) -> Result<(Histogram<u64>, Vec<u8>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers = (0..concurrency.max(1)).map(|_| {
        let (client, urls, next) = (client.clone(), urls.clone(), next.clone());
        tokio::spawn(async move {
            let mut latencies = histogram();
            let mut first = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(url) = urls.get(i) else {
                    return Ok::<_, anyhow::Error>((latencies, first));
                };
                let started = now();
                let mut response = client.get(url).send().await?;
                let status = response.status();
                // Only the first body is kept (its items are counted).
                let kept = match reading {
                    Reading::Collected => {
                        let body = response.bytes().await?;
                        (i == 0).then(|| body.to_vec())
                    }
                    Reading::Streamed => {
                        let mut kept = (i == 0).then(Vec::new);
                        while let Some(chunk) = response.chunk().await? {
                            if let Some(kept) = &mut kept {
                                kept.extend_from_slice(&chunk);
                            }
                        }
                        kept
                    }
                };
                latencies.record(micros(started.elapsed()))?;
                ensure!(status.is_success(), "GET {url} answered {status}");
                if kept.is_some() {
                    first = kept;
                }
            }
        })
    });
    let mut total = histogram();
    let mut first_body = Vec::new();
    for worker in futures::future::join_all(workers).await {
        let (latencies, first) = worker.context("a request worker panicked")??;
        total.add(&latencies)?;
        if let Some(first) = first {
            first_body = first;
        }
    }
    Ok((total, first_body))
}

/// `GET /v1/tasks/{cluster}/{arn}` of a random task among the workload's first `tasks`, on `base`.
pub(crate) fn task_url(bench: &mut Bench, base: &str, tasks: u64) -> String {
    let task = bench.rng.below(tasks);
    let w = &bench.workload;
    format!(
        "{base}/v1/tasks/{}/{}",
        w.cluster_name(w.cluster_of_task(task)),
        w.task_arn(task)
    )
}

/// Latencies of `get_requests` GETs of random tasks among the first `tasks` on `base`, after a tenth
/// as many to warm up, and how long they took.
pub(crate) async fn task_gets(
    bench: &mut Bench,
    client: &reqwest::Client,
    base: &str,
    tasks: u64,
) -> Result<(Histogram<u64>, std::time::Duration)> {
    let concurrency = bench.params.get_concurrency;
    // Opens the connections and touches the code paths before anything is recorded.
    let warm_up: Vec<String> = (0..bench.params.get_requests / 10)
        .map(|_| task_url(bench, base, tasks))
        .collect();
    load_urls(client, Arc::new(warm_up), concurrency).await?;
    let urls: Vec<String> = (0..bench.params.get_requests)
        .map(|_| task_url(bench, base, tasks))
        .collect();
    let started = now();
    let (latencies, _) = load_urls(client, Arc::new(urls), concurrency).await?;
    Ok((latencies, started.elapsed()))
}

async fn get_latency(bench: &mut Bench, server: &Server) -> Result<()> {
    let concurrency = bench.params.get_concurrency;
    let base = server.base();
    let client = client(concurrency, server)?;
    let tasks = bench.params.tasks;
    let (latencies, elapsed) = task_gets(bench, &client, &base, tasks).await?;
    let w = &format!("get task (c={concurrency})");
    bench.report.add(
        w,
        "GET /v1/tasks/{cluster}/{arn} p50",
        percentile_ms(&latencies, 50.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        "GET /v1/tasks/{cluster}/{arn} p99",
        percentile_ms(&latencies, 99.0),
        "ms",
        Some(Goal::AtMost(1.0)),
    );
    bench.report.add(
        w,
        "GET throughput",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        "requests/s",
        None,
    );
    Ok(())
}

async fn list_latency(bench: &mut Bench, server: &Server) -> Result<()> {
    let concurrency = bench.params.list_concurrency;
    let client = client(concurrency, server)?;
    let listings = cluster_listings(bench, &client, &server.base(), None).await?;
    let w = &list_workload(bench);
    bench.report.add(
        w,
        "tasks per cluster listed",
        listings.items as f64,
        "tasks",
        None,
    );
    listings.report(&mut bench.report, w, LISTING, "", Some(Goal::AtMost(30.0)));
    prepared_listings(bench, concurrency, w, &client, &server.base()).await
}

/// The subject of the cluster listings' figures.
pub(crate) const LISTING: &str = "GET /v1/tasks?cluster=X";

/// The machine's floor under the cluster listing figures: one real answer, kept in memory and
/// served again for every request by a server that does nothing else, in the chunks the API's
/// pages make, read by the same client at the same concurrency. What remains between the two is
/// the server's own work (the store, rendering); this is the client's and the connection's.
async fn prepared_listings(
    bench: &mut Bench,
    concurrency: usize,
    w: &str,
    client: &reqwest::Client,
    base: &str,
) -> Result<()> {
    let cluster = bench.workload.cluster_name(0);
    let response = client
        .get(format!("{base}/v1/tasks?cluster={cluster}"))
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "listing {cluster} answered {}",
        response.status()
    );
    let body = response.bytes().await?;
    let answered = items(&body);
    let shutdown = CancellationToken::new();
    let server = Server::prepared(body, answered, shutdown.clone()).await?;
    let floor = client_for(concurrency, None)?;
    let url = format!("{}/v1/tasks?cluster={cluster}", server.base());
    let outcome = read_listings(
        &floor,
        Arc::new(vec![url.clone(); bench.params.list_requests]),
        vec![url; concurrency],
        concurrency,
        answered,
        None,
    )
    .await;
    shutdown.cancel();
    server.stop("prepared").await;
    outcome?.report(
        &mut bench.report,
        w,
        "GET of one prepared answer from memory",
        "",
        None,
    );
    Ok(())
}

/// The latencies of whole listings of one cluster's tasks.
pub(crate) struct ClusterListings {
    /// Each body read into one buffer, as most clients do.
    pub(crate) collected: Histogram<u64>,
    /// The same requests again, the client dropping each chunk once read instead of collecting the
    /// 12.5 MB: what the listing costs without the client's own copy of the body.
    pub(crate) streamed: Histogram<u64>,
    /// The tasks in one answer.
    pub(crate) items: usize,
    /// The CPU the collected listings cost.
    pub(crate) cpu: ListingCpu,
}

/// The CPU time (user and system, all threads, the kernel's share of the socket work included) that
/// the collected listings cost, with the wall time they took. At concurrency 4 on two cores shared by
/// client and server, a listing's latency is bound by its CPU: once the cores are busy, the mean is
/// about `concurrency × CPU per listing ÷ cores`, whatever the server does with the rest.
pub(crate) struct ListingCpu {
    /// This process: the client, and the server too when it runs in-process.
    this_process: f64,
    /// `blox server`'s process, when the server runs in its own.
    server_process: Option<f64>,
    wall: Duration,
    listings: usize,
}

impl ListingCpu {
    /// Measures `listings` while they run, this process's CPU and `server`'s (a pid) if given.
    async fn measure<T>(
        server: Option<u32>,
        listings: impl std::future::Future<Output = Result<(Histogram<u64>, T)>>,
    ) -> Result<(Histogram<u64>, T, ListingCpu)> {
        let this = std::process::id();
        let cpu = |pid: Option<u32>| pid.map(process::cpu_seconds).transpose();
        let (this_before, server_before) = (process::cpu_seconds(this)?, cpu(server)?);
        let started = now();
        let (latencies, first) = listings.await?;
        let wall = started.elapsed();
        let server_process = cpu(server)?
            .zip(server_before)
            .map(|(after, before)| after - before);
        let cpu = ListingCpu {
            this_process: process::cpu_seconds(this)? - this_before,
            server_process,
            wall,
            listings: latencies.len() as usize,
        };
        Ok((latencies, first, cpu))
    }

    /// Milliseconds of CPU per listing.
    fn per_listing(&self, seconds: f64) -> f64 {
        seconds * 1000.0 / self.listings.max(1) as f64
    }
}

impl ClusterListings {
    /// Adds the figures as `workload`'s, each named `subject`, its percentile, then `qualifier` (the
    /// in-process scenario's names have none, so that they compare with earlier versions), the
    /// collected p99 held to `goal`.
    pub(crate) fn report(
        &self,
        report: &mut Report,
        workload: &str,
        subject: &str,
        qualifier: &str,
        goal: Option<Goal>,
    ) {
        let name = |percentile: &str| format!("{subject} {percentile}{qualifier}");
        let collected = |percentile| percentile_ms(&self.collected, percentile);
        report.add(workload, &name("p50"), collected(50.0), "ms", None);
        report.add(workload, &name("p99"), collected(99.0), "ms", goal);
        report.add(
            workload,
            &format!("{}, body streamed by the client", name("p99")),
            percentile_ms(&self.streamed, 99.0),
            "ms",
            None,
        );
        let cpu = &self.cpu;
        let all = cpu.this_process + cpu.server_process.unwrap_or(0.0);
        let cpu_name = |what: &str| format!("{subject} CPU per listing, {what}{qualifier}");
        if let Some(server) = cpu.server_process {
            let parts = [("server process", server), ("client process", cpu.this_process)];
            for (what, seconds) in parts {
                report.add(workload, &cpu_name(what), cpu.per_listing(seconds), "ms", None);
            }
        }
        report.add(
            workload,
            &cpu_name("client and server"),
            cpu.per_listing(all),
            "ms",
            None,
        );
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        report.add(
            workload,
            &format!("{subject} cores busy{qualifier}"),
            100.0 * all / (cpu.wall.as_secs_f64() * cores).max(1e-9),
            "%",
            None,
        );
    }
}

/// `list_requests` listings `GET /v1/tasks?cluster=X` of random clusters on `base`,
/// `list_concurrency` at a time, read both ways (see [`ClusterListings`]), after one per connection
/// to warm up.
pub(crate) async fn cluster_listings(
    bench: &mut Bench,
    client: &reqwest::Client,
    base: &str,
    server: Option<u32>,
) -> Result<ClusterListings> {
    let concurrency = bench.params.list_concurrency;
    let clusters: Vec<u64> = (0..bench.params.list_requests)
        .map(|_| bench.rng.below(bench.params.clusters))
        .collect();
    let urls: Vec<String> = clusters
        .iter()
        .map(|&cluster| format!("{base}/v1/tasks?cluster={}", bench.workload.cluster_name(cluster)))
        .collect();
    let urls = Arc::new(urls);
    // One untimed listing per connection first, as `task_gets` warms up: each connection's first
    // answer was among the slowest of a run. Clusters in order, so that the random ones timed are
    // those of earlier versions.
    let warm_up: Vec<String> = (0..concurrency as u64)
        .map(|n| {
            let cluster = bench.workload.cluster_name(n % bench.params.clusters);
            format!("{base}/v1/tasks?cluster={cluster}")
        })
        .collect();
    // The first answer is checked against the workload (every task is stored), so that the figures
    // are of real answers.
    let w = &bench.workload;
    let expected = clusters.first().map_or(0, |&cluster| {
        (0..bench.params.tasks)
            .filter(|&task| w.cluster_of_task(task) == cluster)
            .count()
    });
    read_listings(client, urls, warm_up, concurrency, expected, server).await
}

/// Times `urls`, `concurrency` at a time, read both ways (see [`ClusterListings`]), after the
/// untimed `warm_up`; the first answer of each way must hold `expected` items. The collected
/// listings' CPU is this process's, and `server`'s (a pid) when the server runs apart.
async fn read_listings(
    client: &reqwest::Client,
    urls: Arc<Vec<String>>,
    warm_up: Vec<String>,
    concurrency: usize,
    expected: usize,
    server: Option<u32>,
) -> Result<ClusterListings> {
    load_urls(client, Arc::new(warm_up), concurrency).await?;
    let (collected, first, cpu) =
        ListingCpu::measure(server, load_urls(client, urls.clone(), concurrency)).await?;
    let answered = items(&first);
    ensure!(
        answered == expected,
        "a listing answered {answered} items, not {expected}"
    );
    let (streamed, first) = load_urls_reading(client, urls, concurrency, Reading::Streamed).await?;
    let answered = items(&first);
    ensure!(
        answered == expected,
        "a streamed listing answered {answered} items, not {expected}"
    );
    Ok(ClusterListings {
        collected,
        streamed,
        items: expected,
        cpu,
    })
}

/// The filtered listing's query: an attribute (a third of the fleet is in zone a), the agent (every
/// instance's 1.79.2 passes) and the task groups (two instances in five run batch tasks), so that it
/// matches about a fifth of the fleet and each clause has work to do.
const FILTER: &str =
    "attribute:ecs.availability-zone == us-east-1a and agentVersion >= 1.14.0 and task:group != family:batch";

/// `GET /v1/instances?filter=` over every cluster (no `cluster=`), answered from the server's view.
async fn instance_filter(
    bench: &mut Bench,
    server: &Server,
    view: &blox_server::View,
    store: &dyn Store,
) -> Result<()> {
    // The view follows the change log on its own: the answers must cover everything committed.
    let head = store.log_bounds().await?.head;
    ensure!(
        view.caught_up(head, Duration::from_secs(60)).await,
        "the server's view did not reach change {head} within 60 s"
    );
    let expected = expected_filter_matches(bench);
    let concurrency = bench.params.filter_concurrency;
    let url =
        reqwest::Url::parse_with_params(&format!("{}/v1/instances", server.base()), [("filter", FILTER)])?
            .to_string();
    let client = client(concurrency, server)?;
    // One untimed request, checked: the figure must be of a real answer, not of an error.
    let response = client.get(&url).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    ensure!(
        status == reqwest::StatusCode::OK,
        "GET {url} answered {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(500)])
    );
    let matched = items(&body);
    ensure!(
        matched == expected,
        "the filter matched {matched} instances, {expected} expected"
    );
    let urls = vec![url; bench.params.filter_requests];
    let (latencies, first) = load_urls(&client, Arc::new(urls), concurrency).await?;
    ensure!(
        items(&first) == expected,
        "a timed filtered listing changed its answer"
    );
    let w = &format!("instance filter (c={concurrency})");
    bench.report.add(
        w,
        "instances matched by the filter",
        matched as f64,
        "instances",
        None,
    );
    bench.report.add(
        w,
        "GET /v1/instances?filter=Q p50",
        percentile_ms(&latencies, 50.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        "GET /v1/instances?filter=Q p99",
        percentile_ms(&latencies, 99.0),
        "ms",
        Some(Goal::AtMost(20.0)),
    );
    Ok(())
}

/// How many instances [`FILTER`] matches, from the workload itself (not from the server): those in
/// us-east-1a with no live task of `family:batch` (the version clause holds for all). A task is live
/// unless its last event left it STOPPED, as the view counts groups.
fn expected_filter_matches(bench: &Bench) -> usize {
    let w = &bench.workload;
    let mut batch = vec![false; bench.params.instances as usize];
    for (task, &version) in bench.task_versions.iter().enumerate() {
        let task = task as u64;
        if w.task_status(task, version) != "STOPPED" && w.task_group(task) == "family:batch" {
            batch[w.instance_of_task(task) as usize] = true;
        }
    }
    (0..bench.params.instances)
        .filter(|&i| w.availability_zone(i) == "us-east-1a" && !batch[i as usize])
        .count()
}

/// Where a store's values lie in memory when [`store_list`] reads it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// As the write storm left them: each value allocated when its last write came, among the other
    /// tables' entries. The figures' names are earlier versions'.
    AfterStorm,
    /// As opening the store left them: loaded from the checkpoint in key order, a cluster's tasks
    /// one after another.
    Reopened,
}

impl Layout {
    fn qualifier(self) -> &'static str {
        match self {
            Layout::AfterStorm => "",
            Layout::Reopened => ", store reopened (values in key order)",
        }
    }
}

/// The store's share of a cluster listing: `Store::list` of one cluster in pages of 1,000, as the API
/// reads it, without HTTP, rendering or a client. After the storm, also the machine's floor for it:
/// one `memcpy` of the body.
pub(crate) async fn store_list(bench: &mut Bench, store: &dyn Store, layout: Layout) -> Result<()> {
    let qualifier = layout.qualifier();
    let listings = bench.params.list_requests.min(50);
    let mut latencies = histogram();
    for n in 0..listings {
        let filter = cluster_filter(bench, n as u64)?;
        let started = now();
        let mut after = None;
        loop {
            let page = store
                .list(
                    Kind::Task,
                    &filter,
                    PageRequest {
                        after,
                        limit: Some(blox_server::api::UNBOUNDED_LIST_PAGE),
                    },
                )
                .await?;
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        latencies.record(micros(started.elapsed()))?;
    }
    add_list_p50(
        bench,
        &format!("Store::list of a cluster alone (c=1) p50{qualifier}"),
        &latencies,
    );

    // What the API calls now: the listing written into the body from the stored bytes (into one
    // buffer, as earlier versions measured it). Then the machine's own floor for it: one copy of
    // the body that results.
    let (mut spliced, mut copied) = (histogram(), histogram());
    for n in 0..listings {
        let filter = cluster_filter(bench, n as u64)?;
        let started = now();
        let out = spliced_listing(store, &filter, Buffers::One).await?;
        spliced.record(micros(started.elapsed()))?;
        let started = now();
        let copy = std::hint::black_box(out.clone());
        copied.record(micros(started.elapsed()))?;
        drop(copy);
    }
    add_list_p50(
        bench,
        &format!("Store::list_spliced of a cluster alone (c=1) p50{qualifier}"),
        &spliced,
    );
    // The same listings with each page in a buffer of its own, as the API writes them: without the
    // faults and copies of growing one 12.5 MB buffer.
    let mut paged = histogram();
    for n in 0..listings {
        let filter = cluster_filter(bench, n as u64)?;
        let started = now();
        spliced_listing(store, &filter, Buffers::PerPage).await?;
        paged.record(micros(started.elapsed()))?;
    }
    add_list_p50(
        bench,
        &format!("Store::list_spliced of a cluster alone (c=1) p50, a buffer per page{qualifier}"),
        &paged,
    );
    if layout == Layout::AfterStorm {
        add_list_p50(bench, "memcpy of the listing's body p50", &copied);
    }
    Ok(())
}

/// The *list cluster* scenario's name, which carries its concurrency.
fn list_workload(bench: &Bench) -> String {
    format!("list cluster (c={})", bench.params.list_concurrency)
}

/// Adds the p50 of `latencies` as `figure` of the *list cluster* scenario.
fn add_list_p50(bench: &mut Bench, figure: &str, latencies: &Histogram<u64>) {
    bench.report.add(
        &list_workload(bench),
        figure,
        percentile_ms(latencies, 50.0),
        "ms",
        None,
    );
}

/// Where [`spliced_listing`] writes the pages.
#[derive(Clone, Copy)]
enum Buffers {
    /// Into one buffer, grown by doubling to the whole body's size.
    One,
    /// Each into a buffer of its own, sized from the page before, and dropped once written: as the
    /// API streams them.
    PerPage,
}

/// One listing of `filter` by `Store::list_spliced` in the API's pages of 1,000; the body when it
/// is written into one buffer (empty otherwise).
async fn spliced_listing(store: &dyn Store, filter: &Filter, buffers: Buffers) -> Result<Vec<u8>> {
    let (mut out, mut after, mut lead) = (Vec::new(), None, false);
    loop {
        let page = store
            .list_spliced(
                Kind::Task,
                filter,
                PageRequest {
                    after,
                    limit: Some(blox_server::api::UNBOUNDED_LIST_PAGE),
                },
                Splice {
                    lead,
                    ..blox_server::render::RECORD
                },
                out,
            )
            .await?;
        lead = true;
        let Some(next) = page.next else {
            return Ok(match buffers {
                Buffers::One => page.out,
                Buffers::PerPage => Vec::new(),
            });
        };
        after = Some(next);
        out = match buffers {
            Buffers::One => page.out,
            Buffers::PerPage => {
                let room = page.out.len();
                drop(std::hint::black_box(page.out));
                blox_server::api::page_buffer(room)
            }
        };
    }
}

/// The `n`th listing's filter: one cluster, the clusters in turn.
fn cluster_filter(bench: &Bench, n: u64) -> Result<Filter> {
    Ok(Filter {
        cluster: Some(ClusterName::new(
            bench.workload.cluster_name(n % bench.params.clusters),
        )?),
        ..Filter::default()
    })
}

/// The items of a listing's body. Counted, not parsed: every item carries exactly one metadata
/// object.
fn items(body: &[u8]) -> usize {
    const ITEM: &[u8] = b"{\"metadata\":";
    body.windows(ITEM.len()).filter(|w| *w == ITEM).count()
}

/// The stream fan-out of the hardened server: its clients, the changes committed, and the latency
/// of every (client, change).
async fn stream_fan_out(bench: &mut Bench, server: &Server, store: Arc<dyn Store>) -> Result<()> {
    let clients = bench.params.stream_clients;
    raise_fd_limit(clients, &mut bench.report);
    let FanOut { latencies, commits } = fan_out(bench, &[server], clients, store).await?;
    let latencies = &latencies[0];
    let w = "stream fan-out";
    bench
        .report
        .add(w, "stream clients", clients as f64, "clients", None);
    bench.report.add(
        w,
        "changes committed (one per commit)",
        bench.params.stream_updates as f64,
        "changes",
        None,
    );
    bench.report.add(
        w,
        "commit rate",
        1000.0 / bench.params.stream_interval_ms as f64,
        "changes/s",
        None,
    );
    bench.report.add(
        w,
        "single-change commit p50",
        percentile_ms(&commits, 50.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        "commit → client line p50",
        percentile_ms(latencies, 50.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        "commit → client line p99",
        percentile_ms(latencies, 99.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        "commit → client line max",
        percentile_ms(latencies, 100.0),
        "ms",
        None,
    );
    Ok(())
}

/// Transactions of a full batch each that the ingest commits while [`get_during_ingest`] reads.
const BACKLOG_COMMITS: usize = 10;
/// GETs sent per round while the backlog is committed: rounds go on until it is.
const GETS_PER_ROUND: usize = 1_000;
/// How often the health check of *get during ingest* is due (its figures' names say so).
const HEALTH_CHECK_EVERY: Duration = Duration::from_millis(2);

/// GETs of random tasks, as in *get task*, while the ingest commits a backlog: [`BACKLOG_COMMITS`]
/// transactions of a full batch, one after the other, as after an outage. What the backlog costs
/// the API's readers: a transaction holds the log store's state lock from its first write to its
/// fsync, and a reader waits for it.
async fn get_during_ingest(bench: &mut Bench, server: &Server, store: Arc<dyn Store>) -> Result<()> {
    // The backlog's events and the GETs' tasks come from an RNG of their own: wherever the scenario
    // runs, it changes no other scenario's random choices.
    let main_rng = std::mem::replace(&mut bench.rng, Rng::new(bench.params.seed ^ 0xbac1_0000));
    let outcome = async {
        let concurrency = bench.params.get_concurrency;
        let base = server.base();
        let client = client(concurrency, server)?;
        let batch = bench.params.batch;
        let backlog: Vec<Vec<Message>> = (0..BACKLOG_COMMITS)
            .map(|b| {
                (0..batch)
                    .map(|i| message((b * batch + i) as u64, bench.random_event()))
                    .collect()
            })
            .collect();
        let urls: Vec<String> = (0..GETS_PER_ROUND)
            .map(|_| task_url(bench, &base, bench.params.tasks))
            .collect();
        let (urls, done) = (Arc::new(urls), Arc::new(AtomicBool::new(false)));
        // A route that reads nothing from the store, asked as a load balancer's health check would:
        // it waits only for a worker of the server's runtime. Each check is timed from when it was
        // due, so that a check held up by a blocked worker counts its whole delay.
        let health = tokio::spawn({
            let (client, url, done) = (client.clone(), format!("{base}/healthz"), done.clone());
            async move {
                let mut latencies = histogram();
                let mut due = tokio::time::interval(HEALTH_CHECK_EVERY);
                while !done.load(Ordering::Acquire) {
                    let started = due.tick().await;
                    let response = client.get(&url).send().await?;
                    ensure!(
                        response.status().is_success(),
                        "GET /healthz: {}",
                        response.status()
                    );
                    response.bytes().await?;
                    latencies.record(micros(started.elapsed()))?;
                }
                Ok::<_, anyhow::Error>(latencies)
            }
        });
        let reading = now();
        let readers = tokio::spawn({
            let done = done.clone();
            async move {
                let (mut latencies, mut counted_for) = (histogram(), Duration::ZERO);
                while !done.load(Ordering::Acquire) {
                    let (round, _) = load_urls(&client, urls.clone(), concurrency).await?;
                    // A round that the backlog's end cut short ran partly on an idle store: left
                    // out, unless it is the only one (a small backlog).
                    if done.load(Ordering::Acquire) && !latencies.is_empty() {
                        break;
                    }
                    latencies.add(&round)?;
                    counted_for = reading.elapsed();
                }
                Ok::<_, anyhow::Error>((latencies, counted_for))
            }
        });
        let ingestor = Ingestor::new(store, Arc::new(NoEvents), IngestOptions::default());
        let mut commits = histogram();
        let committed = async {
            for events in backlog {
                commits.record(micros(bench.commit(&ingestor, events).await?))?;
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        done.store(true, Ordering::Release);
        let (gets, counted_for) = readers.await.context("the GET workers panicked")??;
        let gets_per_second = gets.len() as f64 / counted_for.as_secs_f64().max(1e-9);
        let health = health.await.context("the health checker panicked")??;
        committed?;
        Ok::<_, anyhow::Error>((gets, gets_per_second, health, commits))
    }
    .await;
    bench.rng = main_rng;
    let (gets, gets_per_second, health, commits) = outcome?;
    let w = &format!("get during ingest (c={})", bench.params.get_concurrency);
    bench.report.add(
        w,
        "ingest transaction p50 (a full batch each)",
        percentile_ms(&commits, 50.0),
        "ms",
        None,
    );
    for (percentile, name) in [(50.0, "p50"), (99.0, "p99"), (100.0, "max")] {
        bench.report.add(
            w,
            &format!("GET /v1/tasks/{{cluster}}/{{arn}} {name}, while the ingest commits"),
            percentile_ms(&gets, percentile),
            "ms",
            None,
        );
    }
    bench.report.add(
        w,
        "GET /v1/tasks/{cluster}/{arn} answered per second, while the ingest commits",
        gets_per_second,
        "requests/s",
        None,
    );
    for (percentile, name) in [(99.0, "p99"), (100.0, "max")] {
        bench.report.add(
            w,
            &format!(
                "GET /healthz {name} (one every {} ms), while the ingest commits",
                HEALTH_CHECK_EVERY.as_millis()
            ),
            percentile_ms(&health, percentile),
            "ms",
            None,
        );
    }
    Ok(())
}

/// What the token check and the limits cost, against the bare routes in the same run: GETs in
/// alternating rounds (each server first in every other round), and one fan-out whose clients are
/// split between the two servers, connected alternately, so that both see every change at once.
async fn hardening_cost(
    bench: &mut Bench,
    bare: &Server,
    hardened: &Server,
    store: Arc<dyn Store>,
) -> Result<()> {
    let concurrency = bench.params.get_concurrency;
    let servers = [bare, hardened];
    let clients = [client(concurrency, bare)?, client(concurrency, hardened)?];
    // A ratio of two p99s needs more of a tail than one p99: five times the GET workload each.
    let per_round = (OVERHEAD_SAMPLES * bench.params.get_requests / OVERHEAD_ROUNDS).max(1);
    for (server, client) in servers.iter().zip(&clients) {
        let warm_up: Vec<String> = (0..per_round)
            .map(|_| task_url(bench, &server.base(), bench.params.tasks))
            .collect();
        load_urls(client, Arc::new(warm_up), concurrency).await?;
    }
    let mut gets = [histogram(), histogram()];
    for round in 0..OVERHEAD_ROUNDS {
        for i in [round % 2, 1 - round % 2] {
            let base = servers[i].base();
            let urls: Vec<String> = (0..per_round)
                .map(|_| task_url(bench, &base, bench.params.tasks))
                .collect();
            let (latencies, _) = load_urls(&clients[i], Arc::new(urls), concurrency).await?;
            gets[i].add(&latencies)?;
        }
    }
    let each = (bench.params.stream_clients / 2).max(1);
    let FanOut {
        latencies: streams, ..
    } = fan_out(bench, &servers, each, store).await?;

    let w = "hardening cost";
    bench.report.add(
        w,
        "GET /v1/tasks/{cluster}/{arn} p99, bare routes",
        percentile_ms(&gets[0], 99.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        "GET /v1/tasks/{cluster}/{arn} p99, tokens + limits",
        percentile_ms(&gets[1], 99.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        "GET p99, tokens + limits ÷ bare",
        ratio(&gets[1], &gets[0]),
        "×",
        Some(Goal::AtMost(OVERHEAD_GOAL)),
    );
    bench.report.add(
        w,
        &format!("commit → client line p99, {each} clients of the bare routes"),
        percentile_ms(&streams[0], 99.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        &format!("commit → client line p99, {each} clients of tokens + limits"),
        percentile_ms(&streams[1], 99.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        "stream fan-out p99, tokens + limits ÷ bare",
        ratio(&streams[1], &streams[0]),
        "×",
        Some(Goal::AtMost(OVERHEAD_GOAL)),
    );
    Ok(())
}

fn ratio(hardened: &Histogram<u64>, bare: &Histogram<u64>) -> f64 {
    hardened.value_at_percentile(99.0) as f64 / bare.value_at_percentile(99.0).max(1) as f64
}

/// What a fan-out measured: per server, the latency of every (client, change); and the commits.
struct FanOut {
    latencies: Vec<Histogram<u64>>,
    commits: Histogram<u64>,
}

/// Opens `clients_each` stream clients on every server (alternating), then commits one task change
/// every `stream_interval_ms` through the ingest path, and measures for every (client, change) the
/// time from the start of its commit to the client reading its line. The start of the commit is the
/// reference because the store wakes the streams before `commit` returns to its caller; the figure
/// therefore includes the commit's fsync.
async fn fan_out(
    bench: &mut Bench,
    servers: &[&Server],
    clients_each: usize,
    store: Arc<dyn Store>,
) -> Result<FanOut> {
    let updates = bench.params.stream_updates as u64;
    let head = store.log_bounds().await?.head;
    let last = head + updates;
    let targets: Vec<(usize, SocketAddr, Option<&'static str>)> = (0..clients_each)
        .flat_map(|_| servers.iter().enumerate().map(|(i, s)| (i, s.address, s.token)))
        .collect();
    // Connects in waves, so that the listen backlog never overflows.
    let connected: Vec<Result<(usize, StreamClient)>> = futures::stream::iter(targets)
        .map(|(i, address, token)| async move { Ok((i, StreamClient::connect(address, token).await?)) })
        .buffer_unordered(64)
        .collect()
        .await;
    let connected = connected.into_iter().collect::<Result<Vec<_>>>()?;
    let readers: Vec<_> = connected
        .into_iter()
        .map(|(i, client)| (i, tokio::spawn(client.read_until(last))))
        .collect();

    let ingestor = Ingestor::new(store, Arc::new(NoEvents), IngestOptions::default());
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(bench.params.stream_interval_ms));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut commits = histogram();
    for n in 0..updates {
        ticks.tick().await;
        let task = bench.rng.below(bench.params.tasks);
        let body = bench.next_task_event(task);
        let message = Message {
            id: format!("s-{n}"),
            receipt: format!("s-{n}"),
            body,
            sent_at_ms: None,
        };
        let started = now();
        let report = ingestor
            .commit(vec![message])
            .await
            .map_err(|()| anyhow::anyhow!("a stream change failed to commit"))?;
        commits.record(micros(started.elapsed()))?;
        ensure!(report.applied == 1, "a stream change did not apply: {report:?}");
        // This benchmark is the only writer, so the change's sequence number is the next one.
        sent_at.insert(head + n + 1, started);
    }

    let mut latencies: Vec<Histogram<u64>> = servers.iter().map(|_| histogram()).collect();
    let (mut complete, mut missing) = (0_usize, 0_u64);
    let deadline = now() + STREAM_DEADLINE;
    let clients = readers.len();
    for (i, reader) in readers {
        let received = match tokio::time::timeout_at(deadline, reader).await {
            Ok(joined) => joined.context("a stream client panicked")??,
            Err(_) => bail!("stream clients did not receive every change within {STREAM_DEADLINE:?}"),
        };
        let mut seen = 0;
        for (seq, at) in received {
            if let Some(sent) = sent_at.get(&seq) {
                latencies[i].record(micros(at.saturating_duration_since(*sent)))?;
                seen += 1;
            }
        }
        missing += updates - seen.min(updates);
        complete += usize::from(seen == updates);
    }
    ensure!(
        missing == 0,
        "{missing} (client, change) pairs were never received; {complete} of {clients} clients got all"
    );
    Ok(FanOut { latencies, commits })
}

/// Each stream client uses one descriptor here and one in the server: raises the soft limit towards
/// the hard one when that is short, and says what it could get.
fn raise_fd_limit(clients: usize, report: &mut super::Report) {
    let wanted = (clients as u64) * 2 + 512;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) => {
            if limit < wanted {
                eprintln!(
                    "  warning: open-file limit is {limit}, {wanted} wanted; clients may fail to connect"
                );
            }
            report.add("stream fan-out", "open-file limit", limit as f64, "fds", None);
        }
        Err(err) => eprintln!("  warning: cannot read or raise the open-file limit: {err}"),
    }
}

/// A raw HTTP/1.1 client of `/v1/stream/tasks`: it reads the chunked body itself, so that it sees each
/// line the moment its chunk arrives, with no client library buffering in between.
struct StreamClient {
    reader: BufReader<TcpStream>,
}

impl StreamClient {
    /// Connects and reads the response head: once it has arrived, the server has fixed the stream's
    /// starting position, so every later change reaches this client.
    async fn connect(address: SocketAddr, token: Option<&str>) -> Result<StreamClient> {
        let mut socket = TcpStream::connect(address)
            .await
            .context("connecting a stream client")?;
        socket.set_nodelay(true)?;
        let authorization = token
            .map(|token| format!("Authorization: Bearer {token}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET /v1/stream/tasks HTTP/1.1\r\nHost: bench\r\nAccept: application/x-ndjson\r\n{authorization}\r\n"
        );
        socket.write_all(request.as_bytes()).await?;
        let mut reader = BufReader::new(socket);
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        ensure!(line.starts_with("HTTP/1.1 200"), "stream answered {line:?}");
        let mut chunked = false;
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                bail!("the stream closed in its headers");
            }
            if line == "\r\n" {
                break;
            }
            chunked |= line
                .to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked");
        }
        ensure!(chunked, "the stream is not chunked");
        Ok(StreamClient { reader })
    }

    /// Reads records until the one with sequence number `last`; returns each record's sequence number
    /// with the time its chunk was read.
    async fn read_until(mut self, last: u64) -> Result<Vec<(u64, Instant)>> {
        let mut received = Vec::new();
        let mut size_line = String::new();
        let mut chunk = Vec::new();
        let mut partial = Vec::new();
        loop {
            size_line.clear();
            if self.reader.read_line(&mut size_line).await? == 0 {
                bail!("the stream ended before change {last}");
            }
            let size = usize::from_str_radix(size_line.trim_end(), 16)
                .with_context(|| format!("bad chunk size {size_line:?}"))?;
            ensure!(size > 0, "the stream ended before change {last}");
            chunk.resize(size + 2, 0);
            self.reader.read_exact(&mut chunk).await?;
            let at = now();
            partial.extend_from_slice(&chunk[..size]);
            // Records may span chunks in principle: only complete lines are taken.
            while let Some(end) = partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = partial.drain(..=end).collect();
                if let Some(seq) = entity_version(&line) {
                    received.push((seq, at));
                    if seq >= last {
                        return Ok(received);
                    }
                }
            }
        }
    }
}

/// The `entityVersion` of a record line (`{"metadata":{"entityVersion":"N"...`); `None` for a
/// heartbeat.
fn entity_version(line: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"entityVersion\":\"";
    let start = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = line[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_entity_versions_and_skips_heartbeats() {
        assert_eq!(
            entity_version(br#"{"metadata":{"entityVersion":"1234"},"entity":{}}"#),
            Some(1234)
        );
        assert_eq!(entity_version(b"\n"), None);
        assert_eq!(items(b"[{\"metadata\":1},{\"metadata\":2}]"), 2);
        assert_eq!(items(b"[]"), 0);
    }
}
