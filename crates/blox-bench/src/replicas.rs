//! Several replicas on one etcd: ingestion through `Ingestor::commit` into the etcd store (every
//! commit durable in etcd), `GET` latency on a follower beside the leader's (three `blox server`
//! processes on the same prefix), and failover: SIGKILL of the leader until another replica's
//! `/readyz` says it leads (its ingestion, reconciliation and scheduler started), against the lease.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use blox_aws::NoEvents;
use blox_server::{IngestOptions, Ingestor};
use blox_store::{EtcdConfig, EtcdStore, Kind, Store, StoreOptions};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use super::process::{Server, client};
use super::report::Goal;
use super::serve::{task_gets, task_url};
use super::{Bench, message, micros, now, percentile_ms};

/// The lease of the benchmarked replicas: short, so that failover is measured in seconds.
const LEASE: Duration = Duration::from_secs(5);
const REPLICAS: usize = 3;

/// An etcd started for the benchmark (data on disk, so that commits are durable), killed on drop.
struct Etcd {
    _child: Child,
    endpoint: String,
}

impl Etcd {
    async fn start(dir: &Path) -> Result<Etcd> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let url = "http://127.0.0.1:0";
        let mut child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", url, "--advertise-client-urls", url])
            .args(["--listen-peer-urls", url, "--initial-advertise-peer-urls", url])
            .args(["--initial-cluster", &format!("bench={url}")])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting etcd (apt-get install etcd-server, or give --etcd URL)")?;
        let mut lines = BufReader::new(child.stderr.take().context("etcd's stderr")?).lines();
        // etcd logs the client address it bound (port 0 picks one) once it serves.
        let endpoint = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("serving client traffic")
                    && let Some(address) = line
                        .split("\"address\":\"")
                        .nth(1)
                        .and_then(|rest| rest.split('"').next())
                {
                    return Ok(format!("http://{address}"));
                }
            }
            bail!("etcd exited before serving clients")
        })
        .await
        .context("etcd did not serve clients within 30 s")??;
        // Its log must keep draining, or etcd blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Etcd {
            _child: child,
            endpoint,
        })
    }
}

pub(crate) async fn run(bench: &mut Bench, dir: &Path, endpoint: Option<String>, quick: bool) -> Result<()> {
    let (endpoint, _etcd) = match endpoint {
        Some(endpoint) => (endpoint, None),
        None => {
            let etcd = Etcd::start(&dir.join("etcd")).await?;
            (etcd.endpoint.clone(), Some(etcd))
        }
    };
    let prefix = format!("/blox-bench-{}/", std::process::id());
    let tasks = bench.params.tasks.min(if quick { 2_000 } else { 20_000 });
    let instances = bench.params.instances.min(if quick { 200 } else { 2_000 });
    ingest(bench, &endpoint, &prefix, instances, tasks).await?;
    replicas(bench, dir, &endpoint, &prefix, tasks).await
}

/// Loads `instances` and `tasks` into the etcd store, then as many updates of random tasks, through
/// the ingest path in its default batches; each commit is an etcd transaction, durable when it returns.
async fn ingest(bench: &mut Bench, endpoint: &str, prefix: &str, instances: u64, tasks: u64) -> Result<()> {
    let mut config = EtcdConfig::new(vec![endpoint.to_owned()]);
    config.prefix = prefix.to_owned();
    let store = Arc::new(
        EtcdStore::connect(&config, StoreOptions::default())
            .await
            .context("connecting to etcd")?,
    );
    let ingestor = Ingestor::new(store.clone(), Arc::new(NoEvents), IngestOptions::default());
    let batch = bench.params.batch as u64;
    let mut load = Duration::ZERO;
    let total = instances + tasks;
    let mut n = 0;
    while n < total {
        let bodies: Vec<_> = (n..(n + batch).min(total))
            .map(|i| {
                let body = if i < instances {
                    bench.next_instance_event(i)
                } else {
                    bench.next_task_event(i - instances)
                };
                message(i, body)
            })
            .collect();
        n += bodies.len() as u64;
        load += bench.commit(&ingestor, bodies).await?;
    }
    ensure!(
        store.count(Kind::Task).await? == tasks,
        "the etcd store does not hold the loaded tasks"
    );
    let mut updates = Duration::ZERO;
    let mut batches = super::histogram();
    let mut sent = 0;
    while sent < tasks {
        let bodies: Vec<_> = (sent..(sent + batch).min(tasks))
            .map(|i| {
                let task = bench.rng.below(tasks);
                message(i, bench.next_task_event(task))
            })
            .collect();
        sent += bodies.len() as u64;
        let took = bench.commit(&ingestor, bodies).await?;
        batches.record(micros(took))?;
        updates += took;
    }
    let w = "etcd";
    bench
        .report
        .add(w, "entities loaded into etcd", total as f64, "entities", None);
    bench.report.add(
        w,
        "ingest into etcd, inserts (Ingestor::commit)",
        total as f64 / load.as_secs_f64().max(1e-9),
        "events/s",
        None,
    );
    bench.report.add(
        w,
        "ingest into etcd, updates (Ingestor::commit)",
        tasks as f64 / updates.as_secs_f64().max(1e-9),
        "events/s",
        Some(Goal::AtLeast(5_000.0)),
    );
    bench.report.add(
        w,
        "etcd batch commit p99",
        percentile_ms(&batches, 99.0),
        "ms",
        None,
    );
    Ok(())
}

/// Three `blox server` replicas on the loaded prefix: GET latency on a follower and on the leader,
/// then failover after SIGKILL of the leader.
async fn replicas(bench: &mut Bench, dir: &Path, endpoint: &str, prefix: &str, tasks: u64) -> Result<()> {
    let probe = task_url(bench, "", tasks);
    let store = format!("etcd:{endpoint}");
    let lease = format!("{}s", LEASE.as_secs());
    let mut servers = Vec::new();
    for n in 0..REPLICAS {
        let id = format!("bench-{n}");
        let extra = [
            "--etcd-prefix",
            prefix,
            "--leader-lease",
            &lease,
            "--replica-id",
            &id,
        ];
        servers
            .push(Server::start_with(&store, &extra, &dir.join(format!("replica-{n}.log")), &probe).await?);
    }
    let http = client()?;
    let leader = agreed_leader(&http, &servers).await?;
    let follower = (leader + 1) % REPLICAS;

    let w = "etcd";
    let concurrency = bench.params.get_concurrency;
    for (name, index) in [("follower", follower), ("leader", leader)] {
        let base = servers[index].address.clone();
        let (latencies, _) = task_gets(bench, &http, &base, tasks).await?;
        bench.report.add(
            w,
            &format!("GET /v1/tasks/{{cluster}}/{{arn}} p99 on the {name} (c={concurrency})"),
            percentile_ms(&latencies, 99.0),
            "ms",
            Some(Goal::AtMost(2.0)),
        );
    }

    // Failover: from the SIGKILL to another replica saying it leads (its activities started).
    let killed = servers.remove(leader);
    let started = now();
    killed.crash().await;
    let deadline = started + LEASE * 4;
    let took = loop {
        let mut leads = false;
        for server in &servers {
            leads |= role(&http, &server.address).await.as_deref() == Some("leader");
        }
        if leads {
            break started.elapsed();
        }
        ensure!(now() < deadline, "no replica took over within {:?}", LEASE * 4);
        // Polling is the measurement's resolution.
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    bench
        .report
        .add(w, "leader lease (--leader-lease)", LEASE.as_secs_f64(), "s", None);
    bench.report.add(
        w,
        "failover: SIGKILL of the leader → a new leader acting",
        took.as_secs_f64(),
        "s",
        Some(Goal::AtMost(LEASE.as_secs_f64() + 1.0)),
    );
    for server in servers {
        server.stop().await;
    }
    Ok(())
}

/// The index of the replica every replica names as leader, once they agree.
async fn agreed_leader(http: &reqwest::Client, servers: &[Server]) -> Result<usize> {
    let deadline = now() + LEASE * 4;
    loop {
        let mut named = Vec::new();
        for server in servers {
            let answer: serde_json::Value = http
                .get(format!("{}/v1/leader", server.address))
                .send()
                .await?
                .json()
                .await?;
            named.push((
                answer["self"].as_str().map(str::to_owned),
                answer["leader"].as_str().map(str::to_owned),
            ));
        }
        if let Some(Some(leader)) = named.first().map(|(_, leader)| leader.clone())
            && named
                .iter()
                .all(|(_, named)| named.as_deref() == Some(leader.as_str()))
            && let Some(index) = named
                .iter()
                .position(|(id, _)| id.as_deref() == Some(leader.as_str()))
            && role(http, &servers[index].address).await.as_deref() == Some("leader")
        {
            return Ok(index);
        }
        ensure!(
            now() < deadline,
            "the replicas did not agree on a leader: {named:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `/readyz`'s role, if the replica answers.
async fn role(http: &reqwest::Client, base: &str) -> Option<String> {
    let answer: serde_json::Value = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    answer["role"].as_str().map(str::to_owned)
}
