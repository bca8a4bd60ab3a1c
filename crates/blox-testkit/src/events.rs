//! ECS events for tests, built by [`blox_model::emit`] and stamped now. moto never emits ECS events,
//! so tests publish them: [`EventFeed`] describes what moto holds and sends the events
//! ECS would have sent, with strictly increasing versions per resource.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::{Context, ensure};
use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use blox_aws::{EcsReader, SdkEcs};
use blox_model::{ContainerInstance, Task};

use crate::fixture::EcsFixture;
use crate::moto::Moto;

/// [`blox_model::emit::task_event`] sent now.
pub fn task_event(task: &Task, version: u64) -> String {
    blox_model::emit::task_event(task, version, &now_rfc3339())
}

/// [`blox_model::emit::instance_event`] sent now.
pub fn instance_event(instance: &ContainerInstance, version: u64) -> String {
    blox_model::emit::instance_event(instance, version, &now_rfc3339())
}

#[allow(clippy::disallowed_methods)] // The envelope's `time` is when the event is sent: wall clock.
fn now_rfc3339() -> String {
    DateTime::from(SystemTime::now())
        .fmt(Format::DateTime)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Publishes ECS events for what moto holds, to one queue, with versions strictly increasing per ARN
/// (starting at 1), as ECS would.
#[derive(Debug)]
pub struct EventFeed {
    ecs: SdkEcs,
    fixture: EcsFixture,
    queue_url: String,
    versions: Mutex<HashMap<String, u64>>,
}

impl EventFeed {
    pub async fn new(moto: &Moto, queue_url: &str) -> EventFeed {
        EventFeed {
            ecs: SdkEcs::new(&moto.sdk_config().await),
            fixture: EcsFixture::new(moto).await,
            queue_url: queue_url.to_owned(),
            versions: Mutex::new(HashMap::new()),
        }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// The reader the feed describes with.
    pub fn ecs(&self) -> &SdkEcs {
        &self.ecs
    }

    /// The version last sent for `arn`, if any.
    pub fn version_of(&self, arn: &str) -> Option<u64> {
        self.versions.lock().ok()?.get(arn).copied()
    }

    /// Bumps and returns the version of `arn`.
    pub fn next_version(&self, arn: &str) -> u64 {
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        let v = versions.entry(arn.to_owned()).or_insert(0);
        *v += 1;
        *v
    }

    /// Describes the tasks in moto and sends one event each; returns `(arn, version)` as sent.
    pub async fn publish_tasks(&self, cluster: &str, arns: &[String]) -> anyhow::Result<Vec<(String, u64)>> {
        let tasks = self
            .ecs
            .describe_tasks(cluster, arns)
            .await
            .context("describing tasks to publish")?;
        ensure_all_described(arns, tasks.iter().map(|t| t.task_arn.as_str()))?;
        self.send_tasks(&tasks).await
    }

    /// Describes the container instances in moto and sends one event each; returns `(arn, version)`.
    pub async fn publish_instances(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> anyhow::Result<Vec<(String, u64)>> {
        let instances = self
            .ecs
            .describe_container_instances(cluster, arns)
            .await
            .context("describing container instances to publish")?;
        ensure_all_described(arns, instances.iter().map(|i| i.container_instance_arn.as_str()))?;
        self.send_instances(&instances).await
    }

    /// Sends events for tasks as given (e.g. a state moto cannot produce), bumping their versions.
    pub async fn send_tasks(&self, tasks: &[Task]) -> anyhow::Result<Vec<(String, u64)>> {
        let sent: Vec<(String, u64)> = tasks
            .iter()
            .map(|t| (t.task_arn.clone(), self.next_version(&t.task_arn)))
            .collect();
        let bodies: Vec<String> = tasks
            .iter()
            .zip(&sent)
            .map(|(t, (_, v))| task_event(t, *v))
            .collect();
        self.fixture.send_messages(&self.queue_url, &bodies).await?;
        Ok(sent)
    }

    /// Sends events for container instances as given, bumping their versions.
    pub async fn send_instances(
        &self,
        instances: &[ContainerInstance],
    ) -> anyhow::Result<Vec<(String, u64)>> {
        let sent: Vec<(String, u64)> = instances
            .iter()
            .map(|i| {
                (
                    i.container_instance_arn.clone(),
                    self.next_version(&i.container_instance_arn),
                )
            })
            .collect();
        let bodies: Vec<String> = instances
            .iter()
            .zip(&sent)
            .map(|(i, (_, v))| instance_event(i, *v))
            .collect();
        self.fixture.send_messages(&self.queue_url, &bodies).await?;
        Ok(sent)
    }
}

fn ensure_all_described<'a>(
    asked: &[String],
    described: impl Iterator<Item = &'a str>,
) -> anyhow::Result<()> {
    let described: std::collections::HashSet<&str> = described.collect();
    let missing: Vec<&String> = asked.iter().filter(|a| !described.contains(a.as_str())).collect();
    ensure!(missing.is_empty(), "moto did not describe {missing:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use blox_model::event::TASK_STATE_CHANGE;
    use blox_model::{
        Attribute, Container, ContainerOverride, EcsEvent, EnvironmentVariable, NetworkBinding, Overrides,
        Resource, VersionInfo,
    };
    use serde_json::{Value, json};

    use super::*;

    const CLUSTER: &str = "arn:aws:ecs:eu-west-1:111122223333:cluster/prod";

    fn full_task() -> Task {
        Task {
            cluster_arn: CLUSTER.into(),
            container_instance_arn: Some(
                "arn:aws:ecs:eu-west-1:111122223333:container-instance/prod/abc".into(),
            ),
            containers: vec![Container {
                container_arn: "arn:aws:ecs:eu-west-1:111122223333:container/prod/abc/def".into(),
                last_status: "STOPPED".into(),
                name: "app".into(),
                exit_code: Some(137),
                network_bindings: vec![NetworkBinding {
                    bind_ip: "0.0.0.0".into(),
                    container_port: 80,
                    host_port: 8080,
                    protocol: Some("tcp".into()),
                }],
                reason: Some("OOM".into()),
                health_status: Some("UNHEALTHY".into()),
            }],
            created_at: Some("2024-01-02T03:04:05.006Z".into()),
            desired_status: "STOPPED".into(),
            last_status: "STOPPED".into(),
            overrides: Overrides {
                container_overrides: vec![ContainerOverride {
                    name: "app".into(),
                    command: vec!["run".into(), "--fast".into()],
                    environment: vec![EnvironmentVariable {
                        name: "A".into(),
                        value: "1".into(),
                    }],
                }],
                task_role_arn: Some("arn:aws:iam::111122223333:role/app".into()),
            },
            task_arn: "arn:aws:ecs:eu-west-1:111122223333:task/prod/0123456789abcdef".into(),
            task_definition_arn: "arn:aws:ecs:eu-west-1:111122223333:task-definition/app:3".into(),
            started_at: Some("2024-01-02T03:04:06.000Z".into()),
            started_by: Some("ecs-svc/123".into()),
            stopped_at: Some("2024-01-02T03:05:00.500Z".into()),
            stopped_reason: Some("Essential container in task exited".into()),
            group: Some("service:app".into()),
            launch_type: Some("EC2".into()),
            version: 0,
            updated_at: Some("2024-01-02T03:05:00.501Z".into()),
            health_status: Some("UNHEALTHY".into()),
        }
    }

    fn minimal_task() -> Task {
        Task {
            container_instance_arn: None,
            last_status: "PENDING".into(),
            version: 0,
            ..crate::entities::task("prod", "fedcba")
        }
    }

    fn full_instance() -> ContainerInstance {
        let resource = |name: &str, kind: &str, value: &str| Resource {
            name: name.into(),
            kind: kind.into(),
            value: value.into(),
        };
        ContainerInstance {
            agent_connected: true,
            agent_update_status: Some("UPDATED".into()),
            attributes: vec![
                Attribute {
                    name: "ecs.capability.syslog".into(),
                    value: None,
                },
                Attribute {
                    name: "ecs.instance-type".into(),
                    value: Some("t2.micro".into()),
                },
            ],
            cluster_arn: CLUSTER.into(),
            container_instance_arn: "arn:aws:ecs:eu-west-1:111122223333:container-instance/prod/abc".into(),
            ec2_instance_id: Some("i-0123456789".into()),
            registered_resources: vec![
                resource("CPU", "INTEGER", "4096"),
                resource("MEMORY", "LONG", "7482"),
                resource("GPU_SHARE", "DOUBLE", "0.50"),
                resource("PORTS", "STRINGSET", "22,2376"),
                resource("PORTS_UDP", "STRINGSET", ""),
                resource("ODD", "MYSTERY", "x"),
            ],
            remaining_resources: vec![resource("CPU", "INTEGER", "-2048")],
            status: "DRAINING".into(),
            status_reason: Some("draining for upgrade".into()),
            version_info: VersionInfo {
                agent_hash: Some("aebcbca".into()),
                agent_version: Some("1.13.0".into()),
                docker_version: Some("DockerVersion: 1.11.2".into()),
            },
            running_tasks_count: Some(3),
            pending_tasks_count: Some(0),
            registered_at: Some("2016-12-06T16:41:05.000Z".into()),
            version: 0,
            updated_at: Some("2024-01-02T03:05:00.501Z".into()),
        }
    }

    fn minimal_instance() -> ContainerInstance {
        ContainerInstance {
            agent_connected: false,
            agent_update_status: None,
            attributes: Vec::new(),
            cluster_arn: CLUSTER.into(),
            container_instance_arn: "arn:aws:ecs:eu-west-1:111122223333:container-instance/prod/xyz".into(),
            ec2_instance_id: None,
            registered_resources: Vec::new(),
            remaining_resources: Vec::new(),
            status: "ACTIVE".into(),
            status_reason: None,
            version_info: VersionInfo::default(),
            running_tasks_count: None,
            pending_tasks_count: None,
            registered_at: None,
            version: 0,
            updated_at: None,
        }
    }

    #[test]
    fn task_events_round_trip() {
        for (task, version) in [(full_task(), 7), (minimal_task(), 1)] {
            let body = task_event(&task, version);
            let parsed = EcsEvent::parse(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
            let EcsEvent::Task {
                cluster,
                task: parsed,
            } = parsed
            else {
                panic!("not a task event: {body}")
            };
            assert_eq!(cluster.as_str(), "prod");
            assert_eq!(parsed, Task { version, ..task });
        }
    }

    #[test]
    fn instance_events_round_trip() {
        for (instance, version) in [(full_instance(), 14801), (minimal_instance(), 1)] {
            let body = instance_event(&instance, version);
            let parsed = EcsEvent::parse(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
            let EcsEvent::ContainerInstance {
                cluster,
                instance: parsed,
            } = parsed
            else {
                panic!("not an instance event: {body}")
            };
            assert_eq!(cluster.as_str(), "prod");
            assert_eq!(parsed, ContainerInstance { version, ..instance });
        }
    }

    #[test]
    fn events_use_ecs_field_names_and_typed_resources() {
        let task: Value = serde_json::from_str(&task_event(&full_task(), 2)).unwrap();
        assert_eq!(task["detail-type"], TASK_STATE_CHANGE);
        assert_eq!(task["source"], "aws.ecs");
        assert_eq!(task["account"], "111122223333");
        assert_eq!(task["region"], "eu-west-1");
        assert_eq!(task["resources"][0], full_task().task_arn);
        assert_eq!(task["detail"]["taskArn"], full_task().task_arn);
        assert_eq!(
            task["detail"]["containers"][0]["networkBindings"][0]["bindIP"],
            "0.0.0.0"
        );
        assert_eq!(task["detail"]["version"], 2);
        assert_eq!(task["detail"]["healthStatus"], "UNHEALTHY");
        assert_eq!(task["detail"]["containers"][0]["healthStatus"], "UNHEALTHY");
        // Absent when ECS did not say, as in v0.3.
        let minimal: Value = serde_json::from_str(&task_event(&minimal_task(), 1)).unwrap();
        assert!(minimal["detail"].get("healthStatus").is_none());

        let instance: Value = serde_json::from_str(&instance_event(&full_instance(), 3)).unwrap();
        let resources = &instance["detail"]["registeredResources"];
        assert_eq!(resources[0]["integerValue"], 4096);
        assert_eq!(resources[1]["longValue"], 7482);
        assert_eq!(resources[2]["doubleValue"], 0.5);
        assert_eq!(resources[3]["stringSetValue"], json!(["22", "2376"]));
        assert_eq!(resources[4]["stringSetValue"], json!([]));
        assert!(resources[0].get("value").is_none());
        assert_eq!(instance["detail"]["ec2InstanceId"], "i-0123456789");
    }
}
