//! The pure core of blox: identifiers, the ECS entities blox mirrors, ECS event parsing and the rule
//! that orders writes by ECS's per-resource `version`.
//!
//! Nothing here performs I/O, reads a clock or draws randomness: callers pass those in.

pub mod arn;
pub mod emit;
pub mod entity;
pub mod event;
pub mod version;

pub use arn::{Arn, ArnError, ClusterName, ClusterRef, ResourceArn, ResourceKind};
pub use entity::{
    Attribute, Container, ContainerInstance, ContainerOverride, EnvironmentVariable, FieldError,
    INSTANCE_STATUSES, NetworkBinding, Overrides, Resource, TASK_STATUSES, Task, VersionInfo,
};
pub use event::{EcsEvent, EventError};
pub use version::supersedes;
