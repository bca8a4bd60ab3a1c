//! The pure core of blox: identifiers, the ECS entities blox mirrors, ECS event parsing, the rule
//! of what the store can key and index by, the rule that orders writes by ECS's per-resource
//! `version`, the ECS cluster query language, and the daemon scheduler's documents and planner.
//!
//! Nothing here performs I/O, reads a clock or draws randomness: callers pass those in.

pub mod arn;
pub mod cql;
pub mod daemon;
pub mod emit;
pub mod entity;
pub mod event;
pub mod scope;
pub mod storable;
pub mod version;

pub use arn::{Arn, ArnError, ClusterName, ClusterRef, ResourceArn, ResourceKind};
pub use cql::{InstanceFacts, Operator, ParseError, Predicate, Property, Query, Subject};
pub use daemon::{
    ClusterView, Counts, Deployment, DeploymentConfiguration, DeploymentMethod, DeploymentStatus,
    Environment, EnvironmentStatus, Health, InstanceFailure, InstanceGroup, InstanceView, Plan, PlanInput,
    Revision, StartIntent, StopReason, TaskView,
};
pub use entity::{
    Attribute, Container, ContainerInstance, ContainerOverride, EnvironmentVariable, FieldError,
    INSTANCE_STATUSES, NetworkBinding, Overrides, Resource, TASK_STATUSES, Task, VersionInfo,
};
pub use event::{EcsEvent, EventError};
pub use scope::{Foreign, Origin, Scope};
pub use storable::{check_storable, storable};
pub use version::supersedes;
