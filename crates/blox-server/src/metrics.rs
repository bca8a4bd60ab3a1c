//! Every metric blox exports, named in one place. Labels are low-cardinality by rule: kinds, results,
//! routes and status codes; never task or instance ARNs.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Events applied to the store (newer than what was stored). Label `kind`: task | instance.
pub const EVENTS_APPLIED: &str = "blox_events_applied_total";
/// Events that changed nothing (duplicate or older version). Label `kind`.
pub const EVENTS_STALE: &str = "blox_events_stale_total";
/// Messages parked in the dead-letter table. Label `reason`: invalid (not a valid ECS event) |
/// foreign (an event of another account or region) | refused (the store refused its write).
pub const EVENTS_PARKED: &str = "blox_events_parked_total";
/// Messages dropped on purpose. Label `reason`: other_detail_type | cluster_not_allowed.
pub const EVENTS_DROPPED: &str = "blox_events_dropped_total";
/// Batches whose commit failed in the backend (their messages not committed stay in the queue and
/// come back).
pub const INGEST_COMMIT_FAILURES: &str = "blox_ingest_commit_failures_total";
/// Parts of batches split in two because the store refused one of their writes (the refused message
/// is parked; the rest commit).
pub const INGEST_BATCH_SPLITS: &str = "blox_ingest_batch_splits_total";
/// Age of the oldest message of the last committed batch, from the queue's SentTimestamp.
pub const QUEUE_LAG_SECONDS: &str = "blox_queue_lag_seconds";
/// Approximate messages in the queue. Label `state`: visible | in_flight.
pub const QUEUE_MESSAGES: &str = "blox_queue_messages";
/// Reconcile runs per cluster. Label `result`: ok | error.
pub const RECONCILE_RUNS: &str = "blox_reconcile_runs_total";
/// Duration of full reconcile passes over every cluster.
pub const RECONCILE_DURATION_SECONDS: &str = "blox_reconcile_duration_seconds";
/// Drift corrected by the reconciler. Labels `kind`, `action`: upsert | delete.
pub const RECONCILE_DRIFT: &str = "blox_reconcile_drift_corrected_total";
/// API requests. Labels `route` (the matched route template), `status`.
pub const API_REQUESTS: &str = "blox_api_requests_total";
/// API request durations. Label `route`.
pub const API_REQUEST_DURATION_SECONDS: &str = "blox_api_request_duration_seconds";
/// Open stream connections. Label `kind`.
pub const STREAM_CLIENTS: &str = "blox_stream_clients";
/// Entities in the store. Label `kind`.
pub const ENTITIES: &str = "blox_entities";
/// Head of the change log (the latest entityVersion).
pub const CHANGE_LOG_HEAD: &str = "blox_change_log_head";

/// Scheduler passes. Label `trigger`: change | interval.
pub const SCHEDULER_PASSES: &str = "blox_scheduler_passes_total";
/// Duration of scheduler passes over every environment.
pub const SCHEDULER_PASS_DURATION_SECONDS: &str = "blox_scheduler_pass_duration_seconds";
/// Tasks started by the scheduler (StartTask successes, per task).
pub const SCHEDULER_TASKS_STARTED: &str = "blox_scheduler_tasks_started_total";
/// Starts ECS refused. Label `reason`: ECS's failure reason (e.g. RESOURCE:MEMORY) or `error`.
pub const SCHEDULER_START_FAILURES: &str = "blox_scheduler_start_failures_total";
/// Tasks the scheduler asked ECS to stop. Label `reason`: the stop reason's code.
pub const SCHEDULER_TASKS_STOPPED: &str = "blox_scheduler_tasks_stopped_total";
/// ECS calls of the scheduler. Labels `operation`, `result`: ok | throttled | error.
pub const SCHEDULER_ECS_CALLS: &str = "blox_scheduler_ecs_calls_total";
/// Compare-and-swap conflicts on scheduler documents. Label `kind`.
pub const SCHEDULER_CONFLICTS: &str = "blox_scheduler_conflicts_total";
/// Instances verified with ECS after a start intent expired.
pub const SCHEDULER_VERIFICATIONS: &str = "blox_scheduler_verifications_total";
/// Environments removed after deletion.
pub const SCHEDULER_ENVIRONMENTS_REMOVED: &str = "blox_scheduler_environments_removed_total";
/// Deployment transitions made by the executor. Label `status`: the status entered.
pub const SCHEDULER_DEPLOYMENT_TRANSITIONS: &str = "blox_scheduler_deployment_transitions_total";
/// Rollbacks started by the executor after a failed deployment.
pub const SCHEDULER_AUTO_ROLLBACKS: &str = "blox_scheduler_auto_rollbacks_total";
/// Failed start attempts recorded. Label `cause`: refused (a StartTask failure) | stopped (the task
/// stopped before it was healthy).
pub const SCHEDULER_FAILED_ATTEMPTS: &str = "blox_scheduler_failed_attempts_total";
/// Environment passes that failed and backed off.
pub const SCHEDULER_ENVIRONMENT_ERRORS: &str = "blox_scheduler_environment_errors_total";

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 300.0,
                ])
                .unwrap_or_else(|e| unreachable!("static bucket list is valid: {e}"))
                .build_recorder();
            let handle = recorder.handle();
            // A second server in the same process (tests) shares the first recorder.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
