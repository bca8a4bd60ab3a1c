//! The ECS entities blox mirrors, in the shape Blox v0.3 served them (its JSON field names are our API
//! contract, so these types serialise to exactly that shape; fields v0.3 did not have are optional and
//! additive). Events and ECS Describe results are both converted into these.

use serde::{Deserialize, Serialize};

use crate::arn::{Arn, ArnError, ClusterName, ResourceArn};
use crate::storable::check_storable;

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// An ECS task (v0.3 `TaskDetail`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Derived from a long-format task ARN when a description leaves it out.
    #[serde(rename = "clusterARN", alias = "clusterArn", default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub cluster_arn: String,
    /// Absent for tasks that run on no container instance (Fargate).
    #[serde(
        rename = "containerInstanceARN",
        alias = "containerInstanceArn",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub container_instance_arn: Option<String>,
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    pub desired_status: String,
    pub last_status: String,
    #[serde(default)]
    pub overrides: Overrides,
    #[serde(rename = "taskARN", alias = "taskArn")]
    pub task_arn: String,
    #[serde(rename = "taskDefinitionARN", alias = "taskDefinitionArn")]
    pub task_definition_arn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_type: Option<String>,
    /// ECS's per-resource version; 0 when ECS did not say (moto never does).
    #[serde(default)]
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// `HEALTHY`, `UNHEALTHY` or `UNKNOWN`: ECS's aggregate of the essential containers' health
    /// checks (`UNKNOWN` when there are none). Not in v0.3; absent when ECS did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(rename = "containerARN", alias = "containerArn")]
    pub container_arn: String,
    pub last_status: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_bindings: Vec<NetworkBinding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `HEALTHY`, `UNHEALTHY` or `UNKNOWN` (`UNKNOWN` without a health check). Not in v0.3; absent
    /// when ECS did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NetworkBinding {
    #[serde(rename = "bindIP", alias = "bindIp")]
    pub bind_ip: String,
    pub container_port: i64,
    pub host_port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Overrides {
    #[serde(default)]
    pub container_overrides: Vec<ContainerOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_role_arn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ContainerOverride {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<EnvironmentVariable>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EnvironmentVariable {
    pub name: String,
    pub value: String,
}

/// An ECS container instance (v0.3 `ContainerInstanceDetail`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ContainerInstance {
    pub agent_connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_update_status: Option<String>,
    #[serde(default)]
    pub attributes: Vec<Attribute>,
    /// Derived from a long-format container-instance ARN when a description leaves it out (ECS's
    /// DescribeContainerInstances does).
    #[serde(rename = "clusterARN", alias = "clusterArn", default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub cluster_arn: String,
    #[serde(rename = "containerInstanceARN", alias = "containerInstanceArn")]
    pub container_instance_arn: String,
    #[serde(
        rename = "EC2InstanceID",
        alias = "ec2InstanceId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ec2_instance_id: Option<String>,
    #[serde(default)]
    pub registered_resources: Vec<Resource>,
    #[serde(default)]
    pub remaining_resources: Vec<Resource>,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    #[serde(default)]
    pub version_info: VersionInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_tasks_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_tasks_count: Option<i64>,
    /// When the instance registered with its cluster (events and DescribeContainerInstances carry
    /// it; v0.3 did not keep it): the cluster query language's `registeredAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<String>,
    /// ECS's per-resource version; 0 when ECS did not say (moto never does).
    #[serde(default)]
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Attribute {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A registered or remaining resource; `value` is rendered from ECS's typed value as v0.3 did:
/// integers as decimal strings, doubles with two decimals, string sets comma-joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(from = "ResourceRepr")]
pub struct Resource {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

impl Resource {
    /// Renders an ECS resource the way v0.3 did (`handler/api/v1/translate.go`).
    pub fn from_ecs(
        name: &str,
        kind: &str,
        integer: Option<i64>,
        long: Option<i64>,
        double: Option<f64>,
        string_set: &[String],
    ) -> Resource {
        let value = match kind {
            "INTEGER" => integer.or(long).unwrap_or_default().to_string(),
            "LONG" => long.or(integer).unwrap_or_default().to_string(),
            "DOUBLE" => format!("{:.2}", double.unwrap_or_default()),
            "STRINGSET" => string_set.join(","),
            _ => integer
                .or(long)
                .map(|v| v.to_string())
                .unwrap_or_else(|| string_set.join(",")),
        };
        Resource {
            name: name.to_owned(),
            kind: kind.to_owned(),
            value,
        }
    }
}

/// Either our rendered shape (`value`) or ECS's typed one (`integerValue`, `longValue`, ...).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceRepr {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    value: Option<String>,
    integer_value: Option<i64>,
    long_value: Option<i64>,
    double_value: Option<f64>,
    #[serde(default)]
    string_set_value: Vec<String>,
}

impl From<ResourceRepr> for Resource {
    fn from(r: ResourceRepr) -> Resource {
        match r.value {
            Some(value) => Resource {
                name: r.name,
                kind: r.kind,
                value,
            },
            None => Resource::from_ecs(
                &r.name,
                &r.kind,
                r.integer_value,
                r.long_value,
                r.double_value,
                &r.string_set_value,
            ),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
}

/// Task `lastStatus` values ECS documents (task lifecycle), for validating filters.
pub const TASK_STATUSES: &[&str] = &[
    "PROVISIONING",
    "PENDING",
    "ACTIVATING",
    "RUNNING",
    "DEACTIVATING",
    "STOPPING",
    "DEPROVISIONING",
    "STOPPED",
    "DELETED",
];

/// Container instance `status` values ECS documents.
pub const INSTANCE_STATUSES: &[&str] = &[
    "REGISTERING",
    "REGISTRATION_FAILED",
    "ACTIVE",
    "DRAINING",
    "DEREGISTERING",
    "INACTIVE",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_values_render_as_v03() {
        let check = |kind, i, l, d, s: &[&str], want: &str| {
            let set: Vec<String> = s.iter().map(|x| x.to_string()).collect();
            assert_eq!(Resource::from_ecs("r", kind, i, l, d, &set).value, want, "{kind}");
        };
        check("INTEGER", Some(4096), None, None, &[], "4096");
        check("LONG", None, Some(7482), None, &[], "7482");
        check("DOUBLE", None, None, Some(0.5), &[], "0.50");
        check("STRINGSET", None, None, None, &["22", "2376"], "22,2376");
        check("STRINGSET", None, None, None, &[], "");
    }

    #[test]
    fn health_status_is_absent_unless_ecs_said() {
        let json = serde_json::json!({
            "clusterArn": "arn:aws:ecs:us-east-1:111122223333:cluster/c",
            "taskArn": "arn:aws:ecs:us-east-1:111122223333:task/c/t",
            "taskDefinitionArn": "arn:aws:ecs:us-east-1:111122223333:task-definition/d:1",
            "desiredStatus": "RUNNING",
            "lastStatus": "RUNNING",
            "containers": [{"containerArn": "arn:aws:ecs:us-east-1:111122223333:container/c/t/x",
                "lastStatus": "RUNNING", "name": "x"}],
        });
        let mut task: Task = serde_json::from_value(json).unwrap();
        assert_eq!(
            (
                task.health_status.as_deref(),
                task.containers[0].health_status.as_deref()
            ),
            (None, None)
        );
        let v03 = serde_json::to_value(&task).unwrap();
        assert!(v03.get("healthStatus").is_none() && v03["containers"][0].get("healthStatus").is_none());
        task.health_status = Some("HEALTHY".into());
        task.containers[0].health_status = Some("UNKNOWN".into());
        let with = serde_json::to_value(&task).unwrap();
        assert_eq!(
            (&with["healthStatus"], &with["containers"][0]["healthStatus"]),
            (&"HEALTHY".into(), &"UNKNOWN".into())
        );
        assert_eq!(serde_json::from_value::<Task>(with).unwrap(), task);
    }
}

impl Task {
    /// The cluster this task belongs to, from its cluster ARN.
    pub fn cluster(&self) -> Result<ClusterName, ArnError> {
        ClusterName::from_arn(&self.cluster_arn)
    }

    /// Checks the identifiers ECS gave: a cluster ARN, a task ARN (whose cluster, in the long format,
    /// must be that cluster, and whose account and region must be the cluster's), and a
    /// container-instance ARN when there is one; and that what the store keys and indexes a task by
    /// (cluster, ARN, `lastStatus`, `startedBy`) is [storable](crate::storable). A missing cluster ARN
    /// is filled in from a long-format task ARN.
    pub fn validate(&mut self) -> Result<ClusterName, FieldError> {
        check_storable("taskArn", &self.task_arn)?;
        check_storable("clusterArn", &self.cluster_arn)?;
        check_storable("lastStatus", &self.last_status)?;
        if let Some(started_by) = &self.started_by {
            check_storable("startedBy", started_by)?;
        }
        let task = ResourceArn::task(&self.task_arn).map_err(|e| FieldError::new("taskArn", e))?;
        fill_cluster_arn(&mut self.cluster_arn, &self.task_arn, &task);
        let cluster = self.cluster().map_err(|e| FieldError::new("clusterArn", e))?;
        check_same_cluster("taskArn", &task, &cluster)?;
        check_same_origin("taskArn", &self.task_arn, &self.cluster_arn)?;
        if let Some(arn) = &self.container_instance_arn {
            check_storable("containerInstanceArn", arn)?;
            let instance = ResourceArn::container_instance(arn)
                .map_err(|e| FieldError::new("containerInstanceArn", e))?;
            check_same_cluster("containerInstanceArn", &instance, &cluster)?;
            check_same_origin("containerInstanceArn", arn, &self.cluster_arn)?;
        }
        require_status("lastStatus", &self.last_status)?;
        require_status("desiredStatus", &self.desired_status)?;
        Ok(cluster)
    }
}

impl ContainerInstance {
    pub fn cluster(&self) -> Result<ClusterName, ArnError> {
        ClusterName::from_arn(&self.cluster_arn)
    }

    /// Checks the cluster and container-instance ARNs (the same cluster, account and region) and the
    /// status, and that what the store keys and indexes an instance by (cluster, ARN, status) is
    /// [storable](crate::storable). A missing cluster ARN is filled in from a long-format
    /// container-instance ARN.
    pub fn validate(&mut self) -> Result<ClusterName, FieldError> {
        check_storable("containerInstanceArn", &self.container_instance_arn)?;
        check_storable("clusterArn", &self.cluster_arn)?;
        check_storable("status", &self.status)?;
        let instance = ResourceArn::container_instance(&self.container_instance_arn)
            .map_err(|e| FieldError::new("containerInstanceArn", e))?;
        fill_cluster_arn(&mut self.cluster_arn, &self.container_instance_arn, &instance);
        let cluster = self.cluster().map_err(|e| FieldError::new("clusterArn", e))?;
        check_same_cluster("containerInstanceArn", &instance, &cluster)?;
        check_same_origin(
            "containerInstanceArn",
            &self.container_instance_arn,
            &self.cluster_arn,
        )?;
        require_status("status", &self.status)?;
        Ok(cluster)
    }
}

/// A field of an ECS resource that is not what ECS would send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: &'static str, reason: impl ToString) -> FieldError {
        FieldError {
            field,
            reason: reason.to_string(),
        }
    }
}

/// `arn:PARTITION:ecs:REGION:ACCOUNT:cluster/NAME` from a long-format resource ARN, when the cluster
/// ARN is missing. Left empty (and so rejected) when the resource ARN names no cluster.
fn fill_cluster_arn(cluster_arn: &mut String, resource: &str, parsed: &ResourceArn) {
    if !cluster_arn.is_empty() {
        return;
    }
    if let (Some(cluster), Ok(arn)) = (&parsed.cluster, Arn::parse(resource)) {
        *cluster_arn = format!(
            "arn:{}:ecs:{}:{}:cluster/{cluster}",
            arn.partition, arn.region, arn.account
        );
    }
}

fn check_same_cluster(
    field: &'static str,
    arn: &ResourceArn,
    cluster: &ClusterName,
) -> Result<(), FieldError> {
    match &arn.cluster {
        Some(c) if c != cluster => Err(FieldError::new(
            field,
            format!("names cluster \"{c}\" but clusterArn names \"{cluster}\""),
        )),
        _ => Ok(()),
    }
}

/// A resource ARN in the partition, account and region of its cluster ARN (both already parsed).
fn check_same_origin(field: &'static str, arn: &str, cluster_arn: &str) -> Result<(), FieldError> {
    let (Ok(resource), Ok(cluster)) = (Arn::parse(arn), Arn::parse(cluster_arn)) else {
        return Ok(());
    };
    let same = resource.partition == cluster.partition
        && resource.account == cluster.account
        && resource.region == cluster.region;
    if !same {
        return Err(FieldError::new(
            field,
            format!(
                "is in {}:{}:{} but clusterArn in {}:{}:{}",
                resource.partition,
                resource.region,
                resource.account,
                cluster.partition,
                cluster.region,
                cluster.account
            ),
        ));
    }
    Ok(())
}

fn require_status(field: &'static str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        return Err(FieldError::new(field, format!("{value:?} is not an ECS status")));
    }
    Ok(())
}
