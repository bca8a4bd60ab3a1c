//! `blox env` and `blox deploy`: the daemon scheduler's environments and deployments.

use std::time::Duration;

use anyhow::{Result, bail};
use blox_api::{
    CreateEnvironmentRequest, Deployment, DeploymentConfigurationBody, Environment, InstanceGroupBody,
    UpdateEnvironmentRequest,
};
use blox_client::Client;
use clap::Subcommand;

use crate::cli::{Endpoint, print_json};
use crate::table::{render, short_arn};

/// How often `deploy start --wait` polls the deployment.
const POLL: Duration = Duration::from_millis(500);

#[derive(Subcommand, Debug)]
pub enum EnvCommand {
    /// Create an environment (checked against ECS) with its first revision.
    Create {
        /// 1 to 30 letters, digits, '-' or '_'.
        name: String,
        /// Cluster name or ARN.
        #[arg(long)]
        cluster: String,
        /// FAMILY, FAMILY:REVISION or an ARN.
        #[arg(long)]
        task_definition: String,
        /// Stop the daemon when its instance starts draining.
        #[arg(long)]
        stop_on_drain: bool,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// List environments.
    List {
        #[arg(long)]
        cluster: Option<String>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Show one environment.
    Get {
        name: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Give an environment a new task definition (a new revision and deployment token).
    Update {
        name: String,
        #[arg(long)]
        task_definition: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Delete an environment; its tasks are left running unless --terminate-tasks.
    Delete {
        name: String,
        #[arg(long)]
        terminate_tasks: bool,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeployCommand {
    /// Deploy the environment's latest revision.
    Start {
        /// The environment's name.
        env: String,
        /// The deployment token; by default the environment's current one.
        #[arg(long)]
        token: Option<String>,
        /// Show progress until the deployment completes (exit 0) or fails or is stopped (exit 1).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// List an environment's deployments, newest first.
    List {
        env: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Show one deployment.
    Get {
        env: String,
        id: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

const ENV_HEADERS: &[&str] = &[
    "NAME",
    "CLUSTER",
    "TASK DEFINITION",
    "REVISION",
    "STATUS",
    "HEALTH",
    "ACTIVE DEPLOYMENT",
    "TOKEN",
];
const DEPLOY_HEADERS: &[&str] = &[
    "ID",
    "ENVIRONMENT",
    "STATUS",
    "REVISION",
    "TASK DEFINITION",
    "DESIRED",
    "RUNNING",
    "PENDING",
    "FAILED",
    "CREATED",
];

fn env_row(e: &Environment) -> Vec<String> {
    vec![
        e.name.clone(),
        short_arn(&e.instance_group.cluster),
        short_arn(&e.task_definition),
        e.revision.to_string(),
        e.status.clone(),
        match &e.health_reason {
            Some(reason) => format!("{} ({reason})", e.health),
            None => e.health.clone(),
        },
        e.active_deployment.clone().unwrap_or_default(),
        e.deployment_token.clone(),
    ]
}

fn deploy_row(d: &Deployment) -> Vec<String> {
    vec![
        d.id.clone(),
        d.environment_name.clone(),
        d.status.clone(),
        d.revision.to_string(),
        short_arn(&d.task_definition),
        d.counts.desired.to_string(),
        d.counts.running.to_string(),
        d.counts.pending.to_string(),
        d.counts.failed.to_string(),
        d.created_at.clone(),
    ]
}

fn show_env(e: &Environment, json: bool) -> Result<()> {
    if json {
        return print_json(e);
    }
    print!("{}", render(ENV_HEADERS, &[env_row(e)]));
    Ok(())
}

fn show_deployment(d: &Deployment, json: bool) -> Result<()> {
    if json {
        return print_json(d);
    }
    print!("{}", render(DEPLOY_HEADERS, &[deploy_row(d)]));
    for failure in &d.failures {
        println!(
            "failed on {}: {} ({} attempts, retry at {})",
            failure.arn, failure.reason, failure.attempts, failure.retry_at
        );
    }
    Ok(())
}

pub async fn env(command: EnvCommand) -> Result<()> {
    match command {
        EnvCommand::Create {
            name,
            cluster,
            task_definition,
            stop_on_drain,
            endpoint,
        } => {
            let request = CreateEnvironmentRequest {
                name,
                instance_group: InstanceGroupBody {
                    cluster,
                    attributes: Vec::new(),
                },
                task_definition,
                deployment_method: None,
                deployment_configuration: stop_on_drain.then_some(DeploymentConfigurationBody {
                    stop_on_drain: Some(true),
                    ..DeploymentConfigurationBody::default()
                }),
            };
            let created = Client::new(&endpoint.endpoint)
                .create_environment(&request)
                .await?;
            show_env(&created, endpoint.json)
        }
        EnvCommand::List { cluster, endpoint } => {
            let list = Client::new(&endpoint.endpoint)
                .list_environments(cluster.as_deref())
                .await?;
            if endpoint.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list.items.iter().map(env_row).collect();
            print!("{}", render(ENV_HEADERS, &rows));
            Ok(())
        }
        EnvCommand::Get { name, endpoint } => {
            let got = Client::new(&endpoint.endpoint).get_environment(&name).await?;
            show_env(&got, endpoint.json)
        }
        EnvCommand::Update {
            name,
            task_definition,
            endpoint,
        } => {
            let updated = Client::new(&endpoint.endpoint)
                .update_environment(
                    &name,
                    &UpdateEnvironmentRequest {
                        task_definition: Some(task_definition),
                        ..UpdateEnvironmentRequest::default()
                    },
                )
                .await?;
            show_env(&updated, endpoint.json)
        }
        EnvCommand::Delete {
            name,
            terminate_tasks,
            endpoint,
        } => {
            let deleted = Client::new(&endpoint.endpoint)
                .delete_environment(&name, terminate_tasks)
                .await?;
            if endpoint.json {
                return print_json(&deleted);
            }
            println!("{}", deleted.message);
            Ok(())
        }
    }
}

pub async fn deploy(command: DeployCommand) -> Result<()> {
    match command {
        DeployCommand::Start {
            env,
            token,
            wait,
            endpoint,
        } => {
            let client = Client::new(&endpoint.endpoint);
            let token = match token {
                Some(token) => token,
                None => client.get_environment(&env).await?.deployment_token,
            };
            let deployment = client.create_deployment(&env, &token).await?;
            if !wait {
                return show_deployment(&deployment, endpoint.json);
            }
            if !endpoint.json {
                println!("deployment {} of {env} started", deployment.id);
            }
            let finished = wait_for(&client, &env, &deployment.id, endpoint.json).await?;
            show_deployment(&finished, endpoint.json)?;
            match finished.status.as_str() {
                "completed" => Ok(()),
                other => bail!("deployment {} {other}", finished.id),
            }
        }
        DeployCommand::List { env, endpoint } => {
            let list = Client::new(&endpoint.endpoint).list_deployments(&env).await?;
            if endpoint.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list.items.iter().map(deploy_row).collect();
            print!("{}", render(DEPLOY_HEADERS, &rows));
            Ok(())
        }
        DeployCommand::Get { env, id, endpoint } => {
            let got = Client::new(&endpoint.endpoint).get_deployment(&env, &id).await?;
            show_deployment(&got, endpoint.json)
        }
    }
}

/// Polls the deployment, printing a progress line (on stderr with `--json`, so that stdout stays
/// JSON) whenever its status or counts change, until it is completed, failed or stopped.
async fn wait_for(client: &Client, env: &str, id: &str, json: bool) -> Result<Deployment> {
    let mut last = None;
    loop {
        let deployment = client.get_deployment(env, id).await?;
        let c = deployment.counts;
        let line = format!(
            "{}: running {}/{}, pending {}, failed {}",
            deployment.status, c.running, c.desired, c.pending, c.failed
        );
        if last.as_ref() != Some(&line) {
            if json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
            last = Some(line);
        }
        if matches!(deployment.status.as_str(), "completed" | "failed" | "stopped") {
            return Ok(deployment);
        }
        tokio::time::sleep(POLL).await;
    }
}
