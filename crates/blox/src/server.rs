//! `blox server`: flags (each also an environment variable), wiring, and signal handling.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use blox_aws::{AlarmReader, EcsControl, EcsReader, EventSource, SdkAlarms, SdkEcs, SqsOptions, SqsSource};
use blox_model::ClusterName;
use blox_server::auth::{Role, Tokens};
use blox_server::ingest::Mirrored;
use blox_server::{
    IngestOptions, Limits, ReconcileOptions, SchedulerOptions, ServerOptions, Services, TlsConfig, V03Errors,
};
use blox_sim::SimAlarms;
use blox_store::leader::{Leadership, SoleLeadership};
use blox_store::{EtcdConfig, EtcdStore, EtcdTls, LogStore, MemStore, RedbStore, Store, StoreOptions};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::sim::SimArgs;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Address of the REST API (port 0 picks a free port; the chosen address is printed). Also
    /// `--bind`, Blox v0.3's name for it.
    #[arg(
        long,
        visible_alias = "bind",
        env = "BLOX_LISTEN",
        default_value = "127.0.0.1:2000"
    )]
    pub(crate) listen: String,
    /// Where state is kept: `log:DIR` (durable, the default: in memory, made durable by an
    /// append-only log with checkpoints in DIR), `redb:PATH` (durable, one redb file), `memory` (lost
    /// on exit), or `etcd:http://HOST:PORT[,http://HOST2:PORT...]` (shared by several replicas: see
    /// --replica-id and the --etcd-* flags; https:// with --etcd-ca).
    #[arg(long, env = "BLOX_STORE", default_value = DEFAULT_STORE)]
    pub(crate) store: String,
    /// An etcd endpoint (repeatable), as Blox v0.3 took them (`HOST:PORT` means `http://HOST:PORT`):
    /// given, it stands for `--store etcd:URL,...`, in place of `--store`.
    #[arg(long = "etcd-endpoint", value_name = "URL")]
    pub(crate) etcd_endpoints: Vec<String>,
    /// The SQS queue of ECS events, by name, `sqs://NAME` (as Blox v0.3 took it) or URL. Without it,
    /// blox mirrors by reconciling only.
    #[arg(long, env = "BLOX_QUEUE", value_parser = parse_queue)]
    pub(crate) queue: Option<String>,
    /// How long a received message stays hidden from other receivers before SQS redelivers it (it
    /// must cover a batch's commit; after a crash, uncommitted messages come back after it).
    #[arg(long, env = "BLOX_VISIBILITY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    visibility_timeout: Duration,
    /// How often to reconcile every cluster with ECS (e.g. `30s`, `5m`).
    #[arg(long, env = "BLOX_RECONCILE_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    reconcile_interval: Duration,
    /// Mirror only these clusters (comma-separated names); default: every cluster of the account.
    #[arg(long, env = "BLOX_CLUSTERS", value_delimiter = ',', value_parser = parse_cluster)]
    pub(crate) clusters: Option<Vec<ClusterName>>,
    /// How many changes the change log keeps for stream resumption.
    #[arg(long, env = "BLOX_CHANGE_LOG_RETENTION", default_value_t = StoreOptions::default().change_log_retention)]
    pub(crate) change_log_retention: u64,
    /// How long a deleted entity's tombstone is kept at least (it also stays while its deletion is in
    /// the change log), so that a late event cannot bring it back. Keep it longer than the visibility
    /// timeout plus the reconcile interval.
    #[arg(long, env = "BLOX_TOMBSTONE_RETENTION", default_value = "1h", value_parser = parse_duration)]
    pub(crate) tombstone_retention: Duration,
    /// The AWS account mirrored (12 digits): events of other accounts are parked. Default: the account
    /// of the cluster ARNs ECS lists (until the reconciler has listed one, events are not checked
    /// against an account).
    #[arg(long, env = "BLOX_ACCOUNT_ID", value_parser = parse_account_id)]
    account_id: Option<String>,
    /// Log format on stderr: `text` or `json`.
    #[arg(long, env = "BLOX_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// The daemon scheduler's full pass runs at least this often (it also reacts to changes at once).
    #[arg(long, env = "BLOX_SCHEDULER_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    scheduler_interval: Duration,
    /// ECS calls per second the daemon scheduler makes at most per API family, as ECS throttles
    /// them (StartTask, of up to 10 instances each; StopTask; ListTasks and DescribeTasks); it slows
    /// down further while ECS throttles.
    #[arg(long, env = "BLOX_SCHEDULER_CALLS_PER_SECOND", default_value_t = SchedulerOptions::default().calls_per_second)]
    scheduler_calls_per_second: f64,
    /// Which ECS: `aws` (the account of the AWS configuration) or `sim` (the built-in simulator,
    /// which also delivers its events; see the --sim-* flags).
    #[arg(long, env = "BLOX_ECS", default_value = "aws")]
    pub(crate) ecs: String,
    /// How errors are written on the Blox v0.3 routes: `json` (`{code, message, field}`, as on every
    /// route) or `text` (v0.3's plain-text messages, which v0.3's generated clients decode).
    #[arg(long = "v03-errors", env = "BLOX_V03_ERRORS", default_value = "json", value_parser = parse_v03_errors)]
    v03_errors: V03Errors,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    pub(crate) replicas: ReplicaArgs,
    #[command(flatten)]
    sim: SimArgs,
}

/// Several replicas on one etcd (README: "Running several replicas").
#[derive(Args, Debug, Clone, Default)]
pub struct ReplicaArgs {
    /// Every key blox writes in etcd starts with it: blox deployments sharing one etcd use different
    /// prefixes.
    #[arg(long, env = "BLOX_ETCD_PREFIX", default_value = "/blox/")]
    etcd_prefix: String,
    /// PEM file of the CA that signed etcd's certificate (for https:// endpoints).
    #[arg(long, env = "BLOX_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// PEM file of blox's client certificate, when etcd asks for one (with --etcd-key).
    #[arg(long, env = "BLOX_ETCD_CERT", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// PEM file of the client certificate's key.
    #[arg(long, env = "BLOX_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// etcd user, when etcd's auth is on (with --etcd-password).
    #[arg(long, env = "BLOX_ETCD_USER", requires = "etcd_password")]
    etcd_user: Option<String>,
    /// The etcd user's password (prefer the environment variable to the flag: flags show in `ps`).
    #[arg(
        long,
        env = "BLOX_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "etcd_user"
    )]
    etcd_password: Option<String>,
    /// The leadership lease's time to live: a leader that stops renewing it (renewed every third of
    /// it) is replaced after at most this long. Only with an etcd store.
    #[arg(long, env = "BLOX_LEADER_LEASE", default_value = "10s", value_parser = parse_duration)]
    leader_lease: Duration,
    /// This replica's id in `GET /v1/leader` and the logs; default: the host name and the API port.
    #[arg(long, env = "BLOX_REPLICA_ID")]
    pub(crate) replica_id: Option<String>,
}

impl ReplicaArgs {
    fn etcd_config(&self, endpoints: &str) -> Result<EtcdConfig> {
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|endpoint| !endpoint.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            bail!("--store etcd: names no endpoint (etcd:http://HOST:PORT[,http://HOST2:PORT...])");
        }
        if let Some(bad) = endpoints
            .iter()
            .find(|endpoint| !(endpoint.starts_with("http://") || endpoint.starts_with("https://")))
        {
            bail!("--store etcd: endpoint {bad:?} must start with http:// or https://");
        }
        if !self.etcd_prefix.starts_with('/') || self.etcd_prefix.len() < 2 {
            bail!("--etcd-prefix must start with / and name something (e.g. /blox/)");
        }
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
        };
        let tls = if self.etcd_ca.is_some() || self.etcd_cert.is_some() {
            let identity_pem = match (&self.etcd_cert, &self.etcd_key) {
                (Some(cert), Some(key)) => Some((read(cert, "--etcd-cert")?, read(key, "--etcd-key")?)),
                _ => None,
            };
            Some(EtcdTls {
                ca_pem: self
                    .etcd_ca
                    .as_ref()
                    .map(|ca| read(ca, "--etcd-ca"))
                    .transpose()?,
                identity_pem,
            })
        } else {
            None
        };
        let mut config = EtcdConfig::new(endpoints);
        config.prefix = self.etcd_prefix.clone();
        config.tls = tls;
        config.user = self.etcd_user.clone().zip(self.etcd_password.clone());
        Ok(config)
    }
}

/// The server's own resource bounds (README: "Limits").
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Open connections at most; past it, new connections wait in the kernel's queue until one
    /// closes.
    #[arg(long, env = "BLOX_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections, value_parser = parse_positive)]
    max_connections: usize,
    /// Open streams at most; past it, a new stream is a 503 with Retry-After.
    #[arg(long, env = "BLOX_MAX_STREAMS", default_value_t = Limits::default().max_streams, value_parser = parse_positive)]
    max_streams: usize,
    /// Requests answered at once at most (streams, /healthz, /readyz and /metrics aside); past it, a
    /// 503 with Retry-After.
    #[arg(long, env = "BLOX_MAX_IN_FLIGHT", default_value_t = Limits::default().max_in_flight, value_parser = parse_positive)]
    max_in_flight: usize,
    /// A request (streams aside) not answered within this is given up with a 503.
    #[arg(long, env = "BLOX_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// A connection whose client accepts no byte for this long is closed (a stream whose client
    /// stopped reading).
    #[arg(long, env = "BLOX_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    write_timeout: Duration,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, env = "BLOX_MAX_BODY_SIZE", default_value_t = Limits::default().max_body_bytes, value_parser = parse_positive)]
    max_body_size: usize,
    /// On SIGTERM or Ctrl-C, how long open connections and background work get to finish; streams
    /// end at once. blox exits by then.
    #[arg(long, env = "BLOX_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    shutdown_grace: Duration,
}

impl Default for LimitArgs {
    fn default() -> Self {
        let limits = Limits::default();
        LimitArgs {
            max_connections: limits.max_connections,
            max_streams: limits.max_streams,
            max_in_flight: limits.max_in_flight,
            request_timeout: limits.request_timeout,
            write_timeout: limits.write_timeout,
            max_body_size: limits.max_body_bytes,
            shutdown_grace: limits.shutdown_grace,
        }
    }
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            max_streams: self.max_streams,
            max_in_flight: self.max_in_flight,
            request_timeout: self.request_timeout,
            write_timeout: self.write_timeout,
            max_body_bytes: self.max_body_size,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

/// Who may call the API, and over what (README, "Securing blox").
#[derive(Args, Debug, Clone, Default)]
pub struct SecurityArgs {
    /// Require a token on every request but /healthz and /readyz: a file of `ROLE TOKEN` lines, ROLE
    /// `read` (every GET: lists, streams, metrics, docs) or `admin` (everything); blank lines and
    /// lines starting with # are skipped. Clients send `Authorization: Bearer TOKEN`.
    #[arg(
        long,
        env = "BLOX_AUTH_TOKEN_FILE",
        value_name = "PATH",
        help_heading = "Security"
    )]
    auth_token_file: Option<PathBuf>,
    /// Serve without tokens on an address other than loopback (refused otherwise): anyone who
    /// reaches the port can then read everything, delete environments and stop their tasks.
    #[arg(
        long,
        env = "BLOX_INSECURE_NO_AUTH",
        conflicts_with = "auth_token_file",
        help_heading = "Security"
    )]
    insecure_no_auth: bool,
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first); needs --tls-key.
    #[arg(
        long,
        env = "BLOX_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key",
        help_heading = "Security"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1); needs --tls-cert.
    #[arg(
        long,
        env = "BLOX_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    tls_key: Option<PathBuf>,
}

/// What the security flags resolve to.
struct Security {
    tokens: Option<Arc<Tokens>>,
    tls: Option<TlsConfig>,
}

impl SecurityArgs {
    /// Loads the token file and the certificate, and applies the rule: without a token file, blox
    /// serves only on loopback unless told --insecure-no-auth.
    async fn resolve(&self, listen: &str) -> Result<Security> {
        let tokens = match &self.auth_token_file {
            Some(path) => Some(Arc::new(Tokens::load(path)?)),
            None => None,
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig::from_pem_files(cert, key)?),
            (None, None) => None,
            // clap's `requires` makes these two one pair.
            _ => bail!("--tls-cert and --tls-key go together: give both or neither"),
        };
        let exposed = exposed_address(listen).await?;
        match (&tokens, exposed) {
            (None, Some(address)) if !self.insecure_no_auth => bail!(
                "refusing to serve without authentication on {listen}: {address} is not a loopback \
                 address, so anyone who can reach it could read every task and delete every \
                 environment. Give --auth-token-file PATH (one `ROLE TOKEN` line per token, ROLE read \
                 or admin), or --insecure-no-auth if something in front of blox already decides who \
                 reaches it, or listen on 127.0.0.1"
            ),
            (None, Some(address)) => tracing::warn!(
                %address,
                "--insecure-no-auth: serving without authentication on an address other than loopback"
            ),
            (Some(tokens), _) => {
                tracing::info!(
                    read = tokens.count(Role::Read),
                    admin = tokens.count(Role::Admin),
                    "API tokens loaded: every request but /healthz and /readyz needs one"
                );
                if exposed.is_some() && tls.is_none() {
                    tracing::warn!(
                        "tokens travel in clear text on an address other than loopback: give --tls-cert \
                         and --tls-key, or terminate TLS in front of blox"
                    );
                }
            }
            (None, None) => {}
        }
        Ok(Security { tokens, tls })
    }
}

/// The first address `listen` resolves to that is not loopback, if any (`0.0.0.0` and `[::]`, every
/// interface, are not).
async fn exposed_address(listen: &str) -> Result<Option<std::net::SocketAddr>> {
    let mut addresses = tokio::net::lookup_host(listen)
        .await
        .with_context(|| format!("--listen {listen:?} is not an address to listen on (HOST:PORT)"))?;
    Ok(addresses.find(|a| !a.ip().to_canonical().is_loopback()))
}

fn parse_v03_errors(text: &str) -> Result<V03Errors, String> {
    match text {
        "json" => Ok(V03Errors::Json),
        "text" => Ok(V03Errors::Text),
        other => Err(format!("{other:?} is not an error style: json or text")),
    }
}

impl ServerArgs {
    /// The store to open: `--store`'s, or `etcd:` and the `--etcd-endpoint`s when those are given
    /// (v0.3's were often `HOST:PORT`, without a scheme).
    pub(crate) fn store_spec(&self) -> String {
        if self.etcd_endpoints.is_empty() {
            return self.store.clone();
        }
        let urls: Vec<String> = self
            .etcd_endpoints
            .iter()
            .map(|endpoint| {
                if endpoint.contains("://") {
                    endpoint.clone()
                } else {
                    format!("http://{endpoint}")
                }
            })
            .collect();
        format!("etcd:{}", urls.join(","))
    }

    /// `blox up`: the simulator and the embedded store, both kept in `data_dir`.
    pub fn up(
        listen: String,
        data_dir: &std::path::Path,
        log_format: String,
        security: SecurityArgs,
        mut sim: SimArgs,
    ) -> ServerArgs {
        sim.sim_state = Some(data_dir.join("simulator.json"));
        ServerArgs {
            listen,
            store: store_in(data_dir),
            etcd_endpoints: Vec::new(),
            queue: None,
            visibility_timeout: Duration::from_secs(60),
            // Events carry nearly everything; reconciling often shows attribute changes (which ECS
            // does not event) soon.
            reconcile_interval: Duration::from_secs(60),
            clusters: None,
            change_log_retention: StoreOptions::default().change_log_retention,
            tombstone_retention: StoreOptions::TOMBSTONE_RETENTION,
            account_id: None,
            log_format,
            scheduler_interval: SchedulerOptions::default().interval,
            scheduler_calls_per_second: SchedulerOptions::default().calls_per_second,
            ecs: "sim".into(),
            v03_errors: V03Errors::Json,
            limits: LimitArgs::default(),
            security,
            replicas: ReplicaArgs {
                etcd_prefix: "/blox/".to_owned(),
                leader_lease: Duration::from_secs(10),
                ..ReplicaArgs::default()
            },
            sim,
        }
    }
}

/// What `blox up` prints once serving.
pub struct Banner {
    pub data_dir: PathBuf,
    pub churn: String,
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(value).map_err(|e| format!("{e} (write durations like 2s, 5m, 1h)"))?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

fn parse_positive(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("must be a whole number of at least 1".into()),
    }
}

/// A queue name or URL; Blox v0.3's `sqs://NAME` is the name. v0.3's `kinesis://STREAM` is refused:
/// blox reads ECS events from SQS only.
fn parse_queue(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.starts_with("kinesis://") {
        return Err(
            "Kinesis streams are not an event source of blox: give the SQS queue that the \
                    EventBridge rule feeds (NAME, sqs://NAME or its URL)"
                .into(),
        );
    }
    let name = value.strip_prefix("sqs://").unwrap_or(value);
    if name.is_empty() {
        return Err("the SQS queue name is empty".into());
    }
    Ok(name.to_owned())
}

fn parse_account_id(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.len() == 12 && value.bytes().all(|b| b.is_ascii_digit()) {
        Ok(value.to_owned())
    } else {
        Err(format!("{value:?} is not an AWS account id: 12 digits"))
    }
}

fn parse_cluster(value: &str) -> Result<ClusterName, String> {
    ClusterName::new(value.trim()).map_err(|e| e.to_string())
}

fn init_logging(format: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in files and log collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => bail!("--log-format must be text or json, not {other:?}"),
    }
    Ok(())
}

const DEFAULT_STORE: &str = "log:./blox-data/store";

/// The store in a data directory: the log store in `DATA/store`, or the redb file an earlier version
/// left there while there is no log store (so that upgrading keeps the environments and deployments
/// it holds; the mirror alone would be rebuilt by reconciling).
fn store_in(data_dir: &std::path::Path) -> String {
    let earlier = data_dir.join("blox.redb");
    if earlier.exists() && !data_dir.join("store").exists() {
        format!("redb:{}", earlier.display())
    } else {
        format!("log:{}", data_dir.join("store").display())
    }
}

/// The store, and the leadership of this replica on it: shared with other replicas on etcd, its own
/// on memory and redb (it leads from the start, under its `--replica-id`).
pub(crate) async fn open_store(
    spec: &str,
    options: StoreOptions,
    replicas: &ReplicaArgs,
    replica_id: String,
) -> Result<(Arc<dyn Store>, Arc<dyn Leadership>)> {
    let alone = |store: Arc<dyn Store>| -> (Arc<dyn Store>, Arc<dyn Leadership>) {
        let leadership = SoleLeadership::new(
            store.clone(),
            replica_id.clone(),
            replicas.leader_lease,
            blox_server::clock::now_unix_ms(),
        );
        (store, Arc::new(leadership))
    };
    // The default names the data directory: an earlier version's redb file there is kept in use.
    let default = (spec == DEFAULT_STORE).then(|| {
        let data_dir = DEFAULT_STORE
            .strip_prefix("log:")
            .and_then(|dir| std::path::Path::new(dir).parent())
            .unwrap_or(std::path::Path::new("."));
        store_in(data_dir)
    });
    let spec = default.as_deref().unwrap_or(spec);
    if spec == "memory" {
        return Ok(alone(Arc::new(MemStore::new(options))));
    }
    if let Some(endpoints) = spec.strip_prefix("etcd:") {
        let config = replicas.etcd_config(endpoints)?;
        let store = EtcdStore::connect(&config, options)
            .await
            .with_context(|| format!("connecting to etcd at {endpoints}"))?;
        let leadership = store.leadership(
            replica_id.clone(),
            replicas.leader_lease,
            blox_server::clock::now_unix_ms,
        );
        return Ok((Arc::new(store), Arc::new(leadership)));
    }
    if let Some(dir) = spec.strip_prefix("log:") {
        let dir = PathBuf::from(dir);
        let store = LogStore::open(&dir, options)
            .with_context(|| format!("opening the store in {}", dir.display()))?;
        return Ok(alone(Arc::new(store)));
    }
    let Some(path) = spec.strip_prefix("redb:") else {
        bail!("--store must be log:DIR, redb:PATH, memory or etcd:http://HOST:PORT[,...], not {spec:?}");
    };
    let path = PathBuf::from(path);
    let store = RedbStore::open(&path, options)
        .with_context(|| format!("opening the store at {}", path.display()))?;
    Ok(alone(Arc::new(store)))
}

/// `--replica-id`, or the host name and the API's port.
pub(crate) fn replica_id(given: Option<&String>, address: std::net::SocketAddr) -> String {
    if let Some(id) = given {
        return id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", address.port())
}

pub async fn run(args: ServerArgs, banner: Option<Banner>) -> Result<()> {
    init_logging(&args.log_format)?;
    // Before anything starts: a server that would be exposed does not open its store.
    let security = args.security.resolve(&args.listen).await?;
    if !(args.scheduler_calls_per_second.is_finite() && args.scheduler_calls_per_second > 0.0) {
        bail!("--scheduler-calls-per-second must be a positive number");
    }
    if args.change_log_retention == 0 {
        bail!("--change-log-retention must be at least 1");
    }
    let store_options = StoreOptions {
        change_log_retention: args.change_log_retention,
        tombstone_retention: args.tombstone_retention,
        ..StoreOptions::default()
    };
    if args.tombstone_retention < args.visibility_timeout + args.reconcile_interval {
        tracing::warn!(
            tombstone_retention = %humantime::format_duration(args.tombstone_retention),
            "--tombstone-retention is shorter than --visibility-timeout plus --reconcile-interval: a late event may bring back a deleted entity until the next reconcile pass"
        );
    }
    if args.replicas.leader_lease < Duration::from_secs(1) {
        bail!(
            "--leader-lease must be at least 1s (whole seconds: an etcd lease counts in seconds; it is renewed every third of it)"
        );
    }
    // Bound before the store opens, so that the default replica id can name the port.
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let address = listener.local_addr()?;
    let replica = replica_id(args.replicas.replica_id.as_ref(), address);
    let store_spec = args.store_spec();
    let (store, leadership) = open_store(&store_spec, store_options, &args.replicas, replica.clone()).await?;
    raise_file_limit(args.limits.max_connections);

    // The account and region mirrored: the region from the AWS configuration, the account from
    // --account-id or else from the ARNs ECS answers the reconciler with; the simulator's own.
    let (ecs, control, events, alarms, sim, mirrored) = match args.ecs.as_str() {
        "aws" => {
            let (ecs, control, events, alarms, region) = connect_aws(&args).await?;
            (
                ecs,
                control,
                events,
                alarms,
                None,
                Mirrored::new(args.account_id.clone(), region),
            )
        }
        "sim" => {
            if args.queue.is_some() {
                bail!("--queue cannot be used with --ecs sim: the simulator delivers its own events");
            }
            let (sim, restored) = args.sim.open()?;
            let (instances, tasks) = sim.read(|ecs| ecs.totals());
            tracing::info!(restored, instances, tasks, "ECS simulator started");
            let (account, region) =
                sim.read(|ecs| (ecs.config().account.clone(), ecs.config().region.clone()));
            if args.account_id.as_ref().is_some_and(|given| *given != account) {
                bail!("--account-id is not the simulated account ({account})");
            }
            (
                Arc::new(sim.clone()) as Arc<dyn EcsReader>,
                Arc::new(sim.clone()) as Arc<dyn EcsControl>,
                Some(Arc::new(sim.clone()) as Arc<dyn EventSource>),
                // The simulated account has no alarms of its own: every one named is absent.
                Arc::new(SimAlarms::new(sim.clock().clone())) as Arc<dyn AlarmReader>,
                Some(sim),
                Mirrored::new(Some(account), Some(region)),
            )
        }
        other => bail!("--ecs must be aws or sim, not {other:?}"),
    };

    let scheme = if security.tls.is_some() { "https" } else { "http" };
    if banner.is_some() {
        // `blox up` is for people: where to look comes first.
        println!("blox dashboard: {scheme}://{address}/ui/");
    }
    // Tests and scripts read this line to find the port.
    println!("{}{scheme}://{address}", blox_api::LISTENING_PREFIX);
    tracing::info!(%address, scheme, store = %store_spec, queue = ?args.queue, ecs = %args.ecs, replica = %replica, "blox server started");
    if let (Some(banner), Some(sim)) = (&banner, &sim) {
        print_banner(banner, sim, &format!("{scheme}://{address}"));
    }

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let simulation = sim.map(|sim| {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { sim.run(shutdown).await })
    });
    let mirrored = Arc::new(mirrored);
    let options = ServerOptions {
        reconcile: ReconcileOptions {
            interval: args.reconcile_interval,
            clusters: args.clusters.clone(),
            mirrored: mirrored.clone(),
            ..ReconcileOptions::default()
        },
        ingest: IngestOptions {
            clusters: args.clusters,
            mirrored,
            ..IngestOptions::default()
        },
        stream_heartbeat: None,
        scheduler: SchedulerOptions {
            interval: args.scheduler_interval,
            calls_per_second: args.scheduler_calls_per_second,
            ..SchedulerOptions::default()
        },
        v03_errors: args.v03_errors,
        limits: args.limits.limits(),
        auth: security.tokens,
        tls: security.tls,
    };
    let services = Services {
        store,
        leadership: Some(leadership),
        ecs: Some(ecs),
        events,
        control: Some(control),
        alarms: Some(alarms),
    };
    blox_server::serve(listener, services, options, shutdown.clone()).await?;
    shutdown.cancel();
    if let Some(simulation) = simulation {
        // Saves the simulated account.
        simulation.await.context("the ECS simulator failed")?;
    }
    tracing::info!("blox server stopped");
    Ok(())
}

fn print_banner(banner: &Banner, sim: &blox_sim::Simulator, endpoint: &str) {
    let (clusters, (instances, tasks)) = sim.read(|ecs| (ecs.cluster_names(), ecs.totals()));
    let flag = if endpoint == crate::cli::DEFAULT_ENDPOINT {
        String::new()
    } else {
        format!(" --endpoint {endpoint}")
    };
    // The biggest cluster has the most to show.
    let first = sim
        .read(|ecs| {
            ecs.cluster_names()
                .into_iter()
                .max_by_key(|c| ecs.instances(c).len())
        })
        .unwrap_or_else(|| "CLUSTER".into());
    let churn = match banner.churn.as_str() {
        "none" => "no churn".to_owned(),
        "light" => "light churn".to_owned(),
        n => format!("churn of about {n} events/s"),
    };
    // The demo account's daemon and its revisions (README: "Try a safe rollout").
    let rollout = if clusters.iter().any(|c| c == "demo-prod") {
        format!(
            "\nA safe rollout (log-router:2 is a good release, :3 a bad one that is rolled back):\n\
             \x20 blox env create logs --cluster demo-prod --task-definition log-router:1{flag}\n\
             \x20 blox deploy start logs --wait{flag}\n\
             \x20 blox env update logs --task-definition log-router:2{flag}\n\
             \x20 blox deploy start logs --wait{flag}\n\
             \x20 blox env status logs --watch{flag}\n"
        )
    } else {
        String::new()
    };
    println!(
        "\nblox is up with a simulated ECS account: {} clusters ({}), {instances} container instances, {tasks} tasks, {churn}.\n\
         \n  dashboard    {endpoint}/ui/\n\
         \x20 API          {endpoint}/v1/instances   {endpoint}/v1/tasks\n\
         \x20 API docs     {endpoint}/docs\n\
         \x20 metrics      {endpoint}/metrics\n\
         \x20 data         {} (kept across runs; delete it to start afresh)\n\
         \nTry:\n\
         \x20 blox instances list{flag}\n\
         \x20 blox tasks list --cluster {first}{flag}\n\
         \x20 blox tasks watch{flag}\n\
         \x20 curl '{endpoint}/v1/tasks?cluster={first}&status=RUNNING'\n{rollout}\
         \nCtrl-C stops blox; run `blox up` again to carry on where it left off.",
        clusters.len(),
        clusters.join(", "),
        banner.data_dir.display(),
    );
}

/// ECS, its control calls, the event queue, CloudWatch's alarms, and the configured region.
type AwsServices = (
    Arc<dyn EcsReader>,
    Arc<dyn EcsControl>,
    Option<Arc<dyn EventSource>>,
    Arc<dyn AlarmReader>,
    Option<String>,
);

async fn connect_aws(args: &ServerArgs) -> Result<AwsServices> {
    let aws = blox_aws::sdk_config()
        .await
        .context("loading the AWS configuration")?;
    let ecs = Arc::new(SdkEcs::new(&aws));
    let events = match &args.queue {
        Some(queue) => Some(Arc::new(
            SqsSource::new(
                &aws,
                queue,
                SqsOptions {
                    visibility_timeout_seconds: i32::try_from(args.visibility_timeout.as_secs().max(1))
                        .context("--visibility-timeout is too long")?,
                    ..SqsOptions::default()
                },
            )
            .await
            .with_context(|| format!("opening the event queue {queue:?}"))?,
        ) as Arc<dyn EventSource>),
        None => {
            tracing::warn!("no --queue given: changes are seen only when the reconciler runs");
            None
        }
    };
    let region = aws.region().map(|region| region.to_string());
    let alarms = Arc::new(SdkAlarms::new(&aws));
    Ok((ecs.clone(), ecs, events, alarms, region))
}

/// Every connection is a file descriptor: raise the soft limit towards the hard one so that
/// `--max-connections` can be reached, and say so when it cannot.
fn raise_file_limit(max_connections: usize) {
    // The store, the log, the listener and the AWS clients' sockets need some too.
    let wanted = max_connections as u64 + 256;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got < wanted => tracing::warn!(
            limit = got,
            max_connections,
            "the open-file limit is lower than --max-connections needs; accepts will fail past it"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "cannot raise the open-file limit"),
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch SIGTERM");
                let _ = interrupt.await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        server: ServerArgs,
    }

    /// What `blox server ARGS` takes for one flag, or the error's text. Only the flag given is
    /// compared, so that `BLOX_*` variables in the environment change nothing.
    fn check(args: &[&str], read: fn(&ServerArgs) -> Option<String>, want: Result<&str, &str>) {
        let parsed = Command::try_parse_from(std::iter::once("blox").chain(args.iter().copied()));
        match (parsed, want) {
            (Ok(Command { server }), Ok(want)) => {
                assert_eq!(read(&server).as_deref(), Some(want), "{args:?}")
            }
            (Err(err), Err(text)) => assert!(err.to_string().contains(text), "{args:?}: {err}"),
            (Ok(_), Err(text)) => panic!("{args:?} was taken, not refused with {text:?}"),
            (Err(err), Ok(_)) => panic!("{args:?} was refused: {err}"),
        }
    }

    /// Blox v0.3's flags (`--bind`, `--queue sqs://NAME`, `--etcd-endpoint`) mean what they meant.
    #[test]
    fn v03_flags() {
        let listen = |a: &ServerArgs| Some(a.listen.clone());
        let store = |a: &ServerArgs| Some(a.store_spec());
        let queue = |a: &ServerArgs| a.queue.clone();
        check(&["--bind", "0.0.0.0:3000"], listen, Ok("0.0.0.0:3000"));
        check(&["--listen", "127.0.0.1:0"], listen, Ok("127.0.0.1:0"));
        check(&["--queue", "sqs://blox_queue"], queue, Ok("blox_queue"));
        check(&["--queue", "blox_queue"], queue, Ok("blox_queue"));
        let url = "https://sqs.us-east-1.amazonaws.com/123456789012/blox_queue";
        check(&["--queue", url], queue, Ok(url));
        check(
            &["--queue", "kinesis://events"],
            queue,
            Err("Kinesis streams are not an event source"),
        );
        check(&["--queue", "sqs://"], queue, Err("the SQS queue name is empty"));
        check(&["--store", "memory"], store, Ok("memory"));
        check(
            &["--etcd-endpoint", "http://a:2379", "--etcd-endpoint", "b:2379"],
            store,
            Ok("etcd:http://a:2379,http://b:2379"),
        );
        check(
            &["--store", "memory", "--etcd-endpoint", "https://a:2379"],
            store,
            Ok("etcd:https://a:2379"),
        );
    }
}
