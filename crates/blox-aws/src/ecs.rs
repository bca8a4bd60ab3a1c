//! [`EcsReader`] and [`EcsControl`] on the AWS SDK, and the conversion of SDK types into blox's model.

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_ecs::Client;
use aws_sdk_ecs::config::retry::RetryConfig;
use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::types as ecs;
use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use blox_model::{
    Attribute, Container, ContainerInstance, ContainerOverride, EnvironmentVariable, NetworkBinding,
    Overrides, Resource, Task, VersionInfo,
};

use crate::{
    ClusterDescription, ContainerDefinition, DESCRIBE_BATCH, EcsControl, EcsError, EcsErrorKind, EcsReader,
    Failure, LIST_PAGE, ListPage, Listing, START_TASK_BATCH, STARTED_TASKS_ORDER, StartTask, Started,
    TaskDefinitionDescription, started_among,
};

/// [`LIST_PAGE`] as the SDK takes it.
const LIST_PAGE_SIZE: i32 = LIST_PAGE as i32;

/// Error codes AWS uses for throttling (the set the SDK's own retry classifier treats as throttling,
/// restricted to those ECS and CloudWatch can answer).
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

/// The ECS calls of the reconciler ([`EcsReader`]) and of a scheduler ([`EcsControl`]) on an
/// `aws_sdk_ecs::Client`.
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

    /// The underlying client, for calls the [`EcsReader`] and [`EcsControl`] traits do not cover.
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

    async fn describe_clusters_batch(
        &self,
        clusters: &[String],
    ) -> Result<(Vec<ClusterDescription>, Vec<Failure>), EcsError> {
        const OP: &str = "DescribeClusters";
        let out = self
            .client
            .describe_clusters()
            .set_clusters(Some(clusters.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_error(OP, None, e))?;
        let described = out
            .clusters()
            .iter()
            .map(|c| {
                cluster_from_sdk(c).map_err(|reason| EcsError {
                    operation: OP,
                    cluster: None,
                    kind: EcsErrorKind::Invalid(reason),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok((described, out.failures().iter().map(failure_from_sdk).collect()))
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
            .page_size(LIST_PAGE_SIZE)
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_error("ListClusters", None, e))?;
        tracing::debug!(count = arns.len(), "listed clusters");
        Ok(arns)
    }

    async fn list_page(
        &self,
        cluster: &str,
        listing: Listing,
        next_token: Option<&str>,
    ) -> Result<ListPage, EcsError> {
        let token = next_token.map(str::to_owned);
        let (arns, next_token) = match listing {
            Listing::ContainerInstances => {
                let out = self
                    .client
                    .list_container_instances()
                    .cluster(cluster)
                    .max_results(LIST_PAGE_SIZE)
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(|e| sdk_error(listing.operation(), Some(cluster), e))?;
                (out.container_instance_arns().to_vec(), out.next_token)
            }
            Listing::Tasks(desired) => {
                let status = ecs::DesiredStatus::from(desired.as_str());
                let out = self
                    .client
                    .list_tasks()
                    .cluster(cluster)
                    .desired_status(status)
                    .max_results(LIST_PAGE_SIZE)
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(|e| sdk_error(listing.operation(), Some(cluster), e))?;
                (out.task_arns().to_vec(), out.next_token)
            }
        };
        tracing::debug!(
            cluster,
            ?listing,
            count = arns.len(),
            more = next_token.is_some(),
            "listed a page"
        );
        Ok(ListPage {
            arns,
            // An empty token would restart the listing.
            next_token: next_token.filter(|t| !t.is_empty()),
        })
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

    async fn list_started_tasks(
        &self,
        cluster: &str,
        started_by: &str,
        container_instance: &str,
    ) -> Result<Vec<String>, EcsError> {
        // By instance, not by startedBy: ECS refuses the two together, and an instance has a few
        // tasks where a deployment may have started one on each of thousands of instances.
        let mut listed = Vec::new();
        for desired in STARTED_TASKS_ORDER {
            let mut token: Option<String> = None;
            loop {
                let out = self
                    .client
                    .list_tasks()
                    .cluster(cluster)
                    .container_instance(container_instance)
                    .desired_status(ecs::DesiredStatus::from(desired.as_str()))
                    .max_results(LIST_PAGE_SIZE)
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(|e| sdk_error("ListTasks", Some(cluster), e))?;
                listed.extend(out.task_arns().iter().cloned());
                match out.next_token.filter(|t| !t.is_empty()) {
                    Some(next) => token = Some(next),
                    None => break,
                }
            }
        }
        let arns = started_among(self, cluster, started_by, listed).await?;
        tracing::debug!(
            cluster,
            started_by,
            container_instance,
            count = arns.len(),
            "listed started tasks"
        );
        Ok(arns)
    }
}

#[async_trait]
impl EcsControl for SdkEcs {
    async fn describe_clusters(
        &self,
        clusters: &[String],
    ) -> Result<(Vec<ClusterDescription>, Vec<Failure>), EcsError> {
        let (mut described, mut failures) = (Vec::new(), Vec::new());
        // An empty list would make ECS describe the `default` cluster, which nobody asked for; ECS
        // takes at most 100 clusters per call.
        for chunk in clusters.chunks(DESCRIBE_BATCH) {
            let (c, f) = self.describe_clusters_batch(chunk).await?;
            described.extend(c);
            failures.extend(f);
        }
        tracing::debug!(
            asked = clusters.len(),
            described = described.len(),
            failures = failures.len(),
            "described clusters"
        );
        Ok((described, failures))
    }

    async fn describe_task_definition(
        &self,
        task_definition: &str,
    ) -> Result<TaskDefinitionDescription, EcsError> {
        const OP: &str = "DescribeTaskDefinition";
        let out = self
            .client
            .describe_task_definition()
            .task_definition(task_definition)
            .send()
            .await
            .map_err(|e| sdk_error(OP, None, e))?;
        let unusable = |reason: String| EcsError {
            operation: OP,
            cluster: None,
            kind: EcsErrorKind::Invalid(format!("task definition {task_definition}: {reason}")),
        };
        let definition = out
            .task_definition()
            .ok_or_else(|| unusable("no taskDefinition in the answer".to_owned()))?;
        let described = task_definition_from_sdk(definition).map_err(unusable)?;
        tracing::debug!(
            task_definition,
            arn = described.arn,
            containers = described.containers.len(),
            "described task definition"
        );
        Ok(described)
    }

    async fn start_task(&self, request: &StartTask) -> Result<Started, EcsError> {
        const OP: &str = "StartTask";
        let cluster = request.cluster.as_str();
        let count = request.container_instances.len();
        // Checked before calling: ECS refuses these too, but an emulator (moto) starts any number,
        // and the limit should hold whichever ECS answers.
        if count == 0 || count > START_TASK_BATCH {
            return Err(EcsError {
                operation: OP,
                cluster: Some(cluster.to_owned()),
                kind: EcsErrorKind::Rejected {
                    code: "InvalidParameterException".to_owned(),
                    message: format!("{count} container instances: StartTask takes 1 to {START_TASK_BATCH}"),
                },
            });
        }
        // Never retried: StartTask has no idempotency token, so a retry after an answer lost on the way
        // back (a timeout, a 5xx after ECS acted) would start a second task on every instance. The
        // caller settles an unknown outcome itself (`list_started_tasks`) before starting again.
        let once = aws_sdk_ecs::config::Config::builder().retry_config(RetryConfig::disabled());
        let out = self
            .client
            .start_task()
            .cluster(cluster)
            .task_definition(&request.task_definition)
            .set_container_instances(Some(request.container_instances.clone()))
            .set_started_by(request.started_by.clone())
            .set_group(request.group.clone())
            .customize()
            .config_override(once)
            .send()
            .await
            .map_err(|e| sdk_error(OP, Some(cluster), e))?;
        let started = Started {
            tasks: out
                .tasks()
                .iter()
                .map(|t| task_from_sdk(t).map_err(|e| invalid(OP, cluster, e)))
                .collect::<Result<_, _>>()?,
            failures: out.failures().iter().map(failure_from_sdk).collect(),
        };
        tracing::debug!(
            cluster,
            task_definition = request.task_definition,
            asked = count,
            started = started.tasks.len(),
            failures = started.failures.len(),
            "started tasks"
        );
        Ok(started)
    }

    async fn stop_task(&self, cluster: &str, task: &str, reason: &str) -> Result<Task, EcsError> {
        const OP: &str = "StopTask";
        let out = self
            .client
            .stop_task()
            .cluster(cluster)
            .task(task)
            .reason(reason)
            .send()
            .await
            .map_err(|e| sdk_error(OP, Some(cluster), e))?;
        let stopped = out
            .task()
            .ok_or_else(|| format!("task {task}: no task in the answer"))
            .and_then(task_from_sdk)
            .map_err(|e| invalid(OP, cluster, e))?;
        tracing::debug!(
            cluster,
            task,
            desired_status = stopped.desired_status,
            "stopped task"
        );
        Ok(stopped)
    }
}

/// Classifies an SDK error by its AWS error code (never by its text).
/// What any AWS SDK error is before a service names its own kinds: throttled, refused with a code
/// (and AWS's message), or without a code (transport errors and timeouts, with the whole source
/// chain).
pub(crate) enum Classified {
    Throttled,
    Coded { code: String, message: String },
    Uncoded(String),
}

impl Classified {
    pub(crate) fn of<E, R>(err: &SdkError<E, R>) -> Classified
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        match err.code() {
            Some(code) if THROTTLING_CODES.contains(&code) => Classified::Throttled,
            Some(code) => Classified::Coded {
                code: code.to_owned(),
                message: err.message().unwrap_or("no message").to_owned(),
            },
            None => Classified::Uncoded(DisplayErrorContext(err).to_string()),
        }
    }
}

fn sdk_error<E, R>(operation: &'static str, cluster: Option<&str>, err: SdkError<E, R>) -> EcsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let kind = match Classified::of(&err) {
        Classified::Throttled => EcsErrorKind::Throttled,
        Classified::Coded { code, .. } if code == "ClusterNotFoundException" => EcsErrorKind::ClusterNotFound,
        Classified::Coded { code, message }
            if matches!(code.as_str(), "InvalidParameterException" | "ClientException") =>
        {
            EcsErrorKind::Rejected { code, message }
        }
        Classified::Coded { code, message } => EcsErrorKind::Other(format!("{code}: {message}")),
        Classified::Uncoded(chain) => EcsErrorKind::Other(chain),
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
        health_status: non_empty(t.health_status().map(|h| h.as_str())),
    })
}

fn failure_from_sdk(f: &ecs::Failure) -> Failure {
    Failure {
        arn: non_empty(f.arn()),
        // ECS always gives a reason; an empty one still keeps the item visible as failed.
        reason: f.reason().unwrap_or_default().to_owned(),
        detail: non_empty(f.detail()),
    }
}

fn cluster_from_sdk(c: &ecs::Cluster) -> Result<ClusterDescription, String> {
    let arn = required("clusterArn", c.cluster_arn())?;
    let context = |e: String| format!("cluster {arn}: {e}");
    Ok(ClusterDescription {
        cluster_arn: arn.to_owned(),
        cluster_name: required("clusterName", c.cluster_name())
            .map_err(context)?
            .to_owned(),
        status: required("status", c.status()).map_err(context)?.to_owned(),
        registered_container_instances_count: i64::from(c.registered_container_instances_count()),
        running_tasks_count: i64::from(c.running_tasks_count()),
        pending_tasks_count: i64::from(c.pending_tasks_count()),
    })
}

fn task_definition_from_sdk(t: &ecs::TaskDefinition) -> Result<TaskDefinitionDescription, String> {
    let arn = required("taskDefinitionArn", t.task_definition_arn())?;
    let context = |e: String| format!("task definition {arn}: {e}");
    Ok(TaskDefinitionDescription {
        arn: arn.to_owned(),
        family: required("family", t.family()).map_err(context)?.to_owned(),
        revision: i64::from(t.revision()),
        status: required("status", t.status().map(|s| s.as_str()))
            .map_err(context)?
            .to_owned(),
        cpu: units(t.cpu()),
        memory: units(t.memory()),
        containers: t
            .container_definitions()
            .iter()
            .map(container_definition_from_sdk)
            .collect::<Result<_, _>>()
            .map_err(context)?,
    })
}

/// Task-level CPU and memory are strings in ECS's API. ECS answers them as integers (it converts
/// `1 vCPU` or `2 GB` at registration); anything else (an emulator keeping the raw text) counts as
/// unset rather than failing the whole description.
fn units(value: Option<&str>) -> Option<i64> {
    value.and_then(|v| v.parse().ok())
}

fn container_definition_from_sdk(c: &ecs::ContainerDefinition) -> Result<ContainerDefinition, String> {
    Ok(ContainerDefinition {
        name: required("containerDefinitions[].name", c.name())?.to_owned(),
        cpu: i64::from(c.cpu()),
        memory: c.memory().or(c.memory_reservation()).map(i64::from),
        // ECS's default: a container is essential unless it says otherwise.
        essential: c.essential().unwrap_or(true),
        // A missing or zero hostPort is a dynamic port (bridge mode): nothing to reserve up front.
        host_ports: c
            .port_mappings()
            .iter()
            .filter_map(|p| p.host_port().filter(|port| *port > 0).map(i64::from))
            .collect(),
        health_check: c.health_check().is_some(),
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
        health_status: non_empty(c.health_status().map(|h| h.as_str())),
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
        registered_at: i.registered_at().and_then(timestamp),
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
        // The classification, as the kind's Debug (EcsErrorKind has no PartialEq: it is an error).
        let check = |code: &str, message: Option<&str>, want: &str| {
            let mut meta = ErrorMetadata::builder().code(code);
            if let Some(message) = message {
                meta = meta.message(message);
            }
            let err = sdk_error(
                "ListTasks",
                Some("c"),
                SdkError::service_error(ListTasksError::generic(meta.build()), ()),
            );
            assert_eq!(format!("{:?}", err.kind), want, "{code}");
        };
        check("ThrottlingException", Some("m"), "Throttled");
        check("TooManyRequestsException", Some("m"), "Throttled");
        check("ClusterNotFoundException", Some("m"), "ClusterNotFound");
        check(
            "InvalidParameterException",
            Some("Tasks cannot be empty."),
            r#"Rejected { code: "InvalidParameterException", message: "Tasks cannot be empty." }"#,
        );
        check(
            "ClientException",
            Some("Unable to describe task definition."),
            r#"Rejected { code: "ClientException", message: "Unable to describe task definition." }"#,
        );
        check(
            "ClientException",
            None,
            r#"Rejected { code: "ClientException", message: "no message" }"#,
        );
        check(
            "AccessDeniedException",
            Some("m"),
            r#"Other("AccessDeniedException: m")"#,
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
                    .health_status(ecs::HealthStatus::Unhealthy)
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
            .health_status(ecs::HealthStatus::Unhealthy)
            .build();
        let mut model = task_from_sdk(&task).unwrap();
        let json = serde_json::to_value(&model).unwrap();
        let want = serde_json::json!({
            "clusterARN": arn("cluster/prod"),
            "containerInstanceARN": arn("container-instance/prod/ci"),
            "containers": [{"containerARN": arn("container/prod/t/c"), "lastStatus": "STOPPED", "name": "app",
                "exitCode": 137, "reason": "OOM", "healthStatus": "UNHEALTHY",
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
            "healthStatus": "UNHEALTHY",
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

    #[test]
    fn failures_keep_arn_reason_and_detail() {
        let check = |failure: ecs::Failure, want: Failure| assert_eq!(failure_from_sdk(&failure), want);
        let arn = "arn:aws:ecs:us-east-1:111122223333:container-instance/prod/ci";
        check(
            ecs::Failure::builder()
                .arn(arn)
                .reason("RESOURCE:MEMORY")
                .detail("d")
                .build(),
            Failure {
                arn: Some(arn.to_owned()),
                reason: "RESOURCE:MEMORY".to_owned(),
                detail: Some("d".to_owned()),
            },
        );
        check(
            ecs::Failure::builder().reason("MISSING").arn("").build(),
            Failure {
                arn: None,
                reason: "MISSING".to_owned(),
                detail: None,
            },
        );
        check(
            ecs::Failure::builder().build(),
            Failure {
                arn: None,
                reason: String::new(),
                detail: None,
            },
        );
    }

    #[test]
    fn clusters_convert_with_their_counts() {
        let arn = "arn:aws:ecs:us-east-1:111122223333:cluster/prod";
        let cluster = ecs::Cluster::builder()
            .cluster_arn(arn)
            .cluster_name("prod")
            .status("ACTIVE")
            .registered_container_instances_count(3)
            .running_tasks_count(7)
            .pending_tasks_count(1)
            .active_services_count(2)
            .build();
        assert_eq!(
            cluster_from_sdk(&cluster).unwrap(),
            ClusterDescription {
                cluster_arn: arn.to_owned(),
                cluster_name: "prod".to_owned(),
                status: "ACTIVE".to_owned(),
                registered_container_instances_count: 3,
                running_tasks_count: 7,
                pending_tasks_count: 1,
            }
        );
        let nameless = ecs::Cluster::builder().cluster_arn(arn).status("ACTIVE").build();
        assert_eq!(
            cluster_from_sdk(&nameless).unwrap_err(),
            format!("cluster {arn}: clusterName is missing")
        );
        assert_eq!(
            cluster_from_sdk(&ecs::Cluster::builder().build()).unwrap_err(),
            "clusterArn is missing"
        );
    }

    #[test]
    fn task_level_units_are_integers_or_unset() {
        let check = |value: Option<&str>, want: Option<i64>| assert_eq!(units(value), want, "{value:?}");
        check(Some("1024"), Some(1024));
        check(Some("512"), Some(512));
        check(None, None);
        check(Some(""), None);
        // ECS converts these at registration; unconverted, they are not a number of units.
        check(Some("1 vCPU"), None);
        check(Some("2 GB"), None);
        check(Some("0.5"), None);
    }

    #[test]
    fn container_definitions_convert_for_placement() {
        let check = |container: ecs::ContainerDefinition, want: ContainerDefinition| {
            assert_eq!(container_definition_from_sdk(&container).unwrap(), want);
        };
        let app = || ecs::ContainerDefinition::builder().name("app");
        let want = |cpu: i64, memory: Option<i64>, essential: bool, host_ports: &[i64]| ContainerDefinition {
            name: "app".to_owned(),
            cpu,
            memory,
            essential,
            host_ports: host_ports.to_vec(),
            health_check: false,
        };
        let mapping = |container: i32, host: Option<i32>| {
            ecs::PortMapping::builder()
                .container_port(container)
                .set_host_port(host)
                .build()
        };
        // Nothing set: no CPU, no memory, essential by default, no ports.
        check(app().build(), want(0, None, true, &[]));
        check(
            app().cpu(256).essential(false).build(),
            want(256, None, false, &[]),
        );
        // The hard limit wins over the soft one; the soft one stands in when alone.
        check(
            app().memory(512).memory_reservation(128).build(),
            want(0, Some(512), true, &[]),
        );
        check(
            app().memory_reservation(128).build(),
            want(0, Some(128), true, &[]),
        );
        check(app().memory(64).build(), want(0, Some(64), true, &[]));
        // Static host ports only: absent and 0 are dynamic.
        check(
            app()
                .port_mappings(mapping(80, Some(8080)))
                .port_mappings(mapping(81, Some(0)))
                .port_mappings(mapping(82, None))
                .port_mappings(mapping(443, Some(8443)))
                .build(),
            want(0, None, true, &[8080, 8443]),
        );
        let check_command = ecs::HealthCheck::builder()
            .command("CMD-SHELL")
            .command("curl -f http://localhost/ || exit 1")
            .build()
            .unwrap();
        check(
            app().health_check(check_command).build(),
            ContainerDefinition {
                health_check: true,
                ..want(0, None, true, &[])
            },
        );
        assert_eq!(
            container_definition_from_sdk(&ecs::ContainerDefinition::builder().build()).unwrap_err(),
            "containerDefinitions[].name is missing"
        );
    }

    #[test]
    fn a_task_definition_converts_with_its_containers() {
        let arn = "arn:aws:ecs:us-east-1:111122223333:task-definition/web:3";
        let definition = ecs::TaskDefinition::builder()
            .task_definition_arn(arn)
            .family("web")
            .revision(3)
            .status(ecs::TaskDefinitionStatus::Active)
            .cpu("1024")
            .memory("2048")
            .container_definitions(
                ecs::ContainerDefinition::builder()
                    .name("app")
                    .cpu(512)
                    .memory(1024)
                    .port_mappings(
                        ecs::PortMapping::builder()
                            .container_port(80)
                            .host_port(80)
                            .build(),
                    )
                    .build(),
            )
            .container_definitions(
                ecs::ContainerDefinition::builder()
                    .name("sidecar")
                    .memory_reservation(64)
                    .essential(false)
                    .health_check(
                        ecs::HealthCheck::builder()
                            .command("CMD")
                            .command("true")
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .build();
        assert_eq!(
            task_definition_from_sdk(&definition).unwrap(),
            TaskDefinitionDescription {
                arn: arn.to_owned(),
                family: "web".to_owned(),
                revision: 3,
                status: "ACTIVE".to_owned(),
                cpu: Some(1024),
                memory: Some(2048),
                containers: vec![
                    ContainerDefinition {
                        name: "app".to_owned(),
                        cpu: 512,
                        memory: Some(1024),
                        essential: true,
                        host_ports: vec![80],
                        health_check: false,
                    },
                    ContainerDefinition {
                        name: "sidecar".to_owned(),
                        cpu: 0,
                        memory: Some(64),
                        essential: false,
                        host_ports: vec![],
                        health_check: true,
                    },
                ],
            }
        );
        // The sidecar's check does not count: it is not essential, so ECS ignores it for the task.
        assert!(!task_definition_from_sdk(&definition).unwrap().has_health_checks());
        let bare = ecs::TaskDefinition::builder()
            .task_definition_arn(arn)
            .family("web")
            .revision(3)
            .status(ecs::TaskDefinitionStatus::Inactive)
            .build();
        let bare = task_definition_from_sdk(&bare).unwrap();
        assert_eq!(
            (bare.status.as_str(), bare.cpu, bare.memory, bare.containers.len()),
            ("INACTIVE", None, None, 0)
        );
        let nameless = ecs::TaskDefinition::builder()
            .task_definition_arn(arn)
            .family("web")
            .status(ecs::TaskDefinitionStatus::Active)
            .container_definitions(ecs::ContainerDefinition::builder().build())
            .build();
        assert_eq!(
            task_definition_from_sdk(&nameless).unwrap_err(),
            format!("task definition {arn}: containerDefinitions[].name is missing")
        );
    }
}
