//! The daemon planner against a model of ECS, an event feed and an executor.
//!
//! The model: instances join, leave (terminated: their tasks stop), are deregistered (their tasks are
//! orphaned and keep running), drain, are reactivated, lose and regain their agent, fill up (StartTask
//! then fails with RESOURCE:MEMORY); tasks crash; other people's tasks appear; new revisions are
//! deployed. ECS reports changes as versioned events that are delayed, duplicated and reordered; the
//! view the planner sees applies them with the version rule (so each entity only moves forward, but
//! may lag ECS arbitrarily), plus occasional reconciliation. The executor records start intents
//! before calling StartTask, may crash before or after the call, and verifies expired intents.
//!
//! What the planner guarantees, and these tests assert:
//! - at every start, its view showed no task of the environment occupying the instance and no
//!   unsettled intent there: it never starts next to something it could see;
//! - if verification is truthful (ECS is asked, and what it says is written to the view), no instance
//!   ever holds two occupying tasks of the environment, at any step, however stale the view;
//! - if verification can miss a task (an eventually consistent listing), duplicates can arise, but
//!   after quiescence every eligible instance has exactly one RUNNING task of the current task
//!   definition, draining or agent-disconnected instances in the group at most one, other instances
//!   none, and nobody else's task was ever stopped.

use std::collections::{BTreeMap, BTreeSet};

use blox_model::Attribute;
use blox_model::daemon::{
    self, ClusterView, DEFAULT_INTENT_TTL_MS, Deployment, DeploymentConfiguration, DeploymentStatus,
    EnvironmentStatus, FailedInstance, InstanceGroup, InstanceView, Plan, PlanInput, Revision, StartIntent,
    Target, TaskView,
};
use proptest::prelude::*;

const ENV: &str = "web";
const GROUP: &str = "blox:web";
/// Shorter than the default, so that intents expire often within a scenario.
const INTENT_TTL_MS: u64 = 10_000;

#[derive(Debug, Clone)]
struct Inst {
    arn: String,
    status: &'static str,
    connected: bool,
    attributes: Vec<Attribute>,
    version: u64,
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
    version: u64,
}

impl Tsk {
    fn occupying(&self) -> bool {
        self.last != "STOPPED"
    }
}

#[derive(Debug, Clone)]
enum Entity {
    Inst(Inst),
    Task(Tsk),
}

/// The truth, and the events it has sent that the view has not necessarily seen.
#[derive(Default)]
struct Ecs {
    instances: Vec<Inst>,
    /// Instances without memory for another task.
    full: BTreeSet<String>,
    tasks: Vec<Tsk>,
    queue: Vec<Entity>,
    next_task: u64,
}

impl Ecs {
    fn join(&mut self, prod: bool) {
        let stack = if prod { "prod" } else { "dev" };
        let instance = Inst {
            arn: format!("i{:02}", self.instances.len()),
            status: "ACTIVE",
            connected: true,
            attributes: vec![
                Attribute {
                    name: "stack".into(),
                    value: Some(stack.into()),
                },
                Attribute {
                    name: "ecs.capability.docker".into(),
                    value: None,
                },
            ],
            version: 0,
        };
        self.instances.push(instance);
        self.changed_instance(self.instances.len() - 1);
    }

    fn changed_instance(&mut self, i: usize) {
        self.instances[i].version += 1;
        self.queue.push(Entity::Inst(self.instances[i].clone()));
    }

    fn changed_task(&mut self, t: usize) {
        self.tasks[t].version += 1;
        self.queue.push(Entity::Task(self.tasks[t].clone()));
    }

    /// StartTask on one instance: ECS's failure reason, or the new task.
    fn start(&mut self, instance: &str, td: &str, started_by: &str, group: &str) -> Result<String, String> {
        let Some(i) = self.instances.iter().find(|i| i.arn == instance) else {
            return Err("MISSING".into());
        };
        if i.status != "ACTIVE" {
            return Err(i.status.into());
        }
        if !i.connected {
            return Err("AGENT".into());
        }
        if self.full.contains(instance) {
            return Err("RESOURCE:MEMORY".into());
        }
        self.next_task += 1;
        let arn = format!("t{:03}", self.next_task);
        self.tasks.push(Tsk {
            arn: arn.clone(),
            instance: instance.into(),
            started_by: started_by.into(),
            group: group.into(),
            td: td.into(),
            last: "PENDING",
            desired: "RUNNING",
            version: 0,
        });
        self.changed_task(self.tasks.len() - 1);
        Ok(arn)
    }

    fn stop(&mut self, arn: &str) {
        if let Some(t) = self.tasks.iter().position(|t| t.arn == arn)
            && self.tasks[t].desired != "STOPPED"
        {
            self.tasks[t].desired = "STOPPED";
            self.changed_task(t);
        }
    }

    /// The agents report progress on some tasks: PENDING → RUNNING, stop requested → STOPPED.
    fn progress(&mut self, mut pick: impl FnMut(usize) -> bool) {
        for t in 0..self.tasks.len() {
            let task = &mut self.tasks[t];
            if !task.occupying() || !pick(t) {
                continue;
            }
            if task.desired == "STOPPED" {
                task.last = "STOPPED";
            } else if task.last == "PENDING" {
                task.last = "RUNNING";
            } else {
                continue;
            }
            self.changed_task(t);
        }
    }

    /// Terminated (`orphan` false): the instance goes INACTIVE and its tasks stop. Force-deregistered
    /// (`orphan` true): it goes INACTIVE and its tasks are left as they were.
    fn leave(&mut self, i: usize, orphan: bool) {
        if self.instances[i].status == "INACTIVE" {
            return;
        }
        self.instances[i].status = "INACTIVE";
        self.instances[i].connected = false;
        self.changed_instance(i);
        if !orphan {
            let arn = self.instances[i].arn.clone();
            for t in 0..self.tasks.len() {
                if self.tasks[t].instance == arn && self.tasks[t].occupying() {
                    self.tasks[t].desired = "STOPPED";
                    self.tasks[t].last = "STOPPED";
                    self.changed_task(t);
                }
            }
        }
    }
}

/// What the planner sees: entities applied with the version rule.
#[derive(Default)]
struct View {
    instances: BTreeMap<String, Inst>,
    tasks: BTreeMap<String, Tsk>,
}

impl View {
    fn apply(&mut self, entity: &Entity) {
        match entity {
            Entity::Inst(i) => {
                if self.instances.get(&i.arn).is_none_or(|s| s.version < i.version) {
                    self.instances.insert(i.arn.clone(), i.clone());
                }
            }
            Entity::Task(t) => {
                if self.tasks.get(&t.arn).is_none_or(|s| s.version < t.version) {
                    self.tasks.insert(t.arn.clone(), t.clone());
                }
            }
        }
    }

    fn reconcile(&mut self, ecs: &Ecs) {
        for i in &ecs.instances {
            self.apply(&Entity::Inst(i.clone()));
        }
        for t in &ecs.tasks {
            self.apply(&Entity::Task(t.clone()));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// ACTIVE, agent connected, in the group: exactly one task of the current task definition.
    Eligible,
    /// Draining (unless the revision stops daemons on drain) or agent-disconnected, in the group:
    /// keeps the daemon it has, gets none.
    Keep,
    None,
}

#[derive(Debug, Clone, Copy)]
enum Crash {
    /// The intents of the first batch are recorded, then the executor dies.
    BeforeCall,
    /// StartTask runs, then the executor dies before it records the answer.
    AfterCall,
}

struct Scheduler {
    revisions: Vec<Revision>,
    deployments: Vec<Deployment>,
    intents: Vec<StartIntent>,
    failed: Vec<FailedInstance>,
    status: EnvironmentStatus,
    /// Verification can miss a task that exists.
    lossy_verify: bool,
    /// Every task the scheduler asked ECS to stop.
    stopped: BTreeSet<String>,
}

impl Scheduler {
    fn new(prod_only: bool, stop_on_drain: bool, lossy_verify: bool) -> Self {
        let mut scheduler = Scheduler {
            revisions: vec![],
            deployments: vec![],
            intents: vec![],
            failed: vec![],
            status: EnvironmentStatus::Active,
            lossy_verify,
            stopped: BTreeSet::new(),
        };
        scheduler.deploy(prod_only, stop_on_drain, false);
        scheduler
    }

    /// A new revision and its deployment; `same_td` keeps the task definition (its tasks are adopted).
    fn deploy(&mut self, prod_only: bool, stop_on_drain: bool, same_td: bool) {
        let number = self.revisions.len() as u64 + 1;
        let task_definition = match self.revisions.last() {
            Some(last) if same_td => last.task_definition.clone(),
            _ => format!("td:{number}"),
        };
        let attributes = if prod_only {
            vec![Attribute {
                name: "stack".into(),
                value: Some("prod".into()),
            }]
        } else {
            vec![]
        };
        self.revisions.push(Revision {
            environment: ENV.into(),
            number,
            token: format!("token-{number}"),
            task_definition: task_definition.clone(),
            instance_group: InstanceGroup {
                cluster_arn: "c".into(),
                attributes,
            },
            deployment: DeploymentConfiguration {
                stop_on_drain,
                start_backoff_initial_ms: 1_000,
                start_backoff_max_ms: 8_000,
            },
            created_at: 0,
        });
        self.deployments.push(Deployment::new(
            format!("d{number}"),
            ENV,
            number,
            task_definition,
            0,
        ));
        // Back-off is per deployment: a new task definition deserves a fresh try.
        self.failed.clear();
    }

    fn revision(&self) -> &Revision {
        self.revisions.last().unwrap()
    }

    fn deployment(&self) -> &Deployment {
        self.deployments.last().unwrap()
    }

    fn owns(&self, task: &Tsk) -> bool {
        task.group == GROUP && self.deployments.iter().any(|d| d.id == task.started_by)
    }

    fn plan(&self, view: &View, now: u64, reversed: bool) -> Plan {
        let ids: Vec<String> = self.deployments.iter().map(|d| d.id.clone()).collect();
        let instances = view.instances.values().map(|i| InstanceView {
            arn: &i.arn,
            status: i.status,
            agent_connected: i.connected,
            attributes: &i.attributes,
        });
        let tasks = view.tasks.values().map(|t| TaskView {
            arn: &t.arn,
            container_instance_arn: Some(&t.instance),
            started_by: Some(&t.started_by),
            group: Some(&t.group),
            task_definition_arn: &t.td,
            last_status: t.last,
            desired_status: t.desired,
        });
        let cluster = if reversed {
            ClusterView::new(
                instances.rev().collect::<Vec<_>>(),
                tasks.rev().collect::<Vec<_>>(),
            )
        } else {
            ClusterView::new(instances, tasks)
        };
        let (intents, failed) = if reversed {
            (
                self.intents.iter().rev().cloned().collect(),
                self.failed.iter().rev().cloned().collect(),
            )
        } else {
            (self.intents.clone(), self.failed.clone())
        };
        let input = PlanInput {
            environment: ENV,
            status: self.status,
            target: Target::new(self.revision(), self.deployment()),
            deployment_ids: &ids,
            cluster: &cluster,
            intents: &intents,
            failed: &failed,
            intent_ttl_ms: INTENT_TTL_MS,
        };
        daemon::plan(&input, now)
    }

    /// One pass: plan on the view, check what the plan may do, then execute it as the executor would.
    fn pass(&mut self, ecs: &mut Ecs, view: &mut View, now: u64, crash: Option<Crash>) -> Plan {
        let plan = self.plan(view, now, false);
        assert_eq!(
            plan,
            self.plan(view, now, true),
            "the input's order does not matter"
        );
        if self.status == EnvironmentStatus::Active {
            let c = plan.counts;
            assert_eq!(c.desired, c.running + c.pending + c.failed, "counts add up");
        } else {
            assert!(plan.starts.is_empty(), "a deleting environment starts nothing");
        }
        for instance in &plan.starts {
            let seen: Vec<&Tsk> = view
                .tasks
                .values()
                .filter(|t| &t.instance == instance && t.occupying() && self.owns(t))
                .collect();
            assert!(seen.is_empty(), "start on {instance} next to {seen:?}");
            let unsettled: Vec<&StartIntent> = self
                .intents
                .iter()
                .filter(|i| &i.instance_arn == instance && !plan.settled.contains(&i.key()))
                .collect();
            assert!(
                unsettled.is_empty(),
                "start on {instance} with {unsettled:?} in flight"
            );
        }
        self.assert_stops_keep_what_they_should(view, &plan);
        let mut deployment = self.deployment().clone();
        deployment.observe(&plan, now);
        *self.deployments.last_mut().unwrap() = deployment;

        // The executor.
        self.intents.retain(|i| !plan.settled.contains(&i.key()));
        daemon::clear_started(&mut self.failed, &plan.clear_failed);
        for instance in &plan.verify {
            if !self.lossy_verify {
                // ListTasks on the instance and DescribeTasks, written to the store as the
                // reconciler writes what it describes.
                for t in ecs
                    .tasks
                    .iter()
                    .filter(|t| &t.instance == instance && self.owns(t))
                {
                    view.apply(&Entity::Task(t.clone()));
                }
            }
            self.intents
                .retain(|i| &i.instance_arn != instance || now < i.recorded_at_ms + INTENT_TTL_MS);
        }
        for stop in &plan.stops {
            self.stopped.insert(stop.task_arn.clone());
            ecs.stop(&stop.task_arn);
        }
        let (deployment_id, td) = (
            self.deployment().id.clone(),
            self.deployment().task_definition.clone(),
        );
        let config = self.revision().deployment;
        for batch in plan.starts.chunks(10) {
            for instance in batch {
                self.intents.push(StartIntent {
                    instance_arn: instance.clone(),
                    deployment_id: deployment_id.clone(),
                    recorded_at_ms: now,
                    task_arn: None,
                });
            }
            if let Some(Crash::BeforeCall) = crash {
                return plan;
            }
            let answers: Vec<_> = batch
                .iter()
                .map(|i| (i, ecs.start(i, &td, &deployment_id, GROUP)))
                .collect();
            if let Some(Crash::AfterCall) = crash {
                return plan;
            }
            for (instance, answer) in answers {
                let at = self
                    .intents
                    .iter()
                    .position(|i| &i.instance_arn == instance && i.deployment_id == deployment_id)
                    .unwrap();
                match answer {
                    Ok(task) => {
                        self.intents[at].task_arn = Some(task);
                        daemon::clear_started(&mut self.failed, std::slice::from_ref(instance));
                    }
                    Err(reason) => {
                        self.intents.remove(at);
                        daemon::record_start_failure(&mut self.failed, instance, &reason, now, &config);
                    }
                }
            }
        }
        plan
    }

    /// What a plan's stops leave in view: one task of the current task definition on an eligible
    /// instance that has one (none if it only has older ones: terminate, then replace), one task on an
    /// instance that keeps its daemon, none elsewhere. Only the environment's tasks are stopped.
    fn assert_stops_keep_what_they_should(&self, view: &View, plan: &Plan) {
        let stopped: BTreeSet<&str> = plan.stops.iter().map(|s| s.task_arn.as_str()).collect();
        for arn in &stopped {
            let task = &view.tasks[*arn];
            assert!(self.owns(task), "{task:?} is not the scheduler's to stop");
        }
        let current = &self.deployment().task_definition;
        let live = |t: &&Tsk| t.occupying() && t.desired != "STOPPED" && self.owns(t);
        for instance in view.instances.values() {
            let here: Vec<&Tsk> = view
                .tasks
                .values()
                .filter(|t| t.instance == instance.arn)
                .filter(live)
                .collect();
            let left: Vec<&Tsk> = here
                .iter()
                .copied()
                .filter(|t| !stopped.contains(t.arn.as_str()))
                .collect();
            match self.role(instance) {
                Role::Eligible if here.iter().any(|t| &t.td == current) => {
                    assert_eq!(left.len(), 1, "{instance:?}: {here:?} → {left:?}");
                    assert_eq!(&left[0].td, current, "{instance:?}: {here:?} → {left:?}");
                }
                Role::Keep if !here.is_empty() => {
                    assert_eq!(left.len(), 1, "{instance:?}: {here:?} → {left:?}");
                }
                _ => assert!(left.is_empty(), "{instance:?}: {here:?} → {left:?}"),
            }
        }
        for task in view.tasks.values().filter(live) {
            if !view.instances.contains_key(&task.instance) {
                assert!(
                    stopped.contains(task.arn.as_str()),
                    "{task:?} is on no known instance"
                );
            }
        }
    }

    /// What an instance is to the environment, from the rules as stated.
    fn role(&self, instance: &Inst) -> Role {
        let in_group = self.in_group(instance);
        let config = self.revision().deployment;
        if self.status != EnvironmentStatus::Active {
            return Role::None;
        }
        match (instance.status, instance.connected) {
            ("ACTIVE", true) if in_group => Role::Eligible,
            ("ACTIVE", false) if in_group => Role::Keep,
            ("DRAINING", _) if in_group && !config.stop_on_drain => Role::Keep,
            _ => Role::None,
        }
    }

    /// No instance holds two occupying tasks of the environment.
    fn assert_at_most_one_per_instance(&self, ecs: &Ecs, step: &str) {
        let mut per_instance: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for t in ecs.tasks.iter().filter(|t| t.occupying() && self.owns(t)) {
            per_instance.entry(&t.instance).or_default().push(&t.arn);
        }
        for (instance, tasks) in per_instance {
            assert!(tasks.len() <= 1, "after {step}: {instance} holds {tasks:?}");
        }
    }

    fn in_group(&self, instance: &Inst) -> bool {
        self.revision().instance_group.matches(&instance.attributes)
    }

    /// The converged state, checked on ECS itself.
    fn assert_converged(&self, ecs: &Ecs, plan: &Plan) {
        let revision = self.revision();
        let mut eligible = 0;
        for instance in &ecs.instances {
            let tasks: Vec<&Tsk> = ecs
                .tasks
                .iter()
                .filter(|t| t.instance == instance.arn && t.occupying() && self.owns(t))
                .collect();
            let in_group = self.in_group(instance);
            let keeps = in_group
                && ((instance.status == "DRAINING" && !revision.deployment.stop_on_drain)
                    || (instance.status == "ACTIVE" && !instance.connected));
            if self.status != EnvironmentStatus::Active {
                assert!(tasks.is_empty(), "deleted, yet {tasks:?} run");
            } else if instance.status == "ACTIVE" && instance.connected && in_group {
                eligible += 1;
                assert_eq!(tasks.len(), 1, "{instance:?} should have one task: {tasks:?}");
                let t = tasks[0];
                assert_eq!(
                    (t.td.as_str(), t.last, t.desired),
                    (revision.task_definition.as_str(), "RUNNING", "RUNNING"),
                    "{instance:?}"
                );
            } else if keeps {
                assert!(tasks.len() <= 1, "{instance:?} keeps at most one: {tasks:?}");
            } else {
                assert!(tasks.is_empty(), "{instance:?} should have no task: {tasks:?}");
            }
        }
        if self.status == EnvironmentStatus::Active {
            assert_eq!(plan.counts.desired, eligible);
            assert_eq!(plan.counts.running, eligible);
            assert_eq!(self.deployment().status, DeploymentStatus::Completed);
        }
        for arn in &self.stopped {
            let task = ecs.tasks.iter().find(|t| &t.arn == arn).unwrap();
            assert!(self.owns(task), "stopped someone else's task {task:?}");
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Join {
        prod: bool,
    },
    Leave(usize),
    Deregister(usize),
    /// The store drops an INACTIVE instance (ECS no longer lists it).
    Forget(usize),
    Drain(usize),
    Activate(usize),
    Disconnect(usize),
    Reconnect(usize),
    Fill(usize),
    Free(usize),
    Crash(usize),
    Progress(u64),
    Deliver {
        count: usize,
        seed: usize,
        duplicate: bool,
    },
    Reconcile,
    Pass(Option<Crash>),
    Deploy {
        prod_only: bool,
        stop_on_drain: bool,
        same_td: bool,
    },
    /// Someone else's task: our group with another startedBy, or a deployment's startedBy in
    /// another group.
    Foreign {
        instance: usize,
        our_group: bool,
    },
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0..64usize;
    prop_oneof![
        2 => any::<bool>().prop_map(|prod| Op::Join { prod }),
        1 => i.clone().prop_map(Op::Leave),
        1 => i.clone().prop_map(Op::Deregister),
        1 => i.clone().prop_map(Op::Forget),
        1 => i.clone().prop_map(Op::Drain),
        1 => i.clone().prop_map(Op::Activate),
        1 => i.clone().prop_map(Op::Disconnect),
        1 => i.clone().prop_map(Op::Reconnect),
        1 => i.clone().prop_map(Op::Fill),
        1 => i.clone().prop_map(Op::Free),
        2 => i.clone().prop_map(Op::Crash),
        3 => any::<u64>().prop_map(Op::Progress),
        4 => (1..6usize, any::<usize>(), any::<bool>())
            .prop_map(|(count, seed, duplicate)| Op::Deliver { count, seed, duplicate }),
        1 => Just(Op::Reconcile),
        6 => prop_oneof![
            6 => Just(None),
            1 => Just(Some(Crash::BeforeCall)),
            1 => Just(Some(Crash::AfterCall)),
        ]
        .prop_map(Op::Pass),
        1 => (any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(prod_only, stop_on_drain, same_td)| Op::Deploy { prod_only, stop_on_drain, same_td }),
        1 => (i.clone(), any::<bool>()).prop_map(|(instance, our_group)| Op::Foreign { instance, our_group }),
        2 => (0..40_000u64).prop_map(Op::Advance),
    ]
}

#[derive(Debug, Clone)]
struct Scenario {
    instances: Vec<bool>,
    prod_only: bool,
    stop_on_drain: bool,
    lossy_verify: bool,
    delete_at_end: bool,
    ops: Vec<Op>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(any::<bool>(), 0..6),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop::collection::vec(op(), 0..120),
    )
        .prop_map(
            |(instances, prod_only, stop_on_drain, lossy_verify, delete_at_end, ops)| Scenario {
                instances,
                prod_only,
                stop_on_drain,
                lossy_verify,
                delete_at_end,
                ops,
            },
        )
}

fn run(scenario: Scenario) {
    let mut ecs = Ecs::default();
    let mut view = View::default();
    let mut scheduler = Scheduler::new(scenario.prod_only, scenario.stop_on_drain, scenario.lossy_verify);
    let mut now = 1_000_000u64;
    for prod in &scenario.instances {
        ecs.join(*prod);
    }
    view.reconcile(&ecs);
    ecs.queue.clear();

    for (step, op) in scenario.ops.iter().enumerate() {
        let n = ecs.instances.len();
        let pick = |i: usize| (n > 0).then(|| i % n);
        match op.clone() {
            Op::Join { prod } => ecs.join(prod),
            Op::Leave(i) => pick(i).into_iter().for_each(|i| ecs.leave(i, false)),
            Op::Deregister(i) => pick(i).into_iter().for_each(|i| ecs.leave(i, true)),
            Op::Forget(i) => {
                if let Some(i) = pick(i)
                    && ecs.instances[i].status == "INACTIVE"
                {
                    view.instances.remove(&ecs.instances[i].arn);
                }
            }
            Op::Drain(i) | Op::Activate(i) => {
                let (from, to) = match op {
                    Op::Drain(_) => ("ACTIVE", "DRAINING"),
                    _ => ("DRAINING", "ACTIVE"),
                };
                if let Some(i) = pick(i)
                    && ecs.instances[i].status == from
                {
                    ecs.instances[i].status = to;
                    ecs.changed_instance(i);
                }
            }
            Op::Disconnect(i) | Op::Reconnect(i) => {
                let connected = matches!(op, Op::Reconnect(_));
                if let Some(i) = pick(i)
                    && ecs.instances[i].status != "INACTIVE"
                    && ecs.instances[i].connected != connected
                {
                    ecs.instances[i].connected = connected;
                    ecs.changed_instance(i);
                }
            }
            Op::Fill(i) => {
                if let Some(i) = pick(i) {
                    ecs.full.insert(ecs.instances[i].arn.clone());
                }
            }
            Op::Free(i) => {
                if let Some(i) = pick(i) {
                    ecs.full.remove(&ecs.instances[i].arn);
                }
            }
            Op::Crash(t) => {
                let live: Vec<usize> = (0..ecs.tasks.len())
                    .filter(|&t| ecs.tasks[t].occupying())
                    .collect();
                if !live.is_empty() {
                    let t = live[t % live.len()];
                    ecs.tasks[t].desired = "STOPPED";
                    ecs.tasks[t].last = "STOPPED";
                    ecs.changed_task(t);
                }
            }
            Op::Progress(bits) => ecs.progress(|t| bits >> (t % 64) & 1 == 1),
            Op::Deliver {
                count,
                seed,
                duplicate,
            } => {
                for k in 0..count {
                    if ecs.queue.is_empty() {
                        break;
                    }
                    let at = (seed.wrapping_add(k.wrapping_mul(7_919))) % ecs.queue.len();
                    let entity = if duplicate {
                        ecs.queue[at].clone()
                    } else {
                        ecs.queue.swap_remove(at)
                    };
                    view.apply(&entity);
                }
            }
            Op::Reconcile => view.reconcile(&ecs),
            Op::Pass(crash) => {
                now += 1_000;
                scheduler.pass(&mut ecs, &mut view, now, crash);
            }
            Op::Deploy {
                prod_only,
                stop_on_drain,
                same_td,
            } => scheduler.deploy(prod_only, stop_on_drain, same_td),
            Op::Foreign { instance, our_group } => {
                if let Some(i) = pick(instance) {
                    let arn = ecs.instances[i].arn.clone();
                    let (started_by, group) = if our_group {
                        ("someone".to_owned(), GROUP)
                    } else {
                        (scheduler.deployment().id.clone(), "service:web")
                    };
                    let td = scheduler.deployment().task_definition.clone();
                    // Refusals do not matter: someone else's start.
                    let _ = ecs.start(&arn, &td, &started_by, group);
                }
            }
            Op::Advance(ms) => now += ms,
        }
        if !scenario.lossy_verify {
            scheduler.assert_at_most_one_per_instance(&ecs, &format!("step {step}: {op:?}"));
        }
    }

    // Quiescence: no more churn, no more refusals, every event delivered.
    if scenario.delete_at_end {
        scheduler.status = EnvironmentStatus::Deleting {
            terminate_tasks: true,
        };
    }
    ecs.full.clear();
    let mut last = None;
    for _ in 0..40 {
        for entity in std::mem::take(&mut ecs.queue) {
            view.apply(&entity);
        }
        view.reconcile(&ecs);
        now += 20_000;
        let plan = scheduler.pass(&mut ecs, &mut view, now, None);
        if !scenario.lossy_verify {
            scheduler.assert_at_most_one_per_instance(&ecs, "a quiescent pass");
        }
        let complete = plan.complete;
        last = Some(plan);
        if complete {
            break;
        }
        ecs.progress(|_| true);
    }
    let plan = last.unwrap();
    assert!(plan.complete, "no convergence: {plan:?}");
    scheduler.assert_converged(&ecs, &plan);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn converges_and_never_doubles_up(scenario in scenario()) {
        run(scenario);
    }
}

/// The same input gives the same plan, whatever the order of its lists.
#[test]
fn plans_are_deterministic() {
    let mut ecs = Ecs::default();
    for k in 0..50 {
        ecs.join(k % 3 != 0);
    }
    let mut scheduler = Scheduler::new(true, false, false);
    let mut view = View::default();
    view.reconcile(&ecs);
    scheduler.pass(&mut ecs, &mut view, 1_000, None);
    ecs.progress(|t| t % 2 == 0);
    ecs.instances[3].status = "DRAINING";
    ecs.instances[4].status = "INACTIVE";
    ecs.full.insert("i05".into());
    scheduler.deploy(false, false, false);
    view.reconcile(&ecs);
    let first = scheduler.plan(&view, 2_000, false);
    for _ in 0..3 {
        assert_eq!(scheduler.plan(&view, 2_000, false), first);
        assert_eq!(scheduler.plan(&view, 2_000, true), first);
    }
    assert!(!first.starts.is_empty() && !first.stops.is_empty(), "{first:?}");
}

/// A full pass over 10,000 instances and 20 environments (200,000 tasks): one cluster view, twenty
/// plans. Timings are printed (`--nocapture`), not asserted: the point is that the work is linear.
#[test]
#[allow(clippy::disallowed_methods)] // a printout of elapsed time, nothing depends on it
fn a_full_pass_over_ten_thousand_instances_and_twenty_environments() {
    use std::time::Instant;

    for instances in [1_000usize, 10_000] {
        let environments = 20;
        let arn = |i: usize| format!("arn:aws:ecs:us-east-1:123456789012:container-instance/prod/{i:032x}");
        let attributes: Vec<Attribute> = (0..12)
            .map(|a| Attribute {
                name: format!("ecs.capability.feature-{a}"),
                value: (a % 2 == 0).then(|| "1".to_owned()),
            })
            .chain([Attribute {
                name: "stack".into(),
                value: Some("prod".into()),
            }])
            .collect();
        let instance_arns: Vec<String> = (0..instances).map(arn).collect();
        struct T {
            arn: String,
            instance: usize,
            started_by: String,
            group: String,
            td: String,
        }
        let mut tasks = Vec::new();
        for e in 0..environments {
            for i in 0..instances {
                tasks.push(T {
                    arn: format!("arn:aws:ecs:us-east-1:123456789012:task/prod/{e:02x}{i:030x}"),
                    instance: i,
                    started_by: format!("deployment-{e}"),
                    group: format!("blox:env-{e}"),
                    td: format!("arn:aws:ecs:us-east-1:123456789012:task-definition/env-{e}:1"),
                });
            }
        }
        let revisions: Vec<Revision> = (0..environments)
            .map(|e| Revision {
                environment: format!("env-{e}"),
                number: 1,
                token: "t".into(),
                task_definition: format!("arn:aws:ecs:us-east-1:123456789012:task-definition/env-{e}:1"),
                instance_group: InstanceGroup {
                    cluster_arn: "c".into(),
                    attributes: if e % 2 == 0 {
                        vec![]
                    } else {
                        vec![Attribute {
                            name: "stack".into(),
                            value: Some("prod".into()),
                        }]
                    },
                },
                deployment: DeploymentConfiguration::default(),
                created_at: 0,
            })
            .collect();
        let deployments: Vec<Deployment> = revisions
            .iter()
            .enumerate()
            .map(|(e, r)| Deployment {
                status: DeploymentStatus::Completed,
                ..Deployment::new(
                    format!("deployment-{e}"),
                    r.environment.clone(),
                    1,
                    r.task_definition.clone(),
                    0,
                )
            })
            .collect();

        let started = Instant::now();
        let cluster = ClusterView::new(
            instance_arns.iter().map(|arn| InstanceView {
                arn,
                status: "ACTIVE",
                agent_connected: true,
                attributes: &attributes,
            }),
            tasks.iter().map(|t| TaskView {
                arn: &t.arn,
                container_instance_arn: Some(&instance_arns[t.instance]),
                started_by: Some(&t.started_by),
                group: Some(&t.group),
                task_definition_arn: &t.td,
                last_status: "RUNNING",
                desired_status: "RUNNING",
            }),
        );
        let indexed = started.elapsed();
        let mut plans = Vec::new();
        for (revision, deployment) in revisions.iter().zip(&deployments) {
            let ids = [deployment.id.clone()];
            let input = PlanInput {
                environment: &revision.environment,
                status: EnvironmentStatus::Active,
                target: Target::new(revision, deployment),
                deployment_ids: &ids,
                cluster: &cluster,
                intents: &[],
                failed: &[],
                intent_ttl_ms: DEFAULT_INTENT_TTL_MS,
            };
            plans.push(daemon::plan(&input, 0));
        }
        let total = started.elapsed();
        println!(
            "{instances} instances × {environments} environments: view {indexed:?}, view + plans {total:?}"
        );
        for plan in plans {
            assert!(plan.complete, "{:?}", plan.counts);
            assert_eq!(plan.counts.running, instances as u64);
        }
    }
}
