//! The REST API in-process (axum `oneshot` over an in-memory store): answers, filters, pagination,
//! errors and streams.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use blox_model::{Attribute, ClusterName, ContainerInstance, Resource, Task};
use blox_server::{AppState, ReadinessState, StreamOptions, documents};
use blox_store::{Key, Kind, MemStore, Store, StoreOptions, Write};
use blox_testkit::entities::{self, ACCOUNT};
use blox_testkit::wait_until;
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Long-format ARNs for `prod`, short ones elsewhere, so both formats are served.
fn task_arn(cluster: &str, id: &str) -> String {
    if cluster == "prod" {
        entities::task_arn(cluster, id)
    } else {
        format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task/{id}")
    }
}

fn task(cluster: &str, id: &str, status: &str, started_by: Option<&str>, version: u64) -> Task {
    Task {
        created_at: Some("2026-11-25T10:00:00.000Z".into()),
        desired_status: if status == "STOPPED" { "STOPPED" } else { "RUNNING" }.into(),
        last_status: status.into(),
        task_arn: task_arn(cluster, id),
        started_by: started_by.map(String::from),
        launch_type: Some("EC2".into()),
        version,
        ..entities::task(cluster, id)
    }
}

fn instance(cluster: &str, id: &str, status: &str, version: u64) -> ContainerInstance {
    ContainerInstance {
        agent_connected: status != "INACTIVE",
        attributes: vec![Attribute {
            name: "ecs.instance-type".into(),
            value: Some("m5.large".into()),
        }],
        ec2_instance_id: Some(format!("i-{id}")),
        registered_resources: vec![Resource {
            name: "CPU".into(),
            kind: "INTEGER".into(),
            value: "2048".into(),
        }],
        remaining_resources: vec![Resource {
            name: "CPU".into(),
            kind: "INTEGER".into(),
            value: "1024".into(),
        }],
        status: status.into(),
        running_tasks_count: Some(1),
        pending_tasks_count: Some(0),
        registered_at: None,
        version,
        ..entities::instance(cluster, id)
    }
}

fn name(cluster: &str) -> ClusterName {
    ClusterName::new(cluster).unwrap()
}

struct Fixture {
    store: Arc<MemStore>,
    state: AppState,
    app: Router,
}

async fn fixture_with(options: StoreOptions) -> Fixture {
    let store = Arc::new(MemStore::new(options));
    let mut writes = Vec::new();
    for (cluster, id, status, started_by) in [
        ("prod", "a1", "RUNNING", Some("blox-daemon")),
        ("prod", "a2", "PENDING", Some("blox-daemon")),
        ("prod", "a3", "STOPPED", None),
        ("dev", "b1", "RUNNING", Some("ecs-svc/123")),
        ("dev", "b2", "RUNNING", Some("blox-daemon")),
    ] {
        writes.push(Write::Upsert(documents::task(
            name(cluster),
            &task(cluster, id, status, started_by, 1),
        )));
    }
    for (cluster, id, status) in [
        ("prod", "i1", "ACTIVE"),
        ("prod", "i2", "DRAINING"),
        ("dev", "i3", "INACTIVE"),
    ] {
        writes.push(Write::Upsert(documents::instance(
            name(cluster),
            &instance(cluster, id, status, 1),
        )));
    }
    store.apply(writes).await.unwrap();
    let readiness = Arc::new(ReadinessState::default());
    readiness.ready_without_reconcile();
    let mut state = AppState::new(store.clone(), None, CancellationToken::new())
        .await
        .unwrap();
    state.readiness = readiness;
    state.stream = StreamOptions {
        heartbeat: Duration::from_millis(200),
        ..StreamOptions::default()
    };
    let app = blox_server::router(state.clone());
    Fixture { store, state, app }
}

async fn fixture() -> Fixture {
    fixture_with(StoreOptions::default()).await
}

async fn call(app: &Router, uri: &str) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{uri}: {e}: {bytes:?}"))
    };
    (status, value)
}

/// ARNs of a list answer, in order.
fn arns(body: &Value, field: &str) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["entity"][field]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn list_answers_match_snapshots() {
    let f = fixture().await;
    for (name, uri) in [
        ("tasks_all", "/v1/tasks"),
        ("instances_all", "/v1/instances"),
        (
            "task_get_long_arn",
            "/v1/tasks/prod/arn:aws:ecs:us-east-1:123456789012:task/prod/a1",
        ),
        (
            "instance_get",
            "/v1/instances/prod/arn:aws:ecs:us-east-1:123456789012:container-instance/prod/i2",
        ),
    ] {
        let (status, body) = call(&f.app, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        insta::assert_json_snapshot!(name, body);
    }
}

#[tokio::test]
async fn filters() {
    let f = fixture().await;
    let cases: &[(&str, &str, &[&str])] = &[
        ("/v1/tasks", "taskARN", &["b1", "b2", "a1", "a2", "a3"]),
        ("/v1/tasks?cluster=prod", "taskARN", &["a1", "a2", "a3"]),
        (
            "/v1/tasks?cluster=arn:aws:ecs:us-east-1:123456789012:cluster/dev",
            "taskARN",
            &["b1", "b2"],
        ),
        ("/v1/tasks?status=running", "taskARN", &["b1", "b2", "a1"]),
        ("/v1/tasks?status=RUNNING&cluster=prod", "taskARN", &["a1"]),
        ("/v1/tasks?status=pending", "taskARN", &["a2"]),
        ("/v1/tasks?status=stopped", "taskARN", &["a3"]),
        ("/v1/tasks?status=provisioning", "taskARN", &[]),
        ("/v1/tasks?startedBy=blox-daemon", "taskARN", &["b2", "a1", "a2"]),
        (
            "/v1/tasks?startedBy=blox-daemon&cluster=prod",
            "taskARN",
            &["a1", "a2"],
        ),
        (
            "/v1/tasks?startedBy=blox-daemon&status=running",
            "taskARN",
            &["b2", "a1"],
        ),
        ("/v1/tasks?startedBy=ecs-svc/123", "taskARN", &["b1"]),
        // Values ECS never gives a task match nothing, as in v0.3 (exact match), NUL included.
        ("/v1/tasks?startedBy=blox%20daemon", "taskARN", &[]),
        ("/v1/tasks?startedBy=blox-daemon%00", "taskARN", &[]),
        ("/v1/tasks?startedBy=%F0%9F%A6%80", "taskARN", &[]),
        ("/v1/tasks?cluster=nope", "taskARN", &[]),
        ("/v1/instances", "containerInstanceARN", &["i3", "i1", "i2"]),
        ("/v1/instances?status=draining", "containerInstanceARN", &["i2"]),
        (
            "/v1/instances?status=active&cluster=prod",
            "containerInstanceARN",
            &["i1"],
        ),
        ("/v1/instances?status=inactive", "containerInstanceARN", &["i3"]),
        ("/v1/instances?cluster=dev", "containerInstanceARN", &["i3"]),
    ];
    for (uri, field, want) in cases {
        let (status, body) = call(&f.app, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        let mut got = arns(&body, field);
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{uri}");
    }
}

#[tokio::test]
async fn bad_input_answers_400_or_404_naming_the_field() {
    let f = fixture().await;
    let cases: &[(&str, u16, &str, Option<&str>)] = &[
        (
            "/v1/tasks?colour=red",
            400,
            "UnsupportedParameter",
            Some("colour"),
        ),
        (
            "/v1/tasks?status=running&status=stopped",
            400,
            "RepeatedParameter",
            Some("status"),
        ),
        (
            "/v1/tasks?cluster=a&cluster=b",
            400,
            "RepeatedParameter",
            Some("cluster"),
        ),
        ("/v1/tasks?status=sleeping", 400, "InvalidStatus", Some("status")),
        ("/v1/tasks?status=draining", 400, "InvalidStatus", Some("status")),
        (
            "/v1/tasks?cluster=bad%20name",
            400,
            "InvalidCluster",
            Some("cluster"),
        ),
        (
            "/v1/tasks?cluster=arn:aws:ecs:us-east-1:1:cluster/x",
            400,
            "InvalidCluster",
            Some("cluster"),
        ),
        ("/v1/tasks?startedBy=", 400, "InvalidStartedBy", Some("startedBy")),
        (
            "/v1/tasks?maxResults=0",
            400,
            "InvalidMaxResults",
            Some("maxResults"),
        ),
        (
            "/v1/tasks?maxResults=x",
            400,
            "InvalidMaxResults",
            Some("maxResults"),
        ),
        (
            "/v1/tasks?nextToken=%%",
            400,
            "InvalidNextToken",
            Some("nextToken"),
        ),
        (
            "/v1/tasks?nextToken=***",
            400,
            "InvalidNextToken",
            Some("nextToken"),
        ),
        (
            "/v1/instances?startedBy=x",
            400,
            "UnsupportedParameter",
            Some("startedBy"),
        ),
        (
            "/v1/instances?status=running",
            400,
            "InvalidStatus",
            Some("status"),
        ),
        ("/v1/instances?cluster=", 400, "InvalidCluster", Some("cluster")),
        (
            "/v1/tasks/bad%20cluster/arn:aws:ecs:us-east-1:123456789012:task/prod/a1",
            400,
            "InvalidCluster",
            Some("cluster"),
        ),
        ("/v1/tasks/prod/not-an-arn", 400, "InvalidArn", Some("arn")),
        (
            "/v1/tasks/prod/arn:aws:ecs:us-east-1:123456789012:container-instance/prod/i1",
            400,
            "InvalidArn",
            Some("arn"),
        ),
        (
            "/v1/tasks/dev/arn:aws:ecs:us-east-1:123456789012:task/prod/a1",
            400,
            "ClusterMismatch",
            Some("arn"),
        ),
        (
            "/v1/tasks/prod/arn:aws:ecs:us-east-1:123456789012:task/prod/zzz",
            404,
            "TaskNotFound",
            None,
        ),
        (
            "/v1/tasks/other/arn:aws:ecs:us-east-1:123456789012:task/b1",
            404,
            "TaskNotFound",
            None,
        ),
        (
            "/v1/instances/prod/arn:aws:ecs:us-east-1:123456789012:task/prod/a1",
            400,
            "InvalidArn",
            Some("arn"),
        ),
        (
            "/v1/instances/prod/arn:aws:ecs:us-east-1:123456789012:container-instance/prod/nope",
            404,
            "InstanceNotFound",
            None,
        ),
        (
            "/v1/stream/tasks?entityVersion=-1",
            400,
            "InvalidEntityVersion",
            Some("entityVersion"),
        ),
        (
            "/v1/stream/tasks?entityVersion=abc",
            400,
            "InvalidEntityVersion",
            Some("entityVersion"),
        ),
        (
            "/v1/stream/tasks?entityVersion=999999",
            400,
            "EntityVersionOutOfRange",
            Some("entityVersion"),
        ),
        (
            "/v1/stream/tasks?since=1",
            400,
            "UnsupportedParameter",
            Some("since"),
        ),
        (
            "/v1/stream/instances?cluster=%20",
            400,
            "InvalidCluster",
            Some("cluster"),
        ),
        ("/v1/dead-letters/abc", 405, "", None),
        (
            "/v1/dead-letters?maxResults=0",
            400,
            "InvalidMaxResults",
            Some("maxResults"),
        ),
        ("/v1/task", 404, "UnknownRoute", None),
        ("/v1/tasks/prod", 404, "UnknownRoute", None),
        ("/v1/tasks/prod/", 404, "UnknownRoute", None),
        (
            "/v1/instances/arn:aws:ecs:us-east-1:123456789012:cluster/prod",
            400,
            "InvalidCluster",
            Some("cluster"),
        ),
        (
            "/v1/instances/prod/arn:aws:ecs:us-east-1:123456789012:cluster/prod",
            400,
            "InvalidArn",
            Some("arn"),
        ),
    ];
    for (uri, status, code, field) in cases {
        let (got_status, body) = call(&f.app, uri).await;
        assert_eq!(got_status.as_u16(), *status, "{uri}: {body}");
        if *status == 405 {
            continue;
        }
        assert_eq!(body["code"], *code, "{uri}: {body}");
        assert_eq!(body["field"].as_str(), *field, "{uri}: {body}");
        assert!(!body["message"].as_str().unwrap().is_empty(), "{uri}");
    }
}

#[tokio::test]
async fn gets_accept_cluster_arns_and_encoded_arns() {
    let f = fixture().await;
    for uri in [
        "/v1/instances/arn:aws:ecs:us-east-1:123456789012:cluster/prod/arn:aws:ecs:us-east-1:123456789012:container-instance/prod/i1",
        "/v1/tasks/prod/arn:aws:ecs:us-east-1:123456789012:task/prod/a1",
        "/v1/tasks/arn:aws:ecs:us-east-1:123456789012:cluster%2Fprod/arn:aws:ecs:us-east-1:123456789012:task/prod/a1",
        "/v1/tasks/arn:aws:ecs:us-east-1:123456789012:cluster/prod/arn:aws:ecs:us-east-1:123456789012:task/prod/a1",
        "/v1/tasks/arn%3Aaws%3Aecs%3Aus-east-1%3A123456789012%3Acluster%2Fprod/arn%3Aaws%3Aecs%3Aus-east-1%3A123456789012%3Atask%2Fprod%2Fa1",
        "/v1/tasks/prod/arn%3Aaws%3Aecs%3Aus-east-1%3A123456789012%3Atask%2Fprod%2Fa1",
        "/v1/tasks/dev/arn:aws:ecs:us-east-1:123456789012:task/b1",
    ] {
        let (status, body) = call(&f.app, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        assert!(
            body["metadata"]["entityVersion"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .is_ok()
        );
    }
}

#[tokio::test]
async fn pagination_walks_every_item_once() {
    let f = fixture().await;
    for base in [
        "/v1/tasks?",
        "/v1/tasks?startedBy=blox-daemon&",
        "/v1/tasks?status=running&",
        "/v1/instances?",
    ] {
        let (_, all) = call(&f.app, base.trim_end_matches(['&', '?'])).await;
        let field = if base.contains("instances") {
            "containerInstanceARN"
        } else {
            "taskARN"
        };
        let want = arns(&all, field);
        for size in 1..=4 {
            let mut got = Vec::new();
            let mut uri = format!("{base}maxResults={size}");
            loop {
                let (status, body) = call(&f.app, &uri).await;
                assert_eq!(status, StatusCode::OK, "{uri}: {body}");
                assert!(body["items"].as_array().unwrap().len() <= size);
                got.extend(arns(&body, field));
                match body["nextToken"].as_str() {
                    Some(token) => uri = format!("{base}maxResults={size}&nextToken={token}"),
                    None => break,
                }
            }
            assert_eq!(got, want, "{base} by {size}");
        }
    }
}

#[tokio::test]
async fn unbounded_lists_stream_across_store_pages() {
    // More than one internal page (1,000) must come back whole and in order.
    let f = fixture().await;
    let writes = (0..2_500)
        .map(|n| {
            Write::Upsert(documents::task(
                name("big"),
                &task("big", &format!("t{n:05}"), "RUNNING", None, 1),
            ))
        })
        .collect();
    f.store.apply(writes).await.unwrap();
    let (status, body) = call(&f.app, "/v1/tasks?cluster=big").await;
    assert_eq!(status, StatusCode::OK);
    let got = arns(&body, "taskARN");
    assert_eq!(got.len(), 2_500);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert!(body.get("nextToken").is_none());
}

#[tokio::test]
async fn operational_endpoints() {
    let f = fixture().await;
    let (status, body) = call(&f.app, "/healthz").await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (status, body) = call(&f.app, "/readyz").await;
    assert_eq!((status, body["ready"].as_bool()), (StatusCode::OK, Some(true)));
    let (status, body) = call(&f.app, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["paths"]["/v1/tasks"].is_object());
    let response = f
        .app
        .clone()
        .oneshot(Request::get("/docs/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    call(&f.app, "/v1/tasks?status=sleeping").await;
    let response = f
        .app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(
        text.contains("blox_api_requests_total{route=\"/v1/tasks\",status=\"400\"}"),
        "{text}"
    );
    assert!(text.contains("blox_entities{kind=\"task\"} 5"), "{text}");
}

#[tokio::test]
async fn readyz_is_503_until_the_first_pass() {
    let f = fixture().await;
    let state = AppState {
        readiness: Arc::new(ReadinessState::default()),
        ..f.state.clone()
    };
    let (status, body) = call(&blox_server::router(state), "/readyz").await;
    assert_eq!(
        (status, body["ready"].as_bool()),
        (StatusCode::SERVICE_UNAVAILABLE, Some(false))
    );
}

#[tokio::test]
async fn openapi_document_is_checked_in() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi/blox.json");
    let current = blox_server::openapi_json();
    if std::env::var_os("BLOX_UPDATE_OPENAPI").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &current).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == current,
        "openapi/blox.json is out of date: run `BLOX_UPDATE_OPENAPI=1 cargo test -p blox-server --test api openapi` and commit it"
    );
}

/// Reads NDJSON lines from a streaming response until `n` records have arrived.
async fn read_lines(
    body: &mut (impl futures::Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin),
    n: usize,
) -> Vec<Value> {
    let mut buffer = Vec::new();
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while records.len() < n {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("stream records in time")
            .expect("stream open")
            .unwrap();
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            records.push(serde_json::from_slice(&line).unwrap());
        }
    }
    records
}

async fn open_stream(
    app: &Router,
    uri: &str,
) -> (
    StatusCode,
    impl futures::Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin + use<>,
) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    (response.status(), response.into_body().into_data_stream())
}

#[tokio::test]
async fn stream_replays_then_goes_live_with_deletions() {
    let f = fixture().await;
    // Changes 1..=8 are the fixture; after 0 the replay holds its 5 tasks.
    let (status, mut body) = open_stream(&f.app, "/v1/stream/tasks?entityVersion=0").await;
    assert_eq!(status, StatusCode::OK);
    let replay = read_lines(&mut body, 5).await;
    let versions: Vec<u64> = replay
        .iter()
        .map(|r| r["metadata"]["entityVersion"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");

    // Live: an update, then a reconcile deletion.
    f.store
        .apply(vec![Write::Upsert(documents::task(
            name("prod"),
            &task("prod", "a2", "RUNNING", Some("blox-daemon"), 2),
        ))])
        .await
        .unwrap();
    let head = f.store.log_bounds().await.unwrap().head;
    f.store
        .apply(vec![Write::Delete {
            key: Key::task(name("dev"), task_arn("dev", "b1")),
            unchanged_since: head,
            at_ms: 0,
        }])
        .await
        .unwrap();
    let live = read_lines(&mut body, 2).await;
    assert_eq!(live[0]["entity"]["lastStatus"], "RUNNING");
    assert_eq!(live[0]["metadata"].get("deleted"), None);
    assert_eq!(live[1]["metadata"]["deleted"], true);
    assert!(live[1]["entity"]["taskARN"].as_str().unwrap().ends_with("/b1"));
}

#[tokio::test]
async fn stream_resumes_from_an_entity_version_inclusive_and_filters_by_cluster() {
    let f = fixture().await;
    let (_, all) = call(&f.app, "/v1/tasks?cluster=prod").await;
    let first: u64 = all["items"][0]["metadata"]["entityVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (status, mut body) = open_stream(
        &f.app,
        &format!("/v1/stream/tasks?cluster=prod&entityVersion={first}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let records = read_lines(&mut body, 2).await;
    let version = |r: &Value| {
        r["metadata"]["entityVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    // As v0.3's: the record resumed from comes again (at least once), then what followed it.
    assert_eq!(version(&records[0]), first);
    assert_eq!(records[0]["entity"], all["items"][0]["entity"]);
    assert!(version(&records[1]) > first);
    for r in &records {
        assert!(r["entity"]["clusterARN"].as_str().unwrap().ends_with("/prod"));
    }
    let (_, mut instances) = open_stream(
        &f.app,
        "/v1/stream/instances?entityVersion=0&cluster=arn:aws:ecs:us-east-1:123456789012:cluster/dev",
    )
    .await;
    let records = read_lines(&mut instances, 1).await;
    assert!(
        records[0]["entity"]["containerInstanceARN"]
            .as_str()
            .unwrap()
            .ends_with("/i3")
    );
}

#[tokio::test]
async fn stream_without_entity_version_starts_at_now() {
    let f = fixture().await;
    let (_, mut body) = open_stream(&f.app, "/v1/stream/tasks").await;
    f.store
        .apply(vec![Write::Upsert(documents::task(
            name("dev"),
            &task("dev", "new", "PENDING", None, 1),
        ))])
        .await
        .unwrap();
    let records = read_lines(&mut body, 1).await;
    assert!(
        records[0]["entity"]["taskARN"]
            .as_str()
            .unwrap()
            .ends_with("/new")
    );
}

/// v0.3 answered 400 "Entity version is out of range" to a compacted revision; so does blox, with a
/// code of its own.
#[tokio::test]
async fn stream_resume_point_older_than_the_log_is_400() {
    let f = fixture_with(StoreOptions {
        change_log_retention: 3,
        ..StoreOptions::default()
    })
    .await;
    let (status, body) = call(&f.app, "/v1/stream/tasks?entityVersion=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "EntityVersionCompacted");
    assert_eq!(body["field"], "entityVersion");
    let bounds = f.store.log_bounds().await.unwrap();
    let (status, _) = open_stream(
        &f.app,
        // The oldest change the log holds: the first a stream can start from (inclusive).
        &format!("/v1/stream/tasks?entityVersion={}", bounds.oldest_resumable + 1),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_slow_client_never_stalls_writers_and_a_gone_client_is_freed() {
    let f = fixture().await;
    let (_, body) = open_stream(&f.app, "/v1/stream/tasks?entityVersion=0").await;
    let open = |n: usize| {
        let open = f.state.stream.open.clone();
        move || {
            let open = open.clone();
            async move { open.load(std::sync::atomic::Ordering::SeqCst) == n }
        }
    };
    wait_until("the stream's pump runs", Duration::from_secs(10), open(1)).await;
    // Nobody reads this stream: writes must all commit regardless.
    for n in 0..50 {
        let writes = (0..100)
            .map(|i| {
                Write::Upsert(documents::task(
                    name("load"),
                    &task("load", &format!("t{n}-{i}"), "RUNNING", None, 1),
                ))
            })
            .collect();
        f.store.apply(writes).await.unwrap();
    }
    assert_eq!(f.store.count(Kind::Task).await.unwrap(), 5 + 5_000);
    // The reader drops the connection: its pump ends and nothing is left open.
    drop(body);
    wait_until("the dropped stream's pump ends", Duration::from_secs(10), open(0)).await;
}

/// `?filter=`: a cluster query over the instances, answered from the view (which follows writes),
/// in the listing's order, paged, with the query's errors naming the column.
#[tokio::test]
async fn instances_filtered_by_a_cluster_query() {
    let store = Arc::new(MemStore::new(StoreOptions::default()));
    let typed = |cluster: &str, id: &str, kind: &str, agent: &str| ContainerInstance {
        attributes: vec![
            Attribute {
                name: "ecs.instance-type".into(),
                value: Some(kind.into()),
            },
            Attribute {
                name: "stack".into(),
                value: Some(if id.ends_with('1') { "prod" } else { "dev" }.into()),
            },
        ],
        version_info: blox_model::VersionInfo {
            agent_version: Some(agent.into()),
            ..Default::default()
        },
        ..entities::instance(cluster, id)
    };
    let mut writes = vec![
        Write::Upsert(documents::instance(
            name("prod"),
            &typed("prod", "i1", "m5.large", "1.70.0"),
        )),
        Write::Upsert(documents::instance(
            name("prod"),
            &typed("prod", "i2", "c5.xlarge", "1.89.0"),
        )),
        Write::Upsert(documents::instance(
            name("prod"),
            &typed("prod", "i3", "m5.xlarge", "1.89.0"),
        )),
        Write::Upsert(documents::instance(
            name("dev"),
            &typed("dev", "i1", "m5.large", "1.89.0"),
        )),
    ];
    // A batch job on prod/i3, a stopped one on prod/i1.
    for (id, instance, status) in [("t1", "i3", "RUNNING"), ("t2", "i1", "STOPPED")] {
        let task = Task {
            group: Some("batch".into()),
            container_instance_arn: Some(entities::instance_arn("prod", instance)),
            last_status: status.into(),
            ..entities::task("prod", id)
        };
        writes.push(Write::Upsert(documents::task(name("prod"), &task)));
    }
    store.apply(writes).await.unwrap();
    let state = AppState::new(store.clone(), None, CancellationToken::new())
        .await
        .unwrap();
    let app = blox_server::router(state.clone());
    let ids = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let arn = i["entity"]["containerInstanceARN"].as_str().unwrap();
                let mut parts = arn.rsplit('/');
                let id = parts.next().unwrap();
                format!("{}/{id}", parts.next().unwrap())
            })
            .collect()
    };
    let get = |query: &str| {
        format!(
            "/v1/instances?{}",
            serde_urlencoded::to_string([("filter", query)]).unwrap()
        )
    };
    for (query, extra, want) in [
        (
            "ec2InstanceType =~ m5.*",
            "",
            &["dev/i1", "prod/i1", "prod/i3"][..],
        ),
        (
            "ec2InstanceType =~ m5.*",
            "&cluster=prod",
            &["prod/i1", "prod/i3"],
        ),
        (
            "agentVersion >= 1.80.0 and attribute:stack == dev",
            "",
            &["prod/i2", "prod/i3"],
        ),
        ("task:group == batch", "", &["prod/i3"]),
        (
            "not(task:group == batch) and attribute:stack == prod",
            "",
            &["dev/i1", "prod/i1"],
        ),
        (
            "task:group != batch",
            "&status=active",
            &["dev/i1", "prod/i1", "prod/i2"],
        ),
        ("task:group != batch", "&status=draining", &[]),
        ("attribute:gpu exists", "", &[]),
    ] {
        let (status, body) = call(&app, &format!("{}{extra}", get(query))).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        assert_eq!(ids(&body), want, "{query}{extra}");
    }

    // Paged: two, then the rest, then nothing more.
    let (_, first) = call(&app, &format!("{}&maxResults=2", get("agentConnected == true"))).await;
    assert_eq!(ids(&first), ["dev/i1", "prod/i1"]);
    let token = first["nextToken"].as_str().expect("a next page").to_owned();
    let (_, second) = call(
        &app,
        &format!("{}&maxResults=2&nextToken={token}", get("agentConnected == true")),
    )
    .await;
    assert_eq!(ids(&second), ["prod/i2", "prod/i3"]);
    assert!(second.get("nextToken").is_none(), "{second}");

    // The view follows writes: the batch job moves to prod/i2.
    let moved = Task {
        group: Some("batch".into()),
        container_instance_arn: Some(entities::instance_arn("prod", "i2")),
        version: 2,
        ..entities::task("prod", "t1")
    };
    store
        .apply(vec![Write::Upsert(documents::task(name("prod"), &moved))])
        .await
        .unwrap();
    wait_until("the view follows the task", Duration::from_secs(5), || {
        let app = app.clone();
        let uri = get("task:group == batch");
        async move { ids(&call(&app, &uri).await.1) == ["prod/i2"] }
    })
    .await;

    // Errors name the field and the column.
    for (query, column) in [
        ("agentVersion >= ", "column 17"),
        ("attribute:x == a and", "column 21"),
        ("(a", "column"),
    ] {
        let (status, body) = call(&app, &get(query)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["field"], "filter", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains(column),
            "{query}: {body}"
        );
    }
    let (status, body) = call(
        &app,
        "/v1/instances?filter=agentConnected%20%3D%3D%20true&nextToken=AAAA",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "nextToken");
}
