//! [`EcsReader`] on the AWS SDK, and the conversion of SDK types into blox's model.

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_ecs::Client;
use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::types as ecs;
use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use blox_model::{
    Attribute, Container, ContainerInstance, ContainerOverride, EnvironmentVariable, NetworkBinding,
    Overrides, Resource, Task, VersionInfo,
};

use crate::{DESCRIBE_BATCH, DesiredStatus, EcsError, EcsErrorKind, EcsReader};

/// ECS list calls page at most 100 items.
const LIST_PAGE: i32 = 100;

/// Error codes AWS uses for throttling (the set the SDK's own retry classifier treats as throttling,
/// restricted to those ECS can answer).
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
];

/// The ECS read calls of the reconciler on an `aws_sdk_ecs::Client`.
#[derive(Debug, Clone)]
pub struct SdkEcs {
    client: Client,
}

impl SdkEcs {
    pub fn new(config: &SdkConfig) -> SdkEcs {
        SdkEcs {
            client: Client::new(config),
        }
    }

    /// The underlying client, for calls the [`EcsReader`] trait does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn describe_instances_batch(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<Vec<ContainerInstance>, EcsError> {
        const OP: &str = "DescribeContainerInstances";
        let out = self
            .client
            .describe_container_instances()
            .cluster(cluster)
            .set_container_instances(Some(arns.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_error(OP, Some(cluster), e))?;
        log_failures(OP, cluster, out.failures());
        out.container_instances()
            .iter()
            .map(|i| instance_from_sdk(cluster, i).map_err(|e| invalid(OP, cluster, e)))
            .collect()
    }

    async fn describe_tasks_batch(&self, cluster: &str, arns: &[String]) -> Result<Vec<Task>, EcsError> {
        const OP: &str = "DescribeTasks";
        let out = self
            .client
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(arns.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_error(OP, Some(cluster), e))?;
        log_failures(OP, cluster, out.failures());
        out.tasks()
            .iter()
            .map(|t| task_from_sdk(t).map_err(|e| invalid(OP, cluster, e)))
            .collect()
    }
}

#[async_trait]
impl EcsReader for SdkEcs {
    async fn list_clusters(&self) -> Result<Vec<String>, EcsError> {
        let arns: Vec<String> = self
            .client
            .list_clusters()
            .into_paginator()
            .page_size(LIST_PAGE)
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_error("ListClusters", None, e))?;
        tracing::debug!(count = arns.len(), "listed clusters");
        Ok(arns)
    }

    async fn list_container_instances(&self, cluster: &str) -> Result<Vec<String>, EcsError> {
        let arns: Vec<String> = self
            .client
            .list_container_instances()
            .cluster(cluster)
            .into_paginator()
            .page_size(LIST_PAGE)
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_error("ListContainerInstances", Some(cluster), e))?;
        tracing::debug!(cluster, count = arns.len(), "listed container instances");
        Ok(arns)
    }

    async fn describe_container_instances(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<Vec<ContainerInstance>, EcsError> {
        // ECS rejects more than 100 ARNs per call; callers batch, but chunking here keeps a larger
        // slice from becoming an error.
        let mut described = Vec::with_capacity(arns.len());
        for chunk in arns.chunks(DESCRIBE_BATCH) {
            described.extend(self.describe_instances_batch(cluster, chunk).await?);
        }
        tracing::debug!(
            cluster,
            asked = arns.len(),
            described = described.len(),
            "described container instances"
        );
        Ok(described)
    }

    async fn list_tasks(&self, cluster: &str, desired: DesiredStatus) -> Result<Vec<String>, EcsError> {
        let status = match desired {
            DesiredStatus::Running => ecs::DesiredStatus::Running,
            DesiredStatus::Stopped => ecs::DesiredStatus::Stopped,
        };
        let arns: Vec<String> = self
            .client
            .list_tasks()
            .cluster(cluster)
            .desired_status(status)
            .into_paginator()
            .page_size(LIST_PAGE)
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_error("ListTasks", Some(cluster), e))?;
        tracing::debug!(cluster, desired = ?desired, count = arns.len(), "listed tasks");
        Ok(arns)
    }

    async fn describe_tasks(&self, cluster: &str, arns: &[String]) -> Result<Vec<Task>, EcsError> {
        let mut described = Vec::with_capacity(arns.len());
        for chunk in arns.chunks(DESCRIBE_BATCH) {
            described.extend(self.describe_tasks_batch(cluster, chunk).await?);
        }
        tracing::debug!(
            cluster,
            asked = arns.len(),
            described = described.len(),
            "described tasks"
        );
        Ok(described)
    }
}

/// Classifies an SDK error by its AWS error code (never by its text).
fn sdk_error<E, R>(operation: &'static str, cluster: Option<&str>, err: SdkError<E, R>) -> EcsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let kind = match err.code() {
        Some(code) if THROTTLING_CODES.contains(&code) => EcsErrorKind::Throttled,
        Some("ClusterNotFoundException") => EcsErrorKind::ClusterNotFound,
        Some(code) => EcsErrorKind::Other(format!("{code}: {}", err.message().unwrap_or("no message"))),
        // Transport errors and timeouts carry no code; keep the whole source chain.
        None => EcsErrorKind::Other(DisplayErrorContext(&err).to_string()),
    };
    tracing::debug!(operation, cluster, error = %kind, "ECS call failed");
    EcsError {
        operation,
        cluster: cluster.map(str::to_owned),
        kind,
    }
}

fn invalid(operation: &'static str, cluster: &str, reason: String) -> EcsError {
    EcsError {
        operation,
        cluster: Some(cluster.to_owned()),
        kind: EcsErrorKind::Invalid(reason),
    }
}

/// ECS reports ARNs it could not describe as failures; MISSING is the normal answer for a resource
/// that is gone, anything else is worth a warning. Either way the resource is absent from the result.
fn log_failures(operation: &'static str, cluster: &str, failures: &[ecs::Failure]) {
    for failure in failures {
        let (arn, reason) = (failure.arn().unwrap_or(""), failure.reason().unwrap_or(""));
        if reason == "MISSING" {
            tracing::debug!(operation, cluster, arn, "not found by ECS");
        } else {
            tracing::warn!(
                operation,
                cluster,
                arn,
                reason,
                detail = failure.detail(),
                "ECS describe failure"
            );
        }
    }
}

fn required<'a>(field: &'static str, value: Option<&'a str>) -> Result<&'a str, String> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("{field} is missing")),
    }
}

/// Absent and empty strings are the same to blox (moto sends `launchType: ""`).
fn non_empty(value: Option<&str>) -> Option<String> {
    value.filter(|v| !v.is_empty()).map(str::to_owned)
}

/// RFC 3339 in UTC with exactly three fractional digits (`2016-12-06T16:41:05.702Z`), so that
/// timestamps also compare correctly as strings.
pub(crate) fn timestamp(t: &DateTime) -> Option<String> {
    let seconds = DateTime::from_secs(t.secs()).fmt(Format::DateTime).ok()?;
    let seconds = seconds.strip_suffix('Z')?;
    Some(format!("{seconds}.{:03}Z", t.subsec_nanos() / 1_000_000))
}

/// ECS's version is a positive counter; the SDK gives 0 when it is absent (moto), and a negative
/// value would be nonsense: both become 0, "unknown".
fn version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn task_from_sdk(t: &ecs::Task) -> Result<Task, String> {
    let task_arn = required("taskArn", t.task_arn())?;
    let context = |e: String| format!("task {task_arn}: {e}");
    Ok(Task {
        cluster_arn: required("clusterArn", t.cluster_arn())
            .map_err(context)?
            .to_owned(),
        container_instance_arn: non_empty(t.container_instance_arn()),
        containers: t
            .containers()
            .iter()
            .map(container_from_sdk)
            .collect::<Result<_, _>>()
            .map_err(context)?,
        created_at: t.created_at().and_then(timestamp),
        desired_status: required("desiredStatus", t.desired_status())
            .map_err(context)?
            .to_owned(),
        last_status: required("lastStatus", t.last_status())
            .map_err(context)?
            .to_owned(),
        overrides: t.overrides().map(overrides_from_sdk).unwrap_or_default(),
        task_arn: task_arn.to_owned(),
        task_definition_arn: required("taskDefinitionArn", t.task_definition_arn())
            .map_err(context)?
            .to_owned(),
        started_at: t.started_at().and_then(timestamp),
        started_by: non_empty(t.started_by()),
        stopped_at: t.stopped_at().and_then(timestamp),
        stopped_reason: non_empty(t.stopped_reason()),
        group: non_empty(t.group()),
        launch_type: non_empty(t.launch_type().map(|l| l.as_str())),
        version: version(t.version()),
        // ECS's Describe has no updatedAt (only events carry it).
        updated_at: None,
    })
}

fn container_from_sdk(c: &ecs::Container) -> Result<Container, String> {
    Ok(Container {
        container_arn: required("containers[].containerArn", c.container_arn())?.to_owned(),
        // A container ECS has not reported on yet has no status; PENDING is what ECS would say.
        last_status: non_empty(c.last_status()).unwrap_or_else(|| "PENDING".to_owned()),
        name: c.name().unwrap_or_default().to_owned(),
        exit_code: c.exit_code().map(i64::from),
        network_bindings: c
            .network_bindings()
            .iter()
            .map(|b| NetworkBinding {
                bind_ip: b.bind_ip().unwrap_or_default().to_owned(),
                container_port: b.container_port().map(i64::from).unwrap_or_default(),
                host_port: b.host_port().map(i64::from).unwrap_or_default(),
                protocol: b.protocol().map(|p| p.as_str().to_owned()),
            })
            .collect(),
        reason: non_empty(c.reason()),
    })
}

fn overrides_from_sdk(o: &ecs::TaskOverride) -> Overrides {
    Overrides {
        container_overrides: o
            .container_overrides()
            .iter()
            .map(|c| ContainerOverride {
                name: c.name().unwrap_or_default().to_owned(),
                command: c.command().to_vec(),
                environment: c
                    .environment()
                    .iter()
                    .map(|kv| EnvironmentVariable {
                        name: kv.name().unwrap_or_default().to_owned(),
                        value: kv.value().unwrap_or_default().to_owned(),
                    })
                    .collect(),
            })
            .collect(),
        task_role_arn: non_empty(o.task_role_arn()),
    }
}

fn instance_from_sdk(cluster: &str, i: &ecs::ContainerInstance) -> Result<ContainerInstance, String> {
    let arn = required("containerInstanceArn", i.container_instance_arn())?;
    let cluster_arn = cluster_arn(cluster, arn)
        .ok_or_else(|| format!("container instance {arn}: not an ECS container-instance ARN"))?;
    Ok(ContainerInstance {
        agent_connected: i.agent_connected(),
        agent_update_status: i.agent_update_status().map(|s| s.as_str().to_owned()),
        attributes: i
            .attributes()
            .iter()
            .map(|a| Attribute {
                name: a.name().to_owned(),
                value: a.value().map(str::to_owned),
            })
            .collect(),
        cluster_arn,
        container_instance_arn: arn.to_owned(),
        ec2_instance_id: non_empty(i.ec2_instance_id()),
        registered_resources: i.registered_resources().iter().map(resource_from_sdk).collect(),
        remaining_resources: i.remaining_resources().iter().map(resource_from_sdk).collect(),
        status: required("status", i.status())
            .map_err(|e| format!("container instance {arn}: {e}"))?
            .to_owned(),
        status_reason: non_empty(i.status_reason()),
        version_info: i
            .version_info()
            .map(|v| VersionInfo {
                agent_hash: non_empty(v.agent_hash()),
                agent_version: non_empty(v.agent_version()),
                docker_version: non_empty(v.docker_version()),
            })
            .unwrap_or_default(),
        running_tasks_count: Some(i64::from(i.running_tasks_count())),
        pending_tasks_count: Some(i64::from(i.pending_tasks_count())),
        version: version(i.version()),
        updated_at: None,
    })
}

fn resource_from_sdk(r: &ecs::Resource) -> Resource {
    Resource::from_ecs(
        r.name().unwrap_or_default(),
        r.r#type().unwrap_or_default(),
        // The SDK gives 0 for an absent value; from_ecs falls back between integer and long, which
        // only works when the absent one is None.
        Some(i64::from(r.integer_value())).filter(|v| *v != 0),
        Some(r.long_value()).filter(|v| *v != 0),
        Some(r.double_value()).filter(|v| *v != 0.0),
        r.string_set_value(),
    )
}

/// DescribeContainerInstances does not return the cluster ARN. The caller named the cluster (by ARN or
/// by name); a name is completed with the partition, region and account of the instance's own ARN
/// (`arn:P:ecs:R:A:container-instance/…` → `arn:P:ecs:R:A:cluster/NAME`).
fn cluster_arn(cluster: &str, instance_arn: &str) -> Option<String> {
    if cluster.starts_with("arn:") {
        return Some(cluster.to_owned());
    }
    let (prefix, id) = instance_arn.split_once(":container-instance/")?;
    (!id.is_empty()).then(|| format!("{prefix}:cluster/{cluster}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_millis_and_z() {
        let t = DateTime::from_millis(1_481_042_465_702);
        assert_eq!(timestamp(&t).as_deref(), Some("2016-12-06T16:41:05.702Z"));
        let t = DateTime::from_secs(1_481_042_466);
        assert_eq!(timestamp(&t).as_deref(), Some("2016-12-06T16:41:06.000Z"));
    }

    #[test]
    fn cluster_arn_is_completed_from_the_instance_arn() {
        let long = "arn:aws-cn:ecs:cn-north-1:123456789012:container-instance/prod/abc";
        let short = "arn:aws:ecs:us-east-1:123456789012:container-instance/abc";
        assert_eq!(
            cluster_arn("prod", long).as_deref(),
            Some("arn:aws-cn:ecs:cn-north-1:123456789012:cluster/prod")
        );
        assert_eq!(
            cluster_arn("prod", short).as_deref(),
            Some("arn:aws:ecs:us-east-1:123456789012:cluster/prod")
        );
        let given = "arn:aws:ecs:us-east-1:123456789012:cluster/prod";
        assert_eq!(cluster_arn(given, short).as_deref(), Some(given));
        assert_eq!(cluster_arn("prod", "nope"), None);
    }

    #[test]
    fn errors_are_classified_by_code() {
        use aws_sdk_ecs::error::ErrorMetadata;
        use aws_sdk_ecs::operation::list_tasks::ListTasksError;
        let kind = |code: &str| {
            let meta = ErrorMetadata::builder().code(code).message("m").build();
            sdk_error(
                "ListTasks",
                Some("c"),
                SdkError::service_error(ListTasksError::generic(meta), ()),
            )
            .kind
        };
        assert!(matches!(kind("ThrottlingException"), EcsErrorKind::Throttled));
        assert!(matches!(
            kind("TooManyRequestsException"),
            EcsErrorKind::Throttled
        ));
        assert!(matches!(
            kind("ClusterNotFoundException"),
            EcsErrorKind::ClusterNotFound
        ));
        let other = kind("AccessDeniedException");
        assert!(
            matches!(&other, EcsErrorKind::Other(m) if m == "AccessDeniedException: m"),
            "{other:?}"
        );
    }

    #[test]
    fn a_full_sdk_task_converts_to_every_model_field() {
        let arn = |r: &str| format!("arn:aws:ecs:us-east-1:111122223333:{r}");
        let task = ecs::Task::builder()
            .cluster_arn(arn("cluster/prod"))
            .container_instance_arn(arn("container-instance/prod/ci"))
            .containers(
                ecs::Container::builder()
                    .container_arn(arn("container/prod/t/c"))
                    .name("app")
                    .last_status("STOPPED")
                    .exit_code(137)
                    .reason("OOM")
                    .network_bindings(
                        ecs::NetworkBinding::builder()
                            .bind_ip("0.0.0.0")
                            .container_port(80)
                            .host_port(8080)
                            .protocol(ecs::TransportProtocol::Tcp)
                            .build(),
                    )
                    .build(),
            )
            .created_at(DateTime::from_millis(1_481_042_465_702))
            .started_at(DateTime::from_millis(1_481_042_466_800))
            .stopped_at(DateTime::from_secs(1_481_042_500))
            .desired_status("STOPPED")
            .last_status("STOPPED")
            .overrides(
                ecs::TaskOverride::builder()
                    .task_role_arn("arn:aws:iam::111122223333:role/app")
                    .container_overrides(
                        ecs::ContainerOverride::builder()
                            .name("app")
                            .command("run")
                            .environment(ecs::KeyValuePair::builder().name("A").value("1").build())
                            .build(),
                    )
                    .build(),
            )
            .task_arn(arn("task/prod/t"))
            .task_definition_arn(arn("task-definition/app:3"))
            .started_by("ecs-svc/1")
            .stopped_reason("Essential container in task exited")
            .group("service:app")
            .launch_type(ecs::LaunchType::Ec2)
            .version(4)
            .build();
        let mut model = task_from_sdk(&task).unwrap();
        let json = serde_json::to_value(&model).unwrap();
        let want = serde_json::json!({
            "clusterARN": arn("cluster/prod"),
            "containerInstanceARN": arn("container-instance/prod/ci"),
            "containers": [{"containerARN": arn("container/prod/t/c"), "lastStatus": "STOPPED", "name": "app",
                "exitCode": 137, "reason": "OOM",
                "networkBindings": [{"bindIP": "0.0.0.0", "containerPort": 80, "hostPort": 8080, "protocol": "tcp"}]}],
            "createdAt": "2016-12-06T16:41:05.702Z",
            "startedAt": "2016-12-06T16:41:06.800Z",
            "stoppedAt": "2016-12-06T16:41:40.000Z",
            "desiredStatus": "STOPPED",
            "lastStatus": "STOPPED",
            "overrides": {"containerOverrides": [{"name": "app", "command": ["run"],
                "environment": [{"name": "A", "value": "1"}]}], "taskRoleArn": "arn:aws:iam::111122223333:role/app"},
            "taskARN": arn("task/prod/t"),
            "taskDefinitionARN": arn("task-definition/app:3"),
            "startedBy": "ecs-svc/1",
            "stoppedReason": "Essential container in task exited",
            "group": "service:app",
            "launchType": "EC2",
            "version": 4,
        });
        assert_eq!(json, want);
        model.validate().unwrap();
        let missing = ecs::Task::builder().task_arn(arn("task/prod/t")).build();
        assert!(
            task_from_sdk(&missing)
                .unwrap_err()
                .contains("clusterArn is missing")
        );
    }

    #[test]
    fn a_full_sdk_instance_converts_to_every_model_field() {
        let arn = "arn:aws:ecs:us-east-1:111122223333:container-instance/prod/ci";
        let resource = |name: &str, kind: &str| ecs::Resource::builder().name(name).r#type(kind);
        let instance = ecs::ContainerInstance::builder()
            .container_instance_arn(arn)
            .ec2_instance_id("i-1")
            .version(14801)
            .version_info(
                ecs::VersionInfo::builder()
                    .agent_hash("h")
                    .agent_version("1.13.0")
                    .docker_version("d")
                    .build(),
            )
            .registered_resources(resource("CPU", "INTEGER").integer_value(2048).build())
            .registered_resources(resource("MEMORY", "LONG").long_value(7482).build())
            .registered_resources(resource("SHARE", "DOUBLE").double_value(0.5).build())
            .registered_resources(
                resource("PORTS", "STRINGSET")
                    .string_set_value("22")
                    .string_set_value("80")
                    .build(),
            )
            .remaining_resources(resource("CPU", "INTEGER").integer_value(0).build())
            .status("DRAINING")
            .status_reason("upgrade")
            .agent_connected(true)
            .running_tasks_count(3)
            .pending_tasks_count(1)
            .agent_update_status(ecs::AgentUpdateStatus::Updated)
            .attributes(
                ecs::Attribute::builder()
                    .name("ecs.os-type")
                    .value("linux")
                    .build()
                    .unwrap(),
            )
            .attributes(
                ecs::Attribute::builder()
                    .name("ecs.capability.syslog")
                    .build()
                    .unwrap(),
            )
            .build();
        let mut model = instance_from_sdk("prod", &instance).unwrap();
        let json = serde_json::to_value(&model).unwrap();
        let want = serde_json::json!({
            "agentConnected": true,
            "agentUpdateStatus": "UPDATED",
            "attributes": [{"name": "ecs.os-type", "value": "linux"}, {"name": "ecs.capability.syslog"}],
            "clusterARN": "arn:aws:ecs:us-east-1:111122223333:cluster/prod",
            "containerInstanceARN": arn,
            "EC2InstanceID": "i-1",
            "registeredResources": [
                {"name": "CPU", "type": "INTEGER", "value": "2048"},
                {"name": "MEMORY", "type": "LONG", "value": "7482"},
                {"name": "SHARE", "type": "DOUBLE", "value": "0.50"},
                {"name": "PORTS", "type": "STRINGSET", "value": "22,80"},
            ],
            "remainingResources": [{"name": "CPU", "type": "INTEGER", "value": "0"}],
            "status": "DRAINING",
            "statusReason": "upgrade",
            "versionInfo": {"agentHash": "h", "agentVersion": "1.13.0", "dockerVersion": "d"},
            "runningTasksCount": 3,
            "pendingTasksCount": 1,
            "version": 14801,
        });
        assert_eq!(json, want);
        model.validate().unwrap();
    }

    #[test]
    fn versions_default_to_zero() {
        assert_eq!(version(0), 0);
        assert_eq!(version(-3), 0);
        assert_eq!(version(14801), 14801);
    }
}
