//! Black-box tests: the `blox` binary against moto (ECS, SQS) through the real AWS SDK. moto emits no
//! ECS events, so the tests publish them into the queue as EventBridge would, with versions rising per
//! resource.

use std::time::Duration;

use blox_api::{InstanceQuery, StreamQuery, TaskQuery};
use blox_aws::EcsReader as _;
use blox_client::Client;
use blox_testkit::{BloxProcess, EcsFixture, EventFeed, Moto, wait_until};
use futures::StreamExt as _;

const BLOX: &str = env!("CARGO_BIN_EXE_blox");
const DEADLINE: Duration = Duration::from_secs(30);

struct Harness {
    moto: Moto,
    ecs: EcsFixture,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Harness {
        let moto = Moto::start()
            .await
            .expect("moto starts (run scripts/setup-test-env.sh)");
        let ecs = EcsFixture::new(&moto).await;
        Harness {
            moto,
            ecs,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn store(&self) -> String {
        format!("log:{}", self.dir.path().join("store").display())
    }

    async fn blox(&self, extra: &[&str]) -> BloxProcess {
        let store = self.store();
        let mut args = vec!["server", "--listen", "127.0.0.1:0", "--store", &store];
        args.extend_from_slice(extra);
        BloxProcess::start(BLOX, args, &self.moto.env())
            .await
            .expect("blox starts")
    }
}

async fn ready(client: &Client) {
    wait_until("blox is ready", DEADLINE, || async {
        client.readiness().await.is_ok_and(|r| r.ready)
    })
    .await;
}

/// Waits until no message is left in `queue`, visible or in flight.
async fn drained(h: &Harness, queue: &str) {
    wait_until("the queue is empty", DEADLINE, || async {
        h.ecs
            .queue_depth(queue)
            .await
            .is_ok_and(|d| d.visible == 0 && d.in_flight == 0)
    })
    .await;
}

/// The server's `/metrics` text.
async fn metrics(blox: &BloxProcess) -> String {
    reqwest::get(blox.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn task_count(client: &Client, query: TaskQuery) -> usize {
    client
        .list_tasks(&query)
        .await
        .map(|t| t.items.len())
        .unwrap_or(0)
}

#[tokio::test]
async fn events_from_the_queue_are_served_with_filters() {
    let h = Harness::new().await;
    let queue = h.ecs.create_queue("events").await.unwrap();
    // Serve first, so that the reconciler's first pass finds nothing and events alone fill the store.
    let blox = h.blox(&["--queue", "events", "--reconcile-interval", "1h"]).await;
    let client = Client::new(blox.base_url());
    ready(&client).await;

    let task_def = h.ecs.register_task_definition("agent").await.unwrap();
    let feed = EventFeed::new(&h.moto, &queue).await;
    let mut tasks = Vec::new();
    for (cluster, started_by) in [("prod", Some("blox-daemon")), ("dev", None)] {
        h.ecs.create_cluster(cluster).await.unwrap();
        let instances = h.ecs.register_instances(cluster, 3).await.unwrap();
        let started = h
            .ecs
            .start_tasks(cluster, &task_def, &instances, started_by)
            .await
            .unwrap();
        feed.publish_instances(cluster, &instances).await.unwrap();
        feed.publish_tasks(cluster, &started).await.unwrap();
        tasks.push((cluster, instances, started));
    }
    wait_until("6 tasks and 6 instances are served", DEADLINE, || async {
        task_count(&client, TaskQuery::default()).await == 6
            && client
                .list_instances(&InstanceQuery::default())
                .await
                .is_ok_and(|i| i.items.len() == 6)
    })
    .await;

    let (_, prod_instances, prod_tasks) = &tasks[0];
    let one = client.get_task("prod", &prod_tasks[0]).await.unwrap();
    assert_eq!(one.entity.version, 1, "the event's detail.version");
    assert_eq!(one.entity.started_by.as_deref(), Some("blox-daemon"));
    let by_arn = client
        .get_task("arn:aws:ecs:us-east-1:123456789012:cluster/prod", &prod_tasks[0])
        .await
        .unwrap();
    assert_eq!(by_arn, one);
    let q = |cluster: Option<&str>, status: Option<&str>, started_by: Option<&str>| TaskQuery {
        cluster: cluster.map(String::from),
        status: status.map(String::from),
        started_by: started_by.map(String::from),
        ..TaskQuery::default()
    };
    assert_eq!(task_count(&client, q(Some("prod"), None, None)).await, 3);
    assert_eq!(task_count(&client, q(None, Some("running"), None)).await, 6);
    assert_eq!(task_count(&client, q(None, None, Some("blox-daemon"))).await, 3);
    assert_eq!(
        task_count(&client, q(Some("dev"), None, Some("blox-daemon"))).await,
        0
    );

    // A stop and a drain arrive as newer versions.
    h.ecs.stop_task("prod", &prod_tasks[0], "test").await.unwrap();
    feed.publish_tasks("prod", &prod_tasks[..1]).await.unwrap();
    h.ecs.drain("prod", &prod_instances[..1]).await.unwrap();
    feed.publish_instances("prod", &prod_instances[..1])
        .await
        .unwrap();
    wait_until("the stop and the drain are served", DEADLINE, || async {
        task_count(&client, q(None, Some("stopped"), None)).await == 1
            && client
                .list_instances(&InstanceQuery {
                    status: Some("draining".into()),
                    ..InstanceQuery::default()
                })
                .await
                .is_ok_and(|i| i.items.len() == 1)
    })
    .await;
    let stopped = client.get_task("prod", &prod_tasks[0]).await.unwrap();
    assert_eq!(
        (stopped.entity.version, stopped.entity.last_status.as_str()),
        (2, "STOPPED")
    );
    assert!(
        stopped.metadata.entity_version.parse::<u64>().unwrap()
            > one.metadata.entity_version.parse::<u64>().unwrap()
    );

    // The CLI reads the same API.
    let output = std::process::Command::new(BLOX)
        .args([
            "tasks",
            "list",
            "--cluster",
            "prod",
            "--status",
            "stopped",
            "--endpoint",
            blox.base_url(),
        ])
        .output()
        .unwrap();
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{table}");
    assert!(table.starts_with("CLUSTER"), "{table}");
    assert!(
        table.contains(prod_tasks[0].rsplit('/').next().unwrap()),
        "{table}"
    );
    let output = std::process::Command::new(BLOX)
        .args([
            "instances",
            "get",
            "prod",
            &prod_instances[0],
            "--json",
            "--endpoint",
            blox.base_url(),
        ])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["entity"]["status"], "DRAINING");

    // SIGTERM stops it cleanly, an open stream notwithstanding.
    let _stream = client.stream_tasks(&StreamQuery::default()).await.unwrap();
    let mut blox = blox;
    let status = blox.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn malformed_messages_are_parked_and_never_block_the_queue() {
    let h = Harness::new().await;
    let queue = h.ecs.create_queue("events").await.unwrap();
    let blox = h.blox(&["--queue", &queue, "--reconcile-interval", "1h"]).await;
    let client = Client::new(blox.base_url());
    h.ecs.create_cluster("prod").await.unwrap();
    let task_def = h.ecs.register_task_definition("agent").await.unwrap();
    let instances = h.ecs.register_instances("prod", 1).await.unwrap();
    let started = h
        .ecs
        .start_tasks("prod", &task_def, &instances, None)
        .await
        .unwrap();
    let feed = EventFeed::new(&h.moto, &queue).await;
    let mut no_version: serde_json::Value = serde_json::from_str(&blox_testkit::task_event(
        &feed.ecs().describe_tasks("prod", &started).await.unwrap()[0],
        1,
    ))
    .unwrap();
    no_version["detail"].as_object_mut().unwrap().remove("version");
    h.ecs
        .send_messages(
            &queue,
            &[
                "{not json".to_owned(),
                no_version.to_string(),
                r#"{"detail-type":"ECS Deployment State Change","detail":{}}"#.to_owned(),
            ],
        )
        .await
        .unwrap();
    feed.publish_tasks("prod", &started).await.unwrap();

    wait_until(
        "the good event is applied and the bad ones parked",
        DEADLINE,
        || async {
            task_count(&client, TaskQuery::default()).await == 1
                && client
                    .dead_letters(&Default::default())
                    .await
                    .is_ok_and(|d| d.items.len() == 2)
        },
    )
    .await;
    drained(&h, &queue).await;
    let parked = client.dead_letters(&Default::default()).await.unwrap();
    assert!(
        parked
            .items
            .iter()
            .any(|d| d.reason.contains("detail.version is missing"))
    );
    assert!(parked.items.iter().any(|d| d.body == "{not json"));
    let metrics = metrics(&blox).await;
    assert!(
        metrics.contains("blox_events_parked_total{reason=\"invalid\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("blox_events_dropped_total{reason=\"other_detail_type\"} 1"),
        "{metrics}"
    );
}

/// The poison batch: one message whose `startedBy` holds a NUL byte (as JSON's `\u0000`: SQS refuses a
/// raw NUL), sent in one SendMessageBatch with nine valid events. With reconciliation off, the nine
/// reach the store by their events (their tasks exist nowhere else: not in moto), the bad one is parked
/// with its reason, and the queue drains.
#[tokio::test]
async fn a_poison_message_is_parked_and_the_nine_of_its_batch_commit_by_their_events() {
    let h = Harness::new().await;
    let queue = h.ecs.create_queue("events").await.unwrap();
    let blox = h
        .blox(&[
            "--queue",
            &queue,
            "--reconcile-interval",
            "1h",
            "--account-id",
            blox_testkit::entities::ACCOUNT,
        ])
        .await;
    let client = Client::new(blox.base_url());
    ready(&client).await;
    let bodies: Vec<String> = (0..10)
        .map(|n| {
            let task = blox_model::Task {
                started_by: Some(if n == 4 { "a\0b".into() } else { "svc".into() }),
                ..blox_testkit::entities::task("prod", &format!("t{n}"))
            };
            blox_testkit::task_event(&task, 7)
        })
        .collect();
    assert!(bodies[4].contains(r"a\u0000b"), "{}", bodies[4]);
    h.ecs.send_messages(&queue, &bodies).await.unwrap();

    wait_until("nine tasks served and one message parked", DEADLINE, || async {
        task_count(&client, TaskQuery::default()).await == 9
            && client
                .dead_letters(&Default::default())
                .await
                .is_ok_and(|d| d.items.len() == 1)
    })
    .await;
    drained(&h, &queue).await;
    let tasks = client.list_tasks(&TaskQuery::default()).await.unwrap();
    assert!(
        tasks
            .items
            .iter()
            .all(|t| t.entity.version == 7 && t.entity.started_by.as_deref() == Some("svc")),
        "every task is its event's: {tasks:?}"
    );
    let parked = client.dead_letters(&Default::default()).await.unwrap();
    assert_eq!(
        parked.items[0].reason,
        "detail.startedBy: contains a NUL byte, which blox cannot key or index by"
    );
    assert_eq!(parked.items[0].body, bodies[4]);
    let metrics = metrics(&blox).await;
    assert!(
        metrics.contains("blox_events_parked_total{reason=\"invalid\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("blox_events_applied_total{kind=\"task\"} 9"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("blox_ingest_commit_failures_total"),
        "no commit failed: {metrics}"
    );
}

/// Events of another account (a cluster of the same name) or region than the mirrored one are parked
/// with that reason. Without `--account-id`, the account is the one of the clusters ECS lists.
#[tokio::test]
async fn events_of_another_account_or_region_are_parked_with_their_reason() {
    let h = Harness::new().await;
    let queue = h.ecs.create_queue("events").await.unwrap();
    // A cluster for the first reconcile pass to list: its ARN tells blox the account.
    h.ecs.create_cluster("prod").await.unwrap();
    let blox = h.blox(&["--queue", &queue, "--reconcile-interval", "1h"]).await;
    let client = Client::new(blox.base_url());
    ready(&client).await;
    let elsewhere = |account: &str, region: &str, id: &str| {
        let place = |arn: String| {
            arn.replace(blox_testkit::entities::ACCOUNT, account)
                .replace(":us-east-1:", &format!(":{region}:"))
        };
        let task = blox_testkit::entities::task("prod", id);
        blox_model::Task {
            cluster_arn: place(task.cluster_arn.clone()),
            task_arn: place(task.task_arn.clone()),
            container_instance_arn: task.container_instance_arn.clone().map(place),
            task_definition_arn: place(task.task_definition_arn.clone()),
            ..task
        }
    };
    let bodies = [
        blox_testkit::task_event(&elsewhere("210987654321", "us-east-1", "other-account"), 1),
        blox_testkit::task_event(&elsewhere("123456789012", "eu-west-1", "other-region"), 1),
        blox_testkit::task_event(&elsewhere("123456789012", "us-east-1", "mirrored"), 1),
    ];
    h.ecs.send_messages(&queue, &bodies).await.unwrap();
    wait_until("one task served and two messages parked", DEADLINE, || async {
        task_count(&client, TaskQuery::default()).await == 1
            && client
                .dead_letters(&Default::default())
                .await
                .is_ok_and(|d| d.items.len() == 2)
    })
    .await;
    drained(&h, &queue).await;
    let tasks = client.list_tasks(&TaskQuery::default()).await.unwrap();
    assert!(tasks.items[0].entity.task_arn.ends_with("/mirrored"));
    let mut reasons: Vec<(String, String)> = client
        .dead_letters(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|d| (d.reason, d.body))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            (
                "the event is from account 210987654321, but blox mirrors account 123456789012".to_owned(),
                bodies[0].clone()
            ),
            (
                "the event is from region eu-west-1, but blox mirrors region us-east-1".to_owned(),
                bodies[1].clone()
            ),
        ]
    );
    let metrics = metrics(&blox).await;
    assert!(
        metrics.contains("blox_events_parked_total{reason=\"foreign\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn streams_deliver_live_changes_and_resume_from_an_entity_version() {
    let h = Harness::new().await;
    let queue = h.ecs.create_queue("events").await.unwrap();
    let blox = h.blox(&["--queue", "events", "--reconcile-interval", "1h"]).await;
    let client = Client::new(blox.base_url());
    h.ecs.create_cluster("prod").await.unwrap();
    let task_def = h.ecs.register_task_definition("agent").await.unwrap();
    let instances = h.ecs.register_instances("prod", 4).await.unwrap();
    let started = h
        .ecs
        .start_tasks("prod", &task_def, &instances, None)
        .await
        .unwrap();
    let feed = EventFeed::new(&h.moto, &queue).await;

    let mut live = Box::pin(client.stream_tasks(&StreamQuery::default()).await.unwrap());
    feed.publish_tasks("prod", &started[..2]).await.unwrap();
    let first = tokio::time::timeout(DEADLINE, live.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(DEADLINE, live.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(live);
    let mut live_arns = vec![first.entity.task_arn.clone(), second.entity.task_arn.clone()];
    live_arns.sort();
    let mut published = started[..2].to_vec();
    published.sort();
    assert_eq!(live_arns, published, "the live stream's two records");

    // Resume from the second record (inclusive, as v0.3's streams): it comes again, then the changes
    // made while away.
    feed.publish_tasks("prod", &started[2..]).await.unwrap();
    let from: u64 = second.metadata.entity_version.parse().unwrap();
    let mut resumed = Box::pin(
        client
            .stream_tasks(&StreamQuery {
                entity_version: Some(from),
                cluster: Some("prod".into()),
                heartbeat: None,
            })
            .await
            .unwrap(),
    );
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let record = tokio::time::timeout(DEADLINE, resumed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(record.entity.task_arn);
    }
    assert_eq!(seen[0], second.entity.task_arn);
    let mut rest = seen[1..].to_vec();
    rest.sort();
    let mut want = started[2..].to_vec();
    want.sort();
    assert_eq!(rest, want);

    let too_far = client
        .stream_tasks(&StreamQuery {
            entity_version: Some(10_000),
            cluster: None,
            heartbeat: None,
        })
        .await;
    assert!(matches!(
        too_far,
        Err(blox_client::ClientError::Api { status: 400, .. })
    ));
}

#[tokio::test]
async fn the_reconciler_alone_finds_everything_and_removes_what_ecs_no_longer_lists() {
    let h = Harness::new().await;
    h.ecs.create_cluster("prod").await.unwrap();
    h.ecs.create_cluster("dev").await.unwrap();
    let task_def = h.ecs.register_task_definition("agent").await.unwrap();
    let prod = h.ecs.register_instances("prod", 3).await.unwrap();
    let dev = h.ecs.register_instances("dev", 2).await.unwrap();
    let prod_tasks = h
        .ecs
        .start_tasks("prod", &task_def, &prod, Some("svc"))
        .await
        .unwrap();
    h.ecs.start_tasks("dev", &task_def, &dev, None).await.unwrap();

    // No queue: only the reconciler, every second.
    let blox = h.blox(&["--reconcile-interval", "1s"]).await;
    let client = Client::new(blox.base_url());
    wait_until(
        "the first pass completes and everything is served",
        DEADLINE,
        || async {
            client.readiness().await.is_ok_and(|r| r.ready)
                && task_count(&client, TaskQuery::default()).await == 5
                && client
                    .list_instances(&InstanceQuery::default())
                    .await
                    .is_ok_and(|i| i.items.len() == 5)
        },
    )
    .await;
    let task = client.get_task("prod", &prod_tasks[0]).await.unwrap();
    assert_eq!(task.entity.started_by.as_deref(), Some("svc"));

    let mut changes = Box::pin(client.stream_instances(&StreamQuery::default()).await.unwrap());
    // A stopped task is drift to correct; a deregistered instance is gone from ECS.
    h.ecs.stop_task("prod", &prod_tasks[1], "drift").await.unwrap();
    h.ecs.deregister("dev", &dev[0], true).await.unwrap();
    wait_until("the reconciler corrects the drift", DEADLINE, || async {
        client
            .list_instances(&InstanceQuery::default())
            .await
            .is_ok_and(|i| i.items.len() == 4)
            && client
                .get_task("prod", &prod_tasks[1])
                .await
                .is_ok_and(|t| t.entity.last_status == "STOPPED")
    })
    .await;
    // Instances whose tasks changed come first; the deregistered one arrives as a deletion.
    let deletion = loop {
        let change = tokio::time::timeout(DEADLINE, changes.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if change.metadata.deleted {
            break change;
        }
    };
    assert_eq!(deletion.entity.container_instance_arn, dev[0]);
    assert!(matches!(
        client.get_instance("dev", &dev[0]).await,
        Err(blox_client::ClientError::Api { status: 404, .. })
    ));
    let metrics = metrics(&blox).await;
    assert!(
        metrics.contains("blox_reconcile_drift_corrected_total{kind=\"instance\",action=\"delete\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn killed_mid_ingestion_loses_nothing() {
    let h = Harness::new().await;
    let queue = h.ecs.create_queue("events").await.unwrap();
    h.ecs.create_cluster("prod").await.unwrap();
    let task_def = h.ecs.register_task_definition("agent").await.unwrap();
    let instances = h.ecs.register_instances("prod", 40).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.extend(
            h.ecs
                .start_tasks("prod", &task_def, &instances, None)
                .await
                .unwrap(),
        );
    }
    // Three versions of each of 160 tasks: 480 messages; losing any last version is visible. (moto's
    // SQS scans the whole queue on every call, so a larger backlog mostly measures moto.)
    let feed = EventFeed::new(&h.moto, &queue).await;
    for _ in 0..3 {
        feed.publish_tasks("prod", &tasks).await.unwrap();
    }
    let args = [
        "--queue",
        "events",
        "--reconcile-interval",
        "1h",
        "--visibility-timeout",
        "10s",
    ];
    let mut blox = h.blox(&args).await;
    let metrics_url = blox.url("/metrics");
    wait_until("ingestion has started", DEADLINE, || async {
        reqwest::get(&metrics_url)
            .await
            .ok()
            .map(|r| r.status().is_success())
            .unwrap_or(false)
            && reqwest::get(&metrics_url)
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .contains("blox_events_applied_total")
    })
    .await;
    blox.kill();
    let left = h.ecs.queue_depth(&queue).await.unwrap();
    assert!(
        left.visible + left.in_flight > 0,
        "the kill must land mid-ingestion: {left:?}"
    );

    let blox = h.blox(&args).await;
    let client = Client::new(blox.base_url());
    wait_until(
        "the queue drains after the restart",
        Duration::from_secs(120),
        || async {
            h.ecs
                .queue_depth(&queue)
                .await
                .is_ok_and(|d| d.visible == 0 && d.in_flight == 0)
        },
    )
    .await;
    wait_until("every task is at its last version", DEADLINE, || async {
        let Ok(list) = client.list_tasks(&TaskQuery::default()).await else {
            return false;
        };
        list.items.len() == tasks.len() && list.items.iter().all(|t| t.entity.version == 3)
    })
    .await;
}
