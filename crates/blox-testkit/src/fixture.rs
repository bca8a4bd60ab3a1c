//! Creating ECS and SQS state in moto with in-process SDK clients.

use anyhow::{Context, bail, ensure};
use aws_sdk_ecs::types::{ContainerDefinition, ContainerInstanceStatus, HealthCheck, PortMapping};
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use std::collections::BTreeMap;

use blox_aws::{DesiredStatus, EcsReader as _, QueueDepth, SdkEcs};
use blox_model::Task;

use crate::moto::{Moto, REGION};

/// Instances per StartTask and UpdateContainerInstancesState call (ECS's limit; moto has none).
const ECS_BATCH: usize = 10;
/// Entries per SendMessageBatch.
const SQS_BATCH: usize = 10;
/// An AMI moto knows.
const AMI: &str = "ami-12c6146b";

/// SDK clients against one [`Moto`], with the calls tests use to build ECS and SQS state.
#[derive(Debug, Clone)]
pub struct EcsFixture {
    pub ecs: aws_sdk_ecs::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    /// ECS as blox reads it (paged listings, described in batches).
    pub reader: SdkEcs,
    endpoint: String,
    http: reqwest::Client,
}

impl EcsFixture {
    pub async fn new(moto: &Moto) -> EcsFixture {
        let config = moto.sdk_config().await;
        EcsFixture {
            ecs: aws_sdk_ecs::Client::new(&config),
            sqs: aws_sdk_sqs::Client::new(&config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(&config),
            reader: SdkEcs::new(&config),
            endpoint: moto.endpoint(),
            http: crate::http_client()
                .build()
                .expect("an HTTP client without options builds"),
        }
    }

    /// Creates a CloudWatch metric alarm (moto starts it in OK; CloudWatch in INSUFFICIENT_DATA).
    pub async fn put_alarm(&self, name: &str) -> anyhow::Result<()> {
        use aws_sdk_cloudwatch::types::{ComparisonOperator, Statistic};
        self.cloudwatch
            .put_metric_alarm()
            .alarm_name(name)
            .namespace("AWS/ECS")
            .metric_name("CPUUtilization")
            .statistic(Statistic::Average)
            .period(60)
            .evaluation_periods(1)
            .threshold(90.0)
            .comparison_operator(ComparisonOperator::GreaterThanThreshold)
            .send()
            .await
            .with_context(|| format!("PutMetricAlarm {name}"))?;
        Ok(())
    }

    /// Sets an alarm's state (`SetAlarmState`), as CloudWatch would on a breach.
    pub async fn set_alarm_state(
        &self,
        name: &str,
        state: aws_sdk_cloudwatch::types::StateValue,
        reason: &str,
    ) -> anyhow::Result<()> {
        self.cloudwatch
            .set_alarm_state()
            .alarm_name(name)
            .state_value(state)
            .state_reason(reason)
            .send()
            .await
            .with_context(|| format!("SetAlarmState {name}"))?;
        Ok(())
    }

    /// Creates a cluster; returns its ARN.
    pub async fn create_cluster(&self, name: &str) -> anyhow::Result<String> {
        let out = self
            .ecs
            .create_cluster()
            .cluster_name(name)
            .send()
            .await
            .context("CreateCluster")?;
        out.cluster()
            .and_then(|c| c.cluster_arn())
            .map(str::to_owned)
            .context("CreateCluster: no ARN")
    }

    /// Registers a task definition of one container `app` (port 80 mapped to 8080); returns its ARN.
    pub async fn register_task_definition(&self, family: &str) -> anyhow::Result<String> {
        let container = ContainerDefinition::builder()
            .name("app")
            .image("nginx:latest")
            .cpu(128)
            .memory(128)
            .essential(true)
            .port_mappings(PortMapping::builder().container_port(80).host_port(8080).build())
            .build();
        self.register_task_definition_with(family, None, None, vec![container])
            .await
    }

    /// Registers a task definition with task-level `cpu` and `memory` (strings, as ECS takes them)
    /// and the given containers; returns its ARN. For tests that need sizes, ports or several
    /// containers; [`EcsFixture::register_task_definition`] is the one-container default.
    pub async fn register_task_definition_with(
        &self,
        family: &str,
        cpu: Option<&str>,
        memory: Option<&str>,
        containers: Vec<ContainerDefinition>,
    ) -> anyhow::Result<String> {
        let out = self
            .ecs
            .register_task_definition()
            .family(family)
            .set_cpu(cpu.map(str::to_owned))
            .set_memory(memory.map(str::to_owned))
            .set_container_definitions(Some(containers))
            .send()
            .await
            .context("RegisterTaskDefinition")?;
        out.task_definition()
            .and_then(|t| t.task_definition_arn())
            .map(str::to_owned)
            .context("RegisterTaskDefinition: no ARN")
    }

    /// Launches `n` moto EC2 instances and registers them in the cluster; returns the container
    /// instance ARNs. moto only accepts an identity document naming an EC2 instance it knows.
    pub async fn register_instances(&self, cluster: &str, n: usize) -> anyhow::Result<Vec<String>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let ec2_ids = self.run_ec2_instances(n).await?;
        let mut arns = Vec::with_capacity(n);
        for id in ec2_ids {
            let out = self
                .ecs
                .register_container_instance()
                .cluster(cluster)
                .instance_identity_document(identity_document(&id))
                .send()
                .await
                .with_context(|| format!("RegisterContainerInstance {id}"))?;
            let arn = out
                .container_instance()
                .and_then(|i| i.container_instance_arn())
                .context("RegisterContainerInstance: no ARN")?;
            arns.push(arn.to_owned());
        }
        Ok(arns)
    }

    /// EC2 RunInstances through moto's query API, to avoid compiling aws-sdk-ec2 for one call. moto
    /// routes a request to a service by the credential scope of its Authorization header and does not
    /// check the signature, so a dummy one does.
    async fn run_ec2_instances(&self, n: usize) -> anyhow::Result<Vec<String>> {
        let count = n.to_string();
        let form = [
            ("Action", "RunInstances"),
            ("Version", "2016-11-15"),
            ("ImageId", AMI),
            ("MinCount", count.as_str()),
            ("MaxCount", count.as_str()),
            ("InstanceType", "t2.micro"),
        ];
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential=testing/20240101/{REGION}/ec2/aws4_request, \
             SignedHeaders=host, Signature=0"
        );
        let response = self
            .http
            .post(format!("{}/", self.endpoint))
            .header("Authorization", authorization)
            .form(&form)
            .send()
            .await
            .context("EC2 RunInstances")?;
        let status = response.status();
        let body = response.text().await.context("EC2 RunInstances body")?;
        ensure!(status.is_success(), "EC2 RunInstances: {status}: {body}");
        let mut ids = xml_values(&body, "instanceId");
        // Only the instancesSet names instance ids today; dedupe in case moto ever nests them.
        let mut seen = std::collections::HashSet::new();
        ids.retain(|id| seen.insert(id.clone()));
        ensure!(
            ids.len() == n,
            "EC2 RunInstances returned {} instance ids, wanted {n}: {body}",
            ids.len()
        );
        Ok(ids)
    }

    /// Starts one task of `task_def` on each instance (StartTask, 10 instances per call); returns the
    /// task ARNs.
    pub async fn start_tasks(
        &self,
        cluster: &str,
        task_def: &str,
        instances: &[String],
        started_by: Option<&str>,
    ) -> anyhow::Result<Vec<String>> {
        let mut arns = Vec::with_capacity(instances.len());
        for chunk in instances.chunks(ECS_BATCH) {
            let out = self
                .ecs
                .start_task()
                .cluster(cluster)
                .task_definition(task_def)
                .set_container_instances(Some(chunk.to_vec()))
                .set_started_by(started_by.map(str::to_owned))
                .send()
                .await
                .context("StartTask")?;
            if !out.failures().is_empty() {
                bail!("StartTask failures: {:?}", out.failures());
            }
            arns.extend(out.tasks().iter().filter_map(|t| t.task_arn()).map(str::to_owned));
        }
        Ok(arns)
    }

    pub async fn stop_task(&self, cluster: &str, arn: &str, reason: &str) -> anyhow::Result<()> {
        self.ecs
            .stop_task()
            .cluster(cluster)
            .task(arn)
            .reason(reason)
            .send()
            .await
            .with_context(|| format!("StopTask {arn}"))?;
        Ok(())
    }

    /// Sets the instances to DRAINING (moto does not stop their tasks).
    pub async fn drain(&self, cluster: &str, instances: &[String]) -> anyhow::Result<()> {
        for chunk in instances.chunks(ECS_BATCH) {
            let out = self
                .ecs
                .update_container_instances_state()
                .cluster(cluster)
                .set_container_instances(Some(chunk.to_vec()))
                .status(ContainerInstanceStatus::Draining)
                .send()
                .await
                .context("UpdateContainerInstancesState")?;
            if !out.failures().is_empty() {
                bail!("UpdateContainerInstancesState failures: {:?}", out.failures());
            }
        }
        Ok(())
    }

    /// Deregisters an instance. moto removes it outright (no INACTIVE state); without `force` it
    /// refuses an instance with running tasks.
    pub async fn deregister(&self, cluster: &str, instance: &str, force: bool) -> anyhow::Result<()> {
        self.ecs
            .deregister_container_instance()
            .cluster(cluster)
            .container_instance(instance)
            .force(force)
            .send()
            .await
            .with_context(|| format!("DeregisterContainerInstance {instance}"))?;
        Ok(())
    }

    /// Registers one task definition of one essential container `app` of `container_cpu` units and
    /// `container_memory` MiB (hard limit), with task-level `cpu`/`memory` when given and `host_port`
    /// mapped from container port 80 when given; returns its ARN. For tests that cannot build SDK
    /// types themselves.
    pub async fn register_sized_task_definition(
        &self,
        family: &str,
        cpu: Option<&str>,
        memory: Option<&str>,
        container_cpu: i32,
        container_memory: i32,
        host_port: Option<i32>,
    ) -> anyhow::Result<String> {
        let mut container = ContainerDefinition::builder()
            .name("app")
            .image("nginx:latest")
            .cpu(container_cpu)
            .memory(container_memory)
            .essential(true);
        if let Some(port) = host_port {
            container =
                container.port_mappings(PortMapping::builder().container_port(80).host_port(port).build());
        }
        self.register_task_definition_with(family, cpu, memory, vec![container.build()])
            .await
    }

    /// Registers a task definition of one essential container `app` (128 CPU units, 128 MiB) with a
    /// container health check; returns its ARN. For tests that cannot build SDK types themselves.
    pub async fn register_health_checked_task_definition(&self, family: &str) -> anyhow::Result<String> {
        let check = HealthCheck::builder()
            .command("CMD-SHELL")
            .command("curl -f http://localhost/ || exit 1")
            .interval(5)
            .retries(3)
            .start_period(10)
            .build()
            .context("HealthCheck")?;
        let container = ContainerDefinition::builder()
            .name("app")
            .image("nginx:latest")
            .cpu(128)
            .memory(128)
            .essential(true)
            .health_check(check)
            .build();
        self.register_task_definition_with(family, None, None, vec![container])
            .await
    }

    /// Launches one moto EC2 instance and registers it in the cluster the way the ECS agent does,
    /// reporting `cpu` units and `memory` MiB as its `totalResources` and `attributes` (name, value)
    /// as its custom attributes; returns the container instance ARN. (moto ignores both: it registers
    /// 4096 CPU and 7482 MiB and only the built-in attributes it derives from the EC2 instance.)
    pub async fn register_instance_reporting(
        &self,
        cluster: &str,
        cpu: i32,
        memory: i32,
        attributes: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let ec2_ids = self.run_ec2_instances(1).await?;
        let id = ec2_ids.first().context("EC2 RunInstances: no instance")?;
        let resource = |name: &str, value: i32| {
            aws_sdk_ecs::types::Resource::builder()
                .name(name)
                .r#type("INTEGER")
                .integer_value(value)
                .build()
        };
        let attributes = attributes
            .iter()
            .map(|(name, value)| {
                aws_sdk_ecs::types::Attribute::builder()
                    .name(*name)
                    .value(*value)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .ecs
            .register_container_instance()
            .cluster(cluster)
            .instance_identity_document(identity_document(id))
            .total_resources(resource("CPU", cpu))
            .total_resources(resource("MEMORY", memory))
            .set_attributes(Some(attributes))
            .send()
            .await
            .with_context(|| format!("RegisterContainerInstance {id}"))?;
        out.container_instance()
            .and_then(|i| i.container_instance_arn())
            .map(str::to_owned)
            .context("RegisterContainerInstance: no ARN")
    }

    /// Sets a custom attribute on a container instance (PutAttributes). moto takes the instance's
    /// full ARN only without a `targetType` (with one it wants the bare id; ECS accepts either).
    pub async fn put_attribute(
        &self,
        cluster: &str,
        instance: &str,
        name: &str,
        value: &str,
    ) -> anyhow::Result<()> {
        let attribute = aws_sdk_ecs::types::Attribute::builder()
            .name(name)
            .value(value)
            .target_id(instance)
            .build()?;
        self.ecs
            .put_attributes()
            .cluster(cluster)
            .attributes(attribute)
            .send()
            .await
            .with_context(|| format!("PutAttributes {name} on {instance}"))?;
        Ok(())
    }

    /// Every task of `cluster` moto holds, stopped ones included, as DescribeTasks describes them.
    pub async fn all_tasks(&self, cluster: &str) -> anyhow::Result<Vec<Task>> {
        let mut arns = Vec::new();
        for status in [DesiredStatus::Running, DesiredStatus::Stopped] {
            arns.extend(
                self.reader
                    .list_tasks(cluster, status)
                    .await
                    .context("ListTasks")?,
            );
        }
        arns.sort();
        arns.dedup();
        self.reader
            .describe_tasks(cluster, &arns)
            .await
            .context("DescribeTasks")
    }

    /// Creates a queue; returns its URL.
    pub async fn create_queue(&self, name: &str) -> anyhow::Result<String> {
        let out = self
            .sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .context("CreateQueue")?;
        out.queue_url().map(str::to_owned).context("CreateQueue: no URL")
    }

    /// Sends the bodies in order (SendMessageBatch, 10 per call).
    pub async fn send_messages<S: AsRef<str>>(&self, queue_url: &str, bodies: &[S]) -> anyhow::Result<()> {
        for chunk in bodies.chunks(SQS_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body.as_ref())
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .sqs
                .send_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .context("SendMessageBatch")?;
            if !out.failed().is_empty() {
                bail!("SendMessageBatch failures: {:?}", out.failed());
            }
        }
        Ok(())
    }

    /// The queue's approximate depth (visible and in flight).
    pub async fn queue_depth(&self, queue_url: &str) -> anyhow::Result<QueueDepth> {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .context("GetQueueAttributes")?;
        let count = |name: QueueAttributeName| -> anyhow::Result<u64> {
            match out.attributes().and_then(|a| a.get(&name)) {
                Some(v) => v.parse().with_context(|| format!("{name:?} = {v:?}")),
                None => Ok(0),
            }
        };
        Ok(QueueDepth {
            visible: count(QueueAttributeName::ApproximateNumberOfMessages)?,
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)?,
        })
    }
}

/// Tasks by the container instance they are on (`""` for none).
pub fn tasks_by_instance(tasks: impl IntoIterator<Item = Task>) -> BTreeMap<String, Vec<Task>> {
    let mut out: BTreeMap<String, Vec<Task>> = BTreeMap::new();
    for task in tasks {
        out.entry(task.container_instance_arn.clone().unwrap_or_default())
            .or_default()
            .push(task);
    }
    out
}

/// The text of every `<tag>…</tag>` element, in order (enough XML for moto's EC2 answers).
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut values = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        values.push(after[..end].trim().to_owned());
        rest = &after[end + close.len()..];
    }
    values
}

/// The EC2 instance identity document the ECS agent sends; moto accepts only one naming an EC2
/// instance it knows.
fn identity_document(instance_id: &str) -> String {
    serde_json::json!({
        "instanceId": instance_id,
        "region": REGION,
        "availabilityZone": format!("{REGION}a"),
        "instanceType": "t2.micro",
        "imageId": AMI,
        "accountId": "123456789012",
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_values_finds_every_element() {
        let xml = "<a><instanceId>i-1</instanceId><x/><instanceId> i-2 </instanceId><instanceId>";
        assert_eq!(xml_values(xml, "instanceId"), vec!["i-1", "i-2"]);
        assert!(xml_values("<b/>", "instanceId").is_empty());
    }
}
