//! The daemon scheduler's pure core: its documents, the deployment state machine and commands, and the
//! planner.
//!
//! An [`Environment`] names what should run (one task per matching container instance of a cluster);
//! each change of it is an immutable [`Revision`]; a [`Deployment`] makes a revision the one the
//! scheduler converges to. [`lifecycle`] holds every rule about these documents (create, update,
//! deploy, stop, roll back, freeze, thaw, delete, and how a deployment advances); [`plan`] decides,
//! from a [`ClusterView`], which tasks to start and stop. Both HTTP APIs and the executor call them;
//! nothing here performs I/O, reads a clock or draws randomness.

mod config;
mod docs;
pub mod lifecycle;
mod plan;
mod preview;
mod time;
mod view;

/// ECS limit: container instances per StartTask call.
pub const START_TASK_BATCH: usize = 10;

pub use config::{
    Canary, CanaryPatch, ConfigPatch, DEFAULT_COVERAGE_GRACE_SECONDS, DEFAULT_MAX_OVER_PERCENT,
    DEFAULT_MIN_HEALTHY_PERCENT, DEFAULT_MIN_HEALTHY_SECONDS, DEFAULT_PROGRESS_DEADLINE_SECONDS,
    DeploymentConfiguration, DeploymentMethod, MAX_ALARMS, ceil_percent,
};
pub use docs::{
    Counts, Deployment, DeploymentStatus, Environment, EnvironmentStatus, InstanceFailure, InstanceGroup,
    InstanceSelection, Revision, StartIntent, Transition, instance_record_id,
};
pub use lifecycle::{Changes, CommandError, Doc, Observed, Snapshot};
pub use plan::{
    Active, CanaryPlan, Coverage, FailedTask, Fleet, IntentRef, IntentState, Plan, PlanInput, Stop,
    StopReason, Uncovered, plan,
};
pub use preview::{Action, Preview, PreviewBatch, PreviewInput, preview};
pub use time::parse_rfc3339_ms;
pub use view::{
    ClusterView, GroupTasks, HealthStatus, InstanceStatus, InstanceSubject, InstanceView, TaskStatus,
    TaskView, task_key,
};

use crate::entity::FieldError;

/// What every task of an environment carries as its ECS `group`: ownership is this group together with
/// a `startedBy` that is one of the environment's deployment ids, never the task definition alone.
pub fn group(environment: &str) -> String {
    format!("{GROUP_PREFIX}{environment}")
}

/// The prefix of [`group`]: tasks in other groups are never the scheduler's.
pub const GROUP_PREFIX: &str = "blox:";

/// Every StopTask reason blox gives starts with this, so that a task blox stopped is never taken for
/// one that failed.
pub const STOP_REASON_PREFIX: &str = "blox: ";

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
/// accepts there: up to 36 letters, digits, '-' or '_' (a UUID is).
pub fn validate_deployment_id(id: &str) -> Result<(), FieldError> {
    if is_word(id, 36) {
        Ok(())
    } else {
        Err(FieldError::new(
            "id",
            format!("{id:?} cannot be an ECS startedBy: 1 to 36 letters, digits, '-' or '_'"),
        ))
    }
}

/// Whether `text` is 1 to `max_len` ASCII letters, digits, '-' or '_'.
fn is_word(text: &str, max_len: usize) -> bool {
    (1..=max_len).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// v0.3's `HealthStatus` of an environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Healthy,
    Unhealthy,
}

/// An environment's health from its plan: unhealthy when its active deployment failed, when eligible
/// instances cannot get their task, or when fewer instances than the floor have a healthy daemon.
pub fn health(active: Option<&Deployment>, plan: &Plan) -> (Health, Option<String>) {
    if let Some(d) = active
        && d.status == DeploymentStatus::Failed
    {
        let why = d.reason().unwrap_or("failed");
        return (
            Health::Unhealthy,
            Some(format!("deployment {} failed: {why}", d.id)),
        );
    }
    let fleet = plan.fleet;
    if fleet.failing > 0 {
        let example = plan
            .failure_example
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return (
            Health::Unhealthy,
            Some(format!(
                "{} of {} instances cannot start the task{example}",
                fleet.failing, fleet.eligible
            )),
        );
    }
    if fleet.healthy < fleet.floor {
        return (
            Health::Unhealthy,
            Some(format!(
                "{} of {} instances have a healthy daemon, below the floor of {}",
                fleet.healthy, fleet.eligible, fleet.floor
            )),
        );
    }
    (Health::Healthy, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        for ok in ["a", "web", "Web-1_x", &"x".repeat(30)] {
            assert!(validate_environment_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "a:b", "dot.", &"x".repeat(31), "ünï"] {
            let err = validate_environment_name(bad).unwrap_err();
            assert_eq!(err.field, "name", "{bad}");
        }
        assert_eq!(group("web"), "blox:web");
        assert!(validate_deployment_id("0b69d5c0-d655-4695-98cd-5d2d526d9d5a").is_ok());
        assert!(validate_deployment_id(&"x".repeat(37)).is_err());
        assert!(validate_deployment_id("a/b").is_err());
    }
}
