//! A deployment's plan before it is made (`dryRun`): what deploying a revision now would do, batch by
//! batch, computed by running the planner itself over a copy of the cluster view in which every
//! action succeeds at once. The preview and the deployment come from the same [`plan`], so the
//! preview is what the executor would do on a quiet fleet.
//!
//! Assumptions, each a way the real rollout can only be slower: every StartTask succeeds and its task
//! is healthy as soon as it runs (no image pull, no health-check grace), every StopTask is STOPPED at
//! once, nothing else changes meanwhile, starts already in flight (intents) have landed, and a canary
//! is promoted as soon as it is healthy.

use std::collections::BTreeMap;

use super::config::DeploymentMethod;
use super::docs::{Deployment, DeploymentStatus, Environment, Revision};
use super::plan::{Active, Plan, PlanInput, StopReason, plan};
use super::view::{ClusterView, TaskStatus};
use crate::daemon::START_TASK_BATCH;

/// Everything a preview depends on: the environment, its documents and its cluster now.
#[derive(Debug, Clone, Copy)]
pub struct PreviewInput<'a> {
    pub environment: &'a Environment,
    /// The revision to deploy.
    pub revision: &'a Revision,
    /// The ids of the environment's deployments (their tasks are the environment's).
    pub deployment_ids: &'a [&'a str],
    pub health_checked: &'a [&'a str],
    pub cluster: &'a ClusterView,
    /// Deploying as a rollback (no canary).
    pub rollback: bool,
    pub now_ms: u64,
    /// The executor's ECS call rate per API family (`--scheduler-calls-per-second`).
    pub calls_per_second: f64,
}

/// What happens to an instance over the whole rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Its task of the revision stays (duplicates of it may go).
    Keep,
    /// It gets the revision's task, having none of the environment's.
    Start,
    /// Its older task gives way to the revision's.
    Replace,
    /// The environment's tasks on it are stopped and none started (out of the group, draining
    /// with stopOnDrain, gone).
    Stop,
    /// Nothing is started: it is not eligible (agent disconnected, draining) or the rollout never
    /// reaches it.
    Wait,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Keep => "keep",
            Action::Start => "start",
            Action::Replace => "replace",
            Action::Stop => "stop",
            Action::Wait => "wait",
        }
    }
}

/// One pass of the executor's: what it starts and stops together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviewBatch {
    /// Instances a task of the revision is started on.
    pub starts: Vec<String>,
    /// Tasks stopped: (instance, task, why).
    pub stops: Vec<(String, String, StopReason)>,
    /// The canary is promoted before this batch.
    pub after_promotion: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Preview {
    /// Per instance of the group or holding the environment's tasks, in ARN order.
    pub instances: Vec<(String, Action, Option<StopReason>)>,
    pub batches: Vec<PreviewBatch>,
    pub eligible: u64,
    pub floor: u64,
    pub surge: u64,
    pub canary: Option<Vec<String>>,
    /// The rollout reaches completion under the assumptions; when not, `stalled` says why.
    pub complete: bool,
    pub stalled: Option<String>,
    /// StartTask and StopTask calls the rollout makes.
    pub start_calls: u64,
    pub stop_calls: u64,
    /// From the call rate and the bake time: per batch, the slower of its StartTask and StopTask
    /// calls at `calls_per_second` each, plus `minHealthySeconds` when it starts tasks.
    pub estimated_seconds: f64,
}

/// The id the previewed deployment's tasks carry in the copy of the view.
const PREVIEW_ID: &str = "dry-run";

pub fn preview(input: &PreviewInput<'_>) -> Preview {
    let revision = input.revision;
    let config = &revision.deployment_configuration;
    let mut cluster = input.cluster.clone();
    let mut deployment = Deployment {
        rollback: input.rollback,
        ..Deployment::new(PREVIEW_ID, revision, input.now_ms)
    };
    deployment.status = DeploymentStatus::Running;
    let mut environment = input.environment.clone();
    environment.frozen = false;
    environment.active_deployment = Some(PREVIEW_ID.to_owned());
    let mut ids = input.deployment_ids.to_vec();
    ids.push(PREVIEW_ID);
    let bake_ms = config.min_healthy_seconds.saturating_mul(1_000);
    let mut now = input.now_ms;
    let mut out = Preview::default();
    let mut promoted = false;
    // A rollout takes at most a batch per instance and its replacement, and a few for the canary.
    let limit = 2 * cluster.instance_count() + 8;
    for passes in 0..limit {
        let plan = plan(&PlanInput {
            environment: &environment,
            active: Some(Active {
                deployment: &deployment,
                revision,
            }),
            deployment_ids: &ids,
            health_checked: input.health_checked,
            cluster: &cluster,
            intents: &[],
            failures: &[],
            now_ms: now,
        });
        if passes == 0 {
            // The fleet as it stands before the deployment acts.
            out.eligible = plan.fleet.eligible;
            out.floor = plan.fleet.floor;
            out.surge = plan.fleet.surge;
        }
        if let Some(canary) = &plan.canary {
            if !canary.recorded {
                out.canary = Some(canary.instances.clone());
                deployment.canary_instances = Some(canary.instances.clone());
                continue;
            }
            if canary.complete {
                deployment.promoted_at = Some(now);
                promoted = true;
                continue;
            }
        }
        if plan.complete {
            out.complete = true;
            break;
        }
        if plan.starts.is_empty() && plan.stops.is_empty() {
            match plan.next_due_ms {
                // Waiting for a bake time: let it pass.
                Some(at) if at > now => {
                    now = at;
                    continue;
                }
                _ => {
                    out.stalled = Some(stall_reason(&plan, revision));
                    break;
                }
            }
        }
        let mut batch = PreviewBatch {
            after_promotion: std::mem::take(&mut promoted),
            ..PreviewBatch::default()
        };
        for stop in &plan.stops {
            let instance = cluster
                .task(&stop.task_arn)
                .and_then(|t| t.instance.as_deref().map(str::to_owned))
                .unwrap_or_default();
            cluster.update_task(&stop.task_arn, |task| {
                task.last_status = TaskStatus::Stopped;
                task.desired_stopped = true;
                task.stopped_at = Some(now);
                task.stopped_reason = Some(stop.reason.to_string().into());
            });
            batch.stops.push((instance, stop.task_arn.clone(), stop.reason));
        }
        for instance in &plan.starts {
            cluster.add_started_task(
                &format!("{PREVIEW_ID}/{instance}/{}", out.batches.len()),
                instance,
                &super::group(&environment.name),
                PREVIEW_ID,
                &revision.task_definition,
                now,
            );
        }
        batch.starts = plan.starts.clone();
        out.start_calls += batch.starts.len().div_ceil(START_TASK_BATCH) as u64;
        out.stop_calls += batch.stops.len() as u64;
        let calls = batch
            .starts
            .len()
            .div_ceil(START_TASK_BATCH)
            .max(batch.stops.len()) as f64;
        let rate = if input.calls_per_second > 0.0 {
            input.calls_per_second
        } else {
            f64::INFINITY
        };
        out.estimated_seconds += calls / rate;
        if !batch.starts.is_empty() {
            out.estimated_seconds += config.min_healthy_seconds as f64;
        }
        out.batches.push(batch);
        // The next pass sees this one's tasks healthy for the bake time.
        now = now.saturating_add(bake_ms.max(1));
    }
    if !out.complete && out.stalled.is_none() {
        out.stalled = Some("the rollout did not converge within its batches".to_owned());
    }
    out.instances = instance_actions(input, &out.batches, &cluster, &ids);
    out
}

/// Why a rollout stops short, in an operator's words.
fn stall_reason(plan: &Plan, revision: &Revision) -> String {
    let fleet = plan.fleet;
    if revision.deployment_method == DeploymentMethod::TerminateThenReplace
        && fleet.outdated > 0
        && fleet.healthy <= fleet.floor
    {
        format!(
            "TerminateThenReplace cannot replace a healthy daemon without going below the floor of {} (minHealthyPercent {}): use ReplaceThenTerminate or a lower minHealthyPercent",
            fleet.floor, revision.deployment_configuration.min_healthy_percent
        )
    } else if plan.canary.is_some() {
        "the canary cannot complete".to_owned()
    } else {
        "nothing more can be started or stopped".to_owned()
    }
}

/// What the rollout does to each instance, from the batches: started after its task was replaced is
/// a replacement; started only, a start; stopped only, a stop.
fn instance_actions(
    input: &PreviewInput<'_>,
    batches: &[PreviewBatch],
    after: &ClusterView,
    ids: &[&str],
) -> Vec<(String, Action, Option<StopReason>)> {
    let mut started: BTreeMap<&str, bool> = BTreeMap::new();
    let mut stopped: BTreeMap<&str, StopReason> = BTreeMap::new();
    for batch in batches {
        for instance in &batch.starts {
            started.insert(instance, true);
        }
        for (instance, _, reason) in &batch.stops {
            stopped.entry(instance).or_insert(*reason);
        }
    }
    let group = super::group(&input.environment.name);
    let owns = |instance: &str| {
        after.group(&group).is_some_and(|tasks| {
            after
                .tasks_on(tasks, instance)
                .iter()
                .any(|t| t.live() && t.started_by.as_deref().is_some_and(|s| ids.contains(&s)))
        })
    };
    let mut out = Vec::new();
    for (_, instance) in input.cluster.instances() {
        let arn: &str = &instance.arn;
        let action = match (started.contains_key(arn), stopped.get(arn)) {
            (true, Some(StopReason::Replaced { .. })) => (Action::Replace, None),
            (true, _) => (Action::Start, None),
            (false, Some(StopReason::Duplicate)) => (Action::Keep, None),
            (false, Some(reason)) if !owns(arn) => (Action::Stop, Some(*reason)),
            (false, _) if owns(arn) => (Action::Keep, None),
            (false, Some(reason)) => (Action::Stop, Some(*reason)),
            (false, None) => {
                // Not in the group and holding nothing: not the environment's business.
                let in_group = input
                    .revision
                    .instance_group
                    .matches(&input.cluster.subject(instance));
                if !in_group {
                    continue;
                }
                (Action::Wait, None)
            }
        };
        out.push((arn.to_owned(), action.0, action.1));
    }
    out
}
