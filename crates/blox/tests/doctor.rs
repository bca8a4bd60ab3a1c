//! `blox doctor` through the real binary against moto (ECS, SQS, EventBridge, STS, CloudWatch through
//! the real AWS SDK): each way the event plumbing goes wrong is reported with its fix, a complete
//! setup passes, and a call the role may not make is named.

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use blox_testkit::{EcsFixture, Moto, StartTaskFaultProxy, run_to_end};

const BLOX: &str = env!("CARGO_BIN_EXE_blox");
const DEADLINE: Duration = Duration::from_secs(60);
const PATTERN: &str =
    r#"{"source":["aws.ecs"],"detail-type":["ECS Task State Change","ECS Container Instance State Change"]}"#;

/// `blox doctor ARGS` with `env`: (succeeded, stdout).
async fn doctor(env: &[(String, String)], args: &[&str]) -> (bool, String) {
    let mut command = tokio::process::Command::new(BLOX);
    command
        .arg("doctor")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)));
    let finished = run_to_end(command, DEADLINE).await;
    (finished.code == Some(0), finished.stdout)
}

/// The line of a check, or a panic naming the output.
fn line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|line| {
            line.get(6..)
                .is_some_and(|rest| rest.starts_with(&format!("{check}:")))
        })
        .unwrap_or_else(|| panic!("no line for {check:?} in:\n{out}"))
}

fn assert_ok(out: &str, check: &str) {
    let line = line(out, check);
    assert!(line.starts_with("OK "), "{check} is not OK: {line}\n{out}");
}

fn assert_fails(out: &str, check: &str, problem: &str, fix: &str) {
    let line = line(out, check);
    assert!(line.starts_with("FAIL "), "{check} should fail: {line}\n{out}");
    assert!(line.contains(problem), "{check}: no {problem:?} in {line}");
    assert!(
        line.contains(&format!("Fix: {fix}")) || line.contains(fix),
        "{check}: no fix {fix:?} in {line}"
    );
}

#[tokio::test]
async fn every_problem_of_the_plumbing_is_named_with_its_fix_until_all_is_ok() {
    let moto = Moto::start()
        .await
        .expect("moto starts (run scripts/setup-test-env.sh)");
    let fixture = EcsFixture::new(&moto).await;
    fixture.create_cluster("prod").await.unwrap();
    fixture.register_instances("prod", 1).await.unwrap();
    let queue_url = fixture.create_queue("events").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("redb:{}", dir.path().join("blox.redb").display());
    let args = ["--queue", "events", "--store", store.as_str()];
    let env = moto.env();
    let config = moto.sdk_config().await;
    let events = aws_sdk_eventbridge::Client::new(&config);
    let queue_arn = fixture
        .sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap();

    // A bare queue: nothing feeds it, EventBridge may not send to it, no dead-letter queue.
    let (passed, out) = doctor(&env, &args).await;
    assert!(!passed, "{out}");
    for check in [
        "region",
        "credentials",
        "queue",
        "sqs:DeleteMessage",
        "ecs:ListClusters",
        "ecs:DescribeClusters",
        "ecs:ListContainerInstances",
        "ecs:DescribeContainerInstances",
        "ecs:ListTasks",
        "ecs:DescribeTasks",
        "ecs:DescribeTaskDefinition",
        "ecs:StartTask",
        "ecs:StopTask",
        "cloudwatch:DescribeAlarms",
    ] {
        assert_ok(&out, check);
    }
    assert_ok(&out, &format!("store {store}"));
    assert_fails(
        &out,
        "EventBridge rule",
        "no EventBridge rule sends ECS events",
        "put-rule",
    );
    assert_fails(
        &out,
        "queue policy",
        "EventBridge cannot send",
        "set-queue-attributes",
    );
    assert_fails(&out, "dead-letter queue", "none set", "RedrivePolicy");

    // A rule for ECS events that sends them elsewhere.
    events
        .put_rule()
        .name("ecs-events")
        .event_pattern(PATTERN)
        .send()
        .await
        .unwrap();
    let (_, out) = doctor(&env, &args).await;
    assert_fails(
        &out,
        "EventBridge rule",
        "matches ECS events but does not send them to the queue",
        &format!("aws events put-targets --rule ecs-events --targets Id=blox,Arn={queue_arn}"),
    );

    // Targeting the queue, but disabled.
    events
        .put_targets()
        .rule("ecs-events")
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("blox")
                .arn(&queue_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    events.disable_rule().name("ecs-events").send().await.unwrap();
    let (_, out) = doctor(&env, &args).await;
    assert_fails(
        &out,
        "EventBridge rule",
        "is disabled",
        "aws events enable-rule --name ecs-events",
    );
    events.enable_rule().name("ecs-events").send().await.unwrap();

    // The policy and a dead-letter queue: everything is in place.
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"},
                       "Action": "sqs:SendMessage", "Resource": queue_arn}],
    });
    let dlq_url = fixture.create_queue("events-dlq").await.unwrap();
    let dlq_arn = queue_arn.replace(":events", ":events-dlq");
    fixture
        .sqs
        .set_queue_attributes()
        .queue_url(&queue_url)
        .attributes(QueueAttributeName::Policy, policy.to_string())
        .attributes(
            QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert!(!dlq_url.is_empty());
    let (passed, out) = doctor(&env, &args).await;
    assert!(passed, "{out}");
    assert_ok(&out, "EventBridge rule");
    assert_ok(&out, "queue policy");
    assert_ok(&out, "dead-letter queue");
    assert!(out.contains("everything blox needs is in place"), "{out}");

    // A role that may not start tasks.
    let proxy = StartTaskFaultProxy::start(&moto).await.unwrap();
    proxy.deny("StartTask");
    let (passed, out) = doctor(&proxy.env(), &args).await;
    assert!(!passed, "{out}");
    assert_fails(
        &out,
        "ecs:StartTask",
        "denied (AccessDeniedException",
        "allow ecs:StartTask",
    );
    assert_ok(&out, "ecs:StopTask");

    // A queue that does not exist, and a store that cannot open.
    let (passed, out) = doctor(
        &env,
        &["--queue", "nope", "--store", "redb:/proc/blox/cannot/x.redb"],
    )
    .await;
    assert!(!passed, "{out}");
    assert_fails(&out, "queue", "does not exist", "--queue");
    assert_fails(&out, "store redb:/proc/blox/cannot/x.redb", "", "check --store");
}
