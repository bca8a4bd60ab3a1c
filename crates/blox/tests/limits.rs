//! The server's bounds through the real binary: 200 streams whose clients never read, over a large
//! backlog of changes, hold a bounded amount of memory while other requests are served; the write
//! timeout closes them; and SIGTERM with stalled streams open exits within `--shutdown-grace`.
//!
//! The backlog is written into a redb file before the server starts on it (100,000 changes here;
//! `BLOX_TEST_BACKLOG=1000000` for the million, see NOTES.md for what that measured).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blox_model::{ClusterName, Task};
use blox_server::documents;
use blox_store::{RedbStore, Store, StoreOptions, Write};
use blox_testkit::{BloxProcess, entities, wait_until};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

const BLOX: &str = env!("CARGO_BIN_EXE_blox");
const STREAMS: usize = 200;
/// Tasks the backlog cycles through (each change is a new version of one of them).
const TASKS: u64 = 1_000;
/// Peak resident memory allowed while the streams are stalled. Measured: see NOTES.md (about
/// 163 MiB at 100k changes, 333 MiB at 1M, both about 100 MiB over the process at start).
const RSS_BOUND_MIB: u64 = 512;
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const GRACE: Duration = Duration::from_secs(2);
/// How long a test waits for something that should happen; past it, the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

fn backlog_size() -> u64 {
    std::env::var("BLOX_TEST_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Writes `changes` task changes into a new store at `path`, through the store as ingestion would.
async fn build_backlog(path: &Path, changes: u64) {
    let store = RedbStore::open(
        path,
        StoreOptions {
            change_log_retention: changes * 2,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let cluster = ClusterName::new("backlog").unwrap();
    let mut written = 0;
    while written < changes {
        let batch = (written..(written + 10_000).min(changes))
            .map(|n| {
                let task = Task {
                    version: n / TASKS + 1,
                    last_status: "RUNNING".into(),
                    started_by: Some("load".into()),
                    ..entities::task("backlog", &format!("{:032x}", n % TASKS))
                };
                Write::Upsert(documents::task(cluster.clone(), &task))
            })
            .collect::<Vec<_>>();
        written += batch.len() as u64;
        store.apply(batch).await.unwrap();
    }
}

/// A stream from the start of the log whose client never reads (a small receive buffer, so that the
/// kernel holds little of what the server sends before the server's own buffers fill).
async fn stalled_stream(address: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(address).await.unwrap();
    stream
        .write_all(b"GET /v1/stream/tasks?entityVersion=0 HTTP/1.1\r\nHost: blox\r\n\r\n")
        .await
        .unwrap();
    stream
}

/// A metric's value from `/metrics` (0 when not exported yet).
async fn metric(client: &reqwest::Client, base: &str, series: &str) -> f64 {
    let Ok(response) = client.get(format!("{base}/metrics")).send().await else {
        return f64::NAN;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `/proc/PID/status` figures in KiB: the resident set now (`VmRSS`) and at its peak (`VmHWM`).
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Other requests answer while the streams are stalled (a request held up behind them would hang
/// until the deadline: no wall-clock bound is asserted, the machine's speed is not the question).
async fn served(client: &reqwest::Client, base: &str) {
    for path in [
        "/healthz",
        "/v1/tasks?maxResults=10",
        "/v1/instances",
        "/v1/dead-letters",
    ] {
        let answer = async {
            let response = client.get(format!("{base}{path}")).send().await?;
            let status = response.status();
            response.bytes().await.map(|_| status)
        };
        let status = tokio::time::timeout(DEADLINE, answer)
            .await
            .unwrap_or_else(|_| {
                panic!("{path} was not answered within {DEADLINE:?} while streams are stalled")
            })
            .unwrap_or_else(|e| panic!("{path} while streams are stalled: {e}"));
        assert!(status.is_success(), "{path}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_streams_over_a_backlog_stay_bounded_and_sigterm_exits_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blox.redb");
    let changes = backlog_size();
    let started = Instant::now();
    build_backlog(&path, changes).await;
    eprintln!("backlog of {changes} changes written in {:?}", started.elapsed());

    let store = format!("redb:{}", path.display());
    let retention = (changes * 2).to_string();
    let write_timeout = format!("{}s", WRITE_TIMEOUT.as_secs());
    let grace = format!("{}s", GRACE.as_secs());
    let mut blox = BloxProcess::start(
        BLOX,
        [
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &store,
            "--change-log-retention",
            &retention,
            "--ecs",
            "sim",
            "--sim-scenario",
            "empty",
            "--sim-churn",
            "none",
            "--max-streams",
            "250",
            "--write-timeout",
            &write_timeout,
            "--shutdown-grace",
            &grace,
        ],
        &[("RUST_LOG".into(), "warn".into())],
    )
    .await
    .unwrap();
    let base = blox.base_url().to_owned();
    let address: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let client = blox_testkit::http_client()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let pid = blox.pid();
    let rss_at_start = memory_kib(pid, "VmRSS:");

    // 1. Streams that never read: memory stays bounded, other requests are served, and the write
    //    timeout closes every one of them.
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(stalled_stream(address).await);
    }
    let open = "blox_stream_clients{kind=\"task\"}";
    wait_until("every stream is open", Duration::from_secs(30), || async {
        metric(&client, &base, open).await == STREAMS as f64
    })
    .await;
    served(&client, &base).await;
    let closed = "blox_http_write_timeouts_total";
    wait_until(
        "the write timeout closes every stalled stream",
        WRITE_TIMEOUT + Duration::from_secs(60),
        || async {
            metric(&client, &base, closed).await >= STREAMS as f64
                && metric(&client, &base, open).await == 0.0
        },
    )
    .await;
    let peak = memory_kib(pid, "VmHWM:");
    eprintln!(
        "{STREAMS} stalled streams over {changes} changes: peak RSS {} MiB (at start {} MiB)",
        peak / 1024,
        rss_at_start / 1024
    );
    assert!(
        peak / 1024 < RSS_BOUND_MIB,
        "peak RSS {} MiB with {STREAMS} stalled streams (bound {RSS_BOUND_MIB} MiB)",
        peak / 1024
    );
    drop(streams);
    served(&client, &base).await;

    // 2. SIGTERM while as many stalled streams are open: blox exits within the grace, long before
    //    the write timeout would have closed them.
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(stalled_stream(address).await);
    }
    // Each is stalled: its client's buffers and the kernel's are full, and the server waits to write.
    wait_until(
        "every stream is open and stalled",
        Duration::from_secs(30),
        || async {
            metric(&client, &base, open).await == STREAMS as f64
                && metric(&client, &base, "blox_http_connections_stalled").await >= STREAMS as f64
        },
    )
    .await;
    let signalled = Instant::now();
    let status = blox.terminate(GRACE + Duration::from_secs(10)).await.unwrap();
    let took = signalled.elapsed();
    eprintln!("SIGTERM with {STREAMS} stalled streams: exited in {took:?} (grace {GRACE:?})");
    assert!(status.success(), "{status:?}");
    assert!(
        took < GRACE + Duration::from_millis(1500),
        "exited {took:?} after SIGTERM, grace {GRACE:?}"
    );
    drop(streams);
}
