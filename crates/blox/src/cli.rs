//! Client subcommands: a table by default, `--json` for scripts.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use blox_api::{InstanceQuery, InstanceRecord, PageQuery, StreamQuery, TaskQuery, TaskRecord};
use blox_client::{Client, ClientOptions};
use clap::{Args, Subcommand};
use futures::StreamExt as _;

use blox_client::table::{render, short_arn};

/// Where the CLI looks for blox unless told otherwise (`blox server`'s and `blox up`'s default).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2000";

#[derive(Args, Clone)]
pub struct Endpoint {
    /// The blox server's API.
    #[arg(
        long,
        env = "BLOX_ENDPOINT",
        default_value = DEFAULT_ENDPOINT,
        global = true
    )]
    pub(crate) endpoint: String,
    /// Print JSON (the API's own shapes) instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// The API token, for a server started with --auth-token-file (sent as `Authorization: Bearer`).
    /// Prefer BLOX_TOKEN: a flag's value is visible to other users in the process list.
    #[arg(long, env = "BLOX_TOKEN", global = true, hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Trust only this CA certificate (PEM) for an https:// endpoint, e.g. a self-signed server
    /// certificate; without it, the system's roots.
    #[arg(long, env = "BLOX_CA_CERT", global = true, value_name = "PATH")]
    pub(crate) ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("endpoint", &self.endpoint)
            .field("json", &self.json)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

impl Endpoint {
    /// A client of this endpoint with the token and CA certificate given.
    pub(crate) fn client(&self) -> Result<Client> {
        let ca_certs_pem = match &self.ca_cert {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading the CA certificate {}", path.display()))?,
            ),
            None => None,
        };
        let options = ClientOptions {
            token: self.token.clone(),
            ca_certs_pem,
        };
        Ok(Client::with_options(&self.endpoint, &options)?)
    }
}

/// One entity: `get CLUSTER ARN`, or `get --cluster CLUSTER --arn ARN`.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Cluster name or ARN.
    #[arg(value_name = "CLUSTER", required_unless_present = "cluster_flag")]
    cluster: Option<String>,
    #[arg(value_name = "ARN", required_unless_present = "arn_flag")]
    arn: Option<String>,
    #[arg(
        long = "cluster",
        id = "cluster_flag",
        conflicts_with = "cluster",
        hide = true
    )]
    cluster_flag: Option<String>,
    #[arg(long = "arn", id = "arn_flag", conflicts_with = "arn", hide = true)]
    arn_flag: Option<String>,
}

impl Target {
    fn resolve(self) -> (String, String) {
        // clap's required_unless_present guarantees one of each pair.
        (
            self.cluster.or(self.cluster_flag).unwrap_or_default(),
            self.arn.or(self.arn_flag).unwrap_or_default(),
        )
    }
}

#[derive(Subcommand, Debug)]
pub enum InstancesCommand {
    /// List container instances.
    List {
        #[arg(long)]
        cluster: Option<String>,
        /// active, draining, inactive, ...
        #[arg(long)]
        status: Option<String>,
        /// Only instances matching this cluster query, e.g.
        /// 'attribute:ecs.instance-type =~ m5.* and task:group != batch'.
        #[arg(long)]
        filter: Option<String>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Show one container instance.
    Get {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Follow container-instance changes.
    Watch {
        #[arg(long)]
        cluster: Option<String>,
        /// Replay every change from this entityVersion on (inclusive) first.
        #[arg(long)]
        entity_version: Option<u64>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

#[derive(Subcommand, Debug)]
pub enum TasksCommand {
    /// List tasks.
    List {
        #[arg(long)]
        cluster: Option<String>,
        /// pending, running, stopped, ...
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        started_by: Option<String>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Show one task.
    Get {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Follow task changes.
    Watch {
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long)]
        entity_version: Option<u64>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeadLettersCommand {
    /// List parked messages, newest first.
    List {
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

const INSTANCE_HEADERS: &[&str] = &[
    "CLUSTER",
    "INSTANCE",
    "EC2",
    "STATUS",
    "AGENT",
    "RUNNING",
    "ENTITY VERSION",
];
const TASK_HEADERS: &[&str] = &[
    "CLUSTER",
    "TASK",
    "LAST",
    "DESIRED",
    "TASK DEFINITION",
    "STARTED BY",
    "INSTANCE",
    "ENTITY VERSION",
];

fn instance_row(record: &InstanceRecord) -> Vec<String> {
    let i = &record.entity;
    vec![
        short_arn(&i.cluster_arn),
        short_arn(&i.container_instance_arn),
        i.ec2_instance_id.clone().unwrap_or_default(),
        i.status.clone(),
        if i.agent_connected {
            "connected"
        } else {
            "disconnected"
        }
        .into(),
        i.running_tasks_count.map(|n| n.to_string()).unwrap_or_default(),
        record.metadata.entity_version.clone(),
    ]
}

fn task_row(record: &TaskRecord) -> Vec<String> {
    let t = &record.entity;
    vec![
        short_arn(&t.cluster_arn),
        short_arn(&t.task_arn),
        t.last_status.clone(),
        t.desired_status.clone(),
        short_arn(&t.task_definition_arn),
        t.started_by.clone().unwrap_or_default(),
        t.container_instance_arn
            .as_deref()
            .map(short_arn)
            .unwrap_or_default(),
        record.metadata.entity_version.clone(),
    ]
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn instances(command: InstancesCommand) -> Result<()> {
    match command {
        InstancesCommand::List {
            cluster,
            status,
            filter,
            endpoint,
        } => {
            let client = endpoint.client()?;
            let list = client
                .list_instances(&InstanceQuery {
                    cluster,
                    status,
                    filter,
                    ..InstanceQuery::default()
                })
                .await?;
            if endpoint.json {
                return print_json(&list);
            }
            print!(
                "{}",
                render(
                    INSTANCE_HEADERS,
                    &list.items.iter().map(instance_row).collect::<Vec<_>>()
                )
            );
            Ok(())
        }
        InstancesCommand::Get { target, endpoint } => {
            let (cluster, arn) = target.resolve();
            let record = endpoint.client()?.get_instance(&cluster, &arn).await?;
            if endpoint.json {
                return print_json(&record);
            }
            print!("{}", render(INSTANCE_HEADERS, &[instance_row(&record)]));
            Ok(())
        }
        InstancesCommand::Watch {
            cluster,
            entity_version,
            endpoint,
        } => {
            let client = endpoint.client()?;
            let mut stream = Box::pin(
                client
                    .stream_instances(&StreamQuery {
                        cluster,
                        entity_version,
                        heartbeat: None,
                    })
                    .await?,
            );
            watch(
                &mut stream,
                endpoint.json,
                INSTANCE_HEADERS,
                |r: &InstanceRecord| (r.metadata.deleted, instance_row(r)),
            )
            .await
        }
    }
}

pub async fn tasks(command: TasksCommand) -> Result<()> {
    match command {
        TasksCommand::List {
            cluster,
            status,
            started_by,
            endpoint,
        } => {
            let client = endpoint.client()?;
            let list = client
                .list_tasks(&TaskQuery {
                    cluster,
                    status,
                    started_by,
                    ..TaskQuery::default()
                })
                .await?;
            if endpoint.json {
                return print_json(&list);
            }
            print!(
                "{}",
                render(TASK_HEADERS, &list.items.iter().map(task_row).collect::<Vec<_>>())
            );
            Ok(())
        }
        TasksCommand::Get { target, endpoint } => {
            let (cluster, arn) = target.resolve();
            let record = endpoint.client()?.get_task(&cluster, &arn).await?;
            if endpoint.json {
                return print_json(&record);
            }
            print!("{}", render(TASK_HEADERS, &[task_row(&record)]));
            Ok(())
        }
        TasksCommand::Watch {
            cluster,
            entity_version,
            endpoint,
        } => {
            let client = endpoint.client()?;
            let mut stream = Box::pin(
                client
                    .stream_tasks(&StreamQuery {
                        cluster,
                        entity_version,
                        heartbeat: None,
                    })
                    .await?,
            );
            watch(&mut stream, endpoint.json, TASK_HEADERS, |r: &TaskRecord| {
                (r.metadata.deleted, task_row(r))
            })
            .await
        }
    }
}

/// Prints each change as it comes: a JSON line, or a table row prefixed with what happened.
async fn watch<T: serde::Serialize>(
    stream: &mut (impl futures::Stream<Item = Result<T, blox_client::ClientError>> + Unpin),
    json: bool,
    headers: &[&str],
    row: impl Fn(&T) -> (bool, Vec<String>),
) -> Result<()> {
    let mut header: Vec<&str> = vec!["EVENT"];
    header.extend_from_slice(headers);
    if !json {
        print!("{}", render(&header, &[]));
    }
    while let Some(item) = stream.next().await {
        let item = item?;
        if json {
            println!("{}", serde_json::to_string(&item)?);
        } else {
            let (deleted, cells) = row(&item);
            let mut line = vec![if deleted { "DELETED" } else { "CHANGED" }.to_owned()];
            line.extend(cells);
            // Widths of a live stream cannot be known in advance: tab-separate the cells.
            println!("{}", line.join("\t"));
        }
    }
    Ok(())
}

pub async fn dead_letters(command: DeadLettersCommand) -> Result<()> {
    match command {
        DeadLettersCommand::List { endpoint } => {
            // The server answers a page at a time: follow nextToken to the end.
            let client = endpoint.client()?;
            let mut list = client.dead_letters(&PageQuery::default()).await?;
            while let Some(token) = list.next_token.take() {
                let page = client
                    .dead_letters(&PageQuery {
                        next_token: Some(token),
                        ..PageQuery::default()
                    })
                    .await?;
                list.items.extend(page.items);
                list.next_token = page.next_token;
            }
            if endpoint.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .items
                .iter()
                .map(|d| {
                    vec![
                        d.id.clone(),
                        d.received_at.clone(),
                        d.message_id.clone().unwrap_or_default(),
                        d.reason.clone(),
                    ]
                })
                .collect();
            print!("{}", render(&["ID", "RECEIVED", "MESSAGE", "REASON"], &rows));
            Ok(())
        }
    }
}
