//! The commands on environments and the deployment state machine, case by case. A case replays a
//! history of commands (each one applied as the executor's batch would be), then runs one more and
//! compares what it writes (or why it is refused) with the expected lines; `advance` cases run a
//! sequence of plans and compare the stored state.
//!
//! Ids are deterministic: the n-th deployment is `dn`, revision n's token is `tokn`; every command
//! takes one second.

mod common;

use blox_model::ClusterName;
use blox_model::daemon::lifecycle::{
    self, CreateEnvironment, DeployTarget, Fresh, Observed, Progress, TaskDefinitionRef, UpdateEnvironment,
};
use blox_model::daemon::{
    CanaryPatch, CanaryPlan, Changes, CommandError, ConfigPatch, Counts, Deployment, DeploymentMethod,
    DeploymentStatus, Doc, Environment, Fleet, InstanceFailure, InstanceSelection, Plan, Revision, Snapshot,
    StartIntent,
};
use common::attribute;

const T0: u64 = 1_700_000_000_000;

struct World {
    snap: Snapshot,
    now: u64,
    progress: Option<(String, Progress)>,
}

impl World {
    fn empty() -> World {
        World {
            snap: Snapshot::default(),
            now: T0,
            progress: None,
        }
    }

    /// The environment `web` on td:1, nothing deployed.
    fn new() -> World {
        let mut world = World::empty();
        world.must("create web td=td:1");
        world
    }

    fn fresh_ids(&mut self) -> (String, String) {
        self.now += 1_000;
        let deployment = format!("d{}", self.snap.deployments.len() + 1);
        let latest = self.snap.environment.as_ref().map_or(0, |e| e.latest_revision);
        (deployment, format!("tok{}", latest + 1))
    }

    fn must(&mut self, op: &str) {
        if let Err(e) = self.run(op) {
            panic!("{op}: {e:?}");
        }
    }

    /// Runs a command and applies what it writes.
    fn run(&mut self, op: &str) -> Result<Changes, CommandError> {
        let (id, token) = self.fresh_ids();
        let fresh = Fresh {
            now_ms: self.now,
            deployment_id: &id,
            token: &token,
        };
        let words: Vec<&str> = op.split_whitespace().collect();
        let arg = |key: &str| words.iter().find_map(|w| w.strip_prefix(key)?.strip_prefix('='));
        let num = |key: &str| arg(key).map(|v| v.parse::<u64>().unwrap());
        let snap = &self.snap;
        let result = match words[0] {
            "create" => lifecycle::create_environment(
                snap.environment.as_ref(),
                CreateEnvironment {
                    name: words[1].to_owned(),
                    cluster: ClusterName::new("prod").unwrap(),
                    cluster_arn: common::CLUSTER_ARN.to_owned(),
                    task_definition: TaskDefinitionRef {
                        arn: arg("td").unwrap().to_owned(),
                        health_checks: words.contains(&"checks"),
                    },
                    instance_group: InstanceSelection {
                        attributes: vec![attribute("stack", Some("prod"))],
                        query: None,
                    },
                    method: arg("method").map(method),
                    configuration: patch(&words),
                },
                fresh,
            ),
            "update" => lifecycle::update_environment(
                snap,
                UpdateEnvironment {
                    task_definition: arg("td").map(|td| TaskDefinitionRef {
                        arn: td.to_owned(),
                        health_checks: words.contains(&"checks"),
                    }),
                    instance_group: arg("attrs").map(|a| InstanceSelection {
                        attributes: a
                            .split(',')
                            .map(|kv| match kv.split_once('=') {
                                Some((k, v)) => attribute(k, Some(v)),
                                None => attribute(kv, None),
                            })
                            .collect(),
                        query: None,
                    }),
                    method: arg("method").map(method),
                    configuration: patch(&words),
                    base_revision: num("base"),
                },
                fresh,
            ),
            "deploy" => {
                let target = match arg("token") {
                    Some(token) => DeployTarget::Token(token.to_owned()),
                    None => DeployTarget::Revision {
                        number: num("rev").unwrap(),
                        rollback: words.contains(&"rollback"),
                    },
                };
                lifecycle::deploy(snap, target, fresh)
            }
            "rollback" => lifecycle::rollback(snap, num("rev"), fresh),
            "stop" => lifecycle::stop(snap, words[1], self.now),
            "promote" => lifecycle::promote(snap, words[1], self.now),
            "freeze" => lifecycle::freeze(snap, true, self.now),
            "thaw" => lifecycle::freeze(snap, false, self.now),
            "delete" => lifecycle::delete(snap, words.contains(&"terminate"), self.now),
            // Setup only: the active deployment completes, or fails (by the failure threshold).
            "complete" => Ok(self.advance(&plan("e=1 h=1 done"))),
            "run" => Ok(self.advance(&plan("e=3 h=0"))),
            "fail" => Ok(self.advance(&plan("e=1 h=0 a=1000"))),
            // Setup only: an intent and a failure record of the active deployment.
            "intent" | "failure" => {
                let deployment = snap.active().unwrap().id.clone();
                let doc = if words[0] == "intent" {
                    Doc::Intent(StartIntent {
                        environment: "web".into(),
                        deployment_id: deployment,
                        instance_arn: words[1].into(),
                        recorded_at_ms: self.now,
                    })
                } else {
                    Doc::Failure(InstanceFailure {
                        environment: "web".into(),
                        deployment_id: deployment,
                        instance_arn: words[1].into(),
                        reason: "RESOURCE:MEMORY".into(),
                        attempts: 1,
                        last_at_ms: self.now,
                        retry_at_ms: self.now,
                        tasks: vec![],
                    })
                };
                Ok(Changes {
                    put: vec![doc],
                    remove: vec![],
                })
            }
            other => panic!("unknown command {other}"),
        };
        if let Ok(changes) = &result {
            common::apply(&mut self.snap, changes);
        }
        result
    }

    /// `lifecycle::advance` with the executor's memory of progress (one per active deployment).
    fn advance(&mut self, plan: &Plan) -> Changes {
        self.advance_observing(plan, None)
    }

    fn advance_observing(&mut self, plan: &Plan, alarm: Option<&str>) -> Changes {
        let id = format!("d{}", self.snap.deployments.len() + 1);
        let active = self.snap.active().map(|d| d.id.clone()).unwrap_or_default();
        if self.progress.as_ref().is_none_or(|(of, _)| *of != active) {
            self.progress = Some((active, Progress::new(self.now)));
        }
        let progress = &mut self.progress.as_mut().unwrap().1;
        let changes = lifecycle::advance(
            &self.snap,
            plan,
            Observed { alarm },
            progress,
            Fresh {
                now_ms: self.now,
                deployment_id: &id,
                token: "unused",
            },
        );
        common::apply(&mut self.snap, &changes);
        changes
    }

    /// Every document, one line each, sorted.
    fn state(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.snap.deployments.iter().map(describe_deployment).collect();
        lines.extend(self.snap.environment.iter().map(describe_environment));
        lines.sort();
        lines
    }
}

fn method(name: &str) -> DeploymentMethod {
    match name {
        "TTR" => DeploymentMethod::TerminateThenReplace,
        "RTT" => DeploymentMethod::ReplaceThenTerminate,
        other => DeploymentMethod::parse("deploymentMethod", other).unwrap(),
    }
}

fn patch(words: &[&str]) -> ConfigPatch {
    let num = |key: &str| {
        words
            .iter()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.parse::<i64>().unwrap())
    };
    let flag = |on: &str, off: &str| {
        if words.contains(&on) {
            Some(true)
        } else if words.contains(&off) {
            Some(false)
        } else {
            None
        }
    };
    ConfigPatch {
        min_healthy_percent: num("min"),
        max_over_percent: num("over"),
        min_healthy_seconds: num("bake"),
        failure_threshold: num("threshold"),
        progress_deadline_seconds: num("deadline"),
        auto_rollback: flag("auto", "noauto"),
        stop_on_drain: flag("drain", "nodrain"),
        canary: num("canary").map(|n| CanaryPatch {
            instances: Some(n),
            auto_promote: flag("autopromote", "noautopromote"),
            ..CanaryPatch::default()
        }),
        alarms: words
            .iter()
            .find_map(|w| w.strip_prefix("alarms="))
            .map(|names| names.split(',').map(str::to_owned).collect()),
        coverage_grace_seconds: None,
    }
}

/// The alarm a step observes: `alarm=NAME`.
fn alarm(spec: &str) -> Option<&str> {
    spec.split_whitespace().find_map(|w| w.strip_prefix("alarm="))
}

/// A plan as `advance` reads it: `e` eligible (and desired), `h` healthy on the target, `a` failed
/// attempts, `done` complete; `pick=A,B` a canary picked now, `canary=A,B` the recorded one,
/// `canaryok` the canary complete (`alarm=` is for [`alarm`]).
fn plan(spec: &str) -> Plan {
    let mut plan = Plan {
        acting: true,
        ..Plan::default()
    };
    for word in spec.split_whitespace() {
        match word.split_once('=') {
            Some(("e", n)) => {
                let n = n.parse().unwrap();
                plan.fleet = Fleet {
                    eligible: n,
                    ..Fleet::default()
                };
                plan.counts.desired = n;
            }
            Some(("h", n)) => {
                plan.counts.healthy = n.parse().unwrap();
                plan.counts.total = plan.counts.healthy;
            }
            Some(("a", n)) => plan.failed_attempts = n.parse().unwrap(),
            Some(("alarm", _)) => {}
            Some((which @ ("pick" | "canary"), set)) => {
                plan.canary = Some(CanaryPlan {
                    instances: set.split(',').map(str::to_owned).collect(),
                    recorded: which == "canary",
                    complete: false,
                });
            }
            None if word == "canaryok" => plan.canary.as_mut().expect("a canary first").complete = true,
            None if word == "done" => plan.complete = true,
            _ => panic!("bad plan {spec}"),
        }
    }
    plan
}

fn describe_deployment(d: &Deployment) -> String {
    let mut s = format!("dep {} rev={} {}", d.id, d.revision, d.status.name());
    if d.rollback {
        s += " rollback";
    }
    for (key, value) in [
        ("of", &d.rollback_of),
        ("by", &d.rolled_back_by),
        ("superseded", &d.superseded_by),
    ] {
        if let Some(v) = value {
            s += &format!(" {key}={v}");
        }
    }
    if let Some(p) = d.previous_revision {
        s += &format!(" prev={p}");
    }
    if let Some(set) = &d.canary_instances {
        s += &format!(" canary={}", set.join(","));
    }
    if d.promoted_at.is_some() {
        s += " promoted";
    }
    s
}

fn describe_environment(e: &Environment) -> String {
    let mut s = format!(
        "env latest={} active={}",
        e.latest_revision,
        e.active_deployment.as_deref().unwrap_or("-")
    );
    if e.frozen {
        s += " frozen";
    }
    if e.status.is_deleting() {
        s += " deleting";
    }
    s
}

fn describe_revision(r: &Revision) -> String {
    let c = &r.deployment_configuration;
    let method = match r.deployment_method {
        DeploymentMethod::TerminateThenReplace => "TTR",
        DeploymentMethod::ReplaceThenTerminate => "RTT",
    };
    let group: Vec<String> = r
        .instance_group
        .attributes
        .iter()
        .map(|a| match &a.value {
            Some(v) => format!("{}={v}", a.name),
            None => a.name.clone(),
        })
        .collect();
    format!(
        "rev {} {} td={}{} {method} min={} over={} bake={} threshold={} deadline={} {} {} group={}",
        r.number,
        r.token,
        r.task_definition,
        if r.health_checks { " checks" } else { "" },
        c.min_healthy_percent,
        c.max_over_percent,
        c.min_healthy_seconds,
        c.failure_threshold.map_or("-".to_owned(), |t| t.to_string()),
        c.progress_deadline_seconds,
        if c.auto_rollback { "auto" } else { "noauto" },
        if c.stop_on_drain { "drain" } else { "nodrain" },
        group.join(","),
    )
}

fn describe_doc(doc: &Doc) -> String {
    match doc {
        Doc::Environment(e) => describe_environment(e),
        Doc::Revision(r) => describe_revision(r),
        Doc::Deployment(d) => describe_deployment(d),
        Doc::Intent(i) => format!("intent {}", i.id()),
        Doc::Failure(f) => format!("failure {}", f.id()),
    }
}

fn describe(result: &Result<Changes, CommandError>) -> Vec<String> {
    let mut lines: Vec<String> = match result {
        Ok(changes) => changes
            .put
            .iter()
            .map(describe_doc)
            .chain(changes.remove.iter().map(|d| format!("-{}", describe_doc(d))))
            .collect(),
        Err(e) => vec![match e {
            CommandError::NotFound { resource, id } => format!("NotFound {resource} {id}"),
            CommandError::Exists { name } => format!("Exists {name}"),
            CommandError::Invalid { field, code, .. } => format!("Invalid {field} {code}"),
            CommandError::Conflict { code, .. } => format!("Conflict {code}"),
            CommandError::StaleToken { token, current } => format!("StaleToken {token} {current}"),
            CommandError::TokenUsed { deployment, .. } => format!("TokenUsed {deployment}"),
        }],
    };
    lines.sort();
    lines
}

struct Case {
    name: &'static str,
    history: &'static [&'static str],
    command: &'static str,
    expect: Vec<String>,
}

fn case(
    name: &'static str,
    history: &'static [&'static str],
    command: &'static str,
    expect: &[&str],
) -> Case {
    Case {
        name,
        history,
        command,
        expect: expect.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Replays each case's history on a fresh `web` (or on nothing, when the history starts with
/// "none"), runs its command and compares what it writes.
fn check(cases: Vec<Case>) {
    let mut errors = Vec::new();
    for c in &cases {
        let mut world = if c.history.first() == Some(&"none") {
            World::empty()
        } else {
            World::new()
        };
        for op in c.history.iter().filter(|op| **op != "none") {
            world.must(op);
        }
        let got = describe(&world.run(c.command));
        let mut want = c.expect.clone();
        want.sort();
        if got != want {
            errors.push(format!("{}:\n   got  {got:?}\n   want {want:?}", c.name));
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

const REV1: &str =
    "rev 1 tok1 td=td:1 TTR min=90 over=10 bake=0 threshold=- deadline=600 auto nodrain group=stack=prod";

#[test]
fn create_and_update() {
    check(vec![
        case(
            "create: the environment and its first revision",
            &["none"],
            "create web td=td:1",
            &["env latest=1 active=-", REV1],
        ),
        case(
            "create with a method and a configuration",
            &["none"],
            "create web td=td:1 checks method=RTT min=50 over=20 bake=30 threshold=5 deadline=120 noauto drain",
            &[
                "env latest=1 active=-",
                "rev 1 tok1 td=td:1 checks RTT min=50 over=20 bake=30 threshold=5 deadline=120 noauto drain group=stack=prod",
            ],
        ),
        case(
            "create: the name is taken",
            &[],
            "create web td=td:1",
            &["Exists web"],
        ),
        case(
            "create: a bad name",
            &["none"],
            "create a:b td=td:1",
            &["Invalid name InvalidParameter"],
        ),
        case(
            "create: out of range",
            &["none"],
            "create web td=td:1 min=101",
            &["Invalid deploymentConfiguration.minHealthyPercent InvalidParameter"],
        ),
        case(
            "update: a new task definition, the rest kept",
            &[],
            "update td=td:2",
            &[
                "env latest=2 active=-",
                "rev 2 tok2 td=td:2 TTR min=90 over=10 bake=0 threshold=- deadline=600 auto nodrain group=stack=prod",
            ],
        ),
        case(
            "update: a patch applies over the latest revision",
            &["update min=50 noauto"],
            "update td=td:3 checks over=30",
            &[
                "env latest=3 active=-",
                "rev 3 tok3 td=td:3 checks TTR min=50 over=30 bake=0 threshold=- deadline=600 noauto nodrain group=stack=prod",
            ],
        ),
        case(
            "update: the method and the instance group",
            &[],
            "update method=RTT attrs=stack=dev,gpu",
            &[
                "env latest=2 active=-",
                "rev 2 tok2 td=td:1 RTT min=90 over=10 bake=0 threshold=- deadline=600 auto nodrain group=stack=dev,gpu",
            ],
        ),
        case(
            "update: based on the latest revision",
            &["update min=50"],
            "update base=2 min=60",
            &[
                "env latest=3 active=-",
                "rev 3 tok3 td=td:1 TTR min=60 over=10 bake=0 threshold=- deadline=600 auto nodrain group=stack=prod",
            ],
        ),
        case(
            "update: based on an older revision",
            &["update min=50"],
            "update base=1 min=60",
            &["Conflict StaleRevision"],
        ),
        case(
            "update: nothing to update",
            &[],
            "update",
            &["Invalid body NothingToUpdate"],
        ),
        case(
            "update: out of range",
            &[],
            "update over=0",
            &["Invalid deploymentConfiguration.maxOverPercent InvalidParameter"],
        ),
        case(
            "update: while deleting",
            &["delete terminate"],
            "update td=td:2",
            &["Conflict EnvironmentDeleting"],
        ),
        case(
            "update: no environment",
            &["none"],
            "update td=td:2",
            &["NotFound environment ?"],
        ),
    ]);
}

#[test]
fn deploy() {
    check(vec![
        case(
            "by token",
            &[],
            "deploy token=tok1",
            &["dep d1 rev=1 pending", "env latest=1 active=d1"],
        ),
        case(
            "by token, in any case",
            &[],
            "deploy token=TOK1",
            &["dep d1 rev=1 pending", "env latest=1 active=d1"],
        ),
        case(
            "by a stale token",
            &["update td=td:2"],
            "deploy token=tok1",
            &["StaleToken tok1 tok2"],
        ),
        case(
            "by a token already deployed",
            &["deploy token=tok1"],
            "deploy token=tok1",
            &["TokenUsed d1"],
        ),
        case(
            "by the token of a revision deployed by number",
            &["deploy rev=1"],
            "deploy token=tok1",
            &["TokenUsed d1"],
        ),
        case(
            "by revision",
            &[],
            "deploy rev=1",
            &["dep d1 rev=1 pending", "env latest=1 active=d1"],
        ),
        case(
            "a missing revision",
            &[],
            "deploy rev=9",
            &["NotFound revision 9"],
        ),
        case(
            "a newer revision supersedes the one in progress",
            &["deploy rev=1", "update td=td:2"],
            "deploy rev=2",
            &[
                "dep d1 rev=1 superseded superseded=d2",
                "dep d2 rev=2 pending prev=1",
                "env latest=2 active=d2",
            ],
        ),
        case(
            "a completed deployment stays completed",
            &["deploy rev=1", "complete", "update td=td:2"],
            "deploy rev=2",
            &["dep d2 rev=2 pending prev=1", "env latest=2 active=d2"],
        ),
        case(
            "the same revision again",
            &["deploy rev=1"],
            "deploy rev=1",
            &[
                "dep d1 rev=1 superseded superseded=d2",
                "dep d2 rev=1 pending prev=1",
                "env latest=1 active=d2",
            ],
        ),
        case(
            "an older revision without rollback",
            &["update td=td:2", "deploy rev=2"],
            "deploy rev=1",
            &["Invalid revisionId RollbackRequired"],
        ),
        case(
            "an older revision with rollback",
            &["deploy rev=1", "complete", "update td=td:2", "deploy rev=2"],
            "deploy rev=1 rollback",
            &[
                "dep d2 rev=2 rolled-back by=d3 prev=1",
                "dep d3 rev=1 pending rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        case(
            "a rollback of a failed deployment leaves it failed",
            &["update noauto", "deploy rev=2", "fail"],
            "deploy rev=1 rollback",
            &[
                "dep d1 rev=2 failed by=d2",
                "dep d2 rev=1 pending rollback of=d1 prev=2",
                "env latest=2 active=d2",
            ],
        ),
        case(
            "a newer revision over a failed one",
            &["update noauto", "deploy rev=2", "fail", "update td=td:3"],
            "deploy rev=3",
            &["dep d2 rev=3 pending prev=2", "env latest=3 active=d2"],
        ),
        case(
            "while frozen",
            &["freeze"],
            "deploy rev=1",
            &["dep d1 rev=1 pending", "env latest=1 active=d1 frozen"],
        ),
        case(
            "while deleting",
            &["delete terminate"],
            "deploy rev=1",
            &["Conflict EnvironmentDeleting"],
        ),
    ]);
}

#[test]
fn rollback() {
    check(vec![
        case(
            "by default to the last deployment that completed before the active one",
            &[
                "deploy rev=1",
                "complete",
                "update td=td:2",
                "deploy rev=2",
                "complete",
                "update td=td:3",
                "deploy rev=3",
            ],
            "rollback",
            &[
                "dep d3 rev=3 rolled-back by=d4 prev=2",
                "dep d4 rev=2 pending rollback of=d3 prev=3",
                "env latest=3 active=d4",
            ],
        ),
        case(
            "the active one completed: the one before it",
            &[
                "deploy rev=1",
                "complete",
                "update td=td:2",
                "deploy rev=2",
                "complete",
            ],
            "rollback",
            &[
                "dep d2 rev=2 rolled-back by=d3 prev=1",
                "dep d3 rev=1 pending rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        case(
            "rolling back a completed rollback goes forward again",
            &[
                "deploy rev=1",
                "complete",
                "update td=td:2",
                "deploy rev=2",
                "complete",
                "rollback",
                "complete",
            ],
            "rollback",
            &[
                "dep d3 rev=1 rolled-back rollback of=d2 by=d4 prev=2",
                "dep d4 rev=2 pending rollback of=d3 prev=1",
                "env latest=2 active=d4",
            ],
        ),
        case(
            "a superseded deployment that never completed is not a target",
            &[
                "deploy rev=1",
                "complete",
                "update td=td:2",
                "deploy rev=2",
                "update td=td:3",
                "deploy rev=3",
            ],
            "rollback",
            &[
                "dep d3 rev=3 rolled-back by=d4 prev=2",
                "dep d4 rev=1 pending rollback of=d3 prev=3",
                "env latest=3 active=d4",
            ],
        ),
        case(
            "to a named revision",
            &["update td=td:2", "deploy rev=2"],
            "rollback rev=1",
            &[
                "dep d1 rev=2 rolled-back by=d2",
                "dep d2 rev=1 pending rollback of=d1 prev=2",
                "env latest=2 active=d2",
            ],
        ),
        case(
            "to a missing revision",
            &["deploy rev=1"],
            "rollback rev=7",
            &["NotFound revision 7"],
        ),
        case(
            "nothing completed before",
            &["deploy rev=1"],
            "rollback",
            &["Conflict NoRollbackTarget"],
        ),
        case(
            "nothing deployed",
            &[],
            "rollback",
            &["Conflict NothingToRollBack"],
        ),
        case(
            "a failed deployment stays failed",
            &[
                "deploy rev=1",
                "complete",
                "update td=td:2 noauto",
                "deploy rev=2",
                "fail",
            ],
            "rollback",
            &[
                "dep d2 rev=2 failed by=d3 prev=1",
                "dep d3 rev=1 pending rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        case(
            "a stopped deployment stays stopped",
            &[
                "deploy rev=1",
                "complete",
                "update td=td:2",
                "deploy rev=2",
                "stop d2",
            ],
            "rollback",
            &[
                "dep d2 rev=2 stopped by=d3 prev=1",
                "dep d3 rev=1 pending rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        case(
            "while deleting",
            &["deploy rev=1", "delete terminate"],
            "rollback rev=1",
            &["Conflict EnvironmentDeleting"],
        ),
    ]);
}

#[test]
fn stop_freeze_and_delete() {
    check(vec![
        case(
            "stop a pending deployment",
            &["deploy rev=1"],
            "stop d1",
            &["dep d1 rev=1 stopped"],
        ),
        case(
            "stop a running deployment",
            &["deploy rev=1", "run"],
            "stop d1",
            &["dep d1 rev=1 stopped"],
        ),
        case(
            "stop a rollback deployment",
            &["update td=td:2", "deploy rev=2", "deploy rev=1 rollback"],
            "stop d2",
            &["dep d2 rev=1 stopped rollback of=d1 prev=2"],
        ),
        case(
            "stop a completed deployment",
            &["deploy rev=1", "complete"],
            "stop d1",
            &["Conflict DeploymentFinished"],
        ),
        case(
            "stop a failed deployment",
            &["update noauto", "deploy rev=1", "fail"],
            "stop d1",
            &["Conflict DeploymentFinished"],
        ),
        case(
            "stop a superseded deployment",
            &["deploy rev=1", "deploy rev=1"],
            "stop d1",
            &["Conflict DeploymentFinished"],
        ),
        case(
            "stop a stopped deployment",
            &["deploy rev=1", "stop d1"],
            "stop d1",
            &["Conflict DeploymentFinished"],
        ),
        case(
            "stop an unknown deployment",
            &["deploy rev=1"],
            "stop d9",
            &["NotFound deployment d9"],
        ),
        case(
            "freeze",
            &["deploy rev=1"],
            "freeze",
            &["env latest=1 active=d1 frozen"],
        ),
        case("freeze twice: nothing to write", &["freeze"], "freeze", &[]),
        case("thaw", &["freeze"], "thaw", &["env latest=1 active=-"]),
        case("thaw what is not frozen: nothing to write", &[], "thaw", &[]),
        case(
            "freeze while deleting",
            &["delete terminate"],
            "freeze",
            &["Conflict EnvironmentDeleting"],
        ),
        case(
            "delete without terminateTasks: everything goes at once",
            &["deploy rev=1", "intent A", "failure B", "update td=td:2"],
            "delete",
            &[
                "-env latest=2 active=d1",
                &format!("-{REV1}"),
                "-rev 2 tok2 td=td:2 TTR min=90 over=10 bake=0 threshold=- deadline=600 auto nodrain group=stack=prod",
                "-dep d1 rev=1 pending",
                "-intent d1/A",
                "-failure d1/B",
            ],
        ),
        case(
            "delete with terminateTasks: deleting",
            &["deploy rev=1"],
            "delete terminate",
            &["env latest=1 active=d1 deleting"],
        ),
        case(
            "delete with terminateTasks twice: nothing to write",
            &["delete terminate"],
            "delete terminate",
            &[],
        ),
        case(
            "delete without terminateTasks while deleting: gone at once",
            &["delete terminate"],
            "delete",
            &["-env latest=1 active=- deleting", &format!("-{REV1}")],
        ),
        case(
            "delete what does not exist",
            &["none"],
            "delete",
            &["NotFound environment ?"],
        ),
    ]);
}

/// A deployment through `advance`: a history of commands, then steps, each `+SECONDS` from the first
/// step and a plan (or a command), then the stored state.
struct Run {
    name: &'static str,
    history: &'static [&'static str],
    steps: &'static [&'static str],
    expect: &'static [&'static str],
}

fn run(
    name: &'static str,
    history: &'static [&'static str],
    steps: &'static [&'static str],
    expect: &'static [&'static str],
) -> Run {
    Run {
        name,
        history,
        steps,
        expect,
    }
}

fn check_runs(runs: Vec<Run>) {
    let mut errors = Vec::new();
    for r in &runs {
        let mut world = World::new();
        for op in r.history {
            world.must(op);
        }
        let start = world.now + 1_000;
        for step in r.steps {
            let (offset, what) = step.split_once(' ').unwrap();
            let offset: u64 = offset.strip_prefix('+').unwrap().parse().unwrap();
            world.now = start + offset * 1_000;
            if what.starts_with("e=") {
                world.advance_observing(&plan(what), alarm(what));
            } else {
                world.now -= 1_000; // a command takes its second
                world.must(what);
            }
        }
        let got = world.state();
        let mut want: Vec<String> = r.expect.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        if got != want {
            errors.push(format!("{}:\n   got  {got:?}\n   want {want:?}", r.name));
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {} runs failed:\n{}",
        errors.len(),
        runs.len(),
        errors.join("\n")
    );
}

/// Revision 2 (td:2) deployed as d2 after revision 1 (td:1) completed as d1.
const SECOND: &[&str] = &["deploy rev=1", "complete", "update td=td:2", "deploy rev=2"];

/// [`SECOND`] with revision 2 watching the alarm `cpu-high`.
const ALARMED: &[&str] = &[
    "deploy rev=1",
    "complete",
    "update td=td:2 alarms=cpu-high",
    "deploy rev=2",
];

/// [`SECOND`] with a canary of 2 on revision 2.
const CANARY: &[&str] = &[
    "deploy rev=1",
    "complete",
    "update td=td:2 canary=2",
    "deploy rev=2",
];

#[test]
fn canaries_and_alarms() {
    check_runs(vec![
        run(
            "the picked canary is recorded",
            CANARY,
            &["+0 e=5 h=0 pick=i1,i2"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 running prev=1 canary=i1,i2",
                "env latest=2 active=d2",
            ],
        ),
        run(
            "a healthy canary waits for promotion, and the deadline does not run meanwhile",
            CANARY,
            &[
                "+0 e=5 h=0 pick=i1,i2",
                "+10 e=5 h=2 canary=i1,i2 canaryok",
                "+5000 e=5 h=2 canary=i1,i2 canaryok",
            ],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 awaiting-promotion prev=1 canary=i1,i2",
                "env latest=2 active=d2",
            ],
        ),
        run(
            "promoted, it rolls on and completes",
            CANARY,
            &[
                "+0 e=5 h=0 pick=i1,i2",
                "+10 e=5 h=2 canary=i1,i2 canaryok",
                "+20 promote d2",
                "+30 e=5 h=5 done",
            ],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 completed prev=1 canary=i1,i2 promoted",
                "env latest=2 active=d2",
            ],
        ),
        run(
            "autoPromote promotes by itself",
            &[
                "deploy rev=1",
                "complete",
                "update td=td:2 canary=2 autopromote",
                "deploy rev=2",
            ],
            &["+0 e=5 h=0 pick=i1,i2", "+10 e=5 h=2 canary=i1,i2 canaryok"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 running prev=1 canary=i1,i2 promoted",
                "env latest=2 active=d2",
            ],
        ),
        run(
            "a failing canary fails and rolls back",
            CANARY,
            &["+0 e=5 h=0 pick=i1,i2", "+10 e=5 h=0 a=3 canary=i1,i2"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 failed by=d3 prev=1 canary=i1,i2",
                "dep d3 rev=1 pending rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        run(
            "stopping a canary awaiting promotion",
            CANARY,
            &[
                "+0 e=5 h=0 pick=i1,i2",
                "+10 e=5 h=2 canary=i1,i2 canaryok",
                "+20 stop d2",
            ],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 stopped prev=1 canary=i1,i2",
                "env latest=2 active=d2",
            ],
        ),
        run(
            "an alarm in ALARM fails the deployment and rolls back",
            ALARMED,
            &["+0 e=5 h=0", "+10 e=5 h=2 alarm=cpu-high"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 failed by=d3 prev=1",
                "dep d3 rev=1 pending rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        run(
            "an alarm wins over completion in the same pass",
            ALARMED,
            &["+0 e=5 h=5 done alarm=cpu-high"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 failed by=d3 prev=1",
                "dep d3 rev=1 pending rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        run(
            "the rollback is not failed by the alarm still in ALARM",
            ALARMED,
            &["+0 e=5 h=2 alarm=cpu-high", "+10 e=5 h=5 done alarm=cpu-high"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 failed by=d3 prev=1",
                "dep d3 rev=1 completed rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        run(
            "an alarm the revision does not name is not its business",
            SECOND,
            &["+0 e=5 h=2 alarm=cpu-high"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 running prev=1",
                "env latest=2 active=d2",
            ],
        ),
    ]);
    let mut world = World::new();
    for op in [
        "deploy rev=1",
        "complete",
        "update td=td:2 canary=2 alarms=disk-full",
        "deploy rev=2",
    ] {
        world.must(op);
    }
    world.advance_observing(&plan("e=5 h=2 alarm=disk-full"), alarm("e=5 h=2 alarm=disk-full"));
    let failed = world.snap.deployment("d2").unwrap();
    assert_eq!(failed.reason(), Some("alarm disk-full is in ALARM"));
}

#[test]
fn promotion_is_refused_without_a_canary_awaiting() {
    check(vec![
        case(
            "no canary",
            SECOND,
            "promote d2",
            &["Conflict NotAwaitingPromotion"],
        ),
        case(
            "promoted already",
            &[
                "deploy rev=1",
                "complete",
                "update td=td:2 canary=2",
                "deploy rev=2",
                "promote d2",
            ],
            "promote d2",
            &["Conflict NotAwaitingPromotion"],
        ),
        case(
            "a finished deployment",
            &["deploy rev=1", "complete"],
            "promote d1",
            &["Conflict NotAwaitingPromotion"],
        ),
        case(
            "no such deployment",
            CANARY,
            "promote d9",
            &["NotFound deployment d9"],
        ),
        case(
            "early promotion of a running canary",
            CANARY,
            "promote d2",
            &["dep d2 rev=2 running prev=1 promoted"],
        ),
    ]);
}

#[test]
fn advance() {
    check_runs(vec![
        run(
            "pending becomes running",
            &["deploy rev=1"],
            &["+0 e=3 h=0"],
            &["dep d1 rev=1 running", "env latest=1 active=d1"],
        ),
        run(
            "running, then completed",
            &["deploy rev=1"],
            &["+0 e=3 h=0", "+10 e=3 h=3 done"],
            &["dep d1 rev=1 completed", "env latest=1 active=d1"],
        ),
        run(
            "completed at the first pass",
            &["deploy rev=1"],
            &["+0 e=3 h=3 done"],
            &["dep d1 rev=1 completed", "env latest=1 active=d1"],
        ),
        run(
            "completion wins over failures in the same pass",
            &["deploy rev=1"],
            &["+0 e=3 h=3 a=50 done"],
            &["dep d1 rev=1 completed", "env latest=1 active=d1"],
        ),
        run(
            "below the failure threshold (3 of 12)",
            SECOND,
            &["+0 e=12 h=11 a=2"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 running prev=1",
                "env latest=2 active=d2",
            ],
        ),
        run(
            "at the failure threshold: failed, rolled back to the last completed revision",
            SECOND,
            &["+0 e=12 h=11 a=2", "+10 e=12 h=11 a=3"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 failed by=d3 prev=1",
                "dep d3 rev=1 pending rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        run(
            "the threshold grows with the fleet (10 of 100)",
            SECOND,
            &["+0 e=100 h=50 a=9"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 running prev=1",
                "env latest=2 active=d2",
            ],
        ),
        run(
            "a configured threshold",
            &[
                "deploy rev=1",
                "complete",
                "update td=td:2 threshold=1",
                "deploy rev=2",
            ],
            &["+0 e=100 h=50 a=1"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 failed by=d3 prev=1",
                "dep d3 rev=1 pending rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        run(
            "no growth for just under the deadline",
            SECOND,
            &["+0 e=3 h=1", "+599 e=3 h=1"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 running prev=1",
                "env latest=2 active=d2",
            ],
        ),
        run(
            "no growth for the deadline: failed",
            SECOND,
            &["+0 e=3 h=1", "+600 e=3 h=1"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 failed by=d3 prev=1",
                "dep d3 rev=1 pending rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        run(
            "growth restarts the deadline",
            SECOND,
            &["+0 e=3 h=1", "+500 e=3 h=2", "+1099 e=3 h=2"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 running prev=1",
                "env latest=2 active=d2",
            ],
        ),
        run(
            "growth restarts the deadline, which then passes",
            SECOND,
            &["+0 e=3 h=1", "+500 e=3 h=2", "+1100 e=3 h=2"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 failed by=d3 prev=1",
                "dep d3 rev=1 pending rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        run(
            "a drop and a recovery is not growth",
            SECOND,
            &["+0 e=3 h=2", "+100 e=3 h=1", "+300 e=3 h=2", "+600 e=3 h=2"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 failed by=d3 prev=1",
                "dep d3 rev=1 pending rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        run(
            "a configured deadline",
            &[
                "deploy rev=1",
                "complete",
                "update td=td:2 deadline=60 noauto",
                "deploy rev=2",
            ],
            &["+0 e=3 h=1", "+60 e=3 h=1"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 failed prev=1",
                "env latest=2 active=d2",
            ],
        ),
        run(
            "frozen: the deadline does not run",
            SECOND,
            &[
                "+0 e=3 h=1",
                "+100 freeze",
                "+700 e=3 h=1",
                "+800 thaw",
                "+800 e=3 h=1",
                "+1299 e=3 h=1",
            ],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 running prev=1",
                "env latest=2 active=d2",
            ],
        ),
        run(
            "frozen, thawed: the deadline runs again from the thaw",
            SECOND,
            &[
                "+0 e=3 h=1",
                "+100 freeze",
                "+700 e=3 h=1",
                "+800 thaw",
                "+1300 e=3 h=1",
            ],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 failed by=d3 prev=1",
                "dep d3 rev=1 pending rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        run(
            "frozen: a pending deployment stays pending",
            &["deploy rev=1", "freeze"],
            &["+0 e=3 h=3 done"],
            &["dep d1 rev=1 pending", "env latest=1 active=d1 frozen"],
        ),
        run(
            "frozen: failures wait",
            SECOND,
            &["+0 e=12 h=11", "+1 freeze", "+2 e=12 h=11 a=50"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 running prev=1",
                "env latest=2 active=d2 frozen",
            ],
        ),
        run(
            "deleting: nothing",
            &["deploy rev=1", "delete terminate"],
            &["+0 e=3 h=3 done"],
            &["dep d1 rev=1 pending", "env latest=1 active=d1 deleting"],
        ),
        run(
            "a completed deployment does not fail",
            &["deploy rev=1", "complete"],
            &["+0 e=3 h=0 a=500", "+5000 e=3 h=0"],
            &["dep d1 rev=1 completed", "env latest=1 active=d1"],
        ),
        run(
            "a stopped deployment does not move",
            &["deploy rev=1", "stop d1"],
            &["+0 e=3 h=3 done"],
            &["dep d1 rev=1 stopped", "env latest=1 active=d1"],
        ),
        run(
            "without autoRollback: failed, nothing else",
            &[
                "deploy rev=1",
                "complete",
                "update td=td:2 noauto",
                "deploy rev=2",
            ],
            &["+0 e=3 h=0 a=3"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 failed prev=1",
                "env latest=2 active=d2",
            ],
        ),
        run(
            "nothing completed before: failed, nothing else",
            &["deploy rev=1"],
            &["+0 e=3 h=0 a=3"],
            &["dep d1 rev=1 failed", "env latest=1 active=d1"],
        ),
        run(
            "a rollback that fails does not roll back",
            SECOND,
            &["+0 e=3 h=0 a=3", "+1 e=3 h=0", "+2 e=3 h=0 a=3"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 failed by=d3 prev=1",
                "dep d3 rev=1 failed rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        run(
            "a manual rollback that fails does not roll back",
            &[
                "deploy rev=1",
                "complete",
                "update td=td:2",
                "deploy rev=2",
                "complete",
                "rollback",
            ],
            &["+0 e=3 h=0 a=3"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 rolled-back by=d3 prev=1",
                "dep d3 rev=1 failed rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
        run(
            "the last completed revision has the same task definition: no rollback",
            &["deploy rev=1", "complete", "update min=50", "deploy rev=2"],
            &["+0 e=3 h=0 a=3"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 failed prev=1",
                "env latest=2 active=d2",
            ],
        ),
        run(
            "the target is the most recently completed",
            &[
                "deploy rev=1",
                "complete",
                "update td=td:2",
                "deploy rev=2",
                "complete",
                "update td=td:3",
                "deploy rev=3",
            ],
            &["+0 e=3 h=0 a=3"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 completed prev=1",
                "dep d3 rev=3 failed by=d4 prev=2",
                "dep d4 rev=2 pending rollback of=d3 prev=3",
                "env latest=3 active=d4",
            ],
        ),
        run(
            "a rollback deployment of a failed one completes",
            SECOND,
            &["+0 e=3 h=0 a=3", "+1 e=3 h=3 done"],
            &[
                "dep d1 rev=1 completed",
                "dep d2 rev=2 failed by=d3 prev=1",
                "dep d3 rev=1 completed rollback of=d2 prev=2",
                "env latest=2 active=d3",
            ],
        ),
    ]);
}

/// What `advance` writes besides the status: counts and attempts at transitions, the reason, the times.
#[test]
fn advance_records_counts_reasons_and_times() {
    let mut world = World::new();
    for op in SECOND {
        world.must(op);
    }
    world.now += 1_000;
    let started = world.now;
    let changes = world.advance(&plan("e=12 h=4 a=1"));
    assert_eq!(changes.put.len(), 1, "pending → running is written");
    let d2 = world.snap.deployment("d2").unwrap().clone();
    assert_eq!(d2.started_at, Some(started));
    assert_eq!(d2.ended_at, None);
    assert_eq!(
        d2.counts,
        Counts {
            desired: 12,
            healthy: 4,
            total: 4
        }
    );
    assert_eq!(d2.failed_attempts, 1);
    world.now += 1_000;
    assert!(
        world.advance(&plan("e=12 h=5 a=1")).is_empty(),
        "no transition, nothing written"
    );
    world.now += 1_000;
    world.advance(&plan("e=12 h=5 a=3"));
    let d2 = world.snap.deployment("d2").unwrap();
    assert_eq!(d2.status, DeploymentStatus::Failed);
    assert_eq!(d2.ended_at, Some(world.now));
    assert_eq!(d2.failed_attempts, 3);
    let reason = d2.reason().unwrap();
    assert!(
        reason.contains("3 failed start attempts") && reason.contains("threshold of 3"),
        "{reason}"
    );
    let statuses: Vec<&str> = d2.history.iter().map(|t| t.status.name()).collect();
    assert_eq!(statuses, ["pending", "running", "failed"]);
    let d3 = world.snap.deployment("d3").unwrap();
    assert!(
        d3.reason()
            .unwrap()
            .contains("automatic rollback of failed deployment d2")
    );
    assert_eq!((d3.created_at, d3.started_at), (world.now, None));
}

/// The stored documents survive JSON, in their wire shape (camelCase, RFC 3339 times, the status flat
/// in the environment).
#[test]
fn documents_round_trip_through_json() {
    let mut world = World::new();
    for op in [
        "deploy rev=1",
        "complete",
        "update td=td:2 checks method=RTT threshold=4",
        "deploy rev=2",
        "intent A",
        "failure A",
        "delete terminate",
    ] {
        world.must(op);
    }
    let snap = &world.snap;
    fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
        value: &T,
    ) -> serde_json::Value {
        let json = serde_json::to_value(value).unwrap();
        let back: T = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(&back, value, "{json}");
        json
    }
    let env = round_trip(snap.environment.as_ref().unwrap());
    assert_eq!(env["status"], "deleting");
    assert_eq!(env["terminateTasks"], true);
    assert_eq!(env["clusterARN"], common::CLUSTER_ARN);
    assert!(env["createdAt"].as_str().unwrap().ends_with('Z'), "{env}");
    let mut active = snap.environment.clone().unwrap();
    active.status = blox_model::EnvironmentStatus::Active;
    let json = round_trip(&active);
    assert_eq!(json["status"], "active");
    assert!(json.get("terminateTasks").is_none(), "{json}");
    for r in &snap.revisions {
        let json = round_trip(r);
        assert_eq!(json["environmentName"], "web");
    }
    let rev2 = round_trip(snap.revision(2).unwrap());
    assert_eq!(rev2["deploymentMethod"], "ReplaceThenTerminate");
    assert_eq!(rev2["deploymentConfiguration"]["failureThreshold"], 4);
    assert_eq!(rev2["healthChecks"], true);
    for d in &snap.deployments {
        round_trip(d);
    }
    let d1 = round_trip(snap.deployment("d1").unwrap());
    assert_eq!(d1["status"], "completed");
    assert_eq!(d1["history"][2]["status"], "completed");
    let rolled_back = Deployment {
        status: DeploymentStatus::RolledBack,
        ..snap.deployment("d1").unwrap().clone()
    };
    assert_eq!(round_trip(&rolled_back)["status"], "rolled-back");
    let intent = round_trip(&snap.intents[0]);
    assert_eq!(intent["containerInstanceARN"], "A");
    assert!(intent["recordedAt"].is_string());
    let failure = round_trip(&snap.failures[0]);
    assert!(
        failure["retryAt"].is_string() && failure.get("tasks").is_none(),
        "{failure}"
    );
    // Older documents without the newer fields still read.
    let old: Environment = serde_json::from_value(serde_json::json!({
        "name": "web", "cluster": "prod", "clusterARN": common::CLUSTER_ARN, "latestRevision": 1,
        "status": "deleting", "createdAt": "2024-01-01T00:00:00.000Z", "updatedAt": "2024-01-01T00:00:00Z",
    }))
    .unwrap();
    assert_eq!(
        old.status,
        blox_model::EnvironmentStatus::Deleting {
            terminate_tasks: true
        }
    );
    assert!(!old.frozen);
}

/// An environment's health: its deployment failed, instances cannot start the task, or too few have a
/// healthy daemon.
#[test]
fn environment_health() {
    use blox_model::Health;
    use blox_model::daemon::health;

    let mut world = World::new();
    world.must("deploy rev=1");
    let plan = |eligible, healthy, floor, failing| Plan {
        fleet: Fleet {
            eligible,
            healthy,
            floor,
            failing,
            ..Fleet::default()
        },
        failure_example: Some("RESOURCE:MEMORY on i1".into()),
        ..Plan::default()
    };
    let active = world.snap.active().cloned();
    let cases = [
        (plan(12, 12, 11, 0), Health::Healthy, None),
        (plan(12, 11, 11, 0), Health::Healthy, None),
        (
            plan(12, 10, 11, 0),
            Health::Unhealthy,
            Some("10 of 12 instances have a healthy daemon, below the floor of 11"),
        ),
        (
            plan(12, 12, 11, 2),
            Health::Unhealthy,
            Some("2 of 12 instances cannot start the task (RESOURCE:MEMORY on i1)"),
        ),
    ];
    for (plan, want, why) in cases {
        let (health, reason) = health(active.as_ref(), &plan);
        assert_eq!((health, reason.as_deref()), (want, why), "{:?}", plan.fleet);
    }
    assert_eq!(
        health(None, &plan(0, 0, 0, 0)).0,
        Health::Healthy,
        "nothing deployed"
    );
    world.must("fail");
    let failed = world.snap.active().cloned();
    let (health, reason) = health(failed.as_ref(), &plan(12, 12, 11, 0));
    assert_eq!(health, Health::Unhealthy);
    assert!(reason.unwrap().starts_with("deployment d1 failed: "));
}

#[test]
fn available_commands_are_those_the_lifecycle_accepts() {
    // (history, the commands offered after it)
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &["deploy", "freeze"]),
        (&["deploy rev=1"], &["deploy", "freeze", "stop"]),
        (&["deploy rev=1", "complete"], &["deploy", "freeze"]),
        (SECOND, &["deploy", "freeze", "stop", "rollback"]),
        (CANARY, &["deploy", "freeze", "stop", "promote", "rollback"]),
        (&["deploy rev=1", "freeze"], &["deploy", "thaw", "stop"]),
        (&["deploy rev=1", "stop d1"], &["deploy", "freeze"]),
        (&["deploy rev=1", "delete terminate"], &[]),
    ];
    let mut errors = Vec::new();
    for (history, want) in cases {
        let mut world = World::new();
        for op in *history {
            world.must(op);
        }
        let got = lifecycle::available(&world.snap, world.now);
        if got != *want {
            errors.push(format!("{history:?}:\n   got  {got:?}\n   want {want:?}"));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
