//! `blox server` as its own process over the loaded store: how long from spawning it until it answers
//! a GET (after a clean stop, and after a crash), and how much memory it keeps resident once it has
//! served listings of everything.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::report::Goal;
use super::{Bench, file_mib, now, serve};

use blox_api::LISTENING_PREFIX as READY_PREFIX;
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A running `blox server`. Killed if dropped.
pub(crate) struct Server {
    child: Child,
    /// Kept open while the server runs: it must be able to write to its stdout.
    _stdout: Lines<BufReader<ChildStdout>>,
    pub(crate) address: String,
    /// From spawning to the `blox listening on` line.
    listening: Duration,
    /// From spawning to the first successful GET of a task.
    serving: Duration,
}

impl Server {
    /// Spawns the current executable as `blox server` over the log store in `store`, and waits until
    /// it answers a GET of `probe` (a path).
    async fn start(store: &Path, log_name: &str, probe: &str) -> Result<Server> {
        let store_flag = format!("log:{}", store.display());
        Server::start_with(&store_flag, &[], &store.with_file_name(log_name), probe).await
    }

    /// Spawns the current executable as `blox server --store STORE EXTRA...`, logging to `log`, and
    /// waits until it answers a GET of `probe` (a path).
    pub(crate) async fn start_with(store: &str, extra: &[&str], log: &Path, probe: &str) -> Result<Server> {
        let exe = std::env::current_exe().context("finding the blox executable")?;
        let log_name = log.display().to_string();
        let log = std::fs::File::create(log).with_context(|| format!("creating {log_name}"))?;
        let mut command = Command::new(&exe);
        command
            .args(["server", "--listen", "127.0.0.1:0", "--store", store])
            .args(extra)
            // Nothing listens on port 9: the reconciler's calls fail and it retries later, while the
            // API serves the store. Credentials are dummies so that the SDK never looks further.
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "x")
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        // Settings of the caller's own server (a queue, a cluster list) must not leak into this one.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("BLOX_") {
                command.env_remove(name);
            }
        }

        let started = now();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let address = tokio::time::timeout(START_DEADLINE, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix(READY_PREFIX) {
                    return Ok(url.trim().to_owned());
                }
            }
            bail!("the server exited before printing {READY_PREFIX:?} (see {log_name})")
        })
        .await
        .context("the server printed no address within 60 s")??;
        let listening = started.elapsed();

        let client = client()?;
        let url = format!("{address}{probe}");
        let serving = loop {
            // The socket is bound once the address is printed, so a transport error is reported
            // rather than retried: it would mean something else is wrong.
            let response = client.get(&url).send().await.context("the first GET")?;
            if response.status().is_success() {
                break started.elapsed();
            }
            ensure!(
                started.elapsed() < START_DEADLINE,
                "the first GET still answers {} after 60 s",
                response.status()
            );
            // Retrying at once would only compete with the server for the CPU.
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        Ok(Server {
            child,
            _stdout: lines,
            address,
            listening,
            serving,
        })
    }

    pub(crate) fn pid(&self) -> Result<u32> {
        self.child.id().context("the server's pid")
    }

    fn memory(&self) -> Result<Memory> {
        memory(self.pid()?)
    }

    /// Stops the server with SIGTERM, so that it closes the store cleanly; SIGKILL if that fails.
    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let term = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if term.is_ok_and(|status| status.success())
                && tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                    .await
                    .is_ok()
            {
                return;
            }
        }
        self.crash().await;
    }

    /// SIGKILL: the store file is left as a crash leaves it.
    pub(crate) async fn crash(mut self) {
        if let Err(err) = self.child.kill().await {
            tracing::warn!(error = %err, "killing the benchmarked server failed");
        }
    }
}

pub(crate) fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")
}

pub(crate) async fn run(bench: &mut Bench, store: &Path) -> Result<()> {
    let w = "server process";
    bench
        .report
        .add(w, "store file size", file_mib(store), "MiB", None);
    let workload = &bench.workload;
    let probe = format!(
        "/v1/tasks/{}/{}",
        workload.cluster_name(workload.cluster_of_task(0)),
        workload.task_arn(0)
    );

    let server = Server::start(store, "server.log", &probe).await?;
    bench.report.add(
        w,
        "spawn → address printed",
        server.listening.as_secs_f64() * 1000.0,
        "ms",
        None,
    );
    bench.report.add(
        w,
        "spawn → first GET answered",
        server.serving.as_secs_f64() * 1000.0,
        "ms",
        Some(Goal::AtMost(1000.0)),
    );
    let idle = server.memory()?;
    bench
        .report
        .add(w, "RSS after start", mib(idle.rss_kib), "MiB", None);

    let client = client()?;
    let address = &server.address;
    let started = now();
    let mut listed = 0;
    for cluster in 0..bench.params.clusters {
        let cluster = bench.workload.cluster_name(cluster);
        listed += list(&client, &format!("{address}/v1/tasks?cluster={cluster}")).await?;
    }
    list(&client, &format!("{address}/v1/instances")).await?;
    // The largest answer the API gives: every task, streamed page by page.
    let all = list(&client, &format!("{address}/v1/tasks")).await?;
    ensure!(
        all == bench.params.tasks && listed == bench.params.tasks,
        "the server listed {all} tasks ({listed} by cluster), not {}",
        bench.params.tasks
    );
    let listing = started.elapsed();
    let loaded = server.memory()?;
    bench.report.add(
        w,
        "list every cluster + instances + all tasks",
        listing.as_secs_f64(),
        "s",
        None,
    );
    bench.report.add(
        w,
        "RSS after listing everything",
        mib(loaded.rss_kib),
        "MiB",
        Some(Goal::AtMost(250.0)),
    );
    bench.report.add(
        w,
        "peak RSS (VmHWM)",
        mib(loaded.hwm_kib),
        "MiB",
        Some(Goal::AtMost(250.0)),
    );

    // The `list cluster` listings again, served by `blox server` in its own process, as deployed
    // (without API tokens), rather than in the client's: the client shares the two cores with it,
    // no longer its runtime and allocator. Measured after the RSS figures, which stay as they were.
    let concurrency = bench.params.list_concurrency;
    let listings = serve::cluster_listings(bench, &client, address, Some(server.pid()?)).await?;
    listings.report(
        &mut bench.report,
        w,
        serve::LISTING,
        &format!(" (c={concurrency})"),
        None,
    );

    // After a crash, the log store loads its last checkpoint and replays the log written since (redb
    // checked and repaired its whole file): the start-up figure above follows a clean stop (a
    // closing checkpoint), this one says what a crash costs.
    server.crash().await;
    let restarted = Server::start(store, "server-after-crash.log", &probe).await?;
    bench.report.add(
        w,
        "spawn → first GET answered, after SIGKILL",
        restarted.serving.as_secs_f64() * 1000.0,
        "ms",
        Some(Goal::AtMost(1000.0)),
    );
    let repaired = restarted.memory()?;
    bench.report.add(
        w,
        "RSS after start, after SIGKILL",
        mib(repaired.rss_kib),
        "MiB",
        Some(Goal::AtMost(250.0)),
    );
    restarted.stop().await;
    Ok(())
}

/// Fetches a whole listing and counts its items.
async fn list(client: &reqwest::Client, url: &str) -> Result<u64> {
    let response = client.get(url).send().await?;
    ensure!(
        response.status().is_success(),
        "GET {url} answered {}",
        response.status()
    );
    let body = response.bytes().await?;
    let needle = b"{\"metadata\":";
    Ok(body.windows(needle.len()).filter(|w| w == needle).count() as u64)
}

struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

/// KiB, as `/proc` counts memory, to MiB, as the report does.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn memory(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// CPU time (user and system) a process has used so far, from `/proc/PID/stat` (in USER_HZ ticks,
/// 100 per second on Linux).
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/PID/stat")?;
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("parsing /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |n: usize| -> Result<f64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .context("parsing /proc/PID/stat")
    };
    Ok((ticks(14)? + ticks(15)?) / 100.0)
}
