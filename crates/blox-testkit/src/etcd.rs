//! A private etcd server per test.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// etcd starts in about 0.1 s on an idle machine; leave room for a loaded CI machine.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// The start of the message etcd (`--logger zap`) logs once it serves clients, with the address it
/// listens on: `{"msg":"serving client traffic insecurely; …","address":"127.0.0.1:39805"}`.
const READY_MSG: &str = "serving client traffic";
/// How many of etcd's last log lines are kept for error messages (its usage text after a bad flag
/// is about 20 lines).
const KEEP_LINES: usize = 100;
const INSTALL_HINT: &str = "install Debian's etcd-server (apt-get install etcd-server) for /usr/bin/etcd";
/// Where the data directory goes unless [`EtcdOptions::on_disk`]: etcd 3.4 has no
/// `--unsafe-no-fsync`, and fsyncs on tmpfs cost nothing.
const SHM: &str = "/dev/shm";

/// How to start an [`Etcd`]. `EtcdOptions::default()` is what [`Etcd::start`] uses.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// `--max-txn-ops` (etcd's default: 128).
    pub max_txn_ops: Option<u32>,
    /// `--max-request-bytes` (etcd's default: 1.5 MiB).
    pub max_request_bytes: Option<u64>,
    /// Puts the data directory in the default temporary directory instead of `/dev/shm`, so that
    /// commits are durable (fsyncs to a disk): for benchmarks.
    pub on_disk: bool,
    /// More arguments, after the harness's own.
    pub extra_args: Vec<String>,
    /// The etcd binary; `etcd` on the `PATH` when `None`.
    pub binary: Option<PathBuf>,
}

/// A single-member etcd server on 127.0.0.1 with OS-assigned client and peer ports, its data in a
/// fresh temporary directory (under `/dev/shm` when it exists, unless [`EtcdOptions::on_disk`]).
/// Killed (SIGKILL) on drop, then its directory is removed.
///
/// Its log (zap JSON lines on stderr) is kept: the last lines are in [`Etcd::log_tail`] and in
/// start-up errors; lines above `info` level (and any that are not JSON) also go to the test's
/// stderr with an `[etcd]` prefix.
///
/// Talk to it with gRPC (an etcd client) at [`Etcd::endpoint`]. With port 0 in its URLs, etcd's
/// JSON gateway (`/v3/kv/...` over HTTP) does not work (it dials `127.0.0.1:0`), and the member
/// list advertises port 0, so clients must not replace the endpoint with the advertised ones.
#[derive(Debug)]
pub struct Etcd {
    child: Child,
    port: u16,
    log: Log,
    // Dropped (removed) after `Drop::drop` has killed the process.
    dir: TempDir,
}

type Log = Arc<Mutex<VecDeque<String>>>;

impl Etcd {
    /// Starts a fresh server with the default options and waits up to 20 s until it serves clients.
    pub async fn start() -> anyhow::Result<Etcd> {
        Etcd::start_with(EtcdOptions::default()).await
    }

    /// [`Etcd::start`] with `options`.
    pub async fn start_with(options: EtcdOptions) -> anyhow::Result<Etcd> {
        let dir = temp_dir(options.on_disk)?;
        let binary = options.binary.as_deref().unwrap_or(Path::new("etcd"));
        let mut child = Command::new(binary)
            .args(args(&dir.path().join("data"), &options))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}: {INSTALL_HINT}", binary.display()))?;
        let stderr = child.stderr.take().context("etcd stderr")?;
        let log = Log::default();
        let (port, reader) = read_log(stderr, Arc::clone(&log));

        // Killed on drop from here on, also if the caller gives up on this future.
        let mut etcd = Etcd {
            child,
            port: 0,
            log,
            dir,
        };
        let outcome = tokio::time::timeout(START_DEADLINE, port).await;
        if let Ok(Ok(port)) = outcome {
            etcd.port = port;
            return Ok(etcd);
        }
        etcd.kill();
        let status = etcd.child.try_wait().ok().flatten();
        let status = status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string());
        // The log ends once the process is gone: take all of it.
        let _ = reader.join();
        let why = match outcome {
            Err(_) => format!("no {READY_MSG:?} line within {START_DEADLINE:?}"),
            _ => format!("it exited ({status}) before serving clients"),
        };
        bail!(
            "{} did not start: {why}. Its log:\n{}",
            binary.display(),
            etcd.log_tail().join("\n")
        );
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, the client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory (`--data-dir`), removed on drop.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// etcd's last log lines (up to 100), oldest first.
    pub fn log_tail(&self) -> Vec<String> {
        tail(&self.log)
    }

    /// Kills the process (SIGKILL) and waits for it; the data directory stays until drop. For tests
    /// of losing etcd.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn temp_dir(on_disk: bool) -> anyhow::Result<TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("blox-etcd-");
    if !on_disk
        && Path::new(SHM).is_dir()
        && let Ok(dir) = builder.tempdir_in(SHM)
    {
        return Ok(dir);
    }
    builder.tempdir().context("creating etcd's data directory")
}

fn args(data_dir: &Path, options: &EtcdOptions) -> Vec<String> {
    const URL: &str = "http://127.0.0.1:0";
    let mut args: Vec<String> = [
        "--name",
        "blox",
        "--data-dir",
        &data_dir.to_string_lossy(),
        "--listen-client-urls",
        URL,
        "--advertise-client-urls",
        URL,
        "--listen-peer-urls",
        URL,
        "--initial-advertise-peer-urls",
        URL,
        "--initial-cluster",
        &format!("blox={URL}"),
        // Elects itself in ~0.1 s instead of ~1 s.
        "--heartbeat-interval",
        "10",
        "--election-timeout",
        "100",
        "--logger",
        "zap",
        "--log-outputs",
        "stderr",
    ]
    .map(str::to_owned)
    .into();
    if let Some(ops) = options.max_txn_ops {
        args.extend(["--max-txn-ops".to_owned(), ops.to_string()]);
    }
    if let Some(bytes) = options.max_request_bytes {
        args.extend(["--max-request-bytes".to_owned(), bytes.to_string()]);
    }
    args.extend(options.extra_args.iter().cloned());
    args
}

/// Reads etcd's log on a thread (stderr is a blocking pipe) until it ends: keeps the last lines,
/// forwards those above `info` to the test's stderr, and reports the client port of the ready line.
/// The receiver fails if the log ends without one.
fn read_log(stderr: impl Read + Send + 'static, log: Log) -> (oneshot::Receiver<u16>, JoinHandle<()>) {
    let (tx, rx) = oneshot::channel();
    let reader = std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let json = serde_json::from_str::<serde_json::Value>(&line).ok();
            let level = json.as_ref().and_then(|j| j["level"].as_str());
            if !matches!(level, Some("debug" | "info")) {
                eprintln!("[etcd] {line}");
            }
            if let Some(port) = json.as_ref().and_then(ready_port)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(port);
            }
            if let Ok(mut log) = log.lock() {
                if log.len() == KEEP_LINES {
                    log.pop_front();
                }
                log.push_back(line);
            }
        }
    });
    (rx, reader)
}

/// The client port, if `line` is the ready line.
fn ready_port(line: &serde_json::Value) -> Option<u16> {
    if !line["msg"].as_str()?.starts_with(READY_MSG) {
        return None;
    }
    let address: SocketAddr = line["address"].as_str()?.parse().ok()?;
    Some(address.port()).filter(|&port| port != 0)
}

fn tail(log: &Log) -> Vec<String> {
    log.lock()
        .map(|l| l.iter().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    async fn answers(port: u16) -> bool {
        TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    }

    #[tokio::test]
    async fn two_servers_on_their_own_ports_each_gone_on_drop() {
        let (a, b) = tokio::try_join!(Etcd::start(), Etcd::start()).unwrap();
        assert_ne!(a.port(), b.port());
        assert!(answers(a.port()).await && answers(b.port()).await);
        assert_eq!(a.endpoint(), format!("http://127.0.0.1:{}", a.port()));
        // The client port serves etcd's HTTP endpoints too.
        let version: serde_json::Value = crate::http_client()
            .build()
            .unwrap()
            .get(format!("{}/version", a.endpoint()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(version["etcdserver"].is_string(), "{version}");
        assert!(a.log_tail().iter().any(|l| l.contains(READY_MSG)));
        let dir = a.data_dir();
        assert!(dir.is_dir());
        if Path::new(SHM).is_dir() {
            assert!(dir.starts_with(SHM), "{}", dir.display());
        }

        let (port, pid) = (a.port(), a.pid());
        drop(a);
        assert!(!answers(port).await, "etcd still serves after drop");
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(!dir.exists(), "{} is still there", dir.display());
        assert!(answers(b.port()).await);
    }

    #[tokio::test]
    async fn passes_the_options() {
        let options = EtcdOptions {
            max_txn_ops: Some(7),
            max_request_bytes: Some(4096),
            on_disk: true,
            extra_args: vec!["--snapshot-count".to_owned(), "1000".to_owned()],
            binary: None,
        };
        let mut etcd = Etcd::start_with(options).await.unwrap();
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", etcd.pid())).unwrap();
        let cmdline: Vec<_> = cmdline.split(|&b| b == 0).map(String::from_utf8_lossy).collect();
        for pair in [
            ["--max-txn-ops", "7"],
            ["--max-request-bytes", "4096"],
            ["--snapshot-count", "1000"],
        ] {
            assert!(cmdline.windows(2).any(|w| w == pair), "{cmdline:?}");
        }
        assert!(etcd.data_dir().starts_with(std::env::temp_dir()));
        assert!(!etcd.data_dir().starts_with(SHM));

        etcd.kill();
        assert!(!answers(etcd.port()).await);
        assert!(etcd.data_dir().is_dir(), "kill keeps the data until drop");
    }

    #[tokio::test]
    async fn a_bad_flag_fails_with_the_log() {
        let options = EtcdOptions {
            extra_args: vec!["--no-such-flag".to_owned()],
            ..EtcdOptions::default()
        };
        let err = Etcd::start_with(options).await.unwrap_err().to_string();
        assert!(err.contains("exited"), "{err}");
        assert!(err.contains("flag provided but not defined"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_etcd_says_what_to_install() {
        let options = EtcdOptions {
            binary: Some("/nonexistent/etcd".into()),
            ..EtcdOptions::default()
        };
        let err = format!("{:#}", Etcd::start_with(options).await.unwrap_err());
        assert!(err.contains("etcd-server"), "{err}");
        assert!(err.contains("/nonexistent/etcd"), "{err}");
    }

    #[test]
    fn finds_the_port_of_the_ready_line_only() {
        let line = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        let ready = r#"{"level":"info","msg":"serving client traffic insecurely; this is strongly discouraged!","address":"127.0.0.1:39805"}"#;
        assert_eq!(ready_port(&line(ready)), Some(39805));
        let peer = r#"{"level":"info","msg":"serving peer traffic","address":"127.0.0.1:40741"}"#;
        assert_eq!(ready_port(&line(peer)), None);
        let zero = r#"{"msg":"serving client traffic","address":"127.0.0.1:0"}"#;
        assert_eq!(ready_port(&line(zero)), None);
    }
}
