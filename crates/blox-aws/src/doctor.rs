//! `blox doctor`'s checks of an AWS account: who the credentials are, whether the queue exists and
//! receives ECS events (an enabled EventBridge rule targeting it, a queue policy that lets
//! EventBridge send, a dead-letter queue), and whether every call blox makes is allowed — read calls
//! tried for real, the others with arguments that cannot act (a cluster that does not exist), so
//! that AWS answers "denied" or "not found" without side effects.

use aws_config::SdkConfig;
use aws_sdk_sqs::types::QueueAttributeName;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use serde_json::Value;

use crate::ecs::Classified;

/// The detail types blox ingests.
pub const DETAIL_TYPES: [&str; 2] = ["ECS Task State Change", "ECS Container Instance State Change"];

/// A cluster no account has: a call on it is refused for what it names, after AWS has checked the
/// permission, so it answers "denied" or "not found" and acts on nothing.
const PROBE_CLUSTER: &str = "blox-doctor-probe-no-such-cluster";

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Fine; the text says what was seen.
    Ok(String),
    /// Wrong, with how to put it right.
    Problem { problem: String, fix: String },
    /// Not checked, and why (never a failure).
    Skipped(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: String,
    pub outcome: Outcome,
}

impl Finding {
    fn ok(check: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            outcome: Outcome::Ok(detail.into()),
        }
    }

    fn problem(check: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            outcome: Outcome::Problem {
                problem: problem.into(),
                fix: fix.into(),
            },
        }
    }

    fn skipped(check: impl Into<String>, why: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            outcome: Outcome::Skipped(why.into()),
        }
    }

    pub fn is_problem(&self) -> bool {
        matches!(self.outcome, Outcome::Problem { .. })
    }
}

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--queue`: a name or URL.
    pub queue: Option<String>,
    /// `--clusters`: the clusters whose calls are tried; default the first ECS lists.
    pub clusters: Option<Vec<String>>,
}

/// Error codes that mean "not allowed".
fn is_denied(code: &str) -> bool {
    matches!(
        code,
        "AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation" | "AuthorizationError"
    ) || code.ends_with("AccessDenied")
}

/// How an answer to a permission probe reads: allowed (any answer but a refusal of access),
/// denied, or unknown (no answer).
fn probe<T, E, R>(result: &Result<T, aws_sdk_ecs::error::SdkError<E, R>>) -> Result<(), (bool, String)>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(()),
        Err(err) => match Classified::of(err) {
            Classified::Coded { code, message } if is_denied(&code) => {
                Err((true, format!("{code}: {message}")))
            }
            Classified::Coded { .. } | Classified::Throttled => Ok(()),
            Classified::Uncoded(chain) => Err((false, chain)),
        },
    }
}

/// A finding for an AWS call: `allowed` is what [`probe`] said.
fn call_finding(action: &str, allowed: Result<(), (bool, String)>, detail: &str) -> Finding {
    match allowed {
        Ok(()) => Finding::ok(action, detail),
        Err((true, why)) => Finding::problem(
            action,
            format!("denied ({why})"),
            format!(
                "allow {action} to blox's role (the policies of deploy/cloudformation/blox.yaml list every action)"
            ),
        ),
        Err((false, why)) => Finding::problem(
            action,
            format!("no answer from AWS: {why}"),
            "check the network path to the service's endpoint (and AWS_ENDPOINT_URL_* if set)",
        ),
    }
}

/// Every check, in order. Credentials come first: without them, the rest is skipped.
pub async fn check_account(config: &SdkConfig, options: &Options) -> Vec<Finding> {
    let mut findings = Vec::new();
    match config.region() {
        Some(region) => findings.push(Finding::ok("region", region.to_string())),
        None => {
            findings.push(Finding::problem(
                "region",
                "no AWS region configured",
                "set AWS_REGION (or a profile's region)",
            ));
            return findings;
        }
    }
    let sts = aws_sdk_sts::Client::new(config);
    match sts.get_caller_identity().send().await {
        Ok(identity) => findings.push(Finding::ok(
            "credentials",
            format!(
                "account {} as {}",
                identity.account().unwrap_or("?"),
                identity.arn().unwrap_or("?")
            ),
        )),
        Err(err) => {
            let why = match Classified::of(&err) {
                Classified::Coded { code, message } => format!("{code}: {message}"),
                Classified::Throttled => "throttled".to_owned(),
                Classified::Uncoded(chain) => chain,
            };
            findings.push(Finding::problem(
                "credentials",
                format!("sts:GetCallerIdentity failed ({why})"),
                "give blox credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance or task role",
            ));
            return findings;
        }
    }
    queue_checks(config, options, &mut findings).await;
    ecs_checks(config, options, &mut findings).await;
    let cloudwatch = aws_sdk_cloudwatch::Client::new(config);
    let alarms = cloudwatch.describe_alarms().max_records(1).send().await;
    findings.push(call_finding(
        "cloudwatch:DescribeAlarms",
        probe(&alarms),
        "allowed (deployments' alarms can be watched)",
    ));
    findings
}

async fn queue_checks(config: &SdkConfig, options: &Options, findings: &mut Vec<Finding>) {
    let Some(queue) = &options.queue else {
        findings.push(Finding::problem(
            "queue",
            "no --queue: blox learns of changes only when it reconciles (every --reconcile-interval)",
            "create the queue and its EventBridge rule (deploy/cloudformation/blox.yaml) and pass --queue NAME",
        ));
        return;
    };
    let sqs = aws_sdk_sqs::Client::new(config);
    let url = match crate::sqs::queue_url(&sqs, queue).await {
        Ok(url) => url.unwrap_or_default(),
        Err(err) => {
            findings.push(queue_error(queue, &err));
            return;
        }
    };
    let attributes = match sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
    {
        Ok(out) => out.attributes().cloned().unwrap_or_default(),
        Err(err) => {
            findings.push(queue_error(queue, &err));
            return;
        }
    };
    let Some(queue_arn) = attributes.get(&QueueAttributeName::QueueArn).cloned() else {
        findings.push(Finding::problem(
            "queue",
            format!("{url} has no QueueArn attribute"),
            "check that --queue names an SQS queue",
        ));
        return;
    };
    findings.push(Finding::ok("queue", format!("{url} ({queue_arn})")));
    let deleted = sqs
        .delete_message()
        .queue_url(&url)
        .receipt_handle("blox-doctor-probe")
        .send()
        .await;
    findings.push(call_finding(
        "sqs:DeleteMessage",
        probe(&deleted),
        "allowed (tried with a receipt handle that names no message)",
    ));
    findings.push(Finding::skipped(
        "sqs:ReceiveMessage",
        "not tried: a receive counts towards a message's maxReceiveCount",
    ));

    let rule = rule_findings(config, &queue_arn).await;
    findings.extend(rule);
    findings.push(policy_finding(
        attributes.get(&QueueAttributeName::Policy).map(String::as_str),
        &queue_arn,
        &url,
    ));
    findings.push(dead_letter_finding(&sqs, attributes.get(&QueueAttributeName::RedrivePolicy), &url).await);
}

fn queue_error<E, R>(queue: &str, err: &aws_sdk_sqs::error::SdkError<E, R>) -> Finding
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match Classified::of(err) {
        Classified::Coded { code, message } if is_denied(&code) => Finding::problem(
            "queue",
            format!("reading queue {queue} was denied ({code}: {message})"),
            "allow sqs:GetQueueUrl and sqs:GetQueueAttributes on the queue to blox's role",
        ),
        Classified::Coded { code, .. }
            if code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist") =>
        {
            Finding::problem(
                "queue",
                format!("queue {queue} does not exist in this account and region"),
                "create it (deploy/cloudformation/blox.yaml) or pass --queue with its name or URL",
            )
        }
        Classified::Coded { code, message } => Finding::problem(
            "queue",
            format!("queue {queue}: {code}: {message}"),
            "check --queue and the region",
        ),
        Classified::Throttled => {
            Finding::problem("queue", "SQS throttled the check", "run blox doctor again")
        }
        Classified::Uncoded(chain) => Finding::problem(
            "queue",
            format!("no answer from SQS: {chain}"),
            "check the network path to SQS (and AWS_ENDPOINT_URL_SQS if set)",
        ),
    }
}

/// Whether an EventBridge pattern lets ECS's events of both detail types through: the detail types
/// it misses (`Err` when it matches no ECS event at all).
pub fn pattern_misses(pattern: &str) -> Result<Vec<&'static str>, String> {
    let pattern: Value =
        serde_json::from_str(pattern).map_err(|e| format!("the pattern is not JSON: {e}"))?;
    let lists = |field: &str| -> Option<Vec<String>> {
        pattern.get(field).map(|value| match value {
            Value::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            Value::String(one) => vec![one.clone()],
            _ => Vec::new(),
        })
    };
    if let Some(sources) = lists("source")
        && !sources.iter().any(|source| source == "aws.ecs")
    {
        return Err(format!("its source is {sources:?}, not aws.ecs"));
    }
    Ok(match lists("detail-type") {
        // No detail-type: every ECS event passes.
        None => Vec::new(),
        Some(types) => DETAIL_TYPES
            .into_iter()
            .filter(|wanted| !types.iter().any(|t| t == wanted))
            .collect(),
    })
}

/// The pattern to give a rule that feeds blox.
fn wanted_pattern() -> String {
    serde_json::json!({"source": ["aws.ecs"], "detail-type": DETAIL_TYPES}).to_string()
}

async fn rule_findings(config: &SdkConfig, queue_arn: &str) -> Vec<Finding> {
    const CHECK: &str = "EventBridge rule";
    let events = aws_sdk_eventbridge::Client::new(config);
    let targeting = match events
        .list_rule_names_by_target()
        .target_arn(queue_arn)
        .send()
        .await
    {
        Ok(out) => out.rule_names().to_vec(),
        Err(err) => {
            return vec![call_finding(
                "events:ListRuleNamesByTarget",
                probe::<(), _, _>(&Err(err)),
                "",
            )];
        }
    };
    let mut problems = Vec::new();
    for name in &targeting {
        let rule = match events.describe_rule().name(name).send().await {
            Ok(rule) => rule,
            Err(err) => {
                return vec![call_finding(
                    "events:DescribeRule",
                    probe::<(), _, _>(&Err(err)),
                    "",
                )];
            }
        };
        let enabled = rule.state().is_some_and(|state| state.as_str() == "ENABLED");
        match pattern_misses(rule.event_pattern().unwrap_or("{}")) {
            Ok(missed) if missed.is_empty() && enabled => {
                return vec![Finding::ok(
                    CHECK,
                    format!("{name} sends ECS task and container instance events to the queue"),
                )];
            }
            Ok(missed) if missed.is_empty() => problems.push(Finding::problem(
                CHECK,
                format!("rule {name} sends ECS events to the queue but is disabled"),
                format!("aws events enable-rule --name {name}"),
            )),
            Ok(missed) => problems.push(Finding::problem(
                CHECK,
                format!("rule {name} targets the queue but lets no {missed:?} through"),
                format!(
                    "aws events put-rule --name {name} --event-pattern '{}'",
                    wanted_pattern()
                ),
            )),
            Err(why) => problems.push(Finding::problem(
                CHECK,
                format!("rule {name} targets the queue but matches no ECS event: {why}"),
                format!(
                    "aws events put-rule --name {name} --event-pattern '{}'",
                    wanted_pattern()
                ),
            )),
        }
    }
    if !problems.is_empty() {
        return problems;
    }
    // No rule targets the queue: is there one for ECS events that sends them elsewhere?
    let mut next = None;
    loop {
        let page = match events.list_rules().set_next_token(next.take()).send().await {
            Ok(page) => page,
            Err(err) => return vec![call_finding("events:ListRules", probe::<(), _, _>(&Err(err)), "")],
        };
        for rule in page.rules() {
            let matches_ecs = rule
                .event_pattern()
                .is_some_and(|pattern| pattern_misses(pattern).is_ok_and(|missed| missed.is_empty()));
            if matches_ecs {
                let name = rule.name().unwrap_or("?");
                return vec![Finding::problem(
                    CHECK,
                    format!("rule {name} matches ECS events but does not send them to the queue"),
                    format!("aws events put-targets --rule {name} --targets Id=blox,Arn={queue_arn}"),
                )];
            }
        }
        match page.next_token() {
            Some(token) if !token.is_empty() => next = Some(token.to_owned()),
            _ => break,
        }
    }
    vec![Finding::problem(
        CHECK,
        "no EventBridge rule sends ECS events to the queue: nothing will arrive",
        format!(
            "deploy deploy/cloudformation/blox.yaml, or: aws events put-rule --name blox-ecs-events --event-pattern '{}' && aws events put-targets --rule blox-ecs-events --targets Id=blox,Arn={queue_arn}",
            wanted_pattern()
        ),
    )]
}

/// Whether a queue policy lets EventBridge send to the queue.
pub fn policy_allows_eventbridge(policy: &str, queue_arn: &str) -> bool {
    let Ok(policy) = serde_json::from_str::<Value>(policy) else {
        return false;
    };
    let statements = match policy.get("Statement") {
        Some(Value::Array(statements)) => statements.clone(),
        Some(one @ Value::Object(_)) => vec![one.clone()],
        _ => return false,
    };
    let has = |value: Option<&Value>, wanted: &dyn Fn(&str) -> bool| match value {
        Some(Value::String(one)) => wanted(one),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(wanted),
        _ => false,
    };
    statements.iter().any(|statement| {
        let allows = statement.get("Effect").and_then(Value::as_str) == Some("Allow");
        let principal = match statement.get("Principal") {
            Some(Value::String(any)) => any == "*",
            Some(Value::Object(principal)) => {
                has(principal.get("Service"), &|s| s == "events.amazonaws.com")
                    || has(principal.get("AWS"), &|s| s == "*")
            }
            _ => false,
        };
        let action = has(statement.get("Action"), &|a| {
            matches!(a, "sqs:SendMessage" | "sqs:*" | "*" | "SQS:SendMessage" | "SQS:*")
        });
        let resource = statement
            .get("Resource")
            .is_none_or(|_| has(statement.get("Resource"), &|r| r == queue_arn || r == "*"));
        allows && principal && action && resource
    })
}

fn policy_finding(policy: Option<&str>, queue_arn: &str, url: &str) -> Finding {
    const CHECK: &str = "queue policy";
    if policy.is_some_and(|policy| policy_allows_eventbridge(policy, queue_arn)) {
        return Finding::ok(CHECK, "events.amazonaws.com may send to the queue");
    }
    let statement = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
        }]
    });
    Finding::problem(
        CHECK,
        if policy.is_some() {
            "the queue's policy does not let events.amazonaws.com send to it: EventBridge's deliveries are dropped"
        } else {
            "the queue has no policy: EventBridge cannot send to it, and its deliveries are dropped"
        },
        format!(
            "aws sqs set-queue-attributes --queue-url {url} --attributes '{}'",
            serde_json::json!({"Policy": statement.to_string()})
        ),
    )
}

async fn dead_letter_finding(sqs: &aws_sdk_sqs::Client, redrive: Option<&String>, url: &str) -> Finding {
    const CHECK: &str = "dead-letter queue";
    let fix = format!(
        "create a queue for messages that keep failing and: aws sqs set-queue-attributes --queue-url {url} --attributes '{}'",
        serde_json::json!({"RedrivePolicy": "{\"deadLetterTargetArn\":\"DLQ_ARN\",\"maxReceiveCount\":\"5\"}"})
    );
    let Some(redrive) = redrive else {
        return Finding::problem(
            CHECK,
            "none set: a message that keeps failing is received forever",
            fix,
        );
    };
    let target = serde_json::from_str::<Value>(redrive).ok().and_then(|policy| {
        policy
            .get("deadLetterTargetArn")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let Some(target) = target else {
        return Finding::problem(
            CHECK,
            format!("the redrive policy names no queue: {redrive}"),
            fix,
        );
    };
    let name = target.rsplit(':').next().unwrap_or_default();
    match sqs.get_queue_url().queue_name(name).send().await {
        Ok(_) => Finding::ok(CHECK, target),
        Err(_) => Finding::problem(
            CHECK,
            format!("the redrive policy names {target}, which does not exist"),
            fix,
        ),
    }
}

async fn ecs_checks(config: &SdkConfig, options: &Options, findings: &mut Vec<Finding>) {
    let ecs = aws_sdk_ecs::Client::new(config);
    let listed = ecs.list_clusters().max_results(10).send().await;
    findings.push(call_finding("ecs:ListClusters", probe(&listed), "allowed"));
    let cluster = match (&options.clusters, &listed) {
        (Some(clusters), _) => clusters.first().cloned(),
        (None, Ok(out)) => out.cluster_arns().first().cloned(),
        (None, Err(_)) => None,
    };
    let Some(cluster) = cluster else {
        findings.push(Finding::skipped(
            "ECS calls on a cluster",
            "the account has no cluster to try them on",
        ));
        return;
    };
    let described = ecs.describe_clusters().clusters(&cluster).send().await;
    findings.push(call_finding(
        "ecs:DescribeClusters",
        probe(&described),
        &format!("allowed on {cluster}"),
    ));
    let instances = ecs
        .list_container_instances()
        .cluster(&cluster)
        .max_results(1)
        .send()
        .await;
    findings.push(call_finding(
        "ecs:ListContainerInstances",
        probe(&instances),
        &format!("allowed on {cluster}"),
    ));
    // Described for real when there is one; else an id that names nothing (ECS answers a failure).
    let instance = instances
        .as_ref()
        .ok()
        .and_then(|out| out.container_instance_arns().first().cloned())
        .unwrap_or_else(|| "blox-doctor-probe".to_owned());
    let described = ecs
        .describe_container_instances()
        .cluster(&cluster)
        .container_instances(instance)
        .send()
        .await;
    findings.push(call_finding(
        "ecs:DescribeContainerInstances",
        probe(&described),
        &format!("allowed on {cluster}"),
    ));
    let tasks = ecs.list_tasks().cluster(&cluster).max_results(1).send().await;
    findings.push(call_finding(
        "ecs:ListTasks",
        probe(&tasks),
        &format!("allowed on {cluster}"),
    ));
    let task = tasks
        .as_ref()
        .ok()
        .and_then(|out| out.task_arns().first().cloned())
        .unwrap_or_else(|| "blox-doctor-probe".to_owned());
    let described = ecs.describe_tasks().cluster(&cluster).tasks(task).send().await;
    findings.push(call_finding(
        "ecs:DescribeTasks",
        probe(&described),
        &format!("allowed on {cluster}"),
    ));
    // The scheduler's calls, on things that do not exist: AWS checks the permission first.
    let definition = ecs
        .describe_task_definition()
        .task_definition("blox-doctor-probe-no-such-family:1")
        .send()
        .await;
    findings.push(call_finding(
        "ecs:DescribeTaskDefinition",
        probe(&definition),
        "allowed (tried on a task definition that does not exist)",
    ));
    let started = ecs
        .start_task()
        .cluster(PROBE_CLUSTER)
        .task_definition("blox-doctor-probe-no-such-family:1")
        .container_instances(format!("{PROBE_CLUSTER}-instance"))
        .send()
        .await;
    findings.push(call_finding(
        "ecs:StartTask",
        probe(&started),
        "allowed (tried on a cluster that does not exist: nothing started)",
    ));
    let stopped = ecs
        .stop_task()
        .cluster(PROBE_CLUSTER)
        .task(format!("{PROBE_CLUSTER}-task"))
        .reason("blox doctor: a permission check on a cluster that does not exist")
        .send()
        .await;
    findings.push(call_finding(
        "ecs:StopTask",
        probe(&stopped),
        "allowed (tried on a cluster that does not exist: nothing stopped)",
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_pattern(pattern: &str, expected: Result<Vec<&str>, ()>) {
        let got = pattern_misses(pattern).map_err(|_| ());
        assert_eq!(got, expected, "{pattern}");
    }

    #[test]
    fn patterns() {
        let both = r#"{"source":["aws.ecs"],"detail-type":["ECS Task State Change","ECS Container Instance State Change"]}"#;
        check_pattern(both, Ok(vec![]));
        check_pattern(r#"{"source":["aws.ecs"]}"#, Ok(vec![]));
        check_pattern(
            r#"{"source":["aws.ecs"],"detail-type":["ECS Task State Change"]}"#,
            Ok(vec!["ECS Container Instance State Change"]),
        );
        check_pattern(r#"{"source":["aws.ec2"]}"#, Err(()));
        check_pattern("not json", Err(()));
    }

    fn check_policy(policy: serde_json::Value, expected: bool) {
        assert_eq!(
            policy_allows_eventbridge(&policy.to_string(), "arn:aws:sqs:r:1:q"),
            expected,
            "{policy}"
        );
    }

    #[test]
    fn policies() {
        let statement = |principal: serde_json::Value, action: &str, resource: &str| serde_json::json!({"Statement": [{"Effect": "Allow", "Principal": principal, "Action": action, "Resource": resource}]});
        let events = serde_json::json!({"Service": "events.amazonaws.com"});
        check_policy(
            statement(events.clone(), "sqs:SendMessage", "arn:aws:sqs:r:1:q"),
            true,
        );
        check_policy(statement(events.clone(), "sqs:*", "*"), true);
        check_policy(
            statement(serde_json::json!("*"), "sqs:SendMessage", "arn:aws:sqs:r:1:q"),
            true,
        );
        check_policy(
            statement(events.clone(), "sqs:ReceiveMessage", "arn:aws:sqs:r:1:q"),
            false,
        );
        check_policy(
            statement(
                serde_json::json!({"Service": "sns.amazonaws.com"}),
                "sqs:SendMessage",
                "*",
            ),
            false,
        );
        check_policy(
            statement(events.clone(), "sqs:SendMessage", "arn:aws:sqs:r:1:other"),
            false,
        );
        check_policy(
            serde_json::json!({"Statement": [{"Effect": "Deny", "Principal": events, "Action": "sqs:SendMessage"}]}),
            false,
        );
    }
}
