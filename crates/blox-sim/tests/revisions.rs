//! Revisions as a deployment engine meets them in the simulator: container health checks (UNKNOWN
//! until the check's verdict, each change a new version and event), revisions that are bad in each
//! way (refused at StartTask, an image that cannot be pulled, a crash after RUNNING, a check that
//! never passes), the demo account's `log-router` revisions, and `list_started_tasks`. Time is an
//! argument, so nothing sleeps.

use std::collections::BTreeSet;
use std::time::Duration;

use blox_aws::{EcsControl, EcsErrorKind, EcsReader, StartTask};
use blox_model::{EcsEvent, Task};
use blox_sim::{
    Clock, Driver, Ecs, NewInstance, Scenario, SimConfig, SimContainer, SimError, SimFault, SimHealthCheck,
    SimOptions, Simulator, TaskFilter, ThrottleConfig,
};

const T0: u64 = 1_700_000_000_000;
const C: &str = "main";
/// Default lifecycle delays (SimConfig::default()): a task is RUNNING at T0 + RUNNING when started
/// at T0, and STOPPED STOPPING after its desired status changed.
const RUNNING: u64 = 200 + 1_000;
const STOPPING: u64 = 500;

fn config() -> SimConfig {
    SimConfig {
        throttle: ThrottleConfig::unlimited(),
        ..SimConfig::default()
    }
}

/// An essential container of 128 CPU units and 128 MiB.
fn container(name: &str) -> SimContainer {
    SimContainer {
        name: name.into(),
        cpu: 128,
        memory: Some(128),
        essential: true,
        host_ports: Vec::new(),
        health_check: None,
        fault: None,
    }
}

fn checked(name: &str, healthy_after_ms: u64) -> SimContainer {
    SimContainer {
        health_check: Some(SimHealthCheck { healthy_after_ms }),
        ..container(name)
    }
}

fn faulty(container: SimContainer, fault: SimFault) -> SimContainer {
    SimContainer {
        fault: Some(fault),
        ..container
    }
}

fn side(container: SimContainer) -> SimContainer {
    SimContainer {
        essential: false,
        ..container
    }
}

/// Cluster `C` with one m5.large instance (2048 CPU, 7680 MiB) and family `app` of `containers`;
/// events drained.
fn world(containers: Vec<SimContainer>) -> (Ecs, String) {
    let mut ecs = Ecs::new(config(), 7);
    ecs.create_cluster(C).unwrap();
    ecs.register_task_definition("app", None, None, containers)
        .unwrap();
    let instance = ecs
        .register_container_instance(C, NewInstance::ec2("m5.large", "us-east-1a"), T0)
        .unwrap()
        .container_instance_arn
        .clone();
    ecs.drain_events();
    (ecs, instance)
}

fn request(task_definition: &str, instance: &str, started_by: Option<&str>) -> StartTask {
    StartTask {
        cluster: C.into(),
        task_definition: task_definition.into(),
        container_instances: vec![instance.to_owned()],
        started_by: started_by.map(str::to_owned),
        group: None,
    }
}

fn describe(ecs: &Ecs, arn: &str) -> Task {
    let (found, failures) = ecs.describe_tasks(C, &[arn.to_owned()], T0).unwrap();
    assert!(failures.is_empty(), "{arn}: {failures:?}");
    (*found[0]).clone()
}

/// The Task State Change events emitted since the last drain, parsed.
fn task_events(ecs: &mut Ecs) -> Vec<Task> {
    ecs.drain_events()
        .into_iter()
        .filter_map(|e| match EcsEvent::parse(&e.body) {
            Ok(EcsEvent::Task { task, .. }) => Some(task),
            Ok(_) => None,
            Err(err) => panic!("{err}: {}", e.body),
        })
        .collect()
}

fn health(t: &Task) -> (&str, Vec<&str>) {
    (
        t.health_status.as_deref().unwrap_or("-"),
        t.containers
            .iter()
            .map(|c| c.health_status.as_deref().unwrap_or("-"))
            .collect(),
    )
}

// ---- health checks ---------------------------------------------------------------------------

/// What a task looks like `at` ms after it was started: lastStatus, version, task health and each
/// container's.
type Seen = (u64, &'static str, u64, &'static str, &'static [&'static str]);

/// Starts `app` at T0 and looks at it at each step: every step's Describe is as listed, each change
/// on the way raised the version by one and emitted exactly one event, and the last event is the
/// task as described.
fn check_health(name: &str, containers: Vec<SimContainer>, steps: &[Seen]) {
    let (mut ecs, instance) = world(containers);
    let started = ecs.start_task(&request("app", &instance, None), T0).unwrap();
    let arn = started.tasks[0].task_arn.clone();
    let mut version = 0;
    for &(at, last_status, want_version, task_health, container_health) in steps {
        ecs.advance(T0 + at);
        let described = describe(&ecs, &arn);
        let events = task_events(&mut ecs);
        let context = format!("{name}, at +{at} ms");
        assert_eq!(
            (
                described.last_status.as_str(),
                described.version,
                health(&described)
            ),
            (
                last_status,
                want_version,
                (task_health, container_health.to_vec())
            ),
            "{context}"
        );
        let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
        let want: Vec<u64> = (version + 1..=want_version).collect();
        assert_eq!(versions, want, "{context}: one event per change");
        if let Some(last) = events.last() {
            assert_eq!(*last, described, "{context}: the event is the described task");
        }
        version = want_version;
    }
}

#[test]
fn health_checks_report_unknown_until_their_verdict() {
    const HOUR: u64 = 3_600_000;
    check_health(
        "no check: UNKNOWN for good, as ECS reports it",
        vec![container("app")],
        &[
            (0, "PROVISIONING", 1, "UNKNOWN", &["UNKNOWN"]),
            (RUNNING, "RUNNING", 3, "UNKNOWN", &["UNKNOWN"]),
            (HOUR, "RUNNING", 3, "UNKNOWN", &["UNKNOWN"]),
        ],
    );
    check_health(
        "one check",
        vec![checked("app", 2_000)],
        &[
            (RUNNING, "RUNNING", 3, "UNKNOWN", &["UNKNOWN"]),
            (RUNNING + 1_999, "RUNNING", 3, "UNKNOWN", &["UNKNOWN"]),
            (RUNNING + 2_000, "RUNNING", 4, "HEALTHY", &["HEALTHY"]),
            (HOUR, "RUNNING", 4, "HEALTHY", &["HEALTHY"]),
        ],
    );
    check_health(
        "two essential checks: HEALTHY once both are",
        vec![checked("a", 1_000), checked("b", 3_000)],
        &[
            (RUNNING + 1_000, "RUNNING", 4, "UNKNOWN", &["HEALTHY", "UNKNOWN"]),
            (RUNNING + 3_000, "RUNNING", 5, "HEALTHY", &["HEALTHY", "HEALTHY"]),
        ],
    );
    check_health(
        "an essential container without a check does not hold the task back",
        vec![container("plain"), checked("app", 1_000)],
        &[(RUNNING + 1_000, "RUNNING", 4, "HEALTHY", &["UNKNOWN", "HEALTHY"])],
    );
    check_health(
        "a non-essential container's check does not count",
        vec![
            checked("app", 2_000),
            side(faulty(checked("side", 1_000), SimFault::NeverHealthy)),
        ],
        &[
            (
                RUNNING + 1_000,
                "RUNNING",
                4,
                "UNKNOWN",
                &["UNKNOWN", "UNHEALTHY"],
            ),
            (
                RUNNING + 2_000,
                "RUNNING",
                5,
                "HEALTHY",
                &["HEALTHY", "UNHEALTHY"],
            ),
        ],
    );
    check_health(
        "checks on non-essential containers only: the task stays UNKNOWN",
        vec![container("app"), side(checked("side", 1_000))],
        &[(RUNNING + 1_000, "RUNNING", 4, "UNKNOWN", &["UNKNOWN", "HEALTHY"])],
    );
    check_health(
        "a check that never passes: UNHEALTHY, and the standalone task keeps running",
        vec![faulty(checked("app", 2_000), SimFault::NeverHealthy)],
        &[
            (RUNNING + 1_999, "RUNNING", 3, "UNKNOWN", &["UNKNOWN"]),
            (RUNNING + 2_000, "RUNNING", 4, "UNHEALTHY", &["UNHEALTHY"]),
            (HOUR, "RUNNING", 4, "UNHEALTHY", &["UNHEALTHY"]),
        ],
    );
    check_health(
        "one essential UNHEALTHY makes the task UNHEALTHY whatever the others say",
        vec![
            checked("a", 1_000),
            faulty(checked("b", 2_000), SimFault::NeverHealthy),
        ],
        &[
            (RUNNING + 1_000, "RUNNING", 4, "UNKNOWN", &["HEALTHY", "UNKNOWN"]),
            (
                RUNNING + 2_000,
                "RUNNING",
                5,
                "UNHEALTHY",
                &["HEALTHY", "UNHEALTHY"],
            ),
        ],
    );
}

#[test]
fn a_stopped_task_gets_no_verdict() {
    let (mut ecs, instance) = world(vec![checked("app", 2_000)]);
    let started = ecs.start_task(&request("app", &instance, None), T0).unwrap();
    let arn = started.tasks[0].task_arn.clone();
    ecs.advance(T0 + RUNNING + 1_000);
    ecs.stop_task(C, &arn, "", T0 + RUNNING + 1_000).unwrap();
    ecs.advance(T0 + RUNNING + 60_000);
    let stopped = describe(&ecs, &arn);
    assert_eq!(
        (stopped.last_status.as_str(), stopped.version, health(&stopped)),
        ("STOPPED", 5, ("UNKNOWN", vec!["UNKNOWN"]))
    );
}

#[test]
fn describe_task_definition_says_which_containers_have_checks() {
    let (mut ecs, _) = world(vec![container("plain"), side(checked("side", 1_000))]);
    ecs.register_task_definition("app", None, None, vec![checked("app", 1_000)])
        .unwrap();
    let checks = |ecs: &Ecs, reference: &str| {
        let td = ecs.describe_task_definition(reference, T0).unwrap();
        let each: Vec<bool> = td.containers.iter().map(|c| c.health_check).collect();
        (each, td.has_health_checks())
    };
    assert_eq!(checks(&ecs, "app:1"), (vec![false, true], false));
    assert_eq!(checks(&ecs, "app:2"), (vec![true], true));
    // The simulator's own misuse: nothing to fail without a check.
    let err = ecs
        .register_task_definition(
            "app",
            None,
            None,
            vec![faulty(container("app"), SimFault::NeverHealthy)],
        )
        .unwrap_err();
    assert!(
        matches!(&err, SimError::Rejected { message, .. } if message.contains("needs a health check")),
        "{err}"
    );
}

// ---- bad revisions ---------------------------------------------------------------------------

/// Where a task of a bad revision ends up a minute after it was started, and how it got there.
struct Outcome {
    /// (lastStatus, desiredStatus) of each of its Task State Change events.
    events: &'static [(&'static str, &'static str)],
    stopped_reason: Option<&'static str>,
    health: &'static str,
    /// Each container: lastStatus, exit code, reason.
    containers: &'static [(&'static str, Option<i64>, Option<&'static str>)],
    /// When its desired status became STOPPED, after it was started.
    stop_asked_at: Option<u64>,
}

fn check_bad(name: &str, containers: Vec<SimContainer>, want: Outcome) {
    let (mut ecs, instance) = world(containers);
    let started = ecs.start_task(&request("app", &instance, None), T0).unwrap();
    assert!(started.failures.is_empty(), "{name}: StartTask takes it");
    let arn = started.tasks[0].task_arn.clone();
    ecs.advance(T0 + 60_000);
    let emitted: Vec<(u64, Task)> = ecs
        .drain_events()
        .into_iter()
        .filter_map(|e| match EcsEvent::parse(&e.body) {
            Ok(EcsEvent::Task { task, .. }) => Some((e.at_ms - T0, task)),
            _ => None,
        })
        .collect();
    let statuses: Vec<(&str, &str)> = emitted
        .iter()
        .map(|(_, t)| (t.last_status.as_str(), t.desired_status.as_str()))
        .collect();
    assert_eq!(statuses, want.events, "{name}");
    let stop_asked_at = emitted
        .iter()
        .find(|(_, t)| t.desired_status == "STOPPED")
        .map(|(at, _)| *at);
    assert_eq!(stop_asked_at, want.stop_asked_at, "{name}");
    let task = describe(&ecs, &arn);
    assert_eq!(emitted.last().map(|(_, t)| t), Some(&task), "{name}");
    assert_eq!(
        task.stopped_reason
            .as_deref()
            .map(|r| r.split(':').next().unwrap_or(r)),
        want.stopped_reason,
        "{name}"
    );
    assert_eq!(task.health_status.as_deref(), Some(want.health), "{name}");
    let containers: Vec<(&str, Option<i64>, Option<&str>)> = task
        .containers
        .iter()
        .map(|c| (c.last_status.as_str(), c.exit_code, c.reason.as_deref()))
        .collect();
    assert_eq!(containers, want.containers, "{name}");
}

#[test]
fn bad_revisions_fail_each_in_their_way() {
    const PULL: Option<&str> = Some("CannotPullContainerError");
    check_bad(
        "an image that cannot be pulled: stopped from PENDING, never RUNNING",
        vec![container("side"), faulty(container("app"), SimFault::CannotPull)],
        Outcome {
            events: &[
                ("PROVISIONING", "RUNNING"),
                ("PENDING", "RUNNING"),
                ("PENDING", "STOPPED"),
                ("STOPPED", "STOPPED"),
            ],
            stopped_reason: PULL,
            health: "UNKNOWN",
            containers: &[("STOPPED", None, None), ("STOPPED", None, PULL)],
            stop_asked_at: Some(RUNNING),
        },
    );
    let crash = SimFault::Crash {
        after_ms: 3_000,
        exit_code: 1,
    };
    check_bad(
        "an essential container that crashes 3 s after RUNNING",
        vec![faulty(container("app"), crash), container("side")],
        Outcome {
            events: &[
                ("PROVISIONING", "RUNNING"),
                ("PENDING", "RUNNING"),
                ("RUNNING", "RUNNING"),
                ("RUNNING", "STOPPED"),
                ("STOPPED", "STOPPED"),
            ],
            stopped_reason: Some("Essential container in task exited"),
            health: "UNKNOWN",
            containers: &[("STOPPED", Some(1), None), ("STOPPED", Some(1), None)],
            stop_asked_at: Some(RUNNING + 3_000),
        },
    );
    check_bad(
        "a crash after the check passed: HEALTHY, then stopped",
        vec![faulty(checked("app", 2_000), crash)],
        Outcome {
            events: &[
                ("PROVISIONING", "RUNNING"),
                ("PENDING", "RUNNING"),
                ("RUNNING", "RUNNING"),
                ("RUNNING", "RUNNING"),
                ("RUNNING", "STOPPED"),
                ("STOPPED", "STOPPED"),
            ],
            stopped_reason: Some("Essential container in task exited"),
            health: "HEALTHY",
            containers: &[("STOPPED", Some(1), None)],
            stop_asked_at: Some(RUNNING + 3_000),
        },
    );
    check_bad(
        "a non-essential container that crashes: the task keeps running",
        vec![container("app"), side(faulty(container("side"), crash))],
        Outcome {
            events: &[
                ("PROVISIONING", "RUNNING"),
                ("PENDING", "RUNNING"),
                ("RUNNING", "RUNNING"),
                ("RUNNING", "RUNNING"),
            ],
            stopped_reason: None,
            health: "UNKNOWN",
            containers: &[("RUNNING", None, None), ("STOPPED", Some(1), None)],
            stop_asked_at: None,
        },
    );
    check_bad(
        "a check that never passes: UNHEALTHY and still running",
        vec![faulty(checked("app", 2_000), SimFault::NeverHealthy)],
        Outcome {
            events: &[
                ("PROVISIONING", "RUNNING"),
                ("PENDING", "RUNNING"),
                ("RUNNING", "RUNNING"),
                ("RUNNING", "RUNNING"),
            ],
            stopped_reason: None,
            health: "UNHEALTHY",
            containers: &[("RUNNING", None, None)],
            stop_asked_at: None,
        },
    );
}

#[test]
fn revisions_too_big_or_on_a_taken_port_are_refused_at_start_task() {
    let (mut ecs, instance) = world(vec![container("app")]);
    let sized = |cpu: i64, memory: i64, ports: &[i64]| SimContainer {
        cpu,
        memory: Some(memory),
        host_ports: ports.to_vec(),
        ..container("app")
    };
    ecs.register_task_definition("web", None, None, vec![sized(128, 128, &[8080])])
        .unwrap();
    let first = ecs.start_task(&request("web", &instance, None), T0).unwrap();
    assert!(first.failures.is_empty());
    let cases: [(&str, SimContainer, &str); 4] = [
        (
            "more memory than the instance has",
            sized(128, 100_000, &[]),
            "RESOURCE:MEMORY",
        ),
        (
            "more CPU than the instance has",
            sized(100_000, 128, &[]),
            "RESOURCE:CPU",
        ),
        (
            "a port the agent reserves",
            sized(128, 128, &[22]),
            "RESOURCE:PORTS",
        ),
        (
            "a port a running task holds",
            sized(128, 128, &[8080]),
            "RESOURCE:PORTS",
        ),
    ];
    for (name, container, want) in cases {
        let td = ecs
            .register_task_definition("bad", None, None, vec![container])
            .unwrap();
        let started = ecs.start_task(&request(&td.arn, &instance, None), T0).unwrap();
        let reasons: Vec<&str> = started.failures.iter().map(|f| f.reason.as_str()).collect();
        assert_eq!((started.tasks.len(), reasons), (0, vec![want]), "{name}");
    }
}

// ---- the demo account ------------------------------------------------------------------------

#[test]
fn the_demo_has_a_good_and_a_bad_later_log_router() {
    let mut ecs = Ecs::new(config(), 1);
    let scenario = Scenario::demo();
    scenario.populate(&mut ecs, 1, T0).unwrap();
    let td = |reference: &str| ecs.describe_task_definition(reference, T0).unwrap();
    let checks: Vec<(i64, bool)> = (1..=4)
        .map(|r| td(&format!("log-router:{r}")))
        .map(|d| (d.revision, d.has_health_checks()))
        .collect();
    assert_eq!(checks, [(1, false), (2, true), (3, true), (4, true)]);
    assert_eq!(
        td("log-router").revision,
        4,
        "the latest is the fix of the bad one"
    );

    // The world runs revision 1 of every family, at the start and under churn.
    let mut driver = Driver::new(scenario, 1);
    let mut now = T0;
    for _ in 0..500 {
        now += 100;
        ecs.advance(now);
        driver.step(&mut ecs, now, 100);
    }
    let definitions: BTreeSet<String> = ecs
        .listed()
        .values()
        .flat_map(|l| l.tasks.iter())
        .map(|t| t.task_definition_arn.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert!(definitions.contains("log-router:1"), "{definitions:?}");
    assert!(definitions.iter().all(|d| d.ends_with(":1")), "{definitions:?}");

    // Deploying revision 2 and 3 on a staging instance with room.
    let instance = ecs
        .instances("demo-staging")
        .into_iter()
        .find(|i| i.status == "ACTIVE" && i.agent_connected)
        .unwrap()
        .container_instance_arn
        .clone();
    let start = |ecs: &mut Ecs, revision: &str| {
        let started = ecs
            .start_task(
                &StartTask {
                    cluster: "demo-staging".into(),
                    ..request(revision, &instance, Some("demo"))
                },
                now,
            )
            .unwrap();
        assert!(started.failures.is_empty(), "{:?}", started.failures);
        started.tasks[0].task_arn.clone()
    };
    let good = start(&mut ecs, "log-router:2");
    let bad = start(&mut ecs, "log-router:3");
    let look = |ecs: &Ecs, arn: &str| {
        let (found, _) = ecs
            .describe_tasks("demo-staging", &[arn.to_owned()], now)
            .unwrap();
        let t = &found[0];
        (
            t.last_status.clone(),
            t.desired_status.clone(),
            t.health_status.clone().unwrap_or_default(),
        )
    };
    let at = |ecs: &mut Ecs, after: u64| {
        ecs.advance(now + after);
        (look(ecs, &good), look(ecs, &bad))
    };
    let s = |last: &str, desired: &str, health: &str| (last.into(), desired.into(), health.into());
    assert_eq!(
        at(&mut ecs, RUNNING),
        (
            s("RUNNING", "RUNNING", "UNKNOWN"),
            s("RUNNING", "RUNNING", "UNKNOWN")
        )
    );
    assert_eq!(
        at(&mut ecs, RUNNING + 2_000),
        (
            s("RUNNING", "RUNNING", "HEALTHY"),
            s("RUNNING", "RUNNING", "HEALTHY")
        )
    );
    assert_eq!(
        at(&mut ecs, RUNNING + 3_000 + STOPPING),
        (
            s("RUNNING", "RUNNING", "HEALTHY"),
            s("STOPPED", "STOPPED", "HEALTHY")
        )
    );
}

#[test]
fn the_demo_refuses_web_1_on_most_prod_instances() {
    let mut ecs = Ecs::new(config(), 1);
    Scenario::demo().populate(&mut ecs, 1, T0).unwrap();
    let instances: Vec<String> = ecs
        .instances("demo-prod")
        .iter()
        .map(|i| i.container_instance_arn.clone())
        .collect();
    let mut refused = 0;
    for chunk in instances.chunks(blox_aws::START_TASK_BATCH) {
        let started = ecs
            .start_task(
                &StartTask {
                    cluster: "demo-prod".into(),
                    task_definition: "web:1".into(),
                    container_instances: chunk.to_vec(),
                    started_by: None,
                    group: None,
                },
                T0,
            )
            .unwrap();
        assert!(started.failures.iter().all(|f| f.reason == "RESOURCE:PORTS"));
        refused += started.failures.len();
    }
    assert!(refused * 2 > instances.len(), "{refused} of {}", instances.len());
}

// ---- saved state -----------------------------------------------------------------------------

#[test]
fn saved_state_keeps_checks_and_faults_in_flight() {
    let (mut ecs, instance) = world(vec![checked("app", 2_000)]);
    ecs.register_task_definition(
        "crash",
        None,
        None,
        vec![faulty(
            container("app"),
            SimFault::Crash {
                after_ms: 3_000,
                exit_code: 2,
            },
        )],
    )
    .unwrap();
    let good = ecs.start_task(&request("app", &instance, None), T0).unwrap();
    let bad = ecs.start_task(&request("crash", &instance, None), T0).unwrap();
    // Saved while both are RUNNING, before the verdict and the crash.
    ecs.advance(T0 + RUNNING + 1_000);
    ecs.drain_events();
    let json = ecs.to_json().unwrap();
    let mut restored = Ecs::from_json(&json).unwrap();
    assert_eq!(restored.to_json().unwrap(), json);
    let later = |ecs: &mut Ecs| {
        ecs.advance(T0 + 60_000);
        (ecs.to_json().unwrap(), ecs.drain_events())
    };
    let (state, events) = later(&mut restored);
    assert_eq!(events.len(), 4, "a verdict, a crash, its stop and the instance's");
    assert_eq!((state, events), later(&mut ecs), "as if never saved");
    let good = describe(&restored, &good.tasks[0].task_arn);
    let bad = describe(&restored, &bad.tasks[0].task_arn);
    assert_eq!(good.health_status.as_deref(), Some("HEALTHY"));
    assert_eq!(
        (bad.last_status.as_str(), bad.containers[0].exit_code),
        ("STOPPED", Some(2))
    );
}

#[test]
fn state_saved_before_health_checks_still_loads() {
    let (mut ecs, instance) = world(vec![container("app")]);
    let started = ecs.start_task(&request("app", &instance, None), T0).unwrap();
    ecs.advance(T0 + RUNNING);
    // What an older simulator wrote: no revision per task (a task's is followed by fails_to_start, a task
    // definition's by its status), no health anywhere. Edited as text: a JSON value would not keep
    // the 128-bit ids.
    let json = ecs.to_json().unwrap();
    assert_eq!(json.matches(r#""revision":1,"fails_to_start""#).count(), 1);
    assert!(json.contains(r#""healthStatus":"UNKNOWN""#));
    let old = json
        .replace(r#""revision":1,"fails_to_start""#, r#""fails_to_start""#)
        .replace(r#","healthStatus":"UNKNOWN""#, "");
    assert!(!old.contains("healthStatus") && !old.contains("health_check"));
    let mut restored = Ecs::from_json(&old).unwrap();
    let arn = &started.tasks[0].task_arn;
    assert_eq!(describe(&restored, arn).last_status, "RUNNING");
    restored.stop_task(C, arn, "", T0 + 10_000).unwrap();
    restored.advance(T0 + 20_000);
    assert_eq!(describe(&restored, arn).last_status, "STOPPED");
}

// ---- list_started_tasks --------------------------------------------------------------------------

#[tokio::test]
async fn list_started_tasks_on_the_simulator() {
    let sim = Simulator::new(
        Ecs::new(config(), 3),
        Clock::manual(T0),
        SimOptions {
            config: config(),
            ..SimOptions::default()
        },
    );
    let instances: Vec<String> = sim.write(|ecs, now| {
        ecs.create_cluster(C).unwrap();
        let small = SimContainer {
            cpu: 16,
            memory: Some(16),
            ..container("app")
        };
        ecs.register_task_definition("app", None, None, vec![small])
            .unwrap();
        (0..3)
            .map(|_| {
                ecs.register_container_instance(C, NewInstance::ec2("c5.2xlarge", "us-east-1a"), now)
                    .unwrap()
                    .container_instance_arn
                    .clone()
            })
            .collect()
    });
    let start = |on: &[usize], by: Option<&str>| {
        let placements: Vec<String> = on.iter().map(|&i| instances[i].clone()).collect();
        let request = StartTask {
            cluster: C.into(),
            task_definition: "app".into(),
            container_instances: placements,
            started_by: by.map(str::to_owned),
            group: None,
        };
        let sim = sim.clone();
        async move {
            let started = sim.start_task(&request).await.unwrap();
            assert!(started.failures.is_empty(), "{:?}", started.failures);
            started
                .tasks
                .iter()
                .map(|t| t.task_arn.clone())
                .collect::<Vec<_>>()
        }
    };
    let d1 = start(&[0, 1], Some("dep-1")).await;
    let d2 = start(&[0], Some("dep-2")).await;
    start(&[0, 1, 2], None).await;
    // More than a describe batch on one instance.
    let mut many = Vec::new();
    for _ in 0..11 {
        many.extend(start(&[2; 10], Some("many")).await);
    }
    sim.clock().advance(Duration::from_secs(5));
    sim.stop_task(C, &d1[0], "replaced").await.unwrap();
    sim.clock().advance(Duration::from_secs(5));
    sim.tick();

    let id = |arn: &str| arn.rsplit('/').next().unwrap().to_owned();
    let cases: [(&str, String, Vec<String>); 7] = [
        ("dep-1", instances[0].clone(), vec![d1[0].clone()]),
        ("dep-1", instances[1].clone(), vec![d1[1].clone()]),
        ("dep-1", id(&instances[1]), vec![d1[1].clone()]),
        ("dep-2", instances[0].clone(), d2.clone()),
        ("dep-2", instances[1].clone(), vec![]),
        ("nobody", instances[0].clone(), vec![]),
        ("many", instances[2].clone(), many.clone()),
    ];
    for (started_by, instance, want) in cases {
        let got = sim.list_started_tasks(C, started_by, &instance).await.unwrap();
        let got_set: BTreeSet<&String> = got.iter().collect();
        assert_eq!(got.len(), got_set.len(), "{started_by} on {instance}: each once");
        assert_eq!(got_set, want.iter().collect(), "{started_by} on {instance}");
    }
    let err = sim
        .list_started_tasks("nowhere", "dep-1", &instances[0])
        .await
        .unwrap_err();
    assert!(matches!(err.kind, EcsErrorKind::ClusterNotFound), "{err}");
    // As in ECS, the one call that would do it is refused.
    let combined = TaskFilter {
        started_by: Some("dep-1".into()),
        container_instance: Some(instances[0].clone()),
        ..TaskFilter::default()
    };
    let refused = sim.read(|ecs| ecs.list_tasks(C, &combined, None, None, T0));
    assert!(
        matches!(
            &refused,
            Err(SimError::Rejected {
                code: "InvalidParameterException",
                ..
            })
        ),
        "{refused:?}"
    );
}
