//! The API served in-process (`blox_server::router` through `limits::serve_http` on a loopback port) over the loaded store: GET and
//! list latency through an HTTP client, and the fan-out of one change stream to many clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use blox_aws::Message;
use blox_model::ClusterName;
use blox_server::{AppState, Gates, IngestOptions, Ingestor, Limits, ReadinessState};
use blox_store::{Filter, Kind, PageRequest, Store};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::report::Goal;
use blox_aws::NoEvents;

use super::{Bench, histogram, micros, now, percentile_ms};

/// How long the stream phase may take once the changes are sent, before it reports what it has.
const STREAM_DEADLINE: Duration = Duration::from_secs(120);

pub(crate) async fn run(bench: &mut Bench, store: Arc<dyn Store>, metrics: PrometheusHandle) -> Result<()> {
    let shutdown = CancellationToken::new();
    let readiness = Arc::new(ReadinessState::default());
    readiness.ready_without_reconcile();
    let mut state = AppState::new(store.clone(), None, shutdown.clone()).await?;
    state.readiness = readiness;
    state.metrics = metrics;
    // The server's own limits, as `blox server` has them, wide enough for the stream clients.
    let defaults = Limits::default();
    let limits = Limits {
        max_streams: defaults.max_streams.max(bench.params.stream_clients),
        max_connections: defaults.max_connections.max(bench.params.stream_clients + 64),
        ..defaults
    };
    state.gates = Gates::new(limits.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let router = blox_server::router(state);
    let server = {
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move { blox_server::limits::serve_http(listener, router, &limits, shutdown).await },
        )
    };

    let base = format!("http://{address}");
    let outcome = async {
        get_latency(bench, &base).await?;
        list_latency(bench, &base).await?;
        store_list(bench, store.as_ref()).await?;
        stream_fan_out(bench, address, store).await
    }
    .await;

    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(30), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::warn!(error = %err, "the in-process server failed"),
        Ok(Err(err)) => tracing::warn!(error = %err, "the in-process server panicked"),
        Err(_) => tracing::warn!("the in-process server did not stop within 30 s"),
    }
    outcome
}

fn client(concurrency: usize) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        // Loopback round trips are what is measured: Nagle's delay would dominate them.
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")
}

/// Sends every URL with `concurrency` requests in flight, each worker taking the next URL when its
/// response is fully read. Returns the latencies (µs) and the body of the first response.
async fn load_urls(
    client: &reqwest::Client,
    urls: Arc<Vec<String>>,
    concurrency: usize,
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
                let response = client.get(url).send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                latencies.record(micros(started.elapsed()))?;
                ensure!(status.is_success(), "GET {url} answered {status}");
                if i == 0 {
                    first = Some(body.to_vec());
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

async fn get_latency(bench: &mut Bench, base: &str) -> Result<()> {
    let concurrency = bench.params.get_concurrency;
    let url = |bench: &mut Bench| {
        let task = bench.rng.below(bench.params.tasks);
        let w = &bench.workload;
        format!(
            "{base}/v1/tasks/{}/{}",
            w.cluster_name(w.cluster_of_task(task)),
            w.task_arn(task)
        )
    };
    let client = client(concurrency)?;
    // Opens the connections and touches the code paths before anything is recorded.
    let warm_up: Vec<String> = (0..bench.params.get_requests / 10).map(|_| url(bench)).collect();
    load_urls(&client, Arc::new(warm_up), concurrency).await?;
    let urls: Vec<String> = (0..bench.params.get_requests).map(|_| url(bench)).collect();
    let started = now();
    let (latencies, _) = load_urls(&client, Arc::new(urls), concurrency).await?;
    let elapsed = started.elapsed();
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

async fn list_latency(bench: &mut Bench, base: &str) -> Result<()> {
    let concurrency = bench.params.list_concurrency;
    let clusters = bench.params.clusters;
    let urls: Vec<String> = (0..bench.params.list_requests)
        .map(|_| {
            let cluster = bench.rng.below(clusters);
            format!("{base}/v1/tasks?cluster={}", bench.workload.cluster_name(cluster))
        })
        .collect();
    let client = client(concurrency)?;
    let (latencies, first) = load_urls(&client, Arc::new(urls), concurrency).await?;
    // Counted, not parsed: every item carries exactly one metadata object.
    let items = count(&first, b"{\"metadata\":");
    let w = &format!("list cluster (c={concurrency})");
    bench
        .report
        .add(w, "tasks per cluster listed", items as f64, "tasks", None);
    bench.report.add(
        w,
        "GET /v1/tasks?cluster=X p50",
        percentile_ms(&latencies, 50.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        "GET /v1/tasks?cluster=X p99",
        percentile_ms(&latencies, 99.0),
        "ms",
        Some(Goal::AtMost(30.0)),
    );
    Ok(())
}

/// The store's share of a cluster listing: `Store::list` of one cluster in pages of 1,000, as the API
/// reads it, without HTTP, rendering or a client.
async fn store_list(bench: &mut Bench, store: &dyn Store) -> Result<()> {
    let mut latencies = histogram();
    for n in 0..bench.params.list_requests.min(50) {
        let filter = Filter {
            cluster: Some(ClusterName::new(
                bench.workload.cluster_name(n as u64 % bench.params.clusters),
            )?),
            ..Filter::default()
        };
        let started = now();
        let mut after = None;
        loop {
            let page = store
                .list(
                    Kind::Task,
                    &filter,
                    PageRequest {
                        after,
                        limit: Some(1_000),
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
    bench.report.add(
        "list cluster (c=4)",
        "Store::list of a cluster alone (c=1) p50",
        percentile_ms(&latencies, 50.0),
        "ms",
        None,
    );
    Ok(())
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Opens the clients, then commits one task change every `stream_interval_ms` through the ingest
/// path, and measures for every (client, change) the time from the start of its commit to the client
/// reading its line. The start of the commit is the reference because the store wakes the streams
/// before `commit` returns to its caller; the figure therefore includes the commit's fsync.
async fn stream_fan_out(bench: &mut Bench, address: SocketAddr, store: Arc<dyn Store>) -> Result<()> {
    let clients = bench.params.stream_clients;
    let updates = bench.params.stream_updates as u64;
    raise_fd_limit(clients, &mut bench.report);

    let head = store.log_bounds().await?.head;
    let last = head + updates;
    // Connects in waves, so that the listen backlog never overflows.
    let connected: Vec<Result<StreamClient>> = futures::stream::iter(0..clients)
        .map(|_| StreamClient::connect(address))
        .buffer_unordered(64)
        .collect()
        .await;
    let connected = connected.into_iter().collect::<Result<Vec<_>>>()?;
    let readers: Vec<_> = connected
        .into_iter()
        .map(|client| tokio::spawn(client.read_until(last)))
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

    let mut latencies = histogram();
    let (mut complete, mut missing) = (0_usize, 0_u64);
    let deadline = now() + STREAM_DEADLINE;
    for reader in readers {
        let received = match tokio::time::timeout_at(deadline, reader).await {
            Ok(joined) => joined.context("a stream client panicked")??,
            Err(_) => bail!("stream clients did not receive every change within {STREAM_DEADLINE:?}"),
        };
        let mut seen = 0;
        for (seq, at) in received {
            if let Some(sent) = sent_at.get(&seq) {
                latencies.record(micros(at.saturating_duration_since(*sent)))?;
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
    let w = "stream fan-out";
    bench
        .report
        .add(w, "stream clients", clients as f64, "clients", None);
    bench.report.add(
        w,
        "changes committed (one per commit)",
        updates as f64,
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
        percentile_ms(&latencies, 50.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        "commit → client line p99",
        percentile_ms(&latencies, 99.0),
        "ms",
        None,
    );
    bench.report.add(
        w,
        "commit → client line max",
        percentile_ms(&latencies, 100.0),
        "ms",
        None,
    );
    Ok(())
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
    async fn connect(address: SocketAddr) -> Result<StreamClient> {
        let mut socket = TcpStream::connect(address)
            .await
            .context("connecting a stream client")?;
        socket.set_nodelay(true)?;
        socket
            .write_all(
                b"GET /v1/stream/tasks HTTP/1.1\r\nHost: bench\r\nAccept: application/x-ndjson\r\n\r\n",
            )
            .await?;
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
        assert_eq!(count(b"{\"metadata\":1,{\"metadata\":2", b"{\"metadata\":"), 2);
    }
}
