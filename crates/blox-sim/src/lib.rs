//! blox's built-in ECS: an in-process simulation of the ECS control plane of one account and region,
//! for trying blox without an AWS account (`blox up`), for load at scales moto cannot reach, and for
//! misbehaving on purpose (throttling, lost, duplicated and reordered events, failing starts).
//!
//! - [`Ecs`]: the control plane, pure and deterministic (time and a seed are arguments);
//! - [`EventQueue`]: EventBridge into SQS, with injectable [`Faults`];
//! - [`Scenario`] and [`Driver`]: seeded worlds and churn (instances joining and leaving, draining,
//!   agent disconnects, task starts, crashes and stops);
//! - [`Simulator`]: the shared, clocked simulator that implements blox's AWS boundary
//!   ([`blox_aws::EcsReader`], [`blox_aws::EcsControl`], [`blox_aws::EventSource`]);
//! - [`SimAlarms`]: CloudWatch alarms whose states are set by hand ([`blox_aws::AlarmReader`]).

mod alarms;
mod ecs;
mod events;
mod live;
mod scenario;
mod throttle;

pub use alarms::SimAlarms;
pub use ecs::{
    Ecs, Emitted, LIST_PAGE_MAX, Listed, NewInstance, Page, SimConfig, SimContainer, SimError, SimFault,
    SimHealthCheck, TaskDefinition, TaskFilter, UPDATE_STATE_BATCH,
};
pub use events::{EventQueue, Faults, QueueStats};
pub use live::{Clock, SaveError, SimOptions, SimStartError, Simulator};
pub use scenario::{ClusterPlan, Driver, FamilyPlan, Rates, RevisionPlan, Scenario};
pub use throttle::{Family, Rate, Throttle, ThrottleConfig};
