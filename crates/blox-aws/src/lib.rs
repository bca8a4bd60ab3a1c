//! The AWS boundary of blox. Two traits describe what the rest of blox needs from AWS, so that the
//! server can run against the real SDK, a built-in simulator, or a fake in unit tests:
//!
//! - [`EcsReader`]: the List/Describe calls of the reconciler (ECS is the truth);
//! - [`EventSource`]: a queue of ECS events (SQS), received in batches and deleted only when the caller
//!   says their effects are committed;
//! - [`AlarmReader`]: the states of CloudWatch alarms, which a deployment watches to roll back.
//!
//! The SDK implementations are [`SdkEcs`], [`SqsSource`] and [`SdkAlarms`]; [`sdk_config`] loads the
//! standard AWS configuration chain (region, credentials, `AWS_ENDPOINT_URL*` overrides for emulators).

use async_trait::async_trait;
use blox_model::{ContainerInstance, Task};
use thiserror::Error;

mod cloudwatch;
mod config;
pub mod doctor;
mod ecs;
mod sqs;

pub use cloudwatch::SdkAlarms;
pub use config::{ConfigError, sdk_config};
pub use ecs::SdkEcs;
pub use sqs::{SqsOptions, SqsSource};

/// ECS limits that shape the calls.
pub const DESCRIBE_BATCH: usize = 100;

/// Which tasks a ListTasks call asks for. ECS lists only `Running` unless asked for `Stopped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesiredStatus {
    Running,
    Stopped,
}

impl DesiredStatus {
    /// As ECS writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredStatus::Running => "RUNNING",
            DesiredStatus::Stopped => "STOPPED",
        }
    }
}

/// An ECS call that failed after the SDK's own retries.
#[derive(Debug, Error)]
#[error("ECS {operation} failed{}: {kind}", cluster.as_deref().map(|c| format!(" for cluster {c}")).unwrap_or_default())]
pub struct EcsError {
    pub operation: &'static str,
    pub cluster: Option<String>,
    pub kind: EcsErrorKind,
}

#[derive(Debug, Error)]
pub enum EcsErrorKind {
    /// Throttled even after the SDK's retries with back-off.
    #[error("throttled")]
    Throttled,
    #[error("cluster not found")]
    ClusterNotFound,
    /// A describe answered but a returned item could not be used (e.g. a malformed ARN).
    #[error("unusable answer: {0}")]
    Invalid(String),
    /// ECS refused the request as invalid (`InvalidParameterException`, `ClientException`): the
    /// caller's mistake, not worth retrying as is. The message is ECS's.
    #[error("{code}: {message}")]
    Rejected { code: String, message: String },
    /// Any other service or transport error, with its code when AWS gave one.
    #[error("{0}")]
    Other(String),
}

/// A List call of a cluster's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// ListContainerInstances with ECS's default: every status but INACTIVE.
    ContainerInstances,
    /// ListTasks of one desired status.
    Tasks(DesiredStatus),
}

impl Listing {
    pub fn operation(self) -> &'static str {
        match self {
            Listing::ContainerInstances => "ListContainerInstances",
            Listing::Tasks(_) => "ListTasks",
        }
    }
}

/// One page of a List call: at most [`LIST_PAGE`] ARNs, and the token of the next page (`None` on
/// the last).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub arns: Vec<String>,
    pub next_token: Option<String>,
}

/// ECS limit: items per List page.
pub const LIST_PAGE: usize = 100;

/// The read side of ECS that the reconciler uses. Lists come a page at a time (so that a caller can
/// describe a page while the next is listed) or all at once; describe calls take at most
/// [`DESCRIBE_BATCH`] ARNs and return what ECS described (ARNs ECS reports as missing are simply
/// absent from the result).
#[async_trait]
pub trait EcsReader: Send + Sync + 'static {
    /// ARNs of every cluster of the account and region.
    async fn list_clusters(&self) -> Result<Vec<String>, EcsError>;
    /// One page of a List call, after `next_token` (`None`: the first page).
    async fn list_page(
        &self,
        cluster: &str,
        listing: Listing,
        next_token: Option<&str>,
    ) -> Result<ListPage, EcsError>;
    /// ARNs of the cluster's container instances (ECS's default: every status but INACTIVE), all pages.
    async fn list_container_instances(&self, cluster: &str) -> Result<Vec<String>, EcsError> {
        list_all(self, cluster, Listing::ContainerInstances).await
    }
    async fn describe_container_instances(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<Vec<ContainerInstance>, EcsError>;
    /// ARNs of the cluster's tasks with the given desired status, all pages.
    async fn list_tasks(&self, cluster: &str, desired: DesiredStatus) -> Result<Vec<String>, EcsError> {
        list_all(self, cluster, Listing::Tasks(desired)).await
    }
    async fn describe_tasks(&self, cluster: &str, arns: &[String]) -> Result<Vec<Task>, EcsError>;
    /// ARNs of the cluster's tasks started by `started_by` on `container_instance` (an ARN or id),
    /// whatever their desired status, each once: for settling a StartTask whose answer was lost (did
    /// it start a task there or not?). STOPPED tasks are listed for as long as ECS keeps them (at
    /// least an hour).
    ///
    /// ECS refuses ListTasks with `startedBy` and any other filter but the desired status
    /// (`InvalidParameterException`), so implementations list the instance's tasks (RUNNING, then
    /// STOPPED, every page) and keep those `started_by` started: see [`started_among`].
    async fn list_started_tasks(
        &self,
        cluster: &str,
        started_by: &str,
        container_instance: &str,
    ) -> Result<Vec<String>, EcsError>;
}

/// CloudWatch limit: alarm names per DescribeAlarms call.
pub const ALARM_BATCH: usize = 100;

/// The state of a CloudWatch alarm (metric or composite), as DescribeAlarms reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmState {
    pub name: String,
    pub state: AlarmStateValue,
    /// CloudWatch's explanation of the state (StateReason), for the deployment's failure message.
    pub reason: Option<String>,
    /// When the state or its reason last changed (StateUpdatedTimestamp), milliseconds since the Unix
    /// epoch.
    pub updated_at_ms: Option<u64>,
}

/// An alarm's StateValue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AlarmStateValue {
    Ok,
    Alarm,
    InsufficientData,
    /// A value this version of blox does not know (CloudWatch may add some); never treated as ALARM.
    Other(String),
}

impl AlarmStateValue {
    /// As CloudWatch writes it (`OK`, `ALARM`, `INSUFFICIENT_DATA`).
    pub fn as_str(&self) -> &str {
        match self {
            AlarmStateValue::Ok => "OK",
            AlarmStateValue::Alarm => "ALARM",
            AlarmStateValue::InsufficientData => "INSUFFICIENT_DATA",
            AlarmStateValue::Other(other) => other,
        }
    }

    /// From CloudWatch's spelling; anything else is [`AlarmStateValue::Other`].
    pub fn parse(value: &str) -> AlarmStateValue {
        match value {
            "OK" => AlarmStateValue::Ok,
            "ALARM" => AlarmStateValue::Alarm,
            "INSUFFICIENT_DATA" => AlarmStateValue::InsufficientData,
            other => AlarmStateValue::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for AlarmStateValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CloudWatch call that failed after the SDK's own retries.
#[derive(Debug, Error)]
#[error("CloudWatch {operation} failed: {kind}")]
pub struct AlarmError {
    pub operation: &'static str,
    pub kind: AlarmErrorKind,
}

#[derive(Debug, Error)]
pub enum AlarmErrorKind {
    /// Throttled even after the SDK's retries with back-off.
    #[error("throttled")]
    Throttled,
    /// CloudWatch refused the request as invalid (e.g. `InvalidParameterValue` for a malformed alarm
    /// name, `InvalidNextToken`): not worth retrying as is. The message is CloudWatch's.
    #[error("{code}: {message}")]
    Rejected { code: String, message: String },
    /// Any other service or transport error (access denied included), with its code when AWS gave one.
    #[error("{0}")]
    Other(String),
}

/// The read side of CloudWatch alarms that a deployment watches: it fails (and rolls back) when one of
/// its alarms is in ALARM.
#[async_trait]
pub trait AlarmReader: Send + Sync + 'static {
    /// The state of each named alarm that exists (metric and composite alarms), in the order of
    /// `names` and each once; names CloudWatch does not know are absent from the result. No names
    /// means no call and no alarms.
    async fn alarm_states(&self, names: &[String]) -> Result<Vec<AlarmState>, AlarmError>;
}

/// ECS limit: container instances per StartTask call (the planner's preview counts calls with it).
pub use blox_model::daemon::START_TASK_BATCH;

/// An item ECS could not act on, as its `failures` lists them (e.g. `RESOURCE:MEMORY`, `MISSING`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub arn: Option<String>,
    pub reason: String,
    pub detail: Option<String>,
}

/// DescribeClusters' answer for one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    pub cluster_arn: String,
    pub cluster_name: String,
    /// `ACTIVE`, `PROVISIONING`, `DEPROVISIONING`, `FAILED` or `INACTIVE`.
    pub status: String,
    pub registered_container_instances_count: i64,
    pub running_tasks_count: i64,
    pub pending_tasks_count: i64,
}

/// DescribeTaskDefinition's answer: what placement needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDefinitionDescription {
    /// `arn:…:task-definition/FAMILY:REVISION`.
    pub arn: String,
    pub family: String,
    pub revision: i64,
    /// `ACTIVE`, `INACTIVE` or `DELETE_IN_PROGRESS`.
    pub status: String,
    /// Task-level CPU units and MiB, when the definition sets them.
    pub cpu: Option<i64>,
    pub memory: Option<i64>,
    pub containers: Vec<ContainerDefinition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerDefinition {
    pub name: String,
    pub cpu: i64,
    /// The hard limit (`memory`), else the soft one (`memoryReservation`), in MiB.
    pub memory: Option<i64>,
    pub essential: bool,
    /// Host ports the container binds (static port mappings only).
    pub host_ports: Vec<i64>,
    /// The container has a `healthCheck` (ECS runs it; its command and timings do not matter here).
    pub health_check: bool,
}

impl TaskDefinitionDescription {
    /// Whether the definition's tasks can report `healthStatus: HEALTHY`: some essential container
    /// has a health check. ECS's task health is that of its essential containers with checks; with
    /// none (no checks, or checks on non-essential containers only) it stays UNKNOWN for as long as
    /// the task runs, so there is no health to wait for.
    pub fn has_health_checks(&self) -> bool {
        self.containers.iter().any(|c| c.essential && c.health_check)
    }
}

/// A StartTask call: place one task of `task_definition` on each of `container_instances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartTask {
    pub cluster: String,
    pub task_definition: String,
    /// At most [`START_TASK_BATCH`].
    pub container_instances: Vec<String>,
    pub started_by: Option<String>,
    pub group: Option<String>,
}

/// What StartTask started, and where it could not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Started {
    pub tasks: Vec<Task>,
    pub failures: Vec<Failure>,
}

/// The ECS calls that act on a cluster, and the lookups that check a request before acting: what a
/// scheduler needs beyond [`EcsReader`]. Like the reader, a call returns after the client's own
/// retries; [`EcsErrorKind::Throttled`] means the caller should slow down.
#[async_trait]
pub trait EcsControl: Send + Sync + 'static {
    /// Describes the named clusters (names or ARNs); unknown ones come back as `MISSING` failures.
    async fn describe_clusters(
        &self,
        clusters: &[String],
    ) -> Result<(Vec<ClusterDescription>, Vec<Failure>), EcsError>;
    /// `FAMILY`, `FAMILY:REVISION` or an ARN; the latest ACTIVE revision for a bare family. An unknown
    /// definition is [`EcsErrorKind::Rejected`] (ECS answers `ClientException`).
    async fn describe_task_definition(
        &self,
        task_definition: &str,
    ) -> Result<TaskDefinitionDescription, EcsError>;
    async fn start_task(&self, request: &StartTask) -> Result<Started, EcsError>;
    /// Stops a task; stopping a stopped task is not an error. Returns the task as ECS described it.
    async fn stop_task(&self, cluster: &str, task: &str, reason: &str) -> Result<Task, EcsError>;
}

/// The order [`EcsReader::list_started_tasks`] lists in: a desired status only ever goes from RUNNING
/// to STOPPED, so a task that moves while it is being listed is still seen by the later listing.
pub const STARTED_TASKS_ORDER: [DesiredStatus; 2] = [DesiredStatus::Running, DesiredStatus::Stopped];

/// What [`EcsReader::list_started_tasks`] answers, given the ARNs of the instance's tasks as listed in
/// [`STARTED_TASKS_ORDER`]: those of them `started_by` started, each once, in listing order.
/// Describes them (in batches of [`DESCRIBE_BATCH`]); a task gone meanwhile is not among them.
pub async fn started_among<E: EcsReader + ?Sized>(
    ecs: &E,
    cluster: &str,
    started_by: &str,
    listed: Vec<String>,
) -> Result<Vec<String>, EcsError> {
    let listed = unique_arns(listed);
    if listed.is_empty() {
        return Ok(listed);
    }
    let mut started = std::collections::HashSet::new();
    for chunk in listed.chunks(DESCRIBE_BATCH) {
        let described = ecs.describe_tasks(cluster, chunk).await?;
        started.extend(
            described
                .into_iter()
                .filter(|t| t.started_by.as_deref() == Some(started_by))
                .map(|t| t.task_arn),
        );
    }
    Ok(listed.into_iter().filter(|arn| started.contains(arn)).collect())
}

/// `arns` without repeats, first occurrences in order (a task listed RUNNING that stopped before the
/// STOPPED listing is in both).
fn unique_arns(arns: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::with_capacity(arns.len());
    arns.into_iter().filter(|arn| seen.insert(arn.clone())).collect()
}

/// Every page of a List call.
async fn list_all<E: EcsReader + ?Sized>(
    ecs: &E,
    cluster: &str,
    listing: Listing,
) -> Result<Vec<String>, EcsError> {
    let mut arns = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = ecs.list_page(cluster, listing, token.as_deref()).await?;
        arns.extend(page.arns);
        match page.next_token {
            Some(next) => token = Some(next),
            None => return Ok(arns),
        }
    }
}

/// A message of the event queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The queue's id for the message (SQS MessageId).
    pub id: String,
    /// What deletes it (SQS ReceiptHandle).
    pub receipt: String,
    pub body: String,
    /// When the queue received it (SQS SentTimestamp), milliseconds since the Unix epoch.
    pub sent_at_ms: Option<u64>,
}

/// Approximate depth of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    pub visible: u64,
    pub in_flight: u64,
}

#[derive(Debug, Error)]
#[error("event source {operation} failed: {message}")]
pub struct SourceError {
    pub operation: &'static str,
    pub message: String,
}

/// A queue that never has a message: for driving the ingest path without one (`Ingestor::commit`
/// given messages directly, in benchmarks and tests). Receiving waits forever, like a long poll on an
/// empty queue; deleting succeeds at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

#[async_trait]
impl EventSource for NoEvents {
    async fn receive(&self, _max: usize) -> Result<Vec<Message>, SourceError> {
        std::future::pending().await
    }

    async fn delete(&self, _receipts: &[String]) -> Result<Vec<String>, SourceError> {
        Ok(Vec::new())
    }

    async fn depth(&self) -> Result<QueueDepth, SourceError> {
        Ok(QueueDepth::default())
    }
}

/// A queue of ECS events. Several `receive` calls may be in flight at once.
#[async_trait]
pub trait EventSource: Send + Sync + 'static {
    /// Waits (long poll) for up to `max` messages (at most 10 for SQS); may return none.
    async fn receive(&self, max: usize) -> Result<Vec<Message>, SourceError>;
    /// Deletes messages by receipt, batching as the queue allows. Call only after their effects are
    /// durably committed. Returns the receipts that could not be deleted (they will be redelivered and
    /// re-applied, which the version rule makes harmless).
    async fn delete(&self, receipts: &[String]) -> Result<Vec<String>, SourceError>;
    async fn depth(&self) -> Result<QueueDepth, SourceError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_checks_count_on_essential_containers_only() {
        let container = |essential: bool, health_check: bool| ContainerDefinition {
            name: "c".to_owned(),
            cpu: 0,
            memory: None,
            essential,
            host_ports: Vec::new(),
            health_check,
        };
        let check = |containers: Vec<ContainerDefinition>, want: bool| {
            let definition = TaskDefinitionDescription {
                arn: "arn:aws:ecs:us-east-1:123456789012:task-definition/d:1".to_owned(),
                family: "d".to_owned(),
                revision: 1,
                status: "ACTIVE".to_owned(),
                cpu: None,
                memory: None,
                containers,
            };
            assert_eq!(definition.has_health_checks(), want, "{definition:?}");
        };
        check(vec![], false);
        check(vec![container(true, false)], false);
        check(vec![container(true, true)], true);
        check(vec![container(false, true)], false);
        check(vec![container(true, false), container(false, true)], false);
        check(vec![container(false, false), container(true, true)], true);
    }

    #[test]
    fn started_tasks_are_listed_running_first_each_once() {
        assert_eq!(
            STARTED_TASKS_ORDER,
            [DesiredStatus::Running, DesiredStatus::Stopped]
        );
        let arns = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            unique_arns(arns(&["a", "b", "a", "c", "b"])),
            arns(&["a", "b", "c"])
        );
        assert_eq!(unique_arns(Vec::new()), Vec::<String>::new());
    }
}
