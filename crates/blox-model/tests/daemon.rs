//! The daemon scheduler's core against a small model of ECS, driven by a small executor.
//!
//! The model: container instances (ACTIVE, DRAINING, INACTIVE; agent connected or not; in the
//! instance group or not) that join, leave (their tasks stop), drain, come back, lose their agent
//! (their tasks freeze), change group; tasks that go PENDING → RUNNING (→ HEALTHY with container
//! health checks), each step in one tick or more, that a fault may make fail before running or crash
//! later, and that stop (in a tick or more) once asked. A start can be refused (`failures`), and its answer can be lost (before or after
//! ECS acted). The view sees instances and task changes at once, but a new task only after a lag
//! (its event is late) or once an intent's verification has asked ECS.
//!
//! The executor, as the server's: plan; drop settled intents; verify due intents with ECS; record
//! failed tasks in the failure records; `lifecycle::advance`; then, if the deployment still acts, the
//! stops and the starts (an intent recorded before every StartTask, a refusal recorded as a failed
//! attempt with back-off). Users deploy new revisions, freeze, thaw, stop and roll back meanwhile.
//!
//! Asserted at every pass: (a) blox's stops never take the number of eligible instances with a
//! healthy daemon below the floor when it was at or above it, nor lower it when it was below; (b) with
//! ReplaceThenTerminate, blox's starts never make more than `surge` eligible instances carry two
//! tasks; (c) no start where a task of the environment is still on the instance (live or stopping)
//! or a start is unsettled, nor on an instance in back-off; with ReplaceThenTerminate, a replacement
//! starts beside exactly one live outdated task; (e) a failed deployment rolls back by itself exactly
//! when its revision says so, it is no rollback itself and an earlier deployment of another task
//! definition completed; plus the plan's counts against an independent count, stops only of the
//! environment's own live tasks, each failed task counted once. Then (d): once the faults stop (and
//! a user redeploys what failed or was stopped), the rollout completes and every eligible instance runs
//! exactly one healthy task of the target.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use blox_model::daemon::lifecycle::{
    self, CreateEnvironment, DeployTarget, Fresh, Progress, TaskDefinitionRef, UpdateEnvironment,
};
use blox_model::daemon::{
    self, Active, CanaryPatch, Changes, ClusterView, ConfigPatch, Deployment, DeploymentConfiguration,
    DeploymentMethod, DeploymentStatus, Doc, InstanceFailure, InstanceGroup, InstanceSelection, IntentState,
    Plan, PlanInput, Revision, Snapshot, StartIntent,
};
use blox_model::{Attribute, ClusterName};
use common::{TaskSpec, attribute, container_instance};
use proptest::prelude::*;

const ENV: &str = "web";
const GROUP: &str = "blox:web";
const START: u64 = 1_700_000_000_000;
/// How long after an answer the executor verifies an intent whose task has not shown up.
const VERIFY_AFTER_ANSWER_MS: u64 = 20_000;
/// ... and after an answer that was lost.
const VERIFY_AFTER_LOSS_MS: u64 = 3_000;
/// ECS forgets stopped tasks after a while (an hour; here two minutes).
const FORGET_STOPPED_MS: u64 = 120_000;

/// A revision as a user asks for it, and the faults of its task definition.
#[derive(Debug, Clone)]
struct RevSpec {
    rtt: bool,
    min_healthy: u8,
    max_over: u8,
    checks: bool,
    bake_s: u64,
    prod_only: bool,
    stop_on_drain: bool,
    auto_rollback: bool,
    deadline_s: u64,
    threshold: Option<u64>,
    /// Keep the active task definition (a change of configuration only).
    same_td: bool,
    /// Percent of the starts ECS refuses (RESOURCE:MEMORY).
    refuse: u8,
    /// Percent of the started tasks that stop before running.
    doom: u8,
    /// A canary of this many instances (promoted by itself when `auto_promote`).
    canary: Option<i64>,
    auto_promote: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Nothing,
    Join {
        prod: bool,
    },
    Leave(usize),
    Drain(usize),
    Activate(usize),
    Disconnect(usize),
    Reconnect(usize),
    Regroup(usize),
    /// A live task of the environment stops by itself.
    Crash(usize),
    /// Someone else's task: in the environment's group with another startedBy, or the active
    /// deployment's startedBy in another group.
    Foreign {
        instance: usize,
        our_group: bool,
    },
    Deploy(RevSpec),
    Freeze,
    Thaw,
    StopDeployment,
    Rollback,
}

#[derive(Debug, Clone)]
struct Step {
    dt_ms: u64,
    op: Op,
}

#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    /// Initial instances: (in the prod stack, 0 ACTIVE / 1 DRAINING / 2 disconnected).
    instances: Vec<(bool, u8)>,
    first: RevSpec,
    second: RevSpec,
    /// Percent chance per pass that a RUNNING task crashes, during the faults.
    crash: u8,
    /// Percent of StartTask answers lost, during the faults.
    lose: u8,
    steps: Vec<Step>,
    delete_at_end: bool,
}

fn rev_spec() -> impl Strategy<Value = RevSpec> {
    (
        (
            any::<bool>(),
            prop::sample::select(vec![0u8, 25, 50, 90, 100]),
            prop::sample::select(vec![1u8, 10, 34, 100]),
        ),
        (
            any::<bool>(),
            prop::sample::select(vec![0u64, 0, 5, 20]),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.2),
        ),
        (
            prop::bool::weighted(0.8),
            prop::sample::select(vec![60u64, 120, 600]),
            prop::option::weighted(0.2, 1..6u64),
        ),
        (
            prop::bool::weighted(0.1),
            prop::sample::select(vec![0u8, 0, 0, 5, 20]),
            prop::sample::select(vec![0u8, 0, 0, 5, 20, 100]),
        ),
        (prop::option::weighted(0.25, 1..4i64), any::<bool>()),
    )
        .prop_map(
            |(
                (rtt, min_healthy, max_over),
                (checks, bake_s, prod_only, stop_on_drain),
                (auto_rollback, deadline_s, threshold),
                (same_td, refuse, doom),
                (canary, auto_promote),
            )| RevSpec {
                rtt,
                min_healthy,
                max_over,
                checks,
                bake_s,
                prod_only,
                stop_on_drain,
                auto_rollback,
                deadline_s,
                threshold,
                same_td,
                refuse,
                doom,
                canary,
                auto_promote,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0..64usize;
    prop_oneof![
        30 => Just(Op::Nothing),
        3 => any::<bool>().prop_map(|prod| Op::Join { prod }),
        1 => i.clone().prop_map(Op::Leave),
        1 => i.clone().prop_map(Op::Drain),
        1 => i.clone().prop_map(Op::Activate),
        1 => i.clone().prop_map(Op::Disconnect),
        2 => i.clone().prop_map(Op::Reconnect),
        1 => i.clone().prop_map(Op::Regroup),
        2 => i.clone().prop_map(Op::Crash),
        1 => (i.clone(), any::<bool>()).prop_map(|(instance, our_group)| Op::Foreign { instance, our_group }),
        2 => rev_spec().prop_map(Op::Deploy),
        1 => Just(Op::Freeze),
        2 => Just(Op::Thaw),
        1 => Just(Op::StopDeployment),
        1 => Just(Op::Rollback),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let instance = (
        prop::bool::weighted(0.8),
        prop::sample::select(vec![0u8, 0, 0, 0, 0, 0, 0, 0, 1, 2]),
    );
    (
        any::<u64>(),
        prop::collection::vec(instance, 1..=40),
        rev_spec(),
        rev_spec(),
        prop::sample::select(vec![0u8, 1, 3]),
        prop::sample::select(vec![0u8, 10]),
        prop::collection::vec(
            (500..5_000u64, op()).prop_map(|(dt_ms, op)| Step { dt_ms, op }),
            0..60,
        ),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(seed, instances, mut first, second, crash, lose, steps, delete_at_end)| {
                // The first revision is rolled out on a fresh fleet, without faults.
                first.same_td = false;
                first.refuse = 0;
                first.doom = 0;
                first.canary = None;
                Scenario {
                    seed,
                    instances,
                    first,
                    second,
                    crash,
                    lose,
                    steps,
                    delete_at_end,
                }
            },
        )
}

/// SplitMix64: the model's own draws, from the scenario's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pct(&mut self, percent: u8) -> bool {
        self.next() % 100 < u64::from(percent)
    }
}

#[derive(Debug, Clone)]
struct Inst {
    arn: String,
    status: &'static str,
    connected: bool,
    prod: bool,
    changed: bool,
}

#[derive(Debug, Clone)]
struct Tsk {
    arn: String,
    instance: String,
    started_by: String,
    group: String,
    td: String,
    last: &'static str,
    desired: &'static str,
    health: Option<&'static str>,
    started_at: Option<u64>,
    healthy_at: Option<u64>,
    stopped_at: Option<u64>,
    stopped_reason: Option<String>,
    updated_at: u64,
    doomed: bool,
    /// From when the view may see it (its event's lag).
    visible_at: u64,
    /// Changed since the view last saw it.
    dirty: bool,
}

impl Tsk {
    fn occupying(&self) -> bool {
        self.last != "STOPPED"
    }
    fn live(&self) -> bool {
        self.occupying() && self.desired != "STOPPED"
    }
    fn spec(&self) -> TaskSpec<'_> {
        TaskSpec {
            arn: &self.arn,
            instance: &self.instance,
            group: &self.group,
            started_by: &self.started_by,
            task_definition: &self.td,
            last_status: self.last,
            desired_status: self.desired,
            health: self.health,
            started_at: self.started_at,
            stopped_at: self.stopped_at,
            stopped_reason: self.stopped_reason.as_deref(),
            updated_at: Some(self.updated_at),
        }
    }
    fn stop(&mut self, reason: String, now: u64) {
        self.desired = "STOPPED";
        self.stopped_reason.get_or_insert(reason);
        self.updated_at = now;
        self.dirty = true;
    }
}

#[derive(Debug, Clone, Copy)]
struct Faults {
    checks: bool,
    refuse: u8,
    doom: u8,
}

struct Sim {
    now: u64,
    rng: Rng,
    /// During the faults: crashes, lost answers, refusals and failed starts happen.
    faults: bool,
    crash: u8,
    lose: u8,
    instances: Vec<Inst>,
    tasks: Vec<Tsk>,
    task_definitions: BTreeMap<String, Faults>,
    next_task: u64,
    next_id: u64,
    view: ClusterView,
    snap: Snapshot,
    verify_at: HashMap<String, u64>,
    progress: Option<(String, Progress)>,
    /// Every deployment that completed, in order: (id, task definition).
    completed: Vec<(String, String)>,
    /// Failed tasks already counted, and refused starts, per deployment.
    counted: BTreeSet<String>,
    refused: HashMap<String, u64>,
    step: usize,
    /// Times the deployment failed (by kind), rolled back by itself, and actions taken.
    stats: Stats,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    failed: u64,
    auto_rollbacks: u64,
    starts: u64,
    stops: u64,
    passes: u64,
}

fn instance_arn(k: usize) -> String {
    format!("arn:aws:ecs:us-east-1:123456789012:container-instance/prod/i{k:03}")
}

impl Sim {
    fn new(scenario: &Scenario) -> Sim {
        let mut sim = Sim {
            now: START,
            rng: Rng(scenario.seed),
            faults: true,
            crash: scenario.crash,
            lose: scenario.lose,
            instances: Vec::new(),
            tasks: Vec::new(),
            task_definitions: BTreeMap::new(),
            next_task: 0,
            next_id: 0,
            view: ClusterView::default(),
            snap: Snapshot::default(),
            verify_at: HashMap::new(),
            progress: None,
            completed: Vec::new(),
            counted: BTreeSet::new(),
            refused: HashMap::new(),
            step: 0,
            stats: Stats::default(),
        };
        for &(prod, state) in &scenario.instances {
            sim.join(prod);
            let last = sim.instances.last_mut().unwrap();
            match state {
                1 => last.status = "DRAINING",
                2 => last.connected = false,
                _ => {}
            }
        }
        sim.revise(&scenario.first);
        sim
    }

    fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("d{}", self.next_id)
    }

    fn join(&mut self, prod: bool) {
        let arn = instance_arn(self.instances.len());
        self.instances.push(Inst {
            arn,
            status: "ACTIVE",
            connected: true,
            prod,
            changed: true,
        });
    }

    fn active(&self) -> Option<&Deployment> {
        self.snap.active()
    }

    fn active_revision(&self) -> Option<&Revision> {
        self.snap.revision(self.active()?.revision)
    }

    fn apply(&mut self, changes: &Changes) {
        common::apply(&mut self.snap, changes);
    }

    /// A new revision as `spec` says (the environment is created with the first), then its deployment.
    fn revise(&mut self, spec: &RevSpec) {
        let td = match self.active() {
            Some(d) if spec.same_td => d.task_definition.clone(),
            _ => {
                let td = format!("td:{}", self.task_definitions.len() + 1);
                self.task_definitions.insert(
                    td.clone(),
                    Faults {
                        checks: spec.checks,
                        refuse: spec.refuse,
                        doom: spec.doom,
                    },
                );
                td
            }
        };
        let task_definition = TaskDefinitionRef {
            arn: td.clone(),
            health_checks: self.task_definitions[&td].checks,
        };
        let attributes = if spec.prod_only {
            vec![attribute("stack", Some("prod"))]
        } else {
            vec![]
        };
        let method = Some(if spec.rtt {
            DeploymentMethod::ReplaceThenTerminate
        } else {
            DeploymentMethod::TerminateThenReplace
        });
        let configuration = ConfigPatch {
            min_healthy_percent: Some(spec.min_healthy.into()),
            max_over_percent: Some(spec.max_over.into()),
            min_healthy_seconds: Some(spec.bake_s as i64),
            failure_threshold: spec.threshold.map(|t| t as i64),
            progress_deadline_seconds: Some(spec.deadline_s as i64),
            auto_rollback: Some(spec.auto_rollback),
            stop_on_drain: Some(spec.stop_on_drain),
            canary: Some(CanaryPatch {
                instances: Some(spec.canary.unwrap_or(0)),
                auto_promote: Some(spec.auto_promote),
                ..CanaryPatch::default()
            }),
            ..ConfigPatch::default()
        };
        self.now += 1;
        let token = format!("tok{}", self.snap.revisions.len() + 1);
        let id = self.fresh_id();
        let fresh = Fresh {
            now_ms: self.now,
            deployment_id: &id,
            token: &token,
        };
        let mut changes = if self.snap.environment.is_none() {
            lifecycle::create_environment(
                None,
                CreateEnvironment {
                    name: ENV.into(),
                    cluster: ClusterName::new("prod").unwrap(),
                    cluster_arn: common::CLUSTER_ARN.into(),
                    task_definition,
                    instance_group: InstanceSelection {
                        attributes,
                        query: None,
                    },
                    method,
                    configuration,
                },
                fresh,
            )
        } else {
            lifecycle::update_environment(
                &self.snap,
                UpdateEnvironment {
                    task_definition: Some(task_definition),
                    instance_group: Some(InstanceSelection {
                        attributes,
                        query: None,
                    }),
                    method,
                    configuration,
                    base_revision: None,
                },
                fresh,
            )
        }
        .unwrap();
        // Short back-offs keep the scenarios short (they are stored with the revision).
        for doc in &mut changes.put {
            if let Doc::Revision(r) = doc {
                r.deployment_configuration.start_backoff_initial_ms = 1_000;
                r.deployment_configuration.start_backoff_max_ms = 8_000;
            }
        }
        self.apply(&changes);
        let latest = self.snap.environment.as_ref().unwrap().latest_revision;
        self.deploy(latest);
    }

    fn deploy(&mut self, number: u64) {
        let id = self.fresh_id();
        self.now += 1;
        let rollback = self.active().is_some_and(|d| number < d.revision);
        let fresh = Fresh {
            now_ms: self.now,
            deployment_id: &id,
            token: "unused",
        };
        let changes =
            lifecycle::deploy(&self.snap, DeployTarget::Revision { number, rollback }, fresh).unwrap();
        self.apply(&changes);
        self.check_one_in_progress();
    }

    fn check_one_in_progress(&self) {
        let in_progress: Vec<&str> = self
            .snap
            .deployments
            .iter()
            .filter(|d| d.status.in_progress())
            .map(|d| d.id.as_str())
            .collect();
        assert!(
            in_progress.len() <= 1,
            "step {}: in progress: {in_progress:?}",
            self.step
        );
        if let Some(id) = in_progress.first() {
            assert_eq!(
                Some(*id),
                self.snap
                    .environment
                    .as_ref()
                    .unwrap()
                    .active_deployment
                    .as_deref()
            );
        }
    }

    // ---- ECS ----

    fn instance(&self, arn: &str) -> Option<&Inst> {
        self.instances.iter().find(|i| i.arn == arn)
    }

    fn task_definition(&self, td: &str) -> Faults {
        self.task_definitions[td]
    }

    /// Time passes: agents report progress, tasks crash, stopped tasks are forgotten.
    fn tick(&mut self, dt_ms: u64) {
        self.now += dt_ms;
        let now = self.now;
        let connected: BTreeSet<String> = self
            .instances
            .iter()
            .filter(|i| i.connected)
            .map(|i| i.arn.clone())
            .collect();
        for k in 0..self.tasks.len() {
            let crash = self.faults && self.rng.pct(self.crash);
            // An agent reports a step of progress in one tick or in several.
            let slow = self.rng.pct(35);
            let checks = self.task_definition(&self.tasks[k].td.clone()).checks;
            let t = &mut self.tasks[k];
            if !t.occupying() || !connected.contains(&t.instance) {
                continue;
            }
            if slow && !crash {
                continue;
            }
            if t.desired == "STOPPED" {
                t.last = "STOPPED";
                t.stopped_at = Some(now);
                t.health = t.health.map(|_| "UNKNOWN");
            } else if t.last == "PENDING" && t.doomed {
                t.last = "STOPPED";
                t.desired = "STOPPED";
                t.stopped_at = Some(now);
                t.stopped_reason = Some("CannotStartContainerError: failed to start".into());
            } else if t.last == "PENDING" {
                t.last = "RUNNING";
                t.started_at = Some(now);
                t.health = checks.then_some("UNKNOWN");
            } else if crash && t.group == GROUP {
                t.last = "STOPPED";
                t.desired = "STOPPED";
                t.stopped_at = Some(now);
                t.health = t.health.map(|_| "UNKNOWN");
                t.stopped_reason = Some("Essential container in task exited".into());
            } else if t.health == Some("UNKNOWN") {
                t.health = Some("HEALTHY");
                t.healthy_at = Some(now);
            } else {
                continue;
            }
            t.updated_at = now;
            t.dirty = true;
        }
        let forgotten: Vec<String> = self
            .tasks
            .iter()
            .filter(|t| t.stopped_at.is_some_and(|s| s + FORGET_STOPPED_MS < now))
            .map(|t| t.arn.clone())
            .collect();
        for arn in &forgotten {
            self.view.remove_task(arn);
        }
        self.tasks.retain(|t| !forgotten.contains(&t.arn));
    }

    /// StartTask on one instance: the new task's ARN, or ECS's failure reason.
    fn start_task(
        &mut self,
        instance: &str,
        td: &str,
        started_by: &str,
        group: &str,
    ) -> Result<String, String> {
        let faults = self.task_definition(td);
        let i = self.instance(instance).unwrap();
        if i.status != "ACTIVE" || !i.connected {
            return Err(format!("INSTANCE:{}", i.status));
        }
        if self.faults && self.rng.pct(faults.refuse) {
            return Err("RESOURCE:MEMORY".into());
        }
        self.next_task += 1;
        let arn = format!(
            "arn:aws:ecs:us-east-1:123456789012:task/prod/t{:05}",
            self.next_task
        );
        let lag = self.rng.next() % 6_000;
        self.tasks.push(Tsk {
            arn: arn.clone(),
            instance: instance.to_owned(),
            started_by: started_by.to_owned(),
            group: group.to_owned(),
            td: td.to_owned(),
            last: "PENDING",
            desired: "RUNNING",
            health: None,
            started_at: None,
            healthy_at: None,
            stopped_at: None,
            stopped_reason: None,
            updated_at: self.now,
            doomed: self.faults && self.rng.pct(faults.doom),
            visible_at: self.now + lag,
            dirty: true,
        });
        Ok(arn)
    }

    fn op(&mut self, op: &Op) {
        let n = self.instances.len();
        let pick = |i: usize| i % n;
        let now = self.now;
        match op.clone() {
            Op::Nothing => {}
            Op::Join { prod } => self.join(prod),
            Op::Leave(i) => {
                let i = pick(i);
                let arn = self.instances[i].arn.clone();
                let inst = &mut self.instances[i];
                inst.status = "INACTIVE";
                inst.connected = false;
                inst.changed = true;
                for t in self
                    .tasks
                    .iter_mut()
                    .filter(|t| t.instance == arn && t.occupying())
                {
                    t.stop("Host EC2 instance terminated".into(), now);
                    t.last = "STOPPED";
                    t.stopped_at = Some(now);
                }
            }
            Op::Drain(i) | Op::Activate(i) => {
                let (from, to) = if matches!(op, Op::Drain(_)) {
                    ("ACTIVE", "DRAINING")
                } else {
                    ("DRAINING", "ACTIVE")
                };
                let inst = &mut self.instances[pick(i)];
                if inst.status == from {
                    inst.status = to;
                    inst.changed = true;
                }
            }
            Op::Disconnect(i) | Op::Reconnect(i) => {
                let inst = &mut self.instances[pick(i)];
                if inst.status != "INACTIVE" {
                    inst.connected = matches!(op, Op::Reconnect(_));
                    inst.changed = true;
                }
            }
            Op::Regroup(i) => {
                let inst = &mut self.instances[pick(i)];
                inst.prod = !inst.prod;
                inst.changed = true;
            }
            Op::Crash(k) => {
                let connected: Vec<String> = self
                    .instances
                    .iter()
                    .filter(|i| i.connected)
                    .map(|i| i.arn.clone())
                    .collect();
                let live: Vec<usize> = (0..self.tasks.len())
                    .filter(|&t| self.tasks[t].live() && self.tasks[t].group == GROUP)
                    .filter(|&t| connected.contains(&self.tasks[t].instance))
                    .collect();
                if !live.is_empty() {
                    let t = &mut self.tasks[live[k % live.len()]];
                    t.stop("Essential container in task exited".into(), now);
                    t.last = "STOPPED";
                    t.stopped_at = Some(now);
                    t.health = t.health.map(|_| "UNKNOWN");
                }
            }
            Op::Foreign { instance, our_group } => {
                let Some(active) = self.active() else { return };
                let (started_by, group) = if our_group {
                    ("someone".to_owned(), GROUP)
                } else {
                    (active.id.clone(), "blox:api")
                };
                let td = active.task_definition.clone();
                let arn = self.instances[pick(instance)].arn.clone();
                let faults = self.faults;
                self.faults = false;
                let _ = self.start_task(&arn, &td, &started_by, group);
                self.faults = faults;
            }
            Op::Deploy(spec) => {
                if !self.deleting() {
                    self.revise(&spec);
                }
            }
            Op::Freeze | Op::Thaw => {
                self.now += 1;
                if let Ok(changes) = lifecycle::freeze(&self.snap, matches!(op, Op::Freeze), self.now) {
                    self.apply(&changes);
                }
            }
            Op::StopDeployment => {
                let Some(id) = self.active().map(|d| d.id.clone()) else {
                    return;
                };
                self.now += 1;
                if let Ok(changes) = lifecycle::stop(&self.snap, &id, self.now) {
                    self.apply(&changes);
                }
            }
            Op::Rollback => {
                let id = self.fresh_id();
                self.now += 1;
                let fresh = Fresh {
                    now_ms: self.now,
                    deployment_id: &id,
                    token: "unused",
                };
                match lifecycle::rollback(&self.snap, None, fresh) {
                    Ok(changes) => self.apply(&changes),
                    Err(e) => assert!(
                        matches!(e, daemon::CommandError::Conflict { .. }),
                        "step {}: {e:?}",
                        self.step
                    ),
                }
                self.check_one_in_progress();
            }
        }
    }

    fn deleting(&self) -> bool {
        self.snap
            .environment
            .as_ref()
            .is_none_or(|e| e.status.is_deleting())
    }

    /// The view catches up: every instance, and every task change that is visible.
    fn sync_view(&mut self) {
        for i in self.instances.iter_mut().filter(|i| i.changed) {
            i.changed = false;
            let stack = if i.prod { "prod" } else { "dev" };
            let attributes: Vec<Attribute> = vec![
                attribute("stack", Some(stack)),
                attribute("ecs.os-type", Some("linux")),
            ];
            self.view
                .upsert_instance(&container_instance(&i.arn, i.status, i.connected, attributes));
        }
        for t in self
            .tasks
            .iter_mut()
            .filter(|t| t.dirty && t.visible_at <= self.now)
        {
            t.dirty = false;
            self.view.upsert_task(&t.spec().entity(), self.now);
        }
    }

    // ---- the independent oracle ----

    fn owned(&self, t: &Tsk) -> bool {
        t.group == GROUP && self.snap.deployments.iter().any(|d| d.id == t.started_by)
    }

    fn in_group(inst: &Inst, revision: &Revision) -> bool {
        revision.instance_group.attributes.is_empty() || inst.prod
    }

    fn eligible(inst: &Inst, revision: &Revision) -> bool {
        inst.status == "ACTIVE" && inst.connected && Sim::in_group(inst, revision)
    }

    fn checked(&self, td: &str) -> bool {
        self.snap
            .revisions
            .iter()
            .any(|r| r.health_checks && r.task_definition == td)
    }

    /// Healthy as the view can know it: visible, live, RUNNING (HEALTHY with checks) for the bake time.
    fn healthy(&self, t: &Tsk, revision: &Revision) -> bool {
        let since = if self.checked(&t.td) {
            t.healthy_at.filter(|_| t.health == Some("HEALTHY"))
        } else {
            t.started_at
        };
        let bake = revision.deployment_configuration.min_healthy_seconds * 1_000;
        !t.dirty
            && t.visible_at <= self.now
            && t.live()
            && t.last == "RUNNING"
            && self.owned(t)
            && since.is_some_and(|s| s + bake <= self.now)
    }

    fn on<'s>(&'s self, instance: &'s str) -> impl Iterator<Item = &'s Tsk> + 's {
        self.tasks
            .iter()
            .filter(move |t| t.instance == instance && self.owned(t))
    }

    /// Eligible instances carrying two tasks of the environment or more.
    fn doubled(&self, revision: &Revision) -> u64 {
        self.doubled_instances(revision).len() as u64
    }

    /// The same, with their tasks (deployment, task definition, statuses), to report.
    fn doubled_instances(&self, revision: &Revision) -> Vec<(&str, Vec<String>)> {
        self.instances
            .iter()
            .filter(|i| Sim::eligible(i, revision))
            .map(|i| {
                let here = self.on(&i.arn).filter(|t| t.occupying());
                let here = here.map(|t| format!("{} {} {}/{}", t.started_by, t.td, t.last, t.desired));
                (i.arn.as_str(), here.collect::<Vec<_>>())
            })
            .filter(|(_, here)| here.len() >= 2)
            .collect()
    }

    // ---- the executor ----

    /// One pass of the executor; returns the plan.
    fn pass(&mut self) -> Plan {
        self.stats.passes += 1;
        self.sync_view();
        let snap = self.snap.clone();
        let env = snap.environment.as_ref().unwrap();
        let active_deployment = snap.active();
        let active = active_deployment.map(|d| Active {
            deployment: d,
            revision: snap.revision(d.revision).unwrap(),
        });
        let plan = {
            let ids: Vec<&str> = snap.deployments.iter().map(|d| d.id.as_str()).collect();
            let checked: Vec<&str> = snap
                .revisions
                .iter()
                .filter(|r| r.health_checks)
                .map(|r| r.task_definition.as_str())
                .collect();
            let intents: Vec<IntentState<'_>> = snap
                .intents
                .iter()
                .map(|i| IntentState {
                    intent: i,
                    verify_at_ms: self.verify_at[&i.id()],
                })
                .collect();
            let failures: Vec<&InstanceFailure> = snap
                .failures
                .iter()
                .filter(|f| active_deployment.is_some_and(|d| d.id == f.deployment_id))
                .collect();
            let input = PlanInput {
                environment: env,
                active,
                deployment_ids: &ids,
                health_checked: &checked,
                cluster: &self.view,
                intents: &intents,
                failures: &failures,
                now_ms: self.now,
            };
            let plan = daemon::plan(&input);
            let rev_intents: Vec<IntentState<'_>> = intents.iter().rev().copied().collect();
            let rev_failures: Vec<&InstanceFailure> = failures.iter().rev().copied().collect();
            let reversed = PlanInput {
                intents: &rev_intents,
                failures: &rev_failures,
                ..input
            };
            assert_eq!(
                plan,
                daemon::plan(&reversed),
                "step {}: the plan depends on the input's order",
                self.step
            );
            plan
        };
        self.check_plan(&snap, &plan);

        // Settle, verify, record failed tasks.
        let revision = active.map(|a| a.revision.clone());
        let intent_gone = |sim: &mut Sim, deployment: &str, instance: &str| {
            let id = daemon::instance_record_id(deployment, instance);
            sim.snap.intents.retain(|i| i.id() != id);
            sim.verify_at.remove(&id);
        };
        for r in &plan.settled {
            intent_gone(self, &r.deployment_id, &r.instance_arn);
        }
        for r in &plan.verify {
            // ListTasks by startedBy and instance: what it finds is written to the view.
            for t in self.tasks.iter_mut().filter(|t| {
                t.instance == r.instance_arn && t.started_by == r.deployment_id && t.group == GROUP
            }) {
                t.visible_at = t.visible_at.min(self.now);
                t.dirty = false;
                self.view.upsert_task(&t.spec().entity(), self.now);
            }
            intent_gone(self, &r.deployment_id, &r.instance_arn);
        }
        if let (Some(d), Some(revision)) = (active_deployment, &revision) {
            for f in &plan.failed_tasks {
                assert!(
                    self.counted.insert(f.task_arn.clone()),
                    "step {}: {f:?} counted twice",
                    self.step
                );
                let key = (ENV, d.id.as_str(), f.instance_arn.as_str());
                let id = daemon::instance_record_id(&d.id, &f.instance_arn);
                let previous = self.snap.failures.iter().find(|x| x.id() == id);
                let record = InstanceFailure::record(
                    previous,
                    key,
                    &f.reason,
                    Some(f.task_arn.as_str()),
                    self.now,
                    &revision.deployment_configuration,
                );
                self.apply(&Changes {
                    put: vec![Doc::Failure(record)],
                    remove: vec![],
                });
            }
        }

        self.advance(&snap, &plan);

        // Act, if the deployment still may.
        let env = self.snap.environment.clone().unwrap();
        let still = self.active().map(|d| (d.id.clone(), d.status));
        let acting = plan.acting
            && (env.status.is_deleting()
                || (!env.frozen
                    && still.as_ref().map(|s| &s.0) == active_deployment.map(|d| &d.id)
                    && still.is_some_and(|s| s.1.acts())));
        if !acting {
            return plan;
        }
        let doubled_before = revision.as_ref().map(|r| self.doubled(r));
        for stop in &plan.stops {
            self.stats.stops += 1;
            let now = self.now;
            let t = self.tasks.iter_mut().find(|t| t.arn == stop.task_arn).unwrap();
            t.stop(stop.reason.to_string(), now);
        }
        if let (Some(d), Some(revision)) = (active_deployment, &revision) {
            for instance in &plan.starts {
                self.stats.starts += 1;
                let intent = StartIntent {
                    environment: ENV.into(),
                    deployment_id: d.id.clone(),
                    instance_arn: instance.clone(),
                    recorded_at_ms: self.now,
                };
                let id = intent.id();
                self.apply(&Changes {
                    put: vec![Doc::Intent(intent)],
                    remove: vec![],
                });
                let lost_before = self.faults && self.rng.pct(self.lose / 2);
                let answer = if lost_before {
                    Err(None)
                } else {
                    self.start_task(instance, &d.task_definition, &d.id, GROUP)
                        .map_err(Some)
                };
                let lost_after = self.faults && self.rng.pct(self.lose / 2);
                match answer {
                    Err(Some(reason)) if !lost_after => {
                        *self.refused.entry(d.id.clone()).or_default() += 1;
                        intent_gone(self, &d.id, instance);
                        let previous = self.snap.failures.iter().find(|x| x.id() == id);
                        let record = InstanceFailure::record(
                            previous,
                            (ENV, d.id.as_str(), instance.as_str()),
                            &reason,
                            None,
                            self.now,
                            &revision.deployment_configuration,
                        );
                        self.apply(&Changes {
                            put: vec![Doc::Failure(record)],
                            remove: vec![],
                        });
                    }
                    Ok(_) if !lost_after => {
                        self.verify_at.insert(id, self.now + VERIFY_AFTER_ANSWER_MS);
                    }
                    _ => {
                        self.verify_at.insert(id, self.now + VERIFY_AFTER_LOSS_MS);
                    }
                }
            }
            // (b) the surge.
            if revision.deployment_method == DeploymentMethod::ReplaceThenTerminate {
                let eligible = self
                    .instances
                    .iter()
                    .filter(|i| Sim::eligible(i, revision))
                    .count() as u64;
                let surge = revision.deployment_configuration.surge(eligible);
                let before = doubled_before.unwrap();
                let after = self.doubled(revision);
                assert!(
                    after <= surge.max(before),
                    "step {}: {after} instances carry two tasks, surge {surge}, {before} before; plan \
                     surged {}, starts {:?}; doubled: {:?}",
                    self.step,
                    plan.fleet.surged,
                    plan.starts,
                    self.doubled_instances(revision),
                );
            }
        }
        plan
    }

    /// (a), (c) and the counts, on a plan before it is executed.
    fn check_plan(&self, snap: &Snapshot, plan: &Plan) {
        let step = self.step;
        let env = snap.environment.as_ref().unwrap();
        for stop in &plan.stops {
            let t = self
                .tasks
                .iter()
                .find(|t| t.arn == stop.task_arn)
                .expect("a stop of a task ECS has");
            assert!(self.owned(t) && t.live(), "step {step}: stop of {t:?}");
        }
        if env.status.is_deleting() {
            assert!(plan.starts.is_empty(), "step {step}: a start while deleting");
            return;
        }
        let Some(d) = snap.active() else {
            assert!(plan.starts.is_empty() && plan.stops.is_empty());
            return;
        };
        let revision = snap.revision(d.revision).unwrap();
        let config = &revision.deployment_configuration;
        if !plan.acting {
            assert!(plan.starts.is_empty() && plan.stops.is_empty() && plan.failed_tasks.is_empty());
        }

        // The counts, against an independent count.
        let eligible: Vec<&Inst> = self
            .instances
            .iter()
            .filter(|i| Sim::eligible(i, revision))
            .collect();
        let healthy_on = |i: &Inst, target_only: bool, stopped: &BTreeSet<&str>| {
            self.on(&i.arn).any(|t| {
                self.healthy(t, revision)
                    && (!target_only || t.td == d.task_definition)
                    && !stopped.contains(t.arn.as_str())
            })
        };
        let none = BTreeSet::new();
        let healthy = eligible.iter().filter(|i| healthy_on(i, false, &none)).count() as u64;
        let target_healthy = eligible.iter().filter(|i| healthy_on(i, true, &none)).count() as u64;
        // In a canary phase, instances held back without a daemon (as the view knows the tasks) are not
        // in the floor's base: nothing before the promotion can cover them.
        let held_without_daemon = plan.canary.as_ref().map_or(0, |canary| {
            eligible
                .iter()
                .filter(|i| !canary.instances.contains(&i.arn))
                .filter(|i| {
                    !self
                        .on(&i.arn)
                        .any(|t| self.owned(t) && t.live() && t.visible_at <= self.now)
                        && !snap.intents.iter().any(|intent| intent.instance_arn == i.arn)
                })
                .count() as u64
        });
        let floor = config.healthy_floor(eligible.len() as u64 - held_without_daemon);
        assert_eq!(
            (
                plan.fleet.eligible,
                plan.fleet.healthy,
                plan.counts.healthy,
                plan.fleet.floor
            ),
            (eligible.len() as u64, healthy, target_healthy, floor),
            "step {step}: (eligible, healthy, target healthy, floor)"
        );
        // The grid's cells: one per instance of the view, as many healthy as counted, every eligible
        // instance in an eligible state.
        use daemon::Coverage;
        assert_eq!(
            plan.coverage.len(),
            self.view.instance_count(),
            "step {step}: one cell per instance"
        );
        let cells = |states: &[Coverage]| plan.coverage.iter().filter(|c| states.contains(c)).count() as u64;
        assert_eq!(
            cells(&[Coverage::Healthy]),
            plan.counts.healthy,
            "step {step}: healthy cells"
        );
        assert_eq!(
            cells(&[
                Coverage::Healthy,
                Coverage::Starting,
                Coverage::Old,
                Coverage::Failed,
                Coverage::Missing,
                Coverage::Held
            ]),
            plan.fleet.eligible,
            "step {step}: eligible cells"
        );
        assert_eq!(
            cells(&[Coverage::Failed]),
            plan.fleet.failing,
            "step {step}: failed cells"
        );
        assert!(
            cells(&[Coverage::Held]) <= plan.fleet.held,
            "step {step}: held cells"
        );
        let bound = self.refused.get(&d.id).copied().unwrap_or(0)
            + self
                .tasks
                .iter()
                .filter(|t| t.started_by == d.id && t.group == GROUP && !t.occupying())
                .filter(|t| {
                    !t.stopped_reason
                        .as_deref()
                        .unwrap_or("")
                        .starts_with(daemon::STOP_REASON_PREFIX)
                })
                .count() as u64
            + self.counted.len() as u64;
        assert!(
            plan.failed_attempts <= bound,
            "step {step}: {} failed attempts of at most {bound}",
            plan.failed_attempts
        );

        // (a) the floor.
        let stopped: BTreeSet<&str> = plan.stops.iter().map(|s| s.task_arn.as_str()).collect();
        let after = eligible.iter().filter(|i| healthy_on(i, false, &stopped)).count() as u64;
        assert!(
            after >= healthy.min(floor),
            "step {step}: stops take the healthy count from {healthy} to {after}, floor {floor}: {:?}",
            plan.stops
        );

        // Failed tasks: the active deployment's, on an eligible instance, not stopped by blox.
        for f in &plan.failed_tasks {
            let t = self.tasks.iter().find(|t| t.arn == f.task_arn).unwrap();
            let instance = self.instance(&t.instance).unwrap();
            assert!(
                t.started_by == d.id
                    && !t.occupying()
                    && Sim::eligible(instance, revision)
                    && !t
                        .stopped_reason
                        .as_deref()
                        .unwrap_or("")
                        .starts_with(daemon::STOP_REASON_PREFIX),
                "step {step}: {t:?} is no failed start"
            );
        }

        // (c) the starts.
        let fresh: BTreeSet<&str> = plan
            .failed_tasks
            .iter()
            .map(|f| f.instance_arn.as_str())
            .collect();
        let settled: BTreeSet<(&str, &str)> = plan
            .settled
            .iter()
            .map(|r| (r.deployment_id.as_str(), r.instance_arn.as_str()))
            .collect();
        // (f) before its promotion, a canary deployment starts nothing outside its recorded canary.
        let canary: Option<&Vec<String>> = d
            .in_canary(revision)
            .then_some(d.canary_instances.as_ref())
            .flatten();
        if d.in_canary(revision) && d.canary_instances.is_none() {
            assert!(
                plan.starts.is_empty() && plan.stops.is_empty(),
                "step {step}: acting before the canary is recorded"
            );
        }
        for instance in &plan.starts {
            let inst = self.instance(instance).unwrap();
            assert!(Sim::eligible(inst, revision), "step {step}: start on {inst:?}");
            assert!(
                canary.is_none_or(|set| set.contains(instance)),
                "step {step}: start on {instance} outside the canary {canary:?} before promotion"
            );
            let unsettled: Vec<&StartIntent> = snap
                .intents
                .iter()
                .filter(|i| &i.instance_arn == instance)
                .filter(|i| !settled.contains(&(i.deployment_id.as_str(), i.instance_arn.as_str())))
                .collect();
            assert!(
                unsettled.is_empty(),
                "step {step}: start on {instance} with {unsettled:?} in flight"
            );
            let failure = snap
                .failures
                .iter()
                .find(|f| f.deployment_id == d.id && &f.instance_arn == instance);
            assert!(
                failure.is_none_or(|f| f.retry_at_ms <= self.now) && !fresh.contains(instance.as_str()),
                "step {step}: start on {instance} in back-off: {failure:?}"
            );
            let here: Vec<&Tsk> = self.on(instance).filter(|t| t.occupying()).collect();
            let beside_one_old = revision.deployment_method == DeploymentMethod::ReplaceThenTerminate
                && here.len() == 1
                && here[0].live()
                && here[0].td != d.task_definition;
            assert!(
                here.is_empty() || beside_one_old,
                "step {step}: start on {instance} beside {here:?}"
            );
        }
    }

    /// `lifecycle::advance`, and (e).
    fn advance(&mut self, snap: &Snapshot, plan: &Plan) {
        let Some(before) = snap.active().cloned() else {
            return;
        };
        let id = self.fresh_id();
        if self.progress.as_ref().is_none_or(|(of, _)| *of != before.id) {
            self.progress = Some((before.id.clone(), Progress::new(self.now)));
        }
        let progress = &mut self.progress.as_mut().unwrap().1;
        let changes = lifecycle::advance(
            snap,
            plan,
            lifecycle::Observed::default(),
            progress,
            Fresh {
                now_ms: self.now,
                deployment_id: &id,
                token: "unused",
            },
        );
        self.apply(&changes);
        self.check_one_in_progress();
        let after = self.snap.deployment(&before.id).unwrap().clone();
        if after.status == DeploymentStatus::Completed && before.status != DeploymentStatus::Completed {
            self.completed
                .push((after.id.clone(), after.task_definition.clone()));
        }
        let new = self.snap.deployment(&id).cloned();
        if after.status != DeploymentStatus::Failed || before.status == DeploymentStatus::Failed {
            assert!(new.is_none(), "step {}: {new:?} without a failure", self.step);
            return;
        }
        // (e) It failed: a rollback exactly when the revision asks for it, the deployment is no
        // rollback, and the last deployment that completed had another task definition.
        self.stats.failed += 1;
        let revision = snap.revision(before.revision).unwrap();
        let config = &revision.deployment_configuration;
        let reason = after.reason().unwrap();
        if reason.contains("failure threshold") {
            assert!(plan.failed_attempts >= config.failure_threshold(plan.fleet.eligible));
        } else {
            assert!(reason.contains("no progress"), "{reason}");
            let started = after.started_at.unwrap();
            assert!(
                self.now - started >= config.progress_deadline_seconds * 1_000,
                "{reason}"
            );
        }
        // The last completed revision that runs something else, and that a user did not roll back
        // from.
        let expected = (config.auto_rollback && !before.rollback)
            .then(|| {
                self.completed
                    .iter()
                    .rev()
                    .filter(|(d, _)| *d != before.id)
                    .filter(|(d, _)| {
                        self.snap
                            .deployment(d)
                            .is_some_and(|x| x.status != DeploymentStatus::RolledBack)
                    })
                    .find(|(_, td)| *td != before.task_definition)
            })
            .flatten();
        match (expected, new) {
            (None, None) => {}
            (Some((target, _)), Some(new)) => {
                self.stats.auto_rollbacks += 1;
                let target = self.snap.deployment(target).unwrap();
                assert_eq!(
                    (new.revision, new.rollback, new.rollback_of.as_deref(), new.status),
                    (
                        target.revision,
                        true,
                        Some(before.id.as_str()),
                        DeploymentStatus::Pending
                    ),
                    "step {}",
                    self.step
                );
                assert_eq!(after.rolled_back_by.as_deref(), Some(new.id.as_str()));
                assert_eq!(self.active().unwrap().id, new.id);
            }
            (expected, new) => panic!(
                "step {}: rollback expected to {expected:?}, got {new:?}",
                self.step
            ),
        }
    }

    // ---- quiescence ----

    /// A user's part once the faults stop: thaw, redeploy what failed or was stopped, and lower a
    /// TerminateThenReplace floor that leaves nothing to replace (the floor rounds up: see
    /// `terminate_then_replace` in tests/plan.rs).
    fn tend(&mut self, plan: &Plan) -> bool {
        let env = self.snap.environment.as_ref().unwrap();
        if env.frozen {
            self.op(&Op::Thaw);
            return true;
        }
        let Some(d) = self.active() else { return false };
        let (status, number) = (d.status, d.revision);
        let method = self.active_revision().unwrap().deployment_method;
        let all = self
            .active_revision()
            .unwrap()
            .deployment_configuration
            .min_healthy_percent
            == 100;
        // A canary's floor leaves out held instances without a daemon: at 100% it is the whole rest.
        let stuck = method == DeploymentMethod::TerminateThenReplace
            && (plan.fleet.floor >= plan.fleet.eligible || all)
            && plan.fleet.outdated > 0
            && plan.starts.is_empty()
            && plan.stops.is_empty();
        if stuck {
            let mut changes = lifecycle::update_environment(
                &self.snap,
                UpdateEnvironment {
                    configuration: ConfigPatch {
                        min_healthy_percent: Some(0),
                        ..ConfigPatch::default()
                    },
                    ..UpdateEnvironment::default()
                },
                Fresh {
                    now_ms: self.now,
                    deployment_id: "unused",
                    token: "tok-floor",
                },
            )
            .unwrap();
            // The new revision is based on the latest, which may not be the active one.
            for doc in &mut changes.put {
                if let Doc::Revision(r) = doc {
                    let active = self.snap.revision(self.snap.active().unwrap().revision).unwrap();
                    let number = r.number;
                    *r = Revision {
                        number,
                        token: r.token.clone(),
                        ..active.clone()
                    };
                    r.deployment_configuration.min_healthy_percent = 0;
                }
            }
            self.apply(&changes);
            let latest = self.snap.environment.as_ref().unwrap().latest_revision;
            self.deploy(latest);
            return true;
        }
        if !status.acts() {
            self.deploy(number);
            return true;
        }
        if status == DeploymentStatus::AwaitingPromotion {
            let id = self.active().unwrap().id.clone();
            let changes = lifecycle::promote(&self.snap, &id, self.now).expect("a canary to promote");
            self.apply(&changes);
            return true;
        }
        false
    }

    /// (d): the faults stop, and the rollout must complete.
    fn settle(&mut self) {
        self.faults = false;
        for i in &mut self.instances {
            if i.status != "INACTIVE" && !i.connected {
                i.connected = true;
                i.changed = true;
            }
        }
        let mut tended = 0;
        let mut done = 0;
        for _ in 0..3_000 {
            self.step += 1;
            self.tick(2_000);
            let plan = self.pass();
            let status = self.active().map(|d| d.status);
            if plan.complete && status == Some(DeploymentStatus::Completed) {
                // A few more passes: stops of duplicates on kept instances finish, nothing changes.
                done += 1;
                if done == 3 {
                    self.check_converged(&plan);
                    return;
                }
                continue;
            }
            done = 0;
            if self.tend(&plan) {
                tended += 1;
                assert!(
                    tended <= 6,
                    "the user keeps having to step in: {:?}",
                    self.snap.deployments
                );
            }
        }
        let active = self.active().cloned();
        let plan = self.pass();
        panic!("no convergence: {active:?}\n{plan:?}");
    }

    fn check_converged(&self, plan: &Plan) {
        let d = self.active().unwrap();
        let revision = self.active_revision().unwrap();
        let config = &revision.deployment_configuration;
        let mut eligible = 0;
        for i in &self.instances {
            let here: Vec<&Tsk> = self.on(&i.arn).filter(|t| t.occupying()).collect();
            let keeps = i.status != "INACTIVE"
                && Sim::in_group(i, revision)
                && ((i.status == "DRAINING" && !config.stop_on_drain)
                    || (i.status == "ACTIVE" && !i.connected));
            if Sim::eligible(i, revision) {
                eligible += 1;
                assert_eq!(here.len(), 1, "{i:?} runs {here:?}");
                assert!(
                    here[0].td == d.task_definition && self.healthy(here[0], revision),
                    "{i:?}: {:?}",
                    here[0]
                );
            } else if keeps {
                assert!(here.len() <= 1, "{i:?} keeps {here:?}");
            } else {
                assert!(here.is_empty(), "{i:?} should run nothing: {here:?}");
            }
        }
        assert_eq!((plan.counts.desired, plan.counts.healthy), (eligible, eligible));
        assert!(self.snap.intents.is_empty(), "{:?}", self.snap.intents);
    }

    /// Deletion with terminateTasks: every task stops, then the environment goes.
    fn delete(&mut self) {
        self.now += 1;
        let changes = lifecycle::delete(&self.snap, true, self.now).unwrap();
        self.apply(&changes);
        for _ in 0..100 {
            self.step += 1;
            self.tick(2_000);
            let plan = self.pass();
            if plan.complete {
                let changes = lifecycle::finish_delete(&self.snap);
                self.apply(&changes);
                assert!(self.snap.environment.is_none());
                let left: Vec<&Tsk> = self
                    .tasks
                    .iter()
                    .filter(|t| t.occupying() && t.group == GROUP && t.started_by != "someone")
                    .collect();
                assert!(left.is_empty(), "left running: {left:?}");
                return;
            }
        }
        panic!("the deletion never completes");
    }
}

fn run(scenario: &Scenario) -> Stats {
    let mut sim = Sim::new(scenario);
    // The first revision is rolled out without faults.
    sim.faults = false;
    for _ in 0..200 {
        sim.tick(2_000);
        sim.pass();
        if sim
            .active()
            .is_some_and(|d| d.status == DeploymentStatus::Completed)
        {
            break;
        }
    }
    let warm = sim.active().unwrap().clone();
    if warm.status != DeploymentStatus::Completed {
        // Only a floor that rounds up to the whole fleet can hold the first rollout up: it has nothing
        // to replace, so that is not it. Anything else is a failure to converge.
        panic!("the first rollout does not complete: {warm:?}");
    }
    sim.faults = true;
    sim.revise(&scenario.second);
    for (step, s) in scenario.steps.iter().enumerate() {
        sim.step = step + 1;
        sim.tick(s.dt_ms);
        sim.op(&s.op);
        sim.pass();
    }
    sim.settle();
    if scenario.delete_at_end {
        sim.delete();
    }
    sim.stats
}

proptest! {
    // BLOX_PROPTEST_CASES runs more (e.g. 5000) when hunting.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("BLOX_PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(160)
    ))]

    #[test]
    fn rollouts_under_churn_keep_the_floor_the_surge_and_converge(scenario in scenario()) {
        run(&scenario);
    }
}

/// The scenarios do reach what the properties are about: failures, automatic rollbacks, actions.
#[test]
fn the_scenarios_exercise_failures_and_rollbacks() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut total = Stats::default();
    for _ in 0..60 {
        let scenario = scenario().new_tree(&mut runner).unwrap().current();
        let stats = run(&scenario);
        total.failed += stats.failed;
        total.auto_rollbacks += stats.auto_rollbacks;
        total.starts += stats.starts;
        total.stops += stats.stops;
        total.passes += stats.passes;
    }
    eprintln!("{total:?}");
    assert!(
        total.failed >= 5 && total.auto_rollbacks >= 2 && total.stops > 100,
        "{total:?}"
    );
}

/// A full pass over 10,000 instances and 20 environments (200,000 tasks): one cluster view, twenty
/// plans, every environment converged. Deterministic; no timing is asserted.
#[test]
fn ten_thousand_instances_and_twenty_environments() {
    let instances = 10_000usize;
    let environments = 20usize;
    let mut view = ClusterView::default();
    for i in 0..instances {
        let stack = if i % 4 == 0 { "dev" } else { "prod" };
        view.upsert_instance(&container_instance(
            &instance_arn(i),
            "ACTIVE",
            true,
            vec![attribute("stack", Some(stack))],
        ));
    }
    let td = |e: usize| format!("arn:aws:ecs:us-east-1:123456789012:task-definition/env-{e}:1");
    // One entity, rewritten in place for each task: the test is about planning, not allocating.
    let mut task = TaskSpec {
        arn: "",
        instance: "",
        group: "",
        started_by: "",
        task_definition: "",
        last_status: "RUNNING",
        desired_status: "RUNNING",
        health: None,
        started_at: None,
        stopped_at: None,
        stopped_reason: None,
        updated_at: None,
    }
    .entity();
    for e in 0..environments {
        task.task_definition_arn = td(e);
        task.group = Some(format!("blox:env-{e}"));
        task.started_by = Some(format!("d-{e}"));
        for i in (0..instances).filter(|i| e % 2 == 0 || i % 4 != 0) {
            use std::fmt::Write as _;
            task.task_arn.clear();
            write!(
                task.task_arn,
                "arn:aws:ecs:us-east-1:123456789012:task/prod/{e:02x}{i:030x}"
            )
            .unwrap();
            let instance = task.container_instance_arn.get_or_insert_with(String::new);
            instance.clear();
            write!(
                instance,
                "arn:aws:ecs:us-east-1:123456789012:container-instance/prod/i{i:03}"
            )
            .unwrap();
            view.upsert_task(&task, START);
        }
    }
    assert_eq!(view.task_count(), 10 * 10_000 + 10 * 7_500);
    for e in 0..environments {
        let name = format!("env-{e}");
        let revision = Revision {
            environment: name.clone(),
            number: 1,
            token: "t".into(),
            task_definition: td(e),
            health_checks: false,
            instance_group: InstanceGroup {
                cluster_arn: common::CLUSTER_ARN.into(),
                attributes: if e % 2 == 0 {
                    vec![]
                } else {
                    vec![attribute("stack", Some("prod"))]
                },
                query: None,
            },
            deployment_method: DeploymentMethod::TerminateThenReplace,
            deployment_configuration: DeploymentConfiguration::default(),
            created_at: 0,
        };
        let deployment = Deployment {
            id: format!("d-{e}"),
            environment: name.clone(),
            revision: 1,
            task_definition: td(e),
            previous_revision: None,
            status: DeploymentStatus::Completed,
            rollback: false,
            rollback_of: None,
            rolled_back_by: None,
            superseded_by: None,
            created_at: 0,
            started_at: None,
            ended_at: None,
            counts: Default::default(),
            failed_attempts: 0,
            history: vec![],
            canary_instances: None,
            promoted_at: None,
        };
        let environment = blox_model::Environment {
            name,
            cluster: ClusterName::new("prod").unwrap(),
            cluster_arn: common::CLUSTER_ARN.into(),
            latest_revision: 1,
            active_deployment: Some(deployment.id.clone()),
            status: blox_model::EnvironmentStatus::Active,
            frozen: false,
            created_at: 0,
            updated_at: 0,
        };
        let plan = daemon::plan(&PlanInput {
            environment: &environment,
            active: Some(Active {
                deployment: &deployment,
                revision: &revision,
            }),
            deployment_ids: &[deployment.id.as_str()],
            health_checked: &[],
            cluster: &view,
            intents: &[],
            failures: &[],
            now_ms: START + 1,
        });
        let want = if e % 2 == 0 { 10_000 } else { 7_500 };
        assert!(
            plan.complete && plan.starts.is_empty() && plan.stops.is_empty(),
            "env-{e}: {:?}",
            plan.counts
        );
        assert_eq!(
            (plan.counts.desired, plan.counts.healthy, plan.counts.total),
            (want, want, want)
        );
    }
}
