//! blox-aws against moto: every test starts its own moto server (fresh state, < 3 s), so tests run in
//! parallel without sharing names or state.

use std::collections::{BTreeSet, HashSet};
use std::process::Command;

use std::sync::{Arc, Mutex};

use aws_sdk_cloudwatch::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_cloudwatch::config::{ConfigBag, Intercept};
use aws_sdk_cloudwatch::operation::describe_alarms::DescribeAlarmsInput;
use aws_sdk_cloudwatch::types::{AlarmType, StateValue};
use aws_sdk_ecs::types as sdk;
use blox_aws::{
    ALARM_BATCH, AlarmErrorKind, AlarmReader, AlarmStateValue, ClusterDescription, ConfigError,
    ContainerDefinition, DESCRIBE_BATCH, DesiredStatus, EcsControl, EcsErrorKind, EcsReader, EventSource,
    Failure, Message, QueueDepth, START_TASK_BATCH, SdkAlarms, SdkEcs, SqsOptions, SqsSource, StartTask,
    TaskDefinitionDescription, sdk_config,
};
use blox_model::{EcsEvent, Task};
use blox_testkit::{EcsFixture, EventFeed, Moto, StartTaskFault, StartTaskFaultProxy};

/// Short long-polls: moto answers at once when messages are there, and an empty poll should not
/// stall a test for 20 s.
const OPTIONS: SqsOptions = SqsOptions {
    wait_time_seconds: 1,
    visibility_timeout_seconds: 60,
};

async fn moto() -> (Moto, EcsFixture, SdkEcs) {
    let moto = Moto::start().await.expect("moto starts");
    let fixture = EcsFixture::new(&moto).await;
    let ecs = SdkEcs::new(&moto.sdk_config().await);
    (moto, fixture, ecs)
}

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

async fn describe_all_tasks(ecs: &SdkEcs, cluster: &str, arns: &[String]) -> Vec<Task> {
    let mut tasks = Vec::new();
    for chunk in arns.chunks(DESCRIBE_BATCH) {
        tasks.extend(ecs.describe_tasks(cluster, chunk).await.expect("describe tasks"));
    }
    tasks
}

#[tokio::test]
async fn ecs_lists_and_describes_more_than_a_page_of_tasks() {
    let (_moto, fx, ecs) = moto().await;
    let cluster_arn = fx.create_cluster("paging").await.unwrap();
    let task_def = fx.register_task_definition("web").await.unwrap();
    let instances = fx.register_instances("paging", 12).await.unwrap();
    // 10 tasks on each of the 12 instances: 120 tasks, more than one describe batch.
    let placements: Vec<String> = instances
        .iter()
        .flat_map(|i| std::iter::repeat_n(i.clone(), 10))
        .collect();
    let started = fx
        .start_tasks("paging", &task_def, &placements, Some("suite"))
        .await
        .unwrap();
    assert_eq!(started.len(), 120);

    assert!(ecs.list_clusters().await.unwrap().contains(&cluster_arn));
    assert_eq!(
        set(&ecs.list_container_instances("paging").await.unwrap()),
        set(&instances)
    );
    let running = ecs.list_tasks("paging", DesiredStatus::Running).await.unwrap();
    assert_eq!(set(&running), set(&started));

    let tasks = describe_all_tasks(&ecs, "paging", &running).await;
    assert_eq!(tasks.len(), 120);
    assert_eq!(
        tasks.iter().map(|t| t.task_arn.clone()).collect::<BTreeSet<_>>(),
        set(&started)
    );
    let instance_set = set(&instances);
    for task in &tasks {
        assert_eq!(task.cluster_arn, cluster_arn);
        assert!(
            instance_set.contains(task.container_instance_arn.as_deref().unwrap_or("")),
            "{task:?}"
        );
        assert_eq!(task.task_definition_arn, task_def);
        assert_eq!(
            (task.desired_status.as_str(), task.last_status.as_str()),
            ("RUNNING", "RUNNING")
        );
        assert_eq!(task.started_by.as_deref(), Some("suite"));
        assert_eq!(task.version, 0, "moto has no version");
        assert_eq!(task.launch_type, None, "moto's empty launchType is absent");
        assert_eq!(task.containers.len(), 1);
        assert_eq!(task.containers[0].name, "app");
        assert!(task.containers[0].container_arn.starts_with("arn:aws:ecs:"));
        task.clone().validate().expect("a described task is valid");
    }
    // The state manager is set to keep tasks RUNNING: a second describe still says RUNNING.
    let again = ecs.describe_tasks("paging", &running[..5]).await.unwrap();
    assert!(again.iter().all(|t| t.last_status == "RUNNING"), "{again:?}");

    let described = ecs
        .describe_container_instances("paging", &instances)
        .await
        .unwrap();
    assert_eq!(described.len(), 12);
    for instance in &described {
        assert_eq!(instance.cluster_arn, cluster_arn);
        assert_eq!(instance.status, "ACTIVE");
        assert!(instance.agent_connected);
        assert!(
            instance
                .ec2_instance_id
                .as_deref()
                .is_some_and(|id| id.starts_with("i-")),
            "{instance:?}"
        );
        assert_eq!(instance.running_tasks_count, Some(10));
        assert_eq!(instance.pending_tasks_count, Some(0));
        assert_eq!(instance.version, 0);
        let cpu = instance
            .registered_resources
            .iter()
            .find(|r| r.name == "CPU")
            .expect("CPU");
        assert_eq!((cpu.kind.as_str(), cpu.value.as_str()), ("INTEGER", "4096"));
        let ports = instance
            .registered_resources
            .iter()
            .find(|r| r.name == "PORTS")
            .expect("PORTS");
        assert_eq!(ports.kind, "STRINGSET");
        assert!(ports.value.split(',').any(|p| p == "22"), "{ports:?}");
        let remaining_cpu = instance
            .remaining_resources
            .iter()
            .find(|r| r.name == "CPU")
            .expect("CPU");
        assert_eq!(remaining_cpu.value, (4096 - 10 * 128).to_string());
        assert!(
            instance.attributes.iter().any(|a| a.name == "ecs.instance-type"),
            "{:?}",
            instance.attributes
        );
        instance
            .clone()
            .validate()
            .expect("a described instance is valid");
    }
}

#[tokio::test]
async fn ecs_lists_stopped_tasks_and_describes_why() {
    let (_moto, fx, ecs) = moto().await;
    fx.create_cluster("stopping").await.unwrap();
    let task_def = fx.register_task_definition("worker").await.unwrap();
    let instances = fx.register_instances("stopping", 2).await.unwrap();
    let tasks = fx
        .start_tasks("stopping", &task_def, &instances, None)
        .await
        .unwrap();
    fx.stop_task("stopping", &tasks[0], "scaled in").await.unwrap();

    let stopped = ecs.list_tasks("stopping", DesiredStatus::Stopped).await.unwrap();
    assert_eq!(stopped, vec![tasks[0].clone()]);
    let running = ecs.list_tasks("stopping", DesiredStatus::Running).await.unwrap();
    assert_eq!(running, vec![tasks[1].clone()]);

    let described = ecs.describe_tasks("stopping", &stopped).await.unwrap();
    assert_eq!(described.len(), 1);
    assert_eq!(described[0].desired_status, "STOPPED");
    assert_eq!(described[0].last_status, "STOPPED");
    assert_eq!(described[0].stopped_reason.as_deref(), Some("scaled in"));
    assert_eq!(described[0].started_by, None);

    // Draining shows in the instance's status.
    fx.drain("stopping", &instances[..1]).await.unwrap();
    let described = ecs
        .describe_container_instances("stopping", &instances[..1])
        .await
        .unwrap();
    assert_eq!(described[0].status, "DRAINING");
}

#[tokio::test]
async fn ecs_describe_of_unknown_arns_returns_nothing() {
    let (_moto, fx, ecs) = moto().await;
    let cluster_arn = fx.create_cluster("gone").await.unwrap();
    // moto answers HTTP 500 (KeyError) to a describe of instances in a cluster that never had one.
    fx.register_instances("gone", 1).await.unwrap();
    let prefix = cluster_arn.replace(":cluster/gone", "");
    let task = format!("{prefix}:task/gone/0123456789abcdef0123456789abcdef");
    let instance = format!("{prefix}:container-instance/gone/0123456789abcdef0123456789abcdef");
    assert!(ecs.describe_tasks("gone", &[task]).await.unwrap().is_empty());
    assert!(
        ecs.describe_container_instances("gone", &[instance])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(ecs.describe_tasks("gone", &[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn ecs_unknown_cluster_is_cluster_not_found() {
    let (_moto, _fx, ecs) = moto().await;
    let err = ecs
        .list_tasks("no-such-cluster", DesiredStatus::Running)
        .await
        .unwrap_err();
    assert!(matches!(err.kind, EcsErrorKind::ClusterNotFound), "{err}");
    assert_eq!(err.operation, "ListTasks");
    assert_eq!(err.cluster.as_deref(), Some("no-such-cluster"));
    assert_eq!(
        err.to_string(),
        "ECS ListTasks failed for cluster no-such-cluster: cluster not found"
    );
}

#[tokio::test]
async fn ecs_unreachable_endpoint_is_other_with_the_cause() {
    // A port nothing listens on (moto's, after it is stopped): a transport error, no AWS code.
    let moto = Moto::start().await.unwrap();
    let config = moto.sdk_config().await;
    drop(moto);
    let config = config
        .into_builder()
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    let err = SdkEcs::new(&config).list_clusters().await.unwrap_err();
    let EcsErrorKind::Other(message) = &err.kind else {
        panic!("{err:?}")
    };
    assert!(
        message.contains("dispatch failure") || message.contains("connect"),
        "{message}"
    );
}

#[tokio::test]
async fn control_describes_clusters_found_and_missing() {
    let (_moto, fx, ecs) = moto().await;
    let arn = fx.create_cluster("described").await.unwrap();
    fx.register_instances("described", 2).await.unwrap();
    let want = ClusterDescription {
        cluster_arn: arn.clone(),
        cluster_name: "described".to_owned(),
        status: "ACTIVE".to_owned(),
        registered_container_instances_count: 2,
        running_tasks_count: 0,
        pending_tasks_count: 0,
    };

    let (clusters, failures) = ecs
        .describe_clusters(&["described".to_owned(), "absent".to_owned()])
        .await
        .unwrap();
    assert_eq!(clusters, vec![want.clone()]);
    assert_eq!(
        failures,
        vec![Failure {
            arn: Some(arn.replace("/described", "/absent")),
            reason: "MISSING".to_owned(),
            detail: None,
        }]
    );
    let (clusters, failures) = ecs.describe_clusters(std::slice::from_ref(&arn)).await.unwrap();
    assert_eq!((clusters, failures), (vec![want], vec![]));
    // Nothing asked, nothing described (ECS would describe `default` for an empty list).
    fx.create_cluster("default").await.unwrap();
    assert_eq!(ecs.describe_clusters(&[]).await.unwrap(), (vec![], vec![]));
}

/// Two containers: `app` with fixed sizes, a static and a dynamic port; `sidecar`, soft memory only
/// and not essential.
/// `app` (essential, with a health check when `health_check`) and a `sidecar`.
fn sized_containers(app_cpu: i32, health_check: bool) -> Vec<sdk::ContainerDefinition> {
    let port = |container: i32, host: i32| {
        sdk::PortMapping::builder()
            .container_port(container)
            .host_port(host)
            .build()
    };
    vec![
        sdk::ContainerDefinition::builder()
            .name("app")
            .image("nginx:latest")
            .cpu(app_cpu)
            .memory(512)
            .memory_reservation(256)
            .port_mappings(port(80, 8080))
            .port_mappings(port(81, 0))
            .set_health_check(health_check.then(|| {
                sdk::HealthCheck::builder()
                    .command("CMD-SHELL")
                    .command("curl -f http://localhost/ || exit 1")
                    .start_period(2)
                    .build()
                    .unwrap()
            }))
            .build(),
        sdk::ContainerDefinition::builder()
            .name("sidecar")
            .image("busybox:latest")
            .memory_reservation(64)
            .essential(false)
            .build(),
    ]
}

#[tokio::test]
async fn control_describes_task_definitions_by_family_revision_and_arn() {
    let (_moto, fx, ecs) = moto().await;
    let first = fx
        .register_task_definition_with("sized", Some("1024"), Some("2048"), sized_containers(256, false))
        .await
        .unwrap();
    let latest = fx
        .register_task_definition_with("sized", None, None, sized_containers(512, true))
        .await
        .unwrap();
    let want =
        |arn: &str, revision: i64, cpu: Option<i64>, memory: Option<i64>, app_cpu: i64, health_check| {
            TaskDefinitionDescription {
                arn: arn.to_owned(),
                family: "sized".to_owned(),
                revision,
                status: "ACTIVE".to_owned(),
                cpu,
                memory,
                containers: vec![
                    ContainerDefinition {
                        name: "app".to_owned(),
                        cpu: app_cpu,
                        memory: Some(512),
                        essential: true,
                        host_ports: vec![8080],
                        health_check,
                    },
                    ContainerDefinition {
                        name: "sidecar".to_owned(),
                        cpu: 0,
                        memory: Some(64),
                        essential: false,
                        host_ports: vec![],
                        health_check: false,
                    },
                ],
            }
        };
    let first_want = want(&first, 1, Some(1024), Some(2048), 256, false);
    let latest_want = want(&latest, 2, None, None, 512, true);
    assert!(!first_want.has_health_checks() && latest_want.has_health_checks());

    let check = |asked: &'static str, want: TaskDefinitionDescription| {
        let ecs = ecs.clone();
        async move {
            let got = ecs.describe_task_definition(asked).await.unwrap();
            assert_eq!(got, want, "{asked}");
        }
    };
    check("sized", latest_want.clone()).await;
    check("sized:2", latest_want).await;
    check("sized:1", first_want.clone()).await;
    let by_arn = ecs.describe_task_definition(&first).await.unwrap();
    assert_eq!(by_arn, first_want);
}

#[tokio::test]
async fn control_unknown_task_definition_is_rejected() {
    let (_moto, fx, ecs) = moto().await;
    let arn = fx.register_task_definition("known").await.unwrap();
    let unknown_arn = arn.replace("known:1", "unknown:1");
    for asked in ["unknown", "known:7", unknown_arn.as_str()] {
        let err = ecs.describe_task_definition(asked).await.unwrap_err();
        assert_eq!(err.operation, "DescribeTaskDefinition");
        assert_eq!(err.cluster, None);
        let EcsErrorKind::Rejected { code, message } = &err.kind else {
            panic!("{asked}: {err:?}")
        };
        assert_eq!(code, "ClientException", "{asked}");
        assert!(!message.is_empty(), "{asked}: ECS's message is kept");
        assert_eq!(
            err.to_string(),
            format!("ECS DescribeTaskDefinition failed: ClientException: {message}")
        );
    }
}

#[tokio::test]
async fn control_starts_tasks_with_started_by_and_group() {
    let (_moto, fx, ecs) = moto().await;
    let cluster_arn = fx.create_cluster("starting").await.unwrap();
    let task_def = fx.register_task_definition("starter").await.unwrap();
    let instances = fx.register_instances("starting", 2).await.unwrap();
    let request = StartTask {
        cluster: "starting".to_owned(),
        task_definition: "starter".to_owned(),
        container_instances: instances.clone(),
        started_by: Some("blox-scheduler".to_owned()),
        group: Some("service:web".to_owned()),
    };
    let started = ecs.start_task(&request).await.unwrap();
    assert_eq!(started.failures, vec![]);
    assert_eq!(started.tasks.len(), 2);
    let placed: BTreeSet<String> = started
        .tasks
        .iter()
        .filter_map(|t| t.container_instance_arn.clone())
        .collect();
    assert_eq!(placed, set(&instances));
    for task in &started.tasks {
        assert_eq!(task.cluster_arn, cluster_arn);
        assert_eq!(task.task_definition_arn, task_def);
        assert_eq!(task.started_by.as_deref(), Some("blox-scheduler"));
        assert_eq!(task.group.as_deref(), Some("service:web"));
        assert_eq!(task.desired_status, "RUNNING");
        task.clone().validate().expect("a started task is valid");
    }

    // ECS agrees: the tasks are there, with what StartTask was given.
    let arns: Vec<String> = started.tasks.iter().map(|t| t.task_arn.clone()).collect();
    let described = ecs.describe_tasks("starting", &arns).await.unwrap();
    assert_eq!(described.len(), 2);
    assert!(
        described
            .iter()
            .all(|t| t.started_by.as_deref() == Some("blox-scheduler")
                && t.group.as_deref() == Some("service:web")),
        "{described:?}"
    );

    let err = ecs
        .start_task(&StartTask {
            cluster: "no-such-cluster".to_owned(),
            ..request
        })
        .await
        .unwrap_err();
    assert!(matches!(err.kind, EcsErrorKind::ClusterNotFound), "{err}");
}

#[tokio::test]
async fn control_refuses_start_task_batches_ecs_would_reject_without_calling() {
    let (_moto, fx, ecs) = moto().await;
    fx.create_cluster("big").await.unwrap();
    fx.register_task_definition("big").await.unwrap();
    let instances = fx.register_instances("big", START_TASK_BATCH + 1).await.unwrap();
    for (count, placements) in [(START_TASK_BATCH + 1, instances.clone()), (0, Vec::new())] {
        let err = ecs
            .start_task(&StartTask {
                cluster: "big".to_owned(),
                task_definition: "big".to_owned(),
                container_instances: placements,
                started_by: None,
                group: None,
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.operation, err.cluster.as_deref()),
            ("StartTask", Some("big"))
        );
        let EcsErrorKind::Rejected { code, message } = &err.kind else {
            panic!("{count}: {err:?}")
        };
        assert_eq!(code, "InvalidParameterException");
        assert!(
            message.starts_with(&format!("{count} container instances")),
            "{message}"
        );
    }
    // moto has no limit: had the 11 gone out, 11 tasks would be listed.
    assert_eq!(
        ecs.list_tasks("big", DesiredStatus::Running).await.unwrap(),
        Vec::<String>::new()
    );
}

/// StartTask has no idempotency token: a retry after ECS acted would start the tasks twice, so
/// `SdkEcs` sends it once whatever the answer, though the SDK retries a 500 on any other call.
#[tokio::test]
async fn control_never_retries_start_task() {
    let (moto, fx, _) = moto().await;
    let proxy = StartTaskFaultProxy::start(&moto).await.unwrap();
    // The SDK's standard retries (3 attempts) are on, as in production.
    let ecs = SdkEcs::new(&proxy.sdk_config().await);
    fx.create_cluster("once").await.unwrap();
    let definition = fx.register_task_definition("once").await.unwrap();
    let instances = fx.register_instances("once", 1).await.unwrap();
    let request = |started_by: &str| StartTask {
        cluster: "once".to_owned(),
        task_definition: definition.clone(),
        container_instances: instances.clone(),
        started_by: Some(started_by.to_owned()),
        group: None,
    };
    let started_by = |who: &'static str| ecs.list_started_tasks("once", who, &instances[0]);

    proxy.fail_next_start_tasks(1, StartTaskFault::Refuse);
    let err = ecs.start_task(&request("refused")).await.unwrap_err();
    assert_eq!(
        (err.operation, err.cluster.as_deref()),
        ("StartTask", Some("once"))
    );
    assert!(
        matches!(&err.kind, EcsErrorKind::Other(m) if m.starts_with("ServerException")),
        "{err}"
    );
    assert_eq!(proxy.start_task_requests(), 1, "sent once");
    assert_eq!(started_by("refused").await.unwrap(), Vec::<String>::new());

    // The same answer to the SDK's own client, without the per-call override, is retried and the
    // retry starts the task: what the override prevents.
    proxy.fail_next_start_tasks(1, StartTaskFault::Refuse);
    let retried = ecs
        .client()
        .start_task()
        .cluster("once")
        .task_definition(&definition)
        .set_container_instances(Some(instances.clone()))
        .started_by("retried")
        .send()
        .await
        .unwrap();
    assert_eq!(retried.tasks().len(), 1);
    assert_eq!(proxy.start_task_requests(), 3);

    // An answer lost after ECS acted: an error, yet the task started; listing settles it.
    proxy.fail_next_start_tasks(1, StartTaskFault::LoseAnswer);
    let err = ecs.start_task(&request("lost")).await.unwrap_err();
    assert!(matches!(&err.kind, EcsErrorKind::Other(_)), "{err}");
    assert_eq!(proxy.start_task_requests(), 4, "sent once");
    assert_eq!(started_by("lost").await.unwrap().len(), 1);
    assert_eq!(proxy.faults_left(), 0);
}

/// Tasks a StartTask started on an instance, whatever became of them: listed by instance (RUNNING
/// and STOPPED, every page), described in batches and kept by startedBy.
#[tokio::test]
async fn list_started_tasks_finds_running_and_stopped_tasks_by_instance_and_started_by() {
    let (_moto, fx, ecs) = moto().await;
    fx.create_cluster("verify").await.unwrap();
    let definition = fx.register_task_definition("verify").await.unwrap();
    let instances = fx.register_instances("verify", 3).await.unwrap();
    let start = |on: &[usize], by: Option<&str>| {
        let placements: Vec<String> = on.iter().map(|&i| instances[i].clone()).collect();
        let (fx, definition, by) = (fx.clone(), definition.clone(), by.map(str::to_owned));
        async move {
            fx.start_tasks("verify", &definition, &placements, by.as_deref())
                .await
                .unwrap()
        }
    };
    let d1 = start(&[0, 1], Some("dep-1")).await;
    let d2 = start(&[0], Some("dep-2")).await;
    start(&[0, 2], None).await;
    // More than a describe batch on one instance (moto has no resource checks).
    let many = start(&[2; DESCRIBE_BATCH + 5], Some("many")).await;
    fx.stop_task("verify", &d1[0], "replaced").await.unwrap();

    let id = |arn: &str| arn.rsplit('/').next().unwrap().to_owned();
    let cases: [(&str, String, Vec<String>); 7] = [
        // Stopped, found by the STOPPED listing.
        ("dep-1", instances[0].clone(), vec![d1[0].clone()]),
        ("dep-1", instances[1].clone(), vec![d1[1].clone()]),
        ("dep-1", id(&instances[1]), vec![d1[1].clone()]),
        ("dep-2", instances[0].clone(), d2.clone()),
        ("dep-2", instances[1].clone(), vec![]),
        ("nobody", instances[0].clone(), vec![]),
        ("many", instances[2].clone(), many.clone()),
    ];
    for (started_by, instance, want) in cases {
        let got = ecs
            .list_started_tasks("verify", started_by, &instance)
            .await
            .unwrap();
        assert_eq!(got.len(), want.len(), "{started_by} on {instance}: each once");
        assert_eq!(set(&got), set(&want), "{started_by} on {instance}");
    }
    let err = ecs
        .list_started_tasks("nowhere", "dep-1", &instances[0])
        .await
        .unwrap_err();
    assert!(matches!(err.kind, EcsErrorKind::ClusterNotFound), "{err}");
}

#[tokio::test]
async fn control_stops_a_task() {
    let (_moto, fx, ecs) = moto().await;
    fx.create_cluster("halting").await.unwrap();
    let task_def = fx.register_task_definition("halting").await.unwrap();
    let instances = fx.register_instances("halting", 1).await.unwrap();
    let tasks = fx
        .start_tasks("halting", &task_def, &instances, None)
        .await
        .unwrap();

    let stopped = ecs.stop_task("halting", &tasks[0], "scaled in").await.unwrap();
    assert_eq!(stopped.task_arn, tasks[0]);
    assert_eq!(stopped.desired_status, "STOPPED");
    assert_eq!(stopped.stopped_reason.as_deref(), Some("scaled in"));
    let described = ecs.describe_tasks("halting", &tasks).await.unwrap();
    assert_eq!(described[0].desired_status, "STOPPED");
    // Not tried here: stopping it again, which ECS allows. moto gives the task's resources back a
    // second time and fails (HTTP 500) returning a host port the instance no longer holds.
}

/// Every built event parses back into exactly what moto described (with the feed's version).
#[tokio::test]
async fn events_of_described_entities_round_trip_through_sqs() {
    let (moto, fx, ecs) = moto().await;
    fx.create_cluster("feed").await.unwrap();
    let task_def = fx.register_task_definition("feed").await.unwrap();
    let instances = fx.register_instances("feed", 3).await.unwrap();
    let tasks = fx
        .start_tasks("feed", &task_def, &instances, Some("feeder"))
        .await
        .unwrap();
    let queue_url = fx.create_queue("feed-events").await.unwrap();
    let feed = EventFeed::new(&moto, &queue_url).await;

    let sent_tasks = feed.publish_tasks("feed", &tasks).await.unwrap();
    let again = feed.publish_tasks("feed", &tasks[..1]).await.unwrap();
    let sent_instances = feed.publish_instances("feed", &instances).await.unwrap();
    assert_eq!(
        sent_instances.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        vec![1, 1, 1]
    );
    assert!(sent_tasks.iter().all(|(_, v)| *v == 1));
    assert_eq!(again, vec![(tasks[0].clone(), 2)]);
    assert_eq!(feed.version_of(&tasks[0]), Some(2));

    let source = SqsSource::new(&moto.sdk_config().await, "feed-events", OPTIONS)
        .await
        .unwrap();
    let messages = receive_n(&source, 7).await;
    let described_tasks = ecs.describe_tasks("feed", &tasks).await.unwrap();
    let described_instances = ecs
        .describe_container_instances("feed", &instances)
        .await
        .unwrap();
    for message in &messages {
        match EcsEvent::parse(&message.body).unwrap_or_else(|e| panic!("{e}: {}", message.body)) {
            EcsEvent::Task { cluster, task } => {
                assert_eq!(cluster.as_str(), "feed");
                let described = described_tasks
                    .iter()
                    .find(|t| t.task_arn == task.task_arn)
                    .unwrap();
                assert!(task.version == 1 || task.version == 2);
                assert_eq!(
                    task,
                    Task {
                        version: task.version,
                        ..described.clone()
                    }
                );
            }
            EcsEvent::ContainerInstance { cluster, instance } => {
                assert_eq!(cluster.as_str(), "feed");
                let described = described_instances
                    .iter()
                    .find(|i| i.container_instance_arn == instance.container_instance_arn)
                    .unwrap();
                assert_eq!(
                    instance,
                    blox_model::ContainerInstance {
                        version: 1,
                        ..described.clone()
                    }
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(source.delete(&receipts(&messages)).await.unwrap().is_empty());
}

/// Receives until `n` messages arrived (each receive asks for up to 10).
async fn receive_n(source: &SqsSource, n: usize) -> Vec<Message> {
    let mut messages = Vec::new();
    // Bounded: each empty receive is a 1 s long poll, so a lost message fails the test in ~20 s.
    for _ in 0..(n + 20) {
        if messages.len() >= n {
            break;
        }
        let batch = source.receive(n - messages.len()).await.expect("receive");
        assert!(batch.len() <= 10);
        messages.extend(batch);
    }
    assert_eq!(messages.len(), n, "received {} of {n} messages", messages.len());
    messages
}

fn receipts(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| m.receipt.clone()).collect()
}

async fn send_receive_delete(queue_name: &str, open_by_url: bool) {
    let (moto, fx, _ecs) = moto().await;
    let url = fx.create_queue(queue_name).await.unwrap();
    let bodies: Vec<String> = (0..25).map(|i| format!("{{\"n\":{i}}}")).collect();
    fx.send_messages(&url, &bodies).await.unwrap();

    let queue = if open_by_url {
        url.clone()
    } else {
        queue_name.to_owned()
    };
    let source = SqsSource::new(&moto.sdk_config().await, &queue, OPTIONS)
        .await
        .unwrap();
    assert_eq!(source.queue_url(), url);
    assert_eq!(
        source.depth().await.unwrap(),
        QueueDepth {
            visible: 25,
            in_flight: 0
        }
    );

    assert!(source.receive(0).await.unwrap().is_empty());
    let first = source.receive(50).await.unwrap();
    assert!(!first.is_empty() && first.len() <= 10, "{}", first.len());
    let mut messages = first;
    messages.extend(receive_n(&source, 25 - messages.len()).await);
    let got: HashSet<&str> = messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(got, bodies.iter().map(String::as_str).collect::<HashSet<_>>());
    assert_eq!(
        messages
            .iter()
            .map(|m| m.id.as_str())
            .collect::<HashSet<_>>()
            .len(),
        25
    );
    assert!(
        messages
            .iter()
            .all(|m| m.sent_at_ms.is_some_and(|t| t > 1_600_000_000_000)),
        "SentTimestamp"
    );
    assert_eq!(
        source.depth().await.unwrap(),
        QueueDepth {
            visible: 0,
            in_flight: 25
        }
    );

    assert_eq!(
        source.delete(&receipts(&messages)).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        source.depth().await.unwrap(),
        QueueDepth {
            visible: 0,
            in_flight: 0
        }
    );
    assert!(source.receive(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqs_by_name_receives_and_deletes_25_messages() {
    send_receive_delete("events-by-name", false).await;
}

#[tokio::test]
async fn sqs_by_url_receives_and_deletes_25_messages() {
    send_receive_delete("events-by-url", true).await;
}

#[tokio::test]
async fn sqs_reports_the_receipts_it_could_not_delete() {
    let (moto, fx, _ecs) = moto().await;
    let url = fx.create_queue("events-bad-receipts").await.unwrap();
    let bodies: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
    fx.send_messages(&url, &bodies).await.unwrap();
    let source = SqsSource::new(&moto.sdk_config().await, &url, OPTIONS)
        .await
        .unwrap();
    let messages = receive_n(&source, 12).await;

    // Bogus receipts interleaved with good ones, across two batches of 10, plus a duplicate.
    let mut receipts = receipts(&messages);
    let bogus = vec!["bogus-a".to_owned(), "bogus-b".to_owned(), "bogus-c".to_owned()];
    receipts.insert(3, bogus[0].clone());
    receipts.insert(10, bogus[1].clone());
    receipts.push(bogus[2].clone());
    receipts.push(receipts[0].clone());
    // Batches go out concurrently: the failures come back in no particular order.
    let mut failed = source.delete(&receipts).await.unwrap();
    failed.sort();
    assert_eq!(failed, bogus);
    assert_eq!(source.depth().await.unwrap(), QueueDepth::default());
    assert!(source.delete(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqs_unknown_queue_name_fails_to_open() {
    let moto = Moto::start().await.unwrap();
    let err = SqsSource::new(&moto.sdk_config().await, "no-such-queue", OPTIONS)
        .await
        .unwrap_err();
    assert_eq!(err.operation, "GetQueueUrl");
    assert!(
        err.message.contains("NonExistentQueue") || err.message.contains("QueueDoesNotExist"),
        "{err}"
    );

    let bad = SqsOptions {
        wait_time_seconds: 25,
        ..SqsOptions::default()
    };
    assert!(SqsSource::new(&moto.sdk_config().await, "x", bad).await.is_err());
    assert_eq!(
        SqsOptions::default(),
        SqsOptions {
            wait_time_seconds: 20,
            visibility_timeout_seconds: 60
        }
    );
}

fn names(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The DescribeAlarms requests a client made, as the SDK was about to send them.
#[derive(Debug, Clone, Default)]
struct DescribeAlarmsCalls(Arc<Mutex<Vec<DescribeAlarmsInput>>>);

impl DescribeAlarmsCalls {
    /// An [`SdkAlarms`] on `moto` whose calls this records.
    async fn alarms(&self, moto: &Moto) -> SdkAlarms {
        let config = aws_sdk_cloudwatch::config::Builder::from(&moto.sdk_config().await)
            .interceptor(self.clone())
            .build();
        SdkAlarms::from_client(aws_sdk_cloudwatch::Client::from_conf(config))
    }

    fn inputs(&self) -> Vec<DescribeAlarmsInput> {
        self.0.lock().unwrap().clone()
    }
}

impl Intercept for DescribeAlarmsCalls {
    fn name(&self) -> &'static str {
        "DescribeAlarmsCalls"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_cloudwatch::error::BoxError> {
        if let Some(input) = context.input().downcast_ref::<DescribeAlarmsInput>() {
            self.0.lock().unwrap().push(input.clone());
        }
        Ok(())
    }
}

#[tokio::test]
async fn alarms_report_states_reasons_and_changes() {
    let moto = Moto::start().await.unwrap();
    let config = moto.sdk_config().await;
    let alarms = SdkAlarms::new(&config);
    let cloudwatch = alarms.client();
    let fx = EcsFixture::new(&moto).await;
    for name in ["web-cpu", "web-5xx", "web-latency"] {
        fx.put_alarm(name).await.unwrap();
    }

    // Asked order, each once; unknown names are absent.
    let asked = names(&["web-5xx", "no-such-alarm", "web-cpu", "web-5xx"]);
    let states = alarms.alarm_states(&asked).await.unwrap();
    assert_eq!(
        states.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["web-5xx", "web-cpu"]
    );
    assert!(
        states.iter().all(|a| a.state == AlarmStateValue::Ok),
        "{states:?}"
    );
    assert!(states.iter().all(|a| a.reason.is_some()), "{states:?}");
    let before = states[1].updated_at_ms.expect("moto sends StateUpdatedTimestamp");

    fx.set_alarm_state("web-cpu", StateValue::Alarm, "CPU above 90% for 1 minute")
        .await
        .unwrap();
    fx.set_alarm_state("web-latency", StateValue::InsufficientData, "no data")
        .await
        .unwrap();
    let states = alarms
        .alarm_states(&names(&["web-cpu", "web-5xx", "web-latency"]))
        .await
        .unwrap();
    let by_name = |name: &str| states.iter().find(|a| a.name == name).expect(name);
    let cpu = by_name("web-cpu");
    assert_eq!(cpu.state, AlarmStateValue::Alarm);
    assert_eq!(cpu.reason.as_deref(), Some("CPU above 90% for 1 minute"));
    assert!(cpu.updated_at_ms.is_some_and(|t| t >= before), "{cpu:?}");
    assert_eq!(by_name("web-5xx").state, AlarmStateValue::Ok);
    assert_eq!(by_name("web-latency").state, AlarmStateValue::InsufficientData);

    // Back to OK, as when the metric recovers.
    fx.set_alarm_state("web-cpu", StateValue::Ok, "recovered")
        .await
        .unwrap();
    let cpu = alarms.alarm_states(&names(&["web-cpu"])).await.unwrap();
    assert_eq!(cpu[0].state, AlarmStateValue::Ok);
    assert_eq!(cpu[0].reason.as_deref(), Some("recovered"));

    assert!(
        alarms
            .alarm_states(&names(&["nothing", "here"]))
            .await
            .unwrap()
            .is_empty()
    );

    // Errors reach the SDK with their codes through scripts/moto_cbor_bridge.py.
    let err = cloudwatch
        .set_alarm_state()
        .alarm_name("no-such-alarm")
        .state_value(StateValue::Alarm)
        .state_reason("r")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_cloudwatch::error::ProvideErrorMetadata::code(&err),
        Some("ResourceNotFound"),
        "{err:?}"
    );
}

#[tokio::test]
async fn alarms_of_no_names_make_no_call() {
    let moto = Moto::start().await.unwrap();
    let calls = DescribeAlarmsCalls::default();
    let alarms = calls.alarms(&moto).await;
    let fx = EcsFixture::new(&moto).await;
    fx.put_alarm("exists").await.unwrap();
    // DescribeAlarms without names would describe every alarm of the account.
    assert!(alarms.alarm_states(&[]).await.unwrap().is_empty());
    assert!(calls.inputs().is_empty());
}

#[tokio::test]
async fn alarms_beyond_a_batch_are_described_in_batches_of_100() {
    let moto = Moto::start().await.unwrap();
    let calls = DescribeAlarmsCalls::default();
    let alarms = calls.alarms(&moto).await;
    let fx = EcsFixture::new(&moto).await;
    let all: Vec<String> = (0..120).map(|i| format!("svc-{i:03}")).collect();
    for name in &all {
        fx.put_alarm(name).await.unwrap();
    }
    for name in ["svc-007", "svc-110"] {
        fx.set_alarm_state(name, StateValue::Alarm, "breached")
            .await
            .unwrap();
    }

    let mut asked = all.clone();
    asked.insert(50, "unknown-1".to_owned());
    asked.push("unknown-2".to_owned());
    let states = alarms.alarm_states(&asked).await.unwrap();
    assert_eq!(states.iter().map(|a| a.name.clone()).collect::<Vec<_>>(), all);
    let in_alarm: Vec<&str> = states
        .iter()
        .filter(|a| a.state == AlarmStateValue::Alarm)
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(in_alarm, ["svc-007", "svc-110"]);

    // moto accepts any number of names, CloudWatch at most 100: the batches are the client's doing.
    let calls = calls.inputs();
    let sizes: Vec<usize> = calls.iter().map(|c| c.alarm_names().len()).collect();
    assert_eq!(sizes, [ALARM_BATCH, asked.len() - ALARM_BATCH]);
    for call in calls.iter() {
        assert_eq!(
            call.alarm_types(),
            [AlarmType::MetricAlarm, AlarmType::CompositeAlarm]
        );
        assert_eq!(call.max_records(), Some(100));
    }
}

#[tokio::test]
async fn alarms_unreachable_endpoint_is_other_with_the_cause() {
    // As for ECS: moto's port after it is stopped, so a transport error without an AWS code.
    let moto = Moto::start().await.unwrap();
    let config = moto.sdk_config().await;
    drop(moto);
    let config = config
        .into_builder()
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    let err = SdkAlarms::new(&config)
        .alarm_states(&names(&["a"]))
        .await
        .unwrap_err();
    assert_eq!(err.operation, "DescribeAlarms");
    let AlarmErrorKind::Other(message) = &err.kind else {
        panic!("{err:?}")
    };
    assert!(
        message.contains("dispatch failure") || message.contains("connect"),
        "{message}"
    );
    assert!(
        err.to_string().starts_with("CloudWatch DescribeAlarms failed: "),
        "{err}"
    );
}

// `sdk_config` reads the process environment, which a test must not change in-process (other tests
// run concurrently). So these tests run this test binary again, with a controlled environment, to
// execute one `#[ignore]`d child test.

const CHILD_ENV: &str = "BLOX_AWS_TEST_CHILD";

fn run_child(test: &str, env: &[(String, String)]) {
    let exe = std::env::current_exe().expect("test binary");
    let mut command = Command::new(exe);
    command.args(["--ignored", "--exact", test, "--nocapture", "--test-threads=1"]);
    for key in [
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_ECS",
        "AWS_ENDPOINT_URL_SQS",
        "AWS_ENDPOINT_URL_CLOUDWATCH",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ] {
        command.env_remove(key);
    }
    command
        .env(CHILD_ENV, "1")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let output = command.output().expect("run child test");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "child {test} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("1 passed"), "child {test} did not run:\n{stdout}");
}

fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

#[tokio::test]
async fn config_honours_service_specific_endpoints() {
    let moto = Moto::start().await.unwrap();
    let fx = EcsFixture::new(&moto).await;
    fx.create_cluster("via-env").await.unwrap();
    fx.create_queue("via-env").await.unwrap();
    fx.put_alarm("via-env").await.unwrap();
    let mut env: Vec<(String, String)> = moto
        .env()
        .into_iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT_URL")
        .collect();
    // The global endpoint points nowhere; only the per-service variables lead to moto.
    env.push(("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:9".into()));
    env.push(("AWS_ENDPOINT_URL_ECS".into(), moto.endpoint()));
    env.push(("AWS_ENDPOINT_URL_SQS".into(), moto.endpoint()));
    env.push(("AWS_ENDPOINT_URL_CLOUDWATCH".into(), moto.endpoint()));
    run_child("child_uses_service_endpoints", &env);
}

#[tokio::test]
#[ignore = "run by config_honours_service_specific_endpoints in a child process"]
async fn child_uses_service_endpoints() {
    if !is_child() {
        return;
    }
    let config = sdk_config().await.expect("region from AWS_REGION");
    let clusters = SdkEcs::new(&config)
        .list_clusters()
        .await
        .expect("ECS via AWS_ENDPOINT_URL_ECS");
    assert!(
        clusters.iter().any(|c| c.ends_with(":cluster/via-env")),
        "{clusters:?}"
    );
    let source = SqsSource::new(&config, "via-env", OPTIONS)
        .await
        .expect("SQS via AWS_ENDPOINT_URL_SQS");
    assert_eq!(source.depth().await.unwrap(), QueueDepth::default());
    let alarms = SdkAlarms::new(&config)
        .alarm_states(&names(&["via-env"]))
        .await
        .expect("CloudWatch via AWS_ENDPOINT_URL_CLOUDWATCH");
    assert_eq!(alarms.len(), 1, "{alarms:?}");
}

#[tokio::test]
async fn config_without_a_region_is_an_error() {
    run_child(
        "child_has_no_region",
        &[("AWS_EC2_METADATA_DISABLED".into(), "true".into())],
    );
}

#[tokio::test]
#[ignore = "run by config_without_a_region_is_an_error in a child process"]
async fn child_has_no_region() {
    if !is_child() {
        return;
    }
    let err = sdk_config().await.expect_err("no region");
    assert!(matches!(err, ConfigError::MissingRegion));
    assert!(err.to_string().contains("AWS_REGION"));
}
