//! The planner, case by case. Each family is a table of cases: a fleet written in a small notation, the
//! environment's settings, and what the plan must say (a few keys of [`summary`]).
//!
//! The fleet notation: instances separated by spaces, each `NAME[MARKS]:TASKS`.
//! - MARKS: `!` agent disconnected, `~` DRAINING, `-` not in the instance group, `#` INACTIVE,
//!   `?` REGISTERING, `*` not in the view at all (only its tasks are).
//! - TASKS, comma-separated, each a version letter and a state:
//!   - versions: `n` the target (deployment d3, td:3, revision 3), `o` the previous one (d2, td:2),
//!     `z` an older one (d1, td:1), `a` an earlier deployment's task of the target's task definition
//!     (d2, td:3), `f` someone else's task in the environment's group (startedBy "someone"), `g` the
//!     target's deployment id in another group (`blox:api`).
//!   - states: `` RUNNING and HEALTHY for ten minutes; `r` RUNNING for 10 s, health unknown; `h`
//!     RUNNING, HEALTHY for 10 s; `p` PENDING; `u` RUNNING and UNHEALTHY; `s` asked to stop, still
//!     RUNNING; `x` STOPPED without ever running (a failed start); `c` STOPPED after running 15 s; `l`
//!     STOPPED after ten minutes healthy (its last health UNKNOWN); `b` STOPPED by blox before running.
//!
//! Task ARNs are `INSTANCE.K`, K its position in the list. Times in the summary are relative to now.

mod common;

use std::collections::BTreeMap;

use blox_model::ClusterName;
use blox_model::daemon::{
    self, Active, Canary, ClusterView, Counts, Deployment, DeploymentConfiguration, DeploymentMethod,
    DeploymentStatus, Environment, EnvironmentStatus, InstanceFailure, InstanceGroup, IntentState, Plan,
    PlanInput, Revision, StartIntent,
};
use common::{TaskSpec, attribute, container_instance};

const NOW: u64 = 10_000_000;
const LONG_AGO: u64 = NOW - 600_000;
const ENV: &str = "web";
const TTR: DeploymentMethod = DeploymentMethod::TerminateThenReplace;
const RTT: DeploymentMethod = DeploymentMethod::ReplaceThenTerminate;

#[derive(Debug, Clone)]
struct Setup {
    fleet: String,
    method: DeploymentMethod,
    min_healthy: u8,
    max_over: u8,
    bake_s: u64,
    stop_on_drain: bool,
    /// Task definitions with container health checks.
    checked: Vec<&'static str>,
    /// (instance, deployment, verify at)
    intents: Vec<(String, &'static str, u64)>,
    /// (instance, attempts, retry at, tasks counted)
    failures: Vec<(String, u64, u64, Vec<&'static str>)>,
    status: DeploymentStatus,
    frozen: bool,
    env_status: EnvironmentStatus,
    deployed: bool,
    /// The instance group as a cluster query instead of the attribute `stack=prod`.
    group_query: Option<&'static str>,
    /// The revision's canary (instances), and the set its deployment recorded.
    canary: Option<Canary>,
    canary_recorded: Option<Vec<&'static str>>,
    promoted: bool,
    /// When the deployment was created, relative to now.
    created: i64,
}

fn fleet(spec: &str) -> Setup {
    Setup {
        fleet: spec.to_owned(),
        method: TTR,
        min_healthy: 90,
        max_over: 10,
        bake_s: 0,
        stop_on_drain: false,
        checked: Vec::new(),
        intents: Vec::new(),
        failures: Vec::new(),
        status: DeploymentStatus::Running,
        frozen: false,
        env_status: EnvironmentStatus::Active,
        deployed: true,
        group_query: None,
        canary: None,
        canary_recorded: None,
        promoted: false,
        created: -600_000,
    }
}

impl Setup {
    fn ttr(mut self, min_healthy: u8) -> Self {
        self.method = TTR;
        self.min_healthy = min_healthy;
        self
    }
    fn rtt(mut self, max_over: u8) -> Self {
        self.method = RTT;
        self.max_over = max_over;
        self
    }
    fn bake(mut self, seconds: u64) -> Self {
        self.bake_s = seconds;
        self
    }
    fn stop_on_drain(mut self) -> Self {
        self.stop_on_drain = true;
        self
    }
    /// Every task definition has container health checks.
    fn checks(mut self) -> Self {
        self.checked = vec!["td:1", "td:2", "td:3"];
        self
    }
    /// Only the target's task definition has container health checks.
    fn target_checks(mut self) -> Self {
        self.checked = vec!["td:3"];
        self
    }
    fn intent(mut self, instance: &str, deployment: &'static str, verify_in: i64) -> Self {
        self.intents
            .push((instance.to_owned(), deployment, at(verify_in)));
        self
    }
    fn failure(mut self, instance: &str, attempts: u64, retry_in: i64, tasks: &[&'static str]) -> Self {
        self.failures
            .push((instance.to_owned(), attempts, at(retry_in), tasks.to_vec()));
        self
    }
    fn status(mut self, status: DeploymentStatus) -> Self {
        self.status = status;
        self
    }
    fn frozen(mut self) -> Self {
        self.frozen = true;
        self
    }
    fn deleting(mut self) -> Self {
        self.env_status = EnvironmentStatus::Deleting {
            terminate_tasks: true,
        };
        self
    }
    fn undeployed(mut self) -> Self {
        self.deployed = false;
        self
    }
    fn group_query(mut self, query: &'static str) -> Self {
        self.group_query = Some(query);
        self
    }
    fn canary(mut self, instances: u64) -> Self {
        self.canary = Some(Canary {
            instances: Some(instances),
            percent: None,
            query: None,
            auto_promote: false,
        });
        self
    }
    fn canary_query(mut self, query: &'static str) -> Self {
        self.canary = Some(Canary {
            instances: None,
            percent: None,
            query: Some(query.parse().expect("a valid query")),
            auto_promote: false,
        });
        self
    }
    fn recorded(mut self, instances: &[&'static str]) -> Self {
        self.canary_recorded = Some(instances.to_vec());
        self
    }
    fn promoted(mut self) -> Self {
        self.promoted = true;
        self
    }
    fn created(mut self, relative_ms: i64) -> Self {
        self.created = relative_ms;
        self
    }
}

fn at(relative: i64) -> u64 {
    NOW.checked_add_signed(relative).unwrap()
}

fn rel(t: u64) -> String {
    format!("{:+}", t as i64 - NOW as i64)
}

/// `count` instances `iFROM..` each with `tasks`, e.g. `seq(2..=12, "o")`.
fn seq(range: std::ops::RangeInclusive<usize>, tasks: &str) -> String {
    range
        .map(|i| format!("i{i:02}:{tasks}"))
        .collect::<Vec<_>>()
        .join(" ")
}

struct Version {
    deployment: &'static str,
    group: &'static str,
    task_definition: &'static str,
}

fn version(letter: char) -> Version {
    let (deployment, group, task_definition) = match letter {
        'n' => ("d3", "blox:web", "td:3"),
        'o' => ("d2", "blox:web", "td:2"),
        'z' => ("d1", "blox:web", "td:1"),
        'a' => ("d2", "blox:web", "td:3"),
        'f' => ("someone", "blox:web", "td:3"),
        'g' => ("d3", "blox:api", "td:3"),
        other => panic!("unknown version letter {other:?}"),
    };
    Version {
        deployment,
        group,
        task_definition,
    }
}

/// The observations of one task, oldest first.
fn observations<'a>(arn: &'a str, instance: &'a str, code: &str) -> Vec<TaskSpec<'a>> {
    let mut chars = code.chars();
    let v = version(chars.next().unwrap());
    let state: String = chars.collect();
    let base = TaskSpec {
        arn,
        instance,
        group: v.group,
        started_by: v.deployment,
        task_definition: v.task_definition,
        last_status: "RUNNING",
        desired_status: "RUNNING",
        health: Some("HEALTHY"),
        started_at: Some(LONG_AGO),
        stopped_at: None,
        stopped_reason: None,
        updated_at: Some(LONG_AGO),
    };
    let stopped = |reason, started_at, health| TaskSpec {
        last_status: "STOPPED",
        desired_status: "STOPPED",
        health,
        started_at,
        stopped_at: Some(NOW - 5_000),
        stopped_reason: Some(reason),
        updated_at: Some(NOW - 5_000),
        ..base.clone()
    };
    match state.as_str() {
        "" => vec![base],
        "r" => vec![TaskSpec {
            health: Some("UNKNOWN"),
            started_at: Some(NOW - 10_000),
            updated_at: Some(NOW - 10_000),
            ..base
        }],
        "h" => vec![TaskSpec {
            started_at: Some(NOW - 20_000),
            updated_at: Some(NOW - 10_000),
            ..base
        }],
        "p" => vec![TaskSpec {
            last_status: "PENDING",
            health: None,
            started_at: None,
            updated_at: Some(NOW - 5_000),
            ..base
        }],
        "u" => vec![TaskSpec {
            health: Some("UNHEALTHY"),
            ..base
        }],
        "s" => vec![TaskSpec {
            desired_status: "STOPPED",
            updated_at: Some(NOW - 1_000),
            ..base
        }],
        "x" => vec![stopped(
            "CannotPullContainerError: pull access denied",
            None,
            None,
        )],
        "c" => vec![
            TaskSpec {
                health: Some("UNKNOWN"),
                started_at: Some(NOW - 20_000),
                updated_at: Some(NOW - 20_000),
                ..base.clone()
            },
            stopped(
                "Essential container in task exited",
                Some(NOW - 20_000),
                Some("UNKNOWN"),
            ),
        ],
        // Only the final record of a task that ran (a view loaded after it stopped).
        "f" => vec![stopped(
            "Essential container in task exited",
            Some(NOW - 20_000),
            Some("UNKNOWN"),
        )],
        "l" => vec![
            base.clone(),
            stopped(
                "Essential container in task exited",
                Some(LONG_AGO),
                Some("UNKNOWN"),
            ),
        ],
        "b" => vec![stopped("blox: replaced by revision 3", None, None)],
        other => panic!("unknown task state {other:?}"),
    }
}

struct InstanceSpec {
    name: String,
    status: &'static str,
    connected: bool,
    in_group: bool,
    in_view: bool,
    tasks: Vec<String>,
}

fn parse_fleet(spec: &str) -> Vec<InstanceSpec> {
    spec.split_whitespace()
        .map(|token| {
            let (head, tasks) = token.split_once(':').unwrap_or((token, ""));
            let name: String = head.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            let marks = &head[name.len()..];
            let status = if marks.contains('~') {
                "DRAINING"
            } else if marks.contains('#') {
                "INACTIVE"
            } else if marks.contains('?') {
                "REGISTERING"
            } else {
                "ACTIVE"
            };
            InstanceSpec {
                name,
                status,
                connected: !marks.contains('!') && status != "INACTIVE",
                in_group: !marks.contains('-'),
                in_view: !marks.contains('*'),
                tasks: tasks
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect(),
            }
        })
        .collect()
}

fn revision(number: u64, setup: &Setup) -> Revision {
    Revision {
        environment: ENV.to_owned(),
        number,
        token: format!("token-{number}"),
        task_definition: format!("td:{number}"),
        health_checks: setup.checked.contains(&format!("td:{number}").as_str()),
        instance_group: match setup.group_query {
            None => InstanceGroup {
                cluster_arn: common::CLUSTER_ARN.to_owned(),
                attributes: vec![attribute("stack", Some("prod"))],
                query: None,
            },
            Some(query) => InstanceGroup {
                cluster_arn: common::CLUSTER_ARN.to_owned(),
                attributes: Vec::new(),
                query: Some(query.parse().expect("a valid query")),
            },
        },
        deployment_method: setup.method,
        deployment_configuration: DeploymentConfiguration {
            min_healthy_percent: setup.min_healthy,
            max_over_percent: setup.max_over,
            min_healthy_seconds: setup.bake_s,
            stop_on_drain: setup.stop_on_drain,
            canary: setup.canary.clone(),
            ..DeploymentConfiguration::default()
        },
        created_at: 0,
    }
}

fn deployment(number: u64, setup: &Setup) -> Deployment {
    Deployment {
        id: format!("d{number}"),
        environment: ENV.to_owned(),
        revision: number,
        task_definition: format!("td:{number}"),
        previous_revision: None,
        status: setup.status,
        rollback: false,
        rollback_of: None,
        rolled_back_by: None,
        superseded_by: None,
        created_at: at(setup.created),
        started_at: None,
        ended_at: None,
        counts: Counts::default(),
        failed_attempts: 0,
        history: Vec::new(),
        canary_instances: setup
            .canary_recorded
            .as_ref()
            .map(|set| set.iter().map(|i| (*i).to_owned()).collect()),
        promoted_at: setup.promoted.then_some(NOW - 1_000),
    }
}

/// The plan of a setup; `reversed` feeds the view, intents and failures in the opposite order.
fn run(setup: &Setup, reversed: bool) -> Plan {
    let environment = Environment {
        name: ENV.to_owned(),
        cluster: ClusterName::new("prod").unwrap(),
        cluster_arn: common::CLUSTER_ARN.to_owned(),
        latest_revision: 3,
        active_deployment: setup.deployed.then(|| "d3".to_owned()),
        status: setup.env_status,
        frozen: setup.frozen,
        created_at: 0,
        updated_at: 0,
    };
    let target = revision(3, setup);
    let active = deployment(3, setup);
    let instances = parse_fleet(&setup.fleet);
    let mut cluster = ClusterView::default();
    let mut order: Vec<&InstanceSpec> = instances.iter().collect();
    if reversed {
        order.reverse();
    }
    for i in order.iter().filter(|i| i.in_view) {
        let stack = if i.in_group { "prod" } else { "dev" };
        let attributes = vec![
            attribute("stack", Some(stack)),
            attribute("ecs.os-type", Some("linux")),
        ];
        cluster.upsert_instance(&container_instance(&i.name, i.status, i.connected, attributes));
    }
    let arns: Vec<(String, String, String)> = order
        .iter()
        .flat_map(|i| {
            i.tasks
                .iter()
                .enumerate()
                .map(|(k, code)| (format!("{}.{k}", i.name), i.name.clone(), code.clone()))
        })
        .collect();
    for (arn, instance, code) in &arns {
        for (k, spec) in observations(arn, instance, code).iter().enumerate() {
            cluster.upsert_task(&spec.entity(), NOW - 1_000 + k as u64);
        }
    }
    let intents: Vec<StartIntent> = setup
        .intents
        .iter()
        .map(|(instance, deployment, _)| StartIntent {
            environment: ENV.to_owned(),
            deployment_id: (*deployment).to_owned(),
            instance_arn: instance.clone(),
            recorded_at_ms: NOW - 1_000,
        })
        .collect();
    let mut intent_states: Vec<IntentState<'_>> = intents
        .iter()
        .zip(&setup.intents)
        .map(|(intent, (_, _, verify_at_ms))| IntentState {
            intent,
            verify_at_ms: *verify_at_ms,
        })
        .collect();
    let mut failures: Vec<InstanceFailure> = setup
        .failures
        .iter()
        .map(|(instance, attempts, retry_at_ms, tasks)| InstanceFailure {
            environment: ENV.to_owned(),
            deployment_id: "d3".to_owned(),
            instance_arn: instance.clone(),
            reason: "RESOURCE:MEMORY".to_owned(),
            attempts: *attempts,
            last_at_ms: NOW - 10_000,
            retry_at_ms: *retry_at_ms,
            tasks: tasks.iter().map(|t| (*t).to_owned()).collect(),
        })
        .collect();
    if reversed {
        intent_states.reverse();
        failures.reverse();
    }
    let failure_refs: Vec<&InstanceFailure> = failures.iter().collect();
    let input = PlanInput {
        environment: &environment,
        active: setup.deployed.then_some(Active {
            deployment: &active,
            revision: &target,
        }),
        deployment_ids: &["d1", "d2", "d3"],
        health_checked: &setup.checked,
        cluster: &cluster,
        intents: &intent_states,
        failures: &failure_refs,
        now_ms: NOW,
    };
    daemon::plan(&input)
}

fn summary(plan: &Plan) -> BTreeMap<&'static str, String> {
    let join = |items: Vec<String>| items.join(" ");
    let yes = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let f = plan.fleet;
    let c = plan.counts;
    BTreeMap::from([
        ("starts", join(plan.starts.clone())),
        (
            "stops",
            join(
                plan.stops
                    .iter()
                    .map(|s| format!("{}:{}", s.task_arn, s.reason.code()))
                    .collect(),
            ),
        ),
        (
            "verify",
            join(
                plan.verify
                    .iter()
                    .map(|i| format!("{}@{}", i.instance_arn, i.deployment_id))
                    .collect(),
            ),
        ),
        (
            "settled",
            join(
                plan.settled
                    .iter()
                    .map(|i| format!("{}@{}", i.instance_arn, i.deployment_id))
                    .collect(),
            ),
        ),
        (
            "failed",
            join(plan.failed_tasks.iter().map(|t| t.task_arn.clone()).collect()),
        ),
        (
            "waiting",
            join(
                plan.waiting
                    .iter()
                    .map(|(i, t)| format!("{i}@{}", rel(*t)))
                    .collect(),
            ),
        ),
        ("due", plan.next_due_ms.map_or("-".to_owned(), rel)),
        ("eligible", f.eligible.to_string()),
        ("healthy", f.healthy.to_string()),
        ("floor", f.floor.to_string()),
        ("outdated", f.outdated.to_string()),
        ("failing", f.failing.to_string()),
        ("surged", f.surged.to_string()),
        ("surge", f.surge.to_string()),
        ("desired", c.desired.to_string()),
        ("target_healthy", c.healthy.to_string()),
        ("total", c.total.to_string()),
        ("attempts", plan.failed_attempts.to_string()),
        ("example", plan.failure_example.clone().unwrap_or_default()),
        ("complete", yes(plan.complete)),
        ("acting", yes(plan.acting)),
        ("held", f.held.to_string()),
        (
            "canary",
            plan.canary.as_ref().map_or("-".to_owned(), |c| {
                format!(
                    "{}{}{}",
                    c.instances.join(","),
                    if c.recorded { "" } else { " (picked)" },
                    if c.complete { " complete" } else { "" }
                )
            }),
        ),
        (
            "uncovered",
            join(
                plan.uncovered
                    .iter()
                    .map(|u| format!("{}@{}", u.instance_arn, rel(u.since_ms)))
                    .collect(),
            ),
        ),
    ])
}

struct Case {
    name: &'static str,
    setup: Setup,
    /// `key=value` pairs of [`summary`], separated by `;`.
    expect: &'static str,
}

fn case(name: &'static str, setup: Setup, expect: &'static str) -> Case {
    Case { name, setup, expect }
}

/// Runs every case of a family and reports every mismatch at once.
fn check(cases: Vec<Case>) {
    let mut errors = Vec::new();
    for Case { name, setup, expect } in &cases {
        let plan = run(setup, false);
        if plan != run(setup, true) {
            errors.push(format!("{name}: the order of the input changes the plan"));
        }
        if setup.group_query.is_none() {
            let as_query = setup.clone().group_query("attribute:stack == prod");
            if plan != run(&as_query, false) {
                errors.push(format!("{name}: the group as a query plans otherwise"));
            }
        }
        // Every stop carries the prefix that keeps it from being taken for a failed start.
        for stop in &plan.stops {
            assert!(stop.reason.to_string().starts_with(daemon::STOP_REASON_PREFIX));
        }
        let got = summary(&plan);
        for e in expect.split(';').map(str::trim) {
            let (key, want) = e
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}: bad expectation {e}"));
            match got.get(key) {
                Some(have) if have == want => {}
                Some(have) => errors.push(format!("{name}: {key} is {have:?}, want {want:?}")),
                None => errors.push(format!("{name}: no key {key}")),
            }
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {} cases failed:\n{}",
        errors.len(),
        cases.len(),
        errors.join("\n")
    );
}

#[test]
fn classification() {
    check(vec![
        case(
            "every instance on the target, healthy: complete",
            fleet("A:n B:n C:n"),
            "starts=; stops=; eligible=3; healthy=3; target_healthy=3; desired=3; total=3; outdated=0; complete=yes; acting=yes",
        ),
        case(
            "an empty fleet is complete",
            fleet(""),
            "eligible=0; floor=0; surge=0; complete=yes",
        ),
        case(
            "a new instance gets a start",
            fleet("A:n B:"),
            "starts=B; complete=no; healthy=1",
        ),
        case(
            "draining instances keep their daemon and get none",
            fleet("A:n B~:o C~:"),
            "starts=; stops=; eligible=1; complete=yes",
        ),
        case(
            "draining with stopOnDrain: evicted",
            fleet("A:n B~:o").stop_on_drain(),
            "stops=B.0:drained; complete=no",
        ),
        case(
            "agent disconnected: kept, nothing started",
            fleet("A:n B!:o C!:"),
            "starts=; stops=; eligible=1; complete=yes",
        ),
        case(
            "not in the instance group: evicted until its task has stopped",
            fleet("A:n B-:n"),
            "stops=B.0:not-in-group; eligible=1; total=2; complete=no",
        ),
        case(
            "INACTIVE: evicted",
            fleet("A:n B#:o"),
            "stops=B.0:instance-gone; eligible=1",
        ),
        case(
            "REGISTERING: not eligible",
            fleet("A:n B?:"),
            "starts=; eligible=1; complete=yes",
        ),
        case(
            "draining and not in the group: evicted",
            fleet("B~-:o"),
            "stops=B.0:not-in-group",
        ),
        case(
            "disconnected and not in the group: evicted",
            fleet("B!-:o"),
            "stops=B.0:not-in-group; eligible=0",
        ),
        case(
            "an evicted instance whose task is stopping holds completion up, no second stop",
            fleet("A:n B-:ns"),
            "stops=; complete=no",
        ),
        case(
            "two target tasks on an instance: the healthy one is kept",
            fleet("A:np,n"),
            "stops=A.0:duplicate; healthy=1; complete=no",
        ),
        case(
            "two equal target tasks: the greatest ARN is kept",
            fleet("A:n,n"),
            "stops=A.0:duplicate; target_healthy=1",
        ),
        case(
            "two tasks on a draining instance: one kept",
            fleet("B~:o,np"),
            "stops=B.1:duplicate; complete=no",
        ),
        case(
            "a draining instance with one task still stopping is not held up",
            fleet("A:n B~:o,os"),
            "stops=; complete=yes",
        ),
        case(
            "someone else's tasks are never touched, another group is not the environment's",
            fleet("A:n,f B:g C-:f"),
            "stops=; starts=B; total=1",
        ),
        case(
            "a task still stopping blocks the start",
            fleet("A:ns B:os"),
            "starts=; stops=; healthy=0; complete=no",
        ),
        case("a stopped task does not", fleet("A:ob B:nx C:nl"), "starts=A C"),
        case(
            "an earlier deployment's task of the target's task definition is the target",
            fleet("A:a"),
            "target_healthy=1; total=1; complete=yes; stops=",
        ),
        case(
            "an outdated task beside a healthy target task is stopped",
            fleet("A:o,n B:z,n"),
            "stops=A.0:replaced B.0:replaced; healthy=2; target_healthy=2; complete=no",
        ),
        case(
            "two outdated versions: the healthy one is kept until replaced",
            fleet("A:zp,o B:z,o").ttr(0),
            "stops=A.0:duplicate A.1:replaced B.0:duplicate B.1:replaced; outdated=2",
        ),
        case(
            "an outdated task beside a target task still starting waits",
            fleet("A:o,np").ttr(0),
            "stops=; starts=; healthy=1; target_healthy=0; outdated=1; complete=no",
        ),
        case(
            "the counts of the target: desired are the eligible ones, total the live ones anywhere",
            fleet("A:n B:np C~:n D-:n E:o F:nx"),
            "desired=4; target_healthy=1; total=4; eligible=4; healthy=2",
        ),
    ]);
}

#[test]
fn instance_group_by_query() {
    check(vec![
        case(
            "an instance with a task of another group is left out by task:group",
            fleet("A:n B:g C:").group_query("attribute:stack == prod and not(task:group == blox:api)"),
            "starts=C; stops=; eligible=2",
        ),
        case(
            "!= on an attribute every instance has",
            fleet("A:n B-:").group_query("attribute:stack != prod"),
            "starts=B; stops=A.0:not-in-group; eligible=1",
        ),
        case(
            "exists takes every instance with the attribute",
            fleet("A:n B-:").group_query("attribute:stack exists"),
            "starts=B; stops=; eligible=2",
        ),
        case(
            "an attribute no instance has",
            fleet("A:n B:").group_query("attribute:gpu exists"),
            "starts=; stops=A.0:not-in-group; eligible=0",
        ),
        case(
            "agentConnected in the query: a disconnected instance is out of the group, not kept",
            fleet("A:n B!:o").group_query("agentConnected == true"),
            "stops=B.0:not-in-group; eligible=1",
        ),
    ]);
}

#[test]
fn canaries() {
    check(vec![
        case(
            "the first pass picks the canary and waits for it to be recorded",
            fleet("A:o B:o C:o D:o E:").canary(2).ttr(0),
            "canary=A,B (picked); acting=no; starts=; stops=; held=3; desired=2; complete=no",
        ),
        case(
            "instances already on the revision are picked first",
            fleet("A:o B:o C:n D:o E:").canary(2),
            "canary=A,C (picked)",
        ),
        case(
            "a query picks every eligible instance it matches",
            fleet("A:o B-:o C:o D-:")
                .group_query("attribute:stack exists")
                .canary_query("attribute:stack == dev"),
            "canary=B,D (picked)",
        ),
        case(
            "recorded: only the canary is replaced, nothing starts elsewhere",
            fleet("A:o B:o C:o D:o E:").canary(2).recorded(&["A", "B"]).ttr(0),
            "canary=A,B; acting=yes; stops=A.0:replaced B.0:replaced; starts=; held=3; desired=2; complete=no",
        ),
        case(
            "the canary is under the method's floor over the whole fleet",
            fleet("A:o B:o C:o D:o E:o")
                .canary(2)
                .recorded(&["A", "B"])
                .ttr(80),
            "stops=A.0:replaced; floor=4; healthy=5",
        ),
        case(
            "a healthy canary is complete; the deployment is not",
            fleet("A:n B:n C:o D:o E:").canary(2).recorded(&["A", "B"]),
            "canary=A,B complete; starts=; stops=; complete=no; target_healthy=2",
        ),
        case(
            "a canary instance that left the cluster shrinks the canary",
            fleet("A:n C:o D:o").canary(2).recorded(&["A", "B"]),
            "canary=A,B complete; held=2",
        ),
        case(
            "promoted: the rest is rolled out",
            fleet("A:n B:n C:o D:o E:")
                .canary(2)
                .recorded(&["A", "B"])
                .promoted()
                .ttr(0),
            "canary=-; starts=E; stops=C.0:replaced D.0:replaced; held=0",
        ),
        case(
            "a crashed canary is restarted while awaiting promotion",
            fleet("A:n B: C:o")
                .canary(2)
                .recorded(&["A", "B"])
                .status(DeploymentStatus::AwaitingPromotion),
            "starts=B; acting=yes",
        ),
    ]);
}

#[test]
fn coverage() {
    check(vec![
        case(
            "an instance without the daemon past the grace is uncovered",
            fleet("A:n B: C:o"),
            "uncovered=B@-600000",
        ),
        case(
            "an old healthy daemon covers while the deployment is in progress, not after",
            fleet("A:n C:o").status(DeploymentStatus::Stopped),
            "uncovered=C@-600000",
        ),
        case(
            "within the grace: not yet",
            fleet("A:n B:").created(-30_000),
            "uncovered=",
        ),
        case(
            "an unhealthy task of the revision does not cover",
            fleet("A:nu B:n").checks(),
            "uncovered=A@-600000",
        ),
        case(
            "instances the canary holds back are not expected to run it yet",
            fleet("A:n B: C:").canary(1).recorded(&["A"]),
            "uncovered=",
        ),
        case(
            "outside the group, draining or disconnected: not counted",
            fleet("A:n B-: C~: D!:"),
            "uncovered=",
        ),
    ]);
}

#[test]
fn terminate_then_replace() {
    let twelve_old = seq(1..=12, "o");
    check(vec![
        case(
            "12 at 90%: floor 11, one healthy daemon stopped at a time",
            fleet(&twelve_old),
            "floor=11; healthy=12; outdated=12; stops=i01.0:replaced; starts=",
        ),
        case(
            "12 at 90%, one already without a daemon: it gets one, nothing is stopped",
            fleet(&format!("i01: {}", seq(2..=12, "o"))),
            "healthy=11; starts=i01; stops=",
        ),
        case(
            "12 at 90%, the old task stopping: wait",
            fleet(&format!("i01:os {}", seq(2..=12, "o"))),
            "starts=; stops=; healthy=11",
        ),
        case(
            "12 at 90%, the replacement not healthy yet: no further stop",
            fleet(&format!("i01:np {}", seq(2..=12, "o"))),
            "starts=; stops=; healthy=11; outdated=11",
        ),
        case(
            "12 at 90%, the replacement healthy: the next one",
            fleet(&format!("i01:n {}", seq(2..=12, "o"))),
            "stops=i02.0:replaced; healthy=12; target_healthy=1",
        ),
        case(
            "12 at 90%, a new instance joins: it goes first and takes the budget",
            fleet(&format!("{} i13:", twelve_old)),
            "eligible=13; floor=12; healthy=12; starts=i13; stops=",
        ),
        case(
            "unhealthy outdated daemons are replaced whatever the budget",
            fleet(&format!("i01:ou i02:op {}", seq(3..=12, "o"))).checks(),
            "healthy=10; floor=11; stops=i01.0:replaced i02.0:replaced",
        ),
        case(
            "below the floor by something else: only starts",
            fleet(&format!("i01: i02:nx i03: {}", seq(4..=12, "o"))),
            "healthy=9; starts=i01 i03; stops=; failed=i02.0",
        ),
        case(
            "minHealthyPercent 0: every outdated daemon at once",
            fleet("A:o B:o C:o").ttr(0),
            "floor=0; stops=A.0:replaced B.0:replaced C.0:replaced",
        ),
        case(
            "minHealthyPercent 50 of 4: two at a time",
            fleet("A:o B:o C:o D:o").ttr(50),
            "floor=2; stops=A.0:replaced B.0:replaced",
        ),
        case(
            "minHealthyPercent 50 of 4, one replacement starting: one more",
            fleet("A:np B:o C:o D:o").ttr(50),
            "healthy=3; stops=B.0:replaced",
        ),
        case(
            "a failed start whose back-off is over is retried, before any replacement",
            fleet(&format!("i01: {}", seq(2..=12, "o"))).failure("i01", 1, -1, &[]),
            "starts=i01; failing=1; stops=; attempts=1",
        ),
        case(
            "an instance in back-off is skipped, and the budget stays spent",
            fleet(&format!("i01: {}", seq(2..=12, "o"))).failure("i01", 2, 5_000, &[]),
            "starts=; stops=; waiting=i01@+5000; failing=1",
        ),
        case(
            "never a start beside an old task",
            fleet("A:o B:ou").ttr(0),
            "starts=; stops=A.0:replaced B.0:replaced",
        ),
        // The floor rounds up, but below 100% never to the whole fleet: 90% of 9 would be 9, and
        // nothing could ever be replaced.
        case(
            "90% of 9: one instance at a time all the same",
            fleet(&seq(1..=9, "o")),
            "floor=8; stops=i01.0:replaced; starts=; complete=no",
        ),
        case(
            "100% of 12: nothing moves",
            fleet(&twelve_old).ttr(100),
            "floor=12; stops=",
        ),
        case(
            "old daemons on draining instances are kept, not replaced",
            fleet("A:n B~:o C!:o").ttr(0),
            "stops=; eligible=1; complete=yes",
        ),
    ]);
}

#[test]
fn replace_then_terminate() {
    let twelve_old = seq(1..=12, "o");
    check(vec![
        case(
            "12 at 10%: two started beside the old ones",
            fleet(&twelve_old).rtt(10),
            "surge=2; surged=0; starts=i01 i02; stops=; healthy=12",
        ),
        case(
            "one starting beside its old task: one more",
            fleet(&format!("i01:o,np {}", seq(2..=12, "o"))).rtt(10),
            "surged=1; starts=i02; stops=; healthy=12; outdated=12",
        ),
        case(
            "two starting: none",
            fleet(&format!("i01:o,np i02:o,nr {}", seq(3..=12, "o")))
                .rtt(10)
                .target_checks(),
            "surged=2; starts=; stops=",
        ),
        case(
            "the new task healthy: the old one stops, and holds its slot until it has stopped",
            fleet(&format!("i01:o,n {}", seq(2..=12, "o"))).rtt(10),
            "stops=i01.0:replaced; surged=1; starts=i02; target_healthy=1",
        ),
        case(
            "the old task stopping beside the healthy new one: still surged",
            fleet(&format!("i01:os,n {}", seq(2..=12, "o"))).rtt(10),
            "stops=; surged=1; starts=i02",
        ),
        case(
            "a start in flight beside an old task counts as surged",
            fleet(&twelve_old).rtt(10).intent("i01", "d3", 5_000),
            "surged=1; starts=i02; verify=",
        ),
        case(
            "an earlier deployment's start in flight beside the target's task holds a slot",
            fleet(&twelve_old.replacen("i01:o", "i01:n", 1))
                .rtt(10)
                .intent("i01", "d2", 5_000),
            "surged=1; starts=i02; complete=no",
        ),
        case(
            "a duplicate of the target still stopping holds a slot",
            fleet(&twelve_old.replacen("i01:o", "i01:n,ns", 1)).rtt(10),
            "surged=1; starts=i02; stops=; complete=no",
        ),
        case(
            "two old tasks still stopping on an instance hold a slot",
            fleet(&twelve_old.replacen("i01:o", "i01:os,zs", 1)).rtt(10),
            "surged=1; starts=i02; stops=",
        ),
        case(
            "a task still stopping and a start in flight hold a slot",
            fleet(&twelve_old.replacen("i01:o", "i01:os", 1))
                .rtt(10)
                .intent("i01", "d3", 5_000),
            "surged=1; starts=i02",
        ),
        case(
            "new instances are not limited by the surge, and go first",
            fleet(&format!("{twelve_old} i13: i14: i15:")).rtt(10),
            "surge=2; starts=i13 i14 i15 i01 i02",
        ),
        case(
            "a new task that failed leaves the old one running, in back-off",
            fleet(&format!("i01:o,nx {}", seq(2..=12, "o"))).rtt(10),
            "failed=i01.1; starts=i02 i03; stops=; healthy=12; attempts=1",
        ),
        case(
            "never a start beside a task still stopping (a crashed replacement)",
            fleet(&format!("i01:o,ns {}", seq(2..=12, "o"))).rtt(10),
            "starts=i02; surged=1; stops=",
        ),
        case(
            "never a start beside a duplicate still stopping",
            fleet(&format!("i01:o,os {}", seq(2..=12, "o"))).rtt(10),
            "starts=i02; surged=1",
        ),
        case(
            "unhealthy old daemons are replaced first",
            fleet(&format!("{} i05:ou {}", seq(1..=4, "o"), seq(6..=12, "o")))
                .rtt(10)
                .checks(),
            "starts=i05 i01; healthy=11",
        ),
        case(
            "100%: all at once",
            fleet("A:o B:o C:o").rtt(100),
            "surge=3; starts=A B C",
        ),
        case(
            "1% of 3: one at a time",
            fleet("A:o B:o C:o").rtt(1),
            "surge=1; starts=A",
        ),
        case(
            "an instance in back-off beside its old task waits",
            fleet("A:o B:o").rtt(100).failure("A", 1, 5_000, &[]),
            "starts=B; waiting=A@+5000; failing=1; due=+5000",
        ),
        case(
            "old daemons are never stopped without a healthy replacement",
            fleet("A:o,np B:ou C:o,nu").rtt(100).target_checks(),
            "stops=; starts=B",
        ),
    ]);
}

#[test]
fn health_checks_and_bake_time() {
    check(vec![
        case(
            "RUNNING without checks: healthy",
            fleet("A:nr"),
            "target_healthy=1; complete=yes",
        ),
        case(
            "RUNNING with checks, health unknown: not yet",
            fleet("A:nr").checks(),
            "target_healthy=0; healthy=0; complete=no; due=-",
        ),
        case(
            "HEALTHY with checks",
            fleet("A:n").checks(),
            "target_healthy=1; complete=yes",
        ),
        case(
            "UNHEALTHY with checks",
            fleet("A:nu").checks(),
            "target_healthy=0; complete=no",
        ),
        case(
            "UNHEALTHY without checks: RUNNING is enough",
            fleet("A:nu"),
            "target_healthy=1",
        ),
        case(
            "PENDING is never healthy",
            fleet("A:np"),
            "target_healthy=0; complete=no",
        ),
        case(
            "bake 30 s, running for 10: not yet, due in 20",
            fleet("A:nr").bake(30),
            "target_healthy=0; due=+20000; complete=no",
        ),
        case(
            "bake 5 s, running for 10: healthy",
            fleet("A:nr").bake(5),
            "target_healthy=1; due=-",
        ),
        case(
            "bake 30 s with checks, HEALTHY for 10: due in 20",
            fleet("A:nh").checks().bake(30),
            "target_healthy=0; due=+20000",
        ),
        case(
            "the earliest bake deadline is the one due",
            fleet("A:nh B:nr").target_checks().bake(15),
            "due=+5000",
        ),
        case(
            "checks on the target only: the old task definition's RUNNING counts",
            fleet("A:or B:or C:or").target_checks().ttr(50),
            "healthy=3; stops=A.0:replaced",
        ),
        case(
            "a baking replacement does not count towards the floor",
            fleet(&format!("i01:nr {}", seq(2..=12, "o"))).bake(30),
            "healthy=11; stops=; due=+20000",
        ),
        case(
            "a baking old daemon is not counted, so it may be replaced at once",
            fleet("A:or B:o C:o").bake(30).ttr(50),
            "healthy=2; floor=2; stops=A.0:replaced",
        ),
    ]);
}

#[test]
fn intents() {
    check(vec![
        case(
            "an intent blocks the start until it is verified",
            fleet("A: B:").intent("A", "d3", 5_000),
            "starts=B; verify=; due=+5000; complete=no",
        ),
        case(
            "a due intent is verified",
            fleet("A:").intent("A", "d3", 0),
            "verify=A@d3; starts=; due=-",
        ),
        case(
            "an intent whose task is in view is settled",
            fleet("A:np").intent("A", "d3", 5_000),
            "settled=A@d3; verify=; starts=; due=-",
        ),
        case(
            "an older deployment's intent blocks too",
            fleet("A:").intent("A", "d2", 5_000),
            "starts=",
        ),
        case(
            "an older deployment's intent settles on its own task",
            fleet("A:o").intent("A", "d2", 0).ttr(0),
            "settled=A@d2; verify=; stops=A.0:replaced",
        ),
        case(
            "an intent is not settled by a task of another deployment",
            fleet("A:o").intent("A", "d3", -1).rtt(100),
            "settled=; verify=A@d3; starts=; surged=1",
        ),
        case(
            "an intent whose task already stopped is verified, not settled",
            fleet("A:nx").intent("A", "d3", -1),
            "settled=; verify=A@d3; starts=; failed=A.0",
        ),
        case(
            "an intent on an instance out of view holds completion up",
            fleet("A:n").intent("Z", "d3", 0),
            "verify=Z@d3; complete=no",
        ),
        case(
            "intents are settled and verified while frozen",
            fleet("A:np B:")
                .intent("A", "d3", 0)
                .intent("B", "d3", 0)
                .frozen(),
            "settled=A@d3; verify=B@d3; starts=",
        ),
    ]);
}

#[test]
fn back_off() {
    check(vec![
        case(
            "in back-off: waiting until the retry time",
            fleet("A:").failure("A", 1, 5_000, &[]),
            "starts=; waiting=A@+5000; due=+5000; failing=1; attempts=1; example=RESOURCE:MEMORY on A",
        ),
        case(
            "back-off over: retried",
            fleet("A:").failure("A", 3, 0, &[]),
            "starts=A; waiting=; failing=1; attempts=3",
        ),
        case(
            "a fresh failure waits for the executor to record its back-off",
            fleet("A:nx"),
            "failed=A.0; starts=; waiting=; failing=1; due=-",
        ),
        case(
            "attempts add up over instances, fresh ones included",
            fleet("A: B:nx C:n")
                .failure("A", 2, 5_000, &[])
                .failure("C", 1, -1, &[]),
            "attempts=4; failing=2; starts=",
        ),
        case(
            "a failure record on an instance that now runs the target does not hold anything up",
            fleet("A:n").failure("A", 2, 5_000, &[]),
            "failing=0; complete=yes; waiting=",
        ),
    ]);
}

#[test]
fn failed_tasks() {
    check(vec![
        case(
            "a task that never ran is a failed start",
            fleet("A:nx"),
            "failed=A.0; attempts=1; example=CannotPullContainerError: pull access denied on A",
        ),
        case(
            "counted once: the failure record lists it",
            fleet("A:nx").failure("A", 1, -1, &["A.0"]),
            "failed=; attempts=1; starts=A",
        ),
        case(
            "a second failed task on the same instance is counted",
            fleet("A:nx,nx").failure("A", 1, -1, &["A.0"]),
            "failed=A.1; attempts=2; starts=",
        ),
        case(
            "not when blox stopped it",
            fleet("A:nb"),
            "failed=; attempts=0; starts=A",
        ),
        case(
            "not on a draining instance",
            fleet("A~:nx"),
            "failed=; attempts=0",
        ),
        case("not on an instance outside the group", fleet("A-:nx"), "failed="),
        case("not on a disconnected instance", fleet("A!:nx"), "failed="),
        case(
            "not a task of another deployment",
            fleet("A:ox B:ax"),
            "failed=; starts=A B",
        ),
        case(
            "crashed within the bake time",
            fleet("A:nc").bake(30),
            "failed=A.0",
        ),
        case(
            "crashed 15 s after RUNNING, past a 10 s bake time but within the minute of a rollout",
            fleet("A:nc").bake(10),
            "failed=A.0",
        ),
        case(
            "the same once the deployment completed: only the bake time counts",
            fleet("A:nc").bake(10).status(DeploymentStatus::Completed),
            "failed=; starts=A",
        ),
        case(
            "crashed without ever being HEALTHY",
            fleet("A:nc").checks(),
            "failed=A.0",
        ),
        case(
            "only its final record: whether it was ever HEALTHY is not known, so it is not counted",
            fleet("A:nf").checks(),
            "failed=; starts=A",
        ),
        case(
            "stopped after ten minutes healthy, its last health UNKNOWN",
            fleet("A:nl").checks().bake(60),
            "failed=; starts=A",
        ),
        case(
            "stopped after ten minutes running",
            fleet("A:nl").bake(60),
            "failed=; starts=A",
        ),
        case("none while frozen", fleet("A:nx").frozen(), "failed=; starts="),
    ]);
}

#[test]
fn frozen_stopped_and_failed_deployments() {
    let twelve_old = seq(1..=12, "o");
    // No actions, and the counts still right.
    let both = "starts=; stops=; acting=no; eligible=12; healthy=12; floor=11; outdated=12; desired=12; \
                target_healthy=0";
    check(vec![
        case(
            "frozen: nothing, counts still right",
            fleet(&twelve_old).frozen(),
            both,
        ),
        case(
            "stopped: nothing",
            fleet(&twelve_old).status(DeploymentStatus::Stopped),
            both,
        ),
        case(
            "failed: nothing",
            fleet(&twelve_old).status(DeploymentStatus::Failed),
            both,
        ),
        case(
            "frozen: not even a restart or a new instance",
            fleet("A: B:nx C-:n D:n,n").frozen(),
            "starts=; stops=; failed=; eligible=3; healthy=1",
        ),
        case(
            "pending acts",
            fleet("A:o B:").ttr(0).status(DeploymentStatus::Pending),
            "acting=yes; starts=B; stops=A.0:replaced",
        ),
        case(
            "completed keeps acting: new instances and restarts",
            fleet("A:n B: C:nl").status(DeploymentStatus::Completed),
            "acting=yes; starts=B C",
        ),
        case(
            "no deployment yet: nothing, nothing counted",
            fleet("A:o B:").undeployed(),
            "acting=no; starts=; stops=; eligible=0; complete=no",
        ),
    ]);
}

#[test]
fn deleting() {
    check(vec![
        case(
            "every task of the environment is stopped, someone else's are not",
            fleet("A:n B:o,os C~:n D-:f E:g").deleting(),
            "stops=A.0:environment-deleted B.0:environment-deleted C.0:environment-deleted; starts=; complete=no; acting=yes",
        ),
        case(
            "even on instances out of view",
            fleet("Z*:n").deleting(),
            "stops=Z.0:environment-deleted; complete=no",
        ),
        case(
            "tasks still stopping: not yet",
            fleet("A:ns").deleting(),
            "stops=; complete=no",
        ),
        case(
            "nothing left: complete",
            fleet("A:nb B: C:f").deleting(),
            "stops=; complete=yes",
        ),
        case(
            "a start in flight: not yet",
            fleet("A:").deleting().intent("A", "d3", 0),
            "verify=A@d3; complete=no",
        ),
        case(
            "a landed start is settled and its task stopped",
            fleet("A:np").deleting().intent("A", "d3", 5_000),
            "settled=A@d3; stops=A.0:environment-deleted; complete=no",
        ),
        case(
            "without a deployment",
            fleet("A:").deleting().undeployed(),
            "complete=yes",
        ),
    ]);
}

#[test]
fn completion() {
    check(vec![
        case(
            "an old task still stopping beside the target",
            fleet("A:n,os"),
            "complete=no; stops=",
        ),
        case(
            "a stopped old task beside the target",
            fleet("A:n,ob,oc"),
            "complete=yes",
        ),
        case("a duplicate target task", fleet("A:n,nr"), "complete=no"),
        case(
            "a start in flight",
            fleet("A:n").intent("A", "d2", 5_000),
            "complete=no",
        ),
        case(
            "an outdated daemon on a disconnected instance",
            fleet("A:n B!:o"),
            "complete=yes",
        ),
        case(
            "a target task not healthy yet",
            fleet("A:nr").checks(),
            "complete=no",
        ),
        case(
            "an instance in back-off",
            fleet("A:n B:").failure("B", 1, 5_000, &[]),
            "complete=no",
        ),
        case(
            "frozen but converged",
            fleet("A:n").frozen(),
            "complete=yes; acting=no",
        ),
    ]);
}

/// A task that was healthy, then stopped: what the view keeps of its health.
#[test]
fn the_view_keeps_the_health_of_a_stopped_task() {
    let spec = |last: &'static str, desired: &'static str, health: &'static str, updated: u64| TaskSpec {
        arn: "t",
        instance: "A",
        group: "blox:web",
        started_by: "d3",
        task_definition: "td:3",
        last_status: last,
        desired_status: desired,
        health: Some(health),
        started_at: Some(LONG_AGO),
        stopped_at: (last == "STOPPED").then_some(updated),
        stopped_reason: None,
        updated_at: Some(updated),
    };
    let healthy = daemon::TaskView::observe(
        &spec("RUNNING", "RUNNING", "HEALTHY", LONG_AGO).entity(),
        None,
        NOW,
    );
    assert_eq!(healthy.healthy_since, Some(LONG_AGO));
    let stopping = daemon::TaskView::observe(
        &spec("DEACTIVATING", "STOPPED", "UNKNOWN", NOW - 2_000).entity(),
        Some(&healthy),
        NOW,
    );
    assert_eq!(stopping.healthy_since, Some(LONG_AGO), "kept while it stops");
    assert_eq!(stopping.healthy_from(true), None, "but not healthy any more");
    let stopped = daemon::TaskView::observe(
        &spec("STOPPED", "STOPPED", "UNKNOWN", NOW - 1_000).entity(),
        Some(&stopping),
        NOW,
    );
    assert_eq!(stopped.healthy_since, Some(LONG_AGO));
    let sick = daemon::TaskView::observe(
        &spec("RUNNING", "RUNNING", "UNHEALTHY", NOW).entity(),
        Some(&healthy),
        NOW,
    );
    assert_eq!(sick.healthy_since, None, "UNHEALTHY while running interrupts it");
}
