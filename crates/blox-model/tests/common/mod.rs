//! Builders shared by the daemon tests: ECS entities in the shapes the view reads, and a store of the
//! scheduler's documents that applies `Changes` as the executor's compare-and-swap batch would.

#![allow(dead_code)] // each test crate uses a part

use blox_model::daemon::{Changes, Doc, Snapshot};
use blox_model::emit::rfc3339_millis;
use blox_model::{Attribute, ContainerInstance, Task, VersionInfo};

pub const CLUSTER_ARN: &str = "arn:aws:ecs:us-east-1:123456789012:cluster/prod";

pub fn attribute(name: &str, value: Option<&str>) -> Attribute {
    Attribute {
        name: name.to_owned(),
        value: value.map(str::to_owned),
    }
}

pub fn container_instance(
    arn: &str,
    status: &str,
    connected: bool,
    attributes: Vec<Attribute>,
) -> ContainerInstance {
    ContainerInstance {
        agent_connected: connected,
        agent_update_status: None,
        attributes,
        cluster_arn: CLUSTER_ARN.to_owned(),
        container_instance_arn: arn.to_owned(),
        ec2_instance_id: None,
        registered_resources: Vec::new(),
        remaining_resources: Vec::new(),
        status: status.to_owned(),
        status_reason: None,
        version_info: VersionInfo::default(),
        running_tasks_count: None,
        pending_tasks_count: None,
        registered_at: None,
        version: 0,
        updated_at: None,
    }
}

/// A task as ECS describes it; times in milliseconds.
#[derive(Debug, Clone)]
pub struct TaskSpec<'a> {
    pub arn: &'a str,
    pub instance: &'a str,
    pub group: &'a str,
    pub started_by: &'a str,
    pub task_definition: &'a str,
    pub last_status: &'a str,
    pub desired_status: &'a str,
    pub health: Option<&'a str>,
    pub started_at: Option<u64>,
    pub stopped_at: Option<u64>,
    pub stopped_reason: Option<&'a str>,
    pub updated_at: Option<u64>,
}

impl TaskSpec<'_> {
    pub fn entity(&self) -> Task {
        Task {
            cluster_arn: CLUSTER_ARN.to_owned(),
            container_instance_arn: Some(self.instance.to_owned()),
            containers: Vec::new(),
            created_at: None,
            desired_status: self.desired_status.to_owned(),
            last_status: self.last_status.to_owned(),
            overrides: Default::default(),
            task_arn: self.arn.to_owned(),
            task_definition_arn: self.task_definition.to_owned(),
            started_at: self.started_at.map(rfc3339_millis),
            started_by: Some(self.started_by.to_owned()),
            stopped_at: self.stopped_at.map(rfc3339_millis),
            stopped_reason: self.stopped_reason.map(str::to_owned),
            group: Some(self.group.to_owned()),
            launch_type: Some("EC2".to_owned()),
            health_status: self.health.map(str::to_owned),
            version: 0,
            updated_at: self.updated_at.map(rfc3339_millis),
        }
    }
}

/// Applies a command's changes to the stored documents, as one batch.
pub fn apply(snapshot: &mut Snapshot, changes: &Changes) {
    for doc in &changes.remove {
        match doc {
            Doc::Environment(_) => snapshot.environment = None,
            Doc::Revision(r) => snapshot.revisions.retain(|x| x.number != r.number),
            Doc::Deployment(d) => snapshot.deployments.retain(|x| x.id != d.id),
            Doc::Intent(i) => snapshot.intents.retain(|x| x.id() != i.id()),
            Doc::Failure(f) => snapshot.failures.retain(|x| x.id() != f.id()),
        }
    }
    for doc in &changes.put {
        match doc {
            Doc::Environment(e) => snapshot.environment = Some(e.clone()),
            Doc::Revision(r) => replace(&mut snapshot.revisions, r.clone(), |x| x.number == r.number),
            Doc::Deployment(d) => replace(&mut snapshot.deployments, d.clone(), |x| x.id == d.id),
            Doc::Intent(i) => replace(&mut snapshot.intents, i.clone(), |x| x.id() == i.id()),
            Doc::Failure(f) => replace(&mut snapshot.failures, f.clone(), |x| x.id() == f.id()),
        }
    }
}

fn replace<T>(list: &mut Vec<T>, item: T, same: impl Fn(&T) -> bool) {
    match list.iter().position(same) {
        Some(at) => list[at] = item,
        None => list.push(item),
    }
}
