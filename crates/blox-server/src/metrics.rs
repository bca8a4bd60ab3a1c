//! Every metric blox exports, named in one place. Labels are low-cardinality by rule: kinds, results,
//! routes and status codes; never task or instance ARNs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram};
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
/// 1 while this replica leads (runs ingestion, reconciliation and the scheduler), 0 while it follows.
pub const LEADER: &str = "blox_leader";
/// Leadership terms this replica began. Label `event`: acquired | lost.
pub const LEADERSHIP_CHANGES: &str = "blox_leadership_changes_total";
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
/// Requests refused with a 503 because the server was full. Label `reason`: in_flight (as many
/// requests were being answered as `--max-in-flight`) | streams (as many streams were open as
/// `--max-streams`).
pub const API_REQUESTS_REJECTED: &str = "blox_api_requests_rejected_total";
/// Requests being answered (streams and probes aside), under `--max-in-flight`.
pub const API_REQUESTS_IN_FLIGHT: &str = "blox_api_requests_in_flight";
/// Requests given up after `--request-timeout`.
pub const API_REQUEST_TIMEOUTS: &str = "blox_api_request_timeouts_total";
/// Requests refused for a body over `--max-body-size` (413).
pub const API_BODIES_TOO_LARGE: &str = "blox_api_bodies_too_large_total";
/// Open HTTP connections, under `--max-connections`.
pub const HTTP_CONNECTIONS: &str = "blox_http_connections";
/// Times the accept loop found `--max-connections` open and waited for one to close.
pub const HTTP_CONNECTIONS_AT_LIMIT: &str = "blox_http_connections_at_limit_total";
/// Connections whose writes are waiting for their client to read (closed once that lasts
/// `--write-timeout`).
pub const HTTP_CONNECTIONS_STALLED: &str = "blox_http_connections_stalled";
/// Connections closed because their client accepted no byte for `--write-timeout` (a stream whose
/// client stopped reading).
pub const HTTP_WRITE_TIMEOUTS: &str = "blox_http_write_timeouts_total";
/// Requests refused by the token check (`--auth-token-file`). Label `reason`: missing (no
/// Authorization header) | malformed (not one `Bearer TOKEN`) | invalid (not a token of the file) |
/// forbidden (a read token on a write).
pub const API_AUTH_FAILURES: &str = "blox_api_auth_failures_total";
/// TLS handshakes that failed (`--tls-cert`). Label `reason`: error | timeout.
pub const TLS_HANDSHAKE_FAILURES: &str = "blox_tls_handshake_failures_total";
/// Open stream connections (under `--max-streams`). Label `kind`: `task`, `instance`, or
/// `dashboard` (the live pages' events).
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
/// Eligible instances without a healthy task of their environment's active revision for longer
/// than its `coverageGraceSeconds`: the number to page on. Label `environment`.
pub const ENVIRONMENT_UNCOVERED_INSTANCES: &str = "blox_environment_uncovered_instances";
/// CloudWatch DescribeAlarms calls for deployments' alarms. Label `result`: ok | alarm | error.
pub const SCHEDULER_ALARM_CHECKS: &str = "blox_scheduler_alarm_checks_total";

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

/// Counts one answer of `route` (a route template, never a concrete path: those hold ARNs) in
/// [`API_REQUESTS`] and its duration in [`API_REQUEST_DURATION_SECONDS`].
///
/// The handles are kept per thread once looked up: finding a metric by name and labels
/// (allocating the labels, hashing them, locking the registry) costs more than the rest of the
/// request guard, whose cost `blox bench` holds to 5% of a GET's latency.
pub fn count_answer(route: &str, status: u16, duration: Duration) {
    thread_local! {
        static ROUTES: RefCell<HashMap<Box<str>, RouteHandles>> = RefCell::default();
    }
    ROUTES.with_borrow_mut(|routes| {
        let handles = match routes.get_mut(route) {
            Some(handles) => handles,
            None => routes.entry(route.into()).or_insert_with(|| RouteHandles {
                duration: metrics::histogram!(API_REQUEST_DURATION_SECONDS, "route" => route.to_owned()),
                by_status: Vec::new(),
            }),
        };
        handles.duration.record(duration.as_secs_f64());
        match handles.by_status.iter().find(|(s, _)| *s == status) {
            Some((_, counter)) => counter.increment(1),
            None => {
                let counter = metrics::counter!(API_REQUESTS, "route" => route.to_owned(), "status" => status.to_string());
                counter.increment(1);
                handles.by_status.push((status, counter));
            }
        }
    });
}

struct RouteHandles {
    duration: Histogram,
    by_status: Vec<(u16, Counter)>,
}

/// The sum of every series of `name` in a rendering of the metrics; `None` when it has none (never
/// recorded). For the dashboard, which shows the same numbers as `/metrics`.
pub fn sum(rendered: &str, name: &str) -> Option<f64> {
    sum_where(rendered, name, "")
}

/// [`sum`] of the series whose labels hold `label` (e.g. `state="visible"`).
pub fn sum_where(rendered: &str, name: &str, label: &str) -> Option<f64> {
    let mut total = None;
    for line in rendered.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !label.is_empty()
            && !rest
                .split_once('}')
                .is_some_and(|(labels, _)| labels.contains(label))
        {
            continue;
        }
        // `name{labels} value` or `name value`, not a longer name that starts with this one.
        let value = match rest.as_bytes().first() {
            Some(b'{') => rest.rsplit_once('}').map(|(_, v)| v),
            Some(b' ') => Some(rest),
            _ => None,
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    #[test]
    fn sum_adds_every_series_of_the_name_only() {
        let rendered = "# TYPE blox_events_applied_total counter\n\
                        blox_events_applied_total{kind=\"task\"} 3\n\
                        blox_events_applied_total{kind=\"instance\"} 4\n\
                        blox_events_applied_total_other 100\n\
                        blox_queue_lag_seconds 1.5\n";
        assert_eq!(super::sum(rendered, "blox_events_applied_total"), Some(7.0));
        assert_eq!(super::sum(rendered, "blox_queue_lag_seconds"), Some(1.5));
        assert_eq!(super::sum(rendered, "blox_queue_messages"), None);
        assert_eq!(
            super::sum_where(rendered, "blox_events_applied_total", "kind=\"task\""),
            Some(3.0)
        );
    }
}
