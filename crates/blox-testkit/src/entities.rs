//! Sample entities for tests: a valid task or container instance with everything optional left out,
//! to be adjusted with struct update syntax (`Task { version: 2, ..task("prod", "t1") }`).

use blox_model::{ContainerInstance, Overrides, Task, VersionInfo};

pub const ACCOUNT: &str = "123456789012";

pub fn cluster_arn(cluster: &str) -> String {
    format!("arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/{cluster}")
}

/// Long format: `task/CLUSTER/ID`.
pub fn task_arn(cluster: &str, id: &str) -> String {
    format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task/{cluster}/{id}")
}

pub fn instance_arn(cluster: &str, id: &str) -> String {
    format!("arn:aws:ecs:us-east-1:{ACCOUNT}:container-instance/{cluster}/{id}")
}

/// A RUNNING task at version 1 on instance `i1` of the cluster.
pub fn task(cluster: &str, id: &str) -> Task {
    Task {
        cluster_arn: cluster_arn(cluster),
        container_instance_arn: Some(instance_arn(cluster, "i1")),
        containers: vec![],
        created_at: None,
        desired_status: "RUNNING".into(),
        last_status: "RUNNING".into(),
        overrides: Overrides::default(),
        task_arn: task_arn(cluster, id),
        task_definition_arn: format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/agent:1"),
        started_at: None,
        started_by: None,
        stopped_at: None,
        stopped_reason: None,
        group: None,
        launch_type: None,
        version: 1,
        updated_at: None,
        health_status: None,
    }
}

/// An ACTIVE, connected container instance at version 1.
pub fn instance(cluster: &str, id: &str) -> ContainerInstance {
    ContainerInstance {
        agent_connected: true,
        agent_update_status: None,
        attributes: vec![],
        cluster_arn: cluster_arn(cluster),
        container_instance_arn: instance_arn(cluster, id),
        ec2_instance_id: None,
        registered_resources: vec![],
        remaining_resources: vec![],
        status: "ACTIVE".into(),
        status_reason: None,
        version_info: VersionInfo::default(),
        running_tasks_count: None,
        pending_tasks_count: None,
        registered_at: None,
        version: 1,
        updated_at: None,
    }
}
