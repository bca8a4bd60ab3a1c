//! The daemon scheduler's documents and its pure planner.
//!
//! An [`Environment`] names what should run (one task per matching container instance of a cluster);
//! each change of it is an immutable [`Revision`]; a [`Deployment`] makes a revision the one the
//! scheduler converges to, and carries its progress. [`plan`] decides, from these and a view of the
//! cluster, which tasks to start and stop; an executor (elsewhere) applies the plan to ECS.
//!
//! Times are milliseconds since the Unix epoch in Rust and RFC 3339 strings (with milliseconds) on the
//! wire, like the entities' own times.

mod plan;

pub use plan::{
    ClusterView, DEFAULT_INTENT_TTL_MS, InstanceView, IntentKey, Plan, PlanInput, StartIntent, Stop,
    StopReason, Target, TaskView, clear_started, plan, record_start_failure,
};

use serde::{Deserialize, Serialize};

use crate::arn::ClusterName;
use crate::entity::{Attribute, FieldError};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// What every task of an environment carries as its ECS `group`: ownership is this group together with
/// a `startedBy` that is one of the environment's deployment ids, never the task definition alone.
pub fn group(environment: &str) -> String {
    format!("{GROUP_PREFIX}{environment}")
}

/// The prefix of [`group`]: tasks in other groups are never the scheduler's.
pub const GROUP_PREFIX: &str = "blox:";

/// v0.3's environment-name rule (`^[a-zA-Z0-9-_]{1,30}$`), kept so that its names stay valid and
/// `blox:<name>` stays well inside ECS's limit on a group's length.
pub fn validate_environment_name(name: &str) -> Result<(), FieldError> {
    if is_word(name, 30) {
        Ok(())
    } else {
        Err(FieldError::new(
            "name",
            format!("{name:?} is not a valid environment name: 1 to 30 letters, digits, '-' or '_'"),
        ))
    }
}

/// A deployment id becomes the `startedBy` of every task the deployment starts, so it must be what ECS
/// accepts there: up to 128 letters, digits, '-' or '_' (a UUID is).
pub fn validate_deployment_id(id: &str) -> Result<(), FieldError> {
    if is_word(id, 128) {
        Ok(())
    } else {
        Err(FieldError::new(
            "id",
            format!("{id:?} cannot be an ECS startedBy: 1 to 128 letters, digits, '-' or '_'"),
        ))
    }
}

/// Whether `text` is 1 to `max_len` ASCII letters, digits, '-' or '_': the character class both
/// environment names and deployment ids are held to.
fn is_word(text: &str, max_len: usize) -> bool {
    (1..=max_len).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A daemon environment: the latest revision, the deployment being converged to, and health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Environment {
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub cluster: ClusterName,
    #[serde(rename = "clusterARN", alias = "clusterArn")]
    pub cluster_arn: String,
    /// The number of the newest revision; revisions are numbered from 1.
    pub latest_revision: u64,
    /// The deployment the scheduler converges to; none until the first deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deployment: Option<String>,
    #[serde(flatten)]
    pub status: EnvironmentStatus,
    pub health: Health,
    /// Why the environment is unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: u64,
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: u64,
}

/// Serialised flat into the environment: `"status": "active"`, or `"status": "deleting"` with
/// `"terminateTasks"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum EnvironmentStatus {
    Active,
    /// Being deleted: with `terminate_tasks` its tasks are stopped first, else they are left running
    /// (v0.3's only behaviour).
    Deleting {
        #[serde(rename = "terminateTasks")]
        terminate_tasks: bool,
    },
}

/// v0.3's `HealthStatus`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Healthy,
    Unhealthy,
}

/// An immutable revision of an environment: what to run and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    #[serde(rename = "environmentName", alias = "environment")]
    pub environment: String,
    pub number: u64,
    /// v0.3's `deploymentToken`: a UUID the caller chose, which a deployment must quote so that it
    /// deploys the revision the caller saw.
    pub token: String,
    /// The task definition's ARN.
    #[serde(rename = "taskDefinition")]
    pub task_definition: String,
    pub instance_group: InstanceGroup,
    #[serde(default)]
    pub deployment: DeploymentConfiguration,
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: u64,
}

/// The container instances a revision runs on: those of the cluster that carry every attribute listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct InstanceGroup {
    #[serde(rename = "clusterARN", alias = "clusterArn")]
    pub cluster_arn: String,
    /// An attribute with a value matches an instance attribute of that name and value; one without a
    /// value matches the name with any value (or none).
    #[serde(default)]
    pub attributes: Vec<Attribute>,
}

impl InstanceGroup {
    /// Whether an instance with these attributes belongs to the group.
    pub fn matches(&self, attributes: &[Attribute]) -> bool {
        self.attributes.iter().all(|wanted| {
            attributes
                .iter()
                .any(|a| a.name == wanted.name && (wanted.value.is_none() || a.value == wanted.value))
        })
    }
}

/// How a revision is rolled out and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeploymentConfiguration {
    /// Stop the daemon when its instance starts draining (ECS DAEMON services do). By default it is
    /// kept until the instance leaves, so that log and metric agents outlive the tasks they serve.
    #[serde(default)]
    pub stop_on_drain: bool,
    /// The wait before retrying a start that ECS refused on an instance, doubled per failure...
    #[serde(default = "default_backoff_initial")]
    pub start_backoff_initial_ms: u64,
    /// ...up to this.
    #[serde(default = "default_backoff_max")]
    pub start_backoff_max_ms: u64,
}

fn default_backoff_initial() -> u64 {
    5_000
}

fn default_backoff_max() -> u64 {
    300_000
}

impl Default for DeploymentConfiguration {
    fn default() -> Self {
        DeploymentConfiguration {
            stop_on_drain: false,
            start_backoff_initial_ms: default_backoff_initial(),
            start_backoff_max_ms: default_backoff_max(),
        }
    }
}

/// The operation that makes a revision the one the scheduler converges to. Its id is the `startedBy`
/// of the tasks it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    #[serde(rename = "environmentName", alias = "environment")]
    pub environment: String,
    pub revision: u64,
    pub task_definition: String,
    pub status: DeploymentStatus,
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339_opt")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339_opt")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub ended_at: Option<u64>,
    /// Instances where ECS refused to start the task, with why and when the next try is due.
    #[serde(default)]
    pub failed_instances: Vec<FailedInstance>,
    #[serde(default)]
    pub counts: Counts,
    /// Starts in flight: recorded (by compare-and-swap) before each StartTask call, given their task's
    /// ARN once ECS answered, and dropped once the task is in view, ECS refused the start, or the
    /// executor has verified the instance with ECS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub intents: Vec<StartIntent>,
}

/// Serialised lower-case as v0.3 did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Stopped,
}

impl DeploymentStatus {
    /// Failed and stopped deployments are not acted on any more. A completed one still is: it keeps
    /// placing daemons on instances that join later.
    pub fn is_final(self) -> bool {
        matches!(self, DeploymentStatus::Failed | DeploymentStatus::Stopped)
    }
}

/// An instance where ECS refused the start (a StartTask `failure`), and its back-off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct FailedInstance {
    /// The container instance's ARN.
    pub arn: String,
    /// ECS's reason for the last failure, e.g. `RESOURCE:MEMORY`.
    pub reason: String,
    /// Failures in a row.
    pub attempts: u32,
    /// No start is tried on the instance before this time.
    #[serde(rename = "retryAt", with = "rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub retry_at_ms: u64,
}

/// Per-instance progress of a deployment. `desired` counts the instances that should run the task
/// (eligible: ACTIVE, agent connected, in the instance group); each of them is `running` (its task of
/// the deployment's task definition is RUNNING), `failed` (ECS refused to start it there and it has no
/// task yet) or `pending` (anything in between), so `desired = running + pending + failed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Counts {
    pub desired: u64,
    pub running: u64,
    pub pending: u64,
    pub failed: u64,
}

impl Deployment {
    /// A new, pending deployment of `revision` (whose task definition is `task_definition`), created
    /// at `now_ms`, with no progress yet.
    pub fn new(
        id: impl Into<String>,
        environment: impl Into<String>,
        revision: u64,
        task_definition: impl Into<String>,
        now_ms: u64,
    ) -> Self {
        Deployment {
            id: id.into(),
            environment: environment.into(),
            revision,
            task_definition: task_definition.into(),
            status: DeploymentStatus::Pending,
            created_at: now_ms,
            started_at: None,
            ended_at: None,
            failed_instances: Vec::new(),
            counts: Counts::default(),
            intents: Vec::new(),
        }
    }

    /// Folds a plan's outcome into the deployment: counts, `pending → running` once it is acted on,
    /// `running → completed` once the plan says the cluster has converged. Failed and stopped
    /// deployments are left as they are. Returns whether anything changed.
    pub fn observe(&mut self, plan: &Plan, now_ms: u64) -> bool {
        if self.status.is_final() {
            return false;
        }
        let before = (self.status, self.started_at, self.ended_at, self.counts);
        self.counts = plan.counts;
        if self.status == DeploymentStatus::Pending {
            self.status = DeploymentStatus::Running;
            self.started_at = Some(now_ms);
        }
        if self.status == DeploymentStatus::Running && plan.complete {
            self.status = DeploymentStatus::Completed;
            self.ended_at = Some(now_ms);
        }
        before != (self.status, self.started_at, self.ended_at, self.counts)
    }

    /// Unhealthy while an eligible instance cannot get its task, with ECS's reason for one of them.
    pub fn health(&self) -> (Health, Option<String>) {
        if self.counts.failed == 0 {
            return (Health::Healthy, None);
        }
        let example = self
            .failed_instances
            .iter()
            .min_by(|a, b| a.arn.cmp(&b.arn))
            .map(|f| format!(" ({} on {})", f.reason, f.arn))
            .unwrap_or_default();
        let reason = format!(
            "{} of {} instances cannot start the task{example}",
            self.counts.failed, self.counts.desired
        );
        (Health::Unhealthy, Some(reason))
    }
}

/// `u64` milliseconds since the epoch as RFC 3339 with milliseconds.
mod rfc3339 {
    use std::time::UNIX_EPOCH;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::emit::rfc3339_millis(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(D::Error::custom)
    }

    pub fn parse(text: &str) -> Result<u64, String> {
        let time = humantime::parse_rfc3339_weak(text).map_err(|e| format!("{text:?}: {e}"))?;
        let since = time
            .duration_since(UNIX_EPOCH)
            .map_err(|_| format!("{text:?} is before 1970"))?;
        u64::try_from(since.as_millis()).map_err(|_| format!("{text:?} is too far in the future"))
    }
}

mod rfc3339_opt {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => super::rfc3339::serialize(ms, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::rfc3339::parse(&text).map_err(D::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_names() {
        for ok in ["a", "web", "Web-1_x", &"x".repeat(30)] {
            assert!(validate_environment_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "a:b", "dot.", &"x".repeat(31), "ünï"] {
            let err = validate_environment_name(bad).unwrap_err();
            assert_eq!(err.field, "name", "{bad}");
        }
        assert_eq!(group("web"), "blox:web");
        assert!(validate_deployment_id("0b69d5c0-d655-4695-98cd-5d2d526d9d5a").is_ok());
        assert!(validate_deployment_id(&"x".repeat(129)).is_err());
        assert!(validate_deployment_id("a/b").is_err());
    }

    #[test]
    fn instance_groups_match_every_attribute() {
        let attr = |name: &str, value: Option<&str>| Attribute {
            name: name.to_owned(),
            value: value.map(str::to_owned),
        };
        let instance = [attr("stack", Some("prod")), attr("ecs.capability.x", None)];
        let check = |wanted: Vec<Attribute>, matches: bool| {
            let group = InstanceGroup {
                cluster_arn: "c".into(),
                attributes: wanted.clone(),
            };
            assert_eq!(group.matches(&instance), matches, "{wanted:?}");
        };
        check(vec![], true);
        check(vec![attr("stack", Some("prod"))], true);
        check(vec![attr("stack", None)], true);
        check(vec![attr("ecs.capability.x", None)], true);
        check(
            vec![attr("stack", Some("prod")), attr("ecs.capability.x", None)],
            true,
        );
        check(vec![attr("stack", Some("dev"))], false);
        check(vec![attr("ecs.capability.x", Some("1"))], false);
        check(vec![attr("zone", None)], false);
        check(vec![attr("stack", Some("prod")), attr("zone", None)], false);
    }

    #[test]
    fn documents_serialise_in_camel_case_with_v03_status_names() {
        let environment = Environment {
            name: "web".into(),
            cluster: ClusterName::new("prod").unwrap(),
            cluster_arn: "arn:aws:ecs:us-east-1:123456789012:cluster/prod".into(),
            latest_revision: 2,
            active_deployment: Some("d-1".into()),
            status: EnvironmentStatus::Deleting {
                terminate_tasks: true,
            },
            health: Health::Unhealthy,
            health_reason: Some("why".into()),
            created_at: 1_764_072_000_123,
            updated_at: 1_764_072_000_124,
        };
        let json = serde_json::to_value(&environment).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "web",
                "cluster": "prod",
                "clusterARN": "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
                "latestRevision": 2,
                "activeDeployment": "d-1",
                "status": "deleting",
                "terminateTasks": true,
                "health": "unhealthy",
                "healthReason": "why",
                "createdAt": "2025-11-25T12:00:00.123Z",
                "updatedAt": "2025-11-25T12:00:00.124Z",
            })
        );
        assert_eq!(serde_json::from_value::<Environment>(json).unwrap(), environment);
        let active: EnvironmentStatus = serde_json::from_str(r#"{"status":"active"}"#).unwrap();
        assert_eq!(active, EnvironmentStatus::Active);

        let deployment = Deployment {
            id: "d-1".into(),
            environment: "web".into(),
            revision: 2,
            task_definition: "arn:aws:ecs:us-east-1:123456789012:task-definition/web:7".into(),
            status: DeploymentStatus::Completed,
            created_at: 0,
            started_at: Some(1_000),
            ended_at: None,
            failed_instances: vec![FailedInstance {
                arn: "i-1".into(),
                reason: "RESOURCE:MEMORY".into(),
                attempts: 2,
                retry_at_ms: 10_000,
            }],
            counts: Counts {
                desired: 3,
                running: 1,
                pending: 1,
                failed: 1,
            },
            intents: vec![],
        };
        let json = serde_json::to_value(&deployment).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "d-1",
                "environmentName": "web",
                "revision": 2,
                "taskDefinition": "arn:aws:ecs:us-east-1:123456789012:task-definition/web:7",
                "status": "completed",
                "createdAt": "1970-01-01T00:00:00.000Z",
                "startedAt": "1970-01-01T00:00:01.000Z",
                "failedInstances": [
                    {"arn": "i-1", "reason": "RESOURCE:MEMORY", "attempts": 2, "retryAt": "1970-01-01T00:00:10.000Z"}
                ],
                "counts": {"desired": 3, "running": 1, "pending": 1, "failed": 1},
            })
        );
        assert_eq!(serde_json::from_value::<Deployment>(json).unwrap(), deployment);
        for (status, name) in [
            (DeploymentStatus::Pending, "pending"),
            (DeploymentStatus::Running, "running"),
            (DeploymentStatus::Failed, "failed"),
            (DeploymentStatus::Stopped, "stopped"),
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), name);
        }
    }

    #[test]
    fn revision_configuration_has_defaults() {
        let revision: Revision = serde_json::from_value(serde_json::json!({
            "environmentName": "web",
            "number": 1,
            "token": "0b69d5c0-d655-4695-98cd-5d2d526d9d5a",
            "taskDefinition": "arn:aws:ecs:us-east-1:123456789012:task-definition/web:1",
            "instanceGroup": {"clusterARN": "arn:aws:ecs:us-east-1:123456789012:cluster/prod"},
            "createdAt": "2025-11-25T12:00:00Z",
        }))
        .unwrap();
        assert_eq!(revision.deployment, DeploymentConfiguration::default());
        assert_eq!(revision.deployment.start_backoff_initial_ms, 5_000);
        assert_eq!(revision.deployment.start_backoff_max_ms, 300_000);
        assert!(!revision.deployment.stop_on_drain);
        assert!(revision.instance_group.attributes.is_empty());
        assert_eq!(revision.created_at, 1_764_072_000_000);
        let bad = serde_json::from_value::<Revision>(serde_json::json!({
            "environment": "web", "number": 1, "token": "t", "taskDefinition": "td",
            "instanceGroup": {"clusterARN": "c"}, "createdAt": "yesterday",
        }));
        assert!(bad.unwrap_err().to_string().contains("yesterday"));
    }

    #[test]
    fn deployments_progress_and_report_health() {
        let mut deployment = Deployment::new("d", "web", 1, "td", 0);
        let mut plan = Plan {
            counts: Counts {
                desired: 2,
                running: 0,
                pending: 2,
                failed: 0,
            },
            ..Plan::default()
        };
        assert!(deployment.observe(&plan, 10));
        assert_eq!(deployment.status, DeploymentStatus::Running);
        assert_eq!(deployment.started_at, Some(10));
        assert!(!deployment.observe(&plan, 20), "nothing new");
        assert_eq!(deployment.health(), (Health::Healthy, None));

        plan.counts = Counts {
            desired: 2,
            running: 1,
            pending: 0,
            failed: 1,
        };
        deployment.failed_instances.push(FailedInstance {
            arn: "i-2".into(),
            reason: "RESOURCE:MEMORY".into(),
            attempts: 1,
            retry_at_ms: 100,
        });
        assert!(deployment.observe(&plan, 30));
        assert_eq!(
            deployment.health(),
            (
                Health::Unhealthy,
                Some("1 of 2 instances cannot start the task (RESOURCE:MEMORY on i-2)".into())
            )
        );

        plan.complete = true;
        plan.counts = Counts {
            desired: 2,
            running: 2,
            pending: 0,
            failed: 0,
        };
        assert!(deployment.observe(&plan, 40));
        assert_eq!(deployment.status, DeploymentStatus::Completed);
        assert_eq!(deployment.ended_at, Some(40));
        // A completed deployment keeps its end but its counts follow the cluster.
        plan.complete = false;
        plan.counts.running = 1;
        plan.counts.pending = 1;
        assert!(deployment.observe(&plan, 50));
        assert_eq!(deployment.status, DeploymentStatus::Completed);
        assert_eq!(deployment.ended_at, Some(40));

        deployment.status = DeploymentStatus::Stopped;
        assert!(
            !deployment.observe(&Plan::default(), 60),
            "final deployments are left alone"
        );
    }
}
