//! The server's own bounds and its errors, in-process through `blox_server::router`: each limit hit
//! once (503 JSON with `Retry-After` for a full server and a timed-out request, 413 JSON for a big
//! body), every rejection JSON (v0.3's text on purpose only), dead letters paged, filtered streams
//! heard from while changes go by (with their position when asked), and `/readyz` saying nothing of
//! AWS. The connection limit and Nagle's algorithm are checked here on loopback sockets; stalled
//! streams and shutdown run against the binary: `crates/blox/tests/limits.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use blox_api::{ErrorBody, Readiness};
use blox_aws::{EcsError, EcsErrorKind, EcsReader, ListPage, Listing};
use blox_model::{ClusterName, ContainerInstance, Task};
use blox_server::{
    AppState, Gates, Limits, ReadinessState, ReconcileOptions, Reconciler, StreamOptions, V03Errors,
    documents,
};
use blox_store::{DeadLetter, MemStore, Store, StoreOptions, Write};
use blox_testkit::{entities, wait_until};
use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

const DEADLINE: Duration = Duration::from_secs(10);

struct App {
    store: Arc<MemStore>,
    router: Router,
}

async fn app(limits: Limits, errors: V03Errors, store: StoreOptions) -> App {
    let store = Arc::new(MemStore::new(store));
    let mut state = AppState::new(store.clone(), None, CancellationToken::new())
        .await
        .unwrap();
    let readiness = Arc::new(ReadinessState::default());
    readiness.ready_without_reconcile();
    state.readiness = readiness;
    state.v03_errors = errors;
    state.gates = Gates::new(limits);
    state.stream = StreamOptions {
        heartbeat: Duration::from_millis(100),
        ..StreamOptions::default()
    };
    App {
        store,
        router: blox_server::router(state),
    }
}

async fn default_app() -> App {
    app(Limits::default(), V03Errors::Json, StoreOptions::default()).await
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

async fn get(router: &Router, uri: &str) -> (StatusCode, HeaderMap, Bytes) {
    send(router, Request::get(uri).body(Body::empty()).unwrap()).await
}

/// A JSON error answer: its body.
fn json_error(what: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ErrorBody {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    assert_eq!(
        content_type,
        Some("application/json"),
        "{what}: {status} {}",
        String::from_utf8_lossy(body)
    );
    let error: ErrorBody = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{what}: not an error body ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    assert!(
        !error.code.is_empty() && !error.message.is_empty(),
        "{what}: {error:?}"
    );
    error
}

fn retry_after(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok())
}

/// A request whose body never ends: its handler waits on it for as long as it is allowed to.
fn never_ending(uri: &str) -> Request<Body> {
    let body = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn a_request_not_answered_in_time_is_a_503_json_with_retry_after() {
    let limits = Limits {
        request_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let app = app(limits, V03Errors::Json, StoreOptions::default()).await;
    for uri in ["/v1/environments", "/v1/prod/environments"] {
        let (status, headers, body) = send(&app.router, never_ending(uri)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        let error = json_error(uri, status, &headers, &body);
        assert_eq!(error.code, "RequestTimeout");
        assert_eq!(retry_after(&headers), Some("1"));
    }
}

#[tokio::test]
async fn requests_past_max_in_flight_are_a_503_json_with_retry_after_and_probes_still_answer() {
    let limits = Limits {
        max_in_flight: 1,
        ..Limits::default()
    };
    let app = app(limits, V03Errors::Json, StoreOptions::default()).await;
    // One request holds the only place until it is dropped.
    let router = app.router.clone();
    let held = {
        let router = router.clone();
        tokio::spawn(async move { send(&router, never_ending("/v1/environments")).await })
    };
    wait_until("the server is full", DEADLINE, || {
        let router = router.clone();
        async move { get(&router, "/v1/tasks").await.0 == StatusCode::SERVICE_UNAVAILABLE }
    })
    .await;
    let (status, headers, body) = get(&app.router, "/v1/tasks").await;
    let error = json_error("a request past the limit", status, &headers, &body);
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "TooManyRequests")
    );
    assert_eq!(retry_after(&headers), Some("1"));
    for probe in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(&app.router, probe).await.0, StatusCode::OK, "{probe}");
    }
    // The held request goes away: its place is given back.
    held.abort();
    wait_until("a request is answered again", DEADLINE, || {
        let router = router.clone();
        async move { get(&router, "/v1/tasks").await.0 == StatusCode::OK }
    })
    .await;
}

#[tokio::test]
async fn streams_past_max_streams_are_a_503_json_with_retry_after() {
    let limits = Limits {
        max_streams: 1,
        ..Limits::default()
    };
    let app = app(limits, V03Errors::Json, StoreOptions::default()).await;
    let first = app
        .router
        .clone()
        .oneshot(Request::get("/v1/stream/tasks").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let (status, headers, body) = get(&app.router, "/v1/stream/instances").await;
    let error = json_error("a stream past the limit", status, &headers, &body);
    assert_eq!(
        (status, error.code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "TooManyStreams")
    );
    assert_eq!(retry_after(&headers), Some("1"));
    // Lists still answer: streams do not count as requests in flight.
    assert_eq!(get(&app.router, "/v1/tasks").await.0, StatusCode::OK);
    drop(first);
    let router = app.router.clone();
    wait_until("the closed stream's place is free", DEADLINE, || {
        let router = router.clone();
        async move {
            let response = router
                .oneshot(Request::get("/v1/stream/tasks").body(Body::empty()).unwrap())
                .await
                .unwrap();
            response.status() == StatusCode::OK
        }
    })
    .await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_json_and_v03_text_on_request() {
    let limits = Limits {
        max_body_bytes: 1024,
        ..Limits::default()
    };
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(4096));
    let post = |uri: &str| {
        Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(big.clone()))
            .unwrap()
    };
    let json = app(limits.clone(), V03Errors::Json, StoreOptions::default()).await;
    for uri in [
        "/v1/environments",
        "/v1/prod/environments",
        "/v1/prod/environments/web/rollback",
    ] {
        let (status, headers, body) = send(&json.router, post(uri)).await;
        let error = json_error(uri, status, &headers, &body);
        assert_eq!(
            (status, error.code.as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, "BodyTooLarge"),
            "{uri}"
        );
        assert_eq!(error.field.as_deref(), Some("body"));
        assert!(error.message.contains("1024 bytes"), "{error:?}");
    }
    // v0.3's routes answer v0.3's plain text when asked to, limits included.
    let text = app(limits, V03Errors::Text, StoreOptions::default()).await;
    let (status, headers, body) = send(&text.router, post("/v1/environments")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        headers.get(header::CONTENT_TYPE).unwrap(),
        "text/plain; charset=utf-8"
    );
    assert!(String::from_utf8_lossy(&body).contains("1024 bytes"));
}

#[tokio::test]
async fn every_rejection_is_a_json_error() {
    let app = default_app().await;
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        // Paths that are not UTF-8 once decoded, on every kind of route.
        (
            Request::get("/v1/tasks/%FF/x").body(Body::empty()).unwrap(),
            StatusCode::BAD_REQUEST,
            "InvalidPath",
        ),
        (
            Request::get("/v1/instances/prod/%C3%28")
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "InvalidPath",
        ),
        (
            Request::get("/v1/environments/%FF").body(Body::empty()).unwrap(),
            StatusCode::BAD_REQUEST,
            "InvalidPath",
        ),
        (
            Request::get("/v1/environments/a/deployments/%FF")
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "InvalidPath",
        ),
        (
            Request::get("/v1/%FF/environments").body(Body::empty()).unwrap(),
            StatusCode::BAD_REQUEST,
            "InvalidPath",
        ),
        (
            Request::delete("/v1/dead-letters/%FF")
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "InvalidPath",
        ),
        // Routing.
        (
            Request::get("/nowhere").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
            "UnknownRoute",
        ),
        (
            Request::patch("/v1/tasks").body(Body::empty()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
        ),
        // Query strings.
        (
            Request::get("/v1/tasks?maxResults=0")
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "InvalidMaxResults",
        ),
        (
            Request::get("/v1/stream/tasks?heartbeat=loud")
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "InvalidHeartbeat",
        ),
    ];
    for (request, want_status, want_code) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let (status, headers, body) = send(&app.router, request).await;
        let error = json_error(&what, status, &headers, &body);
        assert_eq!(
            (status, error.code.as_str()),
            (want_status, want_code),
            "{what}: {error:?}"
        );
    }
    // Bodies that do not parse name the body, whatever their content type says.
    for (content_type, body) in [
        ("application/json", "{"),
        ("text/plain", "{}"),
        ("application/json", "\u{0}"),
    ] {
        let request = Request::post("/v1/prod/environments")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        let (status, headers, answer) = send(&app.router, request).await;
        let error = json_error(content_type, status, &headers, &answer);
        assert!(status.is_client_error(), "{status} {error:?}");
    }
}

#[tokio::test]
async fn dead_letters_come_a_page_at_a_time() {
    let app = default_app().await;
    let letters = (0..150)
        .map(|i| {
            Write::Park(DeadLetter {
                id: 0,
                message_id: Some(format!("m{i}")),
                received_at: "2026-12-01T00:00:00.000Z".into(),
                reason: "not JSON".into(),
                body: "x".repeat(100),
            })
        })
        .collect();
    app.store.apply(letters).await.unwrap();
    let page = |uri: String| {
        let router = app.router.clone();
        async move {
            let (status, _, body) = get(&router, &uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            serde_json::from_slice::<blox_api::DeadLetters>(&body).unwrap()
        }
    };
    let first = page("/v1/dead-letters".into()).await;
    assert_eq!(first.items.len(), blox_server::api::DEAD_LETTER_PAGE);
    let token = first.next_token.expect("a token for the rest");
    let rest = page(format!("/v1/dead-letters?nextToken={token}")).await;
    assert_eq!((rest.items.len(), rest.next_token), (50, None));
    let mut ids: Vec<String> = first.items.into_iter().chain(rest.items).map(|d| d.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 150, "every letter once");
    let all = page("/v1/dead-letters?maxResults=500".into()).await;
    assert_eq!((all.items.len(), all.next_token), (150, None));
}

fn task(cluster: &str, id: &str, version: u64) -> Write {
    let task = Task {
        version,
        last_status: "RUNNING".into(),
        ..entities::task(cluster, id)
    };
    Write::Upsert(documents::task(ClusterName::new(cluster).unwrap(), &task))
}

/// Reads a stream's lines (without their newline) until one satisfies `done`, while `busy` writes go
/// on to another cluster.
async fn read_until_heartbeat(app: &App, uri: &str, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let response = app
        .router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{uri}");
    let mut body = response.into_body().into_data_stream();
    // Changes that do not match keep going by while the stream is read.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (app.store.clone(), stop.clone());
        tokio::spawn(async move {
            for n in 0..10_000u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                store
                    .apply(vec![task("busy", &format!("t{}", n % 20), n + 1)])
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let line = next_line(&mut body, &mut Vec::new(), done).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    line
}

#[tokio::test]
async fn a_filtered_stream_sends_heartbeats_while_other_changes_go_by() {
    let app = default_app().await;
    app.store.apply(vec![task("quiet", "q1", 1)]).await.unwrap();
    // Without `heartbeat=position`: empty lines, as v0.3's clients expect.
    let line = read_until_heartbeat(&app, "/v1/stream/tasks?cluster=quiet", |_| true).await;
    assert_eq!(line, b"");
}

#[tokio::test]
async fn position_heartbeats_let_a_quiet_filter_resume_past_a_compacted_log() {
    let store = StoreOptions {
        change_log_retention: 50,
        ..StoreOptions::default()
    };
    let app = app(Limits::default(), V03Errors::Json, store).await;
    app.store.apply(vec![task("quiet", "q1", 1)]).await.unwrap();
    let last_record = app.store.log_bounds().await.unwrap().head;
    let heartbeat = |line: &[u8]| serde_json::from_slice::<blox_api::StreamHeartbeat>(line).ok();
    // Read until the stream's position has moved past what the log retains from its last record.
    let line = read_until_heartbeat(
        &app,
        &format!("/v1/stream/tasks?cluster=quiet&heartbeat=position&entityVersion={last_record}"),
        |line| {
            heartbeat(line)
                .and_then(|h| h.heartbeat.entity_version.parse::<u64>().ok())
                .is_some_and(|n| n > last_record + 100)
        },
    )
    .await;
    let position = heartbeat(&line).unwrap().heartbeat.entity_version;
    // The last record's version is gone from the log; the heartbeat's is not.
    let (status, _, _) = get(
        &app.router,
        &format!("/v1/stream/tasks?cluster=quiet&entityVersion={last_record}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let resumed = app
        .router
        .clone()
        .oneshot(
            Request::get(format!("/v1/stream/tasks?cluster=quiet&entityVersion={position}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::OK);
}

/// The next line of a stream's `body` that `wanted` takes (its newline dropped), reading into
/// `buffer` what comes after it.
async fn next_line(
    body: &mut (impl futures::Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin),
    buffer: &mut Vec<u8>,
    wanted: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).take(end).collect();
                if wanted(&line) {
                    return line;
                }
                continue;
            }
            let chunk = body.next().await.expect("the stream stays open").unwrap();
            buffer.extend_from_slice(&chunk);
        }
    })
    .await
    .expect("the line in time")
}

/// A position heartbeat names the next version to read, and a resume is inclusive: resuming from it
/// repeats nothing, even when the last change the stream read is one it sent.
#[tokio::test]
async fn resuming_from_a_position_heartbeat_repeats_nothing() {
    let app = default_app().await;
    app.store.apply(vec![task("quiet", "q1", 1)]).await.unwrap();
    let q1 = app.store.log_bounds().await.unwrap().head;
    let open = |from: u64| {
        let router = app.router.clone();
        async move {
            let uri = format!("/v1/stream/tasks?cluster=quiet&heartbeat=position&entityVersion={from}");
            let response = router
                .oneshot(Request::get(uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.into_body().into_data_stream()
        }
    };
    let heartbeat = |line: &[u8]| serde_json::from_slice::<blox_api::StreamHeartbeat>(line).ok();
    let record = |line: &[u8]| serde_json::from_slice::<serde_json::Value>(line).unwrap();
    let (mut body, mut buffer) = (open(q1).await, Vec::new());
    // From q1's own version: q1 comes (inclusive), then, nothing else changing, a heartbeat.
    let first = next_line(&mut body, &mut buffer, |line| !line.is_empty()).await;
    assert_eq!(record(&first)["metadata"]["entityVersion"], q1.to_string());
    let line = next_line(&mut body, &mut buffer, |line| heartbeat(line).is_some()).await;
    let position = heartbeat(&line).unwrap().heartbeat.entity_version;
    assert_eq!(
        position,
        (q1 + 1).to_string(),
        "the version after the last one read"
    );

    let (mut body, mut buffer) = (open(position.parse().unwrap()).await, Vec::new());
    app.store.apply(vec![task("quiet", "q2", 1)]).await.unwrap();
    let next = next_line(&mut body, &mut buffer, |line| {
        !line.is_empty() && heartbeat(line).is_none()
    })
    .await;
    let next = record(&next);
    assert!(
        next["entity"]["taskARN"].as_str().unwrap().ends_with("/q2"),
        "{next}"
    );
}

/// ECS that refuses everything with AWS's text, which names the account and the role.
struct DeniedEcs;

const DENIED: &str = "AccessDeniedException: User: arn:aws:sts::123456789012:assumed-role/blox-role/i-0abc \
                      is not authorized to perform: ecs:ListContainerInstances";

fn denied(operation: &'static str) -> EcsError {
    EcsError {
        operation,
        cluster: Some("prod".into()),
        kind: EcsErrorKind::Other(DENIED.into()),
    }
}

#[async_trait]
impl EcsReader for DeniedEcs {
    async fn list_clusters(&self) -> Result<Vec<String>, EcsError> {
        Ok(vec!["arn:aws:ecs:us-east-1:123456789012:cluster/prod".into()])
    }
    async fn list_page(&self, _: &str, _: Listing, _: Option<&str>) -> Result<ListPage, EcsError> {
        Err(denied("ListContainerInstances"))
    }
    async fn describe_container_instances(
        &self,
        _: &str,
        _: &[String],
    ) -> Result<Vec<ContainerInstance>, EcsError> {
        Err(denied("DescribeContainerInstances"))
    }
    async fn describe_tasks(&self, _: &str, _: &[String]) -> Result<Vec<Task>, EcsError> {
        Err(denied("DescribeTasks"))
    }
    async fn list_started_tasks(&self, _: &str, _: &str, _: &str) -> Result<Vec<String>, EcsError> {
        Err(denied("ListTasks"))
    }
}

#[tokio::test]
async fn readyz_names_failing_clusters_without_aws_text() {
    let store = Arc::new(MemStore::new(StoreOptions::default()));
    let readiness = Arc::new(ReadinessState::default());
    let reconciler = Reconciler::new(
        store.clone(),
        Arc::new(DeniedEcs),
        ReconcileOptions::default(),
        readiness.clone(),
    );
    let report = reconciler.pass().await;
    assert!(
        report.failures[0].1.contains("AccessDenied"),
        "the log has it all: {report:?}"
    );
    let mut state = AppState::new(store, None, CancellationToken::new())
        .await
        .unwrap();
    state.readiness = readiness;
    let (status, _, body) = get(&blox_server::router(state), "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    for secret in ["123456789012", "arn:", "AccessDenied", "blox-role", "authorized"] {
        assert!(!text.contains(secret), "/readyz shows {secret:?}: {text}");
    }
    let readiness: Readiness = serde_json::from_slice(&body).unwrap();
    assert_eq!(readiness.failing_clusters.len(), 1);
    assert_eq!(readiness.failing_clusters[0].cluster, "prod");
    assert_eq!(
        readiness.failing_clusters[0].reason,
        "an ECS call failed; see the server log"
    );
}

/// Sends `GET /healthz` on a kept-alive connection and reads the answer's status line.
async fn healthz_on(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: blox\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "the connection closed");
        answer.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn connections_past_max_connections_wait_until_one_closes() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let app = app(limits.clone(), V03Errors::Json, StoreOptions::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = {
        let (router, shutdown) = (app.router.clone(), shutdown.clone());
        tokio::spawn(
            async move { blox_server::limits::serve_http(listener, router, &limits, shutdown).await },
        )
    };
    // Two kept-alive connections hold both places.
    let mut first = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(address).await.unwrap();
    assert_eq!(healthz_on(&mut first).await, "HTTP/1.1 200 OK");
    assert_eq!(healthz_on(&mut second).await, "HTTP/1.1 200 OK");
    // A third waits in the kernel's queue: the server does not accept it while both are open.
    let mut third = tokio::net::TcpStream::connect(address).await.unwrap();
    let answer = tokio::spawn(async move { healthz_on(&mut third).await });
    let at_limit = || async {
        blox_server::metrics::handle()
            .render()
            .lines()
            .any(|l| l.starts_with(blox_server::metrics::HTTP_CONNECTIONS_AT_LIMIT) && !l.ends_with(" 0"))
    };
    wait_until("the server waits at its connection limit", DEADLINE, at_limit).await;
    assert!(
        !answer.is_finished(),
        "the third connection was served past the limit"
    );
    // One closes: the third is accepted and answered.
    drop(first);
    let status = tokio::time::timeout(DEADLINE, answer)
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    drop(second);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// Nagle's algorithm would hold an answer's last small write until the client's delayed ACK (up to
/// 40 ms), so the server turns it off on every connection it accepts.
#[tokio::test]
async fn connections_are_accepted_with_nagle_off() {
    use axum::serve::Listener as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut listener = blox_server::limits::without_nagle(listener);
    let _client = tokio::net::TcpStream::connect(address).await.unwrap();
    let (accepted, _) = listener.accept().await;
    assert!(
        accepted.nodelay().unwrap(),
        "an accepted connection has Nagle's algorithm on"
    );
}
