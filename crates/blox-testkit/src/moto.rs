//! A private moto server per test.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ecs::config::Credentials;
use tokio::sync::oneshot;

/// moto starts in under 3 s on an idle machine; leave room for a loaded CI machine.
const START_DEADLINE: Duration = Duration::from_secs(30);
pub(crate) const REGION: &str = "us-east-1";
const ACCESS_KEY: &str = "testing";
const SECRET_KEY: &str = "testing";
const SETUP_HINT: &str = "run scripts/setup-test-env.sh to create the Python venv with moto, \
                          or set BLOX_PYTHON to a python that has moto[server]";

/// The workspace root (where `.venv` and `scripts/` are).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// A moto server on 127.0.0.1 with an OS-assigned port, running `scripts/moto_server.py` with the
/// venv's python. Killed on drop; it also exits by itself when this process dies (its stdin closes).
#[derive(Debug)]
pub struct Moto {
    child: Child,
    // Held only to keep the server's stdin open: closing it stops the server.
    _stdin: ChildStdin,
    port: u16,
}

impl Moto {
    /// Starts a fresh server and configures it as blox's tests need: tasks stay RUNNING however often
    /// they are described (by default moto advances a task one status per describe).
    /// The python is `$BLOX_PYTHON`, else the workspace's `.venv/bin/python`.
    pub async fn start() -> anyhow::Result<Moto> {
        let python = std::env::var_os("BLOX_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
        Moto::start_with(&python).await
    }

    /// [`Moto::start`] with the given python (which must have `moto[server]` installed).
    pub async fn start_with(python: &Path) -> anyhow::Result<Moto> {
        crate::install_crypto_provider();
        let script = workspace_root().join("scripts/moto_server.py");
        if !python.exists() && python.components().count() > 1 {
            bail!("no python at {}: {SETUP_HINT}", python.display());
        }
        let mut child = Command::new(python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} {}: {SETUP_HINT}", python.display(), script.display()))?;
        let stdin = child.stdin.take().context("moto stdin")?;
        let stdout = child.stdout.take().context("moto stdout")?;
        let stderr = child.stderr.take().context("moto stderr")?;
        let (stderr_tail, stderr_reader) = forward_stderr(stderr);
        let port = read_port(stdout);

        let port = match tokio::time::timeout(START_DEADLINE, port).await {
            Ok(Ok(Some(port))) => port,
            outcome => {
                let _ = child.kill();
                let status = child.wait().ok();
                // Moto has exited: its stderr is closed, and the reader has the whole of it once
                // it ends (reading the tail before would race it).
                let _ = stderr_reader.join();
                let why = match outcome {
                    Err(_) => format!("no PORT line within {START_DEADLINE:?}"),
                    _ => format!("it exited ({status:?}) without printing PORT"),
                };
                let tail = stderr_tail.lock().map(|t| t.join("\n")).unwrap_or_default();
                bail!("moto did not start: {why}. {SETUP_HINT}. Its stderr:\n{tail}");
            }
        };
        let moto = Moto {
            child,
            _stdin: stdin,
            port,
        };
        moto.keep_tasks_running().await?;
        Ok(moto)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, for every service.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for a child process (blox) to use this server through the standard AWS chain.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint().as_str()),
            ("AWS_REGION", REGION),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            // Keeps the SDK from probing the EC2 metadata service for region or credentials.
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// An SDK configuration for in-process clients against this server, independent of the test
    /// process's environment.
    pub async fn sdk_config(&self) -> SdkConfig {
        sdk_config_at(&self.endpoint()).await
    }

    /// Wipes all of moto's state (the task state-manager setting survives).
    pub async fn reset(&self) -> anyhow::Result<()> {
        self.post("/moto-api/reset", String::new()).await
    }

    async fn keep_tasks_running(&self) -> anyhow::Result<()> {
        let body = serde_json::json!({
            "model_name": "ecs::task",
            "transition": {"progression": "manual", "times": 1_000_000_000u64},
        });
        self.post("/moto-api/state-manager/set-transition", body.to_string())
            .await
    }

    async fn post(&self, path: &str, body: String) -> anyhow::Result<()> {
        let url = format!("{}{path}", self.endpoint());
        let response = crate::http_client()
            .build()?
            .post(&url)
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        if !response.status().is_success() {
            bail!("POST {url}: {}", response.status());
        }
        Ok(())
    }
}

/// The SDK configuration of [`Moto::sdk_config`] with every service at `endpoint` (moto, or a proxy
/// in front of it).
pub(crate) async fn sdk_config_at(endpoint: &str) -> SdkConfig {
    let http = aws_smithy_http_client::Builder::new().build_http();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(
            ACCESS_KEY,
            SECRET_KEY,
            None,
            None,
            "blox-testkit",
        ))
        .endpoint_url(endpoint)
        .load()
        .await
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the `PORT=<n>` line on a thread (stdout is a blocking pipe), then drains the rest.
fn read_port(stdout: impl Read + Send + 'static) -> oneshot::Receiver<Option<u16>> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let port = lines.by_ref().map_while(Result::ok).find_map(|line| {
            line.trim()
                .strip_prefix("PORT=")
                .and_then(|p| p.parse::<u16>().ok())
        });
        let _ = tx.send(port);
        for _ in lines.map_while(Result::ok) {}
    });
    rx
}

/// Forwards moto's stderr to the test's (shown when a test fails) and keeps its last lines for
/// start-up errors; the thread ends when moto's stderr closes.
fn forward_stderr(
    stderr: impl Read + Send + 'static,
) -> (Arc<Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
    const KEEP: usize = 40;
    let tail = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&tail);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[moto] {line}");
            if let Ok(mut tail) = keep.lock() {
                if tail.len() == KEEP {
                    tail.remove(0);
                }
                tail.push(line);
            }
        }
    });
    (tail, reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_python_says_how_to_set_up() {
        let err = Moto::start_with(Path::new("/nonexistent/python"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("setup-test-env.sh"), "{err}");
    }

    #[tokio::test]
    async fn a_python_without_moto_says_why() {
        // `-S` skips site-packages, so this python cannot import moto even if installed system-wide.
        let dir = std::env::temp_dir().join(format!("blox-testkit-nomoto-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let wrapper = dir.join("python");
        std::fs::write(&wrapper, "#!/bin/sh\nexec python3 -S \"$@\"\n").unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&wrapper)
            .status()
            .unwrap();
        let err = Moto::start_with(&wrapper).await.unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(err.contains("setup-test-env.sh") && err.contains("moto"), "{err}");
        assert!(err.contains("ModuleNotFoundError"), "{err}");
    }

    #[tokio::test]
    async fn serves_ec2_ecs_and_sqs_and_stops_on_drop() {
        let moto = Moto::start().await.unwrap();
        let fixture = crate::EcsFixture::new(&moto).await;
        fixture.create_cluster("kit").await.unwrap();
        let instances = fixture.register_instances("kit", 3).await.unwrap();
        assert_eq!(instances.len(), 3);
        assert!(
            instances.iter().all(|i| i.contains(":container-instance/kit/")),
            "{instances:?}"
        );
        let url = fixture.create_queue("kit").await.unwrap();
        fixture.send_messages(&url, &["a", "b"]).await.unwrap();
        assert_eq!(fixture.queue_depth(&url).await.unwrap().visible, 2);
        let env = moto.env();
        assert!(env.contains(&("AWS_ENDPOINT_URL".to_owned(), moto.endpoint())));

        let endpoint = moto.endpoint();
        drop(moto);
        assert!(
            reqwest::get(&endpoint).await.is_err(),
            "moto still serves after drop"
        );
    }
}
