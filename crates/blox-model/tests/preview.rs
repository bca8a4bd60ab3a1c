//! Deployment previews (`dryRun`): the planner run over a copy of the view in which every action
//! succeeds at once. One `check()` over cases: a fleet, a revision, what the preview must say.

mod common;

use blox_model::ClusterName;
use blox_model::daemon::{
    self, Action, Canary, ClusterView, DeploymentConfiguration, DeploymentMethod, Environment,
    EnvironmentStatus, InstanceGroup, Preview, PreviewInput, Revision,
};
use common::{TaskSpec, attribute, container_instance};

const NOW: u64 = 10_000_000;
const ENV: &str = "web";

/// `n` instances `i00`…, every one running the old revision (d2, td:2) healthy for ten minutes but
/// those listed in `bare`; instances in `outside` are not in the group (stack=dev).
fn fleet(n: usize, bare: &[usize], outside: &[usize]) -> ClusterView {
    let mut view = ClusterView::default();
    for i in 0..n {
        let arn = format!("i{i:02}");
        let stack = if outside.contains(&i) { "dev" } else { "prod" };
        view.upsert_instance(&container_instance(
            &arn,
            "ACTIVE",
            true,
            vec![attribute("stack", Some(stack))],
        ));
        if bare.contains(&i) {
            continue;
        }
        let task = TaskSpec {
            arn: &format!("{arn}.0"),
            instance: &arn,
            group: "blox:web",
            started_by: "d2",
            task_definition: "td:2",
            last_status: "RUNNING",
            desired_status: "RUNNING",
            health: None,
            started_at: Some(NOW - 600_000),
            stopped_at: None,
            stopped_reason: None,
            updated_at: None,
        }
        .entity();
        view.upsert_task(&task, NOW - 600_000);
    }
    view
}

fn revision(method: DeploymentMethod, tune: impl FnOnce(&mut DeploymentConfiguration)) -> Revision {
    let mut config = DeploymentConfiguration::default();
    tune(&mut config);
    Revision {
        environment: ENV.into(),
        number: 3,
        token: "t3".into(),
        task_definition: "td:3".into(),
        health_checks: false,
        instance_group: InstanceGroup {
            cluster_arn: common::CLUSTER_ARN.into(),
            attributes: vec![attribute("stack", Some("prod"))],
            query: None,
        },
        deployment_method: method,
        deployment_configuration: config,
        created_at: 0,
    }
}

fn run(view: &ClusterView, revision: &Revision) -> Preview {
    let environment = Environment {
        name: ENV.into(),
        cluster: ClusterName::new("prod").unwrap(),
        cluster_arn: common::CLUSTER_ARN.into(),
        latest_revision: 3,
        active_deployment: Some("d2".into()),
        status: EnvironmentStatus::Active,
        frozen: false,
        created_at: 0,
        updated_at: 0,
    };
    daemon::preview(&PreviewInput {
        environment: &environment,
        revision,
        deployment_ids: &["d2"],
        health_checked: &[],
        cluster: view,
        rollback: false,
        now_ms: NOW,
        calls_per_second: 10.0,
    })
}

/// `starts/stops` per batch, `P` before a batch after the canary's promotion.
fn shape(preview: &Preview) -> String {
    preview
        .batches
        .iter()
        .map(|b| {
            format!(
                "{}{}/{}",
                if b.after_promotion { "P" } else { "" },
                b.starts.len(),
                b.stops.len()
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn actions(preview: &Preview) -> String {
    preview
        .instances
        .iter()
        .map(|(arn, action, _)| format!("{arn}:{}", action.name()))
        .collect::<Vec<_>>()
        .join(" ")
}

struct Case {
    name: &'static str,
    view: ClusterView,
    revision: Revision,
    shape: &'static str,
    actions: Option<&'static str>,
    complete: bool,
}

fn check(cases: Vec<Case>) {
    let mut errors = Vec::new();
    for case in &cases {
        let preview = run(&case.view, &case.revision);
        if shape(&preview) != case.shape {
            errors.push(format!(
                "{}: batches {:?}, want {:?}",
                case.name,
                shape(&preview),
                case.shape
            ));
        }
        if let Some(want) = case.actions
            && actions(&preview) != want
        {
            errors.push(format!(
                "{}: actions {:?}, want {:?}",
                case.name,
                actions(&preview),
                want
            ));
        }
        if preview.complete != case.complete {
            errors.push(format!(
                "{}: complete {}, stalled {:?}",
                case.name, preview.complete, preview.stalled
            ));
        }
        // Never below the floor, never two tasks where a start is planned beside a live one
        // (TerminateThenReplace): the preview runs the same rules as the rollout.
        let starts: usize = preview.batches.iter().map(|b| b.starts.len()).sum();
        let replaced_or_started = preview
            .instances
            .iter()
            .filter(|(_, a, _)| matches!(a, Action::Start | Action::Replace))
            .count();
        if preview.complete && starts != replaced_or_started {
            errors.push(format!(
                "{}: {starts} starts for {replaced_or_started} instances",
                case.name
            ));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn previews() {
    check(vec![
        Case {
            name: "TerminateThenReplace at 90% of 10: one at a time, stop then start",
            view: fleet(10, &[], &[]),
            revision: revision(DeploymentMethod::TerminateThenReplace, |_| {}),
            shape: "0/1 1/0 0/1 1/0 0/1 1/0 0/1 1/0 0/1 1/0 0/1 1/0 0/1 1/0 0/1 1/0 0/1 1/0 0/1 1/0",
            actions: Some(
                "i00:replace i01:replace i02:replace i03:replace i04:replace i05:replace i06:replace i07:replace i08:replace i09:replace",
            ),
            complete: true,
        },
        Case {
            name: "ReplaceThenTerminate with a surge of 5",
            view: fleet(10, &[], &[]),
            revision: revision(DeploymentMethod::ReplaceThenTerminate, |c| {
                c.max_over_percent = 50
            }),
            shape: "5/0 0/5 5/0 0/5",
            actions: None,
            complete: true,
        },
        Case {
            name: "new instances start at once, one out of the group is stopped, the rest replaced",
            view: fleet(4, &[0, 1], &[3]),
            revision: revision(DeploymentMethod::TerminateThenReplace, |c| {
                c.min_healthy_percent = 0
            }),
            shape: "2/2 1/0",
            actions: Some("i00:start i01:start i02:replace i03:stop"),
            complete: true,
        },
        Case {
            name: "a canary of 2 first, then the promotion, then the rest",
            view: fleet(6, &[], &[]),
            revision: revision(DeploymentMethod::TerminateThenReplace, |c| {
                c.min_healthy_percent = 50;
                c.canary = Some(Canary {
                    instances: Some(2),
                    percent: None,
                    query: None,
                    auto_promote: false,
                });
            }),
            shape: "0/2 2/0 P0/3 3/0 0/1 1/0",
            actions: None,
            complete: true,
        },
        Case {
            name: "TerminateThenReplace at 100% cannot replace anything",
            view: fleet(3, &[], &[]),
            revision: revision(DeploymentMethod::TerminateThenReplace, |c| {
                c.min_healthy_percent = 100
            }),
            shape: "",
            actions: Some("i00:keep i01:keep i02:keep"),
            complete: false,
        },
    ]);
    let stalled = run(
        &fleet(3, &[], &[]),
        &revision(DeploymentMethod::TerminateThenReplace, |c| {
            c.min_healthy_percent = 100
        }),
    );
    assert!(
        stalled
            .stalled
            .as_deref()
            .unwrap_or_default()
            .contains("below the floor"),
        "{:?}",
        stalled.stalled
    );
    let canary = run(
        &fleet(6, &[], &[]),
        &revision(DeploymentMethod::TerminateThenReplace, |c| {
            c.canary = Some(Canary {
                instances: Some(2),
                percent: None,
                query: None,
                auto_promote: false,
            });
        }),
    );
    assert_eq!(canary.canary, Some(vec!["i00".to_owned(), "i01".to_owned()]));
}

/// The estimate counts calls at the rate, StartTask in tens, and the bake time per batch that starts.
#[test]
fn the_estimate_follows_the_call_rate_and_the_bake_time() {
    let preview = run(
        &fleet(40, &(0..40).collect::<Vec<_>>(), &[]),
        &revision(DeploymentMethod::TerminateThenReplace, |c| {
            c.min_healthy_seconds = 30
        }),
    );
    assert_eq!(shape(&preview), "40/0");
    assert_eq!((preview.start_calls, preview.stop_calls), (4, 0));
    assert!(
        (preview.estimated_seconds - (4.0 / 10.0 + 30.0)).abs() < 1e-9,
        "{}",
        preview.estimated_seconds
    );
}
