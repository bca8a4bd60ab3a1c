//! `blox env` and `blox deploy`: the daemon scheduler's environments and deployments, over Blox v1.0's
//! API (`/v1/{cluster}/environments`). Commands name an environment; its cluster comes from `--cluster`
//! or, by default, from v0.3's `GET /v1/environments/{name}` (names are unique across clusters).

use std::fmt;
use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{Context as _, Result};
use blox_api::{
    AttributeBody, CanaryBody, CreateEnvironment, DeploymentConfigurationBody, DeploymentPlan, DeploymentV1,
    EnvironmentRevision, EnvironmentV1, InstanceGroup, PageQuery, RevisionId, TaskCounts, UpdateEnvironment,
};
use blox_client::{Client, ClientError};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{Endpoint, print_json};
use blox_client::table::{render, short_arn};

/// How often `--wait` polls the deployment.
const POLL: Duration = Duration::from_millis(500);
/// How often `env status --watch` redraws.
const WATCH: Duration = Duration::from_secs(1);

/// Exit codes of `deploy start --wait` and `deploy rollback --wait` when the deployment ends other
/// than completed (1 is any other error, 2 a usage error).
pub mod exit {
    pub const FAILED: u8 = 3;
    pub const STOPPED: u8 = 4;
    pub const SUPERSEDED: u8 = 5;
    pub const ROLLED_BACK: u8 = 6;
    pub const AWAITING_PROMOTION: u8 = 7;
}

const WAIT_HELP: &str = "\
Exit codes with --wait:
  0  the deployment completed
  1  an error (the API's code and message are printed)
  2  a usage error
  3  the deployment failed (an automatic rollback's id is printed)
  4  the deployment was stopped
  5  the deployment was superseded by a newer one
  6  the deployment was rolled back
  7  the deployment's canary awaits promotion (`blox deploy promote ENV ID`)";

const STATUS_HELP: &str = "\
ACTIVE is the revision last fully deployed, TARGET the active deployment's; STATUS is the active
deployment's status, or Frozen or Deleting. Revision statuses: Created (never deployed); for the
target, Pending, Deploying, AwaitingPromotion, Active, Failed or Stopped (its deployment's); for other revisions with
tasks, Undeploying or Reverting (being replaced) or Running (left by a deployment that did not
complete).";

/// A deployment followed with `--wait` ended other than completed: `main` prints the message and
/// exits with the code.
#[derive(Debug)]
pub struct Ended {
    pub code: u8,
    message: String,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Ended {}

/// The environment's cluster: given, or looked up.
#[derive(Args, Debug, Clone)]
pub struct Locate {
    /// The environment's cluster (name or ARN); by default looked up by the environment's name.
    #[arg(long)]
    cluster: Option<String>,
}

/// How a revision is rolled out. Unset flags keep the server's defaults (create) or the latest
/// revision's values (update).
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigFlags {
    /// TerminateThenReplace (stop, then start: never two tasks on an instance) or
    /// ReplaceThenTerminate (start, then stop: never none).
    #[arg(long, value_parser = ["TerminateThenReplace", "ReplaceThenTerminate"])]
    method: Option<String>,
    /// TerminateThenReplace: healthy instances never fall below this percentage (0-100, default 90).
    #[arg(long, value_name = "N")]
    min_healthy_percent: Option<u32>,
    /// ReplaceThenTerminate: at most this percentage of instances run two tasks at once (1-100,
    /// default 10).
    #[arg(long, value_name = "N")]
    max_over_percent: Option<u32>,
    /// A task counts as healthy once it has been so for this long (default 0).
    #[arg(long, value_name = "N")]
    min_healthy_seconds: Option<u32>,
    /// Failed start attempts that fail a deployment (default 10% of the instances, 3 to 200).
    #[arg(long, value_name = "N")]
    failure_threshold: Option<u32>,
    /// A deployment fails when its healthy count has not grown for this long (default 600).
    #[arg(long, value_name = "N")]
    progress_deadline_seconds: Option<u32>,
    /// Do not roll a failed deployment back by itself.
    #[arg(long, overrides_with = "auto_rollback")]
    no_auto_rollback: bool,
    /// Roll a failed deployment back to the last completed revision (the default).
    #[arg(long, overrides_with = "no_auto_rollback")]
    auto_rollback: bool,
    /// Stop the daemon on an instance that starts draining.
    #[arg(long, overrides_with = "no_stop_on_drain")]
    stop_on_drain: bool,
    /// Keep the daemon on draining instances (the default).
    #[arg(long, overrides_with = "stop_on_drain")]
    no_stop_on_drain: bool,
    /// Canary: roll out to this many instances first, then wait for `blox deploy promote`
    /// (0 removes the canary).
    #[arg(long, value_name = "N", conflicts_with_all = ["canary_percent", "canary_query"])]
    canary_instances: Option<u32>,
    /// Canary: roll out to this percentage of the instances first (1-100).
    #[arg(long, value_name = "P", conflicts_with = "canary_query")]
    canary_percent: Option<u32>,
    /// Canary: roll out to the instances matching this cluster query first.
    #[arg(long, value_name = "QUERY")]
    canary_query: Option<String>,
    /// Promote the canary by itself once it has been healthy for the bake time.
    #[arg(long)]
    auto_promote: bool,
    /// A CloudWatch alarm that fails the deployment when in ALARM; repeatable (replaces the list).
    #[arg(long = "alarm", value_name = "NAME")]
    alarms: Vec<String>,
    /// Watch no CloudWatch alarm any more.
    #[arg(long, conflicts_with = "alarms")]
    no_alarms: bool,
    /// An instance without a healthy daemon of the active revision for longer than this is
    /// uncovered (default 60).
    #[arg(long, value_name = "N")]
    coverage_grace_seconds: Option<u32>,
}

impl ConfigFlags {
    fn method(&self) -> Option<String> {
        self.method.clone()
    }

    /// The configuration to send, or none when no flag was given.
    fn body(&self) -> Option<DeploymentConfigurationBody> {
        let flag = |on: bool, off: bool| {
            if off {
                Some(false)
            } else if on {
                Some(true)
            } else {
                None
            }
        };
        let body = DeploymentConfigurationBody {
            min_healthy_percent: self.min_healthy_percent.map(i64::from),
            max_over_percent: self.max_over_percent.map(i64::from),
            min_healthy_seconds: self.min_healthy_seconds.map(i64::from),
            failure_threshold: self.failure_threshold.map(i64::from),
            progress_deadline_seconds: self.progress_deadline_seconds.map(i64::from),
            auto_rollback: flag(self.auto_rollback, self.no_auto_rollback),
            stop_on_drain: flag(self.stop_on_drain, self.no_stop_on_drain),
            canary: (self.canary_instances.is_some()
                || self.canary_percent.is_some()
                || self.canary_query.is_some())
            .then(|| CanaryBody {
                instances: self.canary_instances.map(i64::from),
                percent: self.canary_percent.map(i64::from),
                query: self.canary_query.clone(),
                auto_promote: self.auto_promote.then_some(true),
            }),
            alarms: if self.no_alarms {
                Some(Vec::new())
            } else {
                (!self.alarms.is_empty()).then(|| self.alarms.clone())
            },
            coverage_grace_seconds: self.coverage_grace_seconds.map(i64::from),
        };
        (body != DeploymentConfigurationBody::default()).then_some(body)
    }
}

/// `NAME` or `NAME=VALUE`.
fn parse_attribute(text: &str) -> Result<AttributeBody, String> {
    let (name, value) = match text.split_once('=') {
        Some((name, value)) => (name, Some(value.to_owned())),
        None => (text, None),
    };
    if name.trim().is_empty() {
        return Err(format!("{text:?}: expected NAME or NAME=VALUE"));
    }
    Ok(AttributeBody {
        name: name.to_owned(),
        value,
    })
}

#[derive(Subcommand, Debug)]
pub enum EnvCommand {
    /// Create an environment (checked against ECS) with its revision 1; nothing runs until it is
    /// deployed (`blox deploy start NAME`).
    Create {
        /// 1 to 30 letters, digits, '-' or '_', unique across clusters.
        name: String,
        /// Cluster name or ARN.
        #[arg(long)]
        cluster: String,
        /// FAMILY, FAMILY:REVISION or an ARN.
        #[arg(long)]
        task_definition: String,
        #[command(flatten)]
        config: ConfigFlags,
        /// Run only on instances with this attribute (any value) or this value; repeatable.
        #[arg(long = "attribute", value_name = "NAME[=VALUE]", value_parser = parse_attribute)]
        attributes: Vec<AttributeBody>,
        /// Run only on instances matching this cluster query, e.g. 'attribute:stack == prod'.
        #[arg(long, value_name = "QUERY")]
        query: Option<String>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Make a new revision of an environment from its latest one and the flags given; nothing is
    /// deployed until `blox deploy start NAME`.
    Update {
        name: String,
        /// FAMILY, FAMILY:REVISION or an ARN.
        #[arg(long)]
        task_definition: Option<String>,
        #[command(flatten)]
        config: ConfigFlags,
        /// The new instance group's attributes; repeatable. `--attribute` and `--query` together are
        /// the new group: they replace the latest revision's attributes and query both.
        #[arg(long = "attribute", value_name = "NAME[=VALUE]", value_parser = parse_attribute)]
        attributes: Vec<AttributeBody>,
        /// The new instance group's cluster query, e.g. 'attribute:stack == prod'.
        #[arg(long, value_name = "QUERY")]
        query: Option<String>,
        /// Run on every instance of the cluster again.
        #[arg(long, conflicts_with_all = ["attributes", "query"])]
        clear_attributes: bool,
        /// Refuse the update unless revision N is still the latest (someone else's update wins).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        base_revision: Option<u64>,
        #[command(flatten)]
        locate: Locate,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Show an environment: its latest revision, active deployment and counts.
    #[command(alias = "get")]
    Describe {
        name: String,
        #[command(flatten)]
        locate: Locate,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// The environment and its revisions with live task counts.
    #[command(after_help = STATUS_HELP)]
    Status {
        name: String,
        /// Redraw every second until Ctrl-C.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        locate: Locate,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// List environments (of every cluster, or of one).
    List {
        #[arg(long)]
        cluster: Option<String>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Delete an environment; its tasks are left running unless --terminate-tasks.
    Delete {
        name: String,
        /// Stop the environment's tasks first (it is Deleting until they are stopped).
        #[arg(long)]
        terminate_tasks: bool,
        #[command(flatten)]
        locate: Locate,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Freeze an environment: deployments are taken but nothing is started or stopped until thawed.
    Freeze {
        name: String,
        #[command(flatten)]
        locate: Locate,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Thaw a frozen environment: the scheduler acts on it again.
    Thaw {
        name: String,
        #[command(flatten)]
        locate: Locate,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeployCommand {
    /// Deploy a revision of an environment (by default its latest); a deployment in progress is
    /// superseded.
    #[command(after_help = WAIT_HELP)]
    Start {
        /// The environment's name.
        env: String,
        /// The revision to deploy (default: the latest).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        revision: Option<u64>,
        /// Deploy a revision older than the active one (a rollback).
        #[arg(long)]
        rollback: bool,
        /// Follow the deployment until it ends; the exit code says how it ended.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        locate: Locate,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Roll back to a revision (by default that of the last deployment that completed before the
    /// active one).
    #[command(after_help = WAIT_HELP)]
    Rollback {
        env: String,
        /// The revision to roll back to.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        revision: Option<u64>,
        /// Follow the rollback until it ends; the exit code says how it ended.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        locate: Locate,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Show what deploying a revision would do now, without doing it: per instance keep / start /
    /// replace / stop, the batches in order, the floor and surge, the canary, an estimated duration.
    Plan {
        env: String,
        /// The revision to plan (default: the latest).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        revision: Option<u64>,
        /// Plan a revision older than the active one (a rollback).
        #[arg(long)]
        rollback: bool,
        /// List every batch's instances, not only their counts.
        #[arg(long)]
        verbose: bool,
        #[command(flatten)]
        locate: Locate,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Promote a deployment's canary: the rollout goes on to the rest of the fleet.
    #[command(after_help = WAIT_HELP)]
    Promote {
        env: String,
        deployment_id: String,
        /// Follow the deployment until it ends; the exit code says how it ended.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        locate: Locate,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Stop a deployment in progress: progress halts, tasks are left as they are.
    Stop {
        env: String,
        deployment_id: String,
        #[command(flatten)]
        locate: Locate,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// List an environment's deployments, newest first.
    List {
        env: String,
        #[command(flatten)]
        locate: Locate,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Show a deployment: status, counts, failures per instance, history.
    #[command(alias = "get")]
    Describe {
        env: String,
        deployment_id: String,
        #[command(flatten)]
        locate: Locate,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

/// The cluster to put in v1.0 paths: the one given, or the environment's cluster ARN (an ARN rather
/// than a name, since a cluster may be named like a static path segment).
/// A client of `endpoint`, and the cluster of environment `name`.
async fn connect(endpoint: &Endpoint, name: &str, locate: &Locate) -> Result<(Client, String)> {
    let client = endpoint.client()?;
    let cluster = cluster_of(&client, name, locate).await?;
    Ok((client, cluster))
}

async fn cluster_of(client: &Client, name: &str, locate: &Locate) -> Result<String> {
    if let Some(cluster) = &locate.cluster {
        return Ok(cluster.clone());
    }
    let env = client.get_environment(name).await?;
    Ok(env.instance_group.cluster)
}

// ---- output ------------------------------------------------------------------------------------------

/// `label  value` lines, labels aligned.
fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (label, value) in fields {
        let label = format!("{label}:");
        println!("{label:<width$} {value}", width = width + 1);
    }
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn group_text(group: &InstanceGroup) -> String {
    let mut parts: Vec<String> = group
        .attributes
        .iter()
        .map(|a| match &a.value {
            Some(value) => format!("{}={value}", a.name),
            None => a.name.clone(),
        })
        .collect();
    parts.extend(group.query.iter().map(|q| format!("query: {q}")));
    if parts.is_empty() {
        return "every instance of the cluster".to_owned();
    }
    parts.join(", ")
}

fn config_fields(method: &str, c: &DeploymentConfigurationBody) -> Vec<(&'static str, String)> {
    vec![
        ("Method", method.to_owned()),
        ("Min healthy percent", or_dash(c.min_healthy_percent)),
        ("Max over percent", or_dash(c.max_over_percent)),
        ("Min healthy seconds", or_dash(c.min_healthy_seconds)),
        (
            "Failure threshold",
            c.failure_threshold.map_or_else(
                || "default (10% of the instances, 3 to 200)".to_owned(),
                |n| n.to_string(),
            ),
        ),
        ("Progress deadline seconds", or_dash(c.progress_deadline_seconds)),
        ("Auto rollback", or_dash(c.auto_rollback)),
        ("Stop on drain", or_dash(c.stop_on_drain)),
    ]
}

fn counts_text(c: &TaskCounts) -> String {
    format!("{} desired, {} healthy, {} total", c.desired, c.healthy, c.total)
}

fn show_environment(e: &EnvironmentV1) {
    let mut fields = vec![
        ("Environment", e.environment_name.clone()),
        ("Cluster", e.cluster.clone()),
        ("Status", e.environment_status.clone()),
        (
            "Health",
            match &e.health_reason {
                Some(reason) => format!("{} ({reason})", e.environment_health),
                None => e.environment_health.clone(),
            },
        ),
        ("Latest revision", e.latest_environment_revision_id.0.to_string()),
        (
            "Active revision",
            or_dash(e.active_environment_revision_id.map(|r| r.0)),
        ),
        ("Active deployment", or_dash(e.active_deployment_id.as_deref())),
        ("Tasks", counts_text(&e.counts)),
        ("Task definition", e.task_definition.clone()),
        ("Instances", group_text(&e.instance_group)),
    ];
    fields.extend(config_fields(&e.deployment_method, &e.deployment_configuration));
    fields.push(("Created", e.created_at.clone()));
    fields.push(("Updated", e.updated_at.clone()));
    print_fields(&fields);
}

const DEPLOY_HEADERS: &[&str] = &[
    "ID",
    "STATUS",
    "REVISION",
    "TASK DEFINITION",
    "DESIRED",
    "HEALTHY",
    "TOTAL",
    "FAILED STARTS",
    "CREATED",
    "NOTE",
];

fn deployment_note(d: &DeploymentV1) -> String {
    let mut notes = Vec::new();
    if let Some(of) = &d.rollback_of {
        notes.push(format!("rollback of {of}"));
    } else if d.rollback {
        notes.push("rollback".to_owned());
    }
    if let Some(by) = &d.rolled_back_by {
        notes.push(format!("rolled back by {by}"));
    }
    if let Some(by) = &d.superseded_by {
        notes.push(format!("superseded by {by}"));
    }
    notes.join("; ")
}

fn deploy_row(d: &DeploymentV1) -> Vec<String> {
    vec![
        d.deployment_id.clone(),
        d.status.clone(),
        d.environment_revision_id.0.to_string(),
        short_arn(&d.task_definition),
        d.counts.desired.to_string(),
        d.counts.healthy.to_string(),
        d.counts.total.to_string(),
        format!("{}/{}", d.failed_attempts, d.failure_threshold),
        d.created_at.clone(),
        deployment_note(d),
    ]
}

fn show_deployment(d: &DeploymentV1) {
    print_fields(&[
        ("Deployment", d.deployment_id.clone()),
        ("Environment", d.environment_name.clone()),
        ("Status", d.status.clone()),
        ("Reason", or_dash(d.status_reason.as_deref())),
        (
            "Revision",
            match d.old_target_revision_id {
                Some(old) => format!("{} (from {})", d.environment_revision_id.0, old.0),
                None => d.environment_revision_id.0.to_string(),
            },
        ),
        ("Task definition", d.task_definition.clone()),
        ("Tasks", counts_text(&d.counts)),
        (
            "Failed starts",
            format!("{} (threshold {})", d.failed_attempts, d.failure_threshold),
        ),
        ("Note", deployment_note(d)),
        ("Created", d.created_at.clone()),
        ("Started", or_dash(d.started_at.as_deref())),
        ("Ended", or_dash(d.ended_at.as_deref())),
    ]);
    if !d.failures.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = d
            .failures
            .iter()
            .map(|f| {
                vec![
                    short_arn(&f.container_instance_arn),
                    f.attempts.to_string(),
                    f.retry_at.clone(),
                    f.reason.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            render(&["FAILED ON INSTANCE", "ATTEMPTS", "RETRY AT", "REASON"], &rows)
        );
    }
    if !d.history.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = d
            .history
            .iter()
            .map(|t| vec![t.at.clone(), t.status.clone(), t.reason.clone()])
            .collect();
        print!("{}", render(&["AT", "STATUS", "REASON"], &rows));
    }
}

// ---- env status ------------------------------------------------------------------------------------

/// What `env status` shows: the environment, its deployments (newest first) and revisions.
struct Status {
    environment: EnvironmentV1,
    deployments: Vec<DeploymentV1>,
    revisions: Vec<EnvironmentRevision>,
}

impl Status {
    async fn fetch(client: &Client, cluster: &str, name: &str) -> Result<Status, ClientError> {
        let v1 = client.v1();
        let environment = v1.describe_environment(cluster, name).await?.environment;
        let deployments = v1
            .list_deployments(cluster, name, &PageQuery::default())
            .await?
            .deployments;
        let revisions = v1
            .list_revisions(cluster, name, &PageQuery::default())
            .await?
            .revisions;
        Ok(Status {
            environment,
            deployments,
            revisions,
        })
    }

    fn active(&self) -> Option<&DeploymentV1> {
        let id = self.environment.active_deployment_id.as_deref()?;
        self.deployments.iter().find(|d| d.deployment_id == id)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "environment": self.environment,
            "activeDeployment": self.active(),
            "revisions": self.revisions,
        })
    }

    /// The two tables: the environment's row, then one row per revision that has tasks, is the
    /// active deployment's, or is the latest and not deployed yet.
    fn render(&self) -> String {
        let env = &self.environment;
        let active = self.active();
        let in_progress =
            active.is_some_and(|d| matches!(d.status.as_str(), "pending" | "running" | "awaiting-promotion"));
        let target = active.map(|d| d.environment_revision_id);
        // The revision last fully deployed: that of the newest deployment that ever completed (a
        // completed deployment that was rolled back since still has it in its history).
        let current = self
            .deployments
            .iter()
            .find(|d| d.history.iter().any(|t| t.status == "completed"))
            .map(|d| d.environment_revision_id);
        // Before the first deployment the API says `Inactive`; the table says what the revision is.
        let status = if matches!(env.environment_status.as_str(), "Active" | "Inactive") {
            active.map_or_else(|| "created".to_owned(), |d| d.status.clone())
        } else {
            env.environment_status.clone()
        };
        let mut out = render(
            &[
                "ENVIRONMENT",
                "ACTIVE",
                "TARGET",
                "STATUS",
                "DESIRED",
                "HEALTHY",
                "TOTAL",
            ],
            &[vec![
                env.environment_name.clone(),
                or_dash(current.map(|r| r.0)),
                or_dash(target.map(|r| r.0)),
                status,
                env.counts.desired.to_string(),
                env.counts.healthy.to_string(),
                env.counts.total.to_string(),
            ]],
        );
        // Coverage on a line of its own, below the table the deployment UX defines.
        let grace = env
            .deployment_configuration
            .coverage_grace_seconds
            .unwrap_or_default();
        out.push_str(&format!(
            "Uncovered: {} (eligible instances without a healthy daemon of the target for over {grace} s)",
            env.uncovered
        ));
        let since: Vec<String> = env
            .uncovered_instances
            .iter()
            .map(|u| format!("{} since {}", short_arn(&u.container_instance_arn), u.since))
            .collect();
        if !since.is_empty() {
            out.push_str(&format!(": {}", since.join(", ")));
        }
        out.push('\n');

        let target_revision =
            target.and_then(|t| self.revisions.iter().find(|r| r.environment_revision_id == t));
        let mut rows = Vec::new();
        for (i, r) in self.revisions.iter().enumerate() {
            let id = r.environment_revision_id;
            let is_target = Some(id) == target;
            let is_latest = id == env.latest_environment_revision_id;
            let deployed = self.deployments.iter().any(|d| d.environment_revision_id == id);
            // Counts are per task definition: a revision sharing the target's (or a newer
            // revision's) task definition would repeat the same tasks.
            let repeats = !is_target
                && (target_revision.is_some_and(|t| t.task_definition == r.task_definition)
                    || self.revisions[i + 1..].iter().any(|n| {
                        n.task_definition == r.task_definition && Some(n.environment_revision_id) != target
                    }));
            let shown = is_target || (r.counts.total > 0 && !repeats) || (is_latest && !deployed);
            if !shown {
                continue;
            }
            let status = if is_target {
                match active.map(|d| d.status.as_str()) {
                    Some("pending") => "Pending",
                    Some("running") => "Deploying",
                    Some("awaiting-promotion") => "AwaitingPromotion",
                    Some("completed") => "Active",
                    Some("failed") => "Failed",
                    Some("stopped") => "Stopped",
                    Some("superseded") => "Superseded",
                    Some("rolled-back") => "RolledBack",
                    _ => "-",
                }
            } else if r.counts.total > 0 {
                let reverting = active.is_some_and(|d| d.rollback && d.old_target_revision_id == Some(id));
                match (in_progress, reverting) {
                    (true, true) => "Reverting",
                    (true, false) => "Undeploying",
                    // Nothing is changing them: left by a deployment that failed or was stopped.
                    (false, _) => "Running",
                }
            } else if !deployed {
                "Created"
            } else {
                "Inactive"
            };
            rows.push(vec![
                id.0.to_string(),
                status.to_owned(),
                r.counts.desired.to_string(),
                r.counts.healthy.to_string(),
                r.counts.total.to_string(),
                short_arn(&r.task_definition),
            ]);
        }
        out.push('\n');
        out.push_str(&render(
            &[
                "REVISION",
                "STATUS",
                "DESIRED",
                "HEALTHY",
                "TOTAL",
                "TASK DEFINITION",
            ],
            &rows,
        ));
        let mut said = None;
        if let Some(d) = active
            && let Some(reason) = &d.status_reason
        {
            out.push_str(&format!(
                "\ndeployment {} {}: {reason}\n",
                d.deployment_id, d.status
            ));
            said = Some(reason);
        }
        // The health reason often is the active deployment's reason, already said.
        if let Some(reason) = &env.health_reason
            && !said.is_some_and(|s| reason.contains(s.as_str()))
        {
            out.push_str(&format!("{}: {reason}\n", env.environment_health));
        }
        out
    }
}

async fn status(client: &Client, cluster: &str, name: &str, watch: bool, json: bool) -> Result<()> {
    if !watch {
        let status = Status::fetch(client, cluster, name).await?;
        if json {
            return print_json(&status.json());
        }
        print!("{}", status.render());
        return Ok(());
    }
    let terminal = std::io::stdout().is_terminal();
    let mut last = None;
    loop {
        let status = match Status::fetch(client, cluster, name).await {
            Ok(status) => status,
            // Deleted while watched (`env delete --terminate-tasks` ends this way): done.
            Err(ClientError::Api { status: 404, body }) if last.is_some() => {
                println!("{}", body.message);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let text = if json {
            format!("{}\n", serde_json::to_string(&status.json())?)
        } else {
            status.render()
        };
        if terminal && !json {
            // Clear the screen and home the cursor, as watch(1) does.
            print!("\x1b[H\x1b[2J{text}");
        } else if last.as_ref() != Some(&text) {
            if last.is_some() && !json {
                println!();
            }
            print!("{text}");
        }
        last = Some(text);
        tokio::time::sleep(WATCH).await;
    }
}

// ---- deploy --wait ---------------------------------------------------------------------------------

/// Not pending or running: finished, or (awaiting promotion) waiting on a person, which following
/// further would only hang on.
fn ended(d: &DeploymentV1) -> bool {
    !matches!(d.status.as_str(), "pending" | "running")
}

/// Follows a deployment until it ends: a progress bar on a terminal, otherwise one line per change
/// (`status healthy/desired`; on stderr with `--json`, to keep stdout JSON).
async fn follow(
    client: &Client,
    cluster: &str,
    env: &str,
    mut deployment: DeploymentV1,
    json: bool,
) -> Result<DeploymentV1> {
    let bar = (!json && std::io::stdout().is_terminal()).then(|| {
        let bar =
            ProgressBar::with_draw_target(Some(deployment.counts.desired), ProgressDrawTarget::stdout());
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} healthy  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let mut last = None;
    loop {
        let c = deployment.counts;
        let line = format!("{} {}/{}", deployment.status, c.healthy, c.desired);
        if last.as_ref() != Some(&line) {
            match &bar {
                Some(bar) => {
                    bar.set_length(c.desired);
                    bar.set_position(c.healthy.min(c.desired));
                    let mut message = deployment.status.clone();
                    if deployment.failed_attempts > 0 {
                        message.push_str(&format!(
                            ", {} of {} failed starts",
                            deployment.failed_attempts, deployment.failure_threshold
                        ));
                    }
                    bar.set_message(message);
                }
                None if json => eprintln!("{line}"),
                None => println!("{line}"),
            }
            last = Some(line);
        }
        if ended(&deployment) {
            if let Some(bar) = &bar {
                // The bar leaves the cursor on its line: replace it with the final state's line, so
                // that what follows starts on a line of its own.
                bar.finish_and_clear();
                println!("{}", last.as_deref().unwrap_or_default());
            }
            return Ok(deployment);
        }
        tokio::time::sleep(POLL).await;
        deployment = client
            .v1()
            .describe_deployment(cluster, env, &deployment.deployment_id)
            .await?
            .deployment;
    }
}

/// A deployment's plan, for a person: the numbers first, then the batches, then the instances.
fn show_plan(plan: &DeploymentPlan, verbose: bool) {
    let count = |action: &str| plan.instances.iter().filter(|i| i.action == action).count();
    let mut fields = vec![
        (
            "Revision",
            format!(
                "{} ({}), {}",
                plan.environment_revision_id.0,
                short_arn(&plan.task_definition),
                plan.deployment_method
            ),
        ),
        (
            "Instances",
            format!(
                "{} eligible: {} keep, {} start, {} replace, {} stop, {} wait",
                plan.eligible,
                count("keep"),
                count("start"),
                count("replace"),
                count("stop"),
                count("wait")
            ),
        ),
        (
            "Floor / surge",
            format!("{} healthy at least / {} doubled at most", plan.floor, plan.surge),
        ),
    ];
    if let Some(canary) = &plan.canary_instances {
        fields.push((
            "Canary",
            canary.iter().map(|a| short_arn(a)).collect::<Vec<_>>().join(", "),
        ));
    }
    fields.push((
        "Batches",
        format!(
            "{} ({} StartTask and {} StopTask calls at {}/s each)",
            plan.batches.len(),
            plan.start_task_calls,
            plan.stop_task_calls,
            plan.calls_per_second
        ),
    ));
    fields.push((
        "Estimate",
        format!(
            "{:.1} s, plus image pulls and health checks",
            plan.estimated_seconds
        ),
    ));
    fields.push((
        "Outcome",
        match &plan.stalled_reason {
            None => "completes".to_owned(),
            Some(reason) => format!("stalls: {reason}"),
        },
    ));
    print_fields(&fields);
    println!();
    for (i, batch) in plan.batches.iter().enumerate() {
        if batch.after_promotion {
            println!("  -- promotion of the canary --");
        }
        let mut line = format!(
            "  {:>3}. start {:>4}  stop {:>4}",
            i + 1,
            batch.starts.len(),
            batch.stops.len()
        );
        if verbose {
            let starts: Vec<String> = batch.starts.iter().map(|a| short_arn(a)).collect();
            let stops: Vec<String> = batch
                .stops
                .iter()
                .map(|s| short_arn(&s.container_instance_arn))
                .collect();
            line.push_str(&format!(
                "  start [{}]  stop [{}]",
                starts.join(" "),
                stops.join(" ")
            ));
        }
        println!("{line}");
    }
}

/// Starts (already done) and, with `wait`, follows a deployment; the outcome decides the exit code.
async fn started(
    client: &Client,
    cluster: &str,
    env: &str,
    deployment: DeploymentV1,
    wait: bool,
    json: bool,
) -> Result<()> {
    if !wait {
        if json {
            return print_json(&deployment);
        }
        println!(
            "deployment {} of {env} started: revision {} ({})",
            deployment.deployment_id,
            deployment.environment_revision_id.0,
            short_arn(&deployment.task_definition)
        );
        return Ok(());
    }
    let note = format!(
        "deployment {} of {env}: revision {} ({})",
        deployment.deployment_id,
        deployment.environment_revision_id.0,
        short_arn(&deployment.task_definition)
    );
    if json {
        eprintln!("{note}");
    } else {
        println!("{note}");
    }
    let frozen = client.v1().describe_environment(cluster, env).await?.environment;
    if frozen.environment_status == "Frozen" {
        eprintln!("note: {env} is frozen: the deployment waits until `blox env thaw {env}`");
    }
    let done = follow(client, cluster, env, deployment, json).await?;
    let reason = done.status_reason.clone().unwrap_or_default();
    if json {
        print_json(&done)?;
    }
    let code = match done.status.as_str() {
        "completed" => {
            if !json {
                println!("deployment {} completed: {reason}", done.deployment_id);
            }
            return Ok(());
        }
        "failed" => exit::FAILED,
        "stopped" => exit::STOPPED,
        "superseded" => exit::SUPERSEDED,
        "rolled-back" => exit::ROLLED_BACK,
        "awaiting-promotion" => {
            if !json {
                println!(
                    "deployment {id}: {reason}; promote it with `blox deploy promote {env} {id}`, or stop or roll it back",
                    id = done.deployment_id
                );
            }
            exit::AWAITING_PROMOTION
        }
        other => anyhow::bail!("deployment {} ended {other}: {reason}", done.deployment_id),
    };
    for f in &done.failures {
        eprintln!(
            "  failed on {}: {} (attempts: {})",
            short_arn(&f.container_instance_arn),
            f.reason,
            f.attempts
        );
    }
    let mut message = format!("deployment {} {}: {reason}", done.deployment_id, done.status);
    if done.status == "failed"
        && let Some(rollback) = &done.rolled_back_by
    {
        message.push_str(&format!(
            "\nrolled back automatically by deployment {rollback} (follow it with \
             `blox deploy describe {env} {rollback}`)"
        ));
    }
    Err(Ended { code, message }.into())
}

// ---- commands --------------------------------------------------------------------------------------

pub async fn env(command: EnvCommand) -> Result<()> {
    match command {
        EnvCommand::Create {
            name,
            cluster,
            task_definition,
            config,
            attributes,
            query,
            endpoint,
        } => {
            let client = endpoint.client()?;
            let request = CreateEnvironment {
                environment_name: name.clone(),
                task_definition,
                environment_type: None,
                instance_group: (!attributes.is_empty() || query.is_some())
                    .then_some(InstanceGroup { attributes, query }),
                deployment_method: config.method(),
                deployment_configuration: config.body(),
            };
            let created = client.v1().create_environment(&cluster, &request).await?;
            if endpoint.json {
                return print_json(&created);
            }
            println!(
                "created environment {name} (revision {}); deploy it with `blox deploy start {name}`\n",
                created.environment_revision_id.0
            );
            show_environment(&created.environment);
            Ok(())
        }
        EnvCommand::Update {
            name,
            task_definition,
            config,
            attributes,
            query,
            clear_attributes,
            base_revision,
            locate,
            endpoint,
        } => {
            let (client, cluster) = connect(&endpoint, &name, &locate).await?;
            let request = UpdateEnvironment {
                task_definition,
                instance_group: (clear_attributes || !attributes.is_empty() || query.is_some())
                    .then_some(InstanceGroup { attributes, query }),
                deployment_method: config.method(),
                deployment_configuration: config.body(),
                base_revision_id: base_revision.map(RevisionId),
            };
            let updated = client.v1().update_environment(&cluster, &name, &request).await?;
            if endpoint.json {
                return print_json(&updated);
            }
            println!(
                "created revision {} of {name}; deploy it with `blox deploy start {name}`\n",
                updated.environment_revision_id.0
            );
            show_environment(&updated.environment);
            Ok(())
        }
        EnvCommand::Describe {
            name,
            locate,
            endpoint,
        } => {
            let (client, cluster) = connect(&endpoint, &name, &locate).await?;
            let got = client.v1().describe_environment(&cluster, &name).await?;
            if endpoint.json {
                return print_json(&got);
            }
            show_environment(&got.environment);
            Ok(())
        }
        EnvCommand::Status {
            name,
            watch,
            locate,
            endpoint,
        } => {
            let (client, cluster) = connect(&endpoint, &name, &locate).await?;
            status(&client, &cluster, &name, watch, endpoint.json).await
        }
        EnvCommand::List { cluster, endpoint } => {
            let list = endpoint.client()?.list_environments(cluster.as_deref()).await?;
            if endpoint.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .items
                .iter()
                .map(|e| {
                    vec![
                        e.name.clone(),
                        short_arn(&e.instance_group.cluster),
                        e.revision.to_string(),
                        short_arn(&e.task_definition),
                        if e.frozen {
                            format!("{} (frozen)", e.status)
                        } else {
                            e.status.clone()
                        },
                        e.health.clone(),
                        e.active_deployment.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                render(
                    &[
                        "NAME",
                        "CLUSTER",
                        "REVISION",
                        "TASK DEFINITION",
                        "STATUS",
                        "HEALTH",
                        "ACTIVE DEPLOYMENT",
                    ],
                    &rows
                )
            );
            Ok(())
        }
        EnvCommand::Delete {
            name,
            terminate_tasks,
            locate,
            endpoint,
        } => {
            let (client, cluster) = connect(&endpoint, &name, &locate).await?;
            let deleted = client
                .v1()
                .delete_environment(&cluster, &name, terminate_tasks)
                .await?;
            if endpoint.json {
                return print_json(&deleted);
            }
            let total = deleted.environment.counts.total;
            if terminate_tasks {
                println!(
                    "environment {name} is being deleted: its {total} task(s) are being stopped \
                     (`blox env status {name} --watch` follows it)"
                );
            } else {
                println!("environment {name} is deleted: its {total} task(s) are left running");
            }
            Ok(())
        }
        EnvCommand::Freeze {
            name,
            locate,
            endpoint,
        } => {
            let (client, cluster) = connect(&endpoint, &name, &locate).await?;
            let frozen = client.v1().freeze(&cluster, &name).await?;
            if endpoint.json {
                return print_json(&frozen);
            }
            println!(
                "environment {name} is frozen: deployments are taken, but nothing is started or \
                 stopped until `blox env thaw {name}`"
            );
            Ok(())
        }
        EnvCommand::Thaw {
            name,
            locate,
            endpoint,
        } => {
            let (client, cluster) = connect(&endpoint, &name, &locate).await?;
            let thawed = client.v1().thaw(&cluster, &name).await?;
            if endpoint.json {
                return print_json(&thawed);
            }
            println!("environment {name} is thawed: the scheduler acts on it again");
            Ok(())
        }
    }
}

/// Revision `n`, or the environment's latest.
async fn revision_or_latest(client: &Client, cluster: &str, env: &str, n: Option<u64>) -> Result<RevisionId> {
    Ok(match n {
        Some(n) => RevisionId(n),
        None => {
            client
                .v1()
                .describe_environment(cluster, env)
                .await?
                .environment
                .latest_environment_revision_id
        }
    })
}

pub async fn deploy(command: DeployCommand) -> Result<()> {
    match command {
        DeployCommand::Start {
            env,
            revision,
            rollback,
            wait,
            locate,
            endpoint,
        } => {
            let (client, cluster) = connect(&endpoint, &env, &locate).await?;
            let revision = revision_or_latest(&client, &cluster, &env, revision).await?;
            let deployment = client
                .v1()
                .start_deployment(&cluster, &env, revision, rollback)
                .await?
                .deployment;
            started(&client, &cluster, &env, deployment, wait, endpoint.json).await
        }
        DeployCommand::Rollback {
            env,
            revision,
            wait,
            locate,
            endpoint,
        } => {
            let (client, cluster) = connect(&endpoint, &env, &locate).await?;
            let revision = revision.map(RevisionId);
            let deployment = client.v1().rollback(&cluster, &env, revision).await?.deployment;
            started(&client, &cluster, &env, deployment, wait, endpoint.json).await
        }
        DeployCommand::Plan {
            env,
            revision,
            rollback,
            verbose,
            locate,
            endpoint,
        } => {
            let (client, cluster) = connect(&endpoint, &env, &locate).await?;
            let revision = revision_or_latest(&client, &cluster, &env, revision).await?;
            let plan = client
                .v1()
                .plan_deployment(&cluster, &env, revision, rollback)
                .await?;
            if endpoint.json {
                return print_json(&plan);
            }
            show_plan(&plan, verbose);
            Ok(())
        }
        DeployCommand::Promote {
            env,
            deployment_id,
            wait,
            locate,
            endpoint,
        } => {
            let (client, cluster) = connect(&endpoint, &env, &locate).await?;
            let promoted = client
                .v1()
                .promote_deployment(&cluster, &env, &deployment_id)
                .await?;
            if !wait && !endpoint.json {
                println!("deployment {deployment_id} promoted: rolling out to the rest of the fleet");
                return Ok(());
            }
            started(&client, &cluster, &env, promoted.deployment, wait, endpoint.json).await
        }
        DeployCommand::Stop {
            env,
            deployment_id,
            locate,
            endpoint,
        } => {
            let (client, cluster) = connect(&endpoint, &env, &locate).await?;
            let stopped = client
                .v1()
                .stop_deployment(&cluster, &env, &deployment_id)
                .await?;
            if endpoint.json {
                return print_json(&stopped);
            }
            let c = stopped.deployment.counts;
            println!(
                "deployment {deployment_id} stopped at {}/{} healthy; tasks are left as they are",
                c.healthy, c.desired
            );
            Ok(())
        }
        DeployCommand::List {
            env,
            locate,
            endpoint,
        } => {
            let (client, cluster) = connect(&endpoint, &env, &locate).await?;
            let list = client
                .v1()
                .list_deployments(&cluster, &env, &PageQuery::default())
                .await?;
            if endpoint.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list.deployments.iter().map(deploy_row).collect();
            print!("{}", render(DEPLOY_HEADERS, &rows));
            Ok(())
        }
        DeployCommand::Describe {
            env,
            deployment_id,
            locate,
            endpoint,
        } => {
            let (client, cluster) = connect(&endpoint, &env, &locate).await?;
            let got = client
                .v1()
                .describe_deployment(&cluster, &env, &deployment_id)
                .await
                .with_context(|| format!("deployment {deployment_id} of {env}"))?;
            if endpoint.json {
                return print_json(&got);
            }
            show_deployment(&got.deployment);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse() {
        let a = parse_attribute("stack=prod").unwrap();
        assert_eq!((a.name.as_str(), a.value.as_deref()), ("stack", Some("prod")));
        let a = parse_attribute("ecs.os-type").unwrap();
        assert_eq!((a.name.as_str(), a.value), ("ecs.os-type", None));
        let a = parse_attribute("empty=").unwrap();
        assert_eq!(a.value.as_deref(), Some(""));
        assert!(parse_attribute("=x").is_err());
        assert!(parse_attribute("").is_err());
    }

    #[test]
    fn config_flags_send_only_what_is_given() {
        assert_eq!(ConfigFlags::default().body(), None);
        let flags = ConfigFlags {
            failure_threshold: Some(2),
            no_auto_rollback: true,
            ..ConfigFlags::default()
        };
        let body = flags.body().unwrap();
        assert_eq!(body.failure_threshold, Some(2));
        assert_eq!(body.auto_rollback, Some(false));
        assert_eq!(body.stop_on_drain, None);
    }
}
